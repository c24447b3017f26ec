//! Text shown to people: values echoed in messages.

/// A value echoed in a message, cut to a readable length (a pasted key or a whole file
/// in the wrong place should not fill the screen).
pub(crate) fn cut(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        None => s.to_string(),
        Some((at, _)) => format!("{}… ({} bytes in all)", &s[..at], s.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(100);
        let shown = cut(&long);
        assert!(shown.starts_with(&"é".repeat(80)), "{shown}");
        assert!(shown.ends_with("… (200 bytes in all)"), "{shown}");
    }
}

//! Behaviours of Go's standard library that upstream's inputs and configuration rely on,
//! matched here byte for byte.

/// Go's `url.PathUnescape` (`plus` false) or `url.QueryUnescape` (`plus` true: `+` is a
/// space); `None` where Go returns an error (a `%` not followed by two hex digits), or
/// where the bytes are not UTF-8 (a path here is a Rust string).
pub(crate) fn unescape(s: &str, plus: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Go's `strconv.ParseBool`.
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `url.Values` of a query string (`url.ParseQuery`, without its error): pairs in
/// order, a name alone has the value "", a pair that does not unescape is dropped.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.contains(';'))
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((unescape(k, true)?, unescape(v, true)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescaping_as_go_does() {
        assert_eq!(unescape("%2Fa%20b+c", false).as_deref(), Some("/a b+c"));
        assert_eq!(unescape("%2Fa+b", true).as_deref(), Some("/a b"));
        assert_eq!(unescape("%C3%BC", false).as_deref(), Some("ü"));
        for bad in ["%", "%2", "%zz", "a%g1", "%ff"] {
            assert_eq!(unescape(bad, false), None, "{bad}");
        }
    }

    #[test]
    fn query_strings_as_go_reads_them() {
        assert_eq!(
            query_pairs("natsv2&a=b+c&%zz=1&x=%2F&;y=1"),
            [("natsv2", ""), ("a", "b c"), ("x", "/")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(parse_bool("T"), Some(true));
        assert_eq!(parse_bool("yes"), None);
    }
}

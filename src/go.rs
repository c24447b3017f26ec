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

/// Go's `time.ParseDuration` (how weed reads `-timeAgo`), in nanoseconds: a sign, then
/// one or more decimal numbers each with a unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`,
/// `h`), or a lone `0`. `None` where Go returns an error, overflow included; a fraction
/// is scaled through a float as Go does, so the rounding is Go's too.
pub(crate) fn parse_duration(s: &str) -> Option<i64> {
    const LIMIT: u64 = 1 << 63;
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let digits = |t: &str| t.bytes().take_while(u8::is_ascii_digit).count();
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let b = rest.as_bytes()[0];
        if !(b == b'.' || b.is_ascii_digit()) {
            return None;
        }
        let n = digits(rest);
        let mut whole: u64 = 0;
        for c in rest[..n].bytes() {
            if whole > LIMIT / 10 {
                return None;
            }
            whole = whole * 10 + u64::from(c - b'0');
            if whole > LIMIT {
                return None;
            }
        }
        rest = &rest[n..];
        let (mut frac, mut scale, mut post) = (0u64, 1f64, false);
        if let Some(after) = rest.strip_prefix('.') {
            let m = digits(after);
            post = m > 0;
            let mut overflow = false;
            for c in after[..m].bytes() {
                if overflow {
                    continue;
                }
                if frac > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let next = frac * 10 + u64::from(c - b'0');
                if next > LIMIT {
                    overflow = true;
                    continue;
                }
                frac = next;
                scale *= 10.0;
            }
            rest = &after[m..];
        }
        if n == 0 && !post {
            return None;
        }
        let u = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        if u == 0 {
            return None;
        }
        let unit: u64 = match &rest[..u] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[u..];
        if whole > LIMIT / unit {
            return None;
        }
        let mut v = whole * unit;
        if frac > 0 {
            v += (frac as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return None;
            }
        }
        // Go's uint64 wraps here (two parts of 2^63 make 0, not an error): so does this.
        total = total.wrapping_add(v);
        if total > LIMIT {
            return None;
        }
    }
    if neg {
        return Some((total as i64).wrapping_neg());
    }
    if total > LIMIT - 1 {
        return None;
    }
    Some(total as i64)
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
    /// Every input as Go's own `time.ParseDuration` reads it
    /// (`tests/fixtures/goduration/main.go`, run with the machine's `go`).
    #[test]
    fn durations_as_go_parses_them() {
        let inputs = [
            "0",
            "+0",
            "-0",
            "",
            "1",
            "1h",
            "1.5h",
            "2h45m",
            "300ms",
            "-1.5h",
            "+3m",
            "1h30m10s",
            ".5s",
            "5.s",
            ".s",
            "1.0000000000000000000000001s",
            "1\u{b5}s",
            "1\u{3bc}s",
            "1us",
            "3ns",
            "1e3s",
            "1d",
            "1 h",
            " 1h",
            "1H",
            "h",
            "1hm",
            "1h1",
            "9223372036854775807ns",
            "9223372036854775808ns",
            "-9223372036854775808ns",
            "2562047h",
            "2562048h",
            "0.3333333333333333333h",
            "1.9999999999ns",
            "100000000000000000000s",
            "1..5s",
            "-",
            "+",
            "--1s",
            "1s-1s",
            "0.000000001s",
            "0.0000000001s",
            "15m0.5s",
            "1.5e1s",
        ];
        let mut go = std::process::Command::new("go")
            .arg("run")
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/goduration/main.go"),
            )
            .env(
                "GOCACHE",
                std::env::temp_dir().join("replicate-goduration-cache"),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("go (Debian's golang-go) must be installed for this test");
        {
            use std::io::Write;
            let mut stdin = go.stdin.take().unwrap();
            for i in inputs {
                writeln!(stdin, "{i}").unwrap();
            }
        }
        let out = go.wait_with_output().unwrap();
        assert!(out.status.success());
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), inputs.len());
        for (input, go) in inputs.iter().zip(&lines) {
            assert_eq!(go["in"], *input);
            let want = go["ns"].as_i64();
            assert_eq!(parse_duration(input), want, "{input:?}: Go says {go}");
        }
    }
}

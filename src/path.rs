//! Filer paths as validated component lists, scope tests and source-to-sink mapping.
//!
//! Every path that reaches a sink has passed through here: components are never
//! empty, `.`, `..`, contain `/` or NUL, so a sink can join them under its root
//! without any chance of escaping it.

/// A path that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe or malformed path {path:?}: {why}")]
pub struct BadPath {
    pub path: String,
    pub why: &'static str,
}

/// Check one path component (a base name).
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name == "." || name == ".." {
        return Err("name is . or ..");
    }
    if name.contains('/') {
        return Err("name contains '/'");
    }
    if name.contains('\0') {
        return Err("name contains NUL");
    }
    Ok(())
}

/// Split an absolute filer path into validated components. `/` gives no components.
/// Repeated or trailing slashes are tolerated; `.` and `..` are not.
pub(crate) fn components(path: &str) -> Result<Vec<String>, BadPath> {
    if !path.starts_with('/') {
        return Err(BadPath {
            path: path.into(),
            why: "not absolute",
        });
    }
    let mut out = Vec::new();
    for part in path.split('/') {
        if part.is_empty() {
            continue;
        }
        check_name(part).map_err(|why| BadPath {
            path: path.into(),
            why,
        })?;
        out.push(part.to_string());
    }
    Ok(out)
}

/// Join components into an absolute path.
pub(crate) fn join(parts: &[String]) -> String {
    if parts.is_empty() {
        "/".into()
    } else {
        let mut s = String::new();
        for p in parts {
            s.push('/');
            s.push_str(p);
        }
        s
    }
}

/// Normalise a configured directory: absolute, no trailing slash (except `/`), no `.`/`..`.
pub(crate) fn normalize_dir(dir: &str) -> Result<String, BadPath> {
    Ok(join(&components(dir)?))
}

/// True if `path` equals `dir` or lies under it, on component boundaries.
pub(crate) fn is_equal_or_under(path: &[String], dir: &[String]) -> bool {
    path.len() >= dir.len() && path[..dir.len()] == *dir
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &str) -> Vec<String> {
        components(p).unwrap()
    }

    #[test]
    fn boundary_aware_scope() {
        assert!(is_equal_or_under(&c("/foo"), &c("/foo")));
        assert!(is_equal_or_under(&c("/foo/bar"), &c("/foo/")));
        assert!(!is_equal_or_under(&c("/foobar"), &c("/foo")));
        assert!(is_equal_or_under(&c("/anything"), &c("/")));
        assert!(!is_equal_or_under(&c("/"), &c("/foo")));
    }

    #[test]
    fn rejects_hostile_paths() {
        for bad in ["relative", "/a/../b", "/a/./b", "/a/\0b", "/.."] {
            assert!(components(bad).is_err(), "{bad:?} accepted");
        }
        for bad in ["", ".", "..", "a/b", "x\0"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(c("//a///b/"), vec!["a", "b"]);
        assert_eq!(normalize_dir("/buckets/").unwrap(), "/buckets");
        assert_eq!(normalize_dir("/").unwrap(), "/");
    }
}

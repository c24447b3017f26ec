//! Name and pattern filters (`excludeFileNames`, `excludePathPatterns`), as `weed
//! filer.backup -filerExcludeFileNames` and `-filerExcludePathPatterns` apply them, with
//! two differences on purpose (see [`Filter`]).

/// A wildcard: `*` matches any run of characters (none included), `?` exactly one; every
/// other character matches itself. As upstream's `wildcard` package, except that `?`
/// matches one character where upstream matches one byte (one half of `é` there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wildcard(Vec<char>);

impl Wildcard {
    pub fn new(pattern: &str) -> Wildcard {
        Wildcard(pattern.chars().collect())
    }

    pub fn matches(&self, text: &str) -> bool {
        let (p, t): (&[char], Vec<char>) = (&self.0, text.chars().collect());
        // Greedy with backtracking to the last star: linear in practice, never exponential.
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            // A star first: a `*` in the name is text, and must not be taken as the
            // pattern's star's literal match.
            if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ti));
                pi += 1;
            } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
                pi += 1;
                ti += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }
}

/// What the filters leave out of replication. Upstream applies a file-name pattern to
/// directories too, but only to the directory's own entry, so the files under it were
/// replicated anyway, into a directory whose attributes were never copied; here
/// file-name patterns concern files only, and a directory is left out with everything
/// under it by a path pattern. Path patterns are matched against the components under
/// the source directory, so that a pattern cannot leave out the whole source by matching
/// one of its own components (upstream matches the full path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `excludeFileNames`: a file whose name matches one is left out.
    pub file_names: Vec<Wildcard>,
    /// `excludePathPatterns`: an entry is left out when its name or the name of any
    /// directory it is in (under the source directory) matches one.
    pub path_patterns: Vec<Wildcard>,
    /// `excludeFileNameRegexp` (`-filerExcludeFileName`, deprecated upstream): a file
    /// whose name this regular expression finds a match in is left out.
    pub file_name_regexp: Option<NameRegexp>,
}

/// A regular expression over names (Go's RE2 syntax, which the `regex` crate shares),
/// compared by its text.
#[derive(Debug, Clone)]
pub struct NameRegexp(pub regex::Regex);

impl PartialEq for NameRegexp {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for NameRegexp {}

impl Filter {
    /// Whether any component of `rel` (a path under the source directory) matches a path
    /// pattern.
    pub fn excludes_path(&self, rel: &[String]) -> bool {
        !self.path_patterns.is_empty()
            && rel
                .iter()
                .any(|c| self.path_patterns.iter().any(|w| w.matches(c)))
    }

    /// Whether a file named `name` is left out by its name.
    pub fn excludes_file_name(&self, name: &str) -> bool {
        self.file_names.iter().any(|w| w.matches(name))
            || self
                .file_name_regexp
                .as_ref()
                .is_some_and(|r| r.0.is_match(name))
    }

    pub fn is_empty(&self) -> bool {
        self.file_names.is_empty()
            && self.path_patterns.is_empty()
            && self.file_name_regexp.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_upstreams_do() {
        for (pattern, text, want) in [
            ("*.tmp", "a.tmp", true),
            ("*.tmp", ".tmp", true),
            ("*.tmp", "a.tmp.gz", false),
            ("._*", "._x", true),
            ("._*", "x._", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a?c", "aéc", true),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("**x", "x", true),
            ("temp*", "temp", true),
            ("temp*", "atemp", false),
            ("*a*a*a*a*b", &"a".repeat(60), false),
            ("snap[1]", "snap[1]", true),
            ("*.tmp", "*x.tmp", true),
            ("*b", "*ab", true),
            ("a*b*c", "a*b*xc", true),
            ("a*", "a*", true),
            ("?", "*", true),
        ] {
            assert_eq!(
                Wildcard::new(pattern).matches(text),
                want,
                "{pattern:?} on {text:?}"
            );
        }
    }

    #[test]
    fn file_names_concern_files_and_path_patterns_every_component() {
        let f = Filter {
            file_names: vec![Wildcard::new("*.tmp")],
            path_patterns: vec![Wildcard::new(".snapshot"), Wildcard::new("temp*")],
            file_name_regexp: None,
        };
        let rel = |p: &str| p.split('/').map(String::from).collect::<Vec<_>>();
        assert!(f.excludes_file_name("x.tmp"));
        assert!(!f.excludes_file_name("x.txt"));
        assert!(f.excludes_path(&rel("a/.snapshot/b")));
        assert!(f.excludes_path(&rel("tempdir")));
        assert!(f.excludes_path(&rel("a/b/temp1.txt")));
        assert!(!f.excludes_path(&rel("a/b/mytemp")));
        assert!(!Filter::default().excludes_path(&rel("temp")));
        // Upstream's deprecated regular expression: a match anywhere in the name.
        let f = Filter {
            file_name_regexp: Some(NameRegexp(regex::Regex::new(r"^\.~|\.swp$").unwrap())),
            ..Filter::default()
        };
        assert!(f.excludes_file_name(".~lock"));
        assert!(f.excludes_file_name("a.swp"));
        assert!(!f.excludes_file_name("a.swp.txt"));
        assert!(!f.is_empty());
    }
}

//! Keys that mean nothing: misspelt keys, sections that do not exist, keys in the wrong
//! file. Upstream ignores them silently; here each is reported with its file and line and,
//! when one is close, the key that was probably meant.
//!
//! What is known: every key of the three templates (`scaffold`, a superset of upstream's
//! templates), and every key the resolver asked for.

use super::{Origin, Problem, RawConfig, scaffold};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Keys read that the templates only mention in comments: the name upstream's code
/// really reads beside the one its template shows.
const ALIASES: [(&str, &str); 1] = [("replication", "sink.s3.uploader_part_size")];

/// Each file's known keys, lower case -> as the template spells it.
fn known() -> Vec<(&'static str, BTreeMap<String, String>)> {
    [
        ("replication", scaffold::REPLICATION),
        ("notification", scaffold::NOTIFICATION),
        ("security", scaffold::SECURITY),
    ]
    .into_iter()
    .map(|(name, text)| {
        let mut keys = BTreeMap::new();
        let table: toml::Table = text.parse().expect("the templates are valid TOML");
        super::leaves("", &toml::Value::Table(table), &mut |key, _| {
            keys.insert(key.to_lowercase(), key);
        });
        for (file, key) in ALIASES {
            if file == name {
                keys.insert(key.to_lowercase(), key.to_string());
            }
        }
        (name, keys)
    })
    .collect()
}

/// A key of a named sink section as the unnamed section spells it:
/// `sink.s3.backup.bucket` -> `sink.s3.bucket` (the sections are alike key for key; the
/// kinds are the sink sections of the replication template).
fn as_unnamed(key: &str) -> std::borrow::Cow<'_, str> {
    static KINDS: std::sync::LazyLock<BTreeSet<String>> = std::sync::LazyLock::new(|| {
        let table: toml::Table = scaffold::REPLICATION
            .parse()
            .expect("the templates are valid TOML");
        table
            .get("sink")
            .and_then(toml::Value::as_table)
            .map(|sinks| sinks.keys().cloned().collect())
            .unwrap_or_default()
    });
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        ["sink", kind, _name, rest @ ..] if !rest.is_empty() && KINDS.contains(*kind) => {
            format!("sink.{kind}.{}", rest.join(".")).into()
        }
        _ => key.into(),
    }
}

fn parent(key: &str) -> &str {
    key.rsplit_once('.').map_or("", |(p, _)| p)
}

fn last(key: &str) -> &str {
    key.rsplit_once('.').map_or(key, |(_, l)| l)
}

/// Levenshtein distance, on characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// The closest of `candidates` to `word`, if close enough to be a typo of it.
fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 4).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (distance(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, c.len()))
        .map(|(_, c)| c)
}

/// Every key set in a file that nothing reads, with the reason and a suggestion.
pub(crate) fn find(raw: &RawConfig, read: &HashSet<String>) -> Vec<Problem> {
    let known = known();
    let sections: BTreeSet<String> = known
        .iter()
        .flat_map(|(_, keys)| keys.keys())
        .flat_map(|k| {
            let parts: Vec<&str> = k.split('.').collect();
            (1..parts.len()).map(move |n| parts[..n].join("."))
        })
        .collect();
    let mut reported_sections = HashSet::new();
    let mut out = Vec::new();
    for (key, path, line) in raw.entries() {
        let Some(file) = raw
            .files
            .iter()
            .find(|(_, p)| p == path)
            .map(|(n, _)| n.as_str())
        else {
            continue;
        };
        let origin = match line {
            Some(l) => Origin::Line(path.to_path_buf(), l),
            None => Origin::File(path.to_path_buf()),
        };
        let named = key;
        let key: &str = &as_unnamed(named);
        let here = known.iter().find(|(n, _)| *n == file).map(|(_, k)| k);
        if here.is_some_and(|k| k.contains_key(key)) {
            continue;
        }
        if let Some((home, keys)) = known.iter().find(|(_, k)| k.contains_key(key)) {
            out.push(Problem {
                origin,
                key: keys[key].clone(),
                message: format!("belongs in {home}.toml, not {file}.toml"),
            });
            continue;
        }
        if read.contains(key) || read.contains(named) {
            continue;
        }
        // The outermost section that does not exist, reported once.
        let parts: Vec<&str> = key.split('.').collect();
        let missing = (1..parts.len())
            .map(|n| parts[..n].join("."))
            .find(|s| !sections.contains(s));
        if let Some(section) = missing {
            if reported_sections.insert(section.clone()) {
                let siblings = sections
                    .iter()
                    .filter(|s| parent(s) == parent(&section))
                    .map(String::as_str);
                let hint = nearest(&section, siblings)
                    .map(|s| format!("; did you mean [{s}]?"))
                    .unwrap_or_default();
                out.push(Problem {
                    origin,
                    key: section.clone(),
                    message: format!("unknown section [{section}] (ignored){hint}"),
                });
            }
            continue;
        }
        let all = known.iter().flat_map(|(_, k)| k.iter());
        let same_section: Vec<&str> = all
            .clone()
            .filter(|(k, _)| parent(k) == parent(key))
            .map(|(_, original)| last(original))
            .collect();
        let hint = nearest(last(key), same_section)
            .map(String::from)
            .or_else(|| {
                // A key outside its section (`concurrency` above `[replicate]`).
                let by_name: Vec<&str> = all
                    .filter(|(k, _)| distance(last(k), last(key)) <= 1)
                    .map(|(_, original)| original.as_str())
                    .collect();
                (by_name.len() == 1).then(|| by_name[0].to_string())
            })
            .map(|k| format!("; did you mean `{k}`?"))
            .unwrap_or_default();
        out.push(Problem {
            origin,
            key: named.to_string(),
            message: format!("unknown key (ignored){hint}"),
        });
    }
    out
}

/// Every key the resolver reads is in a template (run by every resolve in the unit tests,
/// which between them enable every input and sink), so none is ever called unknown and
/// `scaffold` shows them all.
#[cfg(test)]
pub(crate) fn assert_templates_know(read: &HashSet<String>) {
    let known = known();
    let unknown: Vec<&String> = read
        .iter()
        .filter(|k| {
            !known
                .iter()
                .any(|(_, keys)| keys.contains_key(&*as_unnamed(k)))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "keys read but in no template: {unknown:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("concurency", "concurrency"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(
            nearest("concurency", ["concurrency", "on_gap"]),
            Some("concurrency")
        );
        assert_eq!(nearest("sink.nosuch", ["sink.s3", "sink.local"]), None);
    }
}

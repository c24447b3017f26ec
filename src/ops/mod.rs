//! The commands operators run besides the replicator itself: `check`, `verify` and
//! `backfill`. They share the configuration loading of the replicator (`setup::Setup`)
//! and a walk over the source tree.

pub(crate) mod backfill;
pub(crate) mod check;
pub(crate) mod reconcile;
pub(crate) mod retention;
pub(crate) mod verify;

pub(crate) use crate::filer::tree::{Page, SourceTree};

pub(crate) use crate::event::full_path;

/// `path` as components, if it is a plain path: one that maps back onto itself (`a//b`
/// on an object store would be read as `a/b`, a different, legitimate file).
pub(crate) fn plain_path(path: &str) -> Option<Vec<String>> {
    let parts = crate::path::components(path).ok()?;
    (crate::path::join(&parts) == path).then_some(parts)
}

/// `bytes` for people: `512 B`, `3.4 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RawEvent;
    use crate::pb::Entry;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn synthetic_events_decode_as_create_and_delete() {
        let e = Entry {
            name: "f".into(),
            ..Default::default()
        };
        let c = RawEvent::created("/a/", &e);
        assert_eq!(c.key, "/a/f");
        let ev = RawEvent::new(c.key.clone(), c.payload.clone());
        assert_eq!(
            crate::event::change(&c.key, ev.notification().unwrap()),
            "create"
        );
        let d = RawEvent::deleted("/a/f");
        let ev = RawEvent::new(d.key.clone(), d.payload.clone());
        let ev = ev.notification().unwrap();
        assert_eq!(crate::event::change(&d.key, ev), "delete");
        assert_eq!(ev.old_entry.as_ref().unwrap().name, "f");
    }
}

//! The commands operators run besides the replicator itself: `check`, `verify` and
//! `backfill`. They share the configuration loading of the replicator (`setup::Setup`)
//! and a walk over the source tree.

pub mod backfill;
pub mod check;
pub mod reconcile;
pub mod verify;

use crate::event::RawEvent;
pub use crate::filer::tree::{Page, SourceTree};
use crate::pb::{Entry, EventNotification};
use prost::Message;

/// The full path of `entry` in directory `dir`.
pub fn full_path(dir: &str, entry: &Entry) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), entry.name)
}

/// `path` as components, if it is a plain path: one that maps back onto itself (`a//b`
/// on an object store would be read as `a/b`, a different, legitimate file).
pub fn plain_path(path: &str) -> Option<Vec<String>> {
    let parts = crate::replicate::path::components(path).ok()?;
    (crate::replicate::path::join(&parts) == path).then_some(parts)
}

/// The event a filer would publish had `entry` just been created in `dir`.
pub fn create_event(dir: &str, entry: &Entry) -> RawEvent {
    RawEvent {
        key: full_path(dir, entry),
        defect: None,
        payload: EventNotification {
            new_entry: Some(entry.clone()),
            new_parent_path: dir.to_string(),
            ..Default::default()
        }
        .encode_to_vec()
        .into(),
    }
}

/// The event a filer would publish had the file at `path` just been deleted.
pub fn delete_event(path: &str) -> RawEvent {
    let name = path.rsplit('/').next().unwrap_or_default().to_string();
    RawEvent {
        key: path.to_string(),
        defect: None,
        payload: EventNotification {
            old_entry: Some(Entry {
                name,
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
        .into(),
    }
}

/// `bytes` for people: `512 B`, `3.4 MiB`.
pub fn human_bytes(bytes: u64) -> String {
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
        let c = create_event("/a/", &e);
        assert_eq!(c.key, "/a/f");
        let ev = crate::event::decode(&c.payload).unwrap();
        assert_eq!(crate::event::change(&c.key, &ev), "create");
        let d = delete_event("/a/f");
        let ev = crate::event::decode(&d.payload).unwrap();
        assert_eq!(crate::event::change(&d.key, &ev), "delete");
        assert_eq!(ev.old_entry.unwrap().name, "f");
    }
}

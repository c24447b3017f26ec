//! The commands operators run besides the replicator itself: `check`, `verify` and
//! `backfill`. They share the configuration loading of the replicator (`app::Setup`)
//! and a walk over the source tree.

pub mod backfill;
pub mod check;
pub mod verify;

use crate::event::RawEvent;
use crate::filer::FilerSource;
use crate::pb::{Entry, EventNotification};
use crate::replicate::path::is_equal_or_under;
use prost::Message;
use std::collections::VecDeque;
use tokio_util::sync::CancellationToken;

/// The source tree under a directory, breadth first, one listing page at a time (so
/// memory stays bounded by a page and the queue of directory names, however large a
/// directory is), leaving out excluded directories.
pub struct SourceTree<'a> {
    source: &'a FilerSource,
    excludes: &'a [Vec<String>],
    queue: VecDeque<String>,
    /// The directory being listed, and the last name listed in it.
    current: Option<(String, String)>,
    /// Wait out an unreachable filer (backfill) instead of failing (verify).
    patient: bool,
}

/// One page of one directory's listing.
pub struct Page {
    pub dir: String,
    pub entries: Vec<Entry>,
    /// The directory's last page.
    pub last: bool,
}

impl<'a> SourceTree<'a> {
    pub fn new(
        source: &'a FilerSource,
        root: &str,
        excludes: &'a [Vec<String>],
        patient: bool,
    ) -> Self {
        SourceTree {
            source,
            excludes,
            queue: VecDeque::from([root.to_string()]),
            current: None,
            patient,
        }
    }

    /// The next page; `Ok(None)` at the end, or when `stop` fired.
    pub async fn next(&mut self, stop: &CancellationToken) -> Result<Option<Page>, tonic::Status> {
        let (dir, start) = match self.current.take() {
            Some(c) => c,
            None => match self.queue.pop_front() {
                Some(dir) => (dir, String::new()),
                None => return Ok(None),
            },
        };
        let entries = if self.patient {
            match crate::source::subscribe::list_page(self.source, &dir, &start, stop).await {
                Some(page) => page,
                None => return Ok(None),
            }
        } else {
            match self.source.list_page(&dir, &start).await {
                Ok(e) => e,
                // The source directory itself may not exist yet: an empty tree.
                Err(s) if crate::filer::is_not_found(&s) => Vec::new(),
                Err(s) => return Err(s),
            }
        };
        let last = entries.len() < crate::filer::LIST_PAGE;
        if !last && let Some(e) = entries.last() {
            self.current = Some((dir.clone(), e.name.clone()));
        }
        let base = dir.trim_end_matches('/');
        for e in entries.iter().filter(|e| e.is_directory) {
            let path = format!("{base}/{}", e.name);
            let parts = crate::replicate::path::components(&path).unwrap_or_default();
            if !self.excludes.iter().any(|ex| is_equal_or_under(&parts, ex)) {
                self.queue.push_back(path);
            }
        }
        Ok(Some(Page { dir, entries, last }))
    }
}

/// The full path of `entry` in directory `dir`.
pub fn full_path(dir: &str, entry: &Entry) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), entry.name)
}

/// The event a filer would publish had `entry` just been created in `dir`.
pub fn create_event(dir: &str, entry: &Entry) -> RawEvent {
    RawEvent {
        key: full_path(dir, entry),
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

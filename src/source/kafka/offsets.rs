//! Per-partition progress, and the offset file in upstream's JSON format.
//!
//! `{"topic":"seaweedfs_filer","partitionOffsets":{"0":1234}}` holds the *last
//! processed* offset per partition; consumption resumes at the next one. Unlike
//! upstream, the file is replaced atomically (temp file, fsync, rename) and saved on
//! shutdown too.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct OffsetFile {
    topic: String,
    #[serde(rename = "partitionOffsets")]
    partition_offsets: BTreeMap<i32, i64>,
}

#[derive(Debug, Default)]
struct State {
    last: BTreeMap<i32, i64>,
    dirty: bool,
}

/// Progress of one topic, shared by the partition workers and the saver.
#[derive(Debug)]
pub(crate) struct OffsetBook {
    path: PathBuf,
    topic: String,
    state: Mutex<State>,
}

impl OffsetBook {
    /// Load progress from `path`. A missing file starts fresh; an unreadable file or
    /// one for another topic starts fresh with a warning (returned, for logging).
    pub(crate) fn load(path: &Path, topic: &str) -> (OffsetBook, Option<String>) {
        let mut warning = None;
        let mut last = BTreeMap::new();
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<OffsetFile>(&bytes) {
                Ok(f) if f.topic == topic => {
                    // The last processed offset: -1 (nothing yet) up to just below the
                    // largest offset there is. Anything else is damage, and that
                    // partition starts from its oldest message rather than nowhere.
                    let (good, bad): (BTreeMap<i32, i64>, BTreeMap<i32, i64>) = f
                        .partition_offsets
                        .into_iter()
                        .partition(|(p, o)| *p >= 0 && (-1..i64::MAX - 1).contains(o));
                    if !bad.is_empty() {
                        warning = Some(format!(
                            "offset file {} holds offsets no partition can have ({}); those partitions start from their oldest messages",
                            path.display(),
                            bad.iter()
                                .map(|(p, o)| format!("partition {p}: {o}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    last = good;
                }
                Ok(f) => {
                    warning = Some(format!(
                        "offset file {} is for topic {:?}, not {topic:?}; starting from the oldest offsets",
                        path.display(),
                        f.topic
                    ))
                }
                Err(e) => {
                    warning = Some(format!(
                        "offset file {} cannot be read ({e}); starting from the oldest offsets",
                        path.display()
                    ))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warning = Some(format!(
                    "offset file {}: {e}; starting from the oldest offsets",
                    path.display()
                ))
            }
        }
        let book = OffsetBook {
            path: path.to_path_buf(),
            topic: topic.to_string(),
            state: Mutex::new(State {
                last,
                ..Default::default()
            }),
        };
        (book, warning)
    }

    /// Progress kept in memory only (consumer-group mode commits it to the broker).
    pub(crate) fn in_memory(topic: &str) -> OffsetBook {
        OffsetBook {
            path: PathBuf::new(),
            topic: topic.to_string(),
            state: Mutex::new(State::default()),
        }
    }

    /// Forget a partition's progress (it moved to another consumer, or its
    /// offset was out of the topic's range).
    pub(crate) fn forget(&self, partition: i32) {
        let mut s = self.lock();
        if s.last.remove(&partition).is_some() {
            s.dirty = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where to resume a partition: the offset after the last processed one.
    pub(crate) fn resume_at(&self, partition: i32) -> Option<i64> {
        self.lock().last.get(&partition).map(|o| o + 1)
    }

    /// The event at `offset` and every earlier one of its partition are finished.
    pub(crate) fn done(&self, partition: i32, offset: i64) {
        let mut s = self.lock();
        if s.last.get(&partition).is_none_or(|o| *o < offset) {
            s.last.insert(partition, offset);
            s.dirty = true;
        }
    }

    /// The committed offsets.
    pub(crate) fn snapshot(&self) -> BTreeMap<i32, i64> {
        self.lock().last.clone()
    }

    /// Write the file if anything changed since the last save.
    pub(crate) fn save_if_dirty(&self) -> std::io::Result<bool> {
        let snapshot = {
            let mut s = self.lock();
            if !s.dirty {
                return Ok(false);
            }
            s.dirty = false;
            s.last.clone()
        };
        let result = self.write(snapshot);
        if result.is_err() {
            self.lock().dirty = true;
        }
        result.map(|_| true)
    }

    fn write(&self, partition_offsets: BTreeMap<i32, i64>) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let body = serde_json::to_vec(&OffsetFile {
            topic: self.topic.clone(),
            partition_offsets,
        })
        .expect("offsets serialise");
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".offset-")
            .tempfile_in(&dir)?;
        tmp.write_all(&body)?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o640))?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_upstream_format() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("last.offset");
        std::fs::write(&path, r#"{"topic":"t","partitionOffsets":{"0":41,"3":7}}"#).unwrap();
        let (book, warn) = OffsetBook::load(&path, "t");
        assert!(warn.is_none());
        assert_eq!(book.resume_at(0), Some(42));
        assert_eq!(book.resume_at(3), Some(8));
        assert_eq!(book.resume_at(1), None);
        book.done(0, 42);
        assert!(book.save_if_dirty().unwrap());
        assert!(!book.save_if_dirty().unwrap(), "nothing new to save");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, r#"{"topic":"t","partitionOffsets":{"0":42,"3":7}}"#);
    }

    /// A damaged offset file never panics (it did: exit 101 at the partition list) and
    /// loses nothing: each impossible offset restarts its partition from the oldest.
    #[test]
    fn impossible_offsets_restart_their_partitions() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("o");
        std::fs::write(
            &path,
            format!(
                r#"{{"topic":"t","partitionOffsets":{{"0":-5,"1":{},"2":7,"3":-1,"-4":3}}}}"#,
                i64::MAX
            ),
        )
        .unwrap();
        let (book, warn) = OffsetBook::load(&path, "t");
        let warn = warn.unwrap();
        assert!(
            warn.contains("partition 0: -5") && warn.contains("partition 1"),
            "{warn}"
        );
        assert_eq!(book.resume_at(0), None);
        assert_eq!(book.resume_at(1), None);
        assert_eq!(book.resume_at(2), Some(8));
        assert_eq!(book.resume_at(3), Some(0));
        for garbage in [
            r#"{"topic":"t","partitionOffsets":{"x":1}}"#,
            r#"{"topic":"t","partitionOffsets":{"0":1e99}}"#,
            r#"{"topic":"t","partitionOffsets":{"0":99999999999999999999}}"#,
            r#"{"topic":"t","partitionOffsets":[]}"#,
            "\u{0}\u{ff}",
        ] {
            std::fs::write(&path, garbage).unwrap();
            let (book, warn) = OffsetBook::load(&path, "t");
            assert!(warn.is_some(), "{garbage}");
            assert!(book.snapshot().is_empty(), "{garbage}");
        }
    }

    #[test]
    fn foreign_topic_or_garbage_starts_fresh_with_warning() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("o");
        std::fs::write(&path, r#"{"topic":"other","partitionOffsets":{"0":5}}"#).unwrap();
        let (book, warn) = OffsetBook::load(&path, "t");
        assert!(warn.unwrap().contains("other"));
        assert_eq!(book.resume_at(0), None);
        std::fs::write(&path, "{trunc").unwrap();
        assert!(OffsetBook::load(&path, "t").1.is_some());
    }
}

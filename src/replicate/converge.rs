//! Applying a plan so that the sink converges to the source's current state.
//!
//! Delivery is at-least-once and a topic's partitions are not ordered among themselves,
//! so an event may arrive after later events touching the same paths, or again after a
//! crash. Replaying history blindly then goes wrong: a replayed directory rename carries
//! along files created under the old name afterwards, a rename applied after a delete of
//! its new name brings the file back. So every operation asks the source (the truth) what
//! it holds now at each path the event touches, and does only what is still true:
//!
//! - **create / update** of P: writes what the source holds at P now (a newer version than
//!   the event's, if there is one); nothing if the source no longer has P as this kind of
//!   entry (the later event that removed or replaced it does the rest).
//! - **delete** of P: nothing if the source has P again as the same kind of entry (the
//!   later event that made it brings it); otherwise the delete, then every ancestor
//!   directory that the source no longer has and that is empty on the sink goes too. If
//!   the source still holds the very entry the event deleted (and the delete frees its
//!   chunks: one that keeps them is half of a rename), its delete is still under way: a
//!   recursive delete publishes the event of every entry under the directory, and the
//!   directory's own, before it removes them (`doBatchDeleteFolderMetaAndData`). The
//!   event is applied again shortly ([`Applied::NotYet`]); were it taken for a new entry,
//!   the sink would keep what the source deleted, for good once the directory is made
//!   again.
//! - **rename** O -> N: the new side is written only if the source holds this very
//!   version at N (moved natively when the source no longer has O, else copied); the old
//!   side is removed only if the source no longer has O. A directory rename creates the
//!   new directory and moves nothing by itself: the filer publishes a rename event for
//!   every entry under it, and each of those moves its own entry by the same rule, so a
//!   replay can never carry along what was created under the old name later.
//!
//! Each rule is safe on its own: the sink only ever moves towards what the source holds
//! now, and whatever a rule leaves undone belongs to a later event of the stream, which
//! is applied after the source changed. [`Truth`] is the seam that lets a model test
//! drive this with an in-memory source.

use super::{Plan, Rules, SinkKey};
use crate::filer::fileid::chunk_file_id;
use crate::filer::{FilerSource, ReadError, mtime_ns};
use crate::pb::{Entry, EventNotification};
use crate::sink::{Sink, SinkError};
use async_trait::async_trait;

/// What the source holds now.
#[async_trait]
pub trait Truth: Send + Sync {
    /// The entry at this source path now, `None` if there is none.
    async fn entry(&self, path: &str) -> Result<Option<Entry>, ReadError>;
}

#[async_trait]
impl Truth for FilerSource {
    async fn entry(&self, path: &str) -> Result<Option<Entry>, ReadError> {
        self.lookup_entry(path)
            .await
            .map_err(|status| ReadError::Entry {
                path: path.to_string(),
                status: Box::new(status),
            })
    }
}

/// The source paths an event touches: where the entry was and where it is now (the same
/// path for a create, an update or a delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub old: String,
    pub new: String,
}

impl Paths {
    pub fn of(key: &str, ev: &EventNotification) -> Paths {
        let old = key.trim_end_matches('/').to_string();
        let new = match (&ev.old_entry, &ev.new_entry) {
            (Some(_), Some(new)) => {
                let parent = if ev.new_parent_path.is_empty() {
                    old.rsplit_once('/').map_or("", |(d, _)| d).to_string()
                } else {
                    ev.new_parent_path.clone()
                };
                format!("{}/{}", parent.trim_end_matches('/'), new.name)
            }
            _ => old.clone(),
        };
        Paths { old, new }
    }
}

/// Whether two entries are the same version of a file or directory: what a rename keeps
/// (attributes, chunks, inline content) is equal.
pub(crate) fn same_version(a: &Entry, b: &Entry) -> bool {
    if a.is_directory != b.is_directory {
        return false;
    }
    if a.is_directory {
        return true;
    }
    let size = |e: &Entry| e.attributes.as_ref().map_or(0, |a| a.file_size);
    mtime_ns(a) == mtime_ns(b)
        && size(a) == size(b)
        && a.content == b.content
        && a.chunks.len() == b.chunks.len()
        && a.chunks.iter().zip(&b.chunks).all(|(x, y)| {
            x.offset == y.offset && x.size == y.size && chunk_file_id(x) == chunk_file_id(y)
        })
}

/// Whether two entries are one and the same, not merely alike: the same version of a
/// file, or a directory that was never deleted and made again in between (it keeps its
/// times to the nanosecond and its inode). Hard links of one file are told apart by
/// their count, which a delete of one of them lowers.
pub(crate) fn same_incarnation(a: &Entry, b: &Entry) -> bool {
    if !same_version(a, b)
        || a.hard_link_id != b.hard_link_id
        || a.hard_link_counter != b.hard_link_counter
    {
        return false;
    }
    if !a.is_directory {
        return true;
    }
    let identity = |e: &Entry| {
        e.attributes
            .as_ref()
            .map(|t| (t.mtime, t.mtime_ns, t.crtime, t.inode))
    };
    identity(a).is_some() && identity(a) == identity(b)
}

/// What applying a plan did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The sink was asked to change.
    Written,
    /// The source has moved on: a later event brings what it holds now.
    Overtaken,
    /// A delete the source has published but not finished: it still holds the very
    /// entry the event deleted. Nothing was done; apply the plan again shortly.
    NotYet,
}

fn read_err(key: &SinkKey, source: ReadError) -> SinkError {
    SinkError::Read {
        key: key.full.clone(),
        source,
    }
}

/// The entry at `path` now, if it is a directory when `directory` says so, a file when
/// not (the other kind there is a later change, as good as none for this event).
async fn current(
    truth: &dyn Truth,
    path: &str,
    key: &SinkKey,
    directory: bool,
) -> Result<Option<Entry>, SinkError> {
    Ok(truth
        .entry(path)
        .await
        .map_err(|e| read_err(key, e))?
        .filter(|e| e.is_directory == directory))
}

/// Apply `plan` (made by `rules` from an event at `paths`) so that the sink converges
/// to what `truth` holds now. Incremental sinks keep history instead: see
/// [`super::apply`].
///
/// `in_order`: the event comes from one totally ordered stream (the metadata log) whose
/// later changes to these paths are all applied after it. A create or an update then
/// writes the entry the event carries without asking the source first: if the source
/// has moved on, the later events of the stream bring the sink there, as they would after
/// the lookup, and data already gone from the source is settled by the caller (see
/// `Pipeline::superseded`). Events of several partitions, of queues, and replays beside
/// the stream (a reconciliation, `backfill`) look first.
pub async fn apply(
    plan: &Plan,
    paths: &Paths,
    rules: &Rules,
    truth: &dyn Truth,
    sink: &dyn Sink,
    signatures: &[i32],
    in_order: bool,
) -> Result<Applied, SinkError> {
    match plan {
        Plan::Skip(_) => Ok(Applied::Written),
        Plan::Create { .. } | Plan::Update { .. } if in_order => {
            super::apply(plan, rules, sink, signatures).await?;
            Ok(Applied::Written)
        }
        Plan::Create { key, entry } => {
            match current(truth, &paths.new, key, entry.is_directory).await? {
                Some(now) => {
                    sink.create_entry(key, &now, signatures).await?;
                    Ok(Applied::Written)
                }
                None => Ok(Applied::Overtaken),
            }
        }
        Plan::Update {
            key,
            old,
            new_parent,
            new,
            delete_chunks,
        } => {
            let Some(now) = current(truth, &paths.new, key, new.is_directory).await? else {
                return Ok(Applied::Overtaken);
            };
            super::update(sink, key, old, new_parent, &now, *delete_chunks, signatures).await?;
            Ok(Applied::Written)
        }
        Plan::Delete {
            key,
            is_directory,
            delete_chunks,
            removed,
        } => {
            match current(truth, &paths.old, key, *is_directory).await? {
                // A delete that keeps its chunks is the old half of a rename (the pre-4.18
                // format), and a rename back may bring the very entry back: not waited for.
                Some(now)
                    if *delete_chunks
                        && removed.as_ref().is_some_and(|r| same_incarnation(&now, r)) =>
                {
                    return Ok(Applied::NotYet);
                }
                Some(_) => return Ok(Applied::Overtaken),
                None => {}
            }
            rules
                .remove(sink, key, *is_directory, *delete_chunks, signatures)
                .await?;
            let parent = key.parent(&rules.sink_dir);
            prune(rules, truth, sink, &parent, &parent_path(&paths.old)).await?;
            Ok(Applied::Written)
        }
        Plan::Move { old, new, entry } => {
            let dir = entry.is_directory;
            let old_gone = current(truth, &paths.old, old, dir).await?.is_none();
            let now = current(truth, &paths.new, new, dir)
                .await?
                .filter(|now| same_version(now, entry));
            let mut applied = Applied::Overtaken;
            let mut moved = false;
            if let Some(now) = &now {
                applied = Applied::Written;
                // A directory's entries move by their own events; a file moves natively
                // only when the source no longer has the old name (else the sink's copy
                // there may already be what the source holds there now), and the write
                // after it checks that what moved is this version.
                if !dir && old_gone {
                    moved = sink.move_entry(old, new, now, signatures).await?;
                }
                sink.create_entry(new, now, signatures).await?;
            }
            if old_gone {
                applied = Applied::Written;
                if dir {
                    prune(rules, truth, sink, old, &paths.old).await?;
                } else {
                    if !moved && now.is_none() {
                        // Renamed and then deleted on the source: the old name's copy is
                        // all the sink has of it, and it goes as a delete does (into the
                        // trash, under deletes = "trash").
                        rules.remove(sink, old, false, true, signatures).await?;
                    } else if !moved {
                        sink.delete_entry(old, false, false, signatures).await?;
                    }
                    let parent = old.parent(&rules.sink_dir);
                    prune(rules, truth, sink, &parent, &parent_path(&paths.old)).await?;
                }
            }
            Ok(applied)
        }
    }
}

/// Remove the sink directory `key` (source path `path`) and then each ancestor, as long
/// as the source has none of them and each is empty on the sink: what a rename or a
/// delete leaves behind once its last entry has gone.
async fn prune(
    rules: &Rules,
    truth: &dyn Truth,
    sink: &dyn Sink,
    key: &SinkKey,
    path: &str,
) -> Result<(), SinkError> {
    let mut key = key.clone();
    let mut source_path = path.to_string();
    while !key.is_root() {
        if truth
            .entry(&source_path)
            .await
            .map_err(|e| read_err(&key, e))?
            .is_some()
        {
            return Ok(());
        }
        if !sink.remove_empty_dir(&key).await? {
            return Ok(());
        }
        key = key.parent(&rules.sink_dir);
        source_path = parent_path(&source_path);
    }
    Ok(())
}

fn parent_path(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((dir, _)) => dir.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{FileChunk, FuseAttributes};

    fn file(mtime: i64, fid: &str) -> Entry {
        Entry {
            name: "f".into(),
            attributes: Some(FuseAttributes {
                mtime,
                file_size: 10,
                ..Default::default()
            }),
            chunks: vec![FileChunk {
                file_id: fid.into(),
                size: 10,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn versions_differ_by_time_chunks_or_kind() {
        assert!(same_version(&file(5, "1,ab"), &file(5, "1,ab")));
        assert!(!same_version(&file(5, "1,ab"), &file(6, "1,ab")));
        assert!(!same_version(&file(5, "1,ab"), &file(5, "1,ac")));
        let mut dir = file(5, "1,ab");
        dir.is_directory = true;
        assert!(!same_version(&dir, &file(5, "1,ab")));
    }

    #[test]
    fn paths_of_each_event_shape() {
        let e = |name: &str| {
            Some(Entry {
                name: name.into(),
                ..Default::default()
            })
        };
        let rename = EventNotification {
            old_entry: e("a"),
            new_entry: e("b"),
            new_parent_path: "/x/".into(),
            ..Default::default()
        };
        assert_eq!(
            Paths::of("/d/a", &rename),
            Paths {
                old: "/d/a".into(),
                new: "/x/b".into()
            }
        );
        let in_place = EventNotification {
            old_entry: e("a"),
            new_entry: e("b"),
            ..Default::default()
        };
        assert_eq!(Paths::of("/d/a", &in_place).new, "/d/b");
        let create = EventNotification {
            new_entry: e("a"),
            new_parent_path: "/d".into(),
            ..Default::default()
        };
        assert_eq!(Paths::of("/d/a", &create).new, "/d/a");
        assert_eq!(parent_path("/a"), "/");
        assert_eq!(parent_path("/a/b/"), "/a");
    }
}

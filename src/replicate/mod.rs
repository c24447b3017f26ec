//! The replicator: turns one filer event into one sink operation.
//!
//! Scope and exclusions, both rename event formats (one logical rename event, or
//! the pre-4.18 create-then-delete pair), renames that cross the scope boundary,
//! incremental `YYYY-MM-DD` directories and the mapping from source to sink paths
//! follow upstream's `replicator.go`. Two things are stricter on purpose: every
//! path is validated (no `..`, `/` in names or NUL can reach a sink), and an event
//! that would delete or move the sink root is refused.

pub mod converge;
pub mod filter;

use crate::path::{BadPath, check_name, components, is_equal_or_under, join};
use crate::pb::{Entry, EventNotification};
use crate::sink::{Sink, SinkError};
use chrono::TimeZone;

/// Replication rules from `[source.filer]` and the sink's `directory`/`is_incremental`.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Normalised `source.filer.directory`, as components.
    pub source_dir: Vec<String>,
    /// Normalised `excludeDirectories`.
    pub excludes: Vec<Vec<String>>,
    /// `excludeFileNames` and `excludePathPatterns`.
    pub filter: filter::Filter,
    /// The sink's `directory` as given (used for display keys only).
    pub sink_dir: String,
    /// Date directories (`is_incremental`).
    pub incremental: bool,
    /// `deletes = "keep"`: deletes are not replicated, and a rename adds the new name
    /// and keeps the old one.
    pub keep_deletes: bool,
    /// `deletes = "trash"`: the trash directory's name (under the sink's directory),
    /// where deletes move what they remove. Source entries of that name directly under
    /// the source directory are left out: their copies would land in the trash.
    pub trash_dir: Option<String>,
    /// Skip events flagged `is_from_other_cluster` (filer sinks only).
    pub skip_other_cluster: bool,
    /// Skip events that already passed through one of these filers (the target filer's
    /// signature, so a change replicated to it is never sent back).
    pub skip_signatures: Vec<i32>,
}

pub use crate::sink::SinkKey;

const KEEPS: &str = "deletes = \"keep\": the sink keeps what the source deletes";

/// One sink operation, or a reason to do nothing.
// One plan exists per event in flight, so the size of the large variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Skip(&'static str),
    Create {
        key: SinkKey,
        entry: Entry,
    },
    Delete {
        key: SinkKey,
        is_directory: bool,
        delete_chunks: bool,
        /// What a delete event removed; `None` when the plan comes from a rename out of
        /// scope, whose entry lives on elsewhere (and may be renamed back).
        removed: Option<Entry>,
    },
    /// A real move; sinks without a native move get create-then-delete.
    Move {
        old: SinkKey,
        new: SinkKey,
        entry: Entry,
    },
    Update {
        key: SinkKey,
        old: Entry,
        new_parent: SinkKey,
        new: Entry,
        delete_chunks: bool,
    },
}

impl Plan {
    /// Whether applying it reads file data from the source's volume servers.
    pub(crate) fn reads_source(&self) -> bool {
        match self {
            Plan::Create { entry, .. }
            | Plan::Move { entry, .. }
            | Plan::Update { new: entry, .. } => !entry.chunks.is_empty(),
            Plan::Skip(_) | Plan::Delete { .. } => false,
        }
    }
}

/// Why an event was refused. These are permanent: retrying cannot help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    BadPath(#[from] BadPath),
    #[error("entry name {name:?} is unsafe: {why}")]
    BadName { name: String, why: &'static str },
    #[error("refusing to {op} the sink root (event for the source directory itself, key {key:?})")]
    SinkRoot { op: &'static str, key: String },
}

impl Rules {
    /// Whether the entry at source path `p` is replicated.
    fn in_scope(&self, p: &[String], is_directory: bool) -> bool {
        is_equal_or_under(p, &self.source_dir) && !self.excluded_entry(p, is_directory)
    }

    /// Whether source path `p` (as components) is left out whatever it is: in an
    /// excluded directory, or with a component (under the source directory) that a path
    /// pattern matches.
    pub(crate) fn excluded(&self, p: &[String]) -> bool {
        self.excludes.iter().any(|ex| is_equal_or_under(p, ex))
            || (is_equal_or_under(p, &self.source_dir)
                && (self.filter.excludes_path(&p[self.source_dir.len()..])
                    || self.in_trash(&p[self.source_dir.len()..])))
    }

    /// Whether `rel` (under the source or the sink directory) is in the trash directory.
    pub(crate) fn in_trash(&self, rel: &[String]) -> bool {
        self.trash_dir
            .as_ref()
            .is_some_and(|t| rel.first() == Some(t))
    }

    /// Where `deletes = "trash"` moves `key` on `day` (`YYYY-MM-DD`): the same path
    /// under the trash directory's dated directory. `None` unless the policy is trash.
    pub(crate) fn trash_key(&self, key: &SinkKey, day: &str) -> Option<SinkKey> {
        let trash = self.trash_dir.as_ref()?;
        let mut rel = vec![trash.clone(), day.to_string()];
        rel.extend(key.rel.iter().cloned());
        Some(SinkKey::new(&self.sink_dir, rel))
    }

    /// Remove `key` from the sink as the delete policy says: deleted, or moved into
    /// today's trash.
    pub(crate) async fn remove(
        &self,
        sink: &dyn Sink,
        key: &SinkKey,
        is_directory: bool,
        delete_chunks: bool,
        signatures: &[i32],
    ) -> Result<(), SinkError> {
        let today = chrono::Local::now().format("%Y-%m-%d").to_string();
        match self.trash_key(key, &today) {
            Some(to) => sink.trash(key, &to, is_directory, signatures).await,
            None => {
                sink.delete_entry(key, is_directory, delete_chunks, signatures)
                    .await
            }
        }
    }

    /// [`Rules::excluded`], or a file whose name a file-name pattern matches.
    pub(crate) fn excluded_entry(&self, p: &[String], is_directory: bool) -> bool {
        self.excluded(p)
            || (!is_directory && p.last().is_some_and(|n| self.filter.excludes_file_name(n)))
    }

    fn date_dir(&self, entry: Option<&Entry>) -> Option<String> {
        if !self.incremental {
            return None;
        }
        let mtime = entry
            .and_then(|e| e.attributes.as_ref())
            .map(|a| a.mtime)
            .unwrap_or(0);
        let day = chrono::Local
            .timestamp_opt(mtime, 0)
            .single()
            .unwrap_or_else(|| chrono::Local.timestamp_opt(0, 0).unwrap());
        Some(day.format("%Y-%m-%d").to_string())
    }

    fn map(&self, p: &[String], date: &Option<String>) -> SinkKey {
        let mut rel = Vec::with_capacity(p.len() + 1);
        if let Some(d) = date {
            rel.push(d.clone());
        }
        rel.extend(p[self.source_dir.len()..].iter().cloned());
        SinkKey::new(&self.sink_dir, rel)
    }

    /// Decide what one event means for the sink. Pure: no I/O.
    pub fn plan(&self, key: &str, ev: &EventNotification) -> Result<Plan, PlanError> {
        if ev.is_from_other_cluster && self.skip_other_cluster {
            return Ok(Plan::Skip("event came from another cluster"));
        }
        if ev
            .signatures
            .iter()
            .any(|s| self.skip_signatures.contains(s))
        {
            return Ok(Plan::Skip("event already passed through the target filer"));
        }
        let key_parts = components(key)?;
        match (&ev.old_entry, &ev.new_entry) {
            (None, None) => Ok(Plan::Skip("event has neither an old nor a new entry")),
            (None, Some(new)) => {
                if !self.in_scope(&key_parts, new.is_directory) {
                    return Ok(Plan::Skip("outside the source directory"));
                }
                self.create(key, key_parts, new)
            }
            (Some(old), None) => {
                if !self.in_scope(&key_parts, old.is_directory) {
                    return Ok(Plan::Skip("outside the source directory"));
                }
                self.delete(key, &key_parts, old, ev.delete_chunks, true)
            }
            (Some(old), Some(new)) => {
                let target_parent = if ev.new_parent_path.is_empty() {
                    let mut p = key_parts.clone();
                    p.pop();
                    p
                } else {
                    components(&ev.new_parent_path)?
                };
                check_name(&new.name).map_err(|why| PlanError::BadName {
                    name: new.name.clone(),
                    why,
                })?;
                let mut target = target_parent.clone();
                target.push(new.name.clone());
                match (
                    self.in_scope(&key_parts, old.is_directory),
                    self.in_scope(&target, new.is_directory),
                ) {
                    (false, false) => Ok(Plan::Skip("rename outside the source directory")),
                    (false, true) => self.create(&join(&target), target, new),
                    (true, false) if self.keep_deletes => Ok(Plan::Skip(KEEPS)),
                    (true, false) => self.delete(key, &key_parts, old, ev.delete_chunks, false),
                    (true, true) => {
                        let date = self.date_dir(Some(new));
                        let old_key = self.map(&key_parts, &date);
                        let new_key = self.map(&target, &date);
                        if self.incremental || (self.keep_deletes && old_key != new_key) {
                            // A dated copy is history, and a sink that keeps what the
                            // source deletes keeps the old name: the rename adds the new
                            // name's copy and keeps the old one.
                            return self.create(&join(&target), target, new);
                        }
                        if old_key != new_key {
                            if key_parts == self.source_dir || target == self.source_dir {
                                return Err(PlanError::SinkRoot {
                                    op: "move",
                                    key: key.into(),
                                });
                            }
                            Ok(Plan::Move {
                                old: old_key,
                                new: new_key,
                                entry: new.clone(),
                            })
                        } else {
                            // The parent of the source root maps to the sink root.
                            let parent = if is_equal_or_under(&target_parent, &self.source_dir) {
                                target_parent
                            } else {
                                self.source_dir.clone()
                            };
                            let new_parent = self.map(&parent, &date);
                            Ok(Plan::Update {
                                key: old_key,
                                old: old.clone(),
                                new_parent,
                                new: new.clone(),
                                delete_chunks: ev.delete_chunks,
                            })
                        }
                    }
                }
            }
        }
    }

    fn create(&self, key: &str, parts: Vec<String>, new: &Entry) -> Result<Plan, PlanError> {
        if parts == self.source_dir && !new.is_directory {
            return Err(PlanError::SinkRoot {
                op: "replace with a file",
                key: key.into(),
            });
        }
        let date = self.date_dir(Some(new));
        Ok(Plan::Create {
            key: self.map(&parts, &date),
            entry: new.clone(),
        })
    }

    fn delete(
        &self,
        key: &str,
        parts: &[String],
        old: &Entry,
        delete_chunks: bool,
        removed: bool,
    ) -> Result<Plan, PlanError> {
        if parts == self.source_dir.as_slice() {
            return Err(PlanError::SinkRoot {
                op: "delete",
                key: key.into(),
            });
        }
        if self.incremental {
            return Ok(Plan::Skip(
                "incremental sinks keep every dated copy; deletes are not replicated",
            ));
        }
        if self.keep_deletes {
            return Ok(Plan::Skip(KEEPS));
        }
        let date = self.date_dir(Some(old));
        Ok(Plan::Delete {
            key: self.map(parts, &date),
            is_directory: old.is_directory,
            delete_chunks,
            removed: removed.then(|| old.clone()),
        })
    }
}

/// Apply a plan to a sink, with upstream's fallbacks: a move the sink cannot do
/// natively becomes create-then-delete (create first, so a crash leaves two copies
/// rather than none); an update the sink cannot find becomes delete-then-create.
pub(crate) async fn apply(
    plan: &Plan,
    rules: &Rules,
    sink: &dyn Sink,
    signatures: &[i32],
) -> Result<(), SinkError> {
    match plan {
        Plan::Skip(_) => Ok(()),
        Plan::Create { key, entry } => sink.create_entry(key, entry, signatures).await,
        Plan::Delete {
            key,
            is_directory,
            delete_chunks,
            ..
        } => {
            rules
                .remove(sink, key, *is_directory, *delete_chunks, signatures)
                .await
        }
        Plan::Move { old, new, entry } => {
            if sink.move_entry(old, new, entry, signatures).await? {
                return Ok(());
            }
            sink.create_entry(new, entry, signatures).await?;
            sink.delete_entry(old, entry.is_directory, false, signatures)
                .await
        }
        Plan::Update {
            key,
            old,
            new_parent,
            new,
            delete_chunks,
        } => update(sink, key, old, new_parent, new, *delete_chunks, signatures).await,
    }
}

/// An update in place, or, where the sink cannot find the entry to update, delete then
/// create (upstream's fallback).
pub(crate) async fn update(
    sink: &dyn Sink,
    key: &SinkKey,
    old: &Entry,
    new_parent: &SinkKey,
    new: &Entry,
    delete_chunks: bool,
    signatures: &[i32],
) -> Result<(), SinkError> {
    if sink
        .update_entry(key, old, new_parent, new, delete_chunks, signatures)
        .await?
    {
        return Ok(());
    }
    sink.delete_entry(key, old.is_directory, false, signatures)
        .await?;
    sink.create_entry(key, new, signatures).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::FuseAttributes;

    fn rules(src: &str, sink: &str) -> Rules {
        Rules {
            source_dir: components(src).unwrap(),
            excludes: vec![components("/buckets/tmp").unwrap()],
            filter: Default::default(),
            sink_dir: sink.into(),
            incremental: false,
            keep_deletes: false,
            trash_dir: None,
            skip_other_cluster: false,
            skip_signatures: vec![],
        }
    }
    fn entry(name: &str, dir: bool) -> Entry {
        Entry {
            name: name.into(),
            is_directory: dir,
            attributes: Some(FuseAttributes {
                mtime: 1_700_000_000,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
    fn create(key: &str) -> EventNotification {
        let mut parts: Vec<&str> = key.split('/').collect();
        let name = parts.pop().unwrap();
        EventNotification {
            new_entry: Some(entry(name, false)),
            new_parent_path: parts.join("/"),
            delete_chunks: true,
            ..Default::default()
        }
    }
    fn rename(old: &str, new_parent: &str, new_name: &str) -> EventNotification {
        EventNotification {
            old_entry: Some(entry(old.rsplit('/').next().unwrap(), false)),
            new_entry: Some(entry(new_name, false)),
            new_parent_path: new_parent.into(),
            ..Default::default()
        }
    }
    fn full(p: &Plan) -> String {
        match p {
            Plan::Skip(why) => format!("skip: {why}"),
            Plan::Create { key, .. } => format!("create {}", key.full),
            Plan::Delete { key, .. } => format!("delete {}", key.full),
            Plan::Move { old, new, .. } => format!("move {} -> {}", old.full, new.full),
            Plan::Update {
                key, new_parent, ..
            } => format!("update {} in {}", key.full, new_parent.full),
        }
    }

    #[test]
    fn a_sink_that_keeps_deletes_keeps_old_names_too() {
        let mut r = rules("/buckets", "/backup");
        r.keep_deletes = true;
        let delete = EventNotification {
            old_entry: Some(entry("a.txt", false)),
            delete_chunks: true,
            ..Default::default()
        };
        let mut rmdir = delete.clone();
        rmdir.old_entry = Some(entry("d", true));
        let cases: Vec<(&str, EventNotification, &str)> = vec![
            ("/buckets/a.txt", delete, "skip: deletes = \"keep\""),
            ("/buckets/d", rmdir, "skip: deletes = \"keep\""),
            // Renamed: the new name is written, the old one stays.
            (
                "/buckets/a.txt",
                rename("/buckets/a.txt", "/buckets/sub", "b.txt"),
                "create /backup/sub/b.txt",
            ),
            // Out of scope: as good as deleted, so kept.
            (
                "/buckets/a.txt",
                rename("/buckets/a.txt", "/elsewhere", "a.txt"),
                "skip: deletes = \"keep\"",
            ),
            // Into scope, and updates in place, as ever.
            (
                "/elsewhere/a.txt",
                rename("/elsewhere/a.txt", "/buckets", "a.txt"),
                "create /backup/a.txt",
            ),
            (
                "/buckets/a.txt",
                rename("/buckets/a.txt", "/buckets", "a.txt"),
                "update /backup/a.txt in /backup",
            ),
        ];
        for (key, ev, want) in cases {
            let got = full(&r.plan(key, &ev).unwrap());
            assert!(got.starts_with(want), "{key}: {got}, want {want}");
        }
        // Without keep, the same rename is a move and the delete a delete.
        r.keep_deletes = false;
        let got = full(
            &r.plan(
                "/buckets/a.txt",
                &rename("/buckets/a.txt", "/buckets/sub", "b.txt"),
            )
            .unwrap(),
        );
        assert_eq!(got, "move /backup/a.txt -> /backup/sub/b.txt");
    }

    #[test]
    fn filters_judge_both_sides_of_a_rename() {
        let mut r = rules("/buckets", "/backup");
        r.filter = filter::Filter {
            file_names: vec![filter::Wildcard::new("*.tmp")],
            path_patterns: vec![filter::Wildcard::new("temp*")],
            file_name_regexp: None,
        };
        let dir_rename = |old: &str, new_parent: &str, new_name: &str| EventNotification {
            old_entry: Some(entry(old.rsplit('/').next().unwrap(), true)),
            new_entry: Some(entry(new_name, true)),
            new_parent_path: new_parent.into(),
            ..Default::default()
        };
        let mkdir = |key: &str| {
            let mut ev = create(key);
            ev.new_entry.as_mut().unwrap().is_directory = true;
            ev
        };
        let cases: Vec<(&str, EventNotification, &str)> = vec![
            (
                "/buckets/a.tmp",
                create("/buckets/a.tmp"),
                "skip: outside the source directory",
            ),
            (
                "/buckets/a.txt",
                create("/buckets/a.txt"),
                "create /backup/a.txt",
            ),
            // A directory is not a file: a file-name pattern leaves it alone.
            (
                "/buckets/d.tmp",
                mkdir("/buckets/d.tmp"),
                "create /backup/d.tmp",
            ),
            (
                "/buckets/d.tmp/x",
                create("/buckets/d.tmp/x"),
                "create /backup/d.tmp/x",
            ),
            // A path pattern leaves out a directory and all under it.
            (
                "/buckets/temp1",
                mkdir("/buckets/temp1"),
                "skip: outside the source directory",
            ),
            (
                "/buckets/temp1/x",
                create("/buckets/temp1/x"),
                "skip: outside the source directory",
            ),
            (
                "/buckets/a/temp.txt",
                create("/buckets/a/temp.txt"),
                "skip: outside the source directory",
            ),
            // Matched below the source directory only.
            (
                "/buckets/mytemp/x",
                create("/buckets/mytemp/x"),
                "create /backup/mytemp/x",
            ),
            // Renames: onto an excluded name deletes, off one creates.
            (
                "/buckets/a.txt",
                rename("/buckets/a.txt", "/buckets", "a.tmp"),
                "delete /backup/a.txt",
            ),
            (
                "/buckets/b.tmp",
                rename("/buckets/b.tmp", "/buckets", "b.txt"),
                "create /backup/b.txt",
            ),
            (
                "/buckets/b.tmp",
                rename("/buckets/b.tmp", "/buckets", "c.tmp"),
                "skip: rename outside the source directory",
            ),
            (
                "/buckets/w",
                dir_rename("/buckets/w", "/buckets", "temp2"),
                "delete /backup/w",
            ),
            (
                "/buckets/temp3",
                dir_rename("/buckets/temp3", "/buckets", "w3"),
                "create /backup/w3",
            ),
            (
                "/buckets/temp3/f",
                rename("/buckets/temp3/f", "/buckets/w3", "f"),
                "create /backup/w3/f",
            ),
            (
                "/buckets/w/f",
                rename("/buckets/w/f", "/buckets/v", "f"),
                "move /backup/w/f -> /backup/v/f",
            ),
        ];
        for (key, ev, want) in cases {
            assert_eq!(full(&r.plan(key, &ev).unwrap()), want, "{key}");
        }
        assert!(r.excluded(&components("/buckets/temp9/deep").unwrap()));
        assert!(!r.excluded(&components("/temp").unwrap()));
        assert!(r.excluded_entry(&components("/buckets/x/y.tmp").unwrap(), false));
        assert!(!r.excluded_entry(&components("/buckets/x/y.tmp").unwrap(), true));
    }

    #[test]
    fn table_of_events() {
        let r = rules("/buckets", "/backup");
        let del = |_: &str| EventNotification {
            old_entry: Some(entry("x", false)),
            ..Default::default()
        };
        let cases: Vec<(&str, EventNotification, &str)> = vec![
            ("/buckets/b/x", create("/buckets/b/x"), "create /backup/b/x"),
            (
                "/bucketsx/y",
                create("/bucketsx/y"),
                "skip: outside the source directory",
            ),
            (
                "/buckets/tmp/y",
                create("/buckets/tmp/y"),
                "skip: outside the source directory",
            ),
            (
                "/buckets/tmpfoo/y",
                create("/buckets/tmpfoo/y"),
                "create /backup/tmpfoo/y",
            ),
            ("/buckets/b/x", del("/buckets/b/x"), "delete /backup/b/x"),
            (
                "/buckets/b/x",
                rename("/buckets/b/x", "/buckets/c", "y"),
                "move /backup/b/x -> /backup/c/y",
            ),
            (
                "/buckets/b/x",
                rename("/buckets/b/x", "/elsewhere", "y"),
                "delete /backup/b/x",
            ),
            (
                "/other/x",
                rename("/other/x", "/buckets/in", "x"),
                "create /backup/in/x",
            ),
            (
                "/other/x",
                rename("/other/x", "/else", "x"),
                "skip: rename outside the source directory",
            ),
            (
                "/buckets/tmp/x",
                rename("/buckets/tmp/x", "/buckets/ok", "x"),
                "create /backup/ok/x",
            ),
            (
                "/buckets/b/x",
                rename("/buckets/b/x", "/buckets/b", "x"),
                "update /backup/b/x in /backup/b",
            ),
            (
                "/buckets/b/x",
                rename("/buckets/b/x", "", "x"),
                "update /backup/b/x in /backup/b",
            ),
        ];
        for (key, ev, want) in cases {
            assert_eq!(full(&r.plan(key, &ev).unwrap()), want, "key {key}");
        }
    }

    #[test]
    fn root_source_dir_maps_everything() {
        let r = rules("/", "/backup");
        assert_eq!(
            full(&r.plan("/a", &create("/a")).unwrap()),
            "create /backup/a"
        );
        let r = rules("/data", "/");
        assert_eq!(
            full(&r.plan("/data/a/b", &create("/data/a/b")).unwrap()),
            "create /a/b"
        );
    }

    #[test]
    fn hostile_and_root_events_are_refused() {
        let r = rules("/buckets", "/backup");
        assert!(matches!(
            r.plan("/buckets/../etc/x", &create("/x")),
            Err(PlanError::BadPath(_))
        ));
        assert!(matches!(
            r.plan(
                "/buckets/a",
                &rename("/buckets/a", "/buckets", "../../etc/x")
            ),
            Err(PlanError::BadName { .. })
        ));
        assert!(matches!(
            r.plan(
                "/buckets/a",
                &rename("/buckets/a", "/buckets/../../etc", "x")
            ),
            Err(PlanError::BadPath(_))
        ));
        let del = EventNotification {
            old_entry: Some(entry("buckets", true)),
            ..Default::default()
        };
        assert!(matches!(
            r.plan("/buckets", &del),
            Err(PlanError::SinkRoot { .. })
        ));
        assert!(matches!(
            r.plan("/buckets", &rename("/buckets", "/buckets/inner", "x")),
            Err(PlanError::SinkRoot { .. })
        ));
        assert!(matches!(
            r.plan("/buckets", &create("/buckets")),
            Err(PlanError::SinkRoot { .. })
        ));
    }

    #[test]
    fn other_cluster_events_skip_only_when_asked() {
        let mut r = rules("/buckets", "/backup");
        let mut ev = create("/buckets/a");
        ev.is_from_other_cluster = true;
        assert_eq!(
            full(&r.plan("/buckets/a", &ev).unwrap()),
            "create /backup/a"
        );
        r.skip_other_cluster = true;
        assert!(matches!(r.plan("/buckets/a", &ev).unwrap(), Plan::Skip(_)));
    }

    #[test]
    fn events_that_passed_through_the_target_are_skipped() {
        let mut r = rules("/buckets", "/backup");
        let mut ev = rename("/buckets/a", "/buckets", "b");
        ev.signatures = vec![11, 22];
        assert!(matches!(
            r.plan("/buckets/a", &ev).unwrap(),
            Plan::Move { .. }
        ));
        r.skip_signatures = vec![22];
        assert_eq!(
            full(&r.plan("/buckets/a", &ev).unwrap()),
            "skip: event already passed through the target filer"
        );
    }

    /// Finding 7 of the reliability issue: deleting or renaming a directory on an
    /// incremental sink removed the dated copies of other files changed that day. An
    /// incremental sink keeps history: a delete removes nothing, a rename adds the new
    /// name's copy and keeps the old one.
    #[test]
    fn incremental_sinks_never_delete_a_dated_copy() {
        let mut r = rules("/buckets", "/inc");
        r.incremental = true;
        let delete = |dir: bool| EventNotification {
            old_entry: Some(entry("d", dir)),
            ..Default::default()
        };
        for dir in [false, true] {
            assert!(
                matches!(r.plan("/buckets/d", &delete(dir)).unwrap(), Plan::Skip(_)),
                "delete of a {}",
                if dir { "directory" } else { "file" }
            );
        }
        let mut dir_rename = rename("/buckets/d", "/buckets", "e");
        dir_rename.old_entry.as_mut().unwrap().is_directory = true;
        dir_rename.new_entry.as_mut().unwrap().is_directory = true;
        let day = chrono::Local
            .timestamp_opt(1_700_000_000, 0)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string();
        for ev in [rename("/buckets/d", "/buckets", "e"), dir_rename] {
            assert_eq!(
                full(&r.plan("/buckets/d", &ev).unwrap()),
                format!("create /inc/{day}/e")
            );
        }
        // Out of scope: nothing is deleted either.
        assert!(matches!(
            r.plan("/buckets/d", &rename("/buckets/d", "/elsewhere", "e"))
                .unwrap(),
            Plan::Skip(_)
        ));
    }

    #[test]
    fn incremental_uses_local_date_of_mtime() {
        let mut r = rules("/buckets", "/inc");
        r.incremental = true;
        let ev = create("/buckets/a");
        let day = chrono::Local
            .timestamp_opt(1_700_000_000, 0)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string();
        assert_eq!(
            full(&r.plan("/buckets/a", &ev).unwrap()),
            format!("create /inc/{day}/a")
        );
    }
}

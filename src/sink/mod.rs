//! Sinks: where replicated changes land.
//!
//! Contract for every sink (delivery is at-least-once, so replays are normal):
//! - `create_entry` creates or overwrites; a replay of the same entry is harmless.
//! - `update_entry` returns `false` when it cannot update in place, and the caller
//!   then deletes and re-creates.
//! - `delete_entry` succeeds when the target is already gone.
//! - `move_entry` returns `false` when the sink has no native move or the old path
//!   is gone; the caller then creates the new path and deletes the old one.
//! - `remove_empty_dir` removes a directory only if it holds nothing.
//! - No operation writes, deletes or follows a link outside the sink's root.
//!
//! What a sink is asked to do converges to the source's current state, not to a replay
//! of its history: the pipeline asks the source what it holds now at each path an event
//! touches, and a create, move or delete that a later event has overtaken is narrowed
//! to what is still true (see [`crate::replicate::converge`]). So any suffix of the
//! stream may be applied again, after any prefix and in any interleaving of partitions,
//! and the sink still ends equal to the source.

mod assign;
mod groupsync;
mod journal;
mod key;
pub use key::SinkKey;
pub mod filer;
pub mod local;
pub mod object;

use crate::filer::ReadError;
use crate::pb::Entry;
use async_trait::async_trait;

/// Every operation gets the event's `signatures` (the filers it passed through), for
/// sinks that forward them (the filer sink does, for loop avoidance).
#[async_trait]
pub trait Sink: Send + Sync {
    /// The config section name (`local`, `filer`, ...).
    fn name(&self) -> &str;
    async fn create_entry(
        &self,
        key: &SinkKey,
        entry: &Entry,
        signatures: &[i32],
    ) -> Result<(), SinkError>;
    /// By default an update is a full create (object stores overwrite in place).
    async fn update_entry(
        &self,
        key: &SinkKey,
        _old: &Entry,
        _new_parent: &SinkKey,
        new: &Entry,
        _delete_chunks: bool,
        signatures: &[i32],
    ) -> Result<bool, SinkError> {
        self.create_entry(key, new, signatures).await?;
        Ok(true)
    }
    async fn delete_entry(
        &self,
        key: &SinkKey,
        is_directory: bool,
        delete_chunks: bool,
        signatures: &[i32],
    ) -> Result<(), SinkError>;
    /// For `deletes = "trash"`: move what is at `key` (a file, or a directory with
    /// everything under it) to `to`, replacing a file there and merging into a directory
    /// there. Nothing at `key` is success (a replayed delete).
    async fn trash(
        &self,
        key: &SinkKey,
        to: &SinkKey,
        is_directory: bool,
        signatures: &[i32],
    ) -> Result<(), SinkError>;
    async fn move_entry(
        &self,
        _old: &SinkKey,
        _new: &SinkKey,
        _entry: &Entry,
        _signatures: &[i32],
    ) -> Result<bool, SinkError> {
        Ok(false)
    }
    /// Remove the directory at `key` if it is empty. `Ok(true)` when it is gone (or was
    /// never there), `Ok(false)` when it holds something or the sink has no directories.
    async fn remove_empty_dir(&self, _key: &SinkKey) -> Result<bool, SinkError> {
        Ok(false)
    }
    /// At start-up, before any event: clean up what an earlier run left half done
    /// (the filer sink's chunks of interrupted copies). `Err` says why it could not;
    /// the caller logs it and goes on.
    async fn recover(&self) -> Result<(), SinkError> {
        Ok(())
    }
    /// What this sink is, for logs and `replicate check` (`S3 bucket b (endpoint …)`).
    fn describe(&self) -> String {
        format!("{} sink", self.name())
    }
    /// One attempt to reach the sink (its bucket, container or filer); why it failed.
    async fn probe(&self) -> Result<(), SinkError> {
        Ok(())
    }
    /// For `replicate verify`: every file under the sink root, by its path relative to
    /// the root (`a/b.txt`), with its size. `None` when this sink cannot list itself.
    async fn inventory(&self) -> Result<Option<Vec<(String, u64)>>, SinkError> {
        Ok(None)
    }
    /// For `replicate verify`: the length and SHA-256 of the file at `rel` (a path as
    /// [`Sink::inventory`] gives it).
    async fn digest(&self, rel: &str) -> Result<(u64, [u8; 32]), SinkError> {
        Err(SinkError::Refused {
            key: rel.to_string(),
            why: format!("the {} sink cannot read back what it stores", self.name()),
        })
    }
    /// The name a source entry is stored under (the local sink shortens long names).
    fn stored_name(&self, name: &str) -> String {
        name.to_string()
    }
}

/// A failed sink operation.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        source: std::io::Error,
    },
    #[error("reading source data for {key}: {source}")]
    Read { key: String, source: ReadError },
    #[error("{key}: {why}")]
    Refused { key: String, why: String },
    /// This consumer-group member may have lost its partitions (see [`crate::fence`]):
    /// the write was not made.
    #[error("{key}: not written: this member may no longer own the event's partition")]
    Fenced { key: String },
    #[error("{op} {key}: {detail}")]
    Remote {
        op: &'static str,
        key: String,
        retryable: bool,
        /// The remote end could not be reached (see [`SinkError::is_outage`]).
        outage: bool,
        detail: String,
    },
}

impl SinkError {
    /// The source or the sink is unavailable (a filer unreachable, a disk full): nothing is
    /// wrong with the event, so it is retried for as long as the outage lasts instead of
    /// running down its deadline and being parked.
    pub(crate) fn is_outage(&self) -> bool {
        match self {
            SinkError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::QuotaExceeded
            ),
            SinkError::Read { source, .. } => source.is_outage(),
            SinkError::Refused { .. } | SinkError::Fenced { .. } => false,
            SinkError::Remote { outage, .. } => *outage,
        }
    }

    /// Source data on a volume no live server holds (see [`ReadError::is_unlocated`]).
    pub(crate) fn is_unlocated(&self) -> bool {
        matches!(self, SinkError::Read { source, .. } if source.is_unlocated())
    }

    /// Whether retrying the same operation later may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            SinkError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::InvalidFilename
                    | std::io::ErrorKind::InvalidData
            ),
            SinkError::Read { source, .. } => source.is_retryable(),
            SinkError::Refused { .. } => false,
            SinkError::Fenced { .. } => true,
            SinkError::Remote { retryable, .. } => *retryable,
        }
    }
}

impl From<crate::fence::Fenced> for SinkError {
    fn from(fenced: crate::fence::Fenced) -> Self {
        SinkError::Fenced { key: fenced.key }
    }
}

impl SinkError {
    /// A failed call to a remote store.
    pub(crate) fn remote(
        op: &'static str,
        key: &str,
        detail: impl std::fmt::Display,
        retryable: bool,
        outage: bool,
    ) -> Self {
        SinkError::Remote {
            op,
            key: key.to_string(),
            retryable,
            outage,
            detail: detail.to_string(),
        }
    }
}

/// Refuse an operation on the sink root itself (the planner refuses these too; a sink
/// checks again because a recursive delete of its root is the worst thing it can do).
pub(crate) fn refuse_root(key: &SinkKey, op: &str) -> Result<(), SinkError> {
    if key.is_root() {
        return Err(SinkError::Refused {
            key: key.full.clone(),
            why: format!("refusing to {op} the sink root"),
        });
    }
    Ok(())
}

/// Percent-encode `s` for a URL path or query, leaving unreserved characters (and `/`
/// when `keep_slash`) as they are.
pub fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

//! Sinks: where replicated changes land.
//!
//! Contract for every sink (delivery is at-least-once, so replays are normal):
//! - `create_entry` creates or overwrites; a replay of the same entry is harmless.
//! - `update_entry` returns `false` when it cannot update in place, and the caller
//!   then deletes and re-creates.
//! - `delete_entry` succeeds when the target is already gone.
//! - `move_entry` returns `false` when the sink has no native move or the old path
//!   is gone; the caller then creates the new path and deletes the old one.
//! - No operation writes, deletes or follows a link outside the sink's root.

pub mod azure;
pub mod filer;
pub mod gcs;
pub mod local;
pub mod s3;

use crate::filer::ReadError;
use crate::pb::Entry;
use crate::replicate::SinkKey;
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
    async fn update_entry(
        &self,
        key: &SinkKey,
        old: &Entry,
        new_parent: &SinkKey,
        new: &Entry,
        delete_chunks: bool,
        signatures: &[i32],
    ) -> Result<bool, SinkError>;
    async fn delete_entry(
        &self,
        key: &SinkKey,
        is_directory: bool,
        delete_chunks: bool,
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
    pub fn is_outage(&self) -> bool {
        match self {
            SinkError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::QuotaExceeded
            ),
            SinkError::Read { source, .. } => source.is_outage(),
            SinkError::Refused { .. } => false,
            SinkError::Remote { outage, .. } => *outage,
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::InvalidFilename
                    | std::io::ErrorKind::InvalidData
            ),
            SinkError::Read { source, .. } => source.is_retryable(),
            SinkError::Refused { .. } => false,
            SinkError::Remote { retryable, .. } => *retryable,
        }
    }
}

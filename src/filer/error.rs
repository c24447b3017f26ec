//! Why a source read failed, and what that means for a retry.

use super::*;

/// Why a source read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("looking up volume {vid} on the source filer: {status}")]
    Lookup {
        vid: String,
        status: Box<tonic::Status>,
    },
    #[error("volume {vid} has no locations on the source filer")]
    NoLocations { vid: String },
    /// Asking the source filer what it holds at a path failed.
    #[error("looking up {path} on the source filer: {status}")]
    Entry {
        path: String,
        status: Box<tonic::Status>,
    },
    #[error("chunk {fid}: {detail}")]
    Chunk {
        fid: String,
        detail: String,
        retryable: bool,
    },
    /// No volume server holding the chunk could be connected to (or none answered in
    /// time): an outage of the source, waited out like an unreachable filer.
    #[error("chunk {fid}: volume server unreachable: {detail}")]
    Unreachable { fid: String, detail: String },
    #[error(
        "chunk manifests under {fid} nest deeper than {MAX_MANIFEST_DEPTH} levels or list more than {MAX_MANIFESTS} manifests (a manifest that lists itself?)"
    )]
    ManifestTooDeep { fid: String },
    #[error("chunk manifest {fid} does not decode: {source}")]
    Manifest {
        fid: String,
        source: prost::DecodeError,
    },
    #[error("read stopped before the end of the file")]
    Aborted,
    #[error(
        "the {size} bytes of this entry live only in remote storage (not cached in the cluster)"
    )]
    RemoteOnly { size: u64 },
}

impl ReadError {
    /// The source filer cannot be reached: nothing is wrong with the event itself.
    pub(crate) fn is_outage(&self) -> bool {
        match self {
            ReadError::Lookup { status, .. } | ReadError::Entry { status, .. } => {
                status_is_outage(status)
            }
            ReadError::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// The master knows no live server for the chunk's volume ("volume id 7 not found"):
    /// its servers are down or, after a restart, not yet registered; or the volume is gone.
    pub(crate) fn is_unlocated(&self) -> bool {
        match self {
            ReadError::NoLocations { .. } => true,
            ReadError::Lookup { status, .. } => {
                !status_is_outage(status) && status.message().contains("not found")
            }
            _ => false,
        }
    }

    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            ReadError::Lookup { .. }
            | ReadError::Entry { .. }
            | ReadError::NoLocations { .. }
            | ReadError::Unreachable { .. }
            | ReadError::Aborted => true,
            ReadError::Chunk { retryable, .. } => *retryable,
            ReadError::Manifest { .. }
            | ReadError::ManifestTooDeep { .. }
            | ReadError::RemoteOnly { .. } => false,
        }
    }
}

pub(super) fn chunk_err(fid: &str, detail: impl Into<String>, retryable: bool) -> ReadError {
    ReadError::Chunk {
        fid: fid.to_string(),
        detail: detail.into(),
        retryable,
    }
}

//! What a file's content amounts to: its size, and its length and SHA-256 as read.

use super::*;

/// The length and SHA-256 of content read piece by piece (`replicate verify` compares
/// source and sink this way).
#[derive(Default)]
pub(crate) struct ContentHash {
    hash: sha2::Sha256,
    len: u64,
}

impl ContentHash {
    pub(crate) fn update(&mut self, piece: &[u8]) {
        use sha2::Digest;
        self.hash.update(piece);
        self.len += piece.len() as u64;
    }

    pub(crate) fn finish(self) -> (u64, [u8; 32]) {
        use sha2::Digest;
        (self.len, self.hash.finalize().into())
    }
}

/// The number of bytes [`FilerSource::open`] yields for an entry without manifests;
/// with manifests the resolved chunks decide, so sinks count what they receive.
pub(crate) fn content_size(entry: &Entry) -> u64 {
    let recorded = entry.attributes.as_ref().map(|a| a.file_size).unwrap_or(0);
    if entry.chunks.is_empty() {
        recorded.max(entry.content.len() as u64)
    } else {
        views::file_size(recorded, &entry.chunks)
    }
}

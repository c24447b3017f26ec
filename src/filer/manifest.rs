//! Manifest chunks: resolved into the data chunks they list, with limits against
//! corrupt or hostile nesting.

use super::*;

/// How deep manifests may nest. The filer writes one level (a manifest of data chunks,
/// rarely a manifest of manifests); a deeper tree is a corrupt or hostile entry, such as
/// a manifest that lists itself, which would otherwise be fetched forever.
pub const MAX_MANIFEST_DEPTH: usize = 8;
/// How many manifests one entry may have in all (each lists up to 10,000 chunks, so this
/// allows a billion), against a manifest listing itself many times over.
pub const MAX_MANIFESTS: usize = 100_000;

/// Replace manifest chunks by the data chunks they list, recursively, with `fetch`
/// giving a chunk's clear bytes. Fails on manifests nested deeper than
/// [`MAX_MANIFEST_DEPTH`].
pub async fn resolve_manifests_with<F, Fut>(
    chunks: &[FileChunk],
    fetch: F,
) -> Result<Vec<FileChunk>, ReadError>
where
    F: Fn(FileChunk) -> Fut,
    Fut: std::future::Future<Output = Result<Bytes, ReadError>>,
{
    // Depth-first, in order, without recursion: the rest of each level being expanded.
    let mut out = Vec::with_capacity(chunks.len());
    let mut fetched = 0;
    let mut stack: Vec<std::vec::IntoIter<FileChunk>> = vec![Vec::from(chunks).into_iter()];
    while let Some(level) = stack.last_mut() {
        let Some(c) = level.next() else {
            stack.pop();
            continue;
        };
        if !c.is_chunk_manifest {
            out.push(c);
            continue;
        }
        let fid = chunk_file_id(&c).unwrap_or_default();
        fetched += 1;
        if stack.len() > MAX_MANIFEST_DEPTH || fetched > MAX_MANIFESTS {
            return Err(ReadError::ManifestTooDeep { fid });
        }
        let blob = fetch(c).await?;
        let manifest = FileChunkManifest::decode(blob)
            .map_err(|source| ReadError::Manifest { fid, source })?;
        stack.push(manifest.chunks.into_iter());
    }
    Ok(out)
}

//! Which bytes of which chunk make up each part of a file (pure).
//!
//! Chunks may overlap (a later write over part of a file adds a chunk); the chunk
//! with the larger `modified_ts_ns` wins, and on a tie the later one in the list.
//! Ranges no chunk covers are holes and read as zeros, up to the file size.

use crate::pb::FileChunk;

/// A piece of the file served by one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    /// Index into the chunk list the views were computed from.
    pub chunk: usize,
    /// Where the piece starts in the file.
    pub file_offset: u64,
    /// Where the piece starts inside the chunk's clear data.
    pub chunk_offset: u64,
    pub len: u64,
}

/// The logical size of a file: the larger of its recorded size and the end of its
/// furthest chunk.
pub(crate) fn file_size(recorded: u64, chunks: &[FileChunk]) -> u64 {
    chunks
        .iter()
        .map(|c| (c.offset.max(0) as u64).saturating_add(c.size))
        .fold(recorded, u64::max)
}

/// Visible, non-overlapping views ordered by file offset, clipped to `size`.
pub(crate) fn visible(chunks: &[FileChunk], size: u64) -> Vec<View> {
    if let Some(views) = visible_without_overlaps(chunks, size) {
        return views;
    }
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    order.sort_by_key(|&i| chunks[i].modified_ts_ns); // stable: list order breaks ties
    // Non-overlapping (start, stop, chunk index), sorted by start.
    let mut spans: Vec<(u64, u64, usize)> = Vec::new();
    for i in order {
        let c = &chunks[i];
        let start = c.offset.max(0) as u64;
        let stop = start.saturating_add(c.size);
        if stop <= start {
            continue;
        }
        let mut next = Vec::with_capacity(spans.len() + 2);
        for &(s, e, idx) in &spans {
            if e <= start || s >= stop {
                next.push((s, e, idx));
                continue;
            }
            if s < start {
                next.push((s, start, idx));
            }
            if e > stop {
                next.push((stop, e, idx));
            }
        }
        next.push((start, stop, i));
        next.sort_by_key(|&(s, _, _)| s);
        spans = next;
    }
    spans
        .into_iter()
        .filter(|&(s, _, _)| s < size)
        .map(|(s, e, idx)| View {
            chunk: idx,
            file_offset: s,
            chunk_offset: s - chunks[idx].offset.max(0) as u64,
            len: e.min(size) - s,
        })
        .collect()
}

/// The usual case, in O(n log n): no two chunks overlap. `None` if some do.
fn visible_without_overlaps(chunks: &[FileChunk], size: u64) -> Option<Vec<View>> {
    let mut order: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i].size > 0).collect();
    order.sort_by_key(|&i| chunks[i].offset.max(0));
    let mut end = 0u64;
    let mut views = Vec::with_capacity(order.len());
    for i in order {
        let start = chunks[i].offset.max(0) as u64;
        if start < end {
            return None;
        }
        end = start.saturating_add(chunks[i].size);
        if start < size {
            views.push(View {
                chunk: i,
                file_offset: start,
                chunk_offset: 0,
                len: end.min(size) - start,
            });
        }
    }
    Some(views)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: i64, size: u64, ts: i64) -> FileChunk {
        FileChunk {
            offset,
            size,
            modified_ts_ns: ts,
            ..Default::default()
        }
    }
    fn v(chunk: usize, file_offset: u64, chunk_offset: u64, len: u64) -> View {
        View {
            chunk,
            file_offset,
            chunk_offset,
            len,
        }
    }

    #[test]
    fn sequential_chunks() {
        let cs = [chunk(0, 10, 1), chunk(10, 10, 2)];
        assert_eq!(visible(&cs, 20), vec![v(0, 0, 0, 10), v(1, 10, 0, 10)]);
    }

    #[test]
    fn newer_chunk_wins_overlap_regardless_of_order() {
        let cs = [chunk(5, 10, 9), chunk(0, 20, 1)];
        assert_eq!(
            visible(&cs, 20),
            vec![v(1, 0, 0, 5), v(0, 5, 0, 10), v(1, 15, 15, 5)]
        );
        let cs = [chunk(0, 20, 1), chunk(0, 20, 1)];
        assert_eq!(
            visible(&cs, 20),
            vec![v(1, 0, 0, 20)],
            "tie goes to the later chunk"
        );
    }

    #[test]
    fn many_chunks_out_of_order_take_the_fast_path() {
        let cs: Vec<FileChunk> = (0..20_000).rev().map(|i| chunk(i * 10, 10, i)).collect();
        let views = visible(&cs, 200_000);
        assert_eq!(views.len(), 20_000);
        assert_eq!(views[0], v(19_999, 0, 0, 10));
        assert_eq!(views[19_999], v(0, 199_990, 0, 10));
    }

    #[test]
    fn holes_are_left_for_zero_fill_and_size_clips() {
        let cs = [chunk(0, 4, 1), chunk(10, 4, 1)];
        assert_eq!(visible(&cs, 14), vec![v(0, 0, 0, 4), v(1, 10, 0, 4)]);
        assert_eq!(file_size(20, &cs), 20);
        assert_eq!(file_size(0, &cs), 14);
        assert_eq!(visible(&cs, 12), vec![v(0, 0, 0, 4), v(1, 10, 0, 2)]);
    }
}

//! Walking a filer's tree: breadth first, a listing page at a time.

use super::FilerSource;
use crate::pb::Entry;
use crate::retry::Retry;
use std::collections::VecDeque;
use tokio_util::sync::CancellationToken;

/// The source tree under a directory, breadth first, one listing page at a time (so
/// memory stays bounded by a page and the queue of directory names, however large a
/// directory is), leaving out excluded directories.
pub(crate) struct SourceTree<'a> {
    source: &'a FilerSource,
    /// Directories left out, with everything under them.
    excluded: &'a (dyn Fn(&[String]) -> bool + Sync),
    queue: VecDeque<String>,
    /// The directory being listed, and the last name listed in it.
    current: Option<(String, String)>,
    /// Wait out an unreachable filer (backfill) instead of failing (verify).
    patient: bool,
}

/// One page of one directory's listing.
pub(crate) struct Page {
    pub dir: String,
    pub entries: Vec<Entry>,
    /// The directory's last page.
    pub last: bool,
}

impl<'a> SourceTree<'a> {
    pub(crate) fn new(
        source: &'a FilerSource,
        root: &str,
        excluded: &'a (dyn Fn(&[String]) -> bool + Sync),
        patient: bool,
    ) -> Self {
        SourceTree {
            source,
            excluded,
            queue: VecDeque::from([root.to_string()]),
            current: None,
            patient,
        }
    }

    /// The next page; `Ok(None)` at the end, or when `stop` fired.
    pub(crate) async fn next(
        &mut self,
        stop: &CancellationToken,
    ) -> Result<Option<Page>, tonic::Status> {
        let (dir, start) = match self.current.take() {
            Some(c) => c,
            None => match self.queue.pop_front() {
                Some(dir) => (dir, String::new()),
                None => return Ok(None),
            },
        };
        let entries = if self.patient {
            match list_page(self.source, &dir, &start, stop).await {
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
            let parts = crate::path::components(&path).unwrap_or_default();
            if !(self.excluded)(&parts) {
                self.queue.push_back(path);
            }
        }
        Ok(Some(Page { dir, entries, last }))
    }
}

/// One page (up to [`super::LIST_PAGE`] entries, after `start`) of a directory listing,
/// waiting out an unreachable filer; `None` if `stop` fires first.
pub(crate) async fn list_page(
    source: &FilerSource,
    dir: &str,
    start: &str,
    stop: &CancellationToken,
) -> Option<Vec<Entry>> {
    let mut retry = Retry::default();
    loop {
        match source.list_page(dir, start).await {
            Ok(page) => {
                retry.succeeded();
                return Some(page);
            }
            Err(e) => {
                if !retry.wait(&format!("listing {dir} failed"), &e, stop).await {
                    return None;
                }
            }
        }
    }
}

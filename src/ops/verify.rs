//! `replicate verify`: compare the source directory with the sink and report missing,
//! extra and differing files (size, then SHA-256 of the content); with `-repair`, replay
//! what differs through the replication pipeline and check those files again.
//!
//! Exit status: 0 the sink matches (or was repaired), 1 differences remain, 2 the
//! configuration is wrong or the sink cannot be listed.

use super::{SourceTree, create_event, delete_event, full_path, human_bytes};
use crate::app::{AppError, Setup};
use crate::pb::Entry;
use crate::pipeline::{Disposition, Origin};
use crate::sink::Sink;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Files compared at once.
const PARALLEL: usize = 8;

/// One difference between source and sink, by the file's path relative to both roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// On the source, not on the sink.
    Missing {
        size: u64,
    },
    /// On the sink, not on the source.
    Extra {
        size: u64,
    },
    Size {
        source: u64,
        sink: u64,
    },
    Content {
        size: u64,
    },
    /// One side could not be read.
    Unreadable {
        why: String,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Missing { size } => write!(f, "missing   ({})", human_bytes(*size)),
            Difference::Extra { size } => write!(f, "extra     ({})", human_bytes(*size)),
            Difference::Size { source, sink } => {
                write!(
                    f,
                    "differs   (size {source} on the source, {sink} on the sink)"
                )
            }
            Difference::Content { size } => {
                write!(f, "differs   (same size {size}, different SHA-256)")
            }
            Difference::Unreadable { why } => write!(f, "unreadable ({why})"),
        }
    }
}

/// A source file, with what verify needs to compare and repair it.
struct SourceFile {
    dir: String,
    entry: Entry,
}

pub async fn run(
    config_dir: Option<std::path::PathBuf>,
    config: Option<std::path::PathBuf>,
    repair: bool,
    size_only: bool,
) -> Result<(), AppError> {
    let setup = Setup::load(config_dir, config)?;
    let s = &setup.settings;
    if s.sink.incremental() {
        return Err(AppError::Usage(format!(
            "verify: the {} sink has is_incremental = true, so it keeps files by date instead of mirroring the source; there is nothing to compare",
            s.sink.name()
        )));
    }
    let stop = CancellationToken::new();
    let open = setup.sink().await?;
    let what = open.sink.describe();
    let Some(inventory) = open
        .sink
        .inventory()
        .await
        .map_err(|e| AppError::Runtime(format!("verify: listing {what}: {e}")))?
    else {
        return Err(AppError::Usage(format!(
            "verify: the {} sink cannot list what it holds",
            s.sink.name()
        )));
    };
    let mut sink_files: BTreeMap<String, u64> = inventory.into_iter().collect();
    let rules = setup.rules(Vec::new());
    let root = s.source.directory.trim_end_matches('/').to_string();
    println!(
        "verify: {} on filer {} against {what}{}",
        if root.is_empty() { "/" } else { &root },
        s.source.grpc_address,
        if size_only { " (sizes only)" } else { "" }
    );

    // Walk the source, comparing each directory's files as it comes.
    let mut differences: BTreeMap<String, Difference> = BTreeMap::new();
    let mut to_repair: BTreeMap<String, SourceFile> = BTreeMap::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut tree = SourceTree::new(&setup.source, &s.source.directory, &rules.excludes, false);
    let sink = open.sink.as_ref();
    while let Some(super::Page { dir, entries, .. }) = tree
        .next(&stop)
        .await
        .map_err(|e| AppError::Runtime(format!("verify: listing the source: {}", e.message())))?
    {
        let checks = entries
            .into_iter()
            .filter(|e| !e.is_directory)
            .map(|entry| {
                let path = full_path(&dir, &entry);
                let rel = relative(&root, &path, sink);
                let on_sink = sink_files.remove(&rel);
                let dir = dir.clone();
                let source = setup.source.clone();
                async move {
                    let size = crate::filer::content_size(&entry);
                    let diff = compare(&source, sink, &entry, &rel, size, on_sink, size_only).await;
                    (rel, SourceFile { dir, entry }, size, diff)
                }
            })
            .collect::<Vec<_>>();
        let mut results = futures::stream::iter(checks).buffer_unordered(PARALLEL);
        while let Some((rel, file, size, diff)) = results.next().await {
            files += 1;
            bytes += size;
            if let Some(d) = diff {
                differences.insert(rel.clone(), d);
                to_repair.insert(rel, file);
            }
        }
    }
    // What is left on the sink has no source file.
    for (rel, size) in std::mem::take(&mut sink_files) {
        differences.insert(rel, Difference::Extra { size });
    }
    report(&differences);
    println!(
        "checked {files} source files ({}): {}",
        human_bytes(bytes),
        summary(&differences)
    );
    if differences.is_empty() {
        return Ok(());
    }
    if !repair {
        return Err(AppError::Runtime(format!(
            "{} difference{} (run with -repair to fix them)",
            differences.len(),
            if differences.len() == 1 { "" } else { "s" }
        )));
    }

    // Repair: replay creates for what is missing or differs, deletes for what is extra,
    // through the same pipeline (rules, retries, parking) as live events.
    let open = setup.sink().await?;
    let Some(skip) = setup.connect(&open, &stop).await else {
        return Ok(());
    };
    let pipeline = setup.pipeline(setup.rules(skip), open.sink, stop.clone());
    let jobs = differences
        .iter()
        .map(|(rel, d)| {
            let event = match (d, to_repair.get(rel)) {
                (Difference::Extra { .. }, _) => delete_event(&format!("{root}/{rel}")),
                (_, Some(f)) => create_event(&f.dir, &f.entry),
                (_, None) => unreachable!("every other difference has its source file"),
            };
            let pipeline = pipeline.clone();
            let rel = rel.clone();
            async move {
                let origin = Origin::Message {
                    input: "verify",
                    id: event.key.clone(),
                };
                (rel, pipeline.handle(&event, &origin).await)
            }
        })
        .collect::<Vec<_>>();
    let mut done = futures::stream::iter(jobs).buffer_unordered(s.replicate.concurrency);
    let mut replayed = Vec::new();
    while let Some((rel, disposition)) = done.next().await {
        if disposition == Disposition::Done {
            replayed.push(rel);
        }
    }
    drop(done);
    // Check the repaired files again, from the sink's point of view.
    let open = setup.sink().await?;
    let listed: BTreeMap<String, u64> = open
        .sink
        .inventory()
        .await
        .map_err(|e| AppError::Runtime(format!("verify: listing {what}: {e}")))?
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut left = BTreeMap::new();
    for (rel, d) in &differences {
        let now = match (d, to_repair.get(rel)) {
            (Difference::Extra { .. }, _) => {
                listed.get(rel).map(|&size| Difference::Extra { size })
            }
            (_, Some(f)) => {
                let size = crate::filer::content_size(&f.entry);
                compare(
                    &setup.source,
                    open.sink.as_ref(),
                    &f.entry,
                    rel,
                    size,
                    listed.get(rel).copied(),
                    size_only,
                )
                .await
            }
            (_, None) => None,
        };
        if let Some(now) = now {
            left.insert(rel.clone(), now);
        }
    }
    let parked = pipeline
        .stats
        .parked
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "repaired {} of {} difference{}{}",
        differences.len() - left.len(),
        differences.len(),
        if differences.len() == 1 { "" } else { "s" },
        if parked > 0 {
            format!("; {parked} parked in {}", s.replicate.parked_file.display())
        } else {
            String::new()
        }
    );
    if left.is_empty() {
        return Ok(());
    }
    report(&left);
    Err(AppError::Runtime(format!(
        "{} difference{} remain after repair",
        left.len(),
        if left.len() == 1 { "" } else { "s" }
    )))
}

/// `path` (under `root`) as the sink names it, relative to the sink root.
fn relative(root: &str, path: &str, sink: &dyn Sink) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .trim_start_matches('/')
        .split('/')
        .map(|c| sink.stored_name(c))
        .collect::<Vec<_>>()
        .join("/")
}

async fn compare(
    source: &Arc<crate::filer::FilerSource>,
    sink: &dyn Sink,
    entry: &Entry,
    rel: &str,
    size: u64,
    on_sink: Option<u64>,
    size_only: bool,
) -> Option<Difference> {
    let sink_size = match on_sink {
        None => return Some(Difference::Missing { size }),
        Some(s) => s,
    };
    if sink_size != size {
        return Some(Difference::Size {
            source: size,
            sink: sink_size,
        });
    }
    if size_only {
        return None;
    }
    let (ours, theirs) = tokio::join!(source.digest(entry), sink.digest(rel));
    match (ours, theirs) {
        (Ok((n, a)), Ok((m, b))) if n == m && a == b => None,
        (Ok((n, _)), Ok((m, _))) if n != m => Some(Difference::Size { source: n, sink: m }),
        (Ok(_), Ok(_)) => Some(Difference::Content { size }),
        (Err(e), _) => Some(Difference::Unreadable {
            why: format!("source: {e}"),
        }),
        (_, Err(e)) => Some(Difference::Unreadable {
            why: format!("sink: {e}"),
        }),
    }
}

fn report(differences: &BTreeMap<String, Difference>) {
    for (rel, d) in differences {
        println!("  {d}  {rel}");
    }
}

fn summary(differences: &BTreeMap<String, Difference>) -> String {
    if differences.is_empty() {
        return "the sink matches".into();
    }
    let count = |f: fn(&Difference) -> bool| differences.values().filter(|d| f(d)).count();
    let missing = count(|d| matches!(d, Difference::Missing { .. }));
    let extra = count(|d| matches!(d, Difference::Extra { .. }));
    let differing = count(|d| matches!(d, Difference::Size { .. } | Difference::Content { .. }));
    let unreadable = count(|d| matches!(d, Difference::Unreadable { .. }));
    let mut parts = vec![
        format!("{missing} missing"),
        format!("{extra} extra"),
        format!("{differing} differing"),
    ];
    if unreadable > 0 {
        parts.push(format!("{unreadable} unreadable"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_each_kind() {
        let mut d = BTreeMap::new();
        d.insert("a".to_string(), Difference::Missing { size: 1 });
        d.insert("b".to_string(), Difference::Extra { size: 1 });
        d.insert("c".to_string(), Difference::Content { size: 1 });
        d.insert("d".to_string(), Difference::Size { source: 1, sink: 2 });
        assert_eq!(summary(&d), "1 missing, 1 extra, 2 differing");
        assert_eq!(summary(&BTreeMap::new()), "the sink matches");
    }
}

//! `replicate verify`: compare the source directory with the sink and report missing,
//! extra and differing files (size, then SHA-256 of the content); with `-repair`, replay
//! what differs through the replication pipeline and check those files again.
//!
//! Exit status, as `diff` has it: 0 the sink matches (or was repaired), 1 differences
//! remain, 2 trouble (the configuration is wrong, or the source or the sink cannot be
//! listed).

use super::{SourceTree, full_path, human_bytes};
use crate::config::settings::DeletePolicy;
use crate::event::RawEvent;
use crate::pb::Entry;
use crate::pipeline::{Disposition, Origin};
use crate::setup::{AppError, Setup};
use crate::sink::Sink;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Files compared at once.
const PARALLEL: usize = 8;

/// One difference between source and sink, by the file's path relative to both roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Difference {
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

/// A source file, with what verify needs to repair it.
struct SourceFile {
    dir: String,
    name: String,
}

impl SourceFile {
    fn path(&self) -> String {
        format!("{}/{}", self.dir.trim_end_matches('/'), self.name)
    }
}

/// What `replicate verify` was asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mode {
    /// Replicate what is missing or differs.
    pub repair: bool,
    /// With `repair`, also delete what the source does not have.
    pub delete: bool,
    /// Compare sizes only.
    pub size_only: bool,
}

pub(crate) async fn run(place: crate::config::Place, mode: Mode) -> Result<(), AppError> {
    let setup = Setup::load(&place)?;
    setup.warn_typos();
    if !setup.settings.several_sinks() {
        return verify(&setup, mode).await;
    }
    // Several sinks: each is verified; the worst outcome is the exit status.
    let mut worst: Option<AppError> = None;
    for view in setup.views() {
        println!("sink {}:", view.settings.sink_id);
        if let Err(e) = verify(&view, mode).await {
            println!("sink {}: {e}", view.settings.sink_id);
            if worst.as_ref().is_none_or(|w| e.exit_code() > w.exit_code()) {
                worst = Some(e);
            }
        }
    }
    worst.map_or(Ok(()), Err)
}

async fn verify(setup: &Setup, mode: Mode) -> Result<(), AppError> {
    let s = &setup.settings;
    if s.sink.incremental() {
        return Err(AppError::Usage(format!(
            "verify: the {} sink has is_incremental = true, so it keeps files by date instead of mirroring the source; there is nothing to compare",
            s.sink.name()
        )));
    }
    let keeps = s.deletes == DeletePolicy::Keep;
    if keeps && mode.delete {
        return Err(AppError::Usage(format!(
            "verify: -delete would remove what the {} sink keeps on purpose (deletes = \"keep\"); \
             set deletes = \"mirror\" to make it a mirror",
            s.sink.name()
        )));
    }
    let trouble =
        |what: &str, e: &dyn std::fmt::Display| AppError::Trouble(format!("verify: {what}: {e}"));
    let stop = CancellationToken::new();
    let root = s.source.directory.trim_end_matches('/').to_string();
    // A source directory that is not there (a typo, the wrong filer) would make every
    // sink file look extra: refuse instead of comparing against nothing.
    if !root.is_empty() {
        match setup.source.lookup_entry(&root).await {
            Ok(Some(e)) if e.is_directory => {}
            Ok(_) => {
                return Err(AppError::Trouble(format!(
                    "verify: {root} is not a directory on filer {}",
                    s.source.grpc_address
                )));
            }
            Err(e) => return Err(trouble("looking up the source directory", &e.message())),
        }
    }
    let open = setup.sink().await?;
    let what = open.sink.describe();
    let Some(inventory) = open
        .sink
        .inventory()
        .await
        .map_err(|e| trouble(&format!("listing {what}"), &e))?
    else {
        return Err(AppError::Usage(format!(
            "verify: the {} sink cannot list what it holds",
            s.sink.name()
        )));
    };
    let rules = setup.rules(Vec::new());
    // Files under excluded directories are not the mirror's business.
    let mut sink_files: BTreeMap<String, u64> = inventory
        .into_iter()
        .filter(|(rel, _)| {
            let parts = crate::path::components(&format!("{root}/{rel}")).unwrap_or_default();
            !rules.excluded_entry(&parts, false)
        })
        .collect();
    println!(
        "verify: {} on filer {} against {what}{}",
        if root.is_empty() { "/" } else { &root },
        s.source.grpc_address,
        if mode.size_only { " (sizes only)" } else { "" }
    );

    // Walk the source, comparing each page of files as it comes.
    let mut differences: BTreeMap<String, Difference> = BTreeMap::new();
    let mut to_repair: BTreeMap<String, SourceFile> = BTreeMap::new();
    let (mut files, mut bytes, mut links) = (0u64, 0u64, 0u64);
    let excluded = |p: &[String]| rules.excluded(p);
    let mut tree = SourceTree::new(&setup.source, &s.source.directory, &excluded, false);
    let sink = open.sink.as_ref();
    while let Some(super::Page { dir, entries, .. }) = tree
        .next(&stop)
        .await
        .map_err(|e| trouble("listing the source", &e.message()))?
    {
        let mut checks = Vec::new();
        for entry in entries.into_iter().filter(|e| !e.is_directory) {
            let path = full_path(&dir, &entry);
            // Files the filters leave out are not the mirror's business either.
            if crate::path::components(&path).is_ok_and(|parts| rules.excluded_entry(&parts, false))
            {
                continue;
            }
            let rel = relative(&root, &path, sink);
            let on_sink = sink_files.remove(&rel);
            if entry
                .attributes
                .as_ref()
                .is_some_and(|a| !a.symlink_target.is_empty())
            {
                // Sinks store links as links (or not at all); there is no content to compare.
                links += 1;
                continue;
            }
            let source = setup.source.clone();
            let dir = dir.clone();
            checks.push(async move {
                let size = crate::filer::content_size(&entry);
                let diff =
                    compare(&source, sink, &entry, &rel, size, on_sink, mode.size_only).await;
                let file = SourceFile {
                    dir,
                    name: entry.name,
                };
                (rel, file, size, diff)
            });
        }
        let mut results = futures::stream::iter(checks).buffer_unordered(PARALLEL);
        while let Some((rel, file, size, diff)) = results.next().await {
            files += 1;
            bytes += size;
            if let Some(d) = diff {
                differences.insert(rel.clone(), d);
                if mode.repair {
                    to_repair.insert(rel, file);
                }
            }
        }
    }
    // What is left on the sink has no source file: kept on purpose under
    // deletes = "keep", a difference otherwise.
    let kept = if keeps { sink_files.len() } else { 0 };
    if !keeps {
        differences.extend(
            sink_files
                .into_iter()
                .map(|(rel, size)| (rel, Difference::Extra { size })),
        );
    }
    report(&differences);
    if kept > 0 {
        println!(
            "{kept} sink file{} the source no longer has, kept (deletes = \"keep\")",
            plural(kept)
        );
    }
    println!(
        "checked {files} source files ({}): {}{}",
        human_bytes(bytes),
        summary(&differences),
        if links > 0 {
            format!("; {links} symlinks not compared")
        } else {
            String::new()
        }
    );
    if differences.is_empty() {
        return Ok(());
    }
    if !mode.repair {
        return Err(AppError::Runtime(format!(
            "{} difference{} (run with -repair to fix them)",
            differences.len(),
            plural(differences.len())
        )));
    }
    repair(setup, &root, mode, &differences, &to_repair, &stop).await
}

/// Replay creates for what is missing or differs, deletes for what is extra (with
/// `-delete`), through the same pipeline (rules, retries, parking) as live events, then
/// check those files again.
async fn repair(
    setup: &Setup,
    root: &str,
    mode: Mode,
    differences: &BTreeMap<String, Difference>,
    to_repair: &BTreeMap<String, SourceFile>,
    stop: &CancellationToken,
) -> Result<(), AppError> {
    let s = &setup.settings;
    let open = setup.sink().await?;
    let Some(skip) = setup.connect(&open, stop).await else {
        return Err(AppError::Interrupted("verify: interrupted".into()));
    };
    let pipeline = setup.pipeline(setup.rules(skip), open.sink, stop.clone());
    let mut not_repaired: BTreeMap<String, String> = BTreeMap::new();
    let origin = |key: &str| Origin::Message {
        input: "verify",
        id: key.to_string(),
    };

    // Deletes first: a create that puts a directory where an extra file was must not be
    // undone by that file's delete.
    let mut deletes = Vec::new();
    for (rel, d) in differences {
        if !matches!(d, Difference::Extra { .. }) {
            continue;
        }
        if !mode.delete {
            not_repaired.insert(rel.clone(), "extra; -delete removes it".into());
            continue;
        }
        let path = format!("{root}/{rel}");
        if super::plain_path(&path).is_none() {
            not_repaired.insert(rel.clone(), "its name is not a plain path".into());
            continue;
        }
        // The source may have it by now (created since the walk).
        match setup.source.lookup_entry(&path).await {
            Ok(None) => {}
            Ok(Some(_)) => {
                not_repaired.insert(rel.clone(), "the source has it now".into());
                continue;
            }
            Err(e) => {
                not_repaired.insert(rel.clone(), format!("source lookup: {}", e.message()));
                continue;
            }
        }
        let pipeline = pipeline.clone();
        let rel = rel.clone();
        deletes.push(async move {
            let event = RawEvent::deleted(&path);
            (rel, pipeline.handle(&event, &origin(&path)).await)
        });
    }
    let concurrency = s.replicate.concurrency;
    let mut done = futures::stream::iter(deletes).buffer_unordered(concurrency);
    while let Some((rel, d)) = done.next().await {
        if d != Disposition::Done {
            not_repaired.insert(rel, format!("{d:?}"));
        }
    }
    drop(done);

    // Creates, from the entry as the source has it now (it may have changed or gone
    // since the walk; an old copy must not overwrite what the daemon wrote meanwhile).
    let creates = to_repair.iter().map(|(rel, f)| {
        let pipeline = pipeline.clone();
        async move {
            let path = f.path();
            let current = match setup.source.lookup_entry(&path).await {
                Ok(Some(e)) => e,
                Ok(None) => return (rel.clone(), Some("gone from the source".to_string())),
                Err(e) => return (rel.clone(), Some(format!("source lookup: {}", e.message()))),
            };
            let event = RawEvent::created(&f.dir, &current);
            match pipeline.handle(&event, &origin(&path)).await {
                Disposition::Done => (rel.clone(), None),
                d => (rel.clone(), Some(format!("{d:?}"))),
            }
        }
    });
    let mut done = futures::stream::iter(creates).buffer_unordered(concurrency);
    while let Some((rel, why)) = done.next().await {
        if let Some(why) = why {
            not_repaired.insert(rel, why);
        }
    }
    drop(done);

    // Check the repaired files again, as the sink has them now.
    let open = setup.sink().await?;
    let listed: BTreeMap<String, u64> = open
        .sink
        .inventory()
        .await
        .map_err(|e| AppError::Trouble(format!("verify: listing {}: {e}", open.sink.describe())))?
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut left = BTreeMap::new();
    for (rel, d) in differences {
        let now = match (d, to_repair.get(rel)) {
            (Difference::Extra { .. }, _) => {
                listed.get(rel).map(|&size| Difference::Extra { size })
            }
            (_, Some(f)) => {
                let path = f.path();
                match setup.source.lookup_entry(&path).await {
                    Ok(Some(entry)) => {
                        let size = crate::filer::content_size(&entry);
                        compare(
                            &setup.source,
                            open.sink.as_ref(),
                            &entry,
                            rel,
                            size,
                            listed.get(rel).copied(),
                            mode.size_only,
                        )
                        .await
                    }
                    // Gone from the source since: a delete event will follow it.
                    Ok(None) => None,
                    Err(e) => Some(Difference::Unreadable {
                        why: format!("source: {}", e.message()),
                    }),
                }
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
        plural(differences.len()),
        if parked > 0 {
            format!("; {parked} parked in {}", s.replicate.parked_file.display())
        } else {
            String::new()
        }
    );
    if left.is_empty() {
        return Ok(());
    }
    for (rel, d) in &left {
        match not_repaired.get(rel) {
            Some(why) => println!("  {d}  {rel}  [not repaired: {why}]"),
            None => println!("  {d}  {rel}"),
        }
    }
    Err(AppError::Runtime(format!(
        "{} difference{} remain after repair",
        left.len(),
        plural(left.len())
    )))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `path` (under `root`) as the sink names it, relative to the sink root.
pub(super) fn relative(root: &str, path: &str, sink: &dyn Sink) -> String {
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

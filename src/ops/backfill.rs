//! `replicate backfill`: replicate every file that already exists under the source
//! directory, as if each had just been created (upstream users run `fs.meta.notify` in
//! `weed shell` for this, which floods the queue instead).
//!
//! Files go through the same pipeline as live events (rules, retries, parking), up to
//! `[replicate] concurrency` at once. Each directory whose files all reached the sink is
//! appended to the state file, so an interrupted backfill resumes where it stopped; a
//! finished one removes the file.

use super::{SourceTree, full_path, human_bytes};
use crate::event::RawEvent;
use crate::pipeline::{Disposition, Origin, Pipeline};
use crate::setup::{AppError, Setup};
use futures::StreamExt;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Counts for the progress line.
#[derive(Default)]
struct Progress {
    /// Directories walked whose entries all reached the sink.
    dirs: AtomicU64,
    /// Files and directories that reached the sink (or were skipped by the rules).
    files: AtomicU64,
    subdirs: AtomicU64,
    resumed_dirs: AtomicU64,
    /// Files in directories an earlier run finished (counted as done for the bar).
    resumed_files: AtomicU64,
    /// Files in the whole tree, counted by a listing that runs ahead of the copy.
    total_files: AtomicU64,
    /// The count is complete.
    counted: std::sync::atomic::AtomicBool,
}

impl Progress {
    /// `[#####.....] 45% 2250/5000 files`, or a plain count while the total is unknown.
    fn files_line(&self) -> String {
        let done = self.files.load(Ordering::Relaxed) + self.resumed_files.load(Ordering::Relaxed);
        let total = self.total_files.load(Ordering::Relaxed);
        if !self.counted.load(Ordering::Relaxed) {
            return format!("{done} files (of at least {total}; counting)");
        }
        let share = if total == 0 {
            1.0
        } else {
            (done as f64 / total as f64).min(1.0)
        };
        let filled = (share * 20.0).round() as usize;
        format!(
            "[{}{}] {:>3.0}% {done}/{total} files",
            "#".repeat(filled),
            ".".repeat(20 - filled),
            share * 100.0
        )
    }
}

/// Count the files of the tree (a listing pass ahead of the copy), for the progress bar.
/// A listing error leaves the total unknown.
async fn count_files(
    source: Arc<crate::filer::FilerSource>,
    root: String,
    rules: crate::replicate::Rules,
    progress: Arc<Progress>,
    stop: CancellationToken,
) {
    let excluded = |p: &[String]| rules.excluded(p);
    let mut tree = SourceTree::new(&source, &root, &excluded, false);
    loop {
        match tree.next(&stop).await {
            Ok(Some(page)) => {
                // Every file the walk meets, as the copy counts them (a file the filters
                // leave out counts as done there, skipped by the rules).
                let files = page.entries.iter().filter(|e| !e.is_directory).count();
                progress
                    .total_files
                    .fetch_add(files as u64, Ordering::Relaxed);
            }
            Ok(None) if !stop.is_cancelled() => {
                progress.counted.store(true, Ordering::Relaxed);
                return;
            }
            _ => return,
        }
    }
}

pub(crate) async fn run(
    place: crate::config::Place,
    state_file: &Path,
    restart: bool,
) -> Result<(), AppError> {
    // A first signal stops taking new files; a second abandons the files in flight.
    let (stop, abandon) = (CancellationToken::new(), CancellationToken::new());
    spawn_interrupt(stop.clone(), abandon.clone());
    tokio::select! {
        r = backfill(place, state_file, restart, stop) => r,
        _ = abandon.cancelled() => Err(AppError::Interrupted(
            "stopped; the directories recorded as done are kept".into(),
        )),
    }
}

async fn backfill(
    place: crate::config::Place,
    state_file: &Path,
    restart: bool,
    stop: CancellationToken,
) -> Result<(), AppError> {
    let setup = Setup::load(&place)?;
    setup.warn_typos();
    if !setup.settings.several_sinks() {
        return backfill_one(&setup, state_file, restart, stop).await;
    }
    // Several sinks: one after the other, each with a state file of its own; each
    // chunk read for the first is kept in the shared cache for the others as room allows.
    for view in setup.views() {
        let mut name = state_file.as_os_str().to_owned();
        name.push(format!(".{}", view.settings.sink_id));
        println!("sink {}:", view.settings.sink_id);
        backfill_one(&view, Path::new(&name), restart, stop.clone()).await?;
    }
    Ok(())
}

async fn backfill_one(
    setup: &Setup,
    state_file: &Path,
    restart: bool,
    stop: CancellationToken,
) -> Result<(), AppError> {
    let s = &setup.settings;
    let open = setup.sink().await?;
    let header = format!(
        "# replicate backfill of {} on {} to {}",
        s.source.directory,
        s.source.grpc_address,
        open.sink.describe()
    );
    let done: HashSet<String> = if restart {
        HashSet::new()
    } else {
        load_state(state_file, &header)?
    };
    let mut state = open_state(state_file, &header, !done.is_empty())?;
    let Some(skip) = setup.connect(&open, &stop).await else {
        return Err(AppError::Interrupted("backfill: interrupted".into()));
    };
    let rules = setup.rules(skip);
    let walk_rules = rules.clone();
    let pipeline = setup.pipeline(rules, open.sink, stop.clone());
    let progress = Arc::new(Progress::default());
    tokio::spawn(count_files(
        setup.source.clone(),
        s.source.directory.clone(),
        walk_rules.clone(),
        progress.clone(),
        stop.clone(),
    ));
    let reporter = tokio::spawn(report_loop(
        pipeline.clone(),
        progress.clone(),
        stop.clone(),
    ));
    if !done.is_empty() {
        eprintln!(
            "resuming: {} directories already done (from {})",
            done.len(),
            state_file.display()
        );
    }

    let started = Instant::now();
    let excluded = |p: &[String]| walk_rules.excluded(p);
    let mut tree = SourceTree::new(&setup.source, &s.source.directory, &excluded, true);
    let mut complete = true;
    // Whether every entry of the directory being listed reached the sink so far.
    let mut dir_ok = true;
    let mut parked_before = 0;
    loop {
        // A patient walk waits out listing errors; it ends only at the end or on `stop`.
        let next = tree.next(&stop).await.map_err(|e| {
            AppError::Runtime(format!("backfill: listing the source: {}", e.message()))
        })?;
        let Some(super::Page { dir, entries, last }) = next else {
            break;
        };
        if stop.is_cancelled() {
            complete = false;
            break;
        }
        if done.contains(&dir) {
            let files = entries.iter().filter(|e| !e.is_directory).count();
            progress
                .resumed_files
                .fetch_add(files as u64, Ordering::Relaxed);
            if last {
                progress.resumed_dirs.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let jobs = entries
            .into_iter()
            .map(|entry| {
                let path = full_path(&dir, &entry);
                let (pipeline, progress) = (pipeline.clone(), progress.clone());
                let (source, dir) = (setup.source.clone(), dir.clone());
                async move {
                    let is_file = !entry.is_directory;
                    // A file is copied as the source has it now, not as listed: the
                    // daemon may have written a newer version meanwhile, which an old
                    // copy must not overwrite. One that is gone is left to its delete.
                    let entry = if is_file {
                        match source.lookup_entry(&path).await {
                            Ok(Some(current)) => current,
                            Ok(None) => return true,
                            Err(e) => {
                                tracing::warn!(path, error = %e.message(), "looking up a file failed; its directory will be done again");
                                return false;
                            }
                        }
                    } else {
                        entry
                    };
                    let event = RawEvent::created(&dir, &entry);
                    let origin = Origin::Message {
                        input: "backfill",
                        id: path,
                    };
                    let d = pipeline.handle(&event, &origin).await;
                    if d == Disposition::Done {
                        let counter = if is_file {
                            &progress.files
                        } else {
                            &progress.subdirs
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    d == Disposition::Done
                }
            })
            .collect::<Vec<_>>();
        let results: Vec<bool> = futures::stream::iter(jobs)
            .buffer_unordered(s.replicate.concurrency)
            .collect()
            .await;
        dir_ok &= results.iter().all(|ok| *ok);
        if !last {
            continue;
        }
        let parked = pipeline.stats.parked.load(Ordering::Relaxed);
        let all_done = std::mem::replace(&mut dir_ok, true) && parked == parked_before;
        parked_before = parked;
        if all_done {
            writeln!(state, "done {dir}")
                .and_then(|()| state.sync_data())
                .map_err(|e| AppError::Runtime(format!("writing {}: {e}", state_file.display())))?;
            progress.dirs.fetch_add(1, Ordering::Relaxed);
        } else {
            complete = false;
        }
    }
    let interrupted = stop.is_cancelled();
    stop.cancel();
    let _ = reporter.await;
    let stats = &pipeline.stats;
    let parked = stats.parked.load(Ordering::Relaxed);
    println!(
        "backfill: {} files and {} directories done in {} directories walked ({} skipped by the rules, {parked} parked); {} read in {:.1}s{}",
        progress.files.load(Ordering::Relaxed),
        progress.subdirs.load(Ordering::Relaxed),
        progress.dirs.load(Ordering::Relaxed),
        stats.skipped.load(Ordering::Relaxed),
        human_bytes(crate::metrics::get_copied()),
        started.elapsed().as_secs_f64(),
        match progress.resumed_dirs.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!("; {n} directories were done by an earlier run"),
        }
    );
    if interrupted {
        return Err(AppError::Interrupted(format!(
            "backfill interrupted; run the same command again to resume (progress is in {})",
            state_file.display()
        )));
    }
    if complete {
        drop(state);
        let _ = std::fs::remove_file(state_file);
        println!("complete");
        return Ok(());
    }
    Err(AppError::Runtime(format!(
        "{parked} file{} could not be replicated (see {}); run backfill again to retry their directories",
        if parked == 1 { "" } else { "s" },
        s.replicate.parked_file.display()
    )))
}

/// The directories an earlier run finished, if the state file is for this backfill.
fn load_state(path: &Path, header: &str) -> Result<HashSet<String>, AppError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(AppError::Usage(format!("reading {}: {e}", path.display()))),
    };
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return Err(AppError::Usage(format!(
            "{} was written by a backfill with another source or sink; use -restart to start over, or -state to pick another file",
            path.display()
        )));
    }
    // A line cut short by a crash has no newline; it is ignored (that directory is redone).
    let complete = if text.ends_with('\n') {
        text.as_str()
    } else {
        text.rsplit_once('\n').map_or("", |(a, _)| a)
    };
    Ok(complete
        .lines()
        .skip(1)
        .filter_map(|l| l.strip_prefix("done "))
        .map(str::to_string)
        .collect())
}

fn open_state(path: &Path, header: &str, resume: bool) -> Result<std::fs::File, AppError> {
    let fail = |e: std::io::Error| AppError::Usage(format!("writing {}: {e}", path.display()));
    if resume {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(fail);
    }
    let mut f = std::fs::File::create(path).map_err(fail)?;
    writeln!(f, "{header}").map_err(fail)?;
    Ok(f)
}

/// SIGINT/SIGTERM: stop taking new files; what is in flight finishes. Again: abandon it.
fn spawn_interrupt(stop: CancellationToken, abandon: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = stop.cancelled() => return,
        }
        eprintln!("\nstopping: finishing the files in flight (again to stop at once)");
        stop.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        abandon.cancel();
    });
}

/// A progress line on stderr: redrawn in place on a terminal, a log line every 10 s
/// otherwise.
async fn report_loop(pipeline: Arc<Pipeline>, progress: Arc<Progress>, stop: CancellationToken) {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(10)
    };
    let started = Instant::now();
    loop {
        let stopped = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(every) => false,
        };
        let bytes = crate::metrics::get_copied();
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "backfill {}, {} directories, {} ({}/s), {} parked, {} in flight",
            progress.files_line(),
            progress.dirs.load(Ordering::Relaxed),
            human_bytes(bytes),
            human_bytes((bytes as f64 / secs) as u64),
            pipeline.stats.parked.load(Ordering::Relaxed),
            crate::metrics::get().in_flight(),
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
            if stopped {
                eprintln!();
            }
        } else if !stopped {
            tracing::info!("{line}");
        }
        if stopped {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_files_done_and_waits_for_the_count() {
        let p = Progress::default();
        p.total_files.store(40, Ordering::Relaxed);
        p.files.store(9, Ordering::Relaxed);
        p.resumed_files.store(1, Ordering::Relaxed);
        assert_eq!(p.files_line(), "10 files (of at least 40; counting)");
        p.counted.store(true, Ordering::Relaxed);
        assert_eq!(p.files_line(), "[#####...............]  25% 10/40 files");
        p.total_files.store(0, Ordering::Relaxed);
        p.files.store(0, Ordering::Relaxed);
        p.resumed_files.store(0, Ordering::Relaxed);
        assert!(p.files_line().starts_with("[####################] 100%"));
    }
}

//! `[source.filer] subscribe = true`: read changes from the source filer's own metadata
//! log (`SubscribeMetadata`) instead of a queue. No broker to run, and nothing the filer
//! failed to publish can be missed: the log is what the filer persisted.
//!
//! Progress is a checkpoint, the time (ns) of the last event the sink has, stored in the
//! source filer's KV store under a key distinct per source directory and sink (8 bytes,
//! big-endian, as `filer.backup` stores its own). It is written every few seconds and at
//! shutdown; a restart resumes from it. Without a checkpoint, the log starts at
//! `start_from` if set, else the whole retained log is replayed, or, with
//! `initial_snapshot`, the live tree is walked first and the log followed from a minute
//! before the walk started. `-timeAgo`/`-fromTsMs` on the command line start the log
//! there even over a checkpoint.

use super::process;
use crate::config::settings::{StartFrom, SubscribeSettings};
use crate::event::RawEvent;
use crate::filer::{FilerSource, status_is_outage};
use crate::pb;
use crate::pipeline::{Disposition, Origin, Pipeline};
use crate::retry::Retry;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Progress shared with the checkpoint writer.
struct Progress {
    /// Time of the last event done (every earlier one is done too).
    done_ts: AtomicI64,
    saved_ts: AtomicI64,
}

/// Consume until `stop` fires (in-flight work gets until `hard_stop`), then save the
/// The source filer's metadata log (no queue) as an [`Input`](super::Input).
pub(crate) struct SubscribeInput {
    pub cfg: SubscribeSettings,
    pub source: Arc<FilerSource>,
    /// The replicated directory.
    pub directory: String,
}

#[async_trait::async_trait]
impl super::Input for SubscribeInput {
    fn describe(&self) -> String {
        format!("the source filer's metadata log under {}", self.directory)
    }

    /// The log is the source filer's: reaching the filer is reaching the input.
    async fn probe(&self) -> Result<String, super::InputError> {
        self.source
            .client()
            .get_filer_configuration(crate::pb::GetFilerConfigurationRequest {})
            .await
            .map(|_| self.describe())
            .map_err(|e| super::InputError::Unreachable(e.message().to_string()))
    }

    async fn run(
        &self,
        pipeline: Arc<Pipeline>,
        stop: CancellationToken,
        hard_stop: CancellationToken,
    ) -> Result<(), super::InputError> {
        // A start in the future would be saved as the checkpoint at the first tick, and
        // everything until then skipped for good.
        if let Some(StartFrom::At(ns)) = self.cfg.start_from
            && ns > now_ns()
        {
            return Err(super::InputError::Config {
                key: "source.filer.start_from",
                detail: format!(
                    "{} is in the future; the log would skip everything until then",
                    StartFrom::At(ns)
                ),
            });
        }
        run(
            &self.cfg,
            self.source.clone(),
            &self.directory,
            pipeline,
            stop,
            hard_stop,
        )
        .await;
        Ok(())
    }
}

/// checkpoint.
async fn run(
    cfg: &SubscribeSettings,
    source: Arc<FilerSource>,
    directory: &str,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    // "That long ago" counts from the start, however long the checkpoint takes to read.
    let started = now_ns();
    let key = cfg.checkpoint_key.clone();
    let shown = key.escape_ascii().to_string();
    tracing::info!(checkpoint_key = %shown, "checkpoints go to the source filer's KV store");
    let Some(mut checkpoint) = load_checkpoint(&source, &key, &stop).await else {
        return;
    };
    // A checkpoint taken from another key is saved under this one at the first save.
    let saved = checkpoint;
    // Where else it may be, in order, and what taking it from there means.
    let elsewhere = [
        (
            &cfg.legacy_checkpoint_key,
            "taking the checkpoint weed filer.backup kept before 4.48, which names the sink but not -filerPath: if that backup followed another path into this sink, start with -timeAgo instead; it is saved under the new key from now on",
        ),
        (
            &cfg.previous_checkpoint_key,
            "carrying over the checkpoint these sinks kept under their earlier key (their first sink changed); a sink that joined is reconciled with the source",
        ),
    ];
    for (other, meaning) in elsewhere {
        let Some(other) = other.as_ref().filter(|_| checkpoint.is_none()) else {
            continue;
        };
        let Some(found) = load_checkpoint(&source, other, &stop).await else {
            return;
        };
        if let Some(ts) = found {
            tracing::warn!(checkpoint = ts, key = %other.escape_ascii(), "{meaning}");
        }
        checkpoint = found;
    }
    let since = match (cfg.start_over, checkpoint) {
        (Some(start), checkpoint) => {
            match checkpoint {
                Some(ts) => tracing::warn!(
                    %start, checkpoint = ts,
                    "starting the metadata log where the command line says, over the checkpoint"
                ),
                None if cfg.initial_snapshot => tracing::info!(
                    %start,
                    "starting the metadata log where the command line says; initial_snapshot is not run (as upstream with -timeAgo)"
                ),
                None => {
                    tracing::info!(%start, "starting the metadata log where the command line says")
                }
            }
            start.ns(started)
        }
        (None, Some(ts)) if ts > started.saturating_add(AHEAD_TOLERANCE_NS) => {
            // Following from there would skip everything until then, silently.
            let then = crate::gaps::report(
                crate::gaps::Reason::CheckpointAheadOfClock,
                &format!(
                    "the checkpoint under {shown} ({}) is more than a day ahead of this \
                     machine's clock ({}): no log reached it, so the log is followed from a \
                     minute ago",
                    at(ts),
                    at(started)
                ),
            );
            if then == crate::gaps::Then::Stop {
                stop.cancelled().await;
                return;
            }
            started - 60_000_000_000
        }
        (None, Some(ts)) if ts < 0 => {
            tracing::warn!(checkpoint = ts, key = %shown, "the checkpoint is before 1970; replaying the filer's whole retained metadata log");
            0
        }
        (None, Some(ts)) => {
            tracing::info!(checkpoint = ts, key = %shown, "resuming the metadata log from the checkpoint");
            if check_retention(&source, ts).await == crate::gaps::Then::Stop {
                stop.cancelled().await;
                return;
            }
            ts
        }
        (None, None) if cfg.start_from.is_some() => {
            let start = cfg.start_from.unwrap_or(StartFrom::At(0));
            tracing::info!(%start, directory, "no checkpoint: starting the metadata log at start_from");
            start.ns(started)
        }
        (None, None) if cfg.initial_snapshot => {
            let started = now_ns();
            tracing::info!(
                directory,
                "no checkpoint: copying the live tree first (initial_snapshot)"
            );
            if !snapshot(&source, directory, &pipeline, &stop, &hard_stop).await {
                return;
            }
            // Changes made during the walk are in the log; replaying a few is harmless.
            started - 60_000_000_000
        }
        (None, None) => {
            tracing::info!(
                directory,
                "no checkpoint: replaying the filer's whole retained metadata log"
            );
            0
        }
    };
    let progress = Arc::new(Progress {
        done_ts: AtomicI64::new(since),
        saved_ts: AtomicI64::new(saved.unwrap_or(i64::MIN)),
    });
    let saver = tokio::spawn(save_loop(
        source.clone(),
        key.clone(),
        progress.clone(),
        cfg.checkpoint_interval,
        stop.clone(),
    ));
    // Resuming at the checkpoint, the filer delivers its event again: it is done, but
    // maybe by another tool, whose copy our already-current checks do not recognise.
    let resumed_at = checkpoint.filter(|ts| *ts == since);
    follow(
        &source, directory, &pipeline, &progress, resumed_at, &stop, &hard_stop,
    )
    .await;
    let _ = saver.await;
    match save(&source, &key, &progress).await {
        Ok(()) => tracing::info!(
            checkpoint = progress.done_ts.load(Ordering::Relaxed),
            "checkpoint saved"
        ),
        Err(e) => {
            tracing::error!(error = %e, "saving the checkpoint failed; the next start replays from the previous one")
        }
    }
}

/// How far ahead of this machine's clock a checkpoint may be (the filer's clock may be
/// ahead of ours) before it counts as one no log reached.
const AHEAD_TOLERANCE_NS: i64 = 24 * 3600 * 1_000_000_000;

/// A time (ns since the epoch) for messages.
fn at(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// Where the filer keeps its metadata log: one file per flush, `<YYYY-MM-DD>/<HH-MM>.<filer
/// id>`, named for the UTC minute its first event falls in (upstream `logFlushFunc`).
const LOG_DIR: &str = "/topics/.system/log";

/// A checkpoint older than the oldest log file the filer still keeps is a gap: the files
/// that held the events after it were deleted (by an operator, or a filer whose store was
/// replaced), and the filer would silently start from what is left. Reported through
/// [`crate::gaps`]; a filer that cannot be asked, or keeps no log file yet (everything
/// still in memory), gives no verdict.
async fn check_retention(source: &FilerSource, checkpoint: i64) -> crate::gaps::Then {
    let oldest = match oldest_log_ns(source).await {
        Ok(Some(oldest)) => oldest,
        Ok(None) => return crate::gaps::Then::GoOn,
        Err(e) => {
            tracing::debug!(error = %e, "the oldest metadata log is unknown; the checkpoint is not checked");
            return crate::gaps::Then::GoOn;
        }
    };
    if checkpoint >= oldest {
        return crate::gaps::Then::GoOn;
    }
    crate::gaps::report(
        crate::gaps::Reason::CheckpointBeforeOldestLog,
        &format!(
            "the checkpoint ({}) is older than the oldest metadata log the source filer keeps ({}, under {LOG_DIR}): the log in between was deleted",
            at(checkpoint),
            at(oldest)
        ),
    )
}

/// The start (ns) of the oldest metadata-log file the filer keeps; `None` when it keeps
/// none. Days and files are listed in name order, which is time order.
async fn oldest_log_ns(source: &FilerSource) -> Result<Option<i64>, tonic::Status> {
    let day = |d: &pb::Entry| {
        d.is_directory
            .then(|| chrono::NaiveDate::parse_from_str(&d.name, "%Y-%m-%d").ok())
            .flatten()
            .map(|date| (date, d.name.clone()))
    };
    let mut after = String::new();
    while let Some((date, name)) = first_in(source, LOG_DIR, &mut after, day).await? {
        let file = |f: &pb::Entry| {
            if f.is_directory || (f.chunks.is_empty() && f.content.is_empty()) {
                return None;
            }
            let minute = f.name.split('.').next().unwrap_or_default();
            let t = chrono::NaiveTime::parse_from_str(minute, "%H-%M").ok()?;
            date.and_time(t).and_utc().timestamp_nanos_opt()
        };
        let dir = format!("{LOG_DIR}/{name}");
        if let Some(ns) = first_in(source, &dir, &mut String::new(), file).await? {
            return Ok(Some(ns));
        }
    }
    Ok(None)
}

/// The first entry of `dir` after `*after` (in name order) that `pick` accepts, paging
/// through the listing; `*after` is left at that entry, so a further call goes on from it.
async fn first_in<T>(
    source: &FilerSource,
    dir: &str,
    after: &mut String,
    pick: impl Fn(&pb::Entry) -> Option<T>,
) -> Result<Option<T>, tonic::Status> {
    loop {
        let page = source.list_page(dir, after).await?;
        for entry in &page {
            *after = entry.name.clone();
            if let Some(found) = pick(entry) {
                return Ok(Some(found));
            }
        }
        if page.len() < crate::filer::LIST_PAGE {
            return Ok(None);
        }
    }
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

/// The stored checkpoint (`Some(None)` when there is none), waiting out an unreachable
/// filer; `None` if `stop` fires first.
async fn load_checkpoint(
    source: &FilerSource,
    key: &[u8],
    stop: &CancellationToken,
) -> Option<Option<i64>> {
    let mut retry = Retry::default();
    loop {
        let r = source
            .client()
            .kv_get(pb::KvGetRequest { key: key.to_vec() })
            .await;
        match r.map(|r| r.into_inner()) {
            Ok(r) if r.error.is_empty() => {
                retry.succeeded();
                return Some(match <[u8; 8]>::try_from(r.value.as_slice()) {
                    Ok(b) => Some(i64::from_be_bytes(b)),
                    Err(_) if r.value.is_empty() => None,
                    Err(_) => {
                        tracing::warn!(
                            bytes = r.value.len(),
                            "checkpoint is not 8 bytes; ignoring it"
                        );
                        None
                    }
                });
            }
            Ok(r) => {
                if !retry
                    .wait("reading the checkpoint failed", &r.error, stop)
                    .await
                {
                    return None;
                }
            }
            Err(e) => {
                if !retry.wait("source filer unavailable", &e, stop).await {
                    return None;
                }
            }
        }
    }
}

async fn save(source: &FilerSource, key: &[u8], progress: &Progress) -> Result<(), String> {
    let ts = progress.done_ts.load(Ordering::Relaxed);
    if progress.saved_ts.load(Ordering::Relaxed) == ts {
        return Ok(());
    }
    let r = source
        .client()
        .kv_put(pb::KvPutRequest {
            key: key.to_vec(),
            value: ts.to_be_bytes().to_vec(),
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    if !r.error.is_empty() {
        return Err(r.error);
    }
    progress.saved_ts.store(ts, Ordering::Relaxed);
    Ok(())
}

async fn save_loop(
    source: Arc<FilerSource>,
    key: Vec<u8>,
    progress: Arc<Progress>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Said once when saving starts failing and once when it works again, not every tick.
    let mut retry = crate::retry::Retry::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match save(&source, &key, &progress).await {
            Ok(()) => retry.succeeded(),
            Err(e) => {
                retry.failed("saving the checkpoint failed", &e);
            }
        }
    }
}

/// Follow the log from `progress.done_ts`, reconnecting after errors, until `stop`.
async fn follow(
    source: &FilerSource,
    directory: &str,
    pipeline: &Pipeline,
    progress: &Progress,
    resumed_at: Option<i64>,
    stop: &CancellationToken,
    hard_stop: &CancellationToken,
) {
    let concurrency = pipeline.concurrency();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(i64, RawEvent)>(concurrency * 2);
    // Under `on_failure = "hold"` a failed event freezes the checkpoint before it.
    let lane = crate::lane::run(
        &mut rx,
        concurrency,
        crate::lane::Holds::Freeze,
        |ts, event| async move {
            if stop.is_cancelled() {
                return None;
            }
            if resumed_at == Some(ts) {
                tokio::select! {
                    same = pipeline.already_applied(&event) => if same {
                        return Some(Disposition::Done);
                    },
                    _ = hard_stop.cancelled() => return None,
                }
            }
            let origin = Origin::Log { ts_ns: ts };
            process(pipeline, &event, &origin, hard_stop).await
        },
        |ts| progress.done_ts.store(*ts, Ordering::Relaxed),
    );
    tokio::pin!(lane);
    let feed = feed(
        source,
        directory,
        progress.done_ts.load(Ordering::Relaxed),
        tx,
        stop,
    );
    tokio::select! {
        (end, _) = &mut lane => {
            if end == crate::lane::LaneEnd::Stopped {
                // The checkpoint stays before the bad message.
                stop.cancelled().await;
            }
        }
        _ = feed => {
            lane.await;
        }
    }
}

/// Send the log's events from `since` into `tx`, resubscribing after errors, until `stop`.
async fn feed(
    source: &FilerSource,
    directory: &str,
    since: i64,
    tx: tokio::sync::mpsc::Sender<(i64, RawEvent)>,
    stop: &CancellationToken,
) {
    let client_id = rand_i32();
    let mut epoch = 0;
    let mut retry = Retry::for_input();
    // Resubscribe after the last event handed on (the lane has everything before it).
    let mut fed = since;
    'connect: loop {
        epoch += 1;
        let request = pb::SubscribeMetadataRequest {
            client_name: "replicate".into(),
            path_prefix: directory.to_string(),
            since_ns: fed,
            client_id,
            client_epoch: epoch,
            ..Default::default()
        };
        let mut client = source.client();
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.subscribe_metadata(request) => r,
        };
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(e) => {
                let what = if status_is_outage(&e) {
                    "source filer unavailable"
                } else {
                    "subscribing failed"
                };
                if !retry.wait(what, &e, stop).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(
            since_ns = fed,
            directory,
            "following the source filer's metadata log"
        );
        crate::metrics::get().set_up(crate::metrics::Component::Input, true);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                m = stream.message() => m,
            };
            let resp = match next {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    tracing::warn!("the filer ended the metadata stream; resubscribing");
                    continue 'connect;
                }
                Err(e) => {
                    if !retry
                        .wait("metadata stream broken; resubscribing", &e, stop)
                        .await
                    {
                        return;
                    }
                    continue 'connect;
                }
            };
            retry.succeeded();
            for one in flatten(resp) {
                let ts = one.ts_ns;
                let Some(event) = raw_event(one) else {
                    continue;
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = tx.send((ts, event)) => if r.is_err() { return },
                }
                fed = ts;
            }
        }
    }
}

/// A response and the batch it may carry, in order.
fn flatten(mut resp: pb::SubscribeMetadataResponse) -> Vec<pb::SubscribeMetadataResponse> {
    let batch = std::mem::take(&mut resp.events);
    let mut out = Vec::with_capacity(1 + batch.len());
    if resp.event_notification.is_some() {
        out.push(resp);
    }
    out.extend(batch.into_iter().flat_map(flatten));
    out
}

/// The event as a queue would carry it: key = the full path of the old entry (or of the
/// new one for a create), payload = the `EventNotification`.
fn raw_event(resp: pb::SubscribeMetadataResponse) -> Option<RawEvent> {
    let ev = resp.event_notification?;
    let name = ev
        .old_entry
        .as_ref()
        .or(ev.new_entry.as_ref())
        .map(|e| e.name.clone())?;
    let dir = resp.directory.trim_end_matches('/');
    Some(RawEvent::from_notification(format!("{dir}/{name}"), ev))
}

fn rand_i32() -> i32 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    i32::from_be_bytes(b) & i32::MAX
}

/// Walk the live tree under `directory` breadth first, replicating every entry as a
/// create. `false` if stopped.
async fn snapshot(
    source: &FilerSource,
    directory: &str,
    pipeline: &Pipeline,
    stop: &CancellationToken,
    hard_stop: &CancellationToken,
) -> bool {
    // Excluded directories are walked too: the rules skip their entries, as for events.
    let mut tree = crate::filer::tree::SourceTree::new(source, directory, &|_| false, true);
    let mut count = 0u64;
    // A patient walk ends only at its end or when stopped.
    while let Ok(Some(page)) = tree.next(stop).await {
        for entry in page.entries {
            let event = RawEvent::created(&page.dir, &entry);
            let origin = Origin::Log { ts_ns: 0 };
            match process(pipeline, &event, &origin, hard_stop).await {
                Some(Disposition::Done | Disposition::Held) => count += 1,
                Some(Disposition::Stop | Disposition::Abandoned) | None => return false,
            }
        }
    }
    if stop.is_cancelled() {
        return false;
    }
    tracing::info!(entries = count, "initial snapshot done");
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::EventNotification;

    #[test]
    fn keys_and_batches() {
        let entry = |name: &str| pb::Entry {
            name: name.into(),
            ..Default::default()
        };
        let resp = |dir: &str, ts, ev: EventNotification| pb::SubscribeMetadataResponse {
            directory: dir.into(),
            ts_ns: ts,
            event_notification: Some(ev),
            ..Default::default()
        };
        let mut head = resp(
            "/data/",
            1,
            EventNotification {
                new_entry: Some(entry("a")),
                ..Default::default()
            },
        );
        head.events = vec![resp(
            "/data/d",
            2,
            EventNotification {
                old_entry: Some(entry("old")),
                new_entry: Some(entry("new")),
                new_parent_path: "/data/e".into(),
                ..Default::default()
            },
        )];
        let flat = flatten(head);
        assert_eq!(flat.iter().map(|r| r.ts_ns).collect::<Vec<_>>(), vec![1, 2]);
        let keys: Vec<String> = flat
            .into_iter()
            .map(|r| raw_event(r).unwrap().key)
            .collect();
        assert_eq!(
            keys,
            vec!["/data/a", "/data/d/old"],
            "a rename is keyed by its old path"
        );
    }
}

//! Several sinks from one input (named sections, `[sink.<kind>.<name>]`).
//!
//! The input hands each event to the fan-out, which appends it to every sink's backlog: a
//! database of its own (redb) in `sinks/<id>/backlog.redb` beside the parked file,
//! committed to disk before the append returns (appends that arrive together are
//! committed together). The input acknowledges the event once every backlog holds it.
//! Each sink drains its own backlog through its own pipeline: its lane, failure policy,
//! parked file, metrics label and outages. What it finished goes from the backlog, so
//! the backlog is that sink's progress, and a sink that is down or slow holds back
//! neither the others nor the input: its backlog grows on disk and it catches up from
//! there when it is back. A backlog that would grow past `backlog_max_events` is
//! dropped instead, and the sink owes a reconciliation with the source (as a gap under
//! `on_gap = "reconcile"`), which it runs as soon as it can; the debt is kept in the
//! backlog database, so a restart does not forget it. A sink that joins (its backlog is
//! new) owes one too, so that it holds what the source held before it came, not only
//! what changed since.
//!
//! The sinks read file content through one source reader whose shared cache keeps each
//! chunk for the others (see [`crate::filer::SourceOptions::shared_read_bytes`]): sinks
//! that keep up read each chunk from the volume servers once between them.

use crate::event::RawEvent;
use crate::pb::Entry;
use crate::pipeline::{Disposition, Origin, Pipeline};
use crate::sink::{Sink, SinkError, SinkKey};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// How many reconciliations were owed since the last one finished (0: none owed).
const OWED: &str = "owed";
/// The run of the set of sinks this sink last took part in (see [`Runs`]).
const RUN: &str = "run";
/// The sequence number the next event gets (numbers never go back, not even after the
/// backlog was emptied).
const NEXT: &str = "next";

/// A backlog store error, as the callers report it.
fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A counter of the meta table (0 when never set).
fn counter(meta: &impl redb::ReadableTable<&'static str, u64>, key: &str) -> Result<u64, String> {
    Ok(meta.get(key).map_err(err)?.map(|v| v.value()).unwrap_or(0))
}

/// One more reconciliation owed.
fn owe_one(meta: &mut redb::Table<&'static str, u64>) -> Result<(), String> {
    let owed = counter(meta, OWED)?;
    meta.insert(OWED, owed.saturating_add(1)).map_err(err)?;
    Ok(())
}

/// Appends committed together at most.
const BATCH: usize = 1024;
/// How often a sink's finished events are removed from its backlog.
const TRIM_EVERY: Duration = Duration::from_millis(250);

/// Why the backlog store failed.
#[derive(Debug, thiserror::Error)]
#[error("sink backlog {path}: {detail}")]
pub(crate) struct BacklogError {
    path: String,
    detail: String,
}

impl BacklogError {
    fn at(path: &Path, detail: impl std::fmt::Display) -> Self {
        BacklogError {
            path: path.display().to_string(),
            detail: detail.to_string(),
        }
    }
}

type Append = (Arc<Vec<u8>>, oneshot::Sender<Result<(), String>>);

/// One sink's backlog.
pub(crate) struct Backlog {
    /// The sink's name (its section under `sink.`).
    pub id: &'static str,
    path: PathBuf,
    db: Arc<redb::Database>,
    limit: u64,
    tx: mpsc::Sender<Append>,
    /// The sequence number the next append gets: the drainer waits on it.
    appended: watch::Sender<u64>,
    /// Events in the backlog (finished or not, until trimmed).
    count: AtomicU64,
    /// A reconciliation is owed (mirrors [`OWED`]).
    owed: watch::Sender<bool>,
    progress: Mutex<Progress>,
    /// Logged the overflow already (once per state change).
    overflowing: AtomicBool,
    /// Logged that appends fail (once per state change).
    append_failing: AtomicBool,
    /// Reads so far (a feeder that waits reads only when there is something new).
    reads: AtomicU64,
    /// Held across each change of the debt and the news of it, so that `owed` says
    /// what the database says.
    debt_lock: Mutex<()>,
}

/// Which run of the set of sinks this is. Each start with several sinks is a run; so is
/// each start with one sink while `sinks/` exists, for the sinks left out of it. A
/// sink whose last run is before the previous one was not fed for a while and owes a
/// reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Runs {
    pub previous: u64,
    pub current: u64,
}

impl Runs {
    /// Count this start as a run in `sinks` (the directory of the sinks' state): read the
    /// last run and write the next. A file that does not say a number counts as none.
    pub(crate) fn next(sinks: &Path) -> Result<Runs, BacklogError> {
        let file = sinks.join("run");
        let previous = match std::fs::read_to_string(&file) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or_else(|_| {
                tracing::warn!(file = %file.display(), "not a run number; every sink is reconciled with the source");
                u64::MAX >> 1
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(BacklogError::at(&file, e)),
        };
        let runs = Runs {
            previous,
            current: previous.saturating_add(1),
        };
        std::fs::create_dir_all(sinks).map_err(|e| BacklogError::at(sinks, e))?;
        let temp = sinks.join("run.new");
        std::fs::write(&temp, format!("{}\n", runs.current))
            .and_then(|()| std::fs::File::open(&temp)?.sync_all())
            .and_then(|()| std::fs::rename(&temp, &file))
            .and_then(|()| std::fs::File::open(sinks)?.sync_all())
            .map_err(|e| BacklogError::at(&file, e))?;
        Ok(runs)
    }
}

#[derive(Default)]
struct Progress {
    /// Every event up to this one is finished.
    done: Option<u64>,
    /// The earliest event held by `on_failure = "hold"`: kept, with all after it, until
    /// a restart replays them.
    held: Option<u64>,
    /// Everything up to this one was removed.
    trimmed: Option<u64>,
    /// Everything before this one was dropped (an overflow): holds below it are void.
    dropped_below: u64,
}

impl Backlog {
    /// Open (or create) the backlog in `dir`. A file that is not a backlog (damaged, or
    /// something else) is moved aside, logged, and the sink owes a reconciliation: what
    /// it held is lost, nothing else is.
    pub(crate) fn open(
        id: &'static str,
        dir: &Path,
        limit: u64,
        runs: Runs,
    ) -> Result<Arc<Backlog>, BacklogError> {
        let path = dir.join("backlog.redb");
        let fail = |detail: String| BacklogError {
            path: path.display().to_string(),
            detail,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("creating its directory: {e}")))?;
        if !path.exists() {
            // A sink that joins is made equal to the source once: without it, it would
            // hold only what changes from now on. Made under another name and renamed,
            // so that a crash in between cannot leave a backlog that owes nothing.
            tracing::info!(
                sink = id,
                "a new sink: it is reconciled with the source once, alongside the events that follow"
            );
            let fresh = path.with_extension("redb.new");
            let _ = std::fs::remove_file(&fresh);
            {
                let db = redb::Database::create(&fresh).map_err(|e| fail(e.to_string()))?;
                Self::prepare(&db, true, runs, id).map_err(fail)?;
            }
            std::fs::rename(&fresh, &path).map_err(|e| fail(format!("naming it: {e}")))?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let opened = redb::Database::create(&path)
            .map_err(|e| e.to_string())
            .and_then(|db| Self::prepare(&db, false, runs, id).map(|state| (db, state)));
        let (db, (count, next, owed)) = match opened {
            Ok(x) => x,
            Err(e) => {
                // Not a backlog (damaged, or another file): kept aside, and the sink is
                // reconciled with the source. What it held is lost, nothing else is.
                let aside = path.with_extension(format!(
                    "redb.damaged-{}",
                    chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
                ));
                tracing::error!(sink = id, file = %path.display(), moved_to = %aside.display(), error = %e,
                    "the sink's backlog cannot be opened; it is moved aside, and the sink is reconciled with the source");
                std::fs::rename(&path, &aside)
                    .map_err(|e| fail(format!("moving a damaged backlog aside: {e}")))?;
                let db = redb::Database::create(&path).map_err(|e| fail(e.to_string()))?;
                let state = Self::prepare(&db, true, runs, id).map_err(fail)?;
                (db, state)
            }
        };
        let (tx, rx) = mpsc::channel(BATCH);
        let backlog = Arc::new(Backlog {
            id,
            path,
            db: Arc::new(db),
            limit,
            tx,
            appended: watch::channel(next).0,
            count: count.into(),
            owed: watch::channel(owed).0,
            progress: Mutex::new(Progress::default()),
            overflowing: false.into(),
            append_failing: false.into(),
            reads: 0.into(),
            debt_lock: Mutex::new(()),
        });
        crate::metrics::get().set_sink_backlog(id, count);
        tokio::spawn(Self::write_loop(Arc::downgrade(&backlog), rx));
        Ok(backlog)
    }

    /// Create the tables; the number of events held, the next sequence number, whether
    /// a reconciliation is owed (one more when `owe`, or when this sink missed a run of
    /// the set).
    fn prepare(
        db: &redb::Database,
        owe: bool,
        runs: Runs,
        id: &str,
    ) -> Result<(u64, u64, bool), String> {
        let txn = db.begin_write().map_err(err)?;
        let out = {
            let events = txn.open_table(EVENTS).map_err(err)?;
            let mut meta = txn.open_table(META).map_err(err)?;
            let count = events.len().map_err(err)?;
            let last = events
                .last()
                .map_err(err)?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(0);
            let next = counter(&meta, NEXT)?.max(last);
            let missed = !owe && counter(&meta, RUN)? < runs.previous;
            if owe || missed {
                owe_one(&mut meta)?;
            }
            let owed = counter(&meta, OWED)?;
            meta.insert(RUN, runs.current).map_err(err)?;
            if missed {
                tracing::warn!(
                    sink = id,
                    "this sink was not fed for a while (it was left out of a run, or replicate ran with one sink); it is reconciled with the source"
                );
            }
            (count, next, owed > 0)
        };
        txn.commit().map_err(err)?;
        Ok(out)
    }

    /// Append one encoded event; returns once it is on disk.
    async fn append(&self, record: Arc<Vec<u8>>) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((record, reply))
            .await
            .map_err(|_| "the backlog writer stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the backlog writer stopped".to_string())?
    }

    /// Commit appends as they come, as many together as are waiting.
    /// It ends when the backlog is dropped (its sender with it).
    async fn write_loop(backlog: std::sync::Weak<Self>, mut rx: mpsc::Receiver<Append>) {
        while let Some(first) = rx.recv().await {
            let Some(this) = backlog.upgrade() else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            let (records, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let result = tokio::task::spawn_blocking(move || this.write(&records))
                .await
                .unwrap_or_else(|e| Err(format!("the backlog writer failed: {e}")));
            for reply in replies {
                let _ = reply.send(result.clone());
            }
        }
    }

    fn write(&self, records: &[Arc<Vec<u8>>]) -> Result<(), String> {
        let _debt = self.debt_lock.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write().map_err(err)?;
        let (count, next, overflow) = {
            let mut events = txn.open_table(EVENTS).map_err(err)?;
            let mut meta = txn.open_table(META).map_err(err)?;
            let held = events.len().map_err(err)?;
            let mut next = counter(&meta, NEXT)?;
            let overflow = held + records.len() as u64 > self.limit;
            if overflow {
                // Everything it held and these go; the reconciliation brings what it
                // would have brought.
                events.retain(|_, _| false).map_err(err)?;
                owe_one(&mut meta)?;
                next += records.len() as u64;
            } else {
                for r in records {
                    events.insert(next, r.as_slice()).map_err(err)?;
                    next += 1;
                }
            }
            meta.insert(NEXT, next).map_err(err)?;
            (events.len().map_err(err)?, next, overflow)
        };
        txn.commit().map_err(err)?;
        self.count.store(count, Ordering::Relaxed);
        crate::metrics::get().set_sink_backlog(self.id, count);
        if overflow {
            {
                let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
                p.held = None;
                p.dropped_below = next;
            }
            crate::metrics::get().sink_backlog_dropped(self.id);
            if !self.overflowing.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    sink = self.id,
                    limit = self.limit,
                    "the sink's backlog outgrew backlog_max_events and was dropped; the sink is reconciled with the source when it is back"
                );
            }
            self.owed.send_replace(true);
        } else {
            self.overflowing.store(false, Ordering::Relaxed);
        }
        self.appended.send_replace(next);
        Ok(())
    }

    /// Up to `max` events from sequence number `from` on.
    fn read_from(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, String> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let txn = self.db.begin_read().map_err(err)?;
        let events = txn.open_table(EVENTS).map_err(err)?;
        let mut out = Vec::new();
        for item in events.range(from..).map_err(err)?.take(max) {
            let (k, v) = item.map_err(err)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Remove what was finished (up to the first held event); the events left.
    fn trim(&self) -> Result<u64, String> {
        let upto = {
            let p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            let limit = match (p.done, p.held) {
                (Some(d), Some(h)) => h.checked_sub(1).map(|h| h.min(d)),
                (d, None) => d,
                (None, Some(_)) => None,
            };
            match (limit, p.trimmed) {
                (Some(l), Some(t)) if l <= t => None,
                (l, _) => l,
            }
        };
        let Some(upto) = upto else {
            return Ok(self.count.load(Ordering::Relaxed));
        };
        let txn = self.db.begin_write().map_err(err)?;
        let count = {
            let mut events = txn.open_table(EVENTS).map_err(err)?;
            events.retain_in(..=upto, |_, _| false).map_err(err)?;
            events.len().map_err(err)?
        };
        txn.commit().map_err(err)?;
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trimmed = Some(upto);
        self.count.store(count, Ordering::Relaxed);
        crate::metrics::get().set_sink_backlog(self.id, count);
        Ok(count)
    }

    /// Events it holds (finished or not, until removed).
    pub(crate) fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// A reconciliation is owed (a gap in the input): recorded before this returns.
    pub(crate) fn owe(&self) -> Result<(), BacklogError> {
        let _debt = self.debt_lock.lock().unwrap_or_else(|p| p.into_inner());
        let owed = || -> Result<(), String> {
            let txn = self.db.begin_write().map_err(err)?;
            owe_one(&mut txn.open_table(META).map_err(err)?)?;
            txn.commit().map_err(err)
        };
        owed().map_err(|e| BacklogError::at(&self.path, e))?;
        self.owed.send_replace(true);
        Ok(())
    }

    /// The reconciliations owed now (0: none).
    pub(crate) fn debt(&self) -> Result<u64, BacklogError> {
        let debt = || -> Result<u64, String> {
            let txn = self.db.begin_read().map_err(err)?;
            counter(&txn.open_table(META).map_err(err)?, OWED)
        };
        debt().map_err(|e| BacklogError::at(&self.path, e))
    }

    /// A reconciliation that began when `debt` were owed finished: nothing is owed any
    /// more, unless more came meanwhile (then `false`, and another runs).
    fn settle(&self, debt: u64) -> Result<bool, String> {
        let _debt = self.debt_lock.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write().map_err(err)?;
        let settled = {
            let mut meta = txn.open_table(META).map_err(err)?;
            let now = counter(&meta, OWED)?;
            if now == debt {
                meta.insert(OWED, 0).map_err(err)?;
            }
            now == debt
        };
        txn.commit().map_err(err)?;
        if settled {
            self.owed.send_replace(false);
        }
        Ok(settled)
    }

    /// Every event up to `seq` is finished. Never goes back: a reconciliation's slot
    /// may carry a mark older than a backlog event before it in the lane.
    fn done(&self, seq: u64) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        p.done = Some(p.done.map_or(seq, |d| d.max(seq)));
    }

    fn hold(&self, seq: u64) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if seq >= p.dropped_below {
            p.held = Some(p.held.map_or(seq, |h| h.min(seq)));
        }
    }
}

/// An event as a backlog keeps it: its origin, key, defect and payload.
fn encode(raw: &RawEvent, origin: &Origin) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(raw.payload.len() + raw.key.len() + 64);
    out.push(1); // format
    match origin {
        Origin::Kafka { partition, offset } => {
            out.push(0);
            out.extend_from_slice(&partition.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        Origin::Message { input, id } => {
            out.push(1);
            put(&mut out, input.as_bytes());
            put(&mut out, id.as_bytes());
        }
        Origin::Log { ts_ns } => {
            out.push(2);
            out.extend_from_slice(&ts_ns.to_le_bytes());
        }
    }
    put(&mut out, raw.key.as_bytes());
    match &raw.defect {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            put(&mut out, d.as_bytes());
        }
    }
    out.extend_from_slice(&raw.payload);
    out
}

/// The event and origin a backlog record holds; `Err` says what is wrong with it.
fn decode(record: &[u8]) -> Result<(RawEvent, Origin), &'static str> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
            if self.0.len() < n {
                return Err("the record is cut short");
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn byte(&mut self) -> Result<u8, &'static str> {
            Ok(self.take(1)?[0])
        }
        fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
            self.take(N)?
                .try_into()
                .map_err(|_| "the record is cut short")
        }
        fn text(&mut self) -> Result<String, &'static str> {
            let n = u32::from_le_bytes(self.array()?) as usize;
            String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a text is not UTF-8")
        }
    }
    let mut c = Cursor(record);
    if c.byte()? != 1 {
        return Err("unknown record format");
    }
    let origin = match c.byte()? {
        0 => Origin::Kafka {
            partition: i32::from_le_bytes(c.array()?),
            offset: i64::from_le_bytes(c.array()?),
        },
        1 => {
            let input = c.text()?;
            let input = ["sqs", "pubsub", "rabbitmq", "nats", "reconcile"]
                .into_iter()
                .find(|known| *known == input)
                .unwrap_or("queue");
            Origin::Message {
                input,
                id: c.text()?,
            }
        }
        2 => Origin::Log {
            ts_ns: i64::from_le_bytes(c.array()?),
        },
        _ => return Err("unknown origin"),
    };
    let key = c.text()?;
    let defect = match c.byte()? {
        0 => None,
        1 => Some(c.text()?),
        _ => return Err("bad defect flag"),
    };
    let mut raw = RawEvent::new(key, bytes::Bytes::copy_from_slice(c.0));
    if defect.is_some() {
        raw.defect = defect;
    }
    Ok((raw, origin))
}

/// Hands each event to every sink's backlog (see the module's documentation).
pub(crate) struct FanOut {
    backlogs: Vec<Arc<Backlog>>,
}

impl FanOut {
    pub(crate) fn new(backlogs: Vec<Arc<Backlog>>) -> Self {
        FanOut { backlogs }
    }
}

#[async_trait::async_trait]
impl crate::pipeline::Outlet for FanOut {
    /// Put the event in every backlog: `Done` once all hold it. A backlog that cannot
    /// be written (a full or failing local disk) is an outage of this process's own
    /// state: waited out with backoff, logged once; `Abandoned` at shutdown.
    async fn take(&self, raw: &RawEvent, origin: &Origin, stop: &CancellationToken) -> Disposition {
        let record = Arc::new(encode(raw, origin));
        let mut missing: Vec<&Arc<Backlog>> = self.backlogs.iter().collect();
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let results =
                futures::future::join_all(missing.iter().map(|b| b.append(record.clone()))).await;
            let mut still = Vec::new();
            for (b, r) in missing.into_iter().zip(results) {
                match r {
                    Ok(()) => {
                        if b.append_failing.swap(false, Ordering::Relaxed) {
                            tracing::info!(sink = b.id, "the sink's backlog takes events again");
                        }
                    }
                    Err(e) => {
                        if !b.append_failing.swap(true, Ordering::Relaxed) {
                            tracing::error!(sink = b.id, file = %b.path.display(), error = %e,
                                "cannot write to the sink's backlog (it is on local disk, beside parked_file); the input waits for it, retrying");
                        }
                        still.push(b);
                    }
                }
            }
            if still.is_empty() {
                return Disposition::Done;
            }
            missing = still;
            tokio::select! {
                _ = stop.cancelled() => return Disposition::Abandoned,
                _ = tokio::time::sleep(backoff.next_wait()) => {}
            }
        }
    }
}

/// One slot of a sink's lane: an event of its backlog, or one of a reconciliation.
#[derive(Clone)]
struct Token {
    /// The backlog event's sequence number.
    seq: Option<u64>,
    /// For a reconciliation's event: the last backlog event fed before it, so that a
    /// finished prefix that ends with it still tells how far the backlog is done.
    mark: Option<u64>,
    origin: Origin,
    /// Where a reconciliation's event reports its outcome.
    reply: Option<Reply>,
}

/// Taken once by whichever run of the slot finishes it.
type Reply = Arc<Mutex<Option<oneshot::Sender<Option<Disposition>>>>>;

type LaneItem = (Token, RawEvent);

/// Run sink `backlog.id`'s events through its pipeline until `stop`: in order where
/// related (its own lane), removing what it finished, and running a reconciliation
/// whenever one is owed, its events in the same lane (a replay and a live event on
/// related paths never run at once, so neither undoes the other).
pub(crate) async fn drain(
    backlog: Arc<Backlog>,
    pipeline: Arc<Pipeline>,
    setup: Arc<crate::setup::Setup>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    let concurrency = pipeline.concurrency();
    let (tx, mut rx) = mpsc::channel::<LaneItem>(concurrency);
    // The last backlog event handed to the lane (`u64::MAX`: none yet).
    let fed = Arc::new(AtomicU64::new(u64::MAX));
    // The helpers end with the drain (a sink stopped at a bad message goes no further).
    let helpers = stop.child_token();
    let _helpers_end = helpers.clone().drop_guard();
    tokio::spawn(trim_loop(backlog.clone(), helpers.clone()));
    tokio::spawn(reconcile_loop(
        backlog.clone(),
        into_lane(tx.clone(), fed.clone()),
        setup,
        helpers.clone(),
    ));
    let feeder = feed(backlog.clone(), tx, fed, stop.clone());
    let lane = crate::lane::run(
        &mut rx,
        concurrency,
        // The backlog keeps a held event itself (`Backlog::hold`), until an overflow
        // drops it and a reconciliation stands for it.
        crate::lane::Holds::Report,
        |token: Token, event| {
            let (pipeline, backlog) = (pipeline.clone(), backlog.clone());
            let (stop, hard_stop) = (stop.clone(), hard_stop.clone());
            async move {
                let d = if stop.is_cancelled() {
                    None
                } else {
                    crate::source::process(&pipeline, &event, &token.origin, &hard_stop).await
                };
                if let Some(seq) = token.seq
                    && matches!(d, Some(Disposition::Held | Disposition::Stop))
                {
                    backlog.hold(seq);
                }
                if let Some(reply) = &token.reply
                    && let Some(reply) = reply.lock().unwrap_or_else(|p| p.into_inner()).take()
                {
                    let _ = reply.send(d);
                }
                // A reconciliation's event that failed is the reconciliation's to count;
                // it never holds the backlog.
                match (token.seq, d) {
                    (None, Some(Disposition::Held | Disposition::Stop)) => Some(Disposition::Done),
                    _ => d,
                }
            }
        },
        |token| {
            if let Some(done) = token.seq.or(token.mark) {
                backlog.done(done);
            }
        },
    );
    tokio::pin!(lane);
    let end = tokio::select! {
        (end, _) = &mut lane => end,
        _ = feeder => tokio::select! {
            // What runs finishes within the shutdown grace; a reconciliation still
            // listing the sink does not keep the lane open past it.
            (end, _) = &mut lane => end,
            _ = hard_stop.cancelled() => crate::lane::LaneEnd::Abandoned,
        },
    };
    if end == crate::lane::LaneEnd::Stopped {
        tracing::error!(
            sink = backlog.id,
            "this sink goes no further (bad_message = \"stop\"); the others go on"
        );
    }
    // What finished is removed before the process ends.
    let b = backlog.clone();
    if let Ok(Ok(left)) = tokio::task::spawn_blocking(move || b.trim()).await {
        tracing::info!(
            sink = backlog.id,
            left,
            "the sink's backlog keeps {left} events for the next start"
        );
    }
}

/// Hand the backlog's events to the lane, in order, until `stop`.
async fn feed(
    backlog: Arc<Backlog>,
    tx: mpsc::Sender<LaneItem>,
    fed: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut next = 0u64;
    let mut appended = backlog.appended.subscribe();
    let mut retry = crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut health = crate::retry::Health::default();
    loop {
        // Every event numbered below this was appended before the read that follows.
        let appended_before = *appended.borrow_and_update();
        let b = backlog.clone();
        let read = tokio::task::spawn_blocking(move || b.read_from(next, 256))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let batch = match read {
            Ok(batch) => {
                if health.worked().is_some() {
                    tracing::info!(sink = backlog.id, "the sink's backlog reads again");
                    retry.reset();
                }
                batch
            }
            Err(e) => {
                if health.failed() {
                    tracing::error!(sink = backlog.id, error = %e, "reading the sink's backlog failed; retrying");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry.next_wait()) => continue,
                }
            }
        };
        if batch.is_empty() {
            // What is numbered below `appended_before` and was not read is gone
            // (removed, or dropped): wait for an append past it.
            next = next.max(appended_before);
            tokio::select! {
                _ = stop.cancelled() => return,
                r = appended.wait_for(|n| *n > next) => if r.is_err() { return },
            }
            continue;
        }
        for (seq, record) in batch {
            next = seq + 1;
            let (event, origin) = decode(&record).unwrap_or_else(|why| {
                // Parked as a bad message by the sink's pipeline.
                let mut raw = RawEvent::new(format!("backlog record {seq}"), record);
                raw.defect = Some(format!("damaged backlog record: {why}"));
                let origin = Origin::Message {
                    input: "backlog",
                    id: seq.to_string(),
                };
                (raw, origin)
            });
            let token = Token {
                seq: Some(seq),
                mark: None,
                origin,
                reply: None,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = tx.send((token, event)) => if r.is_err() { return },
            }
            fed.store(seq, Ordering::Release);
        }
    }
}

/// A reconciliation's way into the sink's lane.
fn into_lane(tx: mpsc::Sender<LaneItem>, fed: Arc<AtomicU64>) -> crate::ops::reconcile::Submit {
    Arc::new(move |event, origin| {
        let (tx, fed) = (tx.clone(), fed.clone());
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let mark = match fed.load(Ordering::Acquire) {
                u64::MAX => None,
                seq => Some(seq),
            };
            let token = Token {
                seq: None,
                mark,
                origin,
                reply: Some(Arc::new(Mutex::new(Some(reply)))),
            };
            if tx.send((token, event)).await.is_err() {
                return Disposition::Abandoned;
            }
            answer
                .await
                .ok()
                .flatten()
                .unwrap_or(Disposition::Abandoned)
        })
    })
}

async fn trim_loop(backlog: Arc<Backlog>, stop: CancellationToken) {
    let mut health = crate::retry::Health::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TRIM_EVERY) => {}
        }
        let b = backlog.clone();
        match tokio::task::spawn_blocking(move || b.trim()).await {
            Ok(Ok(_)) => {
                if health.worked().is_some() {
                    tracing::info!(
                        sink = backlog.id,
                        "finished events are removed from the sink's backlog again"
                    );
                }
            }
            Ok(Err(e)) => {
                if health.failed() {
                    tracing::warn!(sink = backlog.id, error = %e, "removing finished events from the sink's backlog failed; tried again (they run again after a restart)");
                }
            }
            Err(_) => {}
        }
    }
}

/// Whenever a reconciliation is owed: run it through the sink's lane (again, with
/// backoff, after one that failed or left events unapplied), and settle the debt once
/// one finished whole. The debt stays recorded until then, so a stop or a crash in the
/// middle leaves it owed.
async fn reconcile_loop(
    backlog: Arc<Backlog>,
    submit: crate::ops::reconcile::Submit,
    setup: Arc<crate::setup::Setup>,
    stop: CancellationToken,
) {
    let mut owed = backlog.owed.subscribe();
    // After a run that left events unapplied (held ones, under on_failure = "hold"),
    // the next is in up to ten minutes: each lists the whole source.
    let mut retry = crate::retry::Backoff::new(Duration::from_secs(1), Duration::from_secs(600));
    let mut store = crate::retry::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let pause = |wait: Duration| {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = stop.cancelled() => false,
                _ = tokio::time::sleep(wait) => true,
            }
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = owed.wait_for(|o| *o) => if r.is_err() { return },
        }
        let b = backlog.clone();
        let debt = match tokio::task::spawn_blocking(move || b.debt()).await {
            Ok(Ok(d)) => d,
            failed => {
                let e = failed.map_or_else(
                    |e| e.to_string(),
                    |r| r.err().map(|e| e.to_string()).unwrap_or_default(),
                );
                tracing::warn!(sink = backlog.id, error = %e, "cannot read what the sink owes; trying again");
                if !pause(store.next_wait()).await {
                    return;
                }
                continue;
            }
        };
        store.reset();
        tracing::warn!(
            sink = backlog.id,
            "reconciling the sink with the source (it joined, was left out for a while, lost its backlog, or the input found a gap)"
        );
        let started = std::time::Instant::now();
        let failed = match crate::ops::reconcile::run(&setup, submit.clone(), &stop).await {
            Ok(_) if stop.is_cancelled() => {
                tracing::warn!(
                    sink = backlog.id,
                    "reconciliation interrupted by shutdown; it runs again at the next start"
                );
                return;
            }
            Ok(s) if s.failed == 0 => {
                retry.reset();
                tracing::info!(sink = backlog.id, entries = s.entries, deleted = s.deleted,
                    took = ?started.elapsed(), "reconciliation finished");
                // Settled, or owed again meanwhile; a store that cannot say is asked again.
                loop {
                    let b = backlog.clone();
                    match tokio::task::spawn_blocking(move || b.settle(debt)).await {
                        Ok(Ok(true)) => break,
                        Ok(Ok(false)) => {
                            tracing::info!(
                                sink = backlog.id,
                                "another reconciliation was owed meanwhile"
                            );
                            break;
                        }
                        failed => {
                            let e = failed
                                .map_or_else(|e| e.to_string(), |r| r.err().unwrap_or_default());
                            tracing::warn!(sink = backlog.id, error = %e, "cannot record that the reconciliation finished; trying again");
                            if !pause(store.next_wait()).await {
                                return;
                            }
                        }
                    }
                }
                store.reset();
                continue;
            }
            Ok(s) => format!(
                "{} of {} entries did not reach the sink",
                s.failed, s.entries
            ),
            Err(e) => e.to_string(),
        };
        if stop.is_cancelled() {
            return;
        }
        let wait = retry.next_wait();
        tracing::warn!(sink = backlog.id, error = %failed, retry_in = ?wait, "reconciliation incomplete; it runs again");
        if !pause(wait).await {
            return;
        }
    }
}

/// The fan-out's pipeline has no sink of its own: each sink's pipeline has one.
pub(crate) struct NoSink;

#[async_trait::async_trait]
impl Sink for NoSink {
    fn name(&self) -> &str {
        "fan-out"
    }
    async fn create_entry(&self, key: &SinkKey, _: &Entry, _: &[i32]) -> Result<(), SinkError> {
        Err(refused(key))
    }
    async fn delete_entry(
        &self,
        key: &SinkKey,
        _: bool,
        _: bool,
        _: &[i32],
    ) -> Result<(), SinkError> {
        Err(refused(key))
    }
    async fn trash(&self, key: &SinkKey, _: &SinkKey, _: bool, _: &[i32]) -> Result<(), SinkError> {
        Err(refused(key))
    }
}

fn refused(key: &SinkKey) -> SinkError {
    SinkError::Refused {
        key: key.full.clone(),
        why: "the fan-out writes to the sinks' backlogs, not to a sink".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_hostile_ones_are_errors() {
        let mut raw = RawEvent::new("/a/b", vec![1u8, 2, 3]);
        for origin in [
            Origin::Kafka {
                partition: 3,
                offset: -1,
            },
            Origin::Message {
                input: "sqs",
                id: "m-1".into(),
            },
            Origin::Log {
                ts_ns: 1_700_000_000_000_000_000,
            },
        ] {
            let record = encode(&raw, &origin);
            let (back, o) = decode(&record).unwrap();
            assert_eq!(
                (back.key.as_str(), &back.payload[..]),
                ("/a/b", &[1u8, 2, 3][..])
            );
            assert_eq!(o.to_string(), origin.to_string());
        }
        raw.defect = Some("no key".into());
        let record = encode(&raw, &Origin::Log { ts_ns: 5 });
        assert_eq!(decode(&record).unwrap().0.defect.as_deref(), Some("no key"));
        // Every cut of a record, and garbage, is an error, never a panic.
        for n in 0..record.len() - 3 {
            let _ = decode(&record[..n]);
        }
        assert!(decode(&record[..10]).is_err());
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 9, 9]).is_err());
        assert!(decode(&[1, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    fn runs(previous: u64, current: u64) -> Runs {
        Runs { previous, current }
    }

    /// Open the backlog in `dir`, waiting for an earlier one there to close (its writer
    /// task holds the database until it notices the backlog was dropped).
    async fn reopen(dir: &Path, limit: u64, runs: Runs) -> Arc<Backlog> {
        loop {
            match Backlog::open("t", dir, limit, runs) {
                Ok(b) => return b,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    async fn put(b: &Backlog, key: &str, ts_ns: i64) {
        let raw = RawEvent::new(key, vec![]);
        b.append(Arc::new(encode(&raw, &Origin::Log { ts_ns })))
            .await
            .unwrap();
    }

    fn seqs(b: &Backlog) -> Vec<u64> {
        b.read_from(0, 10)
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect()
    }

    /// Start a feeder on `b` and count its reads for 300 ms once it first read; the
    /// feeder, its stop and its output.
    async fn idle_reads(
        b: &Arc<Backlog>,
    ) -> (
        u64,
        tokio::task::JoinHandle<()>,
        CancellationToken,
        mpsc::Receiver<LaneItem>,
    ) {
        let (tx, rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let feeder = tokio::spawn(feed(
            b.clone(),
            tx,
            Arc::new(AtomicU64::new(u64::MAX)),
            stop.clone(),
        ));
        while b.reads.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        (b.reads.load(Ordering::Relaxed), feeder, stop, rx)
    }

    #[tokio::test]
    async fn a_backlog_keeps_what_is_unfinished_across_a_reopen_and_drops_itself_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backlog::open("t", dir.path(), 5, runs(0, 1)).unwrap();
        assert!(*b.owed.borrow(), "a new sink owes a reconciliation");
        assert_eq!(b.debt().unwrap(), 1);
        for i in 0..4 {
            put(&b, &format!("/f{i}"), i).await;
        }
        b.done(1);
        // A mark older than what is done already (a reconciliation's) changes nothing.
        b.done(0);
        b.hold(3);
        assert_eq!(b.trim().unwrap(), 2);
        assert_eq!(seqs(&b), vec![2, 3]);
        b.done(3);
        // Held at 3: 3 stays.
        assert_eq!(b.trim().unwrap(), 1);
        drop(b);
        let b = reopen(dir.path(), 5, runs(1, 2)).await;
        assert_eq!(b.read_from(0, 10).unwrap()[0].0, 3);
        assert!(*b.owed.borrow(), "it joined, and has not reconciled yet");
        // A gap while a reconciliation runs: settling the older debt leaves the new one.
        b.owe().unwrap();
        assert!(!b.settle(1).unwrap());
        assert!(*b.owed.borrow());
        assert!(b.settle(2).unwrap());
        assert!(!*b.owed.borrow());
        // Held at 3 (still there); after an overflow drops it, holds before the drop
        // are void and trimming goes on.
        b.hold(3);
        // Past the limit: dropped, a reconciliation owed, numbers go on.
        for i in 0..5 {
            put(&b, &format!("/g{i}"), i).await;
        }
        assert!(*b.owed.borrow());
        let left = seqs(&b);
        assert!(left.iter().all(|s| *s > 3), "{left:?}");
        assert!(left.len() < 5, "{left:?}");
        b.hold(3);
        put(&b, "/h", 9).await;
        let last = *seqs(&b).last().unwrap();
        b.done(last);
        assert_eq!(b.trim().unwrap(), 0, "the void hold keeps nothing");
        let debt = b.debt().unwrap();
        assert!(b.settle(debt).unwrap());
        drop(b);
        // Left out of a run (the set ran without it): it owes a reconciliation; one
        // that took part in the previous run does not.
        let b = reopen(dir.path(), 5, runs(5, 6)).await;
        assert!(*b.owed.borrow(), "it missed run 5");
        let debt = b.debt().unwrap();
        assert!(b.settle(debt).unwrap());
        drop(b);
        let b = reopen(dir.path(), 5, runs(6, 7)).await;
        assert!(!*b.owed.borrow(), "it took part in run 6");
    }

    /// An emptied backlog whose numbers are past 0 (everything finished and removed):
    /// the feeder waits for the next append instead of reading again and again.
    #[tokio::test]
    async fn the_feeder_waits_for_appends() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backlog::open("t", dir.path(), 100, runs(0, 1)).unwrap();
        for i in 0..3 {
            put(&b, &format!("/f{i}"), i).await;
        }
        b.done(2);
        assert_eq!(b.trim().unwrap(), 0);
        let (reads, feeder, stop, mut rx) = idle_reads(&b).await;
        assert!(reads <= 3, "{reads} reads of an empty backlog");
        // The next append is fed, numbered after the removed ones.
        put(&b, "/next", 9).await;
        let (token, event) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((token.seq, event.key.as_str()), (Some(3), "/next"));
        stop.cancel();
        feeder.await.unwrap();
        // Reopened empty, it numbers on from where it was, and its feeder waits too.
        b.done(3);
        assert_eq!(b.trim().unwrap(), 0);
        drop(b);
        let b = reopen(dir.path(), 100, runs(1, 2)).await;
        assert_eq!(*b.appended.borrow(), 4);
        let (reads, feeder, stop, _rx) = idle_reads(&b).await;
        assert!(
            reads <= 3,
            "{reads} reads of an empty backlog after a reopen"
        );
        stop.cancel();
        feeder.await.unwrap();
    }

    #[tokio::test]
    async fn a_damaged_backlog_is_moved_aside_and_owes_a_reconciliation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backlog.redb"), b"not a database at all").unwrap();
        let b = Backlog::open("t", dir.path(), 100, runs(0, 1)).unwrap();
        assert!(*b.owed.borrow());
        assert!(b.read_from(0, 10).unwrap().is_empty());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("damaged"))
            .collect();
        assert_eq!(aside.len(), 1);
        // The run counter: a missing file is none, garbage owes every sink one.
        let sinks = dir.path().join("sinks");
        assert_eq!(Runs::next(&sinks).unwrap(), runs(0, 1));
        assert_eq!(Runs::next(&sinks).unwrap(), runs(1, 2));
        std::fs::write(sinks.join("run"), "banana").unwrap();
        assert!(Runs::next(&sinks).unwrap().previous > 1_000_000);
    }
}

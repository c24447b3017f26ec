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
/// 1 while a reconciliation is owed.
const OWED: &str = "owed";
/// The sequence number the next event gets (numbers never go back, not even after the
/// backlog was emptied).
const NEXT: &str = "next";

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
}

impl Backlog {
    /// Open (or create) the backlog in `dir`. A file that is not a backlog (damaged, or
    /// something else) is moved aside, logged, and the sink owes a reconciliation: what
    /// it held is lost, nothing else is.
    pub(crate) fn open(
        id: &'static str,
        dir: &Path,
        limit: u64,
    ) -> Result<Arc<Backlog>, BacklogError> {
        let path = dir.join("backlog.redb");
        let fail = |detail: String| BacklogError {
            path: path.display().to_string(),
            detail,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("creating its directory: {e}")))?;
        // A sink that joins is made equal to the source once: without it, it would hold
        // only what changes from now on.
        let joins = !path.exists();
        if joins {
            tracing::info!(
                sink = id,
                "a new sink: it is reconciled with the source once, alongside the events that follow"
            );
        }
        let mut damaged = false;
        let db = match redb::Database::create(&path) {
            Ok(db) => db,
            Err(e)
                if match &e {
                    redb::DatabaseError::Storage(redb::StorageError::Corrupted(_))
                    | redb::DatabaseError::UpgradeRequired(_) => true,
                    redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
                        io.kind() == std::io::ErrorKind::InvalidData
                    }
                    _ => false,
                } =>
            {
                let aside = path.with_extension(format!(
                    "redb.damaged-{}",
                    chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
                ));
                tracing::error!(sink = id, file = %path.display(), moved_to = %aside.display(), error = %e,
                    "the sink's backlog cannot be opened; it is moved aside, and the sink is reconciled with the source");
                std::fs::rename(&path, &aside)
                    .map_err(|e| fail(format!("moving a damaged backlog aside: {e}")))?;
                damaged = true;
                redb::Database::create(&path).map_err(|e| fail(e.to_string()))?
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        let (count, next, owed) = Self::prepare(&db, damaged || joins).map_err(fail)?;
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
        });
        crate::metrics::get().set_sink_backlog(id, count);
        tokio::spawn(Self::write_loop(Arc::downgrade(&backlog), rx));
        Ok(backlog)
    }

    /// Create the tables; the number of events held, the next sequence number, whether
    /// a reconciliation is owed (marked so when `owe`).
    fn prepare(db: &redb::Database, owe: bool) -> Result<(u64, u64, bool), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let txn = db.begin_write().map_err(|x| e(&x))?;
        let out = {
            let events = txn.open_table(EVENTS).map_err(|x| e(&x))?;
            let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
            let count = events.len().map_err(|x| e(&x))?;
            let last = events
                .last()
                .map_err(|x| e(&x))?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(0);
            let next = meta
                .get(NEXT)
                .map_err(|x| e(&x))?
                .map(|v| v.value())
                .unwrap_or(0)
                .max(last);
            if owe {
                meta.insert(OWED, 1).map_err(|x| e(&x))?;
            }
            let owed = meta
                .get(OWED)
                .map_err(|x| e(&x))?
                .is_some_and(|v| v.value() == 1);
            (count, next, owed)
        };
        txn.commit().map_err(|x| e(&x))?;
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
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let txn = self.db.begin_write().map_err(|x| e(&x))?;
        let (count, next, overflow) = {
            let mut events = txn.open_table(EVENTS).map_err(|x| e(&x))?;
            let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
            let held = events.len().map_err(|x| e(&x))?;
            let mut next = meta
                .get(NEXT)
                .map_err(|x| e(&x))?
                .map(|v| v.value())
                .unwrap_or(0);
            let overflow = held + records.len() as u64 > self.limit;
            if overflow {
                // Everything it held and these go; the reconciliation brings what it
                // would have brought.
                events.retain(|_, _| false).map_err(|x| e(&x))?;
                meta.insert(OWED, 1).map_err(|x| e(&x))?;
                next += records.len() as u64;
            } else {
                for r in records {
                    events.insert(next, r.as_slice()).map_err(|x| e(&x))?;
                    next += 1;
                }
            }
            meta.insert(NEXT, next).map_err(|x| e(&x))?;
            (events.len().map_err(|x| e(&x))?, next, overflow)
        };
        txn.commit().map_err(|x| e(&x))?;
        self.count.store(count, Ordering::Relaxed);
        crate::metrics::get().set_sink_backlog(self.id, count);
        if overflow {
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
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let txn = self.db.begin_read().map_err(|x| e(&x))?;
        let events = txn.open_table(EVENTS).map_err(|x| e(&x))?;
        let mut out = Vec::new();
        for item in events.range(from..).map_err(|x| e(&x))?.take(max) {
            let (k, v) = item.map_err(|x| e(&x))?;
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
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let txn = self.db.begin_write().map_err(|x| e(&x))?;
        let count = {
            let mut events = txn.open_table(EVENTS).map_err(|x| e(&x))?;
            events.retain_in(..=upto, |_, _| false).map_err(|x| e(&x))?;
            events.len().map_err(|x| e(&x))?
        };
        txn.commit().map_err(|x| e(&x))?;
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trimmed = Some(upto);
        self.count.store(count, Ordering::Relaxed);
        crate::metrics::get().set_sink_backlog(self.id, count);
        Ok(count)
    }

    /// A reconciliation is owed (a gap in the input): recorded before this returns.
    pub(crate) fn owe(&self) -> Result<(), String> {
        self.set_owed(true)
    }

    fn set_owed(&self, owed: bool) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let txn = self.db.begin_write().map_err(|x| e(&x))?;
        {
            let mut meta = txn.open_table(META).map_err(|x| e(&x))?;
            meta.insert(OWED, u64::from(owed)).map_err(|x| e(&x))?;
        }
        txn.commit().map_err(|x| e(&x))?;
        self.owed.send_replace(owed);
        Ok(())
    }

    fn done(&self, seq: u64) {
        self.progress.lock().unwrap_or_else(|p| p.into_inner()).done = Some(seq);
    }

    fn hold(&self, seq: u64) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        p.held = Some(p.held.map_or(seq, |h| h.min(seq)));
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

    /// Put the event in every backlog: `Done` once all hold it. A backlog that cannot
    /// be written (a full or failing local disk) is an outage of this process's own
    /// state: waited out with backoff, logged once; `Abandoned` at shutdown.
    pub(crate) async fn append(
        &self,
        raw: &RawEvent,
        origin: &Origin,
        stop: &CancellationToken,
    ) -> Disposition {
        let record = Arc::new(encode(raw, origin));
        let mut missing: Vec<&Arc<Backlog>> = self.backlogs.iter().collect();
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut failing = false;
        loop {
            let results =
                futures::future::join_all(missing.iter().map(|b| b.append(record.clone()))).await;
            let mut still = Vec::new();
            for (b, r) in missing.into_iter().zip(results) {
                if let Err(e) = r {
                    if !failing {
                        tracing::error!(sink = b.id, file = %b.path.display(), error = %e,
                            "cannot write to the sink's backlog; the input waits for it, retrying");
                    }
                    still.push(b);
                }
            }
            if still.is_empty() {
                if failing {
                    tracing::info!("the sinks' backlogs take events again");
                }
                return Disposition::Done;
            }
            failing = true;
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
    tokio::spawn(trim_loop(backlog.clone(), stop.clone()));
    tokio::spawn(reconcile_loop(
        backlog.clone(),
        into_lane(tx.clone(), fed.clone()),
        setup,
        stop.clone(),
    ));
    let feeder = feed(backlog.clone(), tx, fed, stop.clone());
    let lane = crate::lane::run(
        &mut rx,
        concurrency,
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
    let (end, _) = tokio::select! {
        r = &mut lane => r,
        _ = feeder => lane.await,
    };
    if end == crate::lane::LaneEnd::Stopped {
        tracing::error!(
            sink = backlog.id,
            "this sink goes no further (bad_message = \"stop\"); the others go on"
        );
    }
    // What finished is removed before the process ends.
    let b = backlog.clone();
    let _ = tokio::task::spawn_blocking(move || b.trim()).await;
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
    let mut failing = false;
    loop {
        let b = backlog.clone();
        let read = tokio::task::spawn_blocking(move || b.read_from(next, 256))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let batch = match read {
            Ok(batch) => {
                if failing {
                    tracing::info!(sink = backlog.id, "the sink's backlog reads again");
                    failing = false;
                    retry.reset();
                }
                batch
            }
            Err(e) => {
                if !failing {
                    tracing::error!(sink = backlog.id, error = %e, "reading the sink's backlog failed; retrying");
                    failing = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry.next_wait()) => continue,
                }
            }
        };
        if batch.is_empty() {
            // Wait for an append past what was read.
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
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TRIM_EVERY) => {}
        }
        let b = backlog.clone();
        match tokio::task::spawn_blocking(move || b.trim()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(sink = backlog.id, error = %e, "removing finished events from the sink's backlog failed; tried again")
            }
            Err(_) => {}
        }
    }
}

/// Whenever a reconciliation is owed: run it (again after a failure, with backoff)
/// through the sink's lane, and clear the debt once one finished.
async fn reconcile_loop(
    backlog: Arc<Backlog>,
    submit: crate::ops::reconcile::Submit,
    setup: Arc<crate::setup::Setup>,
    stop: CancellationToken,
) {
    let mut owed = backlog.owed.subscribe();
    let mut retry = crate::retry::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let owe = |owed: bool| {
        let b = backlog.clone();
        async move {
            match tokio::task::spawn_blocking(move || b.set_owed(owed)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot record whether the sink owes a reconciliation")
                }
                Err(_) => {}
            }
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = owed.wait_for(|o| *o) => if r.is_err() { return },
        }
        // Cleared first: a gap that comes during the run owes another.
        owe(false).await;
        tracing::warn!(
            sink = backlog.id,
            "reconciling the sink with the source (it joined, lost its backlog, or the input found a gap)"
        );
        let started = std::time::Instant::now();
        match crate::ops::reconcile::run(&setup, submit.clone(), &stop).await {
            Ok(_) if stop.is_cancelled() => {
                owe(true).await;
                tracing::warn!(
                    sink = backlog.id,
                    "reconciliation interrupted by shutdown; it runs again at the next start"
                );
                return;
            }
            Ok(s) => {
                retry.reset();
                tracing::info!(sink = backlog.id, entries = s.entries, deleted = s.deleted, failed = s.failed,
                    took = ?started.elapsed(), "reconciliation finished");
            }
            Err(e) => {
                owe(true).await;
                if stop.is_cancelled() {
                    return;
                }
                tracing::warn!(sink = backlog.id, error = %e, "reconciliation failed; tried again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(retry.next_wait()) => {}
                }
            }
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

    #[tokio::test]
    async fn a_backlog_keeps_what_is_unfinished_across_a_reopen_and_drops_itself_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backlog::open("t", dir.path(), 5).unwrap();
        assert!(*b.owed.borrow(), "a new sink owes a reconciliation");
        for i in 0..4 {
            let raw = RawEvent::new(format!("/f{i}"), vec![i as u8]);
            b.append(Arc::new(encode(&raw, &Origin::Log { ts_ns: i })))
                .await
                .unwrap();
        }
        b.done(1);
        b.hold(3);
        assert_eq!(b.trim().unwrap(), 2);
        let seqs: Vec<u64> = b
            .read_from(0, 10)
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(seqs, vec![2, 3]);
        b.done(3);
        // Held at 3: 3 stays.
        assert_eq!(b.trim().unwrap(), 1);
        drop(b);
        let b = loop {
            // The writer task holds the database until it notices the channel closed.
            match Backlog::open("t", dir.path(), 5) {
                Ok(b) => break b,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        assert_eq!(b.read_from(0, 10).unwrap()[0].0, 3);
        assert!(*b.owed.borrow(), "it joined, and has not reconciled yet");
        b.set_owed(false).unwrap();
        // Past the limit: dropped, a reconciliation owed, numbers go on.
        for i in 0..5 {
            let raw = RawEvent::new(format!("/g{i}"), vec![]);
            b.append(Arc::new(encode(&raw, &Origin::Log { ts_ns: i })))
                .await
                .unwrap();
        }
        assert!(*b.owed.borrow());
        let left: Vec<u64> = b
            .read_from(0, 10)
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert!(left.iter().all(|s| *s > 3), "{left:?}");
        assert!(left.len() < 5, "{left:?}");
    }

    #[tokio::test]
    async fn a_damaged_backlog_is_moved_aside_and_owes_a_reconciliation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backlog.redb"), b"not a database at all").unwrap();
        let b = Backlog::open("t", dir.path(), 100).unwrap();
        assert!(*b.owed.borrow());
        assert!(b.read_from(0, 10).unwrap().is_empty());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("damaged"))
            .collect();
        assert_eq!(aside.len(), 1);
    }
}

//! One event from queue to sink: decode, plan, apply with retries, and decide what
//! the input should do with it.
//!
//! Retryable failures (a source or sink that is down, a replica that is missing a
//! chunk for now) are retried with backoff for up to `event_deadline`; permanent ones
//! (a payload that does not decode, an unsafe path) are not retried. Either way a
//! failed event then goes to the failure policy: parked in a file (the default) or
//! held, upstream's way. An event is never reported done unless the sink has it.

use crate::config::settings::{BadMessagePolicy, FailurePolicy};
use crate::event::{self, RawEvent};
use crate::filer::{FilerSource, mtime_ns};
use crate::pb::{Entry, EventNotification};
use crate::replicate::converge::Applied;
use crate::replicate::{self, Plan, Rules};
use crate::sink::{Sink, SinkError};
use base64::Engine;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Where an event came from, for logs and the parked file.
#[derive(Debug, Clone)]
pub(crate) enum Origin {
    Kafka {
        partition: i32,
        offset: i64,
    },
    /// A message of a queue (SQS, Pub/Sub, RabbitMQ, NATS), by the queue's id for it.
    Message {
        input: &'static str,
        id: String,
    },
    /// The source filer's metadata log, by the event's time.
    Log {
        ts_ns: i64,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Kafka { partition, offset } => {
                write!(f, "partition {partition} offset {offset}")
            }
            Origin::Message { input, id } => write!(f, "{input} message {id}"),
            Origin::Log { ts_ns } => write!(f, "metadata log ts_ns {ts_ns}"),
        }
    }
}

impl Origin {
    /// The parked record's position fields: Kafka's `partition` and `offset` as before,
    /// else `input` and `id`, or `ts_ns`.
    fn record(&self, record: &mut serde_json::Map<String, serde_json::Value>) {
        match self {
            Origin::Kafka { partition, offset } => {
                record.insert("partition".into(), (*partition).into());
                record.insert("offset".into(), (*offset).into());
            }
            Origin::Message { input, id } => {
                record.insert("input".into(), (*input).into());
                record.insert("id".into(), id.clone().into());
            }
            Origin::Log { ts_ns } => {
                record.insert("ts_ns".into(), (*ts_ns).into());
            }
        }
    }
}

/// What the input should do with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Replicated, skipped by the rules, or parked: commit it.
    Done,
    /// Failed under the hold policy: do not commit it or anything after it.
    Held,
    /// Shutdown interrupted it: neither commit nor record it.
    Abandoned,
    /// A bad message under `bad_message = "stop"`: the input goes no further.
    Stop,
}

/// Counters, logged at shutdown.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub replicated: AtomicU64,
    /// Messages that are not events: no key, too large, not an `EventNotification`.
    pub bad_messages: AtomicU64,
    pub skipped: AtomicU64,
    pub parked: AtomicU64,
    pub held: AtomicU64,
    pub retries: AtomicU64,
}

pub(crate) struct Pipeline {
    rules: Rules,
    /// For supersession checks: is a failing event already stale on the source?
    source: Option<Arc<FilerSource>>,
    sink: Box<dyn Sink>,
    policy: FailurePolicy,
    bad_message: BadMessagePolicy,
    max_message_bytes: usize,
    concurrency: usize,
    parked_file: PathBuf,
    parked_lock: Mutex<()>,
    deadline: Duration,
    stop: CancellationToken,
    pub stats: Stats,
    source_state: Availability,
    sink_state: Availability,
    /// Volumes without locations are waited for as an outage until then (see
    /// [`Pipeline::waiting_for_volumes`]).
    settling_until: Instant,
    /// The source filer itself was unreachable, and no read has worked since.
    source_filer_down: std::sync::atomic::AtomicBool,
    /// With several sinks, the sink's name (see [`Pipeline::for_sink`]).
    sink_label: Option<&'static str>,
    /// With several sinks, the input's pipeline only hands each event on (to every
    /// sink's backlog, see `crate::fanout`).
    outlet: Option<Box<dyn Outlet>>,
    /// The paths of the events being applied now.
    busy: Busy,
    /// The source filer's signature, once asked (see [`Pipeline::made_by_source_filer`]).
    source_signature: tokio::sync::OnceCell<i32>,
}

/// Where a pipeline that applies nothing itself hands its events on.
#[async_trait::async_trait]
pub(crate) trait Outlet: Send + Sync {
    /// `Done` once the event is kept where it goes; `Abandoned` if `stop` came first.
    async fn take(&self, raw: &RawEvent, origin: &Origin, stop: &CancellationToken) -> Disposition;
}

/// The paths of the events being applied now, so that two events on related paths (one
/// path, or one under the other) never apply at once, whoever hands them in: a lane
/// orders its own, but a gap's reconciliation, `backfill` and `verify -repair` replay
/// beside the input's lanes. Each convergence rule looks at the source and then writes;
/// another event on the same path in between (a rename that moved the file away) would
/// let the first write what the source no longer holds.
#[derive(Default)]
struct Busy {
    slots: Mutex<Vec<(u64, Vec<String>)>>,
    next: AtomicU64,
    freed: tokio::sync::Notify,
}

/// An event's claim on its paths, released when dropped.
struct Claim<'a> {
    busy: &'a Busy,
    id: Option<u64>,
}

impl Busy {
    /// Wait until no event on a related path is being applied, and claim `paths`.
    async fn claim(&self, paths: Vec<String>) -> Claim<'_> {
        if paths.is_empty() {
            return Claim {
                busy: self,
                id: None,
            };
        }
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so that a release in between is not missed.
            freed.as_mut().enable();
            {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                if !slots.iter().any(|(_, p)| crate::event::conflict(p, &paths)) {
                    let id = self.next.fetch_add(1, Ordering::Relaxed);
                    slots.push((id, paths));
                    return Claim {
                        busy: self,
                        id: Some(id),
                    };
                }
            }
            freed.await;
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.busy
                .slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(i, _)| *i != id);
            self.busy.freed.notify_waiters();
        }
    }
}

/// How soon a delete the source has not finished yet is applied again, at first and at
/// most (nominal waits, jittered as every retry's). A recursive delete removes its entries once it has published all their events,
/// so this is usually milliseconds away, and seconds for a directory of many thousands.
const UNFINISHED_FIRST: Duration = Duration::from_millis(20);
const UNFINISHED_MAX: Duration = Duration::from_secs(1);
/// How long a delete may stay unfinished on the source before the event fails (at most
/// `event_deadline_seconds`).
const UNFINISHED_LIMIT: Duration = Duration::from_secs(120);

/// How long after start-up volumes without locations count as an outage of the source:
/// a cluster that has just (re)started registers its volume servers with the master a
/// few heartbeats after its filer answers.
const SETTLING: Duration = Duration::from_secs(20);

/// Whether the source or the sink is reachable. An outage is logged when it begins and
/// when it ends, not once per retry of each event waiting on it (with 64 events in
/// flight, that would be hundreds of lines a minute).
///
/// An outage ends when an event that ran into it goes through, not at any success: on a
/// disk out of inodes, renames and deletes still work while every create fails, and
/// ending the outage at each of them logged "available again" and "unavailable" a dozen
/// times within milliseconds. Should the events that ran into it all be gone (their
/// partition moved), any success, or the watcher, ends it once nothing has failed for
/// [`QUIET`]. An event that keeps running into it keeps it on: the sink cannot take
/// everything, and `/readyz` says so.
struct Availability {
    what: &'static str,
    component: crate::metrics::Component,
    /// With several sinks, the sink's name: its own state, and the log says which.
    sink: Option<&'static str>,
    down: std::sync::atomic::AtomicBool,
    outage: Mutex<Outage>,
}

#[derive(Default)]
struct Outage {
    /// When the current outage began; `None` while up.
    since: Option<Instant>,
    /// The latest failure of the current outage.
    last_failure: Option<Instant>,
    /// Counts outages, so that an event knows whether it ran into this one.
    generation: u64,
}

/// How long without a failure before a success of an event that never ran into the
/// outage ends it.
const QUIET: Duration = Duration::from_secs(60);

impl Availability {
    fn new(what: &'static str, component: crate::metrics::Component) -> Self {
        Availability {
            what,
            component,
            sink: None,
            down: false.into(),
            outage: Mutex::new(Outage::default()),
        }
    }

    fn set_up(&self, up: bool) {
        match self.sink {
            Some(sink) if self.component == crate::metrics::Component::Sink => {
                crate::metrics::get().set_sink_up(sink, up)
            }
            _ => crate::metrics::get().set_up(self.component, up),
        }
    }

    /// An event ran into an outage; returns the outage's generation, for [`Self::working`].
    fn failing(&self, error: &SinkError) -> u64 {
        // Set on every failure, not only the first: a success racing with the start of
        // an outage may have set it back to up.
        self.set_up(false);
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        outage.last_failure = Some(now);
        if outage.since.is_none() {
            outage.since = Some(now);
            outage.generation += 1;
            self.down.store(true, Ordering::Release);
            tracing::warn!(error = %error, "{} unavailable; events wait for it, retrying with backoff", self.what);
        } else {
            tracing::debug!(error = %error, "{} still unavailable", self.what);
        }
        outage.generation
    }

    /// Ends an outage nothing has run into for [`QUIET`]: the events that did may be gone
    /// (their partition moved) and nothing else may come to end it.
    fn expire(&self) {
        // A success of an event that ran into nothing ends an outage just when it is quiet.
        if self.down.load(Ordering::Acquire) {
            self.working(None);
        }
    }

    /// An event went through; `hit` is the generation of the outage it ran into, if any.
    fn working(&self, hit: Option<u64>) {
        if !self.down.load(Ordering::Acquire) {
            let metrics = crate::metrics::get();
            if metrics.is_up(self.component) != Some(true) {
                self.set_up(true);
            }
            return;
        }
        let mut outage = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        let Some(since) = outage.since else {
            return;
        };
        let ran_into_it = hit == Some(outage.generation);
        let quiet = outage.last_failure.is_none_or(|t| t.elapsed() >= QUIET);
        if ran_into_it || quiet {
            outage.since = None;
            outage.last_failure = None;
            self.down.store(false, Ordering::Release);
            self.set_up(true);
            tracing::info!(down_for = ?since.elapsed(), "{} available again", self.what);
        }
    }
}

enum Failure {
    /// Not an event at all.
    BadMessage(String),
    Permanent(String),
    GaveUp(String),
}

/// What the pipeline needs besides the sink: the `[replicate]` policies.
pub(crate) struct Policies {
    /// Events in flight per ordered stream.
    pub concurrency: usize,
    pub on_failure: FailurePolicy,
    pub bad_message: BadMessagePolicy,
    pub max_message_bytes: usize,
    pub parked_file: PathBuf,
    pub deadline: Duration,
}

impl Pipeline {
    pub(crate) fn new(
        rules: Rules,
        source: Option<Arc<FilerSource>>,
        sink: Box<dyn Sink>,
        policies: Policies,
        stop: CancellationToken,
    ) -> Self {
        Pipeline {
            rules,
            source,
            sink,
            policy: policies.on_failure,
            bad_message: policies.bad_message,
            max_message_bytes: policies.max_message_bytes,
            concurrency: policies.concurrency,
            parked_file: policies.parked_file,
            parked_lock: Mutex::new(()),
            deadline: policies.deadline,
            stop,
            stats: Stats::default(),
            source_state: Availability::new("source", crate::metrics::Component::Source),
            sink_state: Availability::new("sink", crate::metrics::Component::Sink),
            settling_until: Instant::now() + SETTLING,
            source_filer_down: false.into(),
            sink_label: None,
            outlet: None,
            busy: Busy::default(),
            source_signature: tokio::sync::OnceCell::new(),
        }
    }

    /// The input's pipeline with several sinks: events go to `outlet` (their backlogs),
    /// not to a sink.
    pub(crate) fn handing_on(mut self, outlet: Box<dyn Outlet>) -> Self {
        self.outlet = Some(outlet);
        self
    }

    /// One of several sinks, named `label` (its section under `sink.`): its outcomes and
    /// reachability are counted under that name too, and its outages say which sink.
    pub(crate) fn for_sink(mut self, label: &'static str) -> Self {
        self.sink_label = Some(label);
        self.sink_state.sink = Some(label);
        self.sink_state.what = Box::leak(format!("sink {label}").into_boxed_str());
        self
    }

    /// Whether a volume without locations is an outage of the source rather than the
    /// event's own problem: just after start-up, or while the source is coming back from
    /// its filer being unreachable (the filer answers before the volume servers have
    /// registered again). Otherwise the event retries to its deadline: the volume may be
    /// gone for good, and waiting for it forever would hold its partition.
    fn waiting_for_volumes(&self) -> bool {
        Instant::now() < self.settling_until || self.source_filer_down.load(Ordering::Acquire)
    }

    /// Until `stop`: end outages that nothing has run into for a while (see
    /// [`Availability::expire`]).
    pub(crate) async fn watch_outages(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(QUIET / 6) => {}
            }
            self.sink_state.expire();
            self.source_state.expire();
        }
    }

    /// Log what this pipeline did, at shutdown (with several sinks, naming its sink).
    pub(crate) fn log_stopped(&self) {
        let s = &self.stats;
        tracing::info!(
            sink = self.sink_label,
            replicated = s.replicated.load(Ordering::Relaxed),
            skipped = s.skipped.load(Ordering::Relaxed),
            parked = s.parked.load(Ordering::Relaxed),
            bad_messages = s.bad_messages.load(Ordering::Relaxed),
            held = s.held.load(Ordering::Relaxed),
            retries = s.retries.load(Ordering::Relaxed),
            "stopped"
        );
    }

    /// Events in flight per ordered stream (`[replicate] concurrency`).
    pub(crate) fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Whether the sink holds, byte for byte, the file `raw` creates or rewrites in
    /// place: for the event at a checkpoint, which the filer delivers again on resuming
    /// (its `since` is inclusive) and which another tool (`weed filer.backup`) may have
    /// applied without the attributes our own already-current checks look at. Counted as
    /// skipped when so. Anything else, and any doubt, is a no.
    pub(crate) async fn already_applied(&self, raw: &RawEvent) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        let Ok(ev) = raw.notification() else {
            return false;
        };
        let (key, entry) = match self.rules.plan(&raw.key, ev) {
            Ok(Plan::Create { key, entry }) => (key, entry),
            Ok(Plan::Update {
                key,
                old,
                new_parent,
                new,
                ..
            }) if old.name == new.name
                && key.rel.split_last().map(|(_, dir)| dir) == Some(new_parent.rel.as_slice()) =>
            {
                (key, new)
            }
            _ => return false,
        };
        if entry.is_directory || key.rel.is_empty() {
            return false;
        }
        let rel = key
            .rel
            .iter()
            .map(|c| self.sink.stored_name(c))
            .collect::<Vec<_>>()
            .join("/");
        let (ours, theirs) = tokio::join!(source.digest(&entry), self.sink.digest(&rel));
        let same = matches!((ours, theirs), (Ok(a), Ok(b)) if a == b);
        if same {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::get().event(event::kind(ev), "skipped");
            tracing::info!(key = %raw.key, "the event at the checkpoint is on the sink already, byte for byte (the filer delivers it again); not written again");
        }
        same
    }

    pub(crate) async fn handle(&self, raw: &RawEvent, origin: &Origin) -> Disposition {
        if let Some(outlet) = &self.outlet {
            // Under bad_message = "stop" the input stops at a bad message, as with one
            // sink; under "park" every sink parks it in its own parked file.
            if self.bad_message == BadMessagePolicy::Stop
                && let Some(why) = self.not_an_event(raw)
            {
                return self.failed(raw, origin, Failure::BadMessage(why));
            }
            return outlet.take(raw, origin, &self.stop).await;
        }
        let metrics = crate::metrics::get();
        let _pending = metrics.taken();
        let _claim = self.busy.claim(crate::event::paths_of(raw)).await;
        let mut kind = "invalid";
        // The metadata log is one stream, applied in order where paths are related.
        let in_order = matches!(origin, Origin::Log { .. });
        let failure = match self.try_handle(raw, &mut kind, in_order).await {
            Ok(None) => return Disposition::Abandoned,
            Ok(Some(replicated)) => {
                let (counter, outcome) = if replicated {
                    (&self.stats.replicated, "replicated")
                } else {
                    (&self.stats.skipped, "skipped")
                };
                counter.fetch_add(1, Ordering::Relaxed);
                metrics.event(kind, outcome);
                if let Some(sink) = self.sink_label {
                    metrics.sink_event(sink, outcome);
                }
                // One line per finished event, key last (it may hold anything): with
                // several processes in a consumer group, their logs together say which
                // process applied what, and when.
                tracing::debug!("{outcome} at {origin}: {}", raw.key);
                return Disposition::Done;
            }
            Err(f) => f,
        };
        let disposition = self.failed(raw, origin, failure);
        let outcome = match disposition {
            Disposition::Done => "parked",
            Disposition::Held => "held",
            Disposition::Stop => "bad_message",
            Disposition::Abandoned => return disposition,
        };
        metrics.event(kind, outcome);
        if let Some(sink) = self.sink_label {
            metrics.sink_event(sink, outcome);
        }
        disposition
    }

    /// Apply the failure and bad-message policies to an event that failed.
    fn failed(&self, raw: &RawEvent, origin: &Origin, failure: Failure) -> Disposition {
        let (why, permanent) = match &failure {
            Failure::BadMessage(w) => {
                self.stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                if self.bad_message == BadMessagePolicy::Stop {
                    tracing::error!(key = %raw.key, %origin, error = %w,
                        "bad message; bad_message = \"stop\", so this input goes no further until it is removed or the policy changed");
                    return Disposition::Stop;
                }
                (w.as_str(), true)
            }
            Failure::Permanent(w) => (w.as_str(), true),
            Failure::GaveUp(w) => (w.as_str(), false),
        };
        let bad = matches!(failure, Failure::BadMessage(_));
        if self.policy == FailurePolicy::Park || bad {
            match self.park(raw, origin, why) {
                Ok(()) => {
                    self.stats.parked.fetch_add(1, Ordering::Relaxed);
                    let what = if bad {
                        "bad message; parked it"
                    } else {
                        "event cannot be replicated; parked it"
                    };
                    tracing::error!(key = %raw.key, %origin, permanent, error = why,
                        file = %self.parked_file.display(), "{what}");
                    return Disposition::Done;
                }
                Err(e) => {
                    self.stats.held.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(key = %raw.key, %origin, error = why, park_error = %e,
                        "event cannot be replicated and parking it failed; holding it");
                    return Disposition::Held;
                }
            }
        }
        self.stats.held.fetch_add(1, Ordering::Relaxed);
        tracing::error!(key = %raw.key, %origin, permanent, error = why,
            "event cannot be replicated; holding it (not acknowledged)");
        Disposition::Held
    }

    /// Why a message is not an event at all (no key, too large, not an
    /// `EventNotification`), if it is not.
    fn not_an_event(&self, raw: &RawEvent) -> Option<String> {
        if let Some(defect) = &raw.defect {
            return Some(defect.clone());
        }
        if raw.key.is_empty() {
            return Some("the message has no key".into());
        }
        if raw.payload.len() > self.max_message_bytes {
            return Some(format!(
                "the message has {} bytes, more than max_message_bytes ({})",
                raw.payload.len(),
                self.max_message_bytes
            ));
        }
        match raw.notification() {
            Err(e) => Some(e.to_string()),
            // Protobuf skips unknown fields, so some garbage decodes to an empty message;
            // no filer publishes an event without an entry.
            Ok(ev) if ev.old_entry.is_none() && ev.new_entry.is_none() => {
                Some("payload is not an EventNotification protobuf (no old or new entry)".into())
            }
            Ok(_) => None,
        }
    }

    /// `Ok(Some(true))` replicated, `Ok(Some(false))` skipped, `Ok(None)` abandoned at shutdown.
    async fn try_handle(
        &self,
        raw: &RawEvent,
        kind: &mut &'static str,
        in_order: bool,
    ) -> Result<Option<bool>, Failure> {
        if let Some(why) = self.not_an_event(raw) {
            return Err(Failure::BadMessage(why));
        }
        let ev = raw
            .notification()
            .map_err(|e| Failure::BadMessage(e.to_string()))?;
        let in_order = in_order && self.made_by_source_filer(&ev.signatures).await;
        *kind = event::change(&raw.key, ev);
        tracing::debug!(key = %raw.key, "{}: {}", event::kind(ev), raw.key);
        let plan = self
            .rules
            .plan(&raw.key, ev)
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        if let Plan::Skip(why) = plan {
            tracing::debug!(key = %raw.key, why, "skipped");
            return Ok(Some(false));
        }
        let paths = replicate::converge::Paths::of(&raw.key, ev);
        // The deadline runs only while the event itself fails; an outage of the source or
        // the sink restarts it, so an outage never parks events.
        let mut started = Instant::now();
        // Jittered, so that events (and replicas) failing together do not retry in step.
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        // The outages this event ran into (their generations): only its success ends them.
        let (mut hit_sink, mut hit_source) = (None, None);
        // A delete the source has not finished yet (see `Applied::NotYet`): since when,
        // and the waits before looking again.
        let mut unfinished: Option<(Instant, crate::retry::Backoff)> = None;
        loop {
            let result = self.apply(&plan, &paths, &ev.signatures, in_order).await;
            if let Err(e) = &result
                && !e.is_outage()
                && !matches!(e, SinkError::Fenced { .. })
                && !(e.is_unlocated() && self.waiting_for_volumes())
            {
                // An error of this event's own: the component answered, so an outage
                // this event ran into is over.
                match e {
                    SinkError::Read { .. } => self.source_state.working(hit_source),
                    _ => self.sink_state.working(hit_sink),
                }
            }
            match result {
                Ok(Applied::NotYet) => {
                    if unfinished.is_none() {
                        tracing::debug!(key = %raw.key, "the source has published this delete but not finished it; waiting for it");
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::get().retried();
                    }
                    // The event's own deadline counts from after this wait.
                    started = Instant::now();
                    let (since, waits) = unfinished.get_or_insert_with(|| {
                        (
                            Instant::now(),
                            crate::retry::Backoff::new(UNFINISHED_FIRST, UNFINISHED_MAX),
                        )
                    });
                    let limit = self.deadline.min(UNFINISHED_LIMIT);
                    if since.elapsed() >= limit {
                        // A delete still under way after this long, or one that failed on
                        // the source: either way an operator should know. Skipping it could
                        // keep deleted files on the sink for good.
                        return Err(Failure::GaveUp(format!(
                            "the source published this delete {limit:?} ago and still holds \
                             the very entry it deleted (a delete still under way, or one that \
                             failed on the source)"
                        )));
                    }
                    let pause = waits.next_wait();
                    tokio::select! {
                        _ = self.stop.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Ok(_) => {
                    self.sink_state.working(hit_sink);
                    if plan.reads_source() {
                        self.source_filer_down.store(false, Ordering::Release);
                        self.source_state.working(hit_source);
                    }
                    return Ok(Some(true));
                }
                // Data that is gone may be stale; data that is malformed is parked.
                Err(e @ SinkError::Read { .. })
                    if e.is_retryable() && self.superseded(&raw.key, ev).await =>
                {
                    tracing::info!(key = %raw.key, error = %e, "source data unreadable, but the source has moved on since this event; skipping it");
                    return Ok(Some(false));
                }
                // This consumer-group member may have lost the partition: nothing was
                // written. Wait for the fence; if the partition is gone, the input drops
                // this event meanwhile.
                Err(SinkError::Fenced { .. }) => {
                    started = Instant::now();
                    unfinished = None;
                    tokio::select! {
                        _ = self.stop.cancelled() => return Ok(None),
                        _ = crate::fence::opened() => {}
                    }
                }
                Err(e) if e.is_outage() || (e.is_unlocated() && self.waiting_for_volumes()) => {
                    if e.is_outage() && matches!(e, SinkError::Read { .. }) {
                        self.source_filer_down.store(true, Ordering::Release);
                    }
                    started = Instant::now();
                    unfinished = None;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::get().retried();
                    match e {
                        SinkError::Read { .. } => hit_source = Some(self.source_state.failing(&e)),
                        _ => hit_sink = Some(self.sink_state.failing(&e)),
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(backoff.next_wait()) => {}
                    }
                }
                Err(e) if !e.is_retryable() => return Err(Failure::Permanent(e.to_string())),
                Err(e) if started.elapsed() >= self.deadline => {
                    return Err(Failure::GaveUp(format!(
                        "still failing after {:?}: {e}",
                        self.deadline
                    )));
                }
                Err(e) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::get().retried();
                    let wait = backoff.next_wait();
                    tracing::warn!(key = %raw.key, error = %e, retry_in = ?wait, "replicating failed; will retry");
                    tokio::select! {
                        _ = self.stop.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Apply a plan: converging to what the source holds now, or, for an incremental
    /// sink (which keeps history) or without a source to ask, as the event says.
    async fn apply(
        &self,
        plan: &Plan,
        paths: &replicate::converge::Paths,
        signatures: &[i32],
        in_order: bool,
    ) -> Result<Applied, SinkError> {
        let sink = self.sink.as_ref();
        match &self.source {
            Some(source) if !self.rules.incremental => {
                let applied = replicate::converge::apply(
                    plan,
                    paths,
                    &self.rules,
                    source.as_ref(),
                    sink,
                    signatures,
                    in_order,
                )
                .await?;
                if applied == Applied::Overtaken {
                    tracing::debug!(path = %paths.new, "the source has moved on since this event; a later event brings what it holds now");
                }
                Ok(applied)
            }
            _ => replicate::apply(plan, &self.rules, sink, signatures)
                .await
                .map(|()| Applied::Written),
        }
    }

    /// The event was made by the source filer itself (a filer appends its signature last).
    /// Its log also carries its peers' events (filers sharing a store), merged as they
    /// arrive: a peer's change may come after a later change of the same path on this
    /// filer, so only this filer's own events are in order with each other.
    async fn made_by_source_filer(&self, signatures: &[i32]) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        let asked = self
            .source_signature
            .get_or_try_init(|| async {
                source
                    .client()
                    .get_filer_configuration(crate::pb::GetFilerConfigurationRequest {})
                    .await
                    .map(|r| r.into_inner().signature)
            })
            .await;
        matches!(asked, Ok(sig) if signatures.last() == Some(sig))
    }

    /// The source no longer has this event's version of the entry: it was deleted or
    /// replaced by a newer one since, and a later event carries that change.
    async fn superseded(&self, key: &str, ev: &EventNotification) -> bool {
        match (self.at_source(key, ev).await, &ev.new_entry) {
            (Some(None), _) => true,
            (Some(Some(current)), Some(new)) => mtime_ns(&current) > mtime_ns(new),
            _ => false,
        }
    }

    /// What the source holds now at this event's new path: `Some(None)` if nothing,
    /// `None` if that cannot be told (no source, no new entry, or the lookup failed).
    async fn at_source(&self, key: &str, ev: &EventNotification) -> Option<Option<Entry>> {
        let (Some(source), Some(new)) = (&self.source, &ev.new_entry) else {
            return None;
        };
        let path = if ev.old_entry.is_some() {
            let parent = if ev.new_parent_path.is_empty() {
                key.rsplit_once('/').map_or("", |(d, _)| d).to_string()
            } else {
                ev.new_parent_path.clone()
            };
            format!("{}/{}", parent.trim_end_matches('/'), new.name)
        } else {
            key.to_string()
        };
        source.lookup_entry(&path).await.ok()
    }

    /// Append the event to the parked file (one JSON object per line) and fsync it.
    fn park(&self, raw: &RawEvent, origin: &Origin, error: &str) -> std::io::Result<()> {
        let mut record = serde_json::Map::new();
        record.insert("time".into(), chrono::Utc::now().to_rfc3339().into());
        record.insert("key".into(), raw.key.clone().into());
        origin.record(&mut record);
        record.insert("error".into(), error.into());
        record.insert(
            "payload_b64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(&raw.payload)
                .into(),
        );
        let record = serde_json::Value::Object(record);
        let _guard = self.parked_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = self.parked_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.parked_file)?;
        writeln!(f, "{record}")?;
        f.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events on related paths never apply at once, whoever hands them in; unrelated
    /// ones do.
    #[tokio::test]
    async fn related_paths_are_claimed_one_at_a_time() {
        let busy = Arc::new(Busy::default());
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let dir = busy.claim(p(&["/data/d0"])).await;
        // Unrelated: at once.
        let other = tokio::time::timeout(Duration::from_secs(5), busy.claim(p(&["/data/d1/x"])))
            .await
            .expect("an unrelated path is free");
        // Under the claimed directory (and a rename into it): waits for its release.
        let waiting = {
            let busy = busy.clone();
            let p = p(&["/data/elsewhere", "/data/d0/f3"]);
            tokio::spawn(async move {
                let _c = busy.claim(p).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a related path waits");
        drop(other);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "still held by the directory");
        drop(dir);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released")
            .unwrap();
        assert!(busy.slots.lock().unwrap().is_empty());
        // An event without paths (an undecodable message) claims nothing.
        let none = busy.claim(Vec::new()).await;
        assert!(none.id.is_none());
    }

    #[test]
    fn an_outage_ends_when_an_event_that_ran_into_it_goes_through() {
        let a = Availability::new("sink", crate::metrics::Component::Sink);
        let e = SinkError::remote("create", "/x", "no space left on device", true, true);
        let first = a.failing(&e);
        assert!(a.down.load(Ordering::Acquire));
        // Others go through (renames, deletes): still down.
        a.working(None);
        a.expire();
        assert!(a.down.load(Ordering::Acquire));
        assert_eq!(a.failing(&e), first, "the same outage");
        // One that ran into an earlier outage ends nothing.
        a.working(Some(first - 1));
        assert!(a.down.load(Ordering::Acquire));
        a.working(Some(first));
        assert!(!a.down.load(Ordering::Acquire));
        let second = a.failing(&e);
        assert_eq!(second, first + 1);
        // Nothing has run into it for QUIET: the watcher ends it.
        a.outage.lock().unwrap().last_failure = Instant::now().checked_sub(QUIET);
        a.expire();
        assert!(!a.down.load(Ordering::Acquire));
    }
}

//! `[notification.kafka] group_id`: several `replicate` processes share a topic as one
//! Kafka consumer group.
//!
//! The broker hands out the partitions and moves them as members come and go
//! (cooperative-sticky by default: only the partitions that must move stop). Progress is
//! committed to the broker, only for events that finished together with every earlier
//! event of their partition: every `offsetSaveIntervalSeconds`, when a partition is
//! taken away, and at shutdown.
//!
//! When a partition is taken away, nothing new of it starts, the events in flight get
//! `revoke_grace_seconds` to finish (the rest are abandoned), what finished is committed,
//! and only then is the partition released. Its next owner starts right after the last
//! event finished here, so the events of a path are never applied out of order by two
//! processes at once. A member that dies without leaving loses its partitions after
//! `session_timeout_seconds`; its uncommitted events are delivered again.
//!
//! librdkafka calls the rebalance callback from inside `poll`, so the consumer runs on a
//! thread of its own, where waiting for the partition workers (tokio tasks) is allowed.
//! Each partition's messages come through a queue of its own, read only while its worker
//! has room: a slow or unavailable sink stops fetching for that partition alone, and the
//! thread keeps serving rebalances and commits.

use super::client::{KafkaConfigError, KafkaLogs, client_config};
use super::offsets::OffsetBook;
use super::watermarks::{Watermarks, fetch_watermarks_now, news, wait_for_partitions};
use super::worker::{
    IDLE_AFTER, IDLE_CHECK, LANE_DEPTH, Problems, RESUME_GRACE, event_of, resume_fetching, worker,
};
use crate::config::settings::{GroupSettings, KafkaSettings};
use crate::event::RawEvent;
use crate::metrics::Component;
use crate::pipeline::Pipeline;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList, config::RDKafkaLogLevel};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type Group = BaseConsumer<GroupContext>;

/// How long one wait on the main queue lasts when nothing moved. Messages in the partition
/// queues do not end it, so this is also the most a message (or a worker with room
/// again) waits to be noticed; 100 wakeups a second cost nothing measurable.
const POLL: Duration = Duration::from_millis(10);
/// Messages taken from one partition's queue in a row, before the next partition's turn.
const PARTITION_BATCH: usize = 64;
/// librdkafka looks for new partitions of the topic this often.
const METADATA_REFRESH_MS: &str = "10000";

/// Consume as a member of the group until `stop` fires; in-flight events get until
/// `hard_stop`. What finished is committed before the process leaves the group.
pub(crate) async fn run(
    cfg: &KafkaSettings,
    group: &GroupSettings,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) -> Result<(), KafkaConfigError> {
    let session_ms = group.session_timeout.as_millis();
    let heartbeat_ms = (session_ms / 3).min(3000);
    // A member that stood still longer than its session may have lost its partitions:
    // it writes nothing until the group has settled that (see `crate::fence`).
    crate::fence::arm(
        group.session_timeout,
        Duration::from_millis(heartbeat_ms as u64),
    );
    let mut config = client_config(cfg);
    config
        .set("group.id", &group.id)
        .set("partition.assignment.strategy", group.assignment.name())
        .set("auto.offset.reset", group.auto_offset_reset.as_str())
        .set("session.timeout.ms", session_ms.to_string())
        .set("heartbeat.interval.ms", heartbeat_ms.to_string())
        // librdkafka refuses a session longer than this (default 300 s), and the poll
        // thread may wait in a revoke for up to the grace.
        .set(
            "max.poll.interval.ms",
            session_ms
                .max(300_000)
                .max(group.revoke_grace.as_millis() + 60_000)
                .to_string(),
        )
        .set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS)
        // With a queue per partition this limit applies per partition, not to the whole
        // consumer: 1 MiB each (about a thousand events) keeps a member with many
        // partitions bounded.
        .set("queued.max.messages.kbytes", "1024");
    let shared = Arc::new(Shared {
        topic: cfg.topic.clone(),
        pipeline,
        book: Arc::new(OffsetBook::in_memory(&cfg.topic)),
        runtime: tokio::runtime::Handle::current(),
        stop: stop.clone(),
        hard_stop,
        revoke_grace: group.revoke_grace,
        owned: Mutex::new(BTreeMap::new()),
        committed: Mutex::new(HashMap::new()),
        marks: Arc::new(Watermarks::default()),
        commit_trouble: Mutex::new(None),
        newly_assigned: false.into(),
        consumer: std::sync::OnceLock::new(),
        reset_latest: group.auto_offset_reset == crate::config::settings::OffsetReset::Latest,
        waiting: Mutex::new(Some(Instant::now())),
        stuck_after: (group.session_timeout * 2).max(Duration::from_secs(30)),
    });
    let consumer: Arc<Group> = Arc::new(config.create_with_context(GroupContext {
        logs: KafkaLogs::default(),
        shared: shared.clone(),
    })?);
    let _ = shared.consumer.set(Arc::downgrade(&consumer));

    if !import_offset_file(&consumer, cfg, group, &stop).await {
        return Ok(());
    }
    consumer.subscribe(&[&cfg.topic])?;
    tracing::info!(hosts = ?cfg.hosts, topic = %cfg.topic, group = %group.id,
        strategy = %group.assignment, "joining the consumer group");
    {
        let shared = shared.clone();
        // Partitions whose position is not known yet (no message since they came, no
        // committed offset read) are left out rather than shown with a made-up lag.
        crate::metrics::get().set_lag_source(
            &cfg.topic,
            Box::new(move || {
                let mut lag = shared.marks.lag(&shared.book);
                lag.retain(|(p, _)| shared.book.resume_at(*p).is_some());
                lag
            }),
        );
    }
    let lag = tokio::spawn(watermark_loop(Arc::downgrade(&consumer), shared.clone()));
    let commit_every = cfg.offset_save_interval.max(Duration::from_secs(1));
    // A thread of its own, outside the runtime: the rebalance callback blocks on the
    // partition workers there.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("kafka-group".into())
        .spawn(move || {
            poll_loop(consumer, shared, commit_every);
            let _ = done_tx.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = done_rx.await;
        }
        Err(e) => tracing::error!(error = %e, "starting the consumer thread failed"),
    }
    lag.abort();
    Ok(())
}

/// What one member shares between its consumer thread, the rebalance callback (on the
/// same thread) and the partition workers.
struct Shared {
    topic: String,
    pipeline: Arc<Pipeline>,
    /// What finished, per owned partition (the prefix of its offsets).
    book: Arc<OffsetBook>,
    runtime: tokio::runtime::Handle,
    stop: CancellationToken,
    hard_stop: CancellationToken,
    revoke_grace: Duration,
    owned: Mutex<BTreeMap<i32, Owned>>,
    /// The next offset this member last committed, per partition.
    committed: Mutex<HashMap<i32, i64>>,
    marks: Arc<Watermarks>,
    /// When commits started failing (logged once until one works again).
    commit_trouble: Mutex<Option<Instant>>,
    /// Partitions were assigned since the consumer thread last looked.
    newly_assigned: std::sync::atomic::AtomicBool,
    /// The consumer, to split the queue of each partition assigned.
    consumer: std::sync::OnceLock<Weak<Group>>,
    /// `auto_offset_reset = "latest"`.
    reset_latest: bool,
    /// Since when this member has waited for the group to tell it what it owns (since
    /// joining, or since partitions were taken away), until an assignment arrives.
    waiting: Mutex<Option<Instant>>,
    /// A wait longer than this is reported as a stuck rebalance.
    stuck_after: Duration,
}

/// A partition's own queue of fetched messages.
type Queue = rdkafka::consumer::base_consumer::PartitionQueue<GroupContext>;
/// Where a partition's messages go: its worker.
type Lane = mpsc::Sender<(i64, RawEvent)>;

/// A partition this member consumes now.
struct Owned {
    tx: Lane,
    /// Its messages, taken only while its worker has room: backpressure stops librdkafka
    /// fetching for this partition alone, with nothing dropped or fetched twice.
    queue: Option<Arc<Queue>>,
    /// Messages that reached the consumer's main queue before the partition's own queue
    /// was split off; they go to the worker first.
    pending: VecDeque<(i64, RawEvent)>,
    /// Whether a message of it arrived since it was assigned.
    started: bool,
    worker: tokio::task::JoinHandle<()>,
    /// Cancelled when the partition goes: nothing new of it starts.
    no_new: CancellationToken,
    /// Cancelled when its grace is over: events in flight are abandoned.
    abandon: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// A member that has waited longer than `stuck_after` for the group to assign it
    /// anything (a rebalance that never completes) says so once, and is not ready.
    fn report_stuck(&self) {
        let Some(since) = *lock(&self.waiting) else {
            crate::metrics::get().set_group_wait(Duration::ZERO);
            return;
        };
        let waited = since.elapsed();
        crate::metrics::get().set_group_wait(waited);
        if waited > self.stuck_after {
            let why = format!(
                "no partition assignment from the consumer group for {}s (a rebalance that does not complete)",
                waited.as_secs()
            );
            if crate::metrics::get().set_rebalance_stuck(Some(why)) {
                tracing::warn!(waited = ?waited, "the consumer group has assigned this member nothing for this long: its rebalance does not complete; /readyz says so until it does");
            }
        }
    }

    fn partitions(&self) -> Vec<i32> {
        lock(&self.owned).keys().copied().collect()
    }

    /// Partitions given to this member: a worker each, starting from the group's
    /// committed offset (or `auto_offset_reset`).
    fn assign(&self, partitions: &[i32]) {
        if let Some(since) = lock(&self.waiting).take()
            && since.elapsed() > self.stuck_after
        {
            tracing::info!(waited = ?since.elapsed(), "the group's assignment arrived at last");
            crate::metrics::get().set_rebalance_stuck(None);
        }
        let mut owned = lock(&self.owned);
        for &p in partitions {
            if owned.contains_key(&p) {
                continue;
            }
            self.book.forget(p);
            lock(&self.committed).remove(&p);
            let (tx, rx) = mpsc::channel(LANE_DEPTH);
            let no_new = self.stop.child_token();
            let abandon = self.hard_stop.child_token();
            let worker = self.runtime.spawn(worker(
                p,
                rx,
                self.pipeline.clone(),
                self.book.clone(),
                no_new.clone(),
                abandon.clone(),
            ));
            owned.insert(
                p,
                Owned {
                    tx,
                    queue: None,
                    pending: VecDeque::new(),
                    started: false,
                    worker,
                    no_new,
                    abandon,
                },
            );
        }
        // A cooperative rebalance ends with an assignment of nothing new for most members.
        if !partitions.is_empty() {
            self.newly_assigned
                .store(true, std::sync::atomic::Ordering::Release);
            tracing::info!(topic = %self.topic, assigned = ?partitions, now = ?owned.keys().collect::<Vec<_>>(), "partitions assigned");
        }
    }

    /// Give each newly assigned partition its own queue (after the assignment: an eager
    /// `assign` resets the split queues).
    fn split_queues(&self, partitions: &[i32]) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return;
        };
        let mut owned = lock(&self.owned);
        for p in partitions {
            if let Some(o) = owned.get_mut(p) {
                o.queue = consumer
                    .split_partition_queue(&self.topic, *p)
                    .map(Arc::new);
                if o.queue.is_none() {
                    tracing::warn!(
                        partition = p,
                        "no queue of its own for this partition; its messages come through the main queue"
                    );
                }
            }
        }
    }

    /// Partitions taken away: stop them, let what runs finish (up to the grace, or
    /// `hard_stop` at shutdown), and return the offsets to commit before releasing them.
    /// `lost`: the group already gave them to another member; abandon at once.
    fn revoke(
        &self,
        partitions: &[i32],
        lost: bool,
        grace: Option<Duration>,
    ) -> TopicPartitionList {
        lock(&self.waiting).get_or_insert_with(Instant::now);
        let mut going = Vec::new();
        {
            let mut owned = lock(&self.owned);
            for p in partitions {
                if let Some(o) = owned.remove(p) {
                    o.no_new.cancel();
                    if lost {
                        o.abandon.cancel();
                    }
                    // Dropping the sender (and what was pending) ends the worker's lane
                    // once what runs has finished.
                    going.push((*p, o.worker, o.abandon));
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        if going.is_empty() {
            return tpl;
        }
        let started = Instant::now();
        let abandons: Vec<CancellationToken> = going.iter().map(|g| g.2.clone()).collect();
        let workers: Vec<_> = going.into_iter().map(|g| g.1).collect();
        // The rebalance callback runs on the consumer thread, outside the runtime; if
        // librdkafka calls it from a runtime thread (a consumer dropped there), waiting
        // there is not possible.
        if tokio::runtime::Handle::try_current().is_ok() {
            abandons.iter().for_each(CancellationToken::cancel);
        } else {
            self.runtime.block_on(async {
                let all = futures::future::join_all(workers);
                tokio::pin!(all);
                let waited = match grace {
                    Some(g) => tokio::time::timeout(g, &mut all).await.is_ok(),
                    None => {
                        (&mut all).await;
                        true
                    }
                };
                if !waited {
                    tracing::warn!(partitions = ?partitions, grace = ?grace,
                        "events of revoked partitions still running after the grace; abandoning them");
                    abandons.iter().for_each(CancellationToken::cancel);
                    let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
                }
            });
        }
        for &p in partitions {
            if !lost && let Some(next) = self.book.resume_at(p) {
                let committed = lock(&self.committed).get(&p).copied();
                if committed.is_none_or(|c| c < next) {
                    tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))
                        .expect("fresh partition list");
                }
            }
            self.book.forget(p);
            self.marks.forget(p);
            lock(&self.committed).remove(&p);
        }
        tracing::info!(topic = %self.topic, revoked = ?partitions, lost, took = ?started.elapsed(),
            commit = ?offsets_of(&tpl), "partitions released");
        tpl
    }

    /// A message delivered: note the partition's starting point at its first one.
    fn arrived(&self, o: &mut Owned, partition: i32, offset: i64) {
        if !o.started {
            // The first message after an assignment sits at the group's position:
            // everything before it is done, as far as this member's commits go.
            o.started = true;
            if self.book.resume_at(partition).is_none() {
                self.book.done(partition, offset - 1);
                lock(&self.committed).insert(partition, offset);
            }
        }
    }

    /// Whether a message of this owned partition arrived since it was assigned.
    fn started(&self, partition: i32) -> bool {
        lock(&self.owned).get(&partition).is_some_and(|o| o.started)
    }

    /// A message from the partition's own queue, about to go to its worker.
    fn arrived_on(&self, partition: i32, offset: i64) {
        if let Some(o) = lock(&self.owned).get_mut(&partition) {
            self.arrived(o, partition, offset);
        }
    }

    /// A message from the main queue (fetched before its partition's queue was split
    /// off): it goes to the worker before anything from the partition's own queue.
    fn early(&self, partition: i32, offset: i64, event: RawEvent) {
        let mut owned = lock(&self.owned);
        if let Some(o) = owned.get_mut(&partition) {
            self.arrived(o, partition, offset);
            o.pending.push_back((offset, event));
        }
    }

    /// Move kept messages on to workers with room; returns whether every partition is
    /// free of them (only then are partition queues read).
    fn feed(&self) -> bool {
        let mut owned = lock(&self.owned);
        let mut clear = true;
        for o in owned.values_mut() {
            while let Some(item) = o.pending.pop_front() {
                match o.tx.try_send(item) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(item)) => {
                        o.pending.push_front(item);
                        break;
                    }
                    // The worker stopped (bad_message = "stop"): the partition goes no
                    // further.
                    Err(mpsc::error::TrySendError::Closed(_)) => o.pending.clear(),
                }
            }
            clear &= o.pending.is_empty();
        }
        clear
    }

    /// The owned partitions' queues and workers, to read outside the lock.
    fn queues(&self) -> Vec<(i32, Arc<Queue>, Lane)> {
        lock(&self.owned)
            .iter()
            .filter(|(_, o)| o.pending.is_empty())
            .filter_map(|(&p, o)| Some((p, o.queue.clone()?, o.tx.clone())))
            .collect()
    }

    /// Whether every worker could take a message now (else quiet is not idleness).
    fn room_everywhere(&self) -> bool {
        lock(&self.owned)
            .values()
            .all(|o| o.pending.is_empty() && o.tx.capacity() > 0)
    }

    fn all_owned(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in self.partitions() {
            tpl.add_partition(&self.topic, p);
        }
        tpl
    }

    /// What finished since the last commit, for the partitions owned now.
    fn finished(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let committed = lock(&self.committed);
        for p in self.partitions() {
            if let Some(next) = self.book.resume_at(p)
                && committed.get(&p).is_none_or(|c| *c < next)
            {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))
                    .expect("fresh partition list");
            }
        }
        tpl
    }

    /// Commit `tpl` and remember it; a failure is logged (once until commits work again)
    /// and the same offsets, or later ones, are tried at the next commit.
    fn commit(&self, consumer: &Group, tpl: &TopicPartitionList) {
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(tpl, CommitMode::Sync) {
            Ok(()) => {
                let mut committed = lock(&self.committed);
                for (p, next) in offsets_of(tpl) {
                    committed.insert(p, next);
                }
                if let Some(since) = lock(&self.commit_trouble).take() {
                    tracing::info!(down_for = ?since.elapsed(), "committing offsets works again");
                }
                tracing::debug!(offsets = ?offsets_of(tpl), "offsets committed");
            }
            Err(e) => {
                let mut trouble = lock(&self.commit_trouble);
                if trouble.is_none() {
                    *trouble = Some(Instant::now());
                    tracing::warn!(error = %e, offsets = ?offsets_of(tpl), "committing offsets failed; will retry");
                } else {
                    tracing::debug!(error = %e, "committing offsets still fails");
                }
            }
        }
    }
}

fn offsets_of(tpl: &TopicPartitionList) -> Vec<(i32, i64)> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}

/// librdkafka's logs (as in offset-file mode) and the group's rebalances.
struct GroupContext {
    logs: KafkaLogs,
    shared: Arc<Shared>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.logs.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.logs.error(error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(&self, consumer: &Group, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions = partitions_of(tpl, &self.shared.topic);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.shared.assign(&partitions);
                let assigned = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                self.shared.split_queues(&partitions);
                // librdkafka keeps a partition's pause across its revocation: one paused
                // here while idle and later given back would never fetch again.
                assigned.and_then(|()| consumer.resume(tpl))
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                let done = self
                    .shared
                    .revoke(&partitions, lost, Some(self.shared.revoke_grace));
                self.shared.commit(consumer, &done);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; releasing the partitions");
                let done = self.shared.revoke(&partitions, true, Some(Duration::ZERO));
                drop(done);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the new assignment failed");
        }
    }
}

/// The consumer thread: poll, hand messages on, commit on the interval; at `stop`,
/// finish (until `hard_stop`), commit and leave the group.
fn poll_loop(consumer: Arc<Group>, shared: Arc<Shared>, commit_every: Duration) {
    let mut last_commit = Instant::now();
    let mut input = InputState::default();
    let mut idle = Idle::new();
    let mut moved = false;
    while !shared.stop.is_cancelled() {
        shared.report_stuck();
        // The main queue: rebalances (the callback runs in here), errors, and messages
        // fetched before a partition's own queue was split off. Drained before the
        // partition queues, whose messages are later ones.
        let mut wait = if moved {
            Duration::ZERO
        } else if idle.paused {
            IDLE_CHECK
        } else {
            POLL
        };
        let mut got = false;
        while let Some(polled) = consumer.poll(wait) {
            wait = Duration::ZERO;
            match polled {
                Ok(m) => {
                    got = true;
                    let (partition, offset, event) = input.message(&m, &shared, &mut idle);
                    drop(m);
                    shared.early(partition, offset, event);
                }
                Err(e) => input.problem(&e),
            }
        }
        if shared
            .newly_assigned
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            // New partitions need their first fetch before quiet means idle, and what
            // this member knew of them from an earlier turn is stale.
            idle.delivered.retain(|p, _| shared.started(*p));
            idle.asked.clear();
            idle.woken(&consumer, &shared);
        }
        // Each partition's own queue, while its worker has room.
        moved = false;
        if shared.feed() {
            for (partition, queue, tx) in shared.queues() {
                for _ in 0..PARTITION_BATCH {
                    let Ok(permit) = tx.try_reserve() else {
                        break;
                    };
                    match queue.poll(Duration::ZERO) {
                        None => break,
                        Some(Ok(m)) => {
                            let (p, offset, event) = input.message(&m, &shared, &mut idle);
                            drop(m);
                            debug_assert_eq!(p, partition);
                            shared.arrived_on(partition, offset);
                            permit.send((offset, event));
                            moved = true;
                        }
                        Some(Err(e)) => input.problem(&e),
                    }
                }
            }
        }
        if got || moved {
            idle.woken(&consumer, &shared);
        } else {
            idle.quiet(&consumer, &shared);
        }
        if last_commit.elapsed() >= commit_every {
            shared.commit(&consumer, &shared.finished());
            last_commit = Instant::now();
        }
    }
    // Shutdown: what runs finishes (until hard_stop), what finished is committed, and the
    // group is left at once instead of after the session timeout.
    let done = shared.revoke(&shared.partitions(), false, None);
    shared.commit(&consumer, &done);
    consumer.unsubscribe();
    tracing::info!(committed = ?offsets_of(&done), "left the consumer group");
}

/// Messages and errors as they reach the consumer thread: the input's health for the
/// metrics and the log (a kind of error is logged once until messages flow again).
#[derive(Default)]
struct InputState {
    problems: Problems,
}

impl InputState {
    fn message(
        &mut self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        shared: &Shared,
        idle: &mut Idle,
    ) -> (i32, i64, RawEvent) {
        self.problems.working();
        crate::metrics::get().set_up(Component::Input, true);
        shared.marks.seen(m.partition(), m.offset());
        idle.delivered.insert(m.partition(), m.offset() + 1);
        (m.partition(), m.offset(), event_of(m))
    }

    fn problem(&mut self, e: &rdkafka::error::KafkaError) {
        self.problems.problem(e);
    }
}

/// Fetching pauses while nothing arrives, as in offset-file mode: brokers that answer an
/// empty fetch at once (noida-db) would otherwise keep librdkafka's fetch loop spinning,
/// a core between the member and the broker. While paused, the high watermarks are
/// checked every `IDLE_CHECK`, and fetching resumes when one moves past what was seen.
struct Idle {
    paused: bool,
    /// The last message (or resume).
    since: Instant,
    /// How long without a message counts as idle: longer right after a resume, since
    /// the first fetch after it may take a while (pausing again would purge it).
    after: Duration,
    /// The next offset per partition, as far as this member has been handed messages.
    delivered: HashMap<i32, i64>,
    /// High watermarks when fetching paused: where a partition of a new group starts
    /// under `auto_offset_reset = "latest"` (only growth past them is news).
    at_pause: HashMap<i32, i64>,
    /// Partitions whose committed offset was asked for since they were assigned.
    asked: std::collections::HashSet<i32>,
}

impl Idle {
    fn new() -> Idle {
        Idle {
            paused: false,
            since: Instant::now(),
            after: RESUME_GRACE,
            delivered: HashMap::new(),
            at_pause: HashMap::new(),
            asked: std::collections::HashSet::new(),
        }
    }

    /// A message arrived.
    fn woken(&mut self, consumer: &Group, shared: &Shared) {
        self.since = Instant::now();
        self.after = IDLE_AFTER;
        if self.paused {
            self.resume(consumer, shared);
        }
    }

    /// No message this poll: pause once quiet long enough; while paused, look for news.
    fn quiet(&mut self, consumer: &Group, shared: &Shared) {
        if !self.paused {
            if self.since.elapsed() >= self.after && shared.room_everywhere() {
                let flowing = shared.all_owned();
                if flowing.count() > 0 && consumer.pause(&flowing).is_ok() {
                    tracing::debug!("idle: fetching paused until a high watermark moves");
                    self.paused = true;
                    let fetched = fetch_watermarks_now(
                        consumer,
                        &shared.topic,
                        &shared.partitions(),
                        Duration::from_secs(1),
                    );
                    self.at_pause = fetched
                        .into_iter()
                        .filter_map(|(p, m)| Some((p, m.ok()?.1)))
                        .collect();
                }
            }
            return;
        }
        let owned = shared.partitions();
        self.learn_positions(consumer, shared, &owned);
        let fetched = fetch_watermarks_now(consumer, &shared.topic, &owned, Duration::from_secs(1));
        if shared.marks.record(&fetched, |_| true) {
            crate::metrics::get().set_up(Component::Input, true);
        }
        let news = news(&fetched, |p, low| {
            let known = self
                .delivered
                .get(&p)
                .copied()
                .into_iter()
                .chain(shared.book.resume_at(p))
                .max();
            // Nothing delivered and nothing committed: the partition starts at its
            // oldest offset, or (latest) where its end was at the pause.
            known.or(if shared.reset_latest {
                self.at_pause.get(&p).copied()
            } else {
                Some(low)
            })
        });
        if news {
            tracing::debug!("news in the topic: fetching resumed");
            self.resume(consumer, shared);
        } else {
            // Partitions assigned meanwhile came unpaused.
            let _ = consumer.pause(&shared.all_owned());
        }
    }

    /// Read the committed offsets of partitions with no known position, once per
    /// assignment: a partition that has its backlog still to fetch is news.
    fn learn_positions(&mut self, consumer: &Group, shared: &Shared, owned: &[i32]) {
        self.asked.retain(|p| owned.contains(p));
        let mut tpl = TopicPartitionList::new();
        for &p in owned {
            if !self.delivered.contains_key(&p)
                && shared.book.resume_at(p).is_none()
                && self.asked.insert(p)
            {
                tpl.add_partition(&shared.topic, p);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.committed_offsets(tpl, Duration::from_secs(2)) {
            Ok(committed) => {
                for (p, next) in offsets_of(&committed) {
                    shared.book.done(p, next - 1);
                }
            }
            Err(_) => {
                // Ask again at the next check.
                self.asked.clear();
            }
        }
    }

    fn resume(&mut self, consumer: &Group, shared: &Shared) {
        self.paused = false;
        self.since = Instant::now();
        self.after = RESUME_GRACE;
        resume_fetching(consumer, &shared.all_owned());
    }
}

/// Ask for the owned partitions' watermarks on an interval (the lag metric), learning
/// the committed offsets of partitions with no known position on the way; ends with the
/// consumer.
async fn watermark_loop(consumer: Weak<Group>, shared: Arc<Shared>) {
    let owned = {
        let shared = shared.clone();
        move || shared.partitions()
    };
    super::watermarks::watermark_loop(
        consumer.clone(),
        shared.topic.clone(),
        shared.marks.clone(),
        shared.stop.clone(),
        true,
        owned,
        |asked| learn_committed(consumer.clone(), shared.clone(), asked),
    )
    .await;
}

/// Where idle partitions among `partitions` stand: their committed offsets (a busy one
/// learns it from its first message). Only partitions still owned are recorded.
async fn learn_committed(consumer: Weak<Group>, shared: Arc<Shared>, partitions: Vec<i32>) {
    let unknown: Vec<i32> = partitions
        .into_iter()
        .filter(|p| shared.book.resume_at(*p).is_none())
        .collect();
    if unknown.is_empty() {
        return;
    }
    let Some(c) = consumer.upgrade() else {
        return;
    };
    let mut tpl = TopicPartitionList::new();
    for &p in &unknown {
        tpl.add_partition(&shared.topic, p);
    }
    let asked =
        tokio::task::spawn_blocking(move || c.committed_offsets(tpl, Duration::from_secs(5))).await;
    if let Ok(Ok(tpl)) = asked {
        let owned = shared.partitions();
        for (p, next) in offsets_of(&tpl) {
            if owned.contains(&p) {
                shared.book.done(p, next - 1);
            }
        }
    }
}

/// `import_offset_file`: a group that has committed nothing for the topic starts where
/// the offset file says, once; the file is then renamed `<file>.imported`. Without the
/// option an existing file is only mentioned. False if `stop` fired meanwhile.
async fn import_offset_file(
    consumer: &Arc<Group>,
    cfg: &KafkaSettings,
    group: &GroupSettings,
    stop: &CancellationToken,
) -> bool {
    let file = &cfg.offset_file;
    if !file.exists() {
        return true;
    }
    if !group.import_offset_file {
        tracing::warn!(file = %file.display(), group = %group.id,
            "an offset file exists but consumer-group mode does not use it; set import_offset_file = true to start a new group from it");
        return true;
    }
    let (book, warning) = OffsetBook::load(file, &cfg.topic);
    if let Some(w) = warning {
        tracing::error!("{w}; not imported into group {}", group.id);
        return true;
    }
    let Some(partitions) = wait_for_partitions(consumer, &cfg.topic, stop).await else {
        return false;
    };
    let mut retry = crate::retry::Retry::for_input();
    loop {
        let (c, topic, ps) = (consumer.clone(), cfg.topic.clone(), partitions.clone());
        let committed = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in ps {
                tpl.add_partition(&topic, p);
            }
            c.committed_offsets(tpl, Duration::from_secs(10))
        })
        .await;
        let wait = match committed {
            Ok(Ok(tpl)) => {
                retry.succeeded();
                if !offsets_of(&tpl).is_empty() {
                    tracing::warn!(file = %file.display(), group = %group.id, committed = ?offsets_of(&tpl),
                        "the group has committed offsets already; the offset file is not imported");
                    return true;
                }
                break;
            }
            Ok(Err(e)) => retry.failed("reading the group's committed offsets failed", &e),
            Err(e) => retry.failed("reading the group's committed offsets failed", &e),
        };
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (p, last) in book.snapshot() {
        if partitions.contains(&p) {
            tpl.add_partition_offset(&cfg.topic, p, Offset::Offset(last + 1))
                .expect("fresh partition list");
        }
    }
    let c = consumer.clone();
    let commit_tpl = tpl.clone();
    let result = tokio::task::spawn_blocking(move || c.commit(&commit_tpl, CommitMode::Sync)).await;
    match result {
        Ok(Ok(())) => {
            let imported = file.with_file_name(format!(
                "{}.imported",
                file.file_name()
                    .map_or("last.offset".into(), |n| n.to_string_lossy())
            ));
            match std::fs::rename(file, &imported) {
                Ok(()) => {
                    tracing::info!(group = %group.id, offsets = ?offsets_of(&tpl), file = %imported.display(),
                    "offset file imported into the group")
                }
                Err(e) => tracing::error!(error = %e, file = %file.display(),
                    "offset file imported, but renaming it failed; set import_offset_file = false"),
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, group = %group.id,
            "importing the offset file into the group failed; starting from the group's own position"),
        Err(e) => tracing::error!(error = %e, "importing the offset file failed"),
    }
    true
}

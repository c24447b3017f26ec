//! `[notification.kafka]`: upstream-compatible partition consumer (and, with `group_id`,
//! the consumer-group mode of [`super::kafka_group`]).
//!
//! Partitions are assigned directly (no consumer group), each resumes after the
//! offset recorded in the offset file or at the oldest retained offset, and each is
//! processed in order by its own worker. Progress is stored only for events that
//! finished (replicated, skipped or parked) together with every earlier event of
//! their partition. A broker that is down or restarts is waited for, never fatal.

use super::ack::OffsetBook;
use crate::config::settings::KafkaSettings;
use crate::event::RawEvent;
use crate::pipeline::{Disposition, Origin, Pipeline};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, config::RDKafkaLogLevel};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events buffered per partition ahead of its worker.
pub(super) const LANE_DEPTH: usize = 16;

/// A Kafka setting the client library rejected.
#[derive(Debug, thiserror::Error)]
#[error("Kafka client configuration: {0}")]
pub struct KafkaConfigError(#[from] rdkafka::error::KafkaError);

/// The librdkafka settings for our keys.
pub fn client_config(cfg: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.hosts.join(","))
        .set("group.id", "seaweed-replicate")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", "8192")
        // Fetch only while fewer than this many messages wait locally, checking every
        // 10 ms. At the end of a partition librdkafka refetches at once and relies on the
        // broker to hold the empty answer for fetch.wait.max.ms; brokers that answer at
        // once (noida-db) would make it spin for as long as a backlog waits locally,
        // which cost a third of the machine's CPU during a drain.
        .set("queued.min.messages", "512")
        .set("fetch.queue.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "10000")
        .set("log_level", "4");
    let protocol = match (cfg.sasl.is_some(), cfg.tls.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "sasl_plaintext",
        (false, true) => "ssl",
        (true, true) => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    if let Some(s) = &cfg.sasl {
        c.set("sasl.mechanisms", &s.mechanism)
            .set("sasl.username", &s.username)
            .set("sasl.password", &s.password);
    }
    if let Some(t) = &cfg.tls {
        if !t.ca_cert.is_empty() {
            c.set("ssl.ca.location", &t.ca_cert);
        }
        if !t.client_cert.is_empty() {
            c.set("ssl.certificate.location", &t.client_cert)
                .set("ssl.key.location", &t.client_key);
        }
        if t.insecure_skip_verify {
            c.set("enable.ssl.certificate.verification", "false")
                .set("ssl.endpoint.identification.algorithm", "none");
        }
    }
    c
}

/// One attempt to reach the brokers and the topic (`replicate check`): what was found.
pub async fn probe(cfg: &KafkaSettings) -> Result<String, String> {
    let consumer: rdkafka::consumer::BaseConsumer<ProbeLogs> = client_config(cfg)
        .create_with_context(ProbeLogs::default())
        .map_err(|e| e.to_string())?;
    let topic = cfg.topic.clone();
    let found = tokio::task::spawn_blocking(move || {
        let found = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| (t.error().map(|e| format!("{e:?}")), t.partitions().len()))
            });
        // What librdkafka said on the way, each distinct problem once, under the error.
        found.map_err(|e| {
            // librdkafka queues its log lines; serving the queue delivers them.
            let _ = consumer.poll(Duration::from_millis(200));
            let lines = consumer.context().lines();
            if lines.is_empty() {
                e.to_string()
            } else {
                format!("{e}\n          {}", lines.join("\n          "))
            }
        })
    })
    .await
    .map_err(|e| e.to_string())??;
    match found {
        Some((None, n)) if n > 0 => Ok(format!(
            "kafka {} topic {} ({n} partition{})",
            cfg.hosts.join(","),
            cfg.topic,
            if n == 1 { "" } else { "s" }
        )),
        Some((Some(e), _)) => Err(format!("topic {}: {e}", cfg.topic)),
        _ => Err(format!(
            "brokers {} answered, but topic {} does not exist (yet)",
            cfg.hosts.join(","),
            cfg.topic
        )),
    }
}

/// A warning or worse.
fn loud(level: RDKafkaLogLevel) -> bool {
    matches!(
        level,
        RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning
    )
}

/// librdkafka's log lines during a `check` probe: kept rather than printed, each distinct
/// problem once (librdkafka repeats a failed connect with a new time, "N identical errors
/// suppressed", and again as a global error), to be shown under the probe's result.
#[derive(Default)]
pub struct ProbeLogs {
    lines: std::sync::Mutex<(Vec<String>, std::collections::HashSet<String>)>,
}

impl ProbeLogs {
    fn keep(&self, line: &str) {
        let line = line.split(" (after ").next().unwrap_or(line);
        let line = match line.strip_prefix("[thrd:") {
            Some(rest) => rest.split_once("]: ").map_or(rest, |(_, l)| l),
            None => line,
        };
        let key: String = line.chars().filter(|c| !c.is_ascii_digit()).collect();
        let mut kept = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if kept.1.insert(key) {
            kept.0.push(line.to_string());
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }
}

impl ClientContext for ProbeLogs {
    fn log(&self, level: RDKafkaLogLevel, _fac: &str, message: &str) {
        if loud(level) {
            self.keep(message);
        }
    }

    fn error(&self, _error: rdkafka::error::KafkaError, reason: &str) {
        self.keep(reason);
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeLogs {}

/// The consumer, with librdkafka's logs routed through [`KafkaLogs`].
type Kafka = StreamConsumer<KafkaLogs>;

/// How long a librdkafka log line, once logged at its level, is logged again only at
/// debug level.
const REPEAT_AFTER: Duration = Duration::from_secs(600);

/// librdkafka's own log lines and error callbacks, through `tracing`. Each distinct line
/// (numbers aside) is logged at its level once per [`REPEAT_AFTER`] and at debug level in
/// between: a broker that stays away would otherwise add an error line every few seconds
/// (a failed connect, "all brokers down") for as long as it does. The first one keeps its
/// detail (a refused connection, a failed TLS handshake, bad credentials).
#[derive(Default)]
pub struct KafkaLogs {
    seen: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl KafkaLogs {
    /// Whether this line should be logged at its level now.
    fn first(&self, line: &str) -> bool {
        let key: String = line.chars().filter(|c| !c.is_ascii_digit()).collect();
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < REPEAT_AFTER)
        {
            return false;
        }
        if seen.len() >= 1024 {
            seen.retain(|_, t| now.duration_since(*t) < REPEAT_AFTER);
        }
        seen.insert(key, now);
        true
    }
}

impl ClientContext for KafkaLogs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if loud(level) && !self.first(&format!("{fac} {message}")) {
            tracing::debug!(target: "librdkafka", "{fac} {message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if self.first(&error.to_string()) {
            tracing::error!(target: "librdkafka", "{error}: {reason}");
        } else {
            tracing::debug!(target: "librdkafka", "{error}: {reason}");
        }
    }
}

impl ConsumerContext for KafkaLogs {}

struct Lane {
    tx: mpsc::Sender<(i64, RawEvent)>,
}

/// Consume until `stop` fires; in-flight events get until `hard_stop`. Saves the
/// offset file on the interval and before returning.
pub async fn run(
    cfg: &KafkaSettings,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) -> Result<(), KafkaConfigError> {
    if let Some(group) = &cfg.group {
        return super::kafka_group::run(cfg, group, pipeline, stop, hard_stop).await;
    }
    let consumer: Kafka = client_config(cfg).create_with_context(KafkaLogs::default())?;
    let consumer = Arc::new(consumer);
    let (book, warning) = OffsetBook::load(&cfg.offset_file, &cfg.topic);
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let book = Arc::new(book);

    let Some(partitions) = wait_for_partitions(&consumer, &cfg.topic, &stop).await else {
        return Ok(());
    };
    if check_offsets(&consumer, cfg, &partitions, &book).await == crate::gaps::Then::Stop {
        stop.cancelled().await;
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let offset = book
            .resume_at(p)
            .map(Offset::Offset)
            .unwrap_or(Offset::Beginning);
        tpl.add_partition_offset(&cfg.topic, p, offset)
            .expect("fresh partition list");
        tracing::info!(topic = %cfg.topic, partition = p, start = ?offset, "consuming partition");
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(error = %e, "assigning partitions failed");
    }
    tracing::info!(hosts = ?cfg.hosts, topic = %cfg.topic, "connected to kafka");

    let mut lanes = HashMap::new();
    let mut workers = Vec::new();
    for &p in &partitions {
        let (tx, rx) = mpsc::channel(LANE_DEPTH);
        lanes.insert(p, Lane { tx });
        workers.push(tokio::spawn(worker(
            p,
            rx,
            pipeline.clone(),
            book.clone(),
            stop.clone(),
            hard_stop.clone(),
        )));
    }

    let saver = tokio::spawn(save_loop(
        book.clone(),
        cfg.offset_save_interval,
        stop.clone(),
    ));
    let marks = Arc::new(Watermarks::default());
    {
        let (marks, book) = (marks.clone(), book.clone());
        crate::metrics::get().set_lag_source(&cfg.topic, Box::new(move || marks.lag(&book)));
    }
    let lag = tokio::spawn(watermark_loop(
        consumer.clone(),
        cfg.topic.clone(),
        partitions.clone(),
        marks.clone(),
        stop.clone(),
    ));

    // librdkafka reconnects on its own; the errors it reports are logged once per kind
    // until a message arrives again (then once more, as a recovery), and consumption
    // simply continues.
    let mut problems: HashMap<String, std::time::Instant> = HashMap::new();
    // The next offset to consume per partition, as far as this loop has seen.
    let mut next: HashMap<i32, i64> = partitions
        .iter()
        .filter_map(|&p| book.resume_at(p).map(|o| (p, o)))
        .collect();
    // How long without a message counts as idle: short normally, longer right after a
    // resume, because librdkafka may take more than IDLE_AFTER to deliver the first
    // fetch after a resume, and pausing again before it does would purge it (a livelock
    // that delayed new events by minutes).
    let mut idle_after = IDLE_AFTER;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = consumer.recv() => m,
            // Idle: fetching pauses until a partition's high watermark moves. Brokers that
            // answer an empty fetch at once instead of waiting fetch.wait.max.ms (noida-db
            // here) otherwise keep the client's fetch loop spinning; upstream burns most of
            // a core that way.
            _ = tokio::time::sleep(idle_after) => {
                wait_while_idle(&consumer, &tpl, &cfg.topic, &partitions, &next, &marks, &stop).await;
                idle_after = RESUME_GRACE;
                let answered = crate::metrics::get().is_up(crate::metrics::Component::Input);
                if answered == Some(true) && let Some(since) = problems.values().min() {
                    tracing::info!(down_for = ?since.elapsed(), "kafka working again");
                    problems.clear();
                }
                continue;
            }
        };
        if let Ok(m) = &msg {
            next.insert(m.partition(), m.offset() + 1);
            marks.seen(m.partition(), m.offset());
            idle_after = IDLE_AFTER;
            if let Some(since) = problems.values().min() {
                tracing::info!(down_for = ?since.elapsed(), "kafka working again");
                problems.clear();
                crate::metrics::get().set_up(crate::metrics::Component::Input, true);
            }
        }
        match msg {
            Ok(m) => {
                let Some(lane) = lanes.get(&m.partition()) else {
                    continue;
                };
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let payload = bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default());
                let offset = m.offset();
                drop(m);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = lane.tx.send((offset, RawEvent { key, payload, defect: None })) => if r.is_err() { break },
                }
            }
            Err(e) => {
                let kind = format!("{:?}", e.rdkafka_error_code());
                match problems.entry(kind) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        tracing::debug!(error = %e, "kafka still reports a problem")
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        tracing::warn!(error = %e, "kafka reports a problem; the client keeps reconnecting");
                        v.insert(std::time::Instant::now());
                        crate::metrics::get().set_up(crate::metrics::Component::Input, false);
                    }
                }
            }
        }
    }
    drop(lanes);
    for w in workers {
        let _ = w.await;
    }
    let _ = saver.await;
    // Its watermark requests may wait seconds on a broker that is away; shutdown does not.
    lag.abort();
    match book.save_if_dirty() {
        Ok(_) => {
            tracing::info!(offsets = ?book.snapshot(), file = %cfg.offset_file.display(), "offsets saved")
        }
        Err(e) => {
            tracing::error!(error = %e, file = %cfg.offset_file.display(), "saving offsets failed")
        }
    }
    Ok(())
}

/// Offsets from the offset file that the topic cannot serve are gaps: past the end of a
/// partition (the topic was re-created, or the broker lost its log) or before its oldest
/// message (retention deleted what was never replicated). Each is reported, and the
/// partition starts again from its oldest message; without this, librdkafka would
/// silently reset the fetch position while the idle check and the offset file kept the
/// stale offset, and nothing would ever be replicated again.
async fn check_offsets(
    consumer: &Arc<Kafka>,
    cfg: &KafkaSettings,
    partitions: &[i32],
    book: &OffsetBook,
) -> crate::gaps::Then {
    let mut then = crate::gaps::Then::GoOn;
    for (p, marks) in fetch_watermarks(consumer, &cfg.topic, partitions).await {
        let Some(at) = book.resume_at(p) else {
            continue;
        };
        let (low, high) = match marks {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(partition = p, error = %e, "watermarks unknown; the offset is not checked");
                continue;
            }
        };
        let (reason, detail) = if at > high {
            (
                crate::gaps::Reason::OffsetAheadOfTopic,
                format!(
                    "offset file {} resumes partition {p} of topic {} at {at}, past its end ({high}): the topic was re-created or the broker lost its log; starting from its oldest message",
                    cfg.offset_file.display(),
                    cfg.topic
                ),
            )
        } else if at < low {
            (
                crate::gaps::Reason::OffsetBeforeOldest,
                format!(
                    "offset file {} resumes partition {p} of topic {} at {at}, but its oldest message is {low}: retention deleted {} messages that were never replicated",
                    cfg.offset_file.display(),
                    cfg.topic,
                    low - at
                ),
            )
        } else {
            continue;
        };
        book.forget(p);
        if crate::gaps::report(reason, &detail) == crate::gaps::Then::Stop {
            then = crate::gaps::Then::Stop;
        }
    }
    then
}

/// With no message for this long, the consumer counts as idle.
pub(super) const IDLE_AFTER: Duration = Duration::from_millis(200);
/// After a resume, how long the first message may take before the consumer counts as
/// idle again.
pub(super) const RESUME_GRACE: Duration = Duration::from_secs(5);
/// While idle, the high watermarks are checked this often (at most the added latency of
/// the first event after a quiet spell).
pub(super) const IDLE_CHECK: Duration = Duration::from_millis(500);

/// Pause fetching until some partition has a message past `next` (or its low watermark
/// where nothing was consumed yet), checking the watermarks every `IDLE_CHECK`.
async fn wait_while_idle(
    consumer: &Arc<Kafka>,
    tpl: &TopicPartitionList,
    topic: &str,
    partitions: &[i32],
    next: &HashMap<i32, i64>,
    watermarks: &Watermarks,
    stop: &CancellationToken,
) {
    if consumer.pause(tpl).is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(IDLE_CHECK) => {}
        }
        let marks = fetch_watermarks(consumer, topic, partitions).await;
        for (p, m) in &marks {
            if let Ok((low, high)) = m {
                watermarks.set(*p, *low, *high);
            }
        }
        // The broker answers: the input is up, even on a topic too quiet for a message
        // to say so.
        if marks.iter().any(|(_, m)| m.is_ok()) {
            crate::metrics::get().set_up(crate::metrics::Component::Input, true);
        }
        let news = marks.iter().any(|(p, m)| match m {
            Ok((low, high)) => *high > next.get(p).copied().unwrap_or(*low),
            // Cannot tell (broker away): let the consumer find out.
            Err(_) => true,
        });
        if news {
            break;
        }
    }
    if let Err(e) = consumer.resume(tpl) {
        tracing::warn!(error = %e, "resuming fetches failed");
    }
}

/// The topic's partitions, waiting (with backoff) for the broker and the topic.
pub(super) async fn wait_for_partitions<C, X>(
    consumer: &Arc<C>,
    topic: &str,
    stop: &CancellationToken,
) -> Option<Vec<i32>>
where
    C: Consumer<X> + Send + Sync + 'static,
    X: ConsumerContext + 'static,
{
    let mut retry = crate::retry::Retry::for_input();
    loop {
        let c = consumer.clone();
        let t = topic.to_string();
        let found = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&t), Duration::from_secs(10))
                .map(|md| {
                    md.topics()
                        .iter()
                        .filter(|mt| mt.name() == t && mt.error().is_none())
                        .flat_map(|mt| mt.partitions().iter().map(|p| p.id()))
                        .collect::<Vec<_>>()
                })
        })
        .await;
        let wait = match found {
            Ok(Ok(mut ps)) if !ps.is_empty() => {
                retry.succeeded();
                ps.sort_unstable();
                return Some(ps);
            }
            Ok(Ok(_)) => retry.failed(&format!("topic {topic} has no partitions yet"), &"waiting"),
            Ok(Err(e)) => retry.failed("kafka metadata unavailable", &e),
            Err(e) => retry.failed("kafka metadata task failed", &e),
        };
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

pub(super) async fn worker(
    partition: i32,
    mut rx: mpsc::Receiver<(i64, RawEvent)>,
    pipeline: Arc<Pipeline>,
    book: Arc<OffsetBook>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    let concurrency = pipeline.concurrency();
    let (end, _) = crate::lane::run(
        &mut rx,
        concurrency,
        |offset, event| {
            let (pipeline, book) = (pipeline.clone(), book.clone());
            let (stop, hard_stop) = (stop.clone(), hard_stop.clone());
            async move {
                // Nothing new starts once shutdown began.
                if stop.is_cancelled() {
                    return None;
                }
                let origin = Origin::Kafka { partition, offset };
                let d = super::process(&pipeline, &event, &origin, &hard_stop).await;
                if matches!(d, Some(Disposition::Held | Disposition::Stop)) {
                    book.hold(partition, offset);
                }
                d
            }
        },
        |offset| book.done(partition, *offset),
    )
    .await;
    if end == crate::lane::LaneEnd::Stopped {
        // bad_message = "stop": the partition goes no further; drain without committing.
        while !stop.is_cancelled() && rx.recv().await.is_some() {}
    }
}

/// How often the partitions' watermarks are asked for.
const WATERMARK_INTERVAL: Duration = Duration::from_secs(10);

/// Each partition's low and high watermark as last asked for, the high one raised by
/// every message seen since: with the offset book, the lag at any moment.
#[derive(Default)]
pub(super) struct Watermarks(std::sync::Mutex<HashMap<i32, (i64, i64)>>);

impl Watermarks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (i64, i64)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A partition no longer consumed here.
    pub(super) fn forget(&self, partition: i32) {
        self.lock().remove(&partition);
    }

    pub(super) fn seen(&self, partition: i32, offset: i64) {
        if let Some((_, high)) = self.lock().get_mut(&partition) {
            *high = (*high).max(offset + 1);
        }
    }

    pub(super) fn set(&self, partition: i32, low: i64, high: i64) {
        let mut marks = self.lock();
        let m = marks.entry(partition).or_insert((low, high));
        *m = (low, m.1.max(high));
    }

    /// Messages after the committed offset, per partition.
    pub(super) fn lag(&self, book: &OffsetBook) -> Vec<(i32, i64)> {
        let mut lag: Vec<(i32, i64)> = self
            .lock()
            .iter()
            .map(|(&p, &(low, high))| {
                let next = book.resume_at(p).unwrap_or(low).max(low);
                (p, (high - next).max(0))
            })
            .collect();
        lag.sort_unstable();
        lag
    }
}

/// Each partition's (low, high) watermarks, asked of the broker (off the runtime threads).
pub(super) async fn fetch_watermarks<C, X>(
    consumer: &Arc<C>,
    topic: &str,
    partitions: &[i32],
) -> Vec<(i32, rdkafka::error::KafkaResult<(i64, i64)>)>
where
    C: Consumer<X> + Send + Sync + 'static,
    X: ConsumerContext + 'static,
{
    let (c, t, ps) = (consumer.clone(), topic.to_string(), partitions.to_vec());
    tokio::task::spawn_blocking(move || {
        ps.iter()
            .map(|&p| (p, c.fetch_watermarks(&t, p, Duration::from_secs(5))))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default()
}

/// Ask for each partition's watermarks every `WATERMARK_INTERVAL` until `stop`.
async fn watermark_loop(
    consumer: Arc<Kafka>,
    topic: String,
    partitions: Vec<i32>,
    marks: Arc<Watermarks>,
    stop: CancellationToken,
) {
    loop {
        for (p, m) in fetch_watermarks(&consumer, &topic, &partitions).await {
            if let Ok((low, high)) = m {
                marks.set(p, low, high);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(WATERMARK_INTERVAL) => {}
        }
    }
}

async fn save_loop(book: Arc<OffsetBook>, interval: Duration, stop: CancellationToken) {
    let mut retry = crate::retry::Retry::default();
    let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Said once when saving starts failing and once when it works again.
        match book.save_if_dirty() {
            Ok(_) => retry.succeeded(),
            Err(e) => {
                retry.failed("saving offsets failed", &e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::{KafkaTls, Sasl};

    fn settings() -> KafkaSettings {
        KafkaSettings {
            hosts: vec!["a:9092".into(), "b:9092".into()],
            topic: "t".into(),
            offset_file: "last.offset".into(),
            offset_save_interval: Duration::from_secs(10),
            sasl: None,
            tls: None,
            group: None,
        }
    }

    #[test]
    fn librdkafka_lines_repeat_only_at_debug_level() {
        let logs = KafkaLogs::default();
        assert!(logs.first("FAIL 127.0.0.1:9092/1: Connect failed (after 0ms)"));
        assert!(
            !logs.first("FAIL 127.0.0.1:9092/1: Connect failed (after 12ms)"),
            "the same line with other numbers is a repeat"
        );
        assert!(logs.first("FAIL 127.0.0.1:9092/1: SSL handshake failed"));
    }

    #[test]
    fn plaintext_by_default_and_never_commits_on_its_own() {
        let c = client_config(&settings());
        assert_eq!(c.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
    }

    #[test]
    fn sasl_and_tls_keys_map_onto_the_client() {
        let mut s = settings();
        s.sasl = Some(Sasl {
            mechanism: "SCRAM-SHA-512".into(),
            username: "u".into(),
            password: "p".into(),
        });
        s.tls = Some(KafkaTls {
            ca_cert: "/ca.pem".into(),
            client_cert: "/c.pem".into(),
            client_key: "/k.pem".into(),
            insecure_skip_verify: true,
        });
        let c = client_config(&s);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("u"));
        assert_eq!(c.get("sasl.password"), Some("p"));
        assert_eq!(c.get("ssl.ca.location"), Some("/ca.pem"));
        assert_eq!(c.get("ssl.certificate.location"), Some("/c.pem"));
        assert_eq!(c.get("ssl.key.location"), Some("/k.pem"));
        assert_eq!(c.get("enable.ssl.certificate.verification"), Some("false"));

        s.tls = None;
        assert_eq!(
            client_config(&s).get("security.protocol"),
            Some("sasl_plaintext")
        );
        s.sasl = None;
        s.tls = Some(KafkaTls {
            ca_cert: String::new(),
            client_cert: String::new(),
            client_key: String::new(),
            insecure_skip_verify: false,
        });
        let c = client_config(&s);
        assert_eq!(c.get("security.protocol"), Some("ssl"));
        assert_eq!(c.get("enable.ssl.certificate.verification"), None);
    }
}

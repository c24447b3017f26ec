//! Metrics, health and progress: one process-wide set of Prometheus metrics, an optional
//! HTTP listener that serves them with `/healthz` and `/readyz`, and a periodic one-line
//! progress summary in the log.
//!
//! Upstream has none of this (SeaweedFS issues 757 and 1306). The metrics are global, as
//! a registry usually is, so that any part of the pipeline (a retry loop, a volume-server
//! read) can count without being handed a handle.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Label sets: fixed names and values (no allocation per event), or a topic and partition.
type Static<const N: usize> = [(&'static str, &'static str); N];
type PartitionLabels = [(&'static str, String); 2];

/// The current lag per partition.
pub(crate) type LagSource = Box<dyn Fn() -> Vec<(i32, i64)> + Send + Sync>;

/// The parts of the process whose reachability is tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Component {
    /// The queue (or metadata log) events come from.
    Input,
    /// The source cluster's filer and volume servers (file content).
    Source,
    /// Where changes land.
    Sink,
}

impl Component {
    const ALL: [Component; 3] = [Component::Input, Component::Source, Component::Sink];

    fn name(self) -> &'static str {
        match self {
            Component::Input => "input",
            Component::Source => "source",
            Component::Sink => "sink",
        }
    }

    /// Its slot in [`Metrics::state`].
    fn index(self) -> usize {
        self as usize
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    events: Family<Static<2>, Counter>,
    bytes: Counter,
    retries: Counter,
    parked: Counter,
    in_flight: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    lag: Family<PartitionLabels, Gauge>,
    up: Family<Static<1>, Gauge>,
    gaps: Family<Static<1>, Counter>,
    group_wait: Gauge<f64, AtomicU64>,
    /// With several sinks, per sink (`sink` is its section under `sink.`).
    sink_events: Family<Static<2>, Counter>,
    sink_backlog: Family<Static<1>, Gauge>,
    sink_up: Family<Static<1>, Gauge>,
    sink_dropped: Family<Static<1>, Counter>,
    /// The sinks that are down now; the sink component is up while none is.
    sinks_down: Mutex<std::collections::BTreeSet<&'static str>>,
    /// Why the input went no further, if it did (a gap under `on_gap = "stop"`).
    halted: Mutex<Option<String>>,
    /// A consumer-group member waiting too long for an assignment: why.
    rebalance: Mutex<Option<String>>,
    /// `/readyz` fails while the oldest unfinished event is older than this.
    max_event_age: Mutex<Option<Duration>>,
    /// Events taken from the input and not finished, by a rising id, with when each was
    /// taken: the first is the oldest.
    pending: Mutex<BTreeMap<u64, Instant>>,
    next_id: AtomicU64,
    /// Computes the current per-partition lag of a topic (the Kafka input registers it).
    lag_source: Mutex<Option<(String, LagSource)>>,
    /// Start-up finished (the sink and the filers answered; READY was sent).
    started: AtomicBool,
    /// Per component: 1 up, 0 down, -1 not known yet.
    state: [AtomicI64; 3],
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub(crate) fn get() -> &'static Metrics {
    &METRICS
}

/// File content bytes read from the source so far.
pub(crate) fn get_copied() -> u64 {
    METRICS.bytes.get()
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("replicate");
        let events = Family::<Static<2>, Counter>::default();
        registry.register(
            "events",
            "Events taken from the input, by kind (create, update, delete, rename, invalid) and outcome (replicated, skipped, parked, held, bad_message)",
            events.clone(),
        );
        let bytes = Counter::default();
        registry.register(
            "copied_bytes",
            "Chunk bytes read from the source cluster's volume servers (as stored: compressed or encrypted chunks count as such), plus inline content",
            bytes.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "retries",
            "Attempts to apply an event that failed and were retried",
            retries.clone(),
        );
        let parked = Counter::default();
        registry.register(
            "parked_messages",
            "Events and bad messages written to the parked file",
            parked.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_events",
            "Events being applied to the sink now",
            in_flight.clone(),
        );
        let oldest_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_unreplicated_event_age_seconds",
            "How long the oldest event taken from the input and not yet finished has waited (0 when none is)",
            oldest_age.clone(),
        );
        let lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "kafka_partition_lag",
            "Messages in the partition after the committed offset (newest offset minus committed)",
            lag.clone(),
        );
        let up = Family::<Static<1>, Gauge>::default();
        registry.register(
            "up",
            "Whether the input, the source cluster and the sink are reachable (1) or not (0)",
            up.clone(),
        );
        let gaps = Family::<Static<1>, Counter>::default();
        registry.register(
            "gaps",
            "Times the input found it had missed events, by reason (offset_ahead_of_topic, offset_before_oldest, checkpoint_before_oldest_log, checkpoint_ahead_of_clock, owed, backlog_left)",
            gaps.clone(),
        );
        let group_wait = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "kafka_group_unassigned_seconds",
            "Consumer-group mode: how long this member has waited for the group to assign it its partitions (since it joined or its partitions were taken away; 0 while it has an assignment)",
            group_wait.clone(),
        );
        let sink_events = Family::<Static<2>, Counter>::default();
        registry.register(
            "sink_events",
            "Several sinks: events each sink finished, by sink and outcome (replicated, skipped, parked, held, bad_message)",
            sink_events.clone(),
        );
        let sink_backlog = Family::<Static<1>, Gauge>::default();
        registry.register(
            "sink_backlog_events",
            "Several sinks: events in each sink's backlog (what it finished goes within a quarter of a second; what a held event keeps, until a restart): its lag behind the input",
            sink_backlog.clone(),
        );
        let sink_up = Family::<Static<1>, Gauge>::default();
        registry.register(
            "sink_up",
            "Several sinks: whether each sink is reachable (1) or not (0)",
            sink_up.clone(),
        );
        let sink_dropped = Family::<Static<1>, Counter>::default();
        registry.register(
            "sink_backlogs_dropped",
            "Several sinks: times a sink's backlog outgrew backlog_max_events and was dropped for a reconciliation",
            sink_dropped.clone(),
        );
        Metrics {
            sink_events,
            sink_backlog,
            sink_up,
            sink_dropped,
            sinks_down: Mutex::new(Default::default()),
            gaps,
            group_wait,
            halted: Mutex::new(None),
            rebalance: Mutex::new(None),
            max_event_age: Mutex::new(None),
            registry,
            events,
            bytes,
            retries,
            parked,
            in_flight,
            oldest_age,
            lag,
            up,
            pending: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            lag_source: Mutex::new(None),
            started: AtomicBool::new(false),
            state: [AtomicI64::new(-1), AtomicI64::new(-1), AtomicI64::new(-1)],
        }
    }

    /// The input found it had missed events.
    pub(crate) fn gap(&self, reason: &'static str) {
        self.gaps.get_or_create(&[("reason", reason)]).inc();
    }

    /// The input goes no further, for this reason (shown by `/readyz`).
    pub(crate) fn halt(&self, why: String) {
        *self.halted.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// A consumer-group rebalance that does not complete (`Some` with why), or the end
    /// of one (`None`); whether this is news (none was reported before).
    pub(crate) fn set_rebalance_stuck(&self, why: Option<String>) -> bool {
        let mut r = self.rebalance.lock().unwrap_or_else(|p| p.into_inner());
        let news = r.is_none() && why.is_some();
        *r = why;
        news
    }

    /// How long this consumer-group member has waited for an assignment (0: it has one).
    pub(crate) fn set_group_wait(&self, waited: Duration) {
        self.group_wait.set(waited.as_secs_f64());
    }

    /// `/readyz` fails while the oldest unfinished event has waited longer than `age`.
    pub(crate) fn set_max_event_age(&self, age: Option<Duration>) {
        *self.max_event_age.lock().unwrap_or_else(|p| p.into_inner()) = age;
    }

    /// One event finished with `outcome`.
    pub(crate) fn event(&self, kind: &'static str, outcome: &'static str) {
        self.events
            .get_or_create(&[("kind", kind), ("outcome", outcome)])
            .inc();
        if outcome == "parked" {
            self.parked.inc();
        }
    }

    /// One event finished with `outcome` on sink `sink` (several sinks).
    pub(crate) fn sink_event(&self, sink: &'static str, outcome: &'static str) {
        self.sink_events
            .get_or_create(&[("sink", sink), ("outcome", outcome)])
            .inc();
    }

    /// Events waiting in sink `sink`'s backlog.
    pub(crate) fn set_sink_backlog(&self, sink: &'static str, events: u64) {
        self.sink_backlog
            .get_or_create(&[("sink", sink)])
            .set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    /// Sink `sink`'s backlog was dropped (a reconciliation is owed).
    pub(crate) fn sink_backlog_dropped(&self, sink: &'static str) {
        self.sink_dropped.get_or_create(&[("sink", sink)]).inc();
    }

    /// Whether sink `sink` is reachable; the sink component is up while every sink is.
    pub(crate) fn set_sink_up(&self, sink: &'static str, up: bool) {
        self.sink_up
            .get_or_create(&[("sink", sink)])
            .set(i64::from(up));
        let mut down = self.sinks_down.lock().unwrap_or_else(|p| p.into_inner());
        if up {
            down.remove(sink);
        } else {
            down.insert(sink);
        }
        self.set_up(Component::Sink, down.is_empty());
    }

    pub(crate) fn copied(&self, bytes: u64) {
        self.bytes.inc_by(bytes);
    }

    /// Events being applied now.
    pub(crate) fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    pub(crate) fn retried(&self) {
        self.retries.inc();
    }

    /// An event was taken from the input; it counts as pending until the guard drops.
    pub(crate) fn taken(&'static self) -> Pending {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
        self.in_flight.inc();
        Pending { metrics: self, id }
    }

    /// The wait of the oldest pending event.
    pub(crate) fn oldest_pending(&self) -> Duration {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .values()
            .next()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    pub(crate) fn set_up(&self, component: Component, up: bool) {
        self.state[component.index()].store(i64::from(up), Ordering::Relaxed);
        self.up
            .get_or_create(&[("component", component.name())])
            .set(i64::from(up));
    }

    /// `Some(up)` once the component's state is known.
    pub(crate) fn is_up(&self, component: Component) -> Option<bool> {
        match self.state[component.index()].load(Ordering::Relaxed) {
            -1 => None,
            v => Some(v == 1),
        }
    }

    pub(crate) fn set_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// Kafka lag per partition of `topic`.
    fn set_lag(&self, topic: &str, lag: &[(i32, i64)]) {
        // Only the partitions consumed here now: in a consumer group they come and go.
        self.lag.clear();
        for &(partition, n) in lag {
            self.lag
                .get_or_create(&[
                    ("topic", topic.to_string()),
                    ("partition", partition.to_string()),
                ])
                .set(n);
        }
    }

    /// Where the lag of `topic` comes from: called at each scrape and progress line.
    pub(crate) fn set_lag_source(&self, topic: &str, source: LagSource) {
        *self.lag_source.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((topic.to_string(), source));
    }

    /// The summed Kafka lag, if known, after updating the per-partition gauges from the
    /// registered source.
    pub(crate) fn lag(&self) -> Option<i64> {
        let guard = self.lag_source.lock().unwrap_or_else(|p| p.into_inner());
        let (topic, source) = guard.as_ref()?;
        let lag = source();
        if lag.is_empty() {
            return None;
        }
        self.set_lag(topic, &lag);
        Some(lag.iter().map(|(_, n)| n).sum())
    }

    /// The exposition text.
    pub(crate) fn render(&self) -> String {
        self.oldest_age.set(self.oldest_pending().as_secs_f64());
        self.lag();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Whether the process is ready, and a line per component saying why (not).
    pub(crate) fn readiness(&self) -> (bool, String) {
        let mut text = String::new();
        let started = self.started.load(Ordering::Relaxed);
        text.push_str(if started {
            "started: yes\n"
        } else {
            "started: no (waiting for the sink and the filers)\n"
        });
        let mut ready = started;
        for c in Component::ALL {
            let state = self.is_up(c);
            let word = match state {
                Some(true) => "up",
                Some(false) => "down",
                None => "not known yet",
            };
            text.push_str(&format!("{}: {word}\n", c.name()));
            // Readiness is the input and the sink; a source outage shows in the text and
            // the `replicate_up` metric (events wait for it).
            if c != Component::Source && state == Some(false) {
                ready = false;
            }
            if c == Component::Input && state.is_none() {
                ready = false;
            }
        }
        for note in [&self.rebalance, &self.halted] {
            if let Some(why) = note.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                text.push_str(&format!("input: {why}\n"));
                ready = false;
            }
        }
        let limit = *self.max_event_age.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(limit) = limit {
            let age = self.oldest_pending();
            if age > limit {
                text.push_str(&format!(
                    "oldest event: waiting for {}s, more than {}s (ready_max_event_age_seconds)\n",
                    age.as_secs(),
                    limit.as_secs()
                ));
                ready = false;
            }
        }
        (ready, text)
    }

    fn events_by_outcome(&self, outcome: &'static str) -> u64 {
        ["create", "update", "delete", "rename", "invalid"]
            .iter()
            .filter_map(|kind| {
                self.events
                    .get(&[("kind", *kind), ("outcome", outcome)])
                    .map(|c| c.get())
            })
            .sum()
    }
}

/// An event taken from the input and not finished yet.
pub(crate) struct Pending {
    metrics: &'static Metrics,
    id: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.metrics
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.metrics.in_flight.dec();
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`.
pub(crate) async fn serve(listener: tokio::net::TcpListener, stop: CancellationToken) {
    use axum::http::{StatusCode, header};
    use axum::routing::get as route;
    let app = axum::Router::new()
        .route(
            "/metrics",
            route(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    get().render(),
                )
            }),
        )
        .route("/healthz", route(|| async { "ok\n" }))
        .route(
            "/readyz",
            route(|| async {
                let (ready, text) = get().readiness();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, text)
            }),
        );
    let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
    if let Err(e) = served.await {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

/// Bind the metrics listener: `host:port`, or Go-style `:port` for every interface.
pub(crate) async fn bind(address: &str) -> std::io::Result<tokio::net::TcpListener> {
    let address = if address.starts_with(':') {
        format!("0.0.0.0{address}")
    } else {
        address.to_string()
    };
    tokio::net::TcpListener::bind(address).await
}

/// Log a one-line summary every `interval` while there is something to tell: events
/// handled since the last line, their rate, what is in flight, and the Kafka lag.
pub(crate) async fn progress(interval: Duration, stop: CancellationToken) {
    let m = get();
    let outcomes = ["replicated", "skipped", "parked", "held", "bad_message"];
    let mut last: Vec<u64> = outcomes.iter().map(|o| m.events_by_outcome(o)).collect();
    let mut last_at = Instant::now();
    let mut quiet = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now: Vec<u64> = outcomes.iter().map(|o| m.events_by_outcome(o)).collect();
        let delta: Vec<u64> = now.iter().zip(&last).map(|(a, b)| a - b).collect();
        let total: u64 = delta.iter().sum();
        let elapsed = last_at.elapsed().as_secs_f64().max(0.001);
        last = now;
        last_at = Instant::now();
        let in_flight = m.in_flight.get();
        let lag = m.lag();
        let busy = total > 0 || in_flight > 0 || lag.is_some_and(|l| l > 0);
        if !busy {
            if !quiet {
                tracing::info!("progress: idle, nothing waiting");
                quiet = true;
            }
            continue;
        }
        quiet = false;
        let parts: Vec<String> = outcomes
            .iter()
            .zip(&delta)
            .filter(|(_, n)| **n > 0)
            .map(|(o, n)| format!("{n} {o}"))
            .collect();
        let lag = lag.map_or("n/a".to_string(), |l| l.to_string());
        tracing::info!(
            events = total,
            per_second = format!("{:.1}", total as f64 / elapsed),
            in_flight,
            oldest_s = format!("{:.1}", m.oldest_pending().as_secs_f64()),
            lag = %lag,
            "progress: {total} events in {:.0}s ({:.1}/s{}{}), {in_flight} in flight, lag {lag}",
            elapsed,
            total as f64 / elapsed,
            if parts.is_empty() { "" } else { ": " },
            parts.join(", "),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_and_counts() {
        let m = Metrics::new();
        m.event("create", "replicated");
        m.event("create", "replicated");
        m.event("delete", "parked");
        m.copied(1234);
        m.set_lag_source("t", Box::new(|| vec![(0, 5), (1, 2)]));
        m.set_up(Component::Sink, true);
        let text = m.render();
        for want in [
            r#"replicate_events_total{kind="create",outcome="replicated"} 2"#,
            r#"replicate_events_total{kind="delete",outcome="parked"} 1"#,
            "replicate_copied_bytes_total 1234",
            "replicate_parked_messages_total 1",
            r#"replicate_kafka_partition_lag{topic="t",partition="1"} 2"#,
            r#"replicate_up{component="sink"} 1"#,
            "replicate_oldest_unreplicated_event_age_seconds 0.0",
            "replicate_in_flight_events 0",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(m.lag(), Some(7));
        assert_eq!(m.events_by_outcome("replicated"), 2);
    }

    #[test]
    fn ready_needs_start_a_known_input_and_no_outage() {
        let m = Metrics::new();
        assert!(!m.readiness().0);
        m.set_started();
        assert!(!m.readiness().0, "input state not known yet");
        m.set_up(Component::Input, true);
        assert!(m.readiness().0);
        m.set_up(Component::Source, false);
        let (ready, text) = m.readiness();
        assert!(ready, "a source outage does not make the process unready");
        assert!(text.contains("source: down"), "{text}");
        m.set_up(Component::Sink, false);
        assert!(!m.readiness().0);
    }

    #[test]
    fn oldest_pending_is_the_first_taken() {
        let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let a = m.taken();
        std::thread::sleep(Duration::from_millis(20));
        let b = m.taken();
        assert!(m.oldest_pending() >= Duration::from_millis(20));
        drop(a);
        assert!(m.oldest_pending() < Duration::from_millis(20));
        assert_eq!(m.in_flight.get(), 1);
        drop(b);
        assert_eq!(m.oldest_pending(), Duration::ZERO);
    }
}

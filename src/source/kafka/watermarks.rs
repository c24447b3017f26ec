//! The topic's partitions and their watermarks: waited for at start, asked for on an
//! interval, and kept for the lag.

use super::offsets::OffsetBook;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

/// How often the partitions' watermarks are asked for.
pub(super) const WATERMARK_INTERVAL: Duration = Duration::from_secs(10);

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

    /// Record the answers for the partitions `keep` accepts; whether any answered.
    pub(super) fn record(&self, fetched: &Fetched, keep: impl Fn(i32) -> bool) -> bool {
        let mut answered = false;
        for (p, m) in fetched {
            if let Ok((low, high)) = m {
                answered = true;
                if keep(*p) {
                    self.set(*p, *low, *high);
                }
            }
        }
        answered
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

/// Each partition's (low, high) watermarks as the broker answered, or why it did not.
pub(super) type Fetched = Vec<(i32, KafkaResult<(i64, i64)>)>;

/// Ask the broker for each partition's watermarks, blocking (the group's poll thread).
pub(super) fn fetch_watermarks_now<C, X>(
    consumer: &C,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Fetched
where
    C: Consumer<X>,
    X: ConsumerContext,
{
    partitions
        .iter()
        .map(|&p| (p, consumer.fetch_watermarks(topic, p, timeout)))
        .collect()
}

/// Each partition's (low, high) watermarks, asked of the broker (off the runtime threads).
pub(super) async fn fetch_watermarks<C, X>(
    consumer: &Arc<C>,
    topic: &str,
    partitions: &[i32],
) -> Fetched
where
    C: Consumer<X> + Send + Sync + 'static,
    X: ConsumerContext + 'static,
{
    let (c, t, ps) = (consumer.clone(), topic.to_string(), partitions.to_vec());
    tokio::task::spawn_blocking(move || fetch_watermarks_now(&*c, &t, &ps, Duration::from_secs(5)))
        .await
        .unwrap_or_default()
}

/// Whether a partition holds something not yet consumed: its high watermark is past
/// `at(partition, low)`, the next offset known for it (`None`: nothing known, which is
/// news). A partition the broker could not answer for is news too: the consumer finds
/// out what is wrong.
pub(super) fn news(fetched: &Fetched, at: impl Fn(i32, i64) -> Option<i64>) -> bool {
    fetched.iter().any(|(p, m)| match m {
        Ok((low, high)) => at(*p, *low).is_none_or(|at| *high > at),
        Err(_) => true,
    })
}

/// Ask for the partitions' watermarks every `WATERMARK_INTERVAL` until `stop` or until
/// the consumer is gone (it is only borrowed while asking). `partitions` says which
/// partitions are this consumer's, before asking and again after (a revoked one is not
/// recorded); `between` runs after each answer with the partitions asked about.
/// `report_up`: an answer marks the input up.
pub(super) async fn watermark_loop<C, X, F>(
    consumer: Weak<C>,
    topic: String,
    marks: Arc<Watermarks>,
    stop: CancellationToken,
    report_up: bool,
    partitions: impl Fn() -> Vec<i32>,
    mut between: impl FnMut(Vec<i32>) -> F,
) where
    C: Consumer<X> + Send + Sync + 'static,
    X: ConsumerContext + 'static,
    F: std::future::Future<Output = ()>,
{
    loop {
        let asked = partitions();
        let Some(c) = consumer.upgrade() else {
            return;
        };
        let fetched = fetch_watermarks(&c, &topic, &asked).await;
        // Never the last holder across an await: the consumer's own thread drops it.
        drop(c);
        if report_up && fetched.iter().any(|(_, m)| m.is_ok()) {
            crate::metrics::get().set_up(crate::metrics::Component::Input, true);
        }
        between(asked).await;
        let owned = partitions();
        marks.record(&fetched, |p| owned.contains(&p));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(WATERMARK_INTERVAL) => {}
        }
    }
}

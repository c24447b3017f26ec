//! The topic's partitions and their watermarks: waited for at start, asked for on an
//! interval, and kept for the lag.

use super::offsets::OffsetBook;
use rdkafka::consumer::{Consumer, ConsumerContext};
use std::collections::HashMap;
use std::sync::Arc;
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

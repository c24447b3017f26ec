//! One partition's worker, and what both modes share around it: how many events wait
//! ahead of a worker, when a consumer counts as idle and how fetching resumes, how a
//! record becomes an event, and how the client's errors are logged.

use super::offsets::OffsetBook;
use crate::event::RawEvent;
use crate::pipeline::{Origin, Pipeline};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events buffered per partition ahead of its worker.
pub(super) const LANE_DEPTH: usize = 16;

/// With no message for this long, the consumer counts as idle.
pub(super) const IDLE_AFTER: Duration = Duration::from_millis(200);
/// After a resume, how long the first message may take before the consumer counts as
/// idle again.
pub(super) const RESUME_GRACE: Duration = Duration::from_secs(5);
/// While idle, the high watermarks are checked this often (at most the added latency of
/// the first event after a quiet spell).
pub(super) const IDLE_CHECK: Duration = Duration::from_millis(500);

/// Resume fetching the partitions in `tpl` (after an idle pause).
pub(super) fn resume_fetching<C, X>(consumer: &C, tpl: &rdkafka::TopicPartitionList)
where
    C: rdkafka::consumer::Consumer<X>,
    X: rdkafka::consumer::ConsumerContext,
{
    if let Err(e) = consumer.resume(tpl) {
        tracing::warn!(error = %e, "resuming fetches failed");
    }
}

/// The errors librdkafka reports while it reconnects on its own: each kind is logged
/// once (and marks the input down) until messages flow again, which is logged once more.
#[derive(Default)]
pub(super) struct Problems(std::collections::HashMap<String, std::time::Instant>);

impl Problems {
    pub(super) fn problem(&mut self, e: &rdkafka::error::KafkaError) {
        let kind = format!("{:?}", e.rdkafka_error_code());
        if let std::collections::hash_map::Entry::Vacant(v) = self.0.entry(kind) {
            tracing::warn!(error = %e, "kafka reports a problem; the client keeps reconnecting");
            v.insert(std::time::Instant::now());
            crate::metrics::get().set_up(crate::metrics::Component::Input, false);
        } else {
            tracing::debug!(error = %e, "kafka still reports a problem");
        }
    }

    /// Kafka works (a message arrived, or the broker answered): the recovery is logged
    /// if there was a problem; whether there was.
    pub(super) fn working(&mut self) -> bool {
        let Some(since) = self.0.values().min() else {
            return false;
        };
        tracing::info!(down_for = ?since.elapsed(), "kafka working again");
        self.0.clear();
        true
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
        crate::lane::Holds::Freeze,
        |offset, event| {
            let pipeline = pipeline.clone();
            let (stop, hard_stop) = (stop.clone(), hard_stop.clone());
            async move {
                // Nothing new starts once shutdown began.
                if stop.is_cancelled() {
                    return None;
                }
                let origin = Origin::Kafka { partition, offset };
                crate::source::process(&pipeline, &event, &origin, &hard_stop).await
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

/// A Kafka record as an event: its key (the path) and its value (the `EventNotification`).
pub(super) fn event_of<M: rdkafka::message::Message>(m: &M) -> RawEvent {
    RawEvent::new(
        String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
    )
}

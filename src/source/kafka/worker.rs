//! One partition's worker, and the pacing both modes share: how many events wait
//! ahead of a worker, when a consumer counts as idle, and how a record becomes an event.

use super::offsets::OffsetBook;
use crate::event::RawEvent;
use crate::pipeline::{Disposition, Origin, Pipeline};
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
                let d = crate::source::process(&pipeline, &event, &origin, &hard_stop).await;
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

/// A Kafka record as an event: its key (the path) and its value (the `EventNotification`).
pub(super) fn event_of<M: rdkafka::message::Message>(m: &M) -> RawEvent {
    RawEvent::new(
        String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
        bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
    )
}

//! Inputs. Each delivers events in order per partition (or queue, or log) and learns,
//! per event, whether it reached the sink; only then is progress committed or the
//! message acknowledged.

pub mod ack;
pub mod kafka;
pub mod nats;
pub mod pubsub;
pub mod rabbit;
pub mod sqs;
pub mod subscribe;

use crate::event::RawEvent;
use crate::pipeline::{Disposition, Origin, Pipeline};
use tokio_util::sync::CancellationToken;

/// Run one event through the pipeline; `None` when `hard_stop` (the end of the shutdown
/// grace) interrupts it, so that it is neither acknowledged nor recorded.
pub async fn process(
    pipeline: &Pipeline,
    event: &RawEvent,
    origin: &Origin,
    hard_stop: &CancellationToken,
) -> Option<Disposition> {
    tokio::select! {
        d = pipeline.handle(event, origin) => Some(d),
        _ = hard_stop.cancelled() => {
            tracing::warn!(%origin, key = %event.key, "shutdown grace over; abandoning event (it will be delivered again)");
            None
        }
    }
}

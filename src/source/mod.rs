//! Queue inputs. Each delivers events in order per partition (or queue) and learns,
//! per event, whether it reached the sink; only then is progress committed.

pub mod ack;
pub mod kafka;

//! `[notification.kafka]`, in two modes that share the leaf modules here:
//! - `direct`: upstream's, partitions assigned directly and progress in the offset file;
//! - `group` (with `group_id`): a Kafka consumer group, progress committed to the group.
//!
//! Both build their client in `client`, run one `worker` per partition, learn
//! partitions and lag in `watermarks`, and keep what finished in `offsets`.

mod client;
mod direct;
mod group;
mod offsets;
mod watermarks;
mod worker;

pub use client::{KafkaConfigError, probe};

use crate::config::settings::KafkaSettings;
use crate::pipeline::Pipeline;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Consume until `stop` fires; in-flight events get until `hard_stop`.
pub async fn run(
    cfg: &KafkaSettings,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) -> Result<(), KafkaConfigError> {
    match &cfg.group {
        Some(group) => group::run(cfg, group, pipeline, stop, hard_stop).await,
        None => direct::run(cfg, pipeline, stop, hard_stop).await,
    }
}

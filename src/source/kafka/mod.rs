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

pub(crate) use client::KafkaConfigError;
use client::probe;

use crate::config::settings::KafkaSettings;
use crate::pipeline::Pipeline;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// `[notification.kafka]` as an [`Input`](super::Input).
pub(crate) struct KafkaInput {
    pub cfg: KafkaSettings,
}

#[async_trait::async_trait]
impl super::Input for KafkaInput {
    fn describe(&self) -> String {
        let mode = match &self.cfg.group {
            Some(g) => format!("consumer group {}", g.id),
            None => "offset file".to_string(),
        };
        format!(
            "Kafka topic {} at {} ({mode})",
            self.cfg.topic,
            self.cfg.hosts.join(",")
        )
    }

    async fn probe(&self) -> Result<String, super::InputError> {
        probe(&self.cfg)
            .await
            .map_err(super::InputError::Unreachable)
    }

    async fn run(
        &self,
        pipeline: Arc<Pipeline>,
        stop: CancellationToken,
        hard_stop: CancellationToken,
    ) -> Result<(), super::InputError> {
        run(&self.cfg, pipeline, stop, hard_stop)
            .await
            .map_err(|e| super::InputError::Config {
                key: "notification.kafka",
                detail: e.to_string(),
            })
    }
}

/// Consume until `stop` fires; in-flight events get until `hard_stop`.
async fn run(
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

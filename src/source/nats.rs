//! gocdk `nats://<subject>`: messages published on a NATS subject (server from
//! `NATS_SERVER_URL`) by gocdk's NATS publisher: a gob stream of the metadata (`key`, the
//! path) and the `EventNotification`, or with `natsv2` the event as the data and the key
//! in an escaped header (see `gocdk`).
//!
//! Upstream subscribes with core NATS, which has no acknowledgements: an event that fails
//! is lost. Here, when the server has JetStream, a stream capturing the subject is used
//! (created when there is none) with a durable consumer (`durable`, `replicate` by
//! default): an event is acknowledged only once the sink has it, a held one is redelivered
//! after a pause, and a restart resumes where the consumer left off. Without JetStream
//! it falls back to a core subscription and says what that costs.

use super::process;
use crate::config::settings::NatsSettings;
use crate::pipeline::{Disposition, Origin, Pipeline};
use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ACK_WAIT: Duration = Duration::from_secs(60);
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// This input as an [`Input`](super::Input).
pub(crate) struct NatsInput {
    pub cfg: NatsSettings,
}

#[async_trait::async_trait]
impl super::Input for NatsInput {
    fn describe(&self) -> String {
        format!("NATS subject {}", self.cfg.subject)
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
        run(&self.cfg, pipeline, stop, hard_stop).await;
        Ok(())
    }
}

/// Consume until `stop` fires; in-flight work gets until `hard_stop`.
async fn run(
    cfg: &NatsSettings,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    super::reconnecting(&format!("NATS (subject {})", cfg.subject), &stop, || {
        session(cfg, &pipeline, &stop, &hard_stop)
    })
    .await;
}

/// What clients say when a server runs without JetStream.
fn no_jetstream(error: &str) -> bool {
    let e = error.to_lowercase();
    ["no responders", "not enabled", "jetstream unavailable"]
        .iter()
        .any(|s| e.contains(s))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One attempt to connect (`replicate check`): what was found.
async fn probe(cfg: &NatsSettings) -> Result<String, String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .connect(&cfg.server_url)
        .await
        .map_err(|e| e.to_string())?;
    let _ = client.drain().await;
    Ok(format!("NATS {} (subject {})", cfg.server_url, cfg.subject))
}

async fn session(
    cfg: &NatsSettings,
    pipeline: &Pipeline,
    stop: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<(), BoxError> {
    let client = async_nats::connect(&cfg.server_url).await?;
    let js = jetstream::new(client.clone());
    let stream_name = match js.stream_by_subject(cfg.subject.clone()).await {
        Ok(name) => name,
        Err(_) => {
            let name = format!(
                "replicate-{}",
                cfg.subject
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    })
                    .collect::<String>()
            );
            let created = js
                .create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![cfg.subject.clone()],
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => {
                    tracing::info!(stream = %name, subject = %cfg.subject, "created a JetStream stream for the subject");
                    name
                }
                // A server without JetStream has nobody answering its API.
                Err(e) if no_jetstream(&e.to_string()) => {
                    tracing::warn!(error = %e, subject = %cfg.subject,
                        "this NATS server has no JetStream: using a core subscription, like upstream, so an event that fails or arrives while replicate is down is lost");
                    return core(&client, cfg, pipeline, stop, hard_stop).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let stream = js.get_stream(&stream_name).await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &cfg.durable,
            consumer::pull::Config {
                durable_name: Some(cfg.durable.clone()),
                filter_subject: cfg.subject.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: 64,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    tracing::info!(stream = %stream_name, durable = %cfg.durable, subject = %cfg.subject, "consuming NATS JetStream");
    crate::metrics::get().set_up(crate::metrics::Component::Input, true);
    let failure: std::sync::Mutex<Option<BoxError>> = std::sync::Mutex::new(None);
    super::run_queue(pipeline, &NatsAcks, stop, hard_stop, |tx| {
        let (failure, messages) = (&failure, &mut messages);
        async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = messages.next() => m,
                };
                let m = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.into());
                        return;
                    }
                    None => {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some("the consumer's message stream ended".into());
                        return;
                    }
                };
                let event = super::gocdk::nats_event(m.headers.as_ref(), &m.payload, cfg.natsv2);
                if tx.send((m, event)).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct NatsAcks;

#[async_trait::async_trait]
impl super::Acks<jetstream::Message> for NatsAcks {
    fn origin(&self, m: &jetstream::Message) -> Origin {
        Origin::Message {
            input: "nats",
            id: m
                .info()
                .map(|i| format!("{}:{}", i.stream, i.stream_sequence))
                .unwrap_or_default(),
        }
    }

    async fn keep(&self, m: &jetstream::Message) {
        loop {
            tokio::time::sleep(ACK_WAIT / 2).await;
            let _ = m.ack_with(AckKind::Progress).await;
        }
    }

    async fn settle(&self, m: jetstream::Message, disposition: Option<Disposition>) {
        let reply = match disposition {
            Some(Disposition::Done) => AckKind::Ack,
            Some(Disposition::Held) => AckKind::Nak(Some(RETRY_AFTER)),
            Some(Disposition::Stop | Disposition::Abandoned) | None => AckKind::Nak(None),
        };
        if let Err(e) = m.ack_with(reply).await {
            tracing::warn!(origin = %self.origin(&m), error = %e, "acknowledging a message failed; it will be delivered again");
        }
    }

    async fn release(&self, messages: Vec<jetstream::Message>) {
        for m in messages {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
    }
}

/// Core NATS: no acknowledgements, as upstream.
async fn core(
    client: &async_nats::Client,
    cfg: &NatsSettings,
    pipeline: &Pipeline,
    stop: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<(), BoxError> {
    let mut sub = client.subscribe(cfg.subject.clone()).await?;
    crate::metrics::get().set_up(crate::metrics::Component::Input, true);
    let mut n = 0u64;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = sub.next() => m,
        };
        let Some(m) = next else {
            return Err("the subscription ended".into());
        };
        n += 1;
        let origin = Origin::Message {
            input: "nats",
            id: format!("core #{n}"),
        };
        let event = super::gocdk::nats_event(m.headers.as_ref(), &m.payload, cfg.natsv2);
        match process(pipeline, &event, &origin, hard_stop).await {
            Some(Disposition::Stop) => {
                stop.cancelled().await;
                return Ok(());
            }
            None | Some(Disposition::Abandoned) => return Ok(()),
            Some(_) => {}
        }
    }
}

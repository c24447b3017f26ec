//! gocdk `rabbit://<queue>`: messages from a RabbitMQ queue (server from
//! `RABBIT_SERVER_URL`), acknowledged only once the sink has the change.
//!
//! As gocdk's publisher sends them, the body is the `EventNotification` and the AMQP header
//! `key` its path. When the queue is missing, upstream's topology is declared, with the
//! same names and TTL: fanout exchanges `<exchange>` and `DLX.<exchange>`, the durable queue
//! `<queue>` (dead-lettering to `DLX.<exchange>`) bound to `<exchange>`, and `DLX.<queue>`
//! (dead-lettering back to `<exchange>` after 10 minutes) bound to `DLX.<exchange>`.
//! A held message is requeued after a pause (upstream requeues at once, then parks it in
//! the dead-letter queue for 10 minutes); a closed connection is redialled.

use crate::config::settings::RabbitSettings;
use crate::event::RawEvent;
use crate::pipeline::{Disposition, Origin, Pipeline};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const PREFETCH: u16 = 16;
const RETRY_AFTER: Duration = Duration::from_secs(10);
const DLX_TTL_MS: i64 = 600_000;

/// This input as an [`Input`](super::Input).
pub(crate) struct RabbitInput {
    pub cfg: RabbitSettings,
}

#[async_trait::async_trait]
impl super::Input for RabbitInput {
    fn describe(&self) -> String {
        format!("RabbitMQ queue {}", self.cfg.queue)
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
    cfg: &RabbitSettings,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    super::reconnecting(&format!("RabbitMQ (queue {})", cfg.queue), &stop, || {
        session(cfg, &pipeline, &stop, &hard_stop)
    })
    .await;
}

/// One attempt to connect (`replicate check`): what was found.
async fn probe(cfg: &RabbitSettings) -> Result<String, String> {
    let conn = Connection::connect(&cfg.server_url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.close(200, "check done").await;
    Ok(format!("RabbitMQ (queue {})", cfg.queue))
}

/// One connection: consume until `stop` (`Ok`) or a connection error (`Err`).
async fn session(
    cfg: &RabbitSettings,
    pipeline: &Pipeline,
    stop: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    let conn = Connection::connect(&cfg.server_url, ConnectionProperties::default()).await?;
    ensure_queue(&conn, cfg).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            &cfg.queue,
            "replicate",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %cfg.queue, "consuming RabbitMQ queue");
    crate::metrics::get().set_up(crate::metrics::Component::Input, true);
    let failure = std::sync::Mutex::new(None);
    super::run_queue(pipeline, &RabbitAcks, stop, hard_stop, |tx| {
        let (failure, consumer) = (&failure, &mut consumer);
        async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    d = consumer.next() => d,
                };
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return;
                    }
                    None => {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(
                            lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                                lapin::ConnectionState::Closed,
                            )),
                        );
                        return;
                    }
                };
                let key = delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("key").cloned())
                    .and_then(|v| match v {
                        AMQPValue::LongString(s) => {
                            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                        }
                        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let message = RabbitMessage {
                    id: delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|m| m.as_str().to_string())
                        .unwrap_or_else(|| format!("delivery {}", delivery.delivery_tag)),
                    acker: delivery.acker.clone(),
                };
                let event = RawEvent::new(key, delivery.data);
                if tx.send((message, event)).await.is_err() {
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

/// One delivery, as the lane holds it.
#[derive(Clone)]
struct RabbitMessage {
    acker: lapin::acker::Acker,
    id: String,
}

struct RabbitAcks;

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl super::Acks<RabbitMessage> for RabbitAcks {
    fn origin(&self, m: &RabbitMessage) -> Origin {
        Origin::Message {
            input: "rabbitmq",
            id: m.id.clone(),
        }
    }

    /// AMQP deliveries have no lease to extend.
    async fn keep(&self, _m: &RabbitMessage) {
        std::future::pending::<()>().await
    }

    async fn settle(&self, m: RabbitMessage, disposition: Option<Disposition>) {
        match disposition {
            Some(Disposition::Done) => {
                if let Err(e) = m.acker.ack(BasicAckOptions::default()).await {
                    tracing::warn!(origin = %self.origin(&m), error = %e, "acknowledging a done message failed; it will be replayed");
                }
            }
            // Requeued after a pause, without holding up the messages behind it.
            Some(Disposition::Held) => {
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY_AFTER).await;
                    let _ = m.acker.nack(requeue()).await;
                });
            }
            Some(Disposition::Stop | Disposition::Abandoned) | None => {
                let _ = m.acker.nack(requeue()).await;
            }
        }
    }

    async fn release(&self, messages: Vec<RabbitMessage>) {
        for m in messages {
            let _ = m.acker.nack(requeue()).await;
        }
    }
}

/// Declare upstream's topology if the queue does not exist.
async fn ensure_queue(conn: &Connection, cfg: &RabbitSettings) -> Result<(), lapin::Error> {
    // A passive declare of a missing queue closes its channel: use a throwaway one.
    let probe = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    if probe
        .queue_declare(&cfg.queue, passive, FieldTable::default())
        .await
        .is_ok()
    {
        let _ = probe.close(200, "ok").await;
        return Ok(());
    }
    if cfg.exchange.is_empty() {
        tracing::error!(queue = %cfg.queue, "the queue does not exist and topic_url names no rabbit:// exchange to declare it on; waiting for it");
        return Err(lapin::Error::from(
            lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
        ));
    }
    let ch = conn.create_channel().await?;
    declare(&ch, &cfg.exchange, &cfg.queue).await?;
    tracing::info!(queue = %cfg.queue, exchange = %cfg.exchange, "declared the queue and its dead-letter topology (as upstream)");
    Ok(())
}

async fn declare(ch: &Channel, exchange: &str, queue: &str) -> Result<(), lapin::Error> {
    let durable_ex = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let durable_q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dlx = format!("DLX.{exchange}");
    let dlq = format!("DLX.{queue}");
    ch.exchange_declare(
        exchange,
        ExchangeKind::Fanout,
        durable_ex,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        &dlx,
        ExchangeKind::Fanout,
        durable_ex,
        FieldTable::default(),
    )
    .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    ch.queue_declare(queue, durable_q, args).await?;
    ch.queue_bind(
        queue,
        exchange,
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(exchange.into()),
    );
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(DLX_TTL_MS));
    ch.queue_declare(&dlq, durable_q, args).await?;
    ch.queue_bind(
        &dlq,
        &dlx,
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

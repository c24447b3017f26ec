//! `[notification.aws_sqs]` (and gocdk's `awssqs://`): messages from an SQS queue, deleted
//! only once the sink has the change.
//!
//! A message's body is the `EventNotification`: raw protobuf as the filer sends it, or
//! base64 (gocdk flags it with the attribute `base64encoded=true`; a body that is base64 of
//! an event is recognised without it). The key is the message attribute `key`, as the
//! filer sends it; through gocdk it is read as gocloud escapes it, and SNS envelopes are
//! unwrapped (see `gocdk`). Messages
//! are received ten at a time with long polling and processed in order; while one is being
//! worked on its visibility is extended, so a slow replication is never delivered twice
//! at once (upstream lets it reappear after 20 s). A failed or interrupted message is made
//! visible again at once instead of after the timeout.

use crate::config::settings::SqsSettings;
use crate::event::RawEvent;
use crate::pipeline::{Disposition, Origin, Pipeline};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a received message stays invisible; renewed at half of it while working.
const VISIBILITY: i32 = 60;
/// Long-poll length; also the longest a shutdown waits for a poll to end.
const POLL_SECONDS: i32 = 5;
/// A held message (`on_failure = "hold"`) comes back after this long.
const RETRY_AFTER: i32 = 10;

/// This input as an [`Input`](super::Input).
pub(crate) struct SqsInput {
    pub cfg: SqsSettings,
}

#[async_trait::async_trait]
impl super::Input for SqsInput {
    fn describe(&self) -> String {
        format!(
            "SQS queue {} (region {})",
            if self.cfg.queue_url.is_empty() {
                &self.cfg.queue_name
            } else {
                &self.cfg.queue_url
            },
            self.cfg.region
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
        run(&self.cfg, pipeline, stop, hard_stop).await;
        Ok(())
    }
}

/// Consume until `stop` fires; in-flight work gets until `hard_stop`.
async fn run(
    cfg: &SqsSettings,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) {
    let client = client(cfg).await;
    let Some(url) = queue_url(&client, cfg, &stop).await else {
        return;
    };
    tracing::info!(queue = %url, "consuming SQS queue");
    crate::metrics::get().set_up(crate::metrics::Component::Input, true);
    let acks = SqsAcks {
        client,
        url,
        cfg: cfg.clone(),
    };
    super::run_queue(&pipeline, &acks, &stop, &hard_stop, |tx| {
        receive(&acks, tx, &stop, &hard_stop)
    })
    .await;
}

/// One message, as the lane holds it.
#[derive(Clone)]
struct SqsMessage {
    receipt: String,
    id: String,
}

impl SqsMessage {
    fn of(m: &Message) -> Self {
        SqsMessage {
            receipt: m.receipt_handle.clone().unwrap_or_default(),
            id: m.message_id.clone().unwrap_or_default(),
        }
    }
}

struct SqsAcks {
    client: Client,
    url: String,
    cfg: SqsSettings,
}

#[async_trait::async_trait]
impl super::Acks<SqsMessage> for SqsAcks {
    fn origin(&self, m: &SqsMessage) -> Origin {
        Origin::Message {
            input: "sqs",
            id: m.id.clone(),
        }
    }

    async fn keep(&self, m: &SqsMessage) {
        keep_invisible(&self.client, &self.url, &m.receipt).await
    }

    async fn settle(&self, m: SqsMessage, disposition: Option<Disposition>) {
        match disposition {
            Some(Disposition::Done) => {
                delete(&self.client, &self.url, &m.receipt, &self.origin(&m)).await
            }
            // Held: back on the queue after a pause, to be tried again.
            Some(Disposition::Held) => {
                set_visibility(&self.client, &self.url, &m.receipt, RETRY_AFTER).await
            }
            Some(Disposition::Stop | Disposition::Abandoned) | None => {
                set_visibility(&self.client, &self.url, &m.receipt, 0).await
            }
        }
    }

    async fn release(&self, messages: Vec<SqsMessage>) {
        for m in messages {
            set_visibility(&self.client, &self.url, &m.receipt, 0).await;
        }
    }
}

/// Receive batches into `tx` until `stop`.
async fn receive(
    acks: &SqsAcks,
    tx: tokio::sync::mpsc::Sender<(SqsMessage, RawEvent)>,
    stop: &CancellationToken,
    hard_stop: &CancellationToken,
) {
    let (client, url) = (&acks.client, acks.url.as_str());
    let mut retry = crate::retry::Retry::for_input();
    loop {
        if stop.is_cancelled() {
            return;
        }
        // A poll is not abandoned at shutdown: SQS would hand messages to the closed
        // request and hide them for the whole visibility timeout. It ends within
        // POLL_SECONDS, and what it brought is released.
        let received = tokio::select! {
            _ = hard_stop.cancelled() => return,
            r = client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(POLL_SECONDS)
                .visibility_timeout(VISIBILITY)
                .message_attribute_names("All")
                .send() => r,
        };
        let messages = match received {
            Ok(r) => {
                retry.succeeded();
                r.messages.unwrap_or_default()
            }
            Err(e) => {
                let e = aws_sdk_sqs::error::DisplayErrorContext(&e);
                if !retry.wait("receiving from SQS failed", &e, stop).await {
                    return;
                }
                continue;
            }
        };
        for (i, m) in messages.iter().enumerate() {
            let sent = tokio::select! {
                _ = stop.cancelled() => false,
                r = tx.send((SqsMessage::of(m), raw_event(m, &acks.cfg))) => r.is_ok(),
            };
            if !sent {
                use super::Acks;
                acks.release(messages[i..].iter().map(SqsMessage::of).collect())
                    .await;
                return;
            }
        }
    }
}

/// The SQS client for `[notification.aws_sqs]`.
async fn client(cfg: &SqsSettings) -> Client {
    let shared = crate::aws::sdk_config(
        &cfg.region,
        &cfg.access_key_id,
        &cfg.secret_access_key,
        &cfg.endpoint,
        "notification.toml",
        // Above the 20 s of a long poll, which is silence by design.
        std::time::Duration::from_secs(60),
    )
    .await;
    Client::new(&shared)
}

/// One attempt to reach the queue (`replicate check`): what was found.
async fn probe(cfg: &SqsSettings) -> Result<String, String> {
    let client = client(cfg).await;
    let url = if cfg.queue_url.is_empty() {
        client
            .get_queue_url()
            .queue_name(&cfg.queue_name)
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?
            .queue_url
            .unwrap_or_default()
    } else {
        cfg.queue_url.clone()
    };
    let attrs = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
    let waiting = attrs
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                .cloned()
        })
        .unwrap_or_else(|| "?".into());
    Ok(format!(
        "SQS queue {url} (about {waiting} messages waiting)"
    ))
}

/// The queue URL: known from a gocdk URL, else `GetQueueUrl`, waiting (and saying why)
/// while the queue is missing or SQS unreachable. `None` if `stop` fires first.
async fn queue_url(client: &Client, cfg: &SqsSettings, stop: &CancellationToken) -> Option<String> {
    if !cfg.queue_url.is_empty() {
        return Some(cfg.queue_url.clone());
    }
    let what = format!(
        "SQS queue {} (missing, wrong region or credentials?)",
        cfg.queue_name
    );
    crate::retry::wait_until_healthy(&what, stop, || async {
        let r = client
            .get_queue_url()
            .queue_name(&cfg.queue_name)
            .send()
            .await;
        match r {
            Ok(r) => r
                .queue_url
                .ok_or_else(|| "no queue URL in the answer".to_string()),
            Err(e) => Err(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()),
        }
    })
    .await
}

/// The message as an event: the `key` attribute, the body decoded; through gocdk, as
/// gocloud reads it (escaped attributes, SNS envelopes).
fn raw_event(m: &Message, cfg: &SqsSettings) -> RawEvent {
    let body = m.body.as_deref().unwrap_or("");
    let attributes: Vec<(String, String)> = m
        .message_attributes
        .iter()
        .flatten()
        // A binary attribute counts (as "", as gocloud has it): a message with any
        // attribute is never an SNS envelope.
        .map(|(k, v)| (k.clone(), v.string_value.clone().unwrap_or_default()))
        .collect();
    if cfg.gocdk {
        return super::gocdk::sqs_event(body, attributes, cfg.raw);
    }
    let attr = |name: &str| {
        attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    RawEvent::new(
        attr("key").unwrap_or_default(),
        super::gocdk::sqs_body(body, attr("base64encoded") == Some("true")),
    )
}

/// Renew the message's invisibility every half period (until dropped).
async fn keep_invisible(client: &Client, url: &str, receipt: &str) {
    let half = Duration::from_secs(VISIBILITY as u64 / 2);
    loop {
        tokio::time::sleep(half).await;
        if let Err(e) = client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(VISIBILITY)
            .send()
            .await
        {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "extending a message's visibility failed");
        }
    }
}

/// Delete a done message, retrying a few times; a message that cannot be deleted comes
/// back and is replayed, which is harmless.
async fn delete(client: &Client, url: &str, receipt: &str, origin: &Origin) {
    for attempt in 1..=3 {
        match client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
        {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(%origin, attempt, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "deleting a done message failed");
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
        }
    }
}

async fn set_visibility(client: &Client, url: &str, receipt: &str, seconds: i32) {
    if let Err(e) = client
        .change_message_visibility()
        .queue_url(url)
        .receipt_handle(receipt)
        .visibility_timeout(seconds)
        .send()
        .await
    {
        tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "changing a message's visibility failed; it comes back when the timeout ends");
    }
}

//! `[notification.google_pub_sub]` (and gocdk's `gcppubsub://`): messages from a Google
//! Cloud Pub/Sub subscription, over the REST API, acknowledged only once the sink has the
//! change.
//!
//! The topic and the subscription are created when missing, as upstream does. The
//! subscription is upstream's `seaweedfs_sub` unless `subscription` names another, so
//! several replicators can each get every event (upstream's shared name splits the stream
//! between them). Data is the `EventNotification`, the attribute `key` its path. While a
//! message is worked on its ack deadline is extended; a held message comes back after a
//! pause instead of looping hot (upstream's immediate nack); one not started at shutdown
//! is released at once. `PUBSUB_EMULATOR_HOST` points it at the emulator.

use crate::config::settings::PubSubSettings;
use crate::event::RawEvent;
use crate::gcp::GoogleAuth;
use crate::pipeline::{Disposition, Origin, Pipeline};
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SCOPE: &str = "https://www.googleapis.com/auth/pubsub";
const ACK_DEADLINE: i64 = 60;
const RETRY_AFTER: i64 = 10;

struct Client {
    http: reqwest::Client,
    base: String,
    auth: GoogleAuth,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.base))
            .timeout(Duration::from_secs(30));
        if let Some(token) = self.auth.token().await.map_err(|e| e.to_string())? {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// A call that must succeed (2xx).
    async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        match self.call(method, path, body).await? {
            (s, v) if (200..300).contains(&s) => Ok(v),
            (s, v) => Err(api_error(s, &v)),
        }
    }
}

/// An error answer: its status and the message Pub/Sub gives.
fn api_error(status: u16, body: &Value) -> String {
    format!(
        "HTTP {status}: {}",
        body["error"]["message"].as_str().unwrap_or("")
    )
}

/// The API client (the emulator's when `PUBSUB_EMULATOR_HOST` is set) and the
/// subscription's resource name.
fn connect(cfg: &PubSubSettings, http: reqwest::Client) -> Result<(Client, String), String> {
    let emulator = cfg.emulator_host.clone();
    let base = match &emulator {
        Some(h) if h.starts_with("http") => h.trim_end_matches('/').to_string(),
        Some(h) => format!("http://{h}"),
        None => "https://pubsub.googleapis.com".to_string(),
    };
    let auth =
        GoogleAuth::new(&cfg.credentials, emulator.is_some(), SCOPE).map_err(|e| e.to_string())?;
    let client = Client { http, base, auth };
    let sub = format!(
        "projects/{}/subscriptions/{}",
        cfg.project_id, cfg.subscription
    );
    Ok((client, sub))
}

/// `[notification.google_pub_sub]` as an [`Input`](super::Input).
pub(crate) struct PubSubInput {
    pub cfg: PubSubSettings,
    pub http: reqwest::Client,
}

#[async_trait::async_trait]
impl super::Input for PubSubInput {
    fn describe(&self) -> String {
        format!(
            "Google Pub/Sub subscription {} (project {})",
            self.cfg.subscription, self.cfg.project_id
        )
    }

    async fn probe(&self) -> Result<String, super::InputError> {
        probe(&self.cfg, self.http.clone())
            .await
            .map_err(super::InputError::Unreachable)
    }

    async fn run(
        &self,
        pipeline: Arc<Pipeline>,
        stop: CancellationToken,
        hard_stop: CancellationToken,
    ) -> Result<(), super::InputError> {
        run(&self.cfg, self.http.clone(), pipeline, stop, hard_stop)
            .await
            .map_err(|detail| super::InputError::Config {
                key: "notification.google_pub_sub.google_application_credentials",
                detail,
            })
    }
}

/// One attempt to reach the subscription (`replicate check`): what was found.
async fn probe(cfg: &PubSubSettings, http: reqwest::Client) -> Result<String, String> {
    let (client, sub) = connect(cfg, http)?;
    match client.call(reqwest::Method::GET, &sub, None).await? {
        (200, _) => Ok(format!("Pub/Sub subscription {sub}")),
        (404, _) if !cfg.topic.is_empty() => Ok(format!(
            "Pub/Sub reachable; subscription {sub} does not exist yet and will be created on topic {}",
            cfg.topic
        )),
        (s, v) => Err(api_error(s, &v)),
    }
}

/// Consume until `stop` fires; in-flight work gets until `hard_stop`.
async fn run(
    cfg: &PubSubSettings,
    http: reqwest::Client,
    pipeline: Arc<Pipeline>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
) -> Result<(), String> {
    let (client, sub) = connect(cfg, http)?;
    if !ensure_subscription(&client, cfg, &sub, &stop).await {
        return Ok(());
    }
    tracing::info!(subscription = %sub, "consuming Pub/Sub subscription");
    crate::metrics::get().set_up(crate::metrics::Component::Input, true);
    let acks = PubSubAcks { client, sub };
    super::run_queue(&pipeline, &acks, &stop, &hard_stop, |tx| {
        pull(&acks, tx, &stop, &hard_stop)
    })
    .await;
    Ok(())
}

/// One message, as the lane holds it.
#[derive(Clone)]
struct PubSubMessage {
    ack_id: String,
    id: String,
}

struct PubSubAcks {
    client: Client,
    sub: String,
}

#[async_trait::async_trait]
impl super::Acks<PubSubMessage> for PubSubAcks {
    fn origin(&self, m: &PubSubMessage) -> Origin {
        Origin::Message {
            input: "pubsub",
            id: m.id.clone(),
        }
    }

    async fn keep(&self, m: &PubSubMessage) {
        loop {
            tokio::time::sleep(Duration::from_secs(ACK_DEADLINE as u64 / 2)).await;
            deadline(
                &self.client,
                &self.sub,
                std::slice::from_ref(&m.ack_id),
                ACK_DEADLINE,
            )
            .await;
        }
    }

    async fn settle(&self, m: PubSubMessage, disposition: Option<Disposition>) {
        match disposition {
            Some(Disposition::Done) => {
                let body = json!({"ackIds": [m.ack_id]});
                if let Err(e) = self
                    .client
                    .ok(
                        reqwest::Method::POST,
                        &format!("{}:acknowledge", self.sub),
                        Some(body),
                    )
                    .await
                {
                    tracing::warn!(origin = %self.origin(&m), error = %e, "acknowledging a done message failed; it will be replayed");
                }
            }
            Some(Disposition::Held) => {
                deadline(&self.client, &self.sub, &[m.ack_id], RETRY_AFTER).await
            }
            Some(Disposition::Stop | Disposition::Abandoned) | None => {
                deadline(&self.client, &self.sub, &[m.ack_id], 0).await
            }
        }
    }

    async fn release(&self, messages: Vec<PubSubMessage>) {
        let ids: Vec<String> = messages.into_iter().map(|m| m.ack_id).collect();
        deadline(&self.client, &self.sub, &ids, 0).await;
    }
}

/// Pull batches into `tx` until `stop`.
async fn pull(
    acks: &PubSubAcks,
    tx: tokio::sync::mpsc::Sender<(PubSubMessage, RawEvent)>,
    stop: &CancellationToken,
    hard_stop: &CancellationToken,
) {
    let (client, sub) = (&acks.client, &acks.sub);
    let pull = format!("{sub}:pull");
    let mut retry = crate::retry::Retry::for_input();
    loop {
        if stop.is_cancelled() {
            return;
        }
        // Not abandoned at shutdown: what a pull brings is released instead of waiting out
        // its ack deadline.
        let pulled = tokio::select! {
            _ = hard_stop.cancelled() => return,
            r = client.ok(reqwest::Method::POST, &pull,
                Some(json!({"maxMessages": 10, "returnImmediately": true}))) => r,
        };
        let received: Vec<Value> = match pulled {
            Ok(v) => {
                retry.succeeded();
                v["receivedMessages"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            }
            Err(e) => {
                if !retry.wait("pulling from Pub/Sub failed", &e, stop).await {
                    return;
                }
                continue;
            }
        };
        if received.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let ack_ids: Vec<String> = received
            .iter()
            .map(|m| m["ackId"].as_str().unwrap_or("").to_string())
            .collect();
        for (i, m) in received.iter().enumerate() {
            let msg = &m["message"];
            let message = PubSubMessage {
                ack_id: ack_ids[i].clone(),
                id: msg["messageId"].as_str().unwrap_or("").to_string(),
            };
            let event = RawEvent::new(
                msg["attributes"]["key"].as_str().unwrap_or(""),
                base64::engine::general_purpose::STANDARD
                    .decode(msg["data"].as_str().unwrap_or(""))
                    .unwrap_or_default(),
            );
            let sent = tokio::select! {
                _ = stop.cancelled() => false,
                r = tx.send((message, event)) => r.is_ok(),
            };
            if !sent {
                deadline(client, sub, &ack_ids[i..], 0).await;
                return;
            }
        }
    }
}

/// Set the ack deadline of `ack_ids` (0: deliver again now).
async fn deadline(client: &Client, sub: &str, ack_ids: &[String], seconds: i64) {
    if ack_ids.is_empty() {
        return;
    }
    let body = json!({"ackIds": ack_ids, "ackDeadlineSeconds": seconds});
    if let Err(e) = client
        .ok(
            reqwest::Method::POST,
            &format!("{sub}:modifyAckDeadline"),
            Some(body),
        )
        .await
    {
        tracing::warn!(error = %e, "changing an ack deadline failed; the message comes back when it ends");
    }
}

/// Create the topic and the subscription when missing (as upstream), waiting while
/// Pub/Sub is unreachable or refuses; `false` if `stop` fires first.
async fn ensure_subscription(
    client: &Client,
    cfg: &PubSubSettings,
    sub: &str,
    stop: &CancellationToken,
) -> bool {
    let topic = format!("projects/{}/topics/{}", cfg.project_id, cfg.topic);
    let what = format!("Pub/Sub subscription {sub}");
    crate::retry::wait_until_healthy(&what, stop, || async {
        match client.call(reqwest::Method::GET, sub, None).await? {
            (200, _) => return Ok(()),
            (404, _) => {}
            (s, v) => {
                return Err(api_error(s, &v));
            }
        }
        if cfg.topic.is_empty() {
            return Err(
                "the subscription does not exist and no topic is configured to create it on".into(),
            );
        }
        match client
            .call(reqwest::Method::PUT, &topic, Some(json!({})))
            .await?
        {
            (200, _) | (409, _) => {}
            (s, v) => {
                return Err(format!("creating {topic}: {}", api_error(s, &v)));
            }
        }
        let body = json!({"topic": topic, "ackDeadlineSeconds": ACK_DEADLINE});
        match client.call(reqwest::Method::PUT, sub, Some(body)).await? {
            (200, _) | (409, _) => {
                tracing::info!(subscription = %sub, topic = %topic, "created the subscription");
                Ok(())
            }
            (s, v) => Err(format!("creating {sub}: {}", api_error(s, &v))),
        }
    })
    .await
    .is_some()
}

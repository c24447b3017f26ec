//! Inputs: where events come from, behind one [`Input`] trait and one factory, [`open`].
//! Each delivers events in order per partition (or queue, or log) and learns, per event,
//! whether it reached the sink; only then is progress committed or the message
//! acknowledged.

pub mod gocdk;
pub(crate) mod kafka;
pub(crate) mod nats;
pub(crate) mod pubsub;
pub(crate) mod rabbit;
pub(crate) mod sqs;
pub(crate) mod subscribe;

use crate::config::settings::InputSettings;
use crate::event::RawEvent;
use crate::filer::FilerSource;
use crate::pipeline::{Disposition, Origin, Pipeline};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// An input.
///
/// Contract:
/// - `run` takes events until `stop` fires and hands each to the pipeline through a lane
///   ([`crate::lane`]: related events in order, unrelated ones at once); an event's
///   progress (an offset, a checkpoint, an acknowledgement) is recorded only after the
///   pipeline returned its [`Disposition`] for it, and only for a prefix of finished
///   events, so a crash redelivers and never skips. The lane keeps that prefix and says
///   what a `Held` event does to it ([`crate::lane::Holds`]): a held event is never
///   acknowledged and comes again. Work still in flight at `hard_stop` is abandoned,
///   not acknowledged.
/// - Faults (an unreachable broker, a refused credential) are waited out inside `run`,
///   with backoff and one log line per change; `run` returns `Err` only when the input
///   cannot start with its configuration.
/// - `probe` makes one attempt to reach the input and says what it found.
#[async_trait::async_trait]
pub(crate) trait Input: Send + Sync {
    /// For the start-up log: what is read (`SQS queue q (region r)`).
    fn describe(&self) -> String;
    async fn probe(&self) -> Result<String, InputError>;
    async fn run(
        &self,
        pipeline: Arc<Pipeline>,
        stop: CancellationToken,
        hard_stop: CancellationToken,
    ) -> Result<(), InputError>;
}

/// Why an input failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputError {
    /// It cannot start with this configuration; `key` names the setting.
    #[error("{detail}")]
    Config { key: &'static str, detail: String },
    /// One attempt to reach it failed.
    #[error("{0}")]
    Unreachable(String),
}

/// What the inputs may need beside their own settings.
pub(crate) struct InputContext {
    /// The HTTP client for clouds (Pub/Sub).
    pub cloud: reqwest::Client,
    /// The source filer (the metadata-log input reads it).
    pub source: Arc<FilerSource>,
    /// The replicated directory on the source filer.
    pub source_directory: String,
}

/// The configured input.
pub(crate) fn open(settings: &InputSettings, ctx: InputContext) -> Box<dyn Input> {
    match settings {
        InputSettings::Kafka(cfg) => Box::new(kafka::KafkaInput { cfg: cfg.clone() }),
        InputSettings::Sqs(cfg) => Box::new(sqs::SqsInput { cfg: cfg.clone() }),
        InputSettings::PubSub(cfg) => Box::new(pubsub::PubSubInput {
            cfg: cfg.clone(),
            http: ctx.cloud,
        }),
        InputSettings::Rabbit(cfg) => Box::new(rabbit::RabbitInput { cfg: cfg.clone() }),
        InputSettings::Nats(cfg) => Box::new(nats::NatsInput { cfg: cfg.clone() }),
        InputSettings::Subscribe(cfg) => Box::new(subscribe::SubscribeInput {
            cfg: cfg.clone(),
            source: ctx.source,
            directory: ctx.source_directory,
        }),
    }
}

/// Run one event through the pipeline; `None` when `hard_stop` (the end of the shutdown
/// grace) interrupts it, so that it is neither acknowledged nor recorded.
pub(crate) async fn process(
    pipeline: &Pipeline,
    event: &RawEvent,
    origin: &Origin,
    hard_stop: &CancellationToken,
) -> Option<Disposition> {
    tokio::select! {
        d = pipeline.handle(event, origin) => Some(d),
        _ = hard_stop.cancelled() => {
            tracing::warn!(%origin, key = %event.key, "abandoning event in flight (shutdown grace over, or its partition moved); it will be delivered again");
            None
        }
    }
}

/// How a queue input acknowledges its messages (`T` is its handle for one message).
#[async_trait::async_trait]
pub(crate) trait Acks<T: Send + Sync>: Sync {
    /// Where the message came from, for logs and the parked file.
    fn origin(&self, message: &T) -> Origin;
    /// Runs while the message is worked on (extending its lease); it is dropped when the
    /// work ends, so it may loop forever.
    async fn keep(&self, message: &T);
    /// The work ended: acknowledge, put back for later, or release (`None`: interrupted).
    async fn settle(&self, message: T, disposition: Option<Disposition>);
    /// Messages received but never started: give them back to the queue now.
    async fn release(&self, messages: Vec<T>);
}

/// Run a queue input: `feed` receives messages into the sender until `stop`; they run
/// through the pipeline in a lane (up to `[replicate] concurrency` at once, in order where
/// related) and are settled one by one; what was never started is released at the end.
pub(crate) async fn run_queue<T, A, F>(
    pipeline: &Pipeline,
    acks: &A,
    stop: &CancellationToken,
    hard_stop: &CancellationToken,
    feed: impl FnOnce(tokio::sync::mpsc::Sender<(T, RawEvent)>) -> F,
) where
    T: Clone + Send + Sync,
    A: Acks<T>,
    F: std::future::Future<Output = ()>,
{
    let concurrency = pipeline.concurrency();
    let (tx, mut rx) = tokio::sync::mpsc::channel(concurrency);
    let lane = crate::lane::run(
        &mut rx,
        concurrency,
        // A held message stays unacknowledged; the queue delivers it again.
        crate::lane::Holds::Report,
        |message: T, event| async move {
            let disposition = if stop.is_cancelled() {
                None
            } else {
                let origin = acks.origin(&message);
                tokio::select! {
                    d = process(pipeline, &event, &origin, hard_stop) => d,
                    _ = acks.keep(&message) => None,
                }
            };
            acks.settle(message, disposition).await;
            disposition
        },
        |_| {},
    );
    tokio::pin!(lane);
    let fed = feed(tx);
    let (end, unstarted) = tokio::select! {
        r = &mut lane => r,
        _ = fed => lane.await,
    };
    acks.release(unstarted).await;
    if end == crate::lane::LaneEnd::Stopped {
        // bad_message = "stop": nothing more is taken from the queue.
        stop.cancelled().await;
    }
}

/// Run `session` until it ends cleanly or `stop` fires, reconnecting with backoff (up to
/// 30 s) after each error, which is logged as `what` being unavailable.
pub(crate) async fn reconnecting<F, Fut, E>(what: &str, stop: &CancellationToken, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut retry = crate::retry::Retry::for_input();
    loop {
        let started = std::time::Instant::now();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = session() => r,
        };
        // A session that lasted had connected: this failure is a new outage.
        if started.elapsed() >= std::time::Duration::from_secs(10) {
            retry.succeeded();
        }
        match result {
            Ok(()) => return,
            Err(e) => {
                if !retry
                    .wait(&format!("{what} unavailable; reconnecting"), &e, stop)
                    .await
                {
                    return;
                }
            }
        }
    }
}

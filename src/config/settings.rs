//! Typed settings resolved (purely) from the merged key space.

use super::{ConfigErrors, Problem, RawConfig, Reader};
use crate::filer::jwt::ReadSigner;
use crate::replicate::path::{components, normalize_dir};
pub use crate::sink::filer::FilerSinkOptions;
pub use crate::sink::object::azure::AzureSinkOptions;
pub use crate::sink::object::b2::B2SinkOptions;
pub use crate::sink::object::gcs::GcsSinkOptions;
pub use crate::sink::object::s3::S3SinkOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Inputs in upstream's precedence order.
pub const INPUTS: [&str; 4] = ["aws_sqs", "gocdk_pub_sub", "google_pub_sub", "kafka"];
/// Sinks in upstream's precedence order.
pub const SINKS: [&str; 7] = [
    "azure",
    "backblaze",
    "filer",
    "google_cloud_storage",
    "local_incremental",
    "local",
    "s3",
];

/// Everything the daemon needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: SourceSettings,
    pub input: InputSettings,
    pub sink: SinkSettings,
    pub security: SecuritySettings,
    pub replicate: ReplicateSettings,
    pub metrics: MetricsSettings,
    /// Keys that mean nothing (misspelt, unknown sections, in the wrong file): warnings,
    /// or errors under `-strict`.
    pub typos: Vec<Problem>,
}

/// `[metrics]`: the metrics listener and the progress line (ours; upstream has neither).
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`host:port` or `:port`).
    pub address: Option<String>,
    /// How often the progress line is logged; `None` for never.
    pub progress_interval: Option<Duration>,
    /// `/readyz` fails while the oldest unfinished event has waited longer than this.
    pub ready_max_event_age: Option<Duration>,
}

/// Check a listen address: `host:port` or Go-style `:port`.
pub fn check_listen_address(address: &str) -> Result<(), String> {
    let port = address
        .rsplit_once(':')
        .map(|(_, p)| p)
        .ok_or_else(|| format!("{address:?} is not host:port or :port"))?;
    match port.parse::<u16>() {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "{address:?} has no valid port (host:port or :port)"
        )),
    }
}

/// `[source.filer]`.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub grpc_address: String,
    /// Normalised, absolute.
    pub directory: String,
    pub exclude_directories: Vec<String>,
    pub data_center: String,
}

#[derive(Debug, Clone)]
pub enum InputSettings {
    Kafka(KafkaSettings),
    /// `[source.filer] subscribe = true`: the filer's own metadata log, no queue.
    Subscribe(SubscribeSettings),
    /// `[notification.aws_sqs]`, or gocdk `awssqs://`.
    Sqs(SqsSettings),
    /// `[notification.google_pub_sub]`, or gocdk `gcppubsub://`.
    PubSub(PubSubSettings),
    /// gocdk `rabbit://<queue>`.
    Rabbit(RabbitSettings),
    /// gocdk `nats://<subject>`.
    Nats(NatsSettings),
}

impl InputSettings {
    /// What kind of input, as the start-up log names it.
    pub fn name(&self) -> &'static str {
        match self {
            InputSettings::Kafka(_) => "kafka",
            InputSettings::Subscribe(_) => "the source filer's metadata log",
            InputSettings::Sqs(_) => "aws_sqs",
            InputSettings::PubSub(_) => "google_pub_sub",
            InputSettings::Rabbit(_) => "rabbitmq",
            InputSettings::Nats(_) => "nats",
        }
    }
}

/// An SQS queue.
#[derive(Clone, Default)]
pub struct SqsSettings {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    /// Looked up with `GetQueueUrl` unless `queue_url` is known.
    pub queue_name: String,
    pub queue_url: String,
    /// Ours: LocalStack, ElasticMQ, moto, VPC endpoints.
    pub endpoint: String,
    /// Read through gocdk's `awssqs://`: escaped attributes, SNS envelopes unwrapped.
    pub gocdk: bool,
    /// gocdk's `raw` parameter: bodies are never SNS envelopes.
    pub raw: bool,
}

impl std::fmt::Debug for SqsSettings {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsSettings")
            .field("region", &self.region)
            .field("queue_name", &self.queue_name)
            .field("queue_url", &self.queue_url)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A Google Pub/Sub subscription.
#[derive(Debug, Clone, Default)]
pub struct PubSubSettings {
    /// A credentials file path (or inline JSON); empty: application default credentials.
    pub credentials: String,
    pub project_id: String,
    /// Created when missing (with the subscription); empty when only a subscription is named.
    pub topic: String,
    /// Ours; upstream hard-codes `seaweedfs_sub`, so replicators split the stream.
    pub subscription: String,
}

/// A RabbitMQ queue (gocdk's `rabbit://`).
#[derive(Clone)]
pub struct RabbitSettings {
    /// `RABBIT_SERVER_URL`, `amqp://user:password@host:5672/vhost`.
    pub server_url: String,
    pub queue: String,
    /// From `topic_url` (`rabbit://<exchange>`): where the queue is bound when `replicate`
    /// declares upstream's topology for a missing queue.
    pub exchange: String,
}

impl std::fmt::Debug for RabbitSettings {
    /// Never prints the password in the server URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSettings")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// A NATS subject (gocdk's `nats://`).
#[derive(Clone)]
pub struct NatsSettings {
    /// `NATS_SERVER_URL`.
    pub server_url: String,
    pub subject: String,
    /// The JetStream durable consumer's name (ours); `replicate` by default.
    pub durable: String,
    /// gocdk's `natsv2` parameter: metadata in NATS headers, not in a gob stream.
    pub natsv2: bool,
}

impl std::fmt::Debug for NatsSettings {
    /// Never prints credentials in the server URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("subject", &self.subject)
            .field("durable", &self.durable)
            .finish_non_exhaustive()
    }
}

/// The queue-less input.
#[derive(Debug, Clone)]
pub struct SubscribeSettings {
    /// Seed the sink from a walk of the live tree when there is no checkpoint yet.
    pub initial_snapshot: bool,
    /// Where the checkpoint lives in the source filer's KV store: distinct per source
    /// directory, sink kind and destination.
    pub checkpoint_key: String,
    pub checkpoint_interval: Duration,
}

/// `[notification.kafka]`.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub hosts: Vec<String>,
    pub topic: String,
    pub offset_file: PathBuf,
    /// In offset-file mode how often the file is written; in group mode how often
    /// finished offsets are committed to the broker.
    pub offset_save_interval: Duration,
    pub sasl: Option<Sasl>,
    pub tls: Option<KafkaTls>,
    /// `group_id` set: a consumer group with broker-side offsets instead of the file.
    pub group: Option<Box<GroupSettings>>,
}

/// `[notification.kafka]` keys of consumer-group mode.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub id: String,
    /// Where a partition without a committed offset starts: "earliest" or "latest".
    pub auto_offset_reset: String,
    /// Start a group that has no committed offsets from the offset file (then renamed).
    pub import_offset_file: bool,
    /// After this long without a heartbeat, a member's partitions go to the others.
    pub session_timeout: Duration,
    /// How long in-flight events of a partition taken away may finish before they are
    /// abandoned (the next owner delivers them again).
    pub revoke_grace: Duration,
    /// librdkafka's `partition.assignment.strategy`.
    pub assignment: String,
}

#[derive(Debug, Clone)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone)]
pub struct KafkaTls {
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone)]
pub enum SinkSettings {
    /// `[sink.local]` or `[sink.local_incremental]`.
    Local {
        name: &'static str,
        directory: PathBuf,
        incremental: bool,
    },
    /// `[sink.filer]`.
    Filer(FilerSinkOptions),
    /// `[sink.s3]`.
    S3(S3SinkOptions),
    /// `[sink.google_cloud_storage]`.
    Gcs(GcsSinkOptions),
    /// `[sink.azure]`.
    Azure(AzureSinkOptions),
    /// `[sink.backblaze]`.
    B2(B2SinkOptions),
}

impl SinkSettings {
    pub fn name(&self) -> &'static str {
        match self {
            SinkSettings::Local { name, .. } => name,
            SinkSettings::Filer(_) => "filer",
            SinkSettings::S3(_) => "s3",
            SinkSettings::Gcs(_) => "google_cloud_storage",
            SinkSettings::Azure(_) => "azure",
            SinkSettings::B2(_) => "backblaze",
        }
    }
    pub fn directory(&self) -> String {
        match self {
            SinkSettings::Local { directory, .. } => directory.display().to_string(),
            SinkSettings::Filer(o) => o.directory.clone(),
            SinkSettings::S3(o) => o.directory.clone(),
            SinkSettings::Gcs(o) => o.directory.clone(),
            SinkSettings::Azure(o) => o.directory.clone(),
            SinkSettings::B2(o) => o.directory.clone(),
        }
    }
    /// What this sink writes to, for telling checkpoints apart: the kind, the target
    /// (path, filer, bucket, container) and the directory.
    pub fn identity(&self) -> String {
        let target = match self {
            SinkSettings::Local { .. } => String::new(),
            SinkSettings::Filer(o) => o.grpc_address.clone(),
            SinkSettings::S3(o) => format!("{}/{}", o.endpoint, o.bucket),
            SinkSettings::Gcs(o) => format!("{}/{}", o.endpoint, o.bucket),
            SinkSettings::Azure(o) => format!("{}/{}/{}", o.endpoint, o.account_name, o.container),
            SinkSettings::B2(o) => format!("{}/{}", o.endpoint, o.bucket),
        };
        format!("{}|{target}|{}", self.name(), self.directory())
    }
    pub fn incremental(&self) -> bool {
        match self {
            SinkSettings::Local { incremental, .. } => *incremental,
            SinkSettings::Filer(o) => o.incremental,
            SinkSettings::S3(o) => o.incremental,
            SinkSettings::Gcs(o) => o.incremental,
            SinkSettings::Azure(o) => o.incremental,
            SinkSettings::B2(o) => o.incremental,
        }
    }
}

/// What `security.toml` says about talking to the source cluster.
#[derive(Debug, Clone, Default)]
pub struct SecuritySettings {
    pub read_jwt: Option<ReadSigner>,
    pub https_client: Option<HttpsClient>,
    /// gRPC mutual TLS to filers: `grpc.ca` plus a client certificate and key.
    pub grpc_tls: Option<GrpcTls>,
}

/// PEM files for gRPC mutual TLS.
#[derive(Debug, Clone)]
pub struct GrpcTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct HttpsClient {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub insecure_skip_verify: bool,
}

/// What happens to an event that cannot be replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Write it to the parked-events file and move on (nothing is lost, nothing stalls).
    Park,
    /// Upstream's behaviour: keep processing, but never commit past the oldest
    /// failed offset, so a restart replays from it.
    Hold,
}

/// What happens to a message that is not an event (no key, too large, undecodable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadMessagePolicy {
    /// Count, log, park and acknowledge it: the pipeline keeps moving.
    Park,
    /// The input stops at it (nothing after it is processed or acknowledged).
    Stop,
}

/// What happens when the input can tell that it missed events: a Kafka offset out of
/// range (retention deleted unread messages, the topic was re-created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapPolicy {
    /// Go on, and make the sink equal to the source again in the background: every
    /// source entry is replicated (what is already current is skipped cheaply) and what
    /// the sink holds that the source does not is removed.
    Reconcile,
    /// The input goes no further; `/readyz` says why. An operator decides.
    Stop,
    /// Go on as if nothing was missed (logged and counted all the same).
    Ignore,
}

/// `[replicate]`: our own settings (upstream has none of these).
#[derive(Debug, Clone)]
pub struct ReplicateSettings {
    /// What a gap in the input leads to.
    pub on_gap: GapPolicy,
    /// Events in flight per ordered stream (partition, queue, log).
    pub concurrency: usize,
    pub on_failure: FailurePolicy,
    pub bad_message: BadMessagePolicy,
    pub max_message_bytes: usize,
    pub parked_file: PathBuf,
    /// How long one event may keep failing with retryable errors before the failure policy applies.
    pub event_deadline: Duration,
    /// Chunks fetched ahead per file.
    pub prefetch_chunks: usize,
    /// How long a volume server may stay silent during a read before the next replica is tried.
    pub read_timeout: Duration,
}

fn enabled_sections(r: &mut Reader, prefix: &str, names: &[&'static str]) -> Vec<&'static str> {
    names
        .iter()
        .copied()
        .filter(|n| r.bool(&format!("{prefix}.{n}.enabled"), false))
        .collect()
}

fn check_grpc_address(r: &mut Reader, key: &str, addr: &str) {
    if addr.is_empty() {
        r.problem(
            key,
            "is empty; set it to the filer's gRPC address, host:port (HTTP port + 10000)",
        );
        return;
    }
    // host:port, or [v6]:port; a bare v6 address without brackets is ambiguous.
    let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|p| p > 0)
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
    });
    if !ok {
        r.problem(
            key,
            format!("{addr:?} is not host:port (a port is required)"),
        );
    }
}

/// Resolve typed settings, relative paths against `cwd`. Pure apart from reading nothing.
pub fn resolve(raw: &RawConfig, cwd: &Path) -> Result<Settings, ConfigErrors> {
    let mut r = Reader::new(raw);

    // ---- source
    let grpc_address = r.string("source.filer.grpcAddress", "");
    check_grpc_address(&mut r, "source.filer.grpcAddress", &grpc_address);
    let dir_raw = r.string("source.filer.directory", "");
    let directory = if dir_raw.is_empty() {
        r.problem("source.filer.directory", "is empty, which would replicate nothing; set the filer directory to replicate, e.g. \"/buckets\"");
        "/".to_string()
    } else {
        normalize_dir(&dir_raw).unwrap_or_else(|e| {
            r.problem(
                "source.filer.directory",
                format!("must be an absolute filer path without . or ..: {}", e.why),
            );
            "/".to_string()
        })
    };
    let mut exclude_directories = Vec::new();
    for ex in r.list("source.filer.excludeDirectories") {
        match normalize_dir(&ex) {
            Ok(d) => exclude_directories.push(d),
            Err(e) => r.problem(
                "source.filer.excludeDirectories",
                format!("{ex:?}: must be an absolute filer path: {}", e.why),
            ),
        }
    }
    let data_center = r.string("source.filer.dataCenter", "");
    let source = SourceSettings {
        grpc_address,
        directory,
        exclude_directories,
        data_center,
    };

    // ---- input
    let subscribe = r.bool("source.filer.subscribe", false);
    let initial_snapshot = r.bool("source.filer.initial_snapshot", false);
    let checkpoint_seconds = r.count("source.filer.checkpoint_interval_seconds", 3);
    let inputs = enabled_sections(&mut r, "notification", &INPUTS);
    let mut input = match inputs.as_slice() {
        [] if subscribe => None,
        [] => {
            r.problem(
                "notification",
                format!(
                    "no input is enabled; set subscribe = true in [source.filer] (no queue needed) or enabled = true in exactly one of {}",
                    INPUTS.map(|n| format!("[notification.{n}]")).join(", ")
                ),
            );
            None
        }
        [one] if subscribe => {
            r.problem(
                "source.filer.subscribe",
                format!("is true and [notification.{one}] is enabled too; use one input"),
            );
            None
        }
        [one] => resolve_input(&mut r, one, cwd),
        many => {
            r.problem(
                &format!("notification.{}.enabled", many[1]),
                format!(
                    "several inputs are enabled ({}); enable exactly one",
                    many.iter()
                        .map(|n| format!("notification.{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            None
        }
    };

    if initial_snapshot && !subscribe {
        r.problem(
            "source.filer.initial_snapshot",
            "works only with subscribe = true (a queue cannot be rewound to a snapshot)",
        );
    }

    // ---- sink
    let sinks = enabled_sections(&mut r, "sink", &SINKS);
    let sink = match sinks.as_slice() {
        [] => {
            r.problem(
                "sink",
                format!(
                    "no sink is enabled; set enabled = true in exactly one of {}",
                    SINKS.map(|n| format!("[sink.{n}]")).join(", ")
                ),
            );
            None
        }
        [one] => resolve_sink(&mut r, one, &source, cwd),
        many => {
            r.problem(
                &format!("sink.{}.enabled", many[1]),
                format!(
                    "several sinks are enabled ({}); one replicate process feeds one sink, run one per sink",
                    many.iter().map(|n| format!("sink.{n}")).collect::<Vec<_>>().join(", ")
                ),
            );
            None
        }
    };

    // ---- security
    let mut security = SecuritySettings::default();
    let read_key = r.string("jwt.signing.read.key", "");
    let expires = r.count("jwt.signing.read.expires_after_seconds", 0);
    if !read_key.is_empty() {
        security.read_jwt = Some(ReadSigner::new(&read_key, expires));
    }
    if r.bool("https.client.enabled", false) {
        security.https_client = Some(HttpsClient {
            ca: r.string("https.client.ca", ""),
            cert: r.string("https.client.cert", ""),
            key: r.string("https.client.key", ""),
            insecure_skip_verify: r.bool("https.client.insecure_skip_verify", false),
        });
    }
    // As upstream: grpc.client.client_cert/client_key, else grpc.client.cert/key; TLS
    // only when the CA, a certificate and a key are all set.
    let ca = r.string("grpc.ca", "");
    let client_cert = r.string("grpc.client.client_cert", "");
    let client_key = r.string("grpc.client.client_key", "");
    if client_cert.is_empty() != client_key.is_empty() {
        r.problem(
            "grpc.client.client_cert",
            "grpc.client.client_cert and grpc.client.client_key must be set together",
        );
    }
    let (cert, key) = if !client_cert.is_empty() && !client_key.is_empty() {
        (client_cert, client_key)
    } else {
        (
            r.string("grpc.client.cert", ""),
            r.string("grpc.client.key", ""),
        )
    };
    if !ca.is_empty() && !cert.is_empty() && !key.is_empty() {
        security.grpc_tls = Some(GrpcTls {
            ca: cwd.join(ca),
            cert: cwd.join(cert),
            key: cwd.join(key),
        });
    }

    // ---- ours
    let on_failure = match r
        .string("replicate.on_failure", "park")
        .to_lowercase()
        .as_str()
    {
        "park" => FailurePolicy::Park,
        "hold" => FailurePolicy::Hold,
        other => {
            r.problem(
                "replicate.on_failure",
                format!("must be \"park\" or \"hold\", got {other:?}"),
            );
            FailurePolicy::Park
        }
    };
    let bad_message = match r
        .string("replicate.bad_message", "park")
        .to_lowercase()
        .as_str()
    {
        "park" => BadMessagePolicy::Park,
        "stop" => BadMessagePolicy::Stop,
        other => {
            r.problem(
                "replicate.bad_message",
                format!("must be \"park\" or \"stop\", got {other:?}"),
            );
            BadMessagePolicy::Park
        }
    };
    let on_gap = match r
        .string("replicate.on_gap", "reconcile")
        .to_lowercase()
        .as_str()
    {
        "reconcile" => GapPolicy::Reconcile,
        "stop" => GapPolicy::Stop,
        "ignore" => GapPolicy::Ignore,
        other => {
            r.problem(
                "replicate.on_gap",
                format!("must be \"reconcile\", \"stop\" or \"ignore\", got {other:?}"),
            );
            GapPolicy::Reconcile
        }
    };
    let concurrency = r.count("replicate.concurrency", 64);
    if concurrency == 0 || concurrency > 4096 {
        r.problem(
            "replicate.concurrency",
            format!("must be between 1 and 4096, got {concurrency}"),
        );
    }
    let max_message_bytes = r.count("replicate.max_message_bytes", 64 * 1024 * 1024);
    if max_message_bytes == 0 {
        r.problem("replicate.max_message_bytes", "must be at least 1");
    }
    let parked_file = cwd.join(r.string("replicate.parked_file", "./replicate.parked.jsonl"));
    let event_deadline = Duration::from_secs(r.count("replicate.event_deadline_seconds", 300));
    let prefetch_chunks = r.count("replicate.prefetch_chunks", 4);
    if prefetch_chunks == 0 || prefetch_chunks > 256 {
        r.problem(
            "replicate.prefetch_chunks",
            format!("must be between 1 and 256, got {prefetch_chunks}"),
        );
    }
    let read_timeout = r.count("replicate.read_timeout_seconds", 60);
    if read_timeout == 0 {
        r.problem("replicate.read_timeout_seconds", "must be at least 1");
    }
    let replicate = ReplicateSettings {
        on_gap,
        read_timeout: Duration::from_secs(read_timeout.max(1)),
        concurrency: concurrency.clamp(1, 4096) as usize,
        on_failure,
        bad_message,
        max_message_bytes: max_message_bytes as usize,
        parked_file,
        event_deadline,
        prefetch_chunks: prefetch_chunks.clamp(1, 256) as usize,
    };

    let address = r.string("metrics.address", "");
    if !address.is_empty()
        && let Err(e) = check_listen_address(&address)
    {
        r.problem("metrics.address", e);
    }
    let progress = r.count("metrics.progress_interval_seconds", 60);
    let max_age = r.count("metrics.ready_max_event_age_seconds", 900);
    let metrics = MetricsSettings {
        address: (!address.is_empty()).then_some(address),
        progress_interval: (progress > 0).then(|| Duration::from_secs(progress)),
        ready_max_event_age: (max_age > 0).then(|| Duration::from_secs(max_age)),
    };

    if subscribe && let Some(sink) = &sink {
        use sha2::Digest;
        let identity = format!("{}|{}", source.directory, sink.identity());
        let digest = sha2::Sha256::digest(identity.as_bytes());
        input = Some(InputSettings::Subscribe(SubscribeSettings {
            initial_snapshot,
            checkpoint_key: format!("replicate.checkpoint.{}", hex::encode(&digest[..8])),
            checkpoint_interval: Duration::from_secs(checkpoint_seconds.max(1)),
        }));
    }

    #[cfg(test)]
    super::typos::assert_templates_know(&r.read.borrow());
    let typos = super::typos::find(raw, &r.read.borrow());
    let typos = if super::STRICT.load(std::sync::atomic::Ordering::Relaxed) {
        r.problems.extend(typos);
        Vec::new()
    } else {
        typos
    };
    match (input, sink) {
        (Some(input), Some(sink)) if r.problems.is_empty() => Ok(Settings {
            source,
            input,
            sink,
            security,
            replicate,
            metrics,
            typos,
        }),
        _ => Err(ConfigErrors(r.problems)),
    }
}

fn resolve_input(r: &mut Reader, name: &str, cwd: &Path) -> Option<InputSettings> {
    match name {
        "kafka" => resolve_kafka(r, cwd),
        "aws_sqs" => {
            let p = "notification.aws_sqs";
            let queue_name = r.string(&format!("{p}.sqs_queue_name"), "");
            if queue_name.is_empty() {
                r.problem(
                    &format!("{p}.sqs_queue_name"),
                    "is empty; set the queue the filer publishes to",
                );
            }
            let (access_key_id, secret_access_key) = aws_keys(r, p);
            Some(InputSettings::Sqs(SqsSettings {
                access_key_id,
                secret_access_key,
                region: r.string(&format!("{p}.region"), "us-east-2"),
                queue_name,
                queue_url: String::new(),
                endpoint: r.string(&format!("{p}.endpoint"), ""),
                gocdk: false,
                raw: false,
            }))
        }
        "google_pub_sub" => {
            let p = "notification.google_pub_sub";
            let project_id = r.string(&format!("{p}.project_id"), "");
            if project_id.is_empty() {
                r.problem(
                    &format!("{p}.project_id"),
                    "is empty; set the Google Cloud project",
                );
            }
            let topic = r.string(&format!("{p}.topic"), "");
            if topic.is_empty() {
                r.problem(
                    &format!("{p}.topic"),
                    "is empty; set the topic the filer publishes to",
                );
            }
            let mut credentials = r.string(&format!("{p}.google_application_credentials"), "");
            if !credentials.is_empty() && !credentials.trim_start().starts_with('{') {
                credentials = cwd.join(&credentials).display().to_string();
                if !Path::new(&credentials).is_file() {
                    r.problem(
                        &format!("{p}.google_application_credentials"),
                        format!("file {credentials:?} does not exist"),
                    );
                }
            }
            let subscription = r.string(&format!("{p}.subscription"), "seaweedfs_sub");
            Some(InputSettings::PubSub(PubSubSettings {
                credentials,
                project_id,
                topic,
                subscription: if subscription.is_empty() {
                    "seaweedfs_sub".into()
                } else {
                    subscription
                },
            }))
        }
        "gocdk_pub_sub" => resolve_gocdk(r),
        other => {
            r.problem(
                &format!("notification.{other}.enabled"),
                format!("{other} is not an input"),
            );
            None
        }
    }
}

/// gocdk's `sub_url`, mapped onto the native inputs.
fn resolve_gocdk(r: &mut Reader) -> Option<InputSettings> {
    let key = "notification.gocdk_pub_sub.sub_url";
    let url = r.string(key, "");
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (scheme, rest) = url.split_once("://").unwrap_or(("", ""));
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let params = crate::go::query_pairs(query);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string())
    };
    // gocloud reads its boolean parameters with strconv.ParseBool.
    let go_bool = crate::go::parse_bool;
    match scheme {
        "rabbit" if !path.is_empty() => {
            let Some(server_url) = env("RABBIT_SERVER_URL") else {
                r.problem(key, "rabbit:// needs the server in the environment variable RABBIT_SERVER_URL (amqp://user:password@host:5672/)");
                return None;
            };
            let exchange = r
                .string("notification.gocdk_pub_sub.topic_url", "")
                .strip_prefix("rabbit://")
                .unwrap_or("")
                .to_string();
            Some(InputSettings::Rabbit(RabbitSettings {
                server_url,
                queue: path.to_string(),
                exchange,
            }))
        }
        "nats" if !path.is_empty() => {
            let Some(server_url) = env("NATS_SERVER_URL") else {
                r.problem(key, "nats:// needs the server in the environment variable NATS_SERVER_URL (nats://host:4222)");
                return None;
            };
            let durable = r.string("notification.gocdk_pub_sub.durable", "replicate");
            // natspubsub's queryUseV2: present without a value is true.
            let natsv2 = match params
                .iter()
                .filter(|(k, _)| k == "natsv2")
                .collect::<Vec<_>>()
                .as_slice()
            {
                [] => false,
                [(_, v)] if v.is_empty() => true,
                [(_, v)] => go_bool(v).unwrap_or_else(|| {
                    r.problem(
                        key,
                        format!(
                            "natsv2={:?} is not a boolean (true, false, 1, 0) nor empty",
                            crate::config::cut(v)
                        ),
                    );
                    false
                }),
                _ => {
                    r.problem(key, "natsv2 is given more than once");
                    false
                }
            };
            Some(InputSettings::Nats(NatsSettings {
                server_url,
                subject: path.to_string(),
                durable,
                natsv2,
            }))
        }
        "awssqs" if !path.is_empty() => {
            let host = path.split('/').next().unwrap_or("");
            let region = param("region").or_else(|| {
                host.strip_prefix("sqs.")
                    .and_then(|h| h.split('.').next())
                    .map(String::from)
            });
            let raw = match param("raw").filter(|v| !v.is_empty()) {
                None => false,
                Some(v) => go_bool(&v).unwrap_or_else(|| {
                    r.problem(
                        key,
                        format!(
                            "raw={:?} is not a boolean (true, false, 1, 0)",
                            crate::config::cut(&v)
                        ),
                    );
                    false
                }),
            };
            Some(InputSettings::Sqs(SqsSettings {
                region: region.unwrap_or_else(|| "us-east-1".into()),
                queue_name: path.rsplit('/').next().unwrap_or("").to_string(),
                queue_url: format!("https://{path}"),
                // gocloud's AWS parameter for another endpoint (LocalStack, a VPC one).
                endpoint: param("endpoint").unwrap_or_default(),
                gocdk: true,
                raw,
                ..Default::default()
            }))
        }
        "gcppubsub" => {
            let parts: Vec<&str> = path.split('/').collect();
            match parts.as_slice() {
                ["projects", project, "subscriptions", sub]
                    if !project.is_empty() && !sub.is_empty() =>
                {
                    Some(InputSettings::PubSub(PubSubSettings {
                        credentials: env("GOOGLE_APPLICATION_CREDENTIALS").unwrap_or_default(),
                        project_id: project.to_string(),
                        topic: String::new(),
                        subscription: sub.to_string(),
                    }))
                }
                _ => {
                    r.problem(key, format!("{url:?}: expected gcppubsub://projects/<project>/subscriptions/<subscription>"));
                    None
                }
            }
        }
        _ => {
            r.problem(key, format!("{url:?}: expected rabbit://<queue>, nats://<subject>, awssqs://<queue URL host and path> or gcppubsub://projects/<p>/subscriptions/<s>"));
            None
        }
    }
}

fn resolve_kafka(r: &mut Reader, cwd: &Path) -> Option<InputSettings> {
    let p = "notification.kafka";
    let hosts = r.list(&format!("{p}.hosts"));
    if hosts.is_empty() {
        r.problem(
            &format!("{p}.hosts"),
            "is empty; list the Kafka brokers, e.g. [\"localhost:9092\"]",
        );
    }
    let topic = r.string(&format!("{p}.topic"), "");
    if topic.is_empty() {
        r.problem(
            &format!("{p}.topic"),
            "is empty; set the topic the filer publishes to",
        );
    }
    let offset_file = r.string(&format!("{p}.offsetFile"), "./last.offset");
    let offset_file = cwd.join(if offset_file.is_empty() {
        "./last.offset"
    } else {
        &offset_file
    });
    let interval = r.count(&format!("{p}.offsetSaveIntervalSeconds"), 10);
    let sasl = if r.bool(&format!("{p}.sasl_enabled"), false) {
        let mech = r
            .string(&format!("{p}.sasl_mechanism"), "PLAIN")
            .to_uppercase();
        let mechanism = match mech.as_str() {
            "" | "PLAIN" => "PLAIN".to_string(),
            "SCRAM-SHA-256" | "SCRAM-SHA-512" => mech,
            other => {
                r.problem(
                    &format!("{p}.sasl_mechanism"),
                    format!("must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, got {other:?}"),
                );
                "PLAIN".into()
            }
        };
        let username = r.string(&format!("{p}.sasl_username"), "");
        if username.is_empty() {
            r.problem(
                &format!("{p}.sasl_username"),
                "is empty but sasl_enabled is true",
            );
        }
        Some(Sasl {
            mechanism,
            username,
            password: r.string(&format!("{p}.sasl_password"), ""),
        })
    } else {
        None
    };
    let tls = if r.bool(&format!("{p}.tls_enabled"), false) {
        let t = KafkaTls {
            ca_cert: r.string(&format!("{p}.tls_ca_cert"), ""),
            client_cert: r.string(&format!("{p}.tls_client_cert"), ""),
            client_key: r.string(&format!("{p}.tls_client_key"), ""),
            insecure_skip_verify: r.bool(&format!("{p}.tls_insecure_skip_verify"), false),
        };
        if t.client_cert.is_empty() != t.client_key.is_empty() {
            r.problem(
                &format!("{p}.tls_client_cert"),
                "tls_client_cert and tls_client_key must be set together",
            );
        }
        for (k, v) in [
            ("tls_ca_cert", &t.ca_cert),
            ("tls_client_cert", &t.client_cert),
            ("tls_client_key", &t.client_key),
        ] {
            if !v.is_empty() && !cwd.join(v).is_file() {
                r.problem(&format!("{p}.{k}"), format!("file {v:?} does not exist"));
            }
        }
        Some(t)
    } else {
        None
    };
    let group = resolve_group(r, p);
    Some(InputSettings::Kafka(KafkaSettings {
        hosts,
        topic,
        offset_file,
        offset_save_interval: Duration::from_secs(interval),
        sasl,
        tls,
        group,
    }))
}

fn resolve_group(r: &mut Reader, p: &str) -> Option<Box<GroupSettings>> {
    let id = r.string(&format!("{p}.group_id"), "");
    let auto_offset_reset = r
        .string(&format!("{p}.auto_offset_reset"), "earliest")
        .to_lowercase();
    if !matches!(auto_offset_reset.as_str(), "earliest" | "latest") {
        r.problem(
            &format!("{p}.auto_offset_reset"),
            format!("must be \"earliest\" or \"latest\", got {auto_offset_reset:?}"),
        );
    }
    let import_offset_file = r.bool(&format!("{p}.import_offset_file"), false);
    let session = r.count(&format!("{p}.session_timeout_seconds"), 45);
    if !(6..=1800).contains(&session) {
        r.problem(
            &format!("{p}.session_timeout_seconds"),
            format!("must be between 6 and 1800 (what brokers accept by default), got {session}"),
        );
    }
    let grace = r.count(&format!("{p}.revoke_grace_seconds"), 30);
    if grace > 240 {
        r.problem(
            &format!("{p}.revoke_grace_seconds"),
            format!("must be at most 240 (a rebalance waits for it), got {grace}"),
        );
    }
    let assignment = r
        .string(
            &format!("{p}.partition_assignment_strategy"),
            "cooperative-sticky",
        )
        .to_lowercase();
    if !matches!(
        assignment.as_str(),
        "cooperative-sticky" | "roundrobin" | "range"
    ) {
        r.problem(
            &format!("{p}.partition_assignment_strategy"),
            format!("must be cooperative-sticky, roundrobin or range, got {assignment:?}"),
        );
    }
    if id.is_empty() {
        if import_offset_file {
            r.problem(
                &format!("{p}.import_offset_file"),
                "is true but group_id is empty; the offset file is imported into a group",
            );
        }
        return None;
    }
    Some(Box::new(GroupSettings {
        id,
        auto_offset_reset,
        import_offset_file,
        session_timeout: Duration::from_secs(session),
        revoke_grace: Duration::from_secs(grace),
        assignment,
    }))
}

fn resolve_sink(
    r: &mut Reader,
    name: &'static str,
    source: &SourceSettings,
    cwd: &Path,
) -> Option<SinkSettings> {
    let p = format!("sink.{name}");
    match name {
        "local" | "local_incremental" => {
            let dir = r.string(&format!("{p}.directory"), "");
            if dir.is_empty() {
                r.problem(
                    &format!("{p}.directory"),
                    "is empty; set the local directory to replicate into",
                );
                return None;
            }
            let incremental = r.bool(&format!("{p}.is_incremental"), name == "local_incremental");
            Some(SinkSettings::Local {
                name,
                directory: cwd.join(dir),
                incremental,
            })
        }
        "filer" => {
            let grpc_address = r.string("sink.filer.grpcAddress", "");
            check_grpc_address(r, "sink.filer.grpcAddress", &grpc_address);
            let dir = r.string("sink.filer.directory", "");
            let directory = match normalize_dir(&dir) {
                Ok(d) => d,
                Err(e) => {
                    r.problem(
                        "sink.filer.directory",
                        format!(
                            "{dir:?} must be an absolute filer path without . or ..: {}",
                            e.why
                        ),
                    );
                    return None;
                }
            };
            let under = |a: &str, b: &str| matches!((components(a), components(b)), (Ok(a), Ok(b)) if crate::replicate::path::is_equal_or_under(&a, &b));
            if grpc_address.eq_ignore_ascii_case(&source.grpc_address)
                && under(&directory, &source.directory)
                && !source
                    .exclude_directories
                    .iter()
                    .any(|ex| under(&directory, ex))
            {
                r.problem(
                    "sink.filer.directory",
                    format!("{directory:?} is equal to or under source.filer.directory {:?} on the same filer: replication would feed itself", source.directory),
                );
            }
            let ttl_sec = r.int("sink.filer.ttlSec", 0);
            let chunk_concurrency = r.count("sink.filer.chunk_concurrency", 8);
            if chunk_concurrency == 0 || chunk_concurrency > 1024 {
                r.problem(
                    "sink.filer.chunk_concurrency",
                    format!("must be between 1 and 1024, got {chunk_concurrency}"),
                );
            }
            Some(SinkSettings::Filer(FilerSinkOptions {
                grpc_address,
                directory,
                replication: r.string("sink.filer.replication", ""),
                collection: r.string("sink.filer.collection", ""),
                ttl_sec: i32::try_from(ttl_sec).unwrap_or(0),
                disk: r.string("sink.filer.disk", ""),
                data_center: r.string("sink.filer.dataCenter", ""),
                incremental: r.bool("sink.filer.is_incremental", false),
                chunk_concurrency: chunk_concurrency.clamp(1, 1024) as usize,
                https: r.bool("https.client.enabled", false),
                grpc_tls: None,
                journal_dir: None,
            }))
        }
        "s3" => {
            let bucket = r.string("sink.s3.bucket", "");
            if bucket.is_empty() {
                r.problem(
                    "sink.s3.bucket",
                    "is empty; set the (existing) bucket to replicate into",
                );
            }
            let (directory, _) = object_store_dir(r, "sink.s3");
            let (access_key_id, secret_access_key) = aws_keys(r, "sink.s3");
            // uploader_part_size_mb wins; upstream's code reads only uploader_part_size (MiB).
            let part_mb = if r.is_set("sink.s3.uploader_part_size_mb") {
                r.count("sink.s3.uploader_part_size_mb", 8)
            } else {
                match r.count("sink.s3.uploader_part_size", 0) {
                    0 => 8,
                    n => n,
                }
            };
            let max_parts = r.count("sink.s3.uploader_max_upload_parts", 1000);
            if max_parts == 0 || max_parts > 10_000 {
                r.problem(
                    "sink.s3.uploader_max_upload_parts",
                    format!("must be between 1 and 10000, got {max_parts}"),
                );
            }
            let concurrency = r.count("sink.s3.uploader_concurrency", 8);
            if concurrency == 0 || concurrency > 256 {
                r.problem(
                    "sink.s3.uploader_concurrency",
                    format!("must be between 1 and 256, got {concurrency}"),
                );
            }
            let region = r.string("sink.s3.region", "us-east-2");
            Some(SinkSettings::S3(S3SinkOptions {
                access_key_id,
                secret_access_key,
                region: if region.is_empty() {
                    "us-east-2".into()
                } else {
                    region
                },
                bucket,
                directory,
                endpoint: r.string("sink.s3.endpoint", ""),
                acl: r.string("sink.s3.acl", ""),
                incremental: r.bool("sink.s3.is_incremental", false),
                keep_part_size: r.bool("sink.s3.keep_part_size", true),
                max_upload_parts: max_parts.clamp(1, 10_000),
                part_size: part_mb.max(5) * 1024 * 1024,
                concurrency: concurrency.clamp(1, 256) as usize,
                force_path_style: r.bool("sink.s3.s3_force_path_style", true),
            }))
        }
        "google_cloud_storage" => {
            let bucket = r.string(&format!("{p}.bucket"), "");
            if bucket.is_empty() {
                r.problem(
                    &format!("{p}.bucket"),
                    "is empty; set the (existing) bucket to replicate into",
                );
            }
            let (directory, given) = object_store_dir(r, &p);
            let incremental = r.bool(&format!("{p}.is_incremental"), false);
            // util.Join(directory, date, key[len(source.directory):]): no leading `/` when
            // the directory is relative, or empty with a date first or a source directory
            // that ends in `/` (so the rest of the key does not start with one).
            let source_slash = r.string("source.filer.directory", "").ends_with('/');
            let slashless = if given.is_empty() {
                incremental || source_slash
            } else {
                !given.starts_with('/')
            };
            let mut credentials = r.string(&format!("{p}.google_application_credentials"), "");
            if let Some(rest) = credentials.strip_prefix("~/")
                && let Some(home) = std::env::var_os("HOME")
            {
                credentials = std::path::Path::new(&home).join(rest).display().to_string();
            }
            if !credentials.is_empty() && !credentials.trim_start().starts_with('{') {
                credentials = cwd.join(&credentials).display().to_string();
                if !std::path::Path::new(&credentials).is_file() {
                    r.problem(
                        &format!("{p}.google_application_credentials"),
                        format!("file {credentials:?} does not exist"),
                    );
                }
            }
            Some(SinkSettings::Gcs(GcsSinkOptions {
                credentials,
                bucket,
                directory,
                incremental,
                endpoint: r.string(&format!("{p}.endpoint"), ""),
                slashless,
            }))
        }
        "azure" => {
            let account_name = r.string("sink.azure.account_name", "");
            if !(3..=24).contains(&account_name.len())
                || !account_name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                r.problem("sink.azure.account_name", format!("{account_name:?} is not a storage account name (3-24 lowercase letters and digits)"));
            }
            let account_key = r.string("sink.azure.account_key", "");
            // Empty: Entra ID credentials, chosen when the sink starts.
            if !account_key.is_empty()
                && base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    account_key.trim(),
                )
                .is_err()
            {
                r.problem(
                    "sink.azure.account_key",
                    "is not base64 (copy the key as the portal shows it)",
                );
            }
            let container = r.string("sink.azure.container", "");
            if container.is_empty() {
                r.problem(
                    "sink.azure.container",
                    "is empty; set the (existing) container to replicate into",
                );
            }
            let (directory, _) = object_store_dir(r, "sink.azure");
            Some(SinkSettings::Azure(AzureSinkOptions {
                account_name,
                account_key,
                client_id: r.string("sink.azure.client_id", ""),
                endpoint: r.string("sink.azure.endpoint", ""),
                container,
                directory,
                incremental: r.bool("sink.azure.is_incremental", false),
            }))
        }
        "backblaze" => {
            let mut key_id = r.string("sink.backblaze.b2_account_id", "");
            let mut key = r.string("sink.backblaze.b2_master_application_key", "");
            if key_id.is_empty() && key.is_empty() {
                key_id = std::env::var("B2_APPLICATION_KEY_ID").unwrap_or_default();
                key = std::env::var("B2_APPLICATION_KEY").unwrap_or_default();
            }
            if key_id.is_empty() || key.is_empty() {
                r.problem("sink.backblaze.b2_account_id", "b2_account_id (the application key id) and b2_master_application_key must both be set, here or as B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY");
            }
            let bucket = r.string("sink.backblaze.bucket", "");
            if bucket.is_empty() {
                r.problem(
                    "sink.backblaze.bucket",
                    "is empty; set the (existing) bucket to replicate into",
                );
            }
            Some(SinkSettings::B2(B2SinkOptions {
                key_id,
                key,
                bucket,
                directory: object_store_dir(r, "sink.backblaze").0,
                incremental: r.bool("sink.backblaze.is_incremental", false),
                endpoint: r.string("sink.backblaze.endpoint", ""),
            }))
        }
        other => {
            r.problem(
                &format!("{p}.enabled"),
                format!("the {other} sink is not supported by this version"),
            );
            None
        }
    }
}

/// A section's `aws_access_key_id` and `aws_secret_access_key`: both, or neither (the
/// default credential chain).
fn aws_keys(r: &mut Reader, section: &str) -> (String, String) {
    let id = r.string(&format!("{section}.aws_access_key_id"), "");
    let secret = r.string(&format!("{section}.aws_secret_access_key"), "");
    if id.is_empty() != secret.is_empty() {
        r.problem(&format!("{section}.aws_access_key_id"), "aws_access_key_id and aws_secret_access_key must be set together (or both left empty for the default credential chain)");
    }
    (id, secret)
}

/// An object-store sink's `directory`, made absolute (`/` when empty), and as it was
/// given. Upstream accepts relative and empty ones: S3, Azure and B2 strip the leading `/`
/// of object names, so `backup` and `/backup` name the same objects there; GCS does not
/// (see `GcsSinkOptions::slashless`).
fn object_store_dir(r: &mut Reader, section: &str) -> (String, String) {
    let key = format!("{section}.directory");
    let dir = r.string(&key, "/");
    let relative = !dir.starts_with('/');
    let absolute = format!("/{}", dir.trim_start_matches('/'));
    let normalized = normalize_dir(if relative { &absolute } else { &dir }).unwrap_or_else(|e| {
        r.problem(
            &key,
            format!(
                "{:?} must be a path without . or ..: {}",
                crate::config::cut(&dir),
                e.why
            ),
        );
        "/".into()
    });
    (normalized, dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const GOOD: &str = r#"
[source.filer]
grpcAddress = "localhost:18888"
directory = "/buckets/"
excludeDirectories = "/buckets/tmp /buckets/cache"
[sink.local]
enabled = true
directory = "/data"
[notification.kafka]
enabled = true
hosts = ["localhost:9092"]
topic = "seaweedfs_filer"
offsetFile = "./last.offset"
offsetSaveIntervalSeconds = 10
"#;

    fn resolve_text(text: &str) -> Result<Settings, ConfigErrors> {
        resolve(
            &RawConfig::from_toml(text, HashMap::new()),
            Path::new("/work"),
        )
    }

    fn with_input(input: &str) -> String {
        let base = GOOD.split("[notification.kafka]").next().unwrap();
        format!("{base}{input}")
    }

    #[test]
    fn object_store_directories_as_upstream_accepts_them() {
        // (source directory, sink directory, incremental) -> (directory, GCS slashless)
        for (source, dir, inc, want, slashless) in [
            ("/buckets", "backup", false, "/backup", true),
            ("/buckets", "/backup", false, "/backup", false),
            ("/buckets", "", false, "/", false),
            ("/buckets/", "", false, "/", true),
            ("/", "", false, "/", true),
            ("/buckets", "", true, "/", true),
            ("/buckets", "/", true, "/", false),
        ] {
            let text = GOOD
                .replace(
                    "directory = \"/buckets/\"",
                    &format!("directory = \"{source}\""),
                )
                .replace(
                    "[sink.local]\nenabled = true\ndirectory = \"/data\"",
                    &format!(
                        "[sink.google_cloud_storage]\nenabled = true\nbucket = \"b\"\n\
                         directory = \"{dir}\"\nis_incremental = {inc}\n\
                         [sink.s3]\nenabled = false\nbucket = \"b\"\ndirectory = \"{dir}\""
                    ),
                );
            let s = resolve_text(&text).unwrap();
            let SinkSettings::Gcs(g) = &s.sink else {
                panic!("gcs expected")
            };
            assert_eq!(
                (g.directory.as_str(), g.slashless),
                (want, slashless),
                "{source} {dir:?} {inc}"
            );
        }
        let text = GOOD.replace("directory = \"/data\"", "directory = \"a/../../x\"");
        let text = text.replace("[sink.local]", "[sink.s3]\nbucket = \"b\"");
        let e = resolve_text(&text).unwrap_err();
        assert!(e.to_string().contains("sink.s3.directory"), "{e}");
    }

    #[test]
    fn gocdk_urls_map_onto_the_native_inputs() {
        let s = resolve_text(&with_input(
            "[notification.gocdk_pub_sub]\nenabled = true\n\
             sub_url = \"awssqs://sqs.eu-west-1.amazonaws.com/123456789012/filer?region=eu-west-1\"\n",
        ))
        .unwrap();
        let InputSettings::Sqs(q) = &s.input else {
            panic!("sqs expected")
        };
        assert_eq!(q.region, "eu-west-1");
        assert_eq!(q.queue_name, "filer");
        assert_eq!(
            q.queue_url,
            "https://sqs.eu-west-1.amazonaws.com/123456789012/filer"
        );
        assert!(q.gocdk && !q.raw && q.endpoint.is_empty());
        let s = resolve_text(&with_input(
            "[notification.gocdk_pub_sub]\nenabled = true\n\
             sub_url = \"awssqs://h:1/1/q?raw=true&endpoint=http%3A%2F%2Fh%3A1\"\n",
        ))
        .unwrap();
        let InputSettings::Sqs(q) = &s.input else {
            panic!("sqs expected")
        };
        assert!(q.raw && q.endpoint == "http://h:1", "{q:?}");
        let e = resolve_text(&with_input(
            "[notification.gocdk_pub_sub]\nenabled = true\nsub_url = \"awssqs://h/1/q?raw=yes\"\n",
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("raw=\"yes\" is not a boolean"),
            "{e}"
        );
        let s = resolve_text(&with_input(
            "[notification.gocdk_pub_sub]\nenabled = true\nsub_url = \"gcppubsub://projects/p1/subscriptions/s1\"\n",
        ))
        .unwrap();
        let InputSettings::PubSub(p) = &s.input else {
            panic!("pubsub expected")
        };
        assert_eq!(
            (p.project_id.as_str(), p.subscription.as_str()),
            ("p1", "s1")
        );
        assert!(
            p.topic.is_empty(),
            "a subscription URL names no topic to create"
        );
        for (url, want) in [
            (
                "gcppubsub://projects/p1/topics/t",
                "expected gcppubsub://projects/",
            ),
            ("kafka://x", "expected rabbit://"),
        ] {
            let e = resolve_text(&with_input(&format!(
                "[notification.gocdk_pub_sub]\nenabled = true\nsub_url = \"{url}\"\n"
            )))
            .unwrap_err();
            assert!(e.to_string().contains(want), "{url}: {e}");
        }
        if std::env::var_os("RABBIT_SERVER_URL").is_none() {
            let e = resolve_text(&with_input(
                "[notification.gocdk_pub_sub]\nenabled = true\nsub_url = \"rabbit://q\"\n",
            ))
            .unwrap_err();
            assert!(e.to_string().contains("RABBIT_SERVER_URL"), "{e}");
        }
    }

    #[test]
    fn queue_inputs_and_the_metadata_log() {
        let s = resolve_text(&with_input(
            "[notification.aws_sqs]\nenabled = true\nsqs_queue_name = \"q\"\nendpoint = \"http://localhost:4566\"\n",
        ))
        .unwrap();
        assert!(
            matches!(&s.input, InputSettings::Sqs(q) if q.queue_name == "q" && q.endpoint == "http://localhost:4566")
        );
        let s = resolve_text(&with_input(
            "[notification.google_pub_sub]\nenabled = true\nproject_id = \"p\"\ntopic = \"t\"\n",
        ))
        .unwrap();
        assert!(
            matches!(&s.input, InputSettings::PubSub(p) if p.subscription == "seaweedfs_sub"),
            "upstream's subscription name by default"
        );
        let subscribe = GOOD
            .split("[notification.kafka]")
            .next()
            .unwrap()
            .replace("[source.filer]\n", "[source.filer]\nsubscribe = true\n");
        let s = resolve_text(&subscribe).unwrap();
        let InputSettings::Subscribe(a) = &s.input else {
            panic!("subscribe expected")
        };
        let other =
            resolve_text(&subscribe.replace("directory = \"/data\"", "directory = \"/other\""))
                .unwrap();
        let InputSettings::Subscribe(b) = &other.input else {
            panic!("subscribe expected")
        };
        assert_ne!(
            a.checkpoint_key, b.checkpoint_key,
            "one checkpoint per sink"
        );
        let e =
            resolve_text(&GOOD.replace("[source.filer]\n", "[source.filer]\nsubscribe = true\n"))
                .unwrap_err();
        assert!(e.to_string().contains("use one input"), "{e}");
        let e = resolve_text(&GOOD.replace(
            "[source.filer]\n",
            "[source.filer]\ninitial_snapshot = true\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("only with subscribe"), "{e}");
    }

    #[test]
    fn good_config_resolves() {
        let s = resolve_text(GOOD).unwrap();
        assert_eq!(s.source.directory, "/buckets");
        assert_eq!(
            s.source.exclude_directories,
            vec!["/buckets/tmp", "/buckets/cache"]
        );
        let InputSettings::Kafka(k) = &s.input else {
            panic!("kafka input expected")
        };
        assert_eq!(k.offset_file, PathBuf::from("/work/./last.offset"));
        assert_eq!(k.offset_save_interval, Duration::from_secs(10));
        assert_eq!(s.sink.name(), "local");
        assert_eq!(s.replicate.on_failure, FailurePolicy::Park);
    }

    #[test]
    fn group_mode_keys() {
        let s = resolve_text(GOOD).unwrap();
        let InputSettings::Kafka(k) = &s.input else {
            panic!("kafka input expected")
        };
        assert!(k.group.is_none(), "the offset file stays the default");
        let s = resolve_text(&GOOD.replace(
            "offsetSaveIntervalSeconds = 10",
            "group_id = \"replicas\"\nauto_offset_reset = \"Latest\"\nimport_offset_file = true\nsession_timeout_seconds = 10",
        ))
        .unwrap();
        let InputSettings::Kafka(k) = &s.input else {
            panic!("kafka input expected")
        };
        let g = k.group.as_ref().unwrap();
        assert_eq!(
            (
                g.id.as_str(),
                g.auto_offset_reset.as_str(),
                g.import_offset_file
            ),
            ("replicas", "latest", true)
        );
        assert_eq!(g.session_timeout, Duration::from_secs(10));
        assert_eq!(g.assignment, "cooperative-sticky");
        let errs = resolve_text(&GOOD.replace(
            "offsetSaveIntervalSeconds = 10",
            "auto_offset_reset = \"newest\"\nimport_offset_file = true\nsession_timeout_seconds = 2\npartition_assignment_strategy = \"sticky\"",
        ))
        .unwrap_err()
        .0;
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "notification.kafka.auto_offset_reset",
                "notification.kafka.session_timeout_seconds",
                "notification.kafka.partition_assignment_strategy",
                "notification.kafka.import_offset_file",
            ]
        );
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let text = r#"
[source.filer]
grpcAddress = "localhost"
directory = "buckets"
[sink.local]
enabled = true
directory = "/a"
[sink.s3]
enabled = true
[notification.kafka]
enabled = true
hosts = []
topic = "t"
sasl_enabled = true
sasl_mechanism = "GSSAPI"
sasl_username = "u"
[notification.aws_sqs]
enabled = true
"#;
        let errs = resolve_text(text).unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "source.filer.grpcAddress",
                "source.filer.directory",
                "notification.kafka.enabled",
                "sink.s3.enabled",
            ],
            "{errs:#?}"
        );
        assert!(
            errs[2]
                .message
                .contains("notification.aws_sqs, notification.kafka"),
            "{}",
            errs[2]
        );
    }

    #[test]
    fn nothing_enabled_and_empty_directory_are_errors() {
        let errs = resolve_text("[source.filer]\ngrpcAddress = \"h:1\"\n")
            .unwrap_err()
            .0;
        let text: Vec<String> = errs.iter().map(|p| p.to_string()).collect();
        assert_eq!(errs.len(), 3, "{text:#?}");
        assert!(text[0].contains("source.filer.directory: is empty"));
        assert!(text[1].contains("no input is enabled"));
        assert!(text[2].contains("no sink is enabled"));
    }

    #[test]
    fn kafka_key_checks() {
        let text = GOOD.replace("offsetSaveIntervalSeconds = 10", "sasl_enabled = true\nsasl_mechanism = \"scram-sha-512\"\nsasl_username = \"\"\ntls_enabled = true\ntls_client_cert = \"/nonexistent.pem\"");
        let errs = resolve_text(&text).unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "notification.kafka.sasl_username",
                "notification.kafka.tls_client_cert",
                "notification.kafka.tls_client_cert"
            ]
        );
    }

    #[test]
    fn grpc_tls_prefers_client_cert_and_needs_all_three() {
        let with = |extra: &str| resolve_text(&format!("{GOOD}\n{extra}"));
        let s = with("[grpc]\nca = \"/ca.pem\"\n[grpc.client]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_cert = \"/cc.pem\"\nclient_key = \"/ck.pem\"").unwrap();
        let t = s.security.grpc_tls.unwrap();
        assert_eq!(
            (t.ca.to_str(), t.cert.to_str(), t.key.to_str()),
            (Some("/ca.pem"), Some("/cc.pem"), Some("/ck.pem"))
        );
        let s =
            with("[grpc]\nca = \"/ca.pem\"\n[grpc.client]\ncert = \"/c.pem\"\nkey = \"/k.pem\"")
                .unwrap();
        assert_eq!(s.security.grpc_tls.unwrap().cert.to_str(), Some("/c.pem"));
        assert!(
            with("[grpc]\nca = \"/ca.pem\"")
                .unwrap()
                .security
                .grpc_tls
                .is_none(),
            "no client pair: plaintext, as upstream"
        );
        let errs = with("[grpc.client]\nclient_cert = \"/cc.pem\"")
            .unwrap_err()
            .0;
        assert_eq!(errs[0].key, "grpc.client.client_cert");
    }

    #[test]
    fn filer_sink_inside_source_on_same_filer_is_refused() {
        let text = GOOD.replace("[sink.local]\nenabled = true", "[sink.filer]\nenabled = true\ngrpcAddress = \"localhost:18888\"\ndirectory = \"/buckets/backup\"\n[sink.local]\nenabled = false");
        let errs = resolve_text(&text).unwrap_err().0;
        assert!(
            errs.iter()
                .any(|p| p.key == "sink.filer.directory" && p.message.contains("feed itself")),
            "{errs:#?}"
        );
    }
}

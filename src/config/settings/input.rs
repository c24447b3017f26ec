//! The input: `[notification.*]` (in upstream's precedence order), gocdk URLs, or the
//! source filer's metadata log (`[source.filer] subscribe`).

use super::*;

#[derive(Debug, Clone)]
pub(crate) enum InputSettings {
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
    pub(crate) fn name(&self) -> &'static str {
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
pub(crate) struct SqsSettings {
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
pub(crate) struct PubSubSettings {
    /// A credentials file path (or inline JSON); empty: application default credentials.
    pub credentials: String,
    pub project_id: String,
    /// Created when missing (with the subscription); empty when only a subscription is named.
    pub topic: String,
    /// Ours; upstream hard-codes `seaweedfs_sub`, so replicators split the stream.
    pub subscription: String,
    /// `PUBSUB_EMULATOR_HOST`, as Google's clients read it.
    pub emulator_host: Option<String>,
}

/// A RabbitMQ queue (gocdk's `rabbit://`).
#[derive(Clone)]
pub(crate) struct RabbitSettings {
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
pub(crate) struct NatsSettings {
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
pub(crate) struct SubscribeSettings {
    /// Seed the sink from a walk of the live tree when there is no checkpoint yet.
    pub initial_snapshot: bool,
    /// Where to start when there is no checkpoint yet (`start_from`); `None`: the
    /// filer's whole retained log.
    pub start_from: Option<StartFrom>,
    /// Where to start whatever the checkpoint says (the command line's `-timeAgo` or
    /// `-fromTsMs`, as upstream's `filer.backup` and `filer.sync`).
    pub start_over: Option<StartFrom>,
    /// Where the checkpoint lives in the source filer's KV store: distinct per source
    /// directory, sink kind and destination (`filer.backup`: upstream's own key, which
    /// is not text).
    pub checkpoint_key: Vec<u8>,
    /// Where to look when `checkpoint_key` has nothing (`filer.backup`: the key older
    /// versions of weed's used).
    pub legacy_checkpoint_key: Option<Vec<u8>>,
    /// Several sinks: the key this set of sinks used before (its first sink changed),
    /// to carry the checkpoint over from when `checkpoint_key` has nothing.
    pub previous_checkpoint_key: Option<Vec<u8>>,
    pub checkpoint_interval: Duration,
}

/// A position in the source filer's metadata log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartFrom {
    /// A moment, in nanoseconds since the Unix epoch.
    At(i64),
    /// This long before the process started.
    Ago(Duration),
}

impl StartFrom {
    /// `start_from`'s forms: Unix milliseconds (digits only, as `filer.sync
    /// -a.fromTsMs`), an RFC 3339 time (`2026-12-01T00:00:00Z`), or a duration meaning
    /// that long ago, in Go's syntax (`36h`, `1h30m`, as `filer.backup -timeAgo`).
    pub(crate) fn parse(text: &str) -> Option<StartFrom> {
        let text = text.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let ms: i64 = text.parse().ok()?;
            return ms.checked_mul(1_000_000).map(StartFrom::At);
        }
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
            return t.timestamp_nanos_opt().map(StartFrom::At);
        }
        let ns = crate::go::parse_duration(text)?;
        (ns >= 0).then(|| StartFrom::Ago(Duration::from_nanos(ns as u64)))
    }

    /// The position in nanoseconds since the epoch, for a process started at `now_ns`.
    pub(crate) fn ns(self, now_ns: i64) -> i64 {
        match self {
            StartFrom::At(ns) => ns,
            StartFrom::Ago(d) => {
                now_ns.saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            }
        }
    }
}

impl std::fmt::Display for StartFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFrom::At(ns) => write!(
                f,
                "{}",
                chrono::DateTime::from_timestamp_nanos(*ns)
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
            StartFrom::Ago(d) => write!(f, "{d:?} ago"),
        }
    }
}

/// `[notification.kafka]`.
#[derive(Debug, Clone)]
pub(crate) struct KafkaSettings {
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

/// Where a consumer group's partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    /// librdkafka's `auto.offset.reset` value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// `[notification.kafka]` keys of consumer-group mode.
#[derive(Debug, Clone)]
pub(crate) struct GroupSettings {
    pub id: String,
    /// Where a partition without a committed offset starts.
    pub auto_offset_reset: OffsetReset,
    /// Start a group that has no committed offsets from the offset file (then renamed).
    pub import_offset_file: bool,
    /// After this long without a heartbeat, a member's partitions go to the others.
    pub session_timeout: Duration,
    /// How long in-flight events of a partition taken away may finish before they are
    /// abandoned (the next owner delivers them again).
    pub revoke_grace: Duration,
    /// librdkafka's `partition.assignment.strategy`.
    pub assignment: AssignmentStrategy,
}

/// How a consumer group spreads partitions over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AssignmentStrategy {
    /// Moves only the partitions that must move; the others keep working meanwhile.
    CooperativeSticky,
    RoundRobin,
    Range,
}

impl AssignmentStrategy {
    /// librdkafka's name for it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            AssignmentStrategy::CooperativeSticky => "cooperative-sticky",
            AssignmentStrategy::RoundRobin => "roundrobin",
            AssignmentStrategy::Range => "range",
        }
    }
}

impl std::fmt::Display for AssignmentStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone)]
pub(crate) struct KafkaTls {
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
    pub insecure_skip_verify: bool,
}

/// What `[source.filer]` says about the metadata-log input. It is completed once the sink
/// is known: its checkpoint key names both.
pub(super) struct Subscribe {
    pub(super) enabled: bool,
    initial_snapshot: bool,
    start_from: Option<StartFrom>,
    checkpoint_seconds: u64,
}

/// The enabled input, and the metadata log's settings.
pub(super) fn resolve_inputs(r: &mut Reader, cwd: &Path) -> (Option<InputSettings>, Subscribe) {
    let subscribe = r.bool("source.filer.subscribe", false);
    let initial_snapshot = r.bool("source.filer.initial_snapshot", false);
    let start_text = r.string("source.filer.start_from", "");
    let start_from = if start_text.is_empty() {
        None
    } else {
        let start = StartFrom::parse(&start_text);
        if start.is_none() {
            r.problem(
                "source.filer.start_from",
                format!(
                    "must be a time (RFC 3339, e.g. 2026-12-01T00:00:00Z), Unix milliseconds \
                     (as -a.fromTsMs) or a duration ago (as -timeAgo, e.g. 36h), got {:?}",
                    crate::text::cut(&start_text)
                ),
            );
        }
        start
    };
    let checkpoint_seconds = r.count("source.filer.checkpoint_interval_seconds", 3);
    let inputs = enabled_sections(r, "notification", &INPUTS);
    let input = match inputs.as_slice() {
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
        [one] => resolve_input(r, one, cwd),
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
    if !start_text.is_empty() && !subscribe {
        r.problem(
            "source.filer.start_from",
            "works only with subscribe = true (it is a position in the filer's metadata log)",
        );
    }
    if start_from.is_some() && initial_snapshot {
        r.problem(
            "source.filer.start_from",
            "and initial_snapshot both say where a first start begins; keep one",
        );
    }
    (
        input,
        Subscribe {
            enabled: subscribe,
            initial_snapshot,
            start_from,
            checkpoint_seconds,
        },
    )
}

/// The metadata-log input for this source and sink.
pub(super) fn subscribe_input(
    subscribe: &Subscribe,
    source: &SourceSettings,
    sinks: &[SinkChoice],
) -> InputSettings {
    use sha2::Digest;
    // The first sink's: a sink added beside it keeps the checkpoint (the new one is
    // reconciled with the source when it joins, see `crate::fanout`).
    let first = sinks
        .first()
        .map(|s| s.settings.identity())
        .unwrap_or_default();
    let identity = format!("{}|{first}", source.directory);
    let digest = sha2::Sha256::digest(identity.as_bytes());
    InputSettings::Subscribe(SubscribeSettings {
        initial_snapshot: subscribe.initial_snapshot,
        start_from: subscribe.start_from,
        start_over: None,
        checkpoint_key: format!("replicate.checkpoint.{}", hex::encode(&digest[..8])).into_bytes(),
        legacy_checkpoint_key: None,
        previous_checkpoint_key: None,
        checkpoint_interval: Duration::from_secs(subscribe.checkpoint_seconds.max(1)),
    })
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
            let credentials = google_credentials(r, p, cwd, false);
            let subscription = r.string(&format!("{p}.subscription"), "seaweedfs_sub");
            Some(InputSettings::PubSub(PubSubSettings {
                credentials,
                project_id,
                topic,
                emulator_host: r.env("PUBSUB_EMULATOR_HOST"),
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
    // The variables gocdk reads, from the environment the configuration came with.
    let vars: std::collections::HashMap<&str, Option<String>> = [
        "RABBIT_SERVER_URL",
        "NATS_SERVER_URL",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ]
    .into_iter()
    .map(|name| (name, r.env(name)))
    .collect();
    let env = |name: &str| vars.get(name).cloned().flatten();
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
                            crate::text::cut(v)
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
                            crate::text::cut(&v)
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
                        emulator_host: env("PUBSUB_EMULATOR_HOST"),
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
            if !v.is_empty() && !r.is_file(&cwd.join(v)) {
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
    let reset = r
        .string(&format!("{p}.auto_offset_reset"), "earliest")
        .to_lowercase();
    let auto_offset_reset = match reset.as_str() {
        "latest" => OffsetReset::Latest,
        "earliest" => OffsetReset::Earliest,
        _ => {
            r.problem(
                &format!("{p}.auto_offset_reset"),
                format!("must be \"earliest\" or \"latest\", got {reset:?}"),
            );
            OffsetReset::Earliest
        }
    };
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
    let assignment = match assignment.as_str() {
        "cooperative-sticky" => AssignmentStrategy::CooperativeSticky,
        "roundrobin" => AssignmentStrategy::RoundRobin,
        "range" => AssignmentStrategy::Range,
        _ => {
            r.problem(
                &format!("{p}.partition_assignment_strategy"),
                format!("must be cooperative-sticky, roundrobin or range, got {assignment:?}"),
            );
            AssignmentStrategy::CooperativeSticky
        }
    };
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

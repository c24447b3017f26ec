//! `replicate scaffold`: complete configuration templates.
//!
//! Every key of upstream's templates is here, with the same defaults; comments are
//! our own. "[better]" marks where this implementation behaves better than
//! `weed filer.replicate`.

/// The template for a logical file name, if there is one.
pub(crate) fn template(name: &str) -> Option<&'static str> {
    match name {
        "replication" => Some(REPLICATION),
        "notification" => Some(NOTIFICATION),
        "security" => Some(SECURITY),
        _ => None,
    }
}

pub(crate) const REPLICATION: &str = r#"# replication.toml: what to replicate, and where to.
# Read by `replicate` (and by `weed filer.replicate`) from -config_dir, ., $HOME/.seaweedfs,
# /usr/local/etc/seaweedfs or /etc/seaweedfs. Any key can be overridden by an environment
# variable: WEED_ + the key in upper case with dots as underscores (WEED_SINK_LOCAL_DIRECTORY).

[source.filer]
enabled = true
# gRPC address of the source filer: host:port, where port is the filer's HTTP port + 10000.
grpcAddress = "localhost:18888"
# Only changes at or under this directory are replicated.
# [better] an empty or relative directory is a configuration error, not a silent no-op.
directory = "/buckets"
# Directories (with everything under them) to leave out; a list or a space-separated string.
excludeDirectories = "/buckets/tmp"
# [better] As filer.backup's -filerExcludeFileNames, for every input: files whose name
# matches one of these comma-separated wildcards (* any run, ? one character) are left
# out; a rename onto such a name deletes the file from the sink, a rename off it copies it.
excludeFileNames = ""
# [better] As filer.backup's -filerExcludePathPatterns, for every input: an entry with a
# name, or a directory above it under `directory`, matching one of these wildcards is left
# out with everything under it ("*.tmp,.snapshot,temp*").
excludePathPatterns = ""
# As filer.backup's -filerExcludeFileName (deprecated upstream; prefer excludeFileNames): files
# whose name this regular expression (Go's RE2 syntax) matches anywhere are left out.
excludeFileNameRegexp = ""
# Volume servers in this data center are read from first.
dataCenter = ""
# [better] As filer.sync's -a.filerProxy and filer.backup's -filerProxy: read file content
# through this filer's HTTP API instead of from the volume servers, for when only the filer
# can be reached from here (Kubernetes, NAT, a firewall).
filerProxy = false
# The filer's HTTP host:port for filerProxy; empty: grpcAddress with its port less 10000.
httpAddress = ""
# [better] Recommended: read the changes from this filer's own metadata log instead of a
# queue. No broker to run, and nothing the filer failed to publish is missed. Progress is
# a checkpoint in the filer's KV store. With subscribe = true, enable no [notification.*].
subscribe = false
# With subscribe and no checkpoint yet: copy the live tree first, then follow the log
# (without it, the filer's whole retained log is replayed).
initial_snapshot = false
# [better] With subscribe and no checkpoint yet: start the log here instead (as
# filer.backup -timeAgo and filer.sync -a.fromTsMs): a time ("2026-12-01T00:00:00Z"),
# Unix milliseconds ("1796083200000") or a duration ago ("36h"). The command line's
# -timeAgo or -fromTsMs start there even over a checkpoint.
start_from = ""
checkpoint_interval_seconds = 3

# One sink is fed: as upstream, the first enabled of azure, backblaze, filer,
# google_cloud_storage, local_incremental, local, s3 (a warning names the others).
# [better] Several sinks from one input, each chunk read from the source once for all of
# them: name each sink's section [sink.<kind>.<name>] (lower-case letters, digits, _ and
# -), with the keys of [sink.<kind>]; every enabled named section is fed, beside the
# first enabled unnamed one. Each sink has its own backlog, progress, failure policy,
# parked file (sinks/<kind>.<name>/ beside [replicate] parked_file) and metrics labels.
# For example, a failover cluster and an S3 backup:
#   [sink.filer.failover]
#   enabled = true
#   grpcAddress = "dr-filer:18888"
#   directory = "/backup"
#   [sink.s3.offsite]
#   enabled = true
#   bucket = "backups"
#   deletes = "keep"

[sink.local]
enabled = false
directory = "/data"
# Put each change under a YYYY-MM-DD directory (local time of the entry's mtime).
is_incremental = false
# [better] What the sink does when the source deletes: "mirror" deletes too, and a rename
# moves (upstream filer.replicate); "keep" keeps what the source deletes, and a rename
# adds the new name beside the old one (filer.backup without -doDeleteFiles); "trash"
# moves what the source deletes to <directory>/<trash_directory>/<day of the delete>/
# and removes it after trash_retention_days (0: never). Dated copies (is_incremental)
# are never deleted either way.
deletes = "mirror"
trash_directory = ".replicate-trash"
trash_retention_days = 30
# [better] With is_incremental: dated directories older than this many days are removed,
# at start and daily (filer.backup's -retentionDays); 0 keeps them for ever.
retention_days = 0
# [better] This sink's own [replicate] on_failure ("park" or "hold"); empty: that one.
on_failure = ""
# [better] keeps mode, mtime, symlinks and directories; writes atomically; deletes recursively.

[sink.local_incremental]
enabled = false
directory = "/data"
is_incremental = true
deletes = "mirror"
trash_directory = ".replicate-trash"
trash_retention_days = 30
retention_days = 0
on_failure = ""

[sink.filer]
enabled = false
# gRPC address of the target filer (another cluster, or the source filer itself).
grpcAddress = "localhost:18888"
# [better] a directory equal to or under source.filer.directory on the same filer is refused.
directory = "/backup"
# Volume settings for the copied chunks (empty: the target's defaults and path rules).
replication = ""
collection = ""
ttlSec = 0
disk = ""
dataCenter = ""
is_incremental = false
deletes = "mirror"
trash_directory = ".replicate-trash"
trash_retention_days = 30
retention_days = 0
on_failure = ""
# Chunk copies in flight across all files (upstream: 32, fixed); memory ≈ this × chunk size.
chunk_concurrency = 8

[sink.s3]
enabled = false
# Empty keys use the AWS default credential chain.
aws_access_key_id = ""
aws_secret_access_key = ""
region = "us-east-2"
# The bucket must exist.
bucket = "your_bucket_name"
directory = "/"
endpoint = ""
# A canned ACL for every object ([better] upstream reads it but never applies it).
acl = ""
is_incremental = false
deletes = "mirror"
trash_directory = ".replicate-trash"
trash_retention_days = 30
retention_days = 0
on_failure = ""
keep_part_size = true
uploader_max_upload_parts = 1000
# [better] honoured (upstream reads only the misspelt uploader_part_size, also accepted here).
uploader_part_size_mb = 8
uploader_concurrency = 8
s3_disable_content_md5_validation = true
s3_force_path_style = true

[sink.google_cloud_storage]
enabled = false
# A credentials JSON file, inline JSON, or empty for application default credentials.
google_application_credentials = "/path/to/x.json"
bucket = "your_bucket_seaweedfs"
directory = "/"
is_incremental = false
deletes = "mirror"
trash_directory = ".replicate-trash"
trash_retention_days = 30
retention_days = 0
on_failure = ""
# [better] an emulator or private endpoint (STORAGE_EMULATOR_HOST works too); empty: Google.
endpoint = ""

[sink.azure]
enabled = false
account_name = ""
# The account's shared key; empty: Entra ID (workload identity, managed identity, or
# AZURE_CLIENT_ID + AZURE_CLIENT_SECRET + AZURE_TENANT_ID).
account_key = ""
# A user-assigned managed identity's or workload identity's client id.
client_id = ""
endpoint = ""
container = "mycontainer"
directory = "/"
is_incremental = false
deletes = "mirror"
trash_directory = ".replicate-trash"
trash_retention_days = 30
retention_days = 0
on_failure = ""

[sink.backblaze]
enabled = false
# The application key id and key; both empty: B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY.
b2_account_id = ""
b2_master_application_key = ""
# Not needed: authorization tells the account's region (upstream never read it either).
b2_region = ""
bucket = "mybucket"
directory = "/"
is_incremental = false
deletes = "mirror"
trash_directory = ".replicate-trash"
trash_retention_days = 30
retention_days = 0
on_failure = ""
# [better] where to authorize; empty: https://api.backblazeb2.com.
endpoint = ""

# Settings only `replicate` has.
[replicate]
# Events in flight per ordered stream (Kafka partition, queue, metadata log). Events on the
# same path, or on a directory and what is under it, still run in order. Each holds its
# file's data and a connection's buffers: 32 kept up with both clusters on two cores.
concurrency = 32
# What happens to an event that cannot be replicated (a malformed message, an unsafe path,
# a chunk gone from the source, or its own retryable errors for longer than
# event_deadline_seconds; outages of the source or target are waited out, never parked):
#   "park": record it in parked_file (key, partition, offset, error, payload) and go on;
#   "hold": upstream's way: go on, but never commit past it, so a restart replays from it.
on_failure = "park"
# A message that is not an event at all (no key, too large, not an EventNotification):
#   "park": count it, log it with its queue position, park it and acknowledge it;
#   "stop": the input goes no further than it (nothing after it is processed).
bad_message = "park"
max_message_bytes = 67108864
parked_file = "./replicate.parked.jsonl"
event_deadline_seconds = 300
# Chunks of one file fetched ahead of the one being written.
prefetch_chunks = 4
# Chunk data read from the source and not yet written, in MiB, for the whole process
# (every file, every sink): reads wait for room. A chunk larger than this takes it all.
memory_budget_mb = 16
# A volume server silent this long during a read is given up for the next replica.
read_timeout_seconds = 60
# When the input can tell it missed events (a Kafka offset out of range: retention deleted
# unread messages, or the topic was re-created), it logs an ERROR and counts
# replicate_gaps_total, then:
#   "reconcile": goes on, and makes the sink equal to the source in the background;
#   "stop": goes no further (/readyz says why) until an operator acts;
#   "ignore": goes on.
on_gap = "reconcile"
# [better] With several sinks (named sections, see [sink.local] above): each chunk read
# from the source is kept for the other sinks, in a cache of at most this many MiB shared
# by all of them (with prefetch_chunks, the whole memory budget for file content).
shared_read_cache_mb = 128
# [better] With several sinks, each has a backlog of its own on disk (beside parked_file,
# in sinks/<name>/), so one that is down or slow holds back neither the others nor the
# input. A backlog that would grow past this many events is dropped, and the sink is
# reconciled with the source when it is back (as on_gap = "reconcile" does); so is a
# sink that joins (its backlog is new), once.
backlog_max_events = 10000000

[metrics]
# Serve Prometheus metrics at /metrics, plus /healthz (the process is up) and /readyz (the
# input and the sink are reachable), on host:port or :port. Empty: no listener.
# -metrics.address on the command line overrides it.
address = ""
# Log a one-line progress summary (events/s, in flight, Kafka lag) this often; 0: never.
progress_interval_seconds = 60
# /readyz fails while the oldest event taken from the input and not finished has waited
# longer than this (a stuck sink or source is an outage an orchestrator should see); 0: never.
ready_max_event_age_seconds = 900
"#;

pub(crate) const NOTIFICATION: &str = r#"# notification.toml: where the filer publishes its metadata changes, and where
# `replicate` reads them. Exactly one input may be enabled. [notification.log] and
# [notification.webhook] are publisher-only: the filer uses them, replicate cannot read them.

[notification.log]
enabled = false

[notification.kafka]
enabled = false
hosts = [
    "localhost:9092"
]
topic = "seaweedfs_filer"
# Progress per partition, in upstream's JSON format; both tools can read each other's file.
# [better] written atomically, on the interval and on shutdown; only offsets whose events
# (and every earlier one of their partition) reached the sink are stored.
offsetFile = "./last.offset"
offsetSaveIntervalSeconds = 10
# [better] Scale out: set a consumer group and run several replicate processes with the
# same configuration; the partitions are shared among them and move when one comes or goes.
# Offsets are then committed to the broker (every offsetSaveIntervalSeconds, and whenever
# a partition moves), only for events the sink has; the offset file is not used.
group_id = ""
# Where a partition the group has never committed starts: "earliest" or "latest".
auto_offset_reset = "earliest"
# Start a group that has committed nothing from offsetFile, once (the file is then
# renamed to <offsetFile>.imported). For moving from one process to a group.
import_offset_file = false
# A member silent this long (killed, hung, cut off) loses its partitions to the others.
session_timeout_seconds = 45
# When a partition moves away, its events in flight get this long to finish; the rest are
# left to the next owner, which starts after the last one finished.
revoke_grace_seconds = 30
# cooperative-sticky moves only the partitions that must move; roundrobin or range stop
# every member at each change (for brokers without incremental rebalancing).
partition_assignment_strategy = "cooperative-sticky"
sasl_enabled = false
# PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
sasl_mechanism = "PLAIN"
sasl_username = ""
sasl_password = ""
tls_enabled = false
# PEM files: CA, and for mutual TLS the client certificate and key.
tls_ca_cert = ""
tls_client_cert = ""
tls_client_key = ""
tls_insecure_skip_verify = false

[notification.aws_sqs]
enabled = false
# Empty keys use the AWS default credential chain.
aws_access_key_id = ""
aws_secret_access_key = ""
region = "us-east-2"
# The name of an existing queue. Bodies may be the raw protobuf (as the filer sends them)
# or base64; the key is the message attribute "key". Standard queues do not keep order.
sqs_queue_name = "my_filer_queue"
# [better] an SQS-compatible endpoint (LocalStack, ElasticMQ, a VPC endpoint); empty: AWS.
endpoint = ""

[notification.google_pub_sub]
enabled = false
google_application_credentials = "/path/to/x.json"
project_id = ""
# Created if it does not exist.
topic = "seaweedfs_filer_topic"
# [better] the subscription to read (created on the topic if missing). Upstream always uses
# seaweedfs_sub, so several replicators split the stream; give each its own to each get all.
subscription = "seaweedfs_sub"

[notification.gocdk_pub_sub]
enabled = false
# rabbit://<exchange> (server from RABBIT_SERVER_URL); replicate reads sub_url and declares
# upstream's queue and dead-letter topology on this exchange when the queue is missing.
topic_url = "rabbit://myexchange"
# rabbit://<queue>, nats://<subject> (NATS_SERVER_URL; add ?natsv2 when the filer's
# topic_url has it), awssqs://<queue URL without https://> (?region=, &endpoint=, &raw=true),
# or gcppubsub://projects/<project>/subscriptions/<subscription>.
sub_url = "rabbit://myqueue"
# [better] nats:// with JetStream: the durable consumer's name (acknowledged delivery).
durable = "replicate"

[notification.webhook]
enabled = false
endpoint = "https://your-server.com/webhook"
bearer_token = ""
timeout_seconds = 10
max_retries = 3
backoff_seconds = 3
max_backoff_seconds = 30
workers = 5
buffer_size = 10000
"#;

pub(crate) const SECURITY: &str = r#"# security.toml: keys and certificates shared by the SeaweedFS components.
# replicate uses [grpc] ca with [grpc.client] client_cert/client_key (or cert/key) for
# mutual TLS to the filers, jwt.signing.read (to read chunks from volume servers that
# require it) and https.client (https to volume servers). [better] the read token is sent on
# every chunk read; upstream's filer sink sends none.

[cors.allowed_origins]
values = "*"

[jwt.signing]
key = ""
expires_after_seconds = 10

[access]
ui = false

[filer.expose_directory_metadata]
enabled = true

[jwt.signing.read]
key = ""
expires_after_seconds = 10

[jwt.filer_signing]
key = ""
expires_after_seconds = 10

[jwt.filer_signing.read]
key = ""
expires_after_seconds = 10

[grpc]
ca = ""
allowed_wildcard_domain = ""

[grpc.volume]
cert = ""
key = ""
client_cert = ""
client_key = ""
allowed_commonNames = ""

[grpc.master]
cert = ""
key = ""
client_cert = ""
client_key = ""
allowed_commonNames = ""

[grpc.filer]
cert = ""
key = ""
client_cert = ""
client_key = ""
allowed_commonNames = ""

[grpc.s3]
cert = ""
key = ""
client_cert = ""
client_key = ""
allowed_commonNames = ""

[grpc.msg_broker]
cert = ""
key = ""
client_cert = ""
client_key = ""
allowed_commonNames = ""

[grpc.msg_agent]
cert = ""
key = ""
client_cert = ""
client_key = ""
allowed_commonNames = ""

[grpc.admin]
cert = ""
key = ""
client_cert = ""
client_key = ""
allowed_commonNames = ""

[grpc.worker]
cert = ""
key = ""
client_cert = ""
client_key = ""
allowed_commonNames = ""

[grpc.mq]
cert = ""
key = ""
client_cert = ""
client_key = ""
allowed_commonNames = ""

[grpc.client]
cert = ""
key = ""
# Read before cert/key when set, as upstream's LoadClientTLS does.
client_cert = ""
client_key = ""

[https.client]
enabled = false
cert = ""
key = ""
ca = ""
insecure_skip_verify = false

[https.volume]
cert = ""
key = ""
ca = ""

[https.master]
cert = ""
key = ""
ca = ""

[https.filer]
cert = ""
key = ""
ca = ""

[https.admin]
cert = ""
key = ""
ca = ""

[admin]
user = ""
password = ""

[admin.readonly]
user = ""
password = ""

[s3.sse]
kek = ""
key = ""

[s3.trusted_proxies]
white_list = ""

[guard]
white_list = ""
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn keys(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    walk(
                        &if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        },
                        v,
                        out,
                    );
                }
            } else {
                out.insert(prefix.to_string());
            }
        }
        walk("", &toml::Value::Table(text.parse().unwrap()), &mut out);
        out
    }

    /// Keys of upstream's own templates (weed 4.48 `scaffold`), which ours must all carry.
    #[test]
    fn templates_carry_every_upstream_key() {
        let upstream_replication = [
            "source.filer.enabled",
            "source.filer.grpcAddress",
            "source.filer.directory",
            "source.filer.excludeDirectories",
            "sink.local.enabled",
            "sink.local.directory",
            "sink.local.is_incremental",
            "sink.filer.enabled",
            "sink.filer.grpcAddress",
            "sink.filer.directory",
            "sink.filer.replication",
            "sink.filer.collection",
            "sink.filer.ttlSec",
            "sink.filer.is_incremental",
            "sink.s3.enabled",
            "sink.s3.aws_access_key_id",
            "sink.s3.aws_secret_access_key",
            "sink.s3.region",
            "sink.s3.bucket",
            "sink.s3.directory",
            "sink.s3.endpoint",
            "sink.s3.is_incremental",
            "sink.google_cloud_storage.enabled",
            "sink.google_cloud_storage.google_application_credentials",
            "sink.google_cloud_storage.bucket",
            "sink.google_cloud_storage.directory",
            "sink.google_cloud_storage.is_incremental",
            "sink.azure.enabled",
            "sink.azure.account_name",
            "sink.azure.account_key",
            "sink.azure.client_id",
            "sink.azure.endpoint",
            "sink.azure.container",
            "sink.azure.directory",
            "sink.azure.is_incremental",
            "sink.backblaze.enabled",
            "sink.backblaze.b2_account_id",
            "sink.backblaze.b2_master_application_key",
            "sink.backblaze.b2_region",
            "sink.backblaze.bucket",
            "sink.backblaze.directory",
            "sink.backblaze.is_incremental",
        ];
        let upstream_notification = [
            "notification.log.enabled",
            "notification.kafka.enabled",
            "notification.kafka.hosts",
            "notification.kafka.topic",
            "notification.kafka.offsetFile",
            "notification.kafka.offsetSaveIntervalSeconds",
            "notification.kafka.sasl_enabled",
            "notification.kafka.sasl_mechanism",
            "notification.kafka.sasl_username",
            "notification.kafka.sasl_password",
            "notification.kafka.tls_enabled",
            "notification.kafka.tls_ca_cert",
            "notification.kafka.tls_client_cert",
            "notification.kafka.tls_client_key",
            "notification.kafka.tls_insecure_skip_verify",
            "notification.aws_sqs.enabled",
            "notification.aws_sqs.aws_access_key_id",
            "notification.aws_sqs.aws_secret_access_key",
            "notification.aws_sqs.region",
            "notification.aws_sqs.sqs_queue_name",
            "notification.google_pub_sub.enabled",
            "notification.google_pub_sub.google_application_credentials",
            "notification.google_pub_sub.project_id",
            "notification.google_pub_sub.topic",
            "notification.gocdk_pub_sub.enabled",
            "notification.gocdk_pub_sub.topic_url",
            "notification.gocdk_pub_sub.sub_url",
            "notification.webhook.enabled",
            "notification.webhook.endpoint",
            "notification.webhook.bearer_token",
            "notification.webhook.timeout_seconds",
            "notification.webhook.max_retries",
            "notification.webhook.backoff_seconds",
            "notification.webhook.max_backoff_seconds",
            "notification.webhook.workers",
            "notification.webhook.buffer_size",
        ];
        let upstream_security = [
            "jwt.signing.key",
            "jwt.signing.read.key",
            "jwt.signing.read.expires_after_seconds",
            "grpc.ca",
            "grpc.client.cert",
            "grpc.client.key",
            "https.client.enabled",
            "https.client.cert",
            "https.client.key",
            "https.client.ca",
            "https.client.insecure_skip_verify",
            "s3.sse.kek",
            "s3.sse.key",
            "guard.white_list",
            "admin.readonly.user",
            "grpc.mq.allowed_commonNames",
        ];
        for (text, want) in [
            (REPLICATION, &upstream_replication[..]),
            (NOTIFICATION, &upstream_notification[..]),
            (SECURITY, &upstream_security[..]),
        ] {
            let have = keys(text);
            for k in want {
                assert!(have.contains(*k), "template lacks {k}");
            }
        }
    }
}

//! The librdkafka client: our keys as its settings, its log lines through `tracing`
//! (once per problem), and the probe `replicate check` runs.

use crate::config::settings::KafkaSettings;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::{ClientContext, config::RDKafkaLogLevel};
use std::collections::HashMap;
use std::time::Duration;

/// A Kafka setting the client library rejected.
#[derive(Debug, thiserror::Error)]
#[error("Kafka client configuration: {0}")]
pub(crate) struct KafkaConfigError(#[from] rdkafka::error::KafkaError);

/// The librdkafka settings for our keys.
pub(crate) fn client_config(cfg: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.hosts.join(","))
        .set("group.id", "seaweed-replicate")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", "8192")
        // Fetch only while fewer than this many messages wait locally, checking every
        // 10 ms. At the end of a partition librdkafka refetches at once and relies on the
        // broker to hold the empty answer for fetch.wait.max.ms; brokers that answer at
        // once (noida-db) would make it spin for as long as a backlog waits locally,
        // which cost a third of the machine's CPU during a drain.
        .set("queued.min.messages", "512")
        .set("fetch.queue.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "10000")
        .set("log_level", "4");
    let protocol = match (cfg.sasl.is_some(), cfg.tls.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "sasl_plaintext",
        (false, true) => "ssl",
        (true, true) => "sasl_ssl",
    };
    c.set("security.protocol", protocol);
    if let Some(s) = &cfg.sasl {
        c.set("sasl.mechanisms", &s.mechanism)
            .set("sasl.username", &s.username)
            .set("sasl.password", &s.password);
    }
    if let Some(t) = &cfg.tls {
        if !t.ca_cert.is_empty() {
            c.set("ssl.ca.location", &t.ca_cert);
        }
        if !t.client_cert.is_empty() {
            c.set("ssl.certificate.location", &t.client_cert)
                .set("ssl.key.location", &t.client_key);
        }
        if t.insecure_skip_verify {
            c.set("enable.ssl.certificate.verification", "false")
                .set("ssl.endpoint.identification.algorithm", "none");
        }
    }
    c
}

/// One attempt to reach the brokers and the topic (`replicate check`): what was found.
pub(crate) async fn probe(cfg: &KafkaSettings) -> Result<String, String> {
    let consumer: rdkafka::consumer::BaseConsumer<ProbeLogs> = client_config(cfg)
        .create_with_context(ProbeLogs::default())
        .map_err(|e| e.to_string())?;
    let topic = cfg.topic.clone();
    let found = tokio::task::spawn_blocking(move || {
        let found = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| (t.error().map(|e| format!("{e:?}")), t.partitions().len()))
            });
        // What librdkafka said on the way, each distinct problem once, under the error.
        found.map_err(|e| {
            // librdkafka queues its log lines; serving the queue delivers them.
            let _ = consumer.poll(Duration::from_millis(200));
            let lines = consumer.context().lines();
            if lines.is_empty() {
                e.to_string()
            } else {
                format!("{e}\n          {}", lines.join("\n          "))
            }
        })
    })
    .await
    .map_err(|e| e.to_string())??;
    match found {
        Some((None, n)) if n > 0 => Ok(format!(
            "kafka {} topic {} ({n} partition{})",
            cfg.hosts.join(","),
            cfg.topic,
            if n == 1 { "" } else { "s" }
        )),
        Some((Some(e), _)) => Err(format!("topic {}: {e}", cfg.topic)),
        _ => Err(format!(
            "brokers {} answered, but topic {} does not exist (yet)",
            cfg.hosts.join(","),
            cfg.topic
        )),
    }
}

/// What makes two librdkafka lines the same problem: the text without its digits (the
/// time a connect took, a count of suppressed repeats).
fn same_problem(line: &str) -> String {
    line.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// A warning or worse.
fn loud(level: RDKafkaLogLevel) -> bool {
    matches!(
        level,
        RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning
    )
}

/// librdkafka's log lines during a `check` probe: kept rather than printed, each distinct
/// problem once (librdkafka repeats a failed connect with a new time, "N identical errors
/// suppressed", and again as a global error), to be shown under the probe's result.
#[derive(Default)]
pub(crate) struct ProbeLogs {
    lines: std::sync::Mutex<(Vec<String>, std::collections::HashSet<String>)>,
}

impl ProbeLogs {
    fn keep(&self, line: &str) {
        let line = line.split(" (after ").next().unwrap_or(line);
        let line = match line.strip_prefix("[thrd:") {
            Some(rest) => rest.split_once("]: ").map_or(rest, |(_, l)| l),
            None => line,
        };
        let key = same_problem(line);
        let mut kept = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if kept.1.insert(key) {
            kept.0.push(line.to_string());
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }
}

impl ClientContext for ProbeLogs {
    fn log(&self, level: RDKafkaLogLevel, _fac: &str, message: &str) {
        if loud(level) {
            self.keep(message);
        }
    }

    fn error(&self, _error: rdkafka::error::KafkaError, reason: &str) {
        self.keep(reason);
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeLogs {}

/// How long a librdkafka log line, once logged at its level, is logged again only at
/// debug level.
const REPEAT_AFTER: Duration = Duration::from_secs(600);

/// librdkafka's own log lines and error callbacks, through `tracing`. Each distinct line
/// (numbers aside) is logged at its level once per [`REPEAT_AFTER`] and at debug level in
/// between: a broker that stays away would otherwise add an error line every few seconds
/// (a failed connect, "all brokers down") for as long as it does. The first one keeps its
/// detail (a refused connection, a failed TLS handshake, bad credentials).
#[derive(Default)]
pub(crate) struct KafkaLogs {
    seen: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl KafkaLogs {
    /// Whether this line should be logged at its level now.
    fn first(&self, line: &str) -> bool {
        let key = same_problem(line);
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < REPEAT_AFTER)
        {
            return false;
        }
        if seen.len() >= 1024 {
            seen.retain(|_, t| now.duration_since(*t) < REPEAT_AFTER);
        }
        seen.insert(key, now);
        true
    }
}

impl ClientContext for KafkaLogs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if loud(level) && !self.first(&format!("{fac} {message}")) {
            tracing::debug!(target: "librdkafka", "{fac} {message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if self.first(&error.to_string()) {
            tracing::error!(target: "librdkafka", "{error}: {reason}");
        } else {
            tracing::debug!(target: "librdkafka", "{error}: {reason}");
        }
    }
}

impl ConsumerContext for KafkaLogs {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::{KafkaTls, Sasl};

    fn settings() -> KafkaSettings {
        KafkaSettings {
            hosts: vec!["a:9092".into(), "b:9092".into()],
            topic: "t".into(),
            offset_file: "last.offset".into(),
            offset_save_interval: Duration::from_secs(10),
            sasl: None,
            tls: None,
            group: None,
        }
    }

    #[test]
    fn librdkafka_lines_repeat_only_at_debug_level() {
        let logs = KafkaLogs::default();
        assert!(logs.first("FAIL 127.0.0.1:9092/1: Connect failed (after 0ms)"));
        assert!(
            !logs.first("FAIL 127.0.0.1:9092/1: Connect failed (after 12ms)"),
            "the same line with other numbers is a repeat"
        );
        assert!(logs.first("FAIL 127.0.0.1:9092/1: SSL handshake failed"));
    }

    #[test]
    fn plaintext_by_default_and_never_commits_on_its_own() {
        let c = client_config(&settings());
        assert_eq!(c.get("bootstrap.servers"), Some("a:9092,b:9092"));
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
    }

    #[test]
    fn sasl_and_tls_keys_map_onto_the_client() {
        let mut s = settings();
        s.sasl = Some(Sasl {
            mechanism: "SCRAM-SHA-512".into(),
            username: "u".into(),
            password: "p".into(),
        });
        s.tls = Some(KafkaTls {
            ca_cert: "/ca.pem".into(),
            client_cert: "/c.pem".into(),
            client_key: "/k.pem".into(),
            insecure_skip_verify: true,
        });
        let c = client_config(&s);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("u"));
        assert_eq!(c.get("sasl.password"), Some("p"));
        assert_eq!(c.get("ssl.ca.location"), Some("/ca.pem"));
        assert_eq!(c.get("ssl.certificate.location"), Some("/c.pem"));
        assert_eq!(c.get("ssl.key.location"), Some("/k.pem"));
        assert_eq!(c.get("enable.ssl.certificate.verification"), Some("false"));

        s.tls = None;
        assert_eq!(
            client_config(&s).get("security.protocol"),
            Some("sasl_plaintext")
        );
        s.sasl = None;
        s.tls = Some(KafkaTls {
            ca_cert: String::new(),
            client_cert: String::new(),
            client_key: String::new(),
            insecure_skip_verify: false,
        });
        let c = client_config(&s);
        assert_eq!(c.get("security.protocol"), Some("ssl"));
        assert_eq!(c.get("enable.ssl.certificate.verification"), None);
    }
}

//! Every queue input against its real server: events recorded from the real filer (via
//! its Kafka publisher) replayed into the queue as upstream's publishers send them.

mod common;

use common::inputs::{Queue, queue_suite};
use common::*;
use std::time::Duration;

struct Sqs {
    client: aws_sdk_sqs::Client,
    url: String,
    endpoint: String,
    sent: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Queue for Sqs {
    /// As upstream's filer sends: the body is the protobuf as is (when it is valid UTF-8;
    /// a Rust string cannot carry anything else), the key an attribute. Other bodies go as
    /// base64, alternately flagged as gocdk flags them and unflagged.
    async fn publish(&self, key: Option<&str>, payload: &[u8]) {
        use aws_sdk_sqs::types::MessageAttributeValue;
        use base64::Engine;
        let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let string = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .unwrap()
        };
        let mut send = self.client.send_message().queue_url(&self.url);
        send = match std::str::from_utf8(payload) {
            Ok(text) => send.message_body(text),
            Err(_) => {
                let body = base64::engine::general_purpose::STANDARD.encode(payload);
                let send = send.message_body(body);
                if n.is_multiple_of(2) {
                    send.message_attributes("base64encoded", string("true"))
                } else {
                    send
                }
            }
        };
        if let Some(key) = key {
            send = send.message_attributes("key", string(key));
        }
        send.send().await.unwrap();
    }

    fn notification_toml(&self) -> String {
        format!(
            "[notification.aws_sqs]\nenabled = true\naws_access_key_id = \"test\"\naws_secret_access_key = \"test\"\n\
             region = \"us-east-2\"\nsqs_queue_name = \"filer-events\"\nendpoint = \"{}\"\n",
            self.endpoint
        )
    }
}

/// A client for moto's SQS in us-east-2, and the URL of a new queue `name`.
async fn moto_queue(endpoint: &str, name: &str) -> (aws_sdk_sqs::Client, String) {
    let config = seaweed_replicate::aws::sdk_config(
        "us-east-2",
        "test",
        "test",
        endpoint,
        "test",
        Duration::from_secs(60),
    )
    .await;
    let client = aws_sdk_sqs::Client::new(&config);
    let url = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (client, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_on_moto() {
    let bed = TestBed::start(BedOptions::default());
    let moto = start_moto();
    let (client, url) = moto_queue(&moto.endpoint(), "filer-events").await;
    let queue = Sqs {
        client,
        url,
        endpoint: moto.endpoint(),
        sent: Default::default(),
    };
    queue_suite(&bed, &queue).await;
}

/// gocdk's `awssqs://` on moto, fed as gocloud's publishers send: half straight into the
/// queue (`awssqs://` topic), half through an SNS topic subscribed to it without raw
/// delivery (`awssns://` topic), so SNS's JSON envelope carries them; attribute names and
/// values escaped and bodies base64'd by Go itself.
struct GocdkSqs {
    client: aws_sdk_sqs::Client,
    url: String,
    endpoint: String,
    http: reqwest::Client,
    topic_arn: String,
    sent: std::sync::atomic::AtomicUsize,
}

impl GocdkSqs {
    /// One call of SNS's query API on moto, which routes by the credential scope of the
    /// Authorization header and does not check the signature.
    async fn sns(http: &reqwest::Client, endpoint: &str, form: &[(String, String)]) -> String {
        let resp = http
            .post(endpoint)
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-2/sns/aws4_request, \
                 SignedHeaders=host, Signature=0",
            )
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "SNS {form:?}: {status} {text}");
        text
    }
}

#[async_trait::async_trait]
impl Queue for GocdkSqs {
    async fn publish(&self, key: Option<&str>, payload: &[u8]) {
        use aws_sdk_sqs::types::MessageAttributeValue;
        let wire = common::gowire::encode(key, payload);
        let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n.is_multiple_of(2) {
            let mut send = self
                .client
                .send_message()
                .queue_url(&self.url)
                .message_body(&wire.sqs_body);
            for (name, value) in &wire.sqs_attrs {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .unwrap();
                send = send.message_attributes(name, value);
            }
            send.send().await.unwrap();
        } else {
            let mut form = vec![
                ("Action".to_string(), "Publish".to_string()),
                ("TopicArn".to_string(), self.topic_arn.clone()),
                ("Message".to_string(), wire.sqs_body.clone()),
            ];
            for (i, (name, value)) in wire.sqs_attrs.iter().enumerate() {
                let p = format!("MessageAttributes.entry.{}", i + 1);
                form.push((format!("{p}.Name"), name.clone()));
                form.push((format!("{p}.Value.DataType"), "String".into()));
                form.push((format!("{p}.Value.StringValue"), value.clone()));
            }
            Self::sns(&self.http, &self.endpoint, &form).await;
        }
    }

    fn notification_toml(&self) -> String {
        let host_path = self.url.split_once("://").unwrap().1;
        format!(
            "[notification.gocdk_pub_sub]\nenabled = true\n\
             sub_url = \"awssqs://{host_path}?region=us-east-2&endpoint={}\"\n",
            self.endpoint
        )
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_and_sns_through_gocdk_urls() {
    let bed = TestBed::start(BedOptions::default());
    let moto = start_moto();
    let endpoint = moto.endpoint();
    let (client, url) = moto_queue(&endpoint, "gocdk-events").await;
    let http = seaweed_replicate::http::plain();
    let created = GocdkSqs::sns(
        &http,
        &endpoint,
        &[
            ("Action".into(), "CreateTopic".into()),
            ("Name".into(), "filer".into()),
        ],
    )
    .await;
    let topic_arn = created
        .split("<TopicArn>")
        .nth(1)
        .and_then(|t| t.split("</TopicArn>").next())
        .unwrap_or_else(|| panic!("no TopicArn in {created}"))
        .to_string();
    GocdkSqs::sns(
        &http,
        &endpoint,
        &[
            ("Action".into(), "Subscribe".into()),
            ("TopicArn".into(), topic_arn.clone()),
            ("Protocol".into(), "sqs".into()),
            (
                "Endpoint".into(),
                "arn:aws:sqs:us-east-2:123456789012:gocdk-events".into(),
            ),
        ],
    )
    .await;
    let queue = GocdkSqs {
        client,
        url,
        endpoint,
        http,
        topic_arn,
        sent: Default::default(),
    };
    queue_suite(&bed, &queue).await;
}

/// Google's Pub/Sub emulator (a Java program in the machine image's Google Cloud SDK).
fn start_pubsub_emulator() -> Service {
    let bin = std::path::Path::new(
        "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    );
    assert!(
        bin.exists(),
        "{} is missing (Debian package google-cloud-cli-pubsub-emulator)",
        bin.display()
    );
    let port = free_port_pair();
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["--host=127.0.0.1", &format!("--port={port}")]);
    Service::spawn("pubsub emulator", cmd, port)
}

struct PubSub {
    http: reqwest::Client,
    endpoint: String,
}

#[async_trait::async_trait]
impl Queue for PubSub {
    /// As upstream's publisher: data = the protobuf, attribute `key` = the path.
    async fn publish(&self, key: Option<&str>, payload: &[u8]) {
        use base64::Engine;
        let mut message = serde_json::json!({
            "data": base64::engine::general_purpose::STANDARD.encode(payload),
        });
        if let Some(key) = key {
            message["attributes"] = serde_json::json!({ "key": key });
        }
        let r = self
            .http
            .post(format!(
                "{}/v1/projects/test-project/topics/filer-topic:publish",
                self.endpoint
            ))
            .json(&serde_json::json!({ "messages": [message] }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    fn notification_toml(&self) -> String {
        "[notification.google_pub_sub]\nenabled = true\nproject_id = \"test-project\"\n\
         topic = \"filer-topic\"\nsubscription = \"replicate-sub\"\n"
            .into()
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![(
            "PUBSUB_EMULATOR_HOST".into(),
            self.endpoint.trim_start_matches("http://").into(),
        )]
    }
}

/// The real filer publishes into the emulator itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_on_the_emulator() {
    let emulator = start_pubsub_emulator();
    let host = emulator
        .endpoint()
        .trim_start_matches("http://")
        .to_string();
    let creds = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        creds.path(),
        r#"{"type":"authorized_user","client_id":"x","client_secret":"y","refresh_token":"z"}"#,
    )
    .unwrap();
    let http = seaweed_replicate::http::plain();
    // The subscription must exist before the filer publishes the backlog.
    let base = format!("{}/v1/projects/test-project", emulator.endpoint());
    for (path, body) in [
        ("topics/filer-topic".to_string(), serde_json::json!({})),
        (
            "subscriptions/replicate-sub".to_string(),
            serde_json::json!({"topic": "projects/test-project/topics/filer-topic"}),
        ),
    ] {
        let r = http
            .put(format!("{base}/{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
    let bed = TestBed::start(BedOptions {
        notification_toml: Some(format!(
            "[notification.google_pub_sub]\nenabled = true\ngoogle_application_credentials = \"{}\"\n\
             project_id = \"test-project\"\ntopic = \"filer-topic\"\n",
            creds.path().display()
        )),
        env: vec![("PUBSUB_EMULATOR_HOST".into(), host)],
        ..Default::default()
    });
    let queue = PubSub {
        http,
        endpoint: emulator.endpoint(),
    };
    queue_suite(&bed, &queue).await;
    assert!(
        bed.records_from(0).is_empty(),
        "the filer published to Kafka, so the test relayed events instead of the filer"
    );
}

/// RabbitMQ from Debian's package, on its own epmd, all under a temp folder.
fn start_rabbitmq() -> (Service, Service, u16) {
    let epmd_port = free_port_pair();
    let mut epmd = std::process::Command::new("epmd");
    epmd.args(["-address", "127.0.0.1", "-port", &epmd_port.to_string()]);
    let epmd = Service::spawn("epmd", epmd, epmd_port);
    let port = free_port_pair();
    let dist_port = free_port_pair();
    let dir = epmd.dir.path().to_path_buf();
    std::fs::write(dir.join("enabled_plugins"), "[].").unwrap();
    let mut cmd = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    cmd.env("HOME", &dir)
        .env("RABBITMQ_NODENAME", format!("rabbit{port}@localhost"))
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env("ERL_EPMD_PORT", epmd_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
        .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"));
    let rabbit = Service::spawn_within("rabbitmq-server", cmd, port, Duration::from_secs(120));
    (epmd, rabbit, port)
}

struct Rabbit {
    channel: lapin::Channel,
    url: String,
    _conn: lapin::Connection,
}

#[async_trait::async_trait]
impl Queue for Rabbit {
    /// As gocdk's rabbit publisher: body = the protobuf, AMQP header `key` = the path,
    /// published to the fanout exchange.
    async fn publish(&self, key: Option<&str>, payload: &[u8]) {
        let mut headers = lapin::types::FieldTable::default();
        if let Some(key) = key {
            headers.insert(
                "key".into(),
                lapin::types::AMQPValue::LongString(key.into()),
            );
        }
        self.channel
            .basic_publish(
                "filer-exchange",
                "",
                lapin::options::BasicPublishOptions::default(),
                payload,
                lapin::BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    fn notification_toml(&self) -> String {
        "[notification.gocdk_pub_sub]\nenabled = true\ntopic_url = \"rabbit://filer-exchange\"\n\
         sub_url = \"rabbit://filer-queue\"\n"
            .into()
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("RABBIT_SERVER_URL".into(), self.url.clone())]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_through_gocdk_urls() {
    let bed = TestBed::start(BedOptions::default());
    let (_epmd, _rabbit, port) = start_rabbitmq();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let mut conn = None;
    for _ in 0..120 {
        match lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let conn = conn.expect("RabbitMQ never accepted a connection");
    let channel = conn.create_channel().await.unwrap();
    let queue = Rabbit {
        channel,
        url: url.clone(),
        _conn: conn,
    };

    // The queue is missing: replicate declares upstream's topology.
    let area = tempfile::tempdir().unwrap();
    let work = common::inputs::queue_workdir(&bed, &queue, &area.path().join("x"), "");
    let rep = Replicator::start_with_env(&work, &[("RABBIT_SERVER_URL", &url)]);
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read_to_string(work.log()).is_ok_and(|l| l.contains("declared the queue"))
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    assert!(rep.stop().0.success());
    for (name, exchange) in [
        ("filer-exchange", true),
        ("DLX.filer-exchange", true),
        ("filer-queue", false),
        ("DLX.filer-queue", false),
    ] {
        let ch = queue._conn.create_channel().await.unwrap();
        let found = if exchange {
            ch.exchange_declare(
                name,
                lapin::ExchangeKind::Fanout,
                lapin::options::ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .is_ok()
        } else {
            ch.queue_declare(
                name,
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .is_ok()
        };
        assert!(found, "{name} was not declared");
    }
    queue_suite(&bed, &queue).await;
}

struct Nats {
    client: async_nats::Client,
    url: String,
    /// The `natsv2` parameter, on both URLs.
    v2: bool,
}

#[async_trait::async_trait]
impl Queue for Nats {
    /// As gocdk's NATS publisher sends, in bytes Go itself produced: without `natsv2` a gob
    /// stream of the metadata and the body, with it the body and query-escaped headers.
    async fn publish(&self, key: Option<&str>, payload: &[u8]) {
        let wire = common::gowire::encode(key, payload);
        if self.v2 {
            let mut headers = async_nats::HeaderMap::new();
            for (name, value) in &wire.nats_v2 {
                headers.insert(name.as_str(), value.as_str());
            }
            self.client
                .publish_with_headers("seaweedfs.filer", headers, payload.to_vec().into())
                .await
                .unwrap();
        } else {
            self.client
                .publish("seaweedfs.filer", wire.nats_gob().into())
                .await
                .unwrap();
        }
        self.client.flush().await.unwrap();
    }

    fn notification_toml(&self) -> String {
        let query = if self.v2 { "?natsv2" } else { "" };
        format!(
            "[notification.gocdk_pub_sub]\nenabled = true\ntopic_url = \"nats://seaweedfs.filer{query}\"\n\
             sub_url = \"nats://seaweedfs.filer{query}\"\n"
        )
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("NATS_SERVER_URL".into(), self.url.clone())]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_through_gocdk_urls() {
    let bed = TestBed::start(BedOptions::default());
    let port = free_port_pair();
    let store = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("nats-server");
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path());
    let _nats = Service::spawn("nats-server", cmd, port);
    let url = format!("nats://127.0.0.1:{port}");
    let client = async_nats::connect(&url).await.unwrap();
    let queue = Nats {
        client: client.clone(),
        url: url.clone(),
        v2: false,
    };

    // No stream covers the subject yet: replicate creates one, so what is published from
    // then on is kept until it is acknowledged.
    let area = tempfile::tempdir().unwrap();
    let work = common::inputs::queue_workdir(&bed, &queue, &area.path().join("x"), "");
    let rep = Replicator::start_with_env(&work, &[("NATS_SERVER_URL", &url)]);
    assert!(
        eventually(Duration::from_secs(30), || async {
            std::fs::read_to_string(work.log())
                .is_ok_and(|l| l.contains("consuming NATS JetStream"))
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    assert!(rep.stop().0.success());
    let js = async_nats::jetstream::new(client);
    assert!(js.stream_by_subject("seaweedfs.filer").await.is_ok());
    queue_suite(&bed, &queue).await;
}

/// Without JetStream, a core subscription as upstream (and the log says what that costs);
/// with `natsv2`, keys in escaped headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_without_jetstream_falls_back_to_core() {
    let bed = TestBed::start(BedOptions::default());
    let port = free_port_pair();
    let mut cmd = std::process::Command::new("nats-server");
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    let _nats = Service::spawn("nats-server", cmd, port);
    let url = format!("nats://127.0.0.1:{port}");
    let queue = Nats {
        client: async_nats::connect(&url).await.unwrap(),
        url: url.clone(),
        v2: true,
    };
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("root");
    let work = common::inputs::queue_workdir(&bed, &queue, &root, "");
    let rep = Replicator::start_with_env(&work, &[("NATS_SERVER_URL", &url)]);
    assert!(
        eventually(Duration::from_secs(30), || async {
            std::fs::read_to_string(work.log()).is_ok_and(|l| l.contains("has no JetStream"))
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    bed.upload("/data/core.txt", b"over core NATS", "").await;
    bed.upload("/data/a+b c%41.txt", b"escaped in a header", "")
        .await;
    common::inputs::Forwarder::new(&bed, &queue).forward().await;
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    assert!(rep.stop().0.success());
}

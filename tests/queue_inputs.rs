//! Every queue input against its real server: events recorded from the real filer (via
//! its Kafka publisher) replayed into the queue as upstream's publishers send them.

mod common;

use common::inputs::{Queue, queue_suite};
use common::*;

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
                if n % 2 == 0 {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_on_moto() {
    let bed = TestBed::start(BedOptions::default());
    let moto = start_moto();
    let config =
        seaweed_replicate::aws::sdk_config("us-east-2", "test", "test", &moto.endpoint(), "test")
            .await;
    let client = aws_sdk_sqs::Client::new(&config);
    let url = client
        .create_queue()
        .queue_name("filer-events")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue = Sqs {
        client,
        url,
        endpoint: moto.endpoint(),
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
    let http = reqwest::Client::new();
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

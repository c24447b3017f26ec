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

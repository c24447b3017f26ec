//! `[sink.google_cloud_storage]` through the object-store conformance suite, against
//! fake-gcs-server, checked through the GCS JSON API.

mod common;

use common::objects::{ObjectInfo, ObjectStore, StoreUnderTest, conformance};
use common::*;
use std::collections::BTreeMap;
use std::process::Command;

fn start_fake_gcs() -> Service {
    let port = free_port_pair();
    let mut cmd = Command::new(testbed_binary("fake-gcs-server"));
    cmd.args([
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        &port.to_string(),
        "-backend",
        "memory",
    ])
    .args([
        "-external-url",
        &format!("http://127.0.0.1:{port}"),
        "-public-host",
        &format!("127.0.0.1:{port}"),
    ])
    .args(["-log-level", "warn"]);
    Service::spawn("fake-gcs-server", cmd, port)
}

struct GcsStore {
    http: reqwest::Client,
    endpoint: String,
}

#[async_trait::async_trait]
impl ObjectStore for GcsStore {
    async fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let url = format!(
            "{}/storage/v1/b/replica/o?prefix={}",
            self.endpoint,
            seaweed_replicate::sink::percent_encode(prefix, false)
        );
        let Ok(r) = self.http.get(url).send().await else {
            return out;
        };
        let v: serde_json::Value =
            serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or_default();
        for item in v["items"].as_array().into_iter().flatten() {
            let name = item["name"].as_str().unwrap().to_string();
            let url = format!(
                "{}/storage/v1/b/replica/o/{}?alt=media",
                self.endpoint,
                seaweed_replicate::sink::percent_encode(&name, false)
            );
            if let Ok(r) = self.http.get(url).send().await
                && r.status().is_success()
            {
                out.insert(name, r.bytes().await.unwrap().to_vec());
            }
        }
        out
    }

    async fn info(&self, name: &str) -> Option<ObjectInfo> {
        let url = format!(
            "{}/storage/v1/b/replica/o/{}",
            self.endpoint,
            seaweed_replicate::sink::percent_encode(name, false)
        );
        let r = self.http.get(url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.ok()?).ok()?;
        Some(ObjectInfo {
            content_type: v["contentType"].as_str().map(String::from),
            mtime: v["metadata"]["mtime"].as_str().map(String::from),
            version: format!("{} {}", v["generation"], v["updated"]),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_conformance_on_fake_gcs_server() {
    let bed = TestBed::start(BedOptions::default());
    let gcs = start_fake_gcs();
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/storage/v1/b?project=test", gcs.endpoint()))
        .header("Content-Type", "application/json")
        .body(r#"{"name":"replica"}"#)
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );
    let endpoint = gcs.endpoint();
    let store = StoreUnderTest {
        label: "fake-gcs-server".into(),
        store: Box::new(GcsStore {
            http,
            endpoint: gcs.endpoint(),
        }),
        section: Box::new(move |directory, incremental| {
            format!(
                "[sink.google_cloud_storage]\nenabled = true\ngoogle_application_credentials = \"\"\nbucket = \"replica\"\n\
                 directory = \"{directory}\"\nendpoint = \"{endpoint}\"\nis_incremental = {incremental}\n"
            )
        }),
        // Object names keep the leading "/", as upstream.
        prefix: |dir| format!("{dir}/"),
    };
    conformance(&bed, vec![store]).await;
}

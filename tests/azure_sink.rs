//! `[sink.azure]` through the object-store conformance suite, against Azurite, checked
//! through the Blob REST API.

mod common;

use common::objects::{ObjectInfo, ObjectStore, StoreUnderTest, conformance};
use common::*;
use seaweed_replicate::sink::azure::SharedKey;
use std::collections::BTreeMap;
use std::process::Command;

/// Azurite's published development account and key.
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn start_azurite() -> Service {
    let port = free_port_pair();
    let mut cmd = Command::new(testbed_binary("azurite-blob"));
    cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .args([
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
        ]);
    Service::spawn("azurite", cmd, port)
}

struct AzureStore {
    http: reqwest::Client,
    key: SharedKey,
    endpoint: String,
}

impl AzureStore {
    async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        self.http
            .execute(self.key.sign(req.build().unwrap()))
            .await
            .unwrap()
    }
    fn blob_url(&self, name: &str) -> String {
        format!(
            "{}/replica/{}",
            self.endpoint,
            seaweed_replicate::sink::percent_encode(name, true)
        )
    }
}

#[async_trait::async_trait]
impl ObjectStore for AzureStore {
    async fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let url = format!(
            "{}/replica?restype=container&comp=list&prefix={}",
            self.endpoint,
            seaweed_replicate::sink::percent_encode(prefix, false)
        );
        let xml = self
            .send(self.http.get(url))
            .await
            .text()
            .await
            .unwrap_or_default();
        let mut out = BTreeMap::new();
        let mut rest = xml.as_str();
        while let Some(i) = rest.find("<Name>") {
            rest = &rest[i + 6..];
            let j = rest.find("</Name>").unwrap();
            let name = rest[..j].replace("&amp;", "&");
            rest = &rest[j..];
            let r = self.send(self.http.get(self.blob_url(&name))).await;
            if r.status().is_success() {
                out.insert(name, r.bytes().await.unwrap().to_vec());
            }
        }
        out
    }

    async fn info(&self, name: &str) -> Option<ObjectInfo> {
        let r = self.send(self.http.head(self.blob_url(name))).await;
        if !r.status().is_success() {
            return None;
        }
        let h = |k: &str| {
            r.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        Some(ObjectInfo {
            content_type: h("content-type"),
            mtime: h("x-ms-meta-mtime"),
            version: format!("{:?} {:?}", h("etag"), h("last-modified")),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_conformance_on_azurite() {
    let bed = TestBed::start(BedOptions::default());
    let azurite = start_azurite();
    let azurite_endpoint = format!("{}/{ACCOUNT}", azurite.endpoint());
    let store = AzureStore {
        http: reqwest::Client::new(),
        key: SharedKey::new(ACCOUNT, KEY).unwrap(),
        endpoint: azurite_endpoint.clone(),
    };
    let created = store
        .send(
            store
                .http
                .put(format!("{}/replica?restype=container", azurite_endpoint)),
        )
        .await;
    assert!(
        created.status().is_success(),
        "create container: {} {}",
        created.status(),
        created.text().await.unwrap_or_default()
    );
    let endpoint = azurite_endpoint.clone();
    let under_test = StoreUnderTest {
        label: "azurite".into(),
        store: Box::new(store),
        section: Box::new(move |directory, incremental| {
            format!(
                "[sink.azure]\nenabled = true\naccount_name = \"{ACCOUNT}\"\naccount_key = \"{KEY}\"\nendpoint = \"{endpoint}\"\n\
                 container = \"replica\"\ndirectory = \"{directory}\"\nis_incremental = {incremental}\n"
            )
        }),
        // Every leading "/" trimmed, as upstream.
        prefix: |dir| format!("{}/", dir.trim_start_matches('/')),
    };
    conformance(&bed, vec![under_test]).await;
}

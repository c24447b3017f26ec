//! `[sink.azure]` through the object-store conformance suite, against Azurite, checked
//! through the Blob REST API.

mod common;

use common::objects::{ObjectInfo, ObjectStore, StoreUnderTest, conformance};
use common::*;
use seaweed_replicate::sink::azure::SharedKey;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's published development account and key.
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

struct Azurite {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Azurite {
    fn start() -> Azurite {
        let port = free_port_pair();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(testbed_binary("azurite-blob"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args([
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--disableTelemetry",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("azurite.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("azurite.err")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "azurite did not start on {port}: {} {}",
                std::fs::read_to_string(dir.path().join("azurite.log")).unwrap_or_default(),
                std::fs::read_to_string(dir.path().join("azurite.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Azurite {
            child,
            endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
            _dir: dir,
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct AzureStore {
    http: reqwest::Client,
    key: SharedKey,
    endpoint: String,
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
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
            enc(name).replace("%2F", "/")
        )
    }
}

#[async_trait::async_trait]
impl ObjectStore for AzureStore {
    async fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let url = format!(
            "{}/replica?restype=container&comp=list&prefix={}",
            self.endpoint,
            enc(prefix)
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
    let azurite = Azurite::start();
    let store = AzureStore {
        http: reqwest::Client::new(),
        key: SharedKey::new(ACCOUNT, KEY).unwrap(),
        endpoint: azurite.endpoint.clone(),
    };
    let created = store
        .send(
            store
                .http
                .put(format!("{}/replica?restype=container", azurite.endpoint)),
        )
        .await;
    assert!(
        created.status().is_success(),
        "create container: {} {}",
        created.status(),
        created.text().await.unwrap_or_default()
    );
    let endpoint = azurite.endpoint.clone();
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

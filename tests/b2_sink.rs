//! `[sink.backblaze]` through the object-store conformance suite, against b2sdk's
//! RawSimulator behind `scripts/b2_server.py`, checked through the B2 native API; then
//! what upstream gets wrong: deletes that leave older versions, commit errors ignored.

mod common;

use common::objects::{ObjectInfo, ObjectStore, StoreUnderTest, conformance};
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const BUCKET: &str = "replica-bucket";
/// The simulator's first account and its master key.
const KEY_ID: &str = "account-0";
const KEY: &str = "masterKey-0";

fn start_b2() -> Service {
    let port = free_port_pair();
    let mut cmd = Command::new(testbed_binary("python"));
    cmd.arg(repo().join("scripts/b2_server.py")).args([
        "--port",
        &port.to_string(),
        "--bucket",
        BUCKET,
    ]);
    Service::spawn("b2_server.py", cmd, port)
}

/// A client of the B2 API, independent of the sink's.
struct B2Store {
    http: reqwest::Client,
    endpoint: String,
}

impl B2Store {
    async fn token(&self) -> String {
        let v: Value = self
            .http
            .get(format!("{}/b2api/v3/b2_authorize_account", self.endpoint))
            .basic_auth(KEY_ID, Some(KEY))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["authorizationToken"].as_str().unwrap().to_string()
    }

    async fn call(&self, op: &str, mut body: Value) -> Value {
        body["bucketId"] = "bucket_0".into();
        let r = self
            .http
            .post(format!("{}/b2api/v3/{op}", self.endpoint))
            .header("authorization", self.token().await)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{op}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Every version (uploads, hide markers, unfinished large files) named `prefix*`.
    async fn versions(&self, prefix: &str) -> Vec<Value> {
        let v = self
            .call(
                "b2_list_file_versions",
                json!({"prefix": prefix, "maxFileCount": 1000}),
            )
            .await;
        v["files"].as_array().unwrap().clone()
    }

    async fn unfinished(&self, prefix: &str) -> Vec<Value> {
        let v = self
            .call(
                "b2_list_unfinished_large_files",
                json!({"namePrefix": prefix}),
            )
            .await;
        v["files"].as_array().unwrap().clone()
    }

    async fn fail_next(&self, op: &str, count: u32, status: u16) {
        let r = self
            .http
            .post(format!("{}/_fail", self.endpoint))
            .json(&json!({"op": op, "count": count, "status": status}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

#[async_trait::async_trait]
impl ObjectStore for B2Store {
    async fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let v = self
            .call(
                "b2_list_file_names",
                json!({"prefix": prefix, "maxFileCount": 1000}),
            )
            .await;
        let token = self.token().await;
        for f in v["files"].as_array().unwrap() {
            let name = f["fileName"].as_str().unwrap();
            let url = format!(
                "{}/file/{BUCKET}/{}",
                self.endpoint,
                seaweed_replicate::sink::percent_encode(name, true)
            );
            let r = self
                .http
                .get(url)
                .header("authorization", &token)
                .send()
                .await
                .unwrap();
            if r.status().is_success() {
                out.insert(name.to_string(), r.bytes().await.unwrap().to_vec());
            }
        }
        out
    }

    async fn info(&self, name: &str) -> Option<ObjectInfo> {
        let v = self
            .call(
                "b2_list_file_names",
                json!({"prefix": name, "startFileName": name, "maxFileCount": 1}),
            )
            .await;
        let f = v["files"].get(0).filter(|f| f["fileName"] == name)?;
        let millis = f["fileInfo"]["src_last_modified_millis"].as_str()?;
        Some(ObjectInfo {
            content_type: f["contentType"].as_str().map(String::from),
            mtime: Some((millis.parse::<i64>().unwrap() / 1000).to_string()),
            version: f["fileId"].as_str().unwrap().to_string(),
        })
    }
}

fn section(endpoint: &str, directory: &str, incremental: bool) -> String {
    format!(
        "[sink.backblaze]\nenabled = true\nb2_account_id = \"{KEY_ID}\"\nb2_master_application_key = \"{KEY}\"\n\
         endpoint = \"{endpoint}\"\nbucket = \"{BUCKET}\"\ndirectory = \"{directory}\"\nis_incremental = {incremental}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_conformance_and_upstream_defects_on_the_simulator() {
    let bed = TestBed::start(BedOptions::default());
    let b2 = start_b2();
    let store = B2Store {
        http: seaweed_replicate::http::plain(),
        endpoint: b2.endpoint(),
    };
    let endpoint = b2.endpoint();
    let under_test = StoreUnderTest {
        label: "b2-simulator".into(),
        store: Box::new(B2Store {
            http: seaweed_replicate::http::plain(),
            endpoint: b2.endpoint(),
        }),
        section: Box::new(move |dir, inc| section(&endpoint, dir, inc)),
        // One leading "/" trimmed, as upstream.
        prefix: |dir| format!("{}/", dir.strip_prefix('/').unwrap_or(dir)),
    };
    conformance(&bed, vec![under_test]).await;

    // Upstream deletes only the newest version, which brings the previous one back: here the
    // overwritten-then-moved notes and the deleted directory leave no version at all.
    let left: Vec<_> = store
        .versions("backup/")
        .await
        .into_iter()
        .filter_map(|f| f["fileName"].as_str().map(String::from))
        .filter(|n| {
            n == "backup/notes.txt" || n == "backup/empty.bin" || n.starts_with("backup/dir/")
        })
        .collect();
    assert!(left.is_empty(), "versions left behind by deletes: {left:?}");

    // Commit errors: a finish that fails twice with 503 is retried until the file is whole;
    // one refused outright (400) fails the event, which is parked, and the unfinished
    // large file is cancelled instead of being left to bill. Upstream reports both as done.
    let work = Workdir::with_sink(
        &bed,
        "/faults",
        &section(&b2.endpoint(), "/faults", false),
        "",
    );
    let rep = Replicator::start(&work);
    store.fail_next("b2_finish_large_file", 2, 503).await;
    let retried = bytes(7, 20 * 1024 * 1024 + 5);
    bed.upload("/faults/retried.bin", &retried, "maxMB=4").await;
    assert!(
        eventually(Duration::from_secs(90), || async {
            !store.objects("faults/retried.bin").await.is_empty()
        })
        .await,
        "retried.bin never arrived\n{}",
        tail(&work.log(), 20)
    );
    let got = store.objects("faults/retried.bin").await;
    let got = &got["faults/retried.bin"];
    assert!(
        got == &retried,
        "retried.bin differs: {} bytes, want {}",
        got.len(),
        retried.len()
    );
    store.fail_next("b2_finish_large_file", 1, 400).await;
    bed.upload(
        "/faults/refused.bin",
        &bytes(8, 12 * 1024 * 1024),
        "maxMB=4",
    )
    .await;
    let parked = work.path().join("replicate.parked.jsonl");
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read_to_string(&parked).is_ok_and(|t| t.contains("/faults/refused.bin"))
        })
        .await,
        "a refused commit was not parked\n{}",
        tail(&work.log(), 20)
    );
    let record = std::fs::read_to_string(&parked).unwrap();
    assert!(record.contains("b2_finish_large_file"), "{record}");
    assert!(store.objects("faults/refused.bin").await.is_empty());
    assert!(
        store.unfinished("faults/").await.is_empty(),
        "an unfinished large file was left"
    );
    let (status, _) = rep.stop();
    assert!(status.success());

    // A wrong key is reported clearly at start and retried, not a crash or a silent exit.
    let wrong = section(&b2.endpoint(), "/faults", false).replace(KEY, "not-the-key");
    let work = Workdir::with_sink(&bed, "/faults", &wrong, "");
    let mut rep = Replicator::start(&work);
    assert!(
        eventually(Duration::from_secs(20), || async {
            std::fs::read_to_string(work.log()).is_ok_and(|t| t.contains("wrong b2_account_id"))
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    assert!(rep.is_running(), "gave up instead of retrying");
    let (status, _) = rep.stop();
    assert!(status.success());
}

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
    bucket: String,
}

#[async_trait::async_trait]
impl ObjectStore for GcsStore {
    async fn objects(&self, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let url = format!(
            "{}/storage/v1/b/{}/o?prefix={}",
            self.endpoint,
            self.bucket,
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
                "{}/storage/v1/b/{}/o/{}?alt=media",
                self.endpoint,
                self.bucket,
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
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            self.bucket,
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
    let http = seaweed_replicate::http::plain();
    create_bucket(&http, &gcs, "replica").await;
    let endpoint = gcs.endpoint();
    let store = StoreUnderTest {
        label: "fake-gcs-server".into(),
        store: Box::new(GcsStore {
            http,
            endpoint: gcs.endpoint(),
            bucket: "replica".into(),
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

async fn create_bucket(http: &reqwest::Client, gcs: &Service, name: &str) {
    let created = http
        .post(format!("{}/storage/v1/b?project=test", gcs.endpoint()))
        .header("Content-Type", "application/json")
        .body(format!(r#"{{"name":"{name}"}}"#))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );
}

/// Object names are upstream's `util.Join(directory, date, key under the source
/// directory)`: a relative or empty `directory` (which upstream accepts) names objects
/// without the leading `/` an absolute one gives, and the same objects as upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_object_names_follow_upstreams_join() {
    let bed = TestBed::start(BedOptions::default());
    let gcs = start_fake_gcs();
    let http = seaweed_replicate::http::plain();
    bed.upload("/data/a.txt", b"first", "").await;
    bed.upload("/data/d/b.txt", b"second", "").await;
    // (bucket, source directory, sink directory, the names upstream gives)
    for (bucket, source, dir, names) in [
        (
            "relative",
            "/data",
            "backup",
            ["backup/a.txt", "backup/d/b.txt"],
        ),
        ("empty", "/data/", "", ["a.txt", "d/b.txt"]),
        ("emptyslash", "/data", "", ["/a.txt", "/d/b.txt"]),
        (
            "absolute",
            "/data",
            "/backup",
            ["/backup/a.txt", "/backup/d/b.txt"],
        ),
    ] {
        create_bucket(&http, &gcs, bucket).await;
        let section = format!(
            "[sink.google_cloud_storage]\nenabled = true\ngoogle_application_credentials = \"\"\n\
             bucket = \"{bucket}\"\ndirectory = \"{dir}\"\nendpoint = \"{}\"\n",
            gcs.endpoint()
        );
        let work = Workdir::with_sink(&bed, source, &section, "");
        let rep = Replicator::start(&work);
        let store = GcsStore {
            http: http.clone(),
            endpoint: gcs.endpoint(),
            bucket: bucket.into(),
        };
        let want: BTreeMap<String, Vec<u8>> = names
            .iter()
            .zip([&b"first"[..], b"second"])
            .map(|(n, b)| (n.to_string(), b.to_vec()))
            .collect();
        let matched = eventually(std::time::Duration::from_secs(60), || async {
            store.objects("").await == want
        })
        .await;
        assert!(
            matched,
            "{bucket}: {:?}\n{}",
            store.objects("").await.keys().collect::<Vec<_>>(),
            tail(&work.log(), 20)
        );
        assert!(rep.stop().0.success());
    }
}

/// An OAuth token endpoint as far as a client sees it: a refresh with `good-refresh`
/// gets a token, anything else Google's `invalid_grant`. Every request body is kept.
async fn start_token_endpoint() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Some((_, body)) = read_http_request(&mut conn).await else {
                    return;
                };
                log.lock().unwrap().push(body.clone());
                let (status, json) = if body.contains("good-refresh") {
                    (
                        "200 OK",
                        r#"{"access_token":"ya29.from-the-test","expires_in":3599,"token_type":"Bearer"}"#,
                    )
                } else {
                    (
                        "400 Bad Request",
                        r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
                    )
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

/// `google_application_credentials` naming an authorized user's file: the token comes
/// from the file's `token_uri` (Google's credentials crate refreshes it there), and a
/// refused refresh is reported in Google's words and retried, never fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_with_authorized_user_credentials() {
    let bed = TestBed::start(BedOptions::default());
    let gcs = start_fake_gcs();
    let http = seaweed_replicate::http::plain();
    create_bucket(&http, &gcs, "creds").await;
    let (port, seen) = start_token_endpoint().await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = |name: &str, refresh: &str| {
        let path = keys.path().join(name);
        let json = serde_json::json!({
            "type": "authorized_user", "client_id": "replicate-test-client",
            "client_secret": "s", "refresh_token": refresh,
            "token_uri": format!("http://127.0.0.1:{port}/token"),
        });
        std::fs::write(&path, json.to_string()).unwrap();
        path.display().to_string()
    };
    let section = |file: &str, dir: &str| {
        format!(
            "[sink.google_cloud_storage]\nenabled = true\ngoogle_application_credentials = \"{file}\"\n\
             bucket = \"creds\"\ndirectory = \"{dir}\"\nendpoint = \"{}\"\n",
            gcs.endpoint()
        )
    };
    bed.upload("/creds/a.txt", b"with a token", "").await;

    let good = key_file("good.json", "good-refresh");
    let work = Workdir::with_sink(&bed, "/creds", &section(&good, "/good"), "");
    let rep = Replicator::start(&work);
    let store = GcsStore {
        http: http.clone(),
        endpoint: gcs.endpoint(),
        bucket: "creds".into(),
    };
    assert!(
        eventually(std::time::Duration::from_secs(60), || async {
            store.objects("/good/").await.get("/good/a.txt") == Some(&b"with a token".to_vec())
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    let asked = seen.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|b| b.contains("good-refresh") && b.contains("replicate-test-client")),
        "the token endpoint was not asked with the file's refresh token: {asked:?}"
    );
    assert!(rep.stop().0.success());

    let bad = key_file("bad.json", "revoked-refresh");
    let work = Workdir::with_sink(&bed, "/creds", &section(&bad, "/bad"), "");
    let mut rep = Replicator::start(&work);
    assert!(
        eventually(std::time::Duration::from_secs(60), || async {
            std::fs::read_to_string(work.log()).is_ok_and(|t| t.contains("invalid_grant"))
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    assert!(rep.is_running(), "a refused refresh stopped replication");
    assert!(store.objects("/bad/").await.is_empty());
    rep.stop();
}

//! Shared harness for the integration tests: a real SeaweedFS + Kafka-protocol
//! broker per test (via `scripts/testbed.sh`), the real `replicate` binary run the
//! way a user runs it, and byte-for-byte tree comparison.
#![allow(dead_code)]

pub mod gowire;
pub mod inputs;
pub mod objects;
pub mod proxy;
pub mod s3;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use seaweed_replicate::pb;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo().join("scripts/testbed.sh")
}

/// How to start a test bed.
#[derive(Clone)]
pub struct BedOptions {
    pub partitions: u32,
    /// A security.toml for weed.
    pub security_toml: Option<String>,
    /// Extra `weed server` flags.
    pub weed_args: String,
    /// A notification.toml for weed instead of the Kafka one.
    pub notification_toml: Option<String>,
    /// Environment for weed (e.g. `PUBSUB_EMULATOR_HOST`).
    pub env: Vec<(String, String)>,
    /// The Kafka-protocol broker: `noida` (the default) or `tansu`.
    pub broker: &'static str,
}

/// The environment that lets the filer store names longer than 255 bytes (its
/// `[filer.options] max_file_name_length`, read through viper's `WEED_` variables).
pub fn long_names() -> Vec<(String, String)> {
    vec![(
        "WEED_FILER_OPTIONS_MAX_FILE_NAME_LENGTH".to_string(),
        "8192".to_string(),
    )]
}

impl Default for BedOptions {
    fn default() -> Self {
        BedOptions {
            partitions: 1,
            security_toml: None,
            weed_args: String::new(),
            notification_toml: None,
            env: Vec::new(),
            broker: "noida",
        }
    }
}

/// A running SeaweedFS server whose filer publishes to a running broker.
pub struct TestBed {
    pub dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
    pub http: reqwest::Client,
}

impl TestBed {
    pub fn start(opts: BedOptions) -> TestBed {
        let dir = tempfile::Builder::new()
            .prefix("bed")
            .tempdir_in("/tmp")
            .unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("start")
            .arg(dir.path())
            .env("PARTITIONS", opts.partitions.to_string())
            .env("BROKER", opts.broker);
        if let Some(sec) = &opts.security_toml {
            let p = dir.path().join("weed-security.toml");
            std::fs::write(&p, sec).unwrap();
            cmd.env("SECURITY_TOML", p);
        }
        if !opts.weed_args.is_empty() {
            cmd.env("WEED_EXTRA_ARGS", &opts.weed_args);
        }
        if let Some(notification) = &opts.notification_toml {
            let p = dir.path().join("weed-notification.toml");
            std::fs::write(&p, notification).unwrap();
            cmd.env("NOTIFICATION_TOML", p);
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let out = cmd.output().expect("run scripts/testbed.sh");
        assert!(
            out.status.success(),
            "testbed start failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.path().join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        TestBed {
            dir,
            env,
            http: seaweed_replicate::http::plain(),
        }
    }

    pub fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("testbed env lacks {k}"))
    }
    pub fn filer(&self) -> String {
        format!("http://{}", self.var("FILER_HTTP"))
    }

    /// Upload a file through the filer's HTTP API (`query` e.g. "maxMB=1").
    pub async fn upload(&self, path: &str, data: &[u8], query: &str) {
        let name = path.rsplit('/').next().unwrap().to_string();
        let part = reqwest::multipart::Part::bytes(data.to_vec()).file_name(name);
        let form = reqwest::multipart::Form::new().part("file", part);
        let url = format!("{}{}?{query}", self.filer(), percent_path(path));
        let resp = self.http.post(&url).multipart(form).send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "upload {path}: {}",
            resp.status()
        );
    }

    /// Rename through the filer (`POST to?mv.from=from`).
    pub async fn mv(&self, from: &str, to: &str) {
        let url = format!(
            "{}{}?mv.from={}",
            self.filer(),
            percent_path(to),
            percent_path(from)
        );
        let resp = self.http.post(&url).send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "mv {from} {to}: {}",
            resp.status()
        );
    }

    pub async fn delete(&self, path: &str, recursive: bool) {
        let url = format!(
            "{}{}?recursive={recursive}",
            self.filer(),
            percent_path(path)
        );
        let resp = self.http.delete(&url).send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "delete {path}: {}",
            resp.status()
        );
    }

    /// Entries of one directory as the filer lists them (JSON).
    pub async fn list(&self, dir: &str) -> Vec<serde_json::Value> {
        let url = format!(
            "{}{}/?limit=100000",
            self.filer(),
            percent_path(dir.trim_end_matches('/'))
        );
        let resp = self
            .http
            .get(&url)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        v["Entries"].as_array().cloned().unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> Vec<u8> {
        let resp = self
            .http
            .get(format!("{}{}", self.filer(), percent_path(path)))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "get {path}: {}", resp.status());
        resp.bytes().await.unwrap().to_vec()
    }

    /// The content of a file, or a marker that cannot equal real content when the filer
    /// cannot serve it right now (so comparisons retry instead of failing).
    pub async fn try_get(&self, path: &str) -> Vec<u8> {
        match self
            .http
            .get(format!("{}{}", self.filer(), percent_path(path)))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(b) => b.to_vec(),
                Err(e) => format!("<unreadable: {e}>").into_bytes(),
            },
            Ok(r) => format!("<unreadable: HTTP {}>", r.status()).into_bytes(),
            Err(e) => format!("<unreadable: {e}>").into_bytes(),
        }
    }

    /// The listing entry of one path.
    pub async fn entry(&self, path: &str) -> serde_json::Value {
        let (dir, _) = path.rsplit_once('/').unwrap();
        let dir = if dir.is_empty() { "/" } else { dir };
        self.list(dir)
            .await
            .into_iter()
            .find(|e| e["FullPath"] == path)
            .unwrap_or_else(|| panic!("{path} not listed"))
    }

    /// Wait until this bed's tree under `root` equals `other`'s under `other_root`.
    pub async fn assert_same_tree(
        &self,
        root: &str,
        other: &TestBed,
        other_root: &str,
        skip: &[&str],
        log: &Path,
    ) {
        wait_for_match("target", log, || async {
            (
                self.tree(root, skip).await,
                other.tree(other_root, &[]).await,
            )
        })
        .await;
    }

    /// The source tree under `root` (relative paths; None for directories),
    /// leaving out `skip` subtrees (relative).
    pub async fn tree(&self, root: &str, skip: &[&str]) -> Tree {
        let mut out = Tree::new();
        let mut todo = vec![root.to_string()];
        while let Some(dir) = todo.pop() {
            for e in self.list(&dir).await {
                let full = e["FullPath"].as_str().unwrap().to_string();
                let rel = full[root.len()..].trim_start_matches('/').to_string();
                if skip
                    .iter()
                    .any(|s| rel == *s || rel.starts_with(&format!("{s}/")))
                {
                    continue;
                }
                let is_dir = e["Mode"].as_u64().unwrap_or(0) & (1 << 31) != 0;
                if is_dir {
                    out.insert(rel, None);
                    todo.push(full);
                } else {
                    out.insert(rel, Some(self.try_get(&full).await));
                }
            }
        }
        out
    }

    /// A gRPC client for the filer.
    pub async fn grpc(
        &self,
    ) -> pb::seaweed_filer_client::SeaweedFilerClient<tonic::transport::Channel> {
        pb::seaweed_filer_client::SeaweedFilerClient::connect(format!(
            "http://{}",
            self.var("FILER_GRPC")
        ))
        .await
        .unwrap()
    }

    /// Store `data` as one needle on the volume servers; returns its chunk descriptor.
    pub async fn put_chunk(&self, data: &[u8], offset: i64, ts: i64) -> pb::FileChunk {
        self.put_chunk_with(|_| data.to_vec(), offset, ts).await
    }

    /// [`TestBed::put_chunk`] with content made from the chunk's own file id (for a
    /// manifest that lists itself).
    pub async fn put_chunk_with(
        &self,
        make: impl FnOnce(&str) -> Vec<u8>,
        offset: i64,
        ts: i64,
    ) -> pb::FileChunk {
        let mut grpc = self.grpc().await;
        let a = grpc
            .assign_volume(pb::AssignVolumeRequest {
                count: 1,
                path: "/data/x".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(a.error.is_empty(), "assign: {}", a.error);
        let loc = a.location.unwrap();
        let data = make(&a.file_id);
        let part = reqwest::multipart::Part::bytes(data.clone()).file_name("blob");
        let mut req = self
            .http
            .post(format!("http://{}/{}", loc.url, a.file_id))
            .multipart(reqwest::multipart::Form::new().part("file", part));
        if !a.auth.is_empty() {
            req = req.bearer_auth(&a.auth);
        }
        let resp = req.send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "volume upload: {}",
            resp.status()
        );
        let (vid, rest) = a.file_id.split_once(',').unwrap();
        let (key, cookie) = rest.split_at(rest.len() - 8);
        pb::FileChunk {
            // Like the filer's new entries: only the structured id.
            fid: Some(pb::FileId {
                volume_id: vid.parse().unwrap(),
                file_key: u64::from_str_radix(key, 16).unwrap(),
                cookie: u32::from_str_radix(cookie, 16).unwrap(),
            }),
            offset,
            size: data.len() as u64,
            modified_ts_ns: ts,
            ..Default::default()
        }
    }

    /// Delete an entry through gRPC, keeping its data (as a rename in two steps does).
    pub async fn delete_keeping_data(&self, directory: &str, name: &str) {
        let deleted = self
            .grpc()
            .await
            .delete_entry(pb::DeleteEntryRequest {
                directory: directory.into(),
                name: name.into(),
                is_delete_data: false,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            deleted.error.is_empty(),
            "delete {directory}/{name}: {}",
            deleted.error
        );
    }

    /// The entry at `path`, as the filer's `LookupDirectoryEntry` answers.
    pub async fn lookup(&self, path: &str) -> Option<pb::Entry> {
        let (dir, name) = path.rsplit_once('/').unwrap();
        let dir = if dir.is_empty() { "/" } else { dir };
        match self
            .grpc()
            .await
            .lookup_directory_entry(pb::LookupDirectoryEntryRequest {
                directory: dir.into(),
                name: name.into(),
            })
            .await
        {
            Ok(resp) => resp.into_inner().entry,
            // The filer answers "no entry is found in filer store" with code Unknown.
            Err(status)
                if status.code() == tonic::Code::NotFound
                    || status.message().contains("no entry is found") =>
            {
                None
            }
            Err(status) => panic!("look up {path}: {status}"),
        }
    }

    /// Create an entry through gRPC (the filer publishes the event like any other).
    pub async fn create_entry(&self, dir: &str, entry: pb::Entry) {
        let resp = self
            .grpc()
            .await
            .create_entry(pb::CreateEntryRequest {
                directory: dir.into(),
                entry: Some(entry),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(resp.error.is_empty(), "create entry: {}", resp.error);
    }

    /// Publish a raw record to the topic, as a filer (or anyone) could.
    pub async fn produce(&self, key: &str, payload: &[u8]) {
        self.produce_to(None, key, payload).await
    }

    /// [`TestBed::produce`] into this partition (else the key's).
    pub async fn produce_to(&self, partition: Option<i32>, key: &str, payload: &[u8]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", self.var("KAFKA_ADDR"))
            .set("message.timeout.ms", "10000")
            .create()
            .unwrap();
        let mut record = FutureRecord::to(self.var("TOPIC"))
            .key(key)
            .payload(payload);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    /// High watermark (next offset) per partition.
    pub fn high_watermarks(&self) -> BTreeMap<i32, i64> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.var("KAFKA_ADDR"))
            .create()
            .unwrap();
        let topic = self.var("TOPIC");
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
        parts
            .into_iter()
            .map(|p| {
                (
                    p,
                    c.fetch_watermarks(topic, p, Duration::from_secs(10))
                        .unwrap()
                        .1,
                )
            })
            .collect()
    }

    /// Every record of the topic from `from` on (partition 0 order; the bed's topic has one
    /// partition unless asked for more): what the filer published, as (key, payload).
    pub fn records_from(&self, from: usize) -> Vec<(String, Vec<u8>)> {
        use rdkafka::message::Message as _;
        let high = self.high_watermarks()[&0] as usize;
        if from >= high {
            return Vec::new();
        }
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.var("KAFKA_ADDR"))
            .set("group.id", "test-records")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(self.var("TOPIC"), 0, rdkafka::Offset::Offset(from as i64))
            .unwrap();
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.len() < high - from {
            assert!(
                Instant::now() < deadline,
                "records {from}..{high} not all readable"
            );
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                out.push((key, m.payload().unwrap_or_default().to_vec()));
            }
        }
        out
    }

    /// Partition and offset of the first record with this key.
    pub fn find_record(&self, key: &str) -> (i32, i64) {
        use rdkafka::message::Message as _;
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.var("KAFKA_ADDR"))
            .set("group.id", "test-find")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in self.high_watermarks().keys() {
            tpl.add_partition_offset(self.var("TOPIC"), *p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200))
                && m.key() == Some(key.as_bytes())
            {
                return (m.partition(), m.offset());
            }
        }
        panic!("no record with key {key}");
    }

    /// Start another volume server, in data center `dc`, joined to this bed's master.
    pub fn add_volume_server(&self, dc: &str) -> Child {
        let port = free_port_pair();
        let dir = self.dir.path().join(format!("volume-{dc}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(self.dir.path().join(format!("volume-{dc}.log"))).unwrap();
        Command::new(testbed_binary("weed"))
            .args([
                "-logtostderr",
                "volume",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-max=20",
                "-preStopSeconds=0",
                // As scripts/testbed.sh: weed's 1% of a large disk may be more than is free.
                "-minFreeSpace=256MiB",
            ])
            .arg(format!("-mserver={}", self.var("MASTER")))
            .arg(format!("-port={port}"))
            .arg(format!("-port.grpc={}", port + 10000))
            .arg(format!("-dataCenter={dc}"))
            .arg(format!("-dir={}", dir.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Kill this bed's weed and start it again on the same ports and data (blocks until
    /// the filer answers again, ~15 s).
    pub fn restart_weed_blocking(run_dir: PathBuf) {
        Self::restart_weed_after(run_dir, Duration::ZERO)
    }

    /// Kill this bed's weed, keep it down for `down`, then start it again (blocks until
    /// the filer answers).
    pub fn restart_weed_after(run_dir: PathBuf, down: Duration) {
        let out = Command::new("bash")
            .arg(script())
            .arg("restart-weed")
            .arg(&run_dir)
            .env("DOWN_SECONDS", down.as_secs().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restart-weed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stop the broker gracefully (noida-db loses unflushed messages on SIGKILL).
    pub fn stop_broker(&self) {
        let pid: i32 = self.var("BROKER_PID").parse().unwrap();
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.var("KAFKA_ADDR")).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Start the broker again on the same port and data directory.
    pub fn start_broker(&mut self) {
        let out = Command::new("bash")
            .arg(script())
            .arg("install")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let noida = text
            .lines()
            .find_map(|l| l.strip_prefix("noida-db="))
            .expect("install prints noida-db=")
            .to_string();
        let port = self
            .var("KAFKA_ADDR")
            .rsplit_once(':')
            .unwrap()
            .1
            .to_string();
        let data = self.dir.path().join("broker-data");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.path().join("broker.log"))
            .unwrap();
        let child = Command::new(noida)
            .args([
                "start",
                "--only",
                "kafka",
                "--host",
                "127.0.0.1",
                "--kafka-port",
                &port,
                "--data-dir",
            ])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id().to_string();
        // Keep the env file right so that `stop` kills the new broker.
        let env_path = self.dir.path().join("env");
        let text = std::fs::read_to_string(&env_path).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("BROKER_PID=") {
                    format!("BROKER_PID={pid}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&env_path, text).unwrap();
        self.env.insert("BROKER_PID".into(), pid);
        std::mem::forget(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.var("KAFKA_ADDR")).is_err() {
            assert!(Instant::now() < deadline, "broker did not come back");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .env("STOP_GRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        keep_if_failed(&mut self.dir, "test bed");
    }
}

/// With `KEEP_FAILED=1`, a failing test leaves its directory (logs, data, sink) behind
/// and names it, for a post-mortem.
pub fn keep_if_failed(dir: &mut tempfile::TempDir, what: &str) {
    if std::thread::panicking()
        && std::env::var("KEEP_FAILED").is_ok_and(|v| v == "1")
        && let Ok(empty) = tempfile::tempdir()
    {
        let kept = std::mem::replace(dir, empty).keep();
        eprintln!("KEEP_FAILED: {what} kept at {}", kept.display());
    }
}

/// Needles the target's volumes hold that no entry references, as `volume.fsck`
/// counts them (those older than a second), and its report.
pub fn orphan_needles_of(bed: &TestBed) -> (u64, String) {
    let weed = testbed_binary("weed");
    let out = std::process::Command::new(weed)
        .args([
            "shell",
            &format!("-master={}", bed.var("MASTER")),
            &format!("-filer={}", bed.var("FILER_HTTP")),
        ])
        .current_dir(bed.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"lock\nvolume.fsck -cutoffTimeAgo=1s\nunlock\n")?;
            c.wait_with_output()
        })
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("no orphan data") {
        return (0, text);
    }
    let orphans = text
        .lines()
        .find(|l| l.starts_with("Total"))
        .and_then(|l| l.split("orphan:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("volume.fsck said:\n{text}"));
    (orphans, text)
}

/// A filer path for a URL.
pub fn percent_path(p: &str) -> String {
    seaweed_replicate::sink::percent_encode(p, true)
}

/// Relative path -> file bytes (None for a directory).
pub type Tree = BTreeMap<String, Option<Vec<u8>>>;

/// The local tree under `root`, symlinks read as "-> target".
pub fn local_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.insert(
                    rel,
                    Some(format!("-> {}", std::fs::read_link(&p).unwrap().display()).into_bytes()),
                );
            } else if ft.is_dir() {
                out.insert(rel, None);
                walk(root, &p, out);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// Describe how two trees differ (empty when equal).
pub fn diff(want: &Tree, got: &Tree) -> String {
    let mut s = String::new();
    for (k, v) in want {
        match got.get(k) {
            None => s += &format!("missing {k}\n"),
            Some(g) if g != v => {
                s += &format!(
                    "differs {k}: want {} bytes, got {} bytes\n",
                    v.as_ref().map_or(0, |b| b.len()),
                    g.as_ref().map_or(0, |b| b.len())
                )
            }
            _ => {}
        }
    }
    for k in got.keys() {
        if !want.contains_key(k) {
            s += &format!("unexpected {k}\n");
        }
    }
    s
}

/// Poll `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Upload `count` small files, `/data/t0.txt` and on, each after a quiet spell drawn from
/// `spells_ms` (seeded), and wait for each in the local sink `sink` for at most 10 s.
/// Returns the slowest arrival.
pub async fn trickle(
    bed: &TestBed,
    sink: &Path,
    log: &Path,
    count: usize,
    spells_ms: std::ops::Range<u64>,
    seed: u64,
) -> Duration {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut slowest = Duration::ZERO;
    for i in 0..count {
        tokio::time::sleep(Duration::from_millis(rng.u64(spells_ms.clone()))).await;
        let name = format!("t{i}.txt");
        bed.upload(&format!("/data/{name}"), b"trickle", "").await;
        let started = Instant::now();
        assert!(
            eventually(Duration::from_secs(10), || async {
                sink.join(&name).exists()
            })
            .await,
            "{name} took more than 10 s:\n{}",
            tail(log, 20)
        );
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// The value of the sample `series` (name with labels, exactly as exposed).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Wait until `/readyz` answers `status` with a body containing `says`.
pub async fn readyz_becomes(base: &str, status: u16, says: &str, timeout: Duration, log: &Path) {
    let http = seaweed_replicate::http::plain();
    let url = format!("{base}/readyz");
    assert!(
        eventually(timeout, || async {
            matches!(get(&http, &url).await, Some((s, body)) if s == status && body.contains(says))
        })
        .await,
        "/readyz never answered {status} with {says:?}: {:?}\n{}",
        get(&http, &url).await,
        tail(log, 30)
    );
}

pub async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let r = http.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// The local date (`YYYY-MM-DD`) of the mtime of the source entry at `path`: the dated
/// directory an incremental sink puts it in. Taken from the entry, not the clock, so a
/// test that runs across midnight still looks in the right place.
pub async fn local_day(bed: &TestBed, path: &str) -> String {
    let entry = bed.entry(path).await;
    chrono::DateTime::parse_from_rfc3339(entry["Mtime"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Local)
        .format("%Y-%m-%d")
        .to_string()
}

/// Wait until the sink under `sink` equals the source tree under `root` (minus `skip`).
pub async fn assert_converges(bed: &TestBed, root: &str, skip: &[&str], sink: &Path, log: &Path) {
    wait_for_match("sink", log, || async {
        (bed.tree(root, skip).await, local_tree(sink))
    })
    .await;
}

/// Poll `trees` (wanted, actual) until they are equal; after 60 s fail with their
/// difference and the end of the replicate log.
async fn wait_for_match<F, Fut>(what: &str, log: &Path, mut trees: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (Tree, Tree)>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (want, got) = trees().await;
        let last = diff(&want, &got);
        if last.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never matched the source:\n{last}\nreplicate log:\n{}",
            tail(log, 40)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A loopback port P, with P + 10000 free too, for servers a test starts itself. It comes
/// from 32000-32767, a range the test-bed script never picks (it uses 11000-31999), and
/// successive calls in one process hand out different ports.
pub fn free_port_pair() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let bindable = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let base = (std::process::id() % 400) as u16;
    for _ in 0..768 {
        let p = 32000 + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 768;
        if bindable(p) && bindable(p + 10000) {
            return p;
        }
    }
    panic!("no free port pair in 32000-32767");
}

/// A binary the test bed installed (`weed`, `noida-db`, `moto_server`).
pub fn testbed_binary(name: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(script())
        .arg("install")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let prefix = format!("{name}=");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("install prints {name}="))
        .into()
}

/// A server process a test started itself, on `port`, in its own directory (its cwd,
/// holding `out.log` and `err.log`); killed on drop.
pub struct Service {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Service {
    /// Start `cmd` and wait until `port` accepts connections.
    pub fn spawn(what: &str, cmd: Command, port: u16) -> Service {
        Self::spawn_within(what, cmd, port, Duration::from_secs(30))
    }

    /// [`Service::spawn`], waiting up to `wait` for the port. The process gets its own
    /// process group, and the whole group is killed on drop (servers started by scripts).
    pub fn spawn_within(what: &str, mut cmd: Command, port: u16, wait: Duration) -> Service {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let dir = tempfile::Builder::new()
            .prefix("svc")
            .tempdir_in("/tmp")
            .unwrap();
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("out.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let service = Service { child, port, dir };
        let deadline = Instant::now() + wait;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{what} did not start on {port}: {} {}",
                tail(&service.dir.path().join("out.log"), 10),
                tail(&service.dir.path().join("err.log"), 10)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        service
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Send `signal` to the whole process group (SIGSTOP freezes the server with its
    /// connections open: it accepts, and never answers; SIGCONT wakes it).
    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(-(self.child.id() as i32), signal) };
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's S3 server.
pub fn start_moto() -> Service {
    let port = free_port_pair();
    let mut cmd = Command::new(testbed_binary("moto_server"));
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    Service::spawn("moto_server", cmd, port)
}

pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A working directory with upstream-format config files, as an operator would have.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Drop for Workdir {
    fn drop(&mut self) {
        keep_if_failed(&mut self.dir, "work directory");
    }
}

impl Workdir {
    pub fn new(
        bed: &TestBed,
        source_dir: &str,
        sink_dir: &Path,
        replication_extra: &str,
    ) -> Workdir {
        let sink = format!(
            "[sink.local]\nenabled = true\ndirectory = \"{}\"\nis_incremental = false\n",
            sink_dir.display()
        );
        Self::with_sink(bed, source_dir, &sink, replication_extra)
    }

    /// Replicate into `target_dir` on `target`'s filer (`[sink.filer]`).
    pub fn filer(
        bed: &TestBed,
        source_dir: &str,
        target: &TestBed,
        target_dir: &str,
        sink_extra: &str,
    ) -> Workdir {
        let sink = format!(
            "[sink.filer]\nenabled = true\ngrpcAddress = \"{}\"\ndirectory = \"{target_dir}\"\n{sink_extra}\n",
            target.var("FILER_GRPC")
        );
        Self::with_sink(bed, source_dir, &sink, "")
    }

    /// `replication_extra` goes after `[source.filer]`'s keys (it may open new sections).
    pub fn with_sink(
        bed: &TestBed,
        source_dir: &str,
        sink_section: &str,
        replication_extra: &str,
    ) -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix("work")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(
            dir.path().join("replication.toml"),
            format!(
                "{sink_section}\n[source.filer]\nenabled = true\ngrpcAddress = \"{}\"\ndirectory = \"{source_dir}\"\n{replication_extra}\n",
                bed.var("FILER_GRPC"),
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("notification.toml"),
            format!(
                "[notification.kafka]\nenabled = true\nhosts = [\"{}\"]\ntopic = \"{}\"\noffsetFile = \"./last.offset\"\n\
                 offsetSaveIntervalSeconds = 1\n",
                bed.var("KAFKA_ADDR"),
                bed.var("TOPIC")
            ),
        )
        .unwrap();
        Workdir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write the offset file (`last.offset`) for `topic`: `(partition, offset)` pairs,
    /// offsets as JSON text (so hostile ones can be written too).
    pub fn set_offsets(&self, topic: &str, offsets: &[(i32, &str)]) {
        let body: Vec<String> = offsets
            .iter()
            .map(|(p, o)| format!(r#""{p}":{o}"#))
            .collect();
        std::fs::write(
            self.path().join("last.offset"),
            format!(
                r#"{{"topic":"{topic}","partitionOffsets":{{{}}}}}"#,
                body.join(",")
            ),
        )
        .unwrap();
    }

    /// Use `[sink.<name>]` instead of `[sink.local]`, with its default `is_incremental`.
    pub fn use_sink_section(&self, name: &str) {
        let p = self.path().join("replication.toml");
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("[sink.local]", &format!("[sink.{name}]"))
            .replace("is_incremental = false\n", "");
        std::fs::write(p, text).unwrap();
    }
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("replicate.log")
    }
    pub fn offsets(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path().join("last.offset")).unwrap()).unwrap()
    }

    /// The metadata-log checkpoint key the log names (`checkpoint_key=...`), once it has.
    pub fn checkpoint_key(&self) -> Option<String> {
        let log = std::fs::read_to_string(self.log()).ok()?;
        let key = log
            .split("checkpoint_key=")
            .nth(1)?
            .split_whitespace()
            .next()?;
        Some(key.to_string())
    }

    /// The offset file's saved offset for `partition` (upstream's: the last one done),
    /// `None` while there is no readable file or no such partition in it.
    pub fn saved_offset(&self, partition: i32) -> Option<i64> {
        std::fs::read(self.path().join("last.offset"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["partitionOffsets"][partition.to_string()].as_i64())
    }
}

/// A work directory that reads `/data` from the metadata log (no notification.toml at
/// all) into the local sink `sink`; `extra` goes after `subscribe = true`.
pub fn subscribe_workdir(bed: &TestBed, sink: &Path, extra: &str) -> Workdir {
    let work = Workdir::new(bed, "/data", sink, &format!("subscribe = true\n{extra}"));
    std::fs::remove_file(work.path().join("notification.toml")).unwrap();
    work
}

/// A running `replicate` process.
pub struct Replicator {
    child: Child,
}

impl Replicator {
    /// Start the real binary in `work`, plainly, as a user would.
    pub fn start(work: &Workdir) -> Replicator {
        Self::start_with_env(work, &[])
    }

    /// [`Replicator::start`] with these environment variables set.
    pub fn start_with_env(work: &Workdir, env: &[(&str, &str)]) -> Replicator {
        Self::start_with(work, env, &[])
    }

    /// [`Replicator::start`] with these environment variables and these flags.
    pub fn start_with(work: &Workdir, env: &[(&str, &str)], args: &[&str]) -> Replicator {
        Self::start_wrapped(work, &[], env, args)
    }

    /// [`Replicator::start_with`], run by `wrapper` (a command that ends by running the
    /// one it is given in its own process, e.g. `ip netns exec NAME`).
    pub fn start_wrapped(
        work: &Workdir,
        wrapper: &[&str],
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Replicator {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(work.log())
            .unwrap();
        let binary = env!("CARGO_BIN_EXE_replicate");
        let mut command = match wrapper.split_first() {
            None => Command::new(binary),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(binary);
                c
            }
        };
        let child = command
            .arg("-v=1")
            .args(args)
            .current_dir(work.path())
            .env("HOME", work.path())
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Replicator { child }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// CPU time the process has used so far (user and system), from `/proc`.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // After the command name, which is in parentheses: utime and stime are fields
        // 14 and 15 of the line, 12 and 13 after it.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// Send `signal` and return at once (SIGSTOP freezes the process, SIGCONT wakes it).
    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Wait (up to a minute) for the process to exit on its own; its exit status.
    pub fn stop_when_exited(mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("replicate did not exit on its own within 60 s");
    }

    /// SIGTERM, then wait; returns the exit status and how long it took.
    pub fn stop(self) -> (ExitStatus, Duration) {
        self.stop_with(libc::SIGTERM)
    }

    /// Send `signal`, then wait; returns the exit status and how long it took.
    pub fn stop_with(mut self, signal: i32) -> (ExitStatus, Duration) {
        let started = Instant::now();
        unsafe { libc::kill(self.child.id() as i32, signal) };
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("replicate did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A file entry with inline content, as a filer publishes small files.
pub fn inline_file(name: &str, content: &[u8]) -> pb::Entry {
    pb::Entry {
        name: name.into(),
        content: content.to_vec(),
        attributes: Some(pb::FuseAttributes {
            file_size: content.len() as u64,
            file_mode: 0o644,
            mtime: 1_700_000_000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The payload of a create event for `entry` under `parent`.
pub fn create_event(parent: &str, entry: pb::Entry) -> Vec<u8> {
    use prost::Message;
    pb::EventNotification {
        new_entry: Some(entry),
        new_parent_path: parent.into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Run `replicate ARGS` in `dir` to completion.
pub fn replicate_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_replicate"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn output(o: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One HTTP/1.1 request read from `conn` (a test server's connection): its head (request
/// line and headers) and its body, by `content-length`. `None` if the peer closed first.
pub async fn read_http_request<S>(conn: &mut S) -> Option<(String, String)>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        let Some(i) = text.find("\r\n\r\n") else {
            continue;
        };
        let head = text[..i].to_string();
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        if raw.len() >= i + 4 + len {
            return Some((head, text[i + 4..i + 4 + len].to_string()));
        }
    }
}

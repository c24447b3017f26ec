//! One scenario for every input: the same changes to a live filer, replicated into a
//! local directory through the input under test, compared byte for byte.

use super::*;

/// Called after each batch of changes, for inputs fed by the test (it forwards what the
/// filer published since the last call); a no-op for inputs that read the filer itself.
pub type Relay<'a> =
    &'a (dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> + Sync);

/// A backlog that exists before `replicate` starts, then changes while it runs: overwrites,
/// renames of files and directories, moves into and out of scope, deletes (one recursive),
/// a multi-chunk file rewritten. `work` replicates `/data` into `sink`.
pub async fn scenario(
    bed: &TestBed,
    work: &Workdir,
    env: &[(&str, &str)],
    sink: &Path,
    relay: Relay<'_>,
) {
    bed.upload("/data/a.txt", b"first version", "").await;
    bed.upload(
        "/data/dir one/ü naïve file.txt",
        "grüße, 世界".as_bytes(),
        "",
    )
    .await;
    bed.upload(
        "/data/big/multi.bin",
        &bytes(1, 3 * 1024 * 1024 + 777),
        "maxMB=1",
    )
    .await;
    bed.upload("/data/out/leaving.txt", b"moves out of scope", "")
        .await;
    // Characters the Go CDK escapes in metadata ('+' and '%' unescape differently in
    // queries and in paths).
    bed.upload("/data/a+b c%41.txt", b"plus, space, percent", "")
        .await;
    bed.upload("/outside/coming.txt", b"moves into scope", "")
        .await;
    relay().await;
    let rep = Replicator::start_with_env(work, env);
    assert_converges(bed, "/data", &[], sink, &work.log()).await;

    bed.upload("/data/a.txt", b"second, longer version of a", "")
        .await;
    bed.mv("/data/a.txt", "/data/renamed/a2.txt").await;
    bed.mv("/data/big", "/data/big2").await;
    bed.mv("/outside/coming.txt", "/data/came.txt").await;
    bed.mv("/data/out/leaving.txt", "/outside/left.txt").await;
    bed.delete("/data/dir one/ü naïve file.txt", false).await;
    bed.upload("/data/deep/x/y/z.txt", b"soon gone", "").await;
    bed.delete("/data/deep", true).await;
    bed.upload(
        "/data/multi/over.bin",
        &bytes(3, 2 * 1024 * 1024),
        "maxMB=1",
    )
    .await;
    bed.upload(
        "/data/multi/over.bin",
        &bytes(4, 1024 * 1024 + 5),
        "maxMB=1",
    )
    .await;
    relay().await;
    assert_converges(bed, "/data", &[], sink, &work.log()).await;
    let tree = local_tree(sink);
    assert!(tree.contains_key("big2/multi.bin") && !tree.contains_key("big"));
    assert!(tree.contains_key("came.txt") && !tree.contains_key("out/leaving.txt"));
    let (status, took) = rep.stop();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    assert!(
        !work.path().join("replicate.parked.jsonl").exists(),
        "{}",
        tail(&work.log(), 20)
    );
}

/// A queue the test feeds as the filer's publisher would.
#[async_trait::async_trait]
pub trait Queue: Send + Sync {
    /// Publish one message; `key` None leaves the key out altogether.
    async fn publish(&self, key: Option<&str>, payload: &[u8]);
    /// The notification.toml that points `replicate` at this queue.
    fn notification_toml(&self) -> String;
    /// Environment `replicate` needs for it (server URLs).
    fn env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Forwards what the filer published to Kafka since the last call into `queue`.
pub struct Forwarder<'a> {
    bed: &'a TestBed,
    queue: &'a dyn Queue,
    sent: std::sync::atomic::AtomicUsize,
}

impl<'a> Forwarder<'a> {
    pub fn new(bed: &'a TestBed, queue: &'a dyn Queue) -> Self {
        Forwarder {
            bed,
            queue,
            sent: Default::default(),
        }
    }

    pub async fn forward(&self) {
        use std::sync::atomic::Ordering;
        let from = self.sent.load(Ordering::SeqCst);
        let records = self.bed.records_from(from);
        for (key, payload) in &records {
            self.queue.publish(Some(key), payload).await;
        }
        self.sent.store(from + records.len(), Ordering::SeqCst);
    }
}

/// `replicate` reading `queue` into `sink`.
pub fn queue_workdir(bed: &TestBed, queue: &dyn Queue, sink: &Path, extra: &str) -> Workdir {
    let work = Workdir::new(bed, "/data", sink, extra);
    std::fs::write(
        work.path().join("notification.toml"),
        queue.notification_toml(),
    )
    .unwrap();
    work
}

/// The suite every queue input passes: events recorded from the real filer replayed into
/// the queue through the whole scenario; poison and keyless messages parked while the
/// next events flow; a sink failure under `on_failure = "hold"` redelivered until it
/// succeeds.
pub async fn queue_suite(bed: &TestBed, queue: &dyn Queue) {
    let env: Vec<(String, String)> = queue.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let relay = Forwarder::new(bed, queue);
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("root");
    let work = queue_workdir(bed, queue, &root, "");
    scenario(bed, &work, &env, &root, &|| Box::pin(relay.forward())).await;

    // Poison: a body that is no event, and a real event without its key. Both are parked
    // with their queue position and acknowledged; the next events flow.
    let rep = Replicator::start_with_env(&work, &env);
    let some_event = prost::Message::encode_to_vec(&seaweed_replicate::pb::EventNotification {
        new_entry: Some(seaweed_replicate::pb::Entry {
            name: "keyless.txt".into(),
            ..Default::default()
        }),
        new_parent_path: "/data".into(),
        ..Default::default()
    });
    queue
        .publish(Some("/data/poison"), b"\xff\xfe not a protobuf")
        .await;
    queue.publish(None, &some_event).await;
    bed.upload("/data/after-poison.txt", b"still flowing", "")
        .await;
    relay.forward().await;
    assert_converges(bed, "/data", &[], &root, &work.log()).await;
    // Not every queue keeps order (SQS standard queues do not): wait for both.
    let parked_file = work.path().join("replicate.parked.jsonl");
    eventually(Duration::from_secs(120), || async {
        std::fs::read_to_string(&parked_file).is_ok_and(|t| t.lines().count() >= 2)
    })
    .await;
    let parked = std::fs::read_to_string(&parked_file).unwrap_or_default();
    let parked: Vec<serde_json::Value> = parked
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parked.len(), 2, "{parked:#?}\n{}", tail(&work.log(), 40));
    assert!(
        parked
            .iter()
            .all(|p| p["id"].as_str().is_some_and(|id| !id.is_empty())),
        "{parked:#?}"
    );
    assert!(
        parked
            .iter()
            .any(|p| p["error"].as_str().unwrap().contains("no key")),
        "{parked:#?}"
    );
    assert!(
        parked
            .iter()
            .any(|p| p["error"].as_str().unwrap().contains("protobuf")),
        "{parked:#?}"
    );
    assert!(rep.stop().0.success());

    // A sink failure under hold: the message goes back to the queue and is delivered again
    // until it succeeds.
    let held_root = area.path().join("held");
    let held = queue_workdir(
        bed,
        queue,
        &held_root,
        "[replicate]\non_failure = \"hold\"\nevent_deadline_seconds = 1\n",
    );
    let rep = Replicator::start_with_env(&held, &env);
    // Once it has started (start-up waits for a usable sink root), the root becomes a
    // file, so every write fails (retryably).
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read_to_string(held.log()).is_ok_and(|l| l.contains("reachable"))
        })
        .await,
        "{}",
        tail(&held.log(), 20)
    );
    let _ = std::fs::remove_dir_all(&held_root);
    std::fs::write(&held_root, b"in the way").unwrap();
    bed.upload("/data/blocked/x.txt", b"delivered again", "")
        .await;
    relay.forward().await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read_to_string(held.log()).is_ok_and(|l| l.contains("holding it"))
        })
        .await,
        "{}",
        tail(&held.log(), 20)
    );
    std::fs::remove_file(&held_root).unwrap();
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read(held_root.join("blocked/x.txt")).is_ok_and(|b| b == b"delivered again")
        })
        .await,
        "a held message was never delivered again\n{}",
        tail(&held.log(), 20)
    );
    assert!(rep.stop().0.success());
}

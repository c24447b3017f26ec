//! `[sink.filer]` against real clusters: cluster A publishes to its broker, `replicate`
//! copies A into cluster B (or into another folder of A), byte for byte.

mod common;

use common::*;
use prost::Message;
use seaweed_replicate::pb;
use std::time::Duration;

fn attrs_of(e: &serde_json::Value) -> (u64, String, String) {
    (
        e["Mode"].as_u64().unwrap_or(0),
        e["Mtime"].as_str().unwrap_or("").to_string(),
        e["Mime"].as_str().unwrap_or("").to_string(),
    )
}

/// The working-tree scenario into another cluster, with attributes and manifests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_into_another_cluster() {
    let a = TestBed::start(BedOptions::default());
    let b = TestBed::start(BedOptions::default());
    a.upload("/data/a.txt", b"first version", "").await;
    a.upload(
        "/data/dir one/ü naïve file.txt",
        "grüße, 世界".as_bytes(),
        "",
    )
    .await;
    a.upload(
        "/data/big/multi.bin",
        &bytes(1, 3 * 1024 * 1024 + 777),
        "maxMB=1",
    )
    .await;
    a.upload("/data/out/leaving.txt", b"moves out of scope", "")
        .await;
    a.upload("/outside/coming.txt", b"moves into scope", "")
        .await;
    // A nested manifest, written straight to A's volumes and filer.
    let (d1, d2, d3) = (bytes(11, 70_000), bytes(12, 70_000), bytes(13, 30_000));
    let c1 = a.put_chunk(&d1, 0, 1).await;
    let c2 = a.put_chunk(&d2, 70_000, 2).await;
    let c3 = a.put_chunk(&d3, 140_000, 3).await;
    let mut m1 = a
        .put_chunk(
            &pb::FileChunkManifest {
                chunks: vec![c1, c2],
            }
            .encode_to_vec(),
            0,
            4,
        )
        .await;
    m1.size = 140_000;
    m1.is_chunk_manifest = true;
    let mut m2 = a
        .put_chunk(
            &pb::FileChunkManifest {
                chunks: vec![m1, c3],
            }
            .encode_to_vec(),
            0,
            5,
        )
        .await;
    m2.size = 170_000;
    m2.is_chunk_manifest = true;
    let attrs = Some(pb::FuseAttributes {
        file_size: 170_000,
        file_mode: 0o640,
        mtime: 1_700_000_000,
        mime: "application/x-test".into(),
        ..Default::default()
    });
    let mut extended = std::collections::HashMap::new();
    extended.insert("user.origin".to_string(), b"cluster-a".to_vec());
    a.create_entry(
        "/data",
        pb::Entry {
            name: "manifest.bin".into(),
            chunks: vec![m2],
            attributes: attrs,
            extended,
            ..Default::default()
        },
    )
    .await;

    let work = Workdir::filer(&a, "/data", &b, "/backup", "");
    let rep = Replicator::start(&work);
    a.assert_same_tree("/data", &b, "/backup", &[], &work.log())
        .await;

    let ids = |e: serde_json::Value| -> Vec<String> {
        e["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["file_id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let before_move = ids(b.entry("/backup/big/multi.bin").await);

    a.upload("/data/a.txt", b"second, longer version of a", "")
        .await;
    a.mv("/data/a.txt", "/data/renamed/a2.txt").await;
    a.mv("/data/big", "/data/big2").await;
    a.mv("/outside/coming.txt", "/data/came.txt").await;
    a.mv("/data/out/leaving.txt", "/outside/left.txt").await;
    a.delete("/data/dir one/ü naïve file.txt", false).await;
    a.upload("/data/deep/x/y/z.txt", b"soon gone", "").await;
    a.delete("/data/deep", true).await;
    a.upload(
        "/data/multi/over.bin",
        &bytes(3, 2 * 1024 * 1024),
        "maxMB=1",
    )
    .await;
    a.upload(
        "/data/multi/over.bin",
        &bytes(4, 1024 * 1024 + 5),
        "maxMB=1",
    )
    .await;
    a.assert_same_tree("/data", &b, "/backup", &[], &work.log())
        .await;

    // Attributes and xattrs as the source has them; data lives in B's own volumes.
    for path in [
        "renamed/a2.txt",
        "big2/multi.bin",
        "manifest.bin",
        "multi/over.bin",
    ] {
        let (src, dst) = (
            a.entry(&format!("/data/{path}")).await,
            b.entry(&format!("/backup/{path}")).await,
        );
        assert_eq!(attrs_of(&src), attrs_of(&dst), "{path}");
        for chunk in dst["chunks"].as_array().unwrap() {
            assert!(
                chunk["source_file_id"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{path}: {chunk}"
            );
        }
    }
    assert_eq!(
        ids(b.entry("/backup/big2/multi.bin").await),
        before_move,
        "a directory rename must not re-copy data"
    );
    let m = b.entry("/backup/manifest.bin").await;
    assert_eq!(
        m["chunks"][0]["is_chunk_manifest"], true,
        "the manifest is rebuilt, not flattened: {m}"
    );
    assert_eq!(
        m["Extended"]["user.origin"], "Y2x1c3Rlci1h",
        "xattrs copied: {m}"
    );
    assert!(
        b.list("/backup")
            .await
            .iter()
            .all(|e| e["FullPath"] != "/backup/big"),
        "renamed directory's old path gone"
    );

    let (status, took) = rep.stop();
    assert!(status.success() && took < Duration::from_secs(10));
    assert!(!work.path().join("replicate.parked.jsonl").exists());
}

/// An encrypted source (`-filer.encryptVolumeData`, read JWT) into a target collection
/// with its own replication setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_source_into_a_target_collection() {
    const SECURITY: &str = "[jwt.signing.read]\nkey = \"filer-sink-read-key\"\n";
    let a = TestBed::start(BedOptions {
        security_toml: Some(SECURITY.into()),
        weed_args: "-filer.encryptVolumeData".into(),
        ..Default::default()
    });
    let b = TestBed::start(BedOptions::default());
    let text = "encrypted and compressed text\n".repeat(2000).into_bytes();
    a.upload("/data/t/notes.txt", &text, "").await;
    a.upload(
        "/data/t/random.bin",
        &bytes(31, 2 * 1024 * 1024 + 1),
        "maxMB=1",
    )
    .await;
    let work = Workdir::filer(
        &a,
        "/data",
        &b,
        "/backup",
        "collection = \"backupcol\"\nreplication = \"000\"",
    );
    std::fs::write(work.path().join("security.toml"), SECURITY).unwrap();
    let rep = Replicator::start(&work);
    a.assert_same_tree("/data", &b, "/backup", &[], &work.log())
        .await;
    let e = b.entry("/backup/t/notes.txt").await;
    assert!(
        e["chunks"][0]["cipher_key"].is_string(),
        "ciphertext copied with its key: {e}"
    );
    let status: serde_json::Value = serde_json::from_slice(
        &b.http
            .get(format!("http://{}/vol/status", b.var("MASTER")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        status.to_string().contains("\"Collection\":\"backupcol\""),
        "no volume in the target collection: {status}"
    );
    rep.stop();
    assert!(!work.path().join("replicate.parked.jsonl").exists());
}

/// One filer, one folder into another (`/buckets` to `/backup`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_to_folder_on_one_filer() {
    let a = TestBed::start(BedOptions::default());
    a.upload("/buckets/photos/x.txt", b"in a bucket", "").await;
    a.upload(
        "/buckets/photos/deep/y.bin",
        &bytes(41, 1024 * 1024 + 3),
        "maxMB=1",
    )
    .await;
    let work = Workdir::filer(&a, "/buckets", &a, "/backup", "");
    let rep = Replicator::start(&work);
    a.assert_same_tree("/buckets", &a, "/backup", &[], &work.log())
        .await;
    a.delete("/buckets/photos/x.txt", false).await;
    a.upload("/buckets/videos/z.txt", b"second bucket", "")
        .await;
    a.assert_same_tree("/buckets", &a, "/backup", &[], &work.log())
        .await;
    rep.stop();
}

/// A -> B and B -> A at once: changes on either side arrive once and are not sent back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_active_converges_without_echo() {
    let a = TestBed::start(BedOptions::default());
    let b = TestBed::start(BedOptions::default());
    let ab = Workdir::filer(&a, "/data", &b, "/data", "");
    let ba = Workdir::filer(&b, "/data", &a, "/data", "");
    let rep_ab = Replicator::start(&ab);
    let rep_ba = Replicator::start(&ba);

    a.upload("/data/from-a/one.txt", b"written on A", "").await;
    a.upload(
        "/data/from-a/two.bin",
        &bytes(51, 1024 * 1024 + 9),
        "maxMB=1",
    )
    .await;
    b.upload("/data/from-b/three.txt", b"written on B", "")
        .await;
    a.assert_same_tree("/data", &b, "/data", &[], &ab.log())
        .await;
    a.mv("/data/from-a/one.txt", "/data/from-a/moved/one.txt")
        .await;
    b.mv("/data/from-b", "/data/from-b-renamed").await;
    a.upload("/data/from-a/gone/x.txt", b"x", "").await;
    a.delete("/data/from-a/gone", true).await;
    a.assert_same_tree("/data", &b, "/data", &[], &ab.log())
        .await;

    // Quiet: no event keeps bouncing between the clusters.
    let before = (a.high_watermarks(), b.high_watermarks());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        before,
        (a.high_watermarks(), b.high_watermarks()),
        "events are still bouncing"
    );
    a.assert_same_tree("/data", &b, "/data", &[], &ab.log())
        .await;

    // Each change was applied by exactly the replicator facing away from where it happened.
    let ab_log = std::fs::read_to_string(ab.log()).unwrap();
    let ba_log = std::fs::read_to_string(ba.log()).unwrap();
    // "replicated at partition P offset O: KEY", one line per event applied.
    let applied = |log: &str, prefix: &str| {
        log.lines()
            .filter(|l| l.contains(" replicated at "))
            .any(|l| l.contains(&format!(": {prefix}")))
    };
    assert!(
        !applied(&ab_log, "/data/from-b"),
        "B's change echoed back through A -> B:\n{ab_log}"
    );
    assert!(
        !applied(&ba_log, "/data/from-a"),
        "A's change echoed back through B -> A:\n{ba_log}"
    );
    assert!(applied(&ab_log, "/data/from-a/two.bin"));
    assert!(applied(&ba_log, "/data/from-b/three.txt"));
    rep_ab.stop();
    rep_ba.stop();
}

/// The target cluster going down (~13 s) for longer than the event deadline (8 s) is an
/// outage, not a bad event: replication waits for it and parks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_outage_is_waited_out_not_parked() {
    let a = TestBed::start(BedOptions::default());
    let b = TestBed::start(BedOptions::default());
    let work = Workdir::filer(
        &a,
        "/data",
        &b,
        "/backup",
        "\n[replicate]\nevent_deadline_seconds = 8",
    );
    let rep = Replicator::start(&work);
    a.upload("/data/before.txt", b"before the outage", "").await;
    a.assert_same_tree("/data", &b, "/backup", &[], &work.log())
        .await;

    let restart = tokio::task::spawn_blocking({
        let dir = b.dir.path().to_path_buf();
        move || TestBed::restart_weed_blocking(dir)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        a.upload(
            &format!("/data/during/{i}.bin"),
            &bytes(70 + i, 300_000),
            "",
        )
        .await;
    }
    restart.await.unwrap();
    a.assert_same_tree("/data", &b, "/backup", &[], &work.log())
        .await;
    assert!(
        !work.path().join("replicate.parked.jsonl").exists(),
        "an outage parked events"
    );
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("sink unavailable; events wait for it")
            && log.contains("sink available again"),
        "the outage was not noticed:\n{log}"
    );
    let (status, _) = rep.stop();
    assert!(status.success());
}

/// A file renamed and then rewritten under its new name, the two events applied the other
/// way round (as they may be when they sit on two partitions: each is keyed by its own
/// path): the rename must not put the older file back over the rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_applied_after_a_later_rewrite_does_not_undo_it() {
    let a = TestBed::start(BedOptions::default());
    a.upload("/data/old.bin", &bytes(9, 700), "").await;
    a.upload("/data/other.bin", &bytes(10, 500), "").await;
    let work = Workdir::filer(&a, "/data", &a, "/backup", "");
    let rep = Replicator::start(&work);
    a.assert_same_tree("/data", &a, "/backup", &[], &work.log())
        .await;
    let (status, _) = rep.stop();
    assert!(status.success());
    let published = a.high_watermarks()[&0] as usize;
    a.mv("/data/old.bin", "/data/new.bin").await;
    a.upload("/data/new.bin", b"rewritten after the move", "")
        .await;
    // A plain rename onto an existing, newer file still replaces it, as on the source.
    a.upload("/data/newer.bin", b"newer, then renamed over", "")
        .await;
    a.mv("/data/other.bin", "/data/newer.bin").await;
    let mut records = Vec::new();
    for _ in 0..100 {
        records = a.records_from(published);
        if records.iter().any(|(k, _)| k == "/data/other.bin") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
    let rename = keys.iter().position(|k| *k == "/data/old.bin");
    let rewrite = keys.iter().rposition(|k| *k == "/data/new.bin");
    assert!(rename < rewrite && rename.is_some(), "published: {keys:?}");
    // Replay the rename and the rewrite swapped, and resume after the originals.
    for i in [rewrite.unwrap(), rename.unwrap()] {
        a.produce(&records[i].0, &records[i].1).await;
    }
    for (key, payload) in records
        .iter()
        .filter(|(k, _)| !k.ends_with("old.bin") && !k.ends_with("/new.bin"))
    {
        a.produce(key, payload).await;
    }
    let last = published + records.len() - 1;
    work.set_offsets(a.var("TOPIC"), &[(0, &last.to_string())]);
    let rep = Replicator::start(&work);
    a.assert_same_tree("/data", &a, "/backup", &[], &work.log())
        .await;
    assert_eq!(
        a.get("/backup/newer.bin").await,
        bytes(10, 500),
        "the rename over a newer file replaced it"
    );
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&work.log(), 20));
    assert!(!work.path().join("replicate.parked.jsonl").exists());
}

/// Folder to folder through tansu on three partitions: a directory's rename and its
/// children's renames land on different partitions and may apply in either order; the
/// target converges either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_renames_converge_across_partitions() {
    let a = TestBed::start(BedOptions {
        partitions: 3,
        broker: "tansu",
        ..Default::default()
    });
    for i in 0..24u64 {
        a.upload(
            &format!("/data/d{}/f{i}.bin", i % 3),
            &bytes(300 + i, 700),
            "",
        )
        .await;
    }
    let work = Workdir::filer(&a, "/data", &a, "/backup", "");
    let rep = Replicator::start(&work);
    a.assert_same_tree("/data", &a, "/backup", &[], &work.log())
        .await;
    a.mv("/data/d1", "/data/moved").await;
    a.mv("/data/d2", "/data/d0/inner").await;
    a.upload("/data/moved/f1.bin", b"rewritten after the move", "")
        .await;
    a.assert_same_tree("/data", &a, "/backup", &[], &work.log())
        .await;
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&work.log(), 20));
    assert!(
        !work.path().join("replicate.parked.jsonl").exists(),
        "{}",
        tail(&work.log(), 20)
    );
}

/// The write attempts noted as unfinished, with the chunks each noted.
fn noted_uploads(work: &Workdir) -> Vec<usize> {
    noted_in(&work.path().join("replicate.filer-uploads"))
}

/// [`noted_uploads`] of the journal directory `dir`: its segments (`b`, `f` and `e`
/// lines, by attempt serial) read in order, per process.
fn noted_in(dir: &std::path::Path) -> Vec<usize> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    // `<pid>-<start>-<n>.log`: by process, then by segment number.
    files.sort_by_key(|p| {
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let (owner, n) = stem.rsplit_once('-').unwrap_or((&stem, "0"));
        (owner.to_string(), n.parse::<u64>().unwrap_or(0))
    });
    let mut open: std::collections::BTreeMap<(String, u64), usize> = Default::default();
    for path in files {
        let owner = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit_once('-'))
            .map(|(o, _)| o.to_string())
            .unwrap_or_default();
        for line in std::fs::read_to_string(&path).unwrap_or_default().lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(kind), Some(Ok(serial))) = (parts.next(), parts.next().map(str::parse))
            else {
                continue;
            };
            let id = (owner.clone(), serial);
            match kind {
                "b" => {
                    open.insert(id, 0);
                }
                "f" => {
                    if let Some(n) = open.get_mut(&id) {
                        *n += 1;
                    }
                }
                "e" => {
                    open.remove(&id);
                }
                _ => {}
            }
        }
    }
    open.into_values().collect()
}

/// Wait until the target holds no needle that no entry references (the filer deletes
/// adopted chunks from a queue, so this may take a moment); fail with `volume.fsck`'s
/// report if it never does.
async fn no_orphans_remain(b: &TestBed) {
    let mut last = String::new();
    let clean = eventually(Duration::from_secs(90), || {
        let (n, text) = orphan_needles_of(b);
        last = text;
        async move { n == 0 }
    })
    .await;
    assert!(clean, "orphaned chunks on the target:\n{last}");
}

/// Kill `rep` while a copy is under way: frozen (SIGSTOP) as soon as an attempt has
/// noted an upload, killed if one still has while it is frozen (a state that cannot
/// change under a frozen process), else woken to try again. Deterministic: the kill
/// always lands mid-copy, however fast the machine.
fn kill_mid_copy(rep: Replicator, work: &Workdir) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if noted_uploads(work).iter().any(|n| *n >= 1) {
            rep.signal(libc::SIGSTOP);
            if noted_uploads(work).iter().any(|n| *n >= 1) {
                rep.stop_with(libc::SIGKILL);
                return;
            }
            rep.signal(libc::SIGCONT);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "no copy was under way within 120 s\n{}",
        tail(&work.log(), 20)
    );
}

/// Finding 5 of the reliability issue: chunks uploaded by an attempt that did not end in
/// an entry (the process killed mid-copy, or the event failed and was parked) stayed on
/// the target for good. Now a failed attempt deletes its chunks, and a start deletes
/// what a killed one left. One chunk at a time, so a large file's copy takes a while
/// and a file whose last chunk is on a volume that does not exist fails after copying
/// its first six.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_chunk_is_left_unreferenced_on_the_target() {
    let a = TestBed::start(BedOptions::default());
    let b = TestBed::start(BedOptions::default());
    let big = bytes(3, 24 * 1024 * 1024 + 17);
    a.upload("/data/big.bin", &big, "maxMB=1").await;
    let mut chunks = Vec::new();
    for i in 0..6u64 {
        chunks.push(
            a.put_chunk(&bytes(40 + i, 100_000), i as i64 * 100_000, 1)
                .await,
        );
    }
    chunks.push(pb::FileChunk {
        file_id: "9999,01637037d6".into(),
        offset: 600_000,
        size: 100,
        ..Default::default()
    });
    a.create_entry(
        "/data",
        pb::Entry {
            name: "broken.bin".into(),
            chunks,
            attributes: Some(pb::FuseAttributes {
                file_size: 600_100,
                file_mode: 0o644,
                mtime: 1_700_000_000,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;

    let work = Workdir::filer(&a, "/data", &b, "/backup", "chunk_concurrency = 1");
    // Killed mid-copy three times: each start first deletes what the last run left.
    for _ in 0..3 {
        kill_mid_copy(Replicator::start(&work), &work);
    }
    // The broken file fails until it is parked, each failed attempt deleting its own
    // six chunks; the big one arrives.
    let config = work.path().join("replication.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[replicate]\nevent_deadline_seconds = 3\n"),
    )
    .unwrap();
    let rep = Replicator::start(&work);
    let parked = work.path().join("replicate.parked.jsonl");
    assert!(
        eventually(Duration::from_secs(120), || async {
            parked.exists() && b.try_get("/backup/big.bin").await == big
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    let (status, _) = rep.stop();
    assert!(status.success());
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("deleted chunks that interrupted copies of an earlier run left")
            && log.contains("deleted the chunks of a failed copy"),
        "{}",
        tail(&work.log(), 30)
    );
    assert!(
        noted_uploads(&work).is_empty(),
        "{:?}",
        noted_uploads(&work)
    );
    no_orphans_remain(&b).await;
}

/// A copy abandoned halfway while the process keeps running (its partition moved to
/// another member, or the shutdown grace ran out: the pipeline drops the write) deletes
/// the chunks it uploaded at once, not at some later start. Dropped at a deterministic
/// point: between two polls of the write, as soon as it has noted an upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_copy_deletes_its_chunks_without_a_restart() {
    use seaweed_replicate::filer::{FilerSource, SourceOptions};
    use seaweed_replicate::sink::filer::{FilerSink, FilerSinkOptions};
    use seaweed_replicate::sink::{Sink, SinkKey};
    let a = TestBed::start(BedOptions::default());
    let b = TestBed::start(BedOptions::default());
    let big = bytes(11, 12 * 1024 * 1024);
    a.upload("/data/big.bin", &big, "maxMB=1").await;
    let entry = a
        .grpc()
        .await
        .lookup_directory_entry(pb::LookupDirectoryEntryRequest {
            directory: "/data".into(),
            name: "big.bin".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert!(entry.chunks.len() >= 12, "{} chunks", entry.chunks.len());
    let http = seaweed_replicate::http::plain();
    let source = std::sync::Arc::new(
        FilerSource::new(SourceOptions::plain(a.var("FILER_GRPC")), http.clone()).unwrap(),
    );
    let journal = tempfile::tempdir().unwrap();
    let sink = FilerSink::new(
        FilerSinkOptions {
            grpc_address: b.var("FILER_GRPC").to_string(),
            directory: "/backup".into(),
            replication: String::new(),
            collection: String::new(),
            ttl_sec: 0,
            disk: String::new(),
            data_center: String::new(),
            incremental: false,
            chunk_concurrency: 1,
            https: false,
            grpc_tls: None,
            journal_dir: Some(journal.path().to_path_buf()),
        },
        source,
        http,
    )
    .unwrap();
    let key = SinkKey {
        rel: vec!["big.bin".into()],
        full: "/backup/big.bin".into(),
    };
    {
        let write = sink.create_entry(&key, &entry, &[]);
        tokio::pin!(write);
        loop {
            tokio::select! {
                biased;
                done = &mut write => panic!("the write ended before it was abandoned: {done:?}"),
                _ = tokio::task::yield_now() => {}
            }
            // An attempt that has noted a chunk.
            if noted_in(journal.path()).iter().any(|n| *n >= 1) {
                break;
            }
        }
    }
    assert!(
        eventually(Duration::from_secs(120), || async {
            noted_in(journal.path()).is_empty()
        })
        .await,
        "the abandoned copy's notes stay: {:?} chunks",
        noted_in(journal.path())
    );
    let on_target = b.try_get("/backup/big.bin").await;
    assert!(
        on_target.starts_with(b"<unreadable: HTTP 404"),
        "{}",
        String::from_utf8_lossy(&on_target[..on_target.len().min(80)])
    );
    no_orphans_remain(&b).await;
    // The same write, not abandoned, lands whole and leaves nothing behind.
    sink.create_entry(&key, &entry, &[]).await.unwrap();
    assert_eq!(b.get("/backup/big.bin").await, big);
    assert!(noted_in(journal.path()).is_empty());
    let (n, text) = orphan_needles_of(&b);
    assert_eq!(n, 0, "{text}");
}

/// Finding 1 of the reliability issue into another cluster: a replayed directory
/// rename carries nothing created under the old name later (see the local sink's test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_directory_rename_carries_nothing_created_later() {
    let a = TestBed::start(BedOptions::default());
    let b = TestBed::start(BedOptions::default());
    a.upload("/data/A/x", b"x", "").await;
    a.mv("/data/A", "/data/B").await;
    a.upload("/data/A/y", b"y", "").await;
    let work = Workdir::filer(&a, "/data", &b, "/backup", "");
    let rep = Replicator::start(&work);
    a.assert_same_tree("/data", &b, "/backup", &[], &work.log())
        .await;
    rep.stop_with(libc::SIGKILL);
    a.delete("/data/A/y", false).await;
    std::fs::remove_file(work.path().join("last.offset")).ok();
    let rep = Replicator::start(&work);
    a.assert_same_tree("/data", &b, "/backup", &[], &work.log())
        .await;
    let listed: Vec<String> = b
        .list("/backup/B")
        .await
        .iter()
        .map(|e| e["FullPath"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(listed, vec!["/backup/B/x".to_string()]);
    let (status, _) = rep.stop();
    assert!(status.success());
}

/// The sizes `path` was written with on `bed`, in order, from its filer's metadata log.
async fn written_sizes(bed: &TestBed, path: &str) -> Vec<u64> {
    let (dir, name) = path.rsplit_once('/').unwrap();
    let mut stream = bed
        .grpc()
        .await
        .subscribe_metadata(pb::SubscribeMetadataRequest {
            client_name: "test".into(),
            path_prefix: dir.into(),
            since_ns: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut sizes = Vec::new();
    // The log is read to its end: nothing more for two seconds.
    while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_secs(2), stream.message()).await
    {
        let Some(ev) = r.event_notification else {
            continue;
        };
        if let Some(e) = &ev.new_entry
            && e.name == name
            && r.directory == dir
        {
            sizes.push(e.attributes.as_ref().map_or(0, |a| a.file_size));
        }
    }
    sizes
}

/// Finding 10 of the reliability issue: a consumer-group member frozen in the middle of
/// a copy for longer than its session loses its partition to another member, which
/// writes the newer version; when the frozen one wakes, its copy must not land. Frozen
/// only when a copy is verifiably under way (its upload notes exist while it stands
/// still), and woken only after the other member has written the newer version: no
/// step depends on timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stood_still_does_not_overwrite_newer_data() {
    let a = TestBed::start(BedOptions {
        broker: "tansu",
        ..Default::default()
    });
    let b = TestBed::start(BedOptions::default());
    let member = || {
        let work = Workdir::filer(&a, "/data", &b, "/backup", "chunk_concurrency = 1");
        let path = work.path().join("notification.toml");
        let text = std::fs::read_to_string(&path).unwrap()
            + "group_id = \"fence\"\nsession_timeout_seconds = 6\n";
        std::fs::write(path, text).unwrap();
        work
    };
    let (first, second) = (member(), member());
    let rep_first = Replicator::start(&first);
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read_to_string(first.log())
                .is_ok_and(|l| l.contains("partitions assigned") && l.contains("now=[0]"))
        })
        .await,
        "{}",
        tail(&first.log(), 20)
    );
    let rep_second = Replicator::start(&second);
    let older = bytes(60, 12 * 1024 * 1024);
    a.upload("/data/f.bin", &older, "maxMB=1").await;
    // Freeze the owner mid-copy.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            tail(&first.log(), 20)
        );
        if noted_uploads(&first).iter().any(|n| *n >= 1) {
            rep_first.signal(libc::SIGSTOP);
            if noted_uploads(&first).iter().any(|n| *n >= 1) {
                break;
            }
            rep_first.signal(libc::SIGCONT);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // The newer version, written by the member that takes the partition over.
    let newer = b"the newer version".to_vec();
    a.upload("/data/f.bin", &newer, "").await;
    assert!(
        eventually(Duration::from_secs(120), || async {
            b.try_get("/backup/f.bin").await == newer
        })
        .await,
        "{}",
        tail(&second.log(), 20)
    );
    rep_first.signal(libc::SIGCONT);
    // The woken member notices it stood still, and its copy ends without landing.
    assert!(
        eventually(Duration::from_secs(120), || async {
            std::fs::read_to_string(first.log())
                .is_ok_and(|l| l.contains("the process stood still"))
                && noted_uploads(&first).is_empty()
        })
        .await,
        "{}",
        tail(&first.log(), 30)
    );
    // Whether the group then took the partition away from it or gave it back (tansu
    // does either), its fence reopens; whatever it writes after that it has read from
    // the source again.
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read_to_string(first.log()).is_ok_and(|l| l.contains("fence open again"))
        })
        .await,
        "{}",
        tail(&first.log(), 30)
    );
    assert_eq!(
        b.try_get("/backup/f.bin").await,
        newer,
        "{}",
        tail(&first.log(), 30)
    );
    // Nor did it land for a moment: after the newer version, the older was never
    // written again.
    let sizes = written_sizes(&b, "/backup/f.bin").await;
    let newer_at = sizes.iter().position(|s| *s == newer.len() as u64);
    assert!(
        newer_at.is_some_and(|i| !sizes[i..].contains(&(older.len() as u64))),
        "writes of /backup/f.bin, by size: {sizes:?}\n{}",
        tail(&first.log(), 30)
    );
    a.assert_same_tree("/data", &b, "/backup", &[], &second.log())
        .await;
    // Whichever ended its copy (the fence, or the partition moving away first), the
    // chunks it had uploaded are gone from the target, without a restart.
    no_orphans_remain(&b).await;
    assert!(rep_first.stop().0.success());
    assert!(rep_second.stop().0.success());
}

/// `retention_days` on an incremental filer sink: a dated directory older than the
/// cut-off is deleted on the target filer, recursively; today's stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_dated_copies_on_the_target_filer() {
    let a = TestBed::start(BedOptions::default());
    let b = TestBed::start(BedOptions::default());
    // An mtime in 2023 puts the copy under that day's directory.
    a.create_entry("/data/old", inline_file("then.txt", b"then"))
        .await;
    a.upload("/data/now.txt", b"now", "").await;
    let old_day = chrono::DateTime::from_timestamp(1_700_000_000, 0)
        .unwrap()
        .with_timezone(&chrono::Local)
        .format("%Y-%m-%d")
        .to_string();
    let today = local_day(&a, "/data/now.txt").await;
    let (old, now) = (
        format!("/inc/{old_day}/old/then.txt"),
        format!("/inc/{today}/now.txt"),
    );
    let work = Workdir::filer(&a, "/data", &b, "/inc", "is_incremental = true");
    let rep = Replicator::start(&work);
    assert!(
        eventually(Duration::from_secs(60), || async {
            b.lookup(&old).await.is_some() && b.lookup(&now).await.is_some()
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    assert!(rep.stop().0.success());

    let config = work.path().join("replication.toml");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "is_incremental = true",
        "is_incremental = true\nretention_days = 30",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let rep = Replicator::start(&work);
    assert!(
        eventually(Duration::from_secs(60), || async {
            b.lookup(&format!("/inc/{old_day}")).await.is_none()
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    assert!(b.lookup(&now).await.is_some());
    assert!(rep.stop().0.success(), "{}", tail(&work.log(), 20));
}

/// `deletes = "trash"` into another cluster: a deleted file and a deleted directory are
/// moved on the target filer under `.replicate-trash/<day>/`, their content (chunks)
/// kept; the mirror equals the source; a day of the trash older than
/// `trash_retention_days` is deleted at start, recursively. Into a plain folder and into
/// one bucket; into `/buckets` itself it is refused (exit 2): a filer drops a bucket's
/// data with the bucket, and one trash would hold entries of several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_move_into_a_trash_on_the_target_filer() {
    let a = TestBed::start(BedOptions::default());
    let b = TestBed::start(BedOptions::default());
    let old = (chrono::Local::now().date_naive() - chrono::Days::new(40))
        .format("%Y-%m-%d")
        .to_string();
    let targets = ["/mirror", "/buckets/backup"];
    for t in targets {
        b.upload(
            &format!("{t}/.replicate-trash/{old}/planted.txt"),
            b"old",
            "",
        )
        .await;
    }
    let large = bytes(7, 2_600_000);
    a.upload("/data/gone.txt", b"gone", "").await;
    a.upload("/data/dir/big.bin", &large, "maxMB=1").await;
    a.upload("/data/dir/sub/x.txt", b"x", "").await;
    a.upload("/data/stays.txt", b"stays", "").await;
    let works: Vec<Workdir> = targets
        .iter()
        .map(|t| {
            Workdir::filer(
                &a,
                "/data",
                &b,
                t,
                "deletes = \"trash\"\ntrash_retention_days = 30",
            )
        })
        .collect();
    let reps: Vec<Replicator> = works.iter().map(Replicator::start).collect();
    for (t, work) in targets.iter().zip(&works) {
        assert!(
            eventually(Duration::from_secs(60), || async {
                b.lookup(&format!("{t}/dir/sub/x.txt")).await.is_some()
                    && b.lookup(&format!("{t}/.replicate-trash/{old}"))
                        .await
                        .is_none()
            })
            .await,
            "{t}\n{}",
            tail(&work.log(), 20)
        );
    }
    // On the target only: when the directory's own delete comes, after its entries
    // have moved one by one, it still holds this, and its trash directory exists.
    for t in targets {
        b.upload(&format!("{t}/dir/target-only.txt"), b"target only", "")
            .await;
    }
    a.delete("/data/gone.txt", false).await;
    a.delete("/data/dir", true).await;
    // The day of the delete: today, or tomorrow for a run across midnight.
    let days = [0, 1].map(|ahead| {
        (chrono::Local::now().date_naive() + chrono::Days::new(ahead))
            .format("%Y-%m-%d")
            .to_string()
    });
    for (t, work) in targets.iter().zip(&works) {
        let in_trash = |rel: &'static str| {
            let b = &b;
            let days = days.clone();
            async move {
                for d in &days {
                    let path = format!("{t}/.replicate-trash/{d}/{rel}");
                    if b.lookup(&path).await.is_some() {
                        return Some(b.get(&path).await);
                    }
                }
                None
            }
        };
        assert!(
            eventually(Duration::from_secs(60), || async {
                in_trash("gone.txt").await.as_deref() == Some(&b"gone"[..])
                    && in_trash("dir/big.bin").await.as_deref() == Some(&large[..])
                    && in_trash("dir/sub/x.txt").await.as_deref() == Some(&b"x"[..])
                    && in_trash("dir/target-only.txt").await.as_deref() == Some(&b"target only"[..])
                    && b.lookup(&format!("{t}/dir")).await.is_none()
                    && b.lookup(&format!("{t}/gone.txt")).await.is_none()
            })
            .await,
            "{t}: {:?}\n{}",
            b.tree(t, &[]).await.keys().collect::<Vec<_>>(),
            tail(&work.log(), 30)
        );
        assert_eq!(b.get(&format!("{t}/stays.txt")).await, b"stays");
    }
    for (work, rep) in works.iter().zip(reps) {
        // The directory still held target-only.txt, and the filer refuses to rename a
        // non-empty directory onto one: its entries were linked into the trash instead.
        assert!(
            std::fs::read_to_string(work.log())
                .unwrap()
                .contains("linking the chunks there instead"),
            "{}",
            tail(&work.log(), 30)
        );
        assert!(rep.stop().0.success(), "{}", tail(&work.log(), 20));
        assert!(
            !work.path().join("replicate.parked.jsonl").exists(),
            "{}",
            std::fs::read_to_string(work.path().join("replicate.parked.jsonl")).unwrap()
        );
    }
    // Nothing the trash holds lost its data: every chunk on the target is referenced.
    no_orphans_remain(&b).await;

    let above = Workdir::filer(&a, "/data", &b, "/buckets", "deletes = \"trash\"");
    let (status, _) = Replicator::start(&above).stop_when_exited();
    assert_eq!(status.code(), Some(2), "{}", tail(&above.log(), 20));
    let log = std::fs::read_to_string(above.log()).unwrap();
    assert!(
        log.contains("sink.filer.deletes") && log.contains("several buckets"),
        "{log}"
    );
}

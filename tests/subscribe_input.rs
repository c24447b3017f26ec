//! `[source.filer] subscribe = true`: no broker at all, the source filer's own metadata
//! log, with a checkpoint in the filer's KV store.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_a_live_filer_without_a_broker() {
    let bed = TestBed::start(BedOptions::default());
    let sink = tempfile::tempdir().unwrap();
    let root = sink.path().join("root");
    let work = subscribe_workdir(&bed, &root, "");
    common::inputs::scenario(&bed, &work, &[], &root, &|| Box::pin(async {})).await;
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("replaying the filer's whole retained metadata log"),
        "{log}"
    );
    assert!(log.contains("checkpoint saved"), "{log}");

    // A restart resumes from the checkpoint in the filer's KV store.
    std::fs::write(work.log(), "").unwrap();
    let rep = Replicator::start(&work);
    bed.upload("/data/after-restart.txt", b"new", "").await;
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("resuming the metadata log from the checkpoint"),
        "{log}"
    );
    assert!(rep.stop().0.success());

    // initial_snapshot: a new sink is seeded from the live tree, then follows the log.
    let seeded = sink.path().join("seeded");
    let work = subscribe_workdir(&bed, &seeded, "initial_snapshot = true");
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &seeded, &work.log()).await;
    bed.upload("/data/after-snapshot.txt", b"followed", "")
        .await;
    assert_converges(&bed, "/data", &[], &seeded, &work.log()).await;
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(log.contains("initial snapshot done"), "{log}");
    assert!(rep.stop().0.success());
}

/// kill -9 mid-backlog, restart: nothing lost. The kill point does not depend on the
/// machine's speed: one at a time, the backlog reaches an entry whose data no volume
/// holds and waits there (its deadline is an hour), so exactly the files before it have
/// arrived when the process is killed, and none after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_9_mid_backlog() {
    use seaweed_replicate::pb;
    let bed = TestBed::start(BedOptions::default());
    const BEFORE: usize = 120;
    const AFTER: usize = 120;
    let upload = |i: usize| {
        let bed = &bed;
        async move {
            bed.upload(
                &format!("/data/many/f{i:03}.bin"),
                &bytes(i as u64, 10_000 + i),
                "",
            )
            .await
        }
    };
    for i in 0..BEFORE {
        upload(i).await;
    }
    bed.create_entry(
        "/data/many",
        pb::Entry {
            name: "blocker.bin".into(),
            chunks: vec![pb::FileChunk {
                file_id: "9999,01637037d6".into(),
                size: 100,
                ..Default::default()
            }],
            attributes: Some(pb::FuseAttributes {
                file_size: 100,
                file_mode: 0o644,
                mtime: 1_700_000_000,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    for i in BEFORE..BEFORE + AFTER {
        upload(i).await;
    }
    let sink = tempfile::tempdir().unwrap();
    let root = sink.path().join("root");
    let work = subscribe_workdir(
        &bed,
        &root,
        "checkpoint_interval_seconds = 1\n[replicate]\nconcurrency = 1\nevent_deadline_seconds = 3600",
    );
    let rep = Replicator::start(&work);
    let count = || {
        std::fs::read_dir(root.join("many"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let key = eventually(Duration::from_secs(60), || async {
        std::fs::read_to_string(work.log()).is_ok_and(|t| t.contains("checkpoint_key="))
    })
    .await;
    assert!(key, "{}", tail(&work.log(), 20));
    let log = std::fs::read_to_string(work.log()).unwrap();
    let key = log.split("checkpoint_key=").nth(1).unwrap();
    let key = key.split_whitespace().next().unwrap().to_string();
    let checkpoint = || async {
        let v = bed
            .grpc()
            .await
            .kv_get(pb::KvGetRequest {
                key: key.clone().into_bytes(),
            })
            .await
            .unwrap()
            .into_inner()
            .value;
        <[u8; 8]>::try_from(v.as_slice()).map_or(0, i64::from_be_bytes)
    };
    // Kill it once everything before the blocker arrived and a checkpoint is stored.
    assert!(
        eventually(Duration::from_secs(120), || async {
            count() == BEFORE && checkpoint().await > 0
        })
        .await,
        "{} files, checkpoint {}\n{}",
        count(),
        checkpoint().await,
        tail(&work.log(), 20)
    );
    let (status, _) = rep.stop_with(libc::SIGKILL);
    assert!(!status.success());
    assert_eq!(count(), BEFORE, "files got past the blocker");
    // The blocker goes away on the source; the restart resumes and finishes.
    bed.delete_keeping_data("/data/many", "blocker.bin").await;
    std::fs::write(work.log(), "").unwrap();
    let rep = Replicator::start(&work);
    bed.upload("/data/many/after.bin", b"after the crash", "")
        .await;
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("resuming the metadata log from the checkpoint"),
        "{log}"
    );
    assert!(rep.stop().0.success());
}

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
    let logged = eventually(Duration::from_secs(60), || async {
        work.checkpoint_key().is_some()
    })
    .await;
    assert!(logged, "{}", tail(&work.log(), 20));
    let key = work.checkpoint_key().unwrap();
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

/// Where the metadata log starts (issue 18, item 3): `start_from` when there is no
/// checkpoint (Unix milliseconds, an RFC 3339 time or a duration ago), and `-timeAgo`
/// over an existing checkpoint, as `weed filer.backup -timeAgo` and `weed filer.sync
/// -a.fromTsMs`. The start lies between two uploads, a few milliseconds from each on the
/// clock the filer stamps its events with; nothing depends on how fast anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_log_starts_where_it_is_told() {
    let bed = TestBed::start(BedOptions::default());
    bed.upload("/data/before/a.txt", b"a", "").await;
    bed.upload("/data/b.txt", b"b", "").await;
    std::thread::sleep(Duration::from_millis(5));
    let start = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(5));
    bed.upload("/data/c.txt", b"c", "").await;
    let sink = tempfile::tempdir().unwrap();
    let only_after = |root: &std::path::Path, log: &std::path::Path| {
        let names: Vec<String> = std::fs::read_dir(root)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(names, ["c.txt"], "{}", tail(log, 20));
    };
    let mut works = Vec::new();
    for (name, value) in [
        ("ms", start.timestamp_millis().to_string()),
        (
            "rfc3339",
            start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
    ] {
        let root = sink.path().join(name);
        let work = subscribe_workdir(&bed, &root, &format!("start_from = \"{value}\""));
        let rep = Replicator::start(&work);
        let c = root.join("c.txt");
        assert!(
            eventually(Duration::from_secs(60), || async {
                std::fs::read(&c).is_ok_and(|b| b == b"c")
            })
            .await,
            "{}",
            tail(&work.log(), 20)
        );
        // A graceful stop finishes whatever the log delivered before c.txt.
        assert!(rep.stop().0.success());
        only_after(&root, &work.log());
        let log = std::fs::read_to_string(work.log()).unwrap();
        assert!(
            log.contains("no checkpoint: starting the metadata log at start_from"),
            "{log}"
        );
        works.push((root, work));
    }
    // A duration ago: an hour takes in everything.
    let root = sink.path().join("ago");
    let work = subscribe_workdir(&bed, &root, "start_from = \"1h\"");
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    assert!(rep.stop().0.success());

    // Over a checkpoint: -timeAgo starts there anyway, once; a plain restart resumes.
    let (root, work) = works.remove(0);
    bed.upload("/data/d.txt", b"d", "").await;
    let rep = Replicator::start_with(&work, &[], &["-timeAgo=1h"]);
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    assert!(rep.stop().0.success());
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("starting the metadata log where the command line says, over the checkpoint"),
        "{log}"
    );
    std::fs::write(work.log(), "").unwrap();
    let rep = Replicator::start(&work);
    bed.upload("/data/e.txt", b"e", "").await;
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    assert!(rep.stop().0.success());
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("resuming the metadata log from the checkpoint"),
        "{log}"
    );

    // Bad starts are usage errors before anything is contacted.
    let (_, work) = works.remove(0);
    for (args, says) in [
        (vec!["-timeAgo=5x"], "-timeAgo=\"5x\": not a duration"),
        (
            vec!["-fromTsMs=soon"],
            "-fromTsMs=\"soon\": not Unix milliseconds",
        ),
        (
            vec!["-fromTsMs=99999999999999"],
            "-fromTsMs=\"99999999999999\": not Unix milliseconds of a moment past",
        ),
        (
            vec!["-timeAgo=1h", "-fromTsMs=1"],
            "both say where to start",
        ),
        (vec!["-timeAgo=1h", "check"], "`check` has none"),
    ] {
        std::fs::write(work.log(), "").unwrap();
        let (status, _) = Replicator::start_with(&work, &[], &args).stop_when_exited();
        assert_eq!(status.code(), Some(2), "{args:?}: {}", tail(&work.log(), 5));
        let log = std::fs::read_to_string(work.log()).unwrap();
        assert!(log.contains(says), "{args:?}: {log}");
    }
    let future = subscribe_workdir(
        &bed,
        &sink.path().join("future"),
        "start_from = \"2200-01-01T00:00:00Z\"",
    );
    let (status, _) = Replicator::start(&future).stop_when_exited();
    let log = std::fs::read_to_string(future.log()).unwrap();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("source.filer.start_from") && log.contains("is in the future"),
        "{log}"
    );
    let kafka = Workdir::new(&bed, "/data", &sink.path().join("kafka"), "");
    let (status, _) = Replicator::start_with(&kafka, &[], &["-timeAgo=1h"]).stop_when_exited();
    let log = std::fs::read_to_string(kafka.log()).unwrap();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("which has no start time"), "{log}");
}

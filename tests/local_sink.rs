//! End to end against real servers: a SeaweedFS filer publishing to a Kafka-protocol
//! broker, the `replicate` binary consuming it into a local directory.

mod common;

use common::*;
use prost::Message;
use seaweed_replicate::pb;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// Everything a user does to a tree, replicated byte for byte, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_a_working_tree_byte_for_byte() {
    let bed = TestBed::start(BedOptions::default());
    // A backlog that exists before replicate first starts.
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
    bed.upload("/data/tmp/excluded.txt", b"not replicated", "")
        .await;
    bed.upload("/data/tmpfoo/kept.txt", b"boundary-aware exclusion", "")
        .await;
    bed.upload("/data/out/leaving.txt", b"moves out of scope", "")
        .await;
    bed.upload("/outside/coming.txt", b"moves into scope", "")
        .await;
    bed.upload("/outside/never.txt", b"never replicated", "")
        .await;

    let sink = tempfile::tempdir().unwrap();
    let work = Workdir::new(
        &bed,
        "/data",
        &sink.path().join("root"),
        "excludeDirectories = \"/data/tmp\"",
    );
    let rep = Replicator::start(&work);
    let root = sink.path().join("root");
    assert_converges(&bed, "/data", &["tmp"], &root, &work.log()).await;

    // Changes while it runs.
    bed.upload("/data/a.txt", b"second, longer version of a", "")
        .await;
    bed.mv("/data/a.txt", "/data/renamed/a2.txt").await;
    bed.mv("/data/big", "/data/big2").await;
    bed.mv("/outside/coming.txt", "/data/came.txt").await;
    bed.mv("/data/out/leaving.txt", "/outside/left.txt").await;
    bed.delete("/data/dir one/ü naïve file.txt", false).await;
    bed.upload("/data/deep/x/y/z.txt", b"soon gone", "").await;
    bed.upload("/data/deep/x/w.bin", &bytes(2, 5000), "").await;
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
    assert_converges(&bed, "/data", &["tmp"], &root, &work.log()).await;

    let tree = local_tree(&root);
    assert!(
        !tree.contains_key("big"),
        "the renamed directory's old path is gone"
    );
    assert!(
        !tree.contains_key("tmp"),
        "excluded directory is not replicated"
    );
    assert!(tree.contains_key("tmpfoo/kept.txt"));
    assert!(
        !tree
            .keys()
            .any(|k| k.contains("never") || k.contains("leaving"))
    );

    // Attributes: mode and mtime as the source has them.
    let listed = bed.list("/data/renamed").await;
    let src = listed
        .iter()
        .find(|e| e["FullPath"] == "/data/renamed/a2.txt")
        .unwrap();
    let meta = std::fs::metadata(root.join("renamed/a2.txt")).unwrap();
    assert_eq!(
        meta.mode() & 0o777,
        src["Mode"].as_u64().unwrap() as u32 & 0o777
    );
    let src_mtime = chrono::DateTime::parse_from_rfc3339(src["Mtime"].as_str().unwrap()).unwrap();
    assert_eq!(meta.mtime(), src_mtime.timestamp());
    assert_eq!(
        meta.mtime_nsec(),
        i64::from(src_mtime.timestamp_subsec_nanos())
    );

    // Directories keep their mode too (those the filer announced; a rename target's parent
    // is created without an event, so the sink can only give it 0755).
    let dir_entry = bed
        .list("/data")
        .await
        .into_iter()
        .find(|e| e["FullPath"] == "/data/tmpfoo")
        .unwrap();
    let dir_meta = std::fs::metadata(root.join("tmpfoo")).unwrap();
    assert_eq!(
        dir_meta.mode() & 0o777,
        dir_entry["Mode"].as_u64().unwrap() as u32 & 0o777
    );

    // The offset file is kept current while running (interval 1 s), not only at shutdown.
    let high = bed.high_watermarks();
    assert!(
        eventually(Duration::from_secs(10), || async {
            work.saved_offset(0) == Some(high[&0] - 1)
        })
        .await,
        "offset file not written while running"
    );

    // SIGTERM: exits 0 within 10 s with every offset stored.
    let (status, took) = rep.stop();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        tail(&work.log(), 20)
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let high = bed.high_watermarks();
    let offsets = work.offsets();
    assert_eq!(offsets["topic"], bed.var("TOPIC"));
    assert_eq!(
        offsets["partitionOffsets"]["0"],
        high[&0] - 1,
        "last processed offset is stored"
    );
    assert!(
        !work.path().join("replicate.parked.jsonl").exists(),
        "nothing was parked"
    );
}

/// A backlog on three partitions, interrupted, resumed from the offset file; and
/// offset files exchanged with upstream `weed filer.replicate` in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_offset_file_and_shares_it_with_upstream() {
    let bed = TestBed::start(BedOptions {
        partitions: 3,
        ..Default::default()
    });
    for i in 0..150 {
        bed.upload(
            &format!("/data/f{i:03}.txt"),
            format!("file {i}").as_bytes(),
            "",
        )
        .await;
    }
    let sink = tempfile::tempdir().unwrap();
    let root = sink.path().join("root");
    let work = Workdir::new(&bed, "/data", &root, "");

    // Stop in the middle of the backlog.
    let rep = Replicator::start(&work);
    assert!(
        eventually(Duration::from_secs(30), || async {
            local_tree(&root).len() >= 5
        })
        .await
    );
    let (status, _) = rep.stop();
    assert!(status.success());
    let saved = work.offsets();
    let done_at_stop = local_tree(&root).len();
    eprintln!("stopped with {done_at_stop} of 150 files; offsets {saved}");

    // More changes while it is down, then resume: nothing lost.
    for i in 150..170 {
        bed.upload(
            &format!("/data/f{i:03}.txt"),
            format!("file {i}").as_bytes(),
            "",
        )
        .await;
    }
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    let log = std::fs::read_to_string(work.log()).unwrap();
    for (p, o) in saved["partitionOffsets"].as_object().unwrap() {
        let want = format!("partition={p} start=Offset({})", o.as_i64().unwrap() + 1);
        assert!(
            log.contains(&want),
            "second run did not resume partition {p} at {}: {}",
            o,
            tail(&work.log(), 30)
        );
    }
    let (status, _) = rep.stop();
    assert!(status.success());
    let ours = work.offsets();

    // Upstream reads our file: it resumes after our offsets, so it replicates only new files.
    let up_sink = tempfile::tempdir().unwrap();
    let up_work = Workdir::new(&bed, "/data", up_sink.path(), "");
    std::fs::copy(
        work.path().join("last.offset"),
        up_work.path().join("last.offset"),
    )
    .unwrap();
    let weed = testbed_binary("weed");
    let mut upstream = std::process::Command::new(&weed)
        .args(["-logtostderr", "filer.replicate"])
        .current_dir(up_work.path())
        .env("HOME", up_work.path())
        .stdout(std::fs::File::create(up_work.path().join("weed.log")).unwrap())
        .stderr(std::fs::File::create(up_work.path().join("weed.err")).unwrap())
        .spawn()
        .unwrap();
    bed.upload("/data/new/u1.txt", b"after our offsets", "")
        .await;
    bed.upload("/data/new/u2.txt", b"after our offsets, 2", "")
        .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            up_sink.path().join("new/u2.txt").exists()
        })
        .await,
        "upstream did not replicate: {}",
        tail(&up_work.path().join("weed.err"), 20)
    );
    let up_tree = local_tree(up_sink.path());
    assert!(
        !up_tree.keys().any(|k| k.starts_with("f")),
        "upstream replayed events before our offsets: {:?}",
        up_tree.keys()
    );
    // Upstream saves only on a later success after the interval; give it one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    bed.upload("/data/new/u3.txt", b"third", "").await;
    let up_offsets_path = up_work.path().join("last.offset");
    let u1 = bed.find_record("/data/new/u1.txt");
    assert!(
        eventually(Duration::from_secs(20), || async {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&up_offsets_path).unwrap_or_default())
                    .unwrap_or_default();
            v["topic"] == ours["topic"]
                && v["partitionOffsets"][u1.0.to_string()].as_i64() >= Some(u1.1)
        })
        .await,
        "upstream never saved offsets covering u1 at {u1:?}"
    );
    let _ = upstream.kill();
    let _ = upstream.wait();

    // We read upstream's file: resume exactly after it.
    std::fs::copy(&up_offsets_path, work.path().join("last.offset")).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&up_offsets_path).unwrap()).unwrap();
    std::fs::write(work.log(), "").unwrap();
    let rep = Replicator::start(&work);
    bed.upload("/data/final.txt", b"after upstream's offsets", "")
        .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            root.join("final.txt").exists()
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    let log = std::fs::read_to_string(work.log()).unwrap();
    for (p, o) in theirs["partitionOffsets"].as_object().unwrap() {
        let want = format!("partition={p} start=Offset({})", o.as_i64().unwrap() + 1);
        assert!(
            log.contains(&want),
            "did not resume partition {p} after upstream's offset {o}: {}",
            tail(&work.log(), 20)
        );
    }
    // Events upstream had committed (u1, at least) are not replayed.
    assert!(
        !root.join("new/u1.txt").exists(),
        "replayed what upstream had already committed"
    );
    let (status, _) = rep.stop();
    assert!(status.success());
}

/// Hostile and broken events are refused, parked and passed; nothing lands outside the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_write_nothing_outside_the_sink() {
    let bed = TestBed::start(BedOptions::default());
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let outside = area.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let work = Workdir::new(
        &bed,
        "/data",
        &root,
        "[replicate]\nmax_message_bytes = 100000\n",
    );

    let (file, create) = (inline_file, create_event);
    let rename = |old: &str, parent: &str, new: &str| {
        pb::EventNotification {
            old_entry: Some(file(old, b"")),
            new_entry: Some(file(new, b"x")),
            new_parent_path: parent.into(),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let mut link = file("link", b"");
    link.attributes.as_mut().unwrap().symlink_target = outside.display().to_string();
    link.attributes.as_mut().unwrap().file_mode = 0o777 | (1 << 27);

    let hostile: Vec<(String, Vec<u8>)> = vec![
        (
            "/data/../../escape1".into(),
            create("/data/../..", file("escape1", b"pwned")),
        ),
        ("/data/a".into(), rename("a", "/data", "../../escape2")),
        ("/data/a".into(), rename("a", "/data/../../tmp", "escape3")),
        ("/data/a".into(), rename("a", "/data", "sub/escape4")),
        (
            "/data/nul\0x".into(),
            create("/data", file("nul\0x", b"pwned")),
        ),
        (
            "/data".into(),
            pb::EventNotification {
                old_entry: Some(pb::Entry {
                    name: "data".into(),
                    is_directory: true,
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("/data/garbage".into(), vec![0xff, 0xff, 0xff, 0x0f]),
        // A message without a key: a bad message, never a crash.
        (String::new(), create("/data", file("keyless", b"x"))),
        // Larger than max_message_bytes: a bad message.
        (
            "/data/huge.bin".into(),
            create("/data", file("huge.bin", &vec![7u8; 150_000])),
        ),
    ];
    // A symlink is replicated as a symlink; a later write "through" it must not follow it
    // (the source has no such file, so it is not even tried; the sink's own refusal is
    // tested in `sink::local`).
    bed.produce("/data/link", &create("/data", link.clone()))
        .await;
    bed.produce(
        "/data/link/through.txt",
        &create("/data/link", file("through.txt", b"pwned")),
    )
    .await;
    for (key, payload) in &hostile {
        bed.produce(key, payload).await;
    }
    // Content only in remote storage (a real entry, so the event is not stale): it must
    // not become a file of zeros.
    bed.create_entry(
        "/data",
        pb::Entry {
            name: "remote.bin".into(),
            attributes: Some(pb::FuseAttributes {
                file_size: 100,
                file_mode: 0o644,
                mtime: 1,
                ..Default::default()
            }),
            remote_entry: Some(pb::RemoteEntry {
                storage_name: "s3".into(),
                remote_size: 100,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    bed.produce("/data/ok.txt", &create("/data", file("ok.txt", b"fine")))
        .await;
    // The source holds what the well-formed events describe (their own events follow).
    bed.create_entry("/data", link).await;
    bed.create_entry("/data", file("ok.txt", b"fine")).await;

    let rep = Replicator::start(&work);
    // The same stream under upstream's policy: keep going, but never commit past a failure.
    let held_root = area.path().join("held");
    let held = Workdir::new(
        &bed,
        "/data",
        &held_root,
        "[replicate]\non_failure = \"hold\"\n",
    );
    let held_rep = Replicator::start(&held);
    // bad_message = "stop": the partition goes no further than the first bad message.
    let stopped_root = area.path().join("stopped");
    let stopped = Workdir::new(
        &bed,
        "/data",
        &stopped_root,
        "[replicate]\nbad_message = \"stop\"\n",
    );
    let stopped_rep = Replicator::start(&stopped);
    assert!(
        eventually(Duration::from_secs(30), || async {
            root.join("ok.txt").exists()
                && held_root.join("ok.txt").exists()
                && std::fs::read_to_string(stopped.log())
                    .is_ok_and(|l| l.contains("goes no further"))
        })
        .await,
        "the pipeline did not get past the bad events: {}",
        tail(&work.log(), 30)
    );
    let (status, _) = rep.stop();
    assert!(status.success());
    let (status, _) = held_rep.stop();
    assert!(status.success());
    let (status, _) = stopped_rep.stop();
    assert!(status.success());
    assert!(
        !stopped_root.join("ok.txt").exists(),
        "stop went past the bad message"
    );
    let garbage_at = 2 + hostile
        .iter()
        .position(|(k, _)| k == "/data/garbage")
        .unwrap() as i64;
    assert!(
        stopped.offsets()["partitionOffsets"]["0"].as_i64().unwrap() < garbage_at,
        "stop committed past the bad message: {}",
        stopped.offsets()
    );
    // Offsets 0 (the symlink) and 1 (the write through it, which the source does not
    // have) succeeded; offset 2 (the first escape) failed first.
    assert_eq!(
        held.offsets()["partitionOffsets"]["0"],
        1,
        "hold must pin the offset before the first failure: {}",
        tail(&held.log(), 30)
    );
    // Under hold, failing events are not parked; bad messages (not events at all) are,
    // by bad_message = "park".
    let held_parked = std::fs::read_to_string(held.path().join("replicate.parked.jsonl")).unwrap();
    let held_keys: Vec<String> = held_parked
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(held_keys, vec!["/data/garbage".to_string(), String::new()]);

    assert_eq!(std::fs::read(root.join("ok.txt")).unwrap(), b"fine");
    assert_eq!(std::fs::read_link(root.join("link")).unwrap(), outside);
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "something was written through the symlink"
    );
    let mut everything = Vec::new();
    for base in [area.path(), std::path::Path::new("/tmp"), work.path()] {
        for e in std::fs::read_dir(base).unwrap().flatten() {
            everything.push(e.file_name().to_string_lossy().to_string());
        }
    }
    assert!(
        !everything.iter().any(|n| n.starts_with("escape")),
        "an escape landed: {everything:?}"
    );
    assert_eq!(
        local_tree(&root).keys().cloned().collect::<Vec<_>>(),
        vec!["link".to_string(), "ok.txt".to_string()]
    );

    let parked: Vec<serde_json::Value> =
        std::fs::read_to_string(work.path().join("replicate.parked.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    // The remote-only entry and each hostile event are parked with their errors.
    assert_eq!(parked.len(), hostile.len() + 1, "{parked:#?}");
    assert!(
        parked
            .iter()
            .any(|p| p["error"].as_str().unwrap().contains("sink root")),
        "{parked:#?}"
    );
    assert!(
        parked
            .iter()
            .any(|p| p["error"].as_str().unwrap().contains("protobuf")),
        "{parked:#?}"
    );
    assert!(
        parked
            .iter()
            .any(|p| p["error"].as_str().unwrap().contains("remote storage")),
        "{parked:#?}"
    );
    assert!(
        parked
            .iter()
            .any(|p| p["error"].as_str().unwrap().contains("max_message_bytes")),
        "{parked:#?}"
    );
    let high = bed.high_watermarks();
    assert_eq!(
        work.offsets()["partitionOffsets"]["0"],
        high[&0] - 1,
        "parked events are committed past"
    );
}

/// Older filers' rename format (create at the new path, then delete at the old one),
/// names over 255 bytes written and deleted, deletes replayed, chunks of overwritten
/// versions (readDeleted), the incremental sink, and SIGINT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_formats_long_names_replays_and_incremental_sink() {
    let bed = TestBed::start(BedOptions {
        // Names over 255 bytes are legal on a filer once its limit is raised.
        env: long_names(),
        ..Default::default()
    });
    // Three versions before anyone replicates: v1 and v2's needles are deleted on the source.
    bed.upload("/data/versions.txt", b"version one", "").await;
    bed.upload("/data/versions.txt", b"version two, longer", "")
        .await;
    bed.upload(
        "/data/versions.txt",
        b"version three, the longest of all",
        "",
    )
    .await;
    bed.upload("/data/old-name.bin", &bytes(9, 200_000), "")
        .await;

    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let work = Workdir::new(
        &bed,
        "/data",
        &root,
        "[replicate]\nevent_deadline_seconds = 5\n",
    );
    let inc_root = area.path().join("incremental");
    let inc = Workdir::new(&bed, "/data", &inc_root, "");
    inc.use_sink_section("local_incremental");
    let rep = Replicator::start(&work);
    let inc_rep = Replicator::start(&inc);
    assert!(
        eventually(Duration::from_secs(30), || async {
            std::fs::read(root.join("versions.txt")).ok().as_deref()
                == Some(b"version three, the longest of all".as_slice())
                && root.join("old-name.bin").exists()
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );

    // Pre-4.18 rename: a create at the new path (same chunks), then a delete of the old path.
    let mut grpc = bed.grpc().await;
    let mut entry = grpc
        .lookup_directory_entry(pb::LookupDirectoryEntryRequest {
            directory: "/data".into(),
            name: "old-name.bin".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    // Done on the source as such a filer did it, so its events are real: the entry
    // created under the new name with the same chunks, then the old name deleted
    // without its data.
    entry.name = "new-name.bin".into();
    bed.create_entry("/data", entry).await;
    bed.delete_keeping_data("/data", "old-name.bin").await;

    // A name over 255 bytes, created, deleted, and deleted again.
    let long = format!("{}.txt", "long-name-".repeat(30));
    let long_entry = pb::Entry {
        name: long.clone(),
        content: b"long".to_vec(),
        attributes: Some(pb::FuseAttributes {
            file_size: 4,
            file_mode: 0o644,
            mtime: 1_700_000_000,
            ..Default::default()
        }),
        ..Default::default()
    };
    let key = format!("/data/{long}");
    bed.create_entry("/data", long_entry.clone()).await;
    let long_local = || {
        std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .find(|n| n.starts_with("long-name-"))
    };
    assert!(
        eventually(Duration::from_secs(20), || async { long_local().is_some() }).await,
        "{}",
        tail(&work.log(), 20)
    );
    let mapped = long_local().unwrap();
    assert!(mapped.len() <= 255 && mapped.ends_with(".txt"), "{mapped}");
    assert_eq!(std::fs::read(root.join(&mapped)).unwrap(), b"long");
    // Deleted on the source, and the delete replayed once more.
    let deleted = grpc
        .delete_entry(pb::DeleteEntryRequest {
            directory: "/data".into(),
            name: long.clone(),
            is_delete_data: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.error.is_empty(), "{}", deleted.error);
    let delete = pb::EventNotification {
        old_entry: Some(long_entry),
        delete_chunks: true,
        ..Default::default()
    };
    bed.produce(&key, &delete.encode_to_vec()).await;
    bed.create_entry(
        "/data",
        pb::Entry {
            name: "marker.txt".into(),
            content: b"m".to_vec(),
            attributes: Some(pb::FuseAttributes {
                file_size: 1,
                file_mode: 0o644,
                mtime: 1,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            root.join("marker.txt").exists()
        })
        .await
    );
    assert!(long_local().is_none(), "the long name was not deleted");
    assert_eq!(
        std::fs::read(root.join("new-name.bin")).unwrap(),
        bytes(9, 200_000)
    );
    assert!(!root.join("old-name.bin").exists());

    // SIGINT stops cleanly too; nothing was parked (the replayed delete and the
    // overwritten versions' chunks were fine).
    let (status, took) = rep.stop_with(libc::SIGINT);
    assert!(
        status.success() && took < Duration::from_secs(10),
        "{status:?} {took:?}"
    );
    assert!(
        !work.path().join("replicate.parked.jsonl").exists(),
        "{}",
        std::fs::read_to_string(work.path().join("replicate.parked.jsonl")).unwrap_or_default()
    );

    // The incremental sink put each change under the local date of its mtime.
    let day = local_day(&bed, "/data/versions.txt").await;
    let marker_day = chrono::TimeZone::timestamp_opt(&chrono::Local, 1, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    assert!(
        eventually(Duration::from_secs(20), || async {
            inc_root.join(&marker_day).join("marker.txt").exists()
        })
        .await,
        "{:?}\n{}",
        local_tree(&inc_root).keys().collect::<Vec<_>>(),
        tail(&inc.log(), 20)
    );
    assert_eq!(
        std::fs::read(inc_root.join(&day).join("versions.txt")).unwrap(),
        b"version three, the longest of all"
    );
    assert!(
        inc_root
            .join(local_day(&bed, "/data/new-name.bin").await)
            .join("new-name.bin")
            .exists()
    );
    inc_rep.stop();
}

/// The same kind of tree through the second Kafka-protocol broker (tansu), on three
/// partitions: a backlog, then changes while it runs (renames of files and directories,
/// deletes), converging byte for byte, with an offset saved for every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_through_the_second_broker_on_three_partitions() {
    let bed = TestBed::start(BedOptions {
        partitions: 3,
        broker: "tansu",
        ..Default::default()
    });
    for i in 0..30u64 {
        bed.upload(
            &format!("/data/d{}/f{i}.bin", i % 4),
            &bytes(200 + i, 1000 + i as usize * 50),
            "",
        )
        .await;
    }
    bed.upload(
        "/data/big/multi.bin",
        &bytes(9, 3 * 1024 * 1024 + 1),
        "maxMB=1",
    )
    .await;
    let sink = tempfile::tempdir().unwrap();
    let root = sink.path().join("root");
    let work = Workdir::new(&bed, "/data", &root, "");
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;

    bed.mv("/data/d1", "/data/moved").await;
    bed.mv("/data/d2/f2.bin", "/data/d3/renamed.bin").await;
    bed.delete("/data/d0", true).await;
    bed.upload("/data/d3/f3.bin", b"overwritten", "").await;
    bed.upload("/data/late.txt", b"after the renames", "").await;
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    assert!(!root.join("d1").exists() && root.join("moved").is_dir());

    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&work.log(), 20));
    let offsets = work.offsets();
    let saved = offsets["partitionOffsets"].as_object().unwrap();
    assert_eq!(saved.len(), 3, "an offset per partition: {offsets}");
}

/// Finding 1 of the reliability issue, on the real filer and broker: create A/x, rename
/// A to B, create A/y, all replicated; then A/y is deleted on the source and the whole
/// topic is replayed from its first message (an offset file lost, or written before a
/// crash). Replaying the directory rename used to carry the sink's A, which by then
/// held y, into B: the sink kept B/y, a file the source never had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_directory_rename_carries_nothing_created_later() {
    let bed = TestBed::start(BedOptions::default());
    bed.upload("/data/A/x", b"x", "").await;
    bed.mv("/data/A", "/data/B").await;
    bed.upload("/data/A/y", b"y", "").await;
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let work = Workdir::new(&bed, "/data", &root, "");
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    assert!(root.join("A/y").exists() && root.join("B/x").exists());
    rep.stop_with(libc::SIGKILL);
    bed.delete("/data/A/y", false).await;
    std::fs::remove_file(work.path().join("last.offset")).ok();
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    assert!(!root.join("B/y").exists(), "{:?}", local_tree(&root).keys());
    let (status, _) = rep.stop();
    assert!(status.success());
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a tmpfs (needs root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }

    fn remount(&self, options: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.0.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// A sink disk out of inodes is one outage, said once when it begins and once when it
/// ends, although renames and deletes keep working through it while every create fails
/// (they used to end it and start it again a dozen times within milliseconds). Nothing
/// is lost: once inodes are free again the replica equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_out_of_inodes_is_one_outage() {
    let bed = TestBed::start(BedOptions::default());
    // The root, the sink directory, /keep and its 8 files: 11 inodes of 14.
    let disk = Tmpfs::mount("size=64m,nr_inodes=14");
    let root = disk.0.path().join("replica");
    for i in 0..8 {
        bed.upload(
            &format!("/data/keep/k{i}.txt"),
            format!("kept {i}").as_bytes(),
            "",
        )
        .await;
    }
    let work = Workdir::new(&bed, "/data", &root, "[replicate]\nconcurrency = 64\n");
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;

    // New files exhaust the inodes; renames and deletes of kept files still work.
    for i in 0..12 {
        bed.upload(
            &format!("/data/new/n{i}.txt"),
            format!("new {i}").as_bytes(),
            "",
        )
        .await;
    }
    for i in 0..6 {
        bed.mv(
            &format!("/data/keep/k{i}.txt"),
            &format!("/data/keep/r{i}.txt"),
        )
        .await;
    }
    bed.delete("/data/keep/k6.txt", false).await;
    let keep = root.join("keep");
    let renamed = eventually(Duration::from_secs(120), || async {
        (0..6).all(|i| keep.join(format!("r{i}.txt")).exists()) && !keep.join("k6.txt").exists()
    })
    .await;
    assert!(renamed, "{}", tail(&work.log(), 30));
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("sink unavailable"),
        "{}",
        tail(&work.log(), 30)
    );

    // Inodes again: everything arrives, and the outage ends.
    disk.remount("nr_inodes=10000");
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    let ended = eventually(Duration::from_secs(60), || async {
        std::fs::read_to_string(work.log()).is_ok_and(|l| l.contains("sink available again"))
    })
    .await;
    assert!(rep.stop().0.success());
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(ended, "{log}");
    assert_eq!(log.matches("sink unavailable").count(), 1, "{log}");
    assert_eq!(log.matches("sink available again").count(), 1, "{log}");
}

/// An offset file that cannot be saved (its disk out of inodes) is said once when saving
/// starts failing and once when it works again, not at every save interval; the saved
/// offsets then hold everything replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_offset_save_is_said_once() {
    let bed = TestBed::start(BedOptions::default());
    // Only the root's inode: no room for the temporary file of an atomic save.
    let disk = Tmpfs::mount("size=1m,nr_inodes=1");
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("replica");
    let work = Workdir::new(&bed, "/data", &root, "");
    let offsets = disk.0.path().join("last.offset");
    let note = work.path().join("notification.toml");
    let text = std::fs::read_to_string(&note)
        .unwrap()
        .replace("./last.offset", &offsets.display().to_string());
    std::fs::write(&note, text).unwrap();
    // The retries show at debug level, so the test can wait for several of them.
    let rep = Replicator::start_with_env(
        &work,
        &[("RUST_LOG", "info,seaweed_replicate::retry=debug")],
    );
    for i in 0..3 {
        bed.upload(&format!("/data/f{i}.txt"), b"x", "").await;
    }
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    let failed_often = eventually(Duration::from_secs(60), || async {
        std::fs::read_to_string(work.log())
            .is_ok_and(|l| l.matches("saving offsets failed; still retrying").count() >= 3)
    })
    .await;
    assert!(failed_often, "{}", tail(&work.log(), 20));
    bed.upload("/data/last.txt", b"y", "").await;
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    disk.remount("nr_inodes=100");
    let saved = eventually(Duration::from_secs(60), || async { offsets.exists() }).await;
    assert!(saved, "{}", tail(&work.log(), 20));
    assert!(rep.stop().0.success());
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains(" WARN ") && l.contains("saving offsets failed"))
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("working again after: saving offsets failed"),
        "{log}"
    );
}

/// The source tree as the filters of `name_and_pattern_filters_hold_through_renames`
/// leave it: `*.tmp` and `._*` files, and anything with a `temp*` or `.snapshot`
/// component, left out.
fn filtered(tree: Tree) -> Tree {
    tree.into_iter()
        .filter(|(rel, content)| {
            let parts: Vec<&str> = rel.split('/').collect();
            let by_path = parts
                .iter()
                .any(|c| c.starts_with("temp") || *c == ".snapshot");
            let name = parts.last().copied().unwrap_or_default();
            // Directories are judged by path patterns only.
            let by_name = content.is_some() && (name.ends_with(".tmp") || name.starts_with("._"));
            !by_path && !by_name
        })
        .collect()
}

/// Wait until the local sink `root` holds the filtered source tree.
async fn converged(bed: &TestBed, root: &std::path::Path, work: &Workdir, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let want = filtered(bed.tree("/data", &[]).await);
        let last = diff(&want, &local_tree(root));
        if last.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}:\n{last}\n{}",
            tail(&work.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Issue 18, item 4: `excludeFileNames` and `excludePathPatterns` (upstream `filer.backup
/// -filerExcludeFileNames`, `-filerExcludePathPatterns`), through the Kafka input, with
/// renames onto and off excluded names, a directory renamed onto an excluded path and one
/// renamed off it; `verify` then finds the mirror complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_and_pattern_filters_hold_through_renames() {
    let bed = TestBed::start(BedOptions::default());
    let sink = tempfile::tempdir().unwrap();
    let root = sink.path().join("root");
    let work = Workdir::new(
        &bed,
        "/data",
        &root,
        "excludeFileNames = \"*.tmp, ._*\"\nexcludePathPatterns = \"temp*,.snapshot\"",
    );
    for (path, body) in [
        ("/data/keep.txt", "keep"),
        ("/data/a.tmp", "tmp"),
        ("/data/._x", "apple double"),
        ("/data/d.tmp/inside.txt", "a directory is not a file"),
        ("/data/docs/b.txt", "docs"),
        ("/data/temp1/c.txt", "left out"),
        ("/data/sub/.snapshot/s.txt", "left out"),
        ("/data/off.txt", "renamed onto *.tmp"),
        ("/data/on.tmp", "renamed off *.tmp"),
        ("/data/temp2/f1.txt", "renamed off temp*"),
    ] {
        bed.upload(path, body.as_bytes(), "").await;
    }
    let rep = Replicator::start(&work);
    converged(&bed, &root, &work, "before the renames").await;
    assert!(root.join("docs/b.txt").exists() && !root.join("a.tmp").exists());
    bed.mv("/data/off.txt", "/data/off.tmp").await;
    bed.mv("/data/on.tmp", "/data/on.txt").await;
    bed.mv("/data/docs", "/data/temp_docs").await;
    bed.mv("/data/temp2", "/data/work").await;
    converged(&bed, &root, &work, "after the renames").await;
    for (gone, there) in [
        ("off.txt", "on.txt"),
        ("docs", "work/f1.txt"),
        ("temp_docs", "keep.txt"),
    ] {
        assert!(!root.join(gone).exists(), "{gone} is still on the sink");
        assert!(root.join(there).exists(), "{there} never arrived");
    }
    assert!(rep.stop().0.success());
    let o = replicate_in(work.path(), &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
}

/// `deletes = "keep"` (upstream `filer.backup` without `-doDeleteFiles`): what the source
/// deletes stays on the sink, a rename adds the new name and keeps the old one, a move
/// out of scope keeps the file, and `verify` counts what is kept without calling it a
/// difference (and refuses `-delete`). A mistaken `rm -r` on the source empties nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_keeps_deletes_loses_nothing_to_rm_r() {
    let bed = TestBed::start(BedOptions::default());
    let root = bed.dir.path().join("sink");
    let sink = format!(
        "[sink.local]\nenabled = true\ndirectory = \"{}\"\ndeletes = \"keep\"\n",
        root.display()
    );
    let work = Workdir::with_sink(&bed, "/data", &sink, "");
    let rep = Replicator::start(&work);
    let large = bytes(5, 2_600_000);
    bed.upload("/data/keep/a.txt", b"a", "").await;
    bed.upload("/data/keep/b.txt", b"b", "").await;
    bed.upload("/data/keep/gone.txt", b"gone", "").await;
    bed.upload("/data/keep/dir/c.bin", &large, "maxMB=1").await;
    bed.upload("/data/keep/dir/sub/d.txt", b"d", "").await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            root.join("keep/dir/sub/d.txt").exists() && root.join("keep/gone.txt").exists()
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    bed.delete("/data/keep/a.txt", false).await;
    bed.mv("/data/keep/b.txt", "/data/keep/moved/b2.txt").await;
    bed.mv("/data/keep/gone.txt", "/elsewhere/gone.txt").await;
    bed.delete("/data/keep/dir", true).await;
    bed.upload("/data/keep/after.txt", b"after", "").await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            root.join("keep/after.txt").exists() && root.join("keep/moved/b2.txt").exists()
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    // Every event above has been applied once the saved offset (upstream's: the last
    // one done) is the topic's last.
    let last = bed.high_watermarks()[&0] - 1;
    assert!(
        eventually(Duration::from_secs(60), || async {
            work.saved_offset(0) == Some(last)
        })
        .await,
        "the offsets never reached {last}\n{}",
        tail(&work.log(), 20)
    );
    assert!(rep.stop().0.success(), "{}", tail(&work.log(), 20));
    let tree = local_tree(&root);
    let want: Vec<(&str, &[u8])> = vec![
        ("keep/a.txt", b"a"),
        ("keep/after.txt", b"after"),
        ("keep/b.txt", b"b"),
        ("keep/dir/c.bin", &large),
        ("keep/dir/sub/d.txt", b"d"),
        ("keep/gone.txt", b"gone"),
        ("keep/moved/b2.txt", b"b"),
    ];
    let files: Vec<(String, Vec<u8>)> = tree
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    assert_eq!(
        files,
        want.iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect::<Vec<_>>()
    );
    // a.txt, gone.txt (moved out), and dir with its two files and a subdirectory.
    let kept = std::fs::read_to_string(work.log())
        .unwrap()
        .matches("the sink keeps what the source deletes")
        .count();
    assert!(kept >= 6, "{kept} events kept:\n{}", tail(&work.log(), 30));

    let o = replicate_in(work.path(), &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("5 sink files the source no longer has, kept"),
        "{out}"
    );
    let o = replicate_in(work.path(), &["verify", "-repair", "-delete"]);
    assert_eq!(o.status.code(), Some(2), "{}", output(&o));
    assert!(output(&o).contains("deletes = \"keep\""), "{}", output(&o));
    assert!(root.join("keep/a.txt").exists());
}

/// `retention_days` on an incremental sink: dated directories older than the cut-off go
/// at start (whole, whatever is in them), newer ones and anything that is not a
/// top-level date stay, and replication goes on into today's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_dated_copies_older_than_its_days() {
    let bed = TestBed::start(BedOptions::default());
    let root = bed.dir.path().join("sink");
    let day = |back: u64| {
        (chrono::Local::now().date_naive() - chrono::Days::new(back))
            .format("%Y-%m-%d")
            .to_string()
    };
    let planted = [
        (format!("{}/old.txt", day(31)), false),
        (format!("{}/deep/er/x.bin", day(400)), false),
        (format!("{}/recent.txt", day(29)), true),
        (format!("notes/{}/kept.txt", day(400)), true),
        ("2020-13-01/not-a-date.txt".to_string(), true),
    ];
    for (rel, _) in &planted {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rel.as_bytes()).unwrap();
    }
    let sink = format!(
        "[sink.local_incremental]\nenabled = true\ndirectory = \"{}\"\nretention_days = 30\n",
        root.display()
    );
    let work = Workdir::with_sink(&bed, "/data", &sink, "");
    let rep = Replicator::start(&work);
    bed.upload("/data/today.txt", b"today", "").await;
    let today = root
        .join(local_day(&bed, "/data/today.txt").await)
        .join("today.txt");
    assert!(
        eventually(Duration::from_secs(60), || async {
            today.exists() && !root.join(day(31)).exists() && !root.join(day(400)).exists()
        })
        .await,
        "{:?}\n{}",
        local_tree(&root).keys().collect::<Vec<_>>(),
        tail(&work.log(), 20)
    );
    for (rel, stays) in &planted {
        assert_eq!(root.join(rel).exists(), *stays, "{rel}");
    }
    assert_eq!(std::fs::read(&today).unwrap(), b"today");
    assert!(rep.stop().0.success(), "{}", tail(&work.log(), 20));
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert_eq!(
        log.matches("retention: removed a dated copy").count(),
        2,
        "{log}"
    );

    // On a mirror it means nothing: a configuration error, exit 2.
    let mirror = Workdir::new(&bed, "/data", &root, "");
    let config = mirror.path().join("replication.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "is_incremental = false\n",
        "is_incremental = false\nretention_days = 7\n",
    );
    std::fs::write(&config, text).unwrap();
    let o = replicate_in(mirror.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2), "{}", output(&o));
    assert!(output(&o).contains("retention_days"), "{}", output(&o));
}

/// `deletes = "trash"`: what the source deletes (a file, a directory with everything
/// under it, a file moved out of scope) moves under `.replicate-trash/<day>/` with its
/// content; a rename stays a move; the mirror equals the source. A source directory of
/// the trash's name is left out (its copies would land in the trash); days of the trash
/// older than `trash_retention_days` go at start; `verify` leaves the trash alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_with_a_trash_keeps_what_the_source_deletes_for_its_days() {
    let bed = TestBed::start(BedOptions::default());
    let root = bed.dir.path().join("sink");
    let trash = root.join(".replicate-trash");
    let day = |back: u64| {
        (chrono::Local::now().date_naive() - chrono::Days::new(back))
            .format("%Y-%m-%d")
            .to_string()
    };
    let (old, recent) = (day(31), day(29));
    for d in [&old, &recent] {
        std::fs::create_dir_all(trash.join(d)).unwrap();
        std::fs::write(trash.join(d).join("planted.txt"), d.as_bytes()).unwrap();
    }
    let sink = format!(
        "[sink.local]\nenabled = true\ndirectory = \"{}\"\ndeletes = \"trash\"\n\
         trash_retention_days = 30\n",
        root.display()
    );
    let work = Workdir::with_sink(&bed, "/data", &sink, "");
    let large = bytes(6, 2_600_000);
    bed.upload("/data/a.txt", b"a", "").await;
    bed.upload("/data/b.txt", b"b", "").await;
    bed.upload("/data/out.txt", b"moved out", "").await;
    bed.upload("/data/dir/c.bin", &large, "maxMB=1").await;
    bed.upload("/data/dir/sub/d.txt", b"d", "").await;
    bed.upload("/data/.replicate-trash/sneaky.txt", b"not in the trash", "")
        .await;
    let rep = Replicator::start(&work);
    let mirror = || {
        let mut t = local_tree(&root);
        t.retain(|k, _| !k.starts_with(".replicate-trash"));
        t
    };
    let source = || async {
        let mut t = bed.tree("/data", &[]).await;
        t.retain(|k, _| !k.starts_with(".replicate-trash"));
        t
    };
    assert!(
        eventually(Duration::from_secs(60), || async {
            mirror() == source().await && !trash.join(&old).exists()
        })
        .await,
        "{}\n{}",
        diff(&source().await, &mirror()),
        tail(&work.log(), 20)
    );
    assert!(trash.join(&recent).join("planted.txt").exists());
    assert!(
        !trash.join("sneaky.txt").exists(),
        "a source entry landed in the trash"
    );

    bed.delete("/data/a.txt", false).await;
    bed.mv("/data/b.txt", "/data/moved/b.txt").await;
    bed.mv("/data/out.txt", "/elsewhere/out.txt").await;
    bed.delete("/data/dir", true).await;
    // What the trash holds, by the path under the day of the delete.
    let trashed = || {
        let mut out = Tree::new();
        for (k, v) in local_tree(&trash) {
            if let (Some((d, rest)), Some(v)) = (k.split_once('/'), v)
                && d != old
                && d != recent
            {
                out.insert(rest.to_string(), Some(v));
            }
        }
        out
    };
    let want: Tree = [
        ("a.txt", &b"a"[..]),
        ("out.txt", b"moved out"),
        ("dir/c.bin", &large),
        ("dir/sub/d.txt", b"d"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Some(v.to_vec())))
    .collect();
    assert!(
        eventually(Duration::from_secs(60), || async {
            trashed() == want && mirror() == source().await
        })
        .await,
        "trash: {}\nmirror: {}\n{}",
        diff(&want, &trashed()),
        diff(&source().await, &mirror()),
        tail(&work.log(), 20)
    );
    assert!(root.join("moved/b.txt").exists() && !root.join("b.txt").exists());
    assert!(!root.join("dir").exists(), "the deleted directory stayed");
    assert!(rep.stop().0.success(), "{}", tail(&work.log(), 20));
    assert!(!work.path().join("replicate.parked.jsonl").exists());
    let o = replicate_in(work.path(), &["verify"]);
    assert!(
        o.status.success() && output(&o).contains("the sink matches"),
        "{}",
        output(&o)
    );
}

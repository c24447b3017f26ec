//! Reading the source cluster exactly: encrypted and gzipped chunks behind a read
//! JWT, recursive chunk manifests, overlapping chunks, sparse holes, inline content
//! and symlinks, all through a real filer and real volume servers.

mod common;

use common::*;
use prost::Message;
use seaweed_replicate::pb;
use std::time::Duration;

const SECURITY: &str =
    "[jwt.signing.read]\nkey = \"read-secret-for-tests\"\nexpires_after_seconds = 10\n";

fn attrs(size: u64) -> Option<pb::FuseAttributes> {
    Some(pb::FuseAttributes {
        file_size: size,
        file_mode: 0o640,
        mtime: 1_700_000_000,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_every_chunk_layout_exactly() {
    let bed = TestBed::start(BedOptions {
        security_toml: Some(SECURITY.into()),
        weed_args: "-filer.encryptVolumeData".into(),
        ..Default::default()
    });
    let mut expected = Tree::new();

    // Written by the filer: encrypted (and, for text, gzipped before encryption).
    let text = "all work and no play makes jack a dull boy\n"
        .repeat(3000)
        .into_bytes();
    bed.upload("/data/text.txt", &text, "").await;
    expected.insert("text.txt".into(), Some(text));
    let big = bytes(7, 2 * 1024 * 1024 + 3);
    bed.upload("/data/encrypted.bin", &big, "maxMB=1").await;
    expected.insert("encrypted.bin".into(), Some(big));
    let listed = bed.list("/data").await;
    let text_entry = listed
        .iter()
        .find(|e| e["FullPath"] == "/data/text.txt")
        .unwrap();
    assert!(
        text_entry["chunks"][0]["cipher_key"].is_string(),
        "the filer encrypts: {text_entry}"
    );
    assert_eq!(
        text_entry["chunks"][0]["is_compressed"], true,
        "the filer gzips text: {text_entry}"
    );

    // Nested manifests: M2 = [M1 = [c1, c2], c3].
    let (d1, d2, d3) = (bytes(11, 100_000), bytes(12, 100_000), bytes(13, 50_000));
    let c1 = bed.put_chunk(&d1, 0, 1).await;
    let c2 = bed.put_chunk(&d2, 100_000, 2).await;
    let c3 = bed.put_chunk(&d3, 200_000, 3).await;
    let m1_blob = pb::FileChunkManifest {
        chunks: vec![c1, c2],
    }
    .encode_to_vec();
    let mut m1 = bed.put_chunk(&m1_blob, 0, 4).await;
    m1.size = 200_000;
    m1.is_chunk_manifest = true;
    let m2_blob = pb::FileChunkManifest {
        chunks: vec![m1, c3],
    }
    .encode_to_vec();
    let mut m2 = bed.put_chunk(&m2_blob, 0, 5).await;
    m2.size = 250_000;
    m2.is_chunk_manifest = true;
    bed.create_entry(
        "/data",
        pb::Entry {
            name: "manifest.bin".into(),
            chunks: vec![m2],
            attributes: attrs(250_000),
            ..Default::default()
        },
    )
    .await;
    expected.insert("manifest.bin".into(), Some([d1, d2, d3].concat()));

    // Overlap: the newer chunk wins where they overlap, whatever their order.
    let newer = bed.put_chunk(&[b'b'; 200], 200, 20).await;
    let older = bed.put_chunk(&[b'a'; 1000], 0, 10).await;
    bed.create_entry(
        "/data",
        pb::Entry {
            name: "overlap.bin".into(),
            chunks: vec![newer, older],
            attributes: attrs(1000),
            ..Default::default()
        },
    )
    .await;
    expected.insert(
        "overlap.bin".into(),
        Some([vec![b'a'; 200], vec![b'b'; 200], vec![b'a'; 600]].concat()),
    );

    // Sparse: holes between and after chunks read as zeros.
    let s1 = bed.put_chunk(&[1u8; 100], 0, 1).await;
    let s2 = bed.put_chunk(&[2u8; 100], 1000, 1).await;
    bed.create_entry(
        "/data",
        pb::Entry {
            name: "sparse.bin".into(),
            chunks: vec![s1, s2],
            attributes: attrs(3000),
            ..Default::default()
        },
    )
    .await;
    expected.insert(
        "sparse.bin".into(),
        Some([vec![1; 100], vec![0; 900], vec![2; 100], vec![0; 1900]].concat()),
    );

    // Inline content and a symlink.
    bed.create_entry(
        "/data",
        pb::Entry {
            name: "inline.txt".into(),
            content: b"kept in the filer".to_vec(),
            attributes: attrs(17),
            ..Default::default()
        },
    )
    .await;
    expected.insert("inline.txt".into(), Some(b"kept in the filer".to_vec()));
    let mut link_attrs = attrs(0).unwrap();
    link_attrs.symlink_target = "inline.txt".into();
    link_attrs.file_mode = 0o777 | (1 << 27);
    bed.create_entry(
        "/data",
        pb::Entry {
            name: "link".into(),
            attributes: Some(link_attrs),
            ..Default::default()
        },
    )
    .await;
    expected.insert("link".into(), Some(b"-> inline.txt".to_vec()));

    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let work = Workdir::new(&bed, "/data", &root, "");
    std::fs::write(work.path().join("security.toml"), SECURITY).unwrap();
    let rep = Replicator::start(&work);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let last = diff(&expected, &local_tree(&root));
        if last.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sink differs:\n{last}\n{}",
            tail(&work.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    rep.stop();
}

/// Without the read key the volume servers refuse (401): nothing is written, the
/// events are retried and then parked, never half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reads_write_nothing_and_park() {
    let bed = TestBed::start(BedOptions {
        security_toml: Some(SECURITY.into()),
        ..Default::default()
    });
    bed.upload("/data/secret.bin", &bytes(5, 300_000), "").await;
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let work = Workdir::new(
        &bed,
        "/data",
        &root,
        "[replicate]\nevent_deadline_seconds = 2\n",
    );
    let rep = Replicator::start(&work);
    let parked = work.path().join("replicate.parked.jsonl");
    assert!(
        eventually(Duration::from_secs(30), || async { parked.exists() }).await,
        "not parked: {}",
        tail(&work.log(), 20)
    );
    rep.stop();
    let record: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&parked)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(record["key"], "/data/secret.bin");
    assert!(
        record["error"].as_str().unwrap().contains("401"),
        "{record}"
    );
    let tree = local_tree(&root);
    assert!(
        tree.keys()
            .all(|k| !k.contains("secret") && !k.contains("seaweedfs-tmp")),
        "{:?}",
        tree.keys()
    );
}

/// The broker going away and coming back is waited out; the daemon never exits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_restart() {
    let mut bed = TestBed::start(BedOptions::default());
    bed.upload("/data/before.txt", b"before", "").await;
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let work = Workdir::new(&bed, "/data", &root, "");
    bed.stop_broker();
    let mut rep = Replicator::start(&work);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        rep.is_running(),
        "exited while the broker was down: {}",
        tail(&work.log(), 20)
    );
    bed.start_broker();
    assert!(
        eventually(Duration::from_secs(40), || async {
            root.join("before.txt").exists()
        })
        .await,
        "nothing replicated after the broker came back: {}\nbroker: {}",
        tail(&work.log(), 60),
        tail(&bed.dir.path().join("broker.log"), 20)
    );
    bed.stop_broker();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(rep.is_running());
    bed.start_broker();
    bed.upload("/data/after.txt", b"after", "").await;
    assert!(
        eventually(Duration::from_secs(40), || async {
            root.join("after.txt").exists()
        })
        .await,
        "nothing replicated after the second restart: {}",
        tail(&work.log(), 20)
    );
    let (status, _) = rep.stop();
    assert!(status.success());
}

/// A replica that stops answering is given up after the read timeout, and the next
/// one serves the chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_another_replica() {
    let bed = TestBed::start(BedOptions {
        weed_args: "-dataCenter=dc1 -master.defaultReplication=100".into(),
        ..Default::default()
    });
    let mut dc2 = bed.add_volume_server("dc2");
    // Uploads need both data centers (replication 100); retry until dc2 has joined.
    let data = bytes(21, 1024 * 1024 + 99);
    let mut attempts = 0;
    loop {
        let part = reqwest::multipart::Part::bytes(data.clone()).file_name("r.bin");
        let resp = bed
            .http
            .post(format!("{}/data/r.bin?maxMB=1", bed.filer()))
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .unwrap();
        if resp.status().is_success() {
            break;
        }
        attempts += 1;
        assert!(attempts < 60, "dc2 never joined: {}", resp.status());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listed = bed.list("/data").await;
    let vid = listed[0]["chunks"][0]["fid"]["volume_id"]
        .as_u64()
        .unwrap()
        .to_string();
    let locs = bed
        .grpc()
        .await
        .lookup_volume(pb::LookupVolumeRequest {
            volume_ids: vec![vid.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        locs.locations_map[&vid].locations.len(),
        2,
        "not replicated to both data centers"
    );

    // dc2 is preferred, and it stops answering (the master still lists it).
    unsafe { libc::kill(dc2.id() as i32, libc::SIGSTOP) };
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let work = Workdir::new(
        &bed,
        "/data",
        &root,
        "dataCenter = \"dc2\"\n[replicate]\nread_timeout_seconds = 2\n",
    );
    let rep = Replicator::start(&work);
    let ok = eventually(Duration::from_secs(60), || async {
        std::fs::read(root.join("r.bin")).ok() == Some(data.clone())
    })
    .await;
    unsafe { libc::kill(dc2.id() as i32, libc::SIGCONT) };
    let _ = dc2.kill();
    let _ = dc2.wait();
    assert!(ok, "{}", tail(&work.log(), 30));
    assert!(
        std::fs::read_to_string(work.log())
            .unwrap()
            .contains("replica failed; trying the next")
    );
    assert!(!work.path().join("replicate.parked.jsonl").exists());
    rep.stop();
}

/// An event whose data can no longer be read is skipped, not parked, when the source
/// has moved on since (the entry is gone, or replaced: then the source's current
/// version is written instead); the source's current version with unreadable data is
/// parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_events_are_skipped_and_current_ones_parked() {
    let bed = TestBed::start(BedOptions::default());
    bed.upload("/data/current.txt", b"the source's current version", "")
        .await;
    let missing_chunk = pb::FileChunk {
        fid: Some(pb::FileId {
            volume_id: 9999,
            file_key: 7,
            cookie: 7,
        }),
        size: 10,
        ..Default::default()
    };
    let entry = |name: &str, mtime: i64| pb::Entry {
        name: name.into(),
        chunks: vec![missing_chunk.clone()],
        attributes: Some(pb::FuseAttributes {
            file_size: 10,
            file_mode: 0o644,
            mtime,
            ..Default::default()
        }),
        ..Default::default()
    };
    let event = |name: &str, mtime: i64| {
        pb::EventNotification {
            new_entry: Some(entry(name, mtime)),
            new_parent_path: "/data".into(),
            ..Default::default()
        }
        .encode_to_vec()
    };
    // Gone from the source since: stale. An older version of an existing file: stale.
    bed.produce("/data/deleted-since.bin", &event("deleted-since.bin", 1))
        .await;
    bed.produce("/data/current.txt", &event("current.txt", 1))
        .await;
    // The source's current version, with data no volume holds: not stale, parked.
    bed.create_entry("/data", entry("broken.bin", 1)).await;

    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let work = Workdir::new(
        &bed,
        "/data",
        &root,
        "[replicate]\nevent_deadline_seconds = 3\n",
    );
    let rep = Replicator::start(&work);
    let parked = work.path().join("replicate.parked.jsonl");
    assert!(
        eventually(Duration::from_secs(60), || async { parked.exists() }).await,
        "{}",
        tail(&work.log(), 20)
    );
    rep.stop();
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&parked)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records.len(),
        1,
        "only the non-stale event is parked: {records:#?}"
    );
    assert_eq!(records[0]["key"], "/data/broken.bin");
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("the source has moved on since this event"),
        "{log}"
    );
    assert!(!root.join("deleted-since.bin").exists());
    assert_eq!(
        std::fs::read(root.join("current.txt")).unwrap(),
        b"the source's current version"
    );
}

//! Faults against real servers: `replicate` killed at random moments while a backlog of
//! mixed changes drains, and stopped with SIGTERM; the sink must end up equal to the
//! source byte for byte, with nothing missing, corrupted or extra.
//!
//! CI runs the sizes below; `KILLS=100 cargo test --test reliability` runs a longer loop
//! (see the README). `KILL_SEED` picks another sequence of operations and kill moments.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a user does to a tree, at random: create and overwrite files (some of several
/// chunks), delete them, rename files across directories, rename and delete whole
/// directories. The model of what exists only picks the targets; the source filer is
/// the truth the sink is compared with.
struct Writer {
    rng: fastrand::Rng,
    files: BTreeSet<String>,
    dirs: Vec<String>,
    serial: u64,
}

impl Writer {
    fn new(seed: u64) -> Writer {
        Writer {
            rng: fastrand::Rng::with_seed(seed),
            files: BTreeSet::new(),
            dirs: (0..8).map(|i| format!("/data/kill/d{i}")).collect(),
            serial: 0,
        }
    }

    fn pick_file(&mut self) -> Option<String> {
        if self.files.is_empty() {
            return None;
        }
        let i = self.rng.usize(..self.files.len());
        self.files.iter().nth(i).cloned()
    }

    async fn step(&mut self, bed: &TestBed) {
        self.serial += 1;
        let dir = self.dirs[self.rng.usize(..self.dirs.len())].clone();
        match self.rng.u32(..100) {
            // Create or overwrite.
            0..55 => {
                let path = format!("{dir}/f{:02}.bin", self.rng.u32(..40));
                let (len, query) = if self.rng.u32(..25) == 0 {
                    (2_500_000 + self.rng.usize(..100_000), "maxMB=1")
                } else {
                    (self.rng.usize(..120_000), "")
                };
                bed.upload(&path, &bytes(self.serial, len), query).await;
                self.files.insert(path);
            }
            55..72 => {
                if let Some(path) = self.pick_file() {
                    bed.delete(&path, false).await;
                    self.files.remove(&path);
                }
            }
            72..94 => {
                if let Some(from) = self.pick_file() {
                    let to = format!("{dir}/r{}.bin", self.serial);
                    bed.mv(&from, &to).await;
                    self.files.remove(&from);
                    self.files.insert(to);
                }
            }
            94..98 => {
                // Rename a whole directory.
                let i = self.rng.usize(..self.dirs.len());
                let from = self.dirs[i].clone();
                if self
                    .files
                    .iter()
                    .any(|f| f.starts_with(&format!("{from}/")))
                {
                    let to = format!("/data/kill/m{}", self.serial);
                    bed.mv(&from, &to).await;
                    self.files = std::mem::take(&mut self.files)
                        .into_iter()
                        .map(|f| match f.strip_prefix(&format!("{from}/")) {
                            Some(rest) => format!("{to}/{rest}"),
                            None => f,
                        })
                        .collect();
                    self.dirs[i] = to;
                }
            }
            _ => {
                // Delete a whole directory; it comes back with its next file.
                let i = self.rng.usize(..self.dirs.len());
                let d = self.dirs[i].clone();
                if self.files.iter().any(|f| f.starts_with(&format!("{d}/"))) {
                    bed.delete(&d, true).await;
                    self.files.retain(|f| !f.starts_with(&format!("{d}/")));
                }
            }
        }
    }
}

fn committed(work: &Workdir) -> i64 {
    work.saved_offset(0).unwrap_or(0)
}

fn assert_nothing_parked(work: &Workdir) {
    let parked = work.path().join("replicate.parked.jsonl");
    assert!(
        !parked.exists(),
        "events were parked:\n{}",
        std::fs::read_to_string(&parked).unwrap_or_default()
    );
}

/// SIGKILL at random moments (at least 20 times) while changes keep arriving; every
/// restart resumes from the offset file and replays what was not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_repeated_kill_9_while_draining() {
    let kills = env_or("KILLS", 20);
    let seed = env_or("KILL_SEED", 7);
    let bed = Arc::new(TestBed::start(BedOptions::default()));
    // In the bed's directory, so that `KEEP_FAILED` keeps it for a post-mortem.
    let root = bed.dir.path().join("sink");
    let work = Workdir::new(&bed, "/data", &root, "");

    // A backlog before the first start, then changes all through the kill loop.
    let mut writer = Writer::new(seed);
    for _ in 0..150 {
        writer.step(&bed).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicUsize::new(150));
    let writing = tokio::spawn({
        let (bed, done, ops) = (bed.clone(), done.clone(), ops.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                writer.step(&bed).await;
                ops.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut with_backlog = 0;
    for round in 0..kills {
        let mut rep = Replicator::start(&work);
        let wait = Duration::from_millis(rng.u64(150..1800));
        tokio::time::sleep(wait).await;
        assert!(
            rep.is_running(),
            "replicate exited by itself in round {round}:\n{}",
            tail(&work.log(), 30)
        );
        let (status, _) = rep.stop_with(libc::SIGKILL);
        assert!(!status.success());
        let high = bed.high_watermarks()[&0];
        if high > committed(&work) {
            with_backlog += 1;
        }
    }
    done.store(true, Ordering::Relaxed);
    writing.await.unwrap();
    let events = bed.high_watermarks()[&0];
    assert!(
        with_backlog * 2 >= kills,
        "only {with_backlog} of {kills} kills came while events were waiting; the loop tested little"
    );

    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    assert_nothing_parked(&work);
    assert!(rep.stop().0.success());
    eprintln!(
        "kill -9: {kills} kills ({with_backlog} with a backlog waiting), {} operations, {events} events, seed {seed}: the sink equals the source",
        ops.load(Ordering::Relaxed)
    );
}

/// A directory deleted and made again at once, round after round, while `replicate`
/// follows live through Kafka and through the metadata log. A recursive delete publishes
/// the event of every entry under the directory, and the directory's own, before it
/// removes them, so those events may be applied while the source still holds the
/// entries. Taken for entries made again, they stayed on the sink for good (the
/// directory's own delete is overtaken by the new directory): found by the kill test
/// above, and modelled in `convergence_model`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_deleted_and_made_again_at_once_keeps_nothing_of_the_old() {
    let bed = TestBed::start(BedOptions::default());
    let (via_kafka, via_log) = (
        bed.dir.path().join("sink-kafka"),
        bed.dir.path().join("sink-log"),
    );
    let kafka = Workdir::new(&bed, "/data", &via_kafka, "");
    let log = subscribe_workdir(&bed, &via_log, "");
    let reps = [Replicator::start(&kafka), Replicator::start(&log)];
    let files = env_or("AGAIN_FILES", 2000) as usize;
    for round in 0..env_or("AGAIN_ROUNDS", 4) {
        let dir = format!("/data/again/d{}", round % 2);
        bed.upload(&format!("{dir}/first.bin"), &bytes(round, 3000), "")
            .await;
        for batch in (0..files).collect::<Vec<_>>().chunks(50) {
            let (bed, dir) = (&bed, &dir);
            futures::future::join_all(batch.iter().map(|i| async move {
                let name = format!("f{i:04}");
                bed.create_entry(dir, inline_file(&name, name.as_bytes()))
                    .await
            }))
            .await;
        }
        // Both sinks hold the directory's files, so the delete has something to do.
        let rel = dir.trim_start_matches("/data/").to_string();
        let holds = |root: &Path| {
            std::fs::read_dir(root.join(&rel))
                .map(|d| d.count() > files)
                .unwrap_or(false)
        };
        assert!(
            eventually(Duration::from_secs(120), || async {
                holds(&via_kafka) && holds(&via_log)
            })
            .await,
            "round {round}: the sinks did not get the files:\n{}\n{}",
            tail(&kafka.log(), 20),
            tail(&log.log(), 20)
        );
        bed.delete(&dir, true).await;
        bed.upload(&format!("{dir}/again{round}.bin"), b"made again", "")
            .await;
    }
    assert_converges(&bed, "/data", &[], &via_kafka, &kafka.log()).await;
    assert_converges(&bed, "/data", &[], &via_log, &log.log()).await;
    assert_nothing_parked(&kafka);
    assert_nothing_parked(&log);
    for mut rep in reps {
        assert!(rep.is_running());
    }
}

/// SIGTERM in the middle of a backlog: exit 0 within 10 s with the offsets saved, and a
/// restart goes on from there to the same tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_saves_offsets_and_exits_promptly() {
    let bed = TestBed::start(BedOptions::default());
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    // One event at a time, so that the backlog is surely still draining at the signal.
    let work = Workdir::new(&bed, "/data", &root, "[replicate]\nconcurrency = 1\n");
    for i in 0..300 {
        bed.upload(
            &format!("/data/term/f{i:03}.bin"),
            &bytes(i, 20_000 + i as usize),
            "",
        )
        .await;
    }
    // A large file in the middle: the signal may well come while it is being copied.
    bed.upload("/data/term/large.bin", &bytes(999, 12_000_000), "maxMB=1")
        .await;
    let rep = Replicator::start(&work);
    let count = |root: &Path| {
        std::fs::read_dir(root.join("term"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(
        eventually(Duration::from_secs(30), || async { count(&root) >= 30 }).await,
        "no progress: {}",
        tail(&work.log(), 20)
    );
    let (status, took) = rep.stop();
    let copied = count(&root);
    assert!(
        status.success(),
        "SIGTERM: {status}\n{}",
        tail(&work.log(), 20)
    );
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    assert!(
        copied < 301,
        "the backlog finished before the signal; nothing was tested"
    );
    // Every file in the sink is complete, and the saved offset covers at least as many
    // events as there are files (a file is only written after its event; the offset is
    // only saved past events the sink has).
    let saved = committed(&work);
    assert!(
        saved >= copied as i64 - 1 && saved > 0,
        "saved offset {saved} for {copied} files in the sink"
    );
    assert!(
        std::fs::read_to_string(work.log())
            .unwrap()
            .contains("offsets saved")
    );
    let started = Instant::now();
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    assert_nothing_parked(&work);
    assert!(rep.stop().0.success());
    eprintln!(
        "SIGTERM after {copied} files: exit 0 in {took:?}; the rest converged in {:?}",
        started.elapsed()
    );
}

/// Lines of the log that contain `text`.
fn count(log: &Path, text: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(text)
        .count()
}

/// The target filer down for 60 s, then the source cluster (master, volume server and
/// filer: `weed server` is one process) down for 30 s. `replicate` waits with backoff,
/// logs each outage once when it begins and once when it ends, never exits, parks
/// nothing, and converges without help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_of_target_and_source_are_waited_out() {
    let a = TestBed::start(BedOptions::default());
    let b = TestBed::start(BedOptions::default());
    let work = Workdir::filer(&a, "/data", &b, "/backup", "");
    let mut rep = Replicator::start(&work);
    a.upload("/data/before.txt", b"before the outages", "")
        .await;
    a.assert_same_tree("/data", &b, "/backup", &[], &work.log())
        .await;

    // The target goes away for 60 s while changes keep coming.
    let outage = tokio::task::spawn_blocking({
        let dir = b.dir.path().to_path_buf();
        move || TestBed::restart_weed_after(dir, Duration::from_secs(60))
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..20 {
        a.upload(
            &format!("/data/target-down/{i}.bin"),
            &bytes(100 + i, 50_000 + 40_000 * i as usize),
            "maxMB=1",
        )
        .await;
    }
    a.delete("/data/before.txt", false).await;
    a.mv("/data/target-down/0.bin", "/data/target-down/moved.bin")
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(rep.is_running(), "exited during the target outage");
    outage.await.unwrap();
    a.assert_same_tree("/data", &b, "/backup", &[], &work.log())
        .await;
    assert_eq!(
        count(&work.log(), "sink unavailable; events wait for it"),
        1,
        "the target outage should be logged once:\n{}",
        tail(&work.log(), 40)
    );
    assert_eq!(count(&work.log(), "sink available again"), 1);
    assert_eq!(
        count(&work.log(), "will retry"),
        0,
        "an outage was logged per retry:\n{}",
        tail(&work.log(), 40)
    );

    // The source goes away for 30 s with a backlog waiting in the broker.
    let (status, _) = rep.stop();
    assert!(status.success());
    for i in 0..10 {
        a.upload(
            &format!("/data/source-down/{i}.bin"),
            &bytes(200 + i, 300_000),
            "maxMB=1",
        )
        .await;
    }
    let outage = tokio::task::spawn_blocking({
        let dir = a.dir.path().to_path_buf();
        move || TestBed::restart_weed_after(dir, Duration::from_secs(30))
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rep = Replicator::start(&work);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(rep.is_running(), "exited during the source outage");
    outage.await.unwrap();
    a.assert_same_tree("/data", &b, "/backup", &[], &work.log())
        .await;
    // Started during the outage, it waits for the source filer at start (or, had it got
    // past that, for the volume servers): either way one line when it begins, one at the end.
    let source_log = || {
        let text = std::fs::read_to_string(work.log()).unwrap();
        let from = text.rfind("SIGTERM").unwrap_or(0);
        text[from..].to_string()
    };
    let down = source_log()
        .matches("waiting for it; retrying with backoff")
        .count()
        + source_log()
            .matches("source unavailable; events wait for it")
            .count();
    let up = source_log().matches("working again after: filer").count()
        + source_log().matches("source available again").count();
    assert!(
        (1..=2).contains(&down) && up == down,
        "the source outage should be logged once as it begins and once as it ends:\n{}",
        tail(&work.log(), 40)
    );
    assert_eq!(
        count(&work.log(), "will retry"),
        0,
        "{}",
        tail(&work.log(), 40)
    );
    assert!(
        !work.path().join("replicate.parked.jsonl").exists(),
        "an outage parked events"
    );
    assert!(rep.stop().0.success());
    eprintln!("outages survived: target filer 60 s, source cluster 30 s; nothing parked");
}

/// Messages no filer would send, and entries whose data is broken on the source: each
/// is counted and parked (or, out of scope, skipped), nothing is written outside the
/// sink root, nothing panics, and the events after them still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_broken_messages_are_parked_and_nothing_escapes() {
    use prost::Message;
    use seaweed_replicate::pb;
    let bed = TestBed::start(BedOptions {
        // Names over 255 bytes are legal on a filer once its limit is raised.
        env: long_names(),
        ..Default::default()
    });
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let work = Workdir::new(
        &bed,
        "/data",
        &root,
        "[replicate]\nevent_deadline_seconds = 3\n",
    );
    let (file, create) = (inline_file, create_event);
    let rename = |old: &str, new: &str| {
        pb::EventNotification {
            old_entry: Some(file(old, b"")),
            new_entry: Some(file(new, b"pwned")),
            new_parent_path: "/data".into(),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let long = "n".repeat(4096);
    let mut truncated = create("/data", file("truncated.txt", b"pwned pwned pwned"));
    truncated.truncate(truncated.len() / 2);
    // Messages straight into the topic: (key, payload, parked?). A create's path is its
    // key (the filer's way); a rename's new name comes from the entry.
    let messages: Vec<(String, Vec<u8>, bool)> = vec![
        (
            "/data/../../escape1".into(),
            create("/data/../..", file("escape1", b"pwned")),
            true,
        ),
        (
            "/data/nul\0x".into(),
            create("/data", file("nul\0x", b"pwned")),
            true,
        ),
        (
            "relative/key".into(),
            create("relative", file("key", b"pwned")),
            true,
        ),
        ("/data/abs".into(), rename("abs", "/etc/passwd"), true),
        ("/data/dots".into(), rename("dots", ".."), true),
        ("/data/truncated.txt".into(), truncated, true),
        ("/data/random".into(), bytes(3, 300), true),
        (
            String::new(),
            create("/data", file("keyless", b"pwned")),
            true,
        ),
        // Out of the source directory: skipped, as upstream does.
        (
            "/elsewhere/x".into(),
            create("/elsewhere", file("x", b"pwned")),
            false,
        ),
    ];
    for (key, payload, _) in &messages {
        bed.produce(key, payload).await;
    }
    // A forged delete of an entry the source holds, unchanged: it looks like a delete the
    // source has published but not finished, so it is tried until the event deadline,
    // then parked, and the file stays.
    bed.upload("/data/kept.txt", b"kept", "").await;
    let kept = bed.lookup("/data/kept.txt").await.unwrap();
    bed.produce(
        "/data/kept.txt",
        &pb::EventNotification {
            old_entry: Some(kept),
            delete_chunks: true,
            ..Default::default()
        }
        .encode_to_vec(),
    )
    .await;
    // Entries that exist on the source but whose data is broken.
    let attrs = |size: u64| {
        Some(pb::FuseAttributes {
            file_size: size,
            file_mode: 0o644,
            mtime: 1_700_000_000,
            ..Default::default()
        })
    };
    bed.create_entry(
        "/data",
        pb::Entry {
            name: "missing-volume.bin".into(),
            chunks: vec![pb::FileChunk {
                file_id: "9999,01637037d6".into(),
                size: 100,
                ..Default::default()
            }],
            attributes: attrs(100),
            ..Default::default()
        },
    )
    .await;
    let mut short = bed.put_chunk(&bytes(4, 100), 0, 1).await;
    short.size = 5000;
    bed.create_entry(
        "/data",
        pb::Entry {
            name: "size-disagrees.bin".into(),
            chunks: vec![short],
            attributes: attrs(5000),
            ..Default::default()
        },
    )
    .await;
    let looped = bed
        .put_chunk_with(
            |fid| {
                let me = pb::FileChunk {
                    file_id: fid.into(),
                    size: 100,
                    is_chunk_manifest: true,
                    ..Default::default()
                };
                pb::FileChunkManifest {
                    chunks: vec![me.clone(), me],
                }
                .encode_to_vec()
            },
            0,
            1,
        )
        .await;
    // A 4 KiB name is legal on a filer; the local sink maps it to a short name.
    bed.create_entry("/data", file(&long, b"long name")).await;
    // SeaweedFS's own filer cannot store this one (it recurses until it dies), so it
    // comes as a message, for an entry the source does not have: it is not even read
    // (manifest loops are refused by `resolve_manifests`, see tests/properties.rs).
    bed.produce(
        "/data/self-manifest.bin",
        &create(
            "/data",
            pb::Entry {
                name: "self-manifest.bin".into(),
                chunks: vec![pb::FileChunk {
                    is_chunk_manifest: true,
                    size: 200,
                    ..looped
                }],
                attributes: attrs(200),
                ..Default::default()
            },
        ),
    )
    .await;
    bed.upload("/data/ok.txt", b"fine", "").await;

    let rep = Replicator::start(&work);
    assert!(
        eventually(Duration::from_secs(60), || async {
            root.join("ok.txt").exists()
                && count(&work.path().join("replicate.parked.jsonl"), "\"key\"") >= 11
        })
        .await,
        "the pipeline did not get past the hostile messages:\n{}",
        tail(&work.log(), 40)
    );
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&work.log(), 20));

    let parked: Vec<serde_json::Value> =
        std::fs::read_to_string(work.path().join("replicate.parked.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let parked_keys: BTreeSet<&str> = parked.iter().map(|p| p["key"].as_str().unwrap()).collect();
    let mut want: BTreeSet<&str> = messages
        .iter()
        .filter(|m| m.2)
        .map(|m| m.0.as_str())
        .collect();
    want.extend([
        "/data/missing-volume.bin",
        "/data/size-disagrees.bin",
        "/data/kept.txt",
    ]);
    assert_eq!(parked_keys, want, "{parked:#?}");
    let error_of = |key: &str| {
        parked.iter().find(|p| p["key"] == key).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(error_of("/data/missing-volume.bin").contains("9999"));
    assert!(
        error_of("/data/abs").contains("unsafe"),
        "{}",
        error_of("/data/abs")
    );

    // Inside the root: ok.txt, kept.txt, the long-named file under its short name;
    // nothing else, and nothing anywhere else.
    let tree = local_tree(&root);
    assert_eq!(tree.get("ok.txt"), Some(&Some(b"fine".to_vec())));
    assert_eq!(tree.get("kept.txt"), Some(&Some(b"kept".to_vec())));
    let long_file: Vec<_> = tree
        .iter()
        .filter(|(_, v)| v.as_deref() == Some(b"long name".as_slice()))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(long_file.len(), 1, "{:?}", tree.keys());
    assert!(long_file[0].len() <= 255);
    assert_eq!(
        tree.len(),
        3,
        "unexpected files in the sink: {:?}",
        tree.keys()
    );
    for dir in [area.path(), Path::new("/tmp"), work.path()] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_file() {
                assert_ne!(
                    std::fs::read(&p).unwrap_or_default(),
                    b"pwned",
                    "{}",
                    p.display()
                );
            }
        }
    }
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        error_of("/data/kept.txt").contains("still holds the very entry"),
        "{}",
        error_of("/data/kept.txt")
    );
    eprintln!(
        "hostile inputs: {} messages, a self-listing manifest and 2 broken entries; {} parked, 2 handled safely, nothing outside the root",
        messages.len(),
        parked.len()
    );
}

/// Events that trickle in after quiet spells each arrive promptly. The Kafka input pauses
/// fetching when idle; it once paused again before the first fetch after a resume could
/// deliver, so most such events waited minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_events_arrive_promptly_after_idle() {
    let bed = TestBed::start(BedOptions::default());
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let work = Workdir::new(&bed, "/data", &root, "");
    let rep = Replicator::start(&work);
    bed.upload("/data/first.txt", b"first", "").await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            root.join("first.txt").exists()
        })
        .await
    );
    // Quiet spells around the idle threshold (200 ms) and the watermark checks.
    let slowest = trickle(&bed, &root, &work.log(), 12, 150..1600, 3).await;
    assert!(rep.stop().0.success());
    eprintln!("12 trickling events, the slowest arrived in {slowest:?}");
}

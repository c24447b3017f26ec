//! What operators run and watch, against real servers: the metrics listener during
//! replication, `replicate check`, `replicate verify`, `replicate backfill`, and the
//! README's demo.

mod common;

use common::*;
use std::process::{Command, Output};
use std::time::Duration;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Metrics, health and readiness follow what the daemon does: readiness waits for the
/// broker, events and bytes are counted, a bad message shows as parked, the lag drains
/// to zero, and the progress line is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_progress_follow_replication() {
    let mut bed = TestBed::start(BedOptions::default());
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let size = if i == 0 {
                2 * 1024 * 1024 + 3
            } else {
                1000 + i
            };
            (format!("/data/m/f{i}.bin"), bytes(40 + i as u64, size))
        })
        .collect();
    for (path, data) in &files {
        bed.upload(path, data, "maxMB=1").await;
    }
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let port = free_port_pair();
    let work = Workdir::new(
        &bed,
        "/data",
        &root,
        &format!("\n[metrics]\naddress = \"127.0.0.1:{port}\"\nprogress_interval_seconds = 1\n"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = seaweed_replicate::http::plain();

    // With the broker away the process is alive but not ready, and says why.
    bed.stop_broker();
    let rep = Replicator::start(&work);
    assert!(
        eventually(Duration::from_secs(30), || async {
            get(&http, &format!("{base}/healthz")).await == Some((200, "ok\n".into()))
        })
        .await,
        "/healthz never answered: {}",
        tail(&work.log(), 20)
    );
    let minute = Duration::from_secs(60);
    readyz_becomes(&base, 503, "started: yes\ninput: down", minute, &work.log()).await;
    bed.start_broker();
    readyz_becomes(&base, 200, "input: up", minute, &work.log()).await;
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;

    // A message that is not an event is parked and counted as such.
    bed.produce("/data/m/garbage", b"\xff\xfe not a protobuf")
        .await;
    let scrape = || async {
        get(&http, &format!("{base}/metrics"))
            .await
            .map(|(_, t)| t)
            .unwrap_or_default()
    };
    let settled = |t: &str| {
        sample(t, "replicate_parked_messages_total") == Some(1.0)
            && sample(
                t,
                r#"replicate_kafka_partition_lag{topic="seaweedfs_filer",partition="0"}"#,
            ) == Some(0.0)
            && sample(t, "replicate_in_flight_events") == Some(0.0)
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            settled(&scrape().await)
        })
        .await,
        "metrics never settled:\n{}\nlog: {}",
        scrape().await,
        tail(&work.log(), 20)
    );
    let text = scrape().await;
    let created = sample(
        &text,
        r#"replicate_events_total{kind="create",outcome="replicated"}"#,
    )
    .unwrap_or(0.0);
    assert!(created >= files.len() as f64, "{created} creates:\n{text}");
    assert_eq!(
        sample(
            &text,
            r#"replicate_events_total{kind="invalid",outcome="parked"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let copied = sample(&text, "replicate_copied_bytes_total").unwrap_or(0.0);
    assert!(copied >= total as f64, "copied {copied} < {total}:\n{text}");
    for component in ["input", "sink", "source"] {
        assert_eq!(
            sample(
                &text,
                &format!(r#"replicate_up{{component="{component}"}}"#)
            ),
            Some(1.0),
            "{component}:\n{text}"
        );
    }
    assert_eq!(
        sample(&text, "replicate_oldest_unreplicated_event_age_seconds"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "replicate_retries_total"),
        Some(0.0),
        "nothing failed, so nothing was retried:\n{text}"
    );

    // The progress line reports what happened, then says once that all is quiet.
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read_to_string(work.log())
                .unwrap()
                .lines()
                .any(|l| {
                    l.contains("progress: ") && l.contains(" replicated") && l.contains("lag ")
                })
        })
        .await,
        "no progress line:\n{}",
        tail(&work.log(), 40)
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read_to_string(work.log())
                .unwrap()
                .contains("progress: idle, nothing waiting")
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );

    // The broker going away later, on a quiet topic, makes the process unready; its
    // return makes it ready again, though no message arrives to say so.
    bed.stop_broker();
    readyz_becomes(&base, 503, "input: down", minute, &work.log()).await;
    bed.start_broker();
    readyz_becomes(&base, 200, "input: up", minute, &work.log()).await;
    let (status, _) = rep.stop();
    assert!(status.success());
}

/// `replicate check`: all green against live servers; every unreachable part named
/// with exit 1; configuration problems with file and line, exit 2, nothing contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_good_unreachable_and_broken_configs() {
    let bed = TestBed::start(BedOptions::default());
    let area = tempfile::tempdir().unwrap();
    let work = Workdir::new(&bed, "/data", &area.path().join("sink"), "");
    let o = replicate_in(work.path(), &["check"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    for want in [
        "  ok    replication.toml: ",
        "  ok    security.toml: not found; defaults apply",
        &format!(
            "  ok    source filer: {} (SeaweedFS ",
            bed.var("FILER_GRPC")
        ),
        &format!(
            "  ok    input: kafka {} topic {} (1 partition)",
            bed.var("KAFKA_ADDR"),
            bed.var("TOPIC")
        ),
        "  ok    sink: local directory ",
        "all checks passed",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{}", output(&o));
    }

    // Nothing listens on these ports: the filer and the broker are reported unreachable.
    let dead = free_port_pair();
    let rep = work.path().join("replication.toml");
    let text = std::fs::read_to_string(&rep)
        .unwrap()
        .replace(bed.var("FILER_GRPC"), &format!("127.0.0.1:{dead}"));
    std::fs::write(&rep, text).unwrap();
    let note = work.path().join("notification.toml");
    let text = std::fs::read_to_string(&note)
        .unwrap()
        .replace(bed.var("KAFKA_ADDR"), &format!("127.0.0.1:{}", dead + 1));
    std::fs::write(&note, text).unwrap();
    let o = replicate_in(work.path(), &["-config_dir=.", "check"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{}", output(&o));
    for want in [
        "  FAIL  source filer: ",
        "  FAIL  input: ",
        "  ok    sink: local directory ",
        "2 checks failed",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{}", output(&o));
    }

    // Broken values: every problem, with its line, and nothing contacted.
    std::fs::write(
        &rep,
        "[sink.local]\nenabled = true\ndirectory = \"/x\"\n\n[source.filer]\nenabled = true\ngrpcAddress = \"nohost\"\ndirectory = \"/data\"\n\n[replicate]\nconcurrency = 0\n\n[metrics]\naddress = \"localhost:http\"\n",
    )
    .unwrap();
    let o = replicate_in(work.path(), &["check"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{}", output(&o));
    let rep = rep.display().to_string();
    for want in [
        format!("  FAIL  {rep}:7: source.filer.grpcAddress: \"nohost\" is not host:port"),
        format!("  FAIL  {rep}:11: replicate.concurrency: must be between 1 and 4096, got 0"),
        format!("  FAIL  {rep}:14: metrics.address: \"localhost:http\" has no valid port"),
        "3 configuration problems; nothing was contacted".to_string(),
    ] {
        assert!(out.contains(&want), "missing {want:?}:\n{}", output(&o));
    }
    assert!(!out.contains("connectivity"), "{out}");
}

/// A tree that existed before replication started: backfill copies it (excluding what
/// is excluded), verify then finds nothing; planted differences of each kind are found,
/// `-size-only` skips content, and `-repair` fixes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_copies_a_tree_and_verify_finds_and_repairs_differences() {
    let bed = TestBed::start(BedOptions::default());
    let mut want = Tree::new();
    for i in 0..25u64 {
        let path = format!("d{}/sub{}/file{i}.txt", i % 3, i % 2);
        let data = bytes(100 + i, 500 + i as usize * 37);
        bed.upload(&format!("/data/{path}"), &data, "").await;
        want.insert(path, Some(data));
    }
    let big = bytes(7, 3 * 1024 * 1024 + 11);
    bed.upload("/data/big/multi.bin", &big, "maxMB=1").await;
    want.insert("big/multi.bin".into(), Some(big.clone()));
    bed.upload("/data/skip/no.txt", b"excluded", "").await;

    let area = tempfile::tempdir().unwrap();
    let root = area.path().join("sink");
    let work = Workdir::new(&bed, "/data", &root, "excludeDirectories = \"/data/skip\"");

    // Before anything ran, every source file is missing.
    let o = replicate_in(work.path(), &["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", output(&o));
    assert!(
        stdout(&o).contains("checked 26 source files (3.0 MiB): 26 missing, 0 extra, 0 differing"),
        "{}",
        output(&o)
    );

    let o = replicate_in(work.path(), &["backfill"]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    let out = stdout(&o);
    assert!(
        out.contains("backfill: 26 files and 11 directories done in 11 directories walked (1 skipped by the rules, 0 parked)"),
        "{}",
        output(&o)
    );
    assert!(out.contains("complete"), "{}", output(&o));
    assert!(
        !work.path().join("replicate.backfill.state").exists(),
        "a finished backfill removes its state file"
    );
    let got = local_tree(&root);
    let files: Tree = got
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(diff(&want, &files), "", "backfilled tree differs");

    let o = replicate_in(work.path(), &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    assert!(
        stdout(&o).contains("checked 26 source files (3.0 MiB): the sink matches"),
        "{}",
        output(&o)
    );

    // Plant one difference of each kind.
    std::fs::remove_file(root.join("d0/sub0/file0.txt")).unwrap();
    let grown = root.join("d1/sub1/file1.txt");
    let mut data = std::fs::read(&grown).unwrap();
    data.push(b'!');
    std::fs::write(&grown, &data).unwrap();
    let flipped = root.join("big/multi.bin");
    let mut data = std::fs::read(&flipped).unwrap();
    data[2 * 1024 * 1024] ^= 0x55;
    std::fs::write(&flipped, &data).unwrap();
    std::fs::write(root.join("d2/stray.txt"), b"not on the source").unwrap();

    let o = replicate_in(work.path(), &["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", output(&o));
    let out = stdout(&o);
    for want in [
        "  missing   (500 B)  d0/sub0/file0.txt".to_string(),
        format!(
            "  differs   (size {} on the source, {} on the sink)  d1/sub1/file1.txt",
            537, 538
        ),
        "  differs   (same size 3145739, different SHA-256)  big/multi.bin".to_string(),
        "  extra     (17 B)  d2/stray.txt".to_string(),
        "1 missing, 1 extra, 2 differing".to_string(),
    ] {
        assert!(out.contains(&want), "missing {want:?}:\n{}", output(&o));
    }
    let o = replicate_in(work.path(), &["verify", "-size-only"]);
    assert_eq!(o.status.code(), Some(1), "{}", output(&o));
    assert!(
        !stdout(&o).contains("big/multi.bin")
            && stdout(&o).contains("1 missing, 1 extra, 1 differing"),
        "{}",
        output(&o)
    );

    // -repair fixes what is missing or differs; an extra file is deleted only with
    // -delete.
    let o = replicate_in(work.path(), &["verify", "-repair"]);
    assert_eq!(o.status.code(), Some(1), "{}", output(&o));
    assert!(
        stdout(&o).contains("repaired 3 of 4 differences")
            && stdout(&o).contains(
                "  extra     (17 B)  d2/stray.txt  [not repaired: extra; -delete removes it]"
            ),
        "{}",
        output(&o)
    );
    assert!(root.join("d2/stray.txt").exists());
    let o = replicate_in(work.path(), &["verify", "-repair", "-delete"]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    assert!(
        stdout(&o).contains("repaired 1 of 1 difference"),
        "{}",
        output(&o)
    );
    let o = replicate_in(work.path(), &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    assert!(!root.join("d2/stray.txt").exists());

    // A source directory that is not there is trouble (exit 2), not "everything extra".
    let o = Command::new(env!("CARGO_BIN_EXE_replicate"))
        .args(["verify", "-repair", "-delete"])
        .current_dir(work.path())
        .env("HOME", work.path())
        .env("WEED_SOURCE_FILER_DIRECTORY", "/no/such/dir")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("verify: /no/such/dir is not a directory on filer"),
        "{}",
        output(&o)
    );
    assert!(root.join("big/multi.bin").exists(), "nothing was deleted");
    assert_eq!(std::fs::read(root.join("big/multi.bin")).unwrap(), big);
}

/// Backfill and verify with a filer sink (folder to folder on one filer): the target is
/// listed and read back over gRPC. A backfill resumes from its state file, skipping the
/// directories recorded there; a state file of another backfill is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_resumes_and_verify_reads_a_filer_sink() {
    let bed = TestBed::start(BedOptions::default());
    for (path, data) in [
        ("/data/a/one.txt", bytes(1, 100)),
        ("/data/a/two.bin", bytes(2, 1024 * 1024 + 5)),
        ("/data/b/three.txt", bytes(3, 300)),
        ("/data/b/c/four.txt", bytes(4, 400)),
    ] {
        bed.upload(path, &data, "maxMB=1").await;
    }
    // More entries than one listing page (1024) in one directory.
    for i in 0..1030 {
        bed.create_entry(
            "/data/many",
            inline_file(&format!("f{i:04}"), format!("n{i}").as_bytes()),
        )
        .await;
    }
    let work = Workdir::filer(&bed, "/data", &bed, "/mirror", "");
    let header = format!(
        "# replicate backfill of /data on {} to filer {} directory /mirror",
        bed.var("FILER_GRPC"),
        bed.var("FILER_GRPC")
    );
    // An earlier run finished /data/b (it did not: the resumed run must skip it anyway).
    let state = work.path().join("replicate.backfill.state");
    std::fs::write(&state, format!("{header}\ndone /data/b\n")).unwrap();
    let o = replicate_in(work.path(), &["backfill"]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    assert!(
        stdout(&o).contains("1 directories were done by an earlier run"),
        "{}",
        output(&o)
    );
    assert_eq!(
        bed.get("/mirror/a/two.bin").await,
        bytes(2, 1024 * 1024 + 5)
    );
    assert_eq!(bed.get("/mirror/b/c/four.txt").await, bytes(4, 400));
    assert_eq!(bed.get("/mirror/many/f1029").await, b"n1029");
    assert_eq!(bed.list("/mirror/many").await.len(), 1030);
    assert!(
        bed.try_get("/mirror/b/three.txt")
            .await
            .starts_with(b"<unreadable: HTTP 404"),
        "a directory recorded as done was copied again"
    );

    let o = replicate_in(work.path(), &["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", output(&o));
    assert!(
        stdout(&o).contains("  missing   (300 B)  b/three.txt")
            && stdout(&o).contains("checked 1034 source files"),
        "{}",
        output(&o)
    );
    let o = replicate_in(work.path(), &["verify", "-repair"]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    assert_eq!(bed.get("/mirror/b/three.txt").await, bytes(3, 300));
    let o = replicate_in(work.path(), &["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    assert!(stdout(&o).contains("the sink matches"), "{}", output(&o));

    // A state file from another source or sink is not trusted.
    std::fs::write(&state, "# replicate backfill of /elsewhere\ndone /data/a\n").unwrap();
    let o = replicate_in(work.path(), &["backfill"]);
    assert_eq!(o.status.code(), Some(2), "{}", output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("use -restart to start over"),
        "{}",
        output(&o)
    );
    let o = replicate_in(work.path(), &["backfill", "-restart"]);
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
}

/// The README's demo command, start to finish, with the binary under test.
#[test]
fn the_demo_runs_end_to_end() {
    let o = Command::new("bash")
        .arg(repo().join("scripts/demo.sh"))
        .env("REPLICATE_BIN", env!("CARGO_BIN_EXE_replicate"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", output(&o));
    let out = stdout(&o);
    for want in [
        "replicate_events_total{kind=\"rename\",outcome=\"replicated\"}",
        "input: up",
        "checked 2 source files (4.8 MiB): the sink matches",
        "replicate stopped cleanly (exit 0)",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{}", output(&o));
    }
}

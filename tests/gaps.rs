//! Gaps: when the input can tell that it missed events, it says so (an ERROR, a metric)
//! and heals them; a damaged offset file never stops or panics replication.
//!
//! Finding 2 of the reliability issue: an offset file ahead of the topic (a re-created
//! topic, a broker that lost its log) stalled replication silently, forever. Finding 3:
//! a negative or huge offset in it panicked the process.

mod common;

use common::*;
use std::time::Duration;

/// Write the offset file for partition 0.
fn offset_file(work: &Workdir, bed: &TestBed, offset: &str) {
    work.set_offsets(bed.var("TOPIC"), &[(0, offset)]);
}

fn metrics_config(port: u16, on_gap: &str) -> String {
    format!("\n[replicate]\non_gap = \"{on_gap}\"\n\n[metrics]\naddress = \"127.0.0.1:{port}\"\n")
}

/// `replicate_gaps_total{reason}` becomes 1.
async fn counted_once(port: u16, reason: &str) {
    let http = seaweed_replicate::http::plain();
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let series = format!("replicate_gaps_total{{reason=\"{reason}\"}}");
    assert!(
        eventually(Duration::from_secs(30), || async {
            get(&http, &metrics)
                .await
                .is_some_and(|(_, text)| sample(&text, &series) == Some(1.0))
        })
        .await,
        "{:?}",
        get(&http, &metrics).await
    );
}

/// An offset file far past the end of the topic: everything is replicated from the
/// oldest message, the gap is logged and counted, and the reconciliation removes what
/// the sink held that the source never had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_past_the_topic_is_a_gap_that_is_healed() {
    let bed = TestBed::start(BedOptions::default());
    for i in 0..20u64 {
        bed.upload(&format!("/data/d{}/f{i}.bin", i % 3), &bytes(i, 2000), "")
            .await;
    }
    let area = tempfile::tempdir().unwrap();
    let sink = area.path().join("sink");
    // What an earlier life of the sink left that the source never had.
    std::fs::create_dir_all(sink.join("d1")).unwrap();
    std::fs::write(sink.join("d1/stray.bin"), b"not on the source").unwrap();
    let port = free_port_pair();
    let work = Workdir::new(&bed, "/data", &sink, &metrics_config(port, "reconcile"));
    offset_file(&work, &bed, "999999");
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &sink, &work.log()).await;
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("ERROR")
            && log.contains("past its end (")
            && log.contains("events were missed"),
        "{}",
        tail(&work.log(), 30)
    );
    counted_once(port, "offset_ahead_of_topic").await;
    // The reconciliation finished, so no marker is left for the next start.
    assert!(
        eventually(Duration::from_secs(30), || async {
            std::fs::read_to_string(work.log()).is_ok_and(|l| l.contains("reconciliation finished"))
        })
        .await,
        "{}",
        tail(&work.log(), 30)
    );
    assert!(!work.path().join("replicate.reconcile-pending").exists());
    let (status, _) = rep.stop();
    assert!(status.success());
    // The offset saved is one the topic has.
    let high = bed.high_watermarks()[&0];
    let saved = work.offsets()["partitionOffsets"]["0"].as_i64().unwrap();
    assert_eq!(saved, high - 1, "{}", work.offsets());
}

/// Offsets no partition can have: no panic, a warning, everything replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_offsets_restart_from_the_oldest_message() {
    let bed = TestBed::start(BedOptions::default());
    for i in 0..6u64 {
        bed.upload(&format!("/data/f{i}.bin"), &bytes(i, 500), "")
            .await;
    }
    for bad in ["-5", &i64::MAX.to_string(), "-9223372036854775808"] {
        let area = tempfile::tempdir().unwrap();
        let sink = area.path().join("sink");
        let work = Workdir::new(&bed, "/data", &sink, "");
        offset_file(&work, &bed, bad);
        let rep = Replicator::start(&work);
        assert_converges(&bed, "/data", &[], &sink, &work.log()).await;
        let (status, _) = rep.stop();
        assert!(status.success(), "offset {bad}: {}", tail(&work.log(), 20));
        assert!(
            std::fs::read_to_string(work.log())
                .unwrap()
                .contains("offsets no partition can have"),
            "offset {bad}: {}",
            tail(&work.log(), 20)
        );
    }
}

/// `on_gap = "stop"`: nothing is consumed past the gap, `/readyz` says why, and SIGTERM
/// still ends the process cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_gap_stop_goes_no_further_and_says_why() {
    let bed = TestBed::start(BedOptions::default());
    bed.upload("/data/a.bin", &bytes(1, 100), "").await;
    let area = tempfile::tempdir().unwrap();
    let sink = area.path().join("sink");
    let port = free_port_pair();
    let work = Workdir::new(&bed, "/data", &sink, &metrics_config(port, "stop"));
    offset_file(&work, &bed, "999999");
    let rep = Replicator::start(&work);
    readyz_becomes(
        &format!("http://127.0.0.1:{port}"),
        503,
        "stopped at a gap (offset_ahead_of_topic)",
        Duration::from_secs(60),
        &work.log(),
    )
    .await;
    assert!(!sink.join("a.bin").exists());
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&work.log(), 20));
}

/// The metadata log's files, as (UTC minute it starts in "YYYY-MM-DD HH-MM", full path).
async fn log_files(bed: &TestBed) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for day in bed.list("/topics/.system/log").await {
        let day_path = day["FullPath"].as_str().unwrap().to_string();
        let day_name = day_path.rsplit('/').next().unwrap().to_string();
        for f in bed.list(&day_path).await {
            let path = f["FullPath"].as_str().unwrap().to_string();
            let minute = path.rsplit('/').next().unwrap().split('.').next().unwrap();
            out.push((format!("{day_name} {minute}"), path));
        }
    }
    out
}

/// Finding: a metadata-log checkpoint older than the oldest log the source filer keeps
/// (its files deleted while `replicate` was away) went unnoticed, and the filer silently
/// started from what was left. Now it is a gap: logged, counted, and healed by the
/// reconciliation, which removes a file that only a lost event could have removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_older_than_the_filers_log_is_a_gap_that_is_healed() {
    let bed = TestBed::start(BedOptions::default());
    for i in 0..5u64 {
        bed.upload(&format!("/data/f{i}.bin"), &bytes(i, 700), "")
            .await;
    }
    let area = tempfile::tempdir().unwrap();
    let sink = area.path().join("sink");
    let port = free_port_pair();
    let work = subscribe_workdir(
        &bed,
        &sink,
        &format!(
            "checkpoint_interval_seconds = 1\n{}",
            metrics_config(port, "reconcile")
        ),
    );
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &sink, &work.log()).await;
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&work.log(), 20));
    // The checkpoint is no later than now; keep changing the source until the filer has
    // flushed a log file that starts in a later minute (it flushes every minute).
    let stopped = chrono::Utc::now().format("%Y-%m-%d %H-%M").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let mut i = 0u64;
    while !log_files(&bed).await.iter().any(|(m, _)| *m > stopped) {
        assert!(
            std::time::Instant::now() < deadline,
            "the filer flushed no log file after {stopped}: {:?}",
            log_files(&bed).await
        );
        bed.upload(&format!("/data/later/g{i}.bin"), &bytes(100 + i, 300), "")
            .await;
        i += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The log up to and including the checkpoint's minute is deleted, as an operator
    // short of space would.
    let mut deleted = 0;
    for (minute, path) in log_files(&bed).await {
        if minute <= stopped {
            bed.delete(&path, false).await;
            deleted += 1;
        }
    }
    assert!(deleted > 0);
    // What only a lost event could remove.
    std::fs::write(sink.join("stray.bin"), b"not on the source").unwrap();
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &sink, &work.log()).await;
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("ERROR") && log.contains("older than the oldest metadata log"),
        "{}",
        tail(&work.log(), 30)
    );
    counted_once(port, "checkpoint_before_oldest_log").await;
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&work.log(), 20));
    // A restart with a current checkpoint sees no gap.
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &sink, &work.log()).await;
    let (status, _) = rep.stop();
    assert!(status.success());
    let gaps = std::fs::read_to_string(work.log())
        .unwrap()
        .matches("older than the oldest metadata log")
        .count();
    assert_eq!(gaps, 1, "{}", tail(&work.log(), 30));
}

/// Hostile checkpoints in the source filer's KV store, each written over a live one while
/// `replicate` is stopped: far in the future (following from there would skip everything
/// until then), before 1970, and not 8 bytes. None skips a change or stops replication: a
/// future one is a gap (logged, counted, healed: a stray file goes), the others replay
/// the log; every file written meanwhile arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_checkpoints_neither_skip_nor_stop() {
    let bed = TestBed::start(BedOptions::default());
    bed.upload("/data/first.bin", &bytes(1, 500), "").await;
    let area = tempfile::tempdir().unwrap();
    let sink = area.path().join("sink");
    let port = free_port_pair();
    let work = subscribe_workdir(
        &bed,
        &sink,
        &format!(
            "checkpoint_interval_seconds = 1\n{}",
            metrics_config(port, "reconcile")
        ),
    );
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &sink, &work.log()).await;
    assert!(rep.stop().0.success(), "{}", tail(&work.log(), 20));
    let key = work.checkpoint_key().unwrap();
    let year_2200 = chrono::DateTime::parse_from_rfc3339("2200-01-01T00:00:00Z")
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap();
    let hostile: [(&str, Vec<u8>); 5] = [
        ("the year 2200", year_2200.to_be_bytes().to_vec()),
        ("i64::MAX", i64::MAX.to_be_bytes().to_vec()),
        ("before 1970", (-5_i64).to_be_bytes().to_vec()),
        ("3 bytes", vec![1, 2, 3]),
        ("9 bytes", vec![0, 0, 0, 0, 0, 0, 0, 0, 9]),
    ];
    for (i, (what, value)) in hostile.into_iter().enumerate() {
        bed.grpc()
            .await
            .kv_put(seaweed_replicate::pb::KvPutRequest {
                key: key.clone().into_bytes(),
                value,
            })
            .await
            .unwrap();
        // What only the reconciliation of a gap removes (a replay of the log does not).
        let gap = i < 2;
        if gap {
            std::fs::write(sink.join("stray.bin"), b"not on the source").unwrap();
        }
        std::fs::write(work.log(), "").unwrap();
        bed.upload(
            &format!("/data/while-stopped-{i}.bin"),
            &bytes(10 + i as u64, 400),
            "",
        )
        .await;
        let rep = Replicator::start(&work);
        bed.upload(
            &format!("/data/after-start-{i}.bin"),
            &bytes(20 + i as u64, 300),
            "",
        )
        .await;
        assert_converges(&bed, "/data", &[], &sink, &work.log()).await;
        let log = std::fs::read_to_string(work.log()).unwrap();
        if gap {
            assert!(
                log.contains("ERROR") && log.contains("more than a day ahead"),
                "{what}: {}",
                tail(&work.log(), 20)
            );
            counted_once(port, "checkpoint_ahead_of_clock").await;
        } else {
            assert!(
                log.contains("before 1970") || log.contains("not 8 bytes"),
                "{what}: {}",
                tail(&work.log(), 20)
            );
        }
        assert!(rep.stop().0.success(), "{what}: {}", tail(&work.log(), 20));
    }
}

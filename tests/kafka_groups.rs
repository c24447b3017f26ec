//! `[notification.kafka] group_id`: several `replicate` processes share the filer's topic
//! as one Kafka consumer group. Cooperative rebalancing runs on tansu (noida-db 0.2.3 never
//! completes its second join round); the eager strategies and added partitions run on
//! noida-db (tansu has no CreatePartitions).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// A member's working directory: the local sink `sink`, group `group`, a 6 s session (so
/// a killed member's partitions move quickly), commits every second.
fn member(bed: &TestBed, sink: &Path, group: &str, more: &str) -> Workdir {
    let work = Workdir::new(bed, "/data", sink, "");
    let path = work.path().join("notification.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text += &format!("group_id = \"{group}\"\nsession_timeout_seconds = 6\n{more}");
    std::fs::write(path, text).unwrap();
    work
}

/// A member's session instead of the 6 s of [`member`].
fn set_session(work: &Workdir, seconds: u32) {
    let path = work.path().join("notification.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "session_timeout_seconds = 6",
        &format!("session_timeout_seconds = {seconds}"),
    );
    std::fs::write(path, text).unwrap();
}

/// One event a process finished, from its log: "<time> DEBUG ...pipeline: replicated at
/// partition P offset O: KEY" (or skipped).
#[derive(Debug, Clone)]
struct Applied {
    at: String,
    run: &'static str,
    partition: i32,
    offset: i64,
    key: String,
}

fn applied(log: &Path, run: &'static str) -> Vec<Applied> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let at = line.split_whitespace().next()?.to_string();
            let (_, rest) = line.split_once("seaweed_replicate::pipeline: ")?;
            let (head, key) = rest.split_once(": ")?;
            let words: Vec<&str> = head.split_whitespace().collect();
            match words.as_slice() {
                [_outcome, "at", "partition", p, "offset", o] => Some(Applied {
                    at,
                    run,
                    partition: p.parse().ok()?,
                    offset: o.parse().ok()?,
                    key: key.to_string(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// Per path, the events applied by all processes, in time order, have increasing offsets.
/// The one exception is redelivery after SIGKILL: events the killed run applied but had
/// not committed are applied again by the partition's next owner, which starts at the
/// committed offset. Returns how many such replays there were.
fn assert_in_order(all: &[Applied], killed: &str) -> usize {
    let mut by_key: BTreeMap<&str, Vec<&Applied>> = BTreeMap::new();
    for a in all {
        by_key.entry(&a.key).or_default().push(a);
    }
    let mut replays = 0;
    for (key, mut events) in by_key {
        events.sort_by(|a, b| a.at.cmp(&b.at));
        for w in events.windows(2) {
            assert_eq!(
                w[0].partition, w[1].partition,
                "{key}: one key, one partition"
            );
            if w[1].offset > w[0].offset {
                continue;
            }
            assert!(
                w[0].run == killed && w[1].run != killed,
                "{key}: offset {} applied by {} after offset {} by {}:\n{events:#?}",
                w[1].offset,
                w[1].run,
                w[0].offset,
                w[0].run
            );
            replays += 1;
        }
    }
    replays
}

/// Keep writing until `done` holds (at most a minute), then `more` rounds: each round a
/// new version of twelve hot files, so that every membership change happens with events
/// in flight and every owner has work.
async fn churn_until(bed: &TestBed, version: &mut u64, more: u32, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut extra = 0;
    while extra < more {
        if done() {
            extra += 1;
        } else {
            assert!(
                std::time::Instant::now() < deadline,
                "the group never settled"
            );
        }
        *version += 1;
        for h in 0..12u64 {
            bed.upload(
                &format!("/data/hot/h{h}.bin"),
                &bytes(*version * 100 + h, 3000 + (*version as usize % 7) * 500),
                "",
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Now, as the logs write it.
fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

/// Three members drain a backlog and a steady stream of changes while members join, one
/// is killed with SIGKILL and comes back, and one leaves with SIGTERM. The sink ends equal
/// to the source, every member did a share, and no path saw its events out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_the_topic_through_joins_kills_and_restarts() {
    let bed = TestBed::start(BedOptions {
        partitions: 6,
        broker: "tansu",
        ..Default::default()
    });
    let area = tempfile::tempdir().unwrap();
    let sink = area.path().join("sink");
    // The backlog: 48 files written three times each, then renames and deletes, which
    // make the order of each path's events matter.
    for version in 0..3u64 {
        for i in 0..48u64 {
            bed.upload(
                &format!("/data/d{}/f{i}.bin", i % 6),
                &bytes(version * 1000 + i, 1500 + i as usize * 40),
                "",
            )
            .await;
        }
    }
    for i in 0..8 {
        bed.mv(
            &format!("/data/d{}/f{i}.bin", i % 6),
            &format!("/data/moved/f{i}.bin"),
        )
        .await;
    }
    for i in 8..14 {
        bed.delete(&format!("/data/d{}/f{i}.bin", i % 6), false)
            .await;
    }

    let (a, b, c, b2) = (
        member(&bed, &sink, "replicas", ""),
        member(&bed, &sink, "replicas", ""),
        member(&bed, &sink, "replicas", ""),
        member(&bed, &sink, "replicas", ""),
    );
    let mut version = 0;
    let assigned = |w: &Workdir| count(&w.log(), "partitions assigned");
    let rep_a = Replicator::start(&a);
    churn_until(&bed, &mut version, 3, || assigned(&a) >= 1).await;
    let rep_b = Replicator::start(&b);
    churn_until(&bed, &mut version, 8, || assigned(&b) >= 1).await;
    let rep_c = Replicator::start(&c);
    churn_until(&bed, &mut version, 8, || assigned(&c) >= 1).await;
    // B dies without leaving: its partitions move once its session (6 s) runs out.
    let (before_a, before_c) = (assigned(&a), assigned(&c));
    let killed_at = now();
    let (status, _) = rep_b.stop_with(libc::SIGKILL);
    assert!(!status.success());
    churn_until(&bed, &mut version, 8, || {
        assigned(&a) > before_a || assigned(&c) > before_c
    })
    .await;
    let rep_b2 = Replicator::start(&b2);
    churn_until(&bed, &mut version, 8, || assigned(&b2) >= 1).await;
    // C leaves properly: it finishes, commits and releases its partitions at once.
    let (before_a, before_b2) = (assigned(&a), assigned(&b2));
    let (status, _) = rep_c.stop();
    assert!(status.success(), "{}", tail(&c.log(), 30));
    churn_until(&bed, &mut version, 5, || {
        assigned(&a) > before_a || assigned(&b2) > before_b2
    })
    .await;

    let timeline = || {
        let mut lines = Vec::new();
        for (work, run) in [(&a, "A"), (&b, "B"), (&c, "C"), (&b2, "B2")] {
            for l in std::fs::read_to_string(work.log()).unwrap().lines() {
                if l.contains("partitions assigned")
                    || l.contains("partitions released")
                    || l.contains("SIG")
                    || l.contains("WARN")
                    || l.contains("ERROR")
                {
                    lines.push(format!(
                        "{} {run}: {}",
                        &l[..27.min(l.len())],
                        l.get(28..).unwrap_or("")
                    ));
                }
            }
        }
        lines.sort();
        lines.join("\n")
    };
    let converged = eventually(Duration::from_secs(60), || async {
        diff(&bed.tree("/data", &[]).await, &local_tree(&sink)).is_empty()
    })
    .await;
    assert!(
        converged,
        "the sink never matched the source:\n{}\n{}",
        diff(&bed.tree("/data", &[]).await, &local_tree(&sink)),
        timeline()
    );
    let (status, _) = rep_a.stop();
    assert!(status.success(), "{}", tail(&a.log(), 30));
    let (status, _) = rep_b2.stop();
    assert!(status.success(), "{}", tail(&b2.log(), 30));

    let mut all = Vec::new();
    for (work, run) in [(&a, "A"), (&b, "B (killed)"), (&c, "C"), (&b2, "B again")] {
        assert!(
            !work.path().join("replicate.parked.jsonl").exists(),
            "{run} parked events:\n{}",
            tail(&work.log(), 20)
        );
        let mine = applied(&work.log(), run);
        assert!(
            mine.iter().any(|e| e.key.starts_with("/data/hot/")),
            "{run} applied none of the changes made while it was a member:\n{}",
            tail(&work.log(), 30)
        );
        all.extend(mine);
    }
    eprintln!("{}", timeline());
    let replays = assert_in_order(&all, "B (killed)");
    for run in ["A", "B (killed)", "C", "B again"] {
        let mine: Vec<&Applied> = all.iter().filter(|e| e.run == run).collect();
        let mut partitions: Vec<i32> = mine.iter().map(|e| e.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        eprintln!("{run}: {} events on partitions {partitions:?}", mine.len());
    }
    eprintln!("replayed after the kill: {replays}");

    // Graceful handovers replay nothing: everything applied was committed on release.
    // After the kill, at most what B applied in its last commit interval comes again.
    let b_applied = all.iter().filter(|e| e.run == "B (killed)").count();
    assert!(
        replays <= b_applied,
        "{replays} replays, more than B ever applied ({b_applied})"
    );
    assert!(
        count(&c.log(), "partitions released") >= 1
            && count(&c.log(), "left the consumer group") == 1,
        "{}",
        tail(&c.log(), 30)
    );
    // A handed partitions over when B and C joined, and took them back when they went.
    assert!(
        count(&a.log(), "partitions released") >= 1,
        "{}",
        tail(&a.log(), 30)
    );
    // After the kill, the survivors took over B's partitions (before B came back).
    let b_partitions: Vec<i32> = all
        .iter()
        .filter(|e| e.run == "B (killed)")
        .map(|e| e.partition)
        .collect();
    assert!(
        all.iter().any(|e| (e.run == "A" || e.run == "C")
            && e.at > killed_at
            && b_partitions.contains(&e.partition)),
        "nobody took over B's partitions {b_partitions:?} after {killed_at}"
    );
}

/// Moving from one process to a group: `import_offset_file` starts the new group where
/// the offset file says, once, and renames the file; `auto_offset_reset = "latest"` starts
/// another new group at the end of the topic. Both on tansu.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_from_the_offset_file_or_the_end() {
    let bed = TestBed::start(BedOptions {
        partitions: 3,
        broker: "tansu",
        ..Default::default()
    });
    let area = tempfile::tempdir().unwrap();
    let sink = area.path().join("sink");
    for i in 0..9u64 {
        bed.upload(&format!("/data/old/f{i}.bin"), &bytes(i, 900), "")
            .await;
    }
    // Upstream's way first: one process, an offset file.
    let work = Workdir::new(&bed, "/data", &sink, "");
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data", &[], &sink, &work.log()).await;
    let (status, _) = rep.stop();
    assert!(status.success());
    let file = work.path().join("last.offset");
    assert!(file.exists());
    std::fs::remove_dir_all(&sink).unwrap();
    for i in 0..4u64 {
        bed.upload(&format!("/data/new/f{i}.bin"), &bytes(100 + i, 700), "")
            .await;
    }
    // The same directory switches to a group and imports the file: only what came after
    // it arrives (the old files, removed from the sink above, stay away).
    let path = work.path().join("notification.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{text}group_id = \"moved\"\nimport_offset_file = true\nsession_timeout_seconds = 6\n"
        ),
    )
    .unwrap();
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data/new", &[], &sink.join("new"), &work.log()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !sink.join("old").exists(),
        "events before the imported offsets were replayed:\n{}",
        tail(&work.log(), 30)
    );
    assert!(!file.exists(), "the imported file was left in place");
    assert!(work.path().join("last.offset.imported").exists());
    assert_eq!(count(&work.log(), "offset file imported into the group"), 1);
    let (status, _) = rep.stop();
    assert!(status.success());
    // Restarted, it goes on from the group's own offsets.
    bed.upload("/data/new/after-restart.bin", b"after the restart", "")
        .await;
    let rep = Replicator::start(&work);
    assert_converges(&bed, "/data/new", &[], &sink.join("new"), &work.log()).await;
    assert!(!sink.join("old").exists());
    assert_eq!(count(&work.log(), "offset file imported into the group"), 1);
    let (status, _) = rep.stop();
    assert!(status.success());

    // Another new group, from the end: nothing before it joined is applied.
    let fresh_sink = area.path().join("fresh");
    let fresh = member(
        &bed,
        &fresh_sink,
        "fresh",
        "auto_offset_reset = \"latest\"\n",
    );
    let rep = Replicator::start(&fresh);
    assert!(
        eventually(Duration::from_secs(30), || async {
            count(&fresh.log(), "partitions assigned") >= 1
        })
        .await,
        "{}",
        tail(&fresh.log(), 20)
    );
    // The assignment is known; the first fetch positions are looked up right after.
    tokio::time::sleep(Duration::from_secs(3)).await;
    bed.upload(
        "/data/latest/only.bin",
        b"written after the group joined",
        "",
    )
    .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            fresh_sink.join("latest/only.bin").exists()
        })
        .await,
        "{}",
        tail(&fresh.log(), 20)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!fresh_sink.join("old").exists() && !fresh_sink.join("new").exists());
    let (status, _) = rep.stop();
    assert!(status.success());
}

/// The eager strategies (for brokers without incremental rebalancing) on noida-db: two
/// members share the partitions, and partitions added to the topic at runtime are picked
/// up without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_partitions_are_picked_up_with_an_eager_strategy() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    let bed = TestBed::start(BedOptions {
        partitions: 2,
        ..Default::default()
    });
    let area = tempfile::tempdir().unwrap();
    let sink = area.path().join("sink");
    let eager = "partition_assignment_strategy = \"roundrobin\"\n";
    let (a, b) = (
        member(&bed, &sink, "eager", eager),
        member(&bed, &sink, "eager", eager),
    );
    let rep_a = Replicator::start(&a);
    let rep_b = Replicator::start(&b);
    for i in 0..10u64 {
        bed.upload(&format!("/data/f{i}.bin"), &bytes(i, 1200), "")
            .await;
    }
    assert_converges(&bed, "/data", &[], &sink, &a.log()).await;

    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", bed.var("KAFKA_ADDR"))
            .create()
            .unwrap();
    let made = admin
        .create_partitions(
            &[NewPartitions::new(bed.var("TOPIC"), 4)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(made.iter().all(|r| r.is_ok()), "{made:?}");
    // The filer's producer learns of new partitions only every ten minutes: publish into
    // them directly what it would (the entries are made on the source too, since only
    // what the source holds is replicated; their own events go to the old partitions).
    for p in [2, 3] {
        let name = format!("in-partition-{p}.txt");
        bed.create_entry(
            "/data",
            inline_file(&name, format!("partition {p}").as_bytes()),
        )
        .await;
        bed.produce_to(
            Some(p),
            &format!("/data/{name}"),
            &create_event(
                "/data",
                inline_file(&name, format!("partition {p}").as_bytes()),
            ),
        )
        .await;
    }
    let consumed = |p: i32| {
        let line = format!("at partition {p} offset 0: /data/in-partition-{p}.txt");
        [a.log(), b.log()]
            .iter()
            .any(|l| std::fs::read_to_string(l).is_ok_and(|t| t.contains(&line)))
    };
    assert!(
        eventually(Duration::from_secs(60), || async {
            sink.join("in-partition-2.txt").exists()
                && sink.join("in-partition-3.txt").exists()
                && consumed(2)
                && consumed(3)
        })
        .await,
        "A:\n{}\nB:\n{}",
        tail(&a.log(), 20),
        tail(&b.log(), 20)
    );
    assert_eq!(
        std::fs::read(sink.join("in-partition-3.txt")).unwrap(),
        b"partition 3"
    );
    // Between them the two members own all four partitions.
    let owned_now = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .rfind(|l| l.contains("partitions assigned"))
            .map(|l| l.split("now=").nth(1).unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let (owned_a, owned_b) = (owned_now(&a.log()), owned_now(&b.log()));
    let mut all: Vec<i32> = format!("{owned_a},{owned_b}")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3], "A {owned_a}, B {owned_b}");
    let (status, _) = rep_a.stop();
    assert!(status.success());
    let (status, _) = rep_b.stop();
    assert!(status.success());
}

/// A member with nothing to do pauses fetching (noida-db answers empty fetches at once,
/// which would keep the client spinning) and still picks up each event that trickles in
/// after a quiet spell, on whichever partition it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_member_wakes_for_each_trickling_event() {
    let bed = TestBed::start(BedOptions {
        partitions: 3,
        ..Default::default()
    });
    let area = tempfile::tempdir().unwrap();
    let sink = area.path().join("sink");
    let work = member(
        &bed,
        &sink,
        "quiet",
        "partition_assignment_strategy = \"roundrobin\"\n",
    );
    let rep = Replicator::start(&work);
    bed.upload("/data/first.txt", b"first", "").await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            sink.join("first.txt").exists()
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    // Quiet spells around the idle threshold (200 ms), the watermark checks (500 ms)
    // and the grace after a resume (5 s).
    let slowest = trickle(&bed, &sink, &work.log(), 10, 150..6000, 5).await;
    assert!(rep.stop().0.success());
    eprintln!("10 trickling events, the slowest arrived in {slowest:?}");
}

/// A session longer than librdkafka's default poll interval (300 s) was accepted by
/// the configuration check and then refused by the client at start ("`max.poll.interval.ms`
/// must be >= `session.timeout.ms`"), exit 2. The poll interval now follows the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_longer_than_five_minutes_starts() {
    let bed = TestBed::start(BedOptions {
        broker: "tansu",
        ..Default::default()
    });
    let area = tempfile::tempdir().unwrap();
    let sink = area.path().join("sink");
    let work = member(&bed, &sink, "long", "");
    set_session(&work, 600);
    let mut rep = Replicator::start(&work);
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read_to_string(work.log())
                .is_ok_and(|l| l.contains("joining the consumer group"))
        })
        .await,
        "{}",
        tail(&work.log(), 20)
    );
    assert!(rep.is_running(), "{}", tail(&work.log(), 20));
    assert!(rep.stop().0.success(), "{}", tail(&work.log(), 20));
}

/// Finding 11 of the reliability issue: a rebalance that does not complete left members
/// waiting for minutes while nothing said so. Here one is made to wait: member A owns the
/// topic and is frozen (SIGSTOP) with a long session, so the rebalance that member B's
/// join starts cannot finish until A's session runs out. Past 30 s B says so (a warning
/// once, `/readyz` 503 with the reason, and the gauge of how long it has waited); once A is
/// gone, B gets the partitions, is ready again and replicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_that_does_not_complete_is_visible() {
    let bed = TestBed::start(BedOptions {
        partitions: 2,
        broker: "tansu",
        ..Default::default()
    });
    for i in 0..4u64 {
        bed.upload(&format!("/data/f{i}.bin"), &bytes(i, 900), "")
            .await;
    }
    let area = tempfile::tempdir().unwrap();
    let sink = area.path().join("sink");
    let a = member(&bed, &sink, "stuck", "");
    set_session(&a, 90);
    let rep_a = Replicator::start(&a);
    assert_converges(&bed, "/data", &[], &sink, &a.log()).await;
    rep_a.signal(libc::SIGSTOP);

    let port = free_port_pair();
    let b = member(&bed, &sink, "stuck", "");
    let path = b.path().join("replication.toml");
    let text = std::fs::read_to_string(&path).unwrap()
        + &format!("\n[metrics]\naddress = \"127.0.0.1:{port}\"\n");
    std::fs::write(&path, text).unwrap();
    let rep_b = Replicator::start(&b);
    let base = format!("http://127.0.0.1:{port}");
    readyz_becomes(
        &base,
        503,
        "no partition assignment from the consumer group",
        Duration::from_secs(85),
        &b.log(),
    )
    .await;
    let http = seaweed_replicate::http::plain();
    let waited = get(&http, &format!("{base}/metrics"))
        .await
        .and_then(|(_, text)| sample(&text, "replicate_kafka_group_unassigned_seconds"));
    assert!(waited.is_some_and(|w| w >= 30.0), "{waited:?}");
    assert_eq!(
        count(&b.log(), "its rebalance does not complete"),
        1,
        "{}",
        tail(&b.log(), 20)
    );

    // A dies (its session still has to run out); B gets everything and works.
    let _ = rep_a.stop_with(libc::SIGKILL);
    readyz_becomes(&base, 200, "sink: up", Duration::from_secs(150), &b.log()).await;
    bed.upload("/data/after.bin", &bytes(99, 1200), "").await;
    assert_converges(&bed, "/data", &[], &sink, &b.log()).await;
    let waited = get(&http, &format!("{base}/metrics"))
        .await
        .and_then(|(_, text)| sample(&text, "replicate_kafka_group_unassigned_seconds"));
    assert_eq!(waited, Some(0.0));
    assert!(count(&b.log(), "assignment arrived at last") >= 1);
    assert!(rep_b.stop().0.success(), "{}", tail(&b.log(), 20));
}

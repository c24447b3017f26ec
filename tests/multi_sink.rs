//! Several sinks from one input, each chunk read once: one metadata log into another
//! cluster's filer, a local folder and S3 at once. The source volume server counts the
//! chunk reads; S3 goes away behind a proxy while the others keep up, `replicate` is
//! killed with SIGKILL in the middle, and at the end all three equal the source.

mod common;

use common::objects::ObjectStore;
use common::proxy::{Mode, Proxy};
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Files only (object stores have no directories), by path under the root.
fn files(tree: &Tree) -> BTreeMap<String, Vec<u8>> {
    tree.iter()
        .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
        .collect()
}

/// Chunk GETs the source's volume server has answered (its own Prometheus counter).
async fn volume_reads(http: &reqwest::Client, metrics_port: u16) -> f64 {
    let (_, text) = get(http, &format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("weed serves its metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("SeaweedFS_volumeServer_request_total{") && l.contains("type=\"GET\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn replicate_metrics(http: &reqwest::Client, port: u16) -> String {
    get(http, &format!("http://127.0.0.1:{port}/metrics"))
        .await
        .map(|(_, t)| t)
        .unwrap_or_default()
}

/// Wait until `what`'s files equal `want`; on timeout, their difference and the log.
async fn wait_files<F, Fut>(what: &str, want: &BTreeMap<String, Vec<u8>>, log: &Path, mut got: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BTreeMap<String, Vec<u8>>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let have = got().await;
        if &have == want {
            return;
        }
        if std::time::Instant::now() > deadline {
            let missing: Vec<&String> = want
                .keys()
                .filter(|k| have.get(*k) != want.get(*k))
                .collect();
            let extra: Vec<&String> = have.keys().filter(|k| !want.contains_key(*k)).collect();
            panic!(
                "{what} never matched: missing or different {missing:?}, extra {extra:?}\n{}",
                tail(log, 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_log_into_a_filer_a_folder_and_s3_each_chunk_read_once() {
    let weed_metrics = free_port_pair();
    let bed = TestBed::start(BedOptions {
        weed_args: format!("-metricsPort={weed_metrics}"),
        ..Default::default()
    });
    let target = TestBed::start(BedOptions::default());
    let moto = start_moto();
    let s3_proxy = Proxy::start(moto.endpoint().trim_start_matches("http://"));
    let store = common::s3::s3_store(&moto.endpoint()).await;
    let local = tempfile::tempdir().unwrap();
    let port = free_port_pair();
    let http = seaweed_replicate::http::plain();

    // Files written before replicate starts: the log replays them (no checkpoint yet).
    // Multi-chunk files (1 MiB chunks), small ones, and inline-sized ones.
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..12u64 {
        let len = match i % 4 {
            0 => 3 * 1024 * 1024 + 17,
            1 => 700 * 1024,
            2 => 40 * 1024,
            _ => 1500,
        };
        let rel = format!("d{}/f{i}.bin", i % 3);
        let data = bytes(i, len as usize);
        bed.upload(&format!("/data/{rel}"), &data, "maxMB=1").await;
        want.insert(rel, data);
    }
    let mut chunks = 0;
    for rel in want.keys() {
        let entry = bed.lookup(&format!("/data/{rel}")).await.expect("uploaded");
        chunks += entry.chunks.len();
    }
    assert!(chunks >= 12, "{chunks} chunks");

    let sinks = format!(
        "[sink.local.mirror]\nenabled = true\ndirectory = \"{}\"\n\n\
         [sink.filer.failover]\nenabled = true\ngrpcAddress = \"{}\"\ndirectory = \"/failover\"\n\n\
         [sink.s3.offsite]\nenabled = true\naws_access_key_id = \"test\"\naws_secret_access_key = \"test\"\n\
         region = \"us-east-2\"\nbucket = \"replica\"\ndirectory = \"/offsite\"\nendpoint = \"http://{}\"\n",
        local.path().display(),
        target.var("FILER_GRPC"),
        s3_proxy.addr()
    );
    let work = Workdir::with_sink(
        &bed,
        "/data",
        &sinks,
        &format!(
            "subscribe = true\ncheckpoint_interval_seconds = 1\n\n[replicate]\nevent_deadline_seconds = 600\n\n\
             [metrics]\naddress = \"127.0.0.1:{port}\"\n"
        ),
    );
    std::fs::remove_file(work.path().join("notification.toml")).unwrap();
    let log = work.log();
    let before = volume_reads(&http, weed_metrics).await;
    let mut rep = Replicator::start(&work);

    let s3_files = || async {
        store
            .objects("offsite/")
            .await
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches("offsite/").to_string(), v))
            .collect::<BTreeMap<_, _>>()
    };
    let target_files = || async { files(&target.tree("/failover", &[]).await) };
    wait_files("the local sink", &want, &log, || async {
        files(&local_tree(local.path()))
    })
    .await;
    wait_files("the filer sink", &want, &log, target_files).await;
    wait_files("the S3 sink", &want, &log, s3_files).await;
    // Nothing above read the source's volume server: only replicate did.
    let reads = volume_reads(&http, weed_metrics).await - before;
    assert_eq!(
        reads,
        chunks as f64,
        "three sinks, {chunks} chunks: the source's volume server should serve each once\n{}",
        tail(&log, 30)
    );
    let m = replicate_metrics(&http, port).await;
    for sink in ["local.mirror", "filer.failover", "s3.offsite"] {
        let replicated = sample(
            &m,
            &format!("replicate_sink_events_total{{sink=\"{sink}\",outcome=\"replicated\"}}"),
        );
        assert!(
            replicated.unwrap_or(0.0) >= want.len() as f64,
            "{sink}: {replicated:?}\n{m}"
        );
        assert_eq!(
            sample(&m, &format!("replicate_sink_up{{sink=\"{sink}\"}}")),
            Some(1.0),
            "{m}"
        );
    }

    // S3 goes away. The others keep up with everything that follows, the nasty mixes
    // included: a directory renamed and its old name made again, a delete after a
    // re-create, a rename back and forth.
    s3_proxy.set(Mode::Cut);
    bed.mv("/data/d0", "/data/moved").await;
    for (rel, data) in want.clone() {
        if let Some(rest) = rel.strip_prefix("d0/") {
            want.remove(&rel);
            want.insert(format!("moved/{rest}"), data);
        }
    }
    let again = bytes(100, 2 * 1024 * 1024 + 5);
    bed.upload("/data/d0/again.bin", &again, "maxMB=1").await;
    want.insert("d0/again.bin".into(), again);
    bed.upload("/data/d1/gone.bin", &bytes(101, 5000), "").await;
    bed.delete("/data/d1/gone.bin", false).await;
    bed.upload("/data/d1/gone.bin", &bytes(102, 6000), "").await;
    bed.delete("/data/d1/gone.bin", false).await;
    bed.mv("/data/d2", "/data/d2b").await;
    bed.mv("/data/d2b", "/data/d2").await;
    for i in 0..6u64 {
        let data = bytes(200 + i, 300 * 1024);
        bed.upload(&format!("/data/new/n{i}.bin"), &data, "maxMB=1")
            .await;
        want.insert(format!("new/n{i}.bin"), data);
    }
    // Enough that S3's backlog is more than a lane's worth.
    for i in 0..150u64 {
        let data = bytes(1000 + i, 100 + i as usize);
        bed.upload(&format!("/data/many/m{i}.txt"), &data, "").await;
        want.insert(format!("many/m{i}.txt"), data);
    }
    wait_files("the local sink (S3 down)", &want, &log, || async {
        files(&local_tree(local.path()))
    })
    .await;
    wait_files("the filer sink (S3 down)", &want, &log, target_files).await;
    let m = replicate_metrics(&http, port).await;
    let backlog = sample(&m, "replicate_sink_backlog_events{sink=\"s3.offsite\"}").unwrap_or(0.0);
    assert!(
        backlog > 0.0,
        "S3 is down: its backlog holds what it owes\n{m}"
    );
    assert!(
        eventually(Duration::from_secs(60), || async {
            sample(
                &replicate_metrics(&http, port).await,
                "replicate_sink_up{sink=\"s3.offsite\"}",
            ) == Some(0.0)
        })
        .await,
        "S3 never counted as down\n{}",
        tail(&log, 30)
    );
    assert_ne!(
        s3_files().await,
        want,
        "S3 was cut: it cannot have everything"
    );

    // Killed in the middle: S3 owes a backlog; the others are done.
    let (status, _) = rep.stop_with(libc::SIGKILL);
    assert!(!status.success());
    assert!(work.path().join("sinks/s3.offsite/backlog.redb").exists());
    rep = Replicator::start(&work);
    for i in 0..3u64 {
        let data = bytes(300 + i, 1024 * 1024 + 3);
        bed.upload(&format!("/data/late/l{i}.bin"), &data, "maxMB=1")
            .await;
        want.insert(format!("late/l{i}.bin"), data);
    }
    bed.delete("/data/d1", true).await;
    want.retain(|k, _| !k.starts_with("d1/"));
    wait_files("the local sink (after kill -9)", &want, &log, || async {
        files(&local_tree(local.path()))
    })
    .await;
    wait_files("the filer sink (after kill -9)", &want, &log, target_files).await;

    // S3 is back: it catches up from its own backlog.
    s3_proxy.set(Mode::Open);
    wait_files("the S3 sink (back)", &want, &log, s3_files).await;
    let source = files(&bed.tree("/data", &[]).await);
    assert_eq!(source, want, "the test's model of the source is the source");
    assert!(
        eventually(Duration::from_secs(60), || async {
            let m = replicate_metrics(&http, port).await;
            sample(&m, "replicate_sink_backlog_events{sink=\"s3.offsite\"}") == Some(0.0)
                && sample(&m, "replicate_sink_up{sink=\"s3.offsite\"}") == Some(1.0)
        })
        .await,
        "S3's backlog never emptied\n{}",
        replicate_metrics(&http, port).await
    );
    // Nothing was parked anywhere, and each sink's state is its own.
    for sink in ["local.mirror", "filer.failover", "s3.offsite"] {
        let parked = work
            .path()
            .join(format!("sinks/{sink}/replicate.parked.jsonl"));
        assert!(
            !parked.exists(),
            "{sink} parked: {}",
            std::fs::read_to_string(&parked).unwrap_or_default()
        );
    }
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&log, 30));

    // `check` probes every sink, `verify` compares each with the source.
    let o = replicate_in(work.path(), &["check"]);
    let out = output(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for sink in ["local.mirror", "filer.failover", "s3.offsite"] {
        assert!(out.contains(&format!("ok    sink {sink}:")), "{out}");
    }
    let o = replicate_in(work.path(), &["verify"]);
    let out = output(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for sink in ["local.mirror", "filer.failover", "s3.offsite"] {
        assert!(out.contains(&format!("sink {sink}:")), "{out}");
    }

    // A backlog that is not a backlog: moved aside, and that sink reconciled with the
    // source (a file it lost comes back, a stray one goes); the others go on.
    let state = work.path().join("sinks/local.mirror/backlog.redb");
    std::fs::write(&state, b"\x00\xffnot a database").unwrap();
    std::fs::remove_file(local.path().join("moved/f3.bin")).unwrap();
    std::fs::write(local.path().join("stray.bin"), b"the source never had this").unwrap();
    let starts = std::fs::read_to_string(&log)
        .unwrap()
        .matches("Configure sink to")
        .count();
    let rep = Replicator::start(&work);
    // Idle once every sink is up: no CPU to speak of. A window of wall time: a loop
    // that spins uses a core all through it, however fast the machine. (The feeder's
    // own spin on an emptied backlog is caught by its unit test,
    // `fanout::tests::the_feeder_waits_for_appends`.)
    assert!(
        eventually(Duration::from_secs(60), || async {
            std::fs::read_to_string(&log)
                .unwrap()
                .matches("Configure sink to")
                .count()
                >= starts + 3
        })
        .await,
        "{}",
        tail(&log, 30)
    );
    let (cpu, wall) = (rep.cpu_seconds(), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let used = rep.cpu_seconds() - cpu;
    assert!(
        used < 0.25 * wall.elapsed().as_secs_f64(),
        "idle, yet {used:.2} s of CPU in {:.1?}",
        wall.elapsed()
    );
    let after = bytes(400, 2000);
    bed.upload("/data/after.txt", &after, "").await;
    want.insert("after.txt".into(), after);
    wait_files("the local sink (damaged backlog)", &want, &log, || async {
        files(&local_tree(local.path()))
    })
    .await;
    wait_files("the S3 sink (after)", &want, &log, s3_files).await;
    let aside = std::fs::read_dir(work.path().join("sinks/local.mirror"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("backlog.redb.damaged-")
        })
        .count();
    assert_eq!(aside, 1, "the damaged backlog is kept aside");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("the sink's backlog cannot be opened")
    );

    // S3 cut again while files arrive: its backlog holds them. Then back to one sink,
    // S3 alone: the events its backlog held are a gap, and the reconciliation brings
    // them; the two sinks left out meanwhile are reconciled when they are fed again.
    s3_proxy.set(Mode::Cut);
    for i in 0..4u64 {
        let data = bytes(500 + i, 3000);
        bed.upload(&format!("/data/while/w{i}.txt"), &data, "")
            .await;
        want.insert(format!("while/w{i}.txt"), data);
    }
    wait_files("the local sink (S3 cut again)", &want, &log, || async {
        files(&local_tree(local.path()))
    })
    .await;
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&log, 30));
    let config = work.path().join("replication.toml");
    let three = std::fs::read_to_string(&config).unwrap();
    let s3_alone = three
        .replace(
            "[sink.local.mirror]\nenabled = true",
            "[sink.local.mirror]\nenabled = false",
        )
        .replace(
            "[sink.filer.failover]\nenabled = true",
            "[sink.filer.failover]\nenabled = false",
        );
    std::fs::write(&config, &s3_alone).unwrap();
    s3_proxy.set(Mode::Open);
    let rep = Replicator::start(&work);
    let alone = bytes(600, 4000);
    bed.upload("/data/alone.txt", &alone, "").await;
    want.insert("alone.txt".into(), alone);
    wait_files("the S3 sink (alone)", &want, &log, s3_files).await;
    let m = replicate_metrics(&http, port).await;
    assert_eq!(
        sample(&m, "replicate_gaps_total{reason=\"backlog_left\"}"),
        Some(1.0),
        "{}",
        tail(&log, 30)
    );
    assert!(!work.path().join("sinks/s3.offsite").exists(), "set aside");
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&log, 30));
    std::fs::write(&config, &three).unwrap();
    let missed = |text: &str| text.matches("this sink was not fed for a while").count();
    let before = missed(&std::fs::read_to_string(&log).unwrap());
    let rep = Replicator::start(&work);
    wait_files("the local sink (fed again)", &want, &log, || async {
        files(&local_tree(local.path()))
    })
    .await;
    wait_files("the filer sink (fed again)", &want, &log, target_files).await;
    wait_files("the S3 sink (with the others)", &want, &log, s3_files).await;
    // The two left out of the run with S3 alone owe a reconciliation; S3 itself (its
    // backlog set aside) joins anew.
    assert_eq!(missed(&std::fs::read_to_string(&log).unwrap()) - before, 2);
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&log, 30));

    // The first sink (kinds in upstream's order, then names: filer.failover) leaves the
    // set: the metadata log's checkpoint (keyed by the first sink) is carried over from
    // the key used before, not started again.
    let before = std::fs::read_to_string(&log).unwrap().len();
    std::fs::write(
        &config,
        three.replace(
            "[sink.filer.failover]\nenabled = true",
            "[sink.filer.failover]\nenabled = false",
        ),
    )
    .unwrap();
    let rep = Replicator::start(&work);
    let last = bytes(700, 5000);
    bed.upload("/data/last.txt", &last, "").await;
    want.insert("last.txt".into(), last);
    wait_files("the local sink (first sink gone)", &want, &log, || async {
        files(&local_tree(local.path()))
    })
    .await;
    wait_files("the S3 sink (first sink gone)", &want, &log, s3_files).await;
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&log, 30));
    let text = std::fs::read_to_string(&log).unwrap();
    let this_run = &text[before..];
    assert!(
        this_run.contains("carrying over the checkpoint"),
        "{}",
        tail(&log, 30)
    );
    assert!(!this_run.contains("no checkpoint"), "{}", tail(&log, 30));
}

//! The randomized fault harness: the real test bed, a seeded random mix of changes on the
//! source filer, and faults while `replicate` works through them; at the end the sink
//! must equal the source byte for byte, with nothing parked (and, on a target filer, no
//! chunk that no entry references).
//!
//! The changes lean on the nasty cases: files written and overwritten (some multi-chunk),
//! files and directories renamed, a directory renamed and its old name re-created at
//! once, renames back and forth, deletes right after re-creates, recursive deletes, moves
//! out of the source directory and back in. The faults: `replicate` killed with SIGKILL
//! after a seeded number of events (a point that depends on progress, not on time) and
//! restarted, sometimes from an offset file saved earlier (a replay from an earlier
//! position); the broker restarted; the source cluster killed and restarted; the target
//! filer frozen (SIGSTOP) and woken; the object store frozen (no byte passes, longer than
//! the read timeout at times) or cut (connections dropped) by a proxy; in group mode,
//! members frozen past their session, killed, stopped, brought back and added.
//!
//! Profiles: the Kafka input on three partitions into the local sink, into another
//! cluster's filer and into S3 (moto); a consumer group of two or three members into the
//! local sink; the metadata-log input into the local sink; the Kafka input into a local
//! sink and S3 at once (several sinks: one frozen or cut while the other goes on, each
//! from its own backlog). CI runs a fixed set of seeds;
//! `HARNESS_SEEDS=a,b,c` runs those, `HARNESS_ROUNDS=N` (with `HARNESS_FIRST_SEED`) that
//! many from a seed, and `HARNESS_PROFILE=name` one profile (`bench/faults.sh` runs long
//! series). A failure prints its seed and profile.

mod common;

use common::objects::ObjectStore;
use common::proxy::{Mode, Proxy};
use common::s3::{S3Store, s3_section, s3_store};
use common::*;
use std::time::{Duration, Instant};

/// Seeds CI runs for every profile. Seeds that once failed are added here.
const CI_SEEDS: &[u64] = &[1, 2];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    /// Kafka with the offset file.
    Kafka,
    /// Kafka as a consumer group of several members.
    Group,
    /// The source filer's metadata log.
    Subscribe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Local,
    Filer,
    S3,
    /// A local sink and S3, fed together.
    LocalAndS3,
}

#[derive(Clone, Copy, Debug)]
struct Profile {
    name: &'static str,
    input: Input,
    target: Target,
}

const PROFILES: &[Profile] = &[
    Profile {
        name: "kafka-local",
        input: Input::Kafka,
        target: Target::Local,
    },
    Profile {
        name: "kafka-filer",
        input: Input::Kafka,
        target: Target::Filer,
    },
    Profile {
        name: "kafka-s3",
        input: Input::Kafka,
        target: Target::S3,
    },
    Profile {
        name: "group-local",
        input: Input::Group,
        target: Target::Local,
    },
    Profile {
        name: "log-local",
        input: Input::Subscribe,
        target: Target::Local,
    },
    Profile {
        name: "kafka-local-s3",
        input: Input::Kafka,
        target: Target::LocalAndS3,
    },
];

const DIRS: &[&str] = &["/data/A", "/data/B", "/data/A/s", "/data/C", "/out"];
const NAMES: &[&str] = &["x", "y", "z"];

/// One HTTP call to the source filer; its status (0 when it could not be sent). The
/// filer refuses some random changes (a rename onto a non-empty directory, a file under
/// a file): that is fine, whatever it holds is the truth.
async fn call(bed: &TestBed, req: reqwest::RequestBuilder) -> u16 {
    let _ = bed;
    match req.send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn write(bed: &TestBed, path: &str, data: Vec<u8>, query: &str) {
    let name = path.rsplit('/').next().unwrap().to_string();
    let part = reqwest::multipart::Part::bytes(data).file_name(name);
    let form = reqwest::multipart::Form::new().part("file", part);
    let url = format!("{}{}?{query}", bed.filer(), percent_path(path));
    call(bed, bed.http.post(url).multipart(form)).await;
}

async fn rename(bed: &TestBed, from: &str, to: &str) {
    let url = format!(
        "{}{}?mv.from={}",
        bed.filer(),
        percent_path(to),
        percent_path(from)
    );
    call(bed, bed.http.post(url)).await;
}

async fn remove(bed: &TestBed, path: &str) {
    let url = format!("{}{}?recursive=true", bed.filer(), percent_path(path));
    call(bed, bed.http.delete(url)).await;
}

fn pick<'a>(rng: &mut fastrand::Rng, from: &[&'a str]) -> &'a str {
    from[rng.usize(..from.len())]
}

fn file(rng: &mut fastrand::Rng) -> String {
    format!("{}/{}", pick(rng, DIRS), pick(rng, NAMES))
}

/// One random change on the source.
async fn change(bed: &TestBed, rng: &mut fastrand::Rng, serial: &mut u64) {
    *serial += 1;
    let data = |rng: &mut fastrand::Rng, serial: u64, big: bool| {
        let len = if big {
            1_200_000 + rng.usize(0..900_000)
        } else {
            rng.usize(0..3000)
        };
        bytes(serial, len)
    };
    match rng.u32(0..100) {
        0..=29 => {
            let f = file(rng);
            write(bed, &f, data(rng, *serial, false), "").await;
        }
        30..=34 => {
            // Several chunks (1 MiB each).
            let f = file(rng);
            write(bed, &f, data(rng, *serial, true), "maxMB=1").await;
        }
        35..=46 => remove(bed, &file(rng)).await,
        47..=52 => remove(bed, pick(rng, DIRS)).await,
        53..=62 => {
            let (a, b) = (file(rng), file(rng));
            rename(bed, &a, &b).await;
        }
        63..=76 => {
            // A directory renamed, and its old name re-created right after.
            let (a, b) = (pick(rng, DIRS), pick(rng, DIRS));
            rename(bed, a, b).await;
            if rng.bool() {
                let f = format!("{a}/{}", pick(rng, NAMES));
                write(bed, &f, data(rng, *serial, false), "").await;
            }
        }
        77..=86 => {
            // Back and forth.
            let (a, b) = (pick(rng, DIRS), pick(rng, DIRS));
            rename(bed, a, b).await;
            rename(bed, b, a).await;
        }
        _ => {
            // Re-created, then deleted.
            let f = file(rng);
            write(bed, &f, data(rng, *serial, false), "").await;
            remove(bed, &f).await;
        }
    }
}

/// Events finished (replicated or skipped) in one replicate log so far.
fn finished_in(work: &Workdir) -> usize {
    std::fs::read_to_string(work.log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("replicated at ") || l.contains("skipped at "))
        .count()
}

/// One `replicate` process of the round (group mode has several), its working directory
/// and how often it was started.
struct Member {
    work: Workdir,
    rep: Option<Replicator>,
    starts: usize,
}

impl Member {
    fn start(&mut self) {
        self.rep = Some(Replicator::start(&self.work));
        self.starts += 1;
    }

    /// Whether the process now running got past its start-up (its signal handlers exist).
    fn started(&self) -> bool {
        let log = std::fs::read_to_string(self.work.log()).unwrap_or_default();
        log.matches("Configure sink to").count() >= self.starts
    }

    /// Whether the process now running was given its partitions since it started.
    fn assigned_since_start(&self) -> bool {
        let log = std::fs::read_to_string(self.work.log()).unwrap_or_default();
        log.rsplit("Configure sink to")
            .next()
            .is_some_and(|last| self.started() && last.contains("partitions assigned"))
    }

    fn assigned(&self) -> usize {
        std::fs::read_to_string(self.work.log())
            .unwrap_or_default()
            .matches("partitions assigned")
            .count()
    }
}

fn finished(members: &[Member]) -> usize {
    members.iter().map(|m| finished_in(&m.work)).sum()
}

/// Wait (bounded) until `n` more events finished than `from`; the bound only matters
/// when the stream drains first, and then the kill happens at the drained state.
async fn progress(members: &[Member], from: usize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while finished(members) < from + n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the round replicates to.
enum Sink {
    Local(std::path::PathBuf),
    Filer(TestBed),
    /// moto behind a proxy the round freezes and cuts.
    S3 {
        store: S3Store,
        proxy: Proxy,
        _moto: Service,
    },
    /// Both: the local sink in `[sink.local.near]`, S3 in `[sink.s3.far]`.
    LocalAndS3 {
        dir: std::path::PathBuf,
        store: S3Store,
        proxy: Proxy,
        _moto: Service,
    },
}

/// What S3 holds under `backup/`, as a tree of files.
async fn s3_tree(store: &S3Store) -> Tree {
    store
        .objects("backup/")
        .await
        .into_iter()
        .map(|(k, v)| (k["backup/".len()..].to_string(), Some(v)))
        .collect()
}

/// The trees to compare: the source under /data, and the sink. An object store holds no
/// directories, so only the source's files count there.
async fn trees(bed: &TestBed, sink: &Sink) -> (Tree, Tree) {
    let want = bed.tree("/data", &[]).await;
    match sink {
        Sink::Local(dir) => (want, local_tree(dir)),
        Sink::Filer(t) => (want, t.tree("/backup", &[]).await),
        Sink::S3 { store, .. } => {
            let files = want.into_iter().filter(|(_, v)| v.is_some()).collect();
            (files, s3_tree(store).await)
        }
        Sink::LocalAndS3 { dir, store, .. } => {
            // One tree of both: the local sink's under local/, S3's under s3/.
            let both = |local: Tree, s3: Tree| -> Tree {
                local
                    .into_iter()
                    .map(|(k, v)| (format!("local/{k}"), v))
                    .chain(s3.into_iter().map(|(k, v)| (format!("s3/{k}"), v)))
                    .collect()
            };
            let files = want
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (
                both(want, files),
                both(local_tree(dir), s3_tree(store).await),
            )
        }
    }
}

/// Wait (bounded) until the sink equals the source.
async fn caught_up(bed: &TestBed, sink: &Sink) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (want, got) = trees(bed, sink).await;
        if want == got || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A new member's working directory for this profile.
fn member_for(bed: &TestBed, sink: &Sink, input: Input) -> Member {
    let work = match sink {
        Sink::Local(dir) => Workdir::new(bed, "/data", dir, ""),
        Sink::Filer(t) => Workdir::filer(bed, "/data", t, "/backup", ""),
        Sink::S3 { proxy, .. } => Workdir::with_sink(
            bed,
            "/data",
            &s3_section(&format!("http://{}", proxy.addr()), "/backup", false),
            // A frozen store fails a request within seconds.
            "[replicate]\nread_timeout_seconds = 3\n",
        ),
        Sink::LocalAndS3 { dir, proxy, .. } => Workdir::with_sink(
            bed,
            "/data",
            &format!(
                "[sink.local.near]\nenabled = true\ndirectory = \"{}\"\n\n{}",
                dir.display(),
                s3_section(&format!("http://{}", proxy.addr()), "/backup", false)
                    .replace("[sink.s3]", "[sink.s3.far]")
            ),
            "[replicate]\nread_timeout_seconds = 3\n",
        ),
    };
    match input {
        Input::Kafka => {}
        Input::Group => {
            let p = work.path().join("notification.toml");
            let text = std::fs::read_to_string(&p).unwrap()
                + "group_id = \"harness\"\nsession_timeout_seconds = 6\n";
            std::fs::write(&p, text).unwrap();
        }
        Input::Subscribe => {
            let p = work.path().join("replication.toml");
            let text = std::fs::read_to_string(&p).unwrap().replace(
                "directory = \"/data\"\n",
                "directory = \"/data\"\nsubscribe = true\ncheckpoint_interval_seconds = 1\n",
            );
            std::fs::write(&p, text).unwrap();
            std::fs::remove_file(work.path().join("notification.toml")).unwrap();
        }
    }
    Member {
        work,
        rep: None,
        starts: 0,
    }
}

/// One round; on success, what happened (the faults, and how long the sink took to match
/// after the last change).
async fn round(seed: u64, profile: Profile) -> Result<String, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let fail = |what: String| format!("seed {seed} profile {}: {what}", profile.name);
    let group = profile.input == Input::Group;
    let mut bed = TestBed::start(BedOptions {
        partitions: 3,
        // Cooperative rebalancing needs tansu (see tests/kafka_groups.rs).
        broker: if group { "tansu" } else { "noida" },
        ..Default::default()
    });
    let area = tempfile::tempdir().unwrap();
    let sink = match profile.target {
        Target::Local => Sink::Local(area.path().join("sink")),
        Target::Filer => Sink::Filer(TestBed::start(BedOptions::default())),
        Target::S3 => {
            let moto = start_moto();
            let store = s3_store(&moto.endpoint()).await;
            let proxy = Proxy::start(moto.endpoint().trim_start_matches("http://"));
            Sink::S3 {
                store,
                proxy,
                _moto: moto,
            }
        }
        Target::LocalAndS3 => {
            let moto = start_moto();
            let store = s3_store(&moto.endpoint()).await;
            let proxy = Proxy::start(moto.endpoint().trim_start_matches("http://"));
            Sink::LocalAndS3 {
                dir: area.path().join("sink"),
                store,
                proxy,
                _moto: moto,
            }
        }
    };
    let mut serial = 0u64;
    // Some history before the first start.
    for _ in 0..rng.usize(5..20) {
        change(&bed, &mut rng, &mut serial).await;
    }
    let mut members = vec![member_for(&bed, &sink, profile.input)];
    members[0].start();
    if group {
        members.push(member_for(&bed, &sink, profile.input));
        members[1].start();
    }
    let mut saved_offsets: Vec<Vec<u8>> = Vec::new();
    let mut trace = Vec::new();
    let batches = 6 + rng.usize(0..4);
    for batch in 0..batches {
        for _ in 0..rng.usize(4..12) {
            change(&bed, &mut rng, &mut serial).await;
        }
        if let Ok(o) = std::fs::read(members[0].work.path().join("last.offset")) {
            saved_offsets.push(o);
        }
        let running: Vec<usize> = (0..members.len())
            .filter(|i| members[*i].rep.is_some())
            .collect();
        let any = running[rng.usize(..running.len())];
        match rng.u32(0..100) {
            0..=39 => {
                // SIGKILL after some more events, then restart, at times from an offset
                // file saved earlier.
                let n = rng.usize(1..15);
                progress(&members, finished(&members), n).await;
                let _ = members[any].rep.take().unwrap().stop_with(libc::SIGKILL);
                let replay =
                    profile.input == Input::Kafka && !saved_offsets.is_empty() && rng.bool();
                if replay {
                    let old = &saved_offsets[rng.usize(..saved_offsets.len())];
                    std::fs::write(members[any].work.path().join("last.offset"), old).unwrap();
                }
                trace.push(format!(
                    "batch {batch}: member {any} killed after {n} events{}",
                    if replay {
                        ", replay from an older offset"
                    } else {
                        ""
                    }
                ));
                members[any].start();
            }
            40..=47 if profile.input == Input::Kafka => {
                // Only once the sink has caught up: the filer's Kafka publisher drops
                // what it cannot hand over while the broker is away (upstream's, not
                // ours; the metadata-log input has no such hole), and a round that lost
                // events at the source could not converge through any consumer.
                trace.push(format!("batch {batch}: broker restart"));
                caught_up(&bed, &sink).await;
                bed.stop_broker();
                bed.start_broker();
            }
            48..=54 => {
                // The source cluster killed and restarted, once the sink has caught up
                // for the same reason (and the filer keeps its last minute of metadata
                // log in memory only).
                trace.push(format!("batch {batch}: source restart"));
                caught_up(&bed, &sink).await;
                let dir = bed.dir.path().to_path_buf();
                tokio::task::spawn_blocking(move || TestBed::restart_weed_blocking(dir))
                    .await
                    .unwrap();
            }
            55..=66 => match &sink {
                Sink::Filer(t) => {
                    let pid: i32 = t.var("WEED_PID").parse().unwrap();
                    trace.push(format!("batch {batch}: target frozen"));
                    unsafe { libc::kill(pid, libc::SIGSTOP) };
                    for _ in 0..rng.usize(1..5) {
                        change(&bed, &mut rng, &mut serial).await;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                }
                Sink::S3 { proxy, .. } | Sink::LocalAndS3 { proxy, .. } => {
                    // Frozen longer than the read timeout at times; cut connections.
                    let (mode, ms) = if rng.bool() {
                        (Mode::Frozen, rng.u64(500..6000))
                    } else {
                        (Mode::Cut, rng.u64(200..3000))
                    };
                    trace.push(format!("batch {batch}: store {mode:?} for {ms} ms"));
                    proxy.set(mode);
                    for _ in 0..rng.usize(1..5) {
                        change(&bed, &mut rng, &mut serial).await;
                    }
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    proxy.set(Mode::Open);
                }
                Sink::Local(_) => {}
            },
            67..=76 if group => {
                // A member frozen for longer than its session: the others take its
                // partitions; it must write nothing stale when it wakes.
                let before: usize = members.iter().map(Member::assigned).sum();
                trace.push(format!(
                    "batch {batch}: member {any} frozen past its session"
                ));
                let rep = members[any].rep.as_ref().unwrap();
                rep.signal(libc::SIGSTOP);
                for _ in 0..rng.usize(1..6) {
                    change(&bed, &mut rng, &mut serial).await;
                }
                if running.len() > 1 {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while members.iter().map(Member::assigned).sum::<usize>() <= before
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                } else {
                    // Alone: past its session all the same (6 s).
                    tokio::time::sleep(Duration::from_secs(8)).await;
                }
                tokio::time::sleep(Duration::from_millis(rng.u64(0..8000))).await;
                members[any].rep.as_ref().unwrap().signal(libc::SIGCONT);
            }
            77..=86 if group => {
                if running.len() > 1 && rng.bool() {
                    trace.push(format!("batch {batch}: member {any} leaves (SIGTERM)"));
                    // Not in the middle of a rebalance: tansu 0.6.0 keeps a leader that
                    // leaves mid-rebalance as the group's leader for good, and the group
                    // never assigns anything again (its `Inner<Forming>::leave`; a real
                    // Kafka does not). A member that leaves once the group has formed is
                    // what this fault is about.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !running.iter().all(|i| members[*i].assigned_since_start())
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let stopping = &mut members[any];
                    let (status, _) = stopping.rep.take().unwrap().stop();
                    if !status.success() {
                        return Err(fail(format!(
                            "member {any} exit {status:?} on SIGTERM\n{}",
                            tail(&stopping.work.log(), 20)
                        )));
                    }
                } else if let Some(i) = (0..members.len()).find(|i| members[*i].rep.is_none()) {
                    trace.push(format!("batch {batch}: member {i} comes back"));
                    members[i].start();
                } else if members.len() < 3 {
                    trace.push(format!("batch {batch}: member {} joins", members.len()));
                    members.push(member_for(&bed, &sink, profile.input));
                    members.last_mut().unwrap().start();
                }
            }
            _ => {}
        }
    }
    // The end: the sink converges to the source.
    let last_change = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(180);
    let result = loop {
        let (want, got) = trees(&bed, &sink).await;
        let d = diff(&want, &got);
        if d.is_empty() {
            break Ok(last_change.elapsed());
        }
        if Instant::now() > deadline {
            // Kept for a post-mortem: the work directories (logs, offsets, config).
            let mut kept = Vec::new();
            let mut logs = String::new();
            for (i, m) in members.iter().enumerate() {
                let to = std::env::temp_dir().join(format!("harness-{seed}-{}-{i}", profile.name));
                let _ = std::process::Command::new("cp")
                    .arg("-r")
                    .arg(m.work.path())
                    .arg(&to)
                    .status();
                kept.push(to.display().to_string());
                logs += &format!("member {i}:\n{}\n", tail(&m.work.log(), 30));
            }
            break Err(fail(format!(
                "the sink never matched the source:\n{d}\nfaults: {trace:?}\nwork directories kept in {kept:?}\n{logs}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // A SIGTERM in the first milliseconds of a process (before its runtime exists)
    // ends it by the signal; the verdict is about the sink, so stop a started process.
    let mut statuses = Vec::new();
    for (i, m) in members.iter_mut().enumerate() {
        let Some(rep) = m.rep.take() else { continue };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !m.started() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        statuses.push((i, rep.stop().0));
    }
    let converged = result?;
    for (i, status) in statuses {
        if !status.success() {
            return Err(fail(format!(
                "member {i} exit {status:?}\n{}",
                tail(&members[i].work.log(), 20)
            )));
        }
    }
    for m in &members {
        // With several sinks, each parks in its own directory.
        let mut parked_files = vec![m.work.path().join("replicate.parked.jsonl")];
        if let Ok(sinks) = std::fs::read_dir(m.work.path().join("sinks")) {
            parked_files.extend(
                sinks
                    .flatten()
                    .map(|d| d.path().join("replicate.parked.jsonl")),
            );
        }
        if let Some(parked) = parked_files.into_iter().find(|p| p.exists()) {
            return Err(fail(format!(
                "events were parked in {}:\n{}",
                parked.display(),
                std::fs::read_to_string(&parked).unwrap_or_default()
            )));
        }
    }
    // The target filer stores no chunk that no entry references (the filer deletes
    // replaced chunks in the background, so wait for that).
    if let Sink::Filer(t) = &sink {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (orphans, report) = orphan_needles_of(t);
            if orphans == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "the target keeps {orphans} orphaned needles:\n{report}\nfaults: {trace:?}"
                )));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    Ok(format!(
        "matched {:.1?} after the last change; faults: {}",
        converged,
        trace.join(", ")
    ))
}

fn seeds() -> Vec<u64> {
    let var = |k: &str| std::env::var(k).ok();
    if let Some(list) = var("HARNESS_SEEDS") {
        return list
            .split(',')
            .map(|s| s.trim().parse().expect("HARNESS_SEEDS: numbers"))
            .collect();
    }
    if let Some(n) = var("HARNESS_ROUNDS") {
        let n: u64 = n.parse().expect("HARNESS_ROUNDS: a number");
        let first: u64 = var("HARNESS_FIRST_SEED").map_or(1000, |s| s.parse().unwrap());
        return (first..first + n).collect();
    }
    CI_SEEDS.to_vec()
}

/// Every seed through one profile (a test each, so that CI runs two at a time); nothing
/// when `HARNESS_PROFILE` names another.
async fn profile(name: &str) {
    if std::env::var("HARNESS_PROFILE").is_ok_and(|only| only != name) {
        return;
    }
    let profile = *PROFILES.iter().find(|p| p.name == name).unwrap();
    let mut failures = Vec::new();
    let started = Instant::now();
    let mut rounds = 0;
    for seed in seeds() {
        rounds += 1;
        let began = Instant::now();
        match round(seed, profile).await {
            Ok(what) => eprintln!(
                "harness: seed {seed} profile {name}: ok in {:.0?} ({what})",
                began.elapsed()
            ),
            Err(e) => {
                eprintln!("harness: FAILED {e}");
                failures.push(e);
            }
        }
    }
    eprintln!(
        "harness: profile {name}: {rounds} rounds, {} failed, in {:?}",
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_into_local() {
    profile("kafka-local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_into_filer() {
    profile("kafka-filer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_into_s3() {
    profile("kafka-s3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_into_local() {
    profile("group-local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_log_into_local() {
    profile("log-local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_into_local_and_s3_at_once() {
    profile("kafka-local-s3").await;
}

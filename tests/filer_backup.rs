//! `replicate filer.backup` against upstream's own `weed filer.backup` (4.48) on one live
//! source: each takes over from the other's checkpoint in the source filer's KV store,
//! with nothing missing and nothing already on the sink written again.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `weed filer.backup`, killed on drop.
struct WeedBackup {
    child: Child,
    log: PathBuf,
}

impl WeedBackup {
    /// Start it in `work` (it reads ./replication.toml) with `args` after the source's.
    fn start(bed: &TestBed, work: &Workdir, args: &[&str]) -> WeedBackup {
        let log = work.path().join("weed-backup.log");
        let out = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        let child = Command::new(testbed_binary("weed"))
            .arg("filer.backup")
            .arg(format!("-filer={}", bed.var("FILER_HTTP")))
            .arg("-filerPath=/data")
            .args(args)
            .current_dir(work.path())
            .env("HOME", work.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        WeedBackup { child, log }
    }

    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WeedBackup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap()
}

/// The checkpoint stored under `key` in the source filer's KV store (0: none).
async fn checkpoint(bed: &TestBed, key: &[u8]) -> i64 {
    let v = bed
        .grpc()
        .await
        .kv_get(seaweed_replicate::pb::KvGetRequest { key: key.to_vec() })
        .await
        .unwrap()
        .into_inner()
        .value;
    <[u8; 8]>::try_from(v.as_slice()).map_or(0, i64::from_be_bytes)
}

/// Every file under `root` with what changes whenever it is written again: its inode and
/// its ctime.
fn stamps(root: &Path) -> BTreeMap<String, (u64, i64, i64)> {
    local_tree(root)
        .into_iter()
        .filter(|(_, content)| content.is_some())
        .map(|(rel, _)| {
            let m = std::fs::symlink_metadata(root.join(&rel)).unwrap();
            (rel, (m.ino(), m.ctime(), m.ctime_nsec()))
        })
        .collect()
}

/// The files of `before` that were written again since, leaving out `changed`.
fn rewritten(
    before: &BTreeMap<String, (u64, i64, i64)>,
    root: &Path,
    changed: &[&str],
) -> Vec<String> {
    let now = stamps(root);
    before
        .iter()
        .filter(|(rel, _)| !changed.contains(&rel.as_str()))
        .filter(|(rel, stamp)| now.get(*rel) != Some(stamp))
        .map(|(rel, _)| rel.clone())
        .collect()
}

/// weed filer.backup saves its checkpoint only while it handles an event, and only when
/// 3 s have passed since the last save: write small files until one's event is under the
/// checkpoint. Then every event so far is done and saved, and nothing after it exists.
async fn settle_upstream_checkpoint(bed: &TestBed, key: &[u8], log: &Path) {
    for i in 0..20 {
        let before = now_ns();
        bed.upload(&format!("/data/ticks/t{i}.txt"), b"tick", "")
            .await;
        if eventually(Duration::from_secs(8), || async {
            checkpoint(bed, key).await >= before
        })
        .await
        {
            return;
        }
    }
    panic!(
        "weed filer.backup's checkpoint never passed the last event\n{}",
        tail(log, 30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weed_filer_backup_and_replicate_take_over_from_each_other() {
    let bed = TestBed::start(BedOptions::default());
    let sink = tempfile::tempdir().unwrap();
    let root = sink.path().join("backup");
    // [source.filer] and notification.toml are there as an operator's may be; neither
    // tool reads them in this mode.
    let work = Workdir::new(&bed, "/elsewhere", &root, "");
    let key =
        seaweed_replicate::backup::checkpoint_key("/data", "local", &root.display().to_string());

    // 1. weed filer.backup copies the first files and saves its checkpoint.
    for i in 0..20 {
        bed.upload(
            &format!("/data/a/f{i}.bin"),
            &bytes(i, 1000 + 997 * i as usize),
            "",
        )
        .await;
    }
    bed.upload("/data/big.bin", &bytes(99, 2_500_000), "maxMB=1")
        .await;
    bed.upload("/data/sub/deep/x.txt", b"deep", "").await;
    let weed = WeedBackup::start(&bed, &work, &["-doDeleteFiles"]);
    assert_converges(&bed, "/data", &[], &root, &weed.log).await;
    settle_upstream_checkpoint(&bed, &key, &weed.log).await;
    assert_converges(&bed, "/data", &[], &root, &weed.log).await;
    let weed_log = weed.log.clone();
    weed.stop();
    let by_weed = stamps(&root);
    let upstream_checkpoint = checkpoint(&bed, &key).await;

    // 2. Changes while nothing runs; then replicate continues from weed's checkpoint.
    for i in 0..10 {
        bed.upload(&format!("/data/b/new{i}.bin"), &bytes(100 + i, 5000), "")
            .await;
    }
    bed.upload("/data/a/f0.bin", b"changed", "").await;
    bed.delete("/data/a/f1.bin", false).await;
    bed.mv("/data/a/f2.bin", "/data/b/moved.bin").await;
    let filer = format!("-filer={}", bed.var("FILER_HTTP"));
    // `replicate filer.backup` with weed's own flags, and `more` of them.
    let start_ours = |more: &[&str]| {
        let mut args = vec!["filer.backup", filer.as_str(), "-filerPath=/data"];
        args.extend_from_slice(more);
        Replicator::start_with(&work, &[], &args)
    };
    let rep = start_ours(&["-doDeleteFiles"]);
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    let log = std::fs::read_to_string(work.log()).unwrap();
    assert!(
        log.contains("resuming the metadata log from the checkpoint")
            && log.contains(&format!("checkpoint={upstream_checkpoint}")),
        "replicate did not resume from weed's checkpoint {upstream_checkpoint}\n{}",
        tail(&work.log(), 40)
    );
    assert!(
        log.contains("[source.filer] grpcAddress, directory in the configuration are not used"),
        "{}",
        tail(&work.log(), 40)
    );
    let again = rewritten(
        &by_weed,
        &root,
        &["a/f0.bin", "a/f1.bin", "a/f2.bin", "b/moved.bin"],
    );
    assert!(
        again.is_empty(),
        "replicate wrote again what weed filer.backup had copied: {again:?}"
    );
    assert!(
        log.contains("the event at the checkpoint is on the sink already"),
        "the filer delivers the event at the checkpoint again; it was not recognised:\n{}",
        tail(&work.log(), 40)
    );
    // The last event replicate does before it stops: weed filer.backup applies the event
    // at a checkpoint again when it resumes (the filer's `since` is inclusive, and weed
    // compares nothing), so this file, and only it, may be written again in step 3.
    bed.upload("/data/handover.txt", b"last", "").await;
    assert_converges(&bed, "/data", &[], &root, &work.log()).await;
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&work.log(), 30));
    let ours = checkpoint(&bed, &key).await;
    assert!(
        ours > upstream_checkpoint,
        "replicate left the checkpoint at {ours}, weed's was {upstream_checkpoint}"
    );
    let by_us = stamps(&root);

    // 3. And back: weed filer.backup continues from replicate's checkpoint.
    for i in 0..5 {
        bed.upload(&format!("/data/c/x{i}.bin"), &bytes(200 + i, 3000), "")
            .await;
    }
    bed.delete("/data/b/new0.bin", false).await;
    let weed = WeedBackup::start(&bed, &work, &["-doDeleteFiles"]);
    assert_converges(&bed, "/data", &[], &root, &weed.log).await;
    let weed_says = std::fs::read_to_string(&weed.log).unwrap();
    assert!(
        weed_says.matches("resuming from").count() == 1,
        "weed filer.backup did not resume from replicate's checkpoint:\n{}",
        tail(&weed.log, 30)
    );
    let again = rewritten(&by_us, &root, &["b/new0.bin", "handover.txt"]);
    assert!(
        again.is_empty(),
        "weed filer.backup wrote again what replicate had copied: {again:?}\n{}",
        tail(&weed_log, 10)
    );
    weed.stop();

    // 4. Without -doDeleteFiles, as weed filer.backup, the sink keeps what the source
    // deletes.
    let rep = start_ours(&[]);
    bed.delete("/data/c/x0.bin", false).await;
    bed.upload("/data/c/after.txt", b"marker", "").await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            root.join("c/after.txt").exists()
        })
        .await,
        "{}",
        tail(&work.log(), 30)
    );
    assert!(
        root.join("c/x0.bin").exists(),
        "a backup without -doDeleteFiles lost a file the source deleted"
    );
    assert!(rep.stop().0.success());
}

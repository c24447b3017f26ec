//! One scenario for every input: the same changes to a live filer, replicated into a
//! local directory through the input under test, compared byte for byte.

use super::*;

/// Called after each batch of changes, for inputs fed by the test (it forwards what the
/// filer published since the last call); a no-op for inputs that read the filer itself.
pub type Relay<'a> =
    &'a (dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> + Sync);

/// A backlog that exists before `replicate` starts, then changes while it runs: overwrites,
/// renames of files and directories, moves into and out of scope, deletes (one recursive),
/// a multi-chunk file rewritten. `work` replicates `/data` into `sink`.
pub async fn scenario(
    bed: &TestBed,
    work: &Workdir,
    env: &[(&str, &str)],
    sink: &Path,
    relay: Relay<'_>,
) {
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
    bed.upload("/data/out/leaving.txt", b"moves out of scope", "")
        .await;
    bed.upload("/outside/coming.txt", b"moves into scope", "")
        .await;
    relay().await;
    let rep = Replicator::start_with_env(work, env);
    assert_converges(bed, "/data", &[], sink, &work.log()).await;

    bed.upload("/data/a.txt", b"second, longer version of a", "")
        .await;
    bed.mv("/data/a.txt", "/data/renamed/a2.txt").await;
    bed.mv("/data/big", "/data/big2").await;
    bed.mv("/outside/coming.txt", "/data/came.txt").await;
    bed.mv("/data/out/leaving.txt", "/outside/left.txt").await;
    bed.delete("/data/dir one/ü naïve file.txt", false).await;
    bed.upload("/data/deep/x/y/z.txt", b"soon gone", "").await;
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
    relay().await;
    assert_converges(bed, "/data", &[], sink, &work.log()).await;
    let tree = local_tree(sink);
    assert!(tree.contains_key("big2/multi.bin") && !tree.contains_key("big"));
    assert!(tree.contains_key("came.txt") && !tree.contains_key("out/leaving.txt"));
    let (status, took) = rep.stop();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    assert!(
        !work.path().join("replicate.parked.jsonl").exists(),
        "{}",
        tail(&work.log(), 20)
    );
}

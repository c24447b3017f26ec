//! Reads through the filer (`filerProxy`, upstream's `filer.sync -a.filerProxy` and
//! `filer.backup -filerProxy`), from where the volume servers cannot be reached.
//!
//! `replicate` runs in a network namespace of its own whose only way out is a veth link
//! to this host, where two proxies forward the filer's gRPC and HTTP ports and nothing
//! else: the volume server (and the master) are on this host's loopback, which the
//! namespace cannot reach. Without `filerProxy` nothing can be copied; with it, every
//! file arrives byte for byte. Needs root (`ip netns`), as CI has.

mod common;

use common::proxy::Proxy;
use common::*;
use std::process::Command;
use std::time::Duration;

/// A network namespace joined to this host by a veth pair; removed on drop.
struct Namespace {
    name: String,
    host_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {} (this test needs root and iproute2, as CI has)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Namespace {
    fn new() -> Namespace {
        let id = std::process::id() % 200 + 20;
        let name = format!("swr-proxy-{id}");
        let (host_if, ns_if) = (format!("swrh{id}"), format!("swrn{id}"));
        let (host_ip, ns_ip) = (format!("10.213.{id}.1"), format!("10.213.{id}.2"));
        // Left over from a run that was killed.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        let ns = Namespace {
            name: name.clone(),
            host_ip: host_ip.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{ns_ip}/24"), "dev", &ns_if]);
        inside(&["link", "set", &ns_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    fn wrapper(&self) -> [&str; 3] {
        ["netns", "exec", &self.name]
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // The veth pair goes with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_the_filer_when_only_the_filer_is_reachable() {
    let bed = TestBed::start(BedOptions::default());
    let ns = Namespace::new();
    let grpc = Proxy::start_on(&ns.host_ip, bed.var("FILER_GRPC"));
    let http = Proxy::start_on(&ns.host_ip, bed.var("FILER_HTTP"));

    // Files of one chunk, of several chunks, and small enough to be inline.
    let files: Vec<(String, Vec<u8>, &str)> = vec![
        ("/data/proxy/one.bin".into(), bytes(1, 300_000), ""),
        (
            "/data/proxy/large.bin".into(),
            bytes(2, 3_500_000),
            "maxMB=1",
        ),
        ("/data/proxy/deep/small.txt".into(), b"small".to_vec(), ""),
    ];
    for (path, data, query) in &files {
        bed.upload(path, data, query).await;
    }

    let sink = bed.dir.path().join("sink");
    let work = subscribe_workdir(&bed, &sink, "");
    let config = work.path().join("replication.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(bed.var("FILER_GRPC"), &grpc.addr());
    std::fs::write(&config, &text).unwrap();
    let wrapper = ns.wrapper();
    let run = |extra: &[&str]| {
        let mut wrapped = vec!["ip"];
        wrapped.extend_from_slice(&wrapper);
        Replicator::start_wrapped(&work, &wrapped, &[], extra)
    };

    // Without filerProxy: the events come through the filer, their content cannot.
    let mut rep = run(&[]);
    let log = || std::fs::read_to_string(work.log()).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(120), || async {
            log().contains("source unavailable; events wait for it")
        })
        .await,
        "reading from the volume servers should fail from inside the namespace:\n{}",
        tail(&work.log(), 30)
    );
    assert!(rep.is_running());
    assert!(
        !sink.join("proxy/one.bin").exists() && !sink.join("proxy/large.bin").exists(),
        "content arrived although the volume server is out of reach"
    );
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&work.log(), 20));

    // With it, through the filer's HTTP port (given explicitly: the proxies' ports do not
    // keep weed's HTTP = gRPC - 10000 convention).
    std::fs::write(
        &config,
        text.replace(
            "[source.filer]\n",
            &format!(
                "[source.filer]\nfilerProxy = true\nhttpAddress = \"{}\"\n",
                http.addr()
            ),
        ),
    )
    .unwrap();
    let before = log().len();
    let rep = run(&[]);
    assert_converges(&bed, "/data", &[], &sink, &work.log()).await;
    for (path, data, _) in &files {
        let rel = path.trim_start_matches("/data/");
        assert_eq!(&std::fs::read(sink.join(rel)).unwrap(), data, "{rel}");
    }
    // Changes that follow arrive the same way.
    bed.upload("/data/proxy/later.bin", &bytes(3, 2_200_000), "maxMB=1")
        .await;
    bed.mv("/data/proxy/one.bin", "/data/proxy/deep/one.bin")
        .await;
    assert_converges(&bed, "/data", &[], &sink, &work.log()).await;
    assert!(
        !log()[before..].contains("source unavailable"),
        "reads through the filer failed on the way:\n{}",
        &log()[before..]
    );
    let (status, _) = rep.stop();
    assert!(status.success(), "{}", tail(&work.log(), 20));
    eprintln!(
        "filerProxy: 4 files (2 of several chunks) copied from inside a namespace that reaches only the filer"
    );
}

//! Running under systemd: the shipped unit is valid, and the real binary speaks
//! `sd_notify` (READY once started, watchdog pings, STOPPING at shutdown).

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// The states `replicate` sent to the socket within `wait`.
fn received(sock: &UnixDatagram, wait: Duration) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_ready_watchdog_and_stopping() {
    let bed = TestBed::start(BedOptions::default());
    let area = tempfile::tempdir().unwrap();
    let work = Workdir::new(&bed, "/data", &area.path().join("sink"), "");
    let socket = area.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket).unwrap();
    let rep = Replicator::start_with_env(
        &work,
        &[
            ("NOTIFY_SOCKET", socket.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let first = received(&sock, Duration::from_secs(15));
    assert_eq!(
        first.iter().filter(|s| *s == "READY=1").count(),
        1,
        "{first:?}\n{}",
        tail(&work.log(), 20)
    );
    // Every 200 ms (half of 400 ms) while it runs.
    let pings = received(&sock, Duration::from_secs(2));
    let n = pings.iter().filter(|s| *s == "WATCHDOG=1").count();
    assert!(
        (6..=14).contains(&n),
        "{n} watchdog pings in 2 s: {pings:?}"
    );
    let stopping = std::thread::spawn(move || received(&sock, Duration::from_secs(3)));
    let (status, _) = rep.stop();
    assert!(status.success());
    let last = stopping.join().unwrap();
    assert!(last.contains(&"STOPPING=1".to_string()), "{last:?}");
}

/// Without `NOTIFY_SOCKET` (not under systemd), nothing changes: the other tests run so.
/// The unit passes `systemd-analyze verify` where systemd-analyze exists.
#[test]
fn the_shipped_unit_verifies() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze not installed; skipped");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    // The unit as shipped, with ExecStart pointing at the binary just built.
    let unit = std::fs::read_to_string(repo().join("examples/replicate.service"))
        .unwrap()
        .replace("/usr/local/bin/replicate", env!("CARGO_BIN_EXE_replicate"));
    let path = dir.path().join("replicate.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Unknown or misspelt keys are reported as warnings without failing the command.
    assert!(
        !stderr.contains("Unknown key") && !stderr.contains("Unknown section"),
        "{stderr}"
    );
}

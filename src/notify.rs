//! systemd's service notifications (`sd_notify`), without libsystemd: under a unit with
//! `Type=notify`, systemd sets `NOTIFY_SOCKET` and reads `READY=1` once start-up is done
//! and `STOPPING=1` at shutdown; with `WatchdogSec=`, it sets `WATCHDOG_USEC` and restarts
//! the service unless `WATCHDOG=1` arrives at least that often. Without `NOTIFY_SOCKET`
//! (not under systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Send one state line to systemd, if it asked for them. Errors are logged, never fatal.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket.
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

/// How often to ping systemd's watchdog: half its timeout, if it set one for this process.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Ping the watchdog from the runtime for as long as it runs: a wedged runtime stops the
/// pings, and systemd restarts the service.
pub(crate) fn spawn_watchdog() {
    let Some(every) = watchdog_interval() else {
        return;
    };
    tracing::info!(every = ?every, "pinging systemd's watchdog");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            notify("WATCHDOG=1");
        }
    });
}

//! The fence: a consumer-group member that may have lost its partitions writes nothing.
//!
//! A member frozen (SIGSTOP, a VM paused, a machine starved) for longer than the group's
//! session timeout is removed by the broker and its partitions go to another member,
//! which brings the sink up to date. When the frozen member wakes, the writes it had in
//! flight would land after the other's and put older versions back. So a ticker thread
//! notes the time every [`TICK`]; a gap much longer than that means the whole process
//! stood still. From then on the fence is closed: every sink checks it right before the
//! write that commits a change ([`check`]), and a closed fence fails that write (the
//! event waits and is tried again, or is abandoned if its partition was taken away). It
//! reopens after a session timeout and two heartbeats, by which time librdkafka has
//! usually learnt from the broker whether the member was removed. What matters is that
//! the write under way when the process froze never lands: a retried event reads the
//! source again (see [`crate::replicate::converge`]), so whatever this member writes
//! after the fence reopens is what the source holds then, whoever owns the partition.
//!
//! Without a group (one process owns every partition) the fence is never armed.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the ticker notes the time.
const TICK: Duration = Duration::from_millis(100);

struct Fence {
    epoch: Instant,
    /// Milliseconds since `epoch` at the last tick.
    last_tick: AtomicU64,
    /// Closed until this many milliseconds since `epoch` (0: open).
    closed_until: AtomicU64,
    /// A gap this long means the process stood still.
    stall: Duration,
    /// How long the fence stays closed after a stall.
    hold: Duration,
    logged: AtomicBool,
}

static FENCE: OnceLock<Fence> = OnceLock::new();

/// Arm the fence for a consumer group with this session timeout (once per process).
pub(crate) fn arm(session_timeout: Duration, heartbeat: Duration) {
    let fence = FENCE.get_or_init(|| Fence {
        epoch: Instant::now(),
        last_tick: AtomicU64::new(0),
        closed_until: AtomicU64::new(0),
        // Well under the session timeout: by then the broker may be about to move the
        // partitions; a false alarm only delays writes for a moment.
        stall: (session_timeout / 3).max(Duration::from_secs(1)),
        hold: session_timeout + heartbeat * 2,
        logged: AtomicBool::new(false),
    });
    std::thread::Builder::new()
        .name("fence".into())
        .spawn(move || {
            loop {
                std::thread::sleep(TICK);
                fence.tick();
            }
        })
        .expect("spawn the fence ticker");
}

impl Fence {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn tick(&self) {
        let now = self.now();
        let last = self.last_tick.swap(now, Ordering::AcqRel);
        if Duration::from_millis(now.saturating_sub(last)) > self.stall {
            self.close(now, now - last);
        }
        let until = self.closed_until.load(Ordering::Acquire);
        if until != 0 && now >= until {
            self.closed_until.store(0, Ordering::Release);
            if self.logged.swap(false, Ordering::AcqRel) {
                tracing::info!(
                    "fence open again: events that waited read the source again before they write"
                );
            }
        }
    }

    fn close(&self, now: u64, stood_still_ms: u64) {
        self.closed_until
            .fetch_max(now + self.hold.as_millis() as u64, Ordering::AcqRel);
        if !self.logged.swap(true, Ordering::AcqRel) {
            tracing::warn!(stood_still = ?Duration::from_millis(stood_still_ms), hold = ?self.hold,
                "the process stood still; writing nothing until the group has settled whether this member still owns its partitions");
        }
    }

    fn open(&self) -> bool {
        let now = self.now();
        let last = self.last_tick.load(Ordering::Acquire);
        // The ticker has not run since a stall began (the process just woke, before it):
        // closed, without waiting for it.
        if Duration::from_millis(now.saturating_sub(last)) > self.stall {
            self.close(now, now - last);
            return false;
        }
        let until = self.closed_until.load(Ordering::Acquire);
        until == 0 || now >= until
    }
}

/// Whether writes may go ahead now (always, when the fence is not armed).
pub(crate) fn is_open() -> bool {
    FENCE.get().is_none_or(Fence::open)
}

/// The fence is closed: a write to `key` was refused.
#[derive(Debug)]
pub(crate) struct Fenced {
    pub key: String,
}

/// For a sink, right before the write that commits a change to `key`.
pub(crate) fn check(key: &str) -> Result<(), Fenced> {
    if is_open() {
        return Ok(());
    }
    Err(Fenced {
        key: key.to_string(),
    })
}

/// Wait until the fence is open.
pub(crate) async fn opened() {
    while !is_open() {
        tokio::time::sleep(TICK).await;
    }
}

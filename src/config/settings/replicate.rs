//! `[replicate]`: our own keys for the failure policies, concurrency and timeouts.

use super::*;

/// What happens to an event that cannot be replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailurePolicy {
    /// Write it to the parked-events file and move on (nothing is lost, nothing stalls).
    Park,
    /// Upstream's behaviour: keep processing, but never commit past the oldest
    /// failed offset, so a restart replays from it.
    Hold,
}

/// What happens to a message that is not an event (no key, too large, undecodable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadMessagePolicy {
    /// Count, log, park and acknowledge it: the pipeline keeps moving.
    Park,
    /// The input stops at it (nothing after it is processed or acknowledged).
    Stop,
}

/// What happens when the input can tell that it missed events: a Kafka offset out of
/// range (retention deleted unread messages, the topic was re-created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GapPolicy {
    /// Go on, and make the sink equal to the source again in the background: every
    /// source entry is replicated (what is already current is skipped cheaply) and what
    /// the sink holds that the source does not is removed.
    Reconcile,
    /// The input goes no further; `/readyz` says why. An operator decides.
    Stop,
    /// Go on as if nothing was missed (logged and counted all the same).
    Ignore,
}

/// `[replicate]`: our own settings (upstream has none of these).
#[derive(Debug, Clone)]
pub(crate) struct ReplicateSettings {
    /// What a gap in the input leads to.
    pub on_gap: GapPolicy,
    /// Events in flight per ordered stream (partition, queue, log).
    pub concurrency: usize,
    pub on_failure: FailurePolicy,
    pub bad_message: BadMessagePolicy,
    pub max_message_bytes: usize,
    pub parked_file: PathBuf,
    /// How long one event may keep failing with retryable errors before the failure policy applies.
    pub event_deadline: Duration,
    /// Chunks fetched ahead per file.
    pub prefetch_chunks: usize,
    /// How long a volume server may stay silent during a read before the next replica is tried.
    pub read_timeout: Duration,
    /// With several sinks: chunks read from the source are kept for the other sinks, up
    /// to this many bytes in all.
    pub shared_read_bytes: u64,
    /// With several sinks: events each sink's backlog may hold, waiting for it.
    pub backlog_events: u64,
    /// Chunk data read from the source and not yet written, in the whole process.
    pub memory_budget_bytes: u64,
}

pub(super) fn resolve_replicate(r: &mut Reader, cwd: &Path) -> ReplicateSettings {
    let on_failure = match r
        .string("replicate.on_failure", "park")
        .to_lowercase()
        .as_str()
    {
        "park" => FailurePolicy::Park,
        "hold" => FailurePolicy::Hold,
        other => {
            r.problem(
                "replicate.on_failure",
                format!("must be \"park\" or \"hold\", got {other:?}"),
            );
            FailurePolicy::Park
        }
    };
    let bad_message = match r
        .string("replicate.bad_message", "park")
        .to_lowercase()
        .as_str()
    {
        "park" => BadMessagePolicy::Park,
        "stop" => BadMessagePolicy::Stop,
        other => {
            r.problem(
                "replicate.bad_message",
                format!("must be \"park\" or \"stop\", got {other:?}"),
            );
            BadMessagePolicy::Park
        }
    };
    let on_gap = match r
        .string("replicate.on_gap", "reconcile")
        .to_lowercase()
        .as_str()
    {
        "reconcile" => GapPolicy::Reconcile,
        "stop" => GapPolicy::Stop,
        "ignore" => GapPolicy::Ignore,
        other => {
            r.problem(
                "replicate.on_gap",
                format!("must be \"reconcile\", \"stop\" or \"ignore\", got {other:?}"),
            );
            GapPolicy::Reconcile
        }
    };
    let concurrency = r.count("replicate.concurrency", 32);
    if concurrency == 0 || concurrency > 4096 {
        r.problem(
            "replicate.concurrency",
            format!("must be between 1 and 4096, got {concurrency}"),
        );
    }
    let max_message_bytes = r.count("replicate.max_message_bytes", 64 * 1024 * 1024);
    if max_message_bytes == 0 {
        r.problem("replicate.max_message_bytes", "must be at least 1");
    }
    let parked_file = cwd.join(r.string("replicate.parked_file", "./replicate.parked.jsonl"));
    let event_deadline = Duration::from_secs(r.count("replicate.event_deadline_seconds", 300));
    let prefetch_chunks = r.count("replicate.prefetch_chunks", 4);
    if prefetch_chunks == 0 || prefetch_chunks > 256 {
        r.problem(
            "replicate.prefetch_chunks",
            format!("must be between 1 and 256, got {prefetch_chunks}"),
        );
    }
    let read_timeout = r.count("replicate.read_timeout_seconds", 60);
    if read_timeout == 0 {
        r.problem("replicate.read_timeout_seconds", "must be at least 1");
    }
    let shared_mb = r.count("replicate.shared_read_cache_mb", 128);
    if shared_mb > 1024 * 1024 {
        r.problem(
            "replicate.shared_read_cache_mb",
            format!("{shared_mb} MiB is more than 1 TiB"),
        );
    }
    let budget_mb = r.count("replicate.memory_budget_mb", 16);
    if budget_mb == 0 || budget_mb > 1024 * 1024 {
        r.problem(
            "replicate.memory_budget_mb",
            format!("must be between 1 and 1048576 (1 TiB), got {budget_mb}"),
        );
    }
    let backlog_events = r.count("replicate.backlog_max_events", 10_000_000);
    if backlog_events == 0 {
        r.problem("replicate.backlog_max_events", "must be at least 1");
    }
    ReplicateSettings {
        shared_read_bytes: shared_mb.min(1024 * 1024) * 1024 * 1024,
        backlog_events: backlog_events.max(1),
        memory_budget_bytes: budget_mb.clamp(1, 1024 * 1024) * 1024 * 1024,
        on_gap,
        read_timeout: Duration::from_secs(read_timeout.max(1)),
        concurrency: concurrency.clamp(1, 4096) as usize,
        on_failure,
        bad_message,
        max_message_bytes: max_message_bytes as usize,
        parked_file,
        event_deadline,
        prefetch_chunks: prefetch_chunks.clamp(1, 256) as usize,
    }
}

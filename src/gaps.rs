//! Gaps: events the input can tell it has missed.
//!
//! A Kafka offset out of the topic's range (retention deleted messages before they were
//! replicated, or the topic was re-created and the offset file points past its end), or
//! a metadata-log checkpoint older than the oldest log the source filer keeps: the sink
//! cannot become equal to the source by going on. Each gap is logged at ERROR and
//! counted (`replicate_gaps_total{reason}`); then `[replicate] on_gap` decides:
//! reconcile (the default: go on, and make the sink equal to the source in the
//! background), stop (the input goes no further, `/readyz` says why) or ignore.

use crate::config::settings::GapPolicy;
use std::sync::{Mutex, OnceLock};
use tokio::sync::mpsc;

/// Why the input knows it missed events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The saved offset is past the end of the partition: the topic was re-created, or
    /// the broker lost its log.
    OffsetAheadOfTopic,
    /// The saved offset is before the oldest message kept: retention deleted messages
    /// that were never replicated.
    OffsetBeforeOldest,
    /// The metadata-log checkpoint is older than the oldest log file the filer keeps.
    CheckpointBeforeOldestLog,
    /// The metadata-log checkpoint is far ahead of the clock: no log reached it (a
    /// damaged or foreign KV value), so where the sink stands is unknown.
    CheckpointAheadOfClock,
    /// An earlier run found a gap and stopped before its reconciliation finished.
    Owed,
    /// One sink now, where several were fed: its backlog held events it never applied.
    BacklogLeft,
}

impl Reason {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::OffsetAheadOfTopic => "offset_ahead_of_topic",
            Reason::OffsetBeforeOldest => "offset_before_oldest",
            Reason::CheckpointBeforeOldestLog => "checkpoint_before_oldest_log",
            Reason::CheckpointAheadOfClock => "checkpoint_ahead_of_clock",
            Reason::Owed => "owed",
            Reason::BacklogLeft => "backlog_left",
        }
    }
}

/// What the input does after reporting a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    GoOn,
    /// `on_gap = "stop"`: consume nothing more.
    Stop,
}

struct Gaps {
    policy: GapPolicy,
    reconcile: Option<mpsc::UnboundedSender<Reason>>,
    /// Exists while a reconciliation is owed: written at a gap, removed when one has
    /// finished, so that a restart in between does not forget it.
    marker: Option<std::path::PathBuf>,
}

static GAPS: OnceLock<Mutex<Gaps>> = OnceLock::new();

fn gaps() -> &'static Mutex<Gaps> {
    GAPS.get_or_init(|| {
        Mutex::new(Gaps {
            policy: GapPolicy::Reconcile,
            reconcile: None,
            marker: None,
        })
    })
}

/// Set the policy. Under `reconcile`, the receiver gets one message per gap (and one at
/// once if `marker` says a reconciliation is still owed from an earlier run); the caller
/// runs the reconciliation (see [`crate::ops::reconcile`]) and then calls [`reconciled`].
pub(crate) fn init(
    policy: GapPolicy,
    marker: std::path::PathBuf,
) -> Option<mpsc::UnboundedReceiver<Reason>> {
    let mut g = gaps().lock().unwrap_or_else(|p| p.into_inner());
    g.policy = policy;
    if policy != GapPolicy::Reconcile {
        g.reconcile = None;
        return None;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    if marker.exists() {
        tracing::warn!(file = %marker.display(), "a reconciliation owed since an earlier run starts now");
        let _ = tx.send(Reason::Owed);
    }
    g.reconcile = Some(tx);
    g.marker = Some(marker);
    Some(rx)
}

/// A reconciliation finished: nothing is owed any more.
pub(crate) fn reconciled() {
    let g = gaps().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = &g.marker
        && let Err(e) = std::fs::remove_file(m)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %m.display(), error = %e, "cannot remove the reconciliation marker");
    }
}

/// An input found a gap: log it, count it, and say what to do.
pub(crate) fn report(reason: Reason, detail: &str) -> Then {
    crate::metrics::get().gap(reason.label());
    let g = gaps().lock().unwrap_or_else(|p| p.into_inner());
    match g.policy {
        GapPolicy::Reconcile => {
            if let Some(m) = &g.marker
                && let Err(e) = std::fs::write(m, format!("{}: {detail}\n", reason.label()))
            {
                tracing::warn!(file = %m.display(), error = %e, "cannot record that a reconciliation is owed");
            }
            let queued = g
                .reconcile
                .as_ref()
                .is_some_and(|tx| tx.send(reason).is_ok());
            tracing::error!(
                reason = reason.label(),
                "{detail}; events were missed, so the sink is reconciled with the source {}",
                if queued {
                    "in the background (on_gap = \"reconcile\")"
                } else {
                    "when `replicate verify -repair -delete` is run"
                }
            );
            Then::GoOn
        }
        GapPolicy::Stop => {
            tracing::error!(
                reason = reason.label(),
                "{detail}; events were missed and on_gap = \"stop\": this input goes no further until an operator acts (`replicate verify -repair -delete`, then a new offset or checkpoint)"
            );
            crate::metrics::get().halt(format!("stopped at a gap ({}): {detail}", reason.label()));
            Then::Stop
        }
        GapPolicy::Ignore => {
            tracing::error!(
                reason = reason.label(),
                "{detail}; events were missed, and on_gap = \"ignore\": going on"
            );
            Then::GoOn
        }
    }
}

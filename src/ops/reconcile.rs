//! Healing a gap in the running daemon (`[replicate] on_gap = "reconcile"`): make the
//! sink equal to the source again, through the live pipeline, while events go on.
//!
//! Every entry under the source directory goes through the pipeline as if it had just
//! been created, so a sink that already holds it skips it cheaply (a stat, a lookup:
//! no data is read), and every file the sink holds that the source does not is deleted.
//! Both run through the same convergence rules as live events, so a live event and the
//! reconciliation can never undo each other: each writes or removes only what the
//! source holds (or lacks) at that moment.

use super::{SourceTree, full_path};
use crate::event::RawEvent;
use crate::pipeline::{Disposition, Origin, Pipeline};
use crate::setup::Setup;
use futures::StreamExt;
use std::collections::HashSet;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What one reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Source entries replayed (most already current on the sink).
    pub entries: u64,
    /// Sink files the source did not have, deleted.
    pub deleted: u64,
    /// Entries that did not reach the sink (parked or held by the failure policy).
    pub failed: u64,
}

/// Why a reconciliation could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    #[error("opening the sink: {0}")]
    Sink(#[from] crate::setup::AppError),
    #[error("listing the source: {}", .0.message())]
    ListSource(tonic::Status),
    #[error("listing {sink}: {source}")]
    ListSink {
        sink: String,
        source: crate::sink::SinkError,
    },
}

fn origin(path: &str) -> Origin {
    Origin::Message {
        input: "reconcile",
        id: path.to_string(),
    }
}

/// How a reconciliation's events reach the sink: straight through its pipeline
/// ([`through`]), or into the lane its live events run in (several sinks), so that a
/// replay and a live event on related paths never run at once.
pub(crate) type Submit =
    Arc<dyn Fn(RawEvent, Origin) -> futures::future::BoxFuture<'static, Disposition> + Send + Sync>;

/// Events straight through `pipeline`.
pub(crate) fn through(pipeline: Arc<Pipeline>) -> Submit {
    Arc::new(move |event, origin| {
        let pipeline = pipeline.clone();
        Box::pin(async move { pipeline.handle(&event, &origin).await })
    })
}

/// Reconcile once; `Err` when the source or the sink cannot be listed.
pub(crate) async fn run(
    setup: &Setup,
    submit: Submit,
    stop: &CancellationToken,
) -> Result<Summary, ReconcileError> {
    let s = &setup.settings;
    let rules = setup.rules(Vec::new());
    let root = s.source.directory.trim_end_matches('/').to_string();
    let open = setup.sink().await?;
    let sink = open.sink.as_ref();
    let concurrency = s.replicate.concurrency;
    let mut summary = Summary::default();
    // The sink's name of every source file seen, to find the sink's extras after.
    let mut seen: HashSet<String> = HashSet::new();
    let excluded = |p: &[String]| rules.excluded(p);
    let mut tree = SourceTree::new(&setup.source, &s.source.directory, &excluded, true);
    while let Some(page) = tree.next(stop).await.map_err(ReconcileError::ListSource)? {
        let dir = page.dir;
        let mut replays = Vec::new();
        for entry in page.entries {
            if !entry.is_directory {
                seen.insert(super::verify::relative(
                    &root,
                    &full_path(&dir, &entry),
                    sink,
                ));
            }
            let event = RawEvent::created(&dir, &entry);
            let path = event.key.clone();
            replays.push(submit(event, origin(&path)));
        }
        let mut done = futures::stream::iter(replays).buffer_unordered(concurrency);
        while let Some(d) = done.next().await {
            summary.entries += 1;
            if d != Disposition::Done {
                summary.failed += 1;
            }
        }
    }
    if stop.is_cancelled() {
        return Ok(summary);
    }
    if rules.keep_deletes {
        tracing::info!(sink = %sink.describe(), "deletes = \"keep\": files the source no longer has stay on the sink");
        return Ok(summary);
    }
    let Some(inventory) = sink
        .inventory()
        .await
        .map_err(|source| ReconcileError::ListSink {
            sink: sink.describe(),
            source,
        })?
    else {
        tracing::warn!(sink = %sink.describe(), "this sink cannot list what it holds, so files the source no longer has stay on it");
        return Ok(summary);
    };
    let mut deletes = Vec::new();
    for (rel, _) in inventory {
        if seen.contains(&rel) {
            continue;
        }
        let path = format!("{root}/{rel}");
        if super::plain_path(&path).is_none_or(|parts| rules.excluded_entry(&parts, false)) {
            continue;
        }
        deletes.push(submit(RawEvent::deleted(&path), origin(&path)));
    }
    let mut done = futures::stream::iter(deletes).buffer_unordered(concurrency);
    while let Some(d) = done.next().await {
        if d == Disposition::Done {
            summary.deleted += 1;
        } else {
            summary.failed += 1;
        }
    }
    Ok(summary)
}

/// Run a reconciliation for each gap reported, one at a time (gaps reported while one
/// runs lead to one more run after it), until `stop`.
pub(crate) async fn serve(
    setup: Arc<Setup>,
    pipeline: Arc<Pipeline>,
    mut gaps: tokio::sync::mpsc::UnboundedReceiver<crate::gaps::Reason>,
    stop: CancellationToken,
) {
    loop {
        let reason = tokio::select! {
            _ = stop.cancelled() => return,
            r = gaps.recv() => match r { Some(r) => r, None => return },
        };
        while gaps.try_recv().is_ok() {}
        tracing::warn!(
            reason = reason.label(),
            "reconciling the sink with the source"
        );
        let started = std::time::Instant::now();
        match run(&setup, through(pipeline.clone()), &stop).await {
            Ok(s) if stop.is_cancelled() => {
                tracing::warn!(
                    entries = s.entries,
                    "reconciliation interrupted by shutdown; it runs again at the next gap"
                )
            }
            Ok(s) => {
                crate::gaps::reconciled();
                tracing::warn!(
                    entries = s.entries,
                    deleted = s.deleted,
                    failed = s.failed,
                    took = ?started.elapsed(),
                    "reconciliation finished"
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "reconciliation failed; run `replicate verify -repair -delete`")
            }
        }
    }
}

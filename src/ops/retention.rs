//! `retention_days` (upstream `filer.backup -retentionDays`): an incremental sink keeps
//! its dated copies (`YYYY-MM-DD/`, the local date of each entry's mtime) for that many
//! days. Older dated directories are removed at start and then daily, whole (a
//! prefix delete on an object store). Upstream deletes one date a day, the one exactly
//! N days back (and builds its path wrongly unless the sink directory is `/`); here
//! every dated directory older than the cut-off goes, so a process that was down for a
//! while catches up. Nothing but top-level `YYYY-MM-DD` directories is ever touched.

use crate::setup::Setup;
use chrono::NaiveDate;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Each sweep lists the whole sink: daily, as upstream, keeps that cheap.
const SWEEP_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The dated directories (first components of `files`, relative to the sink directory,
/// with something under them: a file named like a date is not one) strictly older than
/// `today - days`.
pub(crate) fn expired<'a>(
    files: impl IntoIterator<Item = &'a str>,
    today: NaiveDate,
    days: u32,
) -> BTreeSet<String> {
    let cutoff = today - chrono::Days::new(u64::from(days));
    files
        .into_iter()
        .filter_map(|rel| rel.split_once('/').map(|(top, _)| top))
        .filter(|d| d.len() == 10)
        .filter(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok_and(|date| date < cutoff))
        .map(str::to_string)
        .collect()
}

/// Remove the dated directories older than `days`; how many went.
pub(crate) async fn sweep(setup: &Setup, days: u32) -> Result<usize, String> {
    let open = setup.sink().await.map_err(|e| e.to_string())?;
    let sink = open.sink.as_ref();
    let Some(inventory) = sink
        .inventory()
        .await
        .map_err(|e| format!("listing {}: {e}", sink.describe()))?
    else {
        return Err(format!("{} cannot list what it holds", sink.describe()));
    };
    let today = chrono::Local::now().date_naive();
    let dates = expired(inventory.iter().map(|(rel, _)| rel.as_str()), today, days);
    let rules = setup.rules(Vec::new());
    for date in &dates {
        let key = rules.dated_root(date);
        sink.delete_entry(&key, true, true, &[])
            .await
            .map_err(|e| format!("removing {}: {e}", key.full))?;
        tracing::info!(directory = %key.full, days, "retention: removed a dated copy older than retention_days");
    }
    Ok(dates.len())
}

/// Sweep at start and then daily until `stop`; a failure is logged when it begins and
/// when it ends, and tried again at the next sweep.
pub(crate) async fn serve(setup: Arc<Setup>, days: u32, stop: CancellationToken) {
    let mut failing = false;
    loop {
        match sweep(&setup, days).await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("retention: sweeping works again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "retention: sweeping dated copies failed; trying again tomorrow");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dated_directories_older_than_the_cutoff_expire() {
        let today = NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
        let files = [
            "2026-03-10/a",
            "2026-02-08/b",   // 30 days back: the cut-off itself stays
            "2026-02-07/c/d", // 31 days back: goes
            "2025-12-31/e",
            "2025-12-31/f",
            "2026-02-30/g",       // not a date
            "notes/2020-01-01/h", // not at the top
            "2025-01-01",         // a file, not a directory
            "2020-01-01x/i",
            "2020-1-01/j",
            "k",
        ];
        let got = expired(files, today, 30);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            ["2025-12-31", "2026-02-07"]
        );
        assert!(expired(files, today, 36_500).is_empty());
    }
}

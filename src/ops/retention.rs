//! `retention_days` (upstream `filer.backup -retentionDays`): an incremental sink keeps
//! its dated copies (`YYYY-MM-DD/`, the local date of each entry's mtime) for that many
//! days. Older dated directories are removed at start and then daily, whole (a
//! prefix delete on an object store). Upstream deletes one date a day, the one exactly
//! N days back (and builds its path wrongly unless the sink directory is `/`); here
//! every dated directory older than the cut-off goes, so a process that was down for a
//! while catches up. Nothing but top-level `YYYY-MM-DD` directories is ever touched.
//! The trash of `deletes = "trash"` is swept the same way, by the day of each delete:
//! `<trash_directory>/YYYY-MM-DD` older than `trash_retention_days` goes.

use crate::setup::Setup;
use crate::sink::SinkKey;
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

/// What a sweep removes: the dated copies of an incremental sink (`retention_days`), or
/// the dated directories of the trash (`deletes = "trash"`, `trash_retention_days`).
#[derive(Debug, Clone)]
pub(crate) enum Dated {
    Copies { days: u32 },
    Trash { directory: String, days: u32 },
}

impl Dated {
    fn days(&self) -> u32 {
        match self {
            Dated::Copies { days } | Dated::Trash { days, .. } => *days,
        }
    }
    /// The directory (under the sink's) the dates are in; `None`: the sink's own.
    fn under(&self) -> Option<&str> {
        match self {
            Dated::Copies { .. } => None,
            Dated::Trash { directory, .. } => Some(directory),
        }
    }
    fn what(&self) -> &'static str {
        match self {
            Dated::Copies { .. } => "a dated copy older than retention_days",
            Dated::Trash { .. } => "a day of the trash older than trash_retention_days",
        }
    }
}

/// Remove the dated directories older than their days; how many went.
async fn sweep(setup: &Setup, dated: &Dated) -> Result<usize, String> {
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
    let prefix = dated.under().map(|d| format!("{d}/"));
    let files = inventory.iter().filter_map(|(rel, _)| match &prefix {
        None => Some(rel.as_str()),
        Some(p) => rel.strip_prefix(p.as_str()),
    });
    let dates = expired(files, today, dated.days());
    let rules = setup.rules(Vec::new());
    for date in &dates {
        let mut rel: Vec<String> = dated.under().map(String::from).into_iter().collect();
        rel.push(date.clone());
        let key = SinkKey::new(&rules.sink_dir, rel);
        sink.delete_entry(&key, true, true, &[])
            .await
            .map_err(|e| format!("removing {}: {e}", key.full))?;
        tracing::info!(directory = %key.full, days = dated.days(), "retention: removed {}", dated.what());
    }
    Ok(dates.len())
}

/// Sweep at start and then daily until `stop`; a failure is logged when it begins and
/// when it ends, and tried again at the next sweep.
pub(crate) async fn serve(setup: Arc<Setup>, dated: Dated, stop: CancellationToken) {
    let mut health = crate::retry::Health::default();
    loop {
        match sweep(&setup, &dated).await {
            Ok(_) => {
                if health.worked().is_some() {
                    tracing::info!("retention: sweeping works again");
                }
            }
            Err(e) => {
                if health.failed() {
                    tracing::warn!(error = %e, "retention: sweeping failed; trying again tomorrow");
                }
            }
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

//! `[metrics]`: the listener and the progress line.

use super::*;

/// `[metrics]`: the metrics listener and the progress line (ours; upstream has neither).
#[derive(Debug, Clone)]
pub(crate) struct MetricsSettings {
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`host:port` or `:port`).
    pub address: Option<String>,
    /// How often the progress line is logged; `None` for never.
    pub progress_interval: Option<Duration>,
    /// `/readyz` fails while the oldest unfinished event has waited longer than this.
    pub ready_max_event_age: Option<Duration>,
}

/// A listen address that is not `host:port` or `:port`.
#[derive(Debug, thiserror::Error)]
#[error("{address:?} {why}")]
pub(crate) struct BadListenAddress {
    pub address: String,
    pub why: &'static str,
}

/// Check a listen address: `host:port` or Go-style `:port`.
pub(crate) fn check_listen_address(address: &str) -> Result<(), BadListenAddress> {
    let bad = |why| BadListenAddress {
        address: address.to_string(),
        why,
    };
    let (_, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("is not host:port or :port"))?;
    match port.parse::<u16>() {
        Ok(_) => Ok(()),
        Err(_) => Err(bad("has no valid port (host:port or :port)")),
    }
}

pub(super) fn resolve_metrics(r: &mut Reader) -> MetricsSettings {
    let address = r.string("metrics.address", "");
    if !address.is_empty()
        && let Err(e) = check_listen_address(&address)
    {
        r.problem("metrics.address", e.to_string());
    }
    let progress = r.count("metrics.progress_interval_seconds", 60);
    let max_age = r.count("metrics.ready_max_event_age_seconds", 900);
    MetricsSettings {
        address: (!address.is_empty()).then_some(address),
        progress_interval: (progress > 0).then(|| Duration::from_secs(progress)),
        ready_max_event_age: (max_age > 0).then(|| Duration::from_secs(max_age)),
    }
}

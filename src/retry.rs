//! Retrying something that fails (a filer, a queue, a store): capped exponential backoff
//! with jitter, and logs that follow its state — one line when it starts failing and one
//! when it works again — instead of one line per attempt.

use std::fmt::Display;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A [`Retry`]'s first wait, and the cap.
const FIRST: Duration = Duration::from_secs(1);
const CAP: Duration = Duration::from_secs(30);

/// `wait` jittered to between half and all of it, so that many clients (or events)
/// failing together do not retry in step.
fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Waits that double from `first` up to `cap`, each jittered to between half and all
/// of its nominal length.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    cap: Duration,
    nominal: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap,
            nominal: first,
        }
    }

    /// The next wait; the one after it is twice as long, up to the cap.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = jittered(self.nominal);
        self.nominal = (self.nominal * 2).min(self.cap);
        wait
    }

    /// Start over from the first wait.
    pub(crate) fn reset(&mut self) {
        self.nominal = self.first;
    }
}

/// Whether something tried again and again is failing, so that its loop logs one line
/// when it starts failing and one when it works again, whatever its cadence. [`Retry`]
/// adds backoff and the logging to it.
#[derive(Debug, Default)]
pub(crate) struct Health {
    down_since: Option<Instant>,
}

impl Health {
    /// An attempt failed: true if that is news (the first failure since it worked).
    pub(crate) fn failed(&mut self) -> bool {
        let news = self.down_since.is_none();
        self.down_since.get_or_insert_with(Instant::now);
        news
    }

    /// An attempt worked: how long it had been failing, if it was (then that is news).
    pub(crate) fn worked(&mut self) -> Option<Duration> {
        self.down_since.take().map(|since| since.elapsed())
    }

    pub(crate) fn is_failing(&self) -> bool {
        self.down_since.is_some()
    }
}

/// The state of one retried dependency.
#[derive(Debug)]
pub(crate) struct Retry {
    backoff: Backoff,
    health: Health,
    /// What has been failing, as first logged.
    what: String,
    /// The component whose reachability this retry reports (the `replicate_up` metric
    /// and `/readyz`).
    reports: Option<crate::metrics::Component>,
    /// A start-up check (see [`Retry::for_start_up`]): the last reason logged, since each
    /// new reason is news there.
    reason: Option<String>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            backoff: Backoff::new(FIRST, CAP),
            health: Health::default(),
            what: String::new(),
            reports: None,
            reason: None,
        }
    }
}

impl Retry {
    /// A retry whose failures and successes mark the input down and up.
    pub(crate) fn for_input() -> Self {
        Retry {
            reports: Some(crate::metrics::Component::Input),
            ..Retry::default()
        }
    }

    /// A check made before anything runs (a sink, a queue): backing off up to a minute,
    /// and logged as an error again whenever the reason changes, since fixing one
    /// configuration problem often shows the next.
    pub(crate) fn for_start_up() -> Self {
        Retry {
            backoff: Backoff::new(FIRST, Duration::from_secs(60)),
            reason: Some(String::new()),
            ..Retry::default()
        }
    }

    /// A failed attempt: logged as a warning if it is the first since the last success
    /// (a start-up check: as an error, and again whenever the reason changes), at debug
    /// level otherwise. Returns how long to wait before the next attempt.
    pub(crate) fn failed(&mut self, what: &str, error: &dyn Display) -> Duration {
        let wait = self.backoff.next_wait();
        if let Some(c) = self.reports {
            crate::metrics::get().set_up(c, false);
        }
        let news = match &mut self.reason {
            Some(last) => {
                let why = error.to_string();
                let new = *last != why;
                *last = why;
                new
            }
            None => !self.health.is_failing(),
        };
        if !news {
            tracing::debug!(error = %error, retry_in = ?wait, "{what}; still retrying");
            return wait;
        }
        if self.reason.is_some() {
            tracing::error!(error = %error, "{what}; retrying with backoff until it works");
        } else {
            tracing::warn!(error = %error, "{what}; retrying with backoff until it works");
        }
        if self.health.failed() {
            self.what = what.to_string();
        }
        wait
    }

    /// [`Retry::failed`], then the wait; false if `stop` fired meanwhile. The returned
    /// future holds neither `what` nor `error`, so it is `Send` whatever the error is.
    pub(crate) fn wait<'a>(
        &mut self,
        what: &str,
        error: &dyn Display,
        stop: &'a CancellationToken,
    ) -> impl std::future::Future<Output = bool> + Send + 'a {
        let wait = self.failed(what, error);
        async move {
            tokio::select! {
                _ = stop.cancelled() => false,
                _ = tokio::time::sleep(wait) => true,
            }
        }
    }

    /// A successful attempt: logs the recovery, if there was a failure, and starts the
    /// backoff over.
    pub(crate) fn succeeded(&mut self) {
        self.backoff.reset();
        if let Some(last) = &mut self.reason {
            last.clear();
        }
        if let Some(c) = self.reports {
            crate::metrics::get().set_up(c, true);
        }
        if let Some(down_for) = self.health.worked() {
            tracing::info!(?down_for, "working again after: {}", self.what);
        }
    }

    #[cfg(test)]
    pub(crate) fn is_failing(&self) -> bool {
        self.health.is_failing()
    }
}

/// The longest one attempt of a remote call may take, however busy: a request whose
/// peer stalls while it is still sending (a large upload to a frozen server, which no
/// read timeout sees) fails after this and is retried like any outage. Generous, as a
/// part of a large file on a slow link may take minutes.
pub(crate) fn attempt_limit(stall: std::time::Duration) -> std::time::Duration {
    (stall * 5).max(std::time::Duration::from_secs(300))
}

/// Run `check` until it succeeds, logging why it fails (with `what` it checks) as a
/// [`Retry::for_start_up`] does; its value, or `None` if `stop` fires first.
pub(crate) async fn wait_until_healthy<T, E, F, Fut>(
    what: &str,
    stop: &tokio_util::sync::CancellationToken,
    mut check: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Display,
{
    let mut retry = Retry::for_start_up();
    let what = format!("{what} cannot be reached with this configuration");
    loop {
        match check().await {
            Ok(value) => {
                retry.succeeded();
                return Some(value);
            }
            Err(why) => {
                if !retry.wait(&what, &why, stop).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_up_check_logs_each_new_reason_and_recovers() {
        let mut r = Retry::for_start_up();
        r.failed("sink", &"wrong key");
        assert!(r.is_failing());
        assert_eq!(r.reason.as_deref(), Some("wrong key"));
        r.failed("sink", &"wrong key");
        r.failed("sink", &"no such bucket");
        assert_eq!(
            r.reason.as_deref(),
            Some("no such bucket"),
            "a new reason is news"
        );
        r.succeeded();
        assert!(!r.is_failing());
        assert_eq!(
            r.reason.as_deref(),
            Some(""),
            "after a success any failure is news"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_restarts_on_success() {
        let mut r = Retry::default();
        let mut nominal = FIRST;
        for _ in 0..10 {
            let w = r.failed("x", &"e");
            assert!(w >= nominal / 2 && w <= nominal, "{w:?} for {nominal:?}");
            nominal = (nominal * 2).min(CAP);
        }
        assert!(r.is_failing());
        r.succeeded();
        assert!(!r.is_failing());
        assert!(r.failed("x", &"e") <= FIRST);
    }
}

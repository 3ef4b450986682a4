//! Deadlines that cannot overflow.
//!
//! `Instant + Duration` panics when the sum leaves the clock's range, and
//! both numbers may come from outside: a caller's timeout
//! (`Duration::MAX` for "forever"), a server's `MOVING` time. Every
//! deadline in the crate is computed with [`after`], which saturates, and
//! every timeout a caller configures is clamped to [`MAX_TIMEOUT`].

use std::time::Duration;

/// The longest timeout the crate keeps: 365 days.
///
/// Every duration a caller configures is clamped to it: a request's
/// timeout ([`Request::with_timeout`](crate::Request::with_timeout)), the
/// [`ClientBuilder`](crate::ClientBuilder)'s command timeout, the
/// [`RelaxTimeoutLayer`](crate::relax::RelaxTimeoutLayer)'s default, the
/// durations of a [`MaintenanceConfig`](crate::maint::MaintenanceConfig)
/// (when it is validated), the [`Connector`](crate::Connector)'s connect
/// timeout, the retry backoff, the cluster's refresh interval and cooldown,
/// and pub/sub's timeout. So `Duration::MAX` may be used to mean "no
/// practical limit" and never overflows a deadline. (For no timeout at all,
/// [`Request::without_timeout`](crate::Request::without_timeout) or
/// `command_timeout(None)` say so directly.)
///
/// ```
/// use std::time::Duration;
/// use redis_layers::{cmd, CommandTimeout, Request, MAX_TIMEOUT};
///
/// assert_eq!(MAX_TIMEOUT, Duration::from_secs(365 * 24 * 3600));
/// let r = Request::from(cmd("GET").arg("k")).with_timeout(Duration::MAX);
/// assert_eq!(r.timeout(), CommandTimeout::After(MAX_TIMEOUT));
/// ```
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// `d` clamped to [`MAX_TIMEOUT`].
pub(crate) fn clamp(d: Duration) -> Duration {
    d.min(MAX_TIMEOUT)
}

/// An instant of either clock the crate uses (std's and tokio's).
pub(crate) trait Clock: Copy {
    fn checked_add(self, d: Duration) -> Option<Self>;
}

impl Clock for std::time::Instant {
    fn checked_add(self, d: Duration) -> Option<Self> {
        std::time::Instant::checked_add(&self, d)
    }
}

impl Clock for tokio::time::Instant {
    fn checked_add(self, d: Duration) -> Option<Self> {
        tokio::time::Instant::checked_add(&self, d)
    }
}

/// `now + d`, saturating: a `d` beyond [`MAX_TIMEOUT`] counts as
/// `MAX_TIMEOUT` (a deadline a year away never comes in practice, and
/// keeps clear of the clock's end and of timer-wheel limits).
pub(crate) fn after<I: Clock>(now: I, d: Duration) -> I {
    now.checked_add(clamp(d))
        // Only a clock within a year of its own end gets here.
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_saturates() {
        let now = std::time::Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(after(now, Duration::MAX), now + MAX_TIMEOUT);
        let now = tokio::time::Instant::now();
        assert_eq!(after(now, Duration::MAX), now + MAX_TIMEOUT);
        assert_eq!(clamp(Duration::MAX), MAX_TIMEOUT);
        assert_eq!(clamp(Duration::ZERO), Duration::ZERO);
    }

    proptest::proptest! {
        /// Any duration: no panic, never earlier than now, never more than
        /// `MAX_TIMEOUT` later, exact below it.
        #[test]
        fn after_never_panics(secs in proptest::prelude::any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            let now = std::time::Instant::now();
            let at = after(now, d);
            proptest::prop_assert!(at >= now && at <= now + MAX_TIMEOUT);
            if d <= MAX_TIMEOUT {
                proptest::prop_assert_eq!(at, now + d);
            }
        }
    }
}

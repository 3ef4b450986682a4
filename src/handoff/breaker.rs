//! The per-endpoint circuit breaker of spec section 3: after
//! `failure_threshold` failed dials in a row an endpoint is not dialled for
//! `reset_timeout`; then `max_requests` trial dials may go through, and when
//! that many succeed it is closed again (one failure opens it anew).

use std::time::Duration;

use tokio::time::Instant;

use crate::maint::BreakerState;

#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerConfig {
    pub(crate) failure_threshold: u32,
    pub(crate) reset_timeout: Duration,
    pub(crate) max_requests: u32,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    state: BreakerState,
    /// Failures in a row while closed.
    failures: u32,
    /// While half-open: trial dials let through, and how many succeeded.
    trials: u32,
    successes: u32,
    opened_at: Instant,
}

impl Breaker {
    pub(crate) fn new() -> Self {
        Breaker {
            state: BreakerState::Closed,
            failures: 0,
            trials: 0,
            successes: 0,
            opened_at: Instant::now(),
        }
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    /// May a dial go out now? Returns the state change it caused, if any
    /// (open -> half-open once the reset timeout has passed).
    pub(crate) fn allow(
        &mut self,
        cfg: &BreakerConfig,
        now: Instant,
    ) -> (bool, Option<BreakerState>) {
        let mut changed = None;
        if self.state == BreakerState::Open
            && now.saturating_duration_since(self.opened_at) >= cfg.reset_timeout
        {
            self.state = BreakerState::HalfOpen;
            self.trials = 0;
            self.successes = 0;
            changed = Some(BreakerState::HalfOpen);
        }
        let allowed = match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if self.trials < cfg.max_requests => {
                self.trials += 1;
                true
            }
            BreakerState::HalfOpen => false,
        };
        (allowed, changed)
    }

    pub(crate) fn success(&mut self, cfg: &BreakerConfig) -> Option<BreakerState> {
        match self.state {
            BreakerState::Closed => {
                self.failures = 0;
                None
            }
            BreakerState::HalfOpen => {
                self.successes += 1;
                (self.successes >= cfg.max_requests).then(|| {
                    self.state = BreakerState::Closed;
                    self.failures = 0;
                    BreakerState::Closed
                })
            }
            // A dial let through before the breaker opened.
            BreakerState::Open => None,
        }
    }

    pub(crate) fn failure(&mut self, cfg: &BreakerConfig, now: Instant) -> Option<BreakerState> {
        let open = match self.state {
            BreakerState::Closed => {
                self.failures += 1;
                self.failures >= cfg.failure_threshold
            }
            BreakerState::HalfOpen => true,
            BreakerState::Open => false,
        };
        open.then(|| {
            self.state = BreakerState::Open;
            self.opened_at = now;
            BreakerState::Open
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_open_half_open_closed() {
        let cfg = BreakerConfig {
            failure_threshold: 3,
            reset_timeout: Duration::from_secs(60),
            max_requests: 2,
        };
        let t0 = Instant::now();
        let mut b = Breaker::new();
        assert_eq!(b.failure(&cfg, t0), None);
        assert_eq!(b.failure(&cfg, t0), None);
        assert_eq!(b.success(&cfg), None); // resets the count
        assert_eq!(b.failure(&cfg, t0), None);
        assert_eq!(b.failure(&cfg, t0), None);
        assert_eq!(b.failure(&cfg, t0), Some(BreakerState::Open));
        assert_eq!(b.allow(&cfg, t0 + Duration::from_secs(59)), (false, None));
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(b.allow(&cfg, t1), (true, Some(BreakerState::HalfOpen)));
        assert_eq!(b.allow(&cfg, t1), (true, None));
        assert_eq!(b.allow(&cfg, t1), (false, None)); // max_requests trials
        assert_eq!(b.success(&cfg), None);
        assert_eq!(b.success(&cfg), Some(BreakerState::Closed));
        assert_eq!(b.allow(&cfg, t1), (true, None));
    }

    #[test]
    fn a_failed_trial_opens_again() {
        let cfg = BreakerConfig {
            failure_threshold: 1,
            reset_timeout: Duration::from_secs(1),
            max_requests: 1,
        };
        let t0 = Instant::now();
        let mut b = Breaker::new();
        assert_eq!(b.failure(&cfg, t0), Some(BreakerState::Open));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.allow(&cfg, t1), (true, Some(BreakerState::HalfOpen)));
        assert_eq!(b.failure(&cfg, t1), Some(BreakerState::Open));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(&cfg, t1), (false, None));
    }
}

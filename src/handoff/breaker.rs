//! The per-endpoint circuit breaker of the [maintenance contract](crate::docs::maintenance), section 3: after
//! `failure_threshold` failed dials in a row an endpoint is not dialled for
//! `reset_timeout`; then `max_requests` trial dials may go through, and when
//! that many succeed it is closed again (one failure opens it anew).
//!
//! [`Breakers`] keeps one per target endpoint. Targets come from the
//! server (`MOVING`), so the map must not grow with every new one: closed
//! breakers idle for a reset timeout are forgotten (a new one is closed
//! too), and past [`Breakers::MAX`] the least recently used go.

use std::collections::HashMap;
use std::hash::Hash;
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
    /// Last asked or told of a dial.
    used_at: Instant,
}

impl Breaker {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Breaker {
            state: BreakerState::Closed,
            failures: 0,
            trials: 0,
            successes: 0,
            opened_at: now,
            used_at: now,
        }
    }

    /// Closed and unused for a reset timeout: forgetting it changes
    /// nothing but a count of failures that old.
    fn is_idle(&self, cfg: &BreakerConfig, now: Instant) -> bool {
        self.state == BreakerState::Closed
            && now.saturating_duration_since(self.used_at) >= cfg.reset_timeout
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
        self.used_at = self.used_at.max(now);
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

    pub(crate) fn success(&mut self, cfg: &BreakerConfig, now: Instant) -> Option<BreakerState> {
        self.used_at = self.used_at.max(now);
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
        self.used_at = self.used_at.max(now);
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

/// The breakers of every target endpoint, bounded; see the module docs.
#[derive(Debug)]
pub(crate) struct Breakers<K> {
    map: HashMap<K, Breaker>,
    /// Sweep before adding a breaker at this size.
    sweep_at: usize,
}

/// The size below which no sweep happens.
const MIN_SWEEP: usize = 64;

impl<K: Hash + Eq + Clone> Breakers<K> {
    /// At most this many breakers are kept. A handoff dials a handful of
    /// targets; only a server naming endless new ones reaches it.
    pub(crate) const MAX: usize = 1024;

    pub(crate) fn new() -> Self {
        Breakers {
            map: HashMap::new(),
            sweep_at: MIN_SWEEP,
        }
    }

    /// The breaker of `key`, made (closed) if there is none.
    pub(crate) fn get(&mut self, key: &K, cfg: &BreakerConfig, now: Instant) -> &mut Breaker {
        if !self.map.contains_key(key) && self.map.len() >= self.sweep_at {
            self.sweep(cfg, now);
        }
        self.map.entry(key.clone()).or_insert_with(|| Breaker {
            used_at: now,
            ..Breaker::new()
        })
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Forgets idle breakers, then the least recently used down to half
    /// of [`MAX`](Self::MAX) if still at it (an open one among them lets
    /// its target be dialled again: the price of a bound); amortised O(1)
    /// per new breaker, as the next sweep waits for the map to double.
    fn sweep(&mut self, cfg: &BreakerConfig, now: Instant) {
        self.map.retain(|_, b| !b.is_idle(cfg, now));
        if self.map.len() >= Self::MAX {
            let mut used: Vec<Instant> = self.map.values().map(|b| b.used_at).collect();
            let keep = Self::MAX / 2;
            let drop = used.len() - keep;
            let (_, cutoff, _) = used.select_nth_unstable(drop);
            let cutoff = *cutoff;
            self.map.retain(|_, b| b.used_at >= cutoff);
            // Ties at the cutoff may leave a few more than `keep`.
            if self.map.len() >= Self::MAX {
                let extra: Vec<K> = self
                    .map
                    .keys()
                    .take(self.map.len() - keep)
                    .cloned()
                    .collect();
                for k in extra {
                    self.map.remove(&k);
                }
            }
        }
        self.sweep_at = (self.map.len() * 2).clamp(MIN_SWEEP, Self::MAX);
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
        assert_eq!(b.success(&cfg, t0), None); // resets the count
        assert_eq!(b.failure(&cfg, t0), None);
        assert_eq!(b.failure(&cfg, t0), None);
        assert_eq!(b.failure(&cfg, t0), Some(BreakerState::Open));
        assert_eq!(b.allow(&cfg, t0 + Duration::from_secs(59)), (false, None));
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(b.allow(&cfg, t1), (true, Some(BreakerState::HalfOpen)));
        assert_eq!(b.allow(&cfg, t1), (true, None));
        assert_eq!(b.allow(&cfg, t1), (false, None)); // max_requests trials
        assert_eq!(b.success(&cfg, t1), None);
        assert_eq!(b.success(&cfg, t1), Some(BreakerState::Closed));
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

    #[test]
    fn ten_thousand_targets_do_not_leave_ten_thousand_breakers() {
        let cfg = BreakerConfig {
            failure_threshold: 5,
            reset_timeout: Duration::from_secs(60),
            max_requests: 1,
        };
        let t0 = Instant::now();
        // All at once: nothing is idle yet, the cap holds.
        let mut bs = Breakers::new();
        for port in 0..10_000u32 {
            bs.get(&port, &cfg, t0).allow(&cfg, t0);
            assert!(bs.len() <= Breakers::<u32>::MAX);
        }
        // One a second: those idle for the reset timeout go.
        let mut bs = Breakers::new();
        let mut max_len = 0;
        for port in 0..10_000u32 {
            let now = t0 + Duration::from_secs(port.into());
            bs.get(&port, &cfg, now).allow(&cfg, now);
            max_len = max_len.max(bs.len());
        }
        assert!(max_len <= 2 * 60 + MIN_SWEEP, "{max_len}");
    }

    #[test]
    fn an_open_breaker_is_kept_while_idle_ones_go() {
        let cfg = BreakerConfig {
            failure_threshold: 1,
            reset_timeout: Duration::from_secs(10),
            max_requests: 1,
        };
        let t0 = Instant::now();
        let mut bs = Breakers::new();
        assert_eq!(
            bs.get(&u32::MAX, &cfg, t0).failure(&cfg, t0),
            Some(BreakerState::Open)
        );
        let later = t0 + Duration::from_secs(3600);
        for port in 0..1000u32 {
            bs.get(&port, &cfg, later).allow(&cfg, later);
        }
        // Still open: its trial dial is due, so it goes half-open.
        let (allowed, changed) = bs.get(&u32::MAX, &cfg, later).allow(&cfg, later);
        assert!(allowed);
        assert_eq!(changed, Some(BreakerState::HalfOpen));
    }
}

//! [`RetryBudget`]: the default budget, with a deposit that costs one
//! uncontended atomic add.
//!
//! Why not tower's `TpsBudget`: it takes a lock and reads the clock on every
//! deposit, and a deposit happens on every request, from every thread. Here
//! a deposit is
//! one atomic add; every 64th deposit (and every withdrawal)
//! also looks at the clock and, when a window has passed, moves the new
//! tokens into the ring of windows. Tokens deposited since the last look
//! count from that look (with a request rate above 64 per window the
//! difference is a fraction of one window), and are dropped when a whole
//! time to live passed without a look: after a long quiet spell the budget
//! starts from its floor.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::budget::Budget;

use crate::error::{Error, Result};

/// How many windows the time to live is cut into.
const WINDOWS: usize = 10;

/// A thread looks at the clock on every this many of its deposits.
const LOOK_EVERY: u32 = 64;

/// Retries allowed as a share of recent requests, plus a floor per second:
/// the default budget of [`RedisPolicy`](super::RedisPolicy).
///
/// `RetryBudget::new(ttl, min_per_sec, ratio)` allows, over any `ttl`, up to
/// `ratio` retries per request made in that time, plus `min_per_sec` retries
/// per second (so a quiet service can still retry). The default is
/// `new(10 s, 10, 0.2)`: 20% of the last 10 s of requests, plus 10 per
/// second, the same as tower's `TpsBudget::default()`. Shared by every
/// clone of the policy; approximate under contention (two retries taken at
/// once may both see the last token).
///
/// ```
/// use std::time::Duration;
/// use redis_layers::retry::{Budget, RetryBudget};
///
/// let b = RetryBudget::new(Duration::from_secs(10), 0, 0.5).unwrap();
/// for _ in 0..4 {
///     b.deposit();
/// }
/// assert!(b.withdraw() && b.withdraw());
/// assert!(!b.withdraw(), "half of 4 requests");
/// assert!(RetryBudget::new(Duration::ZERO, 1, 0.2).is_err());
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    /// Tokens since the clock was last looked at (withdrawals make it
    /// negative).
    fresh: AtomicI64,
    /// Tokens of the last `WINDOWS` windows.
    ring: [AtomicI64; WINDOWS],
    /// The start of the current window and its index in `ring`.
    clock: Mutex<(Instant, usize)>,
    window: Duration,
    per_request: i64,
    per_retry: i64,
    floor: i64,
}

impl RetryBudget {
    /// A budget of `ratio` retries per request over the last `ttl`, plus
    /// `min_per_sec` retries per second.
    ///
    /// Errors: [`Error::Config`] for a `ttl` outside 1 s to 60 s, or a
    /// `ratio` that is negative, not a number, or above 1000.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f64) -> Result<Self> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
            return Err(Error::config(format!(
                "retry budget ttl must be 1 s to 60 s, got {ttl:?}"
            )));
        }
        if !(0.0..=1000.0).contains(&ratio) {
            return Err(Error::config(format!(
                "retry budget ratio must be 0 to 1000, got {ratio}"
            )));
        }
        // Whole tokens: a request earns 1000, a retry costs 1000 / ratio
        // (with no ratio, requests earn nothing and the floor pays).
        let (per_request, per_retry) = if ratio == 0.0 {
            (0, 1)
        } else {
            (1000, ((1000.0 / ratio).round() as i64).max(1))
        };
        let floor = i64::from(min_per_sec)
            .saturating_mul(ttl.as_secs() as i64)
            .saturating_mul(per_retry);
        Ok(RetryBudget {
            fresh: AtomicI64::new(0),
            ring: Default::default(),
            clock: Mutex::new((Instant::now(), 0)),
            window: ttl / WINDOWS as u32,
            per_request,
            per_retry,
            floor,
        })
    }

    /// Moves the fresh tokens into the ring if a window has passed,
    /// clearing the windows that have expired since.
    fn turn(&self, clock: &mut (Instant, usize)) {
        let now = Instant::now();
        let passed = now.saturating_duration_since(clock.0);
        if passed < self.window {
            return;
        }
        let windows = (passed.as_nanos() / self.window.as_nanos().max(1)) as usize;
        let mut at = clock.1;
        for _ in 0..windows.min(WINDOWS) {
            at = (at + 1) % WINDOWS;
            self.ring[at].store(0, Ordering::Relaxed);
        }
        let fresh = self.fresh.swap(0, Ordering::AcqRel);
        // After a whole ttl without a look, the fresh tokens may be that
        // old: drop them (a budget errs on the side of fewer retries).
        if windows < WINDOWS {
            self.ring[at].fetch_add(fresh, Ordering::AcqRel);
        }
        let windows = u32::try_from(windows).unwrap_or(u32::MAX);
        *clock = match self.window.checked_mul(windows) {
            Some(d) => (crate::time::after(clock.0, d), at),
            None => (now, at),
        };
    }

    fn balance(&self) -> i64 {
        self.ring
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .fold(self.fresh.load(Ordering::Acquire), i64::saturating_add)
            .saturating_add(self.floor)
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2).expect("valid defaults")
    }
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        // Only deposits raise `fresh` between looks (spends go to the
        // ring), so it counts this budget's deposits since the last look.
        let before = self.fresh.fetch_add(self.per_request, Ordering::Relaxed);
        let n = before / self.per_request.max(1) + 1;
        if n % i64::from(LOOK_EVERY) == 0 {
            // Someone else turning the ring will do.
            if let Ok(mut clock) = self.clock.try_lock() {
                self.turn(&mut clock);
            }
        }
    }

    fn withdraw(&self) -> bool {
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        self.turn(&mut clock);
        // Spent in the current window, so it comes back when that expires.
        if self.balance() >= self.per_retry {
            self.ring[clock.1].fetch_sub(self.per_retry, Ordering::AcqRel);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(b: &RetryBudget) -> usize {
        (0..100_000).take_while(|_| b.withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_of_requests_plus_a_floor() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.2).unwrap();
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(taken(&b), 20);
        let b = RetryBudget::new(Duration::from_secs(10), 3, 0.2).unwrap();
        assert_eq!(taken(&b), 30, "the floor: 3 per second over 10 s");
        let b = RetryBudget::new(Duration::from_secs(2), 1, 0.0).unwrap();
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(taken(&b), 2, "no ratio: the floor only");
        let b = RetryBudget::new(Duration::from_secs(10), 0, 2.0).unwrap();
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(taken(&b), 20, "a ratio above 1");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire_after_the_ttl() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.5).unwrap();
        for _ in 0..100 {
            b.deposit();
        }
        // Still there after 9 s (the deposits count from the first look,
        // 9 s ago, which the withdrawal makes now).
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(b.withdraw());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!b.withdraw(), "gone after the ttl");
        // New requests earn new retries.
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(taken(&b), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn spent_retries_come_back_after_the_ttl() {
        let b = RetryBudget::new(Duration::from_secs(5), 2, 0.0).unwrap();
        assert_eq!(taken(&b), 10);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(taken(&b), 10, "the floor refills");
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_quiet_spell_clears_everything() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 1.0).unwrap();
        for _ in 0..1000 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!b.withdraw());
    }

    #[test]
    fn bad_settings_are_config_errors() {
        for (ttl, ratio) in [
            (Duration::ZERO, 0.2),
            (Duration::from_secs(61), 0.2),
            (Duration::from_secs(10), -0.1),
            (Duration::from_secs(10), f64::NAN),
            (Duration::from_secs(10), 1000.5),
        ] {
            assert!(
                matches!(RetryBudget::new(ttl, 1, ratio), Err(Error::Config(_))),
                "{ttl:?} {ratio}"
            );
        }
    }
}

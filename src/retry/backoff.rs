//! Jittered exponential backoff between attempts.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// How long to wait before a retry: `base * 2^(retry - 1)`, capped at `max`,
/// of which a random part (the `jitter` fraction) is taken off, so clients
/// that failed together do not retry together.
///
/// With the default jitter of 0.5 ("equal jitter") the wait before retry
/// `n` is uniform in `[d/2, d]` where `d = min(max, base * 2^(n-1))`; with
/// jitter 0 it is exactly `d`; with jitter 1 ("full jitter") it is uniform
/// in `[0, d]`.
///
/// | setting | default |
/// |---|---|
/// | `base` | 10 ms |
/// | `max` | 1 s |
/// | `jitter` | 0.5 |
///
/// ```
/// use std::time::Duration;
/// use redis_layers::retry::Backoff;
///
/// let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50)).jitter(0.0);
/// assert_eq!(b.delay(1), Duration::from_millis(10));
/// assert_eq!(b.delay(2), Duration::from_millis(20));
/// assert_eq!(b.delay(3), Duration::from_millis(40));
/// assert_eq!(b.delay(4), Duration::from_millis(50)); // capped
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_secs(1),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// Doubling from `base` up to `max` (a `max` below `base` is raised to
    /// `base`), with the default jitter (0.5). Both are at most
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT) (longer ones are clamped to it).
    pub fn new(base: Duration, max: Duration) -> Self {
        let (base, max) = (crate::time::clamp(base), crate::time::clamp(max));
        Backoff {
            base,
            max: max.max(base),
            jitter: 0.5,
        }
    }

    /// No wait at all between attempts.
    ///
    /// ```
    /// use redis_layers::retry::Backoff;
    /// assert_eq!(Backoff::none().delay(5), std::time::Duration::ZERO);
    /// ```
    pub fn none() -> Self {
        Backoff {
            base: Duration::ZERO,
            max: Duration::ZERO,
            jitter: 0.0,
        }
    }

    /// The random fraction of each wait, clamped to `[0, 1]` (NaN counts
    /// as 0).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// The first wait, before jitter.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The longest wait.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The longest wait before retry `retry` (1 for the first retry),
    /// before jitter is taken off.
    pub fn delay(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << shift)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The wait before retry `retry`, jitter applied.
    pub fn jittered(&self, retry: u32) -> Duration {
        self.with_random(retry, random_unit())
    }

    /// The wait for a given random number `r` in `[0, 1)`.
    fn with_random(&self, retry: u32, r: f64) -> Duration {
        let d = self.delay(retry);
        // Not `mul_f64`, which panics near `Duration::MAX`.
        Duration::try_from_secs_f64(d.as_secs_f64() * (1.0 - self.jitter * r)).unwrap_or(d)
    }
}

/// A random number in `[0, 1)`. Each `RandomState` is keyed afresh, which
/// is random enough to spread retries and costs nothing on the success path.
fn random_unit() -> f64 {
    let r = RandomState::new().build_hasher().finish();
    (r >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::new(10 * MS, 300 * MS).jitter(0.0);
        let waits: Vec<_> = (1..=7).map(|n| b.jittered(n)).collect();
        assert_eq!(
            waits,
            [
                10 * MS,
                20 * MS,
                40 * MS,
                80 * MS,
                160 * MS,
                300 * MS,
                300 * MS
            ]
        );
        // No overflow, however many retries.
        assert_eq!(b.delay(u32::MAX), 300 * MS);
        assert_eq!(
            Backoff::new(Duration::MAX, Duration::MAX).delay(40),
            crate::MAX_TIMEOUT
        );
        // A max below base is raised to base.
        assert_eq!(Backoff::new(10 * MS, MS).delay(3), 10 * MS);
        // Retry 0 (not a retry) is treated as the first.
        assert_eq!(b.delay(0), 10 * MS);
    }

    #[test]
    fn jitter_takes_off_at_most_its_fraction() {
        let b = Backoff::new(100 * MS, Duration::from_secs(1));
        assert_eq!(b.with_random(1, 0.0), 100 * MS);
        assert_eq!(b.with_random(1, 0.5), 75 * MS);
        let full = b.jitter(1.0);
        assert_eq!(full.with_random(2, 0.25), 150 * MS);
        for n in 1..6 {
            for _ in 0..50 {
                let w = b.jittered(n);
                assert!(w <= b.delay(n) && w >= b.delay(n) / 2, "{w:?}");
            }
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| b.jittered(3)).collect();
        assert!(distinct.len() > 10, "jitter is not random: {distinct:?}");
    }

    #[test]
    fn jitter_is_clamped() {
        assert_eq!(Backoff::default().jitter(7.0).jitter, 1.0);
        assert_eq!(Backoff::default().jitter(-1.0).jitter, 0.0);
        assert_eq!(Backoff::default().jitter(f64::NAN).jitter, 0.0);
    }
}

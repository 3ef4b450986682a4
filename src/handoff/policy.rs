//! [`HandoffPolicy`]: whether, where, when and how persistently to hand a
//! connection off on `MOVING`, with the contract's behaviour as the default and
//! combinators to adjust one decision without rewriting the others.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::maint::MovingEndpoint;
use crate::transport::Endpoint;

/// What a policy sees of a `MOVING`.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Moving<'a> {
    /// The sequence number.
    pub seq: i64,
    /// Time until the old endpoint closes its connections.
    pub time: Duration,
    /// The announced endpoint; `None` for a null endpoint.
    pub endpoint: Option<&'a MovingEndpoint>,
    /// The endpoint the connection is on now (the one going away).
    pub from: &'a Endpoint,
    /// The endpoint the service was built for.
    pub configured: &'a Endpoint,
}

/// Decides how the [`Handoff`](super::Handoff) service reacts to a
/// `MOVING`. Every method has the spec's behaviour as its default, so a
/// policy overrides only what it changes.
///
/// ```
/// use redis_layers::handoff::{HandoffPolicy, Moving};
/// use redis_layers::Endpoint;
///
/// /// Clients outside the data centre: the server announces internal
/// /// addresses, reachable here through a NAT on another host.
/// #[derive(Clone)]
/// struct ThroughNat;
///
/// impl HandoffPolicy for ThroughNat {
///     fn target(&self, moving: &Moving<'_>) -> Option<Endpoint> {
///         let announced = moving.endpoint?;
///         Some(Endpoint::tcp("nat.example.com", announced.port))
///     }
/// }
/// ```
pub trait HandoffPolicy: Send + Sync + 'static {
    /// Where to move, or `None` to ignore this `MOVING` (the connection
    /// then serves until the server closes it, and the next command
    /// reconnects). Default: the announced endpoint, or the configured one
    /// for a null endpoint.
    fn target(&self, moving: &Moving<'_>) -> Option<Endpoint> {
        Some(match moving.endpoint {
            Some(e) => Endpoint::tcp(e.host.clone(), e.port),
            None => moving.configured.clone(),
        })
    }

    /// How long after the notification the handoff of connection `index`
    /// (of `count` on the old endpoint) starts. Default: at once, or after
    /// `time / 2` for a null endpoint (the configured address leads to the
    /// new node only later).
    fn delay(&self, moving: &Moving<'_>, index: usize, count: usize) -> Duration {
        let _ = (index, count);
        match moving.endpoint {
            Some(_) => Duration::ZERO,
            None => moving.time / 2,
        }
    }

    /// How long to wait before dial `attempt` (2 for the first retry).
    /// Default: 250 ms doubling up to 2 s, each with jitter (a random
    /// value between half and all of it), so a pool does not retry in step.
    fn backoff(&self, moving: &Moving<'_>, attempt: u32) -> Duration {
        let _ = moving;
        jittered(default_backoff(attempt))
    }
}

/// The spec's behaviour; see [`HandoffPolicy`]'s default methods.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::handoff::{DefaultPolicy, HandoffPolicy, Moving};
/// use redis_layers::maint::MovingEndpoint;
/// use redis_layers::Endpoint;
///
/// let from = Endpoint::tcp("10.0.0.1", 6379);
/// let to = MovingEndpoint::new("10.0.0.2", 6379);
/// let mut m = Moving::new(1, Duration::from_secs(15), Some(&to), &from, &from);
/// assert_eq!(DefaultPolicy.target(&m), Some(Endpoint::tcp("10.0.0.2", 6379)));
/// assert_eq!(DefaultPolicy.delay(&m, 0, 1), Duration::ZERO);
/// m.endpoint = None;
/// assert_eq!(DefaultPolicy.target(&m), Some(from.clone()));
/// assert_eq!(DefaultPolicy.delay(&m, 0, 1), Duration::from_millis(7500));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPolicy;

impl HandoffPolicy for DefaultPolicy {}

impl<'a> Moving<'a> {
    /// A `MOVING` as a policy sees it (for tests of policies).
    pub fn new(
        seq: i64,
        time: Duration,
        endpoint: Option<&'a MovingEndpoint>,
        from: &'a Endpoint,
        configured: &'a Endpoint,
    ) -> Self {
        Moving {
            seq,
            time,
            endpoint,
            from,
            configured,
        }
    }
}

/// 250 ms x 2^(attempt - 2), at most 2 s.
fn default_backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(2).min(3);
    (Duration::from_millis(250) * (1 << doublings)).min(Duration::from_secs(2))
}

/// A random duration in `[d/2, d]` ("equal jitter"). The standard
/// library's randomly keyed hasher is random enough for spreading retries,
/// and saves a dependency.
pub(super) fn jittered(d: Duration) -> Duration {
    let r = RandomState::new().build_hasher().finish();
    let half = d / 2;
    half + half.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
}

/// Adjusts a policy; every [`HandoffPolicy`] gets these methods.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::handoff::{DefaultPolicy, HandoffPolicyExt};
/// use redis_layers::Endpoint;
///
/// let policy = DefaultPolicy
///     // announced internal host -> the address this client can reach
///     .map_target(|_moving, target| match target {
///         Endpoint::Tcp { port, .. } => Endpoint::tcp("redis.example.com", port),
///         other => other,
///     })
///     // spread a pool's handoffs over the first half of the window
///     .spread();
/// # let _ = policy;
/// ```
pub trait HandoffPolicyExt: HandoffPolicy + Sized {
    /// Rewrites the target the policy chose (e.g. internal to external
    /// addresses).
    fn map_target<F>(self, f: F) -> MapTarget<Self, F>
    where
        F: Fn(&Moving<'_>, Endpoint) -> Endpoint + Send + Sync + 'static,
    {
        MapTarget { inner: self, f }
    }

    /// Spreads the handoffs of the connections on one endpoint evenly over
    /// the first half of the `MOVING` window (after the inner policy's own
    /// delay), so a large pool does not dial the new endpoint all at once.
    fn spread(self) -> Spread<Self> {
        Spread { inner: self }
    }

    /// Ignores `MOVING`s for which `f` returns false.
    fn filter<F>(self, f: F) -> Filter<Self, F>
    where
        F: Fn(&Moving<'_>) -> bool + Send + Sync + 'static,
    {
        Filter { inner: self, f }
    }
}

impl<P: HandoffPolicy> HandoffPolicyExt for P {}

/// See [`HandoffPolicyExt::map_target`].
#[derive(Debug, Clone)]
pub struct MapTarget<P, F> {
    inner: P,
    f: F,
}

impl<P, F> HandoffPolicy for MapTarget<P, F>
where
    P: HandoffPolicy,
    F: Fn(&Moving<'_>, Endpoint) -> Endpoint + Send + Sync + 'static,
{
    fn target(&self, moving: &Moving<'_>) -> Option<Endpoint> {
        self.inner.target(moving).map(|t| (self.f)(moving, t))
    }

    fn delay(&self, moving: &Moving<'_>, index: usize, count: usize) -> Duration {
        self.inner.delay(moving, index, count)
    }

    fn backoff(&self, moving: &Moving<'_>, attempt: u32) -> Duration {
        self.inner.backoff(moving, attempt)
    }
}

/// See [`HandoffPolicyExt::spread`].
///
/// ```
/// use std::time::Duration;
/// use redis_layers::handoff::{DefaultPolicy, HandoffPolicy, HandoffPolicyExt, Moving};
/// use redis_layers::maint::MovingEndpoint;
/// use redis_layers::Endpoint;
///
/// let ep = Endpoint::tcp("10.0.0.1", 6379);
/// let to = MovingEndpoint::new("10.0.0.2", 6379);
/// let m = Moving::new(1, Duration::from_secs(8), Some(&to), &ep, &ep);
/// let p = DefaultPolicy.spread();
/// let delays: Vec<_> = (0..4).map(|i| p.delay(&m, i, 4)).collect();
/// assert_eq!(delays, [0, 1000, 2000, 3000].map(Duration::from_millis));
/// ```
#[derive(Debug, Clone)]
pub struct Spread<P> {
    inner: P,
}

impl<P: HandoffPolicy> HandoffPolicy for Spread<P> {
    fn target(&self, moving: &Moving<'_>) -> Option<Endpoint> {
        self.inner.target(moving)
    }

    fn delay(&self, moving: &Moving<'_>, index: usize, count: usize) -> Duration {
        let base = self.inner.delay(moving, index, count);
        let half = (moving.time / 2).saturating_sub(base);
        let step = half.checked_div(count.max(1) as u32).unwrap_or_default();
        // Saturating: `base` comes from another policy, `index` may pass `count`.
        base.saturating_add(step.saturating_mul(index.min(u32::MAX as usize) as u32))
    }

    fn backoff(&self, moving: &Moving<'_>, attempt: u32) -> Duration {
        self.inner.backoff(moving, attempt)
    }
}

/// See [`HandoffPolicyExt::filter`].
#[derive(Debug, Clone)]
pub struct Filter<P, F> {
    inner: P,
    f: F,
}

impl<P, F> HandoffPolicy for Filter<P, F>
where
    P: HandoffPolicy,
    F: Fn(&Moving<'_>) -> bool + Send + Sync + 'static,
{
    fn target(&self, moving: &Moving<'_>) -> Option<Endpoint> {
        if (self.f)(moving) {
            self.inner.target(moving)
        } else {
            None
        }
    }

    fn delay(&self, moving: &Moving<'_>, index: usize, count: usize) -> Duration {
        self.inner.delay(moving, index, count)
    }

    fn backoff(&self, moving: &Moving<'_>, attempt: u32) -> Duration {
        self.inner.backoff(moving, attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        for attempt in 2..20 {
            let full = default_backoff(attempt);
            assert!(full >= Duration::from_millis(250) && full <= Duration::from_secs(2));
            for _ in 0..50 {
                let j = jittered(full);
                assert!(
                    j >= full / 2 && j <= full,
                    "{j:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
        assert_eq!(default_backoff(2), Duration::from_millis(250));
        assert_eq!(default_backoff(3), Duration::from_millis(500));
        assert_eq!(default_backoff(5), Duration::from_secs(2));
        let distinct: std::collections::HashSet<_> =
            (0..20).map(|_| jittered(Duration::from_secs(1))).collect();
        assert!(distinct.len() > 10, "jitter is not random: {distinct:?}");
    }

    #[test]
    fn filter_ignores() {
        let ep = Endpoint::tcp("a", 1);
        let to = MovingEndpoint::new("b", 2);
        let m = Moving::new(7, Duration::from_secs(4), Some(&to), &ep, &ep);
        assert_eq!(DefaultPolicy.filter(|m| m.seq != 7).target(&m), None);
        assert_eq!(
            DefaultPolicy.filter(|m| m.seq == 7).target(&m),
            Some(Endpoint::tcp("b", 2))
        );
    }
}

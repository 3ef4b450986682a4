//! A dial limiter: no reconnect storms.
//!
//! When many connections die at once (a network blip, a server restart,
//! a proxy dropping every client) or a `MOVING` reaches every connection of
//! a large pool, every one of them dials again in the same instant: a
//! burst of TCP, TLS and `HELLO`/`AUTH` handshakes that lands on a server
//! just recovering, or on the new endpoint of a `MOVING`. Servers answer
//! such storms with refused connections and slow handshakes, which then
//! fail and are retried, and the storm feeds itself.
//!
//! [`DialLimit`] goes around a connection maker (a
//! [`Connector`](crate::Connector), under [`Handoff`](crate::handoff::Handoff))
//! and bounds dials two ways:
//!
//! - **concurrency**: at most `concurrency` dials in progress. A dial holds
//!   a permit of a [`tokio::sync::Semaphore`] from its start until the
//!   connection is made or has failed; the others wait, first come first
//!   served;
//! - **rate**: at most `rate` dial starts per second, after a `burst` that
//!   starts at once. A dial that must wait for its slot waits a random
//!   `jitter` more, so queued dials do not start in lockstep.
//!
//! Every service a [`DialLimitLayer`] makes, and every clone of them, share
//! one limiter: the layer *is* the limiter. Give a client one layer (the
//! [`ClientBuilder`](crate::ClientBuilder) does: one for every node of a
//! cluster, for its command, dedicated and pub/sub connections) and its
//! dials are limited together.
//!
//! **Never stuck.** `poll_ready` waits only for the maker; the wait for a
//! permit and a slot happens in the response future, and is bounded: a dial
//! that would start later than `max_queue_time` after its call fails with
//! [`Error::Timeout`] (at once when its rate slot is known to be too far
//! off). [`Handoff`](crate::handoff::Handoff) hands that to the waiting
//! caller as [`Error::NotSent`] (nothing was sent), which
//! [`Retry`](crate::retry::Retry) may retry, and its handoff worker retries
//! with its backoff.
//!
//! **Visible.** [`DialLimit::stats`] (and [`DialLimitLayer::stats`]) count
//! the dials queued, in progress, started and rejected; with the `metrics`
//! feature, the gauges [`DIAL_QUEUED`] and [`DIAL_IN_PROGRESS`] and the
//! counter [`DIALS`] say the same.
//!
//! # Defaults
//!
//! | setting | default | why |
//! |---|---|---|
//! | `concurrency` | 16 | a dial is a few round trips (TCP, TLS, `HELLO`, `AUTH`, `CLIENT SETINFO`): about 1 ms on a LAN, tens of ms across zones. 16 at a time reconnect a pool of 500 in well under a second on a LAN, while the server accepts and authenticates at most 16 of ours at once. |
//! | `rate` | 200 per second | 500 connections re-dial within 2.5 s, well inside a `MOVING`'s window (the old connections serve until its deadline, so a handoff that waits loses nothing); a server sees at most 200 new connections per second from one client. |
//! | `burst` | 16 | a client of up to 16 connections (the default pool is 1 per endpoint) reconnects with no wait at all. |
//! | `jitter` | one rate slot (1/`rate`, 5 ms) | spreads each waiting dial over its slot rather than at its edge. |
//! | `max_queue_time` | 5 s | the client's default command timeout: a caller waiting for the dial has given up by then, and a handoff attempt is bounded by its own `handoff_timeout`. |
//!
//! A `concurrency` or `rate` of 0 turns that limit off;
//! [`DialLimitLayer::unlimited`] turns both off and only counts.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_layers::dial::DialLimitLayer;
//! use redis_layers::handoff::HandoffLayer;
//! use redis_layers::relax::RelaxTimeoutLayer;
//! use redis_layers::{cmd, Connector, Endpoint};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), redis_layers::Error> {
//! let endpoint = Endpoint::tcp("127.0.0.1", 6379);
//! let dials = DialLimitLayer::new().concurrency(8).rate(100);
//! let svc = ServiceBuilder::new()
//!     .layer(RelaxTimeoutLayer::new(Duration::from_secs(1)))
//!     .layer(HandoffLayer::new(endpoint).pool_size(64).unwrap())
//!     .layer(dials.clone())
//!     .service(Connector::new());
//! svc.oneshot(cmd("PING").into()).await?;
//! println!("{:?}", dials.stats());
//! # Ok(()) }
//! ```

mod future;
mod layer;

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower_service::Service;

pub use future::ResponseFuture;
pub use layer::DialLimitLayer;

use crate::error::Error;
use crate::transport::Endpoint;

/// Gauge (feature `metrics`): dials waiting for a permit or a rate slot,
/// over every limiter of the process.
pub const DIAL_QUEUED: &str = "redis.client.connection.dial.queued";
/// Gauge (feature `metrics`): dials in progress (handed to the maker, not
/// finished), over every limiter of the process.
pub const DIAL_IN_PROGRESS: &str = "redis.client.connection.dial.in_progress";
/// Counter (feature `metrics`): dials through a limiter, by `result`
/// (`started`, `rejected`: waited longer than `max_queue_time`).
pub const DIALS: &str = "redis.client.connection.dials";

/// The dial limiter's counters: a snapshot from [`DialLimit::stats`] or
/// [`DialLimitLayer::stats`].
///
/// ```
/// use redis_layers::dial::DialLimitLayer;
/// let stats = DialLimitLayer::new().stats();
/// assert_eq!((stats.queued, stats.in_progress, stats.started, stats.rejected), (0, 0, 0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DialStats {
    /// Dials waiting for a permit or for their rate slot now.
    pub queued: usize,
    /// Dials handed to the maker and not finished now.
    pub in_progress: usize,
    /// The most dials ever in progress at once.
    pub peak_in_progress: usize,
    /// Dials handed to the maker so far.
    pub started: u64,
    /// Dials failed with [`Error::Timeout`] so far: they would have waited
    /// longer than `max_queue_time`.
    pub rejected: u64,
}

/// The settings of a limiter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// 0: no limit.
    pub(crate) concurrency: usize,
    /// Starts per second; 0: no limit.
    pub(crate) rate: u32,
    pub(crate) burst: u32,
    /// `None`: one rate slot.
    pub(crate) jitter: Option<Duration>,
    pub(crate) max_queue_time: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: DEFAULT_CONCURRENCY,
            rate: DEFAULT_RATE,
            burst: DEFAULT_BURST,
            jitter: None,
            max_queue_time: DEFAULT_MAX_QUEUE_TIME,
        }
    }
}

/// Default dials in progress at once.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Default dial starts per second.
pub const DEFAULT_RATE: u32 = 200;
/// Default dials that start at once after a quiet time.
pub const DEFAULT_BURST: u32 = 16;
/// Default longest wait of a dial for its permit and slot.
pub const DEFAULT_MAX_QUEUE_TIME: Duration = Duration::from_secs(5);

impl Config {
    /// The time between two starts at the rate (`None`: no rate limit).
    fn interval(&self) -> Option<Duration> {
        (self.rate > 0).then(|| Duration::from_secs(1) / self.rate)
    }

    fn jitter(&self) -> Duration {
        self.jitter
            .or_else(|| self.interval())
            .unwrap_or(Duration::ZERO)
    }
}

/// One limiter: shared by every service of a layer and their clones.
#[derive(Debug)]
pub(crate) struct Shared {
    config: Config,
    /// `None`: no concurrency limit.
    permits: Option<Arc<Semaphore>>,
    /// The rate's theoretical arrival time (GCRA): the slot after the
    /// last one given out.
    tat: Mutex<Option<Instant>>,
    queued: AtomicUsize,
    in_progress: AtomicUsize,
    peak: AtomicUsize,
    started: AtomicU64,
    rejected: AtomicU64,
}

/// What a dial may do once it holds its permit.
pub(crate) enum Slot {
    /// Start now.
    Now,
    /// Start at this instant (jitter included).
    At(Instant),
    /// Its slot is after its deadline: rejected (no slot taken).
    TooLate,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        let permits = (config.concurrency > 0).then(|| {
            Arc::new(Semaphore::new(
                config.concurrency.min(Semaphore::MAX_PERMITS),
            ))
        });
        Shared {
            config,
            permits,
            tat: Mutex::new(None),
            queued: AtomicUsize::new(0),
            in_progress: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn permits(&self) -> Option<&Arc<Semaphore>> {
        self.permits.as_ref()
    }

    pub(crate) fn stats(&self) -> DialStats {
        DialStats {
            queued: self.queued.load(Relaxed),
            in_progress: self.in_progress.load(Relaxed),
            peak_in_progress: self.peak.load(Relaxed),
            started: self.started.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
        }
    }

    /// Takes the next rate slot for a dial that may start no later than
    /// `deadline` (GCRA, virtual scheduling: `burst` slots at once, then
    /// one every `1/rate`).
    pub(crate) fn slot(&self, now: Instant, deadline: Instant) -> Slot {
        let Some(interval) = self.config.interval() else {
            return Slot::Now;
        };
        let tolerance = interval * self.config.burst.max(1).saturating_sub(1);
        let mut tat = crate::lock(&self.tat);
        let t = tat.map_or(now, |t| t.max(now));
        let start = t.checked_sub(tolerance).map_or(now, |s| s.max(now));
        if start > deadline {
            return Slot::TooLate;
        }
        *tat = Some(t + interval);
        drop(tat);
        if start == now {
            return Slot::Now;
        }
        let jitter = self.config.jitter().mul_f64(random_unit());
        Slot::At((start + jitter).min(deadline))
    }

    pub(crate) fn queue(&self) {
        self.queued.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::gauge!(DIAL_QUEUED).increment(1.0);
    }

    /// A queued dial leaves the queue: started, or dropped.
    pub(crate) fn unqueue(&self) {
        self.queued.fetch_sub(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::gauge!(DIAL_QUEUED).decrement(1.0);
    }

    pub(crate) fn start(&self) {
        self.unqueue();
        let now = self.in_progress.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(now, Relaxed);
        self.started.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        {
            metrics::gauge!(DIAL_IN_PROGRESS).increment(1.0);
            metrics::counter!(DIALS, "result" => "started").increment(1);
        }
    }

    pub(crate) fn finish(&self) {
        self.in_progress.fetch_sub(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::gauge!(DIAL_IN_PROGRESS).decrement(1.0);
    }

    pub(crate) fn reject(&self) {
        self.unqueue();
        self.rejected.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(DIALS, "result" => "rejected").increment(1);
        tracing::debug!(
            target: "redis_layers::dial",
            max_queue_time = ?self.config.max_queue_time,
            "dial.rejected"
        );
    }
}

/// A random number in `[0, 1)`: each `RandomState` is keyed afresh.
fn random_unit() -> f64 {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// A connection maker whose dials are limited in concurrency and rate; see
/// the [module docs](self). Made by a [`DialLimitLayer`]; the connections
/// are the inner maker's, unchanged.
///
/// ```
/// use redis_layers::dial::{DialLimit, DialLimitLayer};
/// use redis_layers::Connector;
/// use tower::Layer;
///
/// let maker: DialLimit<Connector> = DialLimitLayer::new().concurrency(4).layer(Connector::new());
/// assert_eq!(maker.stats().started, 0);
/// ```
#[derive(Debug, Clone)]
pub struct DialLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> DialLimit<S> {
    /// `inner` limited by the default limiter of [`DialLimitLayer::new`]
    /// (a limiter of its own).
    ///
    /// ```
    /// use redis_layers::dial::DialLimit;
    /// use redis_layers::Connector;
    /// let maker = DialLimit::new(Connector::new());
    /// ```
    pub fn new(inner: S) -> Self {
        DialLimit {
            inner,
            shared: Arc::new(Shared::new(Config::default())),
        }
    }

    pub(crate) fn with_shared(inner: S, shared: Arc<Shared>) -> Self {
        DialLimit { inner, shared }
    }

    /// The limiter's counters (shared with every service of its layer).
    ///
    /// ```
    /// use redis_layers::dial::DialLimit;
    /// use redis_layers::Connector;
    /// assert_eq!(DialLimit::new(Connector::new()).stats().queued, 0);
    /// ```
    pub fn stats(&self) -> DialStats {
        self.shared.stats()
    }

    /// The inner maker.
    ///
    /// ```
    /// use redis_layers::dial::DialLimit;
    /// use redis_layers::Connector;
    /// let connector: &Connector = DialLimit::new(Connector::new()).get_ref();
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner maker, mutably.
    ///
    /// ```
    /// use redis_layers::dial::DialLimit;
    /// use redis_layers::Connector;
    /// let mut maker = DialLimit::new(Connector::new());
    /// let _connector: &mut Connector = maker.get_mut();
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner maker, the limiter dropped from it.
    ///
    /// ```
    /// use redis_layers::dial::DialLimit;
    /// use redis_layers::Connector;
    /// let connector: Connector = DialLimit::new(Connector::new()).into_inner();
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Endpoint> for DialLimit<S>
where
    S: Service<Endpoint, Error = Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S>;

    /// The inner maker's readiness: the limiter never makes `poll_ready`
    /// wait or fail (the wait is in the response future).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        // The clone made ready above goes with the request; it is polled
        // ready again when the dial's turn comes.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(inner, endpoint, self.shared.clone())
    }
}

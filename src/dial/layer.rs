use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::{Config, DialLimit, DialStats, Shared};

/// Limits the dials of a connection maker in concurrency and rate: makes
/// [`DialLimit`]s. See the [module docs](super) for the why and the
/// defaults.
///
/// The layer is the limiter: every service it makes, and every clone of
/// the layer or of those services, share one set of permits, one rate and
/// one set of counters. Each setter returns a layer with a limiter of its
/// own, so configure first, then clone.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::dial::DialLimitLayer;
/// use redis_layers::handoff::HandoffLayer;
/// use redis_layers::{Connector, Endpoint};
/// use tower::ServiceBuilder;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let dials = DialLimitLayer::new()
///     .concurrency(32)
///     .rate(500)
///     .burst(32)
///     .jitter(Duration::from_millis(2))
///     .max_queue_time(Duration::from_secs(2));
/// // Two endpoints, one limiter.
/// let a = ServiceBuilder::new()
///     .layer(HandoffLayer::new(Endpoint::tcp("10.0.0.1", 6379)))
///     .layer(dials.clone())
///     .service(Connector::new());
/// let b = ServiceBuilder::new()
///     .layer(HandoffLayer::new(Endpoint::tcp("10.0.0.2", 6379)))
///     .layer(dials.clone())
///     .service(Connector::new());
/// assert_eq!(dials.stats().started, 0);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DialLimitLayer {
    shared: Arc<Shared>,
}

impl Default for DialLimitLayer {
    fn default() -> Self {
        DialLimitLayer::new()
    }
}

impl DialLimitLayer {
    /// A limiter with the defaults: 16 dials in progress, 200 starts per
    /// second after a burst of 16, a jitter of one rate slot, 5 s of
    /// queueing at most.
    ///
    /// ```
    /// use redis_layers::dial::DialLimitLayer;
    /// let dials = DialLimitLayer::new();
    /// ```
    pub fn new() -> Self {
        Self::with_config(Config::default())
    }

    /// A limiter that limits nothing and only counts
    /// ([`stats`](Self::stats), the metrics).
    ///
    /// ```
    /// use redis_layers::dial::DialLimitLayer;
    /// let dials = DialLimitLayer::unlimited();
    /// ```
    pub fn unlimited() -> Self {
        Self::with_config(Config {
            concurrency: 0,
            rate: 0,
            ..Config::default()
        })
    }

    fn with_config(config: Config) -> Self {
        DialLimitLayer {
            shared: Arc::new(Shared::new(config)),
        }
    }

    fn set(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = *self.shared.config();
        f(&mut config);
        Self::with_config(config)
    }

    /// At most `n` dials in progress at once (default 16; 0: no limit). A
    /// dial holds its permit from its start until the connection is made
    /// or has failed.
    ///
    /// ```
    /// use redis_layers::dial::DialLimitLayer;
    /// let dials = DialLimitLayer::new().concurrency(64);
    /// ```
    pub fn concurrency(self, n: usize) -> Self {
        self.set(|c| c.concurrency = n)
    }

    /// At most `per_second` dial starts per second, after a
    /// [`burst`](Self::burst) (default 200; 0: no limit).
    ///
    /// ```
    /// use redis_layers::dial::DialLimitLayer;
    /// let dials = DialLimitLayer::new().rate(1000);
    /// ```
    pub fn rate(self, per_second: u32) -> Self {
        self.set(|c| c.rate = per_second)
    }

    /// How many dials may start at once after a quiet time, before the
    /// [`rate`](Self::rate) spaces them (default 16; at least 1).
    ///
    /// ```
    /// use redis_layers::dial::DialLimitLayer;
    /// let dials = DialLimitLayer::new().burst(4);
    /// ```
    pub fn burst(self, n: u32) -> Self {
        self.set(|c| c.burst = n.max(1))
    }

    /// The most random time added to the wait of a dial that waits for its
    /// rate slot (default: one slot, `1 / rate`), so that queued dials do
    /// not start in lockstep. It never takes a dial past its
    /// [`max_queue_time`](Self::max_queue_time).
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::dial::DialLimitLayer;
    /// let dials = DialLimitLayer::new().jitter(Duration::ZERO);
    /// ```
    pub fn jitter(self, jitter: Duration) -> Self {
        self.set(|c| c.jitter = Some(crate::time::clamp(jitter)))
    }

    /// The longest a dial waits for its permit and rate slot (default 5 s;
    /// at most [`MAX_TIMEOUT`](crate::MAX_TIMEOUT)). A dial that waited
    /// that long, or whose slot is further off, fails with
    /// [`Error::Timeout`](crate::Error::Timeout) and counts as
    /// [`rejected`](DialStats::rejected).
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::dial::DialLimitLayer;
    /// let dials = DialLimitLayer::new().max_queue_time(Duration::from_secs(1));
    /// ```
    pub fn max_queue_time(self, max: Duration) -> Self {
        self.set(|c| c.max_queue_time = crate::time::clamp(max))
    }

    /// The counters of this limiter (every service it made).
    ///
    /// ```
    /// use redis_layers::dial::DialLimitLayer;
    /// assert_eq!(DialLimitLayer::new().stats().in_progress, 0);
    /// ```
    pub fn stats(&self) -> DialStats {
        self.shared.stats()
    }
}

impl<S> Layer<S> for DialLimitLayer {
    type Service = DialLimit<S>;

    fn layer(&self, inner: S) -> DialLimit<S> {
        DialLimit::with_shared(inner, self.shared.clone())
    }
}

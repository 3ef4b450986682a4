use std::time::Duration;

use tower::retry::budget::Budget;
use tower_layer::Layer;

use super::{Backoff, RedisPolicy, Retry, Retryable};
use crate::cluster::keys::CommandTable;
use crate::error::Error;

/// Builds [`Retry`] services with a policy: the [`RedisPolicy`] (configured
/// through this layer's methods, defaults in its docs) or any
/// [`tower::retry::Policy`] for Redis requests ([`RetryLayer::with_policy`]).
///
/// Every service this layer builds shares the policy's settings and its
/// retry budget.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_layers::handoff::HandoffLayer;
/// use redis_layers::relax::RelaxTimeoutLayer;
/// use redis_layers::retry::RetryLayer;
/// use redis_layers::{cmd, Connector, Endpoint};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # async fn run() -> Result<(), redis_layers::Error> {
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new().max_retries(5))
///     .layer(RelaxTimeoutLayer::new(Duration::from_secs(1)))
///     .layer(HandoffLayer::new(Endpoint::tcp("127.0.0.1", 6379)))
///     .service(Connector::new());
/// // Read-only: retried even if the connection dies after sending it.
/// let reply = svc.oneshot(cmd("GET").arg("k").into()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RetryLayer<P = RedisPolicy> {
    policy: P,
    timeout: Option<Duration>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl RetryLayer {
    /// A layer with the default [`RedisPolicy`].
    pub fn new() -> Self {
        RetryLayer {
            policy: RedisPolicy::new(),
            timeout: None,
        }
    }

    /// At most this many retries per request (default 3; 0: never retry).
    pub fn max_retries(self, n: u32) -> Self {
        self.map(|p| p.max_retries(n))
    }

    /// The wait between attempts (default [`Backoff::default`]).
    pub fn backoff(self, backoff: Backoff) -> Self {
        self.map(|p| p.backoff(backoff))
    }

    /// The backoff's first and longest waits, keeping its jitter.
    pub fn backoff_range(self, base: Duration, max: Duration) -> Self {
        self.map(|p| p.backoff(Backoff::new(base, max)))
    }

    /// The retry budget (default
    /// [`RetryBudget::default`](super::RetryBudget)); see
    /// [`RedisPolicy::budget`].
    pub fn budget(self, budget: impl Budget + Send + Sync + 'static) -> Self {
        self.map(|p| p.budget(budget))
    }

    /// Which failures are retried (default [`classify`](super::classify));
    /// see [`RedisPolicy::classifier`].
    pub fn classifier(
        self,
        classifier: impl Fn(&Error) -> Retryable + Send + Sync + 'static,
    ) -> Self {
        self.map(|p| p.classifier(classifier))
    }

    /// The table that says which commands are read-only.
    pub fn command_table(self, table: CommandTable) -> Self {
        self.map(|p| p.command_table(table))
    }

    fn map(self, f: impl FnOnce(RedisPolicy) -> RedisPolicy) -> Self {
        RetryLayer {
            policy: f(self.policy),
            timeout: self.timeout,
        }
    }
}

impl<P> RetryLayer<P> {
    /// A layer with a policy of your own (a configured [`RedisPolicy`], or
    /// any `tower::retry::Policy<Request, Response, Error> + Clone +
    /// 'static`, whose `clone_request` copies the request before every
    /// attempt).
    ///
    /// ```
    /// use redis_layers::retry::{RedisPolicy, RetryLayer};
    /// let layer = RetryLayer::with_policy(RedisPolicy::new().max_retries(1));
    /// # let _ = layer;
    /// ```
    pub fn with_policy(policy: P) -> Self {
        RetryLayer {
            policy,
            timeout: None,
        }
    }

    /// The deadline of a request without a timeout of its own: give it
    /// the command timeout of the [`RelaxTimeoutLayer`](crate::relax::RelaxTimeoutLayer)
    /// below (default `None`: such requests get no deadline here, and
    /// each attempt only its own timeout). See
    /// [`Retry::command_timeout`] and the [module docs](super) for what
    /// the deadline bounds. ([`ClientBuilder`](crate::ClientBuilder) sets
    /// it to its command timeout.)
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::retry::RetryLayer;
    /// let layer = RetryLayer::new().command_timeout(Some(Duration::from_millis(500)));
    /// # let _ = layer;
    /// ```
    pub fn command_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into().map(crate::time::clamp);
        self
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl<S, P: Clone> Layer<S> for RetryLayer<P> {
    type Service = Retry<S, P>;

    fn layer(&self, inner: S) -> Retry<S, P> {
        Retry::new(inner, self.policy.clone()).command_timeout(self.timeout)
    }
}

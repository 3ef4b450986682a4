use tower_layer::Layer;

use super::policy::{DefaultPolicy, HandoffPolicy};
use super::{Handoff, MakeConnection, Settings, IDLE_LEASES};
use crate::maint::{ConfigError, MaintenanceConfig, Resolved};
use crate::transport::{Endpoint, PushReceiver};
use crate::trust::{SharedPolicy, TargetPolicy};

/// Turns a connection maker (a [`Connector`](crate::Connector)) into a
/// [`Handoff`] command service for one endpoint.
///
/// Give it the same [`MaintenanceConfig`] as the connector: the handoff
/// settings (timeouts, retries, workers, circuit breaker) come from there.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_layers::handoff::HandoffLayer;
/// use redis_layers::maint::MaintenanceConfig;
/// use redis_layers::relax::RelaxTimeoutLayer;
/// use redis_layers::{cmd, Connector, Endpoint};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # async fn run() -> Result<(), redis_layers::Error> {
/// let endpoint = Endpoint::tcp("127.0.0.1", 6379);
/// let config = MaintenanceConfig::default();
/// let svc = ServiceBuilder::new()
///     .layer(RelaxTimeoutLayer::new(Duration::from_secs(1)))
///     .layer(HandoffLayer::new(endpoint).maintenance(&config)?.pool_size(4)?)
///     .service(Connector::new().maintenance(config)?);
/// let reply = svc.oneshot(cmd("PING").into()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HandoffLayer<P = DefaultPolicy> {
    endpoint: Endpoint,
    config: Resolved,
    pool_size: usize,
    idle_leases: usize,
    push_capacity: usize,
    policy: P,
    trust: SharedPolicy,
    resolver: Option<crate::transport::Resolver>,
}

impl HandoffLayer {
    /// A layer for `endpoint` with the default maintenance configuration,
    /// one multiplexed connection and the [`DefaultPolicy`].
    pub fn new(endpoint: Endpoint) -> Self {
        HandoffLayer {
            endpoint,
            config: Resolved::default(),
            pool_size: 1,
            idle_leases: IDLE_LEASES,
            push_capacity: PushReceiver::DEFAULT_CAPACITY,
            policy: DefaultPolicy,
            trust: SharedPolicy::default(),
            resolver: None,
        }
    }
}

impl<P> HandoffLayer<P> {
    /// Takes the handoff settings from `config` (validated here; the error
    /// names the offending field).
    pub fn maintenance(mut self, config: &MaintenanceConfig) -> Result<Self, ConfigError> {
        self.config = config.validate()?;
        let size = self.pool_size;
        self.pool_size(size)
    }

    /// How many multiplexed connections to keep (default 1); requests go
    /// to the one with the fewest pending. Also the `P` of the spec's
    /// worker and queue autoscaling. Must be at least 1.
    pub fn pool_size(mut self, size: usize) -> Result<Self, ConfigError> {
        if size == 0 {
            return Err(ConfigError::new(
                "pool_size",
                "pool_size must be at least 1, got 0".into(),
            ));
        }
        if let Some(max) = self.config.max_active_conns().filter(|m| size > *m) {
            return Err(ConfigError::new(
                "pool_size",
                format!("pool_size {size} exceeds max_active_conns {max}"),
            ));
        }
        self.pool_size = size;
        Ok(self)
    }

    /// How many clean dedicated connections ([`Handoff::lease`]) to keep
    /// for the next lease (default [`IDLE_LEASES`], 8); 0 closes every
    /// lease when it is given back.
    ///
    /// ```
    /// use redis_layers::handoff::HandoffLayer;
    /// use redis_layers::Endpoint;
    /// let layer = HandoffLayer::new(Endpoint::tcp("127.0.0.1", 6379)).idle_leases(32);
    /// ```
    pub fn idle_leases(mut self, n: usize) -> Self {
        self.idle_leases = n;
        self
    }

    /// How many push frames the merged push stream
    /// ([`Handoff::take_pushes`]) keeps for its reader before it drops
    /// newer ones (default [`PushReceiver::DEFAULT_CAPACITY`], 1024; at
    /// least 1). Each connection's own channel is bounded by its
    /// connector ([`Connector::push_capacity`](crate::Connector::push_capacity)).
    ///
    /// ```
    /// use redis_layers::handoff::HandoffLayer;
    /// use redis_layers::Endpoint;
    /// let layer = HandoffLayer::new(Endpoint::tcp("127.0.0.1", 6379)).push_capacity(10_000);
    /// ```
    pub fn push_capacity(mut self, frames: usize) -> Self {
        self.push_capacity = frames.max(1);
        self
    }

    /// Replaces the [`HandoffPolicy`].
    pub fn policy<Q: HandoffPolicy>(self, policy: Q) -> HandoffLayer<Q> {
        HandoffLayer {
            endpoint: self.endpoint,
            config: self.config,
            pool_size: self.pool_size,
            idle_leases: self.idle_leases,
            push_capacity: self.push_capacity,
            policy,
            trust: self.trust,
            resolver: self.resolver,
        }
    }

    /// Replaces the [`TargetPolicy`](crate::trust::TargetPolicy) that
    /// decides which `MOVING` targets are followed (default:
    /// [`DefaultTargetPolicy`](crate::trust::DefaultTargetPolicy)). A
    /// refused target is handled like a `MOVING` without an endpoint, before
    /// the [`HandoffPolicy`] sees it.
    ///
    /// ```
    /// use redis_layers::handoff::HandoffLayer;
    /// use redis_layers::trust::{AllowSuffix, DefaultTargetPolicy, TargetPolicyExt};
    /// use redis_layers::Endpoint;
    ///
    /// let layer = HandoffLayer::new(Endpoint::tcp("10.0.0.1", 6379))
    ///     .target_policy(DefaultTargetPolicy.or(AllowSuffix::new("redis.example.com")));
    /// ```
    pub fn target_policy(mut self, policy: impl TargetPolicy) -> Self {
        self.trust = SharedPolicy::new(policy);
        self
    }

    /// Resolves a `MOVING`'s host name (or the configured one, after a
    /// `MOVING` with a null endpoint) with `resolver` rather than the
    /// system's, to wait for DNS to follow the move (see
    /// [DNS that lags behind `MOVING`](crate::handoff#dns-that-lags-behind-moving)).
    /// Give the [`Connector`](crate::Connector) the same one
    /// ([`Connector::resolver`](crate::Connector::resolver)), so that the
    /// dial reaches what the check saw.
    ///
    /// ```
    /// use redis_layers::handoff::HandoffLayer;
    /// use redis_layers::transport::system_resolver;
    /// use redis_layers::Endpoint;
    ///
    /// let layer = HandoffLayer::new(Endpoint::tcp("db.example", 6379)).resolver(system_resolver());
    /// # let _ = layer;
    /// ```
    pub fn resolver(mut self, resolver: crate::transport::Resolver) -> Self {
        self.resolver = Some(resolver);
        self
    }
}

impl<M, P> Layer<M> for HandoffLayer<P>
where
    M: MakeConnection,
    P: HandoffPolicy + Clone,
{
    type Service = Handoff<M, P>;

    fn layer(&self, maker: M) -> Handoff<M, P> {
        Handoff::with_settings(
            maker,
            self.endpoint.clone(),
            Settings::new(&self.config, self.pool_size)
                .idle_leases(self.idle_leases)
                .trust(self.trust.clone())
                .push_capacity(self.push_capacity)
                .resolver(self.resolver.clone()),
            self.policy.clone(),
        )
    }
}

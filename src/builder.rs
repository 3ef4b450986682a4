//! [`ServiceBuilderExt`]: this crate's layers as methods of
//! [`tower::ServiceBuilder`], in the manner of tower-http's extension trait.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_layers::handoff::HandoffLayer;
//! use redis_layers::maint::MaintenanceConfig;
//! use redis_layers::{cmd, Connector, Endpoint, ServiceBuilderExt};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let endpoint = Endpoint::tcp("127.0.0.1", 6379);
//! let config = MaintenanceConfig::default();
//! let svc = ServiceBuilder::new()
//!     .redis_relax(Duration::from_secs(1))
//!     .redis_handoff(HandoffLayer::new(endpoint).maintenance(&config)?)
//!     .service(Connector::new().maintenance(config)?);
//! svc.oneshot(cmd("SET").arg("k").arg("v").into()).await?;
//! # Ok(()) }
//! ```
//!
//! # Order
//!
//! A `ServiceBuilder` wraps in the order of the calls: the first layer
//! added is the outermost, and `.service(..)` gets the innermost. The
//! layers of this crate fit together in one order, and the compiler checks
//! most of it:
//!
//! ```text
//! [your layers, Retry]      any command-service layer
//!   Cluster                 .redis_cluster(..): .service(node_maker)
//!     -- per node, built by node_maker --
//!     RelaxTimeout          .redis_relax(..): needs a Maintained service below
//!       [your layers]       must forward Maintained if RelaxTimeout is above
//!         Handoff           .redis_handoff(..): .service(connector)
//!           Connector
//! ```
//!
//! - **Handoff** wraps a connection maker, not a command service: it is the
//!   last layer before `.service(connector)`. Everything above it sees one
//!   command service for the endpoint.
//! - **RelaxTimeout** reads the endpoint's maintenance state, so the service
//!   below it must implement [`Maintained`](crate::maint::Maintained): a
//!   [`Handoff`](crate::handoff::Handoff), a
//!   [`Connection`](crate::Connection), another `RelaxTimeout`, or a layer of
//!   yours that forwards it. Anything else fails to compile (below).
//! - **Cluster** wraps a per-node maker (a closure
//!   `Fn(Endpoint, NodeRole) -> node service`): it is the last layer before
//!   `.service(node_maker)`, and each node's RelaxTimeout and Handoff are
//!   built inside the closure (with a `ServiceBuilder` of their own, if you
//!   like). RelaxTimeout over a whole cluster does not compile: relaxation
//!   is per node.
//! - **Retry** (`.redis_retry(..)`) belongs at the top, above Cluster, so a retried
//!   command is routed again.
//!
//! Leaving a layer out removes its behaviour and nothing else: without
//! RelaxTimeout no command gets a default deadline; without Handoff a
//! `MOVING` is ignored and the connection dies at its deadline.
//!
//! A stack where RelaxTimeout cannot see the maintenance state does not
//! compile (here it sits over the connection maker instead of a command
//! service):
//!
//! ```compile_fail
//! use std::time::Duration;
//! use redis_layers::{cmd, Connector, ServiceBuilderExt};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), redis_layers::Error> {
//! let svc = ServiceBuilder::new()
//!     .redis_relax(Duration::from_secs(1))
//!     .service(Connector::new());
//! svc.oneshot(cmd("PING").into()).await?;
//! # Ok(()) }
//! ```
//!
//! # Sealed
//!
//! The trait is sealed, as tower-http's is: only `ServiceBuilder`
//! implements it, so a new method is never a
//! breaking change for users, and nobody has to write an implementation.
//! For shortcuts of your own, write an extension trait of your own next to
//! it.

use std::time::Duration;

use tower::ServiceBuilder;
use tower_layer::Stack;

use crate::cluster::ClusterLayer;
use crate::handoff::HandoffLayer;
use crate::relax::RelaxTimeoutLayer;
use crate::retry::RetryLayer;

mod sealed {
    pub trait Sealed<L> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// This crate's layers as [`ServiceBuilder`] methods; see the
/// [module docs](self) for the order they go in.
///
/// Each method is `.layer(..)` with the crate's layer, so a method and the
/// plain `.layer(..)` call can be mixed freely.
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Adds a [`RelaxTimeoutLayer`]: requests without a timeout of their own
    /// get `default`, relaxed during maintenance.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redis_layers::{cmd, Connector, Endpoint, ServiceBuilderExt};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// let conn = Connector::new().connect(Endpoint::tcp("127.0.0.1", 6379)).await?;
    /// // No Handoff: one connection, timeouts relaxed by its notifications.
    /// let svc = ServiceBuilder::new()
    ///     .redis_relax(Duration::from_millis(500))
    ///     .service(conn);
    /// svc.oneshot(cmd("GET").arg("k").into()).await?;
    /// # Ok(()) }
    /// ```
    fn redis_relax(self, default: Duration) -> ServiceBuilder<Stack<RelaxTimeoutLayer, L>>;

    /// Adds a [`RelaxTimeoutLayer::none`]: only requests that ask for a
    /// timeout ([`Request::with_timeout`](crate::Request::with_timeout))
    /// get one, relaxed during maintenance.
    ///
    /// ```
    /// use redis_layers::ServiceBuilderExt;
    /// use tower::ServiceBuilder;
    ///
    /// let builder = ServiceBuilder::new().redis_relax_none();
    /// # let _ = builder;
    /// ```
    fn redis_relax_none(self) -> ServiceBuilder<Stack<RelaxTimeoutLayer, L>>;

    /// Adds a [`HandoffLayer`] (configured: endpoint, maintenance settings,
    /// pool size, policy). It wraps a connection maker, so it is the last
    /// layer before `.service(connector)`.
    ///
    /// ```no_run
    /// use redis_layers::handoff::HandoffLayer;
    /// use redis_layers::maint::MaintenanceConfig;
    /// use redis_layers::{cmd, Connector, Endpoint, ServiceBuilderExt};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = MaintenanceConfig::default();
    /// let handoff = HandoffLayer::new(Endpoint::tcp("127.0.0.1", 6379))
    ///     .maintenance(&config)?
    ///     .pool_size(2)?;
    /// // No RelaxTimeout: MOVING is followed, but commands get no default deadline.
    /// let svc = ServiceBuilder::new()
    ///     .redis_handoff(handoff)
    ///     .service(Connector::new().maintenance(config)?);
    /// let events = svc.subscribe();
    /// svc.oneshot(cmd("PING").into()).await?;
    /// # let _ = events;
    /// # Ok(()) }
    /// ```
    fn redis_handoff<P>(self, layer: HandoffLayer<P>) -> ServiceBuilder<Stack<HandoffLayer<P>, L>>;

    /// Adds a [`ClusterLayer`]. It wraps a per-node maker, so it is the last
    /// layer before `.service(node_maker)`; each node's own stack is built
    /// in the maker.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redis_layers::cluster::{ClusterLayer, NodeRole};
    /// use redis_layers::handoff::HandoffLayer;
    /// use redis_layers::{cmd, Connector, Endpoint, ServiceBuilderExt};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// let connector = Connector::new();
    /// let node = move |endpoint: Endpoint, _role: NodeRole| {
    ///     ServiceBuilder::new()
    ///         .redis_relax(Duration::from_secs(1))
    ///         .redis_handoff(HandoffLayer::new(endpoint))
    ///         .service(connector.clone())
    /// };
    /// let cluster = ServiceBuilder::new()
    ///     .redis_cluster(ClusterLayer::new(vec![Endpoint::tcp("127.0.0.1", 7000)]))
    ///     .service(node);
    /// cluster.oneshot(cmd("SET").arg("{user:1}.name").arg("Ann").into()).await?;
    /// # Ok(()) }
    /// ```
    fn redis_cluster(self, layer: ClusterLayer) -> ServiceBuilder<Stack<ClusterLayer, L>>;

    /// Adds a [`RetryLayer`] (configured: retries, backoff, budget,
    /// classifier, or a policy of your own). It goes at the top, so a
    /// retried request is routed again. Give it the RelaxTimeout's
    /// timeout as its [`command_timeout`](RetryLayer::command_timeout):
    /// then a call, its waits for a connection and its retries included,
    /// ends within that one deadline (see
    /// [`retry`](crate::retry#one-deadline-per-call)).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redis_layers::handoff::HandoffLayer;
    /// use redis_layers::retry::RetryLayer;
    /// use redis_layers::{cmd, Connector, Endpoint, Request, ServiceBuilderExt};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let svc = ServiceBuilder::new()
    ///     .redis_retry(RetryLayer::new().max_retries(5).command_timeout(Some(Duration::from_secs(1))))
    ///     .redis_relax(Duration::from_secs(1))
    ///     .redis_handoff(HandoffLayer::new(Endpoint::tcp("127.0.0.1", 6379)))
    ///     .service(Connector::new());
    /// // A write is retried after a lost connection only when marked safe.
    /// svc.oneshot(Request::from(cmd("SET").arg("k").arg("v")).idempotent()).await?;
    /// # Ok(()) }
    /// ```
    fn redis_retry<P>(self, layer: RetryLayer<P>) -> ServiceBuilder<Stack<RetryLayer<P>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn redis_relax(self, default: Duration) -> ServiceBuilder<Stack<RelaxTimeoutLayer, L>> {
        self.layer(RelaxTimeoutLayer::new(default))
    }

    fn redis_relax_none(self) -> ServiceBuilder<Stack<RelaxTimeoutLayer, L>> {
        self.layer(RelaxTimeoutLayer::none())
    }

    fn redis_handoff<P>(self, layer: HandoffLayer<P>) -> ServiceBuilder<Stack<HandoffLayer<P>, L>> {
        self.layer(layer)
    }

    fn redis_cluster(self, layer: ClusterLayer) -> ServiceBuilder<Stack<ClusterLayer, L>> {
        self.layer(layer)
    }

    fn redis_retry<P>(self, layer: RetryLayer<P>) -> ServiceBuilder<Stack<RetryLayer<P>, L>> {
        self.layer(layer)
    }
}

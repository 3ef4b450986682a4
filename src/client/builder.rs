//! [`ClientBuilder`]: the default stack, and where it is decided.

use std::sync::Arc;
use std::time::Duration;

use tower::{Layer, Service};

use super::{BoxService, Client, ClusterHandle, Dedicated, FromValue, LazyPubSub};
use crate::cluster::keys::CommandTable;
use crate::cluster::{Cluster, ClusterConfig, NewNode, NodeRole};
use crate::dial::{DialLimit, DialLimitLayer};
use crate::error::{Error, Result};
use crate::handoff::{DefaultPolicy, Handoff, Settings};
use crate::maint::{Maintained, MaintenanceConfig, WithMaintenance};
use crate::relax::RelaxTimeout;
use crate::request::{Request, Response};
use crate::resp::cmd;
use crate::retry::RetryLayer;
use crate::transport::{Connector, Endpoint, Protocol};
use crate::trust::{SharedPolicy, TargetPolicy};

/// Standalone server or cluster; see the [module docs](super) for how
/// [`ServerMode::Auto`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ServerMode {
    /// Several seeds, or a server that says it is a cluster node: cluster.
    /// Otherwise standalone.
    #[default]
    Auto,
    /// One server (the first seed).
    Standalone,
    /// A Redis Cluster discovered from the seeds.
    Cluster,
}

type LayerFn = Arc<dyn Fn(BoxService) -> BoxService + Send + Sync>;

/// Builds a [`Client`]: where the server is, how to connect, the default
/// stack's settings, and layers of your own.
///
/// Defaults: [`ServerMode::Auto`], a 5 s command timeout (relaxed during
/// maintenance), the default [`MaintenanceConfig`], one multiplexed
/// connection per endpoint, the default [`ClusterConfig`], a default dial
/// limiter ([`dial_limit`](Self::dial_limit)).
///
/// ```no_run
/// use std::time::Duration;
/// use redis_layers::client::{ClientBuilder, ServerMode};
/// use redis_layers::{Endpoint, Protocol};
///
/// # async fn run() -> Result<(), redis_layers::Error> {
/// let client = ClientBuilder::from_url("redis://127.0.0.1:7000")?
///     .seed(Endpoint::tcp("127.0.0.1", 7001))
///     .command_timeout(Duration::from_millis(500)) // or None: no timeout
///     .protocol(Protocol::Resp2)
///     .build()
///     .await?;
/// assert!(client.is_cluster()); // two seeds
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    connector: Connector,
    seeds: Vec<Endpoint>,
    mode: ServerMode,
    timeout: Option<Duration>,
    maintenance: MaintenanceConfig,
    pool_size: usize,
    idle_dedicated: usize,
    cluster: ClusterConfig,
    retry: RetryLayer,
    layers: Vec<LayerFn>,
    node_layers: Vec<LayerFn>,
    trust: Option<SharedPolicy>,
    resolver: Option<crate::transport::Resolver>,
    /// `None`: a default limiter of its own for each client built.
    dials: Option<DialLimitLayer>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("connector", &self.connector)
            .field("seeds", &self.seeds)
            .field("mode", &self.mode)
            .field("timeout", &self.timeout)
            .field("pool_size", &self.pool_size)
            .field("idle_dedicated", &self.idle_dedicated)
            .field("retry", &self.retry)
            .field("layers", &self.layers.len())
            .field("node_layers", &self.node_layers.len())
            .field("dial_limit", &self.dials)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A builder for the server at `endpoint`, with a default [`Connector`].
    pub fn new(endpoint: Endpoint) -> Self {
        ClientBuilder {
            connector: Connector::new(),
            seeds: vec![endpoint],
            mode: ServerMode::Auto,
            timeout: Some(Duration::from_secs(5)),
            maintenance: MaintenanceConfig::default(),
            pool_size: 1,
            idle_dedicated: crate::handoff::IDLE_LEASES,
            cluster: ClusterConfig::default(),
            retry: RetryLayer::new(),
            layers: Vec::new(),
            node_layers: Vec::new(),
            trust: None,
            resolver: None,
            dials: None,
        }
    }

    /// A builder from a URL, as [`Connector::from_url`] reads it (scheme,
    /// credentials, database, `?protocol=2`).
    ///
    /// ```
    /// use redis_layers::client::ClientBuilder;
    /// assert!(ClientBuilder::from_url("redis://user:pw@localhost:6380/2").is_ok());
    /// assert!(ClientBuilder::from_url("localhost").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self> {
        let (connector, endpoint) = Connector::from_url(url)?;
        Ok(ClientBuilder::new(endpoint).connector(connector))
    }

    /// Replaces the connector (credentials, client name, database, limits,
    /// ...). Its maintenance configuration is replaced by the builder's at
    /// [`build`](Self::build).
    pub fn connector(mut self, connector: Connector) -> Self {
        self.connector = connector;
        self
    }

    /// The database every connection selects (the builder's connector's
    /// [`Connector::database`]; a later [`connector`](Self::connector)
    /// replaces it). Replayed on every new connection, after a handoff or
    /// a reconnect too; `SELECT` on the client's shared connections is
    /// refused ([`Error::Usage`]).
    ///
    /// ```
    /// use redis_layers::client::ClientBuilder;
    /// use redis_layers::transport::Tracking;
    /// use redis_layers::{cmd, Endpoint};
    ///
    /// let builder = ClientBuilder::new(Endpoint::tcp("127.0.0.1", 6379))
    ///     .database(2)
    ///     .client_name("billing")
    ///     .tracking(Tracking::bcast().prefix("price:"))
    ///     .on_connect(cmd("CLIENT").arg("NO-EVICT").arg("ON"));
    /// ```
    pub fn database(mut self, db: u32) -> Self {
        self.connector = self.connector.database(db);
        self
    }

    /// `CLIENT SETNAME` on every connection ([`Connector::client_name`]).
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.connector = self.connector.client_name(name);
        self
    }

    /// Client-side caching on every connection ([`Connector::tracking`]).
    pub fn tracking(mut self, tracking: crate::transport::Tracking) -> Self {
        self.connector = self.connector.tracking(tracking);
        self
    }

    /// A command run on every new connection ([`Connector::on_connect`]).
    pub fn on_connect(mut self, cmd: crate::Cmd) -> Self {
        self.connector = self.connector.on_connect(cmd);
        self
    }

    /// Adds a cluster seed (any node). Two seeds or more make
    /// [`ServerMode::Auto`] pick cluster.
    pub fn seed(mut self, endpoint: Endpoint) -> Self {
        self.seeds.push(endpoint);
        self
    }

    /// Standalone, cluster, or [`ServerMode::Auto`] (the default).
    pub fn mode(mut self, mode: ServerMode) -> Self {
        self.mode = mode;
        self
    }

    /// The protocol to ask for (RESP3 by default, falling back to RESP2).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.connector = self.connector.protocol(protocol);
        self
    }

    /// The per-command timeout (default 5 s; `None`: none), relaxed during
    /// maintenance. Blocking commands get none. At most
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT) (a longer one is clamped to it).
    ///
    /// One deadline per call: dialling and the handshake, every retry and
    /// every backoff spend it, so a call ends within it plus a small bound
    /// (see the [client docs](crate::client#one-deadline-per-call)). The
    /// [`retry`](Self::retry) layer gets it as its
    /// [`command_timeout`](RetryLayer::command_timeout).
    pub fn command_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into().map(crate::time::clamp);
        self
    }

    /// The maintenance configuration of the connector and the Handoff
    /// layer; checked at [`build`](Self::build).
    pub fn maintenance(mut self, config: MaintenanceConfig) -> Self {
        self.maintenance = config;
        self
    }

    /// Multiplexed connections per endpoint (default 1; at least 1).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// How many push frames a pub/sub connection keeps for its reader
    /// before it drops newer ones (default
    /// [`PushReceiver::DEFAULT_CAPACITY`](crate::PushReceiver::DEFAULT_CAPACITY),
    /// 1024): [`Connector::push_capacity`] on the builder's connector, which
    /// [`Client::pubsub`] uses. Dropped frames reach subscribers as
    /// [`Event::Lagged`](crate::pubsub::Event::Lagged). The command
    /// connections keep no pushes at all: nobody reads them. Set it after
    /// [`connector`](Self::connector), which replaces the connector.
    ///
    /// ```
    /// use redis_layers::client::ClientBuilder;
    /// use redis_layers::Endpoint;
    /// let builder = ClientBuilder::new(Endpoint::tcp("127.0.0.1", 6379)).push_capacity(16_384);
    /// ```
    pub fn push_capacity(mut self, frames: usize) -> Self {
        self.connector = self.connector.push_capacity(frames);
        self
    }

    /// How many clean dedicated connections (those of `watch`, `blpop`,
    /// `brpop`, and a cluster's `scan`) to keep per endpoint for the next
    /// one (default 8; 0: a new connection each time). A connection is
    /// kept only when nothing is left on it: a `BLPOP` whose caller gave
    /// up, or a `WATCH` not followed by its transaction, closes it.
    ///
    /// ```
    /// use redis_layers::client::ClientBuilder;
    /// use redis_layers::Endpoint;
    /// let builder = ClientBuilder::new(Endpoint::tcp("127.0.0.1", 6379)).idle_dedicated(32);
    /// ```
    pub fn idle_dedicated(mut self, n: usize) -> Self {
        self.idle_dedicated = n;
        self
    }

    /// The retry layer at the top of the stack (default
    /// [`RetryLayer::new`]: up to 3 retries of what cannot have been
    /// applied, or is safe to apply twice; see [`retry`](crate::retry)).
    /// `RetryLayer::new().max_retries(0)` turns retries off.
    ///
    /// ```no_run
    /// use redis_layers::client::ClientBuilder;
    /// use redis_layers::retry::RetryLayer;
    ///
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// let client = ClientBuilder::from_url("redis://127.0.0.1:6379")?
    ///     .retry(RetryLayer::new().max_retries(5))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn retry(mut self, layer: RetryLayer) -> Self {
        self.retry = layer;
        self
    }

    /// Which server-named endpoints are followed: `MOVING` targets (default
    /// [`DefaultTargetPolicy`](crate::trust::DefaultTargetPolicy)) and, in a
    /// cluster, `MOVED`/`ASK`/`SMIGRATED` targets too (which are followed
    /// only to members of the cluster in any case). See
    /// [`trust`](crate::trust).
    ///
    /// ```
    /// use redis_layers::client::ClientBuilder;
    /// use redis_layers::trust::{AllowSuffix, DefaultTargetPolicy, TargetPolicyExt};
    /// use redis_layers::Endpoint;
    ///
    /// let builder = ClientBuilder::new(Endpoint::tcp("redis-1.db.example.com", 6379))
    ///     .target_policy(DefaultTargetPolicy.or(AllowSuffix::new("failover.example.net")));
    /// ```
    pub fn target_policy(mut self, policy: impl TargetPolicy) -> Self {
        self.trust = Some(SharedPolicy::new(policy));
        self
    }

    /// Resolves host names with `resolver` (default: the system's): for
    /// every dial, and to wait, after a `MOVING` that names a host (or has
    /// a null endpoint), until DNS leads away from the node being retired
    /// (see [DNS that lags behind `MOVING`](crate::handoff#dns-that-lags-behind-moving)).
    ///
    /// ```
    /// use redis_layers::client::ClientBuilder;
    /// use redis_layers::transport::system_resolver;
    /// use redis_layers::Endpoint;
    ///
    /// let builder = ClientBuilder::new(Endpoint::tcp("db.example", 6379)).resolver(system_resolver());
    /// # let _ = builder;
    /// ```
    pub fn resolver(mut self, resolver: crate::transport::Resolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// The dial limiter under every Handoff of the client (see
    /// [`dial`](crate::dial)): on by default, each client with a
    /// [`DialLimitLayer::new`] of its own (16 dials in progress, 200 starts
    /// per second after a burst of 16, 5 s of queueing at most). These
    /// limits cost nothing to a client that dials a few connections, and
    /// keep one that re-dials hundreds at once (a pool after a mass
    /// connection loss or a `MOVING`) from storming the server. One
    /// limiter serves the whole client: the standalone endpoint, or every
    /// node of a cluster, command, dedicated and pub/sub connections
    /// alike.
    ///
    /// `None` turns the limits off ([`DialLimitLayer::unlimited`]). A
    /// layer given here is shared with the clients built with it: keep a
    /// clone to read its [`stats`](DialLimitLayer::stats), and give each
    /// client a layer of its own for separate limits.
    ///
    /// ```no_run
    /// use redis_layers::client::ClientBuilder;
    /// use redis_layers::dial::DialLimitLayer;
    ///
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// let dials = DialLimitLayer::new().concurrency(64).rate(1_000);
    /// let client = ClientBuilder::from_url("redis://127.0.0.1:6379")?
    ///     .pool_size(256)
    ///     .dial_limit(dials.clone())
    ///     .build()
    ///     .await?;
    /// client.ping().await?;
    /// println!("{:?}", dials.stats());
    /// # Ok(()) }
    /// ```
    pub fn dial_limit(mut self, limit: impl Into<Option<DialLimitLayer>>) -> Self {
        self.dials = Some(limit.into().unwrap_or_else(DialLimitLayer::unlimited));
        self
    }

    /// How the cluster routes and refreshes (cluster mode only).
    pub fn cluster_config(mut self, config: ClusterConfig) -> Self {
        self.cluster = config;
        self
    }

    /// Wraps the stack in `layer` (outside the layers added before).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use redis_layers::client::ClientBuilder;
    ///
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// // Any tower layer whose service keeps the request, response and error types.
    /// let client = ClientBuilder::from_url("redis://127.0.0.1")?
    ///     .layer(tower::util::MapRequestLayer::new(|r: redis_layers::Request| r))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxService> + Send + Sync + 'static,
        L::Service:
            Service<Request, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.layers.push(boxed(layer));
        self
    }

    /// Adds `layer` to every node's stack, above its RelaxTimeout: in a
    /// cluster, each node's service is `layer` over RelaxTimeout over
    /// Handoff (so a `ConcurrencyLimitLayer` limits each node apart);
    /// standalone, the one endpoint's. Layers added later wrap those added
    /// before. Unlike a stack given to [`Client::from_service`], the
    /// client keeps everything else: pub/sub, `WATCH`, blocking commands
    /// and dedicated connections (which do not go through these layers),
    /// and the cluster routing and maintenance handling above them.
    ///
    /// ```no_run
    /// use redis_layers::client::ClientBuilder;
    /// use tower::limit::ConcurrencyLimitLayer;
    ///
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// // At most 64 requests in flight per node.
    /// let client = ClientBuilder::from_url("redis://127.0.0.1")?
    ///     .node_layer(ConcurrencyLimitLayer::new(64))
    ///     .build()
    ///     .await?;
    /// client.set("k", "v").await?;
    /// # Ok(()) }
    /// ```
    pub fn node_layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<BoxService> + Send + Sync + 'static,
        L::Service:
            Service<Request, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.node_layers.push(boxed(layer));
        self
    }

    /// Builds the client: checks the configuration, decides standalone or
    /// cluster (asking the server under [`ServerMode::Auto`] with one
    /// seed), and assembles the stack. Connections are otherwise made on
    /// first use.
    ///
    /// Errors: [`Error::Config`] for an invalid configuration; a connection
    /// error when the server must be asked and cannot be reached.
    pub async fn build(self) -> Result<Client> {
        if self.seeds.is_empty() {
            return Err(Error::config("no server: give at least one seed"));
        }
        let resolved = self.maintenance.validate()?;
        if self.pool_size == 0 {
            return Err(Error::config("pool_size must be at least 1, got 0"));
        }
        let mut settings =
            Settings::new(&resolved, self.pool_size).idle_leases(self.idle_dedicated);
        let mut cluster_config = self.cluster.clone();
        if let Some(trust) = &self.trust {
            settings = settings.trust(trust.clone());
            cluster_config = cluster_config.shared_policy(trust.clone());
        }
        let mut connector = self
            .connector
            .clone()
            .maintenance(self.maintenance.clone())?;
        if let Some(r) = &self.resolver {
            settings = settings.resolver(Some(r.clone()));
            connector = connector.resolver(r.clone());
        }
        let cluster = match self.mode {
            ServerMode::Standalone => false,
            ServerMode::Cluster => true,
            ServerMode::Auto if self.seeds.len() > 1 => true,
            ServerMode::Auto => is_cluster(&connector, &self.seeds[0], self.timeout).await?,
        };
        let stack_connector = connector.clone();
        let dials = self.dials.clone().unwrap_or_default();
        let dials_for_pubsub = dials.clone();
        let (svc, dedicated) = if cluster {
            let maker = NodeMaker {
                connector: connector.clone(),
                dials: dials.clone(),
                settings: settings.clone(),
                timeout: self.timeout,
            };
            let (svc, cluster) = if self.node_layers.is_empty() {
                let c = Cluster::new(maker, self.seeds.clone(), cluster_config);
                (self.stack(c.clone()), AnyCluster::Plain(c))
            } else {
                let maker = LayeredNodeMaker {
                    base: maker,
                    layers: self.node_layers.clone().into(),
                };
                let c = Cluster::new(maker, self.seeds.clone(), cluster_config);
                (self.stack(c.clone()), AnyCluster::Layered(c))
            };
            let handle = ClusterHandle {
                cluster,
                connector,
                dials,
                table: CommandTable::default(),
                settings,
                leases: Default::default(),
            };
            (svc, Dedicated::Cluster(Arc::new(handle)))
        } else {
            let handoff = Handoff::with_settings(
                dials.layer(connector),
                self.seeds[0].clone(),
                settings,
                DefaultPolicy,
            );
            // Nobody reads the command stack's pushes (pub/sub has its own
            // connection): dropped, they are discarded as they arrive.
            drop(handoff.take_pushes());
            let svc = RelaxTimeout::new(handoff.clone(), self.timeout);
            let svc = if self.node_layers.is_empty() {
                self.stack(svc)
            } else {
                let svc = self
                    .node_layers
                    .iter()
                    .fold(BoxService::new(svc), |svc, layer| layer(svc));
                self.stack(svc)
            };
            (svc, Dedicated::Standalone(Arc::new(handoff)))
        };
        let pubsub = Some(Arc::new(LazyPubSub {
            cell: Default::default(),
            shard: Default::default(),
            dialer: crate::pubsub::Dialer {
                connector: self.connector.clone(),
                dials: dials_for_pubsub,
                resolver: self.resolver.clone(),
            },
            endpoint: self.seeds[0].clone(),
            config: self.maintenance.clone(),
        }));
        Ok(Client {
            svc: Arc::new(super::ready::Ready::new(svc, self.pool_size)),
            dedicated,
            pubsub,
            timeout: self.timeout,
            connector: Some(stack_connector),
        })
    }

    /// The layers over the routing/endpoint service, innermost first.
    fn stack<S>(&self, svc: S) -> BoxService
    where
        S: Service<Request, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        // Retry right over Cluster / RelaxTimeout: a retried request is
        // routed again. It holds the call's one deadline (the command
        // timeout), which every attempt and wait spends. Not boxed below
        // Retry: it clones its inner service per request, and a boxed
        // one would cost an allocation each time.
        let retry = self.retry.clone().command_timeout(self.timeout);
        let svc = BoxService::new(retry.layer(svc));
        self.layers.iter().fold(svc, |svc, layer| layer(svc))
    }
}

/// Asks the server whether it is a cluster node: `mode` from `HELLO`
/// (RESP3), else `cluster_enabled` from `INFO cluster`.
async fn is_cluster(
    connector: &Connector,
    seed: &Endpoint,
    timeout: Option<Duration>,
) -> Result<bool> {
    let conn = connector.connect(seed.clone()).await?;
    let said = conn.info().and_then(|i| i.mode.clone());
    let answer = match said {
        Some(mode) => mode == "cluster",
        None => {
            let info = conn.send_cmd(cmd("INFO").arg("cluster"));
            let info = match timeout {
                Some(t) => tokio::time::timeout(t, info)
                    .await
                    .map_err(|_| Error::Timeout)??,
                None => info.await?,
            };
            String::from_value(info)?
                .lines()
                .any(|l| l.trim() == "cluster_enabled:1")
        }
    };
    conn.close();
    Ok(answer)
}

/// The default per-node stack of a cluster client: RelaxTimeout over
/// Handoff over the dial limiter (one for all nodes) over the connector
/// (`READONLY` on replicas).
#[derive(Clone)]
pub(super) struct NodeMaker {
    connector: Connector,
    dials: DialLimitLayer,
    settings: Settings,
    timeout: Option<Duration>,
}

impl NewNode for NodeMaker {
    type Node = RelaxTimeout<Handoff<DialLimit<Connector>>>;

    fn new_node(&self, endpoint: Endpoint, role: NodeRole) -> Self::Node {
        let connector = match role {
            NodeRole::Primary => self.connector.clone(),
            NodeRole::Replica => self.connector.clone().on_connect(cmd("READONLY")),
        };
        let handoff = Handoff::with_settings(
            self.dials.layer(connector),
            endpoint,
            self.settings.clone(),
            DefaultPolicy,
        );
        // Nobody reads a node's pushes: discarded as they arrive.
        drop(handoff.take_pushes());
        RelaxTimeout::new(handoff, self.timeout)
    }
}

/// `layer` as a function over boxed stacks.
fn boxed<L>(layer: L) -> LayerFn
where
    L: Layer<BoxService> + Send + Sync + 'static,
    L::Service:
        Service<Request, Response = Response, Error = Error> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request>>::Future: Send + 'static,
{
    Arc::new(move |svc| BoxService::new(layer.layer(svc)))
}

/// A cluster's per-node stack under the builder's node layers: the
/// default node stack, boxed under them, carrying its maintenance (the
/// layers may hide it).
#[derive(Clone)]
pub(super) struct LayeredNodeMaker {
    base: NodeMaker,
    layers: Arc<[LayerFn]>,
}

impl NewNode for LayeredNodeMaker {
    type Node = WithMaintenance<BoxService>;

    fn new_node(&self, endpoint: Endpoint, role: NodeRole) -> Self::Node {
        let node = self.base.new_node(endpoint, role);
        let handle = node.maintenance_handle();
        let svc = self
            .layers
            .iter()
            .fold(BoxService::new(node), |svc, layer| layer(svc));
        WithMaintenance::new(svc, handle)
    }
}

/// The client's cluster, with or without node layers.
#[derive(Clone)]
pub(super) enum AnyCluster {
    Plain(Cluster<NodeMaker>),
    Layered(Cluster<LayeredNodeMaker>),
}

impl AnyCluster {
    pub(super) fn slot_map(&self) -> crate::cluster::topology::SlotMap {
        match self {
            AnyCluster::Plain(c) => c.slot_map(),
            AnyCluster::Layered(c) => c.slot_map(),
        }
    }

    pub(super) async fn refresh(&self) -> Result<()> {
        match self {
            AnyCluster::Plain(c) => c.refresh().await,
            AnyCluster::Layered(c) => c.refresh().await,
        }
    }

    pub(super) async fn follows(&self, source: crate::trust::Source, addr: &Endpoint) -> bool {
        match self {
            AnyCluster::Plain(c) => c.follows(source, addr).await,
            AnyCluster::Layered(c) => c.follows(source, addr).await,
        }
    }
}

//! The [`Client`] facade: the default stack, built from a URL, and typed
//! helpers for the common commands.
//!
//! ```no_run
//! use redis_layers::client::Client;
//!
//! # async fn run() -> Result<(), redis_layers::Error> {
//! let client = Client::open("redis://127.0.0.1:6379").await?;
//! client.set("greeting", "hello").await?;
//! let v: Option<String> = client.get("greeting").await?;
//! let n = client.incr("visits").await?;
//! let (a, b): (i64, String) = client.pipeline().incr_by("n", 2).get("greeting").query().await?;
//! # Ok(()) }
//! ```
//!
//! # The stack
//!
//! [`ClientBuilder::build`] assembles, with the maintenance configuration
//! given to it (the same for every layer):
//!
//! - standalone: `Retry(RelaxTimeout(Handoff(Connector)))`;
//! - cluster: `Retry(Cluster)` over, per node,
//!   `RelaxTimeout(Handoff(Connector))` (replicas' connectors send
//!   `READONLY`).
//!
//! Retry is [`RetryLayer::new`](crate::retry::RetryLayer::new) unless
//! [`ClientBuilder::retry`] says otherwise.
//!
//! # One deadline per call
//!
//! A call through the stack ([`Client::send`], [`Client::cmd`], the typed
//! helpers, pipelines and transactions) ends, with its reply or an error,
//! within its command timeout ([`ClientBuilder::command_timeout`], or the
//! request's own [`Request::with_timeout`]) plus the time an attempt waited
//! in a connection's queue before it was written and scheduling delays
//! (every call within 504 ms of a 500 ms timeout in `tests/deadline.rs`,
//! against a server that never answers, one that never answers `HELLO`,
//! and one that hangs up on every connection). The Retry layer holds the
//! deadline (see [`retry`](crate::retry#one-deadline-per-call)); dialling
//! and the handshake (waiting for a connection), every attempt and every
//! backoff spend it; a call that runs out fails with [`Error::Timeout`]
//! (or the last failure, when no retry could start in time).
//!
//! - While the endpoint is relaxed (maintenance), an attempt may wait
//!   `max(time left, relaxed timeout)` for its reply (see
//!   [`relax`](crate::relax)): the budget is then the relaxed one.
//! - Blocking commands keep their own timeout: [`Client::blpop`] with 2 s
//!   waits 2 s, whatever the command timeout (so do requests sent with
//!   [`Request::without_timeout`]); they run on dedicated connections,
//!   whose dial is bounded by the connector's connect timeout.
//! - [`Client::watch`] and the requests of a [`Watch`] get the command
//!   timeout each; taking the dedicated connection (its dial and
//!   handshake) is bounded by the command timeout too.
//! - In a cluster, routing within an attempt (a node's first connection, a
//!   slot map refresh) spends the same budget; see
//!   [`retry`](crate::retry#one-deadline-per-call).
//!
//! Layers added with [`ClientBuilder::layer`] wrap the whole stack,
//! outermost last. The stack is a [`BoxService`]
//! (`tower::util::BoxCloneSyncService<Request, Response, Error>`): take it
//! with [`Client::service`], or make a client from a stack of your own
//! with [`Client::from_service`].
//!
//! # Standalone or cluster
//!
//! [`ServerMode::Auto`] (the default) picks cluster when the builder has
//! several seeds, and otherwise asks the one server at build time: the
//! `mode` field of its `HELLO` reply (RESP3), or `cluster_enabled:1` in
//! `INFO cluster` (RESP2). Building therefore dials the server once, and
//! fails early when it cannot be reached. [`ServerMode::Standalone`] and
//! [`ServerMode::Cluster`] skip the question.
//!
//! # Dedicated connections
//!
//! Commands share multiplexed connections, except those that hold a
//! connection: blocking pops ([`Client::blpop`], [`Client::brpop`]) and
//! [`Client::watch`]. Standalone, they take a connection leased from the
//! Handoff layer ([`Handoff::lease`](crate::handoff::Handoff::lease)); in
//! a cluster, a new connection to the primary that serves the keys' slot
//! (all keys must be in one slot: use hash tags). A client made with
//! [`Client::from_service`] has none: those helpers fail with
//! [`Error::Config`].
//!
//! # Pipelines and transactions
//!
//! [`Client::pipeline`] collects commands and sends them as one request;
//! [`Batch::query`] converts the replies, in order, into a tuple or a
//! `Vec`. [`Client::transaction`] does the same between `MULTI` and `EXEC`,
//! as one request on a shared connection (a connection writes a request
//! whole, so nothing comes between its commands); in a cluster, the
//! cluster layer sends it to the primary of the commands' slot (all keys in
//! one slot, or [`Error::Config`] and nothing is sent). [`Client::watch`] starts an optimistic
//! transaction: `WATCH` on a dedicated connection, reads on it, then
//! [`Watch::exec`], which returns `None` when a watched key changed.
//!
//! # Order
//!
//! A call's reply means the server applied it: a task that awaits each
//! call before the next gets them applied in that order, across handoffs,
//! pool entries and reconnects, standalone or cluster (except after a
//! timeout: the attempt that timed out may still be applied later, also
//! when the Retry layer's next attempt succeeded). Calls in flight
//! together are not ordered, even from one task (`join!`,
//! `FuturesUnordered`, spawned tasks): a call goes through whichever
//! clone of the stack is free on its thread (the client keeps warm clones
//! for its calls, so that each does not rebuild the per-clone caches), and
//! the Handoff layer keeps order per clone only (see
//! [`handoff`](crate::handoff)). For requests in order without awaiting
//! each: a pipeline or transaction (one request, its commands written in
//! order), or, standalone, one clone of [`Client::service`] driven with
//! `poll_ready`/`call` in turn (a request the Retry layer sends again is
//! not ordered with those sent after it, nor is one that failed).

mod batch;
mod builder;
mod commands;
mod from_value;
mod ready;
mod scan;
mod script;
mod shard;

use std::sync::Arc;
use std::time::Duration;

use tower::{Service, ServiceExt};

use crate::cluster::keys::{CommandTable, Route, RouteError};
use crate::error::{Error, Result};
use crate::handoff::{DefaultPolicy, Handoff, Leased};
use crate::pubsub::{PubSub, Subscription};
use crate::request::{Request, Response};
use crate::resp::{cmd, Cmd, ToArg, ToArgs};
use crate::transport::{Connector, Endpoint};

pub use batch::{Batch, Watch};
pub use builder::{ClientBuilder, ServerMode};
pub use commands::{BitOp, Expiry, ListEnd, SetOptions, StreamEntry, StreamReads};
pub use from_value::FromValue;
pub use ready::{Call, TypedCall};
pub use scan::{Scan, ScanStream};
pub use script::Script;

use builder::AnyCluster;

/// The stack a [`Client`] sends through: a boxed, cloneable, `Sync` tower
/// service over the crate's request and response types.
pub type BoxService = tower::util::BoxCloneSyncService<Request, Response, Error>;

/// A Redis client: the default stack behind typed helpers.
///
/// Cheap to clone, `Send + Sync`: clones share the connections. See the
/// [module docs](self) for the stack, cluster detection, dedicated
/// connections, transactions and which calls keep their order (one task
/// awaiting each call in turn: yes; calls in flight together: no).
///
/// ```no_run
/// use std::collections::HashMap;
/// use redis_layers::client::Client;
///
/// # async fn run() -> Result<(), redis_layers::Error> {
/// let client = Client::open("redis://127.0.0.1:6379/0").await?;
/// client.hset_multiple("user:1", [("name", "Ann"), ("city", "Oslo")]).await?;
/// let user: HashMap<String, String> = client.hgetall("user:1").await?;
/// let ttl = client.ttl("user:1").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    /// The stack, and the warm clones of it that calls reuse (see `ready`).
    svc: Arc<ready::Ready>,
    dedicated: Dedicated,
    /// Pub/sub's own connection, made on the first subscribe.
    pubsub: Option<Arc<LazyPubSub>>,
    /// The timeout given to requests on dedicated connections (they do not
    /// go through RelaxTimeout).
    timeout: Option<Duration>,
    /// The stack's connector, for the endpoints' maintenance status
    /// (`None` for a client made with `from_service`).
    connector: Option<Connector>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.dedicated {
            Dedicated::Standalone(h) => format!("standalone {}", h.endpoint()),
            Dedicated::Cluster(_) => "cluster".to_string(),
            Dedicated::None => "custom service".to_string(),
        };
        f.debug_struct("Client")
            .field("kind", &kind)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What [`Client::pubsub`] needs to make the pub/sub connection.
struct LazyPubSub {
    cell: std::sync::Mutex<Option<PubSub>>,
    /// A cluster's shard pub/sub: a connection per node, each made on
    /// first use (see `shard`).
    shard: std::sync::Mutex<Option<PubSub>>,
    dialer: crate::pubsub::Dialer,
    endpoint: Endpoint,
    config: crate::maint::MaintenanceConfig,
}

/// The maker under the client's Handoffs: the connector, dials limited.
type Maker = crate::dial::DialLimit<Connector>;

/// Where dedicated connections come from.
#[derive(Clone)]
enum Dedicated {
    Standalone(Arc<Handoff<Maker>>),
    Cluster(Arc<ClusterHandle>),
    None,
}

struct ClusterHandle {
    cluster: AnyCluster,
    connector: Connector,
    /// The client's dial limiter, for the dedicated connections too.
    dials: crate::dial::DialLimitLayer,
    table: CommandTable,
    /// For each node's dedicated connections.
    settings: crate::handoff::Settings,
    /// Each node's dedicated connections: leases of a Handoff of its own
    /// (made on first use), which keeps the clean ones for the next.
    leases: std::sync::Mutex<std::collections::HashMap<Endpoint, Arc<Handoff<Maker>>>>,
}

impl ClusterHandle {
    /// The one slot every keyed command of `cmds` is in (`None`: no keys).
    fn slot_of(&self, cmds: &[Cmd]) -> Result<Option<u16>> {
        let mut slot = None;
        for c in cmds {
            match self.table.route(c) {
                Ok(Route::Slot(s)) => match slot {
                    Some(seen) if seen != s => {
                        return Err(Error::config(format!(
                            "keys in slots {seen} and {s}: in a cluster, the keys of a \
                             transaction, WATCH or blocking command must share a slot (use hash tags)"
                        )))
                    }
                    _ => slot = Some(s),
                },
                Ok(Route::AnyPrimary) | Err(RouteError::UnknownCommand(_)) => {}
                Ok(_) => {
                    return Err(Error::config(format!(
                        "{c:?} goes to several nodes: it cannot be part of a cluster transaction"
                    )))
                }
                Err(e) => return Err(Error::config(e.to_string())),
            }
        }
        Ok(slot)
    }

    /// The primary serving `slot` (any primary for `None`).
    async fn endpoint_for(&self, slot: Option<u16>) -> Result<Endpoint> {
        for attempt in 0..2 {
            let map = self.cluster.slot_map();
            let found = match slot {
                Some(s) => map.primary_for(s).cloned(),
                None => map.primaries().into_iter().next(),
            };
            if let Some(e) = found {
                return Ok(e);
            }
            if attempt == 0 {
                self.cluster.refresh().await?;
            }
        }
        Err(Error::config(format!(
            "no primary serves slot {slot:?} in the cluster's slot map"
        )))
    }

    /// Where the dedicated connections to `endpoint` come from.
    fn leases(&self, endpoint: &Endpoint) -> Arc<Handoff<Maker>> {
        crate::lock(&self.leases)
            .entry(endpoint.clone())
            .or_insert_with(|| {
                let h = Handoff::with_settings(
                    tower::Layer::layer(&self.dials, self.connector.clone()),
                    endpoint.clone(),
                    self.settings.clone(),
                    DefaultPolicy,
                );
                // Only leases: nobody reads pushes.
                drop(h.take_pushes());
                Arc::new(h)
            })
            .clone()
    }
}

/// A connection of one's own: a lease of the standalone Handoff, or of a
/// cluster node's. Given back clean (see [`Leased`]), it serves the next.
#[derive(Debug)]
struct DedicatedConn {
    lease: Leased<Maker, DefaultPolicy>,
    from: Arc<Handoff<Maker>>,
    /// Taken from the idle ones, and not used yet.
    reused: bool,
}

/// How many idle connections in a row may turn out closed before the
/// first request of a dedicated connection fails. Each try takes another
/// idle one, so the idle ones bound it; this is a backstop.
const STALE_TRIES: usize = 64;

/// A first request that fails later than this after it was sent is not
/// sent again: it reached a connection that was open (a `BLPOP` that
/// waited, say), not one the server had closed before.
const STALE_WINDOW: Duration = Duration::from_secs(1);

impl DedicatedConn {
    async fn leased(from: &Arc<Handoff<Maker>>) -> Result<DedicatedConn> {
        let lease = from.lease().await?;
        // Nobody reads a dedicated connection's pushes (invalidations of
        // `CLIENT TRACKING` from `on_connect`, say): discarded as they
        // arrive. A no-op for one taken again.
        drop(lease.get_ref().take_pushes());
        Ok(DedicatedConn {
            reused: lease.is_reused(),
            lease,
            from: from.clone(),
        })
    }

    /// Sends `req`. The first request on an idle connection taken again
    /// that fails at once for the connection goes again on another one:
    /// the server closed the idle connection a moment before, and the
    /// client had not seen it yet. Never written ([`Error::Closed`]): sent
    /// again whatever it is. Written, and an I/O error within
    /// `STALE_WINDOW`: it most likely never reached the server, but it may
    /// have run, so it is sent again only when running it twice is
    /// harmless ([`harmless_twice`]).
    async fn send(&mut self, req: Request) -> Result<Response> {
        for _ in 0..STALE_TRIES {
            if !std::mem::take(&mut self.reused) {
                break;
            }
            let sent = std::time::Instant::now();
            match self.send_once(req.clone()).await {
                Err(Error::Closed) => self.replace().await?,
                Err(Error::Io(_)) if sent.elapsed() < STALE_WINDOW && harmless_twice(&req) => {
                    self.replace().await?
                }
                out => return out,
            }
        }
        self.send_once(req).await
    }

    async fn send_once(&mut self, req: Request) -> Result<Response> {
        self.lease.ready().await?.call(req).await
    }

    /// Another connection in place of this closed one: the next idle one,
    /// or a new one.
    async fn replace(&mut self) -> Result<()> {
        // Closed when given back: at the swap below, or if this is dropped
        // while the next one is dialled.
        self.lease.mark_dirty();
        *self = DedicatedConn::leased(&self.from.clone()).await?;
        Ok(())
    }

    /// The client's transaction after its `WATCH` is over: nothing it did
    /// stays on the connection.
    fn mark_clean(&mut self) {
        self.lease.mark_clean();
    }
}

/// The first requests of a dedicated connection that may be sent again
/// after they might have run ([`DedicatedConn::send`]): `WATCH` (the watch
/// starts over before any read), `SCAN`, `XREAD` (reads), and the blocking
/// pops that hand the caller what they take (`BLPOP`, `BRPOP`, `BZPOPMIN`,
/// `BZPOPMAX`: if the first run popped an element, its reply, and so the
/// element, was lost with the connection whether or not the pop runs
/// again). Not the ones that move or pop several elements for a reply the
/// caller would not see: `BLMOVE`, `BRPOPLPUSH`, `BLMPOP`, `BZMPOP`, nor
/// `XREADGROUP` (it claims entries for the consumer).
fn harmless_twice(req: &Request) -> bool {
    const HARMLESS: &[&str] = &[
        "WATCH", "SCAN", "XREAD", "BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX",
    ];
    req.cmds().iter().all(|c| HARMLESS.iter().any(|n| c.is(n)))
}

impl Client {
    /// A client for the server at `url` (see [`ClientBuilder::from_url`]),
    /// with the default stack; standalone or cluster as the server says.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// let client = redis_layers::client::Client::open("redis://:secret@127.0.0.1:6379/1").await?;
    /// assert_eq!(client.ping().await?, "PONG");
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<Client> {
        ClientBuilder::from_url(url)?.build().await
    }

    /// A builder for the server at `url`: [`ClientBuilder::from_url`].
    pub fn builder(url: &str) -> Result<ClientBuilder> {
        ClientBuilder::from_url(url)
    }

    /// A client over a stack of your own. It has no dedicated connections:
    /// [`Client::watch`], [`Client::blpop`] and [`Client::brpop`] fail with
    /// [`Error::Config`]. Everything else, transactions included (`MULTI
    /// ... EXEC` as one request), goes through `svc`.
    ///
    /// ```no_run
    /// use redis_layers::client::{BoxService, Client};
    /// use redis_layers::{Connector, Endpoint};
    ///
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// let conn = Connector::new().connect(Endpoint::tcp("127.0.0.1", 6379)).await?;
    /// let client = Client::from_service(BoxService::new(conn));
    /// client.set("k", 1).await?;
    /// # Ok(()) }
    /// ```
    pub fn from_service(svc: BoxService) -> Client {
        Client {
            svc: Arc::new(ready::Ready::new(svc, 1)),
            dedicated: Dedicated::None,
            pubsub: None,
            timeout: None,
            connector: None,
        }
    }

    /// The client's [`PubSub`]: its own connection (a [`Handoff`] of its
    /// own, so it follows `MOVING` and resubscribes after a reconnect),
    /// made on first use and shared by every clone of the client. In a
    /// cluster it is a connection to the first seed: `PUBLISH` reaches
    /// every node of a cluster, so `SUBSCRIBE` and `PSUBSCRIBE` work from
    /// any node. Its `SSUBSCRIBE` works only for shard channels that node
    /// serves; [`Client::ssubscribe`] routes shard channels by slot.
    ///
    /// Errors: [`Error::Config`] for a client made with
    /// [`Client::from_service`], which knows no endpoint.
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::Client) -> Result<(), redis_layers::Error> {
    /// let pubsub = client.pubsub()?.buffer(10_000);
    /// let sub = pubsub.subscribe(["news"]).await?;
    /// # Ok(()) }
    /// ```
    pub fn pubsub(&self) -> Result<PubSub> {
        let lazy = self.pubsub.as_ref().ok_or_else(|| {
            Error::config("pub/sub needs a client built from an endpoint (not from_service)")
        })?;
        let mut cell = lazy.cell.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &*cell {
            return Ok(p.clone());
        }
        let p = PubSub::dialled(&lazy.dialer, lazy.endpoint.clone(), &lazy.config)?;
        *cell = Some(p.clone());
        Ok(p)
    }

    /// Subscribes to `channels` (`SUBSCRIBE`): a [`Subscription`], a
    /// `Stream` of [`Event`](crate::pubsub::Event)s that survives handoffs
    /// and reconnects (see [`pubsub`](crate::pubsub) for what a reconnect
    /// may lose and how it is reported).
    ///
    /// ```no_run
    /// use redis_layers::pubsub::Event;
    /// # async fn run(client: redis_layers::Client) -> Result<(), redis_layers::Error> {
    /// let mut sub = client.subscribe(["news"]).await?;
    /// client.publish("news", "hello").await?;
    /// if let Some(Event::Message(m)) = sub.recv().await {
    ///     assert_eq!(&m.payload[..], b"hello");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<I>(&self, channels: I) -> Result<Subscription>
    where
        I: IntoIterator,
        I::Item: Into<bytes::Bytes>,
    {
        self.pubsub()?.subscribe(channels).await
    }

    /// Subscribes to `patterns` (`PSUBSCRIBE`); see [`Client::subscribe`].
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::Client) -> Result<(), redis_layers::Error> {
    /// let sub = client.psubscribe(["alerts.*"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn psubscribe<I>(&self, patterns: I) -> Result<Subscription>
    where
        I: IntoIterator,
        I::Item: Into<bytes::Bytes>,
    {
        self.pubsub()?.psubscribe(patterns).await
    }

    /// Subscribes to shard `channels` (`SSUBSCRIBE`, Redis 7); see
    /// [`Client::subscribe`].
    ///
    /// Standalone, on the [`Client::pubsub`] connection. In a cluster, on
    /// a connection to the primary serving the channels' slot (one per
    /// node, made on first use and shared by every clone of the client):
    /// the channels of one call must share a slot (use hash tags), or
    /// [`Error::Config`] and nothing is sent. When the slot moves, Redis
    /// ends the subscription; it is made again on the slot's new primary,
    /// with [`Event::Disconnected`](crate::pubsub::Event::Disconnected)
    /// and then [`Event::Reconnected`](crate::pubsub::Event::Reconnected)
    /// around the gap (messages published to the slot in between are
    /// lost). Channels and patterns added to the returned
    /// [`Subscription`] go to one node of the cluster.
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::Client) -> Result<(), redis_layers::Error> {
    /// let sub = client.ssubscribe(["{orders}:eu", "{orders}:us"]).await?;
    /// client.cmd::<i64>(redis_layers::cmd("SPUBLISH").arg("{orders}:eu").arg("new")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn ssubscribe<I>(&self, channels: I) -> Result<Subscription>
    where
        I: IntoIterator,
        I::Item: Into<bytes::Bytes>,
    {
        let Dedicated::Cluster(cluster) = &self.dedicated else {
            return self.pubsub()?.ssubscribe(channels).await;
        };
        let channels: Vec<bytes::Bytes> = channels.into_iter().map(Into::into).collect();
        shard::one_slot(&channels)?;
        let lazy = self.pubsub.as_ref().ok_or_else(|| {
            Error::config("pub/sub needs a client built from an endpoint (not from_service)")
        })?;
        let pubsub = {
            let mut cell = lazy.shard.lock().unwrap_or_else(|e| e.into_inner());
            cell.get_or_insert_with(|| {
                shard::pubsub(
                    cluster.clone(),
                    lazy.dialer.clone(),
                    lazy.config.clone(),
                    lazy.endpoint.clone(),
                )
            })
            .clone()
        };
        pubsub.ssubscribe(channels).await
    }

    /// The stack, as a tower service (a clone; it shares the connections).
    pub fn service(&self) -> BoxService {
        self.svc.service().clone()
    }

    /// The maintenance status of every endpoint the client has a
    /// maintenance state for (its nodes, handoff targets in use) or whose
    /// server refused the opt-in, sorted by endpoint: whether the endpoint
    /// sends maintenance notifications and why, the last notification, the
    /// handoffs away from it, and until when timeouts are relaxed. See
    /// [`Connector::maintenance_status`]. Empty for a client made with
    /// [`Client::from_service`] (its stack is not known); read
    /// [`Maintained::maintenance`](crate::maint::Maintained::maintenance)
    /// on the nodes of such a stack instead.
    ///
    /// ```no_run
    /// use redis_layers::maint::OptIn;
    ///
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// let client = redis_layers::Client::open("redis://127.0.0.1:6379").await?;
    /// for (endpoint, status) in client.maintenance_status() {
    ///     if let OptIn::Refused { error, .. } = &status.opt_in {
    ///         println!("{endpoint}: no maintenance notifications ({error})");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn maintenance_status(&self) -> Vec<(Endpoint, crate::maint::MaintStatus)> {
        self.connector
            .as_ref()
            .map_or_else(Vec::new, Connector::maintenance_status)
    }

    /// True when this client routes over a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.dedicated, Dedicated::Cluster(_))
    }

    /// Sends a request (a command or a pipeline) through the stack. The
    /// request is taken now; the returned [`Call`] sends it when first
    /// polled.
    ///
    /// ```no_run
    /// use redis_layers::{client::Client, cmd, Response};
    /// # async fn run(client: Client) -> Result<(), redis_layers::Error> {
    /// let reply: Response = client.send(cmd("PING")).await?;
    /// # Ok(()) }
    /// ```
    pub fn send(&self, req: impl Into<Request>) -> Call<'_> {
        self.svc.call(req.into())
    }

    /// Sends any command and converts its reply: the escape hatch for
    /// commands without a helper.
    ///
    /// ```no_run
    /// use redis_layers::{client::Client, cmd};
    /// # async fn run(client: Client) -> Result<(), redis_layers::Error> {
    /// let n: usize = client.cmd(cmd("DBSIZE")).await?;
    /// # Ok(()) }
    /// ```
    pub fn cmd<T: FromValue>(&self, c: Cmd) -> TypedCall<'_, T> {
        TypedCall::new(self.svc.call(c.into()))
    }

    /// A pipeline: commands collected, sent as one request, replies
    /// converted together by [`Batch::query`].
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::client::Client) -> Result<(), redis_layers::Error> {
    /// let (n, v): (i64, Option<String>) =
    ///     client.pipeline().set("a", "x").ignore().incr("b").get("a").query().await?;
    /// # Ok(()) }
    /// ```
    pub fn pipeline(&self) -> Batch {
        Batch::new(self.clone(), false)
    }

    /// A transaction: like [`Client::pipeline`], between `MULTI` and
    /// `EXEC`, in one write. See the [module docs](self) for the cluster
    /// case.
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::client::Client) -> Result<(), redis_layers::Error> {
    /// let (a, b): (i64, i64) = client.transaction().incr("{acct}:a").decr("{acct}:b").query().await?;
    /// # Ok(()) }
    /// ```
    pub fn transaction(&self) -> Batch {
        Batch::new(self.clone(), true)
    }

    /// Every key, page by page: see [`Scan`].
    pub fn scan(&self) -> Scan {
        Scan::new(self.clone())
    }

    /// Starts an optimistic transaction: `WATCH keys` on a dedicated
    /// connection. Read with [`Watch::cmd`], then run a transaction with
    /// [`Watch::exec`]: `None` if a watched key changed meanwhile. In a
    /// cluster the keys must share a slot; the connection goes to its
    /// primary.
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::client::Client) -> Result<(), redis_layers::Error> {
    /// use redis_layers::cmd;
    /// loop {
    ///     let mut w = client.watch(["balance"]).await?;
    ///     let balance: i64 = w.cmd(cmd("GET").arg("balance")).await?;
    ///     let mut tx = client.transaction();
    ///     tx.set("balance", balance * 2);
    ///     // `None`: someone changed `balance` meanwhile; read it again.
    ///     if w.exec::<((),)>(&tx).await?.is_some() {
    ///         break;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch(&self, keys: impl ToArgs) -> Result<Watch> {
        let watch = cmd("WATCH").with_args(keys);
        if watch.arg_count() < 2 {
            return Err(Error::config("WATCH needs at least one key"));
        }
        let slot = self.slot_of(std::slice::from_ref(&watch))?;
        // One budget for the dial, the handshake and WATCH itself.
        let (mut conn, watch) = match self.timeout {
            Some(budget) => {
                let t0 = tokio::time::Instant::now();
                let conn = tokio::time::timeout(budget, self.dedicated(slot))
                    .await
                    .map_err(|_| Error::Timeout)??;
                let left = budget.saturating_sub(t0.elapsed());
                if left.is_zero() {
                    return Err(Error::Timeout);
                }
                (conn, Request::from(watch).with_timeout(left))
            }
            None => (self.dedicated(slot).await?, self.timed(watch)),
        };
        let reply = conn.send(watch).await?.into_value()?;
        <()>::from_value(reply)?;
        Ok(Watch::new(conn, self.clone(), slot))
    }

    /// `BLPOP keys... timeout`: the first element of the first non-empty
    /// list, as `(list, element)`; `None` after `timeout_secs` (0: wait
    /// forever). Runs on a dedicated connection, so it holds up no other
    /// command.
    pub async fn blpop<T: FromValue>(
        &self,
        keys: impl ToArgs,
        timeout_secs: f64,
    ) -> Result<Option<(String, T)>> {
        self.blocking(cmd("BLPOP").with_args(keys).arg(timeout_secs))
            .await
    }

    /// `BRPOP`: like [`Client::blpop`], from the tail.
    pub async fn brpop<T: FromValue>(
        &self,
        keys: impl ToArgs,
        timeout_secs: f64,
    ) -> Result<Option<(String, T)>> {
        self.blocking(cmd("BRPOP").with_args(keys).arg(timeout_secs))
            .await
    }

    /// `BLMOVE source destination from to timeout`: the element moved from
    /// the `from` end of `source` to the `to` end of `destination`; `None`
    /// after `timeout_secs` (0: wait forever). In a cluster both lists
    /// must be in one slot (hash tags). Runs on a dedicated connection.
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::Client) -> Result<(), redis_layers::Error> {
    /// use redis_layers::client::ListEnd;
    /// let job: Option<String> =
    ///     client.blmove("{q}:todo", "{q}:doing", ListEnd::Left, ListEnd::Right, 5.0).await?;
    /// # Ok(()) }
    /// ```
    pub async fn blmove<T: FromValue>(
        &self,
        source: impl ToArg,
        destination: impl ToArg,
        from: ListEnd,
        to: ListEnd,
        timeout_secs: f64,
    ) -> Result<Option<T>> {
        let c = cmd("BLMOVE").arg(source).arg(destination);
        self.blocking(c.arg(from.as_str()).arg(to.as_str()).arg(timeout_secs))
            .await
    }

    /// `BZPOPMIN keys... timeout`: the member with the lowest score of the
    /// first non-empty sorted set, as `(key, member, score)`; `None` after
    /// `timeout_secs` (0: wait forever). Runs on a dedicated connection.
    pub async fn bzpopmin<T: FromValue>(
        &self,
        keys: impl ToArgs,
        timeout_secs: f64,
    ) -> Result<Option<(String, T, f64)>> {
        self.blocking(cmd("BZPOPMIN").with_args(keys).arg(timeout_secs))
            .await
    }

    /// `BZPOPMAX`: like [`Client::bzpopmin`], the highest score.
    pub async fn bzpopmax<T: FromValue>(
        &self,
        keys: impl ToArgs,
        timeout_secs: f64,
    ) -> Result<Option<(String, T, f64)>> {
        self.blocking(cmd("BZPOPMAX").with_args(keys).arg(timeout_secs))
            .await
    }

    /// `XREAD BLOCK block_ms STREAMS keys... ids...`: entries after each
    /// id (`$`: only new ones), per stream, waiting up to `block_ms` (0:
    /// forever) for one; empty after the wait. Runs on a dedicated
    /// connection.
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::Client) -> Result<(), redis_layers::Error> {
    /// for (stream, entries) in client.xread_block(["events"], ["$"], 5_000).await? {
    ///     println!("{stream}: {} new", entries.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn xread_block(
        &self,
        keys: impl ToArgs,
        ids: impl ToArgs,
        block_ms: u64,
    ) -> Result<StreamReads> {
        let c = cmd("XREAD").arg("BLOCK").arg(block_ms).arg("STREAMS");
        self.blocking(c.with_args(keys).with_args(ids)).await
    }

    /// `XREADGROUP GROUP group consumer BLOCK block_ms STREAMS keys...
    /// ids...` (`>` for new entries): like [`Client::xread_block`], for a
    /// consumer group. Runs on a dedicated connection.
    pub async fn xreadgroup_block(
        &self,
        group: impl ToArg,
        consumer: impl ToArg,
        keys: impl ToArgs,
        ids: impl ToArgs,
        block_ms: u64,
    ) -> Result<StreamReads> {
        let c = cmd("XREADGROUP").arg("GROUP").arg(group).arg(consumer);
        let c = c.arg("BLOCK").arg(block_ms).arg("STREAMS");
        self.blocking(c.with_args(keys).with_args(ids)).await
    }

    async fn blocking<T: FromValue>(&self, c: Cmd) -> Result<T> {
        let slot = self.slot_of(std::slice::from_ref(&c))?;
        let mut conn = self.dedicated(slot).await?;
        // A caller that gives up leaves the command blocked on the server,
        // where it would pop an element for nobody: the connection counts
        // it until its reply is in, and is closed, not reused, without.
        let reply = conn.send(c.into()).await;
        T::from_value(reply?.into_value()?)
    }

    /// A request with the client's timeout, for dedicated connections.
    fn timed(&self, req: impl Into<Request>) -> Request {
        let req = req.into();
        match self.timeout {
            Some(t) if !req.is_blocking() => req.with_timeout(t),
            _ => req,
        }
    }

    fn slot_of(&self, cmds: &[Cmd]) -> Result<Option<u16>> {
        match &self.dedicated {
            Dedicated::Cluster(c) => c.slot_of(cmds),
            _ => Ok(None),
        }
    }

    async fn dedicated(&self, slot: Option<u16>) -> Result<DedicatedConn> {
        match &self.dedicated {
            Dedicated::Standalone(h) => DedicatedConn::leased(h).await,
            Dedicated::Cluster(c) => {
                let endpoint = c.endpoint_for(slot).await?;
                DedicatedConn::leased(&c.leases(&endpoint)).await
            }
            Dedicated::None => Err(Error::config(
                "a client made with Client::from_service has no dedicated connections \
                 (needed by WATCH and blocking commands)",
            )),
        }
    }
}

//! Seamless `MOVING` handoffs: the connection owner of one endpoint.
//!
//! [`Handoff`] wraps a connection maker (a [`Connector`](crate::Connector),
//! or anything that makes connections the same way) and is the command
//! service for one endpoint. It owns that endpoint's connections:
//! `pool_size` multiplexed ones, requests going to the one with the fewest
//! pending. It connects lazily on first use, and again after a connection
//! dies. A caller waiting for a connect that fails gets the connect error
//! from its call, as [`Error::NotSent`] (the request handed back in it),
//! not from `poll_ready`: tower reads a `poll_ready` error as "this service
//! is gone for good" (`Buffer` would fail every later request), and a
//! connect that failed may pass on the next try. `poll_ready` itself never
//! fails.
//!
//! On `MOVING` ([maintenance contract](crate::docs::maintenance), section 3) it hands **every** connection on the old
//! endpoint off at once, idle ones included: it dials the target through
//! the maker (same handshake, run relaxed), relaxes the new connection for
//! `post_handoff_relaxed_duration`, switches new commands to it, and closes
//! the old socket as soon as its last reply is in, or at the `MOVING`
//! deadline. A request is on exactly one connection: commands written to
//! the old one complete there; commands issued after the switch go to the
//! new one; nothing is sent twice (see `pool.rs` for the ordering rule).
//!
//! **Order.** The requests one clone of the service sends reach the server
//! in the order of its `call`s, across handoffs, within a pool and across
//! reconnects: while a clone has requests in flight (reply not in, future
//! not dropped), its next one goes to the same connection, which keeps
//! their order; it goes elsewhere (a less busy pool entry, the new
//! connection after a switch) only once none is in flight. If its
//! connection leaves the pool while some are, the clone first sends a
//! `PING` there and waits for its reply (which comes after theirs); it
//! does not wait for the callers to poll their futures. Not ordered:
//! requests of different clones (other tasks; the calls of a
//! [`Client`](crate::Client), which promises no order between calls in
//! flight together); a request
//! whose future was dropped before its reply; one that failed (timed out,
//! its connection lost), which may have been applied or still be. The
//! cost: one allocation per clone, an `Arc` clone per request, and a clone
//! that always has requests in flight stays on one pool entry (one that
//! awaits each reply is spread as before).
//! A null endpoint means: reconnect to the configured address after
//! `time / 2`.
//!
//! Handoffs run on a bounded set of workers with a bounded queue (the
//! contract's autoscaling of `max_workers` and `handoff_queue_size` from the
//! pool size). A failed dial is retried after the policy's backoff, up to
//! `max_handoff_retries` attempts, each bounded by `handoff_timeout`; a
//! per-target circuit breaker stops dialling an endpoint that keeps
//! failing (breakers closed and idle for their reset timeout are
//! forgotten, and at most 1024 are kept; so are at most 1024 handled
//! `MOVING`s, for the dedup TTL: a server naming endless new targets does
//! not grow them). When a handoff finally fails (or finds the queue full), the old
//! connection serves until just before its deadline, then drains and
//! closes while the next command reconnects: to the configured address, or
//! to where the last successful handoff of this pool went. A connection
//! that was still being dialled when a `MOVING` arrived is handed off as
//! soon as it joins the pool.
//!
//! # DNS that lags behind `MOVING`
//!
//! A `MOVING` may name its target by host name (`*-fqdn` endpoint types),
//! and after a null `MOVING` the configured address may be a name too. On
//! Redis Enterprise the record follows the move late (4.4 to 9.7 s after
//! the frame, measured), so a dial at once reaches the node being retired.
//! Before it dials a name, a handoff resolves it (with
//! [`HandoffLayer::resolver`], by default the system's) and compares the
//! answer with the address of the connection being retired: while every
//! address is that endpoint's (same IP and port; or the name does not
//! resolve), it polls again after 100 ms, doubling to 1 s, until the answer
//! changes or only a quarter of the `MOVING` time (at most
//! `handoff_timeout`) is left, and then dials whatever the answer (a
//! resolver that does not answer by then is given up on). IP targets are
//! dialled at once. A pooled connection lost during the lag and dialled
//! again waits the same way while another connection of the pool serves;
//! the first answer that moved ends the wait for all. With no other
//! connection, waiting would stall every command: it dials at once and is
//! handed off like the rest once the record moves, whether or not the
//! server tells it of the `MOVING`. A dedicated (leased) connection is
//! dialled at once: its caller waits on it. Give the
//! [`Connector`](crate::Connector) the same resolver
//! ([`Connector::resolver`](crate::Connector::resolver); the `Client`
//! builder's [`resolver`](crate::client::ClientBuilder::resolver) sets both).
//! Measured (`tests/dns.rs`, pool of 4 under 16 tasks, 15 s `MOVING`, record
//! 5 s late): 0 dials to the retiring node (6 without the check), first
//! dial 5.5 s after the `MOVING`, 0 failed commands. One pooled connection
//! cut during the lag: its reconnect waited too (it reached the retiring
//! node 2 ms after the `MOVING` before). A pool of one cut during the lag:
//! reconnected at once, handed off 5.5 s after the `MOVING`; only the 16
//! commands in flight on the cut connection failed (39, and the move at
//! the deadline, against a server that tells a `MOVING` once, before).
//!
//! Whether, where, when and how to retry is the [`HandoffPolicy`]'s call.
//! Every step is reported as a [`MaintEvent`] ([`Handoff::subscribe`]), as
//! a `tracing` event (`handoff.started`, `handoff.retried`,
//! `handoff.succeeded`, `handoff.failed`, `handoff.breaker`,
//! `handoff.old_closed`) and, with the `metrics` feature, in the
//! [`HANDOFF`] counter.
//!
//! Subscriptions made through the service move with their connection: the
//! replacement subscribes to the same channels before it takes commands,
//! and [`Handoff::take_pushes`] merges the pushes of every connection. They
//! also survive the connection's death (the server closed it, the network
//! dropped it, a handoff failed for good): the entry reconnects at once,
//! without waiting for a command (a pure subscriber sends none), retrying
//! with a jittered backoff (50 ms doubling up to 2 s) while the server is
//! away or drops each new connection (it starts over once one stays up
//! 1 s), and the new connection subscribes to what the dead one was
//! subscribed to before it takes commands. Messages published in between
//! are lost; [`pubsub`](crate::pubsub) reports that gap. For
//! blocking commands, `WATCH`/`MULTI` or a subscriber of its own,
//! [`Handoff::lease`] gives a dedicated connection, handed off when given
//! back.
//!
//! Our own code rather than a pool crate: the switch must never strand or
//! duplicate a request that is between `poll_ready` and `call`, and that
//! needs the request count and the pool generation to be checked in one
//! specific order (see `pool.rs`).
//!
//! ```no_run
//! use redis_layers::handoff::Handoff;
//! use redis_layers::{cmd, Connector, Endpoint};
//! use tower::ServiceExt;
//!
//! # async fn run() -> Result<(), redis_layers::Error> {
//! let svc = Handoff::new(Connector::new(), Endpoint::tcp("127.0.0.1", 6379));
//! let reply = svc.clone().oneshot(cmd("INCR").arg("n").into()).await?;
//! # Ok(()) }
//! ```

mod breaker;
mod future;
mod layer;
mod lease;
mod policy;
mod pool;
mod worker;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::sync::{broadcast, Semaphore};
use tower_service::Service;

pub use future::{LeaseFuture, ResponseFuture};
pub use layer::HandoffLayer;
pub(crate) use lease::leaves_state;
pub use lease::Leased;
pub use policy::{
    DefaultPolicy, Filter, HandoffPolicy, HandoffPolicyExt, MapTarget, Moving, Spread,
};

use breaker::{BreakerConfig, Breakers};
use pool::{Caller, Entry, Lease, Pool, Slot};

use crate::error::{Error, Result};
use crate::lock;
use crate::maint::{Dedup, MaintEvent, Maintained, MaintenanceState, Resolved};
use crate::request::{Request, Response};
use crate::transport::{push_channel, Endpoint, Lifecycle, PushReceiver, PushSender};

/// Counter (feature `metrics`): handoff steps, by `result` (`started`,
/// `retried`, `succeeded`, `failed`).
pub const HANDOFF: &str = "redis.client.connection.handoff";

/// What [`Handoff`] needs to make connections: a
/// `Service<Endpoint>` whose connections are command services that carry
/// their endpoint's [`MaintenanceState`] and can be closed. Implemented for
/// every such maker, e.g. [`Connector`](crate::Connector).
///
/// Handoff goes right above the maker; the layers over commands go above
/// Handoff. A stack in another order does not compile:
///
/// ```compile_fail,E0277
/// use std::time::Duration;
/// use redis_layers::handoff::HandoffLayer;
/// use redis_layers::relax::RelaxTimeout;
/// use redis_layers::{Connector, Endpoint};
/// use tower::Layer;
///
/// // RelaxTimeout under Handoff. error[E0277]: `RelaxTimeout<Connector>`
/// // is not a connection maker for Handoff (`MakeConnection`), with a note
/// // on the order: HandoffLayer right above the Connector, the layers over
/// // commands above Handoff. (Through `ServiceBuilder::service` the same
/// // mistake is an E0599 whose note names `MakeConnection`.)
/// let relaxed = RelaxTimeout::new(Connector::new(), Some(Duration::from_secs(1)));
/// let svc = HandoffLayer::new(Endpoint::tcp("127.0.0.1", 6379)).layer(relaxed);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a connection maker for Handoff (`MakeConnection`)",
    label = "Handoff (and a cluster's per-node maker) needs a `Service<Endpoint>` making connections here",
    note = "put HandoffLayer right above the Connector, and the layers over commands (RelaxTimeout, Retry, tower middleware) above Handoff: ServiceBuilder::new().layer(RelaxTimeoutLayer::new(..)).layer(HandoffLayer::new(..)).service(Connector::new())"
)]
pub trait MakeConnection: Clone + Send + 'static {
    /// The connection made.
    type Connection: Service<Request, Response = Response, Error = Error, Future: Send + 'static>
        + Maintained
        + Lifecycle
        + Clone
        + Send
        + 'static;

    /// Dials `endpoint` (waiting for the maker to be ready first).
    fn make_connection(
        &self,
        endpoint: Endpoint,
    ) -> Pin<Box<dyn Future<Output = Result<Self::Connection>> + Send>>;
}

impl<M, C> MakeConnection for M
where
    M: Service<Endpoint, Response = C, Error = Error> + Clone + Send + 'static,
    M::Future: Send + 'static,
    C: Service<Request, Response = Response, Error = Error, Future: Send + 'static>
        + Maintained
        + Lifecycle
        + Clone
        + Send
        + 'static,
{
    type Connection = C;

    fn make_connection(
        &self,
        endpoint: Endpoint,
    ) -> Pin<Box<dyn Future<Output = Result<C>> + Send>> {
        let mut maker = self.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| maker.poll_ready(cx)).await?;
            maker.call(endpoint).await
        })
    }
}

/// The handoff settings, resolved from a [`MaintenanceConfig`](crate::maint::MaintenanceConfig)
/// and the pool size.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pool_size: usize,
    /// Clean dedicated connections kept for the next lease.
    idle_leases: usize,
    handoff_timeout: Duration,
    max_retries: u32,
    relaxed_timeout: Duration,
    post_handoff: Duration,
    workers: usize,
    queue_size: usize,
    breaker: BreakerConfig,
    dedup_ttl: Duration,
    /// Which `MOVING` targets are followed.
    trust: crate::trust::SharedPolicy,
    /// Frames the merged push stream keeps for its reader.
    push_capacity: usize,
    /// Resolves a `MOVING`'s host name to wait for DNS to follow it
    /// (`None`: the system's resolver).
    resolver: Option<crate::transport::Resolver>,
}

impl Settings {
    pub(crate) fn new(config: &Resolved, pool_size: usize) -> Self {
        Settings {
            pool_size,
            idle_leases: IDLE_LEASES,
            handoff_timeout: config.handoff_timeout(),
            max_retries: config.max_handoff_retries(),
            relaxed_timeout: config.relaxed_timeout(),
            post_handoff: config.post_handoff_relaxed_duration(),
            workers: config.workers(pool_size),
            queue_size: config.queue_size(pool_size),
            breaker: BreakerConfig {
                failure_threshold: config.circuit_breaker_failure_threshold(),
                reset_timeout: config.circuit_breaker_reset_timeout(),
                max_requests: config.circuit_breaker_max_requests(),
            },
            dedup_ttl: config.dedup_ttl(),
            trust: Default::default(),
            push_capacity: PushReceiver::DEFAULT_CAPACITY,
            resolver: None,
        }
    }

    /// With `resolver` for a `MOVING`'s host names.
    pub(crate) fn resolver(mut self, resolver: Option<crate::transport::Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// With `policy` deciding which `MOVING` targets are followed.
    pub(crate) fn trust(mut self, policy: crate::trust::SharedPolicy) -> Self {
        self.trust = policy;
        self
    }

    /// With up to `n` idle leases kept.
    pub(crate) fn idle_leases(mut self, n: usize) -> Self {
        self.idle_leases = n;
        self
    }

    /// With up to `frames` push frames kept in the merged push stream.
    pub(crate) fn push_capacity(mut self, frames: usize) -> Self {
        self.push_capacity = frames.max(1);
        self
    }
}

/// How many clean dedicated connections wait for the next lease, by
/// default ([`HandoffLayer::idle_leases`]).
pub const IDLE_LEASES: usize = 8;

/// At most this many `MOVING`s are remembered as handled (per endpoint
/// and sequence number, for the dedup TTL). A handoff sees a few per
/// maintenance; only a server naming endless new endpoints gets near it.
const HANDLED_MAX: usize = 1024;

/// The memory of handled `MOVING`s: pruned by TTL, and bounded.
fn handled(ttl: Duration) -> Dedup<Endpoint> {
    Dedup::new(ttl).with_max_entries(HANDLED_MAX)
}

/// What every clone of one [`Handoff`] shares.
pub(crate) struct Shared<M: MakeConnection, P> {
    endpoint: Endpoint,
    maker: Mutex<M>,
    policy: P,
    settings: Settings,
    /// Bumped (under the pool lock) whenever the set of ready connections
    /// changes; callers check it with one load per request.
    gen: AtomicU64,
    pool: Mutex<Pool<M::Connection>>,
    events: broadcast::Sender<MaintEvent>,
    breakers: Mutex<Breakers<Endpoint>>,
    workers: Arc<Semaphore>,
    /// Handoff jobs queued or running.
    queued: AtomicUsize,
    /// The state reported before the first connection exists.
    idle_state: Arc<MaintenanceState>,
    next_id: AtomicU64,
    /// Endpoint states being watched for events, with their stop signal.
    watched: Mutex<Vec<(Arc<MaintenanceState>, tokio_util::sync::CancellationToken)>>,
    /// `MOVING`s handled, by endpoint and sequence number.
    handled: Mutex<Dedup<Endpoint>>,
    /// The pushes of every pooled connection, merged (bounded: a stream
    /// nobody takes keeps at most its capacity).
    push_tx: PushSender,
    push_rx: Mutex<Option<PushReceiver>>,
    /// Dedicated connections given back and clean: the next lease takes one.
    idle: Mutex<Vec<(Arc<Slot>, M::Connection)>>,
    /// Counts subscriptions restored on a new connection (an old one left
    /// after a failed handoff waits for it).
    restored: tokio::sync::watch::Sender<u64>,
    /// A name a `MOVING` sent the pool to whose record still led to the
    /// node being retired: every dial to it waits for the record to move
    /// (handoffs, reconnects, leases), until the watch's end.
    dns_watch: Mutex<Option<worker::DnsWatch>>,
    /// Whether the connections run TLS (learnt from the first one made):
    /// the default target policy follows any target then, verified against
    /// the configured name.
    tls: std::sync::atomic::AtomicBool,
}

/// The command service of one endpoint that hands its connections off on
/// `MOVING`; see the [module docs](self).
///
/// Cheap to clone; clones share the connections. A clone is not ready until
/// its own `poll_ready` (as with tower's `Buffer`). Each clone's requests
/// reach the server in the order it called them (see the [module
/// docs](self)); different clones' are not ordered with each other.
pub struct Handoff<M: MakeConnection, P = DefaultPolicy> {
    shared: Arc<Shared<M, P>>,
    /// The pool generation `local` was taken at; `u64::MAX`: never.
    gen: u64,
    local: Vec<Local<M::Connection>>,
    /// The entry of `local` reserved by `poll_ready` for the next `call`.
    reserved: Option<usize>,
    /// The generation at which this clone started waiting for a connect.
    waiting_since: Option<u64>,
    /// The connect this clone waited for failed: `poll_ready` said ready
    /// (tower reads a `poll_ready` error as "gone for good", and this one
    /// may pass), and the next `call` fails with it as [`Error::NotSent`].
    failed: Option<Error>,
    /// The entry of `local` this clone called last: while it has requests
    /// in flight, the next one goes there too (per-clone order).
    pin: Option<usize>,
    /// This clone's mark on its requests in flight (made at its first
    /// call).
    caller: Option<Arc<Caller>>,
    /// Requests of this clone in flight on a connection that left the
    /// pool: nothing more is sent until they are answered.
    barrier: Option<Barrier<M::Connection>>,
}

struct Local<C> {
    slot: Arc<Slot>,
    conn: C,
}

/// Waits until the requests a clone sent on a connection it can no longer
/// use (moved away from, or failing over) are answered, so that its next
/// request, on another connection, cannot overtake them: a `PING` sent
/// after them on that connection, whose reply comes after theirs. Not
/// their own replies: the caller may await those only after sending more.
struct Barrier<C: Service<Request>> {
    conn: C,
    /// Counts the `PING` on the old connection, which stays open for it.
    _lease: Lease,
    ping: Option<Pin<Box<C::Future>>>,
}

impl<C: Service<Request, Response = Response, Error = Error>> Barrier<C> {
    /// Resolves once the `PING` has its reply or failed: either way
    /// nothing sent before it on that connection is still waiting.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ping.is_none() {
            match self.conn.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                // Closed: what was written there is answered or failed.
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    let ping = self.conn.call(crate::cmd("PING").into());
                    self.ping = Some(Box::pin(ping));
                }
            }
        }
        match self.ping.as_mut() {
            Some(f) => f.as_mut().poll(cx).map(|_| ()),
            None => Poll::Ready(()),
        }
    }
}

impl<M: MakeConnection> Handoff<M> {
    /// A handoff service for `endpoint` with the default maintenance
    /// configuration, one connection and the [`DefaultPolicy`]; use
    /// [`HandoffLayer`] to configure it.
    pub fn new(maker: M, endpoint: Endpoint) -> Self {
        Handoff::with_settings(
            maker,
            endpoint,
            Settings::new(&Resolved::default(), 1),
            DefaultPolicy,
        )
    }
}

impl<M: MakeConnection, P: HandoffPolicy> Handoff<M, P> {
    pub(crate) fn with_settings(
        maker: M,
        endpoint: Endpoint,
        settings: Settings,
        policy: P,
    ) -> Self {
        let (push_tx, push_rx) = push_channel(settings.push_capacity, endpoint.to_string());
        let shared = Shared {
            push_tx,
            push_rx: Mutex::new(Some(push_rx)),
            idle: Mutex::new(Vec::new()),
            restored: tokio::sync::watch::channel(0).0,
            dns_watch: Mutex::new(None),
            tls: Default::default(),
            pool: Mutex::new(Pool::new(settings.pool_size, endpoint.clone())),
            endpoint,
            maker: Mutex::new(maker),
            policy,
            gen: AtomicU64::new(0),
            events: broadcast::channel(1024).0,
            breakers: Mutex::new(Breakers::new()),
            workers: Arc::new(Semaphore::new(settings.workers)),
            queued: AtomicUsize::new(0),
            idle_state: Arc::new(MaintenanceState::new(
                settings.relaxed_timeout,
                settings.relaxed_timeout.saturating_mul(3),
            )),
            next_id: AtomicU64::new(1),
            watched: Mutex::new(Vec::new()),
            handled: Mutex::new(handled(settings.dedup_ttl)),
            settings,
        };
        Handoff {
            shared: Arc::new(shared),
            gen: u64::MAX,
            local: Vec::new(),
            reserved: None,
            waiting_since: None,
            failed: None,
            pin: None,
            caller: None,
            barrier: None,
        }
    }

    /// Subscribes to this service's maintenance events: every event of the
    /// endpoints its connections are on (notifications, relaxations), and
    /// its own handoff and circuit-breaker events. A lagging subscriber
    /// loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<MaintEvent> {
        self.shared.events.subscribe()
    }

    /// The push frames (pub/sub messages, invalidations, ...) of every
    /// connection this service owns, merged, across handoffs: a connection
    /// that replaces another first subscribes to what the old one was
    /// subscribed to, so messages keep coming. During the switch both
    /// connections are subscribed for a moment, so a message published
    /// then may arrive twice; none published after the new connection's
    /// subscription is confirmed is lost. After a connection dies, its
    /// replacement restores its subscriptions (see the [module
    /// docs](self)); messages published while no connection was subscribed
    /// are lost, which [`pubsub::PubSub`](crate::pubsub::PubSub) reports
    /// and this raw stream does not. The first call takes it; later
    /// calls return `None`.
    ///
    /// It keeps at most [`HandoffLayer::push_capacity`] frames (default
    /// [`PushReceiver::DEFAULT_CAPACITY`]) for its reader, dropping and
    /// counting newer ones ([`PushReceiver::dropped`], which also counts
    /// those a connection's own channel dropped). Once it is dropped, the
    /// connections' pushes are discarded as they arrive: take it and drop
    /// it when nobody reads pushes.
    pub fn take_pushes(&self) -> Option<PushReceiver> {
        lock(&self.shared.push_rx).take()
    }

    /// A dedicated connection (for blocking commands, `WATCH`/`MULTI`, a
    /// subscriber of its own), dialled where the pool's connections are
    /// now, or a clean idle one; see [`Leased`].
    pub async fn lease(&self) -> Result<Leased<M, P>> {
        self.shared.lease().await
    }

    /// How many multiplexed connections it keeps.
    pub(crate) fn pool_size(&self) -> usize {
        self.shared.settings.pool_size
    }

    /// The endpoint this service was built for.
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// The endpoints of the connections that take new commands now (one
    /// per connected pool entry).
    pub fn connected_to(&self) -> Vec<Endpoint> {
        lock(&self.shared.pool)
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Ready { slot, .. } => Some(slot.endpoint.clone()),
                _ => None,
            })
            .collect()
    }

    /// Takes a fresh view of the pool; starts connects for empty entries.
    fn refresh(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let shared = &self.shared;
        let mut pool = lock(&shared.pool);
        let g = shared.gen.load(SeqCst);
        for i in 0..pool.entries.len() {
            if matches!(pool.entries[i], Entry::Empty) {
                shared.start_connect(&mut pool, i);
            }
        }
        // The connection this clone's requests in flight are on.
        let pinned = match self.pin.take() {
            Some(p) if self.busy() => Some(self.local.swap_remove(p)),
            _ => None,
        };
        self.local.clear();
        for e in &pool.entries {
            if let Entry::Ready { slot, conn } = e {
                self.local.push(Local {
                    slot: slot.clone(),
                    conn: conn.clone(),
                });
            }
        }
        if let Some(old) = pinned {
            match self.local.iter().position(|l| l.slot.id == old.slot.id) {
                Some(i) => self.pin = Some(i),
                // Still open: its requests are answered there before this
                // clone sends anywhere else. (They hold the slot's count
                // above 0, so it is not closed for being drained.)
                None if !old.conn.is_closed() => {
                    old.slot.acquire();
                    self.barrier = Some(Barrier {
                        conn: old.conn,
                        _lease: Lease::new(old.slot, None),
                        ping: None,
                    });
                }
                // Closed: they failed, or will, unanswered.
                None => self.caller = None,
            }
        }
        if self.local.is_empty() {
            let since = *self.waiting_since.get_or_insert(g);
            if let Some((at, e)) = pool.error.as_ref().filter(|(at, _)| *at > since) {
                tracing::debug!(target: "redis_layers::handoff", generation = at, error = %e, "connect failed");
                self.waiting_since = None;
                return Poll::Ready(Err(e.clone()));
            }
            pool.waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
        self.waiting_since = None;
        self.gen = g;
        Poll::Ready(Ok(()))
    }

    /// True while requests this clone sent are in flight (their replies
    /// not in, their futures not dropped).
    fn busy(&self) -> bool {
        self.caller
            .as_ref()
            .is_some_and(|c| Arc::strong_count(c) > 1)
    }

    /// The local entry for the next request: the one this clone's requests
    /// in flight are on, else the one with the fewest requests pending.
    fn pick(&self) -> usize {
        if self.local.len() == 1 {
            return 0;
        }
        if let (Some(p), true) = (self.pin, self.busy()) {
            return p;
        }
        let mut best = (usize::MAX, 0);
        for (i, l) in self.local.iter().enumerate() {
            let p = l.slot.pending();
            if p < best.0 {
                best = (p, i);
            }
        }
        best.1
    }

    fn release_reserved(&mut self) {
        if let Some(i) = self.reserved.take() {
            self.local[i].slot.release();
        }
    }
}

impl<M: MakeConnection, P> Clone for Handoff<M, P> {
    fn clone(&self) -> Self {
        Handoff {
            shared: self.shared.clone(),
            gen: u64::MAX,
            local: Vec::new(),
            reserved: None,
            waiting_since: None,
            failed: None,
            pin: None,
            caller: None,
            barrier: None,
        }
    }
}

impl<M: MakeConnection, P> Drop for Handoff<M, P> {
    fn drop(&mut self) {
        if let Some(i) = self.reserved.take() {
            self.local[i].slot.release();
        }
    }
}

impl<M: MakeConnection, P> fmt::Debug for Handoff<M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handoff")
            .field("endpoint", &self.shared.endpoint)
            .field("pool_size", &self.shared.settings.pool_size)
            .finish_non_exhaustive()
    }
}

impl<M: MakeConnection, P: HandoffPolicy> Service<Request> for Handoff<M, P> {
    type Response = Response;
    type Error = Error;
    type Future = ResponseFuture<<M::Connection as Service<Request>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(b) = self.barrier.as_mut() {
                ready!(b.poll(cx));
                // Everything this clone sent so far is answered or failed.
                self.barrier = None;
                self.caller = None;
            }
            if self.shared.gen.load(SeqCst) != self.gen {
                self.release_reserved();
                match self.refresh(cx) {
                    Poll::Ready(Ok(())) if self.barrier.is_some() => continue,
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        self.failed = Some(e);
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.reserved.is_some() {
                return Poll::Ready(Ok(()));
            }
            let i = self.pick();
            // Count first, then check the generation: see `pool.rs`.
            self.local[i].slot.acquire();
            if self.shared.gen.load(SeqCst) != self.gen {
                self.local[i].slot.release();
                continue;
            }
            match self.local[i].conn.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    self.reserved = Some(i);
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => {
                    self.local[i].slot.release();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    self.local[i].slot.release();
                    let id = self.local[i].slot.id;
                    if self.local[i].conn.resubscribe_commands().is_empty() {
                        self.shared.lost(id, &e);
                        continue;
                    }
                    // Its watcher forgets it once its last push frame is
                    // forwarded, so that the loss of its subscriptions is
                    // noted after them: wait for that (the generation is
                    // bumped under the pool lock, so the wake is not missed).
                    let mut pool = lock(&self.shared.pool);
                    if self.shared.gen.load(SeqCst) == self.gen {
                        pool.waiters.push(cx.waker().clone());
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if let Some(e) = self.failed.take() {
            return ResponseFuture::failed(Error::not_sent_with(e, req));
        }
        match self.reserved.take() {
            Some(i) => {
                let caller = self.caller.get_or_insert_with(Default::default).clone();
                self.pin = Some(i);
                let l = &mut self.local[i];
                let fut = l.conn.call(req);
                ResponseFuture::new(fut, Some(Lease::new(l.slot.clone(), Some(caller))))
            }
            // Tower's contract: `call` only after `poll_ready` said ready.
            None => ResponseFuture::failed(Error::config(
                "Handoff::call without a successful poll_ready",
            )),
        }
    }
}

impl<M: MakeConnection, P: Send + Sync + 'static> Maintained for Handoff<M, P> {
    const RETURNS_REDIRECTED: bool = M::Connection::RETURNS_REDIRECTED;

    /// The state of the endpoint the next request goes to.
    fn maintenance(&self) -> &Arc<MaintenanceState> {
        match self.reserved.or((!self.local.is_empty()).then_some(0)) {
            Some(i) => self.local[i].conn.maintenance(),
            None => &self.shared.idle_state,
        }
    }

    /// The same stream as [`Handoff::subscribe`]: it follows the
    /// connections from endpoint to endpoint.
    fn subscribe(&self) -> broadcast::Receiver<MaintEvent> {
        self.shared.events.subscribe()
    }

    /// Follows the pool: the state of the endpoint its first ready
    /// connection is on (where the pool's requests go), and the service's
    /// event stream.
    fn maintenance_handle(&self) -> crate::maint::MaintenanceHandle {
        let (current, events) = (Arc::downgrade(&self.shared), Arc::downgrade(&self.shared));
        let idle = self.shared.idle_state.clone();
        crate::maint::MaintenanceHandle::new(
            move || {
                let Some(shared) = current.upgrade() else {
                    return idle.clone();
                };
                let pool = lock(&shared.pool);
                pool.entries
                    .iter()
                    .find_map(|e| match e {
                        Entry::Ready { conn, .. } => Some(conn.maintenance().clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| shared.idle_state.clone())
            },
            move || match events.upgrade() {
                Some(shared) => shared.events.subscribe(),
                // Gone: a stream that has ended.
                None => broadcast::channel(1).1,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_moving_endpoints_do_not_leave_ten_thousand_entries() {
        let t0 = std::time::Instant::now();
        let mut d = handled(Duration::from_secs(600));
        for port in 0..10_000u16 {
            assert!(d.first_time(Endpoint::tcp("10.0.0.1", port), 1, t0));
            assert!(d.len() <= HANDLED_MAX);
        }
        // The newest are still remembered.
        assert!(!d.first_time(Endpoint::tcp("10.0.0.1", 9_999), 1, t0));
        // And, past the TTL, one call prunes them all.
        let later = t0 + Duration::from_secs(601);
        assert!(d.first_time(Endpoint::tcp("10.0.0.2", 1), 1, later));
        assert_eq!(d.len(), 1);
    }
}

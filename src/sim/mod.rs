//! The maintenance simulator (feature `sim`): a RESP proxy in front of real
//! `redis-server` processes that plays a managed Redis under maintenance.
//!
//! Open-source Redis sends no maintenance notifications. The simulator
//! forwards every client connection to a real server (real data, real
//! replies), answers the `CLIENT MAINT_NOTIFICATIONS` handshake itself, and
//! injects notifications and faults:
//!
//! - any [`Push`] (the exact wire forms of the
//!   [maintenance contract](crate::docs::maintenance#2-wire-formats)) or raw bytes, to one connection,
//!   every connection of an endpoint, or all of them ([`Target`]);
//!   notifications go only to connections that opted in, as on the real
//!   server;
//! - reply delays per connection or per endpoint, refused connections,
//!   closed connections;
//! - whole scenarios with increasing sequence numbers:
//!   [`Simulator::moving`] (a second endpoint to the same server, `MOVING`,
//!   and the old endpoint closed at the deadline; or, with
//!   [`MovingPlan::stay_open`], only the connections it had when `MOVING` went
//!   out, the address staying valid as behind a load balancer),
//!   [`Simulator::migrate`] and [`Simulator::failover`] (slow replies
//!   between `MIGRATING`/`MIGRATED` or `FAILING_OVER`/`FAILED_OVER`); each
//!   has a starter ([`Simulator::start_moving`], ...) that returns its
//!   sequence number at once and plays the rest in a task;
//! - endpoints at chosen addresses ([`Simulator::open_endpoint_at`], or
//!   [`MovingPlan::to`]), e.g. the same port on `127.0.0.2` for clients that
//!   take only the host from `MOVING`;
//! - in front of a Redis Cluster ([`Builder::start_cluster`]): one endpoint
//!   per node, node addresses in `MOVED`/`ASK` and `CLUSTER SLOTS|SHARDS|NODES`
//!   replies rewritten to endpoints, and [`Simulator::slot_migrate`], a real
//!   slot migration bracketed by `SMIGRATING`/`SMIGRATED`.
//!
//! Each proxy port is an *endpoint*; every client connection gets its own
//! connection to the backend server. The proxy cuts both byte streams at
//! frame boundaries and forwards bytes untouched, so injected frames land
//! between whole replies.
//!
//! The simulator stops (listeners closed, every proxied connection closed)
//! when the last [`Simulator`] handle is dropped (a [`WeakSimulator`] and
//! the simulator's own scenario tasks do not count; a scenario under way
//! then ends at once), or on [`Simulator::shutdown`].
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_layers::sim::{MovingPlan, Simulator};
//!
//! # async fn run() -> std::io::Result<()> {
//! let sim = Simulator::start("127.0.0.1:6379".parse().unwrap()).await?;
//! println!("clients connect to {}", sim.endpoint());
//! // ... clients connect and opt in ...
//! let moved = sim.moving(MovingPlan::new(Duration::from_secs(2))).await?;
//! println!("MOVING seq {} to {}", moved.seq, moved.to);
//! # Ok(()) }
//! ```

pub mod admin;
mod cluster;
mod dns;
pub mod http;
mod migration;
mod notification;
mod proxy;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use dns::{DnsLag, SimResolver};
pub use migration::{SlotMigrate, SlotMigration, SlotMigrationHandle};
pub use notification::{EndpointType, Push, SlotMove};

/// A proxied client connection, as the simulator's registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The simulator's id for the connection (not Redis's `CLIENT ID`).
    pub id: u64,
    /// The proxy endpoint it connected to.
    pub endpoint: SocketAddr,
    /// The client's own address.
    pub peer: SocketAddr,
    /// The name it gave with `HELLO ... SETNAME` or `CLIENT SETNAME`.
    pub name: Option<String>,
    /// It sent `HELLO 3`.
    pub resp3: bool,
    /// It opted in to maintenance notifications, with this address type.
    pub maint: Option<EndpointType>,
    /// How many `CLIENT MAINT_NOTIFICATIONS` commands it sent (answered or
    /// refused): tells "never asked" from "asked and refused".
    pub maint_requests: u32,
}

/// Which connections an injection reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One connection, by [`ClientInfo::id`].
    Client(u64),
    /// Every connection that came in on this endpoint.
    Endpoint(SocketAddr),
    /// Every connection.
    All,
}

/// The `MOVING` scenario; see [`Simulator::moving`].
#[derive(Debug, Clone)]
pub struct MovingPlan {
    /// The endpoint that moves (default: the first one): it goes away at
    /// the deadline, unless [`MovingPlan::stay_open`].
    pub from: Option<SocketAddr>,
    /// How long until it closes its connections, in whole seconds as the
    /// `time` field says (a fraction rounds up to the next second).
    pub time: Duration,
    /// Where clients should go: an open endpoint, or an address that is not
    /// an endpoint yet, where one is opened (to the same server as `from`;
    /// port 0 picks a free port on that IP, e.g. `127.0.0.2:0`; the same
    /// port on another loopback IP, e.g. `127.0.0.2:<from's port>`, serves
    /// clients that keep their port and take only the host from `MOVING`).
    /// Default: a new endpoint on a free `127.0.0.1` port to the same server,
    /// so data survives the move.
    pub to: Option<SocketAddr>,
    /// Whether `from`'s address stays valid after the move, as a load
    /// balancer or DNS name that now leads to the new node does: the case
    /// of a `MOVING` with a null endpoint (`moving-endpoint-type none`),
    /// where clients reconnect to the address they were configured with.
    ///
    /// `false` (the default): the node goes away. Connections that opt in
    /// on `from` during the window get `MOVING` too, and at the deadline
    /// every connection still on `from` is closed and its listener stops.
    ///
    /// `true`: the old node goes away, the address stays. The connections
    /// registered on `from` when `MOVING` goes out are the old node's: they
    /// get `MOVING` (those opted in at once, the others if they opt in
    /// during the window), and those still open at the deadline are closed
    /// then (both sides: the client sees EOF), which [`Moved::closed`]
    /// counts. `from` keeps listening, to the same server (data survives),
    /// after the deadline too; connections made there after `MOVING` went
    /// out stand for connections that reach the new node through the same
    /// address: they are never sent this `MOVING` and are not closed at
    /// the deadline. `to` is opened as usual, for clients that asked for an
    /// address.
    pub stay_open: bool,
    /// A host name for the new endpoint whose DNS record follows late
    /// (default `None`): connections that asked for an `*-fqdn` endpoint
    /// type get `MOVING seq time name:port`, and the name points at the
    /// old endpoint's IP until `lag` after the `MOVING`, then at the new
    /// one's. Give `to` another IP than `from` (e.g. `127.0.0.2:0`, or the
    /// same port there) for the lag to matter; see [`SimResolver`].
    pub dns: Option<DnsLag>,
    /// Whether connections of `from` that opt in during the window are told
    /// too, with the time left (default `true`). `false` plays a server
    /// that announces a move once, to the connections opted in at that
    /// moment: one made during the window is closed at the deadline
    /// without a word (unless [`MovingPlan::stay_open`] spares it).
    pub tell_late: bool,
}

impl MovingPlan {
    /// A move of the first endpoint to a new one, closing in `time`.
    pub fn new(time: Duration) -> Self {
        MovingPlan {
            from: None,
            time,
            to: None,
            stay_open: false,
            dns: None,
            tell_late: true,
        }
    }
}

/// What a [`Simulator::moving`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The `MOVING` sequence number.
    pub seq: i64,
    /// The endpoint that went away (with [`MovingPlan::stay_open`]: whose old
    /// connections went away; it still listens).
    pub from: SocketAddr,
    /// The endpoint clients were sent to.
    pub to: SocketAddr,
    /// Connections that received `MOVING` when it started (connections
    /// that opted in on the old endpoint later received it too; with
    /// [`MovingPlan::stay_open`], only those made before it started).
    pub notified: usize,
    /// Connections closed at the deadline: every one still on the old
    /// endpoint; with [`MovingPlan::stay_open`], those still open of the ones
    /// it had when `MOVING` went out.
    pub closed: usize,
}

/// A `MIGRATING`/`MIGRATED` or `FAILING_OVER`/`FAILED_OVER` window; see
/// [`Simulator::migrate`].
#[derive(Debug, Clone)]
pub struct Window {
    /// The endpoint under maintenance (default: the first one).
    pub endpoint: Option<SocketAddr>,
    /// How long the window lasts.
    pub duration: Duration,
    /// The `time` field of the opening notification (seconds until the
    /// maintenance starts). Default 0.
    pub starts_within: u64,
    /// Every reply on the endpoint is held this long during the window.
    /// Default 50 ms.
    pub reply_delay: Duration,
    /// Shard ids sent with both notifications, if any. Default `Some("1")`.
    pub shard_ids: Option<String>,
}

impl Window {
    /// A window of `duration` on the first endpoint.
    pub fn new(duration: Duration) -> Self {
        Window {
            endpoint: None,
            duration,
            starts_within: 0,
            reply_delay: Duration::from_millis(50),
            shard_ids: Some("1".into()),
        }
    }
}

/// The sequence numbers of a [`Window`] scenario's two notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSeqs {
    /// `MIGRATING` / `FAILING_OVER`.
    pub start: i64,
    /// `MIGRATED` / `FAILED_OVER`.
    pub end: i64,
    /// Connections notified at the start.
    pub notified: usize,
}

/// An endpoint, as [`Simulator::endpoints_info`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The server it forwards to.
    pub backend: SocketAddr,
    /// Still listening: not closed by [`Simulator::close_endpoint`], a
    /// `MOVING` deadline (unless [`MovingPlan::stay_open`]) or
    /// [`Simulator::shutdown`].
    pub open: bool,
    /// Connections now proxied through it.
    pub clients: usize,
}

/// A `MOVING` under way; see [`Simulator::start_moving`]. Dropping it does
/// not stop the scenario.
#[derive(Debug)]
pub struct MovingHandle {
    /// The `MOVING` sequence number.
    pub seq: i64,
    /// The endpoint that goes away (with [`MovingPlan::stay_open`]: whose
    /// connections go away).
    pub from: SocketAddr,
    /// The endpoint clients are sent to (open already).
    pub to: SocketAddr,
    /// Connections that received `MOVING` at the start.
    pub notified: usize,
    /// When `from` closes (with [`MovingPlan::stay_open`]: when its connections
    /// from before the `MOVING` close).
    pub deadline: Instant,
    task: JoinHandle<Moved>,
}

impl MovingHandle {
    /// Waits for the deadline (the old endpoint closed, or with
    /// [`MovingPlan::stay_open`] its old connections): what
    /// [`Simulator::moving`] returns.
    pub async fn finished(self) -> io::Result<Moved> {
        join(self.task).await
    }
}

/// A `MIGRATING`/`MIGRATED` or `FAILING_OVER`/`FAILED_OVER` window under
/// way; see [`Simulator::start_migrate`]. Dropping it does not stop the
/// scenario.
#[derive(Debug)]
pub struct WindowHandle {
    /// Sequence number of the opening notification, sent already.
    pub start: i64,
    /// The endpoint under maintenance.
    pub endpoint: SocketAddr,
    /// Connections notified at the start.
    pub notified: usize,
    task: JoinHandle<WindowSeqs>,
}

impl WindowHandle {
    /// Waits for the end of the window (closing notification sent).
    pub async fn finished(self) -> io::Result<WindowSeqs> {
        join(self.task).await
    }
}

/// A scenario task's result; a panic in it goes on in the caller.
async fn join<T>(task: JoinHandle<T>) -> io::Result<T> {
    match task.await {
        Ok(t) => Ok(t),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(io::Error::other(format!("scenario task: {e}"))),
    }
}

/// A handle that does not keep the simulator running; see
/// [`Simulator::downgrade`].
#[derive(Clone)]
pub struct WeakSimulator {
    inner: Arc<Inner>,
    guard: std::sync::Weak<DropGuard>,
}

impl std::fmt::Debug for WeakSimulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakSimulator")
            .field("running", &!self.inner.stop.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl WeakSimulator {
    /// A full handle, unless every [`Simulator`] handle was dropped or it
    /// was shut down.
    pub fn upgrade(&self) -> Option<Simulator> {
        let guard = self.guard.upgrade()?;
        if self.inner.stop.is_cancelled() {
            return None;
        }
        Some(Simulator {
            inner: self.inner.clone(),
            _stop_on_drop: Some(guard),
        })
    }
}

/// The proxy: a handle to a running simulator. Cheap to clone; the last
/// handle dropped stops it.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
    /// `None` for the simulator's own scenario tasks, which must not keep
    /// it running.
    _stop_on_drop: Option<Arc<DropGuard>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("endpoints", &self.endpoints())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    /// Prefix of the markers that stand in for the maintenance handshake.
    token: String,
    /// In front of a Redis Cluster: node addresses in replies are rewritten.
    cluster: bool,
    seq: AtomicI64,
    fqdn_host: String,
    /// The builder's listen IP: `fqdn_host` stands for it (and for
    /// `127.0.0.1`, where the simulator opens endpoints by itself).
    listen_ip: IpAddr,
    stop: CancellationToken,
    changed: Notify,
    state: Mutex<State>,
    counters: Counters,
}

/// What [`Simulator::stats`] reads.
#[derive(Default)]
pub(crate) struct Counters {
    moved: AtomicU64,
    ask: AtomicU64,
    migrations_started: AtomicU64,
    migrations_done: AtomicU64,
    migrations_failed: AtomicU64,
}

impl Counters {
    /// Counts a reply on its way to a client (cluster mode); true for a
    /// `MOVED`.
    pub(crate) fn reply(&self, frame: &[u8]) -> bool {
        if frame.starts_with(b"-MOVED ") {
            self.moved.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        if frame.starts_with(b"-ASK ") {
            self.ask.fetch_add(1, Ordering::Relaxed);
        }
        false
    }
}

/// Counters since the simulator started; see [`Simulator::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// `MOVED` replies forwarded to clients (in front of a cluster).
    pub moved: u64,
    /// `ASK` replies forwarded to clients (in front of a cluster).
    pub ask: u64,
    /// Slot migrations announced (`SMIGRATING` sent).
    pub migrations_started: u64,
    /// Slot migrations completed (`SMIGRATED` sent, the source gave the
    /// slots up).
    pub migrations_done: u64,
    /// Slot migrations that failed (rolled back or not, `SMIGRATED` sent).
    pub migrations_failed: u64,
}

#[derive(Default)]
struct State {
    endpoints: Vec<EndpointState>,
    clients: BTreeMap<u64, ClientState>,
    next_client: u64,
    handshake_error: Option<String>,
    server_version: Option<String>,
}

struct EndpointState {
    addr: SocketAddr,
    backend: SocketAddr,
    stop: CancellationToken,
    /// Taken (and so closed) by [`Simulator::close_endpoint`] at once: the
    /// address refuses connections when the call returns, not when the
    /// accept task next runs.
    listener: Arc<Mutex<Option<TcpListener>>>,
    refuse: bool,
    delay: Arc<AtomicU64>,
    /// A `MOVING` under way: late arrivals get it when they opt in.
    moving: Option<MovingWindow>,
    /// Other notifications of an event under way (`SMIGRATING`), for late
    /// arrivals too.
    active: Vec<Push>,
    /// Migrations away from this node: their slots' `MOVED` become `ASK`.
    ask: Vec<migration::AskGuard>,
}

#[derive(Clone)]
struct MovingWindow {
    seq: i64,
    deadline: Instant,
    to: SocketAddr,
    /// [`MovingPlan::stay_open`]: only connections up to `last_old` are the
    /// old node's.
    stay_open: bool,
    /// The highest connection id registered when `MOVING` went out (ids
    /// only increase).
    last_old: u64,
    /// [`MovingPlan::dns`]: the name `*-fqdn` connections are given.
    name: Option<Arc<str>>,
    /// [`MovingPlan::tell_late`].
    tell_late: bool,
}

impl MovingWindow {
    /// Whether connection `id` on the old endpoint is subject to this
    /// `MOVING` (told, and closed at the deadline).
    fn covers(&self, id: u64) -> bool {
        !self.stay_open || id <= self.last_old
    }
}

struct ClientState {
    info: ClientInfo,
    inject: mpsc::UnboundedSender<Bytes>,
    close: CancellationToken,
    delay: Arc<AtomicU64>,
}

impl Simulator {
    /// Starts a simulator with one endpoint on a free loopback port,
    /// forwarding to `backend`.
    pub async fn start(backend: SocketAddr) -> io::Result<Simulator> {
        Self::builder(backend).start().await
    }

    /// A simulator with options.
    pub fn builder(backend: SocketAddr) -> Builder {
        Builder {
            backend,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            fqdn_host: "localhost".into(),
        }
    }

    /// The first endpoint's address: where clients connect.
    pub fn endpoint(&self) -> SocketAddr {
        self.inner.lock().endpoints[0].addr
    }

    /// Every endpoint opened so far (also those that went away).
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.inner.lock().endpoints.iter().map(|e| e.addr).collect()
    }

    /// Opens another endpoint (a new loopback port) to the same backend as
    /// the first one.
    pub async fn open_endpoint(&self) -> io::Result<SocketAddr> {
        self.open_endpoint_at(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
    }

    /// Opens another endpoint at `addr` (port 0: a free port on that IP), to
    /// the same backend as the first one. On Linux every `127.x.y.z` is
    /// loopback, so `127.0.0.2:<an endpoint's port>` gives an endpoint with
    /// the same port on another host address, for clients that keep their
    /// port and take only the host from `MOVING` (redis-py does).
    pub async fn open_endpoint_at(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let backend = self.inner.lock().endpoints[0].backend;
        self.inner.listen_now(addr, backend)
    }

    /// Every endpoint opened so far, with its backend, whether it is still
    /// open, and how many connections it has.
    pub fn endpoints_info(&self) -> Vec<EndpointInfo> {
        let st = self.inner.lock();
        st.endpoints
            .iter()
            .map(|e| EndpointInfo {
                addr: e.addr,
                backend: e.backend,
                open: !e.stop.is_cancelled(),
                clients: st
                    .clients
                    .values()
                    .filter(|c| c.info.endpoint == e.addr)
                    .count(),
            })
            .collect()
    }

    /// Whether `addr` is an endpoint that still listens.
    pub fn is_open(&self, addr: SocketAddr) -> bool {
        self.inner
            .lock()
            .endpoints
            .iter()
            .any(|e| e.addr == addr && !e.stop.is_cancelled())
    }

    /// A handle that does not keep the simulator running (for an admin
    /// interface or a watcher that should stop with it).
    pub fn downgrade(&self) -> WeakSimulator {
        WeakSimulator {
            inner: self.inner.clone(),
            guard: self
                ._stop_on_drop
                .as_ref()
                .map_or_else(std::sync::Weak::new, Arc::downgrade),
        }
    }

    /// A handle for the simulator's own tasks: it does not keep it running.
    fn detached(&self) -> Simulator {
        Simulator {
            inner: self.inner.clone(),
            _stop_on_drop: None,
        }
    }

    /// The connections now proxied.
    pub fn clients(&self) -> Vec<ClientInfo> {
        self.inner
            .lock()
            .clients
            .values()
            .map(|c| c.info.clone())
            .collect()
    }

    /// Waits until `pred` holds for the connections; there is no polling:
    /// it re-checks on every registry change.
    pub async fn wait_for(&self, mut pred: impl FnMut(&[ClientInfo]) -> bool) {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if pred(&self.clients()) {
                return;
            }
            changed.await;
        }
    }

    /// The next sequence number (they only increase).
    pub fn next_seq(&self) -> i64 {
        self.inner.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `n` to every opted-in connection of `target`; returns how many
    /// received it.
    pub fn notify(&self, target: Target, n: &Push) -> usize {
        tracing::info!(target: "redis_layers::sim", event = "sim.notify", kind = n.name(), seq = n.seq(), ?target, "injecting notification");
        let bytes = n.to_bytes();
        self.inner.send_where(target, true, |_| Some(bytes.clone()))
    }

    /// Sends raw bytes (anything, malformed frames included) to every
    /// connection of `target`, opted in or not, between whole frames.
    pub fn inject_raw(&self, target: Target, bytes: impl Into<Bytes>) -> usize {
        let bytes = bytes.into();
        tracing::info!(target: "redis_layers::sim", event = "sim.inject_raw", len = bytes.len(), ?target, "injecting raw bytes");
        self.inner
            .send_where(target, false, |_| Some(bytes.clone()))
    }

    /// Holds every reply to the connections of `target` for `delay`
    /// (`Duration::ZERO`: no delay). For an endpoint, this also applies to
    /// connections made later; a connection's own delay overrides its
    /// endpoint's.
    pub fn set_delay(&self, target: Target, delay: Duration) {
        tracing::info!(target: "redis_layers::sim", event = "sim.delay", ?delay, ?target, "reply delay");
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX - 1);
        let st = self.inner.lock();
        match target {
            Target::Client(id) => {
                if let Some(c) = st.clients.get(&id) {
                    c.delay.store(nanos, Ordering::Relaxed);
                }
            }
            Target::Endpoint(addr) => {
                if let Some(e) = st.endpoints.iter().find(|e| e.addr == addr) {
                    e.delay.store(nanos, Ordering::Relaxed);
                }
            }
            Target::All => {
                for e in &st.endpoints {
                    e.delay.store(nanos, Ordering::Relaxed);
                }
                for c in st.clients.values() {
                    c.delay.store(proxy::NO_DELAY_SET, Ordering::Relaxed);
                }
            }
        }
    }

    /// While `refuse` is true, new connections to `endpoint` are accepted
    /// and closed at once, before any byte is exchanged.
    pub fn refuse_connections(&self, endpoint: SocketAddr, refuse: bool) {
        tracing::info!(target: "redis_layers::sim", event = "sim.refuse", %endpoint, refuse, "refusing connections");
        if let Some(e) = self
            .inner
            .lock()
            .endpoints
            .iter_mut()
            .find(|e| e.addr == endpoint)
        {
            e.refuse = refuse;
        }
    }

    /// Closes the connections of `target` (client and server side); returns
    /// how many.
    pub fn close(&self, target: Target) -> usize {
        tracing::info!(target: "redis_layers::sim", event = "sim.close", ?target, "closing connections");
        self.inner.close_where(target)
    }

    /// Closes `endpoint` for good: its listener stops (new connections are
    /// refused by the OS) and its connections are closed.
    pub fn close_endpoint(&self, endpoint: SocketAddr) -> usize {
        tracing::info!(target: "redis_layers::sim", event = "sim.close_endpoint", %endpoint, "endpoint goes away");
        // Every entry at that address: a closed one whose task has not
        // removed it yet may come before the open one that reuses it.
        for e in self
            .inner
            .lock()
            .endpoints
            .iter()
            .filter(|e| e.addr == endpoint)
        {
            e.stop.cancel();
            stop_listening(&e.listener);
        }
        self.inner.close_where(Target::Endpoint(endpoint))
    }

    /// Makes the maintenance handshake fail with this error reply (e.g.
    /// `"ERR unknown subcommand 'MAINT_NOTIFICATIONS'. Try CLIENT HELP."`,
    /// as open-source Redis answers), or succeed again with `None`.
    pub fn set_handshake_error(&self, error: Option<String>) {
        self.inner.lock().handshake_error = error;
    }

    /// Makes every later `HELLO` reply name `version` instead of the
    /// server's own (`None`: the server's again): a server upgrade as a
    /// client sees it. With [`Simulator::set_handshake_error`]`(None)` this
    /// is a server that gained the feature; a client that remembers a
    /// refusal per server version asks again.
    pub fn set_server_version(&self, version: Option<String>) {
        self.inner.lock().server_version = version;
    }

    /// Plays a `MOVING`: opens the target endpoint (unless given), sends
    /// `MOVING seq time host:port` to every opted-in connection of the old
    /// endpoint (the address in the form each connection asked for; `none`
    /// gets null), sends it also to connections that opt in there during
    /// the window, and at the deadline closes the old endpoint: every
    /// connection still on it, and its listener. With
    /// [`MovingPlan::stay_open`] the old endpoint keeps listening, and only the
    /// connections it had when `MOVING` went out are told and closed (see
    /// there). Returns after the deadline; [`Simulator::start_moving`]
    /// returns at once.
    pub async fn moving(&self, m: MovingPlan) -> io::Result<Moved> {
        self.start_moving(m)?.finished().await
    }

    /// Starts a [`Simulator::moving`] and returns once `MOVING` is sent, with
    /// its sequence number and target; the deadline plays out in a task
    /// ([`MovingHandle::finished`] waits for it). Fails when `from` is not
    /// an open endpoint, `to` is `from` or a closed endpoint, or `to` cannot
    /// be bound. Must be called within a Tokio runtime.
    pub fn start_moving(&self, m: MovingPlan) -> io::Result<MovingHandle> {
        let from = m.from.unwrap_or_else(|| self.endpoint());
        let not_found = |a: SocketAddr, what: &str| {
            io::Error::new(io::ErrorKind::NotFound, format!("endpoint {a} {what}"))
        };
        let backend = match self.endpoints_info().into_iter().find(|e| e.addr == from) {
            Some(e) if e.open => e.backend,
            Some(_) => return Err(not_found(from, "is closed")),
            None => return Err(not_found(from, "does not exist")),
        };
        let to = match m.to {
            Some(to) if to == from => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("MOVING from {from} to itself"),
                ))
            }
            Some(to) => match self.endpoints_info().into_iter().find(|e| e.addr == to) {
                Some(e) if e.open => to,
                Some(_) => return Err(not_found(to, "is closed")),
                None => self.inner.listen_now(to, backend)?,
            },
            None => self
                .inner
                .listen_now(SocketAddr::from(([127, 0, 0, 1], 0)), backend)?,
        };
        let seq = self.next_seq();
        // The wire speaks whole seconds; the deadline keeps to what it says.
        let time = whole_secs(m.time);
        let deadline = crate::time::after(Instant::now(), Duration::from_secs(time));
        let window = {
            let mut st = self.inner.lock();
            let window = MovingWindow {
                seq,
                deadline,
                to,
                stay_open: m.stay_open,
                last_old: st.next_client,
                name: m.dns.as_ref().map(|d| Arc::from(d.name.as_str())),
                tell_late: m.tell_late,
            };
            if let Some(e) = st.endpoints.iter_mut().find(|e| e.addr == from) {
                e.moving = Some(window.clone());
            }
            window
        };
        if let Some(d) = &m.dns {
            // The record leads to the old node until the lag has passed.
            if d.resolver.record(&d.name).is_empty() {
                d.resolver.set(&d.name, from.ip());
            }
            d.resolver
                .set_at(&d.name, to.ip(), crate::time::after(Instant::now(), d.lag));
        }
        let stay_open = m.stay_open;
        tracing::info!(target: "redis_layers::sim", event = "sim.moving", seq, time, %from, %to, stay_open, "MOVING");
        let notified = self.inner.send_where(Target::Endpoint(from), true, |c| {
            window
                .covers(c.id)
                .then(|| self.inner.moving_for(c, &window, time).to_bytes())
        });
        let sim = self.detached();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = sim.inner.stop.cancelled() => {}
            }
            let closed = if stay_open {
                let closed = sim.inner.close_moved(from, &window);
                tracing::info!(target: "redis_layers::sim", event = "sim.moving_deadline", seq, %from, closed, stay_open, "old connections closed; the endpoint stays open");
                closed
            } else {
                let closed = sim.close_endpoint(from);
                tracing::info!(target: "redis_layers::sim", event = "sim.moving_deadline", seq, %from, closed, stay_open, "old endpoint closed");
                closed
            };
            Moved {
                seq,
                from,
                to,
                notified,
                closed,
            }
        });
        Ok(MovingHandle {
            seq,
            from,
            to,
            notified,
            deadline,
            task,
        })
    }

    /// Plays a migration: `MIGRATING seq time [shards]`, replies on the
    /// endpoint held for `reply_delay` during the window, then
    /// `MIGRATED seq [shards]`. Returns after the window;
    /// [`Simulator::start_migrate`] returns at once.
    pub async fn migrate(&self, w: Window) -> WindowSeqs {
        Self::window_result(self.start_migrate(w).finished().await)
    }

    /// Plays a failover: `FAILING_OVER`, slow replies, `FAILED_OVER`.
    pub async fn failover(&self, w: Window) -> WindowSeqs {
        Self::window_result(self.start_failover(w).finished().await)
    }

    fn window_result(r: io::Result<WindowSeqs>) -> WindowSeqs {
        // Only a runtime shutting down cancels the task, and then nothing
        // waits for this any more.
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a [`Simulator::migrate`]: returns once `MIGRATING` is sent; the
    /// window plays out in a task. Must be called within a Tokio runtime.
    pub fn start_migrate(&self, w: Window) -> WindowHandle {
        self.start_window(w, true)
    }

    /// Starts a [`Simulator::failover`]: returns once `FAILING_OVER` is
    /// sent. Must be called within a Tokio runtime.
    pub fn start_failover(&self, w: Window) -> WindowHandle {
        self.start_window(w, false)
    }

    fn start_window(&self, w: Window, migrate: bool) -> WindowHandle {
        let endpoint = w.endpoint.unwrap_or_else(|| self.endpoint());
        let target = Target::Endpoint(endpoint);
        let seq = self.next_seq();
        let open = if migrate {
            Push::Migrating {
                seq,
                time: w.starts_within,
                shard_ids: w.shard_ids.clone(),
            }
        } else {
            Push::FailingOver {
                seq,
                time: w.starts_within,
                shard_ids: w.shard_ids.clone(),
            }
        };
        let notified = self.notify(target, &open);
        let before = self
            .inner
            .lock()
            .endpoints
            .iter()
            .find(|e| e.addr == endpoint)
            .map(|e| e.delay.load(Ordering::Relaxed))
            .unwrap_or(0);
        self.set_delay(target, w.reply_delay);
        let sim = self.detached();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(w.duration) => {}
                _ = sim.inner.stop.cancelled() => {}
            }
            sim.set_delay(target, Duration::from_nanos(before));
            let end = sim.next_seq();
            let close = if migrate {
                Push::Migrated {
                    seq: end,
                    shard_ids: w.shard_ids,
                }
            } else {
                Push::FailedOver {
                    seq: end,
                    shard_ids: w.shard_ids,
                }
            };
            sim.notify(target, &close);
            WindowSeqs {
                start: seq,
                end,
                notified,
            }
        });
        WindowHandle {
            start: seq,
            endpoint,
            notified,
            task,
        }
    }

    /// The endpoint that stands for `server` (a backend node), if open.
    pub fn endpoint_for(&self, server: SocketAddr) -> Option<SocketAddr> {
        cluster::AddrMap::proxy_for(&*self.inner, server)
    }

    /// The backend server behind `endpoint`.
    pub fn backend_of(&self, endpoint: SocketAddr) -> Option<SocketAddr> {
        self.inner.backend_of(endpoint)
    }

    /// Every distinct backend server.
    fn backends(&self) -> Vec<SocketAddr> {
        let mut b: Vec<SocketAddr> = self
            .inner
            .lock()
            .endpoints
            .iter()
            .map(|e| e.backend)
            .collect();
        b.sort();
        b.dedup();
        b
    }

    /// Counters since the start: redirects forwarded to clients, slot
    /// migrations started, done and failed. A client that acts on
    /// `SMIGRATED` leaves `moved` unchanged across a migration.
    ///
    /// ```no_run
    /// # async fn run(sim: redis_layers::sim::Simulator) {
    /// let before = sim.stats();
    /// // ... a slot migration under client load ...
    /// assert_eq!(sim.stats().moved, before.moved);
    /// # }
    /// ```
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            moved: get(&c.moved),
            ask: get(&c.ask),
            migrations_started: get(&c.migrations_started),
            migrations_done: get(&c.migrations_done),
            migrations_failed: get(&c.migrations_failed),
        }
    }

    /// Stops the simulator: listeners and every proxied connection close.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
        for e in &self.inner.lock().endpoints {
            stop_listening(&e.listener);
        }
    }
}

/// Options of a [`Simulator`]; see [`Simulator::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    backend: SocketAddr,
    listen: SocketAddr,
    fqdn_host: String,
}

impl Builder {
    /// Where the first endpoint listens (default `127.0.0.1:0`, a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The host name `MOVING` gives to connections that asked for an
    /// `*-fqdn` address (default `localhost`), for endpoints on the `listen`
    /// IP or `127.0.0.1`; an endpoint opened at another IP
    /// ([`Simulator::open_endpoint_at`]) is named by its IP.
    pub fn fqdn_host(mut self, host: impl Into<String>) -> Self {
        self.fqdn_host = host.into();
        self
    }

    /// Binds the first endpoint and starts accepting.
    pub async fn start(self) -> io::Result<Simulator> {
        let sim = self.build(false);
        sim.inner.listen_now(self.listen, self.backend)?;
        Ok(sim)
    }

    /// Starts in front of the Redis Cluster that `backend` (any node) is part
    /// of: one endpoint per node (the `listen` address's port is ignored:
    /// each gets a free port), node addresses rewritten in `MOVED`/`ASK`
    /// and in `CLUSTER SLOTS|SHARDS|NODES` replies.
    pub async fn start_cluster(self) -> io::Result<Simulator> {
        let sim = self.build(true);
        let seed = admin_conn(self.backend).await?;
        let text = seed
            .send_cmd(crate::cmd("CLUSTER").arg("NODES"))
            .await
            .map_err(io::Error::other)?;
        let text = String::from_utf8_lossy(text.as_bytes().unwrap_or_default()).into_owned();
        let mut nodes: Vec<SocketAddr> = text
            .lines()
            .filter(|l| !l.contains("fail") && !l.contains("noaddr"))
            .filter_map(|l| l.split(' ').nth(1))
            .filter_map(|a| a.split('@').next())
            .filter_map(|a| a.parse().ok())
            .collect();
        nodes.sort();
        nodes.dedup();
        if nodes.is_empty() {
            return Err(io::Error::other(format!(
                "{}: CLUSTER NODES lists no node",
                self.backend
            )));
        }
        let ip = self.listen.ip();
        for node in nodes {
            sim.inner.listen_now(SocketAddr::new(ip, 0), node)?;
        }
        Ok(sim)
    }

    fn build(&self, cluster: bool) -> Simulator {
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            token: format!("__redis_maint_sim_{:016x}_", rand_u64()),
            cluster,
            seq: AtomicI64::new(1),
            stop: stop.clone(),
            changed: Notify::new(),
            fqdn_host: self.fqdn_host.clone(),
            listen_ip: self.listen.ip(),
            state: Mutex::new(State::default()),
            counters: Counters::default(),
        });
        Simulator {
            inner,
            _stop_on_drop: Some(Arc::new(stop.drop_guard())),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not wedge the simulator.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds `addr` at once (no `.await`: scenario starters are
    /// synchronous) and accepts there in a task.
    fn listen_now(
        self: &Arc<Self>,
        addr: SocketAddr,
        backend: SocketAddr,
    ) -> io::Result<SocketAddr> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let stop = self.stop.child_token();
        let listener = Arc::new(Mutex::new(Some(listener)));
        let entry = EndpointState {
            addr,
            backend,
            stop: stop.clone(),
            listener: listener.clone(),
            refuse: false,
            delay: Arc::new(AtomicU64::new(0)),
            moving: None,
            active: Vec::new(),
            ask: Vec::new(),
        };
        {
            // The OS handed out the address of an endpoint that went away:
            // the new one takes its entry, so every lookup by address finds
            // the endpoint that listens there (the bind proves the old one
            // does not).
            let mut st = self.lock();
            match st.endpoints.iter().position(|e| e.addr == addr) {
                Some(i) => st.endpoints[i] = entry,
                None => st.endpoints.push(entry),
            }
        }
        let this = self.clone();
        tracing::info!(target: "redis_layers::sim", event = "sim.endpoint", %addr, %backend, "endpoint open");
        tokio::spawn(async move {
            let accept = || {
                std::future::poll_fn(|cx| match lock_listener(&listener).as_ref() {
                    Some(l) => l.poll_accept(cx).map(Some),
                    None => std::task::Poll::Ready(None),
                })
            };
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = accept() => match r {
                        Some(r) => r,
                        None => break,
                    },
                };
                match accepted {
                    Ok((sock, peer)) => {
                        let refused = this
                            .lock()
                            .endpoints
                            .iter()
                            .any(|e| e.addr == addr && e.refuse);
                        if refused {
                            drop(sock);
                            continue;
                        }
                        tokio::spawn(proxy::serve(this.clone(), sock, peer, addr));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!(target: "redis_layers::sim", %addr, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            stop_listening(&listener);
        });
        Ok(addr)
    }

    /// The destination endpoint if `endpoint` must answer `ASK` rather
    /// than `MOVED` for `slot` (a migration away from it is under way).
    fn ask_instead_of_moved(&self, endpoint: SocketAddr, slot: u16) -> Option<SocketAddr> {
        self.lock()
            .endpoints
            .iter()
            .find(|e| e.addr == endpoint)?
            .ask
            .iter()
            .find(|g| g.slots.binary_search(&slot).is_ok())
            .map(|g| g.dst)
    }

    fn backend_of(&self, endpoint: SocketAddr) -> Option<SocketAddr> {
        self.lock()
            .endpoints
            .iter()
            .find(|e| e.addr == endpoint)
            .map(|e| e.backend)
    }

    fn register(&self, peer: SocketAddr, endpoint: SocketAddr) -> Option<proxy::Handles> {
        let mut st = self.lock();
        let ep = st.endpoints.iter().find(|e| e.addr == endpoint)?;
        if ep.stop.is_cancelled() {
            return None;
        }
        let close = ep.stop.child_token();
        let endpoint_delay = ep.delay.clone();
        st.next_client += 1;
        let id = st.next_client;
        let (tx, rx) = mpsc::unbounded_channel();
        let conn_delay = Arc::new(AtomicU64::new(proxy::NO_DELAY_SET));
        st.clients.insert(
            id,
            ClientState {
                info: ClientInfo {
                    id,
                    endpoint,
                    peer,
                    name: None,
                    resp3: false,
                    maint: None,
                    maint_requests: 0,
                },
                inject: tx,
                close: close.clone(),
                delay: conn_delay.clone(),
            },
        );
        drop(st);
        self.changed.notify_waiters();
        Some(proxy::Handles {
            id,
            inject: rx,
            close,
            conn_delay,
            endpoint_delay,
        })
    }

    fn unregister(&self, id: u64) {
        self.lock().clients.remove(&id);
        self.changed.notify_waiters();
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ClientInfo)) {
        if let Some(c) = self.lock().clients.get_mut(&id) {
            f(&mut c.info);
        }
        self.changed.notify_waiters();
    }

    fn note_protocol(&self, id: u64, resp3: bool) {
        self.update(id, |c| c.resp3 = resp3);
    }

    fn note_name(&self, id: u64, name: Option<String>) {
        self.update(id, |c| c.name = name);
    }

    fn note_maint_request(&self, id: u64) {
        self.update(id, |c| c.maint_requests += 1);
    }

    fn is_resp3(&self, id: u64) -> bool {
        self.lock().clients.get(&id).is_some_and(|c| c.info.resp3)
    }

    fn handshake_error(&self) -> Option<String> {
        self.lock().handshake_error.clone()
    }

    fn server_version(&self) -> Option<String> {
        self.lock().server_version.clone()
    }

    /// Records an opt-in (or out) and returns the notifications of events
    /// under way that the connection should get now.
    fn set_maint(&self, id: u64, t: Option<EndpointType>) -> Vec<Bytes> {
        let mut late = Vec::new();
        {
            let mut st = self.lock();
            let Some(c) = st.clients.get_mut(&id) else {
                return late;
            };
            c.info.maint = t;
            let info = c.info.clone();
            if info.maint.is_some() {
                let window = st
                    .endpoints
                    .iter()
                    .find(|e| e.addr == info.endpoint)
                    .and_then(|e| e.moving.clone())
                    .filter(|w| w.tell_late && w.covers(info.id));
                let active = st
                    .endpoints
                    .iter()
                    .find(|e| e.addr == info.endpoint)
                    .map(|e| e.active.iter().map(Push::to_bytes).collect::<Vec<_>>())
                    .unwrap_or_default();
                late.extend(active);
                if let Some(w) = window {
                    // Rounded down: a late arrival is told to leave early
                    // rather than after the close.
                    let left = w.deadline.saturating_duration_since(Instant::now());
                    late.push(self.moving_for(&info, &w, left.as_secs()).to_bytes());
                }
            }
        }
        self.changed.notify_waiters();
        late
    }

    /// `MOVING` addressed the way this connection asked.
    fn moving_for(&self, c: &ClientInfo, w: &MovingWindow, time: u64) -> Push {
        let (seq, to) = (w.seq, w.to);
        let endpoint = match c.maint {
            Some(EndpointType::None) => None,
            Some(t) if t.is_fqdn() && w.name.is_some() => Some(format!(
                "{}:{}",
                w.name.as_deref().unwrap_or_default(),
                to.port()
            )),
            Some(t) if t.is_fqdn() => {
                // An endpoint at a chosen address (another loopback IP,
                // e.g. `SAME-PORT`) is not what the host name stands for:
                // its IP is the only name that reaches it.
                let ip = to.ip();
                let named = ip == self.listen_ip
                    || ip.is_unspecified()
                    || ip == IpAddr::V4(Ipv4Addr::LOCALHOST);
                Some(if named {
                    format!("{}:{}", self.fqdn_host, to.port())
                } else {
                    to.to_string()
                })
            }
            _ => Some(to.to_string()),
        };
        Push::Moving {
            seq,
            time,
            endpoint,
        }
    }

    fn matches(target: Target, c: &ClientInfo) -> bool {
        match target {
            Target::Client(id) => c.id == id,
            Target::Endpoint(e) => c.endpoint == e,
            Target::All => true,
        }
    }

    /// Queues `bytes_for(client)` on each connection of `target` (only the
    /// opted-in ones when `opted_in`); returns how many got something.
    fn send_where(
        &self,
        target: Target,
        opted_in: bool,
        mut bytes_for: impl FnMut(&ClientInfo) -> Option<Bytes>,
    ) -> usize {
        let st = self.lock();
        st.clients
            .values()
            .filter(|c| Self::matches(target, &c.info) && (!opted_in || c.info.maint.is_some()))
            .filter_map(|c| bytes_for(&c.info).map(|b| c.inject.send(b).is_ok()))
            .filter(|sent| *sent)
            .count()
    }

    /// A [`MovingPlan::stay_open`] deadline: closes the connections on `from`
    /// that `w` covers (the old node's) and ends the window, unless a later
    /// `MOVING` replaced it; `from` keeps listening.
    fn close_moved(&self, from: SocketAddr, w: &MovingWindow) -> usize {
        let mut st = self.lock();
        if let Some(e) = st.endpoints.iter_mut().find(|e| e.addr == from) {
            if e.moving.as_ref().is_some_and(|m| m.seq == w.seq) {
                e.moving = None;
            }
        }
        st.clients
            .values()
            .filter(|c| c.info.endpoint == from && w.covers(c.info.id))
            .map(|c| c.close.cancel())
            .count()
    }

    fn close_where(&self, target: Target) -> usize {
        let st = self.lock();
        st.clients
            .values()
            .filter(|c| Self::matches(target, &c.info))
            .map(|c| c.close.cancel())
            .count()
    }
}

impl cluster::AddrMap for Inner {
    fn proxy_for(&self, server: SocketAddr) -> Option<SocketAddr> {
        self.lock()
            .endpoints
            .iter()
            .find(|e| e.backend == server && !e.stop.is_cancelled())
            .map(|e| e.addr)
    }
}

fn lock_listener(l: &Mutex<Option<TcpListener>>) -> MutexGuard<'_, Option<TcpListener>> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

/// Closes an endpoint's listener so that it refuses connections at once.
///
/// Dropping it is not enough: a child process being spawned by any thread
/// of this process (a test starting a `redis-server`, say) holds a copy of
/// every descriptor between its fork and its exec, and the socket keeps
/// accepting connections into its backlog until that copy is gone (then
/// they are reset). Measured: 498 of 172,366 dropped listeners still
/// accepted a connection while another thread spawned processes, 0 of
/// 135,226 shut down first. `shutdown` acts on the socket, not the
/// descriptor, so it stops listening in every copy.
fn stop_listening(l: &Mutex<Option<TcpListener>>) {
    if let Some(l) = lock_listener(l).take() {
        let _ = socket2::SockRef::from(&l).shutdown(std::net::Shutdown::Both);
    }
}

/// A direct connection to a server, for the simulator's own work.
async fn admin_conn(server: SocketAddr) -> io::Result<crate::Connection> {
    crate::Connector::new()
        .client_name("redis-maint-sim")
        .connect(crate::Endpoint::tcp(server.ip().to_string(), server.port()))
        .await
        .map_err(io::Error::other)
}

/// Slots as `"0-100,200"`.
fn slot_ranges(slots: &[u16]) -> String {
    let mut sorted = slots.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// Whole seconds, rounded up: a `time` field cannot say less than a second.
fn whole_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// A random number for the marker token, from the standard library's
/// randomly seeded hasher: no extra dependency for one value.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn slot_ranges() {
        assert_eq!(
            super::slot_ranges(&[200, 0, 1, 2, 100, 3, 201]),
            "0-3,100,200-201"
        );
        assert_eq!(super::slot_ranges(&[5]), "5");
    }
}

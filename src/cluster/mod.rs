//! Redis Cluster: routes each request to the node that serves its keys.
//!
//! [`Cluster`] is a command service over a per-node maker ([`NewNode`]):
//! for each node of the cluster it makes one node service (by default
//! RelaxTimeout over Handoff over the Connector: each node gets relaxed
//! timeouts and seamless handoffs of its own) and sends each request to the
//! right one:
//!
//! - **Keyed commands** go to the primary that serves the slot of their
//!   keys ([`key_slot`](slot::key_slot): CRC16 with hash tags). Key
//!   positions come from a static table of the common commands, and from
//!   `COMMAND INFO` (asked once, then cached) for the rest. A command whose
//!   keys are in different slots is refused before anything is sent
//!   ([`RouteError::CrossSlot`](keys::RouteError)).
//! - **Key-less commands** go to a primary, in turn; commands whose meaning
//!   is cluster-wide (`DBSIZE`, `FLUSHALL`, `SCRIPT LOAD`, `KEYS`, ...) go
//!   to every primary and the replies are combined (see
//!   [`Aggregate`](keys::Aggregate) for how).
//! - **Redirects**: `MOVED` updates the slot map at once, schedules a
//!   topology refresh and retries on the new owner; `ASK` sends `ASKING`
//!   and the command together (one write, so nothing can come between) to
//!   the target, once. At most `max_redirects` redirects per request.
//! - **Pipelines** are split per node and sent concurrently; replies come
//!   back in the caller's order. A command of a pipeline that is
//!   redirected is retried alone.
//! - **Topology**: read from `CLUSTER SHARDS` (or `CLUSTER SLOTS` on servers
//!   without it) of a known node or a seed; refreshes are coalesced (one at
//!   a time, at most one per `refresh_cooldown`) and also run every
//!   `refresh_interval`. Node services are made when a node first appears
//!   and dropped when it leaves.
//! - **Maintenance** (spec section 3, "Cluster"): `SMIGRATING` relaxes the
//!   node's timeouts (its own RelaxTimeout does that). `SMIGRATED` updates
//!   the slot map at once from its triplets (the slots' owner is `dst`,
//!   made a node if new), ends the relaxation (the node's state does) and
//!   schedules one coalesced refresh; the same `SMIGRATED` arriving from
//!   several nodes is applied once (cluster-wide dedup by sequence number).
//!   Commands already queued on the old owner are not taken back: they get
//!   `MOVED` and follow it.
//! - **Trust** (see [`trust`](crate::trust)): a redirect is followed only
//!   to a member of the cluster. A `MOVED` or `ASK` naming an address that
//!   is not a node of the last topology (nor a seed) reads the topology
//!   again first, and is followed only if the new map has that node;
//!   otherwise the caller gets the redirect error and nothing is sent
//!   there (a `trust.refused` warning). An `SMIGRATED` moves only slots its
//!   sender serves, and only in triplets that name the sender as the
//!   source (or none); this is checked before the cluster-wide dedup, so a
//!   copy from another node cannot stand in for the source's own. A
//!   [`ClusterConfig::target_policy`] applies on top of that.
//!
//! The hot path is ours, not a crate's, because it runs for every command:
//! one atomic load (is the routing snapshot current?); for a command this
//! clone routed last time (a loop of `GET`s), a byte compare of its name's
//! encoding instead of the table lookup, and the key read where it sits;
//! the key's CRC16, hashed in the same pass that looks for a `{`. A single
//! command (up to 64 KiB) is not copied to follow a redirect: the crate's
//! connection keeps each command until its reply and hands it back with a
//! `MOVED` or `ASK` ([`Maintained::RETURNS_REDIRECTED`]), and so is each
//! redirected command of a pipeline of up to 64 KiB. Longer commands and
//! pipelines, and those over a node stack that does not declare it, are
//! copied. About 295 instructions per `GET` in all
//! (README, "Cluster routing overhead").
//!
//! The building blocks are public for users who route by themselves: hash
//! slots ([`slot`]), where a command's keys are and which node(s) it must
//! go to ([`keys`]), and the slot map parsed from `CLUSTER SHARDS` /
//! `CLUSTER SLOTS` ([`topology`]).

mod future;
pub mod keys;
mod layer;
pub mod slot;
pub mod topology;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tower_service::Service;

use crate::error::{Error, Result, ServerError};
use crate::lock;
use crate::maint::{Dedup, MaintEvent, Maintained, Notification, SlotMove, SlotSet};
use crate::request::{Body, Request, Response};
use crate::resp::{cmd, Pipeline, Value};
use crate::transport::Endpoint;
use crate::{RedirectKind, ServerErrorKind};
use keys::{CommandTable, Route, RouteError};
use topology::SlotMap;

pub use future::ResponseFuture;
pub use layer::ClusterLayer;

/// The role of a node [`Cluster`] asks its [`NewNode`] maker for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeRole {
    /// A primary: takes writes.
    Primary,
    /// A replica, used only for reads with
    /// [`ClusterConfig::read_from_replicas`]; its connections must send
    /// `READONLY` after the handshake (e.g. with
    /// [`Connector::on_connect`](crate::Connector::on_connect)).
    Replica,
}

/// Makes the command service of one cluster node: a closure
/// `Fn(Endpoint, NodeRole) -> S`, where `S` is a command service that
/// carries maintenance signals (e.g. RelaxTimeout over Handoff).
pub trait NewNode: Clone + Send + Sync + 'static {
    /// The node service.
    type Node: Service<Request, Response = Response, Error = Error, Future: Send + 'static>
        + Maintained
        + Clone
        + Send
        + 'static;

    /// The service for the node at `endpoint`.
    fn new_node(&self, endpoint: Endpoint, role: NodeRole) -> Self::Node;
}

impl<F, S> NewNode for F
where
    F: Fn(Endpoint, NodeRole) -> S + Clone + Send + Sync + 'static,
    S: Service<Request, Response = Response, Error = Error, Future: Send + 'static>
        + Maintained
        + Clone
        + Send
        + 'static,
{
    type Node = S;

    fn new_node(&self, endpoint: Endpoint, role: NodeRole) -> S {
        self(endpoint, role)
    }
}

/// How a [`Cluster`] routes and refreshes; see the field docs for defaults.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::cluster::ClusterConfig;
///
/// let config = ClusterConfig::default()
///     .max_redirects(3)
///     .refresh_interval(Some(Duration::from_secs(30)));
/// assert_eq!(config.get_max_redirects(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    max_redirects: u32,
    refresh_interval: Option<Duration>,
    refresh_cooldown: Duration,
    read_from_replicas: bool,
    trust: Option<crate::trust::SharedPolicy>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            max_redirects: 5,
            refresh_interval: Some(Duration::from_secs(60)),
            refresh_cooldown: Duration::from_millis(250),
            read_from_replicas: false,
            trust: None,
        }
    }
}

impl ClusterConfig {
    /// Redirects (`MOVED`/`ASK`) followed per request before giving up with
    /// the last redirect error. Default 5.
    pub fn max_redirects(mut self, n: u32) -> Self {
        self.max_redirects = n;
        self
    }

    /// The configured [`max_redirects`](Self::max_redirects).
    pub fn get_max_redirects(&self) -> u32 {
        self.max_redirects
    }

    /// How often the topology is read again with no reason; `None`: only
    /// when a redirect, a maintenance notification or a failure says so.
    /// Default 60 s; at most [`MAX_TIMEOUT`](crate::MAX_TIMEOUT) (a longer
    /// one is clamped to it).
    pub fn refresh_interval(mut self, every: impl Into<Option<Duration>>) -> Self {
        self.refresh_interval = every.into().map(crate::time::clamp);
        self
    }

    /// The least time between two refreshes (more reasons within it are
    /// served by one refresh at its end). Default 250 ms; at most
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT) (a longer one is clamped to it).
    pub fn refresh_cooldown(mut self, d: Duration) -> Self {
        self.refresh_cooldown = crate::time::clamp(d);
        self
    }

    /// Send read-only commands to a replica of the slot's shard (in turn),
    /// when it has one. Default false.
    pub fn read_from_replicas(mut self, yes: bool) -> Self {
        self.read_from_replicas = yes;
        self
    }

    /// A [`TargetPolicy`](crate::trust::TargetPolicy) that `MOVED`, `ASK`
    /// and `SMIGRATED` targets must pass too, on top of the membership rule
    /// that always holds (see the [module docs](self)). Default: none, the
    /// membership rule alone (cluster nodes are often announced by IP under
    /// a seed that is a name, which the default policy would refuse).
    ///
    /// ```
    /// use redis_layers::cluster::ClusterConfig;
    /// use redis_layers::trust::AllowCidr;
    /// let config = ClusterConfig::default().target_policy(AllowCidr::new("10.0.0.0/8").unwrap());
    /// ```
    pub fn target_policy(self, policy: impl crate::trust::TargetPolicy) -> Self {
        self.shared_policy(crate::trust::SharedPolicy::new(policy))
    }

    pub(crate) fn shared_policy(mut self, policy: crate::trust::SharedPolicy) -> Self {
        self.trust = Some(policy);
        self
    }
}

/// What requests are routed with: the slot map, the node index of every
/// slot's primary, and the command table. Replaced as a whole.
struct Snapshot {
    map: SlotMap,
    /// Node index of each slot's primary; `u32::MAX`: unassigned.
    owner: Box<[u32]>,
    primaries: Vec<u32>,
    /// Replica node indexes by primary node index (with
    /// [`ClusterConfig::read_from_replicas`]).
    replicas: HashMap<u32, Vec<u32>>,
    table: Arc<CommandTable>,
}

const NONE: u32 = u32::MAX;

/// For this long after a `SMIGRATED`, its moves are applied on top of a
/// topology read from another node than their destination: the source (or
/// a bystander) may not know yet that the slots moved, and taking its word
/// would send commands back to the source, to be redirected (`MOVED`).
const SMIGRATED_WINS_FOR: Duration = Duration::from_secs(1);

impl Snapshot {
    fn empty() -> Self {
        Snapshot {
            map: SlotMap::default(),
            owner: vec![NONE; usize::from(slot::SLOTS)].into_boxed_slice(),
            primaries: vec![],
            replicas: HashMap::new(),
            table: Arc::new(CommandTable::default()),
        }
    }
}

struct NodeEntry<S> {
    endpoint: Endpoint,
    /// `None` once the node left the cluster.
    svc: Option<S>,
}

struct Topology<S> {
    snapshot: Arc<Snapshot>,
    nodes: Vec<NodeEntry<S>>,
    index: HashMap<Endpoint, u32>,
}

#[derive(Default)]
struct Refresh {
    running: bool,
    again: bool,
    last: Option<Instant>,
    /// Callers waiting for the first topology.
    waiters: Vec<Waker>,
    /// The last failure, for callers waiting for the first topology.
    error: Option<Error>,
    /// Refreshes finished.
    done: u64,
    /// Nodes to read the next topology from first (the `dst` of a
    /// `SMIGRATED`: the source may not know yet that it gave slots up).
    prefer: Vec<Endpoint>,
    /// The periodic refresh task runs.
    ticking: bool,
}

pub(super) struct Shared<N: NewNode> {
    new_node: N,
    seeds: Vec<Endpoint>,
    config: ClusterConfig,
    gen: AtomicU64,
    topo: Mutex<Topology<N::Node>>,
    refresh: Mutex<Refresh>,
    next_primary: AtomicUsize,
    smigrated: Mutex<Dedup<()>>,
    /// Recent `SMIGRATED` moves, until when they win over a topology read
    /// from a node other than their `dst` (see [`SMIGRATED_WINS_FOR`]).
    recent_moves: Mutex<Vec<(crate::maint::SlotMove, Instant)>>,
    /// Commands `COMMAND INFO` did not know: sent to any primary.
    unknown: Mutex<std::collections::HashSet<String>>,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    moved: AtomicU64,
    ask: AtomicU64,
    refreshes: AtomicU64,
    smigrated: AtomicU64,
    waited: AtomicU64,
}

/// What a [`Cluster`] has done so far ([`Cluster::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// `MOVED` replies followed.
    pub moved: u64,
    /// `ASK` replies followed.
    pub ask: u64,
    /// Topology refreshes that succeeded.
    pub refreshes: u64,
    /// `SMIGRATED` notifications applied (after dedup).
    pub smigrated: u64,
    /// Requests that did not run because their slot's owner was out of
    /// reach (a node down, `CLUSTERDOWN`, `TRYAGAIN`) and waited for it, or
    /// for a new owner, within their deadline.
    pub waited: u64,
    /// Node entries kept (live nodes and the room left by nodes that left,
    /// which new nodes reuse): bounded by the largest topology seen, not by
    /// how many addresses servers have named.
    pub node_entries: usize,
}

/// The routing command service of a Redis Cluster; see the
/// [module docs](self).
///
/// Cheap to clone; clones share the topology and the node services.
pub struct Cluster<N: NewNode> {
    shared: Arc<Shared<N>>,
    gen: u64,
    snapshot: Arc<Snapshot>,
    /// This clone's node services, by node index.
    local: Vec<Option<N::Node>>,
    /// Waiting for the first topology since this many refreshes were done.
    waiting: Option<u64>,
    /// What the fast path's futures follow redirects with.
    fixup: Option<Arc<dyn Fixup>>,
    /// The last command this clone routed.
    memo: keys::RouteMemo,
    /// The first topology read failed: `poll_ready` said ready (a later
    /// read may pass; tower reads a `poll_ready` error as "gone for
    /// good"), and the next `call` fails with it.
    failed: Option<Error>,
}

impl<N: NewNode> Clone for Cluster<N> {
    fn clone(&self) -> Self {
        Cluster {
            shared: self.shared.clone(),
            gen: self.gen,
            snapshot: self.snapshot.clone(),
            local: Vec::new(),
            waiting: None,
            fixup: None,
            memo: Default::default(),
            failed: None,
        }
    }
}

impl<N: NewNode> fmt::Debug for Cluster<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("seeds", &self.shared.seeds)
            .field("primaries", &self.snapshot.primaries.len())
            .finish_non_exhaustive()
    }
}

impl<N: NewNode> Cluster<N> {
    /// A cluster service that discovers the topology from `seeds` and makes
    /// node services with `new_node`.
    pub fn new(new_node: N, seeds: Vec<Endpoint>, config: ClusterConfig) -> Self {
        let shared = Arc::new(Shared {
            new_node,
            seeds,
            gen: AtomicU64::new(0),
            topo: Mutex::new(Topology {
                snapshot: Arc::new(Snapshot::empty()),
                nodes: vec![],
                index: HashMap::new(),
            }),
            refresh: Mutex::new(Refresh::default()),
            next_primary: AtomicUsize::new(0),
            smigrated: Mutex::new(Dedup::new(Duration::from_secs(120))),
            recent_moves: Mutex::new(Vec::new()),
            unknown: Mutex::new(Default::default()),
            stats: Counters::default(),
            config,
        });
        let snapshot = lock(&shared.topo).snapshot.clone();
        Cluster {
            shared,
            gen: 0,
            snapshot,
            local: Vec::new(),
            waiting: None,
            fixup: None,
            memo: Default::default(),
            failed: None,
        }
    }

    /// Counts of redirects, refreshes and `SMIGRATED`s handled.
    pub fn stats(&self) -> ClusterStats {
        let c = &self.shared.stats;
        ClusterStats {
            moved: c.moved.load(Ordering::Relaxed),
            ask: c.ask.load(Ordering::Relaxed),
            refreshes: c.refreshes.load(Ordering::Relaxed),
            smigrated: c.smigrated.load(Ordering::Relaxed),
            waited: c.waited.load(Ordering::Relaxed),
            node_entries: lock(&self.shared.topo).nodes.len(),
        }
    }

    /// The slot map as the service knows it now.
    pub fn slot_map(&self) -> SlotMap {
        lock(&self.shared.topo).snapshot.map.clone()
    }

    /// Reads the topology again now (coalesced with any refresh under way)
    /// and waits for it.
    pub async fn refresh(&self) -> Result<()> {
        self.shared.refresh_now().await
    }

    /// Whether a redirect to `addr` is followed (see
    /// [`trust`](crate::trust)): a member of the cluster, in the last
    /// topology or in one read now, and allowed by the target policy.
    pub(crate) async fn follows(&self, source: crate::trust::Source, addr: &Endpoint) -> bool {
        self.shared.follows(source, addr).await
    }

    /// Takes the current snapshot if it changed.
    #[inline]
    fn sync(&mut self) {
        if self.shared.gen.load(Ordering::Acquire) != self.gen {
            self.resync();
        }
    }

    #[cold]
    fn resync(&mut self) {
        let topo = lock(&self.shared.topo);
        self.snapshot = topo.snapshot.clone();
        self.gen = self.shared.gen.load(Ordering::Acquire);
        drop(topo);
        self.local.clear();
        // The command table may have learnt something.
        self.memo.clear();
    }

    /// `poll_ready` when the topology changed (takes the new snapshot) or
    /// there is none yet (reads it, and waits).
    #[inline(never)]
    fn poll_ready_slow(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        loop {
            self.sync();
            if !self.snapshot.primaries.is_empty() {
                self.waiting = None;
                return Poll::Ready(Ok(()));
            }
            let mut r = lock(&self.shared.refresh);
            match self.waiting {
                Some(since) if r.done > since => {
                    self.waiting = None;
                    if let Some(e) = r.error.clone() {
                        self.failed = Some(e);
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                Some(_) => {}
                None => {
                    self.waiting = Some(r.done);
                    self.shared.request_refresh_locked(&mut r);
                }
            }
            r.waiters.push(cx.waker().clone());
            return Poll::Pending;
        }
    }

    /// This clone's service for node `i`.
    fn node(&mut self, i: u32) -> Option<&mut N::Node> {
        let i = i as usize;
        if self.local.len() <= i {
            self.local.resize_with(i + 1, || None);
        }
        if self.local[i].is_none() {
            self.local[i] = self.shared.node(i as u32);
        }
        self.local[i].as_mut()
    }
}

/// Where one request goes.
enum Target {
    Node(u32),
    Fanout(keys::Aggregate),
    Split,
    Learn(String),
}

impl<N: NewNode> Shared<N> {
    fn node(&self, i: u32) -> Option<N::Node> {
        lock(&self.topo)
            .nodes
            .get(i as usize)
            .and_then(|n| n.svc.clone())
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        lock(&self.topo).snapshot.clone()
    }

    /// The node index of `endpoint`, making its service if it is new.
    fn ensure_node(
        self: &Arc<Self>,
        topo: &mut Topology<N::Node>,
        endpoint: &Endpoint,
        role: NodeRole,
    ) -> u32 {
        if let Some(&i) = topo.index.get(endpoint) {
            if topo.nodes[i as usize].svc.is_none() {
                let svc = self.new_node.new_node(endpoint.clone(), role);
                self.watch(&svc, endpoint);
                topo.nodes[i as usize].svc = Some(svc);
            }
            return i;
        }
        let svc = self.new_node.new_node(endpoint.clone(), role);
        self.watch(&svc, endpoint);
        let entry = NodeEntry {
            endpoint: endpoint.clone(),
            svc: Some(svc),
        };
        // The entry of a node that left, if any: the routing snapshot
        // refers only to live nodes, so no route leads there, and the
        // entries stay as many as the largest topology.
        let i = match topo.nodes.iter().position(|n| n.svc.is_none()) {
            Some(free) => {
                let old = std::mem::replace(&mut topo.nodes[free], entry);
                topo.index.remove(&old.endpoint);
                free as u32
            }
            None => {
                topo.nodes.push(entry);
                topo.nodes.len() as u32 - 1
            }
        };
        topo.index.insert(endpoint.clone(), i);
        i
    }

    /// Follows a node's maintenance events: `SMIGRATED` updates the map.
    fn watch(self: &Arc<Self>, svc: &N::Node, endpoint: &Endpoint) {
        let mut events = svc.subscribe();
        let weak: Weak<Self> = Arc::downgrade(self);
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            loop {
                let ev = match events.recv().await {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                };
                let Some(shared) = weak.upgrade() else { break };
                if let MaintEvent::Notification {
                    notification: Notification::SMigrated { seq, moves },
                    vetoed: false,
                } = ev
                {
                    shared.smigrated(&endpoint, seq, &moves);
                }
            }
        });
    }

    /// Applies a `SMIGRATED` (once per sequence number, cluster-wide).
    fn smigrated(self: &Arc<Self>, from: &Endpoint, seq: i64, moves: &[SlotMove]) {
        // Checked before the dedup, so that a copy from a node that may
        // not announce these moves does not stand in for the real one.
        let moves = self.announceable(from, moves);
        if moves.is_empty() || !lock(&self.smigrated).first_time((), seq, std::time::Instant::now())
        {
            return;
        }
        let moves = &moves[..];
        self.stats.smigrated.fetch_add(1, Ordering::Relaxed);
        tracing::info!(target: "redis_layers::cluster", event = "cluster.smigrated", seq, %from, moves = moves.len(), "slots moved; slot map updated");
        {
            let mut topo = lock(&self.topo);
            let mut map = topo.snapshot.map.clone();
            for m in moves {
                map.apply_slot_move(m);
            }
            self.install(&mut topo, map);
        }
        let until = crate::time::after(Instant::now(), SMIGRATED_WINS_FOR);
        lock(&self.recent_moves).extend(moves.iter().map(|m| (m.clone(), until)));
        let mut r = lock(&self.refresh);
        for m in moves {
            let dst = Endpoint::tcp(m.dst.host.clone(), m.dst.port);
            if !r.prefer.contains(&dst) {
                r.prefer.push(dst);
            }
        }
        self.request_refresh_locked(&mut r);
    }

    /// The part of an `SMIGRATED` that `from` may announce: a triplet
    /// whose source is `from` (when it names one), whose destination the
    /// target policy allows, and of its slots those that `from` serves in
    /// the map (or that are at the destination already, taught by a
    /// `MOVED`). A node cannot give away slots it does not have.
    fn announceable(&self, from: &Endpoint, moves: &[SlotMove]) -> Vec<SlotMove> {
        let topo = lock(&self.topo);
        let Some(&me) = topo.index.get(from) else {
            return Vec::new();
        };
        let owner = &topo.snapshot.owner;
        let mut out = Vec::new();
        for m in moves {
            let dst = Endpoint::tcp(m.dst.host.clone(), m.dst.port);
            let src_ok = m.src.as_ref().is_none_or(|s| {
                s.port == from.port().unwrap_or(0)
                    && from
                        .host()
                        .is_some_and(|h| crate::trust::same_host(&s.host, h))
            });
            if !src_ok || !self.trusts(crate::trust::Source::Smigrated, &dst, from) {
                if !src_ok {
                    tracing::warn!(target: "redis_layers::trust", event = "trust.refused", source = "smigrated", %from, src = ?m.src, "SMIGRATED names another node as the source; ignored");
                }
                continue;
            }
            let at_dst = topo.index.get(&dst).copied();
            let kept = m.slots.iter().filter(|&s| {
                let o = owner[usize::from(s)];
                o == me || Some(o) == at_dst
            });
            let Ok(slots) = SlotSet::from_ranges(kept.map(|s| s..=s)) else {
                continue;
            };
            if slots.len() < m.slots.len() {
                tracing::warn!(target: "redis_layers::trust", event = "trust.refused", source = "smigrated", %from, refused = m.slots.len() - slots.len(), "SMIGRATED moves slots its sender does not serve; those are ignored");
            }
            if !slots.is_empty() {
                out.push(SlotMove {
                    src: m.src.clone(),
                    dst: m.dst.clone(),
                    slots,
                });
            }
        }
        out
    }

    /// Whether a server-named node is followed: a member of the cluster
    /// (in the last topology, or else in a fresh one read now), and allowed
    /// by the configured target policy, if any.
    async fn follows(self: &Arc<Self>, source: crate::trust::Source, addr: &Endpoint) -> bool {
        if !self.is_member(addr) {
            let _ = self.refresh_now().await;
            if !self.is_member(addr) {
                tracing::warn!(target: "redis_layers::trust", event = "trust.refused", source = source.as_str(), target = %addr, "redirect to a node that is not in the cluster's topology; not followed");
                #[cfg(feature = "metrics")]
                metrics::counter!(crate::trust::REFUSED, "source" => source.as_str()).increment(1);
                return false;
            }
        }
        self.trusts(source, addr, &self.seeds[0])
    }

    /// The configured target policy's word (true without one).
    fn trusts(&self, source: crate::trust::Source, addr: &Endpoint, from: &Endpoint) -> bool {
        self.config
            .trust
            .as_ref()
            .is_none_or(|p| p.check(&crate::trust::Target::new(source, addr, from, false)))
    }

    /// A node of the last topology (a primary or replica of a shard), or a
    /// seed.
    fn is_member(&self, addr: &Endpoint) -> bool {
        self.seeds.contains(addr)
            || lock(&self.topo)
                .snapshot
                .map
                .shards()
                .iter()
                .any(|s| s.primary == *addr || s.replicas.contains(addr))
    }

    /// Makes `map` the routing snapshot (nodes made and dropped to match).
    fn install(self: &Arc<Self>, topo: &mut Topology<N::Node>, map: SlotMap) {
        let mut owner = vec![NONE; usize::from(slot::SLOTS)].into_boxed_slice();
        let mut primaries = Vec::new();
        let mut by_endpoint: HashMap<Endpoint, u32> = HashMap::new();
        // Each shard's node, found once: every `MOVED` installs a map, so
        // the walk over 16384 slots does no hashing.
        let mut node_of_shard = vec![NONE; map.shards().len()];
        for (slot, &idx) in map.shard_indexes().iter().enumerate() {
            let Some(shard) = map.shards().get(usize::from(idx)) else {
                continue;
            };
            let known = &mut node_of_shard[usize::from(idx)];
            if *known == NONE {
                *known = match by_endpoint.get(&shard.primary) {
                    Some(&i) => i,
                    None => {
                        let i = self.ensure_node(topo, &shard.primary, NodeRole::Primary);
                        by_endpoint.insert(shard.primary.clone(), i);
                        primaries.push(i);
                        i
                    }
                };
            }
            owner[slot] = *known;
        }
        let mut keep: Vec<u32> = primaries.clone();
        let mut replicas: HashMap<u32, Vec<u32>> = HashMap::new();
        if self.config.read_from_replicas {
            for shard in map.shards() {
                let Some(&p) = by_endpoint.get(&shard.primary) else {
                    continue;
                };
                for r in &shard.replicas {
                    if by_endpoint.contains_key(r) {
                        continue;
                    }
                    let i = self.ensure_node(topo, r, NodeRole::Replica);
                    keep.push(i);
                    replicas.entry(p).or_default().push(i);
                }
            }
        }
        // Nodes that left: drop their services (clones finish what they hold).
        for (i, n) in topo.nodes.iter_mut().enumerate() {
            if n.svc.is_some() && !keep.contains(&(i as u32)) {
                tracing::debug!(target: "redis_layers::cluster", event = "cluster.node_dropped", endpoint = %n.endpoint, "node left the topology");
                n.svc = None;
            }
        }
        let table = topo.snapshot.table.clone();
        topo.snapshot = Arc::new(Snapshot {
            map,
            owner,
            primaries,
            replicas,
            table,
        });
        self.gen.fetch_add(1, Ordering::AcqRel);
    }

    /// `MOVED slot addr`: the slot's owner is `addr` from now on.
    fn moved(self: &Arc<Self>, slot: u16, addr: &Endpoint) -> u32 {
        let mut topo = lock(&self.topo);
        let current = topo.snapshot.owner[usize::from(slot)];
        if let Some(&i) = topo.index.get(addr) {
            if current == i && topo.nodes[i as usize].svc.is_some() {
                return i;
            }
        }
        let mut map = topo.snapshot.map.clone();
        map.set_primary([slot..=slot], addr.clone());
        self.install(&mut topo, map);
        let i = topo.snapshot.owner[usize::from(slot)];
        drop(topo);
        self.request_refresh();
        i
    }

    /// The node for `addr` (a redirect target), made if new.
    fn node_at(self: &Arc<Self>, addr: &Endpoint) -> (u32, Option<N::Node>) {
        let mut topo = lock(&self.topo);
        let i = self.ensure_node(&mut topo, addr, NodeRole::Primary);
        (i, topo.nodes[i as usize].svc.clone())
    }

    /// Starts a refresh unless one is running or ran within the cooldown
    /// (then one more runs when that ends).
    fn request_refresh(self: &Arc<Self>) {
        let mut r = lock(&self.refresh);
        self.request_refresh_locked(&mut r);
    }

    fn request_refresh_locked(self: &Arc<Self>, r: &mut Refresh) {
        if r.running {
            r.again = true;
            return;
        }
        r.running = true;
        if !r.ticking {
            r.ticking = true;
            if let Some(every) = self.config.refresh_interval {
                let weak = Arc::downgrade(self);
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let Some(shared) = weak.upgrade() else { break };
                        shared.request_refresh();
                    }
                });
            }
        }
        let wait = r
            .last
            .map(|l| {
                crate::time::after(l, self.config.refresh_cooldown)
                    .saturating_duration_since(Instant::now())
            })
            .unwrap_or_default();
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            shared.run_refreshes().await;
        });
    }

    async fn refresh_now(self: &Arc<Self>) -> Result<()> {
        let gen = self.gen.load(Ordering::Acquire);
        self.request_refresh();
        // Wait for a refresh that started after this call.
        loop {
            let r = std::future::poll_fn(|cx| {
                let mut st = lock(&self.refresh);
                if !st.running {
                    return Poll::Ready(st.error.clone());
                }
                st.waiters.push(cx.waker().clone());
                Poll::Pending
            })
            .await;
            if let Some(e) = r {
                return Err(e);
            }
            if self.gen.load(Ordering::Acquire) != gen || !self.snapshot().primaries.is_empty() {
                return Ok(());
            }
        }
    }

    async fn run_refreshes(self: Arc<Self>) {
        loop {
            {
                let mut r = lock(&self.refresh);
                r.again = false;
                r.last = Some(Instant::now());
            }
            let result = self.fetch_topology().await;
            if !self.refresh_done(result) {
                return;
            }
            tokio::time::sleep(self.config.refresh_cooldown).await;
        }
    }

    /// Records a finished refresh; true when another one is due.
    fn refresh_done(&self, result: Result<()>) -> bool {
        let mut r = lock(&self.refresh);
        r.done += 1;
        match result {
            Ok(()) => r.error = None,
            Err(e) => {
                tracing::warn!(target: "redis_layers::cluster", event = "cluster.refresh_failed", error = %e, "topology refresh failed");
                r.error = Some(e);
            }
        }
        // Every waiter learns of this one, even when another is due at
        // once: callers waiting for the first map must not wait a cooldown
        // and a second refresh (issue 20: 253 ms for a cold client's first
        // two callers).
        for w in r.waiters.drain(..) {
            w.wake();
        }
        if r.again {
            return true;
        }
        r.running = false;
        false
    }

    /// Reads `CLUSTER SHARDS` (or `CLUSTER SLOTS`) from a known primary or
    /// a seed, and installs it.
    async fn fetch_topology(self: &Arc<Self>) -> Result<()> {
        let mut candidates = std::mem::take(&mut lock(&self.refresh).prefer);
        {
            let topo = lock(&self.topo);
            for &i in &topo.snapshot.primaries {
                let ep = &topo.nodes[i as usize].endpoint;
                if !candidates.contains(ep) {
                    candidates.push(ep.clone());
                }
            }
        }
        for s in &self.seeds {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        let mut last = Error::config("no seed nodes");
        for ep in candidates {
            let (_, Some(node)) = self.node_at(&ep) else {
                continue;
            };
            match read_topology(node, &ep).await {
                // Nothing to route with: say so rather than wait forever.
                Ok(map) if map.len_assigned() == 0 => {
                    last = Error::Server(ServerError::parse(format!(
                        "CLUSTERDOWN the topology from {ep} assigns no slot to a reachable node"
                    )));
                }
                Ok(mut map) => {
                    let now = Instant::now();
                    let mut recent = lock(&self.recent_moves);
                    recent.retain(|(_, until)| *until > now);
                    for (m, _) in recent.iter() {
                        if Endpoint::tcp(m.dst.host.clone(), m.dst.port) != ep {
                            map.apply_slot_move(m);
                        }
                    }
                    drop(recent);
                    tracing::debug!(target: "redis_layers::cluster", event = "cluster.refreshed", from = %ep, assigned = map.len_assigned(), "topology refreshed");
                    let mut topo = lock(&self.topo);
                    self.install(&mut topo, map);
                    self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A replica of primary `i`, in turn; `i` itself when it has none.
    fn replica_of(&self, snap: &Snapshot, i: u32) -> u32 {
        match snap.replicas.get(&i) {
            Some(r) if !r.is_empty() => {
                let n = self.next_primary.fetch_add(1, Ordering::Relaxed);
                r[n % r.len()]
            }
            _ => i,
        }
    }

    fn any_primary(&self, snap: &Snapshot) -> Option<u32> {
        if snap.primaries.is_empty() {
            return None;
        }
        let n = self.next_primary.fetch_add(1, Ordering::Relaxed);
        Some(snap.primaries[n % snap.primaries.len()])
    }

    /// Learns the key positions of `name` from a node's `COMMAND INFO`.
    async fn learn(self: &Arc<Self>, name: &str) -> Result<()> {
        let snap = self.snapshot();
        let Some(i) = self.any_primary(&snap) else {
            return Err(Error::config("no cluster node known"));
        };
        let Some(node) = self.node(i) else {
            return Err(Error::config("no cluster node known"));
        };
        let reply = send(node, cmd("COMMAND").arg("INFO").arg(name).into(), None)
            .await?
            .into_value()?;
        let mut topo = lock(&self.topo);
        let mut table = (*topo.snapshot.table).clone();
        table.learn(&reply);
        let old = &topo.snapshot;
        topo.snapshot = Arc::new(Snapshot {
            map: old.map.clone(),
            owner: old.owner.clone(),
            primaries: old.primaries.clone(),
            replicas: old.replicas.clone(),
            table: Arc::new(table),
        });
        self.gen.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// When the routing of `req` must be over: its own timeout from now, if it
/// has one (the [`Retry`](crate::retry::Retry) layer gives every request
/// with a deadline one), so that a node's first connection, a topology
/// refresh or a redirect spend the call's budget.
fn deadline_of(req: &Request) -> Option<Instant> {
    match req.timeout() {
        crate::CommandTimeout::After(d) => Some(crate::time::after(Instant::now(), d)),
        _ => None,
    }
}

/// `fut`, failing with [`Error::Timeout`] once `deadline` has passed.
async fn within<T>(deadline: Option<Instant>, fut: impl Future<Output = Result<T>>) -> Result<T> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, fut)
            .await
            .unwrap_or(Err(Error::Timeout)),
        None => fut.await,
    }
}

/// Sends one request on a node service: waits for it to be ready until
/// `deadline`, then sends `req` with the time left as its timeout (which
/// [`RelaxTimeout`](crate::relax::RelaxTimeout) still extends during
/// maintenance).
async fn send<S>(mut svc: S, req: Request, deadline: Option<Instant>) -> Result<Response>
where
    S: Service<Request, Response = Response, Error = Error>,
{
    let ready = within(deadline, std::future::poll_fn(|cx| svc.poll_ready(cx))).await;
    match ready {
        Ok(()) => {}
        Err(Error::Timeout) => return Err(Error::Timeout),
        Err(e) => return Err(Error::not_sent_with(e, req)),
    }
    let req = match deadline {
        Some(at) => timed_until(req, at).ok_or(Error::Timeout)?,
        None => req,
    };
    svc.call(req).await
}

async fn read_topology<S>(node: S, asked: &Endpoint) -> Result<SlotMap>
where
    S: Service<Request, Response = Response, Error = Error> + Clone,
{
    match send(node.clone(), cmd("CLUSTER").arg("SHARDS").into(), None).await {
        Ok(r) => SlotMap::from_cluster_shards_via(&r.into_value()?, asked),
        // Before 7.0: no CLUSTER SHARDS.
        Err(Error::Server(e)) if e.kind() == &ServerErrorKind::Err => {
            let r = send(node, cmd("CLUSTER").arg("SLOTS").into(), None).await?;
            SlotMap::from_cluster_slots_via(&r.into_value()?, asked)
        }
        Err(e) => Err(e),
    }
}

/// Where `req` goes under `snap`.
fn target(
    shared: &Shared<impl NewNode>,
    snap: &Snapshot,
    req: &Request,
    memo: &mut keys::RouteMemo,
) -> Result<Target> {
    match req.body() {
        Body::Cmd(c) => match snap.table.route_memo(memo, c) {
            Ok(Route::Slot(s)) => match snap.owner[usize::from(s)] {
                NONE => Err(no_owner(s)),
                i if shared.config.read_from_replicas && snap.table.is_read_only(c) => {
                    Ok(Target::Node(shared.replica_of(snap, i)))
                }
                i => Ok(Target::Node(i)),
            },
            Ok(Route::AnyPrimary) => shared
                .any_primary(snap)
                .map(Target::Node)
                .ok_or_else(|| Error::config("no cluster node known")),
            Ok(Route::AllPrimaries(agg)) | Ok(Route::AllNodes(agg)) => Ok(Target::Fanout(agg)),
            // Unknown to the server too: any node will say so.
            Err(RouteError::UnknownCommand(name)) if lock(&shared.unknown).contains(&name) => {
                shared
                    .any_primary(snap)
                    .map(Target::Node)
                    .ok_or_else(|| Error::config("no cluster node known"))
            }
            Err(RouteError::UnknownCommand(name)) => Ok(Target::Learn(name)),
            Err(e) => Err(e.into()),
        },
        Body::Pipeline(p) => {
            // One node for the whole pipeline (the common case) or a split.
            let mut node = None;
            let mut router = snap.table.router();
            for c in p.cmds() {
                let i = match router.route(c) {
                    Ok(Route::Slot(s)) => match snap.owner[usize::from(s)] {
                        NONE => return Err(no_owner(s)),
                        i => i,
                    },
                    Ok(Route::AnyPrimary) => continue,
                    Ok(_) => {
                        return Err(Error::config(
                            "a command that goes to every node cannot be part of a pipeline",
                        ))
                    }
                    Err(RouteError::UnknownCommand(name))
                        if lock(&shared.unknown).contains(&name) =>
                    {
                        continue
                    }
                    Err(RouteError::UnknownCommand(name)) => return Ok(Target::Learn(name)),
                    Err(e) => return Err(e.into()),
                };
                match node {
                    None => node = Some(i),
                    Some(n) if n == i => {}
                    Some(_) => return Ok(Target::Split),
                }
            }
            match node.or_else(|| shared.any_primary(snap)) {
                Some(i) => Ok(Target::Node(i)),
                None => Err(Error::config("no cluster node known")),
            }
        }
    }
}

fn no_owner(slot: u16) -> Error {
    Error::Server(ServerError::parse(format!(
        "CLUSTERDOWN Hash slot {slot} is not served by any known node"
    )))
}

/// Parses a redirect target (`host:port`, empty host: unknown).
pub(crate) fn redirect_endpoint(addr: &str) -> Option<Endpoint> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    if host.is_empty() {
        return None;
    }
    Some(Endpoint::tcp(host.trim_matches(['[', ']']), port))
}

/// Follows redirects for a single command whose first attempt answered
/// `first`.
pub(super) async fn redirect_loop<N: NewNode>(
    shared: Arc<Shared<N>>,
    req: Request,
    first: Result<Response>,
) -> Result<Response> {
    let deadline = deadline_of(&req);
    let mut result = first;
    let mut redirects = 0;
    loop {
        let redirect = match &result {
            Err(Error::Server(e)) => e.redirect(),
            _ => None,
        };
        let Some(r) = redirect else { return result };
        redirects += 1;
        if redirects > shared.config.max_redirects {
            return result;
        }
        let Some(addr) = redirect_endpoint(&r.addr) else {
            return result;
        };
        let source = match r.kind {
            RedirectKind::Moved => crate::trust::Source::Moved,
            RedirectKind::Ask => crate::trust::Source::Ask,
        };
        let follows = within(deadline, async {
            Ok::<_, Error>(shared.follows(source, &addr).await)
        });
        match follows.await {
            Ok(true) => {}
            Ok(false) => return result,
            Err(e) => return Err(e),
        }
        result = match r.kind {
            RedirectKind::Moved => {
                shared.stats.moved.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "redis_layers::cluster", event = "cluster.moved", slot = r.slot, to = %addr, "MOVED");
                let i = shared.moved(r.slot, &addr);
                match shared.node(i) {
                    Some(node) => send(node, req.clone(), deadline).await,
                    None => return result,
                }
            }
            RedirectKind::Ask => {
                shared.stats.ask.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "redis_layers::cluster", event = "cluster.ask", slot = r.slot, to = %addr, "ASK");
                let (_, Some(node)) = shared.node_at(&addr) else {
                    return result;
                };
                ask(node, &req, deadline).await
            }
        };
    }
}

/// `ASKING` and the request in one write, so nothing comes between.
async fn ask<S>(node: S, req: &Request, deadline: Option<Instant>) -> Result<Response>
where
    S: Service<Request, Response = Response, Error = Error>,
{
    let Body::Cmd(c) = req.body() else {
        return Err(Error::config("ASK redirect of a pipeline"));
    };
    let p = Pipeline::new().cmd(cmd("ASKING")).cmd(c.clone());
    let mut out = send(node, like(req, p), deadline).await?.into_pipeline()?;
    match out.pop() {
        Some(Ok(v)) => Ok(Response::Value(v)),
        Some(Err(e)) => Err(Error::Server(e)),
        None => Err(Error::Closed),
    }
}

/// A request with `body` and the timeout of `like`.
fn like(original: &Request, body: impl Into<Request>) -> Request {
    timed(body.into(), original.timeout())
}

/// `r` with `timeout`.
fn timed(r: Request, timeout: crate::CommandTimeout) -> Request {
    match timeout {
        crate::CommandTimeout::After(d) => r.with_timeout(d),
        crate::CommandTimeout::Never => r.without_timeout(),
        crate::CommandTimeout::Default => r,
    }
}

/// True when `result` holds a redirect to follow.
#[inline]
pub(super) fn needs_fixup(result: &Result<Response>) -> bool {
    match result {
        Ok(Response::Value(_)) => false,
        Err(Error::Server(e)) => {
            e.redirect().is_some()
                || matches!(
                    e.kind(),
                    ServerErrorKind::ClusterDown | ServerErrorKind::TryAgain
                )
        }
        Err(e) => e.is_connection_error() || matches!(e, Error::Timeout),
        Ok(Response::Pipeline(v)) => v
            .iter()
            .any(|r| matches!(r, Err(e) if e.redirect().is_some())),
    }
}

/// True for a failure that says the request did not run and the slot's
/// owner is out of reach for now: a node that could not be reached, a
/// cluster that says it is down (between a
/// primary's failure and its replica's promotion) or a slot in the middle
/// of a move. [`ride_out`] waits these out.
///
/// Only failures that come at once: the wait's clock starts when the
/// failure is seen (the fast path reads no clock), so it may only follow a
/// dial that failed with an I/O error (refused, unreachable, reset) or a
/// refusal of the server. Not a dial or handshake that timed out, nor a
/// request dropped unsent after waiting in a queue ([`Error::Closed`]):
/// those may have spent the request's whole timeout already, and come back
/// to the caller (or the retry layer) as they are.
fn waits_out(e: &Error) -> bool {
    match e {
        Error::NotSent(n) => {
            matches!(n.cause(), Error::Io(io) if io.kind() != std::io::ErrorKind::TimedOut)
        }
        Error::Server(s) => matches!(
            s.kind(),
            ServerErrorKind::ClusterDown | ServerErrorKind::TryAgain
        ),
        _ => false,
    }
}

/// The longest pause between two tries of [`ride_out`]; the first is
/// [`RIDE_OUT_FIRST`], doubled each time.
const RIDE_OUT_MAX: Duration = Duration::from_millis(200);
const RIDE_OUT_FIRST: Duration = Duration::from_millis(10);

/// Waits out a failover for one request whose first try failed with `last`
/// ([`waits_out`]): reads the topology again (from the surviving nodes
/// first, paced by the refresh cooldown), then sends the request to the
/// slot's owner in the new map, until it is answered or the request's
/// deadline passes. A request only waits here when it did not run, so it
/// is never applied twice; requests for other nodes never wait for it (the
/// refresh runs on its own task, and the map in use is replaced only when
/// a new one is in).
///
/// At the deadline the caller gets [`Error::NotSent`] of
/// [`Error::Timeout`] when the last try was not sent, or the last refusal
/// of the server (`CLUSTERDOWN`, `TRYAGAIN`): either way, not applied.
///
/// Boxed with its type written out: it may route through [`general`],
/// which may come back here.
fn ride_out<N: NewNode>(
    shared: Arc<Shared<N>>,
    req: Request,
    last: Error,
) -> Pin<Box<dyn Future<Output = Result<Response>> + Send>> {
    Box::pin(ride_out_inner(shared, req, last))
}

async fn ride_out_inner<N: NewNode>(
    shared: Arc<Shared<N>>,
    req: Request,
    mut last: Error,
) -> Result<Response> {
    let Some(deadline) = deadline_of(&req) else {
        return Err(last);
    };
    shared.stats.waited.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(target: "redis_layers::cluster", event = "cluster.ride_out", error = %last, "waiting for the slot's owner");
    let mut pause = RIDE_OUT_FIRST;
    loop {
        // A fresh map, and a pause that keeps a refused node from being
        // dialled in a tight loop when refreshes fail at once.
        let wait = async {
            let _ = shared.refresh_now().await;
            tokio::time::sleep(pause).await;
        };
        if tokio::time::timeout_at(deadline, wait).await.is_err() {
            return Err(given_up(last));
        }
        pause = (pause * 2).min(RIDE_OUT_MAX);
        let snap = shared.snapshot();
        let node = match target(&shared, &snap, &req, &mut Default::default()) {
            Ok(Target::Node(i)) => shared.node(i).ok_or_else(|| no_node(i)),
            // Routed otherwise now (a learned command, ...): the general
            // path, with what is left of the deadline.
            Ok(_) => return general(shared, timed_until(req, deadline).ok_or_else(unsent)?).await,
            Err(e) => Err(e),
        };
        let result = match node {
            Ok(node) => send(node, req.clone(), Some(deadline)).await,
            Err(e) => Err(e),
        };
        match result {
            Err(e) if waits_out(&e) => last = e,
            Err(Error::Timeout) if Instant::now() >= deadline => return Err(given_up(last)),
            r @ Err(Error::Server(_)) if needs_fixup(&r) => {
                return redirect_loop(shared, timed_until(req, deadline).ok_or_else(unsent)?, r)
                    .await
            }
            r => return r,
        }
    }
}

/// What [`ride_out`] returns at the deadline after `last`.
fn given_up(last: Error) -> Error {
    match last {
        e @ Error::Server(_) => e,
        _ => unsent(),
    }
}

/// A request that ran out of time before it was sent.
fn unsent() -> Error {
    Error::not_sent(Error::Timeout)
}

/// `req` with the time left until `deadline` as its timeout; `None` once it
/// has passed.
fn timed_until(req: Request, deadline: Instant) -> Option<Request> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Some(req.with_timeout(left)),
        _ => None,
    }
}

/// Follows the redirects in the answer to `req`: of a single command, or of
/// the commands of a pipeline (each retried alone; not inside a
/// transaction, whose commands must stay together).
async fn fixup<N: NewNode>(
    shared: Arc<Shared<N>>,
    req: Request,
    first: Result<Response>,
) -> Result<Response> {
    // A node that fails or times out may have left: read the topology.
    if matches!(&first, Err(e) if !matches!(e, Error::Server(s) if s.redirect().is_some())) {
        shared.request_refresh();
        return match first {
            Err(e) if waits_out(&e) && deadline_of(&req).is_some() => {
                ride_out(shared, req, e).await
            }
            first => first,
        };
    }
    match (req.body(), first) {
        (Body::Cmd(_), first) => redirect_loop(shared, req, first).await,
        (Body::Pipeline(p), Ok(Response::Pipeline(results))) => {
            let (timeout, idempotent) = (req.timeout(), req.is_idempotent());
            if p.cmds().iter().any(|c| c.is("MULTI")) {
                // A transaction's commands are not resent one by one.
                return retry_redirected(shared, results, timeout, idempotent, |_, _| None).await;
            }
            let cmds = p.cmds();
            retry_redirected(shared, results, timeout, idempotent, |i, _| {
                cmds.get(i).cloned()
            })
            .await
        }
        (_, other) => other,
    }
}

/// Retries each redirected command of a pipeline's `results` alone, with
/// the pipeline's `timeout` and `idempotent` flag; `cmd_of` gives the
/// command of result `i` (from a copy, or handed back in its error). One
/// that does not come back (a transaction's, whose commands only make sense
/// together) keeps its redirect, and the map learns the move. A resend
/// that fails is that command's error: the others ran.
async fn retry_redirected<N: NewNode>(
    shared: Arc<Shared<N>>,
    mut results: Vec<std::result::Result<Value, ServerError>>,
    timeout: crate::CommandTimeout,
    idempotent: bool,
    mut cmd_of: impl FnMut(usize, &mut ServerError) -> Option<crate::Cmd>,
) -> Result<Response> {
    for (i, r) in results.iter_mut().enumerate() {
        let Err(e) = r else {
            continue;
        };
        if e.redirect().is_none() {
            continue;
        }
        let Some(c) = cmd_of(i, e) else {
            if !learn_moved(&shared, e) {
                shared.request_refresh();
            }
            continue;
        };
        let first = Err(Error::Server(e.clone()));
        let again = timed(c.into(), timeout);
        let again = if idempotent {
            again.idempotent()
        } else {
            again
        };
        let as_server = |e: Error| match e {
            Error::Server(s) => s,
            other => ServerError::parse(format!("ERR {other}")),
        };
        *r = match redirect_loop(shared.clone(), again, first).await {
            Ok(r) => r.into_value().map_err(as_server),
            Err(e) => Err(as_server(e)),
        };
    }
    Ok(Response::Pipeline(results))
}

/// A `MOVED` whose command is not resent: the map learns the move, so
/// that the next command goes to the new owner. False when `e` is no
/// `MOVED`.
fn learn_moved<N: NewNode>(shared: &Arc<Shared<N>>, e: &ServerError) -> bool {
    let moved = e
        .redirect()
        .filter(|r| r.kind == RedirectKind::Moved)
        .and_then(|r| Some((r.slot, redirect_endpoint(&r.addr)?)));
    let Some((slot, addr)) = moved else {
        return false;
    };
    if !shared.is_member(&addr) {
        // Not followed blindly: a refresh tells where the slot is.
        shared.request_refresh();
        return true;
    }
    shared.stats.moved.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(target: "redis_layers::cluster", event = "cluster.moved", slot, to = %addr, "MOVED (command not resent)");
    shared.moved(slot, &addr);
    true
}

/// The whole routing, for requests that are not on the fast path.
async fn general<N: NewNode>(shared: Arc<Shared<N>>, req: Request) -> Result<Response> {
    let deadline = deadline_of(&req);
    let mut learned = false;
    loop {
        let snap = shared.snapshot();
        match target(&shared, &snap, &req, &mut Default::default())? {
            Target::Node(i) => {
                let node = shared.node(i).ok_or_else(|| no_node(i))?;
                let first = send(node, req.clone(), deadline).await;
                if !needs_fixup(&first) {
                    return first;
                }
                return fixup(shared, req, first).await;
            }
            Target::Fanout(agg) => return fanout(&shared, &snap, req, agg, deadline).await,
            Target::Split => return split(shared, &snap, req, deadline).await,
            Target::Learn(name) if !learned => {
                learned = true;
                within(deadline, shared.learn(&name)).await?;
                if matches!(
                    target(&shared, &shared.snapshot(), &req, &mut Default::default()),
                    Ok(Target::Learn(_))
                ) {
                    lock(&shared.unknown).insert(name);
                }
            }
            Target::Learn(name) => {
                lock(&shared.unknown).insert(name);
            }
        }
    }
}

fn no_node(i: u32) -> Error {
    Error::Server(ServerError::parse(format!(
        "CLUSTERDOWN node {i} left the cluster"
    )))
}

/// Sends `req` to every primary at once and combines the replies.
async fn fanout<N: NewNode>(
    shared: &Arc<Shared<N>>,
    snap: &Snapshot,
    req: Request,
    agg: keys::Aggregate,
    deadline: Option<Instant>,
) -> Result<Response> {
    // Every node first: nothing is sent unless all of them can be.
    let nodes = snap
        .primaries
        .iter()
        .map(|&i| shared.node(i).ok_or_else(|| no_node(i)))
        .collect::<Result<Vec<_>>>()?;
    let mut calls = Vec::with_capacity(nodes.len());
    for node in nodes {
        calls.push(tokio::spawn(send(node, req.clone(), deadline)));
    }
    let several = calls.len() > 1;
    let mut replies = Vec::with_capacity(calls.len());
    for c in calls {
        let r = c
            .await
            .map_err(|e| Error::config(format!("fan-out task failed: {e}")))?;
        replies.push(r.map_err(|e| partial(e, several))?.into_value()?);
    }
    agg.combine(replies).map(Response::Value)
}

/// The error of one part of a request sent to several nodes: when other
/// parts may have run, even "never sent" or "refused" no longer means the
/// request had no effect, so it becomes an I/O error ("may have been
/// applied": a retry layer resends it only if it is idempotent).
fn partial(e: Error, several: bool) -> Error {
    if several && crate::retry::classify(&e) == crate::retry::Retryable::NotApplied {
        Error::Io(std::sync::Arc::new(std::io::Error::other(format!(
            "one node's part failed ({e}) after other parts may have run"
        ))))
    } else {
        e
    }
}

/// The error in each command's place of a split pipeline's part that
/// failed as a whole: the server's own error, `NOTSENT` when the part was
/// never written ([`ServerErrorKind::NotSent`]), `INDETERMINATE` when it was
/// and may have run ([`ServerErrorKind::Indeterminate`]).
fn part_error(e: &Error) -> ServerError {
    match e {
        Error::Server(s) => s.clone(),
        e if e.is_not_sent() => ServerError::parse(format!("NOTSENT {e}")),
        e => ServerError::parse(format!("INDETERMINATE {e}")),
    }
}

/// Splits a pipeline per node, sends the parts at once, and puts the
/// replies back in order. When some parts ran and others failed as a
/// whole, the caller gets the replies of those that ran and, in place of
/// each command of a failed part, [`part_error`]; when no part was
/// written, the first part's `NotSent`.
async fn split<N: NewNode>(
    shared: Arc<Shared<N>>,
    snap: &Snapshot,
    req: Request,
    deadline: Option<Instant>,
) -> Result<Response> {
    let Body::Pipeline(p) = req.body() else {
        return Err(Error::config("only a pipeline is split"));
    };
    if p.cmds().iter().any(|c| c.is("MULTI")) {
        return Err(Error::config(
            "a transaction's keys must all be in one slot in a cluster",
        ));
    }
    // (node, original indexes, the part)
    let mut parts: Vec<(u32, Vec<usize>, Pipeline)> = Vec::new();
    let mut keyless = Vec::new();
    let mut router = snap.table.router();
    for (i, c) in p.cmds().iter().enumerate() {
        let node = match router.route(c) {
            Ok(Route::Slot(s)) => match snap.owner[usize::from(s)] {
                NONE => return Err(no_owner(s)),
                n => n,
            },
            Ok(Route::AnyPrimary) => {
                keyless.push(i);
                continue;
            }
            Ok(_) => {
                return Err(Error::config(
                    "a command that goes to every node cannot be part of a pipeline",
                ))
            }
            Err(RouteError::UnknownCommand(name)) if lock(&shared.unknown).contains(&name) => {
                keyless.push(i);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match parts.iter_mut().find(|(n, _, _)| *n == node) {
            Some((_, idx, part)) => {
                idx.push(i);
                *part = std::mem::take(part).cmd(c.clone());
            }
            None => parts.push((node, vec![i], Pipeline::new().cmd(c.clone()))),
        }
    }
    // Key-less commands ride with the first part.
    for i in keyless {
        let (_, idx, part) = &mut parts[0];
        idx.push(i);
        *part = std::mem::take(part).cmd(p.cmds()[i].clone());
    }
    // Every node first: nothing is sent unless all of them can be.
    let parts = parts
        .into_iter()
        .map(|(node, idx, part)| Ok((shared.node(node).ok_or_else(|| no_node(node))?, idx, part)))
        .collect::<Result<Vec<_>>>()?;
    let mut calls = Vec::with_capacity(parts.len());
    for (svc, idx, part) in parts {
        let sub = like(&req, part);
        let shared = shared.clone();
        calls.push((
            idx,
            tokio::spawn(async move {
                let first = send(svc, sub.clone(), deadline).await;
                if needs_fixup(&first) {
                    fixup(shared, sub, first).await
                } else {
                    first
                }
            }),
        ));
    }
    let mut results: Vec<Option<std::result::Result<Value, ServerError>>> =
        (0..p.cmds().len()).map(|_| None).collect();
    let several = calls.len() > 1;
    let mut failed = Vec::new();
    for (idx, call) in calls {
        let r = call
            .await
            .map_err(|e| Error::config(format!("pipeline part failed: {e}")))
            .and_then(|r| r.and_then(Response::into_pipeline));
        match r {
            Ok(replies) => {
                for (i, v) in idx.into_iter().zip(replies) {
                    results[i] = Some(v);
                }
            }
            // Alone, the part's error is the pipeline's, as for any request.
            Err(e) if !several => return Err(e),
            Err(e) => failed.push((idx, e)),
        }
    }
    if !failed.is_empty() {
        // Every part unsent: nothing ran, one error says so for all (and a
        // retry layer may send the pipeline again).
        if results.iter().all(Option::is_none) && failed.iter().all(|(_, e)| e.is_not_sent()) {
            return Err(failed.swap_remove(0).1);
        }
        // Otherwise the replies of the parts that ran and, for each command
        // of a part that failed, what became of it.
        for (idx, e) in failed {
            let part = part_error(&e);
            for i in idx {
                results[i] = Some(Err(part.clone()));
            }
        }
    }
    Ok(Response::Pipeline(
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ServerError::parse("ERR reply missing"))))
            .collect(),
    ))
}

/// What the fast path keeps of a request to follow a redirect. It lives in
/// every response future, so it is small: the common case keeps no bytes at
/// all, and the copies are boxed.
pub(super) enum Kept {
    /// Nothing but the request's settings: the node hands the command back
    /// with a redirect ([`Maintained::RETURNS_REDIRECTED`]).
    Returned {
        timeout: crate::CommandTimeout,
        idempotent: bool,
    },
    /// A copy of one command (a node that does not hand commands back, or
    /// a command too long for the connection to keep).
    One(Box<Request>),
    /// A pipeline's commands in one buffer (two allocations, not one per
    /// command), over a node that does not hand them back or when they
    /// are over 64 KiB in all; the request is rebuilt only when a redirect
    /// needs it.
    Pipeline(Box<KeptPipeline>),
}

pub(super) struct KeptPipeline {
    timeout: crate::CommandTimeout,
    bytes: Vec<u8>,
    /// End offset and argument count of each command.
    spans: Vec<(usize, usize)>,
}

impl Kept {
    /// What to keep of `req`; `returned`: the node hands a redirected
    /// command back.
    #[inline(always)]
    fn of(req: &Request, returned: bool) -> Kept {
        match req.body() {
            Body::Cmd(c) if returned && c.raw().0.len() <= crate::transport::RETURN_MAX => {
                Kept::Returned {
                    timeout: req.timeout(),
                    idempotent: req.is_idempotent(),
                }
            }
            Body::Cmd(_) => Kept::One(Box::new(req.clone())),
            // The connection hands back each redirected command of the
            // pipeline in its error.
            Body::Pipeline(p) if returned && crate::transport::returns_pipeline(p) => {
                Kept::Returned {
                    timeout: req.timeout(),
                    idempotent: req.is_idempotent(),
                }
            }
            Body::Pipeline(p) => {
                let total = p.cmds().iter().map(|c| c.raw().0.len()).sum();
                let mut bytes = Vec::with_capacity(total);
                let mut spans = Vec::with_capacity(p.cmds().len());
                for c in p.cmds() {
                    let (raw, argc) = c.raw();
                    bytes.extend_from_slice(raw);
                    spans.push((bytes.len(), argc));
                }
                Kept::Pipeline(Box::new(KeptPipeline {
                    timeout: req.timeout(),
                    bytes,
                    spans,
                }))
            }
        }
    }

    /// This, leaving a copy of nothing in its place.
    pub(super) fn take(&mut self) -> Kept {
        std::mem::replace(
            self,
            Kept::Returned {
                timeout: crate::CommandTimeout::Default,
                idempotent: false,
            },
        )
    }

    /// The request again: rebuilt from the copy, or from the command the
    /// node handed back in `first` (`None` if it did not).
    pub(super) fn into_request(self, first: &mut Result<Response>) -> Option<Request> {
        match self {
            Kept::Returned {
                timeout,
                idempotent,
            } => {
                let Err(Error::Server(e)) = first else {
                    return None;
                };
                let r = timed(Request::from(e.take_returned()?), timeout);
                Some(if idempotent { r.idempotent() } else { r })
            }
            Kept::One(r) => Some(*r),
            Kept::Pipeline(k) => {
                let KeptPipeline {
                    timeout,
                    bytes,
                    spans,
                } = *k;
                let mut start = 0;
                let p: Pipeline = spans
                    .into_iter()
                    .map(|(end, argc)| {
                        let c = crate::Cmd::from_raw(bytes[start..end].to_vec(), argc);
                        start = end;
                        c
                    })
                    .collect();
                Some(timed(Request::from(p), timeout))
            }
        }
    }
}

/// What the fast path's future calls when a reply holds a redirect.
pub(super) trait Fixup: Send + Sync {
    /// `kept`: what the response future kept of the request.
    fn fixup(
        self: Arc<Self>,
        kept: Kept,
        first: Result<Response>,
    ) -> Pin<Box<dyn Future<Output = Result<Response>> + Send>>;
}

/// One clone's handle on the shared state, for its fast-path futures.
struct Handle<N: NewNode>(Arc<Shared<N>>);

impl<N: NewNode> Fixup for Handle<N> {
    fn fixup(
        self: Arc<Self>,
        kept: Kept,
        first: Result<Response>,
    ) -> Pin<Box<dyn Future<Output = Result<Response>> + Send>> {
        let shared = self.0.clone();
        let (kept, mut first) = match (kept, first) {
            // A pipeline whose redirected commands came back in their
            // errors.
            (
                Kept::Returned {
                    timeout,
                    idempotent,
                },
                Ok(Response::Pipeline(results)),
            ) => {
                return Box::pin(retry_redirected(
                    shared,
                    results,
                    timeout,
                    idempotent,
                    |_, e| e.take_returned(),
                ));
            }
            other => other,
        };
        match kept.into_request(&mut first) {
            Some(req) => Box::pin(fixup(shared, req, first)),
            // No request: not a redirect (a connection error, a timeout,
            // `CLUSTERDOWN`: the map is read again), or a redirect whose
            // command did not come back (a layer in the node's stack
            // replaced the error): it was not run, and the caller gets the
            // redirect as an error; the map learns the move, so the next
            // command goes to the new owner.
            None => {
                let learned = matches!(&first, Err(Error::Server(e)) if learn_moved(&shared, e));
                if !learned {
                    shared.request_refresh();
                }
                Box::pin(std::future::ready(first))
            }
        }
    }
}

impl<N: NewNode> Service<Request> for Cluster<N> {
    type Response = Response;
    type Error = Error;
    type Future = ResponseFuture<<N::Node as Service<Request>>::Future>;

    // Inlined, with everything but the ready case out of line, so that
    // tower's `ready()` around it is inlined into the caller too.
    #[inline(always)]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.shared.gen.load(Ordering::Acquire) == self.gen
            && self.waiting.is_none()
            && !self.snapshot.primaries.is_empty()
        {
            return Poll::Ready(Ok(()));
        }
        self.poll_ready_slow(cx)
    }

    // The fast path (the command this clone sent last, to a node service
    // it holds that is ready at once) is inlined into the caller; the rest
    // is not.
    #[inline(always)]
    fn call(&mut self, req: Request) -> Self::Future {
        // No sync(): poll_ready took the latest snapshot, and a change since
        // is no different from one just after this call.
        //
        // The command this clone sent last, with its one key after the
        // name, to a primary: its slot's owner, with nothing in between.
        let fast = match req.body() {
            Body::Cmd(c) if !self.shared.config.read_from_replicas => self
                .snapshot
                .table
                .remembered_one_key(&self.memo, c)
                .map(|s| self.snapshot.owner[usize::from(s)]),
            _ => None,
        };
        if let Some(node) = fast
            .and_then(|i| self.local.get_mut(i as usize))
            .and_then(Option::as_mut)
        {
            // Nearly always ready at once; the no-op waker is never needed
            // then, and call_routed polls again properly otherwise.
            if let Poll::Ready(Ok(())) = node.poll_ready(&mut Context::from_waker(Waker::noop())) {
                // send_ready() written out: its call here measured 30 more
                // instructions per request (callgrind), for code placement.
                let copy = Kept::of(&req, <N::Node as Maintained>::RETURNS_REDIRECTED);
                let fut = node.call(req);
                let fixup = match &self.fixup {
                    Some(f) => f.clone(),
                    None => new_handle(&mut self.fixup, &self.shared),
                };
                return ResponseFuture::direct(fut, fixup, copy);
            }
        }
        self.call_routed(req)
    }
}

/// Sends `req` to `node`, which is ready, in a future that follows a
/// redirect with the clone's handle in `fixup` (made on first use: a
/// shared reference count bumped by every request on every thread costs
/// more than routing).
#[inline(always)]
fn send_ready<S, N>(
    node: &mut S,
    req: Request,
    fixup: &mut Option<Arc<dyn Fixup>>,
    shared: &Arc<Shared<N>>,
) -> ResponseFuture<S::Future>
where
    S: Service<Request, Response = Response, Error = Error> + Maintained,
    N: NewNode,
{
    let copy = Kept::of(&req, S::RETURNS_REDIRECTED);
    let fut = node.call(req);
    let fixup = match fixup {
        Some(f) => f.clone(),
        None => new_handle(fixup, shared),
    };
    ResponseFuture::direct(fut, fixup, copy)
}

#[cold]
fn new_handle<N: NewNode>(
    slot: &mut Option<Arc<dyn Fixup>>,
    shared: &Arc<Shared<N>>,
) -> Arc<dyn Fixup> {
    slot.get_or_insert_with(|| Arc::new(Handle(shared.clone())))
        .clone()
}

impl<N: NewNode> Cluster<N> {
    /// [`call`](Service::call) off the fast path: routes `req` from the
    /// command table, makes the node service if this clone has none, and
    /// waits for a node that is not ready.
    #[inline(never)]
    fn call_routed(
        &mut self,
        req: Request,
    ) -> ResponseFuture<<N::Node as Service<Request>>::Future> {
        if let Some(e) = self.failed.take() {
            // Stale once a topology is in.
            if self.snapshot.primaries.is_empty() {
                return ResponseFuture::failed(Error::not_sent_with(e, req));
            }
        }
        let i = match target(&self.shared, &self.snapshot, &req, &mut self.memo) {
            Ok(Target::Node(i)) => i,
            Ok(_) => return ResponseFuture::boxed(Box::pin(general(self.shared.clone(), req))),
            // No owner for now (a failed primary dropped from the map):
            // wait for one.
            Err(e) if waits_out(&e) && deadline_of(&req).is_some() => {
                self.shared.request_refresh();
                return ResponseFuture::boxed(ride_out(self.shared.clone(), req, e));
            }
            Err(e) => return ResponseFuture::failed(e),
        };
        if self.node(i).is_none() {
            return ResponseFuture::boxed(Box::pin(general(self.shared.clone(), req)));
        }
        let node = self.local[i as usize].as_mut().expect("just made");
        match node.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => send_ready(node, req, &mut self.fixup, &self.shared),
            Poll::Ready(Err(e)) => {
                // The node cannot be reached: it may have left.
                self.local[i as usize] = None;
                self.shared.request_refresh();
                let e = Error::not_sent(e);
                if waits_out(&e) && deadline_of(&req).is_some() {
                    return ResponseFuture::boxed(ride_out(self.shared.clone(), req, e));
                }
                ResponseFuture::failed(Error::not_sent_with(e, req))
            }
            Poll::Pending => {
                // The request takes this clone's node service along and
                // waits for it properly.
                let node = self.local[i as usize].take().expect("just used");
                let shared = self.shared.clone();
                let deadline = deadline_of(&req);
                ResponseFuture::boxed(Box::pin(async move {
                    let first = send(node, req.clone(), deadline).await;
                    if needs_fixup(&first) {
                        fixup(shared, req, first).await
                    } else {
                        first
                    }
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_pipeline_rebuilds_the_same_request() {
        let p: Pipeline = (0..50)
            .map(|i| cmd("SET").arg(format!("k{i}")).arg(vec![b'x'; i]))
            .chain([cmd("PING"), cmd("GET").arg("")])
            .collect();
        let req = Request::from(p.clone()).with_timeout(Duration::from_millis(7));
        let back = Kept::of(&req, false)
            .into_request(&mut Err(Error::Closed))
            .expect("kept");
        assert_eq!(back.timeout(), req.timeout());
        let Body::Pipeline(q) = back.body() else {
            panic!("not a pipeline")
        };
        assert_eq!(q.cmds(), p.cmds());
        // A command copied (a node that does not hand it back) comes back
        // whole, settings and all.
        let c = cmd("SET").arg("k").arg("v");
        let one = Request::from(c.clone()).without_timeout().idempotent();
        let back = Kept::of(&one, false)
            .into_request(&mut Err(Error::Closed))
            .expect("kept");
        assert_eq!(back.timeout(), one.timeout());
        assert!(back.is_idempotent(), "the flag comes back too");
        assert!(matches!(back.body(), Body::Cmd(b) if b == &c));
    }

    /// What every response future carries stays small (it is moved with
    /// the future on every request).
    #[test]
    fn kept_is_small() {
        assert!(std::mem::size_of::<Kept>() <= 24);
    }

    #[test]
    fn a_returned_command_comes_back_from_the_redirect() {
        let c = cmd("SET").arg("k").arg(vec![b'v'; 100]);
        let req = Request::from(c.clone())
            .with_timeout(Duration::from_millis(7))
            .idempotent();
        let kept = Kept::of(&req, true);
        assert!(matches!(kept, Kept::Returned { .. }));
        let moved = ServerError::parse("MOVED 1 127.0.0.1:7000");
        let mut first = Err(Error::Server(moved.clone().with_returned(c.clone())));
        let back = kept.into_request(&mut first).expect("handed back");
        assert_eq!(back.timeout(), req.timeout());
        assert!(back.is_idempotent());
        assert!(matches!(back.body(), Body::Cmd(b) if b == &c));
        // The error itself is still the redirect.
        assert!(matches!(&first, Err(Error::Server(e)) if e == &moved));
        // Not handed back (a layer replaced the error): nothing to resend.
        let mut bare = Err(Error::Server(moved));
        assert!(Kept::of(&req, true).into_request(&mut bare).is_none());
        // Pipelines are handed back too, up to the same size in all;
        // longer ones, and very long commands, are still copied.
        let p = Request::from(Pipeline::new().cmd(c.clone()));
        assert!(matches!(Kept::of(&p, true), Kept::Returned { .. }));
        assert!(matches!(Kept::of(&p, false), Kept::Pipeline { .. }));
        let n = crate::transport::RETURN_MAX / c.raw().0.len() + 1;
        let long = Request::from((0..n).map(|_| c.clone()).collect::<Pipeline>());
        assert!(matches!(Kept::of(&long, true), Kept::Pipeline { .. }));
        let big = Request::from(
            cmd("SET")
                .arg("k")
                .arg(vec![0; crate::transport::RETURN_MAX]),
        );
        assert!(matches!(Kept::of(&big, true), Kept::One(_)));
    }
}

//! Sharded pub/sub over a cluster: one [`PubSub`] whose commands go, per
//! shard channel, to a connection of its own to the primary serving the
//! channel's slot, and whose messages are those connections' merged push
//! streams.
//!
//! Each node gets one [`Handoff`] (one connection, restored after a
//! reconnect), made on first use and kept while it is alive. The router remembers which
//! node each shard channel is subscribed on, so an `SUNSUBSCRIBE` reaches
//! that connection even after the slot map changed; when the server ends
//! a shard subscription itself (its slot left the node), the entry goes
//! and [`pubsub`](crate::pubsub) subscribes again through the router:
//! to the primary the slot map names, following the `MOVED` that node
//! answers when the map is behind.
//!
//! A node whose connection is lost may be dead for good (a failover: its
//! replica now serves its slots), and a dead node sends no
//! `sunsubscribe`. So while a node's connection is lost, the router reads
//! the slot map again (every 250 ms, doubling to 2 s); each shard channel
//! whose slot another primary serves now ends on the lost node as if the
//! server had ended it, and is subscribed again on the new primary. Once
//! nothing is left on the lost node (no shard channel, and, on the node of
//! the plain channels and patterns, none of those), its connection is
//! dropped, so a dead node is not dialled forever, and its loss no longer
//! holds the merged stream's loss open.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tower::{Service, ServiceExt};

use super::ClusterHandle;
use crate::cluster::redirect_endpoint;
use crate::cluster::slot::key_slot;
use crate::dial::DialLimit;
use crate::error::{Error, Result};
use crate::handoff::Handoff;
use crate::lock;
use crate::maint::MaintenanceConfig;
use crate::pubsub::{server_sunsubscribe, Dialer, Kind, PubSub, SendFuture};
use crate::resp::Cmd;
use crate::transport::{push_channel, Connector, Endpoint, PushItem, PushReceiver, PushSender};
use crate::trust::Source;
use crate::{Request, ServerErrorKind, Value};

/// The one slot of shard `channels`: [`Error::Config`] when they are in
/// several (one `SSUBSCRIBE` must name channels of one slot).
pub(super) fn one_slot(channels: &[Bytes]) -> Result<Option<u16>> {
    let mut slot = None;
    for c in channels {
        let s = key_slot(c);
        match slot {
            Some(seen) if seen != s => {
                return Err(Error::config(format!(
                    "shard channels in slots {seen} and {s}: in a cluster, the shard channels \
                     of one SSUBSCRIBE must share a slot (use hash tags, or subscribe in \
                     several calls)"
                )))
            }
            _ => slot = Some(s),
        }
    }
    Ok(slot)
}

/// What the router and its forwarding tasks share.
#[derive(Default)]
struct State {
    /// Shard channel to the node it is subscribed on.
    subscribed: HashMap<Bytes, Endpoint>,
    /// Nodes whose connection lost its subscriptions and has not
    /// restored them yet: the merged stream notes a loss when the first
    /// goes, a restore when the last comes back.
    lost: HashSet<Endpoint>,
    /// Plain channels and patterns asked for on `home`, and not
    /// unsubscribed since.
    plain: HashSet<(Kind, Bytes)>,
}

struct Router {
    cluster: Arc<ClusterHandle>,
    dialer: Dialer,
    config: MaintenanceConfig,
    /// Where channels and patterns (not sharded) are subscribed: `PUBLISH`
    /// reaches every node.
    home: Endpoint,
    nodes: Mutex<HashMap<Endpoint, Handoff<DialLimit<Connector>>>>,
    state: Arc<Mutex<State>>,
    tx: PushSender,
    /// Nodes whose connection was just lost, to [`follow_failovers`].
    lost_tx: mpsc::UnboundedSender<Endpoint>,
}

/// The cluster's sharded [`PubSub`]; see the [module docs](self).
pub(super) fn pubsub(
    cluster: Arc<ClusterHandle>,
    dialer: Dialer,
    config: MaintenanceConfig,
    home: Endpoint,
) -> PubSub {
    let (tx, rx) = push_channel(
        dialer.connector.config.push_capacity,
        "cluster shard pub/sub",
    );
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    let router = Arc::new(Router {
        cluster,
        dialer,
        config,
        home,
        nodes: Mutex::new(HashMap::new()),
        state: Arc::default(),
        tx,
        lost_tx,
    });
    tokio::spawn(follow_failovers(Arc::downgrade(&router), lost_rx));
    let send = move |c: Cmd| -> SendFuture {
        let router = router.clone();
        Box::pin(async move { router.send(c).await })
    };
    PubSub::routed(Box::new(send), rx)
}

impl Router {
    async fn send(&self, c: Cmd) -> Result<Value> {
        let shard = c.is("SSUBSCRIBE") || c.is("SUNSUBSCRIBE");
        if !shard {
            self.note_plain(&c);
            return call_one(self.node(&self.home)?, c).await;
        }
        let channels: Vec<Bytes> = c.argv().skip(1).map(Bytes::copy_from_slice).collect();
        if c.is("SSUBSCRIBE") {
            self.ssubscribe(c, &channels).await
        } else {
            self.sunsubscribe(&channels).await
        }
    }

    /// On the primary of the channels' slot. A `MOVED` (the map is behind:
    /// the slot just moved) is followed to its target, twice at most; one
    /// without a usable address refreshes the map first. (Following it
    /// saves the refresh's wait: the cluster refreshes at most once per
    /// `refresh_cooldown`, 250 ms by default.)
    ///
    /// The channels are recorded on the node before the command goes, and
    /// dropped only when the server answers with an error: a command that
    /// timed out (its future dropped) or lost its connection may have
    /// reached the server, whose subscription an `SUNSUBSCRIBE` must then
    /// find.
    async fn ssubscribe(&self, c: Cmd, channels: &[Bytes]) -> Result<Value> {
        let slot = one_slot(channels)?;
        let mut endpoint = self.cluster.endpoint_for(slot).await?;
        let mut attempt = 0;
        loop {
            let node = self.node(&endpoint)?;
            let before = self.record(channels, &endpoint);
            let err = match call_one(node, c.clone()).await {
                Ok(v) => return Ok(v),
                Err(Error::Server(e)) => {
                    self.undo_record(channels, &endpoint, before);
                    e
                }
                Err(e) => return Err(e),
            };
            if err.kind() != &ServerErrorKind::Moved || attempt >= 2 {
                return Err(Error::Server(err));
            }
            attempt += 1;
            let to = err.redirect().and_then(|r| redirect_endpoint(&r.addr));
            endpoint = match to {
                Some(to) if self.cluster.cluster.follows(Source::Moved, &to).await => to,
                _ => {
                    self.cluster.cluster.refresh().await?;
                    self.cluster.endpoint_for(slot).await?
                }
            };
        }
    }

    /// On the node each channel is subscribed on, every node tried (the
    /// first error is returned); a channel leaves the record only once its
    /// node confirmed. A channel recorded nowhere (an unsubscribe of a
    /// stray message's channel: the server may have it though we do not
    /// know where) goes to the primary serving its slot now, the one node
    /// that can have it (a node ends the shard subscriptions of a slot it
    /// gives up).
    async fn sunsubscribe(&self, channels: &[Bytes]) -> Result<Value> {
        let mut per_node: HashMap<Endpoint, Vec<Bytes>> = HashMap::new();
        let mut per_slot: HashMap<u16, Vec<Bytes>> = HashMap::new();
        {
            let st = lock(&self.state);
            let all: Vec<Bytes> = if channels.is_empty() {
                st.subscribed.keys().cloned().collect()
            } else {
                channels.to_vec()
            };
            for ch in all {
                match st.subscribed.get(&ch) {
                    Some(e) => per_node.entry(e.clone()).or_default().push(ch),
                    None => per_slot.entry(key_slot(&ch)).or_default().push(ch),
                }
            }
        }
        let mut out = Vec::new();
        let mut first_err = None;
        for (endpoint, chans) in per_node {
            let sent = match self.node(&endpoint) {
                Ok(node) => call_one(node, sunsubscribe_cmd(&chans)).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(v) => {
                    self.forget(&chans, &endpoint);
                    out.push(v);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for (slot, chans) in per_slot {
            match self.sunsubscribe_unrecorded(slot, &chans).await {
                Ok(v) => out.push(v),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(Value::Array(out)),
        }
    }

    /// `SUNSUBSCRIBE chans` (of one slot, recorded nowhere) on the primary
    /// serving `slot`, following one `MOVED` (the map is behind).
    async fn sunsubscribe_unrecorded(&self, slot: u16, chans: &[Bytes]) -> Result<Value> {
        let endpoint = self.cluster.endpoint_for(Some(slot)).await?;
        match call_one(self.node(&endpoint)?, sunsubscribe_cmd(chans)).await {
            Err(Error::Server(e)) if e.kind() == &ServerErrorKind::Moved => {
                let to = e.redirect().and_then(|r| redirect_endpoint(&r.addr));
                let Some(to) = to else {
                    return Err(Error::Server(e));
                };
                if !self.cluster.cluster.follows(Source::Moved, &to).await {
                    return Err(Error::Server(e));
                }
                call_one(self.node(&to)?, sunsubscribe_cmd(chans)).await
            }
            r => r,
        }
    }

    /// Keeps count of the plain channels and patterns on `home` (asked
    /// for: one that was refused is counted until unsubscribed, which
    /// only keeps `home` followed longer).
    fn note_plain(&self, c: &Cmd) {
        let found = [Kind::Channel, Kind::Pattern].into_iter().find_map(|k| {
            if c.is(k.subscribe()) {
                Some((k, true))
            } else if c.is(k.unsubscribe()) {
                Some((k, false))
            } else {
                None
            }
        });
        let Some((kind, on)) = found else {
            return;
        };
        let names: Vec<Bytes> = c.argv().skip(1).map(Bytes::copy_from_slice).collect();
        let mut st = lock(&self.state);
        match (on, names.is_empty()) {
            (true, _) => st.plain.extend(names.into_iter().map(|n| (kind, n))),
            (false, true) => st.plain.retain(|(k, _)| *k != kind),
            (false, false) => {
                for n in names {
                    st.plain.remove(&(kind, n));
                }
            }
        }
    }

    /// Records `channels` as subscribed on `endpoint`.
    fn record(&self, channels: &[Bytes], endpoint: &Endpoint) -> Vec<Option<Endpoint>> {
        let mut st = lock(&self.state);
        channels
            .iter()
            .map(|ch| st.subscribed.insert(ch.clone(), endpoint.clone()))
            .collect()
    }

    /// Drops the record of `channels` on `endpoint` (not one made since on
    /// another node).
    fn forget(&self, channels: &[Bytes], endpoint: &Endpoint) {
        self.undo_record(channels, endpoint, vec![None; channels.len()]);
    }

    /// Undoes [`record`](Self::record) of `channels` on `endpoint` (not a
    /// record made since on another node): each goes back to where it was
    /// before, `before`, since a channel subscribed there already is still
    /// subscribed there.
    fn undo_record(&self, channels: &[Bytes], endpoint: &Endpoint, before: Vec<Option<Endpoint>>) {
        let mut st = lock(&self.state);
        for (ch, was) in channels.iter().zip(before) {
            if st.subscribed.get(ch) == Some(endpoint) {
                match was {
                    Some(e) => st.subscribed.insert(ch.clone(), e),
                    None => st.subscribed.remove(ch),
                };
            }
        }
    }

    /// The connection to `endpoint`, made (with its forwarding task) on
    /// first use.
    fn node(&self, endpoint: &Endpoint) -> Result<Handoff<DialLimit<Connector>>> {
        let mut nodes = lock(&self.nodes);
        if let Some(h) = nodes.get(endpoint) {
            return Ok(h.clone());
        }
        let h = PubSub::handoff(&self.dialer, endpoint.clone(), &self.config)?;
        let pushes = h.take_pushes().expect("a new Handoff's pushes");
        tokio::spawn(forward(
            endpoint.clone(),
            pushes,
            self.state.clone(),
            self.tx.clone(),
            self.lost_tx.clone(),
        ));
        nodes.insert(endpoint.clone(), h.clone());
        Ok(h)
    }
}

fn sunsubscribe_cmd(channels: &[Bytes]) -> Cmd {
    channels
        .iter()
        .fold(crate::cmd("SUNSUBSCRIBE"), |c, ch| c.arg(ch.as_ref()))
}

/// Sends one command on a node's connection.
async fn call_one(mut node: Handoff<DialLimit<Connector>>, c: Cmd) -> Result<Value> {
    node.ready()
        .await?
        .call(Request::from(c))
        .await?
        .into_value()
}

/// Forwards one node's pushes into the merged stream, noting the shard
/// subscriptions the server ends and merging loss and restore notes.
async fn forward(
    endpoint: Endpoint,
    mut pushes: PushReceiver,
    state: Arc<Mutex<State>>,
    tx: PushSender,
    lost_tx: mpsc::UnboundedSender<Endpoint>,
) {
    while let Some(item) = pushes.recv_item().await {
        let item = match item {
            PushItem::Frame(v) => {
                if let Some(ch) = server_sunsubscribe(&v) {
                    let mut st = lock(&state);
                    if st.subscribed.get(&ch) == Some(&endpoint) {
                        st.subscribed.remove(&ch);
                    }
                }
                Some(PushItem::Frame(v))
            }
            PushItem::Refused {
                kind: Kind::Shard,
                ref channel,
                ..
            } => {
                // Not restored here (e.g. its slot moved while the
                // connection was down): subscribed nowhere now.
                let mut st = lock(&state);
                if st.subscribed.get(channel) == Some(&endpoint) {
                    st.subscribed.remove(channel);
                }
                Some(item)
            }
            PushItem::Refused { .. } | PushItem::Lagged(_) => Some(item),
            // Loss and restore notes go out under the lock, so that they
            // reach the stream in the order the state changed (a restore
            // from `Router::move_away` included).
            PushItem::SubscriptionsLost => {
                let mut st = lock(&state);
                let first = st.lost.is_empty();
                let new = st.lost.insert(endpoint.clone());
                if new {
                    let _ = lost_tx.send(endpoint.clone());
                }
                if new && first && tx.send(PushItem::SubscriptionsLost).is_err() {
                    return;
                }
                None
            }
            PushItem::SubscriptionsRestored => {
                let st = &mut *lock(&state);
                if st.lost.remove(&endpoint)
                    && st.lost.is_empty()
                    && tx.send(PushItem::SubscriptionsRestored).is_err()
                {
                    return;
                }
                None
            }
        };
        if let Some(item) = item {
            if tx.send(item).is_err() {
                return;
            }
        }
    }
}

/// Follows each node whose connection is lost ([`follow`]).
async fn follow_failovers(router: Weak<Router>, mut lost: mpsc::UnboundedReceiver<Endpoint>) {
    while let Some(endpoint) = lost.recv().await {
        tokio::spawn(follow(router.clone(), endpoint));
    }
}

/// While `endpoint`'s connection is lost (see the [module docs](self)):
/// reads the slot map again, and moves the shard channels whose slot
/// another primary serves now.
async fn follow(router: Weak<Router>, endpoint: Endpoint) {
    let mut wait = Duration::from_millis(250);
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
        let Some(router) = router.upgrade() else {
            return;
        };
        if !lock(&router.state).lost.contains(&endpoint) {
            return; // restored where it was
        }
        // A failed read leaves the map as it was: tried again.
        let _ = router.cluster.cluster.refresh().await;
        if router.move_away(&endpoint) {
            return;
        }
    }
}

impl Router {
    /// Ends, on the lost node `endpoint`, the shard channels whose slot
    /// another primary serves now: [`pubsub`](crate::pubsub) subscribes
    /// them again through the router, as when a server ends them. True
    /// when none is left there: the node is forgotten (unless it holds the
    /// plain channels), and the stream's loss ends with it.
    fn move_away(&self, endpoint: &Endpoint) -> bool {
        let map = self.cluster.cluster.slot_map();
        let mut st = lock(&self.state);
        if !st.lost.contains(endpoint) {
            return true; // restored while the map was read
        }
        let moved: Vec<Bytes> = st
            .subscribed
            .iter()
            .filter(|(ch, e)| {
                *e == endpoint && map.primary_for(key_slot(ch)).is_some_and(|p| p != endpoint)
            })
            .map(|(ch, _)| ch.clone())
            .collect();
        for ch in &moved {
            st.subscribed.remove(ch);
        }
        let left = st.subscribed.values().any(|e| e == endpoint)
            || (*endpoint == self.home && !st.plain.is_empty());
        let done = !left;
        // Under the lock, in order with `forward`'s notes: each moved
        // channel ends (and is subscribed again elsewhere) before the
        // stream's loss ends.
        for ch in moved {
            tracing::debug!(target: "redis_layers::pubsub", node = %endpoint, "shard channel moved off a lost node");
            let ended = Value::Push(vec![
                Value::BulkString(Bytes::from_static(b"sunsubscribe")),
                Value::BulkString(ch),
                Value::Integer(0),
            ]);
            let _ = self.tx.send(PushItem::Frame(ended));
        }
        if done && st.lost.remove(endpoint) && st.lost.is_empty() {
            let _ = self.tx.send(PushItem::SubscriptionsRestored);
        }
        drop(st);
        if done {
            // Its connection would dial a dead node forever (dropped
            // outside the lock).
            let node = lock(&self.nodes).remove(endpoint);
            drop(node);
        }
        done
    }
}

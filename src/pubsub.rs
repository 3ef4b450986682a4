//! Pub/sub: [`PubSub`] hands out [`Subscription`]s, each a
//! [`Stream`] of [`Event`]s (messages, and the gaps in them), that keep
//! flowing across `MOVING` handoffs, server-side disconnects and restarts.
//!
//! ```no_run
//! use redis_layers::pubsub::{Event, PubSub};
//! use redis_layers::{Connector, Endpoint};
//!
//! # async fn run() -> Result<(), redis_layers::Error> {
//! let pubsub = PubSub::new(Connector::new(), Endpoint::tcp("127.0.0.1", 6379));
//! let mut sub = pubsub.subscribe(["news"]).await?;
//! sub.psubscribe(["alerts.*"]).await?;
//! while let Some(event) = sub.recv().await {
//!     match event {
//!         Event::Message(m) => println!("{:?}: {:?}", m.channel, m.payload),
//!         Event::Disconnected => println!("messages may be lost from here..."),
//!         Event::Reconnected { downtime } => println!("...to here ({downtime:?})"),
//!         Event::Lagged { missed } => println!("{missed} dropped: too slow"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! A `PubSub` owns a [`Handoff`] service with one connection (its own, or
//! one it is given: [`PubSub::from_handoff`]) and reads that service's
//! merged push stream. All subscriptions share the connection; the server
//! is subscribed to each channel once, however many [`Subscription`]s
//! want it, and unsubscribed when the last one lets go.
//!
//! Keeping subscriptions alive is the [`Handoff`] layer's job, not this
//! module's, because it is the one that owns and replaces connections:
//!
//! - on `MOVING` it subscribes the new connection to everything the old
//!   one is subscribed to before switching, and closes the old one only
//!   after that;
//! - when a connection dies (the server closed it, `CLIENT KILL`, a
//!   network drop, a handoff that failed for good) it reconnects at once,
//!   not on the next command (a subscriber sends none), with a jittered
//!   backoff (50 ms doubling up to 2 s) while the server is away or drops
//!   each new connection (it starts over once one stays up 1 s), and the
//!   new connection subscribes to what the dead one was subscribed to
//!   (the subscriptions the server confirmed, as the transport tracked
//!   them) before it takes commands.
//!
//! Doing it there means one code path restores subscriptions for every
//! reason a connection is replaced, the restore happens before any other
//! command can reach the new connection (no window where a `SUBSCRIBE`
//! from here races a restore), and raw users of
//! [`Handoff::take_pushes`] get it too. This module turns the layer's
//! in-band notes (loss, restore) into [`Event`]s and routes messages.
//!
//! # Gaps: what may be lost, and how you learn it
//!
//! - **`MOVING`** (handoff succeeded): nothing is lost. The new
//!   connection is subscribed before the old one closes, so a message
//!   published in that overlap may be delivered twice. No event.
//! - **Connection lost** (killed, dropped, server restart):
//!   [`Event::Disconnected`] comes right after the last message the dead
//!   connection received, and [`Event::Reconnected`] right before the
//!   first message of the new one, once its subscriptions are confirmed.
//!   Messages published between the server dropping the connection and the
//!   new subscription being confirmed are lost (Redis pub/sub keeps
//!   nothing); every other message is delivered exactly once, in order.
//!   While the server stays away the stream just waits (it does not end);
//!   `downtime` is the time from noticing the loss to the restore.
//!   A subscription the server refuses to restore on the new connection
//!   for good (`NOPERM`: the user lost the permission meanwhile; `ERR`,
//!   ...) ends: its subscribers get [`Event::Unsubscribed`] for it, before
//!   the `Reconnected` if one comes; the others are restored as usual. One
//!   refused for a while (`LOADING`, `BUSY`, `TRYAGAIN`, `CLUSTERDOWN`,
//!   `MASTERDOWN`) is tried again with the same backoff, and its
//!   subscribers get their `Reconnected` once it is made (or
//!   `Unsubscribed`, if a retry is refused for good).
//! - **Handoff that failed** for good: just before the `MOVING` deadline a
//!   new connection to the configured address restores the subscriptions,
//!   and the old connection keeps them until then (its remaining messages
//!   are read before it closes): nothing is lost, no event, duplicates
//!   possible. If the old connection closes first (the server is away),
//!   that is a loss like the one above, with both events.
//! - **Slow consumer**: see below ([`Event::Lagged`]).
//!
//! Gap events go to every subscription of the `PubSub` that exists when
//! they happen, in the stream's order (one made while disconnected gets
//! only the `Reconnected`). A subscribe or unsubscribe made while the
//! connection is being replaced waits for the new one (bounded by
//! [`PubSub::timeout`]) and fails with the connect error if that connect
//! fails; the reconnect keeps retrying all the same.
//!
//! # Backpressure
//!
//! Each [`Subscription`] buffers at most [`PubSub::buffer`] messages
//! (default [`DEFAULT_BUFFER`]). The connection never waits for a
//! consumer: when a subscription's buffer is full, new messages for it
//! are dropped and counted, and it receives [`Event::Lagged`] with the
//! count in their place, after the messages it had buffered. Other
//! subscriptions and the connection's commands are not affected. Gap
//! events are always kept.
//!
//! # Protocols
//!
//! RESP3 only: pub/sub messages arrive as push frames on the multiplexed
//! connection, beside command replies. A RESP2 connection (a server that
//! refused `HELLO 3`) refuses subscribe commands, and
//! [`Subscription::subscribe`] fails with [`Error::Config`].
//!
//! # Sharded pub/sub
//!
//! `SSUBSCRIBE` (Redis 7) on a `PubSub` goes to its one endpoint, which
//! must serve the channels' slot in a cluster. When the slot leaves that
//! node the server ends the subscription, and its subscribers get
//! [`Event::Unsubscribed`]: nothing more comes for that channel.
//! [`Client::ssubscribe`](crate::Client::ssubscribe) routes shard channels
//! by slot across a cluster instead, and subscribes again where a moved
//! slot went, with [`Event::Disconnected`] and [`Event::Reconnected`]
//! around the gap (to the subscriptions of that channel only); so does a
//! shard channel whose restore after a reconnect the old node refuses
//! with `MOVED` (its slot moved while the connection was down).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower_layer::Layer;
use tower_service::Service;

use crate::dial::{DialLimit, DialLimitLayer};
use crate::error::{Error, Result};
use crate::handoff::{Handoff, HandoffLayer, HandoffPolicy, MakeConnection};
use crate::lock;
use crate::maint::MaintenanceConfig;
use crate::transport::{Endpoint, PushItem, PushReceiver, Resolver};
use crate::{Cmd, Connector, Request, ServerError, ServerErrorKind, Value};

/// Messages a [`Subscription`] buffers by default before it drops new
/// ones ([`Event::Lagged`]).
pub const DEFAULT_BUFFER: usize = 1024;

/// How long a subscribe or unsubscribe may take by default, reconnect
/// included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which kind of subscription a message came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// `SUBSCRIBE channel`: a `message`.
    Channel,
    /// `PSUBSCRIBE pattern`: a `pmessage`.
    Pattern,
    /// `SSUBSCRIBE channel` (sharded): an `smessage`.
    Shard,
}

impl Kind {
    pub(crate) const ALL: [Kind; 3] = [Kind::Channel, Kind::Pattern, Kind::Shard];

    fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn subscribe(self) -> &'static str {
        ["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"][self.index()]
    }

    pub(crate) fn unsubscribe(self) -> &'static str {
        ["UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"][self.index()]
    }
}

/// One published message.
///
/// ```
/// use redis_layers::pubsub::{Kind, Message};
/// fn show(m: &Message) -> String {
///     match m.kind {
///         Kind::Pattern => format!("{:?} via {:?}", m.channel, m.pattern),
///         _ => format!("{:?}", m.channel),
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// How it was subscribed to.
    pub kind: Kind,
    /// The channel it was published on.
    pub channel: Bytes,
    /// The pattern that matched it (a [`Kind::Pattern`] message).
    pub pattern: Option<Bytes>,
    /// What was published.
    pub payload: Bytes,
}

/// What a [`Subscription`] yields; see the [module docs](self) for when
/// each comes.
///
/// ```
/// use redis_layers::pubsub::Event;
/// fn lossy(e: &Event) -> bool {
///     matches!(e, Event::Disconnected | Event::Lagged { .. })
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message.
    Message(Message),
    /// The connection was lost: messages published from here until
    /// [`Event::Reconnected`] are lost. Comes after the last message the
    /// lost connection delivered.
    Disconnected,
    /// A new connection is subscribed again; comes before its first
    /// message.
    Reconnected {
        /// From noticing the loss to the restored subscriptions.
        downtime: Duration,
    },
    /// This many messages were dropped here because the subscription's
    /// buffer was full (a slow consumer); or, at most this many, because
    /// the connection's push channel was full (the `PubSub` itself fell
    /// behind; see [`Connector::push_capacity`](crate::Connector::push_capacity)):
    /// then every subscription gets it, as the frames dropped may have
    /// been for any channel.
    Lagged {
        /// How many.
        missed: u64,
    },
    /// The subscription to `channel` (or pattern) ended without being
    /// asked to: nothing more comes for it, and once this event is
    /// received the subscription no longer lists it
    /// ([`Subscription::channels`] and the like; subscribing to it again
    /// sends the command again). Either the server ended it on its own (a
    /// shard channel whose slot left the node, Redis 7 cluster), or it
    /// refused to restore it on a new connection after a loss for good
    /// (`NOPERM` after an ACL change; then it comes after
    /// [`Event::Disconnected`], before the [`Event::Reconnected`] if one
    /// comes: a subscription whose only channel was refused gets none).
    /// A cluster [`Client`](crate::Client)'s shard subscriptions follow a
    /// moved slot instead ([`Event::Disconnected`], then
    /// [`Event::Reconnected`]).
    ///
    /// ```
    /// use redis_layers::pubsub::{Event, Kind};
    /// fn ended(e: &Event) -> Option<(Kind, &[u8])> {
    ///     match e {
    ///         Event::Unsubscribed { kind, channel } => Some((*kind, channel.as_ref())),
    ///         _ => None,
    ///     }
    /// }
    /// ```
    Unsubscribed {
        /// Which kind of subscription.
        kind: Kind,
        /// The channel, or the pattern of a [`Kind::Pattern`].
        channel: Bytes,
    },
}

pub(crate) type SendFuture = Pin<Box<dyn Future<Output = Result<Value>> + Send>>;
pub(crate) type SendFn = dyn Fn(Cmd) -> SendFuture + Send + Sync;

/// What every handle of one [`PubSub`] and its subscriptions share.
struct Inner {
    send: Box<SendFn>,
    /// `send` routes each shard channel to the node serving its slot (a
    /// cluster client's): a shard subscription the server ends (its slot
    /// moved) is made again, not reported as ended.
    reroutes: bool,
    registry: Mutex<Registry>,
    /// Subscribe and unsubscribe one at a time: the decision to send a
    /// command (first or last subscriber of a channel) and the command go
    /// together.
    ops: tokio::sync::Mutex<()>,
    /// Stops the dispatcher when the last handle goes.
    _stop: DropGuard,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    /// Per kind: channel (or pattern) to the subscriptions that want it.
    routes: [HashMap<Bytes, Vec<Arc<Queue>>>; 3],
    /// Subscriptions the server has and nobody wants, queued for an
    /// unsubscribe.
    cleaning: HashSet<(usize, Bytes)>,
    disconnected_at: Option<Instant>,
    /// Per kind: subscriptions being made again (a shard channel the
    /// server ended, or one whose restore was refused for a while).
    resubscribing: HashSet<(usize, Bytes)>,
}

impl Registry {
    /// Every subscription once.
    fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues_but(|_, _| false)
    }

    /// Every subscription once that a connection's loss or restore
    /// concerns: not one that wants only channels being subscribed again
    /// (it was told of that gap, and is told its end).
    fn connection_queues(&self) -> Vec<Arc<Queue>> {
        self.queues_but(|k, c| self.resubscribing.contains(&(k, c.clone())))
    }

    fn queues_but(&self, skip: impl Fn(usize, &Bytes) -> bool) -> Vec<Arc<Queue>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (k, routes) in self.routes.iter().enumerate() {
            for (c, list) in routes {
                if skip(k, c) {
                    continue;
                }
                for q in list {
                    if seen.insert(q.id) {
                        out.push(q.clone());
                    }
                }
            }
        }
        out
    }
}

/// Redis pub/sub that survives handoffs and reconnects; see the [module
/// docs](self).
///
/// Cheap to clone: clones share the connection and the subscriptions'
/// routing. Needs a tokio runtime (it starts a task that reads the
/// connection's messages).
#[derive(Clone)]
pub struct PubSub {
    inner: Arc<Inner>,
    buffer: usize,
    timeout: Duration,
}

impl fmt::Debug for PubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSub")
            .field("buffer", &self.buffer)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How a client's pub/sub connections are made: as its other connections
/// are, through its dial limiter and with its resolver (for the dial, and
/// for the DNS check of a handoff).
#[derive(Clone)]
pub(crate) struct Dialer {
    pub(crate) connector: Connector,
    pub(crate) dials: DialLimitLayer,
    pub(crate) resolver: Option<Resolver>,
}

impl PubSub {
    /// Pub/sub on a connection of its own to `endpoint`, made by
    /// `connector`, with the default maintenance configuration.
    ///
    /// ```no_run
    /// # async fn run() {
    /// use redis_layers::{pubsub::PubSub, Connector, Endpoint};
    /// let pubsub = PubSub::new(Connector::new(), Endpoint::tcp("127.0.0.1", 6379));
    /// # }
    /// ```
    pub fn new(connector: Connector, endpoint: Endpoint) -> PubSub {
        // The merged push stream as bounded as the connection's.
        let settings = crate::handoff::Settings::new(&Default::default(), 1)
            .push_capacity(connector.config.push_capacity);
        let handoff =
            Handoff::with_settings(connector, endpoint, settings, crate::handoff::DefaultPolicy);
        let pushes = handoff.take_pushes().expect("a new Handoff's pushes");
        PubSub::build(handoff, pushes)
    }

    /// Like [`new`](Self::new), with `config` given to the connector and
    /// to the handoff settings.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// use redis_layers::maint::MaintenanceConfig;
    /// use redis_layers::{pubsub::PubSub, Connector, Endpoint};
    /// let config = MaintenanceConfig::default();
    /// let pubsub = PubSub::with_config(Connector::new(), Endpoint::tcp("127.0.0.1", 6379), &config)?;
    /// # Ok(()) }
    /// ```
    pub fn with_config(
        connector: Connector,
        endpoint: Endpoint,
        config: &MaintenanceConfig,
    ) -> Result<PubSub> {
        let dialer = Dialer {
            connector,
            dials: DialLimitLayer::unlimited(),
            resolver: None,
        };
        PubSub::dialled(&dialer, endpoint, config)
    }

    /// Pub/sub on a connection of its own to `endpoint`, made by `dialer`.
    pub(crate) fn dialled(
        dialer: &Dialer,
        endpoint: Endpoint,
        config: &MaintenanceConfig,
    ) -> Result<PubSub> {
        let handoff = PubSub::handoff(dialer, endpoint, config)?;
        let pushes = handoff.take_pushes().expect("a new Handoff's pushes");
        Ok(PubSub::build(handoff, pushes))
    }

    /// The one-connection [`Handoff`] a pub/sub connection to `endpoint`
    /// runs on.
    pub(crate) fn handoff(
        dialer: &Dialer,
        endpoint: Endpoint,
        config: &MaintenanceConfig,
    ) -> Result<Handoff<DialLimit<Connector>>> {
        let mut connector = dialer.connector.clone().maintenance(config.clone())?;
        let mut layer = HandoffLayer::new(endpoint)
            .maintenance(config)?
            .push_capacity(connector.config.push_capacity);
        if let Some(r) = &dialer.resolver {
            connector = connector.resolver(r.clone());
            layer = layer.resolver(r.clone());
        }
        Ok(layer.layer(dialer.dials.layer(connector)))
    }

    /// Pub/sub whose commands go through `send`, which routes them (to
    /// several connections: a cluster's nodes), and whose messages come
    /// from `pushes`, those connections' merged push streams. A shard
    /// subscription the server ends is subscribed again through `send`.
    pub(crate) fn routed(send: Box<SendFn>, pushes: PushReceiver) -> PubSub {
        PubSub::from_parts(send, pushes, true)
    }

    /// Pub/sub on the connection of `handoff`, which may also serve
    /// commands (RESP3 keeps replies and messages apart). It takes the
    /// service's push stream ([`Handoff::take_pushes`]): an
    /// [`Error::Config`] if that was taken already, or if the service has
    /// more than one connection (an unsubscribe must reach the connection
    /// that subscribed; give pub/sub a `Handoff` with `pool_size(1)`).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// use redis_layers::handoff::Handoff;
    /// use redis_layers::{pubsub::PubSub, Connector, Endpoint};
    /// let handoff = Handoff::new(Connector::new(), Endpoint::tcp("127.0.0.1", 6379));
    /// let pubsub = PubSub::from_handoff(&handoff)?;
    /// # Ok(()) }
    /// ```
    pub fn from_handoff<M, P>(handoff: &Handoff<M, P>) -> Result<PubSub>
    where
        M: MakeConnection,
        P: HandoffPolicy,
    {
        if handoff.pool_size() != 1 {
            return Err(Error::config(
                "pub/sub needs a Handoff with one connection (pool_size 1)",
            ));
        }
        let Some(pushes) = handoff.take_pushes() else {
            return Err(Error::config("the Handoff's push stream was taken already"));
        };
        Ok(PubSub::build(handoff.clone(), pushes))
    }

    fn build<M, P>(handoff: Handoff<M, P>, pushes: PushReceiver) -> PubSub
    where
        M: MakeConnection,
        P: HandoffPolicy,
    {
        let handoff = Mutex::new(handoff);
        let send = move |c: Cmd| -> SendFuture {
            let mut svc = lock(&handoff).clone();
            Box::pin(async move {
                std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
                svc.call(Request::from(c)).await?.into_value()
            })
        };
        PubSub::from_parts(Box::new(send), pushes, false)
    }

    fn from_parts(send: Box<SendFn>, pushes: PushReceiver, reroutes: bool) -> PubSub {
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            send,
            reroutes,
            registry: Mutex::new(Registry::default()),
            ops: tokio::sync::Mutex::new(()),
            _stop: stop.clone().drop_guard(),
        });
        tokio::spawn(dispatch(Arc::downgrade(&inner), pushes, stop));
        PubSub {
            inner,
            buffer: DEFAULT_BUFFER,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets how many messages each subscription made through this handle
    /// buffers (at least 1) before dropping new ones.
    pub fn buffer(mut self, messages: usize) -> Self {
        self.buffer = messages.max(1);
        self
    }

    /// Sets how long a subscribe or unsubscribe through this handle may
    /// take, a reconnect in progress included ([`Error::Timeout`]). At most
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT): a longer one is clamped to it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = crate::time::clamp(timeout);
        self
    }

    /// A subscription to nothing yet; add channels with its methods.
    pub fn subscription(&self) -> Subscription {
        let id = {
            let mut reg = lock(&self.inner.registry);
            reg.next_id += 1;
            reg.next_id
        };
        Subscription {
            inner: self.inner.clone(),
            queue: Arc::new(Queue {
                id,
                capacity: self.buffer,
                state: Mutex::new(QueueState::default()),
            }),
            own: Default::default(),
            timeout: self.timeout,
        }
    }

    /// Subscribes to `channels` (`SUBSCRIBE`); returns when the server
    /// confirmed them.
    pub async fn subscribe<I>(&self, channels: I) -> Result<Subscription>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        let mut sub = self.subscription();
        sub.subscribe(channels).await?;
        Ok(sub)
    }

    /// Subscribes to `patterns` (`PSUBSCRIBE`).
    pub async fn psubscribe<I>(&self, patterns: I) -> Result<Subscription>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        let mut sub = self.subscription();
        sub.psubscribe(patterns).await?;
        Ok(sub)
    }

    /// Subscribes to shard `channels` (`SSUBSCRIBE`, Redis 7).
    pub async fn ssubscribe<I>(&self, channels: I) -> Result<Subscription>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        let mut sub = self.subscription();
        sub.ssubscribe(channels).await?;
        Ok(sub)
    }
}

/// One subscriber: a set of channels, patterns and shard channels, and a
/// bounded [`Stream`] of the [`Event`]s for them. Made by [`PubSub`].
///
/// Dropping it unsubscribes (in the background) from whatever no other
/// subscription wants.
pub struct Subscription {
    inner: Arc<Inner>,
    queue: Arc<Queue>,
    own: [HashSet<Bytes>; 3],
    timeout: Duration,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channels", &self.own[0])
            .field("patterns", &self.own[1])
            .field("shard_channels", &self.own[2])
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Adds `channels` (`SUBSCRIBE`); returns when the server confirmed
    /// them. On an error this subscription is not subscribed to any of
    /// them.
    pub async fn subscribe<I>(&mut self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        self.add(Kind::Channel, channels).await
    }

    /// Adds `patterns` (`PSUBSCRIBE`).
    pub async fn psubscribe<I>(&mut self, patterns: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        self.add(Kind::Pattern, patterns).await
    }

    /// Adds shard `channels` (`SSUBSCRIBE`, Redis 7).
    pub async fn ssubscribe<I>(&mut self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        self.add(Kind::Shard, channels).await
    }

    /// Removes `channels` (all of them when empty). This subscription
    /// stops receiving them at once; the server is told when no other
    /// subscription wants them. An error (the connection is down) means
    /// the server may still send them: they are dropped, and unsubscribed
    /// again when one arrives.
    pub async fn unsubscribe<I>(&mut self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        self.remove(Kind::Channel, channels).await
    }

    /// Removes `patterns` (all of them when empty); see
    /// [`unsubscribe`](Self::unsubscribe).
    pub async fn punsubscribe<I>(&mut self, patterns: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        self.remove(Kind::Pattern, patterns).await
    }

    /// Removes shard `channels` (all of them when empty); see
    /// [`unsubscribe`](Self::unsubscribe).
    pub async fn sunsubscribe<I>(&mut self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        self.remove(Kind::Shard, channels).await
    }

    /// The channels this subscription has.
    pub fn channels(&self) -> impl Iterator<Item = &Bytes> {
        self.own[0].iter()
    }

    /// The patterns this subscription has.
    pub fn patterns(&self) -> impl Iterator<Item = &Bytes> {
        self.own[1].iter()
    }

    /// The shard channels this subscription has.
    pub fn shard_channels(&self) -> impl Iterator<Item = &Bytes> {
        self.own[2].iter()
    }

    /// The next event; `None` only once the connection's push stream has
    /// ended for good (never while this subscription exists, in practice).
    pub async fn recv(&mut self) -> Option<Event> {
        let ev = std::future::poll_fn(|cx| self.queue.poll_pop(cx)).await;
        self.delivered(ev)
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        let ev = self.queue.pop();
        self.delivered(ev)
    }

    /// An [`Event::Unsubscribed`] takes its channel out of this
    /// subscription's own, unless it was subscribed again since (routed to
    /// it once more).
    fn delivered(&mut self, ev: Option<Event>) -> Option<Event> {
        if let Some(Event::Unsubscribed { kind, channel }) = &ev {
            let k = kind.index();
            let routed = lock(&self.inner.registry).routes[k]
                .get(channel)
                .is_some_and(|l| l.iter().any(|q| q.id == self.queue.id));
            if !routed {
                self.own[k].remove(channel);
            }
        }
        ev
    }

    async fn add<I>(&mut self, kind: Kind, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        let k = kind.index();
        let channels: Vec<Bytes> = channels.into_iter().map(Into::into).collect();
        let mut wanted: Vec<Bytes> = Vec::new();
        {
            // Ours and routed to us: a channel the server ended
            // ([`Event::Unsubscribed`]) is ours but no longer routed.
            let reg = lock(&self.inner.registry);
            let id = self.queue.id;
            for c in channels {
                let has = self.own[k].contains(&c)
                    && reg.routes[k]
                        .get(&c)
                        .is_some_and(|l| l.iter().any(|q| q.id == id));
                if !has && !wanted.contains(&c) {
                    wanted.push(c);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let inner = self.inner.clone();
        let queue = self.queue.clone();
        let timeout = self.timeout;
        // Counted as ours at once, so that `Drop` unroutes them whatever
        // happens to this future.
        self.own[k].extend(wanted.iter().cloned());
        // Routing and the SUBSCRIBE run in a task of their own: a caller
        // that gives up (a timeout, a `select!`) cannot leave a route
        // without a server subscription behind it, which would make later
        // subscribers of the channel wait for messages that never come.
        let task = tokio::spawn({
            let wanted = wanted.clone();
            async move {
                let _ops = inner.ops.lock().await;
                // Routed before the command is sent: a message that follows
                // the confirmation finds its subscriber.
                let first: Vec<Bytes> = {
                    let mut reg = lock(&inner.registry);
                    let mut first = Vec::new();
                    for c in &wanted {
                        let list = reg.routes[k].entry(c.clone()).or_default();
                        if list.is_empty() {
                            first.push(c.clone());
                        }
                        list.push(queue.clone());
                    }
                    first
                };
                if first.is_empty() {
                    return Ok(());
                }
                let mut cmd = crate::cmd(kind.subscribe());
                for c in &first {
                    cmd = cmd.arg(c.as_ref());
                }
                let sent = inner.send_within(cmd, timeout).await;
                if sent.is_err() {
                    let mut reg = lock(&inner.registry);
                    for c in &wanted {
                        unroute(&mut reg, k, c, queue.id);
                    }
                }
                sent.map(drop)
            }
        });
        let result = task
            .await
            .unwrap_or_else(|e| Err(Error::config(format!("subscribe task failed: {e}"))));
        if result.is_err() {
            for c in &wanted {
                self.own[k].remove(c);
            }
        }
        result
    }

    async fn remove<I>(&mut self, kind: Kind, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        let k = kind.index();
        let mut gone: Vec<Bytes> = channels.into_iter().map(Into::into).collect();
        if gone.is_empty() {
            gone = self.own[k].iter().cloned().collect();
        }
        gone.retain(|c| self.own[k].remove(c));
        if gone.is_empty() {
            return Ok(());
        }
        let inner = self.inner.clone();
        // Unrouted together with `own`, before any wait: delivery stops at
        // once, and a caller that gives up leaves no route behind.
        let mut last: Vec<Bytes> = {
            let mut reg = lock(&inner.registry);
            gone.into_iter()
                .filter(|c| unroute(&mut reg, k, c, self.queue.id))
                .collect()
        };
        let _ops = inner.ops.lock().await;
        // Someone may have subscribed meanwhile (then the server keeps it);
        // a channel left unsubscribed here because this future was dropped
        // is unsubscribed as a stray when its next message comes.
        {
            let reg = lock(&inner.registry);
            last.retain(|c| reg.routes[k].get(c).is_none_or(|l| l.is_empty()));
        }
        if last.is_empty() {
            return Ok(());
        }
        let mut cmd = crate::cmd(kind.unsubscribe());
        for c in &last {
            cmd = cmd.arg(c.as_ref());
        }
        inner.send_within(cmd, self.timeout).await.map(drop)
    }
}

/// Removes subscription `id` from the route of `channel`; true when
/// nobody wants the channel any more.
fn unroute(reg: &mut Registry, k: usize, channel: &Bytes, id: u64) -> bool {
    let Some(list) = reg.routes[k].get_mut(channel) else {
        return false;
    };
    list.retain(|q| q.id != id);
    if list.is_empty() {
        reg.routes[k].remove(channel);
        true
    } else {
        false
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let this = self.get_mut();
        match this.queue.poll_pop(cx) {
            Poll::Ready(ev) => Poll::Ready(this.delivered(ev)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.queue.close();
        let mut last: Vec<(usize, Bytes)> = Vec::new();
        {
            let mut reg = lock(&self.inner.registry);
            for (k, own) in self.own.iter().enumerate() {
                for c in own {
                    if unroute(&mut reg, k, c, self.queue.id) {
                        last.push((k, c.clone()));
                    }
                }
            }
        }
        if last.is_empty() {
            return;
        }
        // Without a runtime (it is shutting down) the connection goes with
        // it; nothing to tell the server.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            let timeout = self.timeout;
            rt.spawn(async move {
                for (k, c) in last {
                    inner.unsubscribe_stray(k, c, timeout).await;
                }
            });
        }
    }
}

impl Inner {
    async fn send_within(&self, cmd: Cmd, timeout: Duration) -> Result<Value> {
        match tokio::time::timeout(timeout, (self.send)(cmd)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Unsubscribes from `channel` of kind `k` if no subscription wants it
    /// (checked under the ops lock: one may have come meanwhile).
    async fn unsubscribe_stray(&self, k: usize, channel: Bytes, timeout: Duration) {
        let _ops = self.ops.lock().await;
        let stray = {
            let mut reg = lock(&self.registry);
            reg.cleaning.remove(&(k, channel.clone()));
            !reg.routes[k].contains_key(&channel)
        };
        if stray {
            let cmd = crate::cmd(Kind::ALL[k].unsubscribe()).arg(channel.as_ref());
            if let Err(e) = self.send_within(cmd, timeout).await {
                tracing::debug!(target: "redis_layers::pubsub", error = %e, "unsubscribe of an unwanted channel failed");
            }
        }
    }
}

/// Reads the connection's pushes and routes them, until the `PubSub` is
/// gone.
async fn dispatch(inner: Weak<Inner>, mut pushes: PushReceiver, stop: CancellationToken) {
    loop {
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            item = pushes.recv_item() => item,
        };
        let Some(inner) = inner.upgrade() else { return };
        match item {
            Some(PushItem::Frame(v)) => route(&inner, v),
            Some(PushItem::SubscriptionsLost) => {
                let queues = {
                    let mut reg = lock(&inner.registry);
                    reg.disconnected_at.get_or_insert_with(Instant::now);
                    reg.connection_queues()
                };
                for q in queues {
                    q.push(Event::Disconnected);
                }
            }
            Some(PushItem::SubscriptionsRestored) => {
                let (queues, since) = {
                    let mut reg = lock(&inner.registry);
                    (reg.connection_queues(), reg.disconnected_at.take())
                };
                let downtime = since.map(|t| t.elapsed()).unwrap_or_default();
                for q in queues {
                    q.push(Event::Reconnected { downtime });
                }
            }
            Some(PushItem::Refused {
                kind,
                channel,
                error,
            }) => refused(&inner, kind, channel, &error),
            // Frames the push channel dropped here, for any channel:
            // every subscription may have lost messages.
            Some(PushItem::Lagged(missed)) => {
                let queues = lock(&inner.registry).queues();
                for q in queues {
                    q.push(Event::Lagged { missed });
                }
            }
            None => {
                let queues = lock(&inner.registry).queues();
                for q in queues {
                    q.close();
                }
                return;
            }
        }
    }
}

/// Delivers one push frame, if it is a message, to its subscribers.
fn route(inner: &Arc<Inner>, v: Value) {
    if let Some(channel) = server_sunsubscribe(&v) {
        return shard_ended(inner, channel);
    }
    let Some((kind, key, msg)) = parse(v) else {
        return;
    };
    let k = kind.index();
    let mut reg = lock(&inner.registry);
    match reg.routes[k].get(&key) {
        Some(list) => {
            for q in list {
                q.push(Event::Message(msg.clone()));
            }
        }
        None => {
            // The server sends what nobody wants (an unsubscribe that
            // failed while the connection was down, then restored):
            // unsubscribe once more.
            if reg.cleaning.insert((k, key.clone())) {
                drop(reg);
                let inner = inner.clone();
                tokio::spawn(async move {
                    inner.unsubscribe_stray(k, key, DEFAULT_TIMEOUT).await;
                });
            }
        }
    }
}

/// The channel of a `sunsubscribe` push. The confirmations of our own
/// unsubscribes are replies (the transport keeps them off the push
/// stream), so one here is the server's: Redis 7 ends the shard
/// subscriptions of a slot the node stops serving.
pub(crate) fn server_sunsubscribe(v: &Value) -> Option<Bytes> {
    let Value::Push(items) = v else { return None };
    if !items
        .first()?
        .as_bytes()?
        .eq_ignore_ascii_case(b"sunsubscribe")
    {
        return None;
    }
    match items.get(1)? {
        Value::BulkString(b) | Value::SimpleString(b) => Some(b.clone()),
        _ => None,
    }
}

/// Refusals that pass on their own (a slot migrating, a failover, a
/// loading or busy server): the subscription is tried again.
fn passing(kind: &ServerErrorKind) -> bool {
    matches!(
        kind,
        ServerErrorKind::TryAgain
            | ServerErrorKind::Loading
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::Busy
    )
}

/// Whether a subscribe of `kind` refused with `error` is worth another
/// try: a passing refusal, or a routed shard channel's `MOVED` (the router
/// follows the slot). Any other (`NOPERM`, `ERR`, ...) would be refused
/// again.
fn worth_retrying(inner: &Inner, kind: Kind, error: &ServerError) -> bool {
    passing(error.kind())
        || (kind == Kind::Shard && inner.reroutes && error.kind() == &ServerErrorKind::Moved)
}

/// The server refused to restore the subscription to `channel` on a new
/// connection. A shard channel whose slot moved meanwhile (`MOVED`) is
/// like one the server ended; a passing refusal (`LOADING`, `TRYAGAIN`,
/// ...) is retried with a backoff; any other (`NOPERM`, ...) ends the
/// subscription: a retry would be refused again.
fn refused(inner: &Arc<Inner>, kind: Kind, channel: Bytes, error: &ServerError) {
    if kind == Kind::Shard && error.kind() == &ServerErrorKind::Moved {
        return shard_ended(inner, channel);
    }
    if worth_retrying(inner, kind, error) {
        return subscribe_again(inner, kind, channel);
    }
    ended(inner, kind, channel);
}

/// The subscription to `channel` ended for good: its subscribers are told
/// (nothing more will come for it), and the route goes, so that a later
/// subscribe sends the command again.
fn ended(inner: &Arc<Inner>, kind: Kind, channel: Bytes) {
    let list = lock(&inner.registry).routes[kind.index()]
        .remove(&channel)
        .unwrap_or_default();
    for q in list {
        q.push(Event::Unsubscribed {
            kind,
            channel: channel.clone(),
        });
    }
}

/// The server ended the shard subscription to `channel`. Routed pub/sub
/// subscribes again where the slot went, a gap in between; otherwise the
/// subscribers are told it ended (nothing more will come for it).
fn shard_ended(inner: &Arc<Inner>, channel: Bytes) {
    if !inner.reroutes {
        return ended(inner, Kind::Shard, channel);
    }
    subscribe_again(inner, Kind::Shard, channel);
}

/// Subscribes to `channel` again in the background, its subscribers told
/// of the gap ([`Event::Disconnected`] now, unless a connection's loss
/// told them already, and [`Event::Reconnected`] once it is made).
fn subscribe_again(inner: &Arc<Inner>, kind: Kind, channel: Bytes) {
    let k = kind.index();
    let mut reg = lock(&inner.registry);
    let Some(list) = reg.routes[k].get(&channel) else {
        return;
    };
    // During a connection's loss (its restore was refused) they were told
    // already, and the gap started then.
    let since = match reg.disconnected_at {
        Some(t) => t,
        None => {
            for q in list {
                q.push(Event::Disconnected);
            }
            Instant::now()
        }
    };
    if reg.resubscribing.insert((k, channel.clone())) {
        drop(reg);
        tokio::spawn(resubscribe(Arc::downgrade(inner), kind, channel, since));
    }
}

/// Subscribes to `channel` again (a routed `send` finds the node serving a
/// shard channel's slot now) while anyone wants it, retrying with a
/// backoff (50 ms doubling up to 2 s) while that fails; then
/// [`Event::Reconnected`]. A refusal not worth retrying ends it
/// ([`Event::Unsubscribed`]).
async fn resubscribe(inner: Weak<Inner>, kind: Kind, channel: Bytes, since: Instant) {
    let k = kind.index();
    let key = (k, channel.clone());
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(inner) = inner.upgrade() else { return };
        let error = {
            let _ops = inner.ops.lock().await;
            if !lock(&inner.registry).routes[k].contains_key(&channel) {
                lock(&inner.registry).resubscribing.remove(&key);
                return;
            }
            let cmd = crate::cmd(kind.subscribe()).arg(channel.as_ref());
            match inner.send_within(cmd, DEFAULT_TIMEOUT).await {
                Ok(_) => {
                    let mut reg = lock(&inner.registry);
                    reg.resubscribing.remove(&key);
                    let downtime = since.elapsed();
                    for q in reg.routes[k].get(&channel).into_iter().flatten() {
                        q.push(Event::Reconnected { downtime });
                    }
                    return;
                }
                Err(Error::Server(e)) if !worth_retrying(&inner, kind, &e) => {
                    tracing::debug!(target: "redis_layers::pubsub", error = %e, "subscription refused for good");
                    lock(&inner.registry).resubscribing.remove(&key);
                    ended(&inner, kind, channel);
                    return;
                }
                Err(e) => e,
            }
        };
        tracing::debug!(target: "redis_layers::pubsub", error = %error, "not subscribed again yet");
        drop(inner);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A `message`, `pmessage` or `smessage` push: its kind, the key it is
/// routed by (channel or pattern) and the message.
fn parse(v: Value) -> Option<(Kind, Bytes, Message)> {
    let Value::Push(items) = v else { return None };
    let mut items = items.into_iter();
    let name = items.next()?;
    let name = name.as_bytes()?;
    let mut next = || match items.next() {
        Some(Value::BulkString(b)) | Some(Value::SimpleString(b)) => Some(b),
        _ => None,
    };
    let (kind, pattern) = if name.eq_ignore_ascii_case(b"message") {
        (Kind::Channel, None)
    } else if name.eq_ignore_ascii_case(b"smessage") {
        (Kind::Shard, None)
    } else if name.eq_ignore_ascii_case(b"pmessage") {
        (Kind::Pattern, Some(next()?))
    } else {
        return None;
    };
    let channel = next()?;
    let payload = next()?;
    let key = pattern.clone().unwrap_or_else(|| channel.clone());
    Some((
        kind,
        key,
        Message {
            kind,
            channel,
            pattern,
            payload,
        },
    ))
}

/// A subscription's bounded buffer.
struct Queue {
    id: u64,
    capacity: usize,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    events: VecDeque<Event>,
    /// How many of `events` are messages (the bounded part).
    messages: usize,
    waker: Option<Waker>,
    closed: bool,
}

impl Queue {
    fn push(&self, ev: Event) {
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        if matches!(ev, Event::Message(_)) {
            if st.messages >= self.capacity {
                match st.events.back_mut() {
                    Some(Event::Lagged { missed }) => *missed += 1,
                    _ => st.events.push_back(Event::Lagged { missed: 1 }),
                }
                return;
            }
            st.messages += 1;
        }
        st.events.push_back(ev);
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn pop(&self) -> Option<Event> {
        let mut st = lock(&self.state);
        let ev = st.events.pop_front()?;
        if matches!(ev, Event::Message(_)) {
            st.messages -= 1;
        }
        Some(ev)
    }

    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut st = lock(&self.state);
        if let Some(ev) = st.events.pop_front() {
            if matches!(ev, Event::Message(_)) {
                st.messages -= 1;
            }
            return Poll::Ready(Some(ev));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// No more events: the stream ends after those buffered.
    fn close(&self) {
        let waker = {
            let mut st = lock(&self.state);
            st.closed = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8) -> Event {
        Event::Message(Message {
            kind: Kind::Channel,
            channel: Bytes::from_static(b"c"),
            pattern: None,
            payload: Bytes::from(vec![n]),
        })
    }

    #[test]
    fn a_full_queue_counts_what_it_drops_in_order() {
        let q = Queue {
            id: 1,
            capacity: 2,
            state: Mutex::new(QueueState::default()),
        };
        for n in 0..5 {
            q.push(msg(n));
        }
        // Gap events are kept; messages after them are still counted.
        q.push(Event::Disconnected);
        q.push(msg(9));
        assert_eq!(q.pop(), Some(msg(0)));
        assert_eq!(q.pop(), Some(msg(1)));
        // Room again.
        q.push(msg(10));
        assert_eq!(q.pop(), Some(Event::Lagged { missed: 3 }));
        assert_eq!(q.pop(), Some(Event::Disconnected));
        assert_eq!(q.pop(), Some(Event::Lagged { missed: 1 }));
        assert_eq!(q.pop(), Some(msg(10)));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn parses_the_three_message_kinds() {
        let b = |s: &'static str| Value::BulkString(Bytes::from_static(s.as_bytes()));
        let (k, key, m) = parse(Value::Push(vec![
            b("pmessage"),
            b("n*"),
            b("news"),
            b("hi"),
        ]))
        .expect("pmessage");
        assert_eq!((k, key.as_ref()), (Kind::Pattern, &b"n*"[..]));
        assert_eq!(m.channel.as_ref(), b"news");
        assert_eq!(m.payload.as_ref(), b"hi");
        let (k, key, _) =
            parse(Value::Push(vec![b("smessage"), b("s"), b("x")])).expect("smessage");
        assert_eq!((k, key.as_ref()), (Kind::Shard, &b"s"[..]));
        let (k, _, m) = parse(Value::Push(vec![b("message"), b("c"), b("x")])).expect("message");
        assert_eq!((k, m.pattern), (Kind::Channel, None));
        assert!(parse(Value::Push(vec![b("invalidate"), b("k")])).is_none());
        assert!(parse(Value::Push(vec![b("message"), b("c")])).is_none());
    }

    #[test]
    fn recognises_a_server_sunsubscribe() {
        let b = |s: &'static str| Value::BulkString(Bytes::from_static(s.as_bytes()));
        let push = Value::Push(vec![b("sunsubscribe"), b("s"), Value::Integer(0)]);
        assert_eq!(server_sunsubscribe(&push).as_deref(), Some(&b"s"[..]));
        let msg = Value::Push(vec![b("smessage"), b("s"), b("x")]);
        assert_eq!(server_sunsubscribe(&msg), None);
        let unsub = Value::Push(vec![b("unsubscribe"), b("s"), Value::Integer(0)]);
        assert_eq!(server_sunsubscribe(&unsub), None);
        assert_eq!(
            server_sunsubscribe(&Value::Array(vec![b("sunsubscribe"), b("s")])),
            None
        );
    }
}

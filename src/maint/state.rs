//! The maintenance signal seam: one [`MaintenanceState`] per endpoint.
//!
//! The transport parses maintenance pushes and hands them to the state of
//! the endpoint the connection goes to (every connection a
//! [`Connector`](crate::Connector) makes to the same endpoint shares it).
//! Layers read it: [`RelaxTimeout`](crate::relax::RelaxTimeout) with one
//! atomic load per command, the handoff layer by subscribing to events.
//! Services that carry a state implement [`Maintained`], and layers that need
//! signals require it, so a stack that cannot deliver them does not compile.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Dedup, Kind, Mode, Notification, ResolvedEndpointType};
use crate::transport::Endpoint;

/// What the [hook](MaintenanceState::set_hook) decides for a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it as usual (relax, hand off, ...).
    Default,
    /// Observe only: skip the default handling. Subscribers still see it.
    Veto,
}

/// A maintenance event, as subscribers see it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MaintEvent {
    /// A notification arrived (after dedup); `vetoed` when the hook skipped
    /// its default handling.
    Notification {
        /// The notification.
        notification: Notification,
        /// The hook vetoed the default handling.
        vetoed: bool,
    },
    /// Timeouts are relaxed now.
    Relaxed {
        /// Why: the notification kind, or `"post-handoff"`.
        reason: &'static str,
    },
    /// Timeouts are back to normal.
    Unrelaxed {
        /// How: `"notification"`, `"deadline"` or `"backstop"`.
        by: &'static str,
    },
    /// The handoff layer started moving one connection (attempt 1), or
    /// tries again after a failed dial (`attempt` > 1).
    HandoffStarted {
        /// The `MOVING` sequence number.
        seq: i64,
        /// The endpoint left.
        from: Endpoint,
        /// The endpoint dialled.
        to: Endpoint,
        /// 1 for the first dial.
        attempt: u32,
    },
    /// A dial for a handoff failed and will be tried again.
    HandoffRetried {
        /// The `MOVING` sequence number.
        seq: i64,
        /// The endpoint dialled.
        to: Endpoint,
        /// The attempt that failed.
        attempt: u32,
        /// Why it failed.
        error: String,
    },
    /// A connection was handed off: new commands go to `to` now.
    HandoffSucceeded {
        /// The `MOVING` sequence number.
        seq: i64,
        /// The endpoint left.
        from: Endpoint,
        /// The new endpoint.
        to: Endpoint,
    },
    /// A handoff gave up: the old connection serves until it closes, then
    /// the next command reconnects to the configured address.
    HandoffFailed {
        /// The `MOVING` sequence number.
        seq: i64,
        /// The endpoint it tried to reach.
        to: Endpoint,
        /// Why it gave up.
        reason: String,
    },
    /// The [`TargetPolicy`](crate::trust::TargetPolicy) refused an
    /// endpoint a server named. A refused `MOVING` target is handled like a
    /// `MOVING` without an endpoint (reconnect to the configured address
    /// after half its time); a refused redirect is not followed.
    TargetRefused {
        /// What named it.
        source: crate::trust::Source,
        /// The endpoint named.
        target: Endpoint,
        /// The endpoint whose server named it.
        from: Endpoint,
    },
    /// An endpoint's handoff circuit breaker changed state.
    Breaker {
        /// The handoff target the breaker guards.
        endpoint: Endpoint,
        /// The new state.
        state: BreakerState,
    },
}

/// The state of a handoff circuit breaker (the [maintenance contract](crate::docs::maintenance),
/// section 3): `Closed` dials
/// freely, `Open` refuses to dial until `circuit_breaker_reset_timeout` has
/// passed, `HalfOpen` lets `circuit_breaker_max_requests` trial dials
/// through and closes again when they succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Dials go through.
    Closed,
    /// Dials are refused.
    Open,
    /// A few trial dials go through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`.
    ///
    /// ```
    /// assert_eq!(redis_layers::maint::BreakerState::HalfOpen.as_str(), "half-open");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// Why an endpoint does or does not send maintenance notifications: the
/// outcome of the opt-in (`CLIENT MAINT_NOTIFICATIONS ON
/// moving-endpoint-type T`) on the endpoint's latest handshake, or the
/// configuration that kept it from being sent.
///
/// ```
/// use redis_layers::maint::OptIn;
///
/// let why = OptIn::Refused { error: "ERR unknown subcommand".into(), server: Some("redis".into()), version: Some("7.0.15".into()) };
/// assert_eq!(why.as_str(), "refused");
/// assert!(!why.is_enabled());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptIn {
    /// No handshake with the endpoint has got this far yet.
    NotProbed,
    /// Opted in: the server sends notifications, with endpoints of this type.
    Enabled {
        /// The `moving-endpoint-type` sent.
        endpoint_type: ResolvedEndpointType,
    },
    /// The server refused the opt-in (Redis Open Source and Valkey answer
    /// `ERR unknown subcommand`). In mode `Auto` the connection carries on
    /// without, and later connections to the endpoint do not ask again
    /// while `HELLO` names the same server and version (see
    /// [`Mode::Auto`](super::Mode::Auto)); in mode `Enabled` the connection
    /// failed.
    Refused {
        /// The server's error text.
        error: String,
        /// `server` from the `HELLO` reply of the refused connection.
        server: Option<String>,
        /// `version` from the `HELLO` reply of the refused connection.
        version: Option<String>,
    },
    /// Mode [`Disabled`](super::Mode::Disabled): never asked.
    DisabledByConfig,
    /// Not applicable: the connection speaks RESP2 (configured, or the
    /// server refused `HELLO 3`), and notifications are RESP3 push frames.
    Resp2,
}

impl OptIn {
    /// `not-probed`, `enabled`, `refused`, `disabled` or `resp2` (for logs
    /// and metric labels).
    ///
    /// ```
    /// assert_eq!(redis_layers::maint::OptIn::DisabledByConfig.as_str(), "disabled");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            OptIn::NotProbed => "not-probed",
            OptIn::Enabled { .. } => "enabled",
            OptIn::Refused { .. } => "refused",
            OptIn::DisabledByConfig => "disabled",
            OptIn::Resp2 => "resp2",
        }
    }

    /// True when the endpoint sends notifications.
    ///
    /// ```
    /// use redis_layers::maint::{OptIn, ResolvedEndpointType};
    /// assert!(OptIn::Enabled { endpoint_type: ResolvedEndpointType::InternalIp }.is_enabled());
    /// assert!(!OptIn::NotProbed.is_enabled());
    /// ```
    pub fn is_enabled(&self) -> bool {
        matches!(self, OptIn::Enabled { .. })
    }
}

/// The last maintenance notification an endpoint received (after dedup).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use redis_layers::maint::{Kind, MaintenanceState, Notification};
///
/// let state = Arc::new(MaintenanceState::new(Duration::from_secs(10), Duration::from_secs(30)));
/// state.on_notification(Notification::FailingOver { seq: 4, time: Duration::from_secs(2), shard_ids: vec![] });
/// let last = state.status().last_notification.unwrap();
/// assert_eq!((last.kind, last.seq), (Kind::FailingOver, 4));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastNotification {
    /// Its kind.
    pub kind: Kind,
    /// Its sequence number.
    pub seq: i64,
    /// When it arrived.
    pub at: Instant,
    /// The [hook](MaintenanceState::set_hook) vetoed its default handling.
    pub vetoed: bool,
}

/// An endpoint's maintenance status, from
/// [`MaintenanceState::status`]: whether it sends notifications and why,
/// what arrived last, the handoffs away from it, and how long timeouts stay
/// relaxed.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::maint::{MaintenanceConfig, MaintenanceState, Mode, OptIn};
///
/// let off = MaintenanceConfig::default().mode(Mode::Disabled).validate().unwrap();
/// let status = MaintenanceState::from_config(&off).status();
/// assert_eq!(status.opt_in, OptIn::DisabledByConfig);
/// assert!(!status.is_enabled());
/// assert_eq!(status.relaxed_until, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintStatus {
    /// Whether notifications are on, and why (the endpoint's latest
    /// handshake).
    pub opt_in: OptIn,
    /// The `moving-endpoint-type` sent by the latest opt-in, accepted or
    /// refused (`None`: none sent yet).
    pub endpoint_type: Option<ResolvedEndpointType>,
    /// The last notification received.
    pub last_notification: Option<LastNotification>,
    /// Connections handed off from this endpoint
    /// ([`MaintEvent::HandoffSucceeded`]), by the crate's handoff layer.
    pub handoffs_succeeded: u64,
    /// Handoffs from this endpoint that gave up
    /// ([`MaintEvent::HandoffFailed`]).
    pub handoffs_failed: u64,
    /// Timeouts are relaxed until then (`None`: not relaxed now). An open
    /// window's backstop: an end notification ends it sooner.
    pub relaxed_until: Option<Instant>,
}

impl MaintStatus {
    /// True when the endpoint sends notifications.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::MaintenanceState;
    /// let state = MaintenanceState::new(Duration::from_secs(10), Duration::from_secs(30));
    /// assert!(!state.status().is_enabled());
    /// ```
    pub fn is_enabled(&self) -> bool {
        self.opt_in.is_enabled()
    }
}

type Hook = Arc<dyn Fn(&Notification) -> Verdict + Send + Sync>;

/// Counter (feature `metrics`): maintenance notifications received, by
/// `kind` (after dedup).
pub const NOTIFICATIONS: &str = "redis.client.maintenance.notifications";
/// Counter (feature `metrics`): relaxations started, by `reason`.
pub const RELAXED: &str = "redis.client.connection.relaxed_timeout";

/// The maintenance state of one endpoint: whether timeouts are relaxed, and
/// a stream of [`MaintEvent`]s.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use redis_layers::maint::MaintenanceState;
///
/// let state = Arc::new(MaintenanceState::new(Duration::from_secs(10), Duration::from_secs(30)));
/// assert_eq!(state.relaxed_timeout(), None);
/// state.relax_for("post-handoff", Duration::from_secs(20));
/// assert_eq!(state.relaxed_timeout(), Some(Duration::from_secs(10)));
/// ```
pub struct MaintenanceState {
    base: Instant,
    /// Milliseconds since `base` until which timeouts are relaxed; 0: not
    /// relaxed. The one value the hot path reads.
    relaxed_until: AtomicU64,
    /// When the last relaxation ended (microseconds since `base`, +1; 0:
    /// none has; finer than `relaxed_until`, because a request sent just
    /// after the end must not count as sent before it): a request
    /// that was in flight while the endpoint was relaxed keeps the relaxed
    /// deadline after the end ([`relaxed_since`](Self::relaxed_since)).
    relaxed_end: AtomicU64,
    relaxed_timeout: Duration,
    window_max: Duration,
    inner: Mutex<Inner>,
    events: broadcast::Sender<MaintEvent>,
}

#[derive(Default)]
struct Inner {
    /// Relaxed by a start notification until (backstop), if open.
    window_until: Option<Instant>,
    /// Relaxed after a handoff until.
    post_until: Option<Instant>,
    dedup: Dedup<()>,
    hook: Option<Hook>,
    /// The last `MOVING` handled by default, and its deadline.
    moving: Option<(Notification, Instant)>,
    backstop_generation: u64,
    /// Recent `SMIGRATED`s read on this endpoint's connections: sequence
    /// number, the slots they moved (one bit per slot: 2 KiB, however
    /// many moves a server lists), when (at most [`RECENT_SMIGRATED`]).
    smigrated: std::collections::VecDeque<(i64, Box<SlotBits>, Instant)>,
    opt_in: Option<OptIn>,
    endpoint_type: Option<ResolvedEndpointType>,
    last: Option<LastNotification>,
    handoffs_succeeded: u64,
    handoffs_failed: u64,
}

/// `SMIGRATED`s remembered per endpoint to tell a stale `SMIGRATING`.
const RECENT_SMIGRATED: usize = 16;

/// One bit per cluster slot.
const WORDS: usize = super::SLOT_COUNT as usize / 64;
type SlotBits = [u64; WORDS];

/// The slots of `sets`, as bits. Bounded work: each set's ranges are
/// disjoint, so a set sets at most every slot once.
fn slot_bits<'a>(sets: impl IntoIterator<Item = &'a super::SlotSet>) -> Box<SlotBits> {
    let mut bits = Box::new([0u64; WORDS]);
    for set in sets {
        for r in set.ranges() {
            for slot in r.clone() {
                // `get_mut`: a slot is below 16,384 by construction, and
                // a server's number never panics here regardless.
                if let Some(w) = bits.get_mut(usize::from(slot) / 64) {
                    *w |= 1 << (slot % 64);
                }
            }
        }
    }
    bits
}

impl Inner {
    /// True when every slot of an `SMIGRATING seq slots` was reported moved
    /// by a later `SMIGRATED` (within the de-duplication time-to-live).
    /// At most [`RECENT_SMIGRATED`] bit sets and 16,384 slots are looked at,
    /// whatever the server sends.
    fn overtaken(&self, seq: i64, slots: &super::SlotSet, now: Instant) -> bool {
        let ttl = self.dedup.ttl();
        let mut moved = [0u64; WORDS];
        let mut any = false;
        for (_, bits, _) in self
            .smigrated
            .iter()
            .filter(|(s, _, at)| *s > seq && now.saturating_duration_since(*at) < ttl)
        {
            any = true;
            for (m, b) in moved.iter_mut().zip(bits.iter()) {
                *m |= b;
            }
        }
        any && slots.ranges().iter().all(|r| {
            r.clone().all(|slot| {
                moved
                    .get(usize::from(slot) / 64)
                    .is_some_and(|w| w & (1 << (slot % 64)) != 0)
            })
        })
    }
}

impl fmt::Debug for MaintenanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaintenanceState")
            .field("relaxed", &self.relaxed_timeout().is_some())
            .field("relaxed_timeout", &self.relaxed_timeout)
            .finish_non_exhaustive()
    }
}

/// Services that carry the [`MaintenanceState`] of the endpoint they talk to.
/// Layers that act on maintenance signals require it.
///
/// Implemented by the crate's [`Connection`](crate::Connection),
/// [`Handoff`](crate::handoff::Handoff) and layers, and by tower's
/// middleware that forwards it (`ConcurrencyLimit`, `RateLimit`,
/// `Timeout`, `MapFuture`, `Filter`, `Retry`, `Either`); wrap middleware that
/// hides its inner service (`Buffer`, `MapRequest`, `MapErr`, boxed) in
/// [`WithMaintenance`](super::WithMaintenance).
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not carry a maintenance state (`Maintained`)",
    label = "a service that knows its endpoint's maintenance state is needed here",
    note = "RelaxTimeout and a cluster's node services go over Handoff or a Connection, directly or through tower middleware that forwards `Maintained` (ConcurrencyLimit, RateLimit, Timeout, MapFuture, Filter, Either)",
    note = "wrap middleware that hides its inner service (Buffer, MapRequest, MapErr, a boxed service) in `CarryMaintenanceLayer::new(layer)`"
)]
pub trait Maintained {
    /// True when the service's error for a command answered with `MOVED`
    /// or `ASK` carries that command back (the error of a single command,
    /// or of each such command in a pipeline's replies), so that a
    /// [`Cluster`](crate::cluster::Cluster) above can resend it without
    /// keeping a copy of every command it sends. The crate's
    /// [`Connection`](crate::Connection) does (for a command, or a
    /// pipeline, of up to 64 KiB; not within a transaction, whose commands
    /// are not resent one by one), and its layers pass the answer of the
    /// service they wrap on. Leave it
    /// `false` (the default) unless the service passes requests to its inner
    /// service unchanged (the command that comes back is resent as it is:
    /// a layer that rewrote it, say with a key prefix, would rewrite it
    /// twice), returns the inner service's errors unchanged (the errors of
    /// the commands inside a pipeline's reply too), and the inner
    /// service's value is `true`. Declared wrongly, a redirected command
    /// fails with its `MOVED` (it was not run):
    ///
    /// ```
    /// use std::sync::Arc;
    /// use redis_layers::maint::{Maintained, MaintenanceState};
    ///
    /// struct Counted<S> { inner: S }
    ///
    /// impl<S: Maintained> Maintained for Counted<S> {
    ///     // Errors pass through untouched.
    ///     const RETURNS_REDIRECTED: bool = S::RETURNS_REDIRECTED;
    ///     fn maintenance(&self) -> &Arc<MaintenanceState> {
    ///         self.inner.maintenance()
    ///     }
    /// }
    /// ```
    const RETURNS_REDIRECTED: bool = false;

    /// The state.
    fn maintenance(&self) -> &Arc<MaintenanceState>;

    /// The service's maintenance events. By default those of
    /// [`maintenance`](Self::maintenance)'s endpoint; a service that moves
    /// between endpoints (the handoff layer) gives a stream that follows it.
    fn subscribe(&self) -> broadcast::Receiver<MaintEvent> {
        self.maintenance().subscribe()
    }

    /// This service's maintenance apart from the service, for an adapter
    /// above middleware that hides it
    /// ([`WithMaintenance`](super::WithMaintenance)). By default the state
    /// [`maintenance`](Self::maintenance) gives now; a service that moves
    /// between endpoints (the handoff layer) gives one that follows it.
    fn maintenance_handle(&self) -> super::MaintenanceHandle {
        super::MaintenanceHandle::fixed(self.maintenance().clone())
    }
}

impl MaintenanceState {
    /// A state whose relaxations use `relaxed_timeout` and end at the latest
    /// after `window_max` (the backstop) when their end never comes. Both
    /// are at most [`MAX_TIMEOUT`](crate::MAX_TIMEOUT) (clamped).
    pub fn new(relaxed_timeout: Duration, window_max: Duration) -> Self {
        let relaxed_timeout = crate::time::clamp(relaxed_timeout);
        let window_max = crate::time::clamp(window_max);
        MaintenanceState {
            base: Instant::now(),
            relaxed_until: AtomicU64::new(0),
            relaxed_end: AtomicU64::new(0),
            relaxed_timeout,
            window_max,
            inner: Mutex::new(Inner::default()),
            events: broadcast::channel(256).0,
        }
    }

    /// The relaxed timeout while relaxed, else `None`. One atomic load when
    /// not relaxed.
    #[inline]
    pub fn relaxed_timeout(&self) -> Option<Duration> {
        let until = self.relaxed_until.load(Ordering::Acquire);
        if until == 0 || self.now_ms() >= until {
            return None;
        }
        Some(self.relaxed_timeout)
    }

    /// The relaxed timeout when the endpoint is relaxed now, or was at some
    /// time after `since` (the relaxation ended since then): a request sent
    /// while the server was migrating or failing over may get its reply
    /// after the end notification, and keeps its relaxed deadline.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use redis_layers::maint::{MaintenanceState, Notification};
    ///
    /// let state = Arc::new(MaintenanceState::new(Duration::from_secs(10), Duration::from_secs(30)));
    /// let sent = Instant::now() - Duration::from_millis(1); // a moment ago
    /// assert_eq!(state.relaxed_since(sent), None);
    /// state.on_notification(Notification::Migrating { seq: 1, time: Duration::from_secs(5), shard_ids: vec![] });
    /// state.on_notification(Notification::Migrated { seq: 2, shard_ids: vec![] });
    /// assert_eq!(state.relaxed_timeout(), None);
    /// // Sent before the end: still relaxed for this request.
    /// assert_eq!(state.relaxed_since(sent), Some(Duration::from_secs(10)));
    /// ```
    pub fn relaxed_since(&self, since: Instant) -> Option<Duration> {
        // Relaxed now, or until a deadline that passed after `since` (its
        // end may not be recorded yet: that waits for a task).
        let until = self.relaxed_until.load(Ordering::Acquire);
        if until != 0 && (self.now_ms() < until || until > self.ms(since)) {
            return Some(self.relaxed_timeout);
        }
        let end = self.relaxed_end.load(Ordering::Acquire);
        (end != 0 && end > self.us(since)).then_some(self.relaxed_timeout)
    }

    /// A state for an endpoint under `config`: its relaxed timeout, backstop
    /// and dedup memory.
    pub fn from_config(config: &super::Resolved) -> Self {
        let state = Self::new(config.relaxed_timeout(), config.relaxed_window_max());
        let mut inner = state.lock();
        inner.dedup = Dedup::new(config.dedup_ttl());
        if config.mode() == Mode::Disabled {
            inner.opt_in = Some(OptIn::DisabledByConfig);
        }
        drop(inner);
        state
    }

    /// The endpoint's status: whether it sends notifications and why, the
    /// last notification, the handoffs away from it, and until when
    /// timeouts are relaxed. Made of copies; cheap enough for a health
    /// endpoint, not for every command.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use redis_layers::maint::{MaintenanceState, OptIn};
    ///
    /// let state = Arc::new(MaintenanceState::new(Duration::from_secs(10), Duration::from_secs(30)));
    /// assert_eq!(state.status().opt_in, OptIn::NotProbed);
    /// state.relax_for("post-handoff", Duration::from_secs(20));
    /// assert!(state.status().relaxed_until.is_some());
    /// ```
    pub fn status(&self) -> MaintStatus {
        let until = self.relaxed_until.load(Ordering::Acquire);
        let relaxed_until = (until != 0 && self.now_ms() < until)
            .then(|| self.base + Duration::from_millis(until - 1));
        let inner = self.lock();
        MaintStatus {
            opt_in: inner.opt_in.clone().unwrap_or(OptIn::NotProbed),
            endpoint_type: inner.endpoint_type,
            last_notification: inner.last,
            handoffs_succeeded: inner.handoffs_succeeded,
            handoffs_failed: inner.handoffs_failed,
            relaxed_until,
        }
    }

    /// Records the opt-in's outcome on a handshake (`sent`: the endpoint
    /// type it sent, if it sent one).
    pub(crate) fn set_opt_in(&self, opt_in: OptIn, sent: Option<ResolvedEndpointType>) {
        let mut inner = self.lock();
        inner.opt_in = Some(opt_in);
        if sent.is_some() {
            inner.endpoint_type = sent;
        }
    }

    /// The error text of a refused opt-in, when the refusing server had
    /// this `HELLO` name and version: the same server would refuse again.
    pub(crate) fn refused_by(&self, server: Option<&str>, version: Option<&str>) -> Option<String> {
        match &self.lock().opt_in {
            Some(OptIn::Refused {
                error,
                server: s,
                version: v,
            }) if s.as_deref() == server && v.as_deref() == version => Some(error.clone()),
            _ => None,
        }
    }

    /// The opt-in outcome recorded, if any (the connector keeps refusals
    /// beyond the life of the state).
    pub(crate) fn opt_in(&self) -> Option<(OptIn, Option<ResolvedEndpointType>)> {
        let inner = self.lock();
        inner.opt_in.clone().map(|o| (o, inner.endpoint_type))
    }

    /// Counts a handoff away from this endpoint.
    pub(crate) fn count_handoff(&self, succeeded: bool) {
        let mut inner = self.lock();
        if succeeded {
            inner.handoffs_succeeded += 1;
        } else {
            inner.handoffs_failed += 1;
        }
    }

    /// Subscribes to this endpoint's maintenance events (a lagging
    /// subscriber loses the oldest, it never blocks the connection).
    pub fn subscribe(&self) -> broadcast::Receiver<MaintEvent> {
        self.events.subscribe()
    }

    /// Installs a hook that sees every notification first and may veto its
    /// default handling.
    pub fn set_hook(&self, hook: impl Fn(&Notification) -> Verdict + Send + Sync + 'static) {
        self.lock().hook = Some(Arc::new(hook));
    }

    /// Relaxes timeouts for `d` (the post-handoff window; the handoff layer
    /// calls it). Never shortens a relaxation already under way.
    pub fn relax_for(self: &Arc<Self>, reason: &'static str, d: Duration) {
        let until = crate::time::after(Instant::now(), d);
        let mut inner = self.lock();
        inner.post_until = Some(inner.post_until.map_or(until, |u| u.max(until)));
        self.publish(&inner);
        drop(inner);
        self.relaxed(reason);
        tracing::debug!(target: "redis_layers::maint", event = "maint.relaxed", reason, for_ms = d.as_millis() as u64, "timeouts relaxed");
        self.schedule_end(until, "deadline");
    }

    /// The `MOVING` under way (received, not vetoed, deadline not passed)
    /// and its deadline. A connection made to this endpoint after the
    /// `MOVING` went out may have missed it: its owner checks here after
    /// subscribing.
    pub fn active_moving(&self) -> Option<(Notification, Instant)> {
        let inner = self.lock();
        inner
            .moving
            .clone()
            .filter(|(_, deadline)| *deadline > Instant::now())
    }

    /// Handles a parsed notification from a connection: dedup (MOVING and
    /// SMIGRATED by sequence number), the hook, the event, and the default
    /// relax/unrelax.
    pub fn on_notification(self: &Arc<Self>, n: Notification) {
        let now = Instant::now();
        let mut inner = self.lock();
        if matches!(n.kind(), Kind::Moving | Kind::SMigrated)
            && !inner.dedup.first_time((), n.seq(), now.into_std())
        {
            tracing::debug!(target: "redis_layers::maint", event = "maint.duplicate", kind = n.kind().as_str(), seq = n.seq(), "duplicate notification ignored");
            return;
        }
        match &n {
            Notification::SMigrated { seq, moves } => {
                if inner.smigrated.len() == RECENT_SMIGRATED {
                    inner.smigrated.pop_front();
                }
                let bits = slot_bits(moves.iter().map(|m| &m.slots));
                inner.smigrated.push_back((*seq, bits, now));
            }
            // Its slots have moved already: relaxing again would last
            // until the backstop (see `maint::StaleGuard`).
            Notification::SMigrating { seq, slots } if inner.overtaken(*seq, slots, now) => {
                tracing::debug!(target: "redis_layers::maint", event = "maint.stale", kind = "SMIGRATING", seq, "SMIGRATING overtaken by a later SMIGRATED dropped");
                return;
            }
            _ => {}
        }
        let hook = inner.hook.clone();
        drop(inner);
        let vetoed = hook.is_some_and(|h| h(&n) == Verdict::Veto);
        tracing::info!(target: "redis_layers::maint", event = "maint.notification", kind = n.kind().as_str(), seq = n.seq(), vetoed, "maintenance notification");
        #[cfg(feature = "metrics")]
        metrics::counter!(NOTIFICATIONS, "kind" => n.kind().as_str()).increment(1);
        let kind = n.kind();
        self.lock().last = Some(LastNotification {
            kind,
            seq: n.seq(),
            at: now,
            vetoed,
        });
        if let (false, Some(time)) = (vetoed, n.time().filter(|_| kind == Kind::Moving)) {
            self.lock().moving = Some((n.clone(), crate::time::after(now, time)));
        }
        self.event(MaintEvent::Notification {
            notification: n,
            vetoed,
        });
        if vetoed {
            return;
        }
        if kind.is_start() {
            let until = crate::time::after(now, self.window_max);
            let mut inner = self.lock();
            inner.window_until = Some(until);
            inner.backstop_generation += 1;
            self.publish(&inner);
            drop(inner);
            self.relaxed(kind.as_str());
            tracing::info!(target: "redis_layers::maint", event = "maint.relaxed", reason = kind.as_str(), "timeouts relaxed");
            self.schedule_end(until, "backstop");
        } else if kind.is_end() {
            let mut inner = self.lock();
            if inner.window_until.take().is_some() {
                self.publish(&inner);
                drop(inner);
                self.unrelaxed("notification");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.ms(Instant::now())
    }

    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_micros() as u64 + 1
    }

    fn ms(&self, t: Instant) -> u64 {
        // +1 so that 0 always means "not relaxed".
        t.saturating_duration_since(self.base).as_millis() as u64 + 1
    }

    /// Stores the later of the two relaxations for the hot path.
    fn publish(&self, inner: &Inner) {
        let now = Instant::now();
        let until = [inner.window_until, inner.post_until]
            .into_iter()
            .flatten()
            .filter(|u| *u > now)
            .max();
        // Called under the lock: no other store comes between the load and
        // the store. The end is recorded before the relaxation is seen to
        // end, so a reader never finds neither.
        let prev = self.relaxed_until.load(Ordering::Acquire);
        if until.is_none() && prev != 0 {
            // Ended now, or earlier at its deadline.
            let end = self.us(now).min(prev.saturating_mul(1000));
            self.relaxed_end.store(end, Ordering::Release);
        }
        self.relaxed_until
            .store(until.map_or(0, |u| self.ms(u)), Ordering::Release);
    }

    /// At `until`, drop whatever relaxation has expired by then and say so.
    fn schedule_end(self: &Arc<Self>, until: Instant, by: &'static str) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime: the hot path still stops relaxing at `until`.
            return;
        };
        let weak = Arc::downgrade(self);
        handle.spawn(async move {
            tokio::time::sleep_until(until).await;
            let Some(state) = weak.upgrade() else { return };
            let now = Instant::now();
            let mut inner = state.lock();
            let mut ended = false;
            if inner.window_until.is_some_and(|u| u <= now) {
                inner.window_until = None;
                ended = true;
            }
            if inner.post_until.is_some_and(|u| u <= now) {
                inner.post_until = None;
                ended = true;
            }
            state.publish(&inner);
            let still = inner.window_until.is_some() || inner.post_until.is_some();
            drop(inner);
            if ended && !still {
                if by == "backstop" {
                    tracing::warn!(target: "redis_layers::maint", event = "maint.unrelaxed", by, "no end notification came; relaxation ended by the backstop");
                }
                state.unrelaxed(by);
            }
        });
    }

    fn relaxed(&self, reason: &'static str) {
        #[cfg(feature = "metrics")]
        metrics::counter!(RELAXED, "reason" => reason).increment(1);
        self.event(MaintEvent::Relaxed { reason });
    }

    fn unrelaxed(&self, by: &'static str) {
        tracing::info!(target: "redis_layers::maint", event = "maint.unrelaxed", by, "timeouts back to normal");
        self.event(MaintEvent::Unrelaxed { by });
    }

    fn event(&self, e: MaintEvent) {
        // No subscriber is fine.
        let _ = self.events.send(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal holds for the server that gave it: another name or
    /// version (an upgrade) is asked again.
    #[test]
    fn a_refusal_holds_for_the_same_server_and_version() {
        let state = MaintenanceState::new(Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(state.refused_by(Some("redis"), Some("7.0.15")), None);
        let refused = OptIn::Refused {
            error: "ERR unknown subcommand".into(),
            server: Some("redis".into()),
            version: Some("7.0.15".into()),
        };
        state.set_opt_in(refused.clone(), Some(ResolvedEndpointType::InternalIp));
        assert_eq!(
            state.refused_by(Some("redis"), Some("7.0.15")).as_deref(),
            Some("ERR unknown subcommand")
        );
        assert_eq!(state.refused_by(Some("redis"), Some("8.2.0")), None);
        assert_eq!(state.refused_by(Some("valkey"), Some("7.0.15")), None);
        assert_eq!(state.refused_by(None, None), None);
        let status = state.status();
        assert_eq!(status.opt_in, refused);
        assert_eq!(status.endpoint_type, Some(ResolvedEndpointType::InternalIp));
        // Accepted after an upgrade: nothing refused any more.
        state.set_opt_in(
            OptIn::Enabled {
                endpoint_type: ResolvedEndpointType::InternalIp,
            },
            Some(ResolvedEndpointType::InternalIp),
        );
        assert_eq!(state.refused_by(Some("redis"), Some("7.0.15")), None);
    }

    #[test]
    fn handoffs_are_counted() {
        let state = MaintenanceState::new(Duration::from_secs(1), Duration::from_secs(2));
        state.count_handoff(true);
        state.count_handoff(true);
        state.count_handoff(false);
        let s = state.status();
        assert_eq!((s.handoffs_succeeded, s.handoffs_failed), (2, 1));
    }
}

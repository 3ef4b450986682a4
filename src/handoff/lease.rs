//! Dedicated connections: [`Handoff::lease`](super::Handoff::lease).
//!
//! Some work needs a connection of its own: blocking commands (a `BLPOP`
//! holds up every command behind it on a shared connection), `WATCH` /
//! `MULTI` / `EXEC` (the watch is per connection), or a subscriber that wants
//! its pushes apart. A lease is such a connection, made by the same maker
//! to where the pool's connections are now.
//!
//! Given back (dropped), a lease's connection waits for the next lease when
//! it is clean: every request answered (a blocking command whose caller
//! gave up may still block on the server), none that leaves state on the
//! connection (`WATCH`, `MULTI`, `SELECT`, `CLIENT ...`, subscriptions,
//! ...), and still on the endpoint the pool uses. Otherwise it is closed. A
//! `MOVING` closes the idle ones on the old endpoint; a lease held during a
//! `MOVING` is handed off when given back: its connection is closed then,
//! and the next lease is dialled at the new endpoint. (A lease held past
//! the deadline loses its connection when the server closes it.)

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::{LeaseFuture, ResponseFuture};
use super::pool::{Lease, Slot};
use super::{lock, HandoffPolicy, MakeConnection, Shared};
use crate::error::{Error, Result};
use crate::maint::{Maintained, MaintenanceState};
use crate::request::{Request, Response};
use crate::transport::{Endpoint, Lifecycle};

/// Commands after which a connection is not handed to another lease.
const STATEFUL: &[&str] = &[
    "WATCH",
    "MULTI",
    "SELECT",
    "CLIENT",
    "HELLO",
    "AUTH",
    "RESET",
    "READONLY",
    "READWRITE",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "ASKING",
];

/// A dedicated connection leased from a [`Handoff`](super::Handoff)
/// ([`Handoff::lease`](super::Handoff::lease)): a command service of its
/// own; dropping it gives the connection back.
///
/// For blocking commands (a `BLPOP` holds up every command behind it on a
/// shared connection), `WATCH`/`MULTI`/`EXEC` (the watch is per
/// connection), or a subscriber that wants its pushes apart. Given back, a
/// connection serves the next lease when it is clean: every request
/// answered (a blocking command counts once its reply is in: one whose
/// caller gave up may still block on the server and take an element for
/// nobody), none that leaves state on the connection (`WATCH`, `MULTI`,
/// `SELECT`, `CLIENT ...`, subscriptions, ...), and still on the endpoint
/// the pool uses; otherwise it is closed. Up to `idle_leases` wait (see
/// [`HandoffLayer::idle_leases`](super::HandoffLayer::idle_leases)). A
/// `MOVING` closes the idle ones on the old endpoint; a lease held during a
/// `MOVING` is handed off when given back (closed, and the next lease is
/// dialled at the new endpoint). A lease held past the deadline loses its
/// connection when the server closes it.
///
/// ```no_run
/// use redis_layers::handoff::Handoff;
/// use redis_layers::{cmd, Connector, Endpoint};
/// use tower::ServiceExt;
///
/// # async fn run() -> Result<(), redis_layers::Error> {
/// let svc = Handoff::new(Connector::new(), Endpoint::tcp("127.0.0.1", 6379));
/// let mut lease = svc.lease().await?;
/// // Blocks this connection only; the shared ones keep serving.
/// let job = (&mut lease).oneshot(cmd("BLPOP").arg("jobs").arg(5).into()).await?;
/// # Ok(()) }
/// ```
pub struct Leased<M: MakeConnection, P: HandoffPolicy> {
    conn: Option<M::Connection>,
    slot: Arc<Slot>,
    /// A request left state on the connection: do not reuse it.
    dirty: bool,
    /// Blocking commands sent whose reply is not in.
    blocking: Arc<AtomicUsize>,
    /// An idle connection given back by an earlier lease.
    reused: bool,
    shared: Arc<Shared<M, P>>,
}

impl<M: MakeConnection, P: HandoffPolicy> Leased<M, P> {
    pub(super) fn new(shared: Arc<Shared<M, P>>, slot: Arc<Slot>, conn: M::Connection) -> Self {
        conn.dedicate();
        Leased {
            conn: Some(conn),
            slot,
            dirty: false,
            blocking: Arc::new(AtomicUsize::new(0)),
            reused: false,
            shared,
        }
    }

    /// The endpoint the connection is on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.slot.endpoint
    }

    /// The connection itself (e.g. to take its pushes).
    pub fn get_ref(&self) -> &M::Connection {
        self.conn.as_ref().expect("present until drop")
    }

    fn conn(&mut self) -> &mut M::Connection {
        self.conn.as_mut().expect("present until drop")
    }

    /// True when the connection served an earlier lease. The server may
    /// have closed it a moment before it was taken, before the client saw
    /// it: then its first request fails at once with [`Error::Closed`] or
    /// [`Error::Io`], most likely without reaching the server. The
    /// `Client` sends such a first request again on another lease when it
    /// was never written ([`Error::Closed`]), or when running it twice is
    /// harmless (`WATCH`, `SCAN`, `XREAD`, `BLPOP`, `BRPOP`, `BZPOPMIN`,
    /// `BZPOPMAX`; never `BLMOVE`, `BRPOPLPUSH`, `BLMPOP`, `BZMPOP`, which
    /// would move or pop a second time for a reply nobody sees).
    ///
    /// ```no_run
    /// # use redis_layers::handoff::Handoff;
    /// # use redis_layers::{cmd, Connector, Error};
    /// # use tower::ServiceExt;
    /// # async fn run(svc: Handoff<Connector>) -> Result<(), Error> {
    /// let mut lease = svc.lease().await?;
    /// let mut reply = (&mut lease).oneshot(cmd("BLPOP").arg("jobs").arg(5).into()).await;
    /// if matches!(reply, Err(Error::Io(_) | Error::Closed)) && lease.is_reused() {
    ///     let mut lease = svc.lease().await?;
    ///     reply = (&mut lease).oneshot(cmd("BLPOP").arg("jobs").arg(5).into()).await;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// Nothing the requests so far did stays on the connection (the
    /// client's transaction after its `WATCH` is over).
    pub(crate) fn mark_clean(&mut self) {
        self.dirty = false;
    }

    /// Not to be reused, whatever ran on it.
    pub(crate) fn mark_dirty(&mut self) {
        self.dirty = true;
    }
}

/// True when `cmd` leaves state on its connection.
pub(crate) fn leaves_state(cmd: &crate::Cmd) -> bool {
    STATEFUL.iter().any(|name| cmd.is(name))
}

impl<M: MakeConnection, P: HandoffPolicy> Service<Request> for Leased<M, P> {
    type Response = Response;
    type Error = Error;
    type Future = LeaseFuture<<M::Connection as Service<Request>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.conn().poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let cmds = req.cmds();
        self.dirty |= cmds.iter().any(leaves_state);
        let blocking = cmds.iter().filter(|c| c.is_blocking()).count();
        let blocking = (blocking > 0).then(|| {
            self.blocking.fetch_add(blocking, Ordering::SeqCst);
            (self.blocking.clone(), blocking)
        });
        self.slot.acquire();
        let fut = self.conn().call(req);
        LeaseFuture::new(
            ResponseFuture::new(fut, Some(Lease::new(self.slot.clone(), None))),
            blocking,
        )
    }
}

impl<M: MakeConnection, P: HandoffPolicy> Maintained for Leased<M, P> {
    const RETURNS_REDIRECTED: bool = M::Connection::RETURNS_REDIRECTED;

    fn maintenance(&self) -> &Arc<MaintenanceState> {
        self.get_ref().maintenance()
    }
}

impl<M: MakeConnection, P: HandoffPolicy> Drop for Leased<M, P> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let dirty = self.dirty || self.blocking.load(Ordering::SeqCst) > 0;
            self.shared.give_back(self.slot.clone(), conn, dirty);
        }
    }
}

impl<M: MakeConnection, P: HandoffPolicy> fmt::Debug for Leased<M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leased")
            .field("endpoint", &self.slot.endpoint)
            .field("dirty", &self.dirty)
            .field("blocking", &self.blocking.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl<M: MakeConnection, P: HandoffPolicy> Shared<M, P> {
    /// A clean idle connection where the pool is now, or a new one.
    pub(super) async fn lease(self: &Arc<Self>) -> Result<Leased<M, P>> {
        let current = lock(&self.pool).current.clone();
        let reuse = {
            let mut idle = lock(&self.idle);
            idle.retain(|(_, c)| !c.is_closed());
            let found = idle.iter().position(|(s, _)| s.endpoint == current);
            found.map(|i| idle.swap_remove(i))
        };
        if let Some((slot, conn)) = reuse {
            let mut lease = Leased::new(self.clone(), slot, conn);
            lease.reused = true;
            return Ok(lease);
        }
        // Not made to wait for DNS: its caller waits on it (see the
        // module docs on leases during a `MOVING`).
        let dial = lock(&self.maker).make_connection(current.clone());
        let conn = dial.await?;
        self.watch_state(&conn, &current);
        let slot = Slot::new(
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            current,
        );
        Ok(Leased::new(self.clone(), slot, conn))
    }

    fn give_back(&self, slot: Arc<Slot>, conn: M::Connection, dirty: bool) {
        let reuse = !dirty
            && slot.pending() == 0
            && !conn.is_closed()
            && conn.resubscribe_commands().is_empty()
            && slot.endpoint == lock(&self.pool).current;
        let mut idle = lock(&self.idle);
        if reuse && idle.len() < self.settings.idle_leases {
            idle.push((slot, conn));
        } else {
            drop(idle);
            conn.close();
        }
    }
}

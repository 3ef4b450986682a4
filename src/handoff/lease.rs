//! Dedicated connections: [`Handoff::lease`](super::Handoff::lease).
//!
//! Some work needs a connection of its own: blocking commands (a `BLPOP`
//! holds up every command behind it on a shared connection), `WATCH` /
//! `MULTI` / `EXEC` (the watch is per connection), or a subscriber that wants
//! its pushes apart. A lease is such a connection, made by the same maker
//! to where the pool's connections are now.
//!
//! Given back (dropped), a lease's connection waits for the next lease when
//! it is clean: every request answered, none that leaves state on the
//! connection (`WATCH`, `MULTI`, `SELECT`, `CLIENT ...`, subscriptions,
//! ...), and still on the endpoint the pool uses. Otherwise it is closed. A
//! `MOVING` closes the idle ones on the old endpoint; a lease held during a
//! `MOVING` is handed off when given back: its connection is closed then,
//! and the next lease is dialled at the new endpoint. (A lease held past
//! the deadline loses its connection when the server closes it.)

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::pool::{Lease, Slot};
use super::{lock, HandoffPolicy, MakeConnection, Shared};
use crate::error::{Error, Result};
use crate::maint::{Maintained, MaintenanceState};
use crate::request::{Body, Request, Response};
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
/// answered, none that leaves state on the connection (`WATCH`, `MULTI`,
/// `SELECT`, `CLIENT ...`, subscriptions, ...), and still on the endpoint
/// the pool uses; otherwise it is closed. A `MOVING` closes the idle ones on
/// the old endpoint; a lease held during a `MOVING` is handed off when given
/// back (closed, and the next lease is dialled at the new endpoint). A lease
/// held past the deadline loses its connection when the server closes it.
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
    shared: Arc<Shared<M, P>>,
}

impl<M: MakeConnection, P: HandoffPolicy> Leased<M, P> {
    pub(super) fn new(shared: Arc<Shared<M, P>>, slot: Arc<Slot>, conn: M::Connection) -> Self {
        Leased {
            conn: Some(conn),
            slot,
            dirty: false,
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
}

fn stateful(req: &Request) -> bool {
    let cmds = match req.body() {
        Body::Cmd(c) => std::slice::from_ref(c),
        Body::Pipeline(p) => p.cmds(),
    };
    // A blocking command whose caller gave up still blocks on the server
    // (and would pop an element for nobody): not for the next lease.
    cmds.iter()
        .any(|c| c.is_blocking() || STATEFUL.iter().any(|name| c.is(name)))
}

impl<M: MakeConnection, P: HandoffPolicy> Service<Request> for Leased<M, P> {
    type Response = Response;
    type Error = Error;
    type Future = ResponseFuture<<M::Connection as Service<Request>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.conn().poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.dirty |= stateful(&req);
        self.slot.acquire();
        let fut = self.conn().call(req);
        ResponseFuture::new(fut, Some(Lease(self.slot.clone())))
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
            self.shared.give_back(self.slot.clone(), conn, self.dirty);
        }
    }
}

impl<M: MakeConnection, P: HandoffPolicy> fmt::Debug for Leased<M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leased")
            .field("endpoint", &self.slot.endpoint)
            .field("dirty", &self.dirty)
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
            return Ok(Leased::new(self.clone(), slot, conn));
        }
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
        if reuse && idle.len() < self.settings.pool_size {
            idle.push((slot, conn));
        } else {
            drop(idle);
            conn.close();
        }
    }
}

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::PollSender;
use tower_service::Service;

use super::driver::{self, Driver, DriverConfig, Message};
use super::future::ResponseFuture;
use super::push::PushReceiver;
use super::{ConnectionInfo, Endpoint, Protocol};
use crate::error::{Error, Result};
use crate::maint::{Maintained, MaintenanceState};
use crate::request::{Body, Request, Response};
use crate::resp::{Cmd, Value};

/// State shared by a connection's handles and its driver.
pub(crate) struct Shared {
    pub(crate) closed: AtomicBool,
    pub(crate) closed_notify: Notify,
    tls: AtomicBool,
    /// Used by one caller at a time: state commands are allowed (see
    /// `guard.rs`). True during the handshake, which sends them.
    dedicated: AtomicBool,
    /// A handoff moved away from this connection: it only drains, and a
    /// `MOVING` read on it is stale (see `maint::StaleGuard`).
    pub(crate) retired: AtomicBool,
    /// The address dialled (TCP only).
    peer: OnceLock<std::net::SocketAddr>,
    protocol: AtomicU8,
    pushes: Mutex<Option<PushReceiver>>,
    info: OnceLock<ConnectionInfo>,
    endpoint: Endpoint,
    pub(crate) maint: Arc<MaintenanceState>,
    /// What this connection is subscribed to (the driver keeps it).
    pub(crate) subscriptions: Mutex<driver::Subscriptions>,
    /// Stops the driver task: [`Connection::close`].
    abort: OnceLock<tokio::task::AbortHandle>,
}

/// One multiplexed connection to a Redis server: a command service that many
/// tasks share.
///
/// `Connection` is cheap to clone; every clone talks to the same socket,
/// owned by a driver task. Requests from all clones are written in batches
/// (one syscall for whatever is queued) and replies are matched back to
/// their callers in order. `poll_ready` waits while the request queue is
/// full: that is the backpressure.
///
/// Made by a [`Connector`](super::Connector). The driver task ends, and the
/// socket closes, when every clone is dropped and every reply is in.
///
/// ```no_run
/// use redis_layers::{cmd, Connector, Endpoint};
/// use tower::ServiceExt;
///
/// # async fn run() -> Result<(), redis_layers::Error> {
/// let conn = Connector::new().connect(Endpoint::tcp("127.0.0.1", 6379)).await?;
/// conn.send(cmd("SET").arg("k").arg("v")).await?;
/// // Or as a tower service:
/// let reply = conn.clone().oneshot(cmd("GET").arg("k").into()).await?;
/// # Ok(()) }
/// ```
pub struct Connection {
    sender: mpsc::Sender<Message>,
    /// Made on first `poll_ready`: the tower path reserves a queue slot.
    poll_sender: Option<PollSender<Message>>,
    /// True between a successful `poll_ready` and the `call` that uses it.
    reserved: bool,
    shared: Arc<Shared>,
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        // A clone is not ready: its own `poll_ready` reserves its own slot.
        Connection {
            sender: self.sender.clone(),
            poll_sender: None,
            reserved: false,
            shared: self.shared.clone(),
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.shared.endpoint)
            .field("protocol", &self.protocol())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Starts a driver task on `io`, which must already be connected.
    /// No handshake is run: the [`Connector`](super::Connector) does that.
    pub(crate) fn spawn<T>(
        io: T,
        endpoint: Endpoint,
        queue: usize,
        config: DriverConfig,
        maint: Arc<MaintenanceState>,
    ) -> Connection
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, rx) = mpsc::channel(queue.max(1));
        let (push_tx, push_rx) = super::push::channel(config.push_capacity, endpoint.to_string());
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            closed_notify: Notify::new(),
            tls: AtomicBool::new(false),
            dedicated: AtomicBool::new(true),
            retired: AtomicBool::new(false),
            peer: OnceLock::new(),
            protocol: AtomicU8::new(Protocol::Resp3 as u8),
            pushes: Mutex::new(Some(push_rx)),
            info: OnceLock::new(),
            endpoint,
            maint,
            abort: OnceLock::new(),
            subscriptions: Mutex::new(driver::Subscriptions::default()),
        });
        let task = tokio::spawn(Driver::new(io, rx, push_tx, config, shared.clone()));
        let _ = shared.abort.set(task.abort_handle());
        Connection {
            sender,
            poll_sender: None,
            reserved: false,
            shared,
        }
    }

    /// Sends a request and waits for its reply, without the tower
    /// `poll_ready` dance (it waits for queue space itself).
    ///
    /// A single command's error reply comes back as [`Error::Server`].
    pub async fn send(&self, req: impl Into<Request>) -> Result<Response> {
        let req = req.into();
        let rx = match self.prepare(req) {
            Ok(Prepared::Send(msg, rx)) => {
                self.sender.send(msg).await.map_err(|_| Error::Closed)?;
                rx
            }
            Ok(Prepared::Done(resp)) => return Ok(resp),
            Err(e) => return Err(e),
        };
        self.queued(rx).await
    }

    /// Sends one command and returns its reply value.
    pub async fn send_cmd(&self, cmd: Cmd) -> Result<Value> {
        self.send(cmd).await?.into_value()
    }

    fn prepare(&self, req: Request) -> Result<Prepared> {
        // The connection enforces a request's own timeout (the RelaxTimeout
        // layer sets it); `Default` and `Never` mean none here.
        let timeout = match req.timeout() {
            crate::CommandTimeout::After(d) => Some(d),
            _ => None,
        };
        let body = req.into_body();
        let cmds: &[Cmd] = match &body {
            Body::Cmd(c) => std::slice::from_ref(c),
            Body::Pipeline(p) if p.is_empty() => {
                return Ok(Prepared::Done(Response::Pipeline(vec![])))
            }
            Body::Pipeline(p) => p.cmds(),
        };
        for c in cmds {
            self.check(c)?;
        }
        if !self.shared.dedicated.load(Ordering::Relaxed) {
            super::guard::check_shared(cmds)?;
        }
        let (tx, rx) = oneshot::channel();
        Ok(Prepared::Send(Message { body, tx, timeout }, rx))
    }

    /// Refuses commands that would desynchronise a shared connection.
    fn check(&self, c: &Cmd) -> Result<()> {
        if c.arg_count() == 0 {
            return Err(Error::config("empty command"));
        }
        if c.is("CLIENT") {
            let mut a = c.argv().skip(1);
            if a.next().is_some_and(|s| s.eq_ignore_ascii_case(b"REPLY"))
                && a.next().is_some_and(|s| !s.eq_ignore_ascii_case(b"ON"))
            {
                return Err(Error::usage(
                    "CLIENT REPLY OFF/SKIP would leave commands without replies; the transport matches one reply to each command",
                ));
            }
        }
        if c.is("MONITOR") {
            return Err(Error::usage(
                "MONITOR streams replies nobody asked for; the transport matches one reply to each command",
            ));
        }
        if self.protocol() == Protocol::Resp2 && driver::is_subscribe_family(c) {
            return Err(Error::usage(
                "pub/sub on a shared connection needs RESP3; this connection runs RESP2",
            ));
        }
        Ok(())
    }

    /// The receiver of this connection's push frames (pub/sub messages,
    /// invalidations, maintenance notifications, ...), in arrival order.
    ///
    /// The first call takes it; later calls return `None`. Pushes that
    /// arrive before it is taken wait in it, up to its capacity
    /// ([`Connector::push_capacity`](super::Connector::push_capacity));
    /// newer ones are dropped and counted ([`PushReceiver::dropped`]).
    /// Drop it to discard pushes: nothing is kept for a dropped receiver.
    pub fn take_pushes(&self) -> Option<PushReceiver> {
        self.shared.pushes.lock().ok()?.take()
    }

    /// True once the driver has stopped: nothing more can be sent.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Resolves when the connection has closed. The future owns what it
    /// needs, so it can wait in another task without keeping the
    /// connection open.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            let notified = shared.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The commands that subscribe another connection to everything this
    /// one is subscribed to now (channels, patterns, shard channels), as
    /// the server confirmed them. Empty when it has no subscriptions.
    ///
    /// ```no_run
    /// # async fn run(conn: redis_layers::Connection) -> Result<(), redis_layers::Error> {
    /// conn.send(redis_layers::cmd("SUBSCRIBE").arg("news")).await?;
    /// assert_eq!(conn.resubscribe_commands().len(), 1); // SUBSCRIBE news
    /// # Ok(()) }
    /// ```
    pub fn resubscribe_commands(&self) -> Vec<Cmd> {
        self.shared
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore()
    }

    /// Closes the connection now, for every clone: requests not yet
    /// written fail with [`Error::Closed`], written ones still waiting for
    /// their reply with [`Error::Io`] (`ConnectionAborted`), and the socket
    /// closes. To close gracefully, stop sending and wait for the replies
    /// first (the handoff layer does).
    pub fn close(&self) {
        if let Some(abort) = self.shared.abort.get() {
            abort.abort();
        }
    }

    /// The reply to a message just queued. A queue slot reserved before
    /// the driver stopped still takes a message after the driver dropped
    /// its end of the queue (tokio allows it), and nothing would ever
    /// answer it: the caller would wait forever. A stopped driver writes
    /// nothing more, so such a request was not written: [`Error::Closed`],
    /// unless the driver answered it on its way out.
    fn queued(&self, mut rx: oneshot::Receiver<Result<Response>>) -> ResponseFuture {
        if self.sender.is_closed() {
            return match rx.try_recv() {
                Ok(r) => ResponseFuture::ready(r),
                Err(_) => ResponseFuture::failed(Error::Closed),
            };
        }
        ResponseFuture::waiting(rx)
    }

    /// The endpoint this connection was made to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// The protocol negotiated by the handshake.
    pub fn protocol(&self) -> Protocol {
        if self.shared.protocol.load(Ordering::Relaxed) == Protocol::Resp2 as u8 {
            Protocol::Resp2
        } else {
            Protocol::Resp3
        }
    }

    /// What the handshake learned about the server; `None` before it ran.
    pub fn info(&self) -> Option<&ConnectionInfo> {
        self.shared.info.get()
    }

    pub(crate) fn set_protocol(&self, p: Protocol) {
        self.shared.protocol.store(p as u8, Ordering::Relaxed);
    }

    /// Marks the connection (every clone of it) as used by one caller at
    /// a time: commands that change the connection's state (`WATCH`,
    /// `MULTI`, `SELECT`, `CLIENT TRACKING`, ...) are allowed on it from now
    /// on; on a shared one they fail with [`Error::Usage`] (see
    /// [the transport docs](super#shared-connections)).
    /// [`Handoff::lease`](crate::handoff::Handoff::lease) hands out
    /// connections marked so.
    ///
    /// ```no_run
    /// use redis_layers::{cmd, Connector, Endpoint};
    ///
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// let conn = Connector::new().connect(Endpoint::tcp("127.0.0.1", 6379)).await?;
    /// assert!(conn.send(cmd("SELECT").arg(2)).await.is_err()); // shared by default
    /// conn.dedicate();
    /// conn.send(cmd("SELECT").arg(2)).await?;
    /// # Ok(()) }
    /// ```
    pub fn dedicate(&self) {
        self.shared.dedicated.store(true, Ordering::Relaxed);
    }

    /// Marks the connection as retired: a handoff has moved its callers to
    /// another connection, and it only drains what it has in flight. A
    /// `MOVING` read on it afterwards is stale and dropped (see
    /// [`StaleGuard`](crate::maint::StaleGuard)).
    ///
    /// ```no_run
    /// # use redis_layers::{Connector, Endpoint};
    /// # async fn run() -> Result<(), redis_layers::Error> {
    /// let conn = Connector::new().connect(Endpoint::tcp("127.0.0.1", 6379)).await?;
    /// conn.retire();
    /// assert!(conn.is_retired());
    /// # Ok(()) }
    /// ```
    pub fn retire(&self) {
        self.shared.retired.store(true, Ordering::Relaxed);
    }

    /// The address this connection dialled (`None` for a Unix socket): the
    /// node behind a host name when it was made.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.shared.peer.get().copied()
    }

    /// True once [`retire`](Self::retire) was called.
    pub fn is_retired(&self) -> bool {
        self.shared.retired.load(Ordering::Relaxed)
    }

    /// A connection handed out to share: the handshake is done.
    pub(crate) fn share(&self) {
        self.shared.dedicated.store(false, Ordering::Relaxed);
    }

    /// True when the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.load(Ordering::Relaxed)
    }

    pub(crate) fn set_peer(&self, peer: Option<std::net::SocketAddr>) {
        if let Some(p) = peer {
            let _ = self.shared.peer.set(p);
        }
    }

    #[cfg(feature = "tls")]
    pub(crate) fn set_tls(&self) {
        self.shared.tls.store(true, Ordering::Relaxed);
    }

    pub(crate) fn set_info(&self, info: ConnectionInfo) {
        let _ = self.shared.info.set(info);
    }
}

impl Connection {
    /// Gives back a slot reserved by `poll_ready` when nothing is sent.
    fn release(&mut self, reserved: bool) {
        if let (true, Some(ps)) = (reserved, self.poll_sender.as_mut()) {
            ps.abort_send();
        }
    }
}

enum Prepared {
    Send(Message, oneshot::Receiver<Result<Response>>),
    Done(Response),
}

impl Service<Request> for Connection {
    type Response = Response;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        // The sender is cloned once per clone, not per call: a clone and
        // its drop are four atomic operations on the channel's counters,
        // which every caller of the connection shares.
        let sender = &self.sender;
        let ps = self
            .poll_sender
            .get_or_insert_with(|| PollSender::new(sender.clone()));
        let r = ps.poll_reserve(cx).map_err(|_| Error::Closed);
        self.reserved = matches!(r, Poll::Ready(Ok(())));
        r
    }

    fn call(&mut self, req: Request) -> ResponseFuture {
        let reserved = std::mem::take(&mut self.reserved);
        let (msg, rx) = match self.prepare(req) {
            Ok(Prepared::Send(msg, rx)) => (msg, rx),
            Ok(Prepared::Done(resp)) => {
                self.release(reserved);
                return ResponseFuture::done(resp);
            }
            Err(e) => {
                self.release(reserved);
                return ResponseFuture::failed(e);
            }
        };
        if let (true, Some(ps)) = (reserved, self.poll_sender.as_mut()) {
            return match ps.send_item(msg) {
                Ok(()) => self.queued(rx),
                Err(_) => ResponseFuture::failed(Error::Closed),
            };
        }
        // A caller that skipped `poll_ready` still gets a free slot if there
        // is one, and a typed error (not a panic) if there is not.
        match self.sender.try_send(msg) {
            Ok(()) => self.queued(rx),
            Err(mpsc::error::TrySendError::Closed(_)) => ResponseFuture::failed(Error::Closed),
            Err(mpsc::error::TrySendError::Full(_)) => ResponseFuture::failed(Error::config(
                "Connection::call without a successful poll_ready while the queue is full",
            )),
        }
    }
}

impl Maintained for Connection {
    /// The driver keeps each command, and each pipeline, of up to 64 KiB
    /// until its replies, and hands a redirected command back in its
    /// `MOVED`/`ASK` (not within a transaction).
    const RETURNS_REDIRECTED: bool = true;

    fn maintenance(&self) -> &Arc<MaintenanceState> {
        &self.shared.maint
    }
}

impl super::Lifecycle for Connection {
    fn is_closed(&self) -> bool {
        Connection::is_closed(self)
    }

    fn close(&self) {
        Connection::close(self)
    }

    fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        Connection::closed(self)
    }

    fn take_pushes(&self) -> Option<PushReceiver> {
        Connection::take_pushes(self)
    }

    fn resubscribe_commands(&self) -> Vec<Cmd> {
        Connection::resubscribe_commands(self)
    }

    fn is_tls(&self) -> bool {
        Connection::is_tls(self)
    }

    fn dedicate(&self) {
        Connection::dedicate(self)
    }

    fn retire(&self) {
        Connection::retire(self)
    }

    fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        Connection::peer_addr(self)
    }
}

//! The RESP3 transport: dial an [`Endpoint`], run the handshake, and share
//! one socket between many callers through a [`Connection`].
//!
//! - [`Connector`] is a connection maker: `Service<Endpoint, Response =
//!   Connection>`. Layers that need new connections (handoff, cluster) wrap it.
//! - [`Connection`] is a command service: `Service<Request, Response =
//!   Response>`, `Clone`, multiplexed.
//!
//! The connection driver is our own rather than a crate's: it is the hot
//! path, and it must keep several write batches on the wire, route push
//! frames away from the reply queue (see the [transport
//! rules](crate::docs::transport_rules)), and
//! fail every waiting caller at once when the socket dies.
//!
//! # Shared connections
//!
//! A multiplexed [`Connection`] carries the requests of
//! many tasks. A `MULTI` sent alone would queue another task's `SET`
//! (which its `DISCARD` then drops), a `SELECT` would move every caller to
//! another database (and a handoff's new connection would not be moved),
//! `CLIENT TRACKING`, `READONLY`, `HELLO`, `AUTH`, `RESET`, `WATCH`,
//! `CLIENT SETNAME` likewise. So, on a shared connection, these are refused
//! before anything is sent, with [`Error::Usage`](crate::Error::Usage) naming the tool that does
//! the job:
//!
//! | command | instead |
//! |---|---|
//! | `MULTI`, `EXEC`, `DISCARD` alone | the transaction API: `MULTI ... EXEC` as one request ([`Client::transaction`](crate::Client::transaction)) |
//! | `WATCH`, `UNWATCH` | [`Client::watch`](crate::Client::watch), or a dedicated connection |
//! | `SELECT` | [`Connector::database`] |
//! | `CLIENT SETNAME` | [`Connector::client_name`] |
//! | `CLIENT TRACKING` | [`Connector::tracking`]: replayed on every new connection, after a handoff or a reconnect too |
//! | `READONLY`, `READWRITE`, `CLIENT NO-EVICT`, `CLIENT NO-TOUCH` | [`Connector::on_connect`], replayed likewise |
//! | `CLIENT MAINT_NOTIFICATIONS` | [`MaintenanceConfig`](crate::maint::MaintenanceConfig) ([`Connector::maintenance`]) |
//! | `HELLO`, `AUTH` | [`Connector::password`], [`Connector::protocol`] |
//! | `RESET`, `QUIT`, `SYNC`, `PSYNC` | a dedicated connection |
//!
//! (`MONITOR` and `CLIENT REPLY OFF/SKIP` are refused on every connection:
//! the transport matches one reply to each command.)
//!
//! One request is written whole (nothing comes between its commands), so a
//! request that *is* a transaction, `MULTI` first and `EXEC` (or
//! `DISCARD`) last with nothing stateful inside, is allowed, and so are
//! `ASKING` and `CLIENT CACHING`, which apply to the next command only,
//! when that command follows in the same request. Subscriptions are
//! allowed (the connection tracks and restores them).
//!
//! A dedicated connection ([`Handoff::lease`](crate::handoff::Handoff::lease),
//! [`Connection::dedicate`]) allows them all.

mod connection;
mod connector;
pub(crate) mod driver;
mod endpoint;
pub mod future;
mod guard;
mod handshake;
mod push;
pub(crate) mod resolve;
#[cfg(feature = "tls")]
mod tls;

pub use connection::Connection;
pub(crate) use connector::dial_relaxed;
pub use connector::{Connector, Tracking};
pub(crate) use driver::{returns_pipeline, RETURN_MAX};
pub use endpoint::Endpoint;
pub(crate) use push::{channel as push_channel, PushItem, PushSender};
pub use push::{PushReceiver, PUSHES_DROPPED};
pub use resolve::{system_resolver, Resolver};
/// The rustls this crate is built with (feature `tls`), for
/// [`TlsConfig::from_rustls`] and matching on [`TlsError::rustls_error`].
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use rustls;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::{TlsConfig, TlsError};

/// The life of a connection, as the layers that own connections see it
/// (the [handoff](crate::handoff) layer closes a connection it has moved
/// away from, and watches for connections that die).
///
/// ```
/// use redis_layers::transport::Lifecycle;
///
/// fn retire(conn: &impl Lifecycle) {
///     if !conn.is_closed() {
///         conn.close();
///     }
/// }
/// ```
pub trait Lifecycle {
    /// True once the connection has stopped: nothing more can be sent.
    fn is_closed(&self) -> bool;
    /// Closes it now: requests not yet written fail with
    /// [`Error::Closed`](crate::Error::Closed), written ones with an I/O error.
    fn close(&self);
    /// Resolves when the connection has closed, for whatever reason.
    fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static;
    /// Takes the connection's push frames (see
    /// [`Connection::take_pushes`]); `None` when taken already or when the
    /// connection has none.
    fn take_pushes(&self) -> Option<PushReceiver> {
        None
    }
    /// The commands that restore this connection's subscriptions on
    /// another one (see [`Connection::resubscribe_commands`]).
    fn resubscribe_commands(&self) -> Vec<crate::Cmd> {
        Vec::new()
    }
    /// True when the connection runs over TLS (the default target policy
    /// then follows a `MOVING` anywhere, verified against the configured
    /// server name).
    fn is_tls(&self) -> bool {
        false
    }
    /// Marks the connection as used by one caller at a time (see
    /// [`Connection::dedicate`]); leases call it.
    fn dedicate(&self) {}
    /// Marks the connection as retired by a handoff: it only drains, and
    /// a `MOVING` read on it is stale (see [`Connection::retire`]).
    fn retire(&self) {}
    /// The address the connection dialled, if known (see
    /// [`Connection::peer_addr`]); the handoff layer compares it with what
    /// a `MOVING`'s host name resolves to.
    fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

/// The RESP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// RESP2: no push frames, no maps; pub/sub is refused on a shared connection.
    Resp2 = 2,
    /// RESP3 (`HELLO 3`).
    Resp3 = 3,
}

/// What the handshake learned about the server.
///
/// ```
/// use redis_layers::transport::{ConnectionInfo, Protocol};
/// let info = ConnectionInfo::default();
/// assert_eq!(info.protocol, Protocol::Resp3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The negotiated protocol.
    pub protocol: Protocol,
    /// `server` from the `HELLO` reply (`redis`, `valkey`, ...).
    pub server: Option<String>,
    /// `version` from the `HELLO` reply.
    pub version: Option<String>,
    /// The server's id for this client (`CLIENT ID`), from `HELLO`.
    pub client_id: Option<i64>,
    /// `mode` from the `HELLO` reply: `standalone`, `cluster` or `sentinel`.
    pub mode: Option<String>,
    /// `role` from the `HELLO` reply: `master` or `replica`.
    pub role: Option<String>,
    /// Whether this connection receives maintenance notifications.
    pub maintenance: MaintSupport,
}

/// Whether a connection receives maintenance notifications: the observed
/// support, kept apart from the configured [`Mode`](crate::maint::Mode).
///
/// ```
/// use redis_layers::transport::MaintSupport;
/// assert!(!MaintSupport::Disabled.is_enabled());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MaintSupport {
    /// Not asked for (mode `Disabled`, or a RESP2 connection).
    #[default]
    Disabled,
    /// Opted in with this endpoint type.
    Enabled(crate::maint::ResolvedEndpointType),
    /// Asked for in mode `Auto`; the server refused (its error text).
    Unsupported(String),
}

impl MaintSupport {
    /// True when notifications are on.
    pub fn is_enabled(&self) -> bool {
        matches!(self, MaintSupport::Enabled(_))
    }
}

impl Default for ConnectionInfo {
    fn default() -> Self {
        ConnectionInfo {
            protocol: Protocol::Resp3,
            server: None,
            version: None,
            client_id: None,
            mode: None,
            role: None,
            maintenance: MaintSupport::Disabled,
        }
    }
}

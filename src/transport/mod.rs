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
//! frames away from the reply queue (see `spec/resp3-transport.md`), and
//! fail every waiting caller at once when the socket dies.

mod connection;
mod connector;
pub(crate) mod driver;
mod endpoint;
pub mod future;
mod handshake;
mod push;
#[cfg(feature = "tls")]
mod tls;

pub use connection::Connection;
pub(crate) use connector::dial_relaxed;
pub use connector::Connector;
pub(crate) use driver::{returns_pipeline, RETURN_MAX};
pub use endpoint::Endpoint;
pub(crate) use push::{channel as push_channel, PushItem, PushSender};
pub use push::{PushReceiver, PUSHES_DROPPED};
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

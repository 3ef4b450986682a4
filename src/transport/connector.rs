use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tower_service::Service;

use super::driver::DriverConfig;
use super::{handshake, Connection, Endpoint, Protocol};
use crate::error::{Error, Result};
use crate::resp::{Cmd, Limits};

/// Makes [`Connection`]s: dials an [`Endpoint`] (TCP or Unix socket) within
/// a connect timeout and runs the handshake (`HELLO 3` with `AUTH` and
/// `SETNAME`, then `SELECT`), falling back to RESP2 when the server refuses
/// `HELLO 3`.
///
/// A `Connector` is a connection maker: `Service<Endpoint, Response =
/// Connection>`. It is cheap to clone.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_layers::{cmd, Connector, Endpoint};
///
/// # async fn run() -> Result<(), redis_layers::Error> {
/// let connector = Connector::new()
///     .password("s3cret")
///     .client_name("billing")
///     .database(2)
///     .connect_timeout(Duration::from_secs(2));
/// let conn = connector.connect(Endpoint::tcp("127.0.0.1", 6379)).await?;
/// conn.send(cmd("PING")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connector {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) connect_timeout: Duration,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) client_name: Option<String>,
    pub(crate) database: u32,
    pub(crate) protocol: Protocol,
    pub(crate) limits: Limits,
    pub(crate) queue_size: usize,
    pub(crate) max_write_buffer: usize,
    pub(crate) on_connect: Vec<Cmd>,
}

impl Default for Connector {
    fn default() -> Self {
        Connector {
            config: Arc::new(Config {
                connect_timeout: Duration::from_secs(5),
                username: None,
                password: None,
                client_name: None,
                database: 0,
                protocol: Protocol::Resp3,
                limits: Limits::default(),
                queue_size: 1024,
                max_write_buffer: 64 * 1024,
                on_connect: Vec::new(),
            }),
        }
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("Connector")
            .field("connect_timeout", &c.connect_timeout)
            .field("username", &c.username)
            .field("password", &c.password.as_ref().map(|_| "<redacted>"))
            .field("client_name", &c.client_name)
            .field("database", &c.database)
            .field("protocol", &c.protocol)
            .field("queue_size", &c.queue_size)
            .field("max_write_buffer", &c.max_write_buffer)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector with the defaults: 5 s connect timeout, RESP3 preferred,
    /// database 0, no authentication, a queue of 1024 requests, 64 KiB write
    /// batches.
    pub fn new() -> Self {
        Self::default()
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Bound on dialling plus the handshake (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().connect_timeout = timeout;
        self
    }

    /// Authenticate with this password (as `default`, or as the user set
    /// with [`Connector::username`]).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.config_mut().password = Some(password.into());
        self
    }

    /// The ACL user to authenticate as (needs a password).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.config_mut().username = Some(username.into());
        self
    }

    /// `CLIENT SETNAME` for every connection.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.config_mut().client_name = Some(name.into());
        self
    }

    /// The database to `SELECT` (default 0: no `SELECT` sent).
    pub fn database(mut self, db: u32) -> Self {
        self.config_mut().database = db;
        self
    }

    /// The protocol to ask for. `Resp3` (the default) falls back to RESP2
    /// when the server refuses `HELLO 3`; `Resp2` never tries RESP3.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.config_mut().protocol = protocol;
        self
    }

    /// Decoder limits for replies.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config_mut().limits = limits;
        self
    }

    /// How many requests may wait for the driver before `poll_ready` waits
    /// (default 1024).
    pub fn queue_size(mut self, n: usize) -> Self {
        self.config_mut().queue_size = n.max(1);
        self
    }

    /// Largest write batch in bytes before the driver writes it (default
    /// 64 KiB). A single larger request is still written whole.
    pub fn max_write_buffer(mut self, bytes: usize) -> Self {
        self.config_mut().max_write_buffer = bytes.max(1);
        self
    }

    /// A command to run on every new connection after the handshake (e.g.
    /// `CLIENT TRACKING ON`). An error reply fails the connection.
    pub fn on_connect(mut self, cmd: Cmd) -> Self {
        self.config_mut().on_connect.push(cmd);
        self
    }

    /// Dials `endpoint` and runs the handshake.
    ///
    /// Errors: [`Error::Io`] (refused, unreachable, timed out),
    /// [`Error::Auth`] (bad credentials), [`Error::Server`] (a handshake
    /// command refused), [`Error::Config`] (e.g. a username without a password).
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Connection> {
        let config = self.config.clone();
        let timeout = config.connect_timeout;
        let what = endpoint.to_string();
        match tokio::time::timeout(timeout, connect(config, endpoint)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {what} took longer than {timeout:?}"),
            )
            .into()),
        }
    }
}

async fn connect(config: Arc<Config>, endpoint: Endpoint) -> Result<Connection> {
    if config.username.is_some() && config.password.is_none() {
        return Err(Error::config("a username needs a password"));
    }
    let driver = DriverConfig {
        limits: config.limits,
        max_write_buffer: config.max_write_buffer,
    };
    let conn = match &endpoint {
        Endpoint::Tcp { host, port } => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            // Batches are coalesced by the driver; Nagle would only add latency.
            stream.set_nodelay(true)?;
            Connection::spawn(stream, endpoint.clone(), config.queue_size, driver)
        }
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Connection::spawn(stream, endpoint.clone(), config.queue_size, driver)
        }
        #[cfg(not(unix))]
        Endpoint::Unix(_) => return Err(Error::config("Unix sockets need a Unix platform")),
    };
    let info = handshake::run(&conn, &config).await?;
    conn.set_info(info);
    Ok(conn)
}

impl Service<Endpoint> for Connector {
    type Response = Connection;
    type Error = Error;
    type Future = super::future::ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, endpoint: Endpoint) -> Self::Future {
        let this = self.clone();
        super::future::ConnectFuture::new(Box::pin(async move { this.connect(endpoint).await }))
    }
}

pub(crate) type BoxConnect = Pin<Box<dyn Future<Output = Result<Connection>> + Send>>;

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
use crate::maint::{MaintenanceConfig, MaintenanceState, Resolved};
use crate::resp::{Cmd, Limits};
use std::collections::HashMap;
use std::sync::{Mutex, Weak};

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
    /// One maintenance state per endpoint, shared by every connection this
    /// connector (and its clones) makes there.
    states: Arc<Mutex<HashMap<Endpoint, Weak<MaintenanceState>>>>,
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
    pub(crate) maint: Resolved,
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
                maint: Resolved::default(),
            }),
            states: Arc::default(),
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

    /// A connector and endpoint from a Redis URL:
    /// `redis://[[username]:password@]host[:port][/db]` (port 6379 when
    /// omitted), `unix:///path/to/redis.sock[?db=N]` or
    /// `redis+unix:///path[?db=N]`. Credentials may be percent-encoded.
    ///
    /// `rediss://` (TLS) is refused with [`Error::Config`]: this crate does
    /// not speak TLS yet, and silently connecting in plain text would be worse.
    ///
    /// ```
    /// use redis_layers::{Connector, Endpoint};
    ///
    /// let (connector, endpoint) = Connector::from_url("redis://:s%40cret@cache.local:6380/2")?;
    /// assert_eq!(endpoint, Endpoint::tcp("cache.local", 6380));
    /// assert!(Connector::from_url("rediss://cache.local").is_err());
    /// # Ok::<(), redis_layers::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<(Connector, Endpoint)> {
        let bad = |why: &str| Error::config(format!("invalid Redis URL: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let mut connector = Connector::new();
        let (location, query) = match rest.split_once('?') {
            Some((l, q)) => (l, Some(q)),
            None => (rest, None),
        };
        let mut db = None;
        let endpoint = match scheme.to_ascii_lowercase().as_str() {
            "redis" => {
                let (auth, hostpart) = match location.rsplit_once('@') {
                    Some((a, h)) => (Some(a), h),
                    None => (None, location),
                };
                if let Some(auth) = auth {
                    let (user, pass) = match auth.split_once(':') {
                        Some((u, p)) => (u, Some(p)),
                        None => (auth, None),
                    };
                    match (percent_decode(user)?, pass.map(percent_decode).transpose()?) {
                        (u, Some(p)) => {
                            if !u.is_empty() {
                                connector = connector.username(u);
                            }
                            connector = connector.password(p);
                        }
                        // `redis://secret@host`: a lone field is a password.
                        (u, None) if !u.is_empty() => connector = connector.password(u),
                        _ => {}
                    }
                }
                let (hostport, path) = match hostpart.split_once('/') {
                    Some((h, p)) => (h, p),
                    None => (hostpart, ""),
                };
                if !path.is_empty() {
                    db = Some(path);
                }
                if hostport.is_empty() {
                    return Err(bad("no host"));
                }
                let has_port = match hostport.rfind(':') {
                    Some(i) => !hostport[i..].contains(']'),
                    None => false,
                };
                if has_port {
                    hostport.parse()?
                } else {
                    Endpoint::tcp(hostport, 6379)
                }
            }
            "unix" | "redis+unix" => {
                if location.is_empty() {
                    return Err(bad("no socket path"));
                }
                Endpoint::unix(location)
            }
            "rediss" | "valkeys" => return Err(bad("TLS (rediss://) is not supported yet")),
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("db", v)) => db = Some(v),
                Some(("protocol", "2" | "resp2")) => {
                    connector = connector.protocol(Protocol::Resp2)
                }
                Some(("protocol", "3" | "resp3")) => {
                    connector = connector.protocol(Protocol::Resp3)
                }
                _ => return Err(bad(&format!("unknown parameter {pair:?}"))),
            }
        }
        if let Some(db) = db {
            let n = db
                .parse()
                .map_err(|_| bad(&format!("database {db:?} is not a number")))?;
            connector = connector.database(n);
        }
        Ok((connector, endpoint))
    }

    /// Maintenance notifications: the opt-in handshake's mode and endpoint
    /// type, and the relaxation settings of the endpoints' states
    /// (default: mode `Auto`). Checked now: an invalid value is an
    /// [`Error::Config`] naming the field.
    ///
    /// ```
    /// use redis_layers::maint::{MaintenanceConfig, Mode};
    /// use redis_layers::Connector;
    ///
    /// let c = Connector::new().maintenance(MaintenanceConfig::default().mode(Mode::Enabled))?;
    /// assert!(Connector::new().maintenance(MaintenanceConfig::default().max_handoff_retries(0)).is_err());
    /// # Ok::<(), redis_layers::Error>(())
    /// ```
    pub fn maintenance(mut self, config: MaintenanceConfig) -> Result<Self> {
        self.config_mut().maint = config.validate()?;
        Ok(self)
    }

    /// The maintenance state of `endpoint`, shared by every connection this
    /// connector makes there (made on first use).
    pub fn maintenance_state(&self, endpoint: &Endpoint) -> Arc<MaintenanceState> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = states.get(endpoint).and_then(Weak::upgrade) {
            return s;
        }
        states.retain(|_, w| w.strong_count() > 0);
        let s = Arc::new(MaintenanceState::from_config(&self.config.maint));
        states.insert(endpoint.clone(), Arc::downgrade(&s));
        s
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
        let maint = self.maintenance_state(&endpoint);
        // A handshake runs relaxed after a handoff and while the endpoint
        // is under maintenance: servers answer slowly then.
        let relaxed = DIAL_RELAXED
            .try_with(|d| *d)
            .ok()
            .into_iter()
            .chain(maint.relaxed_timeout())
            .max();
        let timeout = relaxed.map_or(config.connect_timeout, |r| r.max(config.connect_timeout));
        let what = endpoint.to_string();
        match tokio::time::timeout(timeout, connect(config, endpoint, maint)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {what} took longer than {timeout:?}"),
            )
            .into()),
        }
    }
}

tokio::task_local! {
    /// Set by the handoff layer around a dial: the relaxed timeout the
    /// handshake may take (the new endpoint's own state is not relaxed yet).
    static DIAL_RELAXED: Duration;
}

/// Runs `fut` (a dial through a [`Connector`]) with its connect and
/// handshake timeout raised to at least `relaxed`.
pub(crate) async fn dial_relaxed<F: std::future::Future>(relaxed: Duration, fut: F) -> F::Output {
    DIAL_RELAXED.scope(relaxed, fut).await
}

async fn connect(
    config: Arc<Config>,
    endpoint: Endpoint,
    maint: Arc<MaintenanceState>,
) -> Result<Connection> {
    if config.username.is_some() && config.password.is_none() {
        return Err(Error::config("a username needs a password"));
    }
    let driver = DriverConfig {
        limits: config.limits,
        max_write_buffer: config.max_write_buffer,
        maint_routing: config.maint.mode() != crate::maint::Mode::Disabled,
    };
    let conn = match &endpoint {
        Endpoint::Tcp { host, port } => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            // Batches are coalesced by the driver; Nagle would only add latency.
            stream.set_nodelay(true)?;
            Connection::spawn(stream, endpoint.clone(), config.queue_size, driver, maint)
        }
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Connection::spawn(stream, endpoint.clone(), config.queue_size, driver, maint)
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

fn percent_decode(s: &str) -> Result<String> {
    let bad = || Error::config(format!("invalid percent-encoding in Redis URL: {s:?}"));
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (c, e) = Connector::from_url("redis://localhost").unwrap();
        assert_eq!(e, Endpoint::tcp("localhost", 6379));
        assert_eq!(c.config.database, 0);
        assert!(c.config.password.is_none());

        let (c, e) = Connector::from_url("redis://alice:p%3Ass@[::1]:7000/3?protocol=2").unwrap();
        assert_eq!(e, Endpoint::tcp("::1", 7000));
        assert_eq!(c.config.username.as_deref(), Some("alice"));
        assert_eq!(c.config.password.as_deref(), Some("p:ss"));
        assert_eq!(c.config.database, 3);
        assert_eq!(c.config.protocol, Protocol::Resp2);

        let (c, _) = Connector::from_url("redis://:secret@h:1").unwrap();
        assert!(c.config.username.is_none());
        assert_eq!(c.config.password.as_deref(), Some("secret"));

        let (c, e) = Connector::from_url("unix:///run/redis.sock?db=5").unwrap();
        assert_eq!(e, Endpoint::unix("/run/redis.sock"));
        assert_eq!(c.config.database, 5);

        for bad in [
            "localhost:6379",
            "rediss://h",
            "http://h",
            "redis://",
            "redis://h/x",
            "redis://h:99999",
            "redis://h?foo=1",
            "redis://a:%zz@h",
            "unix://",
        ] {
            assert!(
                matches!(Connector::from_url(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
    }
}

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
use crate::maint::{
    MaintStatus, Maintained, MaintenanceConfig, MaintenanceState, OptIn, Resolved,
    ResolvedEndpointType,
};
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
    /// Endpoints whose server refused the maintenance opt-in, and the
    /// type sent: a state lives only as long as a connection uses it, the
    /// refusal as long as the connector (see `Mode::Auto`).
    refusals: Arc<Mutex<HashMap<Endpoint, Refusal>>>,
}

/// A refused opt-in, and the endpoint type it sent.
type Refusal = (OptIn, Option<ResolvedEndpointType>);

/// How many refusals a connector remembers; beyond, one is forgotten (its
/// endpoint is asked once more).
const MAX_REFUSALS: usize = 4096;

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
    pub(crate) push_capacity: usize,
    pub(crate) max_write_buffer: usize,
    pub(crate) on_connect: Vec<Cmd>,
    pub(crate) maint: Resolved,
    /// TLS for TCP endpoints (`None`: plain text).
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<super::tls::TlsConnector>,
    /// Host names to addresses (`None`: the system's).
    pub(crate) resolver: Option<super::Resolver>,
}

impl Config {
    /// Whether a connection to `endpoint` speaks TLS (Unix sockets never do).
    pub(crate) fn tls_on(&self, endpoint: &Endpoint) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some() && matches!(endpoint, Endpoint::Tcp { .. });
        #[cfg(not(feature = "tls"))]
        {
            let _ = endpoint;
            false
        }
    }
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
                push_capacity: super::PushReceiver::DEFAULT_CAPACITY,
                max_write_buffer: 64 * 1024,
                on_connect: Vec::new(),
                maint: Resolved::default(),
                #[cfg(feature = "tls")]
                tls: None,
                resolver: None,
            }),
            states: Arc::default(),
            refusals: Arc::default(),
        }
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password is never printed, nor anything derived from it.
        let c = &self.config;
        let mut d = f.debug_struct("Connector");
        d.field("connect_timeout", &c.connect_timeout)
            .field("username", &c.username)
            .field("password", &c.password.as_ref().map(|_| "***"))
            .field("client_name", &c.client_name)
            .field("database", &c.database)
            .field("protocol", &c.protocol)
            .field("queue_size", &c.queue_size)
            .field("push_capacity", &c.push_capacity)
            .field("max_write_buffer", &c.max_write_buffer);
        #[cfg(feature = "tls")]
        d.field("tls", &c.tls);
        d.finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector with the defaults: 5 s connect timeout, RESP3 preferred,
    /// database 0, no authentication, a queue of 1024 requests, 64 KiB write
    /// batches, up to 1024 unread push frames kept per connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// A connector and endpoint from a Redis URL.
    ///
    /// - `redis://[[username]:password@]host[:port][/db][?params]`: TCP,
    ///   port 6379 when omitted; IPv6 hosts in brackets.
    /// - `rediss://...` (same form): TLS (feature `tls`), verified against
    ///   Mozilla's roots and the URL's host (an IP address is checked
    ///   against the certificate's IP SANs). For a private CA, replace the
    ///   TLS settings with `Connector::tls` afterwards. Without the
    ///   feature, `rediss://` is an [`Error::Config`]: connecting in plain
    ///   text instead would be worse.
    /// - `unix:///path/to/redis.sock[?params]` or `redis+unix:///path[?params]`.
    /// - `valkey://` and `valkeys://` are the same as `redis://` and `rediss://`.
    ///
    /// Parameters: `db=N` (the database; also the `/db` path),
    /// `protocol=2|3` (also `resp2`/`resp3`; see [`Connector::protocol`])
    /// and `client_name=NAME` (`CLIENT SETNAME`). The user name, password
    /// and parameter values may be percent-encoded (a password with `@`,
    /// `:`, `/` or `?` must be).
    ///
    /// Errors are [`Error::Config`]; their messages never quote the URL,
    /// its credentials or a parameter's value, and the connector's `Debug`
    /// shows the password as `***`.
    ///
    /// ```
    /// use redis_layers::{Connector, Endpoint};
    ///
    /// let (connector, endpoint) =
    ///     Connector::from_url("redis://:s%40cret@cache.local:6380/2?client_name=billing")?;
    /// assert_eq!(endpoint, Endpoint::tcp("cache.local", 6380));
    /// assert!(!format!("{connector:?}").contains("s@cret"));
    /// # Ok::<(), redis_layers::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<(Connector, Endpoint)> {
        // Never quote the input: it may hold the password.
        let bad = |why: &str| Error::config(format!("invalid Redis URL: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("no scheme (expected redis://, rediss:// or unix://)"))?;
        let mut connector = Connector::new();
        let (location, query) = match rest.split_once('?') {
            Some((l, q)) => (l, Some(q)),
            None => (rest, None),
        };
        let mut db = None;
        let scheme = scheme.to_ascii_lowercase();
        let tls = matches!(scheme.as_str(), "rediss" | "valkeys");
        let endpoint = match scheme.as_str() {
            "redis" | "rediss" | "valkey" | "valkeys" => {
                let (auth, hostpart) = match location.rsplit_once('@') {
                    Some((a, h)) => (Some(a), h),
                    None => (None, location),
                };
                if let Some(auth) = auth {
                    let (user, pass) = match auth.split_once(':') {
                        Some((u, p)) => (u, Some(p)),
                        None => (auth, None),
                    };
                    let user = percent_decode(user, "user name")?;
                    match (
                        user,
                        pass.map(|p| percent_decode(p, "password")).transpose()?,
                    ) {
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
                    db = Some(path.to_owned());
                }
                if hostport.is_empty() {
                    return Err(bad("no host"));
                }
                let has_port = match hostport.rfind(':') {
                    Some(i) => !hostport[i..].contains(']'),
                    None => false,
                };
                if has_port {
                    hostport.parse().map_err(|_| {
                        let port = &hostport[hostport.rfind(':').unwrap_or(0) + 1..];
                        if port.parse::<u16>().is_err() {
                            bad(&format!(
                                "the port {port:?} is not a number from 0 to 65535"
                            ))
                        } else {
                            bad("malformed host (an IPv6 address goes in brackets: [::1]:6379)")
                        }
                    })?
                } else if hostport.contains(['[', ']']) && !hostport.starts_with('[') {
                    return Err(bad("malformed host"));
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
            other
                if other
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
            {
                return Err(bad(&format!("unknown scheme {other:?}")))
            }
            _ => return Err(bad("unknown scheme")),
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            // Without `=` it is not a parameter, and may be a piece of a
            // password with an unencoded `?`: not quoted either.
            let (key, value) = pair.split_once('=').unwrap_or(("", pair));
            match key {
                "db" => db = Some(percent_decode(value, "db")?),
                "protocol" => match value {
                    "2" | "resp2" => connector = connector.protocol(Protocol::Resp2),
                    "3" | "resp3" => connector = connector.protocol(Protocol::Resp3),
                    _ => return Err(bad("protocol must be 2 or 3")),
                },
                "client_name" => {
                    let name = percent_decode(value, "client_name")?;
                    if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
                        return Err(bad("client_name must be non-empty, without spaces"));
                    }
                    connector = connector.client_name(name);
                }
                // Not quoted: with an unencoded `?` in a password, the
                // "parameter" may be a piece of the password.
                k if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                    return Err(bad(
                        "unknown query parameter (known: db, protocol, client_name)",
                    ))
                }
                _ => return Err(bad("malformed query")),
            }
        }
        if let Some(db) = db {
            let n = db
                .parse()
                .map_err(|_| bad("the database is not a number"))?;
            connector = connector.database(n);
        }
        if tls {
            #[cfg(feature = "tls")]
            {
                connector = connector.tls(super::TlsConfig::new())?;
            }
            #[cfg(not(feature = "tls"))]
            return Err(Error::config(
                "rediss:// needs TLS: build redis-layers with the `tls` feature",
            ));
        }
        Ok((connector, endpoint))
    }

    /// Speaks TLS to every TCP endpoint this connector dials (Unix sockets
    /// stay plain: Redis has no TLS on them), handoff targets and cluster
    /// nodes included, each verified against its own host name unless
    /// [`TlsConfig::server_name`](super::TlsConfig::server_name) says
    /// otherwise. Feature `tls`.
    ///
    /// A failed handshake (unknown CA, a certificate for another name, an
    /// alert from the server) fails the connect with [`Error::Io`] whose
    /// inner error is a [`TlsError`](super::TlsError): see
    /// [`Error::tls_error`].
    ///
    /// Errors: [`Error::Config`] when the roots or the client certificate
    /// and key cannot be used.
    ///
    /// ```
    /// use redis_layers::{Connector, TlsConfig};
    /// let connector = Connector::new().tls(TlsConfig::new())?;
    /// # Ok::<(), redis_layers::Error>(())
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: super::TlsConfig) -> Result<Self> {
        self.config_mut().tls = Some(tls.build()?);
        Ok(self)
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
    /// let err = Connector::new().maintenance(MaintenanceConfig::default().max_handoff_retries(0));
    /// assert_eq!(err.unwrap_err().field(), "max_handoff_retries");
    /// # Ok::<(), redis_layers::Error>(())
    /// ```
    pub fn maintenance(
        mut self,
        config: MaintenanceConfig,
    ) -> std::result::Result<Self, crate::maint::ConfigError> {
        self.config_mut().maint = config.validate()?;
        Ok(self)
    }

    /// The maintenance state of `endpoint`, shared by every connection this
    /// connector makes there (made on first use). A state lives as long as
    /// something uses it (a connection, a layer); a refused opt-in is
    /// remembered as long as the connector, and a new state starts with it.
    pub fn maintenance_state(&self, endpoint: &Endpoint) -> Arc<MaintenanceState> {
        let mut states = crate::lock(&self.states);
        if let Some(s) = states.get(endpoint).and_then(Weak::upgrade) {
            return s;
        }
        states.retain(|_, w| w.strong_count() > 0);
        let s = Arc::new(MaintenanceState::from_config(&self.config.maint));
        if let Some((opt_in, sent)) = crate::lock(&self.refusals).get(endpoint) {
            s.set_opt_in(opt_in.clone(), *sent);
        }
        states.insert(endpoint.clone(), Arc::downgrade(&s));
        s
    }

    /// The [`MaintStatus`] of every endpoint this connector (or a clone)
    /// has a maintenance state for, and of those whose server refused the
    /// opt-in, sorted by endpoint.
    ///
    /// ```
    /// use redis_layers::maint::OptIn;
    /// use redis_layers::{Connector, Endpoint};
    ///
    /// let connector = Connector::new();
    /// let state = connector.maintenance_state(&Endpoint::tcp("10.0.0.5", 6379));
    /// let all = connector.maintenance_status();
    /// assert_eq!(all.len(), 1);
    /// assert_eq!(all[0].1.opt_in, OptIn::NotProbed);
    /// # drop(state);
    /// ```
    pub fn maintenance_status(&self) -> Vec<(Endpoint, MaintStatus)> {
        let mut endpoints: Vec<Endpoint> = crate::lock(&self.states)
            .iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .map(|(e, _)| e.clone())
            .collect();
        endpoints.extend(crate::lock(&self.refusals).keys().cloned());
        endpoints.sort_by_key(|e| e.to_string());
        endpoints.dedup();
        endpoints
            .into_iter()
            .map(|e| {
                let status = self.maintenance_state(&e).status();
                (e, status)
            })
            .collect()
    }

    /// Keeps a refused opt-in beyond the state's life; forgets it once the
    /// endpoint accepts.
    fn remember_opt_in(&self, endpoint: &Endpoint, state: &MaintenanceState) {
        let mut refusals = crate::lock(&self.refusals);
        match state.opt_in() {
            Some(r @ (OptIn::Refused { .. }, _)) => {
                if refusals.len() >= MAX_REFUSALS && !refusals.contains_key(endpoint) {
                    let forget = refusals.keys().next().cloned();
                    forget.map(|e| refusals.remove(&e));
                }
                refusals.insert(endpoint.clone(), r);
            }
            Some((OptIn::Enabled { .. }, _)) => {
                refusals.remove(endpoint);
            }
            _ => {}
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Resolves host names with `resolver` rather than the system's
    /// ([`tokio::net::lookup_host`]); the addresses are tried in the order
    /// given. Give the same one to
    /// [`HandoffLayer::resolver`](crate::handoff::HandoffLayer::resolver),
    /// which uses it to wait for DNS to follow a `MOVING`.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use redis_layers::transport::Resolver;
    /// use redis_layers::Connector;
    ///
    /// let dns = Resolver::new(tower::service_fn(|_name: String| async {
    ///     Ok::<_, std::io::Error>(vec!["127.0.0.1:6379".parse::<SocketAddr>().unwrap()])
    /// }));
    /// let connector = Connector::new().resolver(dns);
    /// # let _ = connector;
    /// ```
    pub fn resolver(mut self, resolver: super::Resolver) -> Self {
        self.config_mut().resolver = Some(resolver);
        self
    }

    /// Bound on dialling plus the handshake (default 5 s; at most
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT), a longer one is clamped to it).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().connect_timeout = crate::time::clamp(timeout);
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

    /// How many push frames (pub/sub messages, invalidations, ...) a
    /// connection keeps for its [`PushReceiver`](super::PushReceiver)
    /// before it drops newer ones (default
    /// [`PushReceiver::DEFAULT_CAPACITY`](super::PushReceiver::DEFAULT_CAPACITY),
    /// 1024; at least 1). The connection never waits for the reader:
    /// frames beyond this are dropped and counted
    /// ([`PushReceiver::dropped`](super::PushReceiver::dropped)), so a
    /// server that pushes faster than they are read, or a receiver nobody
    /// reads, costs at most this many frames of memory.
    ///
    /// ```
    /// use redis_layers::Connector;
    /// let connector = Connector::new().push_capacity(16_384);
    /// ```
    pub fn push_capacity(mut self, frames: usize) -> Self {
        self.config_mut().push_capacity = frames.max(1);
        self
    }

    /// Largest write batch in bytes before the driver writes it (default
    /// 64 KiB). A single larger request is still written whole.
    pub fn max_write_buffer(mut self, bytes: usize) -> Self {
        self.config_mut().max_write_buffer = bytes.max(1);
        self
    }

    /// A command to run on every new connection after the handshake (e.g.
    /// `READONLY`, `CLIENT NO-EVICT ON`): replayed on each new connection,
    /// after a handoff or a reconnect too, which a command sent on a shared
    /// connection would not be (and there it is refused, see
    /// [the transport docs](super#shared-connections)). An error reply
    /// fails the connection.
    pub fn on_connect(mut self, cmd: Cmd) -> Self {
        self.config_mut().on_connect.push(cmd);
        self
    }

    /// Client-side caching: `CLIENT TRACKING ON` with `tracking`'s options
    /// on every new connection (after a handoff or a reconnect too). The
    /// invalidations arrive as push frames (RESP3), on the connection's
    /// [`PushReceiver`](super::PushReceiver) or a
    /// [`Handoff`](crate::handoff::Handoff)'s merged stream.
    ///
    /// ```
    /// use redis_layers::transport::Tracking;
    /// use redis_layers::Connector;
    ///
    /// let connector = Connector::new().tracking(Tracking::bcast().prefix("user:").noloop());
    /// ```
    pub fn tracking(self, tracking: Tracking) -> Self {
        self.on_connect(tracking.to_cmd())
    }

    /// Dials `endpoint` and runs the handshake.
    ///
    /// Errors: [`Error::Io`] (refused, unreachable, timed out; with TLS, a
    /// refused handshake too, see `Connector::tls`),
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
        let at = endpoint.clone();
        let r = tokio::time::timeout(timeout, connect(config, endpoint, maint)).await;
        if let Ok(Ok(conn)) = &r {
            self.remember_opt_in(&at, conn.maintenance());
        }
        match r {
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
        push_capacity: config.push_capacity,
    };
    let conn = match &endpoint {
        Endpoint::Tcp { host, port, .. } => {
            let stream = dial_tcp(&config, host, *port)
                .await
                .map_err(|e| naming(&endpoint, e))?;
            let peer = stream.peer_addr().ok();
            // Batches are coalesced by the driver; Nagle would only add latency.
            stream.set_nodelay(true)?;
            // The driver is generic over the stream: a TLS connection gets
            // its own copy, and the plain TCP one pays nothing for it.
            #[cfg(feature = "tls")]
            if let Some(tls) = &config.tls {
                let name = endpoint.tls_name().unwrap_or(host);
                let stream = tls.connect(name, host, *port, stream).await?;
                let conn =
                    Connection::spawn(stream, endpoint.clone(), config.queue_size, driver, maint);
                conn.set_tls();
                conn.set_peer(peer);
                return finish(conn, &config).await;
            }
            let conn =
                Connection::spawn(stream, endpoint.clone(), config.queue_size, driver, maint);
            conn.set_peer(peer);
            conn
        }
        #[cfg(unix)]
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| naming(&endpoint, e))?;
            Connection::spawn(stream, endpoint.clone(), config.queue_size, driver, maint)
        }
        #[cfg(not(unix))]
        Endpoint::Unix(_) => return Err(Error::config("Unix sockets need a Unix platform")),
    };
    finish(conn, &config).await
}

/// Dials `host:port`: an IP literal, or a name through the configured
/// resolver (each address in turn; the last failure is the error). Without
/// a resolver, tokio's own lookup and connect.
async fn dial_tcp(config: &Config, host: &str, port: u16) -> std::io::Result<TcpStream> {
    let Some(resolver) = config
        .resolver
        .as_ref()
        .filter(|_| !super::resolve::is_ip_literal(host))
    else {
        return TcpStream::connect((host, port)).await;
    };
    let mut last = None;
    for addr in super::resolve::resolve(Some(resolver), host, port).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound)))
}

/// A dial error that names where it dialled (same kind, so retry
/// classification is unchanged): "connecting to 10.0.0.5:6379: Connection
/// refused".
fn naming(endpoint: &Endpoint, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("connecting to {endpoint}: {e}"))
}

/// Runs the handshake on a new connection.
async fn finish(conn: Connection, config: &Config) -> Result<Connection> {
    let info = handshake::run(&conn, config).await?;
    conn.set_info(info);
    conn.share();
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

/// Decodes `%XX` escapes; the error names `what`, never the text (it may
/// be a password).
fn percent_decode(s: &str, what: &str) -> Result<String> {
    let bad = || {
        Error::config(format!(
            "invalid percent-encoding in the Redis URL's {what}"
        ))
    };
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

        let (c, e) =
            Connector::from_url("unix:///tmp/r.sock?client_name=job%2D7&protocol=resp2").unwrap();
        assert_eq!(e, Endpoint::unix("/tmp/r.sock"));
        assert_eq!(c.config.client_name.as_deref(), Some("job-7"));
        assert_eq!(c.config.protocol, Protocol::Resp2);

        let rediss = Connector::from_url("rediss://:pw@cache.local:6380/1");
        #[cfg(feature = "tls")]
        {
            let (c, e) = rediss.unwrap();
            assert_eq!(e, Endpoint::tcp("cache.local", 6380));
            assert!(c.config.tls_on(&e));
            assert!(!c.config.tls_on(&Endpoint::unix("/tmp/r.sock")));
            assert_eq!(c.config.database, 1);
        }
        #[cfg(not(feature = "tls"))]
        assert!(
            matches!(&rediss, Err(Error::Config(m)) if m.contains("`tls` feature")),
            "{rediss:?}"
        );

        for bad in [
            "localhost:6379",
            "http://h",
            "redis://",
            "redis://h/x",
            "redis://h:99999",
            "redis://h?foo=1",
            "redis://a:%zz@h",
            "redis://h?protocol=4",
            "redis://h?client_name=a%20b",
            "redis://h?db=x",
            "unix://",
        ] {
            assert!(
                matches!(Connector::from_url(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
    }

    /// No error message and no `Debug` output shows the password, however
    /// the URL around it is broken.
    #[test]
    fn secrets_are_never_printed() {
        const SECRET: &str = "s3cretPW";
        let urls = [
            "redis://alice:s3cretPW@h:1/2",
            "redis://:s3cretPW@h",
            "redis://s3cretPW@h",
            "rediss://alice:s3cretPW@h:6380",
            "redis://alice:s3cretPW%zz@h",
            "redis://alice:s3cretPW@h:99999",
            "redis://alice:s3cretPW@h/x",
            "redis://alice:s3cretPW@",
            "redis://alice:s3cret?PW@h",
            "redis://alice:s3cretPW@h?password=s3cretPW",
            "redis://alice:s3cretPW@h?s3cretPW",
            "redis://h?client_name=s3cretPW%20",
            "redis://h?db=s3cretPW",
            "alice:s3cretPW@h://x",
            "s3cretPW",
        ];
        for url in urls {
            let shown = match Connector::from_url(url) {
                Ok((c, e)) => format!("{c:?} {e:?} {e}"),
                Err(e) => format!("{e:?} {e}"),
            };
            assert!(!shown.contains(SECRET), "{url} -> {shown}");
            assert!(!shown.contains("s3cret?PW"), "{url} -> {shown}");
            assert!(!shown.contains("PW"), "{url} -> {shown}");
        }
        let (c, _) = Connector::from_url("redis://alice:s3cretPW@h").unwrap();
        assert!(
            format!("{c:?}").contains(r#"password: Some("***")"#),
            "{c:?}"
        );
    }
}

/// The options of `CLIENT TRACKING ON` ([`Connector::tracking`]).
///
/// ```
/// use redis_layers::transport::Tracking;
///
/// let words = |t: Tracking| -> Vec<String> {
///     t.to_cmd().argv().map(|a| String::from_utf8_lossy(a).into_owned()).collect()
/// };
/// assert_eq!(words(Tracking::default().optin()), ["CLIENT", "TRACKING", "ON", "OPTIN"]);
/// assert_eq!(
///     words(Tracking::bcast().prefix("a:").prefix("b:")).join(" "),
///     "CLIENT TRACKING ON BCAST PREFIX a: PREFIX b:"
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracking {
    bcast: bool,
    prefixes: Vec<String>,
    optin: bool,
    optout: bool,
    noloop: bool,
}

impl Tracking {
    /// Broadcasting mode: invalidations for every key (or every key under
    /// the [prefixes](Tracking::prefix)), read or not.
    pub fn bcast() -> Self {
        Tracking {
            bcast: true,
            ..Tracking::default()
        }
    }

    /// A key prefix to track (broadcasting mode).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// Track only keys read right after `CLIENT CACHING yes`.
    pub fn optin(mut self) -> Self {
        self.optin = true;
        self
    }

    /// Track keys except those read right after `CLIENT CACHING no`.
    pub fn optout(mut self) -> Self {
        self.optout = true;
        self
    }

    /// No invalidations for keys this connection changed itself.
    pub fn noloop(mut self) -> Self {
        self.noloop = true;
        self
    }

    /// The `CLIENT TRACKING ON ...` command.
    pub fn to_cmd(&self) -> Cmd {
        let mut c = crate::cmd("CLIENT").arg("TRACKING").arg("ON");
        if self.bcast {
            c = c.arg("BCAST");
        }
        for p in &self.prefixes {
            c = c.arg("PREFIX").arg(p.as_str());
        }
        for (on, name) in [
            (self.optin, "OPTIN"),
            (self.optout, "OPTOUT"),
            (self.noloop, "NOLOOP"),
        ] {
            if on {
                c = c.arg(name);
            }
        }
        c
    }
}

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

/// Where a Redis server listens: a TCP host and port, or a Unix socket.
///
/// Parses from `host:port`, `[v6addr]:port`, `unix:/path` or `/path`.
///
/// ```
/// use redis_layers::Endpoint;
/// let e: Endpoint = "127.0.0.1:6380".parse().unwrap();
/// assert_eq!(e, Endpoint::tcp("127.0.0.1", 6380));
/// let e: Endpoint = "[::1]:7000".parse().unwrap();
/// assert_eq!(e.to_string(), "[::1]:7000");
/// let e: Endpoint = "unix:/tmp/redis.sock".parse().unwrap();
/// assert_eq!(e, Endpoint::unix("/tmp/redis.sock"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// A TCP address; `host` is a name or an IP literal (IPv6 unbracketed).
    #[non_exhaustive]
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
        /// The name a TLS connection verifies the server against, when it
        /// is not `host`: a `MOVING` target is verified against the
        /// configured server's name ([`Endpoint::verified_as`]).
        tls_name: Option<String>,
    },
    /// A Unix domain socket path.
    Unix(PathBuf),
}

impl Endpoint {
    /// A TCP endpoint.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(str::to_owned)
            .unwrap_or(host);
        Endpoint::Tcp {
            host,
            port,
            tls_name: None,
        }
    }

    /// This endpoint, verified over TLS against `name` instead of its own
    /// host (plain TCP and Unix sockets ignore it). The handoff layer dials
    /// a `MOVING` target this way, with the configured server's name, so a
    /// host that only has a certificate of its own is refused.
    ///
    /// ```
    /// use redis_layers::Endpoint;
    /// let e = Endpoint::tcp("10.0.0.2", 6379).verified_as("db.example.com");
    /// assert_eq!(e.tls_name(), Some("db.example.com"));
    /// assert_eq!(e.to_string(), "10.0.0.2:6379");
    /// assert_eq!(Endpoint::tcp("10.0.0.2", 6379).tls_name(), Some("10.0.0.2"));
    /// ```
    pub fn verified_as(mut self, name: impl Into<String>) -> Self {
        if let Endpoint::Tcp { tls_name, .. } = &mut self {
            *tls_name = Some(name.into());
        }
        self
    }

    /// The name a TLS connection to this endpoint verifies: the one given
    /// to [`Endpoint::verified_as`], else the host. `None` for a Unix socket.
    pub fn tls_name(&self) -> Option<&str> {
        match self {
            Endpoint::Tcp { host, tls_name, .. } => Some(tls_name.as_deref().unwrap_or(host)),
            Endpoint::Unix(_) => None,
        }
    }

    /// The port of a TCP endpoint.
    ///
    /// ```
    /// use redis_layers::Endpoint;
    /// assert_eq!(Endpoint::tcp("10.0.0.1", 6380).port(), Some(6380));
    /// assert_eq!(Endpoint::unix("/tmp/r.sock").port(), None);
    /// ```
    pub fn port(&self) -> Option<u16> {
        match self {
            Endpoint::Tcp { port, .. } => Some(*port),
            Endpoint::Unix(_) => None,
        }
    }

    /// A Unix socket endpoint.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Endpoint::Unix(path.into())
    }

    /// The host of a TCP endpoint.
    ///
    /// ```
    /// use redis_layers::Endpoint;
    /// assert_eq!(Endpoint::tcp("10.0.0.1", 6379).host(), Some("10.0.0.1"));
    /// assert_eq!(Endpoint::unix("/tmp/r.sock").host(), None);
    /// ```
    pub fn host(&self) -> Option<&str> {
        match self {
            Endpoint::Tcp { host, .. } => Some(host),
            Endpoint::Unix(_) => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port, .. } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A TCP endpoint at that address (the simulator and `TcpListener`s hand
/// out `SocketAddr`s).
///
/// ```
/// use std::net::SocketAddr;
/// use redis_layers::Endpoint;
/// let a: SocketAddr = "[::1]:7000".parse().unwrap();
/// assert_eq!(Endpoint::from(a), Endpoint::tcp("::1", 7000));
/// ```
impl From<std::net::SocketAddr> for Endpoint {
    fn from(a: std::net::SocketAddr) -> Self {
        Endpoint::tcp(a.ip().to_string(), a.port())
    }
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(Endpoint::unix(path.trim_start_matches("//")));
        }
        if s.starts_with('/') {
            return Ok(Endpoint::unix(s));
        }
        let bad = || Error::config(format!("invalid endpoint {s:?}: expected host:port"));
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
            return Err(bad());
        }
        Ok(Endpoint::tcp(host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors() {
        for bad in ["", "host", "host:", "host:99999", ":6379", "::1:6379"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
        assert_eq!(
            "/var/run/r.sock".parse::<Endpoint>().unwrap(),
            Endpoint::unix("/var/run/r.sock")
        );
    }
}

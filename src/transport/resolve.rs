//! The resolver seam: how host names become addresses.
//!
//! A [`Resolver`] is any `tower::Service<String>` that answers `"host:port"`
//! with the addresses to try, in order (as hyper's `Resolve` does), boxed
//! so that a [`Connector`](super::Connector) and a
//! [`HandoffLayer`](crate::handoff::HandoffLayer) can share one. The
//! default is the system's ([`tokio::net::lookup_host`]).
//!
//! The handoff layer uses it to ride out DNS that lags behind a `MOVING`:
//! on Redis Enterprise the name in a `MOVING` (or the configured name, after
//! a `MOVING` with a null endpoint) goes on leading to the node being
//! retired for several seconds (4.4 to 9.7 s measured), and a client that
//! dials at once reconnects to the node that is going away. See
//! [`handoff`](crate::handoff#dns-that-lags-behind-moving).

use std::io;
use std::net::{IpAddr, SocketAddr};

use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

/// A boxed resolver: `"host:port"` to the addresses to try, in order.
///
/// ```
/// use std::net::SocketAddr;
/// use redis_layers::transport::Resolver;
///
/// // Every name leads to one address (a test double, say).
/// let fixed: Resolver = Resolver::new(tower::service_fn(|_name: String| async {
///     Ok::<_, std::io::Error>(vec!["127.0.0.1:6379".parse::<SocketAddr>().unwrap()])
/// }));
/// # let _ = fixed;
/// ```
pub type Resolver = BoxCloneSyncService<String, Vec<SocketAddr>, io::Error>;

/// The system's resolver: [`tokio::net::lookup_host`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// use tower::ServiceExt;
/// let addrs = redis_layers::transport::system_resolver()
///     .oneshot("127.0.0.1:6379".to_string())
///     .await?;
/// assert_eq!(addrs, vec!["127.0.0.1:6379".parse().unwrap()]);
/// # Ok(()) }
/// ```
pub fn system_resolver() -> Resolver {
    Resolver::new(tower::service_fn(|name: String| async move {
        Ok::<_, io::Error>(tokio::net::lookup_host(name).await?.collect())
    }))
}

/// True when `host` is an IP literal (with or without IPv6 brackets): no
/// name to resolve.
pub(crate) fn is_ip_literal(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
}

/// Resolves `host:port` with `resolver` (the system's when `None`); an
/// empty answer is an error.
pub(crate) async fn resolve(
    resolver: Option<&Resolver>,
    host: &str,
    port: u16,
) -> io::Result<Vec<SocketAddr>> {
    let name = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let addrs = match resolver {
        Some(r) => r.clone().oneshot(name).await?,
        None => tokio::net::lookup_host(name).await?.collect(),
    };
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
        ));
    }
    Ok(addrs)
}

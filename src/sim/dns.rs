//! Simulated DNS for `*-fqdn` endpoint types: a name whose record follows a
//! `MOVING` some seconds late, as on Redis Enterprise (measured: DNS
//! follows 4.4 to 9.7 s after the frame).
//!
//! A [`SimResolver`] is an in-process table from host names to IPs, with
//! record changes that can be scheduled. Give it to a client under test as
//! its resolver (it is a `tower::Service<String>` answering
//! `Vec<SocketAddr>`, and has a plain [`SimResolver::lookup`]), and give it
//! to a [`MovingPlan`](super::MovingPlan) with [`DnsLag`]: the `MOVING` then names
//! the endpoint by that host name, and the record moves from the old
//! endpoint's IP to the new one's `lag` after the frame went out. Until
//! then a client that resolves the name reaches the old node.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// A simulated DNS: host names to IPs, changed now or at a set time.
/// Cheap to clone; clones share the records.
///
/// ```
/// use redis_layers::sim::SimResolver;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// let dns = SimResolver::new();
/// dns.set("db.example", "127.0.0.1".parse().unwrap());
/// let addrs = dns.lookup("db.example:6379").await?;
/// assert_eq!(addrs, vec!["127.0.0.1:6379".parse().unwrap()]);
/// // Host names are what it resolves; IP literals pass through.
/// assert_eq!(dns.lookup("127.0.0.2:1").await?, vec!["127.0.0.2:1".parse().unwrap()]);
/// assert!(dns.lookup("unknown.example:1").await.is_err());
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct SimResolver {
    inner: Arc<Records>,
}

#[derive(Default)]
struct Records {
    table: Mutex<HashMap<String, Vec<IpAddr>>>,
    changed: Notify,
}

impl std::fmt::Debug for SimResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimResolver")
            .field("records", &*self.table())
            .finish()
    }
}

/// A `MOVING` whose address is a host name that follows late; see
/// [`MovingPlan::dns`](super::MovingPlan::dns).
#[derive(Debug, Clone)]
pub struct DnsLag {
    /// The resolver that holds the record.
    pub resolver: SimResolver,
    /// The host name `MOVING` gives to connections that asked for an
    /// `*-fqdn` endpoint type (as `name:port`, the new endpoint's port).
    pub name: String,
    /// How long after the `MOVING` the record changes to the new
    /// endpoint's IP. Until then it is the old endpoint's IP (set when
    /// `MOVING` goes out, unless the name has a record already).
    pub lag: Duration,
}

impl SimResolver {
    /// An empty resolver.
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, Vec<IpAddr>>> {
        self.inner.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Points `name` at `ip` from now on.
    pub fn set(&self, name: &str, ip: IpAddr) {
        self.set_all(name, vec![ip]);
    }

    /// Points `name` at `ips` (empty: the name no longer resolves).
    pub fn set_all(&self, name: &str, ips: Vec<IpAddr>) {
        tracing::info!(target: "redis_layers::sim", event = "sim.dns", name, ?ips, "DNS record set");
        let name = name.to_ascii_lowercase();
        if ips.is_empty() {
            self.table().remove(&name);
        } else {
            self.table().insert(name, ips);
        }
        self.inner.changed.notify_waiters();
    }

    /// Points `name` at `ip` at `when` (in a task; must be called within a
    /// Tokio runtime).
    pub fn set_at(&self, name: &str, ip: IpAddr, when: Instant) {
        let (dns, name) = (self.clone(), name.to_string());
        tokio::spawn(async move {
            tokio::time::sleep_until(when).await;
            dns.set(&name, ip);
        });
    }

    /// The IPs `name` points at now (empty if none).
    pub fn record(&self, name: &str) -> Vec<IpAddr> {
        self.table()
            .get(&name.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `name` points at `ip` (at once if it does).
    pub async fn wait_for(&self, name: &str, ip: IpAddr) {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.record(name).contains(&ip) {
                return;
            }
            changed.await;
        }
    }

    /// Resolves `host:port` (or a bare host, port 0) as `tokio::net::
    /// lookup_host` would: IP literals as they are, host names from the
    /// records; an unknown name is `NotFound`.
    pub async fn lookup(&self, name: &str) -> io::Result<Vec<SocketAddr>> {
        self.resolve(name)
    }

    fn resolve(&self, name: &str) -> io::Result<Vec<SocketAddr>> {
        if let Ok(a) = name.parse::<SocketAddr>() {
            return Ok(vec![a]);
        }
        let (host, port) = match name.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("invalid port in '{name}'"),
                    ))
                }
            },
            None => (name, 0),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let ips = self.record(host);
        if ips.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("simulated DNS: no record for '{host}'"),
            ));
        }
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }
}

/// `resolver.call("host:port".into())`: the same as [`SimResolver::lookup`].
impl tower_service::Service<String> for SimResolver {
    type Response = Vec<SocketAddr>;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<Vec<SocketAddr>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: String) -> Self::Future {
        std::future::ready(self.resolve(&name))
    }
}

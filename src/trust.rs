//! Which server-named endpoints the client follows: the [`TargetPolicy`].
//!
//! A Redis server names endpoints for the client to go to: a `MOVING`
//! notification's target, a `MOVED` or `ASK` redirect's address, an
//! `SMIGRATED` triplet's destination. Following one means dialling it and
//! sending it the handshake, credentials included, and then the caller's
//! commands. A compromised or misconfigured server (or anything that can
//! write to a plain-TCP connection) could otherwise send the client, with
//! its password, anywhere. So every such endpoint passes a `TargetPolicy`
//! first.
//!
//! The [`DefaultTargetPolicy`] still lets managed Redis hand off:
//!
//! - a Unix-socket client never moves to TCP;
//! - over TLS every target is followed, and the connection to it is
//!   verified against the *configured* server name (what Redis Cloud
//!   certificates carry), never the target's own: a host that merely has
//!   some public certificate cannot pass;
//! - over plain TCP a target is followed when it is on the configured
//!   host, when it shares the configured name's parent domain (for FQDN
//!   endpoint types: `redis-1.db.example.com` may move to
//!   `node-7.db.example.com`), or when it is an IP address of the same
//!   class as the configured one: private to private, public to public. A
//!   loopback address is this machine: only the configured address itself
//!   is followed there, on any port. A name against an IP address (or the
//!   other way round) has no class without a lookup, and is refused.
//!
//! A refused `MOVING` target is handled like a `MOVING` with a null
//! endpoint (the connection reconnects to the configured address after half
//! the announced time) and reported as a
//! [`MaintEvent::TargetRefused`](crate::maint::MaintEvent::TargetRefused), a
//! `warn` event (`trust.refused`) and, with the `metrics` feature, the
//! [`REFUSED`] counter; it never fails a command. In a cluster a `MOVED` or
//! `ASK` to an address absent from the last topology is first checked
//! against a refreshed slot map (see [`cluster`](crate::cluster)).
//!
//! Widen or narrow it with the allow-lists and combinators:
//!
//! ```
//! use redis_layers::trust::{AllowCidr, AllowHosts, AllowSuffix, DefaultTargetPolicy, TargetPolicyExt};
//!
//! let policy = DefaultTargetPolicy
//!     .or(AllowSuffix::new("redis.internal.example.com"))
//!     .or(AllowCidr::new("10.20.0.0/16").unwrap())
//!     .or(AllowHosts::new(["failover.example.net"]));
//! # let _ = policy;
//! ```
//!
//! or write one as a closure over [`Target`]:
//!
//! ```
//! use redis_layers::trust::{Target, TargetPolicy};
//!
//! let only_port_6380 = |t: &Target<'_>| t.target.port() == Some(6380);
//! assert!(!only_port_6380.allows(&Target::moving(
//!     &"10.0.0.2:6379".parse().unwrap(),
//!     &"10.0.0.1:6379".parse().unwrap(),
//!     false,
//! )));
//! ```

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::transport::Endpoint;

/// Counter (feature `metrics`): server-named endpoints the
/// [`TargetPolicy`] refused, by `source` (`moving`, `moved`, `ask`,
/// `smigrated`).
pub const REFUSED: &str = "redis.client.trust.refused";

/// What named the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// A `MOVING` notification's target.
    Moving,
    /// A `MOVED` redirect.
    Moved,
    /// An `ASK` redirect.
    Ask,
    /// An `SMIGRATED` triplet's destination.
    Smigrated,
}

impl Source {
    /// `moving`, `moved`, `ask` or `smigrated`.
    ///
    /// ```
    /// assert_eq!(redis_layers::trust::Source::Ask.as_str(), "ask");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Moving => "moving",
            Source::Moved => "moved",
            Source::Ask => "ask",
            Source::Smigrated => "smigrated",
        }
    }
}

/// A server-named endpoint, as a [`TargetPolicy`] sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Target<'a> {
    /// What named it.
    pub source: Source,
    /// The endpoint named.
    pub target: &'a Endpoint,
    /// The endpoint the client was configured for (in a cluster, the node
    /// whose connection received the name).
    pub configured: &'a Endpoint,
    /// Whether connections are made over TLS (and so a `MOVING` target is
    /// verified against the configured server name).
    pub tls: bool,
}

impl<'a> Target<'a> {
    /// A `MOVING` target (for tests of policies).
    pub fn moving(target: &'a Endpoint, configured: &'a Endpoint, tls: bool) -> Self {
        Target::new(Source::Moving, target, configured, tls)
    }

    /// Any server-named endpoint.
    pub fn new(source: Source, target: &'a Endpoint, configured: &'a Endpoint, tls: bool) -> Self {
        Target {
            source,
            target,
            configured,
            tls,
        }
    }
}

/// Decides whether the client follows a server-named endpoint; see the
/// [module docs](self). Implemented by closures `Fn(&Target) -> bool`.
pub trait TargetPolicy: Send + Sync + 'static {
    /// True to follow `target`.
    fn allows(&self, target: &Target<'_>) -> bool;
}

impl<F> TargetPolicy for F
where
    F: Fn(&Target<'_>) -> bool + Send + Sync + 'static,
{
    fn allows(&self, target: &Target<'_>) -> bool {
        self(target)
    }
}

impl TargetPolicy for Arc<dyn TargetPolicy> {
    fn allows(&self, target: &Target<'_>) -> bool {
        (**self).allows(target)
    }
}

/// The safe default; see the [module docs](self).
///
/// ```
/// use redis_layers::trust::{DefaultTargetPolicy, Target, TargetPolicy};
/// use redis_layers::Endpoint;
///
/// let allows = |to: &str, from: &str, tls: bool| {
///     let (to, from): (Endpoint, Endpoint) = (to.parse().unwrap(), from.parse().unwrap());
///     DefaultTargetPolicy.allows(&Target::moving(&to, &from, tls))
/// };
/// assert!(allows("10.0.0.2:6379", "10.0.0.1:6379", false)); // private to private
/// assert!(!allows("3.3.3.3:6379", "10.0.0.1:6379", false)); // private to public
/// assert!(allows("127.0.0.1:7001", "127.0.0.1:7000", false)); // same host
/// assert!(!allows("127.0.0.2:7000", "127.0.0.1:7000", false)); // another loopback
/// assert!(allows("n2.db.example.com:6379", "n1.db.example.com:6379", false)); // same domain
/// assert!(!allows("n2.evil.com:6379", "n1.db.example.com:6379", false));
/// assert!(allows("n2.evil.com:6379", "n1.db.example.com:6379", true)); // TLS: verified as n1.db.example.com
/// assert!(!allows("127.0.0.1:6379", "unix:/tmp/redis.sock", false)); // never Unix to TCP
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultTargetPolicy;

impl TargetPolicy for DefaultTargetPolicy {
    fn allows(&self, t: &Target<'_>) -> bool {
        let (Some(to), Some(from)) = (t.target.host(), t.configured.host()) else {
            // Unix to TCP never; Unix to Unix only to the same socket.
            return t.target == t.configured;
        };
        if t.tls || same_host(to, from) {
            return true;
        }
        match (ip(to), ip(from)) {
            (Some(to), Some(from)) => same_class(to, from),
            (None, None) => parent_domain(from).is_some_and(|d| in_domain(to, d)),
            _ => false,
        }
    }
}

/// Follows every target: the behaviour of clients without a trust
/// boundary. Only for networks where every server is trusted.
///
/// ```
/// use redis_layers::trust::{AllowAll, Target, TargetPolicy};
/// let (to, from) = ("8.8.8.8:1".parse().unwrap(), "10.0.0.1:6379".parse().unwrap());
/// assert!(AllowAll.allows(&Target::moving(&to, &from, false)));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl TargetPolicy for AllowAll {
    fn allows(&self, _: &Target<'_>) -> bool {
        true
    }
}

/// Follows targets whose host is one of a list (names compared without
/// case, IP addresses by value).
///
/// ```
/// use redis_layers::trust::{AllowHosts, Target, TargetPolicy};
/// let p = AllowHosts::new(["replica.example.com", "::1"]);
/// let from = "10.0.0.1:6379".parse().unwrap();
/// assert!(p.allows(&Target::moving(&"REPLICA.example.com:6380".parse().unwrap(), &from, false)));
/// assert!(p.allows(&Target::moving(&"[0::1]:6380".parse().unwrap(), &from, false)));
/// assert!(!p.allows(&Target::moving(&"other.example.com:6380".parse().unwrap(), &from, false)));
/// ```
#[derive(Debug, Clone)]
pub struct AllowHosts {
    hosts: Vec<String>,
}

impl AllowHosts {
    /// The hosts to follow.
    pub fn new<I, S>(hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AllowHosts {
            hosts: hosts.into_iter().map(Into::into).collect(),
        }
    }
}

impl TargetPolicy for AllowHosts {
    fn allows(&self, t: &Target<'_>) -> bool {
        t.target
            .host()
            .is_some_and(|to| self.hosts.iter().any(|h| same_host(to, h)))
    }
}

/// Follows targets whose host name is in a domain: `example.com` allows
/// `example.com` and `a.b.example.com`, not `badexample.com`.
///
/// ```
/// use redis_layers::trust::{AllowSuffix, Target, TargetPolicy};
/// let p = AllowSuffix::new(".db.example.com");
/// let from = "10.0.0.1:6379".parse().unwrap();
/// assert!(p.allows(&Target::moving(&"n1.db.example.com:1".parse().unwrap(), &from, false)));
/// assert!(!p.allows(&Target::moving(&"n1.db.example.com.evil.net:1".parse().unwrap(), &from, false)));
/// assert!(!p.allows(&Target::moving(&"xdb.example.com:1".parse().unwrap(), &from, false)));
/// ```
#[derive(Debug, Clone)]
pub struct AllowSuffix {
    domain: String,
}

impl AllowSuffix {
    /// The domain (a leading dot is optional).
    pub fn new(domain: impl Into<String>) -> Self {
        let domain = domain.into();
        AllowSuffix {
            domain: domain
                .trim_start_matches('.')
                .trim_end_matches('.')
                .to_owned(),
        }
    }
}

impl TargetPolicy for AllowSuffix {
    fn allows(&self, t: &Target<'_>) -> bool {
        !self.domain.is_empty()
            && t.target
                .host()
                .is_some_and(|to| ip(to).is_none() && in_domain(to, &self.domain))
    }
}

/// Follows targets whose host is an IP address in a CIDR range
/// (`10.0.0.0/8`, `fd00::/8`; an IPv4-mapped IPv6 address counts as its
/// IPv4 address).
///
/// ```
/// use redis_layers::trust::{AllowCidr, Target, TargetPolicy};
/// let p = AllowCidr::new("10.20.0.0/16").unwrap();
/// let from = "127.0.0.1:6379".parse().unwrap();
/// assert!(p.allows(&Target::moving(&"10.20.3.4:6379".parse().unwrap(), &from, false)));
/// assert!(!p.allows(&Target::moving(&"10.21.3.4:6379".parse().unwrap(), &from, false)));
/// assert!(AllowCidr::new("10.0.0.0/33").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowCidr {
    net: IpAddr,
    prefix: u8,
}

impl AllowCidr {
    /// Parses `addr/prefix` (or a bare address, a range of one).
    pub fn new(cidr: &str) -> Result<Self> {
        let bad = || Error::config(format!("invalid CIDR range {cidr:?}: expected addr/prefix"));
        let (addr, prefix) = match cidr.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (cidr, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let net = canonical(net);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(AllowCidr { net, prefix })
    }

    /// True when `ip` is in the range.
    ///
    /// ```
    /// let p = redis_layers::trust::AllowCidr::new("fd00::/8").unwrap();
    /// assert!(p.contains("fd12::1".parse().unwrap()));
    /// ```
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix_eq(u32::from(n).into(), u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(n.into(), a.into(), 128, self.prefix),
            _ => false,
        }
    }
}

impl TargetPolicy for AllowCidr {
    fn allows(&self, t: &Target<'_>) -> bool {
        t.target
            .host()
            .and_then(ip)
            .is_some_and(|a| self.contains(a))
    }
}

/// Combines policies; every [`TargetPolicy`] gets these methods.
pub trait TargetPolicyExt: TargetPolicy + Sized {
    /// Follows what either policy allows.
    fn or<Q: TargetPolicy>(self, other: Q) -> Or<Self, Q> {
        Or(self, other)
    }

    /// Follows what both policies allow.
    ///
    /// ```
    /// use redis_layers::trust::{AllowCidr, DefaultTargetPolicy, Target, TargetPolicy, TargetPolicyExt};
    /// let p = DefaultTargetPolicy.and(AllowCidr::new("10.0.0.0/24").unwrap());
    /// let from = "10.0.0.1:6379".parse().unwrap();
    /// assert!(p.allows(&Target::moving(&"10.0.0.9:6379".parse().unwrap(), &from, false)));
    /// assert!(!p.allows(&Target::moving(&"10.0.1.9:6379".parse().unwrap(), &from, false)));
    /// ```
    fn and<Q: TargetPolicy>(self, other: Q) -> And<Self, Q> {
        And(self, other)
    }
}

impl<P: TargetPolicy> TargetPolicyExt for P {}

/// See [`TargetPolicyExt::or`].
#[derive(Debug, Clone, Copy)]
pub struct Or<A, B>(A, B);

impl<A: TargetPolicy, B: TargetPolicy> TargetPolicy for Or<A, B> {
    fn allows(&self, t: &Target<'_>) -> bool {
        self.0.allows(t) || self.1.allows(t)
    }
}

/// See [`TargetPolicyExt::and`].
#[derive(Debug, Clone, Copy)]
pub struct And<A, B>(A, B);

impl<A: TargetPolicy, B: TargetPolicy> TargetPolicy for And<A, B> {
    fn allows(&self, t: &Target<'_>) -> bool {
        self.0.allows(t) && self.1.allows(t)
    }
}

/// A shared, type-erased policy, as the layers keep it.
#[derive(Clone)]
pub(crate) struct SharedPolicy(pub(crate) Arc<dyn TargetPolicy>);

impl Default for SharedPolicy {
    fn default() -> Self {
        SharedPolicy(Arc::new(DefaultTargetPolicy))
    }
}

impl fmt::Debug for SharedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TargetPolicy")
    }
}

impl SharedPolicy {
    pub(crate) fn new(policy: impl TargetPolicy) -> Self {
        SharedPolicy(Arc::new(policy))
    }

    /// Asks the policy; a refusal is logged and counted here, so every
    /// caller reports it the same way.
    pub(crate) fn check(&self, t: &Target<'_>) -> bool {
        if self.0.allows(t) {
            return true;
        }
        tracing::warn!(
            target: "redis_layers::trust",
            event = "trust.refused",
            source = t.source.as_str(),
            target = %t.target,
            configured = %t.configured,
            "server-named endpoint refused by the target policy"
        );
        #[cfg(feature = "metrics")]
        metrics::counter!(REFUSED, "source" => t.source.as_str()).increment(1);
        false
    }
}

/// Host names compare without case; IP literals by value (`::1` is
/// `0::1`, `::ffff:10.0.0.1` is `10.0.0.1`).
pub(crate) fn same_host(a: &str, b: &str) -> bool {
    match (ip(a), ip(b)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => a
            .trim_end_matches('.')
            .eq_ignore_ascii_case(b.trim_end_matches('.')),
        _ => false,
    }
}

fn ip(host: &str) -> Option<IpAddr> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok().map(canonical)
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Private to private and public to public; loopback only to itself.
fn same_class(to: IpAddr, from: IpAddr) -> bool {
    if to.is_loopback() || from.is_loopback() || to.is_unspecified() || from.is_unspecified() {
        return to == from;
    }
    crate::maint::is_internal_ip(to) == crate::maint::is_internal_ip(from)
}

/// The domain a host name is in, when that domain has at least two labels
/// (`db.example.com` for `n1.db.example.com`; none for `example.com`, so
/// a name directly under a public suffix never opens the whole suffix).
fn parent_domain(host: &str) -> Option<&str> {
    let host = host.trim_end_matches('.');
    let (_, parent) = host.split_once('.')?;
    parent.contains('.').then_some(parent)
}

/// `host` is `domain` or a name under it.
fn in_domain(host: &str, domain: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.len() == domain.len() {
        return host.eq_ignore_ascii_case(domain);
    }
    host.len() > domain.len()
        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
        && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
}

fn prefix_eq(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
    let shift = bits - u32::from(prefix);
    if shift >= bits {
        return true;
    }
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap()
    }

    #[test]
    fn in_domain_needs_a_label_boundary() {
        assert!(in_domain("a.example.com", "example.com"));
        assert!(in_domain("EXAMPLE.com.", "example.com"));
        assert!(!in_domain("badexample.com", "example.com"));
        assert!(!in_domain("com", "example.com"));
        assert_eq!(parent_domain("n1.db.example.com"), Some("db.example.com"));
        assert_eq!(parent_domain("redis.example.com"), Some("example.com"));
        assert_eq!(parent_domain("example.com"), None);
        assert_eq!(parent_domain("localhost"), None);
    }

    #[test]
    fn cidr_edges() {
        let all = AllowCidr::new("0.0.0.0/0").unwrap();
        assert!(all.contains("255.1.2.3".parse().unwrap()));
        assert!(!all.contains("::2".parse().unwrap()));
        let one = AllowCidr::new("10.0.0.1").unwrap();
        assert!(one.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!one.contains("10.0.0.2".parse().unwrap()));
        let v6 = AllowCidr::new("fd00::/8").unwrap();
        assert!(v6.contains("fdff::1".parse().unwrap()));
        assert!(!v6.contains("fe00::1".parse().unwrap()));
        for bad in ["", "10.0.0.0/", "10.0.0.0/x", "fd00::/129", "host/8"] {
            assert!(AllowCidr::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_policy_classes() {
        let allows = |to: &str, from: &str| {
            DefaultTargetPolicy.allows(&Target::moving(&ep(to), &ep(from), false))
        };
        assert!(allows("192.168.1.5:1", "10.0.0.1:2"));
        assert!(allows("8.8.8.8:1", "1.1.1.1:2"));
        assert!(!allows("8.8.8.8:1", "10.0.0.1:2"));
        assert!(!allows("10.0.0.1:1", "8.8.8.8:2"));
        assert!(allows("[::ffff:127.0.0.1]:1", "127.0.0.1:2"));
        assert!(!allows("[::1]:1", "127.0.0.1:2"));
        assert!(!allows("0.0.0.0:1", "127.0.0.1:2"));
        assert!(!allows("localhost:1", "127.0.0.1:2"));
        assert!(!allows("10.0.0.2:1", "redis.example.com:2"));
        assert!(allows("redis.example.com:1", "REDIS.example.com.:2"));
        assert!(!allows("a.com:1", "b.com:2"));
        assert!(allows("unix:/a", "unix:/a"));
        assert!(!allows("unix:/b", "unix:/a"));
        assert!(!allows("127.0.0.1:1", "unix:/a"));
    }
}

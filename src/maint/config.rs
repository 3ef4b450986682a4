//! Maintenance configuration: modes, endpoint types, defaults, validation,
//! handoff worker autoscaling, and the `moving-endpoint-type` detection.
//!
//! See the [maintenance contract](crate::docs::maintenance), sections 1
//! (handshake) and 4 (defaults).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

/// Whether a connection opts in to maintenance notifications.
///
/// | mode | handshake | when the server refuses it |
/// |---|---|---|
/// | `Disabled` | not sent | - |
/// | `Enabled` | sent | connection setup fails |
/// | `Auto` (default) | sent once per endpoint and server version | the connection works without maintenance handling |
///
/// # Auto: one probe per endpoint and server version
///
/// Redis Open Source and Valkey refuse the opt-in (`ERR unknown
/// subcommand`). In mode `Auto` that refusal is expected: it is logged at
/// debug level only, trips no circuit breaker and causes no retry. The
/// [`Connector`](crate::Connector) remembers it per endpoint for its
/// lifetime (and its clones'), and later connections and reconnects to
/// that endpoint do not ask again, as long as their `HELLO` reply names
/// the same `server` and `version` as the connection that was refused. A
/// different name or version (the server was upgraded, or the address now
/// leads to another product) is asked once more, so a rolling upgrade to a
/// server with the feature turns notifications on at the next reconnect,
/// without a restart of the application (tested end to end with the
/// simulator's `set_server_version`). Connections whose handshakes run
/// while the first answer is still on its way ask too (the opt-in costs no
/// extra round trip: it is pipelined with the handshake). A RESP2
/// connection never asks. Why an endpoint sends no notifications is in
/// [`MaintenanceState::status`](super::MaintenanceState::status).
///
/// ```
/// use redis_layers::maint::Mode;
///
/// assert_eq!(Mode::default(), Mode::Auto);
/// assert!(Mode::Auto.sends_handshake() && !Mode::Auto.requires_support());
/// assert!(Mode::Enabled.requires_support());
/// assert!(!Mode::Disabled.sends_handshake());
/// assert_eq!("enabled".parse::<Mode>().unwrap(), Mode::Enabled);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Send the handshake; if the server refuses it, carry on without
    /// maintenance handling for that endpoint, and do not send it there
    /// again while the server's name and version stay the same (see
    /// above).
    #[default]
    Auto,
    /// Send the handshake; if the server refuses it, fail the connection.
    Enabled,
    /// Do not send the handshake (and resolve no endpoint type).
    Disabled,
}

impl Mode {
    /// `auto`, `enabled` or `disabled`.
    ///
    /// ```
    /// assert_eq!(redis_layers::maint::Mode::Disabled.as_str(), "disabled");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Enabled => "enabled",
            Mode::Disabled => "disabled",
        }
    }

    /// True if `CLIENT MAINT_NOTIFICATIONS ON` is sent (`Auto`, `Enabled`).
    ///
    /// ```
    /// assert!(redis_layers::maint::Mode::Enabled.sends_handshake());
    /// ```
    pub fn sends_handshake(self) -> bool {
        self != Mode::Disabled
    }

    /// True if a refused handshake fails the connection (`Enabled`).
    ///
    /// ```
    /// assert!(!redis_layers::maint::Mode::Auto.requires_support());
    /// ```
    pub fn requires_support(self) -> bool {
        self == Mode::Enabled
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        [Mode::Auto, Mode::Enabled, Mode::Disabled]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                ConfigError::new(
                    "mode",
                    format!("mode must be auto, enabled or disabled, got {s:?}"),
                )
            })
    }
}

/// The configured `moving-endpoint-type`: how `MOVING` should name the new
/// endpoint. `Auto` (the default) is resolved per address by
/// [`resolve_endpoint_type`] and never sent.
///
/// ```
/// use redis_layers::maint::{EndpointType, ResolvedEndpointType};
///
/// assert_eq!(EndpointType::default(), EndpointType::Auto);
/// assert_eq!(EndpointType::InternalFqdn.as_str(), "internal-fqdn");
/// assert_eq!(EndpointType::Auto.resolved(), None);
/// assert_eq!(EndpointType::None.resolved(), Some(ResolvedEndpointType::None));
/// assert_eq!("external-ip".parse::<EndpointType>().unwrap(), EndpointType::ExternalIp);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum EndpointType {
    /// Decide per address: TLS -> `*-fqdn`, plain -> `*-ip`; internal for
    /// private addresses, external otherwise.
    #[default]
    Auto,
    /// `internal-ip`
    InternalIp,
    /// `internal-fqdn`
    InternalFqdn,
    /// `external-ip`
    ExternalIp,
    /// `external-fqdn`
    ExternalFqdn,
    /// `none`: `MOVING` carries no endpoint; reconnect to the configured
    /// address after half its `time`.
    None,
}

impl EndpointType {
    /// The name: `auto` or the wire name of a concrete type.
    ///
    /// ```
    /// use redis_layers::maint::EndpointType;
    /// assert_eq!(EndpointType::Auto.as_str(), "auto");
    /// assert_eq!(EndpointType::ExternalFqdn.as_str(), "external-fqdn");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointType::Auto => "auto",
            EndpointType::InternalIp => "internal-ip",
            EndpointType::InternalFqdn => "internal-fqdn",
            EndpointType::ExternalIp => "external-ip",
            EndpointType::ExternalFqdn => "external-fqdn",
            EndpointType::None => "none",
        }
    }

    /// The concrete type, or `None` for `Auto`.
    ///
    /// ```
    /// use redis_layers::maint::{EndpointType, ResolvedEndpointType};
    /// assert_eq!(EndpointType::InternalIp.resolved(), Some(ResolvedEndpointType::InternalIp));
    /// ```
    pub fn resolved(self) -> Option<ResolvedEndpointType> {
        Some(match self {
            EndpointType::Auto => return None,
            EndpointType::InternalIp => ResolvedEndpointType::InternalIp,
            EndpointType::InternalFqdn => ResolvedEndpointType::InternalFqdn,
            EndpointType::ExternalIp => ResolvedEndpointType::ExternalIp,
            EndpointType::ExternalFqdn => ResolvedEndpointType::ExternalFqdn,
            EndpointType::None => ResolvedEndpointType::None,
        })
    }
}

impl fmt::Display for EndpointType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for EndpointType {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(EndpointType::Auto);
        }
        s.parse::<ResolvedEndpointType>().map(EndpointType::from)
    }
}

impl From<ResolvedEndpointType> for EndpointType {
    fn from(t: ResolvedEndpointType) -> Self {
        match t {
            ResolvedEndpointType::InternalIp => EndpointType::InternalIp,
            ResolvedEndpointType::InternalFqdn => EndpointType::InternalFqdn,
            ResolvedEndpointType::ExternalIp => EndpointType::ExternalIp,
            ResolvedEndpointType::ExternalFqdn => EndpointType::ExternalFqdn,
            ResolvedEndpointType::None => EndpointType::None,
        }
    }
}

/// A concrete `moving-endpoint-type`, as sent in
/// `CLIENT MAINT_NOTIFICATIONS ON moving-endpoint-type <type>`.
///
/// ```
/// use redis_layers::maint::ResolvedEndpointType;
///
/// assert_eq!(ResolvedEndpointType::InternalIp.as_str(), "internal-ip");
/// assert!(ResolvedEndpointType::ExternalFqdn.is_fqdn());
/// assert_eq!(ResolvedEndpointType::ALL.len(), 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResolvedEndpointType {
    /// `internal-ip`
    InternalIp,
    /// `internal-fqdn`
    InternalFqdn,
    /// `external-ip`
    ExternalIp,
    /// `external-fqdn`
    ExternalFqdn,
    /// `none`
    None,
}

impl ResolvedEndpointType {
    /// Every type, in wire order.
    ///
    /// ```
    /// use redis_layers::maint::ResolvedEndpointType;
    /// assert!(ResolvedEndpointType::ALL.iter().all(|t| t.as_str().parse() == Ok(*t)));
    /// ```
    pub const ALL: [ResolvedEndpointType; 5] = [
        ResolvedEndpointType::InternalIp,
        ResolvedEndpointType::InternalFqdn,
        ResolvedEndpointType::ExternalIp,
        ResolvedEndpointType::ExternalFqdn,
        ResolvedEndpointType::None,
    ];

    /// The wire name.
    ///
    /// ```
    /// use redis_layers::maint::ResolvedEndpointType;
    /// assert_eq!(ResolvedEndpointType::None.as_str(), "none");
    /// ```
    pub fn as_str(self) -> &'static str {
        EndpointType::from(self).as_str()
    }

    /// True for `internal-fqdn` and `external-fqdn`.
    ///
    /// ```
    /// use redis_layers::maint::ResolvedEndpointType;
    /// assert!(!ResolvedEndpointType::InternalIp.is_fqdn());
    /// ```
    pub fn is_fqdn(self) -> bool {
        matches!(
            self,
            ResolvedEndpointType::InternalFqdn | ResolvedEndpointType::ExternalFqdn
        )
    }

    /// True for `internal-ip` and `internal-fqdn`.
    ///
    /// ```
    /// use redis_layers::maint::ResolvedEndpointType;
    /// assert!(ResolvedEndpointType::InternalFqdn.is_internal());
    /// assert!(!ResolvedEndpointType::None.is_internal());
    /// ```
    pub fn is_internal(self) -> bool {
        matches!(
            self,
            ResolvedEndpointType::InternalIp | ResolvedEndpointType::InternalFqdn
        )
    }
}

impl fmt::Display for ResolvedEndpointType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for ResolvedEndpointType {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        ResolvedEndpointType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                ConfigError::new(
                    "endpoint_type",
                    format!(
                        "endpoint_type must be auto, internal-ip, internal-fqdn, external-ip, \
                         external-fqdn or none, got {s:?}"
                    ),
                )
            })
    }
}

/// An invalid maintenance setting; the message names the field.
///
/// Converts into [`Error::Config`](crate::Error::Config).
///
/// ```
/// use redis_layers::maint::MaintenanceConfig;
///
/// let err = MaintenanceConfig::default().max_handoff_retries(0).validate().unwrap_err();
/// assert_eq!(err.field(), "max_handoff_retries");
/// assert_eq!(err.to_string(), "max_handoff_retries must be in 1..=10, got 0");
/// let err: redis_layers::Error = err.into();
/// assert!(matches!(err, redis_layers::Error::Config(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, message: String) -> Self {
        ConfigError { field, message }
    }

    /// The name of the offending field (`relaxed_timeout`, ...).
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::MaintenanceConfig;
    /// let err = MaintenanceConfig::default().relaxed_timeout(Duration::ZERO).validate().unwrap_err();
    /// assert_eq!(err.field(), "relaxed_timeout");
    /// ```
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for crate::Error {
    fn from(e: ConfigError) -> Self {
        crate::Error::Config(e.message)
    }
}

/// Maintenance settings, with the defaults of the [maintenance contract](crate::docs::maintenance),
/// section 4. Build with the
/// chained setters, then check with [`validate`](Self::validate), which
/// rejects invalid values (naming the field) instead of replacing them.
///
/// | field | default |
/// |---|---|
/// | `mode` | [`Mode::Auto`] |
/// | `endpoint_type` | [`EndpointType::Auto`] |
/// | `relaxed_timeout` | 10 s |
/// | `relaxed_window_max` | 3 x `relaxed_timeout` |
/// | `handoff_timeout` | 15 s |
/// | `max_handoff_retries` | 3 (valid 1..=10) |
/// | `max_workers` | auto, see [`Resolved::workers`] |
/// | `handoff_queue_size` | auto, see [`Resolved::queue_size`] |
/// | `max_active_conns` | unset |
/// | `post_handoff_relaxed_duration` | 2 x `relaxed_timeout` |
/// | `circuit_breaker_failure_threshold` | 5 |
/// | `circuit_breaker_reset_timeout` | 60 s |
/// | `circuit_breaker_max_requests` | 3 |
/// | `dns_lookup_timeout` | 2 s |
/// | `dedup_ttl` | 10 min |
///
/// ```
/// use std::time::Duration;
/// use redis_layers::maint::{MaintenanceConfig, Mode};
///
/// let cfg = MaintenanceConfig::default()
///     .mode(Mode::Enabled)
///     .relaxed_timeout(Duration::from_secs(5))
///     .max_workers(8)
///     .validate()?;
/// assert_eq!(cfg.relaxed_window_max(), Duration::from_secs(15)); // 3 x 5 s
/// assert_eq!(cfg.post_handoff_relaxed_duration(), Duration::from_secs(10));
/// assert_eq!(cfg.workers(100), 8);
/// # Ok::<_, redis_layers::maint::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceConfig {
    mode: Mode,
    endpoint_type: EndpointType,
    relaxed_timeout: Duration,
    relaxed_window_max: Option<Duration>,
    handoff_timeout: Duration,
    max_handoff_retries: u32,
    max_workers: Option<usize>,
    handoff_queue_size: Option<usize>,
    max_active_conns: Option<usize>,
    post_handoff_relaxed_duration: Option<Duration>,
    circuit_breaker_failure_threshold: u32,
    circuit_breaker_reset_timeout: Duration,
    circuit_breaker_max_requests: u32,
    dns_lookup_timeout: Duration,
    dedup_ttl: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            mode: Mode::Auto,
            endpoint_type: EndpointType::Auto,
            relaxed_timeout: Self::DEFAULT_RELAXED_TIMEOUT,
            relaxed_window_max: None,
            handoff_timeout: Self::DEFAULT_HANDOFF_TIMEOUT,
            max_handoff_retries: Self::DEFAULT_MAX_HANDOFF_RETRIES,
            max_workers: None,
            handoff_queue_size: None,
            max_active_conns: None,
            post_handoff_relaxed_duration: None,
            circuit_breaker_failure_threshold: Self::DEFAULT_CIRCUIT_BREAKER_FAILURE_THRESHOLD,
            circuit_breaker_reset_timeout: Self::DEFAULT_CIRCUIT_BREAKER_RESET_TIMEOUT,
            circuit_breaker_max_requests: Self::DEFAULT_CIRCUIT_BREAKER_MAX_REQUESTS,
            dns_lookup_timeout: Self::DEFAULT_DNS_LOOKUP_TIMEOUT,
            dedup_ttl: Self::DEFAULT_DEDUP_TTL,
        }
    }
}

impl MaintenanceConfig {
    /// Default `relaxed_timeout`: 10 s.
    ///
    /// ```
    /// # use redis_layers::maint::MaintenanceConfig;
    /// assert_eq!(MaintenanceConfig::DEFAULT_RELAXED_TIMEOUT.as_secs(), 10);
    /// ```
    pub const DEFAULT_RELAXED_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `handoff_timeout`: 15 s.
    ///
    /// ```
    /// # use redis_layers::maint::MaintenanceConfig;
    /// assert_eq!(MaintenanceConfig::DEFAULT_HANDOFF_TIMEOUT.as_secs(), 15);
    /// ```
    pub const DEFAULT_HANDOFF_TIMEOUT: Duration = Duration::from_secs(15);
    /// Default `max_handoff_retries`: 3.
    ///
    /// ```
    /// # use redis_layers::maint::MaintenanceConfig;
    /// assert_eq!(MaintenanceConfig::DEFAULT_MAX_HANDOFF_RETRIES, 3);
    /// ```
    pub const DEFAULT_MAX_HANDOFF_RETRIES: u32 = 3;
    /// Default `circuit_breaker_failure_threshold`: 5.
    ///
    /// ```
    /// # use redis_layers::maint::MaintenanceConfig;
    /// assert_eq!(MaintenanceConfig::DEFAULT_CIRCUIT_BREAKER_FAILURE_THRESHOLD, 5);
    /// ```
    pub const DEFAULT_CIRCUIT_BREAKER_FAILURE_THRESHOLD: u32 = 5;
    /// Default `circuit_breaker_reset_timeout`: 60 s.
    ///
    /// ```
    /// # use redis_layers::maint::MaintenanceConfig;
    /// assert_eq!(MaintenanceConfig::DEFAULT_CIRCUIT_BREAKER_RESET_TIMEOUT.as_secs(), 60);
    /// ```
    pub const DEFAULT_CIRCUIT_BREAKER_RESET_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default `circuit_breaker_max_requests`: 3.
    ///
    /// ```
    /// # use redis_layers::maint::MaintenanceConfig;
    /// assert_eq!(MaintenanceConfig::DEFAULT_CIRCUIT_BREAKER_MAX_REQUESTS, 3);
    /// ```
    pub const DEFAULT_CIRCUIT_BREAKER_MAX_REQUESTS: u32 = 3;
    /// Default `dns_lookup_timeout`: 2 s.
    ///
    /// ```
    /// # use redis_layers::maint::MaintenanceConfig;
    /// assert_eq!(MaintenanceConfig::DEFAULT_DNS_LOOKUP_TIMEOUT.as_secs(), 2);
    /// ```
    pub const DEFAULT_DNS_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default `dedup_ttl`: 10 minutes.
    ///
    /// ```
    /// # use redis_layers::maint::MaintenanceConfig;
    /// assert_eq!(MaintenanceConfig::DEFAULT_DEDUP_TTL.as_secs(), 600);
    /// ```
    pub const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(600);
    /// The valid range of `max_handoff_retries`.
    ///
    /// ```
    /// # use redis_layers::maint::MaintenanceConfig;
    /// assert!(MaintenanceConfig::MAX_HANDOFF_RETRIES_RANGE.contains(&10));
    /// ```
    pub const MAX_HANDOFF_RETRIES_RANGE: std::ops::RangeInclusive<u32> = 1..=10;

    /// A configuration with every default (same as `default()`).
    ///
    /// ```
    /// use redis_layers::maint::MaintenanceConfig;
    /// assert_eq!(MaintenanceConfig::new(), MaintenanceConfig::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the opt-in [`Mode`].
    ///
    /// ```
    /// use redis_layers::maint::{MaintenanceConfig, Mode};
    /// let cfg = MaintenanceConfig::default().mode(Mode::Disabled);
    /// assert!(!cfg.mode_sends());
    /// ```
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the `moving-endpoint-type` to ask for.
    ///
    /// ```
    /// use redis_layers::maint::{EndpointType, MaintenanceConfig};
    /// let cfg = MaintenanceConfig::default().endpoint_type(EndpointType::None).validate().unwrap();
    /// assert_eq!(cfg.endpoint_type(), EndpointType::None);
    /// ```
    pub fn endpoint_type(mut self, endpoint_type: EndpointType) -> Self {
        self.endpoint_type = endpoint_type;
        self
    }

    /// Sets the timeout used while relaxed (effective timeout =
    /// `max(configured, relaxed_timeout)`). Must be non-zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default().relaxed_timeout(Duration::from_secs(20)).validate().unwrap();
    /// assert_eq!(cfg.relaxed_timeout(), Duration::from_secs(20));
    /// ```
    pub fn relaxed_timeout(mut self, timeout: Duration) -> Self {
        self.relaxed_timeout = timeout;
        self
    }

    /// Sets the backstop after which a relaxation whose closing notification
    /// never came ends; `None` (default) means 3 x `relaxed_timeout`.
    /// Must be non-zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default().relaxed_window_max(Duration::from_secs(60)).validate().unwrap();
    /// assert_eq!(cfg.relaxed_window_max(), Duration::from_secs(60));
    /// ```
    pub fn relaxed_window_max(mut self, window: impl Into<Option<Duration>>) -> Self {
        self.relaxed_window_max = window.into();
        self
    }

    /// Sets the bound on one handoff attempt (dial + handshake). Must be
    /// non-zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default().handoff_timeout(Duration::from_secs(5)).validate().unwrap();
    /// assert_eq!(cfg.handoff_timeout(), Duration::from_secs(5));
    /// ```
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.handoff_timeout = timeout;
        self
    }

    /// Sets how many times a handoff is attempted, 1..=10.
    ///
    /// ```
    /// use redis_layers::maint::MaintenanceConfig;
    /// assert!(MaintenanceConfig::default().max_handoff_retries(10).validate().is_ok());
    /// assert!(MaintenanceConfig::default().max_handoff_retries(11).validate().is_err());
    /// ```
    pub fn max_handoff_retries(mut self, retries: u32) -> Self {
        self.max_handoff_retries = retries;
        self
    }

    /// Sets the number of handoff workers; `None` (default) scales with the
    /// pool size (see [`Resolved::workers`]). Must be at least 1.
    ///
    /// ```
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default().max_workers(4).validate().unwrap();
    /// assert_eq!(cfg.workers(1000), 4);
    /// let cfg = MaintenanceConfig::default().max_workers(4).max_workers(None).validate().unwrap();
    /// assert_eq!(cfg.workers(1000), 333);
    /// ```
    pub fn max_workers(mut self, workers: impl Into<Option<usize>>) -> Self {
        self.max_workers = workers.into();
        self
    }

    /// Sets the handoff queue capacity; `None` (default) scales with the
    /// pool size (see [`Resolved::queue_size`]). Must be at least 1.
    ///
    /// ```
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default().handoff_queue_size(64).validate().unwrap();
    /// assert_eq!(cfg.queue_size(100), 64);
    /// ```
    pub fn handoff_queue_size(mut self, size: impl Into<Option<usize>>) -> Self {
        self.handoff_queue_size = size.into();
        self
    }

    /// Sets the pool's bound on active connections, which caps the automatic
    /// queue size at `max_active_conns + 1`. Must be at least 1.
    ///
    /// ```
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default().max_active_conns(150).validate().unwrap();
    /// assert_eq!(cfg.queue_size(100), 151);
    /// ```
    pub fn max_active_conns(mut self, conns: impl Into<Option<usize>>) -> Self {
        self.max_active_conns = conns.into();
        self
    }

    /// Sets how long a connection stays relaxed after a handoff; `None`
    /// (default) means 2 x `relaxed_timeout`. Must be non-zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default()
    ///     .post_handoff_relaxed_duration(Duration::from_secs(1))
    ///     .validate()
    ///     .unwrap();
    /// assert_eq!(cfg.post_handoff_relaxed_duration(), Duration::from_secs(1));
    /// ```
    pub fn post_handoff_relaxed_duration(mut self, duration: impl Into<Option<Duration>>) -> Self {
        self.post_handoff_relaxed_duration = duration.into();
        self
    }

    /// Sets the failures per endpoint after which the handoff circuit
    /// breaker opens. Must be at least 1.
    ///
    /// ```
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default().circuit_breaker_failure_threshold(2).validate().unwrap();
    /// assert_eq!(cfg.circuit_breaker_failure_threshold(), 2);
    /// ```
    pub fn circuit_breaker_failure_threshold(mut self, failures: u32) -> Self {
        self.circuit_breaker_failure_threshold = failures;
        self
    }

    /// Sets how long an open breaker waits before half-opening. Must be
    /// non-zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default()
    ///     .circuit_breaker_reset_timeout(Duration::from_secs(5))
    ///     .validate()
    ///     .unwrap();
    /// assert_eq!(cfg.circuit_breaker_reset_timeout(), Duration::from_secs(5));
    /// ```
    pub fn circuit_breaker_reset_timeout(mut self, timeout: Duration) -> Self {
        self.circuit_breaker_reset_timeout = timeout;
        self
    }

    /// Sets how many trial handoffs a half-open breaker lets through (and
    /// how many successes close it). Must be at least 1.
    ///
    /// ```
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default().circuit_breaker_max_requests(1).validate().unwrap();
    /// assert_eq!(cfg.circuit_breaker_max_requests(), 1);
    /// ```
    pub fn circuit_breaker_max_requests(mut self, requests: u32) -> Self {
        self.circuit_breaker_max_requests = requests;
        self
    }

    /// Sets the bound on the DNS lookup of endpoint-type detection. Must be
    /// non-zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default()
    ///     .dns_lookup_timeout(Duration::from_millis(500))
    ///     .validate()
    ///     .unwrap();
    /// assert_eq!(cfg.dns_lookup_timeout(), Duration::from_millis(500));
    /// ```
    pub fn dns_lookup_timeout(mut self, timeout: Duration) -> Self {
        self.dns_lookup_timeout = timeout;
        self
    }

    /// Sets how long seen sequence numbers are remembered for dedup. Must be
    /// non-zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::MaintenanceConfig;
    /// let cfg = MaintenanceConfig::default().dedup_ttl(Duration::from_secs(60)).validate().unwrap();
    /// assert_eq!(cfg.dedup_ttl(), Duration::from_secs(60));
    /// ```
    pub fn dedup_ttl(mut self, ttl: Duration) -> Self {
        self.dedup_ttl = ttl;
        self
    }

    /// True if the handshake is sent (mode `Auto` or `Enabled`).
    ///
    /// ```
    /// use redis_layers::maint::MaintenanceConfig;
    /// assert!(MaintenanceConfig::default().mode_sends());
    /// ```
    pub fn mode_sends(&self) -> bool {
        self.mode.sends_handshake()
    }

    /// Checks every field and computes the effective values. Errors name
    /// the field; nothing is silently replaced, except that every duration
    /// (given or derived) is clamped to [`MAX_TIMEOUT`](crate::MAX_TIMEOUT)
    /// (365 days), so `Duration::MAX` can mean "no practical limit".
    ///
    /// Rejected: zero durations (every duration field, including explicit
    /// `relaxed_window_max` and `post_handoff_relaxed_duration`),
    /// `max_handoff_retries` outside 1..=10, and zero `max_workers`,
    /// `handoff_queue_size`, `max_active_conns`,
    /// `circuit_breaker_failure_threshold` or `circuit_breaker_max_requests`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::MaintenanceConfig;
    ///
    /// let err = MaintenanceConfig::default().handoff_timeout(Duration::ZERO).validate().unwrap_err();
    /// assert_eq!(err.to_string(), "handoff_timeout must be greater than zero, got 0ns");
    /// let err = MaintenanceConfig::default().max_workers(0).validate().unwrap_err();
    /// assert_eq!(err.field(), "max_workers");
    /// ```
    pub fn validate(&self) -> Result<Resolved, ConfigError> {
        fn nonzero(field: &'static str, d: Duration) -> Result<Duration, ConfigError> {
            if d.is_zero() {
                return Err(ConfigError::new(
                    field,
                    format!("{field} must be greater than zero, got {d:?}"),
                ));
            }
            Ok(crate::time::clamp(d))
        }
        fn at_least_one<T: Copy + PartialEq + Default + fmt::Display>(
            field: &'static str,
            n: T,
            auto: bool,
        ) -> Result<T, ConfigError> {
            if n == T::default() {
                let hint = if auto { " (or None for automatic)" } else { "" };
                return Err(ConfigError::new(
                    field,
                    format!("{field} must be at least 1{hint}, got {n}"),
                ));
            }
            Ok(n)
        }
        let opt = |field, n: Option<usize>| n.map(|n| at_least_one(field, n, true)).transpose();

        let relaxed_timeout = nonzero("relaxed_timeout", self.relaxed_timeout)?;
        let relaxed_window_max = match self.relaxed_window_max {
            Some(d) => nonzero("relaxed_window_max", d)?,
            None => crate::time::clamp(relaxed_timeout.saturating_mul(3)),
        };
        let handoff_timeout = nonzero("handoff_timeout", self.handoff_timeout)?;
        if !Self::MAX_HANDOFF_RETRIES_RANGE.contains(&self.max_handoff_retries) {
            return Err(ConfigError::new(
                "max_handoff_retries",
                format!(
                    "max_handoff_retries must be in 1..=10, got {}",
                    self.max_handoff_retries
                ),
            ));
        }
        let max_workers = opt("max_workers", self.max_workers)?;
        let handoff_queue_size = opt("handoff_queue_size", self.handoff_queue_size)?;
        let max_active_conns = opt("max_active_conns", self.max_active_conns)?;
        let post_handoff_relaxed_duration = match self.post_handoff_relaxed_duration {
            Some(d) => nonzero("post_handoff_relaxed_duration", d)?,
            None => crate::time::clamp(relaxed_timeout.saturating_mul(2)),
        };
        let circuit_breaker_failure_threshold = at_least_one(
            "circuit_breaker_failure_threshold",
            self.circuit_breaker_failure_threshold,
            false,
        )?;
        let circuit_breaker_reset_timeout = nonzero(
            "circuit_breaker_reset_timeout",
            self.circuit_breaker_reset_timeout,
        )?;
        let circuit_breaker_max_requests = at_least_one(
            "circuit_breaker_max_requests",
            self.circuit_breaker_max_requests,
            false,
        )?;
        let dns_lookup_timeout = nonzero("dns_lookup_timeout", self.dns_lookup_timeout)?;
        let dedup_ttl = nonzero("dedup_ttl", self.dedup_ttl)?;
        Ok(Resolved {
            mode: self.mode,
            endpoint_type: self.endpoint_type,
            relaxed_timeout,
            relaxed_window_max,
            handoff_timeout,
            max_handoff_retries: self.max_handoff_retries,
            max_workers,
            handoff_queue_size,
            max_active_conns,
            post_handoff_relaxed_duration,
            circuit_breaker_failure_threshold,
            circuit_breaker_reset_timeout,
            circuit_breaker_max_requests,
            dns_lookup_timeout,
            dedup_ttl,
        })
    }
}

/// A validated [`MaintenanceConfig`] with the effective values: derived
/// defaults filled in, and worker and queue sizes computed per pool size.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::maint::{MaintenanceConfig, Resolved};
///
/// let r = MaintenanceConfig::default().validate().unwrap();
/// assert_eq!(r, Resolved::default());
/// assert_eq!(r.relaxed_timeout(), Duration::from_secs(10));
/// assert_eq!(r.relaxed_window_max(), Duration::from_secs(30));
/// assert_eq!(r.post_handoff_relaxed_duration(), Duration::from_secs(20));
/// // The worked examples of the maintenance contract, section 4.
/// assert_eq!((r.workers(100), r.queue_size(100)), (33, 500));
/// assert_eq!((r.workers(50), r.queue_size(50)), (16, 250));
/// let r = MaintenanceConfig::default().max_active_conns(150).validate().unwrap();
/// assert_eq!((r.workers(100), r.queue_size(100)), (33, 151));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    mode: Mode,
    endpoint_type: EndpointType,
    relaxed_timeout: Duration,
    relaxed_window_max: Duration,
    handoff_timeout: Duration,
    max_handoff_retries: u32,
    max_workers: Option<usize>,
    handoff_queue_size: Option<usize>,
    max_active_conns: Option<usize>,
    post_handoff_relaxed_duration: Duration,
    circuit_breaker_failure_threshold: u32,
    circuit_breaker_reset_timeout: Duration,
    circuit_breaker_max_requests: u32,
    dns_lookup_timeout: Duration,
    dedup_ttl: Duration,
}

impl Default for Resolved {
    /// The defaults, validated.
    fn default() -> Self {
        MaintenanceConfig::default()
            .validate()
            .expect("the default maintenance configuration is valid")
    }
}

impl Resolved {
    /// The opt-in mode.
    ///
    /// ```
    /// use redis_layers::maint::{Mode, Resolved};
    /// assert_eq!(Resolved::default().mode(), Mode::Auto);
    /// ```
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// True if the handshake is sent (mode `Auto` or `Enabled`).
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert!(Resolved::default().mode_sends());
    /// ```
    pub fn mode_sends(&self) -> bool {
        self.mode.sends_handshake()
    }

    /// The configured endpoint type (possibly `Auto`; see
    /// [`endpoint_type_for`](Self::endpoint_type_for)).
    ///
    /// ```
    /// use redis_layers::maint::{EndpointType, Resolved};
    /// assert_eq!(Resolved::default().endpoint_type(), EndpointType::Auto);
    /// ```
    pub fn endpoint_type(&self) -> EndpointType {
        self.endpoint_type
    }

    /// The endpoint type to send for one configured address, or `None` when
    /// the mode is `Disabled` (no handshake, and no lookup). Resolve it once
    /// per configured address, not per connection.
    ///
    /// ```
    /// use redis_layers::maint::{MaintenanceConfig, Mode, ResolvedEndpointType};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let cfg = MaintenanceConfig::default().validate().unwrap();
    /// assert_eq!(cfg.endpoint_type_for("10.1.2.3", false).await, Some(ResolvedEndpointType::InternalIp));
    /// let off = MaintenanceConfig::default().mode(Mode::Disabled).validate().unwrap();
    /// assert_eq!(off.endpoint_type_for("redis.example.com", true).await, None);
    /// # });
    /// ```
    pub async fn endpoint_type_for(&self, host: &str, tls: bool) -> Option<ResolvedEndpointType> {
        if !self.mode_sends() {
            return None;
        }
        Some(resolve_endpoint_type(self.endpoint_type, host, tls, self.dns_lookup_timeout).await)
    }

    /// The timeout used while relaxed.
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().relaxed_timeout().as_secs(), 10);
    /// ```
    pub fn relaxed_timeout(&self) -> Duration {
        self.relaxed_timeout
    }

    /// The backstop of a relaxation (default 3 x `relaxed_timeout`).
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().relaxed_window_max().as_secs(), 30);
    /// ```
    pub fn relaxed_window_max(&self) -> Duration {
        self.relaxed_window_max
    }

    /// The bound on one handoff attempt.
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().handoff_timeout().as_secs(), 15);
    /// ```
    pub fn handoff_timeout(&self) -> Duration {
        self.handoff_timeout
    }

    /// How many times a handoff is attempted (1..=10).
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().max_handoff_retries(), 3);
    /// ```
    pub fn max_handoff_retries(&self) -> u32 {
        self.max_handoff_retries
    }

    /// The configured worker count; `None` = automatic ([`workers`](Self::workers)).
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().max_workers(), None);
    /// ```
    pub fn max_workers(&self) -> Option<usize> {
        self.max_workers
    }

    /// The configured queue size; `None` = automatic ([`queue_size`](Self::queue_size)).
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().handoff_queue_size(), None);
    /// ```
    pub fn handoff_queue_size(&self) -> Option<usize> {
        self.handoff_queue_size
    }

    /// The pool's bound on active connections, if set.
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().max_active_conns(), None);
    /// ```
    pub fn max_active_conns(&self) -> Option<usize> {
        self.max_active_conns
    }

    /// How long a connection stays relaxed after a handoff (default
    /// 2 x `relaxed_timeout`).
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().post_handoff_relaxed_duration().as_secs(), 20);
    /// ```
    pub fn post_handoff_relaxed_duration(&self) -> Duration {
        self.post_handoff_relaxed_duration
    }

    /// Failures per endpoint that open the circuit breaker.
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().circuit_breaker_failure_threshold(), 5);
    /// ```
    pub fn circuit_breaker_failure_threshold(&self) -> u32 {
        self.circuit_breaker_failure_threshold
    }

    /// How long an open breaker waits before half-opening.
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().circuit_breaker_reset_timeout().as_secs(), 60);
    /// ```
    pub fn circuit_breaker_reset_timeout(&self) -> Duration {
        self.circuit_breaker_reset_timeout
    }

    /// Trial handoffs a half-open breaker lets through.
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().circuit_breaker_max_requests(), 3);
    /// ```
    pub fn circuit_breaker_max_requests(&self) -> u32 {
        self.circuit_breaker_max_requests
    }

    /// The bound on the endpoint-type DNS lookup.
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().dns_lookup_timeout().as_secs(), 2);
    /// ```
    pub fn dns_lookup_timeout(&self) -> Duration {
        self.dns_lookup_timeout
    }

    /// How long seen sequence numbers are remembered.
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// assert_eq!(Resolved::default().dedup_ttl().as_secs(), 600);
    /// ```
    pub fn dedup_ttl(&self) -> Duration {
        self.dedup_ttl
    }

    /// The number of handoff workers for a pool of `pool_size` connections:
    /// `max_workers` if set, else `min(P/2, max(10, P/3))` with integer
    /// (floor) division, and at least 1 (so tiny pools still get a worker:
    /// the formula gives 0 for P = 0 or 1).
    ///
    /// ```
    /// use redis_layers::maint::Resolved;
    /// let r = Resolved::default();
    /// assert_eq!(r.workers(100), 33); // min(50, max(10, 33))
    /// assert_eq!(r.workers(50), 16); // min(25, max(10, 16))
    /// assert_eq!(r.workers(20), 10); // min(10, max(10, 6))
    /// assert_eq!(r.workers(8), 4); // min(4, 10)
    /// assert_eq!(r.workers(1), 1); // 0, raised to 1
    /// ```
    pub fn workers(&self, pool_size: usize) -> usize {
        self.max_workers
            .unwrap_or_else(|| (pool_size / 2).min((pool_size / 3).max(10)))
            .max(1)
    }

    /// The handoff queue capacity for a pool of `pool_size` connections:
    /// `handoff_queue_size` if set, else `max(20 x workers, P)` capped at
    /// `max_active_conns + 1` when that is set, otherwise at `5 x P`, and at
    /// least 1. `workers` is [`workers(pool_size)`](Self::workers), so an
    /// explicit `max_workers` feeds the automatic queue size.
    ///
    /// ```
    /// use redis_layers::maint::{MaintenanceConfig, Resolved};
    /// let r = Resolved::default();
    /// assert_eq!(r.queue_size(100), 500); // max(660, 100) capped at 500
    /// assert_eq!(r.queue_size(50), 250); // max(320, 50) capped at 250
    /// let r = MaintenanceConfig::default().max_active_conns(150).validate().unwrap();
    /// assert_eq!(r.queue_size(100), 151); // max(660, 100) capped at 151
    /// ```
    pub fn queue_size(&self, pool_size: usize) -> usize {
        if let Some(size) = self.handoff_queue_size {
            return size;
        }
        let wanted = self.workers(pool_size).saturating_mul(20).max(pool_size);
        let cap = match self.max_active_conns {
            Some(max) => max.saturating_add(1),
            None => pool_size.saturating_mul(5),
        };
        wanted.min(cap).max(1)
    }
}

/// True for addresses that are not reachable from the public internet:
/// loopback (127/8, `::1`), unspecified (`0.0.0.0`, `::`, which dial the
/// local host), RFC 1918 private (10/8, 172.16/12, 192.168/16), link-local
/// (169.254/16, fe80::/10), CGNAT / RFC 6598 (100.64/10), IPv6 unique local
/// (fc00::/7, RFC 4193), and IPv4-mapped IPv6 forms (`::ffff:10.0.0.1`) of
/// those.
///
/// ```
/// use redis_layers::maint::is_internal_ip;
///
/// assert!(is_internal_ip("10.0.0.1".parse().unwrap()));
/// assert!(is_internal_ip("fd00::1".parse().unwrap()));
/// assert!(!is_internal_ip("8.8.8.8".parse().unwrap()));
/// ```
pub fn is_internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(v6),
        },
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (b & 0xc0) == 64)
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || ip.is_unique_local() || ip.is_unicast_link_local()
}

/// The IP of an IP-literal host: `10.0.0.1`, `::1`, `[::1]`, `fe80::1%eth0`.
fn ip_literal(host: &str) -> Option<IpAddr> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let addr = host.split_once('%').map_or(host, |(a, _)| a);
    addr.parse().ok()
}

/// Resolves the `moving-endpoint-type` to send for one configured address.
///
/// A concrete `configured` type is returned as is, with no lookup. `Auto`
/// becomes `*-fqdn` with TLS (so SNI and certificate checks keep working
/// after a handoff) and `*-ip` without, and `internal-*` when the host is
/// internal: an IP literal for which [`is_internal_ip`] holds, or a host
/// name whose addresses (looked up with `tokio::net::lookup_host`, bounded by
/// `lookup_timeout`) are **all** internal. A lookup that fails, times out or
/// returns nothing, and an empty host, count as external.
///
/// Call it once per configured address (not per connection), and not at all
/// when the mode is `Disabled` ([`Resolved::endpoint_type_for`] does both).
/// Needs a tokio runtime with the time driver for host names.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::maint::{resolve_endpoint_type, EndpointType, ResolvedEndpointType};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let t = Duration::from_secs(2);
/// let auto = EndpointType::Auto;
/// assert_eq!(resolve_endpoint_type(auto, "127.0.0.1", false, t).await, ResolvedEndpointType::InternalIp);
/// assert_eq!(resolve_endpoint_type(auto, "192.168.1.5", true, t).await, ResolvedEndpointType::InternalFqdn);
/// assert_eq!(resolve_endpoint_type(auto, "203.0.113.7", false, t).await, ResolvedEndpointType::ExternalIp);
/// assert_eq!(
///     resolve_endpoint_type(EndpointType::None, "anything", true, t).await,
///     ResolvedEndpointType::None,
/// );
/// # });
/// ```
pub async fn resolve_endpoint_type(
    configured: EndpointType,
    host: &str,
    tls: bool,
    lookup_timeout: Duration,
) -> ResolvedEndpointType {
    resolve_with(configured, host, tls, lookup_timeout, |h| async move {
        tokio::net::lookup_host((h, 0u16))
            .await
            .map(|addrs| addrs.map(|a| a.ip()).collect())
    })
    .await
}

/// [`resolve_endpoint_type`] with an injectable lookup (for tests).
async fn resolve_with<F, Fut>(
    configured: EndpointType,
    host: &str,
    tls: bool,
    lookup_timeout: Duration,
    lookup: F,
) -> ResolvedEndpointType
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = io::Result<Vec<IpAddr>>>,
{
    if let Some(concrete) = configured.resolved() {
        return concrete;
    }
    let host = host.trim();
    let internal = match ip_literal(host) {
        Some(ip) => is_internal_ip(ip),
        None if host.is_empty() => false,
        None => match tokio::time::timeout(lookup_timeout, lookup(host.to_owned())).await {
            Ok(Ok(ips)) => !ips.is_empty() && ips.into_iter().all(is_internal_ip),
            Ok(Err(_)) | Err(_) => false,
        },
    };
    match (internal, tls) {
        (true, true) => ResolvedEndpointType::InternalFqdn,
        (true, false) => ResolvedEndpointType::InternalIp,
        (false, true) => ResolvedEndpointType::ExternalFqdn,
        (false, false) => ResolvedEndpointType::ExternalIp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn defaults_match_spec_section_4() {
        let c = MaintenanceConfig::default();
        assert_eq!(c.mode, Mode::Auto);
        assert_eq!(c.endpoint_type, EndpointType::Auto);
        let r = c.validate().unwrap();
        assert_eq!(r.mode(), Mode::Auto);
        assert_eq!(r.endpoint_type(), EndpointType::Auto);
        assert_eq!(r.relaxed_timeout(), secs(10));
        assert_eq!(r.relaxed_window_max(), secs(30));
        assert_eq!(r.handoff_timeout(), secs(15));
        assert_eq!(r.max_handoff_retries(), 3);
        assert_eq!(r.max_workers(), None);
        assert_eq!(r.handoff_queue_size(), None);
        assert_eq!(r.max_active_conns(), None);
        assert_eq!(r.post_handoff_relaxed_duration(), secs(20));
        assert_eq!(r.circuit_breaker_failure_threshold(), 5);
        assert_eq!(r.circuit_breaker_reset_timeout(), secs(60));
        assert_eq!(r.circuit_breaker_max_requests(), 3);
        assert_eq!(r.dns_lookup_timeout(), secs(2));
        assert_eq!(r.dedup_ttl(), secs(600));
        assert!(r.mode_sends() && c.mode_sends());
        assert_eq!(r, Resolved::default());
    }

    #[test]
    fn derived_defaults_follow_relaxed_timeout_unless_set() {
        let r = MaintenanceConfig::default()
            .relaxed_timeout(Duration::from_millis(1500))
            .validate()
            .unwrap();
        assert_eq!(r.relaxed_window_max(), Duration::from_millis(4500));
        assert_eq!(r.post_handoff_relaxed_duration(), secs(3));
        let r = MaintenanceConfig::default()
            .relaxed_timeout(secs(1))
            .relaxed_window_max(secs(7))
            .post_handoff_relaxed_duration(secs(9))
            .validate()
            .unwrap();
        assert_eq!(r.relaxed_window_max(), secs(7));
        assert_eq!(r.post_handoff_relaxed_duration(), secs(9));
        // Back to automatic.
        let r = MaintenanceConfig::default()
            .relaxed_window_max(secs(7))
            .relaxed_window_max(None)
            .validate()
            .unwrap();
        assert_eq!(r.relaxed_window_max(), secs(30));
        // Huge values are clamped to MAX_TIMEOUT instead of overflowing.
        let r = MaintenanceConfig::default()
            .relaxed_timeout(Duration::MAX)
            .validate()
            .unwrap();
        assert_eq!(r.relaxed_timeout(), crate::MAX_TIMEOUT);
        assert_eq!(r.relaxed_window_max(), crate::MAX_TIMEOUT);
        assert_eq!(r.post_handoff_relaxed_duration(), crate::MAX_TIMEOUT);
    }

    #[test]
    fn every_setter_reaches_resolved() {
        let r = MaintenanceConfig::new()
            .mode(Mode::Enabled)
            .endpoint_type(EndpointType::ExternalFqdn)
            .relaxed_timeout(secs(1))
            .relaxed_window_max(secs(2))
            .handoff_timeout(secs(3))
            .max_handoff_retries(4)
            .max_workers(5)
            .handoff_queue_size(6)
            .max_active_conns(7)
            .post_handoff_relaxed_duration(secs(8))
            .circuit_breaker_failure_threshold(9)
            .circuit_breaker_reset_timeout(secs(10))
            .circuit_breaker_max_requests(11)
            .dns_lookup_timeout(secs(12))
            .dedup_ttl(secs(13))
            .validate()
            .unwrap();
        assert_eq!(r.mode(), Mode::Enabled);
        assert_eq!(r.endpoint_type(), EndpointType::ExternalFqdn);
        assert_eq!(r.relaxed_timeout(), secs(1));
        assert_eq!(r.relaxed_window_max(), secs(2));
        assert_eq!(r.handoff_timeout(), secs(3));
        assert_eq!(r.max_handoff_retries(), 4);
        assert_eq!(r.max_workers(), Some(5));
        assert_eq!(r.handoff_queue_size(), Some(6));
        assert_eq!(r.max_active_conns(), Some(7));
        assert_eq!(r.post_handoff_relaxed_duration(), secs(8));
        assert_eq!(r.circuit_breaker_failure_threshold(), 9);
        assert_eq!(r.circuit_breaker_reset_timeout(), secs(10));
        assert_eq!(r.circuit_breaker_max_requests(), 11);
        assert_eq!(r.dns_lookup_timeout(), secs(12));
        assert_eq!(r.dedup_ttl(), secs(13));
        assert_eq!(r.workers(1000), 5);
        assert_eq!(r.queue_size(1000), 6);
    }

    #[test]
    fn invalid_values_are_rejected_naming_the_field() {
        let d0 = Duration::ZERO;
        let base = MaintenanceConfig::default;
        let cases: Vec<(MaintenanceConfig, &str, &str)> = vec![
            (
                base().relaxed_timeout(d0),
                "relaxed_timeout",
                "relaxed_timeout must be greater than zero, got 0ns",
            ),
            (
                base().relaxed_window_max(d0),
                "relaxed_window_max",
                "relaxed_window_max must be greater than zero, got 0ns",
            ),
            (
                base().handoff_timeout(d0),
                "handoff_timeout",
                "handoff_timeout must be greater than zero, got 0ns",
            ),
            (
                base().max_handoff_retries(0),
                "max_handoff_retries",
                "max_handoff_retries must be in 1..=10, got 0",
            ),
            (
                base().max_handoff_retries(11),
                "max_handoff_retries",
                "max_handoff_retries must be in 1..=10, got 11",
            ),
            (
                base().max_workers(0),
                "max_workers",
                "max_workers must be at least 1 (or None for automatic), got 0",
            ),
            (
                base().handoff_queue_size(0),
                "handoff_queue_size",
                "handoff_queue_size must be at least 1 (or None for automatic), got 0",
            ),
            (
                base().max_active_conns(0),
                "max_active_conns",
                "max_active_conns must be at least 1 (or None for automatic), got 0",
            ),
            (
                base().post_handoff_relaxed_duration(d0),
                "post_handoff_relaxed_duration",
                "post_handoff_relaxed_duration must be greater than zero, got 0ns",
            ),
            (
                base().circuit_breaker_failure_threshold(0),
                "circuit_breaker_failure_threshold",
                "circuit_breaker_failure_threshold must be at least 1, got 0",
            ),
            (
                base().circuit_breaker_reset_timeout(d0),
                "circuit_breaker_reset_timeout",
                "circuit_breaker_reset_timeout must be greater than zero, got 0ns",
            ),
            (
                base().circuit_breaker_max_requests(0),
                "circuit_breaker_max_requests",
                "circuit_breaker_max_requests must be at least 1, got 0",
            ),
            (
                base().dns_lookup_timeout(d0),
                "dns_lookup_timeout",
                "dns_lookup_timeout must be greater than zero, got 0ns",
            ),
            (
                base().dedup_ttl(d0),
                "dedup_ttl",
                "dedup_ttl must be greater than zero, got 0ns",
            ),
        ];
        for (cfg, field, msg) in cases {
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.field(), field);
            assert_eq!(err.to_string(), msg);
            let e: crate::Error = err.into();
            assert_eq!(e.to_string(), format!("invalid configuration: {msg}"));
        }
        for retries in 1..=10 {
            assert!(base().max_handoff_retries(retries).validate().is_ok());
        }
        // Disabled mode validates too: a bad value is never silently ignored.
        assert!(base()
            .mode(Mode::Disabled)
            .dedup_ttl(d0)
            .validate()
            .is_err());
    }

    #[test]
    fn autoscale_worked_examples() {
        let r = Resolved::default();
        assert_eq!((r.workers(100), r.queue_size(100)), (33, 500));
        assert_eq!((r.workers(50), r.queue_size(50)), (16, 250));
        let r = MaintenanceConfig::default()
            .max_active_conns(150)
            .validate()
            .unwrap();
        assert_eq!((r.workers(100), r.queue_size(100)), (33, 151));
    }

    #[test]
    fn autoscale_formula_across_pool_sizes() {
        let r = Resolved::default();
        for p in 0..5000usize {
            let w = r.workers(p);
            assert_eq!(w, (p / 2).min((p / 3).max(10)).max(1), "P={p}");
            assert!(w >= 1 && (w <= p / 2 || p < 2), "P={p} w={w}");
            let q = r.queue_size(p);
            assert_eq!(q, (20 * w).max(p).min(5 * p).max(1), "P={p}");
        }
        assert_eq!(r.workers(10), 5);
        assert_eq!(r.workers(20), 10);
        assert_eq!(r.workers(30), 10);
        assert_eq!(r.workers(33), 11);
        assert_eq!(r.workers(1000), 333);
        assert_eq!(r.queue_size(1000), 5000); // max(6660, 1000) capped at 5 x 1000
        assert_eq!(r.queue_size(1), 5);
        assert_eq!(r.queue_size(0), 1);
        assert_eq!(r.workers(usize::MAX), usize::MAX / 3);
        assert_eq!(r.queue_size(usize::MAX), usize::MAX);
        // max_active_conns cap, above and below the natural size.
        let r = MaintenanceConfig::default()
            .max_active_conns(1000)
            .validate()
            .unwrap();
        assert_eq!(r.queue_size(100), 660);
        let r = MaintenanceConfig::default()
            .max_active_conns(usize::MAX)
            .validate()
            .unwrap();
        assert_eq!(r.queue_size(100), 660);
        // Explicit workers feed the automatic queue size.
        let r = MaintenanceConfig::default()
            .max_workers(2)
            .validate()
            .unwrap();
        assert_eq!((r.workers(100), r.queue_size(100)), (2, 100));
        assert_eq!(r.workers(0), 2);
    }

    #[test]
    fn names_round_trip() {
        for m in [Mode::Auto, Mode::Enabled, Mode::Disabled] {
            assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
            assert_eq!(m.to_string().to_uppercase().parse::<Mode>().unwrap(), m);
        }
        let err = "on".parse::<Mode>().unwrap_err();
        assert_eq!(err.field(), "mode");
        for t in ResolvedEndpointType::ALL {
            assert_eq!(t.as_str().parse::<ResolvedEndpointType>().unwrap(), t);
            assert_eq!(
                t.to_string().parse::<EndpointType>().unwrap(),
                EndpointType::from(t)
            );
            assert_eq!(EndpointType::from(t).resolved(), Some(t));
            assert_eq!(EndpointType::from(t).as_str(), t.as_str());
        }
        assert_eq!("AUTO".parse::<EndpointType>().unwrap(), EndpointType::Auto);
        assert!("auto".parse::<ResolvedEndpointType>().is_err());
        assert_eq!(
            "ip".parse::<EndpointType>().unwrap_err().field(),
            "endpoint_type"
        );
        let wire: Vec<_> = ResolvedEndpointType::ALL
            .iter()
            .map(|t| t.as_str())
            .collect();
        assert_eq!(
            wire,
            [
                "internal-ip",
                "internal-fqdn",
                "external-ip",
                "external-fqdn",
                "none"
            ]
        );
        assert!(ResolvedEndpointType::InternalIp.is_internal());
        assert!(!ResolvedEndpointType::ExternalIp.is_internal());
        assert!(ResolvedEndpointType::InternalFqdn.is_fqdn());
        assert!(!ResolvedEndpointType::None.is_fqdn());
    }

    #[test]
    fn ip_classification() {
        let internal = [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "10.0.0.0",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "192.168.255.255",
            "169.254.0.1",
            "169.254.169.254",
            "100.64.0.0",
            "100.100.1.1",
            "100.127.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456:789a::1",
            "fdff:ffff::1",
            "fe80::1",
            "febf::1",
            "::ffff:10.1.2.3",
            "::ffff:127.0.0.1",
            "::ffff:100.64.0.1",
        ];
        let external = [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "203.0.113.7",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "fbff::1",
            "fe00::1",
            "fec0::1",
            "ff02::1",
            "::ffff:8.8.8.8",
            "::2",
        ];
        for s in internal {
            assert!(is_internal_ip(s.parse().unwrap()), "{s} should be internal");
        }
        for s in external {
            assert!(
                !is_internal_ip(s.parse().unwrap()),
                "{s} should be external"
            );
        }
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("fe80::1%eth0"), Some("fe80::1".parse().unwrap()));
        assert_eq!(ip_literal("[fe80::1%2]"), Some("fe80::1".parse().unwrap()));
        assert_eq!(ip_literal("localhost"), None);
    }

    /// A lookup that must not be called.
    async fn no_lookup(_: String) -> io::Result<Vec<IpAddr>> {
        panic!("no DNS lookup expected")
    }

    #[tokio::test]
    async fn ip_literals_resolve_without_lookup() {
        use ResolvedEndpointType as R;
        let t = secs(2);
        let cases = [
            ("127.0.0.1", false, R::InternalIp),
            ("127.0.0.1", true, R::InternalFqdn),
            ("10.1.2.3", false, R::InternalIp),
            ("[::1]", true, R::InternalFqdn),
            ("fd00::7", false, R::InternalIp),
            (" 192.168.1.1 ", false, R::InternalIp),
            ("8.8.8.8", false, R::ExternalIp),
            ("8.8.8.8", true, R::ExternalFqdn),
            ("[2001:db8::1]", true, R::ExternalFqdn),
            ("", false, R::ExternalIp),
            ("", true, R::ExternalFqdn),
        ];
        for (host, tls, want) in cases {
            let got = resolve_with(EndpointType::Auto, host, tls, t, no_lookup).await;
            assert_eq!(got, want, "{host} tls={tls}");
            assert_eq!(
                resolve_endpoint_type(EndpointType::Auto, host, tls, t).await,
                want
            );
        }
    }

    #[tokio::test]
    async fn concrete_type_does_no_lookup() {
        for t in ResolvedEndpointType::ALL {
            for tls in [false, true] {
                let got = resolve_with(
                    EndpointType::from(t),
                    "redis.example.com",
                    tls,
                    secs(2),
                    no_lookup,
                )
                .await;
                assert_eq!(got, t);
            }
        }
        // Through the public function: an unresolvable name with a concrete
        // type comes back at once.
        let start = Instant::now();
        let got = resolve_endpoint_type(
            EndpointType::ExternalIp,
            "nonexistent.invalid",
            false,
            secs(30),
        )
        .await;
        assert_eq!(got, ResolvedEndpointType::ExternalIp);
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn hostnames_are_internal_only_if_all_addresses_are() {
        use ResolvedEndpointType as R;
        let ips = |list: &'static [&'static str]| {
            move |_: String| async move {
                Ok::<_, io::Error>(list.iter().map(|s| s.parse().unwrap()).collect())
            }
        };
        let auto = EndpointType::Auto;
        let t = secs(2);
        assert_eq!(
            resolve_with(auto, "db.internal", false, t, ips(&["10.0.0.1", "fd00::1"])).await,
            R::InternalIp
        );
        assert_eq!(
            resolve_with(auto, "db.internal", true, t, ips(&["10.0.0.1"])).await,
            R::InternalFqdn
        );
        assert_eq!(
            resolve_with(auto, "db.mixed", false, t, ips(&["10.0.0.1", "8.8.8.8"])).await,
            R::ExternalIp
        );
        assert_eq!(
            resolve_with(auto, "db.empty", true, t, ips(&[])).await,
            R::ExternalFqdn
        );
        let failing = |_: String| async { Err::<Vec<IpAddr>, _>(io::Error::other("NXDOMAIN")) };
        assert_eq!(
            resolve_with(auto, "db.fail", false, t, failing).await,
            R::ExternalIp
        );
        // The lookup gets the host as configured (trimmed).
        let calls = AtomicUsize::new(0);
        let seen = |h: String| {
            calls.fetch_add(1, Ordering::SeqCst);
            assert_eq!(h, "cache.local");
            async { Ok(vec!["192.168.0.9".parse().unwrap()]) }
        };
        assert_eq!(
            resolve_with(auto, " cache.local ", false, t, seen).await,
            R::InternalIp
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn hanging_lookup_is_bounded() {
        let start = Instant::now();
        let hang = |_: String| std::future::pending::<io::Result<Vec<IpAddr>>>();
        let got = resolve_with(
            EndpointType::Auto,
            "slow.example",
            true,
            Duration::from_millis(50),
            hang,
        )
        .await;
        assert_eq!(got, ResolvedEndpointType::ExternalFqdn);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(50) && took < secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let t = secs(2);
        assert_eq!(
            resolve_endpoint_type(EndpointType::Auto, "localhost", false, t).await,
            ResolvedEndpointType::InternalIp
        );
        assert_eq!(
            resolve_endpoint_type(EndpointType::Auto, "localhost", true, t).await,
            ResolvedEndpointType::InternalFqdn
        );
    }

    #[tokio::test]
    async fn unresolvable_name_is_external_and_bounded() {
        let start = Instant::now();
        let limit = Duration::from_millis(1500);
        let got =
            resolve_endpoint_type(EndpointType::Auto, "nonexistent.invalid", false, limit).await;
        assert_eq!(got, ResolvedEndpointType::ExternalIp);
        let got =
            resolve_endpoint_type(EndpointType::Auto, "nonexistent.invalid", true, limit).await;
        assert_eq!(got, ResolvedEndpointType::ExternalFqdn);
        assert!(
            start.elapsed() < 2 * limit + secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn disabled_mode_resolves_nothing() {
        let r = MaintenanceConfig::default()
            .mode(Mode::Disabled)
            .dns_lookup_timeout(secs(30))
            .validate()
            .unwrap();
        let start = Instant::now();
        assert_eq!(
            r.endpoint_type_for("nonexistent.invalid", false).await,
            None
        );
        assert!(start.elapsed() < Duration::from_millis(100));
        let r = MaintenanceConfig::default()
            .endpoint_type(EndpointType::InternalFqdn)
            .validate()
            .unwrap();
        assert_eq!(
            r.endpoint_type_for("8.8.8.8", false).await,
            Some(ResolvedEndpointType::InternalFqdn)
        );
        let r = Resolved::default();
        assert_eq!(
            r.endpoint_type_for("::1", false).await,
            Some(ResolvedEndpointType::InternalIp)
        );
    }
}

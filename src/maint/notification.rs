//! Maintenance notifications: the typed form of the RESP3 push frames a
//! managed Redis sends before, during and after maintenance, their lenient
//! parser, and sequence-number de-duplication.
//!
//! The wire formats are in the [maintenance contract, section
//! 2](crate::docs::maintenance#2-wire-formats).

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::hash::Hash;
use std::net::Ipv6Addr;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::resp::Value;

/// The number of hash slots in a Redis cluster; valid slots are
/// `0..=16383`.
///
/// ```
/// assert_eq!(redis_layers::maint::SLOT_COUNT, 16384);
/// ```
pub const SLOT_COUNT: u16 = 16384;

/// The longest `time` a notification may announce: 1 hour.
///
/// The `time` of `MOVING`, `MIGRATING` and `FAILING_OVER` comes from the
/// server, and deadlines are computed from it; real maintenance announces
/// seconds (`MOVING` 15 to 30 s). [`Notification::parse`] clamps a longer
/// time to this, and a negative one to zero, so no server can push a
/// deadline past the clock's range.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::maint::{Notification, MAX_NOTIFICATION_TIME};
/// use redis_layers::Value;
///
/// assert_eq!(MAX_NOTIFICATION_TIME, Duration::from_secs(3600));
/// let moving = |t| Value::Push(vec![Value::BulkString("MOVING".into()), Value::Integer(1), Value::Integer(t)]);
/// let time = |t| Notification::parse(&moving(t)).unwrap().unwrap().time().unwrap();
/// assert_eq!(time(i64::MAX), MAX_NOTIFICATION_TIME);
/// assert_eq!(time(-5), Duration::ZERO);
/// assert_eq!(time(30), Duration::from_secs(30));
/// ```
pub const MAX_NOTIFICATION_TIME: Duration = Duration::from_secs(3600);

/// The kind of a maintenance notification: the first element of its push
/// frame.
///
/// ```
/// use redis_layers::maint::Kind;
///
/// assert_eq!(Kind::from_name(b"failing_over"), Some(Kind::FailingOver));
/// assert_eq!(Kind::FailingOver.as_str(), "FAILING_OVER");
/// assert!(Kind::Migrating.is_start() && Kind::Migrated.is_end());
/// assert!(!Kind::Moving.is_start() && !Kind::Moving.is_end());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// `MOVING`: the endpoint goes away; hand connections off.
    Moving,
    /// `MIGRATING`: a shard migration starts soon; relax timeouts.
    Migrating,
    /// `MIGRATED`: the migration is over; end the relaxation.
    Migrated,
    /// `FAILING_OVER`: a failover starts soon; relax timeouts.
    FailingOver,
    /// `FAILED_OVER`: the failover is over; end the relaxation.
    FailedOver,
    /// `SMIGRATING`: cluster slots are being migrated; relax timeouts.
    SMigrating,
    /// `SMIGRATED`: the slots moved; end the relaxation, update the slot map.
    SMigrated,
}

impl Kind {
    /// Every kind, in the order of the table in the
    /// [maintenance contract](crate::docs::maintenance), section 2.
    ///
    /// ```
    /// use redis_layers::maint::Kind;
    /// assert!(Kind::ALL.iter().all(|k| Kind::from_name(k.as_str().as_bytes()) == Some(*k)));
    /// ```
    pub const ALL: [Kind; 7] = [
        Kind::Moving,
        Kind::Migrating,
        Kind::Migrated,
        Kind::FailingOver,
        Kind::FailedOver,
        Kind::SMigrating,
        Kind::SMigrated,
    ];

    /// The name as on the wire (`MOVING`, `FAILING_OVER`, ...).
    ///
    /// ```
    /// use redis_layers::maint::Kind;
    /// assert_eq!(Kind::SMigrated.as_str(), "SMIGRATED");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Moving => "MOVING",
            Kind::Migrating => "MIGRATING",
            Kind::Migrated => "MIGRATED",
            Kind::FailingOver => "FAILING_OVER",
            Kind::FailedOver => "FAILED_OVER",
            Kind::SMigrating => "SMIGRATING",
            Kind::SMigrated => "SMIGRATED",
        }
    }

    /// The kind a push name denotes, in any case; `None` for other pushes.
    ///
    /// ```
    /// use redis_layers::maint::Kind;
    /// assert_eq!(Kind::from_name(b"Moving"), Some(Kind::Moving));
    /// assert_eq!(Kind::from_name(b"message"), None);
    /// ```
    pub fn from_name(name: &[u8]) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    /// True for the kinds that start a relaxation of timeouts: `MIGRATING`,
    /// `FAILING_OVER`, `SMIGRATING`.
    ///
    /// ```
    /// use redis_layers::maint::Kind;
    /// assert!(Kind::SMigrating.is_start());
    /// assert!(!Kind::SMigrated.is_start());
    /// ```
    pub fn is_start(self) -> bool {
        matches!(self, Kind::Migrating | Kind::FailingOver | Kind::SMigrating)
    }

    /// True for the kinds that end a relaxation: `MIGRATED`, `FAILED_OVER`,
    /// `SMIGRATED`.
    ///
    /// ```
    /// use redis_layers::maint::Kind;
    /// assert!(Kind::FailedOver.is_end());
    /// assert!(!Kind::FailingOver.is_end());
    /// ```
    pub fn is_end(self) -> bool {
        matches!(self, Kind::Migrated | Kind::FailedOver | Kind::SMigrated)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a maintenance push frame, a slot list or an endpoint could not be
/// parsed.
///
/// ```
/// use redis_layers::maint::{Kind, Notification};
/// use redis_layers::Value;
///
/// let v = Value::Push(vec![Value::SimpleString("MOVING".into()), Value::SimpleString("x".into())]);
/// let err = Notification::parse(&v).unwrap().unwrap_err();
/// assert_eq!(err.kind(), Some(Kind::Moving));
/// assert!(err.to_string().starts_with("malformed MOVING notification: "));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    kind: Option<Kind>,
    msg: String,
}

impl ParseError {
    fn new(msg: impl Into<String>) -> Self {
        ParseError {
            kind: None,
            msg: msg.into(),
        }
    }

    fn in_kind(mut self, kind: Kind) -> Self {
        self.kind = Some(kind);
        self
    }

    fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    /// The kind of the malformed notification; `None` when a slot list or an
    /// endpoint was parsed on its own.
    ///
    /// ```
    /// use redis_layers::maint::SlotSet;
    /// assert_eq!("99999".parse::<SlotSet>().unwrap_err().kind(), None);
    /// ```
    pub fn kind(&self) -> Option<Kind> {
        self.kind
    }

    /// What was wrong, without the kind.
    ///
    /// ```
    /// use redis_layers::maint::SlotSet;
    /// let err = "200-100".parse::<SlotSet>().unwrap_err();
    /// assert!(err.message().contains("reversed"));
    /// ```
    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(k) => write!(f, "malformed {k} notification: {}", self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for ParseError {}

/// A `host:port` endpoint named by a notification (`MOVING`'s new endpoint,
/// `SMIGRATED`'s source and destination nodes).
///
/// Parsing splits at the **last** colon, so `host:port`, `[v6]:port` and
/// Redis's unbracketed `::1:6379` all work; brackets are stripped from
/// [`host`](Self::host). A host that contains colons must be an IPv6 address
/// (an optional `%zone` is kept). The port must be 1..=65535.
///
/// ```
/// use redis_layers::maint::MovingEndpoint;
///
/// let e: MovingEndpoint = "[::1]:6380".parse().unwrap();
/// assert_eq!((e.host.as_str(), e.port), ("::1", 6380));
/// assert_eq!("::1:6380".parse::<MovingEndpoint>().unwrap(), e);
/// assert_eq!(e.to_string(), "[::1]:6380");
/// assert!("redis.example.com".parse::<MovingEndpoint>().is_err()); // no port
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MovingEndpoint {
    /// The host name or IP address, without brackets.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl MovingEndpoint {
    /// An endpoint from its parts (not validated).
    ///
    /// ```
    /// use redis_layers::maint::MovingEndpoint;
    /// assert_eq!(MovingEndpoint::new("10.0.0.2", 12000).to_string(), "10.0.0.2:12000");
    /// ```
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        MovingEndpoint {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for MovingEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for MovingEndpoint {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = |why: &str| ParseError::new(format!("bad endpoint {s:?}: {why}"));
        let t = s.trim();
        let (host, port) = t
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => {
                let inner = inner
                    .strip_suffix(']')
                    .ok_or_else(|| bad("unbalanced '['"))?;
                if !is_ipv6(inner) {
                    return Err(bad("bracketed host is not an IPv6 address"));
                }
                inner
            }
            None if host.contains(':') && !is_ipv6(host) => {
                return Err(bad("host with ':' is not an IPv6 address"));
            }
            None => host,
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '[' | ']' | '/'))
        {
            return Err(bad("invalid character in host"));
        }
        let port = parse_digits(port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("port must be 1..=65535"))?;
        Ok(MovingEndpoint::new(host, port))
    }
}

/// An IPv6 literal, with an optional `%zone`.
fn is_ipv6(s: &str) -> bool {
    let addr = s.split_once('%').map_or(s, |(a, _)| a);
    addr.parse::<Ipv6Addr>().is_ok()
}

/// A non-empty run of ASCII digits as a number (no sign, no spaces).
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A set of cluster hash slots, kept as sorted, merged, inclusive ranges.
///
/// Parses the slot lists of `SMIGRATING` and `SMIGRATED`: comma-separated
/// `"123"` and `"100-200"` items, with spaces around items allowed and empty
/// items ignored. Slots must be below [`SLOT_COUNT`] and ranges must not be
/// reversed.
///
/// ```
/// use redis_layers::maint::SlotSet;
///
/// let s: SlotSet = "200, 0-100,101-150".parse().unwrap();
/// assert_eq!(s.ranges(), &[0..=150, 200..=200]);
/// assert_eq!(s.len(), 152);
/// assert!(s.contains(150) && !s.contains(151));
/// assert_eq!(s.to_string(), "0-150,200");
/// assert!("16384".parse::<SlotSet>().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SlotSet {
    ranges: Vec<RangeInclusive<u16>>,
}

impl SlotSet {
    /// The empty set.
    ///
    /// ```
    /// assert!(redis_layers::maint::SlotSet::new().is_empty());
    /// ```
    pub fn new() -> Self {
        SlotSet::default()
    }

    /// A set from ranges in any order, overlapping or not.
    ///
    /// ```
    /// use redis_layers::maint::SlotSet;
    /// let s = SlotSet::from_ranges([5..=9, 0..=4]).unwrap();
    /// assert_eq!(s.ranges(), &[0..=9]);
    /// assert!(SlotSet::from_ranges([9..=5]).is_err());
    /// assert!(SlotSet::from_ranges([0..=16384]).is_err());
    /// ```
    pub fn from_ranges(
        ranges: impl IntoIterator<Item = RangeInclusive<u16>>,
    ) -> Result<SlotSet, ParseError> {
        let mut raw = Vec::new();
        for r in ranges {
            check_range(*r.start(), *r.end())?;
            raw.push(*r.start()..=*r.end());
        }
        Ok(SlotSet::normalized(raw))
    }

    fn normalized(mut raw: Vec<RangeInclusive<u16>>) -> SlotSet {
        raw.sort_unstable_by_key(|r| (*r.start(), *r.end()));
        let mut ranges: Vec<RangeInclusive<u16>> = Vec::with_capacity(raw.len());
        for r in raw {
            match ranges.last_mut() {
                Some(last) if u32::from(*r.start()) <= u32::from(*last.end()) + 1 => {
                    if r.end() > last.end() {
                        *last = *last.start()..=*r.end();
                    }
                }
                _ => ranges.push(r),
            }
        }
        SlotSet { ranges }
    }

    /// Parses one slot-list string and adds its ranges to `raw`.
    fn parse_into(s: &str, raw: &mut Vec<RangeInclusive<u16>>) -> Result<(), ParseError> {
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (a, b) = match item.split_once('-') {
                Some((a, b)) => (parse_slot(a.trim(), item)?, parse_slot(b.trim(), item)?),
                None => {
                    let a = parse_slot(item, item)?;
                    (a, a)
                }
            };
            check_range(a, b)?;
            raw.push(a..=b);
        }
        Ok(())
    }

    /// The sorted, merged, non-adjacent ranges.
    ///
    /// ```
    /// use redis_layers::maint::SlotSet;
    /// assert_eq!("7,5,6".parse::<SlotSet>().unwrap().ranges(), &[5..=7]);
    /// ```
    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.ranges
    }

    /// True if `slot` is in the set.
    ///
    /// ```
    /// use redis_layers::maint::SlotSet;
    /// let s: SlotSet = "0-100,200".parse().unwrap();
    /// assert!(s.contains(200) && !s.contains(199));
    /// ```
    pub fn contains(&self, slot: u16) -> bool {
        let i = self.ranges.partition_point(|r| *r.end() < slot);
        self.ranges.get(i).is_some_and(|r| *r.start() <= slot)
    }

    /// The slots, ascending.
    ///
    /// ```
    /// use redis_layers::maint::SlotSet;
    /// let s: SlotSet = "3,0-1".parse().unwrap();
    /// assert_eq!(s.iter().collect::<Vec<_>>(), [0, 1, 3]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges.iter().flat_map(|r| *r.start()..=*r.end())
    }

    /// The number of slots.
    ///
    /// ```
    /// use redis_layers::maint::SlotSet;
    /// assert_eq!("0-16383".parse::<SlotSet>().unwrap().len(), 16384);
    /// ```
    pub fn len(&self) -> usize {
        self.ranges
            .iter()
            .map(|r| usize::from(*r.end() - *r.start()) + 1)
            .sum()
    }

    /// True if the set holds no slot.
    ///
    /// ```
    /// use redis_layers::maint::SlotSet;
    /// assert!(" , ".parse::<SlotSet>().unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

fn parse_slot(s: &str, item: &str) -> Result<u16, ParseError> {
    let n = parse_digits(s)
        .ok_or_else(|| ParseError::new(format!("bad slot item {item:?}: not a number")))?;
    if n >= u64::from(SLOT_COUNT) {
        return Err(ParseError::new(format!(
            "bad slot item {item:?}: slot {n} out of range 0..=16383"
        )));
    }
    Ok(n as u16)
}

fn check_range(a: u16, b: u16) -> Result<(), ParseError> {
    if a >= SLOT_COUNT || b >= SLOT_COUNT {
        return Err(ParseError::new(format!(
            "slot range {a}-{b} out of range 0..=16383"
        )));
    }
    if a > b {
        return Err(ParseError::new(format!("reversed slot range {a}-{b}")));
    }
    Ok(())
}

impl FromStr for SlotSet {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut raw = Vec::new();
        SlotSet::parse_into(s, &mut raw)?;
        Ok(SlotSet::normalized(raw))
    }
}

impl fmt::Display for SlotSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

/// One move inside `SMIGRATED`: `slots` went from `src` to `dst`.
///
/// ```
/// use redis_layers::maint::{MovingEndpoint, SlotMove};
///
/// let m = SlotMove {
///     src: Some("127.0.0.1:7001".parse().unwrap()),
///     dst: MovingEndpoint::new("127.0.0.1", 7002),
///     slots: "0-100".parse().unwrap(),
/// };
/// assert!(m.slots.contains(42));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotMove {
    /// The node that gave the slots up; `None` in the oldest form
    /// (`SMIGRATED seq host:port slots...`), which names only the
    /// destination.
    pub src: Option<MovingEndpoint>,
    /// The node that serves the slots now.
    pub dst: MovingEndpoint,
    /// The slots that moved (never empty).
    pub slots: SlotSet,
}

/// A parsed maintenance notification.
///
/// Build one from a push frame with [`Notification::parse`]. Times are exact
/// [`Duration`]s: `"1.5"` seconds stays 1.5 s. A parsed time is at most
/// [`MAX_NOTIFICATION_TIME`] (1 hour; longer ones are clamped to it) and a
/// negative one is zero: the server's numbers are not trusted. Shard ids are the
/// comma-separated ids as strings (empty when the server sent none).
///
/// ```
/// use std::time::Duration;
/// use redis_layers::maint::{Kind, MovingEndpoint, Notification};
/// use redis_layers::resp::Decoder;
/// use bytes::BytesMut;
///
/// let mut buf = BytesMut::from(&b">4\r\n$6\r\nMOVING\r\n:15\r\n:30\r\n$14\r\n10.0.0.2:12000\r\n"[..]);
/// let frame = Decoder::new().decode(&mut buf).unwrap().unwrap();
/// let n = Notification::parse(&frame).unwrap().unwrap();
/// assert_eq!(n, Notification::Moving {
///     seq: 15,
///     time: Duration::from_secs(30),
///     endpoint: Some(MovingEndpoint::new("10.0.0.2", 12000)),
/// });
/// assert_eq!((n.kind(), n.seq()), (Kind::Moving, 15));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notification {
    /// `MOVING seq time [endpoint]`: the endpoint goes away within `time`;
    /// hand connections off to `endpoint`, or (null endpoint) reconnect to
    /// the configured address after `time / 2`.
    Moving {
        /// Sequence number.
        seq: i64,
        /// Time until the old endpoint closes its connections.
        time: Duration,
        /// The new endpoint; `None` for a null endpoint.
        endpoint: Option<MovingEndpoint>,
    },
    /// `MIGRATING seq time [shard ids]`: a migration starts within `time`.
    Migrating {
        /// Sequence number.
        seq: i64,
        /// Time until the migration starts.
        time: Duration,
        /// Affected shard ids (empty if not sent).
        shard_ids: Vec<String>,
    },
    /// `MIGRATED seq [shard ids]`: the migration is over.
    Migrated {
        /// Sequence number.
        seq: i64,
        /// Affected shard ids (empty if not sent).
        shard_ids: Vec<String>,
    },
    /// `FAILING_OVER seq time [shard ids]`: a failover starts within `time`.
    FailingOver {
        /// Sequence number.
        seq: i64,
        /// Time until the failover starts.
        time: Duration,
        /// Affected shard ids (empty if not sent).
        shard_ids: Vec<String>,
    },
    /// `FAILED_OVER seq [shard ids]`: the failover is over.
    FailedOver {
        /// Sequence number.
        seq: i64,
        /// Affected shard ids (empty if not sent).
        shard_ids: Vec<String>,
    },
    /// `SMIGRATING seq slots...`: these cluster slots are being migrated.
    SMigrating {
        /// Sequence number.
        seq: i64,
        /// The slots (never empty).
        slots: SlotSet,
    },
    /// `SMIGRATED seq [[src dst slots] ...]` (or an older form): the slots
    /// moved.
    SMigrated {
        /// Sequence number.
        seq: i64,
        /// The moves, in the order sent.
        moves: Vec<SlotMove>,
    },
}

impl Notification {
    /// Parses a push frame.
    ///
    /// - `None`: `v` is not a push whose first element (a simple, bulk or
    ///   verbatim string) names one of the seven kinds, in any case. Such
    ///   pushes (pub/sub messages, invalidations, unknown kinds) belong to
    ///   the user's push handler.
    /// - `Some(Err(_))`: a maintenance push that is malformed; drop it with
    ///   a warning.
    ///
    /// Leniency: sequence numbers are integers or numeric strings; times are
    /// integers, numeric strings (`"30"`, `"1.5"`) or doubles, clamped to
    /// `0..=`[`MAX_NOTIFICATION_TIME`] (a negative time is zero);
    /// strings may be simple, bulk or verbatim; attributes are ignored.
    /// Arity is checked exactly (extra elements are an error, because they
    /// would mean a format this parser does not know).
    ///
    /// - `MOVING seq time [endpoint]`: the endpoint may be missing, null,
    ///   `""`, `"<nil>"` or `"null"` (any case), all meaning no endpoint.
    /// - `MIGRATING`/`FAILING_OVER seq time [shards]` and
    ///   `MIGRATED`/`FAILED_OVER seq [shards]`: shards may be missing, null,
    ///   an integer, a comma-separated string (optionally a JSON-like
    ///   `["1","2"]`), or an array of strings or integers.
    /// - `SMIGRATING seq slots...`: one or more slot-list elements (strings
    ///   like `"0-100,200"`, integers, or arrays of those); at least one slot.
    /// - `SMIGRATED seq ...`: see [`Notification::SMigrated`] for the forms;
    ///   the rule is:
    ///   1. if the elements after `seq` are arrays, it is the current form:
    ///      a single array of moves (`[[src dst slots] ...]`, possibly
    ///      empty), a single move (`[src dst slots]`), or several move arrays;
    ///   2. otherwise it is a flat form holding one move.
    ///
    ///   Each move, nested or flat, is `addr X rest...`: if `X` contains a
    ///   `:` it is the destination (`src dst slots...`, the triplet form);
    ///   otherwise `addr` is the destination, `src` is `None`, and `X` is
    ///   the first slot list (`host:port slots...`, the oldest form, and the
    ///   `[host:port slots]` pairs some injectors send). Slot lists never
    ///   contain `:`, so the rule is unambiguous.
    ///
    /// ```
    /// use redis_layers::maint::Notification;
    /// use redis_layers::Value;
    ///
    /// let bulk = |s: &'static str| Value::BulkString(s.into());
    /// let msg = Value::Push(vec![bulk("message"), bulk("ch"), bulk("hi")]);
    /// assert!(Notification::parse(&msg).is_none());
    /// let bad = Value::Push(vec![Value::BulkString("MIGRATED".into())]);
    /// assert!(Notification::parse(&bad).unwrap().is_err());
    /// ```
    pub fn parse(v: &Value) -> Option<Result<Notification, ParseError>> {
        let Value::Push(items) = unattr(v) else {
            return None;
        };
        let kind = Kind::from_name(text(items.first()?)?)?;
        Some(parse_fields(kind, &items[1..]).map_err(|e| e.in_kind(kind)))
    }

    /// The notification's kind.
    ///
    /// ```
    /// use redis_layers::maint::{Kind, Notification};
    /// let n = Notification::Migrated { seq: 1, shard_ids: vec![] };
    /// assert_eq!(n.kind(), Kind::Migrated);
    /// ```
    pub fn kind(&self) -> Kind {
        match self {
            Notification::Moving { .. } => Kind::Moving,
            Notification::Migrating { .. } => Kind::Migrating,
            Notification::Migrated { .. } => Kind::Migrated,
            Notification::FailingOver { .. } => Kind::FailingOver,
            Notification::FailedOver { .. } => Kind::FailedOver,
            Notification::SMigrating { .. } => Kind::SMigrating,
            Notification::SMigrated { .. } => Kind::SMigrated,
        }
    }

    /// The sequence number.
    ///
    /// ```
    /// use redis_layers::maint::Notification;
    /// let n = Notification::FailedOver { seq: 7, shard_ids: vec![] };
    /// assert_eq!(n.seq(), 7);
    /// ```
    pub fn seq(&self) -> i64 {
        match self {
            Notification::Moving { seq, .. }
            | Notification::Migrating { seq, .. }
            | Notification::Migrated { seq, .. }
            | Notification::FailingOver { seq, .. }
            | Notification::FailedOver { seq, .. }
            | Notification::SMigrating { seq, .. }
            | Notification::SMigrated { seq, .. } => *seq,
        }
    }

    /// The `time` field of `MOVING`, `MIGRATING` and `FAILING_OVER`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::Notification;
    /// let n = Notification::FailingOver { seq: 1, time: Duration::from_secs(5), shard_ids: vec![] };
    /// assert_eq!(n.time(), Some(Duration::from_secs(5)));
    /// ```
    pub fn time(&self) -> Option<Duration> {
        match self {
            Notification::Moving { time, .. }
            | Notification::Migrating { time, .. }
            | Notification::FailingOver { time, .. } => Some(*time),
            _ => None,
        }
    }
}

fn unattr(v: &Value) -> &Value {
    match v {
        Value::Attribute { value, .. } => unattr(value),
        v => v,
    }
}

/// The bytes of a simple, bulk or verbatim string.
fn text(v: &Value) -> Option<&[u8]> {
    unattr(v).as_bytes()
}

/// The UTF-8 text of a string element; `Ok(None)` for other types.
fn utf8<'a>(v: &'a Value, what: &str) -> Result<Option<&'a str>, ParseError> {
    match text(v) {
        Some(b) => std::str::from_utf8(b)
            .map(Some)
            .map_err(|_| ParseError::new(format!("{what} is not valid UTF-8: {}", show(v)))),
        None => Ok(None),
    }
}

fn aggregate(v: &Value) -> Option<&[Value]> {
    match unattr(v) {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// A short, bounded rendering of a value for error messages.
fn show(v: &Value) -> String {
    const MAX: usize = 64;
    struct Limited(String);
    impl fmt::Write for Limited {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let room = MAX - self.0.len();
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.0.push_str(&s[..end]);
            Err(fmt::Error)
        }
    }
    let mut out = Limited(String::new());
    if write!(out, "{v:?}").is_err() {
        out.0.push_str("...");
    }
    out.0
}

fn arity(fields: &[Value], allowed: &str) -> ParseError {
    ParseError::new(format!(
        "expected {allowed} elements, got {}",
        fields.len() + 1
    ))
}

fn parse_fields(kind: Kind, f: &[Value]) -> Result<Notification, ParseError> {
    let Some(first) = f.first() else {
        return Err(ParseError::new("missing sequence number"));
    };
    let seq = parse_seq(first)?;
    Ok(match kind {
        Kind::Moving => {
            if !(2..=3).contains(&f.len()) {
                return Err(arity(f, "3 or 4"));
            }
            let time = parse_time(&f[1])?;
            let endpoint = match f.get(2) {
                Some(v) => parse_endpoint(v)?,
                None => None,
            };
            Notification::Moving {
                seq,
                time,
                endpoint,
            }
        }
        Kind::Migrating | Kind::FailingOver => {
            if !(2..=3).contains(&f.len()) {
                return Err(arity(f, "3 or 4"));
            }
            let time = parse_time(&f[1])?;
            let shard_ids = f.get(2).map_or(Ok(Vec::new()), parse_shards)?;
            if kind == Kind::Migrating {
                Notification::Migrating {
                    seq,
                    time,
                    shard_ids,
                }
            } else {
                Notification::FailingOver {
                    seq,
                    time,
                    shard_ids,
                }
            }
        }
        Kind::Migrated | Kind::FailedOver => {
            if f.len() > 2 {
                return Err(arity(f, "2 or 3"));
            }
            let shard_ids = f.get(1).map_or(Ok(Vec::new()), parse_shards)?;
            if kind == Kind::Migrated {
                Notification::Migrated { seq, shard_ids }
            } else {
                Notification::FailedOver { seq, shard_ids }
            }
        }
        Kind::SMigrating => {
            if f.len() < 2 {
                return Err(arity(f, "at least 3"));
            }
            let slots = parse_slot_elements(&f[1..])?;
            Notification::SMigrating { seq, slots }
        }
        Kind::SMigrated => {
            if f.len() < 2 {
                return Err(arity(f, "at least 3"));
            }
            Notification::SMigrated {
                seq,
                moves: parse_moves(&f[1..])?,
            }
        }
    })
}

fn parse_seq(v: &Value) -> Result<i64, ParseError> {
    let bad = || {
        ParseError::new(format!(
            "sequence number must be an integer or a numeric string, got {}",
            show(v)
        ))
    };
    match unattr(v) {
        Value::Integer(i) => Ok(*i),
        _ => match utf8(v, "sequence number")? {
            Some(s) => s.trim().parse().map_err(|_| bad()),
            None => Err(bad()),
        },
    }
}

fn parse_time(v: &Value) -> Result<Duration, ParseError> {
    let bad = || ParseError::new(format!("time must be a number of seconds, got {}", show(v)));
    // The server's number is clamped, never trusted: deadlines are computed
    // from it (`now + time`), and a negative one means "now".
    let time = match unattr(v) {
        Value::Integer(i) => Duration::from_secs(u64::try_from(*i).unwrap_or(0)),
        Value::Double(d) if d.is_nan() => return Err(bad()),
        Value::Double(d) if *d <= 0.0 => Duration::ZERO,
        Value::Double(d) => Duration::try_from_secs_f64(*d).unwrap_or(Duration::MAX),
        _ => match utf8(v, "time")? {
            Some(s) => parse_decimal_secs(s.trim()).ok_or_else(bad)?,
            None => return Err(bad()),
        },
    };
    Ok(time.min(MAX_NOTIFICATION_TIME))
}

/// `"30"`, `"1.5"`, `".25"`, `"2."` as an exact duration; digits beyond
/// nanosecond precision are truncated. A leading `-` makes it zero, and
/// more seconds than a `u64` holds make it [`Duration::MAX`] (the caller
/// clamps).
fn parse_decimal_secs(s: &str) -> Option<Duration> {
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    let secs = if int.is_empty() {
        0
    } else {
        match int.parse() {
            Ok(n) => n,
            // Only digits: too many of them.
            Err(_) => return Some(Duration::MAX),
        }
    };
    let mut nanos = 0u32;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nanos = nanos * 10 + digit;
    }
    Some(Duration::new(secs, nanos))
}

fn parse_endpoint(v: &Value) -> Result<Option<MovingEndpoint>, ParseError> {
    if unattr(v).is_null() {
        return Ok(None);
    }
    let Some(s) = utf8(v, "endpoint")? else {
        return Err(ParseError::new(format!(
            "endpoint must be a \"host:port\" string or null, got {}",
            show(v)
        )));
    };
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("<nil>") || t.eq_ignore_ascii_case("null") {
        return Ok(None);
    }
    t.parse().map(Some)
}

fn parse_shards(v: &Value) -> Result<Vec<String>, ParseError> {
    let bad = || {
        ParseError::new(format!(
            "shard ids must be a string, an integer or an array of those, got {}",
            show(v)
        ))
    };
    let mut out = Vec::new();
    let push_one = |v: &Value, out: &mut Vec<String>| -> Result<(), ParseError> {
        match unattr(v) {
            Value::Integer(i) => out.push(i.to_string()),
            Value::Null => {}
            _ => {
                let s = utf8(v, "shard ids")?.ok_or_else(bad)?;
                split_shards(s, out);
            }
        }
        Ok(())
    };
    match aggregate(v) {
        Some(items) => {
            for item in items {
                push_one(item, &mut out)?;
            }
        }
        None => push_one(v, &mut out)?,
    }
    Ok(out)
}

fn split_shards(s: &str, out: &mut Vec<String>) {
    let s = s.trim();
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    out.extend(
        s.split(',')
            .map(|id| id.trim().trim_matches('"').trim())
            .filter(|id| !id.is_empty())
            .map(str::to_owned),
    );
}

/// Slot-list elements (strings, integers, or arrays of those) as one set.
fn parse_slot_elements(elems: &[Value]) -> Result<SlotSet, ParseError> {
    fn one(v: &Value, raw: &mut Vec<RangeInclusive<u16>>) -> Result<(), ParseError> {
        match unattr(v) {
            Value::Integer(i) => {
                let slot = u16::try_from(*i)
                    .ok()
                    .filter(|s| *s < SLOT_COUNT)
                    .ok_or_else(|| ParseError::new(format!("slot {i} out of range 0..=16383")))?;
                raw.push(slot..=slot);
                Ok(())
            }
            _ => match utf8(v, "slot list")? {
                Some(s) => SlotSet::parse_into(s, raw),
                None => Err(ParseError::new(format!(
                    "slots must be strings like \"0-100,200\" or integers, got {}",
                    show(v)
                ))),
            },
        }
    }
    let mut raw = Vec::new();
    for e in elems {
        match aggregate(e) {
            Some(items) => {
                for item in items {
                    one(item, &mut raw)?;
                }
            }
            None => one(e, &mut raw)?,
        }
    }
    if raw.is_empty() {
        return Err(ParseError::new("no slots"));
    }
    Ok(SlotSet::normalized(raw))
}

fn parse_moves(rest: &[Value]) -> Result<Vec<SlotMove>, ParseError> {
    let nested = rest.iter().filter(|v| aggregate(v).is_some()).count();
    if nested == 0 {
        // A flat form: `src dst slots...` or `host:port slots...`.
        return Ok(vec![parse_move(rest)?]);
    }
    if nested != rest.len() {
        return Err(ParseError::new(
            "mixes arrays and plain elements after the sequence number",
        ));
    }
    let mut moves = Vec::new();
    for (i, outer) in rest.iter().enumerate() {
        let items = aggregate(outer).unwrap_or_default();
        let inner_nested = items.iter().filter(|v| aggregate(v).is_some()).count();
        if rest.len() == 1 && inner_nested == items.len() {
            // `[[src dst slots] ...]`: the current form (possibly empty).
            for (j, m) in items.iter().enumerate() {
                let fields = aggregate(m).unwrap_or_default();
                moves.push(parse_move(fields).map_err(|e| e.context(format!("move {}", j + 1)))?);
            }
        } else if inner_nested == 0 {
            // `[src dst slots]` (one move, not wrapped), or several of them.
            moves.push(parse_move(items).map_err(|e| e.context(format!("move {}", i + 1)))?);
        } else {
            return Err(ParseError::new(format!(
                "move {} is not an array of strings: {}",
                i + 1,
                show(outer)
            )));
        }
    }
    Ok(moves)
}

/// One move: `src dst slots...` or `dst slots...`, by the shape rule of
/// [`Notification::parse`].
fn parse_move(fields: &[Value]) -> Result<SlotMove, ParseError> {
    let addr = |v: &Value| -> Result<MovingEndpoint, ParseError> {
        match utf8(v, "address")? {
            Some(s) => s.parse(),
            None => Err(ParseError::new(format!(
                "address must be a \"host:port\" string, got {}",
                show(v)
            ))),
        }
    };
    let is_addr = |v: &Value| text(v).is_some_and(|b| b.contains(&b':'));
    match fields {
        [] | [_] => Err(ParseError::new(format!(
            "expected [src] dst slots..., got {} element(s)",
            fields.len()
        ))),
        [src, dst, slots @ ..] if is_addr(dst) => {
            if slots.is_empty() {
                return Err(ParseError::new("no slots"));
            }
            Ok(SlotMove {
                src: Some(addr(src)?),
                dst: addr(dst)?,
                slots: parse_slot_elements(slots)?,
            })
        }
        [dst, slots @ ..] => Ok(SlotMove {
            src: None,
            dst: addr(dst)?,
            slots: parse_slot_elements(slots)?,
        }),
    }
}

/// Remembers which sequence numbers were seen, per key (a connection for
/// `MOVING`, a cluster for `SMIGRATED`), for a time-to-live, so a
/// notification delivered twice is handled once.
///
/// Memory stays bounded: expired entries are pruned in amortised O(1) per
/// call (a full sweep when the map has doubled since the last sweep, or
/// when a TTL has passed since it), and when more than
/// [`max_entries`](Self::with_max_entries) are live the oldest half is
/// dropped. The clock is passed in, so tests need no sleeping.
///
/// ```
/// use std::time::{Duration, Instant};
/// use redis_layers::maint::Dedup;
///
/// let mut seen = Dedup::new(Duration::from_secs(600));
/// let t0 = Instant::now();
/// assert!(seen.first_time("conn-1", 15, t0));
/// assert!(!seen.first_time("conn-1", 15, t0 + Duration::from_secs(1)));
/// assert!(seen.first_time("conn-2", 15, t0)); // another key
/// assert!(seen.first_time("conn-1", 15, t0 + Duration::from_secs(600))); // expired
/// ```
#[derive(Debug, Clone)]
pub struct Dedup<K> {
    ttl: Duration,
    max_entries: usize,
    seen: HashMap<(K, i64), Instant>,
    /// Sweep when the map reaches this size.
    sweep_at: usize,
    last_sweep: Option<Instant>,
}

/// The size below which no size-triggered sweep happens.
const MIN_SWEEP: usize = 64;

impl<K: Hash + Eq> Dedup<K> {
    /// The default time-to-live: 10 minutes (the [maintenance contract](crate::docs::maintenance),
    /// section 2).
    ///
    /// ```
    /// use redis_layers::maint::Dedup;
    /// assert_eq!(Dedup::<u64>::DEFAULT_TTL.as_secs(), 600);
    /// ```
    pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

    /// The default bound on remembered entries.
    ///
    /// ```
    /// use redis_layers::maint::Dedup;
    /// assert_eq!(Dedup::<u64>::DEFAULT_MAX_ENTRIES, 10_000);
    /// ```
    pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

    /// A dedup memory whose entries live for `ttl`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::Dedup;
    /// let d: Dedup<u64> = Dedup::new(Duration::from_secs(60));
    /// assert_eq!(d.ttl(), Duration::from_secs(60));
    /// ```
    pub fn new(ttl: Duration) -> Self {
        Dedup {
            ttl,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
            seen: HashMap::new(),
            sweep_at: MIN_SWEEP,
            last_sweep: None,
        }
    }

    /// Bounds the number of remembered entries (at least 1; 0 counts as 1).
    /// When the bound is reached after expired entries are pruned, the
    /// oldest half is forgotten.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use redis_layers::maint::Dedup;
    /// let mut d = Dedup::new(Duration::from_secs(60)).with_max_entries(100);
    /// let now = Instant::now();
    /// for seq in 0..1000 {
    ///     d.first_time(1u8, seq, now);
    /// }
    /// assert!(d.len() <= 100);
    /// ```
    pub fn with_max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries.max(1);
        self.sweep_at = self.sweep_at.min(self.max_entries);
        self
    }

    /// The time-to-live of an entry.
    ///
    /// ```
    /// use redis_layers::maint::Dedup;
    /// assert_eq!(Dedup::<u64>::default().ttl().as_secs(), 600);
    /// ```
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The number of remembered entries (expired ones may linger until the
    /// next sweep).
    ///
    /// ```
    /// use std::time::Instant;
    /// use redis_layers::maint::Dedup;
    /// let mut d = Dedup::default();
    /// d.first_time("a", 1, Instant::now());
    /// assert_eq!(d.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True if nothing is remembered.
    ///
    /// ```
    /// assert!(redis_layers::maint::Dedup::<u64>::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Records `(key, seq)` at `now`; true if it was not seen within the
    /// TTL before (handle the notification), false for a duplicate (skip
    /// it). A duplicate does not extend the entry's life.
    ///
    /// ```
    /// use std::time::Instant;
    /// use redis_layers::maint::Dedup;
    /// let mut d = Dedup::default();
    /// let now = Instant::now();
    /// assert!(d.first_time(7u64, 20, now));
    /// assert!(!d.first_time(7u64, 20, now));
    /// assert!(d.first_time(7u64, 21, now));
    /// ```
    pub fn first_time(&mut self, key: K, seq: i64, now: Instant) -> bool {
        let time_due = self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= self.ttl);
        if self.seen.len() >= self.sweep_at || (time_due && !self.seen.is_empty()) {
            self.sweep(now);
        }
        if self.last_sweep.is_none() {
            self.last_sweep = Some(now);
        }
        let ttl = self.ttl;
        match self.seen.entry((key, seq)) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                if now.saturating_duration_since(*e.get()) >= ttl {
                    e.insert(now);
                    true
                } else {
                    false
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(now);
                true
            }
        }
    }

    /// Drops expired entries, then the oldest ones if still too many, and
    /// sets the next size-triggered sweep.
    fn sweep(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.seen
            .retain(|_, t| now.saturating_duration_since(*t) < ttl);
        // Leave room for at least one insertion below the bound.
        if self.seen.len() >= self.max_entries && self.max_entries < 2 {
            self.seen.clear();
        } else if self.seen.len() >= self.max_entries {
            let keep = self.max_entries / 2;
            let mut times: Vec<Instant> = self.seen.values().copied().collect();
            let drop = times.len() - keep;
            let (_, cutoff, _) = times.select_nth_unstable(drop);
            let cutoff = *cutoff;
            let older = self.seen.values().filter(|t| **t < cutoff).count();
            let mut equal_to_drop = drop - older;
            self.seen.retain(|_, t| {
                if *t < cutoff {
                    false
                } else if *t == cutoff && equal_to_drop > 0 {
                    equal_to_drop -= 1;
                    false
                } else {
                    true
                }
            });
        }
        self.sweep_at = (self.seen.len() * 2).max(MIN_SWEEP).min(self.max_entries);
        self.last_sweep = Some(now);
    }
}

impl<K: Hash + Eq> Default for Dedup<K> {
    /// [`Dedup::DEFAULT_TTL`] and [`Dedup::DEFAULT_MAX_ENTRIES`].
    fn default() -> Self {
        Dedup::new(Self::DEFAULT_TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::Decoder;
    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;

    fn decode(wire: &[u8]) -> Value {
        let mut buf = BytesMut::from(wire);
        let v = Decoder::new().decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        v
    }

    fn parse(v: &Value) -> Notification {
        match Notification::parse(v) {
            Some(Ok(n)) => n,
            other => panic!("{v:?} -> {other:?}"),
        }
    }

    fn parse_err(v: &Value) -> ParseError {
        match Notification::parse(v) {
            Some(Err(e)) => e,
            other => panic!("{v:?} should be malformed, got {other:?}"),
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn simple(s: &str) -> Value {
        Value::SimpleString(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn int(i: i64) -> Value {
        Value::Integer(i)
    }

    fn push(items: Vec<Value>) -> Value {
        Value::Push(items)
    }

    fn ep(s: &str) -> MovingEndpoint {
        s.parse().unwrap()
    }

    fn slots(s: &str) -> SlotSet {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn spec_section_2_examples() {
        let cases: Vec<(&[u8], Notification)> = vec![
            (
                b">4\r\n$6\r\nMOVING\r\n:15\r\n:30\r\n$14\r\n10.0.0.2:12000\r\n",
                Notification::Moving {
                    seq: 15,
                    time: secs(30),
                    endpoint: Some(MovingEndpoint::new("10.0.0.2", 12000)),
                },
            ),
            (
                b">4\r\n$6\r\nMOVING\r\n:16\r\n:30\r\n_\r\n",
                Notification::Moving {
                    seq: 16,
                    time: secs(30),
                    endpoint: None,
                },
            ),
            (
                b">4\r\n$9\r\nMIGRATING\r\n:17\r\n:5\r\n$3\r\n1,2\r\n",
                Notification::Migrating {
                    seq: 17,
                    time: secs(5),
                    shard_ids: vec!["1".into(), "2".into()],
                },
            ),
            (
                b">3\r\n$8\r\nMIGRATED\r\n:18\r\n$3\r\n1,2\r\n",
                Notification::Migrated {
                    seq: 18,
                    shard_ids: vec!["1".into(), "2".into()],
                },
            ),
            (
                b">3\r\n$10\r\nSMIGRATING\r\n:19\r\n$9\r\n0-100,200\r\n",
                Notification::SMigrating {
                    seq: 19,
                    slots: SlotSet::from_ranges([0..=100, 200..=200]).unwrap(),
                },
            ),
            (
                b">3\r\n+SMIGRATED\r\n:20\r\n*1\r\n*3\r\n+127.0.0.1:7001\r\n+127.0.0.1:7002\r\n+0-100,200\r\n",
                Notification::SMigrated {
                    seq: 20,
                    moves: vec![SlotMove {
                        src: Some(MovingEndpoint::new("127.0.0.1", 7001)),
                        dst: MovingEndpoint::new("127.0.0.1", 7002),
                        slots: SlotSet::from_ranges([0..=100, 200..=200]).unwrap(),
                    }],
                },
            ),
        ];
        for (wire, want) in cases {
            let v = decode(wire);
            let n = parse(&v);
            assert_eq!(n, want, "{}", String::from_utf8_lossy(wire));
            assert_eq!(
                n.kind().as_str().as_bytes(),
                &v.push_kind().unwrap().to_ascii_uppercase()[..]
            );
        }
    }

    #[test]
    fn spec_examples_through_resp2_null_bulk() {
        // `$-1` inside a RESP3 push is RESP2's null bulk: also "no endpoint".
        let v = decode(b">4\r\n$6\r\nMOVING\r\n:16\r\n:30\r\n$-1\r\n");
        assert_eq!(
            parse(&v),
            Notification::Moving {
                seq: 16,
                time: secs(30),
                endpoint: None
            }
        );
    }

    #[test]
    fn numbers_as_integers_or_numeric_strings() {
        for seq in [int(42), bulk("42"), simple("42"), simple(" 42 ")] {
            for (time, want) in [
                (int(30), secs(30)),
                (bulk("30"), secs(30)),
                (simple("30"), secs(30)),
                (bulk("1.5"), Duration::from_millis(1500)),
                (simple("0.25"), Duration::from_millis(250)),
                (bulk(".5"), Duration::from_millis(500)),
                (bulk("2."), secs(2)),
                (bulk("0.000000001"), Duration::from_nanos(1)),
                (bulk("1.0000000019"), Duration::new(1, 1)),
                (Value::Double(2.5), Duration::from_millis(2500)),
                (int(0), Duration::ZERO),
            ] {
                let n = parse(&push(vec![
                    bulk("MOVING"),
                    seq.clone(),
                    time.clone(),
                    bulk("h:1"),
                ]));
                assert_eq!(n.seq(), 42);
                assert_eq!(n.time(), Some(want), "{time:?}");
            }
        }
        assert_eq!(parse(&push(vec![bulk("MIGRATED"), bulk("-3")])).seq(), -3);
    }

    #[test]
    fn bad_numbers_are_malformed() {
        for seq in [
            bulk("x"),
            bulk(""),
            bulk("1.5"),
            Value::Null,
            Value::Double(1.0),
            Value::Array(vec![]),
            bulk("99999999999999999999"),
            Value::BulkString(Bytes::from_static(b"\xff")),
        ] {
            let e = parse_err(&push(vec![bulk("MIGRATED"), seq.clone()]));
            assert_eq!(e.kind(), Some(Kind::Migrated), "{seq:?}");
            assert!(e
                .to_string()
                .starts_with("malformed MIGRATED notification: "));
        }
        for time in [
            bulk("1e3"),
            bulk("."),
            bulk("-"),
            bulk("-x"),
            bulk(""),
            bulk("1.2.3"),
            bulk("inf"),
            bulk("+5"),
            Value::Double(f64::NAN),
            Value::Null,
            Value::Boolean(true),
        ] {
            let e = parse_err(&push(vec![bulk("MIGRATING"), int(1), time.clone()]));
            assert!(e.message().contains("time"), "{time:?}: {e}");
        }
    }

    /// Server-announced times are clamped, never trusted: a deadline is
    /// computed from them.
    #[test]
    fn times_are_clamped() {
        let max = MAX_NOTIFICATION_TIME;
        for (time, want) in [
            (int(-1), Duration::ZERO),
            (int(i64::MIN), Duration::ZERO),
            (bulk("-1"), Duration::ZERO),
            (bulk("-0.5"), Duration::ZERO),
            (Value::Double(-1.0), Duration::ZERO),
            (Value::Double(f64::NEG_INFINITY), Duration::ZERO),
            (int(0), Duration::ZERO),
            (int(3600), max),
            (int(3601), max),
            (int(i64::MAX), max),
            (bulk("99999999999999999999"), max),
            (bulk("99999999999999999999.5"), max),
            (Value::Double(1e300), max),
            (Value::Double(f64::INFINITY), max),
            (bulk("1.5"), Duration::from_millis(1500)),
        ] {
            for name in ["MOVING", "MIGRATING", "FAILING_OVER"] {
                let n = parse(&push(vec![bulk(name), int(1), time.clone()]));
                assert_eq!(n.time(), Some(want), "{name} {time:?}");
            }
        }
    }

    #[test]
    fn names_in_any_case_simple_or_bulk() {
        for name in ["MOVING", "moving", "Moving", "mOvInG"] {
            for v in [simple(name), bulk(name)] {
                let n = parse(&push(vec![v, int(1), int(2)]));
                assert_eq!(n.kind(), Kind::Moving);
            }
        }
        for k in Kind::ALL {
            let lower = k.as_str().to_ascii_lowercase();
            assert_eq!(Kind::from_name(lower.as_bytes()), Some(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        let verbatim = Value::VerbatimString {
            format: *b"txt",
            text: Bytes::from_static(b"failed_over"),
        };
        assert_eq!(
            parse(&push(vec![verbatim, int(3)])).kind(),
            Kind::FailedOver
        );
    }

    #[test]
    fn moving_null_endpoint_forms() {
        let null = Notification::Moving {
            seq: 1,
            time: secs(10),
            endpoint: None,
        };
        for v in [
            push(vec![bulk("MOVING"), int(1), int(10)]),
            push(vec![bulk("MOVING"), int(1), int(10), Value::Null]),
            push(vec![bulk("MOVING"), int(1), int(10), bulk("<nil>")]),
            push(vec![bulk("MOVING"), int(1), int(10), simple("<NIL>")]),
            push(vec![bulk("MOVING"), int(1), int(10), bulk("null")]),
            push(vec![bulk("MOVING"), int(1), int(10), bulk("")]),
        ] {
            assert_eq!(parse(&v), null, "{v:?}");
        }
        for (s, host, port) in [
            ("10.0.0.2:12000", "10.0.0.2", 12000),
            ("redis-1.example.com:6379", "redis-1.example.com", 6379),
            ("[::1]:6380", "::1", 6380),
            ("::1:6380", "::1", 6380),
            ("[fe80::1%eth0]:7000", "fe80::1%eth0", 7000),
            ("2001:db8::5:443", "2001:db8::5", 443),
        ] {
            for e in [bulk(s), simple(s)] {
                let n = parse(&push(vec![bulk("MOVING"), int(1), int(10), e]));
                let Notification::Moving { endpoint, .. } = n else {
                    unreachable!()
                };
                assert_eq!(endpoint, Some(MovingEndpoint::new(host, port)), "{s}");
            }
        }
    }

    #[test]
    fn bad_endpoints() {
        for s in [
            "10.0.0.2",
            "host:",
            ":6379",
            "host:0",
            "host:65536",
            "host:x",
            "host:-1",
            "[::1]",
            "[::1:6379",
            "[nothost]:6379",
            "a:b:6379",
            "ho st:6379",
            "[]:1",
        ] {
            let e = parse_err(&push(vec![bulk("MOVING"), int(1), int(10), bulk(s)]));
            assert!(e.message().contains("endpoint"), "{s}: {e}");
            assert!(s.parse::<MovingEndpoint>().is_err(), "{s}");
        }
        let e = parse_err(&push(vec![bulk("MOVING"), int(1), int(10), int(5)]));
        assert!(e.message().contains("endpoint"), "{e}");
        // Display round trip.
        for s in ["h:1", "[::1]:2", "10.0.0.1:65535"] {
            assert_eq!(ep(s).to_string(), s);
        }
    }

    #[test]
    fn shard_ids_optional_and_lenient() {
        let cases: Vec<(Option<Value>, Vec<&str>)> = vec![
            (None, vec![]),
            (Some(Value::Null), vec![]),
            (Some(bulk("1,2")), vec!["1", "2"]),
            (Some(simple("7")), vec!["7"]),
            (Some(bulk(" 1 , 2 ,")), vec!["1", "2"]),
            (Some(bulk("")), vec![]),
            (Some(bulk("[\"2\", \"4\"]")), vec!["2", "4"]),
            (Some(int(7)), vec!["7"]),
            (
                Some(Value::Array(vec![int(7), bulk("8,9")])),
                vec!["7", "8", "9"],
            ),
        ];
        for (shards, want) in cases {
            let want: Vec<String> = want.into_iter().map(String::from).collect();
            for kind in ["MIGRATING", "FAILING_OVER"] {
                let mut items = vec![bulk(kind), int(5), int(3)];
                items.extend(shards.clone());
                let n = parse(&push(items));
                let (Notification::Migrating {
                    shard_ids, time, ..
                }
                | Notification::FailingOver {
                    shard_ids, time, ..
                }) = n
                else {
                    panic!("{n:?}")
                };
                assert_eq!((shard_ids, time), (want.clone(), secs(3)));
            }
            for kind in ["MIGRATED", "FAILED_OVER"] {
                let mut items = vec![simple(kind), int(5)];
                items.extend(shards.clone());
                let n = parse(&push(items));
                let (Notification::Migrated { shard_ids, .. }
                | Notification::FailedOver { shard_ids, .. }) = n
                else {
                    panic!("{n:?}")
                };
                assert_eq!(shard_ids, want);
            }
        }
        let e = parse_err(&push(vec![bulk("MIGRATED"), int(1), Value::Boolean(true)]));
        assert!(e.message().contains("shard ids"), "{e}");
    }

    #[test]
    fn every_variant_round() {
        assert_eq!(
            parse(&push(vec![bulk("FAILING_OVER"), int(9), bulk("15")])),
            Notification::FailingOver {
                seq: 9,
                time: secs(15),
                shard_ids: vec![]
            }
        );
        assert_eq!(
            parse(&push(vec![bulk("FAILED_OVER"), int(10)])),
            Notification::FailedOver {
                seq: 10,
                shard_ids: vec![]
            }
        );
        assert_eq!(
            parse(&push(vec![bulk("migrating"), simple("11"), simple("0")])),
            Notification::Migrating {
                seq: 11,
                time: Duration::ZERO,
                shard_ids: vec![]
            }
        );
    }

    #[test]
    fn wrong_arity() {
        let cases = [
            push(vec![bulk("MOVING")]),
            push(vec![bulk("MOVING"), int(1)]),
            push(vec![bulk("MOVING"), int(1), int(2), bulk("h:1"), bulk("x")]),
            push(vec![bulk("MIGRATING"), int(1)]),
            push(vec![
                bulk("MIGRATING"),
                int(1),
                int(2),
                bulk("1"),
                bulk("2"),
            ]),
            push(vec![bulk("FAILING_OVER"), int(1)]),
            push(vec![bulk("MIGRATED")]),
            push(vec![bulk("MIGRATED"), int(1), bulk("1"), bulk("2")]),
            push(vec![bulk("FAILED_OVER"), int(1), bulk("1"), bulk("2")]),
            push(vec![bulk("SMIGRATING"), int(1)]),
            push(vec![bulk("SMIGRATED"), int(1)]),
            push(vec![bulk("SMIGRATED")]),
        ];
        for v in cases {
            let e = parse_err(&v);
            assert!(
                e.message().contains("elements") || e.message().contains("sequence"),
                "{v:?}: {e}"
            );
        }
    }

    #[test]
    fn smigrating_slot_lists() {
        let cases: Vec<(Vec<Value>, &str)> = vec![
            (vec![bulk("123")], "123"),
            (vec![bulk("100-200")], "100-200"),
            (vec![bulk("0-100,200")], "0-100,200"),
            (vec![simple("5"), bulk("1-3"), bulk("4")], "1-5"),
            (vec![int(7), bulk("9")], "7,9"),
            (
                vec![Value::Array(vec![bulk("1"), int(2)]), bulk("10-11")],
                "1-2,10-11",
            ),
            (vec![bulk(" 1 - 3 , 16383 ")], "1-3,16383"),
            (vec![bulk("0-16383")], "0-16383"),
            (vec![bulk("5-5,5,4-6")], "4-6"),
        ];
        for (elems, want) in cases {
            let mut items = vec![bulk("SMIGRATING"), int(19)];
            items.extend(elems.clone());
            assert_eq!(
                parse(&push(items)),
                Notification::SMigrating {
                    seq: 19,
                    slots: slots(want)
                },
                "{elems:?}"
            );
        }
        for bad in [
            bulk("16384"),
            bulk("0-16384"),
            bulk("200-100"),
            bulk("a"),
            bulk("-5"),
            bulk("5-"),
            bulk("1-2-3"),
            bulk("1:2"),
            bulk(""),
            bulk(","),
            int(-1),
            int(16384),
            Value::Null,
            Value::Array(vec![]),
            Value::Array(vec![Value::Array(vec![bulk("1")])]),
        ] {
            let v = push(vec![bulk("SMIGRATING"), int(1), bad.clone()]);
            let e = parse_err(&v);
            assert_eq!(e.kind(), Some(Kind::SMigrating));
            assert!(!e.message().is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn smigrated_current_form() {
        let triplet =
            |s: &str, d: &str, sl: &str| Value::Array(vec![simple(s), simple(d), simple(sl)]);
        // Several triplets, bulk and simple strings, IPv6, repeated nodes.
        let v = push(vec![
            simple("SMIGRATED"),
            bulk("21"),
            Value::Array(vec![
                triplet("127.0.0.1:7001", "127.0.0.1:7002", "0-100,200"),
                Value::Array(vec![bulk("[::1]:7001"), bulk("::1:7003"), bulk("300")]),
                triplet("127.0.0.1:7001", "127.0.0.1:7002", "400-401"),
            ]),
        ]);
        let want = vec![
            SlotMove {
                src: Some(ep("127.0.0.1:7001")),
                dst: ep("127.0.0.1:7002"),
                slots: slots("0-100,200"),
            },
            SlotMove {
                src: Some(ep("[::1]:7001")),
                dst: ep("[::1]:7003"),
                slots: slots("300"),
            },
            SlotMove {
                src: Some(ep("127.0.0.1:7001")),
                dst: ep("127.0.0.1:7002"),
                slots: slots("400-401"),
            },
        ];
        assert_eq!(
            parse(&v),
            Notification::SMigrated {
                seq: 21,
                moves: want.clone()
            }
        );
        // Triplet with the slots split over several elements.
        let v = push(vec![
            bulk("SMIGRATED"),
            int(22),
            Value::Array(vec![Value::Array(vec![
                bulk("a:1"),
                bulk("b:2"),
                bulk("1"),
                bulk("2-3"),
            ])]),
        ]);
        let Notification::SMigrated { moves, .. } = parse(&v) else {
            unreachable!()
        };
        assert_eq!(moves[0].slots, slots("1-3"));
        // Empty list of triplets: accepted, nothing moved.
        let v = push(vec![bulk("SMIGRATED"), int(23), Value::Array(vec![])]);
        assert_eq!(
            parse(&v),
            Notification::SMigrated {
                seq: 23,
                moves: vec![]
            }
        );
        // One triplet not wrapped in a list, and several bare triplets.
        let v = push(vec![bulk("SMIGRATED"), int(24), triplet("a:1", "b:2", "5")]);
        let Notification::SMigrated { moves, .. } = parse(&v) else {
            unreachable!()
        };
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].src, Some(ep("a:1")));
        let v = push(vec![
            bulk("SMIGRATED"),
            int(24),
            triplet("a:1", "b:2", "5"),
            triplet("a:1", "c:3", "6"),
        ]);
        let Notification::SMigrated { moves, .. } = parse(&v) else {
            unreachable!()
        };
        assert_eq!(moves.len(), 2);
        assert_eq!(moves[1].dst, ep("c:3"));
        // `[dst slots]` pairs (an older injector format).
        let v = push(vec![
            bulk("SMIGRATED"),
            int(25),
            Value::Array(vec![Value::Array(vec![bulk("b:2"), bulk("0-5")])]),
        ]);
        assert_eq!(
            parse(&v),
            Notification::SMigrated {
                seq: 25,
                moves: vec![SlotMove {
                    src: None,
                    dst: ep("b:2"),
                    slots: slots("0-5")
                }]
            }
        );
    }

    #[test]
    fn smigrated_flat_forms() {
        // `seq src dst slots...`
        let v = push(vec![
            bulk("SMIGRATED"),
            int(30),
            bulk("10.0.0.1:7000"),
            bulk("10.0.0.2:7000"),
            bulk("0-100"),
            bulk("200"),
        ]);
        assert_eq!(
            parse(&v),
            Notification::SMigrated {
                seq: 30,
                moves: vec![SlotMove {
                    src: Some(ep("10.0.0.1:7000")),
                    dst: ep("10.0.0.2:7000"),
                    slots: slots("0-100,200")
                }]
            }
        );
        // `seq host:port slots...` (oldest: destination only).
        for rest in [
            vec![bulk("10.0.0.2:7000"), bulk("0-100,200")],
            vec![simple("10.0.0.2:7000"), bulk("0-100"), int(200)],
        ] {
            let mut items = vec![bulk("SMIGRATED"), int(31)];
            items.extend(rest);
            assert_eq!(
                parse(&push(items)),
                Notification::SMigrated {
                    seq: 31,
                    moves: vec![SlotMove {
                        src: None,
                        dst: ep("10.0.0.2:7000"),
                        slots: slots("0-100,200")
                    }]
                }
            );
        }
    }

    #[test]
    fn smigrated_malformed() {
        let cases = [
            // src dst but no slots
            push(vec![bulk("SMIGRATED"), int(1), bulk("a:1"), bulk("b:2")]),
            // address only
            push(vec![bulk("SMIGRATED"), int(1), bulk("a:1")]),
            // not an address
            push(vec![bulk("SMIGRATED"), int(1), bulk("0-100"), bulk("5")]),
            // bad slots in a triplet
            push(vec![
                bulk("SMIGRATED"),
                int(1),
                Value::Array(vec![Value::Array(vec![
                    bulk("a:1"),
                    bulk("b:2"),
                    bulk("99999"),
                ])]),
            ]),
            // short triplet
            push(vec![
                bulk("SMIGRATED"),
                int(1),
                Value::Array(vec![Value::Array(vec![bulk("a:1")])]),
            ]),
            // non-string address
            push(vec![
                bulk("SMIGRATED"),
                int(1),
                Value::Array(vec![Value::Array(vec![int(1), bulk("b:2"), bulk("5")])]),
            ]),
            // mixed arrays and strings
            push(vec![
                bulk("SMIGRATED"),
                int(1),
                Value::Array(vec![]),
                bulk("a:1"),
            ]),
            // list mixing triplets and strings
            push(vec![
                bulk("SMIGRATED"),
                int(1),
                Value::Array(vec![
                    Value::Array(vec![bulk("a:1"), bulk("b:2"), bulk("5")]),
                    bulk("x"),
                ]),
            ]),
            // flat form with a second move appended
            push(vec![
                bulk("SMIGRATED"),
                int(1),
                bulk("a:1"),
                bulk("b:2"),
                bulk("5"),
                bulk("c:3"),
            ]),
        ];
        for v in cases {
            let e = parse_err(&v);
            assert_eq!(e.kind(), Some(Kind::SMigrated), "{v:?}");
        }
        // The error names the offending move.
        let e = parse_err(&push(vec![
            bulk("SMIGRATED"),
            int(1),
            Value::Array(vec![
                Value::Array(vec![bulk("a:1"), bulk("b:2"), bulk("5")]),
                Value::Array(vec![bulk("a:1"), bulk("b:2"), bulk("x")]),
            ]),
        ]));
        assert!(e.message().starts_with("move 2: "), "{e}");
    }

    #[test]
    fn non_maintenance_values_are_none() {
        let not_ours = [
            decode(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"),
            decode(b">4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$2\r\nhi\r\n"),
            decode(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nfoo\r\n"),
            decode(b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"),
            push(vec![bulk("MOVINGX"), int(1), int(2)]),
            push(vec![bulk("MOVE"), int(1), int(2)]),
            push(vec![bulk("SOMETHING_NEW"), int(1)]),
            push(vec![]),
            push(vec![int(1), int(2)]),
            push(vec![Value::Null]),
            push(vec![Value::Array(vec![bulk("MOVING")])]),
            push(vec![Value::Error(Bytes::from_static(b"MOVING"))]),
            // Not pushes at all, even with a maintenance name first.
            Value::Array(vec![bulk("MOVING"), int(1), int(2), bulk("h:1")]),
            bulk("MOVING"),
            simple("OK"),
            int(1),
            Value::Null,
            Value::Map(vec![(bulk("MOVING"), int(1))]),
        ];
        for v in not_ours {
            assert!(Notification::parse(&v).is_none(), "{v:?}");
        }
        // A push wrapped in attributes is still recognised.
        let v = Value::Attribute {
            attributes: vec![(bulk("k"), bulk("v"))],
            value: Box::new(push(vec![bulk("MIGRATED"), int(1)])),
        };
        assert_eq!(parse(&v).kind(), Kind::Migrated);
    }

    #[test]
    fn error_messages_name_kind_and_problem() {
        let e = parse_err(&push(vec![bulk("moving"), bulk("abc"), int(3)]));
        assert_eq!(
            e.to_string(),
            "malformed MOVING notification: sequence number must be an integer or a numeric string, got bulk(\"abc\")"
        );
        let e = parse_err(&push(vec![bulk("FAILED_OVER"), int(1), int(2), int(3)]));
        assert_eq!(
            e.to_string(),
            "malformed FAILED_OVER notification: expected 2 or 3 elements, got 4"
        );
        // Huge values are shown truncated.
        let big = bulk(&"x".repeat(10_000));
        let e = parse_err(&push(vec![bulk("MIGRATED"), big]));
        assert!(e.to_string().len() < 200, "{e}");
        assert!(e.to_string().ends_with("..."));
        let err: &dyn std::error::Error = &e;
        assert!(err.source().is_none());
    }

    #[test]
    fn slot_set_basics() {
        let s = slots("200,0-100,50-60,101");
        assert_eq!(s.ranges(), &[0..=101, 200..=200]);
        assert_eq!(s.len(), 103);
        assert!(!s.is_empty());
        for slot in 0..=101 {
            assert!(s.contains(slot));
        }
        assert!(!s.contains(102) && !s.contains(199) && s.contains(200) && !s.contains(201));
        assert!(!s.contains(16383) && !s.contains(u16::MAX));
        assert_eq!(s.iter().count(), 103);
        assert_eq!(s.iter().last(), Some(200));
        assert_eq!(s.to_string(), "0-101,200");
        assert_eq!(slots(&s.to_string()), s);
        assert!(SlotSet::new().is_empty());
        assert_eq!(SlotSet::new().len(), 0);
        assert!(!SlotSet::new().contains(0));
        let all = slots("0-16383");
        assert_eq!(all.len(), 16384);
        assert!(all.contains(0) && all.contains(16383));
        let e = "100-50".parse::<SlotSet>().unwrap_err();
        assert!(e.message().contains("reversed"), "{e}");
        let e = "16384".parse::<SlotSet>().unwrap_err();
        assert!(e.message().contains("out of range"), "{e}");
        assert!("99999999999999999999999".parse::<SlotSet>().is_err());
    }

    #[test]
    fn dedup_ttl_and_keys() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(600);
        let mut d = Dedup::new(ttl);
        assert!(d.first_time(1u32, 15, t0));
        assert!(!d.first_time(1u32, 15, t0));
        assert!(!d.first_time(1u32, 15, t0 + ttl - Duration::from_nanos(1)));
        assert!(d.first_time(2u32, 15, t0));
        assert!(d.first_time(1u32, 16, t0));
        // A duplicate does not extend the entry's life.
        assert!(d.first_time(1u32, 15, t0 + ttl));
        assert!(!d.first_time(1u32, 15, t0 + ttl + secs(1)));
        // Time going backwards is not a panic.
        assert!(d.first_time(3u32, 1, t0 + ttl + secs(5)));
        assert!(!d.first_time(3u32, 1, t0));
    }

    #[test]
    fn dedup_prunes_expired_entries() {
        let t0 = Instant::now();
        let mut d = Dedup::new(secs(10));
        for seq in 0..1000 {
            assert!(d.first_time("c", seq, t0));
        }
        assert_eq!(d.len(), 1000);
        // Much later, one call sweeps everything that expired.
        assert!(d.first_time("c", 5000, t0 + secs(11)));
        assert_eq!(d.len(), 1);
        // A steady stream keeps memory at about rate x ttl.
        let mut max_len = 0;
        for i in 0..100_000i64 {
            let now = t0 + secs(20) + Duration::from_millis(i as u64 * 10); // 100/s
            assert!(d.first_time("c", 10_000 + i, now));
            max_len = max_len.max(d.len());
        }
        // 10 s x 100/s = 1000 live, at most doubled before a sweep.
        assert!(max_len <= 2 * 1000 + MIN_SWEEP, "{max_len}");
    }

    #[test]
    fn dedup_bounded_even_when_nothing_expires() {
        let t0 = Instant::now();
        let mut d = Dedup::new(secs(3600)).with_max_entries(500);
        for seq in 0..100_000 {
            // Same instant for all: ties must still be evicted.
            d.first_time(0u8, seq, t0);
            assert!(d.len() <= 500);
        }
        // The newest survive eviction: a recent seq is still a duplicate.
        let mut d = Dedup::new(secs(3600)).with_max_entries(100);
        for seq in 0..1000 {
            d.first_time(0u8, seq, t0 + Duration::from_millis(seq as u64));
        }
        assert!(!d.first_time(0u8, 999, t0 + secs(2)));
        assert!(d.first_time(0u8, 0, t0 + secs(2)));
        let mut d = Dedup::new(secs(1)).with_max_entries(0);
        assert!(d.first_time(0u8, 1, t0));
        assert!(d.first_time(0u8, 2, t0));
        assert!(d.len() <= 1);
        assert!(Dedup::<u8>::default().is_empty());
    }

    /// Any value, maintenance-flavoured strings more likely.
    fn arb_value() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            "[0-9]{0,6}",
            "-?[0-9]{1,25}",
            "[0-9]{0,3}\\.[0-9]{0,12}",
            "[0-9,\\- ]{0,12}",
            "[a-z0-9.\\[\\]:%]{0,20}:[0-9]{0,6}",
            "<nil>|null|NULL|",
            "\\PC{0,12}",
        ];
        let bytes = prop_oneof![
            text.prop_map(|s| Bytes::from(s.into_bytes())),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from),
        ];
        let leaf = prop_oneof![
            bytes.clone().prop_map(Value::BulkString),
            bytes.clone().prop_map(Value::SimpleString),
            any::<i64>().prop_map(Value::Integer),
            (-3i64..20000).prop_map(Value::Integer),
            Just(Value::Null),
            any::<f64>().prop_map(Value::Double),
            any::<bool>().prop_map(Value::Boolean),
            bytes.prop_map(Value::Error),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Set),
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Push),
                (inner.clone(), inner).prop_map(|(k, v)| Value::Attribute {
                    attributes: vec![(k, Value::Null)],
                    value: Box::new(v),
                }),
            ]
        })
    }

    fn arb_name() -> impl Strategy<Value = Value> {
        (0..Kind::ALL.len(), any::<u16>(), any::<bool>()).prop_map(|(i, case, is_bulk)| {
            let name: String = Kind::ALL[i]
                .as_str()
                .chars()
                .enumerate()
                .map(|(j, c)| {
                    if case >> (j % 16) & 1 == 1 {
                        c.to_ascii_lowercase()
                    } else {
                        c
                    }
                })
                .collect();
            if is_bulk {
                bulk(&name)
            } else {
                simple(&name)
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Random element counts, types and strings under the seven names:
        /// the parser always answers `Some` and never panics; errors name
        /// the kind.
        #[test]
        fn random_maintenance_pushes_never_panic(
            name in arb_name(),
            rest in proptest::collection::vec(arb_value(), 0..7),
        ) {
            let mut items = vec![name];
            items.extend(rest);
            let v = push(items);
            match Notification::parse(&v) {
                Some(Ok(n)) => {
                    let kind = Kind::from_name(v.push_kind().unwrap()).unwrap();
                    prop_assert_eq!(n.kind(), kind);
                }
                Some(Err(e)) => {
                    prop_assert!(e.kind().is_some());
                    prop_assert!(!e.to_string().is_empty());
                }
                None => prop_assert!(false, "maintenance name not recognised: {:?}", v),
            }
        }

        /// Well-formed frames in random encodings parse to what was encoded.
        #[test]
        fn well_formed_frames_parse(
            seq in any::<i64>(),
            secs_ in 0u64..100_000,
            millis in 0u32..1000,
            enc in 0u8..4,
            name in arb_name(),
            shards in proptest::collection::vec(0u32..1000, 0..4),
            with_endpoint in any::<bool>(),
        ) {
            let time = Duration::new(secs_, millis * 1_000_000).min(MAX_NOTIFICATION_TIME);
            let num = |i: i64, e: u8| match e {
                0 => int(i),
                1 => bulk(&i.to_string()),
                _ => simple(&i.to_string()),
            };
            let seq_v = num(seq, enc % 3);
            let time_v = if millis == 0 {
                num(secs_ as i64, enc)
            } else if enc % 2 == 0 {
                bulk(&format!("{secs_}.{millis:03}"))
            } else {
                simple(&format!("{secs_}.{millis:03}"))
            };
            let shard_text = shards.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let shard_ids: Vec<String> = shards.iter().map(u32::to_string).collect();
            let kind = Kind::from_name(name.as_bytes().unwrap()).unwrap();
            let mut items = vec![name, seq_v];
            let want = match kind {
                Kind::Moving => {
                    items.push(time_v);
                    let endpoint = with_endpoint.then(|| MovingEndpoint::new("10.0.0.9", 7000));
                    if with_endpoint {
                        items.push(bulk("10.0.0.9:7000"));
                    }
                    Notification::Moving { seq, time, endpoint }
                }
                Kind::Migrating | Kind::FailingOver => {
                    items.push(time_v);
                    if !shards.is_empty() {
                        items.push(bulk(&shard_text));
                    }
                    if kind == Kind::Migrating {
                        Notification::Migrating { seq, time, shard_ids }
                    } else {
                        Notification::FailingOver { seq, time, shard_ids }
                    }
                }
                Kind::Migrated | Kind::FailedOver => {
                    if !shards.is_empty() {
                        items.push(simple(&shard_text));
                    }
                    if kind == Kind::Migrated {
                        Notification::Migrated { seq, shard_ids }
                    } else {
                        Notification::FailedOver { seq, shard_ids }
                    }
                }
                Kind::SMigrating => {
                    items.push(bulk(&format!("{},100-200", secs_ % 16384)));
                    let mut raw = vec![100..=200];
                    let s = (secs_ % 16384) as u16;
                    raw.push(s..=s);
                    Notification::SMigrating { seq, slots: SlotSet::from_ranges(raw).unwrap() }
                }
                Kind::SMigrated => {
                    items.push(Value::Array(vec![Value::Array(vec![
                        simple("a:1"),
                        bulk("[::1]:2"),
                        simple("0-5"),
                    ])]));
                    Notification::SMigrated {
                        seq,
                        moves: vec![SlotMove {
                            src: Some(MovingEndpoint::new("a", 1)),
                            dst: MovingEndpoint::new("::1", 2),
                            slots: SlotSet::from_ranges([0..=5]).unwrap(),
                        }],
                    }
                }
            };
            prop_assert_eq!(parse(&push(items)), want);
        }

        /// Any value at all: no panic.
        #[test]
        fn arbitrary_values_never_panic(v in arb_value()) {
            let _ = Notification::parse(&v);
        }

        /// Slot lists: parsing agrees with a naive set.
        #[test]
        fn slot_set_matches_naive(ranges in proptest::collection::vec((0u16..16384, 0u16..64), 0..12)) {
            let text: Vec<String> = ranges
                .iter()
                .map(|&(a, w)| {
                    let b = (a + w).min(16383);
                    if a == b { a.to_string() } else { format!("{a}-{b}") }
                })
                .collect();
            let s: SlotSet = text.join(",").parse().unwrap();
            let mut naive = std::collections::BTreeSet::new();
            for &(a, w) in &ranges {
                naive.extend(a..=(a + w).min(16383));
            }
            prop_assert_eq!(s.len(), naive.len());
            prop_assert!(s.iter().eq(naive.iter().copied()));
            for probe in [0u16, 1, 100, 8000, 16383] {
                prop_assert_eq!(s.contains(probe), naive.contains(&probe));
            }
            for w in s.ranges().windows(2) {
                prop_assert!(u32::from(*w[0].end()) + 1 < u32::from(*w[1].start()));
            }
            prop_assert_eq!(s.to_string().parse::<SlotSet>().unwrap(), s);
        }

        /// Random strings as slot lists or endpoints: no panic.
        #[test]
        fn random_strings_never_panic(s in "\\PC{0,40}") {
            let _ = s.parse::<SlotSet>();
            if let Ok(e) = s.parse::<MovingEndpoint>() {
                prop_assert_eq!(e.to_string().parse::<MovingEndpoint>().unwrap(), e);
            }
        }
    }
}

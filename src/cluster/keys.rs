//! Where a command's keys are, and which node(s) it must go to.
//!
//! [`CommandTable`] knows the key positions of the common commands, in the
//! spirit of `COMMAND INFO`'s *first key / last key / step* and of Redis 7's
//! key specifications (`numkeys` forms, `STREAMS` keyword, ...), and
//! [`learns`](CommandTable::learn) others from a `COMMAND INFO` reply.
//! [`CommandTable::route`] turns one command into a [`Route`]: the slot of its
//! keys (which must all hash to one slot), any primary for key-less commands,
//! or a fan-out to every primary / every node whose replies are merged with an
//! [`Aggregate`].
//!
//! # Fan-out commands
//!
//! Key-less commands go to any primary, except the few whose meaning is
//! cluster-wide. The list is kept short on purpose; every entry is there for
//! a reason:
//!
//! | command | route | why |
//! |---|---|---|
//! | `DBSIZE` | all primaries, [`Sum`](Aggregate::Sum) | each primary counts only the keys of its own slots |
//! | `KEYS pattern` | all primaries, [`Concat`](Aggregate::Concat) | each primary lists only its own keys |
//! | `FLUSHALL`, `FLUSHDB` | all primaries, [`AllOk`](Aggregate::AllOk) | each primary flushes only its own keys (replicas follow their primary) |
//! | `SCRIPT LOAD` | all primaries, [`AllEqual`](Aggregate::AllEqual) | the script cache is per node; every primary must know the script for `EVALSHA` to work on every slot. Every node returns the same SHA1 |
//! | `SCRIPT FLUSH` | all primaries, [`AllOk`](Aggregate::AllOk) | the counterpart of `SCRIPT LOAD` |
//! | `SCRIPT EXISTS sha...` | all primaries, [`LogicalAnd`](Aggregate::LogicalAnd) | a script "exists" for the cluster when every primary has it |
//! | `FUNCTION LOAD` | all primaries, [`AllEqual`](Aggregate::AllEqual) | functions are per shard (replicated to replicas); every primary returns the library name |
//! | `FUNCTION FLUSH`, `FUNCTION DELETE`, `FUNCTION RESTORE` | all primaries, [`AllOk`](Aggregate::AllOk) | the counterparts of `FUNCTION LOAD` |
//! | `CONFIG SET` | all nodes, [`AllOk`](Aggregate::AllOk) | configuration is per process, and a replica that is promoted should behave like the primary it replaces |
//!
//! Deliberately **not** fanned out (they go to any primary):
//! `RANDOMKEY` (any primary's random key is a random key), `SCAN` (a cursor
//! belongs to one node: scan each node yourself), `WAIT` / `WAITAOF` (they
//! count the replicas of the node that took the caller's earlier writes,
//! which only the caller knows: send them pinned to that node), `SCRIPT
//! KILL` / `FUNCTION KILL` (only the node running the script can kill it; a
//! fan-out would report `NOTBUSY` from the others), `PUBLISH` (the cluster
//! bus already forwards it to every node), `CONFIG GET`, `INFO`, `CLIENT`,
//! `CLUSTER` (per-node views: ask the node you mean), `MULTI` / `EXEC` /
//! `DISCARD` (the cluster service pins a transaction to the node of its
//! keys). The script cache is not replicated, so a replica promoted after
//! `SCRIPT LOAD` does not know the script: callers should fall back from
//! `NOSCRIPT` to `EVAL`.
//!
//! Shard channels (`SPUBLISH`, `SSUBSCRIBE`, `SUNSUBSCRIBE`) route by their
//! channel's slot: the channel counts as a key here, as in `COMMAND GETKEYS`.
//!
//! ```
//! use redis_layers::cluster::keys::{Aggregate, CommandTable, Route};
//! use redis_layers::cluster::slot::key_slot;
//! use redis_layers::cmd;
//!
//! let table = CommandTable::default();
//! assert_eq!(table.route(&cmd("GET").arg("foo")).unwrap(), Route::Slot(key_slot(b"foo")));
//! assert_eq!(table.route(&cmd("PING")).unwrap(), Route::AnyPrimary);
//! assert_eq!(table.route(&cmd("DBSIZE")).unwrap(), Route::AllPrimaries(Aggregate::Sum));
//! assert!(table.route(&cmd("MGET").arg("a").arg("b")).is_err()); // two slots
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::cluster::slot::key_slot;
use crate::error::{Error, ProtocolError, ServerError};
use crate::resp::{Cmd, Value};

// ===== routes and aggregation =====

/// Where one command must be sent.
///
/// ```
/// use redis_layers::cluster::keys::{CommandTable, Route};
/// use redis_layers::cmd;
///
/// let route = CommandTable::default().route(&cmd("SET").arg("{u1}.name").arg("ann")).unwrap();
/// match route {
///     Route::Slot(slot) => assert!(slot < 16384),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Route {
    /// A keyed command: to the node serving this slot (every key of the
    /// command hashes to it).
    Slot(u16),
    /// A key-less command any node can answer (`PING`, `ECHO`, `TIME`,
    /// ...), and any command given without keys: to any primary.
    AnyPrimary,
    /// A command whose meaning is cluster-wide: to every primary, the
    /// replies combined with the [`Aggregate`].
    AllPrimaries(Aggregate),
    /// A command that must reach every node, replicas included, the replies
    /// combined with the [`Aggregate`].
    AllNodes(Aggregate),
}

/// How the replies of a fan-out are combined into one.
///
/// ```
/// use redis_layers::cluster::keys::Aggregate;
/// use redis_layers::Value;
///
/// let total = Aggregate::Sum.combine(vec![Value::Integer(2), Value::Integer(3)]).unwrap();
/// assert_eq!(total, Value::Integer(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Aggregate {
    /// Integer replies, added (`DBSIZE`).
    Sum,
    /// Every reply is `OK`; the result is `OK` (`FLUSHALL`, `CONFIG SET`).
    AllOk,
    /// Every reply is the same; the result is that reply (`SCRIPT LOAD`'s
    /// SHA1, `FUNCTION LOAD`'s library name).
    AllEqual,
    /// Array replies, concatenated in node order (`KEYS`).
    Concat,
    /// Arrays of the same length of integer (or boolean) flags, combined
    /// element-wise with a logical AND (`SCRIPT EXISTS`).
    LogicalAnd,
}

/// The code of the error [`Aggregate::combine`] returns when the nodes'
/// replies disagree where they must agree ([`Aggregate::AllEqual`]).
///
/// ```
/// use redis_layers::cluster::keys::{Aggregate, FANOUT_MISMATCH};
/// use redis_layers::Value;
///
/// let err = Aggregate::AllEqual
///     .combine(vec![Value::Integer(1), Value::Integer(2)])
///     .unwrap_err();
/// assert_eq!(err.server_error().unwrap().code(), FANOUT_MISMATCH);
/// ```
pub const FANOUT_MISMATCH: &str = "FANOUTMISMATCH";

impl Aggregate {
    /// Combines the replies of a fan-out, one per node, into one reply.
    ///
    /// Errors, in this order:
    /// - no reply at all: [`Error::Config`] (the fan-out reached no node);
    /// - an error reply from any node: the first one, as [`Error::Server`];
    /// - a reply of the wrong type for the aggregate (not an integer for
    ///   `Sum`, not `OK` for `AllOk`, not an array for `Concat` /
    ///   `LogicalAnd`, arrays of different lengths for `LogicalAnd`), or a
    ///   `Sum` that overflows: [`Error::Protocol`], naming the reply;
    /// - replies that differ for `AllEqual`: an [`Error::Server`] whose code
    ///   is [`FANOUT_MISMATCH`], naming the first two replies that differ
    ///   (nodes really did answer, but not the same thing: nothing is wrong
    ///   with the connections).
    ///
    /// Attributes around replies are ignored.
    ///
    /// ```
    /// use redis_layers::cluster::keys::Aggregate;
    /// use redis_layers::{Error, Value};
    ///
    /// let arr = |v: &[i64]| Value::Array(v.iter().map(|&i| Value::Integer(i)).collect());
    /// assert_eq!(
    ///     Aggregate::LogicalAnd.combine(vec![arr(&[1, 1, 0]), arr(&[1, 0, 0])]).unwrap(),
    ///     arr(&[1, 0, 0]),
    /// );
    /// assert_eq!(Aggregate::Concat.combine(vec![arr(&[1]), arr(&[2, 3])]).unwrap(), arr(&[1, 2, 3]));
    /// let ok = Value::SimpleString("OK".into());
    /// assert_eq!(Aggregate::AllOk.combine(vec![ok.clone(), ok.clone()]).unwrap(), ok);
    /// let err = Aggregate::AllOk
    ///     .combine(vec![ok, Value::Error("READONLY You can't write against a read only replica.".into())])
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::Server(e) if e.code() == "READONLY"));
    /// ```
    pub fn combine(self, replies: Vec<Value>) -> Result<Value, Error> {
        let replies: Vec<Value> = replies.into_iter().map(Value::without_attributes).collect();
        if replies.is_empty() {
            return Err(Error::config(format!(
                "no replies to combine ({self:?}): the fan-out reached no node"
            )));
        }
        if let Some(e) = replies.iter().find_map(Value::as_server_error) {
            return Err(Error::Server(e));
        }
        match self {
            Aggregate::Sum => {
                let mut total: i64 = 0;
                for (i, r) in replies.iter().enumerate() {
                    let n = r
                        .as_int()
                        .ok_or_else(|| self.unexpected(i, r, "an integer"))?;
                    total = total.checked_add(n).ok_or_else(|| {
                        Error::Protocol(ProtocolError::new(format!(
                            "fan-out {self:?}: the sum of the replies overflows (reply {i} is {n})"
                        )))
                    })?;
                }
                Ok(Value::Integer(total))
            }
            Aggregate::AllOk => {
                for (i, r) in replies.iter().enumerate() {
                    let ok = matches!(r, Value::SimpleString(s) | Value::BulkString(s)
                        if s.eq_ignore_ascii_case(b"OK"));
                    if !ok {
                        return Err(self.unexpected(i, r, "OK"));
                    }
                }
                Ok(Value::SimpleString(Bytes::from_static(b"OK")))
            }
            Aggregate::AllEqual => {
                let mut replies = replies.into_iter();
                let first = replies.next().unwrap_or(Value::Null);
                for (i, r) in replies.enumerate() {
                    if r != first {
                        let msg = format!(
                            "{FANOUT_MISMATCH} nodes disagree: reply 0 is {}, reply {} is {}",
                            short(&first),
                            i + 1,
                            short(&r)
                        );
                        return Err(Error::Server(ServerError::parse(msg)));
                    }
                }
                Ok(first)
            }
            Aggregate::Concat => {
                let mut all = Vec::new();
                for (i, r) in replies.into_iter().enumerate() {
                    match r {
                        Value::Array(items) | Value::Set(items) => all.extend(items),
                        other => return Err(self.unexpected(i, &other, "an array")),
                    }
                }
                Ok(Value::Array(all))
            }
            Aggregate::LogicalAnd => {
                let mut acc: Option<Vec<Value>> = None;
                for (i, r) in replies.iter().enumerate() {
                    let items = match r {
                        Value::Array(items) | Value::Set(items) => items,
                        other => return Err(self.unexpected(i, other, "an array")),
                    };
                    let flags = items
                        .iter()
                        .map(|v| match v {
                            Value::Integer(n) => Some(*n != 0),
                            Value::Boolean(b) => Some(*b),
                            _ => None,
                        })
                        .collect::<Option<Vec<bool>>>()
                        .ok_or_else(|| self.unexpected(i, r, "an array of integers"))?;
                    match &mut acc {
                        None => acc = Some(items.clone()),
                        Some(acc) if acc.len() != flags.len() => {
                            return Err(Error::Protocol(ProtocolError::new(format!(
                                "fan-out {self:?}: reply 0 has {} elements but reply {i} has {}",
                                acc.len(),
                                flags.len()
                            ))));
                        }
                        Some(acc) => {
                            for (a, f) in acc.iter_mut().zip(flags) {
                                if !f {
                                    *a = match a {
                                        Value::Boolean(_) => Value::Boolean(false),
                                        _ => Value::Integer(0),
                                    };
                                }
                            }
                        }
                    }
                }
                // Normalise the first reply's integers to 0/1.
                let acc = acc
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| match v {
                        Value::Integer(n) => Value::Integer(i64::from(n != 0)),
                        other => other,
                    })
                    .collect();
                Ok(Value::Array(acc))
            }
        }
    }

    fn unexpected(self, i: usize, r: &Value, expected: &str) -> Error {
        Error::Protocol(ProtocolError::new(format!(
            "fan-out {self:?}: reply {i} is {}, expected {expected}",
            short(r)
        )))
    }
}

/// A reply's debug form, cut to a readable length.
fn short(v: &Value) -> String {
    let mut s = format!("{v:?}");
    if s.len() > 120 {
        let mut end = 117;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

// ===== errors =====

/// Why a command could not be routed. Nothing was sent.
///
/// ```
/// use redis_layers::cluster::keys::{CommandTable, RouteError};
/// use redis_layers::{cmd, Error};
///
/// let err = CommandTable::default().route(&cmd("MSET").arg("a").arg(1).arg("b").arg(2)).unwrap_err();
/// assert!(matches!(err, RouteError::CrossSlot { .. }));
/// let err: Error = err.into();
/// assert!(matches!(err, Error::Config(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteError {
    /// The command's keys hash to different slots (the first two slots
    /// found). Use hash tags (`{user1}.a`, `{user1}.b`) to keep keys that
    /// are used together in one slot.
    CrossSlot {
        /// Two of the slots the keys hash to.
        slots: (u16, u16),
    },
    /// The command is not in the table (name lowercased, `container|sub`
    /// for a subcommand is never reported: an unknown subcommand falls back
    /// to its container). Learn it with [`CommandTable::learn`].
    UnknownCommand(String),
    /// The command's arguments do not say where its keys are (an empty
    /// command, a `numkeys` that is not a number or exceeds the arguments).
    Malformed(String),
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::CrossSlot { slots: (a, b) } => write!(
                f,
                "the command's keys hash to different slots ({a} and {b}); \
                 use a hash tag ({{...}}) to keep keys used together in one slot"
            ),
            RouteError::UnknownCommand(name) => write!(
                f,
                "unknown command {name:?}: its key positions are not in the command table"
            ),
            RouteError::Malformed(msg) => write!(f, "malformed command: {msg}"),
        }
    }
}

impl std::error::Error for RouteError {}

impl From<RouteError> for Error {
    /// A routing error is a usage error caught before sending:
    /// [`Error::Config`], with the message `cluster routing: ...`.
    fn from(e: RouteError) -> Self {
        Error::Config(format!("cluster routing: {e}"))
    }
}

// ===== key specifications =====

/// Where the search for keys starts (a Redis 7 key spec's `begin_search`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Begin {
    /// At this argument.
    Index(usize),
    /// After this keyword, searched from `from` (negative: from the end,
    /// backwards).
    Keyword { word: Cow<'static, [u8]>, from: i64 },
}

/// Which arguments after the start are keys (a key spec's `find_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Find {
    /// From the start to `last` (relative to the start if >= 0, else from
    /// the end: -1 is the last argument) every `step`; with `last == -1`, a
    /// `limit` above 1 keeps only the first 1/limit of the rest (`XREAD`'s
    /// keys are the first half after `STREAMS`).
    Range {
        last: i64,
        step: usize,
        limit: usize,
    },
    /// The argument at start + `idx` is a number of keys; they begin at
    /// start + `first`, every `step`.
    KeyNum {
        idx: usize,
        first: usize,
        step: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeySpec {
    begin: Begin,
    find: Find,
}

/// How to find a command's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyRule {
    /// No keys.
    None,
    /// Key specs, applied in order.
    Specs(Cow<'static, [KeySpec]>),
    /// `SORT key ... [STORE dst]`: the key, and the last `STORE`'s
    /// destination, skipping `LIMIT off count`, `BY pattern`, `GET pattern`.
    Sort,
    /// `MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw]
    /// [AUTH2 user pw] [KEYS key...]`.
    Migrate,
    /// `GEORADIUS[BYMEMBER] key ... [STORE dst] [STOREDIST dst]`: the key
    /// and the last store destination (searched from argument `from`).
    GeoStore { from: usize },
}

impl KeyRule {
    /// `(first, count, step)` when the keys are at fixed positions (one
    /// index and a range ending at a fixed offset: `GET`, `SET`, `RENAME`,
    /// ...). `count` may exceed the arguments given.
    fn fixed_positions(&self) -> Option<(usize, usize, usize)> {
        match self {
            KeyRule::Specs(specs) => match &specs[..] {
                [KeySpec {
                    begin: Begin::Index(first),
                    find: Find::Range { last, step, .. },
                }] if *last >= 0 => {
                    let step = (*step).max(1);
                    let count = usize::try_from(*last).ok()? / step + 1;
                    Some((*first, count, step))
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// A fan-out policy; `None` routes by keys.
type Fanout = Option<Route>;

#[derive(Debug, Clone)]
struct Entry {
    rule: KeyRule,
    readonly: bool,
    /// Has subcommands, looked up as `name|sub`.
    container: bool,
    fanout: Fanout,
}

/// The route of a command whose keys are at fixed positions.
fn slot_at(cmd: &Cmd, (first, count, step): (usize, usize, usize)) -> Result<Route, RouteError> {
    let mut slot: Option<u16> = None;
    for k in cmd.argv().skip(first).step_by(step).take(count) {
        let s = key_slot(k);
        match slot {
            None => slot = Some(s),
            Some(seen) if seen != s => return Err(RouteError::CrossSlot { slots: (seen, s) }),
            Some(_) => {}
        }
    }
    Ok(slot.map_or(Route::AnyPrimary, Route::Slot))
}

/// The encoding a command's buffer starts with when its name is `name`
/// (`$3\r\nGET\r\n`), copied into `head` if it fits; its length.
fn head_of(raw: &[u8], name: &[u8], head: &mut [u8; MEMO_HEAD]) -> Option<u8> {
    let end = raw.iter().position(|&b| b == b'\n')? + 1 + name.len() + 2;
    let src = raw.get(..end).filter(|_| end <= MEMO_HEAD)?;
    head[..end].copy_from_slice(src);
    u8::try_from(end).ok()
}

/// True when `raw` starts with `head[..n]`. The encoding is canonical, so
/// equal bytes mean an equal name; eight bytes at a time, because a
/// `memcmp` call costs more than a short name.
#[inline]
fn starts_with_head(raw: &[u8], head: &[u8; MEMO_HEAD], n: u8) -> bool {
    let n = usize::from(n);
    let Some(raw) = raw.get(..n) else {
        return false;
    };
    let word = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let mut i = 0;
    while i + 8 <= n {
        if word(raw, i) != word(head, i) {
            return false;
        }
        i += 8;
    }
    // The rest byte by byte (a slice compare would call `memcmp`).
    raw[i..].iter().zip(&head[i..n]).all(|(a, b)| a == b)
}

/// The route of a command with one key, right after a name `n` bytes long
/// (`GET k`, `INCR k`, `SET k v`): read where it is, no parsing of the rest.
#[inline]
fn one_key_after(raw: &[u8], n: u8) -> Route {
    Cmd::arg_at(raw, usize::from(n)).map_or(Route::AnyPrimary, |k| Route::Slot(key_slot(k)))
}

/// The last command one caller routed, when its keys sit at fixed
/// positions: a caller that sends the same command again (a loop of `GET`s,
/// the usual case) skips the table lookup. Each [`Cluster`](super::Cluster)
/// clone keeps one, and forgets it when the table may have changed.
#[derive(Debug, Default)]
pub(crate) struct RouteMemo {
    /// The name's encoding as the command starts with it ([`head_of`]);
    /// `len` 0: nothing remembered.
    head: [u8; MEMO_HEAD],
    len: u8,
    fixed: (usize, usize, usize),
}

/// Room for the encoding of a name of up to 17 bytes (`$17\r\n`, the name,
/// `\r\n`).
const MEMO_HEAD: usize = 24;

/// Key positions `(first, count, step)` of a command with one key, first.
const ONE_KEY: (usize, usize, usize) = (1, 1, 1);

impl RouteMemo {
    /// Forgets the command (the table changed).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }
}

impl CommandTable {
    /// The slot of `cmd` when it is the command `memo` remembers and its one
    /// key follows the name (what [`route_memo`](Self::route_memo) would
    /// route to that slot); `None` otherwise.
    #[inline]
    pub(crate) fn remembered_one_key(&self, memo: &RouteMemo, cmd: &Cmd) -> Option<u16> {
        let (raw, _) = cmd.raw();
        if memo.len == 0 || memo.fixed != ONE_KEY || !starts_with_head(raw, &memo.head, memo.len) {
            return None;
        }
        Cmd::arg_at(raw, usize::from(memo.len)).map(key_slot)
    }

    /// The same as [`CommandTable::route`], remembering the command in `memo`.
    pub(crate) fn route_memo(&self, memo: &mut RouteMemo, cmd: &Cmd) -> Result<Route, RouteError> {
        let (raw, _) = cmd.raw();
        if memo.len > 0 && starts_with_head(raw, &memo.head, memo.len) {
            if memo.fixed == ONE_KEY {
                return Ok(one_key_after(raw, memo.len));
            }
            return slot_at(cmd, memo.fixed);
        }
        let (entry, container) = self.entry_of(cmd)?;
        memo.len = 0;
        if let (Some(name), Some(fixed), false, None) = (
            cmd.name(),
            entry.rule.fixed_positions(),
            container,
            &entry.fanout,
        ) {
            if let Some(len) = head_of(raw, name, &mut memo.head) {
                memo.len = len;
                memo.fixed = fixed;
            }
        }
        self.route_with(entry, cmd)
    }
}

/// [`CommandTable::route`] for many commands; see [`CommandTable::router`].
pub(crate) struct Router<'t> {
    table: &'t CommandTable,
    /// The last name looked up (its encoding, [`head_of`]; `len` 0: none)
    /// and its entry; never a command with subcommands, whose entry depends
    /// on the next argument.
    head: [u8; MEMO_HEAD],
    len: u8,
    last: Option<&'t Entry>,
    /// The entry's one key follows the name (and it goes by slot).
    one_key: bool,
}

impl<'t> Router<'t> {
    /// The same as [`CommandTable::route`]. The same command as the last
    /// one is routed inline (a pipeline of one command over and over is
    /// the common case); another is looked up.
    #[inline]
    pub(crate) fn route(&mut self, cmd: &Cmd) -> Result<Route, RouteError> {
        let (raw, _) = cmd.raw();
        if let Some(e) = self.last {
            if starts_with_head(raw, &self.head, self.len) {
                if self.one_key {
                    return Ok(one_key_after(raw, self.len));
                }
                return self.table.route_with(e, cmd);
            }
        }
        self.look_up(cmd)
    }

    /// [`route`](Self::route) for a command other than the last one.
    #[inline(never)]
    fn look_up(&mut self, cmd: &Cmd) -> Result<Route, RouteError> {
        let (raw, _) = cmd.raw();
        let (e, container) = self.table.entry_of(cmd)?;
        self.last = None;
        if let (Some(name), false) = (cmd.name(), container) {
            if let Some(len) = head_of(raw, name, &mut self.head) {
                self.len = len;
                self.last = Some(e);
                self.one_key = e.fanout.is_none() && e.rule.fixed_positions() == Some(ONE_KEY);
            }
        }
        self.table.route_with(e, cmd)
    }
}

/// FNV-1a: command names are short and trusted enough; SipHash would be
/// most of a lookup's cost.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    // A slice's hash starts with its length: one step, not eight byte steps
    // (that prefix was half the hashing of a short name).
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x0100_0000_01b3);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Map = HashMap<Box<[u8]>, Entry, BuildHasherDefault<Fnv>>;

// ===== the table =====

/// Key positions, read-only flags and fan-out policies of Redis commands.
///
/// `CommandTable::default()` is the built-in table of common commands
/// (strings, hashes, lists, sets, sorted sets, keys and expiry, scripts and
/// functions, streams, pub/sub, bitmaps, HyperLogLog, geo, transactions, and
/// the usual server and connection commands). It is shared: cloning a table
/// is cheap until one of the clones [`learn`](Self::learn)s.
///
/// ```
/// use redis_layers::cluster::keys::CommandTable;
/// use redis_layers::cmd;
///
/// let table = CommandTable::default();
/// let c = cmd("EVAL").arg("return 1").arg(2).arg("{t}a").arg("{t}b").arg("argv1");
/// assert_eq!(table.keys(&c).unwrap(), [&b"{t}a"[..], b"{t}b"]);
/// assert!(table.is_read_only(&cmd("GET").arg("k")));
/// assert!(!table.is_read_only(&cmd("SET").arg("k").arg("v")));
/// ```
#[derive(Clone)]
pub struct CommandTable {
    map: Arc<Map>,
}

impl Default for CommandTable {
    /// The built-in table.
    fn default() -> Self {
        static BUILTIN: OnceLock<Arc<Map>> = OnceLock::new();
        CommandTable {
            map: BUILTIN.get_or_init(|| Arc::new(builtin())).clone(),
        }
    }
}

impl fmt::Debug for CommandTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandTable")
            .field("commands", &self.map.len())
            .finish()
    }
}

/// At most this many arguments are indexed on the stack.
const INLINE_ARGS: usize = 16;

/// Calls `f` with the command's arguments as a slice, without allocating
/// for short commands.
fn with_args<'a, R>(cmd: &'a Cmd, f: impl FnOnce(&[&'a [u8]]) -> R) -> R {
    if cmd.arg_count() <= INLINE_ARGS {
        let mut buf: [&'a [u8]; INLINE_ARGS] = [&[]; INLINE_ARGS];
        let mut n = 0;
        for a in cmd.argv().take(INLINE_ARGS) {
            buf[n] = a;
            n += 1;
        }
        f(&buf[..n])
    } else {
        let args: Vec<&'a [u8]> = cmd.argv().collect();
        f(&args)
    }
}

/// Calls `f` with `parts` joined by `|`, lowercased, without allocating for
/// short names.
fn with_lower_name<R>(parts: &[&[u8]], f: impl FnOnce(&[u8]) -> R) -> R {
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + parts.len().saturating_sub(1);
    let mut stack = [0u8; 64];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            buf[at] = b'|';
            at += 1;
        }
        for (d, s) in buf[at..at + p.len()].iter_mut().zip(p.iter()) {
            *d = s.to_ascii_lowercase();
        }
        at += p.len();
    }
    f(buf)
}

/// Parses a non-negative decimal argument.
fn parse_count(arg: &[u8]) -> Option<usize> {
    let n = crate::resp::decoder::parse_int(arg)?;
    usize::try_from(n).ok()
}

impl CommandTable {
    /// A table that knows no command at all; fill it with
    /// [`learn`](Self::learn).
    ///
    /// ```
    /// use redis_layers::cluster::keys::{CommandTable, RouteError};
    /// use redis_layers::cmd;
    ///
    /// let t = CommandTable::empty();
    /// assert!(t.is_empty());
    /// assert_eq!(t.route(&cmd("GET").arg("k")), Err(RouteError::UnknownCommand("get".into())));
    /// ```
    pub fn empty() -> Self {
        CommandTable {
            map: Arc::new(Map::default()),
        }
    }

    /// The number of commands and subcommands known.
    ///
    /// ```
    /// use redis_layers::cluster::keys::CommandTable;
    /// assert!(CommandTable::default().len() > 200);
    /// ```
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when the table knows no command.
    ///
    /// ```
    /// use redis_layers::cluster::keys::CommandTable;
    /// assert!(!CommandTable::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The names known, lowercased and sorted; subcommands as
    /// `container|sub`, the way `COMMAND INFO` names them.
    ///
    /// ```
    /// use redis_layers::cluster::keys::CommandTable;
    /// let names = CommandTable::default().names();
    /// assert!(names.iter().any(|n| n == "get"));
    /// assert!(names.iter().any(|n| n == "object|encoding"));
    /// ```
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .map
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        names.sort_unstable();
        names
    }

    /// True when the table knows `name` (any case; `container|sub` for a
    /// subcommand).
    ///
    /// ```
    /// use redis_layers::cluster::keys::CommandTable;
    /// let t = CommandTable::default();
    /// assert!(t.contains("GET") && t.contains("xinfo|stream") && !t.contains("nosuch"));
    /// ```
    pub fn contains(&self, name: &str) -> bool {
        with_lower_name(&[name.as_bytes()], |n| self.map.contains_key(n))
    }

    /// The `COMMAND INFO`-style `(first key, last key, step)` of a command
    /// (any case; `container|sub` for a subcommand) whose keys are one plain
    /// range, `(0, 0, 0)` for a key-less one, and `None` for a command whose
    /// keys move (`numkeys` forms, keywords, `SORT`, ...) or that is
    /// unknown.
    ///
    /// ```
    /// use redis_layers::cluster::keys::CommandTable;
    /// let t = CommandTable::default();
    /// assert_eq!(t.legacy_range("mset"), Some((1, -1, 2)));
    /// assert_eq!(t.legacy_range("blpop"), Some((1, -2, 1)));
    /// assert_eq!(t.legacy_range("object|encoding"), Some((2, 2, 1)));
    /// assert_eq!(t.legacy_range("ping"), Some((0, 0, 0)));
    /// assert_eq!(t.legacy_range("eval"), None);
    /// ```
    pub fn legacy_range(&self, name: &str) -> Option<(i64, i64, i64)> {
        let entry = with_lower_name(&[name.as_bytes()], |n| self.map.get(n))?;
        match &entry.rule {
            KeyRule::None => Some((0, 0, 0)),
            KeyRule::Specs(specs) => match &specs[..] {
                [KeySpec {
                    begin: Begin::Index(first),
                    find: Find::Range { last, step, limit },
                }] if *limit <= 1 => {
                    let first = i64::try_from(*first).ok()?;
                    let last = if *last >= 0 { first + last } else { *last };
                    Some((first, last, i64::try_from(*step).ok()?))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The entry of a command: its container's subcommand entry when there
    /// is one, else its own.
    fn entry(&self, cmd: &Cmd) -> Result<&Entry, RouteError> {
        self.entry_of(cmd).map(|(e, _)| e)
    }

    /// The command's entry, and whether its name has subcommands (`CLIENT`,
    /// `OBJECT`, ...: then the entry depends on the next argument too).
    fn entry_of(&self, cmd: &Cmd) -> Result<(&Entry, bool), RouteError> {
        let mut argv = cmd.argv();
        let name = argv
            .next()
            .ok_or_else(|| RouteError::Malformed("empty command".into()))?;
        let entry = with_lower_name(&[name], |n| self.map.get(n)).ok_or_else(|| {
            RouteError::UnknownCommand(String::from_utf8_lossy(name).to_ascii_lowercase())
        })?;
        if entry.container {
            if let Some(sub) = argv.next() {
                if let Some(e) = with_lower_name(&[name, sub], |n| self.map.get(n)) {
                    return Ok((e, true));
                }
            }
        }
        Ok((entry, entry.container))
    }

    /// The keys of one command, in the order its key rules find them (a
    /// key used twice is listed twice). Key-less commands have none.
    ///
    /// ```
    /// use redis_layers::cluster::keys::CommandTable;
    /// use redis_layers::cmd;
    ///
    /// let t = CommandTable::default();
    /// let k = |c| t.keys(&c).unwrap().iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>();
    /// assert_eq!(k(cmd("MSET").arg("a").arg(1).arg("b").arg(2)), ["a", "b"]);
    /// assert_eq!(k(cmd("BLPOP").arg("l1").arg("l2").arg(0)), ["l1", "l2"]);
    /// assert_eq!(k(cmd("ZUNIONSTORE").arg("dst").arg(2).arg("z1").arg("z2").arg("WEIGHTS").arg(1).arg(2)), ["dst", "z1", "z2"]);
    /// assert_eq!(k(cmd("XREAD").arg("COUNT").arg(2).arg("STREAMS").arg("s1").arg("s2").arg("0").arg("0")), ["s1", "s2"]);
    /// assert_eq!(k(cmd("OBJECT").arg("ENCODING").arg("k")), ["k"]);
    /// assert_eq!(k(cmd("SORT").arg("k").arg("LIMIT").arg(0).arg(5).arg("STORE").arg("dst")), ["k", "dst"]);
    /// assert!(k(cmd("PING")).is_empty());
    /// ```
    pub fn keys<'a>(&self, cmd: &'a Cmd) -> Result<Vec<&'a [u8]>, RouteError> {
        let entry = self.entry(cmd)?;
        with_args(cmd, |args| {
            let mut keys = Vec::new();
            for_each_key(&entry.rule, args, |k| {
                keys.push(k);
                Ok(())
            })?;
            Ok(keys)
        })
    }

    /// Where one command must go: the slot of its keys, any primary, or a
    /// fan-out (see the [module docs](self) for the fan-out list). A command
    /// given without keys goes to any primary (the server will report what
    /// is missing).
    ///
    /// ```
    /// use redis_layers::cluster::keys::{Aggregate, CommandTable, Route, RouteError};
    /// use redis_layers::cluster::slot::key_slot;
    /// use redis_layers::cmd;
    ///
    /// let t = CommandTable::default();
    /// let slot = key_slot(b"user1");
    /// assert_eq!(t.route(&cmd("MGET").arg("{user1}.a").arg("{user1}.b")), Ok(Route::Slot(slot)));
    /// assert_eq!(t.route(&cmd("SPUBLISH").arg("news").arg("hi")), Ok(Route::Slot(key_slot(b"news"))));
    /// assert_eq!(t.route(&cmd("PUBLISH").arg("news").arg("hi")), Ok(Route::AnyPrimary));
    /// assert_eq!(t.route(&cmd("SCRIPT").arg("LOAD").arg("return 1")), Ok(Route::AllPrimaries(Aggregate::AllEqual)));
    /// assert_eq!(t.route(&cmd("CONFIG").arg("SET").arg("maxmemory").arg("1gb")), Ok(Route::AllNodes(Aggregate::AllOk)));
    /// assert!(matches!(t.route(&cmd("DEL").arg("a").arg("b")), Err(RouteError::CrossSlot { .. })));
    /// assert!(matches!(t.route(&cmd("EVAL").arg("s").arg("x")), Err(RouteError::Malformed(_))));
    /// ```
    pub fn route(&self, cmd: &Cmd) -> Result<Route, RouteError> {
        self.route_with(self.entry(cmd)?, cmd)
    }

    /// Routes the commands of a pipeline in turn: a run of commands with
    /// the same name (the usual pipeline) looks the name up once.
    pub(crate) fn router(&self) -> Router<'_> {
        Router {
            table: self,
            head: [0; MEMO_HEAD],
            len: 0,
            last: None,
            one_key: false,
        }
    }

    fn route_with(&self, entry: &Entry, cmd: &Cmd) -> Result<Route, RouteError> {
        if let Some(fanout) = &entry.fanout {
            return Ok(fanout.clone());
        }
        // Fast path, most commands: keys at fixed positions, read straight
        // off the command without indexing every argument.
        if let Some(fixed) = entry.rule.fixed_positions() {
            return slot_at(cmd, fixed);
        }
        with_args(cmd, |args| {
            let mut slot: Option<u16> = None;
            for_each_key(&entry.rule, args, |k| {
                let s = key_slot(k);
                match slot {
                    None => slot = Some(s),
                    Some(seen) if seen != s => {
                        return Err(RouteError::CrossSlot { slots: (seen, s) })
                    }
                    Some(_) => {}
                }
                Ok(())
            })?;
            Ok(slot.map_or(Route::AnyPrimary, Route::Slot))
        })
    }

    /// True for commands flagged `readonly` (safe to send to a replica in
    /// `READONLY` mode): `GET`, `MGET`, `EXISTS`, `HGET`, `ZRANGE`,
    /// `XREAD`, `EVAL_RO`, ... False for writes, for key-less commands
    /// Redis does not flag read-only, and for unknown commands.
    ///
    /// ```
    /// use redis_layers::cluster::keys::CommandTable;
    /// use redis_layers::cmd;
    ///
    /// let t = CommandTable::default();
    /// assert!(t.is_read_only(&cmd("hgetall").arg("h")));
    /// assert!(t.is_read_only(&cmd("XINFO").arg("STREAM").arg("s")));
    /// assert!(!t.is_read_only(&cmd("XGROUP").arg("CREATE").arg("s").arg("g").arg("$")));
    /// assert!(!t.is_read_only(&cmd("NOSUCH")));
    /// ```
    pub fn is_read_only(&self, cmd: &Cmd) -> bool {
        self.entry(cmd).is_ok_and(|e| e.readonly)
    }

    /// Adds (or updates) entries from a `COMMAND INFO name...` (or
    /// `COMMAND`) reply, RESP2 or RESP3: each entry an array `[name, arity,
    /// flags, first-key, last-key, step, acl-categories, tips, key-specs,
    /// subcommands]` (only the first six are required). Returns how many
    /// commands and subcommands it learned.
    ///
    /// - Key positions come from the Redis 7 key specs when the entry has
    ///   them, else from first-key / last-key / step.
    /// - If the key specs are incomplete (a spec of type `unknown` or
    ///   flagged `incomplete`, as for `SORT` and `MIGRATE`) or, without key
    ///   specs, the command is flagged `movablekeys`, an entry the table
    ///   already has keeps its key rule (only its flags are updated).
    /// - `readonly` comes from the flags; the fan-out policy of an entry
    ///   the table already has is kept.
    /// - Subcommands (`object|encoding`, ...) are learned too.
    /// - Null entries (commands the server does not know) and entries that
    ///   cannot be read are skipped.
    ///
    /// ```
    /// use redis_layers::cluster::keys::CommandTable;
    /// use redis_layers::{cmd, Value};
    ///
    /// let s = |t: &str| Value::SimpleString(t.as_bytes().to_vec().into());
    /// let reply = Value::Array(vec![
    ///     Value::Array(vec![
    ///         s("json.mget"), Value::Integer(-3),
    ///         Value::Set(vec![s("readonly")]),
    ///         Value::Integer(1), Value::Integer(-2), Value::Integer(1),
    ///     ]),
    ///     Value::Null,
    /// ]);
    /// let mut t = CommandTable::empty();
    /// assert_eq!(t.learn(&reply), 1);
    /// let c = cmd("JSON.MGET").arg("{a}1").arg("{a}2").arg("$.path");
    /// assert_eq!(t.keys(&c).unwrap(), [&b"{a}1"[..], b"{a}2"]);
    /// assert!(t.is_read_only(&c));
    /// ```
    pub fn learn(&mut self, command_info_reply: &Value) -> usize {
        let entries = match strip(command_info_reply) {
            Value::Array(items) | Value::Set(items) => items,
            _ => return 0,
        };
        let map = Arc::make_mut(&mut self.map);
        let mut learned = 0;
        for e in entries {
            learned += learn_entry(map, strip(e), 0);
        }
        learned
    }
}

// ===== finding keys =====

type KeyResult = Result<(), RouteError>;

/// Calls `f` with every key of a command with these arguments.
fn for_each_key<'a>(
    rule: &KeyRule,
    args: &[&'a [u8]],
    mut f: impl FnMut(&'a [u8]) -> KeyResult,
) -> KeyResult {
    let argc = args.len();
    let at = |i: usize, f: &mut dyn FnMut(&'a [u8]) -> KeyResult| match args.get(i) {
        Some(k) => f(k),
        None => Ok(()),
    };
    match rule {
        KeyRule::None => Ok(()),
        KeyRule::Specs(specs) => {
            for spec in specs.iter() {
                apply_spec(spec, args, &mut f)?;
            }
            Ok(())
        }
        KeyRule::Sort => {
            at(1, &mut f)?;
            let mut store = None;
            let mut i = 2;
            while i < argc {
                let a = args[i];
                if a.eq_ignore_ascii_case(b"LIMIT") {
                    i += 2;
                } else if a.eq_ignore_ascii_case(b"GET") || a.eq_ignore_ascii_case(b"BY") {
                    i += 1;
                } else if a.eq_ignore_ascii_case(b"STORE") && i + 1 < argc {
                    store = Some(i + 1);
                }
                i += 1;
            }
            match store {
                Some(i) => at(i, &mut f),
                None => Ok(()),
            }
        }
        KeyRule::Migrate => {
            let mut i = 6;
            while i < argc {
                let a = args[i];
                if a.eq_ignore_ascii_case(b"KEYS") {
                    if args.get(3).is_some_and(|k| !k.is_empty()) {
                        return Err(RouteError::Malformed(
                            "MIGRATE ... KEYS needs the empty string as its key argument".into(),
                        ));
                    }
                    for k in &args[i + 1..] {
                        f(k)?;
                    }
                    return Ok(());
                }
                if a.eq_ignore_ascii_case(b"AUTH") {
                    i += 1;
                } else if a.eq_ignore_ascii_case(b"AUTH2") {
                    i += 2;
                }
                i += 1;
            }
            at(3, &mut f)
        }
        KeyRule::GeoStore { from } => {
            at(1, &mut f)?;
            let mut store = None;
            let mut i = *from;
            while i < argc {
                let a = args[i];
                if (a.eq_ignore_ascii_case(b"STORE") || a.eq_ignore_ascii_case(b"STOREDIST"))
                    && i + 1 < argc
                {
                    store = Some(i + 1);
                    i += 1;
                }
                i += 1;
            }
            match store {
                Some(i) => at(i, &mut f),
                None => Ok(()),
            }
        }
    }
}

/// Applies one key spec the way Redis 7 does (`getKeysUsingKeySpecs`):
/// keys past the end of the arguments are not there (the server reports
/// the arity error).
fn apply_spec<'a>(
    spec: &KeySpec,
    args: &[&'a [u8]],
    f: &mut impl FnMut(&'a [u8]) -> KeyResult,
) -> KeyResult {
    let argc = args.len();
    let first = match &spec.begin {
        Begin::Index(i) => *i,
        Begin::Keyword { word, from } => {
            let found = if *from > 0 {
                let start = usize::try_from(*from).unwrap_or(usize::MAX);
                (start..argc).find(|&i| args[i].eq_ignore_ascii_case(word))
            } else {
                // Backwards from argc + from (-1: the last argument) down
                // to 1; nothing when that start is not an argument.
                let start = (argc as i64).saturating_add(*from);
                match usize::try_from(start) {
                    Ok(start) if start < argc => (1..=start)
                        .rev()
                        .find(|&i| args[i].eq_ignore_ascii_case(word)),
                    _ => None,
                }
            };
            match found {
                Some(i) => i + 1,
                None => return Ok(()),
            }
        }
    };
    if first == 0 {
        return Ok(());
    }
    match spec.find {
        Find::Range { last, step, limit } => {
            let (first_i, argc_i) = (first as i64, argc as i64);
            let last_i = if last >= 0 {
                first_i.saturating_add(last)
            } else if limit <= 1 {
                argc_i + last
            } else {
                first_i + (argc_i - first_i).max(0) / limit as i64 + last
            };
            let step = step.max(1);
            let mut i = first;
            while (i as i64) <= last_i && i < argc {
                f(args[i])?;
                i = i.saturating_add(step);
            }
            Ok(())
        }
        Find::KeyNum {
            idx,
            first: k0,
            step,
        } => {
            let Some(n_arg) = first.checked_add(idx).and_then(|i| args.get(i)) else {
                return Ok(());
            };
            let name = String::from_utf8_lossy(args[0]).to_ascii_uppercase();
            let n = parse_count(n_arg).ok_or_else(|| {
                RouteError::Malformed(format!(
                    "{name}: the number of keys {:?} is not a non-negative integer",
                    String::from_utf8_lossy(n_arg)
                ))
            })?;
            if n == 0 {
                return Ok(());
            }
            let step = step.max(1);
            let start = first.saturating_add(k0);
            let last = (n - 1)
                .checked_mul(step)
                .and_then(|d| d.checked_add(start))
                .filter(|&l| l < argc);
            if last.is_none() {
                return Err(RouteError::Malformed(format!(
                    "{name}: {n} keys announced but only {} arguments follow",
                    argc.saturating_sub(start)
                )));
            }
            for j in 0..n {
                f(args[start + j * step])?;
            }
            Ok(())
        }
    }
}

// ===== learning from COMMAND INFO =====

pub(super) fn strip(v: &Value) -> &Value {
    match v {
        Value::Attribute { value, .. } => strip(value),
        v => v,
    }
}

pub(super) fn int_of(v: &Value) -> Option<i64> {
    match strip(v) {
        Value::Integer(i) => Some(*i),
        other => crate::resp::decoder::parse_int(other.as_bytes()?),
    }
}

/// The items of an array or set.
pub(super) fn items(v: &Value) -> Option<&[Value]> {
    match strip(v) {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// The value of `field` in a RESP3 map or a RESP2 flat key/value array.
pub(super) fn field<'v>(v: &'v Value, name: &str) -> Option<&'v Value> {
    match strip(v) {
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| {
                strip(k)
                    .as_bytes()
                    .is_some_and(|k| k.eq_ignore_ascii_case(name.as_bytes()))
            })
            .map(|(_, v)| v),
        Value::Array(items) => items
            .chunks_exact(2)
            .find(|kv| {
                strip(&kv[0])
                    .as_bytes()
                    .is_some_and(|k| k.eq_ignore_ascii_case(name.as_bytes()))
            })
            .map(|kv| &kv[1]),
        _ => None,
    }
}

fn has_flag(flags: &Value, flag: &str) -> bool {
    items(flags).is_some_and(|fs| {
        fs.iter().any(|f| {
            strip(f)
                .as_bytes()
                .is_some_and(|f| f.eq_ignore_ascii_case(flag.as_bytes()))
        })
    })
}

/// Parses one key spec; `None` for an `unknown` or unreadable one.
fn parse_spec(v: &Value) -> Option<KeySpec> {
    let bs = field(v, "begin_search")?;
    let fk = field(v, "find_keys")?;
    let ty = |m: &Value| -> Option<Vec<u8>> {
        Some(strip(field(m, "type")?).as_bytes()?.to_ascii_lowercase())
    };
    let num = |spec: &Value, name: &str| field(spec, name).and_then(int_of);
    let usize_of = |spec: &Value, name: &str| num(spec, name).and_then(|n| usize::try_from(n).ok());
    let bs_spec = field(bs, "spec")?;
    let begin = match &ty(bs)?[..] {
        b"index" => Begin::Index(usize_of(bs_spec, "index").filter(|&i| i > 0)?),
        b"keyword" => Begin::Keyword {
            word: Cow::Owned(strip(field(bs_spec, "keyword")?).as_bytes()?.to_vec()),
            from: num(bs_spec, "startfrom")?,
        },
        _ => return None,
    };
    let fk_spec = field(fk, "spec")?;
    let find = match &ty(fk)?[..] {
        b"range" => Find::Range {
            last: num(fk_spec, "lastkey")?,
            step: usize_of(fk_spec, "keystep")?,
            limit: usize_of(fk_spec, "limit").unwrap_or(0),
        },
        b"keynum" => Find::KeyNum {
            idx: usize_of(fk_spec, "keynumidx")?,
            first: usize_of(fk_spec, "firstkey")?,
            step: usize_of(fk_spec, "keystep")?,
        },
        _ => return None,
    };
    Some(KeySpec { begin, find })
}

/// A key rule from `COMMAND INFO`'s first-key / last-key / step.
fn legacy_rule(first: i64, last: i64, step: i64) -> KeyRule {
    let (Ok(first), Ok(step)) = (usize::try_from(first), usize::try_from(step)) else {
        return KeyRule::None;
    };
    if first == 0 || (last >= 0 && last < first as i64) {
        return KeyRule::None;
    }
    let last = if last >= 0 { last - first as i64 } else { last };
    if last < -1_000_000 {
        return KeyRule::None;
    }
    KeyRule::Specs(Cow::Owned(vec![KeySpec {
        begin: Begin::Index(first),
        find: Find::Range {
            last,
            step: step.max(1),
            limit: 0,
        },
    }]))
}

/// Learns one `COMMAND INFO` entry and its subcommands; returns how many.
fn learn_entry(map: &mut Map, entry: &Value, depth: usize) -> usize {
    let Some(fields) = items(entry) else {
        return 0;
    };
    let (Some(name), Some(flags), Some(first), Some(last), Some(step)) = (
        fields.first().and_then(|v| strip(v).as_bytes()),
        fields.get(2),
        fields.get(3).and_then(int_of),
        fields.get(4).and_then(int_of),
        fields.get(5).and_then(int_of),
    ) else {
        return 0;
    };
    if name.is_empty() {
        return 0;
    }
    let name: Box<[u8]> = name.to_ascii_lowercase().into();
    let readonly = has_flag(flags, "readonly");

    // Key specs (Redis 7): used when present.
    let mut incomplete = false;
    let mut rule = None;
    if let Some(specs) = fields.get(8).and_then(items) {
        if !specs.is_empty() {
            let mut parsed = Vec::with_capacity(specs.len());
            for s in specs {
                if field(s, "flags").is_some_and(|f| has_flag(f, "incomplete")) {
                    incomplete = true;
                }
                match parse_spec(s) {
                    Some(spec) => parsed.push(spec),
                    None => incomplete = true,
                }
            }
            rule = Some(if parsed.is_empty() {
                KeyRule::None
            } else {
                KeyRule::Specs(Cow::Owned(parsed))
            });
        }
    }
    let rule = rule.unwrap_or_else(|| {
        incomplete |= has_flag(flags, "movablekeys");
        legacy_rule(first, last, step)
    });
    let subcommands = fields.get(9).and_then(items).unwrap_or_default();

    let existing = map.get(&name);
    let rule = match existing {
        Some(e) if incomplete => e.rule.clone(),
        _ => rule,
    };
    let fanout = existing.and_then(|e| e.fanout.clone());
    let container = !subcommands.is_empty() || existing.is_some_and(|e| e.container);
    map.insert(
        name,
        Entry {
            rule,
            readonly,
            container,
            fanout,
        },
    );
    let mut learned = 1;
    if depth == 0 {
        for sub in subcommands {
            learned += learn_entry(map, strip(sub), depth + 1);
        }
    }
    learned
}

// ===== the built-in table =====

const RO: bool = true;
const W: bool = false;

/// Commands whose keys are one range, as `COMMAND INFO` gives it: name,
/// read-only, first key, last key (negative: from the end), step. `(0, 0,
/// 0)` is key-less.
const RANGES: &[(&str, bool, i64, i64, i64)] = &[
    // strings
    ("get", RO, 1, 1, 1),
    ("getdel", W, 1, 1, 1),
    ("getex", W, 1, 1, 1),
    ("getrange", RO, 1, 1, 1),
    ("getset", W, 1, 1, 1),
    ("set", W, 1, 1, 1),
    ("setnx", W, 1, 1, 1),
    ("setex", W, 1, 1, 1),
    ("psetex", W, 1, 1, 1),
    ("setrange", W, 1, 1, 1),
    ("strlen", RO, 1, 1, 1),
    ("substr", RO, 1, 1, 1),
    ("append", W, 1, 1, 1),
    ("incr", W, 1, 1, 1),
    ("decr", W, 1, 1, 1),
    ("incrby", W, 1, 1, 1),
    ("decrby", W, 1, 1, 1),
    ("incrbyfloat", W, 1, 1, 1),
    ("mget", RO, 1, -1, 1),
    ("mset", W, 1, -1, 2),
    ("msetnx", W, 1, -1, 2),
    ("lcs", RO, 1, 2, 1),
    // hashes
    ("hget", RO, 1, 1, 1),
    ("hmget", RO, 1, 1, 1),
    ("hgetall", RO, 1, 1, 1),
    ("hexists", RO, 1, 1, 1),
    ("hkeys", RO, 1, 1, 1),
    ("hvals", RO, 1, 1, 1),
    ("hlen", RO, 1, 1, 1),
    ("hstrlen", RO, 1, 1, 1),
    ("hrandfield", RO, 1, 1, 1),
    ("hscan", RO, 1, 1, 1),
    ("hset", W, 1, 1, 1),
    ("hsetnx", W, 1, 1, 1),
    ("hmset", W, 1, 1, 1),
    ("hdel", W, 1, 1, 1),
    ("hincrby", W, 1, 1, 1),
    ("hincrbyfloat", W, 1, 1, 1),
    // hash field expiration (Redis 7.4) and HGETDEL/HGETEX/HSETEX (8.0)
    ("hexpire", W, 1, 1, 1),
    ("hpexpire", W, 1, 1, 1),
    ("hexpireat", W, 1, 1, 1),
    ("hpexpireat", W, 1, 1, 1),
    ("hpersist", W, 1, 1, 1),
    ("httl", RO, 1, 1, 1),
    ("hpttl", RO, 1, 1, 1),
    ("hexpiretime", RO, 1, 1, 1),
    ("hpexpiretime", RO, 1, 1, 1),
    ("hgetdel", W, 1, 1, 1),
    ("hgetex", W, 1, 1, 1),
    ("hsetex", W, 1, 1, 1),
    // lists
    ("lpush", W, 1, 1, 1),
    ("rpush", W, 1, 1, 1),
    ("lpushx", W, 1, 1, 1),
    ("rpushx", W, 1, 1, 1),
    ("lpop", W, 1, 1, 1),
    ("rpop", W, 1, 1, 1),
    ("llen", RO, 1, 1, 1),
    ("lrange", RO, 1, 1, 1),
    ("lindex", RO, 1, 1, 1),
    ("lpos", RO, 1, 1, 1),
    ("lset", W, 1, 1, 1),
    ("linsert", W, 1, 1, 1),
    ("lrem", W, 1, 1, 1),
    ("ltrim", W, 1, 1, 1),
    ("rpoplpush", W, 1, 2, 1),
    ("lmove", W, 1, 2, 1),
    ("blmove", W, 1, 2, 1),
    ("brpoplpush", W, 1, 2, 1),
    ("blpop", W, 1, -2, 1),
    ("brpop", W, 1, -2, 1),
    // sets
    ("sadd", W, 1, 1, 1),
    ("srem", W, 1, 1, 1),
    ("spop", W, 1, 1, 1),
    ("smembers", RO, 1, 1, 1),
    ("sismember", RO, 1, 1, 1),
    ("smismember", RO, 1, 1, 1),
    ("scard", RO, 1, 1, 1),
    ("srandmember", RO, 1, 1, 1),
    ("sscan", RO, 1, 1, 1),
    ("smove", W, 1, 2, 1),
    ("sinter", RO, 1, -1, 1),
    ("sunion", RO, 1, -1, 1),
    ("sdiff", RO, 1, -1, 1),
    ("sinterstore", W, 1, -1, 1),
    ("sunionstore", W, 1, -1, 1),
    ("sdiffstore", W, 1, -1, 1),
    // sorted sets
    ("zadd", W, 1, 1, 1),
    ("zincrby", W, 1, 1, 1),
    ("zrem", W, 1, 1, 1),
    ("zcard", RO, 1, 1, 1),
    ("zcount", RO, 1, 1, 1),
    ("zlexcount", RO, 1, 1, 1),
    ("zscore", RO, 1, 1, 1),
    ("zmscore", RO, 1, 1, 1),
    ("zrank", RO, 1, 1, 1),
    ("zrevrank", RO, 1, 1, 1),
    ("zrange", RO, 1, 1, 1),
    ("zrevrange", RO, 1, 1, 1),
    ("zrangebyscore", RO, 1, 1, 1),
    ("zrevrangebyscore", RO, 1, 1, 1),
    ("zrangebylex", RO, 1, 1, 1),
    ("zrevrangebylex", RO, 1, 1, 1),
    ("zrandmember", RO, 1, 1, 1),
    ("zscan", RO, 1, 1, 1),
    ("zrangestore", W, 1, 2, 1),
    ("zremrangebyrank", W, 1, 1, 1),
    ("zremrangebyscore", W, 1, 1, 1),
    ("zremrangebylex", W, 1, 1, 1),
    ("zpopmin", W, 1, 1, 1),
    ("zpopmax", W, 1, 1, 1),
    ("bzpopmin", W, 1, -2, 1),
    ("bzpopmax", W, 1, -2, 1),
    // keys and expiry
    ("del", W, 1, -1, 1),
    ("unlink", W, 1, -1, 1),
    ("exists", RO, 1, -1, 1),
    ("touch", RO, 1, -1, 1),
    ("type", RO, 1, 1, 1),
    ("ttl", RO, 1, 1, 1),
    ("pttl", RO, 1, 1, 1),
    ("expiretime", RO, 1, 1, 1),
    ("pexpiretime", RO, 1, 1, 1),
    ("expire", W, 1, 1, 1),
    ("pexpire", W, 1, 1, 1),
    ("expireat", W, 1, 1, 1),
    ("pexpireat", W, 1, 1, 1),
    ("persist", W, 1, 1, 1),
    ("rename", W, 1, 2, 1),
    ("renamenx", W, 1, 2, 1),
    ("copy", W, 1, 2, 1),
    ("dump", RO, 1, 1, 1),
    ("restore", W, 1, 1, 1),
    ("move", W, 1, 1, 1),
    ("sort_ro", RO, 1, 1, 1),
    ("keys", RO, 0, 0, 0),
    ("randomkey", RO, 0, 0, 0),
    ("scan", RO, 0, 0, 0),
    ("dbsize", RO, 0, 0, 0),
    ("flushall", W, 0, 0, 0),
    ("flushdb", W, 0, 0, 0),
    ("wait", W, 0, 0, 0),
    ("waitaof", W, 0, 0, 0),
    // streams
    ("xadd", W, 1, 1, 1),
    ("xrange", RO, 1, 1, 1),
    ("xrevrange", RO, 1, 1, 1),
    ("xlen", RO, 1, 1, 1),
    ("xdel", W, 1, 1, 1),
    ("xtrim", W, 1, 1, 1),
    ("xack", W, 1, 1, 1),
    ("xclaim", W, 1, 1, 1),
    ("xautoclaim", W, 1, 1, 1),
    ("xpending", RO, 1, 1, 1),
    ("xsetid", W, 1, 1, 1),
    // pub/sub
    ("publish", W, 0, 0, 0),
    ("subscribe", W, 0, 0, 0),
    ("unsubscribe", W, 0, 0, 0),
    ("psubscribe", W, 0, 0, 0),
    ("punsubscribe", W, 0, 0, 0),
    ("spublish", W, 1, 1, 1),
    ("ssubscribe", W, 1, -1, 1),
    ("sunsubscribe", W, 1, -1, 1),
    // bitmaps
    ("setbit", W, 1, 1, 1),
    ("getbit", RO, 1, 1, 1),
    ("bitcount", RO, 1, 1, 1),
    ("bitpos", RO, 1, 1, 1),
    ("bitop", W, 2, -1, 1),
    ("bitfield", W, 1, 1, 1),
    ("bitfield_ro", RO, 1, 1, 1),
    // HyperLogLog
    ("pfadd", W, 1, 1, 1),
    ("pfcount", RO, 1, -1, 1),
    ("pfmerge", W, 1, -1, 1),
    // geo
    ("geoadd", W, 1, 1, 1),
    ("geodist", RO, 1, 1, 1),
    ("geohash", RO, 1, 1, 1),
    ("geopos", RO, 1, 1, 1),
    ("georadius_ro", RO, 1, 1, 1),
    ("georadiusbymember_ro", RO, 1, 1, 1),
    ("geosearch", RO, 1, 1, 1),
    ("geosearchstore", W, 1, 2, 1),
    // transactions
    ("watch", W, 1, -1, 1),
    ("unwatch", W, 0, 0, 0),
    ("multi", W, 0, 0, 0),
    ("exec", W, 0, 0, 0),
    ("discard", W, 0, 0, 0),
    // connection and server
    ("ping", W, 0, 0, 0),
    ("echo", W, 0, 0, 0),
    ("time", W, 0, 0, 0),
    ("info", W, 0, 0, 0),
    ("hello", W, 0, 0, 0),
    ("auth", W, 0, 0, 0),
    ("select", W, 0, 0, 0),
    ("quit", W, 0, 0, 0),
    ("reset", W, 0, 0, 0),
    ("readonly", W, 0, 0, 0),
    ("readwrite", W, 0, 0, 0),
    ("asking", W, 0, 0, 0),
    ("lastsave", W, 0, 0, 0),
    ("role", W, 0, 0, 0),
    ("lolwut", RO, 0, 0, 0),
    ("save", W, 0, 0, 0),
    ("bgsave", W, 0, 0, 0),
    ("bgrewriteaof", W, 0, 0, 0),
    // containers (their subcommands are below)
    ("object", W, 0, 0, 0),
    ("memory", W, 0, 0, 0),
    ("xinfo", W, 0, 0, 0),
    ("xgroup", W, 0, 0, 0),
    ("script", W, 0, 0, 0),
    ("function", W, 0, 0, 0),
    ("config", W, 0, 0, 0),
    ("client", W, 0, 0, 0),
    ("cluster", W, 0, 0, 0),
    ("command", W, 0, 0, 0),
    ("pubsub", W, 0, 0, 0),
    ("acl", W, 0, 0, 0),
    ("slowlog", W, 0, 0, 0),
    ("latency", W, 0, 0, 0),
    // subcommands with keys
    ("object|encoding", RO, 2, 2, 1),
    ("object|freq", RO, 2, 2, 1),
    ("object|idletime", RO, 2, 2, 1),
    ("object|refcount", RO, 2, 2, 1),
    ("object|help", W, 0, 0, 0),
    ("memory|usage", RO, 2, 2, 1),
    ("xinfo|stream", RO, 2, 2, 1),
    ("xinfo|groups", RO, 2, 2, 1),
    ("xinfo|consumers", RO, 2, 2, 1),
    ("xinfo|help", W, 0, 0, 0),
    ("xgroup|create", W, 2, 2, 1),
    ("xgroup|setid", W, 2, 2, 1),
    ("xgroup|destroy", W, 2, 2, 1),
    ("xgroup|createconsumer", W, 2, 2, 1),
    ("xgroup|delconsumer", W, 2, 2, 1),
    ("xgroup|help", W, 0, 0, 0),
    // fanned-out subcommands (policies in `FANOUT`)
    ("script|load", W, 0, 0, 0),
    ("script|flush", W, 0, 0, 0),
    ("script|exists", W, 0, 0, 0),
    ("function|load", W, 0, 0, 0),
    ("function|flush", W, 0, 0, 0),
    ("function|delete", W, 0, 0, 0),
    ("function|restore", W, 0, 0, 0),
    ("config|set", W, 0, 0, 0),
];

const fn numkeys_at(at: usize) -> [KeySpec; 1] {
    [KeySpec {
        begin: Begin::Index(at),
        find: Find::KeyNum {
            idx: 0,
            first: 1,
            step: 1,
        },
    }]
}

/// `EVAL script numkeys key...`, `FCALL`, ...: the number of keys at 2.
const NUMKEYS_AT_2: &[KeySpec] = &numkeys_at(2);
/// `ZUNION numkeys key...`, `LMPOP`, `SINTERCARD`, ...: at 1.
const NUMKEYS_AT_1: &[KeySpec] = &numkeys_at(1);
/// `ZUNIONSTORE dst numkeys key...`: the destination, then the sources.
const DEST_NUMKEYS: &[KeySpec] = &[
    KeySpec {
        begin: Begin::Index(1),
        find: Find::Range {
            last: 0,
            step: 1,
            limit: 0,
        },
    },
    KeySpec {
        begin: Begin::Index(2),
        find: Find::KeyNum {
            idx: 0,
            first: 1,
            step: 1,
        },
    },
];
const fn streams_from(from: i64) -> [KeySpec; 1] {
    [KeySpec {
        begin: Begin::Keyword {
            word: Cow::Borrowed(b"STREAMS"),
            from,
        },
        find: Find::Range {
            last: -1,
            step: 1,
            limit: 2,
        },
    }]
}
/// `XREAD [COUNT n] [BLOCK ms] STREAMS key... id...`: the first half after
/// `STREAMS`.
const XREAD: &[KeySpec] = &streams_from(1);
/// `XREADGROUP GROUP g c ... STREAMS key... id...`.
const XREADGROUP: &[KeySpec] = &streams_from(4);

/// Commands whose keys move with their arguments.
const MOVABLE: &[(&str, bool, KeyRule)] = &[
    ("eval", W, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_2))),
    ("evalsha", W, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_2))),
    ("eval_ro", RO, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_2))),
    (
        "evalsha_ro",
        RO,
        KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_2)),
    ),
    ("fcall", W, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_2))),
    ("fcall_ro", RO, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_2))),
    ("zunion", RO, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_1))),
    ("zinter", RO, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_1))),
    ("zdiff", RO, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_1))),
    (
        "zintercard",
        RO,
        KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_1)),
    ),
    (
        "sintercard",
        RO,
        KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_1)),
    ),
    ("lmpop", W, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_1))),
    ("zmpop", W, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_1))),
    ("blmpop", W, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_2))),
    ("bzmpop", W, KeyRule::Specs(Cow::Borrowed(NUMKEYS_AT_2))),
    (
        "zunionstore",
        W,
        KeyRule::Specs(Cow::Borrowed(DEST_NUMKEYS)),
    ),
    (
        "zinterstore",
        W,
        KeyRule::Specs(Cow::Borrowed(DEST_NUMKEYS)),
    ),
    ("zdiffstore", W, KeyRule::Specs(Cow::Borrowed(DEST_NUMKEYS))),
    ("xread", RO, KeyRule::Specs(Cow::Borrowed(XREAD))),
    ("xreadgroup", W, KeyRule::Specs(Cow::Borrowed(XREADGROUP))),
    ("sort", W, KeyRule::Sort),
    ("migrate", W, KeyRule::Migrate),
    ("georadius", W, KeyRule::GeoStore { from: 6 }),
    ("georadiusbymember", W, KeyRule::GeoStore { from: 5 }),
];

/// The fan-out policies (see the module docs for why each is here).
const FANOUT: &[(&str, Route)] = &[
    ("dbsize", Route::AllPrimaries(Aggregate::Sum)),
    ("keys", Route::AllPrimaries(Aggregate::Concat)),
    ("flushall", Route::AllPrimaries(Aggregate::AllOk)),
    ("flushdb", Route::AllPrimaries(Aggregate::AllOk)),
    ("script|load", Route::AllPrimaries(Aggregate::AllEqual)),
    ("script|flush", Route::AllPrimaries(Aggregate::AllOk)),
    ("script|exists", Route::AllPrimaries(Aggregate::LogicalAnd)),
    ("function|load", Route::AllPrimaries(Aggregate::AllEqual)),
    ("function|flush", Route::AllPrimaries(Aggregate::AllOk)),
    ("function|delete", Route::AllPrimaries(Aggregate::AllOk)),
    ("function|restore", Route::AllPrimaries(Aggregate::AllOk)),
    ("config|set", Route::AllNodes(Aggregate::AllOk)),
];

fn builtin() -> Map {
    let mut map = Map::default();
    for &(name, readonly, first, last, step) in RANGES {
        let entry = Entry {
            rule: legacy_rule(first, last, step),
            readonly,
            container: false,
            fanout: None,
        };
        map.insert(name.as_bytes().into(), entry);
    }
    for (name, readonly, rule) in MOVABLE {
        let entry = Entry {
            rule: rule.clone(),
            readonly: *readonly,
            container: false,
            fanout: None,
        };
        map.insert(name.as_bytes().into(), entry);
    }
    for (name, route) in FANOUT {
        if let Some(e) = map.get_mut(name.as_bytes()) {
            e.fanout = Some(route.clone());
        }
    }
    let containers: Vec<Box<[u8]>> = map
        .keys()
        .filter_map(|k| {
            let bar = k.iter().position(|&b| b == b'|')?;
            Some(k[..bar].into())
        })
        .collect();
    for c in containers {
        if let Some(e) = map.get_mut(&c) {
            e.container = true;
        }
    }
    map
}

#[cfg(test)]
mod router_tests {
    use super::*;
    use crate::cmd;

    /// The router remembers names, never a subcommand's entry.
    #[test]
    fn a_router_routes_as_route_does() {
        let t = CommandTable::default();
        let cmds = [
            cmd("GET").arg("a"),
            cmd("GET").arg("b"),
            cmd("get").arg("c"),
            cmd("OBJECT").arg("ENCODING").arg("d"),
            cmd("OBJECT").arg("HELP"),
            cmd("OBJECT").arg("FREQ").arg("e"),
            cmd("DBSIZE"),
            cmd("MGET").arg("x").arg("y"),
            cmd("NOSUCH").arg("z"),
            cmd("SET").arg("f").arg("1"),
            cmd("SET").arg("g").arg("1"),
            // The memo's one-key fast path: no key, a tag, a longer name
            // with the same start, a name too long to remember.
            cmd("GET"),
            cmd("GET").arg("{h}x"),
            cmd("GET").arg("{h}y"),
            cmd("GETDEL").arg("i"),
            cmd("GEORADIUSBYMEMBER_RO")
                .arg("j")
                .arg("m")
                .arg(1)
                .arg("km"),
            cmd("GEORADIUSBYMEMBER_RO")
                .arg("k")
                .arg("m")
                .arg(1)
                .arg("km"),
            cmd("ZRANGEBYSCORE").arg("l").arg(0).arg(1),
            cmd("DBSIZE"),
            cmd("MGET").arg("x").arg("{x}y"),
            cmd("MGET").arg("x").arg("z"),
        ];
        let mut r = t.router();
        for c in cmds.iter().chain(cmds.iter().rev()).chain(cmds.iter()) {
            assert_eq!(r.route(c), t.route(c), "{c:?}");
        }
        // The memo too, in this order and reversed (each name after each).
        let mut memo = RouteMemo::default();
        let mut fast_hits = 0;
        for c in cmds.iter().chain(cmds.iter().rev()).chain(cmds.iter()) {
            let fast = t.remembered_one_key(&memo, c);
            assert_eq!(t.route_memo(&mut memo, c), t.route(c), "{c:?}");
            if let Some(s) = fast {
                fast_hits += 1;
                assert_eq!(t.route(c), Ok(Route::Slot(s)), "{c:?}");
            }
        }
        assert!(fast_hits >= 3, "the one-key fast path was taken");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd;
    use proptest::prelude::*;

    fn keys_of(t: &CommandTable, c: &Cmd) -> Vec<String> {
        t.keys(c)
            .unwrap()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    fn s(t: &str) -> Value {
        Value::SimpleString(Bytes::copy_from_slice(t.as_bytes()))
    }

    fn b(t: &str) -> Value {
        Value::BulkString(Bytes::copy_from_slice(t.as_bytes()))
    }

    #[test]
    fn builtin_table_is_consistent() {
        let t = CommandTable::default();
        for (name, ..) in RANGES {
            assert!(t.contains(name), "{name}");
        }
        for (name, _) in FANOUT {
            assert!(
                t.map
                    .get(name.as_bytes())
                    .is_some_and(|e| e.fanout.is_some()),
                "fan-out {name} has no entry"
            );
        }
        // Every subcommand's container is a container.
        for name in t.names() {
            if let Some((c, _)) = name.split_once('|') {
                assert!(t.map[c.as_bytes()].container, "{c}");
            }
        }
        let mut names: Vec<&str> = RANGES.iter().map(|r| r.0).collect();
        names.extend(MOVABLE.iter().map(|m| m.0));
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), before, "a command is listed twice");
        assert_eq!(
            format!("{t:?}"),
            format!("CommandTable {{ commands: {before} }}")
        );
    }

    #[test]
    fn key_positions() {
        let t = CommandTable::default();
        let k = |c: Cmd| keys_of(&t, &c);
        assert_eq!(k(cmd("GET").arg("a")), ["a"]);
        assert_eq!(k(cmd("get").arg("a")), ["a"]);
        assert_eq!(k(cmd("SET").arg("a").arg("v").arg("EX").arg(1)), ["a"]);
        assert_eq!(
            k(cmd("MSET").arg("a").arg(1).arg("b").arg(2).arg("c")),
            ["a", "b", "c"]
        );
        assert_eq!(k(cmd("DEL").args(["a", "b", "c"])), ["a", "b", "c"]);
        assert_eq!(k(cmd("BRPOP").args(["a", "b", "0"])), ["a", "b"]);
        assert_eq!(k(cmd("BZPOPMIN").args(["a", "1.5"])), ["a"]);
        assert_eq!(
            k(cmd("LMOVE").args(["a", "b", "LEFT", "RIGHT"])),
            ["a", "b"]
        );
        assert_eq!(
            k(cmd("BITOP").args(["AND", "d", "a", "b"])),
            ["d", "a", "b"]
        );
        assert_eq!(
            k(cmd("EVALSHA").args(["sha", "2", "a", "b", "x", "y"])),
            ["a", "b"]
        );
        assert_eq!(k(cmd("EVAL").args(["s", "0", "x"])), Vec::<String>::new());
        assert_eq!(k(cmd("FCALL_RO").args(["f", "1", "a", "x"])), ["a"]);
        assert_eq!(
            k(cmd("ZUNION").args(["2", "a", "b", "WITHSCORES"])),
            ["a", "b"]
        );
        assert_eq!(
            k(cmd("ZINTERSTORE").args(["d", "2", "a", "b", "AGGREGATE", "MAX"])),
            ["d", "a", "b"]
        );
        assert_eq!(k(cmd("LMPOP").args(["2", "a", "b", "LEFT"])), ["a", "b"]);
        assert_eq!(
            k(cmd("BLMPOP").args(["0.5", "2", "a", "b", "LEFT", "COUNT", "2"])),
            ["a", "b"]
        );
        assert_eq!(k(cmd("BZMPOP").args(["1", "1", "a", "MIN"])), ["a"]);
        assert_eq!(
            k(cmd("SINTERCARD").args(["2", "a", "b", "LIMIT", "1"])),
            ["a", "b"]
        );
        assert_eq!(
            k(cmd("XREAD").args(["BLOCK", "0", "STREAMS", "a", "b", "$", "$"])),
            ["a", "b"]
        );
        // A key named like the keyword: the first STREAMS wins.
        assert_eq!(
            k(cmd("XREAD").args(["STREAMS", "streams", "0"])),
            ["streams"]
        );
        assert_eq!(
            k(cmd("XREADGROUP").args(["GROUP", "g", "c", "COUNT", "1", "STREAMS", "a", ">"])),
            ["a"]
        );
        assert_eq!(
            k(cmd("XREADGROUP").args(["GROUP", "g", "c", "STREAMS", "a", "b", ">", ">"])),
            ["a", "b"]
        );
        assert_eq!(
            k(cmd("MIGRATE").args(["h", "1", "k", "0", "100", "COPY"])),
            ["k"]
        );
        assert_eq!(
            k(cmd("MIGRATE").args(["h", "1", "", "0", "100", "AUTH", "keys", "KEYS", "a", "b"])),
            ["a", "b"]
        );
        assert_eq!(
            k(cmd("MIGRATE").args(["h", "1", "", "0", "100", "AUTH2", "u", "keys", "KEYS", "a"])),
            ["a"]
        );
        assert!(matches!(
            t.keys(&cmd("MIGRATE").args(["h", "1", "x", "0", "100", "KEYS", "a"])),
            Err(RouteError::Malformed(_))
        ));
        assert_eq!(
            k(cmd("SORT").args(["k", "BY", "store", "GET", "#", "STORE", "d"])),
            ["k", "d"]
        );
        assert_eq!(k(cmd("SORT").args(["k", "STORE"])), ["k"]);
        assert_eq!(k(cmd("SORT_RO").args(["k", "ALPHA"])), ["k"]);
        assert_eq!(
            k(cmd("GEORADIUS").args(["g", "1", "2", "3", "km", "STORE", "d"])),
            ["g", "d"]
        );
        assert_eq!(
            k(cmd("GEORADIUSBYMEMBER").args(["g", "m", "3", "km", "STOREDIST", "d"])),
            ["g", "d"]
        );
        assert_eq!(
            k(cmd("GEOSEARCHSTORE").args(["d", "s", "FROMMEMBER", "m"])),
            ["d", "s"]
        );
        assert_eq!(k(cmd("OBJECT").args(["encoding", "k"])), ["k"]);
        assert_eq!(k(cmd("OBJECT").args(["HELP"])), Vec::<String>::new());
        assert_eq!(k(cmd("OBJECT").args(["NOSUCH", "k"])), Vec::<String>::new());
        assert_eq!(k(cmd("MEMORY").args(["USAGE", "k", "SAMPLES", "5"])), ["k"]);
        assert_eq!(k(cmd("XGROUP").args(["CREATE", "s", "g", "$"])), ["s"]);
        assert_eq!(k(cmd("XINFO").args(["CONSUMERS", "s", "g"])), ["s"]);
        assert_eq!(k(cmd("WATCH").args(["a", "b"])), ["a", "b"]);
        assert_eq!(k(cmd("SSUBSCRIBE").args(["c1", "c2"])), ["c1", "c2"]);
        assert_eq!(k(cmd("PFCOUNT").args(["a", "b"])), ["a", "b"]);
        // Missing keys are just missing: the server reports the arity.
        assert_eq!(k(cmd("GET")), Vec::<String>::new());
        assert_eq!(k(cmd("RENAME").arg("a")), ["a"]);
        assert_eq!(k(cmd("EVAL").arg("s")), Vec::<String>::new());
        // Long commands (past the inline argument buffer).
        let many: Vec<String> = (0..40).map(|i| format!("{{t}}{i}")).collect();
        assert_eq!(k(cmd("DEL").args(&many)), many);
        let mut mset = cmd("MSET");
        for key in &many {
            mset = mset.arg(key).arg("v");
        }
        assert_eq!(k(mset), many);
    }

    #[test]
    fn malformed_numkeys() {
        let t = CommandTable::default();
        for c in [
            cmd("EVAL").args(["s", "x", "a"]),
            cmd("EVAL").args(["s", "-1", "a"]),
            cmd("EVAL").args(["s", "3", "a", "b"]),
            cmd("ZUNIONSTORE").args(["d", "99999999999999999999", "a"]),
            cmd("LMPOP").args(["2", "a"]),
        ] {
            let err = t.route(&c).unwrap_err();
            assert!(matches!(err, RouteError::Malformed(_)), "{c:?}: {err:?}");
            assert!(!err.to_string().is_empty());
        }
        assert!(matches!(
            t.route(&Cmd::new()),
            Err(RouteError::Malformed(m)) if m == "empty command"
        ));
    }

    #[test]
    fn routes() {
        let t = CommandTable::default();
        let slot = |k: &str| key_slot(k.as_bytes());
        assert_eq!(t.route(&cmd("GET").arg("foo")), Ok(Route::Slot(12182)));
        assert_eq!(
            t.route(&cmd("MSET").args(["{u}a", "1", "{u}b", "2"])),
            Ok(Route::Slot(slot("u")))
        );
        assert_eq!(
            t.route(&cmd("MSET").args(["a", "1", "b", "2"])),
            Err(RouteError::CrossSlot {
                slots: (slot("a"), slot("b"))
            })
        );
        // Keys in the same slot without a tag are fine too.
        assert_eq!(
            t.route(&cmd("DEL").args(["foo", "{foo}x"])),
            Ok(Route::Slot(slot("foo")))
        );
        assert_eq!(t.route(&cmd("PING")), Ok(Route::AnyPrimary));
        assert_eq!(t.route(&cmd("ECHO").arg("x")), Ok(Route::AnyPrimary));
        assert_eq!(t.route(&cmd("TIME")), Ok(Route::AnyPrimary));
        assert_eq!(t.route(&cmd("RANDOMKEY")), Ok(Route::AnyPrimary));
        assert_eq!(
            t.route(&cmd("WAIT").args(["1", "0"])),
            Ok(Route::AnyPrimary)
        );
        assert_eq!(t.route(&cmd("MULTI")), Ok(Route::AnyPrimary));
        assert_eq!(
            t.route(&cmd("EVAL").args(["s", "0"])),
            Ok(Route::AnyPrimary)
        );
        assert_eq!(
            t.route(&cmd("PUBLISH").args(["c", "m"])),
            Ok(Route::AnyPrimary)
        );
        assert_eq!(
            t.route(&cmd("SUBSCRIBE").args(["c"])),
            Ok(Route::AnyPrimary)
        );
        assert_eq!(
            t.route(&cmd("SPUBLISH").args(["c", "m"])),
            Ok(Route::Slot(slot("c")))
        );
        assert_eq!(
            t.route(&cmd("dbsize")),
            Ok(Route::AllPrimaries(Aggregate::Sum))
        );
        assert_eq!(
            t.route(&cmd("KEYS").arg("*")),
            Ok(Route::AllPrimaries(Aggregate::Concat))
        );
        assert_eq!(
            t.route(&cmd("FLUSHALL").arg("ASYNC")),
            Ok(Route::AllPrimaries(Aggregate::AllOk))
        );
        assert_eq!(
            t.route(&cmd("FLUSHDB")),
            Ok(Route::AllPrimaries(Aggregate::AllOk))
        );
        assert_eq!(
            t.route(&cmd("script").args(["exists", "a", "b"])),
            Ok(Route::AllPrimaries(Aggregate::LogicalAnd))
        );
        assert_eq!(
            t.route(&cmd("SCRIPT").args(["FLUSH"])),
            Ok(Route::AllPrimaries(Aggregate::AllOk))
        );
        assert_eq!(
            t.route(&cmd("SCRIPT").args(["KILL"])),
            Ok(Route::AnyPrimary)
        );
        assert_eq!(
            t.route(&cmd("FUNCTION").args(["LOAD", "code"])),
            Ok(Route::AllPrimaries(Aggregate::AllEqual))
        );
        assert_eq!(
            t.route(&cmd("FUNCTION").args(["DELETE", "lib"])),
            Ok(Route::AllPrimaries(Aggregate::AllOk))
        );
        assert_eq!(
            t.route(&cmd("FUNCTION").args(["LIST"])),
            Ok(Route::AnyPrimary)
        );
        assert_eq!(
            t.route(&cmd("CONFIG").args(["set", "a", "b"])),
            Ok(Route::AllNodes(Aggregate::AllOk))
        );
        assert_eq!(
            t.route(&cmd("CONFIG").args(["GET", "a"])),
            Ok(Route::AnyPrimary)
        );
        assert_eq!(
            t.route(&cmd("CLIENT").args(["LIST"])),
            Ok(Route::AnyPrimary)
        );
        assert_eq!(
            t.route(&cmd("NOSUCH").arg("x")),
            Err(RouteError::UnknownCommand("nosuch".into()))
        );
        let e: Error = RouteError::UnknownCommand("nosuch".into()).into();
        assert!(e.to_string().contains("nosuch"), "{e}");
        let e: Error = RouteError::CrossSlot { slots: (1, 2) }.into();
        assert!(
            matches!(&e, Error::Config(m) if m.contains("1 and 2")),
            "{e}"
        );
    }

    #[test]
    fn read_only_flags() {
        let t = CommandTable::default();
        for c in [
            cmd("GET").arg("k"),
            cmd("MGET").args(["a", "b"]),
            cmd("EXISTS").arg("a"),
            cmd("HGET").args(["h", "f"]),
            cmd("XREAD").args(["STREAMS", "s", "0"]),
            cmd("EVAL_RO").args(["s", "0"]),
            cmd("OBJECT").args(["ENCODING", "k"]),
            cmd("SORT_RO").arg("k"),
        ] {
            assert!(t.is_read_only(&c), "{c:?}");
        }
        for c in [
            cmd("SET").args(["k", "v"]),
            cmd("EVAL").args(["s", "0"]),
            cmd("SORT").arg("k"),
            cmd("XREADGROUP").args(["GROUP", "g", "c", "STREAMS", "s", ">"]),
            cmd("PING"),
            cmd("NOSUCH"),
            Cmd::new(),
        ] {
            assert!(!t.is_read_only(&c), "{c:?}");
        }
    }

    /// A `COMMAND INFO` entry in the RESP3 shape.
    fn info_entry(
        name: &str,
        flags: &[&str],
        range: (i64, i64, i64),
        specs: Vec<Value>,
        subs: Vec<Value>,
    ) -> Value {
        Value::Array(vec![
            b(name),
            Value::Integer(-2),
            Value::Set(flags.iter().map(|f| s(f)).collect()),
            Value::Integer(range.0),
            Value::Integer(range.1),
            Value::Integer(range.2),
            Value::Set(vec![]),
            Value::Set(vec![]),
            Value::Array(specs),
            Value::Array(subs),
        ])
    }

    fn map(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (b(k), v)).collect())
    }

    fn flat(pairs: Vec<(&str, Value)>) -> Value {
        Value::Array(pairs.into_iter().flat_map(|(k, v)| [b(k), v]).collect())
    }

    #[test]
    fn learns_key_specs() {
        // XREAD as Redis 7 describes it, RESP3 maps.
        let xread_spec = map(vec![
            ("flags", Value::Set(vec![s("RO"), s("access")])),
            (
                "begin_search",
                map(vec![
                    ("type", b("keyword")),
                    (
                        "spec",
                        map(vec![
                            ("keyword", b("STREAMS")),
                            ("startfrom", Value::Integer(1)),
                        ]),
                    ),
                ]),
            ),
            (
                "find_keys",
                map(vec![
                    ("type", b("range")),
                    (
                        "spec",
                        map(vec![
                            ("lastkey", Value::Integer(-1)),
                            ("keystep", Value::Integer(1)),
                            ("limit", Value::Integer(2)),
                        ]),
                    ),
                ]),
            ),
        ]);
        // EVAL, RESP2 flat arrays.
        let eval_spec = flat(vec![
            ("flags", Value::Array(vec![s("RW")])),
            (
                "begin_search",
                flat(vec![
                    ("type", b("index")),
                    ("spec", flat(vec![("index", Value::Integer(2))])),
                ]),
            ),
            (
                "find_keys",
                flat(vec![
                    ("type", b("keynum")),
                    (
                        "spec",
                        flat(vec![
                            ("keynumidx", Value::Integer(0)),
                            ("firstkey", Value::Integer(1)),
                            ("keystep", Value::Integer(1)),
                        ]),
                    ),
                ]),
            ),
        ]);
        let unknown_spec = map(vec![
            ("flags", Value::Set(vec![s("OW")])),
            (
                "begin_search",
                map(vec![("type", b("unknown")), ("spec", Value::Map(vec![]))]),
            ),
            (
                "find_keys",
                map(vec![("type", b("unknown")), ("spec", Value::Map(vec![]))]),
            ),
        ]);
        let index1 = map(vec![
            (
                "begin_search",
                map(vec![
                    ("type", b("index")),
                    ("spec", map(vec![("index", Value::Integer(1))])),
                ]),
            ),
            (
                "find_keys",
                map(vec![
                    ("type", b("range")),
                    (
                        "spec",
                        map(vec![
                            ("lastkey", Value::Integer(0)),
                            ("keystep", Value::Integer(1)),
                            ("limit", Value::Integer(0)),
                        ]),
                    ),
                ]),
            ),
        ]);
        let object_enc = info_entry("object|encoding", &["readonly"], (2, 2, 1), vec![], vec![]);
        let reply = Value::Array(vec![
            info_entry(
                "xread",
                &["readonly", "movablekeys"],
                (0, 0, 0),
                vec![xread_spec],
                vec![],
            ),
            info_entry("EVAL", &["movablekeys"], (0, 0, 0), vec![eval_spec], vec![]),
            info_entry(
                "sort",
                &["write", "movablekeys"],
                (1, 1, 1),
                vec![index1, unknown_spec],
                vec![],
            ),
            info_entry("object", &[], (0, 0, 0), vec![], vec![object_enc]),
            Value::Null,
            Value::Integer(3),
        ]);
        let mut t = CommandTable::empty();
        assert_eq!(t.learn(&reply), 5);
        let k = |c: Cmd| keys_of(&t, &c);
        assert_eq!(
            k(cmd("XREAD").args(["COUNT", "1", "STREAMS", "a", "b", "0", "0"])),
            ["a", "b"]
        );
        assert_eq!(k(cmd("eval").args(["s", "2", "a", "b", "c"])), ["a", "b"]);
        // SORT's STORE is an unknown spec: a fresh table only knows the key.
        assert_eq!(k(cmd("SORT").args(["k", "STORE", "d"])), ["k"]);
        assert_eq!(k(cmd("OBJECT").args(["ENCODING", "x"])), ["x"]);
        assert!(t.is_read_only(&cmd("XREAD")));
        assert!(!t.is_read_only(&cmd("EVAL")));
        assert!(t.is_read_only(&cmd("OBJECT").args(["ENCODING", "x"])));

        // Learning into the built-in table keeps what incomplete specs
        // cannot say, and the fan-out policies.
        let mut t = CommandTable::default();
        let before = CommandTable::default();
        t.learn(&reply);
        assert_eq!(
            keys_of(&t, &cmd("SORT").args(["k", "STORE", "d"])),
            ["k", "d"]
        );
        let dbsize = Value::Array(vec![info_entry(
            "dbsize",
            &["readonly"],
            (0, 0, 0),
            vec![],
            vec![],
        )]);
        assert_eq!(t.learn(&dbsize), 1);
        assert_eq!(
            t.route(&cmd("DBSIZE")),
            Ok(Route::AllPrimaries(Aggregate::Sum))
        );
        // The shared built-in table is untouched.
        assert_eq!(before.len(), CommandTable::default().len());
        assert!(Arc::ptr_eq(&before.map, &CommandTable::default().map));
        assert!(!Arc::ptr_eq(&before.map, &t.map));
    }

    #[test]
    fn learns_legacy_ranges_resp2() {
        // Redis 6 shape: no key specs; flags as an array of status strings.
        let reply = Value::Array(vec![
            Value::Array(vec![
                b("mymod.mset"),
                Value::Integer(-3),
                Value::Array(vec![s("write"), s("denyoom")]),
                Value::Integer(1),
                Value::Integer(-1),
                Value::Integer(2),
            ]),
            Value::Array(vec![b("short")]),
            Value::Array(vec![
                b("mymod.weird"),
                Value::Integer(2),
                Value::Array(vec![]),
                b("1"),
                b("-1"),
                b("0"),
            ]),
        ]);
        let mut t = CommandTable::empty();
        assert_eq!(t.learn(&reply), 2);
        assert_eq!(
            keys_of(&t, &cmd("MYMOD.MSET").args(["a", "1", "b", "2"])),
            ["a", "b"]
        );
        assert_eq!(t.legacy_range("mymod.mset"), Some((1, -1, 2)));
        // Step 0 is read as 1, never a loop.
        assert_eq!(
            keys_of(&t, &cmd("mymod.weird").args(["a", "b"])),
            ["a", "b"]
        );
        assert_eq!(t.learn(&Value::Integer(1)), 0);
    }

    #[test]
    fn aggregates() {
        let int = Value::Integer;
        let arr = |v: Vec<Value>| Value::Array(v);
        let ok = s("OK");
        assert_eq!(
            Aggregate::Sum
                .combine(vec![int(1), int(2), int(3)])
                .unwrap(),
            int(6)
        );
        assert!(matches!(
            Aggregate::Sum.combine(vec![int(i64::MAX), int(1)]),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            Aggregate::Sum.combine(vec![int(1), b("2")]),
            Err(Error::Protocol(e)) if e.message().contains("reply 1")
        ));
        assert!(matches!(
            Aggregate::Sum.combine(vec![]),
            Err(Error::Config(_))
        ));
        assert_eq!(
            Aggregate::AllOk.combine(vec![ok.clone(), b("ok")]).unwrap(),
            ok
        );
        assert!(matches!(
            Aggregate::AllOk.combine(vec![ok.clone(), int(1)]),
            Err(Error::Protocol(_))
        ));
        // The first error reply wins, whatever the aggregate.
        let e = Aggregate::Concat
            .combine(vec![
                arr(vec![]),
                Value::Error("ERR one".into()),
                Value::BlobError("ERR two".into()),
            ])
            .unwrap_err();
        assert!(
            matches!(&e, Error::Server(e) if e.detail() == "one"),
            "{e:?}"
        );
        let sha = b("e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        assert_eq!(
            Aggregate::AllEqual
                .combine(vec![sha.clone(), sha.clone(), sha.clone()])
                .unwrap(),
            sha
        );
        let e = Aggregate::AllEqual
            .combine(vec![sha.clone(), sha.clone(), b("other")])
            .unwrap_err();
        match e {
            Error::Server(e) => {
                assert_eq!(e.code(), FANOUT_MISMATCH);
                assert!(e.detail().contains("reply 2"), "{}", e.detail());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Aggregate::Concat
                .combine(vec![
                    arr(vec![b("a")]),
                    Value::Set(vec![b("b")]),
                    arr(vec![])
                ])
                .unwrap(),
            arr(vec![b("a"), b("b")])
        );
        assert!(Aggregate::Concat.combine(vec![int(1)]).is_err());
        assert_eq!(
            Aggregate::LogicalAnd
                .combine(vec![
                    arr(vec![int(1), int(1), int(0)]),
                    arr(vec![int(1), int(0), int(1)]),
                ])
                .unwrap(),
            arr(vec![int(1), int(0), int(0)])
        );
        assert_eq!(
            Aggregate::LogicalAnd
                .combine(vec![
                    arr(vec![Value::Boolean(true), Value::Boolean(true)]),
                    arr(vec![int(1), int(0)]),
                ])
                .unwrap(),
            arr(vec![Value::Boolean(true), Value::Boolean(false)])
        );
        assert!(Aggregate::LogicalAnd
            .combine(vec![arr(vec![int(1)]), arr(vec![int(1), int(1)])])
            .is_err());
        assert!(Aggregate::LogicalAnd
            .combine(vec![arr(vec![b("x")])])
            .is_err());
        // Attributes are looked through.
        let attr = Value::Attribute {
            attributes: vec![],
            value: Box::new(int(4)),
        };
        assert_eq!(Aggregate::Sum.combine(vec![attr, int(1)]).unwrap(), int(5));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let word = prop::sample::select(vec![
            "begin_search",
            "find_keys",
            "type",
            "spec",
            "index",
            "keyword",
            "range",
            "keynum",
            "unknown",
            "startfrom",
            "lastkey",
            "keystep",
            "limit",
            "keynumidx",
            "firstkey",
            "flags",
            "readonly",
            "movablekeys",
            "incomplete",
            "get",
            "object|encoding",
            "STREAMS",
            "",
        ]);
        let leaf = prop_oneof![
            word.clone().prop_map(b),
            word.prop_map(s),
            (-5i64..20).prop_map(Value::Integer),
            any::<i64>().prop_map(Value::Integer),
            Just(Value::Null),
            any::<bool>().prop_map(Value::Boolean),
            Just(Value::Double(1.5)),
        ];
        leaf.prop_recursive(5, 200, 10, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..11).prop_map(Value::Array),
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Set),
                prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }

    fn arb_cmd() -> impl Strategy<Value = Cmd> {
        let names: Vec<String> = CommandTable::default().names();
        let arg = prop_oneof![
            prop::sample::select(vec![
                "STREAMS",
                "KEYS",
                "STORE",
                "STOREDIST",
                "LIMIT",
                "GET",
                "BY",
                "AUTH",
                "AUTH2",
                "0",
                "1",
                "2",
                "3",
                "-1",
                "x",
                "",
            ])
            .prop_map(|s| s.to_string()),
            "[a-z{}]{0,4}",
        ];
        (
            prop::sample::select(names),
            prop::collection::vec(arg, 0..12),
        )
            .prop_map(|(name, args)| {
                let mut parts = name.split('|');
                let mut c = cmd(parts.next().unwrap_or(""));
                for p in parts {
                    c = c.arg(p);
                }
                c.args(args)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Random replies never panic `learn`, and what it learns routes
        /// random commands without panicking.
        #[test]
        fn learn_never_panics(v in arb_value(), c in arb_cmd()) {
            let mut t = CommandTable::empty();
            let reply = Value::Array(vec![v.clone()]);
            t.learn(&reply);
            t.learn(&v);
            let _ = t.route(&c);
            let _ = t.keys(&c);
            let _ = t.is_read_only(&c);
            for agg in [Aggregate::Sum, Aggregate::AllOk, Aggregate::AllEqual, Aggregate::Concat, Aggregate::LogicalAnd] {
                let _ = agg.combine(vec![v.clone(), v.clone()]);
            }
        }

        /// Random arguments to every built-in command: no panic, and the
        /// route agrees with the keys.
        #[test]
        fn builtin_routes_agree_with_keys(c in arb_cmd()) {
            let t = CommandTable::default();
            let route = t.route(&c);
            match t.keys(&c) {
                Ok(keys) => {
                    let mut slots: Vec<u16> = keys.iter().map(|k| key_slot(k)).collect();
                    slots.dedup();
                    match route {
                        Ok(Route::Slot(s)) => prop_assert!(slots.iter().all(|&x| x == s)),
                        Ok(Route::AnyPrimary) => prop_assert!(keys.is_empty()),
                        Ok(_) => {}
                        Err(RouteError::CrossSlot { .. }) => prop_assert!(slots.len() > 1),
                        Err(e) => prop_assert!(false, "{:?}", e),
                    }
                }
                Err(e) => prop_assert_eq!(route, Err(e)),
            }
        }
    }
}

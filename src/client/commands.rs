//! The typed helpers, written once for [`Client`] (send now, convert the
//! reply) and [`Batch`] (queue in a pipeline or transaction).

use bytes::Bytes;

use super::from_value::type_error;
use super::{Batch, Client, FromValue, TypedCall};
use crate::error::Result;
use crate::resp::{cmd, ArgWriter, ToArg, ToArgs, Value};

/// Two arguments written one after the other (a field and its value).
struct Pair<A, B>(A, B);

impl<A: ToArg, B: ToArg> ToArg for Pair<A, B> {
    fn write_arg(&self, out: &mut ArgWriter<'_>) {
        self.0.write_arg(out);
        self.1.write_arg(out);
    }
}

fn pairs<A: ToArg, B: ToArg>(
    it: impl IntoIterator<Item = (A, B)>,
) -> impl Iterator<Item = Pair<A, B>> {
    it.into_iter().map(|(a, b)| Pair(a, b))
}

/// An expiry for `SET` ([`SetOptions::expiry`]) and `GETEX`
/// ([`Client::getex`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// `EX seconds`
    Ex(u64),
    /// `PX milliseconds`
    Px(u64),
    /// `EXAT unix-seconds`
    ExAt(u64),
    /// `PXAT unix-milliseconds`
    PxAt(u64),
    /// `PERSIST` (`GETEX` only): remove the expiry.
    Persist,
    /// `KEEPTTL` (`SET` only): keep the key's expiry.
    KeepTtl,
}

impl ToArg for Expiry {
    fn write_arg(&self, out: &mut ArgWriter<'_>) {
        let (word, n) = match *self {
            Expiry::Ex(n) => ("EX", Some(n)),
            Expiry::Px(n) => ("PX", Some(n)),
            Expiry::ExAt(n) => ("EXAT", Some(n)),
            Expiry::PxAt(n) => ("PXAT", Some(n)),
            Expiry::Persist => ("PERSIST", None),
            Expiry::KeepTtl => ("KEEPTTL", None),
        };
        out.write(word.as_bytes());
        if let Some(n) = n {
            n.write_arg(out);
        }
    }
}

/// The options of `SET` ([`Client::set_options`]): expiry, `NX`/`XX`, `GET`.
///
/// The reply depends on them: `OK` or `nil` (not set, with `NX`/`XX`); with
/// `GET`, the old value or `nil`. Ask for `bool` (set or not) or
/// `Option<String>` (with `GET`).
///
/// ```
/// use redis_layers::client::{Expiry, SetOptions};
/// use redis_layers::cmd;
///
/// let opts = SetOptions::new().nx().expiry(Expiry::Px(1500)).get();
/// let c = cmd("SET").arg("k").arg("v").arg(opts);
/// let args: Vec<&[u8]> = c.argv().skip(3).collect();
/// assert_eq!(args, [&b"NX"[..], b"PX", b"1500", b"GET"]);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetOptions {
    condition: Option<&'static str>,
    expiry: Option<Expiry>,
    get: bool,
}

impl SetOptions {
    /// No options: a plain `SET`.
    pub fn new() -> Self {
        Self::default()
    }

    /// `NX`: only if the key does not exist.
    pub fn nx(mut self) -> Self {
        self.condition = Some("NX");
        self
    }

    /// `XX`: only if the key exists.
    pub fn xx(mut self) -> Self {
        self.condition = Some("XX");
        self
    }

    /// `EX`, `PX`, `EXAT`, `PXAT` or `KEEPTTL`.
    pub fn expiry(mut self, e: Expiry) -> Self {
        self.expiry = Some(e);
        self
    }

    /// `GET`: reply with the old value.
    pub fn get(mut self) -> Self {
        self.get = true;
        self
    }
}

impl ToArg for SetOptions {
    fn write_arg(&self, out: &mut ArgWriter<'_>) {
        if let Some(c) = self.condition {
            out.write(c.as_bytes());
        }
        if let Some(e) = &self.expiry {
            e.write_arg(out);
        }
        if self.get {
            out.write(b"GET");
        }
    }
}

/// An end of a list, for [`Client::blmove`](super::Client::blmove).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListEnd {
    /// The head (`LEFT`).
    Left,
    /// The tail (`RIGHT`).
    Right,
}

impl ListEnd {
    /// `LEFT` or `RIGHT`.
    ///
    /// ```
    /// assert_eq!(redis_layers::client::ListEnd::Right.as_str(), "RIGHT");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ListEnd::Left => "LEFT",
            ListEnd::Right => "RIGHT",
        }
    }
}

/// The operation of `BITOP` ([`Client::bitop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BitOp {
    /// `AND`
    And,
    /// `OR`
    Or,
    /// `XOR`
    Xor,
    /// `NOT` (one source key).
    Not,
}

impl ToArg for BitOp {
    fn write_arg(&self, out: &mut ArgWriter<'_>) {
        out.write(match self {
            BitOp::And => b"AND",
            BitOp::Or => b"OR",
            BitOp::Xor => b"XOR",
            BitOp::Not => b"NOT",
        });
    }
}

/// One stream entry: its id and its fields in order (`XRANGE`, `XREAD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id, `ms-seq`.
    pub id: String,
    /// Field names and values, as added.
    pub fields: Vec<(String, Bytes)>,
}

impl StreamEntry {
    /// The value of `field`, if the entry has it.
    ///
    /// ```
    /// use redis_layers::client::StreamEntry;
    /// let e = StreamEntry { id: "1-0".into(), fields: vec![("t".into(), "21".into())] };
    /// assert_eq!(e.get("t").map(|b| &b[..]), Some(&b"21"[..]));
    /// ```
    pub fn get(&self, field: &str) -> Option<&Bytes> {
        self.fields.iter().find(|(f, _)| f == field).map(|(_, v)| v)
    }
}

impl FromValue for StreamEntry {
    fn from_value(v: Value) -> Result<Self> {
        match v {
            Value::Array(items) if items.len() == 2 => {
                let mut it = items.into_iter();
                let id = String::from_value(it.next().expect("length checked"))?;
                let fields =
                    Vec::<(String, Bytes)>::from_value(it.next().expect("length checked"))?;
                Ok(StreamEntry { id, fields })
            }
            other => Err(type_error("a stream entry [id, fields]", &other)),
        }
    }
}

/// The reply of `XREAD` / `XREADGROUP`: each stream with its new entries.
pub type StreamReads = Vec<(String, Vec<StreamEntry>)>;

/// Declares each helper once; generates the [`Client`] method (sends,
/// converts the reply) and the [`Batch`] method (queues the command).
macro_rules! commands {
    ($(
        $(#[$doc:meta])*
        fn $name:ident [$($gen:tt)*] ($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty => $body:expr;
    )*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub fn $name<$($gen)*>(&self, $($arg: $ty),*) -> TypedCall<'_, $ret> {
                    self.cmd($body)
                }
            )*
        }

        /// The typed helpers, queued: each adds its command and returns the
        /// batch; [`Batch::query`] converts every reply together.
        impl Batch {
            $(
                $(#[$doc])*
                pub fn $name(&mut self, $($arg: $ty),*) -> &mut Self {
                    self.push($body)
                }
            )*
        }
    };
}

commands! {
    // ----- connection and pub/sub -----

    /// `PING`: `PONG`.
    fn ping[]() -> String => cmd("PING");
    /// `PUBLISH channel message`: how many subscribers received it.
    fn publish[](channel: impl ToArg, message: impl ToArg) -> usize => cmd("PUBLISH").arg(channel).arg(message);

    // ----- strings -----

    /// `GET key`: ask for `Option<T>` when the key may be missing.
    fn get[T: FromValue](key: impl ToArg) -> T => cmd("GET").arg(key);
    /// `SET key value`.
    fn set[](key: impl ToArg, value: impl ToArg) -> () => cmd("SET").arg(key).arg(value);
    /// `SET key value [NX|XX] [expiry] [GET]`; see [`SetOptions`] for the reply.
    fn set_options[T: FromValue](key: impl ToArg, value: impl ToArg, options: SetOptions) -> T
        => cmd("SET").arg(key).arg(value).arg(options);
    /// `SETNX key value`: true if the key was set (it did not exist).
    fn setnx[](key: impl ToArg, value: impl ToArg) -> bool => cmd("SETNX").arg(key).arg(value);
    /// `GETEX key expiry`: the value, and sets (or with [`Expiry::Persist`] removes) the expiry.
    fn getex[T: FromValue](key: impl ToArg, expiry: Expiry) -> T => cmd("GETEX").arg(key).arg(expiry);
    /// `GETDEL key`: the value, and deletes the key.
    fn getdel[T: FromValue](key: impl ToArg) -> T => cmd("GETDEL").arg(key);
    /// `MGET keys...`: one value per key, `nil` for missing ones (ask for `Option<T>`).
    fn mget[T: FromValue](keys: impl ToArgs) -> Vec<T> => cmd("MGET").with_args(keys);
    /// `MSET key value ...`.
    fn mset[](items: impl IntoIterator<Item = (impl ToArg, impl ToArg)>) -> () => cmd("MSET").args(pairs(items));
    /// `INCR key`: the new value.
    fn incr[](key: impl ToArg) -> i64 => cmd("INCR").arg(key);
    /// `INCRBY key delta`: the new value.
    fn incr_by[](key: impl ToArg, delta: i64) -> i64 => cmd("INCRBY").arg(key).arg(delta);
    /// `INCRBYFLOAT key delta`: the new value.
    fn incr_by_float[](key: impl ToArg, delta: f64) -> f64 => cmd("INCRBYFLOAT").arg(key).arg(delta);
    /// `DECR key`: the new value.
    fn decr[](key: impl ToArg) -> i64 => cmd("DECR").arg(key);
    /// `DECRBY key delta`: the new value.
    fn decr_by[](key: impl ToArg, delta: i64) -> i64 => cmd("DECRBY").arg(key).arg(delta);
    /// `APPEND key value`: the new length.
    fn append[](key: impl ToArg, value: impl ToArg) -> usize => cmd("APPEND").arg(key).arg(value);
    /// `STRLEN key`: the length (0 for a missing key).
    fn strlen[](key: impl ToArg) -> usize => cmd("STRLEN").arg(key);
    /// `GETRANGE key start end`: the bytes from `start` to `end` (inclusive;
    /// negative counts from the end); empty for a missing key.
    fn getrange[T: FromValue](key: impl ToArg, start: i64, end: i64) -> T
        => cmd("GETRANGE").arg(key).arg(start).arg(end);

    // ----- bits -----

    /// `SETBIT key offset value`: the bit's old value.
    fn setbit[](key: impl ToArg, offset: u64, value: bool) -> bool
        => cmd("SETBIT").arg(key).arg(offset).arg(u32::from(value));
    /// `GETBIT key offset`: false past the end and for a missing key.
    fn getbit[](key: impl ToArg, offset: u64) -> bool => cmd("GETBIT").arg(key).arg(offset);
    /// `BITCOUNT key`: how many bits are set.
    fn bitcount[](key: impl ToArg) -> usize => cmd("BITCOUNT").arg(key);
    /// `BITCOUNT key start end`: how many bits are set in bytes `start` to
    /// `end` (inclusive; negative counts from the end).
    fn bitcount_range[](key: impl ToArg, start: i64, end: i64) -> usize
        => cmd("BITCOUNT").arg(key).arg(start).arg(end);
    /// `BITOP op destkey keys...`: the length of the result (in a cluster,
    /// every key in one slot).
    fn bitop[](op: BitOp, dest_key: impl ToArg, keys: impl ToArgs) -> usize
        => cmd("BITOP").arg(op).arg(dest_key).with_args(keys);
    /// `BITPOS key bit`: the position of the first bit set to `bit`; -1 if
    /// none (Redis's reply, kept: looking for a clear bit past the end of
    /// a string of set bits gives the length in bits).
    fn bitpos[](key: impl ToArg, bit: bool) -> i64 => cmd("BITPOS").arg(key).arg(u32::from(bit));

    // ----- keys and expiry -----

    /// `DEL keys...`: how many were deleted. One key or many (see
    /// [`ToArgs`]), as for every `...` argument:
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::Client) -> Result<(), redis_layers::Error> {
    /// client.del("k").await?;
    /// client.del(["{user:1}:a", "{user:1}:b"]).await?;
    /// # Ok(()) }
    /// ```
    fn del[](keys: impl ToArgs) -> usize => cmd("DEL").with_args(keys);
    /// `UNLINK keys...`: how many were removed (memory freed in the background).
    fn unlink[](keys: impl ToArgs) -> usize => cmd("UNLINK").with_args(keys);
    /// `EXISTS keys...`: how many exist (a key named twice counts twice).
    fn exists[](keys: impl ToArgs) -> usize => cmd("EXISTS").with_args(keys);
    /// `TOUCH keys...`: how many exist (their last access time is updated).
    fn touch[](keys: impl ToArgs) -> usize => cmd("TOUCH").with_args(keys);
    /// `KEYS pattern`: every key that matches. Blocks the server while it
    /// walks the whole key space: prefer [`Client::scan`] outside tests. In
    /// a cluster it goes to every primary and the lists are concatenated.
    fn keys[T: FromValue](pattern: impl ToArg) -> Vec<T> => cmd("KEYS").arg(pattern);
    /// `EXPIRE key seconds`: true if the expiry was set.
    fn expire[](key: impl ToArg, seconds: i64) -> bool => cmd("EXPIRE").arg(key).arg(seconds);
    /// `PEXPIRE key milliseconds`: true if the expiry was set.
    fn pexpire[](key: impl ToArg, millis: i64) -> bool => cmd("PEXPIRE").arg(key).arg(millis);
    /// `EXPIREAT key unix-seconds`: true if the expiry was set.
    fn expire_at[](key: impl ToArg, unix_seconds: i64) -> bool => cmd("EXPIREAT").arg(key).arg(unix_seconds);
    /// `TTL key`: seconds left; -1 without expiry, -2 for a missing key.
    fn ttl[](key: impl ToArg) -> i64 => cmd("TTL").arg(key);
    /// `PTTL key`: milliseconds left; -1 without expiry, -2 for a missing key.
    fn pttl[](key: impl ToArg) -> i64 => cmd("PTTL").arg(key);
    /// `PERSIST key`: true if an expiry was removed.
    fn persist[](key: impl ToArg) -> bool => cmd("PERSIST").arg(key);
    /// `TYPE key`: `string`, `list`, `set`, `zset`, `hash`, `stream` or `none`.
    fn key_type[](key: impl ToArg) -> String => cmd("TYPE").arg(key);
    /// `RENAME key newkey` (in a cluster, both in one slot).
    fn rename[](key: impl ToArg, new_key: impl ToArg) -> () => cmd("RENAME").arg(key).arg(new_key);

    // ----- server -----

    /// `FLUSHDB`: deletes every key of the database (in a cluster, on every
    /// primary).
    fn flushdb[]() -> () => cmd("FLUSHDB");
    /// `INFO`: the server's default sections, as the text it sends
    /// (`# Section` headers and `field:value` lines). In a cluster, one
    /// primary's (`INFO` describes one node; ask each node with a command
    /// pinned to it).
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::Client) -> Result<(), redis_layers::Error> {
    /// let info = client.info().await?;
    /// let version = info.lines().find_map(|l| l.strip_prefix("redis_version:"));
    /// # Ok(()) }
    /// ```
    fn info[]() -> String => cmd("INFO");
    /// `INFO sections...`: the named sections (`"server"`, `["memory",
    /// "stats"]`, `"everything"`), as text; see [`Client::info`].
    fn info_sections[](sections: impl ToArgs) -> String => cmd("INFO").with_args(sections);

    // ----- hashes -----

    /// `HSET key field value`: 1 if the field is new.
    fn hset[](key: impl ToArg, field: impl ToArg, value: impl ToArg) -> usize
        => cmd("HSET").arg(key).arg(field).arg(value);
    /// `HSET key field value ...`: how many fields are new.
    fn hset_multiple[](key: impl ToArg, items: impl IntoIterator<Item = (impl ToArg, impl ToArg)>) -> usize
        => cmd("HSET").arg(key).args(pairs(items));
    /// `HSETNX key field value`: true if the field was set (it did not exist).
    fn hsetnx[](key: impl ToArg, field: impl ToArg, value: impl ToArg) -> bool
        => cmd("HSETNX").arg(key).arg(field).arg(value);
    /// `HGET key field`: ask for `Option<T>` when the field may be missing.
    fn hget[T: FromValue](key: impl ToArg, field: impl ToArg) -> T => cmd("HGET").arg(key).arg(field);
    /// `HMGET key fields...`: one value per field (ask for `Option<T>`).
    fn hmget[T: FromValue](key: impl ToArg, fields: impl ToArgs) -> Vec<T>
        => cmd("HMGET").arg(key).with_args(fields);
    /// `HGETALL key`: ask for a `HashMap`, `BTreeMap` or `Vec<(K, V)>` (a map in RESP3, a flat array in RESP2).
    fn hgetall[T: FromValue](key: impl ToArg) -> T => cmd("HGETALL").arg(key);
    /// `HDEL key fields...`: how many were removed.
    fn hdel[](key: impl ToArg, fields: impl ToArgs) -> usize
        => cmd("HDEL").arg(key).with_args(fields);
    /// `HEXISTS key field`.
    fn hexists[](key: impl ToArg, field: impl ToArg) -> bool => cmd("HEXISTS").arg(key).arg(field);
    /// `HINCRBY key field delta`: the new value.
    fn hincr_by[](key: impl ToArg, field: impl ToArg, delta: i64) -> i64
        => cmd("HINCRBY").arg(key).arg(field).arg(delta);
    /// `HINCRBYFLOAT key field delta`: the new value.
    fn hincr_by_float[](key: impl ToArg, field: impl ToArg, delta: f64) -> f64
        => cmd("HINCRBYFLOAT").arg(key).arg(field).arg(delta);
    /// `HKEYS key`.
    fn hkeys[T: FromValue](key: impl ToArg) -> Vec<T> => cmd("HKEYS").arg(key);
    /// `HVALS key`.
    fn hvals[T: FromValue](key: impl ToArg) -> Vec<T> => cmd("HVALS").arg(key);
    /// `HLEN key`.
    fn hlen[](key: impl ToArg) -> usize => cmd("HLEN").arg(key);
    /// `HSCAN key cursor`: one page of `(field, value)` pairs and the next
    /// cursor (0 when done); start at 0. `HSCAN` may return a field twice.
    ///
    /// ```no_run
    /// # async fn run(client: redis_layers::Client) -> Result<(), redis_layers::Error> {
    /// let mut cursor = 0;
    /// loop {
    ///     let (next, page): (u64, Vec<(String, String)>) = client.hscan("h", cursor).await?;
    ///     for (field, value) in page { /* ... */ }
    ///     if next == 0 { break; }
    ///     cursor = next;
    /// }
    /// # Ok(()) }
    /// ```
    fn hscan[F: FromValue, V: FromValue](key: impl ToArg, cursor: u64) -> (u64, Vec<(F, V)>)
        => cmd("HSCAN").arg(key).arg(cursor);
    /// `HSCAN key cursor MATCH pattern`: like [`Client::hscan`], only fields
    /// that match the glob-style pattern.
    fn hscan_match[F: FromValue, V: FromValue](key: impl ToArg, cursor: u64, pattern: impl ToArg) -> (u64, Vec<(F, V)>)
        => cmd("HSCAN").arg(key).arg(cursor).arg("MATCH").arg(pattern);

    // ----- lists -----

    /// `LPUSH key values...`: the new length.
    fn lpush[](key: impl ToArg, values: impl ToArgs) -> usize
        => cmd("LPUSH").arg(key).with_args(values);
    /// `RPUSH key values...`: the new length.
    fn rpush[](key: impl ToArg, values: impl ToArgs) -> usize
        => cmd("RPUSH").arg(key).with_args(values);
    /// `LPOP key`: ask for `Option<T>`.
    fn lpop[T: FromValue](key: impl ToArg) -> T => cmd("LPOP").arg(key);
    /// `LPOP key count`: up to `count` elements (none for a missing key).
    fn lpop_count[T: FromValue](key: impl ToArg, count: usize) -> Vec<T> => cmd("LPOP").arg(key).arg(count);
    /// `RPOP key`: ask for `Option<T>`.
    fn rpop[T: FromValue](key: impl ToArg) -> T => cmd("RPOP").arg(key);
    /// `RPOP key count`: up to `count` elements (none for a missing key).
    fn rpop_count[T: FromValue](key: impl ToArg, count: usize) -> Vec<T> => cmd("RPOP").arg(key).arg(count);
    /// `LRANGE key start stop` (inclusive; negative counts from the end).
    fn lrange[T: FromValue](key: impl ToArg, start: i64, stop: i64) -> Vec<T>
        => cmd("LRANGE").arg(key).arg(start).arg(stop);
    /// `LLEN key`.
    fn llen[](key: impl ToArg) -> usize => cmd("LLEN").arg(key);
    /// `LINDEX key index`: ask for `Option<T>`.
    fn lindex[T: FromValue](key: impl ToArg, index: i64) -> T => cmd("LINDEX").arg(key).arg(index);
    /// `LREM key count value`: how many were removed.
    fn lrem[](key: impl ToArg, count: i64, value: impl ToArg) -> usize
        => cmd("LREM").arg(key).arg(count).arg(value);
    /// `LTRIM key start stop`.
    fn ltrim[](key: impl ToArg, start: i64, stop: i64) -> () => cmd("LTRIM").arg(key).arg(start).arg(stop);
    /// `LSET key index value` (an error for an index out of range or a
    /// missing key).
    fn lset[](key: impl ToArg, index: i64, value: impl ToArg) -> () => cmd("LSET").arg(key).arg(index).arg(value);
    /// `LPOS key element`: the index of the first match, `None` if absent.
    fn lpos[](key: impl ToArg, element: impl ToArg) -> Option<usize> => cmd("LPOS").arg(key).arg(element);
    /// `LMOVE source destination from to`: the element moved from the
    /// `from` end of `source` to the `to` end of `destination` (ask for
    /// `Option<T>`: nil when `source` is empty). In a cluster both lists
    /// must be in one slot. See [`Client::blmove`](super::Client::blmove) to wait.
    fn lmove[T: FromValue](source: impl ToArg, destination: impl ToArg, from: ListEnd, to: ListEnd) -> T
        => cmd("LMOVE").arg(source).arg(destination).arg(from.as_str()).arg(to.as_str());
    /// `RPOPLPUSH source destination`: like [`Client::lmove`] from the tail
    /// to the head (ask for `Option<T>`).
    fn rpoplpush[T: FromValue](source: impl ToArg, destination: impl ToArg) -> T
        => cmd("RPOPLPUSH").arg(source).arg(destination);

    // ----- sets -----

    /// `SADD key members...`: how many are new.
    fn sadd[](key: impl ToArg, members: impl ToArgs) -> usize
        => cmd("SADD").arg(key).with_args(members);
    /// `SREM key members...`: how many were removed.
    fn srem[](key: impl ToArg, members: impl ToArgs) -> usize
        => cmd("SREM").arg(key).with_args(members);
    /// `SMEMBERS key`: ask for a `HashSet`, `BTreeSet` or `Vec`.
    fn smembers[T: FromValue](key: impl ToArg) -> T => cmd("SMEMBERS").arg(key);
    /// `SISMEMBER key member`.
    fn sismember[](key: impl ToArg, member: impl ToArg) -> bool => cmd("SISMEMBER").arg(key).arg(member);
    /// `SCARD key`.
    fn scard[](key: impl ToArg) -> usize => cmd("SCARD").arg(key);
    /// `SINTER keys...`: ask for a `HashSet`, `BTreeSet` or `Vec`.
    fn sinter[T: FromValue](keys: impl ToArgs) -> T => cmd("SINTER").with_args(keys);
    /// `SUNION keys...`: ask for a `HashSet`, `BTreeSet` or `Vec`.
    fn sunion[T: FromValue](keys: impl ToArgs) -> T => cmd("SUNION").with_args(keys);
    /// `SDIFF keys...`: the members of the first set that are in none of
    /// the others; ask for a `HashSet`, `BTreeSet` or `Vec`.
    fn sdiff[T: FromValue](keys: impl ToArgs) -> T => cmd("SDIFF").with_args(keys);
    /// `SPOP key`: removes and returns a random member (ask for `Option<T>`).
    fn spop[T: FromValue](key: impl ToArg) -> T => cmd("SPOP").arg(key);
    /// `SPOP key count`: removes and returns up to `count` random members.
    fn spop_count[T: FromValue](key: impl ToArg, count: usize) -> Vec<T> => cmd("SPOP").arg(key).arg(count);
    /// `SRANDMEMBER key`: a random member, left in place (ask for `Option<T>`).
    fn srandmember[T: FromValue](key: impl ToArg) -> T => cmd("SRANDMEMBER").arg(key);
    /// `SRANDMEMBER key count`: up to `count` distinct random members; a
    /// negative `count` returns exactly `-count`, possibly repeated.
    fn srandmember_count[T: FromValue](key: impl ToArg, count: i64) -> Vec<T>
        => cmd("SRANDMEMBER").arg(key).arg(count);
    /// `SSCAN key cursor`: one page of members and the next cursor (0 when
    /// done); start at 0. See [`Client::hscan`] for the loop.
    fn sscan[T: FromValue](key: impl ToArg, cursor: u64) -> (u64, Vec<T>) => cmd("SSCAN").arg(key).arg(cursor);
    /// `SSCAN key cursor MATCH pattern`: like [`Client::sscan`], only
    /// members that match.
    fn sscan_match[T: FromValue](key: impl ToArg, cursor: u64, pattern: impl ToArg) -> (u64, Vec<T>)
        => cmd("SSCAN").arg(key).arg(cursor).arg("MATCH").arg(pattern);

    // ----- sorted sets -----

    /// `ZADD key score member`: 1 if the member is new.
    fn zadd[](key: impl ToArg, score: f64, member: impl ToArg) -> usize
        => cmd("ZADD").arg(key).arg(score).arg(member);
    /// `ZADD key score member ...`: how many members are new.
    fn zadd_multiple[](key: impl ToArg, items: impl IntoIterator<Item = (f64, impl ToArg)>) -> usize
        => cmd("ZADD").arg(key).args(pairs(items));
    /// `ZINCRBY key delta member`: the new score.
    fn zincr_by[](key: impl ToArg, delta: f64, member: impl ToArg) -> f64
        => cmd("ZINCRBY").arg(key).arg(delta).arg(member);
    /// `ZREM key members...`: how many were removed.
    fn zrem[](key: impl ToArg, members: impl ToArgs) -> usize
        => cmd("ZREM").arg(key).with_args(members);
    /// `ZSCORE key member`: `None` if not a member.
    fn zscore[](key: impl ToArg, member: impl ToArg) -> Option<f64> => cmd("ZSCORE").arg(key).arg(member);
    /// `ZRANK key member`: the 0-based rank by ascending score, `None` if not a member.
    fn zrank[](key: impl ToArg, member: impl ToArg) -> Option<usize> => cmd("ZRANK").arg(key).arg(member);
    /// `ZREVRANK key member`: the 0-based rank by descending score, `None` if not a member.
    fn zrevrank[](key: impl ToArg, member: impl ToArg) -> Option<usize> => cmd("ZREVRANK").arg(key).arg(member);
    /// `ZCARD key`.
    fn zcard[](key: impl ToArg) -> usize => cmd("ZCARD").arg(key);
    /// `ZRANGE key start stop`: members by rank, ascending.
    fn zrange[T: FromValue](key: impl ToArg, start: i64, stop: i64) -> Vec<T>
        => cmd("ZRANGE").arg(key).arg(start).arg(stop);
    /// `ZRANGE key start stop WITHSCORES`: `(member, score)` pairs.
    fn zrange_withscores[T: FromValue](key: impl ToArg, start: i64, stop: i64) -> Vec<(T, f64)>
        => cmd("ZRANGE").arg(key).arg(start).arg(stop).arg("WITHSCORES");
    /// `ZREVRANGE key start stop`: members by rank, descending.
    fn zrevrange[T: FromValue](key: impl ToArg, start: i64, stop: i64) -> Vec<T>
        => cmd("ZREVRANGE").arg(key).arg(start).arg(stop);
    /// `ZREVRANGE key start stop WITHSCORES`: `(member, score)` pairs, descending.
    fn zrevrange_withscores[T: FromValue](key: impl ToArg, start: i64, stop: i64) -> Vec<(T, f64)>
        => cmd("ZREVRANGE").arg(key).arg(start).arg(stop).arg("WITHSCORES");
    /// `ZRANGEBYSCORE key min max`: bounds as Redis spells them (`1`, `(1`, `-inf`, `+inf`).
    fn zrangebyscore[T: FromValue](key: impl ToArg, min: impl ToArg, max: impl ToArg) -> Vec<T>
        => cmd("ZRANGEBYSCORE").arg(key).arg(min).arg(max);
    /// `ZCOUNT key min max`: bounds as for [`Client::zrangebyscore`].
    fn zcount[](key: impl ToArg, min: impl ToArg, max: impl ToArg) -> usize
        => cmd("ZCOUNT").arg(key).arg(min).arg(max);
    /// `ZREMRANGEBYSCORE key min max`: how many were removed; bounds as for
    /// [`Client::zrangebyscore`].
    fn zremrangebyscore[](key: impl ToArg, min: impl ToArg, max: impl ToArg) -> usize
        => cmd("ZREMRANGEBYSCORE").arg(key).arg(min).arg(max);
    /// `ZPOPMIN key count`: removes and returns up to `count` members with
    /// the lowest scores, lowest first, as `(member, score)`.
    fn zpopmin[T: FromValue](key: impl ToArg, count: usize) -> Vec<(T, f64)>
        => cmd("ZPOPMIN").arg(key).arg(count);
    /// `ZPOPMAX key count`: like [`Client::zpopmin`], the highest scores first.
    fn zpopmax[T: FromValue](key: impl ToArg, count: usize) -> Vec<(T, f64)>
        => cmd("ZPOPMAX").arg(key).arg(count);
    /// `ZSCAN key cursor`: one page of `(member, score)` pairs and the next
    /// cursor (0 when done); start at 0. See [`Client::hscan`] for the loop.
    fn zscan[T: FromValue](key: impl ToArg, cursor: u64) -> (u64, Vec<(T, f64)>) => cmd("ZSCAN").arg(key).arg(cursor);
    /// `ZSCAN key cursor MATCH pattern`: like [`Client::zscan`], only
    /// members that match.
    fn zscan_match[T: FromValue](key: impl ToArg, cursor: u64, pattern: impl ToArg) -> (u64, Vec<(T, f64)>)
        => cmd("ZSCAN").arg(key).arg(cursor).arg("MATCH").arg(pattern);

    // ----- HyperLogLog -----

    /// `PFADD key elements...`: true if the estimate changed.
    fn pfadd[](key: impl ToArg, elements: impl ToArgs) -> bool => cmd("PFADD").arg(key).with_args(elements);
    /// `PFCOUNT keys...`: the estimated number of distinct elements (of the
    /// union, for several keys; in a cluster, in one slot).
    fn pfcount[](keys: impl ToArgs) -> usize => cmd("PFCOUNT").with_args(keys);

    // ----- scripts -----

    /// `EVAL script numkeys keys... args...` (see [`Script`](super::Script) for EVALSHA with a fallback).
    fn eval[T: FromValue](script: impl ToArg, keys: impl ToArgs, args: impl ToArgs) -> T
        => super::script::with_keys(cmd("EVAL").arg(script), keys, args);
    /// `EVALSHA sha1 numkeys keys... args...`.
    fn evalsha[T: FromValue](sha1: impl ToArg, keys: impl ToArgs, args: impl ToArgs) -> T
        => super::script::with_keys(cmd("EVALSHA").arg(sha1), keys, args);
    /// `SCRIPT LOAD script`: its SHA1 (in a cluster, loaded on every primary).
    fn script_load[](script: impl ToArg) -> String => cmd("SCRIPT").arg("LOAD").arg(script);

    // ----- streams -----

    /// `XADD key id field value ...` (`id` is usually `*`): the entry's id.
    fn xadd[](key: impl ToArg, id: impl ToArg, fields: impl IntoIterator<Item = (impl ToArg, impl ToArg)>) -> String
        => cmd("XADD").arg(key).arg(id).args(pairs(fields));
    /// `XLEN key`.
    fn xlen[](key: impl ToArg) -> usize => cmd("XLEN").arg(key);
    /// `XRANGE key start end` (`-` and `+` for the ends).
    fn xrange[](key: impl ToArg, start: impl ToArg, end: impl ToArg) -> Vec<StreamEntry>
        => cmd("XRANGE").arg(key).arg(start).arg(end);
    /// `XREAD STREAMS keys... ids...` (no `BLOCK`): entries after each id, per stream; empty if none.
    fn xread[](keys: impl ToArgs, ids: impl ToArgs) -> StreamReads
        => cmd("XREAD").arg("STREAMS").with_args(keys).with_args(ids);
    /// `XDEL key ids...`: how many were deleted.
    fn xdel[](key: impl ToArg, ids: impl ToArgs) -> usize => cmd("XDEL").arg(key).with_args(ids);
    /// `XTRIM key MAXLEN maxlen`: how many entries were removed.
    fn xtrim_maxlen[](key: impl ToArg, maxlen: usize) -> usize => cmd("XTRIM").arg(key).arg("MAXLEN").arg(maxlen);
    /// `XGROUP CREATE key group id MKSTREAM`.
    fn xgroup_create[](key: impl ToArg, group: impl ToArg, id: impl ToArg) -> ()
        => cmd("XGROUP").arg("CREATE").arg(key).arg(group).arg(id).arg("MKSTREAM");
    /// `XREADGROUP GROUP group consumer STREAMS keys... ids...` (no `BLOCK`; `>` for new entries).
    fn xreadgroup[](group: impl ToArg, consumer: impl ToArg, keys: impl ToArgs, ids: impl ToArgs) -> StreamReads
        => cmd("XREADGROUP").arg("GROUP").arg(group).arg(consumer).arg("STREAMS").with_args(keys).with_args(ids);
    /// `XACK key group ids...`: how many were acknowledged.
    fn xack[](key: impl ToArg, group: impl ToArg, ids: impl ToArgs) -> usize
        => cmd("XACK").arg(key).arg(group).with_args(ids);
}

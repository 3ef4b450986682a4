//! The slot map: which shard (a primary and its replicas) serves each of the
//! 16384 hash slots.
//!
//! Built from `CLUSTER SHARDS` ([`SlotMap::from_cluster_shards`], Redis 7+)
//! or `CLUSTER SLOTS` ([`SlotMap::from_cluster_slots`]), in RESP2 or RESP3,
//! and updated in place when a `MOVED` redirect or an `SMIGRATED`
//! notification says a slot has a new owner ([`SlotMap::set_primary`],
//! [`SlotMap::apply_slot_move`]). A lookup is one array index.
//!
//! Every shard in a map serves at least one slot: shards that serve none
//! (a node just added, a primary whose last slot moved away) are left out.
//!
//! ```
//! use redis_layers::cluster::topology::SlotMap;
//! use redis_layers::{Endpoint, Value};
//!
//! let node = |host: &str, port: i64| Value::Array(vec![
//!     Value::BulkString(host.as_bytes().to_vec().into()),
//!     Value::Integer(port),
//! ]);
//! // CLUSTER SLOTS: [start, end, primary, replicas...] per range.
//! let reply = Value::Array(vec![
//!     Value::Array(vec![Value::Integer(0), Value::Integer(8191), node("10.0.0.1", 6379), node("10.0.0.3", 6379)]),
//!     Value::Array(vec![Value::Integer(8192), Value::Integer(16383), node("10.0.0.2", 6379)]),
//! ]);
//! let mut map = SlotMap::from_cluster_slots(&reply).unwrap();
//! assert!(map.is_complete());
//! assert_eq!(map.primary_for(100), Some(&Endpoint::tcp("10.0.0.1", 6379)));
//!
//! // MOVED 100 10.0.0.2:6379
//! map.set_primary([100..=100], Endpoint::tcp("10.0.0.2", 6379));
//! assert_eq!(map.primary_for(100), Some(&Endpoint::tcp("10.0.0.2", 6379)));
//! ```

use std::fmt;
use std::ops::RangeInclusive;

use super::keys::{field, int_of, items, strip};
use crate::cluster::slot::SLOTS;
use crate::error::{Error, ProtocolError};
use crate::maint::SlotMove;
use crate::resp::Value;
use crate::transport::Endpoint;

/// A primary and its replicas, serving some slots.
///
/// ```
/// use redis_layers::cluster::topology::Shard;
/// use redis_layers::Endpoint;
///
/// let shard = Shard {
///     primary: Endpoint::tcp("10.0.0.1", 6379),
///     replicas: vec![Endpoint::tcp("10.0.0.2", 6379)],
///     id: None,
/// };
/// assert_eq!(shard.replicas.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The node that serves the slots' writes.
    pub primary: Endpoint,
    /// Its replicas that are healthy (`online` in `CLUSTER SHARDS`; `CLUSTER
    /// SLOTS` lists only those already).
    pub replicas: Vec<Endpoint>,
    /// The primary's node id (40 hex characters), when the reply gave one.
    pub id: Option<String>,
}

/// No shard serves the slot.
const UNASSIGNED: u16 = u16::MAX;

/// Which shard serves each hash slot.
///
/// See the [module docs](self).
///
/// ```
/// use redis_layers::cluster::topology::SlotMap;
/// let map = SlotMap::default();
/// assert_eq!(map.len_assigned(), 0);
/// assert!(map.primary_for(0).is_none());
/// ```
#[derive(Clone)]
pub struct SlotMap {
    /// Index into `shards` per slot, or [`UNASSIGNED`].
    slots: Box<[u16; SLOTS as usize]>,
    shards: Vec<Shard>,
}

impl Default for SlotMap {
    fn default() -> Self {
        let slots: Box<[u16]> = vec![UNASSIGNED; usize::from(SLOTS)].into_boxed_slice();
        SlotMap {
            slots: slots.try_into().unwrap_or_else(|_| unreachable!()),
            shards: Vec::new(),
        }
    }
}

impl fmt::Debug for SlotMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Ranges<'a>(&'a [RangeInclusive<u16>]);
        impl fmt::Debug for Ranges<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let parts: Vec<String> = self
                    .0
                    .iter()
                    .map(|r| format!("{}-{}", r.start(), r.end()))
                    .collect();
                f.write_str(&parts.join(","))
            }
        }
        let ranges = self.ranges();
        let mut list = f.debug_list();
        for (i, shard) in self.shards.iter().enumerate() {
            let mine: Vec<RangeInclusive<u16>> = ranges
                .iter()
                .filter(|(_, s)| std::ptr::eq(*s, &self.shards[i]))
                .map(|(r, _)| r.clone())
                .collect();
            list.entry(&(shard, Ranges(&mine)));
        }
        list.finish()
    }
}

fn protocol(msg: String) -> Error {
    Error::Protocol(ProtocolError::new(msg))
}

/// A host that can be dialled: not `?` (Redis's "unknown"), and not empty
/// unless `asked` is known: an empty host means the host of the node that
/// sent the reply (a node that never learned its own address says so).
fn usable_host(v: Option<&Value>, asked: Option<&str>) -> Option<String> {
    let host = strip(v?).as_bytes()?;
    let host = std::str::from_utf8(host).ok()?.trim();
    match host {
        "?" => None,
        "" => asked.map(str::to_owned),
        h => Some(h.to_owned()),
    }
}

fn slot_of(v: &Value, what: &str) -> Result<u16, Error> {
    int_of(v)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n < SLOTS)
        .ok_or_else(|| protocol(format!("{what}: bad slot {v:?}")))
}

fn port_of(v: &Value, what: &str) -> Result<u16, Error> {
    int_of(v)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| protocol(format!("{what}: bad port {v:?}")))
}

fn text(v: Option<&Value>) -> Option<String> {
    let b = strip(v?).as_bytes()?;
    Some(String::from_utf8_lossy(b).into_owned())
}

/// A top-level error reply is the server's error, not a malformed reply.
fn check_reply<'v>(reply: &'v Value, what: &str) -> Result<&'v [Value], Error> {
    if let Some(e) = strip(reply).as_server_error() {
        return Err(Error::Server(e));
    }
    items(reply).ok_or_else(|| protocol(format!("{what}: expected an array, got {reply:?}")))
}

impl SlotMap {
    /// Parses a `CLUSTER SHARDS` reply (Redis 7+): an array of shards, each
    /// a RESP3 map or a RESP2 flat key/value array with `slots` (`[start,
    /// end, start, end, ...]`) and `nodes`; each node with `ip`, `endpoint`,
    /// `port`, `role` and `health`.
    ///
    /// A node's address is its `endpoint` when usable, else its `ip`
    /// (empty and `?` are not usable); its port is `port` (`tls-port` is
    /// ignored for now: a node with no `port` is left out). The node with
    /// role `master` (or `primary`) serves the shard's slots, preferring an
    /// `online` one when a shard reports two; replicas are kept only when
    /// `online`. A shard without a usable primary leaves its slots
    /// unassigned. Shards announced twice with the same primary are merged;
    /// when two shards claim one slot, the later wins.
    ///
    /// A reply of the wrong shape is an [`Error::Protocol`] naming what was
    /// wrong; an error reply is [`Error::Server`].
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::{Endpoint, Value};
    ///
    /// let b = |s: &str| Value::BulkString(s.as_bytes().to_vec().into());
    /// let node = |ip: &str, port: i64, role: &str| Value::Map(vec![
    ///     (b("id"), b("07c37dfeb235213a872192d90877d0cd55635b91")),
    ///     (b("port"), Value::Integer(port)),
    ///     (b("ip"), b(ip)),
    ///     (b("endpoint"), b(ip)),
    ///     (b("role"), b(role)),
    ///     (b("replication-offset"), Value::Integer(72156)),
    ///     (b("health"), b("online")),
    /// ]);
    /// let reply = Value::Array(vec![Value::Map(vec![
    ///     (b("slots"), Value::Array(vec![Value::Integer(0), Value::Integer(16383)])),
    ///     (b("nodes"), Value::Array(vec![node("10.0.0.1", 6379, "master"), node("10.0.0.2", 6380, "replica")])),
    /// ])]);
    /// let map = SlotMap::from_cluster_shards(&reply).unwrap();
    /// assert!(map.is_complete());
    /// let shard = map.shard_for(42).unwrap();
    /// assert_eq!(shard.primary, Endpoint::tcp("10.0.0.1", 6379));
    /// assert_eq!(shard.replicas, [Endpoint::tcp("10.0.0.2", 6380)]);
    /// assert_eq!(shard.id.as_deref(), Some("07c37dfeb235213a872192d90877d0cd55635b91"));
    /// assert!(SlotMap::from_cluster_shards(&Value::Integer(1)).is_err());
    /// ```
    pub fn from_cluster_shards(reply: &Value) -> Result<SlotMap, Error> {
        Self::shards_reply(reply, None)
    }

    /// [`SlotMap::from_cluster_shards`] of a reply from `asked`: a node
    /// announced with an empty address is on `asked`'s host (Redis's rule
    /// for a node that does not know its own address).
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::{Endpoint, Value};
    ///
    /// let b = |s: &str| Value::BulkString(s.as_bytes().to_vec().into());
    /// let node = Value::Map(vec![
    ///     (b("port"), Value::Integer(7000)),
    ///     (b("ip"), b("")),
    ///     (b("endpoint"), b("")),
    ///     (b("role"), b("master")),
    ///     (b("health"), b("online")),
    /// ]);
    /// let reply = Value::Array(vec![Value::Map(vec![
    ///     (b("slots"), Value::Array(vec![Value::Integer(0), Value::Integer(16383)])),
    ///     (b("nodes"), Value::Array(vec![node])),
    /// ])]);
    /// assert!(SlotMap::from_cluster_shards(&reply).unwrap().primaries().is_empty());
    /// let map = SlotMap::from_cluster_shards_via(&reply, &Endpoint::tcp("10.0.0.9", 7000)).unwrap();
    /// assert_eq!(map.primaries(), [Endpoint::tcp("10.0.0.9", 7000)]);
    /// ```
    pub fn from_cluster_shards_via(reply: &Value, asked: &Endpoint) -> Result<SlotMap, Error> {
        Self::shards_reply(reply, asked.host())
    }

    fn shards_reply(reply: &Value, asked: Option<&str>) -> Result<SlotMap, Error> {
        const WHAT: &str = "CLUSTER SHARDS";
        let mut map = SlotMap::default();
        for (i, shard) in check_reply(reply, WHAT)?.iter().enumerate() {
            let what = format!("{WHAT}: shard {i}");
            if !matches!(strip(shard), Value::Map(_) | Value::Array(_)) {
                return Err(protocol(format!("{what}: expected a map, got {shard:?}")));
            }
            let slots =
                field(shard, "slots").ok_or_else(|| protocol(format!("{what}: no \"slots\"")))?;
            let slots = items(slots)
                .ok_or_else(|| protocol(format!("{what}: \"slots\" is not an array: {slots:?}")))?;
            if slots.len() % 2 != 0 {
                return Err(protocol(format!(
                    "{what}: \"slots\" has an odd number of bounds ({})",
                    slots.len()
                )));
            }
            let mut ranges = Vec::with_capacity(slots.len() / 2);
            for pair in slots.chunks_exact(2) {
                let (start, end) = (slot_of(&pair[0], &what)?, slot_of(&pair[1], &what)?);
                if start > end {
                    return Err(protocol(format!(
                        "{what}: reversed slot range {start}-{end}"
                    )));
                }
                ranges.push(start..=end);
            }
            let nodes =
                field(shard, "nodes").ok_or_else(|| protocol(format!("{what}: no \"nodes\"")))?;
            let nodes = items(nodes)
                .ok_or_else(|| protocol(format!("{what}: \"nodes\" is not an array: {nodes:?}")))?;
            // (endpoint, id, online)
            let mut primary: Option<(Endpoint, Option<String>, bool)> = None;
            let mut replicas = Vec::new();
            for (j, node) in nodes.iter().enumerate() {
                let what = format!("{what}, node {j}");
                if !matches!(strip(node), Value::Map(_) | Value::Array(_)) {
                    return Err(protocol(format!("{what}: expected a map, got {node:?}")));
                }
                let role = text(field(node, "role"))
                    .ok_or_else(|| protocol(format!("{what}: no \"role\"")))?
                    .to_ascii_lowercase();
                let online =
                    text(field(node, "health")).is_some_and(|h| h.eq_ignore_ascii_case("online"));
                let port = match field(node, "port") {
                    Some(p) => port_of(p, &what)?,
                    None => 0,
                };
                let host = usable_host(field(node, "endpoint"), None)
                    .or_else(|| usable_host(field(node, "ip"), asked));
                let endpoint = match host {
                    Some(host) if port != 0 => Endpoint::tcp(host, port),
                    _ => continue,
                };
                match role.as_str() {
                    "master" | "primary" => {
                        if primary.as_ref().is_none_or(|p| !p.2 && online) {
                            primary = Some((endpoint, text(field(node, "id")), online));
                        }
                    }
                    "replica" | "slave" => {
                        if online {
                            replicas.push(endpoint);
                        }
                    }
                    _ => return Err(protocol(format!("{what}: unknown role {role:?}"))),
                }
            }
            if let Some((endpoint, id, _)) = primary {
                replicas.retain(|r| *r != endpoint);
                map.add(endpoint, replicas, id, ranges);
            }
        }
        map.prune();
        Ok(map)
    }

    /// Parses a `CLUSTER SLOTS` reply: an array of `[start, end, primary,
    /// replica...]`, each node `[host, port, id?, {metadata}?]`.
    ///
    /// A node whose host is empty, `?` or null (Redis's "unknown endpoint")
    /// cannot be dialled: a replica so announced is left out, and a range
    /// whose primary is so announced stays unassigned. Ranges of one
    /// primary are merged into one shard. A reply of the wrong shape is an
    /// [`Error::Protocol`] naming what was wrong.
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::{Endpoint, Value};
    ///
    /// let b = |s: &str| Value::BulkString(s.as_bytes().to_vec().into());
    /// let node = |port: i64| Value::Array(vec![b("127.0.0.1"), Value::Integer(port), b("0123456789012345678901234567890123456789")]);
    /// let range = |a: i64, z: i64, port: i64| Value::Array(vec![Value::Integer(a), Value::Integer(z), node(port)]);
    /// let reply = Value::Array(vec![range(0, 99, 7000), range(100, 16383, 7001), range(200, 200, 7000)]);
    /// let map = SlotMap::from_cluster_slots(&reply).unwrap();
    /// assert_eq!(map.primaries(), [Endpoint::tcp("127.0.0.1", 7000), Endpoint::tcp("127.0.0.1", 7001)]);
    /// assert_eq!(map.primary_for(200), Some(&Endpoint::tcp("127.0.0.1", 7000)));
    /// assert_eq!(map.len_assigned(), 16384);
    /// ```
    pub fn from_cluster_slots(reply: &Value) -> Result<SlotMap, Error> {
        Self::slots_reply(reply, None)
    }

    /// [`SlotMap::from_cluster_slots`] of a reply from `asked`: an empty
    /// host is `asked`'s host.
    pub fn from_cluster_slots_via(reply: &Value, asked: &Endpoint) -> Result<SlotMap, Error> {
        Self::slots_reply(reply, asked.host())
    }

    fn slots_reply(reply: &Value, asked: Option<&str>) -> Result<SlotMap, Error> {
        const WHAT: &str = "CLUSTER SLOTS";
        let mut map = SlotMap::default();
        for (i, entry) in check_reply(reply, WHAT)?.iter().enumerate() {
            let what = format!("{WHAT}: entry {i}");
            let fields = items(entry).filter(|f| f.len() >= 3).ok_or_else(|| {
                protocol(format!(
                    "{what}: expected [start, end, primary, replicas...], got {entry:?}"
                ))
            })?;
            let (start, end) = (slot_of(&fields[0], &what)?, slot_of(&fields[1], &what)?);
            if start > end {
                return Err(protocol(format!(
                    "{what}: reversed slot range {start}-{end}"
                )));
            }
            let primary = slots_node(&fields[2], &what, asked)?;
            let mut replicas = Vec::new();
            for r in &fields[3..] {
                if let Some((endpoint, _)) = slots_node(r, &what, asked)? {
                    replicas.push(endpoint);
                }
            }
            if let Some((endpoint, id)) = primary {
                replicas.retain(|r| *r != endpoint);
                map.add(endpoint, replicas, id, vec![start..=end]);
            }
        }
        map.prune();
        Ok(map)
    }

    /// Adds `ranges` to the shard of `primary` (created if new), merging
    /// replicas and keeping the first id.
    fn add(
        &mut self,
        primary: Endpoint,
        replicas: Vec<Endpoint>,
        id: Option<String>,
        ranges: Vec<RangeInclusive<u16>>,
    ) {
        let idx = match self.shards.iter().position(|s| s.primary == primary) {
            Some(i) => {
                let shard = &mut self.shards[i];
                for r in replicas {
                    if !shard.replicas.contains(&r) {
                        shard.replicas.push(r);
                    }
                }
                if shard.id.is_none() {
                    shard.id = id;
                }
                i
            }
            None => {
                self.shards.push(Shard {
                    primary,
                    replicas,
                    id,
                });
                self.shards.len() - 1
            }
        };
        self.assign(ranges, idx);
    }

    /// Points every slot of `ranges` (clamped to `0..SLOTS`, reversed ones
    /// ignored) at shard `idx`.
    fn assign(&mut self, ranges: impl IntoIterator<Item = RangeInclusive<u16>>, idx: usize) {
        let Ok(idx) = u16::try_from(idx) else {
            return;
        };
        for r in ranges {
            let (start, end) = (*r.start(), (*r.end()).min(SLOTS - 1));
            if start > end {
                continue;
            }
            self.slots[usize::from(start)..=usize::from(end)].fill(idx);
        }
    }

    /// Drops the shards that serve no slot, renumbering the others.
    fn prune(&mut self) {
        let mut counts = vec![0usize; self.shards.len()];
        for &s in self.slots.iter() {
            if let Some(c) = counts.get_mut(usize::from(s)) {
                *c += 1;
            }
        }
        if counts.iter().all(|&c| c > 0) {
            return;
        }
        let mut renumber = vec![UNASSIGNED; self.shards.len()];
        let mut next = 0u16;
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 {
                renumber[i] = next;
                next += 1;
            }
        }
        let mut i = 0;
        self.shards.retain(|_| {
            let keep = counts[i] > 0;
            i += 1;
            keep
        });
        for s in self.slots.iter_mut() {
            *s = renumber.get(usize::from(*s)).copied().unwrap_or(UNASSIGNED);
        }
    }

    /// Each slot's index into [`shards`](Self::shards) (out of range:
    /// unassigned), for walking every slot without a lookup per slot.
    pub(crate) fn shard_indexes(&self) -> &[u16] {
        &self.slots[..]
    }

    /// The shard serving `slot`, if any (none for slots `>= 16384`).
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::Endpoint;
    ///
    /// let mut map = SlotMap::default();
    /// map.set_primary([0..=16383], Endpoint::tcp("10.0.0.1", 6379));
    /// assert_eq!(map.shard_for(5).unwrap().primary, Endpoint::tcp("10.0.0.1", 6379));
    /// assert!(map.shard_for(16384).is_none());
    /// ```
    pub fn shard_for(&self, slot: u16) -> Option<&Shard> {
        let idx = *self.slots.get(usize::from(slot))?;
        self.shards.get(usize::from(idx))
    }

    /// The primary serving `slot`, if any.
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::Endpoint;
    ///
    /// let mut map = SlotMap::default();
    /// map.set_primary([10..=20], Endpoint::tcp("10.0.0.1", 6379));
    /// assert_eq!(map.primary_for(15), Some(&Endpoint::tcp("10.0.0.1", 6379)));
    /// assert_eq!(map.primary_for(21), None);
    /// ```
    pub fn primary_for(&self, slot: u16) -> Option<&Endpoint> {
        self.shard_for(slot).map(|s| &s.primary)
    }

    /// The shards, each serving at least one slot, in the order they were
    /// first seen.
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// assert!(SlotMap::default().shards().is_empty());
    /// ```
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The primaries that serve at least one slot.
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::Endpoint;
    ///
    /// let mut map = SlotMap::default();
    /// map.set_primary([0..=99], Endpoint::tcp("a", 1));
    /// map.set_primary([100..=199], Endpoint::tcp("b", 1));
    /// map.set_primary([0..=99], Endpoint::tcp("b", 1)); // a serves nothing now
    /// assert_eq!(map.primaries(), [Endpoint::tcp("b", 1)]);
    /// ```
    pub fn primaries(&self) -> Vec<Endpoint> {
        self.shards.iter().map(|s| s.primary.clone()).collect()
    }

    /// Every node of the map, primaries first, then replicas, each once.
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::Endpoint;
    ///
    /// let mut map = SlotMap::default();
    /// map.set_primary([0..=99], Endpoint::tcp("a", 1));
    /// assert_eq!(map.nodes(), [Endpoint::tcp("a", 1)]);
    /// ```
    pub fn nodes(&self) -> Vec<Endpoint> {
        let mut nodes = self.primaries();
        for r in self.shards.iter().flat_map(|s| &s.replicas) {
            if !nodes.contains(r) {
                nodes.push(r.clone());
            }
        }
        nodes
    }

    /// True when every slot has a shard.
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::Endpoint;
    ///
    /// let mut map = SlotMap::default();
    /// assert!(!map.is_complete());
    /// map.set_primary([0..=16383], Endpoint::tcp("a", 1));
    /// assert!(map.is_complete());
    /// ```
    pub fn is_complete(&self) -> bool {
        self.slots.iter().all(|&s| s != UNASSIGNED)
    }

    /// How many slots have a shard.
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::Endpoint;
    ///
    /// let mut map = SlotMap::default();
    /// map.set_primary([0..=9, 100..=100], Endpoint::tcp("a", 1));
    /// assert_eq!(map.len_assigned(), 11);
    /// ```
    pub fn len_assigned(&self) -> usize {
        self.slots.iter().filter(|&&s| s != UNASSIGNED).count()
    }

    /// The assigned slots as maximal ranges served by one shard, ascending.
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::Endpoint;
    ///
    /// let mut map = SlotMap::default();
    /// map.set_primary([0..=16383], Endpoint::tcp("a", 1));
    /// map.set_primary([100..=100], Endpoint::tcp("b", 1));
    /// let ranges: Vec<_> = map.ranges().into_iter().map(|(r, s)| (r, s.primary.to_string())).collect();
    /// assert_eq!(ranges, [(0..=99, "a:1".into()), (100..=100, "b:1".into()), (101..=16383, "a:1".into())]);
    /// ```
    pub fn ranges(&self) -> Vec<(RangeInclusive<u16>, &Shard)> {
        let mut out: Vec<(RangeInclusive<u16>, &Shard)> = Vec::new();
        let mut run: Option<(u16, u16)> = None; // (start, shard)
        for (slot, &idx) in self.slots.iter().enumerate() {
            let slot = slot as u16;
            match run {
                Some((_, cur)) if cur == idx => {}
                _ => {
                    if let Some((start, cur)) = run.take() {
                        if let Some(shard) = self.shards.get(usize::from(cur)) {
                            out.push((start..=slot - 1, shard));
                        }
                    }
                    run = Some((slot, idx));
                }
            }
        }
        if let Some((start, cur)) = run {
            if let Some(shard) = self.shards.get(usize::from(cur)) {
                out.push((start..=SLOTS - 1, shard));
            }
        }
        out
    }

    /// Moves `slots` to the shard whose primary is `primary`, creating that
    /// shard (with no replicas) if none has it: what a `MOVED slot addr`
    /// redirect or an `SMIGRATED` triplet says. Ranges are clamped to
    /// `0..16384`; reversed ones are ignored. A node that becomes a
    /// primary here is no longer listed as a replica, and shards left
    /// without slots are dropped (from [`primaries`](Self::primaries) and
    /// [`nodes`](Self::nodes) too).
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::Endpoint;
    ///
    /// let (a, b) = (Endpoint::tcp("10.0.0.1", 6379), Endpoint::tcp("10.0.0.2", 6379));
    /// let mut map = SlotMap::default();
    /// map.set_primary([0..=16383], a.clone());
    /// map.set_primary([0..=100, 200..=200], b.clone());
    /// assert_eq!(map.primary_for(100), Some(&b));
    /// assert_eq!(map.primary_for(101), Some(&a));
    /// assert_eq!(map.primaries(), [a, b]);
    /// ```
    pub fn set_primary(
        &mut self,
        slots: impl IntoIterator<Item = RangeInclusive<u16>>,
        primary: Endpoint,
    ) {
        for shard in &mut self.shards {
            shard.replicas.retain(|r| *r != primary);
        }
        let idx = match self.shards.iter().position(|s| s.primary == primary) {
            Some(i) => i,
            None => {
                self.shards.push(Shard {
                    primary,
                    replicas: Vec::new(),
                    id: None,
                });
                self.shards.len() - 1
            }
        };
        self.assign(slots, idx);
        self.prune();
    }

    /// Applies one `SMIGRATED` triplet: its slots are now served by its
    /// destination (see [`set_primary`](Self::set_primary)).
    ///
    /// ```
    /// use redis_layers::cluster::topology::SlotMap;
    /// use redis_layers::maint::{MovingEndpoint, SlotMove};
    /// use redis_layers::Endpoint;
    ///
    /// let mut map = SlotMap::default();
    /// map.set_primary([0..=16383], Endpoint::tcp("127.0.0.1", 7001));
    /// map.apply_slot_move(&SlotMove {
    ///     src: Some("127.0.0.1:7001".parse().unwrap()),
    ///     dst: MovingEndpoint::new("127.0.0.1", 7002),
    ///     slots: "0-100,200".parse().unwrap(),
    /// });
    /// assert_eq!(map.primary_for(200), Some(&Endpoint::tcp("127.0.0.1", 7002)));
    /// assert_eq!(map.primary_for(101), Some(&Endpoint::tcp("127.0.0.1", 7001)));
    /// ```
    pub fn apply_slot_move(&mut self, m: &SlotMove) {
        let dst = Endpoint::tcp(m.dst.host.clone(), m.dst.port);
        self.set_primary(m.slots.ranges().iter().cloned(), dst);
    }
}

/// One node of a `CLUSTER SLOTS` entry: `None` when its address is not
/// usable.
fn slots_node(
    v: &Value,
    what: &str,
    asked: Option<&str>,
) -> Result<Option<(Endpoint, Option<String>)>, Error> {
    let fields = items(v).filter(|f| f.len() >= 2).ok_or_else(|| {
        protocol(format!(
            "{what}: expected a node [host, port, ...], got {v:?}"
        ))
    })?;
    let port = port_of(&fields[1], what)?;
    let Some(host) = usable_host(fields.first(), asked) else {
        return Ok(None);
    };
    if port == 0 {
        return Ok(None);
    }
    Ok(Some((Endpoint::tcp(host, port), text(fields.get(2)))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn b(s: &str) -> Value {
        Value::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint::tcp("127.0.0.1", port)
    }

    /// A `CLUSTER SHARDS` node, as a map or a flat array.
    fn shards_node(resp3: bool, fields: &[(&str, Value)]) -> Value {
        if resp3 {
            Value::Map(fields.iter().map(|(k, v)| (b(k), v.clone())).collect())
        } else {
            Value::Array(fields.iter().flat_map(|(k, v)| [b(k), v.clone()]).collect())
        }
    }

    fn node_fields(
        ip: &str,
        endpoint: Value,
        port: u16,
        role: &str,
        health: &str,
    ) -> Vec<(&'static str, Value)> {
        vec![
            ("id", b(&format!("{port:040}"))),
            ("port", Value::Integer(i64::from(port))),
            ("ip", b(ip)),
            ("endpoint", endpoint),
            ("role", b(role)),
            ("replication-offset", Value::Integer(1)),
            ("health", b(health)),
        ]
    }

    fn shards_reply(resp3: bool) -> Value {
        let shard = |slots: &[i64], nodes: Vec<Vec<(&'static str, Value)>>| {
            shards_node(
                resp3,
                &[
                    (
                        "slots",
                        Value::Array(slots.iter().map(|&s| Value::Integer(s)).collect()),
                    ),
                    (
                        "nodes",
                        Value::Array(nodes.iter().map(|n| shards_node(resp3, n)).collect()),
                    ),
                ],
            )
        };
        Value::Array(vec![
            shard(
                &[0, 5460, 10923, 10923],
                vec![
                    node_fields("127.0.0.1", b("127.0.0.1"), 7000, "master", "online"),
                    node_fields("127.0.0.1", b("127.0.0.1"), 7003, "replica", "online"),
                    node_fields("127.0.0.1", b("127.0.0.1"), 7006, "replica", "loading"),
                ],
            ),
            shard(
                &[5461, 10922],
                vec![
                    // Replica listed first; `endpoint` unknown: the ip is used.
                    node_fields("127.0.0.1", b("?"), 7004, "slave", "online"),
                    node_fields("127.0.0.1", Value::Null, 7001, "primary", "online"),
                ],
            ),
            shard(
                &[10924, 16383],
                vec![node_fields(
                    "10.0.0.1",
                    b("redis-2.example"),
                    7002,
                    "master",
                    "online",
                )],
            ),
            // A node with no slots: left out.
            shard(
                &[],
                vec![node_fields(
                    "127.0.0.1",
                    b("127.0.0.1"),
                    7009,
                    "master",
                    "online",
                )],
            ),
        ])
    }

    #[test]
    fn parses_cluster_shards_both_shapes() {
        for resp3 in [true, false] {
            let map = SlotMap::from_cluster_shards(&shards_reply(resp3)).unwrap();
            assert!(map.is_complete(), "resp3={resp3}");
            assert_eq!(map.len_assigned(), 16384);
            let host2 = Endpoint::tcp("redis-2.example", 7002);
            assert_eq!(map.primaries(), [ep(7000), ep(7001), host2.clone()]);
            assert_eq!(map.shard_for(0).unwrap().replicas, [ep(7003)]);
            assert_eq!(map.shard_for(10923).unwrap().primary, ep(7000));
            assert_eq!(map.shard_for(10922).unwrap().replicas, [ep(7004)]);
            assert_eq!(map.primary_for(16383), Some(&host2));
            assert_eq!(
                map.shard_for(0).unwrap().id.as_deref(),
                Some(format!("{:040}", 7000).as_str())
            );
            assert_eq!(map.nodes(), [ep(7000), ep(7001), host2, ep(7003), ep(7004)]);
            let ranges: Vec<_> = map
                .ranges()
                .into_iter()
                .map(|(r, s)| (r, s.primary.clone()))
                .collect();
            assert_eq!(ranges.len(), 4);
            assert_eq!(ranges[2], (10923..=10923, ep(7000)));
            assert!(format!("{map:?}").contains("0-5460,10923"));
        }
    }

    #[test]
    fn cluster_shards_errors() {
        let bad = [
            Value::Integer(1),
            Value::Array(vec![Value::Integer(1)]),
            Value::Array(vec![Value::Map(vec![])]),
            Value::Array(vec![Value::Map(vec![(b("slots"), Value::Integer(1))])]),
            Value::Array(vec![Value::Map(vec![(
                b("slots"),
                Value::Array(vec![Value::Integer(1)]),
            )])]),
            Value::Array(vec![Value::Map(vec![(
                b("slots"),
                Value::Array(vec![Value::Integer(5), Value::Integer(1)]),
            )])]),
            Value::Array(vec![Value::Map(vec![(
                b("slots"),
                Value::Array(vec![Value::Integer(0), Value::Integer(16384)]),
            )])]),
            Value::Array(vec![Value::Map(vec![
                (b("slots"), Value::Array(vec![])),
                (b("nodes"), Value::Array(vec![Value::Map(vec![])])),
            ])]),
            Value::Array(vec![Value::Map(vec![
                (b("slots"), Value::Array(vec![])),
                (
                    b("nodes"),
                    Value::Array(vec![Value::Map(vec![
                        (b("role"), b("boss")),
                        (b("port"), Value::Integer(1)),
                        (b("ip"), b("h")),
                    ])]),
                ),
            ])]),
        ];
        for v in bad {
            match SlotMap::from_cluster_shards(&v) {
                Err(Error::Protocol(e)) => assert!(e.message().starts_with("CLUSTER SHARDS")),
                other => panic!("{v:?}: {other:?}"),
            }
        }
        assert!(matches!(
            SlotMap::from_cluster_shards(&Value::Error("ERR unknown subcommand".into())),
            Err(Error::Server(_))
        ));
        // Slots as numeric strings are fine; an empty reply is an empty map.
        let v = Value::Array(vec![Value::Map(vec![
            (b("slots"), Value::Array(vec![b("0"), b("16383")])),
            (
                b("nodes"),
                Value::Array(vec![shards_node(
                    true,
                    &node_fields("h", b(""), 1, "MASTER", "online"),
                )]),
            ),
        ])]);
        assert!(SlotMap::from_cluster_shards(&v).unwrap().is_complete());
        let empty = SlotMap::from_cluster_shards(&Value::Array(vec![])).unwrap();
        assert_eq!(empty.len_assigned(), 0);
        assert!(empty.primaries().is_empty());
    }

    #[test]
    fn shard_without_usable_primary_stays_unassigned() {
        let v = Value::Array(vec![Value::Map(vec![
            (
                b("slots"),
                Value::Array(vec![Value::Integer(0), Value::Integer(99)]),
            ),
            (
                b("nodes"),
                Value::Array(vec![
                    shards_node(true, &node_fields("", b("?"), 1, "master", "online")),
                    shards_node(true, &node_fields("h", b("h"), 2, "replica", "online")),
                ]),
            ),
        ])]);
        let map = SlotMap::from_cluster_shards(&v).unwrap();
        assert_eq!(map.len_assigned(), 0);
        assert!(map.nodes().is_empty());
    }

    #[test]
    fn failed_primary_loses_to_an_online_one() {
        let v = Value::Array(vec![Value::Map(vec![
            (
                b("slots"),
                Value::Array(vec![Value::Integer(0), Value::Integer(9)]),
            ),
            (
                b("nodes"),
                Value::Array(vec![
                    shards_node(true, &node_fields("h", b("h"), 1, "master", "fail")),
                    shards_node(true, &node_fields("h", b("h"), 2, "master", "online")),
                    shards_node(true, &node_fields("h", b("h"), 3, "master", "online")),
                ]),
            ),
        ])]);
        let map = SlotMap::from_cluster_shards(&v).unwrap();
        assert_eq!(map.primary_for(0), Some(&Endpoint::tcp("h", 2)));
    }

    fn slots_reply() -> Value {
        let node = |host: Value, port: i64| {
            Value::Array(vec![
                host,
                Value::Integer(port),
                b("id"),
                Value::Map(vec![(b("hostname"), b("x"))]),
            ])
        };
        let entry = |a: i64, z: i64, nodes: Vec<Value>| {
            let mut v = vec![Value::Integer(a), Value::Integer(z)];
            v.extend(nodes);
            Value::Array(v)
        };
        Value::Array(vec![
            entry(
                0,
                5460,
                vec![node(b("127.0.0.1"), 7000), node(b("127.0.0.1"), 7003)],
            ),
            entry(
                5461,
                10922,
                vec![node(b("127.0.0.1"), 7001), node(Value::Null, 7004)],
            ),
            entry(10923, 10923, vec![node(b("127.0.0.1"), 7000)]),
            entry(10924, 16383, vec![node(b("127.0.0.1"), 7002)]),
            // Unknown primary: unassigned.
            entry(16000, 16000, vec![node(b("?"), 7005)]),
        ])
    }

    #[test]
    fn parses_cluster_slots() {
        let map = SlotMap::from_cluster_slots(&slots_reply()).unwrap();
        assert_eq!(map.primaries(), [ep(7000), ep(7001), ep(7002)]);
        assert_eq!(map.shard_for(10923).unwrap().replicas, [ep(7003)]);
        assert!(map.shard_for(6000).unwrap().replicas.is_empty());
        // 16000 was given to 7002, then to an unknown node: still 7002's.
        assert_eq!(map.primary_for(16000), Some(&ep(7002)));
        assert_eq!(map.shard_for(0).unwrap().id.as_deref(), Some("id"));
        for bad in [
            Value::Null,
            Value::Array(vec![Value::Array(vec![
                Value::Integer(0),
                Value::Integer(1),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Integer(0),
                Value::Integer(1),
                Value::Integer(2),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Integer(0),
                Value::Integer(1),
                Value::Array(vec![b("h"), b("port")]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                Value::Integer(-1),
                Value::Integer(1),
                Value::Array(vec![b("h"), Value::Integer(1)]),
            ])]),
        ] {
            match SlotMap::from_cluster_slots(&bad) {
                Err(Error::Protocol(e)) => assert!(e.message().starts_with("CLUSTER SLOTS")),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn set_primary_moves_slots_and_drops_empty_shards() {
        let mut map = SlotMap::from_cluster_slots(&slots_reply()).unwrap();
        // MOVED 0 to a known primary.
        map.set_primary([0..=0], ep(7001));
        assert_eq!(map.primary_for(0), Some(&ep(7001)));
        assert_eq!(map.primary_for(1), Some(&ep(7000)));
        // A failover: the replica 7003 takes all of 7000's slots.
        map.set_primary([1..=5460, 10923..=10923], ep(7003));
        assert_eq!(map.primaries(), [ep(7001), ep(7002), ep(7003)]);
        assert!(!map.nodes().contains(&ep(7000)));
        assert_eq!(map.primary_for(10923), Some(&ep(7003)));
        assert!(map.is_complete());
        // Clamped and reversed ranges.
        #[allow(clippy::reversed_empty_ranges)]
        map.set_primary([16000..=u16::MAX, 10..=5], ep(7009));
        assert_eq!(map.primary_for(16383), Some(&ep(7009)));
        assert_eq!(map.primary_for(10), Some(&ep(7003)));
        assert_eq!(map.len_assigned(), 16384);
        // Every slot to one node: one shard left.
        map.set_primary([0..=16383], ep(1));
        assert_eq!(map.shards().len(), 1);
        assert_eq!(map.ranges().len(), 1);
        // Out-of-range lookups.
        assert!(map.shard_for(16384).is_none());
        assert!(map.shard_for(u16::MAX).is_none());
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let word = prop::sample::select(vec![
            "slots",
            "nodes",
            "port",
            "ip",
            "endpoint",
            "role",
            "master",
            "replica",
            "health",
            "online",
            "id",
            "?",
            "",
            "127.0.0.1",
        ]);
        let leaf = prop_oneof![
            word.prop_map(b),
            (-3i64..17000).prop_map(Value::Integer),
            any::<i64>().prop_map(Value::Integer),
            Just(Value::Null),
            Just(Value::SimpleString(Bytes::from_static(b"master"))),
            Just(Value::Error(Bytes::from_static(b"ERR x"))),
        ];
        leaf.prop_recursive(5, 256, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..9).prop_map(Value::Array),
                prop::collection::vec((inner.clone(), inner), 0..8).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Random replies never panic either parser, and whatever parses
        /// keeps the map's invariants.
        #[test]
        fn random_replies_never_panic(v in arb_value(), slot in any::<u16>()) {
            let parsed = [SlotMap::from_cluster_shards(&v), SlotMap::from_cluster_slots(&v)];
            for mut map in parsed.into_iter().flatten() {
                for shard in map.shards() {
                    prop_assert!(map.ranges().iter().any(|(_, s)| *s == shard));
                }
                let _ = map.shard_for(slot);
                map.set_primary([slot..=slot.saturating_add(10)], ep(1));
                prop_assert!(map.len_assigned() <= 16384);
                let _ = map.nodes();
            }
        }
    }
}

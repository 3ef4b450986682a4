mod support;

// The cluster building blocks (`redis_layers::cluster::{slot, keys,
// topology}`) against real Redis: our key slots against `CLUSTER KEYSLOT`,
// slot maps parsed from `CLUSTER SHARDS` and `CLUSTER SLOTS` against each
// other and against `CLUSTER NODES`, `set_primary` after a real slot
// migration against the new `CLUSTER SHARDS`, and the built-in command table
// against the server's `COMMAND INFO` and `COMMAND GETKEYS`.
//
// Every test is bounded with `support::bounded`; the support's blocking
// calls (starting a cluster, migrating a slot) run on the blocking pool so
// the bound holds while they run.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use redis_layers::cluster::keys::{CommandTable, Route};
use redis_layers::cluster::slot::key_slot;
use redis_layers::cluster::topology::SlotMap;
use redis_layers::maint::{MovingEndpoint, SlotMove};
use redis_layers::transport::Protocol;
use redis_layers::{cmd, Cmd, Connection, Connector, Endpoint, Error, Pipeline, Value};
use support::cluster::RedisCluster;
use support::{bounded, within, RedisServer};

const STEP: Duration = Duration::from_secs(20);

// ===== helpers =====

/// Runs a blocking support call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

async fn start_cluster(replicas: usize) -> Arc<RedisCluster> {
    Arc::new(
        blocking(move || {
            RedisCluster::builder()
                .replicas_per_primary(replicas)
                .start()
        })
        .await,
    )
}

async fn connect(ep: Endpoint, protocol: Protocol) -> Connection {
    within(
        STEP,
        "connect",
        Connector::new().protocol(protocol).connect(ep),
    )
    .await
    .expect("connect")
}

async fn send(conn: &Connection, c: Cmd) -> Value {
    let what = format!("{c:?}");
    within(STEP, &what, conn.send_cmd(c))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(
        v.as_bytes()
            .unwrap_or_else(|| panic!("not a string: {v:?}")),
    )
    .into_owned()
}

use support::rng::Rng;

impl Rng {
    /// Up to `max` bytes, braces and binary included.
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len)
            .map(|_| match self.below(8) {
                0 => b'{',
                1 => b'}',
                2 => self.below(256) as u8,
                _ => b"abcxyz019:."[self.below(11) as usize],
            })
            .collect()
    }
}

/// Keys of every shape that matters for hash tags.
fn test_keys(n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut keys: Vec<Vec<u8>> = [
        &b""[..],
        b"{",
        b"}",
        b"{}",
        b"}{",
        b"{}foo",
        b"foo{}",
        b"foo{}{bar}",
        b"foo{{bar}}zap",
        b"foo{bar}{zap}",
        b"{user1000}.following",
        b"{user1000}.followers",
        b"\x00{\xff}\x00",
        b"123456789",
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect();
    while keys.len() < n {
        let key = match rng.below(4) {
            // Random bytes, braces included.
            0 | 1 => rng.bytes(24),
            // A hash tag somewhere in the key.
            2 => {
                let mut k = rng.bytes(4);
                k.push(b'{');
                k.extend(rng.bytes(5));
                k.push(b'}');
                k.extend(rng.bytes(5));
                k
            }
            // An empty tag, then maybe a real one.
            _ => {
                let mut k = rng.bytes(3);
                k.extend_from_slice(b"{}");
                k.extend(rng.bytes(24));
                k
            }
        };
        keys.push(key);
    }
    keys
}

/// A slot map in a comparable form: per primary, its ranges and sorted
/// replicas.
type Layout = BTreeMap<String, (Vec<RangeInclusive<u16>>, BTreeSet<String>)>;

fn layout(map: &SlotMap) -> Layout {
    let mut out = Layout::new();
    for (range, shard) in map.ranges() {
        let entry = out.entry(shard.primary.to_string()).or_default();
        entry.0.push(range);
        entry.1 = shard.replicas.iter().map(Endpoint::to_string).collect();
    }
    out
}

/// `CLUSTER NODES` as a [`Layout`], plus every primary's node id.
fn layout_of_cluster_nodes(text: &str) -> (Layout, BTreeMap<String, String>) {
    struct Node {
        addr: String,
        primary: bool,
        master_id: String,
        ranges: Vec<RangeInclusive<u16>>,
    }
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong>
        // <epoch> <link> <slot>...
        let f: Vec<&str> = line.split(' ').collect();
        assert!(f.len() >= 8, "CLUSTER NODES line {line:?}");
        let addr = f[1].split(['@', ',']).next().unwrap().to_string();
        let ranges = f[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .map(|s| match s.split_once('-') {
                Some((a, b)) => a.parse().unwrap()..=b.parse().unwrap(),
                None => {
                    let a: u16 = s.parse().unwrap();
                    a..=a
                }
            })
            .collect();
        nodes.insert(
            f[0].to_string(),
            Node {
                addr,
                primary: f[2].contains("master"),
                master_id: f[3].to_string(),
                ranges,
            },
        );
    }
    let mut out = Layout::new();
    let mut ids = BTreeMap::new();
    for (id, n) in &nodes {
        if n.primary && !n.ranges.is_empty() {
            let mut ranges = n.ranges.clone();
            ranges.sort_by_key(|r| *r.start());
            // Merge adjacent ranges, as the slot map does.
            let mut merged: Vec<RangeInclusive<u16>> = Vec::new();
            for r in ranges {
                match merged.last_mut() {
                    Some(last) if *last.end() + 1 == *r.start() => {
                        *last = *last.start()..=*r.end();
                    }
                    _ => merged.push(r),
                }
            }
            let replicas = nodes
                .values()
                .filter(|r| !r.primary && r.master_id == *id)
                .map(|r| r.addr.clone())
                .collect();
            out.insert(n.addr.clone(), (merged, replicas));
            ids.insert(n.addr.clone(), id.clone());
        }
    }
    (out, ids)
}

async fn maps_of(ep: Endpoint, protocol: Protocol) -> (SlotMap, SlotMap) {
    let conn = connect(ep, protocol).await;
    let shards = send(&conn, cmd("CLUSTER").arg("SHARDS")).await;
    let slots = send(&conn, cmd("CLUSTER").arg("SLOTS")).await;
    (
        SlotMap::from_cluster_shards(&shards)
            .unwrap_or_else(|e| panic!("CLUSTER SHARDS {shards:?}: {e}")),
        SlotMap::from_cluster_slots(&slots)
            .unwrap_or_else(|e| panic!("CLUSTER SLOTS {slots:?}: {e}")),
    )
}

// ===== key slots =====

/// `key_slot` against `CLUSTER KEYSLOT` for 6,000 keys: random bytes with
/// braces, hash tags, empty tags and binary, pipelined 1,000 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_slot_agrees_with_cluster_keyslot() {
    bounded(120, async {
        let cluster = start_cluster(0).await;
        let conn = connect(cluster.endpoint(0), Protocol::Resp3).await;
        let keys = test_keys(6000);
        let mut checked = 0;
        let mut tagged = 0;
        for batch in keys.chunks(1000) {
            let p: Pipeline = batch
                .iter()
                .map(|k| cmd("CLUSTER").arg("KEYSLOT").arg(k.as_slice()))
                .collect();
            let replies = within(STEP, "KEYSLOT pipeline", conn.send(p))
                .await
                .expect("KEYSLOT pipeline")
                .into_pipeline()
                .unwrap();
            assert_eq!(replies.len(), batch.len());
            for (key, reply) in batch.iter().zip(replies) {
                let server = reply
                    .unwrap_or_else(|e| panic!("KEYSLOT {key:?}: {e}"))
                    .as_int()
                    .expect("integer");
                assert_eq!(
                    i64::from(key_slot(key)),
                    server,
                    "slot of {:?}",
                    String::from_utf8_lossy(key)
                );
                checked += 1;
                if redis_layers::cluster::slot::hash_tag(key).len() != key.len() {
                    tagged += 1;
                }
            }
        }
        assert_eq!(checked, 6000);
        assert!(tagged > 1000, "only {tagged} keys had a hash tag");
    })
    .await;
}

// ===== topology =====

/// `CLUSTER SHARDS` and `CLUSTER SLOTS`, in RESP3 and RESP2, from every
/// node, give the same slot map, and it is what `CLUSTER NODES` says:
/// primaries, their ranges, their replicas, their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_maps_agree_with_each_other_and_cluster_nodes() {
    bounded(120, async {
        let cluster = start_cluster(1).await;
        let conn = connect(cluster.endpoint(0), Protocol::Resp3).await;
        let nodes = text(&send(&conn, cmd("CLUSTER").arg("NODES")).await);
        let (expected, ids) = layout_of_cluster_nodes(&nodes);
        assert_eq!(expected.len(), 3, "{nodes}");
        assert!(
            expected.values().all(|(_, replicas)| replicas.len() == 1),
            "{expected:?}"
        );
        for i in 0..cluster.nodes().len() {
            for protocol in [Protocol::Resp3, Protocol::Resp2] {
                let (shards, slots) = maps_of(cluster.endpoint(i), protocol).await;
                let what = format!("node {i}, {protocol:?}");
                assert!(shards.is_complete() && slots.is_complete(), "{what}");
                assert_eq!(layout(&shards), expected, "CLUSTER SHARDS, {what}");
                assert_eq!(layout(&slots), expected, "CLUSTER SLOTS, {what}");
                assert_eq!(shards.primaries().len(), 3);
                assert_eq!(shards.nodes().len(), 6);
                assert_eq!(slots.nodes().len(), 6);
                for shard in shards.shards() {
                    let id = &ids[&shard.primary.to_string()];
                    assert_eq!(shard.id.as_ref(), Some(id), "{what}");
                }
                for slot in [0u16, 5460, 5461, 10922, 10923, 16383] {
                    assert_eq!(shards.shard_for(slot), slots.shard_for(slot), "{what}");
                }
            }
        }
    })
    .await;
}

/// After a real slot migration (with keys in the slot), the old map updated
/// with `set_primary` (from the migration, from the `MOVED` the old owner
/// now answers, and from an `SMIGRATED` triplet) equals the map parsed from
/// the new `CLUSTER SHARDS` and `CLUSTER SLOTS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_primary_after_a_real_migration_matches_cluster_shards() {
    bounded(120, async {
        // No replicas: the support's `finish_migration` sends `CLUSTER
        // SETSLOT ... NODE` to every node, which replicas refuse.
        let cluster = start_cluster(0).await;
        let (before, _) = maps_of(cluster.endpoint(0), Protocol::Resp3).await;
        let tag = "migrating";
        let slot = key_slot(tag.as_bytes());
        let from = cluster.node_for_slot(slot);
        let to = (from + 1) % 3;
        let owner = connect(cluster.endpoint(from), Protocol::Resp3).await;
        for i in 0..20 {
            send(&owner, cmd("SET").arg(format!("{{{tag}}}:{i}")).arg(i)).await;
        }
        let c = cluster.clone();
        let moved = blocking(move || {
            let moved = c.migrate_slot(slot, from, to);
            c.wait_consistent();
            moved
        })
        .await;
        assert_eq!(moved, 20);

        let (after_shards, after_slots) = maps_of(cluster.endpoint(2), Protocol::Resp3).await;
        assert_eq!(layout(&after_shards), layout(&after_slots));
        assert_eq!(after_shards.primary_for(slot), Some(&cluster.endpoint(to)));

        // From what we know of the migration.
        let mut updated = before.clone();
        assert_ne!(layout(&updated), layout(&after_shards));
        updated.set_primary([slot..=slot], cluster.endpoint(to));
        assert_eq!(layout(&updated), layout(&after_shards));

        // From the MOVED the old owner answers.
        let err = within(
            STEP,
            "GET on the old owner",
            owner.send_cmd(cmd("GET").arg(format!("{{{tag}}}:1"))),
        )
        .await
        .unwrap_err();
        let redirect = match &err {
            Error::Server(e) => e.redirect().unwrap_or_else(|| panic!("{e}")),
            other => panic!("expected MOVED, got {other:?}"),
        };
        assert_eq!(redirect.slot, slot);
        let mut from_moved = before.clone();
        let target: Endpoint = redirect.addr.parse().unwrap();
        from_moved.set_primary([redirect.slot..=redirect.slot], target);
        assert_eq!(layout(&from_moved), layout(&after_shards));

        // From an SMIGRATED triplet.
        let mut from_smigrated = before.clone();
        from_smigrated.apply_slot_move(&SlotMove {
            src: Some(MovingEndpoint::new("127.0.0.1", cluster.ports()[from])),
            dst: MovingEndpoint::new("127.0.0.1", cluster.ports()[to]),
            slots: slot.to_string().parse().unwrap(),
        });
        assert_eq!(layout(&from_smigrated), layout(&after_shards));

        // The keys are where the map says.
        let new_owner = connect(cluster.endpoint(to), Protocol::Resp3).await;
        let v = send(&new_owner, cmd("GET").arg(format!("{{{tag}}}:7"))).await;
        assert_eq!(text(&v), "7");
    })
    .await;
}

// ===== the command table =====

/// `COMMAND GETKEYS` for one command: `None` when the server refuses to say
/// (key-less command, or a shard channel: `not_key` key specs are not
/// reported).
async fn server_keys(conn: &Connection, c: &Cmd) -> Option<Vec<Vec<u8>>> {
    let getkeys = cmd("COMMAND").arg("GETKEYS").args(c.argv());
    match within(STEP, "COMMAND GETKEYS", conn.send_cmd(getkeys)).await {
        Ok(Value::Array(keys)) => Some(
            keys.iter()
                .map(|k| k.as_bytes().expect("key").to_vec())
                .collect(),
        ),
        Ok(other) => panic!("COMMAND GETKEYS {c:?}: {other:?}"),
        Err(Error::Server(e)) if e.detail().contains("no key arguments") => Some(vec![]),
        Err(e) => panic!("COMMAND GETKEYS {c:?}: {e}"),
    }
}

fn sorted_keys(t: &CommandTable, c: &Cmd) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = t
        .keys(c)
        .unwrap_or_else(|e| panic!("{c:?}: {e}"))
        .iter()
        .map(|k| k.to_vec())
        .collect();
    keys.sort();
    keys
}

/// One sample command per key form of the built-in table: every command
/// whose keys move, and the range forms.
fn samples() -> Vec<Cmd> {
    let c = |words: &[&str]| {
        let mut c = cmd(words[0]);
        for w in &words[1..] {
            c = c.arg(*w);
        }
        c
    };
    vec![
        c(&["GET", "k"]),
        c(&["SET", "k", "v", "EX", "10"]),
        c(&["MGET", "a", "b", "c"]),
        c(&["MSET", "a", "1", "b", "2"]),
        c(&["MSETNX", "a", "1", "b", "2"]),
        c(&["LCS", "a", "b", "LEN"]),
        c(&["HSET", "h", "f", "v"]),
        c(&["HMGET", "h", "f", "g"]),
        c(&["LPUSH", "l", "a", "b"]),
        c(&["RPOPLPUSH", "a", "b"]),
        c(&["LMOVE", "a", "b", "LEFT", "RIGHT"]),
        c(&["BLMOVE", "a", "b", "LEFT", "RIGHT", "0"]),
        c(&["BRPOPLPUSH", "a", "b", "0"]),
        c(&["BLPOP", "a", "b", "0"]),
        c(&["BRPOP", "a", "0"]),
        c(&["LMPOP", "2", "a", "b", "LEFT", "COUNT", "2"]),
        c(&["BLMPOP", "0", "2", "a", "b", "RIGHT"]),
        c(&["SMOVE", "a", "b", "m"]),
        c(&["SINTER", "a", "b"]),
        c(&["SUNIONSTORE", "d", "a", "b"]),
        c(&["SINTERCARD", "2", "a", "b", "LIMIT", "5"]),
        c(&["ZADD", "z", "1", "m"]),
        c(&["ZRANGESTORE", "d", "z", "0", "-1"]),
        c(&["BZPOPMIN", "a", "b", "0"]),
        c(&["BZPOPMAX", "a", "0.5"]),
        c(&["ZUNION", "2", "a", "b", "WITHSCORES"]),
        c(&["ZINTER", "3", "a", "b", "c"]),
        c(&["ZDIFF", "2", "a", "b"]),
        c(&["ZINTERCARD", "2", "a", "b"]),
        c(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]),
        c(&["ZINTERSTORE", "d", "2", "a", "b"]),
        c(&["ZDIFFSTORE", "d", "2", "a", "b"]),
        c(&["ZMPOP", "2", "a", "b", "MIN"]),
        c(&["BZMPOP", "0", "2", "a", "b", "MAX", "COUNT", "3"]),
        c(&["DEL", "a", "b", "c"]),
        c(&["UNLINK", "a"]),
        c(&["EXISTS", "a", "b"]),
        c(&["TOUCH", "a", "b"]),
        c(&["RENAME", "a", "b"]),
        c(&["RENAMENX", "a", "b"]),
        c(&["COPY", "a", "b", "REPLACE"]),
        c(&["RESTORE", "k", "0", "payload"]),
        c(&["EXPIRE", "k", "10"]),
        c(&["SORT", "k"]),
        c(&[
            "SORT", "k", "BY", "w_*", "LIMIT", "0", "10", "GET", "#", "ALPHA", "STORE", "d",
        ]),
        c(&["SORT", "k", "GET", "store", "STORE", "d1", "STORE", "d2"]),
        c(&["SORT_RO", "k", "ALPHA"]),
        c(&["MIGRATE", "h", "1", "k", "0", "100"]),
        c(&[
            "MIGRATE", "h", "1", "", "0", "100", "COPY", "REPLACE", "KEYS", "a", "b",
        ]),
        c(&[
            "MIGRATE", "h", "1", "", "0", "100", "AUTH", "keys", "KEYS", "a",
        ]),
        c(&[
            "MIGRATE", "h", "1", "", "0", "100", "AUTH2", "u", "keys", "KEYS", "a", "b",
        ]),
        c(&["EVAL", "return 1", "2", "a", "b", "x"]),
        c(&["EVALSHA", "sha", "1", "a", "x"]),
        c(&["EVAL_RO", "return 1", "1", "a"]),
        c(&["EVALSHA_RO", "sha", "2", "a", "b"]),
        c(&["FCALL", "f", "2", "a", "b", "x"]),
        c(&["FCALL_RO", "f", "1", "a"]),
        c(&["XADD", "s", "*", "f", "v"]),
        c(&[
            "XREAD", "COUNT", "1", "BLOCK", "0", "STREAMS", "a", "b", "0", "0",
        ]),
        c(&["XREAD", "STREAMS", "streams", "0"]),
        c(&[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "COUNT",
            "1",
            "STREAMS",
            "a",
            ">",
        ]),
        c(&[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "NOACK",
            "STREAMS",
            "a",
            "b",
            ">",
            ">",
        ]),
        c(&["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"]),
        c(&["XGROUP", "SETID", "s", "g", "0"]),
        c(&["XGROUP", "DESTROY", "s", "g"]),
        c(&["XGROUP", "CREATECONSUMER", "s", "g", "c"]),
        c(&["XGROUP", "DELCONSUMER", "s", "g", "c"]),
        c(&["XINFO", "STREAM", "s", "FULL"]),
        c(&["XINFO", "GROUPS", "s"]),
        c(&["XINFO", "CONSUMERS", "s", "g"]),
        c(&["XAUTOCLAIM", "s", "g", "c", "10", "0"]),
        c(&["OBJECT", "ENCODING", "k"]),
        c(&["OBJECT", "FREQ", "k"]),
        c(&["OBJECT", "IDLETIME", "k"]),
        c(&["OBJECT", "REFCOUNT", "k"]),
        c(&["MEMORY", "USAGE", "k", "SAMPLES", "5"]),
        c(&["BITOP", "AND", "d", "a", "b"]),
        c(&["BITFIELD_RO", "k", "GET", "u8", "0"]),
        c(&["PFCOUNT", "a", "b"]),
        c(&["PFMERGE", "d", "a", "b"]),
        c(&["GEORADIUS", "g", "0", "0", "10", "km"]),
        c(&[
            "GEORADIUS",
            "g",
            "0",
            "0",
            "10",
            "km",
            "WITHDIST",
            "STORE",
            "d",
        ]),
        c(&["GEORADIUS", "g", "0", "0", "10", "km", "STOREDIST", "d"]),
        c(&["GEORADIUSBYMEMBER", "g", "m", "10", "km", "STORE", "d"]),
        c(&["GEORADIUS_RO", "g", "0", "0", "10", "km"]),
        c(&[
            "GEOSEARCHSTORE",
            "d",
            "s",
            "FROMMEMBER",
            "m",
            "BYRADIUS",
            "1",
            "km",
        ]),
        c(&["WATCH", "a", "b"]),
        c(&["SPUBLISH", "ch", "msg"]),
        c(&["SSUBSCRIBE", "ch1", "ch2"]),
        c(&["SUNSUBSCRIBE", "ch1"]),
        c(&["PUBLISH", "ch", "msg"]),
        c(&["KEYS", "*"]),
        c(&["SCRIPT", "LOAD", "return 1"]),
        c(&["CONFIG", "SET", "maxmemory", "0"]),
        c(&["ECHO", "x"]),
    ]
}

/// The top-level `COMMAND INFO` entries (subcommands nested), by name:
/// (first, last, step, readonly).
fn server_info(reply: &Value, out: &mut BTreeMap<String, (i64, i64, i64, bool)>) {
    let Value::Array(entries) = reply else {
        panic!("COMMAND INFO: {reply:?}")
    };
    for e in entries {
        let Value::Array(f) = e else { continue };
        let name = text(&f[0]).to_ascii_lowercase();
        let flags: Vec<String> = match &f[2] {
            Value::Set(fl) | Value::Array(fl) => fl.iter().map(text).collect(),
            other => panic!("flags of {name}: {other:?}"),
        };
        let int = |v: &Value| v.as_int().unwrap();
        out.insert(
            name,
            (
                int(&f[3]),
                int(&f[4]),
                int(&f[5]),
                flags.iter().any(|f| f == "readonly"),
            ),
        );
        if let Some(subs @ Value::Array(_)) = f.get(9) {
            server_info(subs, out);
        }
    }
}

fn cmd_of_name(name: &str) -> Cmd {
    let mut parts = name.split('|');
    let mut c = cmd(parts.next().unwrap());
    for p in parts {
        c = c.arg(p);
    }
    c
}

/// Every command of the built-in table that the server knows has the
/// server's first/last/step (for plain ranges) and `readonly` flag; sample
/// commands of every key form give the keys `COMMAND GETKEYS` gives; and a
/// table learned from `COMMAND INFO` into an empty table agrees on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_table_agrees_with_command_info() {
    bounded(120, async {
        let server = blocking(RedisServer::start).await;
        let builtin = CommandTable::default();
        let names = builtin.names();
        let top: BTreeSet<&str> = names.iter().map(|n| n.split('|').next().unwrap()).collect();

        for protocol in [Protocol::Resp3, Protocol::Resp2] {
            let conn = connect(server.endpoint(), protocol).await;
            let reply = send(&conn, cmd("COMMAND").arg("INFO").args(top.iter())).await;
            let mut info = BTreeMap::new();
            server_info(&reply, &mut info);

            // First/last/step and read-only flags of everything known.
            let mut unknown = Vec::new();
            let mut checked = 0;
            for name in &names {
                let Some(&(first, last, step, readonly)) = info.get(name) else {
                    unknown.push(name.clone());
                    continue;
                };
                if let Some(range) = builtin.legacy_range(name) {
                    assert_eq!(
                        range,
                        (first, last, step),
                        "{name}: (first, last, step) differ from COMMAND INFO"
                    );
                    checked += 1;
                }
                assert_eq!(
                    builtin.is_read_only(&cmd_of_name(name)),
                    readonly,
                    "{name}: readonly flag differs from COMMAND INFO"
                );
            }
            eprintln!(
                "{protocol:?}: {} built-in entries, {checked} plain ranges checked; \
                 not known to this server: {unknown:?}",
                names.len()
            );
            assert!(checked > 150, "only {checked} ranges checked");
            assert!(unknown.len() < 20, "{unknown:?}");

            // Learned into an empty table.
            let mut learned = CommandTable::empty();
            let n = learned.learn(&reply);
            assert!(n >= names.len() - unknown.len(), "learned {n}");
            for name in &names {
                if info.contains_key(name) {
                    assert!(learned.contains(name), "{name} not learned");
                }
            }

            // Keys of the samples.
            let samples = samples();
            let sampled: BTreeSet<String> = samples
                .iter()
                .map(|c| String::from_utf8_lossy(c.name().unwrap()).to_ascii_lowercase())
                .collect();
            for name in &names {
                let top = name.split('|').next().unwrap();
                if builtin.legacy_range(name).is_none() && info.contains_key(name) {
                    assert!(
                        sampled.contains(top),
                        "{name} has moving keys but no sample command"
                    );
                }
            }
            for c in &samples {
                let name = String::from_utf8_lossy(c.name().unwrap()).to_ascii_lowercase();
                let ours = sorted_keys(&builtin, c);
                let shard_channel =
                    matches!(name.as_str(), "spublish" | "ssubscribe" | "sunsubscribe");
                if !shard_channel {
                    let mut getkeys = server_keys(&conn, c).await.unwrap();
                    getkeys.sort();
                    assert_eq!(ours, getkeys, "{c:?}: built-in keys vs COMMAND GETKEYS");
                }
                // What key specs cannot say (SORT's STORE, MIGRATE's KEYS,
                // GEORADIUS's last STORE) is the built-in table's job.
                let incomplete_specs = matches!(
                    name.as_str(),
                    "sort" | "migrate" | "georadius" | "georadiusbymember"
                );
                let theirs = sorted_keys(&learned, c);
                if !incomplete_specs {
                    assert_eq!(ours, theirs, "{c:?}: built-in vs learned keys");
                } else {
                    assert!(theirs.iter().all(|k| ours.contains(k) || k.is_empty()));
                }
                assert_eq!(
                    builtin.is_read_only(c),
                    learned.is_read_only(c),
                    "{c:?}: readonly"
                );
                // Routes agree except for fan-out policies, which are ours.
                let (a, b) = (builtin.route(c), learned.route(c));
                match (&a, &b) {
                    (Ok(Route::AllPrimaries(_) | Route::AllNodes(_)), Ok(Route::AnyPrimary)) => {}
                    _ if incomplete_specs => {}
                    _ => assert_eq!(a, b, "{c:?}: route"),
                }
            }
        }
    })
    .await;
}

//! The Client facade against real servers: one suite of helper tests, run
//! on a standalone redis-server (RESP3 and RESP2) and on a Redis Cluster
//! (3 primaries, 3 replicas; RESP3 and RESP2). Every helper's effect is
//! checked through a separate plain RESP2 connection (the test support's
//! blocking client), not through the client under test.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use redis_layers::client::{
    BitOp, BoxService, Client, ClientBuilder, Expiry, ListEnd, Script, ServerMode, SetOptions,
    StreamEntry,
};
use redis_layers::resp::Each;
use redis_layers::{cmd, Error, ServerErrorKind, Value};
use support::cluster::{blocked_clients, info_field, port_serving, query, RedisCluster, Reply};
use support::{bounded, RedisServer};

/// Reads the server's state apart from the client: a fresh RESP2
/// connection per command; in a cluster, to the primary that does not
/// answer `MOVED`.
struct Oracle {
    ports: Vec<u16>,
}

impl Oracle {
    fn q(&self, args: &[&str]) -> Reply {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        for &p in &self.ports {
            match query(p, &args) {
                Ok(Reply::Error(e)) if e.starts_with("MOVED") => continue,
                Ok(r) => return r,
                Err(e) => panic!("oracle {args:?} on port {p}: {e}"),
            }
        }
        panic!("no node would answer {args:?}")
    }

    fn int(&self, args: &[&str]) -> i64 {
        match self.q(args) {
            Reply::Int(n) => n,
            other => panic!("{args:?}: expected an integer, got {other:?}"),
        }
    }

    fn bulk(&self, args: &[&str]) -> Option<String> {
        match self.q(args) {
            Reply::Bulk(b) => b.map(|b| String::from_utf8(b).unwrap()),
            Reply::Status(s) => Some(s),
            other => panic!("{args:?}: expected a string, got {other:?}"),
        }
    }

    fn strings(&self, args: &[&str]) -> Vec<String> {
        match self.q(args) {
            Reply::Array(Some(items)) => items
                .into_iter()
                .map(|i| match i {
                    Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
                    other => panic!("{args:?}: item {other:?}"),
                })
                .collect(),
            Reply::Array(None) => vec![],
            other => panic!("{args:?}: expected an array, got {other:?}"),
        }
    }

    fn sorted(&self, args: &[&str]) -> Vec<String> {
        let mut v = self.strings(args);
        v.sort();
        v
    }
}

const SUITE_SECS: u64 = 120;

/// Every typed helper, its effect checked by the oracle. Multi-key
/// commands use keys of one hash tag, so the suite runs on a cluster too.
/// `p` prefixes every key (several clients share a server).
async fn suite(c: &Client, o: &Oracle, p: &str) {
    strings(c, o, p).await;
    keys(c, o, p).await;
    hashes(c, o, p).await;
    lists(c, o, p).await;
    sets(c, o, p).await;
    sorted_sets(c, o, p).await;
    scripts(c, o, p).await;
    streams(c, o, p).await;
    misc(c, o, p).await;
    pipelines(c, o, p).await;
    transactions(c, o, p).await;
    watch(c, o, p).await;
    blocking(c, o, p).await;
    conversions(c, o, p).await;
    scan(c, o, p).await;
    dedicated_reuse(c, o, p).await;
    one_or_many(c, o, p).await;
    ranges_and_bits(c, o, p).await;
    more_hashes(c, o, p).await;
    more_lists(c, o, p).await;
    more_sets(c, o, p).await;
    more_sorted_sets(c, o, p).await;
    hyperloglog(c, o, p).await;
    // Last: FLUSHDB empties the server.
    server_wide(c, o, p).await;
}

async fn strings(c: &Client, o: &Oracle, p: &str) {
    let k = format!("{p}:str");
    c.set(&k, "hello").await.unwrap();
    assert_eq!(o.bulk(&["GET", &k]).as_deref(), Some("hello"));
    assert_eq!(c.get::<String>(&k).await.unwrap(), "hello");
    assert_eq!(c.get::<Bytes>(&k).await.unwrap(), Bytes::from("hello"));
    assert_eq!(c.get::<Vec<u8>>(&k).await.unwrap(), b"hello".to_vec());
    assert_eq!(
        c.get::<Option<String>>(format!("{p}:nope")).await.unwrap(),
        None
    );

    assert_eq!(c.append(&k, " world").await.unwrap(), 11);
    assert_eq!(o.bulk(&["GET", &k]).as_deref(), Some("hello world"));
    assert_eq!(c.strlen(&k).await.unwrap(), 11);

    // SET options: NX refuses an existing key, XX + GET returns the old value.
    let set: bool = c
        .set_options(&k, "x", SetOptions::new().nx())
        .await
        .unwrap();
    assert!(!set);
    assert_eq!(o.bulk(&["GET", &k]).as_deref(), Some("hello world"));
    let old: Option<String> = c
        .set_options(
            &k,
            "v2",
            SetOptions::new().xx().get().expiry(Expiry::Ex(100)),
        )
        .await
        .unwrap();
    assert_eq!(old.as_deref(), Some("hello world"));
    assert_eq!(o.bulk(&["GET", &k]).as_deref(), Some("v2"));
    let ttl = o.int(&["TTL", &k]);
    assert!((1..=100).contains(&ttl), "{ttl}");
    let kept: bool = c
        .set_options(&k, "v3", SetOptions::new().expiry(Expiry::KeepTtl))
        .await
        .unwrap();
    assert!(kept);
    assert!(o.int(&["TTL", &k]) > 0);

    assert!(c.setnx(format!("{p}:nx"), 1).await.unwrap());
    assert!(!c.setnx(format!("{p}:nx"), 2).await.unwrap());
    assert_eq!(o.bulk(&["GET", &format!("{p}:nx")]).as_deref(), Some("1"));

    // GETEX sets, then removes, the expiry.
    let v: String = c.getex(&k, Expiry::Px(50_000)).await.unwrap();
    assert_eq!(v, "v3");
    let pttl = o.int(&["PTTL", &k]);
    assert!((1..=50_000).contains(&pttl), "{pttl}");
    let _: String = c.getex(&k, Expiry::Persist).await.unwrap();
    assert_eq!(o.int(&["TTL", &k]), -1);

    assert_eq!(
        c.getdel::<Option<String>>(&k).await.unwrap().as_deref(),
        Some("v3")
    );
    assert_eq!(o.int(&["EXISTS", &k]), 0);

    // Counters.
    let n = format!("{p}:n");
    assert_eq!(c.incr(&n).await.unwrap(), 1);
    assert_eq!(c.incr_by(&n, 41).await.unwrap(), 42);
    assert_eq!(c.decr(&n).await.unwrap(), 41);
    assert_eq!(c.decr_by(&n, 11).await.unwrap(), 30);
    assert_eq!(o.bulk(&["GET", &n]).as_deref(), Some("30"));
    assert_eq!(c.incr_by_float(&n, 0.5).await.unwrap(), 30.5);
    assert_eq!(o.bulk(&["GET", &n]).as_deref(), Some("30.5"));

    // MSET / MGET, one slot.
    let (a, b, missing) = (
        format!("{{{p}}}:a"),
        format!("{{{p}}}:b"),
        format!("{{{p}}}:missing"),
    );
    c.mset([(&a, "1"), (&b, "2")]).await.unwrap();
    assert_eq!(o.bulk(&["GET", &a]).as_deref(), Some("1"));
    assert_eq!(o.bulk(&["GET", &b]).as_deref(), Some("2"));
    let got: Vec<Option<i64>> = c.mget([&a, &missing, &b]).await.unwrap();
    assert_eq!(got, vec![Some(1), None, Some(2)]);
}

async fn keys(c: &Client, o: &Oracle, p: &str) {
    let (a, b, d) = (
        format!("{{{p}}}:ka"),
        format!("{{{p}}}:kb"),
        format!("{{{p}}}:kd"),
    );
    for k in [&a, &b, &d] {
        o.q(&["SET", k, "v"]);
    }
    assert_eq!(c.exists([&a, &b, &a]).await.unwrap(), 3);
    assert_eq!(c.key_type(&a).await.unwrap(), "string");
    assert_eq!(c.ttl(&a).await.unwrap(), -1);
    assert_eq!(c.pttl(format!("{p}:gone")).await.unwrap(), -2);

    assert!(c.expire(&a, 100).await.unwrap());
    assert!((1..=100).contains(&o.int(&["TTL", &a])));
    assert!((1..=100).contains(&c.ttl(&a).await.unwrap()));
    assert!(c.persist(&a).await.unwrap());
    assert_eq!(o.int(&["TTL", &a]), -1);
    assert!(!c.persist(&a).await.unwrap());
    assert!(c.pexpire(&a, 100_000).await.unwrap());
    let pttl = c.pttl(&a).await.unwrap();
    assert!((1..=100_000).contains(&pttl), "{pttl}");
    assert!((1..=100_000).contains(&o.int(&["PTTL", &a])));
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 1000;
    assert!(c.expire_at(&b, at).await.unwrap());
    assert_eq!(o.int(&["EXPIRETIME", &b]), at);
    assert!(!c.expire(format!("{p}:gone"), 10).await.unwrap());

    let renamed = format!("{{{p}}}:renamed");
    c.rename(&d, &renamed).await.unwrap();
    assert_eq!(o.int(&["EXISTS", &d]), 0);
    assert_eq!(o.bulk(&["GET", &renamed]).as_deref(), Some("v"));

    assert_eq!(c.del([&a, &format!("{{{p}}}:gone")]).await.unwrap(), 1);
    assert_eq!(o.int(&["EXISTS", &a]), 0);
    assert_eq!(c.unlink([&b, &renamed]).await.unwrap(), 2);
    assert_eq!(o.int(&["EXISTS", &b, &renamed]), 0);
}

async fn hashes(c: &Client, o: &Oracle, p: &str) {
    let h = format!("{p}:hash");
    assert_eq!(c.hset(&h, "name", "Ann").await.unwrap(), 1);
    assert_eq!(c.hset(&h, "name", "Anna").await.unwrap(), 0);
    assert_eq!(
        c.hset_multiple(&h, [("city", "Oslo"), ("age", "30")])
            .await
            .unwrap(),
        2
    );
    assert_eq!(o.bulk(&["HGET", &h, "name"]).as_deref(), Some("Anna"));
    assert_eq!(o.bulk(&["HGET", &h, "city"]).as_deref(), Some("Oslo"));
    assert_eq!(c.hget::<String>(&h, "name").await.unwrap(), "Anna");
    assert_eq!(c.hget::<Option<i64>>(&h, "nope").await.unwrap(), None);
    let got: Vec<Option<String>> = c.hmget(&h, ["city", "nope", "age"]).await.unwrap();
    assert_eq!(got, vec![Some("Oslo".into()), None, Some("30".into())]);

    // The map shape of RESP3 and the flat array of RESP2, into every map type.
    let all: HashMap<String, String> = c.hgetall(&h).await.unwrap();
    let want: HashMap<String, String> = [("name", "Anna"), ("city", "Oslo"), ("age", "30")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(all, want);
    let sorted: BTreeMap<String, String> = c.hgetall(&h).await.unwrap();
    assert_eq!(sorted.len(), 3);
    let mut pairs: Vec<(String, String)> = c.hgetall(&h).await.unwrap();
    pairs.sort();
    assert_eq!(pairs[0], ("age".to_string(), "30".to_string()));

    assert_eq!(c.hincr_by(&h, "age", 2).await.unwrap(), 32);
    assert_eq!(o.bulk(&["HGET", &h, "age"]).as_deref(), Some("32"));
    assert!(c.hexists(&h, "city").await.unwrap());
    assert!(!c.hexists(&h, "nope").await.unwrap());
    let mut keys: Vec<String> = c.hkeys(&h).await.unwrap();
    keys.sort();
    assert_eq!(keys, o.sorted(&["HKEYS", &h]));
    let mut vals: Vec<String> = c.hvals(&h).await.unwrap();
    vals.sort();
    assert_eq!(vals, o.sorted(&["HVALS", &h]));
    assert_eq!(c.hlen(&h).await.unwrap(), 3);
    assert_eq!(c.hdel(&h, ["city", "nope"]).await.unwrap(), 1);
    assert_eq!(o.int(&["HLEN", &h]), 2);
    assert_eq!(o.int(&["HEXISTS", &h, "city"]), 0);
}

async fn lists(c: &Client, o: &Oracle, p: &str) {
    let l = format!("{p}:list");
    assert_eq!(c.rpush(&l, ["b", "c"]).await.unwrap(), 2);
    assert_eq!(c.lpush(&l, ["a"]).await.unwrap(), 3);
    assert_eq!(c.rpush(&l, ["d", "e", "b"]).await.unwrap(), 6);
    assert_eq!(
        o.strings(&["LRANGE", &l, "0", "-1"]),
        ["a", "b", "c", "d", "e", "b"]
    );
    assert_eq!(c.llen(&l).await.unwrap(), 6);
    let all: Vec<String> = c.lrange(&l, 0, -1).await.unwrap();
    assert_eq!(all, ["a", "b", "c", "d", "e", "b"]);
    assert_eq!(
        c.lindex::<Option<String>>(&l, 2).await.unwrap().as_deref(),
        Some("c")
    );
    assert_eq!(c.lindex::<Option<String>>(&l, 99).await.unwrap(), None);
    assert_eq!(c.lrem(&l, 0, "b").await.unwrap(), 2);
    assert_eq!(o.strings(&["LRANGE", &l, "0", "-1"]), ["a", "c", "d", "e"]);
    assert_eq!(
        c.lpop::<Option<String>>(&l).await.unwrap().as_deref(),
        Some("a")
    );
    assert_eq!(
        c.rpop::<Option<String>>(&l).await.unwrap().as_deref(),
        Some("e")
    );
    assert_eq!(o.strings(&["LRANGE", &l, "0", "-1"]), ["c", "d"]);
    c.rpush(&l, ["f", "g", "h"]).await.unwrap();
    c.ltrim(&l, 0, 3).await.unwrap();
    assert_eq!(o.strings(&["LRANGE", &l, "0", "-1"]), ["c", "d", "f", "g"]);
    assert_eq!(c.lpop_count::<String>(&l, 2).await.unwrap(), ["c", "d"]);
    assert_eq!(c.rpop_count::<String>(&l, 5).await.unwrap(), ["g", "f"]);
    assert_eq!(o.int(&["EXISTS", &l]), 0);
    assert!(c.lpop_count::<String>(&l, 2).await.unwrap().is_empty());
    assert_eq!(c.lpop::<Option<String>>(&l).await.unwrap(), None);
}

async fn sets(c: &Client, o: &Oracle, p: &str) {
    let (s1, s2) = (format!("{{{p}}}:s1"), format!("{{{p}}}:s2"));
    assert_eq!(c.sadd(&s1, ["a", "b", "c", "a"]).await.unwrap(), 3);
    assert_eq!(c.sadd(&s2, ["b", "c", "d"]).await.unwrap(), 3);
    assert_eq!(o.sorted(&["SMEMBERS", &s1]), ["a", "b", "c"]);
    let m: HashSet<String> = c.smembers(&s1).await.unwrap();
    assert_eq!(m, ["a", "b", "c"].iter().map(|s| s.to_string()).collect());
    let m: BTreeSet<String> = c.smembers(&s1).await.unwrap();
    assert_eq!(m.len(), 3);
    assert!(c.sismember(&s1, "a").await.unwrap());
    assert!(!c.sismember(&s1, "d").await.unwrap());
    assert_eq!(c.scard(&s1).await.unwrap(), 3);
    let inter: BTreeSet<String> = c.sinter([&s1, &s2]).await.unwrap();
    assert_eq!(
        inter.into_iter().collect::<Vec<_>>(),
        o.sorted(&["SINTER", &s1, &s2])
    );
    let union: BTreeSet<String> = c.sunion([&s1, &s2]).await.unwrap();
    assert_eq!(union.into_iter().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
    assert_eq!(c.srem(&s1, ["a", "z"]).await.unwrap(), 1);
    assert_eq!(o.sorted(&["SMEMBERS", &s1]), ["b", "c"]);
}

async fn sorted_sets(c: &Client, o: &Oracle, p: &str) {
    let z = format!("{p}:zset");
    assert_eq!(c.zadd(&z, 1.0, "a").await.unwrap(), 1);
    assert_eq!(
        c.zadd_multiple(&z, [(2.0, "b"), (3.5, "c"), (1.0, "a")])
            .await
            .unwrap(),
        2
    );
    assert_eq!(o.strings(&["ZRANGE", &z, "0", "-1"]), ["a", "b", "c"]);
    assert_eq!(o.bulk(&["ZSCORE", &z, "c"]).as_deref(), Some("3.5"));
    assert_eq!(c.zincr_by(&z, 2.5, "a").await.unwrap(), 3.5);
    assert_eq!(o.bulk(&["ZSCORE", &z, "a"]).as_deref(), Some("3.5"));
    // A double in RESP3, a bulk string in RESP2.
    assert_eq!(c.zscore(&z, "b").await.unwrap(), Some(2.0));
    assert_eq!(c.zscore(&z, "nope").await.unwrap(), None);
    assert_eq!(c.zrank(&z, "b").await.unwrap(), Some(0));
    assert_eq!(c.zrank(&z, "nope").await.unwrap(), None);
    assert_eq!(c.zcard(&z).await.unwrap(), 3);
    let members: Vec<String> = c.zrange(&z, 0, -1).await.unwrap();
    assert_eq!(members, o.strings(&["ZRANGE", &z, "0", "-1"]));
    // Pairs in RESP3, a flat array in RESP2.
    let with: Vec<(String, f64)> = c.zrange_withscores(&z, 0, -1).await.unwrap();
    assert_eq!(
        with,
        vec![("b".into(), 2.0), ("a".into(), 3.5), ("c".into(), 3.5)]
    );
    let by: Vec<String> = c.zrangebyscore(&z, "(2", "+inf").await.unwrap();
    assert_eq!(by, ["a", "c"]);
    assert_eq!(c.zcount(&z, "-inf", 3).await.unwrap(), 1);
    assert_eq!(c.zrem(&z, ["a", "nope"]).await.unwrap(), 1);
    assert_eq!(o.strings(&["ZRANGE", &z, "0", "-1"]), ["b", "c"]);
}

async fn scripts(c: &Client, o: &Oracle, p: &str) {
    let k = format!("{p}:script");
    let v: i64 = c
        .eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", [&k], [5])
        .await
        .unwrap();
    assert_eq!(v, 5);
    assert_eq!(o.bulk(&["GET", &k]).as_deref(), Some("5"));
    let src = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}";
    let sha = c.script_load(src).await.unwrap();
    assert_eq!(sha.len(), 40);
    let (key, arg, n): (String, String, i64) = c.evalsha(&sha, [&k], ["x", "21"]).await.unwrap();
    assert_eq!((key.as_str(), arg.as_str(), n), (k.as_str(), "x", 42));

    // Script: loaded on first use; after SCRIPT FLUSH, EVALSHA's NOSCRIPT
    // falls back to EVAL.
    let script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1]) + 0");
    assert_eq!(script.invoke::<i64>(c, [&k], [10]).await.unwrap(), 15);
    let sha = script.sha1().expect("loaded");
    query_node_of(o, &k, &["SCRIPT", "FLUSH"]);
    match query_node_of(o, &k, &["SCRIPT", "EXISTS", &sha]) {
        Reply::Array(Some(v)) => assert_eq!(v, vec![Reply::Int(0)]),
        other => panic!("{other:?}"),
    }
    assert_eq!(script.invoke::<i64>(c, [&k], [1]).await.unwrap(), 16);
    assert_eq!(o.bulk(&["GET", &k]).as_deref(), Some("16"));
    match query_node_of(o, &k, &["SCRIPT", "EXISTS", &sha]) {
        Reply::Array(Some(v)) => assert_eq!(v, vec![Reply::Int(1)], "EVAL loaded it"),
        other => panic!("{other:?}"),
    }
}

/// A command without keys, sent to the node that serves `key`.
fn query_node_of(o: &Oracle, key: &str, args: &[&str]) -> Reply {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    query(port_serving(&o.ports, key.as_bytes()), &args).unwrap()
}

async fn streams(c: &Client, o: &Oracle, p: &str) {
    let s = format!("{{{p}}}:stream");
    let id1 = c.xadd(&s, "*", [("t", "20"), ("h", "50")]).await.unwrap();
    let id2 = c.xadd(&s, "*", [("t", "21")]).await.unwrap();
    let id3 = c.xadd(&s, "*", [("t", "22")]).await.unwrap();
    assert_eq!(o.int(&["XLEN", &s]), 3);
    assert_eq!(c.xlen(&s).await.unwrap(), 3);
    let all = c.xrange(&s, "-", "+").await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [&id1, &id2, &id3]
    );
    assert_eq!(
        all[0],
        StreamEntry {
            id: id1.clone(),
            fields: vec![("t".into(), "20".into()), ("h".into(), "50".into())]
        }
    );
    assert_eq!(all[1].get("t").map(|b| &b[..]), Some(&b"21"[..]));

    // XREAD: a map of streams in RESP3, an array of pairs in RESP2.
    let read = c.xread([&s], [&id1]).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].0, s);
    assert_eq!(
        read[0].1.iter().map(|e| &e.id).collect::<Vec<_>>(),
        [&id2, &id3]
    );
    assert!(c.xread([&s], [&id3]).await.unwrap().is_empty());

    // Consumer groups.
    c.xgroup_create(&s, "g", "0").await.unwrap();
    let got = c.xreadgroup("g", "alice", [&s], [">"]).await.unwrap();
    assert_eq!(got[0].1.len(), 3);
    match o.q(&["XPENDING", &s, "g"]) {
        Reply::Array(Some(v)) => assert_eq!(v[0], Reply::Int(3)),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.xack(&s, "g", [&id1, &id2]).await.unwrap(), 2);
    match o.q(&["XPENDING", &s, "g"]) {
        Reply::Array(Some(v)) => assert_eq!(v[0], Reply::Int(1)),
        other => panic!("{other:?}"),
    }
    // A new stream made by MKSTREAM.
    let fresh = format!("{p}:fresh-stream");
    c.xgroup_create(&fresh, "g", "$").await.unwrap();
    assert_eq!(o.bulk(&["TYPE", &fresh]).as_deref(), Some("stream"));

    assert_eq!(c.xdel(&s, [id1.as_str(), "0-1"]).await.unwrap(), 1);
    assert_eq!(o.int(&["XLEN", &s]), 2);
    assert_eq!(c.xtrim_maxlen(&s, 1).await.unwrap(), 1);
    assert_eq!(o.int(&["XLEN", &s]), 1);
}

async fn misc(c: &Client, o: &Oracle, p: &str) {
    assert_eq!(c.ping().await.unwrap(), "PONG");
    // No subscribers here: 0 receivers.
    assert_eq!(c.publish(format!("{p}:chan"), "hi").await.unwrap(), 0);
    // The escape hatch.
    let k = format!("{p}:raw");
    let r: String = c.cmd(cmd("SET").arg(&k).arg(7)).await.unwrap();
    assert_eq!(r, "OK");
    assert_eq!(o.bulk(&["GET", &k]).as_deref(), Some("7"));
    let v: Value = c.cmd(cmd("GET").arg(&k)).await.unwrap();
    assert_eq!(v, Value::BulkString("7".into()));
}

async fn pipelines(c: &Client, o: &Oracle, p: &str) {
    // Keys over several slots: the cluster splits the pipeline per node.
    let keys: Vec<String> = (0..6).map(|i| format!("{p}:pipe{i}")).collect();
    let mut pipe = c.pipeline();
    for (i, k) in keys.iter().enumerate() {
        pipe.set(k, i).ignore();
    }
    pipe.incr(&keys[0]).get(&keys[5]).exists([&keys[1]]);
    assert_eq!(pipe.len(), 9);
    let (n, five, exists): (i64, String, usize) = pipe.query().await.unwrap();
    assert_eq!((n, five.as_str(), exists), (1, "5", 1));
    for (i, k) in keys.iter().enumerate().skip(1) {
        assert_eq!(o.bulk(&["GET", k]), Some(i.to_string()));
    }
    // Per-command error replies stay values in a Vec<Value>, and fail a typed query.
    let h = format!("{p}:pipe-hash");
    o.q(&["HSET", &h, "f", "v"]);
    let mut pipe = c.pipeline();
    pipe.incr(&h).get(&keys[1]);
    let raw: Vec<Value> = pipe.clone().query().await.unwrap();
    assert!(matches!(raw[0], Value::Error(_)), "{raw:?}");
    assert_eq!(raw[1], Value::BulkString("1".into()));
    match pipe.query::<(i64, String)>().await {
        Err(Error::Server(e)) => assert_eq!(e.kind(), &ServerErrorKind::WrongType),
        other => panic!("{other:?}"),
    }
    // The commands moved into the request: the batch is empty, with no
    // ignored flag left behind, and takes new commands.
    assert!(pipe.is_empty());
    let empty: Vec<Value> = pipe.query().await.unwrap();
    assert!(empty.is_empty());
    pipe.set(&keys[0], "again").ignore().ignore().get(&keys[0]);
    let (again,): (String,) = pipe.query().await.unwrap();
    assert_eq!(again, "again");
    let empty: Vec<Value> = c.pipeline().query().await.unwrap();
    assert!(empty.is_empty());
}

async fn transactions(c: &Client, o: &Oracle, p: &str) {
    let (a, b) = (format!("{{{p}}}:acct-a"), format!("{{{p}}}:acct-b"));
    o.q(&["SET", &a, "100"]);
    o.q(&["SET", &b, "0"]);
    let mut tx = c.transaction();
    tx.decr_by(&a, 30).incr_by(&b, 30).get(&a).ignore();
    assert!(tx.is_atomic());
    let (na, nb): (i64, i64) = tx.query().await.unwrap();
    assert_eq!((na, nb), (70, 30));
    assert_eq!(o.bulk(&["GET", &a]).as_deref(), Some("70"));
    assert_eq!(o.bulk(&["GET", &b]).as_deref(), Some("30"));

    // A command the server refuses to queue: EXECABORT, nothing applied,
    // the refused command's error reported.
    let mut tx = c.transaction();
    tx.incr(&a).cmd(cmd("INCR"));
    match tx.query::<Vec<Value>>().await {
        Err(Error::Server(e)) => assert!(e.to_string().contains("wrong number"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(o.bulk(&["GET", &a]).as_deref(), Some("70"));

    // A runtime error inside EXEC: the others are applied.
    let h = format!("{{{p}}}:acct-h");
    o.q(&["HSET", &h, "f", "v"]);
    let mut tx = c.transaction();
    tx.incr(&h).incr(&a);
    let raw: Vec<Value> = tx.query().await.unwrap();
    assert!(matches!(raw[0], Value::Error(_)), "{raw:?}");
    assert_eq!(raw[1], Value::Integer(71));
    assert_eq!(o.bulk(&["GET", &a]).as_deref(), Some("71"));

    if c.is_cluster() {
        let mut tx = c.transaction();
        tx.incr(format!("{p}:x1")).incr(format!("{p}:x2-other"));
        if support::cluster::slot_of(format!("{p}:x1"))
            != support::cluster::slot_of(format!("{p}:x2-other"))
        {
            match tx.query::<Vec<i64>>().await {
                Err(Error::Config(m)) => assert!(m.contains("slot"), "{m}"),
                other => panic!("cross-slot transaction: {other:?}"),
            }
            assert_eq!(o.int(&["EXISTS", &format!("{p}:x1")]), 0);
        }
    }
}

async fn watch(c: &Client, o: &Oracle, p: &str) {
    let k = format!("{{{p}}}:watched");
    let other = format!("{{{p}}}:other");
    o.q(&["SET", &k, "10"]);

    // Nothing changes meanwhile: applied.
    let mut w = c.watch([&k]).await.unwrap();
    let v: i64 = w.cmd(cmd("GET").arg(&k)).await.unwrap();
    let mut tx = c.transaction();
    tx.set(&k, v * 2).ignore().incr(&other);
    let r: Option<(i64,)> = w.exec(&tx).await.unwrap();
    assert_eq!(r, Some((1,)));
    assert_eq!(o.bulk(&["GET", &k]).as_deref(), Some("20"));

    // Someone else writes the key between WATCH and EXEC: aborted, nothing applied.
    let mut w = c.watch([&k]).await.unwrap();
    let v: i64 = w.cmd(cmd("GET").arg(&k)).await.unwrap();
    o.q(&["SET", &k, "99"]);
    let mut tx = c.transaction();
    tx.set(&k, v * 2).incr(&other);
    let r: Option<Vec<Value>> = w.exec(&tx).await.unwrap();
    assert_eq!(r, None);
    assert_eq!(o.bulk(&["GET", &k]).as_deref(), Some("99"));
    assert_eq!(o.bulk(&["GET", &other]).as_deref(), Some("1"));

    if c.is_cluster() {
        let far = format!("{p}:elsewhere");
        if support::cluster::slot_of(&far) != support::cluster::slot_of(&k) {
            let w = c.watch([&k]).await.unwrap();
            let mut tx = c.transaction();
            tx.incr(&far);
            assert!(matches!(
                w.exec::<Vec<Value>>(&tx).await,
                Err(Error::Config(_))
            ));
            let err = c.watch([&k, &far]).await.unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err:?}");
        }
    }
}

async fn blocking(c: &Client, o: &Oracle, p: &str) {
    let (l1, l2) = (format!("{{{p}}}:q1"), format!("{{{p}}}:q2"));
    // Nothing there: nil after the timeout.
    let none: Option<(String, String)> = c.blpop([&l1], 0.1).await.unwrap();
    assert_eq!(none, None);
    // A BLPOP that waits holds up nothing else on the client.
    let waiter = {
        let c = c.clone();
        let keys = [l1.clone(), l2.clone()];
        tokio::spawn(async move { c.blpop::<String>(keys, 10.0).await })
    };
    // Wait until the server sees it blocked, then check the shared path works.
    let node = if c.is_cluster() { Some(&l1) } else { None };
    let mut blocked_seen = false;
    for _ in 0..500 {
        let blocked = match node {
            Some(k) => query_node_of(o, k, &["INFO", "clients"]),
            None => o.q(&["INFO", "clients"]),
        };
        let Reply::Bulk(Some(info)) = blocked else {
            panic!()
        };
        if String::from_utf8_lossy(&info).contains("blocked_clients:1") {
            blocked_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(blocked_seen, "the server never saw the BLPOP block");
    assert_eq!(c.ping().await.unwrap(), "PONG");
    c.rpush(&l2, ["job"]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("BLPOP answered")
        .unwrap()
        .unwrap();
    assert_eq!(got, Some((l2.clone(), "job".to_string())));
    assert_eq!(o.int(&["EXISTS", &l2]), 0);

    o.q(&["RPUSH", &l1, "a", "b"]);
    let got: Option<(String, String)> = c.brpop([&l1], 1.0).await.unwrap();
    assert_eq!(got, Some((l1.clone(), "b".to_string())));
    assert_eq!(o.strings(&["LRANGE", &l1, "0", "-1"]), ["a"]);

    // BLMOVE: from the head of one list to the tail of another; nil after
    // the timeout.
    o.q(&["RPUSH", &l1, "x"]);
    o.q(&["RPUSH", &l2, "first"]);
    let moved: Option<String> = c
        .blmove(&l1, &l2, ListEnd::Left, ListEnd::Right, 1.0)
        .await
        .unwrap();
    assert_eq!(moved.as_deref(), Some("a"));
    assert_eq!(o.strings(&["LRANGE", &l1, "0", "-1"]), ["x"]);
    assert_eq!(o.strings(&["LRANGE", &l2, "0", "-1"]), ["first", "a"]);
    let empty = format!("{{{p}}}:empty");
    let none: Option<String> = c
        .blmove(&empty, &l2, ListEnd::Right, ListEnd::Left, 0.1)
        .await
        .unwrap();
    assert_eq!(none, None);

    // BZPOPMIN / BZPOPMAX: (key, member, score); nil after the timeout.
    let z = format!("{{{p}}}:bz");
    o.q(&["ZADD", &z, "1", "low", "2.5", "high", "2", "mid"]);
    let got: Option<(String, String, f64)> = c.bzpopmin([&z], 1.0).await.unwrap();
    assert_eq!(got, Some((z.clone(), "low".to_string(), 1.0)));
    let got: Option<(String, String, f64)> = c.bzpopmax([&z], 1.0).await.unwrap();
    assert_eq!(got, Some((z.clone(), "high".to_string(), 2.5)));
    assert_eq!(o.int(&["ZCARD", &z]), 1);
    let none: Option<(String, String, f64)> = c.bzpopmin([&empty], 0.1).await.unwrap();
    assert_eq!(none, None);

    // XREAD BLOCK: empty after the wait; an entry added while it waits
    // ends the wait.
    let s = format!("{{{p}}}:bstream");
    assert!(c.xread_block([&s], ["$"], 100).await.unwrap().is_empty());
    let waiter = {
        let (c, s) = (c.clone(), s.clone());
        tokio::spawn(async move { c.xread_block([s], ["$"], 10_000).await })
    };
    blocked_clients(port_serving(&o.ports, s.as_bytes()), 1).await;
    let id = c.xadd(&s, "*", [("f", "v")]).await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, s);
    assert_eq!(got[0].1.len(), 1);
    assert_eq!(got[0].1[0].id, id);
    assert_eq!(got[0].1[0].fields, [("f".to_string(), Bytes::from("v"))]);

    // XREADGROUP BLOCK: new entries for the group, once.
    c.xgroup_create(&s, "g", "0").await.unwrap();
    let got = c
        .xreadgroup_block("g", "alice", [&s], [">"], 1_000)
        .await
        .unwrap();
    assert_eq!(got[0].1[0].id, id);
    let again = c
        .xreadgroup_block("g", "alice", [&s], [">"], 100)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

/// Dedicated connections (`blpop`, `watch`) are reused when nothing is
/// left on them, and closed otherwise.
async fn dedicated_reuse(c: &Client, o: &Oracle, p: &str) {
    let (q, k, j) = (
        format!("{{{p}}}:reuse-q"),
        format!("{{{p}}}:reuse-k"),
        format!("{{{p}}}:reuse-j"),
    );
    let port = port_serving(&o.ports, q.as_bytes());
    let mut push = vec!["RPUSH", &q];
    let items: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    push.extend(items.iter().map(String::as_str));
    o.q(&push);
    // Each INFO is a connection of its own, counted in its own reply.
    let dialled =
        |before: u64| info_field(port, "stats", "total_connections_received") - before - 1;
    let before = info_field(port, "stats", "total_connections_received");
    for item in &items {
        let got: Option<(String, String)> = c.blpop([&q], 1.0).await.unwrap();
        assert_eq!(got, Some((q.clone(), item.clone())));
    }
    for _ in 0..5 {
        let w = c.watch([&k]).await.unwrap();
        let mut tx = c.transaction();
        tx.incr(&k);
        let r: Option<(i64,)> = w.exec(&tx).await.unwrap();
        assert!(r.is_some());
    }
    // None (one is idle from the steps before) or one, two at most if the
    // cluster layer happened to dial meanwhile; 25 without reuse.
    let n = dialled(before);
    assert!(n <= 2, "{n} connections for 25 dedicated uses");

    // A WATCH left without its transaction: its connection is closed, not
    // reused (a reused one would still watch `k`, and abort the next
    // transaction when `k` changes).
    drop(c.watch([&k]).await.unwrap());
    o.q(&["SET", &k, "changed"]);
    let w = c.watch([&j]).await.unwrap();
    let mut tx = c.transaction();
    tx.incr(&j);
    let r: Option<(i64,)> = w.exec(&tx).await.unwrap();
    assert_eq!(r, Some((1,)), "the new WATCH's transaction applies");

    // A BLPOP whose caller gave up: its connection is closed, and the next
    // element waits for the next BLPOP.
    let waiter = {
        let (c, q) = (c.clone(), q.clone());
        tokio::spawn(async move { c.blpop::<String>([q], 0.0).await })
    };
    blocked_clients(port, 1).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    blocked_clients(port, 0).await;
    o.q(&["RPUSH", &q, "late"]);
    assert_eq!(o.int(&["LLEN", &q]), 1, "nobody took it");
    let got: Option<(String, String)> = c.blpop([&q], 1.0).await.unwrap();
    assert_eq!(got, Some((q.clone(), "late".to_string())));

    // The server closes the idle connection just before it is taken again
    // (often before the client has seen it): the BLPOP still succeeds, on
    // a new connection.
    let kill: [&[u8]; 6] = [b"CLIENT", b"KILL", b"TYPE", b"normal", b"SKIPME", b"yes"];
    for i in 0..10 {
        let item = format!("after-kill-{i}");
        o.q(&["RPUSH", &q, &item]);
        query(port, &kill).unwrap();
        let got: Option<(String, String)> = c.blpop([&q], 1.0).await.unwrap();
        assert_eq!(got, Some((q.clone(), item)));
    }
}

async fn conversions(c: &Client, o: &Oracle, p: &str) {
    let k = format!("{p}:conv");
    o.q(&["SET", &k, "not a number"]);
    match c.get::<i64>(&k).await {
        Err(Error::Type(m)) => assert!(m.contains("integer"), "{m}"),
        other => panic!("{other:?}"),
    }
    match c.get::<String>(format!("{p}:missing")).await {
        Err(Error::Type(_)) => {}
        other => panic!("{other:?}"),
    }
    match c.hget::<Option<String>>(&k, "f").await {
        Err(Error::Server(e)) => assert_eq!(e.kind(), &ServerErrorKind::WrongType),
        other => panic!("{other:?}"),
    }
    // The client still works after conversion failures.
    assert_eq!(c.get::<String>(&k).await.unwrap(), "not a number");
}

async fn scan(c: &Client, o: &Oracle, p: &str) {
    // No hash tag: in a cluster the keys are on every primary.
    let want: BTreeSet<String> = (0..60).map(|i| format!("{p}:scan:{i}")).collect();
    for k in &want {
        o.q(&["SET", k, "1"]);
    }
    let mut got = BTreeSet::new();
    let mut pages = 0;
    let mut scan = c.scan().pattern(format!("{p}:scan:*")).count(7);
    while let Some(keys) = scan.next_page::<String>().await.unwrap() {
        assert!(!keys.is_empty());
        pages += 1;
        got.extend(keys);
    }
    assert_eq!(got, want);
    assert!(
        pages > 1,
        "COUNT 7 over 60 keys: several pages, got {pages}"
    );
    assert_eq!(
        scan.next_page::<String>().await.unwrap(),
        None,
        "stays done"
    );
    let mut none = c.scan().pattern(format!("{p}:no-such:*"));
    assert_eq!(none.next_page::<String>().await.unwrap(), None);

    // One key at a time: every key (SCAN may repeat one, never skip one).
    let streamed: Vec<String> = c
        .scan()
        .pattern(format!("{p}:scan:*"))
        .count(7)
        .into_stream()
        .try_collect()
        .await
        .unwrap();
    assert!(streamed.len() >= want.len(), "{}", streamed.len());
    assert_eq!(streamed.into_iter().collect::<BTreeSet<_>>(), want);
    let mut empty = c
        .scan()
        .pattern(format!("{p}:no-such:*"))
        .into_stream::<String>();
    assert!(empty.next().await.is_none());
    // An error is the stream's last item: keys that are not integers.
    let mut bad = c.scan().pattern(format!("{p}:scan:*")).into_stream::<i64>();
    match bad.next().await {
        Some(Err(Error::Type(_))) => {}
        other => panic!("{other:?}"),
    }
    assert!(bad.next().await.is_none(), "ends after the error");
}

/// The one-value forms of the multi-value helpers (which took only
/// collections before `ToArgs`), and the collection shapes they take.
async fn one_or_many(c: &Client, o: &Oracle, p: &str) {
    let (k, other) = (format!("{{{p}}}:one"), format!("{{{p}}}:one-other"));
    o.q(&["SET", &k, "v"]);
    assert_eq!(c.exists(&k).await.unwrap(), 1);
    assert_eq!(c.touch(&k).await.unwrap(), 1);
    assert_eq!(c.touch([&k, &other]).await.unwrap(), 1);
    let got: Vec<Option<String>> = c.mget(&k).await.unwrap();
    assert_eq!(got, [Some("v".to_string())]);
    assert_eq!(c.del(k.as_str()).await.unwrap(), 1);
    assert_eq!(o.int(&["EXISTS", &k]), 0);
    o.q(&["SET", &k, "v"]);
    assert_eq!(c.unlink(k.clone()).await.unwrap(), 1);
    assert_eq!(o.int(&["EXISTS", &k]), 0);

    let l = format!("{p}:one-list");
    assert_eq!(c.lpush(&l, "a").await.unwrap(), 1);
    assert_eq!(c.rpush(&l, String::from("b")).await.unwrap(), 2);
    assert_eq!(c.rpush(&l, vec!["c", "d"]).await.unwrap(), 4);
    let more = vec!["e".to_string(), "f".to_string()];
    assert_eq!(c.rpush(&l, &more).await.unwrap(), 6);
    assert_eq!(c.rpush(&l, &more[..1]).await.unwrap(), 7);
    assert_eq!(c.rpush(&l, 8).await.unwrap(), 8);
    let upper = Each(["x", "y"].iter().map(|s| s.to_uppercase()));
    assert_eq!(c.rpush(&l, upper).await.unwrap(), 10);
    assert_eq!(
        o.strings(&["LRANGE", &l, "0", "-1"]),
        ["a", "b", "c", "d", "e", "f", "e", "8", "X", "Y"]
    );
    // Bytes are one value, however they are held.
    assert_eq!(c.rpush(&l, b"bin".to_vec()).await.unwrap(), 11);
    assert_eq!(c.rpush(&l, &b"\x00\xff"[..]).await.unwrap(), 12);
    assert_eq!(c.rpush(&l, b"raw").await.unwrap(), 13);
    assert_eq!(c.rpush(&l, [&b"p"[..], b"q"]).await.unwrap(), 15);
    assert_eq!(o.strings(&["LRANGE", &l, "10", "10"]), ["bin"]);
    assert_eq!(o.q(&["LINDEX", &l, "11"]), Reply::Bulk(Some(vec![0, 255])));
    assert_eq!(o.strings(&["LRANGE", &l, "12", "-1"]), ["raw", "p", "q"]);

    let s = format!("{p}:one-set");
    assert_eq!(c.sadd(&s, "m").await.unwrap(), 1);
    assert_eq!(c.sadd(&s, 7).await.unwrap(), 1);
    let set: BTreeSet<&str> = ["x", "y"].into();
    assert_eq!(c.sadd(&s, &set).await.unwrap(), 2);
    assert_eq!(c.srem(&s, "m").await.unwrap(), 1);
    assert_eq!(o.sorted(&["SMEMBERS", &s]), ["7", "x", "y"]);
    let (s2, s3) = (format!("{{{p}}}:one-s2"), format!("{{{p}}}:one-s3"));
    o.q(&["SADD", &s2, "a", "b"]);
    o.q(&["SADD", &s3, "b"]);
    let one: BTreeSet<String> = c.sinter(&s2).await.unwrap();
    assert_eq!(one.len(), 2);
    let one: BTreeSet<String> = c.sunion(&s3).await.unwrap();
    assert_eq!(one.into_iter().collect::<Vec<_>>(), ["b"]);

    let h = format!("{p}:one-hash");
    o.q(&["HSET", &h, "f1", "1", "f2", "2"]);
    let got: Vec<Option<String>> = c.hmget(&h, "f2").await.unwrap();
    assert_eq!(got, [Some("2".to_string())]);
    assert_eq!(c.hdel(&h, "f1").await.unwrap(), 1);
    assert_eq!(o.int(&["HEXISTS", &h, "f1"]), 0);

    let z = format!("{p}:one-zset");
    o.q(&["ZADD", &z, "1", "a", "2", "b"]);
    assert_eq!(c.zrem(&z, "a").await.unwrap(), 1);
    assert_eq!(o.strings(&["ZRANGE", &z, "0", "-1"]), ["b"]);

    let x = format!("{p}:one-stream");
    let id = c.xadd(&x, "*", [("f", "v")]).await.unwrap();
    let read = c.xread(&x, "0").await.unwrap();
    assert_eq!(read[0].1[0].id, id);
    assert_eq!(c.xdel(&x, &id).await.unwrap(), 1);
    assert_eq!(o.int(&["XLEN", &x]), 0);

    let e = format!("{p}:one-eval");
    let v: i64 = c
        .eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", &e, 5)
        .await
        .unwrap();
    assert_eq!(v, 5);
    assert_eq!(o.bulk(&["GET", &e]).as_deref(), Some("5"));
    let script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1]) + 0");
    assert_eq!(script.invoke::<i64>(c, &e, 2).await.unwrap(), 7);

    // Queued helpers take one value too.
    let mut pipe = c.pipeline();
    pipe.sadd(&s, "z").scard(&s).del(&s);
    let (added, card, deleted): (usize, usize, usize) = pipe.query().await.unwrap();
    assert_eq!((added, card, deleted), (1, 4, 1));
    assert_eq!(o.int(&["EXISTS", &s]), 0);

    // The dedicated-connection helpers too.
    let w = c.watch(&e).await.unwrap();
    drop(w);
    let q = format!("{p}:one-q");
    o.q(&["RPUSH", &q, "job"]);
    let got: Option<(String, String)> = c.blpop(&q, 1.0).await.unwrap();
    assert_eq!(got, Some((q.clone(), "job".to_string())));
}

async fn ranges_and_bits(c: &Client, o: &Oracle, p: &str) {
    let k = format!("{p}:range");
    o.q(&["SET", &k, "Hello World"]);
    assert_eq!(c.getrange::<String>(&k, 0, 4).await.unwrap(), "Hello");
    assert_eq!(c.getrange::<String>(&k, -5, -1).await.unwrap(), "World");
    assert_eq!(c.getrange::<Bytes>(&k, 4, 6).await.unwrap(), "o W");
    let nope = format!("{p}:range-nope");
    assert_eq!(c.getrange::<String>(&nope, 0, 4).await.unwrap(), "");

    let (b1, b2) = (format!("{{{p}}}:bits1"), format!("{{{p}}}:bits2"));
    // b1: 0b0000_0001 0b0100_0000 (bits 7 and 9).
    assert!(!c.setbit(&b1, 7, true).await.unwrap());
    assert!(c.setbit(&b1, 7, true).await.unwrap(), "the old bit");
    assert!(!c.setbit(&b1, 9, true).await.unwrap());
    assert!(!c.setbit(&b1, 3, false).await.unwrap());
    assert_eq!(o.int(&["GETBIT", &b1, "7"]), 1);
    assert_eq!(o.int(&["GETBIT", &b1, "9"]), 1);
    assert_eq!(o.int(&["BITCOUNT", &b1]), 2);
    assert!(c.getbit(&b1, 9).await.unwrap());
    assert!(!c.getbit(&b1, 8).await.unwrap());
    assert!(!c.getbit(&b1, 1000).await.unwrap(), "past the end");
    assert!(!c.getbit(&nope, 0).await.unwrap());
    assert_eq!(c.bitcount(&b1).await.unwrap(), 2);
    assert_eq!(c.bitcount(&nope).await.unwrap(), 0);
    assert_eq!(c.bitcount_range(&b1, 1, 1).await.unwrap(), 1);
    assert_eq!(c.bitcount_range(&b1, -1, -1).await.unwrap(), 1);
    assert_eq!(c.bitpos(&b1, true).await.unwrap(), 7);
    assert_eq!(c.bitpos(&b1, false).await.unwrap(), 0);
    assert_eq!(c.bitpos(&nope, true).await.unwrap(), -1);

    // b2: bits 0 and 9.
    o.q(&["SETBIT", &b2, "0", "1"]);
    o.q(&["SETBIT", &b2, "9", "1"]);
    let dest = format!("{{{p}}}:bits-dest");
    assert_eq!(c.bitop(BitOp::And, &dest, [&b1, &b2]).await.unwrap(), 2);
    assert_eq!(o.int(&["BITCOUNT", &dest]), 1);
    assert_eq!(o.int(&["GETBIT", &dest, "9"]), 1);
    assert_eq!(c.bitop(BitOp::Or, &dest, [&b1, &b2]).await.unwrap(), 2);
    assert_eq!(o.int(&["BITCOUNT", &dest]), 3);
    assert_eq!(c.bitop(BitOp::Xor, &dest, [&b1, &b2]).await.unwrap(), 2);
    assert_eq!(o.int(&["BITCOUNT", &dest]), 2);
    assert_eq!(o.int(&["GETBIT", &dest, "9"]), 0);
    // NOT takes one key: a one-value form.
    assert_eq!(c.bitop(BitOp::Not, &dest, &b1).await.unwrap(), 2);
    assert_eq!(o.int(&["BITCOUNT", &dest]), 14);
}

async fn more_hashes(c: &Client, o: &Oracle, p: &str) {
    let h = format!("{p}:hash2");
    assert!(c.hsetnx(&h, "f", "1").await.unwrap());
    assert!(!c.hsetnx(&h, "f", "2").await.unwrap());
    assert_eq!(o.bulk(&["HGET", &h, "f"]).as_deref(), Some("1"));
    assert_eq!(c.hincr_by_float(&h, "f", 1.5).await.unwrap(), 2.5);
    assert_eq!(c.hincr_by_float(&h, "g", -0.25).await.unwrap(), -0.25);
    assert_eq!(o.bulk(&["HGET", &h, "f"]).as_deref(), Some("2.5"));
    assert_eq!(o.bulk(&["HGET", &h, "g"]).as_deref(), Some("-0.25"));

    // Enough fields for a hash table (a listpack, up to 512 by default,
    // comes in one page): several pages.
    let mut hset = vec!["HSET".to_string(), h.clone()];
    for i in 0..600 {
        hset.extend([format!("field{i}"), i.to_string()]);
    }
    o.q(&hset.iter().map(String::as_str).collect::<Vec<_>>());
    let mut want: BTreeMap<String, String> = (0..600)
        .map(|i| (format!("field{i}"), i.to_string()))
        .collect();
    want.insert("f".into(), "2.5".into());
    want.insert("g".into(), "-0.25".into());
    let (mut got, mut cursor, mut pages) = (BTreeMap::new(), 0, 0);
    loop {
        let (next, page): (u64, Vec<(String, String)>) = c.hscan(&h, cursor).await.unwrap();
        got.extend(page);
        pages += 1;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert!(pages > 1, "{pages}");
    assert_eq!(got, want);
    let (mut got, mut cursor) = (BTreeMap::new(), 0);
    loop {
        let (next, page): (u64, Vec<(String, i64)>) =
            c.hscan_match(&h, cursor, "field1?").await.unwrap();
        got.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let want: BTreeMap<String, i64> = (10..20).map(|i| (format!("field{i}"), i)).collect();
    assert_eq!(got, want);
}

async fn more_lists(c: &Client, o: &Oracle, p: &str) {
    let (src, dst) = (format!("{{{p}}}:lsrc"), format!("{{{p}}}:ldst"));
    o.q(&["RPUSH", &src, "a", "b", "c", "b"]);
    c.lset(&src, 1, "B").await.unwrap();
    assert_eq!(
        o.strings(&["LRANGE", &src, "0", "-1"]),
        ["a", "B", "c", "b"]
    );
    c.lset(&src, -1, "z").await.unwrap();
    assert_eq!(
        o.strings(&["LRANGE", &src, "0", "-1"]),
        ["a", "B", "c", "z"]
    );
    assert!(matches!(c.lset(&src, 99, "x").await, Err(Error::Server(_))));
    assert_eq!(c.lpos(&src, "c").await.unwrap(), Some(2));
    assert_eq!(c.lpos(&src, "nope").await.unwrap(), None);
    assert_eq!(c.lpos(format!("{p}:no-list"), "a").await.unwrap(), None);

    let moved: Option<String> = c
        .lmove(&src, &dst, ListEnd::Left, ListEnd::Right)
        .await
        .unwrap();
    assert_eq!(moved.as_deref(), Some("a"));
    let moved: String = c
        .lmove(&src, &dst, ListEnd::Right, ListEnd::Left)
        .await
        .unwrap();
    assert_eq!(moved, "z");
    assert_eq!(o.strings(&["LRANGE", &src, "0", "-1"]), ["B", "c"]);
    assert_eq!(o.strings(&["LRANGE", &dst, "0", "-1"]), ["z", "a"]);
    let moved: Option<String> = c.rpoplpush(&src, &dst).await.unwrap();
    assert_eq!(moved.as_deref(), Some("c"));
    assert_eq!(o.strings(&["LRANGE", &src, "0", "-1"]), ["B"]);
    assert_eq!(o.strings(&["LRANGE", &dst, "0", "-1"]), ["c", "z", "a"]);
    let empty = format!("{{{p}}}:lempty");
    let none: Option<String> = c
        .lmove(&empty, &dst, ListEnd::Left, ListEnd::Left)
        .await
        .unwrap();
    assert_eq!(none, None);
    let none: Option<String> = c.rpoplpush(&empty, &dst).await.unwrap();
    assert_eq!(none, None);
    assert_eq!(o.int(&["LLEN", &dst]), 3);
}

async fn more_sets(c: &Client, o: &Oracle, p: &str) {
    let (s1, s2) = (format!("{{{p}}}:d1"), format!("{{{p}}}:d2"));
    o.q(&["SADD", &s1, "a", "b", "c", "d"]);
    o.q(&["SADD", &s2, "b", "d"]);
    let diff: BTreeSet<String> = c.sdiff([&s1, &s2]).await.unwrap();
    assert_eq!(
        diff.into_iter().collect::<Vec<_>>(),
        o.sorted(&["SDIFF", &s1, &s2])
    );
    let diff: Vec<String> = c.sdiff([&s2, &s1]).await.unwrap();
    assert!(diff.is_empty());
    let all: HashSet<String> = c.sdiff(&s1).await.unwrap();
    assert_eq!(all.len(), 4);

    let four: BTreeSet<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    let r: Option<String> = c.srandmember(&s1).await.unwrap();
    assert!(four.contains(&r.unwrap()));
    let r: Vec<String> = c.srandmember_count(&s1, 3).await.unwrap();
    assert_eq!(r.iter().collect::<BTreeSet<_>>().len(), 3, "distinct");
    assert!(r.iter().all(|m| four.contains(m)));
    let r: Vec<String> = c.srandmember_count(&s1, -6).await.unwrap();
    assert_eq!(r.len(), 6, "repeats allowed");
    assert_eq!(o.int(&["SCARD", &s1]), 4, "left in place");
    let none: Option<String> = c.srandmember(format!("{p}:no-set")).await.unwrap();
    assert_eq!(none, None);

    let popped: Option<String> = c.spop(&s2).await.unwrap();
    let popped = popped.unwrap();
    assert!(popped == "b" || popped == "d", "{popped}");
    assert_eq!(o.int(&["SISMEMBER", &s2, &popped]), 0);
    assert_eq!(o.int(&["SCARD", &s2]), 1);
    let rest: Vec<String> = c.spop_count(&s2, 5).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(o.int(&["EXISTS", &s2]), 0);
    let none: Option<String> = c.spop(&s2).await.unwrap();
    assert_eq!(none, None);

    // A hash table (not an intset): several pages.
    let big = format!("{p}:big-set");
    let mut sadd = vec!["SADD".to_string(), big.clone()];
    sadd.extend((0..200).map(|i| format!("m{i}")));
    o.q(&sadd.iter().map(String::as_str).collect::<Vec<_>>());
    let (mut got, mut cursor, mut pages) = (BTreeSet::new(), 0, 0);
    loop {
        let (next, page): (u64, Vec<String>) = c.sscan(&big, cursor).await.unwrap();
        got.extend(page);
        pages += 1;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert!(pages > 1, "{pages}");
    assert_eq!(got, o.sorted(&["SMEMBERS", &big]).into_iter().collect());
    let (mut got, mut cursor) = (BTreeSet::new(), 0);
    loop {
        let (next, page): (u64, Vec<String>) = c.sscan_match(&big, cursor, "m1?").await.unwrap();
        got.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(got, (10..20).map(|i| format!("m{i}")).collect());
}

async fn more_sorted_sets(c: &Client, o: &Oracle, p: &str) {
    let z = format!("{p}:zset2");
    o.q(&["ZADD", &z, "1", "a", "2", "b", "3", "c", "4", "d"]);
    let rev: Vec<String> = c.zrevrange(&z, 0, 1).await.unwrap();
    assert_eq!(rev, ["d", "c"]);
    assert_eq!(rev, o.strings(&["ZREVRANGE", &z, "0", "1"]));
    let rev: Vec<(String, f64)> = c.zrevrange_withscores(&z, 0, 1).await.unwrap();
    assert_eq!(rev, [("d".to_string(), 4.0), ("c".to_string(), 3.0)]);
    assert_eq!(c.zrevrank(&z, "d").await.unwrap(), Some(0));
    assert_eq!(c.zrevrank(&z, "a").await.unwrap(), Some(3));
    assert_eq!(c.zrevrank(&z, "nope").await.unwrap(), None);

    let popped: Vec<(String, f64)> = c.zpopmin(&z, 1).await.unwrap();
    assert_eq!(popped, [("a".to_string(), 1.0)]);
    let popped: Vec<(String, f64)> = c.zpopmax(&z, 2).await.unwrap();
    assert_eq!(popped, [("d".to_string(), 4.0), ("c".to_string(), 3.0)]);
    assert_eq!(o.strings(&["ZRANGE", &z, "0", "-1"]), ["b"]);
    let popped: Vec<(String, f64)> = c.zpopmin(&z, 5).await.unwrap();
    assert_eq!(popped, [("b".to_string(), 2.0)]);
    let none: Vec<(String, f64)> = c.zpopmax(&z, 1).await.unwrap();
    assert!(none.is_empty());

    o.q(&["ZADD", &z, "1", "a", "2", "b", "5", "e", "6", "f", "7", "g"]);
    assert_eq!(c.zremrangebyscore(&z, "(2", 6).await.unwrap(), 2);
    assert_eq!(o.strings(&["ZRANGE", &z, "0", "-1"]), ["a", "b", "g"]);
    assert_eq!(c.zremrangebyscore(&z, "-inf", "+inf").await.unwrap(), 3);
    assert_eq!(o.int(&["EXISTS", &z]), 0);

    // A skiplist (not a listpack, up to 128 by default): several pages.
    let mut zadd = vec!["ZADD".to_string(), z.clone()];
    for i in 0..600 {
        zadd.extend([format!("{i}.5"), format!("m{i}")]);
    }
    o.q(&zadd.iter().map(String::as_str).collect::<Vec<_>>());
    let (mut got, mut cursor, mut pages) = (BTreeMap::new(), 0, 0);
    loop {
        let (next, page): (u64, Vec<(String, f64)>) = c.zscan(&z, cursor).await.unwrap();
        got.extend(page.into_iter().map(|(m, s)| (m, s.to_string())));
        pages += 1;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert!(pages > 1, "{pages}");
    let want: BTreeMap<String, String> = (0..600)
        .map(|i| (format!("m{i}"), format!("{i}.5")))
        .collect();
    assert_eq!(got, want);
    let (mut got, mut cursor) = (Vec::new(), 0);
    loop {
        let (next, page): (u64, Vec<(String, f64)>) =
            c.zscan_match(&z, cursor, "m19?").await.unwrap();
        got.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    got.sort_by(|a, b| a.1.total_cmp(&b.1));
    let want: Vec<(String, f64)> = (190..200)
        .map(|i| (format!("m{i}"), i as f64 + 0.5))
        .collect();
    assert_eq!(got, want);
}

async fn hyperloglog(c: &Client, o: &Oracle, p: &str) {
    let (h1, h2) = (format!("{{{p}}}:hll1"), format!("{{{p}}}:hll2"));
    assert!(c.pfadd(&h1, ["a", "b", "c"]).await.unwrap());
    assert!(!c.pfadd(&h1, "a").await.unwrap(), "no change");
    assert!(c.pfadd(&h2, "d").await.unwrap());
    assert_eq!(o.int(&["PFCOUNT", &h1]), 3);
    assert_eq!(c.pfcount(&h1).await.unwrap(), 3);
    assert_eq!(c.pfcount([&h1, &h2]).await.unwrap(), 4);
    assert_eq!(c.pfcount(format!("{p}:no-hll")).await.unwrap(), 0);
}

/// KEYS, INFO and FLUSHDB: in a cluster, KEYS and FLUSHDB go to every
/// primary (the cluster layer's fan-out), INFO to one.
async fn server_wide(c: &Client, o: &Oracle, p: &str) {
    // No hash tag: in a cluster the keys are on several primaries.
    let want: BTreeSet<String> = (0..20).map(|i| format!("{p}:kw:{i}")).collect();
    for k in &want {
        o.q(&["SET", k, "1"]);
    }
    let nodes: BTreeSet<u16> = want
        .iter()
        .map(|k| port_serving(&o.ports, k.as_bytes()))
        .collect();
    assert_eq!(nodes.len() > 1, c.is_cluster(), "{nodes:?}");
    let got: Vec<String> = c.keys(format!("{p}:kw:*")).await.unwrap();
    assert_eq!(got.len(), want.len(), "each key once: {got:?}");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    let none: Vec<String> = c.keys(format!("{p}:no-such:*")).await.unwrap();
    assert!(none.is_empty());

    // INFO: the text (a verbatim string in RESP3, a bulk string in RESP2).
    let info = c.info().await.unwrap();
    assert!(info.contains("# Server"), "{info}");
    assert!(info.lines().any(|l| l.starts_with("redis_version:")));
    let server = c.info_sections("server").await.unwrap();
    assert!(server.contains("# Server") && !server.contains("# Clients"));
    let two = c.info_sections(["server", "cluster"]).await.unwrap();
    assert!(two.contains("# Server") && two.contains("# Cluster"));
    let enabled = if c.is_cluster() { 1 } else { 0 };
    assert!(two.contains(&format!("cluster_enabled:{enabled}")), "{two}");
    // One node's: a primary's run id.
    let run_id = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_string())
    };
    let primaries: Vec<Option<String>> = o
        .ports
        .iter()
        .map(|&port| match query(port, &[b"INFO", b"server"]).unwrap() {
            Reply::Bulk(Some(b)) => run_id(&String::from_utf8(b).unwrap()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(primaries.contains(&run_id(&server)), "{primaries:?}");

    // FLUSHDB: every key, on every primary.
    c.flushdb().await.unwrap();
    for &port in &o.ports {
        assert_eq!(query(port, &[b"DBSIZE"]).unwrap(), Reply::Int(0), "{port}");
    }
}

fn standalone_oracle(server: &RedisServer) -> Oracle {
    Oracle {
        ports: vec![server.port()],
    }
}

fn cluster_oracle(cluster: &RedisCluster) -> Oracle {
    Oracle {
        ports: cluster.primaries().iter().map(|s| s.port()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_resp3_every_helper() {
    bounded(SUITE_SECS, async {
        let server = RedisServer::start();
        let client = Client::open(&format!("redis://127.0.0.1:{}", server.port()))
            .await
            .unwrap();
        assert!(!client.is_cluster());
        suite(&client, &standalone_oracle(&server), "r3").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_resp2_every_helper() {
    bounded(SUITE_SECS, async {
        let server = RedisServer::start();
        let client = Client::open(&format!("redis://127.0.0.1:{}?protocol=2", server.port()))
            .await
            .unwrap();
        assert!(!client.is_cluster(), "INFO cluster says cluster_enabled:0");
        // The replies really are RESP2-shaped.
        let raw: Value = client
            .cmd(cmd("HSET").arg("r2:shape").arg("f").arg("v"))
            .await
            .unwrap();
        assert_eq!(raw, Value::Integer(1));
        let raw: Value = client.cmd(cmd("HGETALL").arg("r2:shape")).await.unwrap();
        assert!(matches!(raw, Value::Array(_)), "{raw:?}");
        suite(&client, &standalone_oracle(&server), "r2").await;
    })
    .await
}

/// One cluster, two clients: RESP3 (detected from HELLO's `mode`) and
/// RESP2 (detected from `INFO cluster`), both from one seed URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_every_helper_resp3_and_resp2() {
    bounded(2 * SUITE_SECS, async {
        let cluster = RedisCluster::builder().replicas_per_primary(1).start();
        let oracle = cluster_oracle(&cluster);
        let url = format!("redis://127.0.0.1:{}", cluster.primaries()[0].port());
        let client = Client::open(&url).await.unwrap();
        assert!(client.is_cluster(), "HELLO says mode cluster");
        suite(&client, &oracle, "c3").await;
        // Gone before the next suite counts connections on its nodes.
        drop(client);

        let client = Client::open(&format!("{url}?protocol=2")).await.unwrap();
        assert!(client.is_cluster(), "INFO cluster says cluster_enabled:1");
        let raw: Value = client
            .cmd(cmd("ZADD").arg("c2:shape").arg(1.5).arg("m"))
            .await
            .unwrap();
        assert_eq!(raw, Value::Integer(1));
        let raw: Value = client
            .cmd(cmd("ZSCORE").arg("c2:shape").arg("m"))
            .await
            .unwrap();
        assert_eq!(raw, Value::BulkString("1.5".into()), "RESP2 shape");
        suite(&client, &oracle, "c2").await;

        // A multi-key helper over two slots is refused before anything is sent.
        let (a, b) = ("cross:a", "cross:b");
        assert_ne!(support::cluster::slot_of(a), support::cluster::slot_of(b));
        oracle.q(&["SET", a, "1"]);
        let err = client.del([a, b]).await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert_eq!(oracle.int(&["EXISTS", a]), 1, "nothing was deleted");
    })
    .await
}

/// A cluster scan whose connection to a node is killed between pages: the
/// failed page is asked for again (same node, same cursor), and every key
/// comes back; none is skipped with the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_scan_goes_on_after_its_connection_is_killed() {
    bounded(60, async {
        let cluster = RedisCluster::start();
        let oracle = cluster_oracle(&cluster);
        let url = format!("redis://127.0.0.1:{}", cluster.primaries()[0].port());
        let client = Client::open(&url).await.unwrap();
        let want: BTreeSet<String> = (0..300).map(|i| format!("kill-scan:{i}")).collect();
        for k in &want {
            oracle.q(&["SET", k, "1"]);
        }
        let kill: [&[u8]; 6] = [b"CLIENT", b"KILL", b"TYPE", b"normal", b"SKIPME", b"yes"];
        let mut scan = client.scan().pattern("kill-scan:*").count(10);
        let (mut got, mut pages, mut errors) = (BTreeSet::new(), 0, 0);
        loop {
            match scan.next_page::<String>().await {
                Ok(Some(keys)) => {
                    got.extend(keys);
                    pages += 1;
                    if pages % 3 == 0 {
                        for &port in &oracle.ports {
                            query(port, &kill).unwrap();
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // One per kill at most: an idle connection killed a
                    // moment before it is taken is replaced, unseen.
                    errors += 1;
                    assert!(errors <= pages, "{e:?} after {pages} pages");
                }
            }
        }
        assert!(errors > 0, "the kills were seen ({pages} pages)");
        assert_eq!(got, want, "{pages} pages, {errors} errors");
    })
    .await
}

/// An idle dedicated connection the server closes just before it is taken
/// again: on a one-thread runtime the connection's driver cannot have seen
/// the close when the next `BLPOP` takes it, so its first request fails,
/// every time; the client sends it again on a new connection and the
/// caller sees nothing. Standalone and cluster.
#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_closed_just_before_it_is_taken_is_replaced() {
    bounded(60, async {
        let server = RedisServer::start();
        let cluster = RedisCluster::start();
        let ports: Vec<u16> = cluster.primaries().iter().map(|s| s.port()).collect();
        let kill: [&[u8]; 6] = [b"CLIENT", b"KILL", b"TYPE", b"normal", b"SKIPME", b"yes"];
        let q = "{stale}:q";
        for (url, port) in [
            (
                format!("redis://127.0.0.1:{}", server.port()),
                server.port(),
            ),
            (
                format!("redis://127.0.0.1:{}", ports[0]),
                port_serving(&ports, q.as_bytes()),
            ),
        ] {
            let c = Client::open(&url).await.unwrap();
            let items: Vec<String> = (0..6).map(|i| i.to_string()).collect();
            c.rpush(q, &items).await.unwrap();
            // The first one leaves its connection idle for the next.
            let got: Option<(String, String)> = c.blpop([q], 1.0).await.unwrap();
            assert_eq!(got, Some((q.to_string(), "0".to_string())));
            for item in &items[1..] {
                let before = info_field(port, "stats", "total_connections_received");
                // Blocking, on this task's only thread: the driver does not
                // run before the BLPOP below takes the connection.
                query(port, &kill).unwrap();
                let got: Option<(String, String)> = c.blpop([q], 1.0).await.unwrap();
                assert_eq!(got, Some((q.to_string(), item.clone())), "{url}");
                let dialled = info_field(port, "stats", "total_connections_received") - before;
                // The kill's and the INFO's own connections, and the new
                // dedicated one (plus, at most, the shared connection again).
                assert!((3..=4).contains(&dialled), "{url}: {dialled}");
            }
        }
    })
    .await
}

/// Several seeds mean cluster without asking; a forced mode is taken as
/// given; a standalone server is not mistaken for a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_detection_and_seeds() {
    bounded(60, async {
        let cluster = RedisCluster::start();
        let seeds: Vec<_> = (0..3).map(|i| cluster.endpoint(i)).collect();
        let mut b = ClientBuilder::new(seeds[0].clone());
        for s in &seeds[1..] {
            b = b.seed(s.clone());
        }
        let client = b.build().await.unwrap();
        assert!(client.is_cluster());
        // Keys on every primary, written through routing, read by the oracle.
        for i in 0..30 {
            client.set(format!("seed:{i}"), i).await.unwrap();
        }
        let oracle = cluster_oracle(&cluster);
        for i in 0..30 {
            assert_eq!(
                oracle.bulk(&["GET", &format!("seed:{i}")]),
                Some(i.to_string())
            );
        }

        let server = RedisServer::start();
        let forced = ClientBuilder::new(server.endpoint())
            .mode(ServerMode::Standalone)
            .build()
            .await
            .unwrap();
        assert!(!forced.is_cluster());
        forced.set("k", "v").await.unwrap();
        assert_eq!(
            standalone_oracle(&server).bulk(&["GET", "k"]).as_deref(),
            Some("v")
        );

        // Nobody listening: building (which asks the server) fails, typed.
        let port = server.port();
        drop(server);
        let err = Client::open(&format!("redis://127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Io(_)), "{err:?}");
        // Bad configuration: typed, nothing dialled.
        let err = ClientBuilder::new(seeds[0].clone())
            .pool_size(0)
            .build()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(matches!(Client::open("nope").await, Err(Error::Config(_))));
    })
    .await
}

/// A layer of one's own wraps the stack; the raw service is the same stack;
/// a client over a bare service has no dedicated connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_layers_and_raw_service() {
    bounded(30, async {
        let server = RedisServer::start();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let client = ClientBuilder::new(server.endpoint())
            .layer(tower::util::MapRequestLayer::new(
                move |r: redis_layers::Request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    r
                },
            ))
            .build()
            .await
            .unwrap();
        client.set("layered", 1).await.unwrap();
        let _: i64 = client.get("layered").await.unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 2);

        use tower::ServiceExt;
        let reply = client
            .service()
            .oneshot(cmd("INCR").arg("layered").into())
            .await
            .unwrap()
            .into_value()
            .unwrap();
        assert_eq!(reply, Value::Integer(2));
        assert_eq!(seen.load(Ordering::SeqCst), 3);

        let conn = redis_layers::Connector::new()
            .connect(server.endpoint())
            .await
            .unwrap();
        let bare = Client::from_service(BoxService::new(conn));
        assert_eq!(bare.incr("layered").await.unwrap(), 3);
        let (n,): (i64,) = {
            let mut tx = bare.transaction();
            tx.incr("layered");
            tx.query().await.unwrap()
        };
        assert_eq!(n, 4);
        assert!(matches!(
            bare.watch(["layered"]).await,
            Err(Error::Config(_))
        ));
        assert!(matches!(
            bare.blpop::<String>(["q"], 0.1).await,
            Err(Error::Config(_))
        ));
    })
    .await
}

#[test]
fn client_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<Client>();
    check::<Script>();
}

/// The client's pub/sub: a subscription made through the client gets
/// messages published through it, survives a server-side `CLIENT KILL`
/// (gap reported, then messages again), and works in a cluster, where a
/// `PUBLISH` on any node reaches the subscriber on the first seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_through_the_client() {
    use redis_layers::pubsub::Event;

    /// The next message, skipping nothing else silently.
    async fn next_message(sub: &mut redis_layers::pubsub::Subscription) -> (Bytes, Bytes) {
        match sub.recv().await {
            Some(Event::Message(m)) => (m.channel, m.payload),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    bounded(60, async {
        let server = RedisServer::start();
        let client = Client::open(&format!("redis://{}", server.endpoint()))
            .await
            .unwrap();
        let mut sub = client.subscribe(["news"]).await.unwrap();
        let mut psub = client.psubscribe(["alerts.*"]).await.unwrap();
        assert_eq!(client.publish("news", "one").await.unwrap(), 1);
        assert_eq!(client.publish("alerts.eu", "two").await.unwrap(), 1);
        assert_eq!(next_message(&mut sub).await, ("news".into(), "one".into()));
        assert_eq!(
            next_message(&mut psub).await,
            ("alerts.eu".into(), "two".into())
        );

        // Killed by the server: the gap is reported, and the subscription
        // comes back by itself (no command needed to notice).
        let killed: i64 = client
            .cmd(cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"))
            .await
            .unwrap();
        assert_eq!(killed, 1);
        assert!(matches!(sub.recv().await, Some(Event::Disconnected)));
        assert!(matches!(sub.recv().await, Some(Event::Reconnected { .. })));
        assert_eq!(client.publish("news", "three").await.unwrap(), 1);
        assert_eq!(
            next_message(&mut sub).await,
            ("news".into(), "three".into())
        );

        // A client over a service of one's own knows no endpoint.
        let conn = redis_layers::Connector::new()
            .connect(server.endpoint())
            .await
            .unwrap();
        let raw = Client::from_service(redis_layers::client::BoxService::new(conn));
        assert!(matches!(
            raw.subscribe(["news"]).await,
            Err(Error::Config(_))
        ));

        let cluster = RedisCluster::start();
        let client = ClientBuilder::new(cluster.endpoint(0))
            .build()
            .await
            .unwrap();
        assert!(client.is_cluster());
        let mut sub = client.subscribe(["cluster-news"]).await.unwrap();
        // Published through the router on some primary (whose reply counts
        // only its own subscribers); cluster PUBLISH reaches every node.
        client.publish("cluster-news", "hi").await.unwrap();
        assert_eq!(
            next_message(&mut sub).await,
            ("cluster-news".into(), "hi".into())
        );
    })
    .await;
}

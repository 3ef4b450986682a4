//! Test support: a real Redis Cluster made of `redis-server` processes.
//!
//! `RedisCluster::start()` starts three primaries (no replicas) on free
//! loopback ports, each a [`RedisServer`] with its own directory, joins them
//! with `CLUSTER MEET`, gives each an even share of the 16384 slots with
//! `CLUSTER ADDSLOTSRANGE` (and, with replicas, `CLUSTER REPLICATE`), and
//! returns once every node reports `cluster_state:ok` and every node's
//! `CLUSTER SLOTS` shows the same, expected layout. All processes are killed
//! when the cluster drops.
//!
//! Node indices: `0..primaries` are the primaries, primary `p` owning slots
//! `p * 16384 / n ..= (p + 1) * 16384 / n - 1`; then come the replicas,
//! `primaries + p * replicas_per_primary + r` being replica `r` of primary
//! `p`. These are the roles the cluster starts with; a test that fails
//! nodes over or migrates slots asks the cluster itself
//! ([`RedisCluster::slots`], [`RedisCluster::node_for_slot`]).
//!
//! Commands that change the cluster go through `redis-cli`, as an operator
//! would type them. Reads that the support parses (`CLUSTER SLOTS`,
//! `CLUSTER INFO`, `CLUSTER NODES`, `CLUSTER GETKEYSINSLOT`) use a tiny
//! blocking RESP2 client ([`query`]) so nested replies and binary keys are
//! read exactly.
//!
//! A cluster is ok about 2.1 s after it starts, replicas or not: Redis keeps
//! a primary's `cluster_state` at `fail` for its first 2 s. Two steps get it
//! there without waiting for the cluster bus's own pace (a node may wait
//! node-timeout / 2 = 2.5 s before it pings another, and only then learn
//! that node's slots or role): every node drops its outgoing bus links once
//! all have met, which makes each reconnect and PING at once, and, with
//! replicas, each primary sends a FLUSHALL of its empty data set so that its
//! replicas' offsets leave 0 (see `form`).
//!
//! There is no event for "the cluster agrees": the waits poll every 10 ms
//! and panic, naming what disagrees, after a bound (20 s).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use redis_layers::Endpoint;

use super::{free_port, redis_cli, RedisServer};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long the support waits for the cluster to form or agree.
pub const WAIT: Duration = Duration::from_secs(20);

const POLL: Duration = Duration::from_millis(10);

// ===== builder =====

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    primaries: usize,
    replicas_per_primary: usize,
    args: Vec<String>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            primaries: 3,
            replicas_per_primary: 0,
            args: Vec::new(),
        }
    }
}

impl ClusterBuilder {
    /// Number of primaries (default 3); the slots are split evenly.
    pub fn primaries(mut self, n: usize) -> Self {
        assert!(
            (1..=SLOTS as usize).contains(&n),
            "primaries must be 1..=16384"
        );
        self.primaries = n;
        self
    }

    /// Replicas of every primary (default 0).
    pub fn replicas_per_primary(mut self, n: usize) -> Self {
        self.replicas_per_primary = n;
        self
    }

    /// Another `redis-server` argument for every node, e.g. `"--maxclients"`
    /// then `"100"`. They come after the support's own, so they win:
    /// `"--cluster-node-timeout"`, `"1000"` speeds up failover tests.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// Starts the nodes, forms the cluster and waits until it is ok and every
    /// node agrees on the slot layout; panics (failing the test) otherwise.
    pub fn start(self) -> RedisCluster {
        let began = Instant::now();
        let n = self.primaries;
        let total = n * (1 + self.replicas_per_primary);
        // All nodes start at once: a primary reports `cluster_state:ok` no
        // sooner than 2 s after it starts (Redis's CLUSTER_WRITABLE_DELAY),
        // so that clock should start as early as possible.
        let (nodes, bus_ports): (Vec<RedisServer>, Vec<u16>) = std::thread::scope(|s| {
            let handles: Vec<_> = (0..total)
                .map(|_| s.spawn(|| start_node(&self.args)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).unzip()
        });
        let ids: Vec<String> = nodes
            .iter()
            .map(|node| {
                let id = node.cli(&["CLUSTER", "MYID"]);
                assert!(
                    id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                    "CLUSTER MYID on port {}: {id:?}",
                    node.port()
                );
                id
            })
            .collect();
        let cluster = RedisCluster {
            nodes,
            ids,
            bus_ports,
            primaries: n,
            replicas_per_primary: self.replicas_per_primary,
        };
        cluster.form();
        let layout = cluster.expected_layout();
        cluster.wait_for("the cluster to form", Some(&layout), began);
        cluster
    }
}

/// A cluster node and its cluster bus port.
fn start_node(extra: &[String]) -> (RedisServer, u16) {
    // The cluster bus listens on a port of its own; by default that is
    // port + 10000, which is above 65535 for a fifth of the ephemeral ports,
    // so it is chosen explicitly. If someone takes it before the server binds
    // it, the server exits and the builder gives up after its retries: try
    // again with another bus port.
    let mut last = None;
    for _ in 0..3 {
        let bus_port = free_port();
        let bus = bus_port.to_string();
        let mut b = RedisServer::builder();
        for a in [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
            "--cluster-port",
            &bus,
            // Announce the address the tests use, so `CLUSTER SLOTS` and
            // `MOVED` name 127.0.0.1 from the start.
            "--cluster-announce-ip",
            "127.0.0.1",
            // Replicas sync at once instead of after the default 5 s wait
            // for more replicas.
            "--repl-diskless-sync-delay",
            "0",
        ] {
            b = b.arg(a);
        }
        for a in extra {
            b = b.arg(a);
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.start())) {
            Ok(server) => return (server, bus_port),
            Err(e) => last = Some(e),
        }
    }
    std::panic::resume_unwind(last.unwrap())
}

// ===== the cluster =====

/// A running Redis Cluster; every node is killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    ids: Vec<String>,
    bus_ports: Vec<u16>,
    primaries: usize,
    replicas_per_primary: usize,
}

/// One entry of a node's `CLUSTER SLOTS`, by port (every node is on
/// 127.0.0.1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    /// Port of the primary serving the range.
    pub primary: u16,
    /// Ports of its replicas, sorted.
    pub replicas: Vec<u16>,
}

impl RedisCluster {
    /// Three primaries, no replicas.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// A cluster with options.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Kills node `i` (SIGKILL), as a crash would; its replica takes over
    /// after `cluster-node-timeout`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Every node: the primaries, then the replicas.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes started as primaries (indices `0..primaries`).
    pub fn primaries(&self) -> &[RedisServer] {
        &self.nodes[..self.primaries]
    }

    /// The nodes started as replicas (indices `primaries..`).
    pub fn replicas(&self) -> &[RedisServer] {
        &self.nodes[self.primaries..]
    }

    /// Indices of the replicas started for primary `p`.
    pub fn replicas_of(&self, p: usize) -> std::ops::Range<usize> {
        assert!(p < self.primaries, "node {p} was not started as a primary");
        let first = self.primaries + p * self.replicas_per_primary;
        first..first + self.replicas_per_primary
    }

    /// Node `i`'s TCP endpoint.
    pub fn endpoint(&self, i: usize) -> Endpoint {
        self.nodes[i].endpoint()
    }

    /// Every node's port, in node order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The node listening on `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// The node at `addr` as a `MOVED`/`ASK` reply names it (`host:port`).
    pub fn index_of_addr(&self, addr: &str) -> Option<usize> {
        let (_, port) = addr.rsplit_once(':')?;
        self.index_of_port(port.parse().ok()?)
    }

    /// Node `i`'s cluster bus port (`--cluster-port`).
    pub fn bus_port(&self, i: usize) -> u16 {
        self.bus_ports[i]
    }

    /// Node `i`'s cluster node id (`CLUSTER MYID`, read at start).
    pub fn node_id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The slots a primary was given at start.
    pub fn initial_range(&self, p: usize) -> std::ops::RangeInclusive<u16> {
        assert!(p < self.primaries, "node {p} was not started as a primary");
        let n = self.primaries;
        let start = p * SLOTS as usize / n;
        let end = (p + 1) * SLOTS as usize / n - 1;
        start as u16..=end as u16
    }

    /// The hash slot of `key` (see [`slot_of`]).
    pub fn slot_of(&self, key: impl AsRef<[u8]>) -> u16 {
        slot_of(key)
    }

    /// The node serving `slot` now, as the cluster says (the first node that
    /// answers `CLUSTER SLOTS`); panics if no node serves it.
    pub fn node_for_slot(&self, slot: u16) -> usize {
        assert!(slot < SLOTS, "slot {slot} out of range");
        let view = self
            .nodes
            .iter()
            .find_map(|n| cluster_slots(n.port()).ok())
            .expect("no node answered CLUSTER SLOTS");
        let range = view
            .iter()
            .find(|r| (r.start..=r.end).contains(&slot))
            .unwrap_or_else(|| panic!("slot {slot} is not served: {view:?}"));
        self.index_of_port(range.primary)
            .unwrap_or_else(|| panic!("slot {slot} served by unknown port {}", range.primary))
    }

    /// The node serving `key`'s slot now.
    pub fn node_for_key(&self, key: impl AsRef<[u8]>) -> usize {
        self.node_for_slot(slot_of(key))
    }

    /// Node `i`'s `CLUSTER SLOTS`, sorted by first slot.
    pub fn slots(&self, i: usize) -> Vec<SlotRange> {
        cluster_slots(self.nodes[i].port())
            .unwrap_or_else(|e| panic!("CLUSTER SLOTS on node {i}: {e}"))
    }

    /// Node `i`'s `CLUSTER INFO` field `field` (e.g. `cluster_state`).
    pub fn info(&self, i: usize, field: &str) -> Option<String> {
        cluster_info(self.nodes[i].port())
            .ok()?
            .into_iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v)
    }

    /// Sends one command to node `i` over a fresh RESP2 connection and
    /// returns the reply (error replies included); panics on I/O errors.
    pub fn query(&self, i: usize, args: &[&[u8]]) -> Reply {
        query(self.nodes[i].port(), args)
            .unwrap_or_else(|e| panic!("{} on node {i}: {e}", show(args)))
    }

    /// Waits (bounded by [`WAIT`]) until every node reports
    /// `cluster_state:ok`, every slot is served, and every node's
    /// `CLUSTER SLOTS` is the same; for use after a migration or failover.
    pub fn wait_consistent(&self) {
        self.wait_for("every node to agree on CLUSTER SLOTS", None, Instant::now());
    }

    // ===== slot migration =====

    /// Moves `slot` and its keys from primary `from` to primary `to` the way
    /// `redis-cli --cluster reshard` does: [`begin_migration`],
    /// [`move_keys`], [`finish_migration`]. Returns the number of keys moved.
    /// Call [`wait_consistent`] afterwards to wait for the whole cluster.
    ///
    /// [`begin_migration`]: Self::begin_migration
    /// [`move_keys`]: Self::move_keys
    /// [`finish_migration`]: Self::finish_migration
    /// [`wait_consistent`]: Self::wait_consistent
    pub fn migrate_slot(&self, slot: u16, from: usize, to: usize) -> usize {
        self.begin_migration(slot, from, to);
        let moved = self.move_keys(slot, from, to);
        self.finish_migration(slot, from, to);
        moved
    }

    /// `CLUSTER SETSLOT slot IMPORTING from-id` on `to`, then
    /// `CLUSTER SETSLOT slot MIGRATING to-id` on `from`. From here on `from`
    /// answers `ASK` for keys of the slot it no longer has.
    pub fn begin_migration(&self, slot: u16, from: usize, to: usize) {
        assert_ne!(from, to, "migrating slot {slot} to the node it is on");
        let s = slot.to_string();
        self.cli_ok(
            to,
            &["CLUSTER", "SETSLOT", &s, "IMPORTING", &self.ids[from]],
        );
        self.cli_ok(
            from,
            &["CLUSTER", "SETSLOT", &s, "MIGRATING", &self.ids[to]],
        );
    }

    /// Moves every key of `slot` from `from` to `to`, up to 100 at a time
    /// (`CLUSTER GETKEYSINSLOT`, then `MIGRATE host port "" 0 5000 KEYS ...`).
    /// Returns the number of keys moved.
    pub fn move_keys(&self, slot: u16, from: usize, to: usize) -> usize {
        let mut moved = 0;
        let deadline = Instant::now() + WAIT;
        loop {
            let keys = self.keys_in_slot(from, slot, 100);
            if keys.is_empty() {
                return moved;
            }
            let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            self.migrate_keys(from, to, &keys);
            moved += keys.len();
            assert!(
                Instant::now() < deadline,
                "moving the keys of slot {slot} took over {WAIT:?}"
            );
        }
    }

    /// `MIGRATE` the given keys from node `from` to node `to` (one call).
    pub fn migrate_keys(&self, from: usize, to: usize, keys: &[&[u8]]) {
        if keys.is_empty() {
            return;
        }
        let port = self.nodes[to].port().to_string();
        let mut args: Vec<&[u8]> = vec![
            b"MIGRATE",
            b"127.0.0.1",
            port.as_bytes(),
            b"",
            b"0",
            b"5000",
            b"KEYS",
        ];
        args.extend_from_slice(keys);
        let out = cli_bytes(self.nodes[from].port(), &args);
        assert!(
            out == "OK" || out == "NOKEY",
            "MIGRATE of {} keys from node {from} to node {to}: {out}",
            keys.len()
        );
    }

    /// Up to `count` keys of `slot` held by node `i` (`CLUSTER GETKEYSINSLOT`).
    pub fn keys_in_slot(&self, i: usize, slot: u16, count: usize) -> Vec<Vec<u8>> {
        let s = slot.to_string();
        let c = count.to_string();
        match self.query(
            i,
            &[b"CLUSTER", b"GETKEYSINSLOT", s.as_bytes(), c.as_bytes()],
        ) {
            Reply::Array(Some(keys)) => keys
                .into_iter()
                .map(|k| match k {
                    Reply::Bulk(Some(k)) => k,
                    other => panic!("CLUSTER GETKEYSINSLOT: unexpected {other:?}"),
                })
                .collect(),
            other => panic!("CLUSTER GETKEYSINSLOT {slot} on node {i}: {other:?}"),
        }
    }

    /// `CLUSTER SETSLOT slot NODE to-id` on `to`, then on `from`, then on
    /// every other node (the order the Redis manual prescribes). Afterwards
    /// `to` serves the slot and `from` answers `MOVED`.
    pub fn finish_migration(&self, slot: u16, from: usize, to: usize) {
        let s = slot.to_string();
        let args = ["CLUSTER", "SETSLOT", &s, "NODE", &self.ids[to]];
        self.cli_ok(to, &args);
        self.cli_ok(from, &args);
        // The other primaries; replicas refuse SETSLOT (their primaries'
        // bus messages tell them), as `redis-cli --cluster` knows.
        for i in 0..self.primaries {
            if i != from && i != to {
                self.cli_ok(i, &args);
            }
        }
    }

    // ===== forming and waiting =====

    fn form(&self) {
        let total = self.nodes.len();
        // Distinct config epochs before the nodes meet, as
        // `redis-cli --cluster create` does: no epoch collisions to resolve.
        for i in 0..total {
            let epoch = (i + 1).to_string();
            self.cli_ok(i, &["CLUSTER", "SET-CONFIG-EPOCH", &epoch]);
        }
        for p in 0..self.primaries {
            let r = self.initial_range(p);
            let (start, end) = (r.start().to_string(), r.end().to_string());
            self.cli_ok(p, &["CLUSTER", "ADDSLOTSRANGE", &start, &end]);
        }
        // Every pair meets directly rather than through gossip.
        for i in 0..total {
            for j in i + 1..total {
                self.meet(i, j);
            }
        }
        // A replica can only follow a primary it knows.
        for p in 0..self.primaries {
            for r in self.replicas_of(p) {
                self.wait_until(&format!("node {r} to learn of node {p}"), || {
                    self.knows(r, p)
                });
                self.cli_ok(r, &["CLUSTER", "REPLICATE", &self.ids[p]]);
            }
        }
        self.wait_until("every node to know every node", || {
            (0..total).all(|i| (0..total).all(|j| self.knows(i, j)))
        });
        // `CLUSTER SLOTS` lists a replica only once the other nodes have
        // heard a replication offset other than 0 from it, and a fresh
        // primary writes nothing to its replication stream until its first
        // PING to its replicas, 10 s on. So once the replicas are in sync,
        // each primary sends an (always propagated) FLUSHALL of its empty
        // data set.
        let replicas = self.primaries..total;
        for r in replicas.clone() {
            self.wait_until(&format!("replica {r} to sync"), || {
                self.replication_field(r, "master_link_status").as_deref() == Some("up")
            });
        }
        if !replicas.is_empty() {
            for p in 0..self.primaries {
                self.cli_ok(p, &["FLUSHALL"]);
            }
        }
        for r in replicas {
            self.wait_until(&format!("replica {r} to apply a write"), || {
                self.replication_field(r, "slave_repl_offset")
                    .and_then(|o| o.parse::<u64>().ok())
                    .is_some_and(|o| o > 0)
            });
        }
        // A node takes another's slots, role, primary and offset from the
        // header of that node's PING or PONG, but not from the messages of
        // their handshake, nor those sent before a CLUSTER REPLICATE, and
        // the next PING may come node-timeout / 2 (2.5 s) later. Every node
        // therefore drops its outgoing cluster-bus link to every other node
        // (DEBUG CLUSTERLINK KILL, a test hook of Redis 7): it reconnects
        // within 100 ms and opens the new link with a PING. Redis 7.0
        // crashes on a KILL of a link that is down (its pointer is null), so
        // only the links `CLUSTER LINKS` lists are dropped: a missing one is
        // being reopened, and a new link opens with a PING anyway.
        for i in 0..total {
            for j in self.outgoing_links(i) {
                let id = self.ids[j].as_bytes();
                match self.query(i, &[b"DEBUG", b"CLUSTERLINK", b"KILL", b"to", id]) {
                    Reply::Status(ok) if ok == "OK" => {}
                    other => panic!("DEBUG CLUSTERLINK KILL to node {j} on node {i}: {other:?}"),
                }
            }
        }
    }

    /// The nodes that node `i` has an outgoing cluster-bus link to now.
    fn outgoing_links(&self, i: usize) -> Vec<usize> {
        let Reply::Array(Some(links)) = self.query(i, &[b"CLUSTER", b"LINKS"]) else {
            panic!("CLUSTER LINKS on node {i} is not an array");
        };
        let field = |fields: &[Reply], name: &str| {
            fields.chunks(2).find_map(|kv| match kv {
                [Reply::Bulk(Some(k)), Reply::Bulk(Some(v))] if k == name.as_bytes() => {
                    Some(String::from_utf8_lossy(v).into_owned())
                }
                _ => None,
            })
        };
        links
            .iter()
            .filter_map(|link| {
                let Reply::Array(Some(fields)) = link else {
                    return None;
                };
                if field(fields, "direction")? != "to" {
                    return None;
                }
                let node = field(fields, "node")?;
                self.ids.iter().position(|id| *id == node)
            })
            .filter(|&j| j != i)
            .collect()
    }

    /// `CLUSTER MEET` node `j` from node `i`. The bus port must be given: it
    /// is not the default port + 10000.
    fn meet(&self, i: usize, j: usize) {
        let port = self.nodes[j].port().to_string();
        let bus = self.bus_ports[j].to_string();
        self.cli_ok(i, &["CLUSTER", "MEET", "127.0.0.1", &port, &bus]);
    }

    /// Polls `cond` until it holds; panics after [`WAIT`] with the nodes'
    /// views.
    fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {WAIT:?} waiting for {what}{}",
                    self.report()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn report(&self) -> String {
        let mut report = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            report += &format!(
                "\n  node {i} (port {}, bus port {}, id {}): cluster_state={:?} slots={:?}\n    CLUSTER NODES:\n{}",
                n.port(),
                self.bus_ports[i],
                self.ids[i],
                self.info(i, "cluster_state"),
                cluster_slots(n.port()),
                n.cli(&["CLUSTER", "NODES"]),
            );
        }
        report
    }

    /// Node `i`'s `INFO replication` field `field`.
    fn replication_field(&self, i: usize, field: &str) -> Option<String> {
        match query(self.nodes[i].port(), &[b"INFO", b"replication"]) {
            Ok(Reply::Bulk(Some(text))) => String::from_utf8_lossy(&text)
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .map(|v| v.trim().to_string()),
            _ => None,
        }
    }

    /// Node `i`'s `CLUSTER NODES` lists node `j`, handshake done.
    fn knows(&self, i: usize, j: usize) -> bool {
        let Ok(Reply::Bulk(Some(text))) = query(self.nodes[i].port(), &[b"CLUSTER", b"NODES"])
        else {
            return false;
        };
        String::from_utf8_lossy(&text).lines().any(|line| {
            // <id> <ip:port@cport> <flags> ...
            let mut f = line.split(' ');
            f.next() == Some(self.ids[j].as_str())
                && f.nth(1).is_some_and(|flags| !flags.contains("handshake"))
        })
    }

    /// The layout the cluster was started with.
    fn expected_layout(&self) -> Vec<SlotRange> {
        let mut layout: Vec<SlotRange> = (0..self.primaries)
            .map(|p| {
                let r = self.initial_range(p);
                let mut replicas: Vec<u16> =
                    self.replicas_of(p).map(|i| self.nodes[i].port()).collect();
                replicas.sort_unstable();
                SlotRange {
                    start: *r.start(),
                    end: *r.end(),
                    primary: self.nodes[p].port(),
                    replicas,
                }
            })
            .collect();
        layout.sort();
        layout
    }

    /// Polls until every node is ok and shows the same `CLUSTER SLOTS`
    /// covering all slots (and, if `expected` gives one, that layout).
    fn wait_for(&self, what: &str, expected: Option<&[SlotRange]>, began: Instant) {
        let deadline = Instant::now() + WAIT;
        loop {
            let problem = match self.check(expected) {
                Ok(()) => return,
                Err(p) => p,
            };
            if Instant::now() > deadline {
                panic!(
                    "timed out after {:?} waiting for {what}: {problem}{}",
                    began.elapsed(),
                    self.report()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn check(&self, expected: Option<&[SlotRange]>) -> Result<(), String> {
        let mut first: Option<Vec<SlotRange>> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            let state = self.info(i, "cluster_state");
            if state.as_deref() != Some("ok") {
                return Err(format!("node {i} reports cluster_state {state:?}"));
            }
            if expected.is_some() {
                // Right after forming: no node is still in a handshake.
                let known = self.info(i, "cluster_known_nodes");
                if known != Some(self.nodes.len().to_string()) {
                    return Err(format!("node {i} knows {known:?} nodes"));
                }
            }
            let view = cluster_slots(n.port()).map_err(|e| format!("node {i}: {e}"))?;
            match &first {
                None => {
                    covers_all(&view).map_err(|e| format!("node {i}: {e}"))?;
                    if let Some(exp) = expected {
                        if view != exp {
                            return Err(format!("node {i} shows {view:?}, expected {exp:?}"));
                        }
                    }
                    first = Some(view);
                }
                Some(f) if *f != view => {
                    return Err(format!("node 0 shows {f:?} but node {i} shows {view:?}"))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Sends `args` to node `i` and expects `+OK`; otherwise panics with
    /// the error reply, or the reason there was none (a crashed node).
    fn cli_ok(&self, i: usize, args: &[&str]) {
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match query(self.nodes[i].port(), &bytes) {
            Ok(Reply::Status(ok)) if ok == "OK" => {}
            other => panic!("{} on node {i}: {other:?}", args.join(" ")),
        }
    }
}

fn covers_all(view: &[SlotRange]) -> Result<(), String> {
    let mut next = 0u32;
    for r in view {
        if u32::from(r.start) != next || r.end < r.start {
            return Err(format!(
                "slots from {next} are not served in order: {view:?}"
            ));
        }
        next = u32::from(r.end) + 1;
    }
    if next != u32::from(SLOTS) {
        return Err(format!("slots from {next} are not served: {view:?}"));
    }
    Ok(())
}

fn show(args: &[&[u8]]) -> String {
    args.iter()
        .map(|a| String::from_utf8_lossy(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `redis-cli` with arguments that need not be UTF-8 (keys).
fn cli_bytes(port: u16, args: &[&[u8]]) -> String {
    redis_cli(port, args.iter().map(|a| OsStr::from_bytes(a)))
        .trim()
        .to_string()
}

// ===== hash slots =====

/// CRC16-XMODEM, the checksum Redis Cluster hashes keys with: the
/// library's ([`redis_layers::cluster::slot::crc16`]), which
/// `tests/cluster_blocks.rs` checks against the server's `CLUSTER KEYSLOT`.
pub fn crc16(data: &[u8]) -> u16 {
    redis_layers::cluster::slot::crc16(data)
}

/// The hash slot of `key`, hash tags included: the library's
/// [`redis_layers::cluster::slot::key_slot`].
pub fn slot_of(key: impl AsRef<[u8]>) -> u16 {
    redis_layers::cluster::slot::key_slot(key.as_ref())
}

// ===== a tiny blocking RESP2 client =====

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A numeric field of `INFO section` on the server on `port` (the query's
/// own connection is counted in it).
pub fn info_field(port: u16, section: &str, field: &str) -> u64 {
    let Ok(Reply::Bulk(Some(info))) = query(port, &[b"INFO", section.as_bytes()]) else {
        panic!("INFO {section} on port {port}")
    };
    let info = String::from_utf8(info).expect("INFO is text");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{field}: {e}"))
}

/// Waits (bounded: 5 s) until the server on `port` has `n` blocked
/// clients. Polls: the server sends no event for it.
pub async fn blocked_clients(port: u16, n: u64) {
    for _ in 0..500 {
        if info_field(port, "clients", "blocked_clients") == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server on port {port} never had {n} blocked clients");
}

/// The port among `ports` whose server serves `key` (the others answer
/// `MOVED`).
pub fn port_serving(ports: &[u16], key: &[u8]) -> u16 {
    *ports
        .iter()
        .find(|&&port| {
            !matches!(query(port, &[b"EXISTS", key]),
                Ok(Reply::Error(e)) if e.starts_with("MOVED"))
        })
        .unwrap_or_else(|| panic!("no server serves {}", String::from_utf8_lossy(key)))
}

/// Sends one command to the server on `port` over a fresh connection and
/// reads its reply (bounded: 5 s to connect, read and write).
pub fn query(port: u16, args: &[&[u8]]) -> Result<Reply, String> {
    let timeout = Duration::from_secs(5);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    (&stream).write_all(&req).map_err(|e| e.to_string())?;
    read_reply(&mut BufReader::new(&stream))
}

fn read_reply(r: &mut impl BufRead) -> Result<Reply, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line
        .strip_suffix("\r\n")
        .ok_or_else(|| format!("truncated reply line {line:?}"))?;
    let (kind, rest) = line.split_at(1.min(line.len()));
    let int = || {
        rest.parse::<i64>()
            .map_err(|_| format!("bad length or integer {line:?}"))
    };
    Ok(match kind {
        "+" => Reply::Status(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Int(int()?),
        "$" => match int()? {
            -1 => Reply::Bulk(None),
            n => {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf).map_err(|e| e.to_string())?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
        },
        "*" => match int()? {
            -1 => Reply::Array(None),
            n => Reply::Array(Some(
                (0..n).map(|_| read_reply(r)).collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(format!("unexpected reply line {line:?}")),
    })
}

/// `CLUSTER SLOTS` on `port`, normalised: sorted by first slot, replicas
/// sorted, nodes by port.
fn cluster_slots(port: u16) -> Result<Vec<SlotRange>, String> {
    let reply = query(port, &[b"CLUSTER", b"SLOTS"])?;
    let Reply::Array(Some(entries)) = reply else {
        return Err(format!("CLUSTER SLOTS: {reply:?}"));
    };
    let node_port = |node: &Reply| match node {
        Reply::Array(Some(f)) if f.len() >= 2 => match (&f[0], &f[1]) {
            (Reply::Bulk(Some(ip)), Reply::Int(p)) if ip.as_slice() == b"127.0.0.1" => {
                u16::try_from(*p).ok()
            }
            _ => None,
        },
        _ => None,
    };
    let mut view = Vec::with_capacity(entries.len());
    for e in &entries {
        let bad = || format!("CLUSTER SLOTS entry {e:?}");
        let Reply::Array(Some(f)) = e else {
            return Err(bad());
        };
        let (Some(Reply::Int(start)), Some(Reply::Int(end)), Some(primary)) =
            (f.first(), f.get(1), f.get(2).and_then(node_port))
        else {
            return Err(bad());
        };
        let mut replicas = f[3..]
            .iter()
            .map(node_port)
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(bad)?;
        replicas.sort_unstable();
        view.push(SlotRange {
            start: u16::try_from(*start).map_err(|_| bad())?,
            end: u16::try_from(*end).map_err(|_| bad())?,
            primary,
            replicas,
        });
    }
    view.sort();
    Ok(view)
}

/// `CLUSTER INFO` on `port` as `(field, value)` pairs.
fn cluster_info(port: u16) -> Result<Vec<(String, String)>, String> {
    match query(port, &[b"CLUSTER", b"INFO"])? {
        Reply::Bulk(Some(text)) => Ok(String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()),
        other => Err(format!("CLUSTER INFO: {other:?}")),
    }
}

mod support;

// The cluster test support (tests/support/cluster.rs) against itself and
// redis-server 7.0: the cluster forms with every slot served and every node
// agreeing, our CRC16/hash-tag slot function matches `CLUSTER KEYSLOT`, keys
// land where `redis-cli -c` puts them, a real slot migration moves a slot
// with its keys (ASK while it runs, MOVED after), and replicas come up.
//
// Every test runs its body on a thread with a deadline (`with_cluster`); on
// timeout the nodes are shut down and the test fails.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_layers::{cmd, Connection, Connector, Error, RedirectKind, Value};
use support::cluster::{crc16, slot_of, ClusterBuilder, RedisCluster, SlotRange, SLOTS};

// ===== helpers =====

/// Starts a cluster (its start is bounded by the support), then runs `body`
/// on its own thread; fails the test if the body takes over `secs`.
fn with_cluster(
    builder: ClusterBuilder,
    secs: u64,
    body: impl FnOnce(&RedisCluster) + Send + 'static,
) {
    let began = Instant::now();
    let cluster = Arc::new(builder.start());
    eprintln!(
        "cluster of {} nodes ok after {:?}",
        cluster.nodes().len(),
        began.elapsed()
    );
    let c = cluster.clone();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        body(&c);
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => thread.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // The body still holds the cluster: stop the servers here.
            for n in cluster.nodes() {
                n.cli(&["SHUTDOWN", "NOSAVE"]);
            }
            panic!("test body did not finish within {secs} s");
        }
    }
    eprintln!("test done after {:?}", began.elapsed());
}

/// Runs a future to completion on a fresh current-thread runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `redis-cli -c` (follows MOVED/ASK) on node `i`.
fn cli_c(c: &RedisCluster, i: usize, args: &[&str]) -> String {
    let mut all = vec!["-c"];
    all.extend_from_slice(args);
    c.nodes()[i].cli(&all)
}

fn addr(c: &RedisCluster, i: usize) -> String {
    format!("127.0.0.1:{}", c.nodes()[i].port())
}

async fn connect(c: &RedisCluster, i: usize) -> Connection {
    Connector::new().connect(c.endpoint(i)).await.unwrap()
}

/// A GET through our crate's Connection that must be redirected: returns
/// the redirect's kind, slot and target address.
async fn redirect_of(conn: &Connection, key: &str) -> (RedirectKind, u16, String) {
    match conn.send_cmd(cmd("GET").arg(key)).await {
        Err(Error::Server(e)) => {
            let r = e
                .redirect()
                .unwrap_or_else(|| panic!("GET {key}: not a redirect: {e:?}"));
            (r.kind, r.slot, r.addr)
        }
        other => panic!("GET {key}: expected a redirect, got {other:?}"),
    }
}

// ===== tests =====

#[test]
fn crc16_is_xmodem() {
    // The CRC-16/XMODEM check value, and the slots the Redis Cluster spec
    // gives as examples.
    assert_eq!(crc16(b"123456789"), 0x31C3);
    assert_eq!(crc16(b""), 0);
    assert_eq!(slot_of("123456789"), 0x31C3);
    assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
    assert_eq!(slot_of("{user1000}.followers"), slot_of("user1000"));
    assert_eq!(slot_of("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
    assert_eq!(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    assert_eq!(slot_of("foo{bar}{zap}"), slot_of("bar"));
}

#[test]
fn cluster_comes_up_with_every_slot_covered_and_all_nodes_agreeing() {
    let began = Instant::now();
    with_cluster(RedisCluster::builder(), 30, move |c| {
        let up = began.elapsed();
        assert!(up < Duration::from_secs(10), "cluster took {up:?} to form");
        assert_eq!(c.nodes().len(), 3);
        assert_eq!(c.primaries().len(), 3);
        assert!(c.replicas().is_empty());

        let ports = c.ports();
        assert!(!ports.contains(&6379));
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "ports {ports:?}");

        // Ids: what the node says, distinct.
        for i in 0..3 {
            assert_eq!(c.nodes()[i].cli(&["CLUSTER", "MYID"]), c.node_id(i));
            assert_eq!(c.endpoint(i).to_string(), addr(c, i));
        }
        assert_ne!(c.node_id(0), c.node_id(1));
        assert_ne!(c.node_id(1), c.node_id(2));
        assert_ne!(c.node_id(0), c.node_id(2));

        // Every slot served, evenly, in node order, by the node's own view.
        let expected: Vec<SlotRange> = (0..3)
            .map(|p| SlotRange {
                start: *c.initial_range(p).start(),
                end: *c.initial_range(p).end(),
                primary: ports[p],
                replicas: vec![],
            })
            .collect();
        assert_eq!(expected[0].start, 0);
        assert_eq!(expected[2].end, SLOTS - 1);
        for w in expected.windows(2) {
            assert_eq!(w[0].end + 1, w[1].start);
        }
        for r in &expected {
            let size = r.end - r.start + 1;
            assert!((5461..=5462).contains(&size), "uneven split {expected:?}");
        }
        for i in 0..3 {
            assert_eq!(c.slots(i), expected, "node {i}'s CLUSTER SLOTS");
            let info = |f| c.info(i, f).unwrap_or_default();
            assert_eq!(info("cluster_state"), "ok", "node {i}");
            assert_eq!(info("cluster_slots_assigned"), "16384", "node {i}");
            assert_eq!(info("cluster_slots_ok"), "16384", "node {i}");
            assert_eq!(info("cluster_known_nodes"), "3", "node {i}");
            assert_eq!(info("cluster_size"), "3", "node {i}");
            assert!(c.nodes()[i].cli(&["ROLE"]).starts_with("master"));
        }
        for p in 0..3 {
            let r = c.initial_range(p);
            assert_eq!(c.node_for_slot(*r.start()), p);
            assert_eq!(c.node_for_slot(*r.end()), p);
        }
        c.wait_consistent();
    });
}

#[test]
fn slot_of_matches_cluster_keyslot() {
    with_cluster(RedisCluster::builder().primaries(1), 30, |c| {
        let mut keys: Vec<String> = [
            "",
            "a",
            "foo",
            "bar",
            "123456789",
            "{user1000}.following",
            "{user1000}.followers",
            "user1000",
            "foo{}{bar}",
            "foo{{bar}}zap",
            "foo{bar}{zap}",
            "{}",
            "{}a",
            "a{}",
            "{",
            "}",
            "}{",
            "a}b{c}",
            "{a",
            "a}",
            "{{}}",
            "{ }",
            "x{y}",
            "{tag}:1",
            "{tag}:2",
            "prefix{tag}suffix",
            "ключ{тег}",
            "ключ",
            "a b c",
            "{a b}c",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        keys.extend((0..20).map(|i| format!("key:{i}:{}", i * 7919)));
        assert_eq!(keys.len(), 50);
        for key in &keys {
            let server: u16 = c.nodes()[0]
                .cli(&["CLUSTER", "KEYSLOT", key])
                .parse()
                .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key:?}: {e}"));
            assert_eq!(slot_of(key), server, "slot of {key:?}");
            assert_eq!(c.slot_of(key), server, "slot of {key:?}");
        }
    });
}

#[test]
fn keys_written_with_cli_cluster_mode_are_readable() {
    with_cluster(RedisCluster::builder(), 60, |c| {
        let keys: Vec<String> = (0..100).map(|i| format!("spread:{i}")).collect();
        for (n, key) in keys.iter().enumerate() {
            // Written through node 0, which redirects most of them.
            assert_eq!(cli_c(c, 0, &["SET", key, &format!("v{n}")]), "OK");
        }
        let mut slots: Vec<u16> = keys.iter().map(slot_of).collect();
        slots.sort_unstable();
        slots.dedup();
        assert!(slots.len() > 90, "only {} slots", slots.len());
        let mut per_node = [0; 3];
        for (n, key) in keys.iter().enumerate() {
            let v = format!("v{n}");
            // Through another node, following redirects.
            assert_eq!(cli_c(c, 2, &["GET", key]), v, "{key}");
            // From the owner, as our slot map says, without redirects.
            let owner = c.node_for_key(key);
            per_node[owner] += 1;
            assert_eq!(c.nodes()[owner].cli(&["GET", key]), v, "{key} on {owner}");
        }
        assert!(
            per_node.iter().all(|&k| k > 10),
            "keys per node {per_node:?}"
        );

        // Our Connection sees MOVED to the owner from every other node.
        block_on(async {
            let conns = [
                connect(c, 0).await,
                connect(c, 1).await,
                connect(c, 2).await,
            ];
            for (n, key) in keys.iter().enumerate() {
                let owner = c.node_for_key(key);
                for (i, conn) in conns.iter().enumerate() {
                    if i == owner {
                        assert_eq!(
                            conn.send_cmd(cmd("GET").arg(key.as_str())).await.unwrap(),
                            Value::BulkString(Bytes::from(format!("v{n}")))
                        );
                    } else {
                        let (kind, slot, to) = redirect_of(conn, key).await;
                        assert_eq!(kind, RedirectKind::Moved);
                        assert_eq!(slot, slot_of(key));
                        assert_eq!(to, addr(c, owner));
                    }
                }
            }
        });
    });
}

#[test]
fn migrate_slot_moves_a_slot_with_100_keys() {
    with_cluster(RedisCluster::builder(), 60, |c| {
        let slot = slot_of("{mig}");
        let from = c.node_for_slot(slot);
        let to = (from + 1) % 3;
        let keys: Vec<String> = (0..100).map(|i| format!("{{mig}}:{i}")).collect();
        for key in &keys {
            assert_eq!(slot_of(key), slot);
            assert_eq!(cli_c(c, to, &["SET", key, &format!("val-{key}")]), "OK");
        }
        // A neighbour on the same node that must stay put.
        let other = "{other}";
        assert_eq!(cli_c(c, 0, &["SET", other, "stay"]), "OK");
        let other_node = c.node_for_key(other);
        assert_eq!(
            c.nodes()[from].cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]),
            "100"
        );

        let t = Instant::now();
        assert_eq!(c.migrate_slot(slot, from, to), 100);
        let migrated = t.elapsed();
        c.wait_consistent();
        eprintln!(
            "slot {slot}: node {from} -> {to}, 100 keys in {migrated:?}, consistent after {:?}",
            t.elapsed()
        );

        // Every node's view is the same and gives the slot to `to`.
        let view = c.slots(0);
        for i in 0..3 {
            assert_eq!(c.slots(i), view, "node {i} disagrees");
        }
        let range = view
            .iter()
            .find(|r| (r.start..=r.end).contains(&slot))
            .unwrap();
        assert_eq!(range.primary, c.nodes()[to].port());
        assert_eq!(c.node_for_slot(slot), to);
        let s = slot.to_string();
        assert_eq!(
            c.nodes()[to].cli(&["CLUSTER", "COUNTKEYSINSLOT", &s]),
            "100"
        );
        assert_eq!(
            c.nodes()[from].cli(&["CLUSTER", "COUNTKEYSINSLOT", &s]),
            "0"
        );
        // The rest of `from`'s slots did not move.
        if slot > 0 && c.initial_range(from).contains(&(slot - 1)) {
            assert_eq!(c.node_for_slot(slot - 1), from);
        }
        if slot < SLOTS - 1 && c.initial_range(from).contains(&(slot + 1)) {
            assert_eq!(c.node_for_slot(slot + 1), from);
        }
        assert_eq!(c.node_for_key(other), other_node);
        assert_eq!(c.nodes()[other_node].cli(&["GET", other]), "stay");

        let moved = format!("MOVED {slot} {}", addr(c, to));
        for key in &keys {
            let v = format!("val-{key}");
            // Plain GET on the new owner: no redirect.
            assert_eq!(c.nodes()[to].cli(&["GET", key]), v);
            // The old owner sends clients there.
            assert_eq!(c.nodes()[from].cli(&["GET", key]), moved);
        }
        block_on(async {
            let conn = connect(c, from).await;
            for key in &keys {
                let (kind, s, target) = redirect_of(&conn, key).await;
                assert_eq!((kind, s, target), (RedirectKind::Moved, slot, addr(c, to)));
            }
        });

        // And back again, with the keys.
        assert_eq!(c.migrate_slot(slot, to, from), 100);
        c.wait_consistent();
        assert_eq!(c.node_for_slot(slot), from);
        assert_eq!(
            c.nodes()[from].cli(&["GET", &keys[7]]),
            format!("val-{}", keys[7])
        );
    });
}

#[test]
fn during_a_migration_the_source_answers_ask_for_moved_keys() {
    with_cluster(RedisCluster::builder(), 60, |c| {
        let slot = slot_of("{ask}");
        let from = c.node_for_slot(slot);
        let to = (from + 2) % 3;
        let keys: Vec<String> = (0..10).map(|i| format!("{{ask}}{i}")).collect();
        for key in &keys {
            assert_eq!(c.nodes()[from].cli(&["SET", key, key]), "OK");
        }
        c.begin_migration(slot, from, to);
        let (gone, stay) = keys.split_at(4);
        let gone_bytes: Vec<&[u8]> = gone.iter().map(|k| k.as_bytes()).collect();
        c.migrate_keys(from, to, &gone_bytes);
        assert_eq!(c.keys_in_slot(from, slot, 100).len(), 6);
        assert_eq!(c.keys_in_slot(to, slot, 100).len(), 4);

        let ask = format!("ASK {slot} {}", addr(c, to));
        let moved_back = format!("MOVED {slot} {}", addr(c, from));
        for key in gone {
            assert_eq!(c.nodes()[from].cli(&["GET", key]), ask);
            // The target serves the slot only after ASKING.
            assert_eq!(c.nodes()[to].cli(&["GET", key]), moved_back);
            assert_eq!(cli_c(c, from, &["GET", key]), *key);
        }
        for key in stay {
            assert_eq!(c.nodes()[from].cli(&["GET", key]), *key);
        }
        block_on(async {
            let src = connect(c, from).await;
            let dst = connect(c, to).await;
            dst.dedicate();
            for key in gone {
                let (kind, s, target) = redirect_of(&src, key).await;
                assert_eq!((kind, s, target), (RedirectKind::Ask, slot, addr(c, to)));
                dst.send_cmd(cmd("ASKING")).await.unwrap();
                assert_eq!(
                    dst.send_cmd(cmd("GET").arg(key.as_str())).await.unwrap(),
                    Value::BulkString(Bytes::from(key.clone()))
                );
            }
        });
        // Only the owner's view changes before SETSLOT NODE.
        assert_eq!(c.node_for_slot(slot), from);

        assert_eq!(c.move_keys(slot, from, to), 6);
        c.finish_migration(slot, from, to);
        c.wait_consistent();
        assert_eq!(c.node_for_slot(slot), to);
        for key in &keys {
            assert_eq!(c.nodes()[to].cli(&["GET", key]), *key);
        }
    });
}

#[test]
fn cluster_with_a_replica_per_primary_comes_up() {
    let began = Instant::now();
    with_cluster(
        RedisCluster::builder().replicas_per_primary(1),
        60,
        move |c| {
            eprintln!("6-node cluster ok after {:?}", began.elapsed());
            assert_eq!(c.nodes().len(), 6);
            assert_eq!(c.primaries().len(), 3);
            assert_eq!(c.replicas().len(), 3);
            let ports = c.ports();
            for i in 0..6 {
                assert_eq!(c.info(i, "cluster_known_nodes").as_deref(), Some("6"));
                assert_eq!(c.info(i, "cluster_size").as_deref(), Some("3"));
            }
            let view = c.slots(0);
            for p in 0..3 {
                let replicas: Vec<usize> = c.replicas_of(p).collect();
                assert_eq!(replicas, vec![3 + p]);
                assert_eq!(view[p].primary, ports[p]);
                assert_eq!(view[p].replicas, vec![ports[3 + p]]);

                let role = c.nodes()[p].cli(&["ROLE"]);
                assert!(role.starts_with("master"), "node {p}: {role}");
                // ROLE on a replica: slave, master host, master port, state, offset.
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    let role = c.nodes()[3 + p].cli(&["ROLE"]);
                    let f: Vec<&str> = role.lines().collect();
                    assert_eq!(f[0], "slave", "node {}: {role}", 3 + p);
                    assert_eq!(f[1..3], ["127.0.0.1", &ports[p].to_string()]);
                    if f[3] == "connected" {
                        break;
                    }
                    assert!(Instant::now() < deadline, "replica not in sync: {role}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                assert!(c.nodes()[p]
                    .cli(&["ROLE"])
                    .contains(&ports[3 + p].to_string()));
            }

            // A write on a primary shows up on its replica (READONLY reads).
            block_on(async {
                let key = "{rep}";
                let p = c.node_for_key(key);
                assert!(p < 3);
                let primary = connect(c, p).await;
                primary
                    .send_cmd(cmd("SET").arg(key).arg("x"))
                    .await
                    .unwrap();
                let replica = connect(c, 3 + p).await;
                replica.dedicate();
                replica.send_cmd(cmd("READONLY")).await.unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let v = replica.send_cmd(cmd("GET").arg(key)).await.unwrap();
                    if v == Value::BulkString("x".into()) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "replica never got the write: {v:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        },
    );
}

#[test]
fn extra_server_args_reach_every_node_and_win() {
    let builder = RedisCluster::builder()
        .primaries(2)
        .arg("--cluster-node-timeout")
        .arg("1000")
        .arg("--maxclients")
        .arg("77");
    with_cluster(builder, 30, |c| {
        for n in c.nodes() {
            let timeout = n.cli(&["CONFIG", "GET", "cluster-node-timeout"]);
            assert_eq!(timeout, "cluster-node-timeout\n1000");
            assert_eq!(n.cli(&["CONFIG", "GET", "maxclients"]), "maxclients\n77");
        }
        assert_eq!(c.initial_range(0), 0..=8191);
        assert_eq!(c.initial_range(1), 8192..=16383);
    });
}

//! The Cluster layer on a real Redis Cluster started by the test support
//! (3 primaries, 3 replicas): routing, hash tags, fan-out, pipelines split
//! per node, live resharding under an INCR ledger (with the simulator's
//! SMIGRATING/SMIGRATED and with plain `redis-cli --cluster reshard`), and a
//! primary killed under load.
#![cfg(feature = "sim")]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use redis_layers::cluster::{Cluster, ClusterConfig, ClusterLayer, NodeRole};
use redis_layers::handoff::{Handoff, HandoffLayer};
use redis_layers::maint::{MaintEvent, Maintained, MaintenanceConfig, Mode};
use redis_layers::relax::{RelaxTimeout, RelaxTimeoutLayer};
use redis_layers::{cmd, Cmd, Connector, Endpoint, Error, Pipeline, Request, Response, Value};
use support::cluster::{RedisCluster, Reply};
use support::ledger;
use support::sim::SimCluster;
use support::{bounded, within};
use tower::{Layer, Service, ServiceExt};

const STEP: Duration = Duration::from_secs(10);

type Node = RelaxTimeout<Handoff<Connector>>;

/// Each node: RelaxTimeout (2 s) over Handoff over a maintenance-aware
/// Connector, as the default stack builds it.
/// The live-resharding tests run one at a time: each drives a 32-task
/// ledger against a 6-node cluster, and three at once on a 2-core machine
/// (with the other tests) stall a client's task long enough to miss the
/// simulator's window between `SMIGRATED` and the source giving the slots
/// up, which the `SMIGRATED` test counts.
static LEDGERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn node_maker(mode: Mode) -> impl Fn(Endpoint, NodeRole) -> Node + Clone + Send + Sync + 'static {
    let config = MaintenanceConfig::default()
        .mode(mode)
        .relaxed_timeout(Duration::from_secs(5));
    let connector = Connector::new()
        .maintenance(config.clone())
        .expect("config");
    move |endpoint: Endpoint, role: NodeRole| {
        let connector = match role {
            NodeRole::Primary => connector.clone(),
            NodeRole::Replica => connector.clone().on_connect(cmd("READONLY")),
        };
        RelaxTimeoutLayer::new(Duration::from_secs(2)).layer(
            HandoffLayer::new(endpoint)
                .maintenance(&config)
                .expect("config")
                .layer(connector),
        )
    }
}

fn cluster_over(
    seeds: Vec<Endpoint>,
    mode: Mode,
) -> Cluster<impl Fn(Endpoint, NodeRole) -> Node + Clone + Send + Sync + 'static> {
    cluster_with(seeds, mode, ClusterConfig::default().refresh_interval(None))
}

fn cluster_with(
    seeds: Vec<Endpoint>,
    mode: Mode,
    config: ClusterConfig,
) -> Cluster<impl Fn(Endpoint, NodeRole) -> Node + Clone + Send + Sync + 'static> {
    ClusterLayer::new(seeds)
        .config(config)
        .layer(node_maker(mode))
}

/// `INFO commandstats` calls of `cmd` on node `i`.
fn calls(cluster: &RedisCluster, i: usize, cmd: &str) -> u64 {
    let Reply::Bulk(Some(info)) = cluster.query(i, &[b"INFO", b"commandstats"]) else {
        panic!("INFO on node {i}")
    };
    let info = String::from_utf8(info).unwrap();
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

async fn send<S>(svc: &mut S, c: Cmd) -> Result<Value, Error>
where
    S: Service<Request, Response = Response, Error = Error>,
{
    within(STEP, "request", async {
        svc.ready().await?.call(c.into()).await?.into_value()
    })
    .await
}

/// Sends pipeline `p` (bounded by [`STEP`]) and returns its replies.
async fn send_pipeline<S>(
    svc: &mut S,
    p: Pipeline,
) -> Result<Vec<Result<Value, redis_layers::ServerError>>, Error>
where
    S: Service<Request, Response = Response, Error = Error>,
{
    within(STEP, "pipeline", async {
        svc.ready().await?.call(p.into()).await?.into_pipeline()
    })
    .await
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.to_string().into())
}

/// Acceptance: 10,000 keys written and read back through the layer, each
/// on the node that owns its slot (by `CLUSTER KEYSLOT` on the server and
/// the server's own slot layout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_land_on_their_owners() {
    bounded(120, async {
        let cluster = RedisCluster::builder().replicas_per_primary(1).start();
        let svc = cluster_over(vec![cluster.endpoint(0)], Mode::Disabled);
        let keys: Vec<String> = (0..10_000).map(|i| format!("key:{i}")).collect();
        let tasks: Vec<_> = keys
            .chunks(625)
            .map(|chunk| {
                let mut svc = svc.clone();
                let chunk = chunk.to_vec();
                tokio::spawn(async move {
                    for k in chunk {
                        let v = send(&mut svc, cmd("SET").arg(&k).arg(format!("v-{k}"))).await;
                        assert_eq!(v.unwrap(), Value::SimpleString("OK".into()), "{k}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // Where each key must be, by the server: CLUSTER KEYSLOT, then the
        // node serving that slot.
        let mut direct: HashMap<usize, redis_layers::Connection> = HashMap::new();
        let slot_conn = Connector::new().connect(cluster.endpoint(0)).await.unwrap();
        let slots: Pipeline = keys
            .iter()
            .map(|k| cmd("CLUSTER").arg("KEYSLOT").arg(k))
            .collect();
        let slots = slot_conn
            .send(slots)
            .await
            .unwrap()
            .into_pipeline()
            .unwrap();
        let mut by_node: HashMap<usize, Vec<&String>> = HashMap::new();
        for (k, s) in keys.iter().zip(slots) {
            let Ok(Value::Integer(s)) = s else {
                panic!("{s:?}")
            };
            by_node
                .entry(cluster.node_for_slot(s as u16))
                .or_default()
                .push(k);
        }
        assert_eq!(by_node.len(), 3, "keys spread over the 3 primaries");
        for (node, ks) in &by_node {
            if !direct.contains_key(node) {
                let c = Connector::new()
                    .connect(cluster.endpoint(*node))
                    .await
                    .unwrap();
                direct.insert(*node, c);
            }
            let c = &direct[node];
            let gets: Pipeline = ks.iter().map(|k| cmd("GET").arg(k.as_str())).collect();
            let got = c.send(gets).await.unwrap().into_pipeline().unwrap();
            for (k, v) in ks.iter().zip(got) {
                assert_eq!(v.unwrap(), bulk(&format!("v-{k}")), "{k} on node {node}");
            }
        }
        // And back through the layer, as one big pipeline split per node.
        let mut svc2 = svc.clone();
        let gets: Pipeline = keys.iter().map(|k| cmd("GET").arg(k.as_str())).collect();
        let got = within(STEP, "pipeline", async {
            svc2.ready().await?.call(gets.into()).await?.into_pipeline()
        })
        .await
        .unwrap();
        assert_eq!(got.len(), keys.len());
        for (k, v) in keys.iter().zip(got) {
            assert_eq!(v.unwrap(), bulk(&format!("v-{k}")), "{k}");
        }
        // The three primaries answered for their slots.
        assert_eq!(svc.slot_map().primaries().len(), 3);
        assert_eq!(
            svc.stats().moved,
            0,
            "the topology was right from the start"
        );
    })
    .await;
}

/// Acceptance: hash-tagged multi-key commands work; cross-slot ones are
/// refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_tags_work_and_cross_slot_is_refused_before_sending() {
    bounded(60, async {
        let cluster = RedisCluster::builder().replicas_per_primary(1).start();
        let mut svc = cluster_over(vec![cluster.endpoint(1)], Mode::Disabled);
        let ok = Value::SimpleString("OK".into());
        assert_eq!(
            send(
                &mut svc,
                cmd("MSET").arg("{u1}.a").arg("1").arg("{u1}.b").arg("2")
            )
            .await
            .unwrap(),
            ok
        );
        assert_eq!(
            send(&mut svc, cmd("MGET").arg("{u1}.a").arg("{u1}.b"))
                .await
                .unwrap(),
            Value::Array(vec![bulk("1"), bulk("2")])
        );
        send(&mut svc, cmd("SADD").arg("{s}1").arg("x").arg("y"))
            .await
            .unwrap();
        send(&mut svc, cmd("SADD").arg("{s}2").arg("y").arg("z"))
            .await
            .unwrap();
        assert_eq!(
            send(
                &mut svc,
                cmd("SUNIONSTORE").arg("{s}u").arg("{s}1").arg("{s}2")
            )
            .await
            .unwrap(),
            Value::Integer(3)
        );
        // a and b hash to different slots.
        assert_ne!(cluster.slot_of("a"), cluster.slot_of("b"));
        let e = send(&mut svc, cmd("MSET").arg("a").arg("1").arg("b").arg("2"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e:?}");
        assert!(e.to_string().contains("slot"), "{e}");
        // Nothing was sent: neither key exists.
        for k in ["a", "b"] {
            assert_eq!(
                send(&mut svc, cmd("EXISTS").arg(k)).await.unwrap(),
                Value::Integer(0)
            );
        }
        let e = send(&mut svc, cmd("DEL").arg("a").arg("{u1}.a"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e:?}");
    })
    .await;
}

/// Key-less commands: the cluster-wide ones go to every primary and are
/// combined (DBSIZE sums, FLUSHALL on all, SCRIPT LOAD the same sha
/// everywhere so EVALSHA works on any key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_commands_fan_out() {
    bounded(60, async {
        let cluster = RedisCluster::builder().replicas_per_primary(1).start();
        let mut svc = cluster_over(vec![cluster.endpoint(2)], Mode::Disabled);
        for i in 0..300 {
            send(&mut svc, cmd("SET").arg(format!("k{i}")).arg(i))
                .await
                .unwrap();
        }
        assert_eq!(
            send(&mut svc, cmd("DBSIZE")).await.unwrap(),
            Value::Integer(300)
        );
        let sha = send(
            &mut svc,
            cmd("SCRIPT")
                .arg("LOAD")
                .arg("return redis.call('GET', KEYS[1])"),
        )
        .await
        .unwrap();
        for i in [0, 100, 299] {
            let v = send(
                &mut svc,
                cmd("EVALSHA")
                    .arg(sha.as_bytes().unwrap())
                    .arg(1)
                    .arg(format!("k{i}")),
            )
            .await
            .unwrap();
            assert_eq!(v, bulk(&i.to_string()));
        }
        assert_eq!(
            send(&mut svc, cmd("PING")).await.unwrap(),
            Value::SimpleString("PONG".into())
        );
        assert_eq!(
            send(&mut svc, cmd("FLUSHALL")).await.unwrap(),
            Value::SimpleString("OK".into())
        );
        assert_eq!(
            send(&mut svc, cmd("DBSIZE")).await.unwrap(),
            Value::Integer(0)
        );
    })
    .await;
}

/// Pipelines across nodes come back in the caller's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_are_split_and_reassembled_in_order() {
    bounded(60, async {
        let cluster = RedisCluster::builder().replicas_per_primary(1).start();
        let mut svc = cluster_over(vec![cluster.endpoint(0)], Mode::Disabled);
        let mut p = Pipeline::new();
        for i in 0..1000 {
            p = p
                .cmd(cmd("SET").arg(format!("p{i}")).arg(i))
                .cmd(cmd("INCR").arg(format!("p{i}")));
        }
        p = p.cmd(cmd("PING"));
        let r = within(STEP, "pipeline", async {
            svc.ready().await?.call(p.into()).await?.into_pipeline()
        })
        .await
        .unwrap();
        assert_eq!(r.len(), 2001);
        for i in 0..1000 {
            assert_eq!(r[2 * i].clone().unwrap(), Value::SimpleString("OK".into()));
            assert_eq!(
                r[2 * i + 1].clone().unwrap(),
                Value::Integer(i as i64 + 1),
                "p{i}"
            );
        }
        assert_eq!(r[2000].clone().unwrap(), Value::SimpleString("PONG".into()));
    })
    .await;
}

// ===== the ledger under resharding =====

/// Stops the load; checks 0 failures and that every key holds exactly its
/// acknowledged count (read from the node that owns it now).
async fn finish(load: ledger::Load, cluster: &RedisCluster) {
    let report = load.finish().await;
    report.assert_no_failures();
    cluster.wait_consistent();
    for (key, acked) in &report.acked {
        let owner = cluster.node_for_key(key);
        let on_server: u64 = match cluster.query(owner, &[b"GET", key.as_bytes()]) {
            Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap().parse().unwrap(),
            Reply::Bulk(None) => 0,
            other => panic!("{key} on node {owner}: {other:?}"),
        };
        assert_eq!(
            on_server, *acked,
            "{key}: server {on_server}, client acked {acked}"
        );
    }
}

/// The slots of the ledger keys, by node.
fn ledger_slots(cluster: &RedisCluster, tasks: usize, node: usize) -> Vec<u16> {
    let mut v: Vec<u16> = (0..tasks)
        .map(|i| cluster.slot_of(format!("ledger:{i}")))
        .filter(|s| cluster.node_for_slot(*s) == node)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Acceptance: live resharding under load with the real migration
/// procedure wrapped in SMIGRATING/SMIGRATED (the simulator): 0 failed
/// commands, the ledger exact, and the slot map updated from SMIGRATED
/// without waiting for a MOVED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_resharding_with_smigrated_loses_nothing() {
    let _one_at_a_time = LEDGERS.lock().await;
    bounded(120, async {
        let env = SimCluster::with(RedisCluster::builder().replicas_per_primary(1).start()).await;
        let seed = env.endpoint(0);
        let svc = cluster_over(vec![support::sim::endpoint(seed)], Mode::Enabled);
        let load = ledger::start(&svc, 32, "ledger");
        load.run_for(2_000).await;
        let slots = ledger_slots(&env.cluster, 32, 0);
        assert!(!slots.is_empty());
        let m = within(
            Duration::from_secs(60),
            "slot migration",
            env.sim
                .slot_migrate(&slots, env.endpoint(0), env.endpoint(1)),
        )
        .await
        .unwrap();
        assert!(m.keys > 0);
        load.run_for(2_000).await;
        let stats = svc.stats();
        finish(load, &env.cluster).await;
        assert_eq!(stats.smigrated, 1, "{stats:?}");
        for s in &slots {
            assert_eq!(
                svc.slot_map().primary_for(*s),
                Some(&support::sim::endpoint(env.endpoint(1))),
                "slot {s} moved in the map"
            );
        }
        eprintln!("with SMIGRATED: {stats:?} for {} slots", slots.len());
        assert!(
            (stats.moved as usize) < slots.len(),
            "SMIGRATED updated the map before MOVED did: {stats:?}"
        );
    })
    .await;
}

/// Acceptance: the same with plain `redis-cli --cluster reshard`-style
/// migration and no notifications at all: MOVED and ASK carry the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_resharding_without_notifications_loses_nothing() {
    let _one_at_a_time = LEDGERS.lock().await;
    bounded(120, async {
        let cluster = RedisCluster::builder().replicas_per_primary(1).start();
        let svc = cluster_over(vec![cluster.endpoint(0)], Mode::Disabled);
        let load = ledger::start(&svc, 32, "ledger");
        load.run_for(2_000).await;
        let slots = ledger_slots(&cluster, 32, 0);
        let c = &cluster;
        tokio::task::block_in_place(|| {
            for s in &slots {
                c.migrate_slot(*s, 0, 1);
            }
            c.wait_consistent();
        });
        load.run_for(2_000).await;
        let stats = svc.stats();
        finish(load, &cluster).await;
        eprintln!("without notifications: {stats:?} for {} slots", slots.len());
        assert!(stats.moved >= 1, "{stats:?}");
    })
    .await;
}

/// Acceptance: a primary killed while it has a replica: commands during the
/// outage fail with typed errors in bounded time (never hang), and after
/// the failover the layer finds the new primary by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_and_the_layer_recovers() {
    bounded(120, async {
        let mut cluster = RedisCluster::builder()
            .replicas_per_primary(1)
            .arg("--cluster-node-timeout")
            .arg("1000")
            .start();
        let mut svc = cluster_over(vec![cluster.endpoint(1), cluster.endpoint(2)], Mode::Disabled);
        let key = (0..)
            .map(|i| format!("fo:{i}"))
            .find(|k| cluster.node_for_key(k) == 0)
            .unwrap();
        send(&mut svc, cmd("SET").arg(&key).arg("v")).await.unwrap();
        // On the replica before the crash.
        let on_replica = cluster.replicas_of(0).start;
        within(STEP, "replicated", async {
            while !matches!(cluster.query(on_replica, &[b"DBSIZE"]), Reply::Int(1)) {
                tokio::task::yield_now().await;
            }
        })
        .await;
        cluster.kill(0);
        let began = tokio::time::Instant::now();
        let mut failures = vec![];
        let value = loop {
            let t = tokio::time::Instant::now();
            match send(&mut svc, cmd("GET").arg(&key)).await {
                Ok(v) => break v,
                Err(e) => {
                    assert!(
                        t.elapsed() < Duration::from_secs(4),
                        "a request during the outage took {:?}",
                        t.elapsed()
                    );
                    assert!(
                        e.is_connection_error()
                            || matches!(e, Error::Timeout)
                            || matches!(&e, Error::Server(s) if s.kind() == &redis_layers::ServerErrorKind::ClusterDown),
                        "untyped failure: {e:?}"
                    );
                    failures.push(e.to_string());
                }
            }
            assert!(began.elapsed() < Duration::from_secs(60), "no recovery: {failures:?}");
            // A caller's retry pace (the retry layer's job, later); there is
            // no event to wait for: the failover is the cluster's business.
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(value, bulk("v"));
        assert!(!failures.is_empty(), "the outage was seen");
        send(&mut svc, cmd("SET").arg(&key).arg("after")).await.unwrap();
        let new_primary = svc.slot_map().primary_for(cluster.slot_of(&key)).cloned().unwrap();
        assert_eq!(new_primary, cluster.endpoint(on_replica));
        eprintln!(
            "recovered after {:?}, {} failed requests: {:?}",
            began.elapsed(),
            failures.len(),
            failures.iter().take(3).collect::<Vec<_>>()
        );
    })
    .await;
}

/// Optional reads from replicas: read-only commands go to the slot's
/// replicas (their connections send `READONLY`), writes to the primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_replicas_when_asked() {
    bounded(60, async {
        let cluster = RedisCluster::builder().replicas_per_primary(1).start();
        let config = ClusterConfig::default()
            .refresh_interval(None)
            .read_from_replicas(true);
        let mut svc = cluster_with(vec![cluster.endpoint(0)], Mode::Disabled, config);
        for i in 0..300 {
            send(&mut svc, cmd("SET").arg(format!("r{i}")).arg(i))
                .await
                .unwrap();
        }
        // Every replica has its primary's keys.
        within(STEP, "replication", async {
            for p in 0..3 {
                let r = cluster.replicas_of(p).start;
                loop {
                    let (a, b) = (
                        cluster.query(p, &[b"DBSIZE"]),
                        cluster.query(r, &[b"DBSIZE"]),
                    );
                    if matches!((&a, &b), (Reply::Int(x), Reply::Int(y)) if x == y) {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
        })
        .await;
        for i in 0..300 {
            let v = send(&mut svc, cmd("GET").arg(format!("r{i}")))
                .await
                .unwrap();
            assert_eq!(v, bulk(&i.to_string()));
        }
        let on_primaries: u64 = (0..3).map(|p| calls(&cluster, p, "get")).sum();
        let on_replicas: u64 = (3..6).map(|r| calls(&cluster, r, "get")).sum();
        assert_eq!((on_primaries, on_replicas), (0, 300));
        let sets: u64 = (0..3).map(|p| calls(&cluster, p, "set")).sum();
        assert_eq!(sets, 300);
        assert_eq!(svc.stats().moved, 0);
    })
    .await;
}

/// Issue: key positions of commands outside the static table come from
/// `COMMAND INFO` (asked once, then cached): `PFDEBUG ENCODING key` has its
/// key second, and is routed to the key's node with no redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_outside_the_table_are_learned_from_command_info() {
    bounded(60, async {
        assert!(!redis_layers::cluster::keys::CommandTable::default().contains("pfdebug"));
        let cluster = RedisCluster::builder().replicas_per_primary(1).start();
        let mut svc = cluster_over(vec![cluster.endpoint(0)], Mode::Disabled);
        for i in 0..50 {
            send(
                &mut svc,
                cmd("PFADD").arg(format!("h{i}")).arg("a").arg("b"),
            )
            .await
            .unwrap();
        }
        let infos_before: u64 = (0..3).map(|n| calls(&cluster, n, "command|info")).sum();
        for i in 0..50 {
            let v = send(
                &mut svc,
                cmd("PFDEBUG").arg("ENCODING").arg(format!("h{i}")),
            )
            .await
            .unwrap();
            assert_eq!(v, Value::SimpleString("sparse".into()), "h{i}");
        }
        let infos: u64 = (0..3).map(|n| calls(&cluster, n, "command|info")).sum();
        assert_eq!(infos - infos_before, 1, "COMMAND INFO asked once");
        assert_eq!(svc.stats().moved, 0, "every PFDEBUG went to its key's node");
        // A command the server does not know either: one question, then
        // straight to a node, which says so.
        for _ in 0..3 {
            let e = send(&mut svc, cmd("NOSUCHCMD").arg("k")).await.unwrap_err();
            assert!(e.to_string().contains("unknown command"), "{e}");
        }
        let infos_after: u64 = (0..3).map(|n| calls(&cluster, n, "command|info")).sum();
        assert_eq!(infos_after - infos, 1);
    })
    .await;
}

/// Acceptance: live resharding with plain `redis-cli --cluster reshard`
/// (the real tool, no notifications) under the INCR ledger.
#[ignore = "long: run by .ci/run (cargo test --all-features --tests -- --ignored)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_resharding_with_redis_cli_loses_nothing() {
    let _one_at_a_time = LEDGERS.lock().await;
    bounded(180, async {
        let cluster = RedisCluster::builder().replicas_per_primary(1).start();
        let svc = cluster_over(vec![cluster.endpoint(0)], Mode::Disabled);
        let load = ledger::start(&svc, 32, "ledger");
        load.run_for(2_000).await;
        let before = ledger_slots(&cluster, 32, 0).len();
        let from = cluster.node_id(0).to_string();
        let to = cluster.node_id(1).to_string();
        let at = format!("127.0.0.1:{}", cluster.ports()[0]);
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("redis-cli")
                .args(["--cluster", "reshard", &at])
                .args(["--cluster-from", &from, "--cluster-to", &to])
                .args(["--cluster-slots", "5461", "--cluster-yes"])
                .output()
                .expect("redis-cli")
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        tokio::task::block_in_place(|| cluster.wait_consistent());
        let moved_ledger = before - ledger_slots(&cluster, 32, 0).len();
        assert!(moved_ledger > 0, "the reshard moved ledger slots");
        load.run_for(2_000).await;
        let stats = svc.stats();
        finish(load, &cluster).await;
        eprintln!("redis-cli reshard of all 5461 slots of node 0: {stats:?}, {moved_ledger} ledger slots moved");
        assert!(stats.moved >= 1, "{stats:?}");
    })
    .await;
}

/// Acceptance: a client that connects while a migration is under way gets
/// `SMIGRATING` when it opts in (its timeouts relax), then `SMIGRATED`
/// (they are restored), and its ledger is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connecting_during_a_migration_relax_and_recover() {
    bounded(120, async {
        let env = SimCluster::with(RedisCluster::builder().replicas_per_primary(1).start()).await;
        let slots = ledger_slots(&env.cluster, 32, 0);
        let node0 = support::sim::endpoint(env.endpoint(0));
        // SMIGRATING now; the keys move a second later.
        let handle = env
            .sim
            .start_slot_migrate_after(
                &slots,
                env.endpoint(0),
                env.endpoint(1),
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        // A client that starts during the migration.
        let connector = Connector::new()
            .maintenance(MaintenanceConfig::default().mode(Mode::Enabled))
            .unwrap();
        let state = connector.maintenance_state(&node0);
        let mut events = state.subscribe();
        let late = ClusterLayer::new(vec![node0.clone()])
            .config(ClusterConfig::default().refresh_interval(None))
            .layer(move |endpoint: Endpoint, _role: NodeRole| {
                RelaxTimeoutLayer::new(Duration::from_secs(2))
                    .layer(Handoff::new(connector.clone(), endpoint))
            });
        let load = ledger::start(&late, 16, "ledger");
        let relaxed = within(STEP, "relaxed", async {
            loop {
                if let e @ MaintEvent::Relaxed { .. } = events.recv().await.unwrap() {
                    return e;
                }
            }
        })
        .await;
        assert_eq!(
            relaxed,
            MaintEvent::Relaxed {
                reason: "SMIGRATING"
            }
        );
        assert!(state.relaxed_timeout().is_some());
        let m = within(Duration::from_secs(60), "migration", handle.finished())
            .await
            .unwrap();
        assert!(m.keys > 0);
        within(STEP, "unrelaxed", async {
            loop {
                if let MaintEvent::Unrelaxed { .. } = events.recv().await.unwrap() {
                    return;
                }
            }
        })
        .await;
        assert_eq!(state.relaxed_timeout(), None);
        load.run_for(1_000).await;
        finish(load, &env.cluster).await;
        assert_eq!(late.stats().smigrated, 1);
    })
    .await;
}

/// A cluster whose topology gives no slot to any node is an error for the
/// caller's call, not an endless wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_slots_is_an_error_not_a_hang() {
    bounded(30, async {
        let server = support::RedisServer::builder()
            .arg("--cluster-enabled")
            .arg("yes")
            .start();
        let mut svc = cluster_over(vec![server.endpoint()], Mode::Disabled);
        // poll_ready does not fail (a later read may find slots: tower
        // reads a poll_ready error as "gone for good"); the call does.
        let ready = within(STEP, "poll_ready", svc.ready()).await.expect("ready");
        let e = ready.call(redis_layers::cmd("GET").arg("k").into()).await.unwrap_err();
        assert!(
            matches!(&e, Error::Server(s) if s.kind() == &redis_layers::ServerErrorKind::ClusterDown),
            "{e:?}"
        );
    })
    .await;
}

/// A pipeline sent on a stale slot map: every command answered `MOVED` is
/// retried alone on the new owner, and the replies stay in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirected_pipeline_is_followed_command_by_command() {
    bounded(60, async {
        let cluster = RedisCluster::builder().replicas_per_primary(1).start();
        let mut svc = cluster_over(vec![cluster.endpoint(0)], Mode::Disabled);
        // The slot moves behind the layer's back.
        let (r, tag) = pipeline_after_a_move(&cluster, &mut svc, 0).await;
        for (i, v) in r.into_iter().enumerate() {
            assert_eq!(v.unwrap(), bulk(&i.to_string()), "{tag}{i}");
        }
        assert!(svc.stats().moved >= 1);
    })
    .await;
}

/// A node layer that rebuilds every server error from its text, as a
/// user's error-mapping layer might: what the connection handed back with a
/// redirect is lost. `LIES` declares it kept anyway.
#[derive(Clone)]
struct Rebuilt<S, const LIES: bool>(S);

impl<S, const LIES: bool> Service<Request> for Rebuilt<S, LIES>
where
    S: Service<Request, Response = Response, Error = Error>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            fut.await.map_err(|e| match e {
                Error::Server(s) => {
                    Error::Server(redis_layers::ServerError::parse(s.as_bytes().to_vec()))
                }
                e => e,
            })
        })
    }
}

impl<S: Maintained, const LIES: bool> Maintained for Rebuilt<S, LIES> {
    const RETURNS_REDIRECTED: bool = LIES;

    fn maintenance(&self) -> &std::sync::Arc<redis_layers::maint::MaintenanceState> {
        self.0.maintenance()
    }
}

/// Writes twenty keys `<tag><i>` = `i` through `svc`, with the first tag
/// `{r<n>}` (from `n` on) whose slot node 0 owns, then moves that slot to
/// node 1 behind `svc`'s back. Returns the tag.
async fn write_and_move<S>(cluster: &RedisCluster, svc: &mut S, n: usize) -> String
where
    S: Service<Request, Response = Response, Error = Error>,
{
    let tag = (n..)
        .map(|i| format!("{{r{i}}}"))
        .find(|t| cluster.node_for_key(t) == 0)
        .unwrap();
    for i in 0..20 {
        send(svc, cmd("SET").arg(format!("{tag}{i}")).arg(i))
            .await
            .unwrap();
    }
    let slot = cluster.slot_of(&tag);
    tokio::task::block_in_place(|| {
        cluster.migrate_slot(slot, 0, 1);
        cluster.wait_consistent();
    });
    tag
}

/// [`write_and_move`], then reads the keys one by one: the first read
/// after the move is answered `MOVED`. Returns the reads and the tag.
async fn read_after_a_move<S>(
    cluster: &RedisCluster,
    svc: &mut Cluster<S>,
    n: usize,
) -> (Vec<Result<Value, Error>>, String)
where
    S: redis_layers::cluster::NewNode,
{
    let tag = write_and_move(cluster, svc, n).await;
    (read(svc, &tag).await, tag)
}

async fn read<S>(svc: &mut Cluster<S>, tag: &str) -> Vec<Result<Value, Error>>
where
    S: redis_layers::cluster::NewNode,
{
    let mut out = Vec::new();
    for i in 0..20 {
        out.push(send(svc, cmd("GET").arg(format!("{tag}{i}"))).await);
    }
    out
}

/// The number after a `{r<n>}` tag: the next call's keys are elsewhere.
fn after(tag: &str) -> usize {
    tag.trim_matches(|c| c == '{' || c == '}' || c == 'r')
        .parse::<usize>()
        .unwrap()
        + 1
}

/// The fast path keeps no copy of a command when the node hands it back
/// with `MOVED` (the crate's own stack does), a copy when the node does not
/// say so, and a node that says so wrongly costs one typed error, never a
/// hang or a lost command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_whether_or_not_the_node_hands_the_command_back() {
    bounded(90, async {
        let cluster = RedisCluster::builder().start();
        let seeds = vec![cluster.endpoint(0)];
        let expect = |r: &[Result<Value, Error>]| {
            for (i, v) in r.iter().enumerate() {
                assert_eq!(v.as_ref().unwrap(), &bulk(&i.to_string()), "key {i}");
            }
        };
        // The crate's stack: handed back.
        const { assert!(<Node as Maintained>::RETURNS_REDIRECTED) };
        let mut own = cluster_over(seeds.clone(), Mode::Disabled);
        let (r, tag) = read_after_a_move(&cluster, &mut own, 0).await;
        expect(&r);
        assert_eq!(own.stats().moved, 1, "{:?}", own.stats());

        // A layer that rebuilds errors and says nothing: copied.
        let maker = node_maker(Mode::Disabled);
        let mut copied = ClusterLayer::new(seeds.clone())
            .config(ClusterConfig::default().refresh_interval(None))
            .layer(move |e, r| Rebuilt::<_, false>(maker(e, r)));
        let (r, tag) = read_after_a_move(&cluster, &mut copied, after(&tag)).await;
        expect(&r);
        assert_eq!(copied.stats().moved, 1, "{:?}", copied.stats());

        // One that claims to hand back but does not: the first read gets
        // the redirect as an error (it was not run); the layer learns the
        // move, and the other reads go to the new owner.
        let maker = node_maker(Mode::Disabled);
        let mut lying = ClusterLayer::new(seeds)
            .config(ClusterConfig::default().refresh_interval(None))
            .layer(move |e, r| Rebuilt::<_, true>(maker(e, r)));
        let (r, tag) = read_after_a_move(&cluster, &mut lying, after(&tag)).await;
        assert!(
            matches!(&r[0], Err(Error::Server(e)) if e.redirect().is_some()),
            "{:?}",
            r[0]
        );
        for (i, v) in r.iter().enumerate().skip(1) {
            assert_eq!(v.as_ref().unwrap(), &bulk(&i.to_string()), "key {i}");
        }
        // Nothing was lost: the first key reads back too.
        expect(&read(&mut lying, &tag).await);
    })
    .await;
}

/// [`write_and_move`], then reads the keys in one pipeline sent where the
/// slot was: every command is answered `MOVED`.
async fn pipeline_after_a_move<S>(
    cluster: &RedisCluster,
    svc: &mut Cluster<S>,
    n: usize,
) -> (Vec<Result<Value, redis_layers::ServerError>>, String)
where
    S: redis_layers::cluster::NewNode,
{
    let tag = write_and_move(cluster, svc, n).await;
    let p: Pipeline = (0..20)
        .map(|i| cmd("GET").arg(format!("{tag}{i}")))
        .collect();
    (send_pipeline(svc, p).await.unwrap(), tag)
}

/// The commands of a pipeline answered `MOVED` are each resent to the new
/// owner, whether the connection hands them back (the crate's stack) or
/// the router keeps a copy (a stack that does not say it hands back); a
/// transaction's are not resent one by one, and the map learns the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirected_pipeline_commands_are_resent_whether_or_not_handed_back() {
    bounded(90, async {
        let cluster = RedisCluster::builder().start();
        let seeds = vec![cluster.endpoint(0)];
        let expect = |r: &[Result<Value, redis_layers::ServerError>]| {
            assert_eq!(r.len(), 20);
            for (i, v) in r.iter().enumerate() {
                assert_eq!(v.as_ref().unwrap(), &bulk(&i.to_string()), "key {i}");
            }
        };
        let mut own = cluster_over(seeds.clone(), Mode::Disabled);
        let (r, tag) = pipeline_after_a_move(&cluster, &mut own, 0).await;
        expect(&r);
        assert!(own.stats().moved >= 1, "{:?}", own.stats());

        let maker = node_maker(Mode::Disabled);
        let mut copied = ClusterLayer::new(seeds.clone())
            .config(ClusterConfig::default().refresh_interval(None))
            .layer(move |e, r| Rebuilt::<_, false>(maker(e, r)));
        let (r, tag) = pipeline_after_a_move(&cluster, &mut copied, after(&tag)).await;
        expect(&r);
        assert!(copied.stats().moved >= 1, "{:?}", copied.stats());

        // A transaction sent where its slot was: its command is refused
        // with `MOVED` (and EXEC with EXECABORT), and nothing is resent.
        let tag = write_and_move(&cluster, &mut own, after(&tag)).await;
        let before = own.stats().moved;
        let key = format!("{tag}0");
        let tx = Pipeline::new()
            .cmd(cmd("MULTI"))
            .cmd(cmd("INCR").arg(key.as_str()))
            .cmd(cmd("EXEC"));
        let r = send_pipeline(&mut own, tx).await.unwrap();
        assert!(
            matches!(&r[1], Err(e) if e.redirect().is_some()),
            "the INCR: {:?}",
            r[1]
        );
        assert!(r[2].is_err(), "EXEC: {:?}", r[2]);
        // Not run: the key still holds what was written.
        assert_eq!(own.stats().moved, before + 1, "{:?}", own.stats());
        assert_eq!(
            send(&mut own, cmd("GET").arg(key.as_str())).await.unwrap(),
            bulk("0")
        );
        // The map learnt the move: that read went straight to the owner.
        assert_eq!(own.stats().moved, before + 1, "{:?}", own.stats());
    })
    .await;
}

/// Issue 20: a completed topology refresh wakes every waiter, even when
/// another refresh was requested while it ran. A cold cluster `Client`
/// behind the simulator, its seed answering 300 ms late: one caller starts
/// the first refresh; once its connection is open the other 63 arrive and
/// ask for another. With a 5 s refresh cooldown a caller left waiting for
/// the second refresh would take over 5 s; every call must take under 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_client_wakes_every_caller_with_the_first_map() {
    bounded(60, async {
        let env = SimCluster::start().await;
        let seed = env.endpoint(0);
        env.sim.set_delay(
            redis_layers::sim::Target::Endpoint(seed),
            Duration::from_millis(300),
        );
        let client = redis_layers::client::ClientBuilder::new(support::sim::endpoint(seed))
            .mode(redis_layers::client::ServerMode::Cluster)
            .cluster_config(ClusterConfig::default().refresh_cooldown(Duration::from_secs(5)))
            .build()
            .await
            .unwrap();
        let call = |i: usize| {
            let client = client.clone();
            tokio::spawn(async move {
                let t0 = std::time::Instant::now();
                let v: Option<String> = client.get(format!("cold:{i}")).await.unwrap();
                assert!(v.is_none());
                t0.elapsed()
            })
        };
        let first = call(0);
        // The first refresh is under way: its connection to the seed is open.
        support::within(
            STEP,
            "the refresh's connection",
            env.sim.wait_for(|c| c.iter().any(|c| c.endpoint == seed)),
        )
        .await;
        let rest: Vec<_> = (1..64).map(call).collect();
        let mut slowest = first.await.unwrap();
        for t in rest {
            slowest = slowest.max(t.await.unwrap());
        }
        println!("cold client, 64 callers: slowest first call {slowest:?}");
        assert!(
            slowest < Duration::from_secs(2),
            "slowest first call {slowest:?}"
        );
    })
    .await
}

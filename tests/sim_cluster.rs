//! The simulator in front of a real 3-primary Redis Cluster: addresses
//! rewritten to proxy endpoints, and a real slot migration bracketed by
//! `SMIGRATING` / `SMIGRATED`.
#![cfg(feature = "sim")]

mod support;

use support::{bounded, within};

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use redis_layers::sim::{EndpointType, Push, Simulator, SlotMigrate, SlotMove};
use redis_layers::{cmd, Connection, Endpoint, Error, PushReceiver, RedirectKind, Value};
use support::cluster::RedisCluster;

const STEP: Duration = Duration::from_secs(10);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn connect(a: SocketAddr) -> Connection {
    let conn = within(
        STEP,
        "connect",
        support::sim::raw_connector().connect(Endpoint::tcp("127.0.0.1", a.port())),
    )
    .await
    .expect("connect");
    // The test opts in by hand: a connection of its own.
    conn.dedicate();
    conn
}

async fn send(conn: &Connection, c: redis_layers::Cmd) -> Value {
    let what = format!("{c:?}");
    within(STEP, &what, conn.send_cmd(c))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn opted_in(a: SocketAddr) -> (Connection, PushReceiver) {
    let conn = connect(a).await;
    let pushes = conn.take_pushes().unwrap();
    let on = support::sim::opt_in(EndpointType::InternalIp);
    assert_eq!(
        send(&conn, on).await,
        Value::SimpleString(Bytes::from_static(b"OK"))
    );
    (conn, pushes)
}

async fn next_push(p: &mut PushReceiver, what: &str) -> Value {
    within(STEP, what, p.recv())
        .await
        .unwrap_or_else(|| panic!("{what}: closed"))
}

/// Every `host:port` / port number that a reply mentions, as text.
fn mentions(v: &Value) -> String {
    format!("{v:?}")
}

/// Issue 3, cluster: one endpoint per node; `CLUSTER SLOTS`, `CLUSTER
/// SHARDS`, `CLUSTER NODES`, `MOVED` and `ASK` name endpoints, never the
/// servers behind them.
#[tokio::test]
async fn cluster_addresses_are_rewritten() {
    bounded(60, async {
        let cluster = RedisCluster::start();
        let ports = cluster.ports();
        let sim = Simulator::builder(addr(ports[0]))
            .start_cluster()
            .await
            .unwrap();
        let eps: Vec<SocketAddr> = ports
            .iter()
            .map(|p| sim.endpoint_for(addr(*p)).expect("endpoint per node"))
            .collect();
        assert_eq!(sim.endpoints().len(), 3);
        let conn = connect(eps[0]).await;

        for sub in ["SLOTS", "SHARDS", "NODES"] {
            let v = send(&conn, cmd("CLUSTER").arg(sub)).await;
            let text = mentions(&v);
            for (p, e) in ports.iter().zip(&eps) {
                assert!(
                    text.contains(&e.port().to_string()),
                    "CLUSTER {sub} names endpoint {e}: {text}"
                );
                let server = format!("127.0.0.1:{p}");
                assert!(
                    !text.contains(&server) && !text.contains(&format!("int({p})")),
                    "CLUSTER {sub} leaks {server}: {text}"
                );
            }
        }

        // MOVED: a key served by node 1, asked on node 0's endpoint.
        let slot = *cluster.initial_range(1).start();
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| cluster.slot_of(k) == slot)
            .unwrap_or_default();
        let key = if key.is_empty() { unreachable!() } else { key };
        let e = within(STEP, "GET", conn.send_cmd(cmd("GET").arg(&key)))
            .await
            .unwrap_err();
        let Error::Server(e) = e else { panic!("{e:?}") };
        let r = e.redirect().expect("MOVED");
        assert_eq!(r.kind, RedirectKind::Moved);
        assert_eq!(r.addr, eps[1].to_string());
        // Through the endpoint it names, the key is served.
        let right = connect(eps[1]).await;
        send(&right, cmd("SET").arg(&key).arg("v")).await;
        assert_eq!(
            send(&right, cmd("GET").arg(&key)).await,
            Value::BulkString("v".into())
        );
    })
    .await
}

/// Issue 3, `slot_migrate(slots, src, dst)`: a real migration (every node's
/// `CLUSTER SLOTS` agrees afterwards; every key reads from its new owner;
/// the old owner redirects to the new owner's endpoint), with `SMIGRATING`
/// before and `SMIGRATED [[src dst slots]]` after it, to the source's
/// opted-in connections only; a connection that opts in on the source
/// during the migration gets `SMIGRATING` too.
#[tokio::test]
async fn slot_migration_is_real_and_bracketed() {
    bounded(90, async {
        let cluster = RedisCluster::start();
        let ports = cluster.ports();
        let sim = Simulator::builder(addr(ports[0]))
            .start_cluster()
            .await
            .unwrap();
        let eps: Vec<SocketAddr> = ports
            .iter()
            .map(|p| sim.endpoint_for(addr(*p)).unwrap())
            .collect();

        // 100 keys in one slot of node 0.
        let slot = *cluster.initial_range(0).start() + 7;
        let tag = (0..)
            .map(|i| format!("t{i}"))
            .find(|t| cluster.slot_of(t) == slot)
            .unwrap();
        let writer = connect(eps[0]).await;
        for i in 0..100 {
            send(&writer, cmd("SET").arg(format!("{{{tag}}}:{i}")).arg(i)).await;
        }
        let (_src_conn, mut src_pushes) = opted_in(eps[0]).await;
        let (dst_conn, mut dst_pushes) = opted_in(eps[1]).await;

        // The keys start moving a second after SMIGRATING, so the migration
        // is still under way when a late connection opts in on the source.
        let mut m = SlotMigrate::new(&[slot], eps[0], eps[1]);
        m.after = Duration::from_secs(1);
        let run = tokio::spawn(sim.start_slot_migration(m).await.unwrap().finished());
        let smigrating = next_push(&mut src_pushes, "SMIGRATING").await;
        let Value::Push(items) = &smigrating else {
            panic!("{smigrating:?}")
        };
        let seq = items[1].as_int().unwrap();
        assert_eq!(
            smigrating,
            Push::SMigrating {
                seq,
                slots: vec![slot.to_string()]
            }
            .to_value()
        );
        let (_late, mut late_pushes) = opted_in(eps[0]).await;
        assert_eq!(
            next_push(&mut late_pushes, "late SMIGRATING").await,
            smigrating
        );

        let done = within(STEP, "migration", run).await.unwrap().unwrap();
        assert_eq!(done.keys, 100);
        assert_eq!(done.smigrating, seq);
        assert!(done.smigrated > seq);
        assert_eq!(
            next_push(&mut src_pushes, "SMIGRATED").await,
            Push::SMigrated {
                seq: done.smigrated,
                moves: vec![SlotMove {
                    src: eps[0].to_string(),
                    dst: eps[1].to_string(),
                    slots: slot.to_string()
                }],
            }
            .to_value()
        );
        // The target's clients were not told.
        assert_eq!(
            send(&dst_conn, cmd("PING")).await,
            Value::SimpleString("PONG".into())
        );
        assert_eq!(dst_pushes.try_recv(), None);

        // For real: the cluster agrees, keys live on the new owner.
        cluster.wait_consistent();
        for i in 0..cluster.nodes().len() {
            let owner = cluster
                .slots(i)
                .into_iter()
                .find(|r| (r.start..=r.end).contains(&slot))
                .map(|r| r.primary);
            assert_eq!(owner, Some(ports[1]), "node {i} view of slot {slot}");
        }
        for i in 0..100 {
            let k = format!("{{{tag}}}:{i}");
            assert_eq!(
                send(&dst_conn, cmd("GET").arg(&k)).await,
                Value::BulkString(i.to_string().into())
            );
        }
        let e = within(
            STEP,
            "old owner",
            writer.send_cmd(cmd("GET").arg(format!("{{{tag}}}:0"))),
        )
        .await
        .unwrap_err();
        let Error::Server(e) = e else { panic!("{e:?}") };
        assert_eq!(e.redirect().map(|r| r.addr), Some(eps[1].to_string()));
    })
    .await
}

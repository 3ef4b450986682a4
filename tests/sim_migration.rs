//! Issue 19: slot migrations ordered by construction, checked with a probe
//! that is no client library (one raw socket, every frame in wire order):
//! the source never answers `MOVED` for a migrating slot before
//! `SMIGRATED`; a range the source does not own is refused before anything
//! is announced; a failure midway is rolled back and still ended.
#![cfg(feature = "sim")]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use redis_layers::resp::Decoder;
use redis_layers::sim::{admin::Admin, SlotMigrate};
use redis_layers::{cmd, Value};
use support::cluster::{RedisCluster, Reply};
use support::sim::SimCluster;
use support::{bounded, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STEP: Duration = Duration::from_secs(10);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A raw RESP3 connection that reads frames in the order they came.
struct Probe {
    sock: TcpStream,
    buf: BytesMut,
    dec: Decoder,
}

impl Probe {
    /// Connected, `HELLO 3`, opted in to maintenance notifications.
    async fn opted_in(a: SocketAddr) -> Probe {
        let sock = within(STEP, "connect", TcpStream::connect(a))
            .await
            .unwrap();
        let mut p = Probe {
            sock,
            buf: BytesMut::new(),
            dec: Decoder::new(),
        };
        p.send(&[cmd("HELLO").arg(3)]).await;
        assert!(matches!(p.frame().await, Value::Map(_)));
        p.send(&[cmd("CLIENT")
            .arg("MAINT_NOTIFICATIONS")
            .arg("ON")
            .arg("moving-endpoint-type")
            .arg("internal-ip")])
            .await;
        assert_eq!(p.frame().await, Value::SimpleString("OK".into()));
        p
    }

    async fn send(&mut self, cmds: &[redis_layers::Cmd]) {
        let mut out = Vec::new();
        for c in cmds {
            out.extend_from_slice(&c.to_bytes());
        }
        self.sock.write_all(&out).await.unwrap();
    }

    async fn frame(&mut self) -> Value {
        loop {
            if let Some(v) = self.dec.decode(&mut self.buf).unwrap() {
                return v;
            }
            let n = within(STEP, "a frame", self.sock.read_buf(&mut self.buf))
                .await
                .unwrap();
            assert!(n > 0, "probe connection closed");
        }
    }

    /// The next push frame's name, skipping nothing else (panics on a
    /// reply).
    async fn push(&mut self) -> Vec<Value> {
        match self.frame().await {
            Value::Push(items) => items,
            other => panic!("expected a push, got {other:?}"),
        }
    }
}

fn push_name(items: &[Value]) -> String {
    match items.first() {
        Some(Value::BulkString(b) | Value::SimpleString(b)) => {
            String::from_utf8_lossy(b).into_owned()
        }
        other => panic!("{other:?}"),
    }
}

fn error_text(v: &Value) -> Option<String> {
    match v {
        Value::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
        _ => None,
    }
}

/// One key name per slot.
fn key_for(cluster: &RedisCluster, slot: u16) -> String {
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| cluster.slot_of(k) == slot)
        .expect("some key")
}

/// The `[slot->-id]` / `[slot-<-id]` fields of node `i`'s `CLUSTER NODES`:
/// empty when no slot is migrating or importing there.
fn open_states(cluster: &RedisCluster, i: usize) -> Vec<String> {
    let Reply::Bulk(Some(text)) = cluster.query(i, &[b"CLUSTER", b"NODES"]) else {
        panic!("CLUSTER NODES")
    };
    String::from_utf8_lossy(&text)
        .split_whitespace()
        .filter(|f| f.starts_with('['))
        .map(str::to_owned)
        .collect()
}

fn count_in_slot(cluster: &RedisCluster, i: usize, slot: u16) -> i64 {
    let s = slot.to_string();
    match cluster.query(i, &[b"CLUSTER", b"COUNTKEYSINSLOT", s.as_bytes()]) {
        Reply::Int(n) => n,
        other => panic!("{other:?}"),
    }
}

/// Issue 19, defect 1: a probe on the source asks for a key of each of 100
/// migrating slots, over and over, while they move; in wire order it never
/// gets `MOVED` before `SMIGRATED` (the source answers `ASK` until the
/// lead has passed). After `SMIGRATED` the destination serves all 100 with
/// no redirect, and once the migration is done the source does answer
/// `MOVED` (so the probe would have seen one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_never_comes_before_smigrated() {
    bounded(120, async {
        let env = SimCluster::start().await;
        let (cluster, sim) = (&env.cluster, &env.sim);
        let (src, dst) = (env.endpoint(0), env.endpoint(1));
        let slots: Vec<u16> = cluster.initial_range(0).take(100).collect();
        let keys: Vec<String> = slots.iter().map(|&s| key_for(cluster, s)).collect();
        // Some keys to move, so the migration takes a while.
        for k in keys.iter().step_by(4) {
            let _ = cluster.query(0, &[b"SET", k.as_bytes(), b"v"]);
        }
        let gets: Vec<_> = keys.iter().map(|k| cmd("GET").arg(k)).collect();
        let mut probe = Probe::opted_in(src).await;

        let handle = sim
            .start_slot_migration(SlotMigrate::new(&slots, src, dst))
            .await
            .unwrap();
        let done = tokio::spawn(handle.finished());
        let (mut moved_before, mut asks, mut rounds) = (0, 0, 0);
        let mut smigrated = None;
        while smigrated.is_none() {
            probe.send(&gets).await;
            rounds += 1;
            let mut replies = 0;
            while replies < gets.len() {
                match probe.frame().await {
                    Value::Push(items) => {
                        if push_name(&items) == "SMIGRATED" {
                            smigrated = Some(items);
                        }
                    }
                    v => {
                        replies += 1;
                        match error_text(&v) {
                            Some(e) if e.starts_with("MOVED") && smigrated.is_none() => {
                                moved_before += 1
                            }
                            Some(e) if e.starts_with("ASK") => asks += 1,
                            _ => {}
                        }
                    }
                }
            }
        }
        let m = within(Duration::from_secs(60), "migration", done)
            .await
            .unwrap()
            .unwrap();
        println!("probe: {rounds} rounds of 100 GETs, {asks} ASK, {moved_before} MOVED before SMIGRATED; {} keys moved", m.keys);
        assert_eq!(moved_before, 0, "MOVED before SMIGRATED");
        assert!(m.keys >= 25);
        let stats = sim.stats();
        assert_eq!((stats.moved, stats.migrations_done), (0, 1), "{stats:?}");

        // A client acting on SMIGRATED: the destination serves every slot.
        let mut at_dst = Probe::opted_in(dst).await;
        at_dst.send(&gets).await;
        for k in &keys {
            let v = at_dst.frame().await;
            assert!(error_text(&v).is_none(), "{k} on the destination: {v:?}");
        }
        // And the source, done, redirects for real now.
        probe.send(&gets[..1]).await;
        let v = probe.frame().await;
        assert!(
            error_text(&v).is_some_and(|e| e.starts_with("MOVED")),
            "{v:?}"
        );
        assert_eq!(sim.stats().moved, 1, "SIM.STATS counts what clients got");
    })
    .await
}

async fn admin_command(admin: SocketAddr, args: &[&str]) -> Vec<u8> {
    let mut sock = TcpStream::connect(admin).await.unwrap();
    let mut c = cmd(args[0]);
    for a in &args[1..] {
        c = c.arg(*a);
    }
    sock.write_all(&c.to_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = within(STEP, "admin reply", sock.read(&mut buf))
        .await
        .unwrap();
    buf.truncate(n);
    buf
}

/// Issue 19, defect 2: `SIM.SLOT-MIGRATE 5000-5999` from the node owning
/// 0-5460 is refused with `-ERR` on the admin port, no client is told
/// anything, and no slot is left migrating or importing; a range it owns
/// then goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_the_source_does_not_own_is_refused_before_announcing() {
    bounded(90, async {
        let env = SimCluster::start().await;
        let (cluster, sim) = (&env.cluster, &env.sim);
        assert_eq!(cluster.initial_range(0), 0..=5460);
        let admin = Admin::bind(sim.clone(), addr(0)).await.unwrap();
        let (src, dst) = (env.endpoint(0), env.endpoint(1));
        let key = key_for(cluster, 5000);
        let _ = cluster.query(0, &[b"SET", key.as_bytes(), b"v"]);
        let mut probe = Probe::opted_in(src).await;

        let reply = admin_command(
            admin.local_addr(),
            &[
                "SIM.SLOT-MIGRATE",
                "5000-5999",
                &src.to_string(),
                &dst.to_string(),
            ],
        )
        .await;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        println!("admin: {reply:?}");
        assert!(
            reply.starts_with("-ERR") && reply.contains("does not own slots 5461-5999"),
            "{reply}"
        );
        // Nothing was announced: the next frame is the PING's reply.
        probe.send(&[cmd("PING")]).await;
        assert_eq!(probe.frame().await, Value::SimpleString("PONG".into()));
        for i in 0..3 {
            assert_eq!(open_states(cluster, i), Vec::<String>::new(), "node {i}");
        }
        assert_eq!(count_in_slot(cluster, 0, 5000), 1);
        assert_eq!(cluster.node_for_slot(5000), 0);

        // The part it owns is accepted and announced.
        let ok = admin_command(
            admin.local_addr(),
            &[
                "SIM.SLOT-MIGRATE",
                "5000-5001",
                &src.to_string(),
                &dst.to_string(),
            ],
        )
        .await;
        assert!(
            ok.starts_with(b"*1\r\n:"),
            "{}",
            String::from_utf8_lossy(&ok)
        );
        assert_eq!(push_name(&probe.push().await), "SMIGRATING");
        assert_eq!(push_name(&probe.push().await), "SMIGRATED");
    })
    .await
}

/// Issue 19, defect 2 (the rest): a migration that fails midway, after
/// some keys moved, is rolled back: every key is back on the source, no
/// slot is left migrating or importing, the source still owns the slots,
/// and `SMIGRATED` (naming the source as the owner) ends it so no client
/// stays relaxed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_midway_is_rolled_back_and_ended() {
    bounded(90, async {
        let env = SimCluster::start().await;
        let (cluster, sim) = (&env.cluster, &env.sim);
        let (src, dst) = (env.endpoint(0), env.endpoint(1));
        let slots = [100u16, 101];
        let mut keys = Vec::new();
        for &slot in &slots {
            let tag = key_for(cluster, slot);
            for i in 0..30 {
                let k = format!("{{{tag}}}:{i}");
                let _ = cluster.query(0, &[b"SET", k.as_bytes(), i.to_string().as_bytes()]);
                keys.push(k);
            }
        }
        let mut probe = Probe::opted_in(src).await;
        let mut m = SlotMigrate::new(&slots, src, dst);
        // Slot 100 moves whole, slot 101 half.
        m.fail_after_keys = Some(45);
        let handle = sim.start_slot_migration(m).await.unwrap();
        let start = probe.push().await;
        assert_eq!(push_name(&start), "SMIGRATING");
        let err = within(Duration::from_secs(60), "migration", handle.finished())
            .await
            .unwrap_err();
        println!("{err}");
        assert!(err.to_string().contains("45 keys moved back"), "{err}");
        assert_eq!(sim.stats().migrations_failed, 1);
        let end = probe.push().await;
        assert_eq!(push_name(&end), "SMIGRATED");
        let triplet = format!("{end:?}");
        assert!(
            triplet.matches(&src.to_string()).count() == 2 && !triplet.contains(&dst.to_string()),
            "SMIGRATED names the source as the owner: {triplet}"
        );

        for i in 0..3 {
            assert_eq!(open_states(cluster, i), Vec::<String>::new(), "node {i}");
        }
        for &slot in &slots {
            assert_eq!(
                count_in_slot(cluster, 0, slot),
                30,
                "slot {slot} on the source"
            );
            assert_eq!(
                count_in_slot(cluster, 1, slot),
                0,
                "slot {slot} on the destination"
            );
            assert_eq!(cluster.node_for_slot(slot), 0);
        }
        // Served by the source, through its endpoint, with no redirect.
        let gets: Vec<_> = keys.iter().map(|k| cmd("GET").arg(k)).collect();
        probe.send(&gets).await;
        for k in &keys {
            let v = probe.frame().await;
            assert!(matches!(v, Value::BulkString(_)), "{k}: {v:?}");
        }
    })
    .await
}

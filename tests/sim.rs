//! The maintenance simulator in front of a real redis-server: handshake,
//! injection, delays, faults and the standalone scenarios, observed through
//! raw RESP3 connections (our transport, no client layer) and raw sockets.
//!
//! Every test is bounded with `tokio::time::timeout`; servers and simulators
//! stop when the test ends.
#![cfg(feature = "sim")]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_layers::sim::{EndpointType, MovingPlan, Push, Simulator, SlotMove, Target, Window};
use redis_layers::{cmd, Connection, Endpoint, Error, Pipeline, PushReceiver, Value};
use support::{bounded, within, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ===== helpers =====

const STEP: Duration = Duration::from_secs(5);

/// A real server with the simulator in front of it.
async fn sim() -> (RedisServer, Simulator) {
    let server = RedisServer::start();
    let backend: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let sim = Simulator::start(backend).await.expect("simulator");
    (server, sim)
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::tcp(addr.ip().to_string(), addr.port())
}

async fn connect(addr: SocketAddr, name: &str) -> Connection {
    let conn = within(
        STEP,
        "connect",
        support::sim::raw_connector()
            .client_name(name)
            .connect(endpoint(addr)),
    )
    .await
    .expect("connect through the simulator");
    // The test opts in and out by hand: a connection of its own.
    conn.dedicate();
    conn
}

async fn send(conn: &Connection, c: redis_layers::Cmd) -> Value {
    let what = format!("{c:?}");
    within(STEP, &what, conn.send_cmd(c))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn opt_in(t: EndpointType) -> redis_layers::Cmd {
    cmd("CLIENT")
        .arg("MAINT_NOTIFICATIONS")
        .arg("ON")
        .arg("moving-endpoint-type")
        .arg(t.as_str())
}

/// Connects, names the connection and opts in; returns it with its pushes
/// and the simulator's id for it.
async fn opted_in(
    sim: &Simulator,
    addr: SocketAddr,
    name: &str,
    t: EndpointType,
) -> (Connection, PushReceiver, u64) {
    let conn = connect(addr, name).await;
    let pushes = conn.take_pushes().unwrap();
    assert_eq!(send(&conn, opt_in(t)).await, ok());
    let id = client_id(sim, name).await;
    (conn, pushes, id)
}

/// The simulator's id of the connection named `name`, once it has opted in
/// (the registry changes are events: no polling).
async fn client_id(sim: &Simulator, name: &str) -> u64 {
    let mut id = None;
    within(
        STEP,
        "registry",
        sim.wait_for(|cs| {
            id = cs
                .iter()
                .find(|c| c.name.as_deref() == Some(name))
                .map(|c| c.id);
            id.is_some()
        }),
    )
    .await;
    id.unwrap()
}

async fn next_push(p: &mut PushReceiver, what: &str) -> Value {
    within(STEP, what, p.recv())
        .await
        .unwrap_or_else(|| panic!("{what}: push channel closed"))
}

/// After a round trip on `conn`, no push is waiting: an injection queued
/// before the PING would have been written before its reply.
async fn assert_no_push(conn: &Connection, p: &mut PushReceiver, what: &str) {
    assert_eq!(
        send(conn, cmd("PING")).await,
        Value::SimpleString("PONG".into())
    );
    assert_eq!(p.try_recv(), None, "{what}");
}

fn ok() -> Value {
    Value::SimpleString(Bytes::from_static(b"OK"))
}

fn bulk(s: &str) -> Value {
    Value::BulkString(Bytes::copy_from_slice(s.as_bytes()))
}

/// A raw socket: bytes exactly as the simulator sends them.
struct Raw {
    sock: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl Raw {
    /// Connects and does `HELLO 3` (and opts in, if asked).
    async fn connect(addr: SocketAddr, opt: bool) -> Raw {
        let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut r = Raw {
            sock,
            buf: bytes::BytesMut::new(),
        };
        r.write(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n").await;
        r.frame().await;
        if opt {
            r.write(&opt_in(EndpointType::InternalIp).to_bytes()).await;
            assert_eq!(r.frame().await, b"+OK\r\n");
        }
        r
    }

    async fn write(&mut self, b: &[u8]) {
        self.sock.write_all(b).await.unwrap();
    }

    /// The next `n` bytes.
    async fn bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill().await;
        }
        self.buf.split_to(n).to_vec()
    }

    /// The next whole frame, as sent.
    async fn frame(&mut self) -> Vec<u8> {
        let mut dec = redis_layers::resp::Decoder::new();
        loop {
            if let Some(n) = dec.frame_len(&self.buf).unwrap() {
                return self.buf.split_to(n).to_vec();
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) {
        let n = within(STEP, "raw read", self.sock.read_buf(&mut self.buf))
            .await
            .unwrap();
        assert!(n > 0, "closed");
    }

    /// Waits for EOF (or a reset) on the socket, skipping bytes that come
    /// first; panics if it does not come within `limit`.
    async fn eof(&mut self, limit: Duration) {
        within(limit, "raw EOF", async {
            loop {
                match self.sock.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => self.buf.clear(),
                }
            }
        })
        .await
    }
}

fn all_kinds(seq: i64) -> Vec<Push> {
    vec![
        Push::Moving {
            seq,
            time: 30,
            endpoint: Some("10.0.0.2:12000".into()),
        },
        Push::Moving {
            seq: seq + 1,
            time: 30,
            endpoint: None,
        },
        Push::Migrating {
            seq: seq + 2,
            time: 5,
            shard_ids: Some("1,2".into()),
        },
        Push::Migrated {
            seq: seq + 3,
            shard_ids: Some("1,2".into()),
        },
        Push::FailingOver {
            seq: seq + 4,
            time: 2,
            shard_ids: None,
        },
        Push::FailedOver {
            seq: seq + 5,
            shard_ids: None,
        },
        Push::SMigrating {
            seq: seq + 6,
            slots: vec!["0-100,200".into(), "300".into()],
        },
        Push::SMigrated {
            seq: seq + 7,
            moves: vec![SlotMove {
                src: "127.0.0.1:7001".into(),
                dst: "127.0.0.1:7002".into(),
                slots: "0-100,200".into(),
            }],
        },
        Push::SMigratedFlat {
            seq: seq + 8,
            src: "127.0.0.1:7001".into(),
            dst: "127.0.0.1:7002".into(),
            slots: vec!["5".into()],
        },
        Push::SMigratedLegacy {
            seq: seq + 9,
            dst: "127.0.0.1:7002".into(),
            slots: vec!["5-6".into()],
        },
    ]
}

// ===== handshake and registry =====

/// Waits for `c` to close and checks that it closed at `deadline` (not
/// before, and within 100 ms after).
async fn closes_at(name: &str, c: &Connection, deadline: Instant) {
    within(Duration::from_secs(3), name, c.closed()).await;
    let t = Instant::now();
    assert!(
        t >= deadline - Duration::from_millis(5),
        "{name} closed early: {:?} before",
        deadline - t
    );
    assert!(
        t < deadline + Duration::from_millis(100),
        "{name} closed late: {:?}",
        t - deadline
    );
}

/// Issue 3, handshake emulation: `CLIENT MAINT_NOTIFICATIONS` is answered
/// `+OK` in its place among pipelined replies (spec rule: both the bare `ON`
/// and the `ON moving-endpoint-type T` forms, any case), and the registry
/// records the name, RESP3 and the endpoint type; `OFF` opts out.
#[tokio::test]
async fn handshake_is_answered_in_order_and_registered() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let conn = connect(sim.endpoint(), "app-1").await;
        let p: Pipeline = [
            cmd("SET").arg("k").arg("v"),
            cmd("client")
                .arg("maint_notifications")
                .arg("on")
                .arg("MOVING-ENDPOINT-TYPE")
                .arg("External-FQDN"),
            cmd("GET").arg("k"),
        ]
        .into_iter()
        .collect();
        let replies = within(STEP, "pipeline", conn.send(p))
            .await
            .unwrap()
            .into_pipeline()
            .unwrap();
        assert_eq!(replies, vec![Ok(ok()), Ok(ok()), Ok(bulk("v"))]);
        let id = client_id(&sim, "app-1").await;
        let info = sim.clients().into_iter().find(|c| c.id == id).unwrap();
        assert!(info.resp3);
        assert_eq!(info.endpoint, sim.endpoint());
        assert_eq!(info.maint, Some(EndpointType::ExternalFqdn));
        assert_eq!(info.maint_requests, 1);

        assert_eq!(
            send(&conn, cmd("CLIENT").arg("MAINT_NOTIFICATIONS").arg("OFF")).await,
            ok()
        );
        sim.wait_for(|cs| cs.iter().any(|c| c.id == id && c.maint.is_none()))
            .await;
        assert_eq!(
            send(&conn, cmd("CLIENT").arg("MAINT_NOTIFICATIONS").arg("ON")).await,
            ok()
        );
        sim.wait_for(|cs| {
            cs.iter()
                .any(|c| c.id == id && c.maint == Some(EndpointType::InternalIp))
        })
        .await;

        // Bad forms get error replies, and nothing changes.
        for bad in [
            cmd("CLIENT").arg("MAINT_NOTIFICATIONS").arg("MAYBE"),
            opt_in(EndpointType::None).arg("extra"),
            cmd("CLIENT")
                .arg("MAINT_NOTIFICATIONS")
                .arg("ON")
                .arg("moving-endpoint-type")
                .arg("auto"),
        ] {
            let e = within(STEP, "bad", conn.send_cmd(bad)).await.unwrap_err();
            assert!(matches!(e, Error::Server(_)), "{e:?}");
        }
        assert_eq!(send(&conn, cmd("GET").arg("k")).await, bulk("v"));
    })
    .await
}

/// A server upgrade as clients see it: `HELLO` names the version set, in
/// RESP3 (a map) and RESP2 (an array of pairs), and the server's own again
/// once unset; everything else in the reply is the server's.
#[tokio::test]
async fn hello_names_the_version_set() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let addr = sim.endpoint();
        let info = || async move { connect(addr, "v").await.info().unwrap().clone() };
        let own = info().await;
        // The real server's, whatever it is; not the one set below.
        let real = own.version.clone().expect("the server's version");
        assert_ne!(real, "8.2.0");
        sim.set_server_version(Some("8.2.0".into()));
        let i = info().await;
        assert_eq!(i.version.as_deref(), Some("8.2.0"));
        assert_eq!(
            (i.server.as_deref(), &i.mode, &i.role),
            (Some("redis"), &own.mode, &own.role)
        );
        // RESP2 (our connector sends no HELLO there): by hand.
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let named = b"$7\r\nversion\r\n$5\r\n8.2.0\r\n";
        while !reply.windows(named.len()).any(|w| w == named) {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(STEP, raw.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("got {:?}", String::from_utf8_lossy(&reply)))
                .unwrap();
            assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&reply));
            reply.extend_from_slice(&buf[..n]);
        }
        assert!(
            reply.starts_with(b"*"),
            "an array: {:?}",
            String::from_utf8_lossy(&reply)
        );
        sim.set_server_version(None);
        assert_eq!(info().await.version, own.version);
    })
    .await
}

/// Issue 3: "answers ... with an error when configured to (to test
/// Auto/Enabled modes)", word for word as open-source Redis would; and a
/// RESP2 connection cannot opt in (pushes need RESP3).
#[tokio::test]
async fn handshake_errors() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let oss = "ERR unknown subcommand 'MAINT_NOTIFICATIONS'. Try CLIENT HELP.";
        sim.set_handshake_error(Some(oss.into()));
        let conn = connect(sim.endpoint(), "a").await;
        let e = within(
            STEP,
            "opt in",
            conn.send_cmd(opt_in(EndpointType::InternalIp)),
        )
        .await
        .unwrap_err();
        match e {
            Error::Server(s) => assert_eq!(s.as_bytes(), oss.as_bytes()),
            other => panic!("{other:?}"),
        }
        sim.set_handshake_error(None);
        assert_eq!(send(&conn, opt_in(EndpointType::InternalIp)).await, ok());

        let resp2 = within(
            STEP,
            "connect resp2",
            support::sim::raw_connector()
                .protocol(redis_layers::Protocol::Resp2)
                .connect(endpoint(sim.endpoint())),
        )
        .await
        .unwrap();
        resp2.dedicate();
        let e = within(
            STEP,
            "resp2 opt in",
            resp2.send_cmd(opt_in(EndpointType::InternalIp)),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Server(_)), "{e:?}");
    })
    .await
}

// ===== injection =====

/// Issue 3, injection API: every notification kind reaches an opted-in
/// connection as exactly the spec's frame (checked as bytes on a raw
/// socket and as values through our transport), in order, and never a
/// connection that did not opt in.
#[tokio::test]
async fn every_kind_reaches_only_opted_in_connections() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let (conn, mut pushes, id) =
            opted_in(&sim, sim.endpoint(), "in", EndpointType::InternalIp).await;
        let quiet = connect(sim.endpoint(), "out").await;
        let mut quiet_pushes = quiet.take_pushes().unwrap();
        let mut raw_in = Raw::connect(sim.endpoint(), true).await;
        let mut raw_out = Raw::connect(sim.endpoint(), false).await;
        sim.wait_for(|cs| cs.len() == 4 && cs.iter().filter(|c| c.maint.is_some()).count() == 2)
            .await;

        let kinds = all_kinds(sim.next_seq());
        for n in &kinds {
            assert_eq!(sim.notify(Target::All, n), 2, "{n:?}");
        }
        for n in &kinds {
            assert_eq!(next_push(&mut pushes, n.name()).await, n.to_value());
            assert_eq!(raw_in.frame().await, n.to_bytes().to_vec(), "{n:?}");
        }
        assert_no_push(&conn, &mut pushes, "nothing else").await;
        assert_no_push(&quiet, &mut quiet_pushes, "not opted in").await;
        raw_out.write(b"*1\r\n$4\r\nPING\r\n").await;
        assert_eq!(raw_out.frame().await, b"+PONG\r\n");

        // One connection, by id.
        let n = Push::Migrated {
            seq: sim.next_seq(),
            shard_ids: None,
        };
        assert_eq!(sim.notify(Target::Client(id), &n), 1);
        assert_eq!(next_push(&mut pushes, "targeted").await, n.to_value());
    })
    .await
}

/// Issue 3: "injections of malformed frames reach the client as sent",
/// between whole replies.
#[tokio::test]
async fn raw_injection_arrives_as_sent() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let mut s = Raw::connect(sim.endpoint(), false).await;
        sim.wait_for(|cs| cs.len() == 1 && cs[0].resp3).await;
        let garbage: &[u8] = b">3\r\n$6\r\nMOVING\r\n:x\r\n";
        assert_eq!(sim.inject_raw(Target::All, Bytes::from_static(garbage)), 1);
        assert_eq!(s.bytes(garbage.len()).await, garbage);
        // A big reply is never cut by an injection.
        let big = "x".repeat(1 << 20);
        s.write(&cmd("SET").arg("big").arg(big.as_str()).to_bytes())
            .await;
        assert_eq!(s.frame().await, b"+OK\r\n");
        s.write(&cmd("GET").arg("big").to_bytes()).await;
        sim.inject_raw(Target::All, Bytes::from_static(b"+INJECTED\r\n"));
        let first = s.frame().await;
        let second = s.frame().await;
        let frames = [first, second];
        assert!(frames.contains(&b"+INJECTED\r\n".to_vec()));
        let whole = format!("${}\r\n{big}\r\n", big.len()).into_bytes();
        assert!(frames.contains(&whole), "the reply stayed whole");
    })
    .await
}

// ===== delays and faults =====

/// Issue 3: "reply delays are real (measured)": per connection and per
/// endpoint; other connections keep their speed.
#[tokio::test]
async fn reply_delays_are_real() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let slow = connect(sim.endpoint(), "slow").await;
        let fast = connect(sim.endpoint(), "fast").await;
        let id = client_id(&sim, "slow").await;
        let delay = Duration::from_millis(200);
        sim.set_delay(Target::Client(id), delay);
        let t = Instant::now();
        send(&slow, cmd("PING")).await;
        let slow_took = t.elapsed();
        let t = Instant::now();
        send(&fast, cmd("PING")).await;
        let fast_took = t.elapsed();
        assert!(slow_took >= delay, "{slow_took:?}");
        assert!(fast_took < delay / 2, "{fast_took:?}");

        // A pipeline waits once, not once per reply.
        let p: Pipeline = (0..20).map(|_| cmd("PING")).collect();
        let t = Instant::now();
        within(STEP, "pipeline", slow.send(p)).await.unwrap();
        let took = t.elapsed();
        assert!(took >= delay && took < delay * 3, "{took:?}");

        sim.set_delay(Target::Client(id), Duration::ZERO);
        sim.set_delay(Target::Endpoint(sim.endpoint()), delay);
        let t = Instant::now();
        send(&fast, cmd("PING")).await;
        assert!(t.elapsed() >= delay);
        sim.set_delay(Target::Endpoint(sim.endpoint()), Duration::ZERO);
        let t = Instant::now();
        send(&fast, cmd("PING")).await;
        assert!(t.elapsed() < delay / 2);
    })
    .await
}

/// Issue 3: refuse new connections, close connections.
#[tokio::test]
async fn refuse_and_close() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let conn = connect(sim.endpoint(), "victim").await;
        let id = client_id(&sim, "victim").await;
        sim.refuse_connections(sim.endpoint(), true);
        let r = within(
            STEP,
            "refused connect",
            support::sim::raw_connector().connect(endpoint(sim.endpoint())),
        )
        .await;
        assert!(r.is_err(), "connected while refusing");
        sim.refuse_connections(sim.endpoint(), false);
        connect(sim.endpoint(), "welcome").await;

        assert_eq!(sim.close(Target::Client(id)), 1);
        within(STEP, "closed", conn.closed()).await;
        let e = within(STEP, "after close", conn.send_cmd(cmd("PING")))
            .await
            .unwrap_err();
        assert!(e.is_connection_error(), "{e:?}");
    })
    .await
}

// ===== scenarios =====

/// Issue 3, `moving(time, target)`: MOVING with increasing seq to the
/// opted-in connections of the old endpoint only, addressed in each
/// connection's moving-endpoint-type (`none` -> null); data written before
/// is readable through the new endpoint; a connection that opts in on the
/// old endpoint during the window gets MOVING too; at the deadline (within
/// 100 ms) every old-endpoint connection is closed and the endpoint refuses
/// new ones.
#[tokio::test]
async fn moving_scenario() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let old = sim.endpoint();
        let (ip, mut ip_pushes, _) = opted_in(&sim, old, "ip", EndpointType::InternalIp).await;
        let (fqdn, mut fqdn_pushes, _) =
            opted_in(&sim, old, "fqdn", EndpointType::ExternalFqdn).await;
        let (none, mut none_pushes, _) = opted_in(&sim, old, "none", EndpointType::None).await;
        let quiet = connect(old, "quiet").await;
        let mut quiet_pushes = quiet.take_pushes().unwrap();
        assert_eq!(send(&ip, cmd("SET").arg("survives").arg("yes")).await, ok());
        let before = sim.next_seq();

        let started = Instant::now();
        let scenario = tokio::spawn({
            let sim = sim.clone();
            async move { sim.moving(MovingPlan::new(Duration::from_secs(1))).await }
        });
        let deadline = started + Duration::from_secs(1);

        let m = next_push(&mut ip_pushes, "MOVING ip").await;
        let Value::Push(items) = &m else {
            panic!("{m:?}")
        };
        assert_eq!(items[0], bulk("MOVING"));
        let seq = items[1].as_int().unwrap();
        assert!(seq > before, "seq {seq} after {before}");
        assert_eq!(items[2], Value::Integer(1));
        let to = String::from_utf8(items[3].as_bytes().unwrap().to_vec()).unwrap();
        let to: SocketAddr = to.parse().expect("internal-ip gives ip:port");
        assert_ne!(to, old);
        assert_eq!(
            next_push(&mut fqdn_pushes, "MOVING fqdn").await,
            Push::Moving {
                seq,
                time: 1,
                endpoint: Some(format!("localhost:{}", to.port()))
            }
            .to_value()
        );
        assert_eq!(
            next_push(&mut none_pushes, "MOVING none").await,
            Push::Moving {
                seq,
                time: 1,
                endpoint: None
            }
            .to_value()
        );
        assert_no_push(&quiet, &mut quiet_pushes, "not opted in").await;

        // The new endpoint serves the same data.
        let fresh = connect(to, "fresh").await;
        assert_eq!(send(&fresh, cmd("GET").arg("survives")).await, bulk("yes"));

        // A late arrival on the old endpoint is told too.
        let (late, mut late_pushes, _) =
            opted_in(&sim, old, "late", EndpointType::InternalIp).await;
        assert_eq!(
            next_push(&mut late_pushes, "late MOVING").await,
            Push::Moving {
                seq,
                time: 0,
                endpoint: Some(to.to_string())
            }
            .to_value()
        );

        // The deadline closes every old-endpoint connection.
        for (name, c) in [
            ("ip", &ip),
            ("fqdn", &fqdn),
            ("none", &none),
            ("quiet", &quiet),
            ("late", &late),
        ] {
            closes_at(name, c, deadline).await;
        }
        let moved = within(STEP, "scenario", scenario).await.unwrap().unwrap();
        assert_eq!(
            (
                moved.seq,
                moved.from,
                moved.to,
                moved.notified,
                moved.closed
            ),
            (seq, old, to, 3, 5)
        );
        assert!(!fresh.is_closed());
        assert_eq!(
            send(&fresh, cmd("PING")).await,
            Value::SimpleString("PONG".into())
        );
        let r = within(
            STEP,
            "old endpoint",
            support::sim::raw_connector().connect(endpoint(old)),
        )
        .await;
        assert!(matches!(r, Err(Error::Io(_))), "{r:?}");
    })
    .await
}

/// `Moving::stay_open` (the address stays valid, as behind a load balancer:
/// the null-endpoint case): the connections on the old endpoint when
/// `MOVING` goes out are told (a not-yet-opted-in one when it opts in) and
/// closed at the deadline, their sockets seeing EOF; a connection made on
/// the old endpoint after `MOVING` is never told, survives the deadline and
/// keeps serving the same data; the old endpoint keeps accepting
/// connections after the deadline; `to` is still opened.
#[tokio::test]
async fn moving_stay_open_keeps_the_address() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let old = sim.endpoint();
        assert!(
            !MovingPlan::new(Duration::from_secs(1)).stay_open,
            "default"
        );
        let (none, mut none_pushes, _) = opted_in(&sim, old, "none", EndpointType::None).await;
        let (ip, mut ip_pushes, _) = opted_in(&sim, old, "ip", EndpointType::InternalIp).await;
        let quiet = connect(old, "quiet").await;
        let mut quiet_pushes = quiet.take_pushes().unwrap();
        let mut raw = Raw::connect(old, true).await;
        sim.wait_for(|cs| cs.len() == 4 && cs.iter().filter(|c| c.maint.is_some()).count() == 3)
            .await;
        assert_eq!(send(&none, cmd("SET").arg("k").arg("kept")).await, ok());

        let mut m = MovingPlan::new(Duration::from_secs(1));
        m.stay_open = true;
        let h = sim.start_moving(m).unwrap();
        let (seq, to, deadline) = (h.seq, h.to, h.deadline.into_std());
        assert_eq!((h.from, h.notified), (old, 3));
        assert_ne!(to, old);
        assert!(sim.is_open(to) && sim.is_open(old));
        assert_eq!(
            next_push(&mut none_pushes, "MOVING none").await,
            Push::Moving {
                seq,
                time: 1,
                endpoint: None
            }
            .to_value()
        );
        assert_eq!(
            next_push(&mut ip_pushes, "MOVING ip").await,
            Push::Moving {
                seq,
                time: 1,
                endpoint: Some(to.to_string())
            }
            .to_value()
        );
        let told = Push::Moving {
            seq,
            time: 1,
            endpoint: Some(to.to_string()),
        };
        assert_eq!(raw.frame().await, told.to_bytes().to_vec(), "raw");
        // `to` serves clients that asked for an address.
        let there = connect(to, "there").await;
        assert_eq!(send(&there, cmd("GET").arg("k")).await, bulk("kept"));

        // A connection made on the old address after the MOVING reaches the
        // new node: not told, same data.
        let (after, mut after_pushes, after_id) =
            opted_in(&sim, old, "after", EndpointType::None).await;
        assert_eq!(send(&after, cmd("GET").arg("k")).await, bulk("kept"));
        assert_no_push(&after, &mut after_pushes, "after the MOVING").await;
        // An old connection that opts in during the window is told.
        assert_eq!(send(&quiet, opt_in(EndpointType::InternalIp)).await, ok());
        assert_eq!(
            next_push(&mut quiet_pushes, "late opt-in").await,
            Push::Moving {
                seq,
                time: 0,
                endpoint: Some(to.to_string())
            }
            .to_value()
        );

        // The deadline closes the old connections, and only those.
        raw.eof(Duration::from_secs(3)).await;
        for (name, c) in [("none", &none), ("ip", &ip), ("quiet", &quiet)] {
            closes_at(name, c, deadline).await;
        }
        let moved = within(STEP, "finished", h.finished()).await.unwrap();
        assert_eq!(
            (
                moved.seq,
                moved.from,
                moved.to,
                moved.notified,
                moved.closed
            ),
            (seq, old, to, 3, 4)
        );
        assert!(!after.is_closed());
        assert!(sim.clients().iter().any(|c| c.id == after_id));
        assert_eq!(send(&after, cmd("SET").arg("k").arg("later")).await, ok());
        assert_eq!(send(&after, cmd("GET").arg("k")).await, bulk("later"));
        assert_no_push(&after, &mut after_pushes, "after the deadline").await;

        // The old address still takes new connections, to the same server.
        assert!(sim.is_open(old));
        let next = connect(old, "next").await;
        assert_eq!(send(&next, cmd("GET").arg("k")).await, bulk("later"));
        let info = sim.endpoints_info();
        let old_info = info.iter().find(|e| e.addr == old).unwrap();
        assert!(old_info.open);
        assert_eq!(old_info.clients, 2);
        assert!(!there.is_closed());
    })
    .await
}

/// Issue 3, `migrate(duration)` and `failover(duration)`: the opening and
/// closing notifications in order with increasing seq, replies measurably
/// slowed inside the window only.
#[tokio::test]
async fn migrate_and_failover_windows() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let (conn, mut pushes, _) =
            opted_in(&sim, sim.endpoint(), "c", EndpointType::InternalIp).await;
        for migrate in [true, false] {
            let mut w = Window::new(Duration::from_millis(600));
            w.reply_delay = Duration::from_millis(150);
            let run = {
                let sim = sim.clone();
                let w = w.clone();
                tokio::spawn(async move {
                    if migrate {
                        sim.migrate(w).await
                    } else {
                        sim.failover(w).await
                    }
                })
            };
            let open = next_push(&mut pushes, "opening").await;
            let t = Instant::now();
            send(&conn, cmd("PING")).await;
            let slowed = t.elapsed();
            let seqs = within(STEP, "window", run).await.unwrap();
            let close = next_push(&mut pushes, "closing").await;
            let t = Instant::now();
            send(&conn, cmd("PING")).await;
            let after = t.elapsed();

            let (o, c) = if migrate {
                (
                    Push::Migrating {
                        seq: seqs.start,
                        time: 0,
                        shard_ids: Some("1".into()),
                    },
                    Push::Migrated {
                        seq: seqs.end,
                        shard_ids: Some("1".into()),
                    },
                )
            } else {
                (
                    Push::FailingOver {
                        seq: seqs.start,
                        time: 0,
                        shard_ids: Some("1".into()),
                    },
                    Push::FailedOver {
                        seq: seqs.end,
                        shard_ids: Some("1".into()),
                    },
                )
            };
            assert_eq!(open, o.to_value());
            assert_eq!(close, c.to_value());
            assert!(seqs.end > seqs.start);
            assert_eq!(seqs.notified, 1);
            assert!(slowed >= w.reply_delay, "inside the window: {slowed:?}");
            assert!(after < w.reply_delay / 2, "after the window: {after:?}");
        }
    })
    .await
}

/// `open_endpoint_at` binds the address asked for (another loopback IP,
/// a chosen port) to the same server; `endpoints_info` / `is_open` tell open
/// endpoints from closed ones.
#[tokio::test]
async fn endpoint_at_a_chosen_address() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let first = sim.endpoint();
        let port = support::free_port();
        let at = SocketAddr::from(([127, 0, 0, 2], port));
        assert_eq!(sim.open_endpoint_at(at).await.unwrap(), at);
        // Taken now.
        assert!(sim.open_endpoint_at(at).await.is_err());
        let a = connect(first, "a").await;
        assert_eq!(send(&a, cmd("SET").arg("k").arg("there")).await, ok());
        let b = connect(at, "b").await;
        assert_eq!(send(&b, cmd("GET").arg("k")).await, bulk("there"));
        let info = sim.endpoints_info();
        assert_eq!(info.len(), 2);
        assert_eq!(info[1].addr, at);
        assert_eq!(info[1].backend, info[0].backend);
        assert!(info[1].open && info[0].open);
        assert_eq!((info[0].clients, info[1].clients), (1, 1));
        assert!(sim.is_open(at));
        assert_eq!(sim.close_endpoint(at), 1);
        within(STEP, "closed", b.closed()).await;
        assert!(!sim.is_open(at));
        assert!(!sim.endpoints_info()[1].open);
        assert!(!sim.is_open("127.0.0.1:1".parse().unwrap()));
    })
    .await
}

/// `start_moving` returns at once with the seq and the target (here an
/// address that was no endpoint, on another loopback IP, opened by the
/// move) before the deadline; `finished()` returns after it. Bad moves fail
/// at once. `start_migrate` likewise returns with the opening seq.
#[tokio::test]
async fn scenario_starters_return_at_once() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let old = sim.endpoint();
        let (c, mut pushes, _) = opted_in(&sim, old, "c", EndpointType::InternalIp).await;
        let (_f, mut fqdn_pushes, _) = opted_in(&sim, old, "f", EndpointType::InternalFqdn).await;
        assert_eq!(send(&c, cmd("SET").arg("k").arg("v")).await, ok());

        // A window: the handle has the opening seq before the window ends.
        let t = Instant::now();
        let w = sim.start_migrate(Window::new(Duration::from_millis(300)));
        assert!(t.elapsed() < Duration::from_millis(100));
        assert_eq!((w.endpoint, w.notified), (old, 2));
        assert_eq!(
            next_push(&mut pushes, "MIGRATING").await,
            Push::Migrating {
                seq: w.start,
                time: 0,
                shard_ids: Some("1".into())
            }
            .to_value()
        );
        next_push(&mut fqdn_pushes, "MIGRATING fqdn").await;
        let start = w.start;
        let seqs = within(STEP, "window", w.finished()).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(seqs.start, start);
        assert_eq!(
            next_push(&mut pushes, "MIGRATED").await,
            Push::Migrated {
                seq: seqs.end,
                shard_ids: Some("1".into())
            }
            .to_value()
        );
        next_push(&mut fqdn_pushes, "MIGRATED fqdn").await;

        // Bad moves fail at once.
        let mut m = MovingPlan::new(Duration::from_secs(1));
        m.to = Some(old);
        assert!(sim.start_moving(m).is_err(), "to itself");
        let mut m = MovingPlan::new(Duration::from_secs(1));
        m.from = Some("127.0.0.1:1".parse().unwrap());
        assert!(sim.start_moving(m).is_err(), "no such endpoint");

        // A move to an address that is no endpoint yet: opened by the move.
        let port = support::free_port();
        let at = SocketAddr::from(([127, 0, 0, 3], port));
        let mut m = MovingPlan::new(Duration::from_secs(1));
        m.to = Some(at);
        let t = Instant::now();
        let h = sim.start_moving(m).unwrap();
        assert!(t.elapsed() < Duration::from_millis(100));
        assert_eq!((h.from, h.to, h.notified), (old, at, 2));
        assert!(h.deadline > tokio::time::Instant::now());
        assert!(sim.is_open(at) && sim.is_open(old));
        let seq = h.seq;
        assert_eq!(
            next_push(&mut pushes, "MOVING").await,
            Push::Moving {
                seq,
                time: 1,
                endpoint: Some(at.to_string())
            }
            .to_value()
        );
        // An fqdn client is given the IP: the host name stands for 127.0.0.1.
        assert_eq!(
            next_push(&mut fqdn_pushes, "MOVING fqdn").await,
            Push::Moving {
                seq,
                time: 1,
                endpoint: Some(at.to_string())
            }
            .to_value()
        );
        let there = connect(at, "there").await;
        assert_eq!(send(&there, cmd("GET").arg("k")).await, bulk("v"));
        let moved = within(STEP, "finished", h.finished()).await.unwrap();
        assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!((moved.seq, moved.from, moved.to), (seq, old, at));
        assert_eq!((moved.notified, moved.closed), (2, 2));
        assert!(!sim.is_open(old));
        assert!(sim.is_open(at));
        // A closed endpoint cannot move again.
        let mut m = MovingPlan::new(Duration::from_secs(1));
        m.from = Some(old);
        assert!(sim.start_moving(m).is_err(), "closed");
    })
    .await
}

/// A weak handle does not keep the simulator running: once the last
/// `Simulator` is dropped, it stops and `upgrade` gives `None`.
#[tokio::test]
async fn weak_handle() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        let ep = sim.endpoint();
        let weak = sim.downgrade();
        let again = weak.upgrade().expect("running");
        assert_eq!(again.endpoint(), ep);
        drop(again);
        let c = connect(ep, "c").await;
        drop(sim);
        assert!(weak.upgrade().is_none());
        within(STEP, "closed", c.closed()).await;
        // The listener goes away with its task.
        assert!(
            refused_within(ep, Duration::from_millis(500)).await,
            "still listening"
        );
    })
    .await
}

/// True once a connection to `addr` is refused, trying every 5 ms for up
/// to `limit`.
async fn refused_within(addr: SocketAddr, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A closed endpoint refuses connections at once even while another
/// thread spawns child processes, each of which holds a copy of every
/// descriptor between its fork and its exec: the listener is shut down,
/// not only dropped (dropped alone, about 3 in 1,000 closed listeners
/// still accepted a connection here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_endpoint_refuses_while_processes_are_spawned() {
    bounded(60, async {
        let (_server, sim) = sim().await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spawner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::process::Command::new("true").status();
                    n += 1;
                }
                n
            })
        };
        let mut accepted = 0;
        for _ in 0..2000 {
            let a = sim
                .open_endpoint_at("127.0.0.31:0".parse().unwrap())
                .await
                .unwrap();
            sim.close_endpoint(a);
            if tokio::net::TcpStream::connect(a).await.is_ok() {
                accepted += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let spawned = spawner.join().unwrap();
        assert!(spawned > 0);
        assert_eq!(
            accepted, 0,
            "closed endpoints that accepted a connection ({spawned} processes spawned meanwhile)"
        );
    })
    .await
}

/// Issue 19, defect 3: an endpoint opened at the address of one that was
/// closed (the OS hands recently used ports out again) is the one lookups
/// find: new connections through it work, `start_moving` from it succeeds,
/// and the registry has one entry for the address. And a closed endpoint
/// refuses connections once `close_endpoint` returns (the listener is
/// shut down then, not when its accept task next runs).
#[tokio::test]
async fn a_reused_address_replaces_the_closed_endpoint() {
    bounded(30, async {
        let (_server, sim) = sim().await;
        for round in 0..20 {
            // A loopback IP of its own: no test beside this one is handed
            // the freed port there.
            let a = sim
                .open_endpoint_at("127.0.0.29:0".parse().unwrap())
                .await
                .unwrap();
            let conn = connect(a, "before").await;
            assert_eq!(
                send(&conn, cmd("PING")).await,
                Value::SimpleString("PONG".into())
            );
            sim.close_endpoint(a);
            // Refused at once, also while a concurrent test spawns a child
            // process (which holds a copy of every descriptor between its
            // fork and its exec): the listener is shut down, not only
            // dropped. Before that, CI saw a connect accepted here twice in
            // about 10 runs.
            assert!(
                tokio::net::TcpStream::connect(a).await.is_err(),
                "round {round}: {a} still listening after close_endpoint"
            );
            assert!(!sim.is_open(a));

            let again = sim.open_endpoint_at(a).await.unwrap();
            assert_eq!(again, a);
            assert!(sim.is_open(a));
            let conn = connect(a, "after").await;
            assert_eq!(
                send(&conn, cmd("PING")).await,
                Value::SimpleString("PONG".into())
            );
            assert_eq!(
                sim.endpoints_info().iter().filter(|e| e.addr == a).count(),
                1,
                "one registry entry per address"
            );
            let mut m = MovingPlan::new(Duration::from_secs(1));
            m.from = Some(a);
            let h = sim.start_moving(m).expect("MOVING from the reused address");
            drop(h);
            sim.close_endpoint(a);
        }
    })
    .await
}

/// Issue 19, simulated DNS lag: a `MOVING` with `Moving::dns` names the new
/// endpoint by a host name (to `*-fqdn` connections only); the name leads
/// to the old endpoint's IP until the lag has passed, then to the new one's,
/// through the resolver's plain lookup and its `tower::Service` face alike.
#[tokio::test]
async fn moving_with_dns_lag() {
    use redis_layers::sim::{DnsLag, SimResolver};
    use tower::ServiceExt;
    bounded(30, async {
        let (_server, sim) = sim().await;
        let from = sim.endpoint();
        let (_fq, mut fq_pushes, _) =
            opted_in(&sim, from, "fqdn", EndpointType::InternalFqdn).await;
        let (_ip, mut ip_pushes, _) = opted_in(&sim, from, "ip", EndpointType::InternalIp).await;
        let dns = SimResolver::new();
        let lag = Duration::from_millis(1500);
        let mut m = MovingPlan::new(Duration::from_secs(3));
        m.to = Some("127.0.0.2:0".parse().unwrap());
        m.stay_open = true;
        m.dns = Some(DnsLag {
            resolver: dns.clone(),
            name: "db.sim.test".into(),
            lag,
        });
        let sent = Instant::now();
        let h = sim.start_moving(m).unwrap();
        let to = h.to;
        assert_eq!(to.ip().to_string(), "127.0.0.2");
        assert_eq!(
            next_push(&mut fq_pushes, "MOVING (fqdn)").await,
            Push::Moving {
                seq: h.seq,
                time: 3,
                endpoint: Some(format!("db.sim.test:{}", to.port())),
            }
            .to_value()
        );
        assert_eq!(
            next_push(&mut ip_pushes, "MOVING (ip)").await,
            Push::Moving {
                seq: h.seq,
                time: 3,
                endpoint: Some(to.to_string()),
            }
            .to_value()
        );
        // During the lag the name leads to the old node.
        let name = format!("db.sim.test:{}", to.port());
        let early = dns.lookup(&name).await.unwrap();
        assert!(
            sent.elapsed() < lag,
            "the lookup came too late to check the lag"
        );
        assert_eq!(early, vec![SocketAddr::new(from.ip(), to.port())]);
        within(STEP, "record change", dns.wait_for("db.sim.test", to.ip())).await;
        let changed_after = sent.elapsed();
        assert!(changed_after >= lag, "changed after {changed_after:?}");
        let late = dns.clone().oneshot(name).await.unwrap();
        assert_eq!(late, vec![to]);
        // The new address serves.
        let conn = connect(late[0], "follower").await;
        assert_eq!(
            send(&conn, cmd("PING")).await,
            Value::SimpleString("PONG".into())
        );
        println!("DNS record changed {changed_after:?} after MOVING (lag {lag:?})");
    })
    .await
}

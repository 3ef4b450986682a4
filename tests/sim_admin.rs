//! The simulator's admin port (`redis_layers::sim::admin`) and the
//! `redis-maint-sim` binary, driven through our own `Connection` and
//! `redis-cli`, in front of real redis-server processes. Each test checks the
//! effect of the commands on proxied clients, not only the replies: those
//! clients are raw RESP3 sockets, so what they see is exactly what the
//! simulator sent, whatever the crate's own transport does with
//! maintenance notifications.
//!
//! Every test is bounded with `tokio::time::timeout`; servers, simulators
//! and the binary stop when the test ends.
#![cfg(feature = "sim")]

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_layers::sim::admin::Admin;
use redis_layers::sim::{EndpointType, Push, Simulator, SlotMove};
use redis_layers::{cmd, Cmd, Connection, Connector, Endpoint, Error, Protocol, Value};
use support::cluster::RedisCluster;
use support::{bounded, within, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ===== helpers =====

const STEP: Duration = Duration::from_secs(5);

/// A real server, the simulator in front of it, and its admin port.
struct Rig {
    _server: RedisServer,
    sim: Simulator,
    admin: Admin,
    /// Our connection to the admin port (RESP3).
    ctl: Connection,
}

async fn rig() -> Rig {
    let server = RedisServer::start();
    let backend: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let sim = Simulator::start(backend).await.expect("simulator");
    let admin = Admin::bind(sim.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("admin");
    let ctl = connect(admin.local_addr(), "ctl").await;
    Rig {
        _server: server,
        sim,
        admin,
        ctl,
    }
}

impl Rig {
    /// Runs an admin command; panics on an error reply.
    async fn run(&self, args: &[&str]) -> Value {
        admin(&self.ctl, args).await
    }

    /// Runs an admin command that must fail; returns the error text.
    async fn fails(&self, args: &[&str]) -> String {
        admin_err(&self.ctl, args).await
    }
}

async fn admin(conn: &Connection, args: &[&str]) -> Value {
    let c = cmd(args[0]).args(&args[1..]);
    within(STEP, &format!("{args:?}"), conn.send_cmd(c))
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

async fn admin_err(conn: &Connection, args: &[&str]) -> String {
    let c = cmd(args[0]).args(&args[1..]);
    match within(STEP, &format!("{args:?}"), conn.send_cmd(c)).await {
        Err(Error::Server(e)) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        other => panic!("{args:?}: wanted an error reply, got {other:?}"),
    }
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::tcp(addr.ip().to_string(), addr.port())
}

async fn connect(addr: SocketAddr, name: &str) -> Connection {
    let conn = within(
        STEP,
        "connect",
        Connector::new().client_name(name).connect(endpoint(addr)),
    )
    .await
    .expect("connect");
    // Admin commands and hand-made opt-ins: a connection of the test's own.
    conn.dedicate();
    conn
}

fn opt_in(t: EndpointType) -> Cmd {
    cmd("CLIENT")
        .arg("MAINT_NOTIFICATIONS")
        .arg("ON")
        .arg("moving-endpoint-type")
        .arg(t.as_str())
}

/// A raw RESP3 client on `addr`, named and opted in (internal-ip); with the
/// simulator's id for it.
async fn opted_in(sim: &Simulator, addr: SocketAddr, name: &str) -> (Raw, u64) {
    let mut c = Raw::connect(addr, name).await;
    assert_eq!(
        c.request(&opt_in(EndpointType::InternalIp)).await,
        b"+OK\r\n"
    );
    let id = client_id(sim, name).await;
    (c, id)
}

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

fn ok() -> Value {
    Value::SimpleString(Bytes::from_static(b"OK"))
}

fn bulk(s: &str) -> Value {
    Value::BulkString(Bytes::copy_from_slice(s.as_bytes()))
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(
        v.as_bytes()
            .unwrap_or_else(|| panic!("not a string: {v:?}")),
    )
    .into_owned()
}

/// `[seq, "host:port"]`.
fn seq_and_addr(v: &Value) -> (i64, SocketAddr) {
    let Value::Array(items) = v else {
        panic!("{v:?}")
    };
    assert_eq!(items.len(), 2, "{v:?}");
    (items[0].as_int().unwrap(), text(&items[1]).parse().unwrap())
}

fn int(v: &Value) -> i64 {
    v.as_int()
        .unwrap_or_else(|| panic!("not an integer: {v:?}"))
}

/// One `SIM.CLIENTS` / `SIM.ENDPOINTS` entry as field -> value.
fn entries(v: &Value) -> Vec<Vec<(String, Value)>> {
    let Value::Array(items) = v else {
        panic!("{v:?}")
    };
    items
        .iter()
        .map(|e| match e {
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (text(k), v.clone())).collect(),
            // RESP2: a flat array.
            Value::Array(flat) => flat
                .chunks_exact(2)
                .map(|p| (text(&p[0]), p[1].clone()))
                .collect(),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn field<'a>(e: &'a [(String, Value)], name: &str) -> &'a Value {
    &e.iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no field {name} in {e:?}"))
        .1
}

/// A raw RESP client: bytes exactly as the simulator sends them. Push
/// frames that arrive while waiting for a reply are kept for `push`.
struct Raw {
    sock: tokio::net::TcpStream,
    buf: bytes::BytesMut,
    pushes: std::collections::VecDeque<Vec<u8>>,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        let sock = within(STEP, "raw connect", tokio::net::TcpStream::connect(addr))
            .await
            .unwrap();
        Raw {
            sock,
            buf: bytes::BytesMut::new(),
            pushes: Default::default(),
        }
    }

    /// Connects with `HELLO 3 SETNAME name`.
    async fn connect(addr: SocketAddr, name: &str) -> Raw {
        let mut r = Raw::open(addr).await;
        let hello = r
            .request(&cmd("HELLO").arg(3).arg("SETNAME").arg(name))
            .await;
        assert_eq!(hello[0], b'%', "{:?}", String::from_utf8_lossy(&hello));
        r
    }

    /// Connects RESP2 (no `HELLO`), named with `CLIENT SETNAME`.
    async fn connect_resp2(addr: SocketAddr, name: &str) -> Raw {
        let mut r = Raw::open(addr).await;
        let ok = r.request(&cmd("CLIENT").arg("SETNAME").arg(name)).await;
        assert_eq!(ok, b"+OK\r\n");
        r
    }

    /// Sends a command; returns its reply frame (pushes are kept aside).
    async fn request(&mut self, c: &Cmd) -> Vec<u8> {
        self.write(&c.to_bytes()).await;
        loop {
            let f = self.frame().await;
            if f[0] == b'>' {
                self.pushes.push_back(f);
            } else {
                return f;
            }
        }
    }

    /// How long a `PING` takes.
    async fn ping_time(&mut self) -> Duration {
        let t = Instant::now();
        assert_eq!(self.request(&cmd("PING")).await, b"+PONG\r\n");
        t.elapsed()
    }

    /// The next push frame, as bytes.
    async fn push(&mut self) -> Vec<u8> {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        let f = self.frame().await;
        assert_eq!(f[0], b'>', "not a push: {:?}", String::from_utf8_lossy(&f));
        f
    }

    /// The next push frame, decoded.
    async fn push_value(&mut self) -> Value {
        let f = self.push().await;
        redis_layers::resp::Decoder::new()
            .decode(&mut bytes::BytesMut::from(&f[..]))
            .unwrap()
            .unwrap()
    }

    /// After a round trip, no push is waiting: one queued before the PING
    /// would have come before its reply.
    async fn assert_no_push(&mut self, what: &str) {
        self.ping_time().await;
        assert!(self.pushes.is_empty(), "{what}: {:?}", self.pushes);
    }

    async fn write(&mut self, b: &[u8]) {
        self.sock.write_all(b).await.unwrap();
    }

    async fn bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            self.fill().await;
        }
        self.buf.split_to(n).to_vec()
    }

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

    /// Waits until the peer closes (EOF or reset), skipping any bytes that
    /// come first; panics if it does not within the step.
    async fn closed(&mut self) {
        within(STEP, "raw close", async {
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

// ===== protocol =====

/// PING/ECHO/HELP/SEQ, the RESP3 and RESP2 handshakes, inline commands, and
/// an error reply (never a panic, never a dropped connection) for each kind
/// of bad input; a broken frame closes the connection.
#[tokio::test]
async fn protocol_and_errors() {
    bounded(30, async {
        let r = rig().await;
        assert_eq!(r.run(&["ping"]).await, Value::SimpleString("PONG".into()));
        assert_eq!(r.run(&["PING", "hi"]).await, bulk("hi"));
        assert_eq!(r.run(&["echo", "x y"]).await, bulk("x y"));
        let Value::Array(help) = r.run(&["SIM.HELP"]).await else {
            panic!()
        };
        let help: Vec<String> = help.iter().map(text).collect();
        for c in [
            "SIM.MOVING",
            "SIM.MIGRATE",
            "SIM.FAILOVER",
            "SIM.NOTIFY",
            "SIM.INJECT",
            "SIM.DELAY",
            "SIM.REFUSE",
            "SIM.CLOSE ",
            "SIM.CLOSE-ENDPOINT",
            "SIM.HANDSHAKE-ERROR",
            "SIM.SERVER-VERSION",
            "SIM.CLIENTS",
            "SIM.ENDPOINTS",
            "SIM.SEQ",
        ] {
            assert!(help.iter().any(|l| l.starts_with(c)), "HELP lacks {c}");
        }
        assert_eq!(r.run(&["HELP"]).await, r.run(&["help"]).await);
        let a = int(&r.run(&["SIM.SEQ"]).await);
        let b = int(&r.run(&["sim.seq"]).await);
        assert!(b > a);

        let bad: &[&[&str]] = &[
            &["NOPE", "x"],
            &["PING", "a", "b"],
            &["SIM.SEQ", "extra"],
            &["SIM.MOVING"],
            &["SIM.MOVING", "soon"],
            &["SIM.MOVING", "-1"],
            &["SIM.MOVING", "1e9"],
            &["SIM.MOVING", "1", "FROM", "nowhere"],
            &["SIM.MOVING", "1", "FROM", "127.0.0.1:1"],
            &["SIM.MOVING", "1", "SIDEWAYS"],
            &["SIM.MOVING", "1", "TO", "127.0.0.1:1", "SAME-PORT"],
            &["SIM.MIGRATE", "x"],
            &["SIM.MIGRATE", "10", "DELAY"],
            &["SIM.MIGRATE", "10", "DELAY", "99999999"],
            &["SIM.FAILOVER", "10", "ENDPOINT", "127.0.0.1:1"],
            &["SIM.NOTIFY"],
            &["SIM.NOTIFY", "SOME", "MOVING", "1", "1"],
            &["SIM.NOTIFY", "CLIENT", "999", "MOVING", "1", "1"],
            &["SIM.NOTIFY", "ENDPOINT", "127.0.0.1:1", "MOVING", "1", "1"],
            &["SIM.NOTIFY", "ALL", "WOBBLE", "1"],
            &["SIM.NOTIFY", "ALL", "MOVING", "x", "1"],
            &["SIM.NOTIFY", "ALL", "MOVING", "1"],
            &["SIM.NOTIFY", "ALL", "MOVING", "1", "1", "a:1", "extra"],
            &["SIM.NOTIFY", "ALL", "MIGRATED", "1", "s", "extra"],
            &["SIM.NOTIFY", "ALL", "SMIGRATING", "1"],
            &["SIM.NOTIFY", "ALL", "SMIGRATED", "1", "a:1", "b:2"],
            &["SIM.NOTIFY", "ALL", "SMIGRATED", "1", "a\r\n:1", "b:2", "1"],
            &["SIM.NOTIFY", "ALL", "SMIGRATED-FLAT", "1", "a:1", "b:2"],
            &["SIM.NOTIFY", "ALL", "SMIGRATED-LEGACY", "1", "b:2"],
            &["SIM.INJECT", "ALL"],
            &["SIM.INJECT", "ALL", ""],
            &["SIM.INJECT", "ALL", "\\q"],
            &["SIM.INJECT", "ALL", "\\x4"],
            &["SIM.INJECT", "ALL", "x", "y"],
            &["SIM.DELAY", "ALL"],
            &["SIM.DELAY", "ALL", "-5"],
            &["SIM.DELAY", "ALL", "3600001"],
            &["SIM.REFUSE", "127.0.0.1:1", "ON"],
            &["SIM.REFUSE", "localhost", "ON"],
            &["SIM.CLOSE"],
            &["SIM.CLOSE", "CLIENT", "abc"],
            &["SIM.CLOSE-ENDPOINT", "127.0.0.1:1"],
            &["SIM.HANDSHAKE-ERROR"],
            &["SIM.HANDSHAKE-ERROR", "ERR two\r\nlines"],
            &["SIM.SERVER-VERSION"],
            &["SIM.SERVER-VERSION", "8.2.0", "extra"],
            &["SIM.SERVER-VERSION", "8.2\r\n"],
            &["SIM.CLIENTS", "x"],
            &["SIM.ENDPOINTS", "x"],
            &["HELLO", "4"],
            &["CLIENT", "KILL", "x"],
        ];
        for args in bad {
            let e = r.fails(args).await;
            assert!(
                e.starts_with("ERR ") || e.starts_with("NOPROTO "),
                "{args:?}: {e}"
            );
        }
        let e = r
            .fails(&["SIM.REFUSE", &r.sim.endpoint().to_string(), "MAYBE"])
            .await;
        assert!(e.contains("ON or OFF"), "{e}");
        assert!(r
            .fails(&["sim.nope"])
            .await
            .contains("unknown command 'sim.nope'"));
        // Still one healthy connection after all that.
        assert_eq!(r.run(&["PING"]).await, Value::SimpleString("PONG".into()));

        // RESP2 clients get maps as flat arrays.
        let resp2 = within(
            STEP,
            "resp2",
            Connector::new()
                .protocol(Protocol::Resp2)
                .connect(endpoint(r.admin.local_addr())),
        )
        .await
        .unwrap();
        resp2.dedicate();
        let eps = admin(&resp2, &["SIM.ENDPOINTS"]).await;
        let Value::Array(list) = &eps else { panic!() };
        assert!(
            matches!(&list[0], Value::Array(a) if a.len() == 10),
            "{eps:?}"
        );
        assert_eq!(
            text(field(&entries(&eps)[0], "endpoint")),
            r.sim.endpoint().to_string()
        );

        // Inline commands, as typed into telnet.
        let mut raw = tokio::net::TcpStream::connect(r.admin.local_addr())
            .await
            .unwrap();
        raw.write_all(b"PING\r\necho \"a b\"\r\n\r\nSIM.NOTIFY ALL MOVING * 3 'NULL'\nBOGUS\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let want_prefix = b"+PONG\r\n$3\r\na b\r\n*2\r\n:";
        while !got.ends_with(b"(try SIM.HELP)\r\n") {
            let mut chunk = [0u8; 512];
            let n = within(STEP, "inline", raw.read(&mut chunk)).await.unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(
            got.starts_with(want_prefix),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            String::from_utf8_lossy(&got).contains(":0\r\n-ERR unknown command 'BOGUS'"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        // A frame that is not a command: an error, the connection lives on.
        raw.write_all(b"*1\r\n:1\r\n*1\r\n$4\r\nPING\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 256];
        let mut n = 0;
        while !buf[..n].ends_with(b"+PONG\r\n") {
            let m = within(STEP, "bad frame", raw.read(&mut buf[n..]))
                .await
                .unwrap();
            assert!(m > 0);
            n += m;
        }
        assert!(buf[..n].starts_with(b"-ERR Protocol error"));
        // A broken frame: an error, then the admin closes the connection.
        raw.write_all(b"*x\r\n").await.unwrap();
        let mut rest = Vec::new();
        within(STEP, "close", raw.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(rest.starts_with(b"-ERR Protocol error"), "{rest:?}");
        // The admin survives it.
        assert_eq!(r.run(&["PING"]).await, Value::SimpleString("PONG".into()));
    })
    .await
}

// ===== scenarios =====

/// `SIM.MOVING` replies at once with the seq and the new endpoint; the
/// opted-in client gets exactly that `MOVING`; the new endpoint serves the
/// same data; the old endpoint closes at the deadline; `SIM.ENDPOINTS`
/// follows, and the next `SIM.MOVING` moves from the new current endpoint.
#[tokio::test]
async fn moving_replies_at_once_and_plays_out() {
    bounded(30, async {
        let r = rig().await;
        let old = r.sim.endpoint();
        let (mut c, _) = opted_in(&r.sim, old, "mover").await;
        assert_eq!(c.request(&cmd("SET").arg("k").arg("v")).await, b"+OK\r\n");

        let t = Instant::now();
        let reply = r.run(&["sim.moving", "1"]).await;
        assert!(t.elapsed() < Duration::from_millis(500), "reply waited");
        let (seq, to) = seq_and_addr(&reply);
        let deadline = t + Duration::from_secs(1);
        assert_eq!(
            c.push().await,
            Push::Moving {
                seq,
                time: 1,
                endpoint: Some(to.to_string())
            }
            .to_bytes()
        );
        let mut fresh = Raw::connect(to, "fresh").await;
        assert_eq!(fresh.request(&cmd("GET").arg("k")).await, b"$1\r\nv\r\n");

        c.closed().await;
        let now = Instant::now();
        assert!(
            now + Duration::from_millis(50) >= deadline,
            "early by {:?}",
            deadline - now
        );
        assert!(
            now < deadline + Duration::from_millis(300),
            "late by {:?}",
            now - deadline
        );

        // The scenario's end is recorded once its task sees the deadline.
        let mut eps = Vec::new();
        for _ in 0..50 {
            eps = entries(&r.run(&["SIM.ENDPOINTS"]).await);
            if text(field(&eps[0], "state")) == "closed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(eps.len(), 2);
        assert_eq!(text(field(&eps[0], "endpoint")), old.to_string());
        assert_eq!(text(field(&eps[0], "state")), "closed");
        assert_eq!(field(&eps[0], "current"), &Value::Boolean(false));
        assert_eq!(text(field(&eps[1], "endpoint")), to.to_string());
        assert_eq!(text(field(&eps[1], "state")), "open");
        assert_eq!(field(&eps[1], "current"), &Value::Boolean(true));
        assert_eq!(field(&eps[1], "clients"), &Value::Integer(1));
        assert!(r
            .fails(&["SIM.MOVING", "1", "FROM", &old.to_string()])
            .await
            .contains("closed"));
        assert!(r
            .fails(&["SIM.MOVING", "1", "TO", &to.to_string()])
            .await
            .contains("moves"));
        let e = r
            .fails(&["SIM.MIGRATE", "10", "ENDPOINT", &old.to_string()])
            .await;
        assert!(e.contains("closed"), "{e}");

        // The next one starts from where clients went; time 0 closes at once.
        let (mut c2, _) = opted_in(&r.sim, to, "mover2").await;
        let (seq2, to2) = seq_and_addr(&r.run(&["SIM.MOVING", "0"]).await);
        assert!(seq2 > seq);
        assert_ne!(to2, to);
        assert_eq!(
            c2.push().await,
            Push::Moving {
                seq: seq2,
                time: 0,
                endpoint: Some(to2.to_string())
            }
            .to_bytes()
        );
        c2.closed().await;
        // `fresh` was on that endpoint too.
        fresh.closed().await;
    })
    .await
}

/// `SIM.MOVING ... STAY-OPEN`: the client from before the `MOVING` is told
/// and closed at the deadline; one that connects to the old endpoint after
/// it is not told and keeps working past the deadline; the old endpoint
/// stays open (`SIM.ENDPOINTS`) and takes new connections.
#[tokio::test]
async fn moving_stay_open() {
    bounded(30, async {
        let r = rig().await;
        let old = r.sim.endpoint();
        let (mut c, _) = opted_in(&r.sim, old, "before").await;
        assert_eq!(c.request(&cmd("SET").arg("k").arg("v")).await, b"+OK\r\n");

        let (seq, to) = seq_and_addr(&r.run(&["SIM.MOVING", "1", "stay-open"]).await);
        assert_eq!(
            c.push().await,
            Push::Moving {
                seq,
                time: 1,
                endpoint: Some(to.to_string())
            }
            .to_bytes()
        );
        let (mut after, _) = opted_in(&r.sim, old, "after").await;
        assert_eq!(after.request(&cmd("GET").arg("k")).await, b"$1\r\nv\r\n");
        after.assert_no_push("after the MOVING").await;

        // The deadline closes `before` only.
        c.closed().await;
        assert_eq!(
            after.request(&cmd("SET").arg("k").arg("w")).await,
            b"+OK\r\n"
        );
        after.assert_no_push("after the deadline").await;
        let eps = entries(&r.run(&["SIM.ENDPOINTS"]).await);
        assert_eq!(text(field(&eps[0], "endpoint")), old.to_string());
        assert_eq!(text(field(&eps[0], "state")), "open");
        assert_eq!(field(&eps[0], "clients"), &Value::Integer(1));
        let mut next = Raw::connect(old, "next").await;
        assert_eq!(next.request(&cmd("GET").arg("k")).await, b"$1\r\nw\r\n");
    })
    .await
}

/// `SAME-PORT` and `TO` an address that is not an endpoint yet open an
/// endpoint there (a simulator endpoint, no relay): clients reach the same
/// data through it, `SIM.CLIENTS` shows that endpoint and the client's own
/// address, an `*-fqdn` client is told the new endpoint's IP (the host name
/// stands for the old one), and delays, closes and `CLOSE-ENDPOINT` work on
/// it as on any endpoint.
#[tokio::test]
async fn moving_to_a_chosen_address() {
    bounded(30, async {
        let r = rig().await;
        let first = r.sim.endpoint();
        let (mut c, _) = opted_in(&r.sim, first, "a").await;
        let mut f = Raw::connect(first, "fqdn").await;
        assert_eq!(
            f.request(&opt_in(EndpointType::ExternalFqdn)).await,
            b"+OK\r\n"
        );
        c.request(&cmd("SET").arg("k").arg("same")).await;
        let (seq, to) = seq_and_addr(&r.run(&["SIM.MOVING", "5", "SAME-PORT"]).await);
        assert_eq!(to.port(), first.port());
        assert_ne!(to.ip(), first.ip());
        assert!(to.ip().is_loopback());
        assert_eq!(
            c.push().await,
            Push::Moving {
                seq,
                time: 5,
                endpoint: Some(to.to_string())
            }
            .to_bytes()
        );
        assert_eq!(
            f.push().await,
            Push::Moving {
                seq,
                time: 5,
                endpoint: Some(to.to_string())
            }
            .to_bytes()
        );

        let mut raw = Raw::connect(to, "via-relay").await;
        let mine = raw.sock.local_addr().unwrap();
        assert_eq!(raw.request(&cmd("GET").arg("k")).await, b"$4\r\nsame\r\n");
        let cs = entries(&r.run(&["SIM.CLIENTS"]).await);
        let e = cs
            .iter()
            .find(|e| field(e, "name") == &bulk("via-relay"))
            .expect("listed");
        assert_eq!(text(field(e, "endpoint")), to.to_string());
        assert_eq!(text(field(e, "peer")), mine.to_string());
        assert_eq!(field(e, "resp3"), &Value::Boolean(true));
        assert_eq!(field(e, "maint"), &Value::Null);
        let id = int(field(e, "id")).to_string();
        let eps = entries(&r.run(&["SIM.ENDPOINTS"]).await);
        let ep = eps
            .iter()
            .find(|e| text(field(e, "endpoint")) == to.to_string())
            .unwrap();
        assert_eq!(
            text(field(ep, "backend")),
            r.sim.backend_of(first).unwrap().to_string()
        );
        assert_eq!(field(ep, "current"), &Value::Boolean(true));

        // Injection and delays reach connections there.
        r.run(&["SIM.INJECT", "CLIENT", &id, "+RELAYED\\r\\n"])
            .await;
        assert_eq!(raw.frame().await, b"+RELAYED\r\n");
        r.run(&["SIM.DELAY", "ENDPOINT", &to.to_string(), "150"])
            .await;
        let took = raw.ping_time().await;
        assert!(took >= Duration::from_millis(150), "{took:?}");

        // TO a free address.
        let port = support::free_port();
        let at = format!("127.0.0.3:{port}");
        let (_, to3) = seq_and_addr(
            &r.run(&["SIM.MOVING", "5", "FROM", &to.to_string(), "TO", &at])
                .await,
        );
        assert_eq!(to3.to_string(), at);
        let mut c3 = Raw::connect(to3, "c3").await;
        assert_eq!(c3.request(&cmd("GET").arg("k")).await, b"$4\r\nsame\r\n");

        // CLOSE-ENDPOINT there: its connections close, it stops listening.
        assert_eq!(
            int(&r.run(&["SIM.CLOSE-ENDPOINT", &to3.to_string()]).await),
            1
        );
        c3.closed().await;
        let refused = within(STEP, "refused", tokio::net::TcpStream::connect(to3)).await;
        assert!(refused.is_err(), "still listening");
        // SIM.CLOSE on a connection there closes the client's socket.
        assert_eq!(int(&r.run(&["SIM.CLOSE", "CLIENT", &id]).await), 1);
        raw.closed().await;
    })
    .await
}

/// `SIM.MIGRATE` and `SIM.FAILOVER` reply at once with the opening seq;
/// the client gets the opening notification with that seq, slow replies
/// during the window, the closing notification after it, and fast replies
/// again. Options `STARTS` and `SHARDS` shape the frames.
#[tokio::test]
async fn migrate_and_failover_windows() {
    bounded(30, async {
        let r = rig().await;
        let (mut c, _) = opted_in(&r.sim, r.sim.endpoint(), "w").await;
        for migrate in [true, false] {
            let args: Vec<&str> = if migrate {
                vec!["SIM.MIGRATE", "600", "DELAY", "150"]
            } else {
                vec![
                    "sim.failover",
                    "600",
                    "delay",
                    "150",
                    "starts",
                    "3",
                    "shards",
                    "none",
                ]
            };
            let t = Instant::now();
            let (seq, ep) = seq_and_addr(&r.run(&args).await);
            assert!(t.elapsed() < Duration::from_millis(300), "reply waited");
            assert_eq!(ep, r.sim.endpoint());
            let open = c.push_value().await;
            let slowed = c.ping_time().await;
            let close = c.push_value().await;
            let after = c.ping_time().await;
            let Value::Push(items) = &close else {
                panic!("{close:?}")
            };
            let end = items[1].as_int().unwrap();
            assert!(end > seq);
            let (o, cl) = if migrate {
                (
                    Push::Migrating {
                        seq,
                        time: 0,
                        shard_ids: Some("1".into()),
                    },
                    Push::Migrated {
                        seq: end,
                        shard_ids: Some("1".into()),
                    },
                )
            } else {
                (
                    Push::FailingOver {
                        seq,
                        time: 3,
                        shard_ids: None,
                    },
                    Push::FailedOver {
                        seq: end,
                        shard_ids: None,
                    },
                )
            };
            assert_eq!(open, o.to_value());
            assert_eq!(close, cl.to_value());
            assert!(slowed >= Duration::from_millis(150), "inside: {slowed:?}");
            assert!(after < Duration::from_millis(75), "after: {after:?}");
        }
    })
    .await
}

// ===== injection =====

/// `SIM.NOTIFY` builds every notification kind from arguments: the client
/// receives exactly `Push::to_value()` of it; `*` takes the next
/// seq; targets `ALL`, `ENDPOINT` and `CLIENT` reach the right connections
/// (opted-in ones only), and the reply counts them.
#[tokio::test]
async fn notify_builds_every_kind() {
    bounded(30, async {
        let r = rig().await;
        let ep = r.sim.endpoint().to_string();
        let (mut c, id) = opted_in(&r.sim, r.sim.endpoint(), "n").await;
        let mut quiet = Raw::connect(r.sim.endpoint(), "quiet").await;
        client_id(&r.sim, "quiet").await;
        let id = id.to_string();
        let moves = vec![
            SlotMove {
                src: "127.0.0.1:7001".into(),
                dst: "127.0.0.1:7002".into(),
                slots: "0-100,200".into(),
            },
            SlotMove {
                src: "127.0.0.1:7003".into(),
                dst: "127.0.0.1:7004".into(),
                slots: "5".into(),
            },
        ];
        let cases: Vec<(Vec<&str>, Push)> = vec![
            (
                vec!["MOVING", "15", "30", "10.0.0.2:12000"],
                Push::Moving {
                    seq: 15,
                    time: 30,
                    endpoint: Some("10.0.0.2:12000".into()),
                },
            ),
            (
                vec!["moving", "16", "30"],
                Push::Moving {
                    seq: 16,
                    time: 30,
                    endpoint: None,
                },
            ),
            (
                vec!["MOVING", "17", "2", "null"],
                Push::Moving {
                    seq: 17,
                    time: 2,
                    endpoint: None,
                },
            ),
            (
                vec!["MIGRATING", "18", "5", "1,2"],
                Push::Migrating {
                    seq: 18,
                    time: 5,
                    shard_ids: Some("1,2".into()),
                },
            ),
            (
                vec!["MIGRATED", "19"],
                Push::Migrated {
                    seq: 19,
                    shard_ids: None,
                },
            ),
            (
                vec!["FAILING_OVER", "20", "2"],
                Push::FailingOver {
                    seq: 20,
                    time: 2,
                    shard_ids: None,
                },
            ),
            (
                vec!["failed-over", "21", "3"],
                Push::FailedOver {
                    seq: 21,
                    shard_ids: Some("3".into()),
                },
            ),
            (
                vec!["SMIGRATING", "22", "0-100,200", "300"],
                Push::SMigrating {
                    seq: 22,
                    slots: vec!["0-100,200".into(), "300".into()],
                },
            ),
            (
                vec![
                    "SMIGRATED",
                    "23",
                    "127.0.0.1:7001",
                    "127.0.0.1:7002",
                    "0-100,200",
                    "127.0.0.1:7003",
                    "127.0.0.1:7004",
                    "5",
                ],
                Push::SMigrated { seq: 23, moves },
            ),
            (
                vec![
                    "SMIGRATED-FLAT",
                    "24",
                    "127.0.0.1:7001",
                    "127.0.0.1:7002",
                    "5",
                    "7-9",
                ],
                Push::SMigratedFlat {
                    seq: 24,
                    src: "127.0.0.1:7001".into(),
                    dst: "127.0.0.1:7002".into(),
                    slots: vec!["5".into(), "7-9".into()],
                },
            ),
            (
                vec!["SMIGRATED_LEGACY", "25", "127.0.0.1:7002", "5-6"],
                Push::SMigratedLegacy {
                    seq: 25,
                    dst: "127.0.0.1:7002".into(),
                    slots: vec!["5-6".into()],
                },
            ),
        ];
        let targets: [&[&str]; 3] = [&["ALL"], &["ENDPOINT", &ep], &["CLIENT", &id]];
        for (i, (args, n)) in cases.iter().enumerate() {
            let mut full = vec!["SIM.NOTIFY"];
            full.extend_from_slice(targets[i % 3]);
            full.extend_from_slice(args);
            let reply = r.run(&full).await;
            assert_eq!(
                reply,
                Value::Array(vec![Value::Integer(n.seq()), Value::Integer(1)]),
                "{full:?}"
            );
            assert_eq!(c.push().await, n.to_bytes(), "{full:?}");
        }
        // `*`: the next sequence number, higher than any taken before.
        let before = int(&r.run(&["SIM.SEQ"]).await);
        let Value::Array(reply) = r.run(&["SIM.NOTIFY", "ALL", "MIGRATED", "*", "7"]).await else {
            panic!()
        };
        let seq = int(&reply[0]);
        assert!(seq > before);
        assert_eq!(
            c.push().await,
            Push::Migrated {
                seq,
                shard_ids: Some("7".into())
            }
            .to_bytes()
        );
        // The connection that did not opt in got none of it.
        quiet.assert_no_push("not opted in").await;
        c.assert_no_push("nothing else").await;
    })
    .await
}

/// `SIM.INJECT` sends the bytes as given, after decoding escapes, to opted-in
/// and other connections alike, between whole replies; the reply counts the
/// connections.
#[tokio::test]
async fn inject_sends_bytes_as_given() {
    bounded(30, async {
        let r = rig().await;
        let mut a = Raw::connect(r.sim.endpoint(), "raw-a").await;
        let mut b = Raw::connect(r.sim.endpoint(), "raw-b").await;
        let id_b = client_id(&r.sim, "raw-b").await.to_string();
        client_id(&r.sim, "raw-a").await;
        let sent = r"+OK\r\n>3\r\n$6\r\nMOVING\r\n:x\r\n\x00\xff\t\\";
        let want: &[u8] = b"+OK\r\n>3\r\n$6\r\nMOVING\r\n:x\r\n\x00\xff\t\\";
        assert_eq!(int(&r.run(&["SIM.INJECT", "ALL", sent]).await), 2);
        assert_eq!(a.bytes(want.len()).await, want);
        assert_eq!(b.bytes(want.len()).await, want);
        // Raw bytes with no escapes at all pass as they are, CR/LF included.
        let c = cmd("SIM.INJECT")
            .arg("CLIENT")
            .arg(id_b.as_str())
            .arg(&b"+two\r\n"[..]);
        let sent = within(STEP, "inject", r.ctl.send_cmd(c)).await.unwrap();
        assert_eq!(sent, Value::Integer(1));
        b.write(&cmd("PING").to_bytes()).await;
        assert_eq!(b.frame().await, b"+two\r\n");
        assert_eq!(b.frame().await, b"+PONG\r\n");
        a.write(&cmd("PING").to_bytes()).await;
        assert_eq!(a.frame().await, b"+PONG\r\n", "a got nothing more");
    })
    .await
}

// ===== delays and faults =====

/// `SIM.DELAY` per client, per endpoint and for all, measured; 0 ends it.
#[tokio::test]
async fn delay_is_measured() {
    bounded(30, async {
        let r = rig().await;
        let mut slow = Raw::connect(r.sim.endpoint(), "slow").await;
        let mut fast = Raw::connect(r.sim.endpoint(), "fast").await;
        let id = client_id(&r.sim, "slow").await.to_string();
        client_id(&r.sim, "fast").await;
        let d = Duration::from_millis(200);
        assert_eq!(r.run(&["SIM.DELAY", "CLIENT", &id, "200"]).await, ok());
        let took = slow.ping_time().await;
        assert!(took >= d, "{took:?}");
        let took = fast.ping_time().await;
        assert!(took < d / 2, "{took:?}");
        r.run(&["SIM.DELAY", "CLIENT", &id, "0"]).await;
        assert!(slow.ping_time().await < d / 2);

        let ep = r.sim.endpoint().to_string();
        r.run(&["SIM.DELAY", "ENDPOINT", &ep, "200"]).await;
        assert!(fast.ping_time().await >= d);
        // An endpoint's delay also holds for connections made later.
        let mut later = Raw::connect(r.sim.endpoint(), "later").await;
        assert!(later.ping_time().await >= d);
        r.run(&["SIM.DELAY", "ALL", "0"]).await;
        assert!(fast.ping_time().await < d / 2);
        r.run(&["SIM.DELAY", "ALL", "200"]).await;
        assert!(slow.ping_time().await >= d);
        r.run(&["SIM.DELAY", "ALL", "0"]).await;
        assert!(slow.ping_time().await < d / 2);
    })
    .await
}

/// `SIM.REFUSE` ON/OFF, `SIM.CLOSE` by client and for all, and
/// `SIM.CLOSE-ENDPOINT`, each observed from the client side.
#[tokio::test]
async fn refuse_and_close() {
    bounded(30, async {
        let r = rig().await;
        let ep = r.sim.endpoint();
        let eps = ep.to_string();
        let mut victim = Raw::connect(ep, "victim").await;
        let id = client_id(&r.sim, "victim").await.to_string();

        assert_eq!(r.run(&["SIM.REFUSE", &eps, "ON"]).await, ok());
        // Accepted, then closed before a byte is exchanged.
        let mut refused = Raw::open(ep).await;
        refused.write(&cmd("PING").to_bytes()).await;
        refused.closed().await;
        assert_eq!(r.run(&["sim.refuse", &eps, "off"]).await, ok());
        let mut other = Raw::connect(ep, "other").await;
        let mut third = Raw::connect(ep, "third").await;
        client_id(&r.sim, "third").await;

        assert_eq!(int(&r.run(&["SIM.CLOSE", "CLIENT", &id]).await), 1);
        victim.closed().await;
        other.ping_time().await;
        assert_eq!(int(&r.run(&["SIM.CLOSE", "ALL"]).await), 2);
        other.closed().await;
        third.closed().await;

        // On a loopback IP of its own: a port freed on 127.0.0.1 may be
        // handed at once to a test running beside this one (the flake
        // "endpoint still listening"); the listener itself is closed
        // before the reply (Simulator::close_endpoint).
        let lone = r
            .sim
            .open_endpoint_at("127.0.0.31:0".parse().unwrap())
            .await
            .unwrap();
        let mut last = Raw::connect(lone, "last").await;
        client_id(&r.sim, "last").await;
        let lones = lone.to_string();
        assert_eq!(int(&r.run(&["SIM.CLOSE-ENDPOINT", &lones]).await), 1);
        last.closed().await;
        let gone = within(STEP, "gone", tokio::net::TcpStream::connect(lone)).await;
        assert!(gone.is_err(), "endpoint still listening");
        let e = entries(&r.run(&["SIM.ENDPOINTS"]).await);
        let closed = e
            .iter()
            .find(|e| text(field(e, "endpoint")) == lones)
            .expect("the endpoint is listed");
        assert_eq!(text(field(closed, "state")), "closed");
    })
    .await
}

/// `SIM.HANDSHAKE-ERROR` makes the opt-in fail with exactly that text, `OFF`
/// restores it; `SIM.SERVER-VERSION` sets the version `HELLO` names;
/// `SIM.CLIENTS` reports id, endpoint, peer, name, RESP3, the
/// maintenance type and the number of opt-in requests of each connection.
#[tokio::test]
async fn handshake_error_and_clients() {
    bounded(30, async {
        let r = rig().await;
        let oss = "ERR unknown subcommand 'MAINT_NOTIFICATIONS'. Try CLIENT HELP.";
        // Words are joined with spaces, as redis-cli passes them.
        let words: Vec<&str> = oss.split(' ').collect();
        let mut args = vec!["SIM.HANDSHAKE-ERROR"];
        args.extend(words);
        assert_eq!(r.run(&args).await, ok());
        let mut hs = Raw::connect(r.sim.endpoint(), "hs").await;
        let refused = hs.request(&opt_in(EndpointType::ExternalFqdn)).await;
        assert_eq!(refused, format!("-{oss}\r\n").into_bytes());
        assert_eq!(r.run(&["SIM.HANDSHAKE-ERROR", "off"]).await, ok());
        let ok_ = hs.request(&opt_in(EndpointType::ExternalFqdn)).await;
        assert_eq!(ok_, b"+OK\r\n");
        // `SIM.SERVER-VERSION`: the version HELLO replies name, until OFF.
        let names = |reply: &[u8], v: &str| {
            let want = format!("$7\r\nversion\r\n${}\r\n{v}\r\n", v.len());
            reply.windows(want.len()).any(|w| w == want.as_bytes())
        };
        assert_eq!(r.run(&["SIM.SERVER-VERSION", "8.2.0"]).await, ok());
        assert!(names(&hs.request(&cmd("HELLO").arg("3")).await, "8.2.0"));
        assert_eq!(r.run(&["SIM.SERVER-VERSION", "OFF"]).await, ok());
        assert!(!names(&hs.request(&cmd("HELLO").arg("3")).await, "8.2.0"));
        let _old = Raw::connect_resp2(r.sim.endpoint(), "old").await;
        let raw = Raw::connect(r.sim.endpoint(), "raw").await;
        let raw_peer = raw.sock.local_addr().unwrap();
        client_id(&r.sim, "raw").await;

        let cs = entries(&r.run(&["SIM.CLIENTS"]).await);
        assert_eq!(cs.len(), 3);
        let by_name = |n: &str| {
            cs.iter()
                .find(|e| field(e, "name") == &bulk(n))
                .unwrap_or_else(|| panic!("{n} not in {cs:?}"))
        };
        let e = by_name("hs");
        assert_eq!(field(e, "maint"), &bulk("external-fqdn"));
        // One refused request, one answered.
        assert_eq!(field(e, "maint-requests"), &Value::Integer(2));
        assert_eq!(field(e, "resp3"), &Value::Boolean(true));
        assert_eq!(text(field(e, "endpoint")), r.sim.endpoint().to_string());
        let e = by_name("old");
        assert_eq!(field(e, "resp3"), &Value::Boolean(false));
        assert_eq!(field(e, "maint"), &Value::Null);
        assert_eq!(field(e, "maint-requests"), &Value::Integer(0));
        let e = by_name("raw");
        assert_eq!(text(field(e, "peer")), raw_peer.to_string());
        assert_eq!(field(e, "maint"), &Value::Null);
        let mut ids: Vec<i64> = cs.iter().map(|e| int(field(e, "id"))).collect();
        ids.sort();
        let mut sim_ids: Vec<i64> = r.sim.clients().iter().map(|c| c.id as i64).collect();
        sim_ids.sort();
        assert_eq!(ids, sim_ids);
    })
    .await
}

// ===== redis-cli and the binary =====

async fn redis_cli(port: u16, args: &[&str]) -> (bool, String) {
    let out = within(
        STEP,
        "redis-cli",
        tokio::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("redis-cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// `redis-cli -p <admin> SIM.MOVING 1` and friends work as documented.
#[tokio::test]
async fn redis_cli_drives_the_admin_port() {
    bounded(30, async {
        let r = rig().await;
        let port = r.admin.local_addr().port();
        let (mut c, _) = opted_in(&r.sim, r.sim.endpoint(), "cli").await;
        let (ok_, out) = redis_cli(port, &["SIM.MOVING", "2"]).await;
        assert!(ok_, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let seq: i64 = lines[0].parse().unwrap();
        assert_eq!(
            c.push().await,
            Push::Moving {
                seq,
                time: 2,
                endpoint: Some(lines[1].into())
            }
            .to_bytes()
        );
        let (_, out) = redis_cli(
            port,
            &[
                "SIM.INJECT",
                "ALL",
                ">2\\r\\n$4\\r\\ntest\\r\\n$2\\r\\nhi\\r\\n",
            ],
        )
        .await;
        assert_eq!(out, "1");
        assert_eq!(c.push().await, b">2\r\n$4\r\ntest\r\n$2\r\nhi\r\n");
        let (_, out) = redis_cli(port, &["SIM.CLIENTS"]).await;
        assert!(out.contains("internal-ip") && out.contains("cli"), "{out}");
        let (_, out) = redis_cli(port, &["sim.moving", "nope"]).await;
        assert!(out.starts_with("ERR "), "{out}");
        let (_, out) = redis_cli(port, &["SIM.HELP"]).await;
        assert!(out.contains("SIM.MOVING <secs>"), "{out}");
    })
    .await
}

/// The binary's child process, killed (and reaped) when dropped.
struct SimProcess(Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sim_bin() -> &'static str {
    env!("CARGO_BIN_EXE_redis-maint-sim")
}

/// The binary on free ports in front of a real server, driven through
/// redis-cli; Ctrl-C (SIGINT) stops it with status 0, SIGTERM too.
#[tokio::test]
async fn binary_end_to_end() {
    bounded(60, async {
        let server = RedisServer::start();
        for signal in ["-INT", "-TERM"] {
            let mut child = Command::new(sim_bin())
                .args(["--backend", &format!("localhost:{}", server.port())])
                .args(["--listen", "127.0.0.1:0", "--admin=127.0.0.1:0"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn redis-maint-sim");
            let stdout = child.stdout.take().unwrap();
            let proc = SimProcess(child);
            // The addresses it prints: `listen ...`, `admin ...`, `backend ...`.
            let lines = within(
                STEP,
                "startup lines",
                tokio::task::spawn_blocking(move || {
                    use std::io::BufRead;
                    let mut lines = Vec::new();
                    let mut rd = std::io::BufReader::new(stdout);
                    while lines.len() < 3 {
                        let mut l = String::new();
                        if rd.read_line(&mut l).unwrap() == 0 {
                            break;
                        }
                        lines.push(l.trim().to_string());
                    }
                    lines
                }),
            )
            .await
            .unwrap();
            let addr = |key: &str| -> SocketAddr {
                lines
                    .iter()
                    .find_map(|l| l.strip_prefix(key))
                    .unwrap_or_else(|| panic!("no {key} in {lines:?}"))
                    .trim()
                    .parse()
                    .unwrap()
            };
            let listen = addr("listen ");
            let admin_addr = addr("admin ");
            assert_eq!(addr("backend ").port(), server.port());

            let (ok_, out) = redis_cli(listen.port(), &["SET", "through", "proxy"]).await;
            assert!(ok_ && out == "OK", "{out}");
            assert_eq!(server.cli(&["GET", "through"]), "proxy");
            let mut c = Raw::connect(listen, "bin-client").await;
            let ok_ = c.request(&opt_in(EndpointType::InternalIp)).await;
            assert_eq!(ok_, b"+OK\r\n");
            // Wait until the admin sees the opt-in.
            let mut seen = false;
            for _ in 0..100 {
                let (_, out) = redis_cli(admin_addr.port(), &["SIM.CLIENTS"]).await;
                if out.contains("bin-client") && out.contains("internal-ip") {
                    seen = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(seen, "SIM.CLIENTS never showed the opt-in");
            let (_, out) = redis_cli(admin_addr.port(), &["SIM.MOVING", "1"]).await;
            let lines: Vec<&str> = out.lines().collect();
            let seq: i64 = lines[0].parse().unwrap();
            assert_eq!(
                c.push().await,
                Push::Moving {
                    seq,
                    time: 1,
                    endpoint: Some(lines[1].into())
                }
                .to_bytes()
            );
            c.closed().await;
            let moved: SocketAddr = lines[1].parse().unwrap();
            let (_, out) = redis_cli(moved.port(), &["GET", "through"]).await;
            assert_eq!(out, "proxy");

            // Ctrl-C (or SIGTERM): a clean exit.
            let pid = proc.0.id().to_string();
            let st = Command::new("kill").args([signal, &pid]).status().unwrap();
            assert!(st.success());
            let mut proc = proc;
            let status = within(STEP, "exit", async {
                loop {
                    if let Some(s) = proc.0.try_wait().unwrap() {
                        return s;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            assert!(status.success(), "{signal}: {status:?}");
            let gone = tokio::net::TcpStream::connect(admin_addr).await;
            assert!(gone.is_err(), "admin still listening");
        }
    })
    .await
}

/// `--help`, and clear errors (exit status 2) for bad arguments; a port
/// already in use is a runtime error (status 1) naming the option.
#[tokio::test]
async fn binary_arguments() {
    bounded(30, async {
        let run = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            async move {
                let out = within(
                    STEP,
                    "redis-maint-sim",
                    tokio::process::Command::new(sim_bin())
                        .args(&args)
                        .kill_on_drop(true)
                        .output(),
                )
                .await
                .unwrap();
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
        };
        let (code, out, _) = run(&["--help"]).await;
        assert_eq!(code, Some(0));
        for opt in [
            "--backend",
            "--listen",
            "--admin",
            "--cluster-seed",
            "Ctrl-C",
        ] {
            assert!(out.contains(opt), "--help lacks {opt}");
        }
        for (args, says) in [
            (&["--bogus"][..], "unknown argument '--bogus'"),
            (&["--listen"], "--listen needs a value"),
            (&["--listen", "somewhere"], "not an IP:PORT"),
            (&["--backend", "6379"], "not HOST:PORT"),
            (&["--cluster-seed", "7000"], "not HOST:PORT"),
            (
                &["--backend", "127.0.0.1:1", "--cluster-seed", "127.0.0.1:2"],
                "exclude each other",
            ),
        ] {
            let (code, _, err) = run(args).await;
            assert_eq!(code, Some(2), "{args:?}: {err}");
            assert!(err.contains(says), "{args:?}: {err}");
        }
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = taken.local_addr().unwrap().to_string();
        let (code, _, err) = run(&["--listen", &taken, "--admin", "127.0.0.1:0"]).await;
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("--listen"), "{err}");
        // A seed that is not a cluster node (nothing listens there).
        let free = support::free_port().to_string();
        let (code, _, err) = run(&["--cluster-seed", &format!("127.0.0.1:{free}")]).await;
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("--cluster-seed"), "{err}");
    })
    .await
}

// ===== cluster =====

/// A slot and a key in it, on primary `p` of `cluster`.
fn slot_and_key(cluster: &RedisCluster, p: usize, offset: u16) -> (u16, String) {
    let slot = *cluster.initial_range(p).start() + offset;
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| cluster.slot_of(k) == slot)
        .unwrap();
    (slot, key)
}

/// The seq of a push frame (`>n\r\n$len\r\nNAME\r\n:seq...`), decoded.
fn push_seq(f: &[u8]) -> i64 {
    let v = redis_layers::resp::Decoder::new()
        .decode(&mut bytes::BytesMut::from(f))
        .unwrap()
        .unwrap();
    let Value::Push(items) = v else {
        panic!("{v:?}")
    };
    items[1].as_int().unwrap()
}

/// `SIM.SLOT-MIGRATE` in front of a real cluster: the reply comes at once
/// with the `SMIGRATING` seq; an opted-in raw client on the source endpoint
/// gets `SMIGRATING` and then `SMIGRATED` (exact frames, endpoint addresses);
/// afterwards the destination node serves the slot and the key reads there.
/// Slot lists (`a-b,c`) and bad input.
#[tokio::test]
async fn slot_migrate_through_the_admin_port() {
    bounded(90, async {
        let cluster = RedisCluster::start();
        let ports = cluster.ports();
        let node = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
        let sim = Simulator::builder(node(0)).start_cluster().await.unwrap();
        let admin_srv = Admin::bind(sim.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let ctl = connect(admin_srv.local_addr(), "ctl").await;
        let eps: Vec<SocketAddr> = (0..3).map(|i| sim.endpoint_for(node(i)).unwrap()).collect();
        let (src, dst) = (eps[0].to_string(), eps[1].to_string());

        let (slot, key) = slot_and_key(&cluster, 0, 3);
        let mut w = Raw::connect(eps[0], "writer").await;
        assert_eq!(w.request(&cmd("SET").arg(&key).arg("v")).await, b"+OK\r\n");
        let (mut c, _) = opted_in(&sim, eps[0], "watcher").await;
        let (mut other, _) = opted_in(&sim, eps[1], "other").await;

        for (args, says) in [
            (
                vec!["SIM.SLOT-MIGRATE", "16384", &src, &dst],
                "invalid slots",
            ),
            (vec!["SIM.SLOT-MIGRATE", "9-3", &src, &dst], "invalid slots"),
            (vec!["SIM.SLOT-MIGRATE", "1,x", &src, &dst], "invalid slots"),
            (vec!["SIM.SLOT-MIGRATE", "1", &src, &src], "same"),
            (
                vec!["SIM.SLOT-MIGRATE", "1", &src, "127.0.0.1:1"],
                "no such endpoint",
            ),
            (vec!["SIM.SLOT-MIGRATE", "1", &src], "wrong number"),
        ] {
            let e = admin_err(&ctl, &args).await;
            assert!(e.contains(says), "{args:?}: {e}");
        }

        let t = Instant::now();
        let reply = admin(&ctl, &["sim.slot-migrate", &slot.to_string(), &src, &dst]).await;
        assert!(t.elapsed() < Duration::from_millis(500), "reply waited");
        let Value::Array(items) = &reply else {
            panic!("{reply:?}")
        };
        assert_eq!(items.len(), 1, "{reply:?}");
        let seq = int(&items[0]);
        assert_eq!(
            c.push().await,
            Push::SMigrating {
                seq,
                slots: vec![slot.to_string()]
            }
            .to_bytes()
        );
        let done = c.push().await;
        let end = push_seq(&done);
        assert!(end > seq);
        assert_eq!(
            done,
            Push::SMigrated {
                seq: end,
                moves: vec![SlotMove {
                    src: src.clone(),
                    dst: dst.clone(),
                    slots: slot.to_string()
                }],
            }
            .to_bytes()
        );
        other
            .assert_no_push("the destination's clients are not told")
            .await;
        cluster.wait_consistent();
        assert_eq!(cluster.node_for_slot(slot), 1);
        let mut r = Raw::connect(eps[1], "reader").await;
        assert_eq!(r.request(&cmd("GET").arg(&key)).await, b"$1\r\nv\r\n");

        // A slot list, from node 0 to node 2.
        let base = slot + 10;
        let list = format!("{}-{},{}", base, base + 1, base + 5);
        let reply = admin(
            &ctl,
            &["SIM.SLOT-MIGRATE", &list, &src, &eps[2].to_string()],
        )
        .await;
        let Value::Array(items) = &reply else {
            panic!("{reply:?}")
        };
        assert_eq!(
            c.push().await,
            Push::SMigrating {
                seq: int(&items[0]),
                slots: vec![list.clone()]
            }
            .to_bytes()
        );
        let done = c.push().await;
        assert_eq!(
            done,
            Push::SMigrated {
                seq: push_seq(&done),
                moves: vec![SlotMove {
                    src: src.clone(),
                    dst: eps[2].to_string(),
                    slots: list
                }],
            }
            .to_bytes()
        );
        cluster.wait_consistent();
        for s in [base, base + 1, base + 5] {
            assert_eq!(cluster.node_for_slot(s), 2, "slot {s}");
        }
        assert_eq!(cluster.node_for_slot(base + 2), 0);
    })
    .await
}

/// `redis-maint-sim --cluster-seed`: one `node <server> -> <endpoint>` line
/// per node, data through each endpoint, `SIM.SLOT-MIGRATE` from redis-cli
/// with the frames on an opted-in client; SIGTERM stops it.
#[tokio::test]
async fn binary_cluster_mode() {
    bounded(90, async {
        let cluster = RedisCluster::start();
        let ports = cluster.ports();
        let mut child = Command::new(sim_bin())
            .args(["--cluster-seed", &format!("localhost:{}", ports[0])])
            .args(["--listen", "127.0.0.1:0", "--admin=127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-maint-sim");
        let stdout = child.stdout.take().unwrap();
        let mut proc = SimProcess(child);
        let lines = within(
            STEP,
            "startup lines",
            tokio::task::spawn_blocking(move || {
                use std::io::BufRead;
                let mut lines = Vec::new();
                let mut rd = std::io::BufReader::new(stdout);
                loop {
                    let mut l = String::new();
                    if rd.read_line(&mut l).unwrap() == 0 {
                        break;
                    }
                    let l = l.trim().to_string();
                    let last = l.starts_with("cluster-seed ");
                    lines.push(l);
                    if last {
                        break;
                    }
                }
                lines
            }),
        )
        .await
        .unwrap();
        // node <server> -> <endpoint>, in any order.
        let nodes: Vec<(SocketAddr, SocketAddr)> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("node "))
            .map(|l| {
                let (s, e) = l.split_once(" -> ").unwrap();
                (s.parse().unwrap(), e.parse().unwrap())
            })
            .collect();
        assert_eq!(nodes.len(), ports.len(), "{lines:?}");
        let ep = |port: u16| -> SocketAddr {
            nodes
                .iter()
                .find(|(s, _)| s.port() == port)
                .unwrap_or_else(|| panic!("no node line for {port}: {lines:?}"))
                .1
        };
        let admin_addr: SocketAddr = lines
            .iter()
            .find_map(|l| l.strip_prefix("admin "))
            .unwrap_or_else(|| panic!("no admin line: {lines:?}"))
            .parse()
            .unwrap();
        for p in &ports {
            let (ok_, out) = redis_cli(ep(*p).port(), &["PING"]).await;
            assert!(ok_ && out == "PONG", "{out}");
        }

        let (slot, key) = slot_and_key(&cluster, 0, 5);
        let (src, dst) = (ep(ports[0]), ep(ports[1]));
        let (_, out) = redis_cli(src.port(), &["SET", &key, "bin"]).await;
        assert_eq!(out, "OK");
        let mut c = Raw::connect(src, "bin-watcher").await;
        assert_eq!(
            c.request(&opt_in(EndpointType::InternalIp)).await,
            b"+OK\r\n"
        );
        let (ok_, out) = redis_cli(
            admin_addr.port(),
            &[
                "SIM.SLOT-MIGRATE",
                &slot.to_string(),
                &src.to_string(),
                &dst.to_string(),
            ],
        )
        .await;
        assert!(ok_, "{out}");
        let seq: i64 = out.parse().unwrap_or_else(|_| panic!("{out}"));
        assert_eq!(
            c.push().await,
            Push::SMigrating {
                seq,
                slots: vec![slot.to_string()]
            }
            .to_bytes()
        );
        let done = c.push().await;
        assert_eq!(
            done,
            Push::SMigrated {
                seq: push_seq(&done),
                moves: vec![SlotMove {
                    src: src.to_string(),
                    dst: dst.to_string(),
                    slots: slot.to_string()
                }],
            }
            .to_bytes()
        );
        cluster.wait_consistent();
        assert_eq!(cluster.node_for_slot(slot), 1);
        let (_, out) = redis_cli(dst.port(), &["GET", &key]).await;
        assert_eq!(out, "bin");

        let pid = proc.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = within(STEP, "exit", async {
            loop {
                if let Some(s) = proc.0.try_wait().unwrap() {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(status.success(), "{status:?}");
    })
    .await
}

/// `Admin::bind_weak` does not keep the simulator running: dropping the
/// last `Simulator` stops it, and the admin port closes with it.
#[tokio::test]
async fn weak_admin_stops_with_the_simulator() {
    bounded(30, async {
        let server = RedisServer::start();
        let backend: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
        let sim = Simulator::start(backend).await.expect("simulator");
        let admin_srv = Admin::bind_weak(&sim, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let ctl = connect(admin_srv.local_addr(), "ctl").await;
        assert!(int(&admin(&ctl, &["SIM.SEQ"]).await) > 0);
        drop(sim);
        within(STEP, "admin connection closed", ctl.closed()).await;
        let mut refused = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(admin_srv.local_addr())
                .await
                .is_err()
            {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "admin still listening");
    })
    .await
}

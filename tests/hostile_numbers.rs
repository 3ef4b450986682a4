//! Issue 14, "Trust boundary": no number a server or a caller controls may
//! panic, abort or make the client allocate without bound. Each test drives
//! the whole stack against the scripted hostile server
//! (`support::hostile`) or a real redis-server, and checks that a bad
//! number gives a typed error (or is clamped) while the process and, where
//! possible, the connection stay up.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use redis_layers::client::{ClientBuilder, ServerMode};
use redis_layers::maint::{MaintenanceConfig, Mode};
use redis_layers::relax::RelaxTimeoutLayer;
use redis_layers::{cmd, Client, Connector, Error, Request, ServerErrorKind, Value};
use support::bounded;
use support::hostile::{self, HostileServer, Received};
use tower::{Layer, Service, ServiceExt};

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic in this test binary, on any thread or task: a panic
/// in a connection's driver task fails no caller directly (the connection
/// is made again), so the tests look here.
fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            prev(info)
        }));
    });
}

fn assert_no_panic(what: &str) {
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "{what}: something panicked"
    );
}

/// A standalone client of `server` with maintenance notifications on.
async fn standalone(server: &HostileServer, config: MaintenanceConfig) -> Client {
    ClientBuilder::new(server.endpoint())
        .mode(ServerMode::Standalone)
        .maintenance(config)
        .build()
        .await
        .expect("standalone client")
}

/// The client still serves: a write and a read back.
async fn serves(client: &Client, what: &str) {
    let key = format!("k-{}", PANICS.load(Ordering::SeqCst));
    client
        .cmd::<()>(cmd("SET").arg(&key).arg("v"))
        .await
        .unwrap_or_else(|e| panic!("{what}: SET failed: {e}"));
    let v: String = client
        .cmd(cmd("GET").arg(&key))
        .await
        .unwrap_or_else(|e| panic!("{what}: GET failed: {e}"));
    assert_eq!(v, "v", "{what}");
}

/// A `CLUSTER SLOTS` reply: the node at `port` serves every slot.
fn all_slots(port: u16) -> Vec<u8> {
    format!("*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:{port}\r\n").into_bytes()
}

/// A hostile "cluster" of one node that answers `GET` with `get_reply`.
fn hostile_cluster(
    get_reply: impl Fn(&Received) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> HostileServer {
    let port = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
    let p = port.clone();
    let server = HostileServer::scripted(move |r| match r.name().as_str() {
        // Redis before 7.0: the router falls back to CLUSTER SLOTS.
        "CLUSTER" if r.text().eq_ignore_ascii_case("CLUSTER SHARDS") => {
            Some(b"-ERR unknown subcommand 'SHARDS'\r\n".to_vec())
        }
        "CLUSTER" if r.text().eq_ignore_ascii_case("CLUSTER SLOTS") => {
            Some(all_slots(*p.get().expect("port set")))
        }
        "GET" => get_reply(r),
        _ => None,
    });
    port.set(server.port()).unwrap();
    server
}

async fn cluster_client(server: &HostileServer) -> Client {
    ClientBuilder::new(server.endpoint())
        .mode(ServerMode::Cluster)
        .build()
        .await
        .expect("cluster client")
}

/// `-MOVED 20000 host:port` (and `ASK`): slot 20000 does not exist. It
/// used to index the 16,384-entry slot table out of bounds in the caller's
/// task; now the reply is the caller's typed server error, never followed.
#[tokio::test]
async fn a_redirect_to_a_slot_out_of_range_is_a_typed_error() {
    bounded(20, async {
        for (kind, reply) in [
            (ServerErrorKind::Moved, "-MOVED 20000 127.0.0.1:1\r\n"),
            (ServerErrorKind::Ask, "-ASK 16384 127.0.0.1:1\r\n"),
            (ServerErrorKind::Moved, "-MOVED 65535 127.0.0.1:1\r\n"),
        ] {
            let server = hostile_cluster(move |_| Some(reply.as_bytes().to_vec()));
            let client = cluster_client(&server).await;
            // In a task of its own: a panic shows as a JoinError.
            let c = client.clone();
            let got = tokio::spawn(async move { c.cmd::<Value>(cmd("GET").arg("k")).await })
                .await
                .unwrap_or_else(|e| panic!("{reply:?} panicked the caller: {e}"));
            match got {
                Err(Error::Server(e)) => assert_eq!(e.kind(), &kind, "{reply:?}"),
                other => panic!("{reply:?}: expected a server error, got {other:?}"),
            }
            // Never routed: nothing went to port 1, and the client serves on.
            client
                .cmd::<()>(cmd("SET").arg("a").arg("1"))
                .await
                .expect("the client still serves");
        }
    })
    .await;
}

/// Server-announced times near `i64::MAX` (and negative ones): the driver
/// computed `now + time` and panicked. Now they are clamped at parse time
/// (`MAX_NOTIFICATION_TIME`) and every deadline saturates.
#[tokio::test]
async fn huge_and_negative_maintenance_times_do_not_panic() {
    watch_panics();
    bounded(30, async {
        let server = HostileServer::start();
        let me = server.addr().to_string();
        let client = standalone(&server, MaintenanceConfig::default().mode(Mode::Enabled)).await;
        serves(&client, "before").await;
        let max = i64::MAX.to_string();
        let huge = format!(":{max}");
        let frames = [
            hostile::push(&["MIGRATING", ":1", &huge]),
            hostile::push(&["MIGRATED", ":2"]),
            hostile::push(&["FAILING_OVER", ":3", &huge]),
            hostile::push(&["FAILED_OVER", ":4"]),
            hostile::push(&["FAILING_OVER", ":5", ":-9223372036854775808"]),
            hostile::push(&["FAILED_OVER", ":6"]),
            hostile::push(&["MIGRATING", ":7", "99999999999999999999999"]),
            hostile::push(&["MIGRATED", ":8"]),
            hostile::push(&["MOVING", ":9", &huge, "_"]),
            hostile::push(&["MOVING", ":10", &huge, &me]),
            hostile::push(&["MOVING", ":11", ":-1", &me]),
        ];
        for f in &frames {
            server.inject(f);
            serves(&client, &String::from_utf8_lossy(f)).await;
            assert_no_panic(&String::from_utf8_lossy(f));
        }
    })
    .await;
}

/// `Duration::MAX` as a timeout, wherever a caller can give one: the driver
/// computed `now + timeout` and panicked, failing every caller of the
/// connection. Now timeouts are clamped to `MAX_TIMEOUT` and every deadline
/// saturates.
#[tokio::test]
async fn duration_max_timeouts_do_not_panic() {
    watch_panics();
    bounded(30, async {
        let server = HostileServer::start();
        let max = Duration::MAX;

        // A request's own timeout, through the client.
        let client = standalone(&server, MaintenanceConfig::default()).await;
        let r = Request::from(cmd("SET").arg("a").arg("1")).with_timeout(max);
        client.send(r).await.expect("with_timeout(MAX)");
        serves(&client, "with_timeout(MAX)").await;
        assert_no_panic("with_timeout(MAX)");

        // The builder's command timeout.
        let client = ClientBuilder::new(server.endpoint())
            .mode(ServerMode::Standalone)
            .command_timeout(Some(max))
            .build()
            .await
            .expect("command_timeout(MAX)");
        serves(&client, "command_timeout(MAX)").await;
        assert_no_panic("command_timeout(MAX)");

        // Every maintenance duration, then a relaxation (its backstop is
        // 3 x relaxed_timeout) and a handoff.
        let config = MaintenanceConfig::default()
            .mode(Mode::Enabled)
            .relaxed_timeout(max)
            .handoff_timeout(max)
            .circuit_breaker_reset_timeout(max)
            .dns_lookup_timeout(max)
            .dedup_ttl(max)
            .post_handoff_relaxed_duration(max);
        let client = standalone(&server, config).await;
        serves(&client, "maintenance durations MAX").await;
        server.inject(&hostile::push(&["MIGRATING", ":1", ":5"]));
        serves(&client, "relaxed with MAX").await;
        let me = server.addr().to_string();
        server.inject(&hostile::push(&["MOVING", ":2", ":1", &me]));
        serves(&client, "handoff with MAX").await;
        assert_no_panic("maintenance durations MAX");

        // The connector and the RelaxTimeout layer.
        let conn = Connector::new()
            .connect_timeout(max)
            .connect(server.endpoint())
            .await
            .expect("connect_timeout(MAX)");
        let mut svc = RelaxTimeoutLayer::new(max).layer(conn);
        let v = svc
            .ready()
            .await
            .unwrap()
            .call(Request::from(cmd("PING")))
            .await
            .expect("RelaxTimeoutLayer::new(MAX)");
        assert_eq!(v.into_value().unwrap(), Value::SimpleString("PONG".into()));
        assert_no_panic("connector and layer");
    })
    .await;
}

/// A reply nested 10,000 levels deep with the depth limit raised to
/// `usize::MAX`: the recursive value builder overflowed the stack and
/// aborted the process. The depth is capped (`Limits::MAX_DEPTH`), so it
/// is a protocol error for that connection and nothing else.
#[tokio::test]
async fn a_deep_reply_with_the_depth_limit_raised_is_a_protocol_error() {
    watch_panics();
    bounded(20, async {
        let mut deep = b"*1\r\n".repeat(10_000);
        deep.extend_from_slice(b":1\r\n");
        let server = HostileServer::scripted(move |r| (r.name() == "GET").then(|| deep.clone()));
        let limits = redis_layers::resp::Limits {
            max_depth: usize::MAX,
            ..Default::default()
        };
        let conn = Connector::new()
            .limits(limits)
            .connect(server.endpoint())
            .await
            .expect("connect");
        match conn.send_cmd(cmd("GET").arg("k")).await {
            Err(Error::Protocol(e)) => assert!(e.message().contains("nesting"), "{e}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        // A new connection serves.
        let conn = Connector::new()
            .limits(limits)
            .connect(server.endpoint())
            .await
            .unwrap();
        conn.send_cmd(cmd("SET").arg("a").arg("1")).await.unwrap();
        assert_no_panic("deep reply");
    })
    .await;
}

/// `+RESET` is the `RESET` command's reply only when `RESET` was sent: a
/// script returning the status `RESET` cleared the connection's record of
/// its subscriptions, which were then lost at the next handoff. On a real
/// redis-server.
#[tokio::test]
async fn a_reset_status_from_another_command_keeps_the_subscriptions() {
    bounded(20, async {
        let server = support::RedisServer::start();
        let conn = Connector::new()
            .connect(server.endpoint())
            .await
            .expect("connect");
        // The test sends RESET itself at the end: a connection of its own.
        conn.dedicate();
        conn.send_cmd(cmd("SUBSCRIBE").arg("news")).await.unwrap();
        let restore = |c: &redis_layers::Connection| -> Vec<String> {
            c.resubscribe_commands()
                .iter()
                .map(|c| {
                    c.argv()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        assert_eq!(restore(&conn), ["SUBSCRIBE news"]);
        let v = conn
            .send_cmd(cmd("EVAL").arg("return {ok='RESET'}").arg(0))
            .await
            .unwrap();
        assert_eq!(v, Value::SimpleString("RESET".into()));
        assert_eq!(restore(&conn), ["SUBSCRIBE news"], "EVAL's +RESET");
        // In a pipeline too.
        let p = redis_layers::Pipeline::new()
            .cmd(cmd("PING"))
            .cmd(cmd("EVAL").arg("return {ok='RESET'}").arg(0));
        conn.send(p).await.unwrap();
        assert_eq!(restore(&conn), ["SUBSCRIBE news"], "a pipeline's +RESET");
        // The RESET command itself still ends them.
        let v = conn.send_cmd(cmd("RESET")).await.unwrap();
        assert_eq!(v, Value::SimpleString("RESET".into()));
        assert!(restore(&conn).is_empty(), "RESET ends every subscription");
    })
    .await;
}

// ===== property: random hostile numbers at the whole stack =====

mod prop {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex, OnceLock};

    /// Stands for the hostile server's port, known only once it runs.
    const ME: &str = "<me>";

    /// Numbers as a server may send them: extremes, any integer, and
    /// strings that are numbers, almost numbers, or not numbers.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(format!(":{}", i64::MIN)),
            Just(":-1".to_string()),
            Just(":0".to_string()),
            Just(":1".to_string()),
            Just(":30".to_string()),
            Just(format!(":{}", i64::MAX)),
            any::<i64>().prop_map(|n| format!(":{n}")),
            Just("99999999999999999999999".to_string()),
            Just("-99999999999999999999999".to_string()),
            Just("1.5".to_string()),
            Just("-0.5".to_string()),
            Just("1e308".to_string()),
            Just("".to_string()),
            Just("x".to_string()),
            Just("_".to_string()),
        ]
    }

    /// Slots: in range, just out, far out, negative, not numbers.
    fn slot() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("0".to_string()),
            Just("16383".to_string()),
            Just("16384".to_string()),
            Just("20000".to_string()),
            Just("65535".to_string()),
            Just("65536".to_string()),
            Just("-1".to_string()),
            Just("18446744073709551616".to_string()),
            Just("x".to_string()),
            Just("".to_string()),
            any::<u32>().prop_map(|n| n.to_string()),
        ]
    }

    /// Endpoints: the server itself, refused ports, bad ports, no port,
    /// empty hosts. IP literals only: no DNS lookups in a test.
    fn endpoint() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(format!("127.0.0.1:{ME}")),
            Just("127.0.0.1:1".to_string()),
            Just("127.0.0.1:0".to_string()),
            Just("127.0.0.1:65536".to_string()),
            Just("127.0.0.1:-1".to_string()),
            Just("127.0.0.1:99999999999999999999".to_string()),
            Just("127.0.0.1".to_string()),
            Just(":6379".to_string()),
            Just(":".to_string()),
            Just("".to_string()),
            Just("[::1]:0".to_string()),
            Just("::1:1".to_string()),
            Just("[::1".to_string()),
            Just("_".to_string()),
        ]
    }

    /// What the server does next.
    #[derive(Debug, Clone)]
    enum Act {
        /// A push of these elements (as `hostile::push` reads them) to
        /// every connection.
        Push(Vec<String>),
        /// `SMIGRATED seq [[src dst slots]]` to every connection.
        SMigrated([String; 4]),
        /// These bytes to every connection.
        Raw(Vec<u8>),
        /// The answer to the next `GET`: this error.
        Redirect(String),
    }

    impl Act {
        /// Its bytes, the server's port in place of [`ME`].
        fn frame(&self, port: u16) -> Vec<u8> {
            let me = |s: &String| s.replace(ME, &port.to_string());
            match self {
                Act::Push(elems) => {
                    let elems: Vec<String> = elems.iter().map(me).collect();
                    let refs: Vec<&str> = elems.iter().map(String::as_str).collect();
                    hostile::push(&refs)
                }
                Act::SMigrated([seq, src, dst, slots]) => {
                    let mut f = b">3\r\n".to_vec();
                    f.extend_from_slice(&hostile::bulk(b"SMIGRATED"));
                    // The sequence number as `push` encodes an element.
                    f.extend_from_slice(&hostile::push(&[seq])[4..]);
                    f.extend_from_slice(b"*1\r\n*3\r\n");
                    for s in [me(src), me(dst), slots.clone()] {
                        f.extend_from_slice(&hostile::bulk(s.as_bytes()));
                    }
                    f
                }
                Act::Raw(b) => b.clone(),
                Act::Redirect(e) => format!("-{}\r\n", me(e)).into_bytes(),
            }
        }
    }

    fn act() -> impl Strategy<Value = Act> {
        let kinds = prop_oneof![
            Just("MOVING"),
            Just("MIGRATING"),
            Just("MIGRATED"),
            Just("FAILING_OVER"),
            Just("FAILED_OVER"),
            Just("SMIGRATING"),
            Just("SMIGRATED"),
        ];
        let element = prop_oneof![number(), slot(), endpoint(), Just("0-16383".to_string())];
        // Any arity, any element.
        let push = (kinds, proptest::collection::vec(element, 0..5)).prop_map(|(kind, rest)| {
            let mut elems = vec![kind.to_string()];
            elems.extend(rest);
            Act::Push(elems)
        });
        // The forms the notifications take, with hostile numbers.
        let shaped = (
            prop_oneof![Just("MOVING"), Just("MIGRATING"), Just("FAILING_OVER")],
            number(),
            number(),
            endpoint(),
        )
            .prop_map(|(kind, seq, time, ep)| Act::Push(vec![kind.into(), seq, time, ep]));
        let smigrated = (number(), endpoint(), endpoint(), slot(), slot())
            .prop_map(|(seq, src, dst, a, b)| Act::SMigrated([seq, src, dst, format!("{a}-{b}")]));
        let redirect = (prop_oneof![Just("MOVED"), Just("ASK")], slot(), endpoint())
            .prop_map(|(k, s, ep)| Act::Redirect(format!("{k} {s} {ep}")));
        // Complete frames that are no valid RESP, or no valid reply: the
        // connection fails with a protocol error and is made again.
        let malformed = prop_oneof![
            Just(b">0\r\n".to_vec()),
            Just(b">1\r\n:x\r\n".to_vec()),
            Just(b">1\r\n_\r\n".to_vec()),
            Just(b">2\r\n$6\r\nMOVING\r\n*0\r\n".to_vec()),
            Just(b":99999999999999999999\r\n".to_vec()),
            Just(b"$-5\r\n".to_vec()),
            Just(b"*-7\r\n".to_vec()),
            Just(b"$4000000000\r\n".to_vec()),
            Just(b"*4000000000\r\n".to_vec()),
            Just(b"?\r\n".to_vec()),
        ]
        .prop_map(Act::Raw);
        prop_oneof![push, shaped, smigrated, redirect, malformed]
    }

    /// Timeouts a caller may give, extremes included (`None`: the
    /// client's default).
    fn timeout() -> impl Strategy<Value = Option<Duration>> {
        prop_oneof![
            Just(None),
            Just(Some(Duration::ZERO)),
            Just(Some(Duration::from_nanos(1))),
            Just(Some(Duration::from_millis(200))),
            Just(Some(Duration::from_secs(u64::MAX))),
            Just(Some(Duration::MAX)),
            any::<u64>().prop_map(|n| Some(Duration::from_nanos(n))),
        ]
    }

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        })
    }

    /// One case: a standalone and a cluster client of one hostile server,
    /// which does each of `acts` in turn, each followed by a `GET` from
    /// both clients with the next of `timeouts`.
    async fn run_case(acts: Vec<Act>, timeouts: Vec<Option<Duration>>) -> Result<(), String> {
        let next_get: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let port = Arc::new(OnceLock::<u16>::new());
        let (n, p) = (next_get.clone(), port.clone());
        let server = HostileServer::scripted(move |r| match r.name().as_str() {
            "CLUSTER" if r.text().eq_ignore_ascii_case("CLUSTER SLOTS") => {
                Some(all_slots(*p.get()?))
            }
            "CLUSTER" => Some(b"-ERR unknown subcommand\r\n".to_vec()),
            "GET" => n.lock().unwrap().take(),
            _ => None,
        });
        port.set(server.port()).unwrap();
        let standalone = standalone(&server, MaintenanceConfig::default()).await;
        let cluster = cluster_client(&server).await;
        for (i, act) in acts.iter().enumerate() {
            let frame = act.frame(server.port());
            match act {
                Act::Redirect(_) => *next_get.lock().unwrap() = Some(frame),
                _ => server.inject(&frame),
            }
            for client in [&standalone, &cluster] {
                let mut req = Request::from(cmd("GET").arg("k"));
                if let Some(t) = timeouts.get(i).copied().flatten() {
                    req = req.with_timeout(t);
                }
                // Any outcome will do but a panic or a hang: the hostile
                // server answers every command at once.
                let c = client.clone();
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::spawn(async move { c.send(req).await }),
                )
                .await
                .map_err(|_| format!("act {i}: no answer in 10 s"))?;
                let _ = r.map_err(|e| format!("act {i}: the caller's task failed: {e}"))?;
            }
        }
        // Whatever happened, the server is still there to connect to.
        let conn = Connector::new()
            .connect(server.endpoint())
            .await
            .map_err(|e| format!("a fresh connection: {e}"))?;
        conn.send_cmd(cmd("PING"))
            .await
            .map_err(|e| format!("a fresh connection: {e}"))?;
        Ok(())
    }

    proptest! {
        // Each case starts a server and two clients: a few dozen cases
        // keep the test within a few seconds.
        #![proptest_config(ProptestConfig {
            cases: 40,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Random `MOVED`/`ASK`/`MOVING`/`SMIGRATED`... with extreme and
        /// garbage numbers, malformed frames and extreme timeouts: the
        /// process never panics or aborts, and every request ends (with a
        /// value or a typed error) in bounded time.
        #[test]
        fn hostile_numbers_never_panic(
            acts in proptest::collection::vec(act(), 1..8),
            timeouts in proptest::collection::vec(timeout(), 8),
        ) {
            watch_panics();
            let r = runtime().block_on(run_case(acts, timeouts));
            prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
            prop_assert!(r.is_ok(), "{}", r.unwrap_err());
        }
    }
}

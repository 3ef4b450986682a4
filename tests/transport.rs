mod support;

// The multiplexed `Connection` against a real redis-server: commands and
// their RESP3 reply types, large values, pipelines, many concurrent callers
// on one connection, the tower `Service` path, backpressure, and what
// happens to pending and later requests when the server kills the socket.
//
// Every test is bounded with `tokio::time::timeout`; a hang fails the test.

use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_layers::{
    cmd, Connection, Connector, Error, Pipeline, Request, Response, ServerErrorKind, Value,
};
use support::{bounded, within, RedisServer};
use tower::{Service, ServiceExt};

// ===== helpers =====

async fn connect(server: &RedisServer) -> Connection {
    within(
        Duration::from_secs(5),
        "connect",
        Connector::new().connect(server.endpoint()),
    )
    .await
    .expect("connect")
}

fn bulk(s: impl AsRef<[u8]>) -> Value {
    Value::BulkString(Bytes::copy_from_slice(s.as_ref()))
}

fn simple(s: &str) -> Value {
    Value::SimpleString(Bytes::copy_from_slice(s.as_bytes()))
}

fn ok() -> Value {
    simple("OK")
}

/// Polls the server (through `admin`) until `CLIENT LIST ID id` satisfies
/// `pred`. Used only for server-side states that send us no event (a client
/// blocked, bytes sitting in its query buffer).
async fn wait_client_state(admin: &Connection, id: i64, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = admin
            .send_cmd(cmd("CLIENT").arg("LIST").arg("ID").arg(id))
            .await
            .expect("CLIENT LIST");
        let line = String::from_utf8_lossy(v.as_bytes().expect("CLIENT LIST text")).into_owned();
        if pred(&line) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "client {id} never reached state '{what}': {line}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A field `name=value` of a CLIENT LIST line.
fn client_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

// ===== commands and reply types =====

/// Acceptance: GET/SET/INCR/DEL return the values the server holds.
#[tokio::test]
async fn get_set_incr_del() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let t = Duration::from_secs(2);

        assert_eq!(
            within(t, "GET missing", conn.send_cmd(cmd("GET").arg("k")))
                .await
                .unwrap(),
            Value::Null
        );
        assert_eq!(
            within(t, "SET", conn.send_cmd(cmd("SET").arg("k").arg("v1")))
                .await
                .unwrap(),
            ok()
        );
        assert_eq!(
            within(t, "GET", conn.send_cmd(cmd("GET").arg("k")))
                .await
                .unwrap(),
            bulk("v1")
        );
        // Binary-safe value with CR LF and NUL inside.
        let bin = b"a\r\nb\0c\xff".to_vec();
        conn.send_cmd(cmd("SET").arg("bin").arg(bin.clone()))
            .await
            .unwrap();
        assert_eq!(
            conn.send_cmd(cmd("GET").arg("bin")).await.unwrap(),
            bulk(&bin)
        );

        for expected in 1..=3 {
            assert_eq!(
                within(t, "INCR", conn.send_cmd(cmd("INCR").arg("n")))
                    .await
                    .unwrap(),
                Value::Integer(expected)
            );
        }
        assert_eq!(
            conn.send_cmd(cmd("INCRBY").arg("n").arg(-10))
                .await
                .unwrap(),
            Value::Integer(-7)
        );
        assert_eq!(
            within(t, "DEL", conn.send_cmd(cmd("DEL").args(["k", "n", "nope"])))
                .await
                .unwrap(),
            Value::Integer(2)
        );
        assert_eq!(
            conn.send_cmd(cmd("GET").arg("k")).await.unwrap(),
            Value::Null
        );
        // What the server holds, seen from outside the crate.
        assert_eq!(server.cli(&["STRLEN", "bin"]), "7");
    })
    .await
}

/// Acceptance: HGETALL on a RESP3 connection returns a `Value::Map`.
#[tokio::test]
async fn hgetall_returns_a_resp3_map() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let t = Duration::from_secs(2);
        let set = cmd("HSET").args(["h", "f1", "v1", "f2", "v2", "f3", "v3"]);
        assert_eq!(
            within(t, "HSET", conn.send_cmd(set)).await.unwrap(),
            Value::Integer(3)
        );
        let v = within(t, "HGETALL", conn.send_cmd(cmd("HGETALL").arg("h")))
            .await
            .unwrap();
        let Value::Map(mut pairs) = v else {
            panic!("HGETALL under RESP3 should be a Map, got {v:?}")
        };
        pairs.sort_by(|a, b| a.0.as_bytes().cmp(&b.0.as_bytes()));
        assert_eq!(
            pairs,
            vec![
                (bulk("f1"), bulk("v1")),
                (bulk("f2"), bulk("v2")),
                (bulk("f3"), bulk("v3")),
            ]
        );
        // An empty hash is an empty map, not an array.
        assert_eq!(
            conn.send_cmd(cmd("HGETALL").arg("missing")).await.unwrap(),
            Value::Map(vec![])
        );
        // CONFIG GET is a map in RESP3 too.
        let v = conn
            .send_cmd(cmd("CONFIG").arg("GET").arg("maxmemory-policy"))
            .await
            .unwrap();
        assert_eq!(
            v,
            Value::Map(vec![(bulk("maxmemory-policy"), bulk("noeviction"))])
        );
    })
    .await
}

/// Acceptance: doubles. Under RESP3, ZSCORE / ZINCRBY / ZADD INCR answer a
/// `Value::Double` (infinities included); INCRBYFLOAT stays a bulk string on
/// 7.0, and its text must be the server's.
#[tokio::test]
async fn doubles_under_resp3() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let t = Duration::from_secs(2);
        let add = cmd("ZADD").args(["z", "1.5", "a", "-0.25", "b", "+inf", "c"]);
        assert_eq!(
            within(t, "ZADD", conn.send_cmd(add)).await.unwrap(),
            Value::Integer(3)
        );
        assert_eq!(
            conn.send_cmd(cmd("ZSCORE").arg("z").arg("a"))
                .await
                .unwrap(),
            Value::Double(1.5)
        );
        assert_eq!(
            conn.send_cmd(cmd("ZSCORE").arg("z").arg("b"))
                .await
                .unwrap(),
            Value::Double(-0.25)
        );
        assert_eq!(
            conn.send_cmd(cmd("ZSCORE").arg("z").arg("c"))
                .await
                .unwrap(),
            Value::Double(f64::INFINITY)
        );
        assert_eq!(
            conn.send_cmd(cmd("ZSCORE").arg("z").arg("nope"))
                .await
                .unwrap(),
            Value::Null
        );
        assert_eq!(
            conn.send_cmd(cmd("ZINCRBY").arg("z").arg(2.25).arg("a"))
                .await
                .unwrap(),
            Value::Double(3.75)
        );
        assert_eq!(
            conn.send_cmd(cmd("ZADD").args(["z", "INCR", "0.5", "b"]))
                .await
                .unwrap(),
            Value::Double(0.25)
        );
        // ZRANGE WITHSCORES: [member, double] pairs under RESP3.
        assert_eq!(
            conn.send_cmd(cmd("ZRANGE").args(["z", "0", "0", "WITHSCORES"]))
                .await
                .unwrap(),
            Value::Array(vec![Value::Array(vec![bulk("b"), Value::Double(0.25)])])
        );
        assert_eq!(
            conn.send_cmd(cmd("INCRBYFLOAT").arg("f").arg("10.5"))
                .await
                .unwrap(),
            bulk("10.5")
        );
        assert_eq!(
            conn.send_cmd(cmd("INCRBYFLOAT").arg("f").arg("-0.25"))
                .await
                .unwrap(),
            bulk("10.25")
        );
    })
    .await
}

/// Acceptance: big numbers. `DEBUG PROTOCOL bignum` answers a RESP3 `(`
/// big number, kept digit for digit.
#[tokio::test]
async fn big_number_reply() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let v = within(
            Duration::from_secs(2),
            "DEBUG PROTOCOL bignum",
            conn.send_cmd(cmd("DEBUG").arg("PROTOCOL").arg("bignum")),
        )
        .await
        .unwrap();
        assert_eq!(
            v,
            Value::BigNumber(Bytes::from_static(b"1234567999999999999999999999999999999"))
        );
        // The connection is still in step afterwards.
        assert_eq!(
            conn.send_cmd(cmd("ECHO").arg("after")).await.unwrap(),
            bulk("after")
        );
    })
    .await
}

/// Acceptance: `DEBUG PROTOCOL <type>` for every type redis-server 7.0
/// offers decodes to the right `Value`, and each is followed by a reply that
/// is still matched to its own command (spec: "The first non-push frame after
/// a command is its reply"; attributes "never let them shift replies").
#[tokio::test]
async fn debug_protocol_every_type() {
    bounded(30, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let mut pushes = conn.take_pushes().expect("push receiver");
        let int = Value::Integer;
        let cases: Vec<(&str, Value)> = vec![
            ("string", bulk("Hello World")),
            ("integer", int(12345)),
            // `,3.141` on the wire (not PI).
            ("double", Value::Double("3.141".parse().unwrap())),
            (
                "bignum",
                Value::BigNumber(Bytes::from_static(b"1234567999999999999999999999999999999")),
            ),
            ("null", Value::Null),
            ("array", Value::Array(vec![int(0), int(1), int(2)])),
            ("set", Value::Set(vec![int(0), int(1), int(2)])),
            (
                "map",
                Value::Map(vec![
                    (int(0), Value::Boolean(false)),
                    (int(1), Value::Boolean(true)),
                    (int(2), Value::Boolean(false)),
                ]),
            ),
            ("attrib", bulk("Some real reply following the attribute")),
            ("push", bulk("Some real reply following the push reply")),
            (
                "verbatim",
                Value::VerbatimString {
                    format: *b"txt",
                    text: Bytes::from_static(b"This is a verbatim\nstring"),
                },
            ),
            ("true", Value::Boolean(true)),
            ("false", Value::Boolean(false)),
        ];
        for (i, (ty, expected)) in cases.into_iter().enumerate() {
            let v = within(
                Duration::from_secs(2),
                ty,
                conn.send_cmd(cmd("DEBUG").arg("PROTOCOL").arg(ty)),
            )
            .await
            .unwrap_or_else(|e| panic!("DEBUG PROTOCOL {ty}: {e}"));
            if ty == "attrib" {
                // Kept or skipped, the annotated value must be the reply.
                if let Value::Attribute { attributes, .. } = &v {
                    assert_eq!(
                        attributes,
                        &vec![(
                            bulk("key-popularity"),
                            Value::Array(vec![bulk("key:123"), int(90)])
                        )]
                    );
                }
                assert_eq!(v.clone().without_attributes(), expected, "{ty}");
            } else {
                assert_eq!(v, expected, "DEBUG PROTOCOL {ty}");
            }
            if ty == "push" {
                let p = pushes.try_recv().expect("the push precedes its reply");
                assert_eq!(p, Value::Push(vec![bulk("server-cpu-usage"), int(42)]));
            }
            let tag = format!("after-{i}");
            assert_eq!(
                conn.send_cmd(cmd("ECHO").arg(&tag)).await.unwrap(),
                bulk(&tag),
                "reply after DEBUG PROTOCOL {ty}"
            );
        }
        assert_eq!(pushes.try_recv(), None, "exactly one push was produced");
    })
    .await
}

/// Acceptance: a 16 MiB value SET then GET comes back byte for byte.
#[tokio::test]
async fn sixteen_mib_value_roundtrips() {
    bounded(60, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let t = Duration::from_secs(20);
        let len = 16 * 1024 * 1024;
        // A pattern that is not periodic in any small power of two, so a
        // lost, duplicated or shifted chunk shows.
        let value: Vec<u8> = (0..len)
            .map(|i: usize| (i.wrapping_mul(31) % 251) as u8)
            .collect();
        let value = Bytes::from(value);
        assert_eq!(
            within(
                t,
                "SET 16 MiB",
                conn.send_cmd(cmd("SET").arg("big").arg(value.clone()))
            )
            .await
            .unwrap(),
            ok()
        );
        assert_eq!(
            conn.send_cmd(cmd("STRLEN").arg("big")).await.unwrap(),
            Value::Integer(len as i64)
        );
        let got = within(t, "GET 16 MiB", conn.send_cmd(cmd("GET").arg("big")))
            .await
            .unwrap();
        let Value::BulkString(got) = got else {
            panic!("GET big: not a bulk string: {:?}", got.as_int())
        };
        assert_eq!(got.len(), value.len());
        assert!(got == value, "16 MiB value differs after the round trip");
        // Two large values in flight at once stay matched to their callers.
        let other: Bytes = value.iter().rev().copied().collect::<Vec<u8>>().into();
        conn.send_cmd(cmd("SET").arg("big2").arg(other.clone()))
            .await
            .unwrap();
        let (a, b) = within(
            t,
            "two concurrent 16 MiB GETs",
            futures::future::join(
                conn.send_cmd(cmd("GET").arg("big2")),
                conn.send_cmd(cmd("GET").arg("big")),
            ),
        )
        .await;
        assert!(a.unwrap() == Value::BulkString(other));
        assert!(b.unwrap() == Value::BulkString(value));
    })
    .await
}

/// Long commands are written from their own buffers (a vectored write)
/// between short ones copied into the write buffer: 16 tasks, each
/// sending values from 15 KiB to 200 KiB (across the 16 KiB threshold)
/// interleaved with short commands and pipelines holding a long one,
/// all unawaited in bursts; every value reads back byte for byte and
/// every reply reaches its caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_short_commands_interleave_on_the_wire() {
    bounded(60, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let value = |task: usize, round: usize| -> Bytes {
            let len = 15 * 1024 + (task * 7919 + round * 104_729) % (185 * 1024);
            (0..len)
                .map(|i| ((i * 31 + task * 17 + round) % 251) as u8)
                .collect::<Vec<u8>>()
                .into()
        };
        let tasks: Vec<_> = (0..16)
            .map(|task| {
                let conn = conn.clone();
                tokio::spawn(async move {
                    for round in 0..20 {
                        let key = format!("long:{task}");
                        let v = value(task, round);
                        let (set, n, p) = futures::future::join3(
                            conn.send_cmd(cmd("SET").arg(&key).arg(v.clone())),
                            conn.send_cmd(cmd("INCR").arg(format!("n:{task}"))),
                            conn.send(redis_layers::Request::from(
                                redis_layers::Pipeline::new()
                                    .cmd(cmd("SET").arg(format!("p:{task}")).arg(v.clone()))
                                    .cmd(cmd("STRLEN").arg(format!("p:{task}"))),
                            )),
                        )
                        .await;
                        assert_eq!(set.unwrap(), ok());
                        assert_eq!(n.unwrap(), Value::Integer(round as i64 + 1));
                        let p = p.unwrap().into_pipeline().unwrap();
                        assert_eq!(p[1], Ok(Value::Integer(v.len() as i64)));
                        let got = conn.send_cmd(cmd("GET").arg(&key)).await.unwrap();
                        assert!(
                            got == Value::BulkString(v),
                            "task {task} round {round}: value differs"
                        );
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
}

/// Acceptance: a 10,000-command `Pipeline` comes back as 10,000 results, each
/// the reply of its own command, in order (an error reply in the middle
/// included).
#[tokio::test]
async fn pipeline_of_10000_commands_in_order() {
    bounded(60, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        conn.send_cmd(cmd("SET").arg("text").arg("not a number"))
            .await
            .unwrap();
        const N: usize = 10_000;
        let mut p = Pipeline::with_capacity(N);
        let mut expected: Vec<Result<Value, ServerErrorKind>> = Vec::with_capacity(N);
        let mut counter = 0;
        for i in 0..N {
            match i % 5 {
                0 => {
                    counter += 1;
                    p.push(cmd("INCR").arg("counter"));
                    expected.push(Ok(Value::Integer(counter)));
                }
                1 => {
                    p.push(cmd("SET").arg(format!("k:{i}")).arg(format!("v:{i}")));
                    expected.push(Ok(ok()));
                }
                2 => {
                    // The key the previous command set.
                    p.push(cmd("GET").arg(format!("k:{}", i - 1)));
                    expected.push(Ok(bulk(format!("v:{}", i - 1))));
                }
                3 if i % 1000 == 3 => {
                    p.push(cmd("INCR").arg("text"));
                    expected.push(Err(ServerErrorKind::Err));
                }
                3 => {
                    p.push(cmd("ECHO").arg(format!("echo:{i}")));
                    expected.push(Ok(bulk(format!("echo:{i}"))));
                }
                _ => {
                    p.push(cmd("GET").arg(format!("missing:{i}")));
                    expected.push(Ok(Value::Null));
                }
            }
        }
        let results = within(Duration::from_secs(30), "10k pipeline", conn.send(p))
            .await
            .unwrap()
            .into_pipeline()
            .unwrap();
        assert_eq!(results.len(), N);
        for (i, (got, want)) in results.into_iter().zip(expected).enumerate() {
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "reply {i}"),
                (Err(e), Err(kind)) => {
                    assert_eq!(e.kind(), &kind, "reply {i}");
                    assert!(e.detail().contains("not an integer"), "reply {i}: {e}");
                }
                (g, w) => panic!("reply {i}: got {g:?}, expected {w:?}"),
            }
        }
        // The connection is in step after the pipeline.
        assert_eq!(
            conn.send_cmd(cmd("GET").arg("counter")).await.unwrap(),
            bulk(counter.to_string())
        );
    })
    .await
}

/// Acceptance: 1,000 concurrent tasks x 100 commands on ONE cloned
/// `Connection`; every task uses its own keys and checks every reply is the
/// one it expects (a per-task counter, and SET/GET of unique values).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_tasks_share_one_connection() {
    bounded(120, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        const TASKS: usize = 1000;
        const PER_TASK: usize = 100;
        let mut handles = Vec::with_capacity(TASKS);
        for t in 0..TASKS {
            let conn = conn.clone();
            handles.push(tokio::spawn(async move {
                let mut incrs = 0;
                let mut last_set = None;
                for j in 0..PER_TASK {
                    match j % 3 {
                        0 => {
                            incrs += 1;
                            let v = conn.send_cmd(cmd("INCR").arg(format!("ctr:{t}"))).await;
                            assert_eq!(v.unwrap(), Value::Integer(incrs), "task {t} cmd {j}");
                        }
                        1 => {
                            let val = format!("task{t}-cmd{j}");
                            let v = conn
                                .send_cmd(cmd("SET").arg(format!("key:{t}")).arg(&val))
                                .await;
                            assert_eq!(v.unwrap(), ok(), "task {t} cmd {j}");
                            last_set = Some(val);
                        }
                        _ => {
                            let v = conn.send_cmd(cmd("GET").arg(format!("key:{t}"))).await;
                            let want = last_set.as_deref().expect("a SET came first");
                            assert_eq!(v.unwrap(), bulk(want), "task {t} cmd {j}");
                        }
                    }
                }
                incrs
            }));
        }
        let results = within(
            Duration::from_secs(100),
            "1000 tasks x 100 commands",
            futures::future::join_all(handles),
        )
        .await;
        let mut total = 0;
        for (t, r) in results.into_iter().enumerate() {
            let incrs = r.unwrap_or_else(|e| panic!("task {t} failed: {e}"));
            assert_eq!(incrs, 34);
            total += incrs;
        }
        assert_eq!(total, 34 * TASKS as i64);
        // The server saw every INCR exactly once (read from outside the crate).
        assert_eq!(server.cli(&["GET", "ctr:0"]), "34");
        assert_eq!(server.cli(&["GET", "ctr:999"]), "34");
        assert_eq!(server.cli(&["GET", "key:517"]), "task517-cmd97");
    })
    .await
}

/// Acceptance: `CLIENT KILL` of our connection (its id from `CLIENT ID` sent
/// on it) from another connection while 500 requests are pending: all 500
/// fail within 1 s, none hangs, and `is_closed()` / `closed()` report it.
/// The requests are pending behind a `BLPOP` that blocks the connection, and
/// the test waits until the server holds all 500 in the client's query
/// buffer, so they were written and are waiting for replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_fails_all_pending_requests() {
    bounded(30, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let admin = connect(&server).await;
        let t = Duration::from_secs(2);

        let id = within(t, "CLIENT ID", conn.send_cmd(cmd("CLIENT").arg("ID")))
            .await
            .unwrap()
            .as_int()
            .expect("CLIENT ID is an integer");
        assert_eq!(conn.info().and_then(|i| i.client_id), Some(id));
        conn.send_cmd(cmd("SET").arg("k").arg("v")).await.unwrap();

        // Block the connection: nothing after the BLPOP is answered.
        let blocker = {
            let c = conn.clone();
            tokio::spawn(async move { c.send_cmd(cmd("BLPOP").arg("never").arg(20)).await })
        };
        wait_client_state(&admin, id, "blocked in BLPOP", |l| {
            client_field(l, "cmd") == Some("blpop")
                && client_field(l, "flags").is_some_and(|f| f.contains('b'))
        })
        .await;

        const PENDING: usize = 500;
        let mut handles = Vec::with_capacity(PENDING);
        let mut bytes = 0;
        for i in 0..PENDING {
            let c = conn.clone();
            let get = cmd("GET").arg(format!("key:{i}"));
            bytes += get.encoded_len();
            handles.push(tokio::spawn(async move { c.send_cmd(get).await }));
        }
        wait_client_state(&admin, id, "500 GETs in its query buffer", |l| {
            client_field(l, "qbuf")
                .and_then(|q| q.parse::<usize>().ok())
                .is_some_and(|q| q >= bytes)
        })
        .await;
        assert!(!conn.is_closed());
        assert!(handles.iter().all(|h| !h.is_finished()), "GETs are pending");

        let killed = within(
            t,
            "CLIENT KILL",
            admin.send_cmd(cmd("CLIENT").arg("KILL").arg("ID").arg(id)),
        )
        .await
        .unwrap();
        assert_eq!(killed, Value::Integer(1));
        let killed_at = Instant::now();

        let results = within(
            Duration::from_secs(1),
            "pending requests after CLIENT KILL",
            futures::future::join_all(handles),
        )
        .await;
        assert_eq!(results.len(), PENDING);
        for (i, r) in results.into_iter().enumerate() {
            match r.unwrap() {
                // Written, then the socket died: the I/O error.
                Err(Error::Io(_)) => {}
                other => panic!("GET {i}: expected an I/O error, got {other:?}"),
            }
        }
        let b = within(Duration::from_secs(1), "BLPOP after kill", blocker)
            .await
            .unwrap();
        assert!(
            matches!(&b, Err(e) if e.is_connection_error()),
            "BLPOP: {b:?}"
        );
        within(Duration::from_secs(1), "closed()", conn.closed()).await;
        assert!(conn.is_closed());
        assert!(
            killed_at.elapsed() < Duration::from_secs(1),
            "took {:?}",
            killed_at.elapsed()
        );
        // The other connection is unaffected.
        assert_eq!(
            admin.send_cmd(cmd("GET").arg("k")).await.unwrap(),
            bulk("v")
        );
    })
    .await
}

/// Acceptance: a server error reply (`INCR` on a non-integer) is a typed
/// `Error::Server` for that command only; concurrent and later commands on
/// the same connection keep working, and in a pipeline only that command's
/// result is an error.
#[tokio::test]
async fn server_error_is_typed_and_scoped_to_its_command() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let t = Duration::from_secs(2);
        conn.send_cmd(cmd("SET").arg("s").arg("abc")).await.unwrap();
        conn.send_cmd(cmd("SET").arg("n").arg("1")).await.unwrap();

        let (before, bad, after) = within(
            t,
            "concurrent commands",
            futures::future::join3(
                conn.send_cmd(cmd("INCR").arg("n")),
                conn.send_cmd(cmd("INCR").arg("s")),
                conn.send_cmd(cmd("GET").arg("s")),
            ),
        )
        .await;
        assert_eq!(before.unwrap(), Value::Integer(2));
        match bad {
            Err(Error::Server(e)) => {
                assert_eq!(e.kind(), &ServerErrorKind::Err);
                assert_eq!(e.code(), "ERR");
                assert_eq!(e.detail(), "value is not an integer or out of range");
                assert!(!e.is_auth_error());
            }
            other => panic!("INCR on a string: expected Error::Server, got {other:?}"),
        }
        assert_eq!(after.unwrap(), bulk("abc"));

        // Unknown command: also typed, also harmless.
        let e = conn
            .send_cmd(cmd("NOSUCHCOMMAND").arg("x"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Server(se) if se.kind() == &ServerErrorKind::Err
                && se.detail().starts_with("unknown command")),
            "{e:?}"
        );

        let p = Pipeline::new()
            .cmd(cmd("INCR").arg("n"))
            .cmd(cmd("INCR").arg("s"))
            .cmd(cmd("INCR").arg("n"));
        let r = conn.send(p).await.unwrap().into_pipeline().unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], Ok(Value::Integer(3)));
        assert_eq!(r[1].as_ref().unwrap_err().kind(), &ServerErrorKind::Err);
        assert_eq!(r[2], Ok(Value::Integer(4)));

        assert!(!conn.is_closed());
        assert_eq!(conn.send_cmd(cmd("GET").arg("n")).await.unwrap(), bulk("4"));
    })
    .await
}

/// Acceptance: WRONGTYPE is parsed to `ServerErrorKind::WrongType`.
#[tokio::test]
async fn wrongtype_is_parsed_to_its_kind() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        conn.send_cmd(cmd("SET").arg("str").arg("v")).await.unwrap();
        conn.send_cmd(cmd("RPUSH").arg("list").arg("a"))
            .await
            .unwrap();
        for c in [
            cmd("LPUSH").arg("str").arg("x"),
            cmd("GET").arg("list"),
            cmd("HGET").arg("list").arg("f"),
        ] {
            let name = format!("{c:?}");
            match within(Duration::from_secs(2), &name, conn.send_cmd(c)).await {
                Err(Error::Server(e)) => {
                    assert_eq!(e.kind(), &ServerErrorKind::WrongType, "{name}");
                    assert_eq!(e.code(), "WRONGTYPE");
                    assert_eq!(
                        e.detail(),
                        "Operation against a key holding the wrong kind of value"
                    );
                }
                other => panic!("{name}: expected WRONGTYPE, got {other:?}"),
            }
        }
        assert_eq!(
            conn.send_cmd(cmd("LRANGE").args(["list", "0", "-1"]))
                .await
                .unwrap(),
            Value::Array(vec![bulk("a")])
        );
    })
    .await
}

/// Acceptance: after the connection is dead (the server process is gone),
/// new commands fail fast with a typed error, on every path (`send`,
/// `send_cmd`, tower `ready`/`call`, clones), and `closed()` resolves.
#[tokio::test]
async fn commands_after_death_fail_fast() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        assert_eq!(conn.send_cmd(cmd("PING")).await.unwrap(), simple("PONG"));
        drop(server); // kills redis-server
        within(
            Duration::from_secs(2),
            "closed() after server death",
            conn.closed(),
        )
        .await;
        assert!(conn.is_closed());

        let fast = Duration::from_millis(100);
        let e = within(fast, "send_cmd on dead conn", conn.send_cmd(cmd("PING")))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Closed), "{e:?}");
        assert!(e.is_connection_error() && e.is_retryable_io());
        let e = within(
            fast,
            "pipeline on dead conn",
            conn.send(Pipeline::new().cmd(cmd("PING"))),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Closed), "{e:?}");
        let clone = conn.clone();
        let e = within(
            fast,
            "clone on dead conn",
            clone.send_cmd(cmd("GET").arg("k")),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Closed), "{e:?}");
        let mut svc = conn.clone();
        let e = within(fast, "tower ready on dead conn", svc.ready())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Closed), "{e:?}");
        let e = within(
            fast,
            "oneshot on dead conn",
            conn.clone().oneshot(Request::from(cmd("PING"))),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Closed), "{e:?}");
    })
    .await
}

/// `Connection::close` closes for every clone at once, and the error says
/// what a caller may do next: a request that was written (the server may
/// have run it) fails with an I/O error, one never written with
/// `Error::Closed`, which is safe to send again. A scripted server stops
/// reading once a 32 MiB SET has started to arrive, so the SET is cut off
/// half-written and a GET queued behind it is never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_tells_written_from_never_written() {
    use bytes::BytesMut;
    use redis_layers::resp::Decoder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    bounded(20, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint =
            redis_layers::Endpoint::tcp("127.0.0.1", listener.local_addr().unwrap().port());
        let (stalled_tx, stalled) = tokio::sync::oneshot::channel();
        let script = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (mut buf, mut dec) = (BytesMut::new(), Decoder::new());
            loop {
                let Some(frame) = dec.decode(&mut buf).unwrap() else {
                    assert!(sock.read_buf(&mut buf).await.unwrap() > 0);
                    continue;
                };
                let Value::Array(args) = frame else {
                    panic!("not a command: {frame:?}")
                };
                let name = String::from_utf8_lossy(args[0].as_bytes().unwrap()).to_uppercase();
                match name.as_str() {
                    "HELLO" => sock.write_all(b"-NOPROTO no RESP3 here\r\n").await.unwrap(),
                    "PING" => sock.write_all(b"+PONG\r\n").await.unwrap(),
                    // Received, never answered; then wait for the SET to start.
                    "GET" => break,
                    _ => panic!("unexpected {name}"),
                }
            }
            while buf.is_empty() {
                assert!(sock.read_buf(&mut buf).await.unwrap() > 0);
            }
            // Stop reading: the client's writes pile up in the socket.
            stalled_tx.send(()).unwrap();
            let mut rest = vec![];
            let _ = sock.read_to_end(&mut rest).await;
        });
        let conn = within(
            Duration::from_secs(5),
            "connect",
            Connector::new().connect(endpoint),
        )
        .await
        .expect("connect");
        let first = tokio::spawn({
            let c = conn.clone();
            async move { c.send_cmd(cmd("GET").arg("first")).await }
        });
        let big = tokio::spawn({
            let c = conn.clone();
            async move {
                c.send_cmd(cmd("SET").arg("big").arg(vec![b'x'; 32 << 20]))
                    .await
            }
        });
        within(Duration::from_secs(5), "server stalls mid-SET", stalled)
            .await
            .unwrap();
        // Queued behind the SET, which cannot finish: never written.
        let mut svc = conn.clone();
        let after = svc
            .ready()
            .await
            .unwrap()
            .call(cmd("GET").arg("after").into());
        conn.clone().close();
        within(Duration::from_secs(2), "closed()", conn.closed()).await;
        assert!(conn.is_closed());
        for (name, task) in [("GET first", first), ("SET big", big)] {
            let e = task.await.unwrap().unwrap_err();
            assert!(
                matches!(&e, Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionAborted),
                "{name}: {e:?}"
            );
        }
        let e = after.await.unwrap_err();
        assert!(matches!(e, Error::Closed), "GET after: {e:?}");
        let e = conn.send_cmd(cmd("PING")).await.unwrap_err();
        assert!(matches!(e, Error::Closed), "after close: {e:?}");
        within(Duration::from_secs(2), "script ends", script)
            .await
            .unwrap();
    })
    .await
}

/// Acceptance: `Connection` is a tower `Service<Request>`: `ready().call()`
/// answers single commands and pipelines, and `oneshot` works on a clone.
#[tokio::test]
async fn connection_is_a_tower_service() {
    bounded(20, async {
        let server = RedisServer::start();
        let mut svc = connect(&server).await;
        let t = Duration::from_secs(2);

        let r = within(t, "ready", svc.ready()).await.unwrap();
        let set = r.call(Request::from(cmd("SET").arg("k").arg("v")));
        assert_eq!(
            within(t, "call SET", set).await.unwrap(),
            Response::Value(ok())
        );

        let r = svc.ready().await.unwrap();
        let get = r.call(cmd("GET").arg("k").into());
        assert_eq!(
            within(t, "call GET", get)
                .await
                .unwrap()
                .into_value()
                .unwrap(),
            bulk("v")
        );

        let p = Pipeline::new()
            .cmd(cmd("INCR").arg("n"))
            .cmd(cmd("LPUSH").arg("k").arg("x"))
            .cmd(cmd("INCR").arg("n"));
        let r = svc.ready().await.unwrap().call(p.into());
        let results = within(t, "call pipeline", r)
            .await
            .unwrap()
            .into_pipeline()
            .unwrap();
        assert_eq!(results[0], Ok(Value::Integer(1)));
        assert_eq!(
            results[1].as_ref().unwrap_err().kind(),
            &ServerErrorKind::WrongType
        );
        assert_eq!(results[2], Ok(Value::Integer(2)));

        // A single command's error reply is the service's Err.
        let r = svc.ready().await.unwrap().call(cmd("INCR").arg("k").into());
        assert!(matches!(
            within(t, "call INCR", r).await,
            Err(Error::Server(_))
        ));

        // An empty pipeline answers at once with no results.
        let r = svc.ready().await.unwrap().call(Pipeline::new().into());
        assert_eq!(r.await.unwrap(), Response::Pipeline(vec![]));

        let v = within(
            t,
            "oneshot",
            svc.clone().oneshot(cmd("GET").arg("k").into()),
        )
        .await
        .unwrap();
        assert_eq!(v, Response::Value(bulk("v")));
    })
    .await
}

/// Acceptance: backpressure. With `queue_size(1)` (and a tiny write batch),
/// 300 concurrent callers, half on `send` and half on the tower
/// `ready().call()` path, all complete with their own replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_small_queue_all_callers_complete() {
    bounded(60, async {
        let server = RedisServer::start();
        let conn = within(
            Duration::from_secs(5),
            "connect",
            Connector::new()
                .queue_size(1)
                .max_write_buffer(64)
                .connect(server.endpoint()),
        )
        .await
        .unwrap();
        const CALLERS: usize = 300;
        const PER_CALLER: usize = 20;
        let mut handles = Vec::with_capacity(CALLERS);
        for c in 0..CALLERS {
            let mut conn = conn.clone();
            handles.push(tokio::spawn(async move {
                for j in 0..PER_CALLER {
                    let key = format!("bp:{c}");
                    let want = Value::Integer(j as i64 + 1);
                    let got = if c % 2 == 0 {
                        conn.send_cmd(cmd("INCR").arg(key)).await.unwrap()
                    } else {
                        let svc = conn.ready().await.unwrap();
                        svc.call(cmd("INCR").arg(key).into())
                            .await
                            .unwrap()
                            .into_value()
                            .unwrap()
                    };
                    assert_eq!(got, want, "caller {c} command {j}");
                }
            }));
        }
        let results = within(
            Duration::from_secs(50),
            "callers behind a queue of 1",
            futures::future::join_all(handles),
        )
        .await;
        for (c, r) in results.into_iter().enumerate() {
            r.unwrap_or_else(|e| panic!("caller {c}: {e}"));
        }
        assert_eq!(server.cli(&["GET", "bp:0"]), PER_CALLER.to_string());
        assert_eq!(server.cli(&["GET", "bp:299"]), PER_CALLER.to_string());
    })
    .await
}

/// A request's own timeout (`Request::with_timeout`) is enforced by the
/// connection: the late request fails with `Error::Timeout` on time, its
/// reply is read and dropped, and the next request still gets its own
/// reply. A shorter timeout queued behind a longer one fires first.
#[tokio::test]
async fn request_timeouts_are_enforced_by_the_connection() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let slow = Request::from(cmd("DEBUG").arg("SLEEP").arg("0.4"))
            .with_timeout(Duration::from_secs(5));
        let short = Request::from(cmd("ECHO").arg("late")).with_timeout(Duration::from_millis(100));
        let t = Instant::now();
        let (slow, short, next) = tokio::join!(
            conn.send(slow),
            async {
                let r = conn.send(short).await;
                (r, t.elapsed())
            },
            async {
                // Queued after both: answered after the sleep, with its own reply.
                tokio::task::yield_now().await;
                conn.send_cmd(cmd("ECHO").arg("mine")).await
            }
        );
        let (short, took) = short;
        assert!(matches!(short, Err(Error::Timeout)), "{short:?}");
        assert!(
            took >= Duration::from_millis(95) && took < Duration::from_millis(350),
            "the 100 ms timeout fired at {took:?}, not after the 5 s one ahead of it"
        );
        assert!(slow.is_ok(), "{slow:?}");
        assert_eq!(next.unwrap(), Value::BulkString("mine".into()));
        assert_eq!(
            conn.send_cmd(cmd("PING")).await.unwrap(),
            Value::SimpleString("PONG".into())
        );
    })
    .await
}

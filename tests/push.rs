mod support;

// Push frames on a real redis-server 7.0: one test (or more) per rule of
// the rustdoc chapter `redis_layers::docs::transport_rules` that the server
// can produce. The unsolicited
// `sunsubscribe` comes from a one-node cluster that gives up a slot; NOPROTO
// needs a server without RESP3, so tests/auth.rs scripts that one reply; the
// HELLO fallback on a real server is there too.
//
// How the connection treats subscribe-family confirmations
// (src/transport/driver.rs): an in-flight (UN)SUBSCRIBE takes the
// confirmation pushes of its kind that name its channels as its reply,
// which is then `Value::Array` of those pushes; every other push goes to
// the push channel.
//
// Every test is bounded with `tokio::time::timeout`; a hang fails the test.

use std::time::Duration;

use bytes::Bytes;
use redis_layers::{cmd, Connection, Connector, Pipeline, PushReceiver, Value};
use support::{bounded, within, RedisServer};
use tower::{Service, ServiceExt};

// ===== helpers =====

const STEP: Duration = Duration::from_secs(3);

/// A connection of the test's own: these tests drive the transport's
/// framing with commands a shared connection refuses (`CLIENT TRACKING`).
async fn connect(server: &RedisServer) -> Connection {
    let conn = within(
        Duration::from_secs(5),
        "connect",
        Connector::new().connect(server.endpoint()),
    )
    .await
    .expect("connect");
    conn.dedicate();
    conn
}

/// Sends one command, bounded, and unwraps its reply.
async fn send(conn: &Connection, c: redis_layers::Cmd) -> Value {
    let what = format!("{c:?}");
    within(STEP, &what, conn.send_cmd(c))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The next push, bounded.
async fn next_push(pushes: &mut PushReceiver, what: &str) -> Value {
    within(STEP, what, pushes.recv())
        .await
        .unwrap_or_else(|| panic!("{what}: push channel closed"))
}

/// Polls the server until `conn` is blocked in a command (a server-side
/// state that sends us no event).
async fn wait_blocked(admin: &Connection, conn: &Connection) {
    let id = conn.info().and_then(|i| i.client_id).expect("client id");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = send(admin, cmd("CLIENT").arg("LIST").arg("ID").arg(id)).await;
        let line = String::from_utf8_lossy(v.as_bytes().expect("text")).into_owned();
        let blocked = line
            .split_whitespace()
            .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('b')));
        if blocked {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never blocked: {line}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn bulk(s: impl AsRef<[u8]>) -> Value {
    Value::BulkString(Bytes::copy_from_slice(s.as_ref()))
}

fn simple(s: &str) -> Value {
    Value::SimpleString(Bytes::copy_from_slice(s.as_bytes()))
}

fn int(i: i64) -> Value {
    Value::Integer(i)
}

fn push(items: Vec<Value>) -> Value {
    Value::Push(items)
}

fn cpu_push() -> Value {
    push(vec![bulk("server-cpu-usage"), int(42)])
}

const PUSH_REPLY: &str = "Some real reply following the push reply";
const ATTRIB_REPLY: &str = "Some real reply following the attribute";

fn message(channel: &str, payload: impl AsRef<[u8]>) -> Value {
    push(vec![bulk("message"), bulk(channel), bulk(payload)])
}

/// Spec, rule "A push frame can arrive before or after any reply ... The first
/// non-push frame after a command is its reply. Never pair a push with a
/// pending request by position" and rule "`DEBUG PROTOCOL push` produces a
/// real push-then-reply sequence": the push reaches the push channel, never a
/// caller, and every caller (many concurrent ones) gets its own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_protocol_push_goes_to_the_push_channel() {
    bounded(30, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let mut pushes = conn.take_pushes().expect("push receiver");
        assert!(conn.take_pushes().is_none(), "only the first call takes it");

        let v = send(&conn, cmd("DEBUG").arg("PROTOCOL").arg("push")).await;
        assert_eq!(v, bulk(PUSH_REPLY), "the reply, not the push");
        assert_eq!(
            pushes.try_recv(),
            Some(cpu_push()),
            "delivered before the reply"
        );
        assert_eq!(send(&conn, cmd("ECHO").arg("next")).await, bulk("next"));
        assert_eq!(pushes.try_recv(), None);

        // 200 callers at once, every other one producing a push before its
        // reply: each caller gets its own reply, the channel gets 100 pushes.
        let mut handles = Vec::new();
        for i in 0..200 {
            let conn = conn.clone();
            handles.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    let v = conn
                        .send_cmd(cmd("DEBUG").arg("PROTOCOL").arg("push"))
                        .await;
                    assert_eq!(v.unwrap(), bulk(PUSH_REPLY), "caller {i}");
                } else {
                    let tag = format!("caller-{i}");
                    let v = conn.send_cmd(cmd("ECHO").arg(&tag)).await;
                    assert_eq!(v.unwrap(), bulk(&tag), "caller {i}");
                }
            }));
        }
        for (i, r) in within(
            Duration::from_secs(10),
            "callers",
            futures::future::join_all(handles),
        )
        .await
        .into_iter()
        .enumerate()
        {
            r.unwrap_or_else(|e| panic!("caller {i}: {e}"));
        }
        for n in 0..100 {
            assert_eq!(pushes.try_recv(), Some(cpu_push()), "push {n}");
        }
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

/// Spec, rule "A push frame can arrive ... between the replies of a
/// pipeline": pushes between pipeline replies go to the push channel and each
/// command keeps its own result, in order.
#[tokio::test]
async fn push_between_pipeline_replies() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        let debug_push = || cmd("DEBUG").arg("PROTOCOL").arg("push");
        let p = Pipeline::new()
            .cmd(cmd("SET").arg("k").arg("v"))
            .cmd(debug_push())
            .cmd(cmd("GET").arg("k"))
            .cmd(debug_push())
            .cmd(debug_push())
            .cmd(cmd("INCR").arg("n"))
            .cmd(debug_push());
        let r = within(STEP, "pipeline", conn.send(p))
            .await
            .unwrap()
            .into_pipeline()
            .unwrap();
        let want = vec![
            simple("OK"),
            bulk(PUSH_REPLY),
            bulk("v"),
            bulk(PUSH_REPLY),
            bulk(PUSH_REPLY),
            int(1),
            bulk(PUSH_REPLY),
        ];
        assert_eq!(r.len(), want.len());
        for (i, (got, want)) in r.into_iter().zip(want).enumerate() {
            assert_eq!(got.unwrap(), want, "result {i}");
        }
        for n in 0..4 {
            assert_eq!(pushes.try_recv(), Some(cpu_push()), "push {n}");
        }
        assert_eq!(pushes.try_recv(), None);
        assert_eq!(send(&conn, cmd("GET").arg("n")).await, bulk("1"));
    })
    .await
}

/// Spec, rule "Attributes (`|`) annotate the next value; skip or keep them,
/// never let them shift replies": `DEBUG PROTOCOL attrib` alone, in a
/// pipeline and among concurrent callers; attributes are not pushes.
#[tokio::test]
async fn attributes_never_shift_replies() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        let attrib = || cmd("DEBUG").arg("PROTOCOL").arg("attrib");
        let check = |v: Value, what: &str| {
            if let Value::Attribute { attributes, .. } = &v {
                assert_eq!(
                    attributes,
                    &vec![(
                        bulk("key-popularity"),
                        Value::Array(vec![bulk("key:123"), int(90)])
                    )],
                    "{what}"
                );
            }
            assert_eq!(v.without_attributes(), bulk(ATTRIB_REPLY), "{what}");
        };

        check(send(&conn, attrib()).await, "single");
        assert_eq!(send(&conn, cmd("ECHO").arg("a")).await, bulk("a"));

        let p = Pipeline::new()
            .cmd(attrib())
            .cmd(cmd("ECHO").arg("b"))
            .cmd(attrib())
            .cmd(attrib())
            .cmd(cmd("ECHO").arg("c"));
        let r = within(STEP, "pipeline", conn.send(p))
            .await
            .unwrap()
            .into_pipeline()
            .unwrap();
        assert_eq!(r.len(), 5);
        let mut r = r.into_iter().map(Result::unwrap);
        check(r.next().unwrap(), "pipeline 0");
        assert_eq!(r.next().unwrap(), bulk("b"));
        check(r.next().unwrap(), "pipeline 2");
        check(r.next().unwrap(), "pipeline 3");
        assert_eq!(r.next().unwrap(), bulk("c"));

        let (a, e, b) = within(
            STEP,
            "concurrent",
            futures::future::join3(
                conn.send_cmd(attrib()),
                conn.send_cmd(cmd("ECHO").arg("d")),
                conn.send_cmd(attrib()),
            ),
        )
        .await;
        check(a.unwrap(), "concurrent 0");
        assert_eq!(e.unwrap(), bulk("d"));
        check(b.unwrap(), "concurrent 2");
        assert_eq!(pushes.try_recv(), None, "an attribute is not a push");
    })
    .await
}

/// Spec, rule "A push can arrive nested inside an aggregate reply on older
/// servers (Redis 7.0 can put a pub/sub message inside the array that `EXEC`
/// returns). Lift it out, deliver it to the push channel, and count the
/// aggregate's elements without it." A RESP3 client subscribed to `ch`
/// PUBLISHes to `ch` inside MULTI: 7.0.15 writes the `message` push inside
/// the EXEC array (checked on the wire while writing this test).
#[tokio::test]
async fn push_nested_in_exec_reply_is_lifted_out() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        assert_eq!(
            send(&conn, cmd("SUBSCRIBE").arg("ch")).await,
            Value::Array(vec![push(vec![bulk("subscribe"), bulk("ch"), int(1)])])
        );
        assert_eq!(
            send(&conn, cmd("PSUBSCRIBE").arg("c*")).await,
            Value::Array(vec![push(vec![bulk("psubscribe"), bulk("c*"), int(2)])])
        );

        let p = Pipeline::new()
            .cmd(cmd("MULTI"))
            .cmd(cmd("PUBLISH").arg("ch").arg("hello"))
            .cmd(cmd("PING"))
            .cmd(cmd("PUBLISH").arg("ch").arg("world"))
            .cmd(cmd("EXEC"))
            .cmd(cmd("ECHO").arg("after"));
        let r = within(STEP, "MULTI/EXEC pipeline", conn.send(p))
            .await
            .unwrap()
            .into_pipeline()
            .unwrap();
        let r: Vec<Value> = r.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            r,
            vec![
                simple("OK"),
                simple("QUEUED"),
                simple("QUEUED"),
                simple("QUEUED"),
                // Each PUBLISH reached 2 subscriptions of ours (channel and
                // pattern); the pushes are not elements of the EXEC array.
                Value::Array(vec![int(2), simple("PONG"), int(2)]),
                bulk("after"),
            ]
        );
        let pmessage = |payload: &str| {
            push(vec![
                bulk("pmessage"),
                bulk("c*"),
                bulk("ch"),
                bulk(payload),
            ])
        };
        for (n, want) in [
            message("ch", "hello"),
            pmessage("hello"),
            message("ch", "world"),
            pmessage("world"),
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(pushes.try_recv(), Some(want), "lifted push {n}");
        }
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

/// Spec, rule "nested push inside an aggregate" (the brief's variant) and
/// "invalidations arrive just before the next reply": CLIENT TRACKING ON on
/// the same connection, then MULTI / SET of a tracked key / GET / EXEC. On
/// 7.0.15 the invalidation comes right after the EXEC array; either way the
/// EXEC array must come back intact and the invalidation on the push channel.
#[tokio::test]
async fn tracking_invalidation_inside_transaction() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        assert_eq!(
            send(&conn, cmd("CLIENT").args(["TRACKING", "ON"])).await,
            simple("OK")
        );
        assert_eq!(
            send(&conn, cmd("SET").arg("k").arg("v0")).await,
            simple("OK")
        );
        assert_eq!(send(&conn, cmd("GET").arg("k")).await, bulk("v0")); // tracked now

        let p = Pipeline::new()
            .cmd(cmd("MULTI"))
            .cmd(cmd("SET").arg("k").arg("v1"))
            .cmd(cmd("GET").arg("k"))
            .cmd(cmd("EXEC"))
            .cmd(cmd("ECHO").arg("after"));
        let r: Vec<Value> = within(STEP, "MULTI/EXEC", conn.send(p))
            .await
            .unwrap()
            .into_pipeline()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            r,
            vec![
                simple("OK"),
                simple("QUEUED"),
                simple("QUEUED"),
                Value::Array(vec![simple("OK"), bulk("v1")]),
                bulk("after"),
            ]
        );
        assert_eq!(
            pushes.try_recv(),
            Some(push(vec![
                bulk("invalidate"),
                Value::Array(vec![bulk("k")])
            ])),
            "the invalidation arrived before ECHO's reply"
        );
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

/// Spec, rule "Subscribe-family confirmations ... arrive as push frames; only
/// a (UN)SUBSCRIBE that is actually in flight may consume them as its reply.
/// `SUBSCRIBE a b` answers with two pushes and no ordinary reply": the
/// confirmations are SUBSCRIBE's reply (not on the push channel), a PUBLISH
/// from another connection arrives as a `message` push, and ordinary
/// commands keep working on the same RESP3 connection while subscribed.
#[tokio::test]
async fn subscribe_confirmations_and_messages() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let other = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();

        let r = send(&conn, cmd("SUBSCRIBE").arg("a").arg("b")).await;
        assert_eq!(
            r,
            Value::Array(vec![
                push(vec![bulk("subscribe"), bulk("a"), int(1)]),
                push(vec![bulk("subscribe"), bulk("b"), int(2)]),
            ])
        );
        assert_eq!(pushes.try_recv(), None, "confirmations are the reply");

        assert_eq!(
            send(&other, cmd("PUBLISH").arg("a").arg("hello")).await,
            int(1)
        );
        assert_eq!(
            next_push(&mut pushes, "message on a").await,
            message("a", "hello")
        );

        // Ordinary commands on the subscribed RESP3 connection.
        assert_eq!(
            send(&conn, cmd("SET").arg("k").arg("v")).await,
            simple("OK")
        );
        assert_eq!(send(&conn, cmd("GET").arg("k")).await, bulk("v"));
        assert_eq!(send(&conn, cmd("PING")).await, simple("PONG"));

        // Concurrent callers while a SUBSCRIBE is in flight.
        let (x, s, y) = within(
            STEP,
            "SUBSCRIBE among GETs",
            futures::future::join3(
                conn.send_cmd(cmd("GET").arg("k")),
                conn.send_cmd(cmd("PSUBSCRIBE").arg("n*")),
                conn.send_cmd(cmd("ECHO").arg("y")),
            ),
        )
        .await;
        assert_eq!(x.unwrap(), bulk("v"));
        assert_eq!(
            s.unwrap(),
            Value::Array(vec![push(vec![bulk("psubscribe"), bulk("n*"), int(3)])])
        );
        assert_eq!(y.unwrap(), bulk("y"));

        assert_eq!(
            send(&other, cmd("PUBLISH").arg("news").arg("x")).await,
            int(1)
        );
        assert_eq!(
            next_push(&mut pushes, "pmessage").await,
            push(vec![bulk("pmessage"), bulk("n*"), bulk("news"), bulk("x")])
        );

        // A pipeline mixing subscribe-family commands and ordinary ones.
        let p = Pipeline::new()
            .cmd(cmd("UNSUBSCRIBE").arg("a"))
            .cmd(cmd("GET").arg("k"))
            .cmd(cmd("SUBSCRIBE").arg("c").arg("d").arg("e"))
            .cmd(cmd("ECHO").arg("z"));
        let r: Vec<Value> = within(STEP, "pipeline", conn.send(p))
            .await
            .unwrap()
            .into_pipeline()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            r,
            vec![
                Value::Array(vec![push(vec![bulk("unsubscribe"), bulk("a"), int(2)])]),
                bulk("v"),
                Value::Array(vec![
                    push(vec![bulk("subscribe"), bulk("c"), int(3)]),
                    push(vec![bulk("subscribe"), bulk("d"), int(4)]),
                    push(vec![bulk("subscribe"), bulk("e"), int(5)]),
                ]),
                bulk("z"),
            ]
        );
        assert_eq!(
            send(&other, cmd("PUBLISH").arg("a").arg("gone")).await,
            int(0)
        );
        assert_eq!(
            send(&other, cmd("PUBLISH").arg("e").arg("last")).await,
            int(1)
        );
        assert_eq!(
            next_push(&mut pushes, "message on e").await,
            message("e", "last")
        );
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

/// Spec, rule "`UNSUBSCRIBE` with nothing subscribed answers
/// `>3 unsubscribe _ :0`" (and the same for PUNSUBSCRIBE / SUNSUBSCRIBE): the
/// command completes with that confirmation, nothing leaks to the push
/// channel, and the next reply is matched to its own command.
#[tokio::test]
async fn unsubscribe_with_nothing_subscribed() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        for kind in ["unsubscribe", "punsubscribe", "sunsubscribe"] {
            let r = send(&conn, cmd(&kind.to_uppercase())).await;
            assert_eq!(
                r,
                Value::Array(vec![push(vec![bulk(kind), Value::Null, int(0)])]),
                "{kind}"
            );
            assert_eq!(send(&conn, cmd("ECHO").arg(kind)).await, bulk(kind));
        }
        // Subscribe, then unsubscribe from everything.
        send(&conn, cmd("SUBSCRIBE").arg("a").arg("b")).await;
        let Value::Array(confirms) = send(&conn, cmd("UNSUBSCRIBE")).await else {
            panic!("UNSUBSCRIBE reply is not an array")
        };
        let mut confirms: Vec<(Value, Value)> = confirms
            .into_iter()
            .map(|c| match c {
                Value::Push(mut items) => {
                    assert_eq!(items.len(), 3);
                    assert_eq!(items[0], bulk("unsubscribe"));
                    let count = items.pop().unwrap();
                    (items.pop().unwrap(), count)
                }
                other => panic!("not a push: {other:?}"),
            })
            .collect();
        // The server picks the order of the channels; the counts go 1, 0.
        assert_eq!(
            confirms.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
            vec![int(1), int(0)]
        );
        confirms.sort_by(|x, y| x.0.as_bytes().cmp(&y.0.as_bytes()));
        assert_eq!(confirms[0].0, bulk("a"));
        assert_eq!(confirms[1].0, bulk("b"));
        assert_eq!(send(&conn, cmd("PING")).await, simple("PONG"));
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

/// Spec, rule "Subscribe-family confirmations ... only a (UN)SUBSCRIBE that is
/// actually in flight may consume them as its reply", with patterns left: a
/// bare `UNSUBSCRIBE` answers one confirmation per channel, and the last one's
/// count is the number of *pattern* subscriptions left, not 0 (7.0.15:
/// `SUBSCRIBE a; PSUBSCRIBE p*; UNSUBSCRIBE` gives `>3 unsubscribe a :1`;
/// with only `p*`, `>3 unsubscribe _ :1`). UNSUBSCRIBE must complete and the
/// next command must get its own reply.
#[tokio::test]
async fn bare_unsubscribe_with_patterns_left() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        send(&conn, cmd("SUBSCRIBE").arg("a")).await;
        send(&conn, cmd("PSUBSCRIBE").arg("p*")).await;
        // Both pending at once, in this order, as on any shared connection:
        // `call` queues the request before it returns.
        let mut svc = conn.clone();
        let unsub = svc.ready().await.unwrap().call(cmd("UNSUBSCRIBE").into());
        let ping = svc.ready().await.unwrap().call(cmd("PING").into());
        let (unsub, ping) = (tokio::spawn(unsub), tokio::spawn(ping));
        let unsub = within(STEP, "UNSUBSCRIBE", unsub).await.unwrap();
        assert_eq!(
            unsub.and_then(|r| r.into_value()).unwrap(),
            Value::Array(vec![push(vec![bulk("unsubscribe"), bulk("a"), int(1)])]),
            "UNSUBSCRIBE's reply"
        );
        let ping = within(STEP, "PING after UNSUBSCRIBE", ping).await.unwrap();
        assert_eq!(ping.and_then(|r| r.into_value()).unwrap(), simple("PONG"));

        // Nothing on channels now, one pattern left: `unsubscribe _ :1`.
        let unsub = within(
            STEP,
            "UNSUBSCRIBE (none left)",
            conn.send_cmd(cmd("UNSUBSCRIBE")),
        )
        .await
        .unwrap();
        assert_eq!(
            unsub,
            Value::Array(vec![push(vec![bulk("unsubscribe"), Value::Null, int(1)])])
        );
        // And the mirror image: PUNSUBSCRIBE while a channel is subscribed.
        send(&conn, cmd("SUBSCRIBE").arg("b")).await;
        let punsub = within(STEP, "PUNSUBSCRIBE", conn.send_cmd(cmd("PUNSUBSCRIBE")))
            .await
            .unwrap();
        assert_eq!(
            punsub,
            Value::Array(vec![push(vec![bulk("punsubscribe"), bulk("p*"), int(1)])])
        );
        assert_eq!(send(&conn, cmd("ECHO").arg("x")).await, bulk("x"));
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

/// Spec, rule "Client-side-caching invalidations arrive just before the next
/// reply; after `FLUSHALL` the payload is null": invalidations caused by
/// another connection, by this connection itself, and by FLUSHALL reach the
/// push channel, never a caller.
#[tokio::test]
async fn tracking_invalidations_and_flushall_null() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let other = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        let invalidate = |keys: Value| push(vec![bulk("invalidate"), keys]);

        assert_eq!(
            send(&conn, cmd("CLIENT").args(["TRACKING", "ON"])).await,
            simple("OK")
        );
        assert_eq!(
            send(&other, cmd("SET").arg("k").arg("v1")).await,
            simple("OK")
        );
        assert_eq!(send(&conn, cmd("GET").arg("k")).await, bulk("v1"));

        // Another connection writes the key: the push is on our socket
        // before the reply to our next command.
        assert_eq!(
            send(&other, cmd("SET").arg("k").arg("v2")).await,
            simple("OK")
        );
        assert_eq!(send(&conn, cmd("ECHO").arg("next")).await, bulk("next"));
        assert_eq!(
            pushes.try_recv(),
            Some(invalidate(Value::Array(vec![bulk("k")])))
        );

        // We write a key we track: our reply is the SET's OK, the
        // invalidation goes to the channel.
        assert_eq!(send(&conn, cmd("GET").arg("k")).await, bulk("v2"));
        assert_eq!(
            send(&conn, cmd("SET").arg("k").arg("v3")).await,
            simple("OK")
        );
        assert_eq!(
            next_push(&mut pushes, "self invalidation").await,
            invalidate(Value::Array(vec![bulk("k")]))
        );

        // FLUSHALL (from the other connection): the payload is null.
        assert_eq!(send(&conn, cmd("GET").arg("k")).await, bulk("v3"));
        assert_eq!(send(&other, cmd("FLUSHALL")).await, simple("OK"));
        assert_eq!(
            next_push(&mut pushes, "FLUSHALL invalidation").await,
            invalidate(Value::Null)
        );
        // FLUSHALL on our own connection, then a pending command.
        assert_eq!(send(&conn, cmd("GET").arg("k")).await, Value::Null);
        let (f, e) = within(
            STEP,
            "FLUSHALL + ECHO",
            futures::future::join(
                conn.send_cmd(cmd("FLUSHALL")),
                conn.send_cmd(cmd("ECHO").arg("e")),
            ),
        )
        .await;
        assert_eq!(f.unwrap(), simple("OK"));
        assert_eq!(e.unwrap(), bulk("e"));
        assert_eq!(pushes.try_recv(), Some(invalidate(Value::Null)));
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

/// Spec, rule "Large push frames (16 KiB and more) must decode across any
/// number of reads": 16 KiB, 1 MiB and 8 MiB messages arrive byte for byte,
/// in order, while this connection keeps answering its own commands.
#[tokio::test]
async fn large_pushes_decode_across_reads() {
    bounded(60, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let other = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        send(&conn, cmd("SUBSCRIBE").arg("big")).await;

        let payload = |len: usize, seed: usize| -> Bytes {
            (0..len)
                .map(|i| ((i.wrapping_mul(7) + seed) % 253) as u8)
                .collect::<Vec<u8>>()
                .into()
        };
        let sizes = [16 * 1024, 16 * 1024 + 1, 1024 * 1024, 8 * 1024 * 1024, 1];
        let sent: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| payload(n, i))
            .collect();
        let mut p = Pipeline::new();
        for b in &sent {
            p.push(cmd("PUBLISH").arg("big").arg(b.clone()));
        }
        let (r, echo) = within(
            Duration::from_secs(20),
            "PUBLISH large + ECHO",
            futures::future::join(other.send(p), conn.send_cmd(cmd("ECHO").arg("mine"))),
        )
        .await;
        for (i, r) in r.unwrap().into_pipeline().unwrap().into_iter().enumerate() {
            assert_eq!(r.unwrap(), int(1), "PUBLISH {i}");
        }
        assert_eq!(echo.unwrap(), bulk("mine"));
        for (i, b) in sent.iter().enumerate() {
            let got = next_push(&mut pushes, "large message").await;
            assert!(
                got == message("big", b),
                "message {i} ({} bytes) differs",
                b.len()
            );
        }
        assert_eq!(send(&conn, cmd("ECHO").arg("after")).await, bulk("after"));
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

/// Spec, rule "An unknown push kind must go to the user's push handler, never
/// consume a pending request": `server-cpu-usage` (unknown to the crate)
/// arrives while the DEBUG command is pending and while subscribe-family
/// commands are in the same pipeline; it reaches the channel unchanged.
#[tokio::test]
async fn unknown_push_kind_passes_through() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        let p = Pipeline::new()
            .cmd(cmd("SUBSCRIBE").arg("a"))
            .cmd(cmd("DEBUG").arg("PROTOCOL").arg("push"))
            .cmd(cmd("UNSUBSCRIBE").arg("a"))
            .cmd(cmd("DEBUG").arg("PROTOCOL").arg("push"));
        let r: Vec<Value> = within(STEP, "pipeline", conn.send(p))
            .await
            .unwrap()
            .into_pipeline()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            r,
            vec![
                Value::Array(vec![push(vec![bulk("subscribe"), bulk("a"), int(1)])]),
                bulk(PUSH_REPLY),
                Value::Array(vec![push(vec![bulk("unsubscribe"), bulk("a"), int(0)])]),
                bulk(PUSH_REPLY),
            ]
        );
        assert_eq!(pushes.try_recv(), Some(cpu_push()));
        assert_eq!(pushes.try_recv(), Some(cpu_push()));
        assert_eq!(pushes.try_recv(), None);
        let kind = {
            send(&conn, cmd("DEBUG").arg("PROTOCOL").arg("push")).await;
            pushes.try_recv().unwrap()
        };
        assert_eq!(kind.push_kind(), Some(&b"server-cpu-usage"[..]));
    })
    .await
}

/// Spec, rule "Never pair a push with a pending request by position": a
/// `message` push arriving while a BLPOP is pending on the connection goes to
/// the push channel, and the BLPOP later gets its own reply.
#[tokio::test]
async fn push_while_a_blocking_request_is_pending() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let other = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        send(&conn, cmd("SUBSCRIBE").arg("ch")).await;
        let blpop = {
            let c = conn.clone();
            tokio::spawn(async move { c.send_cmd(cmd("BLPOP").arg("list").arg(10)).await })
        };
        wait_blocked(&other, &conn).await;
        assert_eq!(
            send(&other, cmd("PUBLISH").arg("ch").arg("during")).await,
            int(1)
        );
        assert_eq!(
            next_push(&mut pushes, "message").await,
            message("ch", "during")
        );
        assert!(!blpop.is_finished(), "the push did not complete the BLPOP");
        assert_eq!(
            send(&other, cmd("RPUSH").arg("list").arg("item")).await,
            int(1)
        );
        let r = within(STEP, "BLPOP", blpop).await.unwrap().unwrap();
        assert_eq!(r, Value::Array(vec![bulk("list"), bulk("item")]));
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

/// Spec, rule "A push frame can arrive before or after any reply": the order
/// of pushes is preserved, 500 messages published by another connection and
/// a mix of kinds produced by this connection itself.
#[tokio::test]
async fn push_order_is_preserved() {
    bounded(30, async {
        let server = RedisServer::start();
        let conn = connect(&server).await;
        let other = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        send(&conn, cmd("SUBSCRIBE").arg("seq")).await;

        let p: Pipeline = (0..500)
            .map(|i| cmd("PUBLISH").arg("seq").arg(format!("m{i}")))
            .collect();
        let r = within(STEP, "500 PUBLISH", other.send(p)).await.unwrap();
        assert!(r.into_pipeline().unwrap().iter().all(|r| r == &Ok(int(1))));
        for i in 0..500 {
            assert_eq!(
                next_push(&mut pushes, "ordered message").await,
                message("seq", format!("m{i}")),
                "message {i}"
            );
        }

        // Our own PUBLISH to our own channel: the message push precedes the
        // PUBLISH reply; interleaved with DEBUG pushes, the order is kept.
        let p = Pipeline::new()
            .cmd(cmd("DEBUG").arg("PROTOCOL").arg("push"))
            .cmd(cmd("PUBLISH").arg("seq").arg("own-1"))
            .cmd(cmd("DEBUG").arg("PROTOCOL").arg("push"))
            .cmd(cmd("PUBLISH").arg("seq").arg("own-2"));
        let r: Vec<Value> = within(STEP, "own pipeline", conn.send(p))
            .await
            .unwrap()
            .into_pipeline()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(r, vec![bulk(PUSH_REPLY), int(1), bulk(PUSH_REPLY), int(1)]);
        for (n, want) in [
            cpu_push(),
            message("seq", "own-1"),
            cpu_push(),
            message("seq", "own-2"),
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(pushes.try_recv(), Some(want), "push {n}");
        }
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

/// Spec, rule "Servers also send **unsolicited** `sunsubscribe` pushes (a
/// node lost a slot); those must not be taken for the next command's reply":
/// a one-node cluster serves every slot, we SSUBSCRIBE, then the node gives
/// up the channel's slot (`CLUSTER DELSLOTS`), which makes redis-server 7.0
/// send `>3 sunsubscribe ch :0` on its own. The push reaches the push
/// channel; the next commands get their own replies; and a bare SUNSUBSCRIBE
/// afterwards (nothing left to unsubscribe) completes.
#[tokio::test]
async fn unsolicited_sunsubscribe_is_a_push() {
    bounded(30, async {
        let server = RedisServer::builder()
            .arg("--cluster-enabled")
            .arg("yes")
            .arg("--cluster-config-file")
            .arg("nodes.conf")
            .start();
        assert_eq!(
            server.cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]),
            "OK"
        );
        // The cluster state is not announced to clients: poll it, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !server
            .cli(&["CLUSTER", "INFO"])
            .contains("cluster_state:ok")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "cluster never became ok"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let conn = connect(&server).await;
        let mut pushes = conn.take_pushes().unwrap();
        let slot = send(&conn, cmd("CLUSTER").arg("KEYSLOT").arg("ch"))
            .await
            .as_int()
            .unwrap();
        assert_eq!(
            send(&conn, cmd("SSUBSCRIBE").arg("ch")).await,
            Value::Array(vec![push(vec![bulk("ssubscribe"), bulk("ch"), int(1)])])
        );

        assert_eq!(
            server.cli(&["CLUSTER", "DELSLOTS", &slot.to_string()]),
            "OK"
        );
        assert_eq!(
            next_push(&mut pushes, "unsolicited sunsubscribe").await,
            push(vec![bulk("sunsubscribe"), bulk("ch"), int(0)])
        );
        assert_eq!(send(&conn, cmd("ECHO").arg("after")).await, bulk("after"));
        let v = send(&conn, cmd("SUNSUBSCRIBE")).await;
        let Value::Array(confirms) = v else {
            panic!("SUNSUBSCRIBE: {v:?}")
        };
        assert_eq!(confirms.len(), 1, "{confirms:?}");
        assert_eq!(confirms[0].push_kind(), Some(&b"sunsubscribe"[..]));
        assert_eq!(
            send(&conn, cmd("PING")).await,
            Value::SimpleString("PONG".into())
        );
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

/// The server's own `sunsubscribe` for channel `b` (a slot left the node)
/// that arrives while our `SUNSUBSCRIBE a` waits for its confirmation is not
/// taken for it. The simulator holds the server's replies back and injects
/// the push for `b` meanwhile: it reaches the push channel, and
/// `SUNSUBSCRIBE a` gets `a`'s confirmation.
#[cfg(feature = "sim")]
#[tokio::test]
async fn a_server_sunsubscribe_is_not_taken_for_our_confirmation() {
    use redis_layers::sim::Target;
    bounded(30, async {
        let env = support::sim::SimStandalone::start().await;
        let conn = within(STEP, "connect", Connector::new().connect(env.endpoint()))
            .await
            .expect("connect");
        let mut pushes = conn.take_pushes().unwrap();
        for ch in ["a", "b"] {
            send(&conn, cmd("SSUBSCRIBE").arg(ch)).await;
        }
        env.sim.set_delay(Target::All, Duration::from_millis(300));
        let unsub = tokio::spawn({
            let conn = conn.clone();
            async move { conn.send_cmd(cmd("SUNSUBSCRIBE").arg("a")).await }
        });
        // Written (the server answers it; the simulator holds the answer).
        within(STEP, "SUNSUBSCRIBE ran", env.server.ran("sunsubscribe", 1)).await;
        env.sim.inject_raw(
            Target::All,
            &b">3\r\n$12\r\nsunsubscribe\r\n$1\r\nb\r\n:1\r\n"[..],
        );
        assert_eq!(
            next_push(&mut pushes, "the server's sunsubscribe").await,
            push(vec![bulk("sunsubscribe"), bulk("b"), int(1)])
        );
        let u = within(STEP, "SUNSUBSCRIBE a", unsub).await.unwrap();
        assert_eq!(
            u.unwrap(),
            Value::Array(vec![push(vec![bulk("sunsubscribe"), bulk("a"), int(1)])])
        );
        assert_eq!(pushes.try_recv(), None);
    })
    .await
}

// ===== bounded push channels (scripted server) =====

/// Counts `push.dropped` events.
#[derive(Clone, Default)]
struct DropWarnings(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DropWarnings {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct IsDrop(bool);
        impl tracing::field::Visit for IsDrop {
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0 |= f.name() == "event" && v == "push.dropped";
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut v = IsDrop(false);
        e.record(&mut v);
        if v.0 && *e.metadata().level() == tracing::Level::WARN {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A connection keeps at most `push_capacity` unread push frames: the
/// others are dropped and counted, one warning says so (not one per
/// frame), and commands are answered all along. Once read, there is room
/// again.
#[tokio::test]
async fn a_full_push_channel_drops_and_counts_frames() {
    use support::hostile::{push as frame, HostileServer};
    use tracing_subscriber::layer::SubscriberExt;
    let warns = DropWarnings::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warns.clone()));
    bounded(20, async {
        let server = HostileServer::start();
        let conn = within(
            STEP,
            "connect",
            Connector::new().push_capacity(4).connect(server.endpoint()),
        )
        .await
        .expect("connect");
        let mut pushes = conn.take_pushes().unwrap();
        let burst: Vec<u8> = (0..10)
            .flat_map(|i| frame(&["message", "news", &i.to_string()]))
            .collect();
        server.inject(&burst);
        // Answered after the pushes: the driver read past all of them.
        assert_eq!(
            send(&conn, cmd("PING")).await.as_bytes(),
            Some(&b"PONG"[..])
        );
        assert_eq!(pushes.dropped(), 6);
        for i in 0..4 {
            assert_eq!(
                next_push(&mut pushes, "kept").await,
                push(vec![bulk("message"), bulk("news"), bulk(i.to_string())])
            );
        }
        assert_eq!(pushes.try_recv(), None);
        server.inject(&frame(&["message", "news", "10"]));
        assert_eq!(
            send(&conn, cmd("PING")).await.as_bytes(),
            Some(&b"PONG"[..])
        );
        assert_eq!(
            next_push(&mut pushes, "room again").await,
            push(vec![bulk("message"), bulk("news"), bulk("10")])
        );
        assert_eq!(pushes.dropped(), 6);
        assert_eq!(warns.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    })
    .await
}

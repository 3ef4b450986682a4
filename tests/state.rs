//! One caller can never change another caller's connection: commands that
//! change a shared connection's state are refused before anything is sent
//! (`Error::Usage`), the settings a user legitimately wants are builder
//! settings replayed on every new connection, and dedicated connections
//! allow everything. Real redis-server, and the simulator for `MOVING`.

mod support;

use std::time::Duration;

use redis_layers::client::{ClientBuilder, ListEnd};
use redis_layers::transport::Tracking;
use redis_layers::{cmd, Connector, Error};
use support::{bounded, RedisServer};

async fn client(server: &RedisServer, connector: Connector) -> redis_layers::Client {
    ClientBuilder::new(server.endpoint())
        .connector(connector)
        .build()
        .await
        .unwrap()
}

/// Task A's `MULTI` would queue unrelated task B's `SET`, and A's
/// `DISCARD` drop it. Refused now, with 32 tasks at it: every write lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_alone_never_swallows_another_callers_write() {
    bounded(30, async {
        let server = RedisServer::start();
        let client = client(&server, Connector::new()).await;
        let mut tasks = Vec::new();
        for t in 0..32 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    if t % 2 == 0 {
                        let e = client.cmd::<()>(cmd("MULTI")).await.unwrap_err();
                        assert!(matches!(e, Error::Usage(_)), "{e}");
                        assert!(e.to_string().contains("transaction"), "{e}");
                        let e = client.cmd::<()>(cmd("DISCARD")).await.unwrap_err();
                        assert!(matches!(e, Error::Usage(_)), "{e}");
                    } else {
                        client.set(format!("w:{t}:{i}"), i).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for t in (1..32).step_by(2) {
            for i in 0..20 {
                assert_eq!(server.cli(&["GET", &format!("w:{t}:{i}")]), i.to_string());
            }
        }
        // The transaction API still sends MULTI ... EXEC, as one request.
        let (a, b): (i64, i64) = client
            .transaction()
            .cmd(cmd("INCR").arg("tx"))
            .cmd(cmd("INCR").arg("tx"))
            .query()
            .await
            .unwrap();
        assert_eq!((a, b), (1, 2));
    })
    .await;
}

/// Every connection-state command is refused on the shared connection and
/// names what to use instead; nothing reaches the server.
#[tokio::test]
async fn state_commands_are_refused_on_a_shared_connection() {
    bounded(30, async {
        let server = RedisServer::start();
        let client = client(&server, Connector::new().client_name("mine")).await;
        client.set("k", 1).await.unwrap();
        for (c, hint) in [
            (cmd("SELECT").arg(5), "Connector::database"),
            (cmd("HELLO").arg(2), "Connector::"),
            (cmd("AUTH").arg("x"), "Connector::"),
            (
                cmd("CLIENT").arg("TRACKING").arg("ON"),
                "Connector::tracking",
            ),
            (cmd("READONLY"), "on_connect"),
            (cmd("READWRITE"), "on_connect"),
            (cmd("CLIENT").arg("SETNAME").arg("theirs"), "client_name"),
            (cmd("RESET"), "dedicated"),
            (cmd("WATCH").arg("k"), "Client::watch"),
            (cmd("UNWATCH"), "Client::watch"),
            (cmd("EXEC"), "transaction"),
        ] {
            let name = format!("{c:?}");
            let e = client.cmd::<redis_layers::Value>(c).await.unwrap_err();
            assert!(
                matches!(&e, Error::Usage(m) if m.contains(hint)),
                "{name}: {e}"
            );
        }
        // The connection is as it was: same name, database 0, same key.
        let name: Option<String> = client.cmd(cmd("CLIENT").arg("GETNAME")).await.unwrap();
        assert_eq!(name.as_deref(), Some("mine"));
        assert_eq!(client.get::<i64>("k").await.unwrap(), 1);
        let calls = server.cli(&["INFO", "commandstats"]);
        for refused in ["select", "reset", "readonly", "watch", "exec"] {
            assert!(
                !calls.contains(&format!("cmdstat_{refused}:")),
                "{refused} reached the server"
            );
        }
    })
    .await;
}

/// A dedicated connection allows them: a lease may `SELECT`, and is not
/// handed to the next lease afterwards (it is not clean).
#[tokio::test]
async fn a_lease_allows_state_commands_and_is_not_reused_after_them() {
    use redis_layers::handoff::Handoff;
    use tower::ServiceExt;
    bounded(30, async {
        let server = RedisServer::start();
        let svc = Handoff::new(Connector::new(), server.endpoint());
        let mut lease = svc.lease().await.unwrap();
        (&mut lease)
            .oneshot(cmd("SELECT").arg(3).into())
            .await
            .unwrap();
        (&mut lease)
            .oneshot(cmd("SET").arg("in3").arg("x").into())
            .await
            .unwrap();
        drop(lease);
        assert_eq!(server.cli(&["-n", "3", "GET", "in3"]), "x");
        let lease = svc.lease().await.unwrap();
        assert!(!lease.is_reused(), "a connection left in db 3 was reused");
    })
    .await;
}

/// The database is a builder setting, replayed on the connection a
/// `MOVING` hands off to: 32 tasks write before and after the move, and
/// every key lands in database 5.
#[cfg(feature = "sim")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_database_survives_a_moving() {
    use redis_layers::maint::{MaintenanceConfig, Mode};
    use redis_layers::sim::MovingPlan;
    use support::sim::SimStandalone;

    bounded(40, async {
        let env = SimStandalone::start().await;
        let client = ClientBuilder::new(env.endpoint())
            .database(5)
            .client_name("mover")
            .tracking(Tracking::bcast().prefix("before:"))
            .maintenance(MaintenanceConfig::default().mode(Mode::Enabled))
            .build()
            .await
            .unwrap();
        let write = |phase: &'static str| {
            let tasks: Vec<_> = (0..32)
                .map(|t| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let e = client.cmd::<()>(cmd("SELECT").arg(0)).await.unwrap_err();
                        assert!(matches!(e, Error::Usage(_)));
                        client.set(format!("{phase}:{t}"), t).await.unwrap();
                    })
                })
                .collect();
            async move {
                for t in tasks {
                    t.await.unwrap();
                }
            }
        };
        write("before").await;
        env.sim
            .wait_for(|c| c.iter().any(|c| c.maint.is_some()))
            .await;
        let moved = env
            .sim
            .moving(MovingPlan::new(Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(moved.closed, 0);
        write("after").await;
        assert_settings(&client, "mover").await;
        for phase in ["before", "after"] {
            for t in 0..32 {
                let key = format!("{phase}:{t}");
                assert_eq!(
                    env.server.cli(&["-n", "5", "GET", &key]),
                    t.to_string(),
                    "{key}"
                );
                assert_eq!(
                    env.server.cli(&["-n", "0", "EXISTS", &key]),
                    "0",
                    "{key} in db 0"
                );
            }
        }
    })
    .await;
}

/// A `MULTI` the server refuses (an ACL without it): the queued commands
/// ran one by one, outside any transaction. The error says so, never a
/// plain success and never `MULTI`'s error alone.
#[tokio::test]
async fn a_refused_multi_says_the_commands_ran_outside_a_transaction() {
    bounded(30, async {
        let server = RedisServer::start();
        server.cli(&[
            "ACL", "SETUSER", "nomulti", "on", ">pw", "~*", "+@all", "-multi",
        ]);
        let client = client(&server, Connector::new().username("nomulti").password("pw")).await;
        let e = client
            .transaction()
            .cmd(cmd("SET").arg("a").arg(1))
            .cmd(cmd("INCR").arg("n"))
            .query::<(String, i64)>()
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("outside a transaction"), "{text}");
        assert!(text.contains("NOPERM"), "{text}");
        // They did run.
        assert_eq!(server.cli(&["GET", "a"]), "1");
        assert_eq!(server.cli(&["GET", "n"]), "1");
    })
    .await;
}

/// A reused dedicated connection whose first request fails after the
/// server ran it: `BLMOVE` (not harmless twice) is not sent again, so no
/// second element moves; `BLPOP` (harmless: the element of the lost reply
/// is gone either way) still is.
#[tokio::test]
async fn a_first_request_that_may_have_run_is_resent_only_when_harmless_twice() {
    use support::hostile::HostileServer;
    bounded(30, async {
        // BLMOVE always hangs up after running; the third BLPOP does.
        let blpops = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let b = blpops.clone();
        let server = HostileServer::scripted(move |r| match r.name().as_str() {
            "BLMOVE" => Some(Vec::new()),
            "BLPOP" if b.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 2 => Some(Vec::new()),
            "BLPOP" => Some(b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n".to_vec()),
            _ => None,
        });
        let client = ClientBuilder::new(server.endpoint()).build().await.unwrap();
        let count = |name: &str| {
            server
                .received()
                .iter()
                .filter(|r| r.name() == name)
                .count()
        };
        // A dedicated connection, answered and given back clean.
        client.blpop::<String>(["q"], 1.0).await.unwrap();
        // Reused: the server runs BLMOVE and hangs up before the reply.
        let e = client
            .blmove::<String>("src", "dst", ListEnd::Left, ListEnd::Right, 1.0)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Io(_)), "{e}");
        assert_eq!(count("BLMOVE"), 1, "BLMOVE ran twice");
        // BLPOP: a new connection answers and goes idle; reused, it hangs
        // up, and the BLPOP goes again on another one.
        client.blpop::<String>(["q"], 1.0).await.unwrap();
        client.blpop::<String>(["q"], 1.0).await.unwrap();
        assert_eq!(count("BLPOP"), 4);
    })
    .await;
}

/// The name and tracking the builder set are on the connection serving the
/// client now.
async fn assert_settings(client: &redis_layers::Client, name: &str) {
    let got: Option<String> = client.cmd(cmd("CLIENT").arg("GETNAME")).await.unwrap();
    assert_eq!(got.as_deref(), Some(name));
    let info: redis_layers::Value = client.cmd(cmd("CLIENT").arg("TRACKINGINFO")).await.unwrap();
    let text = format!("{info:?}");
    assert!(text.contains("bcast") && text.contains("before:"), "{text}");
}

/// The builder's settings are replayed on the connection that replaces a
/// killed one.
#[tokio::test]
async fn connection_settings_are_replayed_after_a_reconnect() {
    bounded(30, async {
        let server = RedisServer::start();
        let client = ClientBuilder::new(server.endpoint())
            .database(3)
            .client_name("again")
            .tracking(Tracking::bcast().prefix("before:"))
            .build()
            .await
            .unwrap();
        client.set("k1", 1).await.unwrap();
        assert_settings(&client, "again").await;
        server.cli(&["CLIENT", "KILL", "SKIPME", "no", "TYPE", "normal"]);
        // The first command after the kill may find the dead connection.
        let _ = client.set("k2", 2).await;
        client.set("k2", 2).await.unwrap();
        assert_settings(&client, "again").await;
        assert_eq!(server.cli(&["-n", "3", "GET", "k2"]), "2");
        assert_eq!(server.cli(&["-n", "0", "EXISTS", "k2"]), "0");
    })
    .await;
}

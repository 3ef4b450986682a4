//! Redis URLs against real servers: what `Connector::from_url` parses is
//! what the server sees (database, client name, credentials), over TCP and
//! over a Unix socket.

mod support;

use std::time::Duration;

use redis_layers::{cmd, Connector, Endpoint, Error, Protocol};
use support::{bounded, within, RedisServer};

const STEP: Duration = Duration::from_secs(5);

/// The server's `CLIENT INFO` line for the connection that sent it.
async fn client_info(conn: &redis_layers::Connection) -> String {
    let v = within(
        STEP,
        "CLIENT INFO",
        conn.send_cmd(cmd("CLIENT").arg("INFO")),
    )
    .await
    .unwrap();
    String::from_utf8_lossy(v.as_bytes().unwrap()).into_owned()
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// `unix://` with `?db=`, `?client_name=` and `?protocol=`: the server sees
/// a Unix socket client in that database, with that name, on RESP2.
#[tokio::test]
async fn unix_url_with_db_client_name_and_protocol() {
    bounded(20, async {
        let server = RedisServer::builder().unix_socket().start();
        let Some(Endpoint::Unix(path)) = server.unix_endpoint() else {
            panic!("no unix socket")
        };
        let url = format!(
            "unix://{}?db=4&client_name=from%2Durl&protocol=2",
            path.display()
        );
        let (connector, endpoint) = Connector::from_url(&url).unwrap();
        assert_eq!(endpoint, Endpoint::unix(&path));
        let conn = within(STEP, "connect", connector.connect(endpoint))
            .await
            .expect("connect over the Unix socket");
        assert_eq!(conn.protocol(), Protocol::Resp2);
        let info = client_info(&conn).await;
        assert!(
            field(&info, "flags").is_some_and(|f| f.contains('U')),
            "{info}"
        );
        assert_eq!(field(&info, "db"), Some("4"), "{info}");
        assert_eq!(field(&info, "name"), Some("from-url"), "{info}");
        assert_eq!(field(&info, "resp"), Some("2"), "{info}");

        within(STEP, "SET", conn.send_cmd(cmd("SET").arg("k").arg("unix")))
            .await
            .unwrap();
        assert_eq!(server.cli(&["-n", "4", "GET", "k"]), "unix");
    })
    .await
}

/// `redis://user:password@host:port/db` with a percent-encoded password:
/// it authenticates as that ACL user; a wrong password in the URL is an
/// authentication error whose text and `Debug` hold no password.
#[tokio::test]
async fn redis_url_with_credentials() {
    bounded(20, async {
        let server = RedisServer::builder()
            .acl_user("alice", "p@ss:w/rd")
            .start();
        let url = format!(
            "redis://alice:p%40ss%3Aw%2Frd@127.0.0.1:{}/2?client_name=alice-app",
            server.port()
        );
        let (connector, endpoint) = Connector::from_url(&url).unwrap();
        assert!(!format!("{connector:?}").contains("p@ss"), "{connector:?}");
        let conn = within(STEP, "connect", connector.connect(endpoint))
            .await
            .expect("connect with the URL's credentials");
        let info = client_info(&conn).await;
        assert_eq!(field(&info, "user"), Some("alice"), "{info}");
        assert_eq!(field(&info, "db"), Some("2"), "{info}");
        assert_eq!(field(&info, "name"), Some("alice-app"), "{info}");

        let wrong = format!("redis://alice:Wr0ngSecret@127.0.0.1:{}", server.port());
        let (connector, endpoint) = Connector::from_url(&wrong).unwrap();
        let err = within(STEP, "connect", connector.connect(endpoint))
            .await
            .expect_err("wrong password");
        assert!(matches!(err, Error::Auth(_)), "{err:?}");
        let shown = format!("{err} {err:?} {connector:?}");
        assert!(!shown.contains("Wr0ngSecret"), "{shown}");
    })
    .await
}

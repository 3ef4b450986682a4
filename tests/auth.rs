mod support;

// The Connector's handshake against a real redis-server 7.0: AUTH inside
// HELLO, ACL users, the RESP2 fallback when HELLO is refused, SELECT, client
// names, Unix sockets, and how dialling fails (refused, timed out).
//
// Every test is bounded with `tokio::time::timeout`; a hang fails the test.

use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_layers::{cmd, Connection, Connector, Endpoint, Error, Protocol, ServerErrorKind, Value};
use support::{bounded, within, RedisServer};

// ===== helpers =====

const STEP: Duration = Duration::from_secs(5);

async fn try_connect(connector: &Connector, endpoint: Endpoint) -> Result<Connection, Error> {
    within(STEP, "connect", connector.connect(endpoint)).await
}

async fn send(conn: &Connection, c: redis_layers::Cmd) -> Value {
    let what = format!("{c:?}");
    within(STEP, &what, conn.send_cmd(c))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn bulk(s: impl AsRef<[u8]>) -> Value {
    Value::BulkString(Bytes::copy_from_slice(s.as_ref()))
}

fn ok() -> Value {
    Value::SimpleString(Bytes::from_static(b"OK"))
}

/// The `CLIENT LIST` line of the client with this id, read with redis-cli.
fn client_line(server: &RedisServer, auth: &[&str], id: i64) -> String {
    let mut args: Vec<&str> = auth.to_vec();
    let id = id.to_string();
    args.extend(["CLIENT", "LIST", "ID", &id]);
    let line = server.cli(&args);
    assert!(
        line.starts_with(&format!("id={id} ")),
        "CLIENT LIST: {line}"
    );
    line
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Asserts `r` is `Error::Auth` of `kind`, and that it reads as an
/// authentication failure.
fn assert_auth_error(r: Result<Connection, Error>, kind: ServerErrorKind, what: &str) {
    match r {
        Err(Error::Auth(e)) => {
            assert_eq!(e.kind(), &kind, "{what}: {e}");
            assert!(e.is_auth_error(), "{what}");
            let shown = Error::Auth(e).to_string();
            assert!(
                shown.starts_with("authentication failed"),
                "{what}: {shown}"
            );
        }
        Err(other) => panic!("{what}: expected Error::Auth, got {other:?}"),
        Ok(c) => panic!("{what}: connected ({:?})", c.protocol()),
    }
}

/// Acceptance: a wrong password fails the connect with `Error::Auth`
/// (WRONGPASS, displayed as an authentication failure); no password at all
/// against a `requirepass` server is `Error::Auth` (NOAUTH) too.
#[tokio::test]
async fn wrong_password_is_auth_error() {
    bounded(20, async {
        let server = RedisServer::builder().password("s3cret").start();
        let r = try_connect(&Connector::new().password("wrong"), server.endpoint()).await;
        assert_auth_error(r, ServerErrorKind::WrongPass, "wrong password");
        let r = try_connect(&Connector::new(), server.endpoint()).await;
        assert_auth_error(r, ServerErrorKind::NoAuth, "no password");
    })
    .await
}

/// Acceptance: the right password works (AUTH inside HELLO 3, RESP3 kept).
#[tokio::test]
async fn right_password_works() {
    bounded(20, async {
        let server = RedisServer::builder().password("s3cret").start();
        let conn = try_connect(&Connector::new().password("s3cret"), server.endpoint())
            .await
            .expect("connect with the right password");
        assert_eq!(conn.protocol(), Protocol::Resp3);
        let info = conn.info().expect("handshake info");
        assert_eq!(info.protocol, Protocol::Resp3);
        assert_eq!(info.server.as_deref(), Some("redis"));
        assert_eq!(info.version.as_deref(), Some("7.0.15"));
        assert_eq!(info.mode.as_deref(), Some("standalone"));
        assert_eq!(info.role.as_deref(), Some("master"));
        assert_eq!(send(&conn, cmd("SET").arg("k").arg("v")).await, ok());
        assert_eq!(send(&conn, cmd("GET").arg("k")).await, bulk("v"));
        assert_eq!(send(&conn, cmd("ACL").arg("WHOAMI")).await, bulk("default"));
        // The value is really in the server (read through redis-cli).
        assert_eq!(
            server.cli(&["-a", "s3cret", "--no-auth-warning", "GET", "k"]),
            "v"
        );
    })
    .await
}

/// Acceptance: an ACL user with its password works; an unknown user, or the
/// right user with a wrong password, fails as `Error::Auth`; a username
/// without a password is a `Error::Config`, refused before dialling.
#[tokio::test]
async fn acl_user_and_wrong_user() {
    bounded(20, async {
        let server = RedisServer::builder()
            .acl_user("alice", "wonderland")
            .start();
        let conn = try_connect(
            &Connector::new().username("alice").password("wonderland"),
            server.endpoint(),
        )
        .await
        .expect("connect as alice");
        assert_eq!(send(&conn, cmd("ACL").arg("WHOAMI")).await, bulk("alice"));
        assert_eq!(send(&conn, cmd("SET").arg("k").arg("v")).await, ok());
        assert_eq!(conn.protocol(), Protocol::Resp3);

        let r = try_connect(
            &Connector::new().username("mallory").password("wonderland"),
            server.endpoint(),
        )
        .await;
        assert_auth_error(r, ServerErrorKind::WrongPass, "unknown user");
        let r = try_connect(
            &Connector::new().username("alice").password("looking-glass"),
            server.endpoint(),
        )
        .await;
        assert_auth_error(r, ServerErrorKind::WrongPass, "alice, wrong password");
        let r = try_connect(&Connector::new().username("alice"), server.endpoint()).await;
        assert!(matches!(r, Err(Error::Config(_))), "{r:?}");
    })
    .await
}

/// Acceptance: HELLO refused (spec, rule "`HELLO 3` against a server without
/// RESP3 answers `-NOPROTO`"; here a real 7.0 with HELLO renamed away answers
/// `-ERR unknown command`): the connector falls back to RESP2,
/// `conn.protocol()` is `Resp2`, commands work, maps come back as flat
/// arrays, doubles as bulk strings, and pub/sub is refused on the shared
/// connection.
#[tokio::test]
async fn hello_refused_falls_back_to_resp2() {
    bounded(20, async {
        let server = RedisServer::builder()
            .arg("--rename-command")
            .arg("HELLO")
            .arg("")
            .start();
        let conn = try_connect(&Connector::new().client_name("fallback"), server.endpoint())
            .await
            .expect("connect with HELLO refused");
        assert_eq!(conn.protocol(), Protocol::Resp2);
        assert_eq!(conn.info().unwrap().protocol, Protocol::Resp2);
        assert_eq!(
            send(&conn, cmd("CLIENT").arg("GETNAME")).await,
            bulk("fallback")
        );

        assert_eq!(send(&conn, cmd("SET").arg("k").arg("v")).await, ok());
        assert_eq!(send(&conn, cmd("GET").arg("k")).await, bulk("v"));
        assert_eq!(send(&conn, cmd("GET").arg("nope")).await, Value::Null);
        send(&conn, cmd("HSET").args(["h", "f1", "v1"])).await;
        assert_eq!(
            send(&conn, cmd("HGETALL").arg("h")).await,
            Value::Array(vec![bulk("f1"), bulk("v1")]),
            "RESP2 maps are flat arrays"
        );
        send(&conn, cmd("ZADD").args(["z", "1.5", "m"])).await;
        assert_eq!(
            send(&conn, cmd("ZSCORE").arg("z").arg("m")).await,
            bulk("1.5")
        );
        let e = within(STEP, "SUBSCRIBE", conn.send_cmd(cmd("SUBSCRIBE").arg("ch")))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e:?}");
        assert_eq!(
            send(&conn, cmd("PING")).await.as_bytes(),
            Some(&b"PONG"[..])
        );

        // The server agrees: this client speaks RESP2.
        let id = send(&conn, cmd("CLIENT").arg("ID")).await.as_int().unwrap();
        let line = client_line(&server, &[], id);
        assert_eq!(field(&line, "resp"), Some("2"), "{line}");
        assert_eq!(field(&line, "name"), Some("fallback"), "{line}");
    })
    .await
}

/// Spec, rule "`HELLO 3` against a server without RESP3 answers
/// `-NOPROTO`": redis-server 7 always speaks RESP3, so a scripted server
/// plays a RESP2-only one (the one reply 7.0 cannot produce). The connector
/// falls back to RESP2, checks the server with PING, and commands work.
#[tokio::test]
async fn noproto_falls_back_to_resp2() {
    use bytes::BytesMut;
    use redis_layers::resp::Decoder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    bounded(20, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint::tcp("127.0.0.1", listener.local_addr().unwrap().port());
        let script = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (mut buf, mut dec, mut seen) = (BytesMut::new(), Decoder::new(), Vec::new());
            while seen.len() < 3 {
                let Some(frame) = dec.decode(&mut buf).unwrap() else {
                    if sock.read_buf(&mut buf).await.unwrap() == 0 {
                        break;
                    }
                    continue;
                };
                let Value::Array(args) = frame else {
                    panic!("not a command: {frame:?}")
                };
                let name = String::from_utf8_lossy(args[0].as_bytes().unwrap()).to_uppercase();
                let reply: &[u8] = match name.as_str() {
                    "HELLO" => b"-NOPROTO sorry, this protocol version is not supported\r\n",
                    "PING" => b"+PONG\r\n",
                    "GET" => b"$5\r\nvalue\r\n",
                    _ => b"-ERR unexpected\r\n",
                };
                sock.write_all(reply).await.unwrap();
                seen.push(name);
            }
            seen
        });
        let conn = try_connect(&Connector::new(), endpoint)
            .await
            .expect("connect to a RESP2-only server");
        assert_eq!(conn.protocol(), Protocol::Resp2);
        assert_eq!(send(&conn, cmd("GET").arg("k")).await, bulk("value"));
        let seen = within(STEP, "script", script).await.unwrap();
        assert_eq!(seen, ["HELLO", "PING", "GET"]);
    })
    .await
}

/// Acceptance: the RESP2 fallback still authenticates, names and selects:
/// with HELLO refused, password + client name + database go out as AUTH,
/// CLIENT SETNAME and SELECT; a wrong password there is `Error::Auth` too
/// (spec: "a failed AUTH inside HELLO leaves the connection on RESP2").
#[tokio::test]
async fn resp2_fallback_authenticates_names_and_selects() {
    bounded(20, async {
        let server = RedisServer::builder()
            .password("s3cret")
            .arg("--rename-command")
            .arg("HELLO")
            .arg("")
            .start();
        let connector = Connector::new()
            .password("s3cret")
            .client_name("legacy")
            .database(3);
        let conn = try_connect(&connector, server.endpoint())
            .await
            .expect("connect");
        assert_eq!(conn.protocol(), Protocol::Resp2);
        assert_eq!(
            send(&conn, cmd("CLIENT").arg("GETNAME")).await,
            bulk("legacy")
        );
        assert_eq!(send(&conn, cmd("SET").arg("k").arg("in-3")).await, ok());
        let auth = ["-a", "s3cret", "--no-auth-warning"];
        let get_in = |db: &str| {
            let mut a = auth.to_vec();
            a.extend(["-n", db, "GET", "k"]);
            server.cli(&a)
        };
        assert_eq!(get_in("3"), "in-3");
        assert_eq!(get_in("0"), "");

        let r = try_connect(&Connector::new().password("wrong"), server.endpoint()).await;
        assert_auth_error(r, ServerErrorKind::WrongPass, "RESP2 AUTH, wrong password");
        // No password: the RESP2 handshake ends with a PING, so the connect
        // itself fails as authentication, as it does under RESP3.
        let r = try_connect(&Connector::new(), server.endpoint()).await;
        assert_auth_error(r, ServerErrorKind::NoAuth, "RESP2, no password");
    })
    .await
}

/// Acceptance: `Connector::database` puts keys in that database (checked with
/// `redis-cli -n`), on RESP3 as well.
#[tokio::test]
async fn select_database() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = try_connect(&Connector::new().database(5), server.endpoint())
            .await
            .expect("connect");
        assert_eq!(conn.protocol(), Protocol::Resp3);
        assert_eq!(send(&conn, cmd("SET").arg("where").arg("five")).await, ok());
        assert_eq!(server.cli(&["-n", "5", "GET", "where"]), "five");
        assert_eq!(server.cli(&["-n", "0", "GET", "where"]), "");
        assert_eq!(server.cli(&["-n", "0", "DBSIZE"]), "0");
        let id = send(&conn, cmd("CLIENT").arg("ID")).await.as_int().unwrap();
        assert_eq!(field(&client_line(&server, &[], id), "db"), Some("5"));
        // A database the server does not have is refused at connect.
        let r = try_connect(&Connector::new().database(99), server.endpoint()).await;
        assert!(
            matches!(&r, Err(Error::Server(e)) if e.detail().contains("DB index is out of range")),
            "{r:?}"
        );
    })
    .await
}

/// Acceptance: a client name given to the connector (SETNAME inside HELLO)
/// is visible in CLIENT GETNAME and in CLIENT LIST, on our connection's id.
#[tokio::test]
async fn client_name_is_visible() {
    bounded(20, async {
        let server = RedisServer::start();
        let conn = try_connect(&Connector::new().client_name("billing"), server.endpoint())
            .await
            .expect("connect");
        assert_eq!(
            send(&conn, cmd("CLIENT").arg("GETNAME")).await,
            bulk("billing")
        );
        let id = send(&conn, cmd("CLIENT").arg("ID")).await.as_int().unwrap();
        assert_eq!(conn.info().unwrap().client_id, Some(id));
        let line = client_line(&server, &[], id);
        assert_eq!(field(&line, "name"), Some("billing"), "{line}");
        assert_eq!(field(&line, "resp"), Some("3"), "{line}");
        // Names with spaces are refused by the server: a typed error at connect.
        let r = try_connect(
            &Connector::new().client_name("two words"),
            server.endpoint(),
        )
        .await;
        assert!(matches!(r, Err(Error::Server(_))), "{r:?}");
    })
    .await
}

/// Acceptance: a Unix socket endpoint works (the server sees a Unix client).
#[tokio::test]
async fn unix_socket_endpoint() {
    bounded(20, async {
        let server = RedisServer::builder().unix_socket().start();
        let endpoint = server.unix_endpoint().expect("unix endpoint");
        let conn = try_connect(&Connector::new(), endpoint.clone())
            .await
            .expect("connect over the Unix socket");
        assert_eq!(conn.endpoint(), &endpoint);
        assert_eq!(conn.protocol(), Protocol::Resp3);
        assert_eq!(send(&conn, cmd("SET").arg("k").arg("via-unix")).await, ok());
        assert_eq!(server.cli(&["GET", "k"]), "via-unix");
        let info = send(&conn, cmd("CLIENT").arg("INFO")).await;
        let info = String::from_utf8_lossy(info.as_bytes().expect("CLIENT INFO text")).into_owned();
        assert!(
            field(&info, "flags").is_some_and(|f| f.contains('U')),
            "not a Unix socket client: {info}"
        );
        let Endpoint::Unix(path) = &endpoint else {
            unreachable!()
        };
        assert!(
            field(&info, "laddr").is_some_and(|a| a.starts_with(&*path.to_string_lossy())),
            "{info}"
        );
        // A socket path nobody listens on: an I/O error.
        let missing = Endpoint::unix(path.with_file_name("missing.sock"));
        let r = try_connect(&Connector::new(), missing).await;
        assert!(matches!(r, Err(Error::Io(_))), "{r:?}");
    })
    .await
}

/// Acceptance: connecting to a closed port gives `Error::Io` (connection
/// refused) quickly.
#[tokio::test]
async fn closed_port_is_io_error_quickly() {
    bounded(20, async {
        let port = support::free_port(); // nobody listens on it now
        let started = Instant::now();
        let r = try_connect(&Connector::new(), Endpoint::tcp("127.0.0.1", port)).await;
        let took = started.elapsed();
        match r {
            Err(Error::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
            }
            other => panic!("expected Error::Io, got {other:?}"),
        }
        assert!(took < Duration::from_millis(500), "took {took:?}");
    })
    .await
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so
/// a connect to it hangs in the dial (what a non-routable address does on a
/// normal network; in this sandbox 10.255.255.1 is answered by the network,
/// so it cannot be used). The returned streams keep the queue full.
async fn full_backlog_listener() -> (
    tokio::net::TcpListener,
    Endpoint,
    Vec<tokio::net::TcpStream>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(1).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        let dial = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(200), dial).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filling the backlog: {e}"),
            // This one hung: the queue is full.
            Err(_) => return (listener, Endpoint::tcp("127.0.0.1", addr.port()), fillers),
        }
    }
    panic!("the accept queue never filled");
}

/// Acceptance: connect timeout. With `connect_timeout(200 ms)`, a dial that
/// never completes fails after about 200 ms (bounded: well under 1 s), and
/// so does a server that accepts but never answers the handshake. The error
/// is `Error::Io` of kind `TimedOut`, as `Connector::connect` documents: a
/// connection failure that `Error::is_retryable_io` accepts. (`Error::Timeout`
/// is for a command's deadline.)
#[tokio::test]
async fn connect_timeout_is_bounded() {
    bounded(20, async {
        let connector = Connector::new().connect_timeout(Duration::from_millis(200));
        let is_timeout = |e: &Error| match e {
            Error::Io(io) => io.kind() == std::io::ErrorKind::TimedOut && e.is_retryable_io(),
            _ => false,
        };

        let (_listener, endpoint, _fillers) = full_backlog_listener().await;
        let started = Instant::now();
        let r = within(Duration::from_secs(2), "dial", connector.connect(endpoint)).await;
        let took = started.elapsed();
        let e = r.expect_err("the dial cannot complete");
        assert!(is_timeout(&e), "dial: {e:?}");
        assert!(
            took >= Duration::from_millis(190),
            "dial gave up early: {took:?}"
        );
        assert!(took < Duration::from_secs(1), "dial took {took:?}");

        // Accepts (the kernel completes the TCP handshake) but never answers HELLO.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint::tcp("127.0.0.1", silent.local_addr().unwrap().port());
        let started = Instant::now();
        let r = within(
            Duration::from_secs(2),
            "handshake",
            connector.connect(endpoint),
        )
        .await;
        let took = started.elapsed();
        let e = r.expect_err("the handshake cannot complete");
        assert!(is_timeout(&e), "handshake: {e:?}");
        assert!(
            took >= Duration::from_millis(190),
            "gave up early: {took:?}"
        );
        assert!(took < Duration::from_secs(1), "handshake took {took:?}");
    })
    .await
}

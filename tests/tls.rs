//! TLS against real `redis-server`s with a TLS port, with certificates the
//! test makes (tests/support/tls.rs). Every test is bounded in time.
#![cfg(feature = "tls")]

mod support;

use std::time::{Duration, Instant};

use redis_layers::maint::MaintenanceConfig;
use redis_layers::transport::rustls::{self, CertificateError};
use redis_layers::transport::MaintSupport;
use redis_layers::{cmd, Connection, Connector, Endpoint, Error, Pipeline, Protocol, TlsConfig};
use support::tls::{Ca, TlsServer};
use support::{bounded, within};

const STEP: Duration = Duration::from_secs(5);

fn trusting(ca: &Ca) -> TlsConfig {
    TlsConfig::new()
        .root_certs_pem(ca.pem().as_bytes())
        .unwrap()
}

async fn connect(connector: &Connector, endpoint: Endpoint) -> Result<Connection, Error> {
    within(STEP, "connect", connector.connect(endpoint)).await
}

async fn get(conn: &Connection, key: &str) -> Option<String> {
    let v = within(STEP, "GET", conn.send_cmd(cmd("GET").arg(key)))
        .await
        .unwrap();
    v.as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The certificate error behind a refused connect, asserting it is one.
fn cert_error(r: Result<Connection, Error>) -> CertificateError {
    let err = r.expect_err("the handshake must be refused");
    let tls = err
        .tls_error()
        .unwrap_or_else(|| panic!("not a TLS error: {err:?}"));
    assert!(err.to_string().contains("TLS handshake with"), "{err}");
    assert!(
        !err.is_retryable_io(),
        "a bad certificate is not retried: {err:?}"
    );
    match tls.rustls_error() {
        Some(rustls::Error::InvalidCertificate(e)) => e.clone(),
        other => panic!("not a certificate error: {other:?} ({err})"),
    }
}

/// Acceptance: `rediss://` with the test's CA as the root works: the URL's
/// database and client name, SET/GET, a pipeline, concurrent callers and
/// the RESP3 handshake with the maintenance opt-in, all over TLS.
#[tokio::test]
async fn rediss_with_a_custom_root_works() {
    bounded(30, async {
        let ca = Ca::new("test CA");
        let tls = TlsServer::start(&ca, &ca.server_cert(&["localhost", "127.0.0.1"]), false);
        let url = format!("rediss://127.0.0.1:{}/3?client_name=over-tls", tls.tls_port);
        let (connector, endpoint) = Connector::from_url(&url).unwrap();
        let connector = connector.tls(trusting(&ca)).unwrap();
        let conn = connect(&connector, endpoint).await.expect("TLS connect");

        let info = conn.info().expect("handshake info").clone();
        assert_eq!(info.protocol, Protocol::Resp3);
        // Mode Auto on a 7.0 server: CLIENT MAINT_NOTIFICATIONS was sent
        // over TLS and its refusal read back.
        assert!(
            matches!(info.maintenance, MaintSupport::Unsupported(_)),
            "{info:?}"
        );

        within(STEP, "SET", conn.send_cmd(cmd("SET").arg("k").arg("v1")))
            .await
            .unwrap();
        assert_eq!(get(&conn, "k").await.as_deref(), Some("v1"));
        // The server saw it in database 3, from a client named over-tls.
        assert_eq!(tls.server.cli(&["-n", "3", "GET", "k"]), "v1");
        let clients = tls.server.cli(&["CLIENT", "LIST"]);
        assert!(
            clients
                .lines()
                .any(|l| l.contains("name=over-tls") && l.contains("db=3")),
            "{clients}"
        );

        let mut p = Pipeline::new();
        for i in 0..100 {
            p.push(cmd("RPUSH").arg("list").arg(i));
        }
        p.push(cmd("LLEN").arg("list"));
        let replies = within(STEP, "pipeline", conn.send(p))
            .await
            .unwrap()
            .into_pipeline()
            .unwrap();
        assert_eq!(replies.len(), 101);
        assert_eq!(replies[100].as_ref().unwrap().as_int(), Some(100));

        // 32 callers share the one TLS connection; every INCR lands once.
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    conn.send_cmd(cmd("INCR").arg("n")).await.unwrap();
                }
            }));
        }
        for t in tasks {
            within(STEP, "callers", t).await.unwrap();
        }
        assert_eq!(get(&conn, "n").await.as_deref(), Some("1600"));

        // Long values (written from their own buffers, encrypted from
        // there) between short commands, from 8 callers: each reads back
        // byte for byte.
        let mut tasks = Vec::new();
        for t in 0..8usize {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..5usize {
                    let len = 16 * 1024 + t * 9_973 + round * 31_337;
                    let v: bytes::Bytes = (0..len)
                        .map(|i| ((i * 7 + t + round) % 253) as u8)
                        .collect::<Vec<u8>>()
                        .into();
                    let key = format!("long:{t}");
                    let (set, incr) = futures::future::join(
                        conn.send_cmd(cmd("SET").arg(&key).arg(v.clone())),
                        conn.send_cmd(cmd("INCR").arg("m")),
                    )
                    .await;
                    set.unwrap();
                    incr.unwrap();
                    let got = conn.send_cmd(cmd("GET").arg(&key)).await.unwrap();
                    assert!(got == redis_layers::Value::BulkString(v), "{t}/{round}");
                }
            }));
        }
        for t in tasks {
            within(STEP, "long values", t).await.unwrap();
        }
        assert_eq!(get(&conn, "m").await.as_deref(), Some("40"));

        // Push frames over TLS: a subscription on the same connection.
        let mut pushes = conn.take_pushes().unwrap();
        within(STEP, "SUBSCRIBE", conn.send_cmd(cmd("SUBSCRIBE").arg("ch")))
            .await
            .unwrap();
        assert_eq!(tls.server.cli(&["-n", "3", "PUBLISH", "ch", "hello"]), "1");
        let push = within(STEP, "push", pushes.recv()).await.expect("a push");
        assert!(format!("{push:?}").contains("hello"), "{push:?}");
    })
    .await
}

/// Acceptance: a server whose certificate comes from another CA is refused,
/// with the typed error and quickly; Mozilla's roots (the `rediss://`
/// default) refuse the test's CA too.
#[tokio::test]
async fn wrong_ca_is_refused() {
    bounded(30, async {
        let ca = Ca::new("test CA");
        let tls = TlsServer::start(&ca, &ca.server_cert(&["localhost", "127.0.0.1"]), false);
        let endpoint = tls.tls_endpoint("127.0.0.1");

        let other = Connector::new()
            .tls(trusting(&Ca::new("other CA")))
            .unwrap();
        let started = Instant::now();
        let e = cert_error(connect(&other, endpoint.clone()).await);
        assert_eq!(e, CertificateError::UnknownIssuer);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        let (mozilla, endpoint) =
            Connector::from_url(&format!("rediss://127.0.0.1:{}", tls.tls_port)).unwrap();
        let e = cert_error(connect(&mozilla, endpoint.clone()).await);
        assert_eq!(e, CertificateError::UnknownIssuer);

        // The right root on the same endpoint works: the refusals were the CA's.
        let right = Connector::new().tls(trusting(&ca)).unwrap();
        connect(&right, endpoint).await.expect("the right CA");
    })
    .await
}

/// Acceptance: the server must hold a certificate for the name dialled. A
/// certificate for `localhost` only: dialling `127.0.0.1` is refused,
/// dialling `localhost` works (the name comes from the endpoint, as for a
/// handoff target), and a server name override makes the IP work.
#[tokio::test]
async fn certificate_for_another_name_is_refused() {
    bounded(30, async {
        let ca = Ca::new("test CA");
        let tls = TlsServer::start(&ca, &ca.server_cert(&["localhost"]), false);
        let connector = Connector::new().tls(trusting(&ca)).unwrap();

        let r = connect(&connector, tls.tls_endpoint("127.0.0.1")).await;
        let e = cert_error(r);
        assert!(
            matches!(
                e,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ),
            "{e:?}"
        );

        let conn = connect(&connector, tls.tls_endpoint("localhost"))
            .await
            .expect("dialled by the certificate's name");
        assert!(conn.send_cmd(cmd("PING")).await.is_ok());

        let named = Connector::new()
            .tls(trusting(&ca).server_name("localhost"))
            .unwrap();
        connect(&named, tls.tls_endpoint("127.0.0.1"))
            .await
            .expect("server name override");
        let wrong = Connector::new()
            .tls(trusting(&ca).server_name("other.example"))
            .unwrap();
        cert_error(connect(&wrong, tls.tls_endpoint("localhost")).await);
    })
    .await
}

/// Plain text to the TLS port fails with a connection error at once (the
/// server drops it). TLS to the plain port gets no answer at all (Redis
/// waits for the end of an inline command that never comes): the connect
/// timeout ends it with a timed-out I/O error, not a hang.
#[tokio::test]
async fn plain_and_tls_mixed_up_fail_cleanly() {
    bounded(30, async {
        let ca = Ca::new("test CA");
        let tls = TlsServer::start(&ca, &ca.server_cert(&["127.0.0.1"]), false);

        let plain = Connector::new().connect_timeout(Duration::from_secs(3));
        let started = Instant::now();
        let r = connect(&plain, tls.tls_endpoint("127.0.0.1")).await;
        let err = r.expect_err("plain text to a TLS port");
        assert!(err.is_connection_error(), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{err:?} after {:?}",
            started.elapsed()
        );

        let secure = Connector::new()
            .tls(trusting(&ca))
            .unwrap()
            .connect_timeout(Duration::from_millis(500));
        let started = Instant::now();
        let r = connect(&secure, tls.server.endpoint()).await;
        match r {
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {}
            other => panic!("TLS to a plain port: {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    })
    .await
}

/// Mutual TLS (`tls-auth-clients yes`): without a client certificate the
/// connection fails; with one signed by the server's CA it works. A
/// mismatched certificate and key is refused at configuration time.
#[tokio::test]
async fn mutual_tls() {
    bounded(30, async {
        let ca = Ca::new("test CA");
        let tls = TlsServer::start(&ca, &ca.server_cert(&["127.0.0.1"]), true);
        let endpoint = tls.tls_endpoint("127.0.0.1");

        let anonymous = Connector::new().tls(trusting(&ca)).unwrap();
        let err = connect(&anonymous, endpoint.clone())
            .await
            .expect_err("no client certificate");
        assert!(err.is_connection_error(), "{err:?}");

        let client = ca.client_cert("client.test");
        let config = trusting(&ca)
            .client_auth_pem(client.cert_pem.as_bytes(), client.key_pem.as_bytes())
            .unwrap();
        // Neither the config's nor the connector's Debug shows the key.
        let key_line = client.key_pem.lines().nth(1).unwrap();
        let connector = Connector::new().tls(config.clone()).unwrap();
        for shown in [format!("{config:?}"), format!("{connector:?}")] {
            assert!(!shown.contains(key_line), "{shown}");
            assert!(shown.contains("private key ***"), "{shown}");
        }
        let conn = connect(&connector, endpoint)
            .await
            .expect("with a client certificate");
        assert!(conn.send_cmd(cmd("PING")).await.is_ok());

        let other = ca.client_cert("other.test");
        let mismatched = trusting(&ca)
            .client_auth_pem(client.cert_pem.as_bytes(), other.key_pem.as_bytes())
            .unwrap();
        let r = Connector::new().tls(mismatched);
        assert!(matches!(r, Err(Error::Config(_))), "{r:?}");
    })
    .await
}

/// Bad TLS settings are configuration errors, found before any dial.
#[test]
fn bad_tls_settings_are_config_errors() {
    let bad = [
        TlsConfig::new().root_certs_pem(b"not a certificate").err(),
        TlsConfig::new().root_cert_file("/nonexistent/ca.pem").err(),
        TlsConfig::new()
            .client_auth_pem(Ca::new("x").pem().as_bytes(), b"no key here")
            .err(),
        Connector::new()
            .tls(TlsConfig::new().server_name("not a name!"))
            .err(),
    ];
    for e in bad {
        assert!(matches!(e, Some(Error::Config(_))), "{e:?}");
    }
    // Maintenance settings combine with TLS as with plain TCP.
    Connector::new()
        .tls(TlsConfig::new())
        .unwrap()
        .maintenance(MaintenanceConfig::default())
        .unwrap();
}

/// Acceptance: a MOVING is followed over TLS. The simulator (plain TCP) sits
/// behind TLS terminators whose certificate names only `localhost`; the
/// client dials `localhost`, the policy maps the announced target to the
/// second terminator at `localhost`, and the handoff dials it through the
/// same connector: TLS, verified against the target's host name (an IP
/// would be refused: the certificate has no IP SAN). Commands succeed
/// throughout and end up on the new endpoint.
#[cfg(feature = "sim")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_is_followed_over_tls_to_the_target_host_name() {
    use redis_layers::handoff::{DefaultPolicy, HandoffLayer, HandoffPolicyExt};
    use redis_layers::maint::Mode;
    use redis_layers::sim::MovingPlan;
    use support::sim::SimStandalone;
    use support::tls::Terminator;
    use tower::{Layer, Service, ServiceExt};

    bounded(40, async {
        let env = SimStandalone::start().await;
        let ca = Ca::new("test CA");
        let cert = ca.server_cert(&["localhost"]);
        let first = Terminator::start(&cert, env.sim.endpoint()).await;
        let announced = env.sim.open_endpoint().await.unwrap();
        let second = Terminator::start(&cert, announced).await;
        let target = Endpoint::tcp("localhost", second.port);

        let config = MaintenanceConfig::default()
            .mode(Mode::Enabled)
            .relaxed_timeout(Duration::from_secs(2));
        let connector = Connector::new()
            .maintenance(config.clone())
            .unwrap()
            .tls(trusting(&ca))
            .unwrap();
        let mapped = target.clone();
        let policy = DefaultPolicy.map_target(move |_, _| mapped.clone());
        let mut svc = HandoffLayer::new(Endpoint::tcp("localhost", first.port))
            .maintenance(&config)
            .unwrap()
            .policy(policy)
            .layer(connector);

        let mut send = async |c: redis_layers::Cmd| {
            within(STEP, "command", svc.ready().await.unwrap().call(c.into()))
                .await
                .and_then(|r| r.into_value())
        };
        send(cmd("SET").arg("k").arg("before")).await.unwrap();
        within(
            STEP,
            "opted in",
            env.sim.wait_for(|c| c.iter().any(|c| c.maint.is_some())),
        )
        .await;

        let mut m = MovingPlan::new(Duration::from_secs(2));
        m.to = Some(announced);
        let moved = within(STEP, "MOVING", env.sim.moving(m)).await.unwrap();
        assert_eq!(moved.closed, 0, "the connection moved before the deadline");
        assert_eq!(
            send(cmd("GET").arg("k")).await.unwrap().as_bytes(),
            Some(&b"before"[..])
        );
        send(cmd("SET").arg("k").arg("after")).await.unwrap();
        assert_eq!(env.server.cli(&["GET", "k"]), "after");
        assert_eq!(svc.connected_to(), vec![target]);
        assert_eq!(
            env.sim
                .clients()
                .iter()
                .filter(|c| c.endpoint == announced)
                .count(),
            1
        );
    })
    .await
}

/// The Client over `rediss://`: the default stack (Retry, RelaxTimeout,
/// Handoff) and pub/sub dial through the TLS connector; a wrong CA fails
/// `build`-time detection with the TLS error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_over_rediss() {
    bounded(30, async {
        let ca = Ca::new("test CA");
        let tls = TlsServer::start(&ca, &ca.server_cert(&["localhost", "127.0.0.1"]), false);
        let url = format!("rediss://127.0.0.1:{}/2", tls.tls_port);
        let builder = redis_layers::Client::builder(&url).unwrap();
        let (connector, _) = Connector::from_url(&url).unwrap();
        let client = builder
            .connector(connector.tls(trusting(&ca)).unwrap())
            .build()
            .await
            .unwrap();
        client.set("client-k", "over tls").await.unwrap();
        assert_eq!(tls.server.cli(&["-n", "2", "GET", "client-k"]), "over tls");
        let mut sub = client.subscribe(["tls-news"]).await.unwrap();
        client.publish("tls-news", "hi").await.unwrap();
        match sub.recv().await {
            Some(redis_layers::pubsub::Event::Message(m)) => assert_eq!(&m.payload[..], b"hi"),
            other => panic!("{other:?}"),
        }

        let other = Ca::new("another CA");
        let (connector, _) = Connector::from_url(&url).unwrap();
        let err = redis_layers::Client::builder(&url)
            .unwrap()
            .connector(connector.tls(trusting(&other)).unwrap())
            .build()
            .await
            .unwrap_err();
        assert!(err.tls_error().is_some(), "{err:?}");
    })
    .await
}

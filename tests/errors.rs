//! Errors say what happened once, name where, and point to the fix; tower
//! middleware's errors map back to this crate's with `Error::from`.

mod support;

use std::error::Error as _;
use std::time::Duration;

use redis_layers::{Connector, Endpoint, Error};
use support::{bounded, free_port, RedisServer};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

/// Every message of a chain, as an error reporter prints them.
fn chain(e: &Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        out.push(s.to_string());
        next = s.source();
    }
    out
}

#[tokio::test]
async fn a_refused_connection_names_the_endpoint_once() {
    bounded(10, async {
        let port = free_port();
        let e = Connector::new()
            .connect(Endpoint::tcp("127.0.0.1", port))
            .await
            .unwrap_err();
        assert!(e.is_retryable_io(), "{e:?}");
        let text = chain(&e).join(" / ");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        // Said once: no source repeats what Display said.
        assert_eq!(chain(&e).len(), 1, "{text}");
        assert_eq!(text.matches("refused").count(), 1, "{text}");
    })
    .await;
}

#[tokio::test]
async fn auth_errors_say_what_to_do() {
    bounded(10, async {
        let server = RedisServer::builder().password("pw").start();
        let e = Connector::new()
            .connect(server.endpoint())
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Auth(_)), "{e:?}");
        assert!(
            text.contains("NOAUTH") && text.contains("Connector::password"),
            "{text}"
        );
        let e = Connector::new()
            .password("wrong")
            .connect(server.endpoint())
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("WRONGPASS") && text.contains("username and password"),
            "{text}"
        );
        assert_eq!(chain(&e).len(), 1);
    })
    .await;
}

#[test]
fn url_errors_are_precise_and_never_echo_the_password() {
    let e = Connector::from_url("redis://127.0.0.1:notaport")
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"notaport\" is not a number"), "{e}");
    assert!(!e.contains("credentials"), "{e}");
    let e = Connector::from_url("redis://user:s3cret@host:99999")
        .unwrap_err()
        .to_string();
    assert!(e.contains("99999") && !e.contains("s3cret"), "{e}");
    let e = Connector::from_url("redis://::1:6379")
        .unwrap_err()
        .to_string();
    assert!(e.contains("brackets"), "{e}");
}

#[tokio::test]
async fn tower_middleware_errors_map_back() {
    // Timeout: tower's Elapsed.
    let slow = tower::service_fn(|_: ()| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<(), Error>(())
    });
    let svc = ServiceBuilder::new()
        .map_err(Error::from)
        .timeout(Duration::from_millis(10))
        .service(slow);
    assert!(matches!(svc.oneshot(()).await, Err(Error::Timeout)));

    // LoadShed: Overloaded, when the inner service is not ready.
    let never_ready = tower::service_fn(|_: ()| async { Ok::<(), Error>(()) });
    let limited = ServiceBuilder::new()
        .map_err(Error::from)
        .load_shed()
        .concurrency_limit(1)
        .service(never_ready);
    let mut a = limited.clone();
    let mut b = limited;
    // `a` holds the only permit; `b` is shed.
    a.ready().await.unwrap();
    assert!(matches!(
        b.ready().await.unwrap().call(()).await,
        Err(Error::Overloaded)
    ));

    // Our own error, boxed by middleware, comes back as it was.
    let e: BoxError = Box::new(Error::Usage("x".into()));
    assert!(matches!(Error::from(e), Error::Usage(m) if m == "x"));
    // Anything else is kept, displayed as itself.
    let e: BoxError = "something else".into();
    assert_eq!(Error::from(e).to_string(), "something else");

    // Buffer: the inner service's error comes back as ours.
    let failing = tower::service_fn(|_: ()| async { Err::<(), Error>(Error::Closed) });
    let svc = ServiceBuilder::new()
        .map_err(Error::from)
        .buffer(4)
        .service(failing);
    assert!(matches!(svc.oneshot(()).await, Err(Error::Closed)));
}

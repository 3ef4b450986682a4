//! Issue 15, "a deadline means a deadline": a `Client` call ends, with its
//! reply or an error, within its command timeout plus a small bound,
//! whatever happens underneath (a server that never answers, one that
//! never answers a new connection's `HELLO`, one that hangs up on every
//! connection), with retries on or off. A relaxation (maintenance) still
//! extends it, and a blocking command keeps its own timeout.
//!
//! Each server kind gets 200 calls (20 concurrent tasks of 10 calls each);
//! the test prints p50/p99/max of the calls' times and fails when the
//! slowest took 600 ms or more with a 500 ms command timeout.

mod support;

use std::time::{Duration, Instant};

use redis_layers::client::{ClientBuilder, ServerMode};
use redis_layers::maint::{MaintenanceConfig, Mode};
use redis_layers::retry::RetryLayer;
use redis_layers::{cmd, Client, Error};
use support::hostile::{self, HostileServer, Received};
use support::{bounded, RedisServer};

const TIMEOUT: Duration = Duration::from_millis(500);
/// The command timeout plus the small bound the guarantee allows.
const LIMIT: Duration = Duration::from_millis(600);
const TASKS: usize = 20;
const CALLS: usize = 10;

/// A standalone client of `server` with a 500 ms command timeout.
async fn client(server: &HostileServer, retry: RetryLayer) -> Client {
    ClientBuilder::new(server.endpoint())
        .mode(ServerMode::Standalone)
        .command_timeout(Some(TIMEOUT))
        .retry(retry)
        .build()
        .await
        .expect("a standalone client builds without dialling")
}

/// The two Retry settings: the default, and retries off.
fn retries(on: bool) -> RetryLayer {
    if on {
        RetryLayer::new()
    } else {
        RetryLayer::new().max_retries(0)
    }
}

/// 200 `GET`s, 20 at a time; each must fail. Prints the percentiles and
/// checks the slowest.
async fn every_call_ends_in_time(what: &str, server: HostileServer, retry: bool) {
    let client = client(&server, retries(retry)).await;
    calls_end_in_time(what, &client, retry).await;
}

/// 200 `GET`s through `client`, 20 at a time; each must fail within the
/// limit. Prints the percentiles and the errors.
async fn calls_end_in_time(what: &str, client: &Client, retry: bool) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(CALLS);
                for _ in 0..CALLS {
                    let t0 = Instant::now();
                    let r = client.get::<Option<String>>("k").await;
                    out.push((t0.elapsed(), r.map(|_| ())));
                }
                out
            })
        })
        .collect();
    let mut times = Vec::with_capacity(TASKS * CALLS);
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        for (took, r) in t.await.expect("task") {
            times.push(took);
            let e = r.expect_err("the server never serves: every call fails");
            let kind = match e {
                Error::Timeout => "Timeout".to_string(),
                Error::Io(e) => format!("Io({:?})", e.kind()),
                e => format!("{e}"),
            };
            *errors.entry(kind).or_default() += 1;
        }
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let max = *times.last().unwrap();
    println!(
        "{what} (retry {}): {} calls, p50 {:?}, p99 {:?}, max {:?}; errors {errors:?}",
        if retry { "on" } else { "off" },
        times.len(),
        at(0.50),
        at(0.99),
        max
    );
    assert!(
        max < LIMIT,
        "{what} (retry {retry}): the slowest call took {max:?} with a {TIMEOUT:?} timeout"
    );
}

/// Answers the handshake, then nothing: every `GET` waits forever.
fn silent() -> HostileServer {
    HostileServer::scripted(|r: &Received| (r.name() == "GET").then(hostile::silence))
}

/// Accepts connections and never answers anything, not even `HELLO`.
fn mute() -> HostileServer {
    HostileServer::scripted(|_: &Received| Some(hostile::silence()))
}

/// Accepts connections and hangs up on each at its first command (the
/// handshake's `HELLO`).
fn closing() -> HostileServer {
    HostileServer::scripted(|_: &Received| Some(Vec::new()))
}

#[tokio::test]
async fn a_silent_server_with_retries() {
    bounded(60, every_call_ends_in_time("silent server", silent(), true)).await
}

#[tokio::test]
async fn a_silent_server_without_retries() {
    bounded(
        60,
        every_call_ends_in_time("silent server", silent(), false),
    )
    .await
}

#[tokio::test]
async fn a_server_that_never_answers_hello_with_retries() {
    bounded(60, every_call_ends_in_time("mute server", mute(), true)).await
}

#[tokio::test]
async fn a_server_that_never_answers_hello_without_retries() {
    bounded(60, every_call_ends_in_time("mute server", mute(), false)).await
}

#[tokio::test]
async fn a_server_that_closes_every_connection_with_retries() {
    bounded(
        60,
        every_call_ends_in_time("closing server", closing(), true),
    )
    .await
}

#[tokio::test]
async fn a_server_that_closes_every_connection_without_retries() {
    bounded(
        60,
        every_call_ends_in_time("closing server", closing(), false),
    )
    .await
}

/// During a relaxation (`MIGRATING`, relaxed timeout 3 s) a `GET` whose
/// reply takes 1 s, twice the command timeout, succeeds; the same `GET`
/// before the relaxation times out within the limit.
#[tokio::test]
async fn a_relaxation_still_extends_the_deadline() {
    bounded(30, async {
        let server = HostileServer::scripted(|r: &Received| {
            if r.name() == "GET" && r.args.get(1).is_some_and(|k| k == b"slow") {
                // A slow server, as during a migration.
                std::thread::sleep(Duration::from_secs(1));
            }
            None
        });
        let client = ClientBuilder::new(server.endpoint())
            .mode(ServerMode::Standalone)
            .command_timeout(Some(TIMEOUT))
            .maintenance(
                MaintenanceConfig::default()
                    .mode(Mode::Enabled)
                    .relaxed_timeout(Duration::from_secs(3)),
            )
            .build()
            .await
            .expect("client");
        client
            .cmd::<()>(cmd("SET").arg("slow").arg("v"))
            .await
            .unwrap();

        let t0 = Instant::now();
        let r = client.get::<Option<String>>("slow").await;
        let took = t0.elapsed();
        assert!(matches!(r, Err(Error::Timeout)), "not relaxed: {r:?}");
        assert!(took < LIMIT, "not relaxed: took {took:?}");

        server.inject(&hostile::push(&["MIGRATING", ":1", ":5"]));
        // The push is ahead of this reply on the connection: once the
        // reply is in, the client is relaxed.
        assert_eq!(client.ping().await.unwrap(), "PONG");
        let t0 = Instant::now();
        let v: Option<String> = client
            .get("slow")
            .await
            .expect("relaxed: 1 s is within 3 s");
        assert_eq!(v.as_deref(), Some("v"));
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
    })
    .await
}

/// `BLPOP k 2` with a 500 ms command timeout waits its 2 s and returns
/// `None`: a blocking command keeps its own timeout.
#[tokio::test]
async fn a_blocking_command_keeps_its_own_timeout() {
    bounded(30, async {
        let server = RedisServer::start();
        let client = ClientBuilder::new(server.endpoint())
            .command_timeout(Some(TIMEOUT))
            .build()
            .await
            .expect("client");
        let t0 = Instant::now();
        let r = client.blpop::<String>(["k"], 2.0).await;
        let took = t0.elapsed();
        assert!(matches!(r, Ok(None)), "{r:?} after {took:?}");
        assert!(took >= Duration::from_millis(1900), "{took:?}");
    })
    .await
}

/// A one-node "cluster" whose seed answers `CLUSTER SLOTS` with every slot
/// on `owner` (and `CLUSTER SHARDS` with the error of a Redis before 7).
fn seed_for(owner: &HostileServer) -> HostileServer {
    let port = owner.port();
    HostileServer::scripted(move |r: &Received| {
        if r.name() != "CLUSTER" {
            return None;
        }
        let sub = r.args.get(1).map(|a| a.to_ascii_uppercase());
        Some(match sub.as_deref() {
            Some(b"SLOTS") => {
                format!("*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:{port}\r\n")
                    .into_bytes()
            }
            _ => b"-ERR unknown subcommand\r\n".to_vec(),
        })
    })
}

/// 200 `GET`s through a cluster `Client` whose slot owner is `owner`, 20
/// at a time; each must fail within the limit. The routing's own waits
/// (the owner's first connection, its handshake) spend the call's budget.
async fn every_cluster_call_ends_in_time(what: &str, owner: HostileServer, retry: bool) {
    let seed = seed_for(&owner);
    let client = ClientBuilder::new(seed.endpoint())
        .mode(ServerMode::Cluster)
        .command_timeout(Some(TIMEOUT))
        .retry(retries(retry))
        .build()
        .await
        .expect("a cluster client builds");
    calls_end_in_time(&format!("cluster, {what}"), &client, retry).await;
}

#[tokio::test]
async fn a_cluster_node_that_never_answers_hello_with_retries() {
    bounded(
        60,
        every_cluster_call_ends_in_time("mute owner", mute(), true),
    )
    .await
}

#[tokio::test]
async fn a_cluster_node_that_never_answers_hello_without_retries() {
    bounded(
        60,
        every_cluster_call_ends_in_time("mute owner", mute(), false),
    )
    .await
}

#[tokio::test]
async fn a_cluster_node_that_closes_every_connection_with_retries() {
    bounded(
        60,
        every_cluster_call_ends_in_time("closing owner", closing(), true),
    )
    .await
}

#[tokio::test]
async fn a_silent_cluster_node_without_retries() {
    bounded(
        60,
        every_cluster_call_ends_in_time("silent owner", silent(), false),
    )
    .await
}

/// `WATCH` takes a dedicated connection: a server that never answers its
/// `HELLO` makes the call fail within the command timeout too.
#[tokio::test]
async fn watch_on_a_server_that_never_answers_hello() {
    bounded(30, async {
        let server = mute();
        let client = client(&server, retries(true)).await;
        let t0 = Instant::now();
        let r = client.watch("k").await;
        let took = t0.elapsed();
        assert!(r.is_err(), "the server never answers");
        assert!(took < LIMIT, "WATCH took {took:?}");
    })
    .await
}

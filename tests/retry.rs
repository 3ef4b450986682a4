//! The Retry layer on real redis-server: Retry over RelaxTimeout over
//! Handoff over the Connector, through the simulator (connection faults),
//! a scripted proxy that refuses commands the way a loading or failing-over
//! server does, and a real replica that is promoted.
//!
//! The soak runs 60 s (`RETRY_SOAK_SECS` shortens it, `RETRY_SEED` changes
//! the fault schedule, `RETRY_TRACE` writes the crate's debug events to
//! `/tmp/retry-trace.log`).
#![cfg(feature = "sim")]

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_layers::handoff::{Handoff, HandoffLayer};
use redis_layers::maint::{MaintenanceConfig, Mode};
use redis_layers::relax::{RelaxTimeout, RelaxTimeoutLayer};
use redis_layers::retry::{classify, Backoff, Policy, RedisPolicy, Retry, RetryLayer, TpsBudget};
use redis_layers::sim::Target;
use redis_layers::{cmd, Connector, Error, Pipeline, Request, Response, Value};
use support::faults::FaultProxy;
use support::sim::{raw_connector, SimStandalone};
use support::{bounded, free_port, within, RedisServer};
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt};

const STEP: Duration = Duration::from_secs(10);

/// The default policy, counting the retries it grants: the layer takes any
/// policy, so a wrapper is all a test (or a user) needs.
#[derive(Clone)]
struct Counted {
    inner: RedisPolicy,
    retries: Arc<AtomicU64>,
}

impl Counted {
    fn new(inner: RedisPolicy) -> Self {
        Counted {
            inner,
            retries: Arc::default(),
        }
    }

    fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

impl Policy<Request, Response, Error> for Counted {
    type Future = <RedisPolicy as Policy<Request, Response, Error>>::Future;

    fn retry(
        &mut self,
        req: &mut Request,
        result: &mut Result<Response, Error>,
    ) -> Option<Self::Future> {
        let wait = self.inner.retry(req, result);
        if wait.is_some() {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        wait
    }

    fn clone_request(&mut self, req: &Request) -> Option<Request> {
        self.inner.clone_request(req)
    }
}

type Stack = Retry<RelaxTimeout<Handoff<Connector>>, Counted>;

/// Retry over RelaxTimeout (`timeout` per command) over Handoff (`pool`
/// connections) over a maintenance-aware connector, to `env`'s endpoint.
fn sim_stack(env: &SimStandalone, pool: usize, timeout: Duration, policy: &Counted) -> Stack {
    let config = MaintenanceConfig::default().mode(Mode::Enabled);
    let (handoff, connector) = env.handoff_parts(&config, pool);
    RetryLayer::with_policy(policy.clone())
        .layer(RelaxTimeoutLayer::new(timeout).layer(handoff.layer(connector)))
}

/// The same stack to a plain endpoint (the fault proxy, a replica).
fn plain_stack(endpoint: redis_layers::Endpoint, policy: &Counted) -> Stack {
    RetryLayer::with_policy(policy.clone()).layer(
        RelaxTimeoutLayer::new(Duration::from_secs(2))
            .layer(HandoffLayer::new(endpoint).layer(raw_connector())),
    )
}

async fn send<S>(svc: &mut S, req: impl Into<Request>) -> Result<Value, Error>
where
    S: Service<Request, Response = Response, Error = Error>,
{
    svc.ready().await?.call(req.into()).await?.into_value()
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.to_owned().into())
}

use support::rng::Rng;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one writer task saw.
#[derive(Default)]
struct Writes {
    acked: Vec<String>,
    failed: Vec<(String, String)>,
}

/// Writers `RPUSH` unique ids (`w:seq`, not idempotent) to one list and
/// `SET` unique keys marked idempotent, readers `GET` one key, while a
/// fault task closes random client connections at random intervals. At the
/// end every acknowledged id is in the list exactly once, an id whose
/// `RPUSH` failed at most once, no id twice and none unknown; every
/// acknowledged `SET` is on the server; no idempotent write and no read
/// failed.
#[ignore = "long: run by .ci/run (cargo test --all-features --tests -- --ignored)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_random_connection_drops_lose_and_duplicate_nothing() {
    let secs = env_u64("RETRY_SOAK_SECS", 60);
    let seed = env_u64("RETRY_SEED", 0x5eed_2026_1130);
    if std::env::var_os("RETRY_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("redis_layers=debug,retry=debug")
            .with_writer(std::sync::Mutex::new(
                std::fs::File::create("/tmp/retry-trace.log").unwrap(),
            ))
            .try_init();
    }
    bounded(secs + 60, async move {
        const LIST: &str = "retry:ledger";
        let env = SimStandalone::start().await;
        let policy = Counted::new(RedisPolicy::new());
        let svc = sim_stack(&env, 2, Duration::from_secs(1), &policy);
        send(&mut svc.clone(), cmd("SET").arg("retry:read").arg("v"))
            .await
            .expect("seed");
        let stop = Arc::new(AtomicBool::new(false));

        let mut pushers = Vec::new();
        for w in 0..6 {
            let (mut svc, stop) = (svc.clone(), stop.clone());
            pushers.push(tokio::spawn(async move {
                let mut seen = Writes::default();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("{w}:{seq}");
                    seq += 1;
                    let push = cmd("RPUSH").arg(LIST).arg(&id);
                    match within(STEP, "RPUSH", send(&mut svc, push)).await {
                        Ok(Value::Integer(_)) => seen.acked.push(id),
                        Ok(other) => panic!("RPUSH {id}: {other:?}"),
                        Err(e) => seen.failed.push((id, e.to_string())),
                    }
                }
                seen
            }));
        }
        let mut setters = Vec::new();
        for w in 0..2 {
            let (mut svc, stop) = (svc.clone(), stop.clone());
            setters.push(tokio::spawn(async move {
                let mut seen = Writes::default();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("retry:set:{w}:{seq}");
                    seq += 1;
                    let set = Request::from(cmd("SET").arg(&key).arg(seq)).idempotent();
                    match within(STEP, "SET", send(&mut svc, set)).await {
                        Ok(_) => seen.acked.push(key),
                        Err(e) => seen.failed.push((key, e.to_string())),
                    }
                }
                seen
            }));
        }
        let mut readers = Vec::new();
        for _ in 0..4 {
            let (mut svc, stop) = (svc.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match within(STEP, "GET", send(&mut svc, cmd("GET").arg("retry:read"))).await {
                        Ok(v) if v == bulk("v") => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            }));
        }
        let faults = {
            let (sim, stop) = (env.sim.clone(), stop.clone());
            tokio::spawn(async move {
                let mut rng = Rng(seed | 1);
                let mut faults = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    // The schedule is the point here: random gaps of 50 to
                    // 500 ms between faults.
                    tokio::time::sleep(Duration::from_millis(50 + rng.below(450))).await;
                    let clients = sim.clients();
                    if clients.is_empty() {
                        continue;
                    }
                    let victim = clients[rng.below(clients.len() as u64) as usize].id;
                    faults += sim.close(Target::Client(victim));
                }
                faults
            })
        };

        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let faults = within(STEP, "fault task", faults).await.unwrap();
        let mut pushed = Writes::default();
        for t in pushers {
            let w = within(STEP, "writer", t).await.unwrap();
            pushed.acked.extend(w.acked);
            pushed.failed.extend(w.failed);
        }
        let mut set = Writes::default();
        for t in setters {
            let w = within(STEP, "setter", t).await.unwrap();
            set.acked.extend(w.acked);
            set.failed.extend(w.failed);
        }
        let (mut reads, mut read_errors) = (0, Vec::new());
        for t in readers {
            let (ok, failed) = within(STEP, "reader", t).await.unwrap();
            reads += ok;
            read_errors.extend(failed);
        }

        // The server's view, straight from it.
        let direct = Connector::new()
            .connect(env.server.endpoint())
            .await
            .expect("direct connection");
        let list = direct
            .send_cmd(cmd("LRANGE").arg(LIST).arg(0).arg(-1))
            .await
            .expect("LRANGE");
        let Value::Array(items) = list else {
            panic!("LRANGE: {list:?}")
        };
        let mut on_server: HashMap<String, u32> = HashMap::new();
        for item in &items {
            let id = String::from_utf8(item.as_bytes().expect("an id").to_vec()).unwrap();
            *on_server.entry(id).or_default() += 1;
        }
        let failed_ids: HashSet<&str> = pushed.failed.iter().map(|(id, _)| id.as_str()).collect();
        let acked_ids: HashSet<&str> = pushed.acked.iter().map(String::as_str).collect();
        let twice: Vec<_> = on_server.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "ids written more than once: {twice:?}");
        let lost: Vec<_> = acked_ids
            .iter()
            .filter(|id| !on_server.contains_key(**id))
            .collect();
        assert!(lost.is_empty(), "acknowledged ids lost: {lost:?}");
        let unknown: Vec<_> = on_server
            .keys()
            .filter(|id| !acked_ids.contains(id.as_str()) && !failed_ids.contains(id.as_str()))
            .collect();
        assert!(unknown.is_empty(), "ids nobody sent: {unknown:?}");
        let failed_but_applied = failed_ids
            .iter()
            .filter(|id| on_server.contains_key(**id))
            .count();

        assert!(
            set.failed.is_empty(),
            "{} idempotent SETs failed, first: {:?}",
            set.failed.len(),
            &set.failed[..set.failed.len().min(3)]
        );
        for chunk in set.acked.chunks(500) {
            let exists = direct
                .send_cmd(cmd("EXISTS").args(chunk))
                .await
                .expect("EXISTS");
            assert_eq!(
                exists,
                Value::Integer(chunk.len() as i64),
                "acknowledged SETs lost"
            );
        }
        assert!(
            read_errors.is_empty(),
            "{} reads failed, first: {:?}",
            read_errors.len(),
            &read_errors[..read_errors.len().min(3)]
        );
        let retries = policy.retries();
        let mut reasons: HashMap<&str, usize> = HashMap::new();
        for (_, e) in &pushed.failed {
            *reasons.entry(e.as_str()).or_default() += 1;
        }
        println!(
            "soak {secs} s (seed {seed:#x}): {faults} connections closed, {retries} retries; \
             RPUSH {} acked, {} failed ({failed_but_applied} of them applied: {reasons:?}); \
             idempotent SET {} acked; {reads} reads",
            pushed.acked.len(),
            pushed.failed.len(),
            set.acked.len(),
        );
        assert!(faults > 0, "no fault was injected");
        assert!(retries > 0, "nothing was retried");
        assert!(!pushed.acked.is_empty() && !set.acked.is_empty() && reads > 0);
    })
    .await
}

/// Waits until the server itself holds `want` under `key`.
async fn server_has(env: &SimStandalone, key: &str, want: &str) {
    within(STEP, "the write reached the server", async {
        for _ in 0..1000 {
            if env.server.cli(&["GET", key]) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{key} never became {want}");
    })
    .await
}

/// Sends `req` on a connection whose replies the simulator holds; once the
/// server has applied it (`key` == `applied`), closes that connection, and
/// returns what the caller got.
async fn lost_after_write(
    env: &SimStandalone,
    svc: &Stack,
    req: Request,
    key: &str,
    applied: &str,
) -> Result<Value, Error> {
    // A fresh connection, and only that one.
    send(&mut svc.clone(), cmd("PING")).await.expect("PING");
    within(STEP, "one connection", env.sim.wait_for(|c| c.len() == 1)).await;
    let id = env.sim.clients()[0].id;
    env.sim
        .set_delay(Target::Client(id), Duration::from_secs(30));
    let mut s = svc.clone();
    let call = tokio::spawn(async move { send(&mut s, req).await });
    server_has(env, key, applied).await;
    assert_eq!(env.sim.close(Target::Client(id)), 1);
    within(STEP, "the reply", call).await.unwrap()
}

/// An `INCR` whose connection dies after it was written is an error, not
/// sent again: the counter is exactly 1. Marked idempotent, it is sent again
/// (the counter is 2, as the caller allowed); a `GET` is sent again.
#[tokio::test]
async fn a_write_lost_after_sending_is_an_error_unless_idempotent() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let policy = Counted::new(RedisPolicy::new());
        let svc = sim_stack(&env, 1, Duration::from_secs(20), &policy);

        let r = lost_after_write(&env, &svc, cmd("INCR").arg("n").into(), "n", "1").await;
        assert!(matches!(r, Err(Error::Io(_))), "{r:?}");
        assert_eq!(env.server.cli(&["GET", "n"]), "1");
        assert_eq!(policy.retries(), 0);

        let incr = Request::from(cmd("INCR").arg("m")).idempotent();
        let r = lost_after_write(&env, &svc, incr, "m", "1").await;
        assert_eq!(r.unwrap(), Value::Integer(2));
        assert_eq!(env.server.cli(&["GET", "m"]), "2");
        assert_eq!(policy.retries(), 1);

        // A read: the "applied" condition is already true.
        let r = lost_after_write(&env, &svc, cmd("GET").arg("n").into(), "n", "1").await;
        assert_eq!(r.unwrap(), bulk("1"));
        assert_eq!(policy.retries(), 2);
    })
    .await
}

const REFUSALS: [&str; 5] = [
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "LOADING Redis is loading the dataset in memory",
    "CLUSTERDOWN The cluster is down",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "READONLY You can't write against a read only replica.",
];

/// A proxy to a fresh server, and a stack to it with a fixed backoff
/// (10 ms doubling, no jitter) and a large budget.
async fn refusing(max_retries: u32) -> (RedisServer, FaultProxy, Counted, Stack) {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], server.port()))).await;
    let policy = Counted::new(
        RedisPolicy::new()
            .max_retries(max_retries)
            .backoff(Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).jitter(0.0))
            .budget(TpsBudget::new(Duration::from_secs(10), 1000, 1.0)),
    );
    let svc = plain_stack(proxy.endpoint(), &policy);
    (server, proxy, policy, svc)
}

/// Commands refused with TRYAGAIN, LOADING, CLUSTERDOWN, MASTERDOWN or
/// READONLY were not run, so even a write is sent again, after waits of
/// 10 then 20 ms; the server applied it once. WRONGTYPE is returned at once.
#[tokio::test]
async fn refused_commands_are_retried_with_growing_waits_and_others_are_not() {
    bounded(60, async {
        let (server, proxy, policy, mut svc) = refusing(3).await;
        send(&mut svc, cmd("PING")).await.expect("PING");
        for (i, line) in REFUSALS.iter().enumerate() {
            let key = format!("refused:{i}");
            let (refused, retries) = (proxy.refused(), policy.retries());
            proxy.refuse_next(2, line);
            let started = Instant::now();
            let r = send(&mut svc, cmd("INCR").arg(&key)).await;
            assert_eq!(r.unwrap(), Value::Integer(1), "after {line}");
            assert!(
                started.elapsed() >= Duration::from_millis(30),
                "{line}: no backoff"
            );
            assert_eq!(proxy.refused() - refused, 2, "{line}");
            assert_eq!(policy.retries() - retries, 2, "{line}");
            assert_eq!(server.cli(&["GET", &key]), "1", "{line}");
        }
        // More refusals than retries: the last one is returned.
        proxy.refuse_next(10, REFUSALS[1]);
        let r = send(&mut svc, cmd("INCR").arg("given-up")).await;
        assert!(
            matches!(&r, Err(Error::Server(e)) if e.code() == "LOADING"),
            "{r:?}"
        );
        assert_eq!(proxy.refused(), 10 + 4, "1 attempt + 3 retries");
        proxy.clear();
        assert_eq!(server.cli(&["EXISTS", "given-up"]), "0");

        // Not retryable: at once, one attempt.
        let (forwarded, retries) = (proxy.forwarded(), policy.retries());
        send(&mut svc, cmd("SET").arg("s").arg("x")).await.unwrap();
        let r = send(&mut svc, cmd("LPUSH").arg("s").arg("a")).await;
        assert!(
            matches!(&r, Err(Error::Server(e)) if e.code() == "WRONGTYPE"),
            "{r:?}"
        );
        assert_eq!(proxy.forwarded() - forwarded, 2);
        assert_eq!(policy.retries(), retries);
    })
    .await
}

/// A pipeline is sent again when every command was refused; one with a
/// command that ran is returned as it is.
#[tokio::test]
async fn pipelines_are_retried_only_when_nothing_ran() {
    bounded(60, async {
        let (server, proxy, policy, mut svc) = refusing(3).await;
        let pipe = |a: &str, b: &str| {
            Request::from(
                Pipeline::new()
                    .cmd(cmd("INCR").arg(a))
                    .cmd(cmd("INCR").arg(b)),
            )
        };
        proxy.refuse_next(2, REFUSALS[1]);
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(pipe("pa", "pb"))
            .await
            .unwrap();
        assert_eq!(
            r.into_pipeline().unwrap(),
            vec![Ok(Value::Integer(1)), Ok(Value::Integer(1))]
        );
        assert_eq!(policy.retries(), 1);

        proxy.refuse_next(1, REFUSALS[1]);
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(pipe("qa", "qb"))
            .await
            .unwrap();
        let r = r.into_pipeline().unwrap();
        assert!(matches!(&r[0], Err(e) if e.code() == "LOADING"), "{r:?}");
        assert_eq!(r[1], Ok(Value::Integer(1)));
        assert_eq!(policy.retries(), 1);
        assert_eq!(server.cli(&["EXISTS", "qa"]), "0");
        assert_eq!(server.cli(&["GET", "qb"]), "1");
    })
    .await
}

/// With an empty budget refusals are returned although `max_retries`
/// would allow more: a budget with no reserve that allows one retry per two
/// requests gives 0, 1, 0 retries to three refused requests.
#[tokio::test]
async fn an_exhausted_budget_stops_retries() {
    bounded(60, async {
        let server = RedisServer::start();
        let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], server.port()))).await;
        let policy = Counted::new(
            RedisPolicy::new()
                .max_retries(10)
                .backoff(Backoff::none())
                .budget(TpsBudget::new(Duration::from_secs(60), 0, 0.5)),
        );
        let mut svc = plain_stack(proxy.endpoint(), &policy);
        proxy.refuse_next(100, REFUSALS[1]);
        let mut attempts = Vec::new();
        for i in 0..3 {
            let before = proxy.refused();
            let r = send(&mut svc, cmd("INCR").arg(format!("b{i}"))).await;
            assert!(
                matches!(&r, Err(Error::Server(e)) if e.code() == "LOADING"),
                "{r:?}"
            );
            attempts.push(proxy.refused() - before);
        }
        assert_eq!(attempts, [1, 2, 1]);
        assert_eq!(policy.retries(), 1);
    })
    .await
}

/// A real replica whose primary is gone, with `replica-serve-stale-data
/// no`: a GET gets MASTERDOWN and a SET gets READONLY from the server
/// itself. Both are retried; once the replica is promoted (`REPLICAOF NO
/// ONE`, a failover) both succeed, and the write is applied once.
#[tokio::test]
async fn masterdown_and_readonly_are_retried_until_a_failover() {
    bounded(60, async {
        let dead_primary = free_port().to_string();
        let server = RedisServer::builder()
            .arg("--replicaof")
            .arg("127.0.0.1")
            .arg(&dead_primary)
            .arg("--replica-serve-stale-data")
            .arg("no")
            .start();
        let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
        let changed = Arc::new(Notify::new());
        let (s, c) = (seen.clone(), changed.clone());
        let policy = Counted::new(
            RedisPolicy::new()
                .max_retries(100)
                .backoff(Backoff::new(
                    Duration::from_millis(20),
                    Duration::from_millis(50),
                ))
                .budget(TpsBudget::new(Duration::from_secs(10), 1000, 1.0))
                .classifier(move |e: &Error| {
                    if let Some(se) = e.server_error() {
                        s.lock().unwrap().insert(se.code().to_owned());
                        c.notify_waiters();
                    }
                    classify(e)
                }),
        );
        let svc = plain_stack(server.endpoint(), &policy);
        let mut get = svc.clone();
        let get = tokio::spawn(async move { send(&mut get, cmd("GET").arg("k")).await });
        let mut set = svc.clone();
        let set = tokio::spawn(async move { send(&mut set, cmd("SET").arg("k").arg("v")).await });
        within(STEP, "MASTERDOWN and READONLY seen", async {
            loop {
                let notified = changed.notified();
                {
                    let seen = seen.lock().unwrap();
                    if seen.contains("MASTERDOWN") && seen.contains("READONLY") {
                        return;
                    }
                }
                notified.await;
            }
        })
        .await;
        let retries_before = policy.retries();
        assert!(retries_before >= 2);
        assert_eq!(server.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
        let set = within(STEP, "SET", set).await.unwrap();
        assert_eq!(set.unwrap(), Value::SimpleString("OK".into()));
        let get = within(STEP, "GET", get).await.unwrap().unwrap();
        assert!(get == Value::Null || get == bulk("v"), "{get:?}");
        assert_eq!(server.cli(&["GET", "k"]), "v");
    })
    .await
}

/// Found by the soak: a request sent on a queue slot reserved just before
/// its connection's driver stopped went into the dead queue and was never
/// answered (the caller hung). It fails with `Closed` (never written), so
/// the retry layer sends it again on a new connection.
#[tokio::test]
async fn a_request_on_a_slot_reserved_before_the_connection_died_is_closed() {
    bounded(30, async {
        let server = RedisServer::start();
        let mut conn = raw_connector()
            .connect(server.endpoint())
            .await
            .expect("connect");
        std::future::poll_fn(|cx| conn.poll_ready(cx))
            .await
            .expect("a reserved slot");
        conn.close();
        within(STEP, "the driver stopped", conn.closed()).await;
        let r = within(STEP, "the reply", conn.call(cmd("PING").into())).await;
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
    })
    .await
}

/// Each retry counts under `redis.client.retries`, by reason.
#[cfg(feature = "metrics")]
#[test]
fn retries_are_counted() {
    use redis_layers::retry::RETRIES;

    let counters = support::metrics::counted(async {
        let (_server, proxy, _policy, mut svc) = refusing(3).await;
        proxy.refuse_next(2, REFUSALS[1]);
        let r = send(&mut svc, cmd("INCR").arg("counted")).await;
        assert_eq!(r.unwrap(), Value::Integer(1));
    });
    let retries: Vec<_> = counters
        .into_iter()
        .filter(|(name, _, _)| name == RETRIES)
        .map(|(_, labels, n)| (labels, n))
        .collect();
    assert_eq!(
        retries,
        [(vec![("reason".to_owned(), "LOADING".to_owned())], 2)]
    );
    assert_eq!(RETRIES, "redis.client.retries");
}

//! Stacks of your own: layers reordered and left out, and a layer of yours
//! among them, built with [`ServiceBuilderExt`] and boxed as a
//! `tower::util::BoxCloneSyncService<Request, Response, Error>`.
//!
//! ```text
//! cargo run --example custom_stack                         # starts its own redis-server
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example custom_stack
//! ```
//!
//! The layer of yours is `CountLayer`: it counts the commands that pass,
//! by name. It forwards [`Maintained`], so RelaxTimeout may sit above it.
//! Three stacks:
//!
//! - **A, no Handoff**: Count over RelaxTimeout over one `Connection`.
//!   A blocking command gets no default deadline; an explicit one times
//!   out, and the connection stays in order after it.
//! - **B, the usual stack with Count on top**: Count over RelaxTimeout over
//!   Handoff over the Connector, a pool of 2 connections, 8 tasks of
//!   `INCR`s.
//! - **C, RelaxTimeout outside your layer**: RelaxTimeout over Count over
//!   one `Connection`. RelaxTimeout reads the endpoint's maintenance state
//!   through Count: a relaxation (started by hand here, as a `MIGRATING`
//!   would) lets a command outlive its own timeout.
//!
//! Every result is checked; the example exits non-zero on any surprise.

// Borrowed from the test support: starts a throwaway redis-server on a free
// loopback port when REDIS_URL is unset, and stops it on exit.
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use redis_layers::handoff::HandoffLayer;
use redis_layers::maint::{MaintEvent, Maintained, MaintenanceState};
use redis_layers::{
    cmd, Body, Connector, Endpoint, Error, Request, Response, ServiceBuilderExt, Value,
};
use tokio::sync::broadcast;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// Any stack, once boxed: one type for all of them.
type Boxed = BoxCloneSyncService<Request, Response, Error>;

/// Commands seen, by name (shared by the clones of a layer's services).
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<BTreeMap<String, u64>>>);

impl Counts {
    fn get(&self, name: &str) -> u64 {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

/// A user-written layer: counts the commands that pass through it.
#[derive(Clone, Default)]
struct CountLayer {
    counts: Counts,
}

impl<S> Layer<S> for CountLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            counts: self.counts.clone(),
        }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    counts: Counts,
}

impl<S> Service<Request> for Counted<S>
where
    S: Service<Request, Response = Response, Error = Error>,
{
    type Response = Response;
    type Error = Error;
    // Counting needs nothing from the reply: the inner future as it is.
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> S::Future {
        {
            let mut counts = self.counts.0.lock().unwrap();
            let mut count = |c: &redis_layers::Cmd| {
                let name = String::from_utf8_lossy(c.name().unwrap_or(b"?")).to_uppercase();
                *counts.entry(name).or_default() += 1;
            };
            match req.body() {
                Body::Cmd(c) => count(c),
                Body::Pipeline(p) => p.cmds().iter().for_each(count),
            }
        }
        self.inner.call(req)
    }
}

/// Without this, `RelaxTimeout<Counted<_>>` would not compile: RelaxTimeout
/// needs the maintenance state of the endpoint below it, and a layer in
/// between has to pass it on.
impl<S: Maintained> Maintained for Counted<S> {
    // Errors pass through untouched, so a redirect still carries its
    // command back to a Cluster above (which then keeps no copy).
    const RETURNS_REDIRECTED: bool = S::RETURNS_REDIRECTED;

    fn maintenance(&self) -> &Arc<MaintenanceState> {
        self.inner.maintenance()
    }

    // Forwarded too: a Handoff's stream follows its connections across
    // endpoints, which the default (the state's own stream) would not.
    fn subscribe(&self) -> broadcast::Receiver<MaintEvent> {
        self.inner.subscribe()
    }
}

/// Sends `req` and times it.
async fn send(svc: &mut Boxed, req: impl Into<Request>) -> (Result<Value, Error>, Duration) {
    let t = Instant::now();
    let r = match svc.ready().await {
        Ok(s) => s.call(req.into()).await.and_then(|r| r.into_value()),
        Err(e) => Err(e),
    };
    (r, t.elapsed())
}

/// The surprises found so far.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl std::fmt::Display) {
        println!("  {} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.0.push(what.to_string());
        }
    }
}

/// `r` is `Ok(v)` (errors have no `PartialEq`).
fn is(r: &Result<Value, Error>, v: Value) -> bool {
    r.as_ref().ok() == Some(&v)
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.to_owned().into())
}

const EMPTY: &str = "custom_stack:empty";
/// How long the `BLPOP`s below block on the server (it is a list nobody
/// pushes to).
const BLOCK: Duration = Duration::from_millis(500);

fn blpop() -> Request {
    cmd("BLPOP").arg(EMPTY).arg(BLOCK.as_secs_f64()).into()
}

/// A: Count over RelaxTimeout over a bare Connection (no Handoff).
async fn stack_a(connector: &Connector, endpoint: &Endpoint, c: &mut Checks) -> Result<(), Error> {
    println!("A: Count > RelaxTimeout(200 ms) > Connection (no Handoff)");
    let count = CountLayer::default();
    let conn = connector.connect(endpoint.clone()).await?;
    let mut svc: Boxed = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(count.clone())
            .redis_relax(Duration::from_millis(200))
            .service(conn),
    );

    let (r, _) = send(&mut svc, cmd("SET").arg("custom_stack:a").arg("v")).await;
    c.check(r.is_ok(), format!("SET: {r:?}"));
    // Blocking commands get no default deadline: BLPOP waits its 500 ms.
    let (r, took) = send(&mut svc, blpop()).await;
    c.check(
        is(&r, Value::Null) && took >= BLOCK - Duration::from_millis(50),
        format!("BLPOP 0.5 with no timeout of its own: {r:?} after {took:?}"),
    );
    // One with a deadline of its own times out...
    let (r, took) = send(&mut svc, blpop().with_timeout(Duration::from_millis(150))).await;
    c.check(
        matches!(r, Err(Error::Timeout)) && took < BLOCK,
        format!("BLPOP 0.5 with a 150 ms timeout: {r:?} after {took:?}"),
    );
    // ... and its late reply is read and dropped: the next reply is ours.
    // (The GET waits behind that BLPOP on the server, longer than the
    // 200 ms default: it gets a deadline of its own.)
    let get = Request::from(cmd("GET").arg("custom_stack:a")).with_timeout(Duration::from_secs(2));
    let (r, _) = send(&mut svc, get).await;
    c.check(is(&r, bulk("v")), format!("GET after the timeout: {r:?}"));
    let counts = count.counts.snapshot();
    c.check(
        counts == BTreeMap::from([("BLPOP".into(), 2), ("GET".into(), 1), ("SET".into(), 1)]),
        format!("counted {counts:?}"),
    );
    Ok(())
}

/// B: Count over RelaxTimeout over Handoff over the Connector.
async fn stack_b(
    connector: &Connector,
    endpoint: &Endpoint,
    c: &mut Checks,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("B: Count > RelaxTimeout(1 s) > Handoff(pool 2) > Connector");
    let count = CountLayer::default();
    let svc: Boxed = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(count.clone())
            .redis_relax(Duration::from_secs(1))
            .redis_handoff(HandoffLayer::new(endpoint.clone()).pool_size(2)?)
            .service(connector.clone()),
    );

    let (r, _) = send(&mut svc.clone(), cmd("DEL").arg("custom_stack:n")).await;
    c.check(r.is_ok(), format!("DEL: {r:?}"));
    // 8 tasks, 50 INCRs each, every reply checked to be a new number.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..50 {
                    match send(&mut svc, cmd("INCR").arg("custom_stack:n")).await.0 {
                        Ok(Value::Integer(n)) => seen.push(n),
                        other => return Err(format!("INCR: {other:?}")),
                    }
                }
                Ok(seen)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(seen) => all.extend(seen),
            Err(e) => c.check(false, e),
        }
    }
    all.sort_unstable();
    c.check(
        all == (1..=400).collect::<Vec<i64>>(),
        format!("400 INCRs, each reply a new number up to {:?}", all.last()),
    );
    let (r, _) = send(&mut svc.clone(), cmd("GET").arg("custom_stack:n")).await;
    c.check(is(&r, bulk("400")), format!("GET custom_stack:n: {r:?}"));
    c.check(
        count.counts.get("INCR") == 400,
        format!("counted {} INCRs", count.counts.get("INCR")),
    );
    Ok(())
}

/// C: RelaxTimeout over Count over a bare Connection.
async fn stack_c(connector: &Connector, endpoint: &Endpoint, c: &mut Checks) -> Result<(), Error> {
    println!("C: RelaxTimeout(200 ms) > Count > Connection");
    let count = CountLayer::default();
    let conn = connector.connect(endpoint.clone()).await?;
    // Compiles only because Counted forwards Maintained.
    let relaxing = ServiceBuilder::new()
        .redis_relax(Duration::from_millis(200))
        .layer(count.clone())
        .service(conn);
    let state = relaxing.maintenance().clone();
    let mut svc: Boxed = BoxCloneSyncService::new(relaxing);

    let (r, took) = send(&mut svc, blpop().with_timeout(Duration::from_millis(150))).await;
    c.check(
        matches!(r, Err(Error::Timeout)),
        format!("not relaxed: BLPOP 0.5 with a 150 ms timeout: {r:?} after {took:?}"),
    );
    // What a MIGRATING would do to this endpoint (no simulator here).
    state.relax_for("custom_stack example", Duration::from_secs(5));
    c.check(
        state.relaxed_timeout().is_some(),
        format!("relaxed to {:?}", state.relaxed_timeout()),
    );
    let (r, took) = send(&mut svc, blpop().with_timeout(Duration::from_millis(150))).await;
    c.check(
        is(&r, Value::Null),
        format!("relaxed: BLPOP 0.5 with a 150 ms timeout: {r:?} after {took:?}"),
    );
    let (r, _) = send(&mut svc, cmd("PING")).await;
    c.check(
        is(&r, Value::SimpleString("PONG".into())),
        format!("PING: {r:?}"),
    );
    c.check(
        count.counts.get("BLPOP") == 2 && count.counts.get("PING") == 1,
        format!("counted {:?}", count.counts.snapshot()),
    );
    Ok(())
}

async fn run(
    connector: Connector,
    endpoint: Endpoint,
) -> Result<Checks, Box<dyn std::error::Error>> {
    let mut c = Checks::default();
    stack_a(&connector, &endpoint, &mut c).await?;
    stack_b(&connector, &endpoint, &mut c).await?;
    // Last: its relaxation is the endpoint's, shared by the connector's
    // connections to it.
    stack_c(&connector, &endpoint, &mut c).await?;
    // Clean up after ourselves (REDIS_URL may be someone's server).
    let conn = connector.connect(endpoint).await?;
    conn.send(cmd("DEL").arg("custom_stack:a").arg("custom_stack:n"))
        .await?;
    Ok(c)
}

fn main() -> ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async {
        let (server, connector, endpoint) =
            support::server_from_env().map_err(|e| format!("REDIS_URL: {e}"))?;
        let r = tokio::time::timeout(Duration::from_secs(60), run(connector, endpoint)).await;
        drop(server);
        match r {
            Ok(Ok(checks)) => Ok(checks),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("did not finish within 60 s".into()),
        }
    });
    match result {
        Ok(c) if c.0.is_empty() => {
            println!("all checks passed");
            ExitCode::SUCCESS
        }
        Ok(c) => {
            eprintln!("FAILED: {}", c.0.join("; "));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! The Retry layer's cost on the success path: GET with 64 callers through
//! RelaxTimeout over Handoff, with and without RetryLayer on top (default
//! policy and the RelaxTimeout's timeout as its command timeout, as in a
//! `Client`; and with a budget that keeps no books), in back-to-back rounds
//! on one spawned redis-server; and heap allocations per GET with each.
//! Then SET of 100 KiB values with 16 callers, with and without Retry
//! (what keeping a request to send it again costs when it is long).
//!
//! `cargo bench --bench retry -- --quick` takes under a minute.
//! `BENCH_WORKERS`: tokio worker threads (default 2). For profilers, one
//! service alone: `BENCH_PROFILE_CALLS=<n>` makes n GETs, rounded up to
//! a multiple of the callers (for
//! `valgrind --tool=callgrind`: the difference of two runs with different
//! n, divided by the difference in GETs, is the instruction count per
//! GET); `BENCH_PROFILE_TARGET=plain` profiles RelaxTimeout over Handoff
//! (default `retry`: with Retry on top); `BENCH_PROFILE_CALLERS` sets the
//! callers (default 64).

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/stats.rs"]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;

use counting_alloc::{ALLOCS, COUNTING};
use cpu::cpu_ns;
use stats::median;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_layers::handoff::Handoff;
use redis_layers::relax::RelaxTimeoutLayer;
use redis_layers::retry::RetryLayer;
use redis_layers::{cmd, Connector, Request, Response, Value};
use tower::{Layer, Service, ServiceExt};

const CALLERS: usize = 64;

async fn get<S>(svc: &mut S)
where
    S: Service<Request, Response = Response, Error = redis_layers::Error>,
{
    let svc = svc.ready().await.expect("ready");
    match svc.call(cmd("GET").arg("k").into()).await {
        Ok(Response::Value(Value::BulkString(_))) => {}
        other => panic!("unexpected reply {other:?}"),
    }
}

/// The 100 KiB value of the SET workload.
static LARGE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| vec![b'v'; 100 * 1024]);

async fn set_large<S>(svc: &mut S)
where
    S: Service<Request, Response = Response, Error = redis_layers::Error>,
{
    let svc = svc.ready().await.expect("ready");
    let set = cmd("SET").arg("large").arg(LARGE.as_slice());
    match svc.call(set.into()).await {
        Ok(Response::Value(Value::SimpleString(_))) => {}
        other => panic!("unexpected reply {other:?}"),
    }
}

/// The two workloads.
#[derive(Clone, Copy)]
enum Op {
    Get,
    SetLarge,
}

/// GETs per second over `window`, after a short warm-up.
async fn measure<S>(svc: &S, window: Duration) -> f64
where
    S: Service<Request, Response = Response, Error = redis_layers::Error> + Clone + Send + 'static,
    S::Future: Send,
{
    measure_op(svc, window, Op::Get, CALLERS).await
}

/// `op`s per second from `callers` tasks over `window`, after a short
/// warm-up.
async fn measure_op<S>(svc: &S, window: Duration, op: Op, callers: usize) -> f64
where
    S: Service<Request, Response = Response, Error = redis_layers::Error> + Clone + Send + 'static,
    S::Future: Send,
{
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (mut s, ops, stop) = (svc.clone(), ops.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match op {
                        Op::Get => get(&mut s).await,
                        Op::SetLarge => set_large(&mut s).await,
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(window / 5).await;
    let (c0, t0) = (ops.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(window).await;
    let (c1, t1) = (ops.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("bench task");
    }
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

async fn allocs_per_get<S>(svc: &S) -> f64
where
    S: Service<Request, Response = Response, Error = redis_layers::Error> + Clone + Send + 'static,
    S::Future: Send,
{
    const PER_TASK: u64 = 500;
    let run = |count: bool| {
        let svc = svc.clone();
        async move {
            COUNTING.store(count, Ordering::SeqCst);
            let before = ALLOCS.load(Ordering::SeqCst);
            gets(&svc, CALLERS, PER_TASK).await;
            COUNTING.store(false, Ordering::SeqCst);
            ALLOCS.load(Ordering::SeqCst) - before
        }
    };
    run(false).await;
    run(true).await as f64 / (CALLERS as u64 * PER_TASK) as f64
}

/// `per_task` GETs from each of `callers` tasks, each with its own clone
/// of `svc`.
async fn gets<S>(svc: &S, callers: usize, per_task: u64)
where
    S: Service<Request, Response = Response, Error = redis_layers::Error> + Clone + Send + 'static,
    S::Future: Send,
{
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut s = svc.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    get(&mut s).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("GET task");
    }
}

/// `BENCH_PROFILE_CALLS` GETs through `svc` from `callers` tasks.
async fn profile<S>(svc: &S, target: &str, calls: u64, callers: usize)
where
    S: Service<Request, Response = Response, Error = redis_layers::Error> + Clone + Send + 'static,
    S::Future: Send,
{
    let per_task = calls.div_ceil(callers as u64);
    let (t0, cpu0) = (Instant::now(), cpu_ns());
    gets(svc, callers, per_task).await;
    let n = per_task * callers as u64;
    println!(
        "{target}: {n} GETs in {:.2} s, {:.2} us CPU/GET",
        t0.elapsed().as_secs_f64(),
        (cpu_ns() - cpu0) as f64 / 1_000.0 / n as f64
    );
}

/// The size of `svc`'s response future (moved on every request).
fn future_size<S: Service<Request>>(_: &S) -> usize {
    std::mem::size_of::<S::Future>()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let workers = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let (rounds, window) = if quick {
        (12, Duration::from_millis(500))
    } else {
        (30, Duration::from_secs(1))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    let server = support::RedisServer::start();
    server.cli(&["SET", "k", &"v".repeat(64)]);
    let stack = RelaxTimeoutLayer::new(Duration::from_secs(1))
        .layer(Handoff::new(Connector::new(), server.endpoint()));
    // With the RelaxTimeout's timeout, as a Client has it: each request
    // gets a deadline (one clock read).
    let timeout = Some(Duration::from_secs(1));
    let retried = RetryLayer::new()
        .command_timeout(timeout)
        .layer(stack.clone());
    let env_num = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|n| *n > 0)
    };
    if let Some(calls) = env_num("BENCH_PROFILE_CALLS") {
        let callers = env_num("BENCH_PROFILE_CALLERS").unwrap_or(CALLERS as u64) as usize;
        if std::env::var("BENCH_PROFILE_TARGET").is_ok_and(|t| t == "plain") {
            rt.block_on(profile(&stack, "plain", calls, callers));
        } else {
            rt.block_on(profile(&retried, "retry", calls, callers));
        }
        return;
    }
    // The same without the budget's bookkeeping, to see what it costs.
    let unbudgeted = RetryLayer::new()
        .budget(Unlimited)
        .command_timeout(timeout)
        .layer(stack.clone());
    let (mut plain, mut with_retry, mut ratios, mut ratios_free) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        rt.block_on(async {
            let (a, b, c) = if r % 2 == 0 {
                let a = measure(&stack, window).await;
                let b = measure(&retried, window).await;
                (a, b, measure(&unbudgeted, window).await)
            } else {
                let c = measure(&unbudgeted, window).await;
                let b = measure(&retried, window).await;
                (measure(&stack, window).await, b, c)
            };
            plain.push(a);
            with_retry.push(b);
            ratios.push(b / a);
            ratios_free.push(c / a);
        });
    }
    let (alloc_plain, alloc_retry) =
        rt.block_on(async { (allocs_per_get(&stack).await, allocs_per_get(&retried).await) });
    println!(
        "GET, {CALLERS} callers, {workers} workers: RelaxTimeout+Handoff {:.0} ops/s, \
         with Retry on top {:.0} ops/s; median ratio of {rounds} paired rounds {:.3}; \
         allocations per GET {alloc_plain:.2} -> {alloc_retry:.2}; \
         without the budget's bookkeeping: median ratio {:.3}; \
         response future {} -> {} bytes",
        median(plain),
        median(with_retry),
        median(ratios),
        median(ratios_free),
        future_size(&stack),
        future_size(&retried),
    );

    // SET of 100 KiB, 16 callers: the request Retry keeps to send again is
    // shared, not copied.
    const SET_CALLERS: usize = 16;
    let (mut plain, mut with_retry, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds / 2 {
        rt.block_on(async {
            let (a, b) = if r % 2 == 0 {
                let a = measure_op(&stack, window, Op::SetLarge, SET_CALLERS).await;
                (
                    a,
                    measure_op(&retried, window, Op::SetLarge, SET_CALLERS).await,
                )
            } else {
                let b = measure_op(&retried, window, Op::SetLarge, SET_CALLERS).await;
                (
                    measure_op(&stack, window, Op::SetLarge, SET_CALLERS).await,
                    b,
                )
            };
            plain.push(a);
            with_retry.push(b);
            ratios.push(b / a);
        });
    }
    println!(
        "SET 100 KiB, {SET_CALLERS} callers, {workers} workers: RelaxTimeout+Handoff {:.0} ops/s, \
         with Retry on top {:.0} ops/s; median ratio of {} paired rounds {:.3}",
        median(plain),
        median(with_retry),
        rounds / 2,
        median(ratios),
    );
}

/// A budget that never runs out and keeps no books.
struct Unlimited;

impl redis_layers::retry::Budget for Unlimited {
    fn deposit(&self) {}

    fn withdraw(&self) -> bool {
        true
    }
}

//! The Retry layer's cost on the success path: GET with 64 callers through
//! RelaxTimeout over Handoff, with and without RetryLayer on top (default
//! policy, and with a budget that keeps no books), in back-to-back rounds
//! on one spawned redis-server; and heap allocations per GET with each.
//!
//! `cargo bench --bench retry -- --quick` takes under a minute.
//! `BENCH_WORKERS`: tokio worker threads (default 2).

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
#[path = "common/stats.rs"]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;

use counting_alloc::{ALLOCS, COUNTING};
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

/// GETs per second over `window`, after a short warm-up.
async fn measure<S>(svc: &S, window: Duration) -> f64
where
    S: Service<Request, Response = Response, Error = redis_layers::Error> + Clone + Send + 'static,
    S::Future: Send,
{
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (mut s, ops, stop) = (svc.clone(), ops.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    get(&mut s).await;
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
    const PER_TASK: usize = 500;
    let run = |count: bool| {
        let svc = svc.clone();
        async move {
            COUNTING.store(count, Ordering::SeqCst);
            let before = ALLOCS.load(Ordering::SeqCst);
            let tasks: Vec<_> = (0..CALLERS)
                .map(|_| {
                    let mut s = svc.clone();
                    tokio::spawn(async move {
                        for _ in 0..PER_TASK {
                            get(&mut s).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("alloc task");
            }
            COUNTING.store(false, Ordering::SeqCst);
            ALLOCS.load(Ordering::SeqCst) - before
        }
    };
    run(false).await;
    run(true).await as f64 / (CALLERS * PER_TASK) as f64
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
    let retried = RetryLayer::new().layer(stack.clone());
    // The same without the budget's bookkeeping, to see what it costs.
    let unbudgeted = RetryLayer::new().budget(Unlimited).layer(stack.clone());
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
         without the budget's bookkeeping: median ratio {:.3}",
        median(plain),
        median(with_retry),
        median(ratios),
        median(ratios_free),
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

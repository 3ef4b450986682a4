//! Throughput of one multiplexed connection, measured against a reference
//! in the same run on the same spawned redis-server: `redis-benchmark -c 1
//! -P 64 -t get` (the server's own pipelined ceiling). The comparison with
//! other clients (redis-rs, fred) is the `benches/compare` workspace
//! member: `cargo run --release -p redis-layers-compare -- --quick`.
//!
//! Workloads: GET of a 64-byte value with 1, 16 and 64 concurrent callers
//! sharing one connection, and 1,000-command pipelines. Also counts heap
//! allocations per GET and the client's CPU time per command (this
//! process only: redis-server is a child process and not counted).
//!
//! `cargo bench --bench throughput -- --quick` takes well under a minute.
//! Rounds alternate which service goes first; each cell is the median round.
//!
//! Environment: `BENCH_WORKERS` (tokio worker threads, default 2);
//! `BENCH_PROFILE=<seconds>` runs only our client with 64 callers, for a
//! profiler such as `perf record` (with `BENCH_PROFILE_RELAX=1`, through the
//! RelaxTimeout layer).

#[path = "common/ceiling.rs"]
mod ceiling;
#[path = "common/counting_alloc.rs"]
mod counting_alloc;
#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/stats.rs"]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;

use ceiling::redis_benchmark;
use counting_alloc::{ALLOCS, COUNTING};
use cpu::cpu_ns;
use stats::median;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_layers::handoff::Handoff;
use redis_layers::relax::RelaxTimeoutLayer;
use redis_layers::{cmd, Connection, Connector, Pipeline, Request, Response, Value};
use tower::{Layer, Service, ServiceExt};

// ===== the clients under test =====

const KEY: &str = "key:__rand_int__"; // what `redis-benchmark -t get` reads
const VALUE_LEN: usize = 64;
const PIPELINE: usize = 1000;

trait Client: Clone + Send + Sync + 'static {
    fn get(&mut self) -> impl Future<Output = ()> + Send + '_;
    fn pipeline(&mut self) -> impl Future<Output = ()> + Send + '_;
}

/// Our stack: the bare `Connection`, or a layer over it.
#[derive(Clone)]
struct Ours<S = Connection>(S);

impl<S> Client for Ours<S>
where
    S: Service<Request, Response = Response, Error = redis_layers::Error>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    async fn get(&mut self) {
        // The tower path, as every layer above the connection uses it.
        let svc = self.0.ready().await.expect("ready");
        match svc.call(Request::from(cmd("GET").arg(KEY))).await {
            Ok(Response::Value(Value::BulkString(b))) => assert_eq!(b.len(), VALUE_LEN),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    async fn pipeline(&mut self) {
        let p: Pipeline = (0..PIPELINE).map(|_| cmd("GET").arg(KEY)).collect();
        let svc = self.0.ready().await.expect("ready");
        match svc.call(p.into()).await {
            Ok(Response::Pipeline(r)) => assert_eq!(r.len(), PIPELINE),
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

#[derive(Clone, Copy)]
enum Workload {
    Get { callers: usize },
    Pipeline,
}

impl Workload {
    fn name(self) -> String {
        match self {
            Workload::Get { callers } => format!("GET, {callers} callers"),
            Workload::Pipeline => format!("pipeline of {PIPELINE} GETs"),
        }
    }
}

/// One measurement window.
#[derive(Clone, Copy)]
struct Measured {
    /// Commands per second.
    ops: f64,
    /// This process's CPU time per command, in microseconds (the client's
    /// cost; redis-server is another process).
    cpu_us: f64,
}

/// Commands per second over `window`, after a short warm-up.
async fn measure<C: Client>(client: &C, w: Workload, window: Duration) -> Measured {
    let (tasks, per_op) = match w {
        Workload::Get { callers } => (callers, 1),
        Workload::Pipeline => (1, PIPELINE as u64),
    };
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (mut c, ops, stop) = (client.clone(), ops.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match w {
                        Workload::Get { .. } => c.get().await,
                        Workload::Pipeline => c.pipeline().await,
                    }
                    ops.fetch_add(per_op, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(window / 5).await;
    let (c0, t0, cpu0) = (ops.load(Ordering::Relaxed), Instant::now(), cpu_ns());
    tokio::time::sleep(window).await;
    let (c1, t1, cpu1) = (ops.load(Ordering::Relaxed), Instant::now(), cpu_ns());
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("bench task");
    }
    let n = (c1 - c0).max(1) as f64;
    Measured {
        ops: n / (t1 - t0).as_secs_f64(),
        cpu_us: cpu1.saturating_sub(cpu0) as f64 / 1_000.0 / n,
    }
}

/// Heap allocations per GET with 64 callers.
async fn allocs_per_get<C: Client>(client: &C) -> f64 {
    const PER_TASK: usize = 500;
    const TASKS: usize = 64;
    let run = |count: bool| {
        let client = client.clone();
        async move {
            COUNTING.store(count, Ordering::SeqCst);
            let before = ALLOCS.load(Ordering::SeqCst);
            let handles: Vec<_> = (0..TASKS)
                .map(|_| {
                    let mut c = client.clone();
                    tokio::spawn(async move {
                        for _ in 0..PER_TASK {
                            c.get().await;
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.expect("alloc task");
            }
            COUNTING.store(false, Ordering::SeqCst);
            ALLOCS.load(Ordering::SeqCst) - before
        }
    };
    run(false).await; // warm buffers up
    run(true).await as f64 / (TASKS * PER_TASK) as f64
}

fn ops(v: &[Measured]) -> f64 {
    median(v.iter().map(|m| m.ops).collect())
}

fn cpu(v: &[Measured]) -> f64 {
    median(v.iter().map(|m| m.cpu_us).collect())
}

/// `rounds` measurements of each client, alternating which goes first.
fn compare<A: Client, B: Client>(
    rt: &tokio::runtime::Runtime,
    a: &A,
    b: &B,
    w: Workload,
    rounds: usize,
    window: Duration,
) -> (Vec<Measured>, Vec<Measured>) {
    let (mut ma, mut mb) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        rt.block_on(async {
            if r % 2 == 0 {
                ma.push(measure(a, w, window).await);
                mb.push(measure(b, w, window).await);
            } else {
                mb.push(measure(b, w, window).await);
                ma.push(measure(a, w, window).await);
            }
        });
    }
    (ma, mb)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, window) = if quick {
        (5, Duration::from_millis(300))
    } else {
        (9, Duration::from_secs(1))
    };
    let workers: usize = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);

    let server = support::RedisServer::start();
    let port = server.port();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");

    let ours = rt.block_on(async {
        let conn = Connector::new()
            .connect(server.endpoint())
            .await
            .expect("connect");
        conn.send(cmd("SET").arg(KEY).arg(vec![b'x'; VALUE_LEN]))
            .await
            .expect("SET");
        Ours(conn)
    });

    println!(
        "redis-layers throughput ({}): redis-server on 127.0.0.1:{port}, \
         tokio multi-thread with {workers} workers, {VALUE_LEN}-byte values, \
         {rounds} rounds of {window:?}",
        if quick { "quick" } else { "full" }
    );

    // For profilers (`perf record`): only our client, 64 callers, this long.
    if let Some(secs) = std::env::var("BENCH_PROFILE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let w = Workload::Get { callers: 64 };
        // BENCH_PROFILE_RELAX: the same through the RelaxTimeout layer.
        let m = if std::env::var_os("BENCH_PROFILE_RELAX").is_some() {
            let relaxed =
                Ours(RelaxTimeoutLayer::new(Duration::from_secs(1)).layer(ours.0.clone()));
            rt.block_on(measure(&relaxed, w, Duration::from_secs(secs)))
        } else {
            rt.block_on(measure(&ours, w, Duration::from_secs(secs)))
        };
        println!(
            "ours, 64 callers: {:.0} ops/s, {:.2} us CPU/op",
            m.ops, m.cpu_us
        );
        return;
    }
    // Its own median: one run is as noisy as one of ours.
    let bench_runs: Vec<f64> = (0..if quick { 3 } else { 5 })
        .filter_map(|_| redis_benchmark(port, if quick { 200_000 } else { 1_000_000 }))
        .collect();
    let bench_rps = (!bench_runs.is_empty()).then(|| median(bench_runs));

    // The RelaxTimeout layer's cost: the same connection with and without it.
    let relaxed = Ours(RelaxTimeoutLayer::new(Duration::from_secs(1)).layer(ours.0.clone()));
    // Small differences drown in this VM's drift between rounds: many short
    // rounds, and the median of the ratio within each back-to-back pair.
    let (bare, layered) = compare(
        &rt,
        &ours,
        &relaxed,
        Workload::Get { callers: 64 },
        rounds * 4,
        window / 2,
    );
    let paired = median(
        bare.iter()
            .zip(&layered)
            .map(|(b, l)| l.ops / b.ops)
            .collect(),
    );

    // The whole endpoint stack (RelaxTimeout over Handoff over its own
    // connection) against the bare Connection, paired the same way.
    let stack = rt.block_on(async {
        let mut s = RelaxTimeoutLayer::new(Duration::from_secs(1))
            .layer(Handoff::new(Connector::new(), server.endpoint()));
        s.ready().await.expect("stack connects");
        Ours(s)
    });
    let (bare2, stacked) = compare(
        &rt,
        &ours,
        &stack,
        Workload::Get { callers: 64 },
        rounds * 4,
        window / 2,
    );
    let stack_paired = median(
        bare2
            .iter()
            .zip(&stacked)
            .map(|(b, l)| l.ops / b.ops)
            .collect(),
    );
    let alloc_stack = rt.block_on(allocs_per_get(&stack));

    let workloads = [
        Workload::Get { callers: 1 },
        Workload::Get { callers: 16 },
        Workload::Get { callers: 64 },
        Workload::Pipeline,
    ];
    let mut rows = Vec::new();
    for w in workloads {
        let a: Vec<Measured> = (0..rounds)
            .map(|_| rt.block_on(measure(&ours, w, window)))
            .collect();
        rows.push((w.name(), ops(&a), cpu(&a)));
    }

    let alloc_ours = rt.block_on(allocs_per_get(&ours));

    println!();
    match bench_rps {
        Some(rps) => {
            println!("redis-benchmark -c 1 -P 64 -t get: {rps:.0} ops/s (median)");
            let ours64 = rows[2].1;
            let pipe = rows[3].1;
            println!(
                "  ours, 64 callers: {:.2} of redis-benchmark; ours, pipeline: {:.2}",
                ours64 / rps,
                pipe / rps
            );
        }
        None => println!("redis-benchmark: not installed, skipped"),
    }
    println!("heap allocations per GET (64 callers): {alloc_ours:.2}");
    println!(
        "RelaxTimeout layer, GET with 64 callers: {:.0} ops/s vs bare Connection {:.0}; \
         median ratio of {} paired rounds: {paired:.3}; client CPU {:.2} vs {:.2} us/command",
        ops(&layered),
        ops(&bare),
        bare.len(),
        cpu(&layered),
        cpu(&bare)
    );
    println!(
        "RelaxTimeout + Handoff stack, GET with 64 callers: {:.0} ops/s vs bare Connection {:.0}; \
         median ratio of {} paired rounds: {stack_paired:.3}; client CPU {:.2} vs {:.2} us/command; \
         {alloc_stack:.2} allocations per GET",
        ops(&stacked),
        ops(&bare2),
        bare2.len(),
        cpu(&stacked),
        cpu(&bare2)
    );
    println!();
    println!("workload | ops/s | client CPU us/command");
    println!("---|---|---");
    for (name, a, c) in rows {
        println!("{name} | {a:.0} | {c:.2}");
    }
}

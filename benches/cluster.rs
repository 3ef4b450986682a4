//! The routing overhead of the Cluster layer on a one-node path.
//!
//! A real Redis Cluster of one primary (it owns all 16384 slots) is started
//! by the test support. In the same run, on the same node:
//!
//! - **node stack**, the reference: RelaxTimeout (1 s) over Handoff over a
//!   Connector, made for the node's endpoint by the same node maker the
//!   Cluster uses;
//! - **cluster**: `ClusterLayer` (default `ClusterConfig`) over that node
//!   maker: the same stack behind slot routing.
//!
//! Each has its own connection. Workloads: GET of a 64-byte value with 64
//! and with 1 concurrent callers (each task owns a clone of the service and
//! loops `ready().call()`), and pipelines of 100 GETs of keys in 100
//! different slots (on one node the pipeline is not split, but every
//! command is routed). Rounds are back-to-back pairs, alternating which
//! service goes first; the ratio is cluster / node stack per pair, and the
//! reported figure is the median of those ratios (this VM drifts between
//! rounds more than the difference being measured). Also: this process's
//! CPU time per command (redis-server is a child process and not counted)
//! and heap allocations per GET (64 callers) and per pipeline.
//!
//! The target of the Cluster layer (issue 6): a paired median ratio for
//! GET with 64 callers of at least 0.95 (at most 5% routing overhead).
//!
//! `cargo bench --bench cluster` (about 100 s); `-- --quick` takes
//! about 20 s. Environment: `BENCH_WORKERS` (tokio worker threads,
//! default 2). For profilers, one service alone: `BENCH_PROFILE=<seconds>`
//! runs it that long (for `perf record`), `BENCH_PROFILE_CALLS=<n>` makes
//! exactly n calls (for `valgrind --tool=callgrind`: the difference of two
//! runs with different n, divided by the difference in commands, is the
//! instruction count per command). `BENCH_PROFILE_TARGET=node` profiles
//! the node stack (default `cluster`); `BENCH_PROFILE_CALLERS` sets the
//! callers (default 64); `BENCH_PROFILE_WORKLOAD=pipeline` sends the
//! 100-GET pipelines instead (one caller).

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

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_layers::cluster::{ClusterConfig, ClusterLayer, NodeRole};
use redis_layers::handoff::Handoff;
use redis_layers::relax::{RelaxTimeout, RelaxTimeoutLayer};
use redis_layers::{cmd, Connector, Endpoint, Error, Pipeline, Request, Response, Value};
use support::cluster::{slot_of, RedisCluster};
use tower::{Layer, Service, ServiceExt};

// ===== the services under test =====

const GET_KEY: &str = "bench:get";
const VALUE_LEN: usize = 64;
const PIPELINE: usize = 100;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

type Node = RelaxTimeout<Handoff<Connector>>;

/// The per-node maker: what the Cluster makes for each node, and what the
/// reference is made with.
fn node_maker() -> impl Fn(Endpoint, NodeRole) -> Node + Clone + Send + Sync + 'static {
    let connector = Connector::new();
    move |endpoint: Endpoint, _role: NodeRole| {
        RelaxTimeoutLayer::new(COMMAND_TIMEOUT).layer(Handoff::new(connector.clone(), endpoint))
    }
}

/// 100 keys, each in a slot of its own.
fn pipeline_keys() -> Vec<String> {
    let mut slots = HashSet::new();
    let keys: Vec<String> = (0..)
        .map(|i| format!("bench:p:{i}"))
        .filter(|k| slots.insert(slot_of(k)))
        .take(PIPELINE)
        .collect();
    assert_eq!(slots.len(), PIPELINE);
    keys
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Get { callers: usize },
    Pipeline,
}

impl Workload {
    fn name(self) -> String {
        match self {
            Workload::Get { callers: 1 } => "GET, 1 caller".into(),
            Workload::Get { callers } => format!("GET, {callers} callers"),
            Workload::Pipeline => format!("pipeline of {PIPELINE} GETs ({PIPELINE} slots)"),
        }
    }

    fn tasks(self) -> usize {
        match self {
            Workload::Get { callers } => callers,
            Workload::Pipeline => 1,
        }
    }

    /// Commands per call.
    fn per_call(self) -> u64 {
        match self {
            Workload::Get { .. } => 1,
            Workload::Pipeline => PIPELINE as u64,
        }
    }
}

/// One call of the workload on `svc`: a GET or a whole pipeline, its reply
/// checked.
async fn call<S>(svc: &mut S, w: Workload, keys: &[String])
where
    S: Service<Request, Response = Response, Error = Error>,
{
    match w {
        Workload::Get { .. } => {
            let r = svc
                .ready()
                .await
                .expect("ready")
                .call(Request::from(cmd("GET").arg(GET_KEY)))
                .await;
            match r {
                Ok(Response::Value(Value::BulkString(b))) => assert_eq!(b.len(), VALUE_LEN),
                other => panic!("GET: unexpected reply {other:?}"),
            }
        }
        Workload::Pipeline => {
            let p: Pipeline = keys.iter().map(|k| cmd("GET").arg(k.as_str())).collect();
            let r = svc
                .ready()
                .await
                .expect("ready")
                .call(p.into())
                .await
                .and_then(Response::into_pipeline);
            match r {
                Ok(replies) => {
                    assert_eq!(replies.len(), PIPELINE);
                    for v in replies {
                        match v {
                            Ok(Value::BulkString(b)) => assert_eq!(b.len(), VALUE_LEN),
                            other => panic!("pipeline GET: unexpected reply {other:?}"),
                        }
                    }
                }
                Err(e) => panic!("pipeline: {e}"),
            }
        }
    }
}

// ===== measuring =====

/// One measurement window.
#[derive(Clone, Copy)]
struct Measured {
    /// Commands per second.
    ops: f64,
    /// This process's CPU time per command, in microseconds.
    cpu_us: f64,
}

/// Commands per second of `w` on clones of `svc` over `window`, after a
/// warm-up of a fifth of it.
async fn measure<S>(svc: &S, w: Workload, keys: &Arc<Vec<String>>, window: Duration) -> Measured
where
    S: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..w.tasks())
        .map(|_| {
            let (mut svc, ops, stop, keys) = (svc.clone(), ops.clone(), stop.clone(), keys.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    call(&mut svc, w, &keys).await;
                    ops.fetch_add(w.per_call(), Ordering::Relaxed);
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

/// Heap allocations per call of `w` (a GET, or a whole pipeline), with
/// `w`'s number of tasks.
async fn allocs_per_call<S>(svc: &S, w: Workload, keys: &Arc<Vec<String>>) -> f64
where
    S: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    let calls = match w {
        Workload::Get { .. } => 500,
        Workload::Pipeline => 2_000,
    };
    let run = |count: bool| {
        let (svc, keys) = (svc.clone(), keys.clone());
        async move {
            // Clones made before counting: their first use (the Cluster's
            // per-clone node table) is counted, as a caller would pay it.
            let clones: Vec<S> = (0..w.tasks()).map(|_| svc.clone()).collect();
            COUNTING.store(count, Ordering::SeqCst);
            let before = ALLOCS.load(Ordering::SeqCst);
            let handles: Vec<_> = clones
                .into_iter()
                .map(|mut svc| {
                    let keys = keys.clone();
                    tokio::spawn(async move {
                        for _ in 0..calls {
                            call(&mut svc, w, &keys).await;
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
    run(true).await as f64 / (w.tasks() * calls) as f64
}

/// Paired rounds of one workload.
struct Compared {
    node: Vec<Measured>,
    cluster: Vec<Measured>,
}

impl Compared {
    fn ratios(&self) -> Vec<f64> {
        self.node
            .iter()
            .zip(&self.cluster)
            .map(|(n, c)| c.ops / n.ops)
            .collect()
    }

    fn ratio(&self) -> f64 {
        median(self.ratios())
    }

    /// The spread of the pair ratios: (first quartile, third quartile).
    fn quartiles(&self) -> (f64, f64) {
        let mut r = self.ratios();
        r.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |f: f64| r[((r.len() - 1) as f64 * f).round() as usize];
        (q(0.25), q(0.75))
    }
}

fn ops(v: &[Measured]) -> f64 {
    median(v.iter().map(|m| m.ops).collect())
}

fn cpu(v: &[Measured]) -> f64 {
    median(v.iter().map(|m| m.cpu_us).collect())
}

/// `rounds` back-to-back pairs, alternating which service goes first.
fn compare<A, B>(
    rt: &tokio::runtime::Runtime,
    node: &A,
    cluster: &B,
    w: Workload,
    keys: &Arc<Vec<String>>,
    rounds: usize,
    window: Duration,
) -> Compared
where
    A: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
    A::Future: Send,
    B: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
    B::Future: Send,
{
    let mut c = Compared {
        node: Vec::new(),
        cluster: Vec::new(),
    };
    for r in 0..rounds {
        rt.block_on(async {
            if r % 2 == 0 {
                c.node.push(measure(node, w, keys, window).await);
                c.cluster.push(measure(cluster, w, keys, window).await);
            } else {
                c.cluster.push(measure(cluster, w, keys, window).await);
                c.node.push(measure(node, w, keys, window).await);
            }
        });
    }
    c
}

// ===== profiling =====

/// What `BENCH_PROFILE` / `BENCH_PROFILE_CALLS` ask for.
#[derive(Clone, Copy)]
struct Profile {
    w: Workload,
    /// Run this long, or
    secs: Option<u64>,
    /// make exactly this many calls (for instruction counts: two runs with
    /// different counts, the difference divided by the difference in calls).
    calls: Option<u64>,
}

impl Profile {
    fn from_env() -> Option<Self> {
        let num = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        let (secs, calls) = (num("BENCH_PROFILE"), num("BENCH_PROFILE_CALLS"));
        if secs.is_none() && calls.is_none() {
            return None;
        }
        let pipeline = std::env::var("BENCH_PROFILE_WORKLOAD").is_ok_and(|w| w == "pipeline");
        let w = if pipeline {
            Workload::Pipeline
        } else {
            Workload::Get {
                callers: num("BENCH_PROFILE_CALLERS").unwrap_or(64) as usize,
            }
        };
        Some(Profile { w, secs, calls })
    }
}

async fn profile<S>(svc: &S, target: &str, p: Profile, keys: &Arc<Vec<String>>)
where
    S: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    let w = p.w;
    if let Some(secs) = p.secs {
        let m = measure(svc, w, keys, Duration::from_secs(secs)).await;
        println!(
            "{target}, {}: {:.0} commands/s, {:.2} us CPU/command",
            w.name(),
            m.ops,
            m.cpu_us
        );
        return;
    }
    let calls = p.calls.unwrap_or(0);
    let per_task = calls.div_ceil(w.tasks() as u64);
    let (t0, cpu0) = (Instant::now(), cpu_ns());
    let handles: Vec<_> = (0..w.tasks())
        .map(|_| {
            let (mut svc, keys) = (svc.clone(), keys.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    call(&mut svc, w, &keys).await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("profile task");
    }
    let n = (per_task * w.tasks() as u64 * w.per_call()) as f64;
    println!(
        "{target}, {}: {} calls, {n:.0} commands in {:.2} s, {:.2} us CPU/command",
        w.name(),
        per_task * w.tasks() as u64,
        t0.elapsed().as_secs_f64(),
        (cpu_ns() - cpu0) as f64 / 1_000.0 / n
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let workers: usize = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .filter(|w| *w > 0)
        .unwrap_or(2);
    // (pairs, window) for GET with 64 callers, then for the others.
    let ((pairs64, window64), (pairs, window)) = if quick {
        (
            (20, Duration::from_millis(150)),
            (6, Duration::from_millis(250)),
        )
    } else {
        (
            (40, Duration::from_millis(500)),
            (10, Duration::from_secs(1)),
        )
    };

    let began = Instant::now();
    let cluster = RedisCluster::builder().primaries(1).start();
    let endpoint = cluster.endpoint(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let keys = Arc::new(pipeline_keys());

    let (node, routed) = rt.block_on(async {
        let value = vec![b'x'; VALUE_LEN];
        let mut node = node_maker()(endpoint.clone(), NodeRole::Primary);
        let mut routed = ClusterLayer::new(vec![endpoint.clone()])
            .config(ClusterConfig::default())
            .layer(node_maker());
        let mut setup: Pipeline = keys
            .iter()
            .map(|k| cmd("SET").arg(k.as_str()).arg(value.as_slice()))
            .collect();
        setup = setup.cmd(cmd("SET").arg(GET_KEY).arg(value.as_slice()));
        node.ready()
            .await
            .expect("node stack connects")
            .call(setup.into())
            .await
            .expect("SET the keys");
        // The Cluster reads the topology on its first poll_ready.
        routed
            .ready()
            .await
            .expect("cluster topology")
            .call(cmd("GET").arg(GET_KEY).into())
            .await
            .expect("GET through the cluster");
        (node, routed)
    });
    let map = routed.slot_map();
    assert_eq!(
        map.primaries(),
        std::slice::from_ref(&endpoint),
        "one node: {map:?}"
    );
    assert!(map.is_complete(), "the node owns every slot: {map:?}");

    println!(
        "redis-layers cluster routing overhead ({}): one-primary Redis Cluster \
         (redis-server on {endpoint}, all 16384 slots), tokio multi-thread with \
         {workers} workers, {VALUE_LEN}-byte values; set up in {:.1} s",
        if quick { "quick" } else { "full" },
        began.elapsed().as_secs_f64()
    );

    // For profilers: one service alone.
    if let Some(mode) = Profile::from_env() {
        let target = std::env::var("BENCH_PROFILE_TARGET").unwrap_or_else(|_| "cluster".into());
        if target == "node" {
            rt.block_on(profile(&node, &target, mode, &keys));
        } else {
            rt.block_on(profile(&routed, &target, mode, &keys));
        }
        return;
    }

    let workloads = [
        (Workload::Get { callers: 64 }, pairs64, window64),
        (Workload::Get { callers: 1 }, pairs, window),
        (Workload::Pipeline, pairs, window),
    ];
    let mut results = Vec::new();
    for (w, n, win) in workloads {
        let c = compare(&rt, &node, &routed, w, &keys, n, win);
        results.push((w, n, win, c));
    }
    let (allocs, pipe_allocs) = rt.block_on(async {
        let get = Workload::Get { callers: 64 };
        (
            (
                allocs_per_call(&node, get, &keys).await,
                allocs_per_call(&routed, get, &keys).await,
            ),
            (
                allocs_per_call(&node, Workload::Pipeline, &keys).await,
                allocs_per_call(&routed, Workload::Pipeline, &keys).await,
            ),
        )
    });
    let stats = routed.stats();

    println!();
    println!(
        "workload | node stack ops/s | cluster ops/s | paired median ratio (IQR) | \
         CPU us/command node / cluster"
    );
    println!("---|---|---|---|---");
    for (w, n, win, c) in &results {
        let (q1, q3) = c.quartiles();
        println!(
            "{} ({n} pairs of {win:?}) | {:.0} | {:.0} | {:.3} ({q1:.3}-{q3:.3}) | {:.2} / {:.2}",
            w.name(),
            ops(&c.node),
            ops(&c.cluster),
            c.ratio(),
            cpu(&c.node),
            cpu(&c.cluster),
        );
    }
    println!();
    println!(
        "heap allocations per GET (64 callers): node stack {:.2}, cluster {:.2}",
        allocs.0, allocs.1
    );
    println!(
        "heap allocations per pipeline of {PIPELINE} GETs: node stack {:.1}, cluster {:.1}",
        pipe_allocs.0, pipe_allocs.1
    );
    println!("cluster stats: {stats:?}");
    let get64 = results[0].3.ratio();
    println!(
        "GET, 64 callers: the cluster reaches {get64:.3} of the node stack \
         (target >= 0.95: {}); total {:.0} s",
        if get64 >= 0.95 { "met" } else { "MISSED" },
        began.elapsed().as_secs_f64()
    );
}

//! redis-layers side by side with redis-rs and fred, in one process.
//!
//! The clients, each on its own connection to the same `redis-server`
//! (started here on a free port, and a 3-primary cluster for the cluster
//! workload):
//!
//! - `conn`: our bare [`Connection`], one clone per task;
//! - `stack`: a `ServiceBuilder` stack (Retry, RelaxTimeout, Handoff over a
//!   Connector), one clone per task;
//! - `service`: the [`Client`]'s own stack ([`Client::service`]), one
//!   clone per task: the reference the `Client` is held to;
//! - `Client`: the [`Client`] itself, its typed helpers, shared by all tasks;
//! - `redis-rs`: a `MultiplexedConnection` (`ClusterConnection` in the
//!   cluster), one clone per task;
//! - `fred`: one `fred` client, one clone per task;
//! - `redis-benchmark -c 1 -P 64 -t get`: the server's own pipelined
//!   ceiling, for GET with 64 callers.
//!
//! Workloads: GET of a 64-byte value with 1, 64 and 512 callers, pipelines
//! of 100 GETs (16 tasks), SET of 100 KiB (16 tasks), MGET of 100 keys (16
//! tasks), and GET with 64 callers on the cluster. Rounds interleave the
//! clients and rotate their order; each cell is the median of the rounds,
//! each ratio the median of the per-round ratios (a round's clients run
//! back to back, so the machine's drift between rounds cancels out).
//!
//! Per client and workload: operations per second (a pipeline counts its
//! 100 GETs), the latency of a call (p50, p99; a pipeline is one call),
//! this process's CPU time per operation (redis-server is another process)
//! and heap allocations per operation (a counting global allocator, during
//! the measured windows), and the machine's load average at start and end.
//!
//! ```text
//! cargo run --release -p redis-layers-compare -- --quick   # about 2 minutes
//! cargo run --release -p redis-layers-compare              # the full run
//! ```
//!
//! Options: `--workers N` (tokio worker threads, default 2), `--only NAME`
//! (workloads whose name contains NAME), `--rounds N` (default 7, 3 with
//! `--quick`; more rounds, a tighter median), `--profile CLIENT,WORKLOAD,SECS`
//! (one client alone for a profiler, e.g. `Client,get1,10`; workloads get1,
//! get64, get512, pipeline, set, mget).

// The one unsafe piece is the counting allocator (benches/common).
#![deny(unsafe_code)]

#[path = "../../common/ceiling.rs"]
mod ceiling;
#[path = "../../common/counting_alloc.rs"]
#[allow(unsafe_code)]
mod counting_alloc;
#[path = "../../common/cpu.rs"]
mod cpu;
#[path = "../../../tests/support/mod.rs"]
#[allow(unexpected_cfgs, dead_code, clippy::all)]
mod support;

use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_layers::handoff::HandoffLayer;
use redis_layers::relax::RelaxTimeoutLayer;
use redis_layers::retry::RetryLayer;
use redis_layers::{cmd, Client, Connection, Connector, Pipeline, Request, Response, Value};
use tower::{Service, ServiceBuilder, ServiceExt};

use ceiling::redis_benchmark;
use counting_alloc::{ALLOCS, COUNTING};
use cpu::cpu_ns;

const KEY: &str = "key:__rand_int__"; // what `redis-benchmark -t get` reads
const VALUE_LEN: usize = 64;
const PIPELINE: usize = 100;
const MGET: usize = 100;
const BIG: usize = 100 * 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

// ===== workloads =====

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Get,
    Pipeline,
    SetBig,
    Mget,
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    op: Op,
    tasks: usize,
    cluster: bool,
}

const WORKLOADS: [Workload; 7] = [
    Workload {
        name: "GET, 1 caller",
        op: Op::Get,
        tasks: 1,
        cluster: false,
    },
    Workload {
        name: "GET, 64 callers",
        op: Op::Get,
        tasks: 64,
        cluster: false,
    },
    Workload {
        name: "GET, 512 callers",
        op: Op::Get,
        tasks: 512,
        cluster: false,
    },
    Workload {
        name: "pipeline of 100 GETs, 16 tasks",
        op: Op::Pipeline,
        tasks: 16,
        cluster: false,
    },
    Workload {
        name: "SET 100 KiB, 16 tasks",
        op: Op::SetBig,
        tasks: 16,
        cluster: false,
    },
    Workload {
        name: "MGET of 100 keys, 16 tasks",
        op: Op::Mget,
        tasks: 16,
        cluster: false,
    },
    Workload {
        name: "cluster (3 primaries): GET, 64 callers",
        op: Op::Get,
        tasks: 64,
        cluster: true,
    },
];

impl Workload {
    /// Operations one call counts for.
    fn per_call(&self) -> u64 {
        match self.op {
            Op::Pipeline => PIPELINE as u64,
            _ => 1,
        }
    }
}

/// What the calls send: keys (one per task in the cluster, so the calls
/// spread over the primaries), the MGET keys, the big value.
struct Data {
    get_keys: Vec<String>,
    mget_keys: Vec<String>,
    big: Bytes,
}

impl Data {
    fn new(cluster: bool) -> Data {
        let get_keys = if cluster {
            (0..64).map(|i| format!("bench:get:{i}")).collect()
        } else {
            vec![KEY.to_string()]
        };
        Data {
            get_keys,
            mget_keys: (0..MGET).map(|i| format!("bench:mget:{i}")).collect(),
            big: Bytes::from(vec![b'v'; BIG]),
        }
    }

    fn key(&self, task: usize) -> &str {
        &self.get_keys[task % self.get_keys.len()]
    }
}

// ===== the clients =====

trait Bench: Clone + Send + Sync + 'static {
    fn call(&mut self, op: Op, d: &Data, task: usize) -> impl Future<Output = ()> + Send;
}

fn check_get(b: Option<Bytes>) {
    assert_eq!(b.map(|b| b.len()), Some(VALUE_LEN), "GET reply");
}

/// Our tower services, one clone per task, driven with `ready().call()`.
#[derive(Clone)]
struct Tower<S>(S);

impl<S> Bench for Tower<S>
where
    S: Service<Request, Response = Response, Error = redis_layers::Error>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    async fn call(&mut self, op: Op, d: &Data, task: usize) {
        let req: Request = match op {
            Op::Get => cmd("GET").arg(d.key(task)).into(),
            Op::Pipeline => (0..PIPELINE)
                .map(|_| cmd("GET").arg(d.key(task)))
                .collect::<Pipeline>()
                .into(),
            Op::SetBig => cmd("SET").arg(d.key(task)).arg(d.big.clone()).into(),
            Op::Mget => cmd("MGET").with_args(&d.mget_keys).into(),
        };
        let svc = self.0.ready().await.expect("ready");
        let resp = svc.call(req).await.expect("call");
        match (op, resp) {
            (Op::Get, Response::Value(Value::BulkString(b))) => check_get(Some(b)),
            (Op::Pipeline, Response::Pipeline(r)) => assert_eq!(r.len(), PIPELINE),
            (Op::SetBig, Response::Value(_)) => {}
            (Op::Mget, Response::Value(Value::Array(a))) => assert_eq!(a.len(), MGET),
            (op, other) => panic!("{op:?}: unexpected reply {other:?}"),
        }
    }
}

/// The `Client`, shared by every task (a clone is the same client).
#[derive(Clone)]
struct Ours(Client);

impl Bench for Ours {
    async fn call(&mut self, op: Op, d: &Data, task: usize) {
        let c = &self.0;
        match op {
            Op::Get => check_get(c.get(d.key(task)).await.expect("GET")),
            Op::Pipeline => {
                let mut p = c.pipeline();
                for _ in 0..PIPELINE {
                    p.get(d.key(task));
                }
                let r: Vec<Bytes> = p.query().await.expect("pipeline");
                assert_eq!(r.len(), PIPELINE);
            }
            Op::SetBig => c.set(d.key(task), d.big.clone()).await.expect("SET"),
            Op::Mget => {
                let r: Vec<Option<Bytes>> = c.mget(&d.mget_keys).await.expect("MGET");
                assert_eq!(r.len(), MGET);
            }
        }
    }
}

/// redis-rs: a `MultiplexedConnection` or a `ClusterConnection`.
#[derive(Clone)]
struct RedisRs<C>(C);

impl<C> Bench for RedisRs<C>
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn call(&mut self, op: Op, d: &Data, task: usize) {
        let c = &mut self.0;
        match op {
            Op::Get => {
                let v: Option<Bytes> = redis::cmd("GET")
                    .arg(d.key(task))
                    .query_async(c)
                    .await
                    .expect("GET");
                check_get(v)
            }
            Op::Pipeline => {
                let mut p = redis::pipe();
                for _ in 0..PIPELINE {
                    p.cmd("GET").arg(d.key(task));
                }
                let r: Vec<Bytes> = p.query_async(c).await.expect("pipeline");
                assert_eq!(r.len(), PIPELINE);
            }
            Op::SetBig => {
                let () = redis::cmd("SET")
                    .arg(d.key(task))
                    .arg(&d.big[..])
                    .query_async(c)
                    .await
                    .expect("SET");
            }
            Op::Mget => {
                let r: Vec<Option<Bytes>> = redis::cmd("MGET")
                    .arg(&d.mget_keys)
                    .query_async(c)
                    .await
                    .expect("MGET");
                assert_eq!(r.len(), MGET);
            }
        }
    }
}

/// fred: one client (one connection, or one per cluster node).
#[derive(Clone)]
struct Fred(fred::clients::Client);

impl Bench for Fred {
    async fn call(&mut self, op: Op, d: &Data, task: usize) {
        use fred::interfaces::KeysInterface;
        let c = &self.0;
        match op {
            Op::Get => check_get(c.get(d.key(task)).await.expect("GET")),
            Op::Pipeline => {
                let p = c.pipeline();
                for _ in 0..PIPELINE {
                    let () = p.get(d.key(task)).await.expect("queue");
                }
                let r: Vec<Bytes> = p.all().await.expect("pipeline");
                assert_eq!(r.len(), PIPELINE);
            }
            Op::SetBig => {
                let () = c
                    .set(d.key(task), d.big.clone(), None, None, false)
                    .await
                    .expect("SET");
            }
            Op::Mget => {
                let keys: Vec<&str> = d.mget_keys.iter().map(String::as_str).collect();
                let r: Vec<Option<Bytes>> = c.mget(keys).await.expect("MGET");
                assert_eq!(r.len(), MGET);
            }
        }
    }
}

/// Every client of one deployment.
struct Clients {
    conn: Option<Tower<Connection>>,
    stack: Option<Tower<redis_layers::client::BoxService>>,
    service: Tower<redis_layers::client::BoxService>,
    client: Ours,
    redis_rs: Option<RedisRs<redis::aio::MultiplexedConnection>>,
    redis_rs_cluster: Option<RedisRs<redis::cluster_async::ClusterConnection>>,
    fred: Fred,
}

const NAMES: [&str; 6] = ["conn", "stack", "service", "Client", "redis-rs", "fred"];

// ===== measuring =====

/// One client's measured window.
#[derive(Clone, Default)]
struct Measured {
    ops: f64,
    cpu_us: f64,
    allocs: f64,
    /// Call latencies in microseconds.
    lat: Vec<u32>,
}

async fn measure<C: Bench>(
    client: &C,
    w: Workload,
    data: &Arc<Data>,
    window: Duration,
) -> Measured {
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let recording = Arc::new(AtomicBool::new(false));
    // Room for the latencies is made before the window: pushes inside it
    // allocate nothing.
    let room = (1usize << 20) / w.tasks;
    let handles: Vec<_> = (0..w.tasks)
        .map(|task| {
            let (mut c, ops, stop, rec, d) = (
                client.clone(),
                ops.clone(),
                stop.clone(),
                recording.clone(),
                data.clone(),
            );
            let mut lat = Vec::with_capacity(room);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    c.call(w.op, &d, task).await;
                    if rec.load(Ordering::Relaxed) && lat.len() < lat.capacity() {
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    ops.fetch_add(w.per_call(), Ordering::Relaxed);
                }
                lat
            })
        })
        .collect();
    tokio::time::sleep(window / 4).await;
    recording.store(true, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let (c0, a0, t0, cpu0) = (
        ops.load(Ordering::SeqCst),
        ALLOCS.load(Ordering::SeqCst),
        Instant::now(),
        cpu_ns(),
    );
    tokio::time::sleep(window).await;
    let (c1, a1, t1, cpu1) = (
        ops.load(Ordering::SeqCst),
        ALLOCS.load(Ordering::SeqCst),
        Instant::now(),
        cpu_ns(),
    );
    COUNTING.store(false, Ordering::SeqCst);
    recording.store(false, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.expect("bench task"));
    }
    let n = (c1 - c0).max(1) as f64;
    Measured {
        ops: n / (t1 - t0).as_secs_f64(),
        cpu_us: cpu1.saturating_sub(cpu0) as f64 / 1_000.0 / n,
        allocs: a1.saturating_sub(a0) as f64 / n,
        lat,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

// ===== setting up =====

struct Options {
    quick: bool,
    workers: usize,
    only: Option<String>,
    /// Rounds instead of the plan's (more for a tighter median).
    rounds: Option<usize>,
    profile: Option<(String, String, u64)>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    Options {
        quick: args.iter().any(|a| a == "--quick"),
        workers: value("--workers").and_then(|w| w.parse().ok()).unwrap_or(2),
        only: value("--only"),
        rounds: value("--rounds")
            .and_then(|r| r.parse().ok())
            .filter(|&r| r > 0),
        profile: value("--profile").and_then(|p| {
            let mut it = p.split(',');
            Some((
                it.next()?.to_string(),
                it.next()?.to_string(),
                it.next()?.parse().ok()?,
            ))
        }),
    }
}

async fn fill(client: &Client, data: &Data) {
    for k in &data.get_keys {
        client
            .set(k.as_str(), vec![b'x'; VALUE_LEN])
            .await
            .expect("SET");
    }
    for k in &data.mget_keys {
        client
            .set(k.as_str(), vec![b'm'; VALUE_LEN])
            .await
            .expect("SET");
    }
}

async fn standalone(port: u16) -> Clients {
    let url = format!("redis://127.0.0.1:{port}/");
    let endpoint = redis_layers::Endpoint::tcp("127.0.0.1", port);
    let conn = Connector::new()
        .connect(endpoint.clone())
        .await
        .expect("connect");
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new().command_timeout(TIMEOUT))
        .layer(RelaxTimeoutLayer::new(TIMEOUT))
        .layer(HandoffLayer::new(endpoint))
        .service(Connector::new());
    let client = Client::builder(&url)
        .expect("url")
        .command_timeout(TIMEOUT)
        .build()
        .await
        .expect("client");
    let service = Client::builder(&url)
        .expect("url")
        .command_timeout(TIMEOUT)
        .build()
        .await
        .expect("client")
        .service();
    let rr = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(TIMEOUT))
                .set_connection_timeout(Some(TIMEOUT)),
        )
        .await
        .expect("redis-rs connect");
    Clients {
        conn: Some(Tower(conn)),
        stack: Some(Tower(redis_layers::client::BoxService::new(stack))),
        service: Tower(service),
        client: Ours(client),
        redis_rs: Some(RedisRs(rr)),
        redis_rs_cluster: None,
        fred: fred(&url).await,
    }
}

async fn cluster(ports: &[u16]) -> Clients {
    let url = format!("redis://127.0.0.1:{}/", ports[0]);
    let client = Client::builder(&url)
        .expect("url")
        .command_timeout(TIMEOUT)
        .build()
        .await
        .expect("cluster client");
    assert!(client.is_cluster());
    let service = Client::builder(&url)
        .expect("url")
        .command_timeout(TIMEOUT)
        .build()
        .await
        .expect("cluster client")
        .service();
    let nodes: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    let rr = redis::cluster::ClusterClient::builder(nodes)
        .response_timeout(TIMEOUT)
        .build()
        .expect("redis-rs cluster")
        .get_async_connection()
        .await
        .expect("redis-rs cluster connect");
    let fred_url = format!("redis-cluster://127.0.0.1:{}", ports[0]);
    Clients {
        conn: None,
        stack: None,
        service: Tower(service),
        client: Ours(client),
        redis_rs: None,
        redis_rs_cluster: Some(RedisRs(rr)),
        fred: fred(&fred_url).await,
    }
}

async fn fred(url: &str) -> Fred {
    use fred::interfaces::ClientLike;
    let config = fred::types::config::Config::from_url(url).expect("fred url");
    let client = fred::types::Builder::from_config(config)
        .build()
        .expect("fred client");
    client.init().await.expect("fred connect");
    Fred(client)
}

impl Clients {
    /// Client `i` (of [`NAMES`]) measured once; `None` when it is not in
    /// this deployment.
    async fn measure(
        &self,
        i: usize,
        w: Workload,
        d: &Arc<Data>,
        window: Duration,
    ) -> Option<Measured> {
        Some(match i {
            0 => measure(self.conn.as_ref()?, w, d, window).await,
            1 => measure(self.stack.as_ref()?, w, d, window).await,
            2 => measure(&self.service, w, d, window).await,
            3 => measure(&self.client, w, d, window).await,
            4 => match (&self.redis_rs, &self.redis_rs_cluster) {
                (Some(c), _) => measure(c, w, d, window).await,
                (_, Some(c)) => measure(c, w, d, window).await,
                _ => return None,
            },
            _ => measure(&self.fred, w, d, window).await,
        })
    }
}

// ===== the run =====

/// One workload's rounds: per client, its measurements.
struct Rows {
    per_client: Vec<Vec<Measured>>,
    bench: Vec<f64>,
}

/// How long a run is.
struct Plan {
    rounds: usize,
    window: Duration,
    /// Requests of one `redis-benchmark` run.
    bench_requests: usize,
}

fn run_workload(
    rt: &tokio::runtime::Runtime,
    clients: &Clients,
    w: Workload,
    data: &Arc<Data>,
    plan: &Plan,
    bench_port: Option<u16>,
) -> Rows {
    let Plan {
        rounds,
        window,
        bench_requests,
    } = *plan;
    let mut per_client = vec![Vec::new(); NAMES.len()];
    let mut bench = Vec::new();
    for r in 0..rounds {
        // Rotated order; redis-benchmark takes its turn among them.
        let slots = NAMES.len() + 1;
        for k in 0..slots {
            let i = (k + r) % slots;
            if i == NAMES.len() {
                if let Some(port) = bench_port {
                    bench.extend(redis_benchmark(port, bench_requests));
                }
                continue;
            }
            if let Some(m) = rt.block_on(clients.measure(i, w, data, window)) {
                per_client[i].push(m);
            }
        }
    }
    Rows { per_client, bench }
}

fn print_workload(w: Workload, rows: &Rows) -> Vec<(String, f64)> {
    let reference = &rows.per_client[4];
    let ratio_to = |m: &[Measured], base: &[Measured]| {
        median(m.iter().zip(base).map(|(a, b)| a.ops / b.ops).collect())
    };
    println!();
    println!("### {}", w.name);
    println!();
    println!("| client | ops/s | vs redis-rs | p50 us | p99 us | CPU us/op | allocs/op |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut summary = Vec::new();
    for (i, ms) in rows.per_client.iter().enumerate() {
        if ms.is_empty() {
            continue;
        }
        let mut lat: Vec<u32> = ms.iter().flat_map(|m| m.lat.iter().copied()).collect();
        lat.sort_unstable();
        let ops = median(ms.iter().map(|m| m.ops).collect());
        let ratio = ratio_to(ms, reference);
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} |",
            NAMES[i],
            ops,
            ratio,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            median(ms.iter().map(|m| m.cpu_us).collect()),
            median(ms.iter().map(|m| m.allocs).collect()),
        );
        summary.push((format!("{}: {} ops/s", w.name, NAMES[i]), ops));
    }
    if !rows.bench.is_empty() {
        let b = median(rows.bench.clone());
        println!("| redis-benchmark -c 1 -P 64 | {b:.0} | {:.2} | | | | |", {
            b / median(reference.iter().map(|m| m.ops).collect())
        });
        let conn = &rows.per_client[0];
        if !conn.is_empty() {
            let c = median(conn.iter().map(|m| m.ops).collect());
            println!();
            println!("conn / redis-benchmark -c 1 -P 64: {:.2}", c / b);
        }
    }
    let client = &rows.per_client[3];
    let service = &rows.per_client[2];
    if !client.is_empty() && !service.is_empty() {
        println!();
        println!(
            "Client / service (the same stack held per task): {:.2} (median of per-round ratios)",
            ratio_to(client, service)
        );
    }
    summary
}

fn main() {
    let o = options();
    let plan = if o.quick {
        Plan {
            rounds: 3,
            window: Duration::from_millis(300),
            bench_requests: 200_000,
        }
    } else {
        Plan {
            rounds: 7,
            window: Duration::from_secs(1),
            bench_requests: 1_000_000,
        }
    };
    let plan = Plan {
        rounds: o.rounds.unwrap_or(plan.rounds),
        ..plan
    };
    let (rounds, window) = (plan.rounds, plan.window);
    let load_start = load_average();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.workers)
        .enable_all()
        .build()
        .expect("runtime");
    let server = support::RedisServer::start();
    let port = server.port();
    let selected: Vec<Workload> = WORKLOADS
        .iter()
        .copied()
        .filter(|w| o.only.as_ref().is_none_or(|n| w.name.contains(n.as_str())))
        .collect();
    let want_cluster = o.profile.is_none() && selected.iter().any(|w| w.cluster);
    let cluster_nodes = want_cluster.then(|| {
        support::cluster::RedisCluster::builder()
            .primaries(3)
            .start()
    });

    let plain = Arc::new(Data::new(false));
    let clients = rt.block_on(async {
        let c = standalone(port).await;
        fill(&c.client.0, &plain).await;
        c
    });
    let clustered = Arc::new(Data::new(true));
    let cluster_clients = cluster_nodes.as_ref().map(|cl| {
        rt.block_on(async {
            let c = cluster(&cl.ports()[..3]).await;
            fill(&c.client.0, &clustered).await;
            c
        })
    });

    if let Some((name, workload, secs)) = &o.profile {
        let i = NAMES.iter().position(|n| n == name).expect("client name");
        let w = match workload.as_str() {
            "get1" => WORKLOADS[0],
            "get64" => WORKLOADS[1],
            "get512" => WORKLOADS[2],
            "pipeline" => WORKLOADS[3],
            "set" => WORKLOADS[4],
            "mget" => WORKLOADS[5],
            _ => panic!("profile workloads: get1, get64, get512, pipeline, set, mget"),
        };
        let m = rt
            .block_on(clients.measure(i, w, &plain, Duration::from_secs(*secs)))
            .expect("client");
        println!(
            "{name}, {}: {:.0} ops/s, {:.2} us CPU/op, {:.2} allocs/op",
            w.name, m.ops, m.cpu_us, m.allocs
        );
        return;
    }

    println!(
        "## redis-layers vs redis-rs and fred ({} run)",
        if o.quick { "quick" } else { "full" }
    );
    println!();
    println!(
        "redis-server {} on 127.0.0.1 (this machine, {} cores), tokio multi-thread with {} workers, \
         {VALUE_LEN}-byte GET values; {rounds} interleaved rounds of {window:?} per client, \
         order rotated each round; load average at start: {load_start}.",
        server_version(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.workers,
    );
    println!(
        "Clients: conn = our Connection, stack = ServiceBuilder (Retry, RelaxTimeout, Handoff) \
         one clone per task, service = the Client's stack (Client::service) one clone per task, \
         Client = the Client shared by all tasks, redis-rs = MultiplexedConnection \
         (ClusterConnection in the cluster), fred = fred's Client."
    );
    for w in selected {
        let (c, d) = if w.cluster {
            (cluster_clients.as_ref().expect("cluster"), &clustered)
        } else {
            (&clients, &plain)
        };
        let bench_port = (w.op == Op::Get && w.tasks == 64 && !w.cluster).then_some(port);
        let rows = run_workload(&rt, c, w, d, &plan, bench_port);
        print_workload(w, &rows);
    }
    println!();
    println!("Load average at end: {}.", load_average());
    drop(server);
}

fn server_version() -> String {
    Command::new(support::redis_server_bin())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("v=").map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}

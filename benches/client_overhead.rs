//! The `Client`'s own cost per call, without a network: the same in-memory
//! stack (it answers a GET at once) called through the `Client` (typed
//! `get`, and untyped `send`; shared by every task) and through its
//! `BoxService` held one clone per task (`ready().call()`), with 64 tasks
//! and with one, on 2 worker threads, in interleaved rounds. What it isolates is what the comparison
//! bench (`benches/compare`) can only see through network noise: the
//! `Client`'s warm-clone slots, its boxing and its reply conversion.
//!
//! Prints CPU per call (ns), allocations per call and the Client/service
//! ratio of CPU per call (median of per-round ratios).
//!
//! `cargo bench --bench client_overhead` takes about 20 seconds.
//! `BENCH_PROFILE=client|send|service`: one variant alone, one task, for a
//! profiler.

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/stats.rs"]
mod stats;

use counting_alloc::{ALLOCS, COUNTING};
use cpu::cpu_ns;
use stats::median;

use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use redis_layers::client::{BoxService, Client};
use redis_layers::{cmd, Request, Response, Value};
use tower::{Service, ServiceExt};

const ROUNDS: usize = 9;
/// Calls per round, split over the tasks.
const CALLS: usize = 640_000;

/// A stack that answers every request at once with a 64-byte value.
#[derive(Clone)]
struct AtOnce(Bytes);

impl Service<Request> for AtOnce {
    type Response = Response;
    type Error = redis_layers::Error;
    type Future = std::future::Ready<redis_layers::Result<Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<redis_layers::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request) -> Self::Future {
        std::future::ready(Ok(Response::Value(Value::BulkString(self.0.clone()))))
    }
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Service,
    Client,
    Send,
}

/// One round: `tasks` tasks share `CALLS` GETs; CPU ns and allocations per
/// call.
async fn round(via: Via, client: &Client, tasks: usize) -> (f64, f64) {
    let per_task = CALLS / tasks;
    let (cpu0, allocs0) = (cpu_ns(), ALLOCS.load(Ordering::Relaxed));
    COUNTING.store(true, Ordering::Relaxed);
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut svc = client.service();
                for _ in 0..per_task {
                    let v = match via {
                        Via::Client => client.get::<Option<Bytes>>("k").await.unwrap(),
                        Via::Send => match client.send(cmd("GET").arg("k")).await.unwrap() {
                            Response::Value(Value::BulkString(b)) => Some(b),
                            other => panic!("{other:?}"),
                        },
                        Via::Service => {
                            let req = cmd("GET").arg("k").into();
                            match svc.ready().await.unwrap().call(req).await.unwrap() {
                                Response::Value(Value::BulkString(b)) => Some(b),
                                other => panic!("{other:?}"),
                            }
                        }
                    };
                    assert_eq!(v.map(|b| b.len()), Some(64));
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    COUNTING.store(false, Ordering::Relaxed);
    let calls = (per_task * tasks) as f64;
    (
        (cpu_ns() - cpu0) as f64 / calls,
        (ALLOCS.load(Ordering::Relaxed) - allocs0) as f64 / calls,
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::from_service(BoxService::new(AtOnce(Bytes::from_static(&[b'v'; 64]))));
        if let Ok(v) = std::env::var("BENCH_PROFILE") {
            let via = match v.as_str() {
                "client" => Via::Client,
                "send" => Via::Send,
                _ => Via::Service,
            };
            for _ in 0..30 {
                round(via, &client, 1).await;
            }
            return;
        }
        println!("The Client's own cost per GET (in-memory stack, 2 workers), {ROUNDS} rounds:");
        for tasks in [64, 1] {
            // Warm-up: the slots fill, the allocator settles.
            round(Via::Client, &client, tasks).await;
            round(Via::Service, &client, tasks).await;
            let mut cpu = [Vec::new(), Vec::new(), Vec::new()];
            let mut allocs = [Vec::new(), Vec::new(), Vec::new()];
            let mut ratios = Vec::new();
            for r in 0..ROUNDS {
                // Rotated order: neither always runs first.
                let order = if r % 2 == 0 {
                    [Via::Service, Via::Client, Via::Send]
                } else {
                    [Via::Send, Via::Client, Via::Service]
                };
                let mut this = [0.0; 3];
                for via in order {
                    let (c, a) = round(via, &client, tasks).await;
                    let i = via as usize;
                    this[i] = c;
                    cpu[i].push(c);
                    allocs[i].push(a);
                }
                ratios.push(this[1] / this[0]);
            }
            for (i, name) in ["service (clone per task)", "Client::get (typed)", "Client::send (untyped)"].iter().enumerate() {
                println!(
                    "  {tasks:>2} tasks, {name:<24}: {:>6.0} ns CPU/GET, {:.2} allocs/GET",
                    median(cpu[i].clone()),
                    median(allocs[i].clone())
                );
            }
            println!(
                "  {tasks:>2} tasks, Client / service CPU per GET: {:.2} (median of per-round ratios)",
                median(ratios)
            );
        }
    });
}

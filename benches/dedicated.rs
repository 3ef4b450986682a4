//! What reusing dedicated connections is worth: `BLPOP` worker loops
//! through the `Client`, with clean dedicated connections kept for the next
//! command (`ClientBuilder::idle_dedicated(8)`, the default) and with none
//! kept (`idle_dedicated(0)`: every `BLPOP` dials, as a cluster client did
//! before).
//!
//! A real redis-server, and a real three-primary Redis Cluster, are started
//! by the test support. Four tasks loop on `BLPOP` of one list that always
//! has elements, so every `BLPOP` returns at once. Rounds of a fixed number
//! of `BLPOP`s alternate between the two clients; the figure is the median
//! over pairs of the ratio reused / dialled of `BLPOP`s per second. Also
//! the connections the server accepted per `BLPOP`
//! (`total_connections_received`).
//!
//! `cargo bench --bench dedicated` (about 5 s with the servers' start;
//! `-- --quick` about 3 s).

#[path = "common/stats.rs"]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use redis_layers::client::{Client, ClientBuilder};
use redis_layers::Endpoint;
use stats::median;
use support::cluster::{info_field, port_serving, RedisCluster};
use support::RedisServer;

const TASKS: usize = 4;
const QUEUE: &str = "{bench}:jobs";

/// The server's count of accepted connections.
fn received(port: u16) -> u64 {
    info_field(port, "stats", "total_connections_received")
}

/// `n` BLPOPs spread over the tasks: (BLPOPs per second, connections the
/// server accepted per BLPOP).
async fn round(client: &Client, port: u16, n: usize) -> (f64, f64) {
    let before = received(port);
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..n / TASKS {
                    let got: Option<(String, String)> =
                        client.blpop([QUEUE], 1.0).await.expect("BLPOP");
                    assert!(got.is_some(), "the list ran dry");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("BLPOP task");
    }
    let secs = start.elapsed().as_secs_f64();
    // The INFO connection itself is counted in its own reply.
    let dialled = received(port) - before - 1;
    (n as f64 / secs, dialled as f64 / n as f64)
}

/// Paired rounds: the median ratio reused / dialled, and each one's median
/// rate and connections per BLPOP.
async fn compare(name: &str, endpoint: Endpoint, port: u16, pairs: usize, n: usize) {
    let reused = ClientBuilder::new(endpoint.clone())
        .build()
        .await
        .expect("client");
    let dialled = ClientBuilder::new(endpoint)
        .idle_dedicated(0)
        .build()
        .await
        .expect("client");
    let items: Vec<String> = (0..2 * pairs * n + 1000).map(|i| i.to_string()).collect();
    for chunk in items.chunks(10_000) {
        reused.rpush(QUEUE, chunk).await.expect("RPUSH");
    }
    // Warm-up: each client's connections up.
    round(&reused, port, 100).await;
    round(&dialled, port, 100).await;
    let (mut ratios, mut r_ops, mut d_ops, mut r_conn, mut d_conn) =
        (vec![], vec![], vec![], vec![], vec![]);
    for pair in 0..pairs {
        let (r, d) = if pair % 2 == 0 {
            let r = round(&reused, port, n).await;
            (r, round(&dialled, port, n).await)
        } else {
            let d = round(&dialled, port, n).await;
            (round(&reused, port, n).await, d)
        };
        ratios.push(r.0 / d.0);
        r_ops.push(r.0);
        d_ops.push(d.0);
        r_conn.push(r.1);
        d_conn.push(d.1);
    }
    println!(
        "{name} | {:.0} | {:.0} | {:.2} | {:.3} / {:.3}",
        median(r_ops),
        median(d_ops),
        median(ratios),
        median(r_conn),
        median(d_conn),
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (pairs, n) = if quick { (4, 400) } else { (10, 1000) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    // The primary that holds the queue.
    let ports: Vec<u16> = cluster.primaries().iter().map(|s| s.port()).collect();
    let owner = port_serving(&ports, QUEUE.as_bytes());
    println!(
        "redis-layers dedicated connections ({}): {TASKS} tasks looping on BLPOP of a list \
         that always has elements; {pairs} pairs of {n} BLPOPs",
        if quick { "quick" } else { "full" }
    );
    println!();
    println!(
        "server | reused BLPOP/s | dialled BLPOP/s | paired median ratio | \
         connections per BLPOP, reused / dialled"
    );
    println!("---|---|---|---|---");
    rt.block_on(async {
        compare("standalone", server.endpoint(), server.port(), pairs, n).await;
        compare("cluster", cluster.endpoint(0), owner, pairs, n).await;
    });
}

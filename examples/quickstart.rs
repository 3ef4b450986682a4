//! Quickstart: connect, write, read, pipeline, and use the connection as a
//! tower `Service`.
//!
//! ```text
//! cargo run --example quickstart                         # starts its own redis-server
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart
//! ```

// Borrowed from the test support: starts a throwaway redis-server on a free
// loopback port when REDIS_URL is unset, and stops it on exit.
#[path = "../tests/support/mod.rs"]
mod support;

use redis_layers::{cmd, Pipeline, Request, Value};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_server, connector, endpoint) = support::server_from_env()?;

    // One connection, shared by every task that clones it.
    let conn = connector.connect(endpoint).await?;
    println!("connected with {:?}", conn.protocol());

    conn.send(cmd("SET").arg("quickstart:greeting").arg("hello"))
        .await?;
    let v = conn.send_cmd(cmd("GET").arg("quickstart:greeting")).await?;
    println!("GET quickstart:greeting -> {v:?}");

    // Concurrent callers share the socket; their commands are batched.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move { conn.send_cmd(cmd("INCR").arg("quickstart:hits")).await })
        })
        .collect();
    for t in tasks {
        t.await??;
    }

    // A pipeline: one request, one reply per command, in order.
    let p: Pipeline = (0..3)
        .map(|i| cmd("LPUSH").arg("quickstart:list").arg(i))
        .collect();
    let replies = conn.send(p).await?.into_pipeline()?;
    println!("pipeline replies: {replies:?}");

    // As a tower Service, the way every layer of this crate stacks on it.
    let reply = conn
        .clone()
        .oneshot(Request::from(
            cmd("HSET").arg("quickstart:h").arg("f").arg("v"),
        ))
        .await?;
    println!("HSET via tower -> {reply:?}");
    let map = conn.send_cmd(cmd("HGETALL").arg("quickstart:h")).await?;
    // Under RESP3 a hash comes back as a map, not a flat array.
    if let Value::Map(pairs) = &map {
        println!("HGETALL quickstart:h -> {} field(s)", pairs.len());
    }
    println!("HGETALL quickstart:h -> {map:?}");

    let hits = conn.send_cmd(cmd("GET").arg("quickstart:hits")).await?;
    println!("hits -> {hits:?}");
    conn.send(
        cmd("DEL")
            .arg("quickstart:greeting")
            .arg("quickstart:hits")
            .arg("quickstart:list")
            .arg("quickstart:h"),
    )
    .await?;
    Ok(())
}

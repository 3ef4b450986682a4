mod support;

// Memory acceptance test: pushes nobody reads do not pile up in a
// `Client`. A client with `CLIENT TRACKING ON BCAST` (through the
// connector's `on_connect`) gets an invalidation for each of 1,000,000
// keys another connection sets; its RSS (the process's, read from
// /proc/self/status) must grow by less than 16 MiB.
//
// Alone in its file (its own test binary and process), so no other test's
// allocations move the numbers. See tests/push_memory_frames.rs for 1 KiB
// push frames from a scripted server.

use std::time::Instant;

use redis_layers::client::{ClientBuilder, ServerMode};
use redis_layers::{cmd, Connection, Connector, Pipeline};
use support::{bounded, RedisServer};

const LIMIT: u64 = 16 << 20;
const KEYS: usize = 1_000_000;
const BATCH: usize = 10_000;

/// The process's resident set, in bytes.
fn rss() -> u64 {
    support::status_kib("VmRSS") * 1024
}

/// `SET k<i> v` for every `i` in `range`, pipelined in batches.
async fn set_keys(writer: &Connection, range: std::ops::Range<usize>) {
    let mut i = range.start;
    while i < range.end {
        let end = (i + BATCH).min(range.end);
        let mut p = Pipeline::with_capacity(end - i);
        for k in i..end {
            p.push(cmd("SET").arg(format!("k{k}")).arg("v"));
        }
        writer.send(p).await.expect("SET batch");
        i = end;
    }
}

#[ignore = "long: run by .ci/run (cargo test --all-features --tests -- --ignored)"]
#[tokio::test]
async fn a_million_unread_invalidations_keep_memory_bounded() {
    bounded(120, async {
        let server = RedisServer::start();
        let tracking =
            Connector::new().on_connect(cmd("CLIENT").arg("TRACKING").arg("ON").arg("BCAST"));
        let client = ClientBuilder::new(server.endpoint())
            .connector(tracking)
            .mode(ServerMode::Standalone)
            .build()
            .await
            .expect("client");
        let writer = Connector::new()
            .connect(server.endpoint())
            .await
            .expect("writer");
        // Warm-up: connections, buffers and the allocator's arenas exist
        // before the baseline.
        assert_eq!(client.ping().await.expect("PING"), "PONG");
        set_keys(&writer, 0..2 * BATCH).await;
        assert_eq!(client.ping().await.expect("PING"), "PONG");
        let before = rss();
        let t0 = Instant::now();
        set_keys(&writer, 2 * BATCH..KEYS).await;
        // BCAST invalidations are queued to the tracking connection before
        // the replies of the SETs that caused them: a PING answered now
        // was read after every one of them.
        assert_eq!(client.ping().await.expect("PING"), "PONG");
        let what = format!("tracking: {KEYS} keys set in {:?}", t0.elapsed());
        support::assert_rss_growth(&what, before, rss(), LIMIT);
    })
    .await
}

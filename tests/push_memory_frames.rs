mod support;

// Memory acceptance test: 1,000,000 push frames of 1 KiB each from a
// scripted server, nobody reading them, grow a `Client`'s RSS (the
// process's, read from /proc/self/status) by less than 16 MiB; and then a
// `Connection`'s whose push receiver is taken and never read (it keeps
// its capacity of frames, and counts the rest as dropped).
//
// Alone in its file (its own test binary and process), so no other test's
// allocations move the numbers. See tests/push_memory.rs for tracking
// invalidations from a real redis-server.

use std::sync::Arc;
use std::time::Instant;

use redis_layers::client::{ClientBuilder, ServerMode};
use redis_layers::{cmd, Connector, PushReceiver};
use support::bounded;
use support::hostile::{push, HostileServer};

const LIMIT: u64 = 16 << 20;
const FRAMES: usize = 1_000_000;
/// Frames per injected buffer (about 1 MiB).
const CHUNK: usize = 1_000;

/// The process's resident set, in bytes.
fn rss() -> u64 {
    support::status_kib("VmRSS") * 1024
}

/// Writes `chunks` copies of `buf` to every open connection, off the
/// runtime (the writes block until the client reads).
async fn inject(server: &Arc<HostileServer>, buf: &Arc<Vec<u8>>, chunks: usize) {
    let (server, buf) = (server.clone(), buf.clone());
    tokio::task::spawn_blocking(move || {
        for _ in 0..chunks {
            server.inject(&buf);
        }
    })
    .await
    .expect("inject");
}

#[ignore = "long: run by .ci/run (cargo test --all-features --tests -- --ignored)"]
#[tokio::test]
async fn a_million_unread_1k_pushes_keep_memory_bounded() {
    bounded(120, async {
        let server = Arc::new(HostileServer::start());
        let client = ClientBuilder::new(server.endpoint())
            .mode(ServerMode::Standalone)
            .build()
            .await
            .expect("client");
        assert_eq!(client.ping().await.expect("PING"), "PONG");
        let payload = "x".repeat(1024);
        let frame = push(&["message", "news", &payload]);
        let buf = Arc::new(frame.repeat(CHUNK));
        // Warm-up: buffers and the allocator's arenas exist before the
        // baseline.
        inject(&server, &buf, 2).await;
        assert_eq!(client.ping().await.expect("PING"), "PONG");
        let before = rss();
        let t0 = Instant::now();
        inject(&server, &buf, FRAMES / CHUNK).await;
        // The server writes the reply after every injected byte: a PING
        // answered now was read after the last push.
        assert_eq!(client.ping().await.expect("PING"), "PONG");
        let what = format!(
            "frames: {FRAMES} pushes of {} bytes in {:?}",
            frame.len(),
            t0.elapsed()
        );
        support::assert_rss_growth(&what, before, rss(), LIMIT);
        drop(client);

        // A receiver taken and never read keeps its capacity, no more.
        let conn = Connector::new()
            .connect(server.endpoint())
            .await
            .expect("connect");
        let pushes = conn.take_pushes().expect("pushes");
        inject(&server, &buf, 2).await;
        conn.send_cmd(cmd("PING")).await.expect("PING");
        let before = rss();
        let t0 = Instant::now();
        inject(&server, &buf, FRAMES / CHUNK).await;
        conn.send_cmd(cmd("PING")).await.expect("PING");
        let after = rss();
        let what = format!(
            "frames, receiver held: {FRAMES} pushes in {:?}; dropped {}",
            t0.elapsed(),
            pushes.dropped()
        );
        let kept = PushReceiver::DEFAULT_CAPACITY as u64;
        assert_eq!(pushes.dropped(), (FRAMES + 2 * CHUNK) as u64 - kept);
        support::assert_rss_growth(&what, before, after, LIMIT);
    })
    .await
}

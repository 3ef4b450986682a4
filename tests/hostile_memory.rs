//! Issue 14, "Trust boundary": a length header from the server reserves
//! nothing beyond what has arrived. Alone in its test binary so that no
//! other test moves the process's memory while it is measured.

mod support;

use std::time::Duration;

use redis_layers::{cmd, Connector, Error, Request};
use support::hostile::HostileServer;
use support::{bounded, status_kib};

/// A server answers `GET` with a bare header announcing a huge reply, and
/// nothing else: the client's resident memory (and its address space:
/// reserved pages are not resident until touched) must not grow by more
/// than a few MiB, and the request times out (a typed error) or fails with
/// a protocol error at once.
#[tokio::test]
async fn huge_length_headers_reserve_nothing() {
    bounded(30, async {
        for header in [
            &b"$536870912\r\n"[..],
            b"*4000000000\r\n",
            b"%2000000000\r\n",
        ] {
            let h = header.to_vec();
            let server = HostileServer::scripted(move |r| (r.name() == "GET").then(|| h.clone()));
            let conn = Connector::new()
                .connect(server.endpoint())
                .await
                .expect("connect");
            // Warm up: the connection, its buffers and the server's threads.
            for _ in 0..10 {
                conn.send_cmd(cmd("SET").arg("k").arg("v")).await.unwrap();
            }
            let (rss, size) = (status_kib("VmRSS"), status_kib("VmSize"));
            let r = conn
                .send(Request::from(cmd("GET").arg("k")).with_timeout(Duration::from_millis(300)))
                .await;
            assert!(
                matches!(r, Err(Error::Timeout) | Err(Error::Protocol(_))),
                "{}: {r:?}",
                String::from_utf8_lossy(header)
            );
            let (rss2, size2) = (status_kib("VmRSS"), status_kib("VmSize"));
            let what = String::from_utf8_lossy(header);
            assert!(
                rss2.saturating_sub(rss) < 8 * 1024,
                "{what}: resident memory grew by {} KiB",
                rss2 - rss
            );
            assert!(
                size2.saturating_sub(size) < 64 * 1024,
                "{what}: address space grew by {} KiB",
                size2 - size
            );
        }
    })
    .await;
}

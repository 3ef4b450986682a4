//! The axum example's router (src/main.rs) answers real HTTP requests
//! over a real socket, with a real redis-server behind its `Client`.

#[path = "../src/main.rs"]
#[allow(dead_code)]
mod example;

use std::future::IntoFuture;

use example::support::{bounded, RedisServer};
use redis_layers::client::ClientBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_example_answers_real_http_requests() {
    bounded(60, async {
        let server = RedisServer::start();
        let client = ClientBuilder::new(server.endpoint()).build().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving =
            tokio::spawn(axum::serve(listener, example::app(client.clone())).into_future());

        // Concurrent visits through the handlers: every one counted once.
        let visits: Vec<_> = (0..20)
            .map(|_| tokio::spawn(example::http(addr, "POST", "/hits/home", "")))
            .collect();
        let mut counts = Vec::new();
        for v in visits {
            let (status, body) = v.await.unwrap().unwrap();
            assert_eq!(status, 200, "{body}");
            counts.push(body.parse::<i64>().unwrap());
        }
        counts.sort();
        assert_eq!(counts, (1..=20).collect::<Vec<_>>());
        assert_eq!(
            client.get::<i64>("hits:home").await.unwrap(),
            20,
            "in Redis"
        );
        assert_eq!(
            example::http(addr, "GET", "/hits/home", "").await.unwrap(),
            (200, "20".to_string())
        );

        // A note: missing, stored with an expiry, read back.
        assert_eq!(
            example::http(addr, "GET", "/notes/a", "").await.unwrap().0,
            404
        );
        assert_eq!(
            example::http(addr, "PUT", "/notes/a", "hi there")
                .await
                .unwrap()
                .0,
            204
        );
        assert_eq!(
            example::http(addr, "GET", "/notes/a", "").await.unwrap(),
            (200, "hi there".to_string())
        );
        let ttl = client.ttl("notes:a").await.unwrap();
        assert!((1..=3600).contains(&ttl), "ttl {ttl}");

        // Through tower's own middleware: fast enough, then too slow for
        // its 250 ms Timeout: a 504, and the client still serves.
        assert_eq!(
            example::http(addr, "GET", "/guarded/sleep/10", "")
                .await
                .unwrap(),
            (200, "done\n".to_string())
        );
        let (status, body) = example::http(addr, "GET", "/guarded/sleep/600", "")
            .await
            .unwrap();
        assert_eq!(status, 504, "{body}");
        assert!(body.contains("timed out"), "{body}");
        assert_eq!(client.get::<i64>("hits:home").await.unwrap(), 20);

        // No room under the limit: LoadShed refuses at once, a 503.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let full = listener.local_addr().unwrap();
        let shedding = tokio::spawn(
            axum::serve(listener, example::app_with_limit(client.clone(), 0)).into_future(),
        );
        let (status, body) = example::http(full, "GET", "/guarded/sleep/10", "")
            .await
            .unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("overload"), "{body}");
        shedding.abort();

        // Redis gone: a clear 503, not a hang or a panic.
        drop(server);
        let (status, body) = example::http(addr, "GET", "/hits/home", "").await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("redis: "), "{body}");
        serving.abort();
    })
    .await
}

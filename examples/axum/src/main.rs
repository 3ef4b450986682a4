//! A web service with Redis in its state: an axum router whose handlers
//! use a [`Client`] (cheap to clone, `Send + Sync`: one per app, shared by
//! every request).
//!
//! ```text
//! cargo run -p axum-example                      # starts its own redis-server, serves on 127.0.0.1:3000
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p axum-example
//! cargo run -p axum-example -- --self-test       # serves on a free port, asks itself, exits
//! ```
//!
//! Routes:
//!
//! - `POST /hits/{page}`: counts a visit (`INCR hits:{page}`), answers the
//!   new count;
//! - `GET /hits/{page}`: the count, `0` for a page never visited;
//! - `PUT /notes/{name}` with a text body: stores it for an hour;
//! - `GET /notes/{name}`: the note, or 404;
//! - `GET /guarded/sleep/{ms}`: a command that takes `ms` on the server
//!   (`DEBUG SLEEP`, to show the failure modes) sent through tower's own
//!   middleware over [`Client::service`]: `LoadShed` over a concurrency
//!   limit (8 in [`app`]) shared by every request, and a 250 ms `Timeout`; their
//!   `BoxError`s come back as [`Error`] with `Error::from`.
//!
//! A Redis failure is an HTTP error with the error's text (the client has
//! retried what was safe to retry by then): `504 Gateway Timeout` for
//! [`Error::Timeout`] (the client's command timeout, or tower's `Timeout`),
//! `503 Service Unavailable` with `Retry-After: 1` for
//! [`Error::Overloaded`] (shed by `LoadShed`), and `503` for anything else
//! (Redis unreachable, ...). `tests/axum.rs` (in this package) serves this
//! router and sends it real HTTP requests.

// Borrowed from the test support: starts a throwaway redis-server on a free
// loopback port when REDIS_URL is unset, and stops it on exit.
// (`pub`: tests/axum.rs reaches it through this file.)
#[path = "../../../tests/support/mod.rs"]
pub mod support;

use std::future::IntoFuture;
use std::net::SocketAddr;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, Path, State};
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;
use redis_layers::client::{Expiry, SetOptions};
use redis_layers::{cmd, Client, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{ServiceBuilder, ServiceExt};

/// A Redis error as an HTTP answer.
struct RedisError(Error);

impl axum::response::IntoResponse for RedisError {
    fn into_response(self) -> axum::response::Response {
        let text = format!("redis: {}\n", self.0);
        match self.0 {
            Error::Timeout => (StatusCode::GATEWAY_TIMEOUT, text).into_response(),
            Error::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                text,
            )
                .into_response(),
            _ => (StatusCode::SERVICE_UNAVAILABLE, text).into_response(),
        }
    }
}

/// The app's state: the client, and the limit the guarded route's
/// requests share.
#[derive(Clone)]
struct AppState {
    redis: Client,
    limit: GlobalConcurrencyLimitLayer,
}

impl FromRef<AppState> for Client {
    fn from_ref(state: &AppState) -> Client {
        state.redis.clone()
    }
}

impl From<redis_layers::Error> for RedisError {
    fn from(e: redis_layers::Error) -> Self {
        RedisError(e)
    }
}

/// The app: routes over a shared [`Client`].
pub fn app(client: Client) -> Router {
    app_with_limit(client, 8)
}

/// The app with `concurrent` guarded requests at most; those beyond are
/// shed with a 503.
pub fn app_with_limit(client: Client, concurrent: usize) -> Router {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrent));
    let state = AppState {
        redis: client,
        limit: GlobalConcurrencyLimitLayer::with_semaphore(semaphore),
    };
    Router::new()
        .route("/hits/{page}", get(hits).post(hit))
        .route("/notes/{name}", get(note).put(put_note))
        .route("/guarded/sleep/{ms}", get(guarded_sleep))
        .with_state(state)
}

/// `DEBUG SLEEP` through LoadShed, a shared concurrency limit and a 250 ms
/// Timeout over the client's stack; `Error::from` brings tower's errors
/// back (`Elapsed` is `Timeout`, `Overloaded` is `Overloaded`).
async fn guarded_sleep(
    State(state): State<AppState>,
    Path(ms): Path<u64>,
) -> Result<&'static str, RedisError> {
    let svc = ServiceBuilder::new()
        .load_shed()
        .layer(state.limit.clone())
        .timeout(Duration::from_millis(250))
        .service(state.redis.service());
    let secs = format!("{:.3}", ms as f64 / 1000.0);
    // `map_err` on the result, not a `MapErr` layer: a fn item over
    // `BoxError` inside the handler's future trips rustc's higher-ranked
    // `Send` check ("FnOnce is not general enough").
    svc.oneshot(cmd("DEBUG").arg("SLEEP").arg(secs).into())
        .await
        .map_err(Error::from)?;
    Ok("done\n")
}

async fn hit(State(redis): State<Client>, Path(page): Path<String>) -> Result<String, RedisError> {
    Ok(redis.incr(format!("hits:{page}")).await?.to_string())
}

async fn hits(State(redis): State<Client>, Path(page): Path<String>) -> Result<String, RedisError> {
    let n: Option<i64> = redis.get(format!("hits:{page}")).await?;
    Ok(n.unwrap_or(0).to_string())
}

async fn put_note(
    State(redis): State<Client>,
    Path(name): Path<String>,
    body: String,
) -> Result<StatusCode, RedisError> {
    let _: Option<String> = redis
        .set_options(
            format!("notes:{name}"),
            body,
            SetOptions::new().expiry(Expiry::Ex(3600)),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn note(
    State(redis): State<Client>,
    Path(name): Path<String>,
) -> Result<(StatusCode, String), RedisError> {
    Ok(
        match redis.get::<Option<String>>(format!("notes:{name}")).await? {
            Some(text) => (StatusCode::OK, text),
            None => (StatusCode::NOT_FOUND, "no such note\n".into()),
        },
    )
}

/// One HTTP/1.1 request over a plain socket (enough for a self-test,
/// without an HTTP client dependency): the status code and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw);
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad reply {raw:?}"),
        )
    };
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

/// Asks the served app, and checks every answer.
async fn self_test(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let page = format!("home-{}", std::process::id());
    let checks = [
        ("GET", format!("/hits/{page}"), "", 200, "0"),
        ("POST", format!("/hits/{page}"), "", 200, "1"),
        ("POST", format!("/hits/{page}"), "", 200, "2"),
        ("GET", format!("/hits/{page}"), "", 200, "2"),
        ("GET", format!("/notes/{page}"), "", 404, "no such note\n"),
        ("PUT", format!("/notes/{page}"), "hello", 204, ""),
        ("GET", format!("/notes/{page}"), "", 200, "hello"),
    ];
    for (method, path, body, status, want) in checks {
        let (got_status, got) = http(addr, method, &path, body).await?;
        println!("{method} {path} -> {got_status} {got:?}");
        if (got_status, got.as_str()) != (status, want) {
            return Err(format!("{method} {path}: expected {status} {want:?}").into());
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let self_testing = std::env::args().any(|a| a == "--self-test");
    let (_server, client) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, Client::open(&url).await?),
        Err(_) => {
            let server = support::RedisServer::start();
            println!(
                "REDIS_URL unset: started redis-server on {}",
                server.endpoint()
            );
            let client = Client::builder(&format!("redis://{}", server.endpoint()))?
                .build()
                .await?;
            (Some(server), client)
        }
    };
    let addr = if self_testing {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let serve = axum::serve(listener, app(client));
    if !self_testing {
        println!("serving on http://{addr} (try: curl -X POST http://{addr}/hits/home)");
        serve.await?;
        return Ok(());
    }
    let server = tokio::spawn(serve.into_future());
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), self_test(addr)).await;
    server.abort();
    match outcome {
        Ok(Ok(())) => {
            println!("self-test passed");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err("self-test timed out".into()),
    }
}

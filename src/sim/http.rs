//! An HTTP control API in the shape Redis's own client test suites speak to
//! their fault injector and RESP proxy, served beside the RESP admin port
//! (`redis-maint-sim --http IP:PORT`, or [`HttpControl::bind`]).
//!
//! Actions run in the background; `POST /action` answers at once with an
//! id, and `GET /action/{id}` tells how it went:
//!
//! | Request | Body / query | Answer |
//! |---|---|---|
//! | `POST /action` | `{"type": T, "parameters": {...}}` | `{"action_id": "7"}` |
//! | `GET /action/{id}` | | `{"status": "running"\|"success"\|"failed", "error": null\|"...", "output": "..."}` |
//! | `GET /slot-migrate?effect=E` | `E`: `remove-add`, `remove`, `add`, `slot-shuffle` | the `POST /action` body that plays it |
//! | `POST /send-to-all-clients` | raw bytes (a RESP frame) | `{"sent": n}` |
//! | `POST /send-to-client/{id}` | raw bytes | `{"sent": n}` |
//! | `GET /connections` | | `[{"id", "endpoint", "peer", "name", "maint"}...]` |
//! | `GET /stats` | | `{"moved", "ask", "migrations_started", ...}` |
//!
//! Action types and their parameters (all optional; endpoints as
//! `"ip:port"`, default the first one):
//!
//! - `migrate`, `failover`: a `MIGRATING`/`MIGRATED` or
//!   `FAILING_OVER`/`FAILED_OVER` window: `endpoint`, `duration_ms` (3000),
//!   `delay_ms` (replies held, 50);
//! - `bind` or `moving`: a `MOVING`: `endpoint`, `time_s` (5), `to`,
//!   `same_port`, `stay_open` (booleans);
//! - `slot_migrate`: a real slot migration in front of a cluster:
//!   `effect`, `slots` (`"0-99"`, the default: the first 100 slots `src`
//!   owns), `src` and `dst` (endpoints; default the first two). On this
//!   simulator's three-primary clusters every effect moves real slots
//!   between two live nodes: `remove-add` and `remove` move `slots` from
//!   `src` to `dst`, `add` from `dst` to `src`, `slot-shuffle` moves them to
//!   `dst` and then as many of `dst`'s back to `src`; no node is stopped or
//!   started.
//!
//! Unknown types, bad parameters and unknown paths get a 4xx answer with
//! `{"error": "..."}`. No authentication: bind it to loopback.
//!
//! ```no_run
//! use redis_layers::sim::{http::HttpControl, Simulator};
//!
//! # async fn run() -> std::io::Result<()> {
//! let sim = Simulator::start("127.0.0.1:6379".parse().unwrap()).await?;
//! let http = HttpControl::bind(sim.clone(), "127.0.0.1:0".parse().unwrap()).await?;
//! // curl -d '{"type":"migrate","parameters":{"duration_ms":2000}}' http://<addr>/action
//! println!("control API at http://{}", http.local_addr());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{MovingPlan, Simulator, SlotMigrate, Target, Window};

const LOG: &str = "redis_layers::sim::http";

/// Largest request body read.
const MAX_BODY: usize = 1024 * 1024;

/// The running HTTP control API; see the [module docs](self). Stops on
/// [`HttpControl::shutdown`], when dropped, or when the simulator stops.
#[derive(Debug)]
pub struct HttpControl {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl HttpControl {
    /// Binds `addr` (port 0: a free port) and serves `sim` there. Does not
    /// keep the simulator running.
    pub async fn bind(sim: Simulator, addr: SocketAddr) -> io::Result<HttpControl> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = sim.inner.stop.child_token();
        let state = Arc::new(State {
            sim: sim.detached(),
            next: AtomicU64::new(1),
            actions: Mutex::new(HashMap::new()),
        });
        let stop2 = stop.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(target: LOG, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let state = state.clone();
                let stop = stop2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        tracing::info!(target: LOG, event = "sim.http.listen", %addr, "HTTP control API listening");
        Ok(HttpControl { addr, stop })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for HttpControl {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct State {
    sim: Simulator,
    next: AtomicU64,
    actions: Mutex<HashMap<u64, Action>>,
}

#[derive(Clone)]
struct Action {
    status: &'static str,
    error: Option<String>,
    output: String,
}

impl State {
    fn set(&self, id: u64, a: Action) {
        self.actions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, a);
    }

    fn get(&self, id: u64) -> Option<Action> {
        self.actions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Registers an action as running and records how `work` ends.
    fn spawn<F>(self: &Arc<Self>, output: String, work: F) -> u64
    where
        F: std::future::Future<Output = Result<String, String>> + Send + 'static,
    {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.set(
            id,
            Action {
                status: "running",
                error: None,
                output,
            },
        );
        let this = self.clone();
        tokio::spawn(async move {
            let a = match work.await {
                Ok(output) => Action {
                    status: "success",
                    error: None,
                    output,
                },
                Err(e) => Action {
                    status: "failed",
                    error: Some(e),
                    output: String::new(),
                },
            };
            this.set(id, a);
        });
        id
    }
}

fn reply(status: StatusCode, body: Json) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn bad(status: StatusCode, e: impl std::fmt::Display) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": e.to_string() }))
}

async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let query = req.uri().query().unwrap_or_default().to_string();
    tracing::info!(target: LOG, event = "sim.http.request", %method, %path, "HTTP request");
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["action"]) => match serde_json::from_slice::<Json>(&body) {
            Ok(v) => match start(state, &v).await {
                Ok(id) => reply(StatusCode::OK, json!({ "action_id": id.to_string() })),
                Err(e) => bad(StatusCode::BAD_REQUEST, e),
            },
            Err(e) => bad(StatusCode::BAD_REQUEST, format!("JSON body: {e}")),
        },
        (&Method::GET, ["action", id]) => match id.parse().ok().and_then(|id| state.get(id)) {
            Some(a) => reply(
                StatusCode::OK,
                json!({ "status": a.status, "error": a.error, "output": a.output }),
            ),
            None => bad(StatusCode::NOT_FOUND, format!("no action {id}")),
        },
        (&Method::GET, ["slot-migrate"]) => {
            let effect = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("effect="))
                .unwrap_or_default();
            match effect {
                "remove-add" | "remove" | "add" | "slot-shuffle" => reply(
                    StatusCode::OK,
                    json!({ "effect": effect, "action": { "type": "slot_migrate", "parameters": { "effect": effect } } }),
                ),
                other => bad(
                    StatusCode::BAD_REQUEST,
                    format!("effect '{other}': want remove-add, remove, add or slot-shuffle"),
                ),
            }
        }
        (&Method::POST, ["send-to-all-clients"]) => {
            let n = state.sim.inject_raw(Target::All, body);
            reply(StatusCode::OK, json!({ "sent": n }))
        }
        (&Method::POST, ["send-to-client", id]) => match id.parse() {
            Ok(id) => {
                let n = state.sim.inject_raw(Target::Client(id), body);
                reply(StatusCode::OK, json!({ "sent": n }))
            }
            Err(_) => bad(StatusCode::BAD_REQUEST, format!("client id '{id}'")),
        },
        (&Method::GET, ["connections"]) => {
            let cs: Vec<Json> = state
                .sim
                .clients()
                .into_iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "endpoint": c.endpoint.to_string(),
                        "peer": c.peer.to_string(),
                        "name": c.name,
                        "maint": c.maint.map(|t| t.as_str()),
                    })
                })
                .collect();
            reply(StatusCode::OK, Json::Array(cs))
        }
        (&Method::GET, ["stats"]) => {
            let s = state.sim.stats();
            reply(
                StatusCode::OK,
                json!({
                    "moved": s.moved,
                    "ask": s.ask,
                    "migrations_started": s.migrations_started,
                    "migrations_done": s.migrations_done,
                    "migrations_failed": s.migrations_failed,
                    "connections": state.sim.clients().len(),
                }),
            )
        }
        _ => bad(StatusCode::NOT_FOUND, format!("no route {method} {path}")),
    }
}

/// Typed access to an action's `parameters`.
struct Params<'a>(Option<&'a serde_json::Map<String, Json>>);

impl Params<'_> {
    fn u64(&self, k: &str, default: u64) -> Result<u64, String> {
        match self.0.and_then(|m| m.get(k)) {
            None | Some(Json::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| format!("parameter {k}: want a non-negative integer, got {v}")),
        }
    }

    fn bool(&self, k: &str) -> Result<bool, String> {
        match self.0.and_then(|m| m.get(k)) {
            None | Some(Json::Null) => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("parameter {k}: want true or false, got {v}")),
        }
    }

    fn str(&self, k: &str) -> Result<Option<String>, String> {
        match self.0.and_then(|m| m.get(k)) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("parameter {k}: want a string, got {v}")),
        }
    }

    fn addr(&self, k: &str) -> Result<Option<SocketAddr>, String> {
        self.str(k)?
            .map(|s| {
                s.parse()
                    .map_err(|_| format!("parameter {k}: '{s}' is not ip:port"))
            })
            .transpose()
    }
}

async fn start(state: &Arc<State>, v: &Json) -> Result<u64, String> {
    let kind = v
        .get("type")
        .and_then(Json::as_str)
        .ok_or("the body needs a \"type\" string")?;
    let p = Params(v.get("parameters").and_then(Json::as_object));
    let sim = &state.sim;
    let endpoint = |p: &Params<'_>| -> Result<SocketAddr, String> {
        let e = p.addr("endpoint")?.unwrap_or_else(|| sim.endpoint());
        if sim.is_open(e) {
            Ok(e)
        } else {
            Err(format!("endpoint {e} is not an open endpoint"))
        }
    };
    match kind {
        "migrate" | "failover" => {
            let mut w = Window::new(Duration::from_millis(p.u64("duration_ms", 3000)?));
            w.reply_delay = Duration::from_millis(p.u64("delay_ms", 50)?);
            w.endpoint = Some(endpoint(&p)?);
            let h = if kind == "migrate" {
                sim.start_migrate(w)
            } else {
                sim.start_failover(w)
            };
            let out = format!("start seq {}", h.start);
            Ok(state.spawn(out, async move {
                h.finished()
                    .await
                    .map(|s| format!("seq {} to {}, {} notified", s.start, s.end, s.notified))
                    .map_err(|e| e.to_string())
            }))
        }
        "bind" | "moving" => {
            let mut m = MovingPlan::new(Duration::from_secs(p.u64("time_s", 5)?));
            m.from = Some(endpoint(&p)?);
            m.to = p.addr("to")?;
            m.stay_open = p.bool("stay_open")?;
            if p.bool("same_port")? && m.to.is_none() {
                let from = m.from.unwrap_or_else(|| sim.endpoint());
                m.to = Some(SocketAddr::new([127, 0, 0, 2].into(), from.port()));
            }
            let h = sim.start_moving(m).map_err(|e| e.to_string())?;
            let out = format!("MOVING seq {} to {}", h.seq, h.to);
            Ok(state.spawn(out, async move {
                h.finished()
                    .await
                    .map(|m| {
                        format!(
                            "MOVING seq {} to {}: {} notified, {} closed",
                            m.seq, m.to, m.notified, m.closed
                        )
                    })
                    .map_err(|e| e.to_string())
            }))
        }
        "slot_migrate" => {
            let effect = p.str("effect")?.unwrap_or_else(|| "remove-add".into());
            let eps = sim.endpoints_info();
            let open: Vec<SocketAddr> = eps.iter().filter(|e| e.open).map(|e| e.addr).collect();
            let src = p
                .addr("src")?
                .or(open.first().copied())
                .ok_or("no endpoint")?;
            let dst = p
                .addr("dst")?
                .or(open.iter().copied().find(|&e| e != src))
                .ok_or("slot_migrate needs two endpoints (a cluster)")?;
            let slots = match p.str("slots")? {
                Some(s) => super::admin::parse_slots(&s)?,
                None => {
                    let owned = sim.owned_slots(src).await.map_err(|e| e.to_string())?;
                    owned.into_iter().take(100).collect()
                }
            };
            let (a, b) = match effect.as_str() {
                "remove-add" | "remove" => (src, dst),
                "add" => (dst, src),
                "slot-shuffle" => (src, dst),
                other => {
                    return Err(format!(
                        "effect '{other}': want remove-add, remove, add or slot-shuffle"
                    ))
                }
            };
            let slots = if effect == "add" {
                let owned = sim.owned_slots(a).await.map_err(|e| e.to_string())?;
                match p.str("slots")? {
                    Some(_) => slots,
                    None => owned.into_iter().take(100).collect(),
                }
            } else {
                slots
            };
            let n = slots.len();
            let h = sim
                .start_slot_migration(SlotMigrate::new(&slots, a, b))
                .await
                .map_err(|e| e.to_string())?;
            let out = format!("SMIGRATING seq {}", h.smigrating);
            let sim = sim.clone();
            Ok(state.spawn(out, async move {
                let m = h.finished().await.map_err(|e| e.to_string())?;
                let mut out = format!(
                    "{n} slots {a} -> {b}: SMIGRATING {} SMIGRATED {}, {} keys",
                    m.smigrating, m.smigrated, m.keys
                );
                if effect == "slot-shuffle" {
                    let back: Vec<u16> = sim
                        .owned_slots(b)
                        .await
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .filter(|s| !slots.contains(s))
                        .take(n)
                        .collect();
                    let m2 = sim
                        .slot_migrate(&back, b, a)
                        .await
                        .map_err(|e| e.to_string())?;
                    out.push_str(&format!(
                        "; {} slots {b} -> {a}: SMIGRATED {}, {} keys",
                        back.len(),
                        m2.smigrated,
                        m2.keys
                    ));
                }
                Ok(out)
            }))
        }
        other => Err(format!(
            "action type '{other}': want migrate, failover, bind (or moving) or slot_migrate"
        )),
    }
}

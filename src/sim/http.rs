//! An HTTP control API in the shape Redis's own client test suites speak to
//! their fault injector and RESP proxy, served beside the RESP admin port
//! (`redis-maint-sim --http IP:PORT`, or [`HttpControl::bind`]).
//!
//! Actions run in the background; `POST /action` answers at once with an
//! id, and `GET /action/{id}` tells how it went (for the last 1,000
//! finished actions and every running one; older ids answer 404):
//!
//! | Request | Body / query | Answer |
//! |---|---|---|
//! | `POST /action` | `{"type": T, "parameters": {...}}` | `{"action_id": "7"}` |
//! | `GET /action` | | the action types and their parameters |
//! | `GET /action/{id}` | | `{"action_id", "status": "running"\|"success"\|"failed", "error": null\|"...", "output": ...}` |
//! | `GET /slot-migrate?effect=E` | `E`: `remove-add`, `remove`, `add`, `slot-shuffle` | `{"effect", "triggers": [{"name", "requirements": [{"dbconfig"}]}], "action"}`: `action` is the `POST /action` body that plays it |
//! | `GET /topology-change-standalone?effect=E` | `E`: `data_movement_conn_drop`, `data_movement_no_conn_drop`, `conn_drop` | likewise |
//! | `POST /send-to-all-clients` | raw bytes (a RESP frame) | `{"sent": n}` |
//! | `POST /send-to-client/{id}` | raw bytes | `{"sent": n}` |
//! | `GET /connections` | | `[{"id", "endpoint", "peer", "name", "maint"}...]` |
//! | `GET /stats` | | `{"moved", "ask", "migrations_started", ...}` |
//!
//! Action types and their parameters (all optional unless said; endpoints
//! as `"ip:port"`, default the first one; durations at most an hour, or a
//! day in seconds; `bdb_id` and `cluster_index` are accepted and ignored:
//! the simulator has one database):
//!
//! - `migrate`, `failover`: a `MIGRATING`/`MIGRATED` or
//!   `FAILING_OVER`/`FAILED_OVER` window: `endpoint`, `duration_ms` (3000),
//!   `delay_ms` (replies held, 50);
//! - `bind` or `moving`: a `MOVING`: `endpoint`, `time_s` (5), `to`,
//!   `same_port`, `stay_open` (booleans);
//! - `slot_migrate` (and `reshard`, its `remove-add`): a real slot
//!   migration in front of a cluster: `effect`, `trigger` (if given, the
//!   one `GET /slot-migrate` lists), `slots` (`"0-99"`, the default: the
//!   first 100 slots `src` owns), `src`/`source_node` and
//!   `dst`/`target_node` (endpoints; default the first two). On this
//!   simulator's three-primary clusters every effect moves real slots
//!   between two live nodes: `remove-add` and `remove` move `slots` from
//!   `src` to `dst`, `add` from `dst` to `src`, `slot-shuffle` moves them to
//!   `dst` and then as many of `dst`'s back to `src`; no node is stopped or
//!   started;
//! - `topology_change_standalone`: `effect` (required), `trigger`,
//!   `endpoint`/`source_node`, `time_s` (5):
//!   `data_movement_no_conn_drop` is a 1 s `MIGRATING` window (the
//!   connections stay), `conn_drop` a `MOVING` to a new endpoint (the old
//!   one closes at its deadline), `data_movement_conn_drop` the two in
//!   turn. `dns_resolution_change` is refused: a name that follows a
//!   `MOVING` late is [`DnsLag`](super::dns::DnsLag), set up from Rust;
//! - `network_failure`: every connection of `endpoint` cut, and new ones
//!   closed at once, for `delay` seconds (3);
//! - `dmc_restart`: the proxy restarts: every connection of `endpoint`
//!   (default: of every endpoint) closed, new ones closed at once for
//!   `down_ms` (200);
//! - `execute_rladmin_command`: `rladmin_command` (required): `status`
//!   (output `{"output": text}` listing the endpoints), `migrate`,
//!   `failover`, `bind` (as the actions above, with their parameters);
//!   other commands are refused;
//! - `sequence_of_actions`: `actions`, 1 to 16 `{type, parameters}`
//!   objects (not nested), run one after the other; the first failure
//!   ends it (`error` says which); output: each one's output.
//!
//! `execute_rlutil_command`, `create_database` and `delete_database` act on
//! Redis Enterprise itself and are refused. An unparseable body gets `400`;
//! an unknown type, a bad or out-of-range parameter or an endpoint that is
//! not open gets `422` with `{"error": "...", "detail": "..."}` (the fault
//! injector's status), and nothing is started; unknown paths `404`. No
//! authentication: bind it to loopback.
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
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
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

/// Finished actions remembered for `GET /action/{id}` (the older ones
/// answer 404).
const KEPT_ACTIONS: u64 = 1000;

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
    output: Json,
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

    /// Registers an action as running and records how `work` ends. Only
    /// the last [`KEPT_ACTIONS`] finished ones are remembered, so a client
    /// posting in a loop does not grow the simulator without bound.
    fn spawn(self: &Arc<Self>, output: Json, work: Rest) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        {
            let mut actions = self.actions.lock().unwrap_or_else(|p| p.into_inner());
            actions.retain(|&k, a| k + KEPT_ACTIONS > id || a.status == "running");
            actions.insert(
                id,
                Action {
                    status: "running",
                    error: None,
                    output,
                },
            );
        }
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
                    output: Json::Null,
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

/// A well-formed request the simulator cannot act on: 422, as the fault
/// injector answers, with the reason both as `error` and as `detail`.
fn invalid(e: impl std::fmt::Display) -> Response<Full<Bytes>> {
    let e = e.to_string();
    reply(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({ "error": e, "detail": e }),
    )
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
            Ok(v) => match Plan::parse(&v, false) {
                Ok(plan) => match plan.start(&state.sim).await {
                    Ok((out, rest)) => {
                        let id = state.spawn(out, rest);
                        reply(StatusCode::OK, json!({ "action_id": id.to_string() }))
                    }
                    Err(e) => invalid(e),
                },
                Err(e) => invalid(e),
            },
            Err(e) => bad(StatusCode::BAD_REQUEST, format!("JSON body: {e}")),
        },
        (&Method::GET, ["action"]) => reply(
            StatusCode::OK,
            Json::Array(
                ACTION_TYPES
                    .iter()
                    .map(|(t, p)| json!({ "type": t, "parameters": p }))
                    .collect(),
            ),
        ),
        (&Method::GET, ["action", id]) => match id.parse().ok().and_then(|id| state.get(id)) {
            Some(a) => reply(
                StatusCode::OK,
                json!({ "action_id": id, "status": a.status, "error": a.error, "output": a.output }),
            ),
            None => bad(StatusCode::NOT_FOUND, format!("no action {id}")),
        },
        (&Method::GET, ["slot-migrate"]) => triggers("slot_migrate", &SLOT_MIGRATE_EFFECTS, &query),
        (&Method::GET, ["topology-change-standalone"]) => {
            triggers("topology_change_standalone", &STANDALONE_EFFECTS, &query)
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

    /// A duration in `unit`s, at most an hour (a day for seconds): a
    /// larger one is refused, not left to overflow a deadline.
    fn duration(&self, k: &str, default: u64, unit: Duration) -> Result<Duration, String> {
        let max = if unit >= Duration::from_secs(1) {
            Duration::from_secs(86_400)
        } else {
            Duration::from_secs(3_600)
        };
        let n = self.u64(k, default)?;
        u32::try_from(n)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .filter(|d| *d <= max)
            .ok_or_else(|| format!("parameter {k}: {n} is more than {max:?}"))
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

/// What an action does once started: its remaining work, and what it
/// reports when done.
type Rest = Pin<Box<dyn Future<Output = Result<Json, String>> + Send>>;

/// Starting an action: its first output and the rest, or why it could not
/// start.
type Started<'a> = Pin<Box<dyn Future<Output = Result<(Json, Rest), String>> + Send + 'a>>;

/// Longest `sequence_of_actions`.
const MAX_STEPS: usize = 16;

/// One action with its parameters read, not started yet.
enum Plan {
    Window {
        failover: bool,
        endpoint: Option<SocketAddr>,
        duration: Duration,
        delay: Duration,
    },
    Moving {
        endpoint: Option<SocketAddr>,
        time: Duration,
        to: Option<SocketAddr>,
        same_port: bool,
        stay_open: bool,
    },
    SlotMigrate {
        effect: String,
        src: Option<SocketAddr>,
        dst: Option<SocketAddr>,
        slots: Option<Vec<u16>>,
    },
    /// `network_failure`: connections cut, new ones closed at once, for
    /// `down`.
    Cut {
        endpoint: Option<SocketAddr>,
        down: Duration,
    },
    /// `dmc_restart`: the proxy restarts: every connection of the
    /// endpoints (all, unless one is named) closed, new ones refused for
    /// `down`.
    Restart {
        endpoint: Option<SocketAddr>,
        down: Duration,
    },
    /// `execute_rladmin_command status`.
    Status,
    /// Steps run one after the other; the first failure ends it.
    Sequence(Vec<Plan>),
}

/// The triggers `GET /slot-migrate` and `GET /topology-change-standalone`
/// list per effect.
const SLOT_MIGRATE_EFFECTS: [&str; 4] = ["remove-add", "remove", "add", "slot-shuffle"];
const STANDALONE_EFFECTS: [&str; 3] = [
    "data_movement_conn_drop",
    "data_movement_no_conn_drop",
    "conn_drop",
];

impl Plan {
    fn parse(v: &Json, nested: bool) -> Result<Plan, String> {
        let kind = v
            .get("type")
            .and_then(Json::as_str)
            .ok_or("the body needs a \"type\" string")?;
        let p = Params(match v.get("parameters") {
            None | Some(Json::Null) => None,
            Some(Json::Object(m)) => Some(m),
            Some(other) => return Err(format!("\"parameters\" must be an object, got {other}")),
        });
        let endpoint = p.addr("endpoint")?;
        let window = |failover: bool| -> Result<Plan, String> {
            Ok(Plan::Window {
                failover,
                endpoint,
                duration: p.duration("duration_ms", 3000, Duration::from_millis(1))?,
                delay: p.duration("delay_ms", 50, Duration::from_millis(1))?,
            })
        };
        let moving = |stay_open: bool| -> Result<Plan, String> {
            Ok(Plan::Moving {
                endpoint,
                time: p.duration("time_s", 5, Duration::from_secs(1))?,
                to: p.addr("to")?,
                same_port: p.bool("same_port")?,
                stay_open: stay_open || p.bool("stay_open")?,
            })
        };
        let nodes = || -> Result<(Option<SocketAddr>, Option<SocketAddr>), String> {
            Ok((
                p.addr("src")?.or(p.addr("source_node")?),
                p.addr("dst")?.or(p.addr("target_node")?),
            ))
        };
        match kind {
            "migrate" => window(false),
            "failover" => window(true),
            "bind" | "moving" => moving(false),
            "slot_migrate" | "reshard" => {
                let effect = p.str("effect")?.unwrap_or_else(|| "remove-add".into());
                if !SLOT_MIGRATE_EFFECTS.contains(&effect.as_str()) {
                    return Err(format!(
                        "effect '{effect}': want one of {}",
                        SLOT_MIGRATE_EFFECTS.join(", ")
                    ));
                }
                trigger(&p, &effect)?;
                let (src, dst) = nodes()?;
                let slots = p
                    .str("slots")?
                    .map(|s| super::admin::parse_slots(&s))
                    .transpose()?;
                Ok(Plan::SlotMigrate {
                    effect,
                    src,
                    dst,
                    slots,
                })
            }
            "topology_change_standalone" => {
                let effect = p
                    .str("effect")?
                    .ok_or("topology_change_standalone needs an \"effect\"")?;
                trigger(&p, &effect)?;
                let (src, _) = nodes()?;
                let endpoint = endpoint.or(src);
                let migrate = || Plan::Window {
                    failover: false,
                    endpoint,
                    duration: Duration::from_millis(1000),
                    delay: Duration::from_millis(50),
                };
                let bind = |time| Plan::Moving {
                    endpoint,
                    time,
                    to: None,
                    same_port: false,
                    stay_open: false,
                };
                let time = p.duration("time_s", 5, Duration::from_secs(1))?;
                match effect.as_str() {
                    "data_movement_no_conn_drop" => Ok(migrate()),
                    "data_movement_conn_drop" => Ok(Plan::Sequence(vec![migrate(), bind(time)])),
                    "conn_drop" => Ok(bind(time)),
                    other => Err(format!(
                        "effect '{other}' is not simulated; want one of {} (a DNS change \
                         after MOVING is sim::dns::DnsLag, from Rust)",
                        STANDALONE_EFFECTS.join(", ")
                    )),
                }
            }
            "network_failure" => Ok(Plan::Cut {
                endpoint,
                down: p.duration("delay", 3, Duration::from_secs(1))?,
            }),
            "dmc_restart" => Ok(Plan::Restart {
                endpoint,
                down: p.duration("down_ms", 200, Duration::from_millis(1))?,
            }),
            "execute_rladmin_command" => {
                let command = p
                    .str("rladmin_command")?
                    .ok_or("execute_rladmin_command needs \"rladmin_command\"")?;
                let command = command.trim();
                let command = command.strip_prefix("rladmin ").unwrap_or(command);
                match command.split_whitespace().next().unwrap_or_default() {
                    "status" => Ok(Plan::Status),
                    "migrate" => window(false),
                    "failover" => window(true),
                    "bind" => moving(false),
                    other => Err(format!(
                        "rladmin command '{other}' is not simulated; want status, migrate, \
                         failover or bind"
                    )),
                }
            }
            "sequence_of_actions" if nested => {
                Err("a sequence_of_actions cannot contain another".into())
            }
            "sequence_of_actions" => {
                let steps = match p.0.and_then(|m| m.get("actions")) {
                    Some(Json::Array(a)) => a,
                    _ => return Err("sequence_of_actions needs \"actions\": [...]".into()),
                };
                if steps.is_empty() || steps.len() > MAX_STEPS {
                    return Err(format!(
                        "sequence_of_actions: 1 to {MAX_STEPS} actions, got {}",
                        steps.len()
                    ));
                }
                let plans = steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Plan::parse(s, true).map_err(|e| format!("action {i}: {e}")))
                    .collect::<Result<_, _>>()?;
                Ok(Plan::Sequence(plans))
            }
            "execute_rlutil_command" | "create_database" | "delete_database" => Err(format!(
                "action type '{kind}' acts on Redis Enterprise itself and is not simulated"
            )),
            other => Err(format!(
                "action type '{other}': want one of {}",
                ACTION_TYPES.map(|(t, _)| t).join(", ")
            )),
        }
    }

    /// Starts the action: errors found before anything happened come back
    /// here; the rest runs in the returned future.
    fn start<'a>(self, sim: &'a Simulator) -> Started<'a> {
        Box::pin(async move {
            let open = |e: Option<SocketAddr>| -> Result<SocketAddr, String> {
                let e = e.unwrap_or_else(|| sim.endpoint());
                if sim.is_open(e) {
                    Ok(e)
                } else {
                    Err(format!("endpoint {e} is not an open endpoint"))
                }
            };
            match self {
                Plan::Window {
                    failover,
                    endpoint,
                    duration,
                    delay,
                } => {
                    let mut w = Window::new(duration);
                    w.reply_delay = delay;
                    w.endpoint = Some(open(endpoint)?);
                    let h = if failover {
                        sim.start_failover(w)
                    } else {
                        sim.start_migrate(w)
                    };
                    let out = json!(format!("start seq {}", h.start));
                    let rest: Rest = Box::pin(async move {
                        h.finished()
                            .await
                            .map(|s| {
                                json!(format!(
                                    "seq {} to {}, {} notified",
                                    s.start, s.end, s.notified
                                ))
                            })
                            .map_err(|e| e.to_string())
                    });
                    Ok((out, rest))
                }
                Plan::Moving {
                    endpoint,
                    time,
                    to,
                    same_port,
                    stay_open,
                } => {
                    let from = open(endpoint)?;
                    let mut m = MovingPlan::new(time);
                    m.from = Some(from);
                    m.to = to;
                    m.stay_open = stay_open;
                    if same_port && m.to.is_none() {
                        m.to = Some(SocketAddr::new([127, 0, 0, 2].into(), from.port()));
                    }
                    let h = sim.start_moving(m).map_err(|e| e.to_string())?;
                    let out = json!(format!("MOVING seq {} to {}", h.seq, h.to));
                    let rest: Rest = Box::pin(async move {
                        h.finished()
                            .await
                            .map(|m| {
                                json!(format!(
                                    "MOVING seq {} to {}: {} notified, {} closed",
                                    m.seq, m.to, m.notified, m.closed
                                ))
                            })
                            .map_err(|e| e.to_string())
                    });
                    Ok((out, rest))
                }
                Plan::SlotMigrate {
                    effect,
                    src,
                    dst,
                    slots,
                } => slot_migrate(sim, effect, src, dst, slots).await,
                Plan::Cut { endpoint, down } => {
                    let e = open(endpoint)?;
                    let rest = outage(sim, vec![e], down, move |cut| {
                        format!("network at {e} down for {down:?}: {cut} connections cut")
                    });
                    Ok((json!(format!("network at {e} down")), rest))
                }
                Plan::Restart { endpoint, down } => {
                    let eps: Vec<SocketAddr> = match endpoint {
                        Some(e) => vec![open(Some(e))?],
                        None => sim
                            .endpoints_info()
                            .into_iter()
                            .filter(|e| e.open)
                            .map(|e| e.addr)
                            .collect(),
                    };
                    let n = eps.len();
                    let rest = outage(sim, eps, down, move |closed| {
                        format!("proxy restarted on {n} endpoints: {closed} connections closed")
                    });
                    Ok((json!("restarting"), rest))
                }
                Plan::Status => {
                    let text = status_text(sim);
                    let rest: Rest = Box::pin(async move { Ok(json!({ "output": text })) });
                    Ok((json!(""), rest))
                }
                Plan::Sequence(steps) => {
                    let mut steps = steps.into_iter();
                    let Some(first) = steps.next() else {
                        return Err("an empty sequence".into());
                    };
                    let (out, first_rest) = first.start(sim).await?;
                    let sim = sim.clone();
                    let rest: Rest = Box::pin(async move {
                        let mut outputs =
                            vec![first_rest.await.map_err(|e| format!("action 0: {e}"))?];
                        for (i, step) in steps.enumerate() {
                            let (_, rest) = step
                                .start(&sim)
                                .await
                                .map_err(|e| format!("action {}: {e}", i + 1))?;
                            outputs.push(rest.await.map_err(|e| format!("action {}: {e}", i + 1))?);
                        }
                        Ok(Json::Array(outputs))
                    });
                    Ok((out, rest))
                }
            }
        })
    }
}

/// Cuts every connection of `eps` at once and closes new ones for `down`
/// (`network_failure`, `dmc_restart`); the rest reports, through `done`,
/// how many connections were cut.
fn outage(
    sim: &Simulator,
    eps: Vec<SocketAddr>,
    down: Duration,
    done: impl FnOnce(usize) -> String + Send + 'static,
) -> Rest {
    let mut cut = 0;
    for &e in &eps {
        sim.refuse_connections(e, true);
        cut += sim.close(Target::Endpoint(e));
    }
    let sim = sim.clone();
    Box::pin(async move {
        tokio::time::sleep(down).await;
        for &e in &eps {
            sim.refuse_connections(e, false);
        }
        Ok(json!(done(cut)))
    })
}

/// The action types `POST /action` takes, and their parameters (`GET
/// /action`).
const ACTION_TYPES: [(&str, &str); 11] = [
    ("migrate", "endpoint, duration_ms (3000), delay_ms (50)"),
    ("failover", "endpoint, duration_ms (3000), delay_ms (50)"),
    ("bind", "endpoint, time_s (5), to, same_port, stay_open"),
    ("moving", "endpoint, time_s (5), to, same_port, stay_open"),
    (
        "slot_migrate",
        "effect, trigger, slots, src/source_node, dst/target_node",
    ),
    ("reshard", "slots, src/source_node, dst/target_node"),
    (
        "topology_change_standalone",
        "effect, trigger, endpoint/source_node, time_s (5)",
    ),
    ("network_failure", "endpoint, delay (s, 3)"),
    ("dmc_restart", "endpoint (all), down_ms (200)"),
    (
        "execute_rladmin_command",
        "rladmin_command: status, migrate, failover or bind",
    ),
    (
        "sequence_of_actions",
        "actions: [{type, parameters}, ...] (1 to 16, not nested)",
    ),
];

/// A `trigger` parameter, when given, must be one `GET` lists.
fn trigger(p: &Params<'_>, effect: &str) -> Result<(), String> {
    match p.str("trigger")? {
        Some(t) if t != trigger_name(effect) => Err(format!(
            "trigger '{t}' for effect '{effect}': this simulator has '{}'",
            trigger_name(effect)
        )),
        _ => Ok(()),
    }
}

/// The one trigger of each effect: slot migrations move real slots
/// between live nodes; standalone effects are `MIGRATING` windows and
/// `MOVING`s.
fn trigger_name(effect: &str) -> &'static str {
    match effect {
        "data_movement_no_conn_drop" => "migrate",
        "data_movement_conn_drop" => "migrate_and_bind",
        "conn_drop" => "bind",
        _ => "migrate",
    }
}

/// `GET /slot-migrate` and `GET /topology-change-standalone`: the triggers
/// of an effect, in the fault injector's shape, each with the `POST
/// /action` body that plays it.
fn triggers(kind: &str, effects: &[&str], query: &str) -> Response<Full<Bytes>> {
    let effect = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("effect="))
        .unwrap_or_default();
    if !effects.contains(&effect) {
        return invalid(format!(
            "effect '{effect}': want one of {}",
            effects.join(", ")
        ));
    }
    let action = json!({
        "type": kind,
        "parameters": { "effect": effect, "trigger": trigger_name(effect) },
    });
    reply(
        StatusCode::OK,
        json!({
            "effect": effect,
            "cluster_index": 0,
            "triggers": [{
                "name": trigger_name(effect),
                "requirements": [{ "dbconfig": { "name": format!("sim-{effect}-db-0") } }],
            }],
            "action": action,
        }),
    )
}

/// `rladmin status`, in brief: the simulator's endpoints.
fn status_text(sim: &Simulator) -> String {
    let mut text = String::from("ENDPOINTS:\nDB:ID  ENDPOINT  BACKEND  STATE  CONNECTIONS\n");
    for (i, e) in sim.endpoints_info().iter().enumerate() {
        text.push_str(&format!(
            "db:1  endpoint:1:{}  {}  {}  {}  {}\n",
            i + 1,
            e.addr,
            e.backend,
            if e.open { "OK" } else { "CLOSED" },
            e.clients
        ));
    }
    text
}

async fn slot_migrate(
    sim: &Simulator,
    effect: String,
    src: Option<SocketAddr>,
    dst: Option<SocketAddr>,
    slots: Option<Vec<u16>>,
) -> Result<(Json, Rest), String> {
    let eps = sim.endpoints_info();
    let open: Vec<SocketAddr> = eps.iter().filter(|e| e.open).map(|e| e.addr).collect();
    let src = src.or(open.first().copied()).ok_or("no endpoint")?;
    let dst = dst
        .or(open.iter().copied().find(|&e| e != src))
        .ok_or("slot_migrate needs two endpoints (a cluster)")?;
    let (a, b) = if effect == "add" {
        (dst, src)
    } else {
        (src, dst)
    };
    let slots = match slots {
        Some(s) => s,
        None => {
            let owned = sim.owned_slots(a).await.map_err(|e| e.to_string())?;
            owned.into_iter().take(100).collect()
        }
    };
    let n = slots.len();
    let h = sim
        .start_slot_migration(SlotMigrate::new(&slots, a, b))
        .await
        .map_err(|e| e.to_string())?;
    let out = json!(format!("SMIGRATING seq {}", h.smigrating));
    let sim = sim.clone();
    let rest: Rest = Box::pin(async move {
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
        Ok(json!(out))
    });
    Ok((out, rest))
}

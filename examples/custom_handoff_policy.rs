//! A hand-written `HandoffPolicy` at work: the server announces a `MOVING`
//! target this client cannot reach (as with internal addresses seen from
//! outside a data centre), and the policy maps it to a route that works.
//!
//! The example starts its own redis-server on a free loopback port and the
//! maintenance simulator in front of it. The simulator announces an
//! endpoint that refuses every connection; the policy maps it to another
//! endpoint of the simulator. A small `INCR` load runs through
//! RelaxTimeout + Handoff + Connector across the `MOVING`; the example
//! prints the policy's decisions, the handoff events, and the commands, and
//! exits non-zero if any command failed.
//!
//! ```text
//! cargo run --features sim --example custom_handoff_policy
//! RUST_LOG=redis_layers::handoff=debug cargo run --features sim --example custom_handoff_policy
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_layers::handoff::{HandoffLayer, HandoffPolicy, Moving};
use redis_layers::maint::{MaintEvent, MaintenanceConfig, Mode};
use redis_layers::relax::RelaxTimeoutLayer;
use redis_layers::sim::{self, Simulator};
use redis_layers::{cmd, Connector, Endpoint, Request, Value};
use tower::{Layer, Service, ServiceExt};

/// Announced endpoint -> the address to dial instead. A `MOVING` to an
/// endpoint without a route is ignored (the connection then serves until
/// the server closes it, and the next command reconnects).
#[derive(Clone)]
struct Routes(Arc<HashMap<Endpoint, Endpoint>>);

impl HandoffPolicy for Routes {
    // The layer may consult the policy more than once for one `MOVING`:
    // decide from the `Moving` alone.
    fn target(&self, moving: &Moving<'_>) -> Option<Endpoint> {
        let Some(announced) = moving.endpoint else {
            println!(
                "policy: MOVING {}: null endpoint, back to {}",
                moving.seq, moving.configured
            );
            return Some(moving.configured.clone());
        };
        let announced = Endpoint::tcp(announced.host.clone(), announced.port);
        let route = self.0.get(&announced).cloned();
        match &route {
            Some(to) => println!("policy: MOVING {}: {announced} -> {to}", moving.seq),
            None => println!("policy: MOVING {}: no route to {announced}", moving.seq),
        }
        route
    }

    // `delay` and `backoff` keep the defaults: start at once, retry a
    // failed dial after a jittered 250 ms, 500 ms, ...
    fn delay(&self, moving: &Moving<'_>, index: usize, count: usize) -> Duration {
        println!(
            "policy: MOVING {}: connection {} of {count} from {} starts now",
            moving.seq,
            index + 1,
            moving.from
        );
        Duration::ZERO
    }
}

/// A throwaway redis-server, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Result<Server, String> {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut last = String::new();
        // A free port can be taken between the probe and the server's bind.
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("spawning {bin}: {e}"))?;
            let mut server = Server { child, port };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(server.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if answers(port) {
                    return Ok(server);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            last = format!("redis-server on port {port} did not answer");
        }
        Err(last)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if port != 6379 {
            return port;
        }
    }
}

fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0 && buf[0] == b'+')
}

fn list(endpoints: &[Endpoint]) -> String {
    let names: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
    names.join(", ")
}

fn describe(e: &MaintEvent) -> String {
    match e {
        MaintEvent::HandoffStarted {
            seq,
            from,
            to,
            attempt,
        } => format!("handoff {seq} started: {from} -> {to} (attempt {attempt})"),
        MaintEvent::HandoffRetried { seq, to, error, .. } => {
            format!("handoff {seq}: dial to {to} failed ({error}), retrying")
        }
        MaintEvent::HandoffSucceeded { seq, from, to } => {
            format!("handoff {seq} succeeded: new commands go to {to}, {from} drains and closes")
        }
        MaintEvent::HandoffFailed { seq, to, reason } => {
            format!("handoff {seq} to {to} failed: {reason}")
        }
        other => format!("{other:?}"),
    }
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::tcp(addr.ip().to_string(), addr.port())
}

async fn run(port: u16) -> Result<bool, Box<dyn std::error::Error>> {
    let sim = Simulator::start(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    // What the server will announce (unreachable from here) and the route
    // this client takes instead.
    let announced = sim.open_endpoint().await?;
    sim.refuse_connections(announced, true);
    let reachable = sim.open_endpoint().await?;
    let routes = Routes(Arc::new(HashMap::from([(
        endpoint(announced),
        endpoint(reachable),
    )])));
    println!(
        "redis-server on 127.0.0.1:{port}; simulator on {}; it will announce {announced} \
         (refuses connections); the policy routes that to {reachable}",
        sim.endpoint()
    );

    let config = MaintenanceConfig::default().mode(Mode::Enabled);
    let handoff = HandoffLayer::new(endpoint(sim.endpoint()))
        .maintenance(&config)?
        .policy(routes);
    let connector = Connector::new().maintenance(config)?;
    let svc = RelaxTimeoutLayer::new(Duration::from_secs(1)).layer(handoff.layer(connector));

    let mut events = svc.get_ref().subscribe();
    let printer = tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            println!("event: {}", describe(&e));
        }
    });

    svc.clone().oneshot(Request::from(cmd("PING"))).await?;
    tokio::time::timeout(
        Duration::from_secs(5),
        sim.wait_for(|c| c.iter().any(|c| c.maint.is_some())),
    )
    .await?;
    println!("connected to {}", list(&svc.get_ref().connected_to()));

    // The load: 8 tasks, an INCR each every 2 ms, each reply checked.
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (mut svc, stop) = (svc.clone(), stop.clone());
            tokio::spawn(async move {
                let key = format!("example:handoff:{i}");
                let (mut acked, mut errors) = (0i64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let reply = match svc.ready().await {
                        Ok(s) => s.call(cmd("INCR").arg(&key).into()).await,
                        Err(e) => Err(e),
                    };
                    match reply.and_then(|r| r.into_value()) {
                        Ok(Value::Integer(n)) if n == acked + 1 => acked = n,
                        other => {
                            errors += 1;
                            println!("command failed: INCR {key} after {acked}: {other:?}");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (key, acked, errors)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut m = sim::MovingPlan::new(Duration::from_secs(1));
    m.to = Some(announced);
    println!("simulator: MOVING to {announced}, 1 s to go");
    let moved = sim.moving(m).await?;
    println!(
        "simulator: deadline passed; {} connection(s) told, {} left behind on {}",
        moved.notified, moved.closed, moved.from
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut total, mut failed) = (0i64, 0u64);
    for t in tasks {
        let (key, acked, errors) = t.await?;
        // The server holds exactly what was acknowledged.
        let on_server = svc
            .clone()
            .oneshot(Request::from(cmd("GET").arg(&key)))
            .await?
            .into_value()?;
        if on_server != Value::BulkString(acked.to_string().into()) {
            failed += 1;
            println!("{key}: server has {on_server:?}, client acknowledged {acked}");
        }
        total += acked;
        failed += errors;
    }
    let now = svc.get_ref().connected_to();
    println!("connected to {}", list(&now));
    println!("{total} INCRs acknowledged, {failed} failed");
    printer.abort();
    Ok(failed == 0 && moved.closed == 0 && now == vec![endpoint(reachable)])
}

fn main() -> ExitCode {
    // With RUST_LOG set, the layer's and the simulator's own tracing events.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let server = match Server::start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), run(server.port)).await });
    drop(rt);
    drop(server);
    match result {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => {
            eprintln!("FAILED: see above");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("did not finish within 60 s");
            ExitCode::FAILURE
        }
    }
}

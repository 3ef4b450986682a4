//! A load through maintenance: 32 tasks run `SET`/`GET` through
//! RelaxTimeout over Handoff over the Connector while the simulator plays
//! `MIGRATING`, `FAILING_OVER` and `MOVING` in turn. A live progress line
//! shows the load; at the end a table gives, per phase, the commands,
//! errors, handoffs and latencies.
//!
//! ```text
//! cargo run -p maintenance-demo
//! DEMO_PHASE_SECS=5 cargo run -p maintenance-demo
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p maintenance-demo
//! ```
//!
//! Without `REDIS_URL` it starts its own redis-server on a free loopback
//! port (the test support does that) and the maintenance simulator in
//! front of it, then runs seven phases of `DEMO_PHASE_SECS` (default 3)
//! each:
//!
//! 1. steady;
//! 2. `MIGRATING` ... `MIGRATED`: replies slowed to 50 ms;
//! 3. steady;
//! 4. `FAILING_OVER` ... `FAILED_OVER`: replies slowed to 1.5 s, longer
//!    than the 1 s command timeout: without the relaxed timeout (3 s)
//!    they would all time out. The "> timeout" column counts them;
//! 5. steady: replies are fast again at once, and `FAILED_OVER` follows
//!    1.8 s later (a request still waiting when the relaxation ends keeps
//!    its relaxed deadline, so this wait is not needed; it keeps the
//!    phases' counts apart);
//! 6. `MOVING` to a second endpoint of the simulator, which closes the
//!    old one at the deadline (the phase ends there): the Handoff layer
//!    moves the connection before that;
//! 7. steady, on the new endpoint.
//!
//! A command counts in the maintenance phase (2, 4, 6) it overlaps, if
//! any: one sent just before `FAILING_OVER` whose reply is held counts
//! there. Otherwise it counts in the phase it completes in.
//!
//! With `REDIS_URL` set it runs one phase of plain load against that
//! server instead (and deletes its keys afterwards).
//!
//! It exits non-zero if any command failed or returned a wrong value, or,
//! with the simulator, if the connection did not end up on the new endpoint.

// Borrowed from the test support: starts a throwaway redis-server on a free
// loopback port, and stops it on exit.
#[path = "../../../tests/support/mod.rs"]
mod support;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_layers::handoff::HandoffLayer;
use redis_layers::maint::{MaintEvent, MaintenanceConfig, Mode};
use redis_layers::sim::{self, Simulator, Target, Window};
use redis_layers::{cmd, Connector, Endpoint, Request, ServiceBuilderExt, Value};
use tower::{Service, ServiceBuilder, ServiceExt};

/// Concurrent tasks, each a `SET`/`GET` loop on a key of its own.
const TASKS: usize = 32;
/// The command timeout of the stack (RelaxTimeout's default).
/// Generous, so that a busy machine (CI) does not time out steady traffic.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The timeout while relaxed (MaintenanceConfig::relaxed_timeout).
const RELAXED: Duration = Duration::from_secs(3);
/// How long the simulator holds each reply during FAILING_OVER.
const FAILOVER_DELAY: Duration = Duration::from_millis(1500);
/// From the end of the slow replies to FAILED_OVER: the held replies drain
/// (so that they count in phase 4).
const FAILOVER_DRAIN: Duration = Duration::from_millis(1800);
/// How long it holds them during MIGRATING (the simulator's default).
const MIGRATE_DELAY: Duration = Duration::from_millis(50);

/// Counters of one phase, shared by the load tasks and the event task.
struct Phase {
    name: &'static str,
    /// A maintenance phase: commands that overlap it count in it.
    maintenance: bool,
    commands: AtomicU64,
    errors: AtomicU64,
    /// Commands slower than TIMEOUT: without the relaxation, timeouts.
    over_timeout: AtomicU64,
    handoffs: AtomicU64,
    /// How long it lasted, once over.
    took: Mutex<Option<Duration>>,
}

struct Shared {
    phases: Vec<Phase>,
    current: AtomicUsize,
    stop: AtomicBool,
    handoff_failures: AtomicU64,
    tty: bool,
}

impl Shared {
    fn phase(&self) -> &Phase {
        &self.phases[self.current.load(Ordering::Relaxed)]
    }

    /// A message on a line of its own (the progress line is redrawn after it).
    fn say(&self, msg: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[2K");
        }
        let _ = writeln!(out, "{}", msg.as_ref());
        let _ = out.flush();
    }
}

/// The stack: RelaxTimeout over Handoff over the Connector.
type Stack = redis_layers::relax::RelaxTimeout<redis_layers::handoff::Handoff<Connector>>;

fn stack(
    connector: Connector,
    endpoint: Endpoint,
    mode: Mode,
) -> Result<Stack, Box<dyn std::error::Error>> {
    let config = MaintenanceConfig::default()
        .mode(mode)
        .relaxed_timeout(RELAXED);
    Ok(ServiceBuilder::new()
        .redis_relax(TIMEOUT)
        .redis_handoff(HandoffLayer::new(endpoint).maintenance(&config)?)
        .service(connector.maintenance(config)?))
}

fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::tcp(addr.ip().to_string(), addr.port())
}

fn phase_secs() -> Result<Duration, String> {
    match std::env::var("DEMO_PHASE_SECS") {
        Err(_) => Ok(Duration::from_secs(3)),
        Ok(s) => match s.trim().parse::<f64>() {
            Ok(v) if (1.0..=600.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
            _ => Err(format!(
                "DEMO_PHASE_SECS={s}: want a number of seconds from 1 to 600"
            )),
        },
    }
}

/// One task of the load: `SET key n` then `GET key` (must be `n`), again
/// and again. Returns each phase's latencies in microseconds.
async fn load(mut svc: Stack, i: usize, shared: Arc<Shared>) -> Vec<Vec<u32>> {
    let key = format!("maintenance_demo:{i}");
    let mut lat: Vec<Vec<u32>> = vec![Vec::new(); shared.phases.len()];
    let mut n: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        for get in [false, true] {
            let issued = shared.current.load(Ordering::Relaxed);
            let req: Request = if get {
                cmd("GET").arg(&key).into()
            } else {
                cmd("SET").arg(&key).arg(n).into()
            };
            let t = Instant::now();
            let reply = match svc.ready().await {
                Ok(s) => s.call(req).await.and_then(|r| r.into_value()),
                Err(e) => Err(e),
            };
            let took = t.elapsed();
            // A command counts in the maintenance phase it overlaps, if
            // any, else in the steady phase it completes in.
            let done = shared.current.load(Ordering::Relaxed);
            let at = (issued..=done)
                .find(|&p| shared.phases[p].maintenance)
                .unwrap_or(done);
            let phase = &shared.phases[at];
            phase.commands.fetch_add(1, Ordering::Relaxed);
            lat[at].push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
            if took > TIMEOUT {
                phase.over_timeout.fetch_add(1, Ordering::Relaxed);
            }
            let ok = match (&reply, get) {
                (Ok(Value::SimpleString(s)), false) => s == "OK",
                (Ok(Value::BulkString(b)), true) => b.as_ref() == n.to_string().as_bytes(),
                _ => false,
            };
            if !ok {
                // Print the first few; the table has the count.
                if phase.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    let what = if get { "GET" } else { "SET" };
                    shared.say(format!(
                        "command failed: {what} {key} (n = {n}): {reply:?} after {took:?}"
                    ));
                }
            }
        }
    }
    lat
}

/// Counts handoffs into the current phase and reports the events.
async fn watch(mut events: tokio::sync::broadcast::Receiver<MaintEvent>, shared: Arc<Shared>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let e = match events.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                shared.say(format!("event stream: {n} event(s) missed"));
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        match e {
            MaintEvent::Notification { notification, .. } => shared.say(format!(
                "client: got {} (seq {})",
                notification.kind(),
                notification.seq()
            )),
            MaintEvent::Relaxed { reason } => shared.say(format!(
                "client: timeouts relaxed to {RELAXED:?} ({reason})"
            )),
            MaintEvent::Unrelaxed { by } => {
                shared.say(format!("client: timeouts back to {TIMEOUT:?} (by {by})"))
            }
            MaintEvent::HandoffSucceeded { from, to, .. } => {
                shared.phase().handoffs.fetch_add(1, Ordering::Relaxed);
                shared.say(format!("client: handoff {from} -> {to} done"));
            }
            MaintEvent::HandoffFailed { to, reason, .. } => {
                shared.handoff_failures.fetch_add(1, Ordering::Relaxed);
                shared.say(format!("client: handoff to {to} FAILED: {reason}"));
            }
            _ => {}
        }
    }
}

/// The progress line: redrawn in place on a terminal, a plain line a
/// second otherwise.
async fn progress(shared: Arc<Shared>, started: Instant) {
    let every = if shared.tty {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut last_n, mut last_t) = (0u64, Instant::now());
    loop {
        tick.tick().await;
        let sum = |f: fn(&Phase) -> u64| shared.phases.iter().map(f).sum::<u64>();
        let n = sum(|p| p.commands.load(Ordering::Relaxed));
        let errors = sum(|p| p.errors.load(Ordering::Relaxed));
        let handoffs = sum(|p| p.handoffs.load(Ordering::Relaxed));
        let rate = (n - last_n) as f64 / last_t.elapsed().as_secs_f64();
        (last_n, last_t) = (n, Instant::now());
        let line = format!(
            "{:>5.1} s  {:<14} commands {n:>9}  {rate:>8.0}/s  errors {errors}  handoffs {handoffs}",
            started.elapsed().as_secs_f64(),
            shared.phase().name,
        );
        let mut out = std::io::stdout().lock();
        let _ = if shared.tty {
            write!(out, "\r\x1b[2K{line}")
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
    }
}

fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get((last as f64 * q).round() as usize).copied()
}

fn ms(us: Option<u32>) -> String {
    us.map_or("-".into(), |us| format!("{:.2}", f64::from(us) / 1000.0))
}

fn table(shared: &Shared, lat: &[Vec<u32>]) -> String {
    let header = [
        "phase",
        "secs",
        "commands",
        "cmd/s",
        "errors",
        "> timeout",
        "handoffs",
        "p50 ms",
        "p99 ms",
        "max ms",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let mut total = [0u64; 4];
    for (p, lat) in shared.phases.iter().zip(lat) {
        let secs = p.took.lock().unwrap().unwrap_or_default().as_secs_f64();
        let n = p.commands.load(Ordering::Relaxed);
        let counts = [
            n,
            p.errors.load(Ordering::Relaxed),
            p.over_timeout.load(Ordering::Relaxed),
            p.handoffs.load(Ordering::Relaxed),
        ];
        for (t, c) in total.iter_mut().zip(counts) {
            *t += c;
        }
        rows.push(vec![
            p.name.to_string(),
            format!("{secs:.1}"),
            n.to_string(),
            format!("{:.0}", n as f64 / secs.max(0.001)),
            counts[1].to_string(),
            counts[2].to_string(),
            counts[3].to_string(),
            ms(percentile(lat, 0.50)),
            ms(percentile(lat, 0.99)),
            ms(lat.last().copied()),
        ]);
    }
    let mut all: Vec<u32> = lat.concat();
    all.sort_unstable();
    rows.push(vec![
        "total".into(),
        String::new(),
        total[0].to_string(),
        String::new(),
        total[1].to_string(),
        total[2].to_string(),
        total[3].to_string(),
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied()),
    ]);
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            // The phase name left, the numbers right.
            .map(|(c, (v, w))| {
                if c == 0 {
                    format!("{v:<w$}")
                } else {
                    format!("{v:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 || i == rows.len() - 2 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

/// What the simulator plays; `None` for a plain load (REDIS_URL).
struct Scenario {
    sim: Simulator,
}

/// Runs the phases; returns whether the run went as it should.
async fn run(
    svc: Stack,
    scenario: Option<Scenario>,
    phase: Duration,
) -> Result<bool, Box<dyn std::error::Error>> {
    let names: &[&'static str] = if scenario.is_some() {
        &[
            "steady",
            "MIGRATING",
            "steady",
            "FAILING_OVER",
            "steady",
            "MOVING",
            "steady (moved)",
        ]
    } else {
        &["steady"]
    };
    let shared = Arc::new(Shared {
        phases: names
            .iter()
            .map(|name| Phase {
                name,
                maintenance: !name.starts_with("steady"),
                commands: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                over_timeout: AtomicU64::new(0),
                handoffs: AtomicU64::new(0),
                took: Mutex::new(None),
            })
            .collect(),
        current: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        handoff_failures: AtomicU64::new(0),
        tty: std::io::stdout().is_terminal(),
    });

    // Connect (and, with the simulator, opt in) before the clock starts.
    svc.clone().oneshot(cmd("PING").into()).await?;
    if let Some(s) = &scenario {
        tokio::time::timeout(
            Duration::from_secs(5),
            s.sim.wait_for(|c| c.iter().any(|c| c.maint.is_some())),
        )
        .await
        .map_err(|_| "the client did not opt in to maintenance notifications")?;
    }
    let watcher = tokio::spawn(watch(svc.get_ref().subscribe(), shared.clone()));
    let started = Instant::now();
    let printer = tokio::spawn(progress(shared.clone(), started));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| tokio::spawn(load(svc.clone(), i, shared.clone())))
        .collect();

    let mut ok = true;
    let mut moved_to = None;
    let mut failed_over = None;
    for (i, name) in names.iter().enumerate() {
        shared.current.store(i, Ordering::Relaxed);
        let t = Instant::now();
        match (*name, &scenario) {
            ("MIGRATING", Some(s)) => {
                let mut w = Window::new(phase);
                w.reply_delay = MIGRATE_DELAY;
                let h = s.sim.start_migrate(w);
                shared.say(format!(
                    "simulator: MIGRATING to {} connection(s), replies held {MIGRATE_DELAY:?}",
                    h.notified
                ));
                h.finished().await?;
                shared.say("simulator: MIGRATED");
            }
            ("FAILING_OVER", Some(s)) => {
                let mut w = Window::new(phase + FAILOVER_DRAIN);
                w.reply_delay = FAILOVER_DELAY;
                let h = s.sim.start_failover(w);
                shared.say(format!(
                    "simulator: FAILING_OVER to {} connection(s), replies held {FAILOVER_DELAY:?} \
                     (the command timeout is {TIMEOUT:?})",
                    h.notified
                ));
                tokio::time::sleep(phase).await;
                // Fast replies again; FAILED_OVER comes in the next phase,
                // once the replies held so far are out (see FAILOVER_DRAIN).
                s.sim
                    .set_delay(Target::Endpoint(h.endpoint), Duration::ZERO);
                shared.say("simulator: replies fast again; FAILED_OVER follows");
                failed_over = Some(h);
            }
            ("MOVING", Some(s)) => {
                let to = s.sim.open_endpoint().await?;
                let mut m = sim::MovingPlan::new(phase);
                m.to = Some(to);
                let h = s.sim.start_moving(m)?;
                moved_to = Some(to);
                shared.say(format!(
                    "simulator: MOVING {} -> {to} to {} connection(s); {} closes in {} s",
                    h.from,
                    h.notified,
                    h.from,
                    h.deadline
                        .saturating_duration_since(tokio::time::Instant::now())
                        .as_secs_f64()
                        .round()
                ));
                let moved = h.finished().await?;
                shared.say(format!(
                    "simulator: deadline: {} closed, {} connection(s) of ours were still on it",
                    moved.from, moved.closed
                ));
                if moved.closed != 0 {
                    ok = false;
                }
            }
            _ => {
                let end = async {
                    if let Some(h) = failed_over.take() {
                        h.finished().await?;
                        shared.say("simulator: FAILED_OVER");
                    }
                    Ok::<_, std::io::Error>(())
                };
                let (_, end) = tokio::join!(tokio::time::sleep(phase), end);
                end?;
            }
        }
        *shared.phases[i].took.lock().unwrap() = Some(t.elapsed());
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<Vec<u32>> = vec![Vec::new(); names.len()];
    for t in tasks {
        for (all, mine) in lat.iter_mut().zip(t.await?) {
            all.extend(mine);
        }
    }
    for l in &mut lat {
        l.sort_unstable();
    }
    printer.abort();
    watcher.abort();
    let _ = printer.await;
    if shared.tty {
        println!();
    }

    // Clean up after ourselves (REDIS_URL may be someone's server).
    let mut del = cmd("DEL");
    for i in 0..TASKS {
        del = del.arg(format!("maintenance_demo:{i}"));
    }
    svc.clone().oneshot(del.into()).await?;

    println!();
    print!("{}", table(&shared, &lat));
    println!(
        "\n{TASKS} tasks, SET then GET (checked) on a key each; command timeout {TIMEOUT:?}, \
         relaxed {RELAXED:?}; \"> timeout\": commands slower than {TIMEOUT:?}, which \
         only the relaxation kept from failing."
    );

    let errors: u64 = shared
        .phases
        .iter()
        .map(|p| p.errors.load(Ordering::Relaxed))
        .sum();
    let handoffs: u64 = shared
        .phases
        .iter()
        .map(|p| p.handoffs.load(Ordering::Relaxed))
        .sum();
    let failures = shared.handoff_failures.load(Ordering::Relaxed);
    if errors != 0 {
        println!("FAILED: {errors} command(s) failed");
        ok = false;
    }
    if failures != 0 {
        println!("FAILED: {failures} handoff(s) failed");
        ok = false;
    }
    if let Some(to) = moved_to {
        let now = svc.get_ref().connected_to();
        println!(
            "connected to {} after the MOVING",
            now.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if now != vec![endpoint(to)] || handoffs == 0 {
            println!("FAILED: the connection did not move to {to}");
            ok = false;
        }
    }
    Ok(ok)
}

async fn main_async(phase: Duration) -> Result<bool, Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        let (connector, endpoint) = Connector::from_url(&url)?;
        println!("REDIS_URL set: a plain load against {endpoint} for {phase:?}");
        // Auto: a server without maintenance notifications is fine here.
        let svc = stack(connector, endpoint, Mode::Auto)?;
        return run(svc, None, phase).await;
    }
    let server = support::RedisServer::start();
    let sim = Simulator::start(SocketAddr::from(([127, 0, 0, 1], server.port()))).await?;
    println!(
        "redis-server on 127.0.0.1:{}, simulator in front of it on {}; {TASKS} tasks, \
         phases of {phase:?}",
        server.port(),
        sim.endpoint()
    );
    let svc = stack(Connector::new(), endpoint(sim.endpoint()), Mode::Enabled)?;
    let ok = run(svc, Some(Scenario { sim: sim.clone() }), phase).await;
    sim.shutdown();
    drop(server);
    ok
}

fn main() -> ExitCode {
    // With RUST_LOG set, the layers' and the simulator's tracing events.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let phase = match phase_secs() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Seven phases, the MOVING rounded up to whole seconds, and slack.
    let limit = phase * 7 + Duration::from_secs(30);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async { tokio::time::timeout(limit, main_async(phase)).await });
    drop(rt);
    match result {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("did not finish within {limit:?}");
            ExitCode::FAILURE
        }
    }
}

//! Command latency through `MOVING`s: the stack of one endpoint,
//! RelaxTimeout (1 s commands) over Handoff over a Connector with
//! maintenance mode `Enabled`, against a real redis-server behind the
//! maintenance simulator (`redis_layers::sim`).
//!
//! **Load.** A fixed offered rate, not a saturating loop: 16 tasks, each
//! with a tokio interval of 1 ms, issue one command per tick (alternately
//! `INCR` and `GET` of their own key; every reply is checked against the
//! task's own count, so a lost or doubled command is an error), 16,000
//! commands per second in all. The interval's `MissedTickBehavior` is
//! `Burst`: a task held up by a slow command issues the ticks it missed
//! at once afterwards, so every phase carries the same number of commands
//! and a stall is paid for by the commands queued behind it, as it would be
//! with an open-loop arrival. (`Delay` would drop those ticks and hide the
//! stall's cost.) A command's latency runs from its issue (just before
//! `poll_ready`) to its reply: the tokio timer has a resolution of 1 ms,
//! so measuring from the tick's nominal time would add up to 1 ms of timer
//! noise to every command. How far tasks fell behind their schedule
//! (`lag`: issue time minus the tick's nominal time) is reported apart.
//!
//! **Phases.** Each round is `before` (steady state), `during` (from the
//! moment `Simulator::start_moving` returns, the notification sent, until
//! the `MOVING` deadline, when the simulator closes the old endpoint) and
//! `after` (from the deadline, as long as `before`). Each command counts in
//! the phase it was issued in. Every round moves from the previous round's
//! target to a new endpoint. Reported: each phase's p50 / p99 / p99.9 /
//! max per round, the medians over rounds, and the ratios p99(during) /
//! p99(before) and p99(after) / p99(before), per round and their median;
//! the target is a ratio of at most 2.0. Also, per round, when the client
//! got the notification, started and finished the handoff (the dial and
//! handshake of the new connection), counted from `start_moving`'s return.
//!
//! The simulator runs on its own one-thread tokio runtime, so that
//! `BENCH_WORKERS` counts the client's workers alone; all of them, the
//! simulator and redis-server share the machine's cores.
//!
//! `cargo bench --bench handoff --features sim` (5 rounds, 2 s phases,
//! `MOVING` time 2 s); `-- --quick`: 3 rounds of 1 s phases. Environment:
//! `BENCH_WORKERS` (client tokio worker threads, default 2), `BENCH_POOL`
//! (connections in the Handoff pool, default 1). Exits non-zero if any
//! command failed or any handoff did not succeed.

#[path = "common/stats.rs"]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;
use stats::median;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_layers::handoff::{Handoff, HandoffLayer};
use redis_layers::maint::{MaintEvent, MaintenanceConfig, Mode, Notification};
use redis_layers::relax::{RelaxTimeout, RelaxTimeoutLayer};
use redis_layers::sim::MovingPlan;
use redis_layers::{cmd, Cmd, Connector, Error, Request, Value};
use support::sim::SimStandalone;
use tokio::time::MissedTickBehavior;
use tower::{Layer, Service, ServiceExt};

type Stack = RelaxTimeout<Handoff<Connector>>;

/// Load tasks, each issuing one command per tick.
const TASKS: usize = 16;
const TICK: Duration = Duration::from_millis(1);
/// The RelaxTimeout layer's command timeout.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
const PHASES: [&str; 3] = ["before", "during", "after"];
/// The start of `during` reported apart: where the handoff happens.
const SWITCH: Duration = Duration::from_millis(100);

struct Options {
    quick: bool,
    rounds: usize,
    /// Length of `before` and `after`.
    phase: Duration,
    /// The `MOVING` time (whole seconds: the wire's unit).
    moving: Duration,
    warmup: Duration,
    workers: usize,
    pool: usize,
}

impl Options {
    fn parse() -> Self {
        let quick = std::env::args().any(|a| a == "--quick");
        let env = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        let (rounds, secs, warmup) = if quick {
            (3, 1, Duration::from_millis(500))
        } else {
            (5, 2, Duration::from_secs(1))
        };
        Options {
            quick,
            rounds,
            phase: Duration::from_secs(secs),
            moving: Duration::from_secs(secs),
            warmup,
            workers: env("BENCH_WORKERS", 2),
            pool: env("BENCH_POOL", 1),
        }
    }

    /// Commands one task issues over the whole run, with room to spare.
    fn samples_per_task(&self) -> usize {
        let round = self.phase * 2 + self.moving;
        let total = self.warmup + round * self.rounds as u32 + Duration::from_secs(1);
        (total.as_millis() as usize / TICK.as_millis() as usize) * 5 / 4
    }
}

// ===== the load =====

/// One command as a task saw it.
struct Sample {
    issued: Instant,
    latency: Duration,
    /// How late the command was issued against its tick's nominal time.
    lag: Duration,
}

struct Failure {
    issued: Instant,
    what: String,
}

struct TaskLog {
    samples: Vec<Sample>,
    failures: Vec<Failure>,
}

async fn send(svc: &mut Stack, c: Cmd) -> Result<Value, Error> {
    svc.ready()
        .await?
        .call(Request::from(c))
        .await?
        .into_value()
}

/// Issues one command per tick until `stop`: `INCR` and `GET` of its own
/// key in turn, each reply checked against the last acknowledged count.
async fn load_task(
    mut svc: Stack,
    index: usize,
    start: tokio::time::Instant,
    stop: Arc<AtomicBool>,
    capacity: usize,
) -> TaskLog {
    let key = format!("bench:handoff:{index}");
    let mut log = TaskLog {
        samples: Vec::with_capacity(capacity),
        failures: Vec::new(),
    };
    if let Err(e) = send(&mut svc, cmd("DEL").arg(&key)).await {
        log.failures.push(Failure {
            issued: Instant::now(),
            what: format!("{key}: DEL: {e}"),
        });
    }
    let mut acked = 0i64;
    let mut interval = tokio::time::interval_at(start, TICK);
    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut incr = false;
    while !stop.load(Ordering::Relaxed) {
        let nominal = interval.tick().await.into_std();
        incr = !incr;
        let c = if incr {
            cmd("INCR").arg(&key)
        } else {
            cmd("GET").arg(&key)
        };
        let issued = Instant::now();
        let reply = send(&mut svc, c).await;
        log.samples.push(Sample {
            issued,
            latency: issued.elapsed(),
            lag: issued.saturating_duration_since(nominal),
        });
        let what = match reply {
            Ok(Value::Integer(v)) if incr && v == acked + 1 => {
                acked = v;
                continue;
            }
            Ok(Value::BulkString(b)) if !incr && b.as_ref() == acked.to_string().as_bytes() => {
                continue;
            }
            Ok(other) => {
                let what = format!(
                    "{key}: {} after {acked} acknowledged INCRs: {other:?}",
                    if incr { "INCR" } else { "GET" }
                );
                // Resynchronise, so that one fault is reported once.
                if let Value::Integer(v) = other {
                    acked = v;
                }
                what
            }
            Err(e) => format!("{key}: {}: {e}", if incr { "INCR" } else { "GET" }),
        };
        log.failures.push(Failure { issued, what });
    }
    log
}

// ===== one run =====

/// The phases of one round.
struct Round {
    seq: i64,
    from: String,
    to: String,
    /// `[start, end)` of before, during, after.
    windows: [(Instant, Instant); 3],
    /// Connections the simulator closed at the deadline (must be 0).
    closed: usize,
}

/// Everything the run produced.
struct Run {
    rounds: Vec<Round>,
    logs: Vec<TaskLog>,
    events: Vec<(Instant, MaintEvent)>,
    /// Problems outside the commands (handoffs, the simulator).
    problems: Vec<String>,
}

fn stack(env: &SimStandalone, pool: usize) -> Stack {
    let config = MaintenanceConfig::default().mode(Mode::Enabled);
    let connector = Connector::new()
        .maintenance(config.clone())
        .expect("maintenance config");
    let handoff = HandoffLayer::new(env.endpoint())
        .maintenance(&config)
        .expect("maintenance config")
        .pool_size(pool)
        .expect("pool size");
    RelaxTimeoutLayer::new(COMMAND_TIMEOUT).layer(handoff.layer(connector))
}

async fn run(opts: &Options, env: &SimStandalone, sim_rt: &tokio::runtime::Handle) -> Run {
    let mut svc = stack(env, opts.pool);
    let mut problems = Vec::new();

    // Events, stamped on arrival.
    let events = Arc::new(Mutex::new(Vec::new()));
    let mut rx = svc.get_ref().subscribe();
    let sink = events.clone();
    let collector = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) => sink.lock().unwrap().push((Instant::now(), e)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("event collector lagged: {n} events lost")
                }
                Err(_) => return,
            }
        }
    });

    // Connect the whole pool and wait until it opted in: a MOVING reaches
    // only connections that did.
    send(&mut svc, cmd("PING")).await.expect("first PING");
    let pool = opts.pool;
    let opted_in = env
        .sim
        .wait_for(|c| c.iter().filter(|c| c.maint.is_some()).count() == pool);
    tokio::time::timeout(Duration::from_secs(10), opted_in)
        .await
        .expect("the pool did not opt in to maintenance notifications");

    let stop = Arc::new(AtomicBool::new(false));
    let start = tokio::time::Instant::now() + Duration::from_millis(10);
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            tokio::spawn(load_task(
                svc.clone(),
                i,
                start,
                stop.clone(),
                opts.samples_per_task(),
            ))
        })
        .collect();
    tokio::time::sleep(opts.warmup).await;

    let mut rounds = Vec::new();
    let mut from = env.sim.endpoint();
    for _ in 0..opts.rounds {
        let before_start = Instant::now();
        tokio::time::sleep(opts.phase).await;
        let before_end = Instant::now();
        let mut m = MovingPlan::new(opts.moving);
        m.from = Some(from);
        // The simulator's tasks and listeners belong to its own runtime.
        let handle = {
            let _in_sim = sim_rt.enter();
            env.sim.start_moving(m).expect("start MOVING")
        };
        let during_start = Instant::now();
        let deadline = handle.deadline.into_std();
        let (seq, to) = (handle.seq, handle.to);
        let moved = handle.finished().await.expect("MOVING");
        let after_end = deadline + opts.phase;
        tokio::time::sleep_until(after_end.into()).await;
        if moved.closed != 0 {
            problems.push(format!(
                "MOVING {seq}: the simulator closed {} connection(s) left on {from} at the deadline",
                moved.closed
            ));
        }
        rounds.push(Round {
            seq,
            from: from.to_string(),
            to: to.to_string(),
            windows: [
                (before_start, before_end),
                (during_start, deadline),
                (deadline, after_end),
            ],
            closed: moved.closed,
        });
        from = to;
    }

    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await.expect("load task"));
    }
    collector.abort();
    let events = std::mem::take(&mut *events.lock().unwrap());
    for (_, e) in &events {
        if matches!(e, MaintEvent::HandoffFailed { .. }) {
            problems.push(format!("handoff failed: {e:?}"));
        }
    }
    for r in &rounds {
        let succeeded = events
            .iter()
            .filter(|(_, e)| matches!(e, MaintEvent::HandoffSucceeded { seq, .. } if *seq == r.seq))
            .count();
        if succeeded != opts.pool {
            problems.push(format!(
                "MOVING {}: {succeeded} of {} connection(s) handed off",
                r.seq, opts.pool
            ));
        }
    }
    let connected = svc.get_ref().connected_to();
    let expected = redis_layers::Endpoint::tcp("127.0.0.1", from.port());
    if connected.iter().any(|e| *e != expected) {
        problems.push(format!(
            "after the last MOVING the pool is on {connected:?}, not {expected}"
        ));
    }
    Run {
        rounds,
        logs,
        events,
        problems,
    }
}

// ===== statistics =====

#[derive(Clone, Copy, Default)]
struct Stats {
    commands: usize,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    /// When the slowest command was issued, from the phase's start.
    max_at: Duration,
    max_lag: Duration,
    errors: usize,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The commands issued within any of `windows`.
fn stats(run: &Run, windows: &[(Instant, Instant)]) -> Stats {
    let within = |t: Instant| windows.iter().find(|(a, b)| t >= *a && t < *b);
    let expected = run.logs.iter().map(|l| l.samples.len()).sum::<usize>();
    let mut latencies: Vec<Duration> = Vec::with_capacity(expected);
    let mut s = Stats::default();
    for sample in run.logs.iter().flat_map(|l| &l.samples) {
        if let Some((start, _)) = within(sample.issued) {
            latencies.push(sample.latency);
            s.max_lag = s.max_lag.max(sample.lag);
            if sample.latency > s.max {
                s.max = sample.latency;
                s.max_at = sample.issued - *start;
            }
        }
    }
    s.errors = run
        .logs
        .iter()
        .flat_map(|l| &l.failures)
        .filter(|f| within(f.issued).is_some())
        .count();
    latencies.sort_unstable();
    s.commands = latencies.len();
    s.p50 = percentile(&latencies, 0.50);
    s.p99 = percentile(&latencies, 0.99);
    s.p999 = percentile(&latencies, 0.999);
    s
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// When the first event matching `pred` arrived, in ms after `t0`.
fn event_at(run: &Run, t0: Instant, pred: impl Fn(&MaintEvent) -> bool) -> String {
    run.events
        .iter()
        .find(|(_, e)| pred(e))
        .map(|(at, _)| format!("{:.1} ms", us(at.saturating_duration_since(t0)) / 1e3))
        .unwrap_or_else(|| "never".into())
}

fn row(label: &str, s: &Stats) {
    println!(
        "{label} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {}",
        s.commands,
        us(s.p50),
        us(s.p99),
        us(s.p999),
        us(s.max),
        ms(s.max_at),
        ms(s.max_lag),
        s.errors
    );
}

fn report(run: &Run) {
    let per_round: Vec<[Stats; 3]> = run
        .rounds
        .iter()
        .map(|r| r.windows.map(|w| stats(run, &[w])))
        .collect();

    println!();
    for r in &run.rounds {
        let t0 = r.windows[1].0;
        let seq = r.seq;
        println!(
            "MOVING {seq} {} -> {}: notification {}, handoff started {}, succeeded {} \
             (after start_moving returned); closed at the deadline: {}",
            r.from,
            r.to,
            event_at(run, t0, |e| matches!(e, MaintEvent::Notification {
                notification: Notification::Moving { seq: s, .. }, ..
            } if *s == seq)),
            event_at(
                run,
                t0,
                |e| matches!(e, MaintEvent::HandoffStarted { seq: s, .. } if *s == seq)
            ),
            event_at(
                run,
                t0,
                |e| matches!(e, MaintEvent::HandoffSucceeded { seq: s, .. } if *s == seq)
            ),
            r.closed,
        );
    }

    // `during`'s first SWITCH: the notification, the dial and handshake of
    // the new connection, the switch, the old connection's drain.
    let switch_label = format!("during, first {} ms", SWITCH.as_millis());
    println!();
    println!(
        "round | phase | commands | p50 us | p99 us | p99.9 us | max us | max at ms | max lag ms | errors"
    );
    println!("---|---|---|---|---|---|---|---|---|---");
    for (i, (r, phases)) in run.rounds.iter().zip(&per_round).enumerate() {
        for (name, s) in PHASES.iter().zip(phases) {
            row(&format!("{} | {name}", i + 1), s);
        }
        let (t0, end) = r.windows[1];
        let switch = stats(run, &[(t0, (t0 + SWITCH).min(end))]);
        row(&format!("{} | {switch_label}", i + 1), &switch);
    }

    println!();
    println!(
        "phase | median of {} rounds: commands/s | p50 us | p99 us | p99.9 us | max us || all rounds pooled: p99 us | p99.9 us",
        per_round.len()
    );
    println!("---|---|---|---|---|---|---|---");
    for (p, name) in PHASES.iter().enumerate() {
        let col = |f: &dyn Fn(&Stats) -> f64| median(per_round.iter().map(|r| f(&r[p])).collect());
        let rate = median(
            run.rounds
                .iter()
                .zip(&per_round)
                .map(|(r, s)| {
                    let (a, b) = r.windows[p];
                    s[p].commands as f64 / (b - a).as_secs_f64()
                })
                .collect(),
        );
        let windows: Vec<_> = run.rounds.iter().map(|r| r.windows[p]).collect();
        let pooled = stats(run, &windows);
        println!(
            "{name} | {rate:.0} | {:.0} | {:.0} | {:.0} | {:.0} || {:.0} | {:.0}",
            col(&|s| us(s.p50)),
            col(&|s| us(s.p99)),
            col(&|s| us(s.p999)),
            col(&|s| us(s.max)),
            us(pooled.p99),
            us(pooled.p999),
        );
    }

    println!();
    let before: Vec<_> = run.rounds.iter().map(|r| r.windows[0]).collect();
    let pooled_before = stats(run, &before);
    for (p, label) in [(1, "during"), (2, "after")] {
        let ratios: Vec<f64> = per_round
            .iter()
            .map(|r| us(r[p].p99) / us(r[0].p99))
            .collect();
        let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let windows: Vec<_> = run.rounds.iter().map(|r| r.windows[p]).collect();
        let pooled = us(stats(run, &windows).p99) / us(pooled_before.p99);
        println!(
            "p99({label}) / p99(before): rounds [{}], median {:.2}; pooled {pooled:.2} (target <= 2.0)",
            list.join(", "),
            median(ratios),
        );
    }
}

fn main() -> ExitCode {
    let opts = Options::parse();
    println!(
        "redis-layers handoff latency ({}): RelaxTimeout({COMMAND_TIMEOUT:?}) + Handoff \
         (pool {}) + Connector (maintenance Enabled) -> simulator -> redis-server; \
         {TASKS} tasks x 1 command per {TICK:?} (MissedTickBehavior::Burst); \
         {} rounds of before {:?} / MOVING time {:?} / after {:?}; client tokio workers {}; \
         {} CPUs",
        if opts.quick { "quick" } else { "full" },
        opts.pool,
        opts.rounds,
        opts.phase,
        opts.moving,
        opts.phase,
        opts.workers,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    // The simulator (and the spawned redis-server) on one runtime, the
    // client on another.
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sim")
        .enable_all()
        .build()
        .expect("simulator runtime");
    let env = sim_rt.block_on(SimStandalone::start());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.workers)
        .enable_all()
        .build()
        .expect("client runtime");

    let run = rt.block_on(run(&opts, &env, sim_rt.handle()));
    report(&run);

    let failures: Vec<&Failure> = run.logs.iter().flat_map(|l| &l.failures).collect();
    let origin = run
        .rounds
        .first()
        .map(|r| r.windows[0].0)
        .unwrap_or_else(Instant::now);
    println!();
    println!(
        "failed commands: {}; other problems: {}",
        failures.len(),
        run.problems.len()
    );
    for f in failures.iter().take(50) {
        let at = f.issued.checked_duration_since(origin).map_or_else(
            || "warm-up".to_string(),
            |d| format!("{:.3} s", d.as_secs_f64()),
        );
        println!("  {at}: {}", f.what);
    }
    if failures.len() > 50 {
        println!("  ... and {} more", failures.len() - 50);
    }
    for p in &run.problems {
        println!("  {p}");
    }
    let ok = failures.is_empty() && run.problems.is_empty();

    // Stop the client first, then the simulator and the server (killed on
    // drop), before the exit code.
    drop(rt);
    drop(env);
    drop(sim_rt);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

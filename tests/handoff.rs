//! The Handoff layer on real redis-server through the simulator, under
//! load: spec section 3, "Handoff (`MOVING`)".
//!
//! The ledger: many tasks run `INCR` on their own keys; every reply must be
//! exactly one more than the last acknowledged value (a lost or doubled
//! command shows at once), no command may fail, and at the end every key
//! on the server must equal the number of acknowledged `INCR`s.
#![cfg(feature = "sim")]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_layers::handoff::{
    DefaultPolicy, Handoff, HandoffLayer, HandoffPolicy, HandoffPolicyExt, MakeConnection,
};
use redis_layers::maint::{
    BreakerState, EndpointType, Kind, MaintEvent, Maintained, MaintenanceConfig, Mode,
};
use redis_layers::relax::{RelaxTimeout, RelaxTimeoutLayer};
use redis_layers::sim::{Moved, MovingPlan};
use redis_layers::{cmd, Connector, Endpoint, Error, Request, Value};
use support::cluster::blocked_clients;
use support::ledger::{self, Report};
use support::sim::{endpoint, SimStandalone};
use support::{bounded, within};
use tokio::sync::broadcast;
use tower::{Layer, Service, ServiceExt};

const STEP: Duration = Duration::from_secs(10);

type Stack<P = DefaultPolicy> = RelaxTimeout<Handoff<Connector, P>>;

fn config() -> MaintenanceConfig {
    MaintenanceConfig::default()
        .mode(Mode::Enabled)
        .relaxed_timeout(Duration::from_secs(2))
}

/// RelaxTimeout (1 s commands) over Handoff over a maintenance-aware
/// Connector: the default stack of one endpoint.
fn stack_with<P: HandoffPolicy + Clone>(
    env: &SimStandalone,
    config: MaintenanceConfig,
    pool: usize,
    policy: P,
) -> Stack<P> {
    let (handoff, connector) = env.handoff_parts(&config, pool);
    let handoff = handoff.policy(policy);
    RelaxTimeoutLayer::new(Duration::from_secs(1)).layer(handoff.layer(connector))
}

fn stack(env: &SimStandalone, pool: usize) -> Stack {
    stack_with(env, config(), pool, DefaultPolicy)
}

async fn send<S>(svc: &mut S, c: redis_layers::Cmd) -> Result<Value, Error>
where
    S: Service<Request, Response = redis_layers::Response, Error = Error>,
{
    svc.ready().await?.call(c.into()).await?.into_value()
}

/// Nothing failed, and the server holds exactly the acknowledged count.
fn check_ledger(env: &SimStandalone, report: &Report) {
    report.assert_no_failures();
    for (key, acked) in &report.acked {
        let on_server = env.server.cli(&["GET", key]);
        let on_server: u64 = on_server.trim().parse().unwrap_or(0);
        assert_eq!(
            on_server, *acked,
            "{key}: server has {on_server}, client acknowledged {acked}"
        );
    }
}

/// A service's event stream and everything it delivered so far.
struct Events {
    rx: broadcast::Receiver<MaintEvent>,
    seen: Vec<MaintEvent>,
}

impl Events {
    fn of<M: MakeConnection, P: HandoffPolicy>(svc: &RelaxTimeout<Handoff<M, P>>) -> Self {
        Events {
            rx: svc.get_ref().subscribe(),
            seen: vec![],
        }
    }

    /// Every event so far (those already waited for included).
    fn all(&mut self) -> &[MaintEvent] {
        loop {
            match self.rx.try_recv() {
                Ok(e) => self.seen.push(e),
                Err(broadcast::error::TryRecvError::Lagged(n)) => panic!("lost {n} events"),
                Err(_) => return &self.seen,
            }
        }
    }

    fn count(&mut self, pred: impl Fn(&MaintEvent) -> bool) -> usize {
        self.all().iter().filter(|e| pred(e)).count()
    }

    /// Waits for an event matching `pred` (or finds it among those seen).
    async fn wait(&mut self, what: &str, pred: impl Fn(&MaintEvent) -> bool) -> MaintEvent {
        if let Some(e) = self.all().iter().find(|e| pred(e)) {
            return e.clone();
        }
        let (rx, seen) = (&mut self.rx, &mut self.seen);
        within(STEP, what, async {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        seen.push(e.clone());
                        if pred(&e) {
                            return e;
                        }
                    }
                    Err(e) => panic!("{what}: event stream: {e}"),
                }
            }
        })
        .await
    }
}

fn succeeded(e: &MaintEvent) -> bool {
    matches!(e, MaintEvent::HandoffSucceeded { .. })
}

fn moving(from: Option<SocketAddr>, time: Duration) -> MovingPlan {
    let mut m = MovingPlan::new(time);
    m.from = from;
    m
}

/// Client connections the simulator sees on `addr`.
fn clients_on(env: &SimStandalone, addr: SocketAddr) -> usize {
    env.sim
        .clients()
        .iter()
        .filter(|c| c.endpoint == addr)
        .count()
}

/// Waits until `n` connections have opted in to notifications (the pool
/// connects every entry on first use; a MOVING reaches those that opted in).
async fn opted_in(env: &SimStandalone, n: usize) {
    within(
        STEP,
        "pool connected",
        env.sim
            .wait_for(|c| c.iter().filter(|c| c.maint.is_some()).count() == n),
    )
    .await
}

/// Waits until the simulator sees exactly `n` client connections: every
/// socket the layer left (old connections, abandoned dials) is closed.
async fn sockets_left(env: &SimStandalone, n: usize) {
    within(
        STEP,
        "leftover sockets closed",
        env.sim.wait_for(|c| c.len() == n),
    )
    .await
}

/// Runs the ledger through `movings` MOVINGs in a row (each to a new
/// endpoint, `time` each) and checks it.
async fn ledger_through_movings(pool: usize, movings: usize, time: Duration, name: &str) {
    let env = SimStandalone::start().await;
    let svc = stack(&env, pool);
    let mut events = Events::of(&svc);
    let load = ledger::start(&svc, 64, &format!("ledger:{name}"));
    opted_in(&env, pool).await;
    load.run_for(2_000).await;
    let mut from = env.sim.endpoint();
    for i in 0..movings {
        let moved: Moved = within(
            time + STEP,
            "moving",
            env.sim.moving(moving(Some(from), time)),
        )
        .await
        .expect("moving");
        // Every connection left the old endpoint before its deadline: the
        // simulator closed none of ours.
        assert_eq!(
            moved.closed, 0,
            "MOVING {i}: connections left on the old endpoint"
        );
        assert_eq!(clients_on(&env, moved.from), 0);
        assert_eq!(
            moved.notified, pool,
            "MOVING {i}: every pooled connection told"
        );
        let to = endpoint(moved.to);
        assert_eq!(svc.get_ref().connected_to(), vec![to; pool], "MOVING {i}");
        from = moved.to;
        load.run_for(1_000).await;
    }
    let report = load.finish().await;
    check_ledger(&env, &report);
    sockets_left(&env, pool).await;
    assert_eq!(
        events.count(succeeded),
        pool * movings,
        "{:?}",
        events.all()
    );
    assert_eq!(
        events.count(|e| matches!(e, MaintEvent::HandoffFailed { .. })),
        0
    );
    // Each new connection was relaxed for the post-handoff window, visibly.
    let relaxed = events.count(|e| {
        matches!(
            e,
            MaintEvent::Relaxed {
                reason: "post-handoff"
            }
        )
    });
    assert!(
        relaxed >= movings,
        "{relaxed} post-handoff relaxations for {movings} MOVINGs"
    );
}

/// Acceptance: 64 tasks, one MOVING with a 2 s window: 0 failed commands,
/// the ledger exact, no connection left on the old endpoint at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_survives_a_moving() {
    bounded(
        60,
        ledger_through_movings(1, 1, Duration::from_secs(2), "one"),
    )
    .await;
}

/// Acceptance: the same through 10 MOVINGs in a row (each from the last
/// target to a new endpoint, 2 s windows).
#[ignore = "long: run by .ci/run (cargo test --all-features --tests -- --ignored)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_survives_ten_movings_in_a_row() {
    bounded(
        120,
        ledger_through_movings(1, 10, Duration::from_secs(2), "ten"),
    )
    .await;
}

/// Acceptance: the same with a pool of 8 connections, all handed off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_survives_a_moving_with_a_pool_of_8() {
    bounded(
        60,
        ledger_through_movings(8, 1, Duration::from_secs(2), "pool8"),
    )
    .await;
}

/// Acceptance: the ledger through a MOVING with a null endpoint (clients
/// that opted in with `moving-endpoint-type none`): the handoff starts at
/// exactly `time / 2` and reconnects to the configured address, which now
/// leads to the new node (the simulator keeps it open, as a load balancer
/// would, and closes only the connections it told at the deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_survives_a_moving_with_a_null_endpoint() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let cfg = config().endpoint_type(EndpointType::None);
        let svc = stack_with(&env, cfg, 1, DefaultPolicy);
        let mut events = Events::of(&svc);
        let load = ledger::start(&svc, 64, "ledger:null");
        opted_in(&env, 1).await;
        load.run_for(2_000).await;
        let mut m = moving(None, Duration::from_secs(3));
        m.stay_open = true;
        let handle = env.sim.start_moving(m).unwrap();
        let sent = tokio::time::Instant::now();
        events
            .wait("handoff started", |e| {
                matches!(e, MaintEvent::HandoffStarted { .. })
            })
            .await;
        let waited = sent.elapsed();
        // time / 2 = 1.5 s, not truncated to 1 s.
        assert!(
            waited >= Duration::from_millis(1450) && waited < Duration::from_millis(2500),
            "handoff started after {waited:?}"
        );
        events.wait("handoff", succeeded).await;
        let moved = handle.finished().await.unwrap();
        assert_eq!(moved.notified, 1);
        assert_eq!(
            moved.closed, 0,
            "the told connection was left before the deadline"
        );
        assert_eq!(svc.get_ref().connected_to(), vec![env.endpoint()]);
        assert_eq!(clients_on(&env, moved.from), 1);
        load.run_for(1_000).await;
        check_ledger(&env, &load.finish().await);
        sockets_left(&env, 1).await;
    })
    .await;
}

/// Spec: a connection with no traffic is handed off too, eagerly; traffic
/// after the deadline finds the new connection (no reconnect, no error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_handed_off() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let mut svc = stack(&env, 2);
        let mut events = Events::of(&svc);
        assert_eq!(
            send(&mut svc, cmd("SET").arg("k").arg("v")).await.unwrap(),
            Value::SimpleString("OK".into())
        );
        opted_in(&env, 2).await;
        let from = svc.get_ref().maintenance().clone();
        let moved = env
            .sim
            .moving(moving(None, Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(moved.notified, 2);
        assert_eq!(moved.closed, 0, "idle connections were left behind");
        assert_eq!(events.count(succeeded), 2, "{:?}", events.all());
        // Counted on the endpoint left.
        let status = from.status();
        assert_eq!((status.handoffs_succeeded, status.handoffs_failed), (2, 0));
        assert_eq!(status.last_notification.map(|n| n.kind), Some(Kind::Moving));
        let before = env.sim.clients().len();
        assert_eq!(before, 2);
        assert_eq!(clients_on(&env, moved.to), 2);
        assert_eq!(
            send(&mut svc, cmd("GET").arg("k")).await.unwrap(),
            Value::BulkString("v".into())
        );
        // The command used a handed-off connection: nobody reconnected.
        assert_eq!(env.sim.clients().len(), 2);
        assert_eq!(svc.get_ref().connected_to(), vec![endpoint(moved.to); 2]);
    })
    .await;
}

/// Spec: the same MOVING on every connection of the endpoint (as servers
/// send it) starts one handoff per connection, not one per copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_moving_is_handled_once() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let mut svc = stack(&env, 3);
        let mut events = Events::of(&svc);
        send(&mut svc, cmd("PING")).await.unwrap();
        opted_in(&env, 3).await;
        let handle = env
            .sim
            .start_moving(moving(None, Duration::from_secs(1)))
            .unwrap();
        assert_eq!(handle.notified, 3);
        // The same frame once more on every old connection.
        let again = redis_layers::sim::Push::Moving {
            seq: handle.seq,
            time: 1,
            endpoint: Some(handle.to.to_string()),
        };
        let from = handle.from;
        assert_eq!(
            env.sim
                .notify(redis_layers::sim::Target::Endpoint(from), &again),
            3
        );
        let moved = handle.finished().await.unwrap();
        assert_eq!(moved.closed, 0);
        let started = events.count(|e| matches!(e, MaintEvent::HandoffStarted { .. }));
        assert_eq!(started, 3, "{:?}", events.all());
        assert_eq!(events.count(succeeded), 3);
        assert_eq!(
            send(&mut svc, cmd("PING")).await.unwrap(),
            Value::SimpleString("PONG".into())
        );
    })
    .await;
}

/// Spec: a newer MOVING that arrives while a handoff is still dialling
/// takes over: the connection ends up where the newer one says, the older
/// handoff is reported as superseded, and commands never fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_during_a_handoff_takes_over() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let svc = stack(&env, 1);
        let mut events = Events::of(&svc);
        let load = ledger::start(&svc, 8, "ledger:takeover");
        load.run_for(500).await;
        // The first target refuses, so its handoff is retrying...
        let dead = env.sim.open_endpoint().await.unwrap();
        env.sim.refuse_connections(dead, true);
        let mut first = moving(None, Duration::from_secs(3));
        first.to = Some(dead);
        let first = env.sim.start_moving(first).unwrap();
        events
            .wait(
                "first dial retried",
                |e| matches!(e, MaintEvent::HandoffRetried { seq, .. } if *seq == first.seq),
            )
            .await;
        // ... when the second MOVING comes, to a working endpoint.
        let second = env
            .sim
            .start_moving(moving(Some(first.from), Duration::from_secs(3)))
            .unwrap();
        events
            .wait(
                "second handoff",
                |e| matches!(e, MaintEvent::HandoffSucceeded { seq, .. } if *seq == second.seq),
            )
            .await;
        let superseded = events
            .wait(
                "first reported",
                |e| matches!(e, MaintEvent::HandoffFailed { seq, .. } if *seq == first.seq),
            )
            .await;
        assert!(
            format!("{superseded:?}").contains("superseded"),
            "{superseded:?}"
        );
        assert_eq!(svc.get_ref().connected_to(), vec![endpoint(second.to)]);
        let (a, b) = (
            first.finished().await.unwrap(),
            second.finished().await.unwrap(),
        );
        assert_eq!(a.closed + b.closed, 0);
        load.run_for(500).await;
        check_ledger(&env, &load.finish().await);
        sockets_left(&env, 1).await;
        assert_eq!(
            events.count(succeeded),
            1,
            "only one handoff succeeded: {:?}",
            events.all()
        );
    })
    .await;
}

/// Acceptance: a custom policy that maps the announced address to another
/// one is honoured. The announced endpoint refuses connections, so only the
/// mapped one can work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_policy_maps_the_target() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let announced = env.sim.open_endpoint().await.unwrap();
        env.sim.refuse_connections(announced, true);
        let reachable = env.sim.open_endpoint().await.unwrap();
        let policy = DefaultPolicy.map_target(move |_moving, target| {
            if target == endpoint(announced) {
                endpoint(reachable)
            } else {
                target
            }
        });
        let svc = stack_with(&env, config(), 1, policy);
        let mut events = Events::of(&svc);
        let load = ledger::start(&svc, 16, "ledger:policy");
        load.run_for(500).await;
        let mut m = moving(None, Duration::from_secs(2));
        m.to = Some(announced);
        let moved = env.sim.moving(m).await.unwrap();
        assert_eq!(moved.closed, 0);
        assert_eq!(svc.get_ref().connected_to(), vec![endpoint(reachable)]);
        assert_eq!(clients_on(&env, reachable), 1);
        load.run_for(500).await;
        check_ledger(&env, &load.finish().await);
        sockets_left(&env, 1).await;
        assert!(events.all().iter().any(|e| matches!(e,
            MaintEvent::HandoffSucceeded { to, .. } if *to == endpoint(reachable))));
        assert_eq!(
            events.count(|e| matches!(e, MaintEvent::HandoffRetried { .. })),
            0
        );
    })
    .await;
}

/// Acceptance: the target refuses connections. Dials are retried with
/// backoff (counted), the breaker opens; commands keep succeeding on the
/// old connection until its deadline and then on a reconnect to the
/// configured address. When the target is back, the breaker half-opens and
/// closes with the next handoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_target_retries_opens_the_breaker_and_recovers() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let cfg = config()
            .max_handoff_retries(4)
            .circuit_breaker_failure_threshold(3)
            .circuit_breaker_reset_timeout(Duration::from_millis(500))
            .circuit_breaker_max_requests(1);
        let svc = stack_with(&env, cfg, 1, DefaultPolicy);
        let mut events = Events::of(&svc);
        // One sequential task: at most one command in flight when the
        // old connection is closed at its deadline.
        let load = ledger::start(&svc, 1, "ledger:refused");
        load.run_for(200).await;
        let target = env.sim.open_endpoint().await.unwrap();
        env.sim.refuse_connections(target, true);
        let mut m = moving(None, Duration::from_secs(3));
        m.to = Some(target);
        m.stay_open = true;
        // The state of the endpoint the pool is on (this clone has sent
        // nothing, so it follows the pool through its handle).
        let from = svc.get_ref().maintenance_handle().current();
        let handle = env.sim.start_moving(m).unwrap();
        let failed = events.wait("handoff gave up", |e| {
            matches!(e, MaintEvent::HandoffFailed { .. })
        })
        .await;
        assert_eq!(from.status().handoffs_failed, 1);
        assert_eq!(from.status().handoffs_succeeded, 0);
        let retries = events.count(|e| matches!(e, MaintEvent::HandoffRetried { .. }));
        assert_eq!(retries, 2, "3 dials, 2 retries, then the breaker: {:?}", events.all());
        assert!(format!("{failed:?}").contains("circuit breaker"), "{failed:?}");
        assert!(events.all().iter().any(|e| matches!(e,
            MaintEvent::Breaker { state: BreakerState::Open, endpoint: e } if *e == endpoint(target))));
        // Still on the old connection, still working.
        assert_eq!(svc.get_ref().connected_to(), vec![endpoint(handle.from)]);
        load.run_for(200).await;
        let moved = handle.finished().await.unwrap();
        assert_eq!(moved.closed, 0, "left before the deadline");
        load.run_for(200).await;
        // Reconnected to the configured address.
        assert_eq!(svc.get_ref().connected_to(), vec![env.endpoint()]);

        env.sim.refuse_connections(target, false);
        let mut m = moving(None, Duration::from_secs(2));
        m.to = Some(target);
        m.stay_open = true;
        // The next MOVING comes after the reset timeout: half-open, one
        // trial dial, closed.
        let handle = env.sim.start_moving(m).unwrap();
        events.wait("handoff succeeded", succeeded).await;
        for state in [BreakerState::HalfOpen, BreakerState::Closed] {
            assert!(events.all().iter().any(|e| matches!(e,
                MaintEvent::Breaker { state: s, .. } if *s == state)), "{state:?}: {:?}", events.seen);
        }
        assert_eq!(svc.get_ref().connected_to(), vec![endpoint(target)]);
        handle.finished().await.unwrap();
        load.run_for(200).await;
        // The old connection was left just before its deadline, drained:
        // nothing failed.
        check_ledger(&env, &load.finish().await);
        sockets_left(&env, 1).await;
    })
    .await;
}

/// A caller waiting for a connect that fails gets the connect error, and
/// the next call tries again (no caller waits on a dead socket).
#[tokio::test]
async fn connect_failure_reaches_the_caller_and_the_next_call_retries() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        env.sim.refuse_connections(env.sim.endpoint(), true);
        let mut svc = stack(&env, 1);
        let err = send(&mut svc, cmd("PING")).await.unwrap_err();
        assert!(err.is_connection_error(), "{err:?}");
        env.sim.refuse_connections(env.sim.endpoint(), false);
        assert_eq!(
            send(&mut svc, cmd("PING")).await.unwrap(),
            Value::SimpleString("PONG".into())
        );
        // A connection killed by the server is replaced on the next call.
        assert_eq!(env.sim.close(redis_layers::sim::Target::All), 1);
        let mut tries = 0;
        let reply = loop {
            tries += 1;
            match send(&mut svc, cmd("PING")).await {
                Ok(v) => break v,
                Err(e) if tries < 3 => assert!(e.is_connection_error(), "{e:?}"),
                Err(e) => panic!("no reconnect: {e}"),
            }
        };
        assert_eq!(reply, Value::SimpleString("PONG".into()));
    })
    .await;
}

/// Layer configuration errors name the field.
#[test]
fn pool_size_is_validated() {
    let e = HandoffLayer::new(Endpoint::tcp("h", 1))
        .pool_size(0)
        .unwrap_err();
    assert_eq!(e.field(), "pool_size");
    let cfg = MaintenanceConfig::default().max_active_conns(4);
    let e = HandoffLayer::new(Endpoint::tcp("h", 1))
        .pool_size(8)
        .unwrap()
        .maintenance(&cfg)
        .unwrap_err();
    assert_eq!(e.field(), "pool_size");
    let e = HandoffLayer::new(Endpoint::tcp("h", 1))
        .maintenance(&MaintenanceConfig::default().max_handoff_retries(11))
        .unwrap_err();
    assert_eq!(e.field(), "max_handoff_retries");
}

/// Spec: the policy may spread a pool's handoffs over the first half of
/// the window; `spread()` does, evenly, and the ledger stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_policy_spreads_a_pool_over_half_the_window() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let svc = stack_with(&env, config(), 4, DefaultPolicy.spread());
        let mut events = Events::of(&svc);
        let load = ledger::start(&svc, 32, "ledger:spread");
        opted_in(&env, 4).await;
        load.run_for(1_000).await;
        let handle = env
            .sim
            .start_moving(moving(None, Duration::from_secs(4)))
            .unwrap();
        let sent = tokio::time::Instant::now();
        let mut starts = vec![];
        for _ in 0..4 {
            events
                .wait("handoff started", |e| {
                    matches!(e, MaintEvent::HandoffStarted { .. })
                })
                .await;
            starts.push(sent.elapsed());
            events.seen.clear();
        }
        // 0, 0.5, 1.0, 1.5 s after the MOVING (4 s window, 4 connections).
        for (i, t) in starts.iter().enumerate() {
            let want = Duration::from_millis(500) * i as u32;
            assert!(
                *t + Duration::from_millis(50) >= want && *t < want + Duration::from_millis(400),
                "handoff {i} started at {t:?}, want about {want:?}: {starts:?}"
            );
        }
        let moved = handle.finished().await.unwrap();
        assert_eq!(moved.closed, 0);
        load.run_for(500).await;
        check_ledger(&env, &load.finish().await);
        sockets_left(&env, 4).await;
    })
    .await;
}

/// Spec: handoffs run on a bounded worker set with a bounded queue. With
/// one worker and room for two jobs, a pool of four hands off two
/// connections; the other two are reported ("handoff queue full"), serve on
/// the old endpoint until just before the deadline, and are then replaced
/// by new connections, made where the successful handoffs went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handoff_queue_is_bounded() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let cfg = config().max_workers(1).handoff_queue_size(2);
        let svc = stack_with(&env, cfg, 4, DefaultPolicy);
        let mut events = Events::of(&svc);
        let load = ledger::start(&svc, 32, "ledger:queue");
        opted_in(&env, 4).await;
        load.run_for(1_000).await;
        let mut m = moving(None, Duration::from_secs(2));
        m.stay_open = true;
        let moved = env.sim.moving(m).await.unwrap();
        let full = events.count(|e| {
            matches!(e, MaintEvent::HandoffFailed { reason, .. } if reason == "handoff queue full")
        });
        assert_eq!(full, 2, "{:?}", events.all());
        assert_eq!(events.count(succeeded), 2);
        assert_eq!(
            moved.closed, 0,
            "the two left behind were left before the deadline"
        );
        load.run_for(1_000).await;
        assert_eq!(svc.get_ref().connected_to(), vec![endpoint(moved.to); 4]);
        check_ledger(&env, &load.finish().await);
        sockets_left(&env, 4).await;
    })
    .await;
}

/// The number in the next pub/sub message.
async fn next_message(pushes: &mut redis_layers::PushReceiver) -> u64 {
    let v = within(STEP, "message", pushes.recv())
        .await
        .expect("push stream open");
    let Value::Push(items) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(items[0], Value::BulkString("message".into()), "{v:?}");
    String::from_utf8_lossy(items[2].as_bytes().unwrap())
        .parse()
        .unwrap()
}

/// Issue: a subscription made through the layer moves with its connection:
/// the new connection subscribes before it takes over, the merged push
/// stream keeps delivering, and no message published during the MOVING is
/// lost (one published in the moment both are subscribed may come twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_the_connection_across_a_moving() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let mut svc = stack(&env, 1);
        let mut pushes = svc.get_ref().take_pushes().expect("pushes");
        assert!(svc.get_ref().take_pushes().is_none());
        send(&mut svc, cmd("SUBSCRIBE").arg("news")).await.unwrap();
        // The publisher talks to the server directly, past the simulator.
        let publisher = Connector::new()
            .connect(env.server.endpoint())
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // How many messages were published so far.
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let published = tokio::spawn({
            let (stop, count) = (stop.clone(), count.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    publisher
                        .send_cmd(cmd("PUBLISH").arg("news").arg(n))
                        .await
                        .unwrap();
                    n += 1;
                    count.store(n, Ordering::Relaxed);
                }
                n
            }
        });
        let mut received = vec![];
        received.push(next_message(&mut pushes).await);
        let moved = env
            .sim
            .moving(moving(None, Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(moved.closed, 0);
        // The old connection is closed now. Messages published from here on
        // arrive (the new connection is subscribed), and none in between
        // is lost: read until 100 past this point.
        let after_close = count.load(Ordering::Relaxed);
        while *received.last().unwrap() < after_close + 100 {
            received.push(next_message(&mut pushes).await);
        }
        stop.store(true, Ordering::Relaxed);
        let total = published.await.unwrap();
        assert!(total >= after_close + 100, "published {total}");
        let first = received[0];
        let last = *received.last().unwrap();
        let mut seen: Vec<u64> = received.clone();
        seen.sort_unstable();
        let dups = seen.len() - {
            seen.dedup();
            seen.len()
        };
        let missing = (first..=last)
            .filter(|n| seen.binary_search(n).is_err())
            .count();
        assert_eq!(missing, 0, "lost messages between {first} and {last}");
        assert!(dups <= 10, "{dups} duplicates");
        assert_eq!(clients_on(&env, moved.to), 1);
    })
    .await;
}

/// Issue: a lease is a dedicated connection: a `BLPOP` on it does not hold
/// up the shared connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_blocks_alone() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let mut svc = stack(&env, 1);
        let mut lease = svc.get_ref().lease().await.unwrap();
        let blpop = tokio::spawn(async move {
            let r = (&mut lease)
                .oneshot(cmd("BLPOP").arg("q").arg(5).into())
                .await
                .and_then(|r| r.into_value());
            (r, lease)
        });
        for _ in 0..3 {
            assert_eq!(
                within(STEP, "PING while BLPOP waits", send(&mut svc, cmd("PING")))
                    .await
                    .unwrap(),
                Value::SimpleString("PONG".into())
            );
        }
        assert!(!blpop.is_finished());
        send(&mut svc, cmd("LPUSH").arg("q").arg("job"))
            .await
            .unwrap();
        let (r, _lease) = within(STEP, "BLPOP", blpop).await.unwrap();
        assert_eq!(
            r.unwrap(),
            Value::Array(vec![
                Value::BulkString("q".into()),
                Value::BulkString("job".into())
            ])
        );
    })
    .await;
}

/// The simulator's client connections, oldest first.
fn client_ids(env: &SimStandalone) -> Vec<u64> {
    let mut v: Vec<u64> = env.sim.clients().iter().map(|c| c.id).collect();
    v.sort_unstable();
    v
}

/// A clean lease's connection serves the next lease; one that ran `WATCH`
/// (state on the connection) is closed when given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_leases_are_reused_and_dirty_ones_closed() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let mut svc = stack(&env, 1);
        send(&mut svc, cmd("PING")).await.unwrap();
        let mut lease = svc.get_ref().lease().await.unwrap();
        send(&mut lease, cmd("GET").arg("k")).await.unwrap();
        drop(lease);
        let after_first = client_ids(&env);
        assert_eq!(after_first.len(), 2);
        let mut lease = svc.get_ref().lease().await.unwrap();
        assert_eq!(
            client_ids(&env),
            after_first,
            "the clean connection was reused"
        );
        send(&mut lease, cmd("WATCH").arg("k")).await.unwrap();
        drop(lease);
        sockets_left(&env, 1).await;
        let lease = svc.get_ref().lease().await.unwrap();
        let now = client_ids(&env);
        assert_eq!(now.len(), 2);
        assert!(
            now[1] > after_first[1],
            "a new connection: {now:?} after {after_first:?}"
        );
        drop(lease);
    })
    .await;
}

/// A lease whose `BLPOP` got its reply is reused; one whose caller gave up
/// while it blocked is closed when given back (the server would pop the
/// next element for nobody), and the element waits for the next `BLPOP`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_reused_after_a_blocking_reply_and_closed_after_one_given_up() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let mut svc = stack(&env, 1);
        send(&mut svc, cmd("PING")).await.unwrap();
        let port = env.server.port();
        let item = |v: &str| {
            Value::Array(vec![
                Value::BulkString("jobs".into()),
                Value::BulkString(v.to_string().into()),
            ])
        };
        env.server.cli(&["RPUSH", "jobs", "a"]);
        let mut lease = svc.get_ref().lease().await.unwrap();
        let got = send(&mut lease, cmd("BLPOP").arg("jobs").arg(1))
            .await
            .unwrap();
        assert_eq!(got, item("a"));
        drop(lease);
        let after = client_ids(&env);
        assert_eq!(after.len(), 2);

        let mut lease = svc.get_ref().lease().await.unwrap();
        assert_eq!(
            client_ids(&env),
            after,
            "the answered BLPOP's connection was reused"
        );
        {
            let blpop = send(&mut lease, cmd("BLPOP").arg("jobs").arg(0));
            tokio::pin!(blpop);
            tokio::select! {
                r = &mut blpop => panic!("nothing to pop, yet {r:?}"),
                _ = blocked_clients(port, 1) => {}
            }
        }
        drop(lease);
        sockets_left(&env, 1).await;
        blocked_clients(port, 0).await;
        env.server.cli(&["RPUSH", "jobs", "b"]);
        assert_eq!(env.server.cli(&["LLEN", "jobs"]), "1", "nobody took it");
        let mut lease = svc.get_ref().lease().await.unwrap();
        assert!(client_ids(&env)[1] > after[1], "a new connection");
        let got = send(&mut lease, cmd("BLPOP").arg("jobs").arg(1))
            .await
            .unwrap();
        assert_eq!(got, item("b"));
    })
    .await;
}

/// Issue: leased connections are handed off when given back: an idle one
/// is closed by the MOVING, one held during the window is closed when
/// given back, and the next lease is dialled at the new endpoint; nothing
/// is left on the old endpoint at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_move_when_given_back() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let mut svc = stack(&env, 1);
        let mut events = Events::of(&svc);
        send(&mut svc, cmd("PING")).await.unwrap();
        let idle = svc.get_ref().lease().await.unwrap();
        let mut held = svc.get_ref().lease().await.unwrap();
        drop(idle);
        send(&mut held, cmd("SET").arg("k").arg("v")).await.unwrap();
        opted_in(&env, 3).await;
        let handle = env
            .sim
            .start_moving(moving(None, Duration::from_secs(1)))
            .unwrap();
        events.wait("pool handed off", succeeded).await;
        assert_eq!(held.endpoint(), &endpoint(handle.from));
        drop(held);
        let moved = handle.finished().await.unwrap();
        assert_eq!(moved.closed, 0, "a lease was left on the old endpoint");
        let mut lease = svc.get_ref().lease().await.unwrap();
        assert_eq!(lease.endpoint(), &endpoint(moved.to));
        assert_eq!(
            send(&mut lease, cmd("GET").arg("k")).await.unwrap(),
            Value::BulkString("v".into())
        );
    })
    .await;
}

/// Issue 14 acceptance, on the simulator: a `MOVING` to another loopback
/// address (`127.0.0.2`, another host as far as the default target policy
/// knows) is followed when allow-listed, with the ledger exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_listed_moving_target_is_followed_with_an_exact_ledger() {
    use redis_layers::trust::{AllowHosts, DefaultTargetPolicy, TargetPolicyExt};
    bounded(30, async {
        let env = SimStandalone::start().await;
        let (handoff, connector) = env.handoff_parts(&config(), 1);
        let handoff = handoff.target_policy(DefaultTargetPolicy.or(AllowHosts::new(["127.0.0.2"])));
        let svc = RelaxTimeoutLayer::new(Duration::from_secs(1)).layer(handoff.layer(connector));
        let mut events = Events::of(&svc);
        let load = ledger::start(&svc, 16, "ledger:allowed");
        opted_in(&env, 1).await;
        load.run_for(500).await;
        let mut m = moving(None, Duration::from_secs(2));
        m.to = Some("127.0.0.2:0".parse().unwrap());
        let moved = env.sim.moving(m).await.unwrap();
        assert_eq!(moved.closed, 0);
        assert_eq!(moved.to.ip().to_string(), "127.0.0.2");
        assert_eq!(svc.get_ref().connected_to(), vec![endpoint(moved.to)]);
        load.run_for(500).await;
        check_ledger(&env, &load.finish().await);
        assert_eq!(
            events.count(|e| matches!(e, MaintEvent::TargetRefused { .. })),
            0
        );
    })
    .await;
}

/// The same `MOVING` under the default target policy: refused, handled as
/// a null endpoint (the configured address, which stays open here, after
/// half the time), reported as an event, and no command fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_moving_target_fails_no_command() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let svc = stack(&env, 1);
        let mut events = Events::of(&svc);
        let load = ledger::start(&svc, 16, "ledger:refused-target");
        opted_in(&env, 1).await;
        load.run_for(500).await;
        let mut m = moving(None, Duration::from_secs(2));
        m.to = Some("127.0.0.2:0".parse().unwrap());
        m.stay_open = true;
        let moved = env.sim.moving(m).await.unwrap();
        events
            .wait("refused", |e| matches!(e, MaintEvent::TargetRefused { .. }))
            .await;
        events.wait("reconnected", succeeded).await;
        assert_eq!(svc.get_ref().connected_to(), vec![env.endpoint()]);
        assert_eq!(clients_on(&env, moved.to), 0);
        load.run_for(500).await;
        check_ledger(&env, &load.finish().await);
    })
    .await;
}

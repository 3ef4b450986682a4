//! Maintenance notifications end to end on real redis-server, through the
//! simulator: the opt-in handshake and its modes, notifications reaching the
//! endpoint's state (and never the user's push channel), malformed frames,
//! and the RelaxTimeout layer relaxing and restoring timeouts.
#![cfg(feature = "sim")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_layers::maint::{
    EndpointType as MaintType, Kind, MaintEvent, Maintained, MaintenanceConfig, Mode,
};
use redis_layers::relax::RelaxTimeoutLayer;
use redis_layers::sim::{EndpointType, Push, Target, Window};
use redis_layers::{cmd, Connection, Connector, Error, Request, Value};
use support::sim::SimStandalone;
use support::{bounded, within, RedisServer};
use tower::{Layer, Service, ServiceExt};

const STEP: Duration = Duration::from_secs(5);

/// Counts warn-and-above events from this crate, to check that a quiet
/// fallback is quiet.
#[derive(Clone, Default)]
struct WarnCounter(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarnCounter {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *e.metadata().level() <= tracing::Level::WARN
            && e.metadata().target().starts_with("redis_layers")
        {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn connector(mode: Mode) -> Connector {
    Connector::new()
        .maintenance(MaintenanceConfig::default().mode(mode))
        .expect("valid config")
}

fn relaxing(relaxed: Duration, window_max: Duration) -> Connector {
    Connector::new()
        .maintenance(
            MaintenanceConfig::default()
                .mode(Mode::Enabled)
                .relaxed_timeout(relaxed)
                .relaxed_window_max(window_max),
        )
        .expect("valid config")
}

async fn connect(c: &Connector, env: &SimStandalone) -> Connection {
    within(STEP, "connect", c.connect(env.endpoint()))
        .await
        .expect("connect")
}

// ===== handshake modes =====

/// Spec 1, mode Auto against plain redis-server 7 (which refuses the
/// subcommand): connects, works, no warn-level event; Enabled: the connect
/// fails with an error naming the cause.
#[tokio::test]
async fn modes_against_plain_redis() {
    let warns = WarnCounter::default();
    let subscriber = tracing_subscriber::registry().with(warns.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    bounded(30, async {
        let server = RedisServer::start();
        let auto = within(
            STEP,
            "auto",
            connector(Mode::Auto).connect(server.endpoint()),
        )
        .await
        .expect("Auto connects to a server without maintenance support");
        assert_eq!(
            auto.send_cmd(cmd("PING")).await.unwrap(),
            Value::SimpleString("PONG".into())
        );
        assert!(!auto.info().unwrap().maintenance.is_enabled());
        assert_eq!(warns.0.load(Ordering::SeqCst), 0, "Auto fallback is quiet");

        let e = within(
            STEP,
            "enabled",
            connector(Mode::Enabled).connect(server.endpoint()),
        )
        .await
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("MAINT_NOTIFICATIONS"), "{text}");
    })
    .await
}

/// Spec 1: Enabled and Auto through the simulator opt in with the detected
/// endpoint type (loopback, no TLS -> `internal-ip`); Disabled sends
/// nothing (the simulator's registry counts the requests).
#[tokio::test]
async fn modes_through_the_simulator() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        for (mode, name) in [
            (Mode::Enabled, "enabled"),
            (Mode::Auto, "auto"),
            (Mode::Disabled, "disabled"),
        ] {
            let c = Connector::new()
                .client_name(name)
                .maintenance(MaintenanceConfig::default().mode(mode))
                .unwrap();
            let conn = connect(&c, &env).await;
            let mut info = None;
            env.sim
                .wait_for(|cs| {
                    info = cs.iter().find(|c| c.name.as_deref() == Some(name)).cloned();
                    info.is_some()
                })
                .await;
            let info = info.unwrap();
            if mode == Mode::Disabled {
                assert_eq!(info.maint_requests, 0, "Disabled sends nothing");
                assert_eq!(info.maint, None);
                assert!(!conn.info().unwrap().maintenance.is_enabled());
            } else {
                assert_eq!(info.maint_requests, 1);
                assert_eq!(info.maint, Some(EndpointType::InternalIp), "{mode:?}");
                assert!(conn.info().unwrap().maintenance.is_enabled());
            }
        }
        // A configured type is sent as is.
        let c = Connector::new()
            .client_name("fqdn")
            .maintenance(MaintenanceConfig::default().endpoint_type(MaintType::ExternalFqdn))
            .unwrap();
        connect(&c, &env).await;
        env.sim
            .wait_for(|cs| {
                cs.iter().any(|c| {
                    c.name.as_deref() == Some("fqdn") && c.maint == Some(EndpointType::ExternalFqdn)
                })
            })
            .await;
    })
    .await
}

/// Spec 4: invalid values are rejected when the connector is built, with
/// an error naming the field.
#[test]
fn invalid_config_is_rejected_by_name() {
    let bad = [
        (
            MaintenanceConfig::default().relaxed_timeout(Duration::ZERO),
            "relaxed_timeout",
        ),
        (
            MaintenanceConfig::default().max_handoff_retries(0),
            "max_handoff_retries",
        ),
        (
            MaintenanceConfig::default().max_handoff_retries(11),
            "max_handoff_retries",
        ),
    ];
    for (cfg, field) in bad {
        let e = Connector::new().maintenance(cfg).unwrap_err();
        assert_eq!(e.field(), field, "{e}");
        assert!(e.to_string().contains(field), "{e}");
        assert!(matches!(Error::from(e), Error::Config(_)));
    }
}

// ===== notifications =====

/// Spec 2: maintenance pushes go to the endpoint's state as typed events,
/// never to the user's push channel; other pushes do, in order; 1,000
/// malformed maintenance frames are dropped without panic or closing the
/// connection.
#[tokio::test]
async fn notifications_reach_the_state_not_the_push_channel() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let conn = connect(&connector(Mode::Enabled), &env).await;
        let mut pushes = conn.take_pushes().unwrap();
        let mut events = conn.maintenance().subscribe();
        env.sim
            .wait_for(|cs| cs.iter().any(|c| c.maint.is_some()))
            .await;

        let n = Push::Migrating {
            seq: env.sim.next_seq(),
            time: 5,
            shard_ids: Some("1,2".into()),
        };
        env.sim.notify(Target::All, &n);
        env.sim.inject_raw(
            Target::All,
            &b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"[..],
        );
        let ev = within(STEP, "event", events.recv()).await.unwrap();
        match ev {
            MaintEvent::Notification {
                notification,
                vetoed,
            } => {
                assert_eq!(notification.kind(), Kind::Migrating);
                assert_eq!(notification.seq(), n.seq());
                assert!(!vetoed);
            }
            other => panic!("{other:?}"),
        }
        let user = within(STEP, "user push", pushes.recv()).await.unwrap();
        assert_eq!(user.push_kind(), Some(&b"message"[..]));

        // 1,000 malformed maintenance pushes: dropped, connection fine.
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let kinds = [
            "MOVING",
            "MIGRATING",
            "MIGRATED",
            "FAILING_OVER",
            "FAILED_OVER",
            "SMIGRATING",
            "SMIGRATED",
        ];
        let junk = ["x", "-1", "", "1.5.5", "abc:def", "99999-1", "<nil>", "::"];
        for i in 0..1000 {
            let kind = kinds[i % kinds.len()];
            let n = (next() % 5) as usize;
            let mut frame = format!(">{}\r\n${}\r\n{kind}\r\n", n + 1, kind.len());
            for _ in 0..n {
                let j = junk[(next() % junk.len() as u64) as usize];
                frame.push_str(&format!("${}\r\n{j}\r\n", j.len()));
            }
            env.sim.inject_raw(Target::All, frame.into_bytes());
        }
        assert_eq!(
            within(STEP, "after junk", conn.send_cmd(cmd("PING")))
                .await
                .unwrap(),
            Value::SimpleString("PONG".into())
        );
        assert!(!conn.is_closed());
        assert_eq!(pushes.try_recv(), None, "junk never reaches the user");
    })
    .await
}

// ===== relaxed timeouts =====

async fn timed(
    svc: &mut redis_layers::relax::RelaxTimeout<Connection>,
    req: Request,
) -> (Result<Value, Error>, Duration) {
    let t = Instant::now();
    let r = svc.ready().await.unwrap().call(req).await;
    (r.and_then(|r| r.into_value()), t.elapsed())
}

/// Spec 3 / issue 4 acceptance, relaxation under load: timeout 200 ms,
/// relaxed 2 s, replies slowed to 600 ms during `migrate()` (and
/// `failover()`): no timeouts while relaxed; after the end notification the
/// same delay times out again at about 200 ms.
#[tokio::test]
async fn relaxed_during_the_window_and_restored_after() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let conn = connect(
            &relaxing(Duration::from_secs(2), Duration::from_secs(6)),
            &env,
        )
        .await;
        let mut events = conn.maintenance().subscribe();
        env.sim
            .wait_for(|cs| cs.iter().any(|c| c.maint.is_some()))
            .await;
        let mut svc = RelaxTimeoutLayer::new(Duration::from_millis(200)).layer(conn.clone());

        for migrate in [true, false] {
            let mut w = Window::new(Duration::from_millis(2500));
            w.reply_delay = Duration::from_millis(600);
            let run = tokio::spawn({
                let sim = env.sim.clone();
                async move {
                    if migrate {
                        sim.migrate(w).await
                    } else {
                        sim.failover(w).await
                    }
                }
            });
            // Relaxed once the start notification is in.
            loop {
                match within(STEP, "relaxed", events.recv()).await.unwrap() {
                    MaintEvent::Relaxed { .. } => break,
                    _ => continue,
                }
            }
            // Many concurrent commands while relaxed: none times out.
            let calls: Vec<_> = (0..20)
                .map(|i| {
                    let mut s = svc.clone();
                    tokio::spawn(async move {
                        timed(&mut s, cmd("SET").arg(format!("k{i}")).arg(i).into()).await
                    })
                })
                .collect();
            for c in calls {
                let (r, took) = c.await.unwrap();
                assert!(r.is_ok(), "timed out while relaxed after {took:?}: {r:?}");
                assert!(
                    took >= Duration::from_millis(550),
                    "the delay was real: {took:?}"
                );
            }
            within(STEP, "window end", run).await.unwrap();
            loop {
                match within(STEP, "unrelaxed", events.recv()).await.unwrap() {
                    MaintEvent::Unrelaxed { by } => {
                        assert_eq!(by, "notification");
                        break;
                    }
                    _ => continue,
                }
            }
            // The same delay, no longer relaxed: times out at ~200 ms.
            env.sim.set_delay(Target::All, Duration::from_millis(600));
            let (r, took) = timed(&mut svc, cmd("GET").arg("k1").into()).await;
            assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
            assert!(
                took >= Duration::from_millis(195) && took < Duration::from_millis(400),
                "{took:?}"
            );
            env.sim.set_delay(Target::All, Duration::ZERO);
        }
    })
    .await
}

/// Spec 3: the backstop ends a relaxation whose end never comes; a
/// configured timeout larger than the relaxed one is never shortened;
/// `BLPOP k 0` keeps no timeout, relaxed or not.
#[tokio::test]
async fn backstop_longer_timeouts_and_blocking_commands() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let conn = connect(
            &relaxing(Duration::from_secs(1), Duration::from_millis(1500)),
            &env,
        )
        .await;
        let mut events = conn.maintenance().subscribe();
        env.sim
            .wait_for(|cs| cs.iter().any(|c| c.maint.is_some()))
            .await;
        let mut svc = RelaxTimeoutLayer::new(Duration::from_millis(200)).layer(conn.clone());
        env.sim.set_delay(Target::All, Duration::from_millis(500));

        // Relaxed with no end in sight.
        let started = Instant::now();
        env.sim.notify(
            Target::All,
            &Push::FailingOver {
                seq: env.sim.next_seq(),
                time: 1,
                shard_ids: None,
            },
        );
        loop {
            if let MaintEvent::Relaxed { .. } =
                within(STEP, "relaxed", events.recv()).await.unwrap()
            {
                break;
            }
        }
        let (r, _) = timed(&mut svc, cmd("PING").into()).await;
        assert!(r.is_ok(), "relaxed: {r:?}");
        // A configured 3 s stays 3 s (longer than relaxed 1 s).
        let (r, _) = timed(
            &mut svc,
            Request::from(cmd("PING")).with_timeout(Duration::from_secs(3)),
        )
        .await;
        assert!(r.is_ok(), "{r:?}");
        // The backstop ends it.
        loop {
            match within(STEP, "backstop", events.recv()).await.unwrap() {
                MaintEvent::Unrelaxed { by } => {
                    assert_eq!(by, "backstop");
                    break;
                }
                _ => continue,
            }
        }
        let ended = started.elapsed();
        assert!(
            ended >= Duration::from_millis(1450) && ended < Duration::from_millis(2500),
            "{ended:?}"
        );
        let (r, took) = timed(&mut svc, cmd("PING").into()).await;
        assert!(
            matches!(r, Err(Error::Timeout)),
            "after the backstop: {r:?} in {took:?}"
        );

        // BLPOP k 0: no timeout, whatever the default.
        env.sim.set_delay(Target::All, Duration::ZERO);
        let waiter = tokio::spawn({
            let mut s = svc.clone();
            async move { timed(&mut s, cmd("BLPOP").arg("q").arg(0).into()).await }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        env.server.cli(&["LPUSH", "q", "job"]);
        let (r, took) = within(STEP, "BLPOP", waiter).await.unwrap();
        assert_eq!(
            r.unwrap(),
            Value::Array(vec![
                Value::BulkString("q".into()),
                Value::BulkString("job".into())
            ])
        );
        assert!(took >= Duration::from_millis(400));
    })
    .await
}

/// A simulator, and a connection to it relaxed to `relaxed` (backstop 3x)
/// that opted in, with its maintenance events.
async fn opted_in(
    relaxed: Duration,
) -> (
    SimStandalone,
    Connection,
    tokio::sync::broadcast::Receiver<MaintEvent>,
) {
    let env = SimStandalone::start().await;
    let conn = connect(&relaxing(relaxed, relaxed * 3), &env).await;
    let events = conn.maintenance().subscribe();
    env.sim
        .wait_for(|cs| cs.iter().any(|c| c.maint.is_some()))
        .await;
    (env, conn, events)
}

/// Spec 3: a relaxation that starts while a request is in flight extends
/// that request too (it left with the 200 ms default; its reply takes
/// 600 ms; MIGRATING arrives meanwhile): it completes, no timeout.
#[tokio::test]
async fn relaxation_extends_requests_in_flight() {
    bounded(30, async {
        let (env, conn, mut events) = opted_in(Duration::from_secs(2)).await;
        let svc = RelaxTimeoutLayer::new(Duration::from_millis(200)).layer(conn.clone());
        env.sim.set_delay(Target::All, Duration::from_millis(600));
        let in_flight = tokio::spawn({
            let mut s = svc.clone();
            async move { timed(&mut s, cmd("PING").into()).await }
        });
        // While it waits for its reply (the delay holds it), relax.
        tokio::task::yield_now().await;
        env.sim.notify(
            Target::All,
            &Push::Migrating {
                seq: env.sim.next_seq(),
                time: 0,
                shard_ids: None,
            },
        );
        loop {
            if let MaintEvent::Relaxed { .. } =
                within(STEP, "relaxed", events.recv()).await.unwrap()
            {
                break;
            }
        }
        let (r, took) = within(STEP, "in flight", in_flight).await.unwrap();
        assert!(
            r.is_ok(),
            "extended by the relaxation: {r:?} after {took:?}"
        );
        assert!(took >= Duration::from_millis(550), "{took:?}");
    })
    .await
}

/// The end of a relaxation does not take back the extension it gave the
/// requests in flight: one sent before `FAILING_OVER` (timeout 1 s,
/// relaxed 5 s, its reply held 2.5 s), whose reply comes after
/// `FAILED_OVER`, completes; a request sent after the end times out at
/// 1 s again.
#[tokio::test]
async fn the_end_of_a_relaxation_keeps_requests_in_flight_extended() {
    bounded(30, async {
        let (env, conn, mut events) = opted_in(Duration::from_secs(5)).await;
        let svc = RelaxTimeoutLayer::new(Duration::from_secs(1)).layer(conn.clone());
        env.sim.set_delay(Target::All, Duration::from_millis(2500));
        let sent = Instant::now();
        let in_flight = tokio::spawn({
            let mut s = svc.clone();
            async move { timed(&mut s, cmd("ECHO").arg("in flight").into()).await }
        });
        // The server has run it (the simulator holds its reply back).
        // Nothing announces that, so the server's counter is polled.
        within(STEP, "ECHO ran", env.server.ran("echo", 1)).await;
        // A failover starts and ends while it waits, before its own 1 s
        // would have run out (checked: a slow machine fails clearly).
        for n in [
            Push::FailingOver {
                seq: env.sim.next_seq(),
                time: 0,
                shard_ids: None,
            },
            Push::FailedOver {
                seq: env.sim.next_seq(),
                shard_ids: None,
            },
        ] {
            let ending = matches!(n, Push::FailedOver { .. });
            env.sim.notify(Target::All, &n);
            loop {
                match within(STEP, "event", events.recv()).await.unwrap() {
                    MaintEvent::Relaxed { .. } if !ending => break,
                    MaintEvent::Unrelaxed { .. } if ending => break,
                    _ => continue,
                }
            }
        }
        let ended = sent.elapsed();
        assert!(
            ended < Duration::from_millis(900),
            "the failover took {ended:?} to start and end: too slow to test"
        );
        let (r, took) = within(STEP, "in flight", in_flight).await.unwrap();
        assert!(r.is_ok(), "kept its extension: {r:?} after {took:?}");
        assert!(took >= Duration::from_millis(2400), "{took:?}");
        // Sent after the end: the normal timeout.
        let mut s = svc.clone();
        let (r, took) = timed(&mut s, cmd("PING").into()).await;
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        assert!(took < Duration::from_millis(2000), "{took:?}");
        env.sim.set_delay(Target::All, Duration::ZERO);
    })
    .await
}

use tracing_subscriber::layer::SubscriberExt;

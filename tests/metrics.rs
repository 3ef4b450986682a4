//! Spec 5: counters behind the `metrics` feature, with the spec's names.
#![cfg(all(feature = "sim", feature = "metrics"))]

mod support;

use std::time::Duration;

use redis_layers::maint::{
    MaintEvent, Maintained, MaintenanceConfig, Mode, NOTIFICATIONS, RELAXED,
};
use redis_layers::sim::{Push, Target};
use redis_layers::Connector;
use support::metrics::counted;
use support::sim::SimStandalone;

/// A MIGRATING notification counts once under
/// `redis.client.maintenance.notifications{kind=MIGRATING}` and starts one
/// relaxation under `redis.client.connection.relaxed_timeout`.
#[test]
fn notifications_and_relaxations_are_counted() {
    let counters = counted(async {
        let env = SimStandalone::start().await;
        let conn = Connector::new()
            .maintenance(MaintenanceConfig::default().mode(Mode::Enabled))
            .unwrap()
            .connect(env.endpoint())
            .await
            .unwrap();
        let mut events = conn.maintenance().subscribe();
        env.sim
            .wait_for(|cs| cs.iter().any(|c| c.maint.is_some()))
            .await;
        let n = Push::Migrating {
            seq: env.sim.next_seq(),
            time: 1,
            shard_ids: None,
        };
        env.sim.notify(Target::All, &n);
        loop {
            if let MaintEvent::Relaxed { .. } = events.recv().await.unwrap() {
                break;
            }
        }
    });
    assert!(
        counters.contains(&(
            NOTIFICATIONS.into(),
            vec![("kind".into(), "MIGRATING".into())],
            1
        )),
        "{counters:?}"
    );
    assert!(
        counters.contains(&(
            RELAXED.into(),
            vec![("reason".into(), "MIGRATING".into())],
            1
        )),
        "{counters:?}"
    );
    assert_eq!(NOTIFICATIONS, "redis.client.maintenance.notifications");
    assert_eq!(RELAXED, "redis.client.connection.relaxed_timeout");
}

/// A handoff counts under `redis.client.connection.handoff`, by `result`.
#[test]
fn handoffs_are_counted() {
    use redis_layers::handoff::{Handoff, HANDOFF};
    use tower::ServiceExt;

    let counters = counted(async {
        let env = SimStandalone::start().await;
        let connector = Connector::new()
            .maintenance(MaintenanceConfig::default().mode(Mode::Enabled))
            .unwrap();
        let svc = Handoff::new(connector, env.endpoint());
        let mut events = svc.subscribe();
        svc.clone()
            .oneshot(redis_layers::cmd("PING").into())
            .await
            .unwrap();
        env.sim
            .wait_for(|cs| cs.iter().any(|c| c.maint.is_some()))
            .await;
        env.sim
            .start_moving(redis_layers::sim::MovingPlan::new(Duration::from_secs(1)))
            .unwrap();
        loop {
            if let MaintEvent::HandoffSucceeded { .. } = events.recv().await.unwrap() {
                break;
            }
        }
    });
    for result in ["started", "succeeded"] {
        assert!(
            counters.contains(&(HANDOFF.into(), vec![("result".into(), result.into())], 1)),
            "{result}: {counters:?}"
        );
    }
    assert_eq!(HANDOFF, "redis.client.connection.handoff");
}

/// Push frames a full push channel drops count under
/// `redis.client.pushes.dropped`, one per frame.
#[test]
fn dropped_pushes_are_counted() {
    use redis_layers::transport::PUSHES_DROPPED;
    use support::hostile::{push, HostileServer};

    let counters = counted(async {
        let server = HostileServer::start();
        let conn = Connector::new()
            .push_capacity(3)
            .connect(server.endpoint())
            .await
            .unwrap();
        let pushes = conn.take_pushes().unwrap();
        let burst: Vec<u8> = (0..10)
            .flat_map(|i| push(&["message", "news", &i.to_string()]))
            .collect();
        server.inject(&burst);
        // Answered after the pushes were read.
        conn.send_cmd(redis_layers::cmd("PING")).await.unwrap();
        assert_eq!(pushes.dropped(), 7);
    });
    assert!(
        counters.contains(&(PUSHES_DROPPED.into(), vec![], 7)),
        "{counters:?}"
    );
    assert_eq!(PUSHES_DROPPED, "redis.client.pushes.dropped");
}

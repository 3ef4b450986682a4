//! Spec 5: counters behind the `metrics` feature, with the spec's names.
#![cfg(all(feature = "sim", feature = "metrics"))]

mod support;

use std::time::Duration;

use redis_layers::maint::{
    MaintEvent, Maintained, MaintenanceConfig, Mode, NOTIFICATIONS, RELAXED,
};
use redis_layers::sim::{Notification, Target};
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
        let n = Notification::Migrating {
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
            .start_moving(redis_layers::sim::Moving::new(Duration::from_secs(1)))
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

//! Stale maintenance notifications (issue 20) on real connections through
//! the simulator: a notification overtaken on its connection, an
//! `SMIGRATING` whose slots a later `SMIGRATED` already reported moved (read
//! on another connection of the endpoint), and a `MOVING` read on a
//! connection a handoff has retired are dropped; they neither relax timeouts
//! again nor end a relaxation nor start a handoff.
#![cfg(feature = "sim")]

mod support;

use std::time::Duration;

use redis_layers::maint::{Maintained, MaintenanceConfig, Mode};
use redis_layers::sim::{Push, SlotMove, Target};
use redis_layers::{cmd, Connection, Connector, Value};
use support::sim::SimStandalone;
use support::{bounded, within};

const STEP: Duration = Duration::from_secs(5);

fn connector() -> Connector {
    Connector::new()
        .maintenance(
            MaintenanceConfig::default()
                .mode(Mode::Enabled)
                .relaxed_timeout(Duration::from_secs(2))
                .relaxed_window_max(Duration::from_secs(60)),
        )
        .expect("valid config")
}

/// Connects, and returns the connection with its id in the simulator.
async fn connect(c: &Connector, env: &SimStandalone) -> (Connection, u64) {
    let before: Vec<u64> = env.sim.clients().iter().map(|c| c.id).collect();
    let conn = within(STEP, "connect", c.connect(env.endpoint()))
        .await
        .expect("connect");
    let id = env
        .sim
        .clients()
        .iter()
        .map(|c| c.id)
        .find(|id| !before.contains(id))
        .expect("the new connection");
    (conn, id)
}

/// Injects `n` on connection `id`, and returns once `conn` has read it (a
/// `PING` sent after it is answered after it).
async fn tell(env: &SimStandalone, conn: &Connection, id: u64, n: Push) {
    assert_eq!(env.sim.notify(Target::Client(id), &n), 1);
    assert_eq!(
        within(STEP, "ping", conn.send_cmd(cmd("PING")))
            .await
            .unwrap(),
        Value::SimpleString("PONG".into())
    );
}

fn relaxed(conn: &Connection) -> bool {
    conn.maintenance().relaxed_timeout().is_some()
}

/// A `MIGRATED` with a lower sequence number than the `MIGRATING` before it
/// on the same connection does not end the relaxation; the real one does.
#[tokio::test]
async fn an_overtaken_end_does_not_end_the_relaxation() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let (conn, id) = connect(&connector(), &env).await;
        let s = env.sim.next_seq() + 100;
        let migrating = Push::Migrating {
            seq: s,
            time: 5,
            shard_ids: None,
        };
        tell(&env, &conn, id, migrating).await;
        assert!(relaxed(&conn));
        let late = Push::Migrated {
            seq: s - 5,
            shard_ids: None,
        };
        tell(&env, &conn, id, late).await;
        assert!(relaxed(&conn), "a stale MIGRATED ended the relaxation");
        let end = Push::Migrated {
            seq: s + 1,
            shard_ids: None,
        };
        tell(&env, &conn, id, end).await;
        assert!(!relaxed(&conn));
    })
    .await
}

/// An `SMIGRATING` read on one connection after another connection of the
/// same endpoint read the `SMIGRATED` that reported its slots moved does
/// not relax the endpoint again; one for other slots does.
#[tokio::test]
async fn an_smigrating_after_its_smigrated_does_not_relax_again() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let c = connector();
        let (a, a_id) = connect(&c, &env).await;
        let (b, b_id) = connect(&c, &env).await;
        let s = env.sim.next_seq() + 100;
        let smigrating = |seq, slots: &str| Push::SMigrating {
            seq,
            slots: vec![slots.to_string()],
        };
        tell(&env, &a, a_id, smigrating(s, "0-100")).await;
        assert!(relaxed(&a));
        let smigrated = Push::SMigrated {
            seq: s + 1,
            moves: vec![SlotMove {
                src: "127.0.0.1:7000".into(),
                dst: "127.0.0.1:7001".into(),
                slots: "0-100".into(),
            }],
        };
        tell(&env, &a, a_id, smigrated).await;
        assert!(!relaxed(&a));
        // The same SMIGRATING, late, on the endpoint's other connection.
        tell(&env, &b, b_id, smigrating(s, "0-100")).await;
        assert!(
            !relaxed(&b),
            "a stale SMIGRATING relaxed the endpoint again"
        );
        // Slots that did not move yet: a current one.
        tell(&env, &b, b_id, smigrating(s, "50-200")).await;
        assert!(relaxed(&b));
    })
    .await
}

/// A `MOVING` read on a connection that a handoff retired is dropped: no
/// event, no `MOVING` in the endpoint's state; on a live one it is handled.
#[tokio::test]
async fn a_moving_on_a_retired_connection_is_dropped() {
    bounded(30, async {
        let env = SimStandalone::start().await;
        let c = connector();
        let (old, old_id) = connect(&c, &env).await;
        let mut events = old.maintenance().subscribe();
        old.retire();
        let moving = |seq| Push::Moving {
            seq,
            time: 15,
            endpoint: Some("127.0.0.1:1".into()),
        };
        tell(&env, &old, old_id, moving(env.sim.next_seq())).await;
        assert!(old.maintenance().active_moving().is_none());
        assert!(events.try_recv().is_err(), "an event for a stale MOVING");
        let (live, live_id) = connect(&c, &env).await;
        tell(&env, &live, live_id, moving(env.sim.next_seq())).await;
        assert!(live.maintenance().active_moving().is_some());
    })
    .await
}

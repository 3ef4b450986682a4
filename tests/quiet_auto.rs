//! Maintenance mode `Auto` against servers without the feature (issue 20):
//! one opt-in per endpoint, however many reconnects, and nothing above
//! debug level in the logs.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use redis_layers::maint::{Maintained, MaintenanceConfig, Mode, OptIn, ResolvedEndpointType};
use redis_layers::{cmd, Client, Connector, Protocol, Value};
use support::{bounded, within, RedisServer};
use tracing_subscriber::layer::SubscriberExt;

/// Captures this crate's events above debug level (info, warn, error).
#[derive(Clone, Default)]
struct Loud {
    count: Arc<AtomicUsize>,
    /// Of those, the handshake's and the maintenance code's.
    maint: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Loud {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let m = e.metadata();
        if *m.level() <= tracing::Level::INFO && m.target().starts_with("redis_layers") {
            self.count.fetch_add(1, Ordering::SeqCst);
            if m.target().ends_with("::handshake") || m.target().ends_with("::maint") {
                self.maint.fetch_add(1, Ordering::SeqCst);
            }
            let mut seen = self.seen.lock().unwrap();
            if seen.len() < 10 {
                seen.push(format!("{} {}: {}", m.level(), m.target(), m.name()));
            }
        }
    }
}

/// `errorstat_ERR:count` of `INFO errorstats`: redis-server 7.0 has no
/// `commandstats` entry for an unknown subcommand, but counts its error
/// reply. Nothing else in these tests is answered with `ERR`.
fn err_replies(server: &RedisServer) -> u64 {
    let info = server.cli(&["INFO", "errorstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("errorstat_ERR:count="))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

fn auto() -> Connector {
    Connector::new()
        .maintenance(MaintenanceConfig::default().mode(Mode::Auto))
        .expect("valid config")
}

/// 1,000 connections through one connector to a plain redis-server, each
/// dropped before the next (so no connection keeps the endpoint's state
/// alive in between): one opt-in, refused once, and no event above debug.
#[tokio::test]
async fn one_probe_for_a_thousand_reconnects() {
    let loud = Loud::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(loud.clone()));
    bounded(120, async {
        let server = RedisServer::start();
        let connector = auto();
        for _ in 0..1000 {
            let conn = connector.connect(server.endpoint()).await.expect("connect");
            assert_eq!(
                conn.send_cmd(cmd("PING")).await.unwrap(),
                Value::SimpleString("PONG".into())
            );
            assert!(!conn.info().unwrap().maintenance.is_enabled());
        }
        let probes = err_replies(&server);
        println!("opt-ins sent for 1000 connections: {probes}");
        assert_eq!(probes, 1, "one opt-in per endpoint");
        assert_eq!(
            loud.count.load(Ordering::SeqCst),
            0,
            "nothing above debug: {:?}",
            loud.seen.lock().unwrap()
        );
    })
    .await
}

fn connector(mode: Mode) -> Connector {
    Connector::new()
        .maintenance(MaintenanceConfig::default().mode(mode))
        .expect("valid config")
}

const STEP: Duration = Duration::from_secs(5);

/// The status says why an endpoint sends no notifications: refused by the
/// server (with its text, server and version), disabled by config, RESP2.
#[tokio::test]
async fn the_status_says_why() {
    bounded(30, async {
        let server = RedisServer::start();
        let ep = server.endpoint();

        let c = auto();
        assert_eq!(c.maintenance_state(&ep).status().opt_in, OptIn::NotProbed);
        let conn = within(STEP, "auto", c.connect(ep.clone())).await.unwrap();
        let status = conn.maintenance().status();
        match &status.opt_in {
            OptIn::Refused {
                error,
                server,
                version,
            } => {
                assert!(error.contains("unknown subcommand"), "{error}");
                assert_eq!(server.as_deref(), Some("redis"));
                assert!(version.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(status.endpoint_type, Some(ResolvedEndpointType::InternalIp));
        assert!(!status.is_enabled());
        assert_eq!(status.last_notification, None);
        assert_eq!(status.relaxed_until, None);
        assert_eq!((status.handoffs_succeeded, status.handoffs_failed), (0, 0));
        drop(conn);
        // Remembered beyond the connection (and its state): listed, and
        // a new state starts with it.
        let all = c.maintenance_status();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, ep);
        assert_eq!(all[0].1.opt_in.as_str(), "refused");

        let off = connector(Mode::Disabled);
        let conn = within(STEP, "disabled", off.connect(ep.clone()))
            .await
            .unwrap();
        assert_eq!(conn.maintenance().status().opt_in, OptIn::DisabledByConfig);
        assert_eq!(conn.maintenance().status().endpoint_type, None);

        let resp2 = auto().protocol(Protocol::Resp2);
        let conn = within(STEP, "resp2", resp2.connect(ep.clone()))
            .await
            .unwrap();
        assert_eq!(conn.maintenance().status().opt_in, OptIn::Resp2);

        // Enabled still fails the connection, and says why.
        let on = connector(Mode::Enabled);
        let state = on.maintenance_state(&ep);
        let e = within(STEP, "enabled", on.connect(ep.clone()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("MAINT_NOTIFICATIONS"), "{e}");
        assert_eq!(state.status().opt_in.as_str(), "refused");
        // Enabled asks every time: 1 (Auto) + 2 (Enabled).
        within(STEP, "enabled again", on.connect(ep.clone()))
            .await
            .unwrap_err();
        assert_eq!(err_replies(&server), 3);
    })
    .await
}

/// A Client in mode Auto: its endpoint's status through
/// `Client::maintenance_status`, and reconnects after `CLIENT KILL` do
/// not ask again.
#[tokio::test]
async fn a_client_reconnects_without_asking_again() {
    let loud = Loud::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(loud.clone()));
    bounded(60, async {
        let server = RedisServer::start();
        let client = within(
            STEP,
            "build",
            Client::builder(&format!("redis://127.0.0.1:{}", server.port()))
                .unwrap()
                .pool_size(2)
                .build(),
        )
        .await
        .unwrap();
        for _ in 0..50 {
            // A PING written before the client saw the kill fails (the
            // stack does not resend what may have run): the next one
            // goes over a new connection.
            within(STEP, "ping", async {
                while client.cmd::<String>(cmd("PING")).await.is_err() {}
            })
            .await;
            let killed = server.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
            assert!(killed.parse::<u64>().unwrap() >= 1, "{killed}");
        }
        within(STEP, "ping", async {
            while client.cmd::<String>(cmd("PING")).await.is_err() {}
        })
        .await;
        let probes = err_replies(&server);
        println!("opt-ins sent for 50 kills: {probes}");
        assert_eq!(probes, 1);
        let all = client.maintenance_status();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].1.opt_in.as_str(), "refused");
        // Lost connections may be logged; the opt-in never is.
        let loud_events = loud.maint.load(Ordering::SeqCst);
        assert_eq!(loud_events, 0, "{:?}", loud.seen.lock().unwrap());
    })
    .await
}

/// Through the simulator: an opted-in endpoint's status (the type sent,
/// the last notification, the relaxation's end), a refusal that the next
/// connections remember even once the server would accept (same server and
/// version), and asked again once the server is upgraded (another version
/// in its `HELLO`).
#[cfg(feature = "sim")]
#[tokio::test]
async fn enabled_and_remembered_through_the_simulator() {
    use redis_layers::maint::{Kind, MaintEvent};
    use redis_layers::sim::{Push, Target};
    use support::sim::SimStandalone;

    bounded(30, async {
        let env = SimStandalone::start().await;
        let c = auto();
        let conn = within(STEP, "connect", c.connect(env.endpoint()))
            .await
            .unwrap();
        let status = conn.maintenance().status();
        assert_eq!(
            status.opt_in,
            OptIn::Enabled {
                endpoint_type: ResolvedEndpointType::InternalIp
            }
        );
        assert!(status.is_enabled());
        assert_eq!(status.endpoint_type, Some(ResolvedEndpointType::InternalIp));

        let mut events = conn.maintenance().subscribe();
        let n = Push::Migrating {
            seq: env.sim.next_seq(),
            time: 5,
            shard_ids: None,
        };
        env.sim.notify(Target::All, &n);
        loop {
            let ev = within(STEP, "event", events.recv()).await.unwrap();
            if matches!(ev, MaintEvent::Relaxed { .. }) {
                break;
            }
        }
        let status = conn.maintenance().status();
        let last = status.last_notification.expect("a notification");
        assert_eq!((last.kind, last.seq), (Kind::Migrating, n.seq()));
        let until = status.relaxed_until.expect("relaxed");
        assert!(until > tokio::time::Instant::now());
        drop(conn);

        // Another connector meets a server that refuses: asked once, then
        // not again, even after the server would accept (same HELLO).
        env.sim
            .set_handshake_error(Some("ERR unknown subcommand 'MAINT_NOTIFICATIONS'".into()));
        let c = connector(Mode::Auto).client_name("refused");
        let conn = within(STEP, "refused", c.connect(env.endpoint()))
            .await
            .unwrap();
        assert_eq!(conn.maintenance().status().opt_in.as_str(), "refused");
        env.sim.set_handshake_error(None);
        let mut conns = vec![conn];
        for _ in 0..5 {
            conns.push(
                within(STEP, "again", c.connect(env.endpoint()))
                    .await
                    .unwrap(),
            );
        }
        let mut asked = 0;
        env.sim
            .wait_for(|cs| {
                let ours: Vec<_> = cs
                    .iter()
                    .filter(|c| c.name.as_deref() == Some("refused"))
                    .collect();
                asked = ours.iter().map(|c| c.maint_requests).sum::<u32>();
                ours.len() == 6
            })
            .await;
        assert_eq!(asked, 1);
        assert_eq!(conns[5].maintenance().status().opt_in.as_str(), "refused");
        assert!(!conns[5].info().unwrap().maintenance.is_enabled());

        // The server is upgraded (its HELLO names another version) and
        // now has the feature: the next connection asks again and gets
        // notifications, without a new connector.
        env.sim.set_server_version(Some("8.2.0".into()));
        let upgraded = within(STEP, "upgraded", c.connect(env.endpoint()))
            .await
            .unwrap();
        let status = upgraded.maintenance().status();
        assert!(status.is_enabled(), "{status:?}");
        env.sim
            .wait_for(|cs| {
                let ours = cs.iter().filter(|c| c.name.as_deref() == Some("refused"));
                asked = ours.map(|c| c.maint_requests).sum::<u32>();
                asked == 2
            })
            .await;
        let n = Push::Migrating {
            seq: env.sim.next_seq(),
            time: 5,
            shard_ids: None,
        };
        let mut events = upgraded.maintenance().subscribe();
        env.sim.notify(Target::All, &n);
        loop {
            let ev = within(STEP, "event after the upgrade", events.recv())
                .await
                .unwrap();
            if matches!(ev, MaintEvent::Relaxed { .. }) {
                break;
            }
        }
    })
    .await
}

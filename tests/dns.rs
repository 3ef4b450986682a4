//! DNS that lags behind `MOVING` (issue 20): the `MOVING` names the new
//! endpoint by a host name whose record still leads to the node being
//! retired for a while (Redis Enterprise: 4.4 to 9.7 s). The handoff waits
//! for the record to change before it dials, so no connection goes to the
//! retiring node, and no command fails.
#![cfg(feature = "sim")]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_layers::handoff::HandoffLayer;
use redis_layers::maint::{EndpointType, MaintenanceConfig, Mode};
use redis_layers::relax::RelaxTimeoutLayer;
use redis_layers::retry::RetryLayer;
use redis_layers::sim::{DnsLag, MovingPlan, SimResolver, Target};
use redis_layers::transport::Resolver;
use redis_layers::trust::AllowSuffix;
use redis_layers::{Connection, Connector, Endpoint, Error};
use support::sim::SimStandalone;
use support::{bounded, ledger, within};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// Every connection made, with when and to which address.
type Dials = Arc<Mutex<Vec<(Instant, Option<SocketAddr>)>>>;

/// What the handoff's DNS check asks.
#[derive(Clone, Copy)]
enum Check {
    /// The simulated DNS, as the connector does.
    Dns,
    /// A resolver that always names another node: no wait.
    Off,
    /// A resolver that never answers.
    Hangs,
    /// The simulated DNS, and one pooled connection cut during the lag:
    /// its reconnect must not reach the retiring node either.
    DnsCut,
    /// As `DnsCut`, and the server tells the `MOVING` only once: a
    /// connection made during the window hears nothing of it.
    DnsCutToldOnce,
}

/// The MOVING's time and the record's lag, as in the acceptance.
const TIME: Duration = Duration::from_secs(15);
const LAG: Duration = Duration::from_secs(5);

/// What a run saw.
struct Run {
    /// Each dial made after the `MOVING` went out: how long after, and the
    /// address it reached.
    dials: Vec<(Duration, Option<SocketAddr>)>,
    report: ledger::Report,
    /// The endpoint being retired.
    from: SocketAddr,
}

impl Run {
    /// Commands that failed. (A failed `INCR` that had run shows again as
    /// a jump in its task's next reply: not counted twice.)
    fn failed(&self) -> Vec<&String> {
        self.report
            .errors
            .iter()
            .filter(|e| !e.contains(" acks the reply was "))
            .collect()
    }

    /// The dials after the `MOVING` that reached the retiring node.
    fn to_retiring(&self) -> Vec<Duration> {
        self.dials_where(|ip| ip == self.from.ip())
    }

    /// The dials after the `MOVING` that reached another node.
    fn to_others(&self) -> Vec<Duration> {
        self.dials_where(|ip| ip != self.from.ip())
    }

    fn dials_where(&self, reached: impl Fn(std::net::IpAddr) -> bool) -> Vec<Duration> {
        self.dials
            .iter()
            .filter(|(_, peer)| peer.is_some_and(|p| reached(p.ip())))
            .map(|(at, _)| *at)
            .collect()
    }
}

async fn moving_with_lagging_dns(check: Check, pool: usize) -> Run {
    let env = SimStandalone::start().await;
    let from = env.sim.endpoint();
    let dns = SimResolver::new();
    let config = MaintenanceConfig::default()
        .mode(Mode::Enabled)
        .endpoint_type(EndpointType::InternalFqdn)
        .relaxed_timeout(Duration::from_secs(2));
    let mut connector = Connector::new().maintenance(config.clone()).unwrap();
    connector = connector.resolver(Resolver::new(dns.clone()));
    let dials: Dials = Arc::default();
    let maker = {
        let dials = dials.clone();
        tower::service_fn(move |ep: Endpoint| {
            let (mut connector, dials) = (connector.clone(), dials.clone());
            async move {
                let conn: Connection = connector.ready().await?.call(ep).await?;
                dials
                    .lock()
                    .unwrap()
                    .push((Instant::now(), conn.peer_addr()));
                Ok::<_, Error>(conn)
            }
        })
    };
    let mut handoff = HandoffLayer::new(support::sim::endpoint(from))
        .maintenance(&config)
        .unwrap()
        .pool_size(pool)
        .unwrap()
        // The simulated name is no neighbour of the loopback address the
        // pool was configured with: allowed by name.
        .target_policy(AllowSuffix::new("sim.test"));
    // Told when the handoff first asks for the moved name: the MOVING has
    // been handled.
    let asked = Arc::new(tokio::sync::Notify::new());
    handoff = match check {
        Check::Dns => handoff.resolver(Resolver::new(dns.clone())),
        Check::DnsCut | Check::DnsCutToldOnce => {
            let (dns, asked) = (dns.clone(), asked.clone());
            handoff.resolver(Resolver::new(tower::service_fn(move |name: String| {
                let dns = dns.clone();
                if name.starts_with("db.sim.test") {
                    asked.notify_one();
                }
                async move { dns.lookup(&name).await }
            })))
        }
        // A check that always sees another node: the handoff dials at
        // once, as a client without the check would.
        Check::Off => handoff.resolver(Resolver::new(tower::service_fn(|_: String| async {
            Ok::<_, std::io::Error>(vec!["192.0.2.1:1".parse::<SocketAddr>().unwrap()])
        }))),
        Check::Hangs => handoff.resolver(Resolver::new(tower::service_fn(|_: String| {
            std::future::pending::<std::io::Result<Vec<SocketAddr>>>()
        }))),
    };
    let svc = RelaxTimeoutLayer::new(Duration::from_secs(1)).layer(handoff.layer(maker));
    let cut = matches!(check, Check::DnsCut | Check::DnsCutToldOnce);
    // With a connection cut, commands that meet it before the pool has
    // noticed are refused unsent (`Closed`); Retry resends those, as in a
    // `Client`, so that only the cut's commands in flight can fail.
    let load = if cut {
        ledger::start(&RetryLayer::new().layer(svc), 16, "dns")
    } else {
        ledger::start(&svc, 16, "dns")
    };
    load.run_for(500).await;
    // The new endpoint: the same port on another loopback IP, so that the
    // lagging record (old IP, announced port) leads to the old endpoint.
    let mut m = MovingPlan::new(TIME);
    m.from = Some(from);
    m.to = Some(SocketAddr::new("127.0.0.2".parse().unwrap(), from.port()));
    m.dns = Some(DnsLag {
        resolver: dns.clone(),
        name: "db.sim.test".into(),
        lag: LAG,
    });
    m.tell_late = !matches!(check, Check::DnsCutToldOnce);
    let sent = Instant::now();
    let h = env.sim.start_moving(m).unwrap();
    if cut {
        within(Duration::from_secs(5), "MOVING handled", asked.notified()).await;
        let cut = env.sim.clients().into_iter().find(|c| c.endpoint == from);
        let cut = cut.expect("a pooled connection on the retiring endpoint");
        assert_eq!(env.sim.close(Target::Client(cut.id)), 1);
    }
    within(TIME + Duration::from_secs(10), "moving", h.finished())
        .await
        .unwrap();
    load.run_for(500).await;
    let report = load.finish().await;
    let dials = dials
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at >= sent)
        .map(|(at, peer)| (*at - sent, *peer))
        .collect();
    Run {
        dials,
        report,
        from,
    }
}

/// Acceptance: a 15 s `MOVING` whose name lags 5 s: 0 connections to the
/// retiring node after the `MOVING`, 0 failed commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_waits_for_dns_to_follow_the_moving() {
    bounded(60, async {
        let run = moving_with_lagging_dns(Check::Dns, 4).await;
        let to_old = run.to_retiring();
        let first = run.dials.iter().map(|(at, _)| *at).min();
        println!(
            "DNS lag {LAG:?}: {} dials after MOVING, {} to the retiring node, first after {first:?}; {} errors",
            run.dials.len(),
            to_old.len(),
            run.report.errors.len()
        );
        assert!(!run.dials.is_empty(), "the pool moved");
        assert_eq!(to_old.len(), 0, "dials to the retiring node: {to_old:?}");
        assert!(first.unwrap() >= LAG, "dialled before DNS changed: {first:?}");
        run.report.assert_no_failures();
    })
    .await
}

/// A pooled connection lost during the lag reconnects to where the pool
/// goes, by the moved name: that dial waits for the record to change too,
/// or it would reach the node being retired (and lose its commands at the
/// deadline). The commands in flight on the cut connection fail (it was
/// cut); no other does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_during_the_lag_waits_for_dns_too() {
    bounded(60, async {
        let run = moving_with_lagging_dns(Check::DnsCut, 4).await;
        let to_old = run.to_retiring();
        println!(
            "DNS lag {LAG:?}, one connection cut: {} dials after MOVING, {} to the retiring node; {} failed",
            run.dials.len(),
            to_old.len(),
            run.failed().len()
        );
        assert_eq!(to_old.len(), 0, "dials to the retiring node: {to_old:?}");
        // At most the cut connection's share of the 16 tasks.
        assert!(run.failed().len() <= 16, "{:?}", run.report.errors);
    })
    .await
}

/// The same cut with a pool of one: no other connection serves while a
/// reconnect would wait, so it dials at once (reaching the retiring node)
/// and is handed off once the record moves, before the deadline: no
/// stall, and no command fails but those in flight on the cut connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_reconnect_during_the_lag_dials_at_once_and_moves_later() {
    bounded(60, async {
        lone_reconnect(Check::DnsCut).await;
    })
    .await
}

/// As above, against a server that tells a `MOVING` once: the reconnect
/// is not told, and is handed off all the same (the pool remembers the
/// `MOVING` for the name it watches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_reconnect_that_is_not_told_moves_too() {
    bounded(60, async {
        lone_reconnect(Check::DnsCutToldOnce).await;
    })
    .await
}

async fn lone_reconnect(check: Check) {
    let run = moving_with_lagging_dns(check, 1).await;
    let to_old = run.to_retiring();
    let to_new = run.to_others();
    println!(
        "DNS lag {LAG:?}, the only connection cut: to the retiring node at {to_old:?}, to the new one at {to_new:?}; {} failed",
        run.failed().len()
    );
    assert_eq!(to_old.len(), 1, "the reconnect, at once: {to_old:?}");
    assert!(to_old[0] < LAG, "{to_old:?}");
    assert!(
        to_new.iter().any(|t| *t >= LAG && *t < TIME),
        "handed off after the record moved, before the deadline: {to_new:?}"
    );
    assert!(run.failed().len() <= 16, "{:?}", run.report.errors);
}

/// Without the check (one that always sees another node), the handoff dials at
/// once and reaches the retiring node: the case above guards against this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_check_a_handoff_dials_the_retiring_node() {
    bounded(60, async {
        let to_old = moving_with_lagging_dns(Check::Off, 4)
            .await
            .to_retiring()
            .len();
        println!("without the DNS check: {to_old} dials to the retiring node after MOVING");
        assert!(to_old > 0);
    })
    .await
}

/// A resolver that never answers holds no handoff past the point where it
/// must dial (a quarter of the `MOVING` time before the deadline): the pool
/// still moves in time, and no command fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_never_answers_delays_the_dial_only_so_long() {
    bounded(60, async {
        let run = moving_with_lagging_dns(Check::Hangs, 4).await;
        let after: Vec<Duration> = run.dials.iter().map(|(at, _)| *at).collect();
        println!("hanging resolver: dials after MOVING at {after:?}");
        assert!(!after.is_empty(), "the pool moved");
        assert!(after.iter().all(|t| *t < TIME), "{after:?}");
        run.report.assert_no_failures();
    })
    .await
}

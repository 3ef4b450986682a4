//! The trust boundary: what a server names (a `MOVING` target, a `MOVED`
//! or `ASK` address, an `SMIGRATED` triplet) is followed only where the
//! target policy allows it. Scripted hostile servers (raw RESP3 on
//! loopback, `support::hostile`) play the attacker.

mod support;

use std::sync::{Arc, Mutex};

use redis_layers::client::{ClientBuilder, ServerMode};
use redis_layers::handoff::{Handoff, HandoffLayer};
use redis_layers::maint::{MaintEvent, MaintenanceConfig, Mode};
use redis_layers::trust::{AllowHosts, DefaultTargetPolicy, TargetPolicyExt};
use redis_layers::{cmd, Connector, Endpoint, Value};
use support::bounded;
use support::hostile::{push, HostileServer};
use tower::{Layer, ServiceExt};

fn maint() -> MaintenanceConfig {
    MaintenanceConfig::default().mode(Mode::Enabled)
}

/// A Handoff over a connector with credentials, for `server`.
fn stack(
    server: &HostileServer,
    layer: impl FnOnce(HandoffLayer) -> HandoffLayer,
) -> Handoff<Connector> {
    let connector = Connector::new()
        .username("alice")
        .password("s3cret")
        .maintenance(maint())
        .unwrap();
    layer(
        HandoffLayer::new(server.endpoint())
            .maintenance(&maint())
            .unwrap(),
    )
    .layer(connector)
}

async fn set(svc: &Handoff<Connector>, k: &str, v: &str) {
    svc.clone()
        .oneshot(cmd("SET").arg(k).arg(v).into())
        .await
        .unwrap();
}

/// The exfiltration case: a server on 127.0.0.1 announces a `MOVING` to a
/// host the client was never configured for. Under the default policy the
/// announced host sees no connection at all (so no `AUTH`, no opt-in, no
/// command), the refusal is an event, and the client keeps serving.
#[tokio::test]
async fn a_moving_to_a_foreign_host_is_refused_and_carries_no_credentials() {
    bounded(30, async {
        let origin = HostileServer::start();
        let thief = HostileServer::start();
        let svc = stack(&origin, |l| l);
        let mut events = svc.subscribe();
        set(&svc, "k", "v").await;
        // `localhost` is not the configured `127.0.0.1`: another host, and
        // a name whose address class cannot be told without a lookup.
        let to = format!("localhost:{}", thief.port());
        origin.inject(&push(&["MOVING", ":1", ":2", &to]));
        let refused = loop {
            if let MaintEvent::TargetRefused { target, .. } = events.recv().await.unwrap() {
                break target;
            }
        };
        assert_eq!(refused, Endpoint::tcp("localhost", thief.port()));
        // Handled like a null endpoint: after half the time the connection
        // moves to the configured address again.
        let to = loop {
            if let MaintEvent::HandoffSucceeded { to, .. } = events.recv().await.unwrap() {
                break to;
            }
        };
        assert_eq!(to, origin.endpoint());
        assert_eq!(origin.accepted(), 2);
        for i in 0..50 {
            set(&svc, &format!("k{i}"), "x").await;
        }
        let got = svc
            .clone()
            .oneshot(cmd("GET").arg("k").into())
            .await
            .unwrap();
        assert_eq!(got.into_value().unwrap(), Value::BulkString("v".into()));
        assert_eq!(
            thief.accepted(),
            0,
            "the announced host was dialled: {:?}",
            thief.received()
        );
        assert!(!thief.saw("AUTH"));
    })
    .await;
}

/// The control: the same `MOVING` with the target allow-listed is followed
/// (so the test above would see the dial and the credentials if the policy
/// let them through).
#[tokio::test]
async fn an_allow_listed_moving_target_is_followed() {
    bounded(30, async {
        let origin = HostileServer::start();
        let thief = HostileServer::start();
        let svc = stack(&origin, |l| {
            l.target_policy(DefaultTargetPolicy.or(AllowHosts::new(["localhost"])))
        });
        let mut events = svc.subscribe();
        set(&svc, "k", "v").await;
        let to = format!("localhost:{}", thief.port());
        origin.inject(&push(&["MOVING", ":1", ":2", &to]));
        let to = loop {
            if let MaintEvent::HandoffSucceeded { to, .. } = events.recv().await.unwrap() {
                break to;
            }
        };
        assert_eq!(to.to_string(), format!("localhost:{}", thief.port()));
        set(&svc, "after", "1").await;
        assert!(thief.saw("AUTH"), "{:?}", thief.received());
        assert!(thief.received().iter().any(|r| r.text() == "SET after 1"));
    })
    .await;
}

/// Over TLS the default policy follows any target, verified against the
/// configured server name (`localhost` here), never the target's own. The
/// target is dialled at `127.0.0.1` behind a TLS terminator presenting
/// `cert`; returns whether the handoff succeeded, and what the target's
/// backend received.
#[cfg(feature = "tls")]
async fn tls_moving_to(cert_names: &[&str]) -> (bool, Vec<support::hostile::Received>) {
    use redis_layers::TlsConfig;
    use support::tls::{Ca, Terminator};

    let ca = Ca::new("test CA");
    let origin = HostileServer::start();
    let front = Terminator::start(&ca.server_cert(&["localhost"]), origin.addr()).await;
    let target = HostileServer::start();
    let target_front = Terminator::start(&ca.server_cert(cert_names), target.addr()).await;

    let config = MaintenanceConfig::default()
        .mode(Mode::Enabled)
        .max_handoff_retries(1);
    let connector = Connector::new()
        .username("alice")
        .password("s3cret")
        .maintenance(config.clone())
        .unwrap()
        .tls(
            TlsConfig::new()
                .root_certs_pem(ca.pem().as_bytes())
                .unwrap(),
        )
        .unwrap();
    let svc = HandoffLayer::new(Endpoint::tcp("localhost", front.port))
        .maintenance(&config)
        .unwrap()
        .layer(connector);
    let mut events = svc.subscribe();
    set(&svc, "k", "v").await;
    let to = format!("127.0.0.1:{}", target_front.port);
    origin.inject(&push(&["MOVING", ":1", ":30", &to]));
    let moved = loop {
        match events.recv().await.unwrap() {
            MaintEvent::HandoffFailed { reason, .. } => {
                assert!(reason.contains("localhost"), "{reason}");
                break false;
            }
            MaintEvent::HandoffSucceeded { to, .. } => {
                assert_eq!(to.tls_name(), Some("localhost"));
                break true;
            }
            _ => {}
        }
    };
    set(&svc, "after", "1").await;
    (moved, target.received())
}

/// A target whose certificate names only itself is refused: the handoff
/// fails, the old connection keeps serving, the target's backend sees not
/// a byte (no `AUTH`, no command).
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_moving_target_with_only_its_own_name_is_refused() {
    bounded(30, async {
        let (moved, received) = tls_moving_to(&["127.0.0.1"]).await;
        assert!(!moved);
        assert!(received.is_empty(), "{received:?}");
    })
    .await;
}

/// A target whose certificate carries the configured name is followed,
/// credentials and the next command with it.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_moving_target_with_the_configured_name_is_followed() {
    bounded(30, async {
        let (moved, received) = tls_moving_to(&["localhost"]).await;
        assert!(moved);
        assert!(received
            .iter()
            .any(|r| r.name() == "HELLO" && r.text().contains("AUTH alice")));
        assert!(received.iter().any(|r| r.text() == "SET after 1"));
    })
    .await;
}

/// Slot ranges and the port of their owner on 127.0.0.1.
type Layout = Arc<Mutex<Vec<(u16, u16, u16)>>>;

/// A fake cluster node: answers `CLUSTER SLOTS` with `layout` (start, end,
/// port of the owner on 127.0.0.1), refuses `CLUSTER SHARDS` (as Redis
/// 6 does), and answers `GET` of `moved_key` with `moved` when set.
struct FakeNode {
    server: HostileServer,
    layout: Layout,
}

impl FakeNode {
    fn start(layout: &Layout, moved: Option<(&'static str, String)>) -> Self {
        let l = layout.clone();
        let server = HostileServer::scripted(move |r| {
            let arg = |i: usize| {
                r.args
                    .get(i)
                    .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            };
            match (r.name().as_str(), arg(1).as_deref()) {
                ("CLUSTER", Some("SHARDS")) => {
                    Some(b"-ERR unknown subcommand 'SHARDS'\r\n".to_vec())
                }
                ("CLUSTER", Some("SLOTS")) => Some(slots_reply(&l.lock().unwrap())),
                ("GET", _) => match &moved {
                    Some((key, reply)) if r.args[1] == key.as_bytes() => {
                        Some(reply.clone().into_bytes())
                    }
                    _ => None,
                },
                _ => None,
            }
        });
        FakeNode {
            server,
            layout: layout.clone(),
        }
    }

    fn gets_of(&self, key: &str) -> usize {
        self.server
            .received()
            .iter()
            .filter(|r| r.name() == "GET" && r.args[1] == key.as_bytes())
            .count()
    }
}

fn slots_reply(layout: &[(u16, u16, u16)]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", layout.len()).into_bytes();
    for (a, z, port) in layout {
        out.extend_from_slice(format!("*3\r\n:{a}\r\n:{z}\r\n*3\r\n").as_bytes());
        out.extend_from_slice(&support::hostile::bulk(b"127.0.0.1"));
        out.extend_from_slice(format!(":{port}\r\n").as_bytes());
        out.extend_from_slice(&support::hostile::bulk(format!("node-{port}").as_bytes()));
    }
    out
}

/// A key whose slot is `slot`.
fn key_in(slot: u16) -> String {
    (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| redis_layers::cluster::slot::key_slot(k.as_bytes()) == slot)
        .unwrap()
}

async fn cluster_client(seed: &HostileServer) -> redis_layers::Client {
    ClientBuilder::new(seed.endpoint())
        .mode(ServerMode::Cluster)
        .connector(Connector::new().username("alice").password("s3cret"))
        .maintenance(maint())
        .build()
        .await
        .unwrap()
}

/// `MOVED` to an address absent from the topology: the map is read again,
/// and the redirect is followed only once the new map has that node.
#[tokio::test]
async fn a_moved_to_a_node_outside_the_cluster_is_followed_only_once_the_topology_has_it() {
    bounded(30, async {
        let thief = HostileServer::start();
        let key = key_in(1234);
        let layout = Arc::new(Mutex::new(Vec::new()));
        let moved = format!("-MOVED 1234 127.0.0.1:{}\r\n", thief.port());
        let node = FakeNode::start(
            &layout,
            Some((Box::leak(key.clone().into_boxed_str()), moved)),
        );
        *layout.lock().unwrap() = vec![(0, 16383, node.server.port())];
        let client = cluster_client(&node.server).await;
        let slots_asked = || {
            node.server
                .received()
                .iter()
                .filter(|r| r.text().eq_ignore_ascii_case("CLUSTER SLOTS"))
                .count()
        };
        let before = slots_asked();
        let err = client.get::<Option<String>>(&key).await.unwrap_err();
        assert!(err.to_string().contains("MOVED"), "{err}");
        assert!(slots_asked() > before, "no topology refresh");
        assert_eq!(thief.accepted(), 0, "{:?}", thief.received());

        // The topology names the node now: the same redirect is followed.
        node.layout.lock().unwrap().push((1234, 1234, thief.port()));
        node.layout.lock().unwrap()[0] = (0, 1233, node.server.port());
        node.layout
            .lock()
            .unwrap()
            .push((1235, 16383, node.server.port()));
        let got = client.get::<Option<String>>(&key).await.unwrap();
        assert_eq!(got, None);
        assert!(thief.saw("AUTH"));
    })
    .await;
}

/// `SMIGRATED` is applied only where its sender is the source: a node
/// cannot move another node's slots, nor slots it does not serve; a copy
/// from a node that is not the source does not stand in (in the dedup) for
/// the source's own.
#[tokio::test]
async fn smigrated_moves_only_what_its_sender_serves() {
    bounded(30, async {
        let layout = Arc::new(Mutex::new(Vec::new()));
        let a = FakeNode::start(&layout, None);
        let b = FakeNode::start(&layout, None);
        let thief = HostileServer::start();
        let (pa, pb) = (a.server.port(), b.server.port());
        *layout.lock().unwrap() = vec![(0, 8191, pa), (8192, 16383, pb)];
        let client = cluster_client(&a.server).await;
        // Connections to both nodes (opted in), so both can push.
        for slot in [100, 200, 9000, 9500] {
            client.get::<Option<String>>(key_in(slot)).await.unwrap();
        }
        let ep = |p: u16| format!("127.0.0.1:{p}");
        let smigrated = |seq: i64, src: &str, dst: &str, slots: &str| {
            let mut f = format!(">3\r\n$9\r\nSMIGRATED\r\n:{seq}\r\n*1\r\n*3\r\n").into_bytes();
            for s in [src, dst, slots] {
                f.extend_from_slice(&support::hostile::bulk(s.as_bytes()));
            }
            f
        };
        let mut frames = Vec::new();
        // Another node's slots.
        frames.extend(smigrated(1, &ep(pb), &ep(pa), "9000"));
        // Slots the sender does not serve, to a stranger.
        frames.extend(smigrated(2, &ep(pa), &ep(thief.port()), "9500"));
        a.server.inject(&frames);
        // A's move announced first on B's connection (not the source).
        b.server.inject(&smigrated(3, &ep(pa), &ep(pb), "200"));
        // The real ones, from the source.
        a.server.inject(&smigrated(3, &ep(pa), &ep(pb), "200"));
        a.server.inject(&smigrated(4, &ep(pa), &ep(pb), "100"));
        // Applied in order on A's connection: once slot 100 goes to B,
        // everything before was handled.
        let k100 = key_in(100);
        while b.gets_of(&k100) == 0 {
            client.get::<Option<String>>(&k100).await.unwrap();
        }
        for (slot, owner, other) in [(200, &b, &a), (9000, &b, &a), (9500, &b, &a)] {
            let k = key_in(slot);
            let (o, x) = (owner.gets_of(&k), other.gets_of(&k));
            client.get::<Option<String>>(&k).await.unwrap();
            assert_eq!(owner.gets_of(&k), o + 1, "slot {slot}");
            assert_eq!(other.gets_of(&k), x, "slot {slot}");
        }
        assert_eq!(thief.accepted(), 0);
    })
    .await;
}

/// Nodes that leave make room for the ones that come: after the cluster's
/// only node is replaced 30 times, the node entries are few (2: the live
/// node and one free), not one per address ever named.
#[tokio::test]
async fn node_entries_do_not_grow_with_every_node_ever_seen() {
    use redis_layers::cluster::{ClusterConfig, ClusterLayer, NodeRole};
    use redis_layers::relax::RelaxTimeout;
    use tower::Layer;

    bounded(60, async {
        let layout = Arc::new(Mutex::new(Vec::new()));
        let first = FakeNode::start(&layout, None);
        *layout.lock().unwrap() = vec![(0, 16383, first.server.port())];
        let maker =
            |e: Endpoint, _: NodeRole| RelaxTimeout::new(Handoff::new(Connector::new(), e), None);
        let cluster = ClusterLayer::new(vec![first.server.endpoint()])
            .config(
                ClusterConfig::default()
                    .refresh_interval(None)
                    .refresh_cooldown(std::time::Duration::from_millis(1)),
            )
            .layer(maker);
        cluster.refresh().await.unwrap();
        let mut nodes = vec![first];
        for _ in 0..30 {
            let next = FakeNode::start(&layout, None);
            *layout.lock().unwrap() = vec![(0, 16383, next.server.port())];
            cluster.refresh().await.unwrap();
            let got = cluster
                .clone()
                .oneshot(cmd("GET").arg("k").into())
                .await
                .unwrap();
            assert_eq!(got.into_value().unwrap(), Value::Null);
            assert_eq!(next.gets_of("k"), 1);
            nodes.push(next);
        }
        let entries = cluster.stats().node_entries;
        assert!(entries <= 3, "{entries} node entries after 31 nodes");
    })
    .await;
}

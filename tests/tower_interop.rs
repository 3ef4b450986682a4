//! Issue 16, "tower-native": tower's own middleware fits anywhere in the
//! stack, on a real redis-server and on the simulator.
//!
//! - The stack under `Buffer` recovers after the server restarts: no layer
//!   fails `poll_ready` for a reason that can pass (tower reads such an
//!   error as "gone for good").
//! - `ConcurrencyLimitLayer` and `RateLimitLayer` as they are, and
//!   `MapRequestLayer` and a `Buffer` (which hide their inner service)
//!   through `CarryMaintenanceLayer`, between RelaxTimeout and Handoff keep
//!   relaxation (`FAILING_OVER` with
//!   replies slower than the command timeout: 0 timeouts) and handoff
//!   (`MOVING` under 16 tasks: 0 failed commands, exact ledger).
//! - `TimeoutLayer` and `LoadShedLayer` over the stack map back to
//!   [`Error`] with `Error::from`.
//! - A `Client` with `node_layer(ConcurrencyLimitLayer::new(64))`,
//!   standalone and in a cluster, keeps pub/sub, `WATCH` and `BLPOP`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use redis_layers::client::{ClientBuilder, ServerMode};
use redis_layers::handoff::HandoffLayer;
use redis_layers::maint::{CarryMaintenanceLayer, MaintenanceConfig, Mode};
use redis_layers::relax::RelaxTimeoutLayer;
use redis_layers::sim::{MovingPlan, Window};
use redis_layers::{cmd, Client, Connector, Error, Request, Response, Value};
use support::cluster::RedisCluster;
use support::sim::SimStandalone;
use support::{bounded, ledger, within, RedisServer};
use tower::limit::ConcurrencyLimitLayer;
use tower::util::{BoxCloneService, MapRequestLayer};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

type Boxed = BoxCloneService<Request, Response, Error>;

const STEP: Duration = Duration::from_secs(10);
/// RelaxTimeout's command timeout in the simulator tests.
const TIMEOUT: Duration = Duration::from_millis(200);

async fn ping<S>(svc: &mut S) -> Result<Value, Error>
where
    S: Service<Request, Response = Response, Error = Error>,
{
    svc.ready()
        .await?
        .call(cmd("PING").into())
        .await?
        .into_value()
}

fn pong() -> Value {
    Value::SimpleString("PONG".into())
}

/// Acceptance: Buffer over RelaxTimeout over Handoff; the server is killed
/// (calls fail with a typed error: the ones that found no connection say
/// "not sent") and started again on its port: the same buffered service
/// serves again. Before the fix Handoff's `poll_ready` returned the dial
/// error, and Buffer failed every later call with it.
#[tokio::test]
async fn a_buffered_stack_recovers_after_the_server_restarts() {
    bounded(60, async {
        let mut server = RedisServer::start();
        let port = server.port();
        let stack = RelaxTimeoutLayer::new(Duration::from_millis(500))
            .layer(HandoffLayer::new(server.endpoint()).layer(Connector::new()));
        let mut svc = ServiceBuilder::new()
            .map_err(Error::from)
            .buffer(64)
            .service(stack);
        assert_eq!(ping(&mut svc).await.unwrap(), pong());

        server.kill();
        // The first call may meet the dead connection; the later ones find
        // no connection at all: not sent, and the request handed back.
        let mut not_sent = 0;
        for _ in 0..5 {
            let mut e = ping(&mut svc).await.expect_err("the server is gone");
            assert!(e.is_connection_error(), "{e:?}");
            if let Error::NotSent(n) = &e {
                assert!(
                    matches!(n.cause(), Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused),
                    "{e}"
                );
                assert!(e.take_request().is_some(), "the request comes back");
                not_sent += 1;
            }
        }
        assert!(not_sent >= 4, "{not_sent} of 5 calls said not sent");

        let _server = RedisServer::builder().port(port).start();
        // The same buffered service serves again (its first call may
        // still report the last failed dial).
        let mut last = None;
        for _ in 0..3 {
            match ping(&mut svc).await {
                Ok(v) => {
                    assert_eq!(v, pong());
                    return;
                }
                Err(e) => last = Some(e),
            }
        }
        panic!("the buffered stack did not recover: {last:?}");
    })
    .await
}

fn config() -> MaintenanceConfig {
    MaintenanceConfig::default()
        .mode(Mode::Enabled)
        .relaxed_timeout(Duration::from_secs(2))
}

/// `FAILING_OVER` with every reply held 400 ms (twice the command timeout)
/// for 2 s: 16 tasks of `INCR` see no timeout; then a `MOVING` under the
/// same 16 tasks: no failed command, and the server holds exactly the
/// acknowledged counts.
async fn relaxes_and_hands_off(what: &str, env: &SimStandalone, svc: Boxed) {
    let load = ledger::start(&svc, 16, &format!("interop:{what}"));
    within(
        STEP,
        "opted in",
        env.sim.wait_for(|c| c.iter().any(|c| c.maint.is_some())),
    )
    .await;
    load.run_for(200).await;

    let mut window = Window::new(Duration::from_secs(2));
    window.reply_delay = TIMEOUT * 2;
    let failover = env.sim.start_failover(window);
    load.run_for(32).await;
    within(STEP, "failover window", failover.finished())
        .await
        .expect("failover");
    load.run_for(200).await;

    within(
        STEP,
        "moving",
        env.sim.moving(MovingPlan::new(Duration::from_secs(2))),
    )
    .await
    .expect("moving");
    load.run_for(200).await;

    let report = load.finish().await;
    report.assert_no_failures();
    for (key, acked) in &report.acked {
        let on_server: u64 = env.server.cli(&["GET", key]).trim().parse().unwrap_or(0);
        assert_eq!(on_server, *acked, "{what}: {key}");
    }
}

/// The Handoff layer and connector of one simulator endpoint.
fn parts(env: &SimStandalone) -> (HandoffLayer, Connector) {
    env.handoff_parts(&config(), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_between_relax_and_handoff() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let (handoff, connector) = parts(&env);
        let svc = ServiceBuilder::new()
            .layer(RelaxTimeoutLayer::new(TIMEOUT))
            .concurrency_limit(8)
            .layer(handoff)
            .service(connector);
        relaxes_and_hands_off("concurrency", &env, BoxCloneService::new(svc)).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_request_between_relax_and_handoff() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let (handoff, connector) = parts(&env);
        let svc = ServiceBuilder::new()
            .layer(RelaxTimeoutLayer::new(TIMEOUT))
            .layer(CarryMaintenanceLayer::new(MapRequestLayer::new(
                |r: Request| r.idempotent(),
            )))
            .layer(handoff)
            .service(connector);
        relaxes_and_hands_off("map_request", &env, BoxCloneService::new(svc)).await;
    })
    .await
}

/// RateLimit is not `Clone` (its window is per service): a Buffer over the
/// whole stack shares one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_between_relax_and_handoff() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let (handoff, connector) = parts(&env);
        let stack = ServiceBuilder::new()
            .layer(RelaxTimeoutLayer::new(TIMEOUT))
            .rate_limit(100_000, Duration::from_secs(1))
            .layer(handoff)
            .service(connector);
        let svc = ServiceBuilder::new()
            .map_err(Error::from)
            .buffer(64)
            .service(stack);
        relaxes_and_hands_off("rate_limit", &env, BoxCloneService::new(svc)).await;
    })
    .await
}

/// Buffer hides the service behind it: `CarryMaintenanceLayer` carries the
/// Handoff's maintenance past it, so RelaxTimeout above still sees the
/// endpoint's relaxation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_between_relax_and_handoff() {
    bounded(60, async {
        let env = SimStandalone::start().await;
        let (handoff, connector) = parts(&env);
        let buffered = ServiceBuilder::new()
            .map_err(Error::from)
            .buffer(64)
            .into_inner();
        let svc = ServiceBuilder::new()
            .layer(RelaxTimeoutLayer::new(TIMEOUT))
            .layer(CarryMaintenanceLayer::new(buffered))
            .layer(handoff)
            .service(connector);
        relaxes_and_hands_off("buffer", &env, BoxCloneService::new(svc)).await;
    })
    .await
}

/// tower's `TimeoutLayer` over the stack: its `Elapsed` is `Error::Timeout`.
#[tokio::test]
async fn tower_timeout_over_the_stack_maps_back() {
    bounded(30, async {
        let server = RedisServer::start();
        let stack = RelaxTimeoutLayer::new(Duration::from_secs(5))
            .layer(HandoffLayer::new(server.endpoint()).layer(Connector::new()));
        let mut svc = ServiceBuilder::new()
            .map_err(Error::from)
            .timeout(Duration::from_millis(100))
            .service(stack);
        assert_eq!(ping(&mut svc).await.unwrap(), pong());
        // A 1 s server-side sleep outlasts tower's 100 ms timeout.
        let slow = cmd("DEBUG").arg("SLEEP").arg("1");
        let r = svc.ready().await.unwrap().call(slow.into()).await;
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    })
    .await
}

/// tower's `LoadShedLayer` over a full `ConcurrencyLimit`: its
/// `Overloaded` is `Error::Overloaded`, and nothing was sent.
#[tokio::test]
async fn tower_load_shed_over_the_stack_maps_back() {
    bounded(30, async {
        let server = RedisServer::start();
        let stack = RelaxTimeoutLayer::new(Duration::from_secs(5))
            .layer(HandoffLayer::new(server.endpoint()).layer(Connector::new()));
        // Connected first (LoadShed sheds a call whose service is still
        // dialling), so that every clone is ready at once.
        assert_eq!(ping(&mut stack.clone()).await.unwrap(), pong());
        let svc = ServiceBuilder::new()
            .map_err(Error::from)
            .load_shed()
            .concurrency_limit(1)
            .service(stack);
        // A ready clone holds the only permit (ConcurrencyLimit takes it
        // in poll_ready).
        let mut holder = svc.clone();
        holder.ready().await.unwrap();
        let mut shed = svc.clone();
        let r = shed.ready().await.unwrap().call(cmd("PING").into()).await;
        assert!(matches!(r, Err(Error::Overloaded)), "{r:?}");
        assert!(r.unwrap_err().is_not_sent());
        // The permit back: served again.
        assert_eq!(
            holder
                .call(cmd("PING").into())
                .await
                .unwrap()
                .into_value()
                .unwrap(),
            pong()
        );
        assert_eq!(ping(&mut shed).await.unwrap(), pong());
    })
    .await
}

/// What a `Client` built with a node layer must still do: pub/sub, an
/// optimistic transaction with `WATCH` (a conflicting write aborts it),
/// `BLPOP` (on a dedicated connection), and plain commands through the
/// node layer.
async fn client_keeps_its_features(client: &Client, tag: &str) {
    use redis_layers::pubsub::Event;

    let channel = format!("{{{tag}}}:news");
    let mut sub = client.ssubscribe_or_subscribe(&channel).await;
    let publish = if client.is_cluster() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    let receivers: i64 = client
        .cmd(cmd(publish).arg(&channel).arg("one"))
        .await
        .unwrap();
    assert_eq!(receivers, 1);
    match within(STEP, "message", sub.recv()).await {
        Some(Event::Message(m)) => assert_eq!(m.payload, "one"),
        other => panic!("{other:?}"),
    }

    let key = format!("{{{tag}}}:balance");
    client.set(&key, 10).await.unwrap();
    let mut watch = client.watch(key.as_str()).await.unwrap();
    let balance: i64 = watch.cmd(cmd("GET").arg(&key)).await.unwrap();
    // Another caller writes the watched key: EXEC must abort.
    client.set(&key, 99).await.unwrap();
    let mut tx = client.transaction();
    tx.cmd(cmd("SET").arg(&key).arg(balance - 1));
    let applied: Option<Vec<String>> = watch.exec(&tx).await.unwrap();
    assert!(applied.is_none(), "EXEC after a conflicting write aborts");
    assert_eq!(client.get::<i64>(&key).await.unwrap(), 99);

    let list = format!("{{{tag}}}:jobs");
    let pusher = client.clone();
    let list2 = list.clone();
    let push = tokio::spawn(async move { pusher.rpush(&list2, "job").await });
    let popped = client.blpop::<String>([list.as_str()], 5.0).await.unwrap();
    assert_eq!(popped, Some((list.clone(), "job".to_string())));
    push.await.unwrap().unwrap();
}

/// Subscribes the way the client's mode wants: sharded in a cluster.
trait SubscribeEither {
    async fn ssubscribe_or_subscribe(&self, channel: &str) -> redis_layers::pubsub::Subscription;
}

impl SubscribeEither for Client {
    async fn ssubscribe_or_subscribe(&self, channel: &str) -> redis_layers::pubsub::Subscription {
        let sub = if self.is_cluster() {
            self.ssubscribe([channel.to_string()]).await
        } else {
            self.subscribe([channel.to_string()]).await
        };
        sub.expect("subscribe")
    }
}

/// Acceptance: `node_layer(ConcurrencyLimitLayer::new(64))`, standalone:
/// pub/sub, WATCH and BLPOP work, and commands pass the node layer.
#[tokio::test]
async fn a_node_layer_keeps_the_clients_features_standalone() {
    bounded(60, async {
        let server = RedisServer::start();
        let (counter, layer) = counting();
        let client = ClientBuilder::new(server.endpoint())
            .node_layer(ConcurrencyLimitLayer::new(64))
            .node_layer(layer)
            .build()
            .await
            .unwrap();
        client_keeps_its_features(&client, "s").await;
        assert!(counter.load(Relaxed) >= 4, "commands pass the node layer");
    })
    .await
}

/// Acceptance: the same on a 3-primary Redis Cluster: each node's stack
/// gets the layers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_layer_keeps_the_clients_features_in_a_cluster() {
    bounded(120, async {
        let cluster = RedisCluster::start();
        let (counter, layer) = counting();
        let client = ClientBuilder::new(cluster.endpoint(0))
            .mode(ServerMode::Cluster)
            .node_layer(ConcurrencyLimitLayer::new(64))
            .node_layer(layer)
            .build()
            .await
            .unwrap();
        client_keeps_its_features(&client, "c").await;
        assert!(counter.load(Relaxed) >= 4, "commands pass the node layer");
        // Keys on every node: routing goes through each node's layers.
        for i in 0..100 {
            client.set(format!("k{i}"), i).await.unwrap();
        }
        for i in 0..100 {
            assert_eq!(client.get::<i64>(format!("k{i}")).await.unwrap(), i);
        }
    })
    .await
}

/// A node layer that counts the requests passing it.
fn counting() -> (
    Arc<AtomicUsize>,
    tower::util::MapRequestLayer<impl Fn(Request) -> Request + Clone + Send + Sync + 'static>,
) {
    let counter = Arc::new(AtomicUsize::new(0));
    let c = counter.clone();
    let layer = MapRequestLayer::new(move |r: Request| {
        c.fetch_add(1, Relaxed);
        r
    });
    (counter, layer)
}

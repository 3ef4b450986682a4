//! The dial limiter (issue 20: no reconnect storms): concurrency and rate
//! on a counting maker under tokio's paused clock, the queue bound, the
//! counters; and, on the simulator, a pool handed off at once under load
//! through a limiter that keeps its dials within bounds with no failed
//! command.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_layers::dial::{DialLimit, DialLimitLayer};
use redis_layers::{Endpoint, Error};
use support::bounded;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// Dials in progress now and at most, and when each started.
#[derive(Default)]
struct Counter {
    now: AtomicUsize,
    max: AtomicUsize,
    starts: Mutex<Vec<Instant>>,
}

impl Counter {
    fn enter(&self) {
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(n, SeqCst);
        self.starts.lock().unwrap().push(Instant::now());
    }

    fn leave(&self) {
        self.now.fetch_sub(1, SeqCst);
    }
}

/// A maker whose dials take `took` and count themselves.
fn counting(
    counter: Arc<Counter>,
    took: Duration,
) -> impl Service<Endpoint, Response = u32, Error = Error, Future: Send> + Clone + Send {
    tower::service_fn(move |_: Endpoint| {
        let counter = counter.clone();
        async move {
            counter.enter();
            tokio::time::sleep(took).await;
            counter.leave();
            Ok::<_, Error>(1)
        }
    })
}

fn ep() -> Endpoint {
    Endpoint::tcp("127.0.0.1", 1)
}

/// 500 dials at once: never more than the limit in progress, every one
/// made, and the starts within the rate (burst 16, then 200/s: any 1 s
/// window holds at most 216 starts, and the last starts after 2.42 s).
#[tokio::test(start_paused = true)]
async fn five_hundred_dials_keep_to_the_limits() {
    bounded(60, async {
        let counter = Arc::new(Counter::default());
        let dials = DialLimitLayer::new();
        let maker = dials.layer(counting(counter.clone(), Duration::from_millis(20)));
        let t0 = Instant::now();
        let all: Vec<_> = (0..500)
            .map(|_| tokio::spawn(maker.clone().oneshot(ep())))
            .collect();
        // The queue is visible while it drains: every dial counted, 16 in
        // progress, the others queued.
        while dials.stats().queued + dials.stats().in_progress < 500 {
            tokio::task::yield_now().await;
        }
        let stats = dials.stats();
        assert_eq!((stats.queued, stats.in_progress), (484, 16), "{stats:?}");
        for d in all {
            assert_eq!(d.await.unwrap().unwrap(), 1);
        }
        let elapsed = t0.elapsed();
        let max = counter.max.load(SeqCst);
        assert!(max <= 16, "{max} dials at once");
        let stats = maker.stats();
        assert_eq!(
            (stats.queued, stats.in_progress, stats.started, stats.rejected),
            (0, 0, 500, 0)
        );
        assert!(stats.peak_in_progress <= 16 && stats.peak_in_progress >= 8);
        let mut starts = counter.starts.lock().unwrap().clone();
        starts.sort();
        let busiest = (0..starts.len())
            .map(|i| {
                starts[i..]
                    .iter()
                    .take_while(|t| **t < starts[i] + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap();
        assert!(busiest <= 216 + 1, "{busiest} starts in one second");
        let last = starts[499] - t0;
        assert!(
            last >= Duration::from_millis(2_420) && last <= Duration::from_millis(2_600),
            "last start after {last:?}"
        );
        eprintln!("500 dials: at most {max} at once, busiest second {busiest} starts, last start {last:?}, all made in {elapsed:?}");
    })
    .await
}

/// With concurrency alone (no rate limit), slow dials: the limit holds
/// and the permits pass on as dials finish.
#[tokio::test(start_paused = true)]
async fn concurrency_alone_bounds_slow_dials() {
    bounded(60, async {
        let counter = Arc::new(Counter::default());
        let maker = DialLimitLayer::new()
            .rate(0)
            .concurrency(4)
            .layer(counting(counter.clone(), Duration::from_millis(100)));
        let t0 = Instant::now();
        let all: Vec<_> = (0..40)
            .map(|_| tokio::spawn(maker.clone().oneshot(ep())))
            .collect();
        for d in all {
            d.await.unwrap().unwrap();
        }
        assert_eq!(counter.max.load(SeqCst), 4);
        // 10 waves of 100 ms.
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(1_000) && took < Duration::from_millis(1_100),
            "{took:?}"
        );
    })
    .await
}

/// A dial that waits for a permit longer than `max_queue_time` fails with
/// `Error::Timeout`, at that time; one whose rate slot is beyond it fails
/// at once. Both count as rejected; nothing hangs.
#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded() {
    bounded(60, async {
        let counter = Arc::new(Counter::default());
        let dials = DialLimitLayer::new()
            .concurrency(1)
            .rate(0)
            .max_queue_time(Duration::from_millis(100));
        let maker = dials.layer(counting(counter.clone(), Duration::from_secs(10)));
        let first = tokio::spawn(maker.clone().oneshot(ep()));
        tokio::task::yield_now().await;
        let t0 = Instant::now();
        let second = maker.clone().oneshot(ep()).await;
        assert!(matches!(second, Err(Error::Timeout)), "{second:?}");
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        let stats = dials.stats();
        assert_eq!((stats.queued, stats.in_progress, stats.rejected), (0, 1, 1));
        first.await.unwrap().unwrap();

        // Rate: one start per second, no burst; the second slot is 1 s off,
        // beyond the 100 ms allowed: refused without waiting.
        let dials = DialLimitLayer::new()
            .rate(1)
            .burst(1)
            .max_queue_time(Duration::from_millis(100));
        let maker = dials.layer(counting(counter.clone(), Duration::from_millis(1)));
        maker.clone().oneshot(ep()).await.unwrap();
        let t0 = Instant::now();
        let refused = maker.clone().oneshot(ep()).await;
        assert!(matches!(refused, Err(Error::Timeout)), "{refused:?}");
        assert_eq!(t0.elapsed(), Duration::ZERO);
        // Refused dials take no slot: the next one, a second later, starts.
        tokio::time::sleep(Duration::from_secs(1)).await;
        maker.clone().oneshot(ep()).await.unwrap();
        assert_eq!((dials.stats().started, dials.stats().rejected), (2, 1));
    })
    .await
}

/// A dial given up while queued or in progress leaves the counters right
/// and its permit to the next; `poll_ready` never waits for the limiter.
#[tokio::test(start_paused = true)]
async fn dropped_dials_leave_no_trace() {
    bounded(60, async {
        let counter = Arc::new(Counter::default());
        let dials = DialLimitLayer::new().concurrency(1).rate(0);
        let mut maker: DialLimit<_> =
            dials.layer(counting(counter.clone(), Duration::from_secs(10)));
        let busy = tokio::spawn(maker.clone().oneshot(ep()));
        tokio::task::yield_now().await;
        // Ready at once, although the only permit is taken.
        maker.ready().await.unwrap();
        let queued = maker.call(ep());
        assert_eq!((dials.stats().queued, dials.stats().in_progress), (1, 1));
        drop(queued);
        busy.abort();
        let _ = busy.await;
        assert_eq!((dials.stats().queued, dials.stats().in_progress), (0, 0));
        // The permit went back.
        let fast = DialLimitLayer::new().layer(counting(counter.clone(), Duration::ZERO));
        fast.oneshot(ep()).await.unwrap();
        let quick =
            tokio::time::timeout(Duration::from_secs(11), maker.clone().oneshot(ep())).await;
        assert!(quick.is_ok());
    })
    .await
}

/// Two services of one layer share the limiter; waiting dials are spread
/// by the jitter rather than started on the slot edges.
#[tokio::test(start_paused = true)]
async fn one_limiter_per_layer_and_jittered_waits() {
    bounded(60, async {
        let counter = Arc::new(Counter::default());
        let dials = DialLimitLayer::new()
            .rate(10)
            .burst(1)
            .jitter(Duration::from_millis(100));
        let a = dials.layer(counting(counter.clone(), Duration::ZERO));
        let b = dials.layer(counting(counter.clone(), Duration::ZERO));
        let t0 = Instant::now();
        let all: Vec<_> = (0..20)
            .map(|i| {
                let m = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(m.oneshot(ep()))
            })
            .collect();
        for d in all {
            d.await.unwrap().unwrap();
        }
        assert_eq!(dials.stats().started, 20);
        let starts = counter.starts.lock().unwrap().clone();
        let offsets: Vec<u128> = starts.iter().map(|t| (*t - t0).as_millis() % 100).collect();
        // One start at 0; the 19 that waited land anywhere in their slot.
        let on_edge = offsets.iter().filter(|o| **o == 0).count();
        assert!(on_edge < 10, "{on_edge} of 20 on a slot edge: {offsets:?}");
        let last = starts.iter().max().unwrap().duration_since(t0);
        assert!(
            last >= Duration::from_millis(1_900) && last < Duration::from_millis(2_000),
            "{last:?}"
        );
    })
    .await
}

/// With the `metrics` feature, the queue and the dials in progress are
/// gauges, and the dials started a counter.
#[cfg(feature = "metrics")]
#[test]
fn gauges_show_the_queue() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use redis_layers::dial::{DIALS, DIAL_IN_PROGRESS, DIAL_QUEUED};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // One snapshot for all three: the debugging recorder's snapshot
    // resets what it read, so a later one reads the changes since.
    let values = || {
        let all = snapshotter.snapshot().into_vec();
        let value = |name: &str| {
            all.iter()
                .find_map(|(k, _, _, v)| match v {
                    DebugValue::Gauge(g) if k.key().name() == name => Some(g.into_inner()),
                    DebugValue::Counter(c) if k.key().name() == name => Some(*c as f64),
                    _ => None,
                })
                .unwrap_or(0.0)
        };
        (value(DIAL_QUEUED), value(DIAL_IN_PROGRESS), value(DIALS))
    };
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(bounded(20, async {
            let counter = Arc::new(Counter::default());
            let dials = DialLimitLayer::new().concurrency(2).rate(0);
            let maker = dials.layer(counting(counter, Duration::from_secs(1)));
            let all: Vec<_> = (0..10)
                .map(|_| tokio::spawn(maker.clone().oneshot(ep())))
                .collect();
            while dials.stats().queued + dials.stats().in_progress < 10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(values(), (8.0, 2.0, 2.0));
            for d in all {
                d.await.unwrap().unwrap();
            }
            // Back to 0: 8 fewer queued, 2 fewer in progress, 8 more started.
            assert_eq!(values(), (-8.0, -2.0, 8.0));
        }));
    });
}

/// The client's default stack dials through the builder's limiter: the
/// shared connections, and the dedicated ones of blocking commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_dials_through_its_limiter() {
    bounded(30, async {
        let server = support::RedisServer::start();
        let dials = DialLimitLayer::new().concurrency(2);
        let client = redis_layers::ClientBuilder::new(server.endpoint())
            .pool_size(8)
            .dial_limit(dials.clone())
            .build()
            .await
            .unwrap();
        for i in 0..100 {
            client.set(format!("k{i}"), i).await.unwrap();
        }
        let shared = dials.stats().started;
        assert!(shared >= 1, "{:?}", dials.stats());
        let none: Option<(String, String)> = client.blpop("empty", 0.01).await.unwrap();
        assert!(none.is_none());
        let stats = dials.stats();
        assert!(
            stats.started > shared,
            "the lease dialled through it: {stats:?}"
        );
        assert!(stats.peak_in_progress <= 2, "{stats:?}");
        assert_eq!(stats.rejected, 0);

        // Off: no limits, the client works the same.
        let client = redis_layers::ClientBuilder::new(server.endpoint())
            .pool_size(8)
            .dial_limit(None)
            .build()
            .await
            .unwrap();
        client.set("k", "v").await.unwrap();
    })
    .await
}

/// A cluster client has one limiter for all its nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_client_has_one_limiter_for_all_nodes() {
    bounded(60, async {
        let cluster = support::cluster::RedisCluster::start();
        let dials = DialLimitLayer::new();
        let client = redis_layers::ClientBuilder::new(cluster.endpoint(0))
            .mode(redis_layers::client::ServerMode::Cluster)
            .dial_limit(dials.clone())
            .build()
            .await
            .unwrap();
        // Keys on every primary.
        for i in 0..30 {
            client.set(format!("k{i}"), i).await.unwrap();
        }
        let stats = dials.stats();
        assert!(
            stats.started >= 3,
            "one dial per primary at least: {stats:?}"
        );
        assert_eq!(stats.rejected, 0);
        // A shard subscription's connection to its node: through it too.
        let _sub = client.ssubscribe(["shard-news"]).await.unwrap();
        assert_eq!(
            dials.stats().started,
            stats.started + 1,
            "{:?}",
            dials.stats()
        );
    })
    .await
}

#[cfg(feature = "sim")]
mod handoff {
    use std::time::Duration;

    use super::*;
    use redis_layers::handoff::{Handoff, HandoffLayer};
    use redis_layers::maint::{MaintenanceConfig, Mode};
    use redis_layers::relax::RelaxTimeoutLayer;
    use redis_layers::sim::MovingPlan;
    use redis_layers::Connector;
    use support::ledger;
    use support::sim::SimStandalone;
    use support::within;

    const STEP: Duration = Duration::from_secs(30);

    /// The connector, its dials counted.
    fn counted(
        connector: Connector,
        counter: Arc<Counter>,
    ) -> impl Service<
        Endpoint,
        Response = redis_layers::Connection,
        Error = Error,
        Future: Send + 'static,
    > + Clone
           + Send
           + 'static {
        tower::service_fn(move |ep: Endpoint| {
            let (connector, counter) = (connector.clone(), counter.clone());
            async move {
                counter.enter();
                let made = connector.connect(ep).await;
                counter.leave();
                made
            }
        })
    }

    /// A pool of `pool` connections, handed off at once by one `MOVING`
    /// under 64 INCR tasks, its dials through `dials`: returns the most
    /// dials seen at once and how long the handoff of the whole pool took.
    async fn pool_through_a_moving(pool: usize, dials: DialLimitLayer) -> (usize, Duration) {
        let env = SimStandalone::start().await;
        let config = MaintenanceConfig::default()
            .mode(Mode::Enabled)
            .relaxed_timeout(Duration::from_secs(5));
        let connector = Connector::new().maintenance(config.clone()).unwrap();
        let counter = Arc::new(Counter::default());
        let handoff: Handoff<_> = HandoffLayer::new(env.endpoint())
            .maintenance(&config)
            .unwrap()
            .pool_size(pool)
            .unwrap()
            .layer(dials.layer(counted(connector, counter.clone())));
        let svc = RelaxTimeoutLayer::new(Duration::from_secs(2)).layer(handoff.clone());
        let load = ledger::start(&svc, 64, &format!("dial:{pool}"));
        let t0 = std::time::Instant::now();
        within(
            STEP,
            "pool connected",
            env.sim
                .wait_for(|c| c.iter().filter(|c| c.maint.is_some()).count() == pool),
        )
        .await;
        let connected = t0.elapsed();
        load.run_for(2_000).await;
        let moving = env
            .sim
            .start_moving(MovingPlan::new(Duration::from_secs(10)))
            .expect("moving");
        assert_eq!(moving.notified, pool);
        let to = moving.to;
        let t1 = std::time::Instant::now();
        within(
            STEP,
            "pool handed off",
            env.sim.wait_for(|c| {
                c.iter()
                    .filter(|c| c.endpoint == to && c.maint.is_some())
                    .count()
                    == pool
            }),
        )
        .await;
        let handed_off = t1.elapsed();
        load.run_for(1_000).await;
        let moved = within(STEP, "moving finished", moving.finished())
            .await
            .expect("moving");
        assert_eq!(moved.closed, 0, "connections left on the old endpoint");
        load.run_for(1_000).await;
        let report = load.finish().await;
        report.assert_no_failures();
        for (key, acked) in &report.acked {
            let on_server: u64 = env.server.cli(&["GET", key]).trim().parse().unwrap_or(0);
            assert_eq!(on_server, *acked, "{key}");
        }
        let stats = dials.stats();
        assert_eq!(stats.rejected, 0, "{stats:?}");
        assert!(stats.started >= 2 * pool as u64, "{stats:?}");
        let max = counter.max.load(SeqCst);
        assert_eq!(max, stats.peak_in_progress);
        let ops: u64 = report.acked.iter().map(|(_, n)| n).sum();
        eprintln!(
            "pool {pool}: connected in {connected:?}, handed off in {handed_off:?}, \
             at most {max} dials at once, {} dials, 0 of {ops} commands failed",
            stats.started
        );
        (max, handed_off)
    }

    /// Acceptance: a pool of 500 handed off at once by a `MOVING` under
    /// load; at most 16 dials at once (the default limit), no failed
    /// command, the ledger exact, nothing left on the old endpoint.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_of_500_handed_off_at_once_dials_at_most_16_at_a_time() {
        bounded(120, async {
            let (max, _) = pool_through_a_moving(500, DialLimitLayer::new()).await;
            assert!(max <= 16, "{max} dials at once");
        })
        .await
    }

    /// The same without limits (counting only): how many dials a pool of
    /// 500 makes at once when nothing holds them back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_limits_the_same_pool_dials_far_more_at_once() {
        bounded(120, async {
            let (max, _) = pool_through_a_moving(500, DialLimitLayer::unlimited()).await;
            assert!(max > 16, "{max} dials at once");
        })
        .await
    }
}

/// Pub/sub connections are the client's too: they dial through its
/// limiter and its resolver (before, they used neither: a subscriber
/// pool re-dialled outside the limits, and past a test's or a service
/// mesh's resolver), on first use and on every reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_dials_through_the_client_limiter_and_resolver() {
    use futures::StreamExt;
    use redis_layers::pubsub::Event;
    bounded(30, async {
        let server = support::RedisServer::start();
        let port = server.endpoint().port().expect("a TCP endpoint");
        let lookups = Arc::new(AtomicUsize::new(0));
        let counted = lookups.clone();
        let resolver =
            redis_layers::transport::Resolver::new(tower::service_fn(move |name: String| {
                counted.fetch_add(1, SeqCst);
                async move {
                    assert!(name.starts_with("redis.test:"), "{name}");
                    let port = name.rsplit(':').next().unwrap().parse::<u16>().unwrap();
                    Ok::<_, std::io::Error>(vec![std::net::SocketAddr::from((
                        [127, 0, 0, 1],
                        port,
                    ))])
                }
            }));
        let dials = DialLimitLayer::new();
        let client = redis_layers::ClientBuilder::new(Endpoint::tcp("redis.test", port))
            .resolver(resolver)
            .dial_limit(dials.clone())
            .build()
            .await
            .unwrap();
        client.set("k", "v").await.unwrap();
        let (started, looked_up) = (dials.stats().started, lookups.load(SeqCst));
        let mut sub = client.subscribe(["news"]).await.unwrap();
        assert_eq!(dials.stats().started, started + 1, "{:?}", dials.stats());
        assert!(
            lookups.load(SeqCst) > looked_up,
            "the pub/sub dial used the resolver"
        );

        // A reconnect dials through them again.
        server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        loop {
            match support::within(Duration::from_secs(10), "the reconnect", sub.next()).await {
                Some(Event::Reconnected { .. }) => break,
                Some(_) => continue,
                None => panic!("the subscription ended"),
            }
        }
        assert_eq!(dials.stats().started, started + 2, "{:?}", dials.stats());
        client.publish("news", "still here").await.unwrap();
    })
    .await
}

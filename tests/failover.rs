//! A cluster primary fails under load (issue 20): the commands for its
//! slots that did not run wait, within their deadline, for the replica's
//! promotion (the cluster layer's ride-out), and the other shards never
//! wait for it. 3 primaries with a replica each, 16 tasks with a key each
//! doing `INCR` through a cluster `Client`, an exact ledger per key.
//!
//! The nodes run with `cluster-require-full-coverage no`: with the default
//! (`yes`), every node refuses every slot with `CLUSTERDOWN` between the
//! failed primary's `FAIL` flag and the promotion (about a second), which
//! no client can avoid; those refusals are waited out too, but the other
//! shards then stall with the cluster.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_layers::client::{Client, ClientBuilder, ServerMode};
use redis_layers::{cmd, Error, Pipeline, ServerErrorKind, Value};
use support::cluster::{info_field, RedisCluster, Reply};
use support::{bounded, within};
use tokio::time::Instant;

const STEP: Duration = Duration::from_secs(30);
const TASKS: usize = 16;

/// What one task saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Failures that say the command did not run.
    not_applied: AtomicU64,
    /// Failures after which it may have run (its connection died after it
    /// was written).
    maybe: AtomicU64,
    errors: Mutex<Vec<String>>,
}

struct Load {
    keys: Vec<String>,
    tallies: Vec<Arc<Tally>>,
    /// When each successful INCR of a key on a live shard completed.
    live_done: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// 16 keys, at least 4 on `shard`'s slots and at least 4 elsewhere.
fn keys(cluster: &RedisCluster, shard: usize) -> Vec<String> {
    let (mut on, mut off) = (vec![], vec![]);
    for i in 0.. {
        let k = format!("fo:{i}");
        if cluster.node_for_key(&k) == shard {
            if on.len() < 6 {
                on.push(k);
            }
        } else if off.len() < TASKS - 6 {
            off.push(k);
        }
        if on.len() == 6 && off.len() == TASKS - 6 {
            break;
        }
    }
    on.into_iter().chain(off).collect()
}

fn start_load(client: &Client, keys: Vec<String>, live: Vec<bool>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let live_done = Arc::new(Mutex::new(Vec::new()));
    let tallies: Vec<_> = keys.iter().map(|_| Arc::new(Tally::default())).collect();
    let tasks = keys
        .iter()
        .zip(&tallies)
        .zip(live)
        .map(|((k, t), live)| {
            let (client, k, t) = (client.clone(), k.clone(), t.clone());
            let (stop, live_done) = (stop.clone(), live_done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.incr(&k).await {
                        Ok(_) => {
                            t.ok.fetch_add(1, Ordering::Relaxed);
                            if live {
                                live_done.lock().unwrap().push(Instant::now());
                            }
                        }
                        Err(e) => {
                            if e.is_not_sent() || is_refusal(&e) {
                                t.not_applied.fetch_add(1, Ordering::Relaxed);
                            } else {
                                t.maybe.fetch_add(1, Ordering::Relaxed);
                            }
                            t.errors.lock().unwrap().push(e.to_string());
                        }
                    }
                }
            })
        })
        .collect();
    Load {
        keys,
        tallies,
        live_done,
        stop,
        tasks,
    }
}

fn is_refusal(e: &Error) -> bool {
    matches!(
        e.server_error().map(|s| s.code()),
        Some("CLUSTERDOWN" | "TRYAGAIN")
    )
}

impl Load {
    /// Until every task has done `n` more INCRs than now.
    async fn progress(&self, n: u64, what: &str) {
        let base: Vec<u64> = self
            .tallies
            .iter()
            .map(|t| t.ok.load(Ordering::Relaxed))
            .collect();
        within(STEP, what, async {
            while self
                .tallies
                .iter()
                .zip(&base)
                .any(|(t, b)| t.ok.load(Ordering::Relaxed) < b + n)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    async fn finish(self) -> (Vec<String>, Vec<Arc<Tally>>, Vec<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let done = std::mem::take(&mut *self.live_done.lock().unwrap());
        (self.keys, self.tallies, done)
    }
}

/// The longest time after `from` in which the live shards completed no
/// INCR.
fn longest_stall(done: &mut [Instant], from: Instant) -> Duration {
    done.sort();
    let after: Vec<_> = done.iter().copied().filter(|t| *t >= from).collect();
    after
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

async fn client_for(cluster: &RedisCluster, timeout: Duration) -> Client {
    ClientBuilder::new(cluster.endpoint(1))
        .mode(ServerMode::Cluster)
        .command_timeout(timeout)
        .build()
        .await
        .unwrap()
}

fn cluster() -> RedisCluster {
    cluster_with(false)
}

/// `full_coverage`: Redis's default, every node refuses every slot while
/// one has no owner.
fn cluster_with(full_coverage: bool) -> RedisCluster {
    RedisCluster::builder()
        .replicas_per_primary(1)
        .arg("--cluster-node-timeout")
        .arg("2000")
        .arg("--cluster-require-full-coverage")
        .arg(if full_coverage { "yes" } else { "no" })
        .start()
}

/// Until `shard`'s replica has every write of its primary so far (so that
/// the crash loses no write acknowledged before it).
async fn replicated(cluster: &RedisCluster, shard: usize) {
    let r = cluster.replicas_of(shard).start;
    within(STEP, "replication", async {
        loop {
            let offset = |i: usize| {
                info_field(
                    cluster.nodes()[i].port(),
                    "replication",
                    "master_repl_offset",
                )
            };
            if offset(shard) == offset(r) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Acceptance (issue 20): SIGKILL of a primary under 16 tasks of INCR with
/// a 10 s command timeout. No command that did not run fails (they wait for
/// the promotion); the commands in flight on the killed node when it died
/// may have run, and are reported so (at most one per task of that shard);
/// the ledger is exact; the other shards never stall for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_no_command_that_did_not_run() {
    killed_primary(false).await
}

/// The same with Redis's default `cluster-require-full-coverage yes`: the
/// `CLUSTERDOWN` every node answers until the promotion is waited out too
/// (0 failed unrun); the live shards stall with the cluster (printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_under_full_coverage_waits_out_clusterdown() {
    killed_primary(true).await
}

async fn killed_primary(full_coverage: bool) {
    bounded(180, async {
        let mut cluster = tokio::task::spawn_blocking(move || cluster_with(full_coverage))
            .await
            .unwrap();
        let client = client_for(&cluster, Duration::from_secs(10)).await;
        let keys = keys(&cluster, 0);
        let live: Vec<bool> = keys.iter().map(|k| cluster.node_for_key(k) != 0).collect();
        let load = start_load(&client, keys.clone(), live.clone());
        load.progress(20, "warm-up").await;
        replicated(&cluster, 0).await;
        let killed = Instant::now();
        cluster.kill(0);
        // The dead shard's keys move on again once its replica took over.
        load.progress(20, "recovery after the failover").await;
        let recovered = killed.elapsed();
        let (keys, tallies, mut done) = load.finish().await;
        let stall = longest_stall(&mut done, killed);
        let (mut not_applied, mut maybe) = (0, 0);
        for ((k, t), live) in keys.iter().zip(&tallies).zip(&live) {
            let ok = t.ok.load(Ordering::Relaxed);
            let (n, m) = (
                t.not_applied.load(Ordering::Relaxed),
                t.maybe.load(Ordering::Relaxed),
            );
            not_applied += n;
            maybe += m;
            assert!(m <= 1, "{k}: {m} commands may have run: {:?}", t.errors);
            let value: i64 = client.get::<Option<i64>>(k).await.unwrap().unwrap_or(0);
            let value = value as u64;
            assert!(
                (ok..=ok + m).contains(&value),
                "{k} (live {live}): {value} in Redis, {ok} acknowledged, {m} maybe"
            );
            if *live {
                assert_eq!((n, m), (0, 0), "{k} is on a live shard: {:?}", t.errors);
            }
        }
        let errors: Vec<String> = tallies
            .iter()
            .flat_map(|t| t.errors.lock().unwrap().clone())
            .take(5)
            .collect();
        println!(
            "primary killed (full coverage {full_coverage}): recovered after {recovered:?}; {not_applied} failed unrun, \
             {maybe} in flight at the kill; live shards' longest stall {stall:?}; {errors:?}"
        );
        assert_eq!(not_applied, 0, "commands that did not run failed: {errors:?}");
        if !full_coverage {
            assert!(
                stall < Duration::from_millis(500),
                "the live shards stalled for {stall:?}"
            );
        }
    })
    .await
}

/// With a 1 s command timeout the dead shard's commands give up, not sent
/// and typed as a timeout, while the other shards are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_times_out_only_its_own_commands() {
    bounded(180, async {
        let mut cluster = tokio::task::spawn_blocking(cluster).await.unwrap();
        let client = client_for(&cluster, Duration::from_secs(1)).await;
        let keys = keys(&cluster, 0);
        let (key, other) = (&keys[0], &keys[TASKS - 1]);
        client.incr(key).await.unwrap();
        cluster.kill(0);
        // A primary's failure takes node timeout (2 s) and an election: a
        // 1 s budget runs out first.
        let mut began = Instant::now();
        let mut e = client.incr(key).await.unwrap_err();
        if !e.is_not_sent() {
            // Written on the old connection before its reset was seen: it
            // may have run, and says so.
            assert!(e.is_connection_error(), "{e:?}");
            began = Instant::now();
            e = client.incr(key).await.unwrap_err();
        }
        let took = began.elapsed();
        assert!(e.is_not_sent(), "{e:?}");
        assert!(
            matches!(&e, Error::NotSent(n) if matches!(n.cause(), Error::Timeout)),
            "{e:?}"
        );
        assert!(took < Duration::from_millis(1500), "took {took:?}");
        // Meanwhile another shard answers at once.
        let began = Instant::now();
        client.incr(other).await.unwrap();
        assert!(began.elapsed() < Duration::from_millis(200));
        println!("dead shard's command: {e} after {took:?}");
    })
    .await
}

/// A manual failover (`CLUSTER FAILOVER` on the replica, which waits for
/// the replica to catch up, as maintenance does it) under the same load: 0
/// failed commands, the ledger exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_fails_no_command() {
    failover(false).await
}

/// `CLUSTER FAILOVER FORCE` (the replica takes over without waiting for
/// its primary): 0 failed commands. Redis itself may lose the writes the
/// old primary acknowledged in the moment before it learned of the
/// promotion (asynchronous replication), so the ledger can only be short,
/// never over; the count is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_fails_no_command() {
    failover(true).await
}

async fn failover(force: bool) {
    bounded(180, async {
        let cluster = tokio::task::spawn_blocking(cluster).await.unwrap();
        let client = client_for(&cluster, Duration::from_secs(10)).await;
        let keys = keys(&cluster, 0);
        let live: Vec<bool> = keys.iter().map(|k| cluster.node_for_key(k) != 0).collect();
        let load = start_load(&client, keys, live);
        load.progress(20, "warm-up").await;
        let replica = cluster.replicas_of(0).start;
        let began = Instant::now();
        let args: &[&[u8]] = if force {
            &[b"CLUSTER", b"FAILOVER", b"FORCE"]
        } else {
            &[b"CLUSTER", b"FAILOVER"]
        };
        let r = cluster.query(replica, args);
        assert!(matches!(r, Reply::Status(_)), "{r:?}");
        within(STEP, "promotion", async {
            while !matches!(
                cluster.query(replica, &[b"ROLE"]),
                Reply::Array(Some(r)) if matches!(r.first(), Some(Reply::Bulk(Some(b))) if b == b"master")
            ) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        load.progress(20, "traffic after the promotion").await;
        let (keys, tallies, mut done) = load.finish().await;
        let stall = longest_stall(&mut done, began);
        let mut lost = 0;
        for (k, t) in keys.iter().zip(&tallies) {
            let ok = t.ok.load(Ordering::Relaxed);
            let errors = t.errors.lock().unwrap().clone();
            assert!(errors.is_empty(), "{k}: {errors:?}");
            let value = client.get::<Option<i64>>(k).await.unwrap().unwrap_or(0) as u64;
            if force {
                assert!(value <= ok, "{k}: {value} in Redis, {ok} acknowledged");
                lost += ok - value;
            } else {
                assert_eq!(value, ok, "{k}");
            }
        }
        println!(
            "failover (force {force}): 0 failed commands, {lost} acknowledged writes lost by \
             Redis; live shards' longest stall {stall:?}"
        );
    })
    .await
}

/// Acceptance (issue 20): a pipeline of INCRs across a dead node and live
/// ones. The live parts' replies come back, and each command of the dead
/// node's part says it was not sent (`NOTSENT`: it did not run), in its own
/// place; the ledger of the live keys is exact. No replica, so no new owner
/// comes: the dead part waits out its 500 ms deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_pipeline_reports_each_part_on_its_own() {
    bounded(120, async {
        let mut cluster = tokio::task::spawn_blocking(|| {
            RedisCluster::builder()
                .arg("--cluster-require-full-coverage")
                .arg("no")
                .start()
        })
        .await
        .unwrap();
        let client = client_for(&cluster, Duration::from_millis(500)).await;
        let keys = keys(&cluster, 0);
        let pipeline: Pipeline = keys.iter().map(|k| cmd("INCR").arg(k)).collect();
        // Every node known and connected first.
        let first = client.send(pipeline.clone()).await.unwrap();
        assert!(first.into_pipeline().unwrap().iter().all(|r| r.is_ok()));
        cluster.kill(0);
        let mut dead_part_errors = Vec::new();
        // The first pipeline after the kill may have been written to the
        // dying connection; a later one finds the node refusing.
        let replies = loop {
            let replies = client
                .send(pipeline.clone())
                .await
                .unwrap()
                .into_pipeline()
                .unwrap();
            let indeterminate = replies
                .iter()
                .any(|r| matches!(r, Err(e) if e.kind() == &ServerErrorKind::Indeterminate));
            if !indeterminate {
                break replies;
            }
            dead_part_errors.push(format!("{replies:?}"));
            assert!(dead_part_errors.len() < 3, "{dead_part_errors:?}");
        };
        for (k, r) in keys.iter().zip(&replies) {
            if cluster.node_for_key(k) == 0 {
                let Err(e) = r else { panic!("{k}: {r:?}") };
                assert_eq!(e.kind(), &ServerErrorKind::NotSent, "{k}: {e}");
                assert_eq!(
                    redis_layers::retry::classify(&Error::Server(e.clone())),
                    redis_layers::retry::Retryable::NotApplied
                );
            } else {
                let expected = 2 + dead_part_errors.len() as i64;
                assert_eq!(r, &Ok(Value::Integer(expected)), "{k}");
            }
        }
        println!("split pipeline over a dead node: {:?}", &replies[..2]);
    })
    .await
}

/// Acceptance (issue 20): a cold cluster `Client` whose 64 first callers
/// start together on an idle cluster: every one is answered with the first
/// topology read (before, callers that came while it ran waited for a
/// cooldown and a second read: 253 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_client_answers_its_first_64_callers_at_once() {
    bounded(120, async {
        let cluster = tokio::task::spawn_blocking(|| RedisCluster::builder().start())
            .await
            .unwrap();
        let mut slowest = Vec::new();
        for round in 0..3 {
            let client = client_for(&cluster, Duration::from_secs(5)).await;
            let start = Arc::new(tokio::sync::Barrier::new(64));
            let calls: Vec<_> = (0..64)
                .map(|i| {
                    let (client, start) = (client.clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        let t0 = Instant::now();
                        let v: Option<String> =
                            client.get(format!("cold:{round}:{i}")).await.unwrap();
                        assert!(v.is_none());
                        t0.elapsed()
                    })
                })
                .collect();
            let mut max = Duration::ZERO;
            for c in calls {
                max = max.max(c.await.unwrap());
            }
            slowest.push(max);
        }
        println!("cold client, 64 callers at once: slowest call per round {slowest:?}");
        // 50 ms on a quiet machine; generous here for a loaded CI host.
        assert!(
            slowest.iter().all(|t| *t < Duration::from_millis(250)),
            "{slowest:?}"
        );
    })
    .await
}

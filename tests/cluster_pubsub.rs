//! Sharded pub/sub through a cluster `Client`: `SSUBSCRIBE` goes to the
//! primary serving the channels' slot, one slot per call, and a shard
//! subscription follows its slot when the slot moves. Checked against a
//! real 3-primary Redis Cluster; where the server is subscribed is read
//! apart from the client (`PUBSUB SHARDNUMSUB` on each node).

mod support;

use std::time::Duration;

use bytes::Bytes;
use redis_layers::client::{Client, ClientBuilder};
use redis_layers::pubsub::{Event, Kind, PubSub, Subscription};
use redis_layers::{cmd, Connector, Error};
use support::cluster::{RedisCluster, Reply};
use support::{bounded, within};

const STEP: Duration = Duration::from_secs(10);

/// A shard channel whose slot primary `p` serves.
fn channel_on(cluster: &RedisCluster, p: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|c| cluster.node_for_key(c) == p)
        .unwrap()
}

/// How many clients node `i` has subscribed to shard `channel`.
fn shard_subscribers(cluster: &RedisCluster, i: usize, channel: &str) -> i64 {
    match cluster.query(i, &[b"PUBSUB", b"SHARDNUMSUB", channel.as_bytes()]) {
        Reply::Array(Some(r)) => match r.as_slice() {
            [_, Reply::Int(n)] => *n,
            other => panic!("PUBSUB SHARDNUMSUB: {other:?}"),
        },
        other => panic!("PUBSUB SHARDNUMSUB: {other:?}"),
    }
}

/// Node `i`'s pub/sub clients (`CLIENT LIST TYPE pubsub`).
fn pubsub_clients(cluster: &RedisCluster, i: usize) -> usize {
    match cluster.query(i, &[b"CLIENT", b"LIST", b"TYPE", b"pubsub"]) {
        Reply::Bulk(Some(list)) => list
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        other => panic!("CLIENT LIST: {other:?}"),
    }
}

async fn spublish(client: &Client, channel: &str, payload: &str) -> i64 {
    client
        .cmd(cmd("SPUBLISH").arg(channel).arg(payload))
        .await
        .unwrap()
}

/// The next event, which must be a message: `(channel, payload)`.
async fn next_message(sub: &mut Subscription) -> (Bytes, Bytes) {
    match within(STEP, "a shard message", sub.recv()).await {
        Some(Event::Message(m)) => {
            assert_eq!(m.kind, Kind::Shard);
            (m.channel, m.payload)
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

/// A client logged in as ACL user `sub`, made on every node: switching
/// it off on one node (and killing its connections) keeps that node's
/// connection down until it is switched on again.
async fn client_as_sub(cluster: &RedisCluster) -> Client {
    for i in 0..cluster.nodes().len() {
        let r = cluster.query(
            i,
            &[
                b"ACL", b"SETUSER", b"sub", b"on", b">pw", b"~*", b"&*", b"+@all",
            ],
        );
        assert!(matches!(r, Reply::Status(_)), "node {i}: {r:?}");
    }
    ClientBuilder::new(cluster.endpoint(0))
        .connector(Connector::new().username("sub").password("pw"))
        .build()
        .await
        .unwrap()
}

/// Takes node 0's connections of the [`client_as_sub`] down, and keeps
/// them down (its user is off there) until the user is switched on again;
/// `sub`, with a channel on node 0, is told of the loss.
async fn cut_off_node_0(cluster: &RedisCluster, sub: &mut Subscription) {
    cluster.query(0, &[b"ACL", b"SETUSER", b"sub", b"off"]);
    let killed = cluster.query(0, &[b"CLIENT", b"KILL", b"USER", b"sub"]);
    assert!(matches!(killed, Reply::Int(n) if n >= 1), "{killed:?}");
    assert_eq!(
        within(STEP, "the loss", sub.recv()).await,
        Some(Event::Disconnected)
    );
}

/// `sub`, whose shard `channel` moved from node 0 to node 1, is
/// subscribed again there (`Reconnected`, then what is published arrives);
/// node 0 has no subscriber left.
async fn followed_to_node_1(
    cluster: &RedisCluster,
    client: &Client,
    sub: &mut Subscription,
    channel: &str,
    what: &str,
) {
    match within(STEP, "the subscription on the new owner", sub.recv()).await {
        Some(Event::Reconnected { downtime }) => eprintln!("{what}: downtime {downtime:?}"),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    assert_eq!(shard_subscribers(cluster, 0, channel), 0);
    assert_eq!(shard_subscribers(cluster, 1, channel), 1);
    assert_eq!(spublish(client, channel, "after").await, 1);
    assert_eq!(
        next_message(sub).await,
        (channel.to_owned().into(), "after".into())
    );
}

/// A shard channel on each primary, each subscribed through the client
/// (and one more through a clone): each subscription is on the primary
/// serving its slot, clones share that node's connection, and a
/// `SPUBLISH` through the client reaches exactly its subscription. Shard
/// channels of two slots in one call are refused before anything is
/// sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_channels_on_every_primary() {
    bounded(60, async {
        let cluster = RedisCluster::start();
        let client = ClientBuilder::new(cluster.endpoint(0))
            .build()
            .await
            .unwrap();
        assert!(client.is_cluster());

        let (a, b) = (channel_on(&cluster, 0, "x"), channel_on(&cluster, 1, "x"));
        match client.ssubscribe([a.clone(), b.clone()]).await {
            Err(Error::Config(msg)) => assert!(msg.contains("hash tags"), "{msg}"),
            other => panic!("two slots in one SSUBSCRIBE: {other:?}"),
        }
        for i in 0..3 {
            assert_eq!(pubsub_clients(&cluster, i), 0, "node {i}: nothing was sent");
        }

        let channels: Vec<String> = (0..3).map(|p| channel_on(&cluster, p, "news")).collect();
        let mut subs = Vec::new();
        for c in &channels {
            subs.push(client.ssubscribe([c.clone()]).await.unwrap());
        }
        // A second channel on primary 0 through a clone, two in one call
        // (one hash tag, one slot).
        let tag = (0..)
            .map(|i| format!("{{t{i}}}"))
            .find(|t| cluster.node_for_key(t) == 0)
            .unwrap();
        let (t1, t2) = (format!("{tag}:one"), format!("{tag}:two"));
        let mut tagged = client
            .clone()
            .ssubscribe([t1.clone(), t2.clone()])
            .await
            .unwrap();
        for (p, c) in channels.iter().enumerate() {
            for i in 0..3 {
                let want = i64::from(i == p);
                assert_eq!(shard_subscribers(&cluster, i, c), want, "{c} on node {i}");
            }
        }
        for i in 0..3 {
            assert_eq!(pubsub_clients(&cluster, i), 1, "one connection on node {i}");
        }

        for (c, sub) in channels.iter().zip(&mut subs) {
            assert_eq!(spublish(&client, c, &format!("to {c}")).await, 1);
            assert_eq!(
                next_message(sub).await,
                (c.clone().into(), format!("to {c}").into())
            );
        }
        assert_eq!(spublish(&client, &t2, "tagged").await, 1);
        assert_eq!(
            next_message(&mut tagged).await,
            (t2.clone().into(), "tagged".into())
        );
        // Nothing else arrived anywhere: each message went to its one
        // subscription.
        for sub in subs.iter_mut().chain([&mut tagged]) {
            assert_eq!(sub.try_recv(), None);
        }
    })
    .await;
}

/// A shard channel's slot moves to another primary while subscribed:
/// Redis ends the subscription (a server-side `sunsubscribe`), and the
/// client's subscription reports the gap and is made again on the new
/// owner, where the next `SPUBLISH` reaches it. A `PubSub` on the old
/// node alone reports the end instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_subscription_follows_its_slot() {
    bounded(90, async {
        let cluster = RedisCluster::start();
        let client = ClientBuilder::new(cluster.endpoint(0))
            .build()
            .await
            .unwrap();
        let channel = channel_on(&cluster, 0, "moving");
        let slot = cluster.slot_of(&channel);
        let mut sub = client.ssubscribe([channel.clone()]).await.unwrap();
        let direct = PubSub::new(Connector::new(), cluster.endpoint(0));
        let mut pinned = direct.ssubscribe([channel.clone()]).await.unwrap();
        assert_eq!(spublish(&client, &channel, "before").await, 2);
        assert_eq!(next_message(&mut sub).await.1, "before");
        assert_eq!(next_message(&mut pinned).await.1, "before");

        tokio::task::block_in_place(|| {
            cluster.migrate_slot(slot, 0, 1);
            cluster.wait_consistent();
        });

        assert_eq!(
            within(STEP, "the gap", sub.recv()).await,
            Some(Event::Disconnected)
        );
        followed_to_node_1(
            &cluster,
            &client,
            &mut sub,
            &channel,
            "shard subscription moved",
        )
        .await;

        // On one endpoint there is nowhere to follow the slot to.
        assert_eq!(
            within(STEP, "the end", pinned.recv()).await,
            Some(Event::Unsubscribed {
                kind: Kind::Shard,
                channel: channel.clone().into()
            })
        );
        assert_eq!(pinned.try_recv(), None);

        // Unsubscribing reaches the node the channel is on now.
        sub.sunsubscribe([channel.clone()]).await.unwrap();
        assert_eq!(shard_subscribers(&cluster, 1, &channel), 0);
    })
    .await;
}

/// A shard channel's slot moves while the client's connection to its node
/// is down (the client's ACL user is switched off on that node and its
/// connections killed; it is switched on again once the slot moved, so
/// the reconnect's restore meets the new map): the old node refuses the
/// restore with `MOVED`, and the subscription is made on the new owner,
/// the gap reported once, as when the server ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_restore_refused_with_moved_follows_the_slot() {
    bounded(90, async {
        let cluster = RedisCluster::start();
        let client = client_as_sub(&cluster).await;
        let channel = channel_on(&cluster, 0, "held");
        let slot = cluster.slot_of(&channel);
        let mut sub = client.ssubscribe([channel.clone()]).await.unwrap();
        assert_eq!(spublish(&client, &channel, "before").await, 1);
        assert_eq!(next_message(&mut sub).await.1, "before");

        // Down, and kept down: its reconnects fail until the user is on.
        cut_off_node_0(&cluster, &mut sub).await;
        tokio::task::block_in_place(|| {
            cluster.migrate_slot(slot, 0, 1);
            cluster.wait_consistent();
        });
        assert_eq!(shard_subscribers(&cluster, 0, &channel), 0);
        cluster.query(0, &[b"ACL", b"SETUSER", b"sub", b"on"]);

        followed_to_node_1(
            &cluster,
            &client,
            &mut sub,
            &channel,
            "refused shard restore followed",
        )
        .await;
        assert_eq!(sub.try_recv(), None);
    })
    .await;
}

/// Node `i`'s count of `SUNSUBSCRIBE` commands (`INFO commandstats`)
/// since its last `CONFIG RESETSTAT`.
fn sunsubscribe_calls(cluster: &RedisCluster, i: usize) -> u64 {
    let Reply::Bulk(Some(info)) = cluster.query(i, &[b"INFO", b"commandstats"]) else {
        panic!("INFO commandstats on node {i}");
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_sunsubscribe:calls="))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// Polls (bounded) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    within(STEP, what, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// An `SUNSUBSCRIBE` that fails while the connection to the channel's
/// node is down (the client's ACL user is off there) leaves the server
/// subscription to be restored by the reconnect; the message that then
/// comes for the unwanted channel makes exactly one `SUNSUBSCRIBE` reach
/// that node, and the server drops the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_channel_left_by_a_failed_sunsubscribe_is_cleaned_up() {
    bounded(90, async {
        let cluster = RedisCluster::start();
        let client = client_as_sub(&cluster).await;
        let channel = channel_on(&cluster, 0, "left");
        let kept = channel_on(&cluster, 0, "kept");
        let mut sub = client.ssubscribe([channel.clone()]).await.unwrap();
        // Tells when node 0's connection is restored.
        let mut keeper = client.ssubscribe([kept.clone()]).await.unwrap();

        cut_off_node_0(&cluster, &mut keeper).await;
        let failed = within(
            STEP,
            "the refused unsubscribe",
            sub.sunsubscribe([channel.clone()]),
        )
        .await;
        assert!(failed.is_err(), "SUNSUBSCRIBE while down: {failed:?}");
        cluster.query(0, &[b"ACL", b"SETUSER", b"sub", b"on"]);
        match within(STEP, "the restore", keeper.recv()).await {
            Some(Event::Reconnected { .. }) => {}
            other => panic!("expected Reconnected, got {other:?}"),
        }
        // The transport restored what the server had confirmed.
        assert_eq!(shard_subscribers(&cluster, 0, &channel), 1);

        assert_eq!(
            cluster.query(0, &[b"CONFIG", b"RESETSTAT"]),
            Reply::Status("OK".into())
        );
        assert_eq!(spublish(&client, &channel, "stray").await, 1);
        eventually("the stray channel unsubscribed", || {
            shard_subscribers(&cluster, 0, &channel) == 0
        })
        .await;
        assert_eq!(sunsubscribe_calls(&cluster, 0), 1);
        assert_eq!(shard_subscribers(&cluster, 0, &kept), 1);
        // `sub` had the channel when the connection was lost, not when it
        // was restored; the stray never reached it.
        assert_eq!(sub.try_recv(), Some(Event::Disconnected));
        assert_eq!(sub.try_recv(), None);
        assert_eq!(keeper.try_recv(), None);
    })
    .await;
}

/// A primary killed while it has a replica: the replica takes its slots,
/// and the dead node cannot end its shard subscriptions. The client reads
/// the slot map while that node's connection is lost and subscribes again
/// on the new primary by itself (`Disconnected`, then `Reconnected`); what
/// is published there arrives. `seed`: the node the client starts from,
/// which also holds its plain channels (none here).
async fn follows_a_failover(seed: usize) -> (RedisCluster, Client, Subscription) {
    let mut cluster = RedisCluster::builder()
        .replicas_per_primary(1)
        .arg("--cluster-node-timeout")
        .arg("1000")
        .start();
    let client = ClientBuilder::new(cluster.endpoint(seed))
        .build()
        .await
        .unwrap();
    let channel = channel_on(&cluster, 0, "failover");
    let mut sub = client.ssubscribe([channel.clone()]).await.unwrap();
    assert_eq!(spublish(&client, &channel, "before").await, 1);
    assert_eq!(next_message(&mut sub).await.1, "before");

    let replica = cluster.replicas_of(0).start;
    cluster.kill(0);
    assert_eq!(
        within(STEP, "the loss", sub.recv()).await,
        Some(Event::Disconnected)
    );
    // The cluster fails over within a few seconds (node timeout 1 s).
    let wait = Duration::from_secs(60);
    match within(wait, "the subscription on the new primary", sub.recv()).await {
        Some(Event::Reconnected { downtime }) => {
            eprintln!("failover followed (seed {seed}): downtime {downtime:?}")
        }
        other => panic!("expected Reconnected, got {other:?}"),
    }
    assert_eq!(shard_subscribers(&cluster, replica, &channel), 1);
    assert_eq!(spublish(&client, &channel, "after").await, 1);
    assert_eq!(
        next_message(&mut sub).await,
        (channel.clone().into(), "after".into())
    );
    assert_eq!(sub.try_recv(), None);
    (cluster, client, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_subscription_follows_a_failover() {
    bounded(120, follows_a_failover(1)).await;
}

/// The same when the dead node is the one the client started from: once
/// nothing is left on it, its loss ends, so a later loss on another node
/// is reported again (`Disconnected`, `Reconnected`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_of_the_seed_node_is_followed_and_ends_its_loss() {
    bounded(120, async {
        let (cluster, client, _first) = follows_a_failover(0).await;
        let channel = channel_on(&cluster, 1, "later");
        let mut sub = client.ssubscribe([channel.clone()]).await.unwrap();
        let killed = cluster.query(1, &[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
        assert!(matches!(killed, Reply::Int(n) if n >= 1), "{killed:?}");
        assert_eq!(
            within(STEP, "the later loss", sub.recv()).await,
            Some(Event::Disconnected)
        );
        assert!(matches!(
            within(STEP, "the later restore", sub.recv()).await,
            Some(Event::Reconnected { .. })
        ));
        assert_eq!(spublish(&client, &channel, "x").await, 1);
        assert_eq!(next_message(&mut sub).await.1, "x");
    })
    .await;
}

//! Pub/sub on real redis-server: messages keep flowing across a `MOVING`
//! (none lost), a server-side `CLIENT KILL` (the gap is reported and
//! measured), refused reconnects and a server that drops each restored
//! connection (backoff, then resume); unsubscribe, drop, many subscribers
//! and the slow-consumer policy.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use redis_layers::handoff::Handoff;
use redis_layers::pubsub::{Event, Kind, Message, PubSub, Subscription};
use redis_layers::{cmd, Connector, Endpoint, Error, Protocol, Value};
use support::{bounded, within, RedisServer};
use tower::Service;

const STEP: Duration = Duration::from_secs(10);

/// Publishes 0, 1, 2, ... every millisecond on each of `channels`
/// (straight to the server), until stopped; returns how many.
struct Publisher {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl Publisher {
    async fn start(server: Endpoint, channels: &[&'static str]) -> Publisher {
        let conn = Connector::new().connect(server).await.expect("publisher");
        let channels = channels.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let stop = stop.clone();
            let sent = sent.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    for ch in &channels {
                        conn.send_cmd(cmd("PUBLISH").arg(*ch).arg(n))
                            .await
                            .expect("publish");
                    }
                    n += 1;
                    sent.store(n, Ordering::Relaxed);
                }
                n
            }
        });
        Publisher { stop, sent, task }
    }

    /// How many were published so far.
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("publisher task")
    }
}

/// What a subscription delivered: per channel, the sequence numbers in
/// arrival order; and the gap events, with the position they came at.
#[derive(Default, Debug)]
struct Log {
    seqs: HashMap<String, Vec<u64>>,
    events: Vec<Event>,
}

impl Log {
    fn record(&mut self, ev: Event) {
        match ev {
            Event::Message(m) => {
                let n = String::from_utf8_lossy(&m.payload)
                    .parse()
                    .expect("a number");
                self.seqs
                    .entry(String::from_utf8_lossy(&m.channel).into_owned())
                    .or_default()
                    .push(n);
            }
            other => self.events.push(other),
        }
    }

    fn count(&self, ch: &str) -> usize {
        self.seqs.get(ch).map_or(0, Vec::len)
    }

    /// Receives while `f` runs (so nothing piles up in the buffer meanwhile).
    async fn during<F: std::future::Future>(&mut self, sub: &mut Subscription, f: F) -> F::Output {
        tokio::pin!(f);
        loop {
            tokio::select! {
                out = &mut f => return out,
                ev = sub.recv() => self.record(ev.expect("stream open")),
            }
        }
    }

    /// Received a message numbered `n` or later on `ch`.
    fn reached(&self, ch: &str, n: u64) -> bool {
        self.seqs
            .get(ch)
            .and_then(|s| s.last())
            .is_some_and(|last| *last >= n)
    }

    /// Receives until `done` says so.
    async fn until(&mut self, sub: &mut Subscription, what: &str, done: impl Fn(&Log) -> bool) {
        while !done(self) {
            let ev = within(STEP, what, sub.recv()).await.expect("stream open");
            self.record(ev);
        }
    }
}

/// Numbers missing from a run that should be consecutive, and numbers
/// seen twice or out of order.
fn holes(seqs: &[u64]) -> (Vec<(u64, u64)>, usize) {
    let mut gaps = vec![];
    let mut disorder = 0;
    for w in seqs.windows(2) {
        if w[1] <= w[0] {
            disorder += 1;
        } else if w[1] > w[0] + 1 {
            gaps.push((w[0], w[1]));
        }
    }
    (gaps, disorder)
}

fn payloads(msgs: &[Message]) -> Vec<&[u8]> {
    msgs.iter().map(|m| m.payload.as_ref()).collect()
}

async fn next_message(sub: &mut Subscription) -> Message {
    match within(STEP, "message", sub.recv()).await {
        Some(Event::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// `PUBSUB NUMSUB channel` on the server.
fn numsub(server: &RedisServer, channel: &str) -> String {
    server
        .cli(&["PUBSUB", "NUMSUB", channel])
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_string()
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

/// A `Connector` that counts its dials.
#[cfg(feature = "sim")]
mod counting {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use redis_layers::{Connection, Connector, Endpoint, Error};
    use tower::Service;

    #[derive(Clone)]
    pub struct Counting {
        pub inner: Connector,
        pub dials: Arc<AtomicUsize>,
    }

    impl Service<Endpoint> for Counting {
        type Response = Connection;
        type Error = Error;
        type Future = Pin<Box<dyn Future<Output = Result<Connection, Error>> + Send>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, e: Endpoint) -> Self::Future {
            self.dials.fetch_add(1, Ordering::SeqCst);
            Box::pin(self.inner.call(e))
        }
    }
}

/// The next `n` events of `sub` but the messages.
async fn events(sub: &mut Subscription, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        match within(STEP, "events", sub.recv()).await.expect("open") {
            Event::Message(_) => {}
            ev => out.push(ev),
        }
    }
    out
}

/// A restore the server refuses is not a silent loss: an ACL user
/// subscribed to `keep` and `lose` loses the permission for `lose` (Redis 7
/// kills a client subscribed to a channel it may no longer use, so the
/// change comes before the reconnect). The subscribers of `lose` get
/// `Unsubscribed` and nothing more; `keep` is restored (the restore's
/// `SUBSCRIBE keep lose` is refused whole, then tried per channel) and
/// receives; a later subscribe to `lose` sends the command again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_restore_ends_that_channel_only() {
    bounded(60, async {
        let server = RedisServer::builder().acl_user("alice", "pw").start();
        let alice = Connector::new().username("alice").password("pw");
        let pubsub = PubSub::new(alice, server.endpoint());
        let mut keep = pubsub.subscribe(["keep"]).await.unwrap();
        let mut lose = pubsub.subscribe(["lose"]).await.unwrap();
        let mut both = pubsub.subscribe(["keep", "lose"]).await.unwrap();
        let admin = Connector::new().connect(server.endpoint()).await.unwrap();
        let publish = |ch: &'static str, m: &'static str| {
            let admin = admin.clone();
            async move {
                admin
                    .send_cmd(cmd("PUBLISH").arg(ch).arg(m))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(publish("lose", "before").await, Value::Integer(1));

        let revoked = admin
            .send_cmd(
                cmd("ACL")
                    .arg("SETUSER")
                    .arg("alice")
                    .arg("resetchannels")
                    .arg("&keep"),
            )
            .await
            .unwrap();
        assert_eq!(revoked, Value::SimpleString("OK".into()));

        let unsubscribed = Event::Unsubscribed {
            kind: Kind::Channel,
            channel: Bytes::from_static(b"lose"),
        };
        let got = events(&mut lose, 2).await;
        assert_eq!(got, [Event::Disconnected, unsubscribed.clone()]);
        let got = events(&mut both, 3).await;
        assert!(
            matches!(&got[..], [Event::Disconnected, u, Event::Reconnected { .. }] if *u == unsubscribed),
            "{got:?}"
        );
        let got = events(&mut keep, 2).await;
        assert!(
            matches!(&got[..], [Event::Disconnected, Event::Reconnected { .. }]),
            "{got:?}"
        );
        // Received, the end takes the channel off the subscription's list.
        assert_eq!(lose.channels().count(), 0);
        assert_eq!(both.channels().collect::<Vec<_>>(), [&Bytes::from_static(b"keep")]);

        // Restored (confirmed before `Reconnected`): `keep` receives; `lose`
        // is subscribed nowhere, so its message, published first on the
        // same connection, reaches nobody.
        assert_eq!(numsub(&server, "lose"), "0");
        assert_eq!(publish("lose", "x").await, Value::Integer(0));
        assert_eq!(publish("keep", "after").await, Value::Integer(1));
        assert_eq!(next_message(&mut both).await.payload.as_ref(), b"after");
        assert_eq!(next_message(&mut keep).await.payload.as_ref(), b"after");
        assert!(lose.try_recv().is_none());

        // Forgotten: subscribing again asks the server (refused now, then
        // accepted once the permission is back).
        let e = lose.subscribe(["lose"]).await.unwrap_err();
        assert!(matches!(&e, Error::Server(_)), "{e:?}");
        admin
            .send_cmd(cmd("ACL").arg("SETUSER").arg("alice").arg("&lose"))
            .await
            .unwrap();
        lose.subscribe(["lose"]).await.unwrap();
        assert_eq!(publish("lose", "again").await, Value::Integer(1));
        assert_eq!(next_message(&mut lose).await.payload.as_ref(), b"again");
    })
    .await;
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<PubSub>();
    check::<Subscription>();
}

/// Issue 7, acceptance 2: a server-side `CLIENT KILL` of the subscriber's
/// connection. The stream reports the gap (`Disconnected` after the last
/// message of the dead connection, `Reconnected` before the first of the
/// new one), resubscribes on its own (no command is sent), and messages
/// flow again; on each side of the gap every message arrives once, in
/// order. The gap is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_reports_the_gap_and_resubscribes() {
    bounded(60, async {
        let server = RedisServer::start();
        let pubsub = PubSub::new(Connector::new(), server.endpoint());
        let mut sub = pubsub.subscribe(["news"]).await.unwrap();
        sub.psubscribe(["alerts.*"]).await.unwrap();
        let publisher = Publisher::start(server.endpoint(), &["news", "alerts.eu"]).await;
        let mut log = Log::default();
        log.until(&mut sub, "first messages", |l| {
            l.count("news") >= 50 && l.count("alerts.eu") >= 50
        })
        .await;

        // The subscriber's connection, as the server lists it. Asked on a
        // connection of our own, not through redis-cli: a blocking call
        // here would stall the publisher (and hide the gap).
        let admin = Connector::new().connect(server.endpoint()).await.unwrap();
        let list = admin.send_cmd(cmd("CLIENT").arg("LIST")).await.unwrap();
        let list = String::from_utf8_lossy(list.as_bytes().expect("text")).into_owned();
        let id = list
            .lines()
            .find(|l| l.contains(" sub=1 ") && l.contains(" psub=1 "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|f| f.strip_prefix("id="))
            .unwrap_or_else(|| panic!("no subscriber in {list}"))
            .to_string();
        let killed_at = tokio::time::Instant::now();
        let killed = admin
            .send_cmd(cmd("CLIENT").arg("KILL").arg("ID").arg(id.as_str()))
            .await
            .unwrap();
        assert_eq!(killed, Value::Integer(1));

        log.until(&mut sub, "the gap reported", |l| {
            l.events
                .iter()
                .any(|e| matches!(e, Event::Reconnected { .. }))
        })
        .await;
        let resubscribed_in = killed_at.elapsed();
        let mark = publisher.sent() + 100;
        log.until(&mut sub, "messages after the reconnect", |l| {
            l.reached("news", mark) && l.reached("alerts.eu", mark)
        })
        .await;
        let published = publisher.finish().await;

        assert!(
            matches!(
                log.events.as_slice(),
                [Event::Disconnected, Event::Reconnected { .. }]
            ),
            "{:?}",
            log.events
        );
        let Event::Reconnected { downtime } = log.events[1] else {
            unreachable!()
        };
        assert!(
            resubscribed_in < Duration::from_secs(2),
            "resubscribed {resubscribed_in:?} after the kill"
        );
        for ch in ["news", "alerts.eu"] {
            let (gaps, disorder) = holes(&log.seqs[ch]);
            assert_eq!(disorder, 0, "{ch}: duplicated or out of order");
            assert!(gaps.len() <= 1, "{ch}: more than one gap: {gaps:?}");
            let missed: u64 = gaps.iter().map(|(a, b)| b - a - 1).sum();
            println!(
                "{ch}: {} received of {published} published; gap {gaps:?} = {missed} messages \
                 missed; downtime {downtime:?}, resubscribed {resubscribed_in:?} after the kill",
                log.seqs[ch].len()
            );
        }
        // One subscriber again, with both subscriptions.
        assert_eq!(numsub(&server, "news"), "1");
        assert_eq!(server.cli(&["PUBSUB", "NUMPAT"]), "1");
    })
    .await;
}

/// Issue 7, acceptance 3 (the server away for a while): every connection
/// of the subscriber is closed and new ones are refused for 1.5 s. The
/// stream reports the loss at once, retries with backoff (a handful of
/// dials, not a loop), and resumes once connections are accepted again.
#[cfg(feature = "sim")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reconnects_back_off_and_resume() {
    use counting::Counting;
    use redis_layers::sim::Target;
    use std::sync::atomic::AtomicUsize;
    use support::sim::SimStandalone;

    bounded(60, async {
        let env = SimStandalone::start().await;
        let addr = env.sim.endpoint();
        let dials = Arc::new(AtomicUsize::new(0));
        let maker = Counting {
            inner: Connector::new(),
            dials: dials.clone(),
        };
        let handoff = Handoff::new(maker, env.endpoint());
        let pubsub = PubSub::from_handoff(&handoff).unwrap();
        let mut sub = pubsub.subscribe(["news"]).await.unwrap();
        let publisher = Publisher::start(env.server.endpoint(), &["news"]).await;
        let mut log = Log::default();
        log.until(&mut sub, "first messages", |l| l.count("news") >= 20)
            .await;
        assert_eq!(dials.load(Ordering::SeqCst), 1);

        env.sim.refuse_connections(addr, true);
        assert_eq!(env.sim.close(Target::Endpoint(addr)), 1);
        log.until(&mut sub, "the loss reported", |l| {
            l.events.contains(&Event::Disconnected)
        })
        .await;
        let refused_for = Duration::from_millis(1500);
        // Nothing to wait for: this is the outage.
        log.during(&mut sub, tokio::time::sleep(refused_for)).await;
        let during = dials.load(Ordering::SeqCst) - 1;
        env.sim.refuse_connections(addr, false);
        let reopened = tokio::time::Instant::now();
        log.until(&mut sub, "reconnected", |l| {
            l.events
                .iter()
                .any(|e| matches!(e, Event::Reconnected { .. }))
        })
        .await;
        let resumed_in = reopened.elapsed();
        let mark = publisher.sent() + 50;
        log.until(&mut sub, "messages after the outage", |l| {
            l.reached("news", mark)
        })
        .await;
        publisher.finish().await;
        println!(
            "{during} dials in {refused_for:?} of refusals; resumed {resumed_in:?} after \
             connections were accepted again; events {:?}",
            log.events
        );
        // 50 ms doubling to 2 s: about 5 dials in 1.5 s; a loop would make
        // hundreds.
        assert!((2..=12).contains(&during), "{during} dials while refused");
        assert!(resumed_in < Duration::from_millis(2500), "{resumed_in:?}");
        let (gaps, disorder) = holes(&log.seqs["news"]);
        assert_eq!(disorder, 0);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(matches!(
            log.events.as_slice(),
            [Event::Disconnected, Event::Reconnected { downtime }] if *downtime >= refused_for
        ));
        // Still one subscription: the reconnect did not subscribe twice.
        assert_eq!(numsub(&env.server, "news"), "1");
    })
    .await;
}

/// A flapping server: each reconnect is accepted, its subscription
/// restored, and then dropped at once. The backoff is not reset by those
/// short-lived restores, so it grows (a handful of dials in 2 s, where
/// resetting it on every restore redials in a loop); once the server
/// behaves, the subscription resumes. Each flap is reported as a
/// `Disconnected`, `Reconnected` pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_server_sees_the_backoff_grow() {
    use support::faults::FlapProxy;

    bounded(60, async {
        let server = RedisServer::start();
        let proxy = FlapProxy::start(([127, 0, 0, 1], server.port()).into()).await;
        let pubsub = PubSub::new(Connector::new(), proxy.endpoint());
        let mut sub = pubsub.subscribe(["news"]).await.unwrap();
        let publisher = Publisher::start(server.endpoint(), &["news"]).await;
        let mut log = Log::default();
        log.until(&mut sub, "first messages", |l| l.count("news") >= 20)
            .await;
        assert_eq!(proxy.accepted(), 1);

        proxy.set_flapping(true);
        proxy.close_all();
        log.until(&mut sub, "the loss reported", |l| {
            l.events.contains(&Event::Disconnected)
        })
        .await;
        let window = Duration::from_secs(2);
        // Nothing to wait for: this is the flapping.
        log.during(&mut sub, tokio::time::sleep(window)).await;
        let during = proxy.accepted() - 1;
        proxy.set_flapping(false);
        let mark = publisher.sent() + 50;
        log.until(&mut sub, "messages once the server behaves", |l| {
            l.reached("news", mark)
        })
        .await;
        publisher.finish().await;
        let flaps = log
            .events
            .iter()
            .filter(|e| matches!(e, Event::Reconnected { .. }))
            .count();
        println!("{during} dials in {window:?} of flapping; {flaps} restores reported");
        // 50 ms doubling to 2 s, jittered down to half: at most 7 dials in
        // 2 s; a backoff reset on every restore makes hundreds.
        assert!((3..=8).contains(&during), "{during} dials while flapping");
        // The gap events pair up, the last one before the resumed messages.
        assert!(flaps >= 2, "{:?}", log.events);
        for pair in log.events.chunks(2) {
            assert!(
                matches!(pair, [Event::Disconnected, Event::Reconnected { .. }]),
                "{:?}",
                log.events
            );
        }
        let (_, disorder) = holes(&log.seqs["news"]);
        assert_eq!(disorder, 0);
        assert_eq!(numsub(&server, "news"), "1");
    })
    .await;
}

/// Issue 7, acceptance 1: messages on a channel and on a pattern keep
/// flowing across a `MOVING` with none lost: the handoff subscribes the
/// new connection before it closes the old one. No gap is reported.
#[cfg(feature = "sim")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_across_a_moving_with_none_lost() {
    use redis_layers::maint::{MaintenanceConfig, Mode};
    use redis_layers::sim::MovingPlan;
    use support::sim::SimStandalone;

    bounded(60, async {
        let env = SimStandalone::start().await;
        let config = MaintenanceConfig::default().mode(Mode::Enabled);
        let pubsub = PubSub::with_config(Connector::new(), env.endpoint(), &config).unwrap();
        let mut sub = pubsub.subscribe(["news"]).await.unwrap();
        sub.psubscribe(["alerts.*"]).await.unwrap();
        let publisher = Publisher::start(env.server.endpoint(), &["news", "alerts.eu"]).await;
        let mut log = Log::default();
        log.until(&mut sub, "first messages", |l| {
            l.count("news") >= 20 && l.count("alerts.eu") >= 20
        })
        .await;
        let moving = env.sim.moving(MovingPlan::new(Duration::from_secs(1)));
        let moved = within(STEP, "MOVING", log.during(&mut sub, moving))
            .await
            .unwrap();
        assert_eq!(moved.closed, 0, "the old connection was left in time");
        // Published after the old endpoint closed: only the new connection
        // can deliver these.
        let mark = publisher.sent() + 200;
        log.until(&mut sub, "messages after the MOVING", |l| {
            l.reached("news", mark) && l.reached("alerts.eu", mark)
        })
        .await;
        let published = publisher.finish().await;
        assert!(log.events.is_empty(), "{:?}", log.events);
        for ch in ["news", "alerts.eu"] {
            let mut seen = log.seqs[ch].clone();
            seen.sort_unstable();
            let total = seen.len();
            seen.dedup();
            let dups = total - seen.len();
            let (gaps, _) = holes(&seen);
            println!(
                "{ch}: {total} received of {published} published across the MOVING, \
                 {dups} duplicates, gaps {gaps:?}"
            );
            assert!(gaps.is_empty(), "{ch}: lost messages {gaps:?}");
            assert_eq!(seen[0], 0, "{ch}: the first messages");
            assert!(dups <= 20, "{ch}: {dups} duplicates");
        }
        let on_new = env
            .sim
            .clients()
            .iter()
            .filter(|c| c.endpoint == moved.to)
            .count();
        assert_eq!(on_new, 1);
        within(STEP, "a subscribe after the move", sub.subscribe(["late"]))
            .await
            .expect("subscribe on the new connection");
    })
    .await;
}

/// Unsubscribe stops delivery at once; the server is unsubscribed only
/// when no subscription wants the channel; dropping a subscription
/// unsubscribes in the background; an empty list means "all".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_and_drop() {
    bounded(30, async {
        let server = RedisServer::start();
        let publisher = Connector::new().connect(server.endpoint()).await.unwrap();
        let publish = |ch: &'static str, msg: &'static str| {
            let p = publisher.clone();
            async move {
                p.send_cmd(cmd("PUBLISH").arg(ch).arg(msg)).await.unwrap();
            }
        };
        let pubsub = PubSub::new(Connector::new(), server.endpoint());
        let mut a = pubsub.subscribe(["news", "other"]).await.unwrap();
        let mut b = pubsub.subscribe(["news"]).await.unwrap();
        assert_eq!(numsub(&server, "news"), "1", "one server subscription");

        publish("news", "1").await;
        assert_eq!(next_message(&mut a).await.payload.as_ref(), b"1");
        assert_eq!(next_message(&mut b).await.payload.as_ref(), b"1");

        a.unsubscribe(["news"]).await.unwrap();
        assert_eq!(numsub(&server, "news"), "1", "b still wants it");
        publish("news", "2").await;
        publish("other", "3").await;
        // In order on one connection: "2" would have come before "3".
        let m = next_message(&mut a).await;
        assert_eq!(
            (m.channel.as_ref(), m.payload.as_ref()),
            (&b"other"[..], &b"3"[..])
        );
        assert_eq!(next_message(&mut b).await.payload.as_ref(), b"2");

        drop(b);
        eventually("news unsubscribed after the drop", || {
            numsub(&server, "news") == "0"
        })
        .await;

        a.psubscribe(["p.*"]).await.unwrap();
        a.unsubscribe(Vec::<Bytes>::new()).await.unwrap();
        assert_eq!(numsub(&server, "other"), "0");
        assert_eq!(a.channels().count(), 0);
        assert_eq!(a.patterns().count(), 1);
        publish("other", "4").await;
        publish("p.x", "5").await;
        let m = next_message(&mut a).await;
        assert_eq!(m.kind, Kind::Pattern);
        assert_eq!(m.pattern.as_deref(), Some(&b"p.*"[..]));
        assert_eq!(m.payload.as_ref(), b"5");
        drop(a);
        eventually("pattern unsubscribed after the drop", || {
            server.cli(&["PUBSUB", "NUMPAT"]) == "0"
        })
        .await;
    })
    .await;
}

/// Many subscriptions on one connection: each gets its own channels and
/// the shared one; the server holds one subscription per channel. Also a
/// sharded channel and the stream interface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_share_one_connection() {
    bounded(30, async {
        let server = RedisServer::start();
        let publisher = Connector::new().connect(server.endpoint()).await.unwrap();
        let pubsub = PubSub::new(Connector::new(), server.endpoint());
        let mut subs = vec![];
        for i in 0..50 {
            let own = format!("own.{i}");
            subs.push(pubsub.subscribe(["shared".to_string(), own]).await.unwrap());
        }
        assert_eq!(numsub(&server, "shared"), "1");
        assert_eq!(
            server.cli(&["PUBSUB", "NUMSUB", "own.7"]).lines().nth(1),
            Some("1")
        );
        let clients = server.cli(&["CLIENT", "LIST"]).lines().count();
        assert_eq!(
            clients, 3,
            "redis-cli, the publisher and one subscriber connection"
        );
        publisher
            .send_cmd(cmd("PUBLISH").arg("shared").arg("all"))
            .await
            .unwrap();
        for i in 0..50 {
            publisher
                .send_cmd(cmd("PUBLISH").arg(format!("own.{i}")).arg(i))
                .await
                .unwrap();
        }
        for (i, sub) in subs.iter_mut().enumerate() {
            let got = vec![next_message(sub).await, next_message(sub).await];
            assert_eq!(payloads(&got), vec![&b"all"[..], i.to_string().as_bytes()]);
        }

        let mut sharded = pubsub.ssubscribe(["shard.1"]).await.unwrap();
        publisher
            .send_cmd(cmd("SPUBLISH").arg("shard.1").arg("s"))
            .await
            .unwrap();
        let ev = within(STEP, "smessage", sharded.next()).await;
        match ev {
            Some(Event::Message(m)) => {
                assert_eq!(m.kind, Kind::Shard);
                assert_eq!(m.payload.as_ref(), b"s");
            }
            other => panic!("{other:?}"),
        }
    })
    .await;
}

/// Slow consumer: a subscription that is not read buffers its limit, then
/// drops and counts; the others, and commands on the same connection, are
/// not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_lags_alone() {
    bounded(30, async {
        let server = RedisServer::start();
        let publisher = Connector::new().connect(server.endpoint()).await.unwrap();
        // Commands and pub/sub on one connection.
        let mut handoff = Handoff::new(Connector::new(), server.endpoint());
        let pubsub = PubSub::from_handoff(&handoff).unwrap();
        assert!(matches!(
            PubSub::from_handoff(&handoff),
            Err(Error::Config(_))
        ));
        let mut slow = pubsub
            .clone()
            .buffer(10)
            .subscribe(["flood"])
            .await
            .unwrap();
        let mut fast = pubsub.subscribe(["flood"]).await.unwrap();
        for i in 0..100 {
            publisher
                .send_cmd(cmd("PUBLISH").arg("flood").arg(i))
                .await
                .unwrap();
        }
        for i in 0..100 {
            assert_eq!(
                next_message(&mut fast).await.payload,
                Bytes::from(i.to_string())
            );
        }
        let pong = within(STEP, "a command beside the subscriber", async {
            std::future::poll_fn(|cx| handoff.poll_ready(cx)).await?;
            handoff.call(cmd("PING").into()).await?.into_value()
        })
        .await
        .unwrap();
        assert_eq!(pong, Value::SimpleString("PONG".into()));
        for i in 0..10 {
            assert_eq!(
                next_message(&mut slow).await.payload,
                Bytes::from(i.to_string())
            );
        }
        assert_eq!(slow.try_recv(), Some(Event::Lagged { missed: 90 }));
        assert_eq!(slow.try_recv(), None);
        publisher
            .send_cmd(cmd("PUBLISH").arg("flood").arg("after"))
            .await
            .unwrap();
        assert_eq!(next_message(&mut slow).await.payload.as_ref(), b"after");
    })
    .await;
}

/// RESP2 is not supported: the subscribe fails with a clear error and
/// nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_is_refused() {
    bounded(30, async {
        let server = RedisServer::start();
        let pubsub = PubSub::new(
            Connector::new().protocol(Protocol::Resp2),
            server.endpoint(),
        );
        let r = pubsub.subscribe(["news"]).await;
        assert!(matches!(r, Err(Error::Usage(_))), "{r:?}");
        assert_eq!(numsub(&server, "news"), "0");
    })
    .await;
}

/// A handoff that fails for good (the target refuses connections): just
/// before the deadline a new connection to the configured address takes
/// the subscriptions over, and the old one keeps them until then, so no
/// message is lost and no gap is reported.
#[cfg(feature = "sim")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handoff_falls_back_with_none_lost() {
    use redis_layers::maint::{MaintenanceConfig, Mode};
    use redis_layers::sim::MovingPlan;
    use support::sim::SimStandalone;

    bounded(60, async {
        let env = SimStandalone::start().await;
        let config = MaintenanceConfig::default()
            .mode(Mode::Enabled)
            .max_handoff_retries(2);
        let pubsub = PubSub::with_config(Connector::new(), env.endpoint(), &config).unwrap();
        let mut sub = pubsub.subscribe(["news"]).await.unwrap();
        let publisher = Publisher::start(env.server.endpoint(), &["news"]).await;
        let mut log = Log::default();
        log.until(&mut sub, "first messages", |l| l.count("news") >= 20)
            .await;
        let target = env.sim.open_endpoint().await.unwrap();
        env.sim.refuse_connections(target, true);
        let mut m = MovingPlan::new(Duration::from_secs(2));
        m.to = Some(target);
        m.stay_open = true;
        let handle = env.sim.start_moving(m).unwrap();
        let moved = within(
            STEP,
            "MOVING deadline",
            log.during(&mut sub, handle.finished()),
        )
        .await
        .unwrap();
        assert_eq!(moved.closed, 0, "the old connection was left in time");
        let mark = publisher.sent() + 200;
        log.until(&mut sub, "messages after the deadline", |l| {
            l.reached("news", mark)
        })
        .await;
        let published = publisher.finish().await;
        assert!(log.events.is_empty(), "{:?}", log.events);
        let mut seen = log.seqs["news"].clone();
        seen.sort_unstable();
        let total = seen.len();
        seen.dedup();
        let (gaps, _) = holes(&seen);
        println!(
            "news: {total} received of {published} published across a failed handoff, {} \
             duplicates, gaps {gaps:?}",
            total - seen.len()
        );
        assert!(gaps.is_empty(), "lost messages {gaps:?}");
        assert_eq!(seen[0], 0, "the first messages");
        assert_eq!(numsub(&env.server, "news"), "1");
    })
    .await;
}

/// Messages the connection's bounded push channel drops (the `PubSub`
/// fell behind a burst) reach every subscription as `Lagged`, where they
/// were lost: every message is either delivered or counted.
#[tokio::test]
async fn frames_dropped_by_the_push_channel_are_reported_as_lagged() {
    use support::hostile::{push, HostileServer};
    bounded(20, async {
        let server = HostileServer::scripted(|r| {
            (r.name() == "SUBSCRIBE").then(|| push(&["subscribe", "news", ":1"]))
        });
        let pubsub = PubSub::new(Connector::new().push_capacity(2), server.endpoint());
        let mut sub = within(STEP, "subscribe", pubsub.subscribe(["news"]))
            .await
            .expect("subscribe");
        const BURST: u64 = 50;
        let burst: Vec<u8> = (0..BURST)
            .flat_map(|i| push(&["message", "news", &i.to_string()]))
            .collect();
        server.inject(&burst);
        // A gap is reported before the next message that gets through:
        // once the burst is drained, one more marks the end.
        let (mut delivered, mut missed, mut marked) = (0, 0, false);
        loop {
            let ev = match tokio::time::timeout(Duration::from_millis(300), sub.recv()).await {
                Ok(ev) => ev.expect("stream open"),
                Err(_) if !marked => {
                    marked = true;
                    server.inject(&push(&["message", "news", "end"]));
                    continue;
                }
                Err(_) => panic!("the end marker did not arrive"),
            };
            match ev {
                Event::Message(m) if &m.payload[..] == b"end" => break,
                Event::Message(_) => delivered += 1,
                Event::Lagged { missed: n } => missed += n,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(missed > 0, "nothing dropped with a capacity of 2");
        assert_eq!(delivered + missed, BURST);
    })
    .await
}

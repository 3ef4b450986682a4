//! The background side of [`Handoff`](super::Handoff): connects, watches
//! connections and their endpoints' events, and runs handoff jobs on a
//! bounded worker set with a bounded queue.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::policy::{HandoffPolicy, Moving};
use super::pool::{Entry, Pool, Restore, Slot};
use super::{lock, MakeConnection, Shared};
use crate::error::{Error, Result};
use crate::maint::{
    BreakerState, MaintEvent, Maintained, MaintenanceState, MovingEndpoint, Notification,
};
use crate::pubsub::Kind;
use crate::transport::{Endpoint, Lifecycle, PushItem};

const SUPERSEDED: &str = "superseded by a newer MOVING";

/// One connection to move.
struct Job {
    slot: Arc<Slot>,
    epoch: u64,
    seq: i64,
    time: Duration,
    announced: Option<MovingEndpoint>,
    from: Endpoint,
    target: Endpoint,
    start: Instant,
    deadline: Instant,
    /// The state of the endpoint left, which counts the handoff.
    from_state: Option<Arc<MaintenanceState>>,
}

/// Gives back a queue place when a job ends, however it ends.
struct Queued<M: MakeConnection, P>(Arc<Shared<M, P>>);

impl<M: MakeConnection, P> Drop for Queued<M, P> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, SeqCst);
    }
}

impl<M: MakeConnection, P: HandoffPolicy> Shared<M, P> {
    /// Connects pool entry `index` (empty): to where the pool goes now,
    /// restoring the subscriptions its last connection lost, if any.
    pub(super) fn start_connect(self: &Arc<Self>, pool: &mut Pool<M::Connection>, index: usize) {
        pool.entries[index] = Entry::Connecting;
        let endpoint = pool.current.clone();
        let restore = pool.restore[index]
            .as_ref()
            .map(|r| r.cmds.clone())
            .unwrap_or_default();
        let others = pool
            .entries
            .iter()
            .any(|e| matches!(e, Entry::Ready { .. }));
        let dial = self.dial(endpoint.clone(), others);
        let weak = Arc::downgrade(self);
        let started = Instant::now();
        let limit = self.settings.handoff_timeout;
        tokio::spawn(async move {
            let r = async {
                let mut conn = dial.await?;
                let mut refused = Vec::new();
                if !restore.is_empty() {
                    // Subscribed before it takes commands, like a handoff's
                    // new connection; bounded, so a server that does not
                    // answer does not stall the retries.
                    let sent = tokio::time::timeout(limit, send_all(&mut conn, &restore)).await;
                    match sent.unwrap_or_else(|_| Err(Error::Timeout)) {
                        Ok(r) => refused = r,
                        Err(e) => {
                            conn.close();
                            return Err(e);
                        }
                    }
                }
                Ok((conn, refused))
            }
            .await;
            match weak.upgrade() {
                Some(shared) => shared.connected(index, endpoint, started, r),
                None => {
                    if let Ok((c, _)) = r {
                        c.close();
                    }
                }
            }
        });
    }

    fn connected(
        self: &Arc<Self>,
        index: usize,
        endpoint: Endpoint,
        started: Instant,
        r: Result<(M::Connection, Vec<PushItem>)>,
    ) {
        let mut pool = lock(&self.pool);
        match r {
            Ok((conn, refused)) => {
                let slot = Slot::new(self.next_id.fetch_add(1, SeqCst), endpoint);
                tracing::debug!(target: "redis_layers::handoff", event = "handoff.connected", endpoint = %slot.endpoint, "connected");
                if let Some(r) = pool.restore[index].take() {
                    self.restored.send_modify(|n| *n += 1);
                    // Noted before the new connection's first push frame
                    // (its forwarding starts below). A connection left
                    // after a failed handoff that is still open kept the
                    // subscriptions until now: nothing was lost.
                    if !r.noted && r.from.is_closed() {
                        let _ = self.push_tx.send(PushItem::SubscriptionsLost);
                    }
                    // Before the restore note: a subscriber of only what
                    // was refused is told that, not that it is back.
                    for item in refused {
                        let _ = self.push_tx.send(item);
                    }
                    if r.noted || r.from.is_closed() {
                        let _ = self.push_tx.send(PushItem::SubscriptionsRestored);
                    }
                    tracing::info!(target: "redis_layers::handoff", event = "handoff.resubscribed", endpoint = %slot.endpoint, commands = r.cmds.len(), "subscriptions restored on a new connection");
                }
                pool.entries[index] = Entry::Ready {
                    slot: slot.clone(),
                    conn: conn.clone(),
                };
                self.gen.fetch_add(1, SeqCst);
                pool.wake_all();
                drop(pool);
                self.watch(&slot, &conn);
                self.catch_up(&slot, &conn, started);
                self.catch_up_dns(&slot, &conn);
            }
            Err(e) => {
                tracing::debug!(target: "redis_layers::handoff", event = "handoff.connect_failed", %endpoint, error = %e, "connect failed");
                pool.entries[index] = Entry::Empty;
                // A handoff target that stops answering is not retried
                // forever: the configured address is the way back.
                pool.current = self.endpoint.clone();
                let g = self.gen.fetch_add(1, SeqCst) + 1;
                pool.error = Some((g, e));
                pool.wake_all();
                // Subscriptions to restore: nobody else may send a command
                // that reconnects (a pure subscriber sends none), so retry
                // by ourselves, with backoff.
                if pool.restore[index].is_some() {
                    self.reconnect(&mut pool, index);
                }
            }
        }
    }

    /// Reconnects entry `index` (empty) for the subscriptions it waits
    /// for: at once after a connection that stayed up, else after a
    /// growing wait, so a server that is down, or that takes each
    /// connection and drops it, is not dialled in a loop.
    fn reconnect(self: &Arc<Self>, pool: &mut Pool<M::Connection>, index: usize) {
        let n = pool.attempts[index];
        pool.attempts[index] = n.saturating_add(1);
        if n == 0 {
            self.start_connect(pool, index);
        } else {
            self.reconnect_after(index, reconnect_backoff(n));
        }
    }

    /// Reconnects entry `index` after `wait`, unless something else did.
    fn reconnect_after(self: &Arc<Self>, index: usize, wait: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(shared) = weak.upgrade() else { return };
            let mut pool = lock(&shared.pool);
            if matches!(pool.entries[index], Entry::Empty) {
                shared.start_connect(&mut pool, index);
            }
        });
    }

    /// Watches a new connection: forwards its push frames, then, when they
    /// end (the connection closed), forgets it; and watches its endpoint's
    /// events.
    fn watch(self: &Arc<Self>, slot: &Arc<Slot>, conn: &M::Connection) {
        let weak = Arc::downgrade(self);
        let closed = conn.closed();
        let id = slot.id;
        let pushes = conn.take_pushes();
        self.tls.store(conn.is_tls(), SeqCst);
        let tx = self.push_tx.clone();
        tokio::spawn(async move {
            // The push channel ends when the connection closes: `lost`
            // then runs after its last frame was forwarded, so a loss is
            // noted in order.
            if let Some(mut rx) = pushes {
                while let Some(v) = rx.recv_item().await {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
            drop(tx);
            closed.await;
            if let Some(shared) = weak.upgrade() {
                shared.lost(id, &Error::Closed);
            }
        });
        self.watch_state(conn, &slot.endpoint);
    }

    /// Watches the events of the endpoint `conn` is on (once per endpoint).
    pub(super) fn watch_state(self: &Arc<Self>, conn: &M::Connection, endpoint: &Endpoint) {
        let state = conn.maintenance().clone();
        let mut watched = lock(&self.watched);
        if watched.iter().any(|(s, _)| Arc::ptr_eq(s, &state)) {
            return;
        }
        let stop = CancellationToken::new();
        watched.push((state.clone(), stop.clone()));
        drop(watched);
        // Subscribe before looking for a MOVING already under way, so none
        // falls between the two.
        let mut events = state.subscribe();
        let active = state.active_moving();
        let endpoint = endpoint.clone();
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            if let (Some((n, deadline)), Some(shared)) = (active, weak.upgrade()) {
                shared.on_moving(&endpoint, &n, deadline);
            }
            loop {
                let ev = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    ev = events.recv() => ev,
                };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                };
                let Some(shared) = weak.upgrade() else { break };
                if let MaintEvent::Notification {
                    notification: n @ Notification::Moving { time, .. },
                    vetoed: false,
                } = &ev
                {
                    shared.on_moving(&endpoint, n, crate::time::after(Instant::now(), *time));
                }
                let _ = shared.events.send(ev);
            }
        });
    }

    /// Stops watching endpoint states no ready connection uses any more.
    fn prune_watches(&self) {
        let pool = lock(&self.pool);
        let idle = lock(&self.idle);
        let mut watched = lock(&self.watched);
        watched.retain(|(state, stop)| {
            let used = pool.entries.iter().any(|e| {
                matches!(e, Entry::Ready { conn, .. } if Arc::ptr_eq(conn.maintenance(), state))
            }) || idle.iter().any(|(_, c)| Arc::ptr_eq(c.maintenance(), state));
            if !used {
                stop.cancel();
            }
            used
        });
    }

    /// A ready connection failed or closed: its entry is empty again, and
    /// the next caller reconnects; at once when it had subscriptions,
    /// which the new connection restores.
    pub(super) fn lost(self: &Arc<Self>, slot_id: u64, why: &Error) {
        let mut pool = lock(&self.pool);
        if let Some(i) = pool.find(slot_id) {
            if let Entry::Ready { slot, conn } =
                std::mem::replace(&mut pool.entries[i], Entry::Empty)
            {
                tracing::debug!(target: "redis_layers::handoff", event = "handoff.connection_lost", endpoint = %slot.endpoint, error = %why, "connection lost");
                conn.close();
                settle(&mut pool, i, &slot);
                let cmds = conn.resubscribe_commands();
                if !cmds.is_empty() {
                    tracing::info!(target: "redis_layers::handoff", event = "handoff.subscriptions_lost", endpoint = %slot.endpoint, "connection with subscriptions lost; reconnecting");
                    let _ = self.push_tx.send(PushItem::SubscriptionsLost);
                    pool.restore[i] = Some(Restore {
                        cmds,
                        from: conn,
                        from_slot: slot_id,
                        noted: true,
                    });
                    self.reconnect(&mut pool, i);
                }
            }
            self.gen.fetch_add(1, SeqCst);
            pool.wake_all();
        } else {
            // Left after a failed handoff, and closed before the fallback
            // connection restored its subscriptions: that is a loss too.
            let waiting = pool
                .restore
                .iter_mut()
                .flatten()
                .find(|r| r.from_slot == slot_id && !r.noted);
            if let Some(r) = waiting {
                r.noted = true;
                let _ = self.push_tx.send(PushItem::SubscriptionsLost);
            }
        }
    }

    /// A `MOVING` for the connections on `from`.
    fn on_moving(self: &Arc<Self>, from: &Endpoint, n: &Notification, deadline: Instant) {
        let Notification::Moving { seq, endpoint, .. } = n else {
            return;
        };
        if !lock(&self.handled).first_time(from.clone(), *seq, Instant::now().into_std()) {
            return;
        }
        // Idle dedicated connections on the old endpoint: closing loses
        // nothing; the next lease dials where the pool goes.
        lock(&self.idle).retain(|(slot, conn)| {
            let stays = slot.endpoint != *from;
            if !stays {
                conn.close();
            }
            stays
        });
        if let Some(e) = endpoint.as_ref().filter(|e| !self.trusted(e, true)) {
            let _ = self.events.send(MaintEvent::TargetRefused {
                source: crate::trust::Source::Moving,
                target: Endpoint::tcp(e.host.clone(), e.port),
                from: from.clone(),
            });
        }
        let Some(target) = self.target(from, n) else {
            return;
        };
        let (slots, old): (Vec<Arc<Slot>>, _) = {
            let mut pool = lock(&self.pool);
            // New connections go where the pool goes (a refused target is
            // a null endpoint: the pool stays).
            let followed = endpoint.as_ref().is_some_and(|e| self.trusted(e, false));
            if followed && pool.current == *from {
                pool.current = target.clone();
            }
            let mut old = None;
            let slots = pool
                .entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Ready { slot, conn } if slot.endpoint == *from => {
                        old = old.or_else(|| conn.peer_addr());
                        Some(slot.clone())
                    }
                    _ => None,
                })
                .collect();
            (slots, old)
        };
        if let (Some(old), Notification::Moving { time, .. }) = (old, n) {
            if dns_name(&target).is_some() {
                *lock(&self.dns_watch) = Some(DnsWatch {
                    target: target.clone(),
                    old,
                    stop: self.dns_stop(*time, deadline, Instant::now()),
                    moving: n.clone(),
                    deadline,
                });
            }
        }
        self.schedule(from, n, deadline, target, slots);
    }

    /// The policy's target for a `MOVING` (asked once per `MOVING` and
    /// connection set), or `None` to ignore it.
    fn target(&self, from: &Endpoint, n: &Notification) -> Option<Endpoint> {
        let m = self.moving(from, n)?;
        let target = self.policy.target(&m);
        if target.is_none() {
            tracing::info!(target: "redis_layers::handoff", event = "handoff.ignored", seq = m.seq, %from, "policy ignores MOVING");
        }
        target.map(|t| self.verified_as_configured(t))
    }

    /// The policy's view of `n`, a `MOVING` for the connections on `from`;
    /// an announced endpoint the target policy refuses is none.
    fn moving<'a>(&'a self, from: &'a Endpoint, n: &'a Notification) -> Option<Moving<'a>> {
        match n {
            Notification::Moving {
                seq,
                time,
                endpoint,
            } => Some(Moving::new(
                *seq,
                *time,
                endpoint.as_ref().filter(|e| self.trusted(e, false)),
                from,
                &self.endpoint,
            )),
            _ => None,
        }
    }

    /// Whether the target policy follows `announced`; `report` logs and
    /// counts a refusal (once per `MOVING`).
    fn trusted(&self, announced: &MovingEndpoint, report: bool) -> bool {
        let target = Endpoint::tcp(announced.host.clone(), announced.port);
        let t = crate::trust::Target::moving(&target, &self.endpoint, self.tls.load(SeqCst));
        if report {
            self.settings.trust.check(&t)
        } else {
            self.settings.trust.0.allows(&t)
        }
    }

    /// A target on another host is verified over TLS against the configured
    /// server's name, never its own: a host with merely some certificate of
    /// its own cannot take the connection (and its credentials).
    fn verified_as_configured(&self, target: Endpoint) -> Endpoint {
        if !self.tls.load(SeqCst) {
            return target;
        }
        match (&target, self.endpoint.tls_name()) {
            (
                Endpoint::Tcp {
                    host,
                    tls_name: None,
                    ..
                },
                Some(name),
            ) if !host.eq_ignore_ascii_case(name) => {
                let name = name.to_owned();
                target.verified_as(name)
            }
            _ => target,
        }
    }

    /// A connection whose dial started before a `MOVING` reached its
    /// endpoint, and that joined the pool after the `MOVING` was handled, was
    /// told too (the server tells every connection) but missed the event:
    /// hand it off now. A connection dialled after the `MOVING` was made
    /// there on purpose (a null-endpoint reconnect) and stays.
    fn catch_up(self: &Arc<Self>, slot: &Arc<Slot>, conn: &M::Connection, dial_started: Instant) {
        let Some((n, deadline)) = conn.maintenance().active_moving() else {
            return;
        };
        let received = n.time().and_then(|t| deadline.checked_sub(t));
        if received.is_some_and(|r| dial_started < r) {
            if let Some(target) = self.target(&slot.endpoint, &n) {
                self.schedule(&slot.endpoint, &n, deadline, target, vec![slot.clone()]);
            }
        }
    }

    /// Queues a handoff job for each of `slots` (on `from`).
    fn schedule(
        self: &Arc<Self>,
        from: &Endpoint,
        n: &Notification,
        deadline: Instant,
        target: Endpoint,
        slots: Vec<Arc<Slot>>,
    ) {
        let Some(m) = self.moving(from, n) else {
            return;
        };
        let now = Instant::now();
        let slots: Vec<_> = slots
            .into_iter()
            .filter(|s| s.claim_moving(m.seq))
            .collect();
        let count = slots.len();
        for (k, slot) in slots.into_iter().enumerate() {
            // Not under the pool's lock here.
            let from_state = self.conn_of(&slot).map(|c| c.maintenance().clone());
            let job = Job {
                epoch: slot.handoff_epoch.fetch_add(1, SeqCst) + 1,
                slot,
                seq: m.seq,
                time: m.time,
                announced: m.endpoint.cloned(),
                from: from.clone(),
                target: target.clone(),
                start: crate::time::after(now, self.policy.delay(&m, k, count)),
                deadline,
                from_state,
            };
            if self.queued.fetch_add(1, SeqCst) >= self.settings.queue_size {
                self.queued.fetch_sub(1, SeqCst);
                self.failed(&job, "handoff queue full");
                let shared = self.clone();
                tokio::spawn(async move { shared.fall_back(&job).await });
                continue;
            }
            let queued = Queued(self.clone());
            tokio::spawn(async move {
                let shared = queued.0.clone();
                shared.run(job).await;
                drop(queued);
            });
        }
    }

    async fn run(self: &Arc<Self>, job: Job) {
        // A timer costs about a millisecond even when already due.
        if job.start > Instant::now() {
            tokio::time::sleep_until(job.start).await;
        }
        let Ok(_permit) = self.workers.clone().acquire_owned().await else {
            return;
        };
        let m = Moving::new(
            job.seq,
            job.time,
            job.announced.as_ref(),
            &job.from,
            &self.endpoint,
        );
        let mut attempt = 0;
        self.await_dns(&job).await;
        let reason = loop {
            if let Err(why) = self.is_current(&job) {
                self.failed(&job, why);
                return;
            }
            attempt += 1;
            if !self.breaker_allows(&job.target) {
                break format!("circuit breaker for {} is open", job.target);
            }
            self.step(
                "started",
                MaintEvent::HandoffStarted {
                    seq: job.seq,
                    from: job.from.clone(),
                    to: job.target.clone(),
                    attempt,
                },
            );
            tracing::info!(target: "redis_layers::handoff", event = "handoff.started", seq = job.seq, from = %job.from, to = %job.target, attempt, "handoff started");
            let dial_started = Instant::now();
            let dial = lock(&self.maker).make_connection(job.target.clone());
            // The new connection takes over the old one's subscriptions
            // before it takes any command.
            let restore = self
                .conn_of(&job.slot)
                .map(|c| c.resubscribe_commands())
                .unwrap_or_default();
            let dial = async {
                let mut conn = dial.await?;
                match send_all(&mut conn, &restore).await {
                    Ok(refused) => Ok((conn, refused)),
                    Err(e) => {
                        conn.close();
                        Err(e)
                    }
                }
            };
            let dial = crate::transport::dial_relaxed(self.settings.relaxed_timeout, dial);
            let r = match tokio::time::timeout(self.settings.handoff_timeout, dial).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "handoff dial took longer than {:?}",
                        self.settings.handoff_timeout
                    ),
                )
                .into()),
            };
            match r {
                Ok((conn, refused)) => {
                    let _ = self.breaker_result(&job.target, true);
                    self.install(&job, conn, dial_started, restore, refused);
                    return;
                }
                Err(e) => {
                    if self.breaker_result(&job.target, false) == Some(BreakerState::Open) {
                        break format!(
                            "dial failed ({e}); circuit breaker for {} opened",
                            job.target
                        );
                    }
                    let wait = self.policy.backoff(&m, attempt + 1);
                    if attempt >= self.settings.max_retries
                        || crate::time::after(Instant::now(), wait) >= job.deadline
                    {
                        break format!("dial failed after {attempt} attempt(s): {e}");
                    }
                    tracing::info!(target: "redis_layers::handoff", event = "handoff.retried", seq = job.seq, to = %job.target, attempt, error = %e, wait_ms = wait.as_millis() as u64, "handoff dial failed; retrying");
                    self.step(
                        "retried",
                        MaintEvent::HandoffRetried {
                            seq: job.seq,
                            to: job.target.clone(),
                            attempt,
                            error: e.to_string(),
                        },
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        };
        self.failed(&job, &reason);
        self.fall_back(&job).await;
    }

    /// Waits for DNS to follow the move before a handoff's dial: while
    /// the job's target is a host name that still leads to the address of
    /// the connection being retired, dialling would reach the node that is
    /// going away. See [`wait_for_dns`].
    async fn await_dns(&self, job: &Job) {
        let Some(old) = self.conn_of(&job.slot).and_then(|c| c.peer_addr()) else {
            return;
        };
        let stop = self.dns_stop(job.time, job.deadline, job.start);
        let resolver = self.settings.resolver.clone();
        if wait_for_dns(resolver, &job.target, old, stop, Some(job.seq)).await {
            self.dns_followed(&job.target);
        }
    }

    /// When a dial must go ahead whatever DNS says: the time left before
    /// the `MOVING` deadline is what a dial needs (a quarter of the
    /// `MOVING` time, at most the handoff timeout).
    fn dns_stop(&self, time: Duration, deadline: Instant, floor: Instant) -> Instant {
        let margin = (time / 4).min(self.settings.handoff_timeout);
        deadline.checked_sub(margin).unwrap_or(floor).max(floor)
    }

    /// `f` of the DNS watch, while one covers `endpoint` (an expired watch
    /// is dropped here: the one place that reads it).
    fn dns_watch_of<R>(&self, endpoint: &Endpoint, f: impl FnOnce(&DnsWatch) -> R) -> Option<R> {
        let mut w = lock(&self.dns_watch);
        if w.as_ref().is_some_and(|w| Instant::now() >= w.stop) {
            *w = None;
        }
        w.as_ref().filter(|w| w.target == *endpoint).map(f)
    }

    /// A pooled connection dialled at once under a DNS watch, that reached
    /// the node being retired: handed off as its `MOVING` asks, its job
    /// waiting for the record to move while the connection serves.
    fn catch_up_dns(self: &Arc<Self>, slot: &Arc<Slot>, conn: &M::Connection) {
        let watched = self.dns_watch_of(&slot.endpoint, |w| {
            (conn.peer_addr() == Some(w.old)).then(|| (w.moving.clone(), w.deadline))
        });
        let Some((n, deadline)) = watched.flatten() else {
            return;
        };
        if let Some(target) = self.target(&slot.endpoint, &n) {
            self.schedule(&slot.endpoint, &n, deadline, target, vec![slot.clone()]);
        }
    }

    /// DNS led away from the retiring node: the other dials need not ask.
    fn dns_followed(&self, target: &Endpoint) {
        let mut w = lock(&self.dns_watch);
        if w.as_ref().is_some_and(|w| w.target == *target) {
            *w = None;
        }
    }

    /// Dials `endpoint` for the pool. While a `MOVING`'s DNS watch covers
    /// it and `may_wait` (other connections serve meanwhile), first waits
    /// as a handoff does for the record to leave the node being retired.
    /// Without another connection, waiting would stall every command: it
    /// dials at once, and [`Shared::catch_up_dns`] hands the connection off
    /// once the record moves. Holds no strong reference while it waits.
    pub(super) fn dial(
        self: &Arc<Self>,
        endpoint: Endpoint,
        may_wait: bool,
    ) -> impl Future<Output = Result<M::Connection>> + Send + 'static {
        let watch = may_wait
            .then(|| self.dns_watch_of(&endpoint, |w| (w.old, w.stop)))
            .flatten();
        let dial = lock(&self.maker).make_connection(endpoint.clone());
        let resolver = self.settings.resolver.clone();
        let weak = Arc::downgrade(self);
        async move {
            if let Some((old, stop)) = watch {
                if wait_for_dns(resolver, &endpoint, old, stop, None).await {
                    if let Some(shared) = weak.upgrade() {
                        shared.dns_followed(&endpoint);
                    }
                }
            }
            dial.await
        }
    }

    /// After a failed handoff the old connection serves until just before
    /// its deadline; then new commands go to a new connection to the
    /// configured address while the old one drains, so the server's close at
    /// the deadline finds nothing in flight. (Unless a newer `MOVING` took
    /// over the connection meanwhile.)
    async fn fall_back(self: &Arc<Self>, job: &Job) {
        lock(&self.pool).current = self.endpoint.clone();
        let grace = (job.time / 4).min(Duration::from_millis(500));
        tokio::time::sleep_until(job.deadline.checked_sub(grace).unwrap_or(job.deadline)).await;
        if job.slot.handoff_epoch.load(SeqCst) != job.epoch {
            return;
        }
        let mut pool = lock(&self.pool);
        if let Some(i) = pool.find(job.slot.id) {
            if let Entry::Ready { conn, .. } = std::mem::replace(&mut pool.entries[i], Entry::Empty)
            {
                // Its subscriptions go to the new connection, made now
                // rather than by the next command; the old one keeps them
                // until the new one has them (or the deadline).
                settle(&mut pool, i, &job.slot);
                let cmds = conn.resubscribe_commands();
                let mut hold = None;
                if !cmds.is_empty() {
                    let mut restores = self.restored.subscribe();
                    pool.restore[i] = Some(Restore {
                        cmds,
                        from: conn.clone(),
                        from_slot: job.slot.id,
                        noted: false,
                    });
                    // At once, not after a backoff: the old connection keeps
                    // the subscriptions only until its deadline. Counted, so
                    // a failure waits.
                    pool.attempts[i] = pool.attempts[i].max(1);
                    self.start_connect(&mut pool, i);
                    let weak = Arc::downgrade(self);
                    hold = Some(Box::pin(async move {
                        while restores.changed().await.is_ok() {
                            match weak.upgrade() {
                                Some(s) if lock(&s.pool).restore[i].is_some() => {}
                                _ => return,
                            }
                        }
                    }) as Hold);
                }
                self.gen.fetch_add(1, SeqCst);
                drop(pool);
                self.retire(job.slot.clone(), conn, job.deadline, None, hold);
            }
        }
    }

    /// The pooled connection of `slot`, if it is still in the pool.
    fn conn_of(&self, slot: &Slot) -> Option<M::Connection> {
        let pool = lock(&self.pool);
        pool.find(slot.id).and_then(|i| match &pool.entries[i] {
            Entry::Ready { conn, .. } => Some(conn.clone()),
            _ => None,
        })
    }

    /// The job's connection is still in the pool and no newer `MOVING` took
    /// over its handoff.
    fn is_current(&self, job: &Job) -> Result<(), &'static str> {
        if job.slot.handoff_epoch.load(SeqCst) != job.epoch {
            return Err(SUPERSEDED);
        }
        match lock(&self.pool).find(job.slot.id) {
            Some(_) => Ok(()),
            None => Err("the connection closed before its handoff"),
        }
    }

    /// Puts `conn` in the place of the job's connection, and retires that.
    fn install(
        self: &Arc<Self>,
        job: &Job,
        conn: M::Connection,
        dial_started: Instant,
        restored: Vec<crate::Cmd>,
        refused: Vec<PushItem>,
    ) {
        // Relaxed before it takes a command; watched first, so that the
        // service's subscribers see the relaxation.
        self.watch_state(&conn, &job.target);
        conn.maintenance()
            .relax_for("post-handoff", self.settings.post_handoff);
        let mut pool = lock(&self.pool);
        let index = pool.find(job.slot.id);
        let (Some(i), true) = (index, job.slot.handoff_epoch.load(SeqCst) == job.epoch) else {
            drop(pool);
            conn.close();
            self.failed(
                job,
                if index.is_none() {
                    "the connection closed before its handoff"
                } else {
                    SUPERSEDED
                },
            );
            return;
        };
        let slot = Slot::new(self.next_id.fetch_add(1, SeqCst), job.target.clone());
        let old = std::mem::replace(
            &mut pool.entries[i],
            Entry::Ready {
                slot: slot.clone(),
                conn: conn.clone(),
            },
        );
        pool.current = job.target.clone();
        // After this, callers that count themselves on the old connection
        // see the new generation and go to the new one (see `pool.rs`).
        self.gen.fetch_add(1, SeqCst);
        pool.wake_all();
        drop(pool);
        // The old connection keeps what the new one was refused only until
        // it is retired: its subscribers are told now.
        for item in refused {
            let _ = self.push_tx.send(item);
        }
        self.watch(&slot, &conn);
        self.catch_up(&slot, &conn, dial_started);
        if let Entry::Ready {
            slot: old_slot,
            conn: old_conn,
        } = old
        {
            self.retire(
                old_slot,
                old_conn,
                job.deadline,
                Some((conn, restored)),
                None,
            );
        }
        self.prune_watches();
        if let Some(state) = &job.from_state {
            state.count_handoff(true);
        }
        tracing::info!(target: "redis_layers::handoff", event = "handoff.succeeded", seq = job.seq, from = %job.from, to = %job.target, "handoff succeeded");
        self.step(
            "succeeded",
            MaintEvent::HandoffSucceeded {
                seq: job.seq,
                from: job.from.clone(),
                to: job.target.clone(),
            },
        );
    }

    /// Closes a connection moved away from once its last reply is in, or at
    /// the deadline.
    /// `successor` took over the connection's subscriptions as they were
    /// at the switch; a subscription that a command still in flight on the
    /// old connection added is carried over once it is drained.
    fn retire(
        &self,
        slot: Arc<Slot>,
        conn: M::Connection,
        deadline: Instant,
        successor: Option<(M::Connection, Vec<crate::Cmd>)>,
        hold: Option<Hold>,
    ) {
        // From now on a MOVING read on it is stale.
        conn.retire();
        let push_tx = self.push_tx.clone();
        tokio::spawn(async move {
            let handed_over = successor.is_some() || hold.is_some();
            let drained = tokio::select! {
                _ = async {
                    slot.retire_and_drain().await;
                    if let Some(hold) = hold {
                        hold.await;
                    }
                } => true,
                _ = tokio::time::sleep_until(deadline) => false,
            };
            let mut conn = conn;
            let now = conn.resubscribe_commands();
            if let Some((mut new, restored)) = successor {
                if !now.is_empty() && now != restored {
                    for item in send_all(&mut new, &now).await.unwrap_or_default() {
                        let _ = push_tx.send(item);
                    }
                }
            }
            if handed_over {
                // Messages the server sent the old connection before its
                // unsubscribe confirmations are read (and forwarded) before
                // them; closing at once would drop those still unread,
                // some published before the new connection subscribed.
                let unsubscribe = unsubscribe_all(&now);
                if !unsubscribe.is_empty() {
                    let _ =
                        tokio::time::timeout_at(deadline, send_all(&mut conn, &unsubscribe)).await;
                }
            }
            conn.close();
            tracing::debug!(target: "redis_layers::handoff", event = "handoff.old_closed", endpoint = %slot.endpoint, drained, "old connection closed");
        });
    }

    fn failed(&self, job: &Job, reason: &str) {
        if let Some(state) = &job.from_state {
            state.count_handoff(false);
        }
        tracing::warn!(target: "redis_layers::handoff", event = "handoff.failed", seq = job.seq, from = %job.from, to = %job.target, reason, "handoff failed");
        self.step(
            "failed",
            MaintEvent::HandoffFailed {
                seq: job.seq,
                to: job.target.clone(),
                reason: reason.to_string(),
            },
        );
    }

    fn step(&self, result: &'static str, ev: MaintEvent) {
        #[cfg(feature = "metrics")]
        metrics::counter!(super::HANDOFF, "result" => result).increment(1);
        let _ = result;
        let _ = self.events.send(ev);
    }

    fn breaker_allows(&self, target: &Endpoint) -> bool {
        let (cfg, now) = (&self.settings.breaker, Instant::now());
        let (allowed, changed) = lock(&self.breakers).get(target, cfg, now).allow(cfg, now);
        if let Some(state) = changed {
            self.breaker_changed(target, state);
        }
        allowed
    }

    fn breaker_result(&self, target: &Endpoint, ok: bool) -> Option<BreakerState> {
        let changed = {
            let (cfg, now) = (&self.settings.breaker, Instant::now());
            let mut breakers = lock(&self.breakers);
            let b = breakers.get(target, cfg, now);
            if ok {
                b.success(cfg, now)
            } else {
                b.failure(cfg, now)
            }
        };
        if let Some(state) = changed {
            self.breaker_changed(target, state);
        }
        changed
    }

    fn breaker_changed(&self, endpoint: &Endpoint, state: BreakerState) {
        tracing::warn!(target: "redis_layers::handoff", event = "handoff.breaker", %endpoint, state = state.as_str(), "handoff circuit breaker changed");
        let _ = self.events.send(MaintEvent::Breaker {
            endpoint: endpoint.clone(),
            state,
        });
    }
}

/// How long a connection must stay up before its entry's reconnect backoff
/// starts over. A restore that succeeds does not prove the server is back:
/// one that accepts each connection and the re-subscribe, then drops it at
/// once, would otherwise be redialled without delay, in a loop. 1 s is
/// well past the backoff's first steps and short next to real uptime.
const STABLE: Duration = Duration::from_secs(1);

/// Entry `index` gives `slot`'s connection up: if it stayed up long enough,
/// the entry's next reconnect is at once again.
fn settle<C>(pool: &mut Pool<C>, index: usize, slot: &Slot) {
    if slot.since.elapsed() >= STABLE {
        pool.attempts[index] = 0;
    }
}

/// The wait before reconnect `attempt` (1 for the first retry) of an entry
/// whose subscriptions wait for a connection: 50 ms doubling up to 2 s,
/// jittered, so a server that is down is not dialled in a loop.
fn reconnect_backoff(attempt: u32) -> Duration {
    let d = Duration::from_millis(50) * (1 << attempt.saturating_sub(1).min(6));
    super::policy::jittered(d.min(Duration::from_secs(2)))
}

/// What a retired connection waits for besides its last reply.
type Hold = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The commands that end every subscription that `restore` (from
/// `resubscribe_commands`) restores: a bare unsubscribe of each kind.
fn unsubscribe_all(restore: &[crate::Cmd]) -> Vec<crate::Cmd> {
    [
        ("SUBSCRIBE", "UNSUBSCRIBE"),
        ("PSUBSCRIBE", "PUNSUBSCRIBE"),
        ("SSUBSCRIBE", "SUNSUBSCRIBE"),
    ]
    .into_iter()
    .filter(|(sub, _)| restore.iter().any(|c| c.is(sub)))
    .map(|(_, unsub)| crate::cmd(unsub))
    .collect()
}

/// Sends the subscribe commands `cmds` on `conn` one after the other; the
/// first failure ends it. The subscriptions the server refuses come back
/// as [`PushItem::Refused`] notes: the connection is fine and the rest
/// still matter, and failing would retry a refusal forever (e.g. `NOPERM`
/// after an ACL change) and keep the endpoint down. A refused command for
/// several channels is tried again one channel at a time (an ACL check
/// refuses the whole command for one channel), so that only those refused
/// are lost.
async fn send_all<C>(conn: &mut C, cmds: &[crate::Cmd]) -> Result<Vec<PushItem>>
where
    C: tower_service::Service<crate::Request, Response = crate::Response, Error = Error>,
{
    let mut refused = Vec::new();
    for c in cmds {
        let Err(e) = send_one(conn, c).await? else {
            continue;
        };
        let Some(kind) = subscribe_kind(c) else {
            tracing::warn!(target: "redis_layers::handoff", event = "handoff.resubscribe_refused", error = %e, "a command was refused on the new connection; carrying on without it");
            continue;
        };
        let channels: Vec<bytes::Bytes> = c
            .argv()
            .skip(1)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        if channels.len() == 1 {
            refused.push((kind, channels[0].clone(), e));
            continue;
        }
        for ch in channels {
            let one = crate::cmd(kind.subscribe()).arg(ch.as_ref());
            if let Err(e) = send_one(conn, &one).await? {
                refused.push((kind, ch, e));
            }
        }
    }
    Ok(refused
        .into_iter()
        .map(|(kind, channel, error)| {
            tracing::warn!(target: "redis_layers::handoff", event = "handoff.resubscribe_refused", ?kind, channel = %String::from_utf8_lossy(&channel), error = %error, "a subscription was refused on the new connection; its subscribers are told");
            PushItem::Refused {
                kind,
                channel,
                error,
            }
        })
        .collect())
}

/// Sends `c` on `conn`: `Ok(Err(_))` when the server refused it.
async fn send_one<C>(conn: &mut C, c: &crate::Cmd) -> Result<Result<(), crate::ServerError>>
where
    C: tower_service::Service<crate::Request, Response = crate::Response, Error = Error>,
{
    std::future::poll_fn(|cx| conn.poll_ready(cx)).await?;
    match conn
        .call(c.clone().into())
        .await
        .and_then(|r| r.into_value())
    {
        Ok(_) => Ok(Ok(())),
        Err(Error::Server(e)) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}

/// The kind of subscription subscribe command `c` makes.
fn subscribe_kind(c: &crate::Cmd) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| c.is(k.subscribe()))
}

/// Polls `resolver` with a backoff (100 ms doubling to 1 s) while `target`
/// (a host name; an IP literal returns at once) leads only to `old`, the
/// address of the endpoint being retired (IP and port: a move to another
/// port of the same host is no lag), until the answer changes or `stop`;
/// then the dial goes ahead whatever the answer. True if the answer leads
/// away from `old`. `seq` is the handoff's `MOVING` (none for a
/// reconnect), for the log.
async fn wait_for_dns(
    resolver: Option<crate::transport::Resolver>,
    target: &Endpoint,
    old: SocketAddr,
    stop: Instant,
    seq: Option<i64>,
) -> bool {
    let Some((host, port)) = dns_name(target) else {
        return false;
    };
    let first = Duration::from_millis(100);
    let mut wait = first;
    let began = Instant::now();
    loop {
        // Bounded: a resolver that never answers must not hold the dial
        // past the point where it has to go ahead.
        let answer = tokio::time::timeout_at(
            stop,
            crate::transport::resolve::resolve(resolver.as_ref(), host, port),
        )
        .await;
        let stale = match &answer {
            Ok(Ok(addrs)) => addrs.iter().all(|a| *a == old),
            // No answer yet: the dial would fail the same way.
            Ok(Err(_)) => true,
            Err(_) => return false,
        };
        if !stale {
            // Only when it waited: an answer that changed at once is no
            // news.
            if wait > first {
                tracing::info!(target: "redis_layers::handoff", event = "handoff.dns_followed", seq, to = %target, waited_ms = began.elapsed().as_millis() as u64, "DNS now leads away from the retiring node");
            }
            return true;
        }
        if crate::time::after(Instant::now(), wait) >= stop {
            tracing::info!(target: "redis_layers::handoff", event = "handoff.dns_stale", seq, to = %target, %old, "DNS still leads to the retiring node; dialling anyway before the deadline");
            return false;
        }
        tracing::debug!(target: "redis_layers::handoff", event = "handoff.dns_wait", seq, to = %target, %old, wait_ms = wait.as_millis() as u64, "DNS still leads to the retiring node; waiting");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

/// See `Shared::dns_watch`.
pub(super) struct DnsWatch {
    target: Endpoint,
    old: SocketAddr,
    stop: Instant,
    /// The `MOVING` and its deadline: a connection that could not wait
    /// (and reached `old`) is handed off as if it had been told.
    moving: Notification,
    deadline: Instant,
}

/// The host name and port of `e`, if it is a name (not an IP literal) to
/// resolve.
fn dns_name(e: &Endpoint) -> Option<(&str, u16)> {
    match e {
        Endpoint::Tcp { host, port, .. } if !crate::transport::resolve::is_ip_literal(host) => {
            Some((host, *port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Resolver;

    /// A resolver that leads every name to `ip`, on the port asked for.
    fn answers(ip: &'static str) -> Option<Resolver> {
        Some(Resolver::new(tower::service_fn(
            move |name: String| async move {
                let port: u16 = name.rsplit_once(':').unwrap().1.parse().unwrap();
                Ok::<_, io::Error>(vec![SocketAddr::new(ip.parse().unwrap(), port)])
            },
        )))
    }

    /// How long (virtual time) `wait_for_dns` waits, and what it says.
    async fn waited(resolver: Option<Resolver>, target: Endpoint) -> (Duration, bool) {
        let began = Instant::now();
        let stop = began + Duration::from_secs(10);
        let old: SocketAddr = "10.0.0.1:12000".parse().unwrap();
        let moved = wait_for_dns(resolver, &target, old, stop, None).await;
        (began.elapsed(), moved)
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_still_on_the_retiring_endpoint_waits_until_the_stop() {
        let (took, moved) = waited(answers("10.0.0.1"), Endpoint::tcp("db.test", 12000)).await;
        assert!(!moved);
        // The last poll falls due before the stop; none after it.
        assert!(
            took >= Duration::from_secs(9) && took <= Duration::from_secs(10),
            "{took:?}"
        );
    }

    /// The same host on another port is another endpoint: no lag to wait for.
    #[tokio::test(start_paused = true)]
    async fn a_move_to_another_port_of_the_same_host_does_not_wait() {
        let (took, moved) = waited(answers("10.0.0.1"), Endpoint::tcp("db.test", 12001)).await;
        assert!(moved);
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ip_target_never_waits() {
        let (took, moved) = waited(answers("10.0.0.1"), Endpoint::tcp("10.0.0.1", 12000)).await;
        assert!(!moved);
        assert_eq!(took, Duration::ZERO);
    }
}

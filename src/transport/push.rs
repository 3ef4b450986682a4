//! Push channels: where a connection's push frames wait for their reader.
//!
//! A server may push without limit (`CLIENT TRACKING ON BCAST`, a busy
//! pub/sub channel, a hostile server), and nobody may be reading: the
//! channel keeps at most `capacity` frames and drops the rest, counting
//! them, so that memory stays bounded and the sender (the connection's
//! driver, which must keep reading replies) never waits. It is tokio's
//! unbounded channel with a count of queued frames beside it: a bounded
//! channel would make the driver wait or fail, and a ring buffer would
//! need a lock on the hot path.
//!
//! Internal notes ([`PushItem`] other than frames) bypass the count: they
//! are rare, and [`pubsub`](crate::pubsub) must never miss one. So do the
//! server's `sunsubscribe` frames (a shard channel ended), which a
//! subscriber must see to subscribe again elsewhere. A run of dropped
//! frames is reported in band, as a [`PushItem::Lagged`] note just before
//! the next item that gets through, so a reader learns where the gap is.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::resp::Value;

/// Counter (feature `metrics`): push frames dropped because their channel
/// was full ([`PushReceiver::dropped`] counts them per channel).
pub const PUSHES_DROPPED: &str = "redis.client.pushes.dropped";

/// At most one `push.dropped` warning per channel per this long.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// What a push channel carries: the frames, and, in the merged stream of a
/// [`Handoff`](crate::handoff::Handoff), notes on where its subscriptions
/// were lost and restored (read by [`pubsub`](crate::pubsub); skipped by
/// [`PushReceiver::recv`]).
#[derive(Debug)]
pub(crate) enum PushItem {
    Frame(Value),
    /// A connection closed with subscriptions that no other connection had
    /// taken over: after the last frame it delivered.
    SubscriptionsLost,
    /// A new connection restored them: before its first frame.
    SubscriptionsRestored,
    /// The server refused to restore one subscription on a new connection
    /// (`NOPERM` after an ACL change, `MOVED` for a shard channel whose
    /// slot moved meanwhile): the connection is not subscribed to it. Comes
    /// after `SubscriptionsLost` and before `SubscriptionsRestored`.
    Refused {
        /// Which kind of subscription.
        kind: crate::pubsub::Kind,
        /// The channel (or pattern).
        channel: bytes::Bytes,
        /// Why.
        error: crate::ServerError,
    },
    /// This many frames were dropped here (the channel was full): before
    /// the first item that got through after them. Sent into another push
    /// channel, it adds to that one's gap.
    Lagged(u64),
}

/// What the two ends of a channel share.
struct Counts {
    capacity: usize,
    /// Frames sent and not yet received.
    queued: AtomicUsize,
    /// Frames dropped, here or upstream (reported by a `Lagged` note).
    dropped: AtomicU64,
    /// Dropped since the last `Lagged` note went out.
    unreported: AtomicU64,
    /// When the next warning may go out, in ms since `born` (0: the first
    /// drop warns).
    next_warn_ms: AtomicU64,
    born: std::time::Instant,
    /// Where the pushes come from, for the warning.
    source: String,
}

/// The sending end: cheap to clone; never waits.
#[derive(Clone)]
pub(crate) struct PushSender {
    tx: mpsc::UnboundedSender<PushItem>,
    counts: Arc<Counts>,
}

/// The receiver was dropped: nobody reads this channel any more.
#[derive(Debug)]
pub(crate) struct Closed;

/// A push channel that keeps at most `capacity` frames (at least 1);
/// `source` names where its pushes come from in the `push.dropped`
/// warning.
pub(crate) fn channel(capacity: usize, source: impl Into<String>) -> (PushSender, PushReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let counts = Arc::new(Counts {
        capacity: capacity.max(1),
        queued: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
        unreported: AtomicU64::new(0),
        next_warn_ms: AtomicU64::new(0),
        born: std::time::Instant::now(),
        source: source.into(),
    });
    (
        PushSender {
            tx,
            counts: counts.clone(),
        },
        PushReceiver { rx, counts },
    )
}

impl PushSender {
    /// Queues `item`. A frame is dropped and counted when `capacity`
    /// frames wait already (that is still `Ok`); a `Lagged` note adds to
    /// this channel's gap; other notes always go through. `Err` once the
    /// receiver is gone.
    pub(crate) fn send(&self, item: PushItem) -> Result<(), Closed> {
        if self.tx.is_closed() {
            return Err(Closed);
        }
        let c = &*self.counts;
        match item {
            PushItem::Lagged(n) => {
                c.dropped.fetch_add(n, Ordering::Relaxed);
                c.unreported.fetch_add(n, Ordering::AcqRel);
                return Ok(());
            }
            PushItem::Frame(ref v) => {
                let queued = c.queued.fetch_add(1, Ordering::AcqRel);
                // Checked only when full: costs nothing otherwise.
                if queued >= c.capacity && crate::pubsub::server_sunsubscribe(v).is_none() {
                    c.queued.fetch_sub(1, Ordering::AcqRel);
                    self.dropped_one();
                    return Ok(());
                }
            }
            _ => {}
        }
        let frame = matches!(item, PushItem::Frame(_));
        let lagged = c.unreported.swap(0, Ordering::AcqRel);
        let sent = (lagged == 0 || self.tx.send(PushItem::Lagged(lagged)).is_ok())
            && self.tx.send(item).is_ok();
        if !sent {
            if frame {
                c.queued.fetch_sub(1, Ordering::AcqRel);
            }
            return Err(Closed);
        }
        Ok(())
    }

    /// Counts one dropped frame; warns for the first, then at most once
    /// per [`WARN_EVERY`], never once per frame.
    fn dropped_one(&self) {
        let c = &*self.counts;
        let total = c.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        c.unreported.fetch_add(1, Ordering::AcqRel);
        #[cfg(feature = "metrics")]
        metrics::counter!(PUSHES_DROPPED).increment(1);
        let now = u64::try_from(c.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = c.next_warn_ms.load(Ordering::Relaxed);
        let later = now.saturating_add(WARN_EVERY.as_millis() as u64);
        if now >= next
            && c.next_warn_ms
                .compare_exchange(next, later, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                target: "redis_layers::transport",
                event = "push.dropped",
                source = %c.source,
                capacity = c.capacity,
                dropped = total,
                "push channel full: push frames dropped (read them faster, raise push_capacity, or drop the receiver)"
            );
        }
    }
}

/// Receives a connection's push frames; see [`Connection::take_pushes`](crate::Connection::take_pushes).
///
/// It keeps at most its capacity of frames waiting
/// ([`Connector::push_capacity`](crate::Connector::push_capacity), default
/// [`PushReceiver::DEFAULT_CAPACITY`]): when it is full, newer frames are
/// dropped and counted in [`dropped`](Self::dropped), and the connection
/// goes on serving commands. Dropping the receiver discards every push
/// from then on.
///
/// `recv` returns `None` once the connection has closed and every push has
/// been received.
pub struct PushReceiver {
    rx: mpsc::UnboundedReceiver<PushItem>,
    counts: Arc<Counts>,
}

impl fmt::Debug for PushReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushReceiver")
            .field("capacity", &self.counts.capacity)
            .field("queued", &self.counts.queued.load(Ordering::Relaxed))
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl PushReceiver {
    /// How many push frames wait, by default, before newer ones are
    /// dropped: 1024.
    ///
    /// ```
    /// assert_eq!(redis_layers::PushReceiver::DEFAULT_CAPACITY, 1024);
    /// ```
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// The next push frame, or `None` after the connection closed.
    pub async fn recv(&mut self) -> Option<Value> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next push frame.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Value>> {
        loop {
            match std::task::ready!(self.poll_recv_item(cx)) {
                Some(PushItem::Frame(v)) => return Poll::Ready(Some(v)),
                Some(_) => {}
                None => return Poll::Ready(None),
            }
        }
    }

    /// The next push frame if one is waiting.
    pub fn try_recv(&mut self) -> Option<Value> {
        loop {
            let item = self.rx.try_recv().ok()?;
            if let PushItem::Frame(v) = self.received(item) {
                return Some(v);
            }
        }
    }

    /// How many push frames were dropped because this receiver's channel
    /// was full (more than its capacity waiting), since it was made. For
    /// the merged stream of a [`Handoff`](crate::handoff::Handoff), this
    /// includes frames its connections' channels dropped, once the next
    /// frame after them is forwarded. A `push.dropped` warning (`tracing`,
    /// at most one a second per channel) and, with the `metrics` feature,
    /// the [`PUSHES_DROPPED`] counter report drops too.
    ///
    /// ```no_run
    /// # async fn run(conn: redis_layers::Connection) {
    /// let mut pushes = conn.take_pushes().unwrap();
    /// while let Some(frame) = pushes.recv().await {
    ///     // ... slow work ...
    ///     if pushes.dropped() > 0 {
    ///         eprintln!("{} pushes lost so far", pushes.dropped());
    ///     }
    /// }
    /// # }
    /// ```
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// The next item, notes included.
    pub(crate) async fn recv_item(&mut self) -> Option<PushItem> {
        std::future::poll_fn(|cx| self.poll_recv_item(cx)).await
    }

    fn poll_recv_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<PushItem>> {
        let item = std::task::ready!(self.rx.poll_recv(cx));
        Poll::Ready(item.map(|i| self.received(i)))
    }

    /// Frees the place of a frame taken off the channel.
    fn received(&self, item: PushItem) -> PushItem {
        if matches!(item, PushItem::Frame(_)) {
            self.counts.queued.fetch_sub(1, Ordering::AcqRel);
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(s: &'static str) -> PushItem {
        PushItem::Frame(Value::Push(vec![Value::BulkString(Bytes::from_static(
            s.as_bytes(),
        ))]))
    }

    fn name(item: Option<PushItem>) -> String {
        match item {
            Some(PushItem::Frame(Value::Push(v))) => {
                String::from_utf8_lossy(v[0].as_bytes().unwrap()).into_owned()
            }
            Some(PushItem::Lagged(n)) => format!("lagged {n}"),
            Some(PushItem::SubscriptionsLost) => "lost".into(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn full_channel_drops_frames_and_counts_them_never_notes() {
        let (tx, mut rx) = channel(2, "test");
        for s in ["a", "b", "c", "d"] {
            tx.send(frame(s)).unwrap();
        }
        tx.send(PushItem::SubscriptionsLost).unwrap();
        assert_eq!(rx.dropped(), 2);
        assert_eq!(name(rx.rx.try_recv().ok().map(|i| rx.received(i))), "a");
        assert_eq!(name(rx.rx.try_recv().ok().map(|i| rx.received(i))), "b");
        // The gap, where it was: before the next item through.
        assert_eq!(name(rx.rx.try_recv().ok()), "lagged 2");
        assert_eq!(name(rx.rx.try_recv().ok()), "lost");
        // Room again.
        tx.send(frame("e")).unwrap();
        assert_eq!(rx.try_recv().map(|_| ()), Some(()));
        assert!(rx.try_recv().is_none());
        assert_eq!(rx.dropped(), 2);
    }

    #[test]
    fn a_server_sunsubscribe_is_never_dropped() {
        let (tx, mut rx) = channel(1, "test");
        tx.send(frame("message")).unwrap();
        let ended = Value::Push(vec![
            Value::BulkString(Bytes::from_static(b"sunsubscribe")),
            Value::BulkString(Bytes::from_static(b"ch")),
            Value::Integer(0),
        ]);
        tx.send(PushItem::Frame(ended.clone())).unwrap();
        assert_eq!(rx.dropped(), 0);
        assert!(rx.try_recv().is_some());
        assert_eq!(rx.try_recv(), Some(ended));
        assert_eq!(rx.counts.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn upstream_gaps_add_to_the_next_one() {
        let (tx, mut rx) = channel(1, "test");
        tx.send(PushItem::Lagged(5)).unwrap();
        assert_eq!(rx.dropped(), 5);
        tx.send(frame("a")).unwrap();
        tx.send(frame("b")).unwrap(); // dropped here
        tx.send(PushItem::Lagged(3)).unwrap();
        assert_eq!(rx.dropped(), 9);
        assert_eq!(name(rx.rx.try_recv().ok()), "lagged 5");
        assert_eq!(name(rx.rx.try_recv().ok().map(|i| rx.received(i))), "a");
        tx.send(frame("c")).unwrap();
        assert_eq!(name(rx.rx.try_recv().ok()), "lagged 4");
        assert_eq!(name(rx.rx.try_recv().ok().map(|i| rx.received(i))), "c");
    }

    #[test]
    fn a_dropped_receiver_keeps_nothing() {
        let (tx, rx) = channel(4, "test");
        drop(rx);
        assert!(tx.send(frame("a")).is_err());
        assert!(tx.send(PushItem::SubscriptionsLost).is_err());
        assert_eq!(tx.counts.queued.load(Ordering::Relaxed), 0);
        assert_eq!(tx.counts.dropped.load(Ordering::Relaxed), 0);
    }
}

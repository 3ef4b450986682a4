//! The connections a [`Handoff`](super::Handoff) owns, and the lease that
//! counts the requests on each.
//!
//! Switching a pool entry to a new connection must never strand a request:
//! a caller reserves a slot on a connection (`poll_ready`) before it knows
//! whether a handoff retires that connection. The rule that makes this
//! safe: a caller first counts itself on the connection (`pending + 1`),
//! then checks the pool generation; the switcher first bumps the
//! generation, then reads `pending`. Both with `SeqCst`, so either the
//! switcher sees the caller (and waits for its reply before closing) or the
//! caller sees the new generation (and goes to the new connection).
//!
//! Per-clone order (see the module docs of `handoff`): each request of a
//! service clone also holds that clone's [`Caller`] mark until its reply is
//! in, so the clone knows whether it has requests in flight, and on which
//! connection (the one it used last: it moves only when none are).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::Waker;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Error;
use crate::transport::Endpoint;

/// One connection's bookkeeping, shared by the pool and every request on it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: u64,
    pub(crate) endpoint: Endpoint,
    /// When the connection joined the pool.
    pub(crate) since: Instant,
    /// Requests reserved or in flight on this connection.
    pending: AtomicUsize,
    /// Moved away from: close once `pending` reaches 0.
    retiring: AtomicBool,
    drained: Notify,
    /// Bumped for each handoff scheduled for this connection: a newer
    /// `MOVING` supersedes an older one still dialling.
    pub(crate) handoff_epoch: AtomicU64,
    /// The last `MOVING` a handoff was scheduled for: one per connection,
    /// however many ways the `MOVING` reaches us.
    moving_seq: AtomicI64,
}

impl Slot {
    pub(crate) fn new(id: u64, endpoint: Endpoint) -> Arc<Slot> {
        Arc::new(Slot {
            id,
            endpoint,
            since: Instant::now(),
            pending: AtomicUsize::new(0),
            retiring: AtomicBool::new(false),
            drained: Notify::new(),
            handoff_epoch: AtomicU64::new(0),
            moving_seq: AtomicI64::new(i64::MIN),
        })
    }

    /// True the first time it is called for `seq`.
    pub(crate) fn claim_moving(&self, seq: i64) -> bool {
        self.moving_seq.swap(seq, SeqCst) != seq
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.load(SeqCst)
    }

    /// Counts a caller on this connection.
    pub(crate) fn acquire(&self) {
        self.pending.fetch_add(1, SeqCst);
    }

    pub(crate) fn release(&self) {
        if self.pending.fetch_sub(1, SeqCst) == 1 && self.retiring.load(SeqCst) {
            self.drained.notify_one();
        }
    }

    /// Marks the connection as moved away from; resolves when its last
    /// request is answered.
    pub(crate) async fn retire_and_drain(&self) {
        self.retiring.store(true, SeqCst);
        while self.pending.load(SeqCst) > 0 {
            // `notify_one` keeps a permit when nobody waits yet, so a
            // release between the load and this await is not lost.
            self.drained.notified().await;
        }
    }
}

/// A request's hold on its connection, released when the reply is in (or
/// the request is dropped); with the mark of the service clone that sent
/// it, if it counts toward that clone's order.
#[derive(Debug)]
pub(crate) struct Lease {
    slot: Arc<Slot>,
    /// Held, not read: counts the request for its clone.
    _caller: Option<Arc<Caller>>,
}

impl Lease {
    /// A hold on `slot`, which the caller already counted itself on.
    pub(crate) fn new(slot: Arc<Slot>, caller: Option<Arc<Caller>>) -> Self {
        Lease {
            slot,
            _caller: caller,
        }
    }
}

/// The mark of one service clone on its requests in flight: each holds a
/// clone of the clone's `Arc<Caller>`, so its strong count less one (the
/// clone's own) is how many are in flight. No counter of its own: cloning
/// the `Arc` counts a request, dropping it uncounts it. One allocation per
/// service clone (at its first call), none per request.
#[derive(Debug, Default)]
pub(crate) struct Caller;

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.release();
    }
}

/// A pool entry.
pub(crate) enum Entry<C> {
    /// Not connected; the next caller starts a connect.
    Empty,
    Connecting,
    Ready {
        slot: Arc<Slot>,
        conn: C,
    },
}

/// The subscriptions of an entry's lost connection, to restore on the
/// entry's next connection before it takes commands.
pub(crate) struct Restore<C> {
    pub(crate) cmds: Vec<crate::Cmd>,
    /// The connection they were on: still open after a failed handoff
    /// (then, if it is still open when the new one is ready, nothing was
    /// lost), closed after a death.
    pub(crate) from: C,
    /// Its slot id.
    pub(crate) from_slot: u64,
    /// The loss was already noted in the push stream.
    pub(crate) noted: bool,
}

pub(crate) struct Pool<C> {
    pub(crate) entries: Vec<Entry<C>>,
    /// Per entry: subscriptions waiting for its next connection.
    pub(crate) restore: Vec<Option<Restore<C>>>,
    /// Per entry: reconnects for its subscriptions since it last had a
    /// connection that stayed up (for the backoff).
    pub(crate) attempts: Vec<u32>,
    /// Where new connections go: the configured endpoint, or the target
    /// of the last successful handoff.
    pub(crate) current: Endpoint,
    /// Callers waiting for any connection to become ready.
    pub(crate) waiters: Vec<Waker>,
    /// The last connect failure and the generation it happened at: callers
    /// waiting for that connect get it as their error.
    pub(crate) error: Option<(u64, Error)>,
}

impl<C> Pool<C> {
    pub(crate) fn new(size: usize, endpoint: Endpoint) -> Self {
        Pool {
            entries: (0..size).map(|_| Entry::Empty).collect(),
            restore: (0..size).map(|_| None).collect(),
            attempts: vec![0; size],
            current: endpoint,
            waiters: Vec::new(),
            error: None,
        }
    }

    /// The index of the ready entry holding `slot_id`.
    pub(crate) fn find(&self, slot_id: u64) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| matches!(e, Entry::Ready { slot, .. } if slot.id == slot_id))
    }

    pub(crate) fn wake_all(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }
}

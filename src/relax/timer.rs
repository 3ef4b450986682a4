//! The deadlines of requests that use the layer's default timeout.
//!
//! A tokio `Sleep` per command cost about 12% of the throughput of a busy
//! connection (a timer-wheel insert and removal under a lock, for a timer
//! that almost never fires). Requests with the default timeout all have the
//! same timeout, so their deadlines come in the order they were sent: one
//! FIFO queue and one task that sleeps until the oldest deadline replace the
//! per-command timers. A request that completes leaves a dead entry behind,
//! which is dropped when it reaches the front (at once for the front, so the
//! queue stays about as long as the requests in flight).
//!
//! When a deadline passes while the endpoint is relaxed, the task does not
//! fire it: the request moves to its own tokio timer at the relaxed
//! deadline (rare, so its cost does not matter).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::maint::MaintenanceState;

/// One request's deadline, shared by its future and the queue.
#[derive(Debug, Default)]
pub(super) struct Slot {
    inner: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    fired: Option<Fired>,
    waker: Option<Waker>,
}

/// What the queue decided for a request whose deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fired {
    /// Timed out.
    Expired,
    /// Relaxed meanwhile: wait until this later deadline instead (and
    /// check the state again then).
    Extended(Instant),
}

impl Slot {
    /// The decision, if there is one; otherwise remembers `waker`.
    pub(super) fn poll_fired(&self, waker: &Waker) -> Option<Fired> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.fired.is_none() && !s.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.waker = Some(waker.clone());
        }
        s.fired
    }

    fn fire(&self, f: Fired) {
        let waker = {
            let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            s.fired = Some(f);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

struct Entry {
    deadline: Instant,
    start: Instant,
    slot: Weak<Slot>,
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// The queue and its task; one per layer, shared by the service's clones.
pub(super) struct Deadlines {
    queue: Mutex<VecDeque<Entry>>,
    /// Wakes the task: a first deadline, or the queue is gone.
    wake: Arc<Notify>,
    started: AtomicBool,
    timeout: Duration,
}

impl Deadlines {
    /// Deadlines `timeout` after each request starts. The task starts on
    /// first use and ends when the last handle is dropped.
    pub(super) fn new(timeout: Duration) -> Arc<Deadlines> {
        Arc::new(Deadlines {
            queue: Mutex::new(VecDeque::new()),
            wake: Arc::new(Notify::new()),
            started: AtomicBool::new(false),
            timeout,
        })
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Queues a deadline for a request that starts now.
    pub(super) fn push(
        self: &Arc<Self>,
        state: &Arc<MaintenanceState>,
        start: Instant,
    ) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        let entry = Entry {
            deadline: start + self.timeout,
            start,
            slot: Arc::downgrade(&slot),
        };
        let was_empty = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            // Requests answered already: nothing to time out.
            while q.front().is_some_and(|e| e.slot.strong_count() == 0) {
                q.pop_front();
            }
            let was_empty = q.is_empty();
            q.push_back(entry);
            was_empty
        };
        if !self.started.load(Ordering::Relaxed) && !self.started.swap(true, Ordering::AcqRel) {
            self.spawn(state.clone());
        }
        if was_empty {
            self.wake.notify_one();
        }
        slot
    }

    fn spawn(self: &Arc<Self>, state: Arc<MaintenanceState>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let notify = self.wake.clone();
        rt.spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                let next = me.expire(&state);
                // Not holding `me` while asleep: the last handle's drop
                // wakes the task, which then ends.
                drop(me);
                let wake = notify.notified();
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = wake => {}
                        }
                    }
                    None => wake.await,
                }
            }
        });
    }

    /// Fires every passed deadline; returns the next one.
    fn expire(&self, state: &MaintenanceState) -> Option<Instant> {
        let now = Instant::now();
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(front) = q.front() {
            if front.slot.strong_count() == 0 {
                q.pop_front();
                continue;
            }
            if front.deadline > now {
                return Some(front.deadline);
            }
            let e = q.pop_front().expect("front");
            if let Some(slot) = e.slot.upgrade() {
                let relaxed = state
                    .relaxed_timeout()
                    .map(|r| e.start + r.max(self.timeout));
                slot.fire(match relaxed {
                    Some(later) if later > now => Fired::Extended(later),
                    _ => Fired::Expired,
                });
            }
        }
        None
    }
}

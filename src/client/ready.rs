//! Clones of the client's stack kept between calls.
//!
//! A clone of the stack starts cold: its box is allocated anew, the
//! Handoff clone has no view of the pool yet (it takes the pool lock and
//! copies the ready connections), the Cluster clone has no node services
//! nor redirect handle. A call through a fresh clone therefore takes the
//! slow path every time. A call takes a clone from a slot instead, drives
//! it through `poll_ready` and `call`, and puts it back as soon as the
//! request is handed over (the response future owns what it needs), so
//! the next call on that thread finds it warm.
//!
//! The slots are only ever tried, never waited for: one taken by another
//! thread (or empty) just means a fresh clone, as before. Each thread uses
//! its own run of slots, so on a runtime's worker threads the slots are
//! uncontended. They are [`TryLock`]s (the `try-lock` crate) rather than
//! `Mutex`es: taking one is one atomic swap and giving it back a plain
//! store, where a `Mutex` takes two atomic read-modify-writes, which were
//! 44% of this module's time per call (in-memory stack, `perf`). A clone
//! is out of its slot while it runs, so a layer that panics costs the
//! slot its clone, not its use (what a `Mutex`'s poisoning gave).
//!
//! Order is unchanged: a clone keeps its requests in order (see
//! [`handoff`](crate::handoff)), so calls that share one are, if anything,
//! more ordered than with a clone per call; calls in flight together are
//! still not promised any order.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tower::Service;
use try_lock::TryLock;

use super::{BoxService, FromValue};
use crate::error::Result;
use crate::request::{Request, Response};

/// How many slots a client keeps (at most this many warm clones).
const SLOTS: usize = 64;

/// Threads numbered in the order they first call a client.
static THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's number (`usize::MAX`: not taken yet) and how many
    /// calls it made, which rotate it over its run of slots.
    static THREAD: Cell<(usize, usize)> = const { Cell::new((usize::MAX, 0)) };
}

/// One warm clone, on a cache line of its own: threads taking and putting
/// back theirs do not write to each other's line.
#[repr(align(64))]
struct Slot(TryLock<Option<BoxService>>);

/// One client's stack and its warm clones, shared by the client's clones.
pub(super) struct Ready {
    svc: BoxService,
    slots: Box<[Slot]>,
    /// Slots one thread rotates over: the pool size, so that a busy clone
    /// (which stays on the pool entry its requests in flight are on) does
    /// not keep a thread's calls on one entry of a larger pool.
    spread: usize,
}

impl Ready {
    /// Slots for `svc`, a stack over `pool_size` connections per endpoint.
    pub(super) fn new(svc: BoxService, pool_size: usize) -> Ready {
        Ready {
            svc,
            slots: (0..SLOTS).map(|_| Slot(TryLock::new(None))).collect(),
            spread: pool_size.clamp(1, 8),
        }
    }

    fn slot(&self) -> &TryLock<Option<BoxService>> {
        let i = THREAD.with(|t| {
            let (mut id, n) = t.get();
            if id == usize::MAX {
                id = THREADS.fetch_add(1, Ordering::Relaxed);
            }
            t.set((id, n.wrapping_add(1)));
            // No division for the default pool of one: it is on every call.
            match self.spread {
                1 => id,
                spread => id * spread + n % spread,
            }
        });
        &self.slots[i % SLOTS].0
    }

    /// The stack.
    pub(super) fn service(&self) -> &BoxService {
        &self.svc
    }

    /// Sends `req` through a warm clone of the stack (a fresh one when none
    /// is free).
    ///
    /// The common case takes one lock and one unlock: the slot's clone is
    /// made ready and called in place, under the slot's lock (both are
    /// synchronous; the response future owns what it needs). Only a clone
    /// that is not ready at once leaves its slot, to wait without holding
    /// the lock, and goes back after the call.
    pub(super) fn call(&self, req: Request) -> Call<'_> {
        Call {
            ready: self,
            state: State::Start(req),
        }
    }
}

/// The future of [`Client::send`](super::Client::send): the reply to one
/// request (a command or a pipeline).
///
/// Written out rather than an `async fn`: it is on every `Client` call,
/// and a state machine of its own moves less (measured by
/// `benches/client_overhead.rs`). It borrows the client, not the request:
/// the request is built and handed to it when the call is made.
///
/// ```no_run
/// use redis_layers::{client::{Call, Client}, cmd};
/// # async fn run(client: Client) -> Result<(), redis_layers::Error> {
/// let call: Call<'_> = client.send(cmd("PING"));
/// let reply = call.await?;
/// # Ok(()) }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct Call<'a> {
    ready: &'a Ready,
    state: State<'a>,
}

impl fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Start(_) => "not polled",
            State::Waiting { .. } => "waiting for the stack to be ready",
            State::Sent(_) => "sent",
            State::Done => "done",
        };
        f.debug_struct("Call").field("state", &state).finish()
    }
}

/// The future of [`Client::cmd`](super::Client::cmd) and of every typed
/// helper ([`Client::get`](super::Client::get), ...): the reply converted
/// to `T` with [`FromValue`].
///
/// The helpers build their command when they are called, so the future
/// borrows only the client, not the arguments:
///
/// ```no_run
/// use redis_layers::client::{Client, TypedCall};
/// # async fn run(client: Client) -> Result<(), redis_layers::Error> {
/// let call: TypedCall<'_, Option<String>> = {
///     let key = format!("user:{}", 42);
///     client.get(&key) // `key` may go before the call is awaited
/// };
/// let name = call.await?;
/// # Ok(()) }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct TypedCall<'a, T> {
    call: Call<'a>,
    reply: PhantomData<fn() -> T>,
}

impl<'a, T> TypedCall<'a, T> {
    pub(super) fn new(call: Call<'a>) -> Self {
        TypedCall {
            call,
            reply: PhantomData,
        }
    }
}

impl<T> fmt::Debug for TypedCall<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedCall")
            .field("call", &self.call)
            .field("reply", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T: FromValue> Future for TypedCall<'_, T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let call = &mut self.get_mut().call;
        Pin::new(call)
            .poll(cx)
            .map(|r| r.and_then(|resp| T::from_value(resp.into_value()?)))
    }
}

enum State<'a> {
    /// Not polled yet.
    Start(Request),
    /// A clone of our own waits for readiness: taken from `slot`, or
    /// fresh when the slot was empty or busy; back there after the call.
    Waiting {
        own: BoxService,
        slot: &'a TryLock<Option<BoxService>>,
        req: Request,
    },
    /// The request is handed over.
    Sent(BoxFuture),
    Done,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response>> + Send>>;

impl Future for Call<'_> {
    type Output = Result<Response>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match std::mem::replace(&mut this.state, State::Done) {
                State::Start(req) => {
                    let slot = this.ready.slot();
                    let own = match slot.try_lock() {
                        // Out of the slot while it runs: if a layer panics,
                        // the unwinding drops it and the slot is empty.
                        Some(mut warm) => match warm.take().map(|mut s| (s.poll_ready(cx), s)) {
                            Some((Poll::Ready(Ok(())), mut s)) => {
                                this.state = State::Sent(s.call(req));
                                *warm = Some(s);
                                continue;
                            }
                            Some((Poll::Pending, s)) => Some(s),
                            // Dropped, as a clone that fails readiness
                            // always was.
                            Some((Poll::Ready(Err(e)), _)) => return Poll::Ready(Err(e)),
                            None => None,
                        },
                        None => None,
                    };
                    let own = own.unwrap_or_else(|| this.ready.svc.clone());
                    this.state = State::Waiting { own, slot, req };
                }
                State::Waiting { mut own, slot, req } => match own.poll_ready(cx) {
                    Poll::Pending => {
                        this.state = State::Waiting { own, slot, req };
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        this.state = State::Sent(own.call(req));
                        // Back for the next call; a slot filled meanwhile
                        // keeps its own. (A call dropped before this drops
                        // its clone, half-ready or not.)
                        if let Some(mut free) = slot.try_lock() {
                            if free.is_none() {
                                *free = Some(own);
                            }
                        }
                    }
                },
                State::Sent(mut fut) => {
                    let r = fut.as_mut().poll(cx);
                    if r.is_pending() {
                        this.state = State::Sent(fut);
                    }
                    return r;
                }
                State::Done => panic!("client::Call polled after it completed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicIsize;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use super::*;
    use crate::client::Client;
    use crate::resp::{cmd, Value};

    /// A stack that answers at once and counts its clones: made, and alive.
    /// With `panic` set, its next `call` panics (a faulty layer).
    struct Counted {
        made: Arc<AtomicUsize>,
        alive: Arc<AtomicIsize>,
        panic: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Counted {
        fn new(made: &Arc<AtomicUsize>, alive: &Arc<AtomicIsize>) -> Counted {
            alive.fetch_add(1, Ordering::SeqCst);
            Counted {
                made: made.clone(),
                alive: alive.clone(),
                panic: Arc::default(),
            }
        }
    }

    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.made.fetch_add(1, Ordering::SeqCst);
            let mut c = Counted::new(&self.made, &self.alive);
            c.panic = self.panic.clone();
            c
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Service<Request> for Counted {
        type Response = Response;
        type Error = crate::Error;
        type Future = std::future::Ready<Result<Response>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request) -> Self::Future {
            assert!(!self.panic.swap(false, Ordering::SeqCst), "a faulty layer");
            std::future::ready(Ok(Response::Value(Value::Integer(1))))
        }
    }

    /// Calls reuse warm clones: a few clones for thousands of calls (a
    /// clone per call before), and none is left once the client is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_reuse_warm_clones_and_the_client_drops_them() {
        let (made, alive) = (Arc::default(), Arc::default());
        let client = Client::from_service(BoxService::new(Counted::new(&made, &alive)));
        for _ in 0..1_000 {
            assert_eq!(client.cmd::<i64>(cmd("INCR").arg("n")).await.unwrap(), 1);
        }
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    for _ in 0..1_000 {
                        client.cmd::<i64>(cmd("INCR").arg("n")).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // One per thread that called (the test's and the two workers');
        // cloning the client clones no stack.
        let clones = made.load(Ordering::SeqCst);
        assert!(clones <= 3, "{clones} clones for 17,000 calls");
        drop(client);
        assert_eq!(
            alive.load(Ordering::SeqCst),
            0,
            "clones outlived the client"
        );
    }

    /// A layer that panics in `call` (under the slot's lock) costs the
    /// slot its clone, not its use: later calls are warm again.
    #[tokio::test]
    async fn a_panic_in_the_stack_leaves_the_slot_usable() {
        let (made, alive) = (Arc::default(), Arc::default());
        let stack = Counted::new(&made, &alive);
        let panic = stack.panic.clone();
        let client = Client::from_service(BoxService::new(stack));
        client.cmd::<i64>(cmd("INCR").arg("n")).await.unwrap();
        panic.store(true, Ordering::SeqCst);
        let c = client.clone();
        let r = tokio::spawn(async move { c.cmd::<i64>(cmd("INCR").arg("n")).await }).await;
        assert!(r.unwrap_err().is_panic());
        let before = made.load(Ordering::SeqCst);
        for _ in 0..1_000 {
            assert_eq!(client.cmd::<i64>(cmd("INCR").arg("n")).await.unwrap(), 1);
        }
        let clones = made.load(Ordering::SeqCst) - before;
        assert!(
            clones <= 1,
            "{clones} clones for 1,000 calls after the panic"
        );
    }
}

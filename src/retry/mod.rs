//! Retries for Redis requests that never duplicate a write.
//!
//! [`Retry`] sends a request again when its [policy](RedisPolicy) says
//! so, after a jittered exponential [`Backoff`], within a retry budget.
//! Under it, [`Handoff`](crate::handoff::Handoff) reconnects lazily, so a
//! retry after a lost connection goes out on a new one.
//!
//! # What is retried
//!
//! A failure is retried only if it cannot have applied the request, or the
//! request is safe to apply twice:
//!
//! | failure | single command | pipeline |
//! |---|---|---|
//! | [`Error::Closed`]: never written | any | any |
//! | the service below could not take the request: its `poll_ready` failed with `Io`, `Protocol`, `Timeout` or `Closed` (a reconnect refused, ...) | any | any |
//! | `TRYAGAIN`, `LOADING`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY` (refused before running) | any | any, when **every** reply of the pipeline is one of these |
//! | [`Error::Io`] (connection lost after writing), [`Error::Protocol`], [`Error::Timeout`] | idempotent only | idempotent only |
//! | other server errors (`WRONGTYPE`, `ERR`, `NOSCRIPT`, `BUSY`, `OOM`, `MOVED`/`ASK` ...), [`Error::Auth`], [`Error::Config`] | never | never |
//!
//! Idempotent means: every command read-only by the
//! [`CommandTable`](crate::cluster::keys::CommandTable) (Redis's
//! `readonly` flag), or marked by the caller with
//! [`Request::idempotent`](crate::Request::idempotent). So an `INCR`
//! whose connection died after it was written is returned as an
//! [`Error::Io`], never sent twice; a `GET` is sent again. A pipeline
//! with some replies is returned as it is, its per-command errors
//! included; a transaction (`MULTI` ... `EXEC`) is idempotent only when
//! marked.
//!
//! A failed `poll_ready` below (e.g. [`Handoff`](crate::handoff::Handoff)
//! could not reconnect) does not fail [`Retry::poll_ready`]: the request
//! goes to the policy as an [`Error::Closed`] (it was not sent), and if
//! the policy does not retry, the caller gets the original error.
//!
//! # One deadline per call
//!
//! A request's budget is its own timeout
//! ([`Request::with_timeout`](crate::Request::with_timeout)) or, without
//! one, the layer's [`command_timeout`](RetryLayer::command_timeout) (in a
//! [`Client`](crate::Client), the builder's command timeout). Its deadline
//! is the budget after [`call`](Service::call), and everything the call
//! does spends it:
//!
//! - **waiting for the service below** (a dial, a handshake, a full
//!   queue): the request's clock starts when [`Retry::poll_ready`] first
//!   found the inner service not ready, and `poll_ready` waits at most the
//!   layer's [`command_timeout`](RetryLayer::command_timeout); past it the
//!   next request fails with [`Error::Timeout`] unsent (the dial goes on,
//!   for the next requests), or, for a request with a longer budget of its
//!   own (a blocking one), waits on in its response future. Waiting in
//!   `poll_ready` rather than in the future keeps one clone's requests in
//!   the order of its calls (see [`client`](crate::client#order));
//! - **attempts**: each goes out with the time left as its timeout (the
//!   first one too, when it has no timeout of its own), which the layers
//!   below enforce and which is more than the time left only while the
//!   endpoint is relaxed (below);
//! - **backoff**: no retry whose wait would not end before the deadline
//!   (the caller gets the last failure, which an attempt that timed out
//!   makes [`Error::Timeout`]); a policy of your own is not asked once the
//!   deadline has passed, and its wait is cut at the deadline (the caller
//!   gets the last failure).
//!
//! So a call ends, with its reply or an error, within its budget plus the
//! time an attempt waited in a connection's queue before it was written
//! (an attempt's clock starts then; about nothing on a connection that
//! keeps up) and scheduling delays. Measured (`tests/deadline.rs`, 200
//! calls with a 500 ms budget, retries on and off, against a server that
//! never answers, one that never answers `HELLO`, one that hangs up on
//! every connection): every call ended within 504 ms.
//!
//! **Relaxation** extends it, as it extends a timeout: an attempt written
//! while the endpoint is relaxed (`MIGRATING`, `FAILING_OVER`, ...; see
//! [`relax`](crate::relax)) may wait for its reply `max(time left,
//! relaxed timeout)`, and one in flight when the relaxation starts is
//! extended likewise; the call then ends with that attempt, and no retry
//! follows it (no time is left). Waits for the service and backoff are not
//! extended.
//!
//! **No deadline**: a request with
//! [`CommandTimeout::Never`] (or
//! [`Request::without_timeout`](crate::Request::without_timeout)), a
//! blocking command (`BLPOP k 2`, `XREAD BLOCK`, `WAIT`, ...) without a
//! timeout of its own (it blocks as long as it says), and any request
//! without a timeout through a layer without a command timeout. Each
//! attempt then has only the timeout the layer below gives it, and a call
//! may take up to `max_retries + 1` of them plus the waits.
//!
//! Under a [`Cluster`](crate::cluster::Cluster), an attempt also routes:
//! its waits there (a node's first connection and handshake, a slot map
//! refresh to confirm a redirect, learning an unknown command) end at the
//! attempt's timeout, with [`Error::Timeout`]; a redirect's new attempt
//! gets what is left of it.
//!
//! The deadline costs a request one clock read; its timer is made only
//! when the call waits for something other than a reply (the service
//! below, or a backoff of a policy of your own).
//!
//! On the success path a request costs a clone of the inner service and
//! of the policy, and a budget deposit (one atomic add with the default
//! [`RetryBudget`]; tower's `TpsBudget` takes a lock and reads the clock).
//! With the [`RedisPolicy`], a single command of up to 48 encoded bytes
//! (a `GET` of a key of up to 31 bytes) is kept in the response future
//! and rebuilt only for a retry, so it costs no allocation; a longer
//! command or a pipeline is cloned: a copy of each command up to 1 KiB,
//! and a shared reference to the bytes of a longer one (a request shares
//! a long command's buffer, see [`Request::new`](crate::Request::new)), so
//! a 100 KiB `SET` costs a reference count, not 100 KiB. A request that
//! never reached a socket also comes back in its [`Error::NotSent`]
//! (see [`Error::take_request`]) from the crate's layers.
//! A policy of your own gets `clone_request` for every attempt, as with
//! tower's `Retry`. On the 2-core bench machine (`benches/retry.rs`, GET
//! with 64 callers, callgrind) the layer's own code takes about 400
//! instructions per GET (560 when it copied every request) and no
//! allocation.
//!
//! Each retry is a `tracing` event (target `redis_layers::retry`, debug)
//! and, with the `metrics` feature, counts in [`RETRIES`] by `reason`
//! (`closed`, `connection`, `timeout`, or the server error code).
//!
//! # Settings
//!
//! | setting | default | |
//! |---|---|---|
//! | `max_retries` | 3 | per request; 0 turns retries off |
//! | backoff `base` | 10 ms | wait before the first retry, doubled each retry |
//! | backoff `max` | 1 s | longest wait |
//! | backoff `jitter` | 0.5 | each wait is uniform in `[d/2, d]` |
//! | budget | [`RetryBudget::default()`] | retries up to 20% of the requests of the last 10 s, plus 10 per second; shared by every service of one layer |
//! | classifier | [`classify`] | which errors are retried for which requests |
//!
//! Replace any of them on [`RetryLayer`], or bring a whole
//! `tower::retry::Policy<Request, Response, Error>` of your own with
//! [`RetryLayer::with_policy`].
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_layers::handoff::HandoffLayer;
//! use redis_layers::relax::RelaxTimeoutLayer;
//! use redis_layers::retry::{classify, RetryLayer, Retryable};
//! use redis_layers::{cmd, Connector, Endpoint, Error, Request, ServerErrorKind};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), Error> {
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::new()
//!             .max_retries(5)
//!             // The RelaxTimeout's: one deadline for the whole call.
//!             .command_timeout(Some(Duration::from_secs(1)))
//!             .backoff_range(Duration::from_millis(20), Duration::from_secs(2))
//!             .classifier(|e: &Error| match e.server_error().map(|s| s.kind()) {
//!                 // Also wait out a running script.
//!                 Some(ServerErrorKind::Busy) => Retryable::NotApplied,
//!                 _ => classify(e),
//!             }),
//!     )
//!     .layer(RelaxTimeoutLayer::new(Duration::from_secs(1)))
//!     .layer(HandoffLayer::new(Endpoint::tcp("127.0.0.1", 6379)))
//!     .service(Connector::new());
//! // SET of a fixed value: safe to repeat, so say so.
//! let set = Request::from(cmd("SET").arg("k").arg("v")).idempotent();
//! svc.clone().oneshot(set).await?;
//! # Ok(()) }
//! ```

mod backoff;
mod budget;
mod future;
mod kept;
mod layer;
mod policy;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_service::Service;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use future::ResponseFuture;
pub use layer::RetryLayer;
pub use policy::{classify, RedisPolicy, Retryable};
pub use tower::retry::budget::{Budget, TpsBudget};
pub use tower::retry::Policy;

use crate::error::Error;
use crate::maint::Maintained;
use crate::request::{CommandTimeout, Request, Response};
use kept::{redis_policy, Kept};

/// Counter (feature `metrics`): retries, by `reason` (`closed`,
/// `connection`, `timeout`, `TRYAGAIN`, `LOADING`, `CLUSTERDOWN`,
/// `MASTERDOWN`, `READONLY`, `other`).
pub const RETRIES: &str = "redis.client.retries";

/// A command service that retries failed requests as its policy says;
/// see the [module docs](self).
///
/// Each request takes a clone of the inner service (for its retries) and
/// of the policy, and a copy of the request (kept inline for a short
/// command with the [`RedisPolicy`]; see the [module docs](self)).
#[derive(Debug)]
pub struct Retry<S, P = RedisPolicy> {
    inner: S,
    policy: P,
    /// The inner service's `poll_ready` failed: the next request starts
    /// as not sent.
    unready: Option<Error>,
    /// The inner service was not ready within the command timeout: the
    /// next request waits for it in its own future (a blocking one, whose
    /// deadline is its own), or fails with [`Error::Timeout`].
    deferred: bool,
    /// The wait for the inner service, under way: when it began (the next
    /// request's clock starts there) and when it gives up.
    waiting: Option<(Instant, Pin<Box<tokio::time::Sleep>>)>,
    /// The budget of a request without a timeout of its own.
    timeout: Option<Duration>,
}

/// A clone is not ready (tower's contract): it waits on its own.
impl<S: Clone, P: Clone> Clone for Retry<S, P> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            unready: None,
            deferred: false,
            waiting: None,
            timeout: self.timeout,
        }
    }
}

impl<S, P> Retry<S, P> {
    /// Wraps `inner` with `policy`. Requests without a timeout of their
    /// own get no deadline here (see [`Retry::command_timeout`]).
    pub fn new(inner: S, policy: P) -> Self {
        Retry {
            inner,
            policy,
            unready: None,
            deferred: false,
            waiting: None,
            timeout: None,
        }
    }

    /// The deadline of a request without a timeout of its own (that is
    /// not blocking): `timeout` after the call (`None`: none). Give it the
    /// command timeout of the [`RelaxTimeout`](crate::relax::RelaxTimeout)
    /// below; see the [module docs](self) for what the deadline bounds.
    /// At most [`MAX_TIMEOUT`](crate::MAX_TIMEOUT).
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::retry::{RedisPolicy, Retry};
    /// # let inner = tower::service_fn(|_: redis_layers::Request| async {
    /// #     Ok::<_, redis_layers::Error>(redis_layers::Response::Value(redis_layers::Value::Null))
    /// # });
    /// let svc = Retry::new(inner, RedisPolicy::new()).command_timeout(Some(Duration::from_secs(1)));
    /// # let _ = svc;
    /// ```
    pub fn command_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into().map(crate::time::clamp);
        self
    }

    /// When a call of `req` that started at `start` must be over; `None`:
    /// never (a request without a timeout, a blocking one without its own).
    fn deadline(&self, req: &Request, start: Instant) -> Option<Instant> {
        let budget = match req.timeout() {
            CommandTimeout::After(d) => d,
            CommandTimeout::Never => return None,
            CommandTimeout::Default => match self.timeout {
                Some(d) if !req.is_blocking() => d,
                _ => return None,
            },
        };
        Some(crate::time::after(start, budget))
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, by value.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl<S: Maintained, P> Maintained for Retry<S, P> {
    // The RedisPolicy never retries a redirect: the inner service's error
    // comes back as it was. (A policy of the caller's that rewrites it
    // costs the Cluster's resend: the caller gets the MOVED.)
    const RETURNS_REDIRECTED: bool = S::RETURNS_REDIRECTED;

    fn maintenance(&self) -> &std::sync::Arc<crate::maint::MaintenanceState> {
        self.inner.maintenance()
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::maint::MaintEvent> {
        self.inner.subscribe()
    }

    fn maintenance_handle(&self) -> crate::maint::MaintenanceHandle {
        self.inner.maintenance_handle()
    }
}

impl<S, P> Service<Request> for Retry<S, P>
where
    S: Service<Request, Response = Response, Error = Error> + Clone,
    P: Policy<Request, Response, Error> + Clone + 'static,
{
    type Response = Response;
    type Error = Error;
    type Future = ResponseFuture<S, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.deferred || self.unready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            // The wait for the inner service (a dial, a handshake) spends
            // the next request's budget: its clock starts now. The caller
            // waits here, so this clone's requests keep their order, but
            // no longer than the command timeout (see the module docs).
            Poll::Pending => {
                let Some(budget) = self.timeout else {
                    return Poll::Pending;
                };
                let (_, give_up) = self.waiting.get_or_insert_with(|| {
                    let now = Instant::now();
                    let end = crate::time::after(now, budget);
                    (now, Box::pin(tokio::time::sleep_until(end)))
                });
                std::task::ready!(give_up.as_mut().poll(cx));
                self.deferred = true;
                Poll::Ready(Ok(()))
            }
            // Not the caller's failure yet: the request goes to the policy
            // as one not sent (see the module docs).
            Poll::Ready(Err(e)) => {
                self.unready = Some(e);
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let mut policy = self.policy.clone();
        let now = Instant::now();
        let start = self.waiting.take().map_or(now, |(at, _)| at);
        let deadline = self.deadline(&req, start);
        if std::mem::take(&mut self.deferred) {
            // The command timeout passed while the service was not ready.
            // A request with a longer budget (or none: a blocking one)
            // waits on in its own future; the others are out of time.
            let service = self.inner.clone();
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return ResponseFuture::unsent(
                    Kept::Nothing,
                    service,
                    policy,
                    deadline,
                    Error::Timeout,
                );
            }
            return ResponseFuture::readying(req, service, policy, deadline);
        }
        match self.unready.take() {
            None => {
                // The layers below see the budget: a cluster's routing
                // (a node's first connection, a refresh) spends it too.
                let req = match deadline {
                    Some(at) if req.timeout() == CommandTimeout::Default => {
                        req.with_timeout(at.saturating_duration_since(now))
                    }
                    _ => req,
                };
                let kept = Kept::of(&mut policy, &req);
                let fut = self.inner.call(req);
                ResponseFuture::called(kept, self.inner.clone(), policy, deadline, fut)
            }
            Some(e) => {
                // The original goes back to be sent on the first retry (a
                // policy of the caller's still makes its copy, as it would
                // for any request).
                let send = match redis_policy(&mut policy) {
                    Some(p) => p.may_retry(),
                    None => policy.clone_request(&req).is_some(),
                };
                let kept = if send {
                    Kept::Request(req)
                } else {
                    Kept::Nothing
                };
                ResponseFuture::unsent(kept, self.inner.clone(), policy, deadline, e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::time::Instant;
    use tower::ServiceExt;

    use super::*;
    use crate::resp::{cmd, Value};

    /// A scripted service: each `poll_ready` and each call takes the next
    /// step; it records when calls happen.
    #[derive(Clone, Default)]
    struct Script {
        ready: Arc<Mutex<VecDeque<Error>>>,
        replies: Arc<Mutex<VecDeque<Result<Response, Error>>>>,
        calls: Arc<Mutex<Vec<Instant>>>,
        sent: Arc<Mutex<Vec<Request>>>,
    }

    impl Script {
        /// A script that answers with `replies`, in turn.
        fn replying(replies: impl IntoIterator<Item = Result<Response, Error>>) -> Self {
            let script = Script::default();
            script.replies.lock().unwrap().extend(replies);
            script
        }
    }

    impl Service<Request> for Script {
        type Response = Response;
        type Error = Error;
        type Future = std::future::Ready<Result<Response, Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
            Poll::Ready(self.ready.lock().unwrap().pop_front().map_or(Ok(()), Err))
        }

        fn call(&mut self, req: Request) -> Self::Future {
            self.calls.lock().unwrap().push(Instant::now());
            self.sent.lock().unwrap().push(req);
            let r = self.replies.lock().unwrap().pop_front();
            std::future::ready(r.unwrap_or(Ok(Response::Value(Value::Integer(1)))))
        }
    }

    fn reset() -> Error {
        io::Error::from(io::ErrorKind::ConnectionReset).into()
    }

    fn layer(retries: u32) -> RetryLayer {
        RetryLayer::new()
            .max_retries(retries)
            .backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(60)).jitter(0.0))
            .budget(TpsBudget::new(Duration::from_secs(10), 1000, 1.0))
    }

    #[tokio::test(start_paused = true)]
    async fn waits_grow_exponentially_up_to_the_cap() {
        let script = Script::default();
        script
            .replies
            .lock()
            .unwrap()
            .extend((0..4).map(|_| Err(Error::Closed)));
        let svc = tower::Layer::layer(&layer(5), script.clone());
        let reply = svc.oneshot(cmd("INCR").arg("n").into()).await.unwrap();
        assert_eq!(reply, Response::Value(Value::Integer(1)));
        let calls = script.calls.lock().unwrap().clone();
        let gaps: Vec<_> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        let ms = Duration::from_millis;
        assert_eq!(gaps, [ms(10), ms(20), ms(40), ms(60)]);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries_with_the_last_error() {
        let script = Script::default();
        script
            .replies
            .lock()
            .unwrap()
            .extend((0..9).map(|_| Err(Error::Closed)));
        let svc = tower::Layer::layer(&layer(2), script.clone());
        let err = svc.oneshot(cmd("GET").arg("k").into()).await.unwrap_err();
        assert!(matches!(err, Error::Closed), "{err}");
        assert_eq!(script.calls.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_may_have_run_is_not_resent() {
        let script = Script::default();
        script.replies.lock().unwrap().push_back(Err(reset()));
        let svc = tower::Layer::layer(&layer(3), script.clone());
        let err = svc.oneshot(cmd("INCR").arg("n").into()).await.unwrap_err();
        assert!(matches!(err, Error::Io(_)), "{err}");
        assert_eq!(script.calls.lock().unwrap().len(), 1);
        // The same read is resent.
        script.replies.lock().unwrap().push_back(Err(reset()));
        let svc = tower::Layer::layer(&layer(3), script.clone());
        svc.oneshot(cmd("GET").arg("n").into()).await.unwrap();
        assert_eq!(script.calls.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_readiness_means_not_sent() {
        // Two failed reconnects, then the write goes out once.
        let script = Script::default();
        script.ready.lock().unwrap().extend([reset(), reset()]);
        let svc = tower::Layer::layer(&layer(3), script.clone());
        svc.oneshot(cmd("INCR").arg("n").into()).await.unwrap();
        assert_eq!(script.calls.lock().unwrap().len(), 1);
        // When the policy gives up, the caller gets the real cause.
        let script = Script::default();
        let refused: Error = io::Error::from(io::ErrorKind::ConnectionRefused).into();
        script
            .ready
            .lock()
            .unwrap()
            .extend((0..5).map(|_| refused.clone()));
        let svc = tower::Layer::layer(&layer(1), script.clone());
        let err = svc.oneshot(cmd("INCR").arg("n").into()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused),
            "{err}"
        );
        assert!(script.calls.lock().unwrap().is_empty());
        // Authentication failures are not retried.
        let script = Script::default();
        let auth = Error::Auth(crate::ServerError::parse("WRONGPASS x"));
        script.ready.lock().unwrap().extend([auth.clone(), auth]);
        let svc = tower::Layer::layer(&layer(3), script.clone());
        let err = svc.oneshot(cmd("GET").arg("n").into()).await.unwrap_err();
        assert!(matches!(err, Error::Auth(_)), "{err}");
        assert_eq!(script.ready.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_resends_the_request_as_it_was() {
        // Short (kept inline), long (copied) and pipelined, with settings.
        let short = Request::from(cmd("SET").arg("k").arg("v"))
            .with_timeout(Duration::from_millis(200))
            .idempotent();
        let long = Request::from(cmd("SET").arg("k").arg("v".repeat(100)))
            .without_timeout()
            .idempotent();
        let pipe = Request::from(crate::Pipeline::new().cmd(cmd("GET").arg("k")));
        for req in [short, long, pipe] {
            let script = Script::default();
            // Not written, then written and lost (retried: idempotent or
            // read-only), then refused before running.
            script.ready.lock().unwrap().push_back(reset());
            script.replies.lock().unwrap().extend([
                Err(reset()),
                Err(Error::Server(crate::ServerError::parse("LOADING x"))),
            ]);
            let svc = tower::Layer::layer(&layer(3), script.clone());
            svc.oneshot(req.clone()).await.unwrap();
            let sent = script.sent.lock().unwrap().clone();
            assert_eq!(sent.len(), 3);
            // As it was, except that a retry of a request with a timeout
            // of its own gets what is left of it (here after the waits of
            // 10, 20 and 40 ms, every attempt being a retry).
            if let CommandTimeout::After(_) = req.timeout() {
                let ms = Duration::from_millis;
                for r in &sent {
                    assert_eq!(r.body(), req.body());
                    assert_eq!(r.is_idempotent(), req.is_idempotent());
                }
                let timeouts: Vec<_> = sent.iter().map(Request::timeout).collect();
                assert_eq!(
                    timeouts,
                    [190, 170, 130].map(|t| CommandTimeout::After(ms(t)))
                );
            } else {
                assert_eq!(sent, vec![req.clone(); 3]);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_deadline_covers_every_attempt_and_wait() {
        // Refused every time (retried for any request), waits 10, 20, 40,
        // 60, ... ms; 100 ms in all. Attempts at 0, 10, 30 and 70 ms: the
        // next wait (60 ms) would end after the deadline, so it stops.
        let ms = Duration::from_millis;
        let refused = || Err(Error::Server(crate::ServerError::parse("LOADING x")));
        let timed = Request::from(cmd("INCR").arg("n")).with_timeout(ms(100));
        let default = Request::from(cmd("INCR").arg("n"));
        for (req, layer) in [
            (timed, layer(10)),
            (default.clone(), layer(10).command_timeout(Some(ms(100)))),
        ] {
            let script = Script::replying((0..20).map(|_| refused()));
            let svc = tower::Layer::layer(&layer, script.clone());
            let t0 = Instant::now();
            let err = svc.oneshot(req).await.unwrap_err();
            assert!(matches!(err, Error::Server(_)), "the last error: {err}");
            let calls = script.calls.lock().unwrap().clone();
            let at: Vec<_> = calls.iter().map(|c| *c - t0).collect();
            assert_eq!(at, [0, 10, 30, 70].map(ms));
            assert!(t0.elapsed() <= ms(100));
        }
        // No deadline: every retry is made (a blocking command, a request
        // without a timeout, a layer without a command timeout).
        let blocking = Request::from(cmd("BLPOP").arg("k").arg(0));
        for (req, layer) in [
            (blocking, layer(10).command_timeout(Some(ms(100)))),
            (default.clone().without_timeout(), layer(10)),
            (default, layer(10)),
        ] {
            let script = Script::replying((0..20).map(|_| refused()));
            let svc = tower::Layer::layer(&layer, script.clone());
            svc.oneshot(req).await.unwrap_err();
            assert_eq!(script.calls.lock().unwrap().len(), 11);
        }
    }

    /// A service that is never ready (a server that never answers the
    /// handshake): its callers wait, and their deadline ends the wait.
    #[derive(Clone)]
    struct NeverReady;

    impl Service<Request> for NeverReady {
        type Response = Response;
        type Error = Error;
        type Future = std::future::Ready<Result<Response, Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
            Poll::Pending
        }

        fn call(&mut self, _: Request) -> Self::Future {
            std::future::ready(Err(Error::config("called while not ready")))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_service_spends_the_budget() {
        let ms = Duration::from_millis;
        for retries in [0, 3] {
            let layer = layer(retries).command_timeout(Some(ms(100)));
            let t0 = Instant::now();
            let err = tower::Layer::layer(&layer, NeverReady)
                .oneshot(cmd("GET").arg("k").into())
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Timeout), "{err}");
            assert_eq!(t0.elapsed(), ms(100));
        }
        // Without a deadline it still waits.
        let svc = tower::Layer::layer(&layer(3), NeverReady);
        let wait = tokio::time::timeout(ms(10_000), svc.oneshot(cmd("GET").arg("k").into()));
        assert!(wait.await.is_err(), "no deadline: still waiting");
    }

    /// A policy of the caller's that waits a second before each retry.
    #[derive(Clone)]
    struct Slow;

    impl Policy<Request, Response, Error> for Slow {
        type Future = tokio::time::Sleep;

        fn retry(
            &mut self,
            _: &mut Request,
            r: &mut Result<Response, Error>,
        ) -> Option<Self::Future> {
            r.is_err()
                .then(|| tokio::time::sleep(Duration::from_secs(1)))
        }

        fn clone_request(&mut self, req: &Request) -> Option<Request> {
            Some(req.clone())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_a_policys_wait_short() {
        let script = Script::default();
        script.replies.lock().unwrap().push_back(Err(Error::Closed));
        let layer = RetryLayer::with_policy(Slow).command_timeout(Some(Duration::from_millis(100)));
        let t0 = Instant::now();
        let err = tower::Layer::layer(&layer, script.clone())
            .oneshot(cmd("GET").arg("k").into())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Closed), "the last error: {err}");
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert_eq!(script.calls.lock().unwrap().len(), 1);
    }

    /// A policy of the caller's: RedisPolicy's decisions, and a count of
    /// the copies it made.
    #[derive(Clone)]
    struct Copies(RedisPolicy, Arc<Mutex<Vec<Request>>>);

    impl Policy<Request, Response, Error> for Copies {
        type Future = <RedisPolicy as Policy<Request, Response, Error>>::Future;

        fn clone_request(&mut self, req: &Request) -> Option<Request> {
            self.1.lock().unwrap().push(req.clone());
            self.0.clone_request(req)
        }

        fn retry(
            &mut self,
            req: &mut Request,
            result: &mut Result<Response, Error>,
        ) -> Option<Self::Future> {
            self.0.retry(req, result)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_policy_of_the_callers_makes_every_copy() {
        let script = Script::default();
        script.ready.lock().unwrap().push_back(reset());
        script.replies.lock().unwrap().push_back(Err(Error::Closed));
        let copies = Arc::new(Mutex::new(Vec::new()));
        let policy = Copies(
            RedisPolicy::new()
                .backoff(Backoff::none())
                .budget(TpsBudget::new(Duration::from_secs(10), 1000, 1.0)),
            copies.clone(),
        );
        let svc = tower::Layer::layer(&RetryLayer::with_policy(policy), script.clone());
        let get = Request::from(cmd("GET").arg("k"));
        svc.oneshot(get.clone()).await.unwrap();
        // One copy before each attempt: unsent, failed, succeeded.
        assert_eq!(*copies.lock().unwrap(), vec![get.clone(); 3]);
        assert_eq!(*script.sent.lock().unwrap(), vec![get; 2]);
    }

    /// A budget that counts deposits and withdrawals.
    #[derive(Clone, Default)]
    struct Books(Arc<(AtomicU32, AtomicU32)>);

    impl Budget for Books {
        fn deposit(&self) {
            self.0 .0.fetch_add(1, Relaxed);
        }

        fn withdraw(&self) -> bool {
            self.0 .1.fetch_add(1, Relaxed);
            true
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_deposit_per_request_however_it_ends() {
        let books = Books::default();
        let layer = layer(3).budget(books.clone());
        let count = || (books.0 .0.load(Relaxed), books.0 .1.load(Relaxed));
        let script = Script::default();
        let get = || Request::from(cmd("GET").arg("k"));
        tower::Layer::layer(&layer, script.clone())
            .oneshot(get())
            .await
            .unwrap();
        assert_eq!(count(), (1, 0));
        script.replies.lock().unwrap().push_back(Err(Error::Closed));
        tower::Layer::layer(&layer, script.clone())
            .oneshot(get())
            .await
            .unwrap();
        assert_eq!(count(), (2, 1));
        script.replies.lock().unwrap().push_back(Err(reset()));
        let incr = Request::from(cmd("INCR").arg("n"));
        let svc = tower::Layer::layer(&layer, script.clone());
        svc.oneshot(incr).await.unwrap_err();
        assert_eq!(count(), (3, 1));
    }
}

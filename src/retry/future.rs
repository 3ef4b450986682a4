//! Future types

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::retry::Policy;
use tower_service::Service;

use super::kept::{redis_policy, Kept};
use crate::error::Error;
use crate::request::{Request, Response};

pin_project! {
    /// The reply to a request sent through a [`Retry`](super::Retry): the
    /// first attempt, and the retries its policy asks for, within the
    /// request's deadline (see the [module docs](super)).
    pub struct ResponseFuture<S, P>
    where
        S: Service<Request>,
        P: Policy<Request, Response, Error>,
    {
        // The copy for the next attempt.
        kept: Kept,
        service: S,
        policy: P,
        // When the call must be over; `None`: no deadline.
        deadline: Option<Instant>,
        // The deadline's timer, made the first time the call waits for
        // something other than a reply (a connection, a policy's backoff):
        // a request answered at once never makes one.
        timer: Option<Pin<Box<Sleep>>>,
        #[pin]
        state: State<S::Future, P::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, W> {
        // An attempt is under way.
        Called { #[pin] fut: F },
        // The service could not take the request (its `poll_ready`
        // failed): the request was not sent.
        Unsent { error: Option<Error> },
        // The policy's wait before the next attempt (boxed: a `Sleep` is
        // larger than the rest, and only a retry needs it).
        Waiting { pause: Pin<Box<Pause<W>>> },
        // Waiting for the service to be ready for the next attempt (or
        // the first, when it was not ready at `poll_ready`).
        Readying,
    }
}

pin_project! {
    // A policy's wait, and what the caller gets if the deadline ends it.
    struct Pause<W> {
        #[pin]
        wait: W,
        last: Option<Result<Response, Error>>,
    }
}

impl<S, P> ResponseFuture<S, P>
where
    S: Service<Request>,
    P: Policy<Request, Response, Error>,
{
    fn new(
        kept: Kept,
        service: S,
        policy: P,
        deadline: Option<Instant>,
        state: State<S::Future, P::Future>,
    ) -> Self {
        ResponseFuture {
            kept,
            service,
            policy,
            deadline,
            timer: None,
            state,
        }
    }

    pub(super) fn called(
        kept: Kept,
        service: S,
        policy: P,
        deadline: Option<Instant>,
        fut: S::Future,
    ) -> Self {
        Self::new(kept, service, policy, deadline, State::Called { fut })
    }

    pub(super) fn unsent(
        kept: Kept,
        service: S,
        policy: P,
        deadline: Option<Instant>,
        error: Error,
    ) -> Self {
        let state = State::Unsent { error: Some(error) };
        Self::new(kept, service, policy, deadline, state)
    }

    /// The first attempt waits for `service` to be ready, within the
    /// deadline; `req` is the request itself.
    pub(super) fn readying(req: Request, service: S, policy: P, deadline: Option<Instant>) -> Self {
        Self::new(
            Kept::Request(req),
            service,
            policy,
            deadline,
            State::Readying,
        )
    }
}

/// How the policy sees a failed `poll_ready`: the request was never
/// written, so a failure of the connection is [`Error::Closed`] ("never
/// written"); other errors (authentication, configuration) as they are.
fn as_unsent(e: &Error) -> Error {
    match e {
        Error::Io(_) | Error::Protocol(_) | Error::Timeout | Error::Closed => Error::Closed,
        e => e.clone(),
    }
}

/// The time left before `deadline` (`None`: no deadline).
fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|at| at.saturating_duration_since(Instant::now()))
}

/// The policy's wait before another attempt after `result`, or `None` (no
/// copy kept, the policy says no, or no time is left before `deadline`).
fn next_wait<P>(
    kept: &mut Kept,
    policy: &mut P,
    result: &mut Result<Response, Error>,
    deadline: Option<Instant>,
) -> Option<P::Future>
where
    P: Policy<Request, Response, Error> + 'static,
{
    let left = left(deadline);
    if left.is_some_and(|l| l.is_zero()) {
        // No retry can help: the RedisPolicy still counts the request in
        // its budget; a policy of the caller's is not asked.
        if let Some(p) = redis_policy(policy) {
            p.deposit_once();
        }
        return None;
    }
    let req = kept.request_mut()?;
    if let Some(p) = redis_policy(policy) {
        // It also declines a wait that would outlast the deadline.
        p.left = left;
    }
    policy.retry(req, result)
}

/// True once `deadline` has passed; arms `timer` (which then wakes this
/// task at the deadline) on first use.
fn expired(
    deadline: Option<Instant>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> bool {
    let Some(at) = deadline else {
        return false;
    };
    timer
        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
        .as_mut()
        .poll(cx)
        .is_ready()
}

impl<S, P> Future for ResponseFuture<S, P>
where
    S: Service<Request, Response = Response, Error = Error>,
    P: Policy<Request, Response, Error> + 'static,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                // No timer here: the attempt's own timeout (the time left,
                // relaxed by RelaxTimeout during maintenance) ends it.
                StateProj::Called { fut } => {
                    let mut result = ready!(fut.poll(cx));
                    // An inline copy means the RedisPolicy, which needs no
                    // request to settle a success.
                    if let (Kept::Inline(_), Some(p)) = (&this.kept, redis_policy(this.policy)) {
                        if p.settled(&result) {
                            return Poll::Ready(result);
                        }
                    }
                    match next_wait(this.kept, this.policy, &mut result, *this.deadline) {
                        Some(wait) => {
                            let last = Some(result);
                            let pause = Box::pin(Pause { wait, last });
                            this.state.set(State::Waiting { pause })
                        }
                        None => return Poll::Ready(result),
                    }
                }
                StateProj::Unsent { error } => {
                    let original = error.take().unwrap_or(Error::Closed);
                    let mut result = Err(as_unsent(&original));
                    match next_wait(this.kept, this.policy, &mut result, *this.deadline) {
                        Some(wait) => {
                            let last = Some(Err(original));
                            let pause = Box::pin(Pause { wait, last });
                            this.state.set(State::Waiting { pause })
                        }
                        // The caller gets the real cause (refused, ...).
                        None => return Poll::Ready(Err(original)),
                    }
                }
                StateProj::Waiting { pause } => {
                    let pause = pause.as_mut().project();
                    if pause.wait.poll(cx).is_pending() {
                        // The RedisPolicy's waits end before the deadline;
                        // a policy of the caller's may not.
                        if redis_policy(this.policy).is_none()
                            && expired(*this.deadline, this.timer, cx)
                        {
                            let last = pause.last.take();
                            return Poll::Ready(last.unwrap_or(Err(Error::Timeout)));
                        }
                        return Poll::Pending;
                    }
                    this.state.set(State::Readying);
                }
                StateProj::Readying => match this.service.poll_ready(cx) {
                    Poll::Pending => {
                        // Dialling, a handshake, a full queue: all spend
                        // the same budget.
                        if expired(*this.deadline, this.timer, cx) {
                            return Poll::Ready(Err(Error::Timeout));
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) => {
                        let Some(mut req) = this.kept.take() else {
                            return Poll::Ready(Err(Error::Closed));
                        };
                        if let Some(left) = left(*this.deadline) {
                            if left.is_zero() {
                                return Poll::Ready(Err(Error::Timeout));
                            }
                            // This attempt may take what is left (more
                            // while relaxed: RelaxTimeout raises it).
                            req = req.with_timeout(left);
                        }
                        *this.kept = Kept::of(this.policy, &req);
                        let fut = this.service.call(req);
                        this.state.set(State::Called { fut });
                    }
                    Poll::Ready(Err(e)) => this.state.set(State::Unsent { error: Some(e) }),
                },
            }
        }
    }
}

impl<S, P> std::fmt::Debug for ResponseFuture<S, P>
where
    S: Service<Request>,
    P: Policy<Request, Response, Error>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

//! Future types

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::retry::Policy;
use tower_service::Service;

use super::kept::{redis_policy, Kept};
use crate::error::Error;
use crate::request::{Request, Response};

pin_project! {
    /// The reply to a request sent through a [`Retry`](super::Retry): the
    /// first attempt, and the retries its policy asks for.
    pub struct ResponseFuture<S, P>
    where
        S: Service<Request>,
        P: Policy<Request, Response, Error>,
    {
        // The copy for the next attempt.
        kept: Kept,
        service: S,
        policy: P,
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
        Waiting { wait: Pin<Box<W>> },
        // Waiting for the service to be ready for the next attempt.
        Readying,
    }
}

impl<S, P> ResponseFuture<S, P>
where
    S: Service<Request>,
    P: Policy<Request, Response, Error>,
{
    pub(super) fn called(kept: Kept, service: S, policy: P, fut: S::Future) -> Self {
        ResponseFuture {
            kept,
            service,
            policy,
            state: State::Called { fut },
        }
    }

    pub(super) fn unsent(kept: Kept, service: S, policy: P, error: Error) -> Self {
        ResponseFuture {
            kept,
            service,
            policy,
            state: State::Unsent { error: Some(error) },
        }
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

/// The policy's wait before another attempt after `result`, or `None`
/// (no copy kept, or the policy says no).
fn next_wait<P>(
    kept: &mut Kept,
    policy: &mut P,
    result: &mut Result<Response, Error>,
) -> Option<Pin<Box<P::Future>>>
where
    P: Policy<Request, Response, Error>,
{
    let req = kept.request_mut()?;
    policy.retry(req, result).map(Box::pin)
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
                StateProj::Called { fut } => {
                    let mut result = ready!(fut.poll(cx));
                    // An inline copy means the RedisPolicy, which needs no
                    // request to settle a success.
                    if let (Kept::Inline(_), Some(p)) = (&this.kept, redis_policy(this.policy)) {
                        if p.settled(&result) {
                            return Poll::Ready(result);
                        }
                    }
                    match next_wait(this.kept, this.policy, &mut result) {
                        Some(wait) => this.state.set(State::Waiting { wait }),
                        None => return Poll::Ready(result),
                    }
                }
                StateProj::Unsent { error } => {
                    let original = error.take().unwrap_or(Error::Closed);
                    let mut result = Err(as_unsent(&original));
                    match next_wait(this.kept, this.policy, &mut result) {
                        Some(wait) => this.state.set(State::Waiting { wait }),
                        // The caller gets the real cause (refused, ...).
                        None => return Poll::Ready(Err(original)),
                    }
                }
                StateProj::Waiting { wait } => {
                    ready!(wait.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => match ready!(this.service.poll_ready(cx)) {
                    Ok(()) => {
                        let Some(req) = this.kept.take() else {
                            return Poll::Ready(Err(Error::Closed));
                        };
                        *this.kept = Kept::of(this.policy, &req);
                        let fut = this.service.call(req);
                        this.state.set(State::Called { fut });
                    }
                    Err(e) => this.state.set(State::Unsent { error: Some(e) }),
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

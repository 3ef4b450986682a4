use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::timer::{Fired, Slot};
use crate::maint::MaintenanceState;
use crate::{Error, Response};

pin_project! {
    /// The reply of a [`RelaxTimeout`](super::RelaxTimeout) service: the
    /// inner reply, or [`Error::Timeout`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // The layer's shared deadline queue (the common case)...
        slot: Option<Arc<Slot>>,
        // ...or a timer of its own (own timeout, relaxed, or extended).
        #[pin]
        sleep: Option<Sleep>,
        start: Instant,
        configured: Duration,
        state: Option<Arc<MaintenanceState>>,
    }
}

impl<F> ResponseFuture<F> {
    /// No timeout.
    pub(super) fn unbounded(inner: F) -> Self {
        ResponseFuture {
            inner,
            slot: None,
            sleep: None,
            start: Instant::now(),
            configured: Duration::ZERO,
            state: None,
        }
    }

    /// A deadline in the layer's shared queue. An extension by a relaxation
    /// is final (the relaxed timeout of an endpoint does not change), so no
    /// state is kept: one `Arc` clone less per request.
    pub(super) fn queued(inner: F, slot: Arc<Slot>, start: Instant, configured: Duration) -> Self {
        ResponseFuture {
            inner,
            slot: Some(slot),
            sleep: None,
            start,
            configured,
            state: None,
        }
    }

    /// A timer of its own.
    pub(super) fn timed(
        inner: F,
        start: Instant,
        configured: Duration,
        state: Arc<MaintenanceState>,
    ) -> Self {
        let relaxed = state.relaxed_timeout();
        let deadline = start + relaxed.map_or(configured, |r| r.max(configured));
        ResponseFuture {
            inner,
            slot: None,
            sleep: Some(tokio::time::sleep_until(deadline)),
            start,
            configured,
            state: Some(state),
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, Error>>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r);
        }
        if let Some(slot) = this.slot.as_ref() {
            match slot.poll_fired(cx.waker()) {
                None => return Poll::Pending,
                Some(Fired::Expired) => return Poll::Ready(Err(Error::Timeout)),
                Some(Fired::Extended(at)) => {
                    *this.slot = None;
                    this.sleep.set(Some(tokio::time::sleep_until(at)));
                }
            }
        }
        let Some(mut sleep) = this.sleep.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        loop {
            ready!(sleep.as_mut().poll(cx));
            // A relaxation that began after the request left extends it.
            let relaxed = this.state.as_ref().and_then(|s| s.relaxed_timeout());
            let deadline =
                *this.start + relaxed.map_or(*this.configured, |r| r.max(*this.configured));
            if deadline <= Instant::now() {
                return Poll::Ready(Err(Error::Timeout));
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

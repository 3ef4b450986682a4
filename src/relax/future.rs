use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::maint::MaintenanceState;
use crate::{Error, Response};

pin_project! {
    /// The reply of a [`RelaxTimeout`](super::RelaxTimeout) service: the
    /// inner reply, or [`Error::Timeout`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        start: Instant,
        configured: Option<Duration>,
        state: Option<Arc<MaintenanceState>>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(
        inner: F,
        configured: Option<Duration>,
        state: Option<Arc<MaintenanceState>>,
    ) -> Self {
        let start = Instant::now();
        let sleep = configured.map(|c| {
            let relaxed = state.as_ref().and_then(|s| s.relaxed_timeout());
            tokio::time::sleep_until(start + relaxed.map_or(c, |r| r.max(c)))
        });
        ResponseFuture {
            inner,
            sleep,
            start,
            configured,
            state,
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
        let Some(mut sleep) = this.sleep.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        loop {
            ready!(sleep.as_mut().poll(cx));
            // A relaxation that began after the request left extends it.
            let relaxed = this.state.as_ref().and_then(|s| s.relaxed_timeout());
            let configured = this.configured.unwrap_or_default();
            let deadline = *this.start + relaxed.map_or(configured, |r| r.max(configured));
            if deadline <= Instant::now() {
                return Poll::Ready(Err(Error::Timeout));
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

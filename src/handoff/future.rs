//! Future types

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use super::pool::Lease;
use crate::error::Error;
use crate::request::Response;

pin_project! {
    /// The reply to a request sent through a [`Handoff`](super::Handoff).
    ///
    /// It holds the connection's lease until the reply is in, so a
    /// connection being moved away from closes only after its last reply.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
        lease: Option<Lease>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Waiting { #[pin] inner: F },
        Failed { error: Option<Error> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, lease: Option<Lease>) -> Self {
        ResponseFuture {
            kind: Kind::Waiting { inner },
            lease,
        }
    }

    pub(crate) fn failed(error: Error) -> Self {
        ResponseFuture {
            kind: Kind::Failed { error: Some(error) },
            lease: None,
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, Error>>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.kind.project() {
            KindProj::Waiting { inner } => ready!(inner.poll(cx)),
            KindProj::Failed { error } => Err(error.take().unwrap_or(Error::Closed)),
        };
        this.lease.take();
        Poll::Ready(out)
    }
}

pin_project! {
    /// The reply to a request sent on a [`Leased`](super::Leased)
    /// connection: a [`ResponseFuture`] that also tells the lease when the
    /// reply to a blocking command is in.
    #[derive(Debug)]
    pub struct LeaseFuture<F> {
        #[pin]
        inner: ResponseFuture<F>,
        // The lease's count of blocking commands without their reply, and
        // how many this request holds.
        blocking: Option<(Arc<AtomicUsize>, usize)>,
    }
}

impl<F> LeaseFuture<F> {
    pub(crate) fn new(
        inner: ResponseFuture<F>,
        blocking: Option<(Arc<AtomicUsize>, usize)>,
    ) -> Self {
        LeaseFuture { inner, blocking }
    }
}

impl<F> Future for LeaseFuture<F>
where
    F: Future<Output = Result<Response, Error>>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        if settled(&out) {
            if let Some((count, n)) = this.blocking.take() {
                count.fetch_sub(n, Ordering::SeqCst);
            }
        }
        Poll::Ready(out)
    }
}

/// True when `out` says the command is over on the server: a reply, or the
/// server's error. A timeout or a lost connection may not be: a blocking
/// command may still block there.
fn settled(out: &Result<Response, Error>) -> bool {
    matches!(out, Ok(_) | Err(Error::Server(_)))
}

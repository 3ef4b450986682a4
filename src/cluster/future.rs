//! Future types

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use super::{needs_fixup, Fixup, Kept};
use crate::error::{Error, Result};
use crate::request::Response;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response>> + Send>>;

pin_project! {
    /// The reply to a request sent through a [`Cluster`](super::Cluster).
    ///
    /// On the fast path it is the node's own future; a reply that is a
    /// redirect (`MOVED`/`ASK`) continues on the node it names.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Direct {
            #[pin]
            fut: F,
            // No `Option`: dropping these is then no call of its own.
            fixup: Arc<dyn Fixup>,
            kept: Kept,
        },
        Boxed { fut: BoxFuture },
        Failed { error: Option<Error> },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad("cluster::ResponseFuture")
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn direct(fut: F, shared: Arc<dyn Fixup>, copy: Kept) -> Self {
        ResponseFuture {
            kind: Kind::Direct {
                fut,
                fixup: shared,
                kept: copy,
            },
        }
    }

    pub(super) fn boxed(fut: BoxFuture) -> Self {
        ResponseFuture {
            kind: Kind::Boxed { fut },
        }
    }

    pub(super) fn failed(error: Error) -> Self {
        ResponseFuture {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

/// The future that follows the redirect in `out` (kept out of the fast
/// path's code).
#[cold]
fn redirect(shared: Arc<dyn Fixup>, kept: Kept, out: Result<Response>) -> BoxFuture {
    shared.fixup(kept, out)
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response>>,
{
    type Output = Result<Response>;

    // Inlined into the caller's poll: a call of its own costs a prologue
    // and an epilogue on each of the two polls of every request.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        if let KindProj::Direct { fut, fixup, kept } = kind.as_mut().project() {
            // The fast path: the node's reply, as it is.
            let out = ready!(fut.poll(cx));
            if !needs_fixup(&out) {
                return Poll::Ready(out);
            }
            let next = redirect(fixup.clone(), kept.take(), out);
            kind.set(Kind::Boxed { fut: next });
        }
        match kind.project() {
            KindProj::Boxed { fut } => fut.as_mut().poll(cx),
            KindProj::Failed { error } => Poll::Ready(Err(error.take().unwrap_or(Error::Closed))),
            // Left above.
            KindProj::Direct { .. } => Poll::Ready(Err(Error::Closed)),
        }
    }
}

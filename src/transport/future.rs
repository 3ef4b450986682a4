//! Future types

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::request::Response;

/// The reply to a request sent on a [`Connection`](super::Connection).
///
/// Dropping it before the reply arrives is safe: the reply is still read
/// off the socket (and discarded), so later replies stay matched to their
/// callers; a request not yet written when it is dropped is not sent.
#[derive(Debug)]
pub struct ResponseFuture {
    state: State,
}

#[derive(Debug)]
enum State {
    Waiting(oneshot::Receiver<Result<Response>>),
    Ready(Option<Result<Response>>),
}

impl ResponseFuture {
    pub(crate) fn waiting(rx: oneshot::Receiver<Result<Response>>) -> Self {
        ResponseFuture {
            state: State::Waiting(rx),
        }
    }

    pub(crate) fn ready(r: Result<Response>) -> Self {
        ResponseFuture {
            state: State::Ready(Some(r)),
        }
    }

    pub(crate) fn failed(e: Error) -> Self {
        ResponseFuture {
            state: State::Ready(Some(Err(e))),
        }
    }

    pub(crate) fn done(r: Response) -> Self {
        ResponseFuture {
            state: State::Ready(Some(Ok(r))),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            // The driver always answers before dropping the sender, except
            // when its task is gone (runtime shut down): then it is closed.
            State::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(Error::Closed))),
            State::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(Error::Closed))),
        }
    }
}

/// The connection being made by a [`Connector`](super::Connector).
///
/// Boxed: connecting is not on the per-command path, and the box keeps the
/// type nameable.
pub struct ConnectFuture {
    inner: super::connector::BoxConnect,
}

impl ConnectFuture {
    pub(crate) fn new(inner: super::connector::BoxConnect) -> Self {
        ConnectFuture { inner }
    }
}

impl std::fmt::Debug for ConnectFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad("ConnectFuture")
    }
}

impl Future for ConnectFuture {
    type Output = Result<super::Connection>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

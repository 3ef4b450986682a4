//! Future types

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::{AcquireError, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::{Shared, Slot};
use crate::error::Error;
use crate::transport::Endpoint;

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

pin_project! {
    /// The connection dialled through a [`DialLimit`](super::DialLimit):
    /// waits for a permit and a rate slot (at most `max_queue_time`, then
    /// [`Error::Timeout`]), then dials with the inner maker, holding the
    /// permit until the connection is made or has failed.
    ///
    /// ```
    /// use redis_layers::dial::{DialLimit, ResponseFuture};
    /// use redis_layers::{Connector, Endpoint};
    /// use tower::Service;
    ///
    /// # async fn run() {
    /// let mut maker = DialLimit::new(Connector::new());
    /// let dial: ResponseFuture<Connector> = maker.call(Endpoint::tcp("127.0.0.1", 6379));
    /// # }
    /// ```
    pub struct ResponseFuture<S: Service<Endpoint>> {
        #[pin]
        phase: Phase<S::Future>,
        inner: S,
        endpoint: Option<Endpoint>,
        deadline: Instant,
        acquire: Option<Acquire>,
        permit: Option<OwnedSemaphorePermit>,
        // The queue deadline while waiting for a permit, then the slot.
        sleep: Option<Pin<Box<Sleep>>>,
        ticket: Ticket,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase<F> {
        Queued,
        Waiting,
        Ready,
        Dialling { #[pin] fut: F },
        Done,
    }
}

impl<S: Service<Endpoint>> fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Queued => "queued",
            Phase::Waiting => "waiting for its slot",
            Phase::Ready => "ready",
            Phase::Dialling { .. } => "dialling",
            Phase::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("phase", &phase)
            .field("endpoint", &self.endpoint)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<S: Service<Endpoint>> ResponseFuture<S> {
    pub(super) fn new(inner: S, endpoint: Endpoint, shared: Arc<Shared>) -> Self {
        let deadline = crate::time::after(Instant::now(), shared.config().max_queue_time);
        shared.queue();
        ResponseFuture {
            phase: Phase::Queued,
            inner,
            endpoint: Some(endpoint),
            deadline,
            acquire: None,
            permit: None,
            sleep: None,
            ticket: Ticket {
                shared,
                state: TicketState::Queued,
            },
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Endpoint, Error = Error>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.phase.as_mut().project() {
                PhaseProj::Queued => {
                    let shared = this.ticket.shared.clone();
                    if let Some(sem) = shared.permits().filter(|_| this.permit.is_none()) {
                        if this.acquire.is_none() {
                            if let Ok(p) = sem.clone().try_acquire_owned() {
                                *this.permit = Some(p);
                            } else {
                                *this.acquire = Some(Box::pin(sem.clone().acquire_owned()));
                            }
                        }
                        if let Some(acquire) = this.acquire.as_mut() {
                            match acquire.as_mut().poll(cx) {
                                // The semaphore is never closed.
                                Poll::Ready(p) => *this.permit = p.ok(),
                                Poll::Pending => {
                                    let deadline = *this.deadline;
                                    let sleep = this.sleep.get_or_insert_with(|| {
                                        Box::pin(tokio::time::sleep_until(deadline))
                                    });
                                    ready!(sleep.as_mut().poll(cx));
                                    this.phase.set(Phase::Done);
                                    return Poll::Ready(Err(this.ticket.reject()));
                                }
                            }
                            *this.acquire = None;
                        }
                    }
                    match shared.slot(Instant::now(), *this.deadline) {
                        Slot::Now => this.phase.set(Phase::Ready),
                        Slot::At(at) => {
                            match this.sleep.as_mut() {
                                Some(s) => s.as_mut().reset(at),
                                None => *this.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
                            }
                            this.phase.set(Phase::Waiting);
                        }
                        Slot::TooLate => {
                            *this.permit = None;
                            this.phase.set(Phase::Done);
                            return Poll::Ready(Err(this.ticket.reject()));
                        }
                    }
                }
                PhaseProj::Waiting => {
                    if let Some(sleep) = this.sleep.as_mut() {
                        ready!(sleep.as_mut().poll(cx));
                    }
                    *this.sleep = None;
                    this.phase.set(Phase::Ready);
                }
                PhaseProj::Ready => {
                    if let Err(e) = ready!(this.inner.poll_ready(cx)) {
                        *this.permit = None;
                        this.phase.set(Phase::Done);
                        return Poll::Ready(Err(e));
                    }
                    *this.sleep = None;
                    let endpoint = this.endpoint.take().expect("dialled once");
                    this.ticket.start();
                    let fut = this.inner.call(endpoint);
                    this.phase.set(Phase::Dialling { fut });
                }
                PhaseProj::Dialling { fut } => {
                    let made = ready!(fut.poll(cx));
                    this.ticket.finish();
                    *this.permit = None;
                    this.phase.set(Phase::Done);
                    return Poll::Ready(made);
                }
                PhaseProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// Where a dial is in the counters; a dropped future leaves them right.
struct Ticket {
    shared: Arc<Shared>,
    state: TicketState,
}

#[derive(PartialEq, Eq)]
enum TicketState {
    Queued,
    Started,
    Done,
}

impl Ticket {
    fn start(&mut self) {
        self.shared.start();
        self.state = TicketState::Started;
    }

    fn finish(&mut self) {
        self.shared.finish();
        self.state = TicketState::Done;
    }

    fn reject(&mut self) -> Error {
        self.shared.reject();
        self.state = TicketState::Done;
        Error::Timeout
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match self.state {
            TicketState::Queued => self.shared.unqueue(),
            TicketState::Started => self.shared.finish(),
            TicketState::Done => {}
        }
    }
}

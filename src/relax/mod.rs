//! Per-command timeouts that relax during maintenance.
//!
//! [`RelaxTimeout`] gives every request a deadline: its own
//! ([`Request::with_timeout`](crate::Request::with_timeout)), or the layer's
//! default, or none for blocking commands (`BLPOP k 0` may wait forever) and
//! requests that ask for none. While the endpoint's
//! [`MaintenanceState`](crate::maint::MaintenanceState) is relaxed
//! (`MIGRATING`, `FAILING_OVER`, `SMIGRATING`, the post-handoff window), the
//! deadline is `max(configured, relaxed_timeout)`: a relaxation never
//! shortens a timeout and never gives one to a request that has none. A
//! relaxation that starts while a request is in flight extends it too: when
//! its timer fires, the deadline is checked again against the state.
//!
//! The per-command cost is one atomic load (not relaxed) and a timer.
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_layers::{cmd, relax::RelaxTimeoutLayer, Connector, Endpoint, Request};
//! use tower::{Layer, ServiceExt};
//!
//! # async fn run() -> Result<(), redis_layers::Error> {
//! let conn = Connector::new().connect(Endpoint::tcp("127.0.0.1", 6379)).await?;
//! let svc = RelaxTimeoutLayer::new(Duration::from_millis(200)).layer(conn);
//! let reply = svc.oneshot(Request::from(cmd("GET").arg("k"))).await?;
//! # Ok(()) }
//! ```

mod future;
mod layer;
mod timer;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

pub use future::ResponseFuture;
pub use layer::RelaxTimeoutLayer;

use crate::maint::Maintained;
use crate::{CommandTimeout, Error, Request, Response};

/// A command service with per-command timeouts relaxed during maintenance;
/// see the [module docs](self).
#[derive(Clone)]
pub struct RelaxTimeout<S> {
    inner: S,
    /// The default timeout's shared deadline queue.
    deadlines: Option<Arc<timer::Deadlines>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RelaxTimeout<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaxTimeout")
            .field("inner", &self.inner)
            .field("default", &self.deadlines.as_ref().map(|d| d.timeout()))
            .finish()
    }
}

impl<S> RelaxTimeout<S> {
    /// Wraps `inner`; requests without their own timeout get `default`
    /// (`None`: no timeout unless a request asks for one).
    pub fn new(inner: S, default: Option<Duration>) -> Self {
        RelaxTimeout {
            inner,
            deadlines: default.map(timer::Deadlines::new),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, by value.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Maintained> Maintained for RelaxTimeout<S> {
    fn maintenance(&self) -> &std::sync::Arc<crate::maint::MaintenanceState> {
        self.inner.maintenance()
    }
}

impl<S> Service<Request> for RelaxTimeout<S>
where
    S: Service<Request, Response = Response, Error = Error> + Maintained,
{
    type Response = Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let own = match req.timeout() {
            CommandTimeout::After(d) => Some(d),
            CommandTimeout::Never => return ResponseFuture::unbounded(self.inner.call(req)),
            CommandTimeout::Default if req.is_blocking() => {
                return ResponseFuture::unbounded(self.inner.call(req))
            }
            CommandTimeout::Default => None,
        };
        let start = tokio::time::Instant::now();
        let state = self.inner.maintenance();
        match (own, &self.deadlines) {
            // The common case: the default timeout, not relaxed.
            (None, Some(d)) if state.relaxed_timeout().is_none() => {
                let slot = d.push(state, start);
                let configured = d.timeout();
                ResponseFuture::queued(self.inner.call(req), slot, start, configured)
            }
            (None, Some(d)) => {
                let (configured, state) = (d.timeout(), state.clone());
                ResponseFuture::timed(self.inner.call(req), start, configured, state)
            }
            (Some(t), _) => {
                let state = state.clone();
                ResponseFuture::timed(self.inner.call(req), start, t, state)
            }
            (None, None) => ResponseFuture::unbounded(self.inner.call(req)),
        }
    }
}

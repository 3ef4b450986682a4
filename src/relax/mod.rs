//! Per-command timeouts that relax during maintenance.
//!
//! [`RelaxTimeout`] gives every request a deadline: its own
//! ([`Request::with_timeout`](crate::Request::with_timeout)), or the layer's
//! default, or none for blocking commands (`BLPOP k 0` may wait forever) and
//! requests that ask for none. While the endpoint's
//! [`MaintenanceState`](crate::maint::MaintenanceState) is relaxed
//! (`MIGRATING`, `FAILING_OVER`, `SMIGRATING`, the post-handoff window), the
//! deadline is `max(configured, relaxed_timeout)`: a relaxation never
//! shortens a timeout and never gives one to a request that has none.
//!
//! The layer decides the timeout and writes it into the request
//! ([`Request::with_timeout`](crate::Request::with_timeout)); the
//! [`Connection`](crate::Connection) enforces it: its driver keeps the
//! deadlines in request order with one timer for the earliest, reads the
//! clock once per batch, and fails a late request with
//! [`Error::Timeout`] (its reply is still read, and
//! dropped). A relaxation that starts while a request is in flight extends
//! it too: when its deadline passes, the driver checks the endpoint's state
//! again. The layer's own cost is one atomic load per request; a timer per
//! request (tokio `Sleep`) cost 12% of the throughput of a busy connection.
//! The clock starts when the connection takes the request for writing.
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

mod layer;

use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

pub use layer::RelaxTimeoutLayer;

use crate::maint::Maintained;
use crate::{CommandTimeout, Error, Request, Response};

/// A command service with per-command timeouts relaxed during maintenance;
/// see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RelaxTimeout<S> {
    inner: S,
    default: Option<Duration>,
}

impl<S> RelaxTimeout<S> {
    /// Wraps `inner`; requests without their own timeout get `default`
    /// (`None`: no timeout unless a request asks for one). At most
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT): a longer one is clamped to it.
    pub fn new(inner: S, default: impl Into<Option<Duration>>) -> Self {
        RelaxTimeout {
            inner,
            default: default.into().map(crate::time::clamp),
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

impl<S> Service<Request> for RelaxTimeout<S>
where
    S: Service<Request, Response = Response, Error = Error> + Maintained,
{
    type Response = Response;
    type Error = Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let configured = match req.timeout() {
            CommandTimeout::After(d) => d,
            CommandTimeout::Never => return self.inner.call(req),
            CommandTimeout::Default if req.is_blocking() => return self.inner.call(req),
            CommandTimeout::Default => match self.default {
                Some(d) => d,
                None => return self.inner.call(req),
            },
        };
        // One atomic load when not relaxed.
        let effective = match self.inner.maintenance().relaxed_timeout() {
            Some(r) => r.max(configured),
            None => configured,
        };
        self.inner.call(req.with_timeout(effective))
    }
}

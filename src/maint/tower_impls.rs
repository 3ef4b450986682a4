//! Maintenance signals through tower's own middleware: [`Maintained`] for
//! the middleware that forwards it, and [`WithMaintenance`] for the rest.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::broadcast;
use tower_layer::Layer;
use tower_service::Service;

use super::{MaintEvent, Maintained, MaintenanceState};

/// A service's maintenance, apart from the service: which
/// [`MaintenanceState`] applies now, and its event stream. Made by
/// [`Maintained::maintenance_handle`]; for a
/// [`Handoff`](crate::handoff::Handoff) it follows the connections from
/// endpoint to endpoint.
#[derive(Clone)]
pub struct MaintenanceHandle {
    current: Arc<dyn Fn() -> Arc<MaintenanceState> + Send + Sync>,
    events: Arc<dyn Fn() -> broadcast::Receiver<MaintEvent> + Send + Sync>,
}

impl fmt::Debug for MaintenanceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaintenanceHandle")
            .field("current", &(self.current)())
            .finish()
    }
}

impl MaintenanceHandle {
    /// The handle of one state that never changes (a connection's).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use redis_layers::maint::{MaintenanceHandle, MaintenanceState};
    ///
    /// let state = Arc::new(MaintenanceState::new(Duration::from_secs(10), Duration::from_secs(30)));
    /// let handle = MaintenanceHandle::fixed(state.clone());
    /// assert!(Arc::ptr_eq(&handle.current(), &state));
    /// ```
    pub fn fixed(state: Arc<MaintenanceState>) -> Self {
        let s = state.clone();
        MaintenanceHandle {
            current: Arc::new(move || s.clone()),
            events: Arc::new(move || state.subscribe()),
        }
    }

    /// A handle that asks `current` for the state that applies now, and
    /// `events` for the event stream.
    pub fn new(
        current: impl Fn() -> Arc<MaintenanceState> + Send + Sync + 'static,
        events: impl Fn() -> broadcast::Receiver<MaintEvent> + Send + Sync + 'static,
    ) -> Self {
        MaintenanceHandle {
            current: Arc::new(current),
            events: Arc::new(events),
        }
    }

    /// The state that applies now.
    pub fn current(&self) -> Arc<MaintenanceState> {
        (self.current)()
    }

    /// A receiver of the maintenance events.
    pub fn subscribe(&self) -> broadcast::Receiver<MaintEvent> {
        (self.events)()
    }
}

/// A service that hides its inner one (tower's `Buffer`, `MapRequest`,
/// `MapErr`, ...), made [`Maintained`] with the inner service's
/// [`MaintenanceHandle`]. The state is read again at each `poll_ready`, so
/// a request is relaxed by the state of the endpoint its connection is on
/// when it is sent.
///
/// [`RelaxTimeout`](crate::relax::RelaxTimeout) (and a cluster's node
/// services) need a service that knows its endpoint's
/// [`MaintenanceState`]: that is the [`Maintained`] trait. tower's middleware
/// that keeps its inner service reachable forwards it, so these fit between
/// RelaxTimeout and Handoff as they are: `ConcurrencyLimit`, `RateLimit`,
/// `Timeout`, `MapFuture`, `Filter`, `AsyncFilter`, `Retry` and `Either`.
///
/// Middleware that hides its inner service (`Buffer`, `MapRequest`,
/// `MapResponse`, `MapErr`, `Then`, `AndThen`, `LoadShed`, boxed services)
/// cannot be asked; wrap it in [`WithMaintenance`] carrying the inner
/// service's [`MaintenanceHandle`]:
///
/// ```no_run
/// use std::time::Duration;
/// use redis_layers::handoff::HandoffLayer;
/// use redis_layers::maint::{Maintained, WithMaintenanceLayer};
/// use redis_layers::relax::RelaxTimeoutLayer;
/// use redis_layers::{cmd, Connector, Endpoint, Error};
/// use tower::{Layer, ServiceBuilder, ServiceExt};
///
/// # async fn run() -> Result<(), Error> {
/// let handoff = HandoffLayer::new(Endpoint::tcp("127.0.0.1", 6379)).layer(Connector::new());
/// let handle = handoff.maintenance_handle();
/// let svc = ServiceBuilder::new()
///     .layer(RelaxTimeoutLayer::new(Duration::from_millis(500)))
///     .layer(WithMaintenanceLayer::new(handle))
///     .map_err(Error::from)
///     .buffer(1024)
///     .service(handoff);
/// svc.oneshot(cmd("PING").into()).await?;
/// # Ok(()) }
/// ```
///
/// It declares [`Maintained::RETURNS_REDIRECTED`] false: what it wraps may
/// change requests or errors, so a cluster above keeps its own copy of
/// what it sends.
#[derive(Clone, Debug)]
pub struct WithMaintenance<S> {
    inner: S,
    handle: MaintenanceHandle,
    current: Arc<MaintenanceState>,
}

impl<S> WithMaintenance<S> {
    /// `inner`, carrying `handle`.
    pub fn new(inner: S, handle: MaintenanceHandle) -> Self {
        let current = handle.current();
        WithMaintenance {
            inner,
            handle,
            current,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, R> Service<R> for WithMaintenance<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let r = self.inner.poll_ready(cx);
        if r.is_ready() {
            let now = self.handle.current();
            if !Arc::ptr_eq(&now, &self.current) {
                self.current = now;
            }
        }
        r
    }

    fn call(&mut self, req: R) -> S::Future {
        self.inner.call(req)
    }
}

impl<S> Maintained for WithMaintenance<S> {
    fn maintenance(&self) -> &Arc<MaintenanceState> {
        &self.current
    }

    fn subscribe(&self) -> broadcast::Receiver<MaintEvent> {
        self.handle.subscribe()
    }

    fn maintenance_handle(&self) -> MaintenanceHandle {
        self.handle.clone()
    }
}

/// Builds [`WithMaintenance`] services carrying one handle.
#[derive(Clone, Debug)]
pub struct WithMaintenanceLayer {
    handle: MaintenanceHandle,
}

impl WithMaintenanceLayer {
    /// A layer whose services carry `handle`.
    pub fn new(handle: MaintenanceHandle) -> Self {
        WithMaintenanceLayer { handle }
    }
}

impl<S> Layer<S> for WithMaintenanceLayer {
    type Service = WithMaintenance<S>;

    fn layer(&self, inner: S) -> WithMaintenance<S> {
        WithMaintenance::new(inner, self.handle.clone())
    }
}

/// Wraps the services of any layer `L` in [`WithMaintenance`], carrying the
/// maintenance handle of the service `L` wraps: for tower middleware that
/// hides its inner service (`MapRequest`, `MapResponse`, `MapErr`, `Then`,
/// `AndThen`, `Buffer`, boxed services, or a whole
/// `ServiceBuilder` stack of them), so that RelaxTimeout or a cluster above
/// still see the endpoint's maintenance.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_layers::handoff::HandoffLayer;
/// use redis_layers::maint::CarryMaintenanceLayer;
/// use redis_layers::relax::RelaxTimeoutLayer;
/// use redis_layers::{cmd, Connector, Endpoint, Error, Request};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # async fn run() -> Result<(), Error> {
/// let svc = ServiceBuilder::new()
///     .layer(RelaxTimeoutLayer::new(Duration::from_millis(500)))
///     // MapRequest and Buffer hide the Handoff: carry its maintenance.
///     .layer(CarryMaintenanceLayer::new(
///         ServiceBuilder::new()
///             .map_request(|r: Request| r.idempotent())
///             .map_err(Error::from)
///             .buffer(1024)
///             .into_inner(),
///     ))
///     .layer(HandoffLayer::new(Endpoint::tcp("127.0.0.1", 6379)))
///     .service(Connector::new());
/// svc.oneshot(cmd("PING").into()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct CarryMaintenanceLayer<L> {
    inner: L,
}

impl<L> CarryMaintenanceLayer<L> {
    /// `layer`, whose services carry the maintenance of what they wrap.
    pub fn new(layer: L) -> Self {
        CarryMaintenanceLayer { inner: layer }
    }
}

impl<L, S> Layer<S> for CarryMaintenanceLayer<L>
where
    L: Layer<S>,
    S: Maintained,
{
    type Service = WithMaintenance<L::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        let handle = inner.maintenance_handle();
        WithMaintenance::new(self.inner.layer(inner), handle)
    }
}

/// `Maintained` through tower middleware that lets its inner service `S`
/// be reached (`get_ref`); `redirected` is its
/// [`RETURNS_REDIRECTED`](Maintained::RETURNS_REDIRECTED).
macro_rules! forward {
    ($(impl[$($g:ident),*] $ty:ty, redirected: $r:expr;)*) => {$(
        impl<S: Maintained $(, $g)*> Maintained for $ty {
            const RETURNS_REDIRECTED: bool = $r;

            fn maintenance(&self) -> &Arc<MaintenanceState> {
                self.get_ref().maintenance()
            }

            fn subscribe(&self) -> broadcast::Receiver<MaintEvent> {
                self.get_ref().subscribe()
            }

            fn maintenance_handle(&self) -> MaintenanceHandle {
                self.get_ref().maintenance_handle()
            }
        }
    )*};
}

use tower::filter::{AsyncFilter, Filter};
use tower::limit::{ConcurrencyLimit, RateLimit};
use tower::timeout::Timeout;
use tower::util::MapFuture;

forward! {
    // Requests and errors pass through unchanged.
    impl[] ConcurrencyLimit<S>, redirected: S::RETURNS_REDIRECTED;
    impl[] RateLimit<S>, redirected: S::RETURNS_REDIRECTED;
    impl[] Timeout<S>, redirected: S::RETURNS_REDIRECTED;
    impl[F] Filter<S, F>, redirected: S::RETURNS_REDIRECTED;
    impl[F] AsyncFilter<S, F>, redirected: S::RETURNS_REDIRECTED;
    // The future may change the error.
    impl[F] MapFuture<S, F>, redirected: false;
    // Its policy may resend a redirected request itself.
    impl[P] tower::retry::Retry<P, S>, redirected: false;
}

/// Either side's state; redirects come back only when both sides say so.
impl<A: Maintained, B: Maintained> Maintained for tower::util::Either<A, B> {
    const RETURNS_REDIRECTED: bool = A::RETURNS_REDIRECTED && B::RETURNS_REDIRECTED;

    fn maintenance(&self) -> &Arc<MaintenanceState> {
        match self {
            tower::util::Either::Left(a) => a.maintenance(),
            tower::util::Either::Right(b) => b.maintenance(),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<MaintEvent> {
        match self {
            tower::util::Either::Left(a) => a.subscribe(),
            tower::util::Either::Right(b) => b.subscribe(),
        }
    }

    fn maintenance_handle(&self) -> MaintenanceHandle {
        match self {
            tower::util::Either::Left(a) => a.maintenance_handle(),
            tower::util::Either::Right(b) => b.maintenance_handle(),
        }
    }
}

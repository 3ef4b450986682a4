use std::time::Duration;

use tower_layer::Layer;

use super::RelaxTimeout;

/// Builds [`RelaxTimeout`] services.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::relax::RelaxTimeoutLayer;
/// let layer = RelaxTimeoutLayer::new(Duration::from_millis(200));
/// let no_default = RelaxTimeoutLayer::none();
/// # let _ = (layer, no_default);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RelaxTimeoutLayer {
    default: Option<Duration>,
}

impl RelaxTimeoutLayer {
    /// Requests without their own timeout get `default` (at most
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT): a longer one is clamped to it).
    pub fn new(default: Duration) -> Self {
        RelaxTimeoutLayer {
            default: Some(crate::time::clamp(default)),
        }
    }

    /// No default: only requests that ask for a timeout get one.
    pub fn none() -> Self {
        RelaxTimeoutLayer { default: None }
    }
}

impl<S> Layer<S> for RelaxTimeoutLayer {
    type Service = RelaxTimeout<S>;

    fn layer(&self, inner: S) -> RelaxTimeout<S> {
        RelaxTimeout::new(inner, self.default)
    }
}

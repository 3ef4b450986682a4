use tower_layer::Layer;

use super::{Cluster, ClusterConfig, NewNode};
use crate::transport::Endpoint;

/// Turns a per-node maker into a [`Cluster`] routing service.
///
/// ```no_run
/// use std::time::Duration;
/// use redis_layers::cluster::{ClusterLayer, NodeRole};
/// use redis_layers::handoff::Handoff;
/// use redis_layers::relax::RelaxTimeoutLayer;
/// use redis_layers::{cmd, Connector, Endpoint};
/// use tower::{Layer, ServiceExt};
///
/// # async fn run() -> Result<(), redis_layers::Error> {
/// let connector = Connector::new();
/// let node = move |endpoint: Endpoint, _role: NodeRole| {
///     RelaxTimeoutLayer::new(Duration::from_secs(1))
///         .layer(Handoff::new(connector.clone(), endpoint))
/// };
/// let cluster = ClusterLayer::new(vec![Endpoint::tcp("127.0.0.1", 7000)]).layer(node);
/// cluster.oneshot(cmd("SET").arg("k").arg("v").into()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClusterLayer {
    seeds: Vec<Endpoint>,
    config: ClusterConfig,
}

impl ClusterLayer {
    /// A layer that discovers the cluster from `seeds` (any of its nodes).
    pub fn new(seeds: Vec<Endpoint>) -> Self {
        ClusterLayer {
            seeds,
            config: ClusterConfig::default(),
        }
    }

    /// Replaces the [`ClusterConfig`].
    pub fn config(mut self, config: ClusterConfig) -> Self {
        self.config = config;
        self
    }
}

impl<N: NewNode> Layer<N> for ClusterLayer {
    type Service = Cluster<N>;

    fn layer(&self, new_node: N) -> Cluster<N> {
        Cluster::new(new_node, self.seeds.clone(), self.config.clone())
    }
}

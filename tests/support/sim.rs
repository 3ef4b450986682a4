//! The maintenance simulator in front of real servers, for scenario tests
//! in a few lines:
//!
//! ```ignore
//! let env = SimStandalone::start().await;
//! let conn = Connector::new().connect(env.endpoint()).await?;
//! env.sim.moving(MovingPlan::new(Duration::from_secs(1))).await?;
//! ```
#![cfg(feature = "sim")]

use std::net::SocketAddr;

use redis_layers::maint::{MaintenanceConfig, Mode};
use redis_layers::sim::Simulator;
use redis_layers::{Connector, Endpoint};

use super::cluster::RedisCluster;
use super::RedisServer;

/// A `SocketAddr` as an [`Endpoint`].
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::tcp(addr.ip().to_string(), addr.port())
}

/// A connector with maintenance handling off (mode `Disabled`): it never
/// opts in by itself, and notifications reach the push channel as sent.
/// For tests that look at the simulator's frames through the bare transport.
pub fn raw_connector() -> Connector {
    Connector::new()
        .maintenance(MaintenanceConfig::default().mode(Mode::Disabled))
        .expect("a valid config")
}

/// `CLIENT MAINT_NOTIFICATIONS ON moving-endpoint-type <t>`.
pub fn opt_in(t: redis_layers::sim::EndpointType) -> redis_layers::Cmd {
    redis_layers::cmd("CLIENT")
        .arg("MAINT_NOTIFICATIONS")
        .arg("ON")
        .arg("moving-endpoint-type")
        .arg(t.as_str())
}

/// One real redis-server with the simulator in front of it. Dropping it
/// stops both.
pub struct SimStandalone {
    /// The simulator: clients connect to its endpoints.
    pub sim: Simulator,
    /// The server behind it (for direct checks).
    pub server: RedisServer,
}

impl SimStandalone {
    /// Starts a server and a simulator with one endpoint.
    pub async fn start() -> Self {
        let server = RedisServer::start();
        let backend = SocketAddr::from(([127, 0, 0, 1], server.port()));
        let sim = Simulator::start(backend)
            .await
            .expect("start the simulator");
        SimStandalone { sim, server }
    }

    /// The simulator's first endpoint, where clients connect.
    pub fn endpoint(&self) -> Endpoint {
        endpoint(self.sim.endpoint())
    }

    /// A Handoff layer of `pool` connections to the simulator and the
    /// connector it goes over, both under `config`: the parts of the
    /// default stack of one endpoint, for tests to finish (a policy, the
    /// layers above).
    pub fn handoff_parts(
        &self,
        config: &MaintenanceConfig,
        pool: usize,
    ) -> (redis_layers::handoff::HandoffLayer, Connector) {
        let connector = Connector::new()
            .maintenance(config.clone())
            .expect("config");
        let handoff = redis_layers::handoff::HandoffLayer::new(self.endpoint())
            .maintenance(config)
            .expect("config")
            .pool_size(pool)
            .expect("pool size");
        (handoff, connector)
    }
}

/// A real 3-primary Redis Cluster with the simulator in front of it (one
/// endpoint per node). Dropping it stops all.
pub struct SimCluster {
    /// The simulator.
    pub sim: Simulator,
    /// The cluster behind it.
    pub cluster: RedisCluster,
}

impl SimCluster {
    /// Starts a 3-primary cluster and a simulator in front of it.
    pub async fn start() -> Self {
        Self::with(RedisCluster::start()).await
    }

    /// A simulator in front of an already started cluster.
    pub async fn with(cluster: RedisCluster) -> Self {
        let seed = SocketAddr::from(([127, 0, 0, 1], cluster.ports()[0]));
        let sim = Simulator::builder(seed)
            .start_cluster()
            .await
            .expect("start the cluster simulator");
        SimCluster { sim, cluster }
    }

    /// The endpoint that stands for node `i` of the cluster.
    pub fn endpoint(&self, i: usize) -> SocketAddr {
        let node = SocketAddr::from(([127, 0, 0, 1], self.cluster.ports()[i]));
        self.sim.endpoint_for(node).expect("an endpoint per node")
    }
}

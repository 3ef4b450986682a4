//! Redis behind [tower]: the RESP3 transport, relaxed timeouts, connection
//! handoff, cluster routing and retry as separate `Layer`s composed into one
//! `Service`, built to ride through managed Redis maintenance (Redis Cloud,
//! Redis Enterprise) with no dropped connection and no failed command.
//!
//! ```text
//! Client          typed helpers, pipelines, transactions, pub/sub      client
//!   Retry         retries what provably did not run, within budget      retry
//!     Cluster     slot routing, MOVED/ASK, SMIGRATED, topology          cluster
//!       RelaxTimeout  per-command deadline, relaxed during maintenance  relax
//!         Handoff     the endpoint's connections; moves them on MOVING  handoff
//!           DialLimit at most N dials at once, R starts per second      dial
//!             Connector RESP3 transport: dial, handshake, Connection    transport
//! ```
//!
//! Every box is a tower `Layer` and `Service` that can be reordered,
//! replaced or omitted; tower's own middleware fits between them (see
//! [`maint::WithMaintenance`] for the ones that hide their inner service,
//! and `Error::from` for their `BoxError`s).
//!
//! - [`client`]: the [`Client`] facade: the default stack from a URL
//!   (standalone or cluster), typed helpers, pipelines, transactions,
//!   pub/sub, dedicated connections for blocking commands and `WATCH`.
//! - [`transport`]: the [`Connector`] (a connection maker,
//!   `Service<Endpoint>`) and the multiplexed [`Connection`], shared by
//!   many tasks; TLS with the `tls` feature.
//! - [`maint`]: maintenance notifications (`MOVING`, `MIGRATING`,
//!   `FAILING_OVER`, `SMIGRATING`, ...), their configuration and state;
//!   [`relax`], [`handoff`], [`cluster`], [`retry`]: the layers;
//!   [`dial`]: the dial limiter under Handoff (no reconnect storms).
//! - [`trust`]: which server-named endpoints are followed;
//!   [`guarantees`]: the trust model and what one caller can do to
//!   another.
//! - [`docs`]: the reference chapters: [architecture](docs::architecture),
//!   the [maintenance contract](docs::maintenance), the
//!   [transport rules](docs::transport_rules), and each layer in depth.
//! - [`resp`]: RESP2/RESP3 values, the incremental decoder with limits, the
//!   [`Cmd`] builder; [`pubsub`]: subscriptions that survive reconnects.
//! - `sim` (feature `sim`): a maintenance simulator in front of real
//!   `redis-server`s, as a Rust API and the `redis-maint-sim` binary.
//!
//! Features: `tls` (rustls), `metrics` (counters through the `metrics`
//! facade), `sim` (the simulator).
//!
//! # Example
//!
//! ```no_run
//! use redis_layers::Client;
//!
//! # async fn run() -> Result<(), redis_layers::Error> {
//! let client = Client::open("redis://127.0.0.1:6379").await?;
//! client.set("greeting", "hello").await?;
//! let v: Option<String> = client.get("greeting").await?;
//! assert_eq!(v.as_deref(), Some("hello"));
//! # Ok(()) }
//! ```
//!
//! [tower]: https://docs.rs/tower
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod builder;
pub mod client;
pub mod cluster;
pub mod dial;
pub mod error;
pub mod handoff;
pub mod maint;
pub mod pubsub;
pub mod relax;
mod request;
pub mod resp;
pub mod retry;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
mod time;
pub mod transport;
pub mod trust;

#[doc = include_str!("docs/guarantees.md")]
pub mod guarantees {}

/// Reference chapters: the design, the maintenance contract, the transport
/// rules, and each layer in depth. They carry no code; each page is a
/// chapter to read, with examples that compile as doctests.
///
/// | chapter | what it covers |
/// |---|---|
/// | [`architecture`](docs::architecture) | the layers, the two kinds of service, the maintenance seam, order rules, where each behaviour lives |
/// | [`maintenance`](docs::maintenance) | the opt-in handshake, the notifications' wire formats, what each one does, configuration defaults, observability |
/// | [`transport_rules`](docs::transport_rules) | the multiplexed connection and the RESP3 server behaviours it survives |
/// | [`configuration`](docs::configuration) | every setting, its default and where it is set |
/// | [`client`](docs::client) | the `Client`: helpers, pipelines, transactions, `WATCH`, dedicated connections |
/// | [`pubsub`](docs::pubsub) | subscriptions, what can be lost and how you find out |
/// | [`retry`](docs::retry) | what is retried, what never is |
/// | [`urls_and_tls`](docs::urls_and_tls) | URL forms and TLS |
/// | [`handoff`](docs::handoff) | `MOVING` handoffs, policies, events, leases, latency |
/// | [`cluster`](docs::cluster) | slot routing, redirects, fan-out, `SMIGRATED`, limits |
/// | [`simulator`](docs::simulator) | the maintenance simulator and its admin commands |
/// | [`testing`](docs::testing) | how the tests, long runs, fuzzing and CI are run |
/// | [`performance`](docs::performance) | the benchmarks and their latest numbers |
///
/// The trust model and the guarantees are in [`guarantees`].
pub mod docs {
    #[doc = include_str!("docs/architecture.md")]
    pub mod architecture {}
    #[doc = include_str!("docs/maintenance.md")]
    pub mod maintenance {}
    #[doc = include_str!("docs/transport_rules.md")]
    pub mod transport_rules {}
    #[doc = include_str!("docs/configuration.md")]
    pub mod configuration {}
    #[doc = include_str!("docs/client.md")]
    pub mod client {}
    #[doc = include_str!("docs/pubsub.md")]
    pub mod pubsub {}
    #[doc = include_str!("docs/retry.md")]
    pub mod retry {}
    #[doc = include_str!("docs/urls_and_tls.md")]
    pub mod urls_and_tls {}
    #[doc = include_str!("docs/handoff.md")]
    pub mod handoff {}
    #[doc = include_str!("docs/cluster.md")]
    pub mod cluster {}
    #[doc = include_str!("docs/simulator.md")]
    pub mod simulator {}
    #[doc = include_str!("docs/testing.md")]
    pub mod testing {}
    #[doc = include_str!("docs/performance.md")]
    pub mod performance {}
}

// The README's Rust examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use builder::ServiceBuilderExt;
pub use client::{Client, ClientBuilder, FromValue};
pub use error::{
    Error, NotSent, ProtocolError, Redirect, RedirectKind, Result, ServerError, ServerErrorKind,
};
pub use request::{Body, CommandTimeout, Request, Response};
pub use resp::{cmd, Cmd, Pipeline, Value};
pub use time::MAX_TIMEOUT;
pub use transport::{Connection, Connector, Endpoint, Protocol, PushReceiver};
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use transport::{TlsConfig, TlsError};

/// Locks `m`, taking the data of a poisoned lock as it is: the crate's
/// locks guard bookkeeping that a panic elsewhere leaves consistent, and a
/// connection must not fail for good because another task panicked.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

//! Redis behind [tower]: the RESP3 transport, relaxed timeouts, connection
//! handoff, cluster routing and retry as separate `Layer`s composed into one
//! `Service`.
//!
//! This release provides the foundation every layer stands on:
//!
//! - [`resp`]: RESP2/RESP3 values, an incremental zero-copy decoder with
//!   limits, and the [`Cmd`] builder.
//! - [`transport`]: the [`Connector`] (a connection maker,
//!   `Service<Endpoint>`) and the multiplexed [`Connection`] (a command
//!   service, `Service<Request>`), which many tasks share.
//! - [`Error`]: one error type that every layer can match on.
//! - [`client`]: the [`Client`] facade: the default stack built from a URL
//!   (standalone or cluster), typed helpers, pipelines, transactions.
//!
//! # Example
//!
//! ```no_run
//! use redis_layers::{cmd, Connector, Endpoint, Value};
//!
//! # async fn run() -> Result<(), redis_layers::Error> {
//! let conn = Connector::new().connect(Endpoint::tcp("127.0.0.1", 6379)).await?;
//! conn.send(cmd("SET").arg("greeting").arg("hello")).await?;
//! let v = conn.send_cmd(cmd("GET").arg("greeting")).await?;
//! assert_eq!(v, Value::BulkString("hello".into()));
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

/// The client's guarantees: its trust model (what it believes from a
/// server), and what one caller can and cannot do to another.
#[doc = include_str!("docs/guarantees.md")]
pub mod guarantees {}

pub use builder::ServiceBuilderExt;
pub use client::{Client, ClientBuilder, FromValue};
pub use error::{
    Error, ProtocolError, Redirect, RedirectKind, Result, ServerError, ServerErrorKind,
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

//! Which failures are retried, for which requests, how often and when.

use std::fmt;
use std::sync::Arc;

use tower::retry::budget::Budget;
#[cfg(test)]
use tower::retry::budget::TpsBudget;

use super::RetryBudget;
use tower::retry::Policy;

use super::backoff::Backoff;
use crate::cluster::keys::CommandTable;
use crate::error::{Error, ServerErrorKind};
use crate::request::{Body, Request, Response};

/// What a failed attempt says about the request, for deciding whether to
/// send it again.
///
/// ```
/// use redis_layers::retry::{classify, Retryable};
/// use redis_layers::{Error, ServerError};
///
/// assert_eq!(classify(&Error::Closed), Retryable::NotApplied);
/// assert_eq!(classify(&Error::Timeout), Retryable::MaybeApplied);
/// let loading = Error::Server(ServerError::parse("LOADING Redis is loading the dataset in memory"));
/// assert_eq!(classify(&loading), Retryable::NotApplied);
/// let wrongtype = Error::Server(ServerError::parse("WRONGTYPE Operation against a key holding the wrong kind of value"));
/// assert_eq!(classify(&wrongtype), Retryable::Never);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retryable {
    /// The server did not apply the request (it was never written, or the
    /// server refused it before running it): any request may be retried.
    NotApplied,
    /// The request may have been applied (written, then the connection
    /// died or the reply was late): only idempotent requests are retried.
    MaybeApplied,
    /// Retrying cannot help (or the caller must decide): never retried.
    Never,
}

/// The default classification of a failed attempt:
///
/// | error | class |
/// |---|---|
/// | [`Error::Closed`], [`Error::NotSent`] (never written), [`Error::Overloaded`] (shed before sending) | [`NotApplied`](Retryable::NotApplied) |
/// | [`Error::Server`] `TRYAGAIN`, `LOADING`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY` | [`NotApplied`](Retryable::NotApplied): the server refused the command before running it |
/// | a split pipeline's per-command `NOTSENT` ([`ServerErrorKind::NotSent`]) | [`NotApplied`](Retryable::NotApplied) |
/// | [`Error::Io`] (reset, aborted, broken pipe, EOF, ...), [`Error::Timeout`], a split pipeline's per-command `INDETERMINATE` | [`MaybeApplied`](Retryable::MaybeApplied) |
/// | anything else: other server errors (`WRONGTYPE`, `ERR`, `MOVED`/`ASK`, which the cluster layer handles, `NOSCRIPT`, `BUSY`, `OOM`, ...), [`Error::Protocol`] (a reply over the size limits fails the same way every time, and each failure closes the shared connection), [`Error::Auth`], [`Error::Config`], [`Error::Usage`], [`Error::Other`] | [`Never`](Retryable::Never) |
pub fn classify(err: &Error) -> Retryable {
    match err {
        Error::Closed | Error::NotSent(_) | Error::Overloaded => Retryable::NotApplied,
        Error::Server(e) => match e.kind() {
            ServerErrorKind::TryAgain
            | ServerErrorKind::Loading
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::NotSent => Retryable::NotApplied,
            ServerErrorKind::Indeterminate => Retryable::MaybeApplied,
            _ => Retryable::Never,
        },
        Error::Io(_) | Error::Timeout => Retryable::MaybeApplied,
        _ => Retryable::Never,
    }
}

/// A classifier: the default is [`classify`].
type Classifier = Arc<dyn Fn(&Error) -> Retryable + Send + Sync>;

/// What every clone of one policy shares.
#[derive(Clone)]
struct Config {
    max_retries: u32,
    backoff: Backoff,
    budget: Arc<dyn Budget + Send + Sync>,
    classifier: Classifier,
    table: CommandTable,
}

/// The retry policy for Redis requests (a [`tower::retry::Policy`]).
///
/// A failed attempt is retried when all of these hold:
///
/// 1. the classifier ([`classify`] by default) says
///    [`NotApplied`](Retryable::NotApplied), or says
///    [`MaybeApplied`](Retryable::MaybeApplied) and the request is
///    idempotent: every command of it is read-only by the
///    [`CommandTable`] (Redis's `readonly` flag: `GET`, `MGET`, `HGETALL`,
///    `XRANGE`, ...; not `PING`, not `MULTI`/`EXEC`, not unknown commands),
///    or the caller marked it with [`Request::idempotent`];
/// 2. fewer than `max_retries` retries were made for this request;
/// 3. the budget has a retry left (withdrawn now).
///
/// A pipeline's reply is retried as a whole only when **every** command of
/// it was refused with an error the classifier calls
/// [`NotApplied`](Retryable::NotApplied) (all `LOADING`, say): then none
/// ran. A pipeline with a single command that ran is returned as it is,
/// with its per-command errors. A pipeline that failed as a whole (its
/// connection died) is retried like a single command, idempotent when
/// all of its commands are.
///
/// Before retry `n` it waits [`Backoff::jittered`]`(n)` (tokio time). Each
/// retry is a `tracing` event (`retry`, at debug level, with the attempt,
/// the wait and the error) and, with the `metrics` feature, counts in
/// [`RETRIES`](super::RETRIES).
///
/// | setting | default |
/// |---|---|
/// | `max_retries` | 3 (so at most 4 attempts) |
/// | `backoff` | [`Backoff::default`]: 10 ms doubling to 1 s, jitter 0.5 |
/// | `budget` | [`RetryBudget::default`]: retries up to 20% of requests over 10 s, plus 10 per second |
/// | `classifier` | [`classify`] |
/// | command table | [`CommandTable::default`] |
///
/// The policy is cloned for every request (one `Arc` increment); the
/// clones share the settings and the budget.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::retry::{classify, Backoff, RedisPolicy, Retryable};
/// use redis_layers::{Error, ServerErrorKind};
///
/// let policy = RedisPolicy::new()
///     .max_retries(5)
///     .backoff(Backoff::new(Duration::from_millis(50), Duration::from_secs(2)))
///     // Also wait out a busy script.
///     .classifier(|e: &Error| match e.server_error().map(|s| s.kind()) {
///         Some(ServerErrorKind::Busy) => Retryable::NotApplied,
///         _ => classify(e),
///     });
/// # let _ = policy;
/// ```
#[derive(Clone)]
pub struct RedisPolicy {
    config: Arc<Config>,
    /// Retries made for the current request.
    retries: u32,
    /// The budget has been credited for the current request.
    deposited: bool,
    /// The time left before the current request's deadline, set by the
    /// [`Retry`](super::Retry) future before it asks for a retry.
    pub(super) left: Option<std::time::Duration>,
}

impl Default for RedisPolicy {
    fn default() -> Self {
        RedisPolicy::new()
    }
}

impl fmt::Debug for RedisPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPolicy")
            .field("max_retries", &self.config.max_retries)
            .field("backoff", &self.config.backoff)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl RedisPolicy {
    /// The policy with the defaults of the table above.
    pub fn new() -> Self {
        RedisPolicy {
            config: Arc::new(Config {
                max_retries: 3,
                backoff: Backoff::default(),
                budget: Arc::new(RetryBudget::default()),
                classifier: Arc::new(classify),
                table: CommandTable::default(),
            }),
            retries: 0,
            deposited: false,
            left: None,
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// At most this many retries per request (0: never retry).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config_mut().max_retries = n;
        self
    }

    /// The wait between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config_mut().backoff = backoff;
        self
    }

    /// The retry budget, shared by every request of every service built
    /// with this policy: a success deposits, a retry withdraws, and when it
    /// is empty the failure is returned. E.g.
    /// `RetryBudget::new(Duration::from_secs(10), 0, 0.1)?` allows retries of
    /// 10% of the requests of the last 10 s and nothing more.
    pub fn budget(mut self, budget: impl Budget + Send + Sync + 'static) -> Self {
        self.config_mut().budget = Arc::new(budget);
        self
    }

    /// Replaces the classifier ([`classify`] by default). Wrap `classify`
    /// to change a few cases and keep the rest.
    pub fn classifier(
        mut self,
        classifier: impl Fn(&Error) -> Retryable + Send + Sync + 'static,
    ) -> Self {
        self.config_mut().classifier = Arc::new(classifier);
        self
    }

    /// The command table that says which commands are read-only (e.g. one
    /// that has [learned](CommandTable::learn) module commands).
    pub fn command_table(mut self, table: CommandTable) -> Self {
        self.config_mut().table = table;
        self
    }

    /// True when `req` may be applied twice without harm: marked
    /// [`idempotent`](Request::idempotent), or every command read-only.
    ///
    /// ```
    /// use redis_layers::retry::RedisPolicy;
    /// use redis_layers::{cmd, Pipeline, Request};
    ///
    /// let p = RedisPolicy::new();
    /// assert!(p.is_idempotent(&cmd("GET").arg("k").into()));
    /// assert!(!p.is_idempotent(&cmd("INCR").arg("k").into()));
    /// assert!(p.is_idempotent(&Request::from(cmd("SET").arg("k").arg("v")).idempotent()));
    /// let tx = Pipeline::new().cmd(cmd("MULTI")).cmd(cmd("GET").arg("k")).cmd(cmd("EXEC"));
    /// assert!(!p.is_idempotent(&tx.into()));
    /// ```
    pub fn is_idempotent(&self, req: &Request) -> bool {
        if req.is_idempotent() {
            return true;
        }
        let table = &self.config.table;
        match req.body() {
            Body::Cmd(c) => table.is_read_only(c),
            Body::Pipeline(p) => !p.is_empty() && p.cmds().iter().all(|c| table.is_read_only(c)),
        }
    }

    /// What this attempt's outcome means; `None` for a success.
    fn class_of(&self, result: &Result<Response, Error>) -> Option<(Retryable, Reason)> {
        let classify = &self.config.classifier;
        match result {
            Ok(Response::Value(_)) => None,
            Ok(Response::Pipeline(rs)) => {
                let first = match rs.first() {
                    Some(Err(e)) => Error::Server(e.clone()),
                    _ => return None,
                };
                let all_refused = rs.iter().all(|r| {
                    r.as_ref().is_err_and(|e| {
                        classify(&Error::Server(e.clone())) == Retryable::NotApplied
                    })
                });
                all_refused.then(|| (Retryable::NotApplied, Reason::of(&first)))
            }
            Err(e) => Some((classify(e), Reason::of(e))),
        }
    }
}

/// Why a retry happened, for the metric label and the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Closed,
    Connection,
    Timeout,
    Server(&'static str),
    Other,
}

impl Reason {
    fn of(e: &Error) -> Self {
        match e {
            Error::Closed | Error::NotSent(_) => Reason::Closed,
            Error::Io(_) | Error::Protocol(_) => Reason::Connection,
            Error::Timeout => Reason::Timeout,
            Error::Server(s) => Reason::Server(match s.kind() {
                ServerErrorKind::TryAgain => "TRYAGAIN",
                ServerErrorKind::Loading => "LOADING",
                ServerErrorKind::ClusterDown => "CLUSTERDOWN",
                ServerErrorKind::MasterDown => "MASTERDOWN",
                ServerErrorKind::ReadOnly => "READONLY",
                _ => "other",
            }),
            _ => Reason::Other,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Closed => "closed",
            Reason::Connection => "connection",
            Reason::Timeout => "timeout",
            Reason::Server(code) => code,
            Reason::Other => "other",
        }
    }
}

impl Policy<Request, Response, Error> for RedisPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request,
        result: &mut Result<Response, Error>,
    ) -> Option<Self::Future> {
        let left = self.left.take();
        self.retry_within(req, result, left)
    }

    fn clone_request(&mut self, req: &Request) -> Option<Request> {
        self.may_retry().then(|| req.clone())
    }
}

impl RedisPolicy {
    /// [`Policy::retry`] for a request with `left` until its deadline
    /// (`None`: no deadline): no retry whose wait would not end before it.
    fn retry_within(
        &mut self,
        req: &mut Request,
        result: &mut Result<Response, Error>,
        left: Option<std::time::Duration>,
    ) -> Option<tokio::time::Sleep> {
        self.deposit_once();
        let config = &self.config;
        let (class, reason) = self.class_of(result)?;
        let allowed = match class {
            Retryable::NotApplied => true,
            Retryable::MaybeApplied => self.is_idempotent(req),
            Retryable::Never => false,
        };
        if !allowed || self.retries >= config.max_retries {
            return None;
        }
        // Decided before the budget is drawn on: a retry that cannot
        // start before the deadline costs nothing.
        let wait = config.backoff.jittered(self.retries + 1);
        if left.is_some_and(|left| wait >= left) {
            tracing::debug!(target: "redis_layers::retry", reason = reason.as_str(), ?wait, ?left, "no time left for a retry");
            return None;
        }
        if !config.budget.withdraw() {
            tracing::debug!(target: "redis_layers::retry", reason = reason.as_str(), "retry budget exhausted");
            return None;
        }
        self.retries += 1;
        match result {
            Err(e) => {
                tracing::debug!(target: "redis_layers::retry", event = "retry", attempt = self.retries + 1, ?wait, reason = reason.as_str(), error = %e, "retrying")
            }
            Ok(_) => {
                tracing::debug!(target: "redis_layers::retry", event = "retry", attempt = self.retries + 1, ?wait, reason = reason.as_str(), "retrying refused pipeline")
            }
        }
        #[cfg(feature = "metrics")]
        metrics::counter!(super::RETRIES, "reason" => reason.as_str()).increment(1);
        Some(tokio::time::sleep(wait))
    }
}

/// For the [`Retry`](super::Retry) layer, which keeps short commands inline
/// (see `kept.rs`) and rebuilds the request only when [`Policy::retry`]
/// must read it.
impl RedisPolicy {
    /// False when no request is ever retried (no copy needed).
    pub(super) fn may_retry(&self) -> bool {
        self.config.max_retries > 0
    }

    /// What [`Policy::retry`] does with a single command's reply, which
    /// it needs no request for: true (and the request is settled) for
    /// one; false: ask `retry`.
    pub(super) fn settled(&mut self, result: &Result<Response, Error>) -> bool {
        let ok = matches!(result, Ok(Response::Value(_)));
        if ok {
            self.deposit_once();
        }
        ok
    }

    pub(super) fn deposit_once(&mut self) {
        if !self.deposited {
            // One deposit per request, so retries are a share of requests.
            self.deposited = true;
            self.config.budget.deposit();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use super::*;
    use crate::error::ServerError;
    use crate::resp::{cmd, Pipeline, Value};

    fn server(line: &str) -> Error {
        Error::Server(ServerError::parse(line.to_owned()))
    }

    fn io(kind: io::ErrorKind) -> Error {
        io::Error::from(kind).into()
    }

    #[test]
    fn default_classes() {
        use Retryable::*;
        for (e, want) in [
            (Error::Closed, NotApplied),
            (
                server("TRYAGAIN Multiple keys request during rehashing of slot"),
                NotApplied,
            ),
            (
                server("LOADING Redis is loading the dataset in memory"),
                NotApplied,
            ),
            (server("CLUSTERDOWN The cluster is down"), NotApplied),
            (server("MASTERDOWN Link with MASTER is down"), NotApplied),
            (
                server("READONLY You can't write against a read only replica."),
                NotApplied,
            ),
            (io(io::ErrorKind::ConnectionReset), MaybeApplied),
            (io(io::ErrorKind::UnexpectedEof), MaybeApplied),
            (io(io::ErrorKind::ConnectionAborted), MaybeApplied),
            (Error::Protocol(crate::ProtocolError::new("bad")), Never),
            (Error::Timeout, MaybeApplied),
            (server("WRONGTYPE Operation against a key"), Never),
            (server("ERR syntax error"), Never),
            (server("MOVED 1 127.0.0.1:7000"), Never),
            (server("ASK 1 127.0.0.1:7000"), Never),
            (server("NOSCRIPT No matching script"), Never),
            (server("BUSY Redis is busy running a script"), Never),
            (server("OOM command not allowed"), Never),
            (Error::Auth(ServerError::parse("WRONGPASS invalid")), Never),
            (Error::config("nope"), Never),
        ] {
            assert_eq!(classify(&e), want, "{e}");
        }
    }

    /// A policy that never waits and has a large budget.
    fn quick() -> RedisPolicy {
        RedisPolicy::new()
            .backoff(Backoff::none())
            .budget(TpsBudget::new(Duration::from_secs(1), 1000, 1.0))
    }

    fn decide(p: &mut RedisPolicy, req: impl Into<Request>, r: Result<Response, Error>) -> bool {
        let mut req = req.into();
        let mut r = r;
        p.retry(&mut req, &mut r).is_some()
    }

    #[tokio::test]
    async fn writes_only_when_not_applied() {
        let incr = || cmd("INCR").arg("n");
        let reset = || Err(io(io::ErrorKind::ConnectionReset));
        assert!(decide(&mut quick(), incr(), Err(Error::Closed)));
        assert!(decide(&mut quick(), incr(), Err(server("LOADING x"))));
        assert!(!decide(&mut quick(), incr(), reset()));
        assert!(!decide(&mut quick(), incr(), Err(Error::Timeout)));
        assert!(decide(
            &mut quick(),
            Request::from(incr()).idempotent(),
            reset()
        ));
        assert!(decide(&mut quick(), cmd("GET").arg("k"), reset()));
        assert!(decide(
            &mut quick(),
            cmd("GET").arg("k"),
            Err(Error::Timeout)
        ));
        assert!(!decide(
            &mut quick(),
            cmd("GET").arg("k"),
            Err(server("WRONGTYPE x"))
        ));
        assert!(!decide(
            &mut quick(),
            cmd("GET").arg("k"),
            Ok(Response::Value(Value::Null))
        ));
        // A pipeline is idempotent only when every command is.
        let reads = Pipeline::new()
            .cmd(cmd("GET").arg("a"))
            .cmd(cmd("HGETALL").arg("h"));
        let mixed = Pipeline::new().cmd(cmd("GET").arg("a")).cmd(incr());
        assert!(decide(&mut quick(), reads, reset()));
        assert!(!decide(&mut quick(), mixed.clone(), reset()));
        assert!(decide(&mut quick(), mixed, Err(Error::Closed)));
    }

    #[tokio::test]
    async fn pipelines_retried_only_when_nothing_ran() {
        let p = || {
            Pipeline::new()
                .cmd(cmd("INCR").arg("a"))
                .cmd(cmd("INCR").arg("b"))
        };
        let refused = || Err(ServerError::parse("LOADING x"));
        let all = Ok(Response::Pipeline(vec![refused(), refused()]));
        assert!(decide(&mut quick(), p(), all));
        let one_ran = Ok(Response::Pipeline(vec![refused(), Ok(Value::Integer(1))]));
        assert!(!decide(&mut quick(), p(), one_ran));
        let other = Ok(Response::Pipeline(vec![
            refused(),
            Err(ServerError::parse("WRONGTYPE x")),
        ]));
        assert!(!decide(&mut quick(), p(), other));
        assert!(!decide(
            &mut quick(),
            Pipeline::new(),
            Ok(Response::Pipeline(vec![]))
        ));
    }

    #[tokio::test]
    async fn stops_after_max_retries() {
        let mut p = quick().max_retries(2);
        let get = || cmd("GET").arg("k");
        assert!(decide(&mut p, get(), Err(Error::Closed)));
        assert!(decide(&mut p, get(), Err(Error::Closed)));
        assert!(!decide(&mut p, get(), Err(Error::Closed)));
        // A fresh clone of the template starts again.
        let template = quick().max_retries(0);
        assert!(!decide(&mut template.clone(), get(), Err(Error::Closed)));
        assert!(template.clone().clone_request(&get().into()).is_none());
    }

    #[tokio::test]
    async fn budget_is_shared_and_runs_out() {
        // Reserve of 2 retries (1/s over 2 s), no deposits.
        let template = quick().budget(TpsBudget::new(Duration::from_secs(2), 1, 0.0001));
        let get = || cmd("GET").arg("k");
        let mut granted = 0;
        for _ in 0..5 {
            if decide(&mut template.clone(), get(), Err(Error::Closed)) {
                granted += 1;
            }
        }
        assert_eq!(granted, 2, "the budget's reserve is two retries");
    }

    #[test]
    fn custom_classifier() {
        let p = RedisPolicy::new().classifier(|e: &Error| match e {
            Error::Server(s) if s.kind() == &ServerErrorKind::Busy => Retryable::NotApplied,
            e => classify(e),
        });
        let busy = server("BUSY running a script");
        assert_eq!(
            p.class_of(&Err(busy)).map(|c| c.0),
            Some(Retryable::NotApplied)
        );
    }
}

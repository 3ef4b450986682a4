//! The one request and response type every command service in the crate
//! uses, so every layer composes with every other.

use crate::error::{Error, ServerError};
use crate::resp::{Cmd, Pipeline, Value};

/// What a command service is asked to run: one command or a pipeline.
///
/// Later layers read more from a request (its keys, whether it is safe to
/// retry); those live here too, so the type stays the same through the stack.
///
/// ```
/// use redis_layers::{cmd, Pipeline, Request};
/// let one: Request = cmd("GET").arg("k").into();
/// let many: Request = Pipeline::new().cmd(cmd("PING")).into();
/// assert!(!one.is_pipeline() && many.is_pipeline());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    body: Body,
    timeout: CommandTimeout,
    idempotent: bool,
}

/// How long a request may take, for layers that enforce timeouts
/// ([`RelaxTimeout`](crate::relax::RelaxTimeout)).
///
/// ```
/// use std::time::Duration;
/// use redis_layers::{cmd, CommandTimeout, Request};
/// let r = Request::from(cmd("GET").arg("k")).with_timeout(Duration::from_millis(50));
/// assert_eq!(r.timeout(), CommandTimeout::After(Duration::from_millis(50)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommandTimeout {
    /// The layer's default (none for blocking commands such as `BLPOP`).
    #[default]
    Default,
    /// No timeout at all.
    Never,
    /// This long.
    After(std::time::Duration),
}

/// The commands of a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// One command; its reply is [`Response::Value`].
    Cmd(Cmd),
    /// Several commands written together; the reply is [`Response::Pipeline`].
    Pipeline(Pipeline),
}

impl Request {
    /// A request for `body`.
    ///
    /// A long command (over 1 KiB encoded) shares its buffer from here on:
    /// the copies layers keep to send it again (a retry's, a cluster
    /// router's) cost a reference count, not its bytes.
    pub fn new(mut body: Body) -> Self {
        match &mut body {
            Body::Cmd(c) => c.share(),
            Body::Pipeline(p) => p.share(),
        }
        Request {
            body,
            timeout: CommandTimeout::Default,
            idempotent: false,
        }
    }

    /// This request may take `d`, whatever the layer's default; at most
    /// [`MAX_TIMEOUT`](crate::MAX_TIMEOUT) (a longer `d` is clamped to it).
    pub fn with_timeout(mut self, d: std::time::Duration) -> Self {
        self.timeout = CommandTimeout::After(crate::time::clamp(d));
        self
    }

    /// This request has no timeout (a long `BLPOP`, a big `KEYS`).
    pub fn without_timeout(mut self) -> Self {
        self.timeout = CommandTimeout::Never;
        self
    }

    /// This request with `timeout`, as [`Request::timeout`] gave it (for
    /// layers that rebuild a request from a compact copy).
    pub(crate) fn with_command_timeout(mut self, timeout: CommandTimeout) -> Self {
        self.timeout = timeout;
        self
    }

    /// Marks the request as safe to apply more than once (an `SET k v`, a
    /// `DEL`, a `HSET` of fixed values: running it twice leaves the same
    /// state as once). The [retry layer](crate::retry) then resends it
    /// after a failure that may have applied it (a connection lost after
    /// the request was written, a timeout), as it does for read-only
    /// commands. Do not mark `INCR`, `LPUSH`, `XADD`, a transaction, or
    /// anything else whose repetition is visible.
    ///
    /// ```
    /// use redis_layers::{cmd, Request};
    /// let r = Request::from(cmd("SET").arg("k").arg("v")).idempotent();
    /// assert!(r.is_idempotent());
    /// assert!(!Request::from(cmd("GET").arg("k")).is_idempotent());
    /// ```
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// True when the caller marked the request with
    /// [`idempotent`](Self::idempotent). (Read-only commands need no mark:
    /// the retry layer recognises them by name.)
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// The timeout asked for.
    pub fn timeout(&self) -> CommandTimeout {
        self.timeout
    }

    /// True when a command blocks on the server by design (`BLPOP`,
    /// `XREAD ... BLOCK`, `WAIT`, ...): such requests get no default timeout.
    pub fn is_blocking(&self) -> bool {
        match &self.body {
            Body::Cmd(c) => c.is_blocking(),
            Body::Pipeline(p) => p.cmds().iter().any(Cmd::is_blocking),
        }
    }

    /// The commands: the one, or the pipeline's.
    pub(crate) fn cmds(&self) -> &[Cmd] {
        match &self.body {
            Body::Cmd(c) => std::slice::from_ref(c),
            Body::Pipeline(p) => p.cmds(),
        }
    }

    /// The commands.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// The commands, mutably (a layer may rewrite them).
    pub fn body_mut(&mut self) -> &mut Body {
        &mut self.body
    }

    /// The commands, by value.
    pub fn into_body(self) -> Body {
        self.body
    }

    /// True for a pipeline.
    pub fn is_pipeline(&self) -> bool {
        matches!(self.body, Body::Pipeline(_))
    }

    /// How many replies the request expects.
    pub fn reply_count(&self) -> usize {
        match &self.body {
            Body::Cmd(_) => 1,
            Body::Pipeline(p) => p.len(),
        }
    }
}

impl From<Cmd> for Request {
    fn from(c: Cmd) -> Self {
        Request::new(Body::Cmd(c))
    }
}

impl From<Pipeline> for Request {
    fn from(p: Pipeline) -> Self {
        Request::new(Body::Pipeline(p))
    }
}

/// The reply to a [`Request`].
///
/// A single command's error reply is not a `Response`: the service returns
/// [`Error::Server`] for it. In a pipeline each command has its own result.
///
/// ```
/// use redis_layers::{Response, Value};
/// let r = Response::Value(Value::Integer(1));
/// assert_eq!(r.into_value().unwrap(), Value::Integer(1));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The reply to one command.
    Value(Value),
    /// One result per command of a pipeline, in order.
    Pipeline(Vec<Result<Value, ServerError>>),
}

impl Response {
    /// The value of a single-command reply; an error for a pipeline reply.
    #[inline]
    pub fn into_value(self) -> Result<Value, Error> {
        match self {
            Response::Value(v) => Ok(v),
            Response::Pipeline(_) => Err(Error::config("expected a single reply, got a pipeline")),
        }
    }

    /// The results of a pipeline reply; an error for a single reply.
    pub fn into_pipeline(self) -> Result<Vec<Result<Value, ServerError>>, Error> {
        match self {
            Response::Pipeline(v) => Ok(v),
            Response::Value(_) => Err(Error::config("expected a pipeline reply, got a single one")),
        }
    }
}

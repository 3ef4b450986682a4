//! The crate's one error type.
//!
//! Every layer returns [`Error`], so a layer above can match on what went
//! wrong below it: a retry policy on [`Error::is_retryable_io`], a cluster
//! router on [`ServerError::redirect`], a timeout on [`Error::Timeout`].

use std::fmt;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

/// A `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a Redis request or connection.
///
/// `Error` is cheap to clone (I/O errors are shared behind an `Arc`), so one
/// failure can be handed to every request that was pending on a connection.
///
/// ```
/// use redis_layers::{Error, ServerErrorKind};
///
/// fn should_redirect(err: &Error) -> bool {
///     matches!(err, Error::Server(e) if e.kind() == &ServerErrorKind::Moved)
/// }
/// assert!(!should_redirect(&Error::Closed));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed: connect refused, reset, broken pipe, ...
    Io(Arc<io::Error>),
    /// The peer sent bytes that are not valid RESP, or a frame that breaks
    /// the configured size or depth limits. The connection is closed.
    Protocol(ProtocolError),
    /// The server answered the command with an error reply.
    Server(ServerError),
    /// Authentication failed (wrong password, unknown user, or the server
    /// requires a password and none was given).
    Auth(ServerError),
    /// The command did not complete within its deadline.
    Timeout,
    /// The connection is closed and the request was never written to it:
    /// sending it again cannot apply it twice. (A request that was written
    /// and then lost its connection fails with [`Error::Io`] instead.)
    Closed,
    /// The request never reached a socket, for the reason in
    /// [`NotSent::cause`] (an [`Error::Io`], [`Error::Protocol`] or
    /// [`Error::Timeout`]): no connection to its endpoint could be made
    /// (the dial's error names the endpoint), or its handshake failed.
    /// Nothing of it was written, so sending it again cannot apply it
    /// twice: [`Retry`](crate::retry::Retry) does, within its budget.
    ///
    /// Services report such failures here, in the response future, rather
    /// than from `poll_ready`: tower takes a `poll_ready` error to mean the
    /// service is gone for good (`Buffer` would fail every later request).
    NotSent(NotSent),
    /// The request or configuration is invalid (nothing was sent), or the
    /// server cannot do what the configuration requires (e.g. maintenance
    /// notifications in mode `Enabled`); the message names the cause.
    Config(String),
    /// The request is not allowed where it was sent (nothing was sent): a
    /// command that would change a shared connection's state for every
    /// caller on it (`MULTI` alone, `SELECT`, `CLIENT TRACKING`, ...; see
    /// [`transport`](crate::transport#shared-connections)), or one the
    /// transport cannot carry (`MONITOR`). The message names what to use
    /// instead.
    Usage(String),
    /// Tower middleware shed the request: `LoadShed` found the service
    /// not ready ([`Error::from`] a `BoxError` holding tower's
    /// `Overloaded`). Nothing was sent.
    Overloaded,
    /// An error of other middleware, kept as it was (from a `BoxError`
    /// that is none of the above; see [`Error::from`]).
    Other(Arc<dyn std::error::Error + Send + Sync>),
    /// A reply could not be converted to the Rust type asked for (e.g. a
    /// string that is not a number into `i64`, `nil` into `String`); the
    /// message names both. Nothing is wrong with the connection.
    Type(String),
}

impl Error {
    /// A configuration or usage error with the given message.
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    /// A usage error with the given message: [`Error::Usage`].
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    /// The server error reply, if this is [`Error::Server`] or [`Error::Auth`].
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Error::Server(e) | Error::Auth(e) => Some(e),
            _ => None,
        }
    }

    /// [`Error::NotSent`] for `cause`: the request never reached a socket.
    /// Only failures of the connection are wrapped ([`Error::Io`],
    /// [`Error::Protocol`], [`Error::Timeout`] of a dial or handshake); a
    /// `cause` that says more than "not sent" (an [`Error::Auth`] of the
    /// handshake, an [`Error::Config`]) or says it already
    /// ([`Error::Closed`], another `NotSent`) comes back as it is.
    ///
    /// ```
    /// use std::io;
    /// use redis_layers::Error;
    ///
    /// let e = Error::not_sent(io::Error::from(io::ErrorKind::ConnectionRefused).into());
    /// assert!(e.is_not_sent());
    /// assert!(e.to_string().starts_with("not sent: I/O error"));
    /// ```
    pub fn not_sent(cause: Error) -> Self {
        match cause {
            Error::Io(_) | Error::Protocol(_) | Error::Timeout => Error::NotSent(NotSent {
                inner: Box::new(NotSentInner {
                    cause,
                    request: None,
                }),
            }),
            cause => cause,
        }
    }

    /// [`Error::NotSent`] for `cause`, handing `req` back to the caller
    /// (see [`Error::take_request`]).
    pub(crate) fn not_sent_with(cause: Error, req: crate::Request) -> Self {
        let mut e = Error::not_sent(cause);
        if let Error::NotSent(n) = &mut e {
            n.inner.request = Some(req);
        }
        e
    }

    /// True when the request was certainly not written to any connection
    /// ([`Error::Closed`], [`Error::NotSent`], [`Error::Overloaded`]):
    /// sending it again cannot apply it twice.
    pub fn is_not_sent(&self) -> bool {
        matches!(self, Error::Closed | Error::NotSent(_) | Error::Overloaded)
    }

    /// The request an [`Error::NotSent`] hands back, when the layer that
    /// failed it still held it (so a retry needs no copy of its own).
    /// Taken once; `None` for every other error.
    pub fn take_request(&mut self) -> Option<crate::Request> {
        match self {
            Error::NotSent(n) => n.inner.request.take(),
            _ => None,
        }
    }

    /// True for failures of the connection itself (I/O, closed, protocol,
    /// no connection made), after which the request may or may not have
    /// reached the server (except for [`Error::Closed`] and
    /// [`Error::NotSent`]: it did not).
    pub fn is_connection_error(&self) -> bool {
        match self {
            Error::Io(_) | Error::Closed | Error::Protocol(_) => true,
            Error::NotSent(n) => n.cause().is_connection_error(),
            _ => false,
        }
    }

    /// True for I/O errors that a reconnect may cure (refused, reset,
    /// aborted, broken pipe, timed out, unexpected EOF).
    pub fn is_retryable_io(&self) -> bool {
        match self {
            Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::NotConnected
            ),
            Error::Closed => true,
            Error::NotSent(n) => n.cause().is_retryable_io(),
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::Server(e) => write!(f, "server error: {e}"),
            Error::Auth(e) => {
                write!(f, "authentication failed: {e}")?;
                match e.kind() {
                    ServerErrorKind::NoAuth => f.write_str(
                        " (the server requires a password: set Connector::password, \
                         or redis://user:password@host in the URL)",
                    ),
                    ServerErrorKind::WrongPass => f.write_str(
                        " (check the username and password: Connector::username/password, \
                         or redis://user:password@host in the URL)",
                    ),
                    _ => Ok(()),
                }
            }
            Error::Overloaded => f.pad("overloaded: the request was shed"),
            Error::Other(e) => write!(f, "{e}"),
            Error::Timeout => f.pad("request timed out"),
            Error::Closed => f.pad("connection closed"),
            Error::NotSent(n) => write!(f, "not sent: {}", n.cause()),
            Error::Config(msg) => write!(f, "invalid configuration: {msg}"),
            Error::Usage(msg) => write!(f, "not allowed here: {msg}"),
            Error::Type(msg) => write!(f, "unexpected reply: {msg}"),
        }
    }
}

/// `Display` already says what the wrapped error says, so `source` does
/// not hand it out again (an error reporter walking the chain would print
/// it twice); match on the variant to reach it. [`Error::Other`] is
/// displayed as its error and hands out that error's own source.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Other(e) => e.source(),
            _ => None,
        }
    }
}

/// tower middleware's errors back to this crate's: so `.map_err(Error::from)`
/// closes any tower middleware (`Timeout`, `LoadShed`, `Buffer`, ...) over a
/// stack whose error is [`Error`].
///
/// - an [`Error`] boxed by the middleware comes back as it was;
/// - tower's `Elapsed` (`TimeoutLayer`) is [`Error::Timeout`];
/// - tower's `Overloaded` (`LoadShedLayer`) is [`Error::Overloaded`];
/// - `Buffer`'s `Closed` is [`Error::Closed`], and its `ServiceError` (the
///   buffered service failed) is the error behind it;
/// - an [`io::Error`] is [`Error::Io`]; anything else is [`Error::Other`].
///
/// In axum, convert in the handler (`.await.map_err(Error::from)?`) or in
/// `axum::error_handling::HandleErrorLayer`'s function, then answer
/// [`Error::Timeout`] with `504 Gateway Timeout` and [`Error::Overloaded`]
/// with `503 Service Unavailable` and a `Retry-After`; `examples/axum` does
/// this with a route behind tower's `Timeout`, `LoadShed` and a concurrency
/// limit. Inside an axum handler, prefer mapping the result to a `MapErr`
/// layer built from `Error::from`: rustc's `Send` check of the handler's
/// future rejects that fn item over `BoxError` ("implementation of `FnOnce`
/// is not general enough").
///
/// ```
/// use std::time::Duration;
/// use redis_layers::Error;
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
///
/// # async fn run() {
/// let slow = tower::service_fn(|_: ()| async {
///     tokio::time::sleep(Duration::from_secs(10)).await;
///     Ok::<_, Error>(())
/// });
/// let svc = ServiceBuilder::new()
///     .map_err(Error::from) // BoxError -> Error
///     .timeout(Duration::from_millis(10))
///     .service(slow);
/// assert!(matches!(svc.oneshot(()).await, Err(Error::Timeout)));
/// # }
/// ```
impl From<Box<dyn std::error::Error + Send + Sync>> for Error {
    fn from(e: Box<dyn std::error::Error + Send + Sync>) -> Self {
        let e = match e.downcast::<Error>() {
            Ok(e) => return *e,
            Err(e) => e,
        };
        if e.is::<tower::timeout::error::Elapsed>() {
            return Error::Timeout;
        }
        if e.is::<tower::load_shed::error::Overloaded>() {
            return Error::Overloaded;
        }
        if e.is::<tower::buffer::error::Closed>() {
            return Error::Closed;
        }
        if let Some(behind) = e
            .downcast_ref::<tower::buffer::error::ServiceError>()
            .and_then(|se| std::error::Error::source(se))
            .and_then(|inner| inner.downcast_ref::<Error>())
        {
            return behind.clone();
        }
        match e.downcast::<io::Error>() {
            Ok(io) => Error::Io(Arc::new(*io)),
            Err(other) => Error::Other(Arc::from(other)),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl From<ServerError> for Error {
    fn from(e: ServerError) -> Self {
        Error::Server(e)
    }
}

/// Why a request never reached a socket: the payload of
/// [`Error::NotSent`].
///
/// ```
/// use redis_layers::Error;
///
/// let e = Error::not_sent(Error::Timeout);
/// let Error::NotSent(n) = &e else { unreachable!() };
/// assert!(matches!(n.cause(), Error::Timeout));
/// // A refused password says more than "not sent": it stays as it is.
/// let auth = Error::Auth(redis_layers::ServerError::parse("WRONGPASS invalid password"));
/// assert!(matches!(Error::not_sent(auth), Error::Auth(_)));
/// ```
#[derive(Clone)]
pub struct NotSent {
    /// Boxed: the variant stays one pointer, so [`Error`] stays small.
    inner: Box<NotSentInner>,
}

#[derive(Clone)]
struct NotSentInner {
    cause: Error,
    /// The request, handed back by the layer that failed it.
    request: Option<crate::Request>,
}

impl NotSent {
    /// Why it was not sent.
    pub fn cause(&self) -> &Error {
        &self.inner.cause
    }

    /// The cause, by value.
    pub fn into_cause(self) -> Error {
        self.inner.cause
    }
}

impl fmt::Debug for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the request itself: it may carry secrets.
        f.debug_struct("NotSent")
            .field("cause", &self.inner.cause)
            .field("request_handed_back", &self.inner.request.is_some())
            .finish()
    }
}

/// Why the bytes from the peer could not be decoded.
///
/// ```
/// use redis_layers::resp::Decoder;
/// use bytes::BytesMut;
///
/// let mut buf = BytesMut::from(&b"?garbage\r\n"[..]);
/// let err = Decoder::new().decode(&mut buf).unwrap_err();
/// assert!(err.to_string().contains("unknown type byte"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    msg: Box<str>,
}

impl ProtocolError {
    /// A protocol error with the given description.
    pub fn new(msg: impl Into<String>) -> Self {
        ProtocolError {
            msg: msg.into().into_boxed_str(),
        }
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for ProtocolError {}

/// The kind of a server error reply, from its first word.
///
/// ```
/// use redis_layers::ServerErrorKind;
/// assert_eq!(ServerErrorKind::from_code("TRYAGAIN"), ServerErrorKind::TryAgain);
/// assert_eq!(ServerErrorKind::from_code("NOSUCHTHING"), ServerErrorKind::Other("NOSUCHTHING".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerErrorKind {
    /// `ERR`: the generic error.
    Err,
    /// `WRONGTYPE`: operation against a key holding the wrong kind of value.
    WrongType,
    /// `MOVED slot host:port`: the slot is served by another node.
    Moved,
    /// `ASK slot host:port`: the slot is being migrated; ask the target once.
    Ask,
    /// `TRYAGAIN`: multi-key request during a slot migration.
    TryAgain,
    /// `LOADING`: the server is loading its data set.
    Loading,
    /// `READONLY`: a write sent to a replica.
    ReadOnly,
    /// `CLUSTERDOWN`: the cluster is not serving.
    ClusterDown,
    /// `MASTERDOWN`: the link to the primary is down.
    MasterDown,
    /// `CROSSSLOT`: keys of one request hash to different slots.
    CrossSlot,
    /// `NOSCRIPT`: unknown script SHA.
    NoScript,
    /// `BUSY`: a script or function is running.
    Busy,
    /// `BUSYKEY`: target key exists.
    BusyKey,
    /// `NOAUTH`: authentication required.
    NoAuth,
    /// `WRONGPASS`: invalid username/password pair.
    WrongPass,
    /// `NOPERM`: the ACL user lacks permission.
    NoPerm,
    /// `NOPROTO`: the requested protocol version is not supported.
    NoProto,
    /// `EXECABORT`: the transaction was discarded because of earlier errors.
    ExecAbort,
    /// `NOREPLICAS`: not enough good replicas to write.
    NoReplicas,
    /// `OOM`: the command was refused because of `maxmemory`.
    Oom,
    /// `NOTSENT`: not from a server but in its place, for one command of a
    /// pipeline that the cluster layer split across nodes, whose node's
    /// part was never written (its node could not be reached): it did not
    /// run, and may be sent again.
    NotSent,
    /// `INDETERMINATE`: like [`NotSent`](Self::NotSent), for a command whose
    /// part was written but not answered (its connection failed or timed
    /// out): it may have run.
    Indeterminate,
    /// Any other code, as sent.
    Other(Box<str>),
}

impl ServerErrorKind {
    /// Classifies an error code (the first word of an error reply).
    pub fn from_code(code: &str) -> Self {
        match code {
            "ERR" => Self::Err,
            "WRONGTYPE" => Self::WrongType,
            "MOVED" => Self::Moved,
            "ASK" => Self::Ask,
            "TRYAGAIN" => Self::TryAgain,
            "LOADING" => Self::Loading,
            "READONLY" => Self::ReadOnly,
            "CLUSTERDOWN" => Self::ClusterDown,
            "MASTERDOWN" => Self::MasterDown,
            "CROSSSLOT" => Self::CrossSlot,
            "NOSCRIPT" => Self::NoScript,
            "BUSY" => Self::Busy,
            "BUSYKEY" => Self::BusyKey,
            "NOAUTH" => Self::NoAuth,
            "WRONGPASS" => Self::WrongPass,
            "NOPERM" => Self::NoPerm,
            "NOPROTO" => Self::NoProto,
            "EXECABORT" => Self::ExecAbort,
            "NOREPLICAS" => Self::NoReplicas,
            "OOM" => Self::Oom,
            "NOTSENT" => Self::NotSent,
            "INDETERMINATE" => Self::Indeterminate,
            other => Self::Other(other.into()),
        }
    }
}

/// Which redirect a [`Redirect`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedirectKind {
    /// `MOVED`: the slot now lives on `addr`; update the slot map.
    Moved,
    /// `ASK`: send `ASKING` and the command to `addr`, once.
    Ask,
}

/// A cluster redirect parsed from a `MOVED` or `ASK` error reply.
///
/// ```
/// use redis_layers::{ServerError, RedirectKind};
/// let e = ServerError::parse("MOVED 3999 127.0.0.1:6381");
/// let r = e.redirect().unwrap();
/// assert_eq!((r.kind, r.slot, r.addr.as_str()), (RedirectKind::Moved, 3999, "127.0.0.1:6381"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Redirect {
    /// MOVED or ASK.
    pub kind: RedirectKind,
    /// The hash slot, always in `0..=16383`.
    pub slot: u16,
    /// The target as the server announced it (`host:port`, IPv6 unbracketed
    /// as Redis sends it; an empty host means "the same host").
    pub addr: String,
}

/// An error reply from the server (`-CODE message` or a blob error).
///
/// Two errors are equal when their replies are.
pub struct ServerError {
    /// Boxed: every `Result<Response>` in every layer is as large as
    /// [`Error`], and error replies are rare; one pointer keeps `Error` at
    /// 32 bytes instead of 72.
    inner: Box<Inner>,
}

struct Inner {
    kind: ServerErrorKind,
    line: Bytes,
    /// The command a `MOVED`/`ASK` (or, alone, a `CLUSTERDOWN`/`TRYAGAIN`) answered, handed back by the connection
    /// so that a cluster router can resend it without keeping a copy of
    /// every command (see [`Maintained::RETURNS_REDIRECTED`]).
    ///
    /// [`Maintained::RETURNS_REDIRECTED`]: crate::maint::Maintained::RETURNS_REDIRECTED
    returned: Option<crate::resp::Cmd>,
}

/// A clone leaves the handed-back command behind: it is for the one router
/// that resends it, and may be up to 64 KiB.
impl Clone for ServerError {
    fn clone(&self) -> Self {
        ServerError {
            inner: Box::new(Inner {
                kind: self.inner.kind.clone(),
                line: self.inner.line.clone(),
                returned: None,
            }),
        }
    }
}

impl PartialEq for ServerError {
    fn eq(&self, other: &Self) -> bool {
        self.inner.kind == other.inner.kind && self.inner.line == other.inner.line
    }
}

impl Eq for ServerError {}

impl ServerError {
    /// Parses an error reply's text (without the leading `-`).
    pub fn parse(line: impl Into<Bytes>) -> Self {
        let line = line.into();
        let code_end = memchr::memchr(b' ', &line).unwrap_or(line.len());
        let kind = match std::str::from_utf8(&line[..code_end]) {
            Ok(code) => ServerErrorKind::from_code(code),
            Err(_) => ServerErrorKind::Other(String::from_utf8_lossy(&line[..code_end]).into()),
        };
        ServerError {
            inner: Box::new(Inner {
                kind,
                line,
                returned: None,
            }),
        }
    }

    /// This redirect carries `cmd` back to the router (the connection that
    /// read the reply still had it).
    pub(crate) fn with_returned(mut self, cmd: crate::resp::Cmd) -> Self {
        self.put_returned(cmd);
        self
    }

    /// [`with_returned`](Self::with_returned) in place.
    pub(crate) fn put_returned(&mut self, cmd: crate::resp::Cmd) {
        self.inner.returned = Some(cmd);
    }

    /// The command handed back with a redirect, taken out.
    pub(crate) fn take_returned(&mut self) -> Option<crate::resp::Cmd> {
        self.inner.returned.take()
    }

    /// The error's kind.
    pub fn kind(&self) -> &ServerErrorKind {
        &self.inner.kind
    }

    /// The code: the first word of the reply (`ERR`, `MOVED`, ...).
    pub fn code(&self) -> &str {
        let end = memchr::memchr(b' ', &self.inner.line).unwrap_or(self.inner.line.len());
        std::str::from_utf8(&self.inner.line[..end]).unwrap_or("")
    }

    /// The text after the code.
    pub fn detail(&self) -> String {
        let start = memchr::memchr(b' ', &self.inner.line).map_or(self.inner.line.len(), |i| i + 1);
        String::from_utf8_lossy(&self.inner.line[start..]).into_owned()
    }

    /// The whole reply line, as sent.
    pub fn as_bytes(&self) -> &[u8] {
        &self.inner.line
    }

    /// The redirect carried by a `MOVED` or `ASK` reply.
    ///
    /// `None` when the reply is no well-formed redirect, including a slot
    /// outside `0..=16383`: such a reply stays the caller's error and is
    /// never followed (a slot from the server indexes the slot table).
    ///
    /// ```
    /// use redis_layers::ServerError;
    /// assert!(ServerError::parse("MOVED 16383 127.0.0.1:7000").redirect().is_some());
    /// assert!(ServerError::parse("MOVED 16384 127.0.0.1:7000").redirect().is_none());
    /// assert!(ServerError::parse("ASK -1 127.0.0.1:7000").redirect().is_none());
    /// ```
    pub fn redirect(&self) -> Option<Redirect> {
        let kind = match self.inner.kind {
            ServerErrorKind::Moved => RedirectKind::Moved,
            ServerErrorKind::Ask => RedirectKind::Ask,
            _ => return None,
        };
        let text = std::str::from_utf8(&self.inner.line).ok()?;
        let mut words = text.split(' ');
        words.next()?;
        let slot = words
            .next()?
            .parse::<u16>()
            .ok()
            .filter(|s| *s < crate::maint::SLOT_COUNT)?;
        let addr = words.next()?.to_owned();
        Some(Redirect { kind, slot, addr })
    }

    /// True for `NOAUTH`, `WRONGPASS`, and the pre-6.0 `ERR invalid password`.
    pub fn is_auth_error(&self) -> bool {
        match self.inner.kind {
            ServerErrorKind::NoAuth | ServerErrorKind::WrongPass => true,
            ServerErrorKind::Err => {
                let d = self.detail().to_ascii_lowercase();
                d.contains("invalid password")
                    || d.contains("no password is set")
                    || d.contains("without any password configured")
            }
            _ => false,
        }
    }
}

impl fmt::Debug for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerError")
            .field("kind", &self.inner.kind)
            .field("line", &String::from_utf8_lossy(&self.inner.line))
            .finish()
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.inner.line))
    }
}

impl std::error::Error for ServerError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `Result<Response>` in every layer is as large as `Error`:
    /// keep it small (the reason `ServerError` is boxed).
    #[test]
    fn errors_stay_small() {
        assert!(std::mem::size_of::<Error>() <= 32);
        assert!(std::mem::size_of::<Result<crate::Response>>() <= 40);
    }

    #[test]
    fn parses_codes_and_redirects() {
        let e = ServerError::parse("ASK 12 10.0.0.1:7000");
        assert_eq!(e.kind(), &ServerErrorKind::Ask);
        assert_eq!(e.code(), "ASK");
        let r = e.redirect().unwrap();
        assert_eq!(r.kind, RedirectKind::Ask);
        assert_eq!(r.slot, 12);
        assert_eq!(r.addr, "10.0.0.1:7000");
        assert!(ServerError::parse("MOVED x").redirect().is_none());
        // Slots are 0..=16383: anything else is no redirect.
        for bad in [
            "MOVED 16384 h:1",
            "ASK 20000 h:1",
            "MOVED 99999999999 h:1",
            "MOVED -1 h:1",
        ] {
            assert!(ServerError::parse(bad).redirect().is_none(), "{bad}");
        }
        assert_eq!(
            ServerError::parse("MOVED 16383 h:1")
                .redirect()
                .unwrap()
                .slot,
            16383
        );
        assert!(ServerError::parse("ERR x").redirect().is_none());
        let e = ServerError::parse("WRONGPASS invalid username-password pair");
        assert!(e.is_auth_error());
        assert_eq!(e.detail(), "invalid username-password pair");
        assert!(!ServerError::parse("ERR syntax error").is_auth_error());
        assert_eq!(ServerError::parse("").code(), "");
    }

    use proptest::prelude::*;

    proptest! {
        /// Any `MOVED`/`ASK` line: no panic, and a redirect only to a slot
        /// that exists.
        #[test]
        fn redirects_never_name_a_slot_out_of_range(
            kind in proptest::sample::select(vec!["MOVED", "ASK", "moved", "ERR"]),
            slot in prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                "[0-9]{0,25}",
                ".{0,8}",
            ],
            addr in ".{0,24}",
        ) {
            let e = ServerError::parse(format!("{kind} {slot} {addr}"));
            if let Some(r) = e.redirect() {
                prop_assert!(r.slot < crate::maint::SLOT_COUNT);
                prop_assert_eq!(slot.parse::<u16>().ok(), Some(r.slot));
            }
        }
    }

    #[test]
    fn io_retryable() {
        let e: Error = io::Error::from(io::ErrorKind::ConnectionReset).into();
        assert!(e.is_retryable_io());
        assert!(e.is_connection_error());
        let e: Error = io::Error::from(io::ErrorKind::PermissionDenied).into();
        assert!(!e.is_retryable_io());
        assert!(!Error::Timeout.is_connection_error());
    }
}

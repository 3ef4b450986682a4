use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ServerError;

/// One RESP2 or RESP3 value.
///
/// Strings are [`Bytes`] slices of the connection's read buffer, so a reply is
/// never copied after it is read. Error replies nested inside aggregates stay
/// values ([`Value::Error`]); a top-level error reply to a command becomes
/// [`Error::Server`](crate::Error::Server) instead.
///
/// ```
/// use redis_layers::Value;
/// use bytes::Bytes;
///
/// let v = Value::Array(vec![Value::Integer(1), Value::BulkString(Bytes::from_static(b"a"))]);
/// assert_eq!(v.to_bytes().as_ref(), b"*2\r\n:1\r\n$1\r\na\r\n");
/// ```
#[derive(Clone, PartialEq)]
pub enum Value {
    /// `+OK`
    SimpleString(Bytes),
    /// `-ERR ...` (the text after `-`).
    Error(Bytes),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo`
    BulkString(Bytes),
    /// RESP3 `_`, and RESP2's `$-1` / `*-1`.
    Null,
    /// `*N`
    Array(Vec<Value>),
    /// RESP3 `%N`: key/value pairs in the server's order.
    Map(Vec<(Value, Value)>),
    /// RESP3 `~N`
    Set(Vec<Value>),
    /// RESP3 `,3.14` (also `inf`, `-inf`, `nan`).
    Double(f64),
    /// RESP3 `#t` / `#f`
    Boolean(bool),
    /// RESP3 `(123...`: the digits, as sent.
    BigNumber(Bytes),
    /// RESP3 `=15\r\ntxt:Some string`: the three-letter format and the text.
    VerbatimString {
        /// The format, e.g. `txt` or `mkd`.
        format: [u8; 3],
        /// The text after `xxx:`.
        text: Bytes,
    },
    /// RESP3 `!21\r\nSYNTAX invalid syntax`
    BlobError(Bytes),
    /// RESP3 `>N`: an out-of-band push; the first element is its kind.
    Push(Vec<Value>),
    /// RESP3 `|N`: attributes annotating the value that follows.
    Attribute {
        /// The attribute map.
        attributes: Vec<(Value, Value)>,
        /// The annotated value.
        value: Box<Value>,
    },
}

impl Value {
    /// The string bytes of a simple, bulk or verbatim string.
    ///
    /// ```
    /// # use redis_layers::Value;
    /// assert_eq!(Value::SimpleString("OK".into()).as_bytes(), Some(&b"OK"[..]));
    /// assert_eq!(Value::Integer(1).as_bytes(), None);
    /// ```
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::SimpleString(b) | Value::BulkString(b) => Some(b),
            Value::VerbatimString { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The integer of an `Integer` value.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// True for `Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The server error of an `Error` or `BlobError` value.
    pub fn as_server_error(&self) -> Option<ServerError> {
        match self {
            Value::Error(b) | Value::BlobError(b) => Some(ServerError::parse(b.clone())),
            _ => None,
        }
    }

    /// The kind of a push (`message`, `invalidate`, `MOVING`, ...).
    pub fn push_kind(&self) -> Option<&[u8]> {
        match self {
            Value::Push(items) => items.first().and_then(|k| k.as_bytes()),
            _ => None,
        }
    }

    /// The value without any attributes that annotate it.
    pub fn without_attributes(self) -> Value {
        match self {
            Value::Attribute { value, .. } => value.without_attributes(),
            v => v,
        }
    }

    /// Appends the RESP encoding of this value to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Value::SimpleString(s) => line(buf, b'+', s),
            Value::Error(s) => line(buf, b'-', s),
            Value::Integer(i) => {
                let mut f = itoa::Buffer::new();
                line(buf, b':', f.format(*i).as_bytes());
            }
            Value::BulkString(s) => blob(buf, b'$', &[s]),
            Value::Null => buf.put_slice(b"_\r\n"),
            Value::Array(items) => aggregate(buf, b'*', items),
            Value::Set(items) => aggregate(buf, b'~', items),
            Value::Push(items) => aggregate(buf, b'>', items),
            Value::Map(pairs) => pairs_of(buf, b'%', pairs),
            Value::Double(d) => line(buf, b',', format_double(*d).as_bytes()),
            Value::Boolean(b) => buf.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Value::BigNumber(n) => line(buf, b'(', n),
            Value::VerbatimString { format, text } => blob(buf, b'=', &[format, b":", text]),
            Value::BlobError(s) => blob(buf, b'!', &[s]),
            Value::Attribute { attributes, value } => {
                pairs_of(buf, b'|', attributes);
                value.encode(buf);
            }
        }
    }

    /// The RESP encoding of this value.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }
}

/// Formats a double the way RESP3 spells it (`inf`, `-inf`, `nan`).
pub(crate) fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".into()
    } else if d.is_infinite() {
        if d > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        // `{:?}` is the shortest representation that round-trips.
        format!("{d:?}")
    }
}

fn line(buf: &mut BytesMut, tag: u8, s: &[u8]) {
    buf.reserve(s.len() + 3);
    buf.put_u8(tag);
    buf.put_slice(s);
    buf.put_slice(b"\r\n");
}

fn header(buf: &mut BytesMut, tag: u8, n: usize) {
    let mut f = itoa::Buffer::new();
    line(buf, tag, f.format(n).as_bytes());
}

fn blob(buf: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len = parts.iter().map(|p| p.len()).sum();
    header(buf, tag, len);
    buf.reserve(len + 2);
    for p in parts {
        buf.put_slice(p);
    }
    buf.put_slice(b"\r\n");
}

fn aggregate(buf: &mut BytesMut, tag: u8, items: &[Value]) {
    header(buf, tag, items.len());
    for v in items {
        v.encode(buf);
    }
}

fn pairs_of(buf: &mut BytesMut, tag: u8, pairs: &[(Value, Value)]) {
    header(buf, tag, pairs.len());
    for (k, v) in pairs {
        k.encode(buf);
        v.encode(buf);
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn s(b: &[u8]) -> String {
            String::from_utf8_lossy(b).into_owned()
        }
        match self {
            Value::SimpleString(b) => write!(f, "simple({:?})", s(b)),
            Value::Error(b) => write!(f, "error({:?})", s(b)),
            Value::Integer(i) => write!(f, "int({i})"),
            Value::BulkString(b) => write!(f, "bulk({:?})", s(b)),
            Value::Null => f.write_str("null"),
            Value::Array(v) => f.debug_list().entries(v).finish(),
            Value::Map(m) => f
                .debug_map()
                .entries(m.iter().map(|(k, v)| (k, v)))
                .finish(),
            Value::Set(v) => {
                f.write_str("set")?;
                f.debug_set().entries(v).finish()
            }
            Value::Double(d) => write!(f, "double({d})"),
            Value::Boolean(b) => write!(f, "bool({b})"),
            Value::BigNumber(b) => write!(f, "big({})", s(b)),
            Value::VerbatimString { format, text } => {
                write!(f, "verbatim({}:{:?})", s(format), s(text))
            }
            Value::BlobError(b) => write!(f, "blob_error({:?})", s(b)),
            Value::Push(v) => {
                f.write_str("push")?;
                f.debug_list().entries(v).finish()
            }
            Value::Attribute { attributes, value } => f
                .debug_struct("attribute")
                .field("attributes", attributes)
                .field("value", value)
                .finish(),
        }
    }
}

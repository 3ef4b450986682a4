//! Incremental RESP2/RESP3 decoder.
//!
//! Decoding runs in two passes over each frame. The *scan* walks the frame's
//! structure without allocating and can stop at any byte and resume where it
//! stopped when more input arrives, so a large aggregate arriving in many
//! reads costs O(size), not O(size x reads). Limits are enforced here, before
//! anything is allocated. Once the whole frame is buffered, it is split off
//! the read buffer and *built* into a [`Value`] whose strings are slices of
//! that one buffer: no reply bytes are copied.
//!
//! Pushes nested inside an aggregate (Redis 7.0 can put a pub/sub message in
//! the middle of an `EXEC` reply) are lifted out: they do not count as
//! elements of the aggregate, and [`Decoder::decode`] returns them, in order,
//! before the frame that contained them.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::Value;
use crate::error::ProtocolError;

/// Bounds on what one frame may contain. Breaking one is a
/// [`ProtocolError`]; nothing is allocated for the offending frame.
///
/// A server controls every length it sends, so each is checked as soon as
/// its header is read, before any byte of the body has to arrive: a header
/// like `$536870912` or `*4000000000` is an error at once, or (within the
/// limits) waits for its data with no reservation beyond what has arrived
/// and a bounded chunk. In the worst case one frame holds
/// [`max_frame_len`](Self::max_frame_len) bytes of buffer plus
/// [`max_elements`](Self::max_elements) values (about 40 bytes each).
///
/// ```
/// use redis_layers::resp::{Decoder, Limits};
/// use bytes::BytesMut;
///
/// let limits = Limits { max_bulk_len: 4, ..Limits::default() };
/// let mut buf = BytesMut::from(&b"$5\r\nhello\r\n"[..]);
/// assert!(Decoder::with_limits(limits).decode(&mut buf).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string, blob error or verbatim string (default 512 MiB,
    /// Redis's own `proto-max-bulk-len`).
    pub max_bulk_len: usize,
    /// Most elements in one array, set or push, or pairs in one map
    /// (default 2^32 - 1).
    pub max_aggregate_len: usize,
    /// Deepest nesting of aggregates (default 128). A decoder never goes
    /// deeper than [`Limits::MAX_DEPTH`] (512), whatever is set here: a
    /// value is built by recursion, and deeper nesting could overflow the
    /// stack.
    pub max_depth: usize,
    /// Longest line-typed value: simple string, error, number (default 64 KiB).
    pub max_inline_len: usize,
    /// Longest frame, in bytes, all its parts together (default 1 GiB):
    /// what one reply may make the client buffer.
    pub max_frame_len: usize,
    /// Most elements in one frame, at every level together, pairs of a
    /// map counting two (default 2^24 = 16,777,216, about 640 MiB of
    /// values): what one reply may make the client build.
    pub max_elements: usize,
}

impl Limits {
    /// The deepest nesting any decoder accepts: 512 levels, whatever
    /// [`max_depth`](Self::max_depth) says. Redis replies nest a few
    /// levels; a script's reply may nest deeper, but not this deep.
    ///
    /// ```
    /// use redis_layers::resp::{Decoder, Limits};
    /// let d = Decoder::with_limits(Limits { max_depth: usize::MAX, ..Limits::default() });
    /// assert_eq!(d.limits().max_depth, Limits::MAX_DEPTH);
    /// ```
    pub const MAX_DEPTH: usize = 512;

    /// The default limits, as a constant (for `const` contexts:
    /// `Limits { max_depth: 8, ..Limits::DEFAULT }`).
    ///
    /// ```
    /// use redis_layers::resp::Limits;
    /// assert_eq!(Limits::DEFAULT, Limits::default());
    /// assert_eq!(Limits::DEFAULT.max_bulk_len, 512 * 1024 * 1024);
    /// assert_eq!(Limits::DEFAULT.max_frame_len, 1 << 30);
    /// assert_eq!(Limits::DEFAULT.max_elements, 1 << 24);
    /// ```
    pub const DEFAULT: Limits = Limits {
        max_bulk_len: 512 * 1024 * 1024,
        max_aggregate_len: u32::MAX as usize,
        max_depth: 128,
        max_inline_len: 64 * 1024,
        max_frame_len: 1 << 30,
        max_elements: 1 << 24,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LevelKind {
    /// An aggregate that counts as one element of its parent.
    Counted,
    /// Attributes and the value they annotate: one element of the parent.
    /// A chain of attributes nests, so `max_depth` bounds it.
    Attr,
    /// A push inside an aggregate: not an element of its parent.
    NestedPush,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    remaining: u64,
    kind: LevelKind,
}

/// An incremental RESP decoder with [`Limits`].
///
/// Feed it a buffer that grows as bytes arrive; each call takes at most one
/// complete frame off the front.
///
/// ```
/// use redis_layers::{resp::Decoder, Value};
/// use bytes::BytesMut;
///
/// let mut dec = Decoder::new();
/// let mut buf = BytesMut::from(&b"$5\r\nhel"[..]);
/// assert_eq!(dec.decode(&mut buf).unwrap(), None); // partial: wait for more
/// buf.extend_from_slice(b"lo\r\n:7\r\n");
/// assert_eq!(dec.decode(&mut buf).unwrap(), Some(Value::BulkString("hello".into())));
/// assert_eq!(dec.decode(&mut buf).unwrap(), Some(Value::Integer(7)));
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    /// Offset of the next element to scan in the current frame.
    pos: usize,
    stack: Vec<Level>,
    /// Bytes the current frame needs at least, when known (bulk bodies).
    need: usize,
    /// Elements of the current frame scanned so far, at every level.
    elements: usize,
    /// Frames ready to return: lifted nested pushes, then their container.
    ready: VecDeque<Value>,
}

impl Decoder {
    /// A decoder with the default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with the given limits (`max_depth` at most
    /// [`Limits::MAX_DEPTH`]).
    pub fn with_limits(limits: Limits) -> Self {
        Decoder {
            limits: Limits {
                max_depth: limits.max_depth.min(Limits::MAX_DEPTH),
                ..limits
            },
            ..Self::default()
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How many bytes the buffer must hold before the current frame can
    /// complete, when the decoder knows (a bulk string's body). The number
    /// comes from the peer: grow a buffer towards it as bytes arrive (at
    /// most doubling), never reserve it up front.
    pub fn bytes_needed(&self) -> usize {
        self.need
    }

    /// Takes the next complete frame off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete frame yet; call again
    /// with more bytes appended. After an error the stream is unusable.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Value>, ProtocolError> {
        if let Some(v) = self.ready.pop_front() {
            return Ok(Some(v));
        }
        let Some(len) = self.scan(buf)? else {
            return Ok(None);
        };
        let frame = buf.split_to(len).freeze();
        let mut builder = Builder {
            buf: &frame,
            pos: 0,
            lifted: Vec::new(),
            aggregates: 0,
        };
        let value = builder.value();
        match value {
            Ok(v) if builder.lifted.is_empty() => Ok(Some(v)),
            Ok(v) => {
                let mut lifted = std::mem::take(&mut builder.lifted).into_iter();
                let first = lifted.next();
                self.ready.extend(lifted);
                self.ready.push_back(v);
                Ok(first)
            }
            Err(e) => Err(e),
        }
    }

    /// Scans `buf` and returns the length of the complete frame at its
    /// front, without building it. Proxies use this to forward frames as raw
    /// bytes. Resumable like [`Decoder::decode`]: call again with the same,
    /// grown, buffer after `Ok(None)`; after `Ok(Some(n))` remove `n` bytes.
    pub fn frame_len(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        self.scan(buf)
    }

    fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let res = self.scan_inner(buf);
        if !matches!(res, Ok(None)) {
            self.pos = 0;
            self.need = 0;
            self.elements = 0;
            self.stack.clear();
        }
        res
    }

    fn scan_inner(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        loop {
            let p = self.pos;
            let Some(&tag) = buf.get(p) else {
                self.need = p + 1;
                return Ok(None);
            };
            // Fail on a bad type byte now: a peer that is not speaking RESP
            // may never send the CRLF that the line search would wait for.
            if !matches!(
                tag,
                b'+' | b'-'
                    | b':'
                    | b','
                    | b'#'
                    | b'('
                    | b'_'
                    | b'$'
                    | b'!'
                    | b'='
                    | b'*'
                    | b'~'
                    | b'>'
                    | b'%'
                    | b'|'
            ) {
                return Err(ProtocolError::new(format!(
                    "unknown type byte {:?}",
                    char::from(tag)
                )));
            }
            let Some(line_end) = find_line_end(buf, p + 1, self.limits.max_inline_len)? else {
                self.need = p + 3;
                return Ok(None);
            };
            let line = &buf[p + 1..line_end];
            let next = line_end + 2;
            if next > self.limits.max_frame_len {
                return Err(frame_too_long(&self.limits));
            }
            if self.elements >= self.limits.max_elements {
                return Err(too_many_elements(&self.limits));
            }
            self.elements += 1;
            let counted = match tag {
                b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => {
                    self.pos = next;
                    true
                }
                b'$' | b'!' | b'=' => {
                    let len = parse_int(line).ok_or_else(|| bad_len(tag, line))?;
                    if len == -1 && tag == b'$' {
                        self.pos = next;
                    } else {
                        let len = usize::try_from(len).map_err(|_| bad_len(tag, line))?;
                        if len > self.limits.max_bulk_len {
                            return Err(ProtocolError::new(format!(
                                "bulk length {len} exceeds the limit of {}",
                                self.limits.max_bulk_len
                            )));
                        }
                        let end = next.saturating_add(len).saturating_add(2);
                        if end > self.limits.max_frame_len {
                            return Err(frame_too_long(&self.limits));
                        }
                        if buf.len() < end {
                            self.need = end;
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(ProtocolError::new("bulk string not terminated by CRLF"));
                        }
                        self.pos = end;
                    }
                    true
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(line).ok_or_else(|| bad_len(tag, line))?;
                    self.pos = next;
                    if n == -1 && tag == b'*' {
                        true
                    } else {
                        let n = usize::try_from(n).map_err(|_| bad_len(tag, line))?;
                        if n > self.limits.max_aggregate_len {
                            return Err(ProtocolError::new(format!(
                                "aggregate of {n} elements exceeds the limit of {}",
                                self.limits.max_aggregate_len
                            )));
                        }
                        let kind = match tag {
                            b'|' => LevelKind::Attr,
                            // Out of band only inside a real aggregate: a
                            // top-level push (perhaps annotated) is the frame.
                            b'>' if self.stack.iter().any(|l| l.kind != LevelKind::Attr) => {
                                LevelKind::NestedPush
                            }
                            _ => LevelKind::Counted,
                        };
                        // Attributes: their pairs, then the annotated value.
                        let remaining = match tag {
                            b'%' => n as u64 * 2,
                            b'|' => n as u64 * 2 + 1,
                            _ => n as u64,
                        };
                        // Checked against what is left of the frame's
                        // element budget before anything waits for them.
                        if remaining > (self.limits.max_elements - self.elements) as u64 {
                            return Err(too_many_elements(&self.limits));
                        }
                        if remaining == 0 {
                            kind == LevelKind::Counted
                        } else {
                            if self.stack.len() >= self.limits.max_depth {
                                return Err(ProtocolError::new(format!(
                                    "nesting deeper than the limit of {}",
                                    self.limits.max_depth
                                )));
                            }
                            self.stack.push(Level { remaining, kind });
                            continue;
                        }
                    }
                }
                _ => unreachable!("type byte checked above"),
            };
            if self.element_done(counted) {
                return Ok(Some(self.pos));
            }
        }
    }

    /// Records a finished element; true when it finished the whole frame.
    fn element_done(&mut self, mut counted: bool) -> bool {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return counted;
            };
            if !counted {
                return false;
            }
            top.remaining -= 1;
            if top.remaining > 0 {
                return false;
            }
            counted = top.kind != LevelKind::NestedPush;
            self.stack.pop();
        }
    }
}

fn frame_too_long(limits: &Limits) -> ProtocolError {
    ProtocolError::new(format!(
        "frame longer than the limit of {} bytes",
        limits.max_frame_len
    ))
}

fn too_many_elements(limits: &Limits) -> ProtocolError {
    ProtocolError::new(format!(
        "frame of more than the limit of {} elements",
        limits.max_elements
    ))
}

fn bad_len(tag: u8, line: &[u8]) -> ProtocolError {
    ProtocolError::new(format!(
        "invalid length {:?} for type {:?}",
        String::from_utf8_lossy(line),
        char::from(tag)
    ))
}

/// Index of the `\r` that ends the line starting at `start`.
fn find_line_end(buf: &[u8], start: usize, max: usize) -> Result<Option<usize>, ProtocolError> {
    let window =
        &buf[start.min(buf.len())..buf.len().min(start.saturating_add(max).saturating_add(2))];
    match memchr::memchr(b'\r', window) {
        Some(i) if i > max => Err(ProtocolError::new(format!(
            "line longer than the limit of {max} bytes"
        ))),
        Some(i) => match window.get(i + 1) {
            Some(b'\n') => Ok(Some(start + i)),
            Some(_) => Err(ProtocolError::new("CR not followed by LF")),
            None => Ok(None),
        },
        None if window.len() > max => Err(ProtocolError::new(format!(
            "line longer than the limit of {max} bytes"
        ))),
        None => Ok(None),
    }
}

/// Parses a signed decimal integer with no leading `+`, no spaces.
pub(crate) fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?;
        n = if neg {
            n.checked_sub((d - b'0') as i64)?
        } else {
            n.checked_add((d - b'0') as i64)?
        };
    }
    Some(n)
}

/// Builds a value from a frame the scan has checked is complete.
///
/// It mirrors the scan: a push is lifted out only inside a real aggregate
/// (`aggregates > 0`), and recursion is bounded by the scan's depth limit.
struct Builder<'a> {
    buf: &'a Bytes,
    pos: usize,
    lifted: Vec<Value>,
    /// Enclosing arrays, sets, maps and pushes (attributes not counted).
    aggregates: usize,
}

impl Builder<'_> {
    fn line(&mut self) -> Result<(u8, usize, usize), ProtocolError> {
        let tag = *self.buf.get(self.pos).ok_or_else(truncated)?;
        let start = self.pos + 1;
        let end = memchr::memchr(b'\r', &self.buf[start..]).ok_or_else(truncated)? + start;
        self.pos = end + 2;
        Ok((tag, start, end))
    }

    fn value(&mut self) -> Result<Value, ProtocolError> {
        let (tag, start, end) = self.line()?;
        let line = &self.buf[start..end];
        Ok(match tag {
            b'+' => Value::SimpleString(self.buf.slice(start..end)),
            b'-' => Value::Error(self.buf.slice(start..end)),
            b':' => Value::Integer(
                parse_int(line).ok_or_else(|| ProtocolError::new("invalid integer"))?,
            ),
            b',' => Value::Double(parse_double(line)?),
            b'#' => match line {
                b"t" => Value::Boolean(true),
                b"f" => Value::Boolean(false),
                _ => return Err(ProtocolError::new("invalid boolean")),
            },
            b'(' => {
                let digits = line.strip_prefix(b"-").unwrap_or(line);
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(ProtocolError::new("invalid big number"));
                }
                Value::BigNumber(self.buf.slice(start..end))
            }
            b'_' if line.is_empty() => Value::Null,
            b'_' => return Err(ProtocolError::new("invalid null")),
            b'$' | b'!' | b'=' => {
                let len = parse_int(line).ok_or_else(truncated)?;
                if len < 0 {
                    return Ok(Value::Null);
                }
                let body = self.buf.slice(self.pos..self.pos + len as usize);
                self.pos += len as usize + 2;
                match tag {
                    b'$' => Value::BulkString(body),
                    b'!' => Value::BlobError(body),
                    _ => {
                        if body.len() < 4 || body[3] != b':' {
                            return Err(ProtocolError::new("invalid verbatim string"));
                        }
                        Value::VerbatimString {
                            format: [body[0], body[1], body[2]],
                            text: body.slice(4..),
                        }
                    }
                }
            }
            b'*' | b'~' | b'>' => {
                let n = parse_int(line).ok_or_else(truncated)?;
                if n < 0 {
                    return Ok(Value::Null);
                }
                self.aggregates += 1;
                let items = self.elements(n as usize)?;
                self.aggregates -= 1;
                match tag {
                    b'*' => Value::Array(items),
                    b'~' => Value::Set(items),
                    _ => Value::Push(items),
                }
            }
            b'%' => {
                self.aggregates += 1;
                let pairs = self.pairs(parse_int(line).ok_or_else(truncated)? as usize)?;
                self.aggregates -= 1;
                Value::Map(pairs)
            }
            b'|' => {
                let attributes = self.pairs(parse_int(line).ok_or_else(truncated)? as usize)?;
                let value = Box::new(self.element()?);
                Value::Attribute { attributes, value }
            }
            _ => return Err(ProtocolError::new("unknown type byte")),
        })
    }

    /// The next element of an aggregate or attribute, lifting out pushes
    /// nested in an aggregate.
    fn element(&mut self) -> Result<Value, ProtocolError> {
        while self.aggregates > 0 && self.buf.get(self.pos) == Some(&b'>') {
            let push = self.value()?;
            self.lifted.push(push);
        }
        self.value()
    }

    /// Room for `n` items of at least `min_len` bytes each: never trust `n`
    /// alone, the frame must hold them.
    fn capacity(&self, n: usize, min_len: usize) -> usize {
        n.min((self.buf.len() - self.pos) / min_len)
    }

    fn elements(&mut self, n: usize) -> Result<Vec<Value>, ProtocolError> {
        let mut items = Vec::with_capacity(self.capacity(n, 3));
        for _ in 0..n {
            items.push(self.element()?);
        }
        Ok(items)
    }

    fn pairs(&mut self, n: usize) -> Result<Vec<(Value, Value)>, ProtocolError> {
        let mut pairs = Vec::with_capacity(self.capacity(n, 6));
        for _ in 0..n {
            let k = self.element()?;
            let v = self.element()?;
            pairs.push((k, v));
        }
        Ok(pairs)
    }
}

fn truncated() -> ProtocolError {
    ProtocolError::new("truncated frame")
}

fn parse_double(line: &[u8]) -> Result<f64, ProtocolError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| ProtocolError::new("invalid double"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Result<Vec<Value>, ProtocolError> {
        let mut dec = Decoder::new();
        let mut buf = BytesMut::from(input);
        let mut out = vec![];
        while let Some(v) = dec.decode(&mut buf)? {
            out.push(v);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    #[test]
    fn parse_int_edges() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b""), None);
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"+1"), None);
        assert_eq!(parse_int(b"1 "), None);
    }

    #[test]
    fn nested_push_is_lifted_and_not_counted() {
        // Redis 7.0: a pub/sub message in the middle of an EXEC reply.
        let input = b"*2\r\n:1\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n:2\r\n";
        let out = all(input).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].push_kind(), Some(&b"message"[..]));
        assert_eq!(
            out[1],
            Value::Array(vec![Value::Integer(1), Value::Integer(2)])
        );
    }

    #[test]
    fn attributes_annotate_the_next_value() {
        let input = b"|1\r\n+ttl\r\n:3\r\n*1\r\n|1\r\n+a\r\n+b\r\n:5\r\n";
        let out = all(input).unwrap();
        assert_eq!(out.len(), 1);
        let Value::Attribute { attributes, value } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(attributes.len(), 1);
        let Value::Array(items) = &**value else {
            panic!()
        };
        assert!(
            matches!(&items[0], Value::Attribute { value, .. } if **value == Value::Integer(5))
        );
    }

    #[test]
    fn limits_and_garbage() {
        assert!(all(b"*-2\r\n").is_err());
        assert!(all(b"$-2\r\n").is_err());
        assert!(all(b"!-1\r\n").is_err());
        assert!(all(b"$3\r\nabcde\r\n").is_err());
        assert!(all(b":1\rx").is_err());
        assert!(all(b":abc\r\n").is_err());
        assert!(all(b"#x\r\n").is_err());
        assert!(all(b"_x\r\n").is_err());
        assert!(all(b"=2\r\nab\r\n").is_err());
        let limits = Limits {
            max_depth: 2,
            max_aggregate_len: 3,
            max_inline_len: 8,
            ..Limits::default()
        };
        let mut dec = Decoder::with_limits(limits);
        let mut buf = BytesMut::from(&b"*1\r\n*1\r\n*1\r\n:1\r\n"[..]);
        assert!(dec.decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"*4\r\n"[..]);
        assert!(Decoder::with_limits(limits).decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&b"+0123456789"[..]);
        assert!(Decoder::with_limits(limits).decode(&mut buf).is_err());
        // A huge declared count breaks the element limit at once...
        let mut buf = BytesMut::from(&b"*4000000000\r\n"[..]);
        assert!(Decoder::new().decode(&mut buf).is_err());
        // ... and within the limits, allocates nothing and waits.
        let unlimited = Limits {
            max_elements: usize::MAX,
            ..Limits::default()
        };
        let mut buf = BytesMut::from(&b"*4000000000\r\n"[..]);
        assert_eq!(
            Decoder::with_limits(unlimited).decode(&mut buf).unwrap(),
            None
        );
    }

    /// Nesting far deeper than any stack holds, with the depth limit
    /// raised to `usize::MAX`: a protocol error (it aborted the process
    /// with a stack overflow in the recursive builder).
    #[test]
    fn depth_is_capped_whatever_the_limit() {
        let limits = Limits {
            max_depth: usize::MAX,
            ..Limits::default()
        };
        let mut input = b"*1\r\n".repeat(10_000);
        input.extend_from_slice(b":1\r\n");
        let mut buf = BytesMut::from(&input[..]);
        let e = Decoder::with_limits(limits).decode(&mut buf).unwrap_err();
        assert!(e.message().contains("nesting"), "{e}");
        // The deepest allowed still decodes.
        let mut input = b"*1\r\n".repeat(Limits::MAX_DEPTH);
        input.extend_from_slice(b":1\r\n");
        let mut buf = BytesMut::from(&input[..]);
        assert!(Decoder::with_limits(limits)
            .decode(&mut buf)
            .unwrap()
            .is_some());
    }

    /// The frame and element limits apply to the whole frame, every level,
    /// and fail as soon as a header breaks them.
    #[test]
    fn frame_and_element_limits() {
        let limits = Limits {
            max_frame_len: 32,
            max_elements: 4,
            ..Limits::default()
        };
        let dec = || Decoder::with_limits(limits);
        let ok = |input: &[u8]| dec().decode(&mut BytesMut::from(input)).unwrap().is_some();
        let err = |input: &[u8]| dec().decode(&mut BytesMut::from(input)).unwrap_err();
        // Frame: 4 values in all, 32 bytes.
        assert!(ok(b"*3\r\n:1\r\n:2\r\n:3\r\n"));
        assert!(err(b"*4\r\n").message().contains("elements"));
        assert!(err(b"*1\r\n*3\r\n").message().contains("elements"));
        assert!(err(b"%2\r\n").message().contains("elements"));
        assert!(err(b"*2\r\n*1\r\n:1\r\n*1\r\n:1\r\n")
            .message()
            .contains("elements"));
        // A bulk header whose body would end past the frame limit: at once.
        assert!(err(b"$30\r\n").message().contains("frame longer"));
        assert!(ok(b"$23\r\naaaaaaaaaaaaaaaaaaaaaaa\r\n"));
        assert!(err(b"*2\r\n$12\r\naaaaaaaaaaaa\r\n$9\r\n")
            .message()
            .contains("frame longer"));
        // Limits apply per frame: the next one starts afresh.
        let mut d = dec();
        let mut buf = BytesMut::from(&b"*3\r\n:1\r\n:2\r\n:3\r\n*3\r\n:1\r\n:2\r\n:3\r\n"[..]);
        assert!(d.decode(&mut buf).unwrap().is_some());
        assert!(d.decode(&mut buf).unwrap().is_some());
        // Defaults: a 2e9-element header is refused before any data.
        let mut buf = BytesMut::from(&b"*2000000000\r\n"[..]);
        assert!(Decoder::new().decode(&mut buf).is_err());
    }

    #[test]
    fn bytes_needed_for_bulk() {
        let mut dec = Decoder::new();
        let mut buf = BytesMut::from(&b"$100\r\nab"[..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        assert_eq!(dec.bytes_needed(), 6 + 100 + 2);
    }
}

use std::fmt;
use std::io::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

/// Starts a command: `cmd("SET").arg("key").arg(42)`.
///
/// ```
/// use redis_layers::cmd;
/// let c = cmd("SET").arg("greeting").arg("hello").arg("EX").arg(60);
/// assert_eq!(c.arg_count(), 5);
/// assert_eq!(c.argv().nth(4), Some(&b"60"[..]));
/// ```
pub fn cmd(name: &str) -> Cmd {
    Cmd::new().arg(name)
}

/// A command: its name and arguments, already RESP-encoded.
///
/// Arguments are encoded into one buffer as they are added, so sending a
/// command costs one copy into the connection's write buffer, and the
/// cluster layer can still read the keys back with [`Cmd::argv`].
///
/// A long command (over 1 KiB encoded) made into a
/// [`Request`](crate::Request) shares its buffer: cloning it then (a retry
/// layer's or a router's copy, to send it again) costs a reference count,
/// not a copy of its bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Cmd {
    /// `$len\r\nbytes\r\n` for each argument, in order.
    buf: Buf,
    argc: usize,
}

/// Commands longer than this many encoded bytes share their buffer once
/// they are a request: below it, a copy costs about what sharing does (the
/// shared buffer's header is one allocation too).
const SHARE_MIN: usize = 1024;

/// A command's encoded arguments: owned while it is built, shared once a
/// long one is sent (see [`Cmd`]). An `Arc` of the `Vec` itself: made
/// without copying the bytes, and, with the `Vec`'s niche, no larger than
/// the `Vec` (every request and response future carries a `Cmd`).
#[derive(Clone)]
enum Buf {
    Own(Vec<u8>),
    Shared(std::sync::Arc<Vec<u8>>),
}

/// A shared command buffer as the owner of [`Bytes`].
struct SharedArgs(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedArgs {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Default for Buf {
    fn default() -> Self {
        Buf::Own(Vec::new())
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Buf::Own(v) => v,
            Buf::Shared(b) => b.as_slice(),
        }
    }
}

impl PartialEq for Buf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Buf {}

impl Buf {
    /// The bytes to append to: a shared buffer is copied first (only when
    /// a command is extended after it was made a request).
    fn make_mut(&mut self) -> &mut Vec<u8> {
        if let Buf::Shared(b) = self {
            *self = Buf::Own(b.as_ref().clone());
        }
        match self {
            Buf::Own(v) => v,
            // Not reached (made owned just above); a fresh buffer would do.
            Buf::Shared(_) => {
                *self = Buf::Own(Vec::new());
                self.make_mut()
            }
        }
    }
}

impl Cmd {
    /// An empty command; add the name with [`Cmd::arg`] first.
    pub fn new() -> Self {
        Cmd {
            buf: Buf::Own(Vec::with_capacity(64)),
            argc: 0,
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl ToArg) -> Self {
        self.push_arg(arg);
        self
    }

    /// Appends every argument of an iterator.
    ///
    /// ```
    /// use redis_layers::cmd;
    /// let c = cmd("DEL").args(["a", "b", "c"]);
    /// assert_eq!(c.arg_count(), 4);
    /// ```
    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        for a in args {
            self.push_arg(a);
        }
        self
    }

    /// Appends an argument in place.
    pub fn push_arg(&mut self, arg: impl ToArg) -> &mut Self {
        arg.write_arg(&mut ArgWriter { cmd: self });
        self
    }

    /// Appends one value or many: see [`ToArgs`].
    ///
    /// ```
    /// use redis_layers::cmd;
    /// assert_eq!(cmd("DEL").with_args("a").arg_count(), 2);
    /// assert_eq!(cmd("DEL").with_args(["a", "b"]).arg_count(), 3);
    /// // Bytes are one value, not one argument per byte.
    /// assert_eq!(cmd("SET").arg("k").with_args(vec![1u8, 2, 3]).arg_count(), 3);
    /// ```
    pub fn with_args(mut self, args: impl ToArgs) -> Self {
        self.push_args(args);
        self
    }

    /// Appends one value or many in place: see [`ToArgs`].
    pub fn push_args(&mut self, args: impl ToArgs) -> &mut Self {
        args.write_args(&mut ArgWriter { cmd: self });
        self
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        let mut len = itoa::Buffer::new();
        let len = len.format(bytes.len()).as_bytes();
        let buf = self.buf.make_mut();
        buf.reserve(len.len() + bytes.len() + 5);
        buf.push(b'$');
        buf.extend_from_slice(len);
        buf.extend_from_slice(b"\r\n");
        buf.extend_from_slice(bytes);
        buf.extend_from_slice(b"\r\n");
        self.argc += 1;
    }

    /// The number of arguments, the name included.
    pub fn arg_count(&self) -> usize {
        self.argc
    }

    /// The arguments, the name first.
    pub fn argv(&self) -> Argv<'_> {
        Argv { rest: &self.buf }
    }

    /// The command name as given (first argument).
    pub fn name(&self) -> Option<&[u8]> {
        self.argv().next()
    }

    /// True when the name equals `name`, ignoring ASCII case.
    pub fn is(&self, name: &str) -> bool {
        self.name()
            .is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// True for commands that block on the server by design: `BLPOP` and
    /// the other `B*` list and sorted-set pops, `XREAD`/`XREADGROUP` with
    /// `BLOCK`, `WAIT` and `WAITAOF`.
    ///
    /// ```
    /// use redis_layers::cmd;
    /// assert!(cmd("blpop").arg("k").arg(0).is_blocking());
    /// assert!(cmd("XREAD").arg("BLOCK").arg(0).arg("STREAMS").arg("s").arg("$").is_blocking());
    /// assert!(!cmd("XREAD").arg("STREAMS").arg("s").arg("0").is_blocking());
    /// assert!(!cmd("GET").arg("k").is_blocking());
    /// ```
    pub fn is_blocking(&self) -> bool {
        const BLOCKING: [&str; 10] = [
            "BLPOP",
            "BRPOP",
            "BRPOPLPUSH",
            "BLMOVE",
            "BLMPOP",
            "BZPOPMIN",
            "BZPOPMAX",
            "BZMPOP",
            "WAIT",
            "WAITAOF",
        ];
        // Cheap filter, on the hot path of every timed request: every
        // blocking name starts with B, W or X, and the name's first byte
        // follows the first `\n` (`$3\r\nGET...`).
        // (A plain loop: the `\n` is within the first few bytes, where a
        // call to `memchr` costs more than the search.)
        let first = self
            .buf
            .iter()
            .take(24)
            .position(|&b| b == b'\n')
            .and_then(|i| self.buf.get(i + 1));
        if !matches!(first.map(|b| b | 0x20), Some(b'b' | b'w' | b'x')) {
            return false;
        }
        let Some(name) = self.name() else {
            return false;
        };
        if BLOCKING
            .iter()
            .any(|b| name.eq_ignore_ascii_case(b.as_bytes()))
        {
            return true;
        }
        (name.eq_ignore_ascii_case(b"XREAD") || name.eq_ignore_ascii_case(b"XREADGROUP"))
            && self
                .argv()
                .skip(1)
                .any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
    }

    /// The encoded arguments and their count (for compact copies).
    pub(crate) fn raw(&self) -> (&[u8], usize) {
        (&self.buf, self.argc)
    }

    /// The arguments of a [`Cmd::raw`] buffer from byte `at` on (which must
    /// be where an argument starts).
    pub(crate) fn args_at(raw: &[u8], at: usize) -> Argv<'_> {
        Argv {
            rest: raw.get(at..).unwrap_or_default(),
        }
    }

    /// The one argument of a [`Cmd::raw`] buffer that starts at byte `at`
    /// (which must be where an argument starts): [`args_at`](Self::args_at)
    /// then `next()`, inlined where the length has one or two digits (names
    /// and keys of up to 99 bytes, the routing hot path's common case).
    #[inline]
    pub(crate) fn arg_at(raw: &[u8], at: usize) -> Option<&[u8]> {
        match raw.get(at..).and_then(short_header) {
            Some((len, start)) => raw.get(at + start..at + start + len),
            None => Cmd::args_at(raw, at).next(),
        }
    }

    /// A command from [`Cmd::raw`]'s parts.
    pub(crate) fn from_raw(buf: Vec<u8>, argc: usize) -> Cmd {
        Cmd {
            buf: Buf::Own(buf),
            argc,
        }
    }

    /// Shares the buffer of a long command (see [`Cmd`]): no copy, and
    /// its clones from now on cost a reference count.
    pub(crate) fn share(&mut self) {
        if let Buf::Own(v) = &mut self.buf {
            if v.len() > SHARE_MIN {
                self.buf = Buf::Shared(std::sync::Arc::new(std::mem::take(v)));
            }
        }
    }

    /// Bytes this command takes on the wire.
    pub fn encoded_len(&self) -> usize {
        self.buf.len() + 3 + itoa::Buffer::new().format(self.argc).len()
    }

    /// Appends the RESP encoding (`*N\r\n` and the arguments) to `out`.
    pub fn write_to(&self, out: &mut BytesMut) {
        // `*`, at most 20 digits, CRLF: no need to format the count twice.
        out.reserve(self.buf.len() + 23);
        self.write_head(out);
        out.put_slice(&self.buf);
    }

    /// `*N\r\n`: what comes before the arguments.
    fn write_head(&self, out: &mut BytesMut) {
        out.put_u8(b'*');
        out.put_slice(itoa::Buffer::new().format(self.argc).as_bytes());
        out.put_slice(b"\r\n");
    }

    /// Appends `*N\r\n` alone to `out`, and returns the arguments as
    /// [`Bytes`] sharing this command's buffer, when it is shared (a long
    /// command made a request): the connection writes them from there
    /// instead of copying them into its write buffer.
    pub(crate) fn write_shared_to(&self, out: &mut BytesMut) -> Option<Bytes> {
        let Buf::Shared(b) = &self.buf else {
            return None;
        };
        self.write_head(out);
        Some(Bytes::from_owner(SharedArgs(b.clone())))
    }

    /// The RESP encoding of this command.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.write_to(&mut out);
        out.freeze()
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print values: they may be secrets (AUTH) or large.
        let name = self.name().map(String::from_utf8_lossy).unwrap_or_default();
        write!(f, "Cmd({name}, {} args)", self.argc)
    }
}

/// Iterator over a command's arguments; see [`Cmd::argv`].
#[derive(Debug, Clone)]
pub struct Argv<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Argv<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // The buffer only ever holds what `push_bytes` wrote: `$`, the
        // decimal length, `\r\n`, the bytes, `\r\n`. A plain loop reads the
        // few digits faster than a `memchr` call finds the `\n` (this runs
        // on the routing hot path for every key), and a length of one or
        // two digits (names, most keys) is read without the loop.
        let r = self.rest;
        if let Some((len, start)) = short_header(r) {
            let end = start + len;
            let arg = r.get(start..end)?;
            self.rest = r.get(end + 2..).unwrap_or_default();
            return Some(arg);
        }
        let mut len = 0usize;
        let mut at = 1;
        loop {
            match *self.rest.get(at)? {
                d @ b'0'..=b'9' => len = len.checked_mul(10)?.checked_add(usize::from(d - b'0'))?,
                b'\r' => break,
                _ => return None,
            }
            at += 1;
        }
        let start = at + 2;
        let end = start.checked_add(len)?;
        let arg = self.rest.get(start..end)?;
        self.rest = self.rest.get(end + 2..).unwrap_or_default();
        Some(arg)
    }
}

/// The header of the argument `r` starts with when its length has one or
/// two digits (`$7\r\n`, `$42\r\n`): the length, and where the bytes
/// start. `None` for any other header (read by the loop in
/// [`Argv::next`]).
#[inline]
fn short_header(r: &[u8]) -> Option<(usize, usize)> {
    let digit = |b: u8| b.checked_sub(b'0').filter(|d| *d <= 9).map(usize::from);
    match r {
        [_, d, b'\r', ..] => digit(*d).map(|len| (len, 4)),
        [_, d1, d2, b'\r', ..] => digit(*d1).zip(digit(*d2)).map(|(a, b)| (a * 10 + b, 5)),
        _ => None,
    }
}

/// Writes one or more arguments into a [`Cmd`]; see [`ToArg`].
#[derive(Debug)]
pub struct ArgWriter<'a> {
    cmd: &'a mut Cmd,
}

impl ArgWriter<'_> {
    /// Appends one argument.
    pub fn write(&mut self, bytes: &[u8]) {
        self.cmd.push_bytes(bytes);
    }
}

/// A value that can be a command argument.
///
/// Implemented for strings, byte strings, [`Bytes`], integers, floats and
/// references to them. Implement it for your own types to pass them to
/// [`Cmd::arg`] directly.
///
/// ```
/// use redis_layers::{cmd, resp::{ArgWriter, ToArg}};
///
/// struct UserId(u64);
/// impl ToArg for UserId {
///     fn write_arg(&self, out: &mut ArgWriter<'_>) {
///         out.write(format!("user:{}", self.0).as_bytes());
///     }
/// }
/// assert_eq!(cmd("GET").arg(UserId(7)).argv().nth(1), Some(&b"user:7"[..]));
/// ```
pub trait ToArg {
    /// Writes the argument(s) with [`ArgWriter::write`].
    fn write_arg(&self, out: &mut ArgWriter<'_>);
}

impl<T: ToArg + ?Sized> ToArg for &T {
    fn write_arg(&self, out: &mut ArgWriter<'_>) {
        (**self).write_arg(out)
    }
}

macro_rules! bytes_arg {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn write_arg(&self, out: &mut ArgWriter<'_>) {
                out.write(AsRef::<[u8]>::as_ref(self))
            }
        }
    )*};
}
bytes_arg!(str, String, [u8], Vec<u8>, Bytes, BytesMut);

impl<const N: usize> ToArg for [u8; N] {
    fn write_arg(&self, out: &mut ArgWriter<'_>) {
        out.write(self)
    }
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn write_arg(&self, out: &mut ArgWriter<'_>) {
                out.write(itoa::Buffer::new().format(*self).as_bytes())
            }
        }
    )*};
}
int_arg!(i8, i16, i32, i64, i128, isize, u16, u32, u64, u128, usize);

macro_rules! float_arg {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn write_arg(&self, out: &mut ArgWriter<'_>) {
                let mut buf = [0u8; 64];
                let mut cur = &mut buf[..];
                let _ = if self.is_infinite() {
                    cur.write_all(if *self > 0.0 { b"inf" } else { b"-inf" })
                } else {
                    write!(cur, "{:?}", self)
                };
                let len = 64 - cur.len();
                out.write(&buf[..len])
            }
        }
    )*};
}
float_arg!(f32, f64);

/// One argument or many: what the multi-value helpers take (`DEL`,
/// `LPUSH`, `SADD`, `MGET`, ...), so `client.del("k")` and
/// `client.del(["a", "b"])` both work.
///
/// Implemented for every [`ToArg`] type (one value: strings, bytes,
/// numbers, your own types) and for collections of them: `Vec<T>`, `&Vec<T>`,
/// `[T; N]`, `&[T; N]`, `&[T]`, `HashSet<T>`, `BTreeSet<T>` (and references
/// to the sets), `Option<T>` (none or one), and any iterator wrapped in
/// [`Each`].
///
/// Bytes are one value: `Vec<u8>`, `&[u8]`, `[u8; N]`, `b"..."`, [`Bytes`]
/// are a single binary argument, never one argument per byte. (`u8` is
/// deliberately not a [`ToArg`], which is what keeps `Vec<u8>` from also
/// being a collection; a list of binary values is a `Vec<Vec<u8>>` or a
/// `[&[u8]; N]`.)
///
/// ```
/// use redis_layers::cmd;
/// use redis_layers::resp::Each;
///
/// let n = |c: redis_layers::Cmd| c.arg_count() - 1;
/// assert_eq!(n(cmd("DEL").with_args("k")), 1); // one value
/// assert_eq!(n(cmd("DEL").with_args(["a", "b"])), 2); // an array
/// assert_eq!(n(cmd("DEL").with_args(vec!["a".to_string(), "b".into()])), 2); // a Vec
/// let keys = ["a", "b", "c"];
/// assert_eq!(n(cmd("DEL").with_args(&keys[1..])), 2); // a slice
/// assert_eq!(n(cmd("DEL").with_args(Each((0..4).map(|i| format!("k{i}"))))), 4); // an iterator
/// assert_eq!(n(cmd("SADD").arg("s").with_args(b"\x00\xff".to_vec())), 2); // key + one binary value
/// ```
///
/// With the client (one value or many):
///
/// ```no_run
/// # async fn run(client: redis_layers::Client) -> Result<(), redis_layers::Error> {
/// client.del("k").await?;
/// client.lpush("list", "a").await?;
/// client.sadd("set", ["m1", "m2"]).await?;
/// let ids: Vec<u64> = vec![1, 2, 3];
/// client.srem("set", &ids).await?;
/// # Ok(()) }
/// ```
pub trait ToArgs {
    /// Writes the argument(s), each with [`ArgWriter::write`].
    fn write_args(self, out: &mut ArgWriter<'_>);
}

/// Every [`ToArg`] is one argument.
impl<T: ToArg> ToArgs for T {
    fn write_args(self, out: &mut ArgWriter<'_>) {
        self.write_arg(out)
    }
}

// Each collection of `ToArg` items is its items. None of these overlaps the
// impl above because no collection type is a `ToArg`, except the byte
// containers, whose item `u8` is not one.
macro_rules! many_args {
    ($([$($gen:tt)*] $t:ty),* $(,)?) => {$(
        impl<$($gen)*> ToArgs for $t {
            fn write_args(self, out: &mut ArgWriter<'_>) {
                for item in self {
                    item.write_arg(out);
                }
            }
        }
    )*};
}
many_args!(
    [T: ToArg] Vec<T>,
    [T: ToArg] &Vec<T>,
    [T: ToArg] &[T],
    [T: ToArg, const N: usize] [T; N],
    [T: ToArg, const N: usize] &[T; N],
    [T: ToArg, S] std::collections::HashSet<T, S>,
    [T: ToArg, S] &std::collections::HashSet<T, S>,
    [T: ToArg] std::collections::BTreeSet<T>,
    [T: ToArg] &std::collections::BTreeSet<T>,
);

/// None or one.
impl<T: ToArg> ToArgs for Option<T> {
    fn write_args(self, out: &mut ArgWriter<'_>) {
        if let Some(item) = self {
            item.write_arg(out);
        }
    }
}

/// Every item of an iterator as an argument, for [`ToArgs`]:
/// `client.del(Each(ids.iter().map(|id| format!("user:{id}"))))`.
///
/// ```
/// use redis_layers::{cmd, resp::Each};
/// let c = cmd("DEL").with_args(Each(["a", "b"].iter().map(|k| format!("{k}:1"))));
/// assert_eq!(c.argv().nth(2), Some(&b"b:1"[..]));
/// ```
#[derive(Debug, Clone)]
pub struct Each<I>(pub I);

impl<I> ToArgs for Each<I>
where
    I: IntoIterator,
    I::Item: ToArg,
{
    fn write_args(self, out: &mut ArgWriter<'_>) {
        for item in self.0 {
            item.write_arg(out);
        }
    }
}

/// Several commands sent in one write; their replies come back in order.
///
/// ```
/// use redis_layers::{cmd, Pipeline};
/// let p = Pipeline::new().cmd(cmd("INCR").arg("a")).cmd(cmd("GET").arg("a"));
/// assert_eq!(p.len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pipeline {
    cmds: Vec<Cmd>,
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Shares the buffers of its long commands (see [`Cmd`]).
    pub(crate) fn share(&mut self) {
        self.cmds.iter_mut().for_each(Cmd::share);
    }

    /// An empty pipeline with room for `n` commands.
    pub fn with_capacity(n: usize) -> Self {
        Pipeline {
            cmds: Vec::with_capacity(n),
        }
    }

    /// Appends a command.
    pub fn cmd(mut self, cmd: Cmd) -> Self {
        self.cmds.push(cmd);
        self
    }

    /// Appends a command in place.
    pub fn push(&mut self, cmd: Cmd) -> &mut Self {
        self.cmds.push(cmd);
        self
    }

    /// Number of commands.
    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    /// True when there are no commands.
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// The commands, in order.
    pub fn cmds(&self) -> &[Cmd] {
        &self.cmds
    }

    /// The commands, by value.
    pub fn into_cmds(self) -> Vec<Cmd> {
        self.cmds
    }
}

impl FromIterator<Cmd> for Pipeline {
    fn from_iter<I: IntoIterator<Item = Cmd>>(iter: I) -> Self {
        Pipeline {
            cmds: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Arguments whose lengths have one, two and more digits come back as
    /// they went in.
    #[test]
    fn argv_reads_every_length() {
        let lens = [0usize, 1, 9, 10, 42, 99, 100, 101, 999, 1000, 70_000];
        let mut c = cmd("X");
        for &n in &lens {
            c.push_arg(vec![b'a' + (n % 26) as u8; n]);
        }
        let args: Vec<&[u8]> = c.argv().collect();
        assert_eq!(args.len(), lens.len() + 1);
        assert_eq!(args[0], b"X");
        for (a, &n) in args[1..].iter().zip(&lens) {
            assert_eq!(a.len(), n);
            assert!(a.iter().all(|&b| b == b'a' + (n % 26) as u8));
        }
    }

    use super::*;

    #[test]
    fn a_command_is_as_small_as_its_vec() {
        assert_eq!(std::mem::size_of::<Buf>(), std::mem::size_of::<Vec<u8>>());
    }

    /// A long command made a request shares its bytes: a clone (a retry's
    /// or a router's copy) points at the same buffer; a short one is
    /// copied; either compares equal, and extending a shared one copies
    /// it first, leaving the other clone as it was.
    #[test]
    fn long_requests_share_their_bytes() {
        let long = cmd("SET").arg("k").arg(vec![b'v'; 100 * 1024]);
        let req = crate::Request::from(long.clone());
        let copy = req.clone();
        let (crate::Body::Cmd(a), crate::Body::Cmd(b)) = (req.body(), copy.body()) else {
            panic!("one command");
        };
        assert_eq!(a.raw().0.as_ptr(), b.raw().0.as_ptr(), "shared, not copied");
        assert_eq!(*a, long);
        let mut extended = b.clone();
        extended.push_arg("EX");
        assert_eq!(extended.arg_count(), 4);
        assert_eq!(a.arg_count(), 3);
        assert_eq!(*a, long);

        let short = crate::Request::from(cmd("GET").arg("k"));
        let (crate::Body::Cmd(a), crate::Body::Cmd(b)) =
            (short.body(), short.clone().body().clone())
        else {
            panic!("one command");
        };
        assert_ne!(
            a.raw().0.as_ptr(),
            b.raw().0.as_ptr(),
            "a short one is copied"
        );

        let p = crate::Request::from(Pipeline::new().cmd(long.clone()).cmd(cmd("GET").arg("k")));
        let q = p.clone();
        let (crate::Body::Pipeline(p), crate::Body::Pipeline(q)) = (p.body(), q.body()) else {
            panic!("a pipeline");
        };
        assert_eq!(p.cmds()[0].raw().0.as_ptr(), q.cmds()[0].raw().0.as_ptr());
    }

    /// The inlined one-argument read agrees with the iterator at every
    /// argument, and on cut-off buffers.
    #[test]
    fn arg_at_reads_what_argv_reads() {
        let mut c = cmd("GET");
        for n in [0usize, 1, 9, 10, 42, 99, 100, 1000] {
            c.push_arg(vec![b'k'; n]);
        }
        let (raw, _) = c.raw();
        let mut at = 0;
        while at < raw.len() {
            let want = Cmd::args_at(raw, at).next();
            assert_eq!(Cmd::arg_at(raw, at), want, "at {at}");
            let arg = want.expect("an argument");
            let start = at;
            // `$`, the length's digits, `\r\n`, the bytes, `\r\n`.
            at += 1 + arg.len().to_string().len() + 2 + arg.len() + 2;
            for cut in start..at {
                let (a, b) = (
                    Cmd::arg_at(&raw[..cut], start),
                    Cmd::args_at(&raw[..cut], start).next(),
                );
                assert_eq!(a, b, "cut at {cut}");
            }
        }
        assert_eq!(Cmd::arg_at(raw, raw.len()), None);
        assert_eq!(Cmd::arg_at(b"$x\r\n", 0), None);
    }

    /// One value or many: byte containers are one value, collections of
    /// values are their items.
    #[test]
    // The borrowed forms are what is tested.
    #[allow(clippy::needless_borrows_for_generic_args)]
    fn to_args_one_or_many() {
        let n = |c: Cmd| -> Vec<Vec<u8>> { c.argv().skip(1).map(<[u8]>::to_vec).collect() };
        let one = |v: &[u8]| vec![v.to_vec()];
        assert_eq!(n(cmd("X").with_args("k")), one(b"k"));
        assert_eq!(n(cmd("X").with_args(String::from("k"))), one(b"k"));
        assert_eq!(n(cmd("X").with_args(&String::from("k"))), one(b"k"));
        assert_eq!(n(cmd("X").with_args(vec![0u8, 255])), one(&[0, 255]));
        assert_eq!(n(cmd("X").with_args(&vec![0u8, 255])), one(&[0, 255]));
        assert_eq!(n(cmd("X").with_args(&[0u8, 255][..])), one(&[0, 255]));
        assert_eq!(n(cmd("X").with_args([0u8, 255])), one(&[0, 255]));
        assert_eq!(n(cmd("X").with_args(b"ab")), one(b"ab"));
        assert_eq!(n(cmd("X").with_args(Bytes::from("ab"))), one(b"ab"));
        assert_eq!(n(cmd("X").with_args(7i64)), one(b"7"));
        assert_eq!(n(cmd("X").with_args(1.5f64)), one(b"1.5"));

        let ab = vec![b"a".to_vec(), b"b".to_vec()];
        assert_eq!(n(cmd("X").with_args(["a", "b"])), ab);
        assert_eq!(n(cmd("X").with_args(&["a", "b"])), ab);
        assert_eq!(n(cmd("X").with_args(&["a", "b"][..])), ab);
        assert_eq!(n(cmd("X").with_args(vec!["a", "b"])), ab);
        assert_eq!(
            n(cmd("X").with_args(&vec!["a".to_string(), "b".into()])),
            ab
        );
        assert_eq!(
            n(cmd("X").with_args(vec![b"a".to_vec(), b"b".to_vec()])),
            ab
        );
        assert_eq!(n(cmd("X").with_args([&b"a"[..], b"b"])), ab);
        let set: std::collections::BTreeSet<&str> = ["b", "a"].into();
        assert_eq!(n(cmd("X").with_args(&set)), ab);
        assert_eq!(n(cmd("X").with_args(set)), ab);
        assert_eq!(n(cmd("X").with_args(Each(["a", "b"].iter()))), ab);
        assert_eq!(
            n(cmd("X").with_args([1, 2])),
            [b"1".to_vec(), b"2".to_vec()]
        );
        assert_eq!(n(cmd("X").with_args(Some("a"))), one(b"a"));
        assert!(n(cmd("X").with_args(None::<&str>)).is_empty());
        assert!(n(cmd("X").with_args(Vec::<String>::new())).is_empty());
    }

    #[test]
    fn encodes_and_reads_back() {
        let c = cmd("SET")
            .arg("k")
            .arg(b"")
            .arg(-12i64)
            .arg(1.5f64)
            .arg(f64::INFINITY);
        assert_eq!(
            c.to_bytes().as_ref(),
            &b"*6\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$3\r\n-12\r\n$3\r\n1.5\r\n$3\r\ninf\r\n"[..]
        );
        assert_eq!(c.encoded_len(), c.to_bytes().len());
        let argv: Vec<&[u8]> = c.argv().collect();
        assert_eq!(argv, vec![&b"SET"[..], b"k", b"", b"-12", b"1.5", b"inf"]);
        assert!(c.is("set"));
        assert_eq!(format!("{c:?}"), "Cmd(SET, 6 args)");
        let bin = cmd("SET").arg([0u8, b'\r', b'\n', 255]);
        assert_eq!(bin.argv().nth(1), Some(&[0u8, b'\r', b'\n', 255][..]));
    }
}

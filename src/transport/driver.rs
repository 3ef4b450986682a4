//! The task that owns a connection's socket.
//!
//! Callers hand requests over a bounded channel. The driver encodes whatever
//! is queued into one write buffer (up to a byte bound) and writes it, so
//! many callers share one syscall (a command of 16 KiB or more is not
//! copied: one vectored write sends its shared buffer between the bytes
//! before and after it; SET of 100 KiB from 16 tasks: 1.5x the commands
//! per second at two thirds of the CPU); it never waits for replies before writing
//! the next batch, so several batches are on the wire at once. Every written
//! request waits in the in-flight queue, in write order, with the sender of
//! its reply. Replies are matched to the queue front; push frames never are
//! (except the subscribe-family confirmations that an in-flight
//! (UN)SUBSCRIBE is waiting for) and go to the push channel instead.
//!
//! Two scheduling rules keep batches large and the server busy:
//!
//! - When the first request of a new batch arrives and more than one caller
//!   was just answered, the driver yields once before writing: the other
//!   answered callers, queued behind it on the runtime, join the batch
//!   (without this, tokio's LIFO slot runs the driver after every single
//!   caller, and each request costs a syscall).
//! - It completes at most a slice of the requests in flight per turn (a
//!   quarter, 16 to 64), then yields:
//!   the callers answered so far send again, and their requests are written
//!   while the rest of the replies are dispatched. The server works on one
//!   part of the requests while the client turns the other part around,
//!   instead of the two taking turns. (64 callers, one worker thread: from
//!   about 470k to 600k-730k GET/s on the 2-core bench machine.)
//!
//! Reads are polled on every turn, also while a write is blocked, so a full
//! socket in one direction never deadlocks the other. When the socket fails,
//! every written request fails with the I/O (or protocol) error and every
//! queued one with [`Error::Closed`], at once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};

use super::connection::Shared;
use super::push::{PushItem, PushSender};
use crate::error::{Error, ProtocolError, Result, ServerError, ServerErrorKind};
use crate::request::{Body, Response};
use crate::resp::{Cmd, Decoder, Limits, Value};

pub(crate) type ReplyTx = oneshot::Sender<Result<Response>>;

/// Commands up to this many bytes (as encoded), and pipelines up to this
/// many in all, are kept until their replies, to be handed back with a
/// redirect; longer ones are freed once written.
/// The cost: a connection holds the bytes of its in-flight commands twice
/// until they are written (the write buffer's copy), and once until their
/// replies (a blocking `BLPOP k 0` holds its few bytes while it waits).
pub(crate) const RETURN_MAX: usize = 64 * 1024;

/// True when a pipeline's commands are kept until its replies, to hand
/// back the redirected ones: up to [`RETURN_MAX`] bytes in all. A router
/// above asks the same to know whether to keep a copy itself.
pub(crate) fn returns_pipeline(p: &crate::resp::Pipeline) -> bool {
    let mut total = 0;
    p.cmds().iter().all(|c| {
        total += c.raw().0.len();
        total <= RETURN_MAX
    })
}

/// A request on its way from a caller to the driver.
pub(crate) struct Message {
    pub(crate) body: Body,
    pub(crate) tx: ReplyTx,
    /// Fail with [`Error::Timeout`] if no reply came this long after the
    /// request was taken for writing.
    pub(crate) timeout: Option<Duration>,
}

/// Tuning of one connection's driver.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DriverConfig {
    pub(crate) limits: Limits,
    /// Stop taking requests into the write buffer past this many bytes.
    pub(crate) max_write_buffer: usize,
    /// Maintenance notifications go to the endpoint's state (mode not
    /// `Disabled`); otherwise they are pushes like any other.
    pub(crate) maint_routing: bool,
    /// Push frames kept for the reader before newer ones are dropped.
    pub(crate) push_capacity: usize,
}

/// How many replies a command takes, beyond "one ordinary reply".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Reply,
    /// The reply of `RESET`: a `+RESET` then ends every subscription
    /// (another command's `+RESET`, a script's status, does not).
    Reset,
    /// Subscribe-family confirmations (push frames of `kind`).
    Confirm {
        kind: SubKind,
        left: Left,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Count(usize),
    /// `UNSUBSCRIBE` with no channel: one confirmation per channel of its
    /// kind that is subscribed, or a single one with a null channel when
    /// none is. The count in a confirmation does not tell when it is over:
    /// Redis counts channels and patterns together.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubKind {
    Subscribe,
    PSubscribe,
    SSubscribe,
    Unsubscribe,
    PUnsubscribe,
    SUnsubscribe,
}

impl SubKind {
    const ALL: [(SubKind, &'static str); 6] = [
        (SubKind::Subscribe, "subscribe"),
        (SubKind::PSubscribe, "psubscribe"),
        (SubKind::SSubscribe, "ssubscribe"),
        (SubKind::Unsubscribe, "unsubscribe"),
        (SubKind::PUnsubscribe, "punsubscribe"),
        (SubKind::SUnsubscribe, "sunsubscribe"),
    ];

    fn name(self) -> &'static str {
        Self::ALL[self as usize].1
    }

    /// Which subscription set the command or confirmation acts on, and
    /// whether it adds to it.
    fn set(self) -> (usize, bool) {
        match self {
            SubKind::Subscribe => (0, true),
            SubKind::PSubscribe => (1, true),
            SubKind::SSubscribe => (2, true),
            SubKind::Unsubscribe => (0, false),
            SubKind::PUnsubscribe => (1, false),
            SubKind::SUnsubscribe => (2, false),
        }
    }

    fn of(name: &[u8]) -> Option<SubKind> {
        // Cheap filter first: this runs for every command.
        if !(9..=12).contains(&name.len()) || !matches!(name[0] | 0x20, b's' | b'p' | b'u') {
            return None;
        }
        Self::ALL
            .iter()
            .find(|(_, n)| name.eq_ignore_ascii_case(n.as_bytes()))
            .map(|(k, _)| *k)
    }
}

/// True for subscribe-family commands (pub/sub needs RESP3 on a shared
/// connection).
pub(crate) fn is_subscribe_family(cmd: &Cmd) -> bool {
    cmd.name().and_then(SubKind::of).is_some()
}

fn expect_for(cmd: &Cmd) -> Expect {
    let Some(kind) = cmd.name().and_then(SubKind::of) else {
        return if cmd.is("RESET") {
            Expect::Reset
        } else {
            Expect::Reply
        };
    };
    let channels = cmd.arg_count() - 1;
    let left = match kind {
        SubKind::Unsubscribe | SubKind::PUnsubscribe | SubKind::SUnsubscribe if channels == 0 => {
            Left::All
        }
        // `SUBSCRIBE` with no channel gets an ordinary error reply.
        _ if channels == 0 => return Expect::Reply,
        _ => Left::Count(channels),
    };
    Expect::Confirm { kind, left }
}

/// The channels, patterns and shard channels this connection is subscribed
/// to, as the server's confirmations (and unsolicited `sunsubscribe`s) tell.
/// A bare `UNSUBSCRIBE` is over when its kind's set is empty.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    sets: [HashSet<Bytes>; 3],
}

impl Subscriptions {
    /// Applies a subscribe-family push, if it is one.
    fn apply(&mut self, push: &Value) {
        let Value::Push(items) = push else { return };
        let Some(kind) = items
            .first()
            .and_then(Value::as_bytes)
            .and_then(SubKind::of)
        else {
            return;
        };
        let Some(channel) = items.get(1).and_then(Value::as_bytes) else {
            return;
        };
        let (set, add) = kind.set();
        if add {
            self.sets[set].insert(Bytes::copy_from_slice(channel));
        } else {
            self.sets[set].remove(channel);
        }
    }

    fn is_empty(&self, kind: SubKind) -> bool {
        self.sets[kind.set().0].is_empty()
    }

    /// The commands that subscribe another connection to the same channels,
    /// patterns and shard channels (one `SSUBSCRIBE` per shard channel: in a
    /// cluster they may live in different slots).
    pub(crate) fn restore(&self) -> Vec<Cmd> {
        let mut out = Vec::new();
        for (set, name) in [(0, "SUBSCRIBE"), (1, "PSUBSCRIBE")] {
            if !self.sets[set].is_empty() {
                let mut c = crate::resp::cmd(name);
                for ch in &self.sets[set] {
                    c = c.arg(ch.as_ref());
                }
                out.push(c);
            }
        }
        for ch in &self.sets[2] {
            out.push(crate::resp::cmd("SSUBSCRIBE").arg(ch.as_ref()));
        }
        out
    }
}

/// A written request waiting for its replies.
struct InFlight {
    /// `None` once the request timed out: its reply is still read, and
    /// dropped.
    tx: Option<ReplyTx>,
    /// Stream offset of the request's first byte: whether it was written.
    start: u64,
    state: Pending,
    /// When it was taken for writing, and its timeout, if it has one.
    timed: Option<(Instant, Duration)>,
}

enum Pending {
    One {
        expect: Expect,
        confirms: Vec<Value>,
        result: Option<Result<Value, ServerError>>,
        /// The command itself, up to [`RETURN_MAX`] bytes: handed back with
        /// a `MOVED`/`ASK` (see `Maintained::RETURNS_REDIRECTED`).
        cmd: Option<Cmd>,
    },
    Many {
        results: Vec<Result<Value, ServerError>>,
        total: usize,
        /// Per-command expectations; empty when all are plain replies.
        expects: Vec<Expect>,
        confirms: Vec<Value>,
        /// The commands, when [`returns_pipeline`]: each redirected one
        /// is handed back with its `MOVED`/`ASK`.
        cmds: Vec<Cmd>,
    },
}

impl Pending {
    fn current(&mut self) -> Option<(&mut Expect, &mut Vec<Value>)> {
        match self {
            Pending::One {
                expect, confirms, ..
            } => Some((expect, confirms)),
            Pending::Many {
                results,
                expects,
                confirms,
                ..
            } => {
                let i = results.len();
                expects.get_mut(i).map(|e| (e, confirms))
            }
        }
    }

    /// Offers a push frame (already applied to `subs`): `Some(done)` if it
    /// was a confirmation this request was waiting for, and now holds.
    fn offer_push(&mut self, push: &Value, subs: &Subscriptions) -> Option<bool> {
        // A confirmation names one of the command's channels. The server
        // also sends `sunsubscribe` on its own (a slot left the node): one
        // for another channel, arriving while our `SUNSUBSCRIBE` waits, is
        // not ours. (A command too long to be kept is matched by kind.)
        if let (
            Pending::One {
                cmd: Some(c),
                expect:
                    Expect::Confirm {
                        left: Left::Count(_),
                        ..
                    },
                ..
            },
            Value::Push(items),
        ) = (&*self, push)
        {
            let named = items
                .get(1)
                .and_then(Value::as_bytes)
                .is_some_and(|ch| c.argv().skip(1).any(|a| a == ch));
            if !named {
                return None;
            }
        }
        let (expect, confirms) = self.current()?;
        let Expect::Confirm { kind, left } = expect else {
            return None;
        };
        let items = match push {
            Value::Push(items) => items,
            _ => return None,
        };
        let matches = items
            .first()
            .and_then(Value::as_bytes)
            .is_some_and(|k| k.eq_ignore_ascii_case(kind.name().as_bytes()));
        if !matches {
            return None;
        }
        confirms.push(push.clone());
        let done = match left {
            Left::Count(n) => {
                *n -= 1;
                *n == 0
            }
            Left::All => {
                matches!(items.get(1), Some(Value::Null))
                    || matches!(items.get(2), Some(Value::Integer(0)))
                    || subs.is_empty(*kind)
            }
        };
        if done {
            *expect = Expect::Reply;
            let v = Value::Array(std::mem::take(confirms));
            Some(self.finish_one(Ok(v)))
        } else {
            Some(false)
        }
    }

    /// True when the reply awaited now is `RESET`'s.
    fn awaits_reset(&mut self) -> bool {
        matches!(self.current(), Some((Expect::Reset, _)))
    }

    /// Records an ordinary reply; true when the request is complete.
    fn reply(&mut self, v: Value) -> bool {
        let r = match v {
            Value::Error(b) | Value::BlobError(b) => Err(ServerError::parse(b)),
            v => Ok(v),
        };
        // An ordinary reply to a subscribe is an error that ends it.
        if let Some((expect, confirms)) = self.current() {
            *expect = Expect::Reply;
            confirms.clear();
        }
        self.finish_one(r)
    }

    fn finish_one(&mut self, r: Result<Value, ServerError>) -> bool {
        match self {
            Pending::One { result, .. } => {
                *result = Some(r);
                true
            }
            Pending::Many { results, total, .. } => {
                results.push(r);
                results.len() == *total
            }
        }
    }

    fn into_response(self) -> Result<Response> {
        match self {
            Pending::One { result, cmd, .. } => match result {
                Some(Ok(v)) => Ok(Response::Value(v)),
                Some(Err(e)) => Err(Error::Server(match cmd {
                    Some(c) if is_redirect(&e) || is_refusal(&e) => e.with_returned(c),
                    _ => e,
                })),
                None => Err(Error::Closed),
            },
            Pending::Many {
                mut results, cmds, ..
            } => {
                hand_back(&mut results, cmds);
                Ok(Response::Pipeline(results))
            }
        }
    }
}

/// A `MOVED` or an `ASK`: its command is handed back.
fn is_redirect(e: &ServerError) -> bool {
    matches!(e.kind(), ServerErrorKind::Moved | ServerErrorKind::Ask)
}

/// A cluster's refusal before running (`CLUSTERDOWN`, `TRYAGAIN`): a
/// single command is handed back too, so that a router can send it again
/// once the slot has an owner.
fn is_refusal(e: &ServerError) -> bool {
    matches!(
        e.kind(),
        ServerErrorKind::ClusterDown | ServerErrorKind::TryAgain
    )
}

/// Puts each redirected command of a pipeline into its `MOVED`/`ASK`. Not
/// in a transaction: its commands only make sense together, and a router
/// does not resend them one by one.
fn hand_back(results: &mut [Result<Value, ServerError>], cmds: Vec<Cmd>) {
    let redirected = |r: &Result<Value, ServerError>| matches!(r, Err(e) if is_redirect(e));
    if cmds.is_empty() || !results.iter().any(redirected) || cmds.iter().any(|c| c.is("MULTI")) {
        return;
    }
    for (r, c) in results.iter_mut().zip(cmds) {
        if redirected(r) {
            if let Err(e) = r {
                e.put_returned(c);
            }
        }
    }
}

pub(crate) struct Driver<T> {
    io: T,
    rx: mpsc::Receiver<Message>,
    rx_open: bool,
    /// Scratch space for taking requests off the queue.
    batch: Vec<Message>,
    write_buf: BytesMut,
    /// Bytes to write before `write_buf`, in order: long commands' shared
    /// buffers (and the encoding before each), written from where they
    /// are instead of copied (see [`VECTORED_MIN`]).
    chunks: VecDeque<Bytes>,
    chunks_len: usize,
    /// The stream writes several buffers at once (tokio's TCP and Unix
    /// streams, and tokio-rustls's, which encrypts from them).
    vectored: bool,
    needs_flush: bool,
    /// This batch already yielded once to let more callers join it.
    batch_yielded: bool,
    /// Requests completed since the last batch was taken: how many callers
    /// may be about to send again.
    completed: usize,
    /// Bytes ever encoded / written: which in-flight requests hit the wire.
    encoded: u64,
    written: u64,
    read_buf: BytesMut,
    decoder: Decoder,
    in_flight: VecDeque<InFlight>,
    /// Sequence number of `in_flight[0]`.
    front_seq: u64,
    /// Deadlines of timed requests, in request order: the common case,
    /// where every request has the same timeout.
    deadlines: VecDeque<(Instant, u64)>,
    /// Deadlines earlier than the last one queued (mixed timeouts, or a
    /// deadline extended by a relaxation).
    odd_deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// One timer for the earliest deadline, made on first use.
    timer: Option<Pin<Box<Sleep>>>,
    timer_at: Option<Instant>,
    /// The clock, read once per turn when a timed request is taken.
    turn_now: Option<Instant>,
    pushes: PushSender,
    config: DriverConfig,
    shared: Arc<Shared>,
    /// This connection's sequence watermarks: overtaken notifications are
    /// dropped.
    stale: crate::maint::StaleGuard,
}

const READ_CHUNK: usize = 64 * 1024;
/// Commands at least this long (their shared buffers) are written with a
/// vectored write instead of being copied into the write buffer: for a
/// 100 KiB `SET`, one copy of 100 KiB less.
const VECTORED_MIN: usize = 16 * 1024;
/// Buffers handed to one vectored write.
const MAX_SLICES: usize = 16;
/// Requests completed per turn before the driver yields to their callers:
/// a quarter of those in flight, within these bounds. The right slice
/// grows with the callers (64 callers on one connection, 2 workers: 16
/// per turn about 1.4x the GET/s of 32; 512 callers: 64 per turn 1.1x
/// of 32; medians of paired runs of the compare bench).
const DISPATCH_MIN: usize = 16;
const DISPATCH_MAX: usize = 64;
/// Requests taken off the queue at once.
const RECV_BATCH: usize = 64;
const MIN_READ_SPACE: usize = 4 * 1024;
/// Turns of the loop before yielding to other tasks.
const MAX_TURNS: usize = 32;

impl<T> Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(
        io: T,
        rx: mpsc::Receiver<Message>,
        pushes: PushSender,
        config: DriverConfig,
        shared: Arc<Shared>,
    ) -> Self {
        let vectored = io.is_write_vectored();
        Driver {
            io,
            rx,
            rx_open: true,
            batch: Vec::with_capacity(RECV_BATCH),
            write_buf: BytesMut::with_capacity(config.max_write_buffer.min(READ_CHUNK)),
            chunks: VecDeque::new(),
            chunks_len: 0,
            vectored,
            needs_flush: false,
            batch_yielded: false,
            completed: 0,
            encoded: 0,
            written: 0,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            decoder: Decoder::with_limits(config.limits),
            in_flight: VecDeque::with_capacity(64),
            front_seq: 0,
            deadlines: VecDeque::new(),
            odd_deadlines: BinaryHeap::new(),
            timer: None,
            timer_at: None,
            turn_now: None,
            pushes,
            config,
            stale: crate::maint::StaleGuard::new(crate::maint::Dedup::<()>::DEFAULT_TTL),
            shared,
        }
    }

    /// Bytes taken but not written yet.
    fn unwritten(&self) -> usize {
        self.chunks_len + self.write_buf.len()
    }

    /// Writes what is queued: the chunks, then the write buffer, with one
    /// (vectored) write; false when the socket is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Result<bool, Error> {
        let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
        let mut k = 0;
        for c in self.chunks.iter().take(MAX_SLICES - 1) {
            slices[k] = io::IoSlice::new(c);
            k += 1;
        }
        // The write buffer comes after every chunk: only with all of them.
        if k == self.chunks.len() && !self.write_buf.is_empty() {
            slices[k] = io::IoSlice::new(&self.write_buf);
            k += 1;
        }
        let mut n = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..k]) {
            Poll::Ready(Ok(0)) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Err(e.into()),
            Poll::Pending => return Ok(false),
        };
        self.written += n as u64;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                self.write_buf.advance(n);
                break;
            };
            let step = n.min(front.len());
            front.advance(step);
            self.chunks_len -= step;
            n -= step;
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        Ok(true)
    }

    fn enqueue(&mut self, msg: Message) {
        // A caller that gave up before its request was written: skipping it
        // is safe because no reply will come for it.
        if msg.tx.is_closed() {
            return;
        }
        let start = self.encoded;
        let before = self.unwritten();
        let state = match msg.body {
            Body::Cmd(cmd) => {
                let shared = if self.vectored && cmd.raw().0.len() >= VECTORED_MIN {
                    cmd.write_shared_to(&mut self.write_buf)
                } else {
                    None
                };
                match shared {
                    Some(args) => {
                        let head = self.write_buf.split().freeze();
                        self.chunks_len += head.len() + args.len();
                        self.chunks.push_back(head);
                        self.chunks.push_back(args);
                    }
                    None => cmd.write_to(&mut self.write_buf),
                }
                Pending::One {
                    expect: expect_for(&cmd),
                    confirms: Vec::new(),
                    result: None,
                    // Freed when the reply comes instead of now: the same
                    // work, later. A router above then needs no copy.
                    cmd: (cmd.raw().0.len() <= RETURN_MAX).then_some(cmd),
                }
            }
            Body::Pipeline(p) => {
                let mut expects = Vec::new();
                for (i, cmd) in p.cmds().iter().enumerate() {
                    cmd.write_to(&mut self.write_buf);
                    let e = expect_for(cmd);
                    if e != Expect::Reply && expects.is_empty() {
                        expects = vec![Expect::Reply; p.len()];
                    }
                    if !expects.is_empty() {
                        expects[i] = e;
                    }
                }
                Pending::Many {
                    results: Vec::with_capacity(p.len()),
                    total: p.len(),
                    expects,
                    confirms: Vec::new(),
                    // As for one command: freed with the replies, and a
                    // router above needs no copy. (A transaction's are kept
                    // too but not handed back: finding `MULTI` here would
                    // cost every pipeline a scan.)
                    cmds: if returns_pipeline(&p) {
                        p.into_cmds()
                    } else {
                        Vec::new()
                    },
                }
            }
        };
        self.encoded += (self.unwritten() - before) as u64;
        let timed = msg
            .timeout
            .map(|d| (*self.turn_now.get_or_insert_with(Instant::now), d));
        if let Some((t0, d)) = timed {
            let seq = self.front_seq + self.in_flight.len() as u64;
            let at = crate::time::after(t0, d);
            if self.deadlines.back().is_none_or(|b| b.0 <= at) {
                self.deadlines.push_back((at, seq));
            } else {
                self.odd_deadlines.push(Reverse((at, seq)));
            }
        }
        self.in_flight.push_back(InFlight {
            tx: Some(msg.tx),
            start,
            state,
            timed,
        });
    }

    /// Fails timed requests whose deadline passed (their replies are still
    /// read and dropped), extends those of a relaxed endpoint, and arms the
    /// timer for the next deadline.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) {
        if self.deadlines.is_empty() && self.odd_deadlines.is_empty() {
            return;
        }
        let mut turn_now = self.turn_now;
        loop {
            // The clock read for this turn's requests will do, once.
            let now = turn_now.take().unwrap_or_else(Instant::now);
            // Requests answered already have nothing to time out.
            while self.deadlines.front().is_some_and(|d| d.1 < self.front_seq) {
                self.deadlines.pop_front();
            }
            while self
                .odd_deadlines
                .peek()
                .is_some_and(|d| d.0 .1 < self.front_seq)
            {
                self.odd_deadlines.pop();
            }
            let next = loop {
                let fifo = self.deadlines.front().copied();
                let odd = self.odd_deadlines.peek().map(|d| d.0);
                let (at, seq, from_fifo) = match (fifo, odd) {
                    (Some(f), Some(o)) if o.0 < f.0 => (o.0, o.1, false),
                    (Some(f), _) => (f.0, f.1, true),
                    (None, Some(o)) => (o.0, o.1, false),
                    (None, None) => break None,
                };
                if at > now {
                    break Some(at);
                }
                if from_fifo {
                    self.deadlines.pop_front();
                } else {
                    self.odd_deadlines.pop();
                }
                self.expire(seq, now);
            };
            let Some(at) = next else {
                return;
            };
            // A timer armed earlier than needed may stay: it fires, and is
            // armed again for the deadline then due. It is polled only when
            // armed: a registered timer wakes this task by itself, and every
            // poll of a tokio timer spends the task's cooperative budget
            // (an exhausted budget means an extra wake-up of the driver).
            let armed = self.timer_at.filter(|t| *t > now);
            if armed.is_some_and(|t| t <= at) {
                return;
            }
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            timer.as_mut().reset(at);
            self.timer_at = Some(at);
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => self.timer_at = None,
                Poll::Pending => return,
            }
        }
    }

    fn expire(&mut self, seq: u64, now: Instant) {
        let Some(idx) = seq.checked_sub(self.front_seq) else {
            return;
        };
        let Some(f) = self.in_flight.get_mut(idx as usize) else {
            return;
        };
        let (Some((t0, d)), true) = (f.timed, f.tx.is_some()) else {
            return;
        };
        // A relaxation that began after the request left extends it, and
        // its end does not take the extension back: the reply to a request
        // sent during a failover may come after `FAILED_OVER`.
        if let Some(r) = self.shared.maint.relaxed_since(t0) {
            let later = crate::time::after(t0, d.max(r));
            if later > now {
                self.odd_deadlines.push(Reverse((later, seq)));
                return;
            }
        }
        if let Some(tx) = f.tx.take() {
            let _ = tx.send(Err(Error::Timeout));
        }
    }

    fn dispatch(&mut self, v: Value) -> Result<(), Error> {
        // Attributes around a push are skipped: the push stays out of band.
        let v = match v {
            Value::Attribute { .. } if annotates_push(&v) => v.without_attributes(),
            v => v,
        };
        if matches!(v, Value::Push(_)) {
            // Maintenance notifications go to the endpoint's state, never
            // to the user's push channel nor to a pending request.
            let parsed = if self.config.maint_routing {
                crate::maint::Notification::parse(&v)
            } else {
                None
            };
            match parsed {
                Some(Ok(n)) => {
                    let retired = self.shared.retired.load(Ordering::Relaxed);
                    if self.stale.admit(&n, retired, Instant::now()) {
                        self.shared.maint.on_notification(n);
                    } else {
                        tracing::debug!(target: "redis_layers::maint", event = "maint.stale", kind = n.kind().as_str(), seq = n.seq(), retired, "stale notification dropped");
                    }
                    return Ok(());
                }
                Some(Err(e)) => {
                    tracing::warn!(target: "redis_layers::maint", event = "maint.malformed", error = %e, "malformed maintenance notification dropped");
                    return Ok(());
                }
                None => {}
            }
            let offered = {
                let mut subs = self
                    .shared
                    .subscriptions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                subs.apply(&v);
                self.in_flight
                    .front_mut()
                    .and_then(|front| front.state.offer_push(&v, &subs))
            };
            match offered {
                Some(true) => self.complete_front(),
                Some(false) => {}
                None => self.deliver_push(v),
            }
            return Ok(());
        }
        let Some(front) = self.in_flight.front_mut() else {
            return Err(ProtocolError::new("reply received with no request in flight").into());
        };
        if front.start >= self.written {
            return Err(ProtocolError::new("reply received before its request was written").into());
        }
        if matches!(&v, Value::SimpleString(s) if s.as_ref() == b"RESET")
            && front.state.awaits_reset()
        {
            // RESET ended every subscription without confirmations. Only
            // RESET's own reply says so: any command may answer `+RESET`.
            *self
                .shared
                .subscriptions
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Subscriptions::default();
        }
        if front.state.reply(v) {
            self.complete_front();
        }
        Ok(())
    }

    fn deliver_push(&mut self, v: Value) {
        if self.pushes.send(PushItem::Frame(v)).is_err() {
            tracing::trace!(target: "redis_layers::transport", "push dropped: no receiver");
        }
    }

    fn complete_front(&mut self) {
        if let Some(f) = self.in_flight.pop_front() {
            self.completed += 1;
            self.front_seq += 1;
            if let Some(tx) = f.tx {
                let _ = tx.send(f.state.into_response());
            }
        }
    }

    /// Fails everything at once and ends the driver.
    fn fail(&mut self, err: Error) -> Poll<()> {
        tracing::debug!(
            target: "redis_layers::transport",
            error = %err,
            in_flight = self.in_flight.len(),
            "connection closed"
        );
        self.fail_pending(err);
        Poll::Ready(())
    }

    /// Dispatches complete frames in the read buffer; true when it stopped
    /// because this turn completed `per_turn` requests.
    fn dispatch_buffered(
        &mut self,
        completed_before: usize,
        per_turn: usize,
    ) -> Result<bool, Error> {
        while self.completed - completed_before < per_turn {
            match self.decoder.decode(&mut self.read_buf)? {
                Some(v) => self.dispatch(v)?,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Result<Turn, Error> {
        let mut progress = false;

        // 1. Take queued requests until the queue is empty or the write
        //    buffer is full: that is the coalescing.
        let batch_start = self.unwritten() == 0;
        while self.rx_open && self.unwritten() < self.config.max_write_buffer {
            // Many at once: the queue's permits go back in one operation.
            let mut batch = std::mem::take(&mut self.batch);
            let r = self.rx.poll_recv_many(cx, &mut batch, RECV_BATCH);
            for msg in batch.drain(..) {
                self.enqueue(msg);
            }
            self.batch = batch;
            match r {
                Poll::Ready(0) => self.rx_open = false,
                Poll::Ready(_) => progress = true,
                Poll::Pending => break,
            }
        }
        // The first caller of a batch wakes this task, and tokio runs a
        // task woken by another right after it (the LIFO slot), before the
        // other callers woken by the last replies had a chance to queue:
        // writing now would send batches of one. Yielding once puts the
        // driver behind them, so they share the write. With one caller
        // there is no one to wait for, and the yield would only add latency.
        if batch_start
            && progress
            && !self.batch_yielded
            && self.completed > 1
            && self.unwritten() < self.config.max_write_buffer
        {
            self.batch_yielded = true;
            return Ok(Turn::Yield);
        }
        if progress {
            self.completed = 0;
        }
        self.batch_yielded = false;

        // 2. Write what we have, without waiting for any reply.
        while self.unwritten() > 0 {
            if !self.poll_write_out(cx)? {
                break;
            }
            self.needs_flush = true;
            progress = true;
        }
        if self.write_buf.is_empty() {
            // Let the next batch reuse the buffer from its start.
            self.write_buf.clear();
        }
        if self.needs_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Err(e.into()),
                Poll::Pending => {}
            }
        }

        // 3. Dispatch the replies already buffered, then read and dispatch.
        //    At most `per_turn` requests complete per turn: then the
        //    driver yields, the callers answered so far send their next
        //    requests, and the driver writes them while the rest of the
        //    replies are dispatched. The server works on one part of the
        //    callers' requests while the client turns the other around,
        //    instead of the two taking turns.
        let completed_before = self.completed;
        let per_turn = (self.in_flight.len() / 4).clamp(DISPATCH_MIN, DISPATCH_MAX);
        if self.dispatch_buffered(completed_before, per_turn)? {
            self.batch_yielded = true;
            return Ok(Turn::Yield);
        }
        // A large reply's buffer grows towards its size as bytes arrive, at
        // most doubling what is buffered: the size is the server's word
        // (`$536870912` alone must not reserve 512 MiB), and doubling keeps
        // the copies O(size).
        let need = self.decoder.bytes_needed();
        let len = self.read_buf.len();
        if need > len {
            self.read_buf.reserve((need - len).min(len.max(READ_CHUNK)));
        }
        if self.read_buf.capacity() - self.read_buf.len() < MIN_READ_SPACE {
            self.read_buf.reserve(READ_CHUNK);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf) {
            Poll::Ready(Ok(0)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the server",
                )
                .into())
            }
            Poll::Ready(Ok(_)) => {
                progress = true;
                if self.dispatch_buffered(completed_before, per_turn)? {
                    self.batch_yielded = true;
                    return Ok(Turn::Yield);
                }
            }
            Poll::Ready(Err(e)) => return Err(e.into()),
            Poll::Pending => {}
        }
        Ok(if progress { Turn::Progress } else { Turn::Idle })
    }
}

fn annotates_push(v: &Value) -> bool {
    match v {
        Value::Attribute { value, .. } => annotates_push(value),
        v => matches!(v, Value::Push(_)),
    }
}

/// What one turn of the driver loop achieved.
enum Turn {
    Progress,
    Idle,
    /// Let other tasks run, then come back.
    Yield,
}

impl<T> Future for Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.turn_now = None;
        let mut idle = false;
        for _ in 0..MAX_TURNS {
            match this.poll_turn(cx) {
                Err(e) => return this.fail(e),
                Ok(turn) => {
                    if !this.rx_open && this.in_flight.is_empty() && this.unwritten() == 0 {
                        // Every handle is gone and every reply is in.
                        return Poll::Ready(());
                    }
                    match turn {
                        Turn::Progress => {}
                        Turn::Idle => {
                            idle = true;
                            break;
                        }
                        Turn::Yield => break,
                    }
                }
            }
        }
        this.poll_deadlines(cx);
        if !idle {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl<T> Driver<T> {
    /// Answers every request: written ones with `err`, the rest (never
    /// written, so safe to send again) with [`Error::Closed`].
    fn fail_pending(&mut self, err: Error) {
        for f in self.in_flight.drain(..) {
            let e = if f.start >= self.written {
                Error::Closed
            } else {
                err.clone()
            };
            if let Some(tx) = f.tx {
                let _ = tx.send(Err(e));
            }
        }
        self.rx.close();
        while let Ok(msg) = self.rx.try_recv() {
            let _ = msg.tx.send(Err(Error::Closed));
        }
        self.rx_open = false;
    }
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.closed_notify.notify_waiters();
        // Requests still here ([`Connection::close`](super::Connection::close)
        // or the runtime shut down) get their error now: `Closed` only when
        // never written, so a caller may safely send it again.
        if !self.in_flight.is_empty() || self.rx_open {
            let err = Error::from(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed by the client",
            ));
            self.fail_pending(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::cmd;

    /// Each redirected command of a pipeline comes back in its own error,
    /// the others in none; not within a transaction.
    #[test]
    fn a_pipeline_hands_back_its_redirected_commands() {
        let cmds = || {
            vec![
                cmd("GET").arg("a"),
                cmd("GET").arg("b"),
                cmd("GET").arg("c"),
                cmd("GET").arg("d"),
            ]
        };
        let replies = || {
            vec![
                Ok(Value::Null),
                Err(ServerError::parse("MOVED 1 127.0.0.1:7001")),
                Err(ServerError::parse("ERR other")),
                Err(ServerError::parse("ASK 2 127.0.0.1:7002")),
            ]
        };
        // What came back in each error.
        let taken = |r: &mut Vec<Result<Value, ServerError>>| -> Vec<Option<Cmd>> {
            r.iter_mut()
                .filter_map(|x| x.as_mut().err().map(|e| e.take_returned()))
                .collect()
        };
        let mut r = replies();
        hand_back(&mut r, cmds());
        let b = Some(cmd("GET").arg("b"));
        let d = Some(cmd("GET").arg("d"));
        assert_eq!(taken(&mut r), vec![b, None, d]);
        // Not kept (too long): nothing to hand back.
        let mut r = replies();
        hand_back(&mut r, Vec::new());
        assert_eq!(taken(&mut r), vec![None, None, None]);
        // A transaction: its commands are not resent one by one.
        let mut tx = cmds();
        tx.insert(0, cmd("MULTI"));
        let mut r = replies();
        r.insert(0, Ok(Value::SimpleString("OK".into())));
        hand_back(&mut r, tx);
        assert_eq!(taken(&mut r), vec![None, None, None]);
        // The limit is on the pipeline's bytes in all.
        let small: crate::resp::Pipeline = cmds().into_iter().collect();
        assert!(returns_pipeline(&small));
        let big: crate::resp::Pipeline = (0..RETURN_MAX / 1024 + 1)
            .map(|_| cmd("SET").arg("k").arg(vec![0u8; 1024]))
            .collect();
        assert!(!returns_pipeline(&big));
    }

    #[test]
    fn expectations() {
        assert_eq!(expect_for(&cmd("GET").arg("k")), Expect::Reply);
        assert_eq!(
            expect_for(&cmd("subscribe").arg("a").arg("b")),
            Expect::Confirm {
                kind: SubKind::Subscribe,
                left: Left::Count(2)
            }
        );
        assert_eq!(
            expect_for(&cmd("PUNSUBSCRIBE")),
            Expect::Confirm {
                kind: SubKind::PUnsubscribe,
                left: Left::All
            }
        );
        assert_eq!(expect_for(&cmd("SUBSCRIBE")), Expect::Reply);
        assert_eq!(expect_for(&cmd("SUNSUBSCRIBEX")), Expect::Reply);
        assert_eq!(expect_for(&cmd("reset")), Expect::Reset);
        assert_eq!(
            expect_for(&cmd("EVAL").arg("return 'RESET'")),
            Expect::Reply
        );
        for (k, n) in SubKind::ALL {
            assert_eq!(k.name(), n);
        }
    }
}

//! One proxied client connection: client socket <-> its own backend socket.
//!
//! Frame-aware in both directions: the proxy cuts the byte streams at frame
//! boundaries (the crate's own decoder, `frame_len`) and forwards the raw
//! bytes untouched, so injected frames land between whole replies and never
//! inside one.
//!
//! `CLIENT MAINT_NOTIFICATIONS`, which open-source Redis does not know, is
//! answered by the proxy. To keep that answer in its place among pipelined
//! replies, the command is replaced on its way to the server by an `ECHO` of
//! a unique marker; when the marker's reply comes back, the proxy swaps in
//! its own answer. The server itself thereby orders the reply.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cluster::{self, Topology};
use super::{EndpointType, Inner};
use crate::resp::{Decoder, Value};

/// "No per-connection delay set" in a delay cell.
pub(super) const NO_DELAY_SET: u64 = u64::MAX;

/// A reply the proxy gives itself, in place of the marker's echo (`None`:
/// the echo is dropped, the marker only marks the next reply).
pub(super) struct Local {
    marker: u64,
    reply: Option<Bytes>,
    effect: Option<Effect>,
}

/// What a local reply changes once it is on its way to the client.
#[derive(Debug, Clone)]
pub(super) enum Effect {
    /// Opted in with this endpoint type, or out (`None`).
    Maint(Option<EndpointType>),
    /// The next reply is this topology: rewrite its addresses.
    Rewrite(Topology),
    /// The next reply is a `HELLO` reply: name this version in it.
    Version(String),
}

/// The per-connection handles that the registry keeps.
pub(super) struct Handles {
    pub(super) id: u64,
    pub(super) inject: mpsc::UnboundedReceiver<Bytes>,
    pub(super) close: CancellationToken,
    pub(super) conn_delay: Arc<AtomicU64>,
    pub(super) endpoint_delay: Arc<AtomicU64>,
}

pub(super) async fn serve(
    inner: Arc<Inner>,
    client: TcpStream,
    peer: SocketAddr,
    endpoint: SocketAddr,
) {
    let Some(backend_addr) = inner.backend_of(endpoint) else {
        return;
    };
    let backend = match TcpStream::connect(backend_addr).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(target: "redis_layers::sim", %peer, %backend_addr, error = %e, "backend unreachable; closing client");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let Some(h) = inner.register(peer, endpoint) else {
        return; // the simulator is shutting down
    };
    let (local_tx, local_rx) = mpsc::unbounded_channel();
    let (cr, cw) = client.into_split();
    let (br, bw) = backend.into_split();
    let up = upstream(&inner, h.id, cr, bw, local_tx, h.close.clone());
    let down = downstream(
        &inner,
        h.id,
        endpoint,
        br,
        cw,
        h.inject,
        local_rx,
        h.close.clone(),
        h.conn_delay,
        h.endpoint_delay,
    );
    tokio::join!(up, down);
    inner.unregister(h.id);
}

/// Client -> server: forwards frames, answers the maintenance handshake,
/// notes names and the protocol.
async fn upstream(
    inner: &Inner,
    id: u64,
    mut cr: OwnedReadHalf,
    mut bw: OwnedWriteHalf,
    local_tx: mpsc::UnboundedSender<Local>,
    close: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut dec = Decoder::new();
    let mut markers = 0u64;
    // Inside MULTI the server queues commands: no marker tricks there.
    let mut in_multi = false;
    'outer: loop {
        loop {
            if buf.is_empty() {
                break;
            }
            if buf[0] != b'*' {
                // An inline command (`PING\r\n`): forward the line as it is.
                match memchr::memchr(b'\n', &buf) {
                    Some(i) => out.extend_from_slice(&buf.split_to(i + 1)),
                    None => break,
                }
                continue;
            }
            match dec.frame_len(&buf) {
                Ok(Some(len)) => {
                    let frame = buf.split_to(len).freeze();
                    let (reply, effect, forward) = match inspect(inner, id, &frame, &mut in_multi) {
                        Inspected::Forward => {
                            out.extend_from_slice(&frame);
                            continue;
                        }
                        Inspected::Answer { reply, effect } => (Some(reply), effect, false),
                        Inspected::Rewrite(effect) => (None, Some(effect), true),
                    };
                    markers += 1;
                    let marker = format!("{}{markers}", inner.token);
                    out.extend_from_slice(
                        format!("*2\r\n$4\r\nECHO\r\n${}\r\n{marker}\r\n", marker.len()).as_bytes(),
                    );
                    if forward {
                        out.extend_from_slice(&frame);
                    }
                    let _ = local_tx.send(Local {
                        marker: markers,
                        reply,
                        effect,
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(target: "redis_layers::sim", client = id, error = %e, "client sent invalid RESP; closing");
                    break 'outer;
                }
            }
        }
        if !out.is_empty() {
            if bw.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        tokio::select! {
            _ = close.cancelled() => break,
            r = cr.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    close.cancel();
}

enum Inspected {
    Forward,
    Answer {
        reply: Bytes,
        effect: Option<Effect>,
    },
    /// Forward, and rewrite its reply (an `Effect::Rewrite` or
    /// `Effect::Version`).
    Rewrite(Effect),
}

/// Looks at a client command: the maintenance handshake is answered here;
/// `HELLO` and `CLIENT SETNAME` are noted for the registry.
fn inspect(inner: &Inner, id: u64, frame: &Bytes, in_multi: &mut bool) -> Inspected {
    let Ok(Some(Value::Array(args))) = Decoder::new().decode(&mut BytesMut::from(&frame[..]))
    else {
        return Inspected::Forward;
    };
    let arg = |i: usize| {
        args.get(i)
            .and_then(Value::as_bytes)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let is = |i: usize, s: &str| arg(i).is_some_and(|a| a.eq_ignore_ascii_case(s));
    if is(0, "HELLO") {
        if let Some(v) = arg(1) {
            inner.note_protocol(id, v == "3");
        }
        let mut i = 2;
        while let Some(a) = arg(i) {
            if a.eq_ignore_ascii_case("SETNAME") {
                inner.note_name(id, arg(i + 1));
                i += 2;
            } else if a.eq_ignore_ascii_case("AUTH") {
                i += 3;
            } else {
                i += 1;
            }
        }
        return match inner.server_version() {
            Some(v) => Inspected::Rewrite(Effect::Version(v)),
            None => Inspected::Forward,
        };
    }
    if is(0, "CLIENT") && is(1, "SETNAME") {
        inner.note_name(id, arg(2));
        return Inspected::Forward;
    }
    if is(0, "MULTI") {
        *in_multi = true;
    } else if is(0, "EXEC") || is(0, "DISCARD") {
        *in_multi = false;
    }
    if *in_multi {
        return Inspected::Forward;
    }
    if inner.cluster {
        if let Some(t) = Topology::of(&arg(0).unwrap_or_default(), &arg(1).unwrap_or_default()) {
            return Inspected::Rewrite(Effect::Rewrite(t));
        }
    }
    if !(is(0, "CLIENT") && is(1, "MAINT_NOTIFICATIONS")) {
        return Inspected::Forward;
    }
    inner.note_maint_request(id);
    let err = |msg: &str| Inspected::Answer {
        reply: Bytes::from(format!("-{msg}\r\n")),
        effect: None,
    };
    if let Some(e) = inner.handshake_error() {
        return err(&e);
    }
    let effect = match (
        arg(2).map(|s| s.to_ascii_uppercase()).as_deref(),
        args.len(),
    ) {
        (Some("OFF"), 3) => Effect::Maint(None),
        // The bare form: the default address type.
        (Some("ON"), 3) => Effect::Maint(Some(EndpointType::InternalIp)),
        (Some("ON"), 5) if is(3, "moving-endpoint-type") => {
            match arg(4).unwrap_or_default().parse() {
                Ok(t) => Effect::Maint(Some(t)),
                Err(_) => return err("ERR invalid moving-endpoint-type"),
            }
        }
        _ => return err("ERR syntax error"),
    };
    if matches!(effect, Effect::Maint(Some(_))) && !inner.is_resp3(id) {
        return err("ERR CLIENT MAINT_NOTIFICATIONS ON requires RESP3 (HELLO 3)");
    }
    Inspected::Answer {
        reply: Bytes::from_static(b"+OK\r\n"),
        effect: Some(effect),
    }
}

/// Server -> client: forwards whole frames (after the configured delay),
/// swaps marker echoes for local replies, and writes injected frames
/// between whole frames.
#[allow(clippy::too_many_arguments)]
async fn downstream(
    inner: &Inner,
    id: u64,
    endpoint: SocketAddr,
    mut br: OwnedReadHalf,
    mut cw: OwnedWriteHalf,
    mut inject: mpsc::UnboundedReceiver<Bytes>,
    mut local_rx: mpsc::UnboundedReceiver<Local>,
    close: CancellationToken,
    conn_delay: Arc<AtomicU64>,
    endpoint_delay: Arc<AtomicU64>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut dec = Decoder::new();
    // Frames read, waiting for their release time.
    let mut pending: VecDeque<(Instant, Bytes, Option<Effect>)> = VecDeque::new();
    let mut rewrite_next = None;
    let mut version_next: Option<String> = None;
    let delay = || {
        let d = conn_delay.load(Ordering::Relaxed);
        let d = if d == NO_DELAY_SET {
            endpoint_delay.load(Ordering::Relaxed)
        } else {
            d
        };
        Duration::from_nanos(d)
    };
    'outer: loop {
        loop {
            match dec.frame_len(&buf) {
                Ok(Some(len)) => {
                    let frame = buf.split_to(len).freeze();
                    let (frame, effect) = match marker_of(&frame, &inner.token) {
                        Some(n) => match local_rx.recv().await {
                            Some(Local {
                                marker,
                                reply,
                                effect,
                            }) if marker == n => match (reply, effect) {
                                (Some(reply), effect) => (reply, effect),
                                (None, Some(Effect::Rewrite(t))) => {
                                    rewrite_next = Some(t);
                                    continue;
                                }
                                (None, Some(Effect::Version(v))) => {
                                    version_next = Some(v);
                                    continue;
                                }
                                (None, _) => continue,
                            },
                            _ => {
                                tracing::warn!(target: "redis_layers::sim", client = id, "marker reply out of order; closing");
                                break 'outer;
                            }
                        },
                        None => (frame, None),
                    };
                    let frame = match version_next.take_if(|_| frame.first() != Some(&b'>')) {
                        Some(v) => with_version(frame, &v),
                        None => frame,
                    };
                    let frame = if inner.cluster && frame.first() != Some(&b'>') {
                        match rewrite_next.take() {
                            Some(t) => rewrite(t, frame, inner),
                            None => cluster::rewrite_redirect(&frame, inner, &|slot| {
                                inner.ask_instead_of_moved(endpoint, slot)
                            })
                            .unwrap_or(frame),
                        }
                    } else {
                        frame
                    };
                    if inner.cluster && inner.counters.reply(&frame) {
                        tracing::debug!(target: "redis_layers::sim", event = "sim.moved", client = id, %endpoint, reply = %String::from_utf8_lossy(&frame).trim_end(), "MOVED to a client");
                    }
                    pending.push_back((crate::time::after(Instant::now(), delay()), frame, effect));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(target: "redis_layers::sim", client = id, error = %e, "server sent invalid RESP; closing");
                    break 'outer;
                }
            }
        }
        let now = Instant::now();
        while pending.front().is_some_and(|p| p.0 <= now) {
            let (_, frame, effect) = pending.pop_front().expect("front");
            out.extend_from_slice(&frame);
            if let Some(Effect::Maint(t)) = effect {
                // Opted in: from here on this connection gets notifications,
                // starting with those of an event already under way.
                for n in inner.set_maint(id, t) {
                    out.extend_from_slice(&n);
                }
            }
        }
        if !out.is_empty() {
            if cw.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        let next_due = pending.front().map(|p| p.0);
        tokio::select! {
            biased;
            _ = close.cancelled() => break,
            Some(frame) = inject.recv() => {
                if cw.write_all(&frame).await.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or(now)), if next_due.is_some() => {}
            r = br.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    close.cancel();
}

fn rewrite(t: Topology, frame: Bytes, inner: &Inner) -> Bytes {
    match Decoder::new().decode(&mut BytesMut::from(&frame[..])) {
        Ok(Some(v)) => cluster::rewrite_topology(t, v, inner).to_bytes(),
        _ => frame,
    }
}

/// A `HELLO` reply (a map in RESP3, pairs in an array in RESP2) naming
/// `version`; anything else as it is.
fn with_version(frame: Bytes, version: &str) -> Bytes {
    let is_version = |k: &Value| k.as_bytes() == Some(b"version");
    let v = Value::BulkString(Bytes::copy_from_slice(version.as_bytes()));
    match Decoder::new().decode(&mut BytesMut::from(&frame[..])) {
        Ok(Some(Value::Map(mut pairs))) => {
            for (k, val) in &mut pairs {
                if is_version(k) {
                    *val = v.clone();
                }
            }
            Value::Map(pairs).to_bytes()
        }
        Ok(Some(Value::Array(mut items))) => {
            for pair in items.chunks_mut(2) {
                if let [k, val] = pair {
                    if is_version(k) {
                        *val = v.clone();
                    }
                }
            }
            Value::Array(items).to_bytes()
        }
        _ => frame,
    }
}

/// The marker number if `frame` is the echo of one of our markers.
fn marker_of(frame: &[u8], token: &str) -> Option<u64> {
    let rest = frame.strip_prefix(b"$")?;
    let nl = memchr::memchr(b'\n', rest)?;
    let body = rest.get(nl + 1..rest.len().checked_sub(2)?)?;
    let n = body.strip_prefix(token.as_bytes())?;
    std::str::from_utf8(n).ok()?.parse().ok()
}

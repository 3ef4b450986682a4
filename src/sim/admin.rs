//! The admin interface: a RESP port that drives a [`Simulator`].
//!
//! Any Redis client can talk to it, `redis-cli` included:
//!
//! ```text
//! $ redis-cli -p 16380 SIM.MOVING 15
//! 1) (integer) 7
//! 2) "127.0.0.1:40313"
//! ```
//!
//! Commands are case-insensitive and answer at once (scenarios go on in the
//! background); bad input gets an `-ERR ...` reply, never a panic, and every
//! command is logged (`tracing`, target `redis_layers::sim::admin`, event
//! `sim.admin.command`). `HELP` lists them; the README's "Simulator" section
//! has the table. Both RESP forms are spoken: RESP2 by default, RESP3 after
//! `HELLO 3` (maps then come as maps); inline commands (`SIM.SEQ` typed into
//! telnet) work too, split at spaces with `"..."` or `'...'` grouping (no
//! escapes: `SIM.INJECT` decodes its own).
//!
//! Addresses are `ip:port` (`localhost:port` means `127.0.0.1:port`).
//! Targets are `ALL`, `ENDPOINT ip:port` or `CLIENT id` (the simulator's id,
//! as `SIM.CLIENTS` shows).
//!
//! Endpoints at a chosen address: `SIM.MOVING ... TO ip:port` with an address
//! that is not an endpoint yet opens one there, and `SAME-PORT` opens one on
//! the next loopback IP (`127.0.0.2`, ...) with the old endpoint's port.
//! Clients that keep their port and only take the host from `MOVING`
//! (redis-py does) need that. Both are plain simulator endpoints
//! ([`Simulator::open_endpoint_at`]).
//!
//! `SIM.MOVING ... STAY-OPEN` keeps the old endpoint listening, as an
//! address behind a load balancer that now leads to the new node (for
//! clients told `MOVING` with a null endpoint, which reconnect there): only
//! its connections from before the `MOVING` are closed at the deadline
//! ([`super::MovingPlan::stay_open`]).
//!
//! For redis-py, move with `SIM.MOVING <secs> SAME-PORT STAY-OPEN`, not
//! `SAME-PORT` alone: redis-py takes only the host from `MOVING` and keeps
//! its port, and once the `MOVING` time is over it opens new connections at
//! the address it was configured with again. `SAME-PORT` alone closes that
//! address at the deadline, so every connection opened after it fails (a
//! run with new connections after the deadline counted 25,166 failed
//! commands); with `STAY-OPEN` the address leads to the new node, as on a
//! managed Redis behind a load balancer (0 failed under 8 threads, see
//! `tests/redis_py/scenarios.py`). node-redis takes host and port from
//! `MOVING` and follows a move to a new port as well.
//!
//! In front of a Redis Cluster ([`super::Builder::start_cluster`]),
//! `SIM.SLOT-MIGRATE <slots> <src> <dst>` moves slots for real between the
//! nodes behind two endpoints, bracketed by `SMIGRATING` / `SMIGRATED`.
//!
//! The admin port has no authentication: bind it to loopback.
//!
//! ```no_run
//! use redis_layers::sim::{admin::Admin, Simulator};
//!
//! # async fn run() -> std::io::Result<()> {
//! let sim = Simulator::start("127.0.0.1:6379".parse().unwrap()).await?;
//! let admin = Admin::bind(sim.clone(), "127.0.0.1:16380".parse().unwrap()).await?;
//! println!("clients: {}, admin: {}", sim.endpoint(), admin.local_addr());
//! // redis-cli -p 16380 SIM.MOVING 15
//! # Ok(()) }
//! ```

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Simulator;
use super::{MovingPlan, Push, SlotMigrate, SlotMove, Target, Window};
use crate::resp::{Decoder, Limits, Value};

const LOG: &str = "redis_layers::sim::admin";

/// Longest scenario or `MOVING` time accepted: one week.
const MAX_SECS: u64 = 7 * 24 * 3600;
/// Longest reply delay accepted: one hour.
const MAX_DELAY_MS: u64 = 3_600_000;
/// Longest inline command line.
const MAX_INLINE: usize = 64 * 1024;

/// A running admin server; see the [module docs](self). It stops (listener
/// and admin connections closed) on [`Admin::shutdown`], when dropped, or
/// when the simulator stops. Scenarios it started run on in the simulator
/// until they end.
///
/// [`Admin::bind`] holds a [`Simulator`] handle, so the simulator runs at
/// least as long as the admin does; [`Admin::bind_weak`] does not.
#[derive(Debug)]
pub struct Admin {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Admin {
    /// Binds `addr` (port 0: a free port) and serves `sim` there in the
    /// background.
    pub async fn bind(sim: Simulator, addr: SocketAddr) -> io::Result<Admin> {
        Self::bind_inner(&sim, Some(sim.clone()), addr).await
    }

    /// Like [`Admin::bind`], but the admin does not keep the simulator
    /// running: once every other [`Simulator`] handle is dropped (or on
    /// [`Simulator::shutdown`]) the simulator stops, and the admin with it.
    pub async fn bind_weak(sim: &Simulator, addr: SocketAddr) -> io::Result<Admin> {
        Self::bind_inner(sim, None, addr).await
    }

    async fn bind_inner(
        sim: &Simulator,
        keep: Option<Simulator>,
        addr: SocketAddr,
    ) -> io::Result<Admin> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let shared = Shared::new(sim, keep, stop.clone());
        tokio::spawn(accept_loop(shared, listener));
        tracing::info!(target: LOG, event = "sim.admin.listen", %addr, "admin listening");
        Ok(Admin { addr, stop })
    }

    /// Where the admin server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the admin server.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves the admin protocol for `sim` on `listener` until this future is
/// dropped (which closes the admin connections) or the simulator stops.
/// [`Admin::bind`] runs the same in the background.
pub async fn serve(sim: Simulator, listener: TcpListener) {
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    accept_loop(Shared::new(&sim, Some(sim.clone()), stop), listener).await
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                tokio::spawn(connection(shared.clone(), sock, peer));
            }
            Err(e) => {
                tracing::warn!(target: LOG, error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

// ===== shared state =====

struct Shared {
    /// A handle that does not keep the simulator running.
    sim: Simulator,
    /// One that does, unless bound weak.
    _keep: Option<Simulator>,
    stop: CancellationToken,
    next_session: AtomicU64,
    /// The endpoint `SIM.MOVING`, `SIM.MIGRATE` and `SIM.FAILOVER` act on by
    /// default: the first one, then wherever the last `MOVING` sent clients.
    current: Mutex<SocketAddr>,
}

impl Shared {
    fn new(sim: &Simulator, keep: Option<Simulator>, stop: CancellationToken) -> Arc<Shared> {
        // The admin stops with the simulator.
        let sim_stop = sim.inner.stop.clone();
        let admin_stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = sim_stop.cancelled() => admin_stop.cancel(),
                _ = admin_stop.cancelled() => {}
            }
        });
        Arc::new(Shared {
            current: Mutex::new(sim.endpoint()),
            sim: sim.detached(),
            _keep: keep,
            stop,
            next_session: AtomicU64::new(1),
        })
    }

    fn current(&self) -> MutexGuard<'_, SocketAddr> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `addr` if it is an endpoint (open or closed).
    fn endpoint(&self, addr: SocketAddr) -> Result<SocketAddr, String> {
        if self.sim.endpoints().contains(&addr) {
            Ok(addr)
        } else {
            Err(format!("ERR no such endpoint {addr} (see SIM.ENDPOINTS)"))
        }
    }

    /// `addr` if it is an open endpoint.
    fn open_endpoint(&self, addr: SocketAddr) -> Result<SocketAddr, String> {
        let addr = self.endpoint(addr)?;
        if self.sim.is_open(addr) {
            Ok(addr)
        } else {
            Err(format!("ERR endpoint {addr} is closed"))
        }
    }
}

// ===== one admin connection =====

struct Session {
    id: u64,
    peer: SocketAddr,
    resp3: bool,
    name: Option<Bytes>,
}

/// What a command gives back: a reply, or an error line (without `-`).
type Reply = Result<Value, String>;

async fn connection(shared: Arc<Shared>, mut sock: TcpStream, peer: SocketAddr) {
    let mut session = Session {
        id: shared.next_session.fetch_add(1, Ordering::Relaxed),
        peer,
        resp3: false,
        name: None,
    };
    let mut dec = Decoder::with_limits(Limits {
        max_bulk_len: 16 * 1024 * 1024,
        max_aggregate_len: 1024 * 1024,
        max_depth: 8,
        max_inline_len: MAX_INLINE,
        ..Limits::DEFAULT
    });
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::new();
    loop {
        let mut quit = false;
        loop {
            match next_command(&mut dec, &mut buf) {
                Ok(None) => break,
                Ok(Some(Parsed::Args(args))) => {
                    let (reply, q) = execute(&shared, &mut session, args).await;
                    encode_reply(&reply, session.resp3, &mut out);
                    if q {
                        quit = true;
                        break;
                    }
                }
                Ok(Some(Parsed::Bad(msg))) => {
                    encode_reply(&Err(msg), session.resp3, &mut out);
                }
                Err(msg) => {
                    tracing::info!(target: LOG, %peer, error = %msg, "admin client sent invalid RESP; closing");
                    encode_reply(&Err(msg), session.resp3, &mut out);
                    quit = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if sock.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if quit {
            return;
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = sock.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

enum Parsed {
    Args(Vec<Bytes>),
    /// A whole frame that is not a command: answered with this error.
    Bad(String),
}

/// The next command in `buf`: a RESP array of bulk strings, or an inline
/// line. `Err` is fatal (the stream cannot be resynchronised).
fn next_command(dec: &mut Decoder, buf: &mut BytesMut) -> Result<Option<Parsed>, String> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] == b'*' {
            return match dec.decode(buf) {
                Ok(None) => Ok(None),
                Ok(Some(Value::Array(items))) if items.is_empty() => continue,
                Ok(Some(Value::Array(items))) => {
                    let args: Option<Vec<Bytes>> = items
                        .into_iter()
                        .map(|v| match v {
                            Value::BulkString(b) => Some(b),
                            _ => None,
                        })
                        .collect();
                    Ok(Some(args.map_or_else(
                        || {
                            Parsed::Bad(
                                "ERR Protocol error: a command is an array of bulk strings".into(),
                            )
                        },
                        Parsed::Args,
                    )))
                }
                Ok(Some(_)) => Ok(Some(Parsed::Bad(
                    "ERR Protocol error: a command is an array of bulk strings".into(),
                ))),
                Err(e) => Err(format!("ERR Protocol error: {}", e.message())),
            };
        }
        let Some(nl) = memchr::memchr(b'\n', buf) else {
            if buf.len() > MAX_INLINE {
                return Err("ERR Protocol error: too big inline request".into());
            }
            return Ok(None);
        };
        let line = buf.split_to(nl + 1);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match split_inline(line) {
            Ok(args) if args.is_empty() => continue,
            Ok(args) => return Ok(Some(Parsed::Args(args))),
            Err(e) => return Ok(Some(Parsed::Bad(e))),
        }
    }
}

/// Splits an inline command at spaces; `"..."` and `'...'` group words.
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, String> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut arg = Vec::new();
        while i < line.len() && !line[i].is_ascii_whitespace() {
            let c = line[i];
            if c == b'"' || c == b'\'' {
                let end = line[i + 1..]
                    .iter()
                    .position(|&b| b == c)
                    .ok_or("ERR Protocol error: unbalanced quotes in request")?;
                arg.extend_from_slice(&line[i + 1..i + 1 + end]);
                i += end + 2;
            } else {
                arg.push(c);
                i += 1;
            }
        }
        args.push(Bytes::from(arg));
    }
    Ok(args)
}

/// Encodes a reply; RESP2 clients get RESP2 forms of RESP3 types.
fn encode_reply(reply: &Reply, resp3: bool, out: &mut BytesMut) {
    match reply {
        Ok(v) => encode_value(v, resp3, out),
        Err(e) => {
            // One line, whatever the message quotes.
            let line: String = e
                .chars()
                .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
                .collect();
            Value::Error(Bytes::from(line)).encode(out);
        }
    }
}

fn encode_value(v: &Value, resp3: bool, out: &mut BytesMut) {
    if resp3 {
        return v.encode(out);
    }
    let header = |out: &mut BytesMut, n: usize| {
        out.put_u8(b'*');
        out.put_slice(n.to_string().as_bytes());
        out.put_slice(b"\r\n");
    };
    match v {
        Value::Null => out.put_slice(b"$-1\r\n"),
        Value::Boolean(b) => Value::Integer(i64::from(*b)).encode(out),
        Value::Double(d) => Value::BulkString(Bytes::from(d.to_string())).encode(out),
        Value::Map(pairs) => {
            header(out, pairs.len() * 2);
            for (k, v) in pairs {
                encode_value(k, false, out);
                encode_value(v, false, out);
            }
        }
        Value::Array(items) | Value::Set(items) | Value::Push(items) => {
            header(out, items.len());
            for v in items {
                encode_value(v, false, out);
            }
        }
        other => other.encode(out),
    }
}

// ===== commands =====

fn ok() -> Reply {
    Ok(Value::SimpleString(Bytes::from_static(b"OK")))
}

fn bulk(s: impl Into<String>) -> Value {
    Value::BulkString(Bytes::from(s.into()))
}

fn opt_bulk(s: Option<impl Into<String>>) -> Value {
    s.map_or(Value::Null, bulk)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The arguments after the command name, consumed left to right.
struct Args<'a> {
    name: &'a str,
    items: &'a [Bytes],
    pos: usize,
}

impl<'a> Args<'a> {
    fn remaining(&self) -> usize {
        self.items.len() - self.pos
    }

    fn arity(&self) -> String {
        format!(
            "ERR wrong number of arguments for '{}' command",
            self.name.to_ascii_lowercase()
        )
    }

    fn next(&mut self) -> Result<&'a [u8], String> {
        let a = self.items.get(self.pos).ok_or_else(|| self.arity())?;
        self.pos += 1;
        Ok(a)
    }

    fn text(&mut self) -> Result<String, String> {
        let b = self.next()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| format!("ERR argument is not UTF-8: {}", lossy(b)))
    }

    fn word(&mut self) -> Result<String, String> {
        Ok(self.text()?.to_ascii_uppercase())
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let t = self.text()?;
        t.parse()
            .map_err(|_| format!("ERR {what} must be a non-negative integer, got '{t}'"))
    }

    fn millis(&mut self, what: &str, max: u64) -> Result<Duration, String> {
        let ms = self.u64(what)?;
        if ms > max {
            return Err(format!("ERR {what} must be at most {max} ms"));
        }
        Ok(Duration::from_millis(ms))
    }

    /// Seconds, decimals allowed.
    fn secs(&mut self, what: &str) -> Result<Duration, String> {
        let t = self.text()?;
        match t.parse::<f64>() {
            Ok(s) if s.is_finite() && (0.0..=MAX_SECS as f64).contains(&s) => {
                Ok(Duration::from_secs_f64(s))
            }
            _ => Err(format!(
                "ERR {what} must be a number of seconds from 0 to {MAX_SECS}, got '{t}'"
            )),
        }
    }

    fn addr(&mut self) -> Result<SocketAddr, String> {
        parse_addr(&self.text()?)
    }

    fn end(&self) -> Result<(), String> {
        match self.items.get(self.pos) {
            None => Ok(()),
            Some(a) => Err(format!(
                "ERR unexpected argument '{}' for '{}'",
                lossy(a),
                self.name.to_ascii_lowercase()
            )),
        }
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    Err(format!("ERR invalid address '{s}' (want ip:port)"))
}

/// Decodes `\r`, `\n`, `\t`, `\0`, `\\`, `\"`, `\'` and `\xHH`; any other
/// byte is taken as it is.
fn unescape(s: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let c = *s
            .get(i + 1)
            .ok_or("ERR a lone '\\' ends the bytes (write '\\\\' for a backslash)")?;
        i += 2;
        out.push(match c {
            b'r' => b'\r',
            b'n' => b'\n',
            b't' => b'\t',
            b'0' => 0,
            b'\\' | b'"' | b'\'' => c,
            b'x' => {
                let hex = s
                    .get(i..i + 2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("ERR '\\x' needs two hex digits")?;
                i += 2;
                hex
            }
            other => {
                return Err(format!(
                    "ERR unknown escape '\\{}' (use \\r \\n \\t \\0 \\\\ \\\" \\' \\xHH)",
                    other as char
                ))
            }
        });
    }
    Ok(out)
}

/// For the log: the command line, printable and bounded.
fn summary(args: &[Bytes]) -> String {
    let mut s = String::new();
    for a in args {
        if !s.is_empty() {
            s.push(' ');
        }
        s.extend(a.escape_ascii().map(char::from));
        if s.len() > 256 {
            s.truncate(256);
            s.push_str("...");
            break;
        }
    }
    s
}

/// Runs one command; the flag says "close the connection after the reply".
async fn execute(shared: &Arc<Shared>, session: &mut Session, argv: Vec<Bytes>) -> (Reply, bool) {
    let name = String::from_utf8_lossy(&argv[0]).to_ascii_uppercase();
    tracing::info!(target: LOG, event = "sim.admin.command", peer = %session.peer, command = %summary(&argv), "admin command");
    let mut args = Args {
        name: &name,
        items: &argv[1..],
        pos: 0,
    };
    let reply = match name.as_str() {
        "QUIT" => return (ok(), true),
        "PING" => match args.remaining() {
            0 => Ok(Value::SimpleString(Bytes::from_static(b"PONG"))),
            1 => Ok(Value::BulkString(argv[1].clone())),
            _ => Err(args.arity()),
        },
        "ECHO" => match args.remaining() {
            1 => Ok(Value::BulkString(argv[1].clone())),
            _ => Err(args.arity()),
        },
        "HELP" | "SIM.HELP" => Ok(Value::Array(HELP.iter().map(|l| bulk(*l)).collect())),
        "HELLO" => hello(session, &mut args),
        "CLIENT" => client(session, &mut args),
        "SELECT" => args.u64("db").and_then(|_| args.end()).and_then(|_| ok()),
        // redis-cli asks for command docs when it starts interactively.
        "COMMAND" => Ok(Value::Array(Vec::new())),
        "SIM.MOVING" => moving(shared, &mut args),
        "SIM.MIGRATE" => window(shared, &mut args, true),
        "SIM.FAILOVER" => window(shared, &mut args, false),
        "SIM.SLOT-MIGRATE" => slot_migrate(shared, &mut args).await,
        "SIM.NOTIFY" => notify(shared, &mut args),
        "SIM.INJECT" => inject(shared, &mut args),
        "SIM.DELAY" => delay(shared, &mut args),
        "SIM.REFUSE" => refuse(shared, &mut args),
        "SIM.CLOSE" => close(shared, &mut args),
        "SIM.CLOSE-ENDPOINT" => close_endpoint(shared, &mut args),
        "SIM.HANDSHAKE-ERROR" => handshake_error(shared, &mut args),
        "SIM.SERVER-VERSION" => server_version(shared, &mut args),
        "SIM.CLIENTS" => args.end().map(|_| clients(shared)),
        "SIM.ENDPOINTS" => args.end().map(|_| endpoints(shared)),
        "SIM.SEQ" => args.end().map(|_| Value::Integer(shared.sim.next_seq())),
        "SIM.STATS" => args.end().map(|_| stats(shared)),
        _ => Err(format!(
            "ERR unknown command '{}', with args beginning with: {}(try SIM.HELP)",
            lossy(&argv[0]),
            argv[1..]
                .iter()
                .take(4)
                .map(|a| format!("'{}' ", lossy(a)))
                .collect::<String>()
        )),
    };
    if let Err(e) = &reply {
        tracing::info!(target: LOG, event = "sim.admin.error", peer = %session.peer, command = %name, error = %e, "admin command refused");
    }
    (reply, false)
}

const HELP: &[&str] = &[
    "redis-maint-sim admin commands (case-insensitive; <target> is ALL | ENDPOINT ip:port | CLIENT id):",
    "SIM.MOVING <secs> [FROM ip:port] [TO ip:port | SAME-PORT] [STAY-OPEN] -> [seq, \"ip:port\"]",
    "    MOVING to the opted-in connections of FROM (default: the current endpoint), which closes after <secs>.",
    "    TO: an endpoint, or a new one opened at that address; SAME-PORT: a new one on the next loopback IP,",
    "    same port; default: a new endpoint on a free port. STAY-OPEN: FROM keeps listening (a load balancer",
    "    address); only its connections from before the MOVING are told and closed. Runs in the background.",
    "SIM.MIGRATE <duration-ms> [DELAY ms] [ENDPOINT ip:port] [STARTS secs] [SHARDS ids|NONE] -> [seq, \"ip:port\"]",
    "    MIGRATING, replies held DELAY ms (default 50) for the duration, then MIGRATED. Runs in the background.",
    "SIM.FAILOVER <duration-ms> [DELAY ms] [ENDPOINT ip:port] [STARTS secs] [SHARDS ids|NONE] -> [seq, \"ip:port\"]",
    "    The same with FAILING_OVER / FAILED_OVER.",
    "SIM.SLOT-MIGRATE <slots> <src ip:port> <dst ip:port> [AFTER ms] [FAIL-AFTER keys] -> [seq]",
    "    (cluster; slots: 100 | 100-200 | 0-5,9) src must own every slot, else -ERR and nothing is announced.",
    "    SMIGRATING to src's opted-in connections, a real migration to dst's node, then SMIGRATED; src answers",
    "    ASK, never MOVED, for the slots until 200 ms after SMIGRATED. AFTER: keys start moving that much later.",
    "    FAIL-AFTER: fail once that many keys moved; the migration is rolled back and SMIGRATED names src as",
    "    the owner. Background.",
    "SIM.NOTIFY <target> <kind> <seq|*> args... -> [seq, connections]",
    "    MOVING seq time [ip:port|NULL] | MIGRATING seq time [shards] | MIGRATED seq [shards]",
    "    FAILING_OVER seq time [shards] | FAILED_OVER seq [shards] | SMIGRATING seq slots...",
    "    SMIGRATED seq src dst slots [src dst slots...] | SMIGRATED-FLAT seq src dst slots...",
    "    SMIGRATED-LEGACY seq dst slots...   (seq * = the next sequence number)",
    "SIM.INJECT <target> <bytes> -> connections. Escapes: \\r \\n \\t \\0 \\\\ \\\" \\' \\xHH",
    "SIM.DELAY <target> <ms> -> OK. Holds every reply that long (0: none).",
    "SIM.REFUSE <ip:port> ON|OFF -> OK. New connections are accepted and closed at once.",
    "SIM.CLOSE <target> -> connections closed.",
    "SIM.CLOSE-ENDPOINT <ip:port> -> connections closed; the endpoint stops listening.",
    "SIM.HANDSHAKE-ERROR <error text...>|OFF -> OK. How CLIENT MAINT_NOTIFICATIONS is answered.",
    "SIM.SERVER-VERSION <version>|OFF -> OK. The version HELLO replies name (OFF: the server's).",
    "SIM.CLIENTS -> one entry per proxied connection: id endpoint peer name resp3 maint maint-requests",
    "SIM.ENDPOINTS -> one entry per endpoint: endpoint backend clients state current",
    "SIM.SEQ -> the next sequence number (taken: later ones are higher).",
    "SIM.STATS -> moved ask migrations-started migrations-done migrations-failed (counters since start).",
    "PING [msg] | ECHO msg | HELP (SIM.HELP from redis-cli, which keeps HELP for itself) | HELLO [2|3] | QUIT",
];

/// `SIM.STATS`: a map (a flat array over RESP2).
fn stats(shared: &Shared) -> Value {
    let s = shared.sim.stats();
    let n = |v: u64| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    Value::Map(vec![
        (bulk("moved"), n(s.moved)),
        (bulk("ask"), n(s.ask)),
        (bulk("migrations-started"), n(s.migrations_started)),
        (bulk("migrations-done"), n(s.migrations_done)),
        (bulk("migrations-failed"), n(s.migrations_failed)),
    ])
}

fn hello(session: &mut Session, args: &mut Args<'_>) -> Reply {
    if args.remaining() > 0 {
        let v = args.text()?;
        match v.as_str() {
            "2" => session.resp3 = false,
            "3" => session.resp3 = true,
            _ => return Err("NOPROTO unsupported protocol version".into()),
        }
        while args.remaining() > 0 {
            match args.word()?.as_str() {
                "AUTH" => {
                    // No authentication on the admin port.
                    args.next()?;
                    args.next()?;
                }
                "SETNAME" => session.name = Some(Bytes::copy_from_slice(args.next()?)),
                other => return Err(format!("ERR syntax error in HELLO option '{other}'")),
            }
        }
    }
    let pair = |k: &str, v: Value| (bulk(k), v);
    Ok(Value::Map(vec![
        pair("server", bulk("redis-maint-sim")),
        pair("version", bulk(env!("CARGO_PKG_VERSION"))),
        pair("proto", Value::Integer(if session.resp3 { 3 } else { 2 })),
        pair("id", Value::Integer(session.id as i64)),
        pair("mode", bulk("standalone")),
        pair("role", bulk("master")),
        pair("modules", Value::Array(Vec::new())),
    ]))
}

fn client(session: &mut Session, args: &mut Args<'_>) -> Reply {
    match args.word()?.as_str() {
        "SETNAME" => {
            session.name = Some(Bytes::copy_from_slice(args.next()?));
            args.end()?;
            ok()
        }
        "GETNAME" => Ok(session.name.clone().map_or(Value::Null, Value::BulkString)),
        "ID" => Ok(Value::Integer(session.id as i64)),
        "SETINFO" => ok(),
        other => Err(format!(
            "ERR unknown subcommand '{other}' on the admin port"
        )),
    }
}

/// `ALL | ENDPOINT ip:port | CLIENT id`, checked against what exists.
fn target(shared: &Shared, args: &mut Args<'_>) -> Result<Target, String> {
    match args.word()?.as_str() {
        "ALL" => Ok(Target::All),
        "ENDPOINT" => {
            let a = args.addr()?;
            Ok(Target::Endpoint(shared.endpoint(a)?))
        }
        "CLIENT" => {
            let id = args.u64("client id")?;
            if shared.sim.clients().iter().any(|c| c.id == id) {
                Ok(Target::Client(id))
            } else {
                Err(format!("ERR no such client {id} (see SIM.CLIENTS)"))
            }
        }
        other => Err(format!(
            "ERR target must be ALL, ENDPOINT ip:port or CLIENT id, got '{other}'"
        )),
    }
}

fn moving(shared: &Arc<Shared>, args: &mut Args<'_>) -> Reply {
    let time = args.secs("time")?;
    let (mut from, mut to, mut same_port, mut stay_open) = (None, None, false, false);
    while args.remaining() > 0 {
        match args.word()?.as_str() {
            "FROM" => from = Some(args.addr()?),
            "TO" => to = Some(args.addr()?),
            "SAME-PORT" => same_port = true,
            "STAY-OPEN" => stay_open = true,
            other => return Err(format!("ERR unknown SIM.MOVING option '{other}'")),
        }
    }
    if same_port && to.is_some() {
        return Err("ERR TO and SAME-PORT exclude each other".into());
    }
    let from = from.unwrap_or_else(|| *shared.current());
    let from = shared
        .open_endpoint(from)
        .map_err(|e| e.replace("is closed", "is closed already"))?;
    let to = match to {
        Some(t) if t == from => return Err("ERR TO is the endpoint that moves".into()),
        Some(t) if shared.sim.endpoints().contains(&t) => Some(shared.open_endpoint(t)?),
        // Not an endpoint yet: the simulator opens one there.
        Some(t) => Some(t),
        None if same_port => Some(same_port_endpoint(shared, from)?),
        None => None,
    };
    let mut m = MovingPlan::new(time);
    m.from = Some(from);
    m.to = to;
    m.stay_open = stay_open;
    let h = shared.sim.start_moving(m).map_err(|e| match to {
        Some(t) => format!("ERR cannot open an endpoint at {t}: {e}"),
        None => format!("ERR {e}"),
    })?;
    let (seq, to) = (h.seq, h.to);
    tokio::spawn(async move {
        match h.finished().await {
            Ok(m) => {
                tracing::info!(target: LOG, event = "sim.admin.moving_done", seq = m.seq, %from, %to, stay_open, notified = m.notified, closed = m.closed, "MOVING done")
            }
            Err(e) => tracing::warn!(target: LOG, %from, error = %e, "MOVING failed"),
        }
    });
    {
        let mut current = shared.current();
        if *current == from {
            *current = to;
        }
    }
    Ok(Value::Array(vec![
        Value::Integer(seq),
        bulk(to.to_string()),
    ]))
}

/// An endpoint on the next loopback IP that has `from`'s port free.
fn same_port_endpoint(shared: &Shared, from: SocketAddr) -> Result<SocketAddr, String> {
    let backend = shared
        .sim
        .backend_of(from)
        .ok_or_else(|| format!("ERR no such endpoint {from}"))?;
    let mut last = None;
    for last_octet in 2..=254u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet));
        if ip == from.ip() {
            continue;
        }
        match shared
            .sim
            .inner
            .listen_now(SocketAddr::new(ip, from.port()), backend)
        {
            Ok(a) => return Ok(a),
            Err(e) => last = Some(e),
        }
    }
    Err(format!(
        "ERR no loopback address has port {} free: {}",
        from.port(),
        last.map_or_else(String::new, |e| e.to_string())
    ))
}

fn window(shared: &Arc<Shared>, args: &mut Args<'_>, migrate: bool) -> Reply {
    let mut w = Window::new(args.millis("duration", MAX_SECS * 1000)?);
    let mut endpoint = None;
    while args.remaining() > 0 {
        match args.word()?.as_str() {
            "DELAY" => w.reply_delay = args.millis("DELAY", MAX_DELAY_MS)?,
            "ENDPOINT" => endpoint = Some(args.addr()?),
            "STARTS" => w.starts_within = args.u64("STARTS")?,
            "SHARDS" => {
                let s = args.text()?;
                w.shard_ids = (!s.eq_ignore_ascii_case("NONE")).then_some(s);
            }
            other => return Err(format!("ERR unknown option '{other}'")),
        }
    }
    let endpoint = shared.open_endpoint(endpoint.unwrap_or_else(|| *shared.current()))?;
    w.endpoint = Some(endpoint);
    let h = if migrate {
        shared.sim.start_migrate(w)
    } else {
        shared.sim.start_failover(w)
    };
    let seq = h.start;
    tokio::spawn(async move {
        if let Ok(s) = h.finished().await {
            tracing::info!(target: LOG, event = "sim.admin.window_done", migrate, start = s.start, end = s.end, notified = s.notified, %endpoint, "maintenance window done");
        }
    });
    Ok(Value::Array(vec![
        Value::Integer(seq),
        bulk(endpoint.to_string()),
    ]))
}

async fn slot_migrate(shared: &Arc<Shared>, args: &mut Args<'_>) -> Reply {
    let slots = parse_slots(&args.text()?)?;
    let src = shared.open_endpoint(args.addr()?)?;
    let dst = shared.open_endpoint(args.addr()?)?;
    let mut m = SlotMigrate::new(&slots, src, dst);
    while args.remaining() > 0 {
        match args.word()?.as_str() {
            "AFTER" => m.after = args.millis("AFTER", MAX_SECS * 1000)?,
            "FAIL-AFTER" => {
                m.fail_after_keys =
                    Some(usize::try_from(args.u64("FAIL-AFTER")?).unwrap_or(usize::MAX))
            }
            other => return Err(format!("ERR unknown SIM.SLOT-MIGRATE option '{other}'")),
        }
    }
    if src == dst {
        return Err("ERR source and destination are the same endpoint".into());
    }
    // Ownership is checked before anything is announced: a refusal here
    // means no client was told.
    let h = shared
        .sim
        .start_slot_migration(m)
        .await
        .map_err(|e| format!("ERR {e}"))?;
    let seq = h.smigrating;
    tokio::spawn(async move {
        match h.finished().await {
            Ok(m) => {
                tracing::info!(target: LOG, event = "sim.admin.slot_migrate_done", smigrating = m.smigrating, smigrated = m.smigrated, keys = m.keys, notified = m.notified, %src, %dst, "slot migration done")
            }
            Err(e) => tracing::warn!(target: LOG, %src, %dst, error = %e, "slot migration failed"),
        }
    });
    Ok(Value::Array(vec![Value::Integer(seq)]))
}

/// Slots as `100`, `100-200` or `0-5,9` (each 0 to 16383).
pub(super) fn parse_slots(s: &str) -> Result<Vec<u16>, String> {
    let bad =
        || format!("ERR invalid slots '{s}' (want e.g. 100, 100-200 or 0-5,9; each 0 to 16383)");
    let slot = |t: &str| {
        t.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n < 16384)
            .ok_or_else(bad)
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (slot(a)?, slot(b)?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(slot(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn notify(shared: &Arc<Shared>, args: &mut Args<'_>) -> Reply {
    let t = target(shared, args)?;
    let kind = args.word()?.replace('_', "-");
    let seq = {
        let s = args.text()?;
        if s == "*" {
            shared.sim.next_seq()
        } else {
            s.parse::<i64>()
                .map_err(|_| format!("ERR seq must be an integer or *, got '{s}'"))?
        }
    };
    let rest = |args: &mut Args<'_>| -> Result<Vec<String>, String> {
        let mut v = Vec::new();
        while args.remaining() > 0 {
            v.push(args.text()?);
        }
        Ok(v)
    };
    let opt = |args: &mut Args<'_>| -> Result<Option<String>, String> {
        let v = if args.remaining() > 0 {
            Some(args.text()?)
        } else {
            None
        };
        args.end()?;
        Ok(v)
    };
    let n = match kind.as_str() {
        "MOVING" => {
            let time = args.u64("time")?;
            let endpoint = opt(args)?.filter(|e| !e.eq_ignore_ascii_case("NULL"));
            Push::Moving {
                seq,
                time,
                endpoint,
            }
        }
        "MIGRATING" => Push::Migrating {
            seq,
            time: args.u64("time")?,
            shard_ids: opt(args)?,
        },
        "FAILING-OVER" => Push::FailingOver {
            seq,
            time: args.u64("time")?,
            shard_ids: opt(args)?,
        },
        "MIGRATED" => Push::Migrated {
            seq,
            shard_ids: opt(args)?,
        },
        "FAILED-OVER" => Push::FailedOver {
            seq,
            shard_ids: opt(args)?,
        },
        "SMIGRATING" => {
            let slots = rest(args)?;
            if slots.is_empty() {
                return Err(args.arity());
            }
            Push::SMigrating { seq, slots }
        }
        "SMIGRATED" => {
            let parts = rest(args)?;
            if parts.is_empty() || parts.len() % 3 != 0 {
                return Err("ERR SMIGRATED takes src dst slots triplets".into());
            }
            if parts.iter().any(|p| p.contains(['\r', '\n'])) {
                return Err("ERR SMIGRATED fields are simple strings: no CR or LF".into());
            }
            Push::SMigrated {
                seq,
                moves: parts
                    .chunks_exact(3)
                    .map(|c| SlotMove {
                        src: c[0].clone(),
                        dst: c[1].clone(),
                        slots: c[2].clone(),
                    })
                    .collect(),
            }
        }
        "SMIGRATED-FLAT" => {
            let src = args.text()?;
            let dst = args.text()?;
            let slots = rest(args)?;
            if slots.is_empty() {
                return Err(args.arity());
            }
            Push::SMigratedFlat {
                seq,
                src,
                dst,
                slots,
            }
        }
        "SMIGRATED-LEGACY" => {
            let dst = args.text()?;
            let slots = rest(args)?;
            if slots.is_empty() {
                return Err(args.arity());
            }
            Push::SMigratedLegacy { seq, dst, slots }
        }
        other => {
            return Err(format!(
                "ERR unknown notification kind '{other}' (MOVING MIGRATING MIGRATED FAILING_OVER \
                 FAILED_OVER SMIGRATING SMIGRATED SMIGRATED-FLAT SMIGRATED-LEGACY)"
            ))
        }
    };
    let count = shared.sim.notify(t, &n);
    Ok(Value::Array(vec![
        Value::Integer(seq),
        Value::Integer(count as i64),
    ]))
}

fn inject(shared: &Arc<Shared>, args: &mut Args<'_>) -> Reply {
    let t = target(shared, args)?;
    let bytes = unescape(args.next()?)?;
    args.end()?;
    if bytes.is_empty() {
        return Err("ERR nothing to inject".into());
    }
    Ok(Value::Integer(shared.sim.inject_raw(t, bytes) as i64))
}

fn delay(shared: &Arc<Shared>, args: &mut Args<'_>) -> Reply {
    let t = target(shared, args)?;
    let d = args.millis("delay", MAX_DELAY_MS)?;
    args.end()?;
    shared.sim.set_delay(t, d);
    ok()
}

fn refuse(shared: &Arc<Shared>, args: &mut Args<'_>) -> Reply {
    let e = shared.endpoint(args.addr()?)?;
    let on = match args.word()?.as_str() {
        "ON" => true,
        "OFF" => false,
        other => return Err(format!("ERR want ON or OFF, got '{other}'")),
    };
    args.end()?;
    shared.sim.refuse_connections(e, on);
    ok()
}

fn close(shared: &Arc<Shared>, args: &mut Args<'_>) -> Reply {
    let t = target(shared, args)?;
    args.end()?;
    Ok(Value::Integer(shared.sim.close(t) as i64))
}

fn close_endpoint(shared: &Arc<Shared>, args: &mut Args<'_>) -> Reply {
    let e = shared.endpoint(args.addr()?)?;
    args.end()?;
    Ok(Value::Integer(shared.sim.close_endpoint(e) as i64))
}

fn handshake_error(shared: &Arc<Shared>, args: &mut Args<'_>) -> Reply {
    let mut words = Vec::new();
    while args.remaining() > 0 {
        words.push(args.text()?);
    }
    let text = words.join(" ");
    if text.is_empty() {
        return Err(args.arity());
    }
    if text.contains(['\r', '\n']) {
        return Err("ERR an error reply is one line: no CR or LF".into());
    }
    let error = (!text.eq_ignore_ascii_case("OFF")).then_some(text);
    tracing::info!(target: LOG, event = "sim.admin.handshake_error", error = ?error, "maintenance handshake answer");
    shared.sim.set_handshake_error(error);
    ok()
}

fn server_version(shared: &Arc<Shared>, args: &mut Args<'_>) -> Reply {
    let v = args.text()?;
    args.end()?;
    if v.is_empty() || v.contains(['\r', '\n']) {
        return Err("ERR a version is one non-empty line".into());
    }
    let version = (!v.eq_ignore_ascii_case("OFF")).then_some(v);
    tracing::info!(target: LOG, event = "sim.admin.server_version", version = ?version, "HELLO version");
    shared.sim.set_server_version(version);
    ok()
}

/// A map entry (RESP2 clients get it as a flat array).
fn entry(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (bulk(k), v)).collect())
}

fn clients(shared: &Shared) -> Value {
    Value::Array(
        shared
            .sim
            .clients()
            .into_iter()
            .map(|c| {
                entry(vec![
                    ("id", Value::Integer(c.id as i64)),
                    ("endpoint", bulk(c.endpoint.to_string())),
                    ("peer", bulk(c.peer.to_string())),
                    ("name", opt_bulk(c.name)),
                    ("resp3", Value::Boolean(c.resp3)),
                    ("maint", opt_bulk(c.maint.map(|t| t.as_str()))),
                    (
                        "maint-requests",
                        Value::Integer(i64::from(c.maint_requests)),
                    ),
                ])
            })
            .collect(),
    )
}

fn endpoints(shared: &Shared) -> Value {
    let current = *shared.current();
    Value::Array(
        shared
            .sim
            .endpoints_info()
            .into_iter()
            .map(|e| {
                entry(vec![
                    ("endpoint", bulk(e.addr.to_string())),
                    ("backend", bulk(e.backend.to_string())),
                    ("clients", Value::Integer(e.clients as i64)),
                    ("state", bulk(if e.open { "open" } else { "closed" })),
                    ("current", Value::Boolean(e.addr == current)),
                ])
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes() {
        assert_eq!(unescape(br"+OK\r\n").unwrap(), b"+OK\r\n");
        assert_eq!(unescape(br"\x00\xff\\\t\0\'").unwrap(), b"\x00\xff\\\t\0'");
        assert_eq!(unescape(b"plain").unwrap(), b"plain");
        assert!(unescape(br"\q").is_err());
        assert!(unescape(br"\x4").is_err());
        assert!(unescape(br"\xzz").is_err());
        assert!(unescape(b"end\\").is_err());
    }

    #[test]
    fn inline_split() {
        let v = split_inline(br#"SIM.INJECT  ALL "+HI there\r\n" 'a b'c"#).unwrap();
        let v: Vec<&[u8]> = v.iter().map(|b| &b[..]).collect();
        assert_eq!(
            v,
            vec![&b"SIM.INJECT"[..], b"ALL", br"+HI there\r\n", b"a bc"]
        );
        assert!(split_inline(br#"PING "x"#).is_err());
        assert!(split_inline(b"   ").unwrap().is_empty());
    }

    #[test]
    fn resp2_forms() {
        let v = Value::Array(vec![
            Value::Map(vec![(bulk("a"), Value::Null)]),
            Value::Boolean(true),
        ]);
        let mut out = BytesMut::new();
        encode_value(&v, false, &mut out);
        assert_eq!(&out[..], b"*2\r\n*2\r\n$1\r\na\r\n$-1\r\n:1\r\n");
        out.clear();
        encode_value(&v, true, &mut out);
        assert_eq!(&out[..], b"*2\r\n%1\r\n$1\r\na\r\n_\r\n#t\r\n");
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("localhost:7").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 7))
        );
        assert!(parse_addr("nowhere:7").is_err());
        assert!(parse_addr("127.0.0.1").is_err());
    }
}

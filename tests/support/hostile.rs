//! A scripted, hostile RESP3 server: raw TCP on a free loopback port, no
//! redis-server behind it. It answers the handshake like Redis 7, keeps a
//! tiny in-memory key space (GET, SET, INCR, DEL) so a client can be seen
//! to keep serving, records every command every connection sent, and lets a
//! test answer any command with bytes of its choosing or write raw frames
//! (push notifications, malformed replies) to every open connection.
//!
//! It runs on plain threads, so it works under any test runtime, and stops
//! (closing every connection) when the handle drops.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use redis_layers::Endpoint;

/// One command a client sent.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which accepted connection (0, 1, ... in accept order).
    pub conn: usize,
    /// The command's arguments.
    pub args: Vec<Vec<u8>>,
}

impl Received {
    /// The command name, upper-cased.
    pub fn name(&self) -> String {
        self.args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// The arguments as lossy text, space separated.
    pub fn text(&self) -> String {
        self.args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What the script answers to a command: `None` for the built-in answer,
/// an empty reply to hang up (close the connection without answering, as a
/// server that ran the command and then lost the connection), [`silence`]
/// to answer nothing and keep the connection open (a stalled server).
pub type Script = dyn Fn(&Received) -> Option<Vec<u8>> + Send + Sync;

struct Inner {
    log: Mutex<Vec<Received>>,
    /// Each open connection's writer, shared by its reply loop and
    /// `inject` so that frames never interleave.
    conns: Mutex<Vec<Arc<Mutex<TcpStream>>>>,
    accepted: AtomicUsize,
    store: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    script: Box<Script>,
    stop: AtomicBool,
}

/// See the module docs.
pub struct HostileServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

impl HostileServer {
    /// A server that answers everything with the built-in answers.
    pub fn start() -> Self {
        Self::scripted(|_| None)
    }

    /// A server whose `script` may answer any command first.
    pub fn scripted(script: impl Fn(&Received) -> Option<Vec<u8>> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            log: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            store: Mutex::new(HashMap::new()),
            script: Box::new(script),
            stop: AtomicBool::new(false),
        });
        let i = inner.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if i.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let id = i.accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(w) = stream.try_clone() else { continue };
                let w = Arc::new(Mutex::new(w));
                i.conns.lock().unwrap().push(w.clone());
                let i = i.clone();
                thread::spawn(move || serve(i, id, stream, w));
            }
        });
        HostileServer { addr, inner }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it listens, as an endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::tcp(self.addr.ip().to_string(), self.addr.port())
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every command received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.log.lock().unwrap().clone()
    }

    /// How many connections were accepted.
    pub fn accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// True if any command named `name` (any case) arrived, or any
    /// `HELLO` carrying `AUTH` when `name` is `"AUTH"`.
    pub fn saw(&self, name: &str) -> bool {
        let name = name.to_ascii_uppercase();
        self.received().iter().any(|r| {
            r.name() == name
                || (name == "AUTH" && r.args.iter().any(|a| a.eq_ignore_ascii_case(b"AUTH")))
        })
    }

    /// Writes `bytes` to every open connection (push frames, garbage).
    pub fn inject(&self, bytes: &[u8]) {
        let mut conns = self.inner.conns.lock().unwrap();
        conns.retain(|c| {
            let mut c = c.lock().unwrap();
            c.write_all(bytes).and_then(|_| c.flush()).is_ok()
        });
    }

    /// Waits (bounded) until `n` connections were accepted.
    pub fn wait_accepted(&self, n: usize, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.accepted() >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        self.accepted() >= n
    }

    /// Closes every open connection (the listener stays).
    pub fn close_all(&self) {
        for c in self.inner.conns.lock().unwrap().drain(..) {
            let _ = c.lock().unwrap().shutdown(Shutdown::Both);
        }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.close_all();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(inner: Arc<Inner>, conn: usize, stream: TcpStream, w: Arc<Mutex<TcpStream>>) {
    let mut r = BufReader::new(stream);
    while let Some(args) = read_command(&mut r) {
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        let rec = Received { conn, args };
        inner.log.lock().unwrap().push(rec.clone());
        let reply = (inner.script)(&rec).unwrap_or_else(|| builtin(&inner, &rec));
        let mut w = w.lock().unwrap();
        if reply.is_empty() {
            let _ = w.shutdown(Shutdown::Both);
            return;
        }
        if reply == SILENCE {
            continue;
        }
        if w.write_all(&reply).and_then(|_| w.flush()).is_err() {
            return;
        }
    }
}

/// The reply that is no reply: the command is read and never answered,
/// and the connection stays open (a server stalled, or one that accepts
/// connections and never answers their `HELLO`).
pub fn silence() -> Vec<u8> {
    SILENCE.to_vec()
}

/// Not RESP (a frame never starts with a NUL), so no real reply is taken
/// for it.
const SILENCE: &[u8] = b"\0silence";

/// Redis 7's answers, enough for a handshake and a tiny key space.
fn builtin(inner: &Inner, r: &Received) -> Vec<u8> {
    let arg = |i: usize| r.args.get(i).cloned().unwrap_or_default();
    match r.name().as_str() {
        "HELLO" => hello_reply(),
        "PING" => b"+PONG\r\n".to_vec(),
        "GET" => match inner.store.lock().unwrap().get(&arg(1)) {
            Some(v) => bulk(v),
            None => b"_\r\n".to_vec(),
        },
        "SET" => {
            inner.store.lock().unwrap().insert(arg(1), arg(2));
            b"+OK\r\n".to_vec()
        }
        "DEL" => {
            let n = r.args[1..]
                .iter()
                .filter(|k| inner.store.lock().unwrap().remove(*k).is_some())
                .count();
            format!(":{n}\r\n").into_bytes()
        }
        "INCR" => {
            let mut store = inner.store.lock().unwrap();
            let v = store.entry(arg(1)).or_insert_with(|| b"0".to_vec());
            let n: i64 = String::from_utf8_lossy(v).parse::<i64>().unwrap_or(0) + 1;
            *v = n.to_string().into_bytes();
            format!(":{n}\r\n").into_bytes()
        }
        // AUTH, SELECT, CLIENT ..., anything else.
        _ => b"+OK\r\n".to_vec(),
    }
}

/// Redis 7's `HELLO 3` reply.
pub fn hello_reply() -> Vec<u8> {
    let mut out = b"%7\r\n".to_vec();
    for (k, v) in [
        ("server", "+redis\r\n"),
        ("version", "+7.0.15\r\n"),
        ("proto", ":3\r\n"),
        ("id", ":1\r\n"),
        ("mode", "+standalone\r\n"),
        ("role", "+master\r\n"),
        ("modules", "*0\r\n"),
    ] {
        out.extend_from_slice(format!("+{k}\r\n{v}").as_bytes());
    }
    out
}

/// A RESP bulk string.
pub fn bulk(b: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    out
}

/// A RESP3 push frame of bulk strings and integers: `push(&["MOVING", ":1",
/// ":30", "127.0.0.2:6379"])`; an element starting with `:` is an integer,
/// `_` is null, anything else a bulk string.
pub fn push(elems: &[&str]) -> Vec<u8> {
    let mut out = format!(">{}\r\n", elems.len()).into_bytes();
    for e in elems {
        if e.starts_with(':') || *e == "_" {
            out.extend_from_slice(e.as_bytes());
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&bulk(e.as_bytes()));
        }
    }
    out
}

/// Reads one command (an array of bulk strings, or an inline command).
fn read_command(r: &mut BufReader<TcpStream>) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let line = line.trim_end();
    let Some(n) = line.strip_prefix('*') else {
        return Some(
            line.split_whitespace()
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        );
    };
    let n: usize = n.parse().ok()?;
    let mut args = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let len: usize = h.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf).ok()?;
        buf.truncate(len);
        args.push(buf);
    }
    Some(args)
}

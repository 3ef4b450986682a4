//! A scripted proxy in front of a real server that refuses chosen commands
//! with an error reply instead of forwarding them (so they are really not
//! applied), the way a loading or failing-over server refuses them.
//!
//! Each client connection gets its own backend connection; commands are
//! handled one at a time in order, so replies stay matched. The
//! connection's handshake (`HELLO`, `AUTH`, `CLIENT`, `SELECT`) is always
//! forwarded.
//!
//! [`FlapProxy`] forwards bytes as they come (pub/sub messages included)
//! and, when told to, drops each new connection right after the server
//! confirms its first subscription, as a flapping server would.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use redis_layers::resp::Decoder;
use redis_layers::{Endpoint, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Default)]
struct Script {
    /// Error lines for the next commands, in order.
    refuse: VecDeque<String>,
    /// Commands answered with a scripted error so far.
    refused: u64,
    /// Commands forwarded to the server so far (handshake excluded).
    forwarded: u64,
}

/// A free loopback port that runs a task per accepted connection; it
/// stops when dropped.
struct Listener {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    async fn start<F, Fut>(mut serve: F) -> Self
    where
        F: FnMut(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                conns.spawn(serve(client));
            }
        });
        Listener { addr, task }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::tcp("127.0.0.1", self.addr.port())
    }
}

/// The proxy; it stops when dropped.
pub struct FaultProxy {
    listener: Listener,
    script: Arc<Mutex<Script>>,
}

impl FaultProxy {
    /// Starts a proxy to `backend` on a free loopback port.
    pub async fn start(backend: SocketAddr) -> Self {
        let script = Arc::new(Mutex::new(Script::default()));
        let s = script.clone();
        let listener = Listener::start(move |client| serve(client, backend, s.clone())).await;
        FaultProxy { listener, script }
    }

    /// Where clients connect.
    pub fn endpoint(&self) -> Endpoint {
        self.listener.endpoint()
    }

    /// The next `n` commands get `-{error}` without reaching the server.
    pub fn refuse_next(&self, n: usize, error: &str) {
        let mut s = self.script.lock().unwrap();
        s.refuse.extend((0..n).map(|_| error.to_owned()));
    }

    /// Drops the refusals not used yet.
    pub fn clear(&self) {
        self.script.lock().unwrap().refuse.clear();
    }

    /// Commands refused so far.
    pub fn refused(&self) -> u64 {
        self.script.lock().unwrap().refused
    }

    /// Commands forwarded so far (handshake excluded).
    pub fn forwarded(&self) -> u64 {
        self.script.lock().unwrap().forwarded
    }
}

fn is_handshake(name: &[u8]) -> bool {
    ["HELLO", "AUTH", "CLIENT", "SELECT"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

async fn serve(mut client: TcpStream, backend: SocketAddr, script: Arc<Mutex<Script>>) {
    let Ok(mut server) = TcpStream::connect(backend).await else {
        return;
    };
    let mut from_client = BytesMut::new();
    let mut from_server = BytesMut::new();
    let mut commands = Decoder::new();
    let mut replies = Decoder::new();
    loop {
        // The next whole command.
        let frame_len = loop {
            match commands.frame_len(&from_client) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(_) => return,
            }
            match client.read_buf(&mut from_client).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let frame = from_client.split_to(frame_len);
        let name = match Decoder::new().decode(&mut frame.clone()) {
            Ok(Some(Value::Array(args))) => args
                .first()
                .and_then(|a| a.as_bytes().map(<[u8]>::to_vec))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let refusal = {
            let mut s = script.lock().unwrap();
            if is_handshake(&name) {
                None
            } else if let Some(e) = s.refuse.pop_front() {
                s.refused += 1;
                Some(e)
            } else {
                s.forwarded += 1;
                None
            }
        };
        if let Some(e) = refusal {
            if client
                .write_all(format!("-{e}\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        if server.write_all(&frame).await.is_err() {
            return;
        }
        // Its reply, whole.
        let reply_len = loop {
            match replies.frame_len(&from_server) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(_) => return,
            }
            match server.read_buf(&mut from_server).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let reply = from_server.split_to(reply_len);
        if client.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// A byte-for-byte proxy that counts its connections and can make each new
/// one die as soon as its subscription is restored. It stops when dropped.
pub struct FlapProxy {
    listener: Listener,
    state: Arc<FlapState>,
}

struct FlapState {
    accepted: AtomicUsize,
    flapping: AtomicBool,
    /// Bumped to close every open connection.
    close: watch::Sender<u64>,
}

impl FlapProxy {
    /// Starts a proxy to `backend` on a free loopback port.
    pub async fn start(backend: SocketAddr) -> Self {
        let state = Arc::new(FlapState {
            accepted: AtomicUsize::new(0),
            flapping: AtomicBool::new(false),
            close: watch::channel(0).0,
        });
        let s = state.clone();
        let listener = Listener::start(move |client| {
            s.accepted.fetch_add(1, SeqCst);
            let flap = s.flapping.load(SeqCst);
            pipe(client, backend, flap, s.close.subscribe())
        })
        .await;
        FlapProxy { listener, state }
    }

    /// Where clients connect.
    pub fn endpoint(&self) -> Endpoint {
        self.listener.endpoint()
    }

    /// From now on, each new connection is closed right after the server's
    /// first push frame (a subscribe confirmation) reaches the client.
    pub fn set_flapping(&self, on: bool) {
        self.state.flapping.store(on, SeqCst);
    }

    /// Closes every open connection.
    pub fn close_all(&self) {
        self.state.close.send_modify(|g| *g += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(SeqCst)
    }
}

async fn pipe(client: TcpStream, backend: SocketAddr, flap: bool, mut close: watch::Receiver<u64>) {
    let Ok(server) = TcpStream::connect(backend).await else {
        return;
    };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = tokio::io::copy(&mut client_rx, &mut server_tx);
    let down = async {
        let mut buf = BytesMut::new();
        let mut frames = Decoder::new();
        loop {
            match server_rx.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if !flap {
                if client_tx.write_all(&buf).await.is_err() {
                    return;
                }
                buf.clear();
                continue;
            }
            // Whole frames, up to and including the first push frame.
            loop {
                let n = match frames.frame_len(&buf) {
                    Ok(Some(n)) => n,
                    Ok(None) => break,
                    Err(_) => return,
                };
                let frame = buf.split_to(n);
                if client_tx.write_all(&frame).await.is_err() || frame[0] == b'>' {
                    return;
                }
            }
        }
    };
    // Whichever ends first closes both sockets (their halves drop).
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = close.changed() => {}
    }
}

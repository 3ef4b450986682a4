//! Test support: real `redis-server` processes on free loopback ports.
//!
//! Each server gets its own port (never 6379) and its own temporary
//! directory, persists nothing, and is killed when the handle drops. The
//! benchmark and the quickstart example include this file too.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use redis_layers::Endpoint;
pub mod cluster;
pub mod faults;
pub mod hostile;
pub mod ledger;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod rng;
pub mod sim;
#[cfg(feature = "tls")]
pub mod tls;

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    password: Option<String>,
    acl_users: Vec<(String, String)>,
    unix_socket: bool,
    args: Vec<String>,
    port: Option<u16>,
}

impl ServerBuilder {
    /// `requirepass`.
    pub fn password(mut self, p: &str) -> Self {
        self.password = Some(p.into());
        self
    }

    /// An ACL user with all permissions.
    pub fn acl_user(mut self, user: &str, pass: &str) -> Self {
        self.acl_users.push((user.into(), pass.into()));
        self
    }

    /// Also listen on a Unix socket in the server's directory.
    pub fn unix_socket(mut self) -> Self {
        self.unix_socket = true;
        self
    }

    /// Listen on `port` (a server started again where an earlier one
    /// was); default: a free port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Any other `redis-server` arguments, e.g. `["--maxclients", "10"]`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// Starts the server and waits until it answers; panics (failing the
    /// test) if it cannot within the bound.
    pub fn start(self) -> RedisServer {
        let mut last_err = String::new();
        for _ in 0..5 {
            match self.try_start() {
                Ok(s) => return s,
                // Most likely another process took the port between our
                // probe and the server's bind: try another one.
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    fn try_start(&self) -> Result<RedisServer, String> {
        let port = self.port.unwrap_or_else(free_port);
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "redis-layers-test-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            port
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(redis_server_bin());
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        for (user, pass) in &self.acl_users {
            // One word per argument: redis-server would take a single
            // argument with spaces for the user name.
            cmd.args([
                "--user",
                user,
                "on",
                &format!(">{pass}"),
                "~*",
                "&*",
                "+@all",
            ]);
        }
        let unix = self.unix_socket.then(|| dir.join("redis.sock"));
        if let Some(path) = &unix {
            cmd.arg("--unixsocket")
                .arg(path)
                .args(["--unixsocketperm", "700"]);
        }
        cmd.args(&self.args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", redis_server_bin()))?;
        let mut server = RedisServer {
            child,
            port,
            dir,
            unix,
        };
        server.wait_ready()?;
        Ok(server)
    }
}

/// A running `redis-server`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    unix: Option<PathBuf>,
}

/// `redis-cli` against the server on `port` (loopback): its standard
/// output.
fn redis_cli<A: AsRef<std::ffi::OsStr>>(port: u16, args: impl IntoIterator<Item = A>) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisServer {
    /// A plain server.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// A server with options.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Its TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its TCP endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::tcp("127.0.0.1", self.port)
    }

    /// Its Unix socket endpoint, if started with one.
    pub fn unix_endpoint(&self) -> Option<Endpoint> {
        self.unix.as_ref().map(Endpoint::unix)
    }

    /// Waits until the server has run `cmd` (lower case) at least `calls`
    /// times, by `INFO commandstats`: the server announces nothing, so it
    /// is polled (`redis-cli` on a blocking thread). Callers bound it.
    pub async fn ran(&self, cmd: &str, calls: u64) {
        let prefix = format!("cmdstat_{cmd}:calls=");
        let port = self.port;
        loop {
            let info =
                tokio::task::spawn_blocking(move || redis_cli(port, ["INFO", "commandstats"]))
                    .await
                    .expect("redis-cli thread");
            let seen = info
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                .unwrap_or(0);
            if seen >= calls {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Runs a command through `redis-cli` (for setup and checks outside the
    /// crate under test) and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args).trim().to_string()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "redis-server exited ({status}) on port {}: {}",
                    self.port,
                    std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
                ));
            }
            // Our server is the one answering only once its own log says it
            // bound the port: between `free_port` and the bind another test's
            // server may take the port, and a PING alone would then reach
            // that server (seen in CI: a cluster formed with another
            // cluster's node) while ours exits with "Address already in use".
            if self.log_says_ready() && ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server on port {} did not answer in 10 s",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl RedisServer {
    /// True once the server's log has the line Redis writes after it has
    /// bound every listener ("Ready to accept connections", as Redis 6 and 7
    /// write it).
    fn log_says_ready(&self) -> bool {
        std::fs::read_to_string(self.dir.join("redis.log"))
            .is_ok_and(|log| log.contains("Ready to accept connections"))
    }

    /// Kills the server process now (SIGKILL: no shutdown, no goodbye to
    /// clients or cluster peers), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// True when a server on `port` answers a PING (any reply, so a server that
/// wants a password counts as up).
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n > 0 && (buf[0] == b'+' || buf[0] == b'-'))
}

/// A loopback port that is free now (never 6379).
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        if port != 6379 {
            return port;
        }
    }
}

/// The `redis-server` binary: `$REDIS_SERVER` or the one on `PATH`.
pub fn redis_server_bin() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// Runs a test body, failing the test if it takes longer than `secs`
/// seconds: every test is bounded in time.
pub async fn bounded<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"))
}

/// Awaits one step of a test, failing with `what` if it takes longer than
/// `limit`.
pub async fn within<F: std::future::Future>(limit: Duration, what: &str, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

/// For the examples: the server named by `REDIS_URL`, or, when it is
/// unset, a throwaway redis-server started here (it stops when the returned
/// handle is dropped). The error never quotes the URL: it may hold a
/// password.
pub fn server_from_env(
) -> redis_layers::Result<(Option<RedisServer>, redis_layers::Connector, Endpoint)> {
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let (connector, endpoint) = redis_layers::Connector::from_url(&url)?;
            Ok((None, connector, endpoint))
        }
        Err(_) => {
            let server = RedisServer::start();
            println!(
                "REDIS_URL unset: started redis-server on {}",
                server.endpoint()
            );
            let endpoint = server.endpoint();
            Ok((Some(server), redis_layers::Connector::new(), endpoint))
        }
    }
}

/// A field of `/proc/self/status` (`VmRSS`, `VmSize`), in KiB: the memory
/// tests read the process's own numbers (each alone in its test binary).
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Reports the growth of the process's resident set from `before` to
/// `after` (bytes) and fails the test when it reaches `limit`.
pub fn assert_rss_growth(what: &str, before: u64, after: u64, limit: u64) {
    let growth = after.saturating_sub(before);
    eprintln!(
        "{what}: RSS {} KiB -> {} KiB, growth {} KiB",
        before / 1024,
        after / 1024,
        growth / 1024
    );
    assert!(
        growth < limit,
        "{what}: RSS grew by {} KiB (limit {} KiB)",
        growth / 1024,
        limit / 1024
    );
}

//! The Cluster layer against a real Redis Cluster: keys across slots, a
//! hash-tagged MSET/MGET, a pipeline split over the nodes, a fan-out
//! DBSIZE, a cross-slot command refused before sending, the layer's
//! stats and its slot map.
//!
//! ```text
//! cargo run --example cluster                               # starts a local 3-node cluster
//! REDIS_CLUSTER=127.0.0.1:7000 cargo run --example cluster  # uses yours (any node)
//! ```
//!
//! Without `REDIS_CLUSTER` it starts three `redis-server --cluster-enabled
//! yes` processes in a temporary directory on free loopback ports, joins
//! them with `redis-cli --cluster create`, waits for `cluster_state:ok`,
//! and stops them when it ends, on an error too. On a cluster of yours it
//! writes only keys under `example:` and deletes them at the end.
//!
//! Exits non-zero if anything does not go as expected.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis_layers::cluster::slot::key_slot;
use redis_layers::cluster::{ClusterConfig, ClusterLayer, NodeRole};
use redis_layers::handoff::Handoff;
use redis_layers::relax::RelaxTimeoutLayer;
use redis_layers::{cmd, Cmd, Connector, Endpoint, Error, Pipeline, Request, Response, Value};
use tower::{Layer, Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every step of the example is bounded by this.
const STEP: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let began = Instant::now();
    // Keeps the local cluster alive; its Drop kills the servers, also when
    // `main` returns an error or panics.
    let (_local, seeds) = match std::env::var("REDIS_CLUSTER") {
        Ok(addrs) => {
            let seeds = addrs
                .split(',')
                .map(|a| a.trim().parse::<Endpoint>())
                .collect::<Result<Vec<_>, _>>()?;
            println!("REDIS_CLUSTER set: using the cluster at {addrs}");
            (None, seeds)
        }
        Err(_) => {
            let local = tokio::task::spawn_blocking(LocalCluster::start).await??;
            println!(
                "REDIS_CLUSTER unset: started a 3-node cluster on ports {:?} in {:.1} s",
                local.ports,
                began.elapsed().as_secs_f64()
            );
            let seeds = vec![Endpoint::tcp("127.0.0.1", local.ports[0])];
            (Some(local), seeds)
        }
    };

    // ----- the stack: Cluster over, per node, RelaxTimeout over Handoff -----
    let connector = Connector::new();
    let node = move |endpoint: Endpoint, role: NodeRole| {
        let connector = match role {
            NodeRole::Primary => connector.clone(),
            // Only with `read_from_replicas(true)`.
            NodeRole::Replica => connector.clone().on_connect(cmd("READONLY")),
        };
        RelaxTimeoutLayer::new(Duration::from_secs(1)).layer(Handoff::new(connector, endpoint))
    };
    let mut svc = ClusterLayer::new(seeds)
        .config(ClusterConfig::default())
        .layer(node);

    // ----- keys across slots -----
    let keys: Vec<String> = (0..200).map(|i| format!("example:key:{i}")).collect();
    let tasks: Vec<_> = keys
        .chunks(25)
        .map(|chunk| {
            let (mut svc, chunk) = (svc.clone(), chunk.to_vec());
            tokio::spawn(async move {
                for k in &chunk {
                    expect(
                        send(&mut svc, cmd("SET").arg(k).arg(format!("value of {k}"))).await?,
                        &Value::SimpleString("OK".into()),
                        k,
                    )?;
                }
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let map = svc.slot_map();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for k in &keys {
        let v = send(&mut svc, cmd("GET").arg(k)).await?;
        expect(v, &Value::BulkString(format!("value of {k}").into()), k)?;
        let owner = map
            .primary_for(key_slot(k.as_bytes()))
            .ok_or_else(|| format!("no primary for {k}"))?;
        *per_node.entry(owner.to_string()).or_default() += 1;
    }
    println!(
        "{} keys written by 8 tasks and read back; by the node that serves them: {per_node:?}",
        keys.len()
    );

    // ----- hash tags: multi-key commands on one slot -----
    let r = send(
        &mut svc,
        cmd("MSET")
            .arg("example:{user:1}:name")
            .arg("Ann")
            .arg("example:{user:1}:email")
            .arg("ann@example.com"),
    )
    .await?;
    expect(r, &Value::SimpleString("OK".into()), "MSET")?;
    let r = send(
        &mut svc,
        cmd("MGET")
            .arg("example:{user:1}:name")
            .arg("example:{user:1}:email"),
    )
    .await?;
    println!(
        "hash-tagged MSET/MGET (slot {}): {r:?}",
        key_slot(b"example:{user:1}:name")
    );
    expect(
        r,
        &Value::Array(vec![
            Value::BulkString("Ann".into()),
            Value::BulkString("ann@example.com".into()),
        ]),
        "MGET",
    )?;

    // ----- a cross-slot command is refused before anything is sent -----
    match send(
        &mut svc,
        cmd("MSET")
            .arg("example:a")
            .arg("1")
            .arg("example:b")
            .arg("2"),
    )
    .await
    {
        Err(e @ Error::Config(_)) => println!("cross-slot MSET refused: {e}"),
        other => return Err(format!("cross-slot MSET: expected a refusal, got {other:?}").into()),
    }
    let r = send(&mut svc, cmd("EXISTS").arg("example:a").arg("example:b")).await;
    // EXISTS of two slots is refused too; ask for each key alone.
    if r.is_ok() {
        return Err("cross-slot EXISTS was sent".into());
    }
    for k in ["example:a", "example:b"] {
        expect(
            send(&mut svc, cmd("EXISTS").arg(k)).await?,
            &Value::Integer(0),
            k,
        )?;
    }

    // ----- a pipeline over every node, replies in the caller's order -----
    let mut p = Pipeline::new();
    for i in 0..30 {
        p = p.cmd(cmd("INCRBY").arg(format!("example:counter:{i}")).arg(i));
    }
    p = p.cmd(cmd("PING"));
    let replies = within("pipeline", async {
        svc.ready().await?.call(p.into()).await?.into_pipeline()
    })
    .await?;
    for (i, r) in replies.iter().take(30).enumerate() {
        match r {
            Ok(Value::Integer(n)) if *n == i as i64 => {}
            other => return Err(format!("pipeline reply {i}: {other:?}").into()),
        }
    }
    let nodes: std::collections::BTreeSet<String> = (0..30)
        .filter_map(|i| map.primary_for(key_slot(format!("example:counter:{i}").as_bytes())))
        .map(|e| e.to_string())
        .collect();
    println!(
        "pipeline of 31 commands over {} nodes: {} replies in order, last {:?}",
        nodes.len(),
        replies.len(),
        replies.last()
    );

    // ----- fan-out: DBSIZE goes to every primary, the replies are summed -----
    let total = send(&mut svc, cmd("DBSIZE")).await?;
    let mut by_node = Vec::new();
    let mut sum = 0;
    for primary in map.primaries() {
        let conn = within("connect", Connector::new().connect(primary.clone())).await?;
        let n = within("DBSIZE", conn.send_cmd(cmd("DBSIZE"))).await?;
        if let Value::Integer(n) = n {
            sum += n;
        }
        by_node.push(format!("{primary}: {n:?}"));
    }
    println!("DBSIZE through the layer: {total:?}; each primary: {by_node:?}");
    expect(total, &Value::Integer(sum), "DBSIZE")?;

    // ----- what the layer knows and did -----
    println!("stats: {:?}", svc.stats());
    println!("slot map:");
    for (range, shard) in svc.slot_map().ranges() {
        println!(
            "  slots {:>5}-{:<5} primary {} replicas {:?}",
            range.start(),
            range.end(),
            shard.primary,
            shard
                .replicas
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
        );
    }

    // Clean up (matters on a cluster of yours): one DEL per key, as a
    // pipeline the layer splits per node.
    let mut p: Pipeline = keys.iter().map(|k| cmd("DEL").arg(k)).collect();
    for k in ["example:{user:1}:name", "example:{user:1}:email"] {
        p = p.cmd(cmd("DEL").arg(k));
    }
    for i in 0..30 {
        p = p.cmd(cmd("DEL").arg(format!("example:counter:{i}")));
    }
    let deleted = within("cleanup", async {
        svc.ready().await?.call(p.into()).await?.into_pipeline()
    })
    .await?;
    if let Some(e) = deleted.iter().find_map(|r| r.as_ref().err()) {
        return Err(format!("cleanup: {e}").into());
    }
    println!("done in {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}

/// Sends one command through the stack, bounded by [`STEP`].
async fn send<S>(svc: &mut S, c: Cmd) -> Result<Value, Error>
where
    S: Service<Request, Response = Response, Error = Error>,
{
    tokio::time::timeout(STEP, async {
        svc.ready().await?.call(c.into()).await?.into_value()
    })
    .await
    .unwrap_or(Err(Error::Timeout))
}

async fn within<T, E: Into<BoxError>>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(STEP, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(format!("{what}: nothing within {STEP:?}").into()),
    }
}

fn expect(got: Value, want: &Value, what: &str) -> Result<(), BoxError> {
    if &got == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want:?}, got {got:?}").into())
    }
}

// ===== a local cluster =====

/// Three `redis-server --cluster-enabled yes` processes in a temporary
/// directory; killed, and the directory removed, on drop.
struct LocalCluster {
    servers: Vec<Child>,
    ports: Vec<u16>,
    dir: PathBuf,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl LocalCluster {
    /// Starts the nodes, `redis-cli --cluster create`s them and waits until
    /// every node says `cluster_state:ok`. A node that cannot bind its port
    /// (someone took it meanwhile) makes it try again on other ports.
    fn start() -> Result<Self, BoxError> {
        let mut last = None;
        for attempt in 0..3 {
            match Self::try_start(attempt) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    eprintln!("starting the local cluster: {e}; trying other ports");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("three attempts"))
    }

    fn try_start(attempt: u32) -> Result<Self, BoxError> {
        let dir = std::env::temp_dir().join(format!(
            "redis-layers-example-cluster-{}-{attempt}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        // Client ports and cluster-bus ports (named explicitly: the default,
        // port + 10000, may be taken or above 65535).
        let free = free_ports(6)?;
        let (ports, bus) = free.split_at(3);
        let mut cluster = LocalCluster {
            servers: Vec::new(),
            ports: ports.to_vec(),
            dir: dir.clone(),
        };
        for (&port, &bus) in ports.iter().zip(bus) {
            let child = Command::new("redis-server")
                .args(["--cluster-enabled", "yes", "--port", &port.to_string()])
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--bind", "127.0.0.1", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(dir.join(format!("redis-{port}.log")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("spawning redis-server (is it on PATH?): {e}"))?;
            cluster.servers.push(child);
        }
        cluster.wait_until("every node to answer PING", |c| {
            c.check_alive()?;
            Ok(c.ports.iter().all(|&p| ping(p)))
        })?;
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for p in &cluster.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let log = dir.join("create.log");
        let mut child = create
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning redis-cli (is it on PATH?): {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("redis-cli --cluster create did not finish in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            return Err(format!(
                "redis-cli --cluster create: {status}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
            .into());
        }
        cluster.wait_until("cluster_state:ok on every node", |c| {
            c.check_alive()?;
            Ok(c.ports
                .iter()
                .all(|&p| cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok")))
        })?;
        Ok(cluster)
    }

    /// Fails if a server exited (e.g. its port was taken), with its log.
    fn check_alive(&mut self) -> Result<(), BoxError> {
        for (s, port) in self.servers.iter_mut().zip(&self.ports) {
            if let Some(status) = s.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join(format!("redis-{port}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                return Err(
                    format!("redis-server on port {port} exited ({status}): {tail:?}").into(),
                );
            }
        }
        Ok(())
    }

    fn wait_until(
        &mut self,
        what: &str,
        mut done: impl FnMut(&mut Self) -> Result<bool, BoxError>,
    ) -> Result<(), BoxError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self)? {
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {what}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// `n` loopback ports that are free now, below the kernel's ephemeral
/// range (32768 and up on Linux), so that no outgoing connection takes one
/// before the server binds it.
fn free_ports(n: usize) -> Result<Vec<u16>, BoxError> {
    let salt = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    let mut ports = Vec::with_capacity(n);
    for i in 0..12_000u64 {
        let port = 20_000 + ((salt + i * 7) % 12_000) as u16;
        if !ports.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
            if ports.len() == n {
                return Ok(ports);
            }
        }
    }
    Err("no free loopback ports in 20000-31999".into())
}

/// True when a server answers `PING` on `port`.
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// `redis-cli -p port args...`, its output ("" on failure).
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

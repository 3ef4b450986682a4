//! `redis-maint-sim`: the maintenance simulator as a standalone proxy.
//!
//! Clients connect to `--listen` as to a managed Redis; the real data lives
//! in the `--backend` server; `--admin` takes `SIM.*` commands (see `HELP`
//! there, or the README's "Simulator" section):
//!
//! ```text
//! redis-maint-sim --backend 127.0.0.1:6379 --listen 127.0.0.1:16379 --admin 127.0.0.1:16380
//! redis-cli -p 16380 SIM.MOVING 15
//! ```
//!
//! With `--cluster-seed HOST:PORT` instead of `--backend` it fronts the
//! whole Redis Cluster that node belongs to: one endpoint per node.

use std::net::SocketAddr;
use std::process::ExitCode;

use redis_layers::sim::{admin::Admin, http::HttpControl, Simulator};

const USAGE: &str = "\
redis-maint-sim: a RESP proxy in front of a real redis-server that plays a
managed Redis under maintenance (MOVING, MIGRATING, FAILING_OVER, ... push
notifications, slow replies, refused and closed connections), driven through
a RESP admin port.

USAGE:
    redis-maint-sim [OPTIONS]

OPTIONS:
    --backend HOST:PORT       the real redis-server      [default: 127.0.0.1:6379]
    --listen IP:PORT          where clients connect      [default: 127.0.0.1:16379]
    --admin IP:PORT           the admin port (SIM.* commands; no auth: keep it
                              on loopback)               [default: 127.0.0.1:16380]
    --http IP:PORT            also serve the HTTP control API there (POST /action,
                              GET /action/ID, ...; see redis_layers::sim::http)
    --fqdn-host NAME          host name MOVING gives to clients that asked for
                              an *-fqdn endpoint type    [default: localhost]
    --cluster-seed HOST:PORT  front the Redis Cluster this node belongs to
                              instead of one server: one endpoint per node, on
                              free ports of the --listen IP (its port is
                              ignored); SIM.SLOT-MIGRATE moves slots
    -h, --help                this text
    -V, --version             the version

Port 0 picks a free port; the addresses in use are printed on startup as
`listen IP:PORT` and `admin IP:PORT` lines on stdout (with --cluster-seed:
one `node SERVER -> ENDPOINT` line per node, then `admin IP:PORT`), and with
--http an `http IP:PORT` line after them all. Logs go to stderr
(RUST_LOG sets the filter; default info). Ctrl-C or SIGTERM stops it.

EXAMPLE:
    redis-maint-sim --backend 127.0.0.1:6379 --listen 127.0.0.1:16379 --admin 127.0.0.1:16380
    redis-cli -p 16380 HELP
    redis-cli -p 16380 SIM.MOVING 15
    redis-maint-sim --cluster-seed 127.0.0.1:7000 --listen 127.0.0.1:0 --admin 127.0.0.1:16380
    redis-cli -p 16380 SIM.SLOT-MIGRATE 0-99 127.0.0.1:41001 127.0.0.1:41002
";

#[derive(Debug)]
struct Options {
    backend: String,
    /// Set when `--backend` was given (it excludes `--cluster-seed`).
    backend_given: bool,
    cluster_seed: Option<String>,
    listen: SocketAddr,
    admin: SocketAddr,
    http: Option<SocketAddr>,
    fqdn_host: String,
}

#[derive(Debug)]
enum Parsed {
    Run(Options),
    Exit(ExitCode),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut o = Options {
        backend: "127.0.0.1:6379".into(),
        backend_given: false,
        cluster_seed: None,
        listen: SocketAddr::from(([127, 0, 0, 1], 16379)),
        admin: SocketAddr::from(([127, 0, 0, 1], 16380)),
        http: None,
        fqdn_host: "localhost".into(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // `--flag=value` or `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone().or_else(|| args.next()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!("{name} needs a value")),
            }
        };
        let addr = |name: &str, v: String| -> Result<SocketAddr, String> {
            v.parse()
                .map_err(|_| format!("{name}: '{v}' is not an IP:PORT address"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(Parsed::Exit(ExitCode::SUCCESS));
            }
            "-V" | "--version" => {
                println!("redis-maint-sim {}", env!("CARGO_PKG_VERSION"));
                return Ok(Parsed::Exit(ExitCode::SUCCESS));
            }
            "--backend" => {
                o.backend = host_port("--backend", value("--backend")?)?;
                o.backend_given = true;
            }
            "--listen" => o.listen = addr("--listen", value("--listen")?)?,
            "--admin" => o.admin = addr("--admin", value("--admin")?)?,
            "--http" => o.http = Some(addr("--http", value("--http")?)?),
            "--fqdn-host" => o.fqdn_host = value("--fqdn-host")?,
            "--cluster-seed" => {
                o.cluster_seed = Some(host_port("--cluster-seed", value("--cluster-seed")?)?);
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    if o.backend_given && o.cluster_seed.is_some() {
        return Err("--backend and --cluster-seed exclude each other".into());
    }
    Ok(Parsed::Run(o))
}

fn host_port(name: &str, v: String) -> Result<String, String> {
    match v.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(v),
        _ => Err(format!("{name}: '{v}' is not HOST:PORT")),
    }
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Exit(code)) => return code,
        Err(e) => {
            eprintln!("redis-maint-sim: {e}\nTry 'redis-maint-sim --help'.");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redis-maint-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redis-maint-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn resolve(name: &str, v: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(v)
        .await
        .map_err(|e| format!("{name} {v}: {e}"))?
        .next()
        .ok_or_else(|| format!("{name} {v}: no address"))
}

async fn run(o: Options) -> Result<(), String> {
    let (sim, admin) = match &o.cluster_seed {
        Some(seed) => {
            let seed_addr = resolve("--cluster-seed", seed).await?;
            let sim = Simulator::builder(seed_addr)
                .listen(o.listen)
                .fqdn_host(o.fqdn_host)
                .start_cluster()
                .await
                .map_err(|e| format!("--cluster-seed {seed}: {e}"))?;
            let admin = Admin::bind(sim.clone(), o.admin)
                .await
                .map_err(|e| format!("--admin {}: {e}", o.admin))?;
            for e in sim.endpoints_info() {
                println!("node {} -> {}", e.backend, e.addr);
            }
            println!("admin {}", admin.local_addr());
            println!("cluster-seed {seed_addr}");
            tracing::info!(endpoints = ?sim.endpoints(), admin = %admin.local_addr(), seed = %seed_addr, "redis-maint-sim running in front of a cluster; Ctrl-C stops it");
            (sim, admin)
        }
        None => {
            let backend = resolve("--backend", &o.backend).await?;
            // Not fatal: the backend may come up later; each client
            // connection dials it anew.
            if let Err(e) = tokio::net::TcpStream::connect(backend).await {
                tracing::warn!(%backend, error = %e, "backend not reachable now; clients will be closed until it is");
            }
            let sim = Simulator::builder(backend)
                .listen(o.listen)
                .fqdn_host(o.fqdn_host)
                .start()
                .await
                .map_err(|e| format!("--listen {}: {e}", o.listen))?;
            let admin = Admin::bind(sim.clone(), o.admin)
                .await
                .map_err(|e| format!("--admin {}: {e}", o.admin))?;
            println!("listen {}", sim.endpoint());
            println!("admin {}", admin.local_addr());
            println!("backend {backend}");
            tracing::info!(listen = %sim.endpoint(), admin = %admin.local_addr(), %backend, "redis-maint-sim running; Ctrl-C stops it");
            (sim, admin)
        }
    };

    let http = match o.http {
        Some(a) => {
            let h = HttpControl::bind(sim.clone(), a)
                .await
                .map_err(|e| format!("--http {a}: {e}"))?;
            println!("http {}", h.local_addr());
            Some(h)
        }
        None => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(|e| format!("cannot watch Ctrl-C: {e}"))?,
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    admin.shutdown();
    drop(http);
    sim.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses() {
        let Ok(Parsed::Run(o)) = parse(&[
            "--backend",
            "localhost:7000",
            "--listen=127.0.0.1:0",
            "--admin",
            "127.0.0.1:1",
        ]) else {
            panic!()
        };
        assert_eq!(o.backend, "localhost:7000");
        assert_eq!(o.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(o.admin, "127.0.0.1:1".parse().unwrap());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--listen", "nowhere"]).is_err());
        assert!(parse(&["--backend", "6379"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        let Ok(Parsed::Run(o)) = parse(&["--cluster-seed", "localhost:7000"]) else {
            panic!()
        };
        assert_eq!(o.cluster_seed.as_deref(), Some("localhost:7000"));
        assert!(parse(&["--cluster-seed", "7000"]).is_err());
        assert!(parse(&["--backend", "a:1", "--cluster-seed", "b:2"])
            .unwrap_err()
            .contains("exclude"));
    }
}

//! The server's own pipelined ceiling, for the benches' ratios.

use std::process::Command;

/// `redis-benchmark -c 1 -P 64 -t get -d 64` against 127.0.0.1:`port`:
/// requests per second, if it is installed.
pub fn redis_benchmark(port: u16, requests: usize) -> Option<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", "1", "-P", "64", "-t", "get", "-d", "64", "--csv"])
        .args(["-n", &requests.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("\"GET\""))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|rps| rps.trim_matches('"').parse().ok())
}

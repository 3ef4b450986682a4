//! This process's CPU time, for the benches' CPU-per-command figures.

/// This process's CPU time in nanoseconds: the sum of its threads'
/// `schedstat` run times (ns resolution), or, without schedstat, user +
/// system time from `/proc/self/stat` (10 ms ticks). redis-server is a
/// child process and not counted.
pub fn cpu_ns() -> u64 {
    if let Some(ns) = schedstat_ns() {
        return ns;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After "pid (comm) ": state ppid pgrp session tty_nr tpgid flags minflt
    // cminflt majflt cmajflt utime stime ...
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (field(11) + field(12)) * 10_000_000
}

fn schedstat_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread that ended between the listing and the read: skip it.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

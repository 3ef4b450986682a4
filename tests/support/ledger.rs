//! The INCR ledger: tasks that each `INCR` a key of their own through a
//! service, as fast as they can. Every reply must be exactly one more than
//! the last acknowledged value (a lost or doubled command shows at once);
//! at the end the caller checks that the server holds exactly the
//! acknowledged counts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_layers::{cmd, Error, Request, Response, Value};
use tokio::sync::Notify;
use tower::{Service, ServiceExt};

use super::within;

const STEP: Duration = Duration::from_secs(10);

/// The load under way; see the [module docs](self).
pub struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    progress: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<(String, u64, Vec<String>)>>,
}

/// What the ledger saw: per key the acknowledged count, and every failure.
pub struct Report {
    /// `(key, acknowledged INCRs)`, one per task.
    pub acked: Vec<(String, u64)>,
    /// Every failed command and every reply out of sequence.
    pub errors: Vec<String>,
}

impl Report {
    /// Fails the test if any command failed or nothing ran.
    pub fn assert_no_failures(&self) {
        assert!(
            self.errors.is_empty(),
            "{} failed commands, first: {:?}",
            self.errors.len(),
            &self.errors[..self.errors.len().min(5)]
        );
        let total: u64 = self.acked.iter().map(|(_, n)| n).sum();
        assert!(total > 0, "the load ran no command");
    }
}

/// Starts `tasks` tasks, each with a clone of `svc`, on keys
/// `{prefix}:{i}`.
pub fn start<S>(svc: &S, tasks: usize, prefix: &str) -> Load
where
    S: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let tasks = (0..tasks)
        .map(|i| {
            let mut svc = svc.clone();
            let (stop, ops, progress) = (stop.clone(), ops.clone(), progress.clone());
            let key = format!("{prefix}:{i}");
            tokio::spawn(async move {
                let mut acked = 0u64;
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let incr = Request::from(cmd("INCR").arg(&key));
                    let reply = within(STEP, "INCR", async {
                        svc.ready().await?.call(incr).await?.into_value()
                    })
                    .await;
                    match reply {
                        Ok(Value::Integer(n)) if n as u64 == acked + 1 => acked += 1,
                        Ok(other) => {
                            errors
                                .push(format!("{key}: after {acked} acks the reply was {other:?}"));
                            // Resynchronise, so one fault is reported once.
                            if let Value::Integer(n) = other {
                                acked = n as u64;
                            }
                        }
                        Err(e) => errors.push(format!("{key}: {e}")),
                    }
                    if ops.fetch_add(1, Ordering::Relaxed) % 64 == 0 {
                        progress.notify_waiters();
                    }
                }
                (key, acked, errors)
            })
        })
        .collect();
    Load {
        stop,
        ops,
        progress,
        tasks,
    }
}

impl Load {
    /// Waits until the load has run `n` more commands.
    pub async fn run_for(&self, n: u64) {
        let target = self.ops.load(Ordering::Relaxed) + n;
        within(STEP, "load progress", async {
            loop {
                let notified = self.progress.notified();
                if self.ops.load(Ordering::Relaxed) >= target {
                    return;
                }
                notified.await;
            }
        })
        .await
    }

    /// Stops the load and collects what every task saw.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = Report {
            acked: vec![],
            errors: vec![],
        };
        for t in self.tasks {
            let (key, acked, errors) = within(STEP, "load task", t).await.expect("task");
            report.acked.push((key, acked));
            report.errors.extend(errors);
        }
        report
    }
}

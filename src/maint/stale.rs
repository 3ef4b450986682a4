//! Guards against stale maintenance notifications: events that arrive after
//! the state they announce is already over, and would reopen it.
//!
//! Two places can tell a stale notification from a current one:
//!
//! - **The connection that read it** ([`StaleGuard`], one per connection,
//!   kept by its driver): a notification whose sequence number is below
//!   one already seen on that connection for the same pair of kinds
//!   (`MIGRATING`/`MIGRATED`, `FAILING_OVER`/`FAILED_OVER`,
//!   `SMIGRATING`/`SMIGRATED`, `MOVING`) was overtaken: a late `MIGRATED 5`
//!   after `MIGRATING 7` would end a relaxation that just began. Sequence
//!   numbers are compared only within a pair, because servers number
//!   `MOVING` per connection and `SMIGRATED` per cluster. A `MOVING` read on
//!   a connection that a handoff has retired (it only drains) is stale too:
//!   the handoff it announces is the one that retired it, or one for a
//!   connection that no longer takes requests.
//! - **The endpoint's state** ([`MaintenanceState`](super::MaintenanceState)):
//!   an `SMIGRATING` whose every slot an `SMIGRATED` with a higher sequence
//!   number has already reported moved (read on another connection of the
//!   endpoint) would relax timeouts again until the backstop.
//!
//! A stale notification is dropped with a `debug` event
//! (`maint.stale`), before the hook, the metrics and the events see it.
//!
//! A watermark older than the de-duplication time-to-live (10 minutes by
//! default) is forgotten, so a server that restarts its numbering on a
//! long-lived connection is believed again after that long.

use std::time::Duration;

use tokio::time::Instant;

use super::{Kind, Notification};

/// A connection's memory of the sequence numbers it has read, by pair of
/// kinds; see [stale events](crate::docs::maintenance) in the maintenance
/// contract.
///
/// ```
/// use std::time::Duration;
/// use redis_layers::maint::{Notification, StaleGuard};
/// use tokio::time::Instant;
///
/// let mut guard = StaleGuard::new(Duration::from_secs(600));
/// let now = Instant::now();
/// let started = Notification::Migrating { seq: 7, time: Duration::from_secs(5), shard_ids: vec![] };
/// let late_end = Notification::Migrated { seq: 5, shard_ids: vec![] };
/// assert!(guard.admit(&started, false, now));
/// assert!(!guard.admit(&late_end, false, now)); // overtaken by seq 7
/// ```
#[derive(Debug, Clone)]
pub struct StaleGuard {
    ttl: Duration,
    /// Highest sequence number seen, and when, per pair (`Pair as usize`).
    marks: [Option<(i64, Instant)>; 4],
}

#[derive(Clone, Copy)]
enum Pair {
    Moving = 0,
    Migration = 1,
    Failover = 2,
    Slots = 3,
}

fn pair(kind: Kind) -> Pair {
    match kind {
        Kind::Moving => Pair::Moving,
        Kind::Migrating | Kind::Migrated => Pair::Migration,
        Kind::FailingOver | Kind::FailedOver => Pair::Failover,
        Kind::SMigrating | Kind::SMigrated => Pair::Slots,
    }
}

impl StaleGuard {
    /// A guard whose watermarks are forgotten after `ttl` without a newer
    /// notification of their pair.
    ///
    /// ```
    /// use std::time::Duration;
    /// let guard = redis_layers::maint::StaleGuard::new(Duration::from_secs(600));
    /// # let _ = guard;
    /// ```
    pub fn new(ttl: Duration) -> Self {
        StaleGuard {
            ttl,
            marks: [None; 4],
        }
    }

    /// True when `n`, read at `now` on a connection that is `retired` (a
    /// handoff moved away from it) or not, is current; false when it is
    /// stale and must be dropped. A current notification raises the
    /// watermark of its pair.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redis_layers::maint::{Notification, StaleGuard};
    /// use tokio::time::Instant;
    ///
    /// let mut guard = StaleGuard::new(Duration::from_secs(600));
    /// let moving = Notification::Moving { seq: 3, time: Duration::from_secs(15), endpoint: None };
    /// assert!(!guard.admit(&moving, true, Instant::now())); // retired connection
    /// assert!(guard.admit(&moving, false, Instant::now()));
    /// ```
    pub fn admit(&mut self, n: &Notification, retired: bool, now: Instant) -> bool {
        if retired && n.kind() == Kind::Moving {
            return false;
        }
        let seq = n.seq();
        let mark = &mut self.marks[pair(n.kind()) as usize];
        match *mark {
            Some((high, at)) if seq < high && now.saturating_duration_since(at) < self.ttl => false,
            Some((high, _)) if seq == high => true,
            _ => {
                *mark = Some((seq, now));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrating(seq: i64) -> Notification {
        Notification::Migrating {
            seq,
            time: Duration::from_secs(1),
            shard_ids: vec![],
        }
    }

    #[test]
    fn pairs_keep_their_own_numbers() {
        let mut g = StaleGuard::new(Duration::from_secs(600));
        let now = Instant::now();
        assert!(g.admit(&migrating(100), false, now));
        // MOVING is numbered per connection: a low number is no older.
        let moving = Notification::Moving {
            seq: 1,
            time: Duration::from_secs(1),
            endpoint: None,
        };
        assert!(g.admit(&moving, false, now));
        assert!(!g.admit(&migrating(99), false, now));
        assert!(
            g.admit(&migrating(100), false, now),
            "the same number again"
        );
        assert!(g.admit(&migrating(101), false, now));
    }

    #[test]
    fn an_old_watermark_is_forgotten() {
        let mut g = StaleGuard::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(g.admit(&migrating(50), false, t0));
        assert!(!g.admit(&migrating(1), false, t0 + Duration::from_secs(9)));
        assert!(g.admit(&migrating(1), false, t0 + Duration::from_secs(11)));
        // The restarted numbering is the watermark now.
        assert!(g.admit(&migrating(2), false, t0 + Duration::from_secs(11)));
    }
}

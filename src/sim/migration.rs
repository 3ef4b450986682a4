//! Slot migrations in front of a Redis Cluster, ordered by construction.
//!
//! The order clients rely on: `SMIGRATING`, the keys move, `SMIGRATED`, and
//! only [`SMIGRATED_LEAD`] later may the source answer `MOVED` for the
//! slots. Redis does not keep that order by itself: `SETSLOT NODE` on the
//! destination bumps its epoch and the bus tells the source, which may then
//! answer `MOVED` before the simulator has sent `SMIGRATED`. So from
//! `SMIGRATING` until the lead has passed, the source's endpoint turns every
//! `MOVED` for the slots into `ASK` to the destination (an [`AskGuard`]).
//!
//! Nothing is announced before the source is checked to own every slot
//! (and the destination to be a primary that is not importing them), and
//! a failure after `SMIGRATING` is rolled back (keys moved back, both
//! nodes `SETSLOT ... STABLE`) and still ended with a `SMIGRATED`, naming
//! the source as the slots' owner, so no client stays relaxed.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::{admin_conn, join, slot_ranges, Push, Simulator, SlotMove, Target};
use crate::{cmd, Connection, Value};

/// How long after `SMIGRATED` the source node gives the slots up (until
/// then it answers `ASK` for them): the time clients have to act on the
/// notification before they would see `MOVED`. (50 ms was too short on a
/// loaded 2-core machine: a client's task may not run for that long, and
/// then every slot is learnt from a `MOVED` after all.)
pub(super) const SMIGRATED_LEAD: Duration = Duration::from_millis(200);

/// Keys moved per `MIGRATE`.
const BATCH: usize = 100;

/// Slots whose `MOVED` replies an endpoint turns into `ASK` to `dst` while
/// a migration away from it is under way.
#[derive(Debug, Clone)]
pub(super) struct AskGuard {
    /// The `SMIGRATING` sequence number: which migration set it.
    pub(super) id: i64,
    /// Sorted.
    pub(super) slots: Vec<u16>,
    /// The destination's endpoint.
    pub(super) dst: SocketAddr,
}

/// A slot migration to play; see [`Simulator::start_slot_migration`].
///
/// ```no_run
/// use redis_layers::sim::{SlotMigrate, Simulator};
///
/// # async fn run(sim: Simulator, a: std::net::SocketAddr, b: std::net::SocketAddr) -> std::io::Result<()> {
/// // Announced, then the keys start moving a second later.
/// let mut m = SlotMigrate::new(&[100, 101], a, b);
/// m.after = std::time::Duration::from_secs(1);
/// let done = sim.start_slot_migration(m).await?.finished().await?;
/// println!("{} keys moved", done.keys);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMigrate {
    /// The slots to move, each 0 to 16383.
    pub slots: Vec<u16>,
    /// The endpoint of the node that owns them.
    pub src: SocketAddr,
    /// The endpoint of the node that takes them.
    pub dst: SocketAddr,
    /// Time between `SMIGRATING` and the first key moving (as a server
    /// announces a migration before it begins). Default zero.
    pub after: Duration,
    /// Makes the migration fail once this many keys have moved (a fault
    /// for tests: what clients see when a migration is aborted and rolled
    /// back). Default `None`.
    pub fail_after_keys: Option<usize>,
}

impl SlotMigrate {
    /// A migration of `slots` from `src` to `dst`, starting at once.
    pub fn new(slots: &[u16], src: SocketAddr, dst: SocketAddr) -> Self {
        SlotMigrate {
            slots: slots.to_vec(),
            src,
            dst,
            after: Duration::ZERO,
            fail_after_keys: None,
        }
    }
}

/// What a [`Simulator::slot_migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotMigration {
    /// Sequence number of the `SMIGRATING`.
    pub smigrating: i64,
    /// Sequence number of the `SMIGRATED`.
    pub smigrated: i64,
    /// Keys moved.
    pub keys: usize,
    /// Connections that got the `SMIGRATING` when it started.
    pub notified: usize,
}

/// A slot migration under way; see [`Simulator::start_slot_migration`].
/// Dropping it does not stop the migration.
#[derive(Debug)]
pub struct SlotMigrationHandle {
    /// Sequence number of the `SMIGRATING`, sent already.
    pub smigrating: i64,
    /// Connections that got the `SMIGRATING`.
    pub notified: usize,
    task: JoinHandle<io::Result<SlotMigration>>,
}

impl SlotMigrationHandle {
    /// Waits for the migration to end: `SMIGRATED` sent and the source
    /// gave the slots up; or an error, after the migration was rolled back
    /// and a `SMIGRATED` naming the source as the owner was sent.
    pub async fn finished(self) -> io::Result<SlotMigration> {
        join(self.task).await?
    }
}

impl Simulator {
    /// Moves `slots` from the node behind endpoint `src` to the node behind
    /// endpoint `dst`, for real: `CLUSTER SETSLOT IMPORTING` on the target,
    /// `MIGRATING` on the source, `MIGRATE` of every key, then `SETSLOT
    /// NODE` on the target, the source and every other node, then the
    /// `SMIGRATED`. Bracketed by `SMIGRATING seq
    /// slots` to the source's opted-in connections (also to those that opt
    /// in during the migration) and `SMIGRATED seq [[src dst slots]]`
    /// (endpoint addresses).
    ///
    /// Ordered by construction: from `SMIGRATING` until 200 ms after
    /// `SMIGRATED` the source's endpoint turns `MOVED` for the slots into
    /// `ASK` to `dst`, so a client that acts on `SMIGRATED` at once never
    /// sees `MOVED` for them. Fails before announcing anything when the
    /// source does not own every slot, or a slot is migrating already. A
    /// failure midway is rolled back (keys moved back, the slots `STABLE`
    /// on both nodes) and ended by `SMIGRATED seq [[src src slots]]`; the
    /// error comes back then. Returns once the source gave the slots up.
    pub async fn slot_migrate(
        &self,
        slots: &[u16],
        src: SocketAddr,
        dst: SocketAddr,
    ) -> io::Result<SlotMigration> {
        self.start_slot_migrate(slots, src, dst)
            .await?
            .finished()
            .await
    }

    /// Starts a [`Simulator::slot_migrate`]: returns once `SMIGRATING` is
    /// sent; the migration goes on in a task. Fails at once, announcing
    /// nothing, when `src` or `dst` is not an endpoint, they are the same
    /// node, `slots` is empty or out of range, or the source does not own
    /// them all.
    pub async fn start_slot_migrate(
        &self,
        slots: &[u16],
        src: SocketAddr,
        dst: SocketAddr,
    ) -> io::Result<SlotMigrationHandle> {
        self.start_slot_migration(SlotMigrate::new(slots, src, dst))
            .await
    }

    /// [`Simulator::start_slot_migrate`], with the keys starting to move
    /// `after` the `SMIGRATING` (as a server announces a migration before
    /// it begins): a window in which clients that connect are told too.
    pub async fn start_slot_migrate_after(
        &self,
        slots: &[u16],
        src: SocketAddr,
        dst: SocketAddr,
        after: Duration,
    ) -> io::Result<SlotMigrationHandle> {
        let mut m = SlotMigrate::new(slots, src, dst);
        m.after = after;
        self.start_slot_migration(m).await
    }

    /// Starts the migration `m` describes; see [`Simulator::slot_migrate`].
    pub async fn start_slot_migration(&self, m: SlotMigrate) -> io::Result<SlotMigrationHandle> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let (src_node, dst_node) = match (self.backend_of(m.src), self.backend_of(m.dst)) {
            (Some(s), Some(d)) => (s, d),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no endpoint {} or {}", m.src, m.dst),
                ))
            }
        };
        if src_node == dst_node {
            return Err(invalid(format!(
                "{} and {} are the same node",
                m.src, m.dst
            )));
        }
        if m.slots.is_empty() || m.slots.iter().any(|&s| s >= 16384) {
            return Err(invalid("slots must be 0 to 16383, at least one".into()));
        }
        let mut slots = m.slots.clone();
        slots.sort_unstable();
        slots.dedup();
        let plan = Plan::prepare(self, &slots, src_node, dst_node)
            .await
            .map_err(|e| match e {
                PrepareError::Io(e) => e,
                PrepareError::Refused(msg) => invalid(format!("{}: {msg}", m.src)),
            })?;

        let ranges = slot_ranges(&slots);
        let start = Push::SMigrating {
            seq: self.next_seq(),
            slots: vec![ranges.clone()],
        };
        let smigrating = start.seq();
        let (src, dst) = (m.src, m.dst);
        self.with_endpoint(src, |e| {
            e.active.push(start.clone());
            e.ask.push(AskGuard {
                id: smigrating,
                slots: slots.clone(),
                dst,
            });
        });
        let notified = self.notify(Target::Endpoint(src), &start);
        let count = |c: fn(&super::Counters) -> &std::sync::atomic::AtomicU64, sim: &Simulator| {
            c(&sim.inner.counters).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        count(|c| &c.migrations_started, self);
        let sim = self.detached();
        let (after, fail_after) = (m.after, m.fail_after_keys);
        let task = tokio::spawn(async move {
            if !after.is_zero() {
                tokio::time::sleep(after).await;
            }
            let mut touched = Vec::new();
            let moved = plan.move_keys(&slots, fail_after, &mut touched).await;
            sim.end_announcement(src, &start);
            let smigrated = |owner: SocketAddr| Push::SMigrated {
                seq: sim.next_seq(),
                moves: vec![SlotMove {
                    src: src.to_string(),
                    dst: owner.to_string(),
                    slots: ranges.clone(),
                }],
            };
            let keys = match moved {
                Ok(keys) => keys,
                Err(e) => {
                    let undone = plan.roll_back(&touched).await;
                    // The source owns the slots again: say so, which ends
                    // every client's relaxation.
                    let end = smigrated(src);
                    sim.notify(Target::Endpoint(src), &end);
                    sim.drop_guard(src, smigrating);
                    let outcome = match undone {
                        Ok(back) => format!(
                            "rolled back ({back} keys moved back, slots stable on both nodes)"
                        ),
                        Err(r) => format!("rollback failed too: {r}"),
                    };
                    count(|c| &c.migrations_failed, &sim);
                    tracing::warn!(target: "redis_layers::sim", event = "sim.slot_migrate_failed", %src, %dst, error = %e, %outcome, smigrated = end.seq(), "slot migration failed");
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{e}; {outcome}; SMIGRATED {} sent", end.seq()),
                    ));
                }
            };
            // Every key is on the destination: from here the move is
            // completed rather than undone, whatever fails. Every node is
            // told before SMIGRATED, so a topology refresh a client makes
            // on SMIGRATED agrees with it whichever node it asks (told
            // after, a node still named the source for a moment and a
            // client reverted to it: MOVED after the lead).
            let took = plan.take_over(&slots).await;
            let finished = plan.finish(&slots).await;
            // The source answers ASK for the slots (the guard) until the
            // lead has passed: clients hear SMIGRATED here, and have the
            // lead to act on it before the source may answer MOVED.
            let end = smigrated(dst);
            sim.notify(Target::Endpoint(src), &end);
            tokio::time::sleep(SMIGRATED_LEAD).await;
            sim.drop_guard(src, smigrating);
            if let Err(e) = took.and(finished) {
                count(|c| &c.migrations_failed, &sim);
                return Err(e);
            }
            count(|c| &c.migrations_done, &sim);
            tracing::info!(target: "redis_layers::sim", event = "sim.slot_migrate", %src, %dst, slots = slots.len(), keys, "slots migrated");
            Ok(SlotMigration {
                smigrating,
                smigrated: end.seq(),
                keys,
                notified,
            })
        });
        Ok(SlotMigrationHandle {
            smigrating,
            notified,
            task,
        })
    }

    /// The slots the node behind `endpoint` owns, as it says itself
    /// (`CLUSTER NODES`), in order.
    pub async fn owned_slots(&self, endpoint: SocketAddr) -> io::Result<Vec<u16>> {
        let node = self.backend_of(endpoint).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no endpoint {endpoint}"))
        })?;
        let c = admin_conn(node).await?;
        let v = c
            .send_cmd(cmd("CLUSTER").arg("NODES"))
            .await
            .map_err(|e| failed("CLUSTER NODES", e))?;
        let me = Myself::parse(&text(&v))
            .ok_or_else(|| io::Error::other("CLUSTER NODES has no myself line"))?;
        Ok(me.owned.iter().flat_map(|&(a, b)| a..=b).collect())
    }

    /// Late arrivals on `src` no longer get `start`.
    fn end_announcement(&self, src: SocketAddr, start: &Push) {
        self.with_endpoint(src, |e| e.active.retain(|n| n != start));
    }

    /// `src` answers `MOVED` again for the slots of migration `id`.
    fn drop_guard(&self, src: SocketAddr, id: i64) {
        self.with_endpoint(src, |e| e.ask.retain(|g| g.id != id));
    }

    fn with_endpoint(&self, addr: SocketAddr, f: impl FnOnce(&mut super::EndpointState)) {
        if let Some(e) = self
            .inner
            .lock()
            .endpoints
            .iter_mut()
            .find(|e| e.addr == addr)
        {
            f(e);
        }
    }
}

enum PrepareError {
    Io(io::Error),
    /// The cluster is not in a state to start this migration.
    Refused(String),
}

impl From<io::Error> for PrepareError {
    fn from(e: io::Error) -> Self {
        PrepareError::Io(e)
    }
}

fn failed(what: &str, e: crate::Error) -> io::Error {
    io::Error::other(format!("slot migration: {what}: {e}"))
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(v.as_bytes().unwrap_or_default()).into_owned()
}

/// The connections and node ids a migration works with.
struct Plan {
    s: Connection,
    d: Connection,
    others: Vec<Connection>,
    src: SocketAddr,
    dst: SocketAddr,
    src_id: String,
    dst_id: String,
}

/// A node's own line of `CLUSTER NODES`: its flags and slot fields.
struct Myself {
    id: String,
    primary: bool,
    /// Plain slot ranges it owns.
    owned: Vec<(u16, u16)>,
    /// Slots in a `[slot->-id]` or `[slot-<-id]` field.
    moving: Vec<u16>,
}

impl Myself {
    fn parse(nodes: &str) -> Option<Myself> {
        let line = nodes
            .lines()
            .find(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("myself")))?;
        let fields: Vec<&str> = line.split(' ').collect();
        let mut me = Myself {
            id: fields.first()?.to_string(),
            primary: fields.get(2)?.split(',').any(|f| f == "master"),
            owned: Vec::new(),
            moving: Vec::new(),
        };
        for f in fields.iter().skip(8) {
            if let Some(inner) = f.strip_prefix('[') {
                if let Some(n) = inner.split('-').next().and_then(|n| n.parse().ok()) {
                    me.moving.push(n);
                }
                continue;
            }
            let range = match f.split_once('-') {
                Some((a, b)) => a.parse().ok().zip(b.parse().ok()),
                None => f.parse().ok().map(|n| (n, n)),
            };
            me.owned.extend(range);
        }
        Some(me)
    }

    fn owns(&self, slot: u16) -> bool {
        self.owned.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

impl Plan {
    /// Connects to the nodes and checks the migration can start: the
    /// source a primary owning every slot, none of them migrating, the
    /// destination a primary not importing them.
    async fn prepare(
        sim: &Simulator,
        slots: &[u16],
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Result<Plan, PrepareError> {
        let s = admin_conn(src).await?;
        let d = admin_conn(dst).await?;
        // Only this migration uses it, one command at a time: a rollback
        // may send `ASKING` before the command it applies to.
        d.dedicate();
        let nodes = |c: &Connection| {
            let c = c.clone();
            async move {
                let v = c
                    .send_cmd(cmd("CLUSTER").arg("NODES"))
                    .await
                    .map_err(|e| failed("CLUSTER NODES", e))?;
                Myself::parse(&text(&v)).ok_or_else(|| {
                    io::Error::other("slot migration: CLUSTER NODES has no myself line")
                })
            }
        };
        let (me, them) = (nodes(&s).await?, nodes(&d).await?);
        let refuse = |m: String| Err(PrepareError::Refused(m));
        if !me.primary {
            return refuse(format!("node {src} is not a primary"));
        }
        if !them.primary {
            return refuse(format!("destination node {dst} is not a primary"));
        }
        let foreign: Vec<u16> = slots.iter().copied().filter(|&s| !me.owns(s)).collect();
        if !foreign.is_empty() {
            return refuse(format!(
                "node {src} does not own slots {} (of {}); nothing announced",
                slot_ranges(&foreign),
                slot_ranges(slots)
            ));
        }
        let busy: Vec<u16> = slots
            .iter()
            .copied()
            .filter(|s| me.moving.contains(s) || them.moving.contains(s))
            .collect();
        if !busy.is_empty() {
            return refuse(format!(
                "slots {} are migrating already; nothing announced",
                slot_ranges(&busy)
            ));
        }
        let mut others = Vec::new();
        for node in sim.backends() {
            if node != src && node != dst {
                others.push(admin_conn(node).await?);
            }
        }
        Ok(Plan {
            s,
            d,
            others,
            src,
            dst,
            src_id: me.id,
            dst_id: them.id,
        })
    }

    async fn setslot(c: &Connection, slot: u16, state: &str, id: Option<&str>) -> io::Result<()> {
        let mut c_ = cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(state);
        if let Some(id) = id {
            c_ = c_.arg(id);
        }
        c.send_cmd(c_)
            .await
            .map(drop)
            .map_err(|e| failed(&format!("SETSLOT {slot} {state}"), e))
    }

    /// Up to `count` keys of `slot` on `c`.
    async fn keys(c: &Connection, slot: u16, count: usize) -> io::Result<Vec<Bytes>> {
        let batch = c
            .send_cmd(cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(count))
            .await
            .map_err(|e| failed("GETKEYSINSLOT", e))?;
        Ok(match batch {
            Value::Array(items) => items
                .iter()
                .filter_map(|k| k.as_bytes().map(Bytes::copy_from_slice))
                .collect(),
            _ => Vec::new(),
        })
    }

    fn migrate(to: SocketAddr, keys: &[Bytes]) -> crate::Cmd {
        cmd("MIGRATE")
            .arg(to.ip().to_string())
            .arg(to.port())
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .args(keys.iter().map(|k| &k[..]))
    }

    /// Importing and migrating states and every key moved; `touched` gets
    /// each slot whose state was changed (what a rollback undoes).
    async fn move_keys(
        &self,
        slots: &[u16],
        fail_after: Option<usize>,
        touched: &mut Vec<u16>,
    ) -> io::Result<usize> {
        let mut keys = 0;
        for &slot in slots {
            touched.push(slot);
            Self::setslot(&self.d, slot, "IMPORTING", Some(&self.src_id)).await?;
            Self::setslot(&self.s, slot, "MIGRATING", Some(&self.dst_id)).await?;
            loop {
                let room = fail_after.map_or(BATCH, |n| n.saturating_sub(keys).min(BATCH));
                if room == 0 {
                    return Err(io::Error::other(format!(
                        "slot migration: failure injected after {keys} keys"
                    )));
                }
                let names = Self::keys(&self.s, slot, room).await?;
                if names.is_empty() {
                    break;
                }
                keys += names.len();
                self.s
                    .send_cmd(Self::migrate(self.dst, &names))
                    .await
                    .map_err(|e| failed("MIGRATE", e))?;
            }
        }
        Ok(keys)
    }

    /// The new owner takes the slots (the old one and the rest learn it in
    /// [`Plan::finish`], as `redis-cli` orders it); a slot that fails is
    /// still tried by the others.
    async fn take_over(&self, slots: &[u16]) -> io::Result<()> {
        let mut first = Ok(());
        for &slot in slots {
            let r = Self::setslot(&self.d, slot, "NODE", Some(&self.dst_id)).await;
            first = first.and(r);
        }
        first
    }

    /// `SETSLOT NODE` on the old owner (required) and every other node
    /// (best effort).
    async fn finish(&self, slots: &[u16]) -> io::Result<()> {
        for &slot in slots {
            Self::setslot(&self.s, slot, "NODE", Some(&self.dst_id)).await?;
            for o in &self.others {
                let _ = Self::setslot(o, slot, "NODE", Some(&self.dst_id)).await;
            }
        }
        Ok(())
    }

    /// Undoes a migration that failed before the new owner took any slot:
    /// the keys already moved go back, and both nodes forget the
    /// importing/migrating states. Returns how many keys moved back.
    async fn roll_back(&self, touched: &[u16]) -> io::Result<usize> {
        let mut back = 0;
        for &slot in touched {
            // A migrating source redirects writes of keys it lacks, the
            // restores included; stable, it takes them (reads of a key on
            // its way back find nothing for that moment).
            Self::setslot(&self.s, slot, "STABLE", None).await?;
            loop {
                let names = Self::keys(&self.d, slot, BATCH).await?;
                if names.is_empty() {
                    break;
                }
                back += names.len();
                // The destination only imports the slot: without ASKING
                // it would redirect its own keys to the source.
                self.d
                    .send_cmd(cmd("ASKING"))
                    .await
                    .map_err(|e| failed("ASKING", e))?;
                self.d
                    .send_cmd(Self::migrate(self.src, &names))
                    .await
                    .map_err(|e| failed("MIGRATE back", e))?;
            }
            Self::setslot(&self.d, slot, "STABLE", None).await?;
        }
        Ok(back)
    }
}

#[cfg(test)]
mod tests {
    use super::Myself;

    #[test]
    fn myself_line() {
        let nodes = "b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922\n\
                     a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-100 200 [300->-b] [400-<-b]\n";
        let me = Myself::parse(nodes).unwrap();
        assert_eq!(me.id, "a");
        assert!(me.primary);
        assert!(me.owns(0) && me.owns(100) && me.owns(200));
        assert!(!me.owns(101) && !me.owns(300) && !me.owns(5461));
        assert_eq!(me.moving, vec![300, 400]);
        let replica = "c 127.0.0.1:7003@17003 myself,slave a 0 0 1 connected\n";
        assert!(!Myself::parse(replica).unwrap().primary);
    }
}

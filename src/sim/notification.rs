//! The maintenance notifications a managed Redis sends, as wire frames.

use bytes::Bytes;

use crate::resp::Value;

/// The address form a client asked for with `CLIENT MAINT_NOTIFICATIONS ON
/// moving-endpoint-type <type>`: it decides how `MOVING` names the new
/// endpoint. The same type the client side resolves to.
///
/// ```
/// use redis_layers::sim::EndpointType;
/// assert_eq!("external-fqdn".parse::<EndpointType>().unwrap(), EndpointType::ExternalFqdn);
/// assert_eq!(EndpointType::None.as_str(), "none");
/// ```
pub use crate::maint::ResolvedEndpointType as EndpointType;

/// One slot move inside `SMIGRATED`: slots `slots` went from `src` to `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMove {
    /// The node that gave the slots up, `host:port`.
    pub src: String,
    /// The node that serves them now, `host:port`.
    pub dst: String,
    /// The slots, as `"0-100,200"`.
    pub slots: String,
}

/// A maintenance notification, as Redis Enterprise / Redis Cloud send them
/// (see the [maintenance contract](crate::docs::maintenance#2-wire-formats)), including the older
/// `SMIGRATED` forms that clients must still accept.
///
/// ```
/// use redis_layers::sim::Push;
/// let n = Push::Moving { seq: 15, time: 30, endpoint: Some("10.0.0.2:12000".into()) };
/// assert_eq!(&n.to_bytes()[..], &b">4\r\n$6\r\nMOVING\r\n:15\r\n:30\r\n$14\r\n10.0.0.2:12000\r\n"[..]);
/// let n = Push::Moving { seq: 16, time: 30, endpoint: None };
/// assert_eq!(&n.to_bytes()[..], &b">4\r\n$6\r\nMOVING\r\n:16\r\n:30\r\n_\r\n"[..]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// `MOVING seq time endpoint`: this endpoint goes away within `time`
    /// seconds; reconnect to `endpoint` (`None`: null, reconnect to the
    /// known address).
    Moving {
        /// Sequence number.
        seq: i64,
        /// Seconds until the old endpoint closes its connections.
        time: u64,
        /// `host:port`, or null.
        endpoint: Option<String>,
    },
    /// `MIGRATING seq time [shard ids]`: a migration starts within `time` s.
    Migrating {
        /// Sequence number.
        seq: i64,
        /// Seconds until it starts.
        time: u64,
        /// Comma-separated shard ids, if sent.
        shard_ids: Option<String>,
    },
    /// `MIGRATED seq [shard ids]`.
    Migrated {
        /// Sequence number.
        seq: i64,
        /// Comma-separated shard ids, if sent.
        shard_ids: Option<String>,
    },
    /// `FAILING_OVER seq time [shard ids]`.
    FailingOver {
        /// Sequence number.
        seq: i64,
        /// Seconds until it starts.
        time: u64,
        /// Comma-separated shard ids, if sent.
        shard_ids: Option<String>,
    },
    /// `FAILED_OVER seq [shard ids]`.
    FailedOver {
        /// Sequence number.
        seq: i64,
        /// Comma-separated shard ids, if sent.
        shard_ids: Option<String>,
    },
    /// `SMIGRATING seq slots...`: each element `"123"`, `"100-200"` or a
    /// comma-separated list of those.
    SMigrating {
        /// Sequence number.
        seq: i64,
        /// Slot elements.
        slots: Vec<String>,
    },
    /// `SMIGRATED seq [[src dst slots] ...]`: the current form.
    SMigrated {
        /// Sequence number.
        seq: i64,
        /// The moves.
        moves: Vec<SlotMove>,
    },
    /// `SMIGRATED seq src dst slots...`: an older flat form.
    SMigratedFlat {
        /// Sequence number.
        seq: i64,
        /// Source node.
        src: String,
        /// Destination node.
        dst: String,
        /// Slot elements.
        slots: Vec<String>,
    },
    /// `SMIGRATED seq host:port slots...`: the oldest form (destination only).
    SMigratedLegacy {
        /// Sequence number.
        seq: i64,
        /// Destination node.
        dst: String,
        /// Slot elements.
        slots: Vec<String>,
    },
}

impl Push {
    /// The notification's name as on the wire (`MOVING`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Push::Moving { .. } => "MOVING",
            Push::Migrating { .. } => "MIGRATING",
            Push::Migrated { .. } => "MIGRATED",
            Push::FailingOver { .. } => "FAILING_OVER",
            Push::FailedOver { .. } => "FAILED_OVER",
            Push::SMigrating { .. } => "SMIGRATING",
            Push::SMigrated { .. } | Push::SMigratedFlat { .. } | Push::SMigratedLegacy { .. } => {
                "SMIGRATED"
            }
        }
    }

    /// Its sequence number.
    pub fn seq(&self) -> i64 {
        match self {
            Push::Moving { seq, .. }
            | Push::Migrating { seq, .. }
            | Push::Migrated { seq, .. }
            | Push::FailingOver { seq, .. }
            | Push::FailedOver { seq, .. }
            | Push::SMigrating { seq, .. }
            | Push::SMigrated { seq, .. }
            | Push::SMigratedFlat { seq, .. }
            | Push::SMigratedLegacy { seq, .. } => *seq,
        }
    }

    /// The push frame as a [`Value`].
    pub fn to_value(&self) -> Value {
        let bulk = |s: &str| Value::BulkString(Bytes::copy_from_slice(s.as_bytes()));
        let simple = |s: &str| Value::SimpleString(Bytes::copy_from_slice(s.as_bytes()));
        let int = |i: i64| Value::Integer(i);
        let secs = |t: u64| Value::Integer(i64::try_from(t).unwrap_or(i64::MAX));
        let mut items = Vec::with_capacity(4);
        match self {
            Push::Moving {
                seq,
                time,
                endpoint,
            } => {
                items.extend([bulk("MOVING"), int(*seq), secs(*time)]);
                items.push(endpoint.as_deref().map_or(Value::Null, bulk));
            }
            Push::Migrating {
                seq,
                time,
                shard_ids,
            }
            | Push::FailingOver {
                seq,
                time,
                shard_ids,
            } => {
                items.extend([bulk(self.name()), int(*seq), secs(*time)]);
                items.extend(shard_ids.as_deref().map(bulk));
            }
            Push::Migrated { seq, shard_ids } | Push::FailedOver { seq, shard_ids } => {
                items.extend([bulk(self.name()), int(*seq)]);
                items.extend(shard_ids.as_deref().map(bulk));
            }
            Push::SMigrating { seq, slots } => {
                items.extend([bulk("SMIGRATING"), int(*seq)]);
                items.extend(slots.iter().map(|s| bulk(s)));
            }
            Push::SMigrated { seq, moves } => {
                items.extend([simple("SMIGRATED"), int(*seq)]);
                items.push(Value::Array(
                    moves
                        .iter()
                        .map(|m| {
                            Value::Array(vec![simple(&m.src), simple(&m.dst), simple(&m.slots)])
                        })
                        .collect(),
                ));
            }
            Push::SMigratedFlat {
                seq,
                src,
                dst,
                slots,
            } => {
                items.extend([bulk("SMIGRATED"), int(*seq), bulk(src), bulk(dst)]);
                items.extend(slots.iter().map(|s| bulk(s)));
            }
            Push::SMigratedLegacy { seq, dst, slots } => {
                items.extend([bulk("SMIGRATED"), int(*seq), bulk(dst)]);
                items.extend(slots.iter().map(|s| bulk(s)));
            }
        }
        Value::Push(items)
    }

    /// The exact bytes sent on the wire.
    pub fn to_bytes(&self) -> Bytes {
        self.to_value().to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example bytes of the [maintenance contract](crate::docs::maintenance), section 2, byte for byte.
    #[test]
    fn spec_examples() {
        let cases: [(Push, &[u8]); 6] = [
            (
                Push::Moving {
                    seq: 15,
                    time: 30,
                    endpoint: Some("10.0.0.2:12000".into()),
                },
                b">4\r\n$6\r\nMOVING\r\n:15\r\n:30\r\n$14\r\n10.0.0.2:12000\r\n",
            ),
            (
                Push::Moving {
                    seq: 16,
                    time: 30,
                    endpoint: None,
                },
                b">4\r\n$6\r\nMOVING\r\n:16\r\n:30\r\n_\r\n",
            ),
            (
                Push::Migrating {
                    seq: 17,
                    time: 5,
                    shard_ids: Some("1,2".into()),
                },
                b">4\r\n$9\r\nMIGRATING\r\n:17\r\n:5\r\n$3\r\n1,2\r\n",
            ),
            (
                Push::Migrated {
                    seq: 18,
                    shard_ids: Some("1,2".into()),
                },
                b">3\r\n$8\r\nMIGRATED\r\n:18\r\n$3\r\n1,2\r\n",
            ),
            (
                Push::SMigrating {
                    seq: 19,
                    slots: vec!["0-100,200".into()],
                },
                b">3\r\n$10\r\nSMIGRATING\r\n:19\r\n$9\r\n0-100,200\r\n",
            ),
            (
                Push::SMigrated {
                    seq: 20,
                    moves: vec![SlotMove {
                        src: "127.0.0.1:7001".into(),
                        dst: "127.0.0.1:7002".into(),
                        slots: "0-100,200".into(),
                    }],
                },
                b">3\r\n+SMIGRATED\r\n:20\r\n*1\r\n*3\r\n+127.0.0.1:7001\r\n+127.0.0.1:7002\r\n+0-100,200\r\n",
            ),
        ];
        for (n, wire) in cases {
            assert_eq!(&n.to_bytes()[..], wire, "{n:?}");
        }
        let n = Push::FailedOver {
            seq: 3,
            shard_ids: None,
        };
        assert_eq!(&n.to_bytes()[..], b">2\r\n$11\r\nFAILED_OVER\r\n:3\r\n");
    }
}

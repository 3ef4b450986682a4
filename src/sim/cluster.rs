//! Cluster support: server addresses in replies become proxy addresses.
//!
//! In front of a Redis Cluster each node gets its own endpoint. Clients must
//! only ever see endpoint addresses, so the proxy rewrites every place a
//! node address appears: `MOVED`/`ASK` errors, and the replies of
//! `CLUSTER SLOTS`, `CLUSTER SHARDS` and `CLUSTER NODES` (RESP2 and RESP3
//! shapes). Addresses it does not know are left alone.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::resp::Value;

/// Which topology reply is being rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Topology {
    Slots,
    Shards,
    Nodes,
}

impl Topology {
    /// The topology command in a client's argv, if it is one.
    pub(super) fn of(name: &str, sub: &str) -> Option<Topology> {
        if !name.eq_ignore_ascii_case("CLUSTER") {
            return None;
        }
        match sub.to_ascii_uppercase().as_str() {
            "SLOTS" => Some(Topology::Slots),
            "SHARDS" => Some(Topology::Shards),
            "NODES" => Some(Topology::Nodes),
            _ => None,
        }
    }
}

/// Maps a server address to the endpoint that stands for it.
pub(super) trait AddrMap {
    fn proxy_for(&self, server: SocketAddr) -> Option<SocketAddr>;

    fn map_host_port(&self, host: &str, port: i64) -> Option<SocketAddr> {
        let ip: IpAddr = host.parse().ok()?;
        let port = u16::try_from(port).ok()?;
        self.proxy_for(SocketAddr::new(ip, port))
    }

    /// `host:port` (IPv6 unbracketed as Redis writes it) -> endpoint.
    fn map_addr_str(&self, addr: &str) -> Option<SocketAddr> {
        let (host, port) = addr.rsplit_once(':')?;
        self.map_host_port(
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse().ok()?,
        )
    }
}

/// A `-MOVED slot host:port` / `-ASK slot host:port` frame with the address
/// rewritten; `None` when the frame is not one or the address is unknown.
/// A `MOVED` for a slot that `ask` maps to an endpoint becomes an `ASK` to
/// that endpoint (a migration away from this node is under way).
pub(super) fn rewrite_redirect(
    frame: &[u8],
    map: &dyn AddrMap,
    ask: &dyn Fn(u16) -> Option<SocketAddr>,
) -> Option<Bytes> {
    let line = frame.strip_prefix(b"-")?.strip_suffix(b"\r\n")?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let kind = parts.next()?;
    if kind != "MOVED" && kind != "ASK" {
        return None;
    }
    let slot = parts.next()?;
    let addr = parts.next()?;
    let held = (kind == "MOVED")
        .then(|| slot.parse().ok().and_then(ask))
        .flatten();
    let (kind, to) = match held {
        Some(dst) => ("ASK", dst),
        None => (kind, map.map_addr_str(addr)?),
    };
    Some(Bytes::from(format!(
        "-{kind} {slot} {}:{}\r\n",
        to.ip(),
        to.port()
    )))
}

/// A topology reply with every known node address rewritten.
pub(super) fn rewrite_topology(kind: Topology, v: Value, map: &dyn AddrMap) -> Value {
    match kind {
        Topology::Slots => map_items(v, &|entry| map_items(entry, &|node| slots_node(node, map))),
        Topology::Shards => map_items(v, &|shard| shard_entry(shard, map)),
        Topology::Nodes => match v {
            Value::BulkString(b) => Value::BulkString(nodes_text(&b, map)),
            Value::VerbatimString { format, text } => Value::VerbatimString {
                format,
                text: nodes_text(&text, map),
            },
            other => other,
        },
    }
}

fn map_items(v: Value, f: &dyn Fn(Value) -> Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(f).collect()),
        other => other,
    }
}

/// `CLUSTER SLOTS` node: `[ip, port, id, ...]`. The slot range numbers of
/// the entry are integers too, but never arrays: only arrays are nodes.
fn slots_node(node: Value, map: &dyn AddrMap) -> Value {
    let Value::Array(mut items) = node else {
        return node;
    };
    let to = match (
        items.first().and_then(Value::as_bytes),
        items.get(1).and_then(Value::as_int),
    ) {
        (Some(ip), Some(port)) => std::str::from_utf8(ip)
            .ok()
            .and_then(|ip| map.map_host_port(ip, port)),
        _ => None,
    };
    if let Some(to) = to {
        items[0] = Value::BulkString(Bytes::from(to.ip().to_string()));
        items[1] = Value::Integer(to.port().into());
    }
    Value::Array(items)
}

/// `CLUSTER SHARDS` entry: `{slots: [...], nodes: [{id, port, ip, endpoint, ...}]}`
/// as a RESP3 map or a RESP2 flat array.
fn shard_entry(shard: Value, map: &dyn AddrMap) -> Value {
    let rewrite_nodes = |v: Value| map_items(v, &|node| shard_node(node, map));
    match shard {
        Value::Map(pairs) => Value::Map(
            pairs
                .into_iter()
                .map(|(k, v)| {
                    let v = if k.as_bytes() == Some(b"nodes") {
                        rewrite_nodes(v)
                    } else {
                        v
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut nodes_next = false;
            for v in items {
                let is_key = v.as_bytes() == Some(b"nodes");
                out.push(if nodes_next { rewrite_nodes(v) } else { v });
                nodes_next = is_key;
            }
            Value::Array(out)
        }
        other => other,
    }
}

fn shard_node(node: Value, map: &dyn AddrMap) -> Value {
    // Works on (key, value) pairs whatever the shape.
    let (mut pairs, was_map) = match node {
        Value::Map(p) => (p, true),
        Value::Array(items) => {
            let mut it = items.into_iter();
            let mut p = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                p.push((k, v));
            }
            (p, false)
        }
        other => return other,
    };
    let get = |pairs: &[(Value, Value)], key: &[u8]| {
        pairs.iter().position(|(k, _)| k.as_bytes() == Some(key))
    };
    let ip = get(&pairs, b"ip").and_then(|i| {
        pairs[i]
            .1
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    });
    let port = get(&pairs, b"port").and_then(|i| pairs[i].1.as_int());
    if let Some(to) = ip
        .zip(port)
        .and_then(|(ip, port)| map.map_host_port(&ip, port))
    {
        let ip = Value::BulkString(Bytes::from(to.ip().to_string()));
        for key in [&b"ip"[..], b"endpoint"] {
            if let Some(i) = get(&pairs, key) {
                pairs[i].1 = ip.clone();
            }
        }
        if let Some(i) = get(&pairs, b"port") {
            pairs[i].1 = Value::Integer(to.port().into());
        }
    }
    if was_map {
        Value::Map(pairs)
    } else {
        Value::Array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect())
    }
}

/// `CLUSTER NODES` text: the second field of each line is
/// `ip:port@cport[,hostname]`.
fn nodes_text(text: &[u8], map: &dyn AddrMap) -> Bytes {
    let text = String::from_utf8_lossy(text);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut fields = line.splitn(3, ' ');
        let (Some(id), Some(addr), rest) = (fields.next(), fields.next(), fields.next()) else {
            out.push_str(line);
            continue;
        };
        let (hostport, tail) = match addr.find('@') {
            Some(i) => addr.split_at(i),
            None => (addr, ""),
        };
        let hostport = match map.map_addr_str(hostport) {
            Some(to) => format!("{}:{}", to.ip(), to.port()),
            None => hostport.to_string(),
        };
        out.push_str(id);
        out.push(' ');
        out.push_str(&hostport);
        out.push_str(tail);
        if let Some(rest) = rest {
            out.push(' ');
            out.push_str(rest);
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl AddrMap for Fixed {
        fn proxy_for(&self, server: SocketAddr) -> Option<SocketAddr> {
            (server.port() == 7001).then(|| "127.0.0.1:17001".parse().unwrap())
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn redirects() {
        let none = |_| None;
        assert_eq!(
            rewrite_redirect(b"-MOVED 3999 127.0.0.1:7001\r\n", &Fixed, &none).unwrap(),
            &b"-MOVED 3999 127.0.0.1:17001\r\n"[..]
        );
        assert_eq!(
            rewrite_redirect(b"-ASK 1 127.0.0.1:7001\r\n", &Fixed, &none).unwrap(),
            &b"-ASK 1 127.0.0.1:17001\r\n"[..]
        );
        assert!(rewrite_redirect(b"-MOVED 3999 127.0.0.1:7002\r\n", &Fixed, &none).is_none());
        assert!(rewrite_redirect(b"-ERR x\r\n", &Fixed, &none).is_none());
        // A slot migrating away: MOVED becomes ASK to the destination.
        let held = |s: u16| (s == 3999).then(|| "127.0.0.1:17002".parse().unwrap());
        assert_eq!(
            rewrite_redirect(b"-MOVED 3999 127.0.0.1:7001\r\n", &Fixed, &held).unwrap(),
            &b"-ASK 3999 127.0.0.1:17002\r\n"[..]
        );
        assert_eq!(
            rewrite_redirect(b"-MOVED 4000 127.0.0.1:7001\r\n", &Fixed, &held).unwrap(),
            &b"-MOVED 4000 127.0.0.1:17001\r\n"[..]
        );
    }

    #[test]
    fn topologies() {
        let slots = Value::Array(vec![Value::Array(vec![
            Value::Integer(0),
            Value::Integer(5460),
            Value::Array(vec![
                bulk("127.0.0.1"),
                Value::Integer(7001),
                bulk("id1"),
                Value::Array(vec![]),
            ]),
            Value::Array(vec![bulk("127.0.0.1"), Value::Integer(7002), bulk("id2")]),
        ])]);
        let Value::Array(e) = rewrite_topology(Topology::Slots, slots, &Fixed) else {
            panic!()
        };
        let Value::Array(e) = &e[0] else { panic!() };
        assert_eq!(e[0], Value::Integer(0));
        assert_eq!(
            e[2],
            Value::Array(vec![
                bulk("127.0.0.1"),
                Value::Integer(17001),
                bulk("id1"),
                Value::Array(vec![])
            ])
        );
        assert_eq!(
            e[3],
            Value::Array(vec![bulk("127.0.0.1"), Value::Integer(7002), bulk("id2")])
        );

        let node = Value::Map(vec![
            (bulk("id"), bulk("id1")),
            (bulk("port"), Value::Integer(7001)),
            (bulk("ip"), bulk("127.0.0.1")),
            (bulk("endpoint"), bulk("127.0.0.1")),
        ]);
        let shards = Value::Array(vec![Value::Map(vec![
            (
                bulk("slots"),
                Value::Array(vec![Value::Integer(0), Value::Integer(5460)]),
            ),
            (bulk("nodes"), Value::Array(vec![node])),
        ])]);
        let out = rewrite_topology(Topology::Shards, shards, &Fixed);
        let text = format!("{out:?}");
        assert!(
            text.contains("int(17001)") && !text.contains("int(7001)"),
            "{text}"
        );

        let nodes = bulk("id1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\nid2 127.0.0.1:7002@17002 master - 0 0 2 connected\n");
        let Value::BulkString(b) = rewrite_topology(Topology::Nodes, nodes, &Fixed) else {
            panic!()
        };
        assert_eq!(
            &b[..],
            b"id1 127.0.0.1:17001@17001 myself,master - 0 0 1 connected 0-5460\nid2 127.0.0.1:7002@17002 master - 0 0 2 connected\n"
        );
    }
}

//! Issue 14, "Trust boundary": no number a server or a caller controls may
//! panic, abort or make the client allocate without bound. Each test drives
//! the whole stack against the scripted hostile server
//! (`support::hostile`) or a real redis-server, and checks that a bad
//! number gives a typed error (or is clamped) while the process and, where
//! possible, the connection stay up.

mod support;

use redis_layers::client::{ClientBuilder, ServerMode};
use redis_layers::{cmd, Client, Error, ServerErrorKind, Value};
use support::bounded;
use support::hostile::{HostileServer, Received};

/// A `CLUSTER SLOTS` reply: the node at `port` serves every slot.
fn all_slots(port: u16) -> Vec<u8> {
    format!("*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:{port}\r\n").into_bytes()
}

/// A hostile "cluster" of one node that answers `GET` with `get_reply`.
fn hostile_cluster(
    get_reply: impl Fn(&Received) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> HostileServer {
    let port = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
    let p = port.clone();
    let server = HostileServer::scripted(move |r| match r.name().as_str() {
        // Redis before 7.0: the router falls back to CLUSTER SLOTS.
        "CLUSTER" if r.text().eq_ignore_ascii_case("CLUSTER SHARDS") => {
            Some(b"-ERR unknown subcommand 'SHARDS'\r\n".to_vec())
        }
        "CLUSTER" if r.text().eq_ignore_ascii_case("CLUSTER SLOTS") => {
            Some(all_slots(*p.get().expect("port set")))
        }
        "GET" => get_reply(r),
        _ => None,
    });
    port.set(server.port()).unwrap();
    server
}

async fn cluster_client(server: &HostileServer) -> Client {
    ClientBuilder::new(server.endpoint())
        .mode(ServerMode::Cluster)
        .build()
        .await
        .expect("cluster client")
}

/// `-MOVED 20000 host:port` (and `ASK`): slot 20000 does not exist. It
/// used to index the 16,384-entry slot table out of bounds in the caller's
/// task; now the reply is the caller's typed server error, never followed.
#[tokio::test]
async fn a_redirect_to_a_slot_out_of_range_is_a_typed_error() {
    bounded(20, async {
        for (kind, reply) in [
            (ServerErrorKind::Moved, "-MOVED 20000 127.0.0.1:1\r\n"),
            (ServerErrorKind::Ask, "-ASK 16384 127.0.0.1:1\r\n"),
            (ServerErrorKind::Moved, "-MOVED 65535 127.0.0.1:1\r\n"),
        ] {
            let server = hostile_cluster(move |_| Some(reply.as_bytes().to_vec()));
            let client = cluster_client(&server).await;
            // In a task of its own: a panic shows as a JoinError.
            let c = client.clone();
            let got = tokio::spawn(async move { c.cmd::<Value>(cmd("GET").arg("k")).await })
                .await
                .unwrap_or_else(|e| panic!("{reply:?} panicked the caller: {e}"));
            match got {
                Err(Error::Server(e)) => assert_eq!(e.kind(), &kind, "{reply:?}"),
                other => panic!("{reply:?}: expected a server error, got {other:?}"),
            }
            // Never routed: nothing went to port 1, and the client serves on.
            client
                .cmd::<()>(cmd("SET").arg("a").arg("1"))
                .await
                .expect("the client still serves");
        }
    })
    .await;
}

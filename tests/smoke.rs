mod support;

use redis_layers::{cmd, Connector, Value};
use support::RedisServer;

#[tokio::test]
async fn set_get() {
    let server = RedisServer::start();
    let conn = Connector::new().connect(server.endpoint()).await.unwrap();
    conn.send(cmd("SET").arg("k").arg("v")).await.unwrap();
    assert_eq!(
        conn.send_cmd(cmd("GET").arg("k")).await.unwrap(),
        Value::BulkString("v".into())
    );
    assert_eq!(conn.info().unwrap().protocol, redis_layers::Protocol::Resp3);
}

/// The support's own guard: a server that cannot bind its port must not be
/// taken for the server already there (CI once formed a cluster with another
/// test's node this way, the port taken between `free_port` and the bind).
#[test]
fn a_server_whose_port_is_taken_does_not_start() {
    let first = RedisServer::start();
    let second = std::panic::catch_unwind(|| RedisServer::builder().port(first.port()).start());
    let err = second.expect_err("a second server started on a port already taken");
    let text = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("Address already in use"), "{text}");
}

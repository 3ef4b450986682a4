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

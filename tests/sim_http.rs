//! Issue 19: the HTTP control API (`sim::http`), driven with plain HTTP/1.1
//! requests: every action type, its status, the slot-migrate effects on a
//! real cluster, raw sends, connections and stats, and the refusals.
#![cfg(feature = "sim")]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use redis_layers::sim::http::HttpControl;
use redis_layers::sim::{EndpointType, Push};
use redis_layers::{Connection, PushReceiver, Value};
use serde_json::{json, Value as Json};
use support::sim::{SimCluster, SimStandalone};
use support::{bounded, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);

/// One request, `Connection: close`; the status and the JSON body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Json) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    within(STEP, "HTTP reply", sock.read_to_end(&mut raw))
        .await
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    (status, serde_json::from_str(body).unwrap_or(Json::Null))
}

async fn post_action(addr: SocketAddr, body: &Json) -> String {
    let (status, v) = http(addr, "POST", "/action", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{body} -> {v}");
    v["action_id"].as_str().unwrap().to_string()
}

/// `POST /action` with `body` is refused with 422, an `error` naming
/// `what`, and the same text as `detail`.
async fn refused(addr: SocketAddr, body: &Json, what: &str) {
    let (status, v) = http(addr, "POST", "/action", body.to_string().as_bytes()).await;
    assert_eq!(status, 422, "{body} -> {v}");
    assert!(v["error"].as_str().unwrap().contains(what), "{body} -> {v}");
    assert_eq!(v["detail"], v["error"]);
}

/// Polls `GET /action/{id}` (the API's own contract) until it is no longer
/// running; returns the final status object.
async fn finished(addr: SocketAddr, id: &str) -> Json {
    within(Duration::from_secs(60), "action to finish", async {
        loop {
            let (status, v) = http(addr, "GET", &format!("/action/{id}"), b"").await;
            assert_eq!(status, 200, "{v}");
            if v["status"] != "running" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// A simulator in front of a fresh redis-server, and its HTTP API.
async fn standalone_api() -> (SimStandalone, HttpControl, SocketAddr) {
    let env = SimStandalone::start().await;
    let control = HttpControl::bind(env.sim.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let api = control.local_addr();
    (env, control, api)
}

async fn opted_in(addr: SocketAddr) -> (Connection, PushReceiver) {
    let conn = support::sim::raw_connector()
        .connect(support::sim::endpoint(addr))
        .await
        .unwrap();
    conn.dedicate();
    let pushes = conn.take_pushes().unwrap();
    conn.send_cmd(support::sim::opt_in(EndpointType::InternalIp))
        .await
        .unwrap();
    (conn, pushes)
}

async fn push_name(p: &mut PushReceiver) -> String {
    let v = within(STEP, "a push", p.recv()).await.expect("push");
    match v {
        Value::Push(items) => match &items[0] {
            Value::BulkString(b) | Value::SimpleString(b) => String::from_utf8_lossy(b).into(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

/// migrate, failover and bind (MOVING): each answered with an id, its
/// notifications sent, its status `success` with an output; raw sends,
/// connections, stats; bad requests refused with 4xx and an error.
#[tokio::test]
async fn actions_on_a_standalone_server() {
    bounded(60, async {
        let (env, _control, api) = standalone_api().await;
        let (_conn, mut pushes) = opted_in(env.sim.endpoint()).await;

        for (kind, open, close) in [
            ("migrate", "MIGRATING", "MIGRATED"),
            ("failover", "FAILING_OVER", "FAILED_OVER"),
        ] {
            let id = post_action(
                api,
                &json!({"type": kind, "parameters": {"duration_ms": 300, "delay_ms": 10}}),
            )
            .await;
            assert_eq!(push_name(&mut pushes).await, open);
            let done = finished(api, &id).await;
            assert_eq!(done["status"], "success", "{done}");
            assert_eq!(done["error"], Json::Null);
            assert!(
                done["output"].as_str().unwrap().contains("notified"),
                "{done}"
            );
            assert_eq!(push_name(&mut pushes).await, close);
        }

        let (status, conns) = http(api, "GET", "/connections", b"").await;
        assert_eq!(status, 200);
        assert_eq!(conns.as_array().unwrap().len(), 1, "{conns}");
        assert_eq!(conns[0]["maint"], "internal-ip");
        let frame = Push::Migrated {
            seq: 99,
            shard_ids: None,
        }
        .to_bytes();
        let (status, sent) = http(api, "POST", "/send-to-all-clients", &frame).await;
        assert_eq!((status, sent["sent"].as_u64()), (200, Some(1)));
        assert_eq!(push_name(&mut pushes).await, "MIGRATED");
        let id = conns[0]["id"].as_u64().unwrap();
        let (_, sent) = http(api, "POST", &format!("/send-to-client/{id}"), &frame).await;
        assert_eq!(sent["sent"], 1);
        assert_eq!(push_name(&mut pushes).await, "MIGRATED");

        let id = post_action(api, &json!({"type": "bind", "parameters": {"time_s": 1}})).await;
        assert_eq!(push_name(&mut pushes).await, "MOVING");
        let done = finished(api, &id).await;
        assert_eq!(done["status"], "success", "{done}");
        assert!(
            done["output"].as_str().unwrap().contains("1 closed"),
            "{done}"
        );

        let (status, stats) = http(api, "GET", "/stats", b"").await;
        assert_eq!(status, 200);
        assert_eq!(stats["migrations_started"], 0, "{stats}");

        for (body, what) in [
            (json!({"type": "reboot"}), "action type"),
            (json!({"parameters": {}}), "\"type\""),
            (
                json!({"type": "migrate", "parameters": {"duration_ms": "x"}}),
                "duration_ms",
            ),
            (
                json!({"type": "bind", "parameters": {"endpoint": "127.0.0.1:1"}}),
                "not an open endpoint",
            ),
        ] {
            refused(api, &body, what).await;
        }
        let (status, _) = http(api, "POST", "/action", b"{not json").await;
        assert_eq!(status, 400);
        let (status, _) = http(api, "GET", "/action/12345", b"").await;
        assert_eq!(status, 404);
        let (status, _) = http(api, "GET", "/nowhere", b"").await;
        assert_eq!(status, 404);
    })
    .await
}

/// Each slot-migrate effect, as `GET /slot-migrate?effect=` describes it,
/// moves real slots (the cluster agrees afterwards), with `SMIGRATING` /
/// `SMIGRATED` to the source's clients; an unknown effect is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migrate_effects_on_a_cluster() {
    bounded(120, async {
        let env = SimCluster::start().await;
        let control = HttpControl::bind(env.sim.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let api = control.local_addr();
        let (src, dst) = (env.endpoint(0), env.endpoint(1));
        let (_c0, mut p0) = opted_in(src).await;
        let owner = |slot: u16| {
            env.cluster.wait_consistent();
            env.cluster.node_for_slot(slot)
        };
        let (status, v) = http(api, "GET", "/slot-migrate?effect=teleport", b"").await;
        assert_eq!(status, 422, "{v}");

        for effect in ["remove-add", "add", "slot-shuffle", "remove"] {
            let (status, desc) =
                http(api, "GET", &format!("/slot-migrate?effect={effect}"), b"").await;
            assert_eq!(status, 200, "{desc}");
            assert_eq!(desc["triggers"][0]["name"], "migrate", "{desc}");
            assert!(desc["triggers"][0]["requirements"][0]["dbconfig"]["name"].is_string());
            let mut action = desc["action"].clone();
            action["parameters"]["src"] = json!(src.to_string());
            action["parameters"]["dst"] = json!(dst.to_string());
            let id = post_action(api, &action).await;
            let done = finished(api, &id).await;
            assert_eq!(done["status"], "success", "{effect}: {done}");
            println!("{effect}: {}", done["output"]);
            match effect {
                // Node 0's first 100 slots went to node 1.
                "remove-add" | "remove" => {
                    assert_eq!(push_name(&mut p0).await, "SMIGRATING");
                    assert_eq!(push_name(&mut p0).await, "SMIGRATED");
                }
                _ => {}
            }
        }
        // remove-add moved 0-99 to node 1, add brought node 1's first 100
        // (0-99) back, slot-shuffle sent 0-99 to node 1 and 100 of node
        // 1's back, remove sent node 0's first 100 on.
        assert_eq!(owner(0), 1);
        assert_eq!(env.sim.stats().migrations_done, 5);
        assert_eq!(env.sim.stats().moved, 0);
    })
    .await
}

/// The fault injector's other action types, on a standalone server:
/// `GET /action` lists them; `network_failure` cuts the connections and
/// closes new ones until its delay is over; `dmc_restart` closes them;
/// `execute_rladmin_command status` lists the endpoints; a
/// `sequence_of_actions` plays its steps in order and reports the step
/// that failed; `topology_change_standalone` effects send their
/// notifications; out-of-range, nested and Enterprise-only requests get
/// 422 and start nothing.
#[tokio::test]
async fn fault_injector_actions_on_a_standalone_server() {
    bounded(90, async {
        let (env, _control, api) = standalone_api().await;
        let ep = env.sim.endpoint();

        let (status, list) = http(api, "GET", "/action", b"").await;
        assert_eq!(status, 200);
        let types: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["type"].as_str().unwrap())
            .collect();
        for t in ["network_failure", "dmc_restart", "sequence_of_actions", "reshard"] {
            assert!(types.contains(&t), "{list}");
        }

        // network_failure: the connection is cut at once, a new one is
        // closed before it can answer, and after the delay one works.
        let (conn, _p) = opted_in(ep).await;
        let id = post_action(
            api,
            &json!({"type": "network_failure", "parameters": {"bdb_id": "1", "delay": 1, "cluster_index": 0}}),
        )
        .await;
        within(STEP, "the connection cut", conn.closed()).await;
        let during = support::sim::raw_connector()
            .connect(support::sim::endpoint(ep))
            .await;
        assert!(during.is_err(), "a connection during the failure was served");
        let done = finished(api, &id).await;
        assert_eq!(done["status"], "success", "{done}");
        assert!(done["output"].as_str().unwrap().contains("1 connections cut"), "{done}");
        let (conn, _p) = opted_in(ep).await;

        // dmc_restart: every connection closed; then served again.
        let id = post_action(api, &json!({"type": "dmc_restart", "parameters": {"down_ms": 50}})).await;
        within(STEP, "the restart", conn.closed()).await;
        assert_eq!(finished(api, &id).await["status"], "success");
        let (conn, mut pushes) = opted_in(ep).await;
        assert!(!conn.is_closed());

        // rladmin status: the endpoint listed, in the fault injector's
        // nested output.
        let id = post_action(
            api,
            &json!({"type": "execute_rladmin_command", "parameters": {"rladmin_command": "status", "bdb_id": 1}}),
        )
        .await;
        let done = finished(api, &id).await;
        assert!(
            done["output"]["output"].as_str().unwrap().contains(&ep.to_string()),
            "{done}"
        );

        // A sequence, in order; then one whose second step fails.
        let id = post_action(
            api,
            &json!({"type": "sequence_of_actions", "parameters": {"actions": [
                {"type": "migrate", "parameters": {"duration_ms": 100, "delay_ms": 0}},
                {"type": "failover", "parameters": {"duration_ms": 100, "delay_ms": 0}},
            ]}}),
        )
        .await;
        for name in ["MIGRATING", "MIGRATED", "FAILING_OVER", "FAILED_OVER"] {
            assert_eq!(push_name(&mut pushes).await, name);
        }
        let done = finished(api, &id).await;
        assert_eq!(done["status"], "success", "{done}");
        assert_eq!(done["output"].as_array().unwrap().len(), 2, "{done}");
        let id = post_action(
            api,
            &json!({"type": "sequence_of_actions", "parameters": {"actions": [
                {"type": "migrate", "parameters": {"duration_ms": 50, "delay_ms": 0}},
                {"type": "migrate", "parameters": {"endpoint": "127.0.0.1:1"}},
            ]}}),
        )
        .await;
        let done = finished(api, &id).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert!(done["error"].as_str().unwrap().starts_with("action 1:"), "{done}");
        assert_eq!(push_name(&mut pushes).await, "MIGRATING");
        assert_eq!(push_name(&mut pushes).await, "MIGRATED");

        // topology_change_standalone: as GET describes it.
        let (status, desc) = http(
            api,
            "GET",
            "/topology-change-standalone?effect=data_movement_conn_drop&cluster_index=0",
            b"",
        )
        .await;
        assert_eq!(status, 200, "{desc}");
        let mut action = desc["action"].clone();
        action["parameters"]["time_s"] = json!(1);
        let id = post_action(api, &action).await;
        for name in ["MIGRATING", "MIGRATED", "MOVING"] {
            assert_eq!(push_name(&mut pushes).await, name);
        }
        let done = finished(api, &id).await;
        assert_eq!(done["status"], "success", "{done}");
        within(STEP, "the old endpoint's connection closed", conn.closed()).await;
        assert!(!env.sim.is_open(ep));

        let nested = json!({"type": "sequence_of_actions", "parameters": {"actions": [
            {"type": "sequence_of_actions", "parameters": {"actions": []}}]}});
        let too_many = json!({"type": "sequence_of_actions", "parameters": {
            "actions": vec![json!({"type": "migrate"}); 17]}});
        for (body, what) in [
            (nested, "cannot contain"),
            (too_many, "1 to 16"),
            (
                json!({"type": "migrate", "parameters": {"duration_ms": u64::MAX}}),
                "more than",
            ),
            (
                json!({"type": "bind", "parameters": {"time_s": 86_401}}),
                "more than",
            ),
            (json!({"type": "execute_rlutil_command"}), "not simulated"),
            (
                json!({"type": "execute_rladmin_command", "parameters": {"rladmin_command": "tune db"}}),
                "not simulated",
            ),
            (
                json!({"type": "topology_change_standalone", "parameters": {"effect": "dns_resolution_change"}}),
                "DnsLag",
            ),
            (
                json!({"type": "slot_migrate", "parameters": {"effect": "add", "trigger": "reboot"}}),
                "trigger",
            ),
            (json!({"type": "migrate", "parameters": [1]}), "object"),
        ] {
            refused(api, &body, what).await;
        }
        assert_eq!(env.sim.stats().migrations_started, 0);
    })
    .await
}

/// A client posting in a loop does not grow the simulator without bound:
/// the last 1,000 finished actions are remembered, older ids answer 404.
#[tokio::test]
async fn finished_actions_are_forgotten_after_a_thousand() {
    bounded(60, async {
        let (_env, _control, api) = standalone_api().await;
        let status =
            json!({"type": "execute_rladmin_command", "parameters": {"rladmin_command": "status"}});
        let first = post_action(api, &status).await;
        assert_eq!(finished(api, &first).await["status"], "success");
        let mut last = first.clone();
        for _ in 0..1000 {
            last = post_action(api, &status).await;
        }
        let (code, _) = http(api, "GET", &format!("/action/{first}"), b"").await;
        assert_eq!(code, 404, "the oldest of 1,001 is forgotten");
        assert_eq!(finished(api, &last).await["status"], "success");
    })
    .await
}

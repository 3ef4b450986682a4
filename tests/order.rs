//! Per-clone order (issue 15): the requests one service clone issues reach
//! the server in call order, also across a handoff's switch to a new
//! connection and with a pool of several connections.
//!
//! One clone issues at least 10,000 `RPUSH list i` without awaiting them
//! (it keeps the reply futures and awaits them all at the end, so thousands
//! are in flight at any moment) while the simulator plays a `MOVING` that
//! starts after the first 1,000; it goes on until 2,000 more follow the
//! last connection's switch, so the switches fall mid-stream however long
//! the handoff takes. The list on the real server must then be exactly
//! `0..n`, and each reply the list's length after its own push.
#![cfg(feature = "sim")]

mod support;

use std::time::Duration;

use redis_layers::client::ClientBuilder;
use redis_layers::handoff::{Handoff, MakeConnection};
use redis_layers::maint::{MaintEvent, MaintenanceConfig, Mode};
use redis_layers::relax::{RelaxTimeout, RelaxTimeoutLayer};
use redis_layers::sim::MovingPlan;
use redis_layers::{cmd, Connector, Request, Value};
use support::sim::SimStandalone;
use support::{bounded, RedisServer};
use tokio::sync::broadcast::error::TryRecvError;
use tower::{Layer, Service, ServiceExt};

const N: usize = 10_000;
/// Requests issued before the `MOVING` starts.
const BEFORE: usize = 1_000;
/// Requests issued after the last switch, at least.
const AFTER: usize = 2_000;

fn stack(env: &SimStandalone, pool: usize) -> RelaxTimeout<Handoff<Connector>> {
    let config = MaintenanceConfig::default()
        .mode(Mode::Enabled)
        .relaxed_timeout(Duration::from_secs(5));
    let (handoff, connector) = env.handoff_parts(&config, pool);
    RelaxTimeoutLayer::new(Duration::from_secs(5)).layer(handoff.layer(connector))
}

/// Waits until every pool entry is connected (each `PING` lets the
/// connects progress).
async fn all_connected<M: MakeConnection>(svc: &mut RelaxTimeout<Handoff<M>>, pool: usize) {
    while svc.get_ref().connected_to().len() < pool {
        let r = svc.ready().await.unwrap().call(cmd("PING").into()).await;
        r.unwrap();
        tokio::task::yield_now().await;
    }
}

/// How many positions of `got` do not hold their index, and the first few.
fn misplaced(got: &[i64]) -> (usize, Vec<(usize, i64)>) {
    let wrong: Vec<(usize, i64)> = got
        .iter()
        .enumerate()
        .filter(|(i, v)| **v != *i as i64)
        .map(|(i, v)| (i, *v))
        .collect();
    (wrong.len(), wrong.into_iter().take(8).collect())
}

/// The list `key` on `server`, as numbers.
async fn list(server: &RedisServer, key: &str) -> Vec<i64> {
    let direct = Connector::new().connect(server.endpoint()).await.unwrap();
    let list = direct
        .send_cmd(cmd("LRANGE").arg(key).arg(0).arg(-1))
        .await
        .unwrap();
    let Value::Array(items) = list else {
        panic!("LRANGE replied {list:?}")
    };
    items
        .iter()
        .map(|v| match v {
            Value::BulkString(b) => std::str::from_utf8(b).unwrap().parse().unwrap(),
            other => panic!("list item {other:?}"),
        })
        .collect()
}

async fn ordered_through_a_moving(pool: usize) {
    let env = SimStandalone::start().await;
    let mut svc = stack(&env, pool);
    let mut events = svc.get_ref().subscribe();
    all_connected(&mut svc, pool).await;

    let mut replies = Vec::with_capacity(N);
    let mut moving = None;
    // The request index at each handoff's switch, as this loop saw it.
    let mut switches = Vec::new();
    let mut i = 0;
    // At least N requests, and AFTER more once every connection switched:
    // the switches fall mid-stream however long the handoff takes.
    while i < N || switches.len() < pool || i < switches[pool - 1] + AFTER {
        if i == BEFORE {
            moving = Some(
                env.sim
                    .start_moving(MovingPlan::new(Duration::from_secs(5)))
                    .unwrap(),
            );
        }
        if moving.is_some() && switches.len() < pool {
            loop {
                match events.try_recv() {
                    Ok(MaintEvent::HandoffSucceeded { .. }) => switches.push(i),
                    Ok(MaintEvent::HandoffFailed { reason, .. }) => {
                        panic!("handoff failed: {reason}")
                    }
                    Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
            // Let the handoff progress while requests keep coming, in
            // bursts, so that the old connection has a backlog when the
            // switch comes.
            if i % 256 == 0 {
                tokio::task::yield_now().await;
            }
        }
        svc.ready().await.unwrap();
        replies.push(svc.call(Request::from(cmd("RPUSH").arg("list").arg(i))));
        i += 1;
    }
    let n = i;

    let mut lengths = Vec::with_capacity(N);
    for r in replies {
        match r.await.unwrap().into_value().unwrap() {
            Value::Integer(n) => lengths.push(n - 1),
            other => panic!("RPUSH replied {other:?}"),
        }
    }

    let got = list(&env.server, "list").await;
    assert_eq!(got.len(), n, "every push applied once");
    let (wrong, first) = misplaced(&got);
    assert_eq!(
        wrong, 0,
        "pool {pool}: {wrong} of {n} list items out of place (index, value): {first:?}; switches at {switches:?}"
    );
    // Each reply is the list's length after its own push.
    let (wrong, first) = misplaced(&lengths);
    assert_eq!(
        wrong, 0,
        "pool {pool}: {wrong} replies out of place: {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clone_stays_in_order_through_a_moving() {
    bounded(60, ordered_through_a_moving(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clone_stays_in_order_through_a_moving_with_a_pool_of_4() {
    bounded(60, ordered_through_a_moving(4)).await;
}

/// What the `Client` docs promise: one clone of `Client::service()`, driven
/// with `poll_ready`/`call` in turn, keeps its requests in order through
/// the whole stack (Retry, RelaxTimeout, a Handoff pool of 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clone_of_the_client_stack_stays_in_order() {
    bounded(60, async {
        let server = RedisServer::start();
        let client = ClientBuilder::new(server.endpoint())
            .pool_size(4)
            .build()
            .await
            .unwrap();
        let mut svc = client.service();
        let mut replies = Vec::with_capacity(N);
        for i in 0..N {
            svc.ready().await.unwrap();
            replies.push(svc.call(Request::from(cmd("RPUSH").arg("ordered").arg(i))));
        }
        for r in replies {
            r.await.unwrap();
        }
        let (wrong, first) = misplaced(&list(&server, "ordered").await);
        assert_eq!(wrong, 0, "{wrong} of {N} out of place: {first:?}");
    })
    .await;
}

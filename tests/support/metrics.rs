//! Counters recorded by a piece of test code (feature `metrics`).

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// A counter: name, labels, value.
pub type Counter = (String, Vec<(String, String)>, u64);

/// Runs `body` (bounded to 20 s) on a current-thread runtime with a
/// recorder of its own, and returns every counter it recorded: name,
/// labels, value.
pub fn counted(body: impl std::future::Future<Output = ()>) -> Vec<Counter> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), body)
                .await
                .expect("bounded");
        });
    });
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(c) => {
                let k = key.key();
                let labels = k
                    .labels()
                    .map(|l| (l.key().to_string(), l.value().to_string()))
                    .collect();
                Some((k.name().to_string(), labels, c))
            }
            _ => None,
        })
        .collect()
}

//! Watch-event fan-out of the embedded API server: M ConfigMap writes
//! delivered to N concurrent watches (kube-rs raw watches over HTTP), as
//! total events delivered per second, reported as a ratio to the one-watcher
//! reference measured in the same run.
//!
//! `cargo bench -p underlay-lab --bench apiserver_fanout` (env
//! `UNDERLAY_BENCH_EVENTS`, default 500; `UNDERLAY_BENCH_WATCHERS`, default
//! "1,10,100,300").

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use underlay_lab::apiserver::{ApiServer, Config};

async fn run(watchers: usize, events: usize) -> f64 {
    let h = ApiServer::start(Config {
        tls: false,
        watch_backlog: events * 2 + 16,
        ..Config::default()
    })
    .await
    .expect("server");
    let client = h.client().expect("client");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = h.resource_version().to_string();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let stream = cms
            .watch(&WatchParams::default().timeout(290), &rv)
            .await
            .expect("watch");
        tasks.push(tokio::spawn(async move {
            let mut stream = stream.boxed();
            let mut seen = 0;
            while seen < events {
                match stream.try_next().await {
                    Ok(Some(WatchEvent::Added(_))) => seen += 1,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            seen
        }));
    }
    let start = Instant::now();
    for i in 0..events {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}}),
        )
        .unwrap();
        cms.create(&PostParams::default(), &cm)
            .await
            .expect("create");
    }
    let mut delivered = 0;
    for t in tasks {
        delivered += tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("watchers finish")
            .expect("task");
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        delivered,
        watchers * events,
        "every watcher saw every event"
    );
    drop(h);
    delivered as f64 / secs
}

fn main() {
    let events: usize = std::env::var("UNDERLAY_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let counts: Vec<usize> = std::env::var("UNDERLAY_BENCH_WATCHERS")
        .unwrap_or_else(|_| "1,10,100,300".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let reference = rt.block_on(run(1, events));
    println!("apiserver watch fan-out: {events} events, reference 1 watcher = 1.00");
    for n in counts {
        let rate = if n == 1 {
            reference
        } else {
            rt.block_on(run(n, events))
        };
        println!(
            "  {n:>4} watchers: delivered events/s ratio {:>7.2} x reference",
            rate / reference
        );
    }
}

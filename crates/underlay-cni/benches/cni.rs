//! `cargo xtask bench cni`: ADD+DEL latency of underlay against the
//! reference `ptp` + `host-local` plugins, measured in the same run on the
//! same machine, in namespaces made here. Prints p50/p99 for one
//! invocation at a time and for 8 at a time, and the ratios.
//!
//! Both run through `ip netns exec NODE plugin` exactly as the tests run a
//! runtime's invocation; underlay additionally calls its agent over gRPC
//! (which records the endpoint durably with fsync) and sets up proxy
//! ARP/NDP and sysctls.

#![allow(clippy::print_stdout)] // the report is this program's output

#[path = "../tests/support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

struct Target {
    name: &'static str,
    binary: std::path::PathBuf,
    conf: Value,
    node: Arc<Node>,
}

fn add_del(t: &Target, pod: &Netns, id: &str) -> Duration {
    let inv = Invocation::new("ADD", id, Some(&pod.path()));
    let start = Instant::now();
    let out = exec_plugin(&t.node.ns, &t.binary, &inv, &t.conf);
    assert_eq!(
        out.code, 0,
        "{} ADD failed: {} {}",
        t.name, out.stdout, out.stderr
    );
    let out = exec_plugin(&t.node.ns, &t.binary, &inv.with_command("DEL"), &t.conf);
    assert_eq!(
        out.code, 0,
        "{} DEL failed: {} {}",
        t.name, out.stdout, out.stderr
    );
    start.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn measure(
    t: &Arc<Target>,
    pods: &Arc<Vec<Netns>>,
    parallel: usize,
    rounds: usize,
) -> (Duration, Duration) {
    let mut all: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel)
            .map(|w| {
                let (t, pods) = (t.clone(), pods.clone());
                s.spawn(move || {
                    (0..rounds)
                        .map(|r| add_del(&t, &pods[w], &format!("bench{w}x{r}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    all.sort();
    (percentile(&all, 0.5), percentile(&all, 0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if skip_unless_root("cni bench") {
        return;
    }
    let rounds: usize = std::env::var("UNDERLAY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(40);
    let agent = Agent::start(&["10.244.0.0/16"]);
    let state = tempfile::tempdir().expect("temporary directory");
    let underlay = Arc::new(Target {
        name: "underlay",
        binary: cni_bin().into(),
        conf: conf("1.0.0", &agent.socket()),
        node: Arc::new(Node::new()),
    });
    let reference = Arc::new(Target {
        name: "ptp+host-local",
        binary: Path::new("/usr/lib/cni/ptp").into(),
        conf: json!({
            "cniVersion": "1.0.0",
            "name": "reference",
            "type": "ptp",
            "ipMasq": false,
            "mtu": 1500,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.98.0.0/16"}]],
                "dataDir": state.path().display().to_string(),
            },
        }),
        node: Arc::new(Node::new()),
    });
    let pods: Arc<Vec<Netns>> = Arc::new((0..8).map(|_| Netns::new("b")).collect());
    // Warm up both (page cache, first agent connection).
    for t in [&underlay, &reference] {
        measure(t, &pods, 1, 3);
    }
    println!("ADD+DEL latency, {rounds} rounds per worker (ms)");
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>9}",
        "", "seq p50", "seq p99", "8x p50", "8x p99"
    );
    // Interleave the two so drift on a shared machine hits both alike.
    let (mut us, mut rs) = (Vec::new(), Vec::new());
    for (parallel, r) in [(1, rounds), (8, rounds / 2)] {
        us.push(measure(&underlay, &pods, parallel, r));
        rs.push(measure(&reference, &pods, parallel, r));
    }
    for (t, v) in [(&underlay, &us), (&reference, &rs)] {
        println!(
            "{:<16} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            t.name,
            ms(v[0].0),
            ms(v[0].1),
            ms(v[1].0),
            ms(v[1].1)
        );
    }
    println!(
        "{:<16} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        "ratio",
        ms(us[0].0) / ms(rs[0].0),
        ms(us[0].1) / ms(rs[0].1),
        ms(us[1].0) / ms(rs[1].0),
        ms(us[1].1) / ms(rs[1].1)
    );
    println!("(ratio = underlay / reference; below 1.0 means underlay is faster)");
}

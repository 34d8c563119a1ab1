//! `cargo xtask bench cni`: ADD+DEL latency of underlay against the
//! reference `ptp` + `host-local` plugins, measured in the same run on the
//! same machine, in namespaces made here. Prints p50/p99 for one
//! invocation at a time and for 8 at a time, and the ratios.
//!
//! underlay runs as `deploy/` installs it: the agent with NetworkPolicy on,
//! inside the node namespace, watching an API server (the lab's) that holds
//! a realistic cluster — by default 10,000 pods in 1,000 namespaces and
//! 2,000 NetworkPolicies, some of which select the measured pods, and one
//! pod already resident on the node. A second, labelled row runs the agent
//! with `--policy=false`, a configuration no user runs, for comparison.
//!
//! Each worker thread enters its node's network namespace once and starts
//! the plugin there directly, as a runtime living on the node does (no
//! `ip netns exec` per invocation, which costs both sides a mount
//! namespace and a remount of /sys that no runtime pays); underlay
//! additionally calls its agent over gRPC
//! (which records the endpoint durably with fsync, fetches the pod if its
//! watch has not seen it, and programs its policy before answering) and
//! sets up proxy ARP/NDP and sysctls.
//!
//! The plugin and the agent are the binaries `UNDERLAY_CNI_BIN` and
//! `UNDERLAY_AGENT_BIN` name: `cargo xtask bench cni` builds them as the
//! images ship them (static, release). Run by `cargo bench` alone, the
//! bench profile's own builds are used.
//!
//! Knobs: `UNDERLAY_BENCH_ROUNDS` (100: one at a time 100 pods, 8 at a
//! time 50 per worker, so p99 is a percentile, not the slowest sample),
//! `UNDERLAY_BENCH_PODS` (10000), `UNDERLAY_BENCH_POLICIES` (2000).

#![allow(clippy::print_stdout)] // the report is this program's output

#[path = "cni/cluster.rs"]
mod cluster;
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
    let out = exec_plugin_here(&t.binary, &inv, &t.conf);
    assert_eq!(
        out.code, 0,
        "{} ADD failed: {} {}",
        t.name, out.stdout, out.stderr
    );
    let out = exec_plugin_here(&t.binary, &inv.with_command("DEL"), &t.conf);
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

/// The container ID of round `r` of worker `w` in a phase: unique, as a
/// runtime's sandbox IDs are (a reused ID would find the host interface
/// an earlier DEL retired still there, and wait for its deletion).
fn container_id(phase: &str, w: usize, r: usize) -> String {
    format!("{phase}{w}x{r}")
}

/// The phases of a run: warm-up, one at a time, eight at a time.
const PHASES: [&str; 3] = ["warm", "seq", "par"];

fn measure(
    t: &Arc<Target>,
    pods: &Arc<Vec<Netns>>,
    phase: &'static str,
    parallel: usize,
    rounds: usize,
) -> (Duration, Duration) {
    let mut all: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel)
            .map(|w| {
                let (t, pods) = (t.clone(), pods.clone());
                s.spawn(move || {
                    // The worker is the node's runtime: in its namespace.
                    underlay_netns::run_in(&t.node.ns.path(), || {
                        (0..rounds)
                            .map(|r| add_del(&t, &pods[w], &container_id(phase, w, r)))
                            .collect::<Vec<_>>()
                    })
                    .expect("enter the node's namespace")
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

/// The value of `key=NUMBER` in a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let digits: String = line[at..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// A process's resident memory (`VmRSS`), in KiB.
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Where the as-deployed agent's policy syncs spent their time, from its
/// debug log (one "policy synced" line per sync, with its phases).
fn print_sync_phases(log: &str) {
    let keys = [
        "elapsed_us",
        "read_us",
        "compile_us",
        "ipsets_us",
        "iptables_us",
        "conntrack_us",
    ];
    let mut columns: Vec<Vec<u64>> = vec![Vec::new(); keys.len()];
    for line in log.lines().filter(|l| l.contains("policy synced")) {
        for (k, key) in keys.iter().enumerate() {
            if let Some(v) = field(line, key) {
                columns[k].push(v);
            }
        }
    }
    let syncs = columns[0].len();
    if syncs == 0 {
        println!("no policy sync lines in the agent's log");
        return;
    }
    println!();
    println!("the as-deployed agent's {syncs} policy syncs, per phase (ms)");
    println!("{:<14} {:>9} {:>9}", "", "p50", "p99");
    for (key, mut v) in keys.iter().zip(columns) {
        v.sort_unstable();
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
        println!(
            "{:<14} {:>9.2} {:>9.2}",
            key.trim_end_matches("_us"),
            at(0.5),
            at(0.99)
        );
    }
}

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

fn underlay_target(name: &'static str, node: Node, agent: &Agent) -> Arc<Target> {
    Arc::new(Target {
        name,
        binary: cni_bin().into(),
        conf: conf("1.0.0", &agent.socket()),
        node: Arc::new(node),
    })
}

fn main() {
    if skip_unless_root("cni bench") {
        return;
    }
    let rounds = knob("UNDERLAY_BENCH_ROUNDS", 100);
    let size = cluster::Size {
        pods: knob("UNDERLAY_BENCH_PODS", 10_000),
        policies: knob("UNDERLAY_BENCH_POLICIES", 2_000),
    };
    // Every pod the benchmark will attach exists in the API server, as the
    // kubelet's pods do before their sandbox is created.
    let measured: Vec<String> = PHASES
        .iter()
        .flat_map(|phase| (0..8).map(move |w| (phase, w)))
        .flat_map(|(phase, w)| {
            (0..rounds.max(3)).map(move |r| format!("pod-{}", container_id(phase, w, r)))
        })
        .chain(["pod-resident".to_owned()])
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let started = Instant::now();
    let api = rt
        .block_on(cluster::load(size, &measured))
        .expect("load the cluster into the API server");
    println!(
        "API server: {} pods in {} namespaces, {} NetworkPolicies ({} in the measured pods' namespace), loaded in {:.1} s",
        size.pods + measured.len(),
        size.pods / cluster::PODS_PER_NAMESPACE + 1,
        size.policies,
        cluster::DEFAULT_NAMESPACE_POLICIES,
        started.elapsed().as_secs_f64()
    );
    let _in_runtime = rt.enter();

    let policy_node = Node::new();
    let kubeconfig = kubeconfig_in(&api, &policy_node.ns);
    let agent = Agent::start_with_policy_in(&policy_node.ns, &["10.244.0.0/16"], &kubeconfig.path);
    let underlay = underlay_target("underlay", policy_node, &agent);
    // One pod already resident on the node, as on any working node.
    let resident = Netns::new("r");
    let resident_add = Invocation::new("ADD", "resident", Some(&resident.path()));
    let out = exec_plugin(
        &underlay.node.ns,
        &underlay.binary,
        &resident_add,
        &underlay.conf,
    );
    assert_eq!(out.code, 0, "resident pod: {} {}", out.stdout, out.stderr);

    let bare_node = Node::new();
    let bare_agent = Agent::start(&bare_node.ns, &["10.245.0.0/16"]);
    let bare = underlay_target("underlay, policy off", bare_node, &bare_agent);
    let state = tempfile::tempdir().expect("temporary directory");
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
    let targets = [&underlay, &bare, &reference];
    // Warm up every target (page cache, first agent connection).
    for t in targets {
        measure(t, &pods, PHASES[0], 1, 3);
    }
    println!("plugin: {}", cni_bin());
    println!("agent:  {}", agent_bin().display());
    println!(
        "ADD+DEL latency, {rounds} pods one at a time, {} per worker 8 at a time (ms)",
        rounds / 2
    );
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9}",
        "", "seq p50", "seq p99", "8x p50", "8x p99"
    );
    // Interleave the targets so drift on a shared machine hits all alike.
    let mut results = vec![Vec::new(); targets.len()];
    for (phase, parallel, r) in [(PHASES[1], 1, rounds), (PHASES[2], 8, rounds / 2)] {
        for (i, t) in targets.iter().enumerate() {
            results[i].push(measure(t, &pods, phase, parallel, r));
        }
    }
    for (t, v) in targets.iter().zip(&results) {
        println!(
            "{:<24} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            t.name,
            ms(v[0].0),
            ms(v[0].1),
            ms(v[1].0),
            ms(v[1].1)
        );
    }
    let reference_results = &results[2];
    for (label, v) in [
        ("ratio (as deployed)", &results[0]),
        ("ratio (policy off)", &results[1]),
    ] {
        println!(
            "{:<24} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            label,
            ms(v[0].0) / ms(reference_results[0].0),
            ms(v[0].1) / ms(reference_results[0].1),
            ms(v[1].0) / ms(reference_results[1].0),
            ms(v[1].1) / ms(reference_results[1].1)
        );
    }
    println!("(ratio = underlay / reference; below 1.0 means underlay is faster)");
    if let Some(kib) = agent.child.as_ref().and_then(|c| resident_kib(c.id())) {
        println!(
            "the as-deployed agent's resident memory after the run: {} MiB",
            kib / 1024
        );
    }
    print_sync_phases(&agent.log());
    drop(agent);
    drop(api);
}

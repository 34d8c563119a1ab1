//! `cargo xtask bench policy`: the engine on a node with 100 local pods in
//! a cluster of 10,000 pods, 1,000 namespaces, 2,000 NetworkPolicies and
//! 100 ClusterNetworkPolicies (half Admin, half Baseline; 100 Nodes), against
//! the real iptables/ipset tools in a network namespace this benchmark
//! creates. Reports time to first full programming and the p50/p99 of one
//! policy change, one cluster policy change, one pod label change and one
//! new pod, each as a ratio to
//! the floor: restoring the same full ruleset from scratch, with the stock
//! `ipset restore` and `iptables-restore`, into an empty
//! namespace, measured in the same run. The engine runs as the agent ships
//! it (its flags' defaults: deny logging on, conntrack cleanup of newly
//! denied connections on); a second, labelled policy-change row has the
//! cleanup off. The change rows sync back to back, as a burst of changes
//! does; labelled rows repeat three of them 100 ms apart, as a change that
//! comes alone (see the comment there for why they differ).
//!
//! Then the deletion of N conntrack entries of newly denied connections:
//! ctnetlink requests on one socket (what the engine does) against one
//! `conntrack -R` batch (the reference) and one `conntrack -D` process per
//! entry, in the same run.
//!
//! The node carries established connections of its pods that policy
//! allows (2,000 by default) from before the first programming, as a node
//! whose agent restarts does: every change that could deny one evaluates
//! them all.
//!
//! Flags: `--pods N --namespaces N --policies N --cluster-policies N
//! --local N --iterations N --conntrack N --established N`.
#![allow(clippy::print_stdout)]

use std::process::Command;
use std::time::{Duration, Instant};
use underlay_policy::cluster::{
    Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Node, Tier,
};
use underlay_policy::dataplane::{Call, Dataplane, FakeDataplane};
use underlay_policy::engine::Phases;
use underlay_policy::eval::Flow;
use underlay_policy::index::Index;
use underlay_policy::metrics::Metrics;
use underlay_policy::model::{
    Attachment, Endpoint, Expression, Namespace, Peer, Pod, PodKey, Policy, PolicyTypes, PortMatch,
    Protocol, Rule, Selector,
};
use underlay_policy::{CommandDataplane, Config, Engine, SyncReport};

struct Scale {
    pods: usize,
    namespaces: usize,
    policies: usize,
    cluster_policies: usize,
    local: usize,
    iterations: usize,
    conntrack: usize,
    established: usize,
}

fn parse_args() -> Scale {
    let mut s = Scale {
        pods: 10_000,
        namespaces: 1_000,
        policies: 2_000,
        cluster_policies: 100,
        local: 100,
        iterations: 50,
        conntrack: 200,
        established: 2_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        let slot = match args[i].as_str() {
            "--pods" => Some(&mut s.pods),
            "--namespaces" => Some(&mut s.namespaces),
            "--policies" => Some(&mut s.policies),
            "--cluster-policies" => Some(&mut s.cluster_policies),
            "--local" => Some(&mut s.local),
            "--iterations" => Some(&mut s.iterations),
            "--conntrack" => Some(&mut s.conntrack),
            "--established" => Some(&mut s.established),
            _ => None, // cargo passes `--bench`
        };
        if let (Some(slot), Some(v)) = (slot, value) {
            *slot = v;
            i += 2;
        } else {
            i += 1;
        }
    }
    s
}

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("udlbench-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "could not create network namespace {name}; run as root");
        Netns(name)
    }

    /// Runs `work` on a thread inside the namespace: the tools it starts
    /// run there directly, as the agent's run in the node's namespace (no
    /// `ip netns exec` in between).
    fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        underlay_netns::run_in(&underlay_netns::path_of(&self.0), work)
            .unwrap_or_else(|e| panic!("could not enter {}: {e}", self.0))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ns_name(i: usize) -> String {
    format!("ns-{i}")
}

fn ip_of(i: usize) -> String {
    format!("10.{}.{}.{}", 100 + i / 62500, (i / 250) % 250, i % 250 + 1)
}

fn pod(i: usize, scale: &Scale, label: &str) -> Pod {
    let ns = i % scale.namespaces;
    Pod::new(&ns_name(ns), &format!("pod-{i}"))
        .label("app", &format!("app-{}", (i / scale.namespaces) % 5))
        .label("tier", label)
        .ip(&ip_of(i))
        .port("http", Protocol::Tcp, 8080 + (i % 3) as u16)
}

/// Two policies per namespace until the count is reached: a default deny
/// of ingress, and an allow from frontends of the same team on numeric and
/// named ports, with an egress rule to an address block.
fn policy(k: usize, scale: &Scale) -> Policy {
    let ns = k % scale.namespaces;
    if k < scale.namespaces {
        return Policy::new(&ns_name(ns), "default-deny", Selector::everything());
    }
    let mut p = Policy::new(
        &ns_name(ns),
        &format!("allow-{k}"),
        Selector::labels([("app", "app-0")]),
    );
    p.types = PolicyTypes {
        ingress: true,
        egress: true,
    };
    p.ingress = vec![
        Rule::from(vec![
            Peer::both(
                Selector::labels([("team", &format!("t{}", ns % 20))]),
                Selector::default().with(Expression::In("tier".into(), vec!["frontend".into()])),
            ),
            Peer::pods(Selector::labels([("tier", "backend")])),
        ])
        .ports(vec![
            PortMatch::tcp(443),
            PortMatch::named(Protocol::Tcp, "http"),
        ]),
    ];
    p.egress = vec![
        Rule::from(vec![Peer::block("10.0.0.0/8", &["10.200.0.0/16"])])
            .ports(vec![PortMatch::range(Protocol::Tcp, 8000, 8100)]),
        Rule::from(vec![Peer::namespaces(Selector::labels([(
            "team",
            &format!("t{}", ns % 20),
        )]))]),
    ];
    p
}

/// The cluster administrator's guardrails, alternating tiers, each for the
/// namespaces of one team: the Admin tier denies SSH from other teams,
/// passes frontends on and denies the metadata address and the
/// infrastructure nodes; the Baseline tier admits its own team on named and
/// ranged ports and denies the rest.
fn cluster_policy(k: usize, version: u16) -> ClusterPolicy {
    let team = |t: usize| Selector::labels([("team", &format!("t{}", t % 20))]);
    let pods = |ns: Selector, tier: &str| ClusterPeer::Pods {
        namespaces: ns,
        pods: Selector::labels([("tier", tier)]),
    };
    let tier = if k.is_multiple_of(2) {
        Tier::Admin
    } else {
        Tier::Baseline
    };
    let mut p = ClusterPolicy::new(&format!("guard-{k}"), tier, (k % 1000) as u16, team(k));
    let port = |n: u16| ClusterPort::Port(PortMatch::tcp(n));
    if tier == Tier::Admin {
        p.ingress = vec![
            ClusterRule::new(
                Action::Deny,
                vec![ClusterPeer::Pods {
                    namespaces: team(k + 1),
                    pods: Selector::everything(),
                }],
            )
            .ports(vec![port(22 + version)]),
            ClusterRule::new(Action::Pass, vec![pods(Selector::everything(), "frontend")]),
        ];
        p.egress = vec![ClusterRule::new(
            Action::Deny,
            vec![
                ClusterPeer::Network("169.254.169.254/32".parse().unwrap()),
                ClusterPeer::Nodes(Selector::labels([("role", "infra")])),
            ],
        )];
    } else {
        p.ingress = vec![
            ClusterRule::new(Action::Accept, vec![pods(team(k), "backend")]).ports(vec![
                ClusterPort::Named("http".into()),
                ClusterPort::Port(PortMatch::range(Protocol::Tcp, 9000, 9100 + version)),
            ]),
            ClusterRule::new(
                Action::Deny,
                vec![ClusterPeer::Pods {
                    namespaces: Selector::everything(),
                    pods: Selector::everything(),
                }],
            ),
        ];
    }
    p
}

fn build(index: &mut Index, scale: &Scale) {
    for n in 0..100usize {
        let role = if n.is_multiple_of(10) {
            "infra"
        } else {
            "worker"
        };
        index.apply_node(
            Node::new(&format!("node-{n}"))
                .label("role", role)
                .ip(&format!("10.240.{}.{}", n / 250, n % 250 + 4)),
        );
    }
    for k in 0..scale.cluster_policies {
        index.apply_cluster_policy(cluster_policy(k, 0));
    }
    for n in 0..scale.namespaces {
        index.apply_namespace(Namespace::new(&ns_name(n)).label("team", &format!("t{}", n % 20)));
    }
    for i in 0..scale.pods {
        let tier = if i % 3 == 0 { "frontend" } else { "backend" };
        index.apply_pod(pod(i, scale, tier));
    }
    for k in 0..scale.policies {
        index.apply_policy(policy(k, scale));
    }
    // Local pods: the first pod of the first `local` namespaces, so every
    // local pod is selected by its namespace's policies.
    for i in 0..scale.local {
        index.apply_endpoint(Endpoint {
            pod: PodKey::new(ns_name(i % scale.namespaces), format!("pod-{i}")),
            interface: format!("udlb{i}"),
            ips: vec![ip_of(i).parse().unwrap()],
            owner: Attachment::new(format!("sandbox-{i}"), "eth0"),
        });
    }
}

/// The ruleset's knobs as the agent ships them: its flags' defaults (deny
/// logging on, the shipped mark and rates), not the library's defaults.
fn shipped_config() -> Config {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        policy: underlay_policy::PolicyArgs,
    }
    <Flags as clap::Parser>::parse_from(["underlay-agent"])
        .policy
        .config()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[rank(v.len(), p)]
}

/// The index of the `p` percentile among `len` sorted samples.
fn rank(len: usize, p: f64) -> usize {
    ((len as f64 - 1.0) * p).round() as usize
}

/// The syncs of one benchmark row: each one's wall time and phases.
type Row = Vec<(Duration, Phases)>;

/// Applies `change` to the engine's index and syncs, recording the time
/// from the change to the synced dataplane, and the sync's phases.
fn measure(
    engine: &mut Engine<CommandDataplane>,
    row: &mut Row,
    change: impl FnOnce(&mut Index),
) -> SyncReport {
    let t = Instant::now();
    engine.change(change);
    let r = engine.sync().expect("sync");
    row.push((t.elapsed(), r.phases));
    r
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let scale = parse_args();
    if !underlay_lab::netns::is_root() {
        eprintln!(
            "bench policy: needs root to create a network namespace; run `sudo -E cargo xtask bench policy`"
        );
        std::process::exit(2);
    }
    println!(
        "policy bench: {} pods, {} namespaces, {} policies, {} cluster policies, {} local pods, {} iterations",
        scale.pods,
        scale.namespaces,
        scale.policies,
        scale.cluster_policies,
        scale.local,
        scale.iterations
    );

    // The full ruleset, captured by the recording fake.
    let rss_before = rss_kib();
    let fake = FakeDataplane::new();
    let shipped = shipped_config();
    let mut capture = Engine::new(fake.clone(), shipped.clone(), Metrics::default());
    let t = Instant::now();
    capture.change(|i| build(&mut *i, &scale));
    let index_time = t.elapsed();
    capture.sync().expect("compile into the fake");
    let status = capture.status();
    let scripts: Vec<Call> = fake
        .state()
        .calls
        .iter()
        .filter(|c| matches!(c, Call::RestoreFilter(..) | Call::RestoreSets(_)))
        .cloned()
        .collect();
    drop(capture);

    // Floor: the same full ruleset restored from scratch in an empty netns.
    let mut floor = Vec::new();
    for round in 0..3 {
        let ns = Netns::new(&format!("floor{round}"));
        floor.push(ns.run(|| {
            // One process per script, as a restore from scratch is done
            // with the stock tools.
            let mut dp = CommandDataplane::default();
            dp.persistent_restore = false;
            let t = Instant::now();
            for c in &scripts {
                match c {
                    Call::RestoreSets(s) => ipset_restore(s),
                    Call::RestoreFilter(f, s) => {
                        dp.restore_filter(*f, s).expect("floor iptables-restore")
                    }
                    _ => {}
                }
            }
            t.elapsed()
        }));
    }
    let floor = percentile(&mut floor, 0.5);

    // The engine against the real tools.
    let ns = Netns::new("engine");
    let (first, rss_after, rows) = ns.run(|| {
        let metrics = Metrics::default();
        let mut engine = Engine::new(CommandDataplane::default(), shipped.clone(), metrics);
        engine.change(|i| build(&mut *i, &scale));
        let established = allowed_connections(engine.index(), &scale);
        insert_flows(&ns, &established);
        println!(
            "established connections policy allows, on the node before it is programmed: {}",
            established.len()
        );
        let t = Instant::now();
        let r = engine.sync().expect("first full programming");
        let first = (t.elapsed(), r.phases);
        let rss_after = rss_kib();

        let target = scale.namespaces; // the first allow policy
        let port_change = |port: u16| {
            let mut p = policy(target, &scale);
            p.ingress[0].ports[0] = PortMatch::tcp(port);
            move |i: &mut Index| i.apply_policy(p)
        };
        // A remote pod of a team-selected namespace flips frontend/backend.
        let label_change = |n: usize| {
            let i = scale.local + 20 * (n % (scale.pods / 20 - 10)) + 3;
            let tier = if n.is_multiple_of(2) {
                "frontend"
            } else {
                "backend"
            };
            let p = pod(i, &scale, tier);
            move |idx: &mut Index| idx.apply_pod(p)
        };
        // The k-th new pod, on this node.
        let new_pod = |k: usize| {
            let p = pod(scale.pods + k, &scale, "backend");
            let ep = Endpoint {
                pod: p.key.clone(),
                interface: format!("udln{k}"),
                ips: p.ips.clone(),
                owner: Attachment::new(format!("sandbox-{k}"), "eth0"),
            };
            move |idx: &mut Index| {
                idx.apply_pod(p);
                idx.apply_endpoint(ep);
            }
        };
        let mut rows: Vec<(&str, Row)> = Vec::new();
        let mut row = Row::new();
        for n in 0..scale.iterations {
            let r = measure(&mut engine, &mut row, port_change(1000 + n as u16));
            assert!(r.chains_written >= 1);
        }
        rows.push(("one policy change", row));

        let mut row = Row::new();
        for n in 0..scale.iterations.min(scale.cluster_policies * 1000) {
            // An Admin policy of a team with local pods changes a port.
            let p = cluster_policy(0, 1 + n as u16);
            let r = measure(&mut engine, &mut row, |i| i.apply_cluster_policy(p));
            assert!(r.chains_written >= 1);
        }
        rows.push(("one cluster policy change", row));

        let mut row = Row::new();
        for n in 0..scale.iterations {
            measure(&mut engine, &mut row, label_change(n));
        }
        rows.push(("one pod label change", row));

        let mut row = Row::new();
        for n in 0..scale.iterations {
            measure(&mut engine, &mut row, new_pod(n));
        }
        rows.push(("one new local pod", row));

        // The rows above sync back to back, like a burst of changes. A
        // transaction that creates an iptables-nft match or target
        // extension first waits for the kernel to release what the previous
        // one deleted (an RCU grace period); a change that comes alone does
        // not wait. The same changes, each one 100 ms after the last:
        let settle = || std::thread::sleep(Duration::from_millis(100));
        let alone = scale.iterations.min(20);
        let mut row = Row::new();
        for n in 0..alone {
            settle();
            measure(&mut engine, &mut row, port_change(4000 + n as u16));
        }
        rows.push(("one policy change, 100 ms after the last", row));
        let mut row = Row::new();
        for n in 0..alone {
            settle();
            measure(&mut engine, &mut row, label_change(n));
        }
        rows.push(("one pod label change, 100 ms after the last", row));
        let mut row = Row::new();
        for n in 0..alone {
            settle();
            measure(&mut engine, &mut row, new_pod(scale.iterations + n));
        }
        rows.push(("one new local pod, 100 ms after the last", row));

        let mut row = Row::new();
        engine.set_conntrack_cleanup(false);
        for n in 0..scale.iterations.min(20) {
            measure(&mut engine, &mut row, port_change(2000 + n as u16));
        }
        rows.push(("one policy change, conntrack cleanup off", row));

        // The same with cleanup on, starting iptables-restore per change.
        let mut row = Row::new();
        engine.set_conntrack_cleanup(true);
        engine.dataplane().persistent_restore = false;
        for n in 0..scale.iterations.min(20) {
            measure(&mut engine, &mut row, port_change(3000 + n as u16));
        }
        rows.push(("one policy change, a restore process each", row));
        (first, rss_after, rows)
    });

    println!();
    println!(
        "index build (pure, {} objects): {:.1} ms",
        scale.pods + scale.namespaces + scale.policies,
        ms(index_time)
    );
    println!(
        "ruleset: {} rules (both families), {} ipset members, {} restore scripts, {} policies, {} cluster policies and {} endpoints active",
        status.rules,
        status.ipset_members,
        scripts.len(),
        status.policies,
        status.cluster_policies,
        status.endpoints
    );
    println!(
        "resident memory: {} MiB (+{} MiB for the index and ruleset)",
        rss_after / 1024,
        rss_after.saturating_sub(rss_before) / 1024
    );
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>12}",
        "", "p50 ms", "p99 ms", "p50 / floor"
    );
    println!(
        "{:<44} {:>10.2} {:>10} {:>12}",
        "floor: full ruleset restored from scratch",
        ms(floor),
        "",
        "1.00"
    );
    println!(
        "{:<44} {:>10.2} {:>10} {:>12.2}",
        "first full programming",
        ms(first.0),
        "",
        first.0.as_secs_f64() / floor.as_secs_f64()
    );
    for (name, row) in &rows {
        if row.is_empty() {
            continue;
        }
        let mut v: Vec<Duration> = row.iter().map(|(d, _)| *d).collect();
        let p50 = percentile(&mut v, 0.5);
        let p99 = percentile(&mut v, 0.99);
        println!(
            "{:<44} {:>10.2} {:>10.2} {:>12.3}",
            name,
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / floor.as_secs_f64()
        );
    }
    // Where a sync's time goes: the p50 of each phase on its own.
    println!();
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "phase p50, ms", "compile", "ipsets", "iptables", "conntrack", "read"
    );
    let profile = std::iter::once(("first full programming", vec![first.1]))
        .chain(
            rows.iter()
                .map(|(name, row)| (*name, row.iter().map(|(_, p)| *p).collect())),
        )
        .filter(|(_, phases): &(&str, Vec<Phases>)| !phases.is_empty());
    for (name, phases) in profile {
        let p50 = |f: fn(&Phases) -> u64| {
            let mut v: Vec<Duration> = phases.iter().map(|x| Duration::from_micros(f(x))).collect();
            ms(percentile(&mut v, 0.5))
        };
        println!(
            "{:<44} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            name,
            p50(|x| x.compile),
            p50(|x| x.ipsets),
            p50(|x| x.iptables),
            p50(|x| x.conntrack),
            p50(|x| x.read)
        );
    }
    // And where the p99 went: the phases of the sample at the p99 rank,
    // and what the sync spent besides them (the index change, the diff).
    println!();
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "the p99 sample, ms", "total", "compile", "ipsets", "iptables", "conntrack", "other"
    );
    for (name, row) in &rows {
        let mut row = row.clone();
        if row.is_empty() {
            continue;
        }
        row.sort_by_key(|(wall, _)| *wall);
        let (wall, p) = row[rank(row.len(), 0.99)];
        let phases = p.compile + p.ipsets + p.iptables + p.conntrack + p.read;
        let us = |v: u64| v as f64 / 1000.0;
        println!(
            "{:<44} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            name,
            ms(wall),
            us(p.compile),
            us(p.ipsets),
            us(p.iptables),
            us(p.conntrack),
            (ms(wall) - us(phases)).max(0.0)
        );
    }
    conntrack_deletion(scale.conntrack);
}

/// Up to `scale.established` connections from remote pods to the local
/// pods' named port, each one policy allows.
fn allowed_connections(index: &Index, scale: &Scale) -> Vec<Flow> {
    let eval = underlay_policy::eval::Evaluator::new(index);
    let remote = scale.pods - scale.local;
    (0..scale.established * 50)
        .map(|j| {
            let dst = j % scale.local;
            Flow {
                protocol: 6,
                src: ip_of(scale.local + (j * 37) % remote).parse().unwrap(),
                dst: ip_of(dst).parse().unwrap(),
                sport: 20_000 + (j % 40_000) as u16,
                dport: 8080 + (dst % 3) as u16,
            }
        })
        .filter(|f| eval.allowed(f))
        .take(scale.established)
        .collect()
}

/// Established TCP entries, inserted with one `conntrack -R` batch.
fn insert_flows(ns: &Netns, flows: &[Flow]) {
    let script: String = flows
        .iter()
        .map(|f| {
            format!(
                "-I -p tcp -s {} -d {} --sport {} --dport {} --state ESTABLISHED -t 600 -u ASSURED\n",
                f.src, f.dst, f.sport, f.dport
            )
        })
        .collect();
    conntrack_batch(ns, &script);
}

/// Deletes `flows` with one `conntrack -R` batch (one `-D` a line); returns
/// how many entries it reported deleted.
fn delete_flows_with_tool(ns: &Netns, flows: &[Flow]) -> usize {
    let script: String = flows
        .iter()
        .map(|f| {
            format!(
                "-D -f ipv4 -p {} -s {} -d {} --sport {} --dport {}\n",
                f.protocol, f.src, f.dst, f.sport, f.dport
            )
        })
        .collect();
    conntrack_batch(ns, &script)
        .lines()
        .filter(|l| l.contains("src="))
        .count()
}

/// Runs `conntrack -R -` in `ns` on `script`; returns what it printed.
fn conntrack_batch(ns: &Netns, script: &str) -> String {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "conntrack", "-R", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run conntrack");
    let mut stdin = child.stdin.take().expect("conntrack's stdin");
    let script = script.to_owned();
    // Written on a thread: conntrack answers while it reads.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(script.as_bytes())
    });
    let out = child.wait_with_output().expect("wait for conntrack");
    writer
        .join()
        .expect("writer thread")
        .expect("write to conntrack");
    assert!(out.status.success(), "conntrack -R failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn conntrack_deletion(n: usize) {
    if n == 0 {
        return;
    }
    let flows: Vec<Flow> = (0..n)
        .map(|i| Flow {
            protocol: 6,
            src: format!("10.9.{}.{}", i / 250, i % 250 + 1).parse().unwrap(),
            dst: "10.8.0.2".parse().unwrap(),
            sport: 10_000 + i as u16,
            dport: 80,
        })
        .collect();
    let ns = Netns::new("ct");
    // Reference: one process per entry.
    insert_flows(&ns, &flows);
    let t = Instant::now();
    let mut removed_each = 0;
    for f in &flows {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "conntrack",
                "-D",
                "-f",
                "ipv4",
                "-p",
                "6",
            ])
            .args(["-s", &f.src.to_string(), "-d", &f.dst.to_string()])
            .args([
                "--sport",
                &f.sport.to_string(),
                "--dport",
                &f.dport.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        removed_each += usize::from(ok);
    }
    let each = t.elapsed();
    // One conntrack -R batch.
    insert_flows(&ns, &flows);
    let t = Instant::now();
    let removed_batch = delete_flows_with_tool(&ns, &flows);
    let batch = t.elapsed();
    // The engine's way: ctnetlink deletions on one socket.
    insert_flows(&ns, &flows);
    let mut dp = CommandDataplane::in_netns(&ns.0);
    let t = Instant::now();
    let removed_netlink = dp.delete_flows(&flows).expect("netlink deletion");
    let netlink = t.elapsed();
    // Nothing is left to delete: every ack is ENOENT and counts nothing.
    let removed_again = dp.delete_flows(&flows).expect("netlink deletion");
    assert_eq!(
        (removed_each, removed_batch, removed_netlink, removed_again),
        (n, n, n, 0),
        "not every entry was deleted exactly once"
    );
    println!();
    println!(
        "{:<44} {:>10} {:>12} {:>12}",
        format!("deleting {n} conntrack entries"),
        "ms",
        "/ per entry",
        "/ -R batch"
    );
    println!(
        "{:<44} {:>10.1} {:>12} {:>12.2}",
        "one conntrack -D process each",
        ms(each),
        "1.00",
        each.as_secs_f64() / batch.as_secs_f64()
    );
    println!(
        "{:<44} {:>10.1} {:>12.3} {:>12}",
        "reference: one conntrack -R batch",
        ms(batch),
        batch.as_secs_f64() / each.as_secs_f64(),
        "1.00"
    );
    println!(
        "{:<44} {:>10.1} {:>12.4} {:>12.4}",
        "ctnetlink, one socket (the engine)",
        ms(netlink),
        netlink.as_secs_f64() / each.as_secs_f64(),
        netlink.as_secs_f64() / batch.as_secs_f64()
    );
}

/// `ipset restore` of `script`, the stock tool's process.
fn ipset_restore(script: &str) {
    use std::io::Write;
    let mut child = Command::new("ipset")
        .arg("restore")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("start ipset restore");
    child
        .stdin
        .take()
        .expect("ipset's input")
        .write_all(script.as_bytes())
        .expect("write to ipset restore");
    let status = child.wait().expect("wait for ipset restore");
    assert!(status.success(), "floor ipset restore: {status}");
}

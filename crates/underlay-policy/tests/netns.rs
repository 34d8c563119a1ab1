//! The real dataplane, as root, in network namespaces these tests create:
//! iptables, ip6tables, ipset and conntrack inside a node namespace, real
//! TCP, UDP and SCTP packets between nine pod namespaces, every scenario's
//! truth table probed pair by pair and traced (model and kernel, from the
//! node's own saved rules) probe by probe; then restarts, external flushes and
//! conntrack cleanup under live connections.

mod support;

use std::time::{Duration, Instant};
use support::lab::{Lab, sh};
use support::scenarios;
use support::{Pid, Probe, kernel_of_saved, load_world, trace_mismatches};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use underlay_lab::netns::require_root;
use underlay_policy::agent::{Options, PolicyAgent};
use underlay_policy::metrics::Metrics;
use underlay_policy::model::{Family, Peer, Policy, Protocol, Rule, Selector};
use underlay_policy::{CommandDataplane, Config, Dataplane, Engine};

fn engine(lab: &Lab) -> Engine<CommandDataplane> {
    let mut e = Engine::new(
        CommandDataplane::in_netns(&lab.node),
        Config::default(),
        Metrics::default(),
    );
    e.change(load_world);
    e
}

fn pid(s: &str) -> Pid {
    Pid::all().into_iter().find(|p| p.is(s)).unwrap()
}

fn tcp80(src: &str, dst: &str) -> Probe {
    Probe {
        src: pid(src),
        dst: pid(dst),
        protocol: Protocol::Tcp,
        port: 80,
        family: Family::V4,
    }
}

/// The node namespace's IPv4 filter table, as `iptables-save` prints it.
fn iptables_save(lab: &Lab) -> String {
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.node,
        "iptables-save",
        "-t",
        "filter",
    ])
}

async fn reaches(lab: &Lab, p: Probe) -> bool {
    lab.probe_all(&[p], Duration::from_millis(500)).await[0]
}

/// x/a accepts ingress only from pods `b` of its namespace.
fn only_b_to_a() -> Policy {
    let mut p = Policy::new("x", "only-b", Selector::labels([("pod", "a")]));
    p.ingress = vec![Rule::from(vec![Peer::pods(Selector::labels([(
        "pod", "b",
    )]))])];
    p
}

/// A long-lived TCP connection from one pod to another; each `echo` sends
/// a line and reports whether the server's answer line came back in time.
struct Conn {
    tx: mpsc::Sender<oneshot::Sender<bool>>,
}

impl Conn {
    async fn open(lab: &Lab, p: Probe) -> Conn {
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<bool>>(4);
        let (ready_tx, ready_rx) = oneshot::channel();
        let dst = std::net::SocketAddr::new(p.dst.ip(p.family), p.port);
        lab.handle(p.src).spawn(async move {
            let s = tokio::net::TcpStream::connect(dst).await.expect("connect");
            let mut s = BufReader::new(s);
            let _ = ready_tx.send(());
            while let Some(reply) = rx.recv().await {
                let mut line = String::new();
                let ok = tokio::time::timeout(Duration::from_millis(700), async {
                    s.write_all(b"x\n").await?;
                    s.read_line(&mut line).await
                })
                .await
                .is_ok_and(|r| r.is_ok_and(|_| line.ends_with('\n')));
                let _ = reply.send(ok);
            }
        });
        ready_rx.await.expect("connection opened");
        Conn { tx }
    }

    async fn echo(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(tx).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_holds_for_real_packets() {
    if !require_root("every_scenario_holds_for_real_packets") {
        return;
    }
    let lab = Lab::new("scen").await;
    let mut engine = engine(&lab);
    let probes = Probe::all();
    let mut failures = Vec::new();
    let started = Instant::now();
    let all = scenarios::all();
    let mut since_reset = 0;
    for (i, s) in all.iter().enumerate() {
        if !s.chained {
            since_reset = i;
        }
        engine.change(|idx| scenarios::prepare(idx, s));
        let t = Instant::now();
        let report = engine
            .sync()
            .unwrap_or_else(|e| panic!("{}: sync failed: {e}", s.name));
        let synced = t.elapsed();
        let bad = lab.check(&probes, &*s.expect).await;
        eprintln!(
            "{}: sync {synced:?} ({} conntrack entries removed), probes {:?}",
            s.name,
            report.conntrack_removed,
            t.elapsed() - synced
        );
        if !bad.is_empty() {
            failures.push(format!(
                "{}: {} mismatches, e.g. {:?}",
                s.name,
                bad.len(),
                &bad[..bad.len().min(6)]
            ));
        }
        // Trace, from the node's real `iptables-save` and `ipset save`:
        // every probe's model and kernel verdicts are the truth table's,
        // which the real packets above were held to.
        let saved = CommandDataplane::in_netns(&lab.node)
            .save_state()
            .unwrap_or_else(|e| panic!("{}: reading the node failed: {e}", s.name));
        let bad = trace_mismatches(
            engine.index(),
            &kernel_of_saved(&saved),
            &probes,
            &*s.expect,
        );
        if !bad.is_empty() {
            failures.push(format!(
                "{} (trace): {:?}",
                s.name,
                &bad[..bad.len().min(4)]
            ));
        }
        // Every chain reads back as written (those of native rules are
        // compared rule by rule), so an agent restarted on the same state
        // adopts the rules without writing any (it destroys the sets this
        // engine had yet to).
        let mut restarted = self::engine(&lab);
        restarted.change(|idx| {
            for s in &all[since_reset..=i] {
                scenarios::prepare(idx, s);
            }
        });
        let report = restarted
            .sync()
            .unwrap_or_else(|e| panic!("{}: restarted sync failed: {e}", s.name));
        let rewrote = report.chains_written + report.chains_deleted + report.sets_created;
        if rewrote > 0 || report.members_added + report.members_deleted > 0 {
            failures.push(format!("{} (restart rewrote): {report:?}", s.name));
        }
        // It may have destroyed sets this engine was keeping a while.
        engine.invalidate();
    }
    eprintln!(
        "{} scenarios x {} probes in {:?}",
        all.len(),
        probes.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Back to no policy: the logging (and audit) rules of the scenarios
    // were there only while they applied.
    engine.change(scenarios::reset);
    engine.sync().unwrap();
    let saved = iptables_save(&lab);
    assert!(
        !saved.contains("NFLOG"),
        "logging rules outlived their scenario"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_packets_are_logged_when_the_namespace_asks() {
    if !require_root("denied_packets_are_logged_when_the_namespace_asks") {
        return;
    }
    let lab = Lab::new("log").await;
    let mut engine = engine(&lab);
    engine.change(|idx| {
        let mut ns = idx.namespace("x").unwrap().clone();
        ns.log_denied = true;
        idx.apply_namespace(ns);
        idx.apply_policy(only_b_to_a());
    });
    engine.sync().unwrap();
    assert!(!reaches(&lab, tcp80("y/a", "x/a")).await);
    let rules = sh(&[
        "ip",
        "netns",
        "exec",
        &lab.node,
        "iptables",
        "-t",
        "filter",
        "-S",
        "UDL-I-udlxa",
        "-v",
    ]);
    let nflog = rules
        .lines()
        .find(|l| l.contains("NFLOG"))
        .unwrap_or_else(|| panic!("no NFLOG rule: {rules}"));
    // `-S -v` prints `-c PACKETS BYTES`: the denied SYN went through it.
    let packets: u64 = nflog
        .split_whitespace()
        .skip_while(|w| *w != "-c")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(packets >= 1, "{nflog}");

    // The logged chains carry their rules instead of a digest; they read
    // back as written, so a restarted agent adopts them without writing.
    let mut restarted = self::engine(&lab);
    restarted.change(|idx| {
        let mut ns = idx.namespace("x").unwrap().clone();
        ns.log_denied = true;
        idx.apply_namespace(ns);
        idx.apply_policy(only_b_to_a());
    });
    let report = restarted.sync().unwrap();
    assert!(report.wrote_nothing(), "restart rewrote rules: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_traffic_adopts_the_rules_with_no_window() {
    if !require_root("a_restart_under_traffic_adopts_the_rules_with_no_window") {
        return;
    }
    let lab = Lab::new("restart").await;
    let mut first = engine(&lab);
    first.change(|idx| idx.apply_policy(only_b_to_a()));
    first.sync().unwrap();
    let conn = Conn::open(&lab, tcp80("x/b", "x/a")).await;
    assert!(conn.echo().await);
    assert!(!reaches(&lab, tcp80("y/a", "x/a")).await);

    drop(first); // the agent stops: its rules stay in the kernel
    assert!(
        conn.echo().await,
        "established flow dropped while no agent ran"
    );
    assert!(
        !reaches(&lab, tcp80("y/a", "x/a")).await,
        "open while no agent ran"
    );

    let mut second = engine(&lab);
    second.change(|idx| idx.apply_policy(only_b_to_a()));
    let report = second.sync().unwrap();
    assert!(report.wrote_nothing(), "restart rewrote rules: {report:?}");
    assert!(conn.echo().await, "established flow dropped after restart");
    assert!(!reaches(&lab, tcp80("y/a", "x/a")).await);
    assert!(reaches(&lab, tcp80("x/c", "y/a")).await);

    // A restart that finds a changed policy applies only the difference.
    second.change(|idx| {
        let mut p = only_b_to_a();
        p.ingress = vec![Rule::from(vec![Peer::pods(Selector::labels([(
            "pod", "c",
        )]))])];
        idx.apply_policy(p);
    });
    drop(second);
    let mut third = engine(&lab);
    third.change(|idx| {
        let mut p = only_b_to_a();
        p.ingress = vec![Rule::from(vec![Peer::pods(Selector::labels([(
            "pod", "c",
        )]))])];
        idx.apply_policy(p);
    });
    let report = third.sync().unwrap();
    assert!(
        report.sets_created == 2 && report.sets_destroyed + report.sets_deferred == 2,
        "{report:?}"
    );
    // Sets the kernel still held when their rules went are destroyed by
    // a later sync, with no change needed.
    for _ in 0..50 {
        if third.sets_awaiting_destroy() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        third.sync().unwrap();
    }
    assert_eq!(third.sets_awaiting_destroy(), 0);
    let sets = sh(&["ip", "netns", "exec", &lab.node, "ipset", "list", "-n"]);
    assert_eq!(sets.lines().count(), 2, "{sets}");
    assert!(reaches(&lab, tcp80("x/c", "x/a")).await);
    assert!(!reaches(&lab, tcp80("x/b", "x/a")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_flush_is_repaired_by_the_periodic_check() {
    if !require_root("an_external_flush_is_repaired_by_the_periodic_check") {
        return;
    }
    let lab = Lab::new("flush").await;
    // Someone else's rule, which must survive our syncs and repairs.
    sh(&["ip", "netns", "exec", &lab.node, "iptables", "-N", "OTHER"]);
    sh(&[
        "ip", "netns", "exec", &lab.node, "iptables", "-A", "FORWARD", "-j", "OTHER",
    ]);
    let metrics = Metrics::default();
    let mut e = Engine::new(
        CommandDataplane::in_netns(&lab.node),
        Config::default(),
        metrics.clone(),
    );
    e.change(load_world);
    e.change(|idx| idx.apply_policy(only_b_to_a()));
    let agent = PolicyAgent::new(
        e,
        None,
        Options {
            repair_interval: Duration::from_millis(300),
            ..Options::default()
        },
    );
    let tasks = agent.start();
    agent.sync_now(false).await.unwrap();
    assert!(!reaches(&lab, tcp80("y/a", "x/a")).await);
    // Periodic checks of an intact dataplane repair nothing.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(metrics.repairs.get(), 0);

    for fam in ["iptables", "ip6tables"] {
        sh(&["ip", "netns", "exec", &lab.node, fam, "-F"]);
    }
    sh(&[
        "ip", "netns", "exec", &lab.node, "iptables", "-A", "FORWARD", "-j", "OTHER",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.repairs.get() == 0 {
        assert!(Instant::now() < deadline, "the flush was never repaired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!reaches(&lab, tcp80("y/a", "x/a")).await);
    let v6 = Probe {
        family: Family::V6,
        ..tcp80("y/a", "x/a")
    };
    assert!(!reaches(&lab, v6).await, "IPv6 not repaired");
    let saved = iptables_save(&lab);
    assert_eq!(saved.matches("-A FORWARD -j OTHER").count(), 1, "{saved}");
    assert_eq!(saved.matches("-j UDL-FORWARD").count(), 1, "{saved}");
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newly_denied_established_connections_are_cut() {
    if !require_root("newly_denied_established_connections_are_cut") {
        return;
    }
    let lab = Lab::new("ct").await;
    let metrics = Metrics::default();
    let mut e = Engine::new(
        CommandDataplane::in_netns(&lab.node),
        Config::default(),
        metrics.clone(),
    );
    e.change(load_world);
    e.sync().unwrap();
    let conn = Conn::open(&lab, tcp80("y/a", "x/a")).await;
    let v6conn = Conn::open(
        &lab,
        Probe {
            family: Family::V6,
            ..tcp80("y/a", "x/a")
        },
    )
    .await;
    let keep = Conn::open(&lab, tcp80("x/b", "x/a")).await;
    assert!(conn.echo().await && v6conn.echo().await && keep.echo().await);

    // Control: without cleanup, conntrack keeps the denied flow alive.
    e.set_conntrack_cleanup(false);
    e.change(|idx| idx.apply_policy(only_b_to_a()));
    let report = e.sync().unwrap();
    assert_eq!(report.conntrack_removed, 0);
    assert!(!reaches(&lab, tcp80("y/a", "x/a")).await);
    assert!(
        conn.echo().await,
        "control: established flows pass without cleanup"
    );

    // With cleanup (the default), the next change that rewrites x/a's
    // rules cuts it: a second policy that also allows b, on port 81 only.
    e.set_conntrack_cleanup(true);
    e.change(|idx| {
        let mut p = only_b_to_a();
        p.name = "only-b-again".into();
        p.ingress[0].ports = vec![underlay_policy::model::PortMatch::tcp(81)];
        idx.apply_policy(p);
    });
    let report = e.sync().unwrap();
    assert!(report.conntrack_removed >= 2, "{report:?}");
    assert_eq!(
        metrics.conntrack_removed.get(),
        report.conntrack_removed as u64
    );
    assert!(!conn.echo().await, "denied connection still flows");
    assert!(!v6conn.echo().await, "denied IPv6 connection still flows");
    assert!(keep.echo().await, "an allowed connection was cut");
}

/// The same for a ClusterNetworkPolicy: an Admin-tier Deny from namespace
/// y cuts y's established connections into x and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_a_cluster_policy_newly_denies_are_cut() {
    use underlay_policy::cluster::{Action, ClusterPeer, ClusterPolicy, ClusterRule, Tier};
    if !require_root("connections_a_cluster_policy_newly_denies_are_cut") {
        return;
    }
    let lab = Lab::new("cct").await;
    let mut e = Engine::new(
        CommandDataplane::in_netns(&lab.node),
        Config::default(),
        Metrics::default(),
    );
    e.change(load_world);
    e.sync().unwrap();
    let denied = Conn::open(&lab, tcp80("y/a", "x/a")).await;
    let keep = Conn::open(&lab, tcp80("z/a", "x/a")).await;
    assert!(denied.echo().await && keep.echo().await);
    let ns = |n: &str| Selector::labels([("ns", n)]);
    let mut p = ClusterPolicy::new("deny-y", Tier::Admin, 10, ns("x"));
    p.ingress = vec![ClusterRule::new(
        Action::Deny,
        vec![ClusterPeer::Pods {
            namespaces: ns("y"),
            pods: Selector::everything(),
        }],
    )];
    e.change(|idx| idx.apply_cluster_policy(p));
    let report = e.sync().unwrap();
    assert!(report.conntrack_removed >= 1, "{report:?}");
    assert!(!denied.echo().await, "denied connection still flows");
    assert!(keep.echo().await, "an allowed connection was cut");
}

/// An empty network namespace of the test's own, removed when dropped.
async fn bare_namespace() -> underlay_lab::netns::Netns {
    underlay_lab::netns::Netns::create_unique("n")
        .await
        .unwrap()
}

/// Entries of `conntrack -L` (both families) in the namespace `ns`.
fn conntrack_entries(ns: &str) -> usize {
    ["ipv4", "ipv6"]
        .iter()
        .map(|f| {
            sh(&["ip", "netns", "exec", ns, "conntrack", "-L", "-f", f])
                .lines()
                .filter(|l| l.contains("src="))
                .count()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conntrack_deletion_touches_only_its_own_namespace() {
    if !require_root("conntrack_deletion_touches_only_its_own_namespace") {
        return;
    }
    let node = bare_namespace().await;
    let other = bare_namespace().await;
    let flow = |protocol, src: &str, dst: &str, sport, dport| underlay_policy::eval::Flow {
        protocol,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport,
        dport,
    };
    let flows = [
        flow(6, "10.0.0.1", "10.0.0.2", 40000, 80),
        flow(17, "fd00::1", "fd00::2", 5353, 53),
        flow(132, "10.0.0.1", "10.0.0.3", 4000, 5000),
        // ICMP's tuple as the kernel keeps it: the id where the source
        // port would be, type << 8 | code where the destination port would.
        flow(1, "10.0.0.1", "10.0.0.4", 7, 8 << 8),
    ];
    let inserts: [&[&str]; 4] = [
        &[
            "-p",
            "tcp",
            "-s",
            "10.0.0.1",
            "-d",
            "10.0.0.2",
            "--sport",
            "40000",
            "--dport",
            "80",
            "--state",
            "ESTABLISHED",
        ],
        &[
            "-p", "udp", "-s", "fd00::1", "-d", "fd00::2", "--sport", "5353", "--dport", "53",
        ],
        &[
            "-p",
            "sctp",
            "-s",
            "10.0.0.1",
            "-d",
            "10.0.0.3",
            "--sport",
            "4000",
            "--dport",
            "5000",
            "--state",
            "ESTABLISHED",
            "--orig-vtag",
            "1",
            "--reply-vtag",
            "2",
        ],
        &[
            "-p",
            "icmp",
            "-s",
            "10.0.0.1",
            "-d",
            "10.0.0.4",
            "--icmp-type",
            "8",
            "--icmp-code",
            "0",
            "--icmp-id",
            "7",
        ],
    ];
    for ns in [node.name(), other.name()] {
        for args in inserts {
            let mut cmd = vec!["ip", "netns", "exec", ns, "conntrack", "-I"];
            cmd.extend_from_slice(args);
            cmd.extend_from_slice(&["-t", "600", "-u", "SEEN_REPLY"]);
            sh(&cmd);
        }
        assert_eq!(conntrack_entries(ns), 4, "{ns}");
    }
    // Without conntrack events the table is dumped at every listing: the
    // dump reads every entry back with its whole tuple, and an entry that
    // was never answered is not a live connection.
    no_conntrack_events(node.name());
    let mut dp = CommandDataplane::in_netns(node.name());
    sh(&[
        "ip",
        "netns",
        "exec",
        node.name(),
        "conntrack",
        "-I",
        "-p",
        "udp",
        "-s",
        "10.0.0.9",
        "-d",
        "10.0.0.2",
        "--sport",
        "1",
        "--dport",
        "2",
        "-t",
        "600",
    ]);
    let mut listed = dp.list_flows().unwrap();
    let key = |f: &underlay_policy::eval::Flow| (f.protocol, f.src, f.dst, f.sport, f.dport);
    listed.sort_by_key(key);
    let mut want = flows.to_vec();
    want.sort_by_key(key);
    assert_eq!(listed, want);
    assert_eq!(dp.list_flows().unwrap().len(), 4);
    assert_eq!(dp.conntrack_dumps(), 2, "a dump per listing");
    assert_eq!(dp.delete_flows(&listed).unwrap(), 4);
    sh(&[
        "ip",
        "netns",
        "exec",
        node.name(),
        "conntrack",
        "-D",
        "-s",
        "10.0.0.9",
    ]);
    assert_eq!(conntrack_entries(node.name()), 0);
    assert_eq!(
        conntrack_entries(other.name()),
        4,
        "a deletion reached another namespace"
    );
    // Gone already: not counted, not an error.
    assert_eq!(dp.delete_flows(&flows).unwrap(), 0);
    // A namespace that does not exist is an error, never the current one.
    let mut missing = CommandDataplane::in_netns(format!("{}missing", node.name()));
    assert!(missing.delete_flows(&flows[..1]).is_err());
}

fn no_conntrack_events(ns: &str) {
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_events=0",
    ]);
}

/// `conntrack -I` of an established TCP entry `src:sport -> dst:80` in `ns`
/// (`SEEN_REPLY` unless `unanswered`).
fn insert_tcp(ns: &str, src: &str, sport: u16, unanswered: bool) {
    let sport = sport.to_string();
    let mut cmd = vec![
        "ip",
        "netns",
        "exec",
        ns,
        "conntrack",
        "-I",
        "-p",
        "tcp",
        "-s",
        src,
        "-d",
        "10.0.0.2",
        "--sport",
        &sport,
        "--dport",
        "80",
        "--state",
        "ESTABLISHED",
        "-t",
        "600",
    ];
    if !unanswered {
        cmd.extend_from_slice(&["-u", "SEEN_REPLY"]);
    }
    sh(&cmd);
}

/// A listing after the first reads the table the kernel's events keep, not
/// a dump (which walks the whole conntrack hash of every namespace);
/// events it could not hold make the next listing dump again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conntrack_table_is_kept_from_events_after_one_dump() {
    if !require_root("the_conntrack_table_is_kept_from_events_after_one_dump") {
        return;
    }
    let node = bare_namespace().await;
    let ns = node.name();
    let tcp = |src: &str, sport: u16| underlay_policy::eval::Flow {
        protocol: 6,
        src: src.parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        sport,
        dport: 80,
    };
    let listed = |dp: &mut CommandDataplane| {
        let mut l = dp.list_flows().unwrap();
        l.sort();
        l
    };
    // Before anyone listens: only the dump sees it.
    insert_tcp(ns, "10.0.0.1", 1000, false);
    let mut dp = CommandDataplane::in_netns(ns);
    assert_eq!(listed(&mut dp), vec![tcp("10.0.0.1", 1000)]);
    assert_eq!(dp.conntrack_dumps(), 1);

    // Later connections come from events, answered or not (no event says
    // when one is answered, so an unanswered one is kept).
    insert_tcp(ns, "10.0.0.3", 3000, false);
    insert_tcp(ns, "10.0.0.4", 4000, true);
    let want = vec![
        tcp("10.0.0.1", 1000),
        tcp("10.0.0.3", 3000),
        tcp("10.0.0.4", 4000),
    ];
    assert_eq!(listed(&mut dp), want);
    // Ended ones go with their destroy events, whoever deleted them.
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "conntrack",
        "-D",
        "-s",
        "10.0.0.3",
    ]);
    assert_eq!(dp.delete_flows(&[tcp("10.0.0.4", 4000)]).unwrap(), 1);
    assert_eq!(listed(&mut dp), vec![tcp("10.0.0.1", 1000)]);
    assert_eq!(dp.conntrack_dumps(), 1, "a listing dumped again");

    // A socket too small for a burst loses events: the next listing
    // dumps, and still sees every connection.
    let mut small = CommandDataplane::in_netns(ns);
    small.conntrack_event_buffer = 1;
    assert_eq!(listed(&mut small).len(), 1);
    assert_eq!(small.conntrack_dumps(), 1);
    let script: String = (0..2000)
        .map(|i| {
            format!(
                "-I -p tcp -s 10.1.{}.{} -d 10.0.0.2 --sport 5000 --dport 80 --state ESTABLISHED -t 600 -u SEEN_REPLY\n",
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "conntrack", "-R", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run conntrack");
    let mut stdin = child.stdin.take().expect("conntrack's stdin");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(script.as_bytes())
    });
    assert!(child.wait().expect("wait for conntrack").success());
    writer.join().expect("writer").expect("write to conntrack");
    assert_eq!(listed(&mut small).len(), 2001);
    assert_eq!(small.conntrack_dumps(), 2, "lost events were not noticed");
    // The roomy socket held them all.
    assert_eq!(listed(&mut dp).len(), 2001);
    assert_eq!(dp.conntrack_dumps(), 1);
}

/// kube-proxy starting after us puts `KUBE-FORWARD` (which accepts packets
/// marked for masquerade, and established ones) above our hooks; repair
/// moves ours back to the top, and real packets are denied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_moves_our_hooks_back_above_kube_proxys_reinserted_jumps() {
    if !require_root("repair_moves_our_hooks_back_above_kube_proxys_reinserted_jumps") {
        return;
    }
    let lab = Lab::new("kproxy").await;
    let mut e = engine(&lab);
    e.change(|idx| idx.apply_policy(only_b_to_a()));
    e.sync().unwrap();
    // What kube-proxy's KUBE-MARK-MASQ does to service traffic, for every
    // forwarded packet here.
    let mark = format!(
        "0x{:x}/0x{:x}",
        support::KUBE_MARK_MASQ,
        support::KUBE_MARK_MASQ
    );
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.node,
        "iptables",
        "-t",
        "mangle",
        "-A",
        "PREROUTING",
        "-j",
        "MARK",
        "--set-xmark",
        &mark,
    ]);
    assert!(!reaches(&lab, tcp80("y/a", "x/a")).await);

    CommandDataplane::in_netns(&lab.node)
        .restore_filter(Family::V4, &support::kube_proxy_reinserts_its_jumps())
        .unwrap();
    let report = e.repair().unwrap();
    assert!(report.repaired, "{report:?}");
    assert!(!reaches(&lab, tcp80("y/a", "x/a")).await, "y/a -> x/a");
    assert!(reaches(&lab, tcp80("x/b", "x/a")).await, "x/b -> x/a");
    let saved = iptables_save(&lab);
    for (builtin, ours) in underlay_policy::compile::HOOKS {
        let rules: Vec<&str> = saved
            .lines()
            .filter(|l| l.starts_with(&format!("-A {builtin} ")))
            .collect();
        assert!(rules[0].ends_with(&format!("-j {ours}")), "{saved}");
        assert!(rules.len() > 1, "kube-proxy's jumps stay: {saved}");
        assert_eq!(saved.matches(&format!("-j {ours}\n")).count(), 1, "{saved}");
    }
    assert!(e.repair().unwrap().wrote_nothing());
}

/// Netlink sockets of the namespace in the nf_tables notification group
/// (`/proc/net/netlink`: protocol 12 is netfilter; group 7 is bit 6 of
/// the groups mask).
fn nftables_listeners(ns: &str) -> usize {
    sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/netlink"])
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"12")
                && f.get(3)
                    .and_then(|g| u32::from_str_radix(g, 16).ok())
                    .is_some_and(|g| g & (1 << 6) != 0)
        })
        .count()
}

/// The rules of `chain` in the namespace, as `iptables -S` prints them.
fn chain_rules(ns: &str, iptables: &str, chain: &str) -> Vec<String> {
    sh(&["ip", "netns", "exec", ns, iptables, "-S", chain])
        .lines()
        .filter(|l| l.starts_with("-A"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_changes_go_through_one_running_restore_that_sees_other_writers() {
    if !require_root("rule_changes_go_through_one_running_restore_that_sees_other_writers") {
        return;
    }
    let node = bare_namespace().await;
    let ns = node.name().to_string();
    let mut dp = CommandDataplane::in_netns(&ns);
    // A change that is not committed within this is an error, not a hang.
    dp.timeout = Duration::from_secs(10);
    for family in Family::ALL {
        let iptables = ["iptables", "ip6tables"][family.index()];
        dp.restore_filter(
            family,
            "*filter\n:UDL-T - [0:0]\n-A UDL-T -p tcp --dport 80 -j ACCEPT\nCOMMIT\n",
        )
        .unwrap();
        let pid = dp.restore_session_pid(family).expect("a running restore");
        // A change the kernel sees as no change (flushing an empty chain)
        // is still answered.
        dp.restore_filter(family, "*filter\n:UDL-E - [0:0]\nCOMMIT\n")
            .unwrap();
        dp.restore_filter(family, "*filter\n-F UDL-E\nCOMMIT\n")
            .unwrap();
        // Another program's rule, deleted by its spec through the session,
        // which must have re-read the chain to find it.
        sh(&[
            "ip", "netns", "exec", &ns, iptables, "-I", "UDL-T", "1", "-p", "udp", "-j", "DROP",
        ]);
        dp.restore_filter(
            family,
            "*filter\n-D UDL-T -p udp -j DROP\n-I UDL-T 2 -p tcp --dport 81 -j ACCEPT\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(
            chain_rules(&ns, iptables, "UDL-T"),
            [
                "-A UDL-T -p tcp -m tcp --dport 80 -j ACCEPT",
                "-A UDL-T -p tcp -m tcp --dport 81 -j ACCEPT"
            ]
        );
        assert_eq!(dp.restore_session_pid(family), Some(pid), "one process");
        // Between changes nothing listens to the namespace's nf_tables
        // notifications (other writers' would pile up in the socket).
        assert_eq!(nftables_listeners(&ns), 0);
        // The ack chain never outlives a change.
        let saved = dp.save_filter(family).unwrap();
        assert!(!saved.contains("UDL-ACK"), "{saved}");

        // A block the kernel refuses is an error naming the line, nothing
        // of it is committed, and the next change applies.
        let err = dp
            .restore_filter(
                family,
                "*filter\n-F UDL-T\n-A UDL-MISSING -j ACCEPT\nCOMMIT\n",
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3 failed"), "{err}");
        assert_eq!(chain_rules(&ns, iptables, "UDL-T").len(), 2);
        dp.restore_filter(family, "*filter\n-F UDL-T\nCOMMIT\n")
            .unwrap();
        assert!(chain_rules(&ns, iptables, "UDL-T").is_empty());
        let second = dp.restore_session_pid(family).expect("a running restore");
        assert_ne!(second, pid);

        // Killed between changes: the next change starts another.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(second as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        dp.restore_filter(family, "*filter\n-A UDL-T -j RETURN\nCOMMIT\n")
            .unwrap();
        assert_eq!(chain_rules(&ns, iptables, "UDL-T"), ["-A UDL-T -j RETURN"]);
        assert_ne!(dp.restore_session_pid(family), Some(second));
    }

    // A whole ruleset's worth of lines: one chain of SESSION_MAX_LINES rules.
    let whole_ruleset = |chain: &str| {
        let mut script = format!("*filter\n:{chain} - [0:0]\n");
        for port in 1..=underlay_policy::dataplane::SESSION_MAX_LINES {
            script.push_str(&format!("-A {chain} -p tcp --dport {port} -j ACCEPT\n"));
        }
        script.push_str("COMMIT\n");
        script
    };

    // A whole ruleset (a first programming) goes through a process of its
    // own, and leaves the session running for the changes after it, with
    // the match extensions the policy chains use already loaded: the first
    // use of one in a process made its change wait.
    let mut fresh = CommandDataplane::in_netns(&ns);
    fresh.timeout = Duration::from_secs(10);
    fresh
        .restore_filter(Family::V4, &whole_ruleset("UDL-WHOLE"))
        .unwrap();
    let started = fresh
        .restore_session_pid(Family::V4)
        .expect("a session after a whole ruleset");
    let maps = std::fs::read_to_string(format!("/proc/{started}/maps")).unwrap();
    for ext in [
        "libxt_tcp.so",
        "libxt_udp.so",
        "libxt_sctp.so",
        "libxt_mark.so",
    ] {
        assert!(maps.contains(ext), "{ext} not loaded by the new session");
    }
    fresh
        .restore_filter(Family::V4, "*filter\n-F UDL-WHOLE\n-X UDL-WHOLE\nCOMMIT\n")
        .unwrap();
    assert_eq!(fresh.restore_session_pid(Family::V4), Some(started));
    let saved = fresh.save_filter(Family::V4).unwrap();
    assert!(
        !saved.contains("UDL-ACK") && !saved.contains("UDL-WHOLE"),
        "{saved}"
    );

    // A whole ruleset's worth of lines is applied too (through a process
    // of its own: through the session the kernel would write a
    // notification of every rule), and the session stays.
    let pid = dp.restore_session_pid(Family::V4);
    dp.restore_filter(Family::V4, &whole_ruleset("UDL-BIG"))
        .unwrap();
    assert_eq!(
        chain_rules(&ns, "iptables", "UDL-BIG").len(),
        underlay_policy::dataplane::SESSION_MAX_LINES
    );
    dp.restore_filter(Family::V4, "*filter\n-F UDL-BIG\n-X UDL-BIG\nCOMMIT\n")
        .unwrap();
    assert_eq!(dp.restore_session_pid(Family::V4), pid);

    // The legacy back end starts a process per change.
    let mut legacy = CommandDataplane::in_netns(&ns);
    legacy.iptables = ["iptables-legacy".into(), "ip6tables-legacy".into()];
    legacy
        .restore_filter(Family::V4, "*filter\n:UDL-L - [0:0]\nCOMMIT\n")
        .unwrap();
    assert_eq!(legacy.restore_session_pid(Family::V4), None);
    assert!(legacy.save_filter(Family::V4).unwrap().contains(":UDL-L"));
    sh(&["ip", "netns", "exec", &ns, "iptables-legacy", "-X", "UDL-L"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_running_in_another_pid_namespace_is_still_heard() {
    if !require_root("a_restore_running_in_another_pid_namespace_is_still_heard") {
        return;
    }
    // As in a pod: the agent's children have other pids in the node's
    // first pid namespace, which the kernel's own notices use. Here the
    // tool runs under `unshare --pid --fork`, so it is not even our child.
    let node = bare_namespace().await;
    let ns = node.name().to_string();
    let dir = std::env::temp_dir().join(format!("{ns}-tools"));
    std::fs::create_dir_all(&dir).unwrap();
    for (tool, run) in [
        ("restore", "unshare --pid --fork iptables-restore"),
        ("save", "iptables-save"),
    ] {
        let path = dir.join(format!("pidns-iptables-{tool}"));
        std::fs::write(&path, format!("#!/bin/sh\nexec {run} \"$@\"\n")).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
    }
    let mut dp = CommandDataplane::in_netns(&ns);
    dp.iptables[0] = dir.join("pidns-iptables").display().to_string();
    dp.timeout = Duration::from_secs(5);
    for n in 0..3 {
        dp.restore_filter(
            Family::V4,
            &format!("*filter\n:UDL-P - [0:0]\n-A UDL-P -p tcp --dport {n} -j ACCEPT\nCOMMIT\n"),
        )
        .unwrap();
    }
    assert!(
        dp.restore_session_pid(Family::V4).is_some(),
        "a running restore"
    );
    assert_eq!(chain_rules(&ns, "iptables", "UDL-P").len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The members `ipset save` prints in namespace `ns` (`add` lines).
fn saved_members(ns: &str) -> Vec<String> {
    let mut v: Vec<String> = sh(&["ip", "netns", "exec", ns, "ipset", "save"])
        .lines()
        .filter(|l| l.starts_with("add "))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipset_scripts_run_over_netlink_as_the_tool_runs_them() {
    if !require_root("ipset_scripts_run_over_netlink_as_the_tool_runs_them") {
        return;
    }
    let node = bare_namespace().await;
    let other = bare_namespace().await;
    let mut dp = CommandDataplane::in_netns(node.name());
    let script = "\
create udlt4-p hash:ip family inet maxelem 1048576 -exist
flush udlt4-p
add udlt4-p 10.0.0.1 -exist
add udlt4-p 10.0.0.2 -exist
add udlt4-p 10.0.0.1 -exist
create udlt6-n hash:net family inet6 maxelem 1048576 -exist
add udlt6-n fd00::/64 -exist
add udlt6-n fd00::/96 nomatch -exist
create udlt4-o hash:ip,port family inet maxelem 1048576 -exist
add udlt4-o 10.0.0.1,tcp:80 -exist
add udlt4-o 10.0.0.1,sctp:9 -exist
del udlt4-o 10.9.9.9,udp:53 -exist
";
    dp.restore_sets(script).unwrap();
    // Run again, every line is a no-op (`-exist`): sets alike, members held.
    dp.restore_sets(script).unwrap();
    let mut want = vec![
        "add udlt4-o 10.0.0.1,sctp:9",
        "add udlt4-o 10.0.0.1,tcp:80",
        "add udlt4-p 10.0.0.1",
        "add udlt4-p 10.0.0.2",
        "add udlt6-n fd00::/64",
        "add udlt6-n fd00::/96 nomatch",
    ];
    want.sort();
    assert_eq!(saved_members(node.name()), want);
    assert_eq!(
        sh(&["ip", "netns", "exec", other.name(), "ipset", "list", "-n"]),
        "",
        "another namespace's sets are untouched"
    );

    // Thousands of members built aside and swapped in, as the engine
    // replaces a set that changes wholesale.
    let mut swap = String::from(
        "create udlt4-p-t hash:ip family inet maxelem 1048576 -exist\nflush udlt4-p-t\n",
    );
    for i in 0..3000u32 {
        swap.push_str(&format!(
            "add udlt4-p-t 10.1.{}.{} -exist\n",
            i / 200,
            i % 200
        ));
    }
    swap.push_str("swap udlt4-p-t udlt4-p\ndestroy udlt4-p-t\n");
    dp.restore_sets(&swap).unwrap();
    let members = saved_members(node.name());
    assert_eq!(
        members
            .iter()
            .filter(|m| m.starts_with("add udlt4-p "))
            .count(),
        3000
    );
    assert!(!members.contains(&"add udlt4-p 10.0.0.1".to_string()));

    // A set a rule still uses: the script stops at the refused line,
    // whose number and wording the engine reads; what came before is done.
    sh(&[
        "ip",
        "netns",
        "exec",
        node.name(),
        "iptables",
        "-A",
        "INPUT",
        "-m",
        "set",
        "--match-set",
        "udlt4-p",
        "src",
        "-j",
        "DROP",
    ]);
    let err = dp
        .restore_sets("destroy udlt6-n\ndestroy udlt4-p\ndestroy udlt4-o\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Error in line 2") && err.contains("in use by a kernel component"),
        "{err}"
    );
    let names = sh(&["ip", "netns", "exec", node.name(), "ipset", "list", "-n"]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, vec!["udlt4-o", "udlt4-p"]);

    // Bad input is refused before the kernel is asked; a missing set is
    // the kernel's refusal, in the tool's words.
    let err = dp
        .restore_sets("add udlt4-o 10.0.0.2,tcp:81 -exist\nadd udlt4-p 10.0.0.300 -exist\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("Error in line 2"), "{err}");
    assert!(
        !saved_members(node.name()).contains(&"add udlt4-o 10.0.0.2,tcp:81".to_string()),
        "nothing of a refused script is run"
    );
    // A member the kernel refuses inside a run of edits: the error names
    // its line, the members before it are in and those after it are not.
    let err = dp
        .restore_sets(
            "add udlt4-o 10.0.0.3,tcp:1 -exist\nadd udlt4-o fd00::3,tcp:1 -exist\nadd udlt4-o 10.0.0.4,tcp:1 -exist\n",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("Error in line 2"), "{err}");
    let members = saved_members(node.name());
    assert!(members.contains(&"add udlt4-o 10.0.0.3,tcp:1".to_string()));
    assert!(!members.contains(&"add udlt4-o 10.0.0.4,tcp:1".to_string()));
    let err = dp
        .restore_sets("add udlt-none 10.0.0.1 -exist\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Error in line 1") && err.contains("does not exist"),
        "{err}"
    );

    // All of it went through one socket, still open: closing a netfilter
    // socket makes nf_tables wait for its last transaction's release.
    let sockets = netfilter_sockets(node.name());
    assert_eq!(sockets.len(), 1, "{sockets:?}");
    // Listing conntrack adds the event socket, kept open the same way.
    dp.list_flows().unwrap();
    let with_events = netfilter_sockets(node.name());
    assert_eq!(with_events.len(), 2, "{with_events:?}");
    assert!(with_events.contains(&sockets[0]), "{with_events:?}");
    dp.restore_sets("add udlt4-p 10.2.0.1 -exist\n").unwrap();
    dp.list_flows().unwrap();
    assert_eq!(netfilter_sockets(node.name()), with_events);
}

/// The inodes of the user-space `NETLINK_NETFILTER` sockets open in
/// namespace `ns` (the kernel's own has port id 0).
fn netfilter_sockets(ns: &str) -> Vec<String> {
    sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/netlink"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"12") && f.get(2) != Some(&"0"))
                .then(|| f.last().map(|s| s.to_string()))?
        })
        .collect()
}

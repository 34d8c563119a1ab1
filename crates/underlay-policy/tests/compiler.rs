//! The compiled ruleset, checked without root: every scenario is compiled,
//! programmed into the recording fake, and each probe of the x/y/z world is
//! walked through the programmed FORWARD chain by a rule interpreter and
//! compared with the scenario's truth table. The user-space evaluator (used
//! for conntrack cleanup) is checked against the same tables. Then the
//! engine's incremental behaviour: what it writes, and what it does not.

mod support;

use support::scenarios;
use support::{Pid, Probe, kernel_of, load_world, mismatches, trace_mismatches};
use underlay_policy::dataplane::{Call, FakeDataplane};
use underlay_policy::eval::{Evaluator, Flow};
use underlay_policy::kernel_trace::{Kernel, Packet, Verdict};
use underlay_policy::metrics::Metrics;
use underlay_policy::model::{Family, PodKey, Protocol, Selector};
use underlay_policy::{Config, Engine};

fn engine(fake: &FakeDataplane) -> Engine<FakeDataplane> {
    Engine::new(fake.clone(), Config::default(), Metrics::default())
}

fn world_engine(fake: &FakeDataplane) -> Engine<FakeDataplane> {
    let mut e = engine(fake);
    e.change(load_world);
    e
}

/// Walks one packet through a built-in chain of the fake's table, with
/// the product's kernel walk; the packet leaves with the mark it ended with.
fn verdict(fake: &FakeDataplane, family: Family, chain: &str, pkt: &mut Packet) -> Verdict {
    let walk = kernel_of(fake)
        .walk(family, chain, pkt)
        .unwrap_or_else(|e| panic!("the walk failed: {e}"));
    pkt.mark = walk.mark;
    walk.verdict
}

fn forward(fake: &FakeDataplane, p: &Probe) -> bool {
    forward_in(&kernel_of(fake), p)
}

fn forward_in(kernel: &Kernel, p: &Probe) -> bool {
    let pkt = Packet {
        iif: Some(p.src.interface()),
        oif: Some(p.dst.interface()),
        src: p.src.ip(p.family),
        dst: p.dst.ip(p.family),
        protocol: p.protocol,
        dport: p.port,
        mark: 0,
    };
    let walk = kernel
        .walk(p.family, "FORWARD", &pkt)
        .unwrap_or_else(|e| panic!("{}: the walk failed: {e}", p.describe()));
    // A packet that goes on carries none of the verdict bits (a dropped
    // one is seen by no other component).
    if walk.verdict == Verdict::Accept {
        assert_eq!(
            walk.mark & Config::default().verdict_mask(),
            0,
            "policy mark leaked: {}",
            p.describe()
        );
    }
    walk.verdict == Verdict::Accept
}

#[test]
fn every_scenario_compiles_to_its_truth_table() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let probes = Probe::all();
    let all = scenarios::all();
    assert!(all.len() >= 40, "only {} scenarios", all.len());
    let mut failures = Vec::new();
    for s in &all {
        engine.change(|idx| scenarios::prepare(idx, s));
        engine
            .sync()
            .unwrap_or_else(|e| panic!("{}: sync failed: {e}", s.name));
        let kernel = kernel_of(&fake);
        let bad = mismatches(&probes, |p| forward_in(&kernel, p), &*s.expect);
        if !bad.is_empty() {
            failures.push(format!(
                "{}: {} mismatches, e.g. {:?}",
                s.name,
                bad.len(),
                &bad[..bad.len().min(4)]
            ));
        }
        // Every group, policy and cluster policy chain is jumped to: none
        // is written that nothing uses (the shared chains always are).
        // Peers chains a scenario before used may stay unused, up to the
        // limit (see `MAX_UNUSED_PEERS_CHAINS`).
        for (family, table) in fake.state().tables.iter().enumerate() {
            let targets: std::collections::HashSet<&str> = table
                .values()
                .flatten()
                .flat_map(|r| {
                    let words: Vec<&str> = r.split_whitespace().collect();
                    words
                        .windows(2)
                        .filter(|w| w[0] == "-j" || w[0] == "-g")
                        .map(|w| w[1])
                        .collect::<Vec<_>>()
                })
                .collect();
            let unused: Vec<&String> = table
                .keys()
                .filter(|c| {
                    ["UDL-G-", "UDL-PI-", "UDL-PE-", "UDL-CI-", "UDL-CE-"]
                        .iter()
                        .any(|p| c.starts_with(p))
                })
                .filter(|c| !targets.contains(c.as_str()))
                .collect();
            if !unused.is_empty() {
                failures.push(format!("{} (family {family}): unused {unused:?}", s.name));
            }
            let unused_peers = (table.keys())
                .filter(|c| c.starts_with("UDL-M-") && !targets.contains(c.as_str()))
                .count();
            if unused_peers > underlay_policy::engine::MAX_UNUSED_PEERS_CHAINS {
                failures.push(format!(
                    "{} (family {family}): {unused_peers} unused peers chains",
                    s.name
                ));
            }
        }
        // The user-space evaluator agrees with the same truth table.
        let eval = Evaluator::new(engine.index());
        let bad = mismatches(
            &probes,
            |p| {
                eval.allowed(&Flow {
                    protocol: p.protocol.number(),
                    src: p.src.ip(p.family),
                    dst: p.dst.ip(p.family),
                    sport: 40000,
                    dport: p.port,
                })
            },
            &*s.expect,
        );
        if !bad.is_empty() {
            failures.push(format!(
                "{} (evaluator): {:?}",
                s.name,
                &bad[..bad.len().min(4)]
            ));
        }
        // Trace: each direction's model and kernel verdicts both say what
        // the truth table says.
        let bad = trace_mismatches(engine.index(), &kernel, &probes, &*s.expect);
        if !bad.is_empty() {
            failures.push(format!(
                "{} (trace): {:?}",
                s.name,
                &bad[..bad.len().min(4)]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_second_sync_without_changes_writes_nothing() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let s = &scenarios::all()[9];
    engine.change(|idx| scenarios::prepare(idx, s));
    let first = engine.sync().unwrap();
    assert!(first.restore_calls >= 3, "{first:?}");
    let second = engine.sync().unwrap();
    assert!(second.wrote_nothing(), "{second:?}");
}

#[test]
fn a_restarted_engine_adopts_the_rules_without_writing() {
    let fake = FakeDataplane::new();
    let mut first = world_engine(&fake);
    let s = &scenarios::all()[30];
    first.change(|idx| scenarios::prepare(idx, s));
    first.sync().unwrap();
    drop(first);
    let before = fake.state().calls.len();
    let mut second = world_engine(&fake);
    second.change(|idx| scenarios::prepare(idx, s));
    let report = second.sync().unwrap();
    assert!(report.wrote_nothing(), "{report:?}");
    let calls = fake.state().calls[before..].to_vec();
    assert!(
        calls
            .iter()
            .all(|c| matches!(c, Call::SaveFilter(_) | Call::SaveSets)),
        "{calls:?}"
    );
}

#[test]
fn other_components_rules_survive_every_sync() {
    let fake = FakeDataplane::new();
    {
        let mut st = fake.state();
        st.tables[0]
            .get_mut("FORWARD")
            .unwrap()
            .push("-j KUBE-FORWARD".into());
        st.tables[0].insert(
            "KUBE-FORWARD".into(),
            vec!["-m mark --mark 0x4000/0x4000 -j ACCEPT".into()],
        );
        st.tables[0]
            .get_mut("INPUT")
            .unwrap()
            .push("-p tcp -m tcp --dport 22 -j ACCEPT".into());
    }
    let mut engine = world_engine(&fake);
    for s in scenarios::all().iter().take(12) {
        engine.change(|idx| scenarios::prepare(idx, s));
        engine.sync().unwrap();
    }
    let st = fake.state();
    let t = &st.tables[0];
    assert_eq!(
        t["KUBE-FORWARD"],
        ["-m mark --mark 0x4000/0x4000 -j ACCEPT"]
    );
    assert!(t["FORWARD"].contains(&"-j KUBE-FORWARD".to_string()));
    assert!(t["INPUT"].contains(&"-p tcp -m tcp --dport 22 -j ACCEPT".to_string()));
    // exactly one jump into our chains from each hook
    for (builtin, ours) in [
        ("FORWARD", "UDL-FORWARD"),
        ("INPUT", "UDL-INPUT"),
        ("OUTPUT", "UDL-OUTPUT"),
    ] {
        let n = t[builtin]
            .iter()
            .filter(|r| r.ends_with(&format!("-j {ours}")))
            .count();
        assert_eq!(n, 1, "{builtin}: {:?}", t[builtin]);
    }
}

#[test]
fn a_flushed_chain_and_a_removed_hook_are_repaired() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let s = &scenarios::all()[6];
    engine.change(|idx| scenarios::prepare(idx, s));
    engine.sync().unwrap();
    let probe = Probe {
        src: Pid { ns: 1, pod: 0 },
        dst: Pid { ns: 0, pod: 0 },
        protocol: Protocol::Tcp,
        port: 80,
        family: Family::V4,
    };
    assert!(!forward(&fake, &probe), "y/a -> x/a must be denied");
    {
        // `iptables -F` of every chain of ours, and the hook deleted.
        let mut st = fake.state();
        for (name, rules) in st.tables[0].iter_mut() {
            if name.starts_with("UDL-") {
                rules.clear();
            }
        }
        st.tables[0].get_mut("FORWARD").unwrap().clear();
    }
    assert!(forward(&fake, &probe), "the flush opened the pod");
    let report = engine.repair().unwrap();
    assert!(report.repaired, "{report:?}");
    assert!(!forward(&fake, &probe), "repair must close it again");
    // IPv6 was untouched and is not rewritten.
    let last = fake.state().calls.iter().rev().find_map(|c| match c {
        Call::RestoreFilter(f, _) => Some(*f),
        _ => None,
    });
    assert_eq!(last, Some(Family::V4));
    // And nothing more to do afterwards.
    assert!(engine.repair().unwrap().wrote_nothing());
}

#[test]
fn a_pod_label_change_is_one_small_ipset_batch() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let s = &scenarios::all()[6]; // x/a ingress from pods b
    engine.change(|idx| scenarios::prepare(idx, s));
    engine.sync().unwrap();
    let before = fake.state().calls.len();
    engine.change(|idx| {
        let mut pod = idx.pod(&PodKey::new("x", "c")).unwrap().clone();
        pod.labels.insert("pod".into(), "b".into());
        idx.apply_pod(pod);
    });
    let report = engine.sync().unwrap();
    let calls = fake.state().calls[before..].to_vec();
    let restores: Vec<_> = calls
        .iter()
        .filter(|c| matches!(c, Call::RestoreFilter(..) | Call::RestoreSets(_)))
        .collect();
    assert_eq!(restores.len(), 1, "{calls:?}");
    match restores[0] {
        Call::RestoreSets(script) => {
            assert_eq!(script.lines().count(), 2, "{script}");
            assert!(
                script.contains("add ") && script.contains("10.88.0.12"),
                "{script}"
            );
        }
        other => panic!("expected one ipset batch, got {other:?}"),
    }
    assert_eq!(report.members_added, 2);
}

#[test]
fn a_failed_restore_is_reported_and_retried_from_the_node_state() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    engine.sync().unwrap();
    let s = &scenarios::all()[1];
    engine.change(|idx| scenarios::prepare(idx, s));
    fake.state().fail_next_restore =
        Some("Another app is currently holding the xtables lock".into());
    let err = engine.sync().unwrap_err().to_string();
    assert!(err.contains("xtables lock"), "{err}");
    assert!(engine.status().last_error.is_some());
    assert!(engine.dirty());
    let report = engine.sync().unwrap();
    assert!(report.restore_calls > 0);
    assert!(engine.status().last_error.is_none());
    let p = Probe {
        src: Pid { ns: 1, pod: 0 },
        dst: Pid { ns: 0, pod: 1 },
        protocol: Protocol::Udp,
        port: 81,
        family: Family::V6,
    };
    assert!(!forward(&fake, &p));
}

#[test]
fn sets_the_kernel_still_holds_are_destroyed_by_a_later_sync() {
    // The kernel lets go of a deleted rule's sets shortly after the rule
    // transaction; the fake refuses the first destroy that comes too soon.
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let all = scenarios::all();
    let with_peers = all
        .iter()
        .find(|s| s.name.starts_with("namespaceSelector peer"))
        .unwrap();
    engine.change(|idx| scenarios::prepare(idx, with_peers));
    engine.sync().unwrap();
    let peer_sets = fake.state().sets.len();
    assert!(peer_sets > 0);

    // No policy: no endpoint chain uses the peers chains any more. They
    // stay, unused, with their sets, until a repair deletes them; then no
    // rule references the sets.
    engine.change(|idx| scenarios::prepare(idx, &all[0]));
    let report = engine.sync().unwrap();
    assert_eq!(
        report.sets_destroyed + report.sets_deferred,
        0,
        "{report:?}"
    );
    assert_eq!(fake.state().sets.len(), peer_sets);
    let report = engine.repair().unwrap();
    assert!(!report.repaired, "{report:?}");
    assert_eq!(report.sets_destroyed, 0, "{report:?}");
    assert_eq!(report.sets_deferred, peer_sets, "{report:?}");
    assert_eq!(engine.sets_awaiting_destroy(), peer_sets);
    assert!(
        !engine.dirty(),
        "the rules are in place; only cleanup is left"
    );
    assert!(engine.status().last_error.is_none());
    assert_eq!(fake.state().sets.len(), peer_sets);

    // The next sync, with no change, destroys them.
    let report = engine.sync().unwrap();
    assert_eq!(report.sets_destroyed, peer_sets, "{report:?}");
    assert_eq!(report.sets_deferred, 0);
    assert_eq!(engine.sets_awaiting_destroy(), 0);
    assert!(fake.state().sets.is_empty());
    assert!(engine.sync().unwrap().wrote_nothing());
}

#[test]
fn unknown_pod_interfaces_are_dropped_and_the_node_reaches_its_pods() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let s = &scenarios::all()[3]; // deny both ways in x
    engine.change(|idx| scenarios::prepare(idx, s));
    engine.sync().unwrap();
    let x_a = Pid { ns: 0, pod: 0 };
    for (iif, oif) in [
        (Some("udlunknown"), Some("udlyb")),
        (Some("udlya"), Some("udlstale")),
    ] {
        let mut pkt = Packet {
            iif: iif.map(String::from),
            oif: oif.map(String::from),
            src: "10.88.0.99".parse().unwrap(),
            dst: x_a.ip(Family::V4),
            protocol: Protocol::Tcp,
            dport: 80,
            mark: 0,
        };
        assert_eq!(
            verdict(&fake, Family::V4, "FORWARD", &mut pkt),
            Verdict::Drop
        );
    }
    // node -> isolated pod (kubelet probe): OUTPUT lets it through
    let mut probe = Packet {
        iif: None,
        oif: Some(x_a.interface()),
        src: "10.88.0.1".parse().unwrap(),
        dst: x_a.ip(Family::V4),
        protocol: Protocol::Tcp,
        dport: 80,
        mark: 0,
    };
    assert_eq!(
        verdict(&fake, Family::V4, "OUTPUT", &mut probe),
        Verdict::Accept
    );
    // isolated pod -> node: egress policy applies in INPUT
    let mut up = Packet {
        iif: Some(x_a.interface()),
        oif: None,
        src: x_a.ip(Family::V4),
        dst: "10.88.0.1".parse().unwrap(),
        protocol: Protocol::Tcp,
        dport: 10250,
        mark: 0,
    };
    assert_eq!(verdict(&fake, Family::V4, "INPUT", &mut up), Verdict::Drop);
}

#[test]
fn newly_denied_connections_lose_their_conntrack_entries() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    engine.sync().unwrap();
    let flow = |src: Pid, dst: Pid, port| Flow {
        protocol: 6,
        src: src.ip(Family::V4),
        dst: dst.ip(Family::V4),
        sport: 40000,
        dport: port,
    };
    let (xa, xb, ya) = (
        Pid { ns: 0, pod: 0 },
        Pid { ns: 0, pod: 1 },
        Pid { ns: 1, pod: 0 },
    );
    let node = Flow {
        protocol: 6,
        src: "10.88.0.1".parse().unwrap(),
        dst: xa.ip(Family::V4),
        sport: 5000,
        dport: 80,
    };
    {
        let mut st = fake.state();
        st.host = vec!["10.88.0.1".parse().unwrap()];
        st.flows = vec![flow(ya, xa, 80), flow(xb, xa, 80), flow(ya, xa, 81), node];
    }
    // x/a: ingress only from pods b of x on TCP 80
    let mut p = underlay_policy::model::Policy::new("x", "p", Selector::labels([("pod", "a")]));
    p.ingress = vec![
        underlay_policy::model::Rule::from(vec![underlay_policy::model::Peer::pods(
            Selector::labels([("pod", "b")]),
        )])
        .ports(vec![underlay_policy::model::PortMatch::tcp(80)]),
    ];
    engine.change(|idx| idx.apply_policy(p));
    let report = engine.sync().unwrap();
    assert_eq!(report.conntrack_removed, 2, "{report:?}");
    assert_eq!(fake.state().flows, vec![flow(xb, xa, 80), node]);
    // Both denied flows went in one batch: one process, not one per flow.
    let batches: Vec<Vec<Flow>> = fake
        .state()
        .calls
        .iter()
        .filter_map(|c| match c {
            Call::DeleteFlows(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(batches, vec![vec![flow(ya, xa, 80), flow(ya, xa, 81)]]);
}

/// A change can deny only the connections of the endpoints whose chains
/// lead to what it replaced or narrowed; the others' entries are left as
/// they are, even one policy denies (a cleanup that failed earlier). That
/// failure is owed: the cleanup after it looks at every connection.
#[test]
fn a_change_cleans_only_the_connections_of_the_endpoints_it_reaches() {
    use underlay_policy::model::{Peer, Policy, PortMatch, Rule};
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let flow = |src: Pid, dst: Pid| Flow {
        protocol: 6,
        src: src.ip(Family::V4),
        dst: dst.ip(Family::V4),
        sport: 40000,
        dport: 80,
    };
    let (xa, xb, ya, yb) = (
        Pid { ns: 0, pod: 0 },
        Pid { ns: 0, pod: 1 },
        Pid { ns: 1, pod: 0 },
        Pid { ns: 1, pod: 1 },
    );
    let only_from = |ns: &str, to: &str, from: &str, port: u16| {
        let mut p = Policy::new(
            ns,
            &format!("{to}-from-{from}"),
            Selector::labels([("pod", to)]),
        );
        p.ingress = vec![
            Rule::from(vec![Peer::pods(Selector::labels([("pod", from)]))])
                .ports(vec![PortMatch::tcp(port)]),
        ];
        p
    };
    engine.change(|idx| {
        idx.apply_policy(only_from("x", "a", "b", 80));
        idx.apply_policy(only_from("y", "a", "b", 80));
    });
    engine.sync().unwrap();
    // y/b -> x/a is denied already (its cleanup failed, say); x/b -> x/a
    // and y/b -> y/a are allowed.
    let stale = flow(yb, xa);
    fake.state().flows = vec![stale, flow(xb, xa), flow(yb, ya)];

    // y/a's policy moves to port 81: only y/a's connections are looked at.
    engine.change(|idx| idx.apply_policy(only_from("y", "a", "b", 81)));
    let report = engine.sync().unwrap();
    assert_eq!(report.conntrack_removed, 1, "{report:?}");
    assert_eq!(fake.state().flows, vec![stale, flow(xb, xa)]);

    // A listing fails: the next cleanup owes every endpoint a look.
    fake.state().fail_next_listing = true;
    engine.change(|idx| idx.apply_policy(only_from("y", "a", "b", 82)));
    assert_eq!(engine.sync().unwrap().conntrack_removed, 0);
    engine.change(|idx| idx.apply_policy(only_from("y", "a", "b", 83)));
    let report = engine.sync().unwrap();
    assert_eq!(report.conntrack_removed, 1, "{report:?}");
    assert_eq!(fake.state().flows, vec![flow(xb, xa)]);
    // Owed no more: y/a's next change leaves x/a's connections alone.
    fake.state().flows.push(stale);
    engine.change(|idx| idx.apply_policy(only_from("y", "a", "b", 84)));
    assert_eq!(engine.sync().unwrap().conntrack_removed, 0);
    assert_eq!(fake.state().flows, vec![flow(xb, xa), stale]);
}

/// The conntrack listings the fake received.
fn conntrack_listings(fake: &FakeDataplane) -> usize {
    fake.state()
        .calls
        .iter()
        .filter(|c| matches!(c, Call::ListFlows))
        .count()
}

#[test]
fn a_deleted_pod_costs_no_conntrack_listing_and_a_narrowed_set_does() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    // x/a takes ingress only from pods labelled b, in every namespace.
    let mut p = underlay_policy::model::Policy::new("x", "p", Selector::labels([("pod", "a")]));
    p.ingress = vec![underlay_policy::model::Rule::from(vec![
        underlay_policy::model::Peer::both(
            Selector::everything(),
            Selector::labels([("pod", "b")]),
        ),
    ])];
    engine.change(|idx| idx.apply_policy(p));
    engine.sync().unwrap();
    let before = conntrack_listings(&fake);

    // The pod x/b is deleted: its endpoint, its chains and its addresses
    // in the peer set go. Nothing that stays can lose a connection.
    let xb = Pid { ns: 0, pod: 1 };
    let ep = xb.endpoint();
    engine.change(|idx| {
        idx.delete_endpoint(&ep.interface, &ep.owner);
        idx.delete_pod(&xb.key());
    });
    let report = engine.sync().unwrap();
    assert!(report.chains_deleted > 0, "{report:?}");
    assert!(report.members_deleted > 0, "{report:?}");
    assert_eq!(conntrack_listings(&fake), before, "{report:?}");

    // y/b loses the label the policy admits: a live pod leaves the peer
    // set, so connections it had may now be denied: both families are
    // listed, in one dump (each dump walks the kernel's whole conntrack
    // hash, which costs milliseconds however few entries it holds).
    let yb = Pid { ns: 1, pod: 1 };
    let relabelled = yb.pod().label("pod", "z");
    engine.change(|idx| idx.apply_pod(relabelled));
    let report = engine.sync().unwrap();
    assert!(report.members_narrowed > 0, "{report:?}");
    assert_eq!(conntrack_listings(&fake), before + 1, "{report:?}");
}

#[test]
fn large_set_changes_are_swapped_in() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let mut p = underlay_policy::model::Policy::new("x", "p", Selector::labels([("pod", "a")]));
    p.ingress = vec![underlay_policy::model::Rule::from(vec![
        underlay_policy::model::Peer::namespaces(Selector::labels([("bulk", "yes")])),
    ])];
    engine.change(|idx| {
        idx.apply_policy(p);
        idx.apply_namespace(underlay_policy::model::Namespace::new("bulk"));
        for i in 0..3000u32 {
            let ip = format!("10.90.{}.{}", i / 250, i % 250 + 1);
            idx.apply_pod(underlay_policy::model::Pod::new("bulk", &format!("p{i}")).ip(&ip));
        }
    });
    engine.sync().unwrap();
    engine.change(|idx| {
        idx.apply_namespace(underlay_policy::model::Namespace::new("bulk").label("bulk", "yes"))
    });
    let report = engine.sync().unwrap();
    assert_eq!(report.sets_swapped, 1, "{report:?}");
    let st = fake.state();
    let big = st.sets.values().filter(|s| s.members.len() == 3000).count();
    assert_eq!(big, 1);
    assert!(
        !st.sets.keys().any(|n| n.ends_with("-t")),
        "temporary set left behind"
    );
}

#[test]
fn denied_packets_are_logged_per_namespace_or_everywhere_rate_limited() {
    use underlay_policy::compile::endpoint_chain;
    use underlay_policy::model::{Direction, Policy};
    // (global flag, namespace x annotated) -> (x/a logs, y/a logs)
    let cases = [
        ((false, false), (false, false)),
        ((false, true), (true, false)),
        ((true, false), (true, true)),
        ((true, true), (true, true)),
    ];
    for ((log_all, annotated), (want_x, want_y)) in cases {
        let fake = FakeDataplane::new();
        let config = Config {
            log_all,
            nflog_group: 7,
            log_rate: "5/minute".into(),
            ..Config::default()
        };
        let mut engine = Engine::new(fake.clone(), config, Metrics::default());
        engine.change(load_world);
        engine.change(|idx| {
            let mut x = idx.namespace("x").unwrap().clone();
            x.log_denied = annotated;
            idx.apply_namespace(x);
            // Deny all ingress to pods a of x and y.
            idx.apply_policy(Policy::new("x", "deny", Selector::labels([("pod", "a")])));
            idx.apply_policy(Policy::new("y", "deny", Selector::labels([("pod", "a")])));
        });
        engine.sync().unwrap();
        let st = fake.state();
        let rules = |iface: &str| {
            st.tables[0]
                .get(&endpoint_chain(iface, Direction::Ingress))
                .cloned()
                .unwrap_or_default()
        };
        let logs = |iface: &str| {
            let rules = rules(iface);
            let log: Vec<&String> = rules.iter().filter(|r| r.contains("NFLOG")).collect();
            if let Some(r) = log.first() {
                assert!(
                    r.contains("-m limit --limit 5/min ") && r.contains("--nflog-group 7"),
                    "{r}"
                );
                // Logged just before the drop, after every allow.
                let at = rules.iter().position(|x| x == *r).unwrap();
                assert_eq!(rules.get(at + 1).map(String::as_str), Some("-j DROP"));
            }
            !log.is_empty()
        };
        let case = format!("log_all={log_all} annotated={annotated}");
        assert_eq!(logs("udlxa"), want_x, "{case}: x/a {:?}", rules("udlxa"));
        assert_eq!(logs("udlya"), want_y, "{case}: y/a {:?}", rules("udlya"));
        // Pods no policy selects drop nothing, so they log nothing.
        assert!(!logs("udlxb") && !logs("udlzc"), "{case}");
    }
}

/// Chain and set names come from a 48-bit hash of text tenants choose
/// (namespace/name, selector labels). These pairs collide under that hash;
/// each object must still keep its own chain and its own set.
#[test]
fn policies_and_peer_sets_whose_names_hash_alike_keep_their_own_chains_and_sets() {
    use underlay_policy::model::{Peer, Policy, Rule};
    let world = |fake: &FakeDataplane| {
        let mut e = world_engine(fake);
        e.change(|idx| {
            for (ns, pod, role) in [("x", "b", "q9p8zoni7o20"), ("y", "b", "qrtqa5y7y30c")] {
                let p = idx.pod(&PodKey::new(ns, pod)).unwrap().clone();
                idx.apply_pod(p.label("role", role));
            }
        });
        e
    };
    let x_a = Pid { ns: 0, pod: 0 };
    let y_a = Pid { ns: 1, pod: 0 };
    let probe = |src: Pid, dst: Pid| Probe {
        src,
        dst,
        protocol: Protocol::Tcp,
        port: 80,
        family: Family::V4,
    };

    // x/qut94zsly7zq and y/q9wr7e0srw14: x/a only from x/b, y/a from anyone.
    let fake = FakeDataplane::new();
    let mut engine = world(&fake);
    let mut strict = Policy::new("x", "qut94zsly7zq", Selector::labels([("pod", "a")]));
    strict.ingress = vec![Rule::from(vec![Peer::pods(Selector::labels([(
        "pod", "b",
    )]))])];
    let mut open = Policy::new("y", "q9wr7e0srw14", Selector::labels([("pod", "a")]));
    open.ingress = vec![Rule::allow_all()];
    engine.change(|idx| {
        idx.apply_policy(strict);
        idx.apply_policy(open);
    });
    engine.sync().unwrap();
    assert!(
        forward(&fake, &probe(Pid { ns: 0, pod: 1 }, x_a)),
        "x/b -> x/a"
    );
    assert!(
        !forward(&fake, &probe(Pid { ns: 0, pod: 2 }, x_a)),
        "x/c -> x/a"
    );
    assert!(
        forward(&fake, &probe(Pid { ns: 2, pod: 2 }, y_a)),
        "z/c -> y/a"
    );

    // Peers `role=q9p8zoni7o20` in x and `role=qrtqa5y7y30c` in y.
    let fake = FakeDataplane::new();
    let mut engine = world(&fake);
    let from_role = |ns: &str, role: &str| {
        let mut p = Policy::new(ns, "from-role", Selector::labels([("pod", "a")]));
        p.ingress = vec![Rule::from(vec![Peer::pods(Selector::labels([(
            "role", role,
        )]))])];
        p
    };
    engine.change(|idx| {
        idx.apply_policy(from_role("x", "q9p8zoni7o20"));
        idx.apply_policy(from_role("y", "qrtqa5y7y30c"));
    });
    engine.sync().unwrap();
    assert!(
        forward(&fake, &probe(Pid { ns: 0, pod: 1 }, x_a)),
        "x/b -> x/a"
    );
    assert!(
        !forward(&fake, &probe(Pid { ns: 1, pod: 1 }, x_a)),
        "y/b -> x/a"
    );
    assert!(
        forward(&fake, &probe(Pid { ns: 1, pod: 1 }, y_a)),
        "y/b -> y/a"
    );
    assert!(
        !forward(&fake, &probe(Pid { ns: 0, pod: 1 }, y_a)),
        "x/b -> y/a"
    );
}

/// kube-proxy inserts its jumps at the top of FORWARD, INPUT and OUTPUT;
/// `KUBE-FORWARD` accepts packets marked for masquerade (and established
/// ones) before our policy sees them, so repair moves our hooks back above.
#[test]
fn repair_moves_our_hooks_back_above_kube_proxys_reinserted_jumps() {
    use support::{KUBE_MARK_MASQ, kube_proxy_reinserts_its_jumps};
    use underlay_policy::Dataplane;
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let s = &scenarios::all()[6]; // x/a ingress only from pods b of x
    engine.change(|idx| scenarios::prepare(idx, s));
    engine.sync().unwrap();
    let (y_a, x_a) = (Pid { ns: 1, pod: 0 }, Pid { ns: 0, pod: 0 });
    let masqueraded = |fake: &FakeDataplane| {
        let mut pkt = Packet {
            iif: Some(y_a.interface()),
            oif: Some(x_a.interface()),
            src: y_a.ip(Family::V4),
            dst: x_a.ip(Family::V4),
            protocol: Protocol::Tcp,
            dport: 80,
            mark: KUBE_MARK_MASQ,
        };
        verdict(fake, Family::V4, "FORWARD", &mut pkt)
    };
    assert_eq!(masqueraded(&fake), Verdict::Drop);

    fake.clone()
        .restore_filter(Family::V4, &kube_proxy_reinserts_its_jumps())
        .unwrap();
    assert_eq!(
        masqueraded(&fake),
        Verdict::Accept,
        "the stand-in must bypass"
    );
    let report = engine.repair().unwrap();
    assert!(report.repaired, "{report:?}");
    assert_eq!(masqueraded(&fake), Verdict::Drop, "y/a -> x/a after repair");
    let st = fake.state();
    for (builtin, ours) in underlay_policy::compile::HOOKS {
        let rules = &st.tables[0][builtin];
        assert!(
            rules[0].ends_with(&format!("-j {ours}")),
            "{builtin}: {rules:?}"
        );
        let jumps = rules.iter().filter(|r| r.ends_with(&format!("-j {ours}")));
        assert_eq!(jumps.count(), 1, "{builtin}: {rules:?}");
        assert!(rules.len() > 1, "kube-proxy's jumps stay: {rules:?}");
    }
    drop(st);
    assert!(engine.repair().unwrap().wrote_nothing());
}

/// After a restart the agent restores every recorded endpoint, but a pod
/// deleted meanwhile has no Pod object: nothing says which policies select
/// it, so it is denied both ways until the pod is known again.
#[test]
fn an_endpoint_whose_pod_is_unknown_is_denied_until_the_pod_is_known() {
    use underlay_policy::model::{Endpoint, Pod};
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let ghost = Endpoint {
        pod: PodKey::new("x", "ghost"),
        interface: "udlxghost".into(),
        ips: vec!["10.88.0.99".parse().unwrap()],
        owner: underlay_policy::model::Attachment::new("sandbox-ghost", "eth0"),
    };
    engine.change(|idx| idx.apply_endpoint(ghost.clone()));
    engine.sync().unwrap();
    let x_a = Pid { ns: 0, pod: 0 };
    let packet = |iif: String, oif: String, src, dst| Packet {
        iif: Some(iif),
        oif: Some(oif),
        src,
        dst,
        protocol: Protocol::Tcp,
        dport: 80,
        mark: 0,
    };
    let both_ways = |fake: &FakeDataplane| {
        let mut to = packet(
            x_a.interface(),
            ghost.interface.clone(),
            x_a.ip(Family::V4),
            ghost.ips[0],
        );
        let mut from = packet(
            ghost.interface.clone(),
            x_a.interface(),
            ghost.ips[0],
            x_a.ip(Family::V4),
        );
        [
            verdict(fake, Family::V4, "FORWARD", &mut to),
            verdict(fake, Family::V4, "FORWARD", &mut from),
        ]
    };
    assert_eq!(both_ways(&fake), [Verdict::Drop, Verdict::Drop]);
    let eval = Evaluator::new(engine.index());
    let flow = Flow {
        protocol: 6,
        src: x_a.ip(Family::V4),
        dst: ghost.ips[0],
        sport: 40000,
        dport: 80,
    };
    assert!(!eval.allowed(&flow), "the evaluator agrees");

    engine.change(|idx| idx.apply_pod(Pod::new("x", "ghost").ip("10.88.0.99")));
    engine.sync().unwrap();
    assert_eq!(both_ways(&fake), [Verdict::Accept, Verdict::Accept]);
}

/// The chains of `family` whose names start with one of `prefixes`.
fn chains_named(fake: &FakeDataplane, family: Family, prefixes: &[&str]) -> Vec<String> {
    fake.state().tables[family.index()]
        .keys()
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
        .cloned()
        .collect()
}

#[test]
fn a_single_stack_pod_has_no_chain_in_its_other_family_which_its_changes_leave_alone() {
    use underlay_policy::index::Index;
    use underlay_policy::model::Pod;
    use underlay_policy::model::{Attachment, Endpoint, Rule};
    let s = &scenarios::all()[3]; // both directions denied in x
    // Every endpoint holds only its IPv4 address, as in a single-stack
    // cluster (the Pod objects keep both: the endpoint decides).
    let single_stack = |idx: &mut Index| {
        load_world(idx);
        for p in Pid::all() {
            let mut ep = p.endpoint();
            ep.ips.retain(|ip| ip.is_ipv4());
            idx.apply_endpoint(ep);
        }
        scenarios::prepare(idx, s);
    };
    let allow = |idx: &mut Index| {
        idx.apply_policy(scenarios::ingress_policy(
            "x",
            "allow",
            Selector::everything(),
            vec![Rule::allow_all()],
        ))
    };
    let new_pod = |idx: &mut Index| {
        idx.apply_pod(Pod::new("x", "new").ip("10.88.0.77"));
        idx.apply_endpoint(Endpoint {
            pod: PodKey::new("x", "new"),
            interface: "udlxnew".into(),
            ips: vec!["10.88.0.77".parse().unwrap()],
            owner: Attachment::new("sandbox-new", "eth0"),
        });
    };
    let fake = FakeDataplane::new();
    let mut first = engine(&fake);
    first.change(single_stack);
    first.sync().unwrap();

    let v4: Vec<Probe> = Probe::all()
        .into_iter()
        .filter(|p| p.family == Family::V4)
        .collect();
    let bad = mismatches(&v4, |p| forward(&fake, p), &*s.expect);
    assert!(bad.is_empty(), "IPv4 truth table: {bad:?}");

    // IPv6 holds no endpoint's chain, no policy's chain and no set: no
    // endpoint has an IPv6 address, and the dispatch chains hold no entry.
    let policy_chains = ["UDL-PI-", "UDL-PE-", "UDL-CI-", "UDL-CE-"];
    assert_eq!(
        chains_named(&fake, Family::V6, &policy_chains),
        Vec::<String>::new()
    );
    let endpoint_chains = ["UDL-I-", "UDL-E-", "UDL-AI-", "UDL-AE-"];
    assert_eq!(
        chains_named(&fake, Family::V6, &endpoint_chains),
        Vec::<String>::new()
    );
    for dispatch in ["UDL-FROM-POD", "UDL-TO-POD"] {
        let rules = fake.state().tables[Family::V6.index()][dispatch].clone();
        assert_eq!(rules, vec!["-j DROP".to_string()], "{dispatch}");
    }
    let v6_sets: Vec<String> = fake
        .state()
        .sets
        .iter()
        .filter(|(_, s)| s.family == "inet6")
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(v6_sets, Vec::<String>::new());

    // An IPv6 packet of a pod without an IPv6 address is dropped, selected
    // or not: the dispatch knows no such pod in IPv6.
    let v6 = |src: Pid, dst: Pid| Probe {
        src,
        dst,
        protocol: Protocol::Tcp,
        port: 80,
        family: Family::V6,
    };
    let (x_a, y_a, z_a) = (
        Pid { ns: 0, pod: 0 },
        Pid { ns: 1, pod: 0 },
        Pid { ns: 2, pod: 0 },
    );
    assert!(!forward(&fake, &v6(x_a, y_a)), "egress of x/a in IPv6");
    assert!(!forward(&fake, &v6(y_a, x_a)), "ingress of x/a in IPv6");
    assert!(!forward(&fake, &v6(y_a, z_a)), "unselected pods too");

    // A policy change that selects no other pod writes IPv4 only.
    let before = fake.state().calls.len();
    first.change(allow);
    first.sync().unwrap();
    let families: Vec<Family> = fake.state().calls[before..]
        .iter()
        .filter_map(|c| match c {
            Call::RestoreFilter(f, _) => Some(*f),
            _ => None,
        })
        .collect();
    assert_eq!(families, vec![Family::V4]);
    assert!(!chains_named(&fake, Family::V4, &policy_chains).is_empty());
    assert_eq!(
        chains_named(&fake, Family::V6, &policy_chains),
        Vec::<String>::new()
    );
    assert!(forward(
        &fake,
        &Probe {
            family: Family::V4,
            ..v6(y_a, x_a)
        }
    ));
    assert!(!forward(&fake, &v6(y_a, x_a)), "still closed in IPv6");

    // A new pod without an IPv6 address writes IPv4 alone.
    let before = fake.state().calls.len();
    first.change(new_pod);
    first.sync().unwrap();
    let scripts: Vec<(Family, String)> = fake.state().calls[before..]
        .iter()
        .filter_map(|c| match c {
            Call::RestoreFilter(f, s) => Some((*f, s.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(scripts.len(), 1, "{scripts:?}");
    assert_eq!(scripts[0].0, Family::V4);
    assert!(scripts[0].1.contains("udlxnew"), "{}", scripts[0].1);

    // A restarted engine adopts the closed chains without writing.
    let mut restarted = engine(&fake);
    restarted.change(|idx| {
        single_stack(idx);
        allow(idx);
        new_pod(idx);
    });
    let report = restarted.sync().unwrap();
    assert!(report.wrote_nothing(), "{report:?}");

    // Someone lets the pod's IPv6 packets through the dispatch: repair
    // takes the entry out again.
    {
        let mut st = fake.state();
        let rules = st.tables[Family::V6.index()]
            .get_mut("UDL-FROM-POD")
            .unwrap();
        rules.insert(0, format!("-i {} -j ACCEPT", x_a.interface()));
    }
    assert!(forward(&fake, &v6(x_a, y_a)), "the edit opened it");
    let report = first.repair().unwrap();
    assert!(report.repaired, "{report:?}");
    assert!(!forward(&fake, &v6(x_a, y_a)), "repair closes it");
}

#[test]
fn the_peers_many_policies_allow_on_every_port_are_matched_by_the_endpoint_chain_at_once() {
    use underlay_policy::model::{Peer, Policy, Rule};
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let x_a = Pid { ns: 0, pod: 0 };
    let block_policy = |i: usize| {
        let mut p = Policy::new("x", &format!("block-{i}"), Selector::labels([("pod", "a")]));
        let cidr = format!("172.{}.{}.0/24", 16 + i / 256, i % 256);
        p.ingress = vec![Rule::from(vec![Peer::block(&cidr, &[])])];
        p
    };
    let from = |src: &str| {
        // Arriving from the fabric, not from a pod interface.
        let mut pkt = Packet {
            iif: Some("eth0".into()),
            oif: Some(x_a.interface()),
            src: src.parse().unwrap(),
            dst: x_a.ip(Family::V4),
            protocol: Protocol::Tcp,
            dport: 80,
            mark: 0,
        };
        verdict(&fake, Family::V4, "FORWARD", &mut pkt)
    };
    let ingress_chain = || fake.state().tables[0][&format!("UDL-I-{}", x_a.interface())].clone();
    let mut lengths = Vec::new();
    for count in [20, 200] {
        engine.change(|idx| {
            for i in 0..count {
                idx.apply_policy(block_policy(i));
            }
            // Two more naming the same pods: one rule for both.
            for name in ["pods-b", "pods-b-too"] {
                let mut p = Policy::new("x", name, Selector::labels([("pod", "a")]));
                p.ingress = vec![Rule::from(vec![Peer::pods(Selector::labels([(
                    "pod", "b",
                )]))])];
                idx.apply_policy(p);
            }
        });
        engine.sync().unwrap();
        lengths.push(ingress_chain().len());
        assert_eq!(from("172.16.7.9"), Verdict::Accept);
        assert_eq!(
            from(&format!(
                "172.{}.{}.1",
                16 + (count - 1) / 256,
                (count - 1) % 256
            )),
            Verdict::Accept
        );
        assert_eq!(from("172.31.250.1"), Verdict::Drop);
        let mut from_b = Packet {
            iif: Some(Pid { ns: 0, pod: 1 }.interface()),
            oif: Some(x_a.interface()),
            src: Pid { ns: 0, pod: 1 }.ip(Family::V4),
            dst: x_a.ip(Family::V4),
            protocol: Protocol::Tcp,
            dport: 80,
            mark: 0,
        };
        assert_eq!(
            verdict(&fake, Family::V4, "FORWARD", &mut from_b),
            Verdict::Accept
        );
    }
    // The chain does not grow with the policies, and none of them keeps a
    // chain of its own.
    assert_eq!(lengths[0], lengths[1], "{:?}", ingress_chain());
    assert!(lengths[1] <= 5, "{:?}", ingress_chain());
    assert_eq!(
        chains_named(&fake, Family::V4, &["UDL-PI-"]),
        Vec::<String>::new()
    );

    // An exception of one policy is no exception for another that allows
    // the same addresses: the union of what each allows.
    engine.change(|idx| {
        let mut p = Policy::new("x", "except", Selector::labels([("pod", "a")]));
        p.ingress = vec![Rule::from(vec![Peer::block(
            "10.50.0.0/16",
            &["10.50.1.0/24"],
        )])];
        idx.apply_policy(p);
    });
    engine.sync().unwrap();
    assert_eq!(from("10.50.2.1"), Verdict::Accept);
    assert_eq!(from("10.50.1.5"), Verdict::Drop, "excepted");
    engine.change(|idx| {
        let mut p = Policy::new("x", "inner", Selector::labels([("pod", "a")]));
        p.ingress = vec![Rule::from(vec![Peer::block("10.50.1.0/25", &[])])];
        idx.apply_policy(p);
    });
    engine.sync().unwrap();
    assert_eq!(
        from("10.50.1.5"),
        Verdict::Accept,
        "allowed by the other policy"
    );
    assert_eq!(
        from("10.50.1.200"),
        Verdict::Drop,
        "excepted, allowed by none"
    );
    // Everything (a /0, which hash:net holds as two halves).
    engine.change(|idx| {
        let mut p = Policy::new("x", "all", Selector::labels([("pod", "a")]));
        p.ingress = vec![Rule::from(vec![Peer::block("0.0.0.0/0", &[])])];
        idx.apply_policy(p);
    });
    engine.sync().unwrap();
    assert_eq!(from("10.50.1.200"), Verdict::Accept);
    assert_eq!(from("203.0.113.9"), Verdict::Accept);
}

/// The rule scripts the fake received from call `from` on.
fn scripts_since(fake: &FakeDataplane, from: usize) -> Vec<String> {
    fake.state().calls[from..]
        .iter()
        .filter_map(|c| match c {
            Call::RestoreFilter(_, script) => Some(script.clone()),
            _ => None,
        })
        .collect()
}

/// No script holds an xtables extension iptables-nft would instantiate
/// (`set` match, `MARK` target, `comment` match).
fn native(scripts: &[String]) -> bool {
    let extensions = ["-m set ", "-j MARK ", "-m comment "];
    scripts
        .iter()
        .all(|s| extensions.iter().all(|e| !s.contains(e)))
}

/// With iptables-nft, a `set` match, a `MARK` target or a `comment` match
/// is an xtables extension, and writing one makes the kernel first wait for
/// the release of the previous transaction's rules (milliseconds after a
/// deletion). A pod coming or going whose peers another pod already has
/// writes native rules only: the peers' set matches live in a shared chain,
/// the verdict is cleared by a jump to a shared chain, and its chains carry
/// their rules instead of a digest comment.
#[test]
fn a_pod_whose_peers_chain_exists_comes_and_goes_writing_native_rules_only() {
    use underlay_policy::model::{Attachment, Endpoint, Peer, Pod, Policy, Rule};
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    // Every pod of x admits x's pods b, on every port.
    let mut p = Policy::new("x", "from-b", Selector::everything());
    p.ingress = vec![Rule::from(vec![Peer::pods(Selector::labels([(
        "pod", "b",
    )]))])];
    engine.change(|idx| idx.apply_policy(p));
    engine.sync().unwrap();

    let new = Endpoint {
        pod: PodKey::new("x", "d"),
        interface: "udlxd".into(),
        ips: vec!["10.88.0.77".parse().unwrap()],
        owner: Attachment::new("sandbox-xd", "eth0"),
    };
    let before = fake.state().calls.len();
    engine.change(|idx| {
        idx.apply_pod(Pod::new("x", "d").label("pod", "d").ip("10.88.0.77"));
        idx.apply_endpoint(new.clone());
    });
    engine.sync().unwrap();
    let added = scripts_since(&fake, before);
    assert!(added.iter().any(|s| s.contains("udlxd")), "{added:?}");
    assert!(native(&added), "an extension for the new pod: {added:?}");
    let to_new = |src: Pid| -> bool {
        let mut pkt = Packet {
            iif: Some(src.interface()),
            oif: Some("udlxd".into()),
            src: src.ip(Family::V4),
            dst: "10.88.0.77".parse().unwrap(),
            protocol: Protocol::Tcp,
            dport: 80,
            mark: 0,
        };
        verdict(&fake, Family::V4, "FORWARD", &mut pkt) == Verdict::Accept
    };
    assert!(to_new(Pid { ns: 0, pod: 1 }), "x/b -> x/d");
    assert!(!to_new(Pid { ns: 0, pod: 2 }), "x/c -> x/d");
    assert!(!to_new(Pid { ns: 1, pod: 1 }), "y/b -> x/d");

    let before = fake.state().calls.len();
    engine.change(|idx| idx.delete_endpoint("udlxd", &new.owner));
    engine.sync().unwrap();
    let removed = scripts_since(&fake, before);
    assert!(removed.iter().any(|s| s.contains("udlxd")), "{removed:?}");
    assert!(
        native(&removed),
        "an extension when the pod went: {removed:?}"
    );
}

/// A policy or a cluster policy whose port changes rewrites its chain with
/// native rules only: the set matches of its peers and named ports live in
/// shared `UDL-M-` chains named after their rules, which the change leaves
/// as they are, and its rules go to the verdict's chain instead of setting
/// the mark themselves.
#[test]
fn a_policy_or_cluster_policy_whose_port_changes_writes_native_rules_only() {
    use underlay_policy::cluster::{
        Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Tier,
    };
    use underlay_policy::model::{Peer, Policy, PortMatch, Rule};
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    let ns = |name: &str| Selector::labels([("ns", name)]);
    // x/a admits x/b on one numeric port and on its named port "web" (80).
    let allow = |port: u16| {
        let mut p = Policy::new("x", "from-b", Selector::labels([("pod", "a")]));
        p.ingress = vec![
            Rule::from(vec![Peer::pods(Selector::labels([("pod", "b")]))]).ports(vec![
                PortMatch::tcp(port),
                PortMatch::named(Protocol::Tcp, "web"),
            ]),
        ];
        p
    };
    // Pods of y may not reach pods of x on one port.
    let guard = |port: u16| {
        let mut p = ClusterPolicy::new("guard", Tier::Admin, 10, ns("x"));
        p.ingress = vec![
            ClusterRule::new(
                Action::Deny,
                vec![ClusterPeer::Pods {
                    namespaces: ns("y"),
                    pods: Selector::everything(),
                }],
            )
            .ports(vec![ClusterPort::Port(PortMatch::tcp(port))]),
        ];
        p
    };
    let reaches = |fake: &FakeDataplane, src: Pid, dst: Pid, dport: u16| -> bool {
        let mut pkt = Packet {
            iif: Some(src.interface()),
            oif: Some(dst.interface()),
            src: src.ip(Family::V4),
            dst: dst.ip(Family::V4),
            protocol: Protocol::Tcp,
            dport,
            mark: 0,
        };
        verdict(fake, Family::V4, "FORWARD", &mut pkt) == Verdict::Accept
    };
    let (xa, xb, yb) = (
        Pid { ns: 0, pod: 0 },
        Pid { ns: 0, pod: 1 },
        Pid { ns: 1, pod: 1 },
    );
    engine.change(|idx| {
        idx.apply_policy(allow(82));
        idx.apply_cluster_policy(guard(81));
    });
    engine.sync().unwrap();
    assert!(reaches(&fake, xb, xa, 82) && reaches(&fake, xb, xa, 80));
    assert!(!reaches(&fake, xb, xa, 83));
    assert!(!reaches(&fake, yb, xb, 81) && reaches(&fake, yb, xb, 80));

    // Applies a change that moves a rule to `port`: the chain is written
    // with the new port and no extension.
    let mut moves_to = |port: u16, change: &dyn Fn(&mut underlay_policy::index::Index)| {
        let before = fake.state().calls.len();
        engine.change(change);
        engine.sync().unwrap();
        let written = scripts_since(&fake, before);
        let dport = format!("--dport {port}");
        assert!(written.iter().any(|s| s.contains(&dport)), "{written:?}");
        assert!(native(&written), "an extension for a port: {written:?}");
    };
    moves_to(83, &|idx| idx.apply_policy(allow(83)));
    assert!(reaches(&fake, xb, xa, 83) && reaches(&fake, xb, xa, 80));
    assert!(!reaches(&fake, xb, xa, 82));
    moves_to(80, &|idx| idx.apply_cluster_policy(guard(80)));
    assert!(!reaches(&fake, yb, xb, 80) && reaches(&fake, yb, xb, 81));
}

#[test]
fn the_policies_selecting_a_pod_are_asked_through_one_chain_pods_selected_alike_share() {
    use underlay_policy::model::{Attachment, Endpoint, Peer, Pod, Policy, PortMatch, Rule};
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    // Three policies select every pod of x, each allowing pods b on a port
    // of its own.
    engine.change(|idx| {
        for i in 0..3u16 {
            let mut p = Policy::new("x", &format!("port-{i}"), Selector::everything());
            let mut rule = Rule::from(vec![Peer::pods(Selector::labels([("pod", "b")]))]);
            rule.ports = vec![PortMatch::tcp(80 + i)];
            p.ingress = vec![rule];
            idx.apply_policy(p);
        }
    });
    engine.sync().unwrap();
    let ingress = |pod: usize| {
        let iface = Pid { ns: 0, pod }.interface();
        fake.state().tables[0][&format!("UDL-I-{iface}")].clone()
    };
    let groups = |rules: &[String]| -> Vec<String> {
        (rules.iter())
            .filter(|r| r.starts_with("-j UDL-G-"))
            .cloned()
            .collect()
    };
    let (a, c) = (ingress(0), ingress(2));
    assert_eq!(groups(&a).len(), 1, "{a:?}");
    assert_eq!(groups(&a), groups(&c), "one group chain for both");
    assert!(a.len() <= 5, "{a:?}");
    let group = groups(&a)[0].trim_start_matches("-j ").to_string();
    let group_rules = fake.state().tables[0][&group].clone();
    let asked = (group_rules.iter()).filter(|r| r.starts_with("-j UDL-PI-"));
    assert_eq!(asked.count(), 3, "{group_rules:?}");

    // Each policy still allows what it allows, and nothing more.
    let to_a = |from: usize, port: u16| {
        let probe = Probe {
            src: Pid { ns: 0, pod: from },
            dst: Pid { ns: 0, pod: 0 },
            protocol: Protocol::Tcp,
            port,
            family: Family::V4,
        };
        forward(&fake, &probe)
    };
    for port in [80, 81, 82] {
        assert!(to_a(1, port), "b to a on {port}");
        assert!(!to_a(2, port), "c to a on {port}");
    }
    assert!(!to_a(1, 83), "b to a on 83");

    // A new pod of x writes its own chains and dispatch entries only: the
    // group chain and the policies' chains are there already.
    let before = fake.state().calls.len();
    engine.change(|idx| {
        idx.apply_pod(Pod::new("x", "new").label("pod", "new").ip("10.88.0.77"));
        idx.apply_endpoint(Endpoint {
            pod: PodKey::new("x", "new"),
            interface: "udlxnew".into(),
            ips: vec!["10.88.0.77".parse().unwrap()],
            owner: Attachment::new("sandbox-new", "eth0"),
        });
    });
    engine.sync().unwrap();
    let scripts = scripts_since(&fake, before);
    assert_eq!(scripts.len(), 1, "{scripts:?}");
    let declared: Vec<&str> = (scripts[0].lines())
        .filter(|l| l.starts_with(':'))
        .collect();
    assert_eq!(declared.len(), 2, "{}", scripts[0]);
    assert!(
        declared.iter().all(|l| l.contains("udlxnew")),
        "{}",
        scripts[0]
    );
    assert!(scripts[0].lines().count() <= 16, "{}", scripts[0]);
}

/// A pod whose peers no other pod has gets a peers chain of its own, with
/// `set` matches. When it goes, the chain stays unused (no rule jumps to
/// it, so no packet reaches it) with the sets it matches, and the pod's
/// removal deletes native rules only; a pod with the same peers takes the
/// chain up again without writing an extension. A repair deletes unused
/// chains without calling them a difference, and so does a change that
/// leaves more than `MAX_UNUSED_PEERS_CHAINS` of them.
#[test]
fn an_unused_peers_chain_stays_until_a_repair_or_too_many_and_comes_back_unwritten() {
    use std::net::Ipv4Addr;
    use underlay_policy::engine::MAX_UNUSED_PEERS_CHAINS;
    use underlay_policy::model::{Attachment, Endpoint, Peer, Pod, Policy, Rule};
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake);
    // Pod x/n<i>, labelled `uid=<i>`, admits pods labelled `peer=<i>`: a
    // peers chain no other pod shares.
    engine.change(|idx| {
        for i in 0..=MAX_UNUSED_PEERS_CHAINS {
            let mut p = Policy::new(
                "x",
                &format!("own-{i}"),
                Selector::labels([("uid", &*i.to_string())]),
            );
            p.ingress = vec![Rule::from(vec![Peer::pods(Selector::labels([(
                "peer",
                &*i.to_string(),
            )]))])];
            idx.apply_policy(p);
        }
    });
    engine.sync().unwrap();
    let endpoint = |i: usize| Endpoint {
        pod: PodKey::new("x", format!("n{i}")),
        interface: format!("udlxn{i}"),
        ips: vec![format!("10.88.1.{i}").parse().unwrap()],
        owner: Attachment::new(format!("sandbox-n{i}"), "eth0"),
    };
    let come = |engine: &mut Engine<FakeDataplane>, i: usize| {
        engine.change(|idx| {
            let pod = Pod::new("x", &format!("n{i}"))
                .label("uid", &i.to_string())
                .ip(&format!("10.88.1.{i}"));
            idx.apply_pod(pod);
            idx.apply_endpoint(endpoint(i));
        });
        engine.sync().unwrap()
    };
    let go = |engine: &mut Engine<FakeDataplane>, i: usize| {
        engine.change(|idx| idx.delete_endpoint(&format!("udlxn{i}"), &endpoint(i).owner));
        engine.sync().unwrap()
    };
    let peers_chains = || chains_named(&fake, Family::V4, &["UDL-M-"]);
    let sets = || fake.state().sets.len();
    let (chains_before, sets_before) = (peers_chains(), sets());

    let before = fake.state().calls.len();
    come(&mut engine, 0);
    assert!(!native(&scripts_since(&fake, before)), "a new peers chain");
    let with_pod = peers_chains();
    assert_eq!(with_pod.len(), chains_before.len() + 1);
    let own_sets = sets();
    assert!(own_sets > sets_before);

    let before = fake.state().calls.len();
    let report = go(&mut engine, 0);
    assert!(native(&scripts_since(&fake, before)), "the removal");
    assert_eq!(peers_chains(), with_pod, "the chain stays, unused");
    assert_eq!(sets(), own_sets, "and the sets it matches");
    assert_eq!(
        report.sets_destroyed + report.sets_deferred,
        0,
        "{report:?}"
    );

    let before = fake.state().calls.len();
    come(&mut engine, 0);
    let back = scripts_since(&fake, before);
    assert!(native(&back), "taken up again unwritten: {back:?}");
    let writes_peers_chain = |s: &String| s.contains(":UDL-M-") || s.contains("-A UDL-M-");
    assert!(!back.iter().any(writes_peers_chain), "{back:?}");
    let packet = |src: Ipv4Addr| {
        let mut pkt = Packet {
            iif: Some("eth0".into()),
            oif: Some("udlxn0".into()),
            src: src.into(),
            dst: "10.88.1.0".parse().unwrap(),
            protocol: Protocol::Tcp,
            dport: 80,
            mark: 0,
        };
        verdict(&fake, Family::V4, "FORWARD", &mut pkt)
    };
    assert_eq!(packet(Ipv4Addr::new(203, 0, 113, 1)), Verdict::Drop);

    // Gone again: a repair deletes the unused chain and then its sets (the
    // kernel holds a set a moment after its last rule went: the next sync
    // destroys it), and finds nothing else to repair.
    go(&mut engine, 0);
    let report = engine.repair().unwrap();
    assert!(!report.repaired, "{report:?}");
    assert_eq!(peers_chains(), chains_before);
    assert!(
        report.sets_destroyed + report.sets_deferred > 0,
        "{report:?}"
    );
    engine.sync().unwrap();
    assert_eq!(sets(), sets_before);

    // One more than the limit: all of them go in one change.
    for i in 0..=MAX_UNUSED_PEERS_CHAINS {
        come(&mut engine, i);
    }
    for i in 0..MAX_UNUSED_PEERS_CHAINS {
        go(&mut engine, i);
    }
    let most = peers_chains().len();
    assert_eq!(most, chains_before.len() + MAX_UNUSED_PEERS_CHAINS + 1);
    let report = go(&mut engine, MAX_UNUSED_PEERS_CHAINS);
    assert_eq!(peers_chains(), chains_before, "{report:?}");
    engine.sync().unwrap();
    assert_eq!(sets(), sets_before);
}

//! ClusterNetworkPolicy in the engine, without root: what a change writes
//! (only the changed policy's chain), the sets it shares with
//! NetworkPolicy, Nodes feeding `nodes` peers, conntrack cleanup of
//! connections a cluster policy newly denies, and deny logging of the
//! tiers' drops. The truth tables themselves run with every other scenario
//! (`support::cluster_scenarios`).

mod support;

use support::{Pid, load_world};
use underlay_policy::cluster::{Action, ClusterPeer, ClusterPolicy, ClusterRule, Node, Tier};
use underlay_policy::compile::endpoint_chain;
use underlay_policy::dataplane::{Call, FakeDataplane};
use underlay_policy::eval::Flow;
use underlay_policy::kernel_trace::{Packet, Verdict};
use underlay_policy::metrics::Metrics;
use underlay_policy::model::{Direction, Family, Peer, Policy, Protocol, Rule, Selector};
use underlay_policy::{Config, Engine};

fn world_engine(fake: &FakeDataplane, config: Config) -> Engine<FakeDataplane> {
    let mut e = Engine::new(fake.clone(), config, Metrics::default());
    e.change(load_world);
    e
}

fn ns(name: &str) -> Selector {
    Selector::labels([("ns", name)])
}

fn deny_from(name: &str, subject: &str, from: &str) -> ClusterPolicy {
    let mut p = ClusterPolicy::new(name, Tier::Admin, 10, ns(subject));
    p.ingress = vec![ClusterRule::new(
        Action::Deny,
        vec![ClusterPeer::Pods {
            namespaces: ns(from),
            pods: Selector::everything(),
        }],
    )];
    p
}

/// The chains the last `iptables-restore` of IPv4 wrote.
fn chains_written(fake: &FakeDataplane) -> Vec<String> {
    let st = fake.state();
    let Some(script) = st.calls.iter().rev().find_map(|c| match c {
        Call::RestoreFilter(Family::V4, s) => Some(s.clone()),
        _ => None,
    }) else {
        return Vec::new();
    };
    let mut chains: Vec<String> = script
        .lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    chains.dedup();
    chains
}

#[test]
fn a_cluster_policy_change_rewrites_only_its_own_chain() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake, Config::default());
    engine.change(|idx| {
        idx.apply_cluster_policy(deny_from("one", "x", "y"));
        idx.apply_cluster_policy(deny_from("two", "y", "z"));
    });
    engine.sync().unwrap();
    // "one" now denies from z instead of y: the same endpoints, the same
    // chains jump to it; only its own chain's rules (and no endpoint's)
    // change. Its set is a new one (pods of z), which "two" already uses.
    engine.change(|idx| idx.apply_cluster_policy(deny_from("one", "x", "z")));
    let report = engine.sync().unwrap();
    let written = chains_written(&fake);
    assert_eq!(written.len(), 1, "{written:?} {report:?}");
    assert!(written[0].starts_with("UDL-CI-"), "{written:?}");
    assert_eq!(
        report.sets_created, 0,
        "the set of z's pods is shared: {report:?}"
    );
}

#[test]
fn cluster_policies_share_peer_sets_with_network_policies() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake, Config::default());
    let mut np = Policy::new("x", "from-y", Selector::everything());
    np.ingress = vec![Rule::from(vec![Peer::both(
        ns("y"),
        Selector::everything(),
    )])];
    engine.change(|idx| {
        idx.apply_policy(np);
        idx.apply_cluster_policy(deny_from("cnp", "z", "y"));
    });
    engine.sync().unwrap();
    // One set per family for "pods of namespaces labelled ns=y".
    let st = fake.state();
    let pods_of_y: Vec<&String> = st
        .sets
        .iter()
        .filter(|(_, s)| {
            s.members
                .contains(&Pid { ns: 1, pod: 0 }.ip(Family::V4).to_string())
        })
        .map(|(n, _)| n)
        .collect();
    assert_eq!(pods_of_y.len(), 1, "{pods_of_y:?}");
}

#[test]
fn a_node_changing_address_changes_only_the_nodes_set() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake, Config::default());
    let mut p = ClusterPolicy::new("no-infra", Tier::Admin, 10, ns("x"));
    p.egress = vec![ClusterRule::new(
        Action::Deny,
        vec![ClusterPeer::Nodes(Selector::labels([("role", "infra")]))],
    )];
    engine.change(|idx| {
        idx.apply_node(Node::new("n1").label("role", "infra").ip("10.0.0.4"));
        idx.apply_node(Node::new("n2").label("role", "web").ip("10.0.0.5"));
        idx.apply_cluster_policy(p);
    });
    engine.sync().unwrap();
    let has = |ip: &str| fake.state().sets.values().any(|s| s.members.contains(ip));
    assert!(has("10.0.0.4") && !has("10.0.0.5"));
    engine.change(|idx| idx.apply_node(Node::new("n1").label("role", "infra").ip("10.0.0.14")));
    let report = engine.sync().unwrap();
    assert_eq!(report.chains_written, 0, "{report:?}");
    assert!(has("10.0.0.14") && !has("10.0.0.4"));
    engine.change(|idx| idx.delete_node("n1"));
    engine.sync().unwrap();
    assert!(!has("10.0.0.14"));
}

#[test]
fn connections_a_cluster_policy_newly_denies_lose_their_conntrack_entries() {
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake, Config::default());
    engine.sync().unwrap();
    let flow = |src: Pid, dst: Pid| Flow {
        protocol: Protocol::Udp.number(),
        src: src.ip(Family::V6),
        dst: dst.ip(Family::V6),
        sport: 40000,
        dport: 81,
    };
    let (xa, ya, za) = (
        Pid { ns: 0, pod: 0 },
        Pid { ns: 1, pod: 0 },
        Pid { ns: 2, pod: 0 },
    );
    fake.state().flows = vec![flow(ya, xa), flow(za, xa), flow(xa, ya)];
    engine.change(|idx| idx.apply_cluster_policy(deny_from("deny-y", "x", "y")));
    let report = engine.sync().unwrap();
    assert_eq!(report.conntrack_removed, 1, "{report:?}");
    assert_eq!(fake.state().flows, vec![flow(za, xa), flow(xa, ya)]);
    // A Baseline Deny under a NetworkPolicy that allows changes nothing.
    let mut np = Policy::new("x", "allow-all", Selector::everything());
    np.ingress = vec![Rule::allow_all()];
    let mut base = ClusterPolicy::new("base", Tier::Baseline, 1, ns("x"));
    base.ingress = vec![ClusterRule::new(Action::Deny, vec![ClusterPeer::Anything])];
    engine.change(|idx| {
        idx.apply_policy(np);
        idx.apply_cluster_policy(base);
    });
    let report = engine.sync().unwrap();
    assert_eq!(report.conntrack_removed, 0, "{report:?}");
    // Without the NetworkPolicy the Baseline Deny cuts z -> x.
    engine.change(|idx| idx.delete_policy(&underlay_policy::model::PodKey::new("x", "allow-all")));
    let report = engine.sync().unwrap();
    assert_eq!(report.conntrack_removed, 1, "{report:?}");
    assert_eq!(fake.state().flows, vec![flow(xa, ya)]);
}

#[test]
fn drops_of_both_tiers_are_logged_when_the_namespace_asks() {
    let fake = FakeDataplane::new();
    let config = Config {
        nflog_group: 7,
        ..Config::default()
    };
    let mut engine = world_engine(&fake, config);
    let mut base = ClusterPolicy::new("base", Tier::Baseline, 1, ns("x"));
    base.ingress = vec![ClusterRule::new(Action::Deny, vec![ClusterPeer::Anything])];
    engine.change(|idx| {
        let mut x = idx.namespace("x").unwrap().clone();
        x.log_denied = true;
        idx.apply_namespace(x);
        idx.apply_cluster_policy(deny_from("admin", "x", "y"));
        idx.apply_cluster_policy(base);
    });
    engine.sync().unwrap();
    let st = fake.state();
    let chain = st.tables[0]
        .get(&endpoint_chain("udlxa", Direction::Ingress))
        .cloned()
        .unwrap();
    let logs = chain
        .iter()
        .filter(|r| r.contains("-j NFLOG ") && r.ends_with("--nflog-group 7"))
        .count();
    assert_eq!(logs, 2, "one log rule per tier's deny: {chain:?}");
    // Every logged packet is one the next rule drops.
    for (i, r) in chain
        .iter()
        .enumerate()
        .filter(|(_, r)| r.contains("NFLOG"))
    {
        let next = &chain[i + 1];
        assert!(next.ends_with("-j DROP"), "{r} then {next}");
        assert_eq!(r.split(" -m limit").next(), next.split(" -j DROP").next());
    }
    // And a packet from y to x/a is dropped by the Admin tier.
    let kernel = support::kernel_of_state(&st);
    let (ya, xa) = (Pid { ns: 1, pod: 0 }, Pid { ns: 0, pod: 0 });
    let pkt = Packet {
        iif: Some(ya.interface()),
        oif: Some(xa.interface()),
        src: ya.ip(Family::V4),
        dst: xa.ip(Family::V4),
        protocol: Protocol::Tcp,
        dport: 80,
        mark: 0,
    };
    let walk = kernel.walk(Family::V4, "FORWARD", &pkt).unwrap();
    assert_eq!(walk.verdict, Verdict::Drop, "{:?}", walk.rules);
}

/// Audit mode, exactly: a flow the enforced policies allow and the
/// audited ones (were they enforced) would deny is accepted and is an
/// audit denial; a flow the enforced policies deny is dropped and is not
/// (it is an ordinary denial); the audit chain logs what it would deny
/// with an `audit` prefix and never drops.
#[test]
fn audited_policies_report_what_they_would_deny_and_drop_nothing() {
    use underlay_policy::compile::audit_chain;
    use underlay_policy::eval::Evaluator;
    use underlay_policy::model::Mode;
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake, Config::default());
    // Enforced: x takes ingress from y only. Audited: an Admin Deny of y.
    let mut np = Policy::new("x", "from-y", Selector::everything());
    np.ingress = vec![Rule::from(vec![Peer::both(
        ns("y"),
        Selector::everything(),
    )])];
    let mut audit = deny_from("deny-y", "x", "y");
    audit.mode = Mode::Audit;
    engine.change(|idx| {
        idx.apply_policy(np);
        idx.apply_cluster_policy(audit);
    });
    engine.sync().unwrap();
    let eval = Evaluator::new(engine.index());
    for src in Pid::all() {
        for dst in Pid::all().into_iter().filter(|d| *d != src) {
            let flow = Flow {
                protocol: 6,
                src: src.ip(Family::V4),
                dst: dst.ip(Family::V4),
                sport: 40000,
                dport: 80,
            };
            let to_x = dst.ns == 0;
            let from_y = src.ns == 1;
            assert_eq!(eval.allowed(&flow), !to_x || from_y, "{src:?} -> {dst:?}");
            assert_eq!(
                eval.audit_denied(&flow),
                to_x && from_y,
                "{src:?} -> {dst:?}"
            );
        }
    }
    let st = fake.state();
    let main = &st.tables[0][&endpoint_chain("udlxa", Direction::Ingress)];
    let audit = audit_chain("udlxa", Direction::Ingress);
    assert!(
        main.iter().any(|r| r.ends_with(&format!("-g {audit}"))),
        "{main:?}"
    );
    let rules = &st.tables[0][&audit];
    assert!(
        rules
            .iter()
            .any(|r| r.contains("--nflog-prefix \"udl audit in x/a\"")),
        "{rules:?}"
    );
    assert!(!rules.iter().any(|r| r.contains("DROP")), "{rules:?}");
}

/// The script of the last `iptables-restore` of IPv4.
fn last_v4_script(fake: &FakeDataplane) -> String {
    fake.state()
        .calls
        .iter()
        .rev()
        .find_map(|c| match c {
            Call::RestoreFilter(Family::V4, s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// A pod attaching or leaving edits the dispatch chains in place: its
/// entries are inserted (or deleted) and no existing chain is flushed,
/// which is what makes `iptables-restore` read the whole table first. A
/// dispatch chain someone else changed is rewritten whole by repair.
#[test]
fn a_pod_attaching_or_leaving_flushes_no_existing_chain() {
    use underlay_policy::compile::{FROM_POD, TO_POD};
    let fake = FakeDataplane::new();
    let mut engine = world_engine(&fake, Config::default());
    engine.sync().unwrap();
    let extra = Pid { ns: 0, pod: 0 };
    let mut ep = extra.endpoint();
    ep.interface = "udlnew".into();
    ep.owner = underlay_policy::model::Attachment::new("sandbox-new", "eth0");
    engine.change(|idx| idx.apply_endpoint(ep.clone()));
    engine.sync().unwrap();
    let add = last_v4_script(&fake);
    assert!(
        add.contains(&format!("-I {FROM_POD} 1 -i udlnew -g UDL-E-udlnew")),
        "{add}"
    );
    assert!(
        add.contains(&format!("-I {TO_POD} 1 -o udlnew -g UDL-I-udlnew")),
        "{add}"
    );
    assert!(
        !add.lines().any(|l| l.starts_with(&format!(":{FROM_POD}")) || l.starts_with(&format!(":{TO_POD}"))),
        "a dispatch chain was flushed: {add}"
    );
    // The chains on the node are what a full rewrite would give.
    let st = fake.state();
    let from: Vec<&String> = st.tables[0][FROM_POD].iter().collect();
    assert_eq!(from.last().map(|s| s.as_str()), Some("-j DROP"));
    assert_eq!(from.len(), Pid::all().len() + 2);
    drop(st);
    engine.change(|idx| idx.delete_endpoint("udlnew", &ep.owner));
    engine.sync().unwrap();
    let del = last_v4_script(&fake);
    assert!(
        del.contains(&format!("-D {FROM_POD} -i udlnew -g UDL-E-udlnew")),
        "{del}"
    );
    assert!(
        !del.lines().any(|l| l == format!(":{FROM_POD} - [0:0]")),
        "{del}"
    );
    // Someone appends after our drop: repair rewrites the chain whole.
    fake.state().tables[0]
        .get_mut(FROM_POD)
        .unwrap()
        .push("-j ACCEPT".into());
    let report = engine.repair().unwrap();
    assert!(report.repaired, "{report:?}");
    let st = fake.state();
    assert_eq!(
        st.tables[0][FROM_POD].last().map(|s| s.as_str()),
        Some("-j DROP")
    );
    assert_eq!(st.tables[0][FROM_POD].len(), Pid::all().len() + 1);
}

//! Policy scenarios and their truth tables. Each truth table is written by
//! hand from the API reference's wording, never derived from the engine.

use super::{Pid, Probe, namespace};
use serde_json::json;
use underlay_policy::cluster::{ClusterPolicy, Node};
use underlay_policy::index::Index;
use underlay_policy::model::{
    Expression, Family, Mode, Peer, Policy, PolicyTypes, PortMatch, Protocol, Rule, Selector,
};

pub type Expect = Box<dyn Fn(&Probe) -> bool + Send + Sync>;

pub enum Op {
    Apply(Policy),
    /// A ClusterNetworkPolicy, created or replaced.
    Cluster(ClusterPolicy),
    DeleteCluster(&'static str),
    /// A Node, created or replaced.
    NodeUpdate(Node),
    /// The agent's default policy mode.
    DefaultMode(Mode),
    /// A policy as JSON, through the same conversion the watcher uses.
    Json(serde_json::Value),
    Delete(&'static str, &'static str),
    /// Replace the `pod` label of a pod.
    Relabel(&'static str, &'static str),
    /// Set (Some) or remove (None) a label of a namespace.
    NsLabel(usize, &'static str, Option<&'static str>),
    NsLog(usize, bool),
}

pub struct Scenario {
    pub name: &'static str,
    /// Continue from the previous scenario's state instead of the world.
    pub chained: bool,
    pub ops: Vec<Op>,
    pub expect: Expect,
}

fn pid(s: &str) -> Pid {
    Pid::all()
        .into_iter()
        .find(|p| p.is(s))
        .expect("pod of the world")
}

/// Puts the world back: default labels, no policies.
pub fn reset(idx: &mut Index) {
    for key in idx.policy_keys() {
        idx.delete_policy(&key);
    }
    idx.replace_cluster_policies(Vec::new());
    idx.replace_nodes(Vec::new());
    idx.set_default_mode(Mode::Enforce);
    for i in 0..3 {
        idx.apply_namespace(namespace(i));
    }
    for p in Pid::all() {
        idx.apply_pod(p.pod());
    }
}

pub fn apply(idx: &mut Index, op: &Op) {
    match op {
        Op::Apply(p) => idx.apply_policy(p.clone()),
        Op::Json(v) => {
            let np = serde_json::from_value(v.clone()).expect("policy json");
            idx.apply_policy(underlay_policy::convert::policy(&np).expect("valid policy"));
        }
        Op::Cluster(p) => idx.apply_cluster_policy(p.clone()),
        Op::DeleteCluster(name) => idx.delete_cluster_policy(name),
        Op::NodeUpdate(n) => idx.apply_node(n.clone()),
        Op::DefaultMode(m) => idx.set_default_mode(*m),
        Op::Delete(ns, name) => idx.delete_policy(&underlay_policy::model::PodKey::new(*ns, *name)),
        Op::Relabel(who, label) => {
            let p = pid(who);
            let mut pod = idx.pod(&p.key()).expect("pod").clone();
            pod.labels.insert("pod".into(), label.to_string());
            idx.apply_pod(pod);
        }
        Op::NsLabel(i, k, v) => {
            let mut ns = idx
                .namespace(super::NAMESPACES[*i])
                .expect("namespace")
                .clone();
            match v {
                Some(v) => ns.labels.insert(k.to_string(), v.to_string()),
                None => ns.labels.remove(*k),
            };
            idx.apply_namespace(ns);
        }
        Op::NsLog(i, on) => {
            let mut ns = idx
                .namespace(super::NAMESPACES[*i])
                .expect("namespace")
                .clone();
            ns.log_denied = *on;
            idx.apply_namespace(ns);
        }
    }
}

/// Applies a scenario to an index holding the world.
pub fn prepare(idx: &mut Index, s: &Scenario) {
    if !s.chained {
        reset(idx);
    }
    for op in &s.ops {
        apply(idx, op);
    }
}

fn sel(k: &str, v: &str) -> Selector {
    Selector::labels([(k, v)])
}

fn pod_is(name: &str) -> Selector {
    sel("pod", name)
}

fn ns_is(name: &str) -> Selector {
    sel("ns", name)
}

pub fn ingress_policy(ns: &str, name: &str, target: Selector, rules: Vec<Rule>) -> Policy {
    let mut p = Policy::new(ns, name, target);
    p.ingress = rules;
    p
}

fn egress(ns: &str, name: &str, target: Selector, rules: Vec<Rule>) -> Policy {
    let mut p = Policy::new(ns, name, target);
    p.types = PolicyTypes {
        ingress: false,
        egress: true,
    };
    p.egress = rules;
    p
}

fn both(ns: &str, name: &str, target: Selector) -> Policy {
    let mut p = Policy::new(ns, name, target);
    p.types = PolicyTypes {
        ingress: true,
        egress: true,
    };
    p
}

pub fn e(f: impl Fn(&Probe) -> bool + Send + Sync + 'static) -> Expect {
    Box::new(f)
}

fn tcp(p: &Probe) -> bool {
    p.protocol == Protocol::Tcp
}

fn udp(p: &Probe) -> bool {
    p.protocol == Protocol::Udp
}

fn sctp(p: &Probe) -> bool {
    p.protocol == Protocol::Sctp
}

fn cidr(who: &str, fam: Family) -> String {
    let ip = pid(who).ip(fam);
    match fam {
        Family::V4 => format!("{ip}/32"),
        Family::V6 => format!("{ip}/128"),
    }
}

pub fn sc(name: &'static str, ops: Vec<Op>, expect: Expect) -> Scenario {
    Scenario {
        name,
        chained: false,
        ops,
        expect,
    }
}

pub fn then(name: &'static str, ops: Vec<Op>, expect: Expect) -> Scenario {
    Scenario {
        name,
        chained: true,
        ops,
        expect,
    }
}

use Op::*;

pub fn all() -> Vec<Scenario> {
    let yb4 = cidr("y/b", Family::V4);
    let xc6 = cidr("x/c", Family::V6);
    let zc4 = cidr("z/c", Family::V4);
    vec![
        sc("no policy: every pod is open", vec![], e(|_| true)),
        sc(
            "an empty ingress policy isolates every pod of its namespace",
            vec![Apply(ingress_policy(
                "x",
                "deny",
                Selector::everything(),
                vec![],
            ))],
            e(|p| !p.dst.is("x/*")),
        ),
        sc(
            "an empty egress policy isolates egress of every pod of its namespace",
            vec![Apply(egress("x", "deny", Selector::everything(), vec![]))],
            e(|p| !p.src.is("x/*")),
        ),
        sc(
            "policyTypes both with no rules denies both directions",
            vec![Apply(both("x", "deny", Selector::everything()))],
            e(|p| !p.src.is("x/*") && !p.dst.is("x/*")),
        ),
        sc(
            "an allow-all ingress rule beside a deny-all policy allows (union)",
            vec![
                Apply(ingress_policy("x", "deny", Selector::everything(), vec![])),
                Apply(ingress_policy(
                    "x",
                    "allow",
                    Selector::everything(),
                    vec![Rule::allow_all()],
                )),
            ],
            e(|_| true),
        ),
        sc(
            "an allow-all egress rule allows all egress",
            vec![Apply(egress(
                "x",
                "allow",
                Selector::everything(),
                vec![Rule::allow_all()],
            ))],
            e(|_| true),
        ),
        sc(
            "podSelector peer: pods of the policy's namespace only",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::pods(pod_is("b"))])],
            ))],
            e(|p| !p.dst.is("x/a") || p.src.is("x/b")),
        ),
        sc(
            "namespaceSelector peer: every pod of the selected namespaces",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::namespaces(ns_is("y"))])],
            ))],
            e(|p| !p.dst.is("x/a") || p.src.is("y/*")),
        ),
        sc(
            "namespaceSelector and podSelector in one peer are ANDed",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::both(ns_is("y"), pod_is("b"))])],
            ))],
            e(|p| !p.dst.is("x/a") || p.src.is("y/b")),
        ),
        sc(
            "two peers are ORed",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![
                    Peer::namespaces(ns_is("y")),
                    Peer::pods(pod_is("b")),
                ])],
            ))],
            e(|p| !p.dst.is("x/a") || p.src.is("y/*") || p.src.is("x/b")),
        ),
        sc(
            "empty namespaceSelector with a podSelector: those pods in every namespace",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::both(
                    Selector::everything(),
                    pod_is("c"),
                )])],
            ))],
            e(|p| !p.dst.is("x/a") || p.src.is("*/c")),
        ),
        sc(
            "empty namespaceSelector alone: every pod of every namespace",
            vec![Apply(ingress_policy(
                "x",
                "p",
                Selector::everything(),
                vec![Rule::from(vec![Peer::namespaces(Selector::everything())])],
            ))],
            e(|_| true),
        ),
        sc(
            "empty podSelector peer: every pod of the policy's namespace",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::pods(Selector::everything())])],
            ))],
            e(|p| !p.dst.is("x/a") || p.src.is("x/*")),
        ),
        sc(
            "matchExpressions In",
            vec![Apply(ingress_policy(
                "x",
                "p",
                Selector::everything(),
                vec![Rule::from(vec![Peer::both(
                    Selector::everything(),
                    Selector::default()
                        .with(Expression::In("pod".into(), vec!["b".into(), "c".into()])),
                )])],
            ))],
            e(|p| !p.dst.is("x/*") || p.src.is("*/b") || p.src.is("*/c")),
        ),
        sc(
            "matchExpressions NotIn",
            vec![Apply(ingress_policy(
                "x",
                "p",
                Selector::everything(),
                vec![Rule::from(vec![Peer::both(
                    Selector::everything(),
                    Selector::default().with(Expression::NotIn("pod".into(), vec!["a".into()])),
                )])],
            ))],
            e(|p| !p.dst.is("x/*") || !p.src.is("*/a")),
        ),
        sc(
            "matchExpressions Exists on namespace labels",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::namespaces(
                    Selector::default().with(Expression::Exists("team".into())),
                )])],
            ))],
            e(|p| !p.dst.is("x/a") || p.src.is("x/*") || p.src.is("y/*")),
        ),
        sc(
            "matchExpressions DoesNotExist on namespace labels",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::namespaces(
                    Selector::default().with(Expression::DoesNotExist("team".into())),
                )])],
            ))],
            e(|p| !p.dst.is("x/a") || p.src.is("z/*")),
        ),
        sc(
            "numeric port: TCP 80 only",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::allow_all().ports(vec![PortMatch::tcp(80)])],
            ))],
            e(|p| !p.dst.is("x/a") || (tcp(p) && p.port == 80)),
        ),
        sc(
            "numeric port: UDP 81 only",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::allow_all().ports(vec![PortMatch::number(Protocol::Udp, 81)])],
            ))],
            e(|p| !p.dst.is("x/a") || (udp(p) && p.port == 81)),
        ),
        sc(
            "numeric port: SCTP 80 only",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::allow_all().ports(vec![PortMatch::number(Protocol::Sctp, 80)])],
            ))],
            e(|p| !p.dst.is("x/a") || (sctp(p) && p.port == 80)),
        ),
        sc(
            "omitted protocol means TCP",
            vec![Json(
                json!({"metadata": {"namespace": "x", "name": "p"}, "spec": {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"port": 81}]}]}}),
            )],
            e(|p| !p.dst.is("x/a") || (tcp(p) && p.port == 81)),
        ),
        sc(
            "protocol without port means every port of it",
            vec![Json(
                json!({"metadata": {"namespace": "x", "name": "p"}, "spec": {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [{"protocol": "UDP"}]}]}}),
            )],
            e(|p| !p.dst.is("x/a") || udp(p)),
        ),
        sc(
            "endPort range 80-81 TCP",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::allow_all().ports(vec![PortMatch::range(Protocol::Tcp, 80, 81)])],
            ))],
            e(|p| !p.dst.is("x/a") || tcp(p)),
        ),
        sc(
            "endPort range 81-90 SCTP",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::allow_all().ports(vec![PortMatch::range(Protocol::Sctp, 81, 90)])],
            ))],
            e(|p| !p.dst.is("x/a") || (sctp(p) && p.port == 81)),
        ),
        sc(
            "named port resolves from the target's container ports",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![
                    Rule::allow_all().ports(vec![PortMatch::named(Protocol::Tcp, "serve-81-tcp")]),
                ],
            ))],
            e(|p| !p.dst.is("x/a") || (tcp(p) && p.port == 81)),
        ),
        sc(
            "one named port, different numbers on different target pods",
            vec![Apply(ingress_policy(
                "x",
                "p",
                Selector::everything(),
                vec![Rule::allow_all().ports(vec![PortMatch::named(Protocol::Tcp, "web")])],
            ))],
            e(|p| !p.dst.is("x/*") || (tcp(p) && p.port == if p.dst.is("*/a") { 80 } else { 81 })),
        ),
        sc(
            "named port of another protocol matches nothing",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![
                    Rule::allow_all().ports(vec![PortMatch::named(Protocol::Udp, "serve-80-tcp")]),
                ],
            ))],
            e(|p| !p.dst.is("x/a")),
        ),
        sc(
            "egress to pods of the same namespace",
            vec![Apply(egress(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::pods(pod_is("b"))])],
            ))],
            e(|p| !p.src.is("x/a") || p.dst.is("x/b")),
        ),
        sc(
            "egress to a namespace on TCP 80",
            vec![Apply(egress(
                "x",
                "p",
                pod_is("a"),
                vec![
                    Rule::from(vec![Peer::namespaces(ns_is("y"))]).ports(vec![PortMatch::tcp(80)]),
                ],
            ))],
            e(|p| !p.src.is("x/a") || (p.dst.is("y/*") && tcp(p) && p.port == 80)),
        ),
        sc(
            "egress named port resolves against each destination pod",
            vec![Apply(egress(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::allow_all().ports(vec![PortMatch::named(Protocol::Tcp, "web")])],
            ))],
            e(|p| !p.src.is("x/a") || (tcp(p) && p.port == if p.dst.is("*/a") { 80 } else { 81 })),
        ),
        sc(
            "egress named port with a namespace peer",
            vec![Apply(egress(
                "x",
                "p",
                pod_is("a"),
                vec![
                    Rule::from(vec![Peer::namespaces(ns_is("y"))])
                        .ports(vec![PortMatch::named(Protocol::Udp, "serve-80-udp")]),
                ],
            ))],
            e(|p| !p.src.is("x/a") || (p.dst.is("y/*") && udp(p) && p.port == 80)),
        ),
        sc(
            "ipBlock with except (IPv4): other families match nothing",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::block(
                    "10.88.0.0/24",
                    &[yb4.as_str()],
                )])],
            ))],
            e(|p| !p.dst.is("x/a") || (p.family == Family::V4 && !p.src.is("y/b"))),
        ),
        sc(
            "ipBlock with except (IPv6)",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::block("fd88::/64", &[xc6.as_str()])])],
            ))],
            e(|p| !p.dst.is("x/a") || (p.family == Family::V6 && !p.src.is("x/c"))),
        ),
        sc(
            "egress ipBlock of a single address",
            vec![Apply(egress(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::block(&zc4, &[])])],
            ))],
            e(|p| !p.src.is("x/a") || (p.family == Family::V4 && p.dst.is("z/c"))),
        ),
        sc(
            "two policies selecting one pod: their rules are ORed",
            vec![
                Apply(ingress_policy(
                    "x",
                    "p1",
                    pod_is("a"),
                    vec![Rule::from(vec![Peer::namespaces(ns_is("y"))])],
                )),
                Apply(ingress_policy(
                    "x",
                    "p2",
                    pod_is("a"),
                    vec![Rule::from(vec![Peer::namespaces(ns_is("z"))])],
                )),
            ],
            e(|p| !p.dst.is("x/a") || !p.src.is("x/*")),
        ),
        sc(
            "policies apply only in their own namespace",
            vec![
                Apply(ingress_policy("x", "deny", pod_is("a"), vec![])),
                Apply(ingress_policy("y", "deny", pod_is("a"), vec![])),
            ],
            e(|p| !p.dst.is("x/a") && !p.dst.is("y/a")),
        ),
        sc(
            "policyTypes both with only ingress rules denies all egress",
            vec![Apply({
                let mut p = both("x", "p", pod_is("a"));
                p.ingress = vec![Rule::allow_all()];
                p
            })],
            e(|p| !p.src.is("x/a")),
        ),
        sc(
            "policyTypes Egress ignores ingress rules",
            vec![Apply({
                let mut p = egress("x", "p", pod_is("a"), vec![Rule::allow_all()]);
                p.ingress = vec![Rule::from(vec![Peer::pods(pod_is("b"))])];
                p
            })],
            e(|_| true),
        ),
        sc(
            "egress of the source and ingress of the destination must both allow",
            vec![
                Apply(egress(
                    "x",
                    "out",
                    pod_is("a"),
                    vec![Rule::from(vec![Peer::pods(pod_is("b"))])],
                )),
                Apply(ingress_policy(
                    "x",
                    "in",
                    pod_is("b"),
                    vec![Rule::from(vec![Peer::pods(pod_is("c"))])],
                )),
            ],
            e(|p| (!p.src.is("x/a") || p.dst.is("x/b")) && (!p.dst.is("x/b") || p.src.is("x/c"))),
        ),
        sc(
            "egress only to UDP 80 in every namespace",
            ["x", "y", "z"]
                .into_iter()
                .map(|ns| {
                    Apply(egress(
                        ns,
                        "dns",
                        Selector::everything(),
                        vec![Rule::allow_all().ports(vec![PortMatch::number(Protocol::Udp, 80)])],
                    ))
                })
                .collect(),
            e(|p| udp(p) && p.port == 80),
        ),
        sc(
            "logging denied packets does not change what is denied",
            vec![
                NsLog(0, true),
                Apply(ingress_policy("x", "deny", Selector::everything(), vec![])),
            ],
            e(|p| !p.dst.is("x/*")),
        ),
        sc(
            "a rule with only ports and a rule with only peers",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![
                    Rule::allow_all().ports(vec![PortMatch::tcp(81)]),
                    Rule::from(vec![Peer::namespaces(ns_is("z"))]),
                ],
            ))],
            e(|p| !p.dst.is("x/a") || (tcp(p) && p.port == 81) || p.src.is("z/*")),
        ),
        sc(
            "default deny with allow from the same namespace, everywhere",
            ["x", "y", "z"]
                .into_iter()
                .flat_map(|ns| {
                    [
                        Apply(ingress_policy(ns, "deny", Selector::everything(), vec![])),
                        Apply(ingress_policy(
                            ns,
                            "same-ns",
                            Selector::everything(),
                            vec![Rule::from(vec![Peer::pods(Selector::everything())])],
                        )),
                    ]
                })
                .collect(),
            e(|p| p.src.ns == p.dst.ns),
        ),
        // Updates and deletes: each step continues from the one before.
        sc(
            "updates 1: x/a ingress from pods b",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::pods(pod_is("b"))])],
            ))],
            e(|p| !p.dst.is("x/a") || p.src.is("x/b")),
        ),
        then(
            "updates 2: the policy's peer changes to pods c",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::pods(pod_is("c"))])],
            ))],
            e(|p| !p.dst.is("x/a") || p.src.is("x/c")),
        ),
        then(
            "updates 3: a pod is relabelled into the peer selector",
            vec![Relabel("x/b", "c")],
            e(|p| !p.dst.is("x/a") || p.src.is("x/b") || p.src.is("x/c")),
        ),
        then(
            "updates 4: a pod is relabelled out of the peer selector",
            vec![Relabel("x/c", "q")],
            e(|p| !p.dst.is("x/a") || p.src.is("x/b")),
        ),
        then(
            "updates 5: the target is relabelled out of the policy: open again",
            vec![Relabel("x/a", "q")],
            e(|_| true),
        ),
        then(
            "updates 6: the target is relabelled back and the policy deleted",
            vec![Relabel("x/a", "a"), Delete("x", "p")],
            e(|_| true),
        ),
        sc(
            "namespaces 1: x/a ingress from team blue",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("a"),
                vec![Rule::from(vec![Peer::namespaces(sel("team", "blue"))])],
            ))],
            e(|p| !p.dst.is("x/a") || p.src.is("y/*")),
        ),
        then(
            "namespaces 2: namespace z joins team blue",
            vec![NsLabel(2, "team", Some("blue"))],
            e(|p| !p.dst.is("x/a") || p.src.is("y/*") || p.src.is("z/*")),
        ),
        then(
            "namespaces 3: namespace y leaves the team",
            vec![NsLabel(1, "team", None)],
            e(|p| !p.dst.is("x/a") || p.src.is("z/*")),
        ),
        then(
            "namespaces 4: the policy now selects pod b instead",
            vec![Apply(ingress_policy(
                "x",
                "p",
                pod_is("b"),
                vec![Rule::from(vec![Peer::namespaces(sel("team", "blue"))])],
            ))],
            e(|p| !p.dst.is("x/b") || p.src.is("z/*")),
        ),
        then(
            "namespaces 5: the policy is deleted: open again",
            vec![Delete("x", "p")],
            e(|_| true),
        ),
    ]
    .into_iter()
    .chain(super::cluster_scenarios::all())
    .collect()
}

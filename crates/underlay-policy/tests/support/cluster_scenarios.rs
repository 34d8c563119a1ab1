//! ClusterNetworkPolicy scenarios and their truth tables, written by hand
//! from the API's documented semantics (the tiers, actions, priorities,
//! rule order, peers and protocols) and the cases of the network-policy-api
//! conformance suite's standard channel, re-cast in this world: namespaces
//! x (team red), y (team blue) and z, pods a, b, c in each.

use super::Probe;
use super::scenarios::{Op, Scenario, e, ingress_policy, sc, then};
use underlay_policy::cluster::{
    Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Node, Tier,
};
use underlay_policy::model::{
    Family, Mode, Peer, Policy, PolicyTypes, PortMatch, Protocol, Rule, Selector,
};

use Action::{Accept, Deny, Pass};
use Op::*;

fn ns(name: &str) -> Selector {
    Selector::labels([("ns", name)])
}

fn pod(name: &str) -> Selector {
    Selector::labels([("pod", name)])
}

fn namespaces(sel: Selector) -> ClusterPeer {
    ClusterPeer::Pods {
        namespaces: sel,
        pods: Selector::everything(),
    }
}

fn pods(namespaces: Selector, pods: Selector) -> ClusterPeer {
    ClusterPeer::Pods { namespaces, pods }
}

fn all_pods() -> ClusterPeer {
    namespaces(Selector::everything())
}

fn rule(action: Action, peers: Vec<ClusterPeer>) -> ClusterRule {
    ClusterRule::new(action, peers)
}

fn port(protocol: Protocol, n: u16) -> ClusterPort {
    ClusterPort::Port(PortMatch::number(protocol, n))
}

/// A cluster policy of `tier` whose subject is namespace `subject`.
fn cnp(name: &str, tier: Tier, priority: u16, subject: &str) -> ClusterPolicy {
    ClusterPolicy::new(name, tier, priority, ns(subject))
}

fn with_ingress(mut p: ClusterPolicy, rules: Vec<ClusterRule>) -> ClusterPolicy {
    p.ingress = rules;
    p
}

fn with_egress(mut p: ClusterPolicy, rules: Vec<ClusterRule>) -> ClusterPolicy {
    p.egress = rules;
    p
}

fn admin_in(name: &str, priority: u16, subject: &str, rules: Vec<ClusterRule>) -> Op {
    Cluster(with_ingress(
        cnp(name, Tier::Admin, priority, subject),
        rules,
    ))
}

fn admin_out(name: &str, priority: u16, subject: &str, rules: Vec<ClusterRule>) -> Op {
    Cluster(with_egress(
        cnp(name, Tier::Admin, priority, subject),
        rules,
    ))
}

fn baseline_in(name: &str, priority: u16, subject: &str, rules: Vec<ClusterRule>) -> Op {
    Cluster(with_ingress(
        cnp(name, Tier::Baseline, priority, subject),
        rules,
    ))
}

fn baseline_out(name: &str, priority: u16, subject: &str, rules: Vec<ClusterRule>) -> Op {
    Cluster(with_egress(
        cnp(name, Tier::Baseline, priority, subject),
        rules,
    ))
}

/// A NetworkPolicy in `namespace` selecting `target`, ingress only.
fn np_in(namespace: &str, name: &str, target: Selector, rules: Vec<Rule>) -> Op {
    Apply(ingress_policy(namespace, name, target, rules))
}

fn np_out(namespace: &str, name: &str, target: Selector, rules: Vec<Rule>) -> Op {
    let mut p = Policy::new(namespace, name, target);
    p.types = PolicyTypes {
        ingress: false,
        egress: true,
    };
    p.egress = rules;
    Apply(p)
}

/// The container port `web`: 80 on pods a, 81 on pods b and c.
fn web(p: &Probe) -> bool {
    p.protocol == Protocol::Tcp && p.port == if p.dst.is("*/a") { 80 } else { 81 }
}

fn host_cidr(p: &super::Pid, family: Family) -> String {
    match family {
        Family::V4 => format!("{}/32", p.ip(family)),
        Family::V6 => format!("{}/128", p.ip(family)),
    }
}

fn network(cidr: &str) -> ClusterPeer {
    ClusterPeer::Network(underlay_policy::model::parse_cidr(cidr).expect("cidr"))
}

/// A Node whose addresses are those of pod z/c (so `nodes` peers can be
/// probed between pods).
fn node_at_zc(role: &str) -> Node {
    let zc = super::Pid { ns: 2, pod: 2 };
    Node::new("node-1")
        .label("role", role)
        .ip(&zc.ip(Family::V4).to_string())
        .ip(&zc.ip(Family::V6).to_string())
}

pub fn all() -> Vec<Scenario> {
    let zc = super::Pid { ns: 2, pod: 2 };
    let yb = super::Pid { ns: 1, pod: 1 };
    let yb4 = host_cidr(&yb, Family::V4);
    let zc6 = host_cidr(&zc, Family::V6);
    let mut v = tiers();
    v.extend(order());
    v.extend(peers_and_ports(&yb4, &zc6));
    v.extend(lifecycle());
    v.extend(audit());
    v
}

fn audited<T>(mut p: T, set: impl FnOnce(&mut T)) -> T {
    set(&mut p);
    p
}

/// Audit mode: audited policies never drop; the enforced ones decide.
fn audit() -> Vec<Scenario> {
    let deny_all_x = audited(
        ingress_policy("x", "deny-all", Selector::everything(), vec![]),
        |p| p.mode = Mode::Audit,
    );
    let admin_deny_y = audited(
        with_ingress(
            cnp("deny-y", Tier::Admin, 10, "x"),
            vec![rule(Deny, vec![namespaces(ns("y"))])],
        ),
        |p| p.mode = Mode::Audit,
    );
    vec![
        sc(
            "audit: an audited deny-all NetworkPolicy drops nothing",
            vec![Apply(deny_all_x.clone())],
            e(|_| true),
        ),
        sc(
            "audit: an audited Admin Deny drops nothing",
            vec![Cluster(admin_deny_y.clone())],
            e(|_| true),
        ),
        sc(
            "audit: the enforced policies decide beside audited ones",
            vec![
                np_in(
                    "x",
                    "from-y",
                    Selector::everything(),
                    vec![Rule::from(vec![Peer::namespaces(ns("y"))])],
                ),
                Cluster(admin_deny_y),
            ],
            e(|p| !p.dst.is("x/*") || p.src.is("y/*")),
        ),
        sc(
            "audit: with the default mode audit, unannotated policies drop nothing",
            vec![
                DefaultMode(Mode::Audit),
                np_in("x", "deny-all", Selector::everything(), vec![]),
                egress_deny_all("y"),
            ],
            e(|_| true),
        ),
        then(
            "audit: a policy annotated enforce still drops under the audit default",
            vec![Apply(audited(
                ingress_policy("x", "deny-all", Selector::everything(), vec![]),
                |p| p.mode = Mode::Enforce,
            ))],
            e(|p| !p.dst.is("x/*")),
        ),
    ]
}

fn egress_deny_all(namespace: &str) -> Op {
    np_out(namespace, "deny-out", Selector::everything(), vec![])
}

/// The three tiers and how each action hands on.
fn tiers() -> Vec<Scenario> {
    vec![
        sc(
            "cnp admin Deny: ingress from a namespace is dropped",
            vec![admin_in(
                "deny-y",
                10,
                "x",
                vec![rule(Deny, vec![namespaces(ns("y"))])],
            )],
            e(|p| !(p.dst.is("x/*") && p.src.is("y/*"))),
        ),
        sc(
            "cnp admin Accept overrides a NetworkPolicy that isolates",
            vec![
                np_in("x", "deny-all", Selector::everything(), vec![]),
                admin_in(
                    "accept-y",
                    10,
                    "x",
                    vec![rule(Accept, vec![namespaces(ns("y"))])],
                ),
            ],
            e(|p| !p.dst.is("x/*") || p.src.is("y/*")),
        ),
        sc(
            "cnp admin Deny overrides a NetworkPolicy that allows",
            vec![
                np_in(
                    "x",
                    "allow-all",
                    Selector::everything(),
                    vec![Rule::allow_all()],
                ),
                admin_in(
                    "deny-y",
                    10,
                    "x",
                    vec![rule(Deny, vec![namespaces(ns("y"))])],
                ),
            ],
            e(|p| !(p.dst.is("x/*") && p.src.is("y/*"))),
        ),
        sc(
            "cnp admin Pass hands the connection to NetworkPolicy",
            vec![
                np_in(
                    "x",
                    "from-y-and-z",
                    Selector::everything(),
                    vec![Rule::from(vec![
                        Peer::namespaces(ns("y")),
                        Peer::namespaces(ns("z")),
                    ])],
                ),
                admin_in(
                    "pass-ya",
                    10,
                    "x",
                    vec![
                        rule(Pass, vec![pods(ns("y"), pod("a"))]),
                        rule(Deny, vec![namespaces(ns("y"))]),
                    ],
                ),
            ],
            e(|p| !p.dst.is("x/*") || p.src.is("y/a") || p.src.is("z/*")),
        ),
        sc(
            "cnp admin Pass with no NetworkPolicy falls to the Baseline tier",
            vec![
                admin_in(
                    "pass-ya",
                    10,
                    "x",
                    vec![rule(Pass, vec![pods(ns("y"), pod("a"))])],
                ),
                baseline_in(
                    "deny-y",
                    10,
                    "x",
                    vec![rule(Deny, vec![namespaces(ns("y"))])],
                ),
            ],
            e(|p| !(p.dst.is("x/*") && p.src.is("y/*"))),
        ),
        sc(
            "cnp admin Accept is final: the Baseline tier's Deny never sees it",
            vec![
                admin_in(
                    "accept-ya",
                    10,
                    "x",
                    vec![rule(Accept, vec![pods(ns("y"), pod("a"))])],
                ),
                baseline_in(
                    "deny-y",
                    10,
                    "x",
                    vec![rule(Deny, vec![namespaces(ns("y"))])],
                ),
            ],
            e(|p| !(p.dst.is("x/*") && p.src.is("y/*")) || p.src.is("y/a")),
        ),
        sc(
            "cnp baseline Deny applies only where no NetworkPolicy selects the pod",
            vec![
                baseline_in("deny-all", 10, "x", vec![rule(Deny, vec![all_pods()])]),
                np_in(
                    "x",
                    "a-from-y",
                    pod("a"),
                    vec![Rule::from(vec![Peer::namespaces(ns("y"))])],
                ),
            ],
            e(|p| !p.dst.is("x/*") || (p.dst.is("x/a") && p.src.is("y/*"))),
        ),
        sc(
            "cnp baseline Accept before a Deny: an allow-list for the namespace",
            vec![baseline_in(
                "only-y",
                10,
                "x",
                vec![
                    rule(Accept, vec![namespaces(ns("y"))]),
                    rule(Deny, vec![all_pods()]),
                ],
            )],
            e(|p| !p.dst.is("x/*") || p.src.is("y/*")),
        ),
        sc(
            "cnp baseline Pass ends the Baseline tier: the default allows",
            vec![baseline_in(
                "pass-y",
                10,
                "x",
                vec![
                    rule(Pass, vec![namespaces(ns("y"))]),
                    rule(Deny, vec![all_pods()]),
                ],
            )],
            e(|p| !p.dst.is("x/*") || p.src.is("y/*")),
        ),
        sc(
            "cnp egress Accept still meets the destination's ingress policy",
            vec![
                np_out("x", "deny-out", Selector::everything(), vec![]),
                np_in("y", "deny-in", Selector::everything(), vec![]),
                admin_out(
                    "x-to-y",
                    10,
                    "x",
                    vec![rule(Accept, vec![namespaces(ns("y"))])],
                ),
            ],
            e(|p| !p.src.is("x/*") && !p.dst.is("y/*")),
        ),
        sc(
            "cnp ingress and egress rules in one policy",
            vec![Cluster(with_egress(
                with_ingress(
                    cnp("both", Tier::Admin, 10, "x"),
                    vec![rule(Deny, vec![namespaces(ns("y"))])],
                ),
                vec![rule(Deny, vec![namespaces(ns("z"))])],
            ))],
            e(|p| !((p.dst.is("x/*") && p.src.is("y/*")) || (p.src.is("x/*") && p.dst.is("z/*")))),
        ),
        sc(
            "cnp baseline egress Deny where an egress NetworkPolicy exists is ignored",
            vec![
                baseline_out("deny-out", 10, "x", vec![rule(Deny, vec![all_pods()])]),
                np_out(
                    "x",
                    "to-z",
                    pod("a"),
                    vec![Rule::from(vec![Peer::namespaces(ns("z"))])],
                ),
            ],
            e(|p| !p.src.is("x/*") || (p.src.is("x/a") && p.dst.is("z/*"))),
        ),
    ]
}

/// Priorities, names and rule order.
fn order() -> Vec<Scenario> {
    vec![
        sc(
            "cnp priority: the lower number decides",
            vec![
                admin_in(
                    "accept",
                    20,
                    "x",
                    vec![rule(Accept, vec![namespaces(ns("y"))])],
                ),
                admin_in("deny", 10, "x", vec![rule(Deny, vec![namespaces(ns("y"))])]),
            ],
            e(|p| !(p.dst.is("x/*") && p.src.is("y/*"))),
        ),
        then(
            "cnp priority: moving the Accept ahead allows",
            vec![admin_in(
                "accept",
                5,
                "x",
                vec![rule(Accept, vec![namespaces(ns("y"))])],
            )],
            e(|_| true),
        ),
        sc(
            "cnp same priority: the name decides (the API leaves it to us)",
            vec![
                admin_in(
                    "b-deny",
                    10,
                    "x",
                    vec![rule(Deny, vec![namespaces(ns("y"))])],
                ),
                admin_in(
                    "a-accept",
                    10,
                    "x",
                    vec![rule(Accept, vec![pods(ns("y"), pod("a"))])],
                ),
            ],
            e(|p| !(p.dst.is("x/*") && p.src.is("y/*")) || p.src.is("y/a")),
        ),
        sc(
            "cnp rule order: the first matching rule decides",
            vec![admin_in(
                "ordered",
                10,
                "x",
                vec![
                    rule(Accept, vec![pods(ns("y"), pod("a"))]),
                    rule(Deny, vec![namespaces(ns("y"))]),
                ],
            )],
            e(|p| !(p.dst.is("x/*") && p.src.is("y/*")) || p.src.is("y/a")),
        ),
        then(
            "cnp rule order: the Deny first takes pod a too",
            vec![admin_in(
                "ordered",
                10,
                "x",
                vec![
                    rule(Deny, vec![namespaces(ns("y"))]),
                    rule(Accept, vec![pods(ns("y"), pod("a"))]),
                ],
            )],
            e(|p| !(p.dst.is("x/*") && p.src.is("y/*"))),
        ),
        sc(
            "cnp a Baseline Deny of a lower number never outranks an Admin Accept",
            vec![
                baseline_in("deny", 0, "x", vec![rule(Deny, vec![all_pods()])]),
                admin_in(
                    "accept",
                    1000,
                    "x",
                    vec![rule(Accept, vec![namespaces(ns("z"))])],
                ),
            ],
            e(|p| !p.dst.is("x/*") || p.src.is("z/*")),
        ),
    ]
}

/// Subjects, every peer kind, ports, ranges and named ports, both families.
fn peers_and_ports(yb4: &str, zc6: &str) -> Vec<Scenario> {
    vec![
        sc(
            "cnp subject by namespace and pod selector",
            vec![Cluster(ClusterPolicy {
                subject_pods: pod("a"),
                ..with_ingress(
                    cnp("xa", Tier::Admin, 10, "x"),
                    vec![rule(Deny, vec![all_pods()])],
                )
            })],
            e(|p| !p.dst.is("x/a")),
        ),
        sc(
            "cnp pods peer: namespace and pod selectors ANDed",
            vec![admin_in(
                "deny-yb",
                10,
                "x",
                vec![rule(Deny, vec![pods(ns("y"), pod("b"))])],
            )],
            e(|p| !(p.dst.is("x/*") && p.src.is("y/b"))),
        ),
        sc(
            "cnp TCP port: only that port and protocol",
            vec![admin_out(
                "x-to-y-80",
                10,
                "x",
                vec![rule(Deny, vec![namespaces(ns("y"))]).ports(vec![port(Protocol::Tcp, 80)])],
            )],
            e(|p| {
                !(p.src.is("x/*") && p.dst.is("y/*") && p.protocol == Protocol::Tcp && p.port == 80)
            }),
        ),
        sc(
            "cnp egress UDP and SCTP ports in the Baseline tier",
            vec![baseline_out(
                "out-udp-sctp",
                10,
                "y",
                vec![
                    rule(Deny, vec![namespaces(ns("z"))])
                        .ports(vec![port(Protocol::Udp, 80), port(Protocol::Sctp, 81)]),
                ],
            )],
            e(|p| {
                !(p.src.is("y/*")
                    && p.dst.is("z/*")
                    && ((p.protocol == Protocol::Udp && p.port == 80)
                        || (p.protocol == Protocol::Sctp && p.port == 81)))
            }),
        ),
        sc(
            "cnp admin Accept on one TCP port above a NetworkPolicy deny-all",
            vec![
                np_in("z", "deny-all", Selector::everything(), vec![]),
                admin_in(
                    "web-only",
                    10,
                    "z",
                    vec![rule(Accept, vec![all_pods()]).ports(vec![port(Protocol::Tcp, 81)])],
                ),
            ],
            e(|p| !p.dst.is("z/*") || (p.protocol == Protocol::Tcp && p.port == 81)),
        ),
        sc(
            "cnp UDP port range",
            vec![admin_in(
                "udp-range",
                10,
                "x",
                vec![rule(Deny, vec![all_pods()]).ports(vec![ClusterPort::Port(
                    PortMatch::range(Protocol::Udp, 81, 90),
                )])],
            )],
            e(|p| !(p.dst.is("x/*") && p.protocol == Protocol::Udp && p.port == 81)),
        ),
        sc(
            "cnp SCTP port, and two protocols ORed",
            vec![baseline_in(
                "sctp-tcp",
                10,
                "y",
                vec![
                    rule(Deny, vec![namespaces(ns("x"))])
                        .ports(vec![port(Protocol::Sctp, 81), port(Protocol::Tcp, 80)]),
                ],
            )],
            e(|p| {
                !(p.dst.is("y/*")
                    && p.src.is("x/*")
                    && ((p.protocol == Protocol::Sctp && p.port == 81)
                        || (p.protocol == Protocol::Tcp && p.port == 80)))
            }),
        ),
        sc(
            "cnp destinationNamedPort resolves per destination pod",
            vec![admin_in(
                "web",
                10,
                "x",
                vec![rule(Deny, vec![all_pods()]).ports(vec![ClusterPort::Named("web".into())])],
            )],
            e(|p| !(p.dst.is("x/*") && web(p))),
        ),
        sc(
            "cnp destinationNamedPort matches whatever protocol the name has",
            vec![admin_out(
                "serve-udp",
                10,
                "x",
                vec![
                    rule(Deny, vec![all_pods()])
                        .ports(vec![ClusterPort::Named("serve-80-udp".into())]),
                ],
            )],
            e(|p| !(p.src.is("x/*") && p.protocol == Protocol::Udp && p.port == 80)),
        ),
        sc(
            "cnp networks peer: CIDRs of both families",
            vec![admin_out(
                "nets",
                10,
                "x",
                vec![rule(Deny, vec![network(yb4), network(zc6)])],
            )],
            e(|p| {
                !(p.src.is("x/*")
                    && ((p.dst.is("y/b") && p.family == Family::V4)
                        || (p.dst.is("z/c") && p.family == Family::V6)))
            }),
        ),
        sc(
            "cnp networks peer ::/0 in the Baseline tier: IPv6 only",
            vec![baseline_out(
                "no-v6",
                10,
                "z",
                vec![rule(Deny, vec![network("::/0")])],
            )],
            e(|p| !(p.src.is("z/*") && p.family == Family::V6)),
        ),
        sc(
            "cnp nodes peer: the addresses of the selected Nodes",
            vec![
                NodeUpdate(node_at_zc("infra")),
                admin_out(
                    "no-infra",
                    10,
                    "x",
                    vec![rule(
                        Deny,
                        vec![ClusterPeer::Nodes(Selector::labels([("role", "infra")]))],
                    )],
                ),
            ],
            e(|p| !(p.src.is("x/*") && p.dst.is("z/c"))),
        ),
        then(
            "cnp nodes peer: a relabelled Node leaves the set",
            vec![NodeUpdate(node_at_zc("web"))],
            e(|_| true),
        ),
        sc(
            "cnp a peer the engine cannot enforce makes a Deny rule deny everything",
            vec![admin_in(
                "fail-closed",
                10,
                "z",
                vec![rule(Deny, vec![ClusterPeer::Anything])],
            )],
            e(|p| !p.dst.is("z/*")),
        ),
    ]
}

/// Selection following labels, and deletion.
fn lifecycle() -> Vec<Scenario> {
    vec![
        sc(
            "cnp subject follows namespace labels 1: team red",
            vec![Cluster(with_ingress(
                ClusterPolicy::new("red", Tier::Admin, 10, Selector::labels([("team", "red")])),
                vec![rule(Deny, vec![namespaces(ns("z"))])],
            ))],
            e(|p| !(p.dst.is("x/*") && p.src.is("z/*"))),
        ),
        then(
            "cnp subject follows namespace labels 2: y joins team red",
            vec![NsLabel(1, "team", Some("red"))],
            e(|p| !((p.dst.is("x/*") || p.dst.is("y/*")) && p.src.is("z/*"))),
        ),
        then(
            "cnp deleted: open again",
            vec![DeleteCluster("red")],
            e(|_| true),
        ),
        sc(
            "cnp pods peer follows pod labels 1",
            vec![admin_in(
                "deny-zq",
                10,
                "x",
                vec![rule(Deny, vec![pods(ns("z"), pod("q"))])],
            )],
            e(|_| true),
        ),
        then(
            "cnp pods peer follows pod labels 2: z/b becomes q",
            vec![Relabel("z/b", "q")],
            e(|p| !(p.dst.is("x/*") && p.src.is("z/b"))),
        ),
    ]
}

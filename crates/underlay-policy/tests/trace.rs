//! `PolicyAgent::trace` on the recording fake: the reason the model gives
//! for each tier's decision, the chain a flow to or from the node itself
//! takes, flows the node does not decide, bad queries, and a kernel that
//! differs from the model reported as a disagreement, never hidden.

mod support;

use std::net::IpAddr;
use support::{Pid, load_world};
use underlay_policy::agent::{Options, PolicyAgent};
use underlay_policy::cluster::{Action, ClusterPeer, ClusterPolicy, ClusterRule, Tier};
use underlay_policy::dataplane::FakeDataplane;
use underlay_policy::metrics::Metrics;
use underlay_policy::model::{Direction, Endpoint, Family, Peer, Policy, Protocol, Rule, Selector};
use underlay_policy::trace::{FlowTrace, Query};
use underlay_policy::{Config, Engine, Index};

const X_A: Pid = Pid { ns: 0, pod: 0 };
const X_B: Pid = Pid { ns: 0, pod: 1 };
const Y_A: Pid = Pid { ns: 1, pod: 0 };
const Z_A: Pid = Pid { ns: 2, pod: 0 };
const NODE: &str = "10.88.0.1";

fn ns(name: &str) -> Selector {
    Selector::labels([("ns", name)])
}

/// A cluster policy of `tier` on namespace `subject` with one named
/// ingress rule from the pods of `from`.
fn cluster(name: &str, tier: Tier, subject: &str, action: Action, from: &str) -> ClusterPolicy {
    let mut p = ClusterPolicy::new(name, tier, 10, ns(subject));
    let mut rule = ClusterRule::new(
        action,
        vec![ClusterPeer::Pods {
            namespaces: ns(from),
            pods: Selector::everything(),
        }],
    );
    rule.name = format!("{action} from {from}").to_lowercase();
    p.ingress = vec![rule];
    p
}

/// x/a admits ingress from the pods b of x (rule 0) and TCP 81 (rule 1).
fn only_b() -> Policy {
    let mut p = Policy::new("x", "only-b", Selector::labels([("pod", "a")]));
    p.ingress = vec![
        Rule::from(vec![Peer::pods(Selector::labels([("pod", "b")]))]),
        Rule {
            peers: Vec::new(),
            ports: vec![underlay_policy::model::PortMatch::number(Protocol::Tcp, 81)],
        },
    ];
    p
}

/// The world with `change` applied, programmed into a fake, behind an
/// agent without an API server.
fn agent(
    change: impl FnOnce(&mut Index),
) -> (FakeDataplane, std::sync::Arc<PolicyAgent<FakeDataplane>>) {
    let fake = FakeDataplane::new();
    fake.state().host = vec![NODE.parse().unwrap()];
    let mut engine = Engine::new(fake.clone(), Config::default(), Metrics::default());
    engine.change(load_world);
    engine.change(change);
    engine.sync().unwrap();
    (fake, PolicyAgent::new(engine, None, Options::default()))
}

fn query(src: IpAddr, dst: IpAddr, port: u16) -> Query {
    Query {
        src,
        dst,
        protocol: Protocol::Tcp,
        port,
    }
}

async fn trace(agent: &PolicyAgent<FakeDataplane>, src: Pid, dst: Pid, port: u16) -> FlowTrace {
    let q = query(src.ip(Family::V4), dst.ip(Family::V4), port);
    agent.trace(q).await.expect("trace")
}

/// The model's (allowed, reason) of `dir`, checked to agree with the kernel.
fn model(t: &FlowTrace, dir: Direction) -> (bool, String) {
    let d = t
        .directions
        .iter()
        .find(|d| d.direction == dir)
        .unwrap_or_else(|| panic!("no {dir:?} in {t:?}"));
    assert!(d.agree && d.model.allowed == d.kernel.allowed, "{d:?}");
    (d.model.allowed, d.model.reason.clone())
}

#[tokio::test]
async fn each_tier_names_the_policy_and_rule_that_decided() {
    let (_, agent) = agent(|idx| {
        idx.apply_cluster_policy(cluster("guard", Tier::Admin, "x", Action::Deny, "z"));
        idx.apply_cluster_policy(cluster("hand-off", Tier::Admin, "y", Action::Pass, "x"));
        idx.apply_cluster_policy(cluster("floor", Tier::Baseline, "y", Action::Deny, "z"));
        idx.apply_policy(only_b());
    });
    let ingress =
        async |src, dst, port| model(&trace(&agent, src, dst, port).await, Direction::Ingress);
    let cases = [
        (
            Z_A,
            X_A,
            80,
            false,
            "clusternetworkpolicy/guard (Admin) rule 0 \"deny from z\" denies",
        ),
        (
            X_B,
            X_A,
            80,
            true,
            "allowed by networkpolicy/x/only-b rule 0",
        ),
        (
            Y_A,
            X_A,
            81,
            true,
            "allowed by networkpolicy/x/only-b rule 1",
        ),
        (
            Y_A,
            X_A,
            80,
            false,
            "isolated by networkpolicy/x/only-b; no rule admits it",
        ),
        (
            Z_A,
            Y_A,
            80,
            false,
            "clusternetworkpolicy/floor (Baseline) rule 0 \"deny from z\" denies",
        ),
        (
            X_A,
            Y_A,
            80,
            true,
            "clusternetworkpolicy/hand-off (Admin) rule 0 \"pass from x\" passes; no rule of clusternetworkpolicy/hand-off (Admin), clusternetworkpolicy/floor (Baseline) matches and no networkpolicy selects y/a for ingress: allowed by default",
        ),
        (
            Y_A,
            Z_A,
            80,
            true,
            "no policy selects z/a for ingress: allowed by default",
        ),
    ];
    for (src, dst, port, allowed, reason) in cases {
        assert_eq!(
            ingress(src, dst, port).await,
            (allowed, reason.to_string()),
            "{src:?} -> {dst:?}"
        );
    }
}

#[tokio::test]
async fn a_pod_without_its_pod_object_is_dropped_both_ways_and_says_so() {
    let ghost = Endpoint {
        pod: underlay_policy::model::PodKey::new("x", "ghost"),
        interface: "udlxghost".into(),
        ips: vec!["10.88.0.99".parse().unwrap()],
        owner: underlay_policy::model::Attachment::new("sandbox-ghost", "eth0"),
    };
    let (_, agent) = agent(|idx| idx.apply_endpoint(ghost.clone()));
    let t = agent
        .trace(query(ghost.ips[0], X_A.ip(Family::V4), 80))
        .await
        .unwrap();
    assert!(!t.allowed && t.agree, "{t:?}");
    let (allowed, reason) = model(&t, Direction::Egress);
    assert_eq!(
        (allowed, reason.as_str()),
        (false, "the pod x/ghost is unknown: dropped")
    );
    assert!(model(&t, Direction::Ingress).0, "x/a is open");
}

#[tokio::test]
async fn flows_to_and_from_the_node_take_input_and_output() {
    let (_, agent) = agent(|idx| {
        let mut deny = Policy::new("x", "deny-all", Selector::everything());
        deny.types.egress = true;
        idx.apply_policy(deny);
    });
    let node: IpAddr = NODE.parse().unwrap();
    let up = agent
        .trace(query(X_A.ip(Family::V4), node, 10250))
        .await
        .unwrap();
    let d = &up.directions[0];
    assert_eq!(d.direction, Direction::Egress);
    assert!(!d.kernel.allowed && d.agree, "{d:?}");
    assert!(d.kernel_rules[0].starts_with("INPUT: "), "{d:?}");
    let down = agent
        .trace(query(node, X_A.ip(Family::V4), 80))
        .await
        .unwrap();
    let d = &down.directions[0];
    assert!(d.model.allowed && d.kernel.allowed && d.agree, "{d:?}");
    assert!(d.model.reason.starts_with("sent by this node"), "{d:?}");
    assert!(d.kernel_rules[0].starts_with("OUTPUT: "), "{d:?}");
    let elsewhere = agent
        .trace(query(
            "10.9.0.1".parse().unwrap(),
            "10.9.0.2".parse().unwrap(),
            80,
        ))
        .await
        .unwrap();
    assert!(elsewhere.directions.is_empty() && elsewhere.allowed && elsewhere.agree);
}

#[tokio::test]
async fn a_kernel_that_differs_from_the_model_is_reported() {
    let (fake, agent) = agent(|idx| idx.apply_policy(only_b()));
    assert!(trace(&agent, Y_A, X_A, 80).await.agree);
    // Someone flushes x/a's ingress chain: the kernel lets y/a in.
    let chain = underlay_policy::compile::endpoint_chain(&X_A.interface(), Direction::Ingress);
    fake.state().tables[0].insert(chain, Vec::new());
    let t = trace(&agent, Y_A, X_A, 80).await;
    let d = &t.directions[1];
    assert!(!t.agree && !d.agree && t.allowed, "{t:?}");
    assert!(!d.model.allowed && d.kernel.allowed, "{d:?}");
}

#[test]
fn bad_queries_are_refused_with_the_field_that_is_wrong() {
    assert!(Query::parse("10.0.0.1", "10.0.0.2", "TCP", 65535).is_ok());
    for (src, dst, proto, port, says) in [
        ("10.0.0.x", "10.0.0.2", "tcp", 80, "source"),
        ("10.0.0.1", "", "tcp", 80, "destination"),
        ("10.0.0.1", "fd00::2", "tcp", 80, "different IP families"),
        ("10.0.0.1", "10.0.0.2", "icmp", 80, "protocol"),
        ("10.0.0.1", "10.0.0.2", "udp", 0, "port 0"),
        ("10.0.0.1", "10.0.0.2", "sctp", 65536, "port 65536"),
    ] {
        let err = Query::parse(src, dst, proto, port).unwrap_err();
        assert!(err.contains(says), "{err}");
    }
}

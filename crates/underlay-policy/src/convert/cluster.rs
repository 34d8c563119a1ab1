//! ClusterNetworkPolicies and Nodes into the policy domain.
//!
//! What the API server's validation should have refused, and what this
//! engine does not implement, never half-applies: a peer or protocol the
//! engine cannot enforce fails closed as the API asks (an Accept rule
//! matches none of it; a Deny or Pass rule becomes "deny everything"), and
//! the policy's status says what was not enforced.

use super::{Error, Result, selector};
use crate::cluster::{Action, ClusterPeer, ClusterPolicy, ClusterPort, ClusterRule, Node, Tier};
use crate::model::{PortMatch, Protocol, Selector, parse_cidr};
use k8s_openapi::api::core::v1 as core;
use underlay_api::cnp;

/// A converted ClusterNetworkPolicy with what of it is not enforced as
/// written (empty when all of it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub policy: ClusterPolicy,
    pub not_enforced: Vec<String>,
}

fn invalid(name: &str, reason: impl Into<String>) -> Error {
    Error::ClusterPolicy {
        policy: name.to_string(),
        reason: reason.into(),
    }
}

pub fn cluster_policy(o: &cnp::ClusterNetworkPolicy) -> Result<Converted> {
    let name = o
        .metadata
        .name
        .clone()
        .ok_or(Error::Missing("metadata.name"))?;
    let spec = &o.spec;
    let tier = match spec.tier {
        cnp::Tier::Admin => Tier::Admin,
        cnp::Tier::Baseline => Tier::Baseline,
        cnp::Tier::Unknown => {
            return Err(invalid(&name, "spec.tier must be Admin or Baseline"));
        }
    };
    let priority = u16::try_from(spec.priority)
        .ok()
        .filter(|p| *p <= 1000)
        .ok_or_else(|| {
            invalid(
                &name,
                format!("spec.priority {} is outside 0..=1000", spec.priority),
            )
        })?;
    let (subject_namespaces, subject_pods) =
        subject(&spec.subject).map_err(|e| invalid(&name, format!("spec.subject: {e}")))?;
    let mode = super::mode_of(&o.metadata).map_err(|e| invalid(&name, e))?;
    let mut not_enforced = Vec::new();
    let ingress = spec
        .ingress
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let peers = r.from.iter().map(ingress_peer).collect();
            let at = format!("spec.ingress[{i}]");
            rule(
                &at,
                r.name.as_deref(),
                &r.action,
                peers,
                r.protocols.as_deref(),
                &mut not_enforced,
            )
        })
        .collect();
    let egress = spec
        .egress
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let peers = r.to.iter().map(egress_peer).collect();
            let at = format!("spec.egress[{i}]");
            rule(
                &at,
                r.name.as_deref(),
                &r.action,
                peers,
                r.protocols.as_deref(),
                &mut not_enforced,
            )
        })
        .collect();
    Ok(Converted {
        policy: ClusterPolicy {
            name,
            tier,
            priority,
            subject_namespaces,
            subject_pods,
            ingress,
            egress,
            mode,
        },
        not_enforced,
    })
}

fn subject(s: &cnp::Subject) -> Result<(Selector, Selector), String> {
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Ok((selector(ns)?, Selector::everything())),
        (None, Some(p)) => Ok((selector(&p.namespace_selector)?, selector(&p.pod_selector)?)),
        _ => Err("set exactly one of namespaces and pods".into()),
    }
}

/// One peer, or why it cannot be enforced.
type PeerResult = Result<ClusterPeer, String>;

fn pods_peer(p: &cnp::NamespacedPod) -> PeerResult {
    Ok(ClusterPeer::Pods {
        namespaces: selector(&p.namespace_selector)?,
        pods: selector(&p.pod_selector)?,
    })
}

fn ingress_peer(p: &cnp::IngressPeer) -> Vec<PeerResult> {
    match (&p.namespaces, &p.pods) {
        (Some(ns), None) => vec![namespaces_peer(ns)],
        (None, Some(pods)) => vec![pods_peer(pods)],
        _ => vec![Err(
            "a peer must set exactly one of the fields this engine knows (namespaces, pods)".into(),
        )],
    }
}

fn namespaces_peer(
    ns: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> PeerResult {
    Ok(ClusterPeer::Pods {
        namespaces: selector(ns)?,
        pods: Selector::everything(),
    })
}

fn egress_peer(p: &cnp::EgressPeer) -> Vec<PeerResult> {
    let set = [
        p.namespaces.is_some(),
        p.pods.is_some(),
        p.nodes.is_some(),
        p.networks.is_some(),
        p.domain_names.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return vec![Err(
            "a peer must set exactly one of the fields this engine knows (namespaces, pods, nodes, networks, domainNames)".into(),
        )];
    }
    if let Some(ns) = &p.namespaces {
        return vec![namespaces_peer(ns)];
    }
    if let Some(pods) = &p.pods {
        return vec![pods_peer(pods)];
    }
    if let Some(nodes) = &p.nodes {
        return vec![selector(nodes).map(ClusterPeer::Nodes)];
    }
    if let Some(networks) = &p.networks {
        return networks
            .iter()
            .map(|n| parse_cidr(n).map(ClusterPeer::Network))
            .collect();
    }
    vec![Err(
        "domainNames peers are not implemented by underlay".into()
    )]
}

fn protocol(p: &cnp::ProtocolMatch) -> Result<ClusterPort, String> {
    let numbered = [
        (Protocol::Tcp, &p.tcp),
        (Protocol::Udp, &p.udp),
        (Protocol::Sctp, &p.sctp),
    ];
    let set = numbered.iter().filter(|(_, m)| m.is_some()).count()
        + usize::from(p.destination_named_port.is_some());
    if set != 1 {
        return Err(
            "a protocol must set exactly one of tcp, udp, sctp and destinationNamedPort".into(),
        );
    }
    if let Some(name) = &p.destination_named_port {
        if name.is_empty() {
            return Err("destinationNamedPort is empty".into());
        }
        return Ok(ClusterPort::Named(name.clone()));
    }
    let (proto, m) = numbered
        .into_iter()
        .find_map(|(proto, m)| m.as_ref().map(|m| (proto, m)))
        .ok_or("no protocol set")?;
    let port = |n: i32| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("{proto} port {n} is outside 1..=65535"))
    };
    let Some(dest) = &m.destination_port else {
        return Ok(ClusterPort::Port(PortMatch::any(proto)));
    };
    match (dest.number, &dest.range) {
        (Some(n), None) => Ok(ClusterPort::Port(PortMatch::number(proto, port(n)?))),
        (None, Some(r)) => {
            let (start, end) = (port(r.start)?, port(r.end)?);
            if start >= end {
                return Err(format!(
                    "{proto} port range {start}-{end}: start must be below end"
                ));
            }
            Ok(ClusterPort::Port(PortMatch::range(proto, start, end)))
        }
        _ => Err(format!(
            "{proto} destinationPort must set exactly one of number and range"
        )),
    }
}

/// One rule, failing closed on what cannot be enforced.
fn rule(
    at: &str,
    name: Option<&str>,
    action: &cnp::Action,
    peers: Vec<Vec<PeerResult>>,
    protocols: Option<&[cnp::ProtocolMatch]>,
    not_enforced: &mut Vec<String>,
) -> ClusterRule {
    let mut problems = Vec::new();
    let action = match action {
        cnp::Action::Accept => Action::Accept,
        cnp::Action::Deny => Action::Deny,
        cnp::Action::Pass => Action::Pass,
        cnp::Action::Unknown => {
            problems.push("the action is not Accept, Deny or Pass".to_string());
            Action::Deny
        }
    };
    let mut known_peers = Vec::new();
    for p in peers.into_iter().flatten() {
        match p {
            Ok(p) => known_peers.push(p),
            Err(e) => problems.push(e),
        }
    }
    let mut ports = Vec::new();
    let mut lost_ports = false;
    for p in protocols.unwrap_or_default() {
        match protocol(p) {
            Ok(p) => ports.push(p),
            Err(e) => {
                lost_ports = true;
                problems.push(e);
            }
        }
    }
    let mut out = ClusterRule::new(action, known_peers).ports(ports);
    out.name = name.unwrap_or_default().to_string();
    if problems.is_empty() {
        return out;
    }
    let what = if action == Action::Accept {
        // Fails closed: what cannot be read matches nothing (and a rule
        // left with no protocol it can read matches nothing at all).
        if lost_ports && out.ports.is_empty() {
            out.peers.clear();
        }
        "matches none of it"
    } else {
        out = ClusterRule::new(Action::Deny, vec![ClusterPeer::Anything]);
        out.name = name.unwrap_or_default().to_string();
        "denies all traffic"
    };
    not_enforced.push(format!("{at}: {}; the rule {what}", problems.join("; ")));
    out
}

/// A Node: its name, labels and every address of its status that is an IP.
pub fn node(n: &core::Node) -> Result<Node> {
    let name = n
        .metadata
        .name
        .clone()
        .ok_or(Error::Missing("metadata.name"))?;
    let ips = n
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    Ok(Node {
        name,
        labels: n.metadata.labels.clone().unwrap_or_default(),
        ips,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MODE_ANNOTATION, Mode};
    use serde_json::json;

    fn cnp(spec: serde_json::Value) -> cnp::ClusterNetworkPolicy {
        serde_json::from_value(json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "guard", "generation": 3},
            "spec": spec,
        }))
        .expect("a ClusterNetworkPolicy")
    }

    fn team(t: &str) -> serde_json::Value {
        json!({"matchLabels": {"team": t}})
    }

    #[test]
    fn every_peer_and_protocol_form_converts() {
        let c = cluster_policy(&cnp(json!({
            "tier": "Admin", "priority": 7,
            "subject": {"pods": {"namespaceSelector": team("red"), "podSelector": {"matchLabels": {"app": "web"}}}},
            "ingress": [{"name": "r0", "action": "Pass", "from": [{"namespaces": team("blue")}],
                          "protocols": [{"tcp": {"destinationPort": {"number": 80}}},
                                        {"udp": {"destinationPort": {"range": {"start": 53, "end": 60}}}},
                                        {"destinationNamedPort": "web"}]}],
            "egress": [{"action": "Deny", "to": [
                {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}},
                {"nodes": {"matchLabels": {"role": "infra"}}},
                {"networks": ["10.1.2.3/16", "fd00::/64"]}]}],
        })))
        .unwrap();
        assert!(c.not_enforced.is_empty(), "{:?}", c.not_enforced);
        let p = c.policy;
        assert_eq!(
            (p.name.as_str(), p.tier, p.priority),
            ("guard", Tier::Admin, 7)
        );
        assert_eq!(p.subject_namespaces, Selector::labels([("team", "red")]));
        assert_eq!(p.subject_pods, Selector::labels([("app", "web")]));
        let r = &p.ingress[0];
        assert_eq!((r.name.as_str(), r.action), ("r0", Action::Pass));
        assert_eq!(
            r.peers,
            vec![ClusterPeer::Pods {
                namespaces: Selector::labels([("team", "blue")]),
                pods: Selector::everything()
            }]
        );
        assert_eq!(
            r.ports,
            vec![
                ClusterPort::Port(PortMatch::tcp(80)),
                ClusterPort::Port(PortMatch::range(Protocol::Udp, 53, 60)),
                ClusterPort::Named("web".into()),
            ]
        );
        let peers = &p.egress[0].peers;
        assert_eq!(peers.len(), 4, "{peers:?}");
        assert_eq!(
            peers[1],
            ClusterPeer::Nodes(Selector::labels([("role", "infra")]))
        );
        assert_eq!(
            peers[2],
            ClusterPeer::Network(parse_cidr("10.1.0.0/16").unwrap())
        );
        assert_eq!(
            peers[3],
            ClusterPeer::Network(parse_cidr("fd00::/64").unwrap())
        );
    }

    #[test]
    fn what_cannot_be_enforced_fails_closed_and_is_listed() {
        let c = cluster_policy(&cnp(json!({
            "tier": "Baseline", "priority": 0,
            "subject": {"namespaces": {}},
            "egress": [
                {"action": "Accept", "to": [{"domainNames": ["*.example.com"]}, {"namespaces": {}}]},
                {"action": "Accept", "to": [{"domainNames": ["example.com"]}]},
                {"action": "Pass", "to": [{"domainNames": ["example.com"]}]},
                {"action": "Deny", "to": [{"someFutureField": {}}]},
                {"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"icmp": {}}]},
                {"action": "Accept", "to": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"range": {"start": 9, "end": 9}}}}]},
            ],
        })))
        .unwrap();
        let e = &c.policy.egress;
        // Accept: the readable peer stays, the domain names match nothing.
        assert_eq!(e[0].action, Action::Accept);
        assert_eq!(
            e[0].peers,
            vec![ClusterPeer::Pods {
                namespaces: Selector::everything(),
                pods: Selector::everything()
            }]
        );
        assert!(
            e[1].peers.is_empty(),
            "an Accept of nothing readable matches nothing"
        );
        // Pass and Deny with what cannot be read: deny everything.
        for r in &e[2..5] {
            assert_eq!(
                (r.action, &r.peers, r.ports.is_empty()),
                (Action::Deny, &vec![ClusterPeer::Anything], true)
            );
        }
        // An Accept whose only protocol cannot be read matches nothing.
        assert!(e[5].peers.is_empty());
        assert_eq!(c.not_enforced.len(), 6, "{:?}", c.not_enforced);
        assert!(
            c.not_enforced[0].contains("spec.egress[0]")
                && c.not_enforced[0].contains("domainNames")
        );
        assert!(
            c.not_enforced[2].contains("denies all traffic"),
            "{}",
            c.not_enforced[2]
        );
        assert!(
            c.not_enforced[5].contains("start must be below end"),
            "{}",
            c.not_enforced[5]
        );
    }

    #[test]
    fn an_unreadable_tier_priority_or_subject_is_an_error_naming_the_field() {
        for (spec, field) in [
            (
                json!({"tier": "Middle", "priority": 1, "subject": {"namespaces": {}}}),
                "spec.tier",
            ),
            (
                json!({"tier": "Admin", "priority": 1001, "subject": {"namespaces": {}}}),
                "spec.priority",
            ),
            (
                json!({"tier": "Admin", "priority": -1, "subject": {"namespaces": {}}}),
                "spec.priority",
            ),
            (
                json!({"tier": "Admin", "priority": 1, "subject": {}}),
                "spec.subject",
            ),
            (
                json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {
                "matchExpressions": [{"key": "a", "operator": "Near"}]}}}),
                "spec.subject",
            ),
        ] {
            let err = cluster_policy(&cnp(spec.clone())).unwrap_err().to_string();
            assert!(
                err.contains(field) && err.contains("guard"),
                "{spec}: {err}"
            );
        }
    }

    #[test]
    fn the_mode_annotation_is_read_and_a_bad_value_refused() {
        let spec = json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}});
        let mut o = cnp(spec);
        assert_eq!(cluster_policy(&o).unwrap().policy.mode, Mode::Inherit);
        for (value, want) in [
            ("audit", Some(Mode::Audit)),
            ("enforce", Some(Mode::Enforce)),
            ("dry-run", None),
        ] {
            o.metadata.annotations =
                Some([(MODE_ANNOTATION.to_string(), value.to_string())].into());
            match (cluster_policy(&o), want) {
                (Ok(c), Some(m)) => assert_eq!(c.policy.mode, m),
                (Err(e), None) => assert!(e.to_string().contains("dry-run"), "{e}"),
                (other, _) => panic!("{value}: {other:?}"),
            }
        }
    }

    #[test]
    fn nodes_carry_their_labels_and_ip_addresses() {
        let n: core::Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"role": "infra"}},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "10.0.0.4"},
                {"type": "InternalIP", "address": "fd00::4"},
                {"type": "ExternalIP", "address": "20.1.2.3"},
                {"type": "InternalDNS", "address": "n1.internal"}]},
        }))
        .unwrap();
        let node = node(&n).unwrap();
        assert_eq!(node.labels.get("role").map(String::as_str), Some("infra"));
        let ips: Vec<String> = node.ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.0.0.4", "fd00::4", "20.1.2.3"]);
    }
}

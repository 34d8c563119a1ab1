//! Kubernetes API objects into the policy domain. The API server validates
//! NetworkPolicies, but the engine checks again: an object it cannot
//! understand is reported and never half-applied.

use crate::model::{
    Expression, LOG_ANNOTATION, Labels, MODE_ANNOTATION, Mode, NamedPort, Namespace, Peer, Pod,
    PodKey, Policy, PolicyTypes, PortMatch, PortRef, Protocol, Rule, Selector, parse_cidr,
};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("object has no {0}; the API server always sets it, so the object is not from one")]
    Missing(&'static str),
    #[error("networkpolicy {policy}: {reason}; fix the policy and apply it again")]
    Policy { policy: String, reason: String },
    #[error("clusternetworkpolicy {policy}: {reason}; fix the policy and apply it again")]
    ClusterPolicy { policy: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

mod cluster;
pub use cluster::{Converted, cluster_policy, node};

pub fn namespace(ns: &core::Namespace) -> Result<Namespace> {
    let name = ns
        .metadata
        .name
        .clone()
        .ok_or(Error::Missing("metadata.name"))?;
    let labels: Labels = ns.metadata.labels.clone().unwrap_or_default();
    let log_denied = ns
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LOG_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(Namespace {
        name,
        labels,
        log_denied,
    })
}

pub fn pod_key(pod: &core::Pod) -> Result<PodKey> {
    Ok(PodKey::new(
        pod.metadata
            .namespace
            .clone()
            .ok_or(Error::Missing("metadata.namespace"))?,
        pod.metadata
            .name
            .clone()
            .ok_or(Error::Missing("metadata.name"))?,
    ))
}

pub fn pod(p: &core::Pod) -> Result<Pod> {
    let key = pod_key(p)?;
    let labels = p.metadata.labels.clone().unwrap_or_default();
    let spec = p.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let status = p.status.as_ref();
    let terminated = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    let mut ips = Vec::new();
    if let Some(st) = status {
        for ip in st.pod_ips.iter().flatten() {
            if let Ok(a) = ip.ip.parse() {
                ips.push(a);
            }
        }
        if ips.is_empty()
            && let Some(a) = st.pod_ip.as_deref().and_then(|s| s.parse().ok())
        {
            ips.push(a);
        }
    }
    ips.sort();
    ips.dedup();
    let mut named_ports = Vec::new();
    if let Some(s) = spec {
        // Init containers count too: native sidecars serve ports.
        let containers = s
            .containers
            .iter()
            .chain(s.init_containers.iter().flatten());
        for c in containers {
            for port in c.ports.iter().flatten() {
                let Some(name) = &port.name else { continue };
                let Ok(number) = u16::try_from(port.container_port) else {
                    continue;
                };
                let protocol = port
                    .protocol
                    .as_deref()
                    .map(|p| p.parse::<Protocol>())
                    .unwrap_or(Ok(Protocol::Tcp));
                if let Ok(protocol) = protocol {
                    named_ports.push(NamedPort {
                        name: name.clone(),
                        protocol,
                        port: number,
                    });
                }
            }
        }
    }
    Ok(Pod {
        key,
        labels,
        ips,
        host_network,
        terminated,
        named_ports,
    })
}

pub fn selector(s: &LabelSelector) -> Result<Selector, String> {
    let mut out = Selector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions: Vec::new(),
    };
    for req in s.match_expressions.iter().flatten() {
        let values = req.values.clone().unwrap_or_default();
        let key = req.key.clone();
        let expr = match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "matchExpressions on {key:?}: operator {} needs at least one value",
                    req.operator
                ));
            }
            "In" => Expression::In(key, values),
            "NotIn" => Expression::NotIn(key, values),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "matchExpressions on {key:?}: operator {} takes no values",
                    req.operator
                ));
            }
            "Exists" => Expression::Exists(key),
            "DoesNotExist" => Expression::DoesNotExist(key),
            other => {
                return Err(format!(
                    "matchExpressions on {key:?}: unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"
                ));
            }
        };
        out.match_expressions.push(expr);
    }
    Ok(out)
}

fn peer(p: &net::NetworkPolicyPeer) -> Result<Peer, String> {
    if let Some(block) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err("a peer with ipBlock may not also have selectors".into());
        }
        let cidr = parse_cidr(&block.cidr)?;
        let mut except = Vec::new();
        for e in block.except.iter().flatten() {
            let c = parse_cidr(e)?;
            if !cidr.contains_cidr(&c) || c == cidr {
                return Err(format!(
                    "ipBlock except {c} must be strictly inside cidr {cidr}"
                ));
            }
            except.push(c);
        }
        except.sort();
        return Ok(Peer::IpBlock { cidr, except });
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err("a peer needs podSelector, namespaceSelector or ipBlock".into());
    }
    Ok(Peer::Pods {
        namespaces: p.namespace_selector.as_ref().map(selector).transpose()?,
        pods: p.pod_selector.as_ref().map(selector).transpose()?,
    })
}

fn port(p: &net::NetworkPolicyPort) -> Result<PortMatch, String> {
    let protocol = match &p.protocol {
        Some(s) => s.parse::<Protocol>()?,
        None => Protocol::Tcp,
    };
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(
            u16::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("port {n} is out of range 1-65535"))?,
        )),
        Some(IntOrString::String(s)) => {
            if s.is_empty() || s.len() > 15 || !s.chars().any(|c| c.is_ascii_alphabetic()) {
                return Err(format!(
                    "port {s:?} is neither a number nor a port name (a name has 1-15 characters with a letter)"
                ));
            }
            Some(PortRef::Name(s.clone()))
        }
    };
    let end_port = match p.end_port {
        None => None,
        Some(end) => {
            let Some(PortRef::Number(start)) = port else {
                return Err("endPort needs a numeric port".into());
            };
            let end = u16::try_from(end)
                .ok()
                .filter(|e| *e >= start)
                .ok_or_else(|| format!("endPort {end} must be between port {start} and 65535"))?;
            Some(end)
        }
    };
    Ok(PortMatch {
        protocol,
        port,
        end_port,
    })
}

fn rule(
    peers: &Option<Vec<net::NetworkPolicyPeer>>,
    ports: &Option<Vec<net::NetworkPolicyPort>>,
) -> Result<Rule, String> {
    Ok(Rule {
        peers: peers.iter().flatten().map(peer).collect::<Result<_, _>>()?,
        ports: ports.iter().flatten().map(port).collect::<Result<_, _>>()?,
    })
}

pub fn policy(np: &net::NetworkPolicy) -> Result<Policy> {
    let namespace = np
        .metadata
        .namespace
        .clone()
        .ok_or(Error::Missing("metadata.namespace"))?;
    let name = np
        .metadata
        .name
        .clone()
        .ok_or(Error::Missing("metadata.name"))?;
    let fail = |reason: String| Error::Policy {
        policy: format!("{namespace}/{name}"),
        reason,
    };
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = spec
        .pod_selector
        .as_ref()
        .map(selector)
        .transpose()
        .map_err(fail)?
        .unwrap_or_default();
    let ingress: Vec<Rule> = spec
        .ingress
        .iter()
        .flatten()
        .map(|r| rule(&r.from, &r.ports))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let egress: Vec<Rule> = spec
        .egress
        .iter()
        .flatten()
        .map(|r| rule(&r.to, &r.ports))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    let types = match &spec.policy_types {
        // Defaulting as the API server does: Ingress always, Egress when
        // the policy has egress rules.
        None => PolicyTypes {
            ingress: true,
            egress: spec.egress.is_some(),
        },
        Some(list) if list.is_empty() => PolicyTypes {
            ingress: true,
            egress: spec.egress.is_some(),
        },
        Some(list) => {
            let mut t = PolicyTypes {
                ingress: false,
                egress: false,
            };
            for ty in list {
                match ty.as_str() {
                    "Ingress" => t.ingress = true,
                    "Egress" => t.egress = true,
                    other => {
                        return Err(fail(format!(
                            "unknown policyType {other:?}; use Ingress or Egress"
                        )));
                    }
                }
            }
            t
        }
    };
    let mode = mode_of(&np.metadata).map_err(fail)?;
    Ok(Policy {
        namespace,
        name,
        pod_selector,
        types,
        ingress,
        egress,
        mode,
    })
}

/// What to enforce for a policy [`policy`] cannot convert: no rule, so
/// nothing is allowed, in the directions it names, for the pods it selects
/// (every pod of its namespace when its podSelector is unreadable too).
/// Unknown means denied. `None` only for an object with no namespace or
/// name, which no API server sends.
pub fn isolating(np: &net::NetworkPolicy) -> Option<Policy> {
    let namespace = np.metadata.namespace.as_deref()?;
    let name = np.metadata.name.as_deref()?;
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = spec
        .pod_selector
        .as_ref()
        .and_then(|s| selector(s).ok())
        .unwrap_or_default();
    let mut types = PolicyTypes {
        ingress: true,
        egress: spec.egress.is_some(),
    };
    if let Some(list) = spec.policy_types.as_ref().filter(|l| !l.is_empty()) {
        let named = |t: &str| list.iter().any(|x| x == t);
        let unknown = list.iter().any(|x| x != "Ingress" && x != "Egress");
        // A direction it names, or both when it names one we do not know.
        types = PolicyTypes {
            ingress: unknown || named("Ingress"),
            egress: unknown || named("Egress"),
        };
    }
    let mut p = Policy::new(namespace, name, pod_selector);
    p.types = types;
    Some(p)
}

/// The `policy.underlay.io/mode` annotation of a NetworkPolicy or a
/// ClusterNetworkPolicy (none: inherit the agent's default mode).
pub fn mode_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<Mode, String> {
    Mode::parse(
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(MODE_ANNOTATION))
            .map(String::as_str),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn np(v: serde_json::Value) -> net::NetworkPolicy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn policy_types_default_as_the_api_server_does() {
        let p = policy(&np(json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}}})))
        .unwrap();
        assert_eq!((p.types.ingress, p.types.egress), (true, false));
        let p = policy(&np(json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "egress": []}})))
        .unwrap();
        assert_eq!((p.types.ingress, p.types.egress), (true, true));
        let p = policy(&np(json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]}})))
        .unwrap();
        assert_eq!((p.types.ingress, p.types.egress), (false, true));
    }

    #[test]
    fn a_full_policy_converts() {
        let p = policy(&np(json!({"metadata": {"name": "p", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{
                    "from": [
                        {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y"]}]},
                         "podSelector": {"matchLabels": {"pod": "b"}}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
                    ],
                    "ports": [{"port": 80}, {"protocol": "UDP", "port": "dns"},
                              {"protocol": "SCTP", "port": 1000, "endPort": 2000}, {"protocol": "UDP"}]
                }]
            }})))
        .unwrap();
        let r = &p.ingress[0];
        assert_eq!(r.peers.len(), 2);
        assert_eq!(r.ports[0], PortMatch::tcp(80));
        assert_eq!(r.ports[1], PortMatch::named(Protocol::Udp, "dns"));
        assert_eq!(r.ports[2], PortMatch::range(Protocol::Sctp, 1000, 2000));
        assert_eq!(r.ports[3], PortMatch::any(Protocol::Udp));
        assert!(matches!(
            &r.peers[0],
            Peer::Pods {
                namespaces: Some(_),
                pods: Some(_)
            }
        ));
    }

    #[test]
    fn bad_policies_are_rejected_with_the_reason() {
        let cases = [
            (json!({"ingress": [{"from": [{}]}]}), "needs podSelector"),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
                "too long",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
                "strictly inside",
            ),
            (
                json!({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
                "unsupported protocol",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 0}]}]}),
                "out of range",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "80"}]}]}),
                "neither a number",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}),
                "numeric port",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
                "endPort 80",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
                "unknown operator",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
                "at least one value",
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}}),
                "takes no values",
            ),
            (json!({"policyTypes": ["Sideways"]}), "unknown policyType"),
        ];
        for (spec, want) in cases {
            let err = policy(&np(
                json!({"metadata": {"name": "p", "namespace": "x"}, "spec": spec}),
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn pods_convert_with_ips_named_ports_and_phase() {
        let p: core::Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
            "spec": {"containers": [{"name": "c", "ports": [
                {"name": "web", "containerPort": 8080},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                {"containerPort": 9}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}
        }))
        .unwrap();
        let d = pod(&p).unwrap();
        assert_eq!(d.ips.len(), 2);
        assert_eq!(d.resolve("web", Protocol::Tcp), Some(8080));
        assert_eq!(d.resolve("dns", Protocol::Udp), Some(53));
        assert_eq!(d.resolve("dns", Protocol::Tcp), None);
        assert!(d.selectable());
        let done: core::Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "x"}, "status": {"phase": "Succeeded"}
        }))
        .unwrap();
        assert!(!pod(&done).unwrap().selectable());
    }

    #[test]
    fn namespaces_carry_the_log_annotation() {
        let n: core::Namespace = serde_json::from_value(json!({
            "metadata": {"name": "x", "labels": {"a": "b"},
                         "annotations": {LOG_ANNOTATION: "true"}}
        }))
        .unwrap();
        let d = namespace(&n).unwrap();
        assert!(d.log_denied);
        assert_eq!(d.labels.get("a").map(String::as_str), Some("b"));
    }
}

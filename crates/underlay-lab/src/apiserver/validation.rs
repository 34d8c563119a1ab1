//! Defaulting and validation, worded like kube-apiserver: failures are
//! reported as `422 Invalid` with field causes. [`default_and_validate`]
//! runs the kind's rules, then a custom resource's schema, then the metadata
//! checks every kind shares. The rules, by concern:
//!
//! - `names`, `ip`, `label_selector`, `metadata`: the formats of names, keys,
//!   CIDRs and IPs, label selectors, and every object's metadata;
//! - one module per core kind that matters to networking: `namespace`
//!   (labels, finalizer), `network_policy` (defaulting and ipBlock, port and
//!   protocol checks), `node` (podCIDR consistency and immutability), `pod`
//!   (spec checks and immutability, consistent IPs) with `pod_defaults`,
//!   `config_data` (ConfigMaps and Secrets) and `crd`;
//! - the workload, RBAC, disruption-budget and priority kinds a deployment of
//!   underlay is made of live in `kinds.rs`.

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult, Cause};
use super::kinds;
use super::resources::{Builtin, ResourceType};

mod config_data;
mod crd;
mod ip;
mod label_selector;
mod metadata;
mod names;
mod namespace;
mod network_policy;
mod node;
mod pod;
mod pod_defaults;

pub(super) use ip::parse_cidr;
pub(super) use label_selector::validate_selector;
pub(super) use names::{label_value, qualified_name};
pub(super) use pod::validate_pod_spec;
pub(super) use pod_defaults::pod_spec_defaults;

/// Sets `key` to `value` when it is missing or null: how every default is
/// written.
pub(super) fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

/// Default and validate `obj` (a create when `old` is None) in place.
pub fn default_and_validate(
    rt: &ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
) -> ApiResult<()> {
    let mut causes = Vec::new();
    match rt.builtin {
        Some(Builtin::Namespace) => namespace::namespace(obj, old),
        Some(Builtin::NetworkPolicy) => network_policy::network_policy(obj, &mut causes),
        Some(Builtin::Node) => node::node(obj, old, &mut causes),
        Some(Builtin::Pod) => pod::pod(obj, old, &mut causes),
        Some(Builtin::Secret) => config_data::secret(obj, old, &mut causes),
        Some(Builtin::ConfigMap) => config_data::config_map(obj, old, &mut causes),
        Some(Builtin::Crd) => crd::crd(obj, old, &mut causes),
        Some(Builtin::Deployment) => kinds::workload("Deployment", obj, old, &mut causes),
        Some(Builtin::DaemonSet) => kinds::workload("DaemonSet", obj, old, &mut causes),
        Some(Builtin::ClusterRole) => kinds::role(true, obj, &mut causes),
        Some(Builtin::Role) => kinds::role(false, obj, &mut causes),
        Some(Builtin::ClusterRoleBinding) => kinds::binding(true, obj, old, &mut causes),
        Some(Builtin::RoleBinding) => kinds::binding(false, obj, old, &mut causes),
        Some(Builtin::PodDisruptionBudget) => kinds::disruption_budget(obj, &mut causes),
        Some(Builtin::PriorityClass) => kinds::priority_class(obj, old, &mut causes),
        Some(Builtin::CoreEvent) | Some(Builtin::EventsV1)
            if obj["involvedObject"]
                .as_object()
                .is_none_or(|o| o.is_empty()) =>
        {
            causes.push(Cause::required("involvedObject"));
        }
        _ => {}
    }
    if let Some(schema) = &rt.schema {
        super::schema::prune_and_validate(schema, obj, &mut causes);
    }
    metadata::validate_metadata(rt, obj, &mut causes);
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            rt,
            obj["metadata"]["name"].as_str().unwrap_or(""),
            &causes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::names::{dns1123_label, dns1123_subdomain};
    use super::*;
    use crate::apiserver::resources::builtins;
    use serde_json::json;

    fn rt(kind: &str) -> ResourceType {
        builtins()
            .into_iter()
            .find(|t| t.kind == kind && t.group != "events.k8s.io")
            .unwrap()
    }

    fn np(spec: Value) -> Value {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn policy_types_default_from_rules() {
        let cases = [
            (json!({"podSelector": {}}), json!(["Ingress"])),
            (
                json!({"podSelector": {}, "ingress": [{}]}),
                json!(["Ingress"]),
            ),
            (
                json!({"podSelector": {}, "egress": [{}]}),
                json!(["Ingress", "Egress"]),
            ),
            (json!({"podSelector": {}, "egress": []}), json!(["Ingress"])),
            (
                json!({"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}),
                json!(["Egress"]),
            ),
        ];
        for (spec, want) in cases {
            let mut obj = np(spec.clone());
            default_and_validate(&rt("NetworkPolicy"), &mut obj, None).unwrap();
            assert_eq!(obj["spec"]["policyTypes"], want, "{spec}");
        }
    }

    #[test]
    fn network_policy_validation_rejects_bad_fields() {
        let cases = [
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/+8"}}]}]}),
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/+16"]}}]}]}),
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                json!({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]}),
                "spec.egress[0].to[0].ipBlock.except[0]",
            ),
            (
                json!({"ingress": [{"ports": [{"protocol": "ICMP", "port": 80}]}]}),
                "spec.ingress[0].ports[0].protocol",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 70000}]}]}),
                "spec.ingress[0].ports[0].port",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 0}]}]}),
                "spec.ingress[0].ports[0].port",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                json!({"ingress": [{"ports": [{"port": 100, "endPort": 90}]}]}),
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                json!({"ingress": [{"ports": [{"port": "not_a_name!"}]}]}),
                "spec.ingress[0].ports[0].port",
            ),
            (
                json!({"ingress": [{"from": [{}]}]}),
                "spec.ingress[0].from[0]",
            ),
            (
                json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
                "spec.ingress[0].from[0]",
            ),
            (json!({"policyTypes": ["Sideways"]}), "spec.policyTypes[0]"),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}}),
                "spec.podSelector.matchExpressions[0].values",
            ),
        ];
        for (spec, field) in cases {
            let mut obj = np(spec.clone());
            let err = default_and_validate(&rt("NetworkPolicy"), &mut obj, None).unwrap_err();
            assert_eq!(err.code, 422, "{spec}");
            let causes = err.details.as_ref().unwrap()["causes"]
                .as_array()
                .unwrap()
                .clone();
            assert!(
                causes.iter().any(|c| c["field"] == field),
                "{spec}: {causes:?}"
            );
        }
    }

    #[test]
    fn valid_network_policy_gets_tcp_default() {
        let mut obj = np(
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 80}, {"port": "http"}, {"port": 1000, "endPort": 2000, "protocol": "SCTP"}], "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}, {"namespaceSelector": {}, "podSelector": {}}]}]}),
        );
        default_and_validate(&rt("NetworkPolicy"), &mut obj, None).unwrap();
        assert_eq!(obj["spec"]["ingress"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(obj["spec"]["ingress"][0]["ports"][2]["protocol"], "SCTP");
    }

    #[test]
    fn node_pod_cidrs_are_immutable_once_set() {
        let node = |cidrs: Value| json!({"metadata": {"name": "n"}, "spec": {"podCIDRs": cidrs}});
        let mut old = node(json!([]));
        default_and_validate(&rt("Node"), &mut old, None).unwrap();
        let mut set = node(json!(["10.0.1.0/24"]));
        default_and_validate(&rt("Node"), &mut set, Some(&old)).unwrap();
        assert_eq!(set["spec"]["podCIDR"], "10.0.1.0/24");
        let mut changed = node(json!(["10.0.2.0/24"]));
        let err = default_and_validate(&rt("Node"), &mut changed, Some(&set)).unwrap_err();
        err.assert_refusal(
            422,
            "node updates may not change podCIDR except from \"\" to valid",
        );
        let mut dual = node(json!(["10.0.1.0/24", "fd00::/64"]));
        default_and_validate(&rt("Node"), &mut dual, None).unwrap();
        let mut two_v4 = node(json!(["10.0.1.0/24", "10.0.2.0/24"]));
        assert_eq!(
            default_and_validate(&rt("Node"), &mut two_v4, None)
                .unwrap_err()
                .code,
            422
        );
        for cidr in ["10.0.1.0/99", "10.0.1.0/+24"] {
            let mut bad = node(json!([cidr]));
            let err = default_and_validate(&rt("Node"), &mut bad, None).unwrap_err();
            err.assert_refusal(422, "spec.podCIDRs[0]");
        }
    }

    #[test]
    fn pod_ips_follow_pod_ip() {
        let pod = |status: Value| json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": status});
        let mut a = pod(json!({"podIP": "10.0.0.5"}));
        default_and_validate(&rt("Pod"), &mut a, None).unwrap();
        assert_eq!(a["status"]["podIPs"], json!([{"ip": "10.0.0.5"}]));
        let mut b = pod(json!({"podIPs": [{"ip": "10.0.0.6"}, {"ip": "fd00::6"}]}));
        default_and_validate(&rt("Pod"), &mut b, None).unwrap();
        assert_eq!(b["status"]["podIP"], "10.0.0.6");
        let mut c = pod(json!({"podIPs": [{"ip": "10.0.0.6"}, {"ip": "10.0.0.7"}]}));
        assert_eq!(
            default_and_validate(&rt("Pod"), &mut c, None)
                .unwrap_err()
                .code,
            422
        );
        let mut d = pod(json!({"podIPs": [{"ip": "not-an-ip"}]}));
        assert_eq!(
            default_and_validate(&rt("Pod"), &mut d, None)
                .unwrap_err()
                .code,
            422
        );
    }

    #[test]
    fn names_and_labels_are_validated() {
        assert!(dns1123_subdomain("a.b-c.d").is_ok());
        assert!(dns1123_subdomain("A").is_err());
        assert!(dns1123_label("a.b").is_err());
        assert!(qualified_name("example.com/Key_1").is_ok());
        assert!(qualified_name("bad key").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("-x").is_err());
        let mut ns = json!({"metadata": {"name": "Bad_Name"}});
        assert_eq!(
            default_and_validate(&rt("Namespace"), &mut ns, None)
                .unwrap_err()
                .code,
            422
        );
        let mut ns = json!({"metadata": {"name": "good"}});
        default_and_validate(&rt("Namespace"), &mut ns, None).unwrap();
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "good"
        );
    }

    #[test]
    fn secret_string_data_is_merged_as_base64() {
        let mut s = json!({"metadata": {"name": "s"}, "stringData": {"k": "hello"}});
        default_and_validate(&rt("Secret"), &mut s, None).unwrap();
        assert_eq!(s["data"]["k"], "aGVsbG8=");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
    }
}

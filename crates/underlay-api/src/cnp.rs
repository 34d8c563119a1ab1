//! ClusterNetworkPolicy, `policy.networking.k8s.io/v1alpha2` of the
//! kubernetes-sigs network-policy-api project: the Rust types, field by field
//! as the project's Go types define them, and the CustomResourceDefinition
//! derived from them (`crd()`), which `deploy/base/clusternetworkpolicies.yaml`
//! holds.
//!
//! Decoding is lenient where the API may grow: fields this version does not
//! know are ignored, and an enum value it does not know decodes as `Unknown`,
//! so one object from a newer CRD never fails a whole list or watch. A peer
//! or subject with none of the fields known here decodes with every field
//! `None`; the policy engine treats both cases as "fail closed". The schema
//! keeps the server strict: it lists only the real enum values and requires
//! exactly one field where the API says so.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most rules one direction of a policy may hold, and the most peers,
/// protocols, networks or domain names one rule may list.
pub const MAX_ITEMS: usize = 25;

/// The cluster-wide policy's desired state: which pods it applies to, in
/// which tier and at which priority, and its rules in each direction.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[kube(
    group = "policy.networking.k8s.io",
    version = "v1alpha2",
    kind = "ClusterNetworkPolicy",
    status = "ClusterNetworkPolicyStatus",
    shortname = "cnp",
    derive = "PartialEq",
    doc = "A network policy for the whole cluster, evaluated in the Admin tier (before \
           NetworkPolicy) or the Baseline tier (after it).",
    // The JSON form: clippy takes the repeated `type_` of the structured
    // form for duplicated attributes.
    printcolumn = r#"{"name": "Tier", "type": "string", "jsonPath": ".spec.tier"}"#,
    printcolumn = r#"{"name": "Priority", "type": "string", "jsonPath": ".spec.priority"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// Where the policy sits in evaluation order: Admin policies decide
    /// before any NetworkPolicy and cannot be overridden by one; Baseline
    /// policies decide only for connections no NetworkPolicy decided. A
    /// connection no tier decides is allowed.
    pub tier: Tier,
    /// Precedence within the tier, 0 to 1000: lower numbers are evaluated
    /// first. Two policies of one tier with the same priority that match the
    /// same connection may be applied in either order.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// The pods the policy applies to.
    pub subject: Subject,
    /// Rules for traffic arriving at the subject's pods, in precedence order
    /// (the first matching rule decides). Without any, the policy leaves
    /// incoming traffic alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 25))]
    pub ingress: Vec<IngressRule>,
    /// Rules for traffic leaving the subject's pods, in precedence order.
    /// Without any, the policy leaves outgoing traffic alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 25))]
    pub egress: Vec<EgressRule>,
}

/// The tier of a policy. `Unknown` stands for any value this version does
/// not know (never valid on the server, whose schema lists only the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Tier {
    Admin,
    Baseline,
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// What a matching rule does. `Accept` and `Deny` end evaluation for the
/// connection in that direction (replies and related ICMP follow an
/// accepted connection); `Pass` skips the rest of the tier and leaves the
/// decision to the next one. `Unknown` stands for any value this version
/// does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    Accept,
    Deny,
    Pass,
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// The pods a policy applies to: exactly one of the fields is set.
/// Host-network pods are never selected.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct Subject {
    /// Every pod of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The pods a pod selector picks within the namespaces a namespace
    /// selector picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// One rule for incoming traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// A label for the rule (at most 100 characters), for status, logs and
    /// error messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    /// What the rule does with the traffic it matches.
    pub action: Action,
    /// The sources the rule matches (any one of them matching is enough);
    /// 1 to 25 of them.
    #[schemars(length(min = 1, max = 25))]
    pub from: Vec<IngressPeer>,
    /// Narrows the match to these protocols and ports (any one matching is
    /// enough); unset matches every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// One rule for outgoing traffic. A named port cannot be combined with a
/// networks, nodes or domainNames peer: only pods have named ports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": EGRESS_NAMED_PORT_RULE,
    "message": "a destinationNamedPort cannot be used with networks, nodes or domainNames peers: only pods have named ports",
}]))]
pub struct EgressRule {
    /// A label for the rule (at most 100 characters), for status, logs and
    /// error messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,
    /// What the rule does with the traffic it matches.
    pub action: Action,
    /// The destinations the rule matches (any one of them matching is
    /// enough); 1 to 25 of them.
    #[schemars(length(min = 1, max = 25))]
    pub to: Vec<EgressPeer>,
    /// Narrows the match to these protocols and ports (any one matching is
    /// enough); unset matches every protocol and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// The CEL rule refusing named ports in an egress rule that has a peer
/// without named ports (the same expression the upstream CRD carries, so
/// the two accept the same objects).
pub const EGRESS_NAMED_PORT_RULE: &str = "!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames)) && has(self.protocols) && self.protocols.exists(protocol, has(protocol.destinationNamedPort)))";

/// A source of incoming traffic: exactly one field is set. A peer with none
/// of the fields known here comes from a newer API version; it decodes with
/// both `None`, and the engine fails closed on it (an Accept rule matches
/// nothing, a Deny or Pass rule matches everything).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct IngressPeer {
    /// Every pod of the namespaces this selects (host-network pods never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The pods a pod selector picks within the namespaces a namespace
    /// selector picks (host-network pods never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// A destination of outgoing traffic: exactly one field is set; none known
/// is handled as for an ingress peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct EgressPeer {
    /// Every pod of the namespaces this selects (host-network pods never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The pods a pod selector picks within the namespaces a namespace
    /// selector picks (host-network pods never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// The nodes whose labels this selects, matched by the addresses in
    /// their status; an empty selector selects every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// Destinations by address: 1 to 25 distinct IPv4 or IPv6 CIDRs. Pod
    /// traffic to an address inside them matches too, and so does ICMP of
    /// the family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "networks_schema")]
    pub networks: Option<Vec<String>>,
    /// Destinations by DNS name, only in Accept rules: 1 to 25 distinct
    /// names, each exact (`example.com`) or with a leading `*.` standing for
    /// one or more whole labels (`*.example.com` matches `a.b.example.com`,
    /// not `example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "domain_names_schema")]
    pub domain_names: Option<Vec<String>>,
}

/// The longest text a network may be (an IPv6 address and a prefix).
pub const MAX_CIDR_LENGTH: usize = 43;

/// A domain name as the API accepts it: an optional `*.` prefix, then two
/// or more labels of letters, digits, `-` and `_` (neither first nor last),
/// and an optional trailing dot.
pub const DOMAIN_NAME_PATTERN: &str = r"^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$";

fn networks_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_ITEMS,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": MAX_CIDR_LENGTH,
            "x-kubernetes-validations": [{
                "rule": "isCIDR(self)",
                "message": "not a CIDR: give an IPv4 or IPv6 network such as 10.0.0.0/8 or fd00::/8",
            }],
        },
    })
}

fn domain_names_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_ITEMS,
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "pattern": DOMAIN_NAME_PATTERN},
    })
}

/// Pods picked by two selectors: the namespaces first, then the pods in
/// them. An empty selector picks everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// The namespaces; empty (or left out) selects them all.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// The pods within those namespaces; empty selects them all.
    pub pod_selector: LabelSelector,
}

/// One protocol (and optionally its destination port) or a named port:
/// exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct ProtocolMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<PortMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<PortMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<PortMatch>,
    /// A destination port by the name a container of the destination pod
    /// gives it (any protocol the port is declared with). Only pods have
    /// named ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// The attributes of one protocol to match; at least one is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct PortMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// A port number or a range of them: exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub number: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

/// The ports from `start` to `end`, both included; `start` is below `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.start < self.end",
    "message": "start must be below end",
}]))]
pub struct PortRange {
    #[schemars(range(min = 1, max = 65535))]
    pub start: i32,
    #[schemars(range(min = 1, max = 65535))]
    pub end: i32,
}

/// What the implementations report about the policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = absent_when_unset)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyStatus {
    /// The latest observations, at most one per condition type.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Drops `nullable` and `default` from the properties of an object's
/// schema: an unset optional field is left out of the object (never null),
/// and the server adds nothing the client did not write.
fn absent_when_unset(schema: &mut Schema) {
    let properties = schema.get_mut("properties").and_then(Value::as_object_mut);
    for property in properties.into_iter().flat_map(|p| p.values_mut()) {
        if let Some(property) = property.as_object_mut() {
            property.remove("nullable");
            property.remove("default");
        }
    }
}

/// The CustomResourceDefinition of ClusterNetworkPolicy, as the API server
/// is given it (and `deploy/base/clusternetworkpolicies.yaml` holds it).
/// This, not the derive's `ClusterNetworkPolicy::crd()`, is the definition:
/// schemars marks every `Option` as `nullable`, which would let a client
/// write `null` where the API means "left out" (and count it as a set field
/// for the exactly-one checks), so the marks are removed here.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = ClusterNetworkPolicy::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            not_nullable(schema);
        }
    }
    crd
}

fn not_nullable(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    let nested = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(match &mut schema.items {
            Some(JSONSchemaPropsOrArray::Schema(item)) => Some(&mut **item),
            _ => None,
        })
        .chain(match &mut schema.additional_properties {
            Some(JSONSchemaPropsOrBool::Schema(value)) => Some(&mut **value),
            _ => None,
        });
    for sub in nested {
        not_nullable(sub);
    }
}

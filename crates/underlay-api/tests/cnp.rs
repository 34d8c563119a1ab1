//! ClusterNetworkPolicy's types: the example policies decode and encode back
//! to exactly what was written, decoding tolerates what a newer API version
//! may send, and the CRD's schema carries every constraint of the API in a
//! form kube-apiserver accepts (structural).

use serde_json::{Value, json};
use underlay_api::cnp::{
    Action, ClusterNetworkPolicy, EgressPeer, IngressPeer, Port, PortRange, Subject, Tier, crd,
};

fn examples() -> Vec<Value> {
    let text = include_str!("../testdata/clusternetworkpolicies.yaml");
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("the examples are YAML"))
        .collect()
}

#[test]
fn every_example_policy_survives_a_round_trip_with_every_field() {
    let examples = examples();
    assert_eq!(examples.len(), 3);
    for example in examples {
        let typed: ClusterNetworkPolicy =
            serde_json::from_value(example.clone()).expect("an example decodes");
        let back = serde_json::to_value(&typed).expect("a policy encodes");
        assert_eq!(back, example, "{}", example["metadata"]["name"]);
    }
}

#[test]
fn the_examples_decode_into_the_fields_they_name() {
    let policies: Vec<ClusterNetworkPolicy> = examples()
        .into_iter()
        .map(|e| serde_json::from_value(e).unwrap())
        .collect();
    let [monitoring, egress, baseline] = &policies[..] else {
        panic!("three examples");
    };
    assert_eq!(
        (monitoring.spec.tier, monitoring.spec.priority),
        (Tier::Admin, 10)
    );
    assert_eq!(baseline.spec.tier, Tier::Baseline);
    let actions: Vec<Action> = monitoring.spec.ingress.iter().map(|r| r.action).collect();
    assert_eq!(actions, [Action::Deny, Action::Accept, Action::Pass]);
    let scrapers = monitoring.spec.ingress[1].protocols.as_ref().unwrap();
    assert_eq!(
        scrapers[0].tcp.as_ref().unwrap().destination_port,
        Some(Port {
            number: None,
            range: Some(PortRange {
                start: 9000,
                end: 9100
            }),
        })
    );
    assert_eq!(
        scrapers[1].destination_named_port.as_deref(),
        Some("metrics")
    );
    let partner = &egress.spec.egress[2].to[0];
    assert_eq!(
        partner.domain_names.as_deref(),
        Some(
            &[
                "api.partner.example".to_string(),
                "*.cdn.example".to_string()
            ][..]
        )
    );
    assert!(egress.spec.egress[1].to[0].nodes.is_some());
    assert_eq!(
        egress.spec.egress[3].to[0].networks.as_ref().map(Vec::len),
        Some(3)
    );
    assert!(egress.spec.subject.pods.is_some() && egress.spec.subject.namespaces.is_none());
    assert!(monitoring.spec.egress.is_empty());
}

#[test]
fn a_value_outside_an_enum_decodes_as_unknown_without_failing_the_list() {
    let list = json!([
        {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
         "metadata": {"name": "future"},
         "spec": {"tier": "Developer", "priority": 5, "subject": {"namespaces": {}},
                  "ingress": [{"action": "Log", "from": [{"namespaces": {}}]}]}},
        {"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
         "metadata": {"name": "today"},
         "spec": {"tier": "Baseline", "priority": 5, "subject": {"namespaces": {}}}},
    ]);
    let policies: Vec<ClusterNetworkPolicy> = serde_json::from_value(list).unwrap();
    assert_eq!(policies[0].spec.tier, Tier::Unknown);
    assert_eq!(policies[0].spec.ingress[0].action, Action::Unknown);
    assert_eq!(policies[1].spec.tier, Tier::Baseline);
}

#[test]
fn fields_of_a_newer_version_are_ignored_leaving_nothing_known_set() {
    let peer: EgressPeer =
        serde_json::from_value(json!({"services": {"name": "db"}})).expect("decodes");
    assert_eq!(peer, EgressPeer::default());
    let peer: IngressPeer =
        serde_json::from_value(json!({"serviceAccounts": {}})).expect("decodes");
    assert_eq!(peer, IngressPeer::default());
    let subject: Subject = serde_json::from_value(json!({"nodes": {}})).expect("decodes");
    assert_eq!(subject, Subject::default());
}

/// The CRD's schema of the first (only) version.
fn schema() -> Value {
    let crd = serde_json::to_value(crd()).unwrap();
    assert_eq!(crd["spec"]["versions"].as_array().map(Vec::len), Some(1));
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The schema at a path of property names, `[]` standing for the items.
fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(schema, |s, step| match step {
        "[]" => &s["items"],
        name => &s["properties"][name],
    })
}

#[test]
fn the_crd_names_the_kind_as_the_api_does() {
    let crd = serde_json::to_value(crd()).unwrap();
    assert_eq!(
        crd["metadata"]["name"],
        "clusternetworkpolicies.policy.networking.k8s.io"
    );
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["cnp"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha2");
    assert_eq!(version["subresources"], json!({"status": {}}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Tier", "Priority", "Age"]);
}

#[test]
fn the_schema_carries_every_constraint_of_the_api() {
    let s = schema();
    let spec = at(&s, "spec");
    assert_eq!(spec["required"], json!(["priority", "subject", "tier"]));
    assert_eq!(at(&s, "spec.tier")["enum"], json!(["Admin", "Baseline"]));
    assert_eq!(
        at(&s, "spec.ingress.[].action")["enum"],
        json!(["Accept", "Deny", "Pass"])
    );
    let priority = at(&s, "spec.priority");
    assert_eq!(
        (priority["minimum"].as_f64(), priority["maximum"].as_f64()),
        (Some(0.0), Some(1000.0))
    );
    let exactly_one = [
        "spec.subject",
        "spec.ingress.[].from.[]",
        "spec.egress.[].to.[]",
        "spec.ingress.[].protocols.[]",
        "spec.egress.[].protocols.[]",
        "spec.egress.[].protocols.[].tcp.destinationPort",
    ];
    for path in exactly_one {
        let o = at(&s, path);
        assert_eq!(
            (&o["minProperties"], &o["maxProperties"]),
            (&json!(1), &json!(1)),
            "{path}"
        );
    }
    assert_eq!(
        at(&s, "spec.ingress.[].protocols.[].udp")["minProperties"],
        1
    );
    for (path, min, max) in [
        ("spec.ingress", None, 25),
        ("spec.egress", None, 25),
        ("spec.ingress.[].from", Some(1), 25),
        ("spec.egress.[].to", Some(1), 25),
        ("spec.egress.[].protocols", Some(1), 25),
        ("spec.egress.[].to.[].networks", Some(1), 25),
        ("spec.egress.[].to.[].domainNames", Some(1), 25),
    ] {
        let a = at(&s, path);
        assert_eq!(
            (a["minItems"].as_u64(), a["maxItems"].as_u64()),
            (min, Some(max)),
            "{path}"
        );
    }
    let number = at(
        &s,
        "spec.egress.[].protocols.[].sctp.destinationPort.number",
    );
    assert_eq!(
        (number["minimum"].as_f64(), number["maximum"].as_f64()),
        (Some(1.0), Some(65535.0))
    );
    assert_eq!(at(&s, "spec.ingress.[].name")["maxLength"], 100);
    assert_eq!(at(&s, "spec.egress.[].to.[].networks.[]")["maxLength"], 43);
    assert_eq!(
        at(&s, "spec.egress.[].to.[].networks")["x-kubernetes-list-type"],
        "set"
    );
    assert!(at(&s, "spec.egress.[].to.[].domainNames.[]")["pattern"].is_string());
    assert_eq!(
        at(&s, "status.conditions")["x-kubernetes-list-map-keys"],
        json!(["type"])
    );
}

#[test]
fn the_schema_carries_the_cel_rules_of_the_api() {
    let s = schema();
    let rules = |path: &str| -> Vec<String> {
        at(&s, path)["x-kubernetes-validations"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} has no rules"))
            .iter()
            .map(|r| {
                assert!(r["message"].is_string(), "{r}");
                r["rule"].as_str().unwrap().to_string()
            })
            .collect()
    };
    assert_eq!(
        rules("spec.ingress.[].protocols.[].tcp.destinationPort.range"),
        ["self.start < self.end"]
    );
    assert_eq!(rules("spec.egress.[].to.[].networks.[]"), ["isCIDR(self)"]);
    assert_eq!(
        rules("spec.egress.[]"),
        [underlay_api::cnp::EGRESS_NAMED_PORT_RULE]
    );
}

/// Where a schema breaks kube-apiserver's structural rules as our CRDs use
/// them: every node typed (or int-or-string / preserving unknown fields),
/// no `nullable`, `default`, `$ref` or logical junctors.
fn structural_problems(s: &Value, path: &str, out: &mut Vec<String>) {
    let Some(o) = s.as_object() else {
        out.push(format!("{path}: not an object"));
        return;
    };
    let untyped_ok = o.contains_key("x-kubernetes-int-or-string")
        || o.contains_key("x-kubernetes-preserve-unknown-fields");
    if !o.contains_key("type") && !untyped_ok {
        out.push(format!("{path}: no type"));
    }
    for key in [
        "nullable", "default", "$ref", "anyOf", "oneOf", "allOf", "not",
    ] {
        if o.contains_key(key) {
            out.push(format!("{path}: {key}"));
        }
    }
    for (name, sub) in o
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        structural_problems(sub, &format!("{path}.{name}"), out);
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub) = o.get(key).filter(|v| v.is_object()) {
            structural_problems(sub, &format!("{path}.{key}"), out);
        }
    }
}

#[test]
fn the_schema_is_structural() {
    let mut problems = Vec::new();
    structural_problems(&schema(), "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    // And the check itself finds what it looks for.
    let mut found = Vec::new();
    structural_problems(
        &json!({"type": "object", "properties": {"a": {"anyOf": [{}]}, "b": {"type": "string", "nullable": true}}}),
        "",
        &mut found,
    );
    assert_eq!(found, [".a: no type", ".a: anyOf", ".b: nullable"]);
}

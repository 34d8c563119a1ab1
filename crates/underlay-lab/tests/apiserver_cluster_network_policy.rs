//! ClusterNetworkPolicy on the embedded API server, with the CRD deploy/base
//! ships: kubectl applies the example policies (both tiers, every action,
//! every peer kind, port numbers, ranges and named ports) and lists them
//! with their tier and priority, and the server refuses what the API
//! forbids with 422 causes naming the field, as kube-apiserver does from
//! the same CRD (schema keywords and CEL rules).

mod support;

use std::path::PathBuf;

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use support::api::refusal;
use support::kubectl::{Lab, apply, kubectl, ok};

fn workspace_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// The lab with the CRD applied from deploy/base, as `kubectl apply -f`
/// does it, and established.
async fn lab_with_crd(test: &str) -> Option<Lab> {
    let lab = Lab::start(test).await?;
    let crd = workspace_file("deploy/base/clusternetworkpolicies.yaml");
    let out = ok(&lab.kc, &["apply", "-f", crd.to_str().unwrap()], None).await;
    assert!(out.contains("created"), "{out}");
    let crd_name = "crd/clusternetworkpolicies.policy.networking.k8s.io";
    ok(
        &lab.kc,
        &[
            "wait",
            "--for=condition=Established",
            crd_name,
            "--timeout=10s",
        ],
        None,
    )
    .await;
    Some(lab)
}

#[tokio::test]
async fn kubectl_applies_and_lists_the_example_policies() {
    let Some(lab) = lab_with_crd("kubectl_applies_and_lists_the_example_policies").await else {
        return;
    };
    let examples = workspace_file("crates/underlay-api/testdata/clusternetworkpolicies.yaml");
    let text = std::fs::read_to_string(&examples).unwrap();
    let out = apply(&lab.kc, &text).await;
    for name in [
        "admin-protect-monitoring",
        "admin-egress-boundaries",
        "baseline-isolate-namespaces",
    ] {
        let want = format!("clusternetworkpolicy.policy.networking.k8s.io/{name} created");
        assert!(out.contains(&want), "{want} missing from:\n{out}");
    }
    // What was written is what is stored: nothing pruned, nothing added.
    let stored: Value =
        serde_json::from_str(&ok(&lab.kc, &["get", "cnp", "-o", "json"], None).await).unwrap();
    let written: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    for policy in &written {
        let name = &policy["metadata"]["name"];
        let item = stored["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| &i["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} is listed"));
        assert_eq!(item["spec"], policy["spec"], "{name}");
    }
    // The CRD's printer columns: Tier, Priority, Age.
    let table = ok(&lab.kc, &["get", "cnp"], None).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "TIER", "PRIORITY", "AGE"], "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("baseline-isolate-namespaces"))
        .unwrap_or_else(|| panic!("no row in:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..3], ["Baseline", "1000"], "{table}");
}

/// A valid policy using every constraint the refusals below break.
fn valid_policy() -> Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "p"},
        "spec": {
            "tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                "protocols": [{"tcp": {"destinationPort": {"range": {"start": 1, "end": 2}}}}]}],
            "egress": [{"action": "Accept", "to": [
                {"networks": ["10.0.0.0/8", "fd00::/8"]}, {"domainNames": ["*.example.com"]}]}],
        },
    })
}

/// Sets the field at a JSON pointer, adding it to its object if missing.
fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match doc.pointer_mut(parent).unwrap() {
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        other => other[key] = value,
    }
}

fn api(lab: &Lab) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "policy.networking.k8s.io".into(),
        version: "v1alpha2".into(),
        api_version: "policy.networking.k8s.io/v1alpha2".into(),
        kind: "ClusterNetworkPolicy".into(),
        plural: "clusternetworkpolicies".into(),
    };
    Api::all_with(lab.server.client().unwrap(), &resource)
}

#[tokio::test]
async fn what_the_api_forbids_is_refused_naming_the_field() {
    let Some(lab) = lab_with_crd("what_the_api_forbids_is_refused_naming_the_field").await else {
        return;
    };
    let policies = api(&lab);
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let policy: DynamicObject = serde_json::from_value(valid_policy()).unwrap();
    policies
        .create(&params, &policy)
        .await
        .expect("the valid policy is accepted");
    let rule = json!({"action": "Deny", "from": [{"namespaces": {}}]});
    let cases = [
        (
            "/spec/priority",
            json!(1001),
            "spec.priority",
            "less than or equal to 1000",
        ),
        (
            "/spec/tier",
            json!("Developer"),
            "spec.tier",
            "Unsupported value: \"Developer\"",
        ),
        (
            "/spec/subject",
            json!({}),
            "spec.subject",
            "should have at least 1 properties",
        ),
        (
            "/spec/ingress/0/from/0",
            json!({"namespaces": {}, "pods": {"podSelector": {}}}),
            "spec.ingress[0].from[0]",
            "should have at most 1 properties",
        ),
        (
            "/spec/ingress/0/protocols/0/tcp/destinationPort/range",
            json!({"start": 80, "end": 80}),
            "spec.ingress[0].protocols[0].tcp.destinationPort.range",
            "start must be below end",
        ),
        (
            "/spec/ingress/0/protocols/0/tcp/destinationPort",
            json!({"number": 70000}),
            "spec.ingress[0].protocols[0].tcp.destinationPort.number",
            "less than or equal to 65535",
        ),
        (
            "/spec/egress/0/to/0/networks/1",
            json!("10.0.0.0/40"),
            "spec.egress[0].to[0].networks[1]",
            "not a CIDR",
        ),
        (
            "/spec/egress/0/to/0/networks/1",
            json!("10.0.0.0/8"),
            "spec.egress[0].to[0].networks[1]",
            "Duplicate value: \"10.0.0.0/8\"",
        ),
        (
            "/spec/egress/0/to/1/domainNames/0",
            json!("*.-bad.example"),
            "spec.egress[0].to[1].domainNames[0]",
            "should match",
        ),
        (
            "/spec/egress/0/protocols",
            json!([{"destinationNamedPort": "http"}]),
            "spec.egress[0]",
            "only pods have named ports",
        ),
        (
            "/spec/ingress",
            Value::Array(vec![rule; 26]),
            "spec.ingress",
            "must have at most 25 items",
        ),
        (
            "/spec/ingress/0/from",
            json!([]),
            "spec.ingress[0].from",
            "at least 1 items",
        ),
    ];
    for (pointer, value, field, message) in cases {
        let mut bad = valid_policy();
        set(&mut bad, pointer, value);
        let policy: DynamicObject = serde_json::from_value(bad).unwrap();
        let status = refusal(policies.create(&params, &policy).await.unwrap_err());
        assert_eq!(
            (status.code, status.reason.as_str()),
            (422, "Invalid"),
            "{field}"
        );
        let causes = status.details.map(|d| d.causes).unwrap_or_default();
        assert!(
            causes
                .iter()
                .any(|c| c.field == field && c.message.contains(message)),
            "{field}: {message} not among {causes:?}"
        );
    }
}

#[tokio::test]
async fn kubectl_shows_the_refusal_as_kube_apiserver_words_it() {
    let Some(lab) = lab_with_crd("kubectl_shows_the_refusal_as_kube_apiserver_words_it").await
    else {
        return;
    };
    let mut bad = valid_policy();
    bad["spec"]["priority"] = json!(1001);
    let (success, _, err) = kubectl(&lab.kc, &["apply", "-f", "-"], Some(&bad.to_string())).await;
    assert!(!success);
    assert!(
        err.contains("The ClusterNetworkPolicy \"p\" is invalid")
            && err.contains(
                "spec.priority: Invalid value: 1001: spec.priority in body should be less than or equal to 1000"
            ),
        "{err}"
    );
}

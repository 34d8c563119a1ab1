//! The embedded API server's write semantics through kube-rs: every patch
//! type on Nodes and Pods, status subresources, server-side apply, networking
//! defaulting and validation, custom resources, events, faults and snapshots.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::api::events::v1::Event as EventV1;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::api::{assert_refused, code, refusal, start};
use underlay_lab::apiserver::{ApiServer, Config, Failure, Match};

/// A JSON patch (kube's own `Patch::Json` uses another json-patch major).
async fn json_patch(
    client: &Client,
    path: &str,
    ops: serde_json::Value,
) -> Result<serde_json::Value, kube::Error> {
    let req = http::Request::patch(path)
        .header("content-type", "application/json-patch+json")
        .body(serde_json::to_vec(&ops).unwrap())
        .unwrap();
    client.request::<serde_json::Value>(req).await
}

async fn node(nodes: &Api<Node>, name: &str) -> Node {
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name}, "status": {"conditions": [
        {"type": "Ready", "status": "True"}, {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}]}}))
    .unwrap();
    nodes.create(&PostParams::default(), &n).await.unwrap()
}

async fn pod(pods: &Api<Pod>, name: &str) -> Pod {
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox:1"}], "nodeName": "n1"}}))
    .unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap()
}

#[tokio::test]
async fn node_patches_of_every_type() {
    let (_h, client) = start().await;
    let nodes: Api<Node> = Api::all(client.clone());
    node(&nodes, "n1").await;
    let pp = PatchParams::default();
    // Strategic merge on status merges conditions by type (the route controller's patch).
    let smp = Patch::Strategic(
        json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated"}]}}),
    );
    let n = nodes.patch_status("n1", &pp, &smp).await.unwrap();
    let conds = n.status.unwrap().conditions.unwrap();
    assert_eq!(conds.len(), 2);
    assert_eq!(
        conds
            .iter()
            .find(|c| c.type_ == "NetworkUnavailable")
            .unwrap()
            .status,
        "False"
    );
    // Merge patch on spec sets the podCIDRs once.
    let n = nodes
        .patch(
            "n1",
            &pp,
            &Patch::Merge(
                json!({"spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(n.spec.unwrap().pod_cidrs.unwrap(), vec!["10.244.1.0/24"]);
    // ... and never again.
    let err = nodes
        .patch(
            "n1",
            &pp,
            &Patch::Merge(
                json!({"spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}}),
            ),
        )
        .await
        .unwrap_err();
    let rule = "node updates may not change podCIDR except from \"\" to valid";
    assert_refused(err, 422, "Invalid", rule);
    // JSON patch, with a failing test op.
    let n = json_patch(
        &client,
        "/api/v1/nodes/n1",
        json!([{"op": "add", "path": "/metadata/labels", "value": {"zone": "a"}}]),
    )
    .await
    .unwrap();
    assert_eq!(n["metadata"]["labels"]["zone"], "a");
    let bad = json!([{"op": "test", "path": "/metadata/labels/zone", "value": "b"}]);
    assert_eq!(
        code(
            json_patch(&client, "/api/v1/nodes/n1", bad)
                .await
                .unwrap_err()
        ),
        422
    );
    // Writes to the main resource ignore status, and the other way round.
    let n = nodes
        .patch(
            "n1",
            &pp,
            &Patch::Merge(
                json!({"status": {"conditions": []}, "metadata": {"labels": {"x": "1"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(n.status.unwrap().conditions.unwrap().len(), 2);
    let n = nodes
        .patch_status(
            "n1",
            &pp,
            &Patch::Merge(
                json!({"metadata": {"labels": {"y": "1"}}, "status": {"phase": "Running"}}),
            ),
        )
        .await
        .unwrap();
    assert!(!n.labels().contains_key("y"));
    // A stale resourceVersion in a patch is a conflict.
    let stale = Patch::Merge(json!({"metadata": {"resourceVersion": "1", "labels": {"z": "1"}}}));
    assert_eq!(code(nodes.patch("n1", &pp, &stale).await.unwrap_err()), 409);
}

#[tokio::test]
async fn pod_patches_and_status_ips() {
    let (_h, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = pod(&pods, "p").await;
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    let pp = PatchParams::default();
    let p = pods
        .patch_status(
            "p",
            &pp,
            &Patch::Merge(json!({"status": {"podIP": "10.244.1.5", "phase": "Running"}})),
        )
        .await
        .unwrap();
    let st = p.status.unwrap();
    assert_eq!(st.pod_ips.unwrap()[0].ip, "10.244.1.5");
    let p = pods
        .patch_status("p", &pp, &Patch::Strategic(json!({"status": {"podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}], "conditions": [{"type": "Ready", "status": "True"}]}})))
        .await
        .unwrap();
    let st = p.status.unwrap();
    assert_eq!(st.pod_ips.unwrap().len(), 2);
    assert_eq!(st.conditions.unwrap().len(), 1);
    let bad = Patch::Merge(
        json!({"status": {"podIP": "", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}}),
    );
    assert_eq!(
        code(pods.patch_status("p", &pp, &bad).await.unwrap_err()),
        422
    );
    // Labels may change; the spec may not (beyond images).
    let p = pods
        .patch(
            "p",
            &pp,
            &Patch::Strategic(json!({"metadata": {"labels": {"app": "web"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p.labels()["app"], "web");
    let p = pods
        .patch(
            "p",
            &pp,
            &Patch::Strategic(
                json!({"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        p.spec.unwrap().containers[0].image.as_deref(),
        Some("busybox:2")
    );
    let jp = json!([{"op": "replace", "path": "/spec/nodeName", "value": "n2"}]);
    assert_eq!(
        code(
            json_patch(&client, "/api/v1/namespaces/default/pods/p", jp)
                .await
                .unwrap_err()
        ),
        422
    );
    assert_eq!(
        code(
            pods.patch("missing", &pp, &Patch::Merge(json!({})))
                .await
                .unwrap_err()
        ),
        404
    );
}

#[tokio::test]
async fn server_side_apply_tracks_managers() {
    let (_h, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cfg = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"mode": v}});
    let a = cms
        .patch("cfg", &PatchParams::apply("agent"), &Patch::Apply(cfg("x")))
        .await
        .unwrap();
    let b = cms
        .patch("cfg", &PatchParams::apply("agent"), &Patch::Apply(cfg("x")))
        .await
        .unwrap();
    assert_eq!(
        a.resource_version(),
        b.resource_version(),
        "re-apply is a no-op"
    );
    let err = cms
        .patch("cfg", &PatchParams::apply("other"), &Patch::Apply(cfg("y")))
        .await
        .unwrap_err();
    assert_eq!(code(err), 409);
    let c = cms
        .patch(
            "cfg",
            &PatchParams::apply("other").force(),
            &Patch::Apply(cfg("y")),
        )
        .await
        .unwrap();
    assert_eq!(c.data.unwrap()["mode"], "y");
    let managers: Vec<String> = c
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, vec!["other"]);
    // Dropping a field from the applied configuration removes it.
    let two = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"mode": "y", "extra": "1"}});
    cms.patch("cfg", &PatchParams::apply("other"), &Patch::Apply(two))
        .await
        .unwrap();
    let d = cms
        .patch("cfg", &PatchParams::apply("other"), &Patch::Apply(cfg("y")))
        .await
        .unwrap();
    assert!(!d.data.unwrap().contains_key("extra"));
    // Apply needs a field manager.
    assert_eq!(
        code(
            cms.patch("cfg", &PatchParams::default(), &Patch::Apply(cfg("y")))
                .await
                .unwrap_err()
        ),
        400
    );
}

#[tokio::test]
async fn network_policy_defaulting_and_validation() {
    let (_h, client) = start().await;
    let nps: Api<NetworkPolicy> = Api::namespaced(client, "default");
    let np = |name: &str, spec: serde_json::Value| -> NetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let created = nps
        .create(&PostParams::default(), &np("egress", json!({"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 443}]}]})))
        .await
        .unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(spec.policy_types.unwrap(), vec!["Ingress", "Egress"]);
    assert_eq!(
        spec.egress.unwrap()[0].ports.as_ref().unwrap()[1]
            .protocol
            .as_deref(),
        Some("TCP")
    );
    assert_eq!(created.metadata.generation, Some(1));
    // A prefix length is plain decimal digits: Rust's integer parser takes
    // "+8" for 8, kube-apiserver does not.
    for cidr in ["10.0.0.0/33", "10.0.0.0/+8"] {
        let bad = np(
            "bad",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}]}),
        );
        let err = nps.create(&PostParams::default(), &bad).await.unwrap_err();
        assert_refused(err, 422, "Invalid", "spec.ingress[0].from[0].ipBlock.cidr");
    }
    let bad = np(
        "bad",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}),
    );
    assert_eq!(
        code(nps.create(&PostParams::default(), &bad).await.unwrap_err()),
        422
    );
    // A spec change bumps the generation.
    let p = nps
        .patch(
            "egress",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"egress": []}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(2));
}

#[tokio::test]
async fn unknown_fields_follow_field_validation() {
    let (h, _client) = start().await;
    let body = serde_json::to_vec(
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u"}, "bogus": 1}),
    )
    .unwrap();
    let client = h.client().unwrap();
    let req = |q: &str| {
        http::Request::post(format!("/api/v1/namespaces/default/configmaps{q}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .unwrap()
    };
    let err = client
        .request::<ConfigMap>(req("?fieldValidation=Strict"))
        .await
        .unwrap_err();
    assert_eq!(code(err), 400);
    let cm = client.request::<ConfigMap>(req("")).await.unwrap();
    assert_eq!(cm.name_any(), "u");
}

#[tokio::test]
async fn custom_resources_are_served_after_their_crd() {
    let (_h, client) = start().await;
    let crds: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::erase::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>(&()));
    let crd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "adminnetworkpolicies.policy.networking.k8s.io"},
        "spec": {"group": "policy.networking.k8s.io", "scope": "Cluster",
            "names": {"plural": "adminnetworkpolicies", "kind": "AdminNetworkPolicy", "shortNames": ["anp"]},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["priority"], "properties": {
                        "priority": {"type": "integer", "minimum": 0, "maximum": 1000},
                        "subject": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}}))
    .unwrap();
    let made = crds.create(&PostParams::default(), &crd).await.unwrap();
    assert_eq!(made.data["status"]["conditions"][1]["type"], "Established");
    let ar = ApiResource {
        group: "policy.networking.k8s.io".into(),
        version: "v1alpha1".into(),
        api_version: "policy.networking.k8s.io/v1alpha1".into(),
        kind: "AdminNetworkPolicy".into(),
        plural: "adminnetworkpolicies".into(),
    };
    let anps: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let anp: DynamicObject = serde_json::from_value(json!({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
        "metadata": {"name": "deny"}, "spec": {"priority": 10, "subject": {"namespaces": {}}, "junk": true}, "status": {"x": 1}})).unwrap();
    let made = anps.create(&PostParams::default(), &anp).await.unwrap();
    assert!(
        made.data["spec"].get("junk").is_none(),
        "unknown fields are pruned"
    );
    assert!(
        made.data.get("status").is_none(),
        "status is set through the subresource only"
    );
    let bad: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
        "metadata": {"name": "bad"}, "spec": {"priority": 5000}}),
    )
    .unwrap();
    assert_eq!(
        code(anps.create(&PostParams::default(), &bad).await.unwrap_err()),
        422
    );
    assert_eq!(
        anps.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    // Deleting the CRD removes its objects and its API.
    crds.delete(
        "adminnetworkpolicies.policy.networking.k8s.io",
        &Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        code(anps.list(&ListParams::default()).await.unwrap_err()),
        404
    );
}

#[tokio::test]
async fn events_are_one_set_in_two_apis() {
    let (_h, client) = start().await;
    let v1: Api<EventV1> = Api::namespaced(client.clone(), "default");
    let ev: EventV1 = serde_json::from_value(json!({"metadata": {"name": "e1"}, "eventTime": "2025-01-01T00:00:00.000000Z",
        "regarding": {"kind": "Node", "name": "n1"}, "note": "route created", "reason": "RouteCreated", "type": "Normal",
        "action": "Create", "reportingController": "underlay", "reportingInstance": "x"})).unwrap();
    v1.create(&PostParams::default(), &ev).await.unwrap();
    let core: Api<CoreEvent> = Api::namespaced(client, "default");
    let got = core.get("e1").await.unwrap();
    assert_eq!(got.message.as_deref(), Some("route created"));
    assert_eq!(got.involved_object.name.as_deref(), Some("n1"));
}

#[tokio::test]
async fn injected_failures_and_delays() {
    let (h, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    // Without retries the client sees the 429 and its Retry-After.
    let mut config = h.kube_config().unwrap();
    config.default_retry = false;
    let raw: Api<ConfigMap> = Api::namespaced(Client::try_from(config).unwrap(), "default");
    h.faults().fail_next(
        1,
        Failure::TooManyRequests {
            retry_after_seconds: 1,
        },
        Match::any(),
    );
    let s = refusal(raw.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(s.details.unwrap().retry_after_seconds, 1);
    // kube-rs' default client waits as told and succeeds.
    h.faults().fail_next(
        1,
        Failure::TooManyRequests {
            retry_after_seconds: 1,
        },
        Match::any(),
    );
    let t = Instant::now();
    cms.list(&ListParams::default()).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "the retry honoured Retry-After"
    );
    h.faults().fail_next(
        1,
        Failure::Internal,
        Match {
            method: Some(http::Method::GET),
            path_contains: Some("/configmaps".into()),
        },
    );
    assert_eq!(
        code(cms.list(&ListParams::default()).await.unwrap_err()),
        500
    );
    cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(h.faults().injected(), 3);
    h.faults().delay(Some(Duration::from_millis(300)));
    let t = Instant::now();
    cms.list(&ListParams::default()).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "responses are delayed"
    );
    h.faults().clear();
}

#[tokio::test]
async fn snapshot_restores_objects_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let config = Config {
        snapshot: Some(path.clone()),
        ..Config::default()
    };
    let h = ApiServer::start(config.clone()).await.unwrap();
    let nodes: Api<Node> = Api::all(h.client().unwrap());
    let made = node(&nodes, "kept").await;
    let rv = h.resource_version();
    h.shutdown().await.unwrap();
    let h = ApiServer::start(config).await.unwrap();
    let nodes: Api<Node> = Api::all(h.client().unwrap());
    let again = nodes.get("kept").await.unwrap();
    assert_eq!(again.uid(), made.uid());
    assert!(h.resource_version() >= rv);
    let newer = node(&nodes, "new").await;
    assert!(newer.resource_version().unwrap().parse::<u64>().unwrap() > rv);
}

#[tokio::test]
async fn plain_http_serves_kube_rs_clients() {
    let h = ApiServer::start(Config {
        tls: false,
        ..Config::default()
    })
    .await
    .unwrap();
    assert!(h.url().starts_with("http://"));
    let nodes: Api<Node> = Api::all(h.client().unwrap());
    assert!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(h.kubeconfig().contains(&h.url()));
}

fn deployment(name: &str, image: &str) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]}},
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn deployments_default_bump_generation_and_keep_status_apart() {
    use k8s_openapi::api::apps::v1::Deployment;
    let (_h, client) = start().await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = api
        .create(&PostParams::default(), &deployment("web", "web:1"))
        .await
        .unwrap();
    let spec = d.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(d.metadata.generation, Some(1));
    assert_eq!(
        d.status.clone().unwrap().observed_generation,
        None,
        "a new deployment has the zero status"
    );

    // A label change is not a spec change; an image change is.
    let labelled = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    let changed = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "web:2"}]}}}})),
        )
        .await
        .unwrap();
    assert_eq!(changed.metadata.generation, Some(2));
    let containers = changed.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(containers.len(), 1, "containers merge by name");
    assert_eq!(containers[0].image.as_deref(), Some("web:2"));

    // Status goes through /status only, and moves neither generation nor
    // the controller's observedGeneration by itself.
    let ignored = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(ignored.status.unwrap().replicas, None);
    let status = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 2, "replicas": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(status.metadata.generation, Some(2));
    assert_eq!(status.status.unwrap().observed_generation, Some(2));
    let again = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(again.metadata.generation, Some(3));
    assert_eq!(again.status.unwrap().observed_generation, Some(2));

    // The selector is fixed and must select the template.
    let err = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"app": "other"}}}})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), 422);
    let mut bad = deployment("bad", "web:1");
    bad.spec.as_mut().unwrap().selector =
        serde_json::from_value(json!({"matchLabels": {"app": "nope"}})).unwrap();
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    assert_eq!(code(err), 422);
}

#[tokio::test]
async fn server_side_apply_of_a_workload_is_idempotent() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let (_h, client) = start().await;
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
                "priorityClassName": "system-node-critical",
                "containers": [{"name": "a", "image": "agent:1", "ports": [{"containerPort": 9650}]}],
            }},
        },
    });
    let params = PatchParams::apply("test").force();
    let first = api
        .patch("agent", &params, &Patch::Apply(&ds))
        .await
        .unwrap();
    assert_eq!(first.status.as_ref().unwrap().number_ready, 0);
    let second = api
        .patch("agent", &params, &Patch::Apply(&ds))
        .await
        .unwrap();
    assert_eq!(
        first.metadata.resource_version,
        second.metadata.resource_version
    );
    let fields = serde_json::to_string(&second.metadata.managed_fields).unwrap();
    assert!(fields.contains(r#"k:{\"name\":\"a\"}"#), "{fields}");
    let mut upgraded = ds.clone();
    upgraded["spec"]["template"]["spec"]["containers"][0]["image"] = json!("agent:2");
    let third = api
        .patch("agent", &params, &Patch::Apply(&upgraded))
        .await
        .unwrap();
    assert_eq!(third.metadata.generation, Some(2));
}

#[tokio::test]
async fn rbac_budgets_and_priority_classes() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let (_h, client) = start().await;

    // The system priority classes exist and cannot be deleted.
    let classes: Api<PriorityClass> = Api::all(client.clone());
    let node_critical = classes.get("system-node-critical").await.unwrap();
    assert_eq!(node_critical.value, 2_000_001_000);
    assert_eq!(
        code(
            classes
                .delete("system-node-critical", &Default::default())
                .await
                .unwrap_err()
        ),
        403
    );
    let reserved: PriorityClass =
        serde_json::from_value(json!({"metadata": {"name": "system-mine"}, "value": 5})).unwrap();
    assert_eq!(
        code(
            classes
                .create(&PostParams::default(), &reserved)
                .await
                .unwrap_err()
        ),
        422
    );

    // A pod gets its class's priority; an unknown class is refused.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "critical"},
        "spec": {"priorityClassName": "system-node-critical", "containers": [{"name": "c", "image": "i:1"}]}}))
    .unwrap();
    let p = pods.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(p.spec.unwrap().priority, Some(2_000_001_000));
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": "unknown"},
        "spec": {"priorityClassName": "nope", "containers": [{"name": "c", "image": "i:1"}]}}))
    .unwrap();
    assert_eq!(
        code(pods.create(&PostParams::default(), &p).await.unwrap_err()),
        403
    );

    // RBAC: rules need verbs; roleRef is defaulted and fixed.
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let bad: ClusterRole = serde_json::from_value(json!({"metadata": {"name": "r"},
        "rules": [{"apiGroups": [""], "resources": ["pods"]}]}))
    .unwrap();
    assert_eq!(
        code(
            roles
                .create(&PostParams::default(), &bad)
                .await
                .unwrap_err()
        ),
        422
    );
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let b = bindings
        .patch(
            "b",
            &PatchParams::apply("test"),
            &Patch::Apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "r", "apiGroup": "rbac.authorization.k8s.io"},
                "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "default"}]})),
        )
        .await
        .unwrap();
    // A ServiceAccount's group defaults to "", which kube-apiserver never
    // writes out.
    assert_eq!(b.subjects.unwrap()[0].api_group, None);
    let err = bindings
        .patch(
            "b",
            &PatchParams::default(),
            &Patch::Merge(json!({"roleRef": {"name": "other"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), 422);
    let rb: Api<RoleBinding> = Api::namespaced(client.clone(), "default");
    let role_binding: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "rb"},
        "roleRef": {"kind": "Role", "name": "r", "apiGroup": "rbac.authorization.k8s.io"}}))
    .unwrap();
    rb.create(&PostParams::default(), &role_binding)
        .await
        .unwrap();

    // Budgets take one bound and have a status of their own.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let both: PodDisruptionBudget = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"minAvailable": 1, "maxUnavailable": 1}}))
    .unwrap();
    assert_eq!(
        code(
            pdbs.create(&PostParams::default(), &both)
                .await
                .unwrap_err()
        ),
        422
    );
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}))
    .unwrap();
    let pdb = pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    assert_eq!(pdb.status.unwrap().disruptions_allowed, 0);
    let pdb = pdbs
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"disruptionsAllowed": 1, "currentHealthy": 2, "desiredHealthy": 1, "expectedPods": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(pdb.status.unwrap().disruptions_allowed, 1);
}

#[tokio::test]
async fn discovery_lists_the_deployment_groups() {
    let (_h, client) = start().await;
    let discovery = kube::Discovery::new(client).run().await.unwrap();
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            found.push((
                ar.group.clone(),
                ar.plural.clone(),
                caps.scope == kube::discovery::Scope::Namespaced,
            ));
        }
    }
    for (group, plural, namespaced) in [
        ("apps", "deployments", true),
        ("apps", "daemonsets", true),
        ("rbac.authorization.k8s.io", "clusterroles", false),
        ("rbac.authorization.k8s.io", "clusterrolebindings", false),
        ("rbac.authorization.k8s.io", "roles", true),
        ("rbac.authorization.k8s.io", "rolebindings", true),
        ("policy", "poddisruptionbudgets", true),
        ("scheduling.k8s.io", "priorityclasses", false),
    ] {
        assert!(
            found.contains(&(group.to_string(), plural.to_string(), namespaced)),
            "{group}/{plural}: {found:?}"
        );
    }
}

#[tokio::test]
async fn dry_run_writes_validate_and_answer_without_storing() {
    use kube::api::DeleteParams;
    let (h, client) = start().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = |name: &str, v: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": v}})).unwrap()
    };
    let dry_post = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let rv = h.resource_version();
    let made = cms.create(&dry_post, &cm("c", "1")).await.unwrap();
    assert_eq!(made.data.unwrap()["k"], "1");
    assert_eq!(code(cms.get("c").await.unwrap_err()), 404);
    assert_eq!(
        h.resource_version(),
        rv,
        "a dry-run create stored the object"
    );
    // Validation still runs.
    let invalid = cms.create(&dry_post, &cm("Not_A_Name", "1")).await;
    assert_eq!(code(invalid.unwrap_err()), 422);

    cms.create(&PostParams::default(), &cm("c", "1"))
        .await
        .unwrap();
    let rv = h.resource_version();
    let dry_patch = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let patched = cms
        .patch("c", &dry_patch, &Patch::Merge(json!({"data": {"k": "2"}})))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["k"], "2");
    let applied = cms
        .patch(
            "c",
            &PatchParams {
                dry_run: true,
                ..PatchParams::apply("test").force()
            },
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["k"], "3");
    let mut current = cms.get("c").await.unwrap();
    current.data = Some([("k".to_string(), "4".to_string())].into());
    cms.replace("c", &dry_post, &current).await.unwrap();
    let deleted = cms
        .delete("c", &DeleteParams::default().dry_run())
        .await
        .unwrap();
    assert!(deleted.left().is_some());
    assert_eq!(cms.get("c").await.unwrap().data.unwrap()["k"], "1");
    assert_eq!(h.resource_version(), rv, "a dry run stored something");

    // `All` is the only dry-run mode.
    let req = http::Request::post("/api/v1/namespaces/default/configmaps?dryRun=Some")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&cm("d", "1")).unwrap())
        .unwrap();
    let err = client.request::<ConfigMap>(req).await.unwrap_err();
    assert_eq!(code(err), 422);
    assert_eq!(code(cms.get("d").await.unwrap_err()), 404);
}

#[tokio::test]
async fn openapi_v2_is_served_as_protobuf_or_json() {
    let (_h, client) = start().await;
    let get = |accept: &str| {
        http::Request::get("/openapi/v2")
            .header("accept", accept)
            .body(Vec::new())
            .unwrap()
    };
    let json: serde_json::Value = client.request(get("application/json")).await.unwrap();
    assert_eq!(json["swagger"], "2.0");
    assert_eq!(
        json["definitions"]["v1.ConfigMap"]["x-kubernetes-group-version-kind"][0]["kind"],
        "ConfigMap"
    );
    let proto = client
        .send(get("application/com.github.proto-openapi.spec.v2@v1.0+protobuf").map(Into::into))
        .await
        .unwrap();
    assert_eq!(proto.status(), 200);
    assert_eq!(
        proto.headers()["content-type"],
        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
    );
    let body = http_body_util::BodyExt::collect(proto.into_body())
        .await
        .unwrap()
        .to_bytes();
    // Field 1 of the document (swagger, a string) comes first.
    assert!(
        body.starts_with(b"\x0a\x032.0"),
        "{:?}",
        &body[..8.min(body.len())]
    );
    let refused = client.request_text(get("text/html")).await.unwrap_err();
    assert_eq!(code(refused), 406);
}

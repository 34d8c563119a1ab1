//! The defaults of pod specs: the scheme defaults every pod spec gets (a
//! Pod's and a workload template's: restart and DNS policies, containers'
//! pull policy, probes, ports and volumes), and what admission adds to a new
//! Pod only (service account, priority, not-ready/unreachable tolerations).

use serde_json::{Map, Value, json};

use super::set_default;

/// What kube-apiserver's admission adds to a new Pod (not to pod templates):
/// the service account, the priority and the not-ready/unreachable
/// tolerations; then the scheme defaults every pod spec gets.
pub fn pod_defaults(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    pod_spec_defaults(spec);
    set_default(spec, "priority", json!(0));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, "serviceAccountName", json!("default"));
    let sa = spec["serviceAccountName"].clone();
    set_default(spec, "serviceAccount", sa);
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(t) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            if !t.iter().any(|x| x["key"] == key) {
                t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

/// The scheme defaults of a pod spec, in a Pod or a workload's template.
pub fn pod_spec_defaults(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    if let Some(sa) = spec.get("serviceAccountName").cloned() {
        set_default(spec, "serviceAccount", sa);
    }
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(c) = c.as_object_mut() {
                container_defaults(c);
            }
        }
    }
    for v in spec
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        volume_defaults(v);
    }
}

/// A container's pull policy (Always for an image tagged `latest`, or
/// neither tagged nor pinned by digest), termination message, resources,
/// port protocols and probes.
fn container_defaults(c: &mut Map<String, Value>) {
    let pull = image_pull_policy(c);
    set_default(c, "imagePullPolicy", json!(pull));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    for p in c
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(p) = p.as_object_mut() {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = c.get_mut(probe).and_then(Value::as_object_mut) {
            probe_defaults(probe);
        }
    }
}

/// `Always` when the image's tag is `latest`, `IfNotPresent` otherwise, as
/// kube-apiserver defaults it.
fn image_pull_policy(c: &Map<String, Value>) -> &'static str {
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    if image_tag(image) == Some("latest") {
        "Always"
    } else {
        "IfNotPresent"
    }
}

/// The tag of an image reference as Kubernetes reads it for this default
/// (`parsers.ParseImageName`): the text after a colon in the last path
/// component (a colon before a `/` is a registry's port), `latest` when the
/// reference names neither a tag nor a digest, and none for a reference it
/// cannot parse (empty).
fn image_tag(image: &str) -> Option<&str> {
    if image.is_empty() {
        return None;
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    match (last.split_once(':'), digest) {
        (Some((_, tag)), _) => Some(tag),
        (None, None) => Some("latest"),
        (None, Some(_)) => None,
    }
}

fn probe_defaults(probe: &mut Map<String, Value>) {
    set_default(probe, "timeoutSeconds", json!(1));
    set_default(probe, "periodSeconds", json!(10));
    set_default(probe, "successThreshold", json!(1));
    set_default(probe, "failureThreshold", json!(3));
    if let Some(get) = probe.get_mut("httpGet").and_then(Value::as_object_mut) {
        set_default(get, "path", json!("/"));
        set_default(get, "scheme", json!("HTTP"));
    }
}

/// Secret and ConfigMap volumes' file mode (0644), hostPath's empty type.
fn volume_defaults(v: &mut Value) {
    for source in ["secret", "configMap"] {
        if let Some(src) = v.get_mut(source).and_then(Value::as_object_mut) {
            set_default(src, "defaultMode", json!(420));
        }
    }
    if let Some(hp) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
        set_default(hp, "type", json!(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_pulled_always_only_when_tagged_latest_or_not_at_all() {
        let cases = [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("nginx@sha256:abc", "IfNotPresent"),
            // The colon of a registry's port is not a tag.
            ("registry:5000/nginx", "Always"),
            ("registry:5000/team/nginx:latest", "Always"),
            ("registry:5000/nginx:1.27", "IfNotPresent"),
            ("registry:5000/nginx@sha256:abc", "IfNotPresent"),
            // An explicit `latest` is `latest`, digest or not.
            ("nginx:latest@sha256:abc", "Always"),
            // Nothing to parse: kube-apiserver finds no tag.
            ("", "IfNotPresent"),
        ];
        for (image, want) in cases {
            let c = json!({"image": image});
            assert_eq!(image_pull_policy(c.as_object().unwrap()), want, "{image}");
        }
    }
}

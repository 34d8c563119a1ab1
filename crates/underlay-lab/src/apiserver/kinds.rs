//! Defaulting and validation of the kinds a deployment of underlay is made
//! of besides the core ones: apps/v1 Deployments and DaemonSets,
//! rbac.authorization.k8s.io/v1 roles and bindings, policy/v1
//! PodDisruptionBudgets and scheduling.k8s.io/v1 PriorityClasses. The rules
//! are the ones a client notices (defaults it reads back, immutable fields,
//! 422s for what kube-apiserver rejects), worded like kube-apiserver's.

use serde_json::{Map, Value, json};

use super::error::Cause;
use super::resources::SYSTEM_PRIORITY_CLASSES;
use super::selector::LabelSelector;
use super::validation::{pod_spec_defaults, set_default, validate_pod_spec, validate_selector};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// The highest priority a PriorityClass outside the `system-` ones may have.
const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

fn object_at<'a>(obj: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let m = obj.as_object_mut()?;
    let v = m.entry(key).or_insert_with(|| json!({}));
    if v.is_null() {
        *v = json!({});
    }
    v.as_object_mut()
}

/// Whether a label selector (`matchLabels` and `matchExpressions`) selects `labels`.
pub fn selector_matches(sel: &Value, labels: &Value) -> bool {
    LabelSelector::from_object(sel).matches_labels(labels)
}

fn selector_is_empty(sel: &Value) -> bool {
    sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
        && sel["matchExpressions"]
            .as_array()
            .is_none_or(|a| a.is_empty())
}

/// An int-or-percent field: `Some(0)` for zero (as an int or "0%"), the
/// value otherwise, a cause when it is neither.
fn int_or_percent(v: &Value, path: &str, causes: &mut Vec<Cause>) -> Option<i64> {
    match v {
        Value::Null => None,
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(-1);
            if n < 0 {
                causes.push(Cause::invalid(
                    path,
                    n,
                    "must be greater than or equal to 0",
                ));
            }
            Some(n)
        }
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if (0..=100).contains(&p) => Some(p),
            Some(p) => {
                causes.push(Cause::invalid(
                    path,
                    s,
                    if p < 0 {
                        "must be greater than or equal to 0"
                    } else {
                        "must not be greater than 100%"
                    },
                ));
                Some(p)
            }
            None => {
                causes.push(Cause::invalid(
                    path,
                    s,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                ));
                None
            }
        },
        other => {
            causes.push(Cause::invalid(
                path,
                other,
                "must be an integer or a percentage",
            ));
            None
        }
    }
}

/// Deployments and DaemonSets: the defaults of apps/v1 and the checks of
/// selector, template and rolling-update parameters.
pub fn workload(kind: &str, obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let Some(spec) = object_at(obj, "spec") else {
        causes.push(Cause::invalid("spec", "", "must be an object"));
        return;
    };
    workload_defaults(kind, spec);
    let spec = &obj["spec"];
    if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
        causes.push(Cause::invalid(
            "spec.replicas",
            &spec["replicas"],
            "must be greater than or equal to 0",
        ));
    }
    validate_workload_selector(spec, causes);
    validate_template(spec, causes);
    let field = strategy_field(kind);
    validate_strategy(kind, &spec[field], &format!("spec.{field}"), causes);
    if let Some(old) = old
        && old["spec"]["selector"] != obj["spec"]["selector"]
    {
        causes.push(Cause::invalid(
            "spec.selector",
            &obj["spec"]["selector"],
            "field is immutable",
        ));
    }
}

/// Where a workload keeps its update strategy.
fn strategy_field(kind: &str) -> &'static str {
    if kind == "Deployment" {
        "strategy"
    } else {
        "updateStrategy"
    }
}

/// The apps/v1 defaults: history, replicas and progress deadline (for
/// Deployments), the update strategy, and the template's pod spec.
fn workload_defaults(kind: &str, spec: &mut Map<String, Value>) {
    set_default(spec, "revisionHistoryLimit", json!(10));
    if kind == "Deployment" {
        set_default(spec, "replicas", json!(1));
        set_default(spec, "progressDeadlineSeconds", json!(600));
    }
    let strategy = spec
        .entry(strategy_field(kind))
        .or_insert_with(|| json!({}));
    if let Some(s) = strategy.as_object_mut() {
        strategy_defaults(kind, s);
    }
    if let Some(pod) = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("spec"))
        .and_then(Value::as_object_mut)
    {
        pod_spec_defaults(pod);
    }
}

/// A rolling update by default: a quarter of the replicas at a time for a
/// Deployment, one node at a time for a DaemonSet.
fn strategy_defaults(kind: &str, strategy: &mut Map<String, Value>) {
    set_default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] != "RollingUpdate" {
        return;
    }
    let ru = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
    if let Some(ru) = ru.as_object_mut() {
        if kind == "Deployment" {
            set_default(ru, "maxUnavailable", json!("25%"));
            set_default(ru, "maxSurge", json!("25%"));
        } else {
            set_default(ru, "maxUnavailable", json!(1));
            set_default(ru, "maxSurge", json!(0));
        }
    }
}

/// A non-empty selector that selects the template's labels.
fn validate_workload_selector(spec: &Value, causes: &mut Vec<Cause>) {
    let selector = &spec["selector"];
    if selector.is_null() || selector_is_empty(selector) {
        causes.push(Cause::required("spec.selector"));
        if let Some(c) = causes.last_mut() {
            c.message = "Invalid value: \"null\": empty selector is invalid for deployment".into();
            c.reason = "FieldValueInvalid";
        }
        return;
    }
    validate_selector(selector, "spec.selector", causes);
    let labels = &spec["template"]["metadata"]["labels"];
    if !selector_matches(selector, labels) {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            labels,
            "`selector` does not match template `labels`",
        ));
    }
}

/// The template's pod spec, whose pods must always restart.
fn validate_template(spec: &Value, causes: &mut Vec<Cause>) {
    validate_pod_spec(&spec["template"]["spec"], "spec.template.spec", causes);
    let restart = spec["template"]["spec"]["restartPolicy"]
        .as_str()
        .unwrap_or("");
    if restart != "Always" {
        causes.push(Cause::unsupported(
            "spec.template.spec.restartPolicy",
            restart,
            &["Always"],
        ));
    }
}

/// The strategy at `path`: a type the kind knows, and rolling-update
/// parameters only for a rolling update.
fn validate_strategy(kind: &str, strategy: &Value, path: &str, causes: &mut Vec<Cause>) {
    let stype = strategy["type"].as_str().unwrap_or("");
    let types: &[&str] = if kind == "Deployment" {
        &["Recreate", "RollingUpdate"]
    } else {
        &["OnDelete", "RollingUpdate"]
    };
    if !types.contains(&stype) {
        causes.push(Cause::unsupported(format!("{path}.type"), stype, types));
    }
    let ru = &strategy["rollingUpdate"];
    if stype != "RollingUpdate" && !ru.is_null() {
        causes.push(Cause::forbidden(
            format!("{path}.rollingUpdate"),
            "may not be specified when strategy `type` is not 'RollingUpdate'",
        ));
    } else if !ru.is_null() {
        validate_rolling_update(ru, &format!("{path}.rollingUpdate"), causes);
    }
}

/// `maxUnavailable` and `maxSurge`: ints or percentages, not both zero.
fn validate_rolling_update(ru: &Value, path: &str, causes: &mut Vec<Cause>) {
    let unavailable = int_or_percent(
        &ru["maxUnavailable"],
        &format!("{path}.maxUnavailable"),
        causes,
    );
    let surge = int_or_percent(&ru["maxSurge"], &format!("{path}.maxSurge"), causes);
    if unavailable == Some(0) && surge.unwrap_or(0) == 0 {
        causes.push(Cause::invalid(
            format!("{path}.maxUnavailable"),
            &ru["maxUnavailable"],
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

/// Roles and ClusterRoles: every rule needs verbs, and names either API
/// resources (with their groups) or, in ClusterRoles only, non-resource URLs.
pub fn role(cluster: bool, obj: &Value, causes: &mut Vec<Cause>) {
    for (i, rule) in obj["rules"].as_array().into_iter().flatten().enumerate() {
        let p = format!("rules[{i}]");
        let len = |k: &str| rule[k].as_array().map_or(0, Vec::len);
        if len("verbs") == 0 {
            causes.push(Cause::required(format!("{p}.verbs")));
            if let Some(c) = causes.last_mut() {
                c.message = "Required value: verbs must contain at least one value".into();
            }
        }
        let urls = len("nonResourceURLs");
        if urls > 0 && !cluster {
            causes.push(Cause::invalid(
                format!("{p}.nonResourceURLs"),
                &rule["nonResourceURLs"],
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if urls > 0 && (len("apiGroups") > 0 || len("resources") > 0) {
            causes.push(Cause::invalid(
                format!("{p}.nonResourceURLs"),
                &rule["nonResourceURLs"],
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        if urls == 0 {
            if len("resources") == 0 {
                causes.push(Cause::required(format!("{p}.resources")));
                if let Some(c) = causes.last_mut() {
                    c.message =
                        "Required value: resource rules must supply at least one resource".into();
                }
            }
            if len("apiGroups") == 0 {
                causes.push(Cause::required(format!("{p}.apiGroups")));
                if let Some(c) = causes.last_mut() {
                    c.message =
                        "Required value: resource rules must supply at least one api group".into();
                }
            }
        }
    }
}

/// RoleBindings and ClusterRoleBindings: `roleRef` and subjects defaulted and
/// checked; `roleRef` cannot change once written.
pub fn binding(cluster: bool, obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    binding_defaults(obj);
    validate_role_ref(cluster, &obj["roleRef"], causes);
    for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
        validate_subject(cluster, s, &format!("subjects[{i}]"), causes);
    }
    if let Some(old) = old
        && old["roleRef"] != obj["roleRef"]
    {
        causes.push(Cause::invalid(
            "roleRef",
            &obj["roleRef"],
            "cannot change roleRef",
        ));
    }
}

/// The RBAC group for `roleRef` and for User and Group subjects; no group
/// for ServiceAccounts.
fn binding_defaults(obj: &mut Value) {
    if let Some(r) = object_at(obj, "roleRef") {
        set_default(r, "apiGroup", json!(RBAC_GROUP));
    }
    for s in obj
        .get_mut("subjects")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(s) = s.as_object_mut() else {
            continue;
        };
        if s.get("kind").and_then(Value::as_str) == Some("ServiceAccount") {
            // Defaulted to "", which kube-apiserver never writes out
            // (omitempty); writing it makes every client-side re-apply a change.
            if s.get("apiGroup").and_then(Value::as_str) == Some("") {
                s.remove("apiGroup");
            }
        } else {
            set_default(s, "apiGroup", json!(RBAC_GROUP));
        }
    }
}

/// A named role of the RBAC group: a ClusterRole, or in a RoleBinding also a
/// Role.
fn validate_role_ref(cluster: bool, role_ref: &Value, causes: &mut Vec<Cause>) {
    let kinds: &[&str] = if cluster {
        &["ClusterRole"]
    } else {
        &["ClusterRole", "Role"]
    };
    let kind = role_ref["kind"].as_str().unwrap_or("");
    if !kinds.contains(&kind) {
        causes.push(Cause::unsupported("roleRef.kind", kind, kinds));
    }
    let group = role_ref["apiGroup"].as_str().unwrap_or("");
    if group != RBAC_GROUP {
        causes.push(Cause::unsupported("roleRef.apiGroup", group, &[RBAC_GROUP]));
    }
    if role_ref["name"].as_str().unwrap_or("").is_empty() {
        causes.push(Cause::required("roleRef.name"));
    }
}

/// A subject at `path`: named, of a known kind with that kind's group; a
/// ServiceAccount in a ClusterRoleBinding also names its namespace.
fn validate_subject(cluster: bool, s: &Value, path: &str, causes: &mut Vec<Cause>) {
    let kind = s["kind"].as_str().unwrap_or("");
    if s["name"].as_str().unwrap_or("").is_empty() {
        causes.push(Cause::required(format!("{path}.name")));
    }
    match kind {
        "ServiceAccount" => {
            if !s["apiGroup"].as_str().unwrap_or("").is_empty() {
                causes.push(Cause::unsupported(
                    format!("{path}.apiGroup"),
                    &s["apiGroup"],
                    &[""],
                ));
            }
            if cluster && s["namespace"].as_str().unwrap_or("").is_empty() {
                causes.push(Cause::required(format!("{path}.namespace")));
            }
        }
        "User" | "Group" => {
            if s["apiGroup"].as_str() != Some(RBAC_GROUP) {
                causes.push(Cause::unsupported(
                    format!("{path}.apiGroup"),
                    &s["apiGroup"],
                    &[RBAC_GROUP],
                ));
            }
        }
        other => causes.push(Cause::unsupported(
            format!("{path}.kind"),
            other,
            &["Group", "ServiceAccount", "User"],
        )),
    }
}

/// PodDisruptionBudgets: a valid selector and at most one of
/// `minAvailable`/`maxUnavailable`, each an int or a percentage.
pub fn disruption_budget(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let min = &spec["minAvailable"];
    let max = &spec["maxUnavailable"];
    if !min.is_null() && !max.is_null() {
        causes.push(Cause::invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    int_or_percent(min, "spec.minAvailable", causes);
    int_or_percent(max, "spec.maxUnavailable", causes);
    if !spec["selector"].is_null() {
        validate_selector(&spec["selector"], "spec.selector", causes);
    }
}

/// PriorityClasses: `preemptionPolicy` defaulted; `value` fixed once
/// written; the `system-` names and values above one billion are the
/// system's alone.
pub fn priority_class(obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Some(m) = obj.as_object_mut() {
        set_default(m, "preemptionPolicy", json!("PreemptLowerPriority"));
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let value = obj["value"].as_i64().unwrap_or(0);
    if name.starts_with("system-") {
        let known = SYSTEM_PRIORITY_CLASSES
            .iter()
            .any(|(n, v, _)| *n == name && *v == value);
        if !known {
            causes.push(Cause::forbidden(
                "metadata.name",
                "priority class names with 'system-' prefix are reserved for system use only",
            ));
        }
    } else if value > HIGHEST_USER_PRIORITY {
        causes.push(Cause::forbidden(
            "value",
            "maximum allowed value of a user defined priority is 1000000000",
        ));
    }
    let policy = obj["preemptionPolicy"].as_str().unwrap_or("");
    if !["Never", "PreemptLowerPriority"].contains(&policy) {
        causes.push(Cause::unsupported(
            "preemptionPolicy",
            policy,
            &["Never", "PreemptLowerPriority"],
        ));
    }
    if let Some(old) = old {
        if old["value"] != obj["value"] {
            causes.push(Cause::forbidden(
                "value",
                "may not be changed in an update.",
            ));
        }
        if old["preemptionPolicy"] != obj["preemptionPolicy"] {
            causes.push(Cause::invalid(
                "preemptionPolicy",
                policy,
                "field is immutable",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_like_label_selectors() {
        let labels = json!({"app": "web", "tier": "front"});
        let cases = [
            (json!({"matchLabels": {"app": "web"}}), true),
            (json!({"matchLabels": {"app": "db"}}), false),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}),
                false,
            ),
        ];
        for (sel, want) in cases {
            assert_eq!(selector_matches(&sel, &labels), want, "{sel}");
        }
    }

    fn deployment(extra: Value) -> Value {
        let mut d = json!({
            "metadata": {"name": "d"},
            "spec": {
                "selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}},
            },
        });
        json_patch::merge(&mut d, &extra);
        d
    }

    #[test]
    fn deployments_get_apps_v1_defaults() {
        let mut d = deployment(json!({}));
        let mut causes = Vec::new();
        workload("Deployment", &mut d, None, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(
            spec["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        // A template is not a pod: no admission defaults.
        assert!(spec["template"]["spec"].get("priority").is_none());
        assert!(spec["template"]["spec"].get("tolerations").is_none());
    }

    #[test]
    fn workload_mistakes_are_reported_by_field() {
        let cases = [
            (
                json!({"spec": {"selector": {"matchLabels": {"app": "b"}}}}),
                "spec.template.metadata.labels",
            ),
            (json!({"spec": {"selector": null}}), "spec.selector"),
            (json!({"spec": {"replicas": -1}}), "spec.replicas"),
            (
                json!({"spec": {"template": {"spec": {"restartPolicy": "Never"}}}}),
                "spec.template.spec.restartPolicy",
            ),
            (
                json!({"spec": {"template": {"spec": {"containers": []}}}}),
                "spec.template.spec.containers",
            ),
            (
                json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}}),
                "spec.strategy.rollingUpdate.maxUnavailable",
            ),
            (
                json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": "x"}}}}),
                "spec.strategy.rollingUpdate.maxSurge",
            ),
            (
                json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}}}),
                "spec.strategy.rollingUpdate",
            ),
        ];
        for (extra, field) in cases {
            let mut d = deployment(extra.clone());
            let mut causes = Vec::new();
            workload("Deployment", &mut d, None, &mut causes);
            assert!(
                causes.iter().any(|c| c.field == field),
                "{extra}: {causes:?}"
            );
        }
        let old = deployment(json!({}));
        let mut d = deployment(
            json!({"spec": {"selector": {"matchLabels": {"app": "a", "x": "y"}}, "template": {"metadata": {"labels": {"x": "y"}}}}}),
        );
        let mut causes = Vec::new();
        workload("Deployment", &mut d, Some(&old), &mut causes);
        assert!(
            causes
                .iter()
                .any(|c| c.field == "spec.selector" && c.message.contains("immutable")),
            "{causes:?}"
        );
    }

    #[test]
    fn daemon_sets_roll_one_node_at_a_time_by_default() {
        let mut d = deployment(json!({}));
        let mut causes = Vec::new();
        workload("DaemonSet", &mut d, None, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(
            d["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert!(d["spec"].get("replicas").is_none());
    }

    #[test]
    fn bindings_default_groups_and_keep_their_role() {
        let mut b = json!({
            "roleRef": {"kind": "ClusterRole", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}, {"kind": "User", "name": "u"}],
        });
        let mut causes = Vec::new();
        binding(true, &mut b, None, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(b["roleRef"]["apiGroup"], RBAC_GROUP);
        assert!(b["subjects"][0].get("apiGroup").is_none(), "{b}");
        assert_eq!(b["subjects"][1]["apiGroup"], RBAC_GROUP);
        let mut explicit = json!({"roleRef": {"kind": "ClusterRole", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns", "apiGroup": ""}]});
        binding(true, &mut explicit, None, &mut causes);
        assert!(
            explicit["subjects"][0].get("apiGroup").is_none(),
            "{explicit}"
        );
        let old = b.clone();
        let mut changed = b.clone();
        changed["roleRef"]["name"] = json!("other");
        binding(true, &mut changed, Some(&old), &mut causes);
        assert!(causes.iter().any(|c| c.field == "roleRef"), "{causes:?}");

        let cases = [
            (
                true,
                json!({"roleRef": {"kind": "Role", "name": "r"}}),
                "roleRef.kind",
            ),
            (false, json!({"roleRef": {"kind": "Role"}}), "roleRef.name"),
            (
                true,
                json!({"roleRef": {"kind": "ClusterRole", "name": "r"}, "subjects": [{"kind": "ServiceAccount", "name": "sa"}]}),
                "subjects[0].namespace",
            ),
            (
                false,
                json!({"roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "Robot", "name": "x"}]}),
                "subjects[0].kind",
            ),
        ];
        for (cluster, mut b, field) in cases {
            let before = b.clone();
            let mut causes = Vec::new();
            binding(cluster, &mut b, None, &mut causes);
            assert!(
                causes.iter().any(|c| c.field == field),
                "{before}: {causes:?}"
            );
        }
    }

    #[test]
    fn role_rules_need_verbs_and_targets() {
        let cases = [
            (
                false,
                json!({"rules": [{"apiGroups": [""], "resources": ["pods"]}]}),
                "rules[0].verbs",
            ),
            (
                false,
                json!({"rules": [{"resources": ["pods"], "verbs": ["get"]}]}),
                "rules[0].apiGroups",
            ),
            (
                false,
                json!({"rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}),
                "rules[0].nonResourceURLs",
            ),
            (
                true,
                json!({"rules": [{"apiGroups": [""], "verbs": ["get"]}]}),
                "rules[0].resources",
            ),
        ];
        for (cluster, r, field) in cases {
            let mut causes = Vec::new();
            role(cluster, &r, &mut causes);
            assert!(causes.iter().any(|c| c.field == field), "{r}: {causes:?}");
        }
        let mut causes = Vec::new();
        role(
            true,
            &json!({"rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}, {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]}),
            &mut causes,
        );
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn budgets_take_one_bound() {
        let check = |spec: Value| {
            let mut causes = Vec::new();
            disruption_budget(&json!({"spec": spec}), &mut causes);
            causes
        };
        assert!(
            check(json!({"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}})).is_empty()
        );
        assert!(check(json!({"maxUnavailable": "50%"})).is_empty());
        assert!(!check(json!({"minAvailable": 1, "maxUnavailable": 1})).is_empty());
        assert!(!check(json!({"minAvailable": "150%"})).is_empty());
        assert!(!check(json!({"minAvailable": -1})).is_empty());
    }

    #[test]
    fn system_priority_names_and_values_are_reserved() {
        let check = |name: &str, value: i64, old: Option<&Value>| {
            let mut pc = json!({"metadata": {"name": name}, "value": value});
            let mut causes = Vec::new();
            priority_class(&mut pc, old, &mut causes);
            (pc, causes)
        };
        let (pc, causes) = check("high", 1000, None);
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(pc["preemptionPolicy"], "PreemptLowerPriority");
        assert!(!check("system-mine", 1000, None).1.is_empty());
        assert!(!check("huge", 2_000_000_000, None).1.is_empty());
        assert!(
            check("system-node-critical", 2_000_001_000, None)
                .1
                .is_empty()
        );
        let (_, causes) = check("high", 2000, Some(&pc));
        assert!(causes.iter().any(|c| c.field == "value"), "{causes:?}");
    }
}

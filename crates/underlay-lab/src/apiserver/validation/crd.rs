//! CustomResourceDefinitions: names, scope and versions checked (group and
//! scope fixed once written), every version's validation rules and patterns
//! compiled, and what the apiextensions controllers would write at once: the
//! accepted names, the Established condition, the stored version, and the
//! defaults of the spec.

use serde_json::{Value, json};

use super::super::error::Cause;
use super::names::dns1123_label;

pub fn crd(obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj["spec"].clone();
    validate_names(
        &spec,
        obj["metadata"]["name"].as_str().unwrap_or(""),
        causes,
    );
    validate_scope(&spec, causes);
    let storage = storage_version(&spec, causes);
    for (i, version) in spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let schema = &version["schema"]["openAPIV3Schema"];
        if schema.is_object() {
            let path = format!("spec.versions[{i}].schema.openAPIV3Schema");
            super::super::schema::rule_errors(schema, &path, causes);
        }
    }
    if let Some(old) = old {
        validate_update(&old["spec"], &spec, causes);
    }
    let kind = spec["names"]["kind"].as_str().unwrap_or("");
    let mut accepted = spec["names"].clone();
    default_names(&mut accepted, kind);
    obj["status"] = established(accepted, &storage, &super::super::meta::now());
    if let Some(old) = old {
        keep_transition_times(&mut obj["status"], &old["status"]);
    }
    default_names(&mut obj["spec"]["names"], kind);
    if obj["spec"]["conversion"].is_null() {
        obj["spec"]["conversion"] = json!({"strategy": "None"});
    }
}

/// The group (a domain), plural (a DNS label) and kind, and the object's
/// name, which must be `<plural>.<group>`.
fn validate_names(spec: &Value, name: &str, causes: &mut Vec<Cause>) {
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec["names"]["plural"].as_str().unwrap_or("");
    let kind = spec["names"]["kind"].as_str().unwrap_or("");
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    } else if let Err(why) = dns1123_label(plural) {
        causes.push(Cause::invalid("spec.names.plural", plural, &why));
    }
    if kind.is_empty() {
        causes.push(Cause::required("spec.names.kind"));
    }
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
}

fn validate_scope(spec: &Value, causes: &mut Vec<Cause>) {
    let scope = spec["scope"].as_str().unwrap_or("");
    if scope != "Namespaced" && scope != "Cluster" {
        causes.push(Cause::unsupported(
            "spec.scope",
            scope,
            &["Cluster", "Namespaced"],
        ));
    }
}

/// The name of the one version marked `storage` ("" when there is not
/// exactly one, which is reported).
fn storage_version(spec: &Value, causes: &mut Vec<Cause>) -> String {
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    }
    let storage: Vec<&Value> = versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .collect();
    if !versions.is_empty() && storage.len() != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            storage.len(),
            "must have exactly one version marked as storage version",
        ));
    }
    storage
        .first()
        .and_then(|v| v["name"].as_str())
        .unwrap_or("")
        .to_string()
}

fn validate_update(old_spec: &Value, spec: &Value, causes: &mut Vec<Cause>) {
    if old_spec["group"] != spec["group"] {
        let group = spec["group"].as_str().unwrap_or("");
        causes.push(Cause::invalid("spec.group", group, "field is immutable"));
    }
    if old_spec["scope"] != spec["scope"] {
        let scope = spec["scope"].as_str().unwrap_or("");
        causes.push(Cause::invalid("spec.scope", scope, "field is immutable"));
    }
}

/// A condition whose status did not change keeps the time it last changed,
/// so writing a definition again as it was changes nothing.
fn keep_transition_times(status: &mut Value, old_status: &Value) {
    let old = old_status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for c in status["conditions"].as_array_mut().into_iter().flatten() {
        if let Some(before) = old
            .iter()
            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
        {
            c["lastTransitionTime"] = before["lastTransitionTime"].clone();
        }
    }
}

/// `singular` (the lowercase kind) and `listKind` (`<kind>List`) when unset.
fn default_names(names: &mut Value, kind: &str) {
    if names["singular"].is_null() {
        names["singular"] = json!(kind.to_lowercase());
    }
    if names["listKind"].is_null() {
        names["listKind"] = json!(format!("{kind}List"));
    }
}

/// The status of a CRD whose names are accepted and which serves at once.
fn established(accepted: Value, storage: &str, now: &str) -> Value {
    json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": [storage],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(spec: Value) -> Value {
        let mut obj = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"plural": "widgets", "kind": "Widget"},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true}],
            },
        });
        json_patch::merge(&mut obj["spec"], &spec);
        obj
    }

    #[test]
    fn an_accepted_definition_is_established_with_defaulted_names() {
        let mut obj = definition(json!({}));
        let mut causes = Vec::new();
        crd(&mut obj, None, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let names = json!({"plural": "widgets", "kind": "Widget", "singular": "widget", "listKind": "WidgetList"});
        assert_eq!(obj["spec"]["names"], names);
        assert_eq!(obj["spec"]["conversion"], json!({"strategy": "None"}));
        assert_eq!(obj["status"]["acceptedNames"], names);
        assert_eq!(obj["status"]["storedVersions"], json!(["v1"]));
        assert_eq!(obj["status"]["conditions"][1]["type"], "Established");
    }

    #[test]
    fn definition_mistakes_are_reported_by_field() {
        let cases = [
            (json!({"group": "example"}), "spec.group"),
            (json!({"names": {"plural": "Widgets"}}), "spec.names.plural"),
            (json!({"names": {"kind": null}}), "spec.names.kind"),
            (json!({"names": {"plural": "gadgets"}}), "metadata.name"),
            (json!({"scope": "Global"}), "spec.scope"),
            (json!({"versions": []}), "spec.versions"),
            (
                json!({"versions": [{"name": "v1", "storage": true}, {"name": "v2", "storage": true}]}),
                "spec.versions",
            ),
        ];
        for (spec, field) in cases {
            let mut obj = definition(spec.clone());
            let mut causes = Vec::new();
            crd(&mut obj, None, &mut causes);
            assert!(
                causes.iter().any(|c| c.field == field),
                "{spec}: {causes:?}"
            );
        }
    }

    #[test]
    fn group_and_scope_are_fixed_once_written() {
        let old = definition(json!({}));
        for (spec, field) in [
            (json!({"scope": "Cluster"}), "spec.scope"),
            (json!({"group": "example.org"}), "spec.group"),
        ] {
            let mut obj = definition(spec.clone());
            let mut causes = Vec::new();
            crd(&mut obj, Some(&old), &mut causes);
            assert!(
                causes
                    .iter()
                    .any(|c| c.field == field && c.message.contains("immutable")),
                "{spec}: {causes:?}"
            );
        }
    }

    #[test]
    fn rules_and_patterns_must_compile_when_the_definition_is_written() {
        let schema = |spec: Value| {
            json!({"versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec}}}}]})
        };
        let at = "spec.versions[0].schema.openAPIV3Schema.properties[spec]";
        let cases = [
            (
                json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a <"}]}),
                format!("{at}.x-kubernetes-validations[0].rule"),
                "compilation failed",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string",
                    "x-kubernetes-validations": [{"rule": "isHostname(self)"}]}}}),
                format!("{at}.properties[a].x-kubernetes-validations[0].rule"),
                "unknown function 'isHostname'",
            ),
            (
                json!({"type": "object", "x-kubernetes-validations": [{"rule": "self == oldSelf"}]}),
                format!("{at}.x-kubernetes-validations[0].rule"),
                "undeclared reference to 'oldSelf'",
            ),
            (
                json!({"type": "object", "x-kubernetes-validations": [{"rule": "true", "messageExpression": "'x'"}]}),
                format!("{at}.x-kubernetes-validations[0].messageExpression"),
                "not supported",
            ),
            (
                json!({"type": "array", "items": {"type": "string", "pattern": "(["}}),
                format!("{at}.items.pattern"),
                "valid regular expression",
            ),
        ];
        for (spec, field, message) in cases {
            let mut obj = definition(schema(spec.clone()));
            let mut causes = Vec::new();
            crd(&mut obj, None, &mut causes);
            assert!(
                causes
                    .iter()
                    .any(|c| c.field == field && c.message.contains(message)),
                "{spec}: want {field}: {message}, got {causes:?}"
            );
        }
        let mut ok = definition(schema(json!({"type": "object",
            "x-kubernetes-validations": [{"rule": "has(self.a) || !has(self.b)", "message": "b needs a"}]})));
        let mut causes = Vec::new();
        crd(&mut ok, None, &mut causes);
        assert_eq!(causes, []);
    }

    #[test]
    fn writing_a_definition_again_keeps_its_conditions_times() {
        let mut old = definition(json!({}));
        crd(&mut old, None, &mut Vec::new());
        for c in old["status"]["conditions"].as_array_mut().unwrap() {
            c["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        }
        let mut again = definition(json!({}));
        crd(&mut again, Some(&old), &mut Vec::new());
        assert_eq!(again["status"], old["status"]);
    }
}

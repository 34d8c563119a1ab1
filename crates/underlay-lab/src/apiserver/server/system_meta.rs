//! The metadata the server owns: the name from `generateName`, `uid`,
//! `creationTimestamp`, `resourceVersion` and `generation` on create, and
//! what an update may not change.

use serde_json::{Value, json};

use super::super::error::{ApiError, ApiResult, Cause};
use super::super::meta;
use super::super::resources::ResourceType;
use super::update::Managers;

/// Fields a client never sets on create; the server writes or drops them.
const DROPPED_ON_CREATE: [&str; 4] = [
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// Fields an update keeps from the stored object whatever the client sent.
const KEPT_ON_UPDATE: [&str; 7] = [
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "name",
    "namespace",
];

/// A new object must not carry a resourceVersion, and must be named or say
/// how to generate its name (`generateName` + five random characters).
pub(super) fn name_on_create(rt: &ResourceType, obj: &mut Value) -> ApiResult<()> {
    if !meta::meta_str(obj, "resourceVersion").is_empty() {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if !meta::meta_str(obj, "name").is_empty() {
        return Ok(());
    }
    let prefix = meta::meta_str(obj, "generateName").to_string();
    if prefix.is_empty() {
        let mut e = ApiError::invalid(rt, "", &[Cause::required("metadata.name")]);
        e.message = format!(
            "{} in version \"{}\" cannot be handled as a {}: name or generateName is required",
            rt.kind, rt.version, rt.kind
        );
        return Err(e);
    }
    let name = format!("{prefix}{}", meta::name_suffix());
    meta::metadata_mut(obj).insert("name".into(), json!(name));
    Ok(())
}

/// A fresh uid and creation time, generation 1 where the type counts them.
pub(super) fn set_on_create(rt: &ResourceType, obj: &mut Value) {
    let m = meta::metadata_mut(obj);
    m.insert("uid".into(), json!(meta::new_uid()));
    m.insert("creationTimestamp".into(), json!(meta::now()));
    for f in DROPPED_ON_CREATE {
        m.remove(f);
    }
    if rt.generation {
        m.insert("generation".into(), json!(1));
    } else {
        m.remove("generation");
    }
}

/// An update naming a resourceVersion must name the stored one.
pub(super) fn check_resource_version(
    rt: &ResourceType,
    name: &str,
    old: &Value,
    new: &Value,
) -> ApiResult<()> {
    let want = meta::meta_str(new, "resourceVersion");
    if !want.is_empty() && want != meta::meta_str(old, "resourceVersion") {
        return Err(ApiError::conflict(rt, name));
    }
    Ok(())
}

/// Put back what the client may not change; with `Managers::Track` that
/// includes `managedFields`, which the server then records itself.
pub(super) fn keep_on_update(old: &Value, new: &mut Value, managers: Managers) {
    let m = meta::metadata_mut(new);
    let om = old["metadata"].as_object().cloned().unwrap_or_default();
    let managed = (managers == Managers::Track).then_some("managedFields");
    for f in KEPT_ON_UPDATE.into_iter().chain(managed) {
        match om.get(f) {
            Some(v) => m.insert(f.into(), v.clone()),
            None => m.remove(f),
        };
    }
    m.insert(
        "resourceVersion".into(),
        old["metadata"]["resourceVersion"].clone(),
    );
}

/// `metadata.generation` counts changes of everything but metadata and status.
pub(super) fn bump_generation(rt: &ResourceType, old: &Value, new: &mut Value) {
    if rt.generation && spec_changed(old, new) {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        new["metadata"]["generation"] = json!(g);
    }
}

fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    fn rt(plural: &str) -> ResourceType {
        builtins()
            .into_iter()
            .find(|t| t.plural == plural)
            .expect("a builtin")
    }

    #[test]
    fn generate_name_appends_five_characters() {
        let mut obj = json!({"metadata": {"generateName": "web-"}});
        name_on_create(&rt("pods"), &mut obj).expect("named");
        let name = meta::meta_str(&obj, "name");
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    }

    #[test]
    fn create_refuses_no_name_and_a_resource_version() {
        let mut unnamed = json!({"metadata": {}});
        let e = name_on_create(&rt("pods"), &mut unnamed).unwrap_err();
        e.assert_refusal(422, "name or generateName is required");
        let mut versioned = json!({"metadata": {"name": "a", "resourceVersion": "3"}});
        assert_eq!(
            name_on_create(&rt("pods"), &mut versioned)
                .unwrap_err()
                .code,
            500
        );
    }

    #[test]
    fn create_sets_uid_time_and_generation_and_drops_the_rest() {
        let mut obj = json!({"metadata": {"name": "d", "selfLink": "x", "generation": 9}});
        set_on_create(&rt("deployments"), &mut obj);
        assert_eq!(meta::meta_str(&obj, "uid").len(), 36);
        assert!(!meta::meta_str(&obj, "creationTimestamp").is_empty());
        assert_eq!(obj["metadata"]["generation"], 1);
        assert!(obj["metadata"].get("selfLink").is_none());
        let uncounted = ResourceType {
            generation: false,
            ..rt("deployments")
        };
        let mut obj = json!({"metadata": {"name": "p", "generation": 9}});
        set_on_create(&uncounted, &mut obj);
        assert!(obj["metadata"].get("generation").is_none());
    }

    #[test]
    fn update_keeps_system_fields_and_managers_only_when_tracking() {
        let old = json!({"metadata": {"uid": "u", "resourceVersion": "5", "managedFields": [1]}});
        let sent = json!({"metadata": {"uid": "x", "resourceVersion": "1", "managedFields": [2]}});
        let mut tracked = sent.clone();
        keep_on_update(&old, &mut tracked, Managers::Track);
        assert_eq!(tracked["metadata"], old["metadata"]);
        let mut applied = sent.clone();
        keep_on_update(&old, &mut applied, Managers::FromApply);
        assert_eq!(applied["metadata"]["uid"], "u");
        assert_eq!(applied["metadata"]["managedFields"], json!([2]));
    }

    #[test]
    fn a_stale_resource_version_conflicts() {
        let old = json!({"metadata": {"resourceVersion": "5"}});
        let pods = rt("pods");
        assert!(check_resource_version(&pods, "p", &old, &json!({"metadata": {}})).is_ok());
        let stale = json!({"metadata": {"resourceVersion": "4"}});
        assert_eq!(
            check_resource_version(&pods, "p", &old, &stale)
                .unwrap_err()
                .code,
            409
        );
    }

    #[test]
    fn generation_counts_spec_changes_only() {
        let deployments = rt("deployments");
        let old = json!({"metadata": {"generation": 2}, "spec": {"replicas": 1}});
        let mut status_only =
            json!({"metadata": {"generation": 2}, "spec": {"replicas": 1}, "status": {"x": 1}});
        bump_generation(&deployments, &old, &mut status_only);
        assert_eq!(status_only["metadata"]["generation"], 2);
        let mut scaled = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3}});
        bump_generation(&deployments, &old, &mut scaled);
        assert_eq!(scaled["metadata"]["generation"], 3);
    }
}

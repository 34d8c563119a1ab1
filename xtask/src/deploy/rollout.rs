//! When a rollout is done, read from a workload's status alone (the same
//! rules as `kubectl rollout status`): the controller has seen the current
//! generation, every replica runs the current template, and all of them are
//! available. A CustomResourceDefinition is done once it is Established (the
//! API server serves its kind), like `kubectl wait --for=condition=Established`.
//! Pure functions, so they are tested without an API server.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    Done(String),
    Waiting(String),
}

impl Progress {
    pub fn is_done(&self) -> bool {
        matches!(self, Progress::Done(_))
    }

    pub fn message(&self) -> &str {
        match self {
            Progress::Done(m) | Progress::Waiting(m) => m,
        }
    }
}

pub fn deployment(d: &Deployment) -> Progress {
    let generation = d.metadata.generation.unwrap_or(0);
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = &d.status else {
        return Progress::Waiting("no status yet".into());
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Progress::Waiting(format!(
            "the controller has not seen generation {generation} yet"
        ));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < want {
        return Progress::Waiting(format!("{updated} of {want} replicas updated"));
    }
    if total > updated {
        return Progress::Waiting(format!(
            "{} old replicas are pending termination",
            total - updated
        ));
    }
    if available < updated {
        return Progress::Waiting(format!(
            "{available} of {updated} updated replicas available"
        ));
    }
    Progress::Done(format!("{available} of {want} replicas available"))
}

pub fn daemon_set(ds: &DaemonSet) -> Progress {
    let generation = ds.metadata.generation.unwrap_or(0);
    let Some(status) = &ds.status else {
        return Progress::Waiting("no status yet".into());
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Progress::Waiting(format!(
            "the controller has not seen generation {generation} yet"
        ));
    }
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let available = status.number_available.unwrap_or(0);
    if updated < desired {
        return Progress::Waiting(format!("{updated} of {desired} nodes run the new pods"));
    }
    if available < desired {
        return Progress::Waiting(format!("{available} of {desired} pods available"));
    }
    Progress::Done(format!("{available} of {desired} nodes ready"))
}

pub fn custom_resource_definition(crd: &CustomResourceDefinition) -> Progress {
    let conditions = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let condition = |kind: &str| conditions.iter().find(|c| c.type_ == kind);
    if let Some(c) = condition("NamesAccepted").filter(|c| c.status == "False") {
        let why = c.message.as_deref().unwrap_or("no reason given");
        return Progress::Waiting(format!("its names are not accepted: {why}"));
    }
    match condition("Established") {
        Some(c) if c.status == "True" => Progress::Done("established".into()),
        _ => Progress::Waiting("not established yet".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dep(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "d", "generation": generation},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn deployment_rollout_states() {
        let cases = [
            (json!(null), false, "no status"),
            (json!({"observedGeneration": 1}), false, "generation 2"),
            (
                json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1}),
                false,
                "1 of 2 replicas updated",
            ),
            (
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
                false,
                "1 old replicas",
            ),
            (
                json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
                false,
                "1 of 2 updated replicas available",
            ),
            (
                json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2, "readyReplicas": 2}),
                true,
                "2 of 2",
            ),
        ];
        for (status, done, msg) in cases {
            let p = deployment(&dep(2, status.clone()));
            assert_eq!(p.is_done(), done, "{status}: {p:?}");
            assert!(p.message().contains(msg), "{status}: {p:?}");
        }
    }

    #[test]
    fn daemon_set_rollout_states() {
        let ds = |status: serde_json::Value| -> DaemonSet {
            serde_json::from_value(json!({
                "metadata": {"name": "a", "generation": 3},
                "spec": {"selector": {}, "template": {}},
                "status": status,
            }))
            .unwrap()
        };
        let base = json!({"currentNumberScheduled": 3, "numberMisscheduled": 0, "numberReady": 3});
        let with = |extra: serde_json::Value| {
            let mut s = base.clone();
            s.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            s
        };
        let cases = [
            (
                with(json!({"observedGeneration": 2, "desiredNumberScheduled": 3})),
                false,
                "generation 3",
            ),
            (
                with(
                    json!({"observedGeneration": 3, "desiredNumberScheduled": 3, "updatedNumberScheduled": 2, "numberAvailable": 3}),
                ),
                false,
                "2 of 3 nodes",
            ),
            (
                with(
                    json!({"observedGeneration": 3, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 2}),
                ),
                false,
                "2 of 3 pods available",
            ),
            (
                with(
                    json!({"observedGeneration": 3, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3}),
                ),
                true,
                "3 of 3 nodes ready",
            ),
        ];
        for (status, done, msg) in cases {
            let p = daemon_set(&ds(status.clone()));
            assert_eq!(p.is_done(), done, "{status}: {p:?}");
            assert!(p.message().contains(msg), "{status}: {p:?}");
        }
    }

    #[test]
    fn custom_resource_definition_states() {
        let crd = |conditions: serde_json::Value| -> CustomResourceDefinition {
            serde_json::from_value(json!({
                "metadata": {"name": "widgets.example.com"},
                "spec": {"group": "example.com", "names": {"plural": "widgets", "kind": "Widget"},
                         "scope": "Cluster", "versions": []},
                "status": {"conditions": conditions},
            }))
            .unwrap()
        };
        let cases = [
            (json!(null), false, "not established"),
            (
                json!([{"type": "Established", "status": "False"}]),
                false,
                "not established",
            ),
            (
                json!([{"type": "NamesAccepted", "status": "False", "message": "plural in use"}]),
                false,
                "plural in use",
            ),
            (
                json!([{"type": "NamesAccepted", "status": "True"}, {"type": "Established", "status": "True"}]),
                true,
                "established",
            ),
        ];
        for (conditions, done, msg) in cases {
            let p = custom_resource_definition(&crd(conditions.clone()));
            assert_eq!(p.is_done(), done, "{conditions}: {p:?}");
            assert!(p.message().contains(msg), "{conditions}: {p:?}");
        }
    }
}

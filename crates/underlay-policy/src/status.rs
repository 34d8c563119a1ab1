//! What the agent writes into the status of the objects it enforces: the
//! `Accepted` condition of a ClusterNetworkPolicy, so `kubectl get
//! clusternetworkpolicy -o yaml` tells an administrator whether (and how
//! much of) it is enforced.
//!
//! Every node's agent converts the same object the same way, so they all
//! compute the same condition; a patch is written only when the object's
//! condition differs (ignoring the transition time), so the first agent
//! writes it and the others find it already there.

use crate::convert::{self, Converted};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};
use underlay_api::cnp::ClusterNetworkPolicy;

/// The condition type underlay sets.
pub const ACCEPTED: &str = "Accepted";

/// The `Accepted` condition for a conversion's outcome (without its
/// transition time).
pub fn accepted(result: &convert::Result<Converted>, generation: Option<i64>) -> Condition {
    let (status, reason, message) = match result {
        Ok(c) if c.not_enforced.is_empty() => (
            "True",
            "Enforced",
            "enforced by underlay on every node's pods it selects".to_string(),
        ),
        Ok(c) => (
            "False",
            "PartiallyEnforced",
            format!(
                "enforced except: {} (failing closed as the API asks)",
                c.not_enforced.join("; ")
            ),
        ),
        Err(e) => (
            "False",
            "Invalid",
            format!("{e}; the last version understood stays in force, if any"),
        ),
    };
    Condition {
        type_: ACCEPTED.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

fn same(a: &Condition, b: &Condition) -> bool {
    (&a.status, &a.reason, &a.message, a.observed_generation)
        == (&b.status, &b.reason, &b.message, b.observed_generation)
}

/// The merge patch that brings `o`'s `Accepted` condition in line with
/// `result`, keeping the other conditions as they are; `None` when it
/// already is.
pub fn cluster_policy_patch(
    o: &ClusterNetworkPolicy,
    result: &convert::Result<Converted>,
) -> Option<Value> {
    let mut want = accepted(result, o.metadata.generation);
    let conditions: Vec<Condition> = o
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let current = conditions.iter().find(|c| c.type_ == ACCEPTED);
    if current.is_some_and(|c| same(c, &want)) {
        return None;
    }
    want.last_transition_time = match current {
        Some(c) if c.status == want.status => c.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let mut all: Vec<Condition> = conditions
        .into_iter()
        .filter(|c| c.type_ != ACCEPTED)
        .collect();
    all.push(want);
    Some(json!({ "status": { "conditions": all } }))
}

//! The `binding` subresource of pods: what the scheduler (here, the kubelet
//! emulator) writes to put a pod on a node.

use http::StatusCode;
use serde_json::{Value, json};

use super::super::error::{ApiError, ApiResult, Cause};
use super::super::meta;
use super::super::resources::ResourceType;
use super::{Ctx, decode, existing, json_response, key};

pub(super) fn bind(
    ctx: &Ctx,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    body: &[u8],
) -> ApiResult<axum::response::Response> {
    let binding = decode(body, &ctx.content_type)?;
    let node = binding["target"]["name"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid(
            rt,
            name,
            &[Cause::required("target.name")],
        ));
    }
    let k = key(rt, ns, name);
    let mut inner = ctx.st.store.lock();
    let old = existing(&inner, rt, &k)?;
    let assigned = old["spec"]["nodeName"].as_str().unwrap_or("");
    if !assigned.is_empty() {
        return Err(ApiError::conflict_message(
            rt,
            name,
            &format!("pod {name} is already assigned to node \"{assigned}\""),
        ));
    }
    let new = bound(&old, node);
    if !ctx.dry_run() {
        inner.put(k, new);
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// `pod` on `node`, with its `PodScheduled` condition true.
fn bound(pod: &Value, node: &str) -> Value {
    let mut new = pod.clone();
    new["spec"]["nodeName"] = json!(node);
    let mut conds = new["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conds.retain(|c| c["type"] != "PodScheduled");
    conds
        .push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": meta::now()}));
    new["status"]["conditions"] = json!(conds);
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_sets_the_node_and_replaces_pod_scheduled() {
        let pod = json!({"spec": {}, "status": {"conditions": [
            {"type": "PodScheduled", "status": "False"}, {"type": "Ready", "status": "False"}]}});
        let new = bound(&pod, "n1");
        assert_eq!(new["spec"]["nodeName"], "n1");
        let conds = new["status"]["conditions"].as_array().expect("conditions");
        assert_eq!(conds.len(), 2);
        assert_eq!(conds[0]["type"], "Ready");
        assert_eq!(conds[1]["type"], "PodScheduled");
        assert_eq!(conds[1]["status"], "True");
    }
}

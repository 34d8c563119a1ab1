//! The cluster view: every node's pod CIDRs, route state and agent, from
//! the API server (the kubeconfig kubectl uses).

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;
use std::time::Duration;

/// One node as the cluster view shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRow {
    pub name: String,
    pub pod_cidrs: Vec<String>,
    /// `NetworkUnavailable`: "False" once the node's route is in place.
    pub network_unavailable: String,
    pub route_reason: String,
    /// The node's `Ready` condition and its reason (the kubelet reports
    /// the network plugin's readiness there).
    pub ready: String,
    pub ready_reason: String,
    /// The agent pod on the node and whether it is Ready; empty when the
    /// agent does not run as a pod there.
    pub agent_pod: String,
    pub agent_ready: String,
}

fn condition(n: &Node, type_: &str) -> (String, String) {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
        .unwrap_or_else(|| ("Unknown".into(), String::new()))
}

/// The agent pods by node: (pod name, Ready status).
fn agents_by_node(pods: Vec<Pod>) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for p in pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "Unknown".into());
        out.insert(node, (p.metadata.name.unwrap_or_default(), ready));
    }
    out
}

pub fn rows(nodes: Vec<Node>, agents: Vec<Pod>) -> Vec<NodeRow> {
    let agents = agents_by_node(agents);
    let mut out: Vec<NodeRow> = nodes
        .into_iter()
        .map(|n| {
            let name = n.metadata.name.clone().unwrap_or_default();
            let (network_unavailable, route_reason) = condition(&n, "NetworkUnavailable");
            let (ready, ready_reason) = condition(&n, "Ready");
            let spec = n.spec.clone().unwrap_or_default();
            let pod_cidrs = spec
                .pod_cidrs
                .filter(|c| !c.is_empty())
                .or(spec.pod_cidr.map(|c| vec![c]))
                .unwrap_or_default();
            let (agent_pod, agent_ready) = agents.get(&name).cloned().unwrap_or_default();
            NodeRow {
                name,
                pod_cidrs,
                network_unavailable,
                route_reason,
                ready,
                ready_reason,
                agent_pod,
                agent_ready,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub async fn view(timeout: Duration) -> Result<Vec<NodeRow>> {
    let client = kube::Client::try_default().await.context(
        "no Kubernetes API to ask (set KUBECONFIG, or name an agent with --socket/--node)",
    )?;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client);
    let ask = async {
        let nodes = nodes.list(&ListParams::default()).await?;
        let agents = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=underlay-agent"))
            .await?;
        Ok::<_, kube::Error>((nodes.items, agents.items))
    };
    let (nodes, agents) = tokio::time::timeout(timeout, ask)
        .await
        .context("the API server did not answer in time")?
        .context("listing nodes and agent pods")?;
    Ok(rows(nodes, agents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_row_per_node_with_its_route_state_and_agent() {
        let node = |name: &str, unavailable: &str, reason: &str| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
                "status": {"conditions": [
                    {"type": "NetworkUnavailable", "status": unavailable, "reason": reason},
                    {"type": "Ready", "status": "True", "reason": "KubeletReady"}]}
            }))
            .unwrap()
        };
        let agent: Pod = serde_json::from_value(json!({
            "metadata": {"name": "underlay-agent-x1"},
            "spec": {"nodeName": "b", "containers": []},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let rows = rows(
            vec![
                node("b", "False", "RouteCreated"),
                node("a", "True", "NoRouteCreated"),
            ],
            vec![agent],
        );
        assert_eq!(rows[0].name, "a");
        assert_eq!(
            (
                rows[0].network_unavailable.as_str(),
                rows[0].agent_pod.as_str()
            ),
            ("True", "")
        );
        assert_eq!(rows[1].pod_cidrs, ["10.244.1.0/24", "fd00:1::/64"]);
        assert_eq!(
            (
                rows[1].route_reason.as_str(),
                rows[1].agent_pod.as_str(),
                rows[1].agent_ready.as_str()
            ),
            ("RouteCreated", "underlay-agent-x1", "True")
        );
    }
}

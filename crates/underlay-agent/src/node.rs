//! The node's pod CIDRs from its Node object: watch the one Node by name
//! until `spec.podCIDRs` (or the older `spec.podCIDR`) is set — the route
//! controller fills it in when it allocates the node's range.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use underlay_ipam::Cidr;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "node {node} has pod cidr {value:?} that cannot be used: {source}; fix the node's spec.podCIDRs"
    )]
    BadCidr {
        node: String,
        value: String,
        #[source]
        source: Box<underlay_ipam::Error>,
    },
}

/// The pod CIDRs of `node`, or `None` while it has none.
pub fn pod_cidrs(node: &Node) -> Result<Option<Vec<Cidr>>, NodeError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let spec = match &node.spec {
        Some(s) => s,
        None => return Ok(None),
    };
    let raw: Vec<String> = match (&spec.pod_cidrs, &spec.pod_cidr) {
        (Some(list), _) if !list.is_empty() => list.clone(),
        (_, Some(one)) if !one.is_empty() => vec![one.clone()],
        _ => return Ok(None),
    };
    raw.into_iter()
        .map(|value| {
            value.parse::<Cidr>().map_err(|source| NodeError::BadCidr {
                node: name.clone(),
                value,
                source: Box::new(source),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Waits until `node` has pod CIDRs and returns them. `waiting` is told
/// what the agent is waiting for (for Status). Watch errors are retried
/// with backoff; a Node with unusable CIDRs is reported and waited out.
pub async fn wait_for_pod_cidrs(
    client: kube::Client,
    node: &str,
    waiting: impl Fn(String),
) -> Vec<Cidr> {
    let api: Api<Node> = Api::all(client);
    waiting(format!(
        "waiting for node {node} to get pod cidrs (spec.podCIDRs)"
    ));
    loop {
        let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
        let mut stream = watcher(api.clone(), config)
            .default_backoff()
            .applied_objects()
            .boxed();
        loop {
            match stream.try_next().await {
                Ok(Some(obj)) => match pod_cidrs(&obj) {
                    Ok(Some(cidrs)) => {
                        let shown: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
                        tracing::info!(%node, cidrs = ?shown, "node pod cidrs known");
                        return cidrs;
                    }
                    Ok(None) => tracing::info!(%node, "node has no pod cidrs yet"),
                    Err(e) => {
                        tracing::error!(%node, error = %e, "node pod cidrs unusable");
                        waiting(e.to_string());
                    }
                },
                // The backoff keeps the stream alive; an end means start over.
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%node, error = %e, "node watch failed; retrying");
                    waiting(format!(
                        "cannot watch node {node}: {e}; check the agent's kubeconfig and RBAC"
                    ));
                }
            }
        }
    }
}

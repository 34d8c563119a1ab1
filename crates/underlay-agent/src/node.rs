//! The node's pod CIDRs from its Node object: watch the one Node by name
//! until `spec.podCIDRs` (or the older `spec.podCIDR`) is set — the route
//! controller fills it in when it allocates the node's range — and keep
//! watching: a Node deleted and registered again can get another range.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher::Event;
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

/// What happened to the Node after its pod CIDRs were first known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChange {
    /// It has these pod CIDRs, different from the ones in use.
    PodCidrs(Vec<Cidr>),
    /// It was deleted (or is missing after a relist).
    Gone,
}

/// Watches `node` until `changes` is closed, sending a change each time
/// its pod CIDRs differ from `current` (the ones in use) or it disappears.
/// Watch errors are retried with backoff.
pub async fn follow(
    client: kube::Client,
    node: String,
    mut current: Option<Vec<Cidr>>,
    changes: tokio::sync::mpsc::UnboundedSender<NodeChange>,
) {
    let api: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut seen = false;
    loop {
        let event = match stream.try_next().await {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%node, error = %e, "node watch failed; retrying");
                continue;
            }
        };
        let change = match event {
            Event::Init => {
                seen = false;
                None
            }
            Event::InitApply(obj) | Event::Apply(obj) => {
                seen = true;
                match pod_cidrs(&obj) {
                    Ok(Some(cidrs)) if current.as_ref() != Some(&cidrs) => {
                        Some(NodeChange::PodCidrs(cidrs))
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::error!(%node, error = %e, "node pod cidrs unusable; keeping the ones in use");
                        None
                    }
                }
            }
            Event::InitDone if !seen && current.is_some() => Some(NodeChange::Gone),
            Event::Delete(_) if current.is_some() => Some(NodeChange::Gone),
            Event::InitDone | Event::Delete(_) => None,
        };
        if let Some(change) = change {
            current = match &change {
                NodeChange::PodCidrs(c) => Some(c.clone()),
                NodeChange::Gone => None,
            };
            if changes.send(change).is_err() {
                return;
            }
        }
    }
}

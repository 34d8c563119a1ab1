//! What callers wait for and look at in a running lab: a polled condition,
//! agent and node readiness, node conditions, running pods, probes from a
//! pod, and the route controller's leader.

use super::{Error, Lab, NODE_AGENT_HEALTH, NODE_AGENT_METRICS, Result};
use crate::kubelet::PodInfo;
use crate::netns::{self, Netns};
use crate::traffic::{self, Outcome, Protocol};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

impl Lab {
    /// Polls `check` every 100 ms until it returns `Some`, or times out.
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    secs: timeout.as_secs(),
                    logs: self.config.dir.join("logs"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the agent of `node` answers ready on its health endpoint.
    pub async fn wait_agent_ready(&self, node: &str, timeout: Duration) -> Result<()> {
        let net = self.node_net(node)?;
        let path = Netns::existing(&net.netns).path();
        let deadline = Instant::now() + timeout;
        loop {
            let p = path.clone();
            let ready = tokio::task::spawn_blocking(move || {
                netns::in_netns(&p, || http_get(NODE_AGENT_HEALTH, "/readyz"))
                    .ok()
                    .flatten()
                    .map(|(status, _)| status)
            })
            .await
            .ok()
            .flatten();
            if ready == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("the agent of {node} to be ready"),
                    secs: timeout.as_secs(),
                    logs: self.config.dir.join("logs"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The agent of `node`'s metrics in the Prometheus text format, from its
    /// metrics endpoint inside the node's namespace; `None` while it does
    /// not answer 200.
    pub async fn agent_metrics(&self, node: &str) -> Result<Option<String>> {
        let net = self.node_net(node)?;
        let path = Netns::existing(&net.netns).path();
        let got = tokio::task::spawn_blocking(move || {
            netns::in_netns(&path, || http_get(NODE_AGENT_METRICS, "/metrics"))
        })
        .await
        .map_err(|e| Error::Usage(format!("metrics task failed: {e}")))??;
        Ok(got.and_then(|(status, body)| (status == 200).then_some(body)))
    }

    /// Waits until the node is `Ready` (its runtime's network status, CNI
    /// STATUS, succeeds): pods bound to it start from then on. The runtime
    /// is asked on every poll rather than at the kubelet's next period, so
    /// that a lab waiting for a node it knows is ready does not idle.
    pub async fn wait_node_ready(&self, node: &str, timeout: Duration) -> Result<()> {
        self.wait_for(&format!("{node} Ready"), timeout, || async {
            self.kubelets.check_runtime(node).await;
            let n = self.node_object(node).await.ok().flatten()?;
            (node_ready(&n) == Some(true)).then_some(())
        })
        .await
    }

    /// The Node object.
    pub async fn node_object(&self, node: &str) -> Result<Option<Node>> {
        Ok(Api::<Node>::all(self.client.clone()).get_opt(node).await?)
    }

    /// Waits for `NetworkUnavailable=False` on the node.
    pub async fn wait_network_available(&self, node: &str, timeout: Duration) -> Result<()> {
        self.wait_for(
            &format!("{node} NetworkUnavailable=False"),
            timeout,
            || async {
                let n = self.node_object(node).await.ok().flatten()?;
                (network_unavailable(&n) == Some(false)).then_some(())
            },
        )
        .await
    }

    /// Waits until the pod runs with an IP, and returns it.
    pub async fn wait_pod_running(&self, key: &str, timeout: Duration) -> Result<PodInfo> {
        self.wait_for(&format!("pod {key} to run"), timeout, || async {
            let info = self.kubelets.pods().into_iter().find(|p| p.key == key)?;
            let (ns, name) = key.split_once('/')?;
            let pod = Api::<Pod>::namespaced(self.client.clone(), ns)
                .get_opt(name)
                .await
                .ok()??;
            let running = pod.status.as_ref()?.phase.as_deref() == Some("Running");
            running.then_some(info)
        })
        .await
    }

    /// Probes `to` from inside pod `from` (`namespace/name`).
    pub async fn probe(
        &self,
        from: &str,
        to: SocketAddr,
        protocol: Protocol,
        timeout: Duration,
    ) -> Result<Outcome> {
        let info = self
            .kubelets
            .pods()
            .into_iter()
            .find(|p| p.key == from)
            .ok_or_else(|| Error::Usage(format!("no running pod {from}")))?;
        let path = Netns::existing(&info.netns).path();
        let outcome = tokio::task::spawn_blocking(move || {
            netns::in_netns(&path, move || traffic::probe(to, protocol, timeout))
        })
        .await
        .map_err(|e| Error::Usage(format!("probe task failed: {e}")))??;
        Ok(outcome)
    }

    /// The current route-controller leader, from the Lease.
    pub async fn leader(&self) -> Option<String> {
        use k8s_openapi::api::coordination::v1::Lease;
        let leases: Api<Lease> = Api::all(self.client.clone());
        let list = leases.list(&Default::default()).await.ok()?;
        list.items
            .into_iter()
            .filter(|l| {
                l.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.contains("route-controller"))
            })
            .find_map(|l| l.spec?.holder_identity)
    }
}

/// The node's `NetworkUnavailable` condition: `Some(true)` when set True.
pub fn network_unavailable(node: &Node) -> Option<bool> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "NetworkUnavailable")
        .map(|c| c.status == "True")
}

/// The node's `Ready` condition: `Some(true)` when True.
pub fn node_ready(node: &Node) -> Option<bool> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status == "True")
}

/// A plain HTTP/1.1 GET: the status code and the body.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr: SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut response = Vec::new();
    s.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

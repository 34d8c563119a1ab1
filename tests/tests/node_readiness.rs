//! A node's readiness follows its network plugin, as kubelet and the
//! container runtime make it: while the agent is down, CNI STATUS fails, the
//! node is NotReady (NetworkPluginNotReady) and pods bound to it wait without
//! a sandbox; once the agent is back they start. The node Lease is renewed
//! throughout. Needs root.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;
use std::time::Duration;
use underlay_e2e::{CONVERGE, lab};
use underlay_lab::lab::node_ready;
use underlay_lab::scenario;

fn renew_time(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| serde_json::to_value(&s.renew_time).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_its_agent_is_not_ready_and_its_pods_start_once_the_agent_is_back() {
    let Some(l) = lab(
        "a_node_without_its_agent_is_not_ready_and_its_pods_start_once_the_agent_is_back",
        |c| {
            c.nodes = 1;
            // Renew the Lease often enough to see renewals within the test.
            c.kubelet.lease_renew = Duration::from_secs(1);
        },
    )
    .await
    else {
        return;
    };
    let node = "node-1";
    l.kill_agent(node).await.unwrap();
    let not_ready = l
        .wait_for("node-1 NotReady", CONVERGE, || async {
            let n = l.node_object(node).await.ok()??;
            (node_ready(&n) == Some(false)).then_some(n)
        })
        .await
        .unwrap();
    let ready = not_ready
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
    let message = ready.message.unwrap_or_default();
    assert!(
        message.contains("NetworkReady=false reason:NetworkPluginNotReady")
            && message.contains("underlay-cni"),
        "the plugin's STATUS error is in the message: {message}"
    );

    scenario::namespace(&l, "x").await.unwrap();
    scenario::pod(&l, "x/a", Some(node), json!({}))
        .await
        .unwrap();
    l.wait_for("x/a to wait for the network", CONVERGE, || async {
        l.kubelets()
            .waiting_pods(node)
            .contains(&"x/a".to_owned())
            .then_some(())
    })
    .await
    .unwrap();
    let leases: Api<Lease> = Api::namespaced(l.client(), "kube-node-lease");
    let lease = leases.get(node).await.unwrap();
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(node));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let first_renew = renew_time(&lease);
    // A NotReady node is alive: its Lease keeps being renewed, and the pod
    // keeps waiting without a sandbox meanwhile.
    l.wait_for("the node lease to be renewed", CONVERGE, || async {
        let renewed = renew_time(&leases.get(node).await.ok()?);
        (renewed > first_renew).then_some(())
    })
    .await
    .unwrap();
    let pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(l.client(), "x")
        .get("a")
        .await
        .unwrap();
    let status = pod.status.unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert!(status.pod_ips.unwrap_or_default().is_empty());
    assert!(
        l.pods().iter().all(|p| p.key != "x/a"),
        "a sandbox was created on a node whose network is not ready"
    );

    l.start_agent(node).await.unwrap();
    l.wait_node_ready(node, CONVERGE).await.unwrap();
    let info = l.wait_pod_running("x/a", CONVERGE).await.unwrap();
    let cidr = l
        .node_object(node)
        .await
        .unwrap()
        .unwrap()
        .spec
        .unwrap()
        .pod_cidr
        .unwrap();
    let ip = info.ips.first().copied().expect("the pod has an IP");
    let (net, len) = cidr.split_once('/').unwrap();
    let (net, len): (std::net::Ipv4Addr, u32) = (net.parse().unwrap(), len.parse().unwrap());
    let std::net::IpAddr::V4(ip4) = ip else {
        panic!("{ip} is not IPv4");
    };
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    assert_eq!(
        u32::from(ip4) & mask,
        u32::from(net),
        "{ip} is in the node's pod CIDR {cidr}"
    );
    assert!(l.kubelets().waiting_pods(node).is_empty());
    l.down().await;
}

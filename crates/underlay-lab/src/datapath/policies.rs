//! Underlay on a full lab (real CNI, agents, route controller) with no
//! NetworkPolicy, with N policies selecting the server pod, and with no
//! policy and a VXLAN overlay carrying the two nodes' pod traffic,
//! alternated by creating and deleting the policies, each change awaited
//! until the server node's dataplane enforces it, and by adding and deleting
//! the overlay's routes, each change awaited until the nodes' route lookups
//! and the overlay's counters show it.

use super::lab_overlay::LabOverlay;
use super::{Alternate, BoxError, Probes, Sample, Series, Settings};
use crate::kubelet::PodInfo;
use crate::lab::Lab;
use crate::netns::Netns;
use crate::scenario;
use crate::traffic::Protocol;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use std::time::{Duration, Instant};

/// The label on every policy the benchmark creates.
const LABEL: &str = "bench=datapath";

/// The server pod's node, whose agent enforces its ingress policy.
const SERVER_NODE: &str = "node-2";

/// How long a policy change may take to reach the dataplane.
const CONVERGE_WITHIN: Duration = Duration::from_secs(300);

/// The configurations, in table order (the first is the reference; the
/// policies' connection rate is compared to the overlay's too).
pub fn names(policies: usize) -> [String; 3] {
    [
        "0 policies".into(),
        format!("{policies} policies"),
        "VXLAN overlay, 0 policies".into(),
    ]
}

/// Pods x/a (client) and z/c (a source no policy allows) on node-1, y/b
/// (server) on node-2, and the overlay's devices on both nodes; then the
/// three configurations in rotating rounds. The series, and what the
/// overlay is.
pub async fn compare(lab: &Lab, settings: &Settings) -> Result<(Vec<Series>, String), BoxError> {
    let (a, b) = client_and_server(lab).await?;
    scenario::namespace(lab, "z").await?;
    scenario::pod(lab, "z/c", Some("node-1"), json!({})).await?;
    lab.wait_pod_running("z/c", Duration::from_secs(60)).await?;
    let overlay = LabOverlay::create(lab, &a, &b).await?;
    let described = overlay.describe();
    let pb = Netns::existing(&b.netns).path();
    let probes = Probes::start(Netns::existing(&a.netns).path(), &pb, b.ips[0])?;
    let [none, many, vxlan] = names(settings.policies);
    let mut configs = Configs {
        lab,
        probes,
        settings,
        overlay,
        policies_on: None,
        overlay_on: None,
    };
    let series = super::alternate(&mut configs, settings.rounds, [&none, &many, &vxlan]).await?;
    Ok((series, described))
}

struct Configs<'a> {
    lab: &'a Lab,
    probes: Probes,
    settings: &'a Settings,
    overlay: LabOverlay,
    /// Whether the policies, and the overlay, are in place (`None`: not
    /// known yet).
    policies_on: Option<bool>,
    overlay_on: Option<bool>,
}

impl Alternate for Configs<'_> {
    /// Leaves the overlay first and enters it last, so that policies change
    /// on the fabric's routes only.
    async fn switch_to(&mut self, config: usize) -> Result<(), BoxError> {
        let (want_policies, want_overlay) = (config == 1, config == 2);
        if !want_overlay {
            self.set_overlay(false).await?;
        }
        if self.policies_on != Some(want_policies) {
            self.policies_on = None;
            self.set_policies(want_policies).await?;
            self.policies_on = Some(want_policies);
        }
        if want_overlay {
            self.set_overlay(true).await?;
        }
        Ok(())
    }

    async fn measure(&mut self, config: usize) -> Result<Sample, BoxError> {
        let name = &names(self.settings.policies)[config];
        self.probes.measure(name, self.settings).await
    }
}

impl Configs<'_> {
    /// Carries the pods' traffic over the overlay (`on`) or the fabric,
    /// unless it already is.
    async fn set_overlay(&mut self, on: bool) -> Result<(), BoxError> {
        if self.overlay_on == Some(on) {
            return Ok(());
        }
        let t = Instant::now();
        self.overlay_on = None;
        if on {
            self.overlay.switch_on(self.lab).await?;
        } else {
            self.overlay.switch_off(self.lab).await?;
        }
        self.overlay_on = Some(on);
        let state = if on {
            "on, pods' traffic through it"
        } else {
            "off, pods routed by the fabric"
        };
        eprintln!(
            "datapath: VXLAN overlay: {state} after {:.1}s",
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Creates the policies (`on`) or deletes them, and waits until the
    /// server node's dataplane enforces the change.
    async fn set_policies(&self, on: bool) -> Result<(), BoxError> {
        let t = Instant::now();
        let n = self.settings.policies;
        if on {
            create_policies(self.lab, n).await?;
            wait_policies_in_force(self.lab, n + 1).await?;
            eprintln!(
                "datapath: {n} policies: created, in force after {:.1}s",
                t.elapsed().as_secs_f64()
            );
        } else {
            delete_policies(self.lab).await?;
            wait_no_policy(self.lab).await?;
            eprintln!(
                "datapath: 0 policies: the benchmark's deleted, none enforced after {:.1}s",
                t.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }
}

/// Pods x/a on node-1 and y/b on node-2, once x/a reaches y/b.
async fn client_and_server(lab: &Lab) -> Result<(PodInfo, PodInfo), BoxError> {
    for ns in ["x", "y"] {
        scenario::namespace(lab, ns).await?;
    }
    scenario::pod(lab, "x/a", Some("node-1"), json!({})).await?;
    scenario::pod(lab, "y/b", Some(SERVER_NODE), json!({})).await?;
    let a = lab.wait_pod_running("x/a", Duration::from_secs(60)).await?;
    let b = lab.wait_pod_running("y/b", Duration::from_secs(60)).await?;
    let o = scenario::expect_reach(
        lab,
        "x/a",
        "y/b",
        80,
        Protocol::Tcp,
        true,
        Duration::from_secs(30),
    )
    .await?;
    if !o.matched {
        return Err(format!("x/a cannot reach y/b: {}", o.outcome).into());
    }
    Ok((a, b))
}

/// `count` policies selecting the server y/b, then one allowing the client's
/// namespace x on every port. Each of the many allows a different source
/// range and port, so the destination's rules grow with the policy count;
/// the client's traffic must still flow.
async fn create_policies(lab: &Lab, count: usize) -> Result<(), BoxError> {
    let api: Api<NetworkPolicy> = Api::namespaced(lab.client(), "y");
    let mut values: Vec<serde_json::Value> = (0..count).map(bench_policy).collect();
    values.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bench-allow-x", "namespace": "y", "labels": {"bench": "datapath"}},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}]}]}}));
    futures::stream::iter(values)
        .map(|v| {
            let api = api.clone();
            async move {
                let np: NetworkPolicy = serde_json::from_value(v)?;
                api.create(&PostParams::default(), &np).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
}

fn bench_policy(i: usize) -> serde_json::Value {
    let third = i % 250;
    let second = i / 250;
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("bench-{i}"), "namespace": "y", "labels": {"bench": "datapath"}},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
          "ingress": [{"from": [{"ipBlock": {"cidr": format!("172.{}.{third}.0/24", 16 + second)}}],
                       "ports": [{"protocol": "TCP", "port": 10000 + i}]}]}})
}

async fn delete_policies(lab: &Lab) -> Result<(), BoxError> {
    let api: Api<NetworkPolicy> = Api::namespaced(lab.client(), "y");
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(LABEL),
    )
    .await?;
    Ok(())
}

/// Waits until the policies are in force: the server node's agent reports
/// `count` policies programmed, a source no policy allows (z/c) is cut off
/// from y/b, and x/a still reaches it.
async fn wait_policies_in_force(lab: &Lab, count: usize) -> Result<(), BoxError> {
    wait_programmed(lab, count).await?;
    let denied = reach(lab, "z/c", false).await?;
    let allowed = reach(lab, "x/a", true).await?;
    if !denied.matched || !allowed.matched {
        return Err(format!(
            "policies not in force: z/c -> y/b {}, x/a -> y/b {}",
            denied.outcome, allowed.outcome
        )
        .into());
    }
    Ok(())
}

/// Waits until no policy is enforced: the server node's agent reports none
/// programmed and z/c reaches y/b again.
async fn wait_no_policy(lab: &Lab) -> Result<(), BoxError> {
    wait_programmed(lab, 0).await?;
    let open = reach(lab, "z/c", true).await?;
    if !open.matched {
        return Err(format!("policies deleted but z/c -> y/b {}", open.outcome).into());
    }
    Ok(())
}

async fn reach(lab: &Lab, from: &str, connected: bool) -> Result<scenario::Observation, BoxError> {
    let within = Duration::from_secs(30);
    Ok(scenario::expect_reach(lab, from, "y/b", 80, Protocol::Tcp, connected, within).await?)
}

/// Waits until the server node's agent has programmed `count` policies
/// selecting its pods: its `underlay_policy_policies` gauge, set once a sync
/// is written to the dataplane.
async fn wait_programmed(lab: &Lab, count: usize) -> Result<(), BoxError> {
    let what = format!("{SERVER_NODE}'s agent to program {count} policies");
    lab.wait_for(&what, CONVERGE_WITHIN, || async {
        let text = lab.agent_metrics(SERVER_NODE).await.ok()??;
        (gauge(&text, "underlay_policy_policies")? == count as u64).then_some(())
    })
    .await?;
    Ok(())
}

/// The value of an unlabelled metric in Prometheus text.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse::<f64>().ok())
        .filter(|v| *v >= 0.0 && v.is_finite())
        .map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::gauge;

    #[test]
    fn gauge_reads_the_named_unlabelled_metric_only() {
        let text = "# HELP underlay_policy_policies x\n# TYPE underlay_policy_policies gauge\n\
                    underlay_policy_policies_total 9\nunderlay_policy_policies 1001\n";
        assert_eq!(gauge(text, "underlay_policy_policies"), Some(1001));
        assert_eq!(
            gauge("underlay_policy_policies nan\n", "underlay_policy_policies"),
            None
        );
        assert_eq!(gauge("", "underlay_policy_policies"), None);
    }
}

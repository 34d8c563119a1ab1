//! Underlay on a full lab (real CNI, agents, route controller) with no
//! NetworkPolicy and with N policies selecting the server pod, alternated by
//! creating and deleting the policies, each change awaited until the server
//! node's dataplane enforces it.

use super::{Alternate, BoxError, Probes, Sample, Series, Settings};
use crate::lab::Lab;
use crate::netns::Netns;
use crate::scenario;
use crate::traffic::Protocol;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The label on every policy the benchmark creates.
const LABEL: &str = "bench=datapath";

/// The server pod's node, whose agent enforces its ingress policy.
const SERVER_NODE: &str = "node-2";

/// How long a policy change may take to reach the dataplane.
const CONVERGE_WITHIN: Duration = Duration::from_secs(300);

/// The configurations, in table order (the first is the reference).
pub fn names(policies: usize) -> [String; 2] {
    ["0 policies".into(), format!("{policies} policies")]
}

/// Pods x/a (client) and z/c (a source no policy allows) on node-1, y/b
/// (server) on node-2; then both policy counts in alternating rounds.
pub async fn compare(lab: &Lab, settings: &Settings) -> Result<Vec<Series>, BoxError> {
    let (pa, pb, ip) = client_and_server(lab).await?;
    scenario::namespace(lab, "z").await?;
    scenario::pod(lab, "z/c", Some("node-1"), json!({})).await?;
    lab.wait_pod_running("z/c", Duration::from_secs(60)).await?;
    let probes = Probes::start(pa, &pb, ip)?;
    let [none, many] = names(settings.policies);
    let mut counts = Counts {
        lab,
        probes,
        settings,
    };
    super::alternate(&mut counts, settings.rounds, [&none, &many]).await
}

struct Counts<'a> {
    lab: &'a Lab,
    probes: Probes,
    settings: &'a Settings,
}

impl Alternate for Counts<'_> {
    async fn switch_to(&mut self, config: usize) -> Result<(), BoxError> {
        let t = Instant::now();
        let n = self.settings.policies;
        if config == 0 {
            delete_policies(self.lab).await?;
            wait_no_policy(self.lab).await?;
            eprintln!(
                "datapath: 0 policies: the benchmark's deleted, none enforced after {:.1}s",
                t.elapsed().as_secs_f64()
            );
        } else {
            create_policies(self.lab, n).await?;
            wait_policies_in_force(self.lab, n + 1).await?;
            eprintln!(
                "datapath: {n} policies: created, in force after {:.1}s",
                t.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    async fn measure(&mut self, config: usize) -> Result<Sample, BoxError> {
        let name = &names(self.settings.policies)[config];
        self.probes.measure(name, self.settings).await
    }
}

/// Pods x/a on node-1 and y/b on node-2, once x/a reaches y/b: the client's
/// and the server's namespace, and the server's address.
async fn client_and_server(lab: &Lab) -> Result<(PathBuf, PathBuf, IpAddr), BoxError> {
    for ns in ["x", "y"] {
        scenario::namespace(lab, ns).await?;
    }
    scenario::pod(lab, "x/a", Some("node-1"), json!({})).await?;
    scenario::pod(lab, "y/b", Some(SERVER_NODE), json!({})).await?;
    let a = lab.wait_pod_running("x/a", Duration::from_secs(60)).await?;
    let b = lab.wait_pod_running("y/b", Duration::from_secs(60)).await?;
    let ip = b.ips[0];
    let pa = Netns::existing(&a.netns).path();
    let pb = Netns::existing(&b.netns).path();
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
    Ok((pa, pb, ip))
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

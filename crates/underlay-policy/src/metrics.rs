//! Prometheus metrics of the policy engine.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabel {
    /// `iptables-restore`, `ip6tables-restore` or `ipset`.
    pub tool: String,
}

/// Labels of denied packets: the pod's namespace and the direction only,
/// so the series stay as few as the node's namespaces.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabel {
    pub namespace: String,
    /// `ingress` or `egress`.
    pub direction: String,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub policies: Gauge,
    pub cluster_policies: Gauge,
    pub endpoints: Gauge,
    pub rules: Gauge,
    pub ipset_members: Gauge,
    pub apply_seconds: Histogram,
    pub change_to_dataplane_seconds: Histogram,
    pub restore_calls: MetricFamily<ToolLabel, Counter>,
    pub restore_failures: MetricFamily<ToolLabel, Counter>,
    pub conntrack_removed: Counter,
    pub repairs: Counter,
    pub denied_packets: MetricFamily<DenialLabel, Counter>,
    pub denials_dropped: Counter,
    pub nflog_malformed: Counter,
}

/// The tools whose calls are counted, each exported from the start (at 0)
/// so rates and alerts see the series before the first failure.
pub const TOOLS: [&str; 3] = ["iptables-restore", "ip6tables-restore", "ipset"];

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            policies: Gauge::default(),
            cluster_policies: Gauge::default(),
            endpoints: Gauge::default(),
            rules: Gauge::default(),
            ipset_members: Gauge::default(),
            apply_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            change_to_dataplane_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            restore_calls: MetricFamily::default(),
            restore_failures: MetricFamily::default(),
            conntrack_removed: Counter::default(),
            repairs: Counter::default(),
            denied_packets: MetricFamily::default(),
            denials_dropped: Counter::default(),
            nflog_malformed: Counter::default(),
        };
        for tool in TOOLS {
            let label = ToolLabel { tool: tool.into() };
            drop(m.restore_calls.get_or_create(&label));
            drop(m.restore_failures.get_or_create(&label));
        }
        m
    }
}

impl Metrics {
    /// Registers every metric under `underlay_policy_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("underlay_policy");
        r.register(
            "policies",
            "NetworkPolicies that select a local pod",
            self.policies.clone(),
        );
        r.register(
            "cluster_policies",
            "ClusterNetworkPolicies that select a local pod",
            self.cluster_policies.clone(),
        );
        r.register(
            "endpoints",
            "Local pod endpoints enforced",
            self.endpoints.clone(),
        );
        r.register(
            "rules",
            "iptables rules programmed (both families)",
            self.rules.clone(),
        );
        r.register(
            "ipset_members",
            "ipset members programmed",
            self.ipset_members.clone(),
        );
        r.register(
            "apply_seconds",
            "Time to compute and write one dataplane sync",
            self.apply_seconds.clone(),
        );
        r.register(
            "change_to_dataplane_seconds",
            "Time from a change reaching the index to it being programmed",
            self.change_to_dataplane_seconds.clone(),
        );
        r.register(
            "restore_calls",
            "iptables-restore and ipset restore invocations",
            self.restore_calls.clone(),
        );
        r.register(
            "restore_failures",
            "iptables-restore and ipset restore invocations that failed",
            self.restore_failures.clone(),
        );
        r.register(
            "conntrack_removed",
            "Conntrack entries deleted because policy now denies them",
            self.conntrack_removed.clone(),
        );
        r.register(
            "repairs",
            "Syncs that found the node's rules or sets differing from what was programmed",
            self.repairs.clone(),
        );
        r.register(
            "denied_packets",
            "Denied packets the deny rules logged (after their rate limit), by pod namespace and direction",
            self.denied_packets.clone(),
        );
        r.register(
            "denials_dropped",
            "Denied packets or records not recorded: over the per-window key cap, the per-second record cap, or dropped by the kernel for want of socket room",
            self.denials_dropped.clone(),
        );
        r.register(
            "nflog_malformed",
            "NFLOG messages skipped: cut short, unreadable or not from a deny rule",
            self.nflog_malformed.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_under_the_policy_prefix() {
        let m = Metrics::default();
        let label = DenialLabel {
            namespace: "x".into(),
            direction: "ingress".into(),
        };
        m.denied_packets.get_or_create(&label).inc_by(2);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "underlay_policy_policies 0",
            "underlay_policy_cluster_policies 0",
            "underlay_policy_endpoints 0",
            "underlay_policy_rules 0",
            "underlay_policy_ipset_members 0",
            "underlay_policy_apply_seconds_count 0",
            "underlay_policy_change_to_dataplane_seconds_count 0",
            "underlay_policy_restore_calls_total{tool=\"iptables-restore\"} 0",
            "underlay_policy_restore_failures_total{tool=\"ipset\"} 0",
            "underlay_policy_conntrack_removed_total 0",
            "underlay_policy_repairs_total 0",
            "underlay_policy_denials_dropped_total 0",
            "underlay_policy_nflog_malformed_total 0",
            "underlay_policy_denied_packets_total{namespace=\"x\",direction=\"ingress\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}

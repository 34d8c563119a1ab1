//! Prometheus metrics of the route controller.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

type Labels = Vec<(String, String)>;

/// Every metric, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    arm_requests: Family<Labels, Counter>,
    throttled_waits: Counter,
    throttled_seconds: Counter<f64, AtomicU64>,
    batch_routes: Histogram,
    route_effective_seconds: Histogram,
    routes_owned: Gauge,
    route_writes: Family<Labels, Counter>,
    cidr_used: Family<Labels, Gauge>,
    cidr_capacity: Family<Labels, Gauge<f64, AtomicU64>>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("underlay_route_controller");
        let arm_requests = Family::<Labels, Counter>::default();
        registry.register(
            "arm_requests",
            "Azure Resource Manager requests by operation and status code",
            arm_requests.clone(),
        );
        let throttled_waits = Counter::default();
        registry.register(
            "arm_throttled_waits",
            "Waits imposed by 429 Retry-After or RetryableErrorDueToAnotherOperation",
            throttled_waits.clone(),
        );
        let throttled_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "arm_throttled_wait_seconds",
            "Time spent waiting for Retry-After to elapse",
            throttled_seconds.clone(),
        );
        let batch_routes = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "batch_route_changes",
            "Routes added, removed or changed per route table write",
            batch_routes.clone(),
        );
        let route_effective_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        registry.register(
            "route_effective_seconds",
            "Time from a node change being seen to Azure reporting the write with its route succeeded; propagation to the VNet data plane follows and is not included",
            route_effective_seconds.clone(),
        );
        let routes_owned = Gauge::default();
        registry.register(
            "routes_owned",
            "Routes the controller owns in the route table",
            routes_owned.clone(),
        );
        let route_writes = Family::<Labels, Counter>::default();
        registry.register(
            "route_table_writes",
            "Route table writes by outcome",
            route_writes.clone(),
        );
        let cidr_used = Family::<Labels, Gauge>::default();
        registry.register(
            "cidr_pool_used",
            "Node CIDRs allocated, per address family",
            cidr_used.clone(),
        );
        let cidr_capacity = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "cidr_pool_capacity",
            "Node CIDRs allocatable, per address family",
            cidr_capacity.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this instance holds the leader lease",
            leader.clone(),
        );
        Metrics {
            registry,
            arm_requests,
            throttled_waits,
            throttled_seconds,
            batch_routes,
            route_effective_seconds,
            routes_owned,
            route_writes,
            cidr_used,
            cidr_capacity,
            leader,
        }
    }

    pub fn arm_request(&self, operation: &str, code: &str) {
        self.arm_requests
            .get_or_create(&vec![
                ("operation".to_string(), operation.to_string()),
                ("code".to_string(), code.to_string()),
            ])
            .inc();
    }

    pub fn throttled(&self, wait: Duration) {
        self.throttled_waits.inc();
        self.throttled_seconds.inc_by(wait.as_secs_f64());
    }

    pub fn batch(&self, changes: usize) {
        self.batch_routes.observe(changes as f64);
    }

    /// Records the time from a node change being seen to Azure reporting
    /// the write holding its route `Succeeded`. Azure applies a route table
    /// to the VNet's data plane some time after that and offers no way to
    /// observe it, so the propagation delay is not in this metric: it is a
    /// lower bound on when packets follow the route. The lab's ARM service
    /// can model such a delay (`ArmConfig::propagation_delay`).
    pub fn route_effective(&self, after: Duration) {
        self.route_effective_seconds.observe(after.as_secs_f64());
    }

    pub fn routes_owned(&self, n: usize) {
        self.routes_owned.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn write(&self, outcome: &str) {
        self.route_writes
            .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
            .inc();
    }

    pub fn cidr_pool(&self, family: &str, used: u128, capacity: u128) {
        let labels = vec![("family".to_string(), family.to_string())];
        self.cidr_used
            .get_or_create(&labels)
            .set(i64::try_from(used).unwrap_or(i64::MAX));
        // IPv6 pools exceed i64; a float keeps the order of magnitude.
        self.cidr_capacity
            .get_or_create(&labels)
            .set(capacity as f64);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_labels() {
        let m = Metrics::new();
        m.arm_request("put", "429");
        m.throttled(Duration::from_secs(3));
        m.cidr_pool("IPv4", 3, 256);
        let text = m.render();
        assert!(
            text.contains(
                r#"underlay_route_controller_arm_requests_total{operation="put",code="429"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("underlay_route_controller_arm_throttled_wait_seconds_total 3.0"),
            "{text}"
        );
        assert!(
            text.contains(r#"underlay_route_controller_cidr_pool_used{family="IPv4"} 3"#),
            "{text}"
        );
    }
}

//! Prometheus metrics of the agent and the HTTP endpoints that serve them,
//! with liveness (`/healthz`) and readiness (`/readyz`).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum FamilyValue {
    Ipv4,
    Ipv6,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub family: FamilyValue,
}

impl FamilyLabel {
    pub fn of(f: underlay_ipam::Family) -> Self {
        Self {
            family: match f {
                underlay_ipam::Family::V4 => FamilyValue::Ipv4,
                underlay_ipam::Family::V6 => FamilyValue::Ipv6,
            },
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabel {
    pub rpc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcErrorLabel {
    pub rpc: String,
    pub code: String,
}

type HistogramFamily = Family<RpcLabel, Histogram, fn() -> Histogram>;

fn rpc_histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Every metric the agent exports.
pub struct Metrics {
    /// The root registry `/metrics` encodes: the agent's own metrics sit
    /// under `underlay_agent_*`; other parts (the policy engine) add theirs
    /// with their own prefix through [`Metrics::registry_mut`].
    registry: Registry,
    pub allocations: Counter,
    pub releases: Counter,
    pub endpoints: Gauge,
    pub pool_capacity: Family<FamilyLabel, Gauge<f64, AtomicU64>>,
    pub pool_allocated: Family<FamilyLabel, Gauge<f64, AtomicU64>>,
    pub rpc_duration: HistogramFamily,
    pub rpc_errors: Family<RpcErrorLabel, Counter>,
    pub ready: Gauge,
    pub recovered: Gauge,
    pub pod_cidr_changes: Counter,
    pub outside: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("underlay_agent");
        let allocations = Counter::default();
        let releases = Counter::default();
        let endpoints = Gauge::default();
        let pool_capacity = Family::default();
        let pool_allocated = Family::default();
        let rpc_duration: HistogramFamily = Family::new_with_constructor(rpc_histogram);
        let rpc_errors = Family::default();
        let ready = Gauge::default();
        let recovered = Gauge::default();
        let pod_cidr_changes = Counter::default();
        let outside = Gauge::default();
        registry.register(
            "allocations",
            "Pod address allocations (one per attachment)",
            allocations.clone(),
        );
        registry.register("releases", "Pod attachments released", releases.clone());
        registry.register("endpoints", "Pod attachments on record", endpoints.clone());
        registry.register(
            "pool_capacity_addresses",
            "Assignable pod addresses per family",
            pool_capacity.clone(),
        );
        registry.register(
            "pool_allocated_addresses",
            "Pod addresses in use per family",
            pool_allocated.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "Latency of the agent's gRPC calls",
            rpc_duration.clone(),
        );
        registry.register(
            "rpc_errors",
            "gRPC calls that failed, by gRPC status code",
            rpc_errors.clone(),
        );
        registry.register("ready", "1 when the agent can serve Attach", ready.clone());
        registry.register(
            "recovered_endpoints",
            "Attachments adopted from the kernel at start-up because the store did not hold them",
            recovered.clone(),
        );
        registry.register(
            "pod_cidr_changes",
            "Times the node's pod CIDRs changed after they were first known",
            pod_cidr_changes.clone(),
        );
        registry.register(
            "endpoints_outside_pod_cidrs",
            "Attachments whose addresses lie outside the node's current pod CIDRs (kept until deleted)",
            outside.clone(),
        );
        Self {
            registry: root,
            allocations,
            releases,
            endpoints,
            pool_capacity,
            pool_allocated,
            rpc_duration,
            rpc_errors,
            ready,
            recovered,
            pod_cidr_changes,
            outside,
        }
    }

    /// The root registry, for metrics of other parts registered before the
    /// agent starts serving (they keep their own prefix).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The agent's readiness, as the HTTP endpoints see it.
pub trait Readiness: Send + Sync + 'static {
    /// `Ok` when ready; otherwise what is missing.
    fn ready(&self) -> Result<(), String>;
}

/// `/metrics`.
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }),
        )
        .with_state(metrics)
}

/// `/healthz` (the process serves) and `/readyz` (Attach can be served).
pub fn health_router(readiness: Arc<dyn Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(r): State<Arc<dyn Readiness>>| async move {
                match r.ready() {
                    Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                }
            }),
        )
        .with_state(readiness)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_the_agent_prefix() {
        let m = Metrics::new();
        m.allocations.inc();
        m.pool_capacity
            .get_or_create(&FamilyLabel::of(underlay_ipam::Family::V6))
            .set(1.8e19);
        m.rpc_duration
            .get_or_create(&RpcLabel {
                rpc: "Attach".into(),
            })
            .observe(0.002);
        let text = m.encode();
        assert!(
            text.contains("underlay_agent_allocations_total 1"),
            "{text}"
        );
        assert!(
            text.contains("underlay_agent_pool_capacity_addresses{family=\"Ipv6\"}"),
            "{text}"
        );
        assert!(
            text.contains("underlay_agent_rpc_duration_seconds_count{rpc=\"Attach\"} 1"),
            "{text}"
        );
    }
}

//! The metrics (`/metrics`) and health (`/healthz`, `/readyz`) endpoints.

use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

/// Readiness: the node cache has synced and, while this instance leads, the
/// first full pass of CIDR allocation and route reconciliation is done. A
/// standby is ready once its cache has synced, so a rollout can proceed
/// while it waits for the lease.
#[derive(Debug, Default)]
pub struct Readiness {
    caches_synced: AtomicBool,
    leading: AtomicBool,
    leader_synced: AtomicBool,
}

impl Readiness {
    /// The node informer has listed every Node once.
    pub fn set_caches_synced(&self, synced: bool) {
        self.caches_synced.store(synced, Ordering::SeqCst);
    }

    /// This instance gained or lost the lease; a new term starts unsynced.
    pub fn set_leading(&self, leading: bool) {
        self.leader_synced.store(false, Ordering::SeqCst);
        self.leading.store(leading, Ordering::SeqCst);
    }

    /// The leader's first full pass (CIDRs allocated, routes reconciled) is done.
    pub fn set_leader_synced(&self, synced: bool) {
        self.leader_synced.store(synced, Ordering::SeqCst);
    }

    /// Why the instance is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<&'static str> {
        if !self.caches_synced.load(Ordering::SeqCst) {
            Some(
                "not ready: the node cache has not synced; check the controller can reach the Kubernetes API",
            )
        } else if self.leading.load(Ordering::SeqCst) && !self.leader_synced.load(Ordering::SeqCst)
        {
            Some(
                "not ready: the first route table sync has not completed; check the controller can reach Azure",
            )
        } else {
            None
        }
    }

    pub fn get(&self) -> bool {
        self.not_ready().is_none()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// The router serving all three endpoints.
pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, readiness })
}

async fn metrics_handler(State(s): State<AppState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn ready_handler(State(s): State<AppState>) -> (StatusCode, &'static str) {
    match s.readiness.not_ready() {
        None => (StatusCode::OK, "ok"),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Binds `addr` and serves `router` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    // The address actually bound (port 0 picks one), for whoever scrapes.
    tracing::info!(addr = %listener.local_addr()?, "http listening");
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(%error, "http server stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_the_cache_and_for_a_leader_the_first_sync() {
        let r = Readiness::default();
        assert!(!r.get(), "nothing synced");
        r.set_caches_synced(true);
        assert!(r.get(), "a synced standby is ready");
        r.set_leading(true);
        assert!(!r.get(), "a new leader waits for its first sync");
        r.set_leader_synced(true);
        assert!(r.get());
        r.set_leading(false);
        r.set_leading(true);
        assert!(!r.get(), "every term starts unsynced");
    }
}

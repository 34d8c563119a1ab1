//! The ARM service's lifecycle: configuration, the listener and its
//! connections, the state and request log shared with the HTTP side
//! (`rest`), and the handle tests and the lab hold.

use super::faults::Faults;
use super::model::{AppliedRoute, RequestKind, RequestRecord, RouteTableIn, TableId};
use super::rest::{self, DropConnection, SentPath};
use super::state::State;
use axum::Router;
use axum::body::Body;
use axum::response::Response;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, warn};

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct ArmConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The only bearer token accepted.
    pub token: String,
    /// How long an asynchronous operation stays `InProgress`.
    pub operation_delay: Duration,
    /// Added to every request before it is answered (network + front-end latency).
    pub request_latency: Duration,
    /// Time between an operation succeeding and its routes showing in
    /// [`ArmHandle::routes_watch`] (Azure's propagation to the VNet).
    pub propagation_delay: Duration,
    /// Routes allowed per table.
    pub route_limit: usize,
    /// `Retry-After` (seconds) sent with in-progress operation status; Azure
    /// sends one, the lab omits it by default so clients poll at their own pace.
    pub poll_retry_after_secs: Option<u64>,
}

impl Default for ArmConfig {
    fn default() -> ArmConfig {
        ArmConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: "underlay-lab-arm-token".to_string(),
            operation_delay: Duration::from_millis(20),
            request_latency: Duration::ZERO,
            propagation_delay: Duration::ZERO,
            route_limit: 400,
            poll_retry_after_secs: None,
        }
    }
}

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error("cannot listen on {addr}: {source}; pick another address or port 0")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Applied routes per table, as the VNet router should program them.
pub type AppliedTables = Arc<BTreeMap<TableId, Vec<AppliedRoute>>>;

/// What the HTTP side shares with the handle.
pub(super) struct Shared {
    pub config: ArmConfig,
    pub endpoint: String,
    state: Mutex<State>,
    pub faults: Faults,
    log: Mutex<Vec<RequestRecord>>,
    applied: watch::Sender<AppliedTables>,
}

impl Shared {
    pub fn state(&self) -> MutexGuard<'_, State> {
        // State transitions never leave the map half-updated at a panic point
        // that matters to tests, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, rec: RequestRecord) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
    }

    pub fn publish(&self, id: TableId, routes: Vec<AppliedRoute>) {
        self.applied.send_modify(|tables| {
            let mut next = (**tables).clone();
            if routes.is_empty() {
                next.remove(&id);
            } else {
                next.insert(id, routes);
            }
            *tables = Arc::new(next);
        });
    }
}

/// Starts the service.
pub struct ArmServer;

impl ArmServer {
    pub async fn start(config: ArmConfig) -> Result<ArmHandle, ArmError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ArmError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ArmError::Bind {
            addr: config.listen,
            source,
        })?;
        let endpoint = format!("http://{addr}");
        let (applied, _) = watch::channel(AppliedTables::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config.route_limit)),
            config,
            endpoint: endpoint.clone(),
            faults: Faults::default(),
            log: Mutex::new(Vec::new()),
            applied,
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(ArmHandle {
            addr,
            endpoint,
            shared,
            accept,
        })
    }
}

/// A running service. Dropping it stops the service and closes its
/// connections.
pub struct ArmHandle {
    addr: SocketAddr,
    endpoint: String,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ArmHandle {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ArmHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The ARM endpoint, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bearer token the service accepts.
    pub fn token(&self) -> &str {
        &self.shared.config.token
    }

    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Every request answered (or dropped) so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests of one kind so far.
    pub fn count(&self, kind: RequestKind) -> usize {
        self.requests().iter().filter(|r| r.kind == kind).count()
    }

    /// Writes (PUT/DELETE of tables and routes) so far.
    pub fn writes(&self) -> usize {
        self.requests().iter().filter(|r| r.kind.is_write()).count()
    }

    pub fn clear_requests(&self) {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The routes each table has applied (written and succeeded, after the
    /// propagation delay).
    pub fn routes_watch(&self) -> watch::Receiver<AppliedTables> {
        self.shared.applied.subscribe()
    }

    /// Creates or replaces a table directly, already `Succeeded`, e.g. to hold
    /// a user's routes before the controller starts.
    pub fn seed_table(&self, id: &TableId, location: &str, routes: &[AppliedRoute]) {
        let applied = self.shared.state().seed(id, location, routes);
        self.shared.publish(id.clone(), applied);
    }

    /// Creates or replaces a table directly, already `Succeeded`, from a
    /// whole resource as a PUT body would give it: tags, settings such as
    /// `disableBgpRoutePropagation`, properties the service does not model.
    /// `Err` says why the body is not a valid route table.
    pub fn seed_table_resource(&self, id: &TableId, resource: Value) -> Result<(), String> {
        let body: RouteTableIn = serde_json::from_value(resource).map_err(|e| e.to_string())?;
        let applied = self
            .shared
            .state()
            .seed_resource(id, body)
            .map_err(|e| format!("{} {}: {}", e.status, e.code, e.message))?;
        self.shared.publish(id.clone(), applied);
        Ok(())
    }

    /// The table as a GET answers it now (`None`: no such table).
    pub fn resource(&self, id: &TableId) -> Option<Value> {
        self.shared.state().get_table(id).ok()
    }

    /// The routes stored in a table now (including a write still in flight).
    pub fn stored_routes(&self, id: &TableId) -> Option<Vec<AppliedRoute>> {
        self.shared.state().stored_routes(id)
    }

    /// The table's ETag now.
    pub fn etag(&self, id: &TableId) -> Option<String> {
        let body = self.shared.state().get_table(id).ok()?;
        body["etag"].as_str().map(str::to_string)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let router = rest::router(shared);
    // Connections live in this set so that stopping the service (aborting
    // this task) also closes them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(c) => c,
                    Err(error) => {
                        warn!(%error, "arm service accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let service = hyper::service::service_fn({
                    let router = router.clone();
                    move |req| serve(router.clone(), req)
                });
                conns.spawn(async move {
                    if let Err(error) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        debug!(%error, "arm service connection ended");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One request through the router; an answer marked [`DropConnection`]
/// becomes an error, which makes hyper drop the connection without answering.
async fn serve(router: Router, req: Request<Incoming>) -> Result<Response, DropConnection> {
    let mut req = req.map(Body::new);
    if let Some(uri) = rest::canonical(req.uri()) {
        let sent = SentPath(req.uri().path().to_string());
        req.extensions_mut().insert(sent);
        *req.uri_mut() = uri;
    }
    let response = match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if response.extensions().get::<DropConnection>().is_some() {
        return Err(DropConnection);
    }
    Ok(response)
}

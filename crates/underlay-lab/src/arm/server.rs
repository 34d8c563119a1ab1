//! The HTTP side of the ARM service: routing, authentication, faults, the
//! request log and the timers that complete asynchronous operations.

use super::faults::{Fault, Faults};
use super::model::{AppliedRoute, RequestKind, RequestRecord, RouteIn, RouteTableIn, TableId};
use super::state::{Accepted, CloudError, OpStatus, Outcome, State};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
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

struct Shared {
    config: ArmConfig,
    endpoint: String,
    state: Mutex<State>,
    faults: Faults,
    log: Mutex<Vec<RequestRecord>>,
    applied: watch::Sender<AppliedTables>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // State transitions never leave the map half-updated at a panic point
        // that matters to tests, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, rec: RequestRecord) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
    }

    fn publish(&self, id: TableId, routes: Vec<AppliedRoute>) {
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
                let shared = shared.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
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

/// Returned by the service function to make hyper drop the connection
/// without answering.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

enum Target {
    Table(TableId),
    Routes(TableId),
    Route(TableId, String),
    Operation(String),
    OperationResult(String),
}

fn parse_target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is = |i: usize, word: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(word));
    if !is(0, "subscriptions") || segs.len() < 2 {
        return None;
    }
    if is(2, "resourceGroups")
        && is(4, "providers")
        && is(5, "Microsoft.Network")
        && is(6, "routeTables")
        && segs.len() >= 8
    {
        let id = TableId::new(segs[1], segs[3], segs[7]);
        return match segs.len() {
            8 => Some(Target::Table(id)),
            9 if is(8, "routes") => Some(Target::Routes(id)),
            10 if is(8, "routes") => Some(Target::Route(id, segs[9].to_string())),
            _ => None,
        };
    }
    if is(2, "providers") && is(3, "Microsoft.Network") && is(4, "locations") && segs.len() == 8 {
        if is(6, "operations") {
            return Some(Target::Operation(segs[7].to_string()));
        }
        if is(6, "operationResults") {
            return Some(Target::OperationResult(segs[7].to_string()));
        }
    }
    None
}

fn classify(method: &Method, target: Option<&Target>) -> RequestKind {
    match (method, target) {
        (&Method::GET, Some(Target::Table(_))) => RequestKind::GetTable,
        (&Method::PUT, Some(Target::Table(_))) => RequestKind::PutTable,
        (&Method::DELETE, Some(Target::Table(_))) => RequestKind::DeleteTable,
        (&Method::GET, Some(Target::Routes(_))) => RequestKind::ListRoutes,
        (&Method::GET, Some(Target::Route(..))) => RequestKind::GetRoute,
        (&Method::PUT, Some(Target::Route(..))) => RequestKind::PutRoute,
        (&Method::DELETE, Some(Target::Route(..))) => RequestKind::DeleteRoute,
        (&Method::GET, Some(Target::Operation(_))) => RequestKind::PollOperation,
        (&Method::GET, Some(Target::OperationResult(_))) => RequestKind::PollResult,
        _ => RequestKind::Unknown,
    }
}

struct Answer {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
    error_code: Option<String>,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body: Some(body),
            headers: Vec::new(),
            error_code: None,
        }
    }

    fn empty(status: u16) -> Answer {
        Answer {
            status,
            body: None,
            headers: Vec::new(),
            error_code: None,
        }
    }

    fn error(err: &CloudError) -> Answer {
        let mut a = Answer::json(err.status, err.body());
        a.error_code = Some(err.code.clone());
        if let Some(secs) = err.retry_after_secs {
            a.headers.push(("retry-after", secs.to_string()));
        }
        a
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn api_version(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "api-version" && !v.is_empty()).then(|| v.to_string())
    })
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let api = api_version(req.uri().query());
    let headers = req.headers().clone();
    let target = parse_target(&path);
    let kind = classify(&method, target.as_ref());
    let mut record = RequestRecord {
        kind,
        method: method.to_string(),
        path: path.clone(),
        api_version: api.clone(),
        if_match: header(&headers, "if-match"),
        if_none_match: header(&headers, "if-none-match"),
        status: None,
        error_code: None,
        at: std::time::Instant::now(),
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            shared.record(record);
            return Err(DropConnection);
        }
    };
    if !shared.config.request_latency.is_zero() {
        tokio::time::sleep(shared.config.request_latency).await;
    }

    let answer = match authenticate(&shared, &headers) {
        Err(err) => Answer::error(&err),
        Ok(()) if api.is_none() => Answer::error(&CloudError::new(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        Ok(()) => {
            let mut op_fault = None;
            let mut early = None;
            if let Some(fault) = shared.faults.take(kind) {
                match fault {
                    Fault::DropConnection => {
                        shared.record(record);
                        return Err(DropConnection);
                    }
                    Fault::Delay(d) => tokio::time::sleep(d).await,
                    Fault::PreconditionFailed => {
                        early = Some(CloudError::new(
                            412,
                            "PreconditionFailed",
                            "The condition specified using HTTP conditional header(s) is not met.",
                        ));
                    }
                    Fault::Throttle { retry_after_secs } => {
                        let mut e = CloudError::new(
                            429,
                            "SubscriptionRequestsThrottled",
                            "Number of requests for subscription exceeded the limit. Please try again later.",
                        );
                        e.retry_after_secs = Some(retry_after_secs);
                        early = Some(e);
                    }
                    Fault::AnotherOperation { retry_after_secs } => {
                        let mut e =
                            CloudError::new(429, "RetryableError", "A retryable error occurred.");
                        e.details.push((
                            "RetryableErrorDueToAnotherOperation".to_string(),
                            format!("Operation PutRouteTableOperation is updating resource {path}. The call can be retried in {retry_after_secs} seconds."),
                        ));
                        e.retry_after_secs = Some(retry_after_secs);
                        early = Some(e);
                    }
                    Fault::InternalError => {
                        early = Some(CloudError::new(
                            500,
                            "InternalServerError",
                            "An error occurred.",
                        ));
                    }
                    f @ (Fault::SlowOperation(_)
                    | Fault::OperationFailed
                    | Fault::OperationCanceled) => op_fault = Some(f),
                }
            }
            match early {
                Some(err) => Answer::error(&err),
                None => dispatch(
                    &shared,
                    &method,
                    target,
                    &headers,
                    &body,
                    api.as_deref().unwrap_or_default(),
                    op_fault,
                ),
            }
        }
    };
    record.status = Some(answer.status);
    record.error_code = answer.error_code.clone();
    shared.record(record);
    Ok(render(answer))
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), CloudError> {
    let Some(value) = header(headers, "authorization") else {
        return Err(CloudError::new(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        ));
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "));
    if token != Some(shared.config.token.as_str()) {
        return Err(CloudError::new(
            401,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        ));
    }
    Ok(())
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, CloudError> {
    serde_json::from_slice(body).map_err(|e| {
        CloudError::new(
            400,
            "InvalidRequestFormat",
            format!("Cannot parse the request: {e}."),
        )
    })
}

fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    target: Option<Target>,
    headers: &HeaderMap,
    body: &[u8],
    api: &str,
    op_fault: Option<Fault>,
) -> Answer {
    let if_match = header(headers, "if-match");
    let if_none_match = header(headers, "if-none-match");
    let result = match (method, target) {
        (&Method::GET, Some(Target::Table(id))) => shared.state().get_table(&id).map(|b| {
            let mut a = Answer::json(200, b.clone());
            if let Some(etag) = b["etag"].as_str() {
                a.headers.push(("etag", etag.to_string()));
            }
            a
        }),
        (&Method::PUT, Some(Target::Table(id))) => parse_body::<RouteTableIn>(body)
            .and_then(|b| {
                shared
                    .state()
                    .put_table(&id, b, if_match.as_deref(), if_none_match.as_deref())
            })
            .map(|acc| accepted(shared, &id, acc, api, op_fault)),
        (&Method::DELETE, Some(Target::Table(id))) => {
            let result = shared.state().delete_table(&id);
            result.map(|acc| match acc {
                Some(acc) => accepted(shared, &id, acc, api, op_fault),
                None => Answer::empty(204),
            })
        }
        (&Method::GET, Some(Target::Routes(id))) => shared
            .state()
            .list_routes(&id)
            .map(|b| Answer::json(200, b)),
        (&Method::GET, Some(Target::Route(id, name))) => shared
            .state()
            .get_route(&id, &name)
            .map(|b| Answer::json(200, b)),
        (&Method::PUT, Some(Target::Route(id, name))) => parse_body::<RouteIn>(body)
            .and_then(|b| {
                shared.state().put_route(
                    &id,
                    &name,
                    b,
                    if_match.as_deref(),
                    if_none_match.as_deref(),
                )
            })
            .map(|acc| accepted(shared, &id, acc, api, op_fault)),
        (&Method::DELETE, Some(Target::Route(id, name))) => {
            let result = shared.state().delete_route(&id, &name);
            result.map(|acc| match acc {
                Some(acc) => accepted(shared, &id, acc, api, op_fault),
                None => Answer::empty(204),
            })
        }
        (&Method::GET, Some(Target::Operation(op))) => match shared.state().op_status(&op) {
            Some((status, body)) => {
                let mut a = Answer::json(200, body);
                if status == OpStatus::InProgress
                    && let Some(secs) = shared.config.poll_retry_after_secs
                {
                    a.headers.push(("retry-after", secs.to_string()));
                }
                Ok(a)
            }
            None => Err(CloudError::new(
                404,
                "NotFound",
                format!("Operation {op} not found."),
            )),
        },
        (&Method::GET, Some(Target::OperationResult(op))) => match shared.state().op_result(&op) {
            Some((OpStatus::InProgress, _)) => Ok(Answer::empty(202)),
            Some((OpStatus::Succeeded, Some(body))) => Ok(Answer::json(200, body)),
            Some((OpStatus::Succeeded, None)) => Ok(Answer::empty(204)),
            Some((OpStatus::Failed | OpStatus::Canceled, _)) => Err(CloudError::new(
                500,
                "InternalServerError",
                "The operation did not succeed.",
            )),
            None => Err(CloudError::new(
                404,
                "NotFound",
                format!("Operation {op} not found."),
            )),
        },
        (_, Some(_)) => Err(CloudError::new(
            405,
            "MethodNotAllowed",
            format!("The method {method} is not allowed on this resource."),
        )),
        (_, None) => Err(CloudError::new(
            404,
            "InvalidResourceType",
            "The resource type could not be found in the namespace 'Microsoft.Network'.",
        )),
    };
    result.unwrap_or_else(|e| Answer::error(&e))
}

/// Answers an accepted write and schedules its operation's completion.
fn accepted(
    shared: &Arc<Shared>,
    id: &TableId,
    acc: Accepted,
    api: &str,
    op_fault: Option<Fault>,
) -> Answer {
    let base = format!(
        "{}/subscriptions/{}/providers/Microsoft.Network/locations/{}",
        shared.endpoint,
        id.subscription,
        acc.location.to_ascii_lowercase()
    );
    let mut answer = match acc.body {
        Some(body) => {
            let mut a = Answer::json(acc.status, body.clone());
            if let Some(etag) = body["etag"].as_str() {
                a.headers.push(("etag", etag.to_string()));
            }
            a
        }
        None => Answer::empty(acc.status),
    };
    answer.headers.push((
        "azure-asyncoperation",
        format!("{base}/operations/{}?api-version={api}", acc.op_id),
    ));
    if acc.status == 202 {
        answer.headers.push((
            "location",
            format!("{base}/operationResults/{}?api-version={api}", acc.op_id),
        ));
    }
    if let Some(secs) = shared.config.poll_retry_after_secs {
        answer.headers.push(("retry-after", secs.to_string()));
    }
    let (delay, outcome) = match op_fault {
        Some(Fault::SlowOperation(d)) => (d, Outcome::Succeeded),
        Some(Fault::OperationFailed) => (shared.config.operation_delay, Outcome::Failed),
        Some(Fault::OperationCanceled) => (shared.config.operation_delay, Outcome::Canceled),
        _ => (shared.config.operation_delay, Outcome::Succeeded),
    };
    let shared = shared.clone();
    let op_id = acc.op_id;
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let done = shared.state().finish(&op_id, outcome);
        if let Some((id, routes)) = done {
            let propagation = shared.config.propagation_delay;
            if !propagation.is_zero() {
                tokio::time::sleep(propagation).await;
            }
            shared.publish(id, routes);
        }
    });
    answer
}

fn render(answer: Answer) -> Response<Full<Bytes>> {
    let body = answer
        .body
        .map(|b| Bytes::from(b.to_string()))
        .unwrap_or_default();
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(
        "x-ms-request-id",
        HeaderValue::from_str(&format!("{:032x}", fastrand::u128(..)))
            .unwrap_or(HeaderValue::from_static("0")),
    );
    for (name, value) in answer.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_matched_case_insensitively() {
        assert!(matches!(
            parse_target("/subscriptions/s/resourcegroups/rg/providers/microsoft.network/routetables/rt"),
            Some(Target::Table(id)) if id.name == "rt"
        ));
        assert!(matches!(
            parse_target("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/routeTables/rt/routes/r1"),
            Some(Target::Route(_, r)) if r == "r1"
        ));
        assert!(matches!(
            parse_target("/subscriptions/s/providers/Microsoft.Network/locations/westus/operations/abc"),
            Some(Target::Operation(o)) if o == "abc"
        ));
        assert!(
            parse_target(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/x"
            )
            .is_none()
        );
    }

    #[test]
    fn api_version_is_read_from_the_query() {
        assert_eq!(
            api_version(Some("a=b&api-version=2024-03-01")).as_deref(),
            Some("2024-03-01")
        );
        assert_eq!(api_version(Some("api-version=")), None);
        assert_eq!(api_version(None), None);
    }
}

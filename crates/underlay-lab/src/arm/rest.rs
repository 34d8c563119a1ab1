//! The ARM REST surface on axum: one route per resource, and in front of
//! every request (known or not) the same steps Azure's front door takes —
//! the request log, latency, authentication, `api-version`, then injected
//! faults.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, MatchedPath, Path, Query, Request, State};
use axum::handler::Handler;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use serde_json::Value;

use super::faults::Fault;
use super::model::{RequestKind, RequestRecord, TableId};
use super::server::Shared;
use super::state::{Accepted, CloudError, Conditions, OpStatus, Outcome, State as TableState};

const TABLE: &str =
    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/routeTables/{table}";
const ROUTES: &str = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/routeTables/{table}/routes";
const ROUTE: &str = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/routeTables/{table}/routes/{route}";
const OPERATION: &str =
    "/subscriptions/{sub}/providers/Microsoft.Network/locations/{location}/operations/{op}";
const OPERATION_RESULT: &str =
    "/subscriptions/{sub}/providers/Microsoft.Network/locations/{location}/operationResults/{op}";

/// Marks a response the connection must be dropped for instead.
#[derive(Debug, Clone, Copy)]
pub(super) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

/// The path as the client sent it, before its keywords were put in ARM's case.
#[derive(Debug, Clone)]
pub(super) struct SentPath(pub String);

/// The request's `api-version`, for the operation URLs of its answer.
#[derive(Debug, Clone)]
struct ApiVersion(String);

/// An injected fault that changes the request's asynchronous operation.
#[derive(Debug, Clone)]
struct OperationFault(Option<Fault>);

/// What a write's handler needs from the front: its api-version and fault.
#[derive(Debug, Clone)]
struct WriteContext(ApiVersion, OperationFault);

/// The Azure error code of an answer, for the request log.
#[derive(Debug, Clone)]
struct ErrorCode(String);

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(TABLE, reads(get_table).put(put_table).delete(delete_table))
        .route(ROUTES, reads(list_routes))
        .route(ROUTE, reads(get_route).put(put_route).delete(delete_route))
        .route(OPERATION, reads(poll_operation))
        .route(OPERATION_RESULT, reads(poll_result))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), front))
        .with_state(shared)
}

/// GET only: axum would answer HEAD with the GET handler, which this service never did.
fn reads<H, T>(handler: H) -> MethodRouter<Arc<Shared>>
where
    H: Handler<T, Arc<Shared>>,
    T: 'static,
{
    get(handler).head(method_not_allowed)
}

/// `uri` with the keywords of ARM's paths in ARM's case, so routing matches
/// them case-insensitively as ARM does (names keep their case).
pub(super) fn canonical(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    let trimmed = path.trim_end_matches('/');
    let mut segs: Vec<&str> = trimmed.split('/').collect();
    let is = |segs: &[&str], i: usize, word: &str| {
        segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(word))
    };
    let keywords: &[(usize, &str)] = if is(&segs, 3, "resourceGroups") {
        &[
            (1, "subscriptions"),
            (3, "resourceGroups"),
            (5, "providers"),
            (6, "Microsoft.Network"),
            (7, "routeTables"),
            (9, "routes"),
        ]
    } else {
        &[
            (1, "subscriptions"),
            (3, "providers"),
            (4, "Microsoft.Network"),
            (5, "locations"),
            (7, "operations"),
            (7, "operationResults"),
        ]
    };
    for &(i, word) in keywords {
        if is(&segs, i, word) {
            segs[i] = word;
        }
    }
    let canonical = segs.join("/");
    if canonical == path {
        return None;
    }
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    format!("{canonical}{query}").parse().ok()
}

fn classify(method: &Method, route: Option<&str>) -> RequestKind {
    match (method, route) {
        (&Method::GET, Some(TABLE)) => RequestKind::GetTable,
        (&Method::PUT, Some(TABLE)) => RequestKind::PutTable,
        (&Method::DELETE, Some(TABLE)) => RequestKind::DeleteTable,
        (&Method::GET, Some(ROUTES)) => RequestKind::ListRoutes,
        (&Method::GET, Some(ROUTE)) => RequestKind::GetRoute,
        (&Method::PUT, Some(ROUTE)) => RequestKind::PutRoute,
        (&Method::DELETE, Some(ROUTE)) => RequestKind::DeleteRoute,
        (&Method::GET, Some(OPERATION)) => RequestKind::PollOperation,
        (&Method::GET, Some(OPERATION_RESULT)) => RequestKind::PollResult,
        _ => RequestKind::Unknown,
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct ApiVersionQuery {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

fn api_version(uri: &Uri) -> Option<String> {
    let Query(q) = Query::<ApiVersionQuery>::try_from_uri(uri).ok()?;
    q.api_version.filter(|v| !v.is_empty())
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn record_of(req: &Request, kind: RequestKind, path: String, api: Option<String>) -> RequestRecord {
    RequestRecord {
        kind,
        method: req.method().to_string(),
        path,
        api_version: api,
        if_match: header(req.headers(), "if-match"),
        if_none_match: header(req.headers(), "if-none-match"),
        status: None,
        error_code: None,
        at: Instant::now(),
    }
}

/// What every request goes through before its handler, and the log entry after.
async fn front(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let kind = classify(req.method(), route.as_deref());
    let path = match req.extensions().get::<SentPath>() {
        Some(SentPath(p)) => p.clone(),
        None => req.uri().path().to_string(),
    };
    let api = api_version(req.uri());
    let mut record = record_of(&req, kind, path.clone(), api.clone());
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        shared.record(record);
        return dropped();
    };
    if !shared.config.request_latency.is_zero() {
        tokio::time::sleep(shared.config.request_latency).await;
    }
    let admitted = match (authenticate(&shared, &parts.headers), api) {
        (Err(err), _) => Err(err),
        (Ok(()), None) => Err(CloudError::new(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        (Ok(()), Some(api)) => match shared.faults.take(kind) {
            Some(Fault::DropConnection) => {
                shared.record(record);
                return dropped();
            }
            fault => front_fault(fault, &path).await.map(|op| (api, op)),
        },
    };
    let response = match admitted {
        Err(err) => Answer::error(&err).into_response(),
        Ok((api, op_fault)) => {
            let mut req = Request::from_parts(parts, Body::from(body));
            req.extensions_mut()
                .insert(WriteContext(ApiVersion(api), OperationFault(op_fault)));
            next.run(req).await
        }
    };
    record.status = Some(response.status().as_u16());
    record.error_code = response
        .extensions()
        .get::<ErrorCode>()
        .map(|c| c.0.clone());
    shared.record(record);
    response
}

fn dropped() -> Response {
    let mut r = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    r.extensions_mut().insert(DropConnection);
    r
}

/// An injected fault taking effect before the handler: a delay, an error
/// answered instead, or one passed on to the write's operation.
async fn front_fault(fault: Option<Fault>, path: &str) -> Result<Option<Fault>, CloudError> {
    let Some(fault) = fault else {
        return Ok(None);
    };
    match fault {
        Fault::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(None)
        }
        Fault::PreconditionFailed => Err(CloudError::new(
            412,
            "PreconditionFailed",
            "The condition specified using HTTP conditional header(s) is not met.",
        )),
        Fault::Throttle { retry_after_secs } => {
            let mut e = CloudError::new(
                429,
                "SubscriptionRequestsThrottled",
                "Number of requests for subscription exceeded the limit. Please try again later.",
            );
            e.retry_after_secs = Some(retry_after_secs);
            Err(e)
        }
        Fault::AnotherOperation { retry_after_secs } => {
            let mut e = CloudError::new(429, "RetryableError", "A retryable error occurred.");
            e.details.push((
                "RetryableErrorDueToAnotherOperation".to_string(),
                format!("Operation PutRouteTableOperation is updating resource {path}. The call can be retried in {retry_after_secs} seconds."),
            ));
            e.retry_after_secs = Some(retry_after_secs);
            Err(e)
        }
        Fault::InternalError => Err(CloudError::new(
            500,
            "InternalServerError",
            "An error occurred.",
        )),
        f @ (Fault::SlowOperation(_) | Fault::OperationFailed | Fault::OperationCanceled) => {
            Ok(Some(f))
        }
        Fault::DropConnection => Ok(None),
    }
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

type Table = Path<(String, String, String)>;
type Route = Path<(String, String, String, String)>;
type Operation = Path<(String, String, String)>;

fn table_id(Path((sub, rg, table)): Table) -> TableId {
    TableId::new(sub, rg, table)
}

fn route_id(Path((sub, rg, table, route)): Route) -> (TableId, String) {
    (TableId::new(sub, rg, table), route)
}

async fn get_table(State(shared): State<Arc<Shared>>, path: Table) -> Answer {
    answer(shared.state().get_table(&table_id(path)).map(|b| {
        let mut a = Answer::json(200, b.clone());
        a.etag_of(&b);
        a
    }))
}

async fn put_table(
    State(shared): State<Arc<Shared>>,
    Extension(op): Extension<WriteContext>,
    path: Table,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let id = table_id(path);
    put(&shared, op, &id, &headers, &body, |s, table, c| {
        s.put_table(&id, table, c)
    })
}

async fn delete_table(
    State(shared): State<Arc<Shared>>,
    Extension(op): Extension<WriteContext>,
    path: Table,
) -> Answer {
    let id = table_id(path);
    let result = shared.state().delete_table(&id);
    deleted(&shared, &id, result, op)
}

async fn list_routes(State(shared): State<Arc<Shared>>, path: Table) -> Answer {
    let result = shared.state().list_routes(&table_id(path));
    answer(result.map(|b| Answer::json(200, b)))
}

async fn get_route(State(shared): State<Arc<Shared>>, path: Route) -> Answer {
    let (id, name) = route_id(path);
    let result = shared.state().get_route(&id, &name);
    answer(result.map(|b| Answer::json(200, b)))
}

async fn put_route(
    State(shared): State<Arc<Shared>>,
    Extension(op): Extension<WriteContext>,
    path: Route,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let (id, name) = route_id(path);
    put(&shared, op, &id, &headers, &body, |s, route, c| {
        s.put_route(&id, &name, route, c)
    })
}

/// A PUT's answer: `body` parsed as `B` and written by `write` under the
/// request's conditions, accepted as an operation on table `id`.
fn put<B: serde::de::DeserializeOwned>(
    shared: &Arc<Shared>,
    op: WriteContext,
    id: &TableId,
    headers: &HeaderMap,
    body: &[u8],
    write: impl FnOnce(&mut TableState, B, Conditions<'_>) -> Result<Accepted, CloudError>,
) -> Answer {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let conditions = Conditions {
        if_match: value("if-match"),
        if_none_match: value("if-none-match"),
    };
    let result = parse_body::<B>(body).and_then(|b| write(&mut shared.state(), b, conditions));
    answer(result.map(|acc| accepted(shared, id, acc, op)))
}

async fn delete_route(
    State(shared): State<Arc<Shared>>,
    Extension(op): Extension<WriteContext>,
    path: Route,
) -> Answer {
    let (id, name) = route_id(path);
    let result = shared.state().delete_route(&id, &name);
    deleted(&shared, &id, result, op)
}

/// A delete's answer: accepted as an operation, or `204` when there was nothing to delete.
fn deleted(
    shared: &Arc<Shared>,
    id: &TableId,
    result: Result<Option<Accepted>, CloudError>,
    op: WriteContext,
) -> Answer {
    answer(result.map(|acc| match acc {
        Some(acc) => accepted(shared, id, acc, op),
        None => Answer::empty(204),
    }))
}

fn operation_not_found(op: &str) -> CloudError {
    CloudError::new(404, "NotFound", format!("Operation {op} not found."))
}

async fn poll_operation(State(shared): State<Arc<Shared>>, Path((_, _, op)): Operation) -> Answer {
    let Some((status, body)) = shared.state().op_status(&op) else {
        return Answer::error(&operation_not_found(&op));
    };
    let mut a = Answer::json(200, body);
    if status == OpStatus::InProgress
        && let Some(secs) = shared.config.poll_retry_after_secs
    {
        a.headers.push(("retry-after", secs.to_string()));
    }
    a
}

async fn poll_result(State(shared): State<Arc<Shared>>, Path((_, _, op)): Operation) -> Answer {
    let result = shared.state().op_result(&op);
    match result {
        Some((OpStatus::InProgress, _)) => Answer::empty(202),
        Some((OpStatus::Succeeded, Some(body))) => Answer::json(200, body),
        Some((OpStatus::Succeeded, None)) => Answer::empty(204),
        Some((OpStatus::Failed | OpStatus::Canceled, _)) => Answer::error(&CloudError::new(
            500,
            "InternalServerError",
            "The operation did not succeed.",
        )),
        None => Answer::error(&operation_not_found(&op)),
    }
}

async fn method_not_allowed(method: Method) -> Answer {
    Answer::error(&CloudError::new(
        405,
        "MethodNotAllowed",
        format!("The method {method} is not allowed on this resource."),
    ))
}

async fn not_found() -> Answer {
    Answer::error(&CloudError::new(
        404,
        "InvalidResourceType",
        "The resource type could not be found in the namespace 'Microsoft.Network'.",
    ))
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

/// Answers an accepted write and schedules its operation's completion.
fn accepted(shared: &Arc<Shared>, id: &TableId, acc: Accepted, op: WriteContext) -> Answer {
    let WriteContext(ApiVersion(api), OperationFault(op_fault)) = op;
    let base = format!(
        "{}/subscriptions/{}/providers/Microsoft.Network/locations/{}",
        shared.endpoint,
        id.subscription,
        acc.location.to_ascii_lowercase()
    );
    let mut answer = match acc.body {
        Some(body) => {
            let mut a = Answer::json(acc.status, body.clone());
            a.etag_of(&body);
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
    complete_later(shared.clone(), acc.op_id, delay, outcome);
    answer
}

/// Completes the operation after `delay`, then publishes its routes after the
/// propagation delay.
fn complete_later(
    shared: Arc<Shared>,
    op_id: String,
    delay: std::time::Duration,
    outcome: Outcome,
) {
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
}

struct Answer {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
    error_code: Option<String>,
}

fn answer(result: Result<Answer, CloudError>) -> Answer {
    result.unwrap_or_else(|e| Answer::error(&e))
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

    fn etag_of(&mut self, body: &Value) {
        if let Some(etag) = body["etag"].as_str() {
            self.headers.push(("etag", etag.to_string()));
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let body = self
            .body
            .map(|b| Bytes::from(b.to_string()))
            .unwrap_or_default();
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
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
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        if let Some(code) = self.error_code {
            resp.extensions_mut().insert(ErrorCode(code));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(path: &str) -> String {
        let uri: Uri = path.parse().expect("a uri");
        canonical(&uri).map_or_else(|| path.to_string(), |u| u.to_string())
    }

    #[test]
    fn paths_are_matched_case_insensitively() {
        assert_eq!(
            canon(
                "/subscriptions/s/resourcegroups/rg/providers/microsoft.network/routetables/rt?api-version=1"
            ),
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/routeTables/rt?api-version=1"
        );
        assert_eq!(
            canon(
                "/SUBSCRIPTIONS/s/resourceGroups/RG/providers/Microsoft.Network/routeTables/Routes/ROUTES/R1"
            ),
            "/subscriptions/s/resourceGroups/RG/providers/Microsoft.Network/routeTables/Routes/routes/R1"
        );
        assert_eq!(
            canon(
                "/subscriptions/s/providers/Microsoft.Network/locations/westus/OPERATIONRESULTS/abc"
            ),
            "/subscriptions/s/providers/Microsoft.Network/locations/westus/operationResults/abc"
        );
        assert_eq!(
            canon(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/x"
            ),
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/x"
        );
    }

    #[test]
    fn requests_are_classified_by_method_and_route() {
        assert_eq!(classify(&Method::PUT, Some(TABLE)), RequestKind::PutTable);
        assert_eq!(
            classify(&Method::DELETE, Some(ROUTE)),
            RequestKind::DeleteRoute
        );
        assert_eq!(
            classify(&Method::GET, Some(OPERATION_RESULT)),
            RequestKind::PollResult
        );
        assert_eq!(classify(&Method::POST, Some(TABLE)), RequestKind::Unknown);
        assert_eq!(classify(&Method::GET, None), RequestKind::Unknown);
    }

    #[test]
    fn api_version_is_read_from_the_query() {
        let v = |q: &str| api_version(&q.parse().expect("a uri"));
        assert_eq!(
            v("/x?a=b&api-version=2024-03-01").as_deref(),
            Some("2024-03-01")
        );
        assert_eq!(v("/x?api-version="), None);
        assert_eq!(v("/x"), None);
    }
}

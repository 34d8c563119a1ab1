//! [`RouteTable`] over Azure Resource Manager with `azure_mgmt_network`.
//!
//! The generated client covers GET and PUT of the route table, but four
//! things the controller needs are out of its reach, so they are added around
//! it rather than by forking it:
//!
//! - The whole resource: its typed model drops every property it does not
//!   know, and ARM replaces the resource with the PUT body, so a write built
//!   from the model would wipe them (and tags or `disableBgpRoutePropagation`
//!   unless copied one by one). GET keeps the raw body next to the typed
//!   view, and PUT sends that body with only location and routes replaced,
//!   through the same pipeline ([`ArmRouteTable::send`]) instead of
//!   `create_or_update`.
//! - `If-Match` / `If-None-Match`: the generated `create_or_update` sends
//!   neither. A pipeline policy ([`CallPolicy`]) adds them from a task-local
//!   set for the duration of one call.
//! - Response headers of failed calls (`Retry-After` on 429, the
//!   `RetryableErrorDueToAnotherOperation` detail code): the generated client
//!   turns every non-2xx answer into an `azure_core::Error` that keeps only
//!   status and top-level code. The same policy records status, headers and
//!   body of the raw answer before that happens.
//! - Polling: the generated long-running-operation future polls on its own
//!   schedule, ignores 429 on the status URL and hides why an operation
//!   failed. The controller sends `create_or_update(..).send()` (one PUT, no
//!   polling) and polls the `Azure-AsyncOperation` URL itself through the same
//!   `azure_core` pipeline, one request per [`RouteTable::poll`] call.
//!
//! The pipeline's own retry policy is disabled: retries, backoff and the
//! throttling gate belong to the reconciler, which sees every attempt.

use super::{
    ArmError, OperationState, PendingWrite, Precondition, RouteTable, TableRoute, TableState,
    TableWrite,
};
use crate::metrics::Metrics;
use async_trait::async_trait;
use azure_core::auth::TokenCredential;
use azure_core::{
    ClientOptions, Context, Method, Pipeline, Policy, PolicyResult, Request, Response,
    RetryOptions, Url,
};
use azure_mgmt_network::package_2024_03::{Client, models};
use bytes::Bytes;
use std::cell::RefCell;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

/// The routeTables API version, the one `azure_mgmt_network`'s
/// `package-2024-03` speaks.
const API_VERSION: &str = "2024-03-01";

/// The route table's coordinates and how to reach ARM.
#[derive(Debug, Clone)]
pub struct ArmTableConfig {
    pub endpoint: String,
    pub subscription_id: String,
    pub resource_group: String,
    pub table_name: String,
    /// Bound on each HTTP request.
    pub request_timeout: Duration,
}

#[derive(Debug, Default, Clone)]
struct CallInfo {
    if_match: Option<String>,
    if_none_match: Option<String>,
    status: Option<u16>,
    headers: Vec<(String, String)>,
    error_body: Option<Bytes>,
}

tokio::task_local! {
    static CALL: RefCell<CallInfo>;
}

/// Adds the call's conditional headers and records the raw answer. It sits
/// after the (disabled) retry policy, right before the transport, so it sees
/// every answer before the generated code turns it into an error.
#[derive(Debug)]
struct CallPolicy;

#[async_trait]
impl Policy for CallPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let conditions = CALL
            .try_with(|c| {
                let c = c.borrow();
                (c.if_match.clone(), c.if_none_match.clone())
            })
            .unwrap_or_default();
        if let Some(v) = conditions.0 {
            request.insert_header("if-match", v);
        }
        if let Some(v) = conditions.1 {
            request.insert_header("if-none-match", v);
        }
        let response = next[0].send(ctx, request, &next[1..]).await?;
        let status = u16::from(response.status());
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_str().to_string()))
            .collect();
        let (response, error_body) = if status >= 400 {
            // Keep a copy of the error body and hand on an identical response.
            let (code, hdrs, body) = response.deconstruct();
            let bytes = body.collect().await?;
            let copy = bytes.clone();
            let stream = futures::stream::once(async move { Ok::<_, azure_core::Error>(copy) });
            (Response::new(code, hdrs, Box::pin(stream)), Some(bytes))
        } else {
            (response, None)
        };
        let _ = CALL.try_with(|c| {
            let mut c = c.borrow_mut();
            c.status = Some(status);
            c.headers = headers;
            c.error_body = error_body;
        });
        Ok(response)
    }
}

/// The route table in Azure.
pub struct ArmRouteTable {
    client: Client,
    pipeline: Pipeline,
    credential: Arc<dyn TokenCredential>,
    scopes: Vec<String>,
    config: ArmTableConfig,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for ArmRouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmRouteTable")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `Retry-After` in seconds or as an HTTP date, capped (see
/// [`super::MAX_RETRY_AFTER`]).
fn retry_after(headers: &[(String, String)]) -> Option<Duration> {
    super::parse_retry_after(header(headers, "retry-after")?)
}

#[derive(serde::Deserialize, Default)]
struct CloudErrorBody {
    error: Option<CloudErrorDetail>,
}

#[derive(serde::Deserialize, Default)]
struct CloudErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<CloudErrorDetail>,
}

/// Classifies an error answer the way Azure documents its meaning.
pub(crate) fn classify(status: u16, headers: &[(String, String)], body: &[u8]) -> ArmError {
    let parsed: CloudErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let detail = parsed.error.unwrap_or_default();
    let codes: Vec<&str> = std::iter::once(detail.code.as_str())
        .chain(detail.details.iter().map(|d| d.code.as_str()))
        .collect();
    let wait = retry_after(headers);
    if codes.contains(&"RetryableErrorDueToAnotherOperation") {
        return ArmError::AnotherOperation {
            retry_after: wait.unwrap_or(Duration::from_secs(5)),
        };
    }
    match status {
        412 => ArmError::PreconditionFailed,
        429 => ArmError::Throttled {
            code: detail.code,
            retry_after: wait.unwrap_or(Duration::from_secs(10)),
        },
        401 | 403 => ArmError::Unauthorized {
            status,
            code: detail.code,
        },
        500.. => ArmError::Server {
            status,
            code: detail.code,
        },
        _ => ArmError::Rejected {
            status,
            code: detail.code,
            message: detail.message,
        },
    }
}

fn next_hop_type(s: &str) -> models::RouteNextHopType {
    models::RouteNextHopType::from_str(s)
        .unwrap_or_else(|_| models::RouteNextHopType::UnknownValue(s.to_string()))
}

fn next_hop_type_str(t: &models::RouteNextHopType) -> String {
    match serde_json::to_value(t) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{t:?}"),
    }
}

fn provisioning_str(p: &models::ProvisioningState) -> String {
    match serde_json::to_value(p) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{p:?}"),
    }
}

impl ArmRouteTable {
    pub fn new(
        config: ArmTableConfig,
        credential: Arc<dyn TokenCredential>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<ArmRouteTable, ArmError> {
        let endpoint: Url = config.endpoint.parse().map_err(|e| {
            ArmError::Transport(format!("invalid --arm-endpoint {}: {e}", config.endpoint))
        })?;
        let scope = format!("{}/.default", config.endpoint.trim_end_matches('/'));
        let mut options = ClientOptions::default().retry(RetryOptions::none());
        options.per_retry_policies_mut().push(Arc::new(CallPolicy));
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            options.clone(),
            Vec::new(),
            Vec::new(),
        );
        let client = Client::new(endpoint, credential.clone(), vec![scope.clone()], options);
        Ok(ArmRouteTable {
            client,
            pipeline,
            credential,
            scopes: vec![scope],
            config,
            metrics,
        })
    }

    /// The table's resource URL, as the generated client builds it.
    fn table_url(&self) -> Result<Url, ArmError> {
        let c = &self.config;
        let mut url: Url = c.endpoint.parse().map_err(|e| {
            ArmError::Transport(format!("invalid --arm-endpoint {}: {e}", c.endpoint))
        })?;
        url.set_path(&format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/routeTables/{}",
            c.subscription_id, c.resource_group, c.table_name
        ));
        url.query_pairs_mut()
            .append_pair(azure_core::query_param::API_VERSION, API_VERSION);
        Ok(url)
    }

    /// One authenticated request through the pipeline; the body of the answer.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
    ) -> azure_core::Result<Bytes> {
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        let token = self.credential.get_token(&scopes).await?;
        let mut req = Request::new(url, method);
        req.insert_header(
            azure_core::headers::AUTHORIZATION,
            format!("Bearer {}", token.token.secret()),
        );
        if let Some(body) = body {
            req.insert_header(azure_core::headers::CONTENT_TYPE, "application/json");
            req.set_body(body);
        }
        let rsp = self.pipeline.send(&Context::new(), &mut req).await?;
        let (_, _, body) = rsp.deconstruct();
        body.collect().await
    }

    /// Runs one ARM call with the given conditions, bounded by the request
    /// timeout, and turns failures into [`ArmError`]s using the raw answer.
    async fn call<T, F>(
        &self,
        operation: &'static str,
        conditions: (Option<String>, Option<String>),
        fut: F,
    ) -> Result<(T, CallInfo), ArmError>
    where
        F: std::future::Future<Output = azure_core::Result<T>>,
    {
        let info = RefCell::new(CallInfo {
            if_match: conditions.0,
            if_none_match: conditions.1,
            ..CallInfo::default()
        });
        let timeout = self.config.request_timeout;
        let (result, info) = CALL
            .scope(info, async move {
                let r = tokio::time::timeout(timeout, fut).await;
                let info = CALL.with(|c| c.borrow().clone());
                (r, info)
            })
            .await;
        let outcome = match result {
            Err(_) => Err(ArmError::Timeout(timeout)),
            Ok(Ok(v)) => Ok((v, info)),
            Ok(Err(e)) => Err(match info.status {
                Some(status) if status >= 400 => classify(
                    status,
                    &info.headers,
                    info.error_body.as_deref().unwrap_or_default(),
                ),
                _ => match e.kind() {
                    azure_core::error::ErrorKind::Credential => ArmError::Credential(e.to_string()),
                    azure_core::error::ErrorKind::DataConversion => ArmError::Decode(e.to_string()),
                    _ => ArmError::Transport(e.to_string()),
                },
            }),
        };
        if let Some(m) = &self.metrics {
            let code = match &outcome {
                Ok((_, info)) => info
                    .status
                    .map_or_else(|| "ok".to_string(), |s| s.to_string()),
                Err(e) => e.code_label(),
            };
            m.arm_request(operation, &code);
        }
        outcome
    }
}

/// The route as the controller models it.
fn table_route(route: models::Route) -> TableRoute {
    let p = route.properties;
    TableRoute {
        name: route.name.unwrap_or_default(),
        address_prefix: p
            .as_ref()
            .and_then(|p| p.address_prefix.clone())
            .unwrap_or_default(),
        next_hop_type: p
            .as_ref()
            .map(|p| next_hop_type_str(&p.next_hop_type))
            .unwrap_or_default(),
        next_hop_ip: p.and_then(|p| p.next_hop_ip_address),
    }
}

/// The table as read: the typed view the controller plans with, and the
/// resource itself, kept whole for the next write.
fn to_state(resource: serde_json::Value) -> Result<TableState, ArmError> {
    let table: models::RouteTable = serde_json::from_value(resource.clone())
        .map_err(|e| ArmError::Decode(format!("route table: {e}")))?;
    let props = table.properties.unwrap_or_default();
    Ok(TableState {
        etag: table.etag,
        location: table.resource.location,
        provisioning_state: props.provisioning_state.as_ref().map(provisioning_str),
        routes: props.routes.into_iter().map(table_route).collect(),
        resource,
    })
}

fn route_json(r: &TableRoute) -> Result<serde_json::Value, ArmError> {
    let mut props = models::RoutePropertiesFormat::new(next_hop_type(&r.next_hop_type));
    props.address_prefix = Some(r.address_prefix.clone());
    props.next_hop_ip_address = r.next_hop_ip.clone();
    let mut route = models::Route::new();
    route.name = Some(r.name.clone());
    route.properties = Some(props);
    serde_json::to_value(route).map_err(|e| ArmError::Decode(format!("route {}: {e}", r.name)))
}

/// The PUT body: the resource as read, with the write's location and routes.
/// ARM replaces the resource with the body, so everything else — tags,
/// `disableBgpRoutePropagation`, properties this client does not model — is
/// carried as read; a route written unchanged keeps its JSON as read too.
fn to_body(write: &TableWrite) -> Result<serde_json::Value, ArmError> {
    let mut table = match &write.base {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let mut props = match table.remove("properties") {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let read: Vec<serde_json::Value> = match props.remove("routes") {
        Some(serde_json::Value::Array(routes)) => routes,
        _ => Vec::new(),
    };
    let unchanged = |r: &TableRoute| {
        read.iter().find(|v| {
            serde_json::from_value::<models::Route>((*v).clone())
                .is_ok_and(|m| table_route(m) == *r)
        })
    };
    let routes = write
        .routes
        .iter()
        .map(|r| unchanged(r).cloned().map_or_else(|| route_json(r), Ok))
        .collect::<Result<Vec<_>, _>>()?;
    props.insert("routes".into(), serde_json::Value::Array(routes));
    table.insert("properties".into(), serde_json::Value::Object(props));
    table.insert("location".into(), write.location.clone().into());
    Ok(serde_json::Value::Object(table))
}

#[derive(serde::Deserialize)]
struct OperationBody {
    status: String,
    #[serde(default)]
    error: Option<CloudErrorDetail>,
}

#[async_trait]
impl RouteTable for ArmRouteTable {
    async fn get(&self) -> Result<Option<TableState>, ArmError> {
        let c = &self.config;
        // The raw body, not the generated model: the model drops every
        // property it does not know, and the next write must carry them.
        let fut = async {
            let rsp = self
                .client
                .route_tables_client()
                .get(&c.resource_group, &c.table_name, &c.subscription_id)
                .send()
                .await?;
            rsp.into_raw_response().into_body().collect().await
        };
        match self.call("get", (None, None), fut).await {
            Ok((bytes, _)) => {
                let resource = serde_json::from_slice(&bytes)
                    .map_err(|e| ArmError::Decode(format!("route table: {e}")))?;
                to_state(resource).map(Some)
            }
            Err(ArmError::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put(&self, write: &TableWrite) -> Result<PendingWrite, ArmError> {
        let conditions = match &write.precondition {
            Precondition::IfMatch(etag) => (Some(etag.clone()), None),
            Precondition::IfNoneMatch => (None, Some("*".to_string())),
        };
        // Sent through the pipeline rather than the generated
        // `create_or_update`, whose typed body would drop what it does not model.
        let body = serde_json::to_vec(&to_body(write)?)
            .map_err(|e| ArmError::Decode(format!("route table: {e}")))?;
        let url = self.table_url()?;
        let fut = self.send(Method::Put, url, Some(Bytes::from(body)));
        let (_, info) = self.call("put", conditions, fut).await?;
        let pending = PendingWrite {
            operation_url: header(&info.headers, "azure-asyncoperation").map(str::to_string),
            retry_after: retry_after(&info.headers),
        };
        debug!(operation = ?pending.operation_url, "route table write accepted");
        Ok(pending)
    }

    async fn poll(&self, pending: &PendingWrite) -> Result<OperationState, ArmError> {
        let Some(url) = &pending.operation_url else {
            return Ok(OperationState::Succeeded);
        };
        let url: Url = url.parse().map_err(|e| {
            ArmError::Decode(format!("invalid Azure-AsyncOperation url {url}: {e}"))
        })?;
        let fut = self.send(Method::Get, url, None);
        let (bytes, info) = self.call("poll", (None, None), fut).await?;
        let body: OperationBody = serde_json::from_slice(&bytes)
            .map_err(|e| ArmError::Decode(format!("operation status: {e}")))?;
        Ok(match body.status.as_str() {
            "Succeeded" => OperationState::Succeeded,
            "Failed" => {
                let e = body.error.unwrap_or_default();
                OperationState::Failed {
                    code: e.code,
                    message: e.message,
                }
            }
            "Canceled" => OperationState::Canceled,
            _ => OperationState::InProgress {
                retry_after: retry_after(&info.headers),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn errors_are_classified_as_azure_documents_them() {
        let another = br#"{"error":{"code":"RetryableError","message":"A retryable error occurred.","details":[{"code":"RetryableErrorDueToAnotherOperation","message":"..."}]}}"#;
        for (status, headers, body, expect) in [
            (
                412,
                h(&[]),
                &br#"{"error":{"code":"PreconditionFailed"}}"#[..],
                ArmError::PreconditionFailed,
            ),
            (
                429,
                h(&[("Retry-After", "7")]),
                &br#"{"error":{"code":"SubscriptionRequestsThrottled"}}"#[..],
                ArmError::Throttled {
                    code: "SubscriptionRequestsThrottled".into(),
                    retry_after: Duration::from_secs(7),
                },
            ),
            (
                429,
                h(&[("retry-after", "3")]),
                &another[..],
                ArmError::AnotherOperation {
                    retry_after: Duration::from_secs(3),
                },
            ),
            (
                500,
                h(&[]),
                &b"not json"[..],
                ArmError::Server {
                    status: 500,
                    code: String::new(),
                },
            ),
            (
                401,
                h(&[]),
                &br#"{"error":{"code":"InvalidAuthenticationToken"}}"#[..],
                ArmError::Unauthorized {
                    status: 401,
                    code: "InvalidAuthenticationToken".into(),
                },
            ),
            (
                400,
                h(&[]),
                &br#"{"error":{"code":"InvalidRequestFormat","message":"bad"}}"#[..],
                ArmError::Rejected {
                    status: 400,
                    code: "InvalidRequestFormat".into(),
                    message: "bad".into(),
                },
            ),
        ] {
            assert_eq!(classify(status, &headers, body), expect);
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(
            retry_after(&h(&[("Retry-After", "12")])),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            retry_after(&h(&[("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")])),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&h(&[])), None);
    }

    #[test]
    fn a_write_carries_the_resource_as_read_with_only_its_routes_replaced() {
        let firewall = serde_json::json!({"name": "to-firewall", "etag": "W/\"1\"", "properties": {
            "addressPrefix": "0.0.0.0/0", "nextHopType": "VirtualAppliance",
            "nextHopIpAddress": "10.0.0.4", "hasBgpOverride": false, "futureRouteField": 7}});
        let base = serde_json::json!({"location": "westeurope", "etag": "W/\"9\"",
            "tags": {"owner": "network-team"}, "properties": {
                "disableBgpRoutePropagation": true, "futureSetting": {"mode": "strict"},
                "routes": [firewall.clone(), {"name": "old", "properties": {
                    "addressPrefix": "10.244.9.0/24", "nextHopType": "VirtualAppliance",
                    "nextHopIpAddress": "10.0.0.9"}}]}});
        let new = TableRoute {
            name: "new".into(),
            address_prefix: "10.244.1.0/24".into(),
            next_hop_type: "VirtualAppliance".into(),
            next_hop_ip: Some("10.0.0.11".into()),
        };
        let body = to_body(&TableWrite {
            base: base.clone(),
            location: "westeurope".into(),
            routes: vec![
                table_route(serde_json::from_value(firewall.clone()).unwrap()),
                new.clone(),
            ],
            precondition: Precondition::IfMatch("W/\"9\"".into()),
        })
        .unwrap();
        let mut expect = base;
        expect["properties"]["routes"] = serde_json::json!([firewall, route_json(&new).unwrap()]);
        assert_eq!(body, expect);
    }

    #[test]
    fn retry_after_is_capped_however_far_azure_asks() {
        for v in [
            "18446744073709551615",
            "9999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(
                retry_after(&h(&[("Retry-After", v)])),
                Some(crate::azure::MAX_RETRY_AFTER),
                "{v}"
            );
        }
    }

    #[test]
    fn next_hop_types_round_trip() {
        for s in [
            "VirtualAppliance",
            "Internet",
            "VnetLocal",
            "None",
            "Something",
        ] {
            assert_eq!(next_hop_type_str(&next_hop_type(s)), s);
        }
    }
}

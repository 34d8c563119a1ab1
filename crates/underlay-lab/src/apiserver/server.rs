//! HTTP: authentication, fault injection, the non-resource paths, and the
//! dispatch of resource requests to one module per verb. A write passes the
//! admission steps in order: `admission` (type, identity, defaulting and
//! field validation, namespace and priority admission), `system_meta`
//! (generateName, uid, timestamps, resourceVersion, generation), then
//! `gc` when it ends an object's life (finalizers, cascades, owners).

mod admission;
mod bind;
mod create;
mod delete;
mod gc;
mod patch;
mod read;
mod route;
mod status;
mod system_meta;
mod update;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use tracing::debug;

use super::convert;
use super::error::{ApiError, ApiResult};
use super::faults::Faults;
use super::resources::{Builtin, Registry, ResourceType};
use super::store::{Inner, ObjKey, Store};
use super::{discovery, openapi, openapi_v2, openapi_v2_pb, watch};
pub(crate) use read::Pages;
use route::{ResourceReq, Target};

/// The largest request body accepted (kube-apiserver's limit).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Everything a request handler needs.
#[derive(Debug)]
pub(crate) struct ServerState {
    pub token: String,
    pub registry: Registry,
    pub store: Store,
    pub faults: Faults,
    pub bookmark_interval: Duration,
    pub watch_queue: usize,
    pub pages: Mutex<Pages>,
}

pub(crate) fn router(state: Arc<ServerState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// Query parameters, in order.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1"))
    }
}

async fn handle(State(st): State<Arc<ServerState>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match serve(&st, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    debug!(%method, %path, status = response.status().as_u16(), "request");
    response
}

fn authenticate(st: &ServerState, headers: &HeaderMap) -> ApiResult<()> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if t == st.token => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

async fn serve(st: &Arc<ServerState>, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    authenticate(st, &parts.headers)?;
    let path = parts.uri.path().trim_end_matches('/').to_string();
    st.faults.before(&parts.method, &path).await?;
    let params = Params(
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .map_err(|e| ApiError::bad_request(format!("malformed query: {e}")))?,
    );
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let accept = header_str(&parts.headers, header::ACCEPT).to_string();
    if let Some(answer) = non_resource(&st.registry, &segs, &accept) {
        return answer;
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::not_found_path()),
    };
    if rest.is_empty() {
        return discovery::resource_list(&st.registry, group, version).map(ok_json);
    }
    let rreq = route::route(&st.registry, group, version, rest)?;
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            "the request body is too large; send at most 3 MiB",
        )
    })?;
    let ctx = Ctx::new(st.clone(), &parts, params, accept);
    dispatch(&ctx, &parts.method, rreq, body).await
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn ok_json(v: Value) -> Response {
    json_response(StatusCode::OK, &v)
}

/// The answer for a path outside `/api/VERSION` and `/apis/GROUP/VERSION`.
fn non_resource(registry: &Registry, segs: &[&str], accept: &str) -> Option<ApiResult<Response>> {
    let answer = match segs {
        [] => Ok(ok_json(discovery::root_paths(registry))),
        ["version"] => Ok(ok_json(discovery::version())),
        ["healthz"] | ["livez"] | ["readyz"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => Ok(ok_json(discovery::core_versions())),
        ["apis"] => Ok(ok_json(discovery::group_list(registry))),
        ["apis", group] => discovery::group(registry, group).map(ok_json),
        ["openapi", "v2"] => openapi_v2_response(registry, accept),
        ["openapi", "v3"] => Ok(ok_json(openapi::root(registry))),
        ["openapi", "v3", rest @ ..] => openapi::document(registry, &rest.join("/")).map(ok_json),
        _ => return None,
    };
    Some(answer)
}

/// What kubectl asks for, and (being no valid media type, for the `@`) the
/// name kube-apiserver answers with.
const OPENAPI_V2_PROTOBUF: [&str; 2] = [
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
];

/// `/openapi/v2` as protobuf (what kubectl asks for) or JSON.
fn openapi_v2_response(registry: &Registry, accept: &str) -> ApiResult<Response> {
    let wants = |t: &str| {
        accept
            .split(',')
            .any(|a| a.split(';').next().map(str::trim) == Some(t))
    };
    let doc = openapi_v2::document(registry)?;
    if OPENAPI_V2_PROTOBUF.into_iter().any(wants) {
        let body = openapi_v2_pb::encode(&doc);
        return Ok(([(header::CONTENT_TYPE, OPENAPI_V2_PROTOBUF[1])], body).into_response());
    }
    if accept.is_empty()
        || ["application/json", "application/*", "*/*"]
            .into_iter()
            .any(wants)
    {
        return Ok(json_response(StatusCode::OK, &doc));
    }
    Err(ApiError::new(
        406,
        "NotAcceptable",
        format!(
            "only the following media types are accepted: application/json, {}",
            OPENAPI_V2_PROTOBUF[0]
        ),
    ))
}

/// kube-apiserver names a manager after the client's user agent when none is given.
fn default_manager(user_agent: &str) -> String {
    let name = user_agent.split('/').next().unwrap_or("").trim();
    if name.is_empty() {
        "unknown".into()
    } else {
        name.chars().take(128).collect()
    }
}

/// Per-request context.
pub(crate) struct Ctx {
    pub st: Arc<ServerState>,
    pub params: Params,
    pub accept: String,
    pub content_type: String,
    pub manager: String,
}

impl Ctx {
    fn new(st: Arc<ServerState>, parts: &Parts, params: Params, accept: String) -> Self {
        let manager = params
            .get("fieldManager")
            .map(str::to_string)
            .unwrap_or_else(|| default_manager(header_str(&parts.headers, header::USER_AGENT)));
        Ctx {
            st,
            params,
            accept,
            content_type: header_str(&parts.headers, header::CONTENT_TYPE).to_string(),
            manager,
        }
    }

    fn dry_run(&self) -> bool {
        self.params.get("dryRun") == Some("All")
    }

    /// `dryRun` may only be `All` (every stage runs, nothing is stored).
    fn check_dry_run(&self) -> ApiResult<()> {
        let bad = self
            .params
            .0
            .iter()
            .find(|(k, v)| k == "dryRun" && v != "All");
        match bad {
            Some((_, v)) => Err(unsupported_dry_run(v)),
            None => Ok(()),
        }
    }

    pub fn wants_table(&self) -> bool {
        self.accept.contains("as=Table")
    }
}

fn unsupported_dry_run(value: &str) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("dryRun: Unsupported value: {value:?}: supported values: \"All\""),
    )
}

async fn dispatch(ctx: &Ctx, method: &Method, r: ResourceReq, body: Bytes) -> ApiResult<Response> {
    ctx.check_dry_run()?;
    let rt = r.rt.clone();
    let ns = r.namespace.clone();
    if rt.namespaced
        && ns.is_none()
        && !matches!((method, &r.target), (&Method::GET, Target::Collection))
    {
        return Err(ApiError::method_not_allowed());
    }
    let ns = ns.unwrap_or_default();
    match (method, r.target) {
        (&Method::GET, Target::Collection) => {
            let namespace = rt
                .namespaced
                .then_some(ns.as_str())
                .filter(|n| !n.is_empty());
            if ctx.params.flag("watch") {
                watch::watch(ctx, rt, namespace.map(str::to_string)).await
            } else {
                read::list(ctx, &rt, namespace)
            }
        }
        (&Method::POST, Target::Collection) => {
            let obj = decode(&body, &ctx.content_type)?;
            let (code, obj, warnings) = create::create(ctx, &rt, &ns, obj)?;
            Ok(with_warnings(json_response(code, &obj), &warnings))
        }
        (&Method::DELETE, Target::Collection) => delete::delete_collection(ctx, &rt, &ns, &body),
        (&Method::GET, Target::Item(name)) => read::get(ctx, &rt, &ns, &name),
        (&Method::GET, Target::Sub(name, sub)) if sub == "status" && rt.status => {
            read::get(ctx, &rt, &ns, &name)
        }
        (&Method::PUT, Target::Item(name)) => {
            let obj = decode(&body, &ctx.content_type)?;
            update::update(ctx, Item::new(&rt, &ns, &name, None), obj)
        }
        (&Method::PUT, Target::Sub(name, sub)) if sub == "status" && rt.status => {
            let obj = decode(&body, &ctx.content_type)?;
            update::update(ctx, Item::new(&rt, &ns, &name, Some("status")), obj)
        }
        (&Method::PATCH, Target::Item(name)) => {
            patch::patch_object(ctx, Item::new(&rt, &ns, &name, None), &body)
        }
        (&Method::PATCH, Target::Sub(name, sub)) if sub == "status" && rt.status => {
            patch::patch_object(ctx, Item::new(&rt, &ns, &name, Some("status")), &body)
        }
        (&Method::DELETE, Target::Item(name)) => delete::delete(ctx, &rt, &ns, &name, &body),
        (&Method::POST, Target::Sub(name, sub))
            if sub == "binding" && rt.builtin == Some(Builtin::Pod) =>
        {
            bind::bind(ctx, &rt, &ns, &name, &body)
        }
        (_, Target::Sub(_, _)) => Err(ApiError::not_found_path()),
        _ => Err(ApiError::method_not_allowed()),
    }
}

pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = (code, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The stored object `k`, or the resource's NotFound.
fn existing(inner: &Inner, rt: &ResourceType, k: &ObjKey) -> ApiResult<Arc<Value>> {
    inner
        .get(k)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, &k.name))
}

/// `stored` as the client sees it, with the warnings of its write.
fn object_response(
    code: StatusCode,
    rt: &ResourceType,
    stored: &Value,
    warnings: &[String],
) -> Response {
    with_warnings(json_response(code, &convert::to_view(rt, stored)), warnings)
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
    r
}

fn decode(body: &[u8], content_type: &str) -> ApiResult<Value> {
    if content_type.contains("protobuf") {
        return super::protobuf::decode(body);
    }
    let v: Value = if content_type.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid yaml: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid json: {e}")))?
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

fn key(rt: &ResourceType, ns: &str, name: &str) -> ObjKey {
    ObjKey::new(&rt.storage, if rt.namespaced { ns } else { "" }, name)
}

/// The object a write names: its resource, namespace and name, and the
/// subresource written (`Some("status")`), if any.
#[derive(Clone, Copy)]
struct Item<'a> {
    rt: &'a ResourceType,
    ns: &'a str,
    name: &'a str,
    sub: Option<&'a str>,
}

impl<'a> Item<'a> {
    fn new(rt: &'a ResourceType, ns: &'a str, name: &'a str, sub: Option<&'a str>) -> Self {
        Item { rt, ns, name, sub }
    }

    fn key(&self) -> ObjKey {
        key(self.rt, self.ns, self.name)
    }
}

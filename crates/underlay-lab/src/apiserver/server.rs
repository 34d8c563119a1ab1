//! HTTP: authentication, fault injection, routing of Kubernetes API paths, and
//! the verbs (get, list, watch, create, update, patch, delete,
//! deletecollection) on resources and their `status` subresources.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use tracing::debug;

use super::apply::{self, Scope};
use super::convert;
use super::error::{ApiError, ApiResult};
use super::faults::Faults;
use super::meta;
use super::patch;
use super::resources::{Builtin, Registry, ResourceType, types_from_crd};
use super::schema;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Inner, ObjKey, Store};
use super::table;
use super::typed;
use super::validation;
use super::{discovery, openapi, openapi_v2, openapi_v2_pb, watch};

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

/// Remaining items of paginated lists, so every page comes from one consistent snapshot.
#[derive(Debug, Default)]
pub(crate) struct Pages {
    next: u64,
    entries: HashMap<String, Page>,
}

#[derive(Debug)]
struct Page {
    rv: u64,
    items: Vec<Arc<Value>>,
    created: Instant,
}

const PAGE_TTL: Duration = Duration::from_secs(300);
const MAX_PAGES: usize = 1024;

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

#[derive(Debug)]
enum Target {
    Collection,
    Item(String),
    Sub(String, String),
}

#[derive(Debug)]
struct ResourceReq {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    target: Target,
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
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();

    // Non-resource paths.
    match segs.as_slice() {
        [] => {
            return Ok(json_response(
                StatusCode::OK,
                &discovery::root_paths(&st.registry),
            ));
        }
        ["version"] => return Ok(json_response(StatusCode::OK, &discovery::version())),
        ["healthz"] | ["livez"] | ["readyz"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => return Ok(json_response(StatusCode::OK, &discovery::core_versions())),
        ["apis"] => {
            return Ok(json_response(
                StatusCode::OK,
                &discovery::group_list(&st.registry),
            ));
        }
        ["apis", group] => {
            return discovery::group(&st.registry, group)
                .map(|v| json_response(StatusCode::OK, &v));
        }
        ["openapi", "v2"] => return openapi_v2_response(&st.registry, &accept),
        ["openapi", "v3"] => {
            return Ok(json_response(StatusCode::OK, &openapi::root(&st.registry)));
        }
        ["openapi", "v3", rest @ ..] => {
            return openapi::document(&st.registry, &rest.join("/"))
                .map(|v| json_response(StatusCode::OK, &v));
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::not_found_path()),
    };
    if rest.is_empty() {
        return discovery::resource_list(&st.registry, group, version)
            .map(|v| json_response(StatusCode::OK, &v));
    }
    let rreq = route(&st.registry, group, version, rest)?;
    let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            "the request body is too large; send at most 3 MiB",
        )
    })?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ctx = Ctx {
        st: st.clone(),
        params,
        accept,
        content_type,
        manager: String::new(),
    };
    let manager = ctx
        .params
        .get("fieldManager")
        .map(str::to_string)
        .unwrap_or_else(|| default_manager(user_agent));
    let ctx = Ctx { manager, ..ctx };
    dispatch(&ctx, &parts.method, rreq, body).await
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

fn route(registry: &Registry, group: &str, version: &str, rest: &[&str]) -> ApiResult<ResourceReq> {
    let find = |plural: &str| {
        registry
            .find(group, version, plural)
            .ok_or_else(ApiError::not_found_path)
    };
    // `/namespaces/NS/RESOURCE...` unless it is the namespace's own subresource.
    if rest.len() >= 3
        && rest[0] == "namespaces"
        && group.is_empty()
        && !matches!(rest[2], "status" | "finalize")
    {
        let rt = find(rest[2])?;
        if !rt.namespaced {
            return Err(ApiError::not_found_path());
        }
        let namespace = Some(rest[1].to_string());
        let target = match &rest[3..] {
            [] => Target::Collection,
            [name] => Target::Item(name.to_string()),
            [name, sub] => Target::Sub(name.to_string(), sub.to_string()),
            _ => return Err(ApiError::not_found_path()),
        };
        return Ok(ResourceReq {
            rt,
            namespace,
            target,
        });
    }
    if rest.len() >= 3 && rest[0] == "namespaces" && !group.is_empty() {
        let rt = find(rest[2])?;
        let target = match &rest[3..] {
            [] => Target::Collection,
            [name] => Target::Item(name.to_string()),
            [name, sub] => Target::Sub(name.to_string(), sub.to_string()),
            _ => return Err(ApiError::not_found_path()),
        };
        if !rt.namespaced {
            return Err(ApiError::not_found_path());
        }
        return Ok(ResourceReq {
            rt,
            namespace: Some(rest[1].to_string()),
            target,
        });
    }
    let rt = find(rest[0])?;
    let target = match &rest[1..] {
        [] => Target::Collection,
        [name] if !rt.namespaced => Target::Item(name.to_string()),
        [name, sub] if !rt.namespaced => Target::Sub(name.to_string(), sub.to_string()),
        _ => return Err(ApiError::not_found_path()),
    };
    Ok(ResourceReq {
        rt,
        namespace: None,
        target,
    })
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
            Some((_, v)) => Err(ApiError::new(
                422,
                "Invalid",
                format!("dryRun: Unsupported value: {v:?}: supported values: \"All\""),
            )),
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
                list(ctx, &rt, namespace)
            }
        }
        (&Method::POST, Target::Collection) => {
            let obj = decode(&body, &ctx.content_type)?;
            let (code, obj, warnings) = create(ctx, &rt, &ns, obj)?;
            Ok(with_warnings(json_response(code, &obj), &warnings))
        }
        (&Method::DELETE, Target::Collection) => delete_collection(ctx, &rt, &ns, &body),
        (&Method::GET, Target::Item(name)) => get(ctx, &rt, &ns, &name),
        (&Method::GET, Target::Sub(name, sub)) if sub == "status" && rt.status => {
            get(ctx, &rt, &ns, &name)
        }
        (&Method::PUT, Target::Item(name)) => {
            let obj = decode(&body, &ctx.content_type)?;
            update(ctx, &rt, &ns, &name, obj, None)
        }
        (&Method::PUT, Target::Sub(name, sub)) if sub == "status" && rt.status => {
            let obj = decode(&body, &ctx.content_type)?;
            update(ctx, &rt, &ns, &name, obj, Some("status"))
        }
        (&Method::PATCH, Target::Item(name)) => patch_object(ctx, &rt, &ns, &name, &body, None),
        (&Method::PATCH, Target::Sub(name, sub)) if sub == "status" && rt.status => {
            patch_object(ctx, &rt, &ns, &name, &body, Some("status"))
        }
        (&Method::DELETE, Target::Item(name)) => delete(ctx, &rt, &ns, &name, &body),
        (&Method::POST, Target::Sub(name, sub))
            if sub == "binding" && rt.builtin == Some(Builtin::Pod) =>
        {
            bind(ctx, &rt, &ns, &name, &body)
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

fn get(ctx: &Ctx, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<Response> {
    let obj = {
        let inner = ctx.st.store.lock();
        inner
            .get(&key(rt, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?
    };
    let view = convert::to_view(rt, &obj);
    if ctx.wants_table() {
        let rv = meta::meta_str(&view, "resourceVersion").to_string();
        return Ok(json_response(
            StatusCode::OK,
            &table::table(rt, &[view], &rv, true, ctx.params.get("includeObject")),
        ));
    }
    Ok(json_response(StatusCode::OK, &view))
}

fn list(ctx: &Ctx, rt: &ResourceType, namespace: Option<&str>) -> ApiResult<Response> {
    let labels = LabelSelector::parse(ctx.params.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(ctx.params.get("fieldSelector").unwrap_or(""), &rt.kind)?;
    let limit: usize = match ctx.params.get("limit") {
        None | Some("") => 0,
        Some(l) => l.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid limit {l:?}: use a non-negative integer"))
        })?,
    };
    let (rv, mut items) = match ctx.params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let mut pages = ctx.st.pages.lock().unwrap_or_else(|e| e.into_inner());
            let page = pages.entries.remove(token).ok_or_else(|| {
                ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
            })?;
            (page.rv, page.items)
        }
        None => {
            let inner = ctx.st.store.lock();
            let current = inner.resource_version();
            check_list_rv(ctx, current)?;
            let items: Vec<Arc<Value>> = match fields.pinned_name() {
                Some(name) if namespace.is_some() || !rt.namespaced => inner
                    .get(&key(rt, namespace.unwrap_or(""), name))
                    .filter(|o| labels.matches(o) && fields.matches(o))
                    .cloned()
                    .into_iter()
                    .collect(),
                _ => inner
                    .range(&rt.storage, namespace)
                    .filter(|(_, o)| labels.matches(o) && fields.matches(o))
                    .map(|(_, o)| o.clone())
                    .collect(),
            };
            (current, items)
        }
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if limit > 0 && items.len() > limit {
        let rest = items.split_off(limit);
        let remaining = rest.len();
        let mut pages = ctx.st.pages.lock().unwrap_or_else(|e| e.into_inner());
        pages.entries.retain(|_, p| p.created.elapsed() < PAGE_TTL);
        if pages.entries.len() >= MAX_PAGES
            && let Some(oldest) = pages
                .entries
                .iter()
                .min_by_key(|(_, p)| p.created)
                .map(|(k, _)| k.clone())
        {
            pages.entries.remove(&oldest);
        }
        pages.next += 1;
        let token = format!("{rv}.{}", pages.next);
        pages.entries.insert(
            token.clone(),
            Page {
                rv,
                items: rest,
                created: Instant::now(),
            },
        );
        metadata["continue"] = json!(token);
        metadata["remainingItemCount"] = json!(remaining);
    }
    let views: Vec<Value> = items.iter().map(|o| convert::to_view(rt, o)).collect();
    if ctx.wants_table() {
        let mut t = table::table(
            rt,
            &views,
            &rv.to_string(),
            true,
            ctx.params.get("includeObject"),
        );
        t["metadata"] = metadata;
        return Ok(json_response(StatusCode::OK, &t));
    }
    let list = json!({
        "kind": rt.list_kind(),
        "apiVersion": rt.api_version(),
        "metadata": metadata,
        "items": views,
    });
    Ok(json_response(StatusCode::OK, &list))
}

fn check_list_rv(ctx: &Ctx, current: u64) -> ApiResult<()> {
    let Some(rv) = ctx
        .params
        .get("resourceVersion")
        .filter(|r| !r.is_empty() && *r != "0")
    else {
        return Ok(());
    };
    let rv: u64 = rv.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resourceVersion {rv:?}: use a value from a list or watch"
        ))
    })?;
    match ctx.params.get("resourceVersionMatch") {
        Some("Exact") if rv != current => Err(ApiError::gone(format!(
            "too old resource version: {rv} ({current})"
        ))),
        _ if rv > current => Err(ApiError::new(
            504,
            "Timeout",
            format!("Too large resource version: {rv}, current: {current}"),
        )),
        _ => Ok(()),
    }
}

fn check_type(rt: &ResourceType, obj: &mut Value) -> ApiResult<()> {
    let want = rt.api_version();
    match obj["apiVersion"].as_str() {
        Some(v) if v != want => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({want})"
            )));
        }
        _ => obj["apiVersion"] = json!(want),
    }
    match obj["kind"].as_str() {
        Some(k) if k != rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        _ => obj["kind"] = json!(rt.kind),
    }
    Ok(())
}

/// What every write of a whole object to a named URL checks first: the
/// object's apiVersion, kind, name and namespace are the URL's (each filled
/// in when absent; the name only when `unnamed_ok`, as for apply).
fn check_identity(
    rt: &ResourceType,
    ns: &str,
    name: &str,
    obj: &mut Value,
    unnamed_ok: bool,
) -> ApiResult<()> {
    check_type(rt, obj)?;
    let body_name = meta::meta_str(obj, "name");
    if body_name != name && !(unnamed_ok && body_name.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    meta::metadata_mut(obj).insert("name".into(), json!(name));
    check_namespace(rt, ns, obj)
}

fn check_namespace(rt: &ResourceType, ns: &str, obj: &mut Value) -> ApiResult<()> {
    let m = meta::metadata_mut(obj);
    if rt.namespaced {
        match m.get("namespace").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                m.insert("namespace".into(), json!(ns));
            }
        }
    } else {
        m.remove("namespace");
    }
    Ok(())
}

/// Decode through the built-in type (if any), find the fields the type or
/// the CRD's schema does not have, and handle `fieldValidation`.
fn normalize(ctx: &Ctx, rt: &ResourceType, obj: Value) -> ApiResult<(Value, Vec<String>)> {
    let (obj, unknown) = match (rt.builtin, &rt.schema) {
        (Some(which), _) => typed::normalize(rt, which, obj)?,
        (None, Some(schema)) => {
            let unknown = schema::pruned_fields(schema, &obj);
            (obj, unknown)
        }
        (None, None) => return Ok((obj, Vec::new())),
    };
    let mode = ctx.params.get("fieldValidation").unwrap_or("Warn");
    match mode {
        "Strict" if !unknown.is_empty() => {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )))
        }
        "Strict" | "Warn" => Ok((
            obj,
            unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect(),
        )),
        "Ignore" => Ok((obj, Vec::new())),
        other => Err(ApiError::bad_request(format!(
            "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
        ))),
    }
}

fn status_on_create(rt: &ResourceType, obj: &mut Value) {
    match rt.builtin {
        Some(Builtin::Pod) => obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"}),
        Some(Builtin::Namespace) => obj["status"] = json!({"phase": "Active"}),
        // Their controllers write status; a new object starts with the zero
        // status whatever the client sent.
        Some(Builtin::Deployment | Builtin::DaemonSet | Builtin::PodDisruptionBudget) => {
            obj["status"] = json!({})
        }
        None if rt.status => {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        _ => {}
    }
}

fn set_system_meta_on_create(rt: &ResourceType, obj: &mut Value) {
    let m = meta::metadata_mut(obj);
    m.insert("uid".into(), json!(meta::new_uid()));
    m.insert("creationTimestamp".into(), json!(meta::now()));
    for f in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "managedFields",
    ] {
        m.remove(f);
    }
    if rt.generation {
        m.insert("generation".into(), json!(1));
    } else {
        m.remove("generation");
    }
}

fn create(
    ctx: &Ctx,
    rt: &ResourceType,
    ns: &str,
    mut obj: Value,
) -> ApiResult<(StatusCode, Value, Vec<String>)> {
    check_type(rt, &mut obj)?;
    let mut obj = convert::to_storage(rt, obj);
    check_namespace(rt, ns, &mut obj)?;
    if !meta::meta_str(&obj, "resourceVersion").is_empty() {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if meta::meta_str(&obj, "name").is_empty() {
        let prefix = meta::meta_str(&obj, "generateName").to_string();
        if prefix.is_empty() {
            return Err(ApiError::invalid(
                rt,
                "",
                &[super::error::Cause::required("metadata.name")],
            )
            .with_message(format!(
                "{} in version \"{}\" cannot be handled as a {}: name or generateName is required",
                rt.kind, rt.version, rt.kind
            )));
        }
        meta::metadata_mut(&mut obj).insert(
            "name".into(),
            json!(format!("{prefix}{}", meta::name_suffix())),
        );
    }
    status_on_create(rt, &mut obj);
    let (mut obj, warnings) = normalize(ctx, rt, obj)?;
    validation::default_and_validate(rt, &mut obj, None)?;
    set_system_meta_on_create(rt, &mut obj);
    apply::track_update(
        rt,
        None,
        &mut obj,
        &ctx.manager,
        Scope::Main {
            status_subresource: false,
        },
    );
    let stored = commit_create(ctx, rt, obj)?;
    Ok((StatusCode::CREATED, convert::to_view(rt, &stored), warnings))
}

/// Admission checks and the store write of a new object.
fn commit_create(ctx: &Ctx, rt: &ResourceType, obj: Value) -> ApiResult<Arc<Value>> {
    let name = meta::meta_str(&obj, "name").to_string();
    let ns = meta::meta_str(&obj, "namespace").to_string();
    let k = key(rt, &ns, &name);
    let mut inner = ctx.st.store.lock();
    if rt.namespaced {
        admit_namespace(&inner, &ns, rt, &name)?;
    }
    let mut obj = obj;
    if rt.builtin == Some(Builtin::Pod) {
        admit_priority(&inner, &name, &mut obj)?;
        let sa = obj["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        if inner
            .get(&ObjKey::new("serviceaccounts", &ns, sa))
            .is_none()
        {
            return Err(ApiError::forbidden(format!(
                "pods \"{name}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
            )));
        }
    }
    if inner.get(&k).is_some() {
        return Err(ApiError::already_exists(rt, &name));
    }
    if ctx.dry_run() {
        let mut obj = obj;
        meta::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(""));
        return Ok(Arc::new(obj));
    }
    let stored = inner.put(k, obj);
    after_write(&ctx.st, &mut inner, rt, &stored);
    Ok(stored)
}

/// The Priority admission plugin: a pod naming a PriorityClass gets its
/// value and preemption policy; a pod naming a missing one is refused.
fn admit_priority(inner: &Inner, name: &str, pod: &mut Value) -> ApiResult<()> {
    let class = pod["spec"]["priorityClassName"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if class.is_empty() {
        return Ok(());
    }
    let Some(pc) = inner.get(&ObjKey::new(PRIORITY_CLASSES, "", &class)) else {
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: no PriorityClass with name {class} was found"
        )));
    };
    pod["spec"]["priority"] = pc["value"].clone();
    pod["spec"]["preemptionPolicy"] = pc["preemptionPolicy"].clone();
    Ok(())
}

/// The storage key of PriorityClasses.
const PRIORITY_CLASSES: &str = "priorityclasses.scheduling.k8s.io";

fn admit_namespace(inner: &Inner, ns: &str, rt: &ResourceType, name: &str) -> ApiResult<()> {
    match inner.get(&ObjKey::new("namespaces", "", ns)) {
        None => Err(ApiError::namespace_not_found(ns)),
        Some(n) if n["status"]["phase"] == "Terminating" => Err(ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            rt.group_resource()
        ))),
        Some(_) => Ok(()),
    }
}

/// Side effects of writes that other controllers would perform in a cluster.
fn after_write(st: &ServerState, inner: &mut Inner, rt: &ResourceType, stored: &Value) {
    match rt.builtin {
        // The service account controller gives every namespace a default account.
        Some(Builtin::Namespace) => {
            let ns = meta::meta_str(stored, "name").to_string();
            let k = ObjKey::new("serviceaccounts", &ns, "default");
            if inner.get(&k).is_none() && stored["status"]["phase"] != "Terminating" {
                let sa = json!({
                    "apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": ns, "uid": meta::new_uid(), "creationTimestamp": meta::now()},
                });
                inner.put(k, sa);
            }
        }
        Some(Builtin::Crd) => st
            .registry
            .set_custom(meta::meta_str(stored, "name"), types_from_crd(stored)),
        _ => {}
    }
}

fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

/// The shared tail of update and patch: merge by scope, default, validate,
/// track managers, and write unless nothing changed.
#[allow(clippy::too_many_arguments)]
fn commit_update(
    ctx: &Ctx,
    inner: &mut Inner,
    rt: &ResourceType,
    k: &ObjKey,
    old: &Arc<Value>,
    mut new: Value,
    subresource: Option<&str>,
    track: bool,
) -> ApiResult<Arc<Value>> {
    let name = &k.name;
    let want_rv = meta::meta_str(&new, "resourceVersion");
    if !want_rv.is_empty() && want_rv != meta::meta_str(old, "resourceVersion") {
        return Err(ApiError::conflict(rt, name));
    }
    let scope = Scope::new(rt, subresource);
    new = match scope {
        Scope::Status => {
            let mut merged = (**old).clone();
            merged["status"] = new["status"].take();
            if !track {
                let mf = meta::metadata_mut(&mut new).remove("managedFields");
                let m = meta::metadata_mut(&mut merged);
                match mf {
                    Some(mf) => m.insert("managedFields".into(), mf),
                    None => m.remove("managedFields"),
                };
            }
            merged
        }
        Scope::Main {
            status_subresource: true,
        } => {
            new["status"] = old["status"].clone();
            new
        }
        Scope::Main { .. } => new,
    };
    if new["status"].is_null()
        && let Some(m) = new.as_object_mut()
    {
        m.remove("status");
    }
    {
        let m = meta::metadata_mut(&mut new);
        let om = old["metadata"].as_object().cloned().unwrap_or_default();
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "name",
            "namespace",
        ] {
            match om.get(f) {
                Some(v) => m.insert(f.into(), v.clone()),
                None => m.remove(f),
            };
        }
        if track {
            match om.get("managedFields") {
                Some(v) => m.insert("managedFields".into(), v.clone()),
                None => m.remove("managedFields"),
            };
        }
        m.insert(
            "resourceVersion".into(),
            old["metadata"]["resourceVersion"].clone(),
        );
    }
    validation::default_and_validate(rt, &mut new, Some(old))?;
    if rt.generation && spec_changed(old, &new) {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        new["metadata"]["generation"] = json!(g);
    }
    if track {
        apply::track_update(rt, Some(old), &mut new, &ctx.manager, scope);
    }
    if apply::same_ignoring_times(old, &new) {
        return Ok(old.clone());
    }
    if ctx.dry_run() {
        return Ok(Arc::new(new));
    }
    let finalizing = !new["metadata"]["deletionTimestamp"].is_null()
        && new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
    if finalizing {
        return Ok(remove_object(&ctx.st, inner, rt, k, new));
    }
    let stored = inner.put(k.clone(), new);
    after_write(&ctx.st, inner, rt, &stored);
    Ok(stored)
}

fn update(
    ctx: &Ctx,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    mut obj: Value,
    sub: Option<&str>,
) -> ApiResult<Response> {
    check_identity(rt, ns, name, &mut obj, false)?;
    let (obj, warnings) = normalize(ctx, rt, convert::to_storage(rt, obj))?;
    let k = key(rt, ns, name);
    let mut inner = ctx.st.store.lock();
    let Some(current) = inner.get(&k).cloned() else {
        drop(inner);
        // Leases and Events may be created by PUT, as kube-apiserver allows.
        if sub.is_none()
            && matches!(
                rt.builtin,
                Some(Builtin::Lease) | Some(Builtin::CoreEvent) | Some(Builtin::EventsV1)
            )
        {
            let mut obj = obj;
            meta::metadata_mut(&mut obj).remove("resourceVersion");
            let (code, out, w) = create(ctx, rt, ns, convert::to_view(rt, &obj))?;
            return Ok(with_warnings(json_response(code, &out), &w));
        }
        return Err(ApiError::not_found(rt, name));
    };
    let stored = commit_update(ctx, &mut inner, rt, &k, &current, obj, sub, true)?;
    drop(inner);
    Ok(with_warnings(
        json_response(StatusCode::OK, &convert::to_view(rt, &stored)),
        &warnings,
    ))
}

fn patch_object(
    ctx: &Ctx,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    body: &[u8],
    sub: Option<&str>,
) -> ApiResult<Response> {
    let ct = ctx
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let k = key(rt, ns, name);
    if ct == "application/apply-patch+yaml" || ct == "application/apply-patch+cbor" {
        return apply_patch(ctx, rt, ns, name, body, sub);
    }
    if !matches!(
        ct.as_str(),
        "application/json-patch+json"
            | "application/merge-patch+json"
            | "application/strategic-merge-patch+json"
    ) {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    if ct == "application/strategic-merge-patch+json" && rt.builtin.is_none() {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "strategic merge patch is not supported for custom resources; use a merge patch or server-side apply",
        ));
    }
    let mut inner = ctx.st.store.lock();
    let old = inner
        .get(&k)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    let mut doc = convert::to_view(rt, &old);
    match ct.as_str() {
        "application/json-patch+json" => patch::json_patch(&mut doc, body)?,
        "application/merge-patch+json" => patch::merge_patch(&mut doc, body)?,
        _ => patch::strategic_merge_patch(&mut doc, body, &rt.kind)?,
    }
    check_identity(rt, ns, name, &mut doc, false)?;
    let doc = convert::to_storage(rt, doc);
    let (doc, warnings) = normalize(ctx, rt, doc)?;
    let stored = commit_update(ctx, &mut inner, rt, &k, &old, doc, sub, true)?;
    drop(inner);
    Ok(with_warnings(
        json_response(StatusCode::OK, &convert::to_view(rt, &stored)),
        &warnings,
    ))
}

fn apply_patch(
    ctx: &Ctx,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    body: &[u8],
    sub: Option<&str>,
) -> ApiResult<Response> {
    if ctx.params.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PATCH is not allowed: fieldManager is required for apply requests",
        ));
    }
    let force = ctx.params.flag("force");
    let mut applied: Value = serde_yaml::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the apply configuration is not valid yaml or json: {e}"
        ))
    })?;
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "the apply configuration must be an object",
        ));
    }
    for f in ["apiVersion", "kind"] {
        if applied[f].as_str().is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(format!(
                "{f} must be set in an apply configuration"
            )));
        }
    }
    check_identity(rt, ns, name, &mut applied, true)?;
    // Check field types before merging; unknown fields are handled as for any write.
    let (applied_storage, warnings) = normalize(ctx, rt, convert::to_storage(rt, applied.clone()))?;
    let _ = applied_storage;
    let scope = Scope::new(rt, sub);
    let k = key(rt, ns, name);
    let mut inner = ctx.st.store.lock();
    let old = inner.get(&k).cloned();
    match old {
        None => {
            if sub.is_some() {
                return Err(ApiError::not_found(rt, name));
            }
            drop(inner);
            let merged = apply::apply(rt, None, &applied, &ctx.manager, force, scope)?;
            let mut obj = convert::to_storage(rt, merged);
            status_on_create(rt, &mut obj);
            let (mut obj, _) = normalize(ctx, rt, obj)?;
            validation::default_and_validate(rt, &mut obj, None)?;
            let mf = meta::metadata_mut(&mut obj).remove("managedFields");
            set_system_meta_on_create(rt, &mut obj);
            if let Some(mf) = mf {
                meta::metadata_mut(&mut obj).insert("managedFields".into(), mf);
            }
            let stored = commit_create(ctx, rt, obj)?;
            Ok(with_warnings(
                json_response(StatusCode::CREATED, &convert::to_view(rt, &stored)),
                &warnings,
            ))
        }
        Some(old) => {
            let live = convert::to_view(rt, &old);
            let merged = apply::apply(rt, Some(&live), &applied, &ctx.manager, force, scope)?;
            let merged = convert::to_storage(rt, merged);
            let (merged, _) = normalize(ctx, rt, merged)?;
            let stored = commit_update(ctx, &mut inner, rt, &k, &old, merged, sub, false)?;
            drop(inner);
            Ok(with_warnings(
                json_response(StatusCode::OK, &convert::to_view(rt, &stored)),
                &warnings,
            ))
        }
    }
}

/// Remove `k` for good (with `last` as its final state), cascading to what it owns.
fn remove_object(
    st: &ServerState,
    inner: &mut Inner,
    rt: &ResourceType,
    k: &ObjKey,
    last: Value,
) -> Arc<Value> {
    match rt.builtin {
        Some(Builtin::Namespace) => {
            let contained: Vec<(ObjKey, Arc<Value>)> = inner
                .all()
                .filter(|(ok, _)| ok.namespace == k.name && !ok.namespace.is_empty())
                .map(|(ok, o)| (ok.clone(), o.clone()))
                .collect();
            for (ok, o) in contained {
                inner.remove(&ok, (*o).clone());
            }
        }
        Some(Builtin::Crd) => {
            let storage = k.name.clone();
            let owned: Vec<(ObjKey, Arc<Value>)> = inner
                .range(&storage, None)
                .map(|(ok, o)| (ok.clone(), o.clone()))
                .collect();
            for (ok, o) in owned {
                inner.remove(&ok, (*o).clone());
            }
            st.registry.remove_custom(&storage);
        }
        _ => {}
    }
    inner.remove(k, last)
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteOptions {
    grace_period_seconds: Option<i64>,
    preconditions: Option<Preconditions>,
    propagation_policy: Option<String>,
    /// `["All"]` (in the body or as the `dryRun` parameter): answer, store nothing.
    #[serde(default)]
    dry_run: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Preconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

fn delete_options(ctx: &Ctx, body: &[u8]) -> ApiResult<DeleteOptions> {
    let mut opts: DeleteOptions = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the delete options are malformed: {e}")))?
    };
    if let Some(g) = ctx.params.get("gracePeriodSeconds") {
        opts.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer"))?,
        );
    }
    if let Some(p) = ctx.params.get("propagationPolicy") {
        opts.propagation_policy = Some(p.to_string());
    }
    if let Some(p) = &opts.propagation_policy
        && !["Orphan", "Background", "Foreground"].contains(&p.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy must be Orphan, Background or Foreground, not {p:?}"
        )));
    }
    if let Some(v) = opts.dry_run.iter().find(|v| *v != "All") {
        return Err(unsupported_dry_run(v));
    }
    if ctx.dry_run() {
        opts.dry_run = vec!["All".into()];
    }
    Ok(opts)
}

fn delete(ctx: &Ctx, rt: &ResourceType, ns: &str, name: &str, body: &[u8]) -> ApiResult<Response> {
    let opts = delete_options(ctx, body)?;
    refuse_system_delete(rt, name)?;
    let k = key(rt, ns, name);
    let mut inner = ctx.st.store.lock();
    let old = inner
        .get(&k)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if let Some(pre) = &opts.preconditions {
        if let Some(uid) = &pre.uid
            && uid != meta::meta_str(&old, "uid")
        {
            return Err(ApiError::conflict_message(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::meta_str(&old, "uid")
                ),
            ));
        }
        if let Some(rv) = &pre.resource_version
            && rv != meta::meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict_message(
                rt,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta::meta_str(&old, "resourceVersion")
                ),
            ));
        }
    }
    let out = delete_locked(ctx, &mut inner, rt, &k, &old, &opts);
    drop(inner);
    Ok(json_response(StatusCode::OK, &convert::to_view(rt, &out)))
}

/// The system PriorityClasses cannot be deleted, as in kube-apiserver.
fn refuse_system_delete(rt: &ResourceType, name: &str) -> ApiResult<()> {
    if rt.builtin == Some(Builtin::PriorityClass)
        && super::resources::SYSTEM_PRIORITY_CLASSES
            .iter()
            .any(|(n, _, _)| *n == name)
    {
        return Err(ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: this is a system priority class and cannot be deleted",
            rt.group_resource()
        )));
    }
    Ok(())
}

/// Delete one object: graceful for pods bound to a node, deferred while
/// finalizers remain, immediate (with cascades) otherwise.
fn delete_locked(
    ctx: &Ctx,
    inner: &mut Inner,
    rt: &ResourceType,
    k: &ObjKey,
    old: &Arc<Value>,
    opts: &DeleteOptions,
) -> Arc<Value> {
    let dry_run = !opts.dry_run.is_empty();
    let mut last = (**old).clone();
    let finalizers = old["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    let now = SystemTime::now();
    if rt.builtin == Some(Builtin::Pod) && !finalizers {
        let bound = !old["spec"]["nodeName"].as_str().unwrap_or("").is_empty();
        let phase = old["status"]["phase"].as_str().unwrap_or("");
        let default_grace = old["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        let grace = opts.grace_period_seconds.unwrap_or(default_grace).max(0);
        let current = old["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if bound && grace > 0 && phase != "Succeeded" && phase != "Failed" {
            if current.is_some_and(|c| c <= grace) {
                return old.clone();
            }
            let m = meta::metadata_mut(&mut last);
            m.insert(
                "deletionTimestamp".into(),
                json!(meta::format_time(now + Duration::from_secs(grace as u64))),
            );
            m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            if dry_run {
                return Arc::new(last);
            }
            return inner.put(k.clone(), last);
        }
    }
    if finalizers {
        if !old["metadata"]["deletionTimestamp"].is_null() {
            return old.clone();
        }
        let m = meta::metadata_mut(&mut last);
        m.insert("deletionTimestamp".into(), json!(meta::format_time(now)));
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
        if dry_run {
            return Arc::new(last);
        }
        return inner.put(k.clone(), last);
    }
    if rt.builtin == Some(Builtin::Namespace) {
        last["status"]["phase"] = json!("Terminating");
        meta::metadata_mut(&mut last)
            .insert("deletionTimestamp".into(), json!(meta::format_time(now)));
    }
    if dry_run {
        return Arc::new(last);
    }
    let out = remove_object(&ctx.st, inner, rt, k, last);
    if opts.propagation_policy.as_deref() != Some("Orphan") {
        collect_garbage(&ctx.st, inner, meta::meta_str(old, "uid"));
    }
    out
}

/// Delete objects whose only owners are gone, as the garbage collector would.
fn collect_garbage(st: &ServerState, inner: &mut Inner, owner_uid: &str) {
    if owner_uid.is_empty() {
        return;
    }
    let live_uids: std::collections::HashSet<String> = inner
        .all()
        .map(|(_, o)| meta::meta_str(o, "uid").to_string())
        .collect();
    let orphans: Vec<(ObjKey, Arc<Value>)> = inner
        .all()
        .filter(|(_, o)| {
            let owners = o["metadata"]["ownerReferences"].as_array();
            owners.is_some_and(|refs| {
                refs.iter().any(|r| r["uid"] == owner_uid)
                    && refs
                        .iter()
                        .all(|r| !live_uids.contains(r["uid"].as_str().unwrap_or("")))
            })
        })
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    for (k, o) in orphans {
        let types = st.registry.storage_types();
        if let Some(rt) = types.iter().find(|t| t.storage == k.storage) {
            let uid = meta::meta_str(&o, "uid").to_string();
            remove_object(st, inner, rt, &k, (*o).clone());
            collect_garbage(st, inner, &uid);
        }
    }
}

fn delete_collection(ctx: &Ctx, rt: &ResourceType, ns: &str, body: &[u8]) -> ApiResult<Response> {
    let opts = delete_options(ctx, body)?;
    let labels = LabelSelector::parse(ctx.params.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(ctx.params.get("fieldSelector").unwrap_or(""), &rt.kind)?;
    let namespace = rt.namespaced.then_some(ns);
    let mut inner = ctx.st.store.lock();
    let targets: Vec<(ObjKey, Arc<Value>)> = inner
        .range(&rt.storage, namespace)
        .filter(|(k, o)| {
            labels.matches(o) && fields.matches(o) && refuse_system_delete(rt, &k.name).is_ok()
        })
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect();
    let mut items = Vec::new();
    for (k, o) in targets {
        items.push(convert::to_view(
            rt,
            &delete_locked(ctx, &mut inner, rt, &k, &o, &opts),
        ));
    }
    let rv = inner.resource_version();
    drop(inner);
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    ))
}

fn bind(ctx: &Ctx, rt: &ResourceType, ns: &str, name: &str, body: &[u8]) -> ApiResult<Response> {
    let binding = decode(body, &ctx.content_type)?;
    let node = binding["target"]["name"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid(
            rt,
            name,
            &[super::error::Cause::required("target.name")],
        ));
    }
    let k = key(rt, ns, name);
    let mut inner = ctx.st.store.lock();
    let old = inner
        .get(&k)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if !old["spec"]["nodeName"].as_str().unwrap_or("").is_empty() {
        return Err(ApiError::conflict_message(
            rt,
            name,
            &format!(
                "pod {name} is already assigned to node \"{}\"",
                old["spec"]["nodeName"].as_str().unwrap_or("")
            ),
        ));
    }
    let mut new = (*old).clone();
    new["spec"]["nodeName"] = json!(node);
    let mut conds = new["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conds.retain(|c| c["type"] != "PodScheduled");
    conds
        .push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": meta::now()}));
    new["status"]["conditions"] = json!(conds);
    if !ctx.dry_run() {
        inner.put(k, new);
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

impl ApiError {
    fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}

//! delete and deletecollection: delete options and preconditions, graceful
//! pod deletion, deferral by finalizers, and the system objects that cannot be
//! deleted. What a deletion removes besides the object is `gc`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use super::super::convert;
use super::super::error::{ApiError, ApiResult};
use super::super::meta;
use super::super::resources::{Builtin, ResourceType};
use super::super::selector::{FieldSelector, LabelSelector};
use super::super::store::{Inner, ObjKey};
use super::{Ctx, existing, gc, json_response, key, unsupported_dry_run};

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

pub(super) fn delete(
    ctx: &Ctx,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    body: &[u8],
) -> ApiResult<Response> {
    let opts = delete_options(ctx, body)?;
    refuse_system_delete(rt, name)?;
    let k = key(rt, ns, name);
    let mut inner = ctx.st.store.lock();
    let old = existing(&inner, rt, &k)?;
    if let Some(pre) = &opts.preconditions {
        check_preconditions(rt, name, pre, &old)?;
    }
    let out = delete_locked(ctx, &mut inner, rt, &k, &old, &opts);
    drop(inner);
    Ok(json_response(StatusCode::OK, &convert::to_view(rt, &out)))
}

/// `preconditions` of a delete: the uid and resourceVersion it names must be the object's.
fn check_preconditions(
    rt: &ResourceType,
    name: &str,
    pre: &Preconditions,
    old: &Value,
) -> ApiResult<()> {
    let checks = [
        ("UID", "uid", &pre.uid),
        ("ResourceVersion", "resourceVersion", &pre.resource_version),
    ];
    for (label, field, want) in checks {
        let have = meta::meta_str(old, field);
        if let Some(want) = want
            && want != have
        {
            let message = format!(
                "Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"
            );
            return Err(ApiError::conflict_message(rt, name, &message));
        }
    }
    Ok(())
}

/// The system PriorityClasses cannot be deleted, as in kube-apiserver.
fn refuse_system_delete(rt: &ResourceType, name: &str) -> ApiResult<()> {
    if rt.builtin == Some(Builtin::PriorityClass)
        && super::super::resources::SYSTEM_PRIORITY_CLASSES
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
    let finalizers = gc::has_finalizers(old);
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
                json!(meta::format_time(after(now, grace))),
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
    let out = gc::remove_object(&ctx.st, inner, rt, k, last);
    if opts.propagation_policy.as_deref() != Some("Orphan") {
        gc::collect_garbage(&ctx.st, inner, meta::meta_str(old, "uid"));
    }
    out
}

pub(super) fn delete_collection(
    ctx: &Ctx,
    rt: &ResourceType,
    ns: &str,
    body: &[u8],
) -> ApiResult<Response> {
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

/// `grace` seconds after `now`; past what the clock can hold, the last
/// second RFC 3339 can write.
fn after(now: SystemTime, grace: i64) -> SystemTime {
    const LAST: Duration = Duration::from_secs(253_402_300_799); // 9999-12-31T23:59:59Z
    now.checked_add(Duration::from_secs(grace.unsigned_abs()))
        .unwrap_or(UNIX_EPOCH + LAST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grace_period_past_the_clock_ends_in_year_9999() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(after(now, 30), UNIX_EPOCH + Duration::from_secs(1_030));
        assert_eq!(
            meta::format_time(after(now, i64::MAX)),
            "9999-12-31T23:59:59Z"
        );
    }
}

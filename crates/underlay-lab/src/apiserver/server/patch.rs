//! patch: JSON patch, merge patch, strategic merge patch, and server-side
//! apply (which creates the object when it does not exist yet).

use axum::response::Response;
use http::StatusCode;
use serde_json::Value;

use super::super::apply::{self, Scope};
use super::super::convert;
use super::super::error::{ApiError, ApiResult};
use super::super::meta;
use super::super::patch;
use super::super::resources::ResourceType;
use super::super::validation;
use super::create::commit_create;
use super::update::{Managers, Update, commit_update};
use super::{Ctx, Item, admission, existing, object_response, status, system_meta};

const JSON_PATCH: &str = "application/json-patch+json";
const MERGE_PATCH: &str = "application/merge-patch+json";
const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";

/// The patch types a `Content-Type` names, or why it names none.
fn patch_type(rt: &ResourceType, content_type: &str) -> ApiResult<&'static str> {
    match content_type {
        JSON_PATCH => Ok(JSON_PATCH),
        MERGE_PATCH => Ok(MERGE_PATCH),
        STRATEGIC_MERGE_PATCH if rt.builtin.is_none() => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "strategic merge patch is not supported for custom resources; use a merge patch or server-side apply",
        )),
        STRATEGIC_MERGE_PATCH => Ok(STRATEGIC_MERGE_PATCH),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

pub(super) fn patch_object(ctx: &Ctx, item: Item<'_>, body: &[u8]) -> ApiResult<Response> {
    let ct = ctx.content_type.split(';').next().unwrap_or("").trim();
    if ct == "application/apply-patch+yaml" || ct == "application/apply-patch+cbor" {
        return apply_patch(ctx, item, body);
    }
    let Item { rt, ns, name, sub } = item;
    let kind = patch_type(rt, ct)?;
    let k = item.key();
    let mut inner = ctx.st.store.lock();
    let old = existing(&inner, rt, &k)?;
    let mut doc = convert::to_view(rt, &old);
    match kind {
        JSON_PATCH => patch::json_patch(&mut doc, body)?,
        MERGE_PATCH => patch::merge_patch(&mut doc, body)?,
        _ => patch::strategic_merge_patch(&mut doc, body, &rt.kind)?,
    }
    admission::check_identity(rt, ns, name, &mut doc, false)?;
    let doc = convert::to_storage(rt, doc);
    let (doc, warnings) = admission::normalize(ctx, rt, doc)?;
    let change = Update {
        rt,
        key: &k,
        old: &old,
        new: doc,
        subresource: sub,
        managers: Managers::Track,
    };
    let stored = commit_update(ctx, &mut inner, change)?;
    drop(inner);
    Ok(object_response(StatusCode::OK, rt, &stored, &warnings))
}

/// The apply configuration in `body`: an object naming its apiVersion and kind.
fn apply_configuration(body: &[u8]) -> ApiResult<Value> {
    let applied: Value = serde_yaml::from_slice(body).map_err(|e| {
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
    Ok(applied)
}

fn apply_patch(ctx: &Ctx, item: Item<'_>, body: &[u8]) -> ApiResult<Response> {
    let Item { rt, ns, name, sub } = item;
    if ctx.params.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PATCH is not allowed: fieldManager is required for apply requests",
        ));
    }
    let force = ctx.params.flag("force");
    let mut applied = apply_configuration(body)?;
    admission::check_identity(rt, ns, name, &mut applied, true)?;
    // Check field types before merging; unknown fields are handled as for any write.
    let (_, warnings) = admission::normalize(ctx, rt, convert::to_storage(rt, applied.clone()))?;
    let scope = Scope::new(rt, sub);
    let k = item.key();
    let mut inner = ctx.st.store.lock();
    let Some(old) = inner.get(&k).cloned() else {
        if sub.is_some() {
            return Err(ApiError::not_found(rt, name));
        }
        drop(inner);
        let merged = apply::apply(rt, None, &applied, &ctx.manager, force, scope)?;
        let stored = commit_create(ctx, rt, created_by_apply(ctx, rt, merged)?)?;
        return Ok(object_response(StatusCode::CREATED, rt, &stored, &warnings));
    };
    let live = convert::to_view(rt, &old);
    let merged = apply::apply(rt, Some(&live), &applied, &ctx.manager, force, scope)?;
    let (merged, _) = admission::normalize(ctx, rt, convert::to_storage(rt, merged))?;
    let change = Update {
        rt,
        key: &k,
        old: &old,
        new: merged,
        subresource: sub,
        managers: Managers::FromApply,
    };
    let stored = commit_update(ctx, &mut inner, change)?;
    drop(inner);
    Ok(object_response(StatusCode::OK, rt, &stored, &warnings))
}

/// The new object an apply creates: admitted as a create, keeping the
/// managers apply worked out.
fn created_by_apply(ctx: &Ctx, rt: &ResourceType, merged: Value) -> ApiResult<Value> {
    let mut obj = convert::to_storage(rt, merged);
    status::status_on_create(rt, &mut obj);
    let (mut obj, _) = admission::normalize(ctx, rt, obj)?;
    validation::default_and_validate(rt, &mut obj, None)?;
    let mf = meta::metadata_mut(&mut obj).remove("managedFields");
    system_meta::set_on_create(rt, &mut obj);
    if let Some(mf) = mf {
        meta::metadata_mut(&mut obj).insert("managedFields".into(), mf);
    }
    Ok(obj)
}

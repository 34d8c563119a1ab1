//! update (PUT of a whole object, or of its status), and the commit every
//! write to an existing object ends in: update, patch and apply.

use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;
use serde_json::Value;

use super::super::apply::{self, Scope};
use super::super::convert;
use super::super::error::{ApiError, ApiResult};
use super::super::meta;
use super::super::resources::{Builtin, ResourceType};
use super::super::store::{Inner, ObjKey};
use super::super::validation;
use super::{
    Ctx, Item, admission, create, gc, json_response, object_response, status, system_meta,
    with_warnings,
};

/// Who writes `metadata.managedFields` in an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Managers {
    /// Update and patch: the server records the request's manager itself.
    Track,
    /// Apply: the merged object carries the managers apply worked out.
    FromApply,
}

/// One write to a stored object.
pub(super) struct Update<'a> {
    pub rt: &'a ResourceType,
    pub key: &'a ObjKey,
    pub old: &'a Arc<Value>,
    pub new: Value,
    /// `Some("status")` for a write to the status subresource.
    pub subresource: Option<&'a str>,
    pub managers: Managers,
}

/// The shared tail of update, patch and apply: merge by scope, default,
/// validate, track managers, and write unless nothing changed.
pub(super) fn commit_update(ctx: &Ctx, inner: &mut Inner, u: Update<'_>) -> ApiResult<Arc<Value>> {
    let Update {
        rt,
        key: k,
        old,
        new,
        subresource,
        managers,
    } = u;
    system_meta::check_resource_version(rt, &k.name, old, &new)?;
    let scope = Scope::new(rt, subresource);
    let mut new = status::merge_by_scope(scope, old, new, managers);
    system_meta::keep_on_update(old, &mut new, managers);
    validation::default_and_validate(rt, &mut new, Some(old))?;
    system_meta::bump_generation(rt, old, &mut new);
    if managers == Managers::Track {
        apply::track_update(rt, Some(old), &mut new, &ctx.manager, scope);
    }
    if apply::same_ignoring_times(old, &new) {
        return Ok(old.clone());
    }
    if ctx.dry_run() {
        return Ok(Arc::new(new));
    }
    if gc::finalized(&new) {
        return Ok(gc::remove_object(&ctx.st, inner, rt, k, new));
    }
    let stored = inner.put(k.clone(), new);
    admission::after_write(&ctx.st, inner, rt, &stored);
    Ok(stored)
}

/// Leases and Events may be created by PUT, as kube-apiserver allows.
fn created_by_put(rt: &ResourceType, sub: Option<&str>) -> bool {
    sub.is_none()
        && matches!(
            rt.builtin,
            Some(Builtin::Lease) | Some(Builtin::CoreEvent) | Some(Builtin::EventsV1)
        )
}

pub(super) fn update(ctx: &Ctx, item: Item<'_>, mut obj: Value) -> ApiResult<Response> {
    let Item { rt, ns, name, sub } = item;
    admission::check_identity(rt, ns, name, &mut obj, false)?;
    let (obj, warnings) = admission::normalize(ctx, rt, convert::to_storage(rt, obj))?;
    let k = item.key();
    let mut inner = ctx.st.store.lock();
    let Some(current) = inner.get(&k).cloned() else {
        drop(inner);
        if created_by_put(rt, sub) {
            let mut obj = obj;
            meta::metadata_mut(&mut obj).remove("resourceVersion");
            let (code, out, w) = create::create(ctx, rt, ns, convert::to_view(rt, &obj))?;
            return Ok(with_warnings(json_response(code, &out), &w));
        }
        return Err(ApiError::not_found(rt, name));
    };
    let change = Update {
        rt,
        key: &k,
        old: &current,
        new: obj,
        subresource: sub,
        managers: Managers::Track,
    };
    let stored = commit_update(ctx, &mut inner, change)?;
    drop(inner);
    Ok(object_response(StatusCode::OK, rt, &stored, &warnings))
}

//! create (POST to a collection), and the store write of a new object that
//! create and apply share.

use std::sync::Arc;

use http::StatusCode;
use serde_json::{Value, json};

use super::super::apply::{self, Scope};
use super::super::convert;
use super::super::error::{ApiError, ApiResult};
use super::super::meta;
use super::super::resources::{Builtin, ResourceType};
use super::super::validation;
use super::{Ctx, admission, key, status, system_meta};

pub(super) fn create(
    ctx: &Ctx,
    rt: &ResourceType,
    ns: &str,
    mut obj: Value,
) -> ApiResult<(StatusCode, Value, Vec<String>)> {
    admission::check_type(rt, &mut obj)?;
    let mut obj = convert::to_storage(rt, obj);
    admission::check_namespace(rt, ns, &mut obj)?;
    system_meta::name_on_create(rt, &mut obj)?;
    status::status_on_create(rt, &mut obj);
    let (mut obj, warnings) = admission::normalize(ctx, rt, obj)?;
    validation::default_and_validate(rt, &mut obj, None)?;
    system_meta::set_on_create(rt, &mut obj);
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
pub(super) fn commit_create(ctx: &Ctx, rt: &ResourceType, mut obj: Value) -> ApiResult<Arc<Value>> {
    let name = meta::meta_str(&obj, "name").to_string();
    let ns = meta::meta_str(&obj, "namespace").to_string();
    let k = key(rt, &ns, &name);
    let mut inner = ctx.st.store.lock();
    if rt.namespaced {
        admission::admit_namespace(&inner, &ns, rt, &name)?;
    }
    if rt.builtin == Some(Builtin::Pod) {
        admission::admit_priority(&inner, &name, &mut obj)?;
        admission::admit_service_account(&inner, &ns, &name, &obj)?;
    }
    if inner.get(&k).is_some() {
        return Err(ApiError::already_exists(rt, &name));
    }
    if ctx.dry_run() {
        meta::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(""));
        return Ok(Arc::new(obj));
    }
    let stored = inner.put(k, obj);
    admission::after_write(&ctx.st, &mut inner, rt, &stored);
    Ok(stored)
}

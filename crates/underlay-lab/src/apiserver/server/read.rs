//! get and list (watch is `watch`): selectors, `resourceVersion` semantics,
//! and pagination from one consistent snapshot per list.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use super::super::convert;
use super::super::error::{ApiError, ApiResult};
use super::super::meta;
use super::super::resources::ResourceType;
use super::super::selector::{FieldSelector, LabelSelector};
use super::super::store::Inner;
use super::super::table;
use super::{Ctx, json_response, key};

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

pub(super) fn get(ctx: &Ctx, rt: &ResourceType, ns: &str, name: &str) -> ApiResult<Response> {
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

pub(super) fn list(ctx: &Ctx, rt: &ResourceType, namespace: Option<&str>) -> ApiResult<Response> {
    let labels = LabelSelector::parse(ctx.params.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(ctx.params.get("fieldSelector").unwrap_or(""), &rt.kind)?;
    let limit = limit(ctx)?;
    let (rv, mut items) = match ctx.params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => ctx
            .st
            .pages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(token)?,
        None => {
            let inner = ctx.st.store.lock();
            let current = inner.resource_version();
            check_list_rv(ctx, current)?;
            (current, select(&inner, rt, namespace, &labels, &fields))
        }
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if limit > 0 && items.len() > limit {
        let rest = items.split_off(limit);
        let remaining = rest.len();
        let mut pages = ctx.st.pages.lock().unwrap_or_else(|e| e.into_inner());
        metadata["continue"] = json!(pages.keep(rv, rest, Instant::now()));
        metadata["remainingItemCount"] = json!(remaining);
    }
    let views: Vec<Value> = items.iter().map(|o| convert::to_view(rt, o)).collect();
    if ctx.wants_table() {
        let include = ctx.params.get("includeObject");
        let mut t = table::table(rt, &views, &rv.to_string(), true, include);
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

fn limit(ctx: &Ctx) -> ApiResult<usize> {
    match ctx.params.get("limit") {
        None | Some("") => Ok(0),
        Some(l) => l.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid limit {l:?}: use a non-negative integer"))
        }),
    }
}

/// The objects of `rt` matching the selectors, by key order.
fn select(
    inner: &Inner,
    rt: &ResourceType,
    namespace: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Vec<Arc<Value>> {
    match fields.pinned_name() {
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
    }
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

const PAGE_TTL: Duration = Duration::from_secs(300);

const MAX_PAGES: usize = 1024;

impl Pages {
    /// Keep `items`, the rest of a list at `rv`, and return the continue token
    /// for them. Expired pages go first; at the cap, the oldest.
    fn keep(&mut self, rv: u64, items: Vec<Arc<Value>>, now: Instant) -> String {
        self.entries
            .retain(|_, p| now.saturating_duration_since(p.created) < PAGE_TTL);
        if self.entries.len() >= MAX_PAGES
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, p)| p.created)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        self.next += 1;
        let token = format!("{rv}.{}", self.next);
        let page = Page {
            rv,
            items,
            created: now,
        };
        self.entries.insert(token.clone(), page);
        token
    }

    /// The list a continue token stands for, once.
    fn take(&mut self, token: &str) -> ApiResult<(u64, Vec<Arc<Value>>)> {
        let page = self.entries.remove(token).ok_or_else(|| {
            ApiError::gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
        })?;
        Ok((page.rv, page.items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Arc<Value>> {
        (0..n).map(|i| Arc::new(json!({"i": i}))).collect()
    }

    #[test]
    fn a_continue_token_gives_its_page_once() {
        let mut pages = Pages::default();
        let token = pages.keep(7, items(2), Instant::now());
        assert_eq!(token, "7.1");
        let (rv, got) = pages.take(&token).expect("the page is kept");
        assert_eq!((rv, got.len()), (7, 2));
        assert_eq!(pages.take(&token).map(|_| ()).unwrap_err().code, 410);
    }

    #[test]
    fn expired_pages_and_the_oldest_past_the_cap_are_dropped() {
        let mut pages = Pages::default();
        let start = Instant::now();
        let first = pages.keep(1, items(1), start);
        let later = start + PAGE_TTL;
        let second = pages.keep(1, items(1), later);
        assert!(pages.take(&first).is_err(), "expired");
        for _ in 0..MAX_PAGES {
            pages.keep(1, items(1), later + Duration::from_secs(1));
        }
        assert_eq!(pages.entries.len(), MAX_PAGES);
        assert!(pages.take(&second).is_err(), "the oldest goes at the cap");
    }
}

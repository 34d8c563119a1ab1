//! Watches: one task per watch that filters the store's broadcast of changes
//! and streams watch events as JSON lines. It handles `resourceVersion`
//! (resume, or synthetic ADDED events for the current state), streaming lists
//! (`sendInitialEvents` ending in a bookmark annotated
//! `k8s.io/initial-events-end`), periodic bookmarks, `timeoutSeconds`, and an
//! ERROR event with `410 Expired` when the version is older than the retained
//! history — as kube-apiserver does, so clients relist.
//!
//! Each watch has a bounded queue towards its connection. A watcher that
//! cannot keep up falls behind the broadcast and is closed (clients resume
//! from their last resourceVersion) rather than slowing everyone down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use super::convert;
use super::error::{ApiError, ApiResult};
use super::resources::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::server::Ctx;
use super::store::{Change, EventType};
use super::table;

/// Default watch duration when the client sets no timeout (kube-apiserver
/// picks 30-60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Filter {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    table: bool,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn object(&self, stored: &Value, first: &mut bool) -> Value {
        let view = convert::to_view(&self.rt, stored);
        if self.table {
            let rv = super::meta::meta_str(&view, "resourceVersion").to_string();
            let t = table::table(&self.rt, &[view], &rv, *first, None);
            *first = false;
            t
        } else {
            view
        }
    }

    /// The watch line for `change`, or None when this watch does not see it.
    fn line(&self, change: &Change, first: &mut bool) -> Option<Bytes> {
        if change.key.storage != self.rt.storage {
            return None;
        }
        if let Some(ns) = &self.namespace
            && change.key.namespace != *ns
        {
            return None;
        }
        let now = change.kind != EventType::Deleted && self.matches(&change.object);
        let before = change.old.as_ref().is_some_and(|o| self.matches(o));
        let kind = match (change.kind, before, now) {
            (EventType::Deleted, true, _) => EventType::Deleted,
            (EventType::Deleted, false, _) => return None,
            (_, false, true) => EventType::Added,
            (_, true, true) => EventType::Modified,
            // A change that takes the object out of the selection.
            (_, true, false) => EventType::Deleted,
            (_, false, false) => return None,
        };
        if kind == change.kind && !self.table && !convert::view_differs(&self.rt, &change.object) {
            return Some(
                change
                    .line
                    .get_or_init(|| event_line(kind.as_str(), &change.object))
                    .clone(),
            );
        }
        Some(event_line(
            kind.as_str(),
            &self.object(&change.object, first),
        ))
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut buf = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    buf.push(b'\n');
    Bytes::from(buf)
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": metadata}),
    )
}

fn streaming(rx: mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    let mut r = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) async fn watch(
    ctx: &Ctx,
    rt: Arc<ResourceType>,
    namespace: Option<String>,
) -> ApiResult<Response> {
    let p = &ctx.params;
    let labels = LabelSelector::parse(p.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(p.get("fieldSelector").unwrap_or(""), &rt.kind)?;
    let bookmarks = p.flag("allowWatchBookmarks");
    let send_initial = p.get("sendInitialEvents") == Some("true");
    if send_initial {
        let mut causes = Vec::new();
        if p.get("resourceVersionMatch") != Some("NotOlderThan") {
            causes.push(super::error::Cause::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !bookmarks {
            causes.push(super::error::Cause::required("allowWatchBookmarks"));
        }
        if !causes.is_empty() {
            let list: Vec<String> = causes
                .iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect();
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "ListOptions.meta.k8s.io \"\" is invalid: [{}]",
                    list.join(", ")
                ),
            ));
        }
    }
    let timeout =
        match p.get("timeoutSeconds") {
            Some(t) => Duration::from_secs(t.parse().map_err(|_| {
                ApiError::bad_request("timeoutSeconds must be a non-negative integer")
            })?),
            None => DEFAULT_TIMEOUT,
        };
    let rv_param = p.get("resourceVersion").unwrap_or("");
    let requested: Option<u64> = match rv_param {
        "" | "0" => None,
        v => Some(v.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resourceVersion {v:?}: use a value from a list or watch"
            ))
        })?),
    };
    let filter = Filter {
        rt: rt.clone(),
        namespace,
        labels,
        fields,
        table: ctx.wants_table(),
    };
    let (tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(ctx.st.watch_queue.max(1));

    let (initial, start, subscription) = {
        let inner = ctx.st.store.lock();
        let current = inner.resource_version();
        let synthetic = send_initial || requested.is_none();
        let start = if synthetic {
            current
        } else {
            requested.unwrap_or(current)
        };
        let initial: Vec<Arc<Value>> = if synthetic {
            inner
                .range(&rt.storage, filter.namespace.as_deref())
                .filter(|(_, o)| filter.matches(o))
                .map(|(_, o)| o.clone())
                .collect()
        } else {
            Vec::new()
        };
        let sub = inner.watch_from(start);
        if sub.is_none() {
            let oldest = inner.oldest_watchable();
            drop(inner);
            let status =
                ApiError::gone(format!("too old resource version: {start} ({oldest})")).status();
            let line = event_line("ERROR", &status);
            // A full queue cannot happen: it is new and has room for one line.
            let _ = tx.try_send(Ok(line));
            return Ok(streaming(body_rx));
        }
        (initial, start, sub)
    };
    let Some((past, rx)) = subscription else {
        return Err(ApiError::internal("watch subscription lost"));
    };
    let closer = ctx.st.faults.close_signal();
    let interval = ctx.st.bookmark_interval;
    tokio::spawn(run(
        filter,
        tx,
        initial,
        past,
        rx,
        closer,
        WatchOptions {
            start,
            send_initial,
            bookmarks,
            timeout,
            interval,
        },
    ));
    Ok(streaming(body_rx))
}

struct WatchOptions {
    start: u64,
    send_initial: bool,
    bookmarks: bool,
    timeout: Duration,
    interval: Duration,
}

async fn run(
    filter: Filter,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    initial: Vec<Arc<Value>>,
    past: Vec<Arc<Change>>,
    mut rx: broadcast::Receiver<Arc<Change>>,
    mut closer: tokio::sync::watch::Receiver<u64>,
    o: WatchOptions,
) {
    closer.mark_unchanged();
    let mut first = true;
    let deadline = tokio::time::sleep(o.timeout);
    tokio::pin!(deadline);
    let send = async |line: Bytes| tx.send(Ok(line)).await.is_ok();
    for obj in initial {
        let line = event_line("ADDED", &filter.object(&obj, &mut first));
        if !send(line).await {
            return;
        }
    }
    if o.send_initial && !send(bookmark(&filter.rt, o.start, true)).await {
        return;
    }
    let mut last_rv = o.start;
    let mut bookmarked = o.start;
    for change in past {
        last_rv = change.rv;
        if let Some(line) = filter.line(&change, &mut first)
            && !send(line).await
        {
            return;
        }
    }
    let mut ticker = tokio::time::interval(o.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = closer.changed() => {
                debug!(resource = %filter.rt.plural, "watch closed by fault injection");
                return;
            }
            _ = tx.closed() => return,
            _ = &mut deadline => {
                if o.bookmarks && last_rv > bookmarked {
                    send(bookmark(&filter.rt, last_rv, false)).await;
                }
                return;
            }
            received = rx.recv() => match received {
                Ok(change) => {
                    if change.rv <= last_rv {
                        continue;
                    }
                    last_rv = change.rv;
                    if let Some(line) = filter.line(&change, &mut first) && !send(line).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(resource = %filter.rt.plural, missed, "closing a watch that fell behind");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticker.tick(), if o.bookmarks => {
                if last_rv > bookmarked {
                    bookmarked = last_rv;
                    if !send(bookmark(&filter.rt, last_rv, false)).await {
                        return;
                    }
                }
            }
        }
    }
}

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
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use super::convert;
use super::error::{ApiError, ApiResult, Cause};
use super::resources::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::server::{Ctx, Params};
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
    let request = WatchRequest::parse(&ctx.params, &rt.kind)?;
    let filter = Filter {
        rt: rt.clone(),
        namespace,
        labels: request.labels,
        fields: request.fields,
        table: ctx.wants_table(),
    };
    let (tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(ctx.st.watch_queue.max(1));
    let feed = match subscribe(ctx, &filter, request.send_initial, request.requested) {
        Ok(feed) => feed,
        Err(expired) => {
            // A full queue cannot happen: it is new and has room for one line.
            let _ = tx.try_send(Ok(event_line("ERROR", &expired.status())));
            return Ok(streaming(body_rx));
        }
    };
    let options = WatchOptions {
        start: feed.start,
        send_initial: request.send_initial,
        bookmarks: request.bookmarks,
        timeout: request.timeout,
        interval: ctx.st.bookmark_interval,
    };
    tokio::spawn(run(filter, tx, feed, ctx.st.faults.close_signal(), options));
    Ok(streaming(body_rx))
}

/// What a watch asks for in its query parameters.
struct WatchRequest {
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
    /// A streaming list: the current objects, then a bookmark marking their end.
    send_initial: bool,
    timeout: Duration,
    /// The version to resume after; None for the current state as ADDED events.
    requested: Option<u64>,
}

impl WatchRequest {
    fn parse(p: &Params, kind: &str) -> ApiResult<Self> {
        let labels = LabelSelector::parse(p.get("labelSelector").unwrap_or(""))?;
        let fields = FieldSelector::parse(p.get("fieldSelector").unwrap_or(""), kind)?;
        let bookmarks = p.flag("allowWatchBookmarks");
        let send_initial = p.get("sendInitialEvents") == Some("true");
        if send_initial {
            check_streaming_list(p, bookmarks)?;
        }
        let timeout = match p.get("timeoutSeconds") {
            Some(t) => Duration::from_secs(t.parse().map_err(|_| {
                ApiError::bad_request("timeoutSeconds must be a non-negative integer")
            })?),
            None => DEFAULT_TIMEOUT,
        };
        let requested = match p.get("resourceVersion").unwrap_or("") {
            "" | "0" => None,
            v => Some(v.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid resourceVersion {v:?}: use a value from a list or watch"
                ))
            })?),
        };
        Ok(WatchRequest {
            labels,
            fields,
            bookmarks,
            send_initial,
            timeout,
            requested,
        })
    }
}

/// A streaming list needs `resourceVersionMatch=NotOlderThan` and bookmarks
/// (its end is a bookmark); a 422 naming both otherwise.
fn check_streaming_list(p: &Params, bookmarks: bool) -> ApiResult<()> {
    let mut causes = Vec::new();
    if p.get("resourceVersionMatch") != Some("NotOlderThan") {
        causes.push(Cause::forbidden(
            "resourceVersionMatch",
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ));
    }
    if !bookmarks {
        causes.push(Cause::required("allowWatchBookmarks"));
    }
    if causes.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    Err(ApiError::new(
        422,
        "Invalid",
        format!(
            "ListOptions.meta.k8s.io \"\" is invalid: [{}]",
            list.join(", ")
        ),
    ))
}

/// Where a watch starts and what it sends: the current objects (as ADDED
/// events) when it starts from the current state, the retained changes after
/// `start`, then the store's live broadcast.
struct Feed {
    start: u64,
    initial: Vec<Arc<Value>>,
    past: Vec<Arc<Change>>,
    rx: broadcast::Receiver<Arc<Change>>,
}

/// Subscribes to the store's changes under its lock, so that nothing falls
/// between the initial objects and the feed; 410 Expired when `requested`
/// is older than the retained history.
fn subscribe(
    ctx: &Ctx,
    filter: &Filter,
    send_initial: bool,
    requested: Option<u64>,
) -> Result<Feed, ApiError> {
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
            .range(&filter.rt.storage, filter.namespace.as_deref())
            .filter(|(_, o)| filter.matches(o))
            .map(|(_, o)| o.clone())
            .collect()
    } else {
        Vec::new()
    };
    let Some((past, rx)) = inner.watch_from(start) else {
        let oldest = inner.oldest_watchable();
        return Err(ApiError::gone(format!(
            "too old resource version: {start} ({oldest})"
        )));
    };
    Ok(Feed {
        start,
        initial,
        past,
        rx,
    })
}

struct WatchOptions {
    start: u64,
    send_initial: bool,
    bookmarks: bool,
    timeout: Duration,
    interval: Duration,
}

/// The task of one watch: replays its start, then follows the store.
async fn run(
    filter: Filter,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    feed: Feed,
    mut closer: tokio::sync::watch::Receiver<u64>,
    o: WatchOptions,
) {
    closer.mark_unchanged();
    let deadline = tokio::time::sleep(o.timeout);
    tokio::pin!(deadline);
    let mut watcher = Watcher {
        filter,
        tx,
        first: true,
        o,
    };
    let Some(last_rv) = watcher.replay(feed.initial, feed.past).await else {
        return;
    };
    watcher.follow(feed.rx, closer, deadline, last_rv).await;
}

/// A running watch: what it selects, the queue towards its connection, and
/// whether the next object is its first (a Table's first carries the
/// column definitions).
struct Watcher {
    filter: Filter,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    first: bool,
    o: WatchOptions,
}

impl Watcher {
    /// False when the connection is gone.
    async fn send(&self, line: Bytes) -> bool {
        self.tx.send(Ok(line)).await.is_ok()
    }

    /// The initial objects as ADDED events (ending with the bookmark of a
    /// streaming list), then the retained changes after the start. The last
    /// version sent, or None when the connection is gone.
    async fn replay(&mut self, initial: Vec<Arc<Value>>, past: Vec<Arc<Change>>) -> Option<u64> {
        for obj in initial {
            let line = event_line("ADDED", &self.filter.object(&obj, &mut self.first));
            if !self.send(line).await {
                return None;
            }
        }
        if self.o.send_initial
            && !self
                .send(bookmark(&self.filter.rt, self.o.start, true))
                .await
        {
            return None;
        }
        let mut last_rv = self.o.start;
        for change in past {
            last_rv = change.rv;
            if let Some(line) = self.filter.line(&change, &mut self.first)
                && !self.send(line).await
            {
                return None;
            }
        }
        Some(last_rv)
    }

    /// The store's changes after `last_rv` and periodic bookmarks, until the
    /// connection closes, the timeout passes (with a last bookmark), the
    /// watcher falls behind, or a fault closes it.
    async fn follow(
        &mut self,
        mut rx: broadcast::Receiver<Arc<Change>>,
        mut closer: tokio::sync::watch::Receiver<u64>,
        mut deadline: Pin<&mut Sleep>,
        mut last_rv: u64,
    ) {
        let mut bookmarked = self.o.start;
        let mut ticker = tokio::time::interval(self.o.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = closer.changed() => {
                    debug!(resource = %self.filter.rt.plural, "watch closed by fault injection");
                    return;
                }
                _ = self.tx.closed() => return,
                _ = &mut deadline => {
                    if self.o.bookmarks && last_rv > bookmarked {
                        self.send(bookmark(&self.filter.rt, last_rv, false)).await;
                    }
                    return;
                }
                received = rx.recv() => match received {
                    Ok(change) => {
                        if change.rv <= last_rv {
                            continue;
                        }
                        last_rv = change.rv;
                        if let Some(line) = self.filter.line(&change, &mut self.first)
                            && !self.send(line).await
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(resource = %self.filter.rt.plural, missed, "closing a watch that fell behind");
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if self.o.bookmarks => {
                    if last_rv > bookmarked {
                        bookmarked = last_rv;
                        if !self.send(bookmark(&self.filter.rt, last_rv, false)).await {
                            return;
                        }
                    }
                }
            }
        }
    }
}

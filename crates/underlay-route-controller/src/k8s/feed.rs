//! The node informer: one watch of Nodes that runs whether or not this
//! instance leads. A standby keeps a synced cache (which is what makes it
//! ready), and a new leader's [`NodeController`](super::NodeController) is
//! fed from that cache at once instead of listing every Node again.
//!
//! [`NodeFeed::apply`] is a plain state machine over watcher events, so it is
//! tested without an API server; [`NodeFeed::run`] drives it from the watch.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

#[derive(Debug, Default)]
struct FeedState {
    /// Every Node as of the last complete list and the changes since.
    cache: BTreeMap<String, Node>,
    /// A list in progress (after `Init`, before `InitDone`).
    listing: Option<Vec<Node>>,
    subscriber: Option<mpsc::UnboundedSender<watcher::Event<Node>>>,
}

/// The shared node cache; cloning shares it.
#[derive(Debug, Clone)]
pub struct NodeFeed {
    state: Arc<Mutex<FeedState>>,
    synced: Arc<watch::Sender<bool>>,
}

impl Default for NodeFeed {
    fn default() -> NodeFeed {
        NodeFeed::new()
    }
}

fn name_of(node: &Node) -> String {
    node.metadata.name.clone().unwrap_or_default()
}

impl NodeFeed {
    pub fn new() -> NodeFeed {
        NodeFeed {
            state: Arc::default(),
            synced: Arc::new(watch::channel(false).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `true` once every Node has been listed once; it stays `true` through
    /// later relists, as an informer's `HasSynced` does.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// How many Nodes the cache holds.
    pub fn len(&self) -> usize {
        self.lock().cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts a stream of watcher events for one consumer (the leader's
    /// node controller), replacing any earlier one. It begins with the cache
    /// as a complete list (`Init`, `InitApply`.., `InitDone`) when synced, or
    /// with the part of a list in progress, and goes on with every event.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<watcher::Event<Node>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        // Sends cannot fail: `rx` is still here.
        if let Some(partial) = &state.listing {
            let _ = tx.send(watcher::Event::Init);
            for node in partial {
                let _ = tx.send(watcher::Event::InitApply(node.clone()));
            }
        } else if *self.synced.borrow() {
            let _ = tx.send(watcher::Event::Init);
            for node in state.cache.values() {
                let _ = tx.send(watcher::Event::InitApply(node.clone()));
            }
            let _ = tx.send(watcher::Event::InitDone);
        }
        state.subscriber = Some(tx);
        rx
    }

    /// Applies one watcher event to the cache and hands it to the consumer.
    pub fn apply(&self, event: watcher::Event<Node>) {
        let mut state = self.lock();
        let mut done = false;
        match &event {
            watcher::Event::Init => state.listing = Some(Vec::new()),
            watcher::Event::InitApply(node) => {
                state
                    .listing
                    .get_or_insert_with(Vec::new)
                    .push(node.clone());
            }
            watcher::Event::InitDone => {
                let nodes = state.listing.take().unwrap_or_default();
                state.cache = nodes.into_iter().map(|n| (name_of(&n), n)).collect();
                done = true;
            }
            watcher::Event::Apply(node) => {
                state.cache.insert(name_of(node), node.clone());
            }
            watcher::Event::Delete(node) => {
                state.cache.remove(&name_of(node));
            }
        }
        if let Some(tx) = &state.subscriber
            && tx.send(event).is_err()
        {
            // The consumer is gone (leadership ended).
            state.subscriber = None;
        }
        let count = state.cache.len();
        drop(state);
        if done {
            self.synced.send_if_modified(|s| {
                let first = !*s;
                *s = true;
                if first {
                    info!(nodes = count, "node cache synced");
                }
                first
            });
        }
    }

    /// Watches Nodes until the future is dropped; failures are retried with
    /// the watcher's backoff, and each reconnect relists or resumes.
    pub async fn run(self, client: kube::Client) {
        let api: Api<Node> = Api::all(client);
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => self.apply(event),
                Err(error) => warn!(%error, "node watch failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, rv: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.resource_version = Some(rv.into());
        n
    }

    fn names(events: &mut mpsc::UnboundedReceiver<watcher::Event<Node>>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(e) = events.try_recv() {
            out.push(match e {
                watcher::Event::Init => "init".to_string(),
                watcher::Event::InitApply(n) => format!("list:{}", name_of(&n)),
                watcher::Event::InitDone => "done".to_string(),
                watcher::Event::Apply(n) => format!("apply:{}", name_of(&n)),
                watcher::Event::Delete(n) => format!("delete:{}", name_of(&n)),
            });
        }
        out
    }

    #[test]
    fn a_late_subscriber_gets_the_cache_as_a_list_then_every_event() {
        let feed = NodeFeed::new();
        assert!(!*feed.synced().borrow());
        feed.apply(watcher::Event::Init);
        feed.apply(watcher::Event::InitApply(node("a", "1")));
        feed.apply(watcher::Event::InitApply(node("b", "2")));
        feed.apply(watcher::Event::InitDone);
        feed.apply(watcher::Event::Delete(node("a", "3")));
        assert!(*feed.synced().borrow());
        let mut rx = feed.subscribe();
        assert_eq!(names(&mut rx), ["init", "list:b", "done"]);
        feed.apply(watcher::Event::Apply(node("c", "4")));
        assert_eq!(names(&mut rx), ["apply:c"]);
        assert_eq!(feed.len(), 2);
    }

    #[test]
    fn a_subscriber_during_a_list_gets_what_was_listed_so_far_then_the_rest() {
        let feed = NodeFeed::new();
        feed.apply(watcher::Event::Init);
        feed.apply(watcher::Event::InitApply(node("a", "1")));
        let mut rx = feed.subscribe();
        feed.apply(watcher::Event::InitApply(node("b", "2")));
        feed.apply(watcher::Event::InitDone);
        assert_eq!(names(&mut rx), ["init", "list:a", "list:b", "done"]);
    }

    #[test]
    fn a_relist_replaces_the_cache_and_stays_synced() {
        let feed = NodeFeed::new();
        for e in [
            watcher::Event::Init,
            watcher::Event::InitApply(node("a", "1")),
            watcher::Event::InitDone,
        ] {
            feed.apply(e);
        }
        let mut rx = feed.subscribe();
        names(&mut rx);
        // The API server came back without "a" and with "b".
        feed.apply(watcher::Event::Init);
        assert!(*feed.synced().borrow(), "synced through a relist");
        assert_eq!(feed.len(), 1, "the old cache serves until the list ends");
        feed.apply(watcher::Event::InitApply(node("b", "9")));
        feed.apply(watcher::Event::InitDone);
        assert_eq!(names(&mut rx), ["init", "list:b", "done"]);
        assert_eq!(feed.len(), 1);
        let nothing = NodeFeed::new().subscribe().try_recv();
        assert!(nothing.is_err(), "an unsynced feed sends nothing up front");
    }

    #[test]
    fn a_dropped_subscriber_is_forgotten() {
        let feed = NodeFeed::new();
        drop(feed.subscribe());
        feed.apply(watcher::Event::Apply(node("a", "1")));
        assert!(feed.lock().subscriber.is_none());
    }
}

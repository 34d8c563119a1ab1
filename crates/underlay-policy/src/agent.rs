//! The async runtime around the engine: Kubernetes watchers that feed the
//! index, a sync loop that programs each change, a periodic repair, and the
//! attach / detach / restore entry points the node agent calls.
//!
//! While the API server is unreachable nothing is removed from the index:
//! the last known policy stays enforced, and a relist after reconnecting
//! replaces the cache (so changes missed meanwhile take effect).

use crate::convert;
use crate::dataplane::Dataplane;
use crate::engine::{Engine, Status};
use crate::model::{Endpoint, Pod, PodKey};
use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

/// Why an endpoint could not be attached.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AttachError {
    /// Retry later: the API server or the policy cache is not available.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

/// Timings of the runtime.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often the node's rules and sets are re-read and repaired.
    pub repair_interval: Duration,
    /// Changes arriving within this window are programmed together.
    pub batch_delay: Duration,
    /// How long attach waits for the first full sync with the API server.
    pub attach_wait: Duration,
    /// Timeout of the pod lookup attach makes when the cache lacks the pod.
    pub fetch_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            repair_interval: Duration::from_secs(30),
            batch_delay: Duration::from_millis(20),
            attach_wait: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// The policy side of one node agent.
pub struct PolicyAgent<D: Dataplane> {
    engine: Arc<Mutex<Engine<D>>>,
    client: Option<Client>,
    options: Options,
    kick: Arc<Notify>,
    /// Which of (namespaces, pods, policies) had their first full list.
    listed: watch::Sender<[bool; 3]>,
    status: Arc<std::sync::Mutex<Status>>,
}

impl<D: Dataplane> PolicyAgent<D> {
    /// `client: None` runs without an API server: no policies, every
    /// endpoint open (standalone mode).
    pub fn new(engine: Engine<D>, client: Option<Client>, options: Options) -> Arc<Self> {
        let listed = if client.is_some() {
            [false; 3]
        } else {
            [true; 3]
        };
        Arc::new(PolicyAgent {
            engine: Arc::new(Mutex::new(engine)),
            client,
            options,
            kick: Arc::new(Notify::new()),
            listed: watch::Sender::new(listed),
            status: Arc::new(std::sync::Mutex::new(Status::default())),
        })
    }

    /// The engine, for tests and benchmarks that drive it directly.
    pub fn engine(&self) -> Arc<Mutex<Engine<D>>> {
        self.engine.clone()
    }

    /// True once every watcher delivered its first full list.
    pub fn cache_ready(&self) -> bool {
        self.listed.borrow().iter().all(|b| *b)
    }

    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Starts the watchers, the sync loop and the repair timer.
    pub fn start(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(client) = &self.client {
            tasks.push(tokio::spawn(watch_namespaces(self.clone(), client.clone())));
            tasks.push(tokio::spawn(watch_pods(self.clone(), client.clone())));
            tasks.push(tokio::spawn(watch_policies(self.clone(), client.clone())));
        }
        let me = self.clone();
        tasks.push(tokio::spawn(async move { me.sync_loop().await }));
        let me = self.clone();
        tasks.push(tokio::spawn(async move { me.repair_loop().await }));
        tasks
    }

    async fn sync_loop(self: Arc<Self>) {
        let mut listed = self.listed.subscribe();
        loop {
            tokio::select! {
                _ = self.kick.notified() => {}
                r = listed.changed() => if r.is_err() { return; },
            }
            if !self.cache_ready() {
                // Never program a partial view: the previous run's rules
                // stay in force until the cache is complete.
                continue;
            }
            tokio::time::sleep(self.options.batch_delay).await;
            if let Err(e) = self.sync_now(false).await {
                warn!(error = %e, "policy sync failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.kick.notify_one();
            }
        }
    }

    async fn repair_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.options.repair_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if !self.cache_ready() {
                continue;
            }
            if let Err(e) = self.sync_now(true).await {
                warn!(error = %e, "policy repair failed; retrying at the next interval");
            }
        }
    }

    /// Programs the index now (in a blocking thread: the tools are
    /// processes).
    pub async fn sync_now(&self, repair: bool) -> Result<(), String> {
        let engine = self.engine.clone();
        let status = self.status.clone();
        tokio::task::spawn_blocking(move || {
            let mut e = engine.blocking_lock();
            let r = if repair {
                e.repair().map(drop)
            } else if e.dirty() || !e.status().synced {
                e.sync().map(drop)
            } else {
                Ok(())
            };
            if let Ok(mut s) = status.lock() {
                *s = e.status();
            }
            r.map_err(|err| err.to_string())
        })
        .await
        .map_err(|e| format!("policy sync task failed: {e}"))?
    }

    async fn wait_ready(&self) -> Result<(), AttachError> {
        let mut rx = self.listed.subscribe();
        let wait = rx.wait_for(|l| l.iter().all(|b| *b));
        match tokio::time::timeout(self.options.attach_wait, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(AttachError::Unavailable(
                "the policy cache has not synced with the API server yet; retry shortly".into(),
            )),
        }
    }

    /// Adds an endpoint and returns once its chains are programmed.
    pub async fn attach(&self, ep: Endpoint) -> Result<(), AttachError> {
        self.wait_ready().await?;
        let known = self.engine.lock().await.index().pod(&ep.pod).is_some();
        if !known {
            let pod = self.fetch_pod(&ep.pod).await?;
            self.engine.lock().await.change(|i| i.apply_pod(pod));
        }
        self.engine
            .lock()
            .await
            .change(|i| i.apply_endpoint(ep.clone()));
        self.sync_now(false).await.map_err(|e| {
            AttachError::Failed(format!("programming policy for {} failed: {e}", ep.pod))
        })?;
        debug!(pod = %ep.pod, interface = %ep.interface, "endpoint policy programmed");
        Ok(())
    }

    async fn fetch_pod(&self, key: &PodKey) -> Result<Pod, AttachError> {
        let Some(client) = &self.client else {
            // Standalone: no policies exist, the endpoint only needs a pod.
            return Ok(Pod::new(&key.namespace, &key.name));
        };
        let api: Api<core::Pod> = Api::namespaced(client.clone(), &key.namespace);
        match tokio::time::timeout(self.options.fetch_timeout, api.get_opt(&key.name)).await {
            Ok(Ok(Some(p))) => convert::pod(&p).map_err(|e| AttachError::Failed(e.to_string())),
            Ok(Ok(None)) => Err(AttachError::Unavailable(format!(
                "pod {key} is not known to the API server yet; retry shortly"
            ))),
            Ok(Err(e)) => Err(AttachError::Unavailable(format!(
                "cannot read pod {key} from the API server ({e}); retry when it is reachable"
            ))),
            Err(_) => Err(AttachError::Unavailable(format!(
                "reading pod {key} from the API server timed out; retry when it is reachable"
            ))),
        }
    }

    /// Removes an endpoint and its chains.
    pub async fn detach(&self, interface: &str) {
        self.engine
            .lock()
            .await
            .change(|i| i.delete_endpoint(interface));
        if self.cache_ready()
            && let Err(e) = self.sync_now(false).await
        {
            warn!(error = %e, interface, "removing endpoint policy failed; the next sync retries");
        }
    }

    /// Loads the endpoints a previous run attached. Their rules are still
    /// on the node; the first sync after the cache is complete adopts them.
    pub async fn restore(&self, eps: Vec<Endpoint>) -> Result<(), AttachError> {
        let mut engine = self.engine.lock().await;
        engine.change(|i| {
            for ep in eps {
                i.apply_endpoint(ep);
            }
        });
        drop(engine);
        self.kick.notify_one();
        Ok(())
    }

    fn mark_listed(&self, which: usize) {
        self.listed.send_modify(|l| l[which] = true);
    }

    fn kick(&self) {
        self.kick.notify_one();
    }
}

async fn watch_namespaces<D: Dataplane>(agent: Arc<PolicyAgent<D>>, client: Client) {
    let api: Api<core::Namespace> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut buffer = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(o)) => match convert::namespace(&o) {
                Ok(n) => buffer.push(n),
                Err(e) => warn!(error = %e, "ignoring namespace"),
            },
            Ok(Event::InitDone) => {
                let all = std::mem::take(&mut buffer);
                info!(count = all.len(), "namespaces listed");
                agent
                    .engine
                    .lock()
                    .await
                    .change(|i| i.replace_namespaces(all));
                agent.mark_listed(0);
                agent.kick();
            }
            Ok(Event::Apply(o)) => match convert::namespace(&o) {
                Ok(n) => {
                    agent.engine.lock().await.change(|i| i.apply_namespace(n));
                    agent.kick();
                }
                Err(e) => warn!(error = %e, "ignoring namespace"),
            },
            Ok(Event::Delete(o)) => {
                if let Some(name) = o.metadata.name {
                    agent
                        .engine
                        .lock()
                        .await
                        .change(|i| i.delete_namespace(&name));
                    agent.kick();
                }
            }
            Err(e) => warn!(error = %e, "namespace watch failed; keeping the last known policy"),
        }
    }
    error!("namespace watch ended");
}

async fn watch_pods<D: Dataplane>(agent: Arc<PolicyAgent<D>>, client: Client) {
    let api: Api<core::Pod> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut buffer = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => buffer.clear(),
            Ok(Event::InitApply(o)) => match convert::pod(&o) {
                Ok(p) => buffer.push(p),
                Err(e) => warn!(error = %e, "ignoring pod"),
            },
            Ok(Event::InitDone) => {
                let all = std::mem::take(&mut buffer);
                info!(count = all.len(), "pods listed");
                agent.engine.lock().await.change(|i| i.replace_pods(all));
                agent.mark_listed(1);
                agent.kick();
            }
            Ok(Event::Apply(o)) => match convert::pod(&o) {
                Ok(p) => {
                    agent.engine.lock().await.change(|i| i.apply_pod(p));
                    agent.kick();
                }
                Err(e) => warn!(error = %e, "ignoring pod"),
            },
            Ok(Event::Delete(o)) => {
                if let Ok(key) = convert::pod_key(&o) {
                    agent.engine.lock().await.change(|i| i.delete_pod(&key));
                    agent.kick();
                }
            }
            Err(e) => warn!(error = %e, "pod watch failed; keeping the last known policy"),
        }
    }
    error!("pod watch ended");
}

async fn watch_policies<D: Dataplane>(agent: Arc<PolicyAgent<D>>, client: Client) {
    let api: Api<net::NetworkPolicy> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut buffer = Vec::new();
    let mut broken = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => {
                buffer.clear();
                broken.clear();
            }
            Ok(Event::InitApply(o)) => match convert::policy(&o) {
                Ok(p) => buffer.push(p),
                Err(e) => {
                    error!(error = %e, "networkpolicy not understood; keeping its previous version");
                    if let (Some(ns), Some(name)) = (o.metadata.namespace, o.metadata.name) {
                        broken.push(PodKey::new(ns, name));
                    }
                }
            },
            Ok(Event::InitDone) => {
                let mut all = std::mem::take(&mut buffer);
                info!(count = all.len(), "networkpolicies listed");
                let mut engine = agent.engine.lock().await;
                // A policy we cannot read keeps its previous version rather
                // than disappearing (which would open its pods).
                for key in broken.drain(..) {
                    if let Some(p) = engine.index().policy(&key) {
                        all.push(p.as_ref().clone());
                    }
                }
                engine.change(|i| i.replace_policies(all));
                drop(engine);
                agent.mark_listed(2);
                agent.kick();
            }
            Ok(Event::Apply(o)) => match convert::policy(&o) {
                Ok(p) => {
                    agent.engine.lock().await.change(|i| i.apply_policy(p));
                    agent.kick();
                }
                Err(e) => {
                    error!(error = %e, "networkpolicy not understood; keeping its previous version")
                }
            },
            Ok(Event::Delete(o)) => {
                if let (Some(ns), Some(name)) = (o.metadata.namespace, o.metadata.name) {
                    let key = PodKey::new(ns, name);
                    agent.engine.lock().await.change(|i| i.delete_policy(&key));
                    agent.kick();
                }
            }
            Err(e) => {
                warn!(error = %e, "networkpolicy watch failed; keeping the last known policy")
            }
        }
    }
    error!("networkpolicy watch ended");
}

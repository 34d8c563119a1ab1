//! The async runtime around the engine: Kubernetes watchers that feed the
//! index, a sync loop that programs each change, a periodic repair, and the
//! attach / detach / restore entry points the node agent calls.
//!
//! While the API server is unreachable nothing is removed from the index:
//! the last known policy stays enforced, and a relist after reconnecting
//! replaces the cache (so changes missed meanwhile take effect).

use crate::cluster::{ClusterPolicy, Node};
use crate::convert;
use crate::dataplane::Dataplane;
use crate::denials::consumer::{Consumer, NameFn};
use crate::denials::{Denial, Denials};
use crate::engine::{Engine, Status};
use crate::index::Index;
use crate::kernel_trace::Kernel;
use crate::model::{Attachment, Endpoint, Namespace, Pod, PodKey, Policy};
use crate::trace::{FlowTrace, Query};
use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
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

/// Why a flow could not be traced.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("could not read the node's rules and sets: {0}")]
    Read(#[from] crate::dataplane::DataplaneError),
    #[error("could not interpret the node's rules: {0}")]
    Kernel(#[from] crate::kernel_trace::KernelError),
    #[error("the trace task failed: {0}")]
    Task(String),
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
    /// Program nothing until [`PolicyAgent::restore`] has handed over the
    /// endpoints a previous run attached: a sync before it would find their
    /// rules unexpected and remove them.
    pub await_restore: bool,
    /// The NFLOG group the deny rules log to, read into denial records by
    /// the agent's own consumer; `None` reads nothing.
    pub nflog_group: Option<u16>,
    /// The network namespace to read it in (`None`: the agent's own; the
    /// tests' node namespaces otherwise).
    pub nflog_netns: Option<String>,
    /// Bounds of the denial records.
    pub denial_limits: crate::denials::Limits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            repair_interval: Duration::from_secs(30),
            batch_delay: Duration::from_millis(20),
            attach_wait: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            await_restore: false,
            nflog_group: None,
            nflog_netns: None,
            denial_limits: crate::denials::Limits::default(),
        }
    }
}

/// The policy side of one node agent.
pub struct PolicyAgent<D: Dataplane> {
    engine: Arc<Mutex<Engine<D>>>,
    client: Option<Client>,
    options: Options,
    kick: Arc<Notify>,
    /// Which of (namespaces, pods, policies, -, cluster policies, nodes) had
    /// their first full list, and (slot [`RESTORED`]) whether the previous
    /// run's endpoints were restored.
    listed: watch::Sender<[bool; 6]>,
    status: Arc<std::sync::Mutex<Status>>,
    /// Publishes Events on objects the agent cannot understand.
    recorder: Option<Recorder>,
    denials: Arc<Denials>,
}

impl<D: Dataplane> PolicyAgent<D> {
    /// `client: None` runs without an API server: no policies, every
    /// endpoint open (standalone mode).
    pub fn new(engine: Engine<D>, client: Option<Client>, options: Options) -> Arc<Self> {
        let cache = client.is_none();
        let listed = [cache, cache, cache, !options.await_restore, cache, cache];
        let recorder = client.as_ref().map(|c| {
            Recorder::new(
                c.clone(),
                Reporter {
                    controller: "underlay-agent".into(),
                    instance: None,
                },
            )
        });
        let denials = Arc::new(Denials::new(
            options.denial_limits,
            engine.metrics().clone(),
        ));
        Arc::new(PolicyAgent {
            denials,
            engine: Arc::new(Mutex::new(engine)),
            client,
            options,
            kick: Arc::new(Notify::new()),
            listed: watch::Sender::new(listed),
            status: Arc::new(std::sync::Mutex::new(Status::default())),
            recorder,
        })
    }

    /// The engine, for tests and benchmarks that drive it directly.
    pub fn engine(&self) -> Arc<Mutex<Engine<D>>> {
        self.engine.clone()
    }

    /// True once every watcher delivered its first full list (and the
    /// endpoints were restored, when that is awaited).
    pub fn cache_ready(&self) -> bool {
        self.listed.borrow().iter().all(|b| *b)
    }

    pub fn status(&self) -> Status {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Which policies decide each direction of `ep`'s pod, in evaluation
    /// order (see [`crate::describe::isolation`]); `None` while the pod's
    /// endpoint is not attached here.
    pub async fn isolation(&self, ep: &Endpoint) -> Option<crate::describe::Isolation> {
        let engine = self.engine.lock().await;
        let index = engine.index();
        let attached = index.endpoint(&ep.interface)?;
        Some(crate::describe::isolation(index, attached))
    }

    /// The verdict for one flow at this node's pods, from the model and
    /// from the kernel's rules, compared (see [`crate::trace`]). Both are
    /// read under the engine's lock, so no sync runs in between; the
    /// kernel is read in a blocking thread (the tools are processes).
    pub async fn trace(&self, query: Query) -> Result<FlowTrace, TraceError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut e = engine.blocking_lock();
            let saved = e.dataplane().save_state()?;
            let host = e.dataplane().host_addresses()?;
            let kernel = Kernel::parse([&saved.filter[0], &saved.filter[1]], &saved.sets)?;
            Ok(crate::trace::trace(e.index(), &kernel, &host, &query)?)
        })
        .await
        .map_err(|e| TraceError::Task(e.to_string()))?
    }

    /// The recent denial records (oldest first), then, with `follow`, new
    /// ones as they are seen; only pods of `namespace` when given.
    pub fn denials(
        &self,
        namespace: Option<String>,
        follow: bool,
    ) -> impl futures::Stream<Item = Denial> + Send + 'static {
        self.denials.stream(namespace, follow)
    }

    /// The denial records themselves, for tests and benchmarks.
    pub fn denial_records(&self) -> Arc<Denials> {
        self.denials.clone()
    }

    /// Starts the NFLOG consumer when a group is configured; the returned
    /// task owns it (ending the task stops the reader). A group the kernel
    /// will not bind is logged and leaves the agent without denial records.
    fn start_denials(&self) -> Option<JoinHandle<()>> {
        let group = self.options.nflog_group?;
        let name = isolating_policies(self.engine.clone());
        match Consumer::start(
            self.options.nflog_netns.as_deref(),
            group,
            self.denials.clone(),
            name,
        ) {
            Ok(consumer) => Some(tokio::spawn(async move {
                let _consumer = consumer;
                std::future::pending::<()>().await
            })),
            Err(e) => {
                warn!(group, error = %e, "cannot read denied packets from nflog; no denial records");
                None
            }
        }
    }

    /// Starts the watchers, the sync loop, the repair timer and the NFLOG
    /// consumer.
    pub fn start(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        tasks.extend(self.start_denials());
        if let Some(client) = &self.client {
            tasks.push(tokio::spawn(watch::<Namespaces, D>(
                self.clone(),
                client.clone(),
            )));
            tasks.push(tokio::spawn(watch::<Pods, D>(self.clone(), client.clone())));
            tasks.push(tokio::spawn(watch::<Policies, D>(
                self.clone(),
                client.clone(),
            )));
            tasks.push(tokio::spawn(watch::<ClusterPolicies, D>(
                self.clone(),
                client.clone(),
            )));
            tasks.push(tokio::spawn(watch::<Nodes, D>(
                self.clone(),
                client.clone(),
            )));
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
            } else if self.engine.lock().await.sets_awaiting_destroy() > 0 {
                // The kernel lets go of a deleted rule's sets within
                // moments; come back for them.
                let me = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(SETS_RETRY).await;
                    me.kick.notify_one();
                });
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
            } else if e.dirty() || !e.status().synced || e.sets_awaiting_destroy() > 0 {
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

    /// Removes `owner`'s endpoint on `interface` and its chains. An
    /// endpoint a newer attachment holds on the same interface (a new
    /// sandbox of the pod) is left in force.
    pub async fn detach(&self, interface: &str, owner: &Attachment) {
        self.engine
            .lock()
            .await
            .change(|i| i.delete_endpoint(interface, owner));
        if self.cache_ready()
            && let Err(e) = self.sync_now(false).await
        {
            warn!(error = %e, interface, %owner, "removing endpoint policy failed; the next sync retries");
        }
    }

    /// Loads the endpoints a previous run attached and returns once the
    /// cache is complete and they are programmed (their rules are still on
    /// the node; this first sync adopts them).
    ///
    /// With an API server, an endpoint whose pod the cache does not hold
    /// is denied until the pod shows up. Standalone, no policy exists and
    /// each endpoint gets a bare pod, as attach gives it.
    pub async fn restore(&self, eps: Vec<Endpoint>) -> Result<(), AttachError> {
        let standalone = self.client.is_none();
        let mut engine = self.engine.lock().await;
        engine.change(|i| {
            for ep in eps {
                if standalone && i.pod(&ep.pod).is_none() {
                    i.apply_pod(Pod::new(&ep.pod.namespace, &ep.pod.name));
                }
                i.apply_endpoint(ep);
            }
        });
        drop(engine);
        self.mark_listed(RESTORED);
        self.kick.notify_one();
        // Ready must mean an Attach succeeds now: wait for the complete
        // cache (however long the API server takes), then program it.
        let mut rx = self.listed.subscribe();
        rx.wait_for(|l| l.iter().all(|b| *b))
            .await
            .map_err(|_| AttachError::Unavailable("the policy watchers stopped".into()))?;
        self.sync_now(false)
            .await
            .map_err(|e| AttachError::Unavailable(format!("programming restored endpoints: {e}")))
    }

    fn mark_listed(&self, which: usize) {
        self.listed.send_modify(|l| l[which] = true);
    }

    fn kick(&self) {
        self.kick.notify_one();
    }
}

/// Names the policies that isolate a pod in a direction, from the
/// engine's model under its lock (called on the consumer's thread).
fn isolating_policies<D: Dataplane>(engine: Arc<Mutex<Engine<D>>>) -> NameFn {
    Box::new(move |pod, direction, pod_ip| {
        let engine = engine.blocking_lock();
        let index = engine.index();
        let Some(ep) = crate::denials::endpoint_of(index, pod, pod_ip) else {
            return (pod.clone(), String::new());
        };
        let isolation = crate::describe::isolation(index, ep);
        if !isolation.pod_known {
            let why = "pod not in the policy cache: denied until it is";
            return (ep.pod.clone(), why.into());
        }
        let side = match direction {
            crate::model::Direction::Ingress => isolation.ingress,
            crate::model::Direction::Egress => isolation.egress,
        };
        (ep.pod.clone(), side.policies.join(", "))
    })
}

/// The entry of [`PolicyAgent::listed`] that [`PolicyAgent::restore`] sets.
const RESTORED: usize = 3;

/// How long after a sync that left sets for later the next one runs.
const SETS_RETRY: Duration = Duration::from_millis(500);

/// One kind of Kubernetes object the agent watches, and how it feeds the
/// index. A single generic [`watch`] loop serves every kind; a kind only
/// says how to convert, apply, delete and replace its objects.
trait Kind: Send + Sync + 'static {
    type Object: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static;
    type Domain: Send;
    /// For logs.
    const NAME: &'static str;
    /// Which entry of [`PolicyAgent::listed`] its first full list sets.
    const SLOT: usize;
    fn convert(o: &Self::Object) -> convert::Result<Self::Domain>;
    fn apply(index: &mut Index, d: Self::Domain);
    fn delete(index: &mut Index, o: &Self::Object);
    fn replace(index: &mut Index, all: Vec<Self::Domain>);
    /// The version the index holds, kept when a relisted object cannot be
    /// understood: a pod or namespace must not change which policies apply.
    fn previous(index: &Index, o: &Self::Object) -> Option<Self::Domain>;
    /// What to enforce instead of an object that cannot be understood,
    /// whatever the index held (a policy: isolation of what it names).
    /// `None` keeps [`Kind::previous`].
    fn fail_closed(_o: &Self::Object) -> Option<Self::Domain> {
        None
    }
    /// A kind the cluster may not serve (its CRD not installed): a list
    /// answered 404 counts as an empty first list, so the agent does not
    /// wait for it; the watcher keeps retrying and takes the objects in
    /// when the kind appears.
    const OPTIONAL: bool = false;
    /// Reports on the object in its status, if the kind has one the
    /// agent writes (in the background; failures are logged).
    fn report(_client: &Client, _o: &Self::Object) {}
}

struct Namespaces;
struct Pods;
struct Policies;
struct ClusterPolicies;
struct Nodes;

impl Kind for Namespaces {
    type Object = core::Namespace;
    type Domain = Namespace;
    const NAME: &'static str = "namespace";
    const SLOT: usize = 0;
    fn convert(o: &core::Namespace) -> convert::Result<Namespace> {
        convert::namespace(o)
    }
    fn apply(index: &mut Index, d: Namespace) {
        index.apply_namespace(d)
    }
    fn delete(index: &mut Index, o: &core::Namespace) {
        if let Some(name) = &o.metadata.name {
            index.delete_namespace(name)
        }
    }
    fn replace(index: &mut Index, all: Vec<Namespace>) {
        index.replace_namespaces(all)
    }
    fn previous(index: &Index, o: &core::Namespace) -> Option<Namespace> {
        index.namespace(o.metadata.name.as_deref()?).cloned()
    }
}

impl Kind for Pods {
    type Object = core::Pod;
    type Domain = Pod;
    const NAME: &'static str = "pod";
    const SLOT: usize = 1;
    fn convert(o: &core::Pod) -> convert::Result<Pod> {
        convert::pod(o)
    }
    fn apply(index: &mut Index, d: Pod) {
        index.apply_pod(d)
    }
    fn delete(index: &mut Index, o: &core::Pod) {
        if let Ok(key) = convert::pod_key(o) {
            index.delete_pod(&key)
        }
    }
    fn replace(index: &mut Index, all: Vec<Pod>) {
        index.replace_pods(all)
    }
    fn previous(index: &Index, o: &core::Pod) -> Option<Pod> {
        index.pod(&convert::pod_key(o).ok()?).cloned()
    }
}

fn policy_key(o: &net::NetworkPolicy) -> Option<PodKey> {
    Some(PodKey::new(
        o.metadata.namespace.as_deref()?,
        o.metadata.name.as_deref()?,
    ))
}

impl Kind for Policies {
    type Object = net::NetworkPolicy;
    type Domain = Policy;
    const NAME: &'static str = "networkpolicy";
    const SLOT: usize = 2;
    fn convert(o: &net::NetworkPolicy) -> convert::Result<Policy> {
        convert::policy(o)
    }
    fn apply(index: &mut Index, d: Policy) {
        index.apply_policy(d)
    }
    fn delete(index: &mut Index, o: &net::NetworkPolicy) {
        if let Some(key) = policy_key(o) {
            index.delete_policy(&key)
        }
    }
    fn replace(index: &mut Index, all: Vec<Policy>) {
        index.replace_policies(all)
    }
    fn previous(index: &Index, o: &net::NetworkPolicy) -> Option<Policy> {
        index.policy(&policy_key(o)?).map(|p| p.as_ref().clone())
    }
    fn fail_closed(o: &net::NetworkPolicy) -> Option<Policy> {
        convert::isolating(o)
    }
}

impl Kind for ClusterPolicies {
    type Object = underlay_api::cnp::ClusterNetworkPolicy;
    type Domain = ClusterPolicy;
    const NAME: &'static str = "clusternetworkpolicy";
    const SLOT: usize = 4;
    const OPTIONAL: bool = true;
    fn convert(o: &Self::Object) -> convert::Result<ClusterPolicy> {
        convert::cluster_policy(o).map(|c| c.policy)
    }
    fn apply(index: &mut Index, d: ClusterPolicy) {
        index.apply_cluster_policy(d)
    }
    fn delete(index: &mut Index, o: &Self::Object) {
        if let Some(name) = &o.metadata.name {
            index.delete_cluster_policy(name)
        }
    }
    fn replace(index: &mut Index, all: Vec<ClusterPolicy>) {
        index.replace_cluster_policies(all)
    }
    fn previous(index: &Index, o: &Self::Object) -> Option<ClusterPolicy> {
        index
            .cluster_policy(o.metadata.name.as_deref()?)
            .map(|p| p.as_ref().clone())
    }
    fn report(client: &Client, o: &Self::Object) {
        report_cluster_policy(client, o)
    }
}

impl Kind for Nodes {
    type Object = core::Node;
    type Domain = Node;
    const NAME: &'static str = "node";
    const SLOT: usize = 5;
    fn convert(o: &core::Node) -> convert::Result<Node> {
        convert::node(o)
    }
    fn apply(index: &mut Index, d: Node) {
        index.apply_node(d)
    }
    fn delete(index: &mut Index, o: &core::Node) {
        if let Some(name) = &o.metadata.name {
            index.delete_node(name)
        }
    }
    fn replace(index: &mut Index, all: Vec<Node>) {
        index.replace_nodes(all)
    }
    fn previous(index: &Index, o: &core::Node) -> Option<Node> {
        index.node(o.metadata.name.as_deref()?).cloned()
    }
}

/// Has `K` report on `o` (see [`Kind::report`]); returns `o`.
fn reported<'a, K: Kind>(client: &Client, o: &'a K::Object) -> &'a K::Object {
    K::report(client, o);
    o
}

/// Writes a ClusterNetworkPolicy's `Accepted` condition when it differs
/// from what the agent has to say about the policy.
fn report_cluster_policy(client: &Client, o: &underlay_api::cnp::ClusterNetworkPolicy) {
    let Some(patch) = crate::status::cluster_policy_patch(o, &convert::cluster_policy(o)) else {
        return;
    };
    let Some(name) = o.metadata.name.clone() else {
        return;
    };
    let api: Api<underlay_api::cnp::ClusterNetworkPolicy> = Api::all(client.clone());
    tokio::spawn(async move {
        let params = kube::api::PatchParams::default();
        if let Err(e) = api
            .patch_status(&name, &params, &kube::api::Patch::Merge(&patch))
            .await
        {
            warn!(name, error = %e, "cannot write the status of a clusternetworkpolicy");
        }
    });
}

/// True when a watch error says the kind is not served at all.
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// Logs an object the agent cannot understand, and tells its owner with a
/// Warning Event on it; returns what to enforce instead, if anything.
fn not_understood<K: Kind, D: Dataplane>(
    agent: &Arc<PolicyAgent<D>>,
    o: &K::Object,
    error: &convert::Error,
) -> Option<K::Domain> {
    let instead = K::fail_closed(o);
    if instead.is_some() {
        error!(kind = K::NAME, %error, "object not understood; isolating the pods it names");
    } else {
        error!(kind = K::NAME, %error, "object not understood; keeping its last understood version");
    }
    let note = if instead.is_some() {
        format!("{error}; until then its pods are isolated in the directions it names")
    } else {
        error.to_string()
    };
    let reference = kube::Resource::object_ref(o, &());
    let agent = agent.clone();
    tokio::spawn(async move {
        let Some(recorder) = &agent.recorder else {
            return;
        };
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: "NotUnderstood".into(),
            note: Some(note),
            action: "Enforce".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(kind = K::NAME, error = %e, "cannot record an event on an object not understood");
        }
    });
    instead
}

/// Watches one kind and feeds the index: the first full list (and every
/// relist after a broken watch) replaces the kind's objects, events apply
/// and delete one object each. Errors never empty the index.
async fn watch<K: Kind, D: Dataplane>(agent: Arc<PolicyAgent<D>>, client: Client) {
    let api: Api<K::Object> = Api::all(client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut buffer = Vec::new();
    let mut unreadable = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => {
                buffer.clear();
                unreadable.clear();
            }
            Ok(Event::InitApply(o)) => match K::convert(reported::<K>(&client, &o)) {
                Ok(d) => buffer.push(d),
                Err(e) => match not_understood::<K, D>(&agent, &o, &e) {
                    Some(d) => buffer.push(d),
                    None => unreadable.push(o),
                },
            },
            Ok(Event::InitDone) => {
                let mut all = std::mem::take(&mut buffer);
                info!(kind = K::NAME, count = all.len(), "objects listed");
                let mut engine = agent.engine.lock().await;
                all.extend(
                    unreadable
                        .drain(..)
                        .filter_map(|o| K::previous(engine.index(), &o)),
                );
                engine.change(|i| K::replace(i, all));
                drop(engine);
                agent.mark_listed(K::SLOT);
                agent.kick();
            }
            Ok(Event::Apply(o)) => match K::convert(reported::<K>(&client, &o)) {
                Ok(d) => {
                    agent.engine.lock().await.change(|i| K::apply(i, d));
                    agent.kick();
                }
                Err(e) => {
                    if let Some(d) = not_understood::<K, D>(&agent, &o, &e) {
                        agent.engine.lock().await.change(|i| K::apply(i, d));
                        agent.kick();
                    }
                }
            },
            Ok(Event::Delete(o)) => {
                agent.engine.lock().await.change(|i| K::delete(i, &o));
                agent.kick();
            }
            Err(e) if K::OPTIONAL && not_served(&e) => {
                if !agent.listed.borrow()[K::SLOT] {
                    info!(
                        kind = K::NAME,
                        "not served by the API server (CRD not installed); none in force"
                    );
                    agent
                        .engine
                        .lock()
                        .await
                        .change(|i| K::replace(i, Vec::new()));
                    agent.mark_listed(K::SLOT);
                    agent.kick();
                }
            }
            Err(e) => {
                warn!(kind = K::NAME, error = %e, "watch failed; keeping the last known policy")
            }
        }
    }
    error!(kind = K::NAME, "watch ended");
}

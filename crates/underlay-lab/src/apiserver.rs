//! The embedded Kubernetes API server.
//!
//! A real HTTP server that kube-rs clients, `kubectl` and the tests talk to
//! through an ordinary kubeconfig (HTTPS on a loopback address with a CA made
//! at start and a bearer token; plain HTTP on request), and that behaves like kube-apiserver for what underlay and
//! its users do:
//!
//! - core/v1 Namespaces, Nodes, Pods (with `status` and `binding`), Events,
//!   ConfigMaps, Secrets, ServiceAccounts; networking.k8s.io/v1
//!   NetworkPolicies; coordination.k8s.io/v1 Leases; events.k8s.io/v1 Events
//!   (a second view of the core Events, as in kube-apiserver);
//!   apiextensions.k8s.io/v1 CustomResourceDefinitions, whose custom
//!   resources are then served generically (schema pruning, defaulting and
//!   validation, status subresource); and what deploying underlay needs:
//!   apps/v1 Deployments and DaemonSets (with `status`),
//!   rbac.authorization.k8s.io/v1 ClusterRoles, ClusterRoleBindings, Roles
//!   and RoleBindings, policy/v1 PodDisruptionBudgets (with `status`) and
//!   scheduling.k8s.io/v1 PriorityClasses, with `system-node-critical` and
//!   `system-cluster-critical` built in (see `kinds.rs`).
//! - discovery; OpenAPI v3 documents (`openapi.rs`) and the OpenAPI v2
//!   document (`openapi_v2.rs`, as JSON or the gnostic protobuf kubectl
//!   reads, `openapi_v2_pb.rs`), both with a real schema for every kind: a
//!   built-in kind's is traced from the k8s-openapi type the server decodes
//!   it with (`reflect.rs`), marked with the strategic-merge keys the server
//!   merges by; a custom resource's is its CRD's. That is what `kubectl
//!   explain`, kubectl's patch computation and its client-side validation of
//!   a `kind: List` read. Server-side printing (Tables) for `kubectl get`.
//! - `fieldValidation` (Strict, Warn, Ignore) for unknown fields of built-in
//!   kinds and custom resources; `dryRun=All` (query or DeleteOptions) on
//!   every write: defaulted, validated and answered, nothing stored.
//! - uid, creationTimestamp, generation, one cluster-wide monotonic
//!   resourceVersion; optimistic concurrency (409 Conflict); Status errors
//!   (404, 409, 410, 422, ...) shaped like the real server's.
//! - list with label selectors (all operators), field selectors, and
//!   consistent `limit`/`continue` paging; watch with resume,
//!   bookmarks, streaming lists (`sendInitialEvents`), `timeoutSeconds` and
//!   410 Expired when the version is older than the retained history.
//! - JSON patch, merge patch, strategic merge patch and server-side apply with
//!   `managedFields` (see [`apply`](self) module docs in `apply.rs`).
//! - networking defaulting and validation (see `validation.rs`).
//! - bearer-token authentication (401 for anything else).
//! - fault injection ([`Faults`]), snapshots, and a bounded watch fan-out.
//!
//! # Deliberate differences from kube-apiserver
//!
//! - One server plays the controllers a cluster would run beside it: every
//!   new namespace gets its `default` ServiceAccount at once; deleting a
//!   namespace deletes its contents and the namespace immediately (the
//!   response still shows it `Terminating`); deleting an object deletes the
//!   objects it solely owns (ownerReferences) unless `propagationPolicy` is
//!   `Orphan`. Pods bound to a node are deleted gracefully, as on a real
//!   cluster: they get a `deletionTimestamp` and stay until a second delete
//!   with `gracePeriodSeconds=0` (what a kubelet sends) removes them.
//! - No authorization or admission webhooks: every authenticated request may
//!   do everything (RBAC objects are stored and validated, not enforced).
//! - No controllers for workloads: Deployments and DaemonSets keep the status
//!   a client writes through `/status`; no ReplicaSets or Pods are made.
//! - Responses are JSON only (but `/openapi/v2`, also protobuf); request
//!   bodies are JSON, YAML, or protobuf for the kinds kubectl's generators
//!   send that way (Namespace, ConfigMap, Secret, ServiceAccount); no CBOR.
//! - Built-in kinds' OpenAPI schemas have no descriptions (`kubectl explain`
//!   shows fields and types only) and no `required` lists; a recursive type
//!   (a CRD's JSON schema inside itself) accepts anything below its first
//!   level. Unknown fields in a custom resource's metadata are not reported.
//! - Lists never serve old versions: `resourceVersionMatch=Exact` with an
//!   older version gets 410, a version newer than the store gets 504 at once
//!   instead of waiting.
//! - List items carry `apiVersion` and `kind`.
//! - Field ownership uses the strategic-merge list keys for every list (for
//!   example container ports merge by `containerPort` alone); managed fields a
//!   client sends on update are ignored.
//! - Pod spec immutability is checked as a whole (images, tolerations,
//!   activeDeadlineSeconds and terminationGracePeriodSeconds may change), not
//!   field by field; CRD schemas are checked for types, enums, required
//!   fields, lengths, ranges, item and property counts, patterns, sets and
//!   `x-kubernetes-validations` rules in the subset of CEL `cel.rs` evaluates
//!   (a CRD with a rule outside it is refused), but not formats, map-list
//!   keys or transition rules (`oldSelf`); only `None` conversion between CRD
//!   versions.
//! - Discovery is the legacy (unaggregated) form.

mod apply;
mod cel;
mod cli;
mod convert;
mod discovery;
mod error;
mod faults;
mod kinds;
pub(crate) mod meta;
mod openapi;
mod openapi_v2;
mod openapi_v2_pb;
mod patch;
mod protobuf;
mod reflect;
mod resources;
mod schema;
mod selector;
mod server;
mod snapshot;
mod store;
mod table;
mod tls;
mod typed;
mod validation;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use cli::{Args, run};
pub use faults::{Failure, Faults, Match};
pub use snapshot::SnapshotError;

use resources::Registry;
use server::ServerState;
use store::{ObjKey, Store};

/// Errors starting or operating the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}; choose a free address or port 0")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot write kubeconfig {path}: {source}; check the directory exists and is writable")]
    Kubeconfig {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make the server's tls certificate: {0}")]
    Tls(String),
    #[error("cannot build a client for {url}: {reason}")]
    Client { url: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Serve HTTPS with a certificate authority made at start (the default;
    /// kubectl sends bearer tokens only over TLS). Plain HTTP when false.
    pub tls: bool,
    /// The bearer token clients must present; a random one when None.
    pub token: Option<String>,
    /// Also write the kubeconfig here once listening.
    pub kubeconfig_out: Option<PathBuf>,
    /// Load state from this file if it exists, and keep it up to date.
    pub snapshot: Option<PathBuf>,
    /// How many changes to retain for watches resuming from an older version.
    pub history: usize,
    /// How far (in changes) a watch may fall behind before it is closed.
    pub watch_backlog: usize,
    /// Watch events queued per connection.
    pub watch_queue: usize,
    /// How often watches that asked for bookmarks get one (when there is news).
    pub bookmark_interval: Duration,
    /// How often a changed store is written to the snapshot file.
    pub snapshot_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: true,
            token: None,
            kubeconfig_out: None,
            snapshot: None,
            history: 10_000,
            watch_backlog: 8192,
            watch_queue: 256,
            bookmark_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(1),
        }
    }
}

/// The embedded API server.
#[derive(Debug)]
pub struct ApiServer;

impl ApiServer {
    /// Bind, load the snapshot (if any), create the standard namespaces, and serve.
    pub async fn start(config: Config) -> Result<Handle> {
        let token = config
            .token
            .clone()
            .unwrap_or_else(|| format!("underlay-{}", meta::new_uid()));
        let state = Arc::new(ServerState {
            token: token.clone(),
            registry: Registry::default(),
            store: Store::new(config.history, config.watch_backlog),
            faults: Faults::default(),
            bookmark_interval: config.bookmark_interval,
            watch_queue: config.watch_queue,
            pages: Default::default(),
        });
        if let Some(path) = &config.snapshot
            && path.exists()
        {
            snapshot::load(&state.store, &state.registry, path)?;
            info!(path = %path.display(), objects = state.store.lock().len(), "restored snapshot");
        }
        bootstrap(&state);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let app = server::router(state.clone());
        let tls = if config.tls {
            Some(tls::generate().map_err(Error::Tls)?)
        } else {
            None
        };
        let ca = tls.as_ref().map(|t| (t.ca_pem.clone(), t.ca_der.clone()));
        let task = match tls {
            Some(tls) => tokio::spawn(tls::serve(listener, tls.acceptor, app, stop_rx)),
            None => tokio::spawn(async move {
                let served = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                });
                if let Err(error) = served.await {
                    warn!(%error, "api server stopped with an error");
                }
            }),
        };
        let saver = config
            .snapshot
            .clone()
            .map(|path| save_snapshots(state.clone(), path, config.snapshot_interval));
        let handle = Handle {
            addr,
            ca,
            token,
            state,
            stop: Some(stop_tx),
            task: Some(task),
            saver,
            snapshot: config.snapshot.clone(),
            kubeconfig_path: config.kubeconfig_out.clone(),
        };
        if let Some(path) = &config.kubeconfig_out {
            handle.write_kubeconfig(path)?;
        }
        info!(%addr, "api server listening");
        Ok(handle)
    }
}

/// Writes the store to `path` every `every` when it changed since the last write.
fn save_snapshots(state: Arc<ServerState>, path: PathBuf, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if state.store.take_dirty()
                && let Err(error) = snapshot::save(&state.store, &path)
            {
                warn!(%error, "snapshot not written");
            }
        }
    })
}

/// The namespaces and PriorityClasses every cluster starts with.
fn bootstrap(state: &ServerState) {
    let mut inner = state.store.lock();
    for mut pc in resources::system_priority_classes() {
        let k = ObjKey::new(
            "priorityclasses.scheduling.k8s.io",
            "",
            meta::meta_str(&pc, "name"),
        );
        if inner.get(&k).is_none() {
            let m = meta::metadata_mut(&mut pc);
            m.insert("uid".into(), json!(meta::new_uid()));
            m.insert("creationTimestamp".into(), json!(meta::now()));
            inner.put(k, pc);
        }
    }
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let k = ObjKey::new("namespaces", "", ns);
        if inner.get(&k).is_some() {
            continue;
        }
        let now = meta::now();
        inner.put(
            k,
            json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "uid": meta::new_uid(), "creationTimestamp": now,
                    "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }),
        );
        let sa = ObjKey::new("serviceaccounts", ns, "default");
        if inner.get(&sa).is_none() {
            inner.put(
                sa,
                json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": ns, "uid": meta::new_uid(), "creationTimestamp": now}}),
            );
        }
    }
}

/// A running server. Dropping it stops the server.
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    /// PEM and DER of the serving CA (None for plain HTTP).
    ca: Option<(String, Vec<u8>)>,
    token: String,
    state: Arc<ServerState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    saver: Option<JoinHandle<()>>,
    snapshot: Option<PathBuf>,
    kubeconfig_path: Option<PathBuf>,
}

impl Handle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` (or `http://` without TLS).
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// PEM of the certificate authority that signed the serving certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(|(pem, _)| pem.as_str())
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The kubeconfig (YAML) for this server: cluster, user (bearer token) and
    /// context `underlay-lab`, default namespace `default`.
    pub fn kubeconfig(&self) -> String {
        let mut cluster = json!({"server": self.url()});
        if let Some((pem, _)) = &self.ca {
            cluster["certificate-authority-data"] = json!(meta::base64_encode(pem.as_bytes()));
        }
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "underlay-lab", "cluster": cluster}],
            "users": [{"name": "underlay-lab", "user": {"token": self.token}}],
            "contexts": [{"name": "underlay-lab", "context": {"cluster": "underlay-lab", "user": "underlay-lab", "namespace": "default"}}],
            "current-context": "underlay-lab",
            "preferences": {},
        });
        serde_yaml::to_string(&doc).unwrap_or_default()
    }

    /// Write the kubeconfig atomically (readers never see a partial file).
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let err = |source| Error::Kubeconfig {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.kubeconfig()).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Where the kubeconfig was written at start (`Config::kubeconfig_out`).
    pub fn kubeconfig_path(&self) -> Option<&Path> {
        self.kubeconfig_path.as_deref()
    }

    /// A kube-rs configuration for this server (URL, CA, token).
    pub fn kube_config(&self) -> Result<kube::Config> {
        let err = |reason: String| Error::Client {
            url: self.url(),
            reason,
        };
        let url = self
            .url()
            .parse()
            .map_err(|e: http::uri::InvalidUri| err(e.to_string()))?;
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".into();
        config.root_cert = self.ca.as_ref().map(|(_, der)| vec![der.clone()]);
        config.auth_info =
            serde_json::from_value(json!({"token": self.token})).map_err(|e| err(e.to_string()))?;
        Ok(config)
    }

    /// A kube-rs client for this server.
    pub fn client(&self) -> Result<kube::Client> {
        kube::Client::try_from(self.kube_config()?).map_err(|e| Error::Client {
            url: self.url(),
            reason: e.to_string(),
        })
    }

    /// Fault injection for this server.
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// Forget the retained change history: watches from any version before
    /// now get `410 Expired` and clients must relist.
    pub fn compact(&self) {
        self.state.store.lock().compact();
    }

    /// The current cluster-wide resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.store.lock().resource_version()
    }

    /// How many objects are stored.
    pub fn object_count(&self) -> usize {
        self.state.store.lock().len()
    }

    /// Write a snapshot to `path` now.
    pub fn save_snapshot(&self, path: &Path) -> Result<()> {
        Ok(snapshot::save(&self.state.store, path)?)
    }

    /// Stop serving: close watches, finish in-flight requests (up to two
    /// seconds), and write the final snapshot.
    pub async fn shutdown(mut self) -> Result<()> {
        self.state.faults.close_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
        if let Some(saver) = self.saver.take() {
            saver.abort();
        }
        if let Some(path) = self.snapshot.clone() {
            snapshot::save(&self.state.store, &path)?;
        }
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.state.faults.close_watches();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(saver) = self.saver.take() {
            saver.abort();
        }
    }
}

//! underlay-agent: the node agent.
//!
//! Module map: [`args`] (command line), [`store`] (durable endpoint
//! records), [`endpoints`] (allocation and records, the domain core),
//! [`grpc`] (the wire edge), [`conn`] (the plugin's connections),
//! [`ops`] (one operation at a time per attachment), [`node`] (pod CIDRs from the Node object),
//! [`hook`] (the policy engine's entry point), [`recover`] (records
//! rebuilt from the kernel), [`metrics`] (Prometheus,
//! health and readiness). [`run`] wires them together.
//!
//! Start-up order: open the store (a damaged one is moved aside), adopt
//! every live pod link of the kernel that no record holds, open the hook,
//! start serving gRPC (Attach
//! answers UNAVAILABLE until ready, so the plugin reports "try again"),
//! learn the pod CIDRs, restore every recorded attachment into the
//! allocator, let the hook restore their policy, then become ready.

#![forbid(unsafe_code)]

pub mod args;
pub mod conn;
pub mod endpoints;
pub mod grpc;
pub mod hook;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod policy_hook;
pub mod recover;
pub mod retired;
pub mod store;

pub use args::Args;
pub use hook::{EndpointHook, EndpointInfo, HookError, NoPolicy, PolicyUnavailable};

use anyhow::{Context, Result, bail};
use endpoints::Endpoints;
use metrics::Metrics;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use underlay_ipam::Cidr;

/// What a hook factory gets to build the policy engine's hook.
pub struct HookContext {
    /// A Kubernetes client, when one could be configured (always in
    /// Node-watch mode; in standalone mode only if a kubeconfig or in-cluster
    /// configuration is available).
    pub client: Option<kube::Client>,
    /// Why there is no client, when building one failed.
    pub client_error: Option<String>,
    pub node_name: String,
    pub args: Args,
}

/// Builds the Kubernetes client from `--kubeconfig`, or in-cluster /
/// `KUBECONFIG` when unset.
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("use kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster configuration, no KUBECONFIG and no --kubeconfig")?,
    };
    kube::Client::try_from(config).context("build the kubernetes client")
}

fn node_name(args: &Args) -> Result<String> {
    if !args.node_name.is_empty() {
        return Ok(args.node_name.clone());
    }
    if !args.pod_cidrs.is_empty() {
        // Standalone mode: the node name only labels Status and logs.
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            return Ok(h.trim().to_string());
        }
    }
    bail!("--node-name (or NODE_NAME) is required to find this node's pod cidrs")
}

/// Binds the agent's unix socket: parent directory created, a stale socket
/// from a previous run replaced, mode 0600.
pub fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create the socket directory {}", dir.display()))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("remove the stale socket {}", path.display()))?,
        Ok(_) => bail!(
            "{} exists and is not a socket; remove it or choose another --socket",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("set the mode of {}", path.display()))?;
    Ok(listener)
}

struct Ready(Endpoints);

impl metrics::Readiness for Ready {
    fn ready(&self) -> std::result::Result<(), String> {
        let (ready, reason, _) = self.0.readiness();
        if ready { Ok(()) } else { Err(reason) }
    }
}

async fn serve_http(addr: args::Listen, router: axum::Router, what: &'static str) -> Result<()> {
    let Some(addr) = addr.0 else { return Ok(()) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen for {what} on {addr}"))?;
    tracing::info!(%addr, what, "http listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, what, "http server stopped");
        }
    });
    Ok(())
}

/// How long listing the node's links and routes may take.
const KERNEL_LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the endpoint store (moving a damaged file aside) and adopts every
/// live pod link the kernel shows that no record holds, durably, before
/// anything is served.
async fn open_store(
    args: &Args,
    metrics: &Metrics,
    client: Option<&kube::Client>,
    node: &str,
) -> Result<store::Store> {
    let opened = store::Store::open_or_replace(&args.state_dir)?;
    if let Some(damage) = &opened.damaged {
        tracing::error!(%damage, "endpoint store damaged; rebuilding the live attachments from the kernel");
    } else if opened.missing {
        tracing::info!(state_dir = %args.state_dir.display(), "no endpoint store; adopting the live attachments the kernel shows");
    }
    let prefix = &args.policy_args.policy_interface_prefix;
    let links = match recover::pod_links(prefix, KERNEL_LIST_TIMEOUT).await {
        Ok(links) => links,
        // Without the store the kernel is the only record of live pods.
        Err(e) if opened.damaged.is_some() || opened.missing => {
            return Err(anyhow::Error::new(e).context(
                "rebuild the endpoint store from the kernel (the store is missing or damaged)",
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the pod links; trusting the endpoint store alone");
            Vec::new()
        }
    };
    let mut adopted = recover::adopt(&opened.records, &links, args.mtu);
    if let Some(client) = client
        && !adopted.is_empty()
    {
        recover::name_from_api(client, node, &mut adopted).await;
    }
    for r in &adopted {
        tracing::warn!(key = %r.key(), ips = ?r.ips, host_interface = %r.host_interface, pod = %format!("{}/{}", r.namespace, r.pod_name), "recovered an attachment from the kernel");
    }
    if !adopted.is_empty() {
        opened
            .store
            .apply(&adopted.iter().collect::<Vec<_>>(), &[])
            .context("record the attachments recovered from the kernel")?;
        tracing::warn!(
            recovered = adopted.len(),
            "recovered attachments the endpoint store did not hold; their DEL or GC releases them"
        );
    }
    metrics.recovered.set(adopted.len() as i64);
    Ok(opened.store)
}

/// Learns the pod CIDRs, restores the allocator and the hook, marks ready.
async fn bring_up(
    endpoints: Endpoints,
    static_cidrs: Vec<Cidr>,
    client: Option<kube::Client>,
    node: String,
    metrics: Arc<Metrics>,
) {
    let from_node = static_cidrs.is_empty();
    let cidrs = if !static_cidrs.is_empty() {
        static_cidrs
    } else if let Some(client) = client.clone() {
        let ep = endpoints.clone();
        node::wait_for_pod_cidrs(client, &node, move |why| ep.set_waiting(why)).await
    } else {
        endpoints.set_waiting("no pod cidrs: pass --pod-cidr or a kubeconfig");
        return;
    };
    endpoints.set_waiting(
        "restoring recorded endpoints; with policy on, waiting for the policy cache to list namespaces, pods and network policies from the API server",
    );
    match endpoints.set_pools(&cidrs) {
        Ok(rejected) => {
            for (key, why) in rejected {
                tracing::error!(%key, reason = %why, "recorded endpoint not restored; DEL or GC releases it");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "pod cidrs unusable");
            endpoints.set_waiting(e.to_string());
            return;
        }
    }
    let eps = endpoints.endpoints();
    let mut delay = Duration::from_millis(200);
    loop {
        match endpoints.hook().restored(&eps).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, endpoints = eps.len(), "policy restore failed; retrying");
                endpoints.set_waiting(format!("restoring the policy of recorded endpoints: {e}"));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    endpoints.mark_ready();
    tracing::info!(endpoints = eps.len(), "agent ready");
    if from_node && let Some(client) = client {
        follow_node(endpoints, client, node, cidrs, metrics).await;
    }
}

/// Keeps the pod CIDRs in step with the Node. While it is deleted Attach
/// waits; pod CIDRs that changed replace the old ones for new pods, while
/// pods in the old range keep their addresses until they are deleted. Each
/// change is logged, counted and recorded as an Event on the Node.
async fn follow_node(
    endpoints: Endpoints,
    client: kube::Client,
    node: String,
    cidrs: Vec<Cidr>,
    metrics: Arc<Metrics>,
) {
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "underlay-agent".into(),
            instance: Some(node.clone()),
        },
    );
    let mut in_use = cidrs;
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn(node::follow(client, node.clone(), Some(in_use.clone()), tx));
    let show = |c: &[Cidr]| {
        c.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    while let Some(change) = changes.recv().await {
        let new = match change {
            node::NodeChange::Gone => {
                tracing::warn!(%node, "node deleted; attach waits until it is registered again");
                endpoints.set_waiting(format!(
                    "node {node} was deleted; waiting for it to be registered again with pod cidrs"
                ));
                continue;
            }
            node::NodeChange::PodCidrs(new) => new,
        };
        let outside = match endpoints.set_pools(&new) {
            Ok(outside) => outside,
            Err(e) => {
                tracing::error!(%node, error = %e, "new node pod cidrs unusable");
                endpoints.set_waiting(e.to_string());
                continue;
            }
        };
        endpoints.mark_ready();
        if new == in_use {
            continue;
        }
        metrics.pod_cidr_changes.inc();
        let note = format!(
            "pod cidrs changed from {} to {}: new pods get addresses from the new range; {} pods keep addresses outside it until they are deleted",
            show(&in_use),
            show(&new),
            outside.len()
        );
        tracing::warn!(%node, old = %show(&in_use), new = %show(&new), outside = outside.len(), "node pod cidrs changed");
        publish_node_event(&recorder, &node, "PodCIDRsChanged", note).await;
        in_use = new;
    }
    watch.abort();
}

async fn publish_node_event(
    recorder: &kube::runtime::events::Recorder,
    node: &str,
    reason: &str,
    note: String,
) {
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "AllocatePodAddresses".into(),
        secondary: None,
    };
    // Node events are keyed by name, as the kubelet does.
    let regarding = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node.into()),
        uid: Some(node.into()),
        ..Default::default()
    };
    if let Err(e) = recorder.publish(&event, &regarding).await {
        tracing::warn!(%node, reason, error = %e, "cannot record the node event");
    }
}

/// Runs the agent until `shutdown` completes. `make_hook` builds the policy
/// hook (pass `|_| Ok(Arc::new(NoPolicy))` to run without policy).
pub async fn run_until(
    args: Args,
    make_hook: impl FnOnce(&HookContext) -> Result<Arc<dyn EndpointHook>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let node = node_name(&args)?;
    let static_cidrs = static_pod_cidrs(&args)?;
    let (client, client_error) = connect(&args, static_cidrs.is_empty()).await?;
    let ctx = HookContext {
        client: client.clone(),
        client_error,
        node_name: node.clone(),
        args: args.clone(),
    };
    let hook = make_hook(&ctx).context("start the policy engine")?;

    let mut metrics = Metrics::new();
    hook.register_metrics(metrics.registry_mut());
    let metrics = Arc::new(metrics);
    let store = open_store(&args, &metrics, client.as_ref(), &node).await?;
    let endpoints = Endpoints::open(store, hook, metrics.clone(), args.mtu)?;
    tracing::info!(node = %node, recorded = endpoints.endpoints().len(), state_dir = %args.state_dir.display(), "endpoint store open");
    serve_metrics_and_health(&args, &metrics, &endpoints).await?;

    let listener = bind_socket(&args.socket)?;
    tracing::info!(socket = %args.socket.display(), "grpc listening");
    let service = grpc::AgentService {
        endpoints: endpoints.clone(),
        metrics: metrics.clone(),
        node_name: node.clone(),
        retired: retired::Retired::start(),
    };
    let bring = tokio::spawn(bring_up(endpoints, static_cidrs, client, node, metrics));
    let served = tonic::transport::Server::builder()
        .add_service(underlay_proto::v1::agent_server::AgentServer::new(service))
        .serve_with_incoming_shutdown(conn::incoming(listener), shutdown)
        .await;
    bring.abort();
    let _ = std::fs::remove_file(&args.socket);
    served.context("grpc server")?;
    tracing::info!("agent stopped");
    Ok(())
}

/// `--pod-cidr`, parsed, and checked to be a combination the allocator
/// takes: a bad one fails at start-up instead of never getting ready.
fn static_pod_cidrs(args: &Args) -> Result<Vec<Cidr>> {
    let static_cidrs: Vec<Cidr> = args
        .pod_cidrs
        .iter()
        .map(|c| {
            c.parse::<Cidr>()
                .with_context(|| format!("--pod-cidr {c:?}"))
        })
        .collect::<Result<_>>()?;
    if !static_cidrs.is_empty() {
        underlay_ipam::PodAllocator::new(&static_cidrs).context("--pod-cidr")?;
    }
    Ok(static_cidrs)
}

/// The Kubernetes client, and why there is none. Required when the pod
/// CIDRs come from the Node (`from_node`); in standalone mode tried only
/// with a kubeconfig or policy on, and a failure is reported, not fatal.
async fn connect(args: &Args, from_node: bool) -> Result<(Option<kube::Client>, Option<String>)> {
    if from_node {
        let client = kube_client(args.kubeconfig.as_deref()).await.context(
            "the node's pod cidrs come from the API server: pass --kubeconfig, or --pod-cidr to run without it",
        )?;
        return Ok((Some(client), None));
    }
    if !(args.kubeconfig.is_some() || args.policy) {
        return Ok((None, None));
    }
    match kube_client(args.kubeconfig.as_deref()).await {
        Ok(c) => Ok((Some(c), None)),
        Err(e) => {
            let e = format!("{e:#}");
            tracing::warn!(error = %e, policy = args.policy, "standalone mode without a kubernetes client");
            Ok((None, Some(e)))
        }
    }
}

/// Serves `/metrics` and the health endpoints on their addresses, if set.
async fn serve_metrics_and_health(
    args: &Args,
    metrics: &Arc<Metrics>,
    endpoints: &Endpoints,
) -> Result<()> {
    serve_http(
        args.metrics_addr,
        metrics::metrics_router(metrics.clone()),
        "metrics",
    )
    .await?;
    serve_http(
        args.health_addr,
        metrics::health_router(Arc::new(Ready(endpoints.clone()))),
        "health",
    )
    .await
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(
    args: Args,
    make_hook: impl FnOnce(&HookContext) -> Result<Arc<dyn EndpointHook>>,
) -> Result<()> {
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    run_until(args, make_hook, shutdown).await
}

/// Installs the tracing subscriber on stderr in the chosen format.
pub fn init_tracing(format: args::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        args::LogFormat::Json => builder.json().try_init(),
        args::LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

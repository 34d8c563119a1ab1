//! Command-line arguments and the wiring of the parts into a running
//! controller.

use crate::azure::aad::AadEndpoints;
use crate::azure::arm::{ArmRouteTable, ArmTableConfig};
use crate::azure::config::CloudConfig;
use crate::azure::credential::credential_for;
use crate::cidrs::CidrAllocator;
use crate::http::{Readiness, router, serve};
use crate::k8s::feed::NodeFeed;
use crate::k8s::leader::{LeaderConfig, LeaderElector};
use crate::k8s::{KubeNodeSink, NodeController};
use crate::metrics::Metrics;
use crate::plan::Ownership;
use crate::reconciler::{Reconciler, ReconcilerConfig, RouteInput, Status};
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};
use underlay_ipam::Cidr;

/// Parses `1500ms`, `2s`, `1m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}; use e.g. 500ms, 2s, 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What `--version` prints: `cargo xtask build` embeds the version and git
/// commit (`0.1.0 (git 0123456789ab)`); a plain `cargo build` shows the crate
/// version alone.
pub const VERSION: &str = match option_env!("UNDERLAY_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The controller's command line; every flag is also read from
/// `UNDERLAY_<FLAG>`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "underlay-route-controller",
    version = VERSION,
    about = "Allocates node pod CIDRs and keeps the Azure route table holding one route per node"
)]
pub struct Args {
    /// Cluster pod CIDR, one per address family (repeat or comma-separate for dual-stack).
    #[arg(
        long,
        env = "UNDERLAY_CLUSTER_CIDR",
        value_delimiter = ',',
        default_value = "10.244.0.0/16"
    )]
    pub cluster_cidr: Vec<Cidr>,
    /// Prefix length of each node's IPv4 pod CIDR.
    #[arg(long, env = "UNDERLAY_NODE_CIDR_MASK_SIZE_IPV4", default_value_t = 24)]
    pub node_cidr_mask_size_ipv4: u8,
    /// Prefix length of each node's IPv6 pod CIDR.
    #[arg(long, env = "UNDERLAY_NODE_CIDR_MASK_SIZE_IPV6", default_value_t = 64)]
    pub node_cidr_mask_size_ipv6: u8,
    /// Ranges inside the cluster CIDRs never handed to nodes (e.g. the service CIDR).
    #[arg(long, env = "UNDERLAY_RESERVED_CIDR", value_delimiter = ',')]
    pub reserved_cidr: Vec<Cidr>,
    /// How often nodes still waiting for a pod CIDR (pool exhausted, a
    /// failed write) are retried.
    #[arg(long, env = "UNDERLAY_NODE_CIDR_RETRY_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub node_cidr_retry_interval: Duration,
    /// Allocate `spec.podCIDRs` to nodes (else only route the ones they have).
    #[arg(long, env = "UNDERLAY_ALLOCATE_NODE_CIDRS", default_value_t = false)]
    pub allocate_node_cidrs: bool,
    /// The Azure cloud provider's azure.json.
    #[arg(
        long,
        env = "UNDERLAY_CLOUD_CONFIG",
        default_value = "/etc/kubernetes/azure.json"
    )]
    pub cloud_config: PathBuf,
    /// Azure Resource Manager endpoint (default: the cloud config's cloud).
    #[arg(long, env = "UNDERLAY_ARM_ENDPOINT")]
    pub arm_endpoint: Option<String>,
    /// Azure AD authority host (default: `AZURE_AUTHORITY_HOST`, then the
    /// cloud config's `activeDirectoryEndpoint`, then the cloud's).
    #[arg(long, env = "UNDERLAY_AAD_AUTHORITY_HOST")]
    pub aad_authority_host: Option<String>,
    /// Instance metadata service for managed identity (default:
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`, then http://169.254.169.254).
    #[arg(long, env = "UNDERLAY_IMDS_ENDPOINT")]
    pub imds_endpoint: Option<String>,
    /// Use the bearer token in this file (re-read when it changes) instead of Azure AD.
    #[arg(long, env = "UNDERLAY_ARM_TOKEN_FILE")]
    pub arm_token_file: Option<PathBuf>,
    /// Bound on each Azure request.
    #[arg(long, env = "UNDERLAY_ARM_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub arm_request_timeout: Duration,
    /// Create the route table when it does not exist (else report and wait).
    #[arg(long, env = "UNDERLAY_CREATE_ROUTE_TABLE", default_value_t = false)]
    pub create_route_table: bool,
    /// Most routes the table may hold, the controller's and others'.
    #[arg(long, env = "UNDERLAY_ROUTE_LIMIT", default_value_t = 400)]
    pub route_limit: usize,
    /// Node changes seen within this interval go out in one route table write.
    #[arg(long, env = "UNDERLAY_ROUTE_BATCH_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub route_batch_interval: Duration,
    /// Poll interval for Azure operations that send no Retry-After.
    #[arg(long, env = "UNDERLAY_ARM_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub arm_poll_interval: Duration,
    /// Kubeconfig file (default: in-cluster, then KUBECONFIG).
    #[arg(long, env = "UNDERLAY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Run only while holding the leader Lease.
    #[arg(long, env = "UNDERLAY_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(
        long,
        env = "UNDERLAY_LEADER_ELECT_NAMESPACE",
        default_value = "kube-system"
    )]
    pub leader_elect_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "UNDERLAY_LEADER_ELECT_NAME",
        default_value = "underlay-route-controller"
    )]
    pub leader_elect_name: String,
    /// This instance's identity in the Lease (default: hostname and pid).
    #[arg(long, env = "UNDERLAY_LEADER_ELECT_IDENTITY")]
    pub leader_elect_identity: Option<String>,
    /// How long the Lease stays valid without renewal.
    #[arg(long, env = "UNDERLAY_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// Stop acting when the Lease could not be renewed for this long.
    #[arg(long, env = "UNDERLAY_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often to renew or retry the Lease.
    #[arg(long, env = "UNDERLAY_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// Where to serve /metrics.
    #[arg(long, env = "UNDERLAY_METRICS_ADDR", default_value = "0.0.0.0:10290")]
    pub metrics_addr: SocketAddr,
    /// Where to serve /healthz and /readyz.
    #[arg(long, env = "UNDERLAY_HEALTH_ADDR", default_value = "0.0.0.0:10291")]
    pub health_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "UNDERLAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the tracing subscriber (stderr, `RUST_LOG`, default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn kube_client(args: &Args) -> Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("cannot use kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "cannot find the Kubernetes API: run in a cluster, set KUBECONFIG or pass --kubeconfig",
        )?,
    };
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}

/// Runs the controller until SIGTERM/SIGINT or lost leadership.
pub async fn run(args: Args) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let (arm, location) = arm_route_table(&args, metrics.clone())?;
    let alloc = cidr_allocator(&args)?;
    if args.cluster_cidr.is_empty() {
        bail!("no --cluster-cidr given; give one per address family");
    }
    let client = kube_client(&args).await?;
    let readiness = Arc::new(Readiness::default());
    let _servers = serve_http(&args, metrics.clone(), readiness.clone()).await?;
    let identity = lease_identity(&args);
    // The node informer runs on every instance: a standby's synced cache
    // makes it ready, and hands a new leader the nodes without a relist.
    let (feed, _feed_tasks) = start_node_feed(client.clone(), readiness.clone());
    let sink = KubeNodeSink::new(client.clone(), Some(identity.clone()));
    let elector = args
        .leader_elect
        .then(|| Arc::new(leader_elector(&args, client, identity)));
    let work = LeaderWork {
        table: arm,
        sink,
        reconciler: ReconcilerConfig {
            batch_interval: args.route_batch_interval,
            route_limit: args.route_limit,
            create_missing_table: args.create_route_table,
            location,
            poll_interval: args.arm_poll_interval,
            ..ReconcilerConfig::default()
        },
        ownership: Ownership {
            cluster_cidrs: args.cluster_cidr.clone(),
        },
        alloc,
        node_cidr_retry_interval: args.node_cidr_retry_interval,
        fence: elector.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        feed,
    }
    .run();
    run_until_shutdown(elector, work, metrics, readiness).await
}

/// The Azure route table client from the cloud config and the overrides,
/// and the table's region (to create it when missing).
fn arm_route_table(args: &Args, metrics: Arc<Metrics>) -> Result<(ArmRouteTable, Option<String>)> {
    let cloud = CloudConfig::load(&args.cloud_config)?;
    let table = cloud.table()?;
    let endpoint = match &args.arm_endpoint {
        Some(e) => e.clone(),
        None => cloud.endpoints()?.resource_manager,
    };
    let identity = cloud.identity(args.arm_token_file.as_deref())?;
    let aad = aad_endpoints(args, &cloud)?;
    info!(
        subscription = %table.subscription_id,
        resource_group = %table.resource_group,
        route_table = %table.name,
        %endpoint,
        ?identity,
        authority_host = %aad.authority_host,
        "starting route controller"
    );
    let credential = credential_for(&identity, &aad)?;
    let arm = ArmRouteTable::new(
        ArmTableConfig {
            endpoint,
            subscription_id: table.subscription_id.clone(),
            resource_group: table.resource_group.clone(),
            table_name: table.name.clone(),
            request_timeout: args.arm_request_timeout,
        },
        credential,
        Some(metrics),
    )?;
    Ok((arm, table.location))
}

/// Where Azure AD tokens come from: the flags, the environment, the cloud
/// config, then the cloud's own authority.
fn aad_endpoints(args: &Args, cloud: &CloudConfig) -> Result<AadEndpoints> {
    let cloud_authority = match cloud.endpoints() {
        Ok(e) => e.authority,
        // A custom --arm-endpoint needs no known cloud; its authority comes
        // from the overrides, else the public cloud's.
        Err(_) if args.arm_endpoint.is_some() => "https://login.microsoftonline.com".to_string(),
        Err(e) => return Err(e.into()),
    };
    let env = |name: &str| std::env::var(name).ok();
    Ok(AadEndpoints::resolve(
        args.aad_authority_host.as_deref(),
        env("AZURE_AUTHORITY_HOST").as_deref(),
        cloud.active_directory_endpoint.as_deref(),
        &cloud_authority,
        args.imds_endpoint.as_deref(),
        env("AZURE_POD_IDENTITY_AUTHORITY_HOST").as_deref(),
    )?)
}

/// The node CIDR allocator, with `--allocate-node-cidrs` only.
fn cidr_allocator(args: &Args) -> Result<Option<CidrAllocator>> {
    if !args.allocate_node_cidrs {
        return Ok(None);
    }
    Ok(Some(CidrAllocator::new(
        &args.cluster_cidr,
        args.node_cidr_mask_size_ipv4,
        args.node_cidr_mask_size_ipv6,
        &args.reserved_cidr,
    )?))
}

/// Serves /metrics, /healthz and /readyz, on one address or two.
async fn serve_http(
    args: &Args,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let app = router(metrics, readiness);
    let mut servers = vec![
        serve(args.metrics_addr, app.clone())
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?,
    ];
    if args.health_addr != args.metrics_addr {
        servers.push(
            serve(args.health_addr, app)
                .await
                .with_context(|| format!("cannot listen on --health-addr {}", args.health_addr))?,
        );
    }
    Ok(servers)
}

/// This instance's name in the Lease and in Events: the flag, else the
/// hostname and pid.
fn lease_identity(args: &Args) -> String {
    args.leader_elect_identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        format!("{host}_{}", std::process::id())
    })
}

/// Starts the node informer and marks the caches synced once it has
/// listed; both tasks end when the returned guards are dropped.
fn start_node_feed(
    client: kube::Client,
    readiness: Arc<Readiness>,
) -> (NodeFeed, [AbortOnDrop; 2]) {
    let feed = NodeFeed::new();
    let feed_task = AbortOnDrop(tokio::spawn(feed.clone().run(client)));
    let mut synced = feed.synced();
    let synced_task = AbortOnDrop(tokio::spawn(async move {
        if synced.wait_for(|s| *s).await.is_ok() {
            readiness.set_caches_synced(true);
        }
    }));
    (feed, [feed_task, synced_task])
}

/// The Lease elector the `--leader-elect-*` flags describe.
fn leader_elector(args: &Args, client: kube::Client, identity: String) -> LeaderElector {
    LeaderElector::new(
        client,
        LeaderConfig {
            namespace: args.leader_elect_namespace.clone(),
            name: args.leader_elect_name.clone(),
            identity,
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
        },
    )
}

/// What the leader runs: the node controller (pod CIDRs, the reconciler's
/// input), the route reconciler, and the readiness of its first full sync.
struct LeaderWork {
    table: ArmRouteTable,
    sink: KubeNodeSink,
    reconciler: ReconcilerConfig,
    ownership: Ownership,
    alloc: Option<CidrAllocator>,
    node_cidr_retry_interval: Duration,
    /// The elector, when there is one: pod CIDR writes are fenced by it.
    fence: Option<Arc<LeaderElector>>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    feed: NodeFeed,
}

impl LeaderWork {
    async fn run(self) {
        let input = RouteInput::until_listed();
        let reconciler = Reconciler::new(
            self.table,
            self.sink.clone(),
            self.reconciler,
            self.ownership,
            Some(self.metrics.clone()),
        );
        let status = reconciler.status();
        let mut controller =
            NodeController::new(self.sink, input.clone(), self.alloc, Some(self.metrics))
                .with_retry_interval(self.node_cidr_retry_interval);
        if let Some(fence) = self.fence {
            // A pod CIDR is written only while the lease is as this
            // instance last renewed it.
            controller = controller.with_fence(fence);
        }
        let listed = controller.listed();
        tokio::join!(
            reconciler.run(input),
            controller.run(self.feed.subscribe()),
            first_sync(listed, status, self.readiness),
        );
    }
}

/// Runs `work` until shutdown: while holding the lease (given up on the way
/// out) when there is an elector, else at once.
async fn run_until_shutdown(
    elector: Option<Arc<LeaderElector>>,
    work: impl Future<Output = ()>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> Result<()> {
    let shutdown = shutdown_signal();
    if let Some(elector) = elector {
        // Readiness first: whoever sees the leader gauge at 1 also sees
        // readiness waiting for this term's first sync.
        let on_leader = move |leading| {
            readiness.set_leading(leading);
            metrics.set_leader(leading);
        };
        let outcome = tokio::select! {
            r = elector.run(work, on_leader) => r.map_err(anyhow::Error::from),
            () = shutdown => Ok(()),
        };
        if let Err(error) = elector.release().await {
            warn!(%error, "cannot release leader lease");
        }
        outcome
    } else {
        metrics.set_leader(true);
        readiness.set_leading(true);
        tokio::select! {
            () = work => Ok(()),
            () = shutdown => Ok(()),
        }
    }
}

/// Marks the leader ready once the first complete node list has been
/// applied and a route pass covering it has succeeded.
pub async fn first_sync(
    mut listed: watch::Receiver<Option<u64>>,
    mut status: watch::Receiver<Status>,
    readiness: Arc<Readiness>,
) {
    let generation = match listed.wait_for(Option::is_some).await {
        Ok(g) => g.unwrap_or_default(),
        Err(_) => return,
    };
    if status
        .wait_for(|s| s.synced > 0 && s.generation >= generation)
        .await
        .is_ok()
    {
        info!(generation, "first full sync done");
        readiness.set_leader_synced(true);
    }
}

/// Aborts a background task when the owner goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations_parse_with_units() {
        for (s, d) in [
            ("2s", 2000),
            ("500ms", 500),
            ("1m", 60_000),
            ("3", 3000),
            ("1.5s", 1500),
        ] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(d), "{s}");
        }
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn flags_parse_with_defaults_and_dual_stack() {
        let a = Args::try_parse_from([
            "underlay-route-controller",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--allocate-node-cidrs",
            "--leader-elect=false",
            "--route-batch-interval",
            "250ms",
        ])
        .unwrap();
        assert_eq!(a.cluster_cidr.len(), 2);
        assert!(a.allocate_node_cidrs);
        assert!(!a.leader_elect);
        assert_eq!(a.route_batch_interval, Duration::from_millis(250));
        assert_eq!(a.node_cidr_mask_size_ipv4, 24);
        assert_eq!(a.route_limit, 400);
        assert!(Args::try_parse_from(["x", "--cluster-cidr", "10.244.0.1/16"]).is_err());
    }
}

//! The gRPC edge: the only place where wire types become domain types and
//! [`EndpointError`]s become `tonic::Status` codes the plugin maps to CNI
//! codes (UNAVAILABLE → 11 try again, RESOURCE_EXHAUSTED → pool exhausted,
//! NOT_FOUND → unknown container, FAILED_PRECONDITION → policy failed).

use crate::endpoints::{AttachInput, EndpointError, Endpoints};
use crate::hook::HookError;
use crate::metrics::{Metrics, RpcErrorLabel, RpcLabel};
use crate::store::Record;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};
use underlay_ipam::AttachmentKey;
use underlay_proto::v1::{self, agent_server::Agent};

/// The pod's IPv4 and IPv6 gateways (answered by proxy ARP / NDP).
pub const GATEWAY_V4: &str = "169.254.1.1";
pub const GATEWAY_V6: &str = "fe80::1";

pub struct AgentService {
    pub endpoints: Endpoints,
    pub metrics: Arc<Metrics>,
    pub node_name: String,
    /// Told of each Attach and Detach, and after each detach: the DEL
    /// retired a host interface.
    pub retired: crate::retired::Retired,
}

fn to_status(e: EndpointError) -> Status {
    match e {
        EndpointError::NotReady(m) => Status::unavailable(m),
        EndpointError::InvalidKey(m) => Status::invalid_argument(m),
        EndpointError::Exhausted(m) => Status::resource_exhausted(m),
        EndpointError::NameTaken(m) => Status::already_exists(m),
        EndpointError::NotFound(k) => Status::not_found(format!("no attachment {k}")),
        EndpointError::Hook(HookError::Unavailable(m)) => {
            Status::unavailable(format!("policy is not ready yet: {m}"))
        }
        EndpointError::Hook(HookError::Failed(m)) => Status::failed_precondition(m),
        EndpointError::Hook(HookError::Invalid(m)) => Status::invalid_argument(m),
        EndpointError::Store(e) => Status::internal(e.to_string()),
        EndpointError::Internal(m) => Status::internal(m),
    }
}

/// A hook's refusal of a query RPC (`Trace`, `Denials`).
fn hook_status(e: HookError) -> Status {
    match e {
        HookError::Unavailable(m) => Status::unavailable(m),
        HookError::Failed(m) => Status::failed_precondition(m),
        HookError::Invalid(m) => Status::invalid_argument(m),
    }
}

fn key_of(k: Option<v1::AttachmentKey>) -> AttachmentKey {
    let k = k.unwrap_or_default();
    AttachmentKey::new(k.container_id, k.ifname)
}

fn ip_configs(ips: &[IpAddr]) -> Vec<v1::IpConfig> {
    ips.iter()
        .map(|ip| match ip {
            IpAddr::V4(_) => v1::IpConfig {
                family: v1::IpFamily::Ipv4 as i32,
                address: format!("{ip}/32"),
                gateway: GATEWAY_V4.into(),
            },
            IpAddr::V6(_) => v1::IpConfig {
                family: v1::IpFamily::Ipv6 as i32,
                address: format!("{ip}/128"),
                gateway: GATEWAY_V6.into(),
            },
        })
        .collect()
}

fn routes(ips: &[IpAddr]) -> Vec<v1::Route> {
    let mut out = Vec::new();
    if ips.iter().any(IpAddr::is_ipv4) {
        out.push(v1::Route {
            destination: "0.0.0.0/0".into(),
            gateway: GATEWAY_V4.into(),
        });
    }
    if ips.iter().any(IpAddr::is_ipv6) {
        out.push(v1::Route {
            destination: "::/0".into(),
            gateway: GATEWAY_V6.into(),
        });
    }
    out
}

impl AgentService {
    async fn timed<T>(
        &self,
        rpc: &'static str,
        f: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let out = f.await;
        self.metrics
            .rpc_duration
            .get_or_create(&RpcLabel { rpc: rpc.into() })
            .observe(start.elapsed().as_secs_f64());
        match out {
            Ok(v) => Ok(Response::new(v)),
            Err(s) => {
                self.metrics
                    .rpc_errors
                    .get_or_create(&RpcErrorLabel {
                        rpc: rpc.into(),
                        code: format!("{:?}", s.code()),
                    })
                    .inc();
                tracing::warn!(rpc, code = ?s.code(), message = s.message(), "rpc failed");
                Err(s)
            }
        }
    }

    fn policy_programmed(&self) -> bool {
        self.endpoints.hook().status().is_some()
    }
}

fn attach_response(r: &Record, policy: bool) -> v1::AttachResponse {
    v1::AttachResponse {
        ips: ip_configs(&r.ips),
        routes: routes(&r.ips),
        mtu: r.mtu,
        host_interface: r.host_interface.clone(),
        policy_programmed: policy,
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    #[tracing::instrument(skip_all, fields(rpc = "Attach"))]
    async fn attach(
        &self,
        req: Request<v1::AttachRequest>,
    ) -> Result<Response<v1::AttachResponse>, Status> {
        let lease = crate::conn::lease_of(&req);
        let req = req.into_inner();
        self.retired.operation();
        self.timed("Attach", async {
            let pod = req.pod.unwrap_or_default();
            let key = key_of(req.key);
            let rec = self
                .endpoints
                .attach(AttachInput {
                    key: key.clone(),
                    namespace: pod.namespace,
                    pod_name: pod.name,
                    pod_uid: pod.uid,
                    infra_container_id: pod.infra_container_id,
                    host_interface: req.host_interface,
                    netns: req.netns,
                    network_name: req.network_name,
                    mtu: req.mtu,
                    lease,
                })
                .await
                .map_err(to_status)?;
            tracing::info!(%key, ips = ?rec.ips, host_interface = %rec.host_interface, "attached");
            Ok(attach_response(&rec, self.policy_programmed()))
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Detach"))]
    async fn detach(
        &self,
        req: Request<v1::DetachRequest>,
    ) -> Result<Response<v1::DetachResponse>, Status> {
        let req = req.into_inner();
        self.retired.operation();
        self.timed("Detach", async {
            let key = key_of(req.key);
            let rec = self
                .endpoints
                .detach(key.clone())
                .await
                .map_err(to_status)?;
            tracing::info!(%key, released = rec.is_some(), "detached");
            self.retired.wake();
            Ok(v1::DetachResponse {
                released: rec.is_some(),
                host_interface: rec.map(|r| r.host_interface).unwrap_or_default(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Check"))]
    async fn check(
        &self,
        req: Request<v1::CheckRequest>,
    ) -> Result<Response<v1::CheckResponse>, Status> {
        let req = req.into_inner();
        self.timed("Check", async {
            let rec = self.endpoints.check(&key_of(req.key)).map_err(to_status)?;
            Ok(v1::CheckResponse {
                ips: ip_configs(&rec.ips),
                host_interface: rec.host_interface,
                policy_programmed: self.policy_programmed(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Gc"))]
    async fn gc(&self, req: Request<v1::GcRequest>) -> Result<Response<v1::GcResponse>, Status> {
        let caller = crate::conn::lease_of(&req);
        let req = req.into_inner();
        self.timed("Gc", async {
            let valid: Vec<AttachmentKey> = req
                .valid_attachments
                .into_iter()
                .map(|k| AttachmentKey::new(k.container_id, k.ifname))
                .collect();
            let released = self
                .endpoints
                .gc(&valid, &caller)
                .await
                .map_err(to_status)?;
            tracing::info!(
                valid = valid.len(),
                released = released.len(),
                "garbage collected"
            );
            Ok(v1::GcResponse {
                released: released
                    .iter()
                    .map(|r| v1::AttachmentKey {
                        container_id: r.container_id.clone(),
                        ifname: r.ifname.clone(),
                    })
                    .collect(),
                host_interfaces: released.into_iter().map(|r| r.host_interface).collect(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Status"))]
    async fn status(
        &self,
        _req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.timed("Status", async {
            let (mut ready, mut reason, endpoints) = self.endpoints.readiness();
            let policy = self.endpoints.hook().status();
            if let Some(p) = &policy
                && !p.last_error.is_empty()
                && ready
            {
                ready = false;
                reason = format!("the policy dataplane is failing: {}", p.last_error);
            }
            Ok(v1::StatusResponse {
                ready,
                reason,
                node_name: self.node_name.clone(),
                pools: self
                    .endpoints
                    .pools()
                    .into_iter()
                    .map(|p| v1::PoolStatus {
                        family: match p.cidr.family() {
                            underlay_ipam::Family::V4 => v1::IpFamily::Ipv4 as i32,
                            underlay_ipam::Family::V6 => v1::IpFamily::Ipv6 as i32,
                        },
                        cidr: p.cidr.to_string(),
                        capacity: u64::try_from(p.capacity).unwrap_or(u64::MAX),
                        allocated: u64::try_from(p.allocated).unwrap_or(u64::MAX),
                    })
                    .collect(),
                endpoints: endpoints as u64,
                policy,
                version: env!("CARGO_PKG_VERSION").into(),
            })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Endpoints"))]
    async fn endpoints(
        &self,
        _req: Request<v1::EndpointsRequest>,
    ) -> Result<Response<v1::EndpointsResponse>, Status> {
        self.timed("Endpoints", async {
            let hook = self.endpoints.hook();
            let mut out = Vec::new();
            for ep in self.endpoints.endpoints() {
                let iso = hook.isolation(&ep).await.unwrap_or(crate::hook::Isolation {
                    pod_known: true,
                    ..Default::default()
                });
                out.push(v1::EndpointInfo {
                    namespace: ep.namespace,
                    name: ep.pod_name,
                    ips: ep.ips.iter().map(|ip| ip.to_string()).collect(),
                    host_interface: ep.host_interface,
                    container_id: ep.key.container_id,
                    ingress: Some(iso.ingress),
                    egress: Some(iso.egress),
                    pod_known: iso.pod_known,
                });
            }
            out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            Ok(v1::EndpointsResponse { endpoints: out })
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(rpc = "Trace"))]
    async fn trace(
        &self,
        req: Request<v1::TraceRequest>,
    ) -> Result<Response<v1::TraceResponse>, Status> {
        let req = req.into_inner();
        self.timed("Trace", async {
            self.endpoints.hook().trace(&req).await.map_err(hook_status)
        })
        .await
    }

    type DenialsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::Denial, Status>> + Send + 'static>>;

    #[tracing::instrument(skip_all, fields(rpc = "Denials"))]
    async fn denials(
        &self,
        req: Request<v1::DenialsRequest>,
    ) -> Result<Response<Self::DenialsStream>, Status> {
        use futures::StreamExt;
        let req = req.into_inner();
        let stream = self.endpoints.hook().denials(&req).map_err(hook_status)?;
        Ok(Response::new(Box::pin(stream.map(Ok))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook::fake::RecordingHook;
    use crate::store::Store;

    fn service(dir: &std::path::Path, hook: Arc<RecordingHook>) -> AgentService {
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(dir).unwrap();
        let endpoints = Endpoints::open(store, hook, metrics.clone(), 1500).unwrap();
        endpoints
            .set_pools(&["10.244.1.0/24".parse().unwrap()])
            .unwrap();
        endpoints.mark_ready();
        AgentService {
            endpoints,
            metrics,
            node_name: "n1".into(),
            retired: crate::retired::Retired::default(),
        }
    }

    async fn status(svc: &AgentService) -> v1::StatusResponse {
        svc.status(Request::new(v1::StatusRequest {}))
            .await
            .unwrap()
            .into_inner()
    }

    #[tokio::test]
    async fn status_carries_the_policy_state_and_its_errors() {
        let dir = tempfile::tempdir().unwrap();
        let hook = Arc::new(RecordingHook::default());
        let svc = service(dir.path(), hook.clone());

        // No policy engine: nothing to report, ready.
        let st = status(&svc).await;
        assert!(st.ready && st.policy.is_none(), "{st:?}");

        let healthy = v1::PolicyStatus {
            policies: 3,
            endpoints: 2,
            rules: 40,
            ipset_members: 7,
            last_sync_unix_ms: Some(1_700_000_000_000),
            last_error: String::new(),
            cluster_policies: 1,
        };
        *hook.policy_status.lock().unwrap() = Some(healthy.clone());
        let st = status(&svc).await;
        assert!(st.ready, "{st:?}");
        assert_eq!(st.policy, Some(healthy.clone()));

        // A failing dataplane makes the agent not ready, and says why.
        let failing = v1::PolicyStatus {
            last_error: "writing iptables rules failed: exit 4".into(),
            ..healthy
        };
        *hook.policy_status.lock().unwrap() = Some(failing.clone());
        let st = status(&svc).await;
        assert!(!st.ready);
        assert!(
            st.reason.contains("policy dataplane is failing")
                && st.reason.contains("writing iptables rules failed"),
            "{}",
            st.reason
        );
        assert_eq!(st.policy, Some(failing));
    }
}

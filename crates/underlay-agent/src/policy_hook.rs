//! The endpoint hook backed by the policy engine (`underlay-policy`): the
//! thin adapter between the agent's endpoints and the engine's runtime.
//! Everything that decides lives in the engine crate.

use crate::hook::{DenialStream, EndpointHook, EndpointInfo, HookError, Isolation};
use futures::StreamExt;
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use underlay_policy::agent::{AttachError, PolicyAgent};
use underlay_policy::denials::{Denial, protocol_name};
use underlay_policy::metrics::Metrics;
use underlay_policy::model::{Attachment, Direction, Endpoint, PodKey};
use underlay_policy::trace::{self, FlowTrace, Query};
use underlay_policy::{CommandDataplane, Engine, PolicyArgs};
use underlay_proto::v1;

pub struct PolicyHook {
    agent: Arc<PolicyAgent<CommandDataplane>>,
    metrics: Metrics,
}

impl PolicyHook {
    /// Starts the engine's watchers, sync loop and repair timer. Must be
    /// called inside the tokio runtime. Without a client no policy exists
    /// and every endpoint is open.
    pub fn start(client: Option<kube::Client>, args: &PolicyArgs) -> Arc<PolicyHook> {
        let metrics = Metrics::default();
        let mut engine = Engine::new(args.dataplane(), args.config(), metrics.clone());
        engine.set_conntrack_cleanup(args.policy_conntrack_cleanup);
        engine.change(|i| i.set_default_mode(args.policy_default_mode));
        let agent = PolicyAgent::new(engine, client, args.options());
        // The tasks run for the life of the process.
        drop(agent.start());
        PolicyHook::with_agent(agent, metrics)
    }

    /// A hook over an agent already built (and started, or not, by the
    /// caller); `metrics` are the engine's.
    pub fn with_agent(agent: Arc<PolicyAgent<CommandDataplane>>, metrics: Metrics) -> Arc<Self> {
        Arc::new(PolicyHook { agent, metrics })
    }

    /// The engine's metrics (also registered through
    /// [`EndpointHook::register_metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

fn endpoint(ep: &EndpointInfo) -> Endpoint {
    Endpoint {
        pod: PodKey::new(&ep.namespace, &ep.pod_name),
        interface: ep.host_interface.clone(),
        ips: ep.ips.clone(),
        owner: owner(ep),
    }
}

/// A denial record on the wire.
fn denial(d: Denial) -> v1::Denial {
    let unix_ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    v1::Denial {
        first_unix_ms: unix_ms(d.first),
        last_unix_ms: unix_ms(d.last),
        direction: match d.direction {
            Direction::Ingress => v1::Direction::Ingress,
            Direction::Egress => v1::Direction::Egress,
        } as i32,
        pod: d.pod.to_string(),
        source: d.src.to_string(),
        destination: d.dst.to_string(),
        protocol: protocol_name(d.protocol),
        port: u32::from(d.port),
        policy: d.policy,
        packets: d.packets,
        audit: d.audit,
    }
}

fn owner(ep: &EndpointInfo) -> Attachment {
    Attachment::new(&ep.key.container_id, &ep.key.ifname)
}

/// The engine's trace on the wire.
fn trace_response(t: FlowTrace) -> v1::TraceResponse {
    let verdict = |v: trace::Verdict| v1::Verdict {
        allowed: v.allowed,
        reason: v.reason,
    };
    let directions = t
        .directions
        .into_iter()
        .map(|d| v1::DirectionTrace {
            direction: match d.direction {
                Direction::Ingress => v1::Direction::Ingress,
                Direction::Egress => v1::Direction::Egress,
            } as i32,
            pod: d.pod.to_string(),
            model: Some(verdict(d.model)),
            kernel: Some(verdict(d.kernel)),
            kernel_rules: d.kernel_rules,
            agree: d.agree,
        })
        .collect();
    v1::TraceResponse {
        directions,
        allowed: t.allowed,
        agree: t.agree,
    }
}

impl EndpointHook for PolicyHook {
    fn attached<'a>(&'a self, ep: &'a EndpointInfo) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            self.agent.attach(endpoint(ep)).await.map_err(|e| match e {
                AttachError::Unavailable(m) => HookError::Unavailable(m),
                AttachError::Failed(m) => HookError::Failed(m),
            })
        })
    }

    fn detached<'a>(&'a self, ep: &'a EndpointInfo) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.agent.detach(&ep.host_interface, &owner(ep)).await })
    }

    fn restored<'a>(&'a self, eps: &'a [EndpointInfo]) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            self.agent
                .restore(eps.iter().map(endpoint).collect())
                .await
                .map_err(|e| HookError::Unavailable(e.to_string()))
        })
    }

    fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    fn isolation<'a>(&'a self, ep: &'a EndpointInfo) -> BoxFuture<'a, Option<Isolation>> {
        Box::pin(async move {
            let described = self.agent.isolation(&endpoint(ep)).await?;
            let side = |s: underlay_policy::describe::Side| underlay_proto::v1::Isolation {
                isolated: s.isolated,
                policies: s.policies,
            };
            Some(Isolation {
                ingress: side(described.ingress),
                egress: side(described.egress),
                pod_known: described.pod_known,
            })
        })
    }

    fn trace<'a>(
        &'a self,
        req: &'a v1::TraceRequest,
    ) -> BoxFuture<'a, Result<v1::TraceResponse, HookError>> {
        Box::pin(async move {
            let query = Query::parse(&req.source, &req.destination, &req.protocol, req.port)
                .map_err(HookError::Invalid)?;
            let traced = self
                .agent
                .trace(query)
                .await
                .map_err(|e| HookError::Failed(e.to_string()))?;
            Ok(trace_response(traced))
        })
    }

    fn denials(&self, req: &v1::DenialsRequest) -> Result<DenialStream, HookError> {
        let namespace = (!req.namespace.is_empty()).then(|| req.namespace.clone());
        Ok(self
            .agent
            .denials(namespace, req.follow)
            .map(denial)
            .boxed())
    }

    fn status(&self) -> Option<underlay_proto::v1::PolicyStatus> {
        let s = self.agent.status();
        Some(underlay_proto::v1::PolicyStatus {
            policies: s.policies,
            endpoints: s.endpoints,
            rules: s.rules,
            ipset_members: s.ipset_members,
            last_sync_unix_ms: s
                .last_sync
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64),
            last_error: s.last_error.unwrap_or_default(),
            cluster_policies: s.cluster_policies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::Endpoints;
    use crate::grpc::AgentService;
    use crate::store::Store;
    use std::time::{Duration, Instant};
    use tonic::Request;
    use underlay_policy::agent::Options;
    use underlay_policy::nflog::{Batch, Packet};
    use underlay_proto::v1::agent_server::Agent;

    fn packet(pod: PodKey, port: u16) -> Packet {
        Packet {
            direction: Direction::Ingress,
            pod,
            src: "10.244.2.7".parse().unwrap(),
            dst: "10.244.1.5".parse().unwrap(),
            protocol: 6,
            port,
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            audit: false,
        }
    }

    /// Records `packets` as one window of the agent's denial records.
    fn deny(agent: &PolicyAgent<CommandDataplane>, packets: Vec<Packet>) {
        let records = agent.denial_records();
        let now = Instant::now() + Duration::from_secs(2);
        records.observe(
            Batch {
                packets,
                malformed: 0,
            },
            now,
        );
        records.flush(now, &|pod, _, _| {
            let policy = format!("networkpolicy/{}/deny-all", pod.namespace);
            (pod.clone(), policy)
        });
    }

    #[tokio::test]
    async fn the_denials_rpc_returns_recent_records_then_follows_new_ones() {
        let metrics = Metrics::default();
        let engine = Engine::new(
            CommandDataplane::default(),
            underlay_policy::Config::default(),
            metrics.clone(),
        );
        let agent = PolicyAgent::new(engine, None, Options::default());
        let hook = PolicyHook::with_agent(agent.clone(), metrics);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let agent_metrics = Arc::new(crate::metrics::Metrics::new());
        let endpoints = Endpoints::open(store, hook, agent_metrics.clone(), 1500).unwrap();
        let svc = AgentService {
            endpoints,
            metrics: agent_metrics,
            node_name: "n1".into(),
            retired: crate::retired::Retired::default(),
        };
        deny(
            &agent,
            vec![
                packet(PodKey::new("x", "a"), 80),
                packet(PodKey::new("y", "a"), 81),
            ],
        );

        let req = |follow, namespace: &str| {
            Request::new(v1::DenialsRequest {
                follow,
                namespace: namespace.into(),
            })
        };
        let all: Vec<_> = svc
            .denials(req(false, ""))
            .await
            .unwrap()
            .into_inner()
            .collect()
            .await;
        assert_eq!(all.len(), 2);
        let mut stream = svc.denials(req(true, "x")).await.unwrap().into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(
            first,
            v1::Denial {
                first_unix_ms: 1_700_000_000_123,
                last_unix_ms: 1_700_000_000_123,
                direction: v1::Direction::Ingress as i32,
                pod: "x/a".into(),
                source: "10.244.2.7".into(),
                destination: "10.244.1.5".into(),
                protocol: "TCP".into(),
                port: 80,
                policy: "networkpolicy/x/deny-all".into(),
                packets: 1,
                audit: false,
            }
        );
        // followed: a new record of x arrives, y's is filtered out
        deny(
            &agent,
            vec![
                packet(PodKey::new("y", "b"), 1),
                packet(PodKey::new("x", "b"), 443),
            ],
        );
        let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a followed record")
            .unwrap()
            .unwrap();
        assert_eq!((next.pod.as_str(), next.port), ("x/b", 443));
    }
}

//! The endpoint hook backed by the policy engine (`underlay-policy`): the
//! thin adapter between the agent's endpoints and the engine's runtime.
//! Everything that decides lives in the engine crate.

use crate::hook::{EndpointHook, EndpointInfo, HookError, Isolation};
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use underlay_policy::agent::{AttachError, PolicyAgent};
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

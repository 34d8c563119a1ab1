//! The endpoint hook: how the agent tells the policy engine about pods.
//!
//! `Attach` answers the CNI plugin only after [`EndpointHook::attached`]
//! returned, so a pod never runs before its policy is in place. At start-up
//! the agent hands every endpoint it recovered from its store to
//! [`EndpointHook::restored`] before it serves. The trait is dyn-compatible
//! (boxed futures) so the binary can choose the implementation at run time.

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use prometheus_client::registry::Registry;
use std::net::IpAddr;
use underlay_ipam::AttachmentKey;
use underlay_proto::v1;

/// One pod attachment as the policy engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub key: AttachmentKey,
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// The host-side veth of the pod.
    pub host_interface: String,
    pub ips: Vec<IpAddr>,
}

/// Why the hook could not put an endpoint's policy in place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// Not yet possible (e.g. policies not synced): the plugin reports CNI
    /// error 11 and the runtime retries.
    #[error("policy is not ready yet: {0}")]
    Unavailable(String),
    /// Programming failed.
    #[error("programming the pod's policy failed: {0}")]
    Failed(String),
    /// The request itself is wrong (e.g. a `Trace` of an unparsable
    /// address): asking again will not help.
    #[error("{0}")]
    Invalid(String),
}

/// The policy engine's view of endpoints.
pub trait EndpointHook: Send + Sync + 'static {
    /// Called by Attach after the endpoint is recorded; returns once the
    /// endpoint's policy is in place. Called again for a repeated Attach of
    /// the same attachment, so it must be idempotent.
    fn attached<'a>(&'a self, ep: &'a EndpointInfo) -> BoxFuture<'a, Result<(), HookError>>;
    /// Called after the endpoint's record is gone (Detach, GC, rollback).
    fn detached<'a>(&'a self, ep: &'a EndpointInfo) -> BoxFuture<'a, ()>;
    /// Called once at start-up with every recovered endpoint, before the
    /// agent reports ready.
    fn restored<'a>(&'a self, eps: &'a [EndpointInfo]) -> BoxFuture<'a, Result<(), HookError>>;
    /// A summary for Status; `None` when there is no policy engine.
    fn status(&self) -> Option<underlay_proto::v1::PolicyStatus>;
    /// Adds the hook's own metrics to the agent's registry (served on
    /// `/metrics`); called once, before the agent serves. Hooks without
    /// metrics keep the default, which adds nothing.
    fn register_metrics(&self, _registry: &mut Registry) {}
    /// Which policies decide each direction of an endpoint's pod, for the
    /// `Endpoints` RPC; `None` without a policy engine (every pod open).
    fn isolation<'a>(&'a self, _ep: &'a EndpointInfo) -> BoxFuture<'a, Option<Isolation>> {
        Box::pin(async { None })
    }
    /// The verdict for one flow at this node's pods, from the model and
    /// from the kernel (the `Trace` RPC).
    fn trace<'a>(
        &'a self,
        _req: &'a v1::TraceRequest,
    ) -> BoxFuture<'a, Result<v1::TraceResponse, HookError>> {
        Box::pin(async { Err(no_policy()) })
    }
    /// The recent denials, then (with `follow`) new ones as they are seen
    /// (the `Denials` RPC).
    fn denials(&self, _req: &v1::DenialsRequest) -> Result<DenialStream, HookError> {
        Err(no_policy())
    }
}

/// A stream of denials for the `Denials` RPC.
pub type DenialStream = BoxStream<'static, v1::Denial>;

/// Both directions of a pod as policy decides them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolation {
    pub ingress: v1::Isolation,
    pub egress: v1::Isolation,
    /// False while the engine has no Pod object for the endpoint.
    pub pod_known: bool,
}

fn no_policy() -> HookError {
    HookError::Failed(
        "policy enforcement is off on this node (--policy=false): every pod is open".into(),
    )
}

/// Policy enforcement disabled (`--policy=false`): every endpoint is open.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPolicy;

impl EndpointHook for NoPolicy {
    fn attached<'a>(&'a self, _ep: &'a EndpointInfo) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async { Ok(()) })
    }
    fn detached<'a>(&'a self, _ep: &'a EndpointInfo) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn restored<'a>(&'a self, _eps: &'a [EndpointInfo]) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async { Ok(()) })
    }
    fn status(&self) -> Option<underlay_proto::v1::PolicyStatus> {
        None
    }
}

/// Policy enforcement is on but cannot work (no Kubernetes client, so no
/// policy could ever be read): every endpoint is refused with the reason,
/// the agent never becomes ready, and the plugin reports "try again later"
/// instead of starting pods with their network open.
#[derive(Debug, Clone)]
pub struct PolicyUnavailable(pub String);

impl EndpointHook for PolicyUnavailable {
    fn attached<'a>(&'a self, _ep: &'a EndpointInfo) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async { Err(HookError::Unavailable(self.0.clone())) })
    }
    fn detached<'a>(&'a self, _ep: &'a EndpointInfo) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    fn restored<'a>(&'a self, _eps: &'a [EndpointInfo]) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async { Err(HookError::Unavailable(self.0.clone())) })
    }
    fn status(&self) -> Option<underlay_proto::v1::PolicyStatus> {
        Some(underlay_proto::v1::PolicyStatus {
            last_error: self.0.clone(),
            ..Default::default()
        })
    }
}

/// A recording hook for tests: remembers every call and fails on demand.
pub mod fake;

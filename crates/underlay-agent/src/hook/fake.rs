//! A recording [`EndpointHook`](super::EndpointHook) for tests: it
//! remembers every call and fails on demand.

use super::{EndpointHook, EndpointInfo, HookError};
use futures::future::BoxFuture;
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Attached(EndpointInfo),
    Detached(EndpointInfo),
    Restored(Vec<EndpointInfo>),
}

#[derive(Default)]
pub struct RecordingHook {
    pub calls: Mutex<Vec<Call>>,
    /// The error `attached` returns, if any.
    pub fail_attach: Mutex<Option<HookError>>,
    /// What `status` reports (`None`: no policy engine).
    pub policy_status: Mutex<Option<underlay_proto::v1::PolicyStatus>>,
}

impl RecordingHook {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
    fn record(&self, c: Call) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(c);
        }
    }
}

impl EndpointHook for RecordingHook {
    fn attached<'a>(&'a self, ep: &'a EndpointInfo) -> BoxFuture<'a, Result<(), HookError>> {
        self.record(Call::Attached(ep.clone()));
        let fail = self.fail_attach.lock().ok().and_then(|f| f.clone());
        Box::pin(async move { fail.map_or(Ok(()), Err) })
    }
    fn detached<'a>(&'a self, ep: &'a EndpointInfo) -> BoxFuture<'a, ()> {
        self.record(Call::Detached(ep.clone()));
        Box::pin(async {})
    }
    fn restored<'a>(&'a self, eps: &'a [EndpointInfo]) -> BoxFuture<'a, Result<(), HookError>> {
        self.record(Call::Restored(eps.to_vec()));
        Box::pin(async { Ok(()) })
    }
    fn status(&self) -> Option<underlay_proto::v1::PolicyStatus> {
        self.policy_status.lock().ok().and_then(|s| s.clone())
    }
}

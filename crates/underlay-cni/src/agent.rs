//! The plugin's side of the agent API: a narrow trait over the five RPCs,
//! the gRPC client on the agent's unix socket, and the mapping of gRPC
//! failures to CNI error codes (unreachable or not ready → 11, try again).

use crate::error::{CniError, code};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;
use underlay_proto::v1::{self, agent_client::AgentClient};

/// The agent RPCs the plugin uses. Implemented by [`GrpcAgent`] and by
/// recording fakes in tests.
#[allow(async_fn_in_trait)] // used through generics only, never as dyn
pub trait Agent {
    async fn attach(&self, req: v1::AttachRequest) -> Result<v1::AttachResponse, CniError>;
    async fn detach(&self, req: v1::DetachRequest) -> Result<v1::DetachResponse, CniError>;
    async fn check(&self, req: v1::CheckRequest) -> Result<v1::CheckResponse, CniError>;
    async fn gc(&self, req: v1::GcRequest) -> Result<v1::GcResponse, CniError>;
    async fn status(&self) -> Result<v1::StatusResponse, CniError>;
}

/// The agent reached over gRPC on its unix socket. The connection is made
/// on first use, so commands that never talk to the agent pay nothing.
pub struct GrpcAgent {
    socket: PathBuf,
    timeout: Duration,
    client: tokio::sync::OnceCell<AgentClient<Channel>>,
}

impl GrpcAgent {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
            client: tokio::sync::OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<AgentClient<Channel>, CniError> {
        self.client
            .get_or_try_init(|| connect(&self.socket, self.timeout))
            .await
            .cloned()
    }
}

async fn connect(socket: &Path, timeout: Duration) -> Result<AgentClient<Channel>, CniError> {
    let channel = underlay_proto::unix_channel(
        socket,
        Duration::from_secs(5).min(timeout),
        Some(timeout),
    )
    .await
        .map_err(|e| {
            CniError::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "cannot reach the underlay agent at {}; check that the underlay-agent pod on this node is running",
                    socket.display()
                ),
            )
            .with_details(source_chain(&e))
        })?;
    Ok(AgentClient::new(channel))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Maps an agent's gRPC status to a CNI error.
pub fn status_to_cni(rpc: &str, status: &tonic::Status) -> CniError {
    use tonic::Code;
    let message = status.message();
    let (code, msg) = match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => (
            code::TRY_AGAIN_LATER,
            format!("the underlay agent cannot serve {rpc} yet: {message}; the runtime retries"),
        ),
        Code::ResourceExhausted => (
            code::POOL_EXHAUSTED,
            format!(
                "the node has no free pod address: {message}; delete unused pods or give the node a larger pod CIDR"
            ),
        ),
        Code::AlreadyExists => (
            code::INTERFACE_EXISTS,
            format!("the underlay agent refused the {rpc} request: {message}"),
        ),
        Code::NotFound => (
            code::UNKNOWN_CONTAINER,
            format!("the underlay agent has no record of this attachment: {message}"),
        ),
        Code::FailedPrecondition => (
            code::POLICY_FAILED,
            format!("the underlay agent could not program the pod's network policy: {message}"),
        ),
        Code::InvalidArgument => (
            code::INVALID_CONFIG,
            format!("the underlay agent rejected the {rpc} request: {message}"),
        ),
        _ => (
            code::AGENT_FAILED,
            format!("the underlay agent failed {rpc}: {message}; see the agent's log"),
        ),
    };
    CniError::new(code, msg)
}

impl Agent for GrpcAgent {
    async fn attach(&self, req: v1::AttachRequest) -> Result<v1::AttachResponse, CniError> {
        let mut c = self.client().await?;
        c.attach(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_to_cni("Attach", &s))
    }

    async fn detach(&self, req: v1::DetachRequest) -> Result<v1::DetachResponse, CniError> {
        let mut c = self.client().await?;
        c.detach(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_to_cni("Detach", &s))
    }

    async fn check(&self, req: v1::CheckRequest) -> Result<v1::CheckResponse, CniError> {
        let mut c = self.client().await?;
        c.check(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_to_cni("Check", &s))
    }

    async fn gc(&self, req: v1::GcRequest) -> Result<v1::GcResponse, CniError> {
        let mut c = self.client().await?;
        c.gc(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_to_cni("Gc", &s))
    }

    async fn status(&self) -> Result<v1::StatusResponse, CniError> {
        let mut c = self.client().await?;
        c.status(v1::StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_to_cni("Status", &s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_cni_codes() {
        for (status, expect) in [
            (tonic::Status::unavailable("waiting for pod cidrs"), 11),
            (tonic::Status::deadline_exceeded("slow"), 11),
            (tonic::Status::resource_exhausted("full"), 102),
            (tonic::Status::not_found("no"), 3),
            (tonic::Status::failed_precondition("policy"), 106),
            (tonic::Status::invalid_argument("key"), 7),
            (tonic::Status::internal("boom"), 100),
        ] {
            assert_eq!(status_to_cni("Attach", &status).code, expect, "{status:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_missing_socket_means_try_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let agent = GrpcAgent::new(dir.path().join("none.sock"), Duration::from_secs(2));
        let err = agent.status().await.unwrap_err();
        assert_eq!(err.code, code::TRY_AGAIN_LATER);
        assert!(err.msg.contains("none.sock"), "{}", err.msg);
    }
}

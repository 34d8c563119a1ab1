//! Helpers shared by the agent's integration tests: the agent process, its
//! gRPC client over the unix socket, and polling.

#![allow(dead_code)]

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};
use underlay_proto::v1::{self, agent_client::AgentClient};

/// An agent process killed and reaped on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn client(socket: &Path) -> AgentClient<tonic::transport::Channel> {
    try_client(socket).await.expect("connect to the agent")
}

pub async fn try_client(
    socket: &Path,
) -> Result<AgentClient<tonic::transport::Channel>, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://agent")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    Ok(AgentClient::new(channel))
}

/// Polls `f` until it holds; fails the test after 30 s.
pub async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client of the agent on `socket` once the agent reports ready.
pub async fn ready_client(socket: &Path) -> AgentClient<tonic::transport::Channel> {
    wait_for("the agent's socket", async || socket.exists()).await;
    let mut c = client(socket).await;
    wait_ready(&mut c).await;
    c
}

/// Waits until the agent behind `c` reports ready.
pub async fn wait_ready(c: &mut AgentClient<tonic::transport::Channel>) {
    wait_for("the agent to be ready", async || {
        c.status(underlay_proto::v1::StatusRequest {})
            .await
            .is_ok_and(|s| s.into_inner().ready)
    })
    .await;
}

/// Creates the object `value` describes.
pub async fn create<K>(api: &kube::Api<K>, value: serde_json::Value)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let obj: K = serde_json::from_value(value).expect("object json");
    api.create(&kube::api::PostParams::default(), &obj)
        .await
        .expect("create");
}

/// Attach of pod x/a (container c1, eth0) on host interface `iface`, as
/// the CNI plugin sends it.
pub fn attach_x_a(iface: &str) -> v1::AttachRequest {
    v1::AttachRequest {
        key: Some(v1::AttachmentKey {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }),
        pod: Some(v1::PodRef {
            namespace: "x".into(),
            name: "a".into(),
            ..Default::default()
        }),
        host_interface: iface.into(),
        ..Default::default()
    }
}

//! Generated tonic/prost code for `proto/underlay/v1/*.proto`.
//!
//! The code under `src/gen/` is committed so that a build needs no `protoc`;
//! `tests/generated_is_fresh.rs` regenerates it and fails when it is stale
//! (run it with `UNDERLAY_REGENERATE=1` to rewrite the committed files).

/// underlay.v1: the agent API the CNI plugin calls.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
    include!("gen/underlay.v1.rs");
}

/// The link group (`IFLA_GROUP`) of host interfaces the plugin's DEL
/// retired: down, routeless, their pod gone. The agent deletes the whole
/// group in one request after a DEL: deleting a link makes the caller wait
/// for an RCU grace period, which a DEL would otherwise spend, and one
/// request deletes any number of links in one grace period. Part of the
/// contract between the plugin and the agent ("udl" in ASCII: no other
/// software on the node is expected to use it).
pub const RETIRED_LINK_GROUP: u32 = 0x0075_646c;

use std::path::Path;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel to the agent's gRPC API on its unix socket: dialled within
/// `connect_timeout`, each call bounded by `call_timeout` when given.
pub async fn unix_channel(
    socket: &Path,
    connect_timeout: Duration,
    call_timeout: Option<Duration>,
) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    // tonic wants a URI; the connector dials the socket instead.
    let mut endpoint =
        Endpoint::from_static("http://underlay-agent.sock").connect_timeout(connect_timeout);
    if let Some(t) = call_timeout {
        endpoint = endpoint.timeout(t);
    }
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

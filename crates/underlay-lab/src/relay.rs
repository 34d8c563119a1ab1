//! TCP relays from inside a node namespace to a service on the machine's
//! loopback (the API server, the ARM endpoint).
//!
//! A process in a node namespace cannot reach the machine's 127.0.0.1, and
//! the lab never adds interfaces or routes to the machine's own namespace.
//! Instead the relay opens its listening socket inside the node namespace (a
//! socket stays in the namespace it was created in) and connects onwards from
//! the lab's own namespace: the node's agent talks to `127.0.0.1:PORT` in its
//! namespace and reaches the service.

use crate::netns;
use std::net::SocketAddr;
use std::path::Path;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running relay; dropping it stops accepting (open connections finish).
#[derive(Debug)]
pub struct Relay {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a relay listening on `listen` inside the namespace at `netns_path`
/// and forwarding every connection to `target` from this namespace. Must be
/// called inside a tokio runtime.
pub fn start(netns_path: &Path, listen: SocketAddr, target: SocketAddr) -> netns::Result<Relay> {
    let std_listener = netns::in_netns(netns_path, move || {
        let l = std::net::TcpListener::bind(listen)?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    })?
    .map_err(|source| netns::Error::Enter {
        path: netns_path.to_owned(),
        source,
    })?;
    let listen = std_listener.local_addr().unwrap_or(listen);
    let listener = TcpListener::from_std(std_listener).map_err(|source| netns::Error::Enter {
        path: netns_path.to_owned(),
        source,
    })?;
    let task = tokio::spawn(accept_loop(listener, target));
    Ok(Relay {
        listen,
        target,
        task,
    })
}

async fn accept_loop(listener: TcpListener, target: SocketAddr) {
    loop {
        let (mut inbound, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "relay accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(error) => {
                    tracing::warn!(%error, %peer, %target, "relay could not reach its target");
                }
            }
        });
    }
}

//! The plugin's connections: every accepted unix-socket connection carries
//! a token, and each request on it a [`Lease`] that stays alive while the
//! connection is open. The CNI plugin keeps its one connection until its
//! process ends, so an ADD's lease lasts until the plugin has wired the pod
//! (or rolled back, or died): what GC must not race.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::server::Connected;

/// Alive while the connection a request came on is open.
#[derive(Debug, Clone)]
pub struct Lease(Weak<()>);

impl Lease {
    pub fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    /// Whether both came on the same connection.
    pub fn same(&self, other: &Lease) -> bool {
        Weak::ptr_eq(&self.0, &other.0)
    }

    /// A lease that was never alive (requests that came some other way).
    pub fn none() -> Lease {
        Lease(Weak::new())
    }

    /// A lease and the token keeping it alive, for callers that are not
    /// gRPC connections (tests, tools).
    pub fn held() -> (Lease, Arc<()>) {
        let token = Arc::new(());
        (Lease(Arc::downgrade(&token)), token)
    }
}

/// An accepted connection; dropping it (the connection ended) ends its
/// requests' leases.
pub struct Conn {
    io: UnixStream,
    token: Arc<()>,
}

impl Connected for Conn {
    type ConnectInfo = Lease;
    fn connect_info(&self) -> Lease {
        Lease(Arc::downgrade(&self.token))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The connections accepted on `listener`.
pub fn incoming(listener: UnixListener) -> impl futures::Stream<Item = io::Result<Conn>> {
    futures::stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(io, _)| Conn {
            io,
            token: Arc::new(()),
        });
        Some((conn, listener))
    })
}

/// The lease of a request (none when it came some other way).
pub fn lease_of<T>(req: &tonic::Request<T>) -> Lease {
    req.extensions()
        .get::<Lease>()
        .cloned()
        .unwrap_or_else(Lease::none)
}

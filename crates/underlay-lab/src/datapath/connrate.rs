//! New TCP connections per second between two pods: a server that accepts,
//! answers one byte and waits for the client to go, and a client that opens
//! connections one after another for a fixed time.
//!
//! Every connection is new to conntrack, so each SYN is evaluated by the
//! node's policy rules, which is what the rate measures. The client ends each
//! connection with a reset (SO_LINGER 0), so neither side keeps the
//! connection in TIME_WAIT and the client's ephemeral ports never run out.

use super::BoxError;
use crate::netns;
use socket2::SockRef;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The port the server listens on.
pub const PORT: u16 = 5202;

/// How long one connection may take to be set up and answered.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections opened before the clock starts (ARP, routes, caches).
const WARM_UP: usize = 50;

/// The server, accepting in a thread of this process on a socket that lives
/// in the pod's namespace; stopped on drop.
pub struct ConnServer {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConnServer {
    /// Listens on [`PORT`] inside `netns` (IPv4 and IPv6); listening when
    /// this returns.
    pub fn start(netns: &Path) -> Result<Self, BoxError> {
        let listener = netns::in_netns(netns, || -> std::io::Result<TcpListener> {
            let l = TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), PORT))?;
            // accept(2) honours the receive timeout: the loop sees `stop`.
            SockRef::from(&l).set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(l)
        })?
        .map_err(|e| format!("cannot listen on port {PORT} in {}: {e}", netns.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), answered.clone());
        let thread = std::thread::spawn(move || serve(&listener, &flag, &count));
        Ok(Self {
            stop,
            answered,
            thread: Some(thread),
        })
    }

    /// Connections answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for ConnServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection at a time: the client opens them one at a time too.
fn serve(listener: &TcpListener, stop: &AtomicBool, answered: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        let _ = answer(&mut stream, answered);
    }
}

/// Reads the client's byte, answers it, then reads until the client's reset
/// or close ends the connection.
fn answer(stream: &mut TcpStream, answered: &AtomicU64) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    // Counted before the answer leaves: a client that has its answer
    // finds it counted.
    answered.fetch_add(1, Ordering::Relaxed);
    stream.write_all(&byte)?;
    while stream.read(&mut byte)? > 0 {}
    Ok(())
}

/// Connections a client opened in the time it took.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    /// Counted ones, after the warm-up.
    pub connections: u64,
    pub elapsed: Duration,
}

impl Opened {
    pub fn per_second(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Opens connections from the current namespace to `target` one after
/// another for `duration`, after [`WARM_UP`] uncounted ones. Call it on a
/// thread inside the client's namespace (`netns::in_netns`).
pub fn open(target: SocketAddr, duration: Duration) -> Result<Opened, BoxError> {
    for _ in 0..WARM_UP {
        one(target).map_err(|e| format!("connection to {target} during warm-up: {e}"))?;
    }
    let start = Instant::now();
    let mut connections = 0u64;
    while start.elapsed() < duration {
        one(target).map_err(|e| format!("connection {connections} to {target}: {e}"))?;
        connections += 1;
    }
    Ok(Opened {
        connections,
        elapsed: start.elapsed(),
    })
}

/// Connect, send a byte, read it back, reset.
fn one(target: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, STEP_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.write_all(b"c")?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::Netns;

    /// Server and client in one namespace the test creates, over loopback:
    /// every connection the client counts was a new one the server answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_counted_connection_is_a_new_one_the_server_answered() {
        if !netns::require_root("each_counted_connection_is_a_new_one_the_server_answered") {
            return;
        }
        let ns = Netns::create_unique("-cr").await.expect("namespace");
        let server = ConnServer::start(&ns.path()).expect("server");
        let target = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), PORT);
        let opened = ns
            .enter(move || open(target, Duration::from_millis(50)).map_err(|e| e.to_string()))
            .expect("enter")
            .expect("connections");
        assert_eq!(server.answered(), WARM_UP as u64 + opened.connections);
        drop(server);
        ns.delete().await.expect("delete namespace");
    }
}

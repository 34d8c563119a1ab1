//! The thread that reads the NFLOG socket into [`Denials`]: each datagram
//! is parsed and aggregated as it arrives, and a window that has ended is
//! flushed (reads wake at least every [`POLL`], so a window ends on time
//! when traffic stops, and a stop request is seen).

use super::Denials;
use crate::dataplane::Result;
use crate::model::{Direction, PodKey};
use crate::nflog;
use netlink_sys::Socket;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The longest a read waits before the thread checks its window and stop.
pub const POLL: Duration = Duration::from_millis(100);
/// The name of the consumer's thread (for `/proc/self/task/*/comm`).
pub const THREAD_NAME: &str = "udl-nflog";

/// Names a record's pod and the policies isolating it in a direction (see
/// [`super::Namer`]; it locks the engine to ask its model).
pub type NameFn = Box<dyn Fn(&PodKey, Direction, IpAddr) -> (PodKey, String) + Send>;

/// A running consumer; dropping it asks the thread to stop (it does so
/// within [`POLL`]), [`Consumer::stop`] also waits for it.
pub struct Consumer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Consumer {
    /// Binds `group` in the network namespace `netns` (`None`: the current
    /// one) and starts reading it into `denials`.
    pub fn start(
        netns: Option<&str>,
        group: u16,
        denials: Arc<Denials>,
        name: NameFn,
    ) -> Result<Consumer> {
        let socket = crate::ctnetlink::in_netns(netns, || nflog::open(group, POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || run(&socket, &denials, &*name, &flag))
            .map_err(crate::nl::io("start the nflog reader thread"))?;
        info!(group, "reading denied packets from nflog");
        Ok(Consumer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn run(
    socket: &Socket,
    denials: &Denials,
    name: &(dyn Fn(&PodKey, Direction, IpAddr) -> (PodKey, String) + Send),
    stop: &AtomicBool,
) {
    let mut buf = Vec::with_capacity(256 * 1024);
    while !stop.load(Ordering::Relaxed) {
        buf.clear();
        match socket.recv(&mut buf, 0) {
            Ok(_) => denials.observe(nflog::parse_datagram(&buf), Instant::now()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                // The kernel dropped messages the socket had no room for.
                denials.metrics.denials_dropped.inc();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                warn!(error = %e, "reading nflog failed; retrying");
                std::thread::sleep(POLL);
            }
        }
        let now = Instant::now();
        if denials.due(now) {
            denials.flush(now, name);
        }
    }
}

//! iperf3 in the pods' namespaces: a server that is known to listen before
//! any client runs, and the client that reports throughput.

use super::BoxError;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The port the server listens on.
pub const PORT: u16 = 5201;

/// How long the server may take to listen.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// The most of the server's stderr kept for an error message.
const STDERR_KEPT: usize = 4096;

/// An iperf3 server in a pod's namespace for the whole run; killed on drop.
pub struct IperfServer {
    child: Mutex<Child>,
    /// iperf3's, which nsenter execs.
    pid: u32,
    netns: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
    drainer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl IperfServer {
    /// Starts the server and returns once its port listens inside `netns`;
    /// a server that exits first is an error carrying its stderr.
    pub fn start(netns: &Path) -> Result<Self, BoxError> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--", "iperf3", "-s", "-p", &PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!("cannot start iperf3 through nsenter: {e}; is iperf3 installed?")
            })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        // Drained all along so that a chatty server never blocks on a full
        // pipe; the first few KiB are kept for error messages.
        let drainer = child.stderr.take().map(|pipe| {
            let sink = stderr.clone();
            std::thread::spawn(move || drain(pipe, &sink))
        });
        let server = Self {
            pid: child.id(),
            child: Mutex::new(child),
            netns: netns.to_owned(),
            stderr,
            drainer: Mutex::new(drainer),
        };
        server.wait_listening()?;
        Ok(server)
    }

    fn wait_listening(&self) -> Result<(), BoxError> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            self.check_running()?;
            if listening(&self.netns, PORT, self.pid)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "iperf3 server in {} not listening on port {PORT} after {}s: {}",
                    self.netns.display(),
                    READY_WITHIN.as_secs(),
                    self.stderr_text()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An error with the server's stderr if it has exited.
    pub fn check_running(&self) -> Result<(), BoxError> {
        let status = match self.child.lock() {
            Ok(mut child) => child.try_wait(),
            Err(_) => return Err("iperf3 server handle poisoned".into()),
        };
        match status {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "iperf3 server in {} exited ({status}): {}",
                self.netns.display(),
                self.stderr_after_exit()
            )
            .into()),
            Err(e) => Err(format!(
                "iperf3 server in {}: cannot read its state ({e}): {}",
                self.netns.display(),
                self.stderr_text()
            )
            .into()),
        }
    }

    /// Its stderr once the pipe is drained to the end.
    fn stderr_after_exit(&self) -> String {
        let drainer = self.drainer.lock().ok().and_then(|mut d| d.take());
        if let Some(d) = drainer {
            let _ = d.join();
        }
        self.stderr_text()
    }

    fn stderr_text(&self) -> String {
        let kept = self.stderr.lock().map(|b| b.clone()).unwrap_or_default();
        let text = String::from_utf8_lossy(&kept).trim().to_owned();
        if text.is_empty() {
            "no output on stderr".into()
        } else {
            text
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn drain(mut pipe: impl Read, sink: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Ok(mut kept) = sink.lock() {
            let room = STDERR_KEPT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
    }
}

/// Whether process `pid` has a TCP socket listening on `port` inside
/// `netns` (`ss -ltnpH`): another process's socket on the port does not
/// count.
fn listening(netns: &Path, port: u16, pid: u32) -> Result<bool, BoxError> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "ss", "-ltnpH", &format!("sport = :{port}")])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ss through nsenter: {e}; is iproute2 installed?"))?;
    if !out.status.success() {
        return Err(format!(
            "ss in {} failed ({}): {}",
            netns.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(owned_by(&String::from_utf8_lossy(&out.stdout), pid))
}

/// Whether a line of `ss -p` output names process `pid`.
fn owned_by(ss: &str, pid: u32) -> bool {
    let needle = format!("pid={pid},");
    ss.lines().any(|l| l.contains(&needle))
}

/// Throughput in Gbit/s from `client` to the server at `target` over
/// `seconds`. The server listens already; the one refusal retried is
/// "busy", the server still finishing the previous test.
pub fn client(
    server: &IperfServer,
    client: &Path,
    target: IpAddr,
    seconds: u32,
) -> Result<f64, BoxError> {
    let mut busy_retries = 20;
    loop {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", client.display()))
            .args(["--", "iperf3", "-J", "-p", &PORT.to_string(), "-t"])
            .arg(seconds.to_string())
            .arg("-c")
            .arg(target.to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run iperf3 through nsenter: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "iperf3 client printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64()
            && out.status.success()
        {
            return Ok(bps / 1e9);
        }
        let error = v["error"]
            .as_str()
            .unwrap_or("no error reported")
            .to_owned();
        server.check_running()?;
        if error.contains("busy") && busy_retries > 0 {
            busy_retries -= 1;
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        return Err(format!("iperf3 client to {target}: {error}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::{self, Netns};
    use std::net::{Ipv6Addr, SocketAddr, TcpListener};

    #[test]
    fn a_listening_socket_counts_only_for_its_own_process() {
        let ss = "LISTEN 0 5 *:5201 *:* users:((\"iperf3\",pid=4242,fd=3))\n";
        assert!(owned_by(ss, 4242));
        assert!(!owned_by(ss, 424));
        assert!(!owned_by("", 4242));
    }

    /// The port is held by another socket: iperf3 exits, and the error
    /// says why in iperf3's own words instead of the port looking ready.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_cannot_listen_is_an_error_with_its_stderr() {
        if !netns::require_root("a_server_that_cannot_listen_is_an_error_with_its_stderr") {
            return;
        }
        let ns = Netns::create_unique("-ip").await.expect("namespace");
        let _holder = ns
            .enter(|| TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), PORT)))
            .expect("enter")
            .expect("bind");
        let path = ns.path();
        let err = tokio::task::spawn_blocking(move || IperfServer::start(&path).err())
            .await
            .expect("join")
            .expect("iperf3 started on a port another socket holds");
        assert!(
            err.to_string().contains("exited") && err.to_string().contains("in use"),
            "{err}"
        );
        ns.delete().await.expect("delete namespace");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_started_server_accepts_at_once() {
        if !netns::require_root("a_started_server_accepts_at_once") {
            return;
        }
        let ns = Netns::create_unique("-ip").await.expect("namespace");
        let path = ns.path();
        let server = tokio::task::spawn_blocking(move || IperfServer::start(&path))
            .await
            .expect("join")
            .expect("server");
        let target = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), PORT);
        ns.enter(move || std::net::TcpStream::connect(target))
            .expect("enter")
            .expect("connect to the server that start() found listening");
        server.check_running().expect("still running");
        drop(server);
        ns.delete().await.expect("delete namespace");
    }
}

//! The x/y/z world as real network namespaces: one node namespace and nine
//! pod namespaces joined by veths named `udl<ns><pod>`, the node routing
//! between them with /32 and /128 routes (pods route through link-local
//! gateways 169.254.1.1 and fe80::1 held by the node side of each veth).
//! Every pod serves TCP and UDP on ports 80 and 81 and answers SCTP INITs
//! with INIT-ACKs through a raw socket (this kernel has no SCTP sockets).
//! Nothing touches the machine's own namespace; everything is removed on
//! drop.

use super::{PORTS, Pid, Probe};
use socket2::{Domain, Protocol as SockProto, SockAddr, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Handle;
use underlay_policy::model::{Family, Protocol};

/// True when the test may run; prints a skip line otherwise. Fails when
/// UNDERLAY_REQUIRE_ROOT is set and we are not root.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("UNDERLAY_REQUIRE_ROOT").is_some() {
        panic!("{test} needs root (network namespaces) and UNDERLAY_REQUIRE_ROOT is set");
    }
    eprintln!("skipping {test}: needs root for network namespaces");
    false
}

pub fn sh(args: &[&str]) -> String {
    // starts: caller
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn batch(ns: &str, script: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ip -n {ns} -batch failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One pod namespace with its serving thread.
struct PodNs {
    name: String,
    handle: Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct Lab {
    pub node: String,
    pods: Vec<PodNs>,
    /// Namespaces to delete on drop.
    names: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.pods {
            if let Some(s) = p.stop.take() {
                let _ = s.send(());
            }
            if let Some(t) = p.thread.take() {
                let _ = t.join();
            }
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs a current-thread runtime on a thread that entered `netns`: every
/// socket its tasks create lives in that namespace.
fn spawn_in_netns(
    netns: &str,
) -> (
    Handle,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let path = format!("/run/netns/{netns}");
    let (htx, hrx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        htx.send(rt.handle().clone()).unwrap();
        rt.block_on(async move {
            let _ = stop_rx.await;
        });
    });
    (hrx.recv().unwrap(), stop_tx, thread)
}

impl Lab {
    /// Builds the node and the nine pods and starts their servers.
    pub async fn new(tag: &str) -> Lab {
        let id = format!(
            "udlt{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let node = format!("{id}-node");
        let mut lab = Lab {
            node: node.clone(),
            pods: Vec::new(),
            names: Vec::new(),
        };
        sh(&["ip", "netns", "add", &node]);
        lab.names.push(node.clone());
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            // Probe flows end at once; short UDP entries keep the
            // conntrack table (and its cleanup after each change) small.
            ("net.netfilter.nf_conntrack_udp_timeout", "1"),
            ("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1"),
            ("net.netfilter.nf_conntrack_tcp_timeout_close", "1"),
            ("net.netfilter.nf_conntrack_tcp_timeout_syn_sent", "2"),
            ("net.netfilter.nf_conntrack_sctp_timeout_cookie_wait", "2"),
        ] {
            sh(&[
                "ip",
                "netns",
                "exec",
                &node,
                "sysctl",
                "-qw",
                &format!("{k}={v}"),
            ]);
        }
        let mut node_script = String::from("link set lo up\n");
        for p in Pid::all() {
            let pod_ns = format!("{id}-{}{}", p.ns_name(), p.pod_name());
            sh(&["ip", "netns", "add", &pod_ns]);
            lab.names.push(pod_ns.clone());
            let iface = p.interface();
            sh(&[
                "ip", "-n", &node, "link", "add", &iface, "type", "veth", "peer", "name", "eth0",
                "netns", &pod_ns,
            ]);
            let (v4, v6) = (p.ip(Family::V4), p.ip(Family::V6));
            node_script.push_str(&format!(
                "link set {iface} up\naddr add 169.254.1.1/32 dev {iface}\naddr add fe80::1/64 dev {iface} nodad\nroute add {v4}/32 dev {iface}\nroute add {v6}/128 dev {iface}\n"
            ));
            batch(
                &pod_ns,
                &format!(
                    "link set lo up\nlink set eth0 up\naddr add {v4}/32 dev eth0\naddr add {v6}/128 dev eth0 nodad\nroute add 169.254.1.1/32 dev eth0 scope link\nroute add 0.0.0.0/0 via 169.254.1.1 dev eth0\nroute add ::/0 via fe80::1 dev eth0\n"
                ),
            );
            let (handle, stop, thread) = spawn_in_netns(&pod_ns);
            lab.pods.push(PodNs {
                name: pod_ns,
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        batch(&node, &node_script);
        for pod in &lab.pods {
            let (tx, rx) = tokio::sync::oneshot::channel();
            pod.handle.spawn(async move {
                let _ = tx.send(serve().await);
            });
            rx.await.expect("server task").expect("servers bound");
        }
        lab
    }

    pub fn pod_netns(&self, p: Pid) -> &str {
        &self.pods[p.number()].name
    }

    pub fn handle(&self, p: Pid) -> &Handle {
        &self.pods[p.number()].handle
    }

    /// Runs every probe in parallel; true = reached.
    pub async fn probe_all(&self, probes: &[Probe], timeout: Duration) -> Vec<bool> {
        let mut tasks = Vec::new();
        for p in probes {
            let p = *p;
            tasks.push(
                self.handle(p.src)
                    .spawn(async move { probe(p, timeout).await }),
            );
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or(false));
        }
        out
    }

    /// Probes, then probes again whatever disagrees with `expect`, so a
    /// lost first packet (neighbour discovery) is not reported.
    pub async fn check(
        &self,
        probes: &[Probe],
        expect: &(dyn Fn(&Probe) -> bool + Send + Sync),
    ) -> Vec<String> {
        let timeout = Duration::from_millis(300);
        let mut got = self.probe_all(probes, timeout).await;
        let retry: Vec<usize> = (0..probes.len())
            .filter(|i| got[*i] != expect(&probes[*i]))
            .collect();
        if !retry.is_empty() {
            let again: Vec<Probe> = retry.iter().map(|i| probes[*i]).collect();
            let r = self.probe_all(&again, Duration::from_millis(800)).await;
            for (k, i) in retry.iter().enumerate() {
                got[*i] = r[k];
            }
        }
        let results: std::collections::HashMap<Probe, bool> =
            probes.iter().copied().zip(got).collect();
        super::mismatches(probes, |p| results[p], expect)
    }
}

async fn serve() -> std::io::Result<()> {
    for port in PORTS {
        let tcp = TcpListener::bind(("::", port)).await?;
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    // Echo until the peer closes: long-lived flows use it.
                    let mut buf = [0u8; 512];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        let udp = UdpSocket::bind(("::", port)).await?;
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                let _ = udp.send_to(&buf[..n], from).await;
            }
        });
    }
    for domain in [Domain::IPV4, Domain::IPV6] {
        let sock = raw_sctp(domain)?;
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((n, Some(from))) = recv_raw(&sock, &mut buf).await else {
                    continue;
                };
                let payload = strip_ipv4_header(domain, &buf[..n]);
                let Some(init) = parse_sctp(payload) else {
                    continue;
                };
                if init.chunk != 1 || !PORTS.contains(&init.dport) {
                    continue;
                }
                let reply = sctp_packet(init.dport, init.sport, init.init_tag, 2, 0x5eed_0001);
                let _ = sock
                    .get_ref()
                    .send_to(&reply, &SockAddr::from(SocketAddr::new(from, 0)));
            }
        });
    }
    Ok(())
}

fn raw_sctp(domain: Domain) -> std::io::Result<AsyncFd<Socket>> {
    let s = Socket::new(domain, Type::RAW, Some(SockProto::from(132)))?;
    s.set_nonblocking(true)?;
    // `new` is deprecated for types that merely borrow a descriptor; the
    // socket owns its descriptor here, so the I/O-safety concern is moot.
    #[allow(deprecated)]
    AsyncFd::new(s)
}

async fn recv_raw(
    sock: &AsyncFd<Socket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<IpAddr>)> {
    use nix::sys::socket::{SockaddrStorage, recvfrom};
    use std::os::fd::AsRawFd;
    loop {
        let mut guard = sock.readable().await?;
        let r = guard.try_io(|s| {
            recvfrom::<SockaddrStorage>(s.get_ref().as_raw_fd(), buf).map_err(std::io::Error::from)
        });
        match r {
            Ok(Ok((n, from))) => {
                let ip = from.and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                });
                return Ok((n, ip));
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

fn strip_ipv4_header(domain: Domain, pkt: &[u8]) -> &[u8] {
    if domain == Domain::IPV4 && !pkt.is_empty() {
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        pkt.get(ihl..).unwrap_or(&[])
    } else {
        pkt
    }
}

pub struct Sctp {
    pub sport: u16,
    pub dport: u16,
    pub vtag: u32,
    pub chunk: u8,
    pub init_tag: u32,
}

pub fn parse_sctp(b: &[u8]) -> Option<Sctp> {
    if b.len() < 20 {
        return None;
    }
    let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Some(Sctp {
        sport: u16_at(0),
        dport: u16_at(2),
        vtag: u32_at(4),
        chunk: b[12],
        init_tag: u32_at(16),
    })
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An INIT (chunk 1, vtag 0) or an INIT-ACK (chunk 2, vtag = the INIT's
/// initiate tag, with a state cookie).
pub fn sctp_packet(sport: u16, dport: u16, vtag: u32, chunk: u8, init_tag: u32) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&vtag.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    let params: Vec<u8> = if chunk == 2 {
        let mut c = vec![0, 7, 0, 12];
        c.extend_from_slice(&[0xc0, 0x0c, 0x1e, 0x00, 0, 0, 0, 1]);
        c
    } else {
        Vec::new()
    };
    let len = (20 + params.len()) as u16;
    p.extend_from_slice(&[chunk, 0]);
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&init_tag.to_be_bytes());
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&init_tag.to_be_bytes()); // initial TSN
    p.extend_from_slice(&params);
    let crc = crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

static SCTP_PORT: AtomicU16 = AtomicU16::new(20000);

/// One probe, run on the source pod's thread.
pub async fn probe(p: Probe, timeout: Duration) -> bool {
    let dst = SocketAddr::new(p.dst.ip(p.family), p.port);
    let attempt = async {
        match p.protocol {
            Protocol::Tcp => TcpStream::connect(dst).await.is_ok(),
            Protocol::Udp => {
                let bind: SocketAddr = match p.family {
                    Family::V4 => "0.0.0.0:0".parse().unwrap(),
                    Family::V6 => "[::]:0".parse().unwrap(),
                };
                let Ok(s) = UdpSocket::bind(bind).await else {
                    return false;
                };
                if s.send_to(b"probe", dst).await.is_err() {
                    return false;
                }
                let mut buf = [0u8; 64];
                matches!(s.recv_from(&mut buf).await, Ok((5, from)) if from.ip() == dst.ip())
            }
            Protocol::Sctp => sctp_probe(p.dst.ip(p.family), p.port).await,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

async fn sctp_probe(dst: IpAddr, port: u16) -> bool {
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let Ok(sock) = raw_sctp(domain) else {
        return false;
    };
    let sport = SCTP_PORT.fetch_add(1, Ordering::Relaxed) % 30000 + 20000;
    let tag = 0x1000_0000 | u32::from(sport) << 8 | u32::from(port & 0xff);
    let init = sctp_packet(sport, port, 0, 1, tag);
    if sock
        .get_ref()
        .send_to(&init, &SockAddr::from(SocketAddr::new(dst, 0)))
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, _)) = recv_raw(&sock, &mut buf).await else {
            return false;
        };
        let payload = strip_ipv4_header(domain, &buf[..n]);
        if let Some(r) = parse_sctp(payload)
            && r.chunk == 2
            && r.sport == port
            && r.dport == sport
            && r.vtag == tag
        {
            return true;
        }
    }
}

//! Traffic inside pods: the small servers the kubelet emulator runs for each
//! declared containerPort (TCP, UDP, SCTP) and the probes that test
//! reachability from one pod to another.
//!
//! Servers answer every request with the pod's identity (`namespace/name`),
//! so a probe knows which pod answered. This kernel has no SCTP sockets, so
//! SCTP is spoken over raw IP sockets of protocol 132: the probe sends an INIT
//! chunk and the server answers INIT-ACK, which is enough to prove that the
//! association could start — and that policy let it through.
//!
//! Everything here is blocking and runs in the calling thread's network
//! namespace: callers enter a pod's namespace first (see `netns::in_netns`),
//! or run the server as a process inside it.

use socket2::{Domain, Protocol as SockProtocol, SockAddr, Socket, Type};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// IANA protocol number of SCTP.
pub const IPPROTO_SCTP: i32 = 132;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "sctp" => Ok(Self::Sctp),
            other => Err(format!("unknown protocol {other:?}; use tcp, udp or sctp")),
        }
    }
}

/// One port a pod serves, written `80/TCP` on the command line.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PortSpec {
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

impl std::str::FromStr for PortSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (port, protocol) = s.split_once('/').unwrap_or((s, "tcp"));
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port {port:?} in {s:?}; use PORT[/tcp|udp|sctp]"))?;
        Ok(Self {
            port,
            protocol: protocol.parse()?,
        })
    }
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// The connection (or the SCTP INIT/INIT-ACK exchange, or a UDP
    /// round trip) completed; `reply` is what the server said, if anything.
    Connected { reply: String, rtt_us: u64 },
    /// The peer refused (TCP RST, ICMP unreachable).
    Refused,
    /// Nothing came back in time (dropped by policy or by the fabric).
    Timeout,
    /// The probe itself could not run.
    Error(String),
}

impl Outcome {
    pub fn connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }

    /// The pod identity that answered, if any.
    pub fn reply(&self) -> Option<&str> {
        match self {
            Self::Connected { reply, .. } if !reply.is_empty() => Some(reply),
            _ => None,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connected { reply, rtt_us } => {
                write!(f, "connected in {rtt_us}us")?;
                if !reply.is_empty() {
                    write!(f, " to {reply}")?;
                }
                Ok(())
            }
            Self::Refused => f.write_str("refused"),
            Self::Timeout => f.write_str("timed out"),
            Self::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// Probes `target` over `protocol` from the current network namespace.
pub fn probe(target: SocketAddr, protocol: Protocol, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let result = match protocol {
        Protocol::Tcp => probe_tcp(target, timeout),
        Protocol::Udp => probe_udp(target, timeout),
        Protocol::Sctp => probe_sctp(target, timeout),
    };
    match result {
        Ok(Some(reply)) => Outcome::Connected {
            reply,
            rtt_us: u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
        },
        Ok(None) => Outcome::Timeout,
        Err(e) => classify(e),
    }
}

fn classify(e: std::io::Error) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable => {
            Outcome::Refused
        }
        TimedOut | WouldBlock => Outcome::Timeout,
        _ => Outcome::Error(e.to_string()),
    }
}

fn probe_tcp(target: SocketAddr, timeout: Duration) -> std::io::Result<Option<String>> {
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // The handshake completed: that is a connection whatever the reply.
    let _ = stream.write_all(b"who\n");
    let mut line = String::new();
    let _ = BufReader::new(&stream).read_line(&mut line);
    Ok(Some(line.trim().to_owned()))
}

fn probe_udp(target: SocketAddr, timeout: Duration) -> std::io::Result<Option<String>> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("valid address"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("valid address"),
    };
    let socket = UdpSocket::bind(bind)?;
    // Connected, so that ICMP port unreachable surfaces as ECONNREFUSED.
    socket.connect(target)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(b"who\n")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    Ok(Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned()))
}

fn raw_sctp_socket(family: &SocketAddr) -> std::io::Result<Socket> {
    let domain = match family {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    };
    Socket::new(domain, Type::RAW, Some(SockProtocol::from(IPPROTO_SCTP)))
}

fn probe_sctp(target: SocketAddr, timeout: Duration) -> std::io::Result<Option<String>> {
    let socket = raw_sctp_socket(&target)?;
    let src_port = 32768 + (fastrand::u16(..) % 28000);
    let tag = fastrand::u32(1..);
    let init = sctp::init(src_port, target.port(), tag);
    socket.send_to(&init, &SockAddr::from(SocketAddr::new(target.ip(), 0)))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left))?;
        let (n, from) = match nix::sys::socket::recvfrom::<nix::sys::socket::SockaddrStorage>(
            socket.as_raw_fd(),
            &mut buf,
        ) {
            Ok((n, from)) => (n, from),
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let from_ip = from.as_ref().and_then(sockaddr_ip);
        if from_ip != Some(target.ip()) {
            continue;
        }
        let packet = strip_ipv4_header(&buf[..n], target.is_ipv4());
        if let Some(ack) = sctp::parse_init_ack(packet)
            && ack.dst_port == src_port
            && ack.src_port == target.port()
            && ack.verification_tag == tag
        {
            return Ok(Some(ack.cookie));
        }
    }
}

fn sockaddr_ip(addr: &nix::sys::socket::SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

/// IPv4 raw sockets deliver the IP header, IPv6 ones do not.
fn strip_ipv4_header(packet: &[u8], ipv4: bool) -> &[u8] {
    if !ipv4 {
        return packet;
    }
    let ihl = packet
        .first()
        .map(|b| usize::from(b & 0x0f) * 4)
        .unwrap_or(0);
    packet.get(ihl..).unwrap_or_default()
}

/// Sockets opened inside a pod's namespace, ready to serve.
#[derive(Debug)]
pub struct Listeners {
    tcp: Vec<std::net::TcpListener>,
    udp: Vec<std::net::UdpSocket>,
    sctp: Vec<(Socket, bool)>,
    sctp_ports: Vec<u16>,
}

/// Opens a socket for every port in the current namespace (call it through
/// `netns::in_netns`): `[::]` with IPV6_V6ONLY off serves IPv4 and IPv6.
/// Fails if any port cannot be opened.
pub fn open(ports: &[PortSpec]) -> std::io::Result<Listeners> {
    let mut out = Listeners {
        tcp: Vec::new(),
        udp: Vec::new(),
        sctp: Vec::new(),
        sctp_ports: Vec::new(),
    };
    for spec in ports {
        let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), spec.port);
        match spec.protocol {
            Protocol::Tcp => {
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                out.tcp.push(l);
            }
            Protocol::Udp => {
                let u = UdpSocket::bind(addr)?;
                u.set_nonblocking(true)?;
                out.udp.push(u);
            }
            Protocol::Sctp => out.sctp_ports.push(spec.port),
        }
    }
    if !out.sctp_ports.is_empty() {
        for v6 in [false, true] {
            let family: SocketAddr = if v6 {
                "[::1]:0".parse().expect("valid address")
            } else {
                "127.0.0.1:0".parse().expect("valid address")
            };
            let socket = raw_sctp_socket(&family)?;
            socket.set_nonblocking(true)?;
            out.sctp.push((socket, v6));
        }
    }
    Ok(out)
}

/// Running servers of one pod; dropping them closes every socket.
#[derive(Debug)]
pub struct Servers {
    _tasks: tokio::task::JoinSet<()>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves every opened socket, answering with `identity`, until the
/// returned [`Servers`] is dropped. Must be called inside a tokio runtime.
pub fn serve(listeners: Listeners, identity: &str) -> std::io::Result<Servers> {
    let mut set = tokio::task::JoinSet::new();
    for l in listeners.tcp {
        set.spawn(serve_tcp(
            tokio::net::TcpListener::from_std(l)?,
            identity.to_owned(),
        ));
    }
    for u in listeners.udp {
        set.spawn(serve_udp(
            tokio::net::UdpSocket::from_std(u)?,
            identity.to_owned(),
        ));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (socket, v6) in listeners.sctp {
        // Raw sockets are served by a plain thread that polls a stop flag:
        // registering a raw fd with tokio would need unsafe code.
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let ports = listeners.sctp_ports.clone();
        let id = identity.to_owned();
        let stop = stop.clone();
        std::thread::spawn(move || serve_sctp(&socket, v6, &ports, &id, &stop));
    }
    Ok(Servers { _tasks: set, stop })
}

async fn serve_tcp(listener: tokio::net::TcpListener, identity: String) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let id = identity.clone();
        conns.spawn(async move {
            let _ = stream.set_nodelay(true);
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            // Answer every line with our identity: probes send one,
            // latency benchmarks many over one connection.
            while let Ok(Some(_)) = lines.next_line().await {
                if write.write_all(format!("{id}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn serve_udp(socket: tokio::net::UdpSocket, identity: String) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(identity.as_bytes(), from).await;
        }
    }
}

fn serve_sctp(
    socket: &Socket,
    v6: bool,
    ports: &[u16],
    identity: &str,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut buf = [0u8; 2048];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok((n, Some(from))) = nix::sys::socket::recvfrom::<nix::sys::socket::SockaddrStorage>(
            socket.as_raw_fd(),
            &mut buf,
        ) else {
            continue;
        };
        let Some(from_ip) = sockaddr_ip(&from) else {
            continue;
        };
        let packet = strip_ipv4_header(&buf[..n], !v6);
        let Some(init) = sctp::parse_init(packet) else {
            continue;
        };
        if !ports.contains(&init.dst_port) {
            // No SCTP stack here to send ABORT: an unserved port stays silent.
            continue;
        }
        let reply = sctp::init_ack(&init, fastrand::u32(1..), identity.as_bytes());
        let _ = socket.send_to(&reply, &SockAddr::from(SocketAddr::new(from_ip, 0)));
    }
}

/// Just enough SCTP (RFC 9260) to start an association: INIT and INIT-ACK
/// chunks, with the CRC32c checksum.
pub mod sctp {
    const INIT: u8 = 1;
    const INIT_ACK: u8 = 2;
    const STATE_COOKIE: u16 = 7;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Init {
        pub src_port: u16,
        pub dst_port: u16,
        pub initiate_tag: u32,
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct InitAck {
        pub src_port: u16,
        pub dst_port: u16,
        /// The common header's tag: the INIT's initiate tag echoed back.
        pub verification_tag: u32,
        pub cookie: String,
    }

    /// CRC32c (Castagnoli), as SCTP uses it.
    pub fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for byte in data {
            crc ^= u32::from(*byte);
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

    fn packet(src_port: u16, dst_port: u16, vtag: u32, chunk: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(12 + chunk.len());
        p.extend_from_slice(&src_port.to_be_bytes());
        p.extend_from_slice(&dst_port.to_be_bytes());
        p.extend_from_slice(&vtag.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(chunk);
        // The checksum goes in little-endian byte order (RFC 9260 appendix A).
        let sum = crc32c(&p);
        p[8..12].copy_from_slice(&sum.to_le_bytes());
        p
    }

    fn init_body(tag: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&tag.to_be_bytes());
        b.extend_from_slice(&65_535u32.to_be_bytes()); // a_rwnd
        b.extend_from_slice(&10u16.to_be_bytes()); // outbound streams
        b.extend_from_slice(&10u16.to_be_bytes()); // inbound streams
        b.extend_from_slice(&tag.wrapping_add(1).to_be_bytes()); // initial TSN
        b
    }

    fn chunk(kind: u8, body: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + body.len()).unwrap_or(u16::MAX);
        let mut c = vec![kind, 0];
        c.extend_from_slice(&len.to_be_bytes());
        c.extend_from_slice(body);
        while c.len() % 4 != 0 {
            c.push(0);
        }
        c
    }

    /// An INIT packet (verification tag 0, as RFC 9260 requires).
    pub fn init(src_port: u16, dst_port: u16, tag: u32) -> Vec<u8> {
        packet(src_port, dst_port, 0, &chunk(INIT, &init_body(tag)))
    }

    /// The INIT-ACK answering `init`, carrying `cookie` as the state cookie.
    pub fn init_ack(init: &Init, tag: u32, cookie: &[u8]) -> Vec<u8> {
        let mut body = init_body(tag);
        let cookie = &cookie[..cookie.len().min(512)];
        let plen = u16::try_from(4 + cookie.len()).unwrap_or(u16::MAX);
        body.extend_from_slice(&STATE_COOKIE.to_be_bytes());
        body.extend_from_slice(&plen.to_be_bytes());
        body.extend_from_slice(cookie);
        packet(
            init.dst_port,
            init.src_port,
            init.initiate_tag,
            &chunk(INIT_ACK, &body),
        )
    }

    fn valid(p: &[u8]) -> bool {
        if p.len() < 16 {
            return false;
        }
        let mut copy = p.to_vec();
        copy[8..12].copy_from_slice(&[0; 4]);
        crc32c(&copy).to_le_bytes() == p[8..12]
    }

    fn be16(p: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_be_bytes(p.get(at..at + 2)?.try_into().ok()?))
    }

    fn be32(p: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?))
    }

    /// Parses an SCTP packet whose first chunk is INIT.
    pub fn parse_init(p: &[u8]) -> Option<Init> {
        if !valid(p) || *p.get(12)? != INIT || be32(p, 4)? != 0 {
            return None;
        }
        Some(Init {
            src_port: be16(p, 0)?,
            dst_port: be16(p, 2)?,
            initiate_tag: be32(p, 16)?,
        })
    }

    /// Parses an SCTP packet whose first chunk is INIT-ACK.
    pub fn parse_init_ack(p: &[u8]) -> Option<InitAck> {
        if !valid(p) || *p.get(12)? != INIT_ACK {
            return None;
        }
        let chunk_len = usize::from(be16(p, 14)?);
        let chunk = p.get(12..12 + chunk_len)?;
        // Parameters start after the 4-byte chunk header and 16 bytes of
        // fixed fields.
        let mut at = 20;
        let mut cookie = String::new();
        while at + 4 <= chunk.len() {
            let kind = be16(chunk, at)?;
            let len = usize::from(be16(chunk, at + 2)?);
            if len < 4 {
                break;
            }
            if kind == STATE_COOKIE {
                cookie = String::from_utf8_lossy(chunk.get(at + 4..at + len)?).into_owned();
            }
            at += len.div_ceil(4) * 4;
        }
        Some(InitAck {
            src_port: be16(p, 0)?,
            dst_port: be16(p, 2)?,
            verification_tag: be32(p, 4)?,
            cookie,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(sctp::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn init_and_init_ack_round_trip() {
        let init = sctp::init(40000, 80, 0xdead_beef);
        let parsed = sctp::parse_init(&init).expect("valid init");
        assert_eq!(
            parsed,
            sctp::Init {
                src_port: 40000,
                dst_port: 80,
                initiate_tag: 0xdead_beef
            }
        );
        let ack = sctp::init_ack(&parsed, 7, b"x/server");
        let parsed_ack = sctp::parse_init_ack(&ack).expect("valid init-ack");
        assert_eq!(parsed_ack.src_port, 80);
        assert_eq!(parsed_ack.dst_port, 40000);
        assert_eq!(parsed_ack.verification_tag, 0xdead_beef);
        assert_eq!(parsed_ack.cookie, "x/server");
        // An INIT is not an INIT-ACK and vice versa.
        assert!(sctp::parse_init_ack(&init).is_none());
        assert!(sctp::parse_init(&ack).is_none());
    }

    #[test]
    fn corrupted_or_short_packets_are_rejected() {
        let mut init = sctp::init(1, 2, 3);
        init[20] ^= 0xff;
        assert!(sctp::parse_init(&init).is_none());
        assert!(sctp::parse_init(&[0u8; 5]).is_none());
        assert!(sctp::parse_init_ack(&[]).is_none());
    }

    #[test]
    fn port_specs_parse_with_tcp_as_the_default() {
        let check = |s: &str, want: Result<(u16, Protocol), ()>| {
            let got = s
                .parse::<PortSpec>()
                .map(|p| (p.port, p.protocol))
                .map_err(|_| ());
            assert_eq!(got, want, "{s}");
        };
        check("80", Ok((80, Protocol::Tcp)));
        check("53/UDP", Ok((53, Protocol::Udp)));
        check("9000/sctp", Ok((9000, Protocol::Sctp)));
        check("0/tcp", Err(()));
        check("80/icmp", Err(()));
        check("http", Err(()));
    }
}

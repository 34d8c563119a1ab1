//! The datapath benchmark: pod-to-pod TCP throughput (iperf3) and request
//! latency across two nodes, with underlay's native routing (the fabric
//! routes pod CIDRs to nodes) and, in the same run between the same
//! namespaces, with a VXLAN overlay (the design underlay rejects); then on a
//! full lab with 0 and with 1,000 NetworkPolicies. Results are ratios to the
//! native, policy-free reference measured in the same run.

use crate::lab::{Lab, LabConfig};
use crate::netns::{self, Netns};
use crate::scenario;
use crate::traffic::{self, PortSpec, Protocol};
use crate::vnet::{self, FabricRoute, NodeNet, Vnet, VnetConfig, overlay};
use serde_json::json;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One measured configuration.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub gbits: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub iperf_seconds: u32,
    pub requests: usize,
    pub policies: usize,
    /// Measurements per configuration (the median is reported).
    pub rounds: usize,
    /// Where the underlay binaries are; `None` skips the policy part.
    pub bin_dir: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            iperf_seconds: 3,
            requests: 2000,
            policies: 1000,
            rounds: 3,
            bin_dir: None,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An iperf3 server in a pod's namespace for the whole run; killed on drop.
struct IperfServer(std::process::Child);

impl IperfServer {
    fn start(server: &Path) -> Result<Self, BoxError> {
        Ok(Self(
            std::process::Command::new("nsenter")
                .arg(format!("--net={}", server.display()))
                .args(["--", "iperf3", "-s", "-p", "5201"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        ))
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf(client: &Path, target: IpAddr, seconds: u32) -> Result<f64, BoxError> {
    // iperf3 has no readiness signal: retry the client until it connects.
    let start = Instant::now();
    let out = loop {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", client.display()))
            .args(["--", "iperf3", "-J", "-p", "5201", "-t"])
            .arg(seconds.to_string())
            .arg("-c")
            .arg(target.to_string())
            .output()?;
        if out.status.success() || start.elapsed() > Duration::from_secs(30) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .ok_or_else(|| format!("iperf3 reported no throughput: {}", v["error"]).into())
}

/// Request/response latency over one TCP connection to a lab pod server.
fn latency(client: &Path, target: SocketAddr, n: usize) -> Result<(f64, f64, f64), BoxError> {
    let samples = netns::in_netns(client, move || -> std::io::Result<Vec<f64>> {
        let stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        let mut line = String::new();
        let mut out = Vec::with_capacity(n);
        for i in 0..n + 100 {
            let t = Instant::now();
            writer.write_all(b"req\n")?;
            line.clear();
            reader.read_line(&mut line)?;
            // The first 100 requests warm up caches and conntrack.
            if i >= 100 {
                out.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(out)
    })??;
    let mut s = samples;
    s.sort_by(f64::total_cmp);
    let pct = |p: f64| s[((s.len() as f64 - 1.0) * p) as usize];
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    Ok((pct(0.5), pct(0.99), mean))
}

fn measure(name: &str, client: &Path, ip: IpAddr, settings: &Settings) -> Result<Sample, BoxError> {
    eprintln!("datapath: measuring {name}");
    let gbits = iperf(client, ip, settings.iperf_seconds)?;
    let (p50, p99, mean) = latency(client, SocketAddr::new(ip, 80), settings.requests)?;
    Ok(Sample {
        name: name.into(),
        gbits,
        p50_us: p50,
        p99_us: p99,
        mean_us: mean,
    })
}

/// Native routing versus a VXLAN overlay between the same two nodes and
/// pods (wired by hand like the CNI plugin wires them; no agent involved).
pub async fn native_vs_overlay(settings: &Settings) -> Result<Vec<Sample>, BoxError> {
    let v = Vnet::create(VnetConfig {
        prefix: netns::unique_prefix(),
        dual_stack: false,
        propagation_delay: Duration::ZERO,
    })
    .await?;
    let result = compare_routing_modes(&v, settings).await;
    v.destroy().await?;
    result
}

/// The two nodes' overlay peers: each reaches the other's pod CIDR.
type OverlayPairs<'a> = [(&'a NodeNet, [(&'a NodeNet, &'static str); 1]); 2];

/// On the VNet `v`: pod a on node-1 and pod b (a server) on node-2, then
/// native routing and the overlay measured from a to b in alternating
/// rounds; the median of each.
async fn compare_routing_modes(v: &Vnet, settings: &Settings) -> Result<Vec<Sample>, BoxError> {
    let n1 = v.add_node("node-1").await?;
    let n2 = v.add_node("node-2").await?;
    let prefix = v.config().prefix.clone();
    let a = Netns::create(&format!("{prefix}-pa")).await?;
    let b = Netns::create(&format!("{prefix}-pb")).await?;
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 2, 10));
    vnet::plug_pod(&Netns::existing(&n1.netns), &a, "hpa", ip_a).await?;
    vnet::plug_pod(&Netns::existing(&n2.netns), &b, "hpb", ip_b).await?;
    let ports = vec![PortSpec {
        port: 80,
        protocol: Protocol::Tcp,
    }];
    let listeners = b.enter(move || traffic::open(&ports))??;
    let _servers = traffic::serve(listeners, "b")?;
    let _iperf = IperfServer::start(&b.path())?;

    let fabric = vec![
        FabricRoute {
            name: "n1".into(),
            prefix: "10.244.1.0/24".into(),
            next_hop: n1.ipv4.into(),
        },
        FabricRoute {
            name: "n2".into(),
            prefix: "10.244.2.0/24".into(),
            next_hop: n2.ipv4.into(),
        },
    ];
    let pairs: OverlayPairs<'_> = [
        (&n1, [(&n2, "10.244.2.0/24")]),
        (&n2, [(&n1, "10.244.1.0/24")]),
    ];
    create_overlay_devices(&pairs).await?;
    // Neither mode's routes: pods must not connect, or the comparison
    // would measure something else.
    v.apply_routes(Vec::new()).await?;
    let target: SocketAddr = (ip_b, 80).into();
    let path = a.path();
    let cut = netns::in_netns(&path, move || {
        traffic::probe(target, Protocol::Tcp, Duration::from_millis(500))
    })?;
    if cut.connected() {
        return Err(
            "pods connect with neither fabric nor overlay routes; the measurement would be wrong"
                .into(),
        );
    }
    // Alternate the modes so that load from elsewhere on the machine
    // falls on both alike; report the median of each.
    let (mut native, mut vxlan) = (Vec::new(), Vec::new());
    for _ in 0..settings.rounds.max(1) {
        overlay_routes(&pairs, false).await;
        v.apply_routes(fabric.clone()).await?;
        native.push(measure("native routing", &a.path(), ip_b.into(), settings)?);
        v.apply_routes(Vec::new()).await?;
        overlay_routes(&pairs, true).await;
        vxlan.push(measure("VXLAN overlay", &a.path(), ip_b.into(), settings)?);
    }
    Ok(vec![median(native), median(vxlan)])
}

/// The overlay's devices and forwarding entries on both nodes, without its
/// routes: they exist throughout, and switching modes swaps the routes
/// only (fabric routes for native, routes via vxlan0 for the overlay).
async fn create_overlay_devices(pairs: &OverlayPairs<'_>) -> Result<(), BoxError> {
    for (node, peers) in pairs {
        let lines: Vec<String> = overlay::lines(node, peers)
            .into_iter()
            .filter(|l| !l.starts_with("route "))
            .collect();
        Netns::existing(&node.netns).ip_batch(&lines).await?;
        for args in overlay::fdb_commands(peers) {
            let mut full = vec!["-n", node.netns.as_str()];
            full.extend(args.iter().map(String::as_str));
            netns::run("bridge", &full).await?;
        }
    }
    Ok(())
}

/// Adds (`on`) or deletes the overlay's routes on both nodes.
async fn overlay_routes(pairs: &OverlayPairs<'_>, on: bool) {
    for (node, peers) in pairs {
        let lines: Vec<String> = overlay::lines(node, peers)
            .into_iter()
            .filter(|l| l.starts_with("route "))
            .map(|l| {
                if on {
                    l
                } else {
                    format!(
                        "route del {}",
                        l.split_whitespace().nth(2).unwrap_or_default()
                    )
                }
            })
            .collect();
        let _ = Netns::existing(&node.netns).ip_batch(&lines).await;
    }
}

/// Underlay on a full lab (real CNI, agents, route controller) with no
/// policy and with `settings.policies` policies selecting the server pod.
pub async fn policies(settings: &Settings, bin_dir: &Path) -> Result<Vec<Sample>, BoxError> {
    let dir = tempfile_dir()?;
    let mut config = LabConfig::new(&netns::unique_prefix(), &dir, bin_dir);
    config.nodes = 2;
    config.route_controllers = 1;
    let progress = |m: &str| eprintln!("datapath: {m}");
    let lab = Lab::start(config, &progress).await?;
    let result = policies_on(&lab, settings).await;
    lab.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("underlay-datapath-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn policies_on(lab: &Lab, settings: &Settings) -> Result<Vec<Sample>, BoxError> {
    let (pa, pb, ip) = client_and_server(lab).await?;
    let _iperf = IperfServer::start(&pb)?;
    let zero = measure("underlay, 0 policies", &pa, ip, settings)?;
    create_policies(lab, settings.policies).await?;
    wait_policies_in_force(lab).await?;
    let many = measure(
        &format!("underlay, {} policies", settings.policies),
        &pa,
        ip,
        settings,
    )?;
    Ok(vec![zero, many])
}

/// Pods x/a on node-1 and y/b on node-2, once x/a reaches y/b: the client's
/// and the server's namespace, and the server's address.
async fn client_and_server(lab: &Lab) -> Result<(PathBuf, PathBuf, IpAddr), BoxError> {
    for ns in ["x", "y"] {
        scenario::namespace(lab, ns).await?;
    }
    scenario::pod(lab, "x/a", Some("node-1"), json!({})).await?;
    scenario::pod(lab, "y/b", Some("node-2"), json!({})).await?;
    let a = lab.wait_pod_running("x/a", Duration::from_secs(60)).await?;
    let b = lab.wait_pod_running("y/b", Duration::from_secs(60)).await?;
    let ip = b.ips[0];
    let pa = Netns::existing(&a.netns).path();
    let pb = Netns::existing(&b.netns).path();
    let o = scenario::expect_reach(
        lab,
        "x/a",
        "y/b",
        80,
        Protocol::Tcp,
        true,
        Duration::from_secs(30),
    )
    .await?;
    if !o.matched {
        return Err(format!("x/a cannot reach y/b: {}", o.outcome).into());
    }
    Ok((pa, pb, ip))
}

/// `count` policies selecting the server y/b, then one allowing the client's
/// namespace x. Each of the many allows a different source range and port,
/// so the destination's rules grow with the policy count; the client's
/// traffic must still flow.
async fn create_policies(lab: &Lab, count: usize) -> Result<(), BoxError> {
    for i in 0..count {
        let third = i % 250;
        let second = i / 250;
        scenario::policy(lab, json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": format!("bench-{i}"), "namespace": "y"},
            "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
              "ingress": [{"from": [{"ipBlock": {"cidr": format!("172.{}.{third}.0/24", 16 + second)}}],
                           "ports": [{"protocol": "TCP", "port": 10000 + i}]}]}})).await?;
    }
    scenario::policy(lab, json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bench-allow-x", "namespace": "y"},
        "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}]}]}})).await?;
    Ok(())
}

/// Waits until the policies are in force: a source no policy allows (a new
/// pod z/c) is cut off from y/b, and x/a still reaches it.
async fn wait_policies_in_force(lab: &Lab) -> Result<(), BoxError> {
    scenario::namespace(lab, "z").await?;
    scenario::pod(lab, "z/c", Some("node-1"), json!({})).await?;
    lab.wait_pod_running("z/c", Duration::from_secs(60)).await?;
    let denied = scenario::expect_reach(
        lab,
        "z/c",
        "y/b",
        80,
        Protocol::Tcp,
        false,
        Duration::from_secs(120),
    )
    .await?;
    let allowed = scenario::expect_reach(
        lab,
        "x/a",
        "y/b",
        80,
        Protocol::Tcp,
        true,
        Duration::from_secs(30),
    )
    .await?;
    if !denied.matched || !allowed.matched {
        return Err(format!(
            "policies not in force: z/c -> y/b {}, x/a -> y/b {}",
            denied.outcome, allowed.outcome
        )
        .into());
    }
    Ok(())
}

/// The median of each figure over repeated samples.
fn median(samples: Vec<Sample>) -> Sample {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Sample {
        name: samples[0].name.clone(),
        gbits: mid(samples.iter().map(|s| s.gbits).collect()),
        p50_us: mid(samples.iter().map(|s| s.p50_us).collect()),
        p99_us: mid(samples.iter().map(|s| s.p99_us).collect()),
        mean_us: mid(samples.iter().map(|s| s.mean_us).collect()),
    }
}

/// The report: each sample as a ratio to the first (the reference).
pub fn report(title: &str, samples: &[Sample]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n{title}");
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "configuration", "Gbit/s", "p50 us", "p99 us", "mean us", "tput ratio", "p50 ratio"
    );
    let Some(base) = samples.first() else {
        return out;
    };
    for s in samples {
        let _ = writeln!(
            out,
            "{:<28} {:>10.2} {:>9.1} {:>9.1} {:>9.1} {:>11.3} {:>11.3}",
            s.name,
            s.gbits,
            s.p50_us,
            s.p99_us,
            s.mean_us,
            s.gbits / base.gbits,
            s.p50_us / base.p50_us
        );
    }
    out
}

//! The datapath benchmark: pod-to-pod TCP throughput (iperf3), request
//! latency and new connections per second across two nodes, with underlay's
//! native routing (the fabric routes pod CIDRs to nodes) against a VXLAN
//! overlay (the design underlay rejects) between the same namespaces; then
//! on a full lab with no NetworkPolicy against N policies selecting the
//! server and against a VXLAN overlay carrying the same pods' traffic. Each
//! comparison alternates its configurations round by round and reports each
//! one's median and spread over the rounds, and the ratio of medians to the
//! reference(s) measured in the same run.

mod connrate;
mod iperf;
mod lab_overlay;
mod policies;
pub mod report;
mod routing;

use crate::lab::{Lab, LabConfig};
use crate::netns;
use crate::vnet::{Vnet, VnetConfig};
use report::{Goal, Metric, Sample, Series, Table, Target};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub iperf_seconds: u32,
    pub requests: usize,
    /// How long each connection-rate measurement opens connections.
    pub connect_for: Duration,
    pub policies: usize,
    /// Rounds per comparison: each measures every configuration once.
    pub rounds: usize,
    /// Where the underlay binaries are; `None` skips the policy part.
    pub bin_dir: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            iperf_seconds: 3,
            requests: 2000,
            connect_for: Duration::from_secs(3),
            policies: 1000,
            rounds: 5,
            bin_dir: None,
        }
    }
}

impl Settings {
    /// A short run for development: same shape, fewer and shorter rounds.
    pub fn quick() -> Self {
        Self {
            iperf_seconds: 1,
            requests: 500,
            connect_for: Duration::from_secs(1),
            policies: 200,
            rounds: 2,
            bin_dir: None,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How every table's rounds run and what its figures mean, for `configs`
/// configurations.
fn method(rounds: usize, configs: usize, switch: &str) -> String {
    let order = if configs == 2 {
        "both configurations: A then B in even rounds, B then A in odd ones (A B B A A B ...), \
         so that drift over the run falls on both alike and each round switches once."
            .to_owned()
    } else {
        let rounds: Vec<String> = (0..configs)
            .map(|r| {
                let letters: Vec<String> = order(r, configs)
                    .iter()
                    .map(|c| config_letter(*c).to_string())
                    .collect();
                letters.join(" ")
            })
            .collect();
        format!(
            "all {configs} configurations, the order rotating by one each round ({} ...), so \
             that each takes each place in turn and drift over the run falls on all alike.",
            rounds.join(", ")
        )
    };
    format!(
        "{rounds} rounds, each measuring {order} {switch} \
         Spread = min–max over the rounds; ratio to X = this row's median / X's median, \
         measured in the same run. p99 has no goal."
    )
}

fn config_letter(config: usize) -> char {
    char::from(b'A' + (config % 26) as u8)
}

/// Native routing versus a VXLAN overlay between the same two nodes and
/// pods (wired by hand like the CNI plugin wires them; no agent involved).
pub async fn native_vs_overlay(settings: &Settings) -> Result<Table, BoxError> {
    let v = Vnet::create(VnetConfig {
        prefix: netns::unique_prefix(),
        dual_stack: false,
        propagation_delay: Duration::ZERO,
    })
    .await?;
    let result = routing::compare(&v, settings).await;
    v.destroy().await?;
    let [_, vxlan] = routing::MODES;
    Ok(Table {
        title: format!("native routing vs {vxlan} (no agents, no policy)"),
        method: method(
            settings.rounds,
            2,
            "Switching mode swaps the routes only: fabric routes for native, routes \
             via vxlan0 for the overlay (its devices exist throughout).",
        ),
        series: result?,
        also_against: Vec::new(),
        // Underlay must open connections at least as fast as the overlay:
        // the overlay's rate at most the native one.
        targets: vec![Target {
            metric: Metric::ConnRate,
            series: 1,
            reference: 0,
            goal: Goal::AtMost(1.0),
        }],
    })
}

/// Underlay on a full lab (real CNI, agents, route controller) with no
/// policy, with `settings.policies` policies selecting the server pod, and
/// with no policy and the two nodes' pod traffic carried by a VXLAN overlay.
pub async fn policies(settings: &Settings, bin_dir: &Path) -> Result<Table, BoxError> {
    let dir = tempfile_dir()?;
    let mut config = LabConfig::new(&netns::unique_prefix(), &dir, bin_dir);
    config.nodes = 2;
    config.route_controllers = 1;
    let progress = |m: &str| eprintln!("datapath: {m}");
    let lab = Lab::start(config, &progress).await?;
    let result = policies::compare(&lab, settings).await;
    lab.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    let n = settings.policies;
    let [_, _, vxlan] = policies::names(n);
    let (series, overlay) = result?;
    Ok(Table {
        title: format!(
            "underlay, 0 vs {n} NetworkPolicies selecting the server pod, and a VXLAN overlay \
             on the same lab"
        ),
        method: method(
            settings.rounds,
            3,
            &format!(
                "Switching to {n} creates them (plus one allowing the client's namespace) and \
                 waits until the server node's agent reports {} programmed, a pod no policy \
                 allows is cut off and the client still connects; switching to 0 deletes them \
                 and waits until the agent reports none and that pod connects again. The \
                 server pod is selected by every policy; every connection's SYN is evaluated \
                 by its ingress rules. {vxlan}: the same agents, pods and 0 policies, but the \
                 two nodes carry pod traffic over {overlay} Switching to it adds, on both \
                 nodes, a route for the peer node's pod CIDR via the VXLAN device (more \
                 specific than the default route to the fabric, which keeps its pod-CIDR \
                 routes), and waits until `ip route get` of the peer pod shows the device on \
                 both nodes and a connection from client to server raises both devices' \
                 transmit counters; switching away deletes those routes, waits until the \
                 lookups leave the device, and restores the pods' MTU.",
                n + 1
            ),
        ),
        series,
        also_against: vec![2],
        targets: vec![
            Target {
                metric: Metric::Throughput,
                series: 1,
                reference: 0,
                goal: Goal::AtLeast(0.95),
            },
            Target {
                metric: Metric::P50,
                series: 1,
                reference: 0,
                goal: Goal::AtMost(1.05),
            },
            Target {
                metric: Metric::ConnRate,
                series: 1,
                reference: 0,
                goal: Goal::AtLeast(0.9),
            },
            // Underlay with the policies must still open connections at
            // least as fast as the overlay without any.
            Target {
                metric: Metric::ConnRate,
                series: 1,
                reference: 2,
                goal: Goal::AtLeast(1.0),
            },
        ],
    })
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("underlay-datapath-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Configurations measured in turn.
trait Alternate {
    /// Puts configuration `config` (an index into the names) in place, and
    /// returns once it is.
    async fn switch_to(&mut self, config: usize) -> Result<(), BoxError>;
    async fn measure(&mut self, config: usize) -> Result<Sample, BoxError>;
}

/// The order round `round` measures `configs` configurations in: rotated
/// by one each round (A B C, B C A, C A B, ...), so that each takes each
/// place in turn and a steady drift falls on all alike. With two it is
/// A B, B A, A B, ...: the configuration changes once per round.
fn order(round: usize, configs: usize) -> Vec<usize> {
    (0..configs).map(|i| (round + i) % configs).collect()
}

/// `rounds` rounds of every configuration, in the [`order`] of each round.
/// The series of `names`.
async fn alternate<const N: usize>(
    bench: &mut impl Alternate,
    rounds: usize,
    names: [&str; N],
) -> Result<Vec<Series>, BoxError> {
    let mut series = names.map(Series::new);
    let mut current = None;
    for round in 0..rounds.max(1) {
        for config in order(round, N) {
            if current != Some(config) {
                bench.switch_to(config).await?;
                current = Some(config);
            }
            eprintln!("datapath: round {}/{rounds}: {}", round + 1, names[config]);
            series[config].samples.push(bench.measure(config).await?);
        }
    }
    Ok(series.into())
}

/// The measurements from a client pod to a server pod: iperf3, request
/// latency over one connection to the pod's port 80 server, and new
/// connections per second to a server started here.
struct Probes {
    client: PathBuf,
    server_ip: IpAddr,
    iperf: Arc<iperf::IperfServer>,
    connections: connrate::ConnServer,
}

impl Probes {
    /// Starts the servers in the namespace at `server`; they listen when
    /// this returns.
    fn start(client: PathBuf, server: &Path, server_ip: IpAddr) -> Result<Self, BoxError> {
        Ok(Self {
            client,
            server_ip,
            iperf: Arc::new(iperf::IperfServer::start(server)?),
            connections: connrate::ConnServer::start(server)?,
        })
    }

    async fn measure(&self, name: &str, settings: &Settings) -> Result<Sample, BoxError> {
        let (client, ip, iperf) = (self.client.clone(), self.server_ip, self.iperf.clone());
        let settings = settings.clone();
        let answered = self.connections.answered();
        let (sample, opened) = tokio::task::spawn_blocking(move || -> Result<_, BoxError> {
            let gbits = iperf::client(&iperf, &client, ip, settings.iperf_seconds)?;
            let (p50_us, p99_us) = latency(&client, SocketAddr::new(ip, 80), settings.requests)?;
            let target = SocketAddr::new(ip, connrate::PORT);
            let opened = netns::in_netns(&client, move || {
                connrate::open(target, settings.connect_for)
            })??;
            let sample = Sample {
                gbits,
                p50_us,
                p99_us,
                conns_per_s: opened.per_second(),
            };
            Ok((sample, opened))
        })
        .await
        .map_err(|e| format!("measuring {name}: {e}"))?
        .map_err(|e| format!("measuring {name}: {e}"))?;
        // Every connection counted must be one our server answered, not
        // something else listening on the address.
        let served = self.connections.answered() - answered;
        if served < opened.connections {
            return Err(format!(
                "measuring {name}: the client counted {} connections, the server answered {served}",
                opened.connections
            )
            .into());
        }
        Ok(sample)
    }
}

/// Request/response latency over one TCP connection to a pod's server:
/// p50 and p99 in microseconds.
fn latency(client: &Path, target: SocketAddr, n: usize) -> Result<(f64, f64), BoxError> {
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
    if s.is_empty() {
        return Err("no latency sample: ask for at least one request".into());
    }
    s.sort_by(f64::total_cmp);
    let pct = |p: f64| s[((s.len() as f64 - 1.0) * p) as usize];
    Ok((pct(0.5), pct(0.99)))
}

#[cfg(test)]
mod tests {
    use super::{method, order};

    #[test]
    fn rounds_rotate_the_order_so_each_configuration_takes_each_place() {
        assert_eq!(
            (0..4).map(|r| order(r, 2)).collect::<Vec<_>>(),
            [[0, 1], [1, 0], [0, 1], [1, 0]]
        );
        let three: Vec<Vec<usize>> = (0..4).map(|r| order(r, 3)).collect();
        assert_eq!(three, [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]);
        for place in 0..3 {
            let mut at: Vec<usize> = three[..3].iter().map(|o| o[place]).collect();
            at.sort_unstable();
            assert_eq!(at, [0, 1, 2], "place {place}");
        }
        assert!(order(0, 1) == [0] && order(5, 0).is_empty());
    }

    #[test]
    fn the_method_names_the_order_of_three_configurations() {
        assert!(method(5, 3, "").contains("(A B C, B C A, C A B ...)"));
        assert!(method(5, 2, "").contains("(A B B A A B ...)"));
    }
}

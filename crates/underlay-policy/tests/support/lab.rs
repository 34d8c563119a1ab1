//! The x/y/z world as real network namespaces: one node namespace and nine
//! pod namespaces joined by veths named `udl<ns><pod>`, the node routing
//! between them with /32 and /128 routes (pods route through link-local
//! gateways 169.254.1.1 and fe80::1 held by the node side of each veth).
//! Every pod serves TCP, UDP and SCTP on ports 80 and 81 with the lab's pod
//! servers (`underlay_lab::traffic`), and probes with the lab's probes.
//! Nothing touches the machine's own namespace; everything is removed on
//! drop.

use super::{PORTS, Pid, Probe};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::runtime::Handle;
use underlay_lab::traffic::{self, Outcome, PortSpec};
use underlay_policy::model::{Family, Protocol};

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

/// Runs a current-thread runtime on a thread that entered `netns` and
/// serves the pod's ports from it, answering with `identity`: every socket
/// its tasks create lives in that namespace, and so do the threads it
/// starts (`spawn_blocking`), which inherit it. The servers stop when the
/// returned sender is used or dropped.
fn spawn_in_netns(
    netns: &str,
    identity: String,
) -> (
    Handle,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let path = underlay_netns::path_of(netns);
    let (htx, hrx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        // The runtime lives on the thread that entered the namespace, for
        // as long as the lab.
        underlay_netns::run_in(&path, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let servers = rt
                .block_on(async { traffic::serve(traffic::open(&served_ports())?, &identity) })
                .unwrap_or_else(|e| panic!("serve {identity} in {}: {e}", path.display()));
            htx.send(rt.handle().clone()).unwrap();
            rt.block_on(async move {
                let _ = stop_rx.await;
            });
            drop(servers);
        })
        .expect("enter the pod's network namespace");
    });
    (hrx.recv().expect("pod servers started"), stop_tx, thread)
}

/// Every port of `PORTS` over TCP, UDP and SCTP.
fn served_ports() -> Vec<PortSpec> {
    let mut specs = Vec::new();
    for port in PORTS {
        for protocol in Protocol::ALL {
            specs.push(PortSpec {
                port,
                protocol: lab_protocol(protocol),
            });
        }
    }
    specs
}

fn lab_protocol(p: Protocol) -> traffic::Protocol {
    match p {
        Protocol::Tcp => traffic::Protocol::Tcp,
        Protocol::Udp => traffic::Protocol::Udp,
        Protocol::Sctp => traffic::Protocol::Sctp,
    }
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
            let identity = format!("{}/{}", p.ns_name(), p.pod_name());
            let (handle, stop, thread) = spawn_in_netns(&pod_ns, identity);
            lab.pods.push(PodNs {
                name: pod_ns,
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        batch(&node, &node_script);
        lab
    }

    pub fn pod_netns(&self, p: Pid) -> &str {
        &self.pods[p.number()].name
    }

    pub fn handle(&self, p: Pid) -> &Handle {
        &self.pods[p.number()].handle
    }

    /// Runs every probe in parallel; true = reached (connected).
    pub async fn probe_all(&self, probes: &[Probe], timeout: Duration) -> Vec<bool> {
        let mut tasks = Vec::new();
        for p in probes {
            let target = SocketAddr::new(p.dst.ip(p.family), p.port);
            let protocol = lab_protocol(p.protocol);
            // `traffic::probe` blocks. A blocking-pool thread is started by
            // the thread that asks for it, here the source pod's thread, so
            // it is in the pod's namespace and so are the probe's sockets.
            tasks.push(self.handle(p.src).spawn(async move {
                tokio::task::spawn_blocking(move || traffic::probe(target, protocol, timeout)).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(matches!(t.await, Ok(Ok(Outcome::Connected { .. }))));
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

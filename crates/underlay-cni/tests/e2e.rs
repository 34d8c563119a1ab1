//! The plugin binary end to end, as root, in network namespaces made by the
//! tests: real environment and stdin, a real agent process on a temporary
//! socket (standalone mode), real netlink, real packets.

mod support;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use support::*;

const V4: &str = "10.244.7.0/24";
const V6: &str = "fd00:10:244:7::/64";

fn add(node: &Node, agent: &Agent, pod: &Netns, id: &str, version: &str) -> Value {
    let inv = Invocation::new("ADD", id, Some(&pod.path()));
    cni(&node.ns, &inv, &conf(version, &agent.socket()))
        .ok()
        .json()
}

#[test]
fn add_check_del_dual_stack_through_the_real_binary() {
    if skip_unless_root("add_check_del_dual_stack_through_the_real_binary") {
        return;
    }
    let node = Node::new();
    let agent = Agent::start(&node.ns, &[V4, V6]);
    let pod = Netns::new("pod");
    let inv = Invocation::new("ADD", "c0ffee01", Some(&pod.path()));
    let c = conf("1.1.0", &agent.socket());
    let result = cni(&node.ns, &inv, &c).ok().json();

    // The result: host side, pod side in the sandbox, one address per family.
    assert_eq!(result["cniVersion"], "1.1.0");
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        host_if.starts_with("udl") && host_if.len() == 14,
        "{host_if}"
    );
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(
        result["interfaces"][1]["sandbox"],
        pod.path().display().to_string()
    );
    assert_eq!(result["interfaces"][1]["mtu"], 1500);
    let ips = result_ips(&result);
    assert_eq!(ips.len(), 2, "{result}");
    assert!(ips[0].starts_with("10.244.7."), "{ips:?}");
    assert!(ips[1].starts_with("fd00:10:244:7::"), "{ips:?}");
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(result["ips"][1]["gateway"], "fe80::1");
    assert_eq!(result["ips"][0]["interface"], 1);

    // The kernel agrees.
    let addrs = pod.ip(&["addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{}/32", ips[0])), "{addrs}");
    assert!(addrs.contains(&format!("{}/128", ips[1])), "{addrs}");
    let routes = pod.ip(&["route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    let routes6 = pod.ip(&["-6", "route", "show"]);
    assert!(
        routes6.contains("default via fe80::1 dev eth0"),
        "{routes6}"
    );
    let host_routes = node.ns.ip(&["route", "show", "dev", &host_if]);
    assert!(host_routes.contains(&ips[0]), "{host_routes}");
    let host_routes6 = node.ns.ip(&["-6", "route", "show", "dev", &host_if]);
    assert!(host_routes6.contains(&ips[1]), "{host_routes6}");
    let proxy = node
        .ns
        .ip(&["-6", "neigh", "show", "proxy", "dev", &host_if]);
    assert!(proxy.contains("fe80::1"), "{proxy}");
    let link = node.ns.ip(&["-d", "link", "show", &host_if]);
    assert!(link.contains("alias c0ffee01"), "{link}");
    let proxy_arp = node.ns.exec(&[
        "cat",
        &format!("/proc/sys/net/ipv4/conf/{host_if}/proxy_arp"),
    ]);
    assert_eq!(String::from_utf8_lossy(&proxy_arp.stdout).trim(), "1");

    // The pod reaches its gateway and beyond (the node's uplink address).
    assert!(ping(&pod, "192.0.2.1"), "pod cannot reach the node");
    assert!(
        ping(&pod, "2001:db8::1"),
        "pod cannot reach the node over IPv6"
    );

    // CHECK with the ADD result passes; STATUS says ready.
    let mut check = c.clone();
    check["prevResult"] = result.clone();
    cni(&node.ns, &inv.with_command("CHECK"), &check).ok();
    let status = cni(&node.ns, &inv.with_command("STATUS"), &c).ok();
    assert_eq!(status.stdout, "");
    assert_eq!(agent.status().unwrap().endpoints, 1);

    // A second ADD of the same pod interface fails cleanly (101) and keeps
    // the first one working.
    let again = cni(&node.ns, &inv, &c);
    assert_eq!(again.error_code(), 101, "{}", again.stdout);
    cni(&node.ns, &inv.with_command("CHECK"), &check).ok();

    // DEL retires the host side (down, no routes: nothing flows) and
    // removes the agent's record; the agent then deletes the pair, both
    // sides; DEL again is fine.
    cni(&node.ns, &inv.with_command("DEL"), &c).ok();
    assert!(!ping(&pod, "192.0.2.1"), "the pod still reaches the node");
    assert_eq!(agent.status().unwrap().endpoints, 0);
    node.assert_retired_then(&[]);
    assert!(!pod.links().contains(&"eth0".to_string()));
    cni(&node.ns, &inv.with_command("DEL"), &c).ok();
    // CHECK now finds no attachment at the agent (code 3).
    assert_eq!(
        cni(&node.ns, &inv.with_command("CHECK"), &check).error_code(),
        3
    );
    // DEL after the sandbox is gone still succeeds.
    drop(pod);
    cni(&node.ns, &inv.with_command("DEL"), &c).ok();
}

/// A runtime that reuses a namespace: ADD of another container right after
/// a DEL, before the agent deleted what the DEL retired, finds the old pair
/// in the way and deletes it first; the new pod works.
#[test]
fn a_namespace_reused_right_after_del_takes_the_next_container() {
    if skip_unless_root("a_namespace_reused_right_after_del_takes_the_next_container") {
        return;
    }
    let node = Node::new();
    let agent = Agent::start(&node.ns, &[V4, V6]);
    let pod = Netns::new("pod");
    let c = conf("1.1.0", &agent.socket());
    for round in 0..5 {
        let inv = Invocation::new("ADD", &format!("reuse{round}"), Some(&pod.path()));
        let result = cni(&node.ns, &inv, &c).ok().json();
        let ip = result_ips(&result)[0].clone();
        assert!(
            ping(&pod, "192.0.2.1"),
            "round {round}: {ip} cannot reach the node"
        );
        cni(&node.ns, &inv.with_command("DEL"), &c).ok();
    }
    node.assert_retired_then(&[]);
    assert_eq!(agent.status().unwrap().endpoints, 0);
}

#[test]
fn results_are_shaped_for_each_requested_version() {
    if skip_unless_root("results_are_shaped_for_each_requested_version") {
        return;
    }
    let node = Node::new();
    let agent = Agent::start(&node.ns, &[V4, V6]);
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod = Netns::new("pod");
        let id = format!("ver{i}");
        let r = add(&node, &agent, &pod, &id, version);
        assert_eq!(r["cniVersion"], version);
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            version == "0.4.0",
            "{r}"
        );
        assert_eq!(
            r["interfaces"][1].get("mtu").is_some(),
            version == "1.1.0",
            "{r}"
        );
        let inv = Invocation::new("DEL", &id, Some(&pod.path()));
        cni(&node.ns, &inv, &conf(version, &agent.socket())).ok();
    }
}

#[test]
fn version_reports_the_supported_versions_without_an_agent() {
    if skip_unless_root("version_reports_the_supported_versions_without_an_agent") {
        return;
    }
    let node = Node::new();
    let inv = Invocation {
        command: "VERSION".into(),
        container_id: String::new(),
        netns: None,
        ifname: String::new(),
        args: String::new(),
    };
    let out = cni(&node.ns, &inv, &json!({"cniVersion": "1.1.0"}))
        .ok()
        .json();
    assert_eq!(out["cniVersion"], "1.1.0");
    assert_eq!(out["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
}

fn tcp_echo_server(pod: &Netns) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = pod.path();
    let listener = in_netns(&path, || {
        TcpListener::bind("[::]:8080").expect("bind in pod")
    });
    std::thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((mut s, peer)) = listener.accept() {
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).unwrap_or(0);
                let _ = s.write_all(&buf[..n]);
                let _ = tx.send(peer.ip().to_string());
            }
        }
    });
    rx
}

fn tcp_roundtrip(from: &Netns, to: SocketAddr) -> String {
    in_netns(&from.path(), move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    })
}

#[test]
fn two_pods_on_a_node_reach_each_other_with_ping_and_tcp() {
    if skip_unless_root("two_pods_on_a_node_reach_each_other_with_ping_and_tcp") {
        return;
    }
    let node = Node::new();
    let agent = Agent::start(&node.ns, &[V4, V6]);
    let a = Netns::new("pa");
    let b = Netns::new("pb");
    let ra = add(&node, &agent, &a, "aaaa", "1.1.0");
    let rb = add(&node, &agent, &b, "bbbb", "1.1.0");
    let ipa = result_ips(&ra);
    let ipb = result_ips(&rb);
    assert!(ping(&a, &ipb[0]), "a -> b over IPv4");
    assert!(ping(&b, &ipa[0]), "b -> a over IPv4");
    assert!(ping(&a, &ipb[1]), "a -> b over IPv6");
    assert!(ping(&b, &ipa[1]), "b -> a over IPv6");

    let seen = tcp_echo_server(&b);
    let v4: SocketAddr = format!("{}:8080", ipb[0]).parse().unwrap();
    assert_eq!(tcp_roundtrip(&a, v4), "hello");
    let v6: SocketAddr = format!("[{}]:8080", ipb[1]).parse().unwrap();
    assert_eq!(tcp_roundtrip(&a, v6), "hello");
    // No NAT on the way: b sees a's own addresses.
    let peers: Vec<String> = (0..2)
        .map(|_| seen.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    assert!(peers[0].ends_with(&ipa[0]), "{peers:?}");
    assert_eq!(peers[1], ipa[1]);
}

//! underlay-cni first in a conflist with the reference `portmap` and
//! `bandwidth` plugins (Debian's containernetworking-plugins), run as a
//! runtime runs a chain: prevResult handed on, runtimeConfig per
//! capability, DEL in reverse.

mod support;

use serde_json::json;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;
use support::*;

#[test]
fn chained_with_portmap_and_bandwidth_a_host_port_reaches_the_pod() {
    if skip_unless_root("chained_with_portmap_and_bandwidth_a_host_port_reaches_the_pod") {
        return;
    }
    for p in ["portmap", "bandwidth"] {
        assert!(
            Path::new("/usr/lib/cni").join(p).exists(),
            "/usr/lib/cni/{p} is missing: run `cargo xtask setup`"
        );
    }
    let node = Node::new();
    let agent = Agent::start(&node.ns, &["10.244.9.0/24", "fd00:9::/64"]);
    let pod = Netns::new("pod");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "underlay",
        "plugins": [
            {"type": "underlay-cni", "agentSocket": agent.socket().display().to_string()},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    });
    let runtime_config = json!({
        "portMappings": [{"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 10_000_000,
                      "egressRate": 100_000_000, "egressBurst": 10_000_000}
    });
    let inv = Invocation::new("ADD", "chain01", Some(&pod.path()));
    let result = exec_chain(&node.ns, &list, &inv, &runtime_config, None)
        .unwrap_or_else(|e| panic!("chain ADD failed: {} {}", e.stdout, e.stderr))
        .expect("ADD result");
    // Our interfaces and address came through portmap and bandwidth (which
    // adds its ifb device to the result).
    let ips = result_ips(&result);
    assert_eq!(ips.len(), 2, "{result}");
    assert!(ips[0].starts_with("10.244.9."));
    let names: Vec<&str> = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(names.contains(&"eth0"), "{names:?}");

    // portmap programmed DNAT in the node; bandwidth shaped the host side.
    let nat = node.ns.exec(&["iptables-save", "-t", "nat"]);
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(nat.contains("30080"), "{nat}");
    let host_if = result["interfaces"][0]["name"].as_str().unwrap();
    let qdisc = node.ns.ip(&["link", "show"]);
    assert!(qdisc.contains(host_if));
    let tc = node.ns.exec(&["tc", "qdisc", "show", "dev", host_if]);
    assert!(
        String::from_utf8_lossy(&tc.stdout).contains("tbf"),
        "{}",
        String::from_utf8_lossy(&tc.stdout)
    );

    // A client upstream reaches the pod through the node's host port.
    let listener = in_netns(&pod.path(), || TcpListener::bind("0.0.0.0:8080").unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
    });
    let echoed = in_netns(&node.upstream.path(), || {
        let mut s = TcpStream::connect_timeout(
            &format!("{NODE_V4}:30080").parse().unwrap(),
            Duration::from_secs(5),
        )
        .expect("connect to the host port");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        b
    });
    assert_eq!(&echoed, b"ping");
    server.join().unwrap();

    // CHECK runs the chain with the cached result. The reference portmap's
    // own CHECK looks for each address's rules in both iptables and
    // ip6tables (it fails on any pod, whatever plugin comes first), so it
    // is left out of the CHECK run.
    let check = inv.with_command("CHECK");
    let mut without_portmap = list.clone();
    without_portmap["plugins"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["type"] != "portmap");
    exec_chain(
        &node.ns,
        &without_portmap,
        &check,
        &runtime_config,
        Some(&result),
    )
    .unwrap_or_else(|e| panic!("chain CHECK failed: {} {}", e.stdout, e.stderr));

    // DEL in reverse removes everything, ours last.
    let del = inv.with_command("DEL");
    exec_chain(&node.ns, &list, &del, &runtime_config, Some(&result))
        .unwrap_or_else(|e| panic!("chain DEL failed: {} {}", e.stdout, e.stderr));
    node.assert_retired_then(&[]);
    let nat = node.ns.exec(&["iptables-save", "-t", "nat"]);
    assert!(!String::from_utf8_lossy(&nat.stdout).contains("30080"));
    assert_eq!(agent.status().unwrap().endpoints, 0);
}

#[test]
fn a_prev_result_from_an_earlier_plugin_is_kept_and_extended() {
    if skip_unless_root("a_prev_result_from_an_earlier_plugin_is_kept_and_extended") {
        return;
    }
    let node = Node::new();
    let agent = Agent::start(&node.ns, &["10.244.10.0/24"]);
    let pod = Netns::new("pod");
    let mut c = conf("1.0.0", &agent.socket());
    c["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net0", "sandbox": pod.path().display().to_string()}],
        "ips": [{"address": "198.51.100.7/24", "interface": 0}],
        "dns": {"nameservers": ["198.51.100.53"]}
    });
    let inv = Invocation::new("ADD", "prev01", Some(&pod.path()));
    let r = cni(&node.ns, &inv, &c).ok().json();
    assert_eq!(r["interfaces"][0]["name"], "net0");
    assert_eq!(r["ips"][0]["address"], "198.51.100.7/24");
    assert_eq!(
        r["ips"][1]["interface"], 2,
        "ours point at the shifted index: {r}"
    );
    assert_eq!(r["dns"]["nameservers"][0], "198.51.100.53");
    cni(
        &node.ns,
        &inv.with_command("DEL"),
        &conf("1.0.0", &agent.socket()),
    )
    .ok();
}

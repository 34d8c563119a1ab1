//! Every CNI error code the plugin can return, through the real binary:
//! the JSON error on stdout, the exit status, and nothing left behind.

mod support;

use serde_json::{Value, json};
use support::*;

fn expect_code(out: PluginOutput, code: u64, needle: &str) {
    let v = out.json();
    assert_eq!(out.code, 1, "exit status for {v}");
    assert_eq!(v["code"], code, "{v}");
    let msg = v["msg"].as_str().unwrap_or("");
    assert!(
        msg.contains(needle),
        "message {msg:?} should mention {needle:?}"
    );
    assert!(v["cniVersion"].is_string(), "{v}");
}

#[test]
fn every_error_code_path_through_the_binary() {
    if skip_unless_root("every_error_code_path_through_the_binary") {
        return;
    }
    let node = Node::new();
    let agent = Agent::start(&node.ns, &["10.244.30.0/30"]);
    let pod = Netns::new("pod");
    let c = conf("1.1.0", &agent.socket());
    let add = Invocation::new("ADD", "err01", Some(&pod.path()));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = c.clone();
        f(&mut v);
        v
    };

    // 1: incompatible version.
    expect_code(
        cni(&node.ns, &add, &with(&|v| v["cniVersion"] = "0.3.1".into())),
        1,
        "0.3.1",
    );
    expect_code(
        cni(
            &node.ns,
            &add.with_command("STATUS"),
            &with(&|v| v["cniVersion"] = "1.0.0".into()),
        ),
        1,
        "STATUS",
    );
    // 2: a field the plugin refuses.
    expect_code(
        cni(
            &node.ns,
            &add,
            &with(&|v| v["ipam"] = json!({"type": "host-local"})),
        ),
        2,
        "ipam",
    );
    // 4: environment.
    let mut no_ifname = add.clone();
    no_ifname.ifname.clear();
    expect_code(cni(&node.ns, &no_ifname, &c), 4, "CNI_IFNAME");
    let mut bad_args = add.clone();
    bad_args.args = "K8S_POD_NAME=x;SOMETHING=else".into();
    expect_code(cni(&node.ns, &bad_args, &c), 4, "IgnoreUnknown");
    let mut bad_cmd = add.clone();
    bad_cmd.command = "FROB".into();
    expect_code(cni(&node.ns, &bad_cmd, &c), 4, "FROB");
    // 6: not JSON / wrong types.
    expect_code(
        cni(&node.ns, &add, &json!("just a string")),
        6,
        "JSON object",
    );
    expect_code(
        cni(&node.ns, &add, &with(&|v| v["mtu"] = "big".into())),
        6,
        "wrong type",
    );
    // 7: invalid configuration.
    expect_code(
        cni(&node.ns, &add, &with(&|v| v["name"] = "-bad".into())),
        7,
        "name",
    );
    expect_code(
        cni(&node.ns, &add.with_command("CHECK"), &c),
        7,
        "prevResult",
    );
    // 104: the network namespace does not exist.
    let mut gone = add.clone();
    gone.netns = Some("/run/netns/does-not-exist-underlay".into());
    expect_code(cni(&node.ns, &gone, &c), 104, "does-not-exist-underlay");
    // 101: the interface already exists in the pod.
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    expect_code(cni(&node.ns, &add, &c), 101, "eth0");
    assert_eq!(agent.status().unwrap().endpoints, 0, "nothing recorded");
    pod.ip(&["link", "del", "eth0"]);

    // 102: a /30 has two pod addresses; the third ADD finds none.
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("x")).collect();
    for (i, p) in pods.iter().take(2).enumerate() {
        cni(
            &node.ns,
            &Invocation::new("ADD", &format!("full{i}"), Some(&p.path())),
            &c,
        )
        .ok();
    }
    expect_code(
        cni(
            &node.ns,
            &Invocation::new("ADD", "full2", Some(&pods[2].path())),
            &c,
        ),
        102,
        "no free pod address",
    );
    assert_eq!(pods[2].links(), vec!["lo".to_string()], "nothing half-made");

    // 105: CHECK finds the pod's address removed behind our back.
    let inv0 = Invocation::new("ADD", "full0", Some(&pods[0].path()));
    let r0 = cni(&node.ns, &inv0.with_command("DEL"), &c).ok();
    drop(r0);
    let r0 = cni(&node.ns, &inv0, &c).ok().json();
    let ip = result_ips(&r0)[0].clone();
    pods[0].ip(&["addr", "del", &format!("{ip}/32"), "dev", "eth0"]);
    let mut check = c.clone();
    check["prevResult"] = r0;
    expect_code(cni(&node.ns, &inv0.with_command("CHECK"), &check), 105, &ip);

    // 3: CHECK of an attachment the agent does not know.
    let mut other = inv0.with_command("CHECK");
    other.container_id = "unknown9".into();
    expect_code(cni(&node.ns, &other, &check), 3, "no record");

    // 11 and 50: the agent is down.
    drop(agent);
    expect_code(
        cni(
            &node.ns,
            &Invocation::new("ADD", "down1", Some(&pod.path())),
            &c,
        ),
        11,
        "agent.sock",
    );
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    expect_code(
        cni(&node.ns, &add.with_command("STATUS"), &c),
        50,
        "cannot add pods",
    );
    // DEL of a pod whose agent is down asks the runtime to retry, after
    // taking its interface out of service (retired: the agent deletes it
    // once back, or the runtime's removal of the namespace does).
    expect_code(cni(&node.ns, &inv0.with_command("DEL"), &c), 11, "agent");
    let links = pods[0].links();
    assert!(
        !links.contains(&"eth0".to_string()) && links.iter().any(|l| l.starts_with("udlr")),
        "{links:?}"
    );
    // The kernel removes a deleted namespace's links shortly after.
    drop(pods);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !node.pod_links().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            node.pod_links()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_not_ready_agent_is_try_again_later_and_status_50() {
    if skip_unless_root("a_not_ready_agent_is_try_again_later_and_status_50") {
        return;
    }
    // Without --pod-cidr and without a reachable API server the agent serves
    // but never becomes ready.
    let node = Node::new();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:9\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {}\n",
    )
    .unwrap();
    let mut agent = Agent {
        child: None,
        dir,
        cidrs: vec![],
        extra: vec!["--kubeconfig".into(), kubeconfig.display().to_string()],
        netns: node.ns.name.clone(),
        policy: false,
    };
    agent.spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while agent.status().is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let st = agent.status().unwrap();
    assert!(!st.ready);
    assert!(st.reason.contains("test-node"), "{}", st.reason);
    let pod = Netns::new("pod");
    let c = conf("1.1.0", &agent.socket());
    expect_code(
        cni(
            &node.ns,
            &Invocation::new("ADD", "nr1", Some(&pod.path())),
            &c,
        ),
        11,
        "not ready",
    );
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    expect_code(
        cni(&node.ns, &Invocation::new("STATUS", "", None), &c),
        50,
        "not ready",
    );
}

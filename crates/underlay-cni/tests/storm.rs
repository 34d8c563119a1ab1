//! Many plugin processes at once against one agent: 50 concurrent ADDs then
//! DELs with nothing leaked, GC, and the agent killed with SIGKILL in the
//! middle of a storm and restarted.

mod support;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use support::*;
use underlay_lab::apiserver::{ApiServer, Config as ApiConfig};

fn parallel<T: Send + 'static>(jobs: Vec<Box<dyn FnOnce() -> T + Send>>) -> Vec<T> {
    let handles: Vec<_> = jobs.into_iter().map(std::thread::spawn).collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect()
}

#[test]
fn fifty_concurrent_adds_then_dels_leave_nothing_behind() {
    if skip_unless_root("fifty_concurrent_adds_then_dels_leave_nothing_behind") {
        return;
    }
    let node = Arc::new(Node::new());
    let agent = Arc::new(Agent::start(&node.ns, &["10.244.20.0/24", "fd00:20::/64"]));
    let pods: Vec<Arc<Netns>> = (0..50).map(|_| Arc::new(Netns::new("p"))).collect();
    let adds = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let (node, agent, pod) = (node.clone(), agent.clone(), pod.clone());
            Box::new(move || {
                let inv = Invocation::new("ADD", &format!("storm{i:03}"), Some(&pod.path()));
                cni(&node.ns, &inv, &conf("1.1.0", &agent.socket()))
            }) as Box<dyn FnOnce() -> PluginOutput + Send>
        })
        .collect();
    let results: Vec<Value> = parallel(adds).into_iter().map(|o| o.ok().json()).collect();
    let mut seen = HashSet::new();
    for r in &results {
        for ip in result_ips(r) {
            assert!(seen.insert(ip.clone()), "{ip} handed out twice");
        }
    }
    assert_eq!(seen.len(), 100);
    assert_eq!(node.pod_links().len(), 50);
    assert_eq!(agent.status().unwrap().endpoints, 50);

    let dels = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let (node, agent, pod) = (node.clone(), agent.clone(), pod.clone());
            Box::new(move || {
                let inv = Invocation::new("DEL", &format!("storm{i:03}"), Some(&pod.path()));
                cni(&node.ns, &inv, &conf("1.1.0", &agent.socket()))
            }) as Box<dyn FnOnce() -> PluginOutput + Send>
        })
        .collect();
    for o in parallel(dels) {
        o.ok();
    }
    node.assert_retired_then(&[]);
    let st = agent.status().unwrap();
    assert_eq!(st.endpoints, 0);
    assert!(st.pools.iter().all(|p| p.allocated == 0), "{:?}", st.pools);
    for pod in &pods {
        assert_eq!(pod.links(), vec!["lo".to_string()], "{}", pod.name);
    }
    // Host routes to pods are gone too.
    let routes = node.ns.ip(&["route", "show"]);
    assert!(!routes.contains("10.244.20."), "{routes}");
}

#[test]
fn agent_killed_mid_storm_restarts_without_losing_or_duplicating_addresses() {
    if skip_unless_root("agent_killed_mid_storm_restarts_without_losing_or_duplicating_addresses") {
        return;
    }
    let node = Arc::new(Node::new());
    let mut agent = Agent::start(&node.ns, &["10.244.21.0/24"]);
    let socket = agent.socket();
    let pods: Vec<Arc<Netns>> = (0..30).map(|_| Arc::new(Netns::new("k"))).collect();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let jobs = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let (node, pod, socket, done) =
                (node.clone(), pod.clone(), socket.clone(), done.clone());
            Box::new(move || {
                let inv = Invocation::new("ADD", &format!("kill{i:03}"), Some(&pod.path()));
                let out = cni(&node.ns, &inv, &conf("1.1.0", &socket));
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (i, out)
            }) as Box<dyn FnOnce() -> (usize, PluginOutput) + Send>
        })
        .collect();
    let storm = std::thread::spawn(move || parallel(jobs));
    // Kill the agent once some ADDs have finished and others are in flight.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while done.load(std::sync::atomic::Ordering::SeqCst) < 5 && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    agent.kill9();
    let first = storm.join().unwrap();
    agent.spawn();
    agent.wait_ready();

    // As a runtime does: a failed ADD is followed by DEL, then retried.
    let mut addresses: HashMap<usize, String> = HashMap::new();
    let mut failed = 0;
    for (i, out) in first {
        let pod = &pods[i];
        let inv = Invocation::new("ADD", &format!("kill{i:03}"), Some(&pod.path()));
        let c = conf("1.1.0", &agent.socket());
        let result = if out.code == 0 {
            out.json()
        } else {
            failed += 1;
            let code = out.error_code();
            assert!(
                matches!(code, 11 | 100 | 103),
                "unexpected code {code}: {}",
                out.stdout
            );
            cni(&node.ns, &inv.with_command("DEL"), &c).ok();
            cni(&node.ns, &inv, &c).ok().json()
        };
        addresses.insert(i, result_ips(&result)[0].clone());
    }
    eprintln!("{failed} of 30 ADDs failed while the agent was down");
    assert!(failed < 30, "the agent was killed before any ADD finished");
    let unique: HashSet<&String> = addresses.values().collect();
    assert_eq!(
        unique.len(),
        30,
        "an address was handed out twice: {addresses:?}"
    );
    // Every pod still has the address its ADD reported, and the agent's
    // record (after the restart) agrees: CHECK passes for every pod.
    for (i, pod) in pods.iter().enumerate() {
        let have = pod.ip(&["-4", "addr", "show", "dev", "eth0"]);
        assert!(
            have.contains(&format!("{}/32", addresses[&i])),
            "pod {i}: {have}"
        );
    }
    assert_eq!(agent.status().unwrap().endpoints, 30);

    // Restart once more with everything settled: nothing changes.
    agent.restart();
    assert_eq!(agent.status().unwrap().endpoints, 30);
    for (i, pod) in pods.iter().enumerate() {
        let inv = Invocation::new("DEL", &format!("kill{i:03}"), Some(&pod.path()));
        cni(&node.ns, &inv, &conf("1.1.0", &agent.socket())).ok();
    }
    assert_eq!(agent.status().unwrap().endpoints, 0);
    node.assert_retired_then(&[]);
}

#[test]
fn gc_releases_attachments_the_runtime_no_longer_knows() {
    if skip_unless_root("gc_releases_attachments_the_runtime_no_longer_knows") {
        return;
    }
    let node = Node::new();
    let agent = Agent::start(&node.ns, &["10.244.22.0/24"]);
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("g")).collect();
    for (i, pod) in pods.iter().enumerate() {
        let inv = Invocation::new("ADD", &format!("gc{i}"), Some(&pod.path()));
        cni(&node.ns, &inv, &conf("1.1.0", &agent.socket())).ok();
    }
    assert_eq!(node.pod_links().len(), 3);
    let mut c = conf("1.1.0", &agent.socket());
    c["cni.dev/valid-attachments"] = serde_json::json!([{"containerID": "gc1", "ifname": "eth0"}]);
    let gc = Invocation {
        command: "GC".into(),
        container_id: String::new(),
        netns: None,
        ifname: String::new(),
        args: String::new(),
    };
    cni(&node.ns, &gc, &c).ok();
    assert_eq!(agent.status().unwrap().endpoints, 1);
    assert_eq!(node.pod_links().len(), 1, "{:?}", node.pod_links());
    // GC needs cniVersion 1.1.0.
    let mut old = c.clone();
    old["cniVersion"] = "1.0.0".into();
    assert_eq!(cni(&node.ns, &gc, &old).error_code(), 1);
}

/// ADDs of pod shop/web-0: its old sandbox in `old`, its new one in `new`.
fn two_sandboxes_of_one_pod(old: &Netns, new: &Netns) -> (Invocation, Invocation) {
    let mut first = Invocation::new("ADD", "sandbox1", Some(&old.path()));
    first.args = k8s_args("shop", "web-0", "sandbox1");
    let mut second = Invocation::new("ADD", "sandbox2", Some(&new.path()));
    second.args = k8s_args("shop", "web-0", "sandbox2");
    (first, second)
}

#[test]
fn a_new_sandbox_of_the_same_pod_takes_over_the_host_interface_name() {
    if skip_unless_root("a_new_sandbox_of_the_same_pod_takes_over_the_host_interface_name") {
        return;
    }
    let node = Node::new();
    let agent = Agent::start(&node.ns, &["10.244.23.0/24"]);
    let old = Netns::new("old");
    let new = Netns::new("new");
    let c = conf("1.1.0", &agent.socket());
    let (first, second) = two_sandboxes_of_one_pod(&old, &new);
    let r1 = cni(&node.ns, &first, &c).ok().json();
    let r2 = cni(&node.ns, &second, &c).ok().json();
    assert_eq!(r1["interfaces"][0]["name"], r2["interfaces"][0]["name"]);
    // The late DEL of the old sandbox must not remove the new one's link.
    cni(&node.ns, &first.with_command("DEL"), &c).ok();
    assert_eq!(node.pod_links().len(), 1);
    let mut check = c.clone();
    check["prevResult"] = r2;
    cni(&node.ns, &second.with_command("CHECK"), &check).ok();
    cni(&node.ns, &second.with_command("DEL"), &c).ok();
    node.assert_retired_then(&[]);
}

/// `ns-a/qg4e1bk4woov` and `ns-b/qkk67uhtf1ij` hash to the same 44 bits,
/// so both pods' first-choice host interface names are the same: the second
/// pod gets another name, recorded by the agent, and neither its ADD nor its
/// DEL touches the first pod's link.
#[test]
fn a_pod_whose_name_hashes_like_another_never_takes_over_its_host_interface() {
    if skip_unless_root("a_pod_whose_name_hashes_like_another_never_takes_over_its_host_interface")
    {
        return;
    }
    let node = Node::new();
    let agent = Agent::start(&node.ns, &["10.244.24.0/24"]);
    let (pod_a, pod_b) = (Netns::new("a"), Netns::new("b"));
    let c = conf("1.1.0", &agent.socket());
    let mut a = Invocation::new("ADD", "sandbox-a", Some(&pod_a.path()));
    a.args = k8s_args("ns-a", "qg4e1bk4woov", "sandbox-a");
    let mut b = Invocation::new("ADD", "sandbox-b", Some(&pod_b.path()));
    b.args = k8s_args("ns-b", "qkk67uhtf1ij", "sandbox-b");
    let ra = cni(&node.ns, &a, &c).ok().json();
    let rb = cni(&node.ns, &b, &c).ok().json();
    let host_a = ra["interfaces"][0]["name"].as_str().unwrap().to_string();
    let host_b = rb["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert_ne!(host_a, host_b);
    assert!(
        pod_a.links().contains(&"eth0".to_string()),
        "pod a lost its interface"
    );
    let link_a = node.ns.ip(&["-d", "link", "show", &host_a]);
    assert!(link_a.contains("alias sandbox-a"), "{link_a}");

    // Each CHECK and DEL finds its own link.
    for (inv, result) in [(&a, &ra), (&b, &rb)] {
        let mut check = c.clone();
        check["prevResult"] = result.clone();
        cni(&node.ns, &inv.with_command("CHECK"), &check).ok();
    }
    cni(&node.ns, &b.with_command("DEL"), &c).ok();
    node.assert_retired_then(&[&host_a]);
    cni(&node.ns, &a.with_command("DEL"), &c).ok();
    node.assert_retired_then(&[]);
}

#[test]
fn a_late_del_of_a_replaced_sandbox_keeps_the_new_one_reachable_under_policy() {
    if skip_unless_root("a_late_del_of_a_replaced_sandbox_keeps_the_new_one_reachable_under_policy")
    {
        return;
    }
    let node = Node::new();
    node.upstream
        .ip(&["route", "add", "10.244.24.0/24", "via", NODE_V4]);
    // The API server knows pod shop/web-0; no policy selects it.
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let api = rt
        .block_on(ApiServer::start(ApiConfig::default()))
        .expect("start the API server");
    rt.block_on(async {
        let kube = api.client().expect("a client");
        let params = PostParams::default();
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "shop"}})).unwrap();
        Api::<Namespace>::all(kube.clone())
            .create(&params, &ns)
            .await
            .expect("create namespace shop");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:1"}]}
        }))
        .unwrap();
        Api::<Pod>::namespaced(kube, "shop")
            .create(&params, &pod)
            .await
            .expect("create pod shop/web-0");
    });
    let _in_runtime = rt.enter();
    let kubeconfig = kubeconfig_in(&api, &node.ns);
    let agent = Agent::start_with_policy_in(&node.ns, &["10.244.24.0/24"], &kubeconfig.path);
    let old = Netns::new("old");
    let new = Netns::new("new");
    let c = conf("1.1.0", &agent.socket());
    let (first, second) = two_sandboxes_of_one_pod(&old, &new);
    cni(&node.ns, &first, &c).ok();
    let r2 = cni(&node.ns, &second, &c).ok().json();
    let ip = result_ips(&r2)[0].clone();
    let rules = || String::from_utf8_lossy(&node.ns.exec(&["iptables-save"]).stdout).into_owned();
    // No policy selects the pod: it reaches out and is reached.
    assert!(ping(&new, UPSTREAM_V4), "before the late DEL\n{}", rules());
    assert!(
        ping(&node.upstream, &ip),
        "before the late DEL\n{}",
        rules()
    );

    // The runtime deletes the old sandbox late: the new one stays open.
    cni(&node.ns, &first.with_command("DEL"), &c).ok();
    assert_eq!(node.pod_links().len(), 1);
    assert!(ping(&new, UPSTREAM_V4), "after the late DEL\n{}", rules());
    assert!(ping(&node.upstream, &ip), "after the late DEL\n{}", rules());
    let st = agent.status().unwrap();
    assert_eq!(st.endpoints, 1);
    assert_eq!(st.policy.map(|p| p.endpoints), Some(1), "{}", rules());

    cni(&node.ns, &second.with_command("DEL"), &c).ok();
    node.assert_retired_then(&[]);
    assert_eq!(agent.status().unwrap().policy.map(|p| p.endpoints), Some(0));
}

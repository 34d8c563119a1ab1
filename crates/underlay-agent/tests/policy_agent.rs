//! The agent binary with policy enforcement on, as root, inside a network
//! namespace this test creates (its iptables and ipsets are that
//! namespace's), talking to the lab's embedded API server through a relay:
//! after Attach programs a pod's policy, `Status` over gRPC reports the
//! policy state and `/metrics` over HTTP carries every policy metric with
//! values that match; a policy deleted through the API reaches the
//! dataplane and both again; a restarted agent adopts the rules the killed
//! one left without writing anything.

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use underlay_lab::apiserver::{ApiServer, Config};
use underlay_lab::netns::{self, Netns};
use underlay_proto::v1;
use underlay_proto::v1::agent_client::AgentClient;

mod support;
use support::{Killed, attach_x_a, client, create, ready_client, try_client, wait_for, wait_ready};

/// Port of `/metrics` inside the test's namespace (nothing else listens
/// there).
const METRICS_PORT: u16 = 9962;

fn scrape(ns: &Netns) -> String {
    ns.enter(|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .expect("enter the namespace")
    .unwrap_or_default()
}

/// The value of one sample (`name` or `name{labels}`) in the text format.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn running_pod(client: &kube::Client, name: &str, ip: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "x");
    create(
        &pods,
        json!({"metadata": {"name": name, "labels": {"pod": name}},
               "spec": {"nodeName": "worker-1",
                        "containers": [{"name": "c", "image": "busybox:1",
                                        "ports": [{"name": "web", "containerPort": 80}]}]}}),
    )
    .await;
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})),
    )
    .await
    .expect("pod status");
}

/// The agent binary inside `ns`, with policy on.
fn start_agent(ns: &Netns, kubeconfig: &Path, socket: &Path, dir: &Path) -> Killed {
    Killed(
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(env!("CARGO_BIN_EXE_underlay-agent"))
            .args(["--node-name", "worker-1", "--policy=true"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{METRICS_PORT}"))
            .args(["--health-addr", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent"),
    )
}

/// The agent's namespace, where its rules and sets live, with a relay to
/// the API server there and a kubeconfig that points at it.
struct Placed {
    ns: Netns,
    relay: underlay_lab::relay::Relay,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    socket: PathBuf,
}

async fn place(api: &underlay_lab::apiserver::Handle, tag: &str) -> Placed {
    let ns = Netns::create(&format!("{}{tag}", netns::unique_prefix()))
        .await
        .expect("create the namespace");
    let dir = tempfile::tempdir().unwrap();
    let (relay, kubeconfig) = relayed_kubeconfig(api, &ns, dir.path());
    let socket = dir.path().join("agent.sock");
    Placed {
        ns,
        relay,
        dir,
        kubeconfig,
        socket,
    }
}

fn iptables_save(ns: &Netns) -> String {
    save_with(ns, "iptables-save")
}

fn save_with(ns: &Netns, tool: &str) -> String {
    let out = Command::new("ip")
        // starts: iptables-save ip6tables-save
        .args(["netns", "exec", ns.name(), tool, "-t", "filter"])
        .output()
        .expect("run iptables-save");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names of the ipsets in `ns`.
fn ipset_names(ns: &Netns) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "ipset", "list", "-n"])
        .output()
        .expect("run ipset list");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    listed.lines().map(str::to_string).collect()
}

/// The words of `iptables-save` output's rules that follow `option`.
fn named_by<'a>(save: &'a str, option: &'a str) -> impl Iterator<Item = &'a str> {
    save.lines()
        .filter(|l| l.starts_with("-A "))
        .flat_map(move |l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let named = words.windows(2).filter(move |w| w[0] == option);
            named.map(|w| w[1]).collect::<Vec<_>>()
        })
}

/// The `UDL-M-` chains no rule jumps to, in `iptables-save` output.
fn unused_peers_chains(save: &str) -> Vec<&str> {
    let targets: std::collections::BTreeSet<&str> =
        named_by(save, "-j").chain(named_by(save, "-g")).collect();
    save.lines()
        .filter_map(|l| l.strip_prefix(':')?.split_whitespace().next())
        .filter(|c| c.starts_with("UDL-M-") && !targets.contains(c))
        .collect()
}

/// The embedded API server with Node worker-1 (pod CIDR 10.244.5.0/24).
async fn cluster() -> (underlay_lab::apiserver::Handle, kube::Client) {
    let api = ApiServer::start(Config::default())
        .await
        .expect("start the API server");
    let kube = api.client().unwrap();
    let nodes: Api<Node> = Api::all(kube.clone());
    create(
        &nodes,
        json!({"metadata": {"name": "worker-1"},
               "spec": {"podCIDR": "10.244.5.0/24", "podCIDRs": ["10.244.5.0/24"]}}),
    )
    .await;
    (api, kube)
}

/// A relay inside `ns` to the API server, and a kubeconfig in `dir` that
/// uses it (the agent in `ns` cannot reach the machine's loopback).
fn relayed_kubeconfig(
    api: &underlay_lab::apiserver::Handle,
    ns: &Netns,
    dir: &Path,
) -> (underlay_lab::relay::Relay, PathBuf) {
    let relay = underlay_lab::relay::start(&ns.path(), "127.0.0.1:0".parse().unwrap(), api.addr())
        .expect("relay");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        underlay_lab::lab::rewrite_server(&api.kubeconfig(), &relay.listen.to_string()),
    )
    .unwrap();
    (relay, kubeconfig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_report_the_programmed_policy() {
    if !netns::require_root("status_and_metrics_report_the_programmed_policy") {
        return;
    }
    let (api, kube) = cluster().await;
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    create(
        &namespaces,
        json!({"metadata": {"name": "x", "labels": {"ns": "x"}}}),
    )
    .await;
    running_pod(&kube, "a", "10.244.5.2").await;
    running_pod(&kube, "b", "10.244.5.3").await;
    running_pod(&kube, "c", "10.244.5.4").await;
    let policies: Api<NetworkPolicy> = Api::namespaced(kube.clone(), "x");
    create(
        &policies,
        json!({"metadata": {"name": "only-b"},
               "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                                     "ports": [{"port": "web"}]}]}}),
    )
    .await;

    let Placed {
        ns,
        relay,
        dir,
        kubeconfig,
        socket,
    } = place(&api, "pa").await;
    let mut agent = start_agent(&ns, &kubeconfig, &socket, dir.path());
    wait_for("the socket", async || socket.exists()).await;
    let mut c = client(&socket).await;
    wait_ready(&mut c).await;

    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let got = c
        .attach(attach_x_a("udlpolicya01"))
        .await
        .expect("attach x/a")
        .into_inner();
    assert!(got.policy_programmed);
    let saved = iptables_save(&ns);
    assert!(saved.contains("-i udlpolicya01"), "{saved}");

    // Status over gRPC: the policy state a CLI shows.
    let st = c.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert!(st.ready, "{}", st.reason);
    let p = st.policy.expect("policy status");
    assert_eq!((p.policies, p.endpoints), (1, 1), "{p:?}");
    assert!(p.rules > 0, "{p:?}");
    // Peer set {x/b}, named-port set {x/a,tcp:80}.
    assert!(p.ipset_members >= 2, "{p:?}");
    let last = p.last_sync_unix_ms.expect("last sync time");
    assert!(last >= before, "last sync {last} before attach {before}");
    assert_eq!(p.last_error, "");

    // /metrics carries every policy family beside the agent's own.
    let text = scrape(&ns);
    let value =
        |name: &str| sample(&text, name).unwrap_or_else(|| panic!("no sample {name} in\n{text}"));
    assert_eq!(value("underlay_agent_allocations_total"), 1.0);
    assert_eq!(value("underlay_policy_policies"), 1.0);
    assert_eq!(value("underlay_policy_endpoints"), 1.0);
    assert_eq!(value("underlay_policy_rules"), p.rules as f64);
    assert_eq!(
        value("underlay_policy_ipset_members"),
        p.ipset_members as f64
    );
    assert!(value("underlay_policy_apply_seconds_count") >= 1.0);
    assert!(value("underlay_policy_apply_seconds_sum") > 0.0);
    let changes = value("underlay_policy_change_to_dataplane_seconds_count");
    assert!(changes >= 1.0);
    assert!(value("underlay_policy_restore_calls_total{tool=\"iptables-restore\"}") >= 1.0);
    assert!(value("underlay_policy_restore_calls_total{tool=\"ip6tables-restore\"}") >= 1.0);
    assert!(value("underlay_policy_restore_calls_total{tool=\"ipset\"}") >= 1.0);
    for tool in ["iptables-restore", "ip6tables-restore", "ipset"] {
        let name = format!("underlay_policy_restore_failures_total{{tool=\"{tool}\"}}");
        assert_eq!(value(&name), 0.0);
    }
    assert_eq!(value("underlay_policy_conntrack_removed_total"), 0.0);
    assert_eq!(value("underlay_policy_repairs_total"), 0.0);

    // A change through the API reaches the dataplane, Status and metrics.
    policies
        .delete("only-b", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the deleted policy to leave the dataplane", async || {
        let st = c.status(v1::StatusRequest {}).await.unwrap().into_inner();
        st.policy.is_some_and(|p| p.policies == 0)
    })
    .await;
    let text = scrape(&ns);
    assert_eq!(
        sample(&text, "underlay_policy_policies"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "underlay_policy_endpoints"),
        Some(1.0),
        "{text}"
    );
    let after = sample(&text, "underlay_policy_change_to_dataplane_seconds_count").unwrap();
    assert!(after > changes, "{after} <= {changes}");

    // A restarted agent adopts what the previous one programmed: its first
    // sync reads the node, finds it right and writes nothing but the
    // deletion of peers chains no rule uses any more (the previous agent
    // kept them for pods to come).
    drop(c);
    drop(agent);
    let unused = [
        ("iptables-restore", "iptables-save"),
        ("ip6tables-restore", "ip6tables-save"),
    ]
    .map(|(restore, save)| (restore, unused_peers_chains(&save_with(&ns, save)).len()));
    let programmed = iptables_save(&ns);
    assert!(programmed.contains("-i udlpolicya01"), "{programmed}");
    agent = start_agent(&ns, &kubeconfig, &socket, dir.path());
    wait_for("the restarted agent to sync", async || {
        let Ok(mut c) = try_client(&socket).await else {
            return false;
        };
        c.status(v1::StatusRequest {}).await.is_ok_and(|s| {
            let s = s.into_inner();
            s.ready && s.policy.is_some_and(|p| p.last_sync_unix_ms.is_some())
        })
    })
    .await;
    let text = scrape(&ns);
    assert_eq!(
        sample(&text, "underlay_policy_endpoints"),
        Some(1.0),
        "{text}"
    );
    for (tool, unused) in unused {
        let name = format!("underlay_policy_restore_calls_total{{tool=\"{tool}\"}}");
        let writes = if unused > 0 { 1.0 } else { 0.0 };
        assert_eq!(sample(&text, &name), Some(writes), "{name}: {text}");
    }
    // The only set writes allowed destroy sets no rule uses: those the
    // kernel still held when the previous agent last synced (it stopped
    // before coming back for them), and those of the unused peers chains,
    // which the kernel holds a moment after their chains went (each refused
    // destroy is tried again by a later sync, so their number is not
    // bounded here). Then the node holds exactly the sets its rules use.
    let name = "underlay_policy_restore_calls_total{tool=\"ipset\"}";
    let most = if unused.iter().any(|(_, n)| *n > 0) {
        f64::INFINITY
    } else {
        1.0
    };
    wait_for("the sets no rule uses to be destroyed", async || {
        let rules = iptables_save(&ns);
        let used: std::collections::BTreeSet<&str> = named_by(&rules, "--match-set").collect();
        let listed = ipset_names(&ns);
        listed
            .iter()
            .all(|s| s.starts_with("udl6") || used.contains(s.as_str()))
    })
    .await;
    let text = scrape(&ns);
    assert!(
        sample(&text, name).is_some_and(|n| n <= most),
        "{name}: {text}"
    );
    let rules = iptables_save(&ns);
    let used: std::collections::BTreeSet<&str> = named_by(&rules, "--match-set").collect();
    let listed = ipset_names(&ns);
    let listed: std::collections::BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    // (v6 rules' sets are checked the same way by the engine tests)
    assert!(
        used.iter().all(|s| listed.contains(s)),
        "{used:?} not all in {listed:?}"
    );
    assert!(
        listed
            .iter()
            .all(|s| used.contains(s) || s.starts_with("udl6")),
        "sets no v4 rule uses remain: {listed:?} (used: {used:?})"
    );
    // Every rule is still there, but those of the unused peers chains.
    let unused_rules = |save: &str| {
        let unused = unused_peers_chains(save);
        save.lines()
            .filter(|l| unused.iter().any(|c| l.starts_with(&format!("-A {c} "))))
            .count()
    };
    let rule_count = |save: &str| save.lines().filter(|l| l.starts_with("-A")).count();
    assert_eq!(
        rule_count(&iptables_save(&ns)),
        rule_count(&programmed) - unused_rules(&programmed)
    );
    drop(agent);
    drop(relay);
}

/// `--pod-cidr` with policy on and no usable API server: no policy could
/// ever be read, so the agent must not call itself ready nor attach pods
/// (they would run open); Status says what is wrong and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_with_policy_but_no_api_server_stays_not_ready_and_says_why() {
    if !netns::require_root("standalone_with_policy_but_no_api_server_stays_not_ready_and_says_why")
    {
        return;
    }
    let ns = Netns::create_unique("nk")
        .await
        .expect("create the namespace");
    let dir = tempfile::tempdir().unwrap();
    let socket: PathBuf = dir.path().join("agent.sock");
    let _agent = Killed(
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(env!("CARGO_BIN_EXE_underlay-agent"))
            .args(["--node-name", "worker-1", "--policy=true"])
            .args(["--pod-cidr", "10.244.6.0/24"])
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--metrics-addr", "off", "--health-addr", "off"])
            // Neither a kubeconfig nor an in-cluster configuration.
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env("HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent"),
    );
    wait_for("the socket", async || socket.exists()).await;
    let mut c = client(&socket).await;
    let mut status = v1::StatusResponse::default();
    wait_for("ready, or a reason naming the API server", async || {
        status = c.status(v1::StatusRequest {}).await.unwrap().into_inner();
        status.ready || status.reason.contains("API server")
    })
    .await;
    assert!(!status.ready, "{status:?}");
    for hint in ["--kubeconfig", "--policy=false"] {
        assert!(status.reason.contains(hint), "{hint}: {}", status.reason);
    }
    assert!(!status.reason.contains("--pod-cidr"), "{}", status.reason);
    let attach = c.attach(attach_x_a("udlxa")).await;
    let err = attach.expect_err("attach must be refused");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
}

/// Ready means an Attach would succeed now: while the policy cache cannot
/// list pods the agent is not ready and says why; once it is ready, an
/// Attach is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_once_the_policy_cache_has_listed_everything() {
    use underlay_lab::apiserver::{Failure, Match};
    if !netns::require_root("ready_only_once_the_policy_cache_has_listed_everything") {
        return;
    }
    let api = ApiServer::start(Config::default())
        .await
        .expect("start the API server");
    let kube = api.client().unwrap();
    create(
        &Api::<Node>::all(kube.clone()),
        json!({"metadata": {"name": "worker-1"},
               "spec": {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"]}}),
    )
    .await;
    create(
        &Api::<Namespace>::all(kube.clone()),
        json!({"metadata": {"name": "x"}}),
    )
    .await;
    running_pod(&kube, "a", "10.244.7.2").await;
    // Every pod list fails until cleared.
    api.faults().fail_next(
        u32::MAX,
        Failure::Internal,
        Match {
            method: Some(http::Method::GET),
            path_contains: Some("/pods".into()),
        },
    );

    let placed = place(&api, "rd").await;
    let socket = placed.socket.clone();
    let _agent = start_agent(&placed.ns, &placed.kubeconfig, &socket, placed.dir.path());
    wait_for("the socket", async || socket.exists()).await;
    let mut c = client(&socket).await;
    let mut status = v1::StatusResponse::default();
    wait_for("ready, or a reason naming the policy cache", async || {
        status = c.status(v1::StatusRequest {}).await.unwrap().into_inner();
        status.ready || status.reason.contains("policy")
    })
    .await;
    assert!(!status.ready, "ready before pods were listed: {status:?}");

    api.faults().clear();
    wait_for("ready", async || {
        c.status(v1::StatusRequest {})
            .await
            .is_ok_and(|s| s.into_inner().ready)
    })
    .await;
    let got = c
        .attach(attach_x_a("udlready01"))
        .await
        .expect("attach right after ready")
        .into_inner();
    assert!(got.policy_programmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_recovered_from_the_kernel_keeps_its_policy() {
    if !netns::require_root("a_pod_recovered_from_the_kernel_keeps_its_policy") {
        return;
    }
    let (api, kube) = cluster().await;
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    create(&namespaces, json!({"metadata": {"name": "x"}})).await;
    running_pod(&kube, "a", "10.244.5.2").await;
    let policies: Api<NetworkPolicy> = Api::namespaced(kube.clone(), "x");
    create(
        &policies,
        json!({"metadata": {"name": "only-b"},
               "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}}),
    )
    .await;

    // Pod x/a is live on the node (wired by the plugin), and the agent's
    // store is gone.
    let prefix = netns::unique_prefix();
    let ns = Netns::create(&format!("{prefix}pa")).await.unwrap();
    let pod = Netns::create(&format!("{prefix}pp")).await.unwrap();
    ns.ip_batch(&[
        format!(
            "link add udlrecovera01 type veth peer name eth0 netns {}",
            pod.name()
        ),
        "link set udlrecovera01 alias sandbox-a up".to_string(),
        "route add 10.244.5.2/32 dev udlrecovera01".to_string(),
    ])
    .await
    .expect("wire pod x/a");
    let dir = tempfile::tempdir().unwrap();
    let (relay, kubeconfig) = relayed_kubeconfig(&api, &ns, dir.path());
    let socket: PathBuf = dir.path().join("agent.sock");
    let agent = start_agent(&ns, &kubeconfig, &socket, dir.path());
    let mut c = ready_client(&socket).await;
    wait_for("the recovered endpoint's policy", async || {
        c.status(v1::StatusRequest {}).await.is_ok_and(|s| {
            s.into_inner().policy.is_some_and(|p| {
                p.endpoints == 1 && p.policies == 1 && p.last_sync_unix_ms.is_some()
            })
        })
    })
    .await;
    // Its ingress chain sends traffic through the policy, not open.
    let saved = iptables_save(&ns);
    let chain = underlay_policy::compile::endpoint_chain(
        "udlrecovera01",
        underlay_policy::model::Direction::Ingress,
    );
    let rules: Vec<&str> = saved
        .lines()
        .filter(|l| l.starts_with(&format!("-A {chain} ")))
        .collect();
    assert!(
        rules.last().is_some_and(|l| l.ends_with("-j DROP"))
            && rules
                .iter()
                .any(|l| l.contains("-j UDL-M-") || l.contains("-j UDL-PI-")),
        "{saved}"
    );
    drop(agent);
    drop(relay);
}

/// A TCP port 80 flow traced over the socket.
async fn trace(
    c: &mut AgentClient<tonic::transport::Channel>,
    source: &str,
    destination: &str,
) -> Result<tonic::Response<v1::TraceResponse>, tonic::Status> {
    c.trace(v1::TraceRequest {
        source: source.into(),
        destination: destination.into(),
        protocol: "tcp".into(),
        port: 80,
    })
    .await
}

/// `Trace` over the socket: a flow the policy allows and one it denies at
/// x/a, each with the model's reason (the policy and rule), the kernel's
/// verdict from the namespace's own rules and the rules it matched, and
/// the two agreeing; a request that names no address is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_explains_an_allowed_and_a_denied_flow_and_the_kernel_agrees() {
    if !netns::require_root("trace_explains_an_allowed_and_a_denied_flow_and_the_kernel_agrees") {
        return;
    }
    let (api, kube) = cluster().await;
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    create(&namespaces, json!({"metadata": {"name": "x"}})).await;
    running_pod(&kube, "a", "10.244.5.2").await;
    running_pod(&kube, "b", "10.244.5.3").await;
    running_pod(&kube, "c", "10.244.5.4").await;
    let policies: Api<NetworkPolicy> = Api::namespaced(kube.clone(), "x");
    create(
        &policies,
        json!({"metadata": {"name": "only-b"},
               "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}}),
    )
    .await;
    let Placed {
        ns,
        relay,
        dir,
        kubeconfig,
        socket,
    } = place(&api, "pt").await;
    let agent = start_agent(&ns, &kubeconfig, &socket, dir.path());
    let mut c = ready_client(&socket).await;
    let attached = c
        .attach(attach_x_a("udltracea01"))
        .await
        .expect("attach x/a")
        .into_inner();
    let a_ip = attached.ips[0]
        .address
        .split('/')
        .next()
        .unwrap()
        .to_string();

    let allowed = trace(&mut c, "10.244.5.3", &a_ip)
        .await
        .expect("trace")
        .into_inner();
    assert!(allowed.allowed && allowed.agree, "{allowed:?}");
    let [d] = &allowed.directions[..] else {
        panic!("one direction is decided here: {allowed:?}")
    };
    assert_eq!(d.direction, v1::Direction::Ingress as i32);
    assert_eq!(d.pod, "x/a");
    let (model, kernel) = (d.model.clone().unwrap(), d.kernel.clone().unwrap());
    assert!(model.allowed && kernel.allowed && d.agree, "{d:?}");
    assert_eq!(model.reason, "allowed by networkpolicy/x/only-b rule 0");
    assert!(
        d.kernel_rules
            .iter()
            .any(|r| r.starts_with("UDL-TO-POD: -o udltracea01 -g UDL-I-udltracea01")),
        "{d:?}"
    );

    let denied = trace(&mut c, "10.244.5.4", &a_ip)
        .await
        .expect("trace")
        .into_inner();
    assert!(!denied.allowed && denied.agree, "{denied:?}");
    let d = &denied.directions[0];
    let (model, kernel) = (d.model.clone().unwrap(), d.kernel.clone().unwrap());
    assert!(!model.allowed && !kernel.allowed && d.agree, "{d:?}");
    assert_eq!(
        model.reason,
        "isolated by networkpolicy/x/only-b; no rule admits it"
    );
    assert_eq!(kernel.reason, "dropped by UDL-I-udltracea01: -j DROP");

    let refused = trace(&mut c, "not-an-address", &a_ip).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("not-an-address"), "{refused:?}");
    drop(agent);
    drop(relay);
}

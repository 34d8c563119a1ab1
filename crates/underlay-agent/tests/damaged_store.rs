//! A damaged or missing endpoint store under live pods, as root, in a node
//! namespace this test creates: the agent rebuilds the live attachments
//! from the kernel (the plugin's `udl*` host veths, their aliases naming
//! the owning container, their /32 and /128 host routes) before it serves
//! Attach, says what it recovered, and never hands a live pod's address
//! out again; a recovered attachment is released by its DEL.

use std::path::Path;
use std::process::{Command, Stdio};
use underlay_lab::netns::{self, Netns};
use underlay_proto::v1;

mod support;
use support::{Killed, client, ready_client, try_client, wait_for};

/// Live pods: (container ID, host veth, IPv4, IPv6).
const LIVE: [(&str, &str, &str, &str); 2] = [
    ("live-a", "udl00000000a01", "10.244.40.2", "fd00:40::2"),
    ("live-b", "udl00000000b01", "10.244.40.3", "fd00:40::3"),
];

async fn wire_live_pods(node: &Netns, pods: &[Netns]) {
    let mut lines = Vec::new();
    for ((id, host, v4, v6), pod) in LIVE.iter().zip(pods) {
        lines.extend([
            format!(
                "link add {host} type veth peer name eth0 netns {}",
                pod.name()
            ),
            format!("link set {host} alias {id} up"),
            format!("route add {v4}/32 dev {host}"),
            format!("route add {v6}/128 dev {host}"),
        ]);
    }
    node.ip_batch(&lines).await.expect("wire the live pods");
    for pod in pods {
        pod.ip_batch(&["link set eth0 up".to_string()])
            .await
            .expect("pod side up");
    }
}

fn start_agent(node: &Netns, dir: &Path) -> Killed {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap();
    Killed(
        Command::new("ip")
            .args(["netns", "exec", node.name()])
            .arg(env!("CARGO_BIN_EXE_underlay-agent"))
            .args(["--node-name", "worker-1", "--policy=false"])
            .args([
                "--pod-cidr",
                "10.244.40.0/28",
                "--pod-cidr",
                "fd00:40::/120",
            ])
            .arg("--socket")
            .arg(dir.join("agent.sock"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--metrics-addr", "off", "--health-addr", "off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent"),
    )
}

fn key(id: &str) -> Option<v1::AttachmentKey> {
    Some(v1::AttachmentKey {
        container_id: id.into(),
        ifname: "eth0".into(),
    })
}

/// Damages the store, starts the agent over it and checks what it serves.
async fn check_recovery(case: &str, damage: impl FnOnce(&Path)) {
    let prefix = netns::unique_prefix();
    let node = Netns::create(&format!("{prefix}n")).await.unwrap();
    let pods = [
        Netns::create(&format!("{prefix}a")).await.unwrap(),
        Netns::create(&format!("{prefix}b")).await.unwrap(),
    ];
    wire_live_pods(&node, &pods).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    // A first run creates the store; then the store is hurt.
    {
        let _agent = start_agent(&node, dir.path());
        ready_client(&socket).await;
    }
    damage(&dir.path().join("state/endpoints.redb"));
    let _ = std::fs::remove_file(&socket);

    let _agent = start_agent(&node, dir.path());
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let mut status = None;
    wait_for(
        &format!("{case}: the agent to recover and be ready"),
        async || {
            let Ok(mut c) = try_client(&socket).await else {
                return false;
            };
            status = c
                .status(v1::StatusRequest {})
                .await
                .ok()
                .map(|s| s.into_inner())
                .filter(|s| s.ready);
            status.is_some()
        },
    )
    .await;
    let st = status.unwrap();
    assert_eq!(st.endpoints, 2, "{case}: {st:?}\n{}", log());
    assert!(log().contains("recovered"), "{case}: {}", log());

    // Every address handed out now is one no live pod has.
    let live: Vec<String> = LIVE
        .iter()
        .flat_map(|(_, _, v4, v6)| [format!("{v4}/32"), format!("{v6}/128")])
        .collect();
    let mut c = client(&socket).await;
    for i in 0.. {
        let r = c
            .attach(v1::AttachRequest {
                key: key(&format!("new{i}")),
                pod: Some(v1::PodRef {
                    namespace: "x".into(),
                    name: format!("new{i}"),
                    ..Default::default()
                }),
                host_interface: format!("udlnew{i}"),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                for ip in r.into_inner().ips {
                    assert!(
                        !live.contains(&ip.address),
                        "{case}: {} handed out again",
                        ip.address
                    );
                }
            }
            Err(s) if s.code() == tonic::Code::ResourceExhausted => break,
            Err(s) => panic!("{case}: attach new{i}: {s:?}\n{}", log()),
        }
    }
    // The live pods' DEL releases what was recovered for them.
    let released = c
        .detach(v1::DetachRequest {
            key: key("live-a"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.released, "{case}");
    assert_eq!(released.host_interface, LIVE[0].1, "{case}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_store_is_rebuilt_from_the_kernel() {
    if !netns::require_root("a_truncated_store_is_rebuilt_from_the_kernel") {
        return;
    }
    check_recovery("truncated", |path| {
        let len = std::fs::metadata(path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(len / 3).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_store_is_rebuilt_from_the_kernel() {
    if !netns::require_root("a_garbage_store_is_rebuilt_from_the_kernel") {
        return;
    }
    check_recovery("garbage", |path| {
        let garbage: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(path, garbage).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_store_is_rebuilt_from_the_kernel() {
    if !netns::require_root("a_deleted_store_is_rebuilt_from_the_kernel") {
        return;
    }
    check_recovery("deleted", |path| std::fs::remove_file(path).unwrap()).await;
}

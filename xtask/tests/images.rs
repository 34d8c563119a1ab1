//! The container images, end to end: `cargo xtask image` builds them (static
//! binaries included) twice with identical digests; skopeo and umoci read the
//! OCI layouts and docker archives; every binary runs from the unpacked root
//! filesystem and prints the version and commit; the agent image's iptables
//! (both backends), ipset and conntrack work in a network namespace made for
//! the test, and its entrypoint picks the backend that holds kubelet's hint;
//! the agent, run from the image as the DaemonSet runs it, programs a
//! NetworkPolicy and deletes the conntrack entry of a connection the policy
//! denies (`agent`).
//!
//! Needs root (chroot, network namespaces, device nodes in the unpacked
//! root). The tools run in anonymous network namespaces made by `unshare
//! --net` for one command, which disappear with it; the agent runs in named
//! ones the test deletes, also when it fails.

#[path = "images/agent.rs"]
mod agent;
/// The agent's own tests' gRPC client over its unix socket.
#[path = "../../crates/underlay-agent/tests/support/mod.rs"]
mod agent_support;

mod common;
use common::root;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use underlay_lab::netns::{self, Netns};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Skips (returns false) when not root, unless UNDERLAY_REQUIRE_ROOT is set.
fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("UNDERLAY_REQUIRE_ROOT").is_some() {
        panic!("{test} needs root and UNDERLAY_REQUIRE_ROOT is set");
    }
    eprintln!("skipping {test}: needs root (chroot, network namespaces)");
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn head_commit() -> String {
    stdout(&run(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())))
    .trim()
    .to_string()
}

fn xtask(args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(root()))
}

/// The directory cargo builds into (`CARGO_TARGET_DIR` or `target`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root().join(d) })
        .unwrap_or_else(|| root().join("target"))
}

/// `cargo xtask image` of the debug binaries into `out`. Tests of this
/// binary run in parallel processes: a file lock makes their builds take
/// turns, so the binaries are compiled once and the shared Debian package
/// cache is filled by one build at a time.
fn build_images(out: &Path) -> Value {
    let target = target_dir();
    std::fs::create_dir_all(&target).unwrap();
    let lock = std::fs::File::create(target.join("underlay-images-build.lock")).unwrap();
    lock.lock().expect("the image build lock can be taken");
    xtask(&[
        "image",
        "--profile",
        "debug",
        "--out",
        out.to_str().unwrap(),
    ]);
    serde_json::from_slice(&std::fs::read(out.join("images.json")).unwrap()).unwrap()
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("underlay-images-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn digests(summary: &Value) -> Vec<(String, String, String)> {
    summary["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["manifestDigest"].as_str().unwrap().to_string(),
                i["configDigest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Unpacks an image with umoci and gives its root filesystem a /dev/null,
/// as a container runtime would.
fn unpack(layout: &Path, name: &str, tag: &str, into: &Path) -> PathBuf {
    let bundle = into.join(format!("bundle-{name}"));
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.join(name).display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("dev")).unwrap();
    std::fs::create_dir_all(rootfs.join("proc")).unwrap();
    run(Command::new("mknod")
        .arg(rootfs.join("dev/null"))
        .args(["c", "1", "3"]));
    rootfs
}

/// Runs a command inside the root filesystem, in fresh network, mount and
/// PID namespaces with `/proc` mounted as a container runtime does
/// (`iptables-legacy-save` finds its tables through `/proc/net`).
fn in_image(rootfs: &Path, env: &[(&str, &str)], argv: &[&str]) -> Output {
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--mount", "--pid", "--fork"])
        .arg(format!("--mount-proc={}", rootfs.join("proc").display()))
        .arg("chroot")
        .arg(rootfs)
        .args(argv)
        .env_clear();
    cmd.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok_in_image(rootfs: &Path, env: &[(&str, &str)], argv: &[&str]) -> String {
    let out = in_image(rootfs, env, argv);
    assert!(
        out.status.success(),
        "{argv:?} in the image failed with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn images_are_reproducible_readable_and_their_binaries_and_tools_run() {
    if !root_or_skip("images_are_reproducible_readable_and_their_binaries_and_tools_run") {
        return;
    }
    let tmp = TempDir::new("e2e");
    let (a, b) = (tmp.0.join("a"), tmp.0.join("b"));
    // The images are stamped with HEAD: a commit landing between the two
    // builds changes them legitimately, so such a pair is built again.
    let (first, second) = (0..3)
        .find_map(|_| {
            let before = head_commit();
            let first = build_images(&a);
            let second = build_images(&b);
            (head_commit() == before).then_some((first, second))
        })
        .expect("HEAD kept moving during three pairs of builds");
    assert_eq!(
        digests(&first),
        digests(&second),
        "two builds gave different digests"
    );
    let tag = first["version"].as_str().unwrap().to_string();
    for name in ["underlay-route-controller", "underlay-agent"] {
        let archive = format!("{name}-{tag}.docker.tar");
        assert!(
            std::fs::read(a.join(&archive)).unwrap() == std::fs::read(b.join(&archive)).unwrap(),
            "{archive} differs between two builds"
        );
    }
    let commit = head_commit();
    assert_eq!(first["revision"], commit.as_str());

    // skopeo reads both forms and sees the labels and the user.
    for name in ["underlay-route-controller", "underlay-agent"] {
        let oci = format!("oci:{}:{tag}", a.join(name).display());
        let inspect: Value =
            serde_json::from_slice(&run(Command::new("skopeo").args(["inspect", &oci])).stdout)
                .unwrap();
        let labels = &inspect["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            commit.as_str(),
            "{name}"
        );
        assert_eq!(
            labels["org.opencontainers.image.version"],
            tag.as_str(),
            "{name}"
        );
        assert_eq!(
            labels["org.opencontainers.image.source"], "https://github.com/underlay-net/underlay",
            "{name}"
        );
        assert!(
            labels["org.opencontainers.image.licenses"]
                .as_str()
                .unwrap()
                .contains("Apache-2.0")
        );
        assert_eq!(inspect["Architecture"], "amd64");
        let docker = format!(
            "docker-archive:{}",
            a.join(format!("{name}-{tag}.docker.tar")).display()
        );
        let from_archive: Value =
            serde_json::from_slice(&run(Command::new("skopeo").args(["inspect", &docker])).stdout)
                .unwrap();
        assert_eq!(
            from_archive["Labels"], inspect["Labels"],
            "{name}: the archive has other labels"
        );
    }
    let config: Value = serde_json::from_slice(
        &run(Command::new("skopeo").args([
            "inspect",
            "--config",
            &format!(
                "oci:{}:{tag}",
                a.join("underlay-route-controller").display()
            ),
        ]))
        .stdout,
    )
    .unwrap();
    assert_eq!(config["config"]["User"], "65532:65532");
    let agent_licences = {
        let oci = format!("oci:{}:{tag}", a.join("underlay-agent").display());
        let inspect: Value =
            serde_json::from_slice(&run(Command::new("skopeo").args(["inspect", &oci])).stdout)
                .unwrap();
        inspect["Labels"]["org.opencontainers.image.licenses"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(agent_licences.contains("GPL-2.0"), "{agent_licences}");

    // The route controller image: the binary and the user files, no shell.
    let rc = unpack(&a, "underlay-route-controller", &tag, &tmp.0);
    assert!(
        !rc.join("bin/sh").exists(),
        "the route controller image must have no shell"
    );
    assert!(
        std::fs::read_to_string(rc.join("etc/passwd"))
            .unwrap()
            .contains(":65532:65532:")
    );
    let version = ok_in_image(
        &rc,
        &[],
        &["/usr/local/bin/underlay-route-controller", "--version"],
    );
    assert!(
        version.contains(&tag) && version.contains(&commit[..12]),
        "{version}"
    );

    // The agent image: its binaries report the version and commit.
    let agent = unpack(&a, "underlay-agent", &tag, &tmp.0);
    for bin in ["underlay-agent", "underlay-cni", "kubectl-underlay"] {
        let version = ok_in_image(
            &agent,
            &[],
            &[&format!("/usr/local/bin/{bin}"), "--version"],
        );
        assert!(
            version.contains(&tag) && version.contains(&commit[..12]),
            "{bin}: {version}"
        );
    }
    // Licences of the Debian packages are in the image.
    for pkg in ["iptables", "ipset", "conntrack", "libc6", "dash"] {
        assert!(
            agent
                .join(format!("usr/share/doc/{pkg}/copyright"))
                .exists(),
            "no copyright file for {pkg}"
        );
    }
    // The dataplane tools work, in a namespace of their own.
    for argv in [
        &["iptables-nft", "-S"][..],
        &["ip6tables-nft", "-S"],
        &["iptables-legacy", "-S"],
        &["ip6tables-legacy", "-S"],
        &["iptables-nft-restore", "--version"],
        &["iptables-legacy-save", "--version"],
    ] {
        let out = ok_in_image(&agent, &[], argv);
        assert!(
            out.contains("-P INPUT ACCEPT") || out.contains("v1.8"),
            "{argv:?}: {out}"
        );
    }
    let sets = ok_in_image(
        &agent,
        &[],
        &[
            "/bin/sh",
            "-c",
            "ipset create t hash:ip && ipset add t 10.0.0.1 && ipset list t",
        ],
    );
    assert!(sets.contains("10.0.0.1"), "{sets}");
    let ct = ok_in_image(&agent, &[], &["conntrack", "--version"]);
    assert!(ct.contains("conntrack v"), "{ct}");

    // The entrypoint picks the backend: kubelet's hint chain wins, then the
    // backend with more rules, then nft; a configured mode wins over all.
    let mode = |env: &[(&str, &str)], setup: &str| -> String {
        let script = format!(
            "{setup} exec /usr/local/bin/underlay-entrypoint /bin/sh -c 'echo $UNDERLAY_IPTABLES_MODE; iptables -V'"
        );
        let out = ok_in_image(&agent, env, &["/bin/sh", "-c", &script]);
        out.lines().next().unwrap_or("").to_string() + "|" + &out
    };
    let check = |env: &[(&str, &str)], setup: &str, want: &str| {
        let got = mode(env, setup);
        assert!(
            got.starts_with(&format!("{want}|")),
            "{setup:?} {env:?}: {got}"
        );
        assert!(
            got.contains(&format!(
                "({})",
                if want == "nft" { "nf_tables" } else { "legacy" }
            )),
            "{got}"
        );
    };
    check(&[], "", "nft");
    check(
        &[],
        "iptables-legacy -t mangle -N KUBE-IPTABLES-HINT;",
        "legacy",
    );
    check(
        &[],
        "iptables-legacy -t mangle -N KUBE-IPTABLES-HINT; iptables-nft -t mangle -N KUBE-IPTABLES-HINT;",
        "nft",
    );
    check(&[], "iptables-legacy -A INPUT -j ACCEPT;", "legacy");
    check(&[("UNDERLAY_IPTABLES_MODE", "legacy")], "", "legacy");
    let bad = in_image(
        &agent,
        &[("UNDERLAY_IPTABLES_MODE", "fast")],
        &["/usr/local/bin/underlay-entrypoint", "true"],
    );
    assert_eq!(
        bad.status.code(),
        Some(64),
        "an unknown mode must be refused"
    );
}

/// The agent image as a runtime starts it: the unpacked root filesystem,
/// the process of the bundle's config (the image's entrypoint and command
/// and its environment) and the DaemonSet's settings.
fn agent_image(rootfs: PathBuf) -> agent::Image {
    let bundle = rootfs.parent().unwrap().join("config.json");
    let config: Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("{}: no array {v}", bundle.display()))
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    agent::Image {
        args: strings(&config["process"]["args"]),
        env: strings(&config["process"]["env"]),
        settings: agent_settings(),
        mounts: agent_mounts(),
        rootfs,
    }
}

/// The agent container's settings as the kubelet hands them over: the
/// ConfigMap's, then the container's own `env` values with `$(VAR)`
/// expanded. `status.hostIP` is the node namespace's loopback here, where
/// the test scrapes.
fn agent_settings() -> serde_json::Map<String, Value> {
    let mut settings = config_map_data("underlay-agent");
    let daemon_set = deploy_object("underlay-agent", "DaemonSet", "underlay-agent");
    let container = daemon_set["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("the DaemonSet has an agent container")
        .clone();
    let mut vars: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match (
            e["value"].as_str(),
            e["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(v), _) => vars
                .iter()
                .fold(v.to_string(), |v, (k, x)| v.replace(&format!("$({k})"), x)),
            (None, Some("status.hostIP")) => "127.0.0.1".to_string(),
            _ => continue,
        };
        vars.push((name.clone(), value.clone()));
        settings.insert(name, Value::String(value));
    }
    settings
}

/// The `hostPath` volumes the DaemonSet mounts into the agent container.
fn agent_mounts() -> Vec<agent::Mount> {
    let daemon_set = deploy_object("underlay-agent", "DaemonSet", "underlay-agent");
    let spec = &daemon_set["spec"]["template"]["spec"];
    let container = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("the DaemonSet has an agent container");
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let volume = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap_or_else(|| panic!("no volume {}", m["name"]));
            let host = &volume["hostPath"];
            agent::Mount {
                path: m["mountPath"].as_str().unwrap().to_string(),
                host_path: host["path"]
                    .as_str()
                    .expect("a hostPath volume")
                    .to_string(),
                file: host["type"] == "FileOrCreate",
            }
        })
        .collect()
}

#[tokio::test]
async fn the_agent_from_its_image_programs_a_policy_and_deletes_the_conntrack_entry_it_denies() {
    let test =
        "the_agent_from_its_image_programs_a_policy_and_deletes_the_conntrack_entry_it_denies";
    if !root_or_skip(test) {
        return;
    }
    let tmp = TempDir::new("agent");
    let out = tmp.0.join("out");
    let summary = build_images(&out);
    let tag = summary["version"].as_str().unwrap();
    let image = agent_image(unpack(&out, "underlay-agent", tag, &tmp.0));
    let prefix = netns::unique_prefix();
    let node = Netns::create(&format!("{prefix}n"))
        .await
        .expect("create the node namespace");
    let pod = Netns::create(&format!("{prefix}p"))
        .await
        .expect("create the pod namespace");
    let (node_name, pod_name) = (node.name().to_string(), pod.name().to_string());
    let scratch = tmp.0.clone();
    node.enter(move || {
        agent::run(
            &image,
            &Netns::existing(&node_name),
            &Netns::existing(&pod_name),
            &scratch,
        )
    })
    .expect("the scenario ran to its end (its failure is printed above)");
    pod.delete().await.expect("delete the pod namespace");
    node.delete().await.expect("delete the node namespace");
}

/// An object of deploy/base, from the file named after the component.
fn deploy_object(component: &str, kind: &str, name: &str) -> Value {
    let text = std::fs::read_to_string(root().join("deploy/base").join(format!(
        "{}.yaml",
        component.trim_start_matches("underlay-")
    )))
    .unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == kind && v["metadata"]["name"] == name {
            return v;
        }
    }
    panic!("no {kind} {name} in deploy/base");
}

/// The data of a ConfigMap in deploy/base.
fn config_map_data(name: &str) -> serde_json::Map<String, Value> {
    deploy_object(name, "ConfigMap", name)["data"]
        .as_object()
        .unwrap()
        .clone()
}

/// Every setting in a ConfigMap must be a flag's environment variable of the
/// binary that reads it (clap prints `[env: NAME=...]` in --help).
fn check_settings(binary: &str, config_map: &str, not_flags: &[&str]) {
    xtask(&["build"]);
    let path = target_dir()
        .join("x86_64-unknown-linux-gnu/debug")
        .join(binary);
    // starts: underlay-agent underlay-cni underlay-route-controller (from the image)
    let help = stdout(&run(Command::new(&path).arg("--help")));
    for key in config_map_data(config_map).keys() {
        if key == "RUST_LOG" || not_flags.contains(&key.as_str()) {
            continue;
        }
        assert!(
            help.contains(&format!("[env: {key}=")),
            "{config_map} sets {key}, which is no flag of {binary}:\n{help}"
        );
    }
}

#[test]
fn agent_settings_are_agent_flags() {
    // UNDERLAY_IPTABLES_MODE is read by the image's entrypoint.
    check_settings(
        "underlay-agent",
        "underlay-agent",
        &["UNDERLAY_IPTABLES_MODE"],
    );
}

#[test]
fn route_controller_settings_are_route_controller_flags() {
    check_settings(
        "underlay-route-controller",
        "underlay-route-controller",
        &[],
    );
}

#[test]
fn cni_install_accepts_the_flags_the_init_container_passes() {
    xtask(&["build"]);
    let path = target_dir().join("x86_64-unknown-linux-gnu/debug/underlay-cni");
    // starts: underlay-cni (from the image)
    let help = stdout(&run(Command::new(&path).args(["install", "--help"])));
    for flag in ["--bin-dir", "--conf-dir"] {
        assert!(
            help.contains(flag),
            "underlay-cni install has no {flag}:\n{help}"
        );
    }
}

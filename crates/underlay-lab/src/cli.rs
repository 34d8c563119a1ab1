//! The lab's command line: `up` (daemonizes a supervisor that keeps the lab
//! running), `down`, `status`, `exec`, `probe`, `node add|remove` (asks the
//! supervisor over its control socket), and `demo` (up → demo → report →
//! down in one process). The binary only parses and dispatches.

mod operate;
use crate::demo;
use crate::lab::{Lab, LabConfig, LabState};
use crate::netns::{self, Netns};
use crate::traffic::{self, Protocol};
use anyhow::{Context, Result, bail};
pub use operate::{DenialsArgs, TraceArgs, UnderlayArgs, denials, trace, underlay};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The namespace prefix of labs started from the command line.
pub const PREFIX: &str = "ullab";

#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// The lab's directory (state, logs, kubeconfig).
    #[arg(long, env = "UNDERLAY_LAB_DIR", default_value = "target/lab")]
    pub dir: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of nodes.
    #[arg(long, env = "UNDERLAY_LAB_NODES", default_value_t = 3)]
    pub nodes: usize,
    /// Give nodes and pods IPv6 addresses too.
    #[arg(long, env = "UNDERLAY_LAB_DUAL_STACK")]
    pub dual_stack: bool,
    /// Use this API server (its server must be on 127.0.0.1) instead of the
    /// embedded one.
    #[arg(long, env = "UNDERLAY_LAB_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Where the underlay binaries are; default: next to this binary.
    #[arg(long, env = "UNDERLAY_LAB_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Delay (ms) between an ARM route write completing and the fabric
    /// applying it.
    #[arg(long, env = "UNDERLAY_LAB_PROPAGATION_DELAY_MS", default_value_t = 0)]
    pub propagation_delay_ms: u64,
    /// Route controller replicas.
    #[arg(long, env = "UNDERLAY_LAB_ROUTE_CONTROLLERS", default_value_t = 2)]
    pub route_controllers: usize,
    /// An extra argument for every agent (repeatable), e.g. `--agent-arg=--policy=false`.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExecArgs {
    #[command(flatten)]
    pub common: Common,
    /// The pod, NAMESPACE/NAME.
    pub pod: String,
    /// The command to run in the pod's network namespace.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub common: Common,
    /// The pod to probe from, NAMESPACE/NAME.
    pub pod: String,
    /// An IP address, or a pod NAMESPACE/NAME.
    pub host: String,
    pub port: u16,
    #[arg(long, env = "UNDERLAY_LAB_PROTOCOL", default_value = "tcp")]
    pub protocol: Protocol,
    /// How long to wait for an answer (ms).
    #[arg(long, env = "UNDERLAY_LAB_TIMEOUT_MS", default_value_t = 1000)]
    pub timeout_ms: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub action: NodeAction,
    /// How long to wait for the node to join or leave (s).
    #[arg(
        long,
        env = "UNDERLAY_LAB_NODE_TIMEOUT",
        default_value_t = 120,
        global = true
    )]
    pub timeout_secs: u64,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum NodeAction {
    /// A node joins: namespace, agent, kubelet; returns once it is Ready and
    /// its route is in the fabric.
    Add { name: String },
    /// A node leaves: its pods, agent and namespace go; returns once its
    /// route is out of the fabric.
    Remove { name: String },
}

/// A request on the supervisor's control socket (one JSON line).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlRequest {
    AddNode { node: String, timeout_secs: u64 },
    RemoveNode { node: String, timeout_secs: u64 },
}

/// The supervisor's answer (one JSON line).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    pub message: String,
}

/// Where a running lab's supervisor listens for `node add|remove`.
pub fn control_socket(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

/// The longest request line the supervisor reads.
const MAX_REQUEST: u64 = 4096;

fn abs(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_owned())
    }
}

fn bin_dir(args: &UpArgs) -> Result<PathBuf> {
    match &args.bin_dir {
        Some(d) => Ok(abs(d)),
        None => std::env::current_exe()
            .context("cannot find this binary; pass --bin-dir")?
            .parent()
            .map(Path::to_owned)
            .context("this binary has no directory; pass --bin-dir"),
    }
}

fn config(args: &UpArgs) -> Result<LabConfig> {
    let mut c = LabConfig::new(PREFIX, &abs(&args.common.dir), &bin_dir(args)?);
    c.nodes = args.nodes;
    c.dual_stack = args.dual_stack;
    c.kubeconfig = args.kubeconfig.as_deref().map(abs);
    c.propagation_delay = Duration::from_millis(args.propagation_delay_ms);
    c.route_controllers = args.route_controllers;
    c.agent_args = args.agent_args.clone();
    Ok(c)
}

fn progress(msg: &str) {
    eprintln!("lab: {msg}");
}

fn require_root() -> Result<()> {
    if !netns::is_root() {
        bail!("the lab creates network namespaces and needs root; run it with sudo -E");
    }
    Ok(())
}

/// `lab up`: starts a supervisor in the background and waits until the lab
/// is ready, printing its progress.
pub async fn up(args: UpArgs) -> Result<()> {
    require_root()?;
    let dir = abs(&args.common.dir);
    let state_path = dir.join("state.json");
    if let Ok(st) = LabState::load(&state_path)
        && st.supervisor_pid.is_some_and(alive)
    {
        bail!(
            "a lab is already up (supervisor pid {:?}); run `cargo xtask lab down` first",
            st.supervisor_pid
        );
    }
    down_dir(&dir).await?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log_path = dir.join("supervisor.log");
    let log = std::fs::File::create(&log_path).context("cannot create the supervisor log")?;
    let mut child = supervisor_command(&args, &dir)?
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start the lab supervisor")?;
    wait_supervisor_ready(&mut child, &log_path, &state_path).await?;
    print_kubeconfig(&dir.join("kubeconfig"))
}

/// The command line of the supervisor `up` starts: this binary's hidden
/// `supervise` with the same settings, in its own process group and with
/// no stdin.
fn supervisor_command(args: &UpArgs, dir: &Path) -> Result<std::process::Command> {
    let exe = std::env::current_exe().context("cannot find this binary")?;
    // starts: underlay-lab (this binary, as the supervisor)
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("supervise")
        .arg("--dir")
        .arg(dir)
        .arg("--nodes")
        .arg(args.nodes.to_string())
        .arg("--bin-dir")
        .arg(bin_dir(args)?)
        .arg("--propagation-delay-ms")
        .arg(args.propagation_delay_ms.to_string())
        .arg("--route-controllers")
        .arg(args.route_controllers.to_string());
    if args.dual_stack {
        cmd.arg("--dual-stack");
    }
    for a in &args.agent_args {
        cmd.arg(format!("--agent-arg={a}"));
    }
    if let Some(k) = &args.kubeconfig {
        cmd.arg("--kubeconfig").arg(abs(k));
    }
    // Its own process group: the supervisor outlives this command and is
    // not hit by the terminal's Ctrl-C.
    use std::os::unix::process::CommandExt;
    cmd.process_group(0).stdin(std::process::Stdio::null());
    Ok(cmd)
}

/// Waits until the supervisor marks the lab ready in its state file,
/// echoing the progress and error lines of its log; fails if it exits
/// first or the lab is not ready within 300 s.
async fn wait_supervisor_ready(
    child: &mut std::process::Child,
    log_path: &Path,
    state_path: &Path,
) -> Result<()> {
    let start = Instant::now();
    let mut shown = 0usize;
    loop {
        let text = std::fs::read_to_string(log_path).unwrap_or_default();
        for line in text.lines().skip(shown) {
            if line.starts_with("lab: ") || line.contains("ERROR") || line.starts_with("Error") {
                eprintln!("{line}");
            }
            shown += 1;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the lab supervisor exited ({status}) before the lab was ready; see {}",
                log_path.display()
            );
        }
        if LabState::load(state_path).map(|s| s.ready).unwrap_or(false) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!(
                "the lab was not ready after 300s; see {} and run `cargo xtask lab down`",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints where the running lab's kubeconfig is, and the kubeconfig.
fn print_kubeconfig(kubeconfig: &Path) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "# lab is up; kubeconfig: {}", kubeconfig.display())?;
    writeln!(out, "# export KUBECONFIG={}", kubeconfig.display())?;
    out.write_all(
        std::fs::read_to_string(kubeconfig)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(())
}

/// The hidden `supervise` command: runs the lab until SIGTERM or SIGINT.
pub async fn supervise(args: UpArgs) -> Result<()> {
    use futures::StreamExt;
    require_root()?;
    let sock = control_socket(&abs(&args.common.dir));
    let _ = std::fs::remove_file(&sock);
    let lab = Lab::start(config(&args)?, &progress).await?;
    let control = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("cannot listen on {}", sock.display()))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Requests run side by side with the signal handling: `lab down` during
    // a long join still stops the lab (the join is dropped, shutdown
    // removes what it made).
    let mut requests = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => { let _ = lab.save_state(); }
            accepted = control.accept() => match accepted {
                Ok((stream, _)) => requests.push(serve_control(&lab, stream)),
                Err(error) => tracing::warn!(%error, "lab control socket accept failed"),
            },
            Some(()) = requests.next(), if !requests.is_empty() => {}
        }
    }
    drop(requests);
    let _ = std::fs::remove_file(&sock);
    progress("stopping");
    lab.shutdown().await?;
    progress("stopped");
    Ok(())
}

/// Answers one control request.
async fn serve_control(lab: &Lab, stream: tokio::net::UnixStream) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await;
    let response = match read {
        Err(e) => ControlResponse {
            ok: false,
            message: format!("cannot read the request: {e}"),
        },
        Ok(_) => match serde_json::from_str::<ControlRequest>(&line) {
            Err(e) => ControlResponse {
                ok: false,
                message: format!("invalid request ({e}); use `underlay-lab node add|remove NAME`"),
            },
            Ok(request) => handle_control(lab, request).await,
        },
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

async fn handle_control(lab: &Lab, request: ControlRequest) -> ControlResponse {
    let result = match &request {
        ControlRequest::AddNode { node, timeout_secs } => {
            progress(&format!("node {node} joins"));
            lab.join_node(node, Duration::from_secs(*timeout_secs))
                .await
                .map(|net| {
                    format!(
                        "node {node} joined: {} in {}, Ready, routed",
                        net.ipv4, net.netns
                    )
                })
        }
        ControlRequest::RemoveNode { node, timeout_secs } => {
            progress(&format!("node {node} leaves"));
            lab.leave_node(node, Duration::from_secs(*timeout_secs))
                .await
                .map(|()| format!("node {node} left; its route is gone"))
        }
    };
    match result {
        Ok(message) => {
            progress(&message);
            ControlResponse { ok: true, message }
        }
        Err(e) => {
            tracing::warn!(request = ?request, error = %e, "lab control request failed");
            ControlResponse {
                ok: false,
                message: e.to_string(),
            }
        }
    }
}

/// `lab node add|remove NAME`: asks the running lab's supervisor.
pub async fn node(args: NodeArgs) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    require_root()?;
    let dir = abs(&args.common.dir);
    let st = LabState::load(&dir.join("state.json"))?;
    if !st.supervisor_pid.is_some_and(alive) || !st.ready {
        bail!(
            "no lab is running in {}; start one with `cargo xtask lab up`",
            dir.display()
        );
    }
    let timeout_secs = args.timeout_secs;
    let request = match args.action {
        NodeAction::Add { name } => {
            crate::lab::validate_node_name(&name)?;
            ControlRequest::AddNode {
                node: name,
                timeout_secs,
            }
        }
        NodeAction::Remove { name } => ControlRequest::RemoveNode {
            node: name,
            timeout_secs,
        },
    };
    let sock = control_socket(&dir);
    let mut stream = tokio::net::UnixStream::connect(&sock)
        .await
        .with_context(|| {
            format!(
                "cannot reach the lab supervisor at {}; is the lab up (`cargo xtask lab status`)?",
                sock.display()
            )
        })?;
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut answer = String::new();
    // The supervisor gives up after the timeout of one of its waits (a join
    // has four); allow it time to say so.
    let wait = Duration::from_secs(timeout_secs.saturating_mul(4).saturating_add(30));
    tokio::time::timeout(wait, BufReader::new(stream).read_line(&mut answer))
        .await
        .context("the lab supervisor did not answer; see supervisor.log in the lab directory")??;
    let response: ControlResponse = serde_json::from_str(&answer)
        .with_context(|| format!("the lab supervisor answered {answer:?}"))?;
    if !response.ok {
        bail!("{}", response.message);
    }
    writeln!(std::io::stdout(), "{}", response.message)?;
    Ok(())
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn kill(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// `lab down`: stops the supervisor and removes everything the lab created.
pub async fn down(common: Common) -> Result<()> {
    require_root()?;
    let dir = abs(&common.dir);
    down_dir(&dir).await?;
    eprintln!("lab: down");
    Ok(())
}

async fn down_dir(dir: &Path) -> Result<()> {
    let marker = dir.display().to_string();
    if let Ok(state) = LabState::load(&dir.join("state.json")) {
        if let Some(pid) = state
            .supervisor_pid
            .filter(|p| alive(*p) && *p != std::process::id())
        {
            kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while alive(pid) && start.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if alive(pid) {
                kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        // After a crash the supervisor's children may still run: kill the
        // ones recorded, checking their command line names this lab (a
        // recycled pid must not be hit).
        let mut killed = Vec::new();
        for p in &state.processes {
            if alive(p.pid) && cmdline(p.pid).contains(&marker) {
                kill(p.pid, nix::sys::signal::Signal::SIGKILL);
                killed.push(p.pid);
            }
        }
        let start = Instant::now();
        while killed.iter().any(|p| alive(*p)) && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for n in &state.nodes {
            netns::delete(&n.netns).await?;
        }
        for p in &state.pods {
            netns::delete(&p.netns).await?;
        }
    }
    // Anything else with the lab's prefix (e.g. a crash before the state
    // file recorded it).
    for name in netns::list(&format!("{PREFIX}-")) {
        netns::delete(&name).await?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}

/// `lab status`.
pub async fn status(common: Common) -> Result<()> {
    let dir = abs(&common.dir);
    let st = LabState::load(&dir.join("state.json"))?;
    let mut out = std::io::stdout().lock();
    let up = st.supervisor_pid.is_some_and(alive);
    writeln!(
        out,
        "lab {} (supervisor {:?}, {})",
        st.prefix,
        st.supervisor_pid,
        if up {
            "running"
        } else {
            "NOT running: run `cargo xtask lab down`"
        }
    )?;
    writeln!(
        out,
        "kubeconfig: {}\napi server: {}\narm: {}",
        st.kubeconfig.display(),
        st.api_url,
        st.arm_endpoint
    )?;
    writeln!(out, "\nNODE       NETNS            IPV4         IPV6")?;
    for n in &st.nodes {
        writeln!(
            out,
            "{:<10} {:<16} {:<12} {}",
            n.name,
            n.netns,
            n.ipv4,
            n.ipv6.map(|i| i.to_string()).unwrap_or_default()
        )?;
    }
    writeln!(
        out,
        "\nROUTE                                    PREFIX               NEXT HOP"
    )?;
    for r in &st.routes {
        writeln!(out, "{:<40} {:<20} {}", r.name, r.prefix, r.next_hop)?;
    }
    writeln!(out, "\nPOD                  NODE       IPS")?;
    for p in &st.pods {
        let ips: Vec<String> = p.ips.iter().map(ToString::to_string).collect();
        writeln!(out, "{:<20} {:<10} {}", p.key, p.node, ips.join(","))?;
    }
    writeln!(out, "\nPROCESS                  PID      STATE")?;
    for p in &st.processes {
        writeln!(
            out,
            "{:<24} {:<8} {}",
            p.what,
            p.pid,
            if alive(p.pid) { "running" } else { "gone" }
        )?;
    }
    Ok(())
}

/// `lab exec NS/POD -- CMD`: returns the command's exit code.
pub async fn exec(args: ExecArgs) -> Result<i32> {
    require_root()?;
    let st = LabState::load(&abs(&args.common.dir).join("state.json"))?;
    let pod = st
        .pod(&args.pod)
        .with_context(|| format!("no running pod {}; see `cargo xtask lab status`", args.pod))?;
    let status = netns::command_in(&Netns::existing(&pod.netns).path(), &args.command[0])
        .args(&args.command[1..])
        .status()
        .await
        .with_context(|| format!("cannot run {:?}", args.command[0]))?;
    Ok(status.code().unwrap_or(1))
}

/// `lab probe`: 0 connected, 1 refused or timed out, 2 usage or lab error.
pub async fn probe(args: ProbeArgs) -> i32 {
    match probe_inner(&args).await {
        Ok(outcome) => {
            let _ = writeln!(
                std::io::stdout(),
                "{} -> {}:{}/{}: {outcome}",
                args.pod,
                args.host,
                args.port,
                args.protocol
            );
            match outcome {
                traffic::Outcome::Connected { .. } => 0,
                traffic::Outcome::Refused | traffic::Outcome::Timeout => 1,
                traffic::Outcome::Error(_) => 2,
            }
        }
        Err(e) => {
            eprintln!("lab probe: {e:#}");
            2
        }
    }
}

async fn probe_inner(args: &ProbeArgs) -> Result<traffic::Outcome> {
    require_root()?;
    let st = LabState::load(&abs(&args.common.dir).join("state.json"))?;
    let pod = st
        .pod(&args.pod)
        .with_context(|| format!("no running pod {}; see `cargo xtask lab status`", args.pod))?;
    let ip: IpAddr = match args.host.parse() {
        Ok(ip) => ip,
        Err(_) => *st
            .pod(&args.host)
            .and_then(|p| p.ips.first())
            .with_context(|| format!("{} is neither an IP address nor a running pod", args.host))?,
    };
    let target = SocketAddr::new(ip, args.port);
    let protocol = args.protocol;
    let timeout = Duration::from_millis(args.timeout_ms);
    let path = Netns::existing(&pod.netns).path();
    let outcome = tokio::task::spawn_blocking(move || {
        netns::in_netns(&path, move || traffic::probe(target, protocol, timeout))
    })
    .await??;
    Ok(outcome)
}

/// `lab demo`: up → demo → report → down in this process. Fails if any
/// expectation is not met.
pub async fn demo(args: UpArgs) -> Result<bool> {
    require_root()?;
    let dir = abs(&args.common.dir);
    if let Ok(st) = LabState::load(&dir.join("state.json"))
        && st.supervisor_pid.is_some_and(alive)
    {
        bail!("a lab is already up; run `cargo xtask lab down` first");
    }
    down_dir(&dir).await?;
    let config = config(&args)?;
    let bins = config
        .bin_dir
        .canonicalize()
        .unwrap_or(config.bin_dir.clone());
    let lab = Lab::start(config, &progress).await?;
    let rec = demo::run(&lab).await;
    let report = demo::report(&lab, &rec).await;
    let _ = std::io::stdout().write_all(report.as_bytes());
    progress("tearing down");
    let logs = dir.join("logs");
    let kept = std::env::temp_dir().join("underlay-lab-logs");
    if !rec.ok() {
        // Keep the logs of a failed run for diagnosis.
        let _ = std::fs::remove_dir_all(&kept);
        let _ = copy_dir(&logs, &kept);
        eprintln!("lab: logs of the failed run kept in {}", kept.display());
    }
    lab.shutdown().await?;
    down_dir(&dir).await?;
    // Down means gone: no namespace, process, chain, set or link remains.
    if let Err(e) = crate::leftovers::check(PREFIX, &bins) {
        eprintln!("lab: {e:#}");
        return Ok(false);
    }
    eprintln!("lab: nothing left behind (namespaces, processes, chains, ipsets, links)");
    Ok(rec.ok())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)?.flatten() {
        let _ = std::fs::copy(e.path(), to.join(e.file_name()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_requests_are_one_json_object_with_an_op() {
        let add = ControlRequest::AddNode {
            node: "node-9".into(),
            timeout_secs: 60,
        };
        let text = serde_json::to_string(&add).unwrap();
        assert_eq!(
            text,
            r#"{"op":"add-node","node":"node-9","timeout_secs":60}"#
        );
        assert_eq!(serde_json::from_str::<ControlRequest>(&text).unwrap(), add);
        for bad in [
            r#"{"op":"reboot","node":"n"}"#,
            r#"{"node":"n"}"#,
            "not json",
        ] {
            assert!(
                serde_json::from_str::<ControlRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }
}

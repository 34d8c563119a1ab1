//! Attach, Detach and GC racing each other over the agent's real unix
//! socket, each plugin call on its own connection as a plugin process
//! makes it, with a hook that stalls on demand: an Attach the plugin gave
//! up on is not leaked, GC never releases an attachment whose plugin is
//! still wiring it, and a storm of ADD/DEL/GC with plugin timeouts hands
//! no address out twice and leaves nothing behind.

use clap::Parser;
use futures::future::BoxFuture;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use underlay_agent::{Args, EndpointHook, EndpointInfo, HookError};
use underlay_proto::v1;

mod support;
use support::wait_for;

/// The plugin's call timeout in these tests.
const PLUGIN_TIMEOUT: Duration = Duration::from_millis(300);

/// Attaches of pods named `stall-*` never finish; `slow-*` finish after the
/// plugin's timeout; others after a small pseudo-random delay.
#[derive(Default)]
struct StallingHook {
    seed: AtomicU64,
    /// Endpoints whose attach finished and that were not detached since.
    attached: Mutex<BTreeSet<String>>,
}

impl StallingHook {
    fn jitter(&self) -> Duration {
        let x = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        Duration::from_micros((x >> 40) % 3000)
    }
}

impl EndpointHook for StallingHook {
    fn attached<'a>(&'a self, ep: &'a EndpointInfo) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move {
            if ep.pod_name.starts_with("stall-") {
                std::future::pending::<()>().await;
            } else if ep.pod_name.starts_with("slow-") {
                tokio::time::sleep(PLUGIN_TIMEOUT * 2).await;
            } else {
                tokio::time::sleep(self.jitter()).await;
            }
            self.attached.lock().unwrap().insert(ep.key.to_string());
            Ok(())
        })
    }
    fn detached<'a>(&'a self, ep: &'a EndpointInfo) -> BoxFuture<'a, ()> {
        self.attached.lock().unwrap().remove(&ep.key.to_string());
        Box::pin(async {})
    }
    fn restored<'a>(&'a self, _eps: &'a [EndpointInfo]) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async { Ok(()) })
    }
    fn status(&self) -> Option<v1::PolicyStatus> {
        None
    }
}

/// The agent, in this process, on a socket in a temporary directory.
struct Agent {
    dir: tempfile::TempDir,
    hook: Arc<StallingHook>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    async fn start(cidr: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let args = Args::try_parse_from([
            "underlay-agent",
            "--node-name",
            "races",
            "--pod-cidr",
            cidr,
            "--socket",
            socket.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
            "--metrics-addr",
            "off",
            "--health-addr",
            "off",
            "--policy=false",
        ])
        .unwrap();
        let hook = Arc::new(StallingHook::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let h: Arc<dyn EndpointHook> = hook.clone();
        let task = tokio::spawn(underlay_agent::run_until(
            args,
            move |_| Ok(h),
            async move {
                let _ = stopped.await;
            },
        ));
        let agent = Agent {
            dir,
            hook,
            stop: Some(stop),
            task,
        };
        wait_for("the agent to be ready", async || {
            agent.status().await.is_some_and(|s| s.ready)
        })
        .await;
        agent
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// A new connection, as a plugin process opens one.
    async fn plugin(&self) -> Plugin {
        Plugin(connect(&self.socket()).await)
    }

    async fn status(&self) -> Option<v1::StatusResponse> {
        let mut c = support::try_client(&self.socket()).await.ok()?;
        c.status(v1::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn connect(socket: &Path) -> v1::agent_client::AgentClient<tonic::transport::Channel> {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://agent")
        .timeout(PLUGIN_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to the agent");
    v1::agent_client::AgentClient::new(channel)
}

/// One plugin process's connection; dropping it ends the process.
struct Plugin(v1::agent_client::AgentClient<tonic::transport::Channel>);

fn key(id: &str) -> v1::AttachmentKey {
    v1::AttachmentKey {
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

impl Plugin {
    async fn attach(&mut self, id: &str, pod: &str) -> Result<Vec<String>, tonic::Status> {
        let r = self
            .0
            .attach(v1::AttachRequest {
                key: Some(key(id)),
                pod: Some(v1::PodRef {
                    namespace: "ns".into(),
                    name: pod.into(),
                    ..Default::default()
                }),
                host_interface: format!("udl{id}"),
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().ips.into_iter().map(|i| i.address).collect())
    }

    async fn detach(&mut self, id: &str) -> Result<bool, tonic::Status> {
        let r = self
            .0
            .detach(v1::DetachRequest {
                key: Some(key(id)),
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner().released)
    }

    async fn gc(&mut self, valid: &[String]) -> Result<Vec<String>, tonic::Status> {
        let r = self
            .0
            .gc(v1::GcRequest {
                valid_attachments: valid.iter().map(|id| key(id)).collect(),
            })
            .await?;
        Ok(r.into_inner()
            .released
            .into_iter()
            .map(|k| k.container_id)
            .collect())
    }
}

/// GC with no valid attachment, repeated (bounded) until it releases one.
async fn gc_until_released(agent: &Agent) -> Vec<String> {
    let mut gc = agent.plugin().await;
    let mut released = Vec::new();
    wait_for("GC to release an attachment", async || {
        released.extend(gc.gc(&[]).await.unwrap());
        !released.is_empty()
    })
    .await;
    released
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_the_plugin_gave_up_on_is_released_by_gc() {
    let agent = Agent::start("10.244.30.0/28").await;
    let mut plugin = agent.plugin().await;
    let err = plugin.attach("c1", "stall-a").await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    drop(plugin);
    // The runtime no longer knows the sandbox: once the agent has noticed
    // the call was abandoned, GC reclaims its address.
    assert_eq!(gc_until_released(&agent).await, ["c1"]);
    let st = agent.status().await.unwrap();
    assert_eq!(st.endpoints, 0);
    assert_eq!(st.pools[0].allocated, 0, "{:?}", st.pools);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_an_attachment_while_its_plugin_is_still_wiring() {
    let agent = Agent::start("10.244.31.0/28").await;
    // ADD answered; the plugin is still wiring the veth (its connection
    // is open) and the runtime has not listed the sandbox yet.
    let mut add = agent.plugin().await;
    let ips = add.attach("c1", "web").await.unwrap();
    let released = agent.plugin().await.gc(&[]).await.unwrap();
    assert!(released.is_empty(), "released {released:?} mid-ADD");
    // The plugin is done (its process exits): GC may reclaim it now.
    drop(add);
    assert_eq!(gc_until_released(&agent).await, ["c1"]);
    // Its address is free again and is the only one in use by nobody.
    assert_eq!(agent.status().await.unwrap().pools[0].allocated, 0);
    assert_eq!(ips.len(), 1);
    agent.stop().await;
}

/// What the runtime and the kernel know while the storm runs.
#[derive(Default)]
struct World {
    /// The runtime's attachments (cached once ADD returned).
    cache: HashSet<String>,
    /// Attachments whose Attach answered and whose plugin is wiring them.
    wiring: HashSet<String>,
    /// Pod addresses wired in the kernel, by address.
    wired: HashMap<String, String>,
    problems: Vec<String>,
}

/// The runtime's bookkeeping: GC lists the valid attachments and calls the
/// plugin without an ADD completing in between (writer); an ADD completes
/// (reader) by caching its result before its plugin process ends.
type Books = tokio::sync::RwLock<()>;

async fn plugin_add(
    agent: &Agent,
    books: &Books,
    world: &Mutex<World>,
    id: &str,
    pod: &str,
) -> bool {
    let mut plugin = agent.plugin().await;
    let Ok(ips) = plugin.attach(id, pod).await else {
        return false;
    };
    world.lock().unwrap().wiring.insert(id.to_string());
    // Wiring takes a moment.
    tokio::time::sleep(Duration::from_micros(500)).await;
    let _books = books.read().await;
    {
        let mut w = world.lock().unwrap();
        for ip in ips {
            if let Some(other) = w.wired.insert(ip.clone(), id.to_string()) {
                w.problems
                    .push(format!("{ip} handed to {id} while {other} has it"));
            }
        }
        w.wiring.remove(id);
        w.cache.insert(id.to_string());
    }
    drop(plugin);
    true
}

async fn plugin_del(agent: &Agent, world: &Mutex<World>, id: &str) {
    {
        let mut w = world.lock().unwrap();
        w.wired.retain(|_, owner| owner != id);
        w.cache.remove(id);
    }
    let mut plugin = agent.plugin().await;
    plugin.detach(id).await.expect("detach");
}

async fn runtime_gc(agent: &Agent, books: &Books, world: &Mutex<World>) {
    let _books = books.write().await;
    let valid: Vec<String> = world.lock().unwrap().cache.iter().cloned().collect();
    let released = agent.plugin().await.gc(&valid).await.expect("gc");
    let mut w = world.lock().unwrap();
    for id in released {
        if w.wiring.contains(&id) {
            w.problems
                .push(format!("GC released {id} while its plugin wires it"));
        }
        if w.wired.values().any(|o| *o == id) {
            w.problems.push(format!("GC released {id}, which is wired"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_dels_and_gcs_racing_hand_out_no_address_twice_and_leak_nothing() {
    let agent = Arc::new(Agent::start("10.244.32.0/27").await);
    let world = Arc::new(Mutex::new(World::default()));
    let running = Arc::new(AtomicBool::new(true));
    let books = Arc::new(Books::default());
    let gc = {
        let (agent, world, running, books) =
            (agent.clone(), world.clone(), running.clone(), books.clone());
        tokio::spawn(async move {
            let mut rounds = 0;
            while running.load(Ordering::SeqCst) || rounds == 0 {
                runtime_gc(&agent, &books, &world).await;
                rounds += 1;
                tokio::task::yield_now().await;
            }
            rounds
        })
    };
    let workers: Vec<_> = (0..12)
        .map(|w| {
            let (agent, world, books) = (agent.clone(), world.clone(), books.clone());
            tokio::spawn(async move {
                for round in 0..12 {
                    let id = format!("w{w}r{round}");
                    // Every fifth ADD outlasts the plugin's timeout.
                    let pod = if (w + round) % 5 == 0 { "slow-p" } else { "p" };
                    let added = plugin_add(&agent, &books, &world, &id, pod).await;
                    // A failed ADD is followed by DEL, as runtimes do; a
                    // good one lives a little, then is deleted.
                    if added {
                        tokio::task::yield_now().await;
                    }
                    plugin_del(&agent, &world, &id).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    running.store(false, Ordering::SeqCst);
    let rounds = gc.await.unwrap();
    let problems = std::mem::take(&mut world.lock().unwrap().problems);
    assert!(problems.is_empty(), "{problems:#?}");
    // Every sandbox was deleted: nothing is left anywhere, even before a
    // final GC, once the abandoned attaches have ended.
    wait_for("abandoned attaches to end", async || {
        agent.hook.attached.lock().unwrap().is_empty()
    })
    .await;
    let st = agent.status().await.unwrap();
    assert_eq!(st.endpoints, 0, "after {rounds} GC rounds");
    assert_eq!(st.pools[0].allocated, 0, "{:?}", st.pools);
    if let Ok(agent) = Arc::try_unwrap(agent) {
        agent.stop().await;
    }
}

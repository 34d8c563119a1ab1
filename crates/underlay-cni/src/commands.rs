//! The CNI commands: what ADD, DEL, CHECK, GC and STATUS do with the agent
//! and the dataplane, including rollback, written against the [`Agent`] and
//! [`Dataplane`] traits so the logic is tested with recording fakes.

use crate::agent::Agent;
use crate::config::NetConf;
use crate::dataplane::{Dataplane, DataplaneError, PodLink, PodRoute, Wired};
use crate::env::CniEnv;
use crate::error::{CniError, Result, code};
use crate::names;
use crate::types::{CniResult, Interface, IpEntry, IpPrefix, RouteEntry, Version};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::Path;
use underlay_proto::v1;

/// The MTU used when neither the configuration nor the agent sets one.
pub const DEFAULT_MTU: u32 = 1500;

fn key(env: &CniEnv) -> v1::AttachmentKey {
    v1::AttachmentKey {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

fn pod_ref(env: &CniEnv) -> v1::PodRef {
    v1::PodRef {
        namespace: env.pod.namespace.clone(),
        name: env.pod.name.clone(),
        uid: env.pod.uid.clone(),
        infra_container_id: env.pod.infra_container_id.clone(),
    }
}

fn netns_str(env: &CniEnv) -> String {
    env.netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The host-side interface name for this invocation.
pub fn host_interface(env: &CniEnv) -> String {
    names::host_interface(
        &env.pod.namespace,
        &env.pod.name,
        &env.container_id,
        &env.ifname,
    )
}

/// Maps a dataplane failure to a CNI error.
pub fn dataplane_error(e: DataplaneError) -> CniError {
    let code = match &e {
        DataplaneError::NetnsNotFound(_) | DataplaneError::NotANetns { .. } => {
            code::NETNS_NOT_FOUND
        }
        DataplaneError::InterfaceExists { .. } => code::INTERFACE_EXISTS,
        DataplaneError::Mismatch(_) => code::CHECK_FAILED,
        DataplaneError::Netlink { .. } | DataplaneError::Io { .. } => code::DATAPLANE,
    };
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    CniError::new(code, msg)
}

fn bad_agent_answer(what: impl std::fmt::Display) -> CniError {
    CniError::new(
        code::AGENT_FAILED,
        format!(
            "the underlay agent answered with {what}; check that the agent and plugin versions match"
        ),
    )
}

/// The pod's addresses and routes from the agent's answer.
fn parse_ips(ips: &[v1::IpConfig]) -> Result<Vec<(IpPrefix, Option<IpAddr>)>> {
    ips.iter()
        .map(|ip| {
            let addr: IpPrefix = ip
                .address
                .parse()
                .map_err(|e| bad_agent_answer(format!("a bad address: {e}")))?;
            let gw = if ip.gateway.is_empty() {
                None
            } else {
                Some(
                    ip.gateway
                        .parse::<IpAddr>()
                        .map_err(|_| bad_agent_answer(format!("a bad gateway {:?}", ip.gateway)))?,
                )
            };
            Ok((addr, gw))
        })
        .collect()
}

fn parse_routes(routes: &[v1::Route]) -> Result<Vec<PodRoute>> {
    routes
        .iter()
        .map(|r| {
            let dst: IpPrefix = r
                .destination
                .parse()
                .map_err(|e| bad_agent_answer(format!("a bad route: {e}")))?;
            let gw = if r.gateway.is_empty() {
                None
            } else {
                Some(r.gateway.parse::<IpAddr>().map_err(|_| {
                    bad_agent_answer(format!("a bad route gateway {:?}", r.gateway))
                })?)
            };
            Ok(PodRoute { dst, gw })
        })
        .collect()
}

/// ADD: attach at the agent, wire the pod, print the result. Any failure
/// after the agent answered undoes both the kernel state and the agent's.
pub async fn add<A: Agent, D: Dataplane>(
    env: &CniEnv,
    conf: &NetConf,
    agent: &A,
    dp: &D,
) -> Result<Value> {
    let netns = require_netns(env, "ADD")?;
    refuse_existing_interface(dp, netns, &env.ifname).await?;
    let (attached, host_ifname) = attach(env, conf, agent).await?;
    tracing::debug!(container_id = %env.container_id, host_interface = %host_ifname, "attached at the agent");
    let (pod, wired) = match wire(env, conf, dp, netns, host_ifname, &attached).await {
        Ok(done) => done,
        Err(e) => {
            detach_after_failed_add(env, agent).await;
            return Err(e);
        }
    };
    let result = pod.into_result(wired);
    let result = match &conf.prev_result {
        Some(prev) => prev.clone().chain(result),
        None => result,
    };
    Ok(result.to_value(conf.version))
}

/// `CNI_NETNS`, which `command` cannot do without.
fn require_netns<'e>(env: &'e CniEnv, command: &str) -> Result<&'e Path> {
    env.netns.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS is required for {command}"),
        )
    })
}

/// Refuses an ADD whose interface already exists in the pod's namespace,
/// before the agent is asked for anything.
async fn refuse_existing_interface<D: Dataplane>(dp: &D, netns: &Path, ifname: &str) -> Result<()> {
    if dp
        .has_interface(netns, ifname)
        .await
        .map_err(dataplane_error)?
    {
        return Err(dataplane_error(DataplaneError::InterfaceExists {
            netns: netns.into(),
            ifname: ifname.to_string(),
        }));
    }
    Ok(())
}

/// The pod as the agent's Attach answer describes it: the link to wire,
/// and each address with its gateway for the result.
struct AttachedPod {
    link: PodLink,
    ips: Vec<(IpPrefix, Option<IpAddr>)>,
}

impl AttachedPod {
    /// Reads the agent's answer; the configured MTU wins over the agent's.
    fn from_answer(
        env: &CniEnv,
        conf: &NetConf,
        netns: &Path,
        host_ifname: String,
        attached: &v1::AttachResponse,
    ) -> Result<Self> {
        let ips = parse_ips(&attached.ips)?;
        if ips.is_empty() {
            return Err(bad_agent_answer("no address"));
        }
        let routes = parse_routes(&attached.routes)?;
        let mtu = conf.mtu.unwrap_or(if attached.mtu == 0 {
            DEFAULT_MTU
        } else {
            attached.mtu
        });
        let link = PodLink {
            netns: netns.into(),
            ifname: env.ifname.clone(),
            host_ifname,
            container_id: env.container_id.clone(),
            mtu,
            addresses: ips.iter().map(|(a, _)| *a).collect(),
            routes,
        };
        Ok(Self { link, ips })
    }

    /// The CNI result of this plugin alone: the host and pod interfaces,
    /// the pod's addresses (on the pod interface) and routes.
    fn into_result(self, wired: Wired) -> CniResult {
        let Self { link, ips } = self;
        CniResult {
            interfaces: vec![
                Interface {
                    name: link.host_ifname,
                    mac: wired.host_mac,
                    mtu: Some(link.mtu),
                    ..Default::default()
                },
                Interface {
                    name: link.ifname,
                    mac: wired.pod_mac,
                    mtu: Some(link.mtu),
                    sandbox: Some(link.netns.display().to_string()),
                    ..Default::default()
                },
            ],
            ips: ips
                .into_iter()
                .map(|(address, gateway)| IpEntry {
                    address,
                    gateway,
                    interface: Some(1),
                })
                .collect(),
            routes: link
                .routes
                .into_iter()
                .map(|r| RouteEntry {
                    dst: r.dst,
                    gw: r.gw,
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                })
                .collect(),
            dns: None,
        }
    }
}

/// Wires the pod the agent's answer describes. A failed setup removes what
/// it created, except an interface that existed before (not ours to delete).
async fn wire<D: Dataplane>(
    env: &CniEnv,
    conf: &NetConf,
    dp: &D,
    netns: &Path,
    host_ifname: String,
    attached: &v1::AttachResponse,
) -> Result<(AttachedPod, Wired)> {
    let pod = AttachedPod::from_answer(env, conf, netns, host_ifname, attached)?;
    match dp.setup(&pod.link).await {
        Ok(wired) => Ok((pod, wired)),
        Err(e) => {
            let exists = matches!(e, DataplaneError::InterfaceExists { .. });
            if !exists
                && let Err(te) = dp
                    .teardown(
                        Some(netns),
                        &env.ifname,
                        &pod.link.host_ifname,
                        &env.container_id,
                    )
                    .await
            {
                tracing::warn!(error = %te, "rollback of the pod's interfaces failed");
            }
            Err(dataplane_error(e))
        }
    }
}

/// Releases the attachment at the agent after ADD failed; a failure is
/// only logged, the agent's GC reclaims the address.
async fn detach_after_failed_add<A: Agent>(env: &CniEnv, agent: &A) {
    if let Err(de) = agent
        .detach(v1::DetachRequest {
            key: Some(key(env)),
            netns: netns_str(env),
            pod: Some(pod_ref(env)),
        })
        .await
    {
        tracing::warn!(error = %de, "rollback at the agent failed; the agent's gc reclaims the address");
    }
}

/// Attach at the agent under the first host interface name it grants; it
/// refuses names another pod holds. Returns the granted name.
async fn attach<A: Agent>(
    env: &CniEnv,
    conf: &NetConf,
    agent: &A,
) -> Result<(v1::AttachResponse, String)> {
    let mut attempt = 0;
    loop {
        let candidate = names::host_interface_candidate(
            &env.pod.namespace,
            &env.pod.name,
            &env.container_id,
            &env.ifname,
            attempt,
        );
        let answer = agent
            .attach(v1::AttachRequest {
                key: Some(key(env)),
                netns: netns_str(env),
                pod: Some(pod_ref(env)),
                host_interface: candidate.clone(),
                network_name: conf.name.clone(),
                mtu: conf.mtu,
            })
            .await;
        match answer {
            Ok(attached) => {
                let name = if attached.host_interface.is_empty() {
                    candidate
                } else {
                    attached.host_interface.clone()
                };
                return Ok((attached, name));
            }
            Err(e) if e.code == code::INTERFACE_EXISTS && attempt + 1 < names::ATTEMPTS => {
                tracing::info!(host_interface = %candidate, reason = %e.msg, "host interface name taken, trying the next");
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// DEL: remove the pod's interfaces (gone is fine), then release at the
/// agent. Addresses are released only after the interfaces are gone, so an
/// address never serves two pods at once.
pub async fn del<A: Agent, D: Dataplane>(env: &CniEnv, agent: &A, dp: &D) -> Result<()> {
    let host_ifname = host_interface(env);
    let local = dp
        .teardown(
            env.netns.as_deref(),
            &env.ifname,
            &host_ifname,
            &env.container_id,
        )
        .await;
    let detached = agent
        .detach(v1::DetachRequest {
            key: Some(key(env)),
            netns: netns_str(env),
            pod: Some(pod_ref(env)),
        })
        .await?;
    if !detached.host_interface.is_empty() && detached.host_interface != host_ifname {
        // Recorded under another name (e.g. CNI_ARGS differ from ADD's).
        dp.remove_host_interface(&detached.host_interface, &env.container_id)
            .await
            .map_err(dataplane_error)?;
    }
    local.map_err(dataplane_error)
}

/// CHECK: the prevResult, the agent's record and the kernel must agree.
pub async fn check<A: Agent, D: Dataplane>(
    env: &CniEnv,
    conf: &NetConf,
    agent: &A,
    dp: &D,
) -> Result<()> {
    let netns = require_netns(env, "CHECK")?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult in the network configuration: pass the result of ADD",
        )
    })?;
    let expected = prev_addresses(prev, env, netns)?;
    let record = agent
        .check(v1::CheckRequest {
            key: Some(key(env)),
            netns: netns_str(env),
            pod: Some(pod_ref(env)),
        })
        .await?;
    let gateways = recorded_gateways(&record, &expected)?;
    let routes = prev
        .routes
        .iter()
        .filter(|r| gateways.contains(&r.gw))
        .map(|r| PodRoute {
            dst: r.dst,
            gw: r.gw,
        })
        .collect();
    let host_ifname = if record.host_interface.is_empty() {
        host_interface(env)
    } else {
        record.host_interface.clone()
    };
    dp.check(&PodLink {
        netns: netns.into(),
        ifname: env.ifname.clone(),
        host_ifname,
        container_id: env.container_id.clone(),
        mtu: 0,
        addresses: expected,
        routes,
    })
    .await
    .map_err(dataplane_error)
}

/// The addresses prevResult gives this invocation's interface, sorted.
fn prev_addresses(prev: &CniResult, env: &CniEnv, netns: &Path) -> Result<Vec<IpPrefix>> {
    let index = prev
        .interfaces
        .iter()
        .position(|i| {
            i.name == env.ifname && i.sandbox.as_deref().is_none_or(|s| Path::new(s) == netns)
        })
        .ok_or_else(|| {
            CniError::new(
                code::CHECK_FAILED,
                format!(
                    "prevResult has no interface {} in {}",
                    env.ifname,
                    netns.display()
                ),
            )
        })?;
    let mut expected: Vec<IpPrefix> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .map(|ip| ip.address)
        .collect();
    expected.sort();
    Ok(expected)
}

/// Checks that the agent records exactly the `expected` addresses; returns
/// the gateways it records for them.
fn recorded_gateways(
    record: &v1::CheckResponse,
    expected: &[IpPrefix],
) -> Result<Vec<Option<IpAddr>>> {
    let ips = parse_ips(&record.ips)?;
    let mut recorded: Vec<IpPrefix> = ips.iter().map(|(a, _)| *a).collect();
    recorded.sort();
    if recorded != expected {
        return Err(CniError::new(
            code::CHECK_FAILED,
            format!("the agent records addresses {recorded:?} but prevResult has {expected:?}"),
        ));
    }
    Ok(ips
        .into_iter()
        .map(|(_, g)| g)
        .filter(Option::is_some)
        .collect())
}

/// GC: the agent releases every attachment not in the valid list; the
/// plugin deletes their host interfaces.
pub async fn gc<A: Agent, D: Dataplane>(conf: &NetConf, agent: &A, dp: &D) -> Result<()> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments in the network configuration (an empty list releases everything)",
        )
    })?;
    let resp = agent
        .gc(v1::GcRequest {
            valid_attachments: valid
                .iter()
                .map(|a| v1::AttachmentKey {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                })
                .collect(),
        })
        .await?;
    let mut first_error = None;
    for (released, host_ifname) in resp.released.iter().zip(&resp.host_interfaces) {
        if host_ifname.is_empty() {
            continue;
        }
        if let Err(e) = dp
            .remove_host_interface(host_ifname, &released.container_id)
            .await
        {
            tracing::warn!(host_interface = %host_ifname, error = %e, "gc could not delete a host interface");
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(dataplane_error(e)),
        None => Ok(()),
    }
}

/// STATUS: ready means the agent can serve ADD.
pub async fn status<A: Agent>(agent: &A) -> Result<()> {
    let resp = agent.status().await.map_err(|e| {
        CniError::new(
            code::NOT_AVAILABLE,
            format!("the plugin cannot add pods: {}", e.msg),
        )
        .with_details(e.details)
    })?;
    if resp.ready {
        return Ok(());
    }
    let limbo = resp
        .policy
        .as_ref()
        .is_some_and(|p| !p.last_error.is_empty());
    Err(CniError::new(
        if limbo {
            code::NOT_AVAILABLE_LIMBO
        } else {
            code::NOT_AVAILABLE
        },
        format!("the underlay agent is not ready: {}", resp.reason),
    ))
}

/// VERSION: the versions this plugin speaks.
pub fn version() -> Value {
    json!({
        "cniVersion": crate::types::LATEST,
        "supportedVersions": crate::types::SUPPORTED_VERSIONS,
    })
}

/// Whether `conf.version` allows `command` (STATUS and GC are 1.1.0).
pub fn require_version(command: crate::env::Command, version: Version) -> Result<()> {
    use crate::env::Command::*;
    if matches!(command, Status | Gc) && version < crate::types::Version::V1_1_0 {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{} needs cniVersion 1.1.0, the configuration has {}",
                command.as_str(),
                version.as_str()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::{Call, FakeDataplane};
    use std::sync::Mutex;

    /// A recording agent with scripted answers.
    #[derive(Default)]
    struct FakeAgent {
        calls: Mutex<Vec<String>>,
        attach_error: Option<CniError>,
        status: Option<v1::StatusResponse>,
    }

    impl Agent for FakeAgent {
        async fn attach(&self, _r: v1::AttachRequest) -> Result<v1::AttachResponse> {
            self.calls.lock().unwrap().push("attach".into());
            if let Some(e) = &self.attach_error {
                return Err(e.clone());
            }
            Ok(v1::AttachResponse {
                ips: vec![v1::IpConfig {
                    family: 1,
                    address: "10.244.0.5/32".into(),
                    gateway: "169.254.1.1".into(),
                }],
                routes: vec![v1::Route {
                    destination: "0.0.0.0/0".into(),
                    gateway: "169.254.1.1".into(),
                }],
                mtu: 1450,
                host_interface: String::new(),
                policy_programmed: true,
            })
        }
        async fn detach(&self, _r: v1::DetachRequest) -> Result<v1::DetachResponse> {
            self.calls.lock().unwrap().push("detach".into());
            Ok(v1::DetachResponse::default())
        }
        async fn check(&self, _r: v1::CheckRequest) -> Result<v1::CheckResponse> {
            Ok(v1::CheckResponse::default())
        }
        async fn gc(&self, _r: v1::GcRequest) -> Result<v1::GcResponse> {
            Ok(v1::GcResponse::default())
        }
        async fn status(&self) -> Result<v1::StatusResponse> {
            self.status
                .clone()
                .ok_or_else(|| CniError::new(code::TRY_AGAIN_LATER, "down"))
        }
    }

    fn env() -> CniEnv {
        crate::env::parse(|k| {
            Some(
                match k {
                    "CNI_COMMAND" => "ADD",
                    "CNI_CONTAINERID" => "c1",
                    "CNI_NETNS" => "/run/netns/p",
                    "CNI_IFNAME" => "eth0",
                    "CNI_PATH" => "/opt/cni/bin",
                    "CNI_ARGS" => "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web",
                    _ => return None,
                }
                .to_string(),
            )
        })
        .unwrap()
    }

    fn conf() -> NetConf {
        crate::config::parse(br#"{"cniVersion":"1.1.0","name":"underlay","type":"underlay-cni"}"#)
            .unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn add_uses_the_agents_answer_and_mtu() {
        let agent = FakeAgent::default();
        let dp = FakeDataplane::default();
        let r = add(&env(), &conf(), &agent, &dp).await.unwrap();
        assert_eq!(r["ips"][0]["address"], "10.244.0.5/32");
        let Some(Call::Setup(link)) = dp.calls().into_iter().nth(1) else {
            panic!("{:?}", dp.calls())
        };
        assert_eq!(link.mtu, 1450);
        assert_eq!(
            link.host_ifname,
            names::host_interface("ns", "web", "c1", "eth0")
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_setup_rolls_back_the_kernel_and_the_agent() {
        let agent = FakeAgent::default();
        let dp = FakeDataplane {
            fail_setup: true,
            ..Default::default()
        };
        let err = add(&env(), &conf(), &agent, &dp).await.unwrap_err();
        assert_eq!(
            err.code,
            code::CHECK_FAILED,
            "the injected failure is a mismatch"
        );
        assert!(
            matches!(dp.calls().last(), Some(Call::Teardown(..))),
            "{:?}",
            dp.calls()
        );
        assert_eq!(*agent.calls.lock().unwrap(), ["attach", "detach"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_existing_interface_is_refused_before_the_agent_is_asked() {
        let agent = FakeAgent::default();
        let dp = FakeDataplane {
            existing: true,
            ..Default::default()
        };
        assert_eq!(
            add(&env(), &conf(), &agent, &dp).await.unwrap_err().code,
            code::INTERFACE_EXISTS
        );
        assert!(agent.calls.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn agent_failures_keep_their_codes_and_touch_nothing() {
        for (status, expect) in [
            (
                tonic::Status::failed_precondition("iptables-restore failed"),
                code::POLICY_FAILED,
            ),
            (
                tonic::Status::unavailable("policies not synced"),
                code::TRY_AGAIN_LATER,
            ),
            (
                tonic::Status::resource_exhausted("full"),
                code::POOL_EXHAUSTED,
            ),
        ] {
            let agent = FakeAgent {
                attach_error: Some(crate::agent::status_to_cni("Attach", &status)),
                ..Default::default()
            };
            let dp = FakeDataplane::default();
            let err = add(&env(), &conf(), &agent, &dp).await.unwrap_err();
            assert_eq!(err.code, expect, "{status:?}");
            assert!(!dp.calls().iter().any(|c| matches!(c, Call::Setup(_))));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn status_distinguishes_not_available_from_limbo() {
        let down = FakeAgent::default();
        assert_eq!(status(&down).await.unwrap_err().code, code::NOT_AVAILABLE);
        let waiting = FakeAgent {
            status: Some(v1::StatusResponse {
                ready: false,
                reason: "waiting for pod cidrs".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            status(&waiting).await.unwrap_err().code,
            code::NOT_AVAILABLE
        );
        let limbo = FakeAgent {
            status: Some(v1::StatusResponse {
                ready: false,
                reason: "policy dataplane failing".into(),
                policy: Some(v1::PolicyStatus {
                    last_error: "iptables-restore: exit 1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            status(&limbo).await.unwrap_err().code,
            code::NOT_AVAILABLE_LIMBO
        );
        let ready = FakeAgent {
            status: Some(v1::StatusResponse {
                ready: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        status(&ready).await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn del_tears_down_before_releasing() {
        let agent = FakeAgent::default();
        let dp = FakeDataplane::default();
        del(&env(), &agent, &dp).await.unwrap();
        assert!(matches!(dp.calls()[0], Call::Teardown(..)));
        assert_eq!(*agent.calls.lock().unwrap(), ["detach"]);
    }
}

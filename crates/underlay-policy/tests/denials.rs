//! Denial records from real packets, as root, in network namespaces these
//! tests create: the agent's NFLOG consumer reads the node namespace's
//! deny log, and a denied probe becomes a record naming the pod, the
//! direction, the flow and the policy; an allowed one does not. Then a
//! flood of denied datagrams, with the consumer's CPU time and the
//! records' memory bound printed.

mod support;

use futures::StreamExt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::lab::Lab;
use support::{Pid, Probe, load_world};
use underlay_lab::netns::require_root;
use underlay_policy::agent::{Options, PolicyAgent};
use underlay_policy::denials::Limits;
use underlay_policy::denials::consumer::THREAD_NAME;
use underlay_policy::metrics::Metrics;
use underlay_policy::model::{Direction, Family, Peer, PodKey, Policy, Protocol, Rule, Selector};
use underlay_policy::{CommandDataplane, Config, Engine};

const GROUP: u16 = 100;

fn pid(s: &str) -> Pid {
    Pid::all().into_iter().find(|p| p.is(s)).unwrap()
}

/// x/a accepts ingress only from pods `b` of its namespace.
fn only_b_to_a() -> Policy {
    let mut p = Policy::new("x", "only-b", Selector::labels([("pod", "a")]));
    p.ingress = vec![Rule::from(vec![Peer::pods(Selector::labels([(
        "pod", "b",
    )]))])];
    p
}

/// An agent for the lab's node logging every denial at `rate` and reading
/// them back, its policy programmed.
async fn agent(
    lab: &Lab,
    rate: &str,
    metrics: &Metrics,
    denial_limits: Limits,
) -> Arc<PolicyAgent<CommandDataplane>> {
    let config = Config {
        log_all: true,
        log_rate: rate.into(),
        nflog_group: GROUP,
        ..Config::default()
    };
    let mut e = Engine::new(
        CommandDataplane::in_netns(&lab.node),
        config,
        metrics.clone(),
    );
    e.change(load_world);
    e.change(|idx| idx.apply_policy(only_b_to_a()));
    let agent = PolicyAgent::new(
        e,
        None,
        Options {
            nflog_group: Some(GROUP),
            nflog_netns: Some(lab.node.clone()),
            denial_limits,
            ..Options::default()
        },
    );
    drop(agent.start());
    agent.sync_now(false).await.unwrap();
    agent
}

fn tcp80(src: &str, dst: &str) -> Probe {
    Probe {
        src: pid(src),
        dst: pid(dst),
        protocol: Protocol::Tcp,
        port: 80,
        family: Family::V4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_probe_becomes_a_denial_record_within_a_second() {
    if !require_root("a_denied_probe_becomes_a_denial_record_within_a_second") {
        return;
    }
    let lab = Lab::new("deny").await;
    let agent = agent(&lab, "10/second", &Metrics::default(), Limits::default()).await;
    let mut live = Box::pin(agent.denials(None, true));
    let allowed = tcp80("x/b", "x/a");
    assert_eq!(
        lab.probe_all(&[allowed], Duration::from_millis(500)).await,
        [true]
    );
    let denied = [tcp80("y/a", "x/a")];
    let sent = Instant::now();
    let probe = lab.probe_all(&denied, Duration::from_millis(300));
    let (reached, record) = tokio::join!(probe, async {
        tokio::time::timeout(Duration::from_secs(5), live.next()).await
    });
    let latency = sent.elapsed();
    assert_eq!(reached, [false]);
    let record = record
        .expect("no denial record within 5 s")
        .expect("stream ended");
    eprintln!("denied probe to denial record: {latency:?}");
    assert!(latency < Duration::from_secs(5), "{latency:?}");
    assert_eq!(record.direction, Direction::Ingress);
    assert_eq!(record.pod, PodKey::new("x", "a"));
    assert_eq!(record.src, pid("y/a").ip(Family::V4));
    assert_eq!(record.dst, pid("x/a").ip(Family::V4));
    assert_eq!((record.protocol, record.port), (6, 80));
    assert_eq!(record.policy, "networkpolicy/x/only-b");
    assert!(record.packets >= 1);
    // The allowed probe ran first: any record of it would have come first.
    let all: Vec<_> = agent.denials(None, false).collect().await;
    let from_b = pid("x/b").ip(Family::V4);
    assert!(all.iter().all(|d| d.src != from_b), "{all:?}");
    // Only x's records for a follower of namespace y: none.
    assert_eq!(agent.denials(Some("y".into()), false).count().await, 0);
}

/// The consumer thread's CPU time, from `/proc/self/task/*/stat`.
fn consumer_cpu() -> Duration {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != THREAD_NAME {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // after the `(comm)` field: state is field 3, utime 14, stime 15
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        total += fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    }
    Duration::from_millis(total * 1000 / ticks)
}

fn sample(m: &Metrics, name: &str) -> f64 {
    let mut registry = prometheus_client::registry::Registry::default();
    m.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends `count` UDP datagrams from `src` to `dst`, cycling through
/// `ports` destination ports; returns how long it took.
async fn flood(lab: &Lab, src: Pid, dst: IpAddr, count: usize, ports: u16) -> Duration {
    let task = lab.handle(src).spawn(async move {
        tokio::task::spawn_blocking(move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            let started = Instant::now();
            for i in 0..count {
                let port = 1000 + (i % usize::from(ports)) as u16;
                let _ = socket.send_to(b"denied", SocketAddr::new(dst, port));
            }
            started.elapsed()
        })
        .await
        .unwrap()
    });
    task.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_denied_packets_stays_within_the_caps() {
    if !require_root("a_flood_of_denied_packets_stays_within_the_caps") {
        return;
    }
    let lab = Lab::new("flood").await;
    let metrics = Metrics::default();
    // The kernel's limit at its highest (iptables allows 10000/s): the
    // consumer's own caps are under test.
    // Caps small enough for this flood to reach each of them.
    let small = Limits {
        ring: 300,
        keys_per_window: 1000,
        ..Limits::default()
    };
    let agent = agent(&lab, "10000/second", &metrics, small).await;
    let records = agent.denial_records();
    let limits = records.limits();
    let (round, ports) = (100_000, 6_000);
    let cpu_before = consumer_cpu();
    let (mut count, mut sent) = (0, Duration::ZERO);
    let (mut max_ring, mut max_keys) = (0, 0);
    // Rounds until both caps were reached (a loaded machine sends slower),
    // the records sampled while the datagrams fly.
    while count < 10 * round && (max_ring < limits.ring || max_keys < limits.keys_per_window) {
        let done = std::sync::atomic::AtomicBool::new(false);
        let sampler = async {
            let (mut ring, mut keys) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                ring = ring.max(records.recent_len());
                keys = keys.max(records.pending_keys());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ring, keys)
        };
        let sender = async {
            let took = flood(&lab, pid("y/a"), pid("x/a").ip(Family::V4), round, ports).await;
            // the last window's records
            tokio::time::sleep(limits.window * 2).await;
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            took
        };
        let (took, (ring, keys)) = tokio::join!(sender, sampler);
        (count, sent) = (count + round, sent + took);
        (max_ring, max_keys) = (max_ring.max(ring), max_keys.max(keys));
    }
    let cpu = consumer_cpu() - cpu_before;
    let denied = sample(&metrics, "underlay_policy_denied_packets_total");
    let dropped = sample(&metrics, "underlay_policy_denials_dropped_total");
    let malformed = sample(&metrics, "underlay_policy_nflog_malformed_total");
    eprintln!(
        "flood: {count} datagrams to {ports} ports sent in {sent:?}; consumer CPU {cpu:?}; \
         {denied} logged packets read, {dropped} dropped by caps or socket room, \
         {malformed} malformed; ring held at most {max_ring} records (cap {}), \
         a window at most {max_keys} keys (cap {})",
        limits.ring, limits.keys_per_window
    );
    assert_eq!(
        max_ring, limits.ring,
        "the ring fills up to its cap, no further"
    );
    assert_eq!(
        max_keys, limits.keys_per_window,
        "a window's keys stop at the cap"
    );
    assert!(denied > 1000.0, "the consumer read {denied} packets");
    assert!(dropped > 0.0, "{ports} keys per window went past the cap");
    assert_eq!(malformed, 0.0);
    // Generous: the consumer must not have spent more than the whole time.
    assert!(cpu < sent + Duration::from_secs(3), "{cpu:?}");
}

/// Audit mode on real packets: with x/a's policy audited, the probe it
/// would deny connects, and the agent records an audit denial for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audited_policy_drops_nothing_and_records_what_it_would_deny() {
    if !require_root("an_audited_policy_drops_nothing_and_records_what_it_would_deny") {
        return;
    }
    let lab = Lab::new("audit").await;
    let agent = agent(&lab, "10/second", &Metrics::default(), Limits::default()).await;
    let mut audited = only_b_to_a();
    audited.mode = underlay_policy::model::Mode::Audit;
    agent
        .engine()
        .lock()
        .await
        .change(|idx| idx.apply_policy(audited));
    agent.sync_now(false).await.unwrap();
    let mut live = Box::pin(agent.denials(None, true));
    let would_deny = [tcp80("y/a", "x/a")];
    let probe = lab.probe_all(&would_deny, Duration::from_millis(500));
    let (reached, record) = tokio::join!(probe, async {
        tokio::time::timeout(Duration::from_secs(5), live.next()).await
    });
    assert_eq!(reached, [true], "an audited policy dropped a packet");
    let record = record
        .expect("no audit record within 5 s")
        .expect("stream ended");
    assert!(record.audit, "{record:?}");
    assert_eq!(record.pod, PodKey::new("x", "a"));
    assert_eq!(record.src, pid("y/a").ip(Family::V4));
    assert!(
        record.policy.contains("networkpolicy/x/only-b (audit)"),
        "{record:?}"
    );
}

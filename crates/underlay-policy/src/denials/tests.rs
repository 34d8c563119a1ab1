use super::*;
use futures::StreamExt;
use std::time::UNIX_EPOCH;

fn packet(pod: &str, dir: Direction, port: u16, ms: u64) -> Packet {
    let (namespace, name) = pod.split_once('/').unwrap();
    Packet {
        direction: dir,
        pod: PodKey::new(namespace, name),
        src: "10.1.0.2".parse().unwrap(),
        dst: "10.2.0.3".parse().unwrap(),
        protocol: 17,
        port,
        time: UNIX_EPOCH + Duration::from_millis(ms),
        audit: false,
    }
}

fn batch(packets: Vec<Packet>) -> Batch {
    Batch {
        packets,
        malformed: 0,
    }
}

fn named(pod: &PodKey, dir: Direction, _ip: IpAddr) -> (PodKey, String) {
    let policy = format!("networkpolicy/{}/deny-{dir:?}", pod.namespace);
    (pod.clone(), policy)
}

fn limits() -> Limits {
    Limits {
        window: Duration::from_millis(500),
        ring: 3,
        keys_per_window: 2,
        records_per_second: 4,
    }
}

fn text(m: &Metrics) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    m.register(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
}

#[test]
fn packets_of_one_key_in_a_window_make_one_record() {
    let d = Denials::new(limits(), Metrics::default());
    let t0 = Instant::now();
    d.observe(
        batch(vec![packet("x/a", Direction::Ingress, 80, 1_000)]),
        t0,
    );
    d.observe(
        batch(vec![
            packet("x/a", Direction::Ingress, 80, 1_300),
            packet("x/a", Direction::Ingress, 80, 1_100),
            packet("x/a", Direction::Egress, 80, 1_200),
        ]),
        t0 + Duration::from_millis(100),
    );
    assert!(!d.due(t0 + Duration::from_millis(499)));
    assert!(d.due(t0 + Duration::from_millis(500)));
    assert_eq!(d.flush(t0 + Duration::from_millis(500), &named), 2);
    let records: Vec<Denial> = futures::executor::block_on(d.stream(None, false).collect());
    assert_eq!(records.len(), 2);
    let ingress = &records[0];
    assert_eq!(ingress.direction, Direction::Ingress);
    assert_eq!(ingress.packets, 3);
    assert_eq!(ingress.first, UNIX_EPOCH + Duration::from_millis(1_000));
    assert_eq!(ingress.last, UNIX_EPOCH + Duration::from_millis(1_300));
    assert_eq!(ingress.policy, "networkpolicy/x/deny-Ingress");
    assert_eq!(records[1].policy, "networkpolicy/x/deny-Egress");
    // the window is empty after a flush: nothing is due until a packet
    assert!(!d.due(t0 + Duration::from_secs(5)));
    let m = text(&d.metrics);
    assert!(
        m.contains("underlay_policy_denied_packets_total{namespace=\"x\",direction=\"ingress\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("underlay_policy_denied_packets_total{namespace=\"x\",direction=\"egress\"} 1"),
        "{m}"
    );
}

#[test]
fn the_key_cap_the_rate_cap_and_the_ring_bound_a_flood() {
    let d = Denials::new(limits(), Metrics::default());
    let t0 = Instant::now();
    // three keys in one window: the third is refused
    let flood: Vec<Packet> = (1..=3)
        .map(|p| packet("x/a", Direction::Ingress, p, 10))
        .collect();
    d.observe(batch(flood), t0);
    assert_eq!(d.pending_keys(), 2);
    assert_eq!(d.flush(t0, &named), 2);
    // two more windows in the same second: only two more records fit
    for w in 1..=2u16 {
        let now = t0 + Duration::from_millis(100 * u64::from(w));
        let keys = (1..=2)
            .map(|p| packet("x/b", Direction::Egress, p * 10 + w, 20))
            .collect();
        d.observe(batch(keys), now);
        d.flush(now, &named);
    }
    assert_eq!(d.recent_len(), 3, "the ring keeps only the newest");
    // a new second opens room again
    let later = t0 + Duration::from_millis(1_100);
    d.observe(batch(vec![packet("y/c", Direction::Ingress, 9, 30)]), later);
    assert_eq!(d.flush(later, &named), 1);
    let m = text(&d.metrics);
    // 1 key refused + 2 records over the per-second cap
    assert!(m.contains("underlay_policy_denials_dropped_total 3"), "{m}");
    let kept: Vec<Denial> = futures::executor::block_on(d.stream(None, false).collect());
    assert_eq!(kept.len(), 3);
    assert_eq!(kept[2].pod, PodKey::new("y", "c"));
}

#[test]
fn malformed_messages_are_counted() {
    let d = Denials::new(limits(), Metrics::default());
    d.observe(
        Batch {
            packets: Vec::new(),
            malformed: 5,
        },
        Instant::now(),
    );
    assert!(text(&d.metrics).contains("underlay_policy_nflog_malformed_total 5"));
}

#[tokio::test]
async fn a_follower_gets_the_recent_records_then_new_ones_of_its_namespace() {
    let d = Denials::new(limits(), Metrics::default());
    let t0 = Instant::now();
    d.observe(batch(vec![packet("x/a", Direction::Ingress, 80, 1)]), t0);
    d.observe(batch(vec![packet("y/a", Direction::Ingress, 80, 2)]), t0);
    d.flush(t0, &named);
    let mut follow = Box::pin(d.stream(Some("x".into()), true));
    let first = follow.next().await.unwrap();
    assert_eq!((first.pod.namespace.as_str(), first.port), ("x", 80));
    let now = t0 + Duration::from_secs(2);
    d.observe(batch(vec![packet("y/b", Direction::Egress, 1, 3)]), now);
    d.observe(batch(vec![packet("x/b", Direction::Egress, 81, 4)]), now);
    d.flush(now, &named);
    let next = tokio::time::timeout(Duration::from_secs(5), follow.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((next.pod, next.port), (PodKey::new("x", "b"), 81));
    // without follow the stream ends after the recent records
    let all: Vec<Denial> = d.stream(None, false).collect().await;
    assert_eq!(all.len(), 3);
}

#[test]
fn protocols_are_named() {
    let names: Vec<String> = [6, 17, 132, 1, 58, 47].map(protocol_name).into();
    assert_eq!(names, ["TCP", "UDP", "SCTP", "ICMP", "ICMPv6", "47"]);
}

#[test]
fn a_pod_whose_prefix_was_cut_is_found_by_its_address() {
    use crate::model::{Attachment, Endpoint};
    let long = PodKey::new("team-payments-eu-west", "checkout-api-7f9c8d6b5-x2x4q-long");
    let mut index = Index::new();
    for (pod, ip, iface) in [
        (long.clone(), "10.244.1.5", "udl1"),
        (
            PodKey::new("team-payments-eu-west", "checkout-api-7f9c8d6b5-zzzzz"),
            "10.244.1.6",
            "udl2",
        ),
        (PodKey::new("x", "a"), "10.244.1.7", "udl3"),
    ] {
        index.apply_endpoint(Endpoint {
            pod,
            interface: iface.into(),
            ips: vec![ip.parse().unwrap()],
            owner: Attachment::new("c", "eth0"),
        });
    }
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // "udl deny out " and a key cut where the kernel's 63 bytes end
    let cut_text = &long.to_string()[..40];
    let (ns, name) = cut_text.split_once('/').unwrap();
    let cut = PodKey::new(ns, name);
    let found = endpoint_of(&index, &cut, ip("10.244.1.5")).map(|e| e.pod.clone());
    assert_eq!(found, Some(long.clone()));
    // the address decides between pods sharing the cut prefix
    let other = endpoint_of(&index, &cut, ip("10.244.1.6")).map(|e| e.pod.name.clone());
    assert_eq!(other.as_deref(), Some("checkout-api-7f9c8d6b5-zzzzz"));
    // a pod whose whole name is the cut text does not take the record
    let mut short = cut.clone();
    short.name.truncate(name.len());
    index.apply_endpoint(Endpoint {
        pod: short,
        interface: "udl4".into(),
        ips: vec![ip("10.244.1.8")],
        owner: Attachment::new("c", "eth0"),
    });
    let found = endpoint_of(&index, &cut, ip("10.244.1.5")).map(|e| e.pod.clone());
    assert_eq!(found, Some(long.clone()));
    // an exact name needs no address; an unknown one finds nothing
    let exact = endpoint_of(&index, &PodKey::new("x", "a"), ip("192.0.2.1"));
    assert_eq!(exact.map(|e| e.interface.as_str()), Some("udl3"));
    assert!(endpoint_of(&index, &PodKey::new("y", "a"), ip("10.244.1.7")).is_none());
}

use super::*;
use crate::nl::testing::{encoded_attr as attr, message};
use crate::nl::{u16_at, u32_at};

const PACKET: u16 = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET;

fn ipv4_packet(protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
    p.extend_from_slice(&[10, 1, 0, 2, 10, 2, 0, 3]);
    p.extend_from_slice(l4);
    p
}

fn ipv6_packet(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 0, next, 64];
    p.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&"fd00::3".parse::<Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(rest);
    p
}

/// Source port 40000, destination port `dport`, then padding.
fn ports(dport: u16) -> Vec<u8> {
    let mut l4 = 40000u16.to_be_bytes().to_vec();
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0; 16]);
    l4
}

fn timestamp(sec: u64, usec: u64) -> Vec<u8> {
    let mut t = sec.to_be_bytes().to_vec();
    t.extend_from_slice(&usec.to_be_bytes());
    t
}

/// A packet message as the kernel sends it: nfgenmsg, then the
/// attributes (a hook header first, which the parser does not need).
fn packet_message(family: u8, prefix: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![family, 0];
    body.extend_from_slice(&100u16.to_be_bytes());
    body.extend(attr(1, &[0x08, 0x00, 2, 0]));
    body.extend(attr(NFULA_TIMESTAMP, &timestamp(1_700_000_000, 250_000)));
    body.extend(attr(NFULA_PAYLOAD, payload));
    let mut p = prefix.as_bytes().to_vec();
    p.push(0);
    body.extend(attr(NFULA_PREFIX, &p));
    message(PACKET, &body)
}

fn headers(src: &str, dst: &str, protocol: u8, port: u16) -> (IpAddr, IpAddr, u8, u16) {
    (src.parse().unwrap(), dst.parse().unwrap(), protocol, port)
}

#[test]
fn packets_of_both_families_and_every_port_protocol_are_read() {
    let cases = [
        (
            AF_INET,
            ipv4_packet(IPPROTO_TCP, &ports(80)),
            headers("10.1.0.2", "10.2.0.3", 6, 80),
        ),
        (
            AF_INET,
            ipv4_packet(IPPROTO_UDP, &ports(53)),
            headers("10.1.0.2", "10.2.0.3", 17, 53),
        ),
        (
            AF_INET,
            ipv4_packet(IPPROTO_SCTP, &ports(81)),
            headers("10.1.0.2", "10.2.0.3", 132, 81),
        ),
        (
            AF_INET,
            ipv4_packet(1, &[8, 0, 0, 0]),
            headers("10.1.0.2", "10.2.0.3", 1, 0),
        ),
        (
            AF_INET6,
            ipv6_packet(IPPROTO_TCP, &ports(443)),
            headers("fd00::2", "fd00::3", 6, 443),
        ),
        (
            AF_INET6,
            ipv6_packet(IPPROTO_UDP, &ports(5353)),
            headers("fd00::2", "fd00::3", 17, 5353),
        ),
        (
            AF_INET6,
            ipv6_packet(IPPROTO_SCTP, &ports(9)),
            headers("fd00::2", "fd00::3", 132, 9),
        ),
    ];
    for (family, payload, (src, dst, protocol, port)) in cases {
        let batch = parse_datagram(&packet_message(family, "udl deny in x/a", &payload));
        assert_eq!(batch.malformed, 0, "{protocol}");
        assert_eq!(
            batch.packets,
            vec![Packet {
                direction: Direction::Ingress,
                pod: PodKey::new("x", "a"),
                src,
                dst,
                protocol,
                port,
                time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_250),
                audit: false,
            }],
        );
    }
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_transport_header() {
    // hop-by-hop (8 bytes) then destination options (16 bytes) then UDP
    let mut rest = vec![60, 0, 0, 0, 0, 0, 0, 0];
    rest.extend_from_slice(&[IPPROTO_UDP, 1]);
    rest.extend_from_slice(&[0; 14]);
    rest.extend(ports(8080));
    let h = parse_headers(AF_INET6, &ipv6_packet(0, &rest)).unwrap();
    assert_eq!((h.protocol, h.port), (IPPROTO_UDP, 8080));
    // a first fragment carries the ports; a later one does not
    let mut first = vec![IPPROTO_TCP, 0, 0, 1, 0, 0, 0, 9];
    first.extend(ports(22));
    let h = parse_headers(AF_INET6, &ipv6_packet(44, &first)).unwrap();
    assert_eq!((h.protocol, h.port), (IPPROTO_TCP, 22));
    let later = [IPPROTO_TCP, 0, 0x05, 0x01, 0, 0, 0, 9, 1, 2, 3, 4];
    let h = parse_headers(AF_INET6, &ipv6_packet(44, &later)).unwrap();
    assert_eq!((h.protocol, h.port), (IPPROTO_TCP, 0));
    // an IPv4 non-first fragment has no ports either
    let mut frag = ipv4_packet(IPPROTO_UDP, &ports(53));
    frag[7] = 10;
    assert_eq!(parse_headers(AF_INET, &frag).unwrap().port, 0);
}

#[test]
fn the_prefix_names_direction_and_pod() {
    let p = |s: &str| parse_prefix(s.as_bytes());
    assert_eq!(
        p("udl deny out y/b\0"),
        Some((false, Direction::Egress, PodKey::new("y", "b")))
    );
    assert_eq!(
        p("udl deny in ns/pod-1"),
        Some((false, Direction::Ingress, PodKey::new("ns", "pod-1")))
    );
    assert_eq!(
        p("udl audit in x/a\0"),
        Some((true, Direction::Ingress, PodKey::new("x", "a")))
    );
    for bad in [
        "udl deny up x/a",
        "other x/a",
        "udl deny in xa",
        "udl deny in /a",
        "udl deny in x/",
        "",
    ] {
        assert_eq!(p(bad), None, "{bad:?}");
    }
    assert_eq!(parse_prefix(&[b'u', 0xff, 0xfe]), None);
}

#[test]
fn malformed_messages_are_skipped_and_counted_never_a_panic() {
    let good = packet_message(AF_INET, "udl deny in x/a", &ipv4_packet(6, &ports(80)));
    let foreign = packet_message(AF_INET, "kube-proxy drop", &ipv4_packet(6, &ports(80)));
    let no_ip = packet_message(AF_INET, "udl deny in x/a", &[0x45, 0, 0]);
    let wrong_version = packet_message(AF_INET6, "udl deny in x/a", &ipv4_packet(6, &ports(80)));
    let other_type = message(PACKET + 1, &[AF_INET, 0, 0, 100]);
    let mut datagram = good.clone();
    for m in [&foreign, &no_ip, &wrong_version, &other_type] {
        datagram.extend_from_slice(m);
    }
    let batch = parse_datagram(&datagram);
    assert_eq!((batch.packets.len(), batch.malformed), (1, 4));
    // every cut of a good message: never a panic, never a wrong packet
    for cut in 0..good.len() {
        let b = parse_datagram(&good[..cut]);
        assert!(b.packets.is_empty() || b.packets[0].dst == "10.2.0.3".parse::<IpAddr>().unwrap());
    }
    // a cut header is one malformed datagram
    assert_eq!(parse_datagram(&good[..10]).malformed, 1);
    // a payload cut inside the ports still names the flow, without a port
    let cut_l4 = packet_message(AF_INET, "udl deny out x/a", &ipv4_packet(17, &[1, 2, 3]));
    let b = parse_datagram(&cut_l4);
    assert_eq!((b.packets[0].protocol, b.packets[0].port), (17, 0));
    // a timestamp out of range falls back to the time of reading
    assert_eq!(parse_timestamp(&timestamp(1, 2_000_000)), None);
    assert_eq!(parse_timestamp(&[0; 7]), None);
}

#[test]
fn the_configuration_binds_the_group_and_copies_the_headers() {
    let requests = encode_config(100);
    assert_eq!(requests.len(), 4);
    let bind = &requests[2];
    assert_eq!(
        u16_at(bind, 4),
        Some((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG)
    );
    assert_eq!(u16_at(bind, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
    assert_eq!(&bind[16..20], &[AF_UNSPEC, 0, 0, 100]);
    assert_eq!(
        nl::attr(&bind[20..], NFULA_CFG_CMD),
        Some(&[NFULNL_CFG_CMD_BIND][..])
    );
    let config = &requests[3];
    let mode = nl::attr(&config[20..], NFULA_CFG_MODE).unwrap();
    assert_eq!(&mode[..5], &[0, 0, 0, 128, NFULNL_COPY_PACKET]);
    let thresh = nl::attr(&config[20..], NFULA_CFG_QTHRESH).unwrap();
    assert_eq!(
        u32::from_be_bytes(thresh.try_into().unwrap()),
        QUEUE_THRESHOLD
    );
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(u32_at(r, 0), Some(r.len() as u32));
        assert_eq!(u32_at(r, 8), Some(i as u32 + 1));
    }
}

//! Route names: deterministic, reversible, and valid Azure resource names.
//!
//! A route for node `node-1` and pod CIDR `10.244.1.0/24` is named
//! `ul__node-1__10.244.1.0_24`; for `fd00:10:244:1::/64` it is
//! `ul__node-1__fd00-10-244-1--_64`. The double underscore cannot occur in a
//! Kubernetes node name (a DNS subdomain) and `-` cannot occur in an IP
//! address, so both halves decode unambiguously. Azure limits route names to
//! 80 characters; a name that would be longer carries a hash of the node name
//! instead (`ulh__<16 hex>__<cidr>`), which still decodes to the CIDR and is
//! matched to its node by recomputing the hash.

use std::fmt;
use std::net::IpAddr;
use underlay_ipam::Cidr;

const PREFIX: &str = "ul__";
const HASHED_PREFIX: &str = "ulh__";
const SEP: &str = "__";
/// Azure's limit on route names.
pub const MAX_NAME_LEN: usize = 80;

/// Who a route name says the route belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRef {
    /// The node's name, spelled out.
    Name(String),
    /// A hash of a node name too long to spell out.
    Hash(u64),
}

impl NodeRef {
    /// Whether this reference designates `node`.
    pub fn is(&self, node: &str) -> bool {
        match self {
            NodeRef::Name(n) => n == node,
            NodeRef::Hash(h) => *h == node_hash(node),
        }
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeRef::Name(n) => f.write_str(n),
            NodeRef::Hash(h) => write!(f, "node#{h:016x}"),
        }
    }
}

/// A decoded route name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteName {
    pub node: NodeRef,
    pub cidr: Cidr,
}

/// FNV-1a, 64 bits: stable across releases and platforms, which a route name
/// must be (std's hasher is not).
fn node_hash(node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn encode_cidr(cidr: &Cidr) -> String {
    format!("{}_{}", cidr.addr(), cidr.prefix_len()).replace(':', "-")
}

fn decode_cidr(s: &str) -> Option<Cidr> {
    let (addr, len) = s.rsplit_once('_')?;
    let addr: IpAddr = addr.replace('-', ":").parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let cidr = Cidr::new(addr, len).ok()?;
    // Only the canonical spelling is ours: anything else was written by
    // someone else and must not be claimed.
    (encode_cidr(&cidr) == s).then_some(cidr)
}

/// The route name for `node`'s route to `cidr`.
pub fn route_name(node: &str, cidr: &Cidr) -> String {
    let spelled = format!("{PREFIX}{node}{SEP}{}", encode_cidr(cidr));
    if spelled.len() <= MAX_NAME_LEN && !node.contains(SEP) && !node.is_empty() {
        spelled
    } else {
        format!(
            "{HASHED_PREFIX}{:016x}{SEP}{}",
            node_hash(node),
            encode_cidr(cidr)
        )
    }
}

/// Decodes a route name made by [`route_name`]; `None` for any other name.
pub fn parse_route_name(name: &str) -> Option<RouteName> {
    if let Some(rest) = name.strip_prefix(HASHED_PREFIX) {
        let (hash, cidr) = rest.split_once(SEP)?;
        if hash.len() != 16 {
            return None;
        }
        let hash = u64::from_str_radix(hash, 16).ok()?;
        let cidr = decode_cidr(cidr)?;
        return Some(RouteName {
            node: NodeRef::Hash(hash),
            cidr,
        });
    }
    let rest = name.strip_prefix(PREFIX)?;
    let (node, cidr) = rest.rsplit_once(SEP)?;
    if node.is_empty() || node.contains(SEP) {
        return None;
    }
    let cidr = decode_cidr(cidr)?;
    let parsed = RouteName {
        node: NodeRef::Name(node.to_string()),
        cidr,
    };
    // Reject names we would have spelled differently (e.g. too long).
    (route_name(node, &cidr) == name).then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn names_round_trip_for_both_families() {
        for (node, c, expect) in [
            ("node-1", "10.244.1.0/24", "ul__node-1__10.244.1.0_24"),
            (
                "n.example.com",
                "10.0.0.0/16",
                "ul__n.example.com__10.0.0.0_16",
            ),
            (
                "node-1",
                "fd00:10:244:1::/64",
                "ul__node-1__fd00-10-244-1--_64",
            ),
            ("a", "::/0", "ul__a__--_0"),
        ] {
            let name = route_name(node, &cidr(c));
            assert_eq!(name, expect);
            let parsed = parse_route_name(&name).unwrap();
            assert!(parsed.node.is(node));
            assert_eq!(parsed.cidr, cidr(c));
        }
    }

    #[test]
    fn long_node_names_are_hashed_and_still_decode() {
        let node = format!("{}.example.com", "x".repeat(70));
        let c = cidr("fd00:1234:5678:9abc::/64");
        let name = route_name(&node, &c);
        assert!(name.len() <= MAX_NAME_LEN, "{name}");
        assert!(name.starts_with("ulh__"));
        let parsed = parse_route_name(&name).unwrap();
        assert!(parsed.node.is(&node));
        assert!(!parsed.node.is("other"));
        assert_eq!(parsed.cidr, c);
    }

    #[test]
    fn every_name_is_a_valid_azure_route_name() {
        for (node, c) in [
            ("node-1", "10.244.1.0/24"),
            ("n", "fd00::/64"),
            (&"y".repeat(253), "10.0.0.0/24"),
        ] {
            let name = route_name(node, &cidr(c));
            let b = name.as_bytes();
            assert!(b.len() <= MAX_NAME_LEN);
            assert!(b[0].is_ascii_alphanumeric());
            assert!(b.last().unwrap().is_ascii_alphanumeric() || *b.last().unwrap() == b'_');
            assert!(
                b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
            );
        }
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for name in [
            "default-to-firewall",
            "ul__",
            "ul__node__10.0.0.1_24",  // host bits set: not canonical
            "ul__node__10.0.0.0_33",  // bad length
            "ul__node__010.0.0.0_24", // not canonical spelling
            "ul____10.0.0.0_24",      // empty node
            "ulh__xyz__10.0.0.0_24",  // bad hash
            "UL__node__10.0.0.0_24",  // case differs
            "ul__node__fd00--_64x",
        ] {
            assert_eq!(parse_route_name(name), None, "{name}");
        }
    }
}

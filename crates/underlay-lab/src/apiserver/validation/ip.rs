//! CIDR and IP address fields: parsing, containment (an ipBlock's `except`
//! inside its `cidr`) and the one-per-family rule of dual-stack lists.

use std::net::IpAddr;

use super::super::error::Cause;

const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

/// `(network address, prefix length)` of a CIDR string.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    // A prefix length is decimal digits only: Rust's integer parser also
    // takes a leading `+`, kube-apiserver's does not.
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn ip_bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v) => (u32::from(v) as u128, 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

fn masked(ip: IpAddr, len: u8) -> u128 {
    let (bits, width) = ip_bits(ip);
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (width - len)) & (u128::MAX >> (128 - width as u32))
    }
}

/// True when `inner` is a strict subset of `outer` (same family).
pub fn cidr_strictly_within(inner: (IpAddr, u8), outer: (IpAddr, u8)) -> bool {
    inner.0.is_ipv4() == outer.0.is_ipv4()
        && inner.1 > outer.1
        && masked(inner.0, outer.1) == masked(outer.0, outer.1)
}

/// Parses a CIDR field, reporting it when it is not one.
pub fn cidr_field(path: String, s: &str, causes: &mut Vec<Cause>) -> Option<(IpAddr, u8)> {
    let cidr = parse_cidr(s);
    if cidr.is_none() {
        causes.push(Cause::invalid(path, s, CIDR_MSG));
    }
    cidr
}

/// A dual-stack list (podCIDRs, podIPs): at most one entry per IP family.
pub fn one_per_family(
    path: String,
    values: &[String],
    ipv4: &[bool],
    what: &str,
    causes: &mut Vec<Cause>,
) {
    if values.len() > 2 || (ipv4.len() == 2 && ipv4[0] == ipv4[1]) {
        causes.push(Cause::invalid(
            path,
            values.join(","),
            &format!("may specify no more than one {what} for each IP family"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_only_with_a_prefix_length_the_family_allows() {
        assert_eq!(
            parse_cidr("10.0.0.0/8"),
            Some(("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(
            parse_cidr("fd00::/64"),
            Some(("fd00::".parse().unwrap(), 64))
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/+8",
            "fd00::/+64",
            "10.0.0.0/ 8",
            "10.0.0.0/",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_strict_subset_is_longer_inside_and_of_the_same_family() {
        let c = |s: &str| parse_cidr(s).unwrap();
        let cases = [
            ("10.1.0.0/16", "10.0.0.0/8", true),
            ("10.0.0.0/8", "10.0.0.0/8", false),
            ("11.0.0.0/16", "10.0.0.0/8", false),
            ("10.0.0.0/8", "10.1.0.0/16", false),
            ("1.2.3.4/32", "0.0.0.0/0", true),
            ("fd00:1::/64", "fd00::/16", true),
            ("fd00::/64", "10.0.0.0/8", false),
        ];
        for (inner, outer, want) in cases {
            assert_eq!(
                cidr_strictly_within(c(inner), c(outer)),
                want,
                "{inner} in {outer}"
            );
        }
    }
}

//! CIDR values and the integer arithmetic behind them.
//!
//! A [`Cidr`] is always normalized: its address is the network address, so
//! two equal networks are equal values. Addresses of both families are mapped
//! to `u128` (IPv4 in the low 32 bits) so the allocators share one code path.

use crate::error::{Error, Result};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4, 32-bit addresses.
    V4,
    /// IPv6, 128-bit addresses.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The position of the family in [`Family::ALL`], for per-family arrays.
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }

    /// The number of bits of an address of this family.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A normalized IP network: an address whose bits past the prefix are zero,
/// and a prefix length no longer than the address.
///
/// Ordered by family (IPv4 first), then address, then prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The network `addr/prefix_len`. Fails when the prefix is longer than
    /// the address or when `addr` has host bits set (the error names the
    /// network that was probably meant).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Cidr> {
        let family = Family::of(addr);
        if prefix_len > family.bits() {
            return Err(Error::PrefixTooLong { family, prefix_len });
        }
        let value = to_u128(addr);
        let network = value & network_mask(family, prefix_len);
        if network != value {
            return Err(Error::HostBitsSet {
                addr,
                prefix_len,
                network: Cidr {
                    addr: from_u128(family, network),
                    prefix_len,
                },
            });
        }
        Ok(Cidr { addr, prefix_len })
    }

    /// The network of length `prefix_len` that contains `addr`: host bits are
    /// cleared instead of rejected.
    pub fn containing(addr: IpAddr, prefix_len: u8) -> Result<Cidr> {
        let family = Family::of(addr);
        if prefix_len > family.bits() {
            return Err(Error::PrefixTooLong { family, prefix_len });
        }
        let network = to_u128(addr) & network_mask(family, prefix_len);
        Ok(Cidr {
            addr: from_u128(family, network),
            prefix_len,
        })
    }

    /// The single-address network of `ip` (/32 or /128).
    pub fn host(ip: IpAddr) -> Cidr {
        Cidr {
            addr: ip,
            prefix_len: Family::of(ip).bits(),
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }

    /// The last address of the network (the IPv4 broadcast-style address).
    pub fn last(&self) -> IpAddr {
        from_u128(self.family(), self.last_u128())
    }

    /// Whether `ip` lies inside this network. Addresses of the other family
    /// never do.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family() && {
            let value = to_u128(ip);
            value >= self.first_u128() && value <= self.last_u128()
        }
    }

    /// Whether `other` lies entirely inside this network.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.family() == self.family()
            && other.prefix_len >= self.prefix_len
            && self.contains(other.addr)
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains_cidr(other) || other.contains_cidr(self)
    }

    /// The number of addresses, saturating at `u128::MAX` for `::/0`.
    pub fn size(&self) -> u128 {
        pow2_saturating(self.family().bits() - self.prefix_len)
    }

    /// The address at `offset` from the network address, if it is inside.
    pub fn nth(&self, offset: u128) -> Option<IpAddr> {
        let value = self.first_u128().checked_add(offset)?;
        (value <= self.last_u128()).then(|| from_u128(self.family(), value))
    }

    /// The offset of `ip` from the network address, if it is inside.
    pub fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        self.contains(ip).then(|| to_u128(ip) - self.first_u128())
    }

    /// The two networks one bit longer that together make up this one, or
    /// `None` for a single address.
    pub fn halves(&self) -> Option<[Cidr; 2]> {
        let family = self.family();
        if self.prefix_len >= family.bits() {
            return None;
        }
        let prefix_len = self.prefix_len + 1;
        let high = self.first_u128() | 1u128 << (family.bits() - prefix_len);
        Some([
            Cidr {
                addr: self.addr,
                prefix_len,
            },
            Cidr {
                addr: from_u128(family, high),
                prefix_len,
            },
        ])
    }

    pub(crate) fn first_u128(&self) -> u128 {
        to_u128(self.addr)
    }

    pub(crate) fn last_u128(&self) -> u128 {
        self.first_u128()
            | !network_mask(self.family(), self.prefix_len) & family_mask(self.family())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = Error;

    /// Parses `ADDRESS/PREFIX` strictly: no whitespace, no sign, no bare
    /// address, and host bits must be zero.
    fn from_str(input: &str) -> Result<Cidr> {
        let invalid = |reason| Error::InvalidCidr {
            input: input.to_owned(),
            reason,
        };
        let (addr, prefix) = input
            .split_once('/')
            .ok_or_else(|| invalid("missing /PREFIX"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| invalid("not an IPv4 or IPv6 address before the /"))?;
        // u8::from_str would accept "+24"; a prefix is plain digits.
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("the prefix length after the / must be a number"));
        }
        let prefix_len: u8 = prefix
            .parse()
            .map_err(|_| invalid("the prefix length after the / must be at most 128"))?;
        Cidr::new(addr, prefix_len)
    }
}

/// An address as an integer; IPv4 occupies the low 32 bits.
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of `family` whose integer value is `value`; for IPv4 only the
/// low 32 bits are used (callers pass values inside a network of the family).
pub(crate) fn from_u128(family: Family, value: u128) -> IpAddr {
    match family {
        // Truncation is intended: IPv4 values never exceed 32 bits here.
        #[allow(clippy::cast_possible_truncation)]
        Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// All address bits of the family set.
fn family_mask(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

/// The network bits of a prefix of `prefix_len` set (`prefix_len` is at
/// most the family's bit count).
fn network_mask(family: Family, prefix_len: u8) -> u128 {
    let host_bits = family.bits() - prefix_len;
    family_mask(family) & !low_bits(host_bits)
}

/// A value with the low `n` bits set (`n` up to 128).
pub(crate) fn low_bits(n: u8) -> u128 {
    if n >= 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    }
}

/// `2^n`, saturating at `u128::MAX` for `n >= 128`.
pub(crate) fn pow2_saturating(n: u8) -> u128 {
    if n >= 128 { u128::MAX } else { 1u128 << n }
}

/// `value >> n` that yields 0 for `n >= 128` instead of overflowing.
pub(crate) fn shr(value: u128, n: u8) -> u128 {
    if n >= 128 { 0 } else { value >> n }
}

/// `value << n` that yields 0 for `n >= 128` instead of overflowing.
pub(crate) fn shl(value: u128, n: u8) -> u128 {
    if n >= 128 { 0 } else { value << n }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    /// The address and prefix length parsed, or the kind of error.
    type Parsed = Result<(&'static str, u8), &'static str>;

    #[test]
    fn parsing_accepts_normalized_networks_and_rejects_everything_else() {
        let cases: &[(&str, Parsed)] = &[
            ("10.244.0.0/16", Ok(("10.244.0.0", 16))),
            ("0.0.0.0/0", Ok(("0.0.0.0", 0))),
            ("10.1.2.3/32", Ok(("10.1.2.3", 32))),
            ("fd00:10:244::/56", Ok(("fd00:10:244::", 56))),
            ("::/0", Ok(("::", 0))),
            ("fd00::1/128", Ok(("fd00::1", 128))),
            ("10.244.0.1/16", Err("host bits set")),
            ("fd00:10:244::1/56", Err("host bits set")),
            ("10.244.0.0/33", Err("prefix too long")),
            ("fd00::/129", Err("prefix too long")),
            ("10.244.0.0", Err("invalid")),
            ("10.244.0.0/", Err("invalid")),
            ("10.244.0.0/+8", Err("invalid")),
            ("10.244.0.0/-8", Err("invalid")),
            ("10.244.0.0/ 8", Err("invalid")),
            (" 10.244.0.0/8", Err("invalid")),
            ("10.244.0.0/1000", Err("invalid")),
            ("10.244.0.0/256", Err("invalid")),
            ("10.244.0/16", Err("invalid")),
            ("10.244.0.0/16/16", Err("invalid")),
            ("", Err("invalid")),
            ("/16", Err("invalid")),
        ];
        for (input, expect) in cases {
            let got = input.parse::<Cidr>();
            match (expect, &got) {
                (Ok((addr, len)), Ok(c)) => {
                    assert_eq!(c.addr(), addr.parse::<IpAddr>().unwrap(), "{input}");
                    assert_eq!(c.prefix_len(), *len, "{input}");
                    assert_eq!(c.to_string(), *input, "display round-trips {input}");
                }
                (Err("host bits set"), Err(Error::HostBitsSet { .. }))
                | (Err("prefix too long"), Err(Error::PrefixTooLong { .. }))
                | (Err("invalid"), Err(Error::InvalidCidr { .. })) => {}
                _ => panic!("{input}: expected {expect:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn host_bits_error_names_the_intended_network() {
        let err = "10.244.1.7/16".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err,
            Error::HostBitsSet {
                addr: "10.244.1.7".parse().unwrap(),
                prefix_len: 16,
                network: cidr("10.244.0.0/16"),
            }
        );
        assert!(
            err.to_string()
                .contains("use the network address 10.244.0.0/16")
        );
    }

    #[test]
    fn containment_and_overlap() {
        // (a, b, a contains b, a overlaps b)
        let cases = [
            ("10.244.0.0/16", "10.244.3.0/24", true, true),
            ("10.244.3.0/24", "10.244.0.0/16", false, true),
            ("10.244.0.0/16", "10.244.0.0/16", true, true),
            ("10.244.0.0/16", "10.245.0.0/16", false, false),
            ("0.0.0.0/0", "255.255.255.255/32", true, true),
            ("10.0.0.0/8", "fd00::/8", false, false),
            ("::/0", "10.0.0.0/8", false, false),
            ("fd00:10:244::/56", "fd00:10:244:ff::/64", true, true),
            ("fd00:10:244::/56", "fd00:10:245::/64", false, false),
        ];
        for (a, b, contains, overlaps) in cases {
            assert_eq!(
                cidr(a).contains_cidr(&cidr(b)),
                contains,
                "{a} contains {b}"
            );
            assert_eq!(cidr(a).overlaps(&cidr(b)), overlaps, "{a} overlaps {b}");
            assert_eq!(cidr(b).overlaps(&cidr(a)), overlaps, "{b} overlaps {a}");
        }
    }

    #[test]
    fn address_containment_respects_family_and_bounds() {
        let cases = [
            ("10.244.0.0/24", "10.244.0.0", true),
            ("10.244.0.0/24", "10.244.0.255", true),
            ("10.244.0.0/24", "10.244.1.0", false),
            ("10.244.0.0/24", "::ffff:10.244.0.1", false),
            ("::/0", "10.244.0.1", false),
            ("fd00::/64", "fd00::ffff:ffff:ffff:ffff", true),
            ("fd00::/64", "fd00:0:0:1::", false),
        ];
        for (net, ip, expect) in cases {
            assert_eq!(
                cidr(net).contains(ip.parse().unwrap()),
                expect,
                "{net} ∋ {ip}"
            );
        }
    }

    #[test]
    fn halves_split_a_network_in_two_and_a_host_not_at_all() {
        let halves = |s: &str| {
            s.parse::<Cidr>()
                .unwrap()
                .halves()
                .map(|[lo, hi]| (lo.to_string(), hi.to_string()))
        };
        assert_eq!(
            halves("0.0.0.0/0"),
            Some(("0.0.0.0/1".into(), "128.0.0.0/1".into()))
        );
        assert_eq!(
            halves("10.1.0.0/16"),
            Some(("10.1.0.0/17".into(), "10.1.128.0/17".into()))
        );
        assert_eq!(halves("::/0"), Some(("::/1".into(), "8000::/1".into())));
        assert_eq!(
            halves("fd00::/127"),
            Some(("fd00::/128".into(), "fd00::1/128".into()))
        );
        assert_eq!(halves("10.0.0.1/32"), None);
        assert_eq!(halves("fd00::1/128"), None);
        assert_eq!(Family::V4.index(), 0);
        assert_eq!(Family::ALL[Family::V6.index()], Family::V6);
    }

    #[test]
    fn size_last_and_nth() {
        let cases: [(&str, u128, &str); 6] = [
            ("10.244.0.0/24", 256, "10.244.0.255"),
            ("10.244.0.0/32", 1, "10.244.0.0"),
            ("0.0.0.0/0", 1 << 32, "255.255.255.255"),
            ("fd00::/64", 1 << 64, "fd00::ffff:ffff:ffff:ffff"),
            ("::/1", 1 << 127, "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("::/0", u128::MAX, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ];
        for (net, size, last) in cases {
            let c = cidr(net);
            assert_eq!(c.size(), size, "{net}");
            assert_eq!(c.last(), last.parse::<IpAddr>().unwrap(), "{net}");
            assert_eq!(c.nth(0), Some(c.addr()), "{net}");
            // ::/0 holds 2^128 addresses; its size saturates, its last offset does not.
            let last_offset = if size == u128::MAX {
                u128::MAX
            } else {
                size - 1
            };
            assert_eq!(c.offset_of(c.last()), Some(last_offset), "{net}");
        }
        assert_eq!(
            cidr("10.0.0.0/30").nth(3),
            Some("10.0.0.3".parse().unwrap())
        );
        assert_eq!(cidr("10.0.0.0/30").nth(4), None);
        assert_eq!(
            cidr("::/0").nth(u128::MAX),
            Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap())
        );
    }

    #[test]
    fn containing_clears_host_bits() {
        let c = Cidr::containing("10.244.7.9".parse().unwrap(), 16).unwrap();
        assert_eq!(c, cidr("10.244.0.0/16"));
        assert_eq!(
            Cidr::containing("10.0.0.1".parse().unwrap(), 40),
            Err(Error::PrefixTooLong {
                family: Family::V4,
                prefix_len: 40
            })
        );
        assert_eq!(Cidr::host("fd00::5".parse().unwrap()), cidr("fd00::5/128"));
    }

    #[test]
    fn ordering_puts_ipv4_first_then_address_then_length() {
        let mut v = vec![
            cidr("fd00::/8"),
            cidr("10.0.0.0/16"),
            cidr("10.0.0.0/8"),
            cidr("9.0.0.0/8"),
        ];
        v.sort();
        assert_eq!(
            v,
            vec![
                cidr("9.0.0.0/8"),
                cidr("10.0.0.0/8"),
                cidr("10.0.0.0/16"),
                cidr("fd00::/8")
            ]
        );
    }
}

//! Node CIDR(s) → pod addresses: what the node agent hands to each CNI
//! attachment.
//!
//! A [`PodAllocator`] holds at most one node CIDR per family and gives each
//! attachment, keyed by `(container_id, ifname)`, one address of every
//! family. Addresses never handed out: the network address of each node
//! CIDR, and for IPv4 its last (broadcast-style) address. The first address
//! after the network address (e.g. `10.244.1.1`) *is* handed out: pods use a
//! link-local gateway (169.254.1.1 and an IPv6 link-local) answered by proxy
//! ARP/NDP on the host side of the veth, so no address of the node CIDR is
//! set aside for a gateway.

use crate::cidr::{Cidr, Family, low_bits};
use crate::error::{Error, PoolKind, Result};
use crate::pool::{Pool, Taken};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// One CNI attachment: a container's interface. CNI identifies an
/// attachment by exactly this pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttachmentKey {
    /// The runtime's container id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The interface name inside the container (`CNI_IFNAME`).
    pub ifname: String,
}

impl AttachmentKey {
    /// The key of `container_id`'s interface `ifname`.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> AttachmentKey {
        AttachmentKey {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.container_id.is_empty() {
            return Err(Error::InvalidKey {
                reason: "the container id is empty",
            });
        }
        if self.ifname.is_empty() {
            return Err(Error::InvalidKey {
                reason: "the interface name is empty",
            });
        }
        Ok(())
    }
}

impl fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// One node CIDR and its pool of address offsets.
#[derive(Debug, Clone)]
struct Range {
    cidr: Cidr,
    pool: Pool,
}

impl Range {
    /// The pool offset of `ip`, or why it is never handed out.
    fn offset(&self, ip: IpAddr) -> Result<u128> {
        let offset = self
            .cidr
            .offset_of(ip)
            .ok_or(Error::AddressOutsideNode { ip })?;
        if self.pool.contains(offset) {
            return Ok(offset);
        }
        Err(Error::AddressNotAssignable {
            ip,
            node_cidr: self.cidr,
            reason: if offset == 0 {
                "network address"
            } else {
                "last (broadcast) address"
            },
        })
    }

    fn ip(&self, offset: u128) -> IpAddr {
        // Offsets come from the pool, which lies inside the CIDR.
        self.cidr.nth(offset).unwrap_or(self.cidr.addr())
    }
}

/// Pod addresses of one node: at most one node CIDR per family, one address
/// per family for each attachment.
///
/// Never hands out the network address of a node CIDR, nor the last address
/// of an IPv4 one. The first address after the network address is handed
/// out like any other: pods reach the node through a link-local gateway
/// (169.254.1.1, and an IPv6 link-local) answered by proxy ARP/NDP, so no
/// address of the node CIDR is set aside for a gateway. Addresses are handed
/// out round-robin after the last one handed out, so a released address is
/// reused only after every other free one; free addresses are kept as
/// ranges, so a whole IPv6 /64 costs no more memory than a /24.
#[derive(Debug, Clone)]
pub struct PodAllocator {
    ranges: Vec<Range>,
    allocations: BTreeMap<AttachmentKey, Vec<IpAddr>>,
}

impl PodAllocator {
    /// Addresses from `node_cidrs` (a node's `spec.podCIDRs`). At least one,
    /// at most one per family, each with at least one usable address. The
    /// order given is the order of the addresses of every attachment.
    pub fn new(node_cidrs: &[Cidr]) -> Result<PodAllocator> {
        if node_cidrs.is_empty() {
            return Err(Error::NoFamilies);
        }
        let mut ranges: Vec<Range> = Vec::with_capacity(node_cidrs.len());
        for &cidr in node_cidrs {
            let family = cidr.family();
            if ranges.iter().any(|r| r.cidr.family() == family) {
                return Err(Error::DuplicateFamily { family });
            }
            let last_offset = low_bits(family.bits() - cidr.prefix_len());
            let last_usable = match family {
                Family::V4 => last_offset.saturating_sub(1),
                Family::V6 => last_offset,
            };
            if last_usable < 1 {
                return Err(Error::NodeCidrTooSmall { cidr });
            }
            ranges.push(Range {
                cidr,
                pool: Pool::new(1, last_usable),
            });
        }
        Ok(PodAllocator {
            ranges,
            allocations: BTreeMap::new(),
        })
    }

    /// The node CIDRs, in configured order.
    pub fn node_cidrs(&self) -> Vec<Cidr> {
        self.ranges.iter().map(|r| r.cidr).collect()
    }

    /// The addresses of `key`: the ones it already holds, or one new
    /// address per family. All or nothing: when any family is exhausted
    /// nothing is held and the round-robin positions are as before the call.
    pub fn allocate(&mut self, key: &AttachmentKey) -> Result<Vec<IpAddr>> {
        key.validate()?;
        if let Some(ips) = self.allocations.get(key) {
            return Ok(ips.clone());
        }
        let mut taken: Vec<(u128, Option<u128>)> = Vec::with_capacity(self.ranges.len());
        for i in 0..self.ranges.len() {
            let range = &mut self.ranges[i];
            let before = range.pool.last_allocated();
            match range.pool.allocate() {
                Some(offset) => taken.push((offset, before)),
                None => {
                    let err = Error::Exhausted {
                        cidr: range.cidr,
                        capacity: range.pool.capacity(),
                        kind: PoolKind::PodAddresses,
                    };
                    for (range, (offset, before)) in self.ranges.iter_mut().zip(taken) {
                        range.pool.undo_allocate(offset, before);
                    }
                    return Err(err);
                }
            }
        }
        let ips: Vec<IpAddr> = self
            .ranges
            .iter()
            .zip(&taken)
            .map(|(range, &(offset, _))| range.ip(offset))
            .collect();
        self.allocations.insert(key.clone(), ips.clone());
        Ok(ips)
    }

    /// The addresses `key` holds.
    pub fn get(&self, key: &AttachmentKey) -> Option<&[IpAddr]> {
        self.allocations.get(key).map(Vec::as_slice)
    }

    /// The attachment holding `ip`. Linear in the number of attachments:
    /// meant for diagnostics and error paths.
    pub fn owner(&self, ip: IpAddr) -> Option<&AttachmentKey> {
        self.allocations
            .iter()
            .find(|(_, ips)| ips.contains(&ip))
            .map(|(key, _)| key)
    }

    /// Frees the addresses of `key` and returns them; `None` when it held
    /// none.
    pub fn release(&mut self, key: &AttachmentKey) -> Option<Vec<IpAddr>> {
        let ips = self.allocations.remove(key)?;
        self.free(&ips);
        Some(ips)
    }

    /// Frees every attachment of `container_id` (CNI DEL without an
    /// interface name, or a container gone for good).
    pub fn release_container(&mut self, container_id: &str) -> Vec<(AttachmentKey, Vec<IpAddr>)> {
        let start = AttachmentKey::new(container_id, "");
        let keys: Vec<AttachmentKey> = self
            .allocations
            .range(start..)
            .take_while(|(key, _)| key.container_id == container_id)
            .map(|(key, _)| key.clone())
            .collect();
        keys.into_iter()
            .filter_map(|key| self.release(&key).map(|ips| (key, ips)))
            .collect()
    }

    /// Keeps the attachments for which `keep` is true and frees the rest,
    /// returning what was freed (CNI GC with the runtime's valid
    /// attachments).
    pub fn retain(
        &mut self,
        keep: impl Fn(&AttachmentKey) -> bool,
    ) -> Vec<(AttachmentKey, Vec<IpAddr>)> {
        let gone: Vec<AttachmentKey> = self
            .allocations
            .keys()
            .filter(|key| !keep(key))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|key| self.release(&key).map(|ips| (key, ips)))
            .collect()
    }

    /// Records an allocation read back from a durable store. All or
    /// nothing: the key must be valid, `ips` non-empty with at most one
    /// address per family, each inside a node CIDR, assignable and not held
    /// by another attachment. Restoring exactly what a key already holds
    /// succeeds and changes nothing. Allocation then continues after the
    /// highest address restored so far unless
    /// [`PodAllocator::resume_after`] says otherwise.
    pub fn restore(&mut self, key: AttachmentKey, ips: Vec<IpAddr>) -> Result<()> {
        key.validate()?;
        if ips.is_empty() {
            return Err(Error::NoAddresses { key });
        }
        // (range index, offset) per address, in configured family order.
        let mut slots: Vec<(usize, u128)> = Vec::with_capacity(ips.len());
        for &ip in &ips {
            let family = Family::of(ip);
            let index = self
                .ranges
                .iter()
                .position(|r| r.cidr.family() == family)
                .ok_or(Error::AddressOutsideNode { ip })?;
            if slots.iter().any(|&(i, _)| i == index) {
                return Err(Error::DuplicateFamily { family });
            }
            slots.push((index, self.ranges[index].offset(ip)?));
        }
        slots.sort_unstable();
        let ordered: Vec<IpAddr> = slots
            .iter()
            .map(|&(i, offset)| self.ranges[i].ip(offset))
            .collect();
        if let Some(existing) = self.allocations.get(&key) {
            if *existing == ordered {
                return Ok(());
            }
            return Err(Error::AttachmentExists {
                existing: existing.clone(),
                key,
            });
        }
        for (&(i, offset), &ip) in slots.iter().zip(&ordered) {
            if self.ranges[i].pool.is_used(offset) {
                let owner = self.owner(ip).cloned().unwrap_or_else(|| key.clone());
                return Err(Error::AddressInUse { ip, owner });
            }
        }
        for &(i, offset) in &slots {
            // Checked above: every slot is inside its pool and free.
            let occupied = self.ranges[i].pool.occupy(offset);
            debug_assert_eq!(occupied, Ok::<(), Taken>(()));
        }
        self.allocations.insert(key, ordered);
        Ok(())
    }

    /// Continue round-robin after `ip` in its node CIDR, e.g. with the last
    /// address handed out before a restart, so that allocation carries on
    /// exactly as if the process had not restarted.
    pub fn resume_after(&mut self, ip: IpAddr) -> Result<()> {
        let range = self
            .ranges
            .iter_mut()
            .find(|r| r.cidr.family() == Family::of(ip))
            .ok_or(Error::AddressOutsideNode { ip })?;
        let offset = range.offset(ip)?;
        range.pool.resume_after(offset);
        Ok(())
    }

    /// The address of `family` after which the next allocation searches:
    /// the last one handed out, or the highest one restored.
    pub fn last_allocated(&self, family: Family) -> Option<IpAddr> {
        let range = self.range(family)?;
        range.pool.last_allocated().map(|offset| range.ip(offset))
    }

    /// Every attachment and its addresses, ordered by key.
    pub fn allocations(&self) -> impl Iterator<Item = (&AttachmentKey, &[IpAddr])> {
        self.allocations
            .iter()
            .map(|(key, ips)| (key, ips.as_slice()))
    }

    /// How many addresses of `family` can be handed out in total; 0 when
    /// the family is not configured.
    pub fn capacity(&self, family: Family) -> u128 {
        self.range(family).map_or(0, |r| r.pool.capacity())
    }

    /// How many addresses of `family` are held.
    pub fn used(&self, family: Family) -> u128 {
        self.range(family).map_or(0, |r| r.pool.used())
    }

    /// How many attachments hold addresses.
    pub fn allocated(&self) -> usize {
        self.allocations.len()
    }

    fn range(&self, family: Family) -> Option<&Range> {
        self.ranges.iter().find(|r| r.cidr.family() == family)
    }

    fn free(&mut self, ips: &[IpAddr]) {
        for &ip in ips {
            if let Some(range) = self
                .ranges
                .iter_mut()
                .find(|r| r.cidr.family() == Family::of(ip))
                && let Ok(offset) = range.offset(ip)
            {
                range.pool.release(offset);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn key(c: &str, i: &str) -> AttachmentKey {
        AttachmentKey::new(c, i)
    }

    fn pods(cidrs: &[&str]) -> PodAllocator {
        PodAllocator::new(&cidrs.iter().map(|c| cidr(c)).collect::<Vec<_>>()).unwrap()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    #[test]
    fn node_cidrs_are_validated() {
        let cases: &[(&[&str], Option<Error>)] = &[
            (&["10.244.1.0/24"], None),
            (&["10.244.1.0/30"], None),
            (&["fd00::/127"], None),
            (&["fd00::/64", "10.244.1.0/24"], None),
            (&[], Some(Error::NoFamilies)),
            (
                &["10.244.1.0/24", "10.244.2.0/24"],
                Some(Error::DuplicateFamily { family: Family::V4 }),
            ),
            (
                &["10.244.1.0/31"],
                Some(Error::NodeCidrTooSmall {
                    cidr: cidr("10.244.1.0/31"),
                }),
            ),
            (
                &["10.244.1.0/32"],
                Some(Error::NodeCidrTooSmall {
                    cidr: cidr("10.244.1.0/32"),
                }),
            ),
            (
                &["fd00::/128"],
                Some(Error::NodeCidrTooSmall {
                    cidr: cidr("fd00::/128"),
                }),
            ),
        ];
        for (input, expect) in cases {
            let cidrs: Vec<Cidr> = input.iter().map(|c| cidr(c)).collect();
            assert_eq!(PodAllocator::new(&cidrs).err(), *expect, "{input:?}");
        }
    }

    #[test]
    fn capacity_excludes_network_and_ipv4_last_address() {
        let cases: [(&str, Family, u128); 6] = [
            ("10.244.1.0/24", Family::V4, 254),
            ("10.244.0.0/16", Family::V4, 65534),
            ("10.244.1.0/30", Family::V4, 2),
            ("fd00::/64", Family::V6, (1 << 64) - 1),
            ("fd00::/120", Family::V6, 255),
            ("fd00::/127", Family::V6, 1),
        ];
        for (net, family, capacity) in cases {
            let p = pods(&[net]);
            assert_eq!(p.capacity(family), capacity, "{net}");
            let other = if family == Family::V4 {
                Family::V6
            } else {
                Family::V4
            };
            assert_eq!(p.capacity(other), 0, "{net}");
        }
    }

    #[test]
    fn a_small_ipv4_range_hands_out_everything_but_network_and_last() {
        let mut p = pods(&["10.244.1.0/29"]);
        let got: Vec<IpAddr> = (0..6)
            .map(|i| p.allocate(&key(&format!("c{i}"), "eth0")).unwrap()[0])
            .collect();
        assert_eq!(
            got,
            ips(&[
                "10.244.1.1",
                "10.244.1.2",
                "10.244.1.3",
                "10.244.1.4",
                "10.244.1.5",
                "10.244.1.6"
            ])
        );
        let err = p.allocate(&key("c6", "eth0")).unwrap_err();
        assert_eq!(
            err,
            Error::Exhausted {
                cidr: cidr("10.244.1.0/29"),
                capacity: 6,
                kind: PoolKind::PodAddresses
            }
        );
        assert!(err.to_string().contains("pod addresses"));
    }

    #[test]
    fn ipv6_hands_out_the_last_address_but_not_the_network_address() {
        let mut p = pods(&["fd00::/126"]);
        let got: Vec<IpAddr> = (0..3)
            .map(|i| p.allocate(&key(&format!("c{i}"), "eth0")).unwrap()[0])
            .collect();
        assert_eq!(got, ips(&["fd00::1", "fd00::2", "fd00::3"]));
        assert!(p.allocate(&key("c3", "eth0")).is_err());
    }

    #[test]
    fn allocation_is_idempotent_per_key_and_one_address_per_family() {
        let mut p = pods(&["fd00:10:244:1::/64", "10.244.1.0/24"]);
        let first = p.allocate(&key("c1", "eth0")).unwrap();
        assert_eq!(
            first,
            ips(&["fd00:10:244:1::1", "10.244.1.1"]),
            "configured order"
        );
        assert_eq!(p.allocate(&key("c1", "eth0")).unwrap(), first);
        let second_if = p.allocate(&key("c1", "net1")).unwrap();
        assert_eq!(second_if, ips(&["fd00:10:244:1::2", "10.244.1.2"]));
        assert_eq!(p.allocated(), 2);
        assert_eq!((p.used(Family::V4), p.used(Family::V6)), (2, 2));
        assert_eq!(p.get(&key("c1", "eth0")), Some(first.as_slice()));
        assert_eq!(p.owner(ip("10.244.1.2")), Some(&key("c1", "net1")));
    }

    #[test]
    fn released_addresses_come_back_only_after_the_rest_of_the_range() {
        let mut p = pods(&["10.244.1.0/29"]);
        for c in ["a", "b", "c"] {
            p.allocate(&key(c, "eth0")).unwrap();
        }
        assert_eq!(p.release(&key("a", "eth0")), Some(ips(&["10.244.1.1"])));
        assert_eq!(p.release(&key("a", "eth0")), None);
        let next: Vec<IpAddr> = ["d", "e", "f", "g"]
            .iter()
            .map(|c| p.allocate(&key(c, "eth0")).unwrap()[0])
            .collect();
        assert_eq!(
            next,
            ips(&["10.244.1.4", "10.244.1.5", "10.244.1.6", "10.244.1.1"])
        );
    }

    #[test]
    fn invalid_keys_are_rejected() {
        let mut p = pods(&["10.244.1.0/24"]);
        assert!(matches!(
            p.allocate(&key("", "eth0")),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            p.allocate(&key("c1", "")),
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            p.restore(key("", "eth0"), ips(&["10.244.1.5"])),
            Err(Error::InvalidKey { .. })
        ));
        assert_eq!(p.allocated(), 0);
    }

    #[test]
    fn release_container_frees_every_interface_of_that_container_only() {
        let mut p = pods(&["10.244.1.0/24"]);
        for (c, i) in [
            ("c1", "eth0"),
            ("c1", "net1"),
            ("c10", "eth0"),
            ("c0", "eth0"),
        ] {
            p.allocate(&key(c, i)).unwrap();
        }
        let freed = p.release_container("c1");
        assert_eq!(
            freed,
            vec![
                (key("c1", "eth0"), ips(&["10.244.1.1"])),
                (key("c1", "net1"), ips(&["10.244.1.2"]))
            ]
        );
        let left: Vec<&AttachmentKey> = p.allocations().map(|(k, _)| k).collect();
        assert_eq!(left, [&key("c0", "eth0"), &key("c10", "eth0")]);
        assert!(p.release_container("nope").is_empty());
    }

    #[test]
    fn retain_frees_attachments_the_runtime_no_longer_has() {
        let mut p = pods(&["10.244.1.0/24", "fd00::/64"]);
        for c in ["a", "b", "c"] {
            p.allocate(&key(c, "eth0")).unwrap();
        }
        let freed = p.retain(|k| k.container_id != "b");
        assert_eq!(
            freed,
            vec![(key("b", "eth0"), ips(&["10.244.1.2", "fd00::2"]))]
        );
        assert_eq!(p.allocated(), 2);
        assert_eq!(p.used(Family::V6), 2);
    }

    #[test]
    fn restore_validates_every_address() {
        let mut p = pods(&["10.244.1.0/24", "fd00::/64"]);
        p.restore(key("held", "eth0"), ips(&["10.244.1.9", "fd00::9"]))
            .unwrap();
        let k = || key("new", "eth0");
        let cases: Vec<(Vec<IpAddr>, Error)> = vec![
            (vec![], Error::NoAddresses { key: k() }),
            (
                ips(&["10.244.2.5"]),
                Error::AddressOutsideNode {
                    ip: ip("10.244.2.5"),
                },
            ),
            (
                ips(&["fd01::5"]),
                Error::AddressOutsideNode { ip: ip("fd01::5") },
            ),
            (
                ips(&["10.244.1.0"]),
                Error::AddressNotAssignable {
                    ip: ip("10.244.1.0"),
                    node_cidr: cidr("10.244.1.0/24"),
                    reason: "network address",
                },
            ),
            (
                ips(&["10.244.1.255"]),
                Error::AddressNotAssignable {
                    ip: ip("10.244.1.255"),
                    node_cidr: cidr("10.244.1.0/24"),
                    reason: "last (broadcast) address",
                },
            ),
            (
                ips(&["fd00::"]),
                Error::AddressNotAssignable {
                    ip: ip("fd00::"),
                    node_cidr: cidr("fd00::/64"),
                    reason: "network address",
                },
            ),
            (
                ips(&["10.244.1.5", "10.244.1.6"]),
                Error::DuplicateFamily { family: Family::V4 },
            ),
            (
                ips(&["10.244.1.5", "fd00::9"]),
                Error::AddressInUse {
                    ip: ip("fd00::9"),
                    owner: key("held", "eth0"),
                },
            ),
        ];
        for (input, expect) in cases {
            assert_eq!(p.restore(k(), input.clone()), Err(expect), "{input:?}");
        }
        assert_eq!(p.allocated(), 1, "failed restores change nothing");
        assert_eq!((p.used(Family::V4), p.used(Family::V6)), (1, 1));
    }

    #[test]
    fn restore_of_an_existing_key_is_idempotent_only_for_the_same_addresses() {
        let mut p = pods(&["10.244.1.0/24", "fd00::/64"]);
        p.restore(key("c", "eth0"), ips(&["fd00::7", "10.244.1.7"]))
            .unwrap();
        assert_eq!(
            p.get(&key("c", "eth0")),
            Some(ips(&["10.244.1.7", "fd00::7"]).as_slice()),
            "configured order"
        );
        p.restore(key("c", "eth0"), ips(&["10.244.1.7", "fd00::7"]))
            .unwrap();
        assert_eq!(
            p.restore(key("c", "eth0"), ips(&["10.244.1.8"])),
            Err(Error::AttachmentExists {
                key: key("c", "eth0"),
                existing: ips(&["10.244.1.7", "fd00::7"])
            })
        );
        assert_eq!(p.used(Family::V4), 1);
    }

    #[test]
    fn restore_continues_after_the_highest_address_unless_told_otherwise() {
        let mut p = pods(&["10.244.1.0/24"]);
        p.restore(key("a", "eth0"), ips(&["10.244.1.20"])).unwrap();
        p.restore(key("b", "eth0"), ips(&["10.244.1.3"])).unwrap();
        assert_eq!(p.last_allocated(Family::V4), Some(ip("10.244.1.20")));
        assert_eq!(
            p.allocate(&key("c", "eth0")).unwrap(),
            ips(&["10.244.1.21"])
        );
        p.resume_after(ip("10.244.1.1")).unwrap();
        assert_eq!(p.allocate(&key("d", "eth0")).unwrap(), ips(&["10.244.1.2"]));
        assert_eq!(p.allocate(&key("e", "eth0")).unwrap(), ips(&["10.244.1.4"]));
        assert!(matches!(
            p.resume_after(ip("10.244.1.255")),
            Err(Error::AddressNotAssignable { .. })
        ));
        assert!(matches!(
            p.resume_after(ip("fd00::1")),
            Err(Error::AddressOutsideNode { .. })
        ));
    }

    #[test]
    fn a_partially_restored_dual_stack_attachment_keeps_its_families() {
        let mut p = pods(&["10.244.1.0/24", "fd00::/64"]);
        p.restore(key("old", "eth0"), ips(&["10.244.1.4"])).unwrap();
        assert_eq!(
            p.allocate(&key("old", "eth0")).unwrap(),
            ips(&["10.244.1.4"])
        );
        assert_eq!(p.release(&key("old", "eth0")), Some(ips(&["10.244.1.4"])));
        assert_eq!((p.used(Family::V4), p.used(Family::V6)), (0, 0));
    }

    #[test]
    fn dual_stack_allocation_is_all_or_nothing() {
        let mut p = pods(&["10.244.1.0/24", "fd00::/127"]);
        assert_eq!(
            p.allocate(&key("a", "eth0")).unwrap(),
            ips(&["10.244.1.1", "fd00::1"])
        );
        let err = p.allocate(&key("b", "eth0")).unwrap_err();
        assert!(
            matches!(err, Error::Exhausted { cidr: c, .. } if c == cidr("fd00::/127")),
            "{err}"
        );
        assert_eq!(p.used(Family::V4), 1);
        assert_eq!(p.get(&key("b", "eth0")), None);
        p.release(&key("a", "eth0"));
        // IPv4 continues after .1 as if the failed call never happened.
        assert_eq!(
            p.allocate(&key("c", "eth0")).unwrap(),
            ips(&["10.244.1.2", "fd00::1"])
        );
    }

    #[test]
    fn a_whole_ipv6_slash_64_stays_sparse() {
        let mut p = pods(&["fd00:10:244:1::/64"]);
        p.resume_after(ip("fd00:10:244:1:ffff:ffff:ffff:fffe"))
            .unwrap();
        assert_eq!(
            p.allocate(&key("a", "eth0")).unwrap(),
            ips(&["fd00:10:244:1:ffff:ffff:ffff:ffff"])
        );
        assert_eq!(
            p.allocate(&key("b", "eth0")).unwrap(),
            ips(&["fd00:10:244:1::1"])
        );
        assert_eq!(
            p.range(Family::V6).map(|r| r.pool.free_fragments()),
            Some(1)
        );
    }
}

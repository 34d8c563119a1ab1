//! Cluster CIDR → node CIDRs: what the route controller hands to each Node
//! as `spec.podCIDRs`.
//!
//! A [`ClusterAllocator`] carves one cluster CIDR of one family into node
//! CIDRs of a fixed mask size; a [`DualStackClusterAllocator`] holds one per
//! family and hands a node one CIDR of each, all or nothing. Node CIDR `i`
//! is slot `i` of a [`Pool`], so the first node CIDR (e.g. `10.244.0.0/24`)
//! is handed out like any other, as Kubernetes does.

use crate::cidr::{Cidr, Family, from_u128, pow2_saturating, shl, shr};
use crate::error::{Error, PoolKind, Result};
use crate::pool::{Pool, Taken};

/// One cluster CIDR of one family carved into node CIDRs of one size.
#[derive(Debug, Clone)]
pub struct ClusterAllocator {
    cluster: Cidr,
    node_prefix_len: u8,
    /// Host bits of a node CIDR: slot `i` starts at `cluster + (i << shift)`.
    shift: u8,
    pool: Pool,
    reserved: Vec<Cidr>,
}

impl ClusterAllocator {
    /// Node CIDRs of length `node_prefix_len` (e.g. 24 or 64) from
    /// `cluster`. The mask size must be at least the cluster's prefix length
    /// and at most the address length.
    pub fn new(cluster: Cidr, node_prefix_len: u8) -> Result<ClusterAllocator> {
        let bits = cluster.family().bits();
        if node_prefix_len < cluster.prefix_len() || node_prefix_len > bits {
            return Err(Error::InvalidNodePrefixLength {
                cluster,
                node_prefix_len,
            });
        }
        let slots = pow2_saturating(node_prefix_len - cluster.prefix_len());
        // 2^128 slots saturate to u128::MAX, which is exactly the last slot.
        let last_slot = if slots == u128::MAX {
            u128::MAX
        } else {
            slots - 1
        };
        Ok(ClusterAllocator {
            cluster,
            node_prefix_len,
            shift: bits - node_prefix_len,
            pool: Pool::new(0, last_slot),
            reserved: Vec::new(),
        })
    }

    /// The cluster CIDR.
    pub fn cluster(&self) -> Cidr {
        self.cluster
    }

    /// The mask size of the node CIDRs.
    pub fn node_prefix_len(&self) -> u8 {
        self.node_prefix_len
    }

    /// The family of the cluster CIDR.
    pub fn family(&self) -> Family {
        self.cluster.family()
    }

    /// How many node CIDRs can be handed out in total: all of them minus
    /// the reserved ones (saturating at `u128::MAX`).
    pub fn capacity(&self) -> u128 {
        self.pool.capacity()
    }

    /// How many node CIDRs are held (allocated or occupied).
    pub fn used(&self) -> u128 {
        self.pool.used()
    }

    /// How many node CIDRs are still free.
    pub fn free(&self) -> u128 {
        self.capacity().saturating_sub(self.used())
    }

    /// The ranges given to [`ClusterAllocator::reserve`] that overlap the
    /// cluster CIDR, in the order given.
    pub fn reserved(&self) -> &[Cidr] {
        &self.reserved
    }

    /// Never hand out a node CIDR that overlaps `range` (for example a
    /// service CIDR that overlaps the cluster CIDR). A range that does not
    /// overlap the cluster CIDR, or is of the other family, changes nothing.
    /// Fails, changing nothing, when a node CIDR in use overlaps it: reserve
    /// before occupying.
    pub fn reserve(&mut self, range: Cidr) -> Result<()> {
        if !range.overlaps(&self.cluster) {
            return Ok(());
        }
        let base = self.cluster.first_u128();
        let lo = range.first_u128().max(base);
        let hi = range.last_u128().min(self.cluster.last_u128());
        let (first, last) = (shr(lo - base, self.shift), shr(hi - base, self.shift));
        self.pool
            .reserve(first, last)
            .map_err(|slot| Error::ReservedRangeInUse {
                range,
                node_cidr: self.cidr_of(slot),
            })?;
        self.reserved.push(range);
        Ok(())
    }

    /// Records `node_cidr` as held, for recovery after a restart or for a
    /// node whose CIDR was set elsewhere. [`Error::AlreadyOccupied`] means it
    /// is already held, which a recovering caller can treat as success.
    /// Allocation then continues after the highest CIDR occupied so far
    /// unless [`ClusterAllocator::resume_after`] says otherwise.
    pub fn occupy(&mut self, node_cidr: Cidr) -> Result<()> {
        let slot = self.slot_of(node_cidr)?;
        self.pool.occupy(slot).map_err(|taken| match taken {
            Taken::Used => Error::AlreadyOccupied { cidr: node_cidr },
            Taken::Reserved => Error::Reserved {
                cidr: node_cidr,
                reserved: self
                    .reserved
                    .iter()
                    .copied()
                    .find(|r| r.overlaps(&node_cidr))
                    .unwrap_or(node_cidr),
            },
        })
    }

    /// The next free node CIDR after the last one handed out, wrapping
    /// around: a CIDR just released is handed out again only after every
    /// other free one.
    pub fn allocate(&mut self) -> Result<Cidr> {
        match self.pool.allocate() {
            Some(slot) => Ok(self.cidr_of(slot)),
            None => Err(Error::Exhausted {
                cidr: self.cluster,
                capacity: self.capacity(),
                kind: PoolKind::NodeCidrs,
            }),
        }
    }

    /// Frees a held node CIDR; false when it was not held here (free,
    /// reserved, of another size or outside the cluster CIDR).
    pub fn release(&mut self, node_cidr: Cidr) -> bool {
        self.slot_of(node_cidr)
            .is_ok_and(|slot| self.pool.release(slot))
    }

    /// Whether `node_cidr` is held (allocated or occupied).
    pub fn is_occupied(&self, node_cidr: Cidr) -> bool {
        self.slot_of(node_cidr)
            .is_ok_and(|slot| self.pool.is_used(slot))
    }

    /// The node CIDR after which the next allocation searches: the last one
    /// allocated, or the highest one occupied during recovery.
    pub fn last_allocated(&self) -> Option<Cidr> {
        self.pool.last_allocated().map(|slot| self.cidr_of(slot))
    }

    /// Continue round-robin after `node_cidr`, e.g. with a position saved
    /// before a restart, so that allocation carries on exactly as if the
    /// process had not restarted.
    pub fn resume_after(&mut self, node_cidr: Cidr) -> Result<()> {
        let slot = self.slot_of(node_cidr)?;
        self.pool.resume_after(slot);
        Ok(())
    }

    fn slot_of(&self, node_cidr: Cidr) -> Result<u128> {
        if node_cidr.family() != self.family() {
            return Err(Error::OutsideCluster {
                cidr: node_cidr,
                cluster: self.cluster,
            });
        }
        if node_cidr.prefix_len() != self.node_prefix_len {
            return Err(Error::WrongPrefixLength {
                cidr: node_cidr,
                expected: self.node_prefix_len,
            });
        }
        if !self.cluster.contains_cidr(&node_cidr) {
            return Err(Error::OutsideCluster {
                cidr: node_cidr,
                cluster: self.cluster,
            });
        }
        Ok(shr(
            node_cidr.first_u128() - self.cluster.first_u128(),
            self.shift,
        ))
    }

    fn cidr_of(&self, slot: u128) -> Cidr {
        let addr = from_u128(
            self.family(),
            self.cluster.first_u128() | shl(slot, self.shift),
        );
        // The slot is inside the pool, so the address is a network of the
        // node prefix length inside the cluster CIDR.
        Cidr::containing(addr, self.node_prefix_len).unwrap_or(self.cluster)
    }
}

/// One [`ClusterAllocator`] per configured family (one or two), handing each
/// node one CIDR of every family at once.
#[derive(Debug, Clone)]
pub struct DualStackClusterAllocator {
    allocators: Vec<ClusterAllocator>,
}

impl DualStackClusterAllocator {
    /// At least one and at most one allocator per family. The order given
    /// is the order of [`DualStackClusterAllocator::allocate`]'s result,
    /// which is the order of a Node's `spec.podCIDRs` (the first is primary).
    pub fn new(families: Vec<ClusterAllocator>) -> Result<DualStackClusterAllocator> {
        if families.is_empty() {
            return Err(Error::NoFamilies);
        }
        for (i, a) in families.iter().enumerate() {
            if families[..i].iter().any(|b| b.family() == a.family()) {
                return Err(Error::DuplicateFamily { family: a.family() });
            }
        }
        Ok(DualStackClusterAllocator {
            allocators: families,
        })
    }

    /// The allocators, in configured order.
    pub fn allocators(&self) -> &[ClusterAllocator] {
        &self.allocators
    }

    /// The allocator of `family`, if configured.
    pub fn get(&self, family: Family) -> Option<&ClusterAllocator> {
        self.allocators.iter().find(|a| a.family() == family)
    }

    /// The configured families, in configured order.
    pub fn families(&self) -> Vec<Family> {
        self.allocators
            .iter()
            .map(ClusterAllocator::family)
            .collect()
    }

    /// One node CIDR per family, in configured order. All or nothing: when
    /// any family is exhausted nothing is held and the round-robin positions
    /// are as before the call.
    pub fn allocate(&mut self) -> Result<Vec<Cidr>> {
        let mut taken = Vec::with_capacity(self.allocators.len());
        for i in 0..self.allocators.len() {
            let before = self.allocators[i].pool.last_allocated();
            match self.allocators[i].allocate() {
                Ok(cidr) => taken.push((cidr, before)),
                Err(e) => {
                    for (a, (cidr, before)) in self.allocators.iter_mut().zip(taken) {
                        if let Ok(slot) = a.slot_of(cidr) {
                            a.pool.undo_allocate(slot, before);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(taken.into_iter().map(|(cidr, _)| cidr).collect())
    }

    /// [`ClusterAllocator::reserve`] on the allocator of the range's family;
    /// a range of a family not configured changes nothing.
    pub fn reserve(&mut self, range: Cidr) -> Result<()> {
        match self.get_mut(range.family()) {
            Some(a) => a.reserve(range),
            None => Ok(()),
        }
    }

    /// [`ClusterAllocator::occupy`] on the allocator of the CIDR's family.
    pub fn occupy(&mut self, node_cidr: Cidr) -> Result<()> {
        self.get_mut_or_err(node_cidr)?.occupy(node_cidr)
    }

    /// Occupies a node's CIDRs (e.g. its `spec.podCIDRs`) all or nothing:
    /// on any error, other than a CIDR already held, the ones this call
    /// occupied are released again. CIDRs already held count as success.
    pub fn occupy_all(&mut self, node_cidrs: &[Cidr]) -> Result<()> {
        let positions: Vec<Option<u128>> = self
            .allocators
            .iter()
            .map(|a| a.pool.last_allocated())
            .collect();
        let mut done: Vec<Cidr> = Vec::new();
        for &cidr in node_cidrs {
            match self.occupy(cidr) {
                Ok(()) => done.push(cidr),
                Err(Error::AlreadyOccupied { .. }) => {}
                Err(e) => {
                    for cidr in done {
                        self.release(cidr);
                    }
                    for (a, position) in self.allocators.iter_mut().zip(positions) {
                        a.pool.set_last_allocated(position);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// [`ClusterAllocator::release`] on the allocator of the CIDR's family.
    pub fn release(&mut self, node_cidr: Cidr) -> bool {
        self.get_mut(node_cidr.family())
            .is_some_and(|a| a.release(node_cidr))
    }

    /// Whether `node_cidr` is held.
    pub fn is_occupied(&self, node_cidr: Cidr) -> bool {
        self.get(node_cidr.family())
            .is_some_and(|a| a.is_occupied(node_cidr))
    }

    /// [`ClusterAllocator::resume_after`] on the allocator of the CIDR's family.
    pub fn resume_after(&mut self, node_cidr: Cidr) -> Result<()> {
        self.get_mut_or_err(node_cidr)?.resume_after(node_cidr)
    }

    /// [`ClusterAllocator::last_allocated`] of `family`.
    pub fn last_allocated(&self, family: Family) -> Option<Cidr> {
        self.get(family).and_then(ClusterAllocator::last_allocated)
    }

    /// Capacity of `family`; 0 when not configured.
    pub fn capacity(&self, family: Family) -> u128 {
        self.get(family).map_or(0, ClusterAllocator::capacity)
    }

    /// Node CIDRs of `family` held; 0 when not configured.
    pub fn used(&self, family: Family) -> u128 {
        self.get(family).map_or(0, ClusterAllocator::used)
    }

    fn get_mut(&mut self, family: Family) -> Option<&mut ClusterAllocator> {
        self.allocators.iter_mut().find(|a| a.family() == family)
    }

    fn get_mut_or_err(&mut self, node_cidr: Cidr) -> Result<&mut ClusterAllocator> {
        let family = node_cidr.family();
        self.get_mut(family)
            .ok_or_else(|| Error::FamilyNotConfigured {
                family,
                value: node_cidr.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn alloc(cluster: &str, len: u8) -> ClusterAllocator {
        ClusterAllocator::new(cidr(cluster), len).unwrap()
    }

    fn take(a: &mut ClusterAllocator, n: usize) -> Vec<String> {
        (0..n).map(|_| a.allocate().unwrap().to_string()).collect()
    }

    #[test]
    fn mask_sizes_outside_cluster_to_address_length_are_rejected() {
        let cases = [
            ("10.244.0.0/16", 24, true),
            ("10.244.0.0/16", 16, true),
            ("10.244.0.0/16", 32, true),
            ("10.244.0.0/16", 15, false),
            ("10.244.0.0/16", 33, false),
            ("10.244.0.0/16", 255, false),
            ("fd00:10:244::/56", 64, true),
            ("fd00:10:244::/56", 128, true),
            ("fd00:10:244::/56", 129, false),
            ("::/0", 128, true),
            ("::/0", 0, true),
        ];
        for (cluster, len, ok) in cases {
            let got = ClusterAllocator::new(cidr(cluster), len);
            match got {
                Ok(_) => assert!(ok, "{cluster} /{len} should fail"),
                Err(e) => {
                    assert!(!ok, "{cluster} /{len}: {e}");
                    assert_eq!(
                        e,
                        Error::InvalidNodePrefixLength {
                            cluster: cidr(cluster),
                            node_prefix_len: len
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn capacity_counts_node_cidrs() {
        let cases: [(&str, u8, u128); 5] = [
            ("10.244.0.0/16", 24, 256),
            ("10.244.0.0/16", 16, 1),
            ("fd00:10:244::/56", 64, 256),
            ("fd00::/8", 64, 1 << 56),
            ("::/0", 128, u128::MAX),
        ];
        for (cluster, len, capacity) in cases {
            assert_eq!(alloc(cluster, len).capacity(), capacity, "{cluster} /{len}");
        }
    }

    #[test]
    fn allocation_walks_the_cluster_round_robin() {
        let mut a = alloc("10.244.0.0/22", 24);
        assert_eq!(
            take(&mut a, 3),
            ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24"]
        );
        assert!(a.release(cidr("10.244.1.0/24")));
        assert_eq!(take(&mut a, 2), ["10.244.3.0/24", "10.244.1.0/24"]);
        assert_eq!(
            a.allocate(),
            Err(Error::Exhausted {
                cidr: cidr("10.244.0.0/22"),
                capacity: 4,
                kind: PoolKind::NodeCidrs
            })
        );
        assert_eq!(a.used(), 4);
    }

    #[test]
    fn ipv6_node_cidrs() {
        let mut a = alloc("fd00:10:244::/56", 64);
        assert_eq!(take(&mut a, 2), ["fd00:10:244::/64", "fd00:10:244:1::/64"]);
        a.resume_after(cidr("fd00:10:244:fe::/64")).unwrap();
        assert_eq!(
            take(&mut a, 2),
            ["fd00:10:244:ff::/64", "fd00:10:244:2::/64"]
        );
    }

    #[test]
    fn occupy_reports_each_kind_of_bad_cidr() {
        let mut a = alloc("10.244.0.0/16", 24);
        a.reserve(cidr("10.244.128.0/20")).unwrap();
        a.occupy(cidr("10.244.5.0/24")).unwrap();
        let cases = [
            (
                "10.244.5.0/24",
                Error::AlreadyOccupied {
                    cidr: cidr("10.244.5.0/24"),
                },
            ),
            (
                "10.245.0.0/24",
                Error::OutsideCluster {
                    cidr: cidr("10.245.0.0/24"),
                    cluster: cidr("10.244.0.0/16"),
                },
            ),
            (
                "fd00::/24",
                Error::OutsideCluster {
                    cidr: cidr("fd00::/24"),
                    cluster: cidr("10.244.0.0/16"),
                },
            ),
            (
                "10.244.0.0/25",
                Error::WrongPrefixLength {
                    cidr: cidr("10.244.0.0/25"),
                    expected: 24,
                },
            ),
            (
                "10.0.0.0/8",
                Error::WrongPrefixLength {
                    cidr: cidr("10.0.0.0/8"),
                    expected: 24,
                },
            ),
            (
                "10.244.130.0/24",
                Error::Reserved {
                    cidr: cidr("10.244.130.0/24"),
                    reserved: cidr("10.244.128.0/20"),
                },
            ),
        ];
        for (input, expect) in cases {
            assert_eq!(a.occupy(cidr(input)), Err(expect), "{input}");
        }
        assert_eq!(a.used(), 1, "failed occupies change nothing");
    }

    #[test]
    fn reserved_ranges_are_never_handed_out() {
        // A /29 cluster of /31 node cidrs keeps the arithmetic visible.
        let mut a = alloc("10.0.0.0/29", 31);
        // Partly overlapping the cluster: only 10.0.0.6/31 is reserved.
        a.reserve(cidr("10.0.0.7/32")).unwrap();
        // Covering part of one node cidr reserves all of it.
        a.reserve(cidr("10.0.0.2/32")).unwrap();
        // Outside or of the other family: nothing to do.
        a.reserve(cidr("192.168.0.0/16")).unwrap();
        a.reserve(cidr("fd00::/8")).unwrap();
        assert_eq!(a.reserved(), [cidr("10.0.0.7/32"), cidr("10.0.0.2/32")]);
        assert_eq!(a.capacity(), 2);
        assert_eq!(take(&mut a, 2), ["10.0.0.0/31", "10.0.0.4/31"]);
        assert!(matches!(
            a.allocate(),
            Err(Error::Exhausted { capacity: 2, .. })
        ));
        assert!(
            !a.release(cidr("10.0.0.2/31")),
            "reserved cidrs are not held"
        );
    }

    #[test]
    fn reserving_a_range_in_use_fails_and_changes_nothing() {
        let mut a = alloc("10.244.0.0/16", 24);
        a.occupy(cidr("10.244.3.0/24")).unwrap();
        assert_eq!(
            a.reserve(cidr("10.244.0.0/20")),
            Err(Error::ReservedRangeInUse {
                range: cidr("10.244.0.0/20"),
                node_cidr: cidr("10.244.3.0/24")
            })
        );
        assert_eq!(a.capacity(), 256);
        assert!(a.reserved().is_empty());
        // A cluster-wide reservation covers everything.
        let mut b = alloc("10.244.0.0/16", 24);
        b.reserve(cidr("10.0.0.0/8")).unwrap();
        assert_eq!(b.capacity(), 0);
        assert!(matches!(
            b.allocate(),
            Err(Error::Exhausted { capacity: 0, .. })
        ));
    }

    #[test]
    fn occupy_continues_after_the_highest_recovered_cidr() {
        let mut a = alloc("10.244.0.0/16", 24);
        for c in ["10.244.9.0/24", "10.244.2.0/24", "10.244.4.0/24"] {
            a.occupy(cidr(c)).unwrap();
        }
        assert_eq!(a.last_allocated(), Some(cidr("10.244.9.0/24")));
        assert_eq!(take(&mut a, 1), ["10.244.10.0/24"]);
        assert!(a.is_occupied(cidr("10.244.2.0/24")));
        assert!(!a.is_occupied(cidr("10.244.3.0/24")));
    }

    #[test]
    fn the_largest_cluster_does_not_overflow() {
        let mut a = alloc("::/0", 128);
        assert_eq!(take(&mut a, 2), ["::/128", "::1/128"]);
        a.resume_after(cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/128"))
            .unwrap();
        assert_eq!(
            take(&mut a, 2),
            ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "::2/128"]
        );
        let mut whole = alloc("0.0.0.0/0", 0);
        assert_eq!(take(&mut whole, 1), ["0.0.0.0/0"]);
        assert!(whole.allocate().is_err());
    }

    #[test]
    fn dual_stack_needs_one_or_two_distinct_families() {
        let v4 = || alloc("10.244.0.0/16", 24);
        let v6 = || alloc("fd00:10:244::/56", 64);
        assert_eq!(
            DualStackClusterAllocator::new(vec![]).unwrap_err(),
            Error::NoFamilies
        );
        assert_eq!(
            DualStackClusterAllocator::new(vec![v4(), v4()]).unwrap_err(),
            Error::DuplicateFamily { family: Family::V4 }
        );
        assert_eq!(
            DualStackClusterAllocator::new(vec![v6(), v4(), v6()]).unwrap_err(),
            Error::DuplicateFamily { family: Family::V6 }
        );
        let d = DualStackClusterAllocator::new(vec![v6(), v4()]).unwrap();
        assert_eq!(d.families(), [Family::V6, Family::V4]);
    }

    #[test]
    fn dual_stack_allocation_is_all_or_nothing() {
        let mut d = DualStackClusterAllocator::new(vec![
            alloc("10.244.0.0/16", 24),
            alloc("fd00:10:244::/63", 64),
        ])
        .unwrap();
        assert_eq!(
            d.allocate().unwrap(),
            [cidr("10.244.0.0/24"), cidr("fd00:10:244::/64")]
        );
        assert_eq!(
            d.allocate().unwrap(),
            [cidr("10.244.1.0/24"), cidr("fd00:10:244:1::/64")]
        );
        assert!(matches!(
            d.allocate(),
            Err(Error::Exhausted {
                kind: PoolKind::NodeCidrs,
                ..
            })
        ));
        assert_eq!(
            d.used(Family::V4),
            2,
            "the IPv4 cidr taken before the failure is given back"
        );
        assert!(d.release(cidr("fd00:10:244::/64")));
        // IPv4 continues where it was, as if the failed call never happened.
        assert_eq!(
            d.allocate().unwrap(),
            [cidr("10.244.2.0/24"), cidr("fd00:10:244::/64")]
        );
    }

    #[test]
    fn dual_stack_dispatches_on_family() {
        let mut d = DualStackClusterAllocator::new(vec![alloc("10.244.0.0/16", 24)]).unwrap();
        d.occupy(cidr("10.244.7.0/24")).unwrap();
        assert_eq!(
            d.occupy(cidr("fd00::/64")),
            Err(Error::FamilyNotConfigured {
                family: Family::V6,
                value: "fd00::/64".into()
            })
        );
        assert!(!d.release(cidr("fd00::/64")));
        d.reserve(cidr("fd00::/8")).unwrap();
        assert_eq!((d.capacity(Family::V4), d.used(Family::V4)), (256, 1));
        assert_eq!((d.capacity(Family::V6), d.used(Family::V6)), (0, 0));
        assert!(d.release(cidr("10.244.7.0/24")));
        assert!(!d.is_occupied(cidr("10.244.7.0/24")));
    }

    #[test]
    fn occupy_all_rolls_back_on_error_and_accepts_held_cidrs() {
        let mut d = DualStackClusterAllocator::new(vec![
            alloc("10.244.0.0/16", 24),
            alloc("fd00:10:244::/56", 64),
        ])
        .unwrap();
        d.occupy(cidr("10.244.1.0/24")).unwrap();
        // Already held counts as success.
        d.occupy_all(&[cidr("10.244.1.0/24"), cidr("fd00:10:244:1::/64")])
            .unwrap();
        assert_eq!((d.used(Family::V4), d.used(Family::V6)), (1, 1));
        // A bad second CIDR undoes the first.
        let err = d
            .occupy_all(&[cidr("10.244.2.0/24"), cidr("fd00:10:245::/64")])
            .unwrap_err();
        assert!(matches!(err, Error::OutsideCluster { .. }), "{err}");
        assert!(!d.is_occupied(cidr("10.244.2.0/24")));
        assert!(
            d.is_occupied(cidr("10.244.1.0/24")),
            "cidrs held before the call stay held"
        );
    }
}

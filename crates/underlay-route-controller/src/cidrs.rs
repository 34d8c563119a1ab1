//! Node pod CIDR bookkeeping over the ipam core's allocator: which node holds
//! which CIDRs, what to tell a node whose CIDRs cannot be honoured, and which
//! nodes wait for space. Pure: the Kubernetes adapter applies the decisions.

use crate::nodes::NodeEvent;
use std::collections::{BTreeMap, BTreeSet};
use underlay_ipam::{Cidr, ClusterAllocator, DualStackClusterAllocator, Family};

/// Errors configuring the allocator.
#[derive(Debug, thiserror::Error)]
pub enum CidrConfigError {
    #[error("invalid cluster cidr configuration: {0}")]
    Ipam(#[from] underlay_ipam::Error),
    #[error("no --cluster-cidr given; give one per address family")]
    NoClusterCidr,
}

/// The allocation state.
#[derive(Debug, Clone)]
pub struct CidrAllocator {
    alloc: DualStackClusterAllocator,
    owners: BTreeMap<String, Vec<Cidr>>,
    /// Nodes that need CIDRs and did not get them (exhausted or a failed
    /// write); retried when space frees or on the next resync.
    waiting: BTreeSet<String>,
}

/// The outcome of an allocation attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// Write these CIDRs to the node.
    Assign(Vec<Cidr>),
    /// Nothing left; the event goes to the node (only the first time).
    Exhausted(Option<NodeEvent>),
}

impl CidrAllocator {
    /// One cluster CIDR per family; each family's node prefix length;
    /// reserved ranges (e.g. the service CIDR) are never handed out.
    pub fn new(
        cluster_cidrs: &[Cidr],
        mask_v4: u8,
        mask_v6: u8,
        reserved: &[Cidr],
    ) -> Result<CidrAllocator, CidrConfigError> {
        if cluster_cidrs.is_empty() {
            return Err(CidrConfigError::NoClusterCidr);
        }
        let allocators = cluster_cidrs
            .iter()
            .map(|c| {
                let mask = match c.family() {
                    Family::V4 => mask_v4,
                    Family::V6 => mask_v6,
                };
                ClusterAllocator::new(*c, mask)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut alloc = DualStackClusterAllocator::new(allocators)?;
        for r in reserved {
            alloc.reserve(*r)?;
        }
        Ok(CidrAllocator {
            alloc,
            owners: BTreeMap::new(),
            waiting: BTreeSet::new(),
        })
    }

    pub fn families(&self) -> Vec<Family> {
        self.alloc.families()
    }

    /// `(family, used, capacity)` per family, for metrics.
    pub fn usage(&self) -> Vec<(Family, u128, u128)> {
        self.alloc
            .families()
            .into_iter()
            .map(|f| (f, self.alloc.used(f), self.alloc.capacity(f)))
            .collect()
    }

    pub fn owned_by(&self, node: &str) -> Option<&[Cidr]> {
        self.owners.get(node).map(Vec::as_slice)
    }

    /// Records a node's existing `spec.podCIDRs`. Returns the CIDRs it now
    /// holds (valid ones the allocator accepted) and events for the rest; an
    /// unusable CIDR never stops the controller.
    pub fn occupy(&mut self, node: &str, pod_cidrs: &[String]) -> (Vec<Cidr>, Vec<NodeEvent>) {
        let mut held = Vec::new();
        let mut events = Vec::new();
        for raw in pod_cidrs {
            let cidr: Cidr = match raw.parse() {
                Ok(c) => c,
                Err(e) => {
                    events.push(NodeEvent::warning(
                        node,
                        "InvalidPodCIDR",
                        format!("pod cidr {raw:?} is not a valid cidr ({e}); the node gets no route for it"),
                    ));
                    continue;
                }
            };
            if self.owners.get(node).is_some_and(|c| c.contains(&cidr)) {
                held.push(cidr);
                continue;
            }
            if let Some((other, _)) = self.owners.iter().find(|(_, cs)| cs.contains(&cidr)) {
                events.push(NodeEvent::warning(
                    node,
                    "PodCIDRConflict",
                    format!("pod cidr {cidr} is already held by node {other}; one of the two nodes must be recreated"),
                ));
                continue;
            }
            match self.alloc.occupy(cidr) {
                Ok(()) | Err(underlay_ipam::Error::AlreadyOccupied { .. }) => held.push(cidr),
                Err(underlay_ipam::Error::FamilyNotConfigured { .. }) => {
                    // A family this controller does not manage: not an error,
                    // but it will not get a route either.
                    events.push(NodeEvent::warning(
                        node,
                        "PodCIDRNotManaged",
                        format!("pod cidr {cidr} is of a family without a --cluster-cidr; it is left alone"),
                    ));
                }
                Err(e) => events.push(NodeEvent::warning(
                    node,
                    "PodCIDRNotManaged",
                    format!("pod cidr {cidr} cannot be recorded: {e}"),
                )),
            }
        }
        if !held.is_empty() {
            self.owners
                .entry(node.to_string())
                .or_default()
                .extend(held.iter().copied());
            self.waiting.remove(node);
        }
        (held, events)
    }

    /// Allocates one CIDR per configured family for `node`.
    pub fn allocate(&mut self, node: &str) -> Allocation {
        if let Some(c) = self.owners.get(node) {
            return Allocation::Assign(c.clone());
        }
        match self.alloc.allocate() {
            Ok(cidrs) => {
                self.owners.insert(node.to_string(), cidrs.clone());
                self.waiting.remove(node);
                Allocation::Assign(cidrs)
            }
            Err(e) => {
                let first = self.waiting.insert(node.to_string());
                Allocation::Exhausted(first.then(|| {
                    NodeEvent::warning(
                        node,
                        "CIDRNotAvailable",
                        format!("no pod cidr available: {e}; the node will get one when another node leaves"),
                    )
                }))
            }
        }
    }

    /// Gives back what a failed write to the node would have assigned; the
    /// node waits for a retry.
    pub fn undo(&mut self, node: &str) {
        if let Some(cidrs) = self.owners.remove(node) {
            for c in cidrs {
                self.alloc.release(c);
            }
        }
        self.waiting.insert(node.to_string());
    }

    /// Releases a deleted node's CIDRs. Returns whether anything was freed.
    pub fn release(&mut self, node: &str) -> bool {
        self.waiting.remove(node);
        match self.owners.remove(node) {
            Some(cidrs) => {
                for c in cidrs {
                    self.alloc.release(c);
                }
                true
            }
            None => false,
        }
    }

    /// Nodes waiting for CIDRs.
    pub fn waiting(&self) -> Vec<String> {
        self.waiting.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn small() -> CidrAllocator {
        // A /22 of /24s with one reserved: three node CIDRs.
        CidrAllocator::new(&[cidr("10.244.0.0/22")], 24, 64, &[cidr("10.244.3.0/24")]).unwrap()
    }

    #[test]
    fn existing_cidrs_are_occupied_before_anything_is_allocated() {
        let mut a = small();
        let (held, events) = a.occupy("old", &["10.244.0.0/24".into()]);
        assert_eq!(held, vec![cidr("10.244.0.0/24")]);
        assert!(events.is_empty());
        let Allocation::Assign(c) = a.allocate("new") else {
            panic!()
        };
        assert_ne!(
            c,
            vec![cidr("10.244.0.0/24")],
            "never hands out a CIDR in use"
        );
        assert_ne!(
            c,
            vec![cidr("10.244.3.0/24")],
            "never hands out a reserved range"
        );
    }

    #[test]
    fn malformed_foreign_and_conflicting_cidrs_become_events() {
        let mut a = small();
        a.occupy("a", &["10.244.0.0/24".into()]);
        let (held, events) = a.occupy(
            "b",
            &[
                "banana".into(),
                "10.244.0.0/24".into(),
                "fd00::/64".into(),
                "192.168.0.0/24".into(),
            ],
        );
        assert!(held.is_empty());
        let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "InvalidPodCIDR",
                "PodCIDRConflict",
                "PodCIDRNotManaged",
                "PodCIDRNotManaged"
            ]
        );
    }

    #[test]
    fn exhaustion_warns_once_and_a_release_makes_room() {
        let mut a = small();
        for n in ["a", "b", "c"] {
            assert!(matches!(a.allocate(n), Allocation::Assign(_)));
        }
        let Allocation::Exhausted(Some(event)) = a.allocate("d") else {
            panic!()
        };
        assert_eq!(event.reason, "CIDRNotAvailable");
        assert_eq!(a.allocate("d"), Allocation::Exhausted(None));
        assert_eq!(a.waiting(), ["d"]);
        assert!(a.release("b"));
        assert!(matches!(a.allocate("d"), Allocation::Assign(_)));
        assert!(a.waiting().is_empty());
    }

    #[test]
    fn dual_stack_allocates_one_per_family_and_reallocation_is_idempotent() {
        let mut a = CidrAllocator::new(
            &[cidr("10.244.0.0/16"), cidr("fd00:10:244::/56")],
            24,
            64,
            &[],
        )
        .unwrap();
        let Allocation::Assign(c) = a.allocate("n") else {
            panic!()
        };
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].family(), Family::V4);
        assert_eq!(c[1].family(), Family::V6);
        assert_eq!(a.allocate("n"), Allocation::Assign(c));
        assert_eq!(a.usage().iter().map(|u| u.1).collect::<Vec<_>>(), [1, 1]);
    }

    #[test]
    fn a_failed_write_gives_the_cidrs_back() {
        let mut a = small();
        let Allocation::Assign(c) = a.allocate("n") else {
            panic!()
        };
        a.undo("n");
        assert_eq!(a.waiting(), ["n"]);
        assert_eq!(a.usage()[0].1, 0);
        // Round robin moves on, but the CIDR is free again.
        let (held, _) = a.occupy("m", &[c[0].to_string()]);
        assert_eq!(held, c);
    }
}

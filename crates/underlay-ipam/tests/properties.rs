//! Property tests of the public API: the allocators against a naive
//! reference model, the invariants the rest of underlay relies on, and no
//! panic on any input.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use underlay_ipam::{
    AttachmentKey, Cidr, ClusterAllocator, DualStackClusterAllocator, Error, Family, PodAllocator,
};

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------
// Reference model: round-robin over an explicit list, written the slow and
// obvious way.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Model<T> {
    values: Vec<T>,
    used: BTreeSet<usize>,
    reserved: BTreeSet<usize>,
    last: Option<usize>,
}

impl<T: Copy + PartialEq> Model<T> {
    fn new(values: Vec<T>) -> Self {
        Model {
            values,
            used: BTreeSet::new(),
            reserved: BTreeSet::new(),
            last: None,
        }
    }

    fn index(&self, value: T) -> Option<usize> {
        self.values.iter().position(|&v| v == value)
    }

    fn allocate(&mut self) -> Option<T> {
        let start = self.last.map_or(0, |l| (l + 1) % self.values.len());
        let n = self.values.len();
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|i| !self.used.contains(i) && !self.reserved.contains(i))?;
        self.used.insert(i);
        self.last = Some(i);
        Some(self.values[i])
    }

    fn release(&mut self, value: T) -> bool {
        self.index(value).is_some_and(|i| self.used.remove(&i))
    }

    fn capacity(&self) -> usize {
        self.values.len() - self.reserved.len()
    }
}

// ---------------------------------------------------------------------------
// Cluster allocator
// ---------------------------------------------------------------------------

/// 16 node CIDRs of each family, enumerated by hand rather than computed.
fn node_cidrs(family: Family) -> (Cidr, Vec<Cidr>) {
    match family {
        Family::V4 => (
            cidr("10.0.0.0/20"),
            (0..16).map(|i| cidr(&format!("10.0.{i}.0/24"))).collect(),
        ),
        Family::V6 => (
            cidr("fd00::/60"),
            (0..16)
                .map(|i| cidr(&format!("fd00:0:0:{i:x}::/64")))
                .collect(),
        ),
    }
}

#[derive(Debug, Clone)]
enum ClusterOp {
    Allocate,
    Release(usize),
    Occupy(usize),
    ResumeAfter(usize),
}

fn cluster_op() -> impl Strategy<Value = ClusterOp> {
    prop_oneof![
        4 => Just(ClusterOp::Allocate),
        2 => (0usize..16).prop_map(ClusterOp::Release),
        1 => (0usize..16).prop_map(ClusterOp::Occupy),
        1 => (0usize..16).prop_map(ClusterOp::ResumeAfter),
    ]
}

fn family() -> impl Strategy<Value = Family> {
    prop_oneof![Just(Family::V4), Just(Family::V6)]
}

/// Reserved ranges over the 16 node CIDRs: (first index, log2 of length).
fn reservations() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((0usize..16, 0u8..3), 0..3)
}

/// The CIDR covering `2^log_len` node CIDRs starting at (aligned) `index`.
fn reservation_cidr(nodes: &[Cidr], index: usize, log_len: u8) -> Cidr {
    let first = nodes[index & !((1 << log_len) - 1)];
    Cidr::containing(first.addr(), first.prefix_len() - log_len).unwrap()
}

fn new_cluster(family: Family, reserve: &[(usize, u8)]) -> (ClusterAllocator, Model<Cidr>) {
    let (cluster, nodes) = node_cidrs(family);
    let mut a = ClusterAllocator::new(cluster, nodes[0].prefix_len()).unwrap();
    let mut m = Model::new(nodes.clone());
    for &(index, log_len) in reserve {
        let range = reservation_cidr(&nodes, index, log_len);
        a.reserve(range).unwrap();
        for (i, n) in nodes.iter().enumerate() {
            if n.overlaps(&range) {
                m.reserved.insert(i);
            }
        }
    }
    (a, m)
}

fn apply_cluster(a: &mut ClusterAllocator, op: &ClusterOp) -> String {
    let nodes = node_cidrs(a.family()).1;
    match *op {
        ClusterOp::Allocate => format!("{:?}", a.allocate()),
        ClusterOp::Release(i) => format!("{:?}", a.release(nodes[i])),
        ClusterOp::Occupy(i) => format!("{:?}", a.occupy(nodes[i])),
        ClusterOp::ResumeAfter(i) => format!("{:?}", a.resume_after(nodes[i])),
    }
}

proptest! {
    /// Every answer of the cluster allocator is the one the obvious
    /// round-robin over an explicit list gives.
    #[test]
    fn cluster_allocator_matches_the_reference_model(
        family in family(),
        reserve in reservations(),
        ops in proptest::collection::vec(cluster_op(), 0..80),
    ) {
        let (mut a, mut m) = new_cluster(family, &reserve);
        prop_assert_eq!(a.capacity(), m.capacity() as u128);
        for op in &ops {
            match *op {
                ClusterOp::Allocate => {
                    let got = a.allocate().ok();
                    prop_assert_eq!(got, m.allocate());
                }
                ClusterOp::Release(i) => {
                    let c = m.values[i];
                    prop_assert_eq!(a.release(c), m.release(c));
                }
                ClusterOp::Occupy(i) => {
                    let c = m.values[i];
                    let got = a.occupy(c);
                    if m.reserved.contains(&i) {
                        prop_assert!(matches!(got, Err(Error::Reserved { .. })), "{:?}", got);
                    } else if m.used.contains(&i) {
                        prop_assert_eq!(got, Err(Error::AlreadyOccupied { cidr: c }));
                    } else {
                        prop_assert_eq!(got, Ok(()));
                        m.used.insert(i);
                        m.last = Some(m.last.map_or(i, |l| l.max(i)));
                    }
                }
                ClusterOp::ResumeAfter(i) => {
                    a.resume_after(m.values[i]).unwrap();
                    m.last = Some(i);
                }
            }
            prop_assert_eq!(a.used(), m.used.len() as u128);
            for (i, &c) in m.values.iter().enumerate() {
                prop_assert_eq!(a.is_occupied(c), m.used.contains(&i));
            }
        }
    }

    /// Nothing held is handed out again, nothing reserved is handed out at
    /// all, and allocation fails exactly when capacity is reached.
    #[test]
    fn cluster_allocator_hands_out_each_free_cidr_once_and_exhausts_at_capacity(
        v6 in any::<bool>(),
        cluster_prefix in 0u8..=24,
        extra_bits in 0u8..=9,
        base in any::<u128>(),
        reserved in proptest::collection::vec((any::<u128>(), 0u8..=128), 0..3),
        occupied in proptest::collection::vec(any::<u128>(), 0..20),
    ) {
        let (addr, bits): (IpAddr, u8) = if v6 {
            (IpAddr::V6(Ipv6Addr::from(base)), 128)
        } else {
            (IpAddr::V4(Ipv4Addr::from(base as u32)), 32)
        };
        let cluster_prefix = cluster_prefix.min(bits);
        let node_prefix = (cluster_prefix + extra_bits).min(bits);
        let cluster = Cidr::containing(addr, cluster_prefix).unwrap();
        let mut a = ClusterAllocator::new(cluster, node_prefix).unwrap();
        let mut reserved_ranges = Vec::new();
        for (r, len) in reserved {
            let r = if v6 { IpAddr::V6(Ipv6Addr::from(r)) } else { IpAddr::V4(Ipv4Addr::from(r as u32)) };
            // Aim the range into the cluster half of the time.
            let r = if len % 2 == 0 { cluster.nth(base % cluster.size().max(1)).unwrap_or(r) } else { r };
            let range = Cidr::containing(r, len.min(bits)).unwrap();
            a.reserve(range).unwrap();
            reserved_ranges.push(range);
        }
        let mut held = BTreeSet::new();
        for o in occupied {
            let addr = cluster.nth(o % cluster.size().max(1)).unwrap();
            let node = Cidr::containing(addr, node_prefix).unwrap();
            match a.occupy(node) {
                Ok(()) => { prop_assert!(held.insert(node)); }
                Err(Error::AlreadyOccupied { .. }) => prop_assert!(held.contains(&node)),
                Err(Error::Reserved { reserved, .. }) => prop_assert!(reserved.overlaps(&node)),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        let capacity = a.capacity();
        prop_assert!(capacity <= 1 << extra_bits);
        let mut count = held.len() as u128;
        loop {
            match a.allocate() {
                Ok(node) => {
                    prop_assert!(cluster.contains_cidr(&node));
                    prop_assert_eq!(node.prefix_len(), node_prefix);
                    prop_assert!(reserved_ranges.iter().all(|r| !r.overlaps(&node)), "{} is reserved", node);
                    prop_assert!(held.insert(node), "{} handed out twice", node);
                    count += 1;
                    prop_assert!(count <= capacity);
                }
                Err(Error::Exhausted { capacity: c, .. }) => {
                    prop_assert_eq!(c, capacity);
                    break;
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        prop_assert_eq!(count, capacity);
        prop_assert_eq!(a.used(), capacity);
        prop_assert_eq!(a.free(), 0);
        // Release makes space, and exactly that space.
        if let Some(&node) = held.iter().nth(base as usize % held.len().max(1)) {
            prop_assert!(a.release(node));
            prop_assert!(!a.release(node));
            prop_assert_eq!(a.allocate(), Ok(node));
            prop_assert!(a.allocate().is_err());
        }
    }

    /// Rebuilding the allocator from the held CIDRs and the saved
    /// round-robin position gives the same future as never restarting.
    #[test]
    fn cluster_restore_and_continue_equals_never_restarting(
        family in family(),
        reserve in reservations(),
        before in proptest::collection::vec(cluster_op(), 0..60),
        after in proptest::collection::vec(cluster_op(), 0..60),
    ) {
        let (mut a, _) = new_cluster(family, &reserve);
        for op in &before {
            apply_cluster(&mut a, op);
        }
        let (mut b, _) = new_cluster(family, &reserve);
        for node in node_cidrs(family).1 {
            if a.is_occupied(node) {
                b.occupy(node).unwrap();
            }
        }
        if let Some(last) = a.last_allocated() {
            b.resume_after(last).unwrap();
        }
        for op in &after {
            prop_assert_eq!(apply_cluster(&mut a, op), apply_cluster(&mut b, op), "{:?}", op);
        }
    }

    /// Dual-stack allocation hands out one CIDR per family or none.
    #[test]
    fn dual_stack_cluster_allocation_is_all_or_nothing(
        v4_bits in 0u8..5,
        v6_bits in 0u8..5,
        releases in proptest::collection::vec(any::<bool>(), 0..40),
    ) {
        let mut d = DualStackClusterAllocator::new(vec![
            ClusterAllocator::new(cidr("10.244.0.0/16"), 16 + v4_bits).unwrap(),
            ClusterAllocator::new(cidr("fd00:10:244::/56"), 56 + v6_bits).unwrap(),
        ]).unwrap();
        let mut held: Vec<Vec<Cidr>> = Vec::new();
        for release in releases {
            if release && !held.is_empty() {
                for c in held.remove(0) {
                    prop_assert!(d.release(c));
                }
            } else {
                match d.allocate() {
                    Ok(pair) => {
                        prop_assert_eq!(pair.len(), 2);
                        prop_assert_eq!(pair[0].family(), Family::V4);
                        prop_assert_eq!(pair[1].family(), Family::V6);
                        prop_assert!(held.iter().flatten().all(|c| !pair.contains(c)));
                        held.push(pair);
                    }
                    Err(Error::Exhausted { .. }) => {
                        let n = held.len() as u128;
                        prop_assert!(n == d.capacity(Family::V4) || n == d.capacity(Family::V6));
                    }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
            prop_assert_eq!(d.used(Family::V4), held.len() as u128);
            prop_assert_eq!(d.used(Family::V6), held.len() as u128);
        }
    }
}

// ---------------------------------------------------------------------------
// Pod allocator
// ---------------------------------------------------------------------------

/// The usable addresses of the small test node CIDRs, written out by hand:
/// 10.1.2.0/28 without .0 and .15, fd00::/124 without fd00::.
fn pod_addresses(family: Family) -> (Cidr, Vec<IpAddr>) {
    match family {
        Family::V4 => (
            cidr("10.1.2.0/28"),
            (1..=14)
                .map(|i| format!("10.1.2.{i}").parse().unwrap())
                .collect(),
        ),
        Family::V6 => (
            cidr("fd00::/124"),
            (1..=15)
                .map(|i| format!("fd00::{i:x}").parse().unwrap())
                .collect(),
        ),
    }
}

fn stacks() -> impl Strategy<Value = Vec<Family>> {
    prop_oneof![
        Just(vec![Family::V4]),
        Just(vec![Family::V6]),
        Just(vec![Family::V4, Family::V6]),
        Just(vec![Family::V6, Family::V4]),
    ]
}

#[derive(Debug, Clone)]
enum PodOp {
    Allocate(u8, u8),
    Release(u8, u8),
    ReleaseContainer(u8),
    Retain(u32),
    ResumeAfter(usize),
}

fn pod_op() -> impl Strategy<Value = PodOp> {
    prop_oneof![
        6 => (0u8..20, 0u8..2).prop_map(|(c, i)| PodOp::Allocate(c, i)),
        2 => (0u8..20, 0u8..2).prop_map(|(c, i)| PodOp::Release(c, i)),
        1 => (0u8..20).prop_map(PodOp::ReleaseContainer),
        1 => any::<u32>().prop_map(PodOp::Retain),
        1 => (0usize..14).prop_map(PodOp::ResumeAfter),
    ]
}

fn pod_key(c: u8, i: u8) -> AttachmentKey {
    AttachmentKey::new(format!("container-{c}"), format!("eth{i}"))
}

/// Keeps key `k` when bit `hash(k) % 32` of `mask` is set.
fn retained(mask: u32, key: &AttachmentKey) -> bool {
    let c: u32 = key
        .container_id
        .trim_start_matches("container-")
        .parse()
        .unwrap_or(0);
    let i: u32 = key.ifname.trim_start_matches("eth").parse().unwrap_or(0);
    mask & (1 << ((c * 2 + i) % 32)) != 0
}

fn new_pods(stack: &[Family]) -> PodAllocator {
    let cidrs: Vec<Cidr> = stack.iter().map(|&f| pod_addresses(f).0).collect();
    PodAllocator::new(&cidrs).unwrap()
}

fn apply_pod(p: &mut PodAllocator, op: &PodOp) -> String {
    match *op {
        PodOp::Allocate(c, i) => format!("{:?}", p.allocate(&pod_key(c, i))),
        PodOp::Release(c, i) => format!("{:?}", p.release(&pod_key(c, i))),
        PodOp::ReleaseContainer(c) => {
            format!("{:?}", p.release_container(&format!("container-{c}")))
        }
        PodOp::Retain(mask) => format!("{:?}", p.retain(|k| retained(mask, k))),
        PodOp::ResumeAfter(n) => {
            let family = p.node_cidrs()[0].family();
            format!("{:?}", p.resume_after(pod_addresses(family).1[n]))
        }
    }
}

/// The pod allocator's reference: one model per family plus a key map.
struct PodModel {
    families: Vec<Model<IpAddr>>,
    keys: BTreeMap<AttachmentKey, Vec<IpAddr>>,
}

impl PodModel {
    fn new(stack: &[Family]) -> Self {
        PodModel {
            families: stack
                .iter()
                .map(|&f| Model::new(pod_addresses(f).1))
                .collect(),
            keys: BTreeMap::new(),
        }
    }

    fn allocate(&mut self, key: &AttachmentKey) -> Option<Vec<IpAddr>> {
        if let Some(ips) = self.keys.get(key) {
            return Some(ips.clone());
        }
        let snapshot: Vec<Model<IpAddr>> = self.families.clone();
        let ips: Option<Vec<IpAddr>> = self.families.iter_mut().map(Model::allocate).collect();
        match ips {
            Some(ips) => {
                self.keys.insert(key.clone(), ips.clone());
                Some(ips)
            }
            None => {
                self.families = snapshot;
                None
            }
        }
    }

    fn release(&mut self, key: &AttachmentKey) -> Option<Vec<IpAddr>> {
        let ips = self.keys.remove(key)?;
        for (m, &ip) in self.families.iter_mut().zip(&ips) {
            assert!(m.release(ip));
        }
        Some(ips)
    }

    fn release_where(
        &mut self,
        gone: impl Fn(&AttachmentKey) -> bool,
    ) -> Vec<(AttachmentKey, Vec<IpAddr>)> {
        let keys: Vec<AttachmentKey> = self.keys.keys().filter(|k| gone(k)).cloned().collect();
        keys.into_iter()
            .map(|k| {
                let ips = self.release(&k).unwrap();
                (k, ips)
            })
            .collect()
    }
}

proptest! {
    /// Every answer of the pod allocator is the one the obvious
    /// round-robin over explicit address lists gives.
    #[test]
    fn pod_allocator_matches_the_reference_model(
        stack in stacks(),
        ops in proptest::collection::vec(pod_op(), 0..100),
    ) {
        let mut p = new_pods(&stack);
        let mut m = PodModel::new(&stack);
        for op in &ops {
            match *op {
                PodOp::Allocate(c, i) => {
                    let got = p.allocate(&pod_key(c, i));
                    match m.allocate(&pod_key(c, i)) {
                        Some(ips) => prop_assert_eq!(got, Ok(ips)),
                        None => prop_assert!(matches!(got, Err(Error::Exhausted { .. })), "{:?}", got),
                    }
                }
                PodOp::Release(c, i) => prop_assert_eq!(p.release(&pod_key(c, i)), m.release(&pod_key(c, i))),
                PodOp::ReleaseContainer(c) => {
                    let id = format!("container-{c}");
                    prop_assert_eq!(p.release_container(&id), m.release_where(|k| k.container_id == id));
                }
                PodOp::Retain(mask) => {
                    prop_assert_eq!(p.retain(|k| retained(mask, k)), m.release_where(|k| !retained(mask, k)));
                }
                PodOp::ResumeAfter(n) => {
                    p.resume_after(pod_addresses(stack[0]).1[n]).unwrap();
                    m.families[0].last = Some(n);
                }
            }
            let got: Vec<(AttachmentKey, Vec<IpAddr>)> = p.allocations().map(|(k, ips)| (k.clone(), ips.to_vec())).collect();
            let want: Vec<(AttachmentKey, Vec<IpAddr>)> = m.keys.clone().into_iter().collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(p.allocated(), m.keys.len());
        }
    }

    /// No address is held by two attachments, and allocation fails exactly
    /// at capacity, for node CIDRs of any size including a whole /64.
    #[test]
    fn pod_addresses_are_unique_while_held_and_exhaust_at_capacity(
        v4_prefix in 24u8..=30,
        v6_prefix in prop_oneof![Just(64u8), 118u8..=127],
        dual in any::<bool>(),
        released in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut cidrs = vec![Cidr::containing("10.9.8.0".parse().unwrap(), v4_prefix).unwrap()];
        if dual {
            cidrs.push(Cidr::containing("fd00:9:8::".parse().unwrap(), v6_prefix).unwrap());
        }
        let mut p = PodAllocator::new(&cidrs).unwrap();
        let capacity = cidrs.iter().map(|c| p.capacity(c.family())).min().unwrap();
        let limit = capacity.min(2000);
        let mut seen = BTreeSet::new();
        for n in 0..limit {
            let ips = p.allocate(&pod_key(0, 0).clone_with(n)).unwrap();
            prop_assert_eq!(ips.len(), cidrs.len());
            for (ip, c) in ips.iter().zip(&cidrs) {
                prop_assert!(c.contains(*ip));
                prop_assert_ne!(*ip, c.addr(), "network address handed out");
                if c.family() == Family::V4 { prop_assert_ne!(*ip, c.last(), "IPv4 last address handed out"); }
                prop_assert!(seen.insert(*ip), "{} handed out twice", ip);
            }
        }
        if limit == capacity {
            let err = p.allocate(&pod_key(1, 1)).unwrap_err();
            prop_assert!(matches!(err, Error::Exhausted { .. }), "{}", err);
            // Release makes space for exactly as many as were released.
            let keys: Vec<AttachmentKey> = p.allocations().map(|(k, _)| k.clone()).collect();
            let mut freed = BTreeSet::new();
            for index in released {
                let key = index.get(&keys);
                if let Some(ips) = p.release(key) {
                    for ip in &ips { seen.remove(ip); }
                    freed.extend(ips);
                }
            }
            let freed_keys = freed.len() / cidrs.len();
            for n in 0..freed_keys {
                let ips = p.allocate(&pod_key(2, 0).clone_with(n as u128)).unwrap();
                for ip in ips {
                    // A family that ran out can only give back what was freed;
                    // a roomier one hands out new addresses.
                    prop_assert!(seen.insert(ip), "{} handed out twice", ip);
                    if p.capacity(Family::of(ip)) == capacity {
                        prop_assert!(freed.contains(&ip), "{} was not free", ip);
                    }
                }
            }
            prop_assert!(p.allocate(&pod_key(3, 0)).is_err());
        }
    }

    /// Restoring every allocation plus the saved round-robin positions gives
    /// the same future as never restarting.
    #[test]
    fn pod_restore_and_continue_equals_never_restarting(
        stack in stacks(),
        before in proptest::collection::vec(pod_op(), 0..80),
        after in proptest::collection::vec(pod_op(), 0..80),
    ) {
        let mut a = new_pods(&stack);
        for op in &before {
            apply_pod(&mut a, op);
        }
        let mut b = new_pods(&stack);
        for (key, ips) in a.allocations() {
            b.restore(key.clone(), ips.to_vec()).unwrap();
        }
        for &family in &stack {
            if let Some(ip) = a.last_allocated(family) {
                b.resume_after(ip).unwrap();
            }
        }
        for op in &after {
            prop_assert_eq!(apply_pod(&mut a, op), apply_pod(&mut b, op), "{:?}", op);
        }
    }

    /// Restoring without a saved position never hands out a restored
    /// address again.
    #[test]
    fn restore_without_position_never_duplicates(
        stack in stacks(),
        before in proptest::collection::vec(pod_op(), 0..80),
    ) {
        let mut a = new_pods(&stack);
        for op in &before {
            apply_pod(&mut a, op);
        }
        let mut b = new_pods(&stack);
        let mut held = BTreeSet::new();
        for (key, ips) in a.allocations() {
            b.restore(key.clone(), ips.to_vec()).unwrap();
            held.extend(ips.iter().copied());
        }
        for n in 0.. {
            match b.allocate(&pod_key(99, 0).clone_with(n)) {
                Ok(ips) => for ip in ips { prop_assert!(held.insert(ip), "{} handed out twice", ip); },
                Err(_) => break,
            }
        }
    }
}

trait CloneWith {
    fn clone_with(&self, n: u128) -> Self;
}

impl CloneWith for AttachmentKey {
    /// A distinct key per `n`.
    fn clone_with(&self, n: u128) -> Self {
        AttachmentKey::new(format!("{}-{n}", self.container_id), self.ifname.clone())
    }
}

// ---------------------------------------------------------------------------
// No panic on any input
// ---------------------------------------------------------------------------

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
    ]
}

fn any_cidr() -> impl Strategy<Value = Cidr> {
    (any_ip(), any::<u8>()).prop_map(|(ip, len)| {
        let len = len % (Family::of(ip).bits() + 1);
        Cidr::containing(ip, len).unwrap()
    })
}

proptest! {
    #[test]
    fn cidr_construction_never_panics(ip in any_ip(), len in any::<u8>(), text in "[0-9a-fA-F:./ +-]{0,48}") {
        if let Ok(c) = Cidr::new(ip, len) {
            prop_assert_eq!(c.to_string().parse::<Cidr>(), Ok(c));
            prop_assert!(c.contains(ip));
            prop_assert!(c.size() >= 1);
        }
        let _ = Cidr::containing(ip, len);
        if let Ok(c) = text.parse::<Cidr>() {
            prop_assert_eq!(c.to_string().parse::<Cidr>(), Ok(c));
        }
    }

    #[test]
    fn cidr_relations_never_panic(a in any_cidr(), b in any_cidr(), ip in any_ip(), n in any::<u128>()) {
        let _ = (a.contains(ip), a.overlaps(&b), a.contains_cidr(&b), a.size(), a.last(), a.nth(n), a.offset_of(ip));
        prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
        if let Some(x) = a.nth(n) { prop_assert_eq!(a.offset_of(x), Some(n)); }
    }

    #[test]
    fn cluster_allocator_never_panics(
        cluster in any_cidr(),
        node_len in any::<u8>(),
        inputs in proptest::collection::vec((0u8..5, any_cidr()), 0..30),
    ) {
        let Ok(mut a) = ClusterAllocator::new(cluster, node_len) else { return Ok(()) };
        for (op, c) in inputs {
            match op {
                0 => { let _ = a.reserve(c); }
                1 => { let _ = a.occupy(c); }
                2 => { let _ = a.release(c); }
                3 => { let _ = a.resume_after(c); }
                _ => { let _ = a.allocate(); }
            }
            prop_assert!(a.used() <= a.capacity());
        }
        let mut d = DualStackClusterAllocator::new(vec![a]).unwrap();
        let _ = d.allocate();
        let _ = d.occupy(cluster);
        let _ = d.occupy_all(&[cluster, cluster]);
    }

    #[test]
    fn pod_allocator_never_panics(
        cidrs in proptest::collection::vec(any_cidr(), 0..3),
        inputs in proptest::collection::vec((0u8..6, "[a-c]{0,2}", "[a-c]{0,1}", proptest::collection::vec(any_ip(), 0..3)), 0..30),
    ) {
        let Ok(mut p) = PodAllocator::new(&cidrs) else { return Ok(()) };
        for (op, c, i, ips) in inputs {
            let key = AttachmentKey::new(c, i);
            match op {
                0 => { let _ = p.allocate(&key); }
                1 => { let _ = p.restore(key, ips); }
                2 => { let _ = p.release(&key); }
                3 => { let _ = p.release_container(&key.container_id); }
                4 => { if let Some(&ip) = ips.first() { let _ = p.resume_after(ip); } }
                _ => { let _ = p.retain(|k| k.ifname.is_empty()); }
            }
            let held: usize = p.allocations().map(|(_, ips)| ips.len()).sum();
            let used: u128 = Family::ALL.iter().map(|&f| p.used(f)).sum();
            prop_assert_eq!(held as u128, used);
        }
    }
}

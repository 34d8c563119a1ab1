//! Allocator throughput: pod addresses on a /16 node range filled to 99% and
//! on an IPv6 /64, node CIDRs on a cluster CIDR filled to 99%, each beside a
//! reference measured in the same run (the same operation on an empty
//! range). One operation is an allocation followed by the release of what it
//! got, so the fill level stays put while the round-robin position walks
//! through the range.
//!
//! Criterion reports absolute figures; the ratios printed at the end are the
//! result to compare across machines.

// Benchmarks report on stdout.
#![allow(clippy::print_stdout)]

use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::time::Instant;
use underlay_ipam::{AttachmentKey, Cidr, ClusterAllocator, PodAllocator};

/// Deterministic xorshift, so every run fills the same holes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn cidr(s: &str) -> Cidr {
    s.parse().expect("benchmark cidr")
}

/// A key shaped like a runtime's: 64 hex characters that look random.
fn key(n: usize) -> AttachmentKey {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let id: String = (0..4).map(|_| format!("{:016x}", rng.next())).collect();
    AttachmentKey::new(id, "eth0")
}

/// A pod allocator on `node_cidr` holding `fill` of its capacity (capped at
/// `max_held`), with the released 1 - `fill` scattered at random.
fn pods(node_cidr: &str, fill: f64, max_held: usize) -> PodAllocator {
    let cidr = cidr(node_cidr);
    let mut p = PodAllocator::new(&[cidr]).expect("node cidr");
    let capacity = usize::try_from(p.capacity(cidr.family()))
        .unwrap_or(usize::MAX)
        .min(max_held);
    for n in 0..capacity {
        p.allocate(&key(n)).expect("fill");
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let holes = ((1.0 - fill) * capacity as f64).round() as usize;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut freed = 0;
    while freed < holes {
        #[allow(clippy::cast_possible_truncation)]
        let n = (rng.next() % capacity as u64) as usize;
        if p.release(&key(n)).is_some() {
            freed += 1;
        }
    }
    p
}

/// A cluster allocator on `cluster` with /24 node CIDRs, 99% held with
/// random holes (or empty when `fill` is 0).
fn cluster(cluster_cidr: &str, fill: f64) -> ClusterAllocator {
    let mut a = ClusterAllocator::new(cidr(cluster_cidr), 24).expect("cluster");
    if fill == 0.0 {
        return a;
    }
    let mut held = Vec::new();
    while let Ok(c) = a.allocate() {
        held.push(c);
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let holes = ((1.0 - fill) * held.len() as f64).round() as usize;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut freed = 0;
    while freed < holes {
        #[allow(clippy::cast_possible_truncation)]
        let i = (rng.next() % held.len() as u64) as usize;
        if a.release(held[i]) {
            freed += 1;
        }
    }
    a
}

fn pod_op(p: &mut PodAllocator, key: &AttachmentKey) {
    let ips = p.allocate(key).expect("a free address");
    black_box(&ips);
    p.release(key);
}

fn cluster_op(a: &mut ClusterAllocator) {
    let c = a.allocate().expect("a free node cidr");
    black_box(c);
    a.release(c);
}

struct Scenarios {
    pod_reference: PodAllocator,
    pod_v4_full: PodAllocator,
    pod_v6: PodAllocator,
    pod_same_keys: PodAllocator,
    cluster_reference: ClusterAllocator,
    cluster_full: ClusterAllocator,
}

fn scenarios() -> Scenarios {
    Scenarios {
        pod_reference: pods("10.244.0.0/16", 0.0, usize::MAX),
        pod_v4_full: pods("10.244.0.0/16", 0.99, usize::MAX),
        // A /64 holding 100 000 pods (far more than a node runs), 1% freed.
        pod_v6: pods("fd00:10:244:1::/64", 0.99, 100_000),
        // As many attachments as the 99% full /16 but one free gap: tells
        // the cost of the attachment map apart from the free-space search.
        pod_same_keys: pods("10.244.0.0/15", 1.0, 64_879),
        cluster_reference: cluster("10.0.0.0/8", 0.0),
        cluster_full: cluster("10.0.0.0/8", 0.99),
    }
}

fn criterion_benches(c: &mut Criterion, s: &mut Scenarios) {
    let k = key(usize::MAX);
    let mut group = c.benchmark_group("pod_allocate_release");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reference_empty_v4_16", |b| {
        b.iter(|| pod_op(&mut s.pod_reference, &k))
    });
    group.bench_function("v4_16_99pct_full", |b| {
        b.iter(|| pod_op(&mut s.pod_v4_full, &k))
    });
    group.bench_function("v6_64_100k_held", |b| b.iter(|| pod_op(&mut s.pod_v6, &k)));
    group.bench_function("v4_15_64879_held_one_gap", |b| {
        b.iter(|| pod_op(&mut s.pod_same_keys, &k))
    });
    group.finish();

    let mut group = c.benchmark_group("node_cidr_allocate_release");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reference_empty_v4_8_by_24", |b| {
        b.iter(|| cluster_op(&mut s.cluster_reference))
    });
    group.bench_function("v4_8_by_24_99pct_full", |b| {
        b.iter(|| cluster_op(&mut s.cluster_full))
    });
    group.finish();
}

/// Median nanoseconds per operation over interleaved rounds, so drift in
/// machine load hits reference and subject alike.
fn ratios(s: &mut Scenarios) {
    const ROUNDS: usize = 9;
    const OPS: u32 = 50_000;
    let k = key(usize::MAX);
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..OPS {
            f();
        }
        start.elapsed().as_secs_f64() * 1e9 / f64::from(OPS)
    };
    let mut samples: [Vec<f64>; 6] = Default::default();
    for _ in 0..ROUNDS {
        samples[0].push(time(&mut || pod_op(&mut s.pod_reference, &k)));
        samples[1].push(time(&mut || pod_op(&mut s.pod_v4_full, &k)));
        samples[2].push(time(&mut || pod_op(&mut s.pod_v6, &k)));
        samples[3].push(time(&mut || cluster_op(&mut s.cluster_reference)));
        samples[4].push(time(&mut || cluster_op(&mut s.cluster_full)));
        samples[5].push(time(&mut || pod_op(&mut s.pod_same_keys, &k)));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m: Vec<f64> = samples.iter_mut().map(median).collect();
    println!();
    println!(
        "ipam allocator: allocate+release, median of {ROUNDS} interleaved rounds of {OPS} ops"
    );
    let rows = [
        ("pod  empty v4 /16 (reference)", m[0], m[0]),
        ("pod  v4 /16 99% full", m[1], m[0]),
        ("pod  v6 /64, 100k held", m[2], m[0]),
        ("pod  v4 /15, 64879 held, one gap", m[5], m[0]),
        ("node empty 10/8 by /24 (reference)", m[3], m[3]),
        ("node 10/8 by /24 99% full", m[4], m[3]),
    ];
    for (name, ns, reference) in rows {
        println!(
            "  {name:<36} {ns:>8.1} ns/op {:>12.0} ops/s  {:>5.2}x reference",
            1e9 / ns,
            ns / reference
        );
    }
}

fn main() {
    let mut s = scenarios();
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, &mut s);
    c.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` does not and only
    // wants a smoke run.
    if std::env::args().any(|a| a == "--bench") {
        ratios(&mut s);
    }
}

//! underlay's IPAM core: CIDR arithmetic, cluster CIDR → node CIDRs (for
//! the route controller) and node CIDR → pod addresses (for the node agent),
//! IPv4 and IPv6 alike.
//!
//! Pure by design: no I/O, no async, no clocks, no randomness. Callers own
//! persistence and feed recovered state back in ([`ClusterAllocator::occupy`],
//! [`PodAllocator::restore`], `resume_after`). `tests/architecture.rs` keeps
//! it that way.
//!
//! Both allocators hand out round-robin: the search starts after the last
//! value handed out, so a released node CIDR or pod address is reused only
//! after every other free one. Free values are stored as ranges, so cost
//! depends on fragmentation, never on the size of the range: an IPv6 /64
//! costs as little as an IPv4 /24, and a nearly full range is as quick as an
//! empty one.
//!
//! ```
//! use underlay_ipam::{AttachmentKey, ClusterAllocator, Cidr, PodAllocator};
//!
//! let mut nodes = ClusterAllocator::new("10.244.0.0/16".parse()?, 24)?;
//! let node_cidr = nodes.allocate()?;
//! assert_eq!(node_cidr, "10.244.0.0/24".parse::<Cidr>()?);
//!
//! let mut pods = PodAllocator::new(&[node_cidr])?;
//! let ips = pods.allocate(&AttachmentKey::new("0123abcd", "eth0"))?;
//! assert_eq!(ips, ["10.244.0.1".parse::<std::net::IpAddr>()?]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod cidr;
mod cluster;
mod error;
mod pod;
mod pool;
mod ranges;

pub use cidr::{Cidr, Family};
pub use cluster::{ClusterAllocator, DualStackClusterAllocator};
pub use error::{Error, PoolKind, Result};
pub use pod::{AttachmentKey, PodAllocator};

//! The one error type of the crate. Every variant carries the values that
//! were wrong, and every message says what to change.

use crate::cidr::{Cidr, Family};
use std::fmt;
use std::net::IpAddr;

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a pool hands out, used to word [`Error::Exhausted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Node CIDRs carved from a cluster CIDR.
    NodeCidrs,
    /// Pod addresses taken from a node CIDR.
    PodAddresses,
}

impl fmt::Display for PoolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolKind::NodeCidrs => "node cidrs",
            PoolKind::PodAddresses => "pod addresses",
        })
    }
}

/// Everything that can go wrong in IPAM. Nothing in this crate panics on
/// input; bad input comes back as one of these and changes no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A CIDR string could not be parsed.
    #[error(
        "invalid cidr {input:?}: {reason}; write it as ADDRESS/PREFIX, e.g. 10.244.0.0/16 or fd00:10:244::/56"
    )]
    InvalidCidr {
        /// The text that was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A prefix length longer than the address.
    #[error("prefix length /{prefix_len} is longer than an {family} address ({max} bits); use at most /{max}", max = family.bits())]
    PrefixTooLong {
        /// The address family.
        family: Family,
        /// The prefix length that was given.
        prefix_len: u8,
    },

    /// A CIDR whose address has bits set past the prefix.
    #[error("{addr}/{prefix_len} has host bits set; use the network address {network}")]
    HostBitsSet {
        /// The address that was given.
        addr: IpAddr,
        /// The prefix length that was given.
        prefix_len: u8,
        /// The network the caller most likely meant.
        network: Cidr,
    },

    /// A node CIDR mask size that cannot be carved from the cluster CIDR.
    #[error("node cidr mask size /{node_prefix_len} does not fit cluster cidr {cluster}; use a mask size between /{} and /{}", cluster.prefix_len(), cluster.family().bits())]
    InvalidNodePrefixLength {
        /// The cluster CIDR.
        cluster: Cidr,
        /// The node mask size that was given.
        node_prefix_len: u8,
    },

    /// A node CIDR that does not lie inside the cluster CIDR.
    #[error(
        "node cidr {cidr} is outside cluster cidr {cluster}; fix the node's pod cidr or the --cluster-cidr setting"
    )]
    OutsideCluster {
        /// The node CIDR that was given.
        cidr: Cidr,
        /// The cluster CIDR of the allocator.
        cluster: Cidr,
    },

    /// A node CIDR of another size than the allocator hands out.
    #[error(
        "node cidr {cidr} is not a /{expected}; node cidrs of this cluster cidr are /{expected}, fix the node's pod cidr or the mask size setting"
    )]
    WrongPrefixLength {
        /// The node CIDR that was given.
        cidr: Cidr,
        /// The node mask size of the allocator.
        expected: u8,
    },

    /// A node CIDR that overlaps a reserved range.
    #[error("node cidr {cidr} overlaps reserved range {reserved}; give the node a cidr outside it")]
    Reserved {
        /// The node CIDR that was given.
        cidr: Cidr,
        /// The reserved range it overlaps.
        reserved: Cidr,
    },

    /// A range to reserve overlaps a node CIDR that is already in use.
    #[error(
        "cannot reserve {range}: node cidr {node_cidr} inside it is in use; release that node cidr first or reserve before occupying"
    )]
    ReservedRangeInUse {
        /// The range that was to be reserved.
        range: Cidr,
        /// A node CIDR in use that overlaps it.
        node_cidr: Cidr,
    },

    /// A node CIDR that is already occupied. Callers recovering state may
    /// treat this as success: the CIDR is held, as they wanted.
    #[error(
        "node cidr {cidr} is already occupied; release it first if it should move to another node"
    )]
    AlreadyOccupied {
        /// The node CIDR that was given.
        cidr: Cidr,
    },

    /// Nothing left to hand out.
    #[error(
        "{cidr} is exhausted: all {capacity} allocatable {kind} are in use; release unused ones or configure a larger range"
    )]
    Exhausted {
        /// The range that is full.
        cidr: Cidr,
        /// How many it can hand out in total.
        capacity: u128,
        /// What it hands out.
        kind: PoolKind,
    },

    /// An allocator built from no address family at all.
    #[error("no address family given; configure one cidr per address family (IPv4, IPv6 or both)")]
    NoFamilies,

    /// Two entries of the same address family where at most one is allowed.
    #[error("more than one {family} entry given; give at most one per address family")]
    DuplicateFamily {
        /// The repeated family.
        family: Family,
    },

    /// A CIDR or address of a family the allocator was not configured for.
    #[error(
        "{family} is not configured here ({value}); configure a {family} cidr or drop the {family} entry"
    )]
    FamilyNotConfigured {
        /// The family that is missing.
        family: Family,
        /// The value that was given, as text.
        value: String,
    },

    /// A node CIDR too small to hold a single pod address.
    #[error(
        "node cidr {cidr} has no usable pod address (the network address and the IPv4 last address are never handed out); use a shorter prefix, at most /30 for IPv4 or /127 for IPv6"
    )]
    NodeCidrTooSmall {
        /// The node CIDR that was given.
        cidr: Cidr,
    },

    /// An attachment key that is not usable (an empty field).
    #[error(
        "invalid attachment key: {reason}; pass the container id and interface name the runtime gave"
    )]
    InvalidKey {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A restored attachment without any address.
    #[error("attachment {key} has no address to restore; drop the empty record")]
    NoAddresses {
        /// The attachment.
        key: crate::pod::AttachmentKey,
    },

    /// A restored attachment that is already present with other addresses.
    #[error(
        "attachment {key} is already present with addresses {existing:?}; release it before restoring different addresses"
    )]
    AttachmentExists {
        /// The attachment.
        key: crate::pod::AttachmentKey,
        /// The addresses it holds now.
        existing: Vec<IpAddr>,
    },

    /// An address outside every node CIDR of the allocator.
    #[error(
        "address {ip} is outside this node's pod cidrs; drop the stale record or fix the node's pod cidr"
    )]
    AddressOutsideNode {
        /// The address that was given.
        ip: IpAddr,
    },

    /// An address inside a node CIDR that is never handed out.
    #[error(
        "address {ip} is the {reason} of node cidr {node_cidr} and is never handed out; drop the stale record"
    )]
    AddressNotAssignable {
        /// The address that was given.
        ip: IpAddr,
        /// The node CIDR it is in.
        node_cidr: Cidr,
        /// Why it is never handed out.
        reason: &'static str,
    },

    /// An address already held by another attachment.
    #[error("address {ip} is already held by attachment {owner}; release that attachment first")]
    AddressInUse {
        /// The address that was given.
        ip: IpAddr,
        /// The attachment holding it.
        owner: crate::pod::AttachmentKey,
    },
}

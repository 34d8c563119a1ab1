//! The pure core of route reconciliation: from the nodes and the table as
//! read, the table to write. No I/O, no clock.
//!
//! Rules:
//! - a node gets one route per pod CIDR whose family matches one of its
//!   InternalIPs (`addressPrefix = podCIDR`, next hop = that IP);
//! - a route is *owned* when its name decodes with [`crate::naming`] and its
//!   prefix lies inside a cluster CIDR; everything else is carried through
//!   every write untouched, whatever it is;
//! - owned routes are replaced by the desired ones; when the table's limit
//!   does not fit them all, routes already in the table keep their place,
//!   then nodes are taken in name order, and the rest are left out (each
//!   reported, never failing the whole write).

use crate::azure::{TableRoute, VIRTUAL_APPLIANCE};
use crate::naming::{parse_route_name, route_name};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;
use underlay_ipam::{Cidr, Family};

/// What the planner needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeRoutes {
    pub name: String,
    pub pod_cidrs: Vec<Cidr>,
    /// InternalIP addresses, in the order the node lists them.
    pub internal_ips: Vec<IpAddr>,
}

/// A route the controller wants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DesiredRoute {
    pub node: String,
    pub cidr: Cidr,
    pub next_hop: IpAddr,
    pub name: String,
}

impl DesiredRoute {
    pub fn to_table_route(&self) -> TableRoute {
        TableRoute {
            name: self.name.clone(),
            address_prefix: self.cidr.to_string(),
            next_hop_type: VIRTUAL_APPLIANCE.to_string(),
            next_hop_ip: Some(self.next_hop.to_string()),
        }
    }
}

/// Why a node's route is not in the table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeftOut {
    /// The node has a pod CIDR of a family it has no InternalIP of.
    NoInternalIp { cidr: Cidr, family: Family },
    /// The pod CIDR lies outside every cluster CIDR: the controller would
    /// not own its route.
    OutsideClusterCidr { cidr: Cidr },
    /// The table's route limit is reached.
    RouteLimit { cidr: Cidr, limit: usize },
    /// A route the controller does not own already uses this prefix.
    ForeignRoute { cidr: Cidr, route: String },
    /// Another node claims the same pod CIDR.
    DuplicateCidr { cidr: Cidr, other: String },
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeftOut::NoInternalIp { cidr, family } => write!(
                f,
                "no route for pod cidr {cidr}: the node has no {family} InternalIP address"
            ),
            LeftOut::OutsideClusterCidr { cidr } => write!(
                f,
                "no route for pod cidr {cidr}: it is outside every --cluster-cidr"
            ),
            LeftOut::RouteLimit { cidr, limit } => write!(
                f,
                "no route for pod cidr {cidr}: the route table holds its limit of {limit} routes; raise the limit or use a larger node cidr"
            ),
            LeftOut::ForeignRoute { cidr, route } => write!(
                f,
                "no route for pod cidr {cidr}: route {route}, not managed by underlay, already uses this prefix"
            ),
            LeftOut::DuplicateCidr { cidr, other } => write!(
                f,
                "no route for pod cidr {cidr}: node {other} has the same pod cidr"
            ),
        }
    }
}

/// Which routes the controller owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    pub cluster_cidrs: Vec<Cidr>,
}

impl Ownership {
    pub fn owns(&self, route: &TableRoute) -> bool {
        let Some(parsed) = parse_route_name(&route.name) else {
            return false;
        };
        let Ok(prefix) = route.address_prefix.parse::<Cidr>() else {
            return false;
        };
        // The name and the prefix must agree, or someone else wrote it.
        prefix == parsed.cidr && self.in_cluster(&prefix)
    }

    fn in_cluster(&self, cidr: &Cidr) -> bool {
        self.cluster_cidrs.iter().any(|c| c.contains_cidr(cidr))
    }
}

/// The routes the nodes want, and the ones that cannot be had at all.
pub fn desired_routes<'a>(
    nodes: impl IntoIterator<Item = &'a NodeRoutes>,
    ownership: &Ownership,
) -> (Vec<DesiredRoute>, Vec<(String, LeftOut)>) {
    let mut desired = Vec::new();
    let mut left_out = Vec::new();
    let mut by_cidr: BTreeMap<Cidr, String> = BTreeMap::new();
    let mut nodes: Vec<&NodeRoutes> = nodes.into_iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    for node in nodes {
        for cidr in &node.pod_cidrs {
            if !ownership.in_cluster(cidr) {
                left_out.push((
                    node.name.clone(),
                    LeftOut::OutsideClusterCidr { cidr: *cidr },
                ));
                continue;
            }
            let family = cidr.family();
            let Some(ip) = node
                .internal_ips
                .iter()
                .find(|ip| Family::of(**ip) == family)
            else {
                left_out.push((
                    node.name.clone(),
                    LeftOut::NoInternalIp {
                        cidr: *cidr,
                        family,
                    },
                ));
                continue;
            };
            if let Some(other) = by_cidr.get(cidr) {
                left_out.push((
                    node.name.clone(),
                    LeftOut::DuplicateCidr {
                        cidr: *cidr,
                        other: other.clone(),
                    },
                ));
                continue;
            }
            by_cidr.insert(*cidr, node.name.clone());
            desired.push(DesiredRoute {
                node: node.name.clone(),
                cidr: *cidr,
                next_hop: *ip,
                name: route_name(&node.name, cidr),
            });
        }
    }
    (desired, left_out)
}

/// The table to write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The whole table: foreign routes as read, then the programmed ones.
    pub routes: Vec<TableRoute>,
    /// Desired routes that will be in the table after the write.
    pub programmed: Vec<DesiredRoute>,
    /// Nodes (and why) left without one of their routes.
    pub left_out: Vec<(String, LeftOut)>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
}

impl Plan {
    /// Whether the table differs from what it should be.
    pub fn changes(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.updated.is_empty())
    }

    pub fn change_count(&self) -> usize {
        self.added.len() + self.removed.len() + self.updated.len()
    }

    /// Nodes all of whose routes are programmed (and none left out).
    pub fn routed_nodes(&self) -> BTreeSet<String> {
        let failed: HashSet<&str> = self.left_out.iter().map(|(n, _)| n.as_str()).collect();
        self.programmed
            .iter()
            .map(|r| r.node.as_str())
            .filter(|n| !failed.contains(n))
            .map(str::to_string)
            .collect()
    }

    pub fn owned_count(&self) -> usize {
        self.programmed.len()
    }
}

/// Plans the write that makes `current` hold `desired`, within `limit` routes.
pub fn plan(
    current: &[TableRoute],
    desired: &[DesiredRoute],
    mut left_out: Vec<(String, LeftOut)>,
    ownership: &Ownership,
    limit: usize,
) -> Plan {
    let table = SplitTable::split(current, ownership);
    let candidates = table.candidates(desired, &mut left_out);
    let capacity = limit.saturating_sub(table.foreign.len());
    let programmed = within_limit(candidates, capacity, limit, &mut left_out);
    let wanted: BTreeMap<&str, TableRoute> = programmed
        .iter()
        .map(|d| (d.name.as_str(), d.to_table_route()))
        .collect();
    let Changes {
        added,
        updated,
        removed,
    } = table.changes(&wanted);
    let mut routes: Vec<TableRoute> = table.foreign.into_iter().cloned().collect();
    routes.extend(wanted.into_values());
    left_out.sort();
    left_out.dedup();
    Plan {
        routes,
        programmed,
        left_out,
        added,
        removed,
        updated,
    }
}

/// The table as read: the routes the controller owns, by name, and
/// everyone else's.
struct SplitTable<'a> {
    owned_by_name: BTreeMap<&'a str, &'a TableRoute>,
    foreign: Vec<&'a TableRoute>,
}

/// The route names a write adds, updates and removes.
struct Changes {
    added: Vec<String>,
    updated: Vec<String>,
    removed: Vec<String>,
}

impl<'a> SplitTable<'a> {
    fn split(current: &'a [TableRoute], ownership: &Ownership) -> Self {
        let (owned, foreign): (Vec<&TableRoute>, Vec<&TableRoute>) =
            current.iter().partition(|r| ownership.owns(r));
        let owned_by_name = owned.iter().map(|r| (r.name.as_str(), *r)).collect();
        SplitTable {
            owned_by_name,
            foreign,
        }
    }

    /// The desired routes that may go in the table, in the order they get
    /// its room: routes already in the table first, so reaching the limit
    /// never evicts a working route in favour of a new one, then by node.
    /// A route whose prefix a foreign route uses is left out.
    fn candidates<'d>(
        &self,
        desired: &'d [DesiredRoute],
        left_out: &mut Vec<(String, LeftOut)>,
    ) -> Vec<&'d DesiredRoute> {
        let foreign_prefixes: BTreeMap<String, &str> = self
            .foreign
            .iter()
            .filter_map(|r| {
                r.address_prefix
                    .parse::<Cidr>()
                    .ok()
                    .map(|c| (c.to_string(), r.name.as_str()))
            })
            .collect();
        let mut candidates: Vec<&DesiredRoute> = Vec::new();
        for d in desired {
            if let Some(name) = foreign_prefixes.get(&d.cidr.to_string()) {
                left_out.push((
                    d.node.clone(),
                    LeftOut::ForeignRoute {
                        cidr: d.cidr,
                        route: (*name).to_string(),
                    },
                ));
            } else {
                candidates.push(d);
            }
        }
        candidates.sort_by_key(|d| {
            (
                !self.owned_by_name.contains_key(d.name.as_str()),
                d.node.clone(),
                d.cidr,
            )
        });
        candidates
    }

    /// What writing `wanted` changes among the owned routes as read.
    fn changes(&self, wanted: &BTreeMap<&str, TableRoute>) -> Changes {
        let mut added = Vec::new();
        let mut updated = Vec::new();
        for (name, route) in wanted {
            match self.owned_by_name.get(name) {
                None => added.push((*name).to_string()),
                Some(old) if *old != route => updated.push((*name).to_string()),
                Some(_) => {}
            }
        }
        let removed = self
            .owned_by_name
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .map(|n| (*n).to_string())
            .collect();
        Changes {
            added,
            updated,
            removed,
        }
    }
}

/// The first `capacity` candidates, sorted; the rest are left out at the
/// table's `limit`.
fn within_limit(
    candidates: Vec<&DesiredRoute>,
    capacity: usize,
    limit: usize,
    left_out: &mut Vec<(String, LeftOut)>,
) -> Vec<DesiredRoute> {
    let mut programmed: Vec<DesiredRoute> = Vec::new();
    for d in candidates {
        if programmed.len() < capacity {
            programmed.push(d.clone());
        } else {
            left_out.push((
                d.node.clone(),
                LeftOut::RouteLimit {
                    cidr: d.cidr,
                    limit,
                },
            ));
        }
    }
    programmed.sort();
    programmed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> NodeRoutes {
        NodeRoutes {
            name: name.to_string(),
            pod_cidrs: cidrs.iter().map(|c| cidr(c)).collect(),
            internal_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        }
    }

    fn own() -> Ownership {
        Ownership {
            cluster_cidrs: vec![cidr("10.244.0.0/16"), cidr("fd00:10:244::/56")],
        }
    }

    fn ours(node: &str, c: &str, hop: &str) -> TableRoute {
        TableRoute {
            name: route_name(node, &cidr(c)),
            address_prefix: c.to_string(),
            next_hop_type: VIRTUAL_APPLIANCE.to_string(),
            next_hop_ip: Some(hop.to_string()),
        }
    }

    fn firewall() -> TableRoute {
        TableRoute {
            name: "default-to-firewall".into(),
            address_prefix: "0.0.0.0/0".into(),
            next_hop_type: VIRTUAL_APPLIANCE.into(),
            next_hop_ip: Some("10.0.0.4".into()),
        }
    }

    fn run(current: &[TableRoute], nodes: &[NodeRoutes], limit: usize) -> Plan {
        let (desired, left_out) = desired_routes(nodes, &own());
        plan(current, &desired, left_out, &own(), limit)
    }

    #[test]
    fn new_nodes_are_added_and_foreign_routes_kept() {
        let p = run(
            &[firewall()],
            &[node("a", &["10.244.1.0/24"], &["10.0.0.5"])],
            400,
        );
        assert_eq!(
            p.routes,
            vec![firewall(), ours("a", "10.244.1.0/24", "10.0.0.5")]
        );
        assert_eq!(p.added, vec![route_name("a", &cidr("10.244.1.0/24"))]);
        assert!(p.removed.is_empty() && p.updated.is_empty());
        assert_eq!(p.routed_nodes().into_iter().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn an_unchanged_table_needs_no_write() {
        let current = vec![firewall(), ours("a", "10.244.1.0/24", "10.0.0.5")];
        let p = run(
            &current,
            &[node("a", &["10.244.1.0/24"], &["10.0.0.5"])],
            400,
        );
        assert!(!p.changes());
        assert_eq!(p.routes, current);
    }

    #[test]
    fn deleted_nodes_lose_their_routes_and_moved_ips_are_updated() {
        let current = vec![
            ours("a", "10.244.1.0/24", "10.0.0.5"),
            ours("gone", "10.244.2.0/24", "10.0.0.6"),
        ];
        let p = run(
            &current,
            &[node("a", &["10.244.1.0/24"], &["10.0.0.9"])],
            400,
        );
        assert_eq!(p.removed, vec![route_name("gone", &cidr("10.244.2.0/24"))]);
        assert_eq!(p.updated, vec![route_name("a", &cidr("10.244.1.0/24"))]);
        assert_eq!(p.routes, vec![ours("a", "10.244.1.0/24", "10.0.0.9")]);
    }

    #[test]
    fn routes_the_controller_does_not_own_are_never_touched() {
        let lookalike_outside_cluster = ours("x", "192.168.5.0/24", "10.0.0.7");
        let mismatched_name = TableRoute {
            address_prefix: "10.244.9.0/24".into(),
            ..ours("y", "10.244.8.0/24", "10.0.0.8")
        };
        let user_route_in_cluster = TableRoute {
            name: "manual".into(),
            address_prefix: "10.244.200.0/24".into(),
            next_hop_type: "VnetLocal".into(),
            next_hop_ip: None,
        };
        let current = vec![
            firewall(),
            lookalike_outside_cluster.clone(),
            mismatched_name.clone(),
            user_route_in_cluster.clone(),
        ];
        let p = run(&current, &[], 400);
        assert!(!p.changes());
        assert_eq!(p.routes, current);
    }

    #[test]
    fn dual_stack_nodes_get_one_route_per_family() {
        let p = run(
            &[],
            &[node(
                "a",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["10.0.0.5", "fd00::5"],
            )],
            400,
        );
        assert_eq!(p.routes, {
            let mut v = vec![
                ours("a", "10.244.1.0/24", "10.0.0.5"),
                ours("a", "fd00:10:244:1::/64", "fd00::5"),
            ];
            v.sort_by(|x, y| x.name.cmp(&y.name));
            v
        });
    }

    #[test]
    fn a_family_without_an_internal_ip_is_left_out() {
        let p = run(
            &[],
            &[node(
                "a",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["10.0.0.5"],
            )],
            400,
        );
        assert_eq!(p.routes, vec![ours("a", "10.244.1.0/24", "10.0.0.5")]);
        assert_eq!(
            p.left_out,
            vec![(
                "a".to_string(),
                LeftOut::NoInternalIp {
                    cidr: cidr("fd00:10:244:1::/64"),
                    family: Family::V6
                }
            )]
        );
        assert!(
            p.routed_nodes().is_empty(),
            "a node missing a route is not routed"
        );
    }

    #[test]
    fn the_limit_keeps_existing_routes_and_reports_the_rest() {
        // Limit 3 with one foreign route leaves room for two of ours; "c" is
        // already programmed so it keeps its place ahead of "a" and "b".
        let current = vec![firewall(), ours("c", "10.244.3.0/24", "10.0.0.3")];
        let nodes = [
            node("a", &["10.244.1.0/24"], &["10.0.0.1"]),
            node("b", &["10.244.2.0/24"], &["10.0.0.2"]),
            node("c", &["10.244.3.0/24"], &["10.0.0.3"]),
        ];
        let p = run(&current, &nodes, 3);
        assert_eq!(p.routes.len(), 3);
        assert_eq!(p.routed_nodes().into_iter().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(
            p.left_out,
            vec![(
                "b".to_string(),
                LeftOut::RouteLimit {
                    cidr: cidr("10.244.2.0/24"),
                    limit: 3
                }
            )]
        );
    }

    #[test]
    fn conflicts_are_left_out_not_fatal() {
        let foreign = TableRoute {
            name: "mine".into(),
            address_prefix: "10.244.1.0/24".into(),
            next_hop_type: "VnetLocal".into(),
            next_hop_ip: None,
        };
        let nodes = [
            node("a", &["10.244.1.0/24"], &["10.0.0.1"]),
            node("b", &["10.244.2.0/24"], &["10.0.0.2"]),
            node("c", &["10.244.2.0/24"], &["10.0.0.3"]),
            node("d", &["172.16.0.0/24"], &["10.0.0.4"]),
        ];
        let p = run(std::slice::from_ref(&foreign), &nodes, 400);
        assert_eq!(
            p.routes,
            vec![foreign, ours("b", "10.244.2.0/24", "10.0.0.2")]
        );
        let reasons: Vec<&str> = p.left_out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(reasons, ["a", "c", "d"]);
        assert!(matches!(p.left_out[0].1, LeftOut::ForeignRoute { .. }));
        assert!(matches!(p.left_out[1].1, LeftOut::DuplicateCidr { .. }));
        assert!(matches!(
            p.left_out[2].1,
            LeftOut::OutsideClusterCidr { .. }
        ));
    }

    #[test]
    fn planning_is_deterministic_whatever_the_input_order() {
        let nodes: Vec<NodeRoutes> = (0..50)
            .map(|i| {
                node(
                    &format!("n{i}"),
                    &[&format!("10.244.{i}.0/24")],
                    &[&format!("10.0.1.{i}")],
                )
            })
            .collect();
        let mut reversed = nodes.clone();
        reversed.reverse();
        assert_eq!(run(&[], &nodes, 30), run(&[], &reversed, 30));
    }
}

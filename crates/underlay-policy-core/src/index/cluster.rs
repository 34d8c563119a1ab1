//! The index's half for ClusterNetworkPolicies and Nodes: the policies by
//! name, which of them select an endpoint, and the members of `nodes`
//! peer sets, kept current as Nodes change.

use super::{Index, SetKey};
use crate::cluster::{ClusterPolicy, ClusterPort, Node, Tier};
use crate::model::{Direction, Labels, Pod};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

impl Index {
    pub fn apply_cluster_policy(&mut self, policy: ClusterPolicy) {
        if self.cluster.get(&policy.name).map(|p| p.as_ref()) == Some(&policy) {
            return;
        }
        self.cluster.insert(policy.name.clone(), Arc::new(policy));
        self.selections.all_changed();
        self.sets_stale = true;
        self.touch();
    }

    pub fn delete_cluster_policy(&mut self, name: &str) {
        if self.cluster.remove(name).is_some() {
            self.selections.all_changed();
            self.sets_stale = true;
            self.touch();
        }
    }

    pub fn cluster_policy(&self, name: &str) -> Option<&Arc<ClusterPolicy>> {
        self.cluster.get(name)
    }

    pub fn cluster_policy_names(&self) -> Vec<String> {
        self.cluster.keys().cloned().collect()
    }

    pub fn cluster_policy_count(&self) -> usize {
        self.cluster.len()
    }

    pub fn replace_cluster_policies(&mut self, all: Vec<ClusterPolicy>) {
        let keep: BTreeSet<String> = all.iter().map(|p| p.name.clone()).collect();
        for name in self.cluster_policy_names() {
            if !keep.contains(&name) {
                self.delete_cluster_policy(&name);
            }
        }
        for p in all {
            self.apply_cluster_policy(p);
        }
    }

    // ---- nodes ----

    pub fn apply_node(&mut self, node: Node) {
        if self.nodes.get(&node.name) == Some(&node) {
            return;
        }
        self.retract_node(&node.name);
        let name = node.name.clone();
        self.nodes.insert(name.clone(), node);
        self.assert_node(&name);
        self.touch();
    }

    pub fn delete_node(&mut self, name: &str) {
        if !self.nodes.contains_key(name) {
            return;
        }
        self.retract_node(name);
        self.nodes.remove(name);
        self.touch();
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn replace_nodes(&mut self, all: Vec<Node>) {
        let keep: BTreeSet<String> = all.iter().map(|n| n.name.clone()).collect();
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.delete_node(&name);
        }
        for n in all {
            self.apply_node(n);
        }
    }

    fn retract_node(&mut self, name: &str) {
        self.node_members(name, false);
    }

    fn assert_node(&mut self, name: &str) {
        self.node_members(name, true);
    }

    /// Adds (or removes) a node's addresses to every `nodes` set selecting it.
    fn node_members(&mut self, name: &str, add: bool) {
        let Some(node) = self.nodes.get(name) else {
            return;
        };
        let ips = node.ips.clone();
        let labels = node.labels.clone();
        for (key, data) in self.sets.iter_mut() {
            let SetKey::Nodes { nodes } = key else {
                continue;
            };
            if !nodes.matches(&labels) {
                continue;
            }
            for ip in &ips {
                if add {
                    data.add(super::Member::Ip(*ip));
                } else {
                    data.remove(super::Member::Ip(*ip));
                }
            }
        }
    }

    /// The members of a `nodes` set, from every node.
    pub(super) fn fill_nodes(&self, selector: &crate::model::Selector) -> super::SetData {
        let mut data = super::SetData::default();
        for node in self.nodes.values() {
            if selector.matches(&node.labels) {
                for ip in &node.ips {
                    data.add(super::Member::Ip(*ip));
                }
            }
        }
        data
    }

    // ---- selection ----

    /// The labels a pod's namespace carries for cluster policy subjects: a
    /// namespace not known (yet) has the one label the API server gives
    /// every namespace, so a policy for all namespaces still selects it.
    fn subject_namespace_labels(&self, namespace: &str) -> Labels {
        match self.namespaces.get(namespace) {
            Some(ns) => ns.labels.clone(),
            None => Labels::from([("kubernetes.io/metadata.name".into(), namespace.into())]),
        }
    }

    /// Adds the cluster policies selecting `pod` to `out`, per tier and
    /// direction in evaluation order; a policy without rules in a direction
    /// does not affect that direction.
    pub(super) fn select_cluster(&self, pod: &Pod, out: &mut super::Selection) {
        if self.cluster.is_empty() {
            return;
        }
        let ns_labels = self.subject_namespace_labels(&pod.key.namespace);
        let mut selecting: Vec<&Arc<ClusterPolicy>> = self
            .cluster
            .values()
            .filter(|p| p.selects(&ns_labels, &pod.labels))
            .collect();
        selecting.sort_by(|a, b| a.precedence(b));
        for p in selecting {
            for dir in Direction::BOTH {
                if p.rules(dir).is_empty() {
                    continue;
                }
                let list = match p.tier {
                    Tier::Admin => &mut out.admin[dir.index()],
                    Tier::Baseline => &mut out.baseline[dir.index()],
                };
                list.push(p.clone());
            }
        }
    }

    /// Cluster policies that select at least one local endpoint.
    pub fn active_cluster_policies(&self) -> BTreeMap<String, Arc<ClusterPolicy>> {
        let mut out = BTreeMap::new();
        if self.cluster.is_empty() {
            return out;
        }
        let mut seen = std::collections::HashSet::new();
        for ep in self.endpoints.values() {
            let sel = self.selection(ep);
            for list in sel.admin.iter().chain(sel.baseline.iter()) {
                for p in list {
                    if seen.insert(Arc::as_ptr(p)) {
                        out.insert(p.name.clone(), p.clone());
                    }
                }
            }
        }
        out
    }

    /// The sets a cluster policy needs.
    pub fn sets_of_cluster(policy: &ClusterPolicy) -> BTreeSet<SetKey> {
        let mut keys = BTreeSet::new();
        for dir in Direction::BOTH {
            for rule in policy.rules(dir) {
                keys.extend(rule.peers.iter().filter_map(SetKey::for_cluster_peer));
                for port in &rule.ports {
                    if let ClusterPort::Named(name) = port {
                        keys.insert(SetKey::NamedPort { name: name.clone() });
                    }
                }
            }
        }
        keys
    }
}

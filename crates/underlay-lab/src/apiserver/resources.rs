//! The resource types the server knows: the built-in table and the custom
//! resources registered through CustomResourceDefinitions. Everything about a
//! type that routing, discovery and storage need lives here.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

/// Built-in kinds with typed defaulting and validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    Namespace,
    Node,
    Pod,
    CoreEvent,
    ConfigMap,
    Secret,
    ServiceAccount,
    NetworkPolicy,
    Lease,
    /// `events.k8s.io/v1` Events: a second view of the core/v1 Events.
    EventsV1,
    Crd,
    Deployment,
    DaemonSet,
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
    PodDisruptionBudget,
    PriorityClass,
}

/// One served resource (one group/version/plural).
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `/status` subresource (writes to the main resource keep status).
    pub status: bool,
    /// Tracks `metadata.generation`.
    pub generation: bool,
    pub builtin: Option<Builtin>,
    /// The storage key shared by every view of the same objects.
    pub storage: String,
    /// `openAPIV3Schema` of a custom resource version.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns` of a custom resource version (empty:
    /// Name and Age).
    pub printer_columns: Vec<Value>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `networkpolicies.networking.k8s.io`, as error messages name it.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
    generation: bool,
    which: Builtin,
) -> ResourceType {
    let storage = if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    };
    ResourceType {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status,
        generation,
        builtin: Some(which),
        storage,
        schema: None,
        printer_columns: Vec::new(),
    }
}

pub fn builtins() -> Vec<ResourceType> {
    use Builtin::*;
    let core_event = builtin(
        "",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        false,
        false,
        CoreEvent,
    );
    // events.k8s.io/v1 Events are a second view of the core/v1 Events: the
    // same objects under the same storage key.
    let events_v1 = ResourceType {
        group: "events.k8s.io".into(),
        builtin: Some(EventsV1),
        ..core_event.clone()
    };
    let mut all = vec![
        builtin(
            "",
            "v1",
            "Namespace",
            "namespaces",
            false,
            &["ns"],
            true,
            false,
            Namespace,
        ),
        builtin("", "v1", "Node", "nodes", false, &["no"], true, false, Node),
        builtin("", "v1", "Pod", "pods", true, &["po"], true, true, Pod),
        core_event,
        builtin(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            true,
            &["cm"],
            false,
            false,
            ConfigMap,
        ),
        builtin(
            "",
            "v1",
            "Secret",
            "secrets",
            true,
            &[],
            false,
            false,
            Secret,
        ),
        builtin(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            &["sa"],
            false,
            false,
            ServiceAccount,
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
            &["netpol"],
            false,
            true,
            NetworkPolicy,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            &[],
            false,
            false,
            Lease,
        ),
        events_v1,
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            true,
            true,
            Crd,
        ),
        builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            &["deploy"],
            true,
            true,
            Deployment,
        ),
        builtin(
            "apps",
            "v1",
            "DaemonSet",
            "daemonsets",
            true,
            &["ds"],
            true,
            true,
            DaemonSet,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            &[],
            false,
            false,
            ClusterRole,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            &[],
            false,
            false,
            ClusterRoleBinding,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            &[],
            false,
            false,
            Role,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            &[],
            false,
            false,
            RoleBinding,
        ),
        builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            &["pdb"],
            true,
            true,
            PodDisruptionBudget,
        ),
        builtin(
            "scheduling.k8s.io",
            "v1",
            "PriorityClass",
            "priorityclasses",
            false,
            &["pc"],
            false,
            false,
            PriorityClass,
        ),
    ];
    for rt in &mut all {
        if matches!(rt.builtin, Some(Pod | Deployment | DaemonSet)) {
            rt.categories = vec!["all".into()];
        }
        if rt.builtin == Some(NetworkPolicy) {
            rt.singular = "networkpolicy".into();
        }
        if rt.builtin == Some(Crd) {
            rt.singular = "customresourcedefinition".into();
        }
    }
    all
}

/// The PriorityClasses every cluster has (kube-apiserver creates them at
/// start and refuses to delete them): name, value, description.
pub const SYSTEM_PRIORITY_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// The stored form of the system PriorityClasses (without uid, timestamps
/// and resourceVersion, which the store's writer adds).
pub fn system_priority_classes() -> Vec<Value> {
    SYSTEM_PRIORITY_CLASSES
        .iter()
        .map(|(name, value, description)| {
            serde_json::json!({
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": name},
                "value": value,
                "globalDefault": false,
                "description": description,
                "preemptionPolicy": "PreemptLowerPriority",
            })
        })
        .collect()
}

/// The set of served resource types; grows and shrinks with CRDs.
#[derive(Debug)]
pub struct Registry {
    types: RwLock<Vec<Arc<ResourceType>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            types: RwLock::new(builtins().into_iter().map(Arc::new).collect()),
        }
    }
}

impl Registry {
    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        self.types.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.all()
            .into_iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The type whose view is the storage form (used to read snapshots and cascades).
    pub fn storage_types(&self) -> Vec<Arc<ResourceType>> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for t in self.all() {
            if t.builtin == Some(Builtin::EventsV1) {
                continue;
            }
            if seen.insert(t.storage.clone()) {
                out.push(t);
            }
        }
        out
    }

    /// Groups in discovery order: core first, then by name; versions per group.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.all() {
            let versions = groups.entry(t.group.clone()).or_default();
            if !versions.contains(&t.version) {
                versions.push(t.version.clone());
            }
        }
        groups
    }

    /// Replace the types served for the CRD named `crd_name` with `types`.
    pub fn set_custom(&self, crd_name: &str, types: Vec<ResourceType>) {
        let mut all = self.types.write().unwrap_or_else(|e| e.into_inner());
        all.retain(|t| t.builtin.is_some() || t.storage != crd_name);
        all.extend(types.into_iter().map(Arc::new));
    }

    pub fn remove_custom(&self, crd_name: &str) {
        self.set_custom(crd_name, Vec::new());
    }
}

/// The resource types a CRD object asks to serve (its served versions).
pub fn types_from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let short_names = string_list(&names["shortNames"]);
    let categories = string_list(&names["categories"]);
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let storage = format!("{plural}.{group}");
    let mut out = Vec::new();
    for version in spec["versions"].as_array().into_iter().flatten() {
        if version["served"].as_bool() != Some(true) {
            continue;
        }
        out.push(ResourceType {
            group: group.clone(),
            version: version["name"].as_str().unwrap_or_default().to_string(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
            short_names: short_names.clone(),
            categories: categories.clone(),
            status: version["subresources"]["status"].is_object(),
            generation: true,
            builtin: None,
            storage: storage.clone(),
            schema: version["schema"].get("openAPIV3Schema").cloned(),
            printer_columns: version["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        });
    }
    out
}

fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

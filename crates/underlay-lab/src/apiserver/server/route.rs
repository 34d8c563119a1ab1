//! Which resource, namespace and object a Kubernetes API path names.

use std::sync::Arc;

use super::super::error::{ApiError, ApiResult};
use super::super::resources::{Registry, ResourceType};

/// What under a resource a path names.
#[derive(Debug, PartialEq)]
pub(super) enum Target {
    Collection,
    Item(String),
    Sub(String, String),
}

#[derive(Debug)]
pub(super) struct ResourceReq {
    pub rt: Arc<ResourceType>,
    pub namespace: Option<String>,
    pub target: Target,
}

/// The target of `[NAME[/SUBRESOURCE]]`, the path after a resource's plural.
fn target(rest: &[&str]) -> ApiResult<Target> {
    match rest {
        [] => Ok(Target::Collection),
        [name] => Ok(Target::Item(name.to_string())),
        [name, sub] => Ok(Target::Sub(name.to_string(), sub.to_string())),
        _ => Err(ApiError::not_found_path()),
    }
}

/// Route `rest`, the path after `/api/VERSION` or `/apis/GROUP/VERSION`.
pub(super) fn route(
    registry: &Registry,
    group: &str,
    version: &str,
    rest: &[&str],
) -> ApiResult<ResourceReq> {
    let find = |plural: &str| {
        registry
            .find(group, version, plural)
            .ok_or_else(ApiError::not_found_path)
    };
    // `/namespaces/NS/RESOURCE...` unless it is the namespace's own subresource.
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && !(group.is_empty() && matches!(rest[2], "status" | "finalize"));
    if namespaced_path {
        let rt = find(rest[2])?;
        let target = target(&rest[3..])?;
        if !rt.namespaced {
            return Err(ApiError::not_found_path());
        }
        return Ok(ResourceReq {
            rt,
            namespace: Some(rest[1].to_string()),
            target,
        });
    }
    let rt = find(rest[0])?;
    let target = match &rest[1..] {
        [] => Target::Collection,
        tail if !rt.namespaced => target(tail)?,
        _ => return Err(ApiError::not_found_path()),
    };
    Ok(ResourceReq {
        rt,
        namespace: None,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(group: &str, path: &str, expect: Option<(&str, Option<&str>, Target)>) {
        let registry = Registry::default();
        let rest: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let got = route(&registry, group, "v1", &rest)
            .ok()
            .map(|r| (r.rt.plural.clone(), r.namespace, r.target));
        let expect = expect.map(|(p, ns, t)| (p.to_string(), ns.map(str::to_string), t));
        assert_eq!(got, expect, "{group}/{path}");
    }

    fn item(name: &str) -> Target {
        Target::Item(name.into())
    }

    fn sub(name: &str, sub: &str) -> Target {
        Target::Sub(name.into(), sub.into())
    }

    #[test]
    fn namespaced_resources_are_routed_under_their_namespace() {
        check(
            "",
            "namespaces/a/pods",
            Some(("pods", Some("a"), Target::Collection)),
        );
        check(
            "",
            "namespaces/a/pods/p",
            Some(("pods", Some("a"), item("p"))),
        );
        check(
            "",
            "namespaces/a/pods/p/status",
            Some(("pods", Some("a"), sub("p", "status"))),
        );
        check("", "pods", Some(("pods", None, Target::Collection)));
        check("", "namespaces/a/pods/p/status/x", None);
        check("", "pods/p", None);
        check("", "namespaces/a/nodes", None);
    }

    #[test]
    fn a_namespace_and_its_own_subresources_are_cluster_scoped() {
        check("", "namespaces/a", Some(("namespaces", None, item("a"))));
        check(
            "",
            "namespaces/a/status",
            Some(("namespaces", None, sub("a", "status"))),
        );
        check(
            "",
            "namespaces/a/finalize",
            Some(("namespaces", None, sub("a", "finalize"))),
        );
        check("", "nodes/n", Some(("nodes", None, item("n"))));
    }

    #[test]
    fn grouped_resources_route_alike() {
        check(
            "coordination.k8s.io",
            "namespaces/a/leases/l",
            Some(("leases", Some("a"), item("l"))),
        );
        check("coordination.k8s.io", "namespaces/a/nodes", None);
        check("", "unknown", None);
    }
}

//! RBAC in deploy/base grants each component exactly the API calls its code
//! makes. The calls are collected from the source: every `Api<Kind>` binding
//! (a field or a `let`), the kube-rs methods called on it (`get`, `list`,
//! `patch`, `patch_status`, `create`, `replace`, `delete`...), `watcher(..)`
//! on it (list + watch), and an event `Recorder` (events.k8s.io create +
//! patch). A binding whose calls the scanner cannot see fails the test, so a
//! new way of calling the API cannot slip past it.

mod common;
use common::root;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Access = BTreeSet<(String, String, String)>; // (group, resource, verb)

/// (group, plural) of the kinds the components may use.
fn resource_of(kind: &str) -> Option<(&'static str, &'static str)> {
    Some(match kind {
        "Node" => ("", "nodes"),
        "Pod" => ("", "pods"),
        "Namespace" => ("", "namespaces"),
        "Secret" => ("", "secrets"),
        "ConfigMap" => ("", "configmaps"),
        "Service" => ("", "services"),
        "Event" => ("events.k8s.io", "events"),
        "NetworkPolicy" => ("networking.k8s.io", "networkpolicies"),
        "Lease" => ("coordination.k8s.io", "leases"),
        "ClusterNetworkPolicy" => ("policy.networking.k8s.io", "clusternetworkpolicies"),
        _ => return None,
    })
}

const METHODS: &[(&str, &str, &str)] = &[
    // (method, verb, subresource)
    ("get_opt", "get", ""),
    ("get", "get", ""),
    ("get_status", "get", "status"),
    ("list", "list", ""),
    ("list_metadata", "list", ""),
    ("watch", "watch", ""),
    ("create", "create", ""),
    ("replace", "update", ""),
    ("replace_status", "update", "status"),
    ("patch", "patch", ""),
    ("patch_status", "patch", "status"),
    ("delete", "delete", ""),
    ("delete_collection", "deletecollection", ""),
];

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The source without whitespace and without `#[cfg(test)]` modules (a test
/// module runs against a test server, not the cluster).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("mod "))
        {
            break;
        }
        let line = line.split("//").next().unwrap_or("");
        out.extend(line.chars().filter(|c| !c.is_whitespace()));
    }
    out
}

/// Every `name: Api<Kind>` (a field, or a typed `let`) and `let name =
/// Api::<Kind>`, with where the code it covers starts and ends: a field is
/// used anywhere in the file, a `let` until the next `let` of the same name.
fn bindings(code: &str) -> Vec<Binding> {
    let mut out: Vec<Binding> = Vec::new();
    for pat in ["Api<", "Api::<"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(pat) {
            let at = from + i;
            from = at + pat.len();
            if at > 0 && is_ident(code[..at].chars().last().unwrap()) {
                continue; // e.g. `MyApi<`
            }
            let rest = &code[from..];
            let end = rest.find('>').unwrap_or(0);
            let kind = rest[..end].rsplit("::").next().unwrap_or("").to_string();
            // The name bound: before `:` (field, typed let) or `=` (let).
            let before = &code[..at];
            let before = before
                .strip_suffix(':')
                .or_else(|| before.strip_suffix('='))
                .unwrap_or("");
            let ident: String = before
                .chars()
                .rev()
                .take_while(|c| is_ident(*c))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let is_let = ident.starts_with("let");
            let name = ident
                .trim_start_matches("let")
                .trim_start_matches("mut")
                .to_string();
            if name.is_empty() || kind.is_empty() || kind == "K" || kind == "DynamicObject" {
                continue;
            }
            // A generic binding (`Api<K::Object>`) stands for every kind the
            // file plugs in through `type Object = Kind;`.
            let kinds = if kind == "Object" {
                associated_objects(code)
            } else {
                vec![kind]
            };
            for kind in kinds {
                out.push(Binding {
                    name: name.clone(),
                    kind,
                    start: if is_let { at } else { 0 },
                    end: code.len(),
                    is_let,
                });
            }
        }
    }
    out.sort_by_key(|b| b.start);
    for i in 0..out.len() {
        if out[i].is_let
            && let Some(next) = out[i + 1..]
                .iter()
                .find(|b| b.is_let && b.name == out[i].name && b.start > out[i].start)
        {
            out[i].end = next.start;
        }
    }
    out
}

/// The kinds named by `type Object = path::Kind;` in a file.
fn associated_objects(code: &str) -> Vec<String> {
    let pat = "typeObject=";
    let mut kinds = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find(pat) {
        let start = from + i + pat.len();
        let end = code[start..].find(';').map_or(code.len(), |e| start + e);
        let kind = code[start..end].rsplit("::").next().unwrap_or("");
        if !kind.is_empty() && !kinds.iter().any(|k| k == kind) {
            kinds.push(kind.to_string());
        }
        from = end;
    }
    kinds
}

#[derive(Debug, PartialEq, Eq)]
struct Binding {
    name: String,
    kind: String,
    start: usize,
    end: usize,
    is_let: bool,
}

fn calls_on(code: &str, name: &str) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    let mut from = 0;
    let needle = format!("{name}.");
    while let Some(i) = code[from..].find(&needle) {
        let at = from + i;
        from = at + needle.len();
        if at > 0 && is_ident(code[..at].chars().last().unwrap()) {
            continue;
        }
        let rest = &code[from..];
        let rest = rest.strip_prefix("clone().").unwrap_or(rest);
        let method: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        if rest[method.len()..].starts_with('(')
            && let Some((_, verb, sub)) = METHODS.iter().find(|(m, _, _)| *m == method)
        {
            out.push((*verb, *sub));
        }
    }
    for w in ["watcher(", "watcher::watcher("] {
        for arg in [format!("{w}{name},"), format!("{w}{name}.clone()")] {
            if code.contains(&arg) {
                out.push(("list", ""));
                out.push(("watch", ""));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The API access the code of these crates makes.
fn used_by(crates: &[&str]) -> Access {
    let mut access = Access::new();
    let mut files = Vec::new();
    for c in crates {
        let src = root().join("crates").join(c).join("src");
        assert!(src.is_dir(), "{} is missing", src.display());
        rust_files(&src, &mut files);
    }
    let mut unexplained = Vec::new();
    for file in files {
        let code = code(&file);
        if code.contains("Recorder::new(") {
            for verb in ["create", "patch"] {
                access.insert(("events.k8s.io".into(), "events".into(), verb.into()));
            }
        }
        for Binding {
            name,
            kind,
            start,
            end,
            ..
        } in bindings(&code)
        {
            let Some((group, plural)) = resource_of(&kind) else {
                unexplained.push(format!(
                    "{}: Api<{kind}> is not in this test's kind table",
                    file.display()
                ));
                continue;
            };
            let calls = calls_on(&code[start..end], &name);
            if calls.is_empty() && !code.contains(&format!("{name}:Api<")) {
                unexplained.push(format!(
                    "{}: no call on `{name}` (Api<{kind}>) recognised; extend the scanner",
                    file.display()
                ));
            }
            for (verb, sub) in calls {
                let resource = if sub.is_empty() {
                    plural.to_string()
                } else {
                    format!("{plural}/{sub}")
                };
                access.insert((group.into(), resource, verb.into()));
            }
        }
    }
    assert!(unexplained.is_empty(), "{}", unexplained.join("\n"));
    access
}

fn objects() -> Vec<Value> {
    let mut out = Vec::new();
    for f in ["route-controller-rbac.yaml", "agent-rbac.yaml"] {
        let text = std::fs::read_to_string(root().join("deploy/base").join(f)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push(v);
            }
        }
    }
    out
}

/// What the roles bound to a service account grant.
fn granted_to(service_account: &str) -> Access {
    let objs = objects();
    let mut roles = BTreeMap::new();
    for b in objs
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        if b["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == service_account)
        {
            roles.insert(
                b["roleRef"]["name"].as_str().unwrap().to_string(),
                b["roleRef"]["kind"].as_str().unwrap().to_string(),
            );
        }
    }
    let mut access = Access::new();
    for (name, kind) in roles {
        let role = objs
            .iter()
            .find(|o| o["kind"] == kind.as_str() && o["metadata"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{kind} {name} is bound but not defined"));
        for rule in role["rules"].as_array().unwrap() {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        assert!(g != "*" && r != "*" && v != "*", "{name} grants a wildcard");
                        access.insert((g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    access
}

fn check(component: &str, crates: &[&str]) {
    let used = used_by(crates);
    let granted = granted_to(component);
    let missing: Vec<_> = used.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&used).collect();
    assert!(
        missing.is_empty(),
        "{component} calls the API without permission: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "{component} is granted more than its code uses: {extra:?}"
    );
}

#[test]
fn the_route_controller_is_granted_exactly_what_it_calls() {
    check("underlay-route-controller", &["underlay-route-controller"]);
}

#[test]
fn the_agent_is_granted_exactly_what_it_and_its_policy_engine_call() {
    check("underlay-agent", &["underlay-agent", "underlay-policy"]);
}

#[test]
fn the_leader_election_role_is_limited_to_its_lease_except_create() {
    let role = objects()
        .into_iter()
        .find(|o| {
            o["kind"] == "Role"
                && o["metadata"]["name"] == "underlay-route-controller-leader-election"
        })
        .unwrap();
    for rule in role["rules"].as_array().unwrap() {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        if verbs != ["create"] {
            assert_eq!(
                rule["resourceNames"],
                serde_json::json!(["underlay-route-controller"]),
                "{rule}"
            );
        }
    }
}

/// (binding, kind, calls) as the scanner reports them.
type Found = (String, String, Vec<(&'static str, &'static str)>);

#[test]
fn the_scanner_sees_fields_lets_watchers_and_recorders() {
    let code: String = r#"
        struct K { nodes: Api<Node>, recorder: Recorder }
        fn f() { self.nodes.patch_status(n, &pp, &p); let r = Recorder::new(c, rep); }
        fn g() { let api: Api<Pod> = Api::namespaced(c, ns); api.get_opt(&n); }
        fn h() { let api: Api<Namespace> = Api::all(c); watcher(api, cfg); }
        fn i() { let leases = Api::<Lease>::all(c); leases.clone().replace(n, &pp, &l); }
        impl Kind for Ps { type Object = core::Pod; } impl Kind for Qs { type Object = net::NetworkPolicy; }
        fn w<K: Kind>() { let objs: Api<K::Object> = Api::all(c); watcher(objs, cfg); }
    "#
    .chars()
    .filter(|c| !c.is_whitespace())
    .collect();
    let found: Vec<Found> = bindings(&code)
        .into_iter()
        .map(|b| {
            let calls = calls_on(&code[b.start..b.end], &b.name);
            (b.name, b.kind, calls)
        })
        .collect();
    let want: Vec<Found> = vec![
        ("nodes".into(), "Node".into(), vec![("patch", "status")]),
        ("api".into(), "Pod".into(), vec![("get", "")]),
        (
            "api".into(),
            "Namespace".into(),
            vec![("list", ""), ("watch", "")],
        ),
        ("leases".into(), "Lease".into(), vec![("update", "")]),
        (
            "objs".into(),
            "Pod".into(),
            vec![("list", ""), ("watch", "")],
        ),
        (
            "objs".into(),
            "NetworkPolicy".into(),
            vec![("list", ""), ("watch", "")],
        ),
    ];
    assert_eq!(found, want);
}

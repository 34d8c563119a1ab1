//! The `CNI_*` environment variables: which ones each command needs, how
//! they are validated, and `CNI_ARGS` parsed exactly as the reference
//! plugins do (`K=V` pairs separated by `;`, unknown keys rejected unless
//! `IgnoreUnknown` is true).

use crate::error::{CniError, Result, code};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Version,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            "GC" => Self::Gc,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "unknown CNI_COMMAND {other:?}; use one of ADD, DEL, CHECK, STATUS, VERSION, GC"
                    ),
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Version => "VERSION",
            Self::Gc => "GC",
        }
    }
}

/// The Kubernetes identity of the pod, from `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: String,
    pub name: String,
    pub infra_container_id: String,
    pub uid: String,
}

/// The environment of one invocation, validated for its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    /// Empty for commands that do not take it.
    pub container_id: String,
    pub netns: Option<PathBuf>,
    /// Empty for commands that do not take it.
    pub ifname: String,
    pub pod: PodArgs,
    pub path: Vec<PathBuf>,
}

/// Reads and validates the environment. `get` looks a variable up (so tests
/// and the fuzzer can pass a map instead of the process environment).
pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv> {
    let command_raw = get("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND"))?;
    let command = Command::parse(&command_raw)?;
    use Command::*;
    let needs = |var: &str| -> bool {
        match var {
            "CNI_CONTAINERID" | "CNI_IFNAME" => matches!(command, Add | Del | Check),
            "CNI_NETNS" => matches!(command, Add | Check),
            "CNI_PATH" => matches!(command, Add | Del | Check | Gc | Status),
            _ => false,
        }
    };
    let fetch = |var: &str| -> Result<Option<String>> {
        match get(var) {
            Some(v) if !v.is_empty() => Ok(Some(v)),
            _ if needs(var) => Err(missing(var)),
            _ => Ok(None),
        }
    };

    let container_id = fetch("CNI_CONTAINERID")?.unwrap_or_default();
    if matches!(command, Add | Del | Check) {
        validate_container_id(&container_id)?;
    }
    let ifname = fetch("CNI_IFNAME")?.unwrap_or_default();
    if matches!(command, Add | Del | Check) {
        validate_ifname(&ifname)?;
    }
    let netns = fetch("CNI_NETNS")?.map(PathBuf::from);
    if let Some(ns) = &netns
        && !ns.is_absolute()
    {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS {:?} must be an absolute path", ns.display()),
        ));
    }
    let path = fetch("CNI_PATH")?
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let pod = match get("CNI_ARGS") {
        Some(a) if matches!(command, Add | Del | Check) => parse_cni_args(&a)?,
        _ => PodArgs::default(),
    };
    Ok(CniEnv {
        command,
        container_id,
        netns,
        ifname,
        pod,
        path,
    })
}

fn missing(var: &str) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        format!(
            "environment variable {var} is required for this command; the container runtime must set it"
        ),
    )
}

/// Container IDs as the reference plugins accept them: a letter or digit
/// followed by letters, digits, `_`, `.` or `-`.
pub fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_CONTAINERID {id:?} is invalid: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
            ),
        ))
    }
}

/// Interface names the kernel accepts: 1-15 bytes, not `.` or `..`, no `/`,
/// `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME {name:?} is not a valid interface name: {why}"),
        ))
    };
    if name.is_empty() || name.len() > 15 {
        return bad("it must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return bad("it must not contain '/', ':' or whitespace");
    }
    Ok(())
}

/// Parses `CNI_ARGS` as the reference plugins do: an empty string has no
/// pairs; every pair is `KEY=VALUE` with exactly one `=`; `IgnoreUnknown`
/// (`1`/`true`/`0`/`false`, any case) decides whether keys other than the
/// Kubernetes ones are an error.
pub fn parse_cni_args(args: &str) -> Result<PodArgs> {
    let invalid = |msg: String| CniError::new(code::INVALID_ENV, msg);
    let mut pairs = BTreeMap::new();
    let mut ordered = Vec::new();
    if !args.is_empty() {
        for pair in args.split(';') {
            let kv: Vec<&str> = pair.split('=').collect();
            if kv.len() != 2 {
                return Err(invalid(format!(
                    "CNI_ARGS pair {pair:?} is invalid: each entry must be KEY=VALUE, entries separated by ';'"
                )));
            }
            pairs.insert(kv[0], kv[1]);
            ordered.push((kv[0], kv[1]));
        }
    }
    let ignore_unknown = match pairs.get("IgnoreUnknown") {
        None => false,
        Some(v) => parse_bool(v).ok_or_else(|| {
            invalid(format!(
                "CNI_ARGS IgnoreUnknown={v:?} is not a boolean: use 1, true, 0 or false"
            ))
        })?,
    };
    let mut pod = PodArgs::default();
    for (k, v) in ordered {
        match k {
            "IgnoreUnknown" => {}
            "K8S_POD_NAMESPACE" => pod.namespace = v.to_string(),
            "K8S_POD_NAME" => pod.name = v.to_string(),
            "K8S_POD_INFRA_CONTAINER_ID" => pod.infra_container_id = v.to_string(),
            "K8S_POD_UID" => pod.uid = v.to_string(),
            _ if ignore_unknown => {}
            _ => {
                return Err(invalid(format!(
                    "CNI_ARGS has unknown key {k:?}; add IgnoreUnknown=1 to ignore keys this plugin does not use"
                )));
            }
        }
    }
    Ok(pod)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(|k| map.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1",
        ),
    ];

    #[test]
    fn add_environment_as_a_runtime_sends_it_parses_fully() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id, "abc123");
        assert_eq!(
            e.netns.as_deref(),
            Some(std::path::Path::new("/run/netns/x"))
        );
        assert_eq!(e.path.len(), 2);
        assert_eq!(
            e.pod,
            PodArgs {
                namespace: "ns".into(),
                name: "web-0".into(),
                infra_container_id: "abc123".into(),
                uid: "u-1".into()
            }
        );
    }

    #[test]
    fn each_command_requires_its_variables() {
        let without = |cmd: &str, drop: &str| {
            let vars: Vec<(&str, &str)> = ADD
                .iter()
                .copied()
                .map(|(k, v)| if k == "CNI_COMMAND" { (k, cmd) } else { (k, v) })
                .filter(|(k, _)| *k != drop)
                .collect();
            env(&vars)
        };
        for (cmd, var, required) in [
            ("ADD", "CNI_NETNS", true),
            ("ADD", "CNI_IFNAME", true),
            ("ADD", "CNI_CONTAINERID", true),
            ("ADD", "CNI_PATH", true),
            ("ADD", "CNI_ARGS", false),
            ("CHECK", "CNI_NETNS", true),
            ("DEL", "CNI_NETNS", false),
            ("DEL", "CNI_IFNAME", true),
            ("GC", "CNI_CONTAINERID", false),
            ("GC", "CNI_PATH", true),
            ("STATUS", "CNI_IFNAME", false),
            ("VERSION", "CNI_PATH", false),
        ] {
            let r = without(cmd, var);
            assert_eq!(r.is_err(), required, "{cmd} without {var}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e.code, code::INVALID_ENV);
                assert!(e.msg.contains(var), "{}", e.msg);
            }
        }
    }

    #[test]
    fn unknown_command_and_missing_command_are_invalid_env() {
        assert_eq!(env(&[]).unwrap_err().code, 4);
        assert_eq!(env(&[("CNI_COMMAND", "add")]).unwrap_err().code, 4);
    }

    #[test]
    fn cni_args_follow_the_reference_rules() {
        let ok = |a: &str| parse_cni_args(a).map(|p| p.name);
        assert_eq!(ok("").unwrap(), "");
        assert_eq!(ok("K8S_POD_NAME=a").unwrap(), "a");
        assert_eq!(ok("IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=a").unwrap(), "a");
        assert_eq!(
            ok("FOO=bar;IgnoreUnknown=true;K8S_POD_NAME=a").unwrap(),
            "a"
        );
        assert_eq!(ok("IgnoreUnknown=TRUE;FOO=bar").unwrap(), "");
        for bad in [
            "FOO=bar",
            "IgnoreUnknown=0;FOO=bar",
            "IgnoreUnknown=false;FOO=bar",
            "IgnoreUnknown=yes",
            "K8S_POD_NAME",
            "K8S_POD_NAME=a=b",
            "K8S_POD_NAME=a;",
            ";",
        ] {
            assert_eq!(
                parse_cni_args(bad).unwrap_err().code,
                code::INVALID_ENV,
                "{bad}"
            );
        }
    }

    #[test]
    fn container_ids_and_interface_names_are_validated() {
        for good in ["a", "0abc", "a_b.c-d"] {
            validate_container_id(good).unwrap();
        }
        for bad in ["", "-a", "_a", "a b", "a/b", "ä"] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
        for good in ["eth0", "net1", "a", "abcdefghijklmno"] {
            validate_ifname(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "abcdefghijklmnop"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_netns_is_rejected() {
        let vars: Vec<(&str, &str)> = ADD
            .iter()
            .copied()
            .map(|(k, v)| {
                if k == "CNI_NETNS" {
                    (k, "netns/x")
                } else {
                    (k, v)
                }
            })
            .collect();
        assert_eq!(env(&vars).unwrap_err().code, code::INVALID_ENV);
    }
}

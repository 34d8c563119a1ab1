//! The network configuration on stdin: decoding (code 6), version checks
//! (code 1), validation (codes 2 and 7), and the fields this plugin reads.
//! Fields meant for other plugins or for the runtime (`runtimeConfig`,
//! `capabilities`, `args`) are accepted and left alone, so the plugin works
//! inside a conflist next to `portmap` and `bandwidth`.

use crate::error::{CniError, Result, code};
use crate::types::{CniResult, Version};
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Where the agent listens unless the configuration says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/underlay/agent.sock";
/// How long the plugin waits for one agent call (Attach includes programming
/// the pod's policy).
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// One attachment the runtime still considers valid (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    pub agent_socket: PathBuf,
    pub agent_timeout: Duration,
    pub mtu: Option<u32>,
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` (GC only; `None` when absent).
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    agent_socket: Option<String>,
    agent_timeout_seconds: Option<u64>,
    mtu: Option<u32>,
    prev_result: Option<Value>,
    ipam: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

/// Decodes only far enough to learn the requested `cniVersion` (for error
/// documents and VERSION); never fails.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    serde_json::from_slice::<Peek>(stdin)
        .ok()
        .and_then(|p| p.cni_version)
}

/// Parses and validates the network configuration.
pub fn parse(stdin: &[u8]) -> Result<NetConf> {
    let wire = decode(stdin)?;
    let version = cni_version(wire.cni_version.as_deref())?;
    let name = network_name(wire.name)?;
    let plugin_type = wire
        .plugin_type
        .ok_or_else(|| invalid("the network configuration must set type"))?;
    if wire.ipam.is_some() {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "the ipam section is not supported: underlay's agent allocates pod addresses itself; remove ipam from the configuration",
        ));
    }
    check_mtu(wire.mtu)?;
    let agent_socket = agent_socket(wire.agent_socket)?;
    let agent_timeout = agent_timeout(wire.agent_timeout_seconds)?;
    let prev_result = wire
        .prev_result
        .as_ref()
        .map(CniResult::from_value)
        .transpose()?;
    Ok(NetConf {
        version,
        name,
        plugin_type,
        agent_socket,
        agent_timeout,
        mtu: wire.mtu,
        prev_result,
        valid_attachments: wire.valid_attachments,
    })
}

/// A configuration that decodes but breaks a rule (code 7).
fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

/// Decodes stdin: a JSON object whose known fields have their types (code 6).
fn decode(stdin: &[u8]) -> Result<Wire> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            "the network configuration on stdin is not valid JSON",
        )
        .with_details(e)
    })?;
    if !value.is_object() {
        return Err(CniError::new(
            code::DECODE,
            "the network configuration on stdin must be a JSON object",
        ));
    }
    Wire::deserialize(&value).map_err(|e| {
        CniError::new(
            code::DECODE,
            "a field of the network configuration has the wrong type",
        )
        .with_details(e)
    })
}

/// The required `cniVersion`, one this plugin speaks.
fn cni_version(version: Option<&str>) -> Result<Version> {
    match version {
        None => Err(invalid(
            "the network configuration must set cniVersion (0.4.0, 1.0.0 or 1.1.0)",
        )),
        Some(v) => Version::parse(v),
    }
}

/// The required network `name`, in the characters the spec allows.
fn network_name(name: Option<String>) -> Result<String> {
    let name = name.ok_or_else(|| invalid("the network configuration must set name"))?;
    if !valid_network_name(&name) {
        return Err(invalid(format!(
            "network name {name:?} is invalid: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        )));
    }
    Ok(name)
}

/// An MTU, when set, must be one a link can have.
fn check_mtu(mtu: Option<u32>) -> Result<()> {
    if let Some(mtu) = mtu
        && !(68..=65535).contains(&mtu)
    {
        return Err(invalid(format!(
            "mtu {mtu} is out of range: use a value from 68 to 65535, or omit it"
        )));
    }
    Ok(())
}

/// `agentSocket`, absolute, or the default.
fn agent_socket(socket: Option<String>) -> Result<PathBuf> {
    let agent_socket = PathBuf::from(socket.unwrap_or_else(|| DEFAULT_AGENT_SOCKET.to_string()));
    if !agent_socket.is_absolute() {
        return Err(invalid(format!(
            "agentSocket {:?} must be an absolute path",
            agent_socket.display()
        )));
    }
    Ok(agent_socket)
}

/// `agentTimeoutSeconds`: at least one second, at most an hour, or the default.
fn agent_timeout(seconds: Option<u64>) -> Result<Duration> {
    match seconds {
        None => Ok(DEFAULT_AGENT_TIMEOUT),
        Some(0) => Err(invalid("agentTimeoutSeconds must be at least 1")),
        Some(s) => Ok(Duration::from_secs(s.min(3600))),
    }
}

fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: std::result::Result<(), u32>) {
        let got = parse(input.as_bytes()).map(|_| ()).map_err(|e| e.code);
        assert_eq!(got, expect, "{input}");
    }

    #[test]
    fn configuration_errors_get_their_spec_codes() {
        let ok = r#"{"cniVersion":"1.1.0","name":"underlay","type":"underlay-cni"}"#;
        check(ok, Ok(()));
        check("", Err(code::DECODE));
        check("{", Err(code::DECODE));
        check("[]", Err(code::DECODE));
        check(r#"{"cniVersion":1}"#, Err(code::DECODE));
        check(
            r#"{"cniVersion":"1.1.0","name":"u","type":"t","mtu":"big"}"#,
            Err(code::DECODE),
        );
        check(r#"{"name":"u","type":"t"}"#, Err(code::INVALID_CONFIG));
        check(
            r#"{"cniVersion":"0.3.1","name":"u","type":"t"}"#,
            Err(code::INCOMPATIBLE_VERSION),
        );
        check(
            r#"{"cniVersion":"1.0.0","type":"t"}"#,
            Err(code::INVALID_CONFIG),
        );
        check(
            r#"{"cniVersion":"1.0.0","name":"-bad","type":"t"}"#,
            Err(code::INVALID_CONFIG),
        );
        check(
            r#"{"cniVersion":"1.0.0","name":"u"}"#,
            Err(code::INVALID_CONFIG),
        );
        check(
            r#"{"cniVersion":"1.0.0","name":"u","type":"t","ipam":{"type":"host-local"}}"#,
            Err(code::UNSUPPORTED_FIELD),
        );
        check(
            r#"{"cniVersion":"1.0.0","name":"u","type":"t","mtu":20}"#,
            Err(code::INVALID_CONFIG),
        );
        check(
            r#"{"cniVersion":"1.0.0","name":"u","type":"t","agentSocket":"rel.sock"}"#,
            Err(code::INVALID_CONFIG),
        );
        check(
            r#"{"cniVersion":"1.0.0","name":"u","type":"t","prevResult":{"ips":[{"address":"nope"}]}}"#,
            Err(code::DECODE),
        );
    }

    #[test]
    fn fields_for_other_plugins_and_the_runtime_are_accepted() {
        let conf = parse(
            br#"{"cniVersion":"1.0.0","name":"u","type":"underlay-cni","mtu":1400,
                "agentSocket":"/tmp/a.sock","capabilities":{"portMappings":true},
                "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},
                "args":{"cni":{"x":1}},
                "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"a"}],"ips":[{"address":"10.0.0.2/32","interface":0}]}}"#,
        )
        .unwrap();
        assert_eq!(conf.mtu, Some(1400));
        assert_eq!(conf.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(conf.prev_result.unwrap().ips.len(), 1);
    }

    #[test]
    fn gc_reads_valid_attachments() {
        let conf = parse(
            br#"{"cniVersion":"1.1.0","name":"u","type":"t",
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            conf.valid_attachments.unwrap(),
            vec![ValidAttachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }
}

//! The CNI error result: every failure the plugin reports, with the code the
//! CNI specification assigns to it (or a plugin-specific code from 100 up),
//! and its JSON form on stdout.

use serde::Serialize;
use std::fmt;

/// Error codes. 1-99 are reserved by the CNI specification; 100 and above
/// belong to this plugin.
pub mod code {
    /// The requested `cniVersion` is not supported for this command.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// The network configuration has a field this plugin refuses.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container (attachment) is unknown to the agent.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A `CNI_*` environment variable is missing or malformed.
    pub const INVALID_ENV: u32 = 4;
    /// Reading stdin or writing a file failed.
    pub const IO_FAILURE: u32 = 5;
    /// stdin is not valid JSON of the expected shape.
    pub const DECODE: u32 = 6;
    /// The network configuration is well formed JSON but not valid.
    pub const INVALID_CONFIG: u32 = 7;
    /// The agent is not ready (or not reachable); the runtime should retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin cannot serve ADD and existing pods may have
    /// degraded connectivity (policy dataplane out of sync).
    pub const NOT_AVAILABLE_LIMBO: u32 = 51;
    /// The agent failed the request for a reason not covered below.
    pub const AGENT_FAILED: u32 = 100;
    /// `CNI_IFNAME` already exists in the pod's network namespace.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// The node's pod address pool has no free address left.
    pub const POOL_EXHAUSTED: u32 = 102;
    /// A netlink or sysctl operation failed while wiring the pod.
    pub const DATAPLANE: u32 = 103;
    /// `CNI_NETNS` does not name a network namespace.
    pub const NETNS_NOT_FOUND: u32 = 104;
    /// CHECK found the pod's network different from what was set up.
    pub const CHECK_FAILED: u32 = 105;
    /// The agent could not put the pod's network policy in place.
    pub const POLICY_FAILED: u32 = 106;
}

/// A CNI error: code, a message saying what to fix, and optional details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }

    /// The JSON document printed on stdout for this error.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            #[serde(flatten)]
            error: &'a CniError,
        }
        serde_json::to_string(&Wire {
            cni_version,
            error: self,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code))
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cni error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_version_code_and_message_and_omits_empty_details() {
        let json = CniError::new(code::INVALID_ENV, "set CNI_IFNAME").to_json("1.1.0");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "set CNI_IFNAME");
        assert!(v.get("details").is_none());
        let json = CniError::new(7, "bad").with_details("x").to_json("0.4.0");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["details"], "x");
    }
}

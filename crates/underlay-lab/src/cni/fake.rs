//! The recording fake of [`PluginExec`]: records every invocation and
//! answers like a plugin would, for the runtime's own tests.

use super::{ExecOutput, Invocation, PluginExec};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A recording fake: answers ADD with a result naming the plugin, or with
/// the error configured for a plugin type.
#[derive(Debug, Default)]
pub struct FakeExec {
    pub calls: std::sync::Mutex<Vec<Invocation>>,
    pub fail: std::sync::Mutex<BTreeMap<String, (String, u32)>>,
}

#[async_trait::async_trait]
impl PluginExec for FakeExec {
    async fn exec(&self, inv: &Invocation) -> std::io::Result<ExecOutput> {
        self.calls
            .lock()
            .expect("fake calls lock")
            .push(inv.clone());
        let ty = inv
            .plugin
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let command = inv.env.get("CNI_COMMAND").cloned().unwrap_or_default();
        if let Some((cmd, code)) = self.fail.lock().expect("fake fail lock").get(&ty)
            && *cmd == command
        {
            return Ok(ExecOutput::error(*code, "fake failure", &ty));
        }
        let stdout = if command == "ADD" {
            let mut prev = inv
                .stdin
                .get("prevResult")
                .cloned()
                .unwrap_or(json!({"cniVersion":"1.1.0","ips":[]}));
            let seen = prev
                .as_object_mut()
                .map(|o| o.entry("interfaces").or_insert(json!([])).clone());
            let mut seen = seen.and_then(|s| s.as_array().cloned()).unwrap_or_default();
            seen.push(json!({"name": ty}));
            prev["interfaces"] = Value::Array(seen);
            serde_json::to_vec(&prev)?
        } else {
            Vec::new()
        };
        Ok(ExecOutput::success(stdout))
    }
}

//! The container runtime's side of CNI (spec 1.1): loads a network
//! configuration list and runs its plugins the way containerd and CRI-O do
//! through libcni — ADD in chain order with each plugin's result passed to the
//! next as `prevResult`, CHECK in order and DEL in reverse order with the
//! cached ADD result, GC with `cni.dev/valid-attachments`, STATUS, and the
//! result cache that makes DEL work after a restart.
//!
//! Running a plugin binary is the one side effect and sits behind
//! [`PluginExec`]: the lab runs plugins inside the node's namespace, tests
//! pass a recording fake.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod fake;
pub use fake::FakeExec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid CNI network configuration {path}: {reason}; fix the conflist")]
    Config { path: String, reason: String },
    #[error(
        "CNI plugin {plugin:?} not found in {dirs:?}; install it (underlay-cni install) or fix the CNI bin dir"
    )]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("CNI plugin {plugin} failed {command} with code {code}: {msg} {details}")]
    Plugin {
        plugin: String,
        command: String,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("failed to run CNI plugin {plugin}: {source}")]
    Exec {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI result cache {path}: {source}; check the lab state directory")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A network configuration list (`*.conflist`).
#[derive(Clone, Debug)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    /// Each plugin's configuration object as written.
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkConfigList {
    pub fn parse(path: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::Config {
            path: path.to_owned(),
            reason,
        };
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("the top level is not an object".into()))?;
        let text = |key: &str| obj.get(key).and_then(Value::as_str).map(str::to_owned);
        let name = text("name").ok_or_else(|| bad("missing \"name\"".into()))?;
        let cni_version = text("cniVersion").ok_or_else(|| bad("missing \"cniVersion\"".into()))?;
        let plugins = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("missing \"plugins\" list".into()))?
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let p = p
                    .as_object()
                    .ok_or_else(|| bad(format!("plugin {i} is not an object")))?;
                if p.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    return Err(bad(format!("plugin {i} has no \"type\"")));
                }
                Ok(p.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        if plugins.is_empty() {
            return Err(bad("the plugin list is empty".into()));
        }
        Ok(Self {
            name,
            cni_version,
            disable_check: obj
                .get("disableCheck")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            disable_gc: obj
                .get("disableGC")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            plugins,
        })
    }

    /// Loads the lexically first `*.conflist` in `dir`, as runtimes do.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::Config {
                path: dir.display().to_string(),
                reason: e.to_string(),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
            .collect();
        files.sort();
        let path = files.first().ok_or_else(|| Error::Config {
            path: dir.display().to_string(),
            reason: "no .conflist file".into(),
        })?;
        let bytes = std::fs::read(path).map_err(|e| Error::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&path.display().to_string(), &bytes)
    }

    fn supports_gc(&self) -> bool {
        version_at_least(&self.cni_version, (1, 1, 0))
    }

    fn plugin_type(plugin: &Map<String, Value>) -> &str {
        plugin
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The stdin a plugin gets: its own object plus the list's name and
    /// version, and `prevResult` when there is one.
    fn plugin_config(&self, index: usize, prev: Option<&Value>, extra: &[(&str, Value)]) -> Value {
        let mut conf = self.plugins[index].clone();
        conf.insert("name".into(), json!(self.name));
        conf.insert("cniVersion".into(), json!(self.cni_version));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        for (k, v) in extra {
            conf.insert((*k).into(), v.clone());
        }
        Value::Object(conf)
    }
}

fn version_at_least(v: &str, want: (u32, u32, u32)) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let got = (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    );
    got >= want
}

/// The pod a network attachment belongs to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
}

impl Attachment {
    /// `CNI_ARGS` as kubelet's runtimes send it: `IgnoreUnknown=1` first, so
    /// plugins that do not know the Kubernetes keys accept them.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        )
    }
}

/// One plugin invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub plugin: PathBuf,
    pub env: BTreeMap<String, String>,
    pub stdin: Value,
}

/// What a plugin process returned.
#[derive(Clone, Debug)]
pub struct ExecOutput {
    pub success: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// A plugin that succeeded, printing `stdout` (its result, or nothing).
    pub fn success(stdout: Vec<u8>) -> ExecOutput {
        ExecOutput {
            success: true,
            stdout,
            stderr: Vec::new(),
        }
    }

    /// A plugin that failed, printing a CNI error result.
    pub fn error(code: u32, msg: &str, details: &str) -> ExecOutput {
        let result = json!({"cniVersion": "1.1.0", "code": code, "msg": msg, "details": details});
        ExecOutput {
            success: false,
            stdout: result.to_string().into_bytes(),
            stderr: Vec::new(),
        }
    }
}

/// Runs a plugin binary.
#[async_trait::async_trait]
pub trait PluginExec: Send + Sync {
    async fn exec(&self, invocation: &Invocation) -> std::io::Result<ExecOutput>;
}

/// Runs plugins as processes in the namespace at `netns` (the node's), with
/// nothing but the CNI environment — as a runtime does.
#[derive(Clone, Debug)]
pub struct ProcessExec {
    /// The node namespace the runtime lives in; `None` runs in this one.
    pub netns: Option<PathBuf>,
}

#[async_trait::async_trait]
impl PluginExec for ProcessExec {
    async fn exec(&self, inv: &Invocation) -> std::io::Result<ExecOutput> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = match &self.netns {
            Some(ns) => crate::netns::command_in(ns, &inv.plugin),
            // starts: underlay-cni ptp host-local portmap bandwidth
            None => tokio::process::Command::new(&inv.plugin),
        };
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(&inv.env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&serde_json::to_vec(&inv.stdin)?).await?;
        }
        let out = child.wait_with_output().await?;
        Ok(ExecOutput {
            success: out.status.success(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

/// The runtime: a conflist, where plugins live, where results are cached.
pub struct Runtime {
    pub config: NetworkConfigList,
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
    pub exec: Box<dyn PluginExec>,
}

impl Runtime {
    fn find(&self, plugin: &str) -> Result<PathBuf> {
        // The type is a file name, never a path (the spec forbids `/`).
        if plugin.contains('/') {
            return Err(Error::PluginNotFound {
                plugin: plugin.to_owned(),
                dirs: self.bin_dirs.clone(),
            });
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::PluginNotFound {
                plugin: plugin.to_owned(),
                dirs: self.bin_dirs.clone(),
            })
    }

    fn env(&self, command: &str, att: Option<&Attachment>) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("CNI_COMMAND".into(), command.into());
        env.insert(
            "CNI_PATH".into(),
            std::env::join_paths(&self.bin_dirs)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        if let Some(a) = att {
            env.insert("CNI_CONTAINERID".into(), a.container_id.clone());
            env.insert("CNI_NETNS".into(), a.netns.clone());
            env.insert("CNI_IFNAME".into(), a.ifname.clone());
            env.insert("CNI_ARGS".into(), a.cni_args());
        }
        env
    }

    async fn invoke(
        &self,
        index: usize,
        command: &str,
        env: BTreeMap<String, String>,
        stdin: Value,
    ) -> Result<Option<Value>> {
        let ty = NetworkConfigList::plugin_type(&self.config.plugins[index]).to_owned();
        let plugin = self.find(&ty)?;
        let inv = Invocation { plugin, env, stdin };
        let out = self.exec.exec(&inv).await.map_err(|source| Error::Exec {
            plugin: ty.clone(),
            source,
        })?;
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.success {
            let (code, msg, details) = match &parsed {
                Some(v) => (
                    v.get("code")
                        .and_then(Value::as_u64)
                        .and_then(|c| u32::try_from(c).ok())
                        .unwrap_or(999),
                    v.get("msg")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    v.get("details")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                ),
                None => (
                    999,
                    "plugin failed without a JSON error".to_owned(),
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ),
            };
            return Err(Error::Plugin {
                plugin: ty,
                command: command.to_owned(),
                code,
                msg,
                details,
            });
        }
        Ok(parsed)
    }

    fn cache_path(&self, att: &Attachment) -> PathBuf {
        self.cache_dir.join(format!(
            "{}-{}-{}",
            self.config.name, att.container_id, att.ifname
        ))
    }

    /// ADD: every plugin in order; the last result is cached and returned.
    /// If a plugin fails, DEL runs for the whole chain (as runtimes do) and
    /// the first error is returned.
    pub async fn add(&self, att: &Attachment) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for i in 0..self.config.plugins.len() {
            let stdin = self.config.plugin_config(i, prev.as_ref(), &[]);
            match self
                .invoke(i, "ADD", self.env("ADD", Some(att)), stdin)
                .await
            {
                Ok(result) => prev = result.or(prev),
                Err(err) => {
                    let _ = self.del_with(att, prev.as_ref()).await;
                    return Err(err);
                }
            }
        }
        let result = prev.unwrap_or_else(|| json!({"cniVersion": self.config.cni_version}));
        let path = self.cache_path(att);
        let cached = json!({"kind":"cniCacheV1","containerId":att.container_id,"ifName":att.ifname,"networkName":self.config.name,"netns":att.netns,"cniArgs":att.cni_args(),"result":result});
        std::fs::create_dir_all(&self.cache_dir)
            .and_then(|_| {
                std::fs::write(
                    &path,
                    serde_json::to_vec_pretty(&cached).unwrap_or_default(),
                )
            })
            .map_err(|source| Error::Cache { path, source })?;
        Ok(result)
    }

    /// CHECK: every plugin in order with the cached result.
    pub async fn check(&self, att: &Attachment) -> Result<()> {
        if self.config.disable_check {
            return Ok(());
        }
        let prev = self.cached(att);
        for i in 0..self.config.plugins.len() {
            let stdin = self.config.plugin_config(i, prev.as_ref(), &[]);
            self.invoke(i, "CHECK", self.env("CHECK", Some(att)), stdin)
                .await?;
        }
        Ok(())
    }

    /// DEL: every plugin in reverse order with the cached result; then the
    /// cache entry is removed. Runs every plugin even if one fails.
    pub async fn del(&self, att: &Attachment) -> Result<()> {
        let prev = self.cached(att);
        self.del_with(att, prev.as_ref()).await?;
        let _ = std::fs::remove_file(self.cache_path(att));
        Ok(())
    }

    async fn del_with(&self, att: &Attachment, prev: Option<&Value>) -> Result<()> {
        let mut first = None;
        for i in (0..self.config.plugins.len()).rev() {
            let stdin = self.config.plugin_config(i, prev, &[]);
            if let Err(e) = self
                .invoke(i, "DEL", self.env("DEL", Some(att)), stdin)
                .await
            {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// GC (CNI 1.1): tells each plugin which attachments are still valid,
    /// and drops cache entries of the others.
    pub async fn gc(&self, valid: &[Attachment]) -> Result<()> {
        if self.config.disable_gc || !self.config.supports_gc() {
            return Ok(());
        }
        let list: Vec<Value> = valid
            .iter()
            .map(|a| json!({"containerID": a.container_id, "ifname": a.ifname}))
            .collect();
        for i in 0..self.config.plugins.len() {
            let stdin =
                self.config
                    .plugin_config(i, None, &[("cni.dev/valid-attachments", json!(list))]);
            self.invoke(i, "GC", self.env("GC", None), stdin).await?;
        }
        if let Ok(dir) = std::fs::read_dir(&self.cache_dir) {
            let keep: Vec<PathBuf> = valid.iter().map(|a| self.cache_path(a)).collect();
            for entry in dir.flatten() {
                if !keep.contains(&entry.path()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// STATUS (CNI 1.1): whether every plugin is ready for ADD.
    pub async fn status(&self) -> Result<()> {
        if !self.config.supports_gc() {
            return Ok(());
        }
        for i in 0..self.config.plugins.len() {
            let stdin = self.config.plugin_config(i, None, &[]);
            self.invoke(i, "STATUS", self.env("STATUS", None), stdin)
                .await?;
        }
        Ok(())
    }

    /// The cached ADD result of an attachment.
    pub fn cached(&self, att: &Attachment) -> Option<Value> {
        let bytes = std::fs::read(self.cache_path(att)).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        v.get("result").cloned()
    }

    /// Every attachment in the cache (for GC after a restart).
    pub fn cached_attachments(&self) -> Vec<Attachment> {
        let Ok(dir) = std::fs::read_dir(&self.cache_dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                let args = v.get("cniArgs")?.as_str()?.to_owned();
                let arg = |k: &str| {
                    args.split(';')
                        .find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                        .unwrap_or_default()
                        .to_owned()
                };
                Some(Attachment {
                    container_id: v.get("containerId")?.as_str()?.to_owned(),
                    ifname: v.get("ifName")?.as_str()?.to_owned(),
                    netns: v
                        .get("netns")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    pod_namespace: arg("K8S_POD_NAMESPACE"),
                    pod_name: arg("K8S_POD_NAME"),
                    pod_uid: arg("K8S_POD_UID"),
                })
            })
            .collect()
    }
}

/// The pod IPs in a CNI result (`ips[].address`, prefix length dropped).
pub fn result_ips(result: &Value) -> Vec<std::net::IpAddr> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address")?.as_str()?.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const CONFLIST: &str = r#"{"cniVersion":"1.1.0","name":"underlay","plugins":[
        {"type":"first","agentSocket":"/run/a.sock"},{"type":"second"},{"type":"third"}]}"#;

    struct Shared(Arc<FakeExec>);
    #[async_trait::async_trait]
    impl PluginExec for Shared {
        async fn exec(&self, inv: &Invocation) -> std::io::Result<ExecOutput> {
            self.0.exec(inv).await
        }
    }

    fn runtime(conflist: &str) -> (Runtime, Arc<FakeExec>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for p in ["first", "second", "third"] {
            std::fs::write(bin.join(p), "").unwrap();
        }
        let fake = Arc::new(FakeExec::default());
        let rt = Runtime {
            config: NetworkConfigList::parse("test", conflist.as_bytes()).unwrap(),
            bin_dirs: vec![bin],
            cache_dir: dir.path().join("cache"),
            exec: Box::new(Shared(fake.clone())),
        };
        (rt, fake, dir)
    }

    fn att() -> Attachment {
        Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/p1".into(),
            pod_namespace: "x".into(),
            pod_name: "a".into(),
            pod_uid: "u1".into(),
        }
    }

    fn order(fake: &FakeExec, command: &str) -> Vec<String> {
        fake.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.env["CNI_COMMAND"] == command)
            .map(|c| c.plugin.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test]
    async fn add_runs_the_chain_in_order_passing_prev_result() {
        let (rt, fake, _dir) = runtime(CONFLIST);
        let result = rt.add(&att()).await.unwrap();
        assert_eq!(order(&fake, "ADD"), ["first", "second", "third"]);
        let calls = fake.calls.lock().unwrap().clone();
        assert!(calls[0].stdin.get("prevResult").is_none());
        assert_eq!(
            calls[1].stdin["prevResult"]["interfaces"][0]["name"],
            "first"
        );
        assert_eq!(calls[0].stdin["name"], "underlay");
        assert_eq!(calls[0].stdin["cniVersion"], "1.1.0");
        assert_eq!(calls[0].stdin["agentSocket"], "/run/a.sock");
        assert_eq!(
            calls[0].env["CNI_ARGS"],
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u1"
        );
        assert_eq!(result["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(rt.cached(&att()), Some(result));
    }

    #[tokio::test]
    async fn del_runs_in_reverse_with_the_cached_result_and_clears_the_cache() {
        let (rt, fake, _dir) = runtime(CONFLIST);
        let result = rt.add(&att()).await.unwrap();
        rt.del(&att()).await.unwrap();
        assert_eq!(order(&fake, "DEL"), ["third", "second", "first"]);
        let calls = fake.calls.lock().unwrap().clone();
        assert!(
            calls
                .iter()
                .filter(|c| c.env["CNI_COMMAND"] == "DEL")
                .all(|c| c.stdin["prevResult"] == result)
        );
        assert_eq!(rt.cached(&att()), None);
    }

    #[tokio::test]
    async fn a_failed_add_is_rolled_back_with_del_and_reports_the_plugin_error() {
        let (rt, fake, _dir) = runtime(CONFLIST);
        fake.fail
            .lock()
            .unwrap()
            .insert("second".into(), ("ADD".into(), 11));
        let err = rt.add(&att()).await.unwrap_err();
        assert!(
            matches!(err, Error::Plugin { code: 11, ref plugin, .. } if plugin == "second"),
            "{err}"
        );
        assert_eq!(order(&fake, "ADD"), ["first", "second"]);
        assert_eq!(order(&fake, "DEL"), ["third", "second", "first"]);
        assert_eq!(rt.cached(&att()), None);
    }

    #[tokio::test]
    async fn gc_sends_valid_attachments_and_drops_stale_cache_entries() {
        let (rt, fake, _dir) = runtime(CONFLIST);
        let keep = att();
        let mut stale = att();
        stale.container_id = "c2".into();
        rt.add(&keep).await.unwrap();
        rt.add(&stale).await.unwrap();
        assert_eq!(rt.cached_attachments().len(), 2);
        rt.gc(std::slice::from_ref(&keep)).await.unwrap();
        let calls = fake.calls.lock().unwrap().clone();
        let gc: Vec<_> = calls
            .iter()
            .filter(|c| c.env["CNI_COMMAND"] == "GC")
            .collect();
        assert_eq!(gc.len(), 3);
        assert_eq!(
            gc[0].stdin["cni.dev/valid-attachments"],
            json!([{"containerID":"c1","ifname":"eth0"}])
        );
        assert!(!gc[0].env.contains_key("CNI_CONTAINERID"));
        assert_eq!(rt.cached_attachments(), vec![keep]);
    }

    #[tokio::test]
    async fn gc_is_skipped_before_cni_1_1() {
        let (rt, fake, _dir) = runtime(&CONFLIST.replace("1.1.0", "1.0.0"));
        rt.gc(&[]).await.unwrap();
        assert!(fake.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn bad_conflists_are_rejected_with_the_reason() {
        for (text, reason) in [
            ("nope", "not JSON"),
            (
                r#"{"cniVersion":"1.1.0","plugins":[{"type":"a"}]}"#,
                "missing \"name\"",
            ),
            (r#"{"cniVersion":"1.1.0","name":"n","plugins":[]}"#, "empty"),
            (
                r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"mtu":1}]}"#,
                "no \"type\"",
            ),
        ] {
            let err = NetworkConfigList::parse("f", text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(reason), "{err}");
        }
    }

    #[tokio::test]
    async fn a_plugin_type_with_a_slash_is_never_executed() {
        let (rt, fake, _dir) =
            runtime(r#"{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"../first"}]}"#);
        assert!(matches!(
            rt.add(&att()).await,
            Err(Error::PluginNotFound { .. })
        ));
        assert!(fake.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn result_ips_drop_prefix_lengths() {
        let r = json!({"ips":[{"address":"10.244.1.5/32"},{"address":"fd00::5/128"}]});
        assert_eq!(
            result_ips(&r),
            vec![
                "10.244.1.5".parse::<std::net::IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
    }
}

//! `underlay-cni install`: puts the plugin where the runtime looks for it and
//! writes the network configuration list. Both files are written to a
//! temporary name and renamed, so a runtime never sees a half-written
//! binary or conflist (and a running plugin keeps its old inode).

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Directory the container runtime loads CNI plugins from.
    #[arg(long, env = "UNDERLAY_BIN_DIR", default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Directory the container runtime reads network configurations from.
    #[arg(long, env = "UNDERLAY_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// File name of the configuration list; runtimes use the first in
    /// lexical order.
    #[arg(
        long,
        env = "UNDERLAY_CONFLIST_NAME",
        default_value = "10-underlay.conflist"
    )]
    pub conflist_name: String,
    /// Network name written into the configuration.
    #[arg(long, env = "UNDERLAY_NETWORK_NAME", default_value = "underlay")]
    pub network_name: String,
    /// The agent's socket, as the plugin will reach it.
    #[arg(long, env = "UNDERLAY_AGENT_SOCKET", default_value = crate::config::DEFAULT_AGENT_SOCKET)]
    pub agent_socket: PathBuf,
    /// Pod interface MTU; unset lets the agent decide.
    #[arg(long, env = "UNDERLAY_MTU")]
    pub mtu: Option<u32>,
    /// Chain the reference `portmap` plugin (hostPort support).
    #[arg(long, env = "UNDERLAY_PORTMAP", default_value_t = true, action = clap::ArgAction::Set)]
    pub portmap: bool,
    /// Chain the reference `bandwidth` plugin (traffic shaping annotations).
    #[arg(long, env = "UNDERLAY_BANDWIDTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub bandwidth: bool,
    /// The binary to install; defaults to the running one.
    #[arg(long, env = "UNDERLAY_SOURCE_BINARY")]
    pub source_binary: Option<PathBuf>,
}

/// The configuration list for these arguments.
pub fn conflist(args: &Args) -> Value {
    let mut main = json!({
        "type": "underlay-cni",
        "agentSocket": args.agent_socket.display().to_string(),
    });
    if let Some(mtu) = args.mtu {
        main["mtu"] = json!(mtu);
    }
    let mut plugins = vec![main];
    if args.portmap {
        plugins
            .push(json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}));
    }
    if args.bandwidth {
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    }
    json!({
        "cniVersion": crate::types::LATEST,
        "name": args.network_name,
        "plugins": plugins,
    })
}

/// Writes `bytes` to `dest` through a temporary file in the same directory
/// and a rename, with `mode`.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dest
        .parent()
        .with_context(|| format!("{} has no parent directory", dest.display()))?;
    let name = dest
        .file_name()
        .with_context(|| format!("{} has no file name", dest.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("write {}", tmp.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("set the mode of {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("sync {}", tmp.display()))?;
        std::fs::rename(&tmp, dest)
            .with_context(|| format!("rename {} to {}", tmp.display(), dest.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn run(args: &Args) -> Result<()> {
    let source = match &args.source_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find the running binary; pass --source-binary")?,
    };
    for dir in [&args.bin_dir, &args.conf_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create {}; mount it from the host", dir.display()))?;
    }
    let binary = std::fs::read(&source).with_context(|| format!("read {}", source.display()))?;
    write_atomic(&args.bin_dir.join("underlay-cni"), &binary, 0o755)?;
    let list = serde_json::to_vec_pretty(&conflist(args)).context("encode the conflist")?;
    let dest = args.conf_dir.join(&args.conflist_name);
    write_atomic(&dest, &list, 0o644)?;
    tracing::info!(bin_dir = %args.bin_dir.display(), conflist = %dest.display(), "installed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    #[test]
    fn install_copies_the_binary_and_writes_a_valid_conflist() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src-bin");
        std::fs::write(&src, b"binary").unwrap();
        let bin = dir.path().join("bin");
        let conf = dir.path().join("net.d");
        let t = T::parse_from([
            "t",
            "--bin-dir",
            bin.to_str().unwrap(),
            "--conf-dir",
            conf.to_str().unwrap(),
            "--source-binary",
            src.to_str().unwrap(),
            "--mtu",
            "1400",
            "--bandwidth",
            "true",
        ]);
        run(&t.a).unwrap();
        assert_eq!(std::fs::read(bin.join("underlay-cni")).unwrap(), b"binary");
        let list: Value =
            serde_json::from_slice(&std::fs::read(conf.join("10-underlay.conflist")).unwrap())
                .unwrap();
        assert_eq!(list["plugins"][0]["type"], "underlay-cni");
        assert_eq!(list["plugins"][0]["mtu"], 1400);
        assert_eq!(list["plugins"][1]["type"], "portmap");
        assert_eq!(list["plugins"][2]["type"], "bandwidth");
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(&conf).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(&bin).unwrap().count(), 1);
        // The plugin's own parser accepts its entry in the list.
        let mut entry = list["plugins"][0].clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        entry["name"] = list["name"].clone();
        crate::config::parse(entry.to_string().as_bytes()).unwrap();
    }

    #[test]
    fn install_fails_clearly_when_the_source_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let t = T::parse_from([
            "t",
            "--bin-dir",
            dir.path().join("b").to_str().unwrap(),
            "--conf-dir",
            dir.path().join("c").to_str().unwrap(),
            "--source-binary",
            "/nonexistent/underlay-cni",
        ]);
        let err = format!("{:#}", run(&t.a).unwrap_err());
        assert!(err.contains("/nonexistent/underlay-cni"), "{err}");
        assert!(!dir.path().join("c/10-underlay.conflist").exists());
    }
}

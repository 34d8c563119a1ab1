//! `cargo xtask bench datapath`: pod-to-pod throughput and latency across two
//! nodes — native routing against a VXLAN overlay, then 0 against 1,000
//! policies — reported as ratios to the reference measured in the same run.
//! Needs root, iperf3, and (for the policy part) the underlay binaries.

use std::io::Write as _;
use std::path::PathBuf;
use underlay_lab::datapath::{self, Settings};

fn main() {
    if !underlay_lab::netns::is_root() {
        eprintln!("datapath benchmark skipped: it needs root (network namespaces)");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let mut settings = Settings::default();
    if quick {
        settings.iperf_seconds = 1;
        settings.requests = 500;
        settings.policies = 200;
        settings.rounds = 1;
    }
    settings.bin_dir = std::env::var_os("UNDERLAY_LAB_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug");
            d.join("underlay-agent").is_file().then_some(d)
        });
    // Say which build of the binaries the policy figures come from: a dev
    // build programs policy far slower than the release build users run.
    let built = settings.bin_dir.as_ref().map_or_else(
        || "not found".to_owned(),
        |d| {
            let profile = match d.file_name().and_then(|f| f.to_str()) {
                Some("release") => "release profile",
                Some("debug") => "dev profile, not representative",
                _ => "unknown profile",
            };
            format!("{} ({profile})", d.display())
        },
    );
    emit(&format!("underlay binaries: {built}\n"));
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        match datapath::native_vs_overlay(&settings).await {
            Ok(s) => emit(&datapath::report("native routing vs VXLAN overlay (ratio to native)", &s)),
            Err(e) => {
                eprintln!("datapath: native vs overlay failed: {e}");
                std::process::exit(1);
            }
        }
        match &settings.bin_dir {
            Some(bin) => match datapath::policies(&settings, bin).await {
                Ok(s) => emit(&datapath::report("underlay with 0 and N policies (ratio to 0 policies)", &s)),
                Err(e) => {
                    eprintln!("datapath: policy part failed: {e}");
                    std::process::exit(1);
                }
            },
            None => eprintln!("datapath: policy part skipped: build the binaries (cargo xtask bench datapath does)"),
        }
    });
}

fn emit(report: &str) {
    let _ = std::io::stdout().write_all(report.as_bytes());
}

//! `cargo xtask bench datapath`: pod-to-pod throughput, latency and new
//! connections per second across two nodes — native routing against a VXLAN
//! overlay, then 0 against 1,000 policies and against a VXLAN overlay on the
//! same lab — each comparison alternated over rounds and reported as medians
//! with their spread and as ratios to the references measured in the same
//! run. Needs root, iperf3, and (for the lab part) the underlay binaries.

use clap::Parser;
use std::io::Write as _;
use std::path::PathBuf;
use underlay_lab::datapath::{self, Settings};

/// Datapath benchmark (run through `cargo xtask bench datapath -- ARGS`).
#[derive(Parser, Debug)]
struct Args {
    /// A short run for development: 2 rounds, 200 policies, 1 s measurements.
    #[arg(long)]
    quick: bool,
    /// Rounds per comparison (each measures every configuration once).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: Option<u16>,
    /// Policies in the "N policies" configuration.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    policies: Option<u32>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    if !underlay_lab::netns::is_root() {
        eprintln!("datapath benchmark skipped: it needs root (network namespaces)");
        return;
    }
    let mut settings = if args.quick {
        Settings::quick()
    } else {
        Settings::default()
    };
    if let Some(r) = args.rounds {
        settings.rounds = usize::from(r);
    }
    if let Some(p) = args.policies {
        settings.policies = p as usize;
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
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("datapath: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async {
        match datapath::native_vs_overlay(&settings).await {
            Ok(table) => emit(&table.render()),
            Err(e) => {
                eprintln!("datapath: native vs overlay failed: {e}");
                std::process::exit(1);
            }
        }
        match &settings.bin_dir {
            Some(bin) => match datapath::policies(&settings, bin).await {
                Ok(table) => emit(&table.render()),
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

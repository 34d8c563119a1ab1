//! Links the statically built plugin (`+crt-static`, as `cargo xtask build`
//! ships it) as a plain static executable rather than a static PIE. The
//! container runtime starts the plugin twice for every pod (ADD and DEL),
//! and a static PIE spends about a third of a millisecond of each start
//! applying its own relocations, page by page; a fixed-address executable
//! has none to apply. The reference plugins, static Go programs, are built
//! the same way. The daemons start once and keep position independence.

#![allow(clippy::print_stdout)] // cargo reads a build script's instructions from stdout

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_CFG_TARGET_FEATURE");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bin=underlay-cni=-no-pie");
        println!("cargo:rustc-link-arg-bin=underlay-cni=-static");
    }
}

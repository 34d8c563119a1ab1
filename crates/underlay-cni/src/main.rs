//! The `underlay-cni` binary: everything lives in the library.

#![forbid(unsafe_code)]

fn main() {
    std::process::exit(underlay_cni::main_entry());
}

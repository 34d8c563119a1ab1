//! Regenerates the committed gRPC code and fails when it differs from what is
//! in `src/gen/`. Set `UNDERLAY_REGENERATE=1` to rewrite the committed files.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn generated_code_matches_the_proto_files() {
    let root = workspace_root();
    let proto_dir = root.join("proto");
    let protos = [proto_dir.join("underlay/v1/agent.proto")];
    let out = tempfile::tempdir().expect("create a temporary directory");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out.path())
        .compile_protos(&protos, &[proto_dir])
        .expect("protoc must be installed (apt-get install protobuf-compiler)");

    let committed_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gen");
    let regenerate = std::env::var_os("UNDERLAY_REGENERATE").is_some();
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(out.path()).expect("read generated files") {
        let entry = entry.expect("read generated entry");
        let fresh = std::fs::read_to_string(entry.path()).expect("read generated file");
        let committed_path = committed_dir.join(entry.file_name());
        let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
        if committed != fresh {
            if regenerate {
                std::fs::write(&committed_path, &fresh).expect("write regenerated file");
            } else {
                stale.push(committed_path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "generated code is stale: {stale:?}; regenerate with \
         `UNDERLAY_REGENERATE=1 cargo test -p underlay-proto --test generated_is_fresh`"
    );
}

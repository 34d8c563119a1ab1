//! deploy/base holds each CustomResourceDefinition exactly as generated from
//! the types; this fails when a file drifts from them. Set
//! `UNDERLAY_REGENERATE=1` to rewrite the files.

use std::path::{Path, PathBuf};

fn deploy_base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/base")
}

#[test]
fn the_deployed_crds_match_the_types() {
    let files = [(
        "clusternetworkpolicies.yaml",
        underlay_api::crd_manifest(&underlay_api::cnp::crd(), "underlay_api::cnp::crd()")
            .expect("render the ClusterNetworkPolicy CRD"),
    )];
    let regenerate = std::env::var_os("UNDERLAY_REGENERATE").is_some();
    let mut stale = Vec::new();
    for (name, fresh) in files {
        let path = deploy_base().join(name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != fresh {
            if regenerate {
                std::fs::write(&path, &fresh).expect("write the regenerated CRD");
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "generated CRDs are stale: {stale:?}; regenerate with \
         `UNDERLAY_REGENERATE=1 cargo test -p underlay-api --test crd_is_fresh`"
    );
}

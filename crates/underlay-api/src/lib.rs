//! Kubernetes API types that k8s-openapi does not carry: the custom
//! resources underlay consumes, with the CustomResourceDefinitions derived
//! from them. `deploy/base` holds each definition as generated here
//! (`tests/crd_is_fresh.rs` fails when a file drifts from its types).
#![forbid(unsafe_code)]

pub mod cnp;

/// The manifest file of a CustomResourceDefinition: a header saying how it
/// was made, then the definition as YAML. Whole numbers are written as
/// integers (`maximum: 65535`, as kubectl and kustomize render them), not
/// as the floats the typed schema holds.
pub fn crd_manifest(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    source: &str,
) -> Result<String, serde_yaml::Error> {
    let mut value =
        serde_json::to_value(crd).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    whole_numbers_as_integers(&mut value);
    let yaml = serde_yaml::to_string(&value)?;
    Ok(format!(
        "# Generated from {source} in crates/underlay-api; do not edit.\n\
         # Regenerate with `UNDERLAY_REGENERATE=1 cargo test -p underlay-api --test crd_is_fresh`.\n\
         {yaml}"
    ))
}

fn whole_numbers_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                && n.is_f64()
            {
                // In range: |f| < 10^15 is exact as an i64.
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

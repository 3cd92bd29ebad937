//! deploy/crd.yaml must be what the types generate.

#[test]
fn deploy_crd_yaml_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/crd.yaml");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    let generated = teal_api::crd_yaml();
    assert!(
        on_disk == generated,
        "deploy/crd.yaml is out of date: run `cargo run -p teal-api --bin crdgen > deploy/crd.yaml`"
    );
}

#[test]
fn docs_crd_reference_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/crd-reference.md");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == teal_api::crd_reference_markdown(),
        "docs/crd-reference.md is out of date: run `teal crd --reference > docs/crd-reference.md`"
    );
}

#[test]
fn crd_has_columns_validation_and_status() {
    let y = teal_api::crd_yaml();
    for want in [
        "name: bluegreens.teal.dev",
        "shortNames:",
        "jsonPath: .status.phase",
        "jsonPath: .status.activeColor",
        "x-kubernetes-validations",
        "spec.preview.replicas must not exceed spec.replicas",
        "subresources:",
        "x-kubernetes-preserve-unknown-fields: true",
    ] {
        assert!(y.contains(want), "missing {want:?} in the CRD");
    }
}

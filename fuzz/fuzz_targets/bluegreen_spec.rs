//! BlueGreen specs as JSON (what the apiserver stores) and YAML (what people
//! write): deserialisation and validation never panic, errors name a field
//! under `spec.`, and a valid spec survives a round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teal_api::{BlueGreen, BlueGreenSpec};

fn check(spec: &BlueGreenSpec) {
    let mut errors = Vec::new();
    let replicas = spec.replicas.unwrap_or(1).max(1) as u32;
    spec.preview.validate("spec.preview", replicas, &mut errors);
    spec.promotion.validate("spec.promotion", &mut errors);
    spec.analysis.validate(
        "spec.analysis",
        teal_api::hooks::SecretSource::Kubernetes,
        &mut errors,
    );
    for e in &errors {
        assert!(e.field.starts_with("spec."), "{e}");
    }
    if !errors.is_empty() {
        return;
    }
    let _ = spec.promotion.to_core();
    let value = serde_json::to_value(spec).unwrap();
    let again: BlueGreenSpec = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("an accepted spec does not deserialize again: {e}\n{value}"));
    assert_eq!(spec, &again, "{value}");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<BlueGreenSpec>(data) {
        check(&spec);
    }
    if let Ok(bg) = serde_json::from_slice::<BlueGreen>(data) {
        check(&bg.spec);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(spec) = serde_saphyr::from_str::<BlueGreenSpec>(text)
    {
        check(&spec);
    }
});

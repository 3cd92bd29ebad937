//! `status.engine` as teal wrote it, decoded by this version: an upgrade
//! must never lose a release in progress. The files under
//! `tests/fixtures/engine/` were captured from a running controller (teal
//! 0.1.0), one per phase; never edit them: when the stored form changes, add
//! the new version's files beside them, so every form ever written stays
//! under test. `healthy-resizing.json`: the live color growing from 2 to 4
//! replicas, 2 ready (`requested.*.resizedFrom`, added with the scale
//! subresource).

use std::path::Path;

#[test]
fn every_stored_engine_state_ever_written_is_read_back_in_its_phase() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine");
    let mut read = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        let state = teal_controller::reconcile::restore_engine(Some(&fixture["engine"]))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .unwrap_or_else(|| panic!("{}: no state", path.display()));
        assert_eq!(
            Some(state.machine.phase_name().as_str()),
            fixture["phase"].as_str(),
            "{}",
            path.display()
        );
        read.push(fixture["phase"].as_str().unwrap().to_string());
    }
    read.sort();
    assert_eq!(
        read,
        [
            "AwaitingPromotion",
            "Healthy",
            "Healthy",
            "Previewing",
            "RolledBack",
            "ScaleDownDelay"
        ]
    );
}

#[test]
fn a_state_this_version_cannot_read_is_an_error_naming_the_field() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine/previewing.json");
    let mut fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fixture["engine"]["machine"]["release"]["phase"] = "Teleporting".into();
    let e = teal_controller::reconcile::restore_engine(Some(&fixture["engine"])).unwrap_err();
    assert!(
        e.contains("status.engine") && e.contains("Teleporting"),
        "{e}"
    );
    assert!(matches!(
        teal_controller::reconcile::restore_engine(None),
        Ok(None)
    ));
}

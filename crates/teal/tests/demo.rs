//! `teal demo` end to end: the report's invariants and JSON keys.

use std::process::Command;

#[test]
fn demo_releases_v2_rolls_back_v3_and_drops_nothing() {
    let dir = std::env::temp_dir().join(format!("teal-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["demo", "--quiet", "--connections", "16", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(r["releases"][0]["revision"], "v2");
    assert_eq!(r["releases"][0]["outcome"], "promoted");
    assert_eq!(r["releases"][1]["revision"], "v3");
    assert_eq!(r["releases"][1]["outcome"], "rolled_back");
    assert!(
        r["releases"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("success-rate")
    );
    assert_eq!(r["cutover"]["old_color_requests_after_switch"], 0);
    assert!(
        r["cutover"]["new_color_requests_after_switch"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(r["cutover"]["switch_us"].as_u64().is_some());
    assert!(r["production"]["requests"].as_u64().unwrap() > 1000);
    assert_eq!(r["production"]["failed_requests"], 0);
    assert!(
        r["production"]["by_version"]["v3"].is_null(),
        "production never saw v3"
    );
    assert!(r["preview"]["requests"].as_u64().unwrap() > 0);
    assert!(
        r["preview"]["by_version"]["v3"].as_u64().unwrap() > 0,
        "v3 was previewed"
    );
    assert!(r["preview"]["failed_requests"].as_u64().is_some());
    assert!(r["timeline"].as_array().unwrap().len() > 50);
    assert_eq!(r["violations"].as_array().unwrap().len(), 0);
    assert!(stdout.contains("all invariants held"));
}

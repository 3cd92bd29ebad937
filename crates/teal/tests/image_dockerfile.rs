//! The Dockerfile and `scripts/image` (which writes the same image without a registry or a
//! base image) describe one image: the binary's path, entrypoint, command, user, port,
//! working directory and environment agree.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The instructions of the Dockerfile's last stage (the runtime image), joined across `\`.
fn runtime_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("reading the Dockerfile");
    let joined = text.replace("\\\n", " ");
    let mut stage = Vec::new();
    for line in joined.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            stage.clear();
        }
        stage.push((instruction, rest.trim().to_owned()));
    }
    stage
}

fn one(stage: &[(String, String)], instruction: &str) -> String {
    let found: Vec<&String> = stage
        .iter()
        .filter(|(i, _)| i == instruction)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "the Dockerfile's runtime stage has {} {instruction} instructions",
        found.len()
    );
    found[0].clone()
}

#[test]
fn scripts_image_writes_the_image_the_dockerfile_describes() {
    let stage = runtime_stage();
    let out = Command::new(repo().join("scripts/image"))
        .arg("config")
        .output()
        .expect("running scripts/image config");
    assert!(
        out.status.success(),
        "scripts/image config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_json::from_slice(&out.stdout).expect("scripts/image config is JSON");

    // The binary lands where the entrypoint runs it from.
    let copy = one(&stage, "COPY");
    let binary_path = copy
        .split_whitespace()
        .last()
        .expect("COPY has a destination");
    assert!(
        copy.starts_with("--from=build ") && copy.contains("/teal "),
        "COPY {copy}"
    );
    let entrypoint: Value =
        serde_json::from_str(&one(&stage, "ENTRYPOINT")).expect("ENTRYPOINT in exec form");
    assert_eq!(entrypoint, json!([binary_path]));
    assert_eq!(config["Entrypoint"], entrypoint);

    let cmd: Value = serde_json::from_str(&one(&stage, "CMD")).expect("CMD in exec form");
    assert_eq!(config["Cmd"], cmd);
    assert_eq!(config["User"], json!(one(&stage, "USER")));
    assert_eq!(config["User"], json!("65532:65532"));
    let port = one(&stage, "EXPOSE");
    assert_eq!(config["ExposedPorts"], json!({format!("{port}/tcp"): {}}));

    // What the distroless nonroot base sets and scripts/image writes by hand.
    let from = one(&stage, "FROM");
    assert!(
        from.starts_with("gcr.io/distroless/static") && from.ends_with(":nonroot"),
        "the runtime base changed ({from}): check what scripts/image copies from it"
    );
    assert_eq!(config["WorkingDir"], json!("/home/nonroot"));
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.iter()
            .any(|e| e.starts_with("PATH=") && e.contains("/usr/local/bin")),
        "{env:?}"
    );
    assert!(
        env.contains(&"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
        "{env:?}"
    );
}

#[test]
fn the_image_is_named_after_the_crate_version() {
    let out = Command::new(repo().join("scripts/image"))
        .arg("name")
        .output()
        .expect("running scripts/image name");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("docker.io/library/teal:{}", env!("CARGO_PKG_VERSION"))
    );
    // The manifests and the chart use `teal:<version>`, the same image once normalised.
    let manifest = std::fs::read_to_string(repo().join("deploy/controller.yaml")).unwrap();
    assert!(
        manifest.contains(&format!("image: teal:{}", env!("CARGO_PKG_VERSION"))),
        "deploy/controller.yaml names another image"
    );
}

//! Helpers for tests that drive the real control plane with kubectl.

use std::process::Stdio;

use teal_testenv::TestEnv;

/// Runs kubectl (with `stdin` piped in, if given), asserts it succeeded and
/// returns its trimmed standard output.
pub fn kubectl(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = env.kubectl();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = if let Some(input) = stdin {
        let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    } else {
        cmd.output().unwrap()
    };
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Applies files of `deploy/` (as users do, server-side) and waits until the
/// BlueGreen CRD is established.
pub fn apply_deploy_files(env: &TestEnv, files: &[&str]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    for file in files {
        let path = root.join(file);
        let path = path.to_str().unwrap();
        kubectl(
            env,
            &["apply", "--server-side", "--force-conflicts", "-f", path],
            None,
        );
    }
    kubectl(
        env,
        &[
            "wait",
            "--for=condition=Established",
            "crd/bluegreens.teal.dev",
            "--timeout=30s",
        ],
        None,
    );
}

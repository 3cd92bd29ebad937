//! Every command in README.md and docs/*.md is exercised. The test reads
//! every fenced block of those files and checks:
//!
//! - shell blocks (`sh`): each command is split out the way a shell would
//!   (quotes, `\` continuations, pipes, `&&`, `;`, `&`, redirections, here
//!   documents, `$(...)`, comments). `teal ...`, `kubectl teal ...` and
//!   `cargo run -- ...` commands must parse against the real command line
//!   (the `teal` binary with `TEAL_PARSE_ONLY` set; `kubectl teal` through a
//!   `kubectl-teal` link), with optional `[...]` words left out and put in.
//!   Every other command must be listed in [`OTHERS`] with the test that runs
//!   it (the file must exist and contain the given text) or why it is not
//!   run; a few blocks are run verbatim here against the control plane.
//! - YAML blocks that are Kubernetes objects (`apiVersion` and `kind`) must
//!   be accepted by the real apiserver (`kubectl apply --dry-run=server`,
//!   with teal's CRD and Istio's installed), unless [`FOREIGN`] says whose
//!   resource type it is and why it cannot be installed here.

mod k8s_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use teal_testenv::TestEnv;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// How a non-teal command of the docs is exercised.
enum How {
    /// A test or script runs it: the file (from the repository root) holds
    /// this text.
    Run(&'static str, &'static str),
    /// Shell plumbing around the commands (files, variables, links).
    Plumbing,
    /// Run verbatim by this test function of this file.
    Here(&'static str),
    /// Not run by any test, and why.
    NotRun(&'static str),
}

/// Commands other than teal's, by their first words.
#[rustfmt::skip]
const OTHERS: &[(&str, How)] = &[
    ("./scripts/test", How::Run(".ci/run", "exec ./scripts/test")),
    ("systemctl", How::NotRun("needs a machine booted with systemd; the units were checked with `systemd-analyze verify`, and local_daemon.rs starts `teal local serve --listen-stdin` with the socket on standard input as the units do")),
    ("scripts/dev-cluster up", How::Run(DEV_CLUSTER, ".arg(\"up\")")),
    ("scripts/dev-cluster status", How::Run(DEV_CLUSTER, ".arg(\"status\")")),
    ("scripts/dev-cluster down", How::Run(DEV_CLUSTER, ".arg(\"down\")")),
    ("kubectl get nodes,pods -A", How::Run(DEV_CLUSTER, "\"nodes,pods\"")),
    ("scripts/dev-cluster image", How::Run(DEV_CLUSTER, ".arg(\"image\")")),
    ("kubectl get nodes -L teal.dev/node", How::Run(DEV_CLUSTER, "&[\"get\", \"nodes\", \"-L\", \"teal.dev/node\"]")),
    ("kubectl run web --image=teal:0.1.0", How::Run(DEV_CLUSTER, "\"--image-pull-policy=IfNotPresent\"")),
    ("kubectl expose pod web", How::Run(DEV_CLUSTER, "&[\"expose\", \"pod\", \"web\", \"--port=80\", \"--target-port=8080\"]")),
    ("kubectl wait --for=condition=Ready pod/web", How::Run(DEV_CLUSTER, "\"--for=condition=Ready\", \"pod/web\"")),
    ("kubectl get service web", How::Run(DEV_CLUSTER, "\"jsonpath={.spec.clusterIP}\"")),
    ("curl", How::Run(DEV_CLUSTER, "fn get_root(addr: SocketAddr)")),
    ("kubectl create deployment web", How::Here("dev_cluster_kubectl_examples")),
    ("eval", How::Here("kubernetes_walkthrough_runs_verbatim_on_the_real_node")),
    ("scripts/dev-cluster env", How::Here("kubernetes_walkthrough_runs_verbatim_on_the_real_node")),
    ("kubectl taint node teal-node teal.dev/node-", How::Here("kubernetes_walkthrough_runs_verbatim_on_the_real_node")),
    ("kubectl cordon kwok-node-0", How::Here("kubernetes_walkthrough_runs_verbatim_on_the_real_node")),
    ("kubectl create namespace shop", How::Here("kubernetes_walkthrough_runs_verbatim_on_the_real_node")),
    ("kubectl apply -n shop -f -", How::Here("kubernetes_walkthrough_runs_verbatim_on_the_real_node")),
    ("kubectl -n shop wait bluegreen/shop", How::Here("kubernetes_walkthrough_runs_verbatim_on_the_real_node")),
    ("kubectl -n shop get service shop", How::Here("kubernetes_walkthrough_runs_verbatim_on_the_real_node")),
    ("kubectl -n shop patch deployment shop", How::Here("kubernetes_walkthrough_runs_verbatim_on_the_real_node")),
    ("kubectl -n shop get bluegreen shop", How::Here("kubernetes_walkthrough_runs_verbatim_on_the_real_node")),
    ("kubectl get deploy,pods,endpointslices", How::Here("dev_cluster_kubectl_examples")),
    ("bench/mixing", How::NotRun("a benchmark, not a test: about 12 minutes on a real node of its own (root); its figures are in docs/benchmarks.md, and release_real_node.rs checks the same guarantee for router type teal under traffic")),
    ("bench/controller-scale", How::NotRun("a benchmark, not a test: it runs for 10-20 minutes on a control plane of its own; its figures are in docs/benchmarks.md")),
    ("bench/argo-rollouts-scale", How::NotRun("a benchmark, not a test: it builds Argo Rollouts from its Go module and runs it, then bench/controller-scale, on control planes of their own (8-11 minutes at 300, plus about 4 minutes for the first build); its figures are in docs/benchmarks.md")),
    ("bench/flagger-scale", How::NotRun("a benchmark, not a test: it builds Flagger from its Go module and runs it, then bench/controller-scale, on control planes of their own (about 5 minutes for the first build); its figures are in docs/benchmarks.md")),
    ("scripts/static-binary", How::NotRun("it checks what it builds itself; a static release build takes 10-15 minutes, so it is run by hand")),
    ("docker", How::NotRun("no container runtime is available to the tests; scripts/static-binary builds and checks the binary the image holds")),
    ("kubectl apply --server-side -f deploy/crd.yaml -f deploy/rbac.yaml -f deploy/controller.yaml", How::Here("install_block_runs_verbatim")),
    ("kubectl -n teal-system set image deployment/teal-controller", How::Here("install_block_runs_verbatim")),
    ("kubectl -n teal-system rollout status deployment/teal-controller", How::Here("install_block_runs_verbatim")),
    ("kubectl apply --server-side -f deploy/crd.yaml", How::Run("crates/teal/tests/k8s_support/mod.rs", "&[\"apply\", \"--server-side\", \"--force-conflicts\", \"-f\", path]")),
    ("kubectl apply --server-side -k teal-shop", How::Run("crates/teal/tests/install_manifests.rs", "\"-k\"")),
    ("kubectl apply -f k8s/", How::Run("crates/teal/tests/cli_kube.rs", "kubectl(env, &[\"apply\", \"-n\", &ns, \"-f\", \"-\"]")),
    ("helm install teal deploy/helm/teal", How::Run("crates/teal/tests/install_helm.rs", ".args([\"template\", release, &chart(), \"-n\", ns])")),
    ("kubectl -n teal-system port-forward", How::NotRun("port-forward needs a kubelet; the tests fetch the dashboard from the controller's port directly (dashboard_controller.rs)")),
    ("kubectl -n argocd create configmap argocd-cm", How::Run(ARGOCD, "resource.customizations.health.teal.dev_BlueGreen")),
    ("kubectl apply --server-side --field-manager=teal-health -f -", How::Run(ARGOCD, "--field-manager=teal-health")),
    ("kubectl annotate bluegreen color-api", How::Here("kubectl_examples_run_verbatim")),
    ("kubectl patch service service-color-api", How::Here("kubectl_examples_run_verbatim")),
    ("kubectl patch bluegreen color-api --subresource=status", How::Here("kubectl_examples_run_verbatim")),
    ("kubectl scale bluegreen/color-api --replicas 5", How::Run("crates/teal-controller/tests/autoscaling.rs", "&[\"scale\", \"bluegreen/web\", \"--replicas\", \"5\"]")),
    ("export", How::Plumbing),
    ("mkdir", How::Plumbing),
    ("cat", How::Plumbing),
    ("echo", How::Plumbing),
    ("ln", How::Plumbing),
    ("which", How::Plumbing),
    ("head", How::Plumbing),
    ("base64", How::Plumbing),
    ("date", How::Plumbing),
];

const DEV_CLUSTER: &str = "crates/teal-testenv/tests/dev_cluster.rs";
const ARGOCD: &str = "crates/teal/tests/install_argocd.rs";

/// Kubernetes objects in the docs whose resource types belong to other
/// projects and are not installed in the test cluster: (file, kind, why).
const FOREIGN: &[(&str, &str, &str)] = &[
    (
        "docs/migrate-argo-rollouts.md",
        "Rollout",
        "Argo Rollouts' CRD; the \"before\" of the migration, abridged",
    ),
    (
        "docs/migrate-argo-rollouts.md",
        "AnalysisTemplate",
        "Argo Rollouts' CRD; the \"before\" of the migration of a Job metric",
    ),
    (
        "docs/migrate-flagger.md",
        "Canary",
        "Flagger's CRD; the \"before\" of the migration",
    ),
    (
        "docs/install.md",
        "Application",
        "Argo CD's CRD; only the fields to add to an Application",
    ),
    (
        "docs/kubernetes.md",
        "ScaledObject",
        "KEDA's CRD; KEDA acts through an HPA, which the autoscaling tests run",
    ),
    (
        "docs/install.md",
        "Kustomization",
        "Flux's CRD; only the fields to add to a Kustomization",
    ),
];

/// A fenced block: file, line of the opening fence, language, text.
struct Block {
    file: String,
    line: usize,
    lang: String,
    text: String,
}

fn blocks() -> Vec<Block> {
    let mut files = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if let Some(lang) = lines[i].trim_start().strip_prefix("```") {
                let start = i;
                let mut body = Vec::new();
                i += 1;
                while i < lines.len() && lines[i].trim() != "```" {
                    body.push(lines[i]);
                    i += 1;
                }
                assert!(i < lines.len(), "{file}:{}: unclosed fence", start + 1);
                out.push(Block {
                    file: file.clone(),
                    line: start + 1,
                    lang: lang.trim().to_string(),
                    text: body.join("\n") + "\n",
                });
            }
            i += 1;
        }
    }
    out
}

/// The commands of a shell script, as argument vectors, the way a shell
/// splits them; the commands inside `$(...)` come after the one using them.
fn commands(script: &str) -> Vec<Vec<String>> {
    // A transcript: only the prompt lines are commands.
    let prompt: Vec<&str> = script
        .lines()
        .filter_map(|l| l.strip_prefix("$ "))
        .collect();
    let script = if prompt.is_empty() {
        script.replace("\\\n", " ")
    } else {
        prompt.join("\n")
    };
    let mut cmds = Vec::new();
    let mut heredoc: Option<String> = None;
    for line in script.lines() {
        if let Some(end) = &heredoc {
            if line.trim() == end {
                heredoc = None;
            }
            continue;
        }
        heredoc = split_line(line, &mut cmds);
    }
    assert!(heredoc.is_none(), "unterminated here document in {script}");
    cmds.retain(|c: &Vec<String>| !c.is_empty());
    // Leading variable assignments are not the command.
    for c in &mut cmds {
        while c.len() > 1 && c[0].contains('=') && !c[0].starts_with('-') {
            c.remove(0);
        }
    }
    cmds
}

/// The state of [`split_line`] between characters.
#[derive(Default)]
struct Line {
    cmd: Vec<String>,
    word: String,
    in_word: bool,
    /// The next word is a redirection's target, not an argument.
    skip_next_word: bool,
    /// The next word is a here document's delimiter.
    want_heredoc: bool,
    heredoc: Option<String>,
}

impl Line {
    fn end_word(&mut self) {
        if !self.in_word {
            return;
        }
        let word = std::mem::take(&mut self.word);
        if self.want_heredoc {
            self.heredoc = Some(word);
            self.want_heredoc = false;
        } else if !self.skip_next_word {
            self.cmd.push(word);
        }
        self.skip_next_word = false;
        self.in_word = false;
    }
}

/// Splits one line into `cmds`; returns the here-document delimiter if the
/// line starts one.
fn split_line(line: &str, cmds: &mut Vec<Vec<String>>) -> Option<String> {
    let chars: Vec<char> = line.chars().collect();
    let mut st = Line::default();
    let mut inner = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' => {
                st.in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    st.word.push(chars[i]);
                    i += 1;
                }
            }
            '"' => {
                st.in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '$' && chars.get(i + 1) == Some(&'(') {
                        let (sub, end) = substitution(&chars, i);
                        st.word.push_str(&format!("$({sub})"));
                        inner.push(sub);
                        i = end;
                        continue;
                    }
                    st.word.push(chars[i]);
                    i += 1;
                }
            }
            '$' if chars.get(i + 1) == Some(&'(') => {
                st.in_word = true;
                let (sub, end) = substitution(&chars, i);
                st.word.push_str(&format!("$({sub})"));
                inner.push(sub);
                i = end;
                continue;
            }
            '#' if !st.in_word => break,
            ' ' | '\t' => st.end_word(),
            '|' | '&' | ';' => {
                st.end_word();
                cmds.push(std::mem::take(&mut st.cmd));
                while i + 1 < chars.len() && matches!(chars[i + 1], '|' | '&') {
                    i += 1;
                }
            }
            '<' | '>' => {
                // A redirection: `N>`, `>>`, `>&N`, `<<DELIM`, then its target.
                if st.in_word && st.word.chars().all(|d| d.is_ascii_digit()) {
                    st.word.clear();
                    st.in_word = false;
                } else {
                    st.end_word();
                }
                if c == '<' && chars.get(i + 1) == Some(&'<') {
                    i += 1;
                    if chars.get(i + 1) == Some(&'-') {
                        i += 1;
                    }
                    st.want_heredoc = true;
                } else {
                    while i + 1 < chars.len() && matches!(chars[i + 1], '>' | '&') {
                        i += 1;
                    }
                    if chars[i] == '&' {
                        // `>&1`: a descriptor, no file word follows.
                        while i + 1 < chars.len() && chars[i + 1].is_ascii_digit() {
                            i += 1;
                        }
                    } else {
                        st.skip_next_word = true;
                    }
                }
            }
            _ => {
                st.in_word = true;
                st.word.push(c);
            }
        }
        i += 1;
    }
    st.end_word();
    cmds.push(st.cmd);
    for sub in inner {
        cmds.extend(commands(&sub));
    }
    st.heredoc
}

/// The text of the `$(...)` starting at `chars[at]`, and the index after it.
fn substitution(chars: &[char], at: usize) -> (String, usize) {
    let mut depth = 0;
    let mut i = at + 1;
    let mut s = String::new();
    while i < chars.len() {
        match chars[i] {
            '(' => {
                depth += 1;
                if depth > 1 {
                    s.push('(');
                }
            }
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return (s, i + 1);
                }
                s.push(')');
            }
            c => s.push(c),
        }
        i += 1;
    }
    panic!("unclosed $( in {}", chars.iter().collect::<String>())
}

/// The forms of a synopsis: `[...]` groups left out, and put in; `...`
/// (more options) dropped.
fn variants(args: &[String]) -> Vec<Vec<String>> {
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut in_group = false;
    for a in args {
        if a == "..." {
            continue;
        }
        let opens = a.starts_with('[');
        let closes = a.ends_with(']');
        let bare = a.trim_start_matches('[').trim_end_matches(']').to_string();
        if opens || in_group {
            in_group = !closes;
            with.push(bare);
        } else {
            without.push(bare.clone());
            with.push(bare);
        }
    }
    if with == without {
        vec![without]
    } else {
        vec![without, with]
    }
}

/// Runs `program args` with `TEAL_PARSE_ONLY` set: None if it parsed, else
/// clap's message.
fn parses(program: &Path, args: &[String]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .env("TEAL_PARSE_ONLY", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        None
    } else {
        Some(format!(
            "exit {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn starts_with(cmd: &[String], prefix: &[&str]) -> bool {
    cmd.len() >= prefix.len() && cmd.iter().zip(prefix).all(|(a, b)| a == b)
}

#[test]
fn every_shell_command_in_the_docs_parses_or_is_exercised_elsewhere() {
    let teal = PathBuf::from(env!("CARGO_BIN_EXE_teal"));
    let links = std::env::temp_dir().join(format!("teal-docs-{}", std::process::id()));
    std::fs::create_dir_all(&links).unwrap();
    let plugin = links.join("kubectl-teal");
    let _ = std::fs::remove_file(&plugin);
    std::os::unix::fs::symlink(&teal, &plugin).unwrap();

    let mut failures = Vec::new();
    let mut parsed = 0;
    let mut used = BTreeSet::new();
    let shell = ["sh", "bash", "shell", "console"];
    for b in blocks().iter().filter(|b| shell.contains(&b.lang.as_str())) {
        for cmd in commands(&b.text) {
            let at = format!("{}:{}: {}", b.file, b.line, cmd.join(" "));
            let (program, args) = if cmd[0] == "teal" {
                (&teal, &cmd[1..])
            } else if starts_with(&cmd, &["kubectl", "teal"]) {
                (&plugin, &cmd[2..])
            } else if starts_with(&cmd, &["cargo", "run"]) {
                let Some(dash) = cmd.iter().position(|a| a == "--") else {
                    failures.push(format!("{at}: cargo run without `-- ARGS`"));
                    continue;
                };
                (&teal, &cmd[dash + 1..])
            } else {
                match OTHERS
                    .iter()
                    .position(|(p, _)| starts_with(&cmd, &p.split(' ').collect::<Vec<_>>()))
                {
                    Some(i) => {
                        used.insert(i);
                    }
                    None => failures.push(format!(
                        "{at}: not a teal command and not in OTHERS (name the test that runs it)"
                    )),
                }
                continue;
            };
            for v in variants(args) {
                parsed += 1;
                if let Some(e) = parses(program, &v) {
                    failures.push(format!("{at}: `{}` does not parse: {e}", v.join(" ")));
                }
            }
        }
    }
    for (i, (prefix, how)) in OTHERS.iter().enumerate() {
        if !used.contains(&i) {
            failures.push(format!(
                "OTHERS lists {prefix:?}, which no doc command starts with"
            ));
        }
        let (file, needle) = match how {
            How::Run(file, needle) => (*file, needle.to_string()),
            How::Here(test) => (
                "crates/teal/tests/docs_commands.rs",
                format!("async fn {test}()"),
            ),
            How::NotRun(why) => {
                eprintln!("not run by a test: {prefix}: {why}");
                continue;
            }
            How::Plumbing => continue,
        };
        let text = std::fs::read_to_string(root().join(file)).unwrap_or_default();
        if !text.contains(&needle) {
            failures.push(format!(
                "OTHERS: {file} should run {prefix:?} but does not contain {needle:?}"
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&links);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The extraction found the docs' commands (cli.md alone has more than 20).
    assert!(parsed >= 30, "only {parsed} teal command forms found");
}

#[test]
fn the_shell_splitter_splits_like_a_shell() {
    let words = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        commands(
            "teal promote shop [--full]   # a comment\nFOO=1 kubectl -n a create cm x \\\n  --from-file=k=v --dry-run=client -o yaml |\n  kubectl apply -f - 2>&1 && echo \"$(date +%s)\" > out.txt\ncat > r.json <<'EOF'\n{\"a\": 1}\nEOF\nteal local serve &\n"
        ),
        vec![
            words(&["teal", "promote", "shop", "[--full]"]),
            words(&[
                "kubectl",
                "-n",
                "a",
                "create",
                "cm",
                "x",
                "--from-file=k=v",
                "--dry-run=client",
                "-o",
                "yaml"
            ]),
            words(&["kubectl", "apply", "-f", "-"]),
            words(&["echo", "$(date +%s)"]),
            words(&["date", "+%s"]),
            words(&["cat"]),
            words(&["teal", "local", "serve"]),
        ]
    );
    assert_eq!(
        commands("$ teal list -n shop\nNAME   PHASE\nshop   Healthy\n"),
        vec![words(&["teal", "list", "-n", "shop"])]
    );
    assert_eq!(
        variants(&words(&[
            "teal",
            "router",
            "--x",
            "1",
            "[--color-header",
            "h]",
            "..."
        ])),
        vec![
            words(&["teal", "router", "--x", "1"]),
            words(&["teal", "router", "--x", "1", "--color-header", "h"]),
        ]
    );
}

#[test]
fn a_command_that_does_not_parse_is_caught() {
    let teal = PathBuf::from(env!("CARGO_BIN_EXE_teal"));
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(parses(&teal, &args(&["promote", "shop", "--full"])), None);
    let e = parses(&teal, &args(&["promote", "shop", "--fast"])).unwrap();
    assert!(e.contains("--fast"), "{e}");
    assert!(parses(&teal, &args(&["status", "shop", "--timeout", "soon"])).is_some());
}

/// A kubeconfig for `env` whose context uses namespace `ns`, and a
/// directory with `kubectl` and `teal` for PATH.
fn shell_env(env: &TestEnv, ns: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("teal-docs-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("kubeconfig");
    std::fs::copy(env.kubeconfig_path(), &kc).unwrap();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let kubectl = match std::env::var_os("TEAL_KUBECTL") {
        Some(k) => PathBuf::from(k),
        None => PathBuf::from(
            k8s_support::run_ok(Command::new("sh").args(["-c", "command -v kubectl"]), None).trim(),
        ),
    };
    for (name, target) in [
        ("kubectl", kubectl),
        ("teal", PathBuf::from(env!("CARGO_BIN_EXE_teal"))),
    ] {
        let _ = std::fs::remove_file(bin.join(name));
        std::os::unix::fs::symlink(target, bin.join(name)).unwrap();
    }
    k8s_support::run_ok(
        Command::new(bin.join("kubectl"))
            .args(["config", "set-context", "--current", "--namespace", ns])
            .env("KUBECONFIG", &kc),
        None,
    );
    (kc, bin)
}

/// Runs `script` with bash in the repository root, with `kubectl` and
/// `teal` on PATH, against `ns`; returns stdout.
fn run_verbatim(env: &TestEnv, ns: &str, script: &str) -> String {
    let (kc, bin) = shell_env(env, ns);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // `timeout`: a doc command that waits (rollout status) must not hang the test.
    k8s_support::run_ok(
        Command::new("timeout")
            .args(["300", "bash", "-euo", "pipefail", "-c", script])
            .current_dir(root())
            .env("KUBECONFIG", &kc)
            .env("PATH", path),
        None,
    )
}

/// The one block of `file` whose text contains `needle`.
fn block(file: &str, needle: &str) -> String {
    let found: Vec<Block> = blocks()
        .into_iter()
        .filter(|b| b.file == file && b.text.contains(needle))
        .collect();
    assert_eq!(found.len(), 1, "{file}: blocks with {needle:?}");
    found.into_iter().next().unwrap().text
}

#[tokio::test]
async fn kubernetes_objects_in_the_docs_are_accepted_by_the_apiserver() {
    let env = TestEnv::shared();
    k8s_support::apply_deploy_files(env, &["crd.yaml"]);
    install_istio_crds(env);
    let ns = env.namespace("docs-objects").await;
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut foreign_used = BTreeSet::new();
    for b in blocks().iter().filter(|b| b.lang == "yaml") {
        let value: serde_json::Value = match serde_saphyr::from_str(&b.text) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}:{}: not YAML: {e}", b.file, b.line));
                continue;
            }
        };
        let (Some(_), Some(kind)) = (value.get("apiVersion"), value["kind"].as_str()) else {
            continue;
        };
        if let Some(i) = FOREIGN
            .iter()
            .position(|(f, k, _)| *f == b.file && *k == kind)
        {
            foreign_used.insert(i);
            continue;
        }
        let mut obj = value.clone();
        match obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            Some(m) => {
                m.insert("namespace".into(), ns.clone().into());
            }
            None => {
                failures.push(format!("{}:{}: {kind} without metadata", b.file, b.line));
                continue;
            }
        }
        checked += 1;
        let out = env
            .kubectl()
            .args(["apply", "--dry-run=server", "-f", "-", "-o", "name"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(obj.to_string().as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{}:{}: the apiserver refuses the {kind}: {}",
                b.file,
                b.line,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    for (i, (file, kind, _)) in FOREIGN.iter().enumerate() {
        if !foreign_used.contains(&i) {
            failures.push(format!(
                "FOREIGN lists a {kind} in {file} that is not there"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // README, kubernetes.md, three migration guides: BlueGreens and a Service.
    assert!(checked >= 7, "only {checked} objects checked");
}

fn install_istio_crds(env: &TestEnv) {
    let fetched = k8s_support::run_ok(
        Command::new(root().join("scripts/upstream-crds")).arg("fetch"),
        None,
    );
    let dir = PathBuf::from(fetched.trim());
    let istio = dir.join("istio.yaml");
    k8s_support::kubectl(
        env,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            istio.to_str().unwrap(),
        ],
        None,
    );
    k8s_support::kubectl(
        env,
        &[
            "wait",
            "--for=condition=Established",
            "crd/virtualservices.networking.istio.io",
            "--timeout=60s",
        ],
        None,
    );
}

/// Applies the object of the docs block `object` (file, text in it) in
/// `ns`, runs the block `script` verbatim, and returns `kubectl get -n NS
/// THING -o jsonpath=PATH`.
fn apply_run_get(
    env: &TestEnv,
    ns: &str,
    object: (&str, &str),
    script: (&str, &str),
    thing: [&str; 2],
    path: &str,
) -> String {
    let obj = block(object.0, object.1);
    k8s_support::kubectl(env, &["apply", "-n", ns, "-f", "-"], Some(&obj));
    run_verbatim(env, ns, &block(script.0, script.1));
    let jsonpath = format!("jsonpath={path}");
    k8s_support::kubectl(
        env,
        &["get", "-n", ns, thing[0], thing[1], "-o", &jsonpath],
        None,
    )
}

#[tokio::test]
async fn kubectl_examples_run_verbatim() {
    let env = TestEnv::shared();
    k8s_support::apply_deploy_files(env, &["crd.yaml"]);
    let ns = env.namespace("docs-kubectl").await;
    // migrate-manual.md: the hand-made switch, on the Service it shows.
    let selector = apply_run_get(
        env,
        &ns,
        ("docs/migrate-manual.md", "kind: Service"),
        ("docs/migrate-manual.md", "kubectl patch service"),
        ["service", "service-color-api"],
        "{.spec.selector.version}",
    );
    assert_eq!(selector, "green");
    // kubernetes.md: a command through the annotation, on README's BlueGreen.
    let command = apply_run_get(
        env,
        &ns,
        ("README.md", "kind: BlueGreen"),
        ("docs/kubernetes.md", "kubectl annotate bluegreen"),
        ["bluegreen", "color-api"],
        "{.metadata.annotations.teal\\.dev/command}",
    );
    assert!(command.starts_with("promote/"), "{command:?}");
    assert!(
        command["promote/".len()..].parse::<u64>().is_ok(),
        "{command:?}"
    );
    // kubernetes.md, Upgrades: starting over removes the stored engine state.
    k8s_support::kubectl(
        env,
        &[
            "patch",
            "bluegreen",
            "color-api",
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status": {"engine": {"machine": {"release": {"phase": "Teleporting"}}}}}"#,
        ],
        None,
    );
    run_verbatim(
        env,
        &ns,
        &block("docs/kubernetes.md", "--subresource=status"),
    );
    let engine = k8s_support::kubectl(
        env,
        &[
            "get",
            "-n",
            &ns,
            "bluegreen",
            "color-api",
            "-o",
            "jsonpath={.status.engine}",
        ],
        None,
    );
    assert_eq!(engine, "", "status.engine removed");
}

#[tokio::test]
async fn dev_cluster_kubectl_examples() {
    let env = TestEnv::shared();
    let ns = env.namespace("docs-devcluster").await;
    // dev-cluster.md, without starting a second cluster: the kubectl lines.
    let text = block("docs/dev-cluster.md", "kubectl create deployment web");
    let kubectl_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("kubectl create") || l.starts_with("kubectl get deploy"))
        .collect();
    assert_eq!(kubectl_lines.len(), 2, "{text}");
    let out = run_verbatim(env, &ns, &kubectl_lines.join("\n"));
    assert!(out.contains("deployment.apps/web created"), "{out}");
    // ... and `get` lists it (kubectl names the kind when asked for several).
    assert_eq!(out.matches("deployment.apps/web").count(), 2, "{out}");
}

#[tokio::test]
async fn install_block_runs_verbatim() {
    let env = TestEnv::shared();
    let ns = env.namespace("docs-install").await;
    let script = block("docs/install.md", "set image deployment/teal-controller");
    run_verbatim(env, &ns, &script);
    let image = k8s_support::kubectl(
        env,
        &[
            "-n",
            "teal-system",
            "get",
            "deployment",
            "teal-controller",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
        None,
    );
    assert_eq!(image, "registry.example/teal:0.1.0");
}

/// docs/kubernetes.md, "Try it on this machine", as written: a dev cluster with the real node
/// (in a directory of the test's own), teal installed with Helm, an app released with router
/// type `teal`.
#[tokio::test]
async fn kubernetes_walkthrough_runs_verbatim_on_the_real_node() {
    let script = block("docs/kubernetes.md", "eval \"$(scripts/dev-cluster env)\"");
    let dir = std::env::temp_dir().join(format!("teal-docs-walkthrough-{}", std::process::id()));
    /// `scripts/dev-cluster down` however the test ends.
    struct Down(PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new(root().join("scripts/dev-cluster"))
                .arg("down")
                .env("TEAL_DEV_CLUSTER_DIR", &self.0)
                .status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _down = Down(dir.clone());
    let out = tokio::task::spawn_blocking(move || {
        k8s_support::run_ok(
            Command::new("timeout")
                .args(["900", "bash", "-euo", "pipefail", "-c", &script])
                .current_dir(root())
                .env("TEAL_DEV_CLUSTER_DIR", &dir)
                .env_remove("KUBECONFIG"),
            None,
        )
    })
    .await
    .unwrap();
    let v1 = out
        .find(r#"{"color":"blue","version":"v1"}"#)
        .unwrap_or_else(|| panic!("no v1 answer from blue in:\n{out}"));
    let v2 = out
        .find(r#"{"color":"green","version":"v2"}"#)
        .unwrap_or_else(|| panic!("no v2 answer from green in:\n{out}"));
    assert!(v1 < v2, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("shop ") && l.contains("green")),
        "kubectl get bluegreen: {out}"
    );
}

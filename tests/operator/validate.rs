//! Every object `kuberaft render` makes of each example, and the CRD, validated offline against
//! the official Kubernetes schemas with `kubernetes-validate --strict`, for Kubernetes 1.30 and the
//! newest version the validator has; the examples themselves against the CRD's own schema.
//!
//! The validator comes from PyPI (scripts/test installs it and sets `KUBERNETES_VALIDATE`). Without
//! it the tests fail under `CI=true` and say how to install it otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

const OLDEST: &str = "1.30.0";

/// The tool that this environment variable names, or None when it is missing (the rule of
/// tests/support/require.rs: under `CI=true` the test fails, elsewhere it says it was skipped).
pub fn require_tool(variable: &str, what: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable).map(PathBuf::from).filter(|path| path.exists());
    crate::require::available(path.is_some(), &format!("{variable} set to {what} (scripts/test installs it)"))
        .then_some(path)
        .flatten()
}

fn require_validator() -> Option<PathBuf> {
    require_tool("KUBERNETES_VALIDATE", "the kubernetes-validate binary")
}

/// Validates `files` strictly for Kubernetes 1.30 and the newest the validator has.
pub fn validate_with_validator(files: &[PathBuf]) -> Option<(bool, String)> {
    let validator = require_validator()?;
    let newest = newest_version(&validator);
    Some(validate(&validator, &newest, files))
}

/// The Python of the validator's venv (it has jsonschema too).
fn python(validator: &Path) -> PathBuf {
    validator.with_file_name("python")
}

fn newest_version(validator: &Path) -> String {
    let output = Command::new(python(validator))
        .args([
            "-c",
            "import kubernetes_validate.utils as u; v = sorted(set(u.all_versions()), key=lambda s: tuple(map(int, s.split('.')))); print(v[-1])",
        ])
        .output()
        .expect("run the validator's python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(version.starts_with("1."), "a Kubernetes version: {version}");
    version
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "the examples: {files:?}");
    files
}

fn render(example: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
        .args(["render", "-f"])
        .arg(example)
        .output()
        .expect("run kuberaft render");
    assert!(output.status.success(), "render {}: {}", example.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// Runs the validator on `files` for both versions; returns (success, output).
fn validate(validator: &Path, newest: &str, files: &[PathBuf]) -> (bool, String) {
    let output = Command::new(validator)
        .args(["--strict", "-k", OLDEST, "-k", newest])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The rule of tests/support/require.rs through a real guard: with the validator missing, a
/// schema test fails under `CI=true`, naming it, and elsewhere passes saying SKIPPED.
#[test]
fn a_test_without_its_tool_fails_under_ci_and_says_skipped_elsewhere() {
    let test = "validate::examples_pass_the_crds_own_schema";
    let missing = [("KUBERNETES_VALIDATE", "/nonexistent/kubernetes-validate")];
    let (code, out) = crate::require::rerun_self(test, &[missing[0], ("CI", "true")]);
    assert_eq!(code, Some(101), "{out}");
    assert!(out.contains(&format!("{test} cannot run: it needs KUBERNETES_VALIDATE set to")), "{out}");
    let (code, out) = crate::require::rerun_self(test, &[missing[0], ("CI", "")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("SKIPPED {test}: needs KUBERNETES_VALIDATE")), "{out}");
}

#[test]
fn rendered_examples_and_the_crd_pass_the_official_schemas_strictly() {
    let Some(validator) = require_validator() else { return };
    let newest = newest_version(&validator);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    let mut certificates = Vec::new();
    let mut built_in = 0;
    for example in examples() {
        let rendered = render(&example);
        for kind in ["Service", "ConfigMap", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy"] {
            assert!(rendered.contains(&format!("kind: {kind}\n")), "{}: {kind}", example.display());
        }
        let file = dir.path().join(example.file_name().expect("name"));
        std::fs::write(&file, &rendered).expect("write");
        let kinds = rendered.lines().filter(|line| line.starts_with("kind: "));
        let (custom, others): (Vec<&str>, Vec<&str>) = kinds.partition(|line| *line == "kind: Certificate");
        built_in += others.len();
        if !custom.is_empty() {
            certificates.push(file.clone());
        }
        files.push(file);
    }
    assert!(built_in > 6 * files.len(), "the TLS example's Secrets are rendered too");
    let crds = kuberaft::operator::crd::CRD_NAMES.map(crd_path);
    files.extend(crds.iter().cloned());
    let (ok, output) = validate(&validator, &newest, &files);
    assert!(ok, "{output}");
    // Every built-in object (Secrets too) and the CRDs, each for both versions.
    let passed = output.matches(" passed for resource ").count();
    assert_eq!(passed, (built_in + crds.len()) * 2, "{output}");
    assert!(output.contains(&format!("against version {}", &newest[..newest.rfind('.').unwrap_or(newest.len())])));

    // cert-manager's Certificates are no built-in kind: kubernetes-validate only warns that it has
    // no schema for them, so they are checked against cert-manager's own CRD.
    assert!(!certificates.is_empty(), "the certManager example renders Certificates");
    assert!(output.contains("Couldn't find schema for kind Certificate"), "{output}");
    let Some(crd) = require_tool("CERT_MANAGER_CRD", "cert-manager's Certificate CRD file") else { return };
    let (ok, output) = against_crd(&validator, &crd, &certificates);
    assert!(ok, "{output}");
    assert_eq!(output.matches(": ok").count(), 11, "11 Certificates: {output}");
    // That schema has teeth too: a Certificate without its issuer fails it.
    let broken = dir.path().join("broken-certificate.yaml");
    let text = std::fs::read_to_string(&certificates[0]).expect("read").replace("issuerRef:", "issuerReference:");
    std::fs::write(&broken, text).expect("write");
    let (ok, output) = against_crd(&validator, &crd, &[broken]);
    assert!(!ok && output.contains("issuerRef"), "{output}");

    // The validator has teeth: one unknown field in the pod template fails it.
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(&files[0])
        .expect("read")
        .replace("terminationMessagePolicy:", "terminationMessagePolicyy:");
    std::fs::write(&broken, text).expect("write");
    let (ok, output) = validate(&validator, &newest, &[broken]);
    assert!(!ok, "an unknown field must fail: {output}");
    assert!(output.contains("terminationMessagePolicyy"), "{output}");
}

fn crd_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("crds/{name}.kuberaft.io.yaml"))
}

/// Validates the objects of `files` whose kind is the CRD's against the CRD's (first version's)
/// schema, with the validator's Python and jsonschema; returns (success, one line per object).
pub(crate) fn against_crd(validator: &Path, crd: &Path, files: &[PathBuf]) -> (bool, String) {
    let script = r#"
import sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
kind = crd["spec"]["names"]["kind"]
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
failed = 0
for path in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(path)):
        if doc is None or doc.get("kind") != kind:
            continue
        errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
        for e in errors:
            print(f"{path}: {'.'.join(map(str, e.path))}: {e.message}")
        failed += bool(errors)
        print(f"{path}: {'FAIL' if errors else 'ok'}")
sys.exit(1 if failed else 0)
"#;
    let output =
        Command::new(python(validator)).args(["-c", script]).arg(crd).args(files).output().expect("run python");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).to_string())
}

#[test]
fn examples_pass_the_crds_own_schema() {
    let Some(validator) = require_validator() else { return };
    let crd = crd_path("raftclusters");
    let run = |files: &[PathBuf]| against_crd(&validator, &crd, files);
    let examples = examples();
    let (ok, output) = run(&examples);
    assert!(ok, "{output}");
    assert_eq!(output.matches(": ok").count(), examples.len(), "{output}");
    for example in &examples {
        let cluster: kuberaft::operator::crd::RaftCluster =
            serde_saphyr::from_str(&std::fs::read_to_string(example).expect("read")).expect("a RaftCluster");
        assert_eq!(cluster.spec.problems(), Vec::<String>::new(), "{}: the CEL rules too", example.display());
    }

    // The schema has teeth: 12 replicas fail it.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: kuberaft.io/v1alpha1\nkind: RaftCluster\nmetadata: {name: x}\nspec: {replicas: 12}\n",
    )
    .expect("write");
    let (ok, output) = run(std::slice::from_ref(&bad));
    assert!(!ok && output.contains("replicas"), "{output}");
}

/// A cluster that restores a RaftSnapshot by name passes the schema; `kuberaft render`, which
/// has no API server to read the RaftSnapshot from, says so rather than render a restore of
/// nothing.
#[test]
fn a_restore_from_a_raft_snapshot_passes_the_schema_and_render_says_why_it_cannot_build_it() {
    let Some(validator) = require_validator() else { return };
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/snapshots/restore-from-snapshot.yaml");
    let (ok, output) = against_crd(&validator, &crd_path("raftclusters"), std::slice::from_ref(&example));
    assert!(ok && output.matches(": ok").count() == 1, "{output}");
    let cluster: kuberaft::operator::crd::RaftCluster =
        serde_saphyr::from_str(&std::fs::read_to_string(&example).expect("read")).expect("a RaftCluster");
    assert_eq!(cluster.spec.problems(), Vec::<String>::new());
    let rendered = std::process::Command::new(env!("CARGO_BIN_EXE_kuberaft"))
        .args(["render", "-f"])
        .arg(&example)
        .output()
        .expect("run kuberaft");
    let err = String::from_utf8_lossy(&rendered.stderr);
    assert!(!rendered.status.success() && rendered.stdout.is_empty(), "{err}");
    assert!(
        err.contains("names RaftSnapshot etcd-before-upgrade: the operator reads its file from the API server"),
        "{err}"
    );
}

/// The RaftSnapshot example passes its CRD's schema, and so does every spec the operator reads
/// (the same types); the schema refuses a bad name and an unknown deletion policy.
#[test]
fn the_raft_snapshot_example_passes_its_crds_schema() {
    let Some(validator) = require_validator() else { return };
    let crd = crd_path("raftsnapshots");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/snapshots/raftsnapshot.yaml");
    let (ok, output) = against_crd(&validator, &crd, std::slice::from_ref(&example));
    assert!(ok && output.matches(": ok").count() == 2, "{output}");
    let text = std::fs::read_to_string(&example).expect("read");
    for doc in text.split("\n---\n") {
        let snapshot: kuberaft::operator::crd::snapshot::RaftSnapshot =
            serde_saphyr::from_str(doc).expect("a RaftSnapshot");
        assert_eq!(snapshot.spec.problems(), Vec::<String>::new());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (bad, field) in [
        ("spec: {clusterName: Etcd_1}\n", "clusterName"),
        ("spec: {clusterName: etcd, deletionPolicy: Forget}\n", "deletionPolicy"),
        ("spec: {}\n", "clusterName"),
    ] {
        let file = dir.path().join("bad.yaml");
        let text = format!("apiVersion: kuberaft.io/v1alpha1\nkind: RaftSnapshot\nmetadata: {{name: x}}\n{bad}");
        std::fs::write(&file, text).expect("write");
        let (ok, output) = against_crd(&validator, &crd, &[file]);
        assert!(!ok && output.contains(field), "{bad}: {output}");
    }
}

//! The Helm chart: `helm lint --strict`; `helm template` with default and non-default values
//! validated with `kubernetes-validate --strict` (Kubernetes 1.30 and the newest); bad values
//! refused by its schema; its CRD identical to `crds/`; its appVersion the crate's version; the
//! Deployment's args accepted by `kuberaft operator`; and its RBAC covering every call the
//! operator makes against the fake API server, with nothing it does not make.
//!
//! Helm comes from the pinned PyPI package of DESIGN.md §7 (scripts/test installs it and sets
//! `HELM`); without it the tests fail under `CI=true`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use serde_json::Value;

use crate::validate::{require_tool, validate_with_validator};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/kuberaft")
}

fn helm() -> Option<PathBuf> {
    require_tool("HELM", "helm (scripts/test extracts it from the pinned PyPI package)")
}

/// `helm template` of the chart with these extra arguments: (success, stdout, stderr).
fn template(helm: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(helm)
        .args(["template", "rel"])
        .arg(chart())
        .args(["--namespace", "kuberaft-system", "--include-crds"])
        .args(args)
        .output()
        .expect("run helm");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn documents(yaml: &str) -> Vec<Value> {
    // Empty documents are skipped; a document that is not YAML fails the test.
    serde_saphyr::read::<_, Value>(&mut yaml.as_bytes()).map(|doc| doc.expect("helm's output is YAML")).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("a {kind}"))
}

#[test]
fn helm_lint_strict_passes() {
    let Some(helm) = helm() else { return };
    let output = Command::new(&helm).args(["lint", "--strict"]).arg(chart()).output().expect("run helm");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    assert!(text.contains("0 chart(s) failed"), "{text}");
}

#[test]
fn templates_with_default_and_custom_values_pass_the_official_schemas() {
    let Some(helm) = helm() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let custom = chart().join("ci/custom-values.yaml");
    let mut files = Vec::new();
    for (name, args) in [("default", vec![]), ("custom", vec!["-f", custom.to_str().expect("UTF-8 path")])] {
        let (ok, yaml, err) = template(&helm, &args);
        assert!(ok, "{name}: {err}");
        let docs = documents(&yaml);
        let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for kind in [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
        ] {
            assert!(kinds.contains(kind), "{name}: {kind} in {kinds:?}");
        }
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &yaml).expect("write");
        files.push(file);
    }
    let Some((ok, output)) = validate_with_validator(&files) else { return };
    assert!(ok, "{output}");
    assert!(!output.contains("ERROR"), "{output}");
    // The ServiceMonitor (custom values only) is a Prometheus Operator kind the validator has no
    // schema for: a warning, and the only one.
    for line in output.lines().filter(|l| l.starts_with("WARN")) {
        assert!(line.contains("ServiceMonitor"), "{line}");
    }

    // The custom values reach the Deployment.
    let (_, yaml, _) = template(&helm, &["-f", custom.to_str().expect("UTF-8 path")]);
    let docs = documents(&yaml);
    let deployment = find(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example.com/kuberaft:0.1.0-rc1");
    assert_eq!(container["imagePullPolicy"], "Always");
    let args: Vec<&str> = container["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    assert!(args.contains(&"--namespace=storage,team-a"), "{args:?}");
    assert!(args.contains(&"--metrics-addr=0.0.0.0:9090"), "{args:?}");
    assert_eq!(find(&docs, "ServiceMonitor")["spec"]["endpoints"][0]["interval"], "15s");
}

#[test]
fn the_deployment_runs_the_operator_with_flags_it_accepts_and_safe_defaults() {
    let Some(helm) = helm() else { return };
    let (ok, yaml, err) = template(&helm, &[]);
    assert!(ok, "{err}");
    let docs = documents(&yaml);
    let deployment = find(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], format!("ghcr.io/kuberaft/kuberaft:{}", env!("CARGO_PKG_VERSION")));
    let args: Vec<String> =
        container["args"].as_array().expect("args").iter().filter_map(|a| a.as_str().map(str::to_string)).collect();
    let cli = kuberaft::cli::Cli::try_parse_from(std::iter::once("kuberaft".to_string()).chain(args.clone()))
        .unwrap_or_else(|e| panic!("kuberaft {args:?}: {e}"));
    match cli.command {
        kuberaft::cli::Commands::Operator(operator) => {
            assert!(operator.leader_elect);
            assert_eq!(operator.lease_name, "kuberaft-operator");
            assert_eq!(operator.metrics_addr.port(), 8080);
            assert!(operator.namespaces.is_empty(), "all namespaces by default");
        }
        other => panic!("not the operator: {other:?}"),
    }
    // Secure by default.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
}

#[test]
fn bad_values_are_refused_by_the_chart_schema() {
    let Some(helm) = helm() else { return };
    for (set, expected) in [
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("replicaCountt=2", "replicaCountt"),
        ("replicaCount=-1", "replicaCount"),
        ("metrics.port=70000", "port"),
        ("log.format=xml", "format"),
        ("watchNamespaces[0]=Not_A_Namespace", "watchNamespaces"),
        ("resources.limits.memory=lots", "memory"),
    ] {
        let (ok, _, err) = template(&helm, &["--set", set]);
        assert!(!ok, "{set} was accepted");
        assert!(err.contains("values don't meet the specifications of the schema"), "{set}: {err}");
        assert!(err.contains(expected), "{set}: {err}");
    }
    // And good values pass the same way.
    let (ok, _, err) = template(&helm, &["--set", "image.pullPolicy=Never", "--set", "replicaCount=3"]);
    assert!(ok, "{err}");
}

#[test]
fn the_charts_crd_is_the_generated_one_and_its_app_version_the_crates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in kuberaft::operator::crd::CRD_NAMES {
        let file = format!("crds/{name}.kuberaft.io.yaml");
        let generated = std::fs::read_to_string(root.join(&file)).expect("crds/");
        let in_chart = std::fs::read_to_string(chart().join(&file)).expect("chart crds/");
        assert!(generated == in_chart, "charts/kuberaft/crds/ differs from crds/: `cp {file} charts/kuberaft/crds/`");
    }
    let in_chart = std::fs::read_dir(chart().join("crds")).expect("chart crds/").count();
    assert_eq!(in_chart, kuberaft::operator::crd::CRD_NAMES.len(), "no other CRD in the chart");
    let chart_yaml: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).expect("Chart.yaml"))
            .expect("YAML");
    assert_eq!(chart_yaml["appVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")), "Chart.yaml appVersion");
}

/// (API group, resource, verb) allowed by the ClusterRole and the Role the chart renders.
fn granted(docs: &[Value]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for role in docs.iter().filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role") {
        for rule in role["rules"].as_array().into_iter().flatten() {
            let list = |key: &str| -> Vec<String> {
                rule[key].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
            };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        out.insert((group.clone(), resource.clone(), verb));
                    }
                }
            }
        }
    }
    out
}

/// The (group, resource, verb) of one call of the fake API log.
fn needed(call: &crate::fake_api::Call) -> (String, String, String) {
    let parts: Vec<&str> = call.path.trim_start_matches('/').split('/').collect();
    // /api/v1/namespaces/NS/RESOURCE[/NAME[/SUB]] or /apis/GROUP/VERSION/namespaces/NS/...
    let (group, rest) = if parts[0] == "api" { ("", &parts[2..]) } else { (parts[1], &parts[3..]) };
    let rest = if rest.first() == Some(&"namespaces") { &rest[2..] } else { rest };
    let resource = match rest {
        [resource, _, sub] => format!("{resource}/{sub}"),
        [resource, ..] => resource.to_string(),
        [] => String::new(),
    };
    let verb = match (call.method.as_str(), rest.len()) {
        ("GET", 1) => "list",
        ("GET", _) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        (other, _) => other,
    };
    (group.to_string(), resource, verb.to_string())
}

#[tokio::test]
async fn rbac_grants_every_call_the_operator_makes_and_deletes_only_backup_jobs() {
    let Some(helm) = helm() else { return };
    let (ok, yaml, err) = template(&helm, &[]);
    assert!(ok, "{err}");
    let granted = granted(&documents(&yaml));

    let mut calls = crate::scenarios::calls_of_a_scale_up_and_a_leader_election().await;
    calls.extend(crate::snapshots::calls_of_a_deleted_snapshot().await);
    calls.extend(crate::snapshots::calls_of_claim_backups().await);
    let mut needs: BTreeSet<(String, String, String)> = calls.iter().map(needed).collect();
    // Server-side apply creates missing objects: create as well as patch (a RaftSnapshot's
    // finalizers are a merge patch, which never creates).
    for (group, resource, verb) in needs.clone() {
        if verb == "patch" && !resource.contains('/') && !["events", "raftsnapshots"].contains(&resource.as_str()) {
            needs.insert((group, resource, "create".to_string()));
        }
    }
    // The controller's watches.
    for (group, resource) in [
        ("kuberaft.io", "raftclusters"),
        ("kuberaft.io", "raftsnapshots"),
        ("apps", "statefulsets"),
        ("", "configmaps"),
        ("", "services"),
        ("policy", "poddisruptionbudgets"),
        ("networking.k8s.io", "networkpolicies"),
    ] {
        for verb in ["list", "watch"] {
            needs.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    let missing: Vec<_> = needs.difference(&granted).collect();
    assert!(missing.is_empty(), "the chart's RBAC lacks {missing:?}");
    // It deletes only its backup Jobs, once read.
    let deletes: Vec<_> = granted.iter().filter(|(_, _, verb)| verb == "delete" || verb == "*").collect();
    assert_eq!(deletes, [&("batch".to_string(), "jobs".to_string(), "delete".to_string())], "{granted:?}");
    let unused: Vec<_> = granted.difference(&needs).collect();
    assert!(unused.is_empty(), "the chart grants what the operator never does: {unused:?}");
}

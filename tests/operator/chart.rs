//! The Helm chart: `helm lint --strict`; `helm template` with default and non-default values
//! validated with `kubernetes-validate --strict` (Kubernetes 1.30 and the newest); bad values
//! refused by its schema; its CRD identical to `crds/`; its appVersion the crate's version; the
//! Deployment's args accepted by `kuberaft operator`; and its RBAC covering every call the
//! operator makes against the fake API server, with nothing it does not make.
//!
//! Its monitoring (issue 18, DESIGN.md §7 "Monitoring in the chart"): the PodMonitor selects
//! the pods and ports the operator's StatefulSets really have; the PodMonitor, PrometheusRule and
//! ServiceMonitor pass the Prometheus Operator's own CRDs; `promtool test rules` runs
//! charts/kuberaft/tests/rules-test.yaml (a firing and a silent case of every alert) against the
//! rules as the chart renders them; and every `kuberaft_*` metric the alerts and the dashboard
//! use is one a real member process or the operator serves.
//!
//! Helm comes from the pinned PyPI package of DESIGN.md §7 (scripts/test installs it and sets
//! `HELM`); promtool from Debian's `prometheus` package (`PROMTOOL`, else `promtool` on the
//! PATH); without them the tests fail under `CI=true`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

use crate::validate::{against_crd, require_tool, validate_with_validator};

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
    // With the default values, and with the custom ones (monitoring on).
    let custom = chart().join("ci/custom-values.yaml");
    for values in [None, Some(&custom)] {
        let mut command = Command::new(&helm);
        command.args(["lint", "--strict"]).arg(chart());
        if let Some(values) = values {
            command.arg("-f").arg(values);
        }
        let output = command.output().expect("run helm");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{values:?}: {text}");
        assert!(text.contains("0 chart(s) failed"), "{values:?}: {text}");
    }
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
        // Monitoring is off by default; the custom values turn all of it on.
        for kind in MONITORING_KINDS.into_iter().chain(["ConfigMap"]) {
            assert_eq!(kinds.contains(kind), name == "custom", "{name}: {kind} in {kinds:?}");
        }
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &yaml).expect("write");
        files.push(file);
    }
    let Some((ok, output)) = validate_with_validator(&files) else { return };
    assert!(ok, "{output}");
    assert!(!output.contains("ERROR"), "{output}");
    // The ServiceMonitor, PodMonitor and PrometheusRule (custom values only) are Prometheus
    // Operator kinds the validator has no schema for: warnings, and the only ones (they are checked
    // against the Prometheus Operator's CRDs below). The dashboard's ConfigMap is built in.
    let warnings: Vec<&str> = output.lines().filter(|l| l.starts_with("WARN")).collect();
    for line in &warnings {
        assert!(MONITORING_KINDS.iter().any(|kind| line.contains(kind)), "{line}");
    }
    for kind in MONITORING_KINDS {
        assert!(warnings.iter().any(|line| line.contains(kind)), "{kind} was rendered and checked: {output}");
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
    // The per-RaftCluster gauges keep their own `namespace` label.
    assert_eq!(find(&docs, "ServiceMonitor")["spec"]["endpoints"][0]["honorLabels"], true);
    // And the monitoring values reach their objects.
    let pod_monitor = find(&docs, "PodMonitor");
    assert_eq!(pod_monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(pod_monitor["spec"]["namespaceSelector"]["matchNames"], json!(["storage", "team-a"]));
    let endpoints = pod_monitor["spec"]["podMetricsEndpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert_eq!((&endpoints[0]["port"], &endpoints[0]["interval"]), (&json!("metrics"), &json!("20s")));
    let rule = find(&docs, "PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let alerts = alerts(rule);
    assert!(alerts.iter().all(|a| a["labels"]["team"] == "storage"), "alertLabels on every alert");
    assert!(alerts.iter().all(|a| a["labels"]["severity"] != "ignored"), "alertLabels cannot change a severity");
    let expiring: Vec<&str> = alerts
        .iter()
        .filter(|a| a["alert"] == "KuberaftCertificateExpiring")
        .filter_map(|a| a["expr"].as_str())
        .collect();
    assert!(expiring.len() == 2 && expiring[0].ends_with("< 10 * 86400") && expiring[1].ends_with("< 3 * 86400"));
    let dashboard = find(&docs, "ConfigMap");
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(dashboard["metadata"]["annotations"]["grafana_folder"], "Databases");
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
        ("monitoring.podMonitor.ports[0]=http", "ports"),
        ("monitoring.podMonitor.interval=soon", "interval"),
        ("monitoring.podMonitor.enabledd=true", "enabledd"),
        ("monitoring.prometheusRule.certificateExpiryDays.warning=0", "warning"),
        ("monitoring.grafanaDashboard.labelValue=not ok", "labelValue"),
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
        // The caches passes read (`operator::cache`): the members' pods, the operator's Secrets.
        ("", "pods"),
        ("", "secrets"),
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

// ---- Monitoring (issue 18) ----

/// The Prometheus Operator's kinds the chart renders (with the custom values).
const MONITORING_KINDS: [&str; 3] = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];

/// Every monitoring object on.
const MONITORING: [&str; 8] = [
    "--set",
    "monitoring.podMonitor.enabled=true",
    "--set",
    "monitoring.prometheusRule.enabled=true",
    "--set",
    "monitoring.grafanaDashboard.enabled=true",
    "--set",
    "metrics.serviceMonitor.enabled=true",
];

/// The rules of a rendered PrometheusRule, every group's.
fn alerts(rule: &Value) -> Vec<&Value> {
    let groups = rule["spec"]["groups"].as_array().expect("groups");
    groups.iter().flat_map(|g| g["rules"].as_array().expect("rules")).collect()
}

/// promtool: `PROMTOOL` when set (it must exist), else `promtool` on the PATH; under `CI=true`
/// a test without it fails (tests/support/require.rs).
fn promtool() -> Option<PathBuf> {
    let what = "promtool, from Debian's prometheus package";
    if std::env::var_os("PROMTOOL").is_some() {
        return require_tool("PROMTOOL", what);
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("promtool")).find(|p| p.is_file()));
    crate::require::available(
        on_path.is_some(),
        &format!("{what}, on the PATH or PROMTOOL set to it (scripts/test installs it)"),
    )
    .then_some(on_path)
    .flatten()
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().expect("run a tool");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The rendered PrometheusRule's `spec` as a rule file (JSON is YAML) in `dir`, beside a copy of
/// charts/kuberaft/tests/rules-test.yaml; `change` edits the file's text first.
fn write_rules(dir: &Path, rule: &Value, change: impl FnOnce(String) -> String) {
    let text = serde_json::to_string_pretty(&rule["spec"]).expect("JSON");
    std::fs::write(dir.join("rules.yaml"), change(text)).expect("write the rules");
    std::fs::copy(chart().join("tests/rules-test.yaml"), dir.join("rules-test.yaml")).expect("copy the rules' tests");
}

fn promtool_test(promtool: &Path, dir: &Path) -> (bool, String) {
    run(Command::new(promtool).args(["test", "rules", "rules-test.yaml"]).current_dir(dir))
}

#[test]
fn promtool_passes_a_firing_and_a_silent_case_of_every_alert() {
    let Some(helm) = helm() else { return };
    let Some(promtool) = promtool() else { return };
    let (ok, yaml, err) = template(&helm, &["--set", "monitoring.prometheusRule.enabled=true"]);
    assert!(ok, "{err}");
    let docs = documents(&yaml);
    let rule = find(&docs, "PrometheusRule");
    let dir = tempfile::tempdir().expect("tempdir");
    write_rules(dir.path(), rule, |text| text);

    let rules = alerts(rule);
    let (ok, output) = run(Command::new(&promtool).args(["check", "rules", "rules.yaml"]).current_dir(dir.path()));
    assert!(ok && output.contains(&format!("SUCCESS: {} rules found", rules.len())), "{output}");
    let (ok, output) = promtool_test(&promtool, dir.path());
    assert!(ok && output.contains("SUCCESS"), "{output}");

    // Every alert (each severity of it) has an eval where it fires and one where it stays silent,
    // and the tests name no alert the chart does not have.
    let tests: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart().join("tests/rules-test.yaml")).expect("charts/kuberaft/tests/rules-test.yaml"),
    )
    .expect("YAML");
    let mut fired: BTreeSet<(String, String)> = BTreeSet::new();
    let mut silent: BTreeSet<String> = BTreeSet::new();
    for case in tests["tests"].as_array().expect("tests").iter().flat_map(|t| t["alert_rule_test"].as_array()).flatten()
    {
        let name = case["alertname"].as_str().expect("alertname").to_string();
        match case["exp_alerts"].as_array().filter(|alerts| !alerts.is_empty()) {
            Some(alerts) => {
                for alert in alerts {
                    let severity = alert["exp_labels"]["severity"].as_str().expect("a severity").to_string();
                    fired.insert((name.clone(), severity));
                }
            }
            None => {
                silent.insert(name);
            }
        }
    }
    let defined: BTreeSet<(String, String)> = rules
        .iter()
        .map(|r| {
            let name = r["alert"].as_str().expect("only alerts").to_string();
            (name, r["labels"]["severity"].as_str().expect("a severity").to_string())
        })
        .collect();
    assert_eq!(fired, defined, "a firing case of each alert and severity");
    let names: BTreeSet<String> = defined.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(silent, names, "a silent case of each alert");
    // The alerts the brief asks for (issue 18) are all there.
    for name in [
        "KuberaftNoLeader",
        "KuberaftFrequentLeaderChanges",
        "KuberaftMemberDown",
        "KuberaftProposalsFailing",
        "KuberaftHighFsyncDurations",
        "KuberaftMemberLagging",
        "KuberaftQuorumAtRisk",
        "KuberaftBackupFailing",
        "KuberaftCertificateExpiring",
        "KuberaftOperatorNotReconciling",
    ] {
        assert!(names.contains(name), "{name} in {names:?}");
    }

    // The tests have teeth: a threshold moved (the fsync warning at 0.9 s instead of 0.5 s) fails them.
    let broken = tempfile::tempdir().expect("tempdir");
    write_rules(broken.path(), rule, |text| {
        let moved = text.replace("[5m]))) > 0.5", "[5m]))) > 0.9");
        assert_ne!(moved, text, "the fsync warning's threshold is where this expects it");
        moved
    });
    let (ok, output) = promtool_test(&promtool, broken.path());
    assert!(!ok && output.contains("KuberaftHighFsyncDurations"), "{output}");
}

/// The PodMonitor selects the members as the operator builds them: the labels of its
/// StatefulSets' pods, the cluster's name in the instance label, and the ports its members serve
/// /metrics on (`client` without TLS, `metrics` with it), as `kuberaft render` makes them.
#[test]
fn the_pod_monitor_selects_the_pods_and_ports_of_the_members_the_operator_builds() {
    use kuberaft::operator::builders;
    let Some(helm) = helm() else { return };
    let (ok, yaml, err) = template(&helm, &MONITORING);
    assert!(ok, "{err}");
    let docs = documents(&yaml);
    let spec = &find(&docs, "PodMonitor")["spec"];
    let selector: BTreeMap<String, String> =
        serde_json::from_value(spec["selector"]["matchLabels"].clone()).expect("matchLabels");
    assert_eq!(spec["namespaceSelector"]["any"], true, "every namespace when watchNamespaces is empty");
    let endpoints = spec["podMetricsEndpoints"].as_array().expect("endpoints");
    let ports: Vec<&str> = endpoints.iter().filter_map(|e| e["port"].as_str()).collect();
    assert_eq!(ports, [builders::CLIENT_PORT_NAME, builders::METRICS_PORT_NAME]);
    // The instance label, as Prometheus names a pod label (every character not [a-zA-Z0-9_] an _).
    let instance_meta = format!(
        "__meta_kubernetes_pod_label_{}",
        builders::LABEL_INSTANCE.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>()
    );
    for endpoint in endpoints {
        assert_eq!(endpoint["path"], "/metrics");
        let relabelings = endpoint["relabelings"].as_array().expect("relabelings");
        let target = |label: &str| relabelings.iter().find(|r| r["targetLabel"] == label).expect(label);
        assert_eq!(target("raftcluster")["sourceLabels"], json!([instance_meta]));
        assert_eq!(target("job")["replacement"], "kuberaft-member");
    }

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for (example, tls) in [("minimal.yaml", false), ("tls.yaml", true)] {
        let output = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
            .args(["render", "-f"])
            .arg(examples.join(example))
            .output()
            .expect("run kuberaft render");
        assert!(output.status.success(), "{example}: {}", String::from_utf8_lossy(&output.stderr));
        let rendered = documents(&String::from_utf8(output.stdout).expect("UTF-8"));
        let set = find(&rendered, "StatefulSet");
        let name = set["metadata"]["name"].as_str().expect("a name");
        let template = &set["spec"]["template"];
        let labels: BTreeMap<String, String> =
            serde_json::from_value(template["metadata"]["labels"].clone()).expect("labels");
        for (key, value) in &selector {
            assert_eq!(labels.get(key), Some(value), "{example}: the PodMonitor selects {key}={value}: {labels:?}");
        }
        assert_eq!(labels.get(builders::LABEL_INSTANCE).map(String::as_str), Some(name), "{example}");
        let container = &template["spec"]["containers"][0];
        let served: Vec<(&str, i64)> = container["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| (p["name"].as_str().expect("a name"), p["containerPort"].as_i64().expect("a number")))
            .collect();
        let env = |key: &str| {
            container["env"].as_array().expect("env").iter().find(|e| e["name"] == key).map(|e| e["value"].clone())
        };
        if tls {
            // The client port wants a certificate; /metrics is on the plain metrics listener.
            assert!(served.contains(&(builders::METRICS_PORT_NAME, i64::from(builders::METRICS_PORT))), "{served:?}");
            assert_eq!(
                env("KUBERAFT_LISTEN_METRICS_URLS"),
                Some(json!(format!("http://0.0.0.0:{}", builders::METRICS_PORT)))
            );
            assert_eq!(env("KUBERAFT_CLIENT_CERT_AUTH"), Some(json!("true")));
        } else {
            assert!(served.iter().any(|(port, _)| *port == builders::CLIENT_PORT_NAME), "{served:?}");
            assert!(!served.iter().any(|(port, _)| *port == builders::METRICS_PORT_NAME), "{served:?}");
            assert!(env("KUBERAFT_LISTEN_CLIENT_URL")
                .is_some_and(|url| url.as_str().is_some_and(|u| u.starts_with("http://"))));
        }
    }
}

/// The Prometheus Operator's CRDs (v0.89), which kopium 0.24.1 ships as test files: scripts/test
/// fetches that crate for cert-manager's CRD, so they are in the cargo registry.
fn prometheus_operator_crds() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    let found = home.and_then(|home| std::fs::read_dir(home.join("registry/src")).ok()).and_then(|registries| {
        registries
            .filter_map(Result::ok)
            .map(|registry| registry.path().join("kopium-0.24.1/tests"))
            .find(|dir| dir.join("podmonitors.monitoring.coreos.com.yaml").is_file())
    });
    crate::require::available(
        found.is_some(),
        "the Prometheus Operator's CRDs: kopium 0.24.1's tests/ in the cargo registry (scripts/test fetches kopium)",
    )
    .then_some(found)
    .flatten()
}

#[test]
fn the_monitoring_objects_pass_the_prometheus_operators_crds() {
    let Some(helm) = helm() else { return };
    let Some(validator) = require_tool("KUBERNETES_VALIDATE", "the kubernetes-validate binary") else { return };
    let Some(crds) = prometheus_operator_crds() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let custom = chart().join("ci/custom-values.yaml");
    for (name, args) in [("all", MONITORING.to_vec()), ("custom", vec!["-f", custom.to_str().expect("UTF-8 path")])] {
        let (ok, yaml, err) = template(&helm, &args);
        assert!(ok, "{name}: {err}");
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &yaml).expect("write");
        for (crd, kind) in [
            ("podmonitors", "PodMonitor"),
            ("prometheusrules", "PrometheusRule"),
            ("servicemonitors", "ServiceMonitor"),
        ] {
            let (ok, output) = against_crd(
                &validator,
                &crds.join(format!("{crd}.monitoring.coreos.com.yaml")),
                std::slice::from_ref(&file),
            );
            assert!(ok, "{name}: {output}");
            assert_eq!(output.matches(": ok").count(), 1, "{name}: one {kind}: {output}");
        }
    }
    // The schemas have teeth: an unknown relabeling action fails the PodMonitor's.
    let (_, yaml, _) = template(&helm, &MONITORING);
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        yaml.replace("targetLabel: raftcluster", "targetLabel: raftcluster\n          action: rename"),
    )
    .expect("write");
    let (ok, output) = against_crd(&validator, &crds.join("podmonitors.monitoring.coreos.com.yaml"), &[broken]);
    assert!(!ok && output.contains("action"), "{output}");
}

/// The names of the `kuberaft_*` metrics `text` uses (PromQL, or a dashboard's JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("kuberaft_") {
        let start = from + found;
        let end = text[start..].find(|c: char| !ident(c)).map_or(text.len(), |n| start + n);
        // Only where a name starts (not inside another identifier).
        if !text[..start].ends_with(ident) {
            names.insert(text[start..end].to_string());
        }
        from = end;
    }
    names
}

/// The metric families of a Prometheus text exposition, by name, with their type; every sample
/// belongs to one.
fn families(text: &str) -> BTreeMap<String, String> {
    let mut families = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            families.insert(name.to_string(), kind.to_string());
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        assert!(served(name, &families), "a sample of no family: {line}");
    }
    families
}

/// Whether the series `name` exists in these families: a family's own name (not a histogram's or
/// a summary's), or a histogram's `_bucket`, `_sum` and `_count`, a summary's `_sum` and `_count`.
fn served(name: &str, families: &BTreeMap<String, String>) -> bool {
    let of = |base: &str| families.get(base).map(String::as_str);
    match of(name) {
        Some(kind) => kind != "histogram" && kind != "summary",
        None => [
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"]),
            ("_count", &["histogram", "summary"]),
        ]
        .iter()
        .any(|(suffix, kinds)| name.strip_suffix(suffix).and_then(of).is_some_and(|kind| kinds.contains(&kind))),
    }
}

/// One `kuberaft node` process, killed when dropped (a failed assertion included).
struct Member {
    child: std::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address of the member this file starts: no other test uses 127.62.0.0/16.
const MEMBER_IP: &str = "127.62.0.1";

impl Member {
    /// A single-member cluster on loopback (README, "Running a member by hand"), with its plain
    /// metrics listener as the operator gives TLS members (`--listen-metrics-urls`).
    fn start() -> Member {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("member.log");
        let url = |port: u16| format!("http://{MEMBER_IP}:{port}");
        let (client, peer) = (kuberaft::base::wire::DEFAULT_CLIENT_PORT, kuberaft::base::wire::DEFAULT_PEER_PORT);
        let child = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
            .arg("node")
            .args(["--name", "m0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-url", &url(client), "--advertise-client-url", &url(client)])
            .args(["--listen-peer-url", &url(peer), "--advertise-peer-url", &url(peer)])
            .args(["--initial-cluster", &format!("m0={}", url(peer)), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "chart-metrics"])
            .args(["--listen-metrics-urls", &url(kuberaft::operator::builders::METRICS_PORT)])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the member's log"))
            .spawn()
            .expect("start kuberaft node");
        Member { child, log, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/metrics` on `port` once the member leads (so its leader series are set).
    async fn scrape(&mut self, port: u16) -> String {
        let http = crate::http_support::client().timeout(Duration::from_secs(5)).build().expect("a client");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the member exited ({status}):\n{}", self.log());
            }
            let answer = http.get(format!("http://{MEMBER_IP}:{port}/metrics")).send().await;
            if let Ok(answer) = answer.and_then(|a| a.error_for_status()) {
                let text = answer.text().await.unwrap_or_default();
                if text.lines().any(|l| l == "kuberaft_is_leader 1") {
                    return text;
                }
            }
            assert!(Instant::now() < deadline, "no /metrics with a leader on port {port} in 30 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_metrics_a_member_and_the_operator_serve() {
    let Some(helm) = helm() else { return };
    let (ok, yaml, err) = template(&helm, &MONITORING);
    assert!(ok, "{err}");
    let docs = documents(&yaml);
    // As the chart ships them: the rules' expressions, and the dashboard in its ConfigMap
    // (targets and template variables alike).
    let expressions: Vec<&str> =
        alerts(find(&docs, "PrometheusRule")).iter().filter_map(|a| a["expr"].as_str()).collect();
    let rules = metric_names(&expressions.join("\n"));
    let dashboard = find(&docs, "ConfigMap")["data"]["kuberaft.json"].as_str().expect("the dashboard");
    let dashboard_json: Value = serde_json::from_str(dashboard).expect("the dashboard is JSON");
    assert!(dashboard_json["panels"].as_array().is_some_and(|p| p.len() > 10), "panels");
    let shown = metric_names(dashboard);
    assert!(rules.len() >= 10 && shown.len() >= 20, "rules {rules:?}, dashboard {shown:?}");

    // A real member, scraped on its client port and on its metrics listener: the same families.
    let mut member = Member::start();
    let on_client = member.scrape(kuberaft::base::wire::DEFAULT_CLIENT_PORT).await;
    let on_metrics = member.scrape(kuberaft::operator::builders::METRICS_PORT).await;
    drop(member);
    let member_families = families(&on_client);
    assert_eq!(member_families, families(&on_metrics), "both ports serve the same families");

    // The operator, after one reconcile of a RaftCluster (its per-cluster gauges are declared
    // always; their samples come with what they are about: a reconcile, a backup, certificates).
    let world = crate::scenarios::World::new(json!({"replicas": 3}));
    world.reconcile().await.0.expect("reconcile");
    let operator_text = kuberaft::operator::controller::render_metrics(&world.ctx, true);
    let operator_families = families(&operator_text);
    let sample = format!(
        "kuberaft_operator_reconcile_last_success_timestamp_seconds{{namespace=\"{}\",raftcluster=\"etcd\"}} ",
        crate::fake_api::NS
    );
    assert!(operator_text.lines().any(|l| l.starts_with(&sample)), "{sample} in\n{operator_text}");

    let mut missing = Vec::new();
    for (source, names) in [("the PrometheusRule", &rules), ("the dashboard", &shown)] {
        for name in names.iter() {
            let (who, families) = if name.starts_with("kuberaft_operator_") {
                ("the operator", &operator_families)
            } else {
                ("a member", &member_families)
            };
            if !served(name, families) {
                missing.push(format!("{source} uses {name}, which {who} does not serve"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{missing:#?}\nmember: {:?}\noperator: {:?}",
        member_families.keys(),
        operator_families.keys()
    );
}

//! The operator run whole (`controller::run_on`: watches, reconciles, the metrics port) against
//! the fake API server on a loopback port, with two RaftClusters whose members the fake members
//! play: `/ui/v1/clusters`, `/ui` and `/metrics` show both, with their phase, leader, term,
//! members and the events the operator published; a deleted cluster leaves them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::events::Reporter;
use kuberaft::base::logging::LogFormat;
use kuberaft::operator::controller::{run_on, OperatorArgs};
use kuberaft::operator::crd::RaftCluster;
use kuberaft::operator::reconcile::Context;
use serde_json::{json, Value};

use crate::fake_api::*;
use crate::scenarios::{ready_pod, FakeMembers};

/// A RaftCluster of 3 members named `name`, and its ready pods.
pub(crate) fn put_cluster(api: &FakeApi, name: &str) {
    api.put(
        &cluster_path(name),
        json!({
            "apiVersion": "kuberaft.io/v1alpha1", "kind": "RaftCluster",
            "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1,
                         "resourceVersion": "1"},
            "spec": {"replicas": 3},
        }),
    );
    // The pods as the StatefulSet the operator makes will make them (its template's hash), so
    // that no restart is due.
    let cluster: RaftCluster =
        serde_json::from_value(api.get(&cluster_path(name)).expect("stored")).expect("a cluster");
    let sts = kuberaft::operator::builders::stateful_set(&cluster, 3).expect("a StatefulSet");
    let annotations = sts.spec.and_then(|s| s.template.metadata).and_then(|m| m.annotations);
    for i in 0..3 {
        let mut pod = ready_pod(&format!("{name}-{i}"));
        pod["metadata"]["labels"]["app.kubernetes.io/instance"] = json!(name);
        pod["metadata"]["annotations"] = json!(annotations);
        api.put(&pod_path(&format!("{name}-{i}")), pod);
    }
}

/// The operator, running until dropped.
pub(crate) struct Operator {
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), String>>>,
    http: reqwest::Client,
}

impl Operator {
    pub(crate) async fn start(client: kube::Client, ctx: Arc<Context>) -> Operator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let args = OperatorArgs {
            namespaces: vec![NS.to_string()],
            metrics_addr: addr,
            leader_elect: false,
            lease_name: "kuberaft-operator".to_string(),
            lease_namespace: NS.to_string(),
            identity: Some("test".to_string()),
            operator_pod_labels: "app.kubernetes.io/name=kuberaft".to_string(),
            log_format: LogFormat::Text,
            log_level: "warn".to_string(),
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { run_on(client, ctx, &args, listener, stopped).await });
        let http = crate::http_support::client().timeout(Duration::from_secs(5)).build().expect("http client");
        Operator { addr, stop, task: Some(task), http }
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        let url = format!("http://{}{path}", self.addr);
        self.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    pub(crate) async fn clusters(&self) -> Value {
        self.get("/ui/v1/clusters").await.json().await.expect("JSON")
    }

    /// Waits (bounded) until `done` holds of `/ui/v1/clusters`.
    pub(crate) async fn until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let overview = self.clusters().await;
            if done(&overview) {
                return overview;
            }
            assert!(Instant::now() < deadline, "{what}: not within 60 s; last:\n{overview:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops it as SIGTERM would, and waits for it.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        let task = self.task.take().expect("running");
        let ended = tokio::time::timeout(Duration::from_secs(20), task).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "the operator stops cleanly: {ended:?}");
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub(crate) fn find<'a>(overview: &'a Value, name: &str) -> &'a Value {
    overview["clusters"].as_array().and_then(|cs| cs.iter().find(|c| c["name"] == name)).unwrap_or(&Value::Null)
}

pub(crate) fn running(overview: &Value, name: &str, leader: &str) -> bool {
    let cluster = find(overview, name);
    cluster["phase"] == "Running"
        && cluster["leader"] == leader
        && cluster["events"].as_array().is_some_and(|events| events.iter().any(|e| e["reason"] == "LeaderElected"))
}

fn reasons(cluster: &Value) -> Vec<String> {
    cluster["events"].as_array().map_or(Vec::new(), |events| {
        events.iter().map(|e| e["reason"].as_str().unwrap_or_default().to_string()).collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_lists_every_cluster_with_its_phase_leader_members_and_events() {
    let api = FakeApi::default();
    put_cluster(&api, "etcd");
    put_cluster(&api, "other");
    let members = Arc::new(FakeMembers::default());
    members.add_cluster("etcd", &["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-1", 4, 20);
    members.add_cluster("other", &["other-0", "other-1", "other-2"], &[], "other-2", 7, 9);
    let served = api.serve().await;
    let client = served.client();
    let reporter = Reporter { controller: "kuberaft-operator".to_string(), instance: Some("test".to_string()) };
    let ctx = Arc::new(Context::new(client.clone(), members.clone(), reporter));
    let started = kuberaft::operator::builders::now_seconds();
    let operator = Operator::start(client, ctx).await;

    // The JSON: both clusters, formed and led, with what the operator said of them.
    let overview = operator
        .until("both clusters running with their leaders", |o| {
            running(o, "etcd", "etcd-1") && running(o, "other", "other-2")
        })
        .await;
    assert_eq!(overview["leading"], true);
    let names: Vec<&str> =
        overview["clusters"].as_array().expect("clusters").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["etcd", "other"]);
    let etcd = find(&overview, "etcd");
    assert_eq!(etcd["namespace"], NS);
    assert_eq!(etcd["term"], 4);
    assert_eq!(etcd["replicas"], 3);
    assert_eq!(etcd["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(etcd["members"][1]["role"], "leader");
    assert_eq!(etcd["conditions"][0]["type"], "Available");
    assert_eq!(etcd["conditions"][0]["status"], "True");
    let etcd_reasons = reasons(etcd);
    for reason in ["Bootstrap", "UpdateEndpoints", "LeaderElected"] {
        assert!(etcd_reasons.iter().any(|r| r == reason), "{reason} in {etcd_reasons:?}");
    }
    let times: Vec<k8s_openapi::jiff::Timestamp> = etcd["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["time"].as_str().and_then(|t| t.parse().ok()).expect("an RFC 3339 time"))
        .collect();
    assert!(times.windows(2).all(|pair| pair[0] >= pair[1]), "newest first: {times:?}");
    assert_eq!(etcd_reasons.last().map(String::as_str), Some("Bootstrap"), "the first, last");
    assert_eq!(etcd["memberView"]["portForward"], "kubectl port-forward -n ns svc/etcd-client 2379:2379");
    assert_eq!(etcd["memberView"]["url"], "http://localhost:2379/ui");
    let other = find(&overview, "other");
    assert_eq!(other["term"], 7);
    assert!(other["events"].as_array().is_some_and(|e| e.iter().any(|e| e["note"] == "other-2 leads in term 7")));
    assert!(
        !other["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["note"].as_str().unwrap_or_default().contains("etcd-")),
        "each cluster has its own events"
    );

    // The page: the same, as a table, with its assets from the operator itself.
    let page = operator.get("/ui").await;
    assert_eq!(page.status(), 200);
    let header = |name: &str| page.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert!(header("content-security-policy").contains("default-src 'none'"));
    let html = page.text().await.expect("the page");
    for expected in [
        "<span class=\"ns\">ns/</span>etcd",
        "<span class=\"ns\">ns/</span>other",
        "<span class=\"phase phase-ok\">Running</span>",
        "<td data-label=\"Leader\">etcd-1</td>",
        "<td data-label=\"Leader\">other-2</td>",
        "<td data-label=\"Term\">4</td>",
        "<td data-label=\"Term\">7</td>",
        "<span class=\"reason\">LeaderElected</span> <span class=\"message\">etcd-1 leads in term 4</span>",
        "<span class=\"reason\">Bootstrap</span>",
        "<code>kubectl port-forward -n ns svc/other-client 2379:2379</code>",
        "2 clusters, as of",
    ] {
        assert!(html.contains(expected), "{expected} in\n{html}");
    }
    for (path, content_type) in
        [("/ui/assets/ui.js", "text/javascript; charset=utf-8"), ("/ui/assets/ui.css", "text/css; charset=utf-8")]
    {
        let asset = operator.get(path).await;
        assert_eq!(asset.status(), 200, "{path}");
        assert_eq!(asset.headers().get("content-type").and_then(|v| v.to_str().ok()), Some(content_type));
    }

    // The metrics: each cluster's last successful reconcile, since the operator started.
    let metrics = operator.get("/metrics").await.text().await.expect("metrics");
    for name in ["etcd", "other"] {
        let prefix = format!(
            "kuberaft_operator_reconcile_last_success_timestamp_seconds{{namespace=\"ns\",raftcluster=\"{name}\"}} "
        );
        let value: i64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} in\n{metrics}"));
        assert!(value >= started && value <= kuberaft::operator::builders::now_seconds(), "{value}");
    }
    assert!(!metrics.contains("kuberaft_operator_backup_last_failed{"), "no cluster has backups: {metrics}");

    // A cluster deleted: it leaves the page and the metrics (the watch tells the cache).
    api.remove(&cluster_path("other"));
    operator.until("other gone", |o| find(o, "other").is_null() && !find(o, "etcd").is_null()).await;
    let metrics = operator.get("/metrics").await.text().await.expect("metrics");
    assert!(!metrics.contains("raftcluster=\"other\""), "{metrics}");
    assert!(metrics.contains("raftcluster=\"etcd\""), "{metrics}");
    operator.stop().await;
}

//! Issue 19, part 7: what the operator costs the API server per managed cluster. The operator run
//! whole (`controller::run_on`) against the fake API server on a loopback port with many
//! RaftClusters whose members the fake members play: once every cluster runs, passes read their
//! owned objects from the watch-fed caches (`operator::cache`), so a steady-state pass makes no
//! API request at all.
//!
//! The fake API server runs in a process of its own (this test binary again, running the ignored
//! test [`fake_api_server_for_another_process`]), so that the resident memory of this process is
//! the operator's: its caches, book and passes, with the fake members and the test around them.
//!
//! `OPERATOR_CLUSTERS=N` (20 by default) sets the number of clusters; with 1,000 it is the
//! measurement of the issue: it prints the API requests per second in steady state and during a
//! change to every cluster, the operator's resident memory, and the reconcile latency p50 and
//! p99, from the operator's metrics.
//!
//! The members answer their status after 20 ms, so that passes overlap while the clusters form:
//! the operator runs at most `MAX_CONCURRENT_PASSES` passes and `MAX_STATUS_POLLS` status
//! requests at once, however many clusters it manages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::events::Reporter;
use kuberaft::base::histogram::Parsed;
use kuberaft::operator::reconcile::{self, Context};
use serde_json::Value;

use crate::fake_api::*;
use crate::scenarios::FakeMembers;
use crate::ui::{put_cluster, Operator};

fn clusters() -> usize {
    std::env::var("OPERATOR_CLUSTERS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(20)
}

fn names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("c{i:04}")).collect()
}

/// Where the child writes its address, and how many clusters it holds.
const ADDR_FILE: &str = "KUBERAFT_FAKE_API_ADDR_FILE";
const CHILD_CLUSTERS: &str = "KUBERAFT_FAKE_API_CLUSTERS";

/// The child's side: the fake API server with `CHILD_CLUSTERS` RaftClusters and their pods, served
/// until the parent goes (its parent process changes) or for an hour at most. Ignored: only
/// [`FakeApiProcess::start`] runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore = "the fake API server of the cost test, run in its own process by that test"]
async fn fake_api_server_for_another_process() {
    let (Ok(addr_file), Some(count)) =
        (std::env::var(ADDR_FILE), std::env::var(CHILD_CLUSTERS).ok().and_then(|v| v.parse::<usize>().ok()))
    else {
        panic!("started without {ADDR_FILE} and {CHILD_CLUSTERS}: this is the cost test's child")
    };
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let api = FakeApi::default();
    for name in names(count) {
        put_cluster(&api, &name);
    }
    let served = api.serve().await;
    let written = format!("{addr_file}.tmp");
    std::fs::write(&written, served.addr.to_string()).expect("write the address");
    std::fs::rename(&written, &addr_file).expect("publish the address");
    for _ in 0..3600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            break;
        }
    }
}

/// The fake API server in a child process, stopped (killed) when dropped.
struct FakeApiProcess {
    child: std::process::Child,
    addr: SocketAddr,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for FakeApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FakeApiProcess {
    async fn start(count: usize) -> FakeApiProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr_file = dir.path().join("addr");
        let child = std::process::Command::new(std::env::current_exe().expect("this test binary"))
            .args(["--ignored", "--exact", "cost::fake_api_server_for_another_process", "--test-threads=1", "-q"])
            .env(ADDR_FILE, &addr_file)
            .env(CHILD_CLUSTERS, count.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the fake API server's process");
        let http = crate::http_support::client().timeout(Duration::from_secs(60)).build().expect("http client");
        let mut process = FakeApiProcess { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), http, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                process.addr = text.trim().parse().expect("an address");
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("the fake API server's process ended: {status}");
            }
            assert!(Instant::now() < deadline, "the fake API server's process did not start within 120 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn inspect(&self, what: &str, query: &[(&str, &str)]) -> Value {
        // The values are object paths and numbers: nothing in them needs escaping.
        let query: Vec<String> = query.iter().map(|(key, value)| format!("{key}={value}")).collect();
        let url = format!("http://{}/fake/v1/{what}?{}", self.addr, query.join("&"));
        let answer = self.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        answer.json().await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    async fn object(&self, path: &str) -> Value {
        self.inspect("object", &[("path", path)]).await
    }

    async fn put(&self, path: &str, object: &Value) {
        let url = format!("http://{}/fake/v1/object?path={path}", self.addr);
        let body = serde_json::to_vec(object).expect("JSON");
        let answer = self.http.put(&url).body(body).send().await.expect("PUT");
        assert!(answer.status().is_success(), "PUT {path}: {}", answer.status());
    }

    async fn list(&self, collection: &str) -> Vec<Value> {
        let items = self.inspect("list", &[("collection", collection)]).await;
        items.as_array().cloned().unwrap_or_default()
    }

    /// How many calls the fake has answered, and those from the `from`th on.
    async fn history(&self, from: usize) -> (usize, Vec<Call>) {
        let answer = self.inspect("history", &[("from", &from.to_string())]).await;
        let calls = answer["calls"].as_array().cloned().unwrap_or_default();
        let calls = calls
            .iter()
            .map(|c| {
                let method = c[0].as_str().and_then(|m| m.parse().ok()).expect("a method");
                Call::new(method, c[1].as_str().expect("a path"))
            })
            .collect();
        (answer["length"].as_u64().expect("a length") as usize, calls)
    }

    fn resident_kib(&self) -> u64 {
        kuberaft::bench::observe::rss_kib(self.child.id())
    }
}

/// Requests by method and kind (`PATCH statefulsets`, `PATCH raftclusters/status`, `POST events`).
fn by_kind(calls: &[Call]) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for call in calls {
        let (path, status) = match call.path.strip_suffix("/status") {
            Some(path) => (path, "/status"),
            None => (call.path.as_str(), ""),
        };
        let collection = if call.method == http::Method::POST { path } else { collection_of(path) };
        let kind = collection.rsplit('/').next().unwrap_or_default();
        *kinds.entry(format!("{} {kind}{status}", call.method)).or_default() += 1;
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_passes_read_owned_objects_from_caches_and_make_no_api_request() {
    let count = clusters();
    let names = names(count);
    let resident_at_start = kuberaft::bench::observe::rss_kib(std::process::id());
    let api = FakeApiProcess::start(count).await;
    let members = Arc::new(FakeMembers::default());
    for name in &names {
        let member_names: Vec<String> = (0..3).map(|i| format!("{name}-{i}")).collect();
        let member_refs: Vec<&str> = member_names.iter().map(String::as_str).collect();
        members.add_cluster(name, &member_refs, &[], &member_names[0], 2, 10);
    }
    // Members answer slowly, so that passes overlap: the operator bounds how many run at once,
    // and how many status requests are in flight over all clusters.
    members.status_delay_ms.store(20, std::sync::atomic::Ordering::SeqCst);
    let client = client_of(api.addr);
    let reporter = Reporter { controller: "kuberaft-operator".to_string(), instance: Some("test".to_string()) };
    let ctx = Arc::new(Context::new(client.clone(), members.clone(), reporter));
    let started = Instant::now();
    let operator = Operator::start(client, ctx.clone()).await;
    // Every cluster formed: its status (as the fake API server holds it) says Running, with a leader.
    let form_deadline = Instant::now() + Duration::from_secs(60 + count as u64 / 5);
    let clusters_path = cluster_path("x");
    let clusters_path = collection_of(&clusters_path);
    loop {
        let running = api
            .list(clusters_path)
            .await
            .iter()
            .filter(|c| c["status"]["phase"] == "Running" && c["status"]["leader"].is_string())
            .count();
        if running == count {
            break;
        }
        assert!(Instant::now() < form_deadline, "{running} of {count} clusters running");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let formed = started.elapsed();

    // Steady state: every cluster passes again (each requeues after REQUEUE_STEADY), and the
    // API server hears nothing of it.
    let reconciles = |ctx: &Context| ctx.metrics.reconciles.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mark, before) = (api.history(usize::MAX).await.0, reconciles(&ctx));
    let metrics_before = operator.get("/metrics").await.text().await.expect("metrics");
    let window = Instant::now();
    let deadline = window + reconcile::REQUEUE_STEADY * 4;
    while reconciles(&ctx) < before + count as u64 {
        assert!(Instant::now() < deadline, "{} passes in {:?}", reconciles(&ctx) - before, window.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seconds = window.elapsed().as_secs_f64();
    let passes = reconciles(&ctx) - before;
    let (_, calls) = api.history(mark).await;
    let metrics_after = operator.get("/metrics").await.text().await.expect("metrics");
    let latency = |text: &str| Parsed::one(text, "kuberaft_operator_reconcile_seconds").unwrap_or_default();
    let run = latency(&metrics_after).since(&latency(&metrics_before));
    let ms = |v: Option<f64>| v.unwrap_or(0.0) * 1000.0;
    let resident_steady = kuberaft::bench::observe::rss_kib(std::process::id());
    eprintln!(
        "{count} clusters formed in {:.1} s; steady state: {passes} passes in {seconds:.1} s, {} API requests \
         ({:.2}/s), reconcile p50 {:.2} ms p99 {:.2} ms; resident memory of the operator's process {} MiB \
         ({} MiB before it started), of the fake API server's {} MiB",
        formed.as_secs_f64(),
        calls.len(),
        calls.len() as f64 / seconds,
        ms(run.quantile(0.5)),
        ms(run.quantile(0.99)),
        resident_steady / 1024,
        resident_at_start / 1024,
        api.resident_kib() / 1024
    );
    assert!(passes >= count as u64);
    assert_eq!(calls, Vec::<Call>::new(), "a steady pass asks the API server nothing");

    // The bounds held while every cluster formed at once.
    let most_passes = ctx.metrics.most_passes_running.load(std::sync::atomic::Ordering::Relaxed);
    let most_polls = members.most_statuses_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!(
        "at most {most_passes} passes ran at once (bound {}), and {most_polls} member status requests were in \
         flight at once (bound {})",
        reconcile::MAX_CONCURRENT_PASSES,
        reconcile::MAX_STATUS_POLLS
    );
    assert!(most_passes <= u64::from(reconcile::MAX_CONCURRENT_PASSES), "{most_passes} passes at once");
    assert!(most_polls <= reconcile::MAX_STATUS_POLLS as u64, "{most_polls} status requests at once");
    if count * 3 > reconcile::MAX_STATUS_POLLS {
        assert!(most_polls > 1, "passes overlapped (else the bound was not tried)");
    }

    // A change to every cluster at once (a new image: a rolling restart): what it asks of the API
    // server until every StatefulSet has it.
    let (mark, _) = api.history(usize::MAX).await;
    let window = Instant::now();
    for name in &names {
        let mut cluster = api.object(&cluster_path(name)).await;
        cluster["spec"]["image"] = serde_json::json!("kuberaft:next");
        cluster["metadata"]["generation"] = serde_json::json!(2);
        api.put(&cluster_path(name), &cluster).await;
    }
    let sts_collection = sts_path("x");
    let sts_collection = collection_of(&sts_collection);
    let change_deadline = Instant::now() + Duration::from_secs(60 + count as u64 / 5);
    let mut resident_most = resident_steady;
    loop {
        let changed = api
            .list(sts_collection)
            .await
            .iter()
            .filter(|sts| sts["spec"]["template"]["spec"]["containers"][0]["image"] == "kuberaft:next")
            .count();
        resident_most = resident_most.max(kuberaft::bench::observe::rss_kib(std::process::id()));
        if changed == count {
            break;
        }
        assert!(Instant::now() < change_deadline, "{changed} of {count} StatefulSets changed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seconds = window.elapsed().as_secs_f64();
    let (_, calls) = api.history(mark).await;
    let gets = calls.iter().filter(|c| c.method == http::Method::GET).count();
    eprintln!(
        "a change to every cluster: every StatefulSet changed in {seconds:.1} s with {} API requests ({:.1} per \
         cluster, {:.1}/s, {gets} of them GETs): {:?}; the operator's process at most {} MiB resident meanwhile",
        calls.len(),
        calls.len() as f64 / count as f64,
        calls.len() as f64 / seconds,
        by_kind(&calls),
        resident_most / 1024
    );
    assert_eq!(gets, 0, "the change is read from the caches");
    tokio::time::sleep(Duration::from_secs(5)).await;
    eprintln!(
        "5 s later, the operator's process holds {} MiB",
        kuberaft::bench::observe::rss_kib(std::process::id()) / 1024
    );
    operator.stop().await;
}

//! Issue 19, part 7: what the operator costs the API server per managed cluster. The operator run
//! whole (`controller::run_on`) against the fake API server on a loopback port with many
//! RaftClusters whose members the fake members play: once every cluster runs, passes read their
//! owned objects from the watch-fed caches (`operator::cache`), so a steady-state pass makes no
//! API request at all.
//!
//! `OPERATOR_CLUSTERS=N` (20 by default) sets the number of clusters; with 1,000 it is the
//! measurement of the issue: it prints the API requests per second in steady state, the
//! process's resident memory (the fake API server and the fake members included, so an upper
//! bound of the operator's) and the reconcile latency p50 and p99, from the operator's metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::events::Reporter;
use kuberaft::base::histogram::Parsed;
use kuberaft::operator::reconcile::Context;

use crate::fake_api::*;
use crate::scenarios::FakeMembers;
use crate::ui::{put_cluster, Operator};

fn clusters() -> usize {
    std::env::var("OPERATOR_CLUSTERS").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(20)
}

fn resident_kib() -> u64 {
    kuberaft::bench::observe::rss_kib(std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_passes_read_owned_objects_from_caches_and_make_no_api_request() {
    let count = clusters();
    let names: Vec<String> = (0..count).map(|i| format!("c{i:04}")).collect();
    let api = FakeApi::default();
    let members = Arc::new(FakeMembers::default());
    for name in &names {
        put_cluster(&api, name);
        let member_names: Vec<String> = (0..3).map(|i| format!("{name}-{i}")).collect();
        let member_refs: Vec<&str> = member_names.iter().map(String::as_str).collect();
        members.add_cluster(name, &member_refs, &[], &member_names[0], 2, 10);
    }
    let served = api.serve().await;
    let client = served.client();
    let reporter = Reporter { controller: "kuberaft-operator".to_string(), instance: Some("test".to_string()) };
    let ctx = Arc::new(Context::new(client.clone(), members.clone(), reporter));
    let started = Instant::now();
    let operator = Operator::start(client, ctx.clone()).await;
    // Every cluster formed: its status (as the fake API server holds it) says Running, with a leader.
    let form_deadline = Instant::now() + Duration::from_secs(60 + count as u64 / 5);
    loop {
        let running = names
            .iter()
            .filter(|name| {
                api.get(&cluster_path(name))
                    .is_some_and(|c| c["status"]["phase"] == "Running" && c["status"]["leader"].is_string())
            })
            .count();
        if running == count {
            break;
        }
        assert!(Instant::now() < form_deadline, "{running} of {count} clusters running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let formed = started.elapsed();

    // Steady state: every cluster passes again (each requeues after REQUEUE_STEADY), and the
    // API server hears nothing of it.
    let reconciles = |ctx: &Context| ctx.metrics.reconciles.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mark, before) = (api.lock().history.len(), reconciles(&ctx));
    let metrics_before = operator.get("/metrics").await.text().await.expect("metrics");
    let window = Instant::now();
    let deadline = window + kuberaft::operator::reconcile::REQUEUE_STEADY * 4;
    while reconciles(&ctx) < before + count as u64 {
        assert!(Instant::now() < deadline, "{} passes in {:?}", reconciles(&ctx) - before, window.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seconds = window.elapsed().as_secs_f64();
    let passes = reconciles(&ctx) - before;
    let calls: Vec<Call> = api.lock().history[mark..].to_vec();
    let metrics_after = operator.get("/metrics").await.text().await.expect("metrics");
    let latency = |text: &str| Parsed::one(text, "kuberaft_operator_reconcile_seconds").unwrap_or_default();
    let run = latency(&metrics_after).since(&latency(&metrics_before));
    let ms = |v: Option<f64>| v.unwrap_or(0.0) * 1000.0;
    eprintln!(
        "{count} clusters formed in {:.1} s; steady state: {passes} passes in {seconds:.1} s, {} API requests \
         ({:.2}/s), reconcile p50 {:.2} ms p99 {:.2} ms, resident memory of the test process {} MiB",
        formed.as_secs_f64(),
        calls.len(),
        calls.len() as f64 / seconds,
        ms(run.quantile(0.5)),
        ms(run.quantile(0.99)),
        resident_kib() / 1024
    );
    assert!(passes >= count as u64);
    assert_eq!(calls, Vec::<Call>::new(), "a steady pass asks the API server nothing");
    operator.stop().await;
}

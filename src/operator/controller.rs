//! `kuberaft operator`: the controller process. It watches `RaftCluster`s (all namespaces, or the
//! ones `--namespace` names) and the objects they own, and runs [`reconcile`] for each; it serves
//! Prometheus metrics and health on `--metrics-addr`; with `--leader-elect` only the holder of a
//! Lease reconciles, so that two replicas of the operator are safe; SIGTERM stops it cleanly
//! (reconciles in flight finish, the Lease is released).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::{reflector, watcher, PredicateConfig, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use super::builders::OperatorPeer;
use super::crd::snapshot::RaftSnapshot;
use super::crd::RaftCluster;
use super::reconcile::{self, Context, HttpMembers, ReconcileError, FIELD_MANAGER};
use crate::base::logging::LogFormat;

#[derive(Clone, Debug, Args)]
pub struct OperatorArgs {
    /// Watch only these namespaces (repeat or comma-separate); all namespaces when not given.
    #[arg(long = "namespace", env = "KUBERAFT_WATCH_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Where `/metrics`, `/healthz`, `/readyz` and the page `/ui` are served.
    #[arg(long, env = "KUBERAFT_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Reconcile only while holding the Lease, so that several replicas are safe.
    #[arg(long, env = "KUBERAFT_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// The Lease's name.
    #[arg(long, env = "KUBERAFT_LEASE_NAME", default_value = "kuberaft-operator")]
    pub lease_name: String,
    /// The Lease's namespace (the operator's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease and in events (its pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The labels of the operator's pods, `k=v,k2=v2` (the chart passes its selector labels):
    /// the members' NetworkPolicy lets these pods, in the operator's namespace, reach them.
    #[arg(
        long,
        env = "KUBERAFT_OPERATOR_POD_LABELS",
        default_value = "app.kubernetes.io/name=kuberaft,app.kubernetes.io/component=operator"
    )]
    pub operator_pod_labels: String,
    #[arg(long, env = "KUBERAFT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[arg(long, env = "KUBERAFT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// `k=v,k2=v2` as labels; a pair without `=` is refused.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(format!("--operator-pod-labels: '{pair}' is not key=value")),
        })
        .collect()
}

/// How long a Lease holds without renewal, and how often the holder renews it.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const LEASE_RENEW: Duration = Duration::from_secs(5);

/// Runs the operator until SIGTERM/SIGINT. Blocking; builds its own runtime.
pub fn run(args: OperatorArgs) -> ExitCode {
    crate::base::logging::init_logging(args.log_format, &args.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(operate(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn operate(args: OperatorArgs) -> Result<(), String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API (in-cluster config or kubeconfig): {e}"))?;
    let identity = args.identity.clone().unwrap_or_else(|| format!("kuberaft-operator-{}", std::process::id()));
    let reporter = Reporter { controller: FIELD_MANAGER.to_string(), instance: Some(identity.clone()) };
    let operator =
        OperatorPeer { namespace: args.lease_namespace.clone(), pod_labels: parse_labels(&args.operator_pod_labels)? };
    let ctx =
        Arc::new(Context::new(client.clone(), Arc::new(HttpMembers::default()), reporter).with_operator(operator));

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::base::signal::wait_for_signal().await;
        tracing::info!("stopping: reconciles in flight finish first");
        let _ = stop_tx.send(true);
    });
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|e| format!("cannot listen on --metrics-addr {}: {e}", args.metrics_addr))?;
    run_on(client, ctx, &args, listener, stop_rx).await
}

/// The operator on `client` with `ctx`, serving `/metrics`, the probes and `/ui` on `listener`,
/// until `stop` turns true (or the lease is lost: an error). What `kuberaft operator` runs once
/// it has a client and a listener; tests run it against a fake API server.
pub async fn run_on(
    client: Client,
    ctx: Arc<Context>,
    args: &OperatorArgs,
    listener: tokio::net::TcpListener,
    stop_rx: watch::Receiver<bool>,
) -> Result<(), String> {
    let identity = args.identity.clone().unwrap_or_else(|| format!("kuberaft-operator-{}", std::process::id()));
    let leading = Arc::new(AtomicBool::new(!args.leader_elect));
    let router = metrics_router(ctx.clone(), leading.clone());
    let mut metrics_stop = stop_rx.clone();
    tokio::spawn(async move {
        let stopped = async move {
            let _ = metrics_stop.wait_for(|stop| *stop).await;
        };
        if let Err(err) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
            tracing::error!("metrics server: {err}");
        }
    });

    if args.leader_elect {
        let lease = LeaseLock::new(client.clone(), &args.lease_namespace, &args.lease_name, &identity);
        let mut stop = stop_rx.clone();
        loop {
            match lease.try_acquire().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(err) => tracing::warn!("lease {}: {err}", args.lease_name),
            }
            tokio::select! {
                _ = tokio::time::sleep(LEASE_RENEW) => {}
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
            }
        }
        tracing::info!(identity, "leading: holding lease {}/{}", args.lease_namespace, args.lease_name);
        leading.store(true, Ordering::Relaxed);
        let (lost_tx, lost_rx) = watch::channel(false);
        let renewing = lease.clone();
        let mut renew_stop = stop_rx.clone();
        let renewer = tokio::spawn(async move {
            let mut last_renewed = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(LEASE_RENEW) => {}
                    _ = renew_stop.wait_for(|stop| *stop) => return,
                }
                match renewing.try_acquire().await {
                    Ok(true) => last_renewed = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("lost the lease to another replica; stopping");
                        let _ = lost_tx.send(true);
                        return;
                    }
                    Err(err) if last_renewed.elapsed() >= LEASE_DURATION => {
                        tracing::error!("cannot renew the lease ({err}); it has expired, stopping");
                        let _ = lost_tx.send(true);
                        return;
                    }
                    Err(err) => tracing::warn!("cannot renew the lease: {err}"),
                }
            }
        });
        let lost = run_controller(client, ctx, &args.namespaces, stop_rx.clone(), lost_rx).await;
        renewer.abort();
        if lost {
            return Err("lost the lease".to_string());
        }
        if let Err(err) = lease.release().await {
            tracing::warn!("cannot release the lease: {err}");
        }
        return Ok(());
    }
    let (_never_tx, never_rx) = watch::channel(false);
    run_controller(client, ctx, &args.namespaces, stop_rx, never_rx).await;
    Ok(())
}

/// Runs controllers until a stop (false) or the lease is lost (true).
async fn run_controller(
    client: Client,
    ctx: Arc<Context>,
    namespaces: &[String],
    stop: watch::Receiver<bool>,
    lost: watch::Receiver<bool>,
) -> bool {
    let scopes: Vec<Option<String>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.iter().cloned().map(Some).collect() };
    let controllers = scopes.into_iter().map(|namespace| {
        let api = |client: Client| -> Api<RaftCluster> {
            match &namespace {
                Some(ns) => Api::namespaced(client, ns),
                None => Api::all(client),
            }
        };
        let (reader, writer) = reflector::store();
        // `/metrics` and `/ui` show the clusters of this cache.
        ctx.book.watch(reader.clone());
        // Status writes do not wake the controller: only spec changes (the generation) and the
        // annotations that ask for something (`wakes`) do.
        let clusters = reflector(writer, watcher(api(client.clone()), watcher::Config::default()))
            .applied_objects()
            .predicate_filter(wakes, PredicateConfig::default())
            .boxed();
        let owned_config = watcher::Config::default().labels(&format!(
            "{}={}",
            super::builders::LABEL_MANAGED_BY,
            super::builders::MANAGED_BY
        ));
        let (c, ns) = (client.clone(), namespace.clone());
        let snapshots = Controller::new(scoped::<RaftSnapshot>(&c, &ns), watcher::Config::default())
            .graceful_shutdown_on(stopped(stop.clone(), lost.clone()))
            .run(super::backup::snapshot::reconcile, super::backup::snapshot::error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(err) = result {
                    tracing::debug!("snapshot controller: {err}");
                }
            });
        // The owned objects wake the controller as before, and their watches also fill the
        // stores that passes read (`cache`), so that a pass asks the API server for nothing.
        let (sts_store, sts_writer) = reflector::store();
        let (cm_store, cm_writer) = reflector::store();
        let (svc_store, svc_writer) = reflector::store();
        let (pdb_store, pdb_writer) = reflector::store();
        let (np_store, np_writer) = reflector::store();
        let (pod_store, pod_writer) = reflector::store();
        let (secret_store, secret_writer) = reflector::store();
        let stores = super::cache::Stores {
            stateful_sets: sts_store,
            config_maps: cm_store,
            services: svc_store,
            budgets: pdb_store,
            network_policies: np_store,
            pods: pod_store,
            secrets: secret_store,
            ready: Arc::default(),
        };
        ctx.caches.register(ns.clone(), stores.clone());
        let members_config = watcher::Config::default().labels(&format!(
            "{}={},{}={}",
            super::builders::LABEL_NAME,
            super::builders::APP_NAME,
            super::builders::LABEL_COMPONENT,
            super::builders::COMPONENT_MEMBER
        ));
        // Pods and Secrets are owned by the StatefulSet or not watched for triggers: their
        // reflectors only fill the stores, polled beside the controller.
        let pods = reflector(pod_writer, watcher(scoped::<Pod>(&c, &ns), members_config)).touched_objects();
        let secrets =
            reflector(secret_writer, watcher(scoped::<Secret>(&c, &ns), owned_config.clone())).touched_objects();
        let fill = futures::stream::select(pods.map(|_| ()), secrets.map(|_| ())).for_each(|_| async {});
        let ready = {
            let stores = stores.clone();
            async move { stores.wait_until_ready().await }
        };
        let clusters = Controller::for_stream(clusters, reader)
            .owns_stream(
                reflector(sts_writer, watcher(scoped::<StatefulSet>(&c, &ns), owned_config.clone())).touched_objects(),
            )
            .owns_stream(
                reflector(cm_writer, watcher(scoped::<ConfigMap>(&c, &ns), owned_config.clone())).touched_objects(),
            )
            .owns_stream(
                reflector(svc_writer, watcher(scoped::<Service>(&c, &ns), owned_config.clone())).touched_objects(),
            )
            .owns_stream(
                reflector(pdb_writer, watcher(scoped::<PodDisruptionBudget>(&c, &ns), owned_config.clone()))
                    .touched_objects(),
            )
            .owns_stream(
                reflector(np_writer, watcher(scoped::<NetworkPolicy>(&c, &ns), owned_config.clone())).touched_objects(),
            )
            .with_config(kube::runtime::controller::Config::default().concurrency(reconcile::MAX_CONCURRENT_PASSES))
            .graceful_shutdown_on(stopped(stop.clone(), lost.clone()))
            .run(reconcile::reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(err) = result {
                    tracing::debug!("controller: {err}");
                }
            });
        async move {
            // The stores are filled for as long as the controller runs.
            let filling = futures::future::join(fill, ready);
            let controllers = futures::future::join(clusters, snapshots);
            futures::pin_mut!(filling, controllers);
            futures::future::select(controllers, filling).await;
        }
    });
    futures::future::join_all(controllers).await;
    ctx.caches.clear();
    *lost.borrow()
}

/// Resolves on a stop or when the lease is lost.
async fn stopped(mut stop: watch::Receiver<bool>, mut lost: watch::Receiver<bool>) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = lost.wait_for(|l| *l) => {}
    }
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn error_policy(cluster: Arc<RaftCluster>, _err: &ReconcileError, ctx: Arc<Context>) -> Action {
    Action::requeue(reconcile::backoff(&cluster, &ctx))
}

fn metrics_router(ctx: Arc<Context>, leading: Arc<AtomicBool>) -> axum::Router {
    use axum::routing::get;
    let metrics_ctx = ctx.clone();
    let metrics_leading = leading.clone();
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let text = render_metrics(&metrics_ctx, metrics_leading.load(Ordering::Relaxed));
                async move { ([("content-type", "text/plain; version=0.0.4")], text) }
            }),
        )
        .merge(super::ui::router(ctx, leading))
}

/// The operator's metrics in the Prometheus text format.
pub fn render_metrics(ctx: &Context, leading: bool) -> String {
    use std::fmt::Write;
    let m = &ctx.metrics;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    };
    counter("kuberaft_operator_reconciles_total", "Reconciles run.", m.reconciles.load(Ordering::Relaxed));
    counter(
        "kuberaft_operator_reconcile_errors_total",
        "Reconciles that failed.",
        m.reconcile_errors.load(Ordering::Relaxed),
    );
    counter("kuberaft_operator_object_writes_total", "Owned objects applied.", m.object_writes.load(Ordering::Relaxed));
    counter("kuberaft_operator_status_writes_total", "Status updates.", m.status_writes.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP kuberaft_operator_steps_total Membership and scaling steps taken, by kind.");
    let _ = writeln!(out, "# TYPE kuberaft_operator_steps_total counter");
    if let Ok(steps) = m.steps.lock() {
        for (kind, count) in steps.iter() {
            let _ = writeln!(out, "kuberaft_operator_steps_total{{step=\"{kind}\"}} {count}");
        }
    }
    let _ = writeln!(out, "# HELP kuberaft_operator_reconcile_seconds Time spent in reconciles.");
    let _ = writeln!(out, "# TYPE kuberaft_operator_reconcile_seconds histogram");
    m.reconcile_time.render(&mut out, "kuberaft_operator_reconcile_seconds", "");
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    gauge(
        "kuberaft_operator_reconciles_running",
        &format!("Reconciles running now (at most {} at once).", reconcile::MAX_CONCURRENT_PASSES),
        m.passes_running.load(Ordering::Relaxed),
    );
    gauge(
        "kuberaft_operator_member_status_requests_running",
        &format!("Member status requests in flight now, over all clusters (at most {}).", reconcile::MAX_STATUS_POLLS),
        // The permits taken are the requests in flight.
        (reconcile::MAX_STATUS_POLLS - ctx.status_polls.available_permits()) as u64,
    );
    let _ = writeln!(out, "# HELP kuberaft_operator_leading Whether this replica holds the lease and reconciles.");
    let _ = writeln!(out, "# TYPE kuberaft_operator_leading gauge\nkuberaft_operator_leading {}", u8::from(leading));
    out.push_str(&super::book::render_cluster_metrics(&ctx.book.tracked()));
    out
}

/// Leader election through a `coordination.k8s.io` Lease: take it when it is free or expired,
/// renew it while holding it; optimistic concurrency (the resourceVersion) settles races.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> LeaseLock {
        LeaseLock { api: Api::namespaced(client, namespace), name: name.to_string(), identity: identity.to_string() }
    }

    /// Takes or renews the lease; false when another holder's lease is still valid.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(now, 0, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_by_me = holder == self.identity;
        if !held_by_me && !holder.is_empty() && !expired(&spec, now) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!held_by_me);
        let acquired = if held_by_me { spec.acquire_time.map(|t| t.0).unwrap_or(now) } else { now };
        lease.spec = Some(self.spec(now, transitions, acquired));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Gives the lease up, so that another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        lease.spec = Some(spec);
        self.api.replace(&self.name, &PostParams::default(), &lease).await.map(drop)
    }

    fn spec(&self, now: Timestamp, transitions: i32, acquired: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref() else { return true };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    // An end past the last representable instant (a huge duration from the API) never comes.
    renewed.0.checked_add(duration).is_ok_and(|end| end < now)
}

/// What of a `RaftCluster` wakes the controller: its generation (a spec change) and the
/// annotations that ask for a rolling restart or a quorum-loss recovery (annotations do not move
/// the generation). Anything else, its status above all, waits for the next requeue.
pub fn wakes(cluster: &RaftCluster) -> Option<u64> {
    let annotations = cluster.annotations();
    let asked = [super::builders::RESTART_ANNOTATION, super::builders::RECOVER_QUORUM_ANNOTATION]
        .map(|key| annotations.get(key).map(String::as_bytes).unwrap_or_default());
    let generation = cluster.metadata.generation.unwrap_or(0).to_le_bytes();
    Some(crate::base::ids::fnv1a(&[&generation, asked[0], b"\0", asked[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn render_metrics_adds_each_clusters_gauges_after_the_operators_own() {
        let (service, _handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = Client::new(service, "ns");
        let reporter = Reporter { controller: FIELD_MANAGER.to_string(), instance: None };
        let ctx = Context::new(client, Arc::new(HttpMembers::default()), reporter);
        let spec = serde_json::from_value(serde_json::json!({})).expect("the default spec");
        let mut cluster = RaftCluster::new("etcd", spec);
        cluster.metadata.namespace = Some("prod".to_string());
        ctx.book.reconciled(&cluster, 1_700_000_000);
        ctx.book.certificates(&cluster, BTreeMap::from([("etcd-ca".to_string(), 2_000_000_000)]));
        let text = render_metrics(&ctx, false);
        let lines: Vec<&str> = text.lines().collect();
        let at = |line: &str| lines.iter().position(|l| *l == line).unwrap_or_else(|| panic!("{line} in\n{text}"));
        let leading = at("kuberaft_operator_leading 0");
        let reconciled = at(
            "kuberaft_operator_reconcile_last_success_timestamp_seconds{namespace=\"prod\",raftcluster=\"etcd\"} 1700000000",
        );
        let expiry = at(
            "kuberaft_operator_certificate_expiry_timestamp_seconds{namespace=\"prod\",raftcluster=\"etcd\",secret=\"etcd-ca\"} 2000000000",
        );
        assert!(leading < reconciled && reconciled < expiry);
        assert!(text.contains("# TYPE kuberaft_operator_backup_last_failed gauge\n"));
        assert!(!text.contains("kuberaft_operator_backup_last_failed{"), "no backups configured");
        // Every sample belongs to a family declared before it.
        for line in lines.iter().filter(|l| !l.starts_with('#')) {
            let family = line.split(['{', ' ']).next().unwrap_or_default();
            let family = family.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }

    #[test]
    fn operator_pod_labels_are_key_value_pairs() {
        let labels = parse_labels("a=1, b = 2,").expect("parses");
        assert_eq!(labels, BTreeMap::from([("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())]));
        assert!(parse_labels("a").is_err());
        assert!(parse_labels("=1").is_err());
    }

    #[test]
    fn a_spec_change_or_a_request_annotation_wakes_the_controller_and_a_status_or_other_annotation_does_not() {
        let spec = serde_json::from_value(serde_json::json!({})).expect("the default spec");
        let mut cluster = RaftCluster::new("etcd", spec);
        cluster.metadata.generation = Some(1);
        let before = wakes(&cluster);
        let mut changed = cluster.clone();
        changed.status = Some(Default::default());
        changed.metadata.annotations = Some(BTreeMap::from([("example.com/note".to_string(), "x".to_string())]));
        assert_eq!(wakes(&changed), before, "a status, another annotation");
        let mut newer = cluster.clone();
        newer.metadata.generation = Some(2);
        assert_ne!(wakes(&newer), before, "a spec change");
        for key in [super::super::builders::RESTART_ANNOTATION, super::super::builders::RECOVER_QUORUM_ANNOTATION] {
            let mut asked = cluster.clone();
            asked.metadata.annotations = Some(BTreeMap::from([(key.to_string(), "1".to_string())]));
            assert_ne!(wakes(&asked), before, "{key}");
        }
    }
}

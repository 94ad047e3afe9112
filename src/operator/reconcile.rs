//! One reconcile of one `RaftCluster`: observe (the owned objects, the pods, each member's
//! `/v1/status`), ask the [`planner`](super::planner) for the one next step, take it, and write the
//! status. It never blocks on the cluster: a step is one API write or one member API call, and the
//! controller comes back soon to observe its effect.
//!
//! The Kubernetes side goes through a `kube::Client` (a mocked one in tests); the member side
//! through [`MemberApi`], so that both can be replaced in tests. Writes are server-side apply under
//! one field manager. Each owned object carries the hash of what the builders made of it, so an
//! unchanged cluster costs reads only: no write, no status patch, no event.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::builders::{self, BuildError};
use super::crd::{MemberStatus as StatusMember, RaftCluster, RaftClusterStatus};
use super::planner::{self, ClusterHealth, EndpointList, Observed, Phase, Plan, PodObservation, WaitReason};
use super::{auth, backup, book, cache, certs, recovery};
use super::{member_name, member_ordinal};
use crate::base::ids::fnv1a;
use crate::base::wire::{parse_id, AddMemberRequest, Status};
use crate::base::wire::{UserAddRequest, UserGrantRoleRequest, UserPasswordRequest};
use crate::client::{Client as MemberClient, ClientConfig, ClientError, Credentials, InlineTls};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "kuberaft-operator";
/// The annotation holding the hash of what the builders made of an owned object.
pub const HASH_ANNOTATION: &str = "kuberaft.io/applied-hash";
/// How soon to look again while the cluster moves toward its spec (or waits on something that
/// will pass), and when everything is done (to keep the status's leader and term fresh).
pub const REQUEUE_PROGRESSING: Duration = Duration::from_secs(2);
pub const REQUEUE_STEADY: Duration = Duration::from_secs(15);
/// Backoff after failed reconciles: doubling from the first to the last.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

pub const CONDITION_AVAILABLE: &str = "Available";
pub const CONDITION_PROGRESSING: &str = "Progressing";
pub const CONDITION_DEGRADED: &str = "Degraded";
pub const CONDITION_MEMBERSHIP_CONSISTENT: &str = "MembershipConsistent";

/// Why a reconcile failed; the controller backs off and tries again.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Build(#[from] BuildError),
    #[error("member API: {0}")]
    Member(String),
    #[error("encode: {0}")]
    Encode(String),
    #[error("certificates: {0}")]
    Certificates(String),
    #[error("auth: {0}")]
    Auth(String),
    /// `spec.bootstrap.restore.snapshot` names a RaftSnapshot that has no file (yet).
    #[error("{0}")]
    RestoreSource(String),
}

impl ReconcileError {
    /// A CamelCase name for metrics and events.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "KubernetesApiError",
            ReconcileError::Build(_) => "BuildError",
            ReconcileError::Member(_) => "MemberApiError",
            ReconcileError::Encode(_) => "EncodeError",
            ReconcileError::Certificates(_) => "CertificateError",
            ReconcileError::Auth(_) => "AuthError",
            ReconcileError::RestoreSource(_) => "RestoreSourceNotReady",
        }
    }
}

/// A membership change, sent to the leader (any member forwards it there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    AddLearner(AddMemberRequest),
    Promote(u64),
    Remove(u64),
    TransferLeader(u64),
    /// Turn auth on: user root with the password of [`Access::root`], the root role, enable.
    EnableAuth,
    /// Turn auth off (as root).
    DisableAuth,
}

/// How the operator reaches one cluster's members: with `spec.tls`, the CA their certificates
/// chain to and the operator's own client certificate (from the Secret `<name>-operator-tls`);
/// while it manages auth, root's credentials (from `spec.auth`'s Secret).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub tls: Option<Arc<InlineTls>>,
    pub root: Option<Credentials>,
}

/// How the operator talks to members: their `/v1/status`, and membership changes.
pub trait MemberApi: Send + Sync {
    /// The status of the member at this client URL (no failover: the answer is about it).
    fn status(&self, access: Access, url: String) -> BoxFuture<'_, Result<Status, String>>;
    /// Sends a change through `urls` (the leader's first).
    fn change(&self, access: Access, urls: Vec<String>, change: MemberChange) -> BoxFuture<'_, Result<(), String>>;
    /// A snapshot of the member at this client URL (`GET /v1/snapshot`), for a backup.
    fn snapshot(&self, access: Access, url: String) -> BoxFuture<'_, Result<backup::Incoming, String>>;
}

/// How soon a cluster waiting for its restore's RaftSnapshot looks again.
const REQUEUE_RESTORE_SOURCE: Duration = Duration::from_secs(10);
/// The longest wait for a member's next snapshot bytes.
const SNAPSHOT_STALL: Duration = Duration::from_secs(30);

/// [`MemberApi`] over HTTP, with the client of `kuberaft kv`.
#[derive(Clone, Debug, Default)]
pub struct HttpMembers {
    /// Host names answered from this table instead of DNS (tests map pod names to loopback).
    pub resolve: Vec<(String, SocketAddr)>,
}

impl HttpMembers {
    fn client(&self, access: Access, urls: Vec<String>, timeout: Duration) -> Result<MemberClient, String> {
        let mut config = ClientConfig::with_request_timeout(timeout);
        config.resolve = self.resolve.clone();
        config.tls.inline = access.tls;
        config.user = access.root;
        MemberClient::with_config(urls, config).map_err(|e| e.to_string())
    }
}

/// Turns auth on as `etcdctl user add root && etcdctl auth enable` does: root with `password`
/// (a root left from an earlier attempt gets it too: auth is still off, and the Secret is the
/// truth), the root role, then enable.
async fn enable_auth(client: &MemberClient, password: &str) -> Result<(), ClientError> {
    let name = super::auth::ROOT.to_string();
    let add = UserAddRequest { name: name.clone(), password: password.to_string(), no_password: false };
    match client.user_add(&add).await {
        Ok(()) => {}
        Err(ClientError::Api { message, .. }) if message == "etcdserver: user name already exists" => {
            let change = UserPasswordRequest { name: name.clone(), password: password.to_string() };
            client.user_change_password(&change).await?;
        }
        Err(e) => return Err(e),
    }
    client.user_grant_role(&UserGrantRoleRequest { user: name.clone(), role: name }).await?;
    client.auth_enable().await
}

impl MemberApi for HttpMembers {
    fn status(&self, access: Access, url: String) -> BoxFuture<'_, Result<Status, String>> {
        Box::pin(async move {
            let client = self.client(access, vec![url.clone()], Duration::from_secs(1))?;
            client.status_of(&url).await.map_err(|e| e.to_string())
        })
    }

    fn change(&self, access: Access, urls: Vec<String>, change: MemberChange) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let password = access.root.as_ref().map(|root| root.password.clone());
            let client = self.client(access, urls, Duration::from_secs(5))?;
            let result = match &change {
                MemberChange::AddLearner(request) => client.add_member(request).await.map(drop),
                MemberChange::Promote(id) => client.promote(*id).await,
                MemberChange::Remove(id) => client.remove_member(*id).await,
                MemberChange::TransferLeader(id) => client.transfer_leader(Some(*id)).await.map(drop),
                MemberChange::EnableAuth => match password {
                    Some(password) => enable_auth(&client, &password).await,
                    None => return Err("root's password is not known".to_string()),
                },
                MemberChange::DisableAuth => client.auth_disable().await,
            };
            result.map_err(|e| e.to_string())
        })
    }

    fn snapshot(&self, access: Access, url: String) -> BoxFuture<'_, Result<backup::Incoming, String>> {
        Box::pin(async move {
            let client = self.client(access, vec![url.clone()], SNAPSHOT_STALL)?;
            let snapshot = client.snapshot(&url).await.map_err(|e| e.to_string())?;
            Ok(backup::Incoming::from(snapshot))
        })
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub reconciles: std::sync::atomic::AtomicU64,
    pub reconcile_errors: std::sync::atomic::AtomicU64,
    pub status_writes: std::sync::atomic::AtomicU64,
    pub object_writes: std::sync::atomic::AtomicU64,
    /// Steps taken, by kind.
    pub steps: Mutex<BTreeMap<&'static str, u64>>,
    /// How long reconciles take (`kuberaft_operator_reconcile_seconds`, a histogram).
    pub reconcile_time: crate::base::histogram::Histogram,
    /// Passes running now, and the most that ever ran at once (at most
    /// [`MAX_CONCURRENT_PASSES`]).
    pub passes_running: std::sync::atomic::AtomicU64,
    pub most_passes_running: std::sync::atomic::AtomicU64,
}

/// At most this many cluster passes run at once (the controller's concurrency). With hundreds of
/// clusters, the operator's start or a change to all of them queues passes instead of running
/// them all at once: that bounds the operator's memory and its burst of API requests.
pub const MAX_CONCURRENT_PASSES: u16 = 16;

/// At most this many member status requests are in flight, over all clusters. A pass asks each of
/// its members at once (each answer within a second, `HttpMembers::status`), so one cluster's pass
/// is bounded in time; this bounds what all passes together ask of the network. 32 lets two
/// passes of the largest clusters (9 members) ask at once with room to spare; with every member of
/// 1,000 three-member clusters cut off (each ask waiting its full second), a round of asks takes
/// about 3,000 / 32 ≈ 94 s, so their statuses are older than the 15 s of a steady requeue.
pub const MAX_STATUS_POLLS: usize = 32;

/// Counts one running thing in `now` (and its highest in `most`) while it lives.
pub struct Running<'a> {
    now: &'a std::sync::atomic::AtomicU64,
}

impl<'a> Running<'a> {
    pub fn start(now: &'a std::sync::atomic::AtomicU64, most: Option<&std::sync::atomic::AtomicU64>) -> Running<'a> {
        let running = now.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(most) = most {
            most.fetch_max(running, std::sync::atomic::Ordering::Relaxed);
        }
        Running { now }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.now.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub members: Arc<dyn MemberApi>,
    /// One recorder, so that repeated events are counted as a series rather than stored again.
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per cluster (namespace/name), for the backoff.
    pub failures: Mutex<BTreeMap<String, u32>>,
    /// Where the operator runs, for the members' NetworkPolicy.
    pub operator: builders::OperatorPeer,
    /// Who publishes the events (`publish_each`).
    pub reporter: Reporter,
    /// What is remembered of each cluster for `/metrics` and `/ui` (`book`).
    pub book: book::Book,
    /// The watch-fed stores of owned objects that passes read (`cache`); empty when no
    /// controller runs (a pass then asks the API server).
    pub caches: cache::Caches,
    /// Permits for member status requests ([`MAX_STATUS_POLLS`]).
    pub status_polls: Arc<tokio::sync::Semaphore>,
}

impl Context {
    pub fn new(client: kube::Client, members: Arc<dyn MemberApi>, reporter: Reporter) -> Context {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        Context {
            client,
            members,
            recorder,
            reporter,
            metrics: Arc::default(),
            failures: Mutex::default(),
            operator: builders::OperatorPeer::default(),
            book: book::Book::default(),
            caches: cache::Caches::default(),
            status_polls: Arc::new(tokio::sync::Semaphore::new(MAX_STATUS_POLLS)),
        }
    }

    /// The same, for an operator running at `operator`.
    pub fn with_operator(self, operator: builders::OperatorPeer) -> Context {
        Context { operator, ..self }
    }
}

fn key(cluster: &RaftCluster) -> String {
    format!("{}/{}", cluster.namespace().unwrap_or_default(), cluster.name_any())
}

/// The controller's error policy: requeue with a doubling delay per cluster.
pub fn backoff(cluster: &RaftCluster, ctx: &Context) -> Duration {
    let mut failures = ctx.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let count = failures.entry(key(cluster)).or_insert(0);
    *count = count.saturating_add(1);
    let factor = 1u32.checked_shl(count.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    BACKOFF_FIRST.saturating_mul(factor).min(BACKOFF_MAX)
}

/// What one observation of the owned objects found.
struct Owned {
    stateful_set: Option<StatefulSet>,
    config_map: Option<ConfigMap>,
    headless: Option<Service>,
    client_service: Option<Service>,
    budget: Option<PodDisruptionBudget>,
    /// `None` too when `spec.networkPolicy` is off (not read then).
    network_policy: Option<NetworkPolicy>,
    pods: Vec<Pod>,
    /// With `spec.tls`: the cluster's Secrets (CA and certificates), by name.
    secrets: BTreeMap<String, Secret>,
    /// With `spec.tls.certManager`: its Certificates, by name.
    certificates: BTreeMap<String, DynamicObject>,
    /// The Secrets this pass's `ensure_certificates` issued, by name (`secrets` stays as
    /// observed: the pass reaches the members as it observed them).
    issued: BTreeMap<String, Secret>,
    /// While the operator manages auth: the Secret holding root's password (`None` when it does
    /// not exist).
    root_secret: Option<Secret>,
}

impl Owned {
    /// How to reach the members: the operator's certificate, once it is issued, and root's
    /// password, while the operator manages auth and can read it.
    fn access(&self, cluster: &RaftCluster) -> Access {
        let secret = self.secrets.get(&certs::operator_secret_name(cluster));
        Access {
            tls: secret.and_then(certs::identity).map(Arc::new),
            root: self.root_credentials(cluster).ok().flatten(),
        }
    }

    /// root's credentials while the operator manages auth (`auth::credentials`).
    fn root_credentials(&self, cluster: &RaftCluster) -> Result<Option<Credentials>, String> {
        match auth::root_secret(cluster) {
            Some(reference) => auth::credentials(self.root_secret.as_ref(), reference),
            None => Ok(None),
        }
    }
}

/// One reconcile of `cluster`. See the module docs.
pub async fn reconcile(cluster: Arc<RaftCluster>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    ctx.metrics.reconciles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let running = Running::start(&ctx.metrics.passes_running, Some(&ctx.metrics.most_passes_running));
    let result = reconcile_inner(&cluster, &ctx).await;
    drop(running);
    ctx.metrics.reconcile_time.observe(started.elapsed());
    match &result {
        Ok(_) => {
            if let Ok(mut failures) = ctx.failures.lock() {
                failures.remove(&key(&cluster));
            }
            ctx.book.reconciled(&cluster, builders::now_seconds());
        }
        Err(err) => {
            ctx.metrics.reconcile_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(cluster = %key(&cluster), "reconcile failed: {err}");
            let event = event(EventType::Warning, err.kind(), "Reconcile", err.to_string());
            publish(&ctx, &cluster, event).await;
        }
    }
    result
}

async fn reconcile_inner(cluster: &RaftCluster, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = cluster.namespace().ok_or_else(|| BuildError::MissingNamespace(cluster.name_any()))?;
    let name = cluster.name_any();
    let previous = cluster.status.clone().unwrap_or_default();

    // A spec the schema should have refused: say so, and touch nothing until it changes.
    let problems = cluster.spec.problems();
    if !problems.is_empty() {
        let message = format!("the spec is invalid, nothing is changed until it is fixed: {}", problems.join("; "));
        let mut status = previous.clone();
        status.observed_generation = cluster.metadata.generation;
        set_condition(&mut status, &previous, CONDITION_PROGRESSING, false, "InvalidSpec", &message, cluster);
        if write_status(ctx, cluster, &previous, status).await? {
            publish(ctx, cluster, event(EventType::Warning, "InvalidSpec", "Validate", message)).await;
        }
        return Ok(Action::await_change());
    }

    // A restore from a RaftSnapshot: the file it stored, read once; the cluster waits for it.
    let restore_source = match backup::snapshot::restore_source(ctx, cluster, &previous).await {
        Ok(source) => source,
        Err(ReconcileError::RestoreSource(why)) => {
            let message = format!("the members wait for the snapshot to restore: {why}");
            let mut status = previous.clone();
            status.observed_generation = cluster.metadata.generation;
            let reason = "RestoreSourceNotReady";
            set_condition(&mut status, &previous, CONDITION_PROGRESSING, false, reason, &message, cluster);
            if write_status(ctx, cluster, &previous, status).await? {
                publish(ctx, cluster, event(EventType::Warning, reason, "Restore", message)).await;
            }
            return Ok(Action::requeue(REQUEUE_RESTORE_SOURCE));
        }
        Err(e) => return Err(e),
    };
    let resolved;
    let cluster = match &restore_source {
        Some(source) => {
            resolved = backup::snapshot::with_restore_source(cluster, source.clone());
            &resolved
        }
        None => cluster,
    };

    let mut owned = observe_objects(ctx, cluster, &namespace, &name).await?;
    let mut observed = observe_members(ctx, cluster, &namespace, &owned).await;
    // A quorum-loss recovery asked for (and decided now), or under way: the planner restarts the
    // pods into it before anything else.
    let now = Timestamp::now().to_string();
    let (recovery_record, requested) = recovery::request(cluster, &previous, &observed, &now);
    observed.recovering = recovery::recovering(recovery_record.as_ref());
    let plan = planner::plan(&observed);
    let health = planner::derive_status(&observed);

    if !cluster.spec.paused {
        ensure_static_objects(ctx, cluster, &mut owned, &plan).await?;
    }
    let mut secrets = owned.secrets.clone();
    secrets.extend(owned.issued.clone());
    ctx.book.certificates(cluster, certs::expiries(cluster, &secrets));
    let step_result = execute(ctx, cluster, &namespace, &observed, &owned, &plan).await;
    if let Err(err) = &step_result {
        tracing::warn!(cluster = %key(cluster), "{}: {err}", plan.kind());
    }

    // A backup when one is due: its failure is its own (status, condition, event), never the
    // pass's.
    let schedule = backup::run::schedule(cluster);
    let backed_up = match (&schedule, cluster.spec.paused) {
        (Some(schedule), false) => {
            backup::run::run(ctx, cluster, schedule, owned.access(cluster), &health, &previous).await
        }
        _ => None,
    };

    let mut status = build_status(cluster, &previous, &health, &plan, step_result.as_ref().err());
    status.restore_source = restore_source;
    backup::run::into_status(cluster, &previous, &mut status, backed_up.as_ref());
    let (recovery_record, completed) = match &step_result {
        Ok(()) => recovery::progress(recovery_record, &plan, &now),
        Err(_) => (recovery_record, None),
    };
    status.recovery = recovery_record;
    write_status(ctx, cluster, &previous, status).await?;
    announce(ctx, cluster, &previous, &health, &plan).await;
    for (type_, reason, note) in requested.into_iter().chain(completed) {
        publish_each(ctx, cluster, event(type_, reason, "Recover", note)).await;
    }
    for (type_, reason, note) in backed_up.as_ref().map(backup::run::events).unwrap_or_default() {
        publish_each(ctx, cluster, event(type_, reason, "Backup", note)).await;
    }
    step_result?;

    let requeue = match plan {
        Plan::Nothing => Some(REQUEUE_STEADY),
        Plan::Wait { reason: WaitReason::InvalidReplicas { .. } } => None,
        _ => Some(REQUEUE_PROGRESSING),
    };
    // Back in time for the next backup.
    let requeue = match (requeue, schedule.as_ref().and_then(backup::run::until_next)) {
        (Some(a), Some(b)) => Some(a.min(b + Duration::from_millis(100))),
        (a, b) => a.or(b),
    };
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// What a one-shot backup (`backup::snapshot`) needs of a cluster: its members' health, as a
/// pass observes it, and how to reach them.
pub async fn observe_health(ctx: &Context, cluster: &RaftCluster) -> Result<(ClusterHealth, Access), ReconcileError> {
    let namespace = cluster.namespace().ok_or_else(|| BuildError::MissingNamespace(cluster.name_any()))?;
    let owned = observe_objects(ctx, cluster, &namespace, &cluster.name_any()).await?;
    let observed = observe_members(ctx, cluster, &namespace, &owned).await;
    Ok((planner::derive_status(&observed), owned.access(cluster)))
}

async fn get<K>(api: &Api<K>, name: &str) -> Result<Option<K>, ReconcileError>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api.get_opt(name).await?)
}

async fn observe_objects(
    ctx: &Context,
    cluster: &RaftCluster,
    namespace: &str,
    name: &str,
) -> Result<Owned, ReconcileError> {
    let client = ctx.client.clone();
    let selector_labels = builders::selector_labels(cluster);
    let selector = selector_labels.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(",");
    let listed = ListParams::default().labels(&selector);
    let tls = cluster.spec.tls.as_ref();
    let cert_manager = tls.and_then(|t| t.cert_manager.as_ref()).is_some();
    if let Some(stores) = ctx.caches.of(namespace).filter(|_| !cert_manager) {
        return observe_cached(ctx, cluster, namespace, name, &stores, &selector_labels).await;
    }
    let pods = Api::<Pod>::namespaced(client.clone(), namespace).list(&listed).await?;
    let secrets = match tls {
        Some(_) => certs::by_name(Api::<Secret>::namespaced(client.clone(), namespace).list(&listed).await?.items),
        None => BTreeMap::new(),
    };
    let certificates = match tls.and_then(|t| t.cert_manager.as_ref()) {
        Some(_) => Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &certificate_resource())
            .list(&listed)
            .await?
            .items
            .into_iter()
            .map(|c| (c.name_any(), c))
            .collect(),
        None => BTreeMap::new(),
    };
    Ok(Owned {
        stateful_set: get(&Api::namespaced(client.clone(), namespace), name).await?,
        config_map: get(&Api::namespaced(client.clone(), namespace), &builders::members_config_map_name(cluster))
            .await?,
        headless: get(&Api::namespaced(client.clone(), namespace), &builders::headless_service_name(cluster)).await?,
        client_service: get(&Api::namespaced(client.clone(), namespace), &builders::client_service_name(cluster))
            .await?,
        budget: get(&Api::namespaced(client.clone(), namespace), name).await?,
        network_policy: match cluster.spec.network_policy.enabled {
            true => get(&Api::namespaced(client, namespace), name).await?,
            false => None,
        },
        pods: pods.items,
        secrets,
        certificates,
        issued: BTreeMap::new(),
        root_secret: match auth::root_secret(cluster) {
            Some(reference) => get(&Api::namespaced(ctx.client.clone(), namespace), &reference.name).await?,
            None => None,
        },
    })
}

/// `observe_objects` from the controller's caches (`cache`): no API request, except for a root
/// password Secret that no store holds (one the user made, without the operator's labels).
/// cert-manager clusters are observed from the API (their Certificates have no store).
async fn observe_cached(
    ctx: &Context,
    cluster: &RaftCluster,
    namespace: &str,
    name: &str,
    stores: &cache::Stores,
    selector: &BTreeMap<String, String>,
) -> Result<Owned, ReconcileError> {
    let secrets = match cluster.spec.tls {
        Some(_) => certs::by_name(cache::select(&stores.secrets, namespace, selector)),
        None => BTreeMap::new(),
    };
    let root_secret = match auth::root_secret(cluster) {
        Some(reference) => match cache::get(&stores.secrets, namespace, &reference.name) {
            Some(secret) => Some(secret),
            None => get(&Api::namespaced(ctx.client.clone(), namespace), &reference.name).await?,
        },
        None => None,
    };
    Ok(Owned {
        stateful_set: cache::get(&stores.stateful_sets, namespace, name),
        config_map: cache::get(&stores.config_maps, namespace, &builders::members_config_map_name(cluster)),
        headless: cache::get(&stores.services, namespace, &builders::headless_service_name(cluster)),
        client_service: cache::get(&stores.services, namespace, &builders::client_service_name(cluster)),
        budget: cache::get(&stores.budgets, namespace, name),
        network_policy: match cluster.spec.network_policy.enabled {
            true => cache::get(&stores.network_policies, namespace, name),
            false => None,
        },
        pods: cache::select(&stores.pods, namespace, selector),
        secrets,
        certificates: BTreeMap::new(),
        issued: BTreeMap::new(),
        root_secret,
    })
}

/// cert-manager's `Certificate`, for the dynamic API.
fn certificate_resource() -> ApiResource {
    ApiResource {
        group: certs::CERTIFICATE_GROUP.to_string(),
        version: certs::CERTIFICATE_VERSION.to_string(),
        api_version: format!("{}/{}", certs::CERTIFICATE_GROUP, certs::CERTIFICATE_VERSION),
        kind: certs::CERTIFICATE_KIND.to_string(),
        plural: certs::CERTIFICATE_PLURAL.to_string(),
    }
}

/// The pod's facts the planner needs: ordinal, readiness, lost data (its member exited with
/// [`builders::EXIT_DATA_LOST`] or [`builders::EXIT_CORRUPT`] and is not running), data of a
/// newer format (exit code 5), outdated. The
/// member's status is asked separately (`status` is `None` here).
pub fn pod_facts(cluster: &str, pod: &Pod, template_hash: Option<&str>) -> Option<PodObservation> {
    let ordinal = member_ordinal(cluster, pod.metadata.name.as_deref()?)?;
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    // The member's container, not running, whose current or last state exited with `code`.
    let exited_with = |codes: &[u8]| {
        status.and_then(|s| s.container_statuses.as_ref()).is_some_and(|containers| {
            containers.iter().filter(|c| c.name == builders::CONTAINER_NAME).any(|c| {
                let exit = |state: Option<&k8s_openapi::api::core::v1::ContainerState>| {
                    state.and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code)
                };
                let running = c.state.as_ref().is_some_and(|s| s.running.is_some());
                let listed = |code: Option<i32>| code.is_some_and(|code| codes.iter().any(|c| i32::from(*c) == code));
                !running && (listed(exit(c.state.as_ref())) || listed(exit(c.last_state.as_ref())))
            })
        })
    };
    // Lost data (3) and damaged data (4) both mean: replace the member. Data of a newer format
    // (5) means the opposite: keep it, the image is too old.
    let lost = exited_with(&[builders::EXIT_DATA_LOST, builders::EXIT_CORRUPT]);
    let newer_data = exited_with(&[crate::base::exit::EXIT_NEWER_FORMAT]);
    // Made from an older template than the StatefulSet's (`builders::template_annotations`).
    let made_from = pod.annotations().get(builders::POD_TEMPLATE_HASH_ANNOTATION).map(String::as_str);
    let outdated = template_hash.is_some_and(|current| made_from != Some(current));
    Some(PodObservation { ordinal, ready, data_lost: lost, status: None, outdated, newer_data })
}

async fn observe_members(ctx: &Context, cluster: &RaftCluster, namespace: &str, owned: &Owned) -> Observed {
    let name = cluster.name_any();
    let template_hash = owned
        .stateful_set
        .as_ref()
        .and_then(|sts| sts.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref())
        .and_then(|annotations| annotations.get(builders::POD_TEMPLATE_HASH_ANNOTATION))
        .map(String::as_str);
    let mut pods: Vec<PodObservation> =
        owned.pods.iter().filter_map(|pod| pod_facts(&name, pod, template_hash)).collect();
    pods.sort_by_key(|p| p.ordinal);
    pods.dedup_by_key(|p| p.ordinal);
    let access = owned.access(cluster);
    let asks = pods.iter().map(|p| {
        let url = builders::client_url(cluster, namespace, &member_name(&name, p.ordinal));
        let access = access.clone();
        async move {
            // The semaphore is never closed; were it, the ask would go unbounded rather than not at all.
            let _permit = ctx.status_polls.acquire().await.ok();
            ctx.members.status(access, url).await
        }
    });
    let statuses = futures::future::join_all(asks).await;
    for (pod, status) in pods.iter_mut().zip(statuses) {
        pod.status = status.ok();
    }
    let data = owned.config_map.as_ref().and_then(|cm| cm.data.as_ref());
    let endpoints = data.map(|data| EndpointList {
        names: listed_names(data),
        hash: data.get(builders::KEY_ENDPOINTS_HASH).cloned().unwrap_or_default(),
    });
    let formed = data.is_some_and(listed_formed);
    Observed {
        cluster: name,
        desired_replicas: cluster.spec.replicas,
        paused: cluster.spec.paused,
        formed,
        stateful_set_replicas: owned
            .stateful_set
            .as_ref()
            .and_then(|sts| sts.spec.as_ref())
            .map(|spec| u32::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0)),
        pods,
        endpoints,
        recovering: None,
        auth: auth::wanted(cluster),
    }
}

/// The member names the ConfigMap lists.
fn listed_names(data: &BTreeMap<String, String>) -> Vec<String> {
    let list = data.get(builders::KEY_MEMBERS).map(String::as_str).unwrap_or_default();
    list.split(',').filter(|n| !n.is_empty()).map(str::to_string).collect()
}

/// Whether the ConfigMap says the cluster formed (`initial-cluster-state: existing`).
fn listed_formed(data: &BTreeMap<String, String>) -> bool {
    data.get(builders::KEY_INITIAL_CLUSTER_STATE).is_some_and(|state| state == builders::STATE_EXISTING)
}

/// The hash of a built object, stamped on it before it is applied.
fn hash_of<T: Serialize>(object: &T) -> Result<String, ReconcileError> {
    let bytes = serde_json::to_vec(object).map_err(|e| ReconcileError::Encode(e.to_string()))?;
    Ok(format!("{:016x}", fnv1a(&[&bytes])))
}

fn live_hash<K: Resource>(object: Option<&K>) -> Option<&str> {
    object?.meta().annotations.as_ref()?.get(HASH_ANNOTATION).map(String::as_str)
}

/// Applies `object` (server-side apply) unless the live object carries its hash already and
/// still has every field the operator sets as it set it. A live object whose hash matches but
/// whose fields differ was edited by hand (or by another controller): the apply puts the
/// operator's fields back (fields that only others set stay: `drift` ignores them, and
/// server-side apply leaves what other managers own), with a `DriftReverted` event. Returns the
/// object as written, or `None` when nothing was written.
async fn apply<K>(
    ctx: &Context,
    cluster: &RaftCluster,
    namespace: &str,
    mut object: K,
    live: Option<&K>,
) -> Result<Option<K>, ReconcileError>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let hash = hash_of(&object)?;
    let unchanged = live_hash(live) == Some(hash.as_str());
    object.meta_mut().annotations.get_or_insert_with(BTreeMap::new).insert(HASH_ANNOTATION.to_string(), hash);
    let drifted = match live {
        Some(live) if unchanged => {
            let paths = drift(&encode(&object)?, &encode(live)?);
            if paths.is_empty() {
                return Ok(None);
            }
            paths
        }
        _ => Vec::new(),
    };
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let written = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object)).await?;
    ctx.metrics.object_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The server says whether the apply changed anything (a value it normalizes, such as a
    // quantity, may differ from what the builders wrote without being an edit).
    let changed = live.and_then(|l| l.meta().resource_version.clone()) != written.meta().resource_version;
    if !drifted.is_empty() && changed {
        let shown: Vec<&str> = drifted.iter().take(MAX_DRIFT_PATHS).map(String::as_str).collect();
        let more = drifted.len().saturating_sub(MAX_DRIFT_PATHS);
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        let note = format!(
            "{} {name}: {}{more} differed from what the operator set; put back",
            K::kind(&()),
            shown.join(", ")
        );
        tracing::info!(cluster = %key(cluster), "{note}");
        // Each revert is its own event (`publish_each`), naming the object put back.
        let mut reverted = event(EventType::Normal, "DriftReverted", "Reconcile", note);
        reverted.secondary = Some(written.object_ref(&()));
        publish_each(ctx, cluster, reverted).await;
    }
    Ok(Some(written))
}

/// How many differing fields a `DriftReverted` event names.
const MAX_DRIFT_PATHS: usize = 5;

/// An object as a JSON value, for `drift`.
fn encode<T: Serialize>(object: &T) -> Result<serde_json::Value, ReconcileError> {
    serde_json::to_value(object).map_err(|e| ReconcileError::Encode(e.to_string()))
}

/// The fields of `desired` that `live` does not have as `desired` has them, as dotted paths
/// (`spec.replicas`, `data.members`, `spec.template.spec.containers[0].image`). Fields that only
/// `live` has are no drift: the API server's defaults, what other managers set, and the status.
/// An empty list, map or null in `desired` matches a missing field (the API server drops
/// them). Lists are compared element by element and must be as long.
pub fn drift(desired: &serde_json::Value, live: &serde_json::Value) -> Vec<String> {
    let mut paths = Vec::new();
    drift_at(desired, live, String::new(), &mut paths);
    paths
}

fn drift_at(desired: &serde_json::Value, live: &serde_json::Value, at: String, paths: &mut Vec<String>) {
    use serde_json::Value;
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, value) in want {
                let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
                match have.get(key) {
                    Some(found) => drift_at(value, found, path, paths),
                    None if empty(value) => {}
                    None => paths.push(path),
                }
            }
        }
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => {
            for (i, (value, found)) in want.iter().zip(have).enumerate() {
                drift_at(value, found, format!("{at}[{i}]"), paths);
            }
        }
        (want, Value::Null) if empty(want) => {}
        (want, have) if want == have => {}
        _ => paths.push(at),
    }
}
/// The objects that do not follow membership: Services and the budget are applied whenever what
/// the builders make of them changes; the StatefulSet's template too, at the size the operator
/// last gave it; the ConfigMap, for the list it holds, unless this pass's `plan` writes a new
/// list anyway. Each is checked for drift (`apply`), so a hand edit is put back, and what was
/// written replaces the observation the pass's step works from.
async fn ensure_static_objects(
    ctx: &Context,
    cluster: &RaftCluster,
    owned: &mut Owned,
    plan: &Plan,
) -> Result<(), ReconcileError> {
    let namespace = cluster.namespace().unwrap_or_default();
    ensure_certificates(ctx, cluster, owned).await?;
    ensure_root_password(ctx, cluster, owned).await?;
    apply(ctx, cluster, &namespace, builders::headless_service(cluster)?, owned.headless.as_ref()).await?;
    apply(ctx, cluster, &namespace, builders::client_service(cluster)?, owned.client_service.as_ref()).await?;
    apply(ctx, cluster, &namespace, builders::pod_disruption_budget(cluster)?, owned.budget.as_ref()).await?;
    if cluster.spec.network_policy.enabled {
        let policy = builders::network_policy(cluster, &ctx.operator)?;
        apply(ctx, cluster, &namespace, policy, owned.network_policy.as_ref()).await?;
    }
    if let Some(live) = &owned.stateful_set {
        let desired = builders::stateful_set(cluster, applied_replicas(cluster, live)?)?;
        if let Some(written) = apply(ctx, cluster, &namespace, desired, Some(live)).await? {
            owned.stateful_set = Some(written);
        }
    }
    let writes_list = matches!(plan, Plan::Bootstrap { .. } | Plan::UpdateEndpoints { .. });
    if let (Some(live), false) = (&owned.config_map, writes_list) {
        let data = live.data.clone().unwrap_or_default();
        let desired = builders::members_config_map(cluster, &listed_names(&data), listed_formed(&data))?;
        if let Some(written) = apply(ctx, cluster, &namespace, desired, Some(live)).await? {
            owned.config_map = Some(written);
        }
    }
    Ok(())
}

/// The replicas the operator last gave the StatefulSet: those whose build carries the live
/// object's hash (a hand edit of `spec.replicas` leaves the hash as it was). When none does (the
/// spec changed since), the live replicas: the planner moves them where membership needs them.
fn applied_replicas(cluster: &RaftCluster, live: &StatefulSet) -> Result<u32, ReconcileError> {
    let live_replicas = u32::try_from(live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)).unwrap_or(0);
    let Some(hash) = live_hash(Some(live)) else { return Ok(live_replicas) };
    for replicas in std::iter::once(live_replicas).chain(0..=super::MAX_REPLICAS) {
        if hash_of(&builders::stateful_set(cluster, replicas)?)? == hash {
            return Ok(replicas);
        }
    }
    Ok(live_replicas)
}

/// With `spec.auth`: root's password Secret exists; when it does not, the operator creates it
/// with a random password (a create, never an update: a Secret that appears meanwhile is kept).
async fn ensure_root_password(ctx: &Context, cluster: &RaftCluster, owned: &mut Owned) -> Result<(), ReconcileError> {
    let Some(spec) = &cluster.spec.auth else { return Ok(()) };
    if owned.root_secret.is_some() {
        return Ok(());
    }
    let namespace = cluster.namespace().unwrap_or_default();
    let reference = &spec.root_password_secret;
    let secret = auth::generated_secret(cluster, reference).map_err(ReconcileError::Auth)?;
    let created = Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .create(
            &kube::api::PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..Default::default() },
            &secret,
        )
        .await?;
    ctx.metrics.object_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let note = format!("Secret {} holds root's new random password under {:?}", reference.name, reference.key);
    publish(ctx, cluster, event(EventType::Normal, "RootPasswordGenerated", "Create", note)).await;
    owned.root_secret = Some(created);
    Ok(())
}

/// With `spec.tls`: every certificate the cluster needs (`certs::requests`) is in its Secret and
/// not due for renewal. The `auto` issuer keeps the cluster's CA and issues what is missing, is
/// issued by another CA, or has a third of its validity left; members read renewed files
/// without a restart (DESIGN.md §4). With `certManager`, the operator applies the Certificates
/// and cert-manager issues and renews.
async fn ensure_certificates(ctx: &Context, cluster: &RaftCluster, owned: &mut Owned) -> Result<(), ReconcileError> {
    let Some(tls) = &cluster.spec.tls else { return Ok(()) };
    let namespace = cluster.namespace().unwrap_or_default();
    let requests = certs::requests(cluster)?;
    if let Some(issuer) = tls.cert_manager.as_ref().map(|cm| &cm.issuer_ref) {
        let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &namespace, &certificate_resource());
        for request in &requests {
            let mut object = certs::certificate(cluster, request, issuer)?;
            let hash = hash_of(&object)?;
            if live_hash(owned.certificates.get(&request.secret)) == Some(hash.as_str()) {
                continue;
            }
            object["metadata"]["annotations"] = serde_json::json!({ HASH_ANNOTATION: hash });
            api.patch(&request.secret, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object)).await?;
            ctx.metrics.object_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        return Ok(());
    }
    let now = builders::now_seconds();
    let ca_name = certs::ca_secret_name(cluster);
    let ca = match certs::read_ca(owned.secrets.get(&ca_name)).map_err(ReconcileError::Certificates)? {
        Some(ca) => ca,
        None => {
            let (ca, secret) = certs::mint_ca(cluster, now).map_err(ReconcileError::Certificates)?;
            if let Some(written) = apply(ctx, cluster, &namespace, secret, None).await? {
                owned.issued.insert(ca_name.clone(), written);
            }
            publish(ctx, cluster, event(EventType::Normal, "CertificateAuthorityCreated", "Issue", ca_name)).await;
            ca
        }
    };
    let mut renewed = Vec::new();
    for request in &requests {
        if let Some(why) = certs::due(owned.secrets.get(&request.secret), request, ca.cert_pem(), now) {
            let secret = certs::issue(cluster, &ca, request, now).map_err(ReconcileError::Certificates)?;
            if let Some(written) = apply(ctx, cluster, &namespace, secret, None).await? {
                owned.issued.insert(request.secret.clone(), written);
            }
            tracing::info!(cluster = %key(cluster), secret = %request.secret, "issued a certificate: {why}");
            renewed.push(format!("{} ({why})", request.secret));
        }
    }
    if !renewed.is_empty() {
        let note = format!("issued {}", renewed.join(", "));
        publish(ctx, cluster, event(EventType::Normal, "CertificatesIssued", "Issue", note)).await;
    }
    Ok(())
}

/// Takes the planned step.
async fn execute(
    ctx: &Context,
    cluster: &RaftCluster,
    namespace: &str,
    observed: &Observed,
    owned: &Owned,
    plan: &Plan,
) -> Result<(), ReconcileError> {
    let name = cluster.name_any();
    let member_urls = |first: Option<&str>| -> Vec<String> {
        let mut names: Vec<String> = observed.endpoints.as_ref().map(|list| list.names.clone()).unwrap_or_default();
        if let Some(first) = first {
            names.retain(|n| n != first);
            names.insert(0, first.to_string());
        }
        names.iter().map(|member| builders::client_url(cluster, namespace, member)).collect()
    };
    let leader = planner::derive_status(observed).leader;
    let access = owned.access(cluster);
    let change = |change: MemberChange| async {
        ctx.members.change(access.clone(), member_urls(leader.as_deref()), change).await.map_err(ReconcileError::Member)
    };
    let id = |text: &str| parse_id(text).ok_or_else(|| ReconcileError::Member(format!("bad member id {text:?}")));
    match plan {
        Plan::Bootstrap { replicas } => {
            let names: Vec<String> = (0..*replicas).map(|i| member_name(&name, i)).collect();
            apply(ctx, cluster, namespace, builders::members_config_map(cluster, &names, false)?, None).await?;
            apply(ctx, cluster, namespace, builders::stateful_set(cluster, *replicas)?, None).await?;
        }
        Plan::AddLearner { name: member, .. } => {
            change(MemberChange::AddLearner(AddMemberRequest {
                name: member.clone(),
                peer_url: builders::peer_url(cluster, namespace, member),
                client_url: builders::client_url(cluster, namespace, member),
                learner: true,
            }))
            .await?;
        }
        Plan::Promote { id: member_id, .. } => change(MemberChange::Promote(id(member_id)?)).await?,
        Plan::TransferLeadership { to_id, .. } => change(MemberChange::TransferLeader(id(to_id)?)).await?,
        Plan::RemoveMember { id: member_id, .. } => change(MemberChange::Remove(id(member_id)?)).await?,
        Plan::ReplaceMember { old_id, .. } => change(MemberChange::Remove(id(old_id)?)).await?,
        Plan::ResizeStatefulSet { replicas } => {
            apply(ctx, cluster, namespace, builders::stateful_set(cluster, *replicas)?, owned.stateful_set.as_ref())
                .await?;
        }
        Plan::UpdateEndpoints { names } => {
            apply(
                ctx,
                cluster,
                namespace,
                builders::members_config_map(cluster, names, true)?,
                owned.config_map.as_ref(),
            )
            .await?;
        }
        Plan::EnableAuth | Plan::DisableAuth => {
            if owned.root_credentials(cluster).map_err(ReconcileError::Auth)?.is_none() {
                let secret = auth::root_secret(cluster).map(|r| r.name.clone()).unwrap_or_default();
                return Err(ReconcileError::Auth(format!("Secret {secret} with root's password does not exist")));
            }
            change(if *plan == Plan::EnableAuth { MemberChange::EnableAuth } else { MemberChange::DisableAuth })
                .await?;
        }
        Plan::RestartMember { name: member, .. } => {
            // An eviction, which the PodDisruptionBudget guards as it guards a drain.
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
            pods.evict(member, &EvictParams::default()).await?;
        }
        Plan::Wait { .. } | Plan::Nothing => return Ok(()),
    }
    if let Ok(mut steps) = ctx.metrics.steps.lock() {
        *steps.entry(plan.kind()).or_insert(0) += 1;
    }
    tracing::info!(cluster = %key(cluster), step = plan.kind(), "{plan}");
    publish(ctx, cluster, event(EventType::Normal, plan.kind(), "Reconcile", plan.to_string())).await;
    Ok(())
}

/// Sets condition `type_` in `status`, keeping its transition time when its status stays.
pub(crate) fn set_condition(
    status: &mut RaftClusterStatus,
    previous: &RaftClusterStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    cluster: &RaftCluster,
) {
    let value = if value { "True" } else { "False" };
    let since = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == value)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    let condition = Condition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: cluster.metadata.generation,
        last_transition_time: since,
    };
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = condition,
        None => status.conditions.push(condition),
    }
}

/// The status for this observation and step. Only facts that change with the cluster go in (no
/// timestamps beyond condition transitions), so an unchanged cluster writes nothing.
pub fn build_status(
    cluster: &RaftCluster,
    previous: &RaftClusterStatus,
    health: &ClusterHealth,
    plan: &Plan,
    step_error: Option<&ReconcileError>,
) -> RaftClusterStatus {
    let namespace = cluster.namespace().unwrap_or_default();
    let mut status = RaftClusterStatus {
        observed_generation: cluster.metadata.generation,
        phase: Some(health.phase.as_str().to_string()),
        replicas: Some(health.replicas),
        ready_replicas: Some(health.ready_replicas),
        leader: health.leader.clone(),
        term: Some(health.term),
        commit_index: Some(health.commit_index),
        members: health
            .members
            .iter()
            .map(|m| StatusMember {
                name: m.name.clone(),
                id: m.id.clone().unwrap_or_default(),
                role: m.role.unwrap_or_default().to_string(),
                healthy: m.healthy,
                applied_index: m.applied_index.unwrap_or(0),
                lag: m.lag.unwrap_or(0),
            })
            .collect(),
        endpoints: health.endpoints.iter().map(|member| builders::client_url(cluster, &namespace, member)).collect(),
        membership_hash: health.membership_hash.clone(),
        client_secret: cluster.spec.tls.as_ref().map(|_| certs::client_secret_name(cluster)),
        auth: auth::status(cluster, previous, health.auth_enabled),
        backup: None,
        recovery: previous.recovery.clone(),
        restore_source: previous.restore_source.clone(),
        conditions: previous.conditions.clone(),
    };
    let (available_reason, available_message) = if health.available {
        ("LeaderElected", format!("{} leads with a majority of the voters", health.leader.clone().unwrap_or_default()))
    } else if health.quorum_lost {
        ("QuorumLost", "no leader is followed by a majority of the voters; writes are refused".to_string())
    } else {
        ("Forming", "the cluster has not elected its first leader yet".to_string())
    };

    let (progressing, progress_reason, progress_message) = match (plan, step_error) {
        (_, Some(err)) => (true, err.kind(), format!("{}: {err}", plan.kind())),
        (Plan::Nothing, _) => (false, "Reconciled", "the cluster is what the spec asks for".to_string()),
        (Plan::Wait { reason }, _) => {
            let moving = matches!(
                reason,
                WaitReason::Forming | WaitReason::MemberNotReady { .. } | WaitReason::LearnerCatchingUp { .. }
            );
            // Numbers that change on every pass (a learner's progress) stay out of the message.
            let message = match reason {
                WaitReason::LearnerCatchingUp { name, .. } => format!("learner {name} is catching up with the leader"),
                other => other.to_string(),
            };
            (moving, reason.kind(), message)
        }
        (step, _) => (true, step.kind(), step.to_string()),
    };

    let degraded = matches!(health.phase, Phase::Degraded | Phase::QuorumLost);
    let unhealthy: Vec<&str> = health.members.iter().filter(|m| !m.healthy).map(|m| m.name.as_str()).collect();
    let (degraded_reason, degraded_message) = if health.phase == Phase::QuorumLost {
        ("QuorumLost", "the cluster lost its quorum".to_string())
    } else if degraded {
        ("MemberUnhealthy", format!("unhealthy: {}", unhealthy.join(",")))
    } else {
        ("Healthy", "every voter is healthy".to_string())
    };
    let (consistency_reason, consistency_message) = if health.membership_consistent {
        ("Consistent", "every healthy member reports the membership that the endpoint list names".to_string())
    } else {
        ("Inconsistent", "the members' membership and the endpoint list differ, or no member answers".to_string())
    };
    let conditions = [
        (CONDITION_AVAILABLE, health.available, available_reason, available_message),
        (CONDITION_PROGRESSING, progressing, progress_reason, progress_message),
        (CONDITION_DEGRADED, degraded, degraded_reason, degraded_message),
        (CONDITION_MEMBERSHIP_CONSISTENT, health.membership_consistent, consistency_reason, consistency_message),
    ];
    for (kind, value, reason, message) in conditions {
        set_condition(&mut status, previous, kind, value, reason, &message, cluster);
    }
    status
}

/// Writes the status (server-side apply on the status subresource) if it differs from what is
/// stored. Returns whether it wrote.
async fn write_status(
    ctx: &Context,
    cluster: &RaftCluster,
    previous: &RaftClusterStatus,
    status: RaftClusterStatus,
) -> Result<bool, ReconcileError> {
    ctx.book.observed(cluster, &status);
    if &status == previous && cluster.status.is_some() {
        return Ok(false);
    }
    let api: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": RaftCluster::api_version(&()),
        "kind": RaftCluster::kind(&()),
        "status": status,
    });
    api.patch_status(&cluster.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    ctx.metrics.status_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(true)
}

/// Events for what users watch for: a new leader, a new term, a lost quorum.
async fn announce(
    ctx: &Context,
    cluster: &RaftCluster,
    previous: &RaftClusterStatus,
    health: &ClusterHealth,
    plan: &Plan,
) {
    if health.leader.is_some() && health.leader != previous.leader {
        let note = format!("{} leads in term {}", health.leader.clone().unwrap_or_default(), health.term);
        publish(ctx, cluster, event(EventType::Normal, "LeaderElected", "Observe", note)).await;
    } else if health.leader.is_some() && previous.term.is_some_and(|term| term != health.term) {
        let note = format!("term {} (was {})", health.term, previous.term.unwrap_or(0));
        publish(ctx, cluster, event(EventType::Normal, "TermChanged", "Observe", note)).await;
    }
    let was_lost = previous.phase.as_deref() == Some(Phase::QuorumLost.as_str());
    if health.quorum_lost && !was_lost {
        let note = match plan {
            Plan::Wait { reason } => reason.to_string(),
            other => other.to_string(),
        };
        publish(ctx, cluster, event(EventType::Warning, "QuorumLost", "Observe", note)).await;
    }
}

pub(crate) fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    // The Events API caps the note at 1 kB.
    let mut note = note;
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    Event { type_, reason: reason.to_string(), note: Some(note), action: action.to_string(), secondary: None }
}

/// Publishes an event; a failure to do so is logged, never fatal.
async fn publish(ctx: &Context, cluster: &RaftCluster, event: Event) {
    ctx.book.event(cluster, &event);
    let reference = cluster.object_ref(&());
    if let Err(err) = ctx.recorder.publish(&event, &reference).await {
        tracing::warn!(cluster = %key(cluster), "cannot publish event {}: {err}", event.reason);
    }
}

/// Publishes an event as a new one, never as the repeat of an earlier one of the same reason
/// (the shared recorder counts those in a series that keeps the first note): for events whose
/// note is news each time, such as each backup's object, revision and error, or each revert's
/// fields.
pub(crate) async fn publish_each<K: Resource<DynamicType = ()> + 'static>(ctx: &Context, object: &K, event: Event) {
    if let Some(cluster) = (object as &dyn std::any::Any).downcast_ref::<RaftCluster>() {
        ctx.book.event(cluster, &event);
    }
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(err) = recorder.publish(&event, &object.object_ref(&())).await {
        let name = format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any());
        tracing::warn!(object = %name, "cannot publish event {}: {err}", event.reason);
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(state: Option<i32>, last_state: Option<i32>) -> Pod {
        let terminated = |code: i32| ContainerState {
            terminated: Some(ContainerStateTerminated { exit_code: code, ..Default::default() }),
            ..Default::default()
        };
        let running = ContainerState { running: Some(ContainerStateRunning::default()), ..Default::default() };
        Pod {
            metadata: ObjectMeta { name: Some("etcd-1".into()), ..Default::default() },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: builders::CONTAINER_NAME.into(),
                    state: Some(state.map_or(running, terminated)),
                    last_state: last_state.map(terminated),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn lost_or_damaged_data_marks_the_pod_for_replacement_and_other_failures_do_not() {
        let lost = |state, last| pod_facts("etcd", &pod(state, last), None).map(|p| p.data_lost);
        assert_eq!(lost(Some(3), None), Some(true), "data lost");
        assert_eq!(lost(Some(4), None), Some(true), "data corrupt");
        assert_eq!(lost(None, Some(4)), Some(false), "running again: no decision on an old exit");
        assert_eq!(lost(Some(1), Some(4)), Some(true), "crash-looping after a corrupt exit");
        assert_eq!(lost(Some(1), Some(1)), Some(false), "other failures");
        assert_eq!(lost(Some(2), None), Some(false), "usage errors");
        // Data a newer kuberaft wrote: kept, never replaced, and said so.
        let newer = |state, last| pod_facts("etcd", &pod(state, last), None).map(|p| (p.data_lost, p.newer_data));
        assert_eq!(newer(Some(5), None), Some((false, true)), "an image older than its data");
        assert_eq!(newer(Some(1), Some(5)), Some((false, true)), "crash-looping on it");
        assert_eq!(newer(None, Some(5)), Some((false, false)), "running again");
    }

    #[test]
    fn a_pod_made_from_another_template_than_the_stateful_sets_is_outdated() {
        let with_hash = |hash: Option<&str>| {
            let mut pod = pod(None, None);
            pod.metadata.annotations = hash.map(|h| {
                std::collections::BTreeMap::from([(builders::POD_TEMPLATE_HASH_ANNOTATION.to_string(), h.to_string())])
            });
            pod
        };
        let outdated = |pod: &Pod, current| pod_facts("etcd", pod, current).map(|p| p.outdated);
        assert_eq!(outdated(&with_hash(Some("a")), Some("a")), Some(false), "the current template");
        assert_eq!(outdated(&with_hash(Some("a")), Some("b")), Some(true), "an older template");
        assert_eq!(outdated(&with_hash(None), Some("b")), Some(true), "made before templates had a hash");
        assert_eq!(outdated(&with_hash(Some("a")), None), Some(false), "no StatefulSet: nothing to compare");
    }

    #[test]
    fn drift_names_the_fields_set_differently_and_ignores_what_only_the_live_object_has() {
        use serde_json::json;
        let desired = json!({
            "metadata": {"labels": {"app": "kuberaft"}, "annotations": {}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "m", "image": "a:1"}]}},
                     "selector": null, "volumes": []},
        });
        let same = json!({
            "metadata": {"labels": {"app": "kuberaft", "team": "x"}, "resourceVersion": "7"},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "m", "image": "a:1",
                     "imagePullPolicy": "IfNotPresent"}]}}, "revisionHistoryLimit": 10},
            "status": {"replicas": 3},
        });
        assert_eq!(drift(&desired, &same), Vec::<String>::new(), "defaults, others' fields, empties");
        let edited = json!({
            "metadata": {"labels": {"app": "other"}},
            "spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "m", "image": "b:2"}]}},
                     "volumes": [{"name": "x"}]},
        });
        assert_eq!(
            drift(&desired, &edited),
            ["metadata.labels.app", "spec.replicas", "spec.template.spec.containers[0].image", "spec.volumes"]
        );
        let removed = json!({"metadata": {}, "spec": {"replicas": 3, "template": {"spec": {"containers": []}}}});
        assert_eq!(drift(&desired, &removed), ["metadata.labels", "spec.template.spec.containers"]);
    }

    #[test]
    fn the_replicas_last_applied_are_found_from_the_hash_whatever_the_live_replicas_say() {
        let spec = serde_json::from_value(serde_json::json!({"replicas": 3})).expect("spec");
        let mut cluster = RaftCluster::new("etcd", spec);
        cluster.metadata.namespace = Some("ns".to_string());
        cluster.metadata.uid = Some("uid".to_string());
        let mut live = builders::stateful_set(&cluster, 4).expect("built");
        let hash = hash_of(&live).expect("hash");
        live.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(HASH_ANNOTATION.to_string(), hash);
        assert_eq!(applied_replicas(&cluster, &live).expect("found"), 4);
        live.spec.as_mut().expect("spec").replicas = Some(7);
        assert_eq!(applied_replicas(&cluster, &live).expect("found"), 4, "an edit of the replicas");
        live.metadata.annotations = None;
        assert_eq!(applied_replicas(&cluster, &live).expect("found"), 7, "no hash: as it is");
    }
}

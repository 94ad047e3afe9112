//! Reconcile scenarios against the fake API server (tower-test) and fake members, asserting the
//! exact calls: first creation, steady state (reads only), a scale step, an invalid spec; and
//! random bad specs (property test) that never panic, get a condition and an event, and change no
//! owned object.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::Method;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kuberaft::base::rng::Rng;
use kuberaft::base::wire::{AddMemberRequest, Member, Role, Status};
use kuberaft::operator::backup::Incoming;
use kuberaft::operator::crd::RaftCluster;
use kuberaft::operator::reconcile::{self, Access, Context, MemberApi, MemberChange, Running};
use serde_json::{json, Value};

use crate::fake_api::*;

/// Members as the operator sees them: a status per client URL, and the changes sent.
#[derive(Default)]
pub struct FakeMembers {
    pub statuses: Mutex<BTreeMap<String, Status>>,
    pub changes: Mutex<Vec<(Vec<String>, MemberChange)>>,
    /// The common name of the client certificate of each status call (`None`: none presented).
    pub identities: Mutex<Vec<Option<String>>>,
    /// root's password each change was sent with (`None`: no credentials).
    pub passwords: Mutex<Vec<Option<String>>>,
    /// The client URL of each snapshot asked for.
    pub snapshots: Mutex<Vec<String>>,
    /// Snapshot streams end early (a member that stopped while sending).
    pub cut_snapshots: std::sync::atomic::AtomicBool,
    /// How long each status answer takes, in milliseconds (members that are slow to answer).
    pub status_delay_ms: std::sync::atomic::AtomicU64,
    /// Status requests being answered now, and the most ever at once.
    pub statuses_in_flight: std::sync::atomic::AtomicU64,
    pub most_statuses_in_flight: std::sync::atomic::AtomicU64,
}

/// A member's snapshot as the fake members send it: 40 KB of bytes that depend on the
/// revision, framed as a member frames its snapshots.
pub fn fake_snapshot(revision: u64) -> Vec<u8> {
    let mut body: Vec<u8> = (0..40_000u32).map(|i| ((i as u64 * 31 + revision) % 251) as u8).collect();
    let mut framer = kuberaft::base::framing::Framer::new();
    framer.add(&body);
    body.extend_from_slice(&framer.tail());
    body
}

impl MemberApi for FakeMembers {
    fn status(&self, access: Access, url: String) -> BoxFuture<'_, Result<Status, String>> {
        let name = access.tls.map(|tls| {
            use rustls::pki_types::pem::PemObject;
            let der = rustls::pki_types::CertificateDer::from_pem_slice(&tls.cert.text).expect("PEM");
            kuberaft::base::tls::common_name(&der).unwrap_or_default()
        });
        if let Ok(mut identities) = self.identities.lock() {
            identities.push(name);
        }
        let answer = self.statuses.lock().ok().and_then(|s| s.get(&url).cloned()).ok_or(format!("{url}: refused"));
        let delay = Duration::from_millis(self.status_delay_ms.load(std::sync::atomic::Ordering::SeqCst));
        let in_flight = Running::start(&self.statuses_in_flight, Some(&self.most_statuses_in_flight));
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            drop(in_flight);
            answer
        })
    }

    fn change(&self, access: Access, urls: Vec<String>, change: MemberChange) -> BoxFuture<'_, Result<(), String>> {
        if let Ok(mut passwords) = self.passwords.lock() {
            passwords.push(access.root.map(|root| root.password));
        }
        // Auth changes take effect on every member at once.
        let auth = match change {
            MemberChange::EnableAuth => Some(true),
            MemberChange::DisableAuth => Some(false),
            _ => None,
        };
        if let (Some(on), Ok(mut statuses)) = (auth, self.statuses.lock()) {
            statuses.values_mut().for_each(|s| s.auth_enabled = Some(on));
        }
        if let Ok(mut changes) = self.changes.lock() {
            changes.push((urls, change));
        }
        Box::pin(async { Ok(()) })
    }

    fn snapshot(&self, _access: Access, url: String) -> BoxFuture<'_, Result<Incoming, String>> {
        if let Ok(mut asked) = self.snapshots.lock() {
            asked.push(url.clone());
        }
        let revision = self.statuses.lock().ok().and_then(|s| s.get(&url).map(|s| s.revision));
        let cut = self.cut_snapshots.load(std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            let revision = revision.ok_or(format!("{url}: refused"))?;
            let bytes = fake_snapshot(revision);
            let mut chunks: Vec<Result<bytes::Bytes, String>> =
                bytes.chunks(7000).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
            if cut {
                chunks.truncate(2);
                chunks.push(Err("connection reset".to_string()));
            }
            let revision = i64::try_from(revision).map_err(|e| e.to_string())?;
            Ok(Incoming { revision, chunks: Box::pin(futures::stream::iter(chunks)) })
        })
    }
}

pub(crate) fn url(member: &str) -> String {
    url_in("etcd", member)
}

/// The client URL of `member` of the cluster named `cluster`.
pub(crate) fn url_in(cluster: &str, member: &str) -> String {
    format!("http://{member}.{cluster}.{NS}.svc:2379")
}

fn peer(member: &str) -> String {
    peer_in("etcd", member)
}

fn peer_in(cluster: &str, member: &str) -> String {
    format!("http://{member}.{cluster}.{NS}.svc:2380")
}

impl FakeMembers {
    /// Every named member answers: `leader` leads `term`, all have applied `commit`.
    pub(crate) fn set_cluster(&self, voters: &[&str], learners: &[&str], leader: &str, term: u64, commit: u64) {
        // Auth stays as the members had it.
        let auth = {
            let mut statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
            let auth = statuses.values().next().and_then(|s| s.auth_enabled);
            statuses.retain(|url, _| !url.contains(".etcd."));
            auth
        };
        self.add_cluster("etcd", voters, learners, leader, term, commit);
        let mut statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        for (_, status) in statuses.iter_mut().filter(|(url, _)| url.contains(".etcd.")) {
            status.auth_enabled = Some(auth.unwrap_or(false));
        }
    }

    /// The members of the cluster named `cluster` answer too (those of other clusters stay).
    pub(crate) fn add_cluster(
        &self,
        cluster: &str,
        voters: &[&str],
        learners: &[&str],
        leader: &str,
        term: u64,
        commit: u64,
    ) {
        let members: Vec<Member> = voters
            .iter()
            .map(|n| (n, true))
            .chain(learners.iter().map(|n| (n, false)))
            .map(|(name, voter)| Member {
                id: id_of(name),
                name: name.to_string(),
                peer_url: peer_in(cluster, name),
                client_url: url_in(cluster, name),
                voter,
            })
            .collect();
        let hash = format!("hash-{}", members.len());
        let mut statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        // Auth as the other members have it.
        let auth_enabled = statuses.values().next().and_then(|s| s.auth_enabled).unwrap_or(false);
        for member in &members {
            let role = if member.name == leader {
                Role::Leader
            } else if member.voter {
                Role::Follower
            } else {
                Role::Learner
            };
            statuses.insert(
                url_in(cluster, &member.name),
                Status {
                    name: member.name.clone(),
                    id: member.id.clone(),
                    role,
                    term,
                    leader: leader.to_string(),
                    leader_id: id_of(leader),
                    commit_index: commit,
                    applied_index: commit,
                    revision: commit,
                    members: members.clone(),
                    membership_hash: hash.clone(),
                    cluster_id: "c1".to_string(),
                    errors: Vec::new(),
                    auth_enabled: Some(auth_enabled),
                    last_log_term: term,
                    last_log_index: commit,
                },
            );
        }
    }

    pub(crate) fn take_changes(&self) -> Vec<(Vec<String>, MemberChange)> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Member ids: `a0`, `a1`, ... by ordinal.
fn id_of(name: &str) -> String {
    format!("a{}", name.rsplit('-').next().unwrap_or("0"))
}

pub struct World {
    pub api: FakeApi,
    pub members: Arc<FakeMembers>,
    pub ctx: Arc<Context>,
}

impl World {
    pub fn new(spec: Value) -> World {
        let api = FakeApi::default();
        api.put(
            &cluster_path("etcd"),
            json!({
                "apiVersion": "kuberaft.io/v1alpha1", "kind": "RaftCluster",
                "metadata": {"name": "etcd", "namespace": NS, "uid": "uid-etcd", "generation": 1},
                "spec": spec,
            }),
        );
        let members = Arc::new(FakeMembers::default());
        let reporter = Reporter { controller: "kuberaft-operator".to_string(), instance: Some("test".to_string()) };
        let ctx = Arc::new(Context::new(api.client(), members.clone(), reporter));
        World { api, members, ctx }
    }

    pub fn cluster(&self) -> RaftCluster {
        serde_json::from_value(self.api.get(&cluster_path("etcd")).expect("the cluster is stored"))
            .expect("a RaftCluster")
    }

    /// One reconcile; returns its result and the calls it made. An event is one call, whether the
    /// recorder creates it or counts a repeat in the series of an earlier one (a PATCH).
    pub async fn reconcile(&self) -> (Result<Action, String>, Vec<Call>) {
        self.api.take_calls();
        let result = reconcile::reconcile(Arc::new(self.cluster()), self.ctx.clone()).await.map_err(|e| e.to_string());
        let calls = self.api.take_calls();
        (result, calls.into_iter().map(|c| if c.path.starts_with(&events_path()) { event() } else { c }).collect())
    }

    pub(crate) fn set_spec(&self, change: impl FnOnce(&mut Value)) {
        let mut object = self.api.get(&cluster_path("etcd")).expect("stored");
        change(&mut object["spec"]);
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        object["metadata"]["generation"] = json!(generation);
        self.api.put(&cluster_path("etcd"), object);
    }

    /// Ready, running pods `etcd-0..n`, as the StatefulSet controller and kubelet would report:
    /// each made from the StatefulSet's current template (it keeps the template's annotations).
    fn set_pods(&self, n: u32) {
        self.api.lock().objects.retain(|path, _| !path.starts_with(&format!("{}/", pods_path())));
        for i in 0..n {
            self.set_pod(&format!("etcd-{i}"));
        }
    }

    /// One ready pod, made again from the StatefulSet's current template.
    fn set_pod(&self, name: &str) {
        let mut state = self.api.lock();
        let annotations = state
            .objects
            .get(&sts_path("etcd"))
            .map_or(Value::Null, |sts| sts["spec"]["template"]["metadata"]["annotations"].clone());
        let mut pod = ready_pod(name);
        pod["metadata"]["annotations"] = annotations;
        state.objects.insert(pod_path(name), pod);
    }

    pub(crate) fn status(&self) -> Value {
        self.api.get(&cluster_path("etcd")).and_then(|c| c.get("status").cloned()).unwrap_or(Value::Null)
    }
}

pub fn ready_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/instance": "etcd",
                     "app.kubernetes.io/name": "kuberaft", "app.kubernetes.io/component": "raft-member"}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "kuberaft", "ready": true, "restartCount": 0, "image": "i", "imageID": "",
                                   "state": {"running": {}}}],
        },
    })
}

fn get(path: &str) -> Call {
    Call::new(Method::GET, path)
}

fn patch(path: &str) -> Call {
    Call::new(Method::PATCH, path)
}

fn event() -> Call {
    Call::new(Method::POST, &events_path())
}

fn status_patch() -> Call {
    patch(&format!("{}/status", cluster_path("etcd")))
}

/// The reads every reconcile of a valid spec starts with.
fn observe_calls() -> Vec<Call> {
    vec![
        get(&pods_path()),
        get(&sts_path("etcd")),
        get(&cm_path("etcd-members")),
        get(&svc_path("etcd")),
        get(&svc_path("etcd-client")),
        get(&pdb_path("etcd")),
        get(&netpol_path("etcd")),
    ]
}

/// The writes of a first creation after the reads: the static objects, then the ConfigMap and the
/// StatefulSet (Bootstrap), its event, and the status.
fn first_creation_calls() -> Vec<Call> {
    vec![
        patch(&svc_path("etcd")),
        patch(&svc_path("etcd-client")),
        patch(&pdb_path("etcd")),
        patch(&netpol_path("etcd")),
        patch(&cm_path("etcd-members")),
        patch(&sts_path("etcd")),
        event(),
        status_patch(),
    ]
}

fn with(mut calls: Vec<Call>, more: Vec<Call>) -> Vec<Call> {
    calls.extend(more);
    calls
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

fn event_reasons(world: &World) -> Vec<String> {
    world.api.take_events().iter().map(|e| e["reason"].as_str().unwrap_or_default().to_string()).collect()
}

/// A world taken from nothing to a steady 3-member cluster, asserting each pass's calls.
async fn steady_three() -> World {
    steady_three_with(json!({"replicas": 3})).await
}

/// The same for a spec of 3 replicas with more in it.
pub(crate) async fn steady_three_with(spec: Value) -> World {
    let world = World::new(spec);

    // Pass 1, first creation: everything is missing; the static objects, then the ConfigMap and
    // the StatefulSet (Bootstrap), then the status.
    let (result, calls) = world.reconcile().await;
    assert_eq!(result, Ok(Action::requeue(reconcile::REQUEUE_PROGRESSING)));
    let expected = with(observe_calls(), first_creation_calls());
    assert_eq!(calls, expected);
    assert_eq!(event_reasons(&world), vec!["Bootstrap"]);
    let cm = world.api.get(&cm_path("etcd-members")).expect("ConfigMap");
    assert_eq!(cm["data"]["members"], "etcd-0,etcd-1,etcd-2");
    assert_eq!(cm["data"]["initial-cluster-state"], "new");
    let sts = world.api.get(&sts_path("etcd")).expect("StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert!(sts["metadata"]["annotations"][reconcile::HASH_ANNOTATION].is_string());
    assert_eq!(world.status()["phase"], "Bootstrapping");
    assert_eq!(condition(&world.status(), "Available")["status"], "False");

    // The pods run and elect etcd-0: the first list with a leader marks the cluster formed.
    world.set_pods(3);
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-0", 2, 10);
    let (_, calls) = world.reconcile().await;
    assert_eq!(calls, with(observe_calls(), vec![patch(&cm_path("etcd-members")), event(), status_patch(), event()]));
    assert_eq!(event_reasons(&world), vec!["UpdateEndpoints", "LeaderElected"]);
    assert_eq!(world.api.get(&cm_path("etcd-members")).expect("cm")["data"]["initial-cluster-state"], "existing");
    let status = world.status();
    assert_eq!(status["leader"], "etcd-0");
    assert_eq!(status["term"], 2);
    assert_eq!(condition(&status, "Available")["status"], "True");

    // Nothing left to do: the status says so (Progressing false), once.
    let (result, calls) = world.reconcile().await;
    assert_eq!(result, Ok(Action::requeue(reconcile::REQUEUE_STEADY)));
    assert_eq!(calls, with(observe_calls(), vec![status_patch()]));
    let status = world.status();
    assert_eq!(status["phase"], "Running");
    assert_eq!(condition(&status, "Progressing")["status"], "False");
    assert_eq!(condition(&status, "MembershipConsistent")["status"], "True");
    assert_eq!(condition(&status, "Degraded")["status"], "False");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(status["endpoints"][2], "http://etcd-2.etcd.ns.svc:2379");
    world
}

#[tokio::test]
async fn first_creation_then_steady_state_makes_no_writes() {
    let world = steady_three().await;
    for _ in 0..3 {
        let (result, calls) = world.reconcile().await;
        assert_eq!(result, Ok(Action::requeue(reconcile::REQUEUE_STEADY)));
        assert_eq!(calls, observe_calls(), "a steady cluster costs reads only");
        assert!(event_reasons(&world).is_empty());
    }
    assert!(world.members.take_changes().is_empty());

    // A new term is news: status and an event, and nothing else.
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-1", 3, 12);
    let (_, calls) = world.reconcile().await;
    assert_eq!(calls, with(observe_calls(), vec![status_patch(), event()]));
    assert_eq!(event_reasons(&world), vec!["LeaderElected"]);
    assert_eq!(world.status()["leader"], "etcd-1");
    assert_eq!(world.status()["term"], 3);
}

#[tokio::test]
async fn scale_step_adds_a_learner_then_lists_it_then_starts_its_pod_then_promotes_it() {
    let world = steady_three().await;
    world.set_spec(|spec| spec["replicas"] = json!(4));

    let (_, calls) = world.reconcile().await;
    assert_eq!(calls, with(observe_calls(), vec![event(), status_patch()]), "a member call, no object write");
    let changes = world.members.take_changes();
    assert_eq!(changes.len(), 1);
    let (urls, change) = &changes[0];
    assert_eq!(urls[0], url("etcd-0"), "sent to the leader first");
    assert_eq!(
        change,
        &MemberChange::AddLearner(AddMemberRequest {
            name: "etcd-3".to_string(),
            peer_url: peer("etcd-3"),
            client_url: url("etcd-3"),
            learner: true,
        })
    );
    assert_eq!(condition(&world.status(), "Progressing")["reason"], "AddLearner");
    assert_eq!(world.status()["observedGeneration"], 2);

    // The learner is committed: the list names it before its pod exists.
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &["etcd-3"], "etcd-0", 2, 11);
    let (_, calls) = world.reconcile().await;
    assert_eq!(calls, with(observe_calls(), vec![patch(&cm_path("etcd-members")), event(), status_patch()]));
    assert_eq!(world.api.get(&cm_path("etcd-members")).expect("cm")["data"]["members"], "etcd-0,etcd-1,etcd-2,etcd-3");

    // Then its pod.
    let (_, calls) = world.reconcile().await;
    assert_eq!(calls, with(observe_calls(), vec![patch(&sts_path("etcd")), event(), status_patch()]));
    assert_eq!(world.api.get(&sts_path("etcd")).expect("sts")["spec"]["replicas"], 4);

    // Its pod runs and has caught up: promote.
    world.set_pods(4);
    let (_, calls) = world.reconcile().await;
    assert_eq!(calls, with(observe_calls(), vec![event(), status_patch()]));
    assert_eq!(world.members.take_changes()[0].1, MemberChange::Promote(0xa3));
    assert!(world.members.take_changes().is_empty());
}

#[tokio::test]
async fn invalid_spec_gets_a_condition_and_one_event_and_touches_nothing() {
    let world = steady_three().await;
    let owned_before = owned_objects(&world);
    world.set_spec(|spec| spec["replicas"] = json!(12));
    let (result, calls) = world.reconcile().await;
    assert_eq!(result, Ok(Action::await_change()));
    assert_eq!(calls, vec![status_patch(), event()], "no read or write of owned objects");
    assert_eq!(event_reasons(&world), vec!["InvalidSpec"]);
    let progressing = condition(&world.status(), "Progressing").clone();
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "InvalidSpec");
    assert!(progressing["message"].as_str().unwrap_or_default().contains("spec.replicas is 12"), "{progressing}");
    // Waiting for a change costs nothing: no second status write, no second event.
    let (_, calls) = world.reconcile().await;
    assert_eq!(calls, Vec::<Call>::new());
    assert!(world.members.take_changes().is_empty());
    assert_eq!(owned_objects(&world), owned_before);

    // Fixed, it goes on from where it was.
    world.set_spec(|spec| spec["replicas"] = json!(3));
    let (_, calls) = world.reconcile().await;
    assert_eq!(calls, with(observe_calls(), vec![status_patch()]));
    assert_eq!(condition(&world.status(), "Progressing")["reason"], "Reconciled");
}

fn owned_objects(world: &World) -> BTreeMap<String, Value> {
    world
        .api
        .lock()
        .objects
        .iter()
        .filter(|(path, _)| !path.contains("/raftclusters/"))
        .map(|(p, v)| (p.clone(), v.clone()))
        .collect()
}

/// One random spec that breaks at least one rule (or is fine, and then must run).
fn random_spec(rng: &mut Rng) -> Value {
    let mut spec = json!({});
    let pick = |rng: &mut Rng, values: &[Value]| values[rng.range(0, values.len() as u64) as usize].clone();
    if rng.range(0, 3) == 0 {
        spec["replicas"] = pick(rng, &[json!(0), json!(10), json!(u32::MAX), json!(1), json!(5)]);
    }
    if rng.range(0, 3) == 0 {
        spec["image"] = pick(rng, &[json!(""), json!(" "), json!("a b"), json!("ok:1")]);
    }
    if rng.range(0, 3) == 0 {
        spec["storage"] = json!({"size": pick(rng, &[json!("0"), json!("-1Gi"), json!("lots"), json!("1.5Gi"), json!("1e3"), json!("Gi"), json!("")])});
    }
    if rng.range(0, 2) == 0 {
        let timing = |rng: &mut Rng| {
            pick(rng, &[json!(0), json!(1), json!(50), json!(150), json!(300), json!(u64::MAX), json!(600_001)])
        };
        spec["election"] =
            json!({"timeoutMinMs": timing(rng), "timeoutMaxMs": timing(rng), "heartbeatIntervalMs": timing(rng)});
    }
    if rng.range(0, 4) == 0 {
        spec["snapshotThreshold"] = pick(rng, &[json!(0), json!(1), json!(u64::MAX)]);
    }
    spec
}

#[tokio::test]
async fn random_bad_specs_never_panic_get_a_condition_and_change_no_owned_object() {
    let seed = std::env::var("OPERATOR_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(2026);
    let cases: usize = std::env::var("OPERATOR_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let world = steady_three().await;
    let owned_before = owned_objects(&world);
    let mut rng = Rng::new(seed);
    let mut bad = 0;
    for case in 0..cases {
        let spec = random_spec(&mut rng);
        let cluster_value = {
            let mut object = world.api.get(&cluster_path("etcd")).expect("stored");
            object["spec"] = spec.clone();
            object["metadata"]["generation"] = json!(100 + case);
            object
        };
        // A spec serde cannot even read never reaches reconcile: the watcher reports it.
        let Ok(cluster) = serde_json::from_value::<RaftCluster>(cluster_value.clone()) else { continue };
        let problems = cluster.spec.problems();
        if problems.is_empty() {
            continue;
        }
        bad += 1;
        world.api.put(&cluster_path("etcd"), cluster_value);
        let (result, calls) = world.reconcile().await;
        assert_eq!(result, Ok(Action::await_change()), "case {case}: {spec}");
        assert!(calls.iter().all(|c| c == &status_patch() || c == &event()), "case {case}: {spec}: {calls:?}");
        assert!(event_reasons(&world).contains(&"InvalidSpec".to_string()), "case {case}: an event says why");
        let progressing = condition(&world.status(), "Progressing").clone();
        assert_eq!(progressing["reason"], "InvalidSpec", "case {case}: {spec}");
        let message = progressing["message"].as_str().unwrap_or_default();
        assert!(problems.iter().all(|p| message.contains(p.as_str())), "case {case}: {message}");
        assert!(problems.iter().all(|p| p.starts_with("spec.")), "each problem names its field: {problems:?}");
        assert_eq!(owned_objects(&world), owned_before, "case {case}: {spec}");
        assert!(world.members.take_changes().is_empty());
        // `kuberaft render` refuses the same spec with the same words.
        let yaml = serde_saphyr::to_string(&cluster).expect("yaml");
        let rendered = kuberaft::cli::render::render(&yaml, NS);
        assert!(rendered.is_err(), "case {case}: render accepted {spec}");
    }
    assert!(bad > cases / 4, "the generator makes bad specs: {bad} of {cases}");
}

#[tokio::test]
async fn the_lease_lets_one_replica_lead_until_it_lapses_or_is_released() {
    use kuberaft::operator::controller::LeaseLock;
    let api = FakeApi::default();
    let client = api.client();
    let a = LeaseLock::new(client.clone(), NS, "kuberaft-operator", "operator-a");
    let b = LeaseLock::new(client.clone(), NS, "kuberaft-operator", "operator-b");
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/kuberaft-operator");

    assert_eq!(a.try_acquire().await.ok(), Some(true), "a creates the lease");
    assert_eq!(b.try_acquire().await.ok(), Some(false), "b waits while a's lease is valid");
    assert_eq!(a.try_acquire().await.ok(), Some(true), "a renews");
    let lease = api.get(&path).expect("the lease");
    assert_eq!(lease["spec"]["holderIdentity"], "operator-a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);

    // a stops renewing: once the lease has lapsed, b takes it, and a learns it lost it.
    let mut lapsed = lease.clone();
    lapsed["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z");
    api.put(&path, lapsed);
    assert_eq!(b.try_acquire().await.ok(), Some(true), "b takes the lapsed lease");
    assert_eq!(api.get(&path).expect("lease")["spec"]["leaseTransitions"], 1);
    assert_eq!(a.try_acquire().await.ok(), Some(false), "a has lost it");
    assert!(a.release().await.is_ok(), "releasing a lease one does not hold changes nothing");
    assert_eq!(api.get(&path).expect("lease")["spec"]["holderIdentity"], "operator-b");

    // b shuts down cleanly: it releases, and a takes over at once.
    assert!(b.release().await.is_ok());
    assert_eq!(a.try_acquire().await.ok(), Some(true));
    assert_eq!(api.get(&path).expect("lease")["spec"]["leaseTransitions"], 2);
}

#[tokio::test]
async fn metrics_count_reconciles_steps_and_writes() {
    let world = steady_three().await;
    let (result, _) = world.reconcile().await;
    assert_eq!(result, Ok(Action::requeue(reconcile::REQUEUE_STEADY)));
    let text = kuberaft::operator::controller::render_metrics(&world.ctx, true);
    for line in [
        "kuberaft_operator_reconciles_total 4",
        "kuberaft_operator_reconcile_errors_total 0",
        "kuberaft_operator_steps_total{step=\"Bootstrap\"} 1",
        "kuberaft_operator_steps_total{step=\"UpdateEndpoints\"} 1",
        // Bootstrap: 2 Services, the budget, the NetworkPolicy, the ConfigMap, the StatefulSet;
        // then the list once.
        "kuberaft_operator_object_writes_total 7",
        "kuberaft_operator_status_writes_total 3",
        "kuberaft_operator_reconcile_seconds_count 4",
        "kuberaft_operator_leading 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

/// Every call (events as made, creates and series patches) of the scenarios above together: a
/// first creation, the first leader, a new term, a scale step through promotion, an invalid
/// spec, and the Lease's life. The chart's RBAC must allow each of them.
pub async fn calls_of_a_scale_up_and_a_leader_election() -> Vec<Call> {
    let world = steady_three().await;
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-1", 3, 12);
    world.reconcile().await.0.expect("reconcile");
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-2", 4, 13);
    world.reconcile().await.0.expect("reconcile");
    world.set_spec(|spec| spec["replicas"] = json!(4));
    world.reconcile().await.0.expect("reconcile");
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &["etcd-3"], "etcd-2", 4, 14);
    world.reconcile().await.0.expect("reconcile");
    world.reconcile().await.0.expect("reconcile");
    world.set_pods(4);
    world.reconcile().await.0.expect("reconcile");
    world.set_spec(|spec| spec["replicas"] = json!(0));
    world.reconcile().await.0.expect("reconcile");
    let lease = kuberaft::operator::controller::LeaseLock::new(world.api.client(), NS, "kuberaft-operator", "a");
    assert_eq!(lease.try_acquire().await.ok(), Some(true));
    assert_eq!(lease.try_acquire().await.ok(), Some(true));
    assert!(lease.release().await.is_ok());
    let mut history = world.api.lock().history.clone();
    assert!(history.iter().any(|c| c.method == Method::PATCH && c.path.starts_with(&events_path())), "a series");
    // Clusters with TLS of either issuer.
    for tls in [json!({"auto": {}}), json!({"certManager": {"issuerRef": {"name": "ca"}}})] {
        let world = World::new(json!({"replicas": 3, "tls": tls}));
        world.reconcile().await.0.expect("reconcile");
        history.extend(world.api.lock().history.clone());
    }
    // A cluster with auth: root's password Secret is read, and created when missing.
    history.extend(auth_world_turned_on().await.api.lock().history.clone());
    // A rolling restart: pods are evicted.
    history.extend(rolled_world().await.api.lock().history.clone());
    history
}

fn is_eviction(call: &Call) -> bool {
    call.method == Method::POST && call.path.ends_with("/eviction")
}

/// A steady 3-member cluster led by etcd-0 whose image changed, rolled through: each pod is
/// evicted in turn once every member runs, follows and has caught up; etcd-0 last, after it
/// handed over.
async fn rolled_world() -> World {
    let world = steady_three().await;
    let members = ["etcd-0", "etcd-1", "etcd-2"];
    world.set_spec(|spec| spec["image"] = json!("ghcr.io/kuberaft/kuberaft:next"));
    // The pass that applies the new template observed the pods before it: nothing restarts yet.
    let (result, calls) = world.reconcile().await;
    result.expect("reconcile");
    assert!(calls.contains(&patch(&sts_path("etcd"))), "the new template is applied: {calls:?}");
    assert!(!calls.iter().any(is_eviction), "{calls:?}");
    let sts = world.api.get(&sts_path("etcd")).expect("StatefulSet");
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete", "the controller never restarts a pod itself");

    let mut evicted = Vec::new();
    for member in ["etcd-2", "etcd-1", "etcd-0"] {
        if member == "etcd-0" {
            // The leader last: it hands over to a caught-up follower first, and is restarted
            // once it follows.
            world.members.set_cluster(&members, &[], "etcd-0", 2, 20);
            let (result, calls) = world.reconcile().await;
            result.expect("reconcile");
            assert!(!calls.iter().any(is_eviction), "not while it leads: {calls:?}");
            let changes = world.members.take_changes();
            assert!(
                matches!(changes[..], [(_, MemberChange::TransferLeader(_))]),
                "one transfer before the leader's restart: {changes:?}"
            );
            world.members.set_cluster(&members, &[], "etcd-1", 3, 21);
        } else {
            world.members.set_cluster(&members, &[], "etcd-0", 2, 20);
        }
        let (result, calls) = world.reconcile().await;
        result.expect("reconcile");
        let evictions: Vec<String> = calls.into_iter().filter(is_eviction).map(|c| c.path).collect();
        assert_eq!(evictions.len(), 1, "one member at a time: {evictions:?}");
        evicted.extend(evictions);
        assert!(world.api.get(&pod_path(member)).is_none(), "{member}'s pod is gone");
        let progressing = condition(&world.status(), "Progressing").clone();
        assert_eq!(progressing["reason"], "RestartMember", "{progressing:#}");
        assert!(progressing["message"].as_str().unwrap_or_default().contains(member), "{progressing:#}");
        // Until it runs again, from the new template, follows and has caught up, nothing else
        // restarts. After the last one nothing is left to roll: the plan is done, and its
        // return shows in the members' health.
        let (result, calls) = world.reconcile().await;
        result.expect("reconcile");
        assert!(!calls.iter().any(is_eviction), "one at a time: {calls:?}");
        let progressing = condition(&world.status(), "Progressing").clone();
        if member == "etcd-0" {
            assert_eq!(progressing["reason"], "Reconciled", "{progressing:#}");
        } else {
            assert_eq!(progressing["reason"], "MemberCatchingUp", "{progressing:#}");
            assert!(progressing["message"].as_str().unwrap_or_default().contains(member), "{progressing:#}");
        }
        world.set_pod(member);
    }
    let expected: Vec<String> =
        ["etcd-2", "etcd-1", "etcd-0"].iter().map(|m| format!("{}/eviction", pod_path(m))).collect();
    assert_eq!(evicted, expected, "followers first, the highest ordinal first, the leader last");
    // Every pod runs the new template: steady again, nothing more to restart.
    world.reconcile().await.0.expect("reconcile");
    let (result, calls) = world.reconcile().await;
    assert_eq!(result, Ok(Action::requeue(reconcile::REQUEUE_STEADY)));
    assert!(!calls.iter().any(is_eviction), "{calls:?}");
    assert!(world.members.take_changes().is_empty());
    world
}

/// Issue 17, part 5: an image change rolls the members through evictions, one at a time, the
/// leader last after a handover; Progressing names each, and events record each.
#[tokio::test]
async fn an_image_change_restarts_one_member_at_a_time_and_the_leader_last() {
    let world = rolled_world().await;
    let reasons = event_reasons(&world);
    assert_eq!(reasons.iter().filter(|r| *r == "RestartMember").count(), 3, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| *r == "TransferLeadership").count(), 1, "{reasons:?}");
}

/// Issue 17, part 5: an image that cannot read the members' data (the member exits with code 5:
/// a newer kuberaft wrote it) stops the roll at the first member, with the reason in
/// Progressing and Degraded; the member is never replaced. Setting the image back restarts that
/// member first, and the cluster is steady again.
#[tokio::test]
async fn an_image_too_old_for_the_data_stops_the_roll_and_setting_it_back_restarts_that_member() {
    let world = steady_three().await;
    let members = ["etcd-0", "etcd-1", "etcd-2"];
    world.set_spec(|spec| spec["image"] = json!("ghcr.io/kuberaft/kuberaft:older"));
    world.reconcile().await.0.expect("the new template");
    let (result, calls) = world.reconcile().await;
    result.expect("reconcile");
    assert_eq!(calls.iter().filter(|c| is_eviction(c)).count(), 1, "{calls:?}");
    // etcd-2 comes back from the new template and refuses its data, again and again.
    world.set_pod("etcd-2");
    {
        let mut state = world.api.lock();
        let pod = state.objects.get_mut(&pod_path("etcd-2")).expect("the pod");
        pod["status"]["conditions"][0]["status"] = json!("False");
        pod["status"]["containerStatuses"][0]["ready"] = json!(false);
        pod["status"]["containerStatuses"][0]["state"] = json!({"waiting": {"reason": "CrashLoopBackOff"}});
        pod["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": {"exitCode": 5}});
    }
    world.members.set_cluster(&members, &[], "etcd-0", 2, 20);
    world.members.statuses.lock().expect("lock").remove(&url("etcd-2"));
    for _ in 0..2 {
        let (result, calls) = world.reconcile().await;
        result.expect("reconcile");
        assert!(!calls.iter().any(is_eviction), "the roll stops: {calls:?}");
        assert!(world.members.take_changes().is_empty(), "never replaced");
        let status = world.status();
        let progressing = condition(&status, "Progressing");
        assert_eq!(progressing["reason"], "NewerDataFormat", "{progressing:#}");
        let message = progressing["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("etcd-2 cannot read its data") && message.contains("set spec.image back"),
            "{message}"
        );
        assert_eq!(status["phase"], "Degraded", "{status:#}");
    }
    // The image set back: etcd-2 (down, and of the other template now) restarts first.
    world.set_spec(|spec| spec["image"] = json!(kuberaft::operator::crd::DEFAULT_IMAGE));
    world.reconcile().await.0.expect("the template back");
    let (result, calls) = world.reconcile().await;
    result.expect("reconcile");
    let evictions: Vec<&Call> = calls.iter().filter(|c| is_eviction(c)).collect();
    assert_eq!(evictions, [&Call::new(Method::POST, &format!("{}/eviction", pod_path("etcd-2")))]);
    world.set_pod("etcd-2");
    world.members.set_cluster(&members, &[], "etcd-0", 2, 20);
    world.reconcile().await.0.expect("reconcile");
    let (result, calls) = world.reconcile().await;
    assert_eq!(result, Ok(Action::requeue(reconcile::REQUEUE_STEADY)));
    assert!(!calls.iter().any(is_eviction), "{calls:?}");
    assert_eq!(world.status()["phase"], "Running");
}

/// A `kuberaft.io/restart` annotation on the RaftCluster restarts every member the same way,
/// once per new value; another annotation restarts nothing.
#[tokio::test]
async fn a_restart_annotation_rolls_the_members_once_per_value() {
    let world = steady_three().await;
    let annotate = |key: &str, value: &str| {
        let mut object = world.api.get(&cluster_path("etcd")).expect("stored");
        object["metadata"]["annotations"][key] = json!(value);
        world.api.put(&cluster_path("etcd"), object);
    };
    annotate("example.com/note", "hello");
    for _ in 0..2 {
        let (result, calls) = world.reconcile().await;
        assert_eq!(result, Ok(Action::requeue(reconcile::REQUEUE_STEADY)));
        assert_eq!(calls, observe_calls(), "another annotation changes nothing");
    }
    annotate(kuberaft::operator::builders::RESTART_ANNOTATION, "2026-12-03T10:00:00Z");
    let (result, calls) = world.reconcile().await;
    result.expect("reconcile");
    assert!(calls.contains(&patch(&sts_path("etcd"))), "{calls:?}");
    let sts = world.api.get(&sts_path("etcd")).expect("StatefulSet");
    assert_eq!(
        sts["spec"]["template"]["metadata"]["annotations"][kuberaft::operator::builders::RESTART_ANNOTATION],
        "2026-12-03T10:00:00Z"
    );
    let (result, calls) = world.reconcile().await;
    result.expect("reconcile");
    assert_eq!(calls.iter().filter(|c| is_eviction(c)).count(), 1, "{calls:?}");
    assert!(world.api.get(&pod_path("etcd-2")).is_none(), "a follower first: {calls:?}");
}

fn list(path: &str) -> Call {
    get(path.rsplit_once('/').map_or(path, |(collection, _)| collection))
}

#[tokio::test]
async fn the_auto_issuer_creates_a_ca_and_every_certificate_once_and_the_operator_calls_members_with_its_own() {
    let world = World::new(json!({"replicas": 3, "tls": {"auto": {"certificateDays": 30}}}));
    let (result, calls) = world.reconcile().await;
    assert_eq!(result, Ok(Action::requeue(reconcile::REQUEUE_PROGRESSING)));
    let mut secrets = vec![patch(&secret_path("etcd-ca")), event()];
    secrets.extend((0..9).map(|i| patch(&secret_path(&format!("etcd-{i}-tls")))));
    secrets.extend([patch(&secret_path("etcd-client-tls")), patch(&secret_path("etcd-operator-tls")), event()]);
    let mut expected = observe_calls();
    expected.insert(1, list(&secret_path("x")));
    expected.extend(secrets);
    expected.extend(first_creation_calls());
    assert_eq!(calls, expected);
    assert_eq!(event_reasons(&world), vec!["CertificateAuthorityCreated", "CertificatesIssued", "Bootstrap"]);
    assert_eq!(world.status()["clientSecret"], "etcd-client-tls");
    let secret = world.api.get(&secret_path("etcd-1-tls")).expect("a member's Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "RaftCluster");

    // The members answer: the operator asks them with its own certificate (CN root), and a
    // second pass issues nothing again.
    world.set_pods(3);
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-0", 2, 5);
    let ca_before = world.api.get(&secret_path("etcd-ca"));
    let (result, calls) = world.reconcile().await;
    result.expect("reconcile");
    assert!(calls.iter().all(|c| !c.path.contains("/secrets/")), "nothing re-issued: {calls:?}");
    assert_eq!(world.api.get(&secret_path("etcd-ca")), ca_before, "the CA is kept");
    let identities = world.members.identities.lock().expect("lock").clone();
    assert_eq!(identities.last().cloned().flatten().as_deref(), Some("root"), "{identities:?}");
    let url = world.status()["endpoints"][0].as_str().unwrap_or_default().to_string();
    assert!(url.starts_with("https://"), "{url}");

    // A damaged CA is never replaced: the reconcile fails and says so, and nothing is re-issued.
    let mut ca = world.api.get(&secret_path("etcd-ca")).expect("the CA");
    ca["data"]["ca.key"] = json!(kuberaft::base::base64::encode_base64(b"not a key"));
    world.api.put(&secret_path("etcd-ca"), ca.clone());
    let (result, calls) = world.reconcile().await;
    let error = result.expect_err("a damaged CA");
    assert!(error.contains("etcd-ca") && error.contains("CA key"), "{error}");
    assert!(calls.iter().all(|c| c.method != Method::PATCH || !c.path.contains("/secrets/")), "{calls:?}");
    assert_eq!(world.api.get(&secret_path("etcd-ca")), Some(ca));
}

#[tokio::test]
async fn the_cert_manager_issuer_applies_certificates_once_and_writes_no_secret() {
    let world = World::new(
        json!({"replicas": 3, "tls": {"certManager": {"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}}),
    );
    let (result, calls) = world.reconcile().await;
    result.expect("reconcile");
    let mut expected = observe_calls();
    expected.splice(1..1, [list(&secret_path("x")), list(&certificate_path("x"))]);
    expected.extend((0..9).map(|i| patch(&certificate_path(&format!("etcd-{i}-tls")))));
    expected.extend([patch(&certificate_path("etcd-client-tls")), patch(&certificate_path("etcd-operator-tls"))]);
    assert_eq!(calls[..expected.len()], expected[..]);
    assert!(calls.iter().all(|c| !c.path.contains("/secrets/") || c.method == Method::GET), "{calls:?}");
    let certificate = world.api.get(&certificate_path("etcd-2-tls")).expect("a Certificate");
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(certificate["spec"]["secretName"], "etcd-2-tls");
    // Unchanged Certificates are not applied again.
    let (_, calls) = world.reconcile().await;
    assert!(calls.iter().all(|c| c.method == Method::GET || !c.path.contains("/certificates/")), "{calls:?}");
}

fn post(path: &str) -> Call {
    Call::new(Method::POST, path.rsplit_once('/').map_or(path, |(collection, _)| collection))
}

const AUTH_SPEC: &str = r#"{"replicas": 3, "auth": {"rootPasswordSecret": {"name": "etcd-root"}}}"#;

/// A 3-member cluster with `spec.auth` and no Secret yet, taken to auth on; asserts each pass.
async fn auth_world_turned_on() -> World {
    let world = World::new(serde_json::from_str(AUTH_SPEC).expect("json"));
    // Pass 1: the Secret is read, missing, so created (never applied over one that appears).
    let (result, calls) = world.reconcile().await;
    result.expect("reconcile");
    let mut expected = observe_calls();
    expected.extend([get(&secret_path("etcd-root")), post(&secret_path("etcd-root")), event()]);
    expected.extend(first_creation_calls());
    assert_eq!(calls, expected);
    assert_eq!(event_reasons(&world), vec!["RootPasswordGenerated", "Bootstrap"]);
    let secret = world.api.get(&secret_path("etcd-root")).expect("the Secret");
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "RaftCluster");
    let password = secret["data"]["password"].as_str().and_then(kuberaft::base::base64::decode_base64);
    let password = String::from_utf8(password.expect("base64")).expect("utf-8");
    assert_eq!(password.len(), 32, "{password}");

    // Members run and elect: the list first (the cluster formed), then auth on, as root with the
    // Secret's password, before anything else.
    world.set_pods(3);
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-0", 2, 10);
    world.reconcile().await.0.expect("reconcile");
    assert_eq!(
        world.status()["auth"],
        json!({"enabled": false, "rootPasswordSecret": {"name": "etcd-root", "key": "password"}})
    );
    let (_, calls) = world.reconcile().await;
    assert_eq!(calls, with(observe_calls(), vec![get(&secret_path("etcd-root")), event(), status_patch()]));
    let changes = world.members.take_changes();
    assert_eq!(changes.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(), [MemberChange::EnableAuth]);
    assert_eq!(world.members.passwords.lock().expect("lock").last().cloned().flatten(), Some(password));
    assert_eq!(event_reasons(&world), vec!["UpdateEndpoints", "LeaderElected", "EnableAuth"]);
    world.reconcile().await.0.expect("reconcile");
    assert_eq!(world.status()["auth"]["enabled"], true);
    world
}

#[tokio::test]
async fn spec_auth_creates_roots_password_turns_auth_on_as_root_and_off_when_removed() {
    let world = auth_world_turned_on().await;

    // Steady: reads only, the Secret kept as it is.
    let secret = world.api.get(&secret_path("etcd-root"));
    let (result, calls) = world.reconcile().await;
    assert_eq!(result, Ok(Action::requeue(reconcile::REQUEUE_STEADY)));
    assert_eq!(calls, with(observe_calls(), vec![get(&secret_path("etcd-root"))]));
    assert_eq!(world.api.get(&secret_path("etcd-root")), secret);
    let password = world.members.passwords.lock().expect("lock").last().cloned().flatten();

    // Membership changes go as root.
    world.set_spec(|spec| spec["replicas"] = json!(4));
    world.reconcile().await.0.expect("reconcile");
    assert!(matches!(world.members.take_changes()[..], [(_, MemberChange::AddLearner(_))]));
    assert_eq!(world.members.passwords.lock().expect("lock").last().cloned().flatten(), password);
    world.set_spec(|spec| spec["replicas"] = json!(3));
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-0", 2, 12);
    world.reconcile().await.0.expect("reconcile");

    // spec.auth removed: auth off, still as root (the Secret status.auth recorded).
    world.set_spec(|spec| {
        spec.as_object_mut().expect("object").remove("auth");
    });
    let (result, _) = world.reconcile().await;
    result.expect("reconcile");
    assert_eq!(
        world.members.take_changes().iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
        [MemberChange::DisableAuth]
    );
    assert_eq!(world.members.passwords.lock().expect("lock").last().cloned().flatten(), password);
    world.reconcile().await.0.expect("reconcile");
    assert_eq!(world.status()["auth"], json!({"enabled": false}));
    // Then the Secret is the user's business: not read any more, and auth stays off.
    let (_, calls) = world.reconcile().await;
    assert_eq!(calls, observe_calls());
    assert!(world.members.take_changes().is_empty());
}

#[tokio::test]
async fn a_secret_without_roots_password_fails_the_step_with_its_reason_and_is_never_overwritten() {
    let world = World::new(serde_json::from_str(AUTH_SPEC).expect("json"));
    let mine = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "etcd-root", "namespace": NS}, "data": {"pass": "eA=="}});
    world.api.put(&secret_path("etcd-root"), mine.clone());
    world.reconcile().await.0.expect("bootstrap");
    world.set_pods(3);
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-0", 2, 10);
    world.reconcile().await.0.expect("the list");
    event_reasons(&world);
    let (result, calls) = world.reconcile().await;
    let error = result.expect_err("no password");
    assert!(error.contains("Secret etcd-root has no key \"password\""), "{error}");
    assert!(calls.iter().all(|c| !c.path.contains("/secrets") || c.method == Method::GET), "{calls:?}");
    assert!(world.members.take_changes().is_empty(), "no call without the password");
    assert_eq!(event_reasons(&world), vec!["AuthError"]);
    let progressing = condition(&world.status(), "Progressing").clone();
    assert_eq!(progressing["reason"], "AuthError", "{progressing}");
    assert_eq!(world.api.get(&secret_path("etcd-root")), Some(mine));

    // Fixed by the user: auth goes on with the password given.
    let fixed = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "etcd-root", "namespace": NS}, "data": {"password": "c2VjcmV0"}});
    world.api.put(&secret_path("etcd-root"), fixed);
    world.reconcile().await.0.expect("auth on");
    assert_eq!(
        world.members.take_changes().iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(),
        [MemberChange::EnableAuth]
    );
    assert_eq!(world.members.passwords.lock().expect("lock").last().cloned().flatten().as_deref(), Some("secret"));
}

/// The notes of the `DriftReverted` events since the last look.
fn drift_notes(world: &World) -> Vec<String> {
    world
        .api
        .take_events()
        .iter()
        .filter(|e| e["reason"] == "DriftReverted")
        .map(|e| e["note"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Issue 17, must-show 5.
#[tokio::test]
async fn hand_edits_of_owned_objects_are_put_back_on_the_next_pass_and_other_managers_fields_stay() {
    let world = steady_three().await;
    // Edits as `kubectl edit` leaves them: the fields changed, the hash annotation as it was.
    let mut sts = world.api.get(&sts_path("etcd")).expect("the StatefulSet");
    sts["spec"]["replicas"] = json!(5);
    sts["metadata"]["labels"]["team"] = json!("storage");
    world.api.put(&sts_path("etcd"), sts);
    let mut cm = world.api.get(&cm_path("etcd-members")).expect("the ConfigMap");
    cm["data"]["members"] = json!("etcd-0,etcd-1");
    world.api.put(&cm_path("etcd-members"), cm);

    let (result, _) = world.reconcile().await;
    result.expect("reconcile");
    let sts = world.api.get(&sts_path("etcd")).expect("the StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 3, "replicas put back");
    assert_eq!(sts["metadata"]["labels"]["team"], "storage", "another manager's label stays");
    let cm = world.api.get(&cm_path("etcd-members")).expect("the ConfigMap");
    assert_eq!(cm["data"]["members"], "etcd-0,etcd-1,etcd-2", "the list put back");
    let notes = drift_notes(&world);
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].starts_with("StatefulSet etcd: spec.replicas differed"), "{notes:?}");
    assert!(notes[1].starts_with("ConfigMap etcd-members: data.members differed"), "{notes:?}");

    // Put back once: the next passes write no object and see no drift.
    for _ in 0..2 {
        let (_, calls) = world.reconcile().await;
        assert!(calls.iter().all(|c| c.method != Method::PATCH || c.path.ends_with("/status")), "{calls:?}");
        assert!(drift_notes(&world).is_empty());
    }

    // A key of the ConfigMap that the planner does not read, and a Service's port.
    let mut cm = world.api.get(&cm_path("etcd-members")).expect("the ConfigMap");
    cm["data"]["endpoints"] = json!("http://elsewhere:2379");
    world.api.put(&cm_path("etcd-members"), cm);
    let mut service = world.api.get(&svc_path("etcd-client")).expect("the client Service");
    service["spec"]["ports"][0]["port"] = json!(12379);
    world.api.put(&svc_path("etcd-client"), service);
    let (_, calls) = world.reconcile().await;
    assert!(calls.contains(&patch(&cm_path("etcd-members"))) && calls.contains(&patch(&svc_path("etcd-client"))));
    let notes = drift_notes(&world);
    assert!(notes.iter().any(|n| n.starts_with("Service etcd-client: spec.ports[0].port differed")), "{notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("ConfigMap etcd-members: data.endpoints differed")), "{notes:?}");
    assert_eq!(world.api.get(&svc_path("etcd-client")).expect("Service")["spec"]["ports"][0]["port"], 2379);
}

/// A spec of 3 replicas whose backups go to `bucket` at `endpoint`, keeping `count`.
pub(crate) fn backup_spec(endpoint: &str, count: u32) -> Value {
    json!({"replicas": 3, "backup": {
        // Yearly: the next time is months away, so the passes' requeues are as without backups.
        "schedule": "0 0 1 1 *",
        "retention": {"count": count},
        "destination": {"s3": {"endpoint": endpoint, "bucket": "backups", "credentialsSecret": {"name": "s3-creds"}}},
    }})
}

/// The S3 credentials Secret.
pub(crate) fn put_credentials(world: &World, access_key: &str, secret_key: &str) {
    let data = json!({
        "accessKeyId": kuberaft::base::base64::encode_base64(access_key.as_bytes()),
        "secretAccessKey": kuberaft::base::base64::encode_base64(secret_key.as_bytes()),
    });
    world.api.put(
        &secret_path("s3-creds"),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NS}, "data": data}),
    );
}

/// Time passes: the last backup's scheduled time moves into the past, so that one is due.
pub(crate) fn make_backup_due(world: &World) {
    let mut cluster = world.api.get(&cluster_path("etcd")).expect("stored");
    cluster["status"]["backup"]["lastScheduleTime"] = json!("2000-01-01T00:00:00Z");
    world.api.put(&cluster_path("etcd"), cluster);
}

/// The events since the last look: (reason, note).
pub(crate) fn events_seen(world: &World) -> Vec<(String, String)> {
    let reason = |e: &Value, k: &str| e[k].as_str().unwrap_or_default().to_string();
    world.api.take_events().iter().map(|e| (reason(e, "reason"), reason(e, "note"))).collect()
}

/// Issue 17, must-show 1 (scheduled backups with retention, to a real S3 server).
#[tokio::test]
async fn scheduled_backups_go_to_s3_from_a_follower_keep_the_newest_and_match_the_status() {
    let s3 = crate::s3::S3Server::start("backups").await;
    let world = steady_three_with(backup_spec(&s3.endpoint, 2)).await;
    put_credentials(&world, crate::s3::ACCESS_KEY, crate::s3::SECRET_KEY);
    // Nothing is due yet: the schedule's first time after the cluster came is ahead.
    let (_, calls) = world.reconcile().await;
    assert!(calls.iter().all(|c| !c.path.contains("secrets")), "{calls:?}");
    assert!(world.members.snapshots.lock().expect("lock").is_empty());

    let mut names = Vec::new();
    for (round, revision) in [(1, 40u64), (2, 55), (3, 71)] {
        world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-0", 2, revision);
        make_backup_due(&world);
        let (result, calls) = world.reconcile().await;
        result.expect("reconcile");
        // The cluster is left alone: reads, the status and events only.
        assert!(
            calls.iter().all(|c| c.method == Method::GET || c.path.ends_with("/status") || *c == event()),
            "round {round}: {calls:?}"
        );
        assert!(world.members.take_changes().is_empty());
        let status = world.status();
        let success = &status["backup"]["lastSuccess"];
        let location = success["location"].as_str().expect("a location");
        let name = location.rsplit('/').next().expect("a name").to_string();
        assert!(
            location.starts_with("s3://backups/ns/etcd/etcd-") && name.ends_with(&format!("-r{revision}.snap")),
            "{location}"
        );
        // The object is the member's snapshot, byte for byte; its size, SHA-256 and revision are the status's.
        let objects = s3.objects("backups", "ns/etcd");
        let (_, bytes) = objects.iter().find(|(n, _)| *n == name).expect("the object is in the bucket");
        assert_eq!(bytes, &fake_snapshot(revision));
        let sha: String = bytes[bytes.len() - 32..].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            (success["size"].as_u64(), success["sha256"].as_str()),
            (Some(bytes.len() as u64), Some(sha.as_str()))
        );
        assert_eq!(success["revision"], revision);
        // Taken from a follower, never the leader.
        let asked = world.members.snapshots.lock().expect("lock").last().cloned().expect("a snapshot was asked for");
        assert_ne!(asked, url("etcd-0"));
        assert_eq!(success["member"], if asked == url("etcd-1") { "etcd-1" } else { "etcd-2" });
        assert_eq!(condition(&status, "BackupSucceeded")["status"], "True");
        let events = events_seen(&world);
        assert!(events.iter().any(|(r, n)| r == "BackupSucceeded" && n.contains(&name)), "{name}: {events:?}");
        names.push(name);
        // The retention: the newest two.
        let kept: Vec<String> = objects.iter().map(|(n, _)| n.clone()).collect();
        let expected: Vec<String> = names.iter().rev().take(2).rev().cloned().collect();
        assert_eq!(kept, expected, "round {round}");
        if round == 3 {
            assert!(events.iter().any(|(r, n)| r == "BackupsPruned" && n.contains(&names[0])), "{events:?}");
        }
    }
    // Not due again until the schedule says.
    world.members.snapshots.lock().expect("lock").clear();
    world.reconcile().await.0.expect("reconcile");
    assert!(world.members.snapshots.lock().expect("lock").is_empty());
}

/// Issue 17, must-show 1: a wrong credential, an unreachable endpoint, a missing Secret or a
/// member whose stream is cut gives a failed backup with its reason in the condition, the
/// status and an event, leaves no object behind, and the cluster is unaffected.
#[tokio::test]
async fn failed_backups_say_why_leave_nothing_behind_and_leave_the_cluster_alone() {
    let s3 = crate::s3::S3Server::start("backups").await;
    let world = steady_three_with(backup_spec(&s3.endpoint, 2)).await;
    let fail = |expected: &'static str| {
        let world = &world;
        async move {
            make_backup_due(world);
            let (result, calls) = world.reconcile().await;
            result.expect("a failed backup does not fail the pass");
            assert!(
                calls.iter().all(|c| c.method == Method::GET || c.path.ends_with("/status") || *c == event()),
                "{expected}: {calls:?}"
            );
            assert!(world.members.take_changes().is_empty());
            let status = world.status();
            let failure = &status["backup"]["lastFailure"];
            assert_eq!(failure["reason"], expected, "{status}");
            let backup = condition(&status, "BackupSucceeded");
            assert_eq!((backup["status"].as_str(), backup["reason"].as_str()), (Some("False"), Some(expected)));
            let events = events_seen(world);
            assert!(
                events.iter().any(|(r, n)| r == "BackupFailed" && n.starts_with(expected)),
                "{expected}: {events:?}"
            );
            assert_eq!(status["phase"], "Running", "the cluster runs on");
            failure["message"].as_str().unwrap_or_default().to_string()
        }
    };
    let message = fail("CredentialsMissing").await;
    assert!(message.contains("s3-creds"), "{message}");
    put_credentials(&world, crate::s3::ACCESS_KEY, "not-the-secret");
    let message = fail("CredentialsRejected").await;
    assert!(message.contains("SignatureDoesNotMatch") || message.contains("403"), "{message}");
    put_credentials(&world, "nobody", "nothing");
    fail("CredentialsRejected").await;
    put_credentials(&world, crate::s3::ACCESS_KEY, crate::s3::SECRET_KEY);
    world.members.cut_snapshots.store(true, std::sync::atomic::Ordering::Relaxed);
    let message = fail("BackupFailed").await;
    assert!(message.contains("connection reset"), "{message}");
    assert!(s3.objects("backups", "ns/etcd").is_empty(), "a cut stream leaves no object");
    world.members.cut_snapshots.store(false, std::sync::atomic::Ordering::Relaxed);

    // An endpoint where nothing listens.
    let mut cluster = world.api.get(&cluster_path("etcd")).expect("stored");
    cluster["spec"]["backup"]["destination"]["s3"]["endpoint"] = json!("http://127.0.0.1:9");
    world.api.put(&cluster_path("etcd"), cluster);
    fail("EndpointUnreachable").await;
    assert!(world.status()["backup"].get("lastSuccess").is_none(), "none succeeded");
}

/// `kuberaft snapshot restore s3://...` (what `spec.bootstrap.restore`'s init container runs)
/// against a real S3 server: a missing object and refused credentials fail with their reason,
/// and nothing is left where the data directory would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_from_s3_fail_clearly_for_a_missing_object_and_refused_credentials() {
    let s3 = crate::s3::S3Server::start("backups").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let run = |key: &str, secret: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_kuberaft"))
            .args(["snapshot", "restore", &format!("s3://backups/{key}"), "--data-dir"])
            .arg(&data_dir)
            .args(["--name", "etcd-0", "--initial-cluster", "etcd-0=http://127.0.0.1:2380", "--s3-endpoint"])
            .arg(&s3.endpoint)
            .env("AWS_ACCESS_KEY_ID", crate::s3::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .expect("run kuberaft");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, err) = tokio::task::block_in_place(|| run("ns/etcd/none.snap", crate::s3::SECRET_KEY));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot read s3://backups/ns/etcd/none.snap") && err.contains("not found"), "{err}");
    let (code, err) = tokio::task::block_in_place(|| run("ns/etcd/none.snap", "wrong"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("CredentialsRejected"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "nothing left behind: {left:?}");
}

//! One-shot backups (`RaftSnapshot`, issue 17) against the fake API server, fake members and a
//! real S3 server (s3s-fs): taken once from a follower into the cluster's destination, its
//! status matching the object; kept apart from the scheduled backups' retention; the finalizer
//! of `deletionPolicy: Delete`; waiting and failing with a reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use kube::runtime::controller::Action;
use kuberaft::operator::backup::snapshot::{self, REQUEUE_DELETE, REQUEUE_PENDING};
use kuberaft::operator::crd::snapshot::{RaftSnapshot, FINALIZER};
use serde_json::{json, Value};

use crate::fake_api::*;
use crate::scenarios::*;

impl World {
    /// A RaftSnapshot `name` of `spec`, as `kubectl apply` creates it.
    fn put_snapshot(&self, name: &str, spec: Value) {
        self.api.put(
            &snapshot_path(name),
            json!({
                "apiVersion": "kuberaft.io/v1alpha1", "kind": "RaftSnapshot",
                "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "resourceVersion": "1",
                             "generation": 1},
                "spec": spec,
            }),
        );
    }

    fn raft_snapshot(&self, name: &str) -> Option<RaftSnapshot> {
        self.api.get(&snapshot_path(name)).map(|object| serde_json::from_value(object).expect("a RaftSnapshot"))
    }

    /// One pass of the snapshot controller over `seen` (what its cache holds, which may be
    /// older than the API server's); returns its result and calls.
    async fn reconcile_snapshot_as(&self, seen: RaftSnapshot) -> (Result<Action, String>, Vec<Call>) {
        self.api.take_calls();
        let result = snapshot::reconcile(Arc::new(seen), self.ctx.clone()).await.map_err(|e| e.to_string());
        (result, self.api.take_calls())
    }

    async fn reconcile_snapshot(&self, name: &str) -> (Result<Action, String>, Vec<Call>) {
        self.reconcile_snapshot_as(self.raft_snapshot(name).expect("stored")).await
    }

    fn snapshot_status(&self, name: &str) -> Value {
        self.api.get(&snapshot_path(name)).map(|s| s["status"].clone()).unwrap_or(Value::Null)
    }

    /// `kubectl delete raftsnapshot NAME`: the API server marks it; it goes when no finalizer is
    /// left.
    fn delete_snapshot(&self, name: &str) {
        let mut object = self.api.get(&snapshot_path(name)).expect("stored");
        if object["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty) {
            self.api.lock().objects.remove(&snapshot_path(name));
            return;
        }
        object["metadata"]["deletionTimestamp"] = json!("2026-12-03T12:00:00Z");
        self.api.put(&snapshot_path(name), object);
    }
}

/// The events since the last look: (kind of the object, reason, note).
fn events_about(world: &World) -> Vec<(String, String, String)> {
    let text = |e: &Value, k: &str| e[k].as_str().unwrap_or_default().to_string();
    world
        .api
        .take_events()
        .iter()
        .map(|e| (text(&e["regarding"], "kind"), text(e, "reason"), text(e, "note")))
        .collect()
}

/// The SHA-256 a snapshot file ends with, in hex.
fn trailing_sha(bytes: &[u8]) -> String {
    bytes[bytes.len() - 32..].iter().map(|b| format!("{b:02x}")).collect()
}

/// A cluster with scheduled backups keeping 1, whose members are at `revision`.
async fn backed_up_world(endpoint: &str, revision: u64) -> World {
    let world = steady_three_with(backup_spec(endpoint, 1)).await;
    put_credentials(&world, crate::s3::ACCESS_KEY, crate::s3::SECRET_KEY);
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-0", 2, revision);
    world.api.take_events();
    world
}

#[tokio::test]
async fn a_raft_snapshot_is_taken_once_from_a_follower_and_its_status_matches_the_object() {
    let s3 = crate::s3::S3Server::start("backups").await;
    let world = backed_up_world(&s3.endpoint, 64).await;
    world.put_snapshot("before-upgrade", json!({"clusterName": "etcd"}));
    let stale = world.raft_snapshot("before-upgrade").expect("stored");

    let (result, calls) = world.reconcile_snapshot("before-upgrade").await;
    assert_eq!(result, Ok(Action::await_change()));
    // The cluster is read and left alone: reads, the snapshot's status, events.
    let writes: Vec<&Call> = calls.iter().filter(|c| c.method != Method::GET).collect();
    assert!(
        writes
            .iter()
            .all(|c| c.path == format!("{}/status", snapshot_path("before-upgrade")) || c.path == events_path()),
        "{writes:?}"
    );
    assert!(world.members.take_changes().is_empty());

    let status = world.snapshot_status("before-upgrade");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    let location = status["location"].as_str().expect("a location");
    assert!(location.starts_with("s3://backups/ns/etcd/snapshots/before-upgrade-") && location.ends_with("-r64.snap"));
    let name = location.rsplit('/').next().expect("a name").to_string();
    let objects = s3.objects("backups", "ns/etcd/snapshots");
    assert_eq!(objects.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), vec![name.clone()]);
    let bytes = &objects[0].1;
    assert_eq!(bytes, &fake_snapshot(64));
    assert_eq!(
        (status["size"].as_u64(), status["sha256"].as_str(), status["revision"].as_i64()),
        (Some(bytes.len() as u64), Some(trailing_sha(bytes).as_str()), Some(64))
    );
    // What a new cluster's spec.bootstrap.restore.s3 takes.
    assert_eq!(status["s3"]["bucket"], "backups");
    assert_eq!(status["s3"]["key"], format!("ns/etcd/snapshots/{name}"));
    assert_eq!(status["s3"]["endpoint"], s3.endpoint.as_str());
    assert!(status["startTime"].is_string() && status["completionTime"].is_string());
    // From a follower, never the leader.
    let asked = world.members.snapshots.lock().expect("lock").clone();
    assert_eq!(asked.len(), 1);
    assert_ne!(asked[0], url("etcd-0"));
    assert_ne!(status["member"], "etcd-0");
    // Retain: no finalizer.
    assert!(world.raft_snapshot("before-upgrade").expect("stored").metadata.finalizers.is_none());
    let events = events_about(&world);
    for kind in ["RaftSnapshot", "RaftCluster"] {
        assert!(
            events.iter().any(|(k, r, n)| k == kind && r == "SnapshotSucceeded" && n.contains(&name)),
            "{kind}: {events:?}"
        );
    }

    // Taken once: another pass, even over the cache's stale Pending copy, takes nothing.
    for seen in [world.raft_snapshot("before-upgrade").expect("stored"), stale] {
        let (result, calls) = world.reconcile_snapshot_as(seen).await;
        assert_eq!(result, Ok(Action::await_change()));
        assert_eq!(calls, vec![Call::new(Method::GET, &snapshot_path("before-upgrade"))]);
    }
    assert_eq!(world.members.snapshots.lock().expect("lock").len(), 1);

    // The scheduled backups (keeping 1) never prune it.
    for revision in [70, 75] {
        world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-0", 2, revision);
        make_backup_due(&world);
        world.reconcile().await.0.expect("reconcile");
        assert_eq!(world.status()["backup"]["lastSuccess"]["revision"], revision);
    }
    assert_eq!(s3.objects("backups", "ns/etcd").len(), 1, "the retention keeps one backup");
    assert_eq!(s3.objects("backups", "ns/etcd/snapshots").len(), 1, "and the snapshot");

    // Deleting a Retain snapshot leaves its object.
    world.delete_snapshot("before-upgrade");
    assert!(world.raft_snapshot("before-upgrade").is_none());
    assert_eq!(s3.objects("backups", "ns/etcd/snapshots").len(), 1);
}

/// What the RBAC test needs of the snapshot controller: its calls through a Delete-policy
/// snapshot's life, a failed deletion included.
pub async fn calls_of_a_deleted_snapshot() -> Vec<Call> {
    let s3 = crate::s3::S3Server::start("backups").await;
    let world = deleted_snapshot_world(&s3).await;
    let history = world.api.lock().history.clone();
    history
}

/// A snapshot with `deletionPolicy: Delete` to its own destination, taken, then deleted: once
/// while the store refuses the credentials, then for real. Asserts each step.
async fn deleted_snapshot_world(s3: &crate::s3::S3Server) -> World {
    let world = backed_up_world(&s3.endpoint, 80).await;
    let destination = json!({"s3": {"endpoint": s3.endpoint, "bucket": "backups", "prefix": "oneshot",
                                    "credentialsSecret": {"name": "s3-creds"}}});
    world.put_snapshot("tmp", json!({"clusterName": "etcd", "destination": destination, "deletionPolicy": "Delete"}));
    let (result, _) = world.reconcile_snapshot("tmp").await;
    assert_eq!(result, Ok(Action::await_change()));
    let status = world.snapshot_status("tmp");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    assert!(status["location"].as_str().is_some_and(|l| l.starts_with("s3://backups/oneshot/snapshots/tmp-")));
    assert_eq!(s3.objects("backups", "oneshot/snapshots").len(), 1);
    let finalizers = world.raft_snapshot("tmp").expect("stored").metadata.finalizers;
    assert_eq!(finalizers, Some(vec![FINALIZER.to_string()]));
    events_about(&world);

    // Deleted while the store refuses the credentials: the resource and the object stay, and
    // the status and an event say why; it is tried again later.
    put_credentials(&world, crate::s3::ACCESS_KEY, "not-the-secret");
    world.delete_snapshot("tmp");
    let (result, _) = world.reconcile_snapshot("tmp").await;
    assert_eq!(result, Ok(Action::requeue(REQUEUE_DELETE)));
    assert!(world.raft_snapshot("tmp").is_some());
    assert_eq!(s3.objects("backups", "oneshot/snapshots").len(), 1);
    let status = world.snapshot_status("tmp");
    assert_eq!((status["phase"].as_str(), status["reason"].as_str()), (Some("Succeeded"), Some("DeleteFailed")));
    assert!(status["message"].as_str().is_some_and(|m| m.contains("CredentialsRejected")), "{status}");
    let events = events_about(&world);
    assert!(events.iter().any(|(_, r, _)| r == "SnapshotDeleteFailed"), "{events:?}");

    // With the credentials back, the object goes, then the resource.
    put_credentials(&world, crate::s3::ACCESS_KEY, crate::s3::SECRET_KEY);
    let (result, _) = world.reconcile_snapshot("tmp").await;
    assert_eq!(result, Ok(Action::await_change()));
    assert!(s3.objects("backups", "oneshot/snapshots").is_empty());
    assert!(world.raft_snapshot("tmp").is_none(), "the finalizer is gone, and with it the resource");
    let events = events_about(&world);
    assert!(events.iter().any(|(_, r, n)| r == "SnapshotDeleted" && n.contains("s3://backups/oneshot/")), "{events:?}");
    world
}

#[tokio::test]
async fn deletion_policy_delete_holds_the_resource_until_its_object_is_deleted() {
    let s3 = crate::s3::S3Server::start("backups").await;
    deleted_snapshot_world(&s3).await;
}

#[tokio::test]
async fn a_raft_snapshot_waits_for_its_cluster_and_a_leader_and_fails_for_good_with_its_reason() {
    let s3 = crate::s3::S3Server::start("backups").await;
    let world = backed_up_world(&s3.endpoint, 90).await;
    let status_of = |name: &str| {
        let status = world.snapshot_status(name);
        (
            status["phase"].as_str().unwrap_or_default().to_string(),
            status["reason"].as_str().unwrap_or_default().to_string(),
        )
    };

    // No such cluster yet: it waits.
    world.put_snapshot("early", json!({"clusterName": "later"}));
    assert_eq!(world.reconcile_snapshot("early").await.0, Ok(Action::requeue(REQUEUE_PENDING)));
    assert_eq!(status_of("early"), ("Pending".to_string(), "ClusterNotFound".to_string()));

    // No leader: it waits, takes nothing, and goes on once there is one.
    world.members.statuses.lock().expect("lock").clear();
    world.put_snapshot("now", json!({"clusterName": "etcd"}));
    assert_eq!(world.reconcile_snapshot("now").await.0, Ok(Action::requeue(REQUEUE_PENDING)));
    assert_eq!(status_of("now"), ("Pending".to_string(), "NoMember".to_string()));
    // Paused: it waits too.
    world.set_spec(|spec| spec["paused"] = json!(true));
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-0", 2, 90);
    assert_eq!(world.reconcile_snapshot("now").await.0, Ok(Action::requeue(REQUEUE_PENDING)));
    assert_eq!(status_of("now"), ("Pending".to_string(), "ClusterPaused".to_string()));
    assert!(world.members.snapshots.lock().expect("lock").is_empty());
    world.set_spec(|spec| spec["paused"] = json!(false));
    assert_eq!(world.reconcile_snapshot("now").await.0, Ok(Action::await_change()));
    assert_eq!(status_of("now").0, "Succeeded");

    // Credentials the store refuses: Failed for good, with the reason, an event, no object; a
    // Delete policy's finalizer then goes without a store call.
    put_credentials(&world, crate::s3::ACCESS_KEY, "not-the-secret");
    world.put_snapshot("refused", json!({"clusterName": "etcd", "deletionPolicy": "Delete"}));
    events_about(&world);
    assert_eq!(world.reconcile_snapshot("refused").await.0, Ok(Action::await_change()));
    assert_eq!(status_of("refused"), ("Failed".to_string(), "CredentialsRejected".to_string()));
    let events = events_about(&world);
    assert!(events
        .iter()
        .any(|(k, r, n)| k == "RaftSnapshot" && r == "SnapshotFailed" && n.contains("CredentialsRejected")));
    assert_eq!(s3.objects("backups", "ns/etcd/snapshots").len(), 1, "only the one that succeeded");
    put_credentials(&world, crate::s3::ACCESS_KEY, crate::s3::SECRET_KEY);
    assert_eq!(world.reconcile_snapshot("refused").await.0, Ok(Action::await_change()), "final");
    assert_eq!(world.members.snapshots.lock().expect("lock").len(), 2, "one transfer each");
    world.delete_snapshot("refused");
    assert_eq!(world.reconcile_snapshot("refused").await.0, Ok(Action::await_change()));
    assert!(world.raft_snapshot("refused").is_none());

    // A cluster without a backup destination, and none of its own: Failed.
    world.set_spec(|spec| {
        spec.as_object_mut().expect("a map").remove("backup");
    });
    world.put_snapshot("nowhere", json!({"clusterName": "etcd"}));
    assert_eq!(world.reconcile_snapshot("nowhere").await.0, Ok(Action::await_change()));
    assert_eq!(status_of("nowhere"), ("Failed".to_string(), "NoDestination".to_string()));
    assert!(world.snapshot_status("nowhere")["message"].as_str().is_some_and(|m| m.contains("create another")));

    // A spec the schema should have refused (written past an older CRD): Failed, untaken.
    world.put_snapshot("bad", json!({"clusterName": "Not_A_Name"}));
    assert_eq!(world.reconcile_snapshot("bad").await.0, Ok(Action::await_change()));
    assert_eq!(status_of("bad"), ("Failed".to_string(), "InvalidSpec".to_string()));
    assert_eq!(world.members.snapshots.lock().expect("lock").len(), 2);
}

/// The Jobs of the fake API server: name → object.
fn jobs(world: &World) -> BTreeMap<String, Value> {
    let prefix = format!("{}/", jobs_path());
    let api = world.api.lock();
    api.objects.iter().filter_map(|(p, v)| Some((p.strip_prefix(&prefix)?.to_string(), v.clone()))).collect()
}

/// The Job controller and the kubelet, once the Job `name`'s pod has run: the pod terminated with
/// `code` and the termination `message` (none: the pod never ran), and the Job's outcome.
fn finish_job(world: &World, name: &str, code: i32, message: Option<&str>) {
    let path = format!("{}/{name}", jobs_path());
    let mut job = world.api.get(&path).expect("the Job");
    job["status"] = if code == 0 {
        json!({"succeeded": 1})
    } else {
        json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                            "message": "Job was active longer than specified deadline"}]})
    };
    world.api.put(&path, job);
    if let Some(message) = message {
        world.api.put(
            &pod_path(&format!("{name}-x7k2p")),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("{name}-x7k2p"), "namespace": NS,
                                                               "labels": {"job-name": name}},
                   "status": {"containerStatuses": [{"name": "backup", "ready": false, "restartCount": 0, "image": "i",
                                                    "imageID": "", "state": {"terminated": {"exitCode": code, "message": message}}}]}}),
        );
    }
}

/// A cluster whose backups go onto the claim `etcd-backups`, keeping 2 of at most 48 hours.
async fn claim_world(revision: u64) -> World {
    let world = steady_three_with(json!({"replicas": 3, "backup": {
        "schedule": "0 0 1 1 *", "retention": {"count": 2, "maxAgeHours": 48},
        "destination": {"persistentVolumeClaim": {"claimName": "etcd-backups"}}}}))
    .await;
    world.members.set_cluster(&["etcd-0", "etcd-1", "etcd-2"], &[], "etcd-0", 2, revision);
    world.api.take_events();
    world
}

/// Issue 17: scheduled backups onto a PersistentVolumeClaim. The operator cannot mount a claim:
/// when a backup is due it starts a Job (the members' image, the claim mounted, `kuberaft backup
/// take` of a follower with the retention), records the result the Job's pod leaves as its
/// termination message as it records a bucket's, and deletes the Job. A Job that failed, or left
/// nothing, is a failed backup with the reason.
#[tokio::test]
async fn scheduled_backups_onto_a_claim_run_as_jobs_whose_results_are_recorded() {
    let world = claim_world(50).await;
    // Nothing due: no Job, and not one call about Jobs.
    let (result, calls) = world.reconcile().await;
    result.expect("reconcile");
    assert!(calls.iter().all(|c| !c.path.contains("/jobs")), "{calls:?}");
    assert!(jobs(&world).is_empty());

    make_backup_due(&world);
    world.reconcile().await.0.expect("reconcile");
    let started = jobs(&world);
    assert_eq!(started.len(), 1, "{started:?}");
    let (name, object) = started.into_iter().next().expect("a Job");
    assert!(name.starts_with("etcd-backup-"), "{name}");
    let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(object).expect("a Job");
    let annotations = job.metadata.annotations.clone().unwrap_or_default();
    let member = annotations["kuberaft.io/member"].clone();
    assert_ne!(member, "etcd-0", "from a follower, never the leader");
    let owner = &job.metadata.owner_references.clone().expect("an owner")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("RaftCluster", "etcd"));
    let spec = job.spec.clone().expect("a spec");
    assert_eq!((spec.backoff_limit, spec.active_deadline_seconds), (Some(0), Some(3600)));
    let pod = spec.template.spec.expect("a pod");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let container = &pod.containers[0];
    assert_eq!(
        container.args.clone().expect("args"),
        [
            "backup",
            "take",
            "--endpoints",
            &url(&member),
            "--dir",
            "/var/lib/kuberaft-backup/ns/etcd",
            "--name",
            "etcd",
            "--result",
            "/var/run/kuberaft/result",
            "--keep",
            "2",
            "--max-age-hours",
            "48"
        ]
    );
    assert_eq!(container.termination_message_path.as_deref(), Some("/var/run/kuberaft/result"));
    let claim = pod.volumes.expect("volumes")[0].persistent_volume_claim.clone().expect("the claim");
    assert_eq!(claim.claim_name, "etcd-backups");
    let labels = spec.template.metadata.and_then(|m| m.labels).unwrap_or_default();
    assert_eq!(labels.get("app.kubernetes.io/component").map(String::as_str), Some("backup"), "never a member");

    // While it runs: no second Job, nothing recorded.
    world.reconcile().await.0.expect("reconcile");
    assert_eq!(jobs(&world).len(), 1);
    assert!(world.status()["backup"].get("lastSuccess").is_none());

    // It finishes: recorded as kept, with an event, and the Job deleted.
    let file = "etcd-20261203T100000.000Z-r50.snap";
    let kept = json!({"file": file, "revision": 50, "size": 4096, "sha256": "ab12", "time": "2026-12-03T10:00:01Z",
                      "pruned": ["etcd-20261201T100000.000Z-r20.snap"]});
    finish_job(&world, &name, 0, Some(&format!("{kept}\n")));
    let (result, calls) = world.reconcile().await;
    result.expect("reconcile");
    assert!(calls.contains(&Call::new(Method::DELETE, &format!("{}/{name}", jobs_path()))), "{calls:?}");
    assert!(jobs(&world).is_empty());
    let backup = world.status()["backup"].clone();
    let success = &backup["lastSuccess"];
    assert_eq!(success["location"], format!("pvc://etcd-backups/ns/etcd/{file}"));
    assert_eq!((success["revision"].as_i64(), success["size"].as_u64()), (Some(50), Some(4096)));
    assert_eq!((success["sha256"].as_str(), success["member"].as_str()), (Some("ab12"), Some(member.as_str())));
    assert_eq!(backup["lastScheduleTime"].as_str(), annotations.get("kuberaft.io/scheduled").map(String::as_str));
    let events = events_seen(&world);
    assert!(
        events.iter().any(|(r, n)| r == "BackupSucceeded" && n.contains("pvc://etcd-backups/ns/etcd/")),
        "{events:?}"
    );
    assert!(events.iter().any(|(r, n)| r == "BackupsPruned" && n.contains("r20.snap")), "{events:?}");
    // Not due again: no calls about Jobs.
    let (_, calls) = world.reconcile().await;
    assert!(calls.iter().all(|c| !c.path.contains("/jobs")), "{calls:?}");

    // The next one fails in the Job: a failed backup with its reason and message.
    make_backup_due(&world);
    world.reconcile().await.0.expect("reconcile");
    let name = jobs(&world).into_keys().next().expect("a Job");
    let refused = json!({"reason": "BackupFailed", "message": "cannot take a snapshot of etcd-1: connection refused"});
    finish_job(&world, &name, 1, Some(&refused.to_string()));
    world.reconcile().await.0.expect("reconcile");
    let failure = world.status()["backup"]["lastFailure"].clone();
    assert_eq!(failure["reason"], "BackupFailed");
    assert!(failure["message"].as_str().is_some_and(|m| m.contains("connection refused")), "{failure}");
    assert_eq!(world.status()["backup"]["lastSuccess"]["revision"], 50, "the last kept stays");
    assert!(jobs(&world).is_empty());
    assert!(events_seen(&world).iter().any(|(r, _)| r == "BackupFailed"));

    // A Job whose pod left nothing (it never ran): failed, saying so.
    make_backup_due(&world);
    world.reconcile().await.0.expect("reconcile");
    let name = jobs(&world).into_keys().next().expect("a Job");
    finish_job(&world, &name, 1, None);
    world.reconcile().await.0.expect("reconcile");
    let message = world.status()["backup"]["lastFailure"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("left no result") && message.contains("DeadlineExceeded"), "{message}");
}

/// What the RBAC test needs of claim backups: the calls of a scheduled one, and of a
/// RaftSnapshot's taken and deleted.
pub async fn calls_of_claim_backups() -> Vec<Call> {
    let world = claim_snapshot_world().await;
    make_backup_due(&world);
    world.reconcile().await.0.expect("reconcile");
    let name = jobs(&world).into_keys().next().expect("a Job");
    finish_job(&world, &name, 0, Some(r#"{"file": "etcd-1.snap", "revision": 1, "size": 1, "sha256": "a"}"#));
    world.reconcile().await.0.expect("reconcile");
    let history = world.api.lock().history.clone();
    history
}

/// A RaftSnapshot with `deletionPolicy: Delete` onto the cluster's claim: a Job takes it, and
/// another deletes its file (the first try failing). Asserts each step.
async fn claim_snapshot_world() -> World {
    let world = claim_world(64).await;
    world.put_snapshot("to-claim", json!({"clusterName": "etcd", "deletionPolicy": "Delete"}));
    assert_eq!(world.reconcile_snapshot("to-claim").await.0, Ok(Action::requeue(REQUEUE_PENDING)));
    let status = world.snapshot_status("to-claim");
    assert_eq!(status["phase"], "Running");
    assert!(status["message"].as_str().is_some_and(|m| m.contains("the Job to-claim-snapshot")), "{status}");
    let job = jobs(&world).remove("to-claim-snapshot").expect("its Job");
    let args: Vec<String> =
        serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["args"].clone()).expect("args");
    let flag = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].clone());
    assert_eq!(flag("--dir").as_deref(), Some("/var/lib/kuberaft-backup/ns/etcd/snapshots"));
    assert_eq!(flag("--name").as_deref(), Some("to-claim"));
    assert!(!args.contains(&"--keep".to_string()), "the schedule's retention never prunes it: {args:?}");
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "RaftSnapshot");
    // Another pass while it runs: the same Job, no second.
    assert_eq!(world.reconcile_snapshot("to-claim").await.0, Ok(Action::requeue(REQUEUE_PENDING)));
    assert_eq!(jobs(&world).len(), 1);

    let file = "to-claim-20261203T100000.000Z-r64.snap";
    let kept = json!({"file": file, "revision": 64, "size": 2048, "sha256": "cd34"});
    finish_job(&world, "to-claim-snapshot", 0, Some(&kept.to_string()));
    assert_eq!(world.reconcile_snapshot("to-claim").await.0, Ok(Action::await_change()));
    let status = world.snapshot_status("to-claim");
    assert_eq!(status["phase"], "Succeeded", "{status}");
    let path = format!("ns/etcd/snapshots/{file}");
    assert_eq!(status["location"], format!("pvc://etcd-backups/{path}"));
    assert_eq!(status["persistentVolumeClaim"], json!({"claimName": "etcd-backups", "path": path}));
    assert_eq!((status["revision"].as_i64(), status["size"].as_u64()), (Some(64), Some(2048)));
    assert!(jobs(&world).is_empty(), "the Job is deleted once read");
    let events = events_about(&world);
    for kind in ["RaftSnapshot", "RaftCluster"] {
        assert!(events.iter().any(|(k, r, _)| k == kind && r == "SnapshotSucceeded"), "{kind}: {events:?}");
    }

    // Deleted: a Job deletes the file. It fails once: the resource stays, saying why.
    world.delete_snapshot("to-claim");
    assert_eq!(world.reconcile_snapshot("to-claim").await.0, Ok(Action::requeue(REQUEUE_PENDING)));
    let job = jobs(&world).remove("to-claim-delete").expect("the deleting Job");
    let args = job["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert_eq!(
        args,
        json!(["backup", "delete", "--dir", "/var/lib/kuberaft-backup", path, "--result", "/var/run/kuberaft/result"])
    );
    finish_job(&world, "to-claim-delete", 1, Some(r#"{"reason": "BackupFailed", "message": "Read-only file system"}"#));
    assert_eq!(world.reconcile_snapshot("to-claim").await.0, Ok(Action::requeue(REQUEUE_DELETE)));
    assert!(world.raft_snapshot("to-claim").is_some());
    let status = world.snapshot_status("to-claim");
    assert_eq!(status["reason"], "DeleteFailed");
    assert!(status["message"].as_str().is_some_and(|m| m.contains("Read-only file system")), "{status}");
    assert!(events_about(&world).iter().any(|(_, r, _)| r == "SnapshotDeleteFailed"));
    // The next try, with a new Job, succeeds: the resource goes.
    assert_eq!(world.reconcile_snapshot("to-claim").await.0, Ok(Action::requeue(REQUEUE_PENDING)));
    finish_job(&world, "to-claim-delete", 0, Some(&json!({"file": path}).to_string()));
    assert_eq!(world.reconcile_snapshot("to-claim").await.0, Ok(Action::await_change()));
    assert!(world.raft_snapshot("to-claim").is_none(), "the finalizer is gone, and with it the resource");
    assert!(jobs(&world).is_empty());
    let events = events_about(&world);
    assert!(events.iter().any(|(_, r, n)| r == "SnapshotDeleted" && n.contains("pvc://etcd-backups/")), "{events:?}");
    world
}

#[tokio::test]
async fn a_raft_snapshot_onto_a_claim_is_taken_and_deleted_by_jobs() {
    claim_snapshot_world().await;
}

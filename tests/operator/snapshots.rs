//! One-shot backups (`RaftSnapshot`, issue 17) against the fake API server, fake members and a
//! real S3 server (s3s-fs): taken once from a follower into the cluster's destination, its
//! status matching the object; kept apart from the scheduled backups' retention; the finalizer
//! of `deletionPolicy: Delete`; waiting and failing with a reason.

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

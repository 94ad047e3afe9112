//! One-shot backups: the `RaftSnapshot` resource (DESIGN.md §6). A RaftSnapshot names a
//! RaftCluster; the operator takes one backup of it, as a scheduled backup is taken (a healthy
//! follower's `GET /v1/snapshot`, streamed and checked into the bucket), into the snapshot's
//! destination or the cluster's `spec.backup.destination`, and reports it in the snapshot's
//! status. It is taken once: Succeeded and Failed are final.
//!
//! It waits (`Pending`) while the cluster does not exist, is paused or has no leader with a
//! majority. With `deletionPolicy: Delete` a finalizer holds the resource, once a transfer
//! starts, until its object is deleted from the store; `Retain` leaves the object when the
//! resource goes.
//!
//! Each pass reads the snapshot again from the API server first: the controller's cache may
//! still show a phase this operator has already moved past, and a stale `Pending` must not take
//! a second backup.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::job::{self, Task};
use super::objects::{Failure, Objects};
use super::run::{target, transfer};
use super::{source, SUFFIX};
use crate::operator::crd::snapshot::{
    DeletionPolicy, RaftSnapshot, RaftSnapshotStatus, FAILED, FINALIZER, PENDING, RUNNING, SUCCEEDED,
};
use crate::operator::crd::{BackupDestination, PvcSource, RaftCluster, RaftClusterStatus, S3Source, SnapshotSource};
use crate::operator::reconcile::{self, event, publish_each, Context, ReconcileError, FIELD_MANAGER};

/// How soon a waiting snapshot looks again.
pub const REQUEUE_PENDING: Duration = Duration::from_secs(5);
/// How soon a deletion whose object could not be deleted tries again.
pub const REQUEUE_DELETE: Duration = Duration::from_secs(30);
/// The folder under the destination's prefix that one-shot backups go to.
pub const FOLDER: &str = "snapshots";

/// The object name (under the destination's prefix) of the snapshot `name` taken at `at`
/// holding `revision`.
pub fn object_name(name: &str, at: Timestamp, revision: i64) -> String {
    format!("{FOLDER}/{name}-{}-r{revision}{SUFFIX}", at.strftime("%Y%m%dT%H%M%S%.3fZ"))
}

/// Where the snapshot goes: its own destination, or its cluster's backup destination; the
/// prefix defaults to `<namespace>/<cluster>` as the scheduled backups' does.
pub fn destination(snapshot: &RaftSnapshot, cluster: &RaftCluster) -> Option<(BackupDestination, String)> {
    let destination = match &snapshot.spec.destination {
        Some(destination) => destination.clone(),
        None => cluster.spec.backup.as_ref()?.destination.clone(),
    };
    let given = match (&destination.s3, &destination.persistent_volume_claim) {
        (Some(s3), _) => s3.prefix.as_ref(),
        (None, Some(claim)) => claim.prefix.as_ref(),
        (None, None) => None,
    };
    let prefix = super::prefix(cluster, given);
    Some((destination, prefix))
}

/// The Job that takes a RaftSnapshot onto a claim, and the one that deletes its file.
pub fn job_name(snapshot: &RaftSnapshot, task: Task) -> String {
    job::job_name(&snapshot.name_any(), task.label())
}

/// What `spec.bootstrap.restore.snapshot` of `cluster` names, resolved: the file its
/// RaftSnapshot stored (kept in `status.restoreSource` once read, so the RaftSnapshot may go
/// afterwards); `Ok(None)` when the restore names no RaftSnapshot. `Err` says why the cluster
/// cannot start yet: the RaftSnapshot does not exist, has not succeeded, or failed.
pub async fn restore_source(
    ctx: &Context,
    cluster: &RaftCluster,
    previous: &RaftClusterStatus,
) -> Result<Option<SnapshotSource>, ReconcileError> {
    let Some(reference) = cluster.spec.bootstrap.as_ref().and_then(|b| b.restore.snapshot.as_ref()) else {
        return Ok(None);
    };
    if let Some(source) = &previous.restore_source {
        return Ok(Some(source.clone()));
    }
    let namespace = cluster.namespace().unwrap_or_default();
    let api: Api<RaftSnapshot> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = &reference.name;
    let why = match api.get_opt(name).await? {
        None => format!("RaftSnapshot {name} does not exist"),
        Some(snapshot) => {
            let status = snapshot.status.unwrap_or_default();
            let has_file = status.source.s3.is_some() || status.source.persistent_volume_claim.is_some();
            match status.phase.as_deref() {
                Some(SUCCEEDED) if has_file => return Ok(Some(status.source)),
                Some(FAILED) => format!(
                    "RaftSnapshot {name} failed ({}); name another in a new RaftCluster",
                    status.message.unwrap_or_default()
                ),
                phase => format!("RaftSnapshot {name} has not succeeded (phase {})", phase.unwrap_or("none")),
            }
        }
    };
    Err(ReconcileError::RestoreSource(why))
}

/// `cluster` with its restore's RaftSnapshot replaced by the file it names, as the builders take it.
pub fn with_restore_source(cluster: &RaftCluster, source: SnapshotSource) -> RaftCluster {
    let mut resolved = cluster.clone();
    if let Some(bootstrap) = resolved.spec.bootstrap.as_mut() {
        bootstrap.restore.source = source;
        bootstrap.restore.snapshot = None;
    }
    resolved
}

/// One pass over a RaftSnapshot (module docs).
pub async fn reconcile(snapshot: Arc<RaftSnapshot>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = snapshot.namespace().unwrap_or_default();
    let api: Api<RaftSnapshot> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(snapshot) = api.get_opt(&snapshot.name_any()).await? else { return Ok(Action::await_change()) };
    if snapshot.meta().deletion_timestamp.is_some() {
        return finalize(&ctx, &api, &snapshot).await;
    }
    let previous = snapshot.status.clone().unwrap_or_default();
    if previous.finished() {
        return Ok(Action::await_change());
    }
    // A Job under way (a claim destination): its result, once it has one.
    if previous.phase.as_deref() == Some(RUNNING) {
        if let Some(running) = job::get(&ctx.client, &namespace, &job_name(&snapshot, Task::Snapshot)).await? {
            return follow(&ctx, &api, &snapshot, &running).await;
        }
    }
    let problems = snapshot.spec.problems();
    if !problems.is_empty() {
        let failure = ("InvalidSpec", format!("the spec is invalid: {}", problems.join("; ")));
        return fail(&ctx, &api, &snapshot, None, failure).await;
    }
    let clusters: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let cluster_name = &snapshot.spec.cluster_name;
    let Some(cluster) = clusters.get_opt(cluster_name).await? else {
        let message = format!("RaftCluster {cluster_name} does not exist (yet)");
        return wait(&api, &snapshot, "ClusterNotFound", message).await;
    };
    let Some((destination, prefix)) = destination(&snapshot, &cluster) else {
        let message = format!("no spec.destination, and RaftCluster {cluster_name} has no spec.backup.destination");
        return fail(&ctx, &api, &snapshot, Some(&cluster), ("NoDestination", message)).await;
    };
    if cluster.spec.paused {
        let message = format!("RaftCluster {cluster_name} is paused: backups wait until it resumes");
        return wait(&api, &snapshot, "ClusterPaused", message).await;
    }
    let (health, access) = reconcile::observe_health(&ctx, &cluster).await?;
    let Some(member) = source(&health) else {
        let message = format!("RaftCluster {cluster_name} has no leader with a majority to take it from");
        return wait(&api, &snapshot, "NoMember", message).await;
    };

    // From here an object may be written: a Delete policy holds the resource until it is gone.
    if snapshot.spec.deletion_policy == DeletionPolicy::Delete && !has_finalizer(&snapshot) {
        let mut finalizers = snapshot.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        set_finalizers(&api, &snapshot, finalizers).await?;
    }
    let mut running = RaftSnapshotStatus {
        phase: Some(RUNNING.to_string()),
        message: Some(format!("taking a snapshot of {member}")),
        member: Some(member.clone()),
        start_time: Some(Timestamp::now().to_string()),
        ..RaftSnapshotStatus::default()
    };
    if let Some(claim) = &destination.persistent_volume_claim {
        // A Job takes it; a later pass reads its result (`follow`).
        let dir = format!("{prefix}/{FOLDER}");
        let name = job_name(&snapshot, Task::Snapshot);
        let args = job::take_args(&cluster, &member, &dir, &snapshot.name_any(), None);
        let annotations = job::annotations(&claim.claim_name, &dir, &member);
        let owner = snapshot.controller_owner_ref(&());
        let built = job::build(&cluster, &name, Task::Snapshot, &claim.claim_name, args, owner, annotations);
        job::start(&ctx.client, &namespace, &built).await?;
        running.message = Some(format!("the Job {name} takes a snapshot of {member} onto claim {}", claim.claim_name));
        write_status(&api, &snapshot, &previous, &running).await?;
        return Ok(Action::requeue(REQUEUE_PENDING));
    }
    let Some(s3) = destination.s3 else {
        let message = "the destination has neither s3 nor persistentVolumeClaim".to_string();
        return fail(&ctx, &api, &snapshot, Some(&cluster), ("InvalidSpec", message)).await;
    };
    write_status(&api, &snapshot, &previous, &running).await?;

    let taken = async {
        let target = target(&ctx, &namespace, &s3.store, prefix).await?;
        let objects = Objects::s3(&target)?;
        let name = |revision| object_name(&snapshot.name_any(), Timestamp::now(), revision);
        let record = transfer(&ctx, &cluster, access, &member, &objects, &target, name).await?;
        let key = record.location.strip_prefix(&format!("s3://{}/", target.bucket)).unwrap_or_default().to_string();
        Ok::<_, Failure>((record, key))
    }
    .await;
    match taken {
        Ok((record, key)) => {
            let note = format!(
                "RaftSnapshot {}: {} (revision {}, {} bytes, sha256 {}, from {})",
                snapshot.name_any(),
                record.location,
                record.revision,
                record.size,
                record.sha256,
                record.member
            );
            let status = RaftSnapshotStatus {
                phase: Some(SUCCEEDED.to_string()),
                reason: None,
                message: Some(format!("{} holds revision {}", record.location, record.revision)),
                location: Some(record.location),
                source: SnapshotSource { s3: Some(S3Source { store: s3.store, key }), persistent_volume_claim: None },
                member: Some(record.member),
                revision: Some(record.revision),
                size: Some(record.size),
                sha256: Some(record.sha256),
                start_time: running.start_time.clone(),
                completion_time: Some(Timestamp::now().to_string()),
            };
            write_status(&api, &snapshot, &running, &status).await?;
            let event = || event(EventType::Normal, "SnapshotSucceeded", "Backup", note.clone());
            publish_each(&ctx, &snapshot, event()).await;
            publish_each(&ctx, &cluster, event()).await;
            Ok(Action::await_change())
        }
        Err(failure) => {
            let snapshot = RaftSnapshot { status: Some(running), ..snapshot };
            let failed = (failure.reason(), failure.message().to_string());
            fail(&ctx, &api, &snapshot, Some(&cluster), failed).await
        }
    }
}

/// A snapshot's Job: nothing yet while it runs; once it has finished, Succeeded with the file
/// it kept (or Failed with why), and the Job removed.
async fn follow(
    ctx: &Context,
    api: &Api<RaftSnapshot>,
    snapshot: &RaftSnapshot,
    running: &Job,
) -> Result<Action, ReconcileError> {
    if job::outcome(running).is_none() {
        return Ok(Action::requeue(REQUEUE_PENDING));
    }
    let namespace = snapshot.namespace().unwrap_or_default();
    let result = job::finished(&ctx.client, &namespace, running).await?;
    let clusters: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let cluster = clusters.get_opt(&snapshot.spec.cluster_name).await?;
    let previous = snapshot.status.clone().unwrap_or_default();
    let kept = job::into_result(result);
    let action = match kept {
        Ok(kept) => {
            let (claim, path, member) = job::written(running, kept.file.as_deref().unwrap_or_default());
            let source = PvcSource { claim_name: claim, path };
            let location = source.location();
            let note = format!(
                "RaftSnapshot {}: {location} (revision {}, {} bytes, sha256 {}, from {member})",
                snapshot.name_any(),
                kept.revision.unwrap_or_default(),
                kept.size.unwrap_or_default(),
                kept.sha256.clone().unwrap_or_default(),
            );
            let status = RaftSnapshotStatus {
                phase: Some(SUCCEEDED.to_string()),
                reason: None,
                message: Some(format!("{location} holds revision {}", kept.revision.unwrap_or_default())),
                location: Some(location),
                source: SnapshotSource { s3: None, persistent_volume_claim: Some(source) },
                member: Some(member),
                revision: kept.revision,
                size: kept.size,
                sha256: kept.sha256,
                start_time: previous.start_time.clone(),
                completion_time: Some(Timestamp::now().to_string()),
            };
            write_status(api, snapshot, &previous, &status).await?;
            let event = || event(EventType::Normal, "SnapshotSucceeded", "Backup", note.clone());
            publish_each(ctx, snapshot, event()).await;
            if let Some(cluster) = &cluster {
                publish_each(ctx, cluster, event()).await;
            }
            Action::await_change()
        }
        Err(failure) => {
            let failed = (failure.reason(), failure.message().to_string());
            fail(ctx, api, snapshot, cluster.as_ref(), failed).await?
        }
    };
    job::remove(&ctx.client, &namespace, &running.name_any()).await?;
    Ok(action)
}

/// The controller's error policy: look again after a while.
pub fn error_policy(snapshot: Arc<RaftSnapshot>, err: &ReconcileError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(snapshot = %snapshot.name_any(), "reconcile failed: {err}");
    Action::requeue(REQUEUE_PENDING)
}

fn has_finalizer(snapshot: &RaftSnapshot) -> bool {
    snapshot.finalizers().iter().any(|f| f == FINALIZER)
}

/// Waits with `reason` (phase Pending), looking again soon.
async fn wait(
    api: &Api<RaftSnapshot>,
    snapshot: &RaftSnapshot,
    reason: &str,
    message: String,
) -> Result<Action, ReconcileError> {
    let previous = snapshot.status.clone().unwrap_or_default();
    let status = RaftSnapshotStatus {
        phase: Some(PENDING.to_string()),
        reason: Some(reason.to_string()),
        message: Some(message),
        ..RaftSnapshotStatus::default()
    };
    write_status(api, snapshot, &previous, &status).await?;
    Ok(Action::requeue(REQUEUE_PENDING))
}

/// Fails for good, with the reason in the status and a Warning event on the snapshot (and on
/// its cluster, when there is one). The status keeps what the snapshot already says (the start
/// time, the member).
async fn fail(
    ctx: &Context,
    api: &Api<RaftSnapshot>,
    snapshot: &RaftSnapshot,
    cluster: Option<&RaftCluster>,
    (reason, message): (&str, String),
) -> Result<Action, ReconcileError> {
    let previous = snapshot.status.clone().unwrap_or_default();
    let status = RaftSnapshotStatus {
        phase: Some(FAILED.to_string()),
        reason: Some(reason.to_string()),
        message: Some(format!("{message}; create another RaftSnapshot to try again")),
        completion_time: Some(Timestamp::now().to_string()),
        ..previous.clone()
    };
    write_status(api, snapshot, &previous, &status).await?;
    let note = format!("RaftSnapshot {}: {reason}: {message}", snapshot.name_any());
    let event = || event(EventType::Warning, "SnapshotFailed", "Backup", note.clone());
    publish_each(ctx, snapshot, event()).await;
    if let Some(cluster) = cluster {
        publish_each(ctx, cluster, event()).await;
    }
    Ok(Action::await_change())
}

/// A deleted snapshot with the finalizer: its object is deleted (Delete policy), then the
/// finalizer removed. An object that cannot be deleted keeps the resource, says why, and is
/// tried again.
async fn finalize(ctx: &Context, api: &Api<RaftSnapshot>, snapshot: &RaftSnapshot) -> Result<Action, ReconcileError> {
    if !has_finalizer(snapshot) {
        return Ok(Action::await_change());
    }
    let previous = snapshot.status.clone().unwrap_or_default();
    let delete = snapshot.spec.deletion_policy == DeletionPolicy::Delete;
    let namespace = snapshot.namespace().unwrap_or_default();
    let on_claim = previous.source.persistent_volume_claim.as_ref().filter(|_| delete);
    let stored = previous.source.s3.as_ref().filter(|_| delete);
    if stored.is_some() || on_claim.is_some() {
        let deleted = match (stored, on_claim) {
            (Some(stored), _) => {
                async {
                    let target = target(ctx, &namespace, &stored.store, String::new()).await?;
                    Objects::s3(&target)?.delete(&stored.key).await
                }
                .await
            }
            (None, Some(file)) => match delete_from_claim(ctx, snapshot, file).await? {
                Some(deleted) => deleted,
                None => return Ok(Action::requeue(REQUEUE_PENDING)),
            },
            (None, None) => Ok(()),
        };
        let location = previous.location.clone().unwrap_or_default();
        if let Err(failure) = deleted {
            let message = format!("cannot delete {location}: {failure}; the resource stays until it is deleted");
            let status = RaftSnapshotStatus {
                reason: Some("DeleteFailed".to_string()),
                message: Some(message.clone()),
                ..previous.clone()
            };
            write_status(api, snapshot, &previous, &status).await?;
            let note = format!("RaftSnapshot {}: {message}", snapshot.name_any());
            publish_each(ctx, snapshot, event(EventType::Warning, "SnapshotDeleteFailed", "Delete", note)).await;
            return Ok(Action::requeue(REQUEUE_DELETE));
        }
        let note = format!("RaftSnapshot {}: deleted {location} (deletionPolicy Delete)", snapshot.name_any());
        publish_each(ctx, snapshot, event(EventType::Normal, "SnapshotDeleted", "Delete", note)).await;
    }
    let rest: Vec<String> = snapshot.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    set_finalizers(api, snapshot, rest).await?;
    Ok(Action::await_change())
}

/// Deletes a RaftSnapshot's file on its claim with a Job: `None` while the Job runs, then what
/// it reported (the Job removed, so that a failure is tried again with a new one).
async fn delete_from_claim(
    ctx: &Context,
    snapshot: &RaftSnapshot,
    file: &PvcSource,
) -> Result<Option<Result<(), Failure>>, ReconcileError> {
    let namespace = snapshot.namespace().unwrap_or_default();
    let name = job_name(snapshot, Task::Delete);
    let Some(running) = job::get(&ctx.client, &namespace, &name).await? else {
        // The cluster's image when it is still there, this operator's otherwise; no access to
        // the members is needed, so none is mounted.
        let clusters: Api<RaftCluster> = Api::namespaced(ctx.client.clone(), &namespace);
        let mut base = match clusters.get_opt(&snapshot.spec.cluster_name).await? {
            Some(cluster) => cluster,
            None => {
                let spec =
                    serde_json::from_value(serde_json::json!({})).map_err(|e| ReconcileError::Encode(e.to_string()))?;
                let mut cluster = RaftCluster::new(&snapshot.spec.cluster_name, spec);
                cluster.metadata.namespace = Some(namespace.clone());
                cluster
            }
        };
        base.spec.tls = None;
        base.spec.auth = None;
        base.status = None;
        let args = job::delete_args(&file.path);
        let built = job::build(&base, &name, Task::Delete, &file.claim_name, args, None, Default::default());
        job::start(&ctx.client, &namespace, &built).await?;
        return Ok(None);
    };
    if job::outcome(&running).is_none() {
        return Ok(None);
    }
    let result = job::finished(&ctx.client, &namespace, &running).await?;
    job::remove(&ctx.client, &namespace, &name).await?;
    Ok(Some(job::into_result(result).map(drop)))
}

/// Sets the finalizers, if the snapshot is still the version read (a merge patch carrying the
/// resourceVersion: the API server refuses it when another writer came between).
async fn set_finalizers(
    api: &Api<RaftSnapshot>,
    snapshot: &RaftSnapshot,
    finalizers: Vec<String>,
) -> Result<(), ReconcileError> {
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": snapshot.resource_version()},
    });
    api.patch(&snapshot.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Writes the status (server-side apply on the status subresource) when it differs.
async fn write_status(
    api: &Api<RaftSnapshot>,
    snapshot: &RaftSnapshot,
    previous: &RaftSnapshotStatus,
    status: &RaftSnapshotStatus,
) -> Result<(), ReconcileError> {
    if status == previous && snapshot.status.is_some() {
        return Ok(());
    }
    let body = serde_json::json!({
        "apiVersion": RaftSnapshot::api_version(&()),
        "kind": RaftSnapshot::kind(&()),
        "status": status,
    });
    api.patch_status(&snapshot.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(spec: serde_json::Value) -> RaftSnapshot {
        let mut snapshot = RaftSnapshot::new("before-upgrade", serde_json::from_value(spec).expect("a spec"));
        snapshot.metadata.namespace = Some("ns".to_string());
        snapshot
    }

    fn cluster(spec: serde_json::Value) -> RaftCluster {
        let mut cluster = RaftCluster::new("etcd", serde_json::from_value(spec).expect("a spec"));
        cluster.metadata.namespace = Some("ns".to_string());
        cluster
    }

    fn s3(prefix: Option<&str>, bucket: &str) -> serde_json::Value {
        let mut s3 =
            serde_json::json!({"endpoint": "http://s3:9000", "bucket": bucket, "credentialsSecret": {"name": "c"}});
        if let Some(prefix) = prefix {
            s3["prefix"] = prefix.into();
        }
        serde_json::json!({"s3": s3})
    }

    #[test]
    fn the_destination_is_the_snapshots_own_or_the_clusters_and_none_without_either() {
        let with_backup =
            cluster(serde_json::json!({"backup": {"schedule": "0 0 * * *", "destination": s3(None, "cluster")}}));
        let plain = cluster(serde_json::json!({}));
        let inherits = snapshot(serde_json::json!({"clusterName": "etcd"}));
        let (of, prefix) = destination(&inherits, &with_backup).expect("the cluster's");
        assert_eq!((of.s3.expect("s3").store.bucket.as_str(), prefix.as_str()), ("cluster", "ns/etcd"));
        assert!(destination(&inherits, &plain).is_none());
        let own = snapshot(serde_json::json!({"clusterName": "etcd", "destination": s3(Some("keep/here"), "own")}));
        for cluster in [&with_backup, &plain] {
            let (of, prefix) = destination(&own, cluster).expect("its own");
            assert_eq!((of.s3.expect("s3").store.bucket.as_str(), prefix.as_str()), ("own", "keep/here"));
        }
    }

    #[test]
    fn objects_go_to_their_own_folder_where_the_retention_of_scheduled_backups_never_looks() {
        let at: Timestamp = "2026-12-03T17:00:00.250Z".parse().expect("a time");
        let name = object_name("etcd-1", at, 42);
        assert_eq!(name, "snapshots/etcd-1-20261203T170000.250Z-r42.snap");
        // A snapshot named like the cluster's backups is still not one of them.
        let stored = [super::super::objects::Stored { name, size: 1, modified: 0 }];
        let retention = crate::operator::crd::RetentionSpec { count: 1, max_age_hours: Some(1) };
        assert!(super::super::to_prune("etcd", &stored, &retention, at).is_empty());
        assert!(super::super::to_prune("etcd", &[stored[0].clone(), stored[0].clone()], &retention, at).is_empty());
    }

    #[test]
    fn only_succeeded_and_failed_are_final() {
        for (phase, finished) in [
            (None, false),
            (Some(PENDING), false),
            (Some(RUNNING), false),
            (Some(SUCCEEDED), true),
            (Some(FAILED), true),
        ] {
            let status = RaftSnapshotStatus { phase: phase.map(str::to_string), ..RaftSnapshotStatus::default() };
            assert_eq!(status.finished(), finished, "{phase:?}");
        }
    }
}

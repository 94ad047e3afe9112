//! A backup as a reconcile pass takes it (`reconcile_inner` calls [`run`] and [`into_status`]):
//! due or not, the member, the bucket and its credentials, the upload, the pruning, and what
//! the status, the condition and the events say of it.

use croner::Cron;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::ResourceExt;

use k8s_openapi::api::batch::v1::Job;

use super::job::{self, BackupResult, Task};
use super::objects::{Failure, Objects, S3Target};
use super::{due, next, object_name, parse_schedule, record, source, to_prune, upload};
use crate::operator::builders;
use crate::operator::crd::{
    BackupFailure, BackupRecord, BackupSpec, PvcDestination, PvcSource, RaftCluster, RaftClusterStatus, S3Destination,
    S3Store,
};
use crate::operator::planner::ClusterHealth;
use crate::operator::reconcile::{Access, Context, ReconcileError};

/// The condition a backup's outcome sets.
pub const CONDITION_BACKUP: &str = "BackupSucceeded";

/// What a pass did about backups.
#[derive(Debug)]
pub struct Outcome {
    /// The schedule's time it was taken for.
    pub scheduled: Timestamp,
    pub result: Result<BackupRecord, Failure>,
    /// Objects deleted by the retention, and why pruning stopped, if it did.
    pub pruned: Vec<String>,
    pub prune_error: Option<Failure>,
}

/// The schedule of a cluster's backups, parsed once per pass: `None` without `spec.backup`
/// (or with a schedule `RaftClusterSpec::problems` refuses, which stops the pass before).
pub fn schedule(cluster: &RaftCluster) -> Option<Cron> {
    parse_schedule(&cluster.spec.backup.as_ref()?.schedule).ok()
}

/// Takes a backup when one is due (module docs); `None` when none is.
pub async fn run(
    ctx: &Context,
    cluster: &RaftCluster,
    schedule: &Cron,
    access: Access,
    health: &ClusterHealth,
    previous: &RaftClusterStatus,
) -> Option<Outcome> {
    let spec = cluster.spec.backup.as_ref()?;
    if let Some(claim) = &spec.destination.persistent_volume_claim {
        return match on_claim(ctx, cluster, spec, claim, schedule, health, previous).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(cluster = %cluster.name_any(), "backup Job: {e}");
                None
            }
        };
    }
    let s3 = spec.destination.s3.as_ref()?;
    let now = Timestamp::now();
    let scheduled = due(schedule, since(cluster, previous, now), now)?;
    let (result, pruned, prune_error) = match take(ctx, cluster, s3, access, health).await {
        Ok((record, objects)) => {
            let (pruned, prune_error) = prune(&objects, &cluster.name_any(), spec).await;
            (Ok(record), pruned, prune_error)
        }
        Err(failure) => (Err(failure), Vec::new(), None),
    };
    Some(Outcome { scheduled, result, pruned, prune_error })
}

/// A backup onto a claim (`backup::job`), when one is due: the outcome of a Job that has
/// finished (the Job then removed), or nothing while one runs, or a Job started.
async fn on_claim(
    ctx: &Context,
    cluster: &RaftCluster,
    spec: &BackupSpec,
    claim: &PvcDestination,
    schedule: &Cron,
    health: &ClusterHealth,
    previous: &RaftClusterStatus,
) -> Result<Option<Outcome>, ReconcileError> {
    // A Job is started only when one is due, and it stays due until a Job's outcome moves
    // `lastScheduleTime`: when none is due, no Job can be there, and no call is made.
    let now = Timestamp::now();
    let Some(scheduled) = due(schedule, since(cluster, previous, now), now) else { return Ok(None) };
    let namespace = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let jobs = job::list(&ctx.client, &namespace, &name, Task::Scheduled).await?;
    if let Some(done) = jobs.iter().find(|j| job::outcome(j).is_some()) {
        let result = job::finished(&ctx.client, &namespace, done).await?;
        job::remove(&ctx.client, &namespace, &done.name_any()).await?;
        let scheduled = done.annotations().get(job::ANNOTATION_SCHEDULED).and_then(|t| t.parse().ok());
        return Ok(Some(claim_outcome(done, result, scheduled.unwrap_or_else(Timestamp::now))));
    }
    if !jobs.is_empty() {
        return Ok(None);
    }
    let Some(member) = source(health) else {
        let failure = Failure::NoMember("no leader with a majority to take it from".into());
        return Ok(Some(Outcome { scheduled, result: Err(failure), pruned: Vec::new(), prune_error: None }));
    };
    let dir = super::prefix(cluster, claim.prefix.as_ref());
    let args = job::take_args(cluster, &member, &dir, &name, Some(&spec.retention));
    let mut annotations = job::annotations(&claim.claim_name, &dir, &member);
    annotations.insert(job::ANNOTATION_SCHEDULED.to_string(), scheduled.to_string());
    let job_name = job::job_name(&format!("{name}-backup"), &scheduled.as_second().to_string());
    let owner = builders::owner_reference(cluster)?;
    let built = job::build(cluster, &job_name, Task::Scheduled, &claim.claim_name, args, Some(owner), annotations);
    job::start(&ctx.client, &namespace, &built).await?;
    Ok(None)
}

/// The outcome a finished scheduled Job reported.
fn claim_outcome(done: &Job, result: BackupResult, scheduled: Timestamp) -> Outcome {
    match job::into_result(result) {
        Ok(kept) => {
            let (claim, path, member) = job::written(done, kept.file.as_deref().unwrap_or_default());
            let at = kept.time.as_deref().and_then(|t| t.parse().ok()).unwrap_or_else(Timestamp::now);
            let location = PvcSource { claim_name: claim, path }.location();
            let record = record(
                location,
                &member,
                kept.revision.unwrap_or_default(),
                kept.size.unwrap_or_default(),
                kept.sha256.unwrap_or_default(),
                at,
            );
            Outcome {
                scheduled,
                result: Ok(record),
                pruned: kept.pruned,
                prune_error: kept.prune_error.map(Failure::Failed),
            }
        }
        Err(failure) => Outcome { scheduled, result: Err(failure), pruned: Vec::new(), prune_error: None },
    }
}

/// Deletes what the retention no longer keeps: the objects deleted, and why it stopped, if it
/// did.
async fn prune(objects: &Objects, cluster: &str, spec: &BackupSpec) -> (Vec<String>, Option<Failure>) {
    let stored = match objects.list().await {
        Ok(stored) => stored,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut pruned = Vec::new();
    for old in to_prune(cluster, &stored, &spec.retention, Timestamp::now()) {
        match objects.delete(&old).await {
            Ok(()) => pruned.push(old),
            Err(e) => return (pruned, Some(e)),
        }
    }
    (pruned, None)
}

/// The last backup's scheduled time, or the cluster's creation, or now.
fn since(cluster: &RaftCluster, previous: &RaftClusterStatus, now: Timestamp) -> Timestamp {
    let last = previous.backup.as_ref().and_then(|b| b.last_schedule_time.as_deref()).and_then(|t| t.parse().ok());
    last.or_else(|| cluster.metadata.creation_timestamp.as_ref().map(|t| t.0)).unwrap_or(now)
}

/// How long until the schedule's next time (for the requeue).
pub fn until_next(schedule: &Cron) -> Option<std::time::Duration> {
    let now = Timestamp::now();
    let wait = next(schedule, now)?.duration_since(now);
    std::time::Duration::try_from(wait).ok()
}

/// The bucket of `s3`, with the credentials from its Secret.
async fn open(ctx: &Context, cluster: &RaftCluster, s3: &S3Destination) -> Result<(Objects, S3Target), Failure> {
    let namespace = cluster.namespace().unwrap_or_default();
    let target = target(ctx, &namespace, &s3.store, super::prefix(cluster, s3.prefix.as_ref())).await?;
    Ok((Objects::s3(&target)?, target))
}

/// A store of the spec with its credentials, read from their Secret in `namespace`.
pub async fn target(ctx: &Context, namespace: &str, store: &S3Store, prefix: String) -> Result<S3Target, Failure> {
    let reference = &store.credentials_secret;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets
        .get_opt(&reference.name)
        .await
        .map_err(|e| Failure::NoCredentials(format!("cannot read Secret {}: {e}", reference.name)))?
        .ok_or_else(|| Failure::NoCredentials(format!("Secret {} does not exist", reference.name)))?;
    let value = |key: &str| -> Result<String, Failure> {
        let bytes = secret.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone());
        let text = bytes.and_then(|b| String::from_utf8(b).ok()).filter(|t| !t.is_empty());
        text.ok_or_else(|| {
            Failure::NoCredentials(format!("Secret {} has no key {key} (UTF-8, not empty)", reference.name))
        })
    };
    Ok(S3Target {
        endpoint: store.endpoint.clone(),
        bucket: store.bucket.clone(),
        region: store.region.clone(),
        prefix,
        path_style: store.path_style,
        access_key_id: value(&reference.access_key_id_key)?,
        secret_access_key: value(&reference.secret_access_key_key)?,
    })
}

/// One backup: from the member `source` picks, into the bucket.
async fn take(
    ctx: &Context,
    cluster: &RaftCluster,
    s3: &S3Destination,
    access: Access,
    health: &ClusterHealth,
) -> Result<(BackupRecord, Objects), Failure> {
    let member = source(health).ok_or_else(|| Failure::NoMember("no leader with a majority to take it from".into()))?;
    let (objects, target) = open(ctx, cluster, s3).await?;
    let name = |revision| object_name(&cluster.name_any(), Timestamp::now(), revision);
    let record = transfer(ctx, cluster, access, &member, &objects, &target, name).await?;
    Ok((record, objects))
}

/// A snapshot of `member` streamed into `objects`, as the object `name(revision)` (see
/// [`upload`]): what was kept.
pub async fn transfer(
    ctx: &Context,
    cluster: &RaftCluster,
    access: Access,
    member: &str,
    objects: &Objects,
    target: &S3Target,
    name: impl FnOnce(i64) -> String,
) -> Result<BackupRecord, Failure> {
    let namespace = cluster.namespace().unwrap_or_default();
    let url = builders::client_url(cluster, &namespace, member);
    let incoming = ctx
        .members
        .snapshot(access, url)
        .await
        .map_err(|e| Failure::Failed(format!("cannot take a snapshot of {member}: {e}")))?;
    let revision = incoming.revision;
    let name = name(revision);
    let (size, sha256) = upload(objects, &name, incoming).await?;
    let location = format!("s3://{}/{}", target.bucket, objects.key(&name));
    Ok(record(location, member, revision, size, sha256, Timestamp::now()))
}

/// Puts the outcome (or the previous backup status) into `status`, with the condition.
pub fn into_status(
    cluster: &RaftCluster,
    previous: &RaftClusterStatus,
    status: &mut RaftClusterStatus,
    outcome: Option<&Outcome>,
) {
    if cluster.spec.backup.is_none() {
        status.backup = None;
        status.conditions.retain(|c| c.type_ != CONDITION_BACKUP);
        return;
    }
    let mut backup = previous.backup.clone().unwrap_or_default();
    let Some(outcome) = outcome else {
        status.backup = Some(backup);
        return;
    };
    backup.last_schedule_time = Some(outcome.scheduled.to_string());
    match &outcome.result {
        Ok(record) => {
            let message = format!(
                "{} (revision {}, {} bytes, from {})",
                record.location, record.revision, record.size, record.member
            );
            backup.last_success = Some(record.clone());
            status.backup = Some(backup);
            crate::operator::reconcile::set_condition(
                status,
                previous,
                CONDITION_BACKUP,
                true,
                "BackupSucceeded",
                &message,
                cluster,
            );
        }
        Err(failure) => {
            let time = Timestamp::now().to_string();
            backup.last_failure = Some(BackupFailure {
                time,
                reason: failure.reason().to_string(),
                message: failure.message().to_string(),
            });
            status.backup = Some(backup);
            crate::operator::reconcile::set_condition(
                status,
                previous,
                CONDITION_BACKUP,
                false,
                failure.reason(),
                failure.message(),
                cluster,
            );
        }
    }
}

/// The events of an outcome: (type, reason, note).
pub fn events(outcome: &Outcome) -> Vec<(EventType, &'static str, String)> {
    let mut events = Vec::new();
    match &outcome.result {
        Ok(record) => events.push((
            EventType::Normal,
            "BackupSucceeded",
            format!(
                "{} (revision {}, {} bytes, sha256 {}, from {})",
                record.location, record.revision, record.size, record.sha256, record.member
            ),
        )),
        Err(failure) => events.push((EventType::Warning, "BackupFailed", failure.to_string())),
    }
    if !outcome.pruned.is_empty() {
        events.push((
            EventType::Normal,
            "BackupsPruned",
            format!("deleted by the retention: {}", outcome.pruned.join(", ")),
        ));
    }
    if let Some(failure) = &outcome.prune_error {
        events.push((EventType::Warning, "BackupPruneFailed", failure.to_string()));
    }
    events
}

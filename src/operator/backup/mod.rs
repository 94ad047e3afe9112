//! Backups on a schedule (`spec.backup`, issue 17). When the schedule's latest time has passed
//! since the last backup (or since the cluster was created), a pass of the reconcile takes one:
//! a snapshot of a healthy follower (the leader only when no follower is healthy) streamed
//! from its `GET /v1/snapshot` into the bucket, checked on the way (length and SHA-256, as
//! `base::framing` frames it), then the oldest objects beyond the retention pruned. The outcome
//! goes into `status.backup`, the condition `BackupSucceeded` and an event; a failure changes
//! nothing else in the cluster and the next try is at the next time of the schedule.
//!
//! Pure parts (the schedule, names, what to prune, which member) are functions here with unit
//! tests; `take` and `prune` do the I/O.

pub mod job;
pub mod objects;
pub mod run;
pub mod snapshot;

use std::str::FromStr;

use croner::Cron;
use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::jiff::{tz::TimeZone, Timestamp};
use kube::ResourceExt;

use self::objects::{Failure, Objects, Stored};
use super::crd::{BackupRecord, RaftCluster, RetentionSpec};
use super::planner::{ClusterHealth, Role};

/// The prefix of `cluster`'s backups (in a bucket or a claim): the one `given`, or
/// `<namespace>/<cluster>`.
pub fn prefix(cluster: &RaftCluster, given: Option<&String>) -> String {
    let namespace = cluster.namespace().unwrap_or_default();
    given.cloned().unwrap_or_else(|| format!("{namespace}/{}", cluster.name_any()))
}

/// The suffix of every backup object.
pub const SUFFIX: &str = ".snap";

/// A cron schedule of five fields (minute, hour, day of month, month, day of week), in UTC.
pub fn parse_schedule(text: &str) -> Result<Cron, String> {
    let fields = text.split_whitespace().count();
    if fields != 5 {
        return Err(format!("it has {fields} fields"));
    }
    Cron::from_str(text).map_err(|e| e.to_string())
}

/// The schedule's latest time at or before `now`, if it is after `since` (the last backup's
/// scheduled time, or the cluster's creation): a backup is due for it.
pub fn due(schedule: &Cron, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
    let now = now.to_zoned(TimeZone::UTC);
    let latest = schedule.find_previous_occurrence(&now, true).ok()?;
    let latest = latest.timestamp();
    (latest > since).then_some(latest)
}

/// The schedule's first time after `now`.
pub fn next(schedule: &Cron, now: Timestamp) -> Option<Timestamp> {
    let now = now.to_zoned(TimeZone::UTC);
    schedule.find_next_occurrence(&now, false).ok().map(|t| t.timestamp())
}

/// The object name of a backup of `cluster` taken at `at` holding `revision`: names sort by
/// time, so the oldest come first.
pub fn object_name(cluster: &str, at: Timestamp, revision: i64) -> String {
    format!("{cluster}-{}-r{revision}{SUFFIX}", at.strftime("%Y%m%dT%H%M%S%.3fZ"))
}

/// Whether `name` is a backup of `cluster` (the objects of others in the prefix are never pruned).
fn is_backup_of(cluster: &str, name: &str) -> bool {
    name.strip_prefix(cluster)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|rest| rest.ends_with(SUFFIX) && rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The backups of `cluster` to delete: beyond the newest `count`, and older than
/// `maxAgeHours`, but never the newest one.
pub fn to_prune(cluster: &str, stored: &[Stored], retention: &RetentionSpec, now: Timestamp) -> Vec<String> {
    let mut ours: Vec<&Stored> = stored.iter().filter(|s| is_backup_of(cluster, &s.name)).collect();
    ours.sort_by(|a, b| b.name.cmp(&a.name));
    let keep = usize::try_from(retention.count.max(1)).unwrap_or(usize::MAX);
    let oldest_allowed = retention.max_age_hours.map(|h| now.as_second() - i64::from(h) * 3600);
    ours.iter()
        .enumerate()
        .filter(|(i, s)| *i >= keep || (*i > 0 && oldest_allowed.is_some_and(|limit| s.modified < limit)))
        .map(|(_, s)| s.name.clone())
        .collect()
}

/// The member to take a backup from: a healthy follower (the one furthest ahead), or the
/// leader when no follower is healthy; `None` without a leader.
pub fn source(health: &ClusterHealth) -> Option<String> {
    health.leader.as_ref()?;
    let follower = health
        .members
        .iter()
        .filter(|m| m.healthy && m.voter && m.role == Some(Role::Follower))
        .max_by_key(|m| (m.applied_index, std::cmp::Reverse(m.name.clone())));
    follower.map(|m| m.name.clone()).or_else(|| health.leader.clone())
}

/// A snapshot arriving from a member (`MemberApi::snapshot`).
pub struct Incoming {
    pub revision: i64,
    pub chunks: BoxStream<'static, Result<bytes::Bytes, String>>,
}

impl From<crate::client::Snapshot> for Incoming {
    /// A member's answer to `GET /v1/snapshot`, chunk by chunk.
    fn from(snapshot: crate::client::Snapshot) -> Incoming {
        let revision = snapshot.revision;
        let chunks = futures::stream::unfold(Some(snapshot), |state| async move {
            let mut snapshot = state?;
            match snapshot.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(snapshot))),
                Ok(None) => None,
                Err(e) => Some((Err(e.to_string()), None)),
            }
        });
        Incoming { revision, chunks: Box::pin(chunks) }
    }
}

/// Streams `incoming` into the object `name`, checking its framing on the way; a failure
/// aborts the upload, so nothing is left under that name.
pub async fn upload(objects: &Objects, name: &str, incoming: Incoming) -> Result<(u64, String), Failure> {
    let mut writer = objects.writer(name);
    // After `shutdown` the writer cannot be aborted (object_store panics): a multipart upload
    // whose completion failed is aborted by the writer itself.
    let mut shut = false;
    let result = async {
        let mut check = crate::base::framing::FrameCheck::new();
        let mut size = 0u64;
        let mut chunks = incoming.chunks;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| Failure::Failed(format!("the member's snapshot stream failed: {e}")))?;
            check.add(&chunk);
            size += chunk.len() as u64;
            writer.put(chunk).await.map_err(|e| objects::classify(&e))?;
        }
        let sha256 = check.finish().map_err(|e| Failure::Failed(format!("the member's snapshot: {e}")))?;
        shut = true;
        tokio::io::AsyncWriteExt::shutdown(&mut writer).await.map_err(|e| objects::classify_io(&e))?;
        Ok((size, sha256))
    }
    .await;
    if result.is_err() && !shut {
        Objects::abort(&mut writer).await;
    }
    result
}

/// A backup that was kept, for `status.backup.lastSuccess`.
pub fn record(location: String, member: &str, revision: i64, size: u64, sha256: String, at: Timestamp) -> BackupRecord {
    BackupRecord { time: at.to_string(), location, member: member.to_string(), revision, size, sha256 }
}

#[cfg(test)]
mod tests;

//! Quorum-loss recovery on request (issue 17; DESIGN.md §6): what the annotation
//! `kuberaft.io/recover-quorum` asks, what `status.recovery` records, and the events that audit
//! it. Pure: the reconcile pass gives the observation, the step it planned and the time.
//!
//! - Each new value of the annotation is one request. It is refused (phase Refused, a Warning
//!   event) unless the cluster formed, is not paused, has no leader with quorum, and fewer than a
//!   majority of the voters answer (`planner::recovery_survivor`).
//! - Accepted, it records the survivor (the most complete log), the members it replaces and a
//!   recovery id (phase Recovering, a Warning event that says what may be lost). From then on
//!   the StatefulSet's pods carry `--quorum-recovery ID:SURVIVOR` (`builders`), and the planner
//!   restarts them into it (`Observed::recovering`).
//! - Once the planner has nothing left to do, the cluster is back to the spec: phase
//!   Completed, with a Normal event.

use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::builders::RECOVER_QUORUM_ANNOTATION;
use super::crd::{RaftCluster, RaftClusterStatus, RecoveryStatus};
use super::planner::{self, Observed, Plan};
use crate::base::ids::fnv1a;

pub const PHASE_REFUSED: &str = "Refused";
pub const PHASE_RECOVERING: &str = "Recovering";
pub const PHASE_COMPLETED: &str = "Completed";

/// An event to publish about the recovery: type, reason, note.
pub type Audit = (EventType, &'static str, String);

/// The recovery record at the start of this pass: a new request decided (started or refused),
/// or the previous record as it was. The audit event comes with a decision.
pub fn request(
    cluster: &RaftCluster,
    previous: &RaftClusterStatus,
    observed: &Observed,
    now: &str,
) -> (Option<RecoveryStatus>, Option<Audit>) {
    let last = previous.recovery.clone();
    let Some(request) = cluster.annotations().get(RECOVER_QUORUM_ANNOTATION) else { return (last, None) };
    if last.as_ref().is_some_and(|r| &r.request == request) {
        return (last, None);
    }
    let decided = if cluster.spec.paused {
        Err("spec.paused: unpause the cluster, then ask again".to_string())
    } else {
        planner::recovery_survivor(observed)
    };
    match decided {
        Err(why) => {
            let message =
                format!("recovery request {request:?} refused: {why}. Change the annotation's value to ask again");
            let refused = RecoveryStatus {
                request: request.clone(),
                phase: PHASE_REFUSED.to_string(),
                message: message.clone(),
                ..last.unwrap_or_default()
            };
            (Some(refused), Some((EventType::Warning, "QuorumRecoveryRefused", message)))
        }
        Ok(survivor) => {
            let uid = cluster.uid().unwrap_or_default();
            let id = format!("{:016x}", fnv1a(&[uid.as_bytes(), request.as_bytes()]));
            let (name, replaced) = (&survivor.name, survivor.replaced.join(","));
            let message = format!(
                "recovering from quorum loss (request {request:?}, id {id}): {name} keeps its log (last entry: term {}, index {}) and restarts as the only member; {replaced} are removed, their data is set aside as data.before-recovery-{id}, and they are added back empty, as learners, then promoted. Writes acknowledged only by {replaced} and not by {name} are lost",
                survivor.last_log_term,
                survivor.last_log_index,
            );
            let started = RecoveryStatus {
                request: request.clone(),
                phase: PHASE_RECOVERING.to_string(),
                message: message.clone(),
                id: Some(id),
                survivor: Some(survivor.name),
                survivor_last_log_term: Some(survivor.last_log_term),
                survivor_last_log_index: Some(survivor.last_log_index),
                replaced: survivor.replaced,
                start_time: Some(now.to_string()),
                completion_time: None,
            };
            (Some(started), Some((EventType::Warning, "QuorumRecoveryStarted", message)))
        }
    }
}

/// The survivor of the recovery under way, for the planner (`Observed::recovering`).
pub fn recovering(record: Option<&RecoveryStatus>) -> Option<String> {
    record.filter(|r| r.phase == PHASE_RECOVERING).and_then(|r| r.survivor.clone())
}

/// The record after this pass's step: a recovery under way is complete once the planner has
/// nothing left to do (the cluster is what the spec asks for again).
pub fn progress(record: Option<RecoveryStatus>, plan: &Plan, now: &str) -> (Option<RecoveryStatus>, Option<Audit>) {
    match record {
        Some(mut r) if r.phase == PHASE_RECOVERING && *plan == Plan::Nothing => {
            let survivor = r.survivor.clone().unwrap_or_default();
            let message = format!(
                "recovered from quorum loss (id {}): the cluster runs again from {survivor}'s log, with {} added back. Writes acknowledged only by the replaced members, and not by {survivor}, are lost",
                r.id.clone().unwrap_or_default(),
                r.replaced.join(","),
            );
            r.phase = PHASE_COMPLETED.to_string();
            r.message = message.clone();
            r.completion_time = Some(now.to_string());
            (Some(r), Some((EventType::Normal, "QuorumRecovered", message)))
        }
        other => (other, None),
    }
}

#[cfg(test)]
mod tests;

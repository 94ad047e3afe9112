//! The annotation's requests, the record and the audit events. Which member survives, and when a
//! recovery is refused, are the planner's (`planner::tests`).

use super::*;
use crate::operator::crd::RaftClusterSpec;
use crate::operator::planner::{EndpointList, Member, PodObservation, Role, Status, WaitReason};

const NOW: &str = "2026-12-03T14:00:00Z";

fn cluster(request: Option<&str>, paused: bool, status: RaftClusterStatus) -> RaftCluster {
    let spec: RaftClusterSpec =
        serde_json::from_value(serde_json::json!({"replicas": 3, "paused": paused})).expect("a spec");
    let mut cluster = RaftCluster::new("etcd", spec);
    cluster.metadata.namespace = Some("ns".to_string());
    cluster.metadata.uid = Some("5a1b2c3d-0000-4000-8000-000000000001".to_string());
    if let Some(request) = request {
        cluster.metadata.annotations = Some([(RECOVER_QUORUM_ANNOTATION.to_string(), request.to_string())].into());
    }
    cluster.status = Some(status);
    cluster
}

/// 5 voters; those in `answering` answer without a leader, with logs ending at (term 4, index
/// 40 + ordinal).
fn observed(answering: &[u32]) -> Observed {
    let members: Vec<Member> = (0..5)
        .map(|i| Member { id: format!("1{i}"), name: format!("etcd-{i}"), voter: true, ..Member::default() })
        .collect();
    let pods = (0..5)
        .map(|i| PodObservation {
            ordinal: i,
            ready: false,
            data_lost: false,
            outdated: false,
            newer_data: false,
            status: answering.contains(&i).then(|| Status {
                name: format!("etcd-{i}"),
                id: format!("1{i}"),
                role: Role::Follower,
                term: 4,
                members: members.clone(),
                last_log_term: 4,
                last_log_index: 40 + u64::from(i),
                ..Status::default()
            }),
        })
        .collect();
    Observed {
        cluster: "etcd".to_string(),
        desired_replicas: 5,
        paused: false,
        formed: true,
        stateful_set_replicas: Some(5),
        pods,
        endpoints: Some(EndpointList { names: (0..5).map(|i| format!("etcd-{i}")).collect(), hash: "h".into() }),
        recovering: None,
        auth: None,
    }
}

#[test]
fn no_annotation_or_the_same_value_again_decides_nothing() {
    let previous = RaftClusterStatus::default();
    assert_eq!(request(&cluster(None, false, previous.clone()), &previous, &observed(&[0]), NOW), (None, None));
    let done = RecoveryStatus { request: "r1".into(), phase: PHASE_COMPLETED.into(), ..RecoveryStatus::default() };
    let previous = RaftClusterStatus { recovery: Some(done.clone()), ..RaftClusterStatus::default() };
    // The same request is not carried out twice, however the cluster looks now.
    assert_eq!(
        request(&cluster(Some("r1"), false, previous.clone()), &previous, &observed(&[0]), NOW),
        (Some(done), None)
    );
}

#[test]
fn a_request_without_a_majority_answering_starts_from_the_most_complete_log_and_says_what_may_be_lost() {
    let previous = RaftClusterStatus::default();
    let (record, audit) = request(&cluster(Some("now"), false, previous.clone()), &previous, &observed(&[0, 2]), NOW);
    let record = record.expect("a record");
    assert_eq!(record.phase, PHASE_RECOVERING);
    assert_eq!(record.survivor.as_deref(), Some("etcd-2"), "index 42 beats 40");
    assert_eq!((record.survivor_last_log_term, record.survivor_last_log_index), (Some(4), Some(42)));
    assert_eq!(record.replaced, ["etcd-0", "etcd-1", "etcd-3", "etcd-4"]);
    assert_eq!(record.start_time.as_deref(), Some(NOW));
    let id = record.id.clone().expect("an id");
    assert!(id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    let (type_, reason, note) = audit.expect("an event");
    assert_eq!((type_, reason), (EventType::Warning, "QuorumRecoveryStarted"));
    assert!(
        note.contains("Writes acknowledged only by etcd-0,etcd-1,etcd-3,etcd-4 and not by etcd-2 are lost"),
        "{note}"
    );
    assert_eq!(recovering(Some(&record)).as_deref(), Some("etcd-2"));
    // Another request gives another id (the pods' data directories tell them apart).
    let (other, _) = request(&cluster(Some("again"), false, previous.clone()), &previous, &observed(&[1]), NOW);
    assert_ne!(other.expect("a record").id, Some(id));
}

#[test]
fn a_refused_request_says_why_and_keeps_the_last_recovery_carried_out() {
    let done = RecoveryStatus {
        request: "r1".into(),
        phase: PHASE_COMPLETED.into(),
        id: Some("00000000000000aa".into()),
        survivor: Some("etcd-0".into()),
        ..RecoveryStatus::default()
    };
    let previous = RaftClusterStatus { recovery: Some(done), ..RaftClusterStatus::default() };
    // 3 of 5 answer: a majority.
    let (record, audit) = request(&cluster(Some("r2"), false, previous.clone()), &previous, &observed(&[0, 1, 4]), NOW);
    let record = record.expect("a record");
    assert_eq!((record.request.as_str(), record.phase.as_str()), ("r2", PHASE_REFUSED));
    assert!(record.message.contains("a majority of the voters still answers (3 of 5"), "{}", record.message);
    assert_eq!((record.id.as_deref(), record.survivor.as_deref()), (Some("00000000000000aa"), Some("etcd-0")));
    assert_eq!(recovering(Some(&record)), None);
    let (type_, reason, _) = audit.expect("an event");
    assert_eq!((type_, reason), (EventType::Warning, "QuorumRecoveryRefused"));
    // Paused: refused too.
    let previous = RaftClusterStatus::default();
    let (record, _) = request(&cluster(Some("r3"), true, previous.clone()), &previous, &observed(&[0]), NOW);
    assert!(record.expect("a record").message.contains("spec.paused"));
}

#[test]
fn a_recovery_completes_when_the_planner_has_nothing_left_to_do() {
    let under_way = RecoveryStatus {
        request: "r1".into(),
        phase: PHASE_RECOVERING.into(),
        id: Some("ab".into()),
        survivor: Some("etcd-1".into()),
        replaced: vec!["etcd-0".into(), "etcd-2".into()],
        ..RecoveryStatus::default()
    };
    let waiting = Plan::Wait { reason: WaitReason::SurvivorStarting { name: "etcd-1".into() } };
    assert_eq!(progress(Some(under_way.clone()), &waiting, NOW), (Some(under_way.clone()), None));
    let (record, audit) = progress(Some(under_way), &Plan::Nothing, NOW);
    let record = record.expect("a record");
    assert_eq!((record.phase.as_str(), record.completion_time.as_deref()), (PHASE_COMPLETED, Some(NOW)));
    let (type_, reason, note) = audit.expect("an event");
    assert_eq!((type_, reason), (EventType::Normal, "QuorumRecovered"));
    assert!(note.contains("with etcd-0,etcd-2 added back"), "{note}");
    assert_eq!(recovering(Some(&record)), None);
}

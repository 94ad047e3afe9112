//! The membership planner: from one observation of a cluster (its spec, StatefulSet, pods, each
//! member's `/v1/status` and the ConfigMap's endpoint list) it returns the one next step, and
//! derives the health that the resource's status reports. It owns the safety rules of scaling;
//! the controller only executes a step and observes again.
//!
//! Pure: no I/O, no clock, no blocking, so every rule is checked by table tests. The rules:
//! - Never act without quorum, that is without a leader that a majority of the voters of its
//!   membership follow in its term (as their statuses say). The only steps taken without it put
//!   back objects that the committed membership needs (create the cluster, restore the pods that
//!   the endpoint list names): they start pods and never change membership.
//! - One step per call, so the controller never holds a half-done plan: after a crash the next
//!   observation shows what was done and the planner carries on from there.
//! - The ConfigMap's endpoint list is the membership that the leader reports (committed; voters
//!   and learners, ordered by ordinal), and changes only to match it (`UpdateEndpoints`).
//! - One membership change at a time; a change that would leave fewer than a majority of voters
//!   following the leader waits.
//!
//! Scaling up by one member `etcd-3`: `AddLearner` → `UpdateEndpoints` (the list gains etcd-3) →
//! `ResizeStatefulSet` (its pod starts and joins with `--initial-cluster-state existing`) → wait
//! until it has caught up → `Promote`. The learner is added before its pod exists because a
//! joining member learns its id from the peers that already know it.
//!
//! Scaling down, highest ordinal first: `TransferLeadership` if that member leads → `RemoveMember`
//! → `UpdateEndpoints` → `ResizeStatefulSet` (its pod goes away last, once nobody lists it).
//!
//! Replacing a voter whose data is gone (while quorum holds): `ReplaceMember` removes its old id
//! (ids are never reused, and a member with an empty log must not vote) → `UpdateEndpoints` →
//! `AddLearner` under the same name and ordinal (a new id; its pod exists) → `UpdateEndpoints` →
//! the restarted pod joins as that learner → wait for catch-up → `Promote`. Removing first keeps the
//! number of voters, and so the majority, from growing while one of them is dead.
//!
//! Rolling restart (issue 17: an image or pod template change, a `kuberaft.io/restart`
//! annotation, certificate rotation), once membership is as the spec asks: the StatefulSet is
//! `OnDelete`, so its controller never restarts a pod by itself; the planner takes one
//! `RestartMember` (evict the pod) at a time, followers first, each only once every member runs
//! the new or old template, follows the leader and has caught up; the leader last, after
//! `TransferLeadership` to a caught-up follower (one transfer, no election timeout).
//!
//! Quorum-loss recovery (issue 17), only when asked (the `kuberaft.io/recover-quorum`
//! annotation) and only without a majority answering (`recovery_survivor`): the member with the
//! most complete log (highest last term, then index) survives; the pods are made again with
//! `--quorum-recovery` (`builders`), the survivor's first: it starts as the only member,
//! keeping its log, and every other member's data is set aside. While `Observed::recovering`
//! names the survivor, `RestartMember` evicts the survivor's pod, then (once it leads) every
//! other pod of the older template whose member it removed, with no quorum or readiness rule:
//! those members are no longer in the cluster. Then the ordinary steps add them back as
//! learners and promote them.
//!
//! Auth (`spec.auth`) follows the spec once the cluster formed, ahead of membership steps:
//! `EnableAuth` while the leader reports auth off, `DisableAuth` once `spec.auth` is removed from
//! a cluster whose auth the operator turned on. Auth turned on by hand (no `spec.auth` ever) is
//! left alone, and so is a leader too old to report auth.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::fmt;

use super::{member_name, member_ordinal, MAX_REPLICAS, MIN_REPLICAS};
use crate::base::quorum::{majority, most_caught_up};
pub use crate::base::wire::{Member, Role, Status};

pub use crate::base::wire::PROMOTE_CATCH_UP_PERCENT;

// ----- what the operator observes -----

/// One observation of a cluster, gathered by the controller before it plans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The `RaftCluster`'s name: its members and pods are `<cluster>-<ordinal>`.
    pub cluster: String,
    /// `spec.replicas`: how many members the user wants.
    pub desired_replicas: u32,
    /// `spec.paused`: plan nothing that changes the cluster, but keep reporting it.
    pub paused: bool,
    /// Whether an earlier pass saw a leader with quorum: the ConfigMap's `initial-cluster-state`
    /// says `existing` (the first `UpdateEndpoints` with a leader writes it). Without a leader it
    /// tells a cluster that is still forming from one that lost its quorum, which one observation
    /// cannot.
    pub formed: bool,
    /// The StatefulSet's `spec.replicas`; `None` when it does not exist.
    pub stateful_set_replicas: Option<u32>,
    /// The pods that exist, any order.
    pub pods: Vec<PodObservation>,
    /// The ConfigMap's endpoint list; `None` when it does not exist.
    pub endpoints: Option<EndpointList>,
    /// The survivor of the quorum-loss recovery under way (`status.recovery`, phase
    /// Recovering), if any: the pods are restarted into the recovery first (module docs).
    pub recovering: Option<String>,
    /// Whether auth should be on: `Some(true)` with `spec.auth`; `Some(false)` once it was
    /// removed while the operator still manages auth (`status.auth` names its Secret); `None`:
    /// auth is not the operator's.
    pub auth: Option<bool>,
}

/// One pod of the StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodObservation {
    pub ordinal: u32,
    /// The pod's `Ready` condition (the node's `/readyz`).
    pub ready: bool,
    /// The member's data is known to be gone: it reports an empty data directory, or refuses to
    /// start because the cluster had replicated to it (the caller decides from the pod). Its
    /// status, if any, is then ignored.
    pub data_lost: bool,
    /// The member's `GET /v1/status`; `None` when it did not answer.
    pub status: Option<Status>,
    /// The pod runs an older pod template than the StatefulSet's (its template hash differs):
    /// the rolling restart replaces it (module docs).
    pub outdated: bool,
    /// The member refuses its data because a newer kuberaft wrote it (exit code 5): its image
    /// is older than the data. The data is intact; the member is never replaced for it.
    pub newer_data: bool,
}

/// The ConfigMap's endpoint list: the members every peer and client reads, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointList {
    pub names: Vec<String>,
    pub hash: String,
}

impl Observed {
    fn pod(&self, name: &str) -> Option<&PodObservation> {
        let ordinal = member_ordinal(&self.cluster, name)?;
        self.pods.iter().find(|p| p.ordinal == ordinal)
    }

    /// The statuses worth believing: from pods whose data is not lost, answering under the pod's
    /// own name (a status under another name is a misrouted or misconfigured member).
    fn statuses(&self) -> impl Iterator<Item = &Status> {
        self.pods
            .iter()
            .filter(|p| !p.data_lost)
            .filter_map(|p| p.status.as_ref().filter(|s| member_ordinal(&self.cluster, &s.name) == Some(p.ordinal)))
    }

    /// The status the member of this name reports, whatever its id.
    fn reported_by(&self, name: &str) -> Option<&Status> {
        let pod = self.pod(name).filter(|p| !p.data_lost)?;
        pod.status.as_ref().filter(|s| s.name == name)
    }

    /// The status of exactly this member: same name and same id (a pod that still runs as an
    /// older member of that name is not it).
    fn status_of(&self, member: &Member) -> Option<&Status> {
        self.reported_by(&member.name).filter(|s| s.id == member.id)
    }

    /// Members ordered by ordinal, names of other shapes last: the order of the endpoint list.
    fn sort_members(&self, members: &mut [Member]) {
        members.sort_by(|a, b| {
            let key = |m: &Member| member_ordinal(&self.cluster, &m.name).unwrap_or(u32::MAX);
            key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
        });
    }

    /// StatefulSet replicas needed to run a pod for each of these members.
    fn replicas_hosting<'a>(&self, names: impl Iterator<Item = &'a str>) -> u32 {
        names.filter_map(|name| member_ordinal(&self.cluster, name)).map(|ordinal| ordinal + 1).max().unwrap_or(0)
    }

    /// Whether the member is one the spec asks for (`<cluster>-<i>`, i below `desired_replicas`).
    fn wanted(&self, name: &str) -> bool {
        member_ordinal(&self.cluster, name).is_some_and(|ordinal| ordinal < self.desired_replicas)
    }
}

// ----- the one next step -----

/// The one next step for the controller. Each is a single write; the controller performs it and
/// observes again (requeueing soon), so a crash between steps loses nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Create the ConfigMap listing `<cluster>-0..replicas` and the StatefulSet with that many
    /// replicas; its pods start with `--initial-cluster-state new`.
    Bootstrap { replicas: u32 },
    /// `POST /v1/members` with `learner: true` for this member (URLs from its name).
    AddLearner { name: String, ordinal: u32 },
    /// `POST /v1/members/{id}/promote`.
    Promote { name: String, id: String },
    /// `POST /v1/leader/transfer {"to": to_id}`, sent to the leader `from`.
    TransferLeadership { from: String, to: String, to_id: String },
    /// `DELETE /v1/members/{id}`.
    RemoveMember { name: String, id: String },
    /// Apply the StatefulSet with this many replicas (creating it again if it was deleted).
    ResizeStatefulSet { replicas: u32 },
    /// `DELETE /v1/members/{old_id}` of a voter whose data is gone; the planner then adds the
    /// name back as a new learner (module docs).
    ReplaceMember { name: String, old_id: String },
    /// Write this list to the ConfigMap: it is the membership the leader reports.
    UpdateEndpoints { names: Vec<String> },
    /// `POST /v1/auth/user/add` of root with the Secret's password (or, if root exists,
    /// `user/changepw`), `user/grant` of the root role, then `/v1/auth/enable`.
    EnableAuth,
    /// `POST /v1/auth/disable`, as root.
    DisableAuth,
    /// Evict this member's pod, which runs an older pod template: the StatefulSet controller
    /// makes it again from the current one (`OnDelete`), and it restarts from its data.
    RestartMember { name: String, ordinal: u32 },
    /// Nothing can safely be done now; observe again soon.
    Wait { reason: WaitReason },
    /// The cluster is what the spec asks for.
    Nothing,
}

/// Why the planner waits. Each says what would let it go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// `spec.paused`; `deferred` is the step the planner would take.
    Paused { deferred: Box<Plan> },
    /// `spec.replicas` is outside 1–9 (the CRD schema should have refused it).
    InvalidReplicas { replicas: u32 },
    /// The cluster has not elected its first leader yet.
    Forming,
    /// No leader is followed by a majority of the voters.
    QuorumLost { reachable: usize, voters: usize },
    /// Members lost their data and there is no quorum to replace them: removing a member takes a
    /// committed membership change, and guessing could elect a leader missing committed entries.
    DataLostWithoutQuorum { members: Vec<String> },
    /// A learner's pod does not answer as that member yet (starting, or restarting to join).
    MemberNotReady { name: String },
    /// A learner is further behind the leader than promotion allows.
    LearnerCatchingUp { name: String, applied_index: u64, commit_index: u64 },
    /// The leader must hand over before its removal, and no other voter follows it.
    NoTransferTarget { leader: String },
    /// This change would leave fewer than a majority of the voters following the leader.
    WouldLoseQuorum { name: String },
    /// A rolling restart waits for this member to run, follow the leader and catch up before
    /// it restarts the next.
    MemberCatchingUp { name: String },
    /// Quorum-loss recovery: the survivor's pod restarted, and it does not lead yet.
    SurvivorStarting { name: String },
    /// A member's image cannot read its data, which a newer kuberaft wrote (exit code 5): an
    /// upgrade across a data format, backwards. The roll stops here until the image can.
    NewerData { name: String },
}

impl Plan {
    /// A CamelCase name for events and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Plan::Bootstrap { .. } => "Bootstrap",
            Plan::AddLearner { .. } => "AddLearner",
            Plan::Promote { .. } => "Promote",
            Plan::TransferLeadership { .. } => "TransferLeadership",
            Plan::RemoveMember { .. } => "RemoveMember",
            Plan::ResizeStatefulSet { .. } => "ResizeStatefulSet",
            Plan::ReplaceMember { .. } => "ReplaceMember",
            Plan::UpdateEndpoints { .. } => "UpdateEndpoints",
            Plan::EnableAuth => "EnableAuth",
            Plan::DisableAuth => "DisableAuth",
            Plan::RestartMember { .. } => "RestartMember",
            Plan::Wait { .. } => "Wait",
            Plan::Nothing => "Nothing",
        }
    }

    fn wait(reason: WaitReason) -> Plan {
        Plan::Wait { reason }
    }
}

impl WaitReason {
    /// A CamelCase name for conditions, events and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            WaitReason::Paused { .. } => "Paused",
            WaitReason::InvalidReplicas { .. } => "InvalidReplicas",
            WaitReason::Forming => "Forming",
            WaitReason::QuorumLost { .. } => "QuorumLost",
            WaitReason::DataLostWithoutQuorum { .. } => "DataLostWithoutQuorum",
            WaitReason::MemberNotReady { .. } => "MemberNotReady",
            WaitReason::LearnerCatchingUp { .. } => "LearnerCatchingUp",
            WaitReason::NoTransferTarget { .. } => "NoTransferTarget",
            WaitReason::WouldLoseQuorum { .. } => "WouldLoseQuorum",
            WaitReason::MemberCatchingUp { .. } => "MemberCatchingUp",
            WaitReason::SurvivorStarting { .. } => "SurvivorStarting",
            WaitReason::NewerData { .. } => "NewerDataFormat",
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plan::Bootstrap { replicas } => write!(f, "bootstrap a cluster of {replicas}"),
            Plan::AddLearner { name, .. } => write!(f, "add {name} as a learner"),
            Plan::Promote { name, id } => write!(f, "promote learner {name} ({id}) to voter"),
            Plan::TransferLeadership { from, to, .. } => write!(f, "move leadership from {from} to {to}"),
            Plan::RemoveMember { name, id } => write!(f, "remove member {name} ({id})"),
            Plan::ResizeStatefulSet { replicas } => write!(f, "resize the StatefulSet to {replicas} replicas"),
            Plan::ReplaceMember { name, old_id } => {
                write!(
                    f,
                    "replace {name}, whose data is lost: remove its old id {old_id}, then add it back as a learner"
                )
            }
            Plan::UpdateEndpoints { names } => write!(f, "set the endpoint list to {}", names.join(",")),
            Plan::EnableAuth => f.write_str("turn auth on: user root, with the root role and spec.auth's password"),
            Plan::DisableAuth => f.write_str("turn auth off: spec.auth was removed"),
            Plan::RestartMember { name, .. } => {
                write!(f, "restart {name} with the new pod template (followers first, the leader last)")
            }
            Plan::Wait { reason } => write!(f, "wait: {reason}"),
            Plan::Nothing => f.write_str("nothing to do"),
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::Paused { deferred } => write!(f, "paused; the next step would be: {deferred}"),
            WaitReason::InvalidReplicas { replicas } => {
                write!(f, "spec.replicas {replicas} is outside {MIN_REPLICAS}-{MAX_REPLICAS}; fix the spec")
            }
            WaitReason::Forming => f.write_str("the cluster is electing its first leader"),
            WaitReason::QuorumLost { reachable, voters } => write!(
                f,
                "no leader is followed by a majority of the voters: {reachable} of {voters} answer, {} needed",
                majority(*voters)
            ),
            WaitReason::DataLostWithoutQuorum { members } => write!(
                f,
                "{} lost data and there is no quorum to replace it; restore a majority of the voters first",
                members.join(",")
            ),
            WaitReason::MemberNotReady { name } => write!(f, "{name} is not running as its member yet"),
            WaitReason::LearnerCatchingUp { name, applied_index, commit_index } => write!(
                f,
                "learner {name} has applied {applied_index} of {commit_index} entries; \
                 it is promoted at {PROMOTE_CATCH_UP_PERCENT}%"
            ),
            WaitReason::NoTransferTarget { leader } => {
                write!(f, "leader {leader} is to be removed, but no other voter follows it to take over")
            }
            WaitReason::WouldLoseQuorum { name } => {
                write!(f, "changing {name} now would leave less than a majority of the voters following the leader")
            }
            WaitReason::MemberCatchingUp { name } => write!(
                f,
                "rolling restart: {name} must run, follow the leader and catch up before the next member restarts"
            ),
            WaitReason::NewerData { name } => write!(
                f,
                "{name} cannot read its data with this image: a newer kuberaft wrote it (exit code 5), so the roll stops \
                 here; set spec.image back to the image that wrote it (the data is intact and kept) and the roll goes on"
            ),
            WaitReason::SurvivorStarting { name } => write!(
                f,
                "quorum-loss recovery: {name} restarts as the only member of the cluster, with its log; the other members follow once it leads"
            ),
        }
    }
}

/// The one next step for this observation. See the module docs for the rules.
pub fn plan(observed: &Observed) -> Plan {
    let step = next_step(observed);
    if !observed.paused {
        return step;
    }
    // Paused holds back changes, not reports: waiting (and why) stays visible as it is.
    match step {
        Plan::Nothing | Plan::Wait { .. } => step,
        deferred => Plan::wait(WaitReason::Paused { deferred: Box::new(deferred) }),
    }
}

fn next_step(observed: &Observed) -> Plan {
    let desired = observed.desired_replicas;
    if !(MIN_REPLICAS..=MAX_REPLICAS).contains(&desired) {
        return Plan::wait(WaitReason::InvalidReplicas { replicas: desired });
    }
    let current_replicas = observed.stateful_set_replicas.unwrap_or(0);
    let listed: &[String] = observed.endpoints.as_ref().map_or(&[], |list| &list.names);
    if observed.stateful_set_replicas.is_none() && observed.endpoints.is_none() {
        return Plan::Bootstrap { replicas: desired };
    }

    // The list is the last committed membership: running a pod for each member it names is
    // always safe (a member with data follows its own log) and may be what brings quorum back.
    let listed_hosting = observed.replicas_hosting(listed.iter().map(String::as_str));
    if current_replicas < listed_hosting {
        return Plan::ResizeStatefulSet { replicas: listed_hosting };
    }

    if let Some(step) = observed.recovering.as_deref().and_then(|survivor| recovery_restart(observed, survivor)) {
        return step;
    }

    let leadership = Leadership::observe(observed);
    let Some(leader) = leadership.leader_with_quorum() else {
        return Plan::wait(leadership.no_quorum_reason(observed));
    };
    let members = &leadership.members;

    // The list follows the committed membership; the first list written with a leader also
    // marks the cluster formed (pods that start later join, never bootstrap).
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    if listed != names.as_slice() || !observed.formed {
        return Plan::UpdateEndpoints { names };
    }

    // Auth follows the spec as soon as the cluster formed (module docs).
    match (observed.auth, leader.auth_enabled) {
        (Some(true), Some(false)) => return Plan::EnableAuth,
        (Some(false), Some(true)) => return Plan::DisableAuth,
        _ => {}
    }

    // Pods beyond both the spec and the members go, but only once nobody lists their member.
    let keep_replicas = desired.max(listed_hosting);
    if current_replicas > keep_replicas {
        return Plan::ResizeStatefulSet { replicas: keep_replicas };
    }

    // A learner with lost data needs no replacing: it never votes, and catches up again.
    let lost_voter = members
        .iter()
        .find(|m| m.voter && observed.wanted(&m.name) && observed.pod(&m.name).is_some_and(|p| p.data_lost));
    if let Some(lost) = lost_voter {
        let step = Plan::ReplaceMember { name: lost.name.clone(), old_id: lost.id.clone() };
        return leadership.removal(observed, leader, lost, step);
    }

    // Scale down: names of other shapes sort last, so they go first, then the highest ordinal.
    if let Some(extra) = members.iter().rev().find(|m| !observed.wanted(&m.name)) {
        let step = Plan::RemoveMember { name: extra.name.clone(), id: extra.id.clone() };
        return leadership.removal(observed, leader, extra, step);
    }

    // Scale up: finish the learner in flight (lowest ordinal first) before adding the next.
    if let Some(learner) = members.iter().find(|m| !m.voter) {
        return leadership.promotion(observed, leader, learner);
    }
    let missing = (0..desired).find(|&ordinal| {
        let name = member_name(&observed.cluster, ordinal);
        !members.iter().any(|m| m.name == name)
    });
    if let Some(ordinal) = missing {
        return Plan::AddLearner { name: member_name(&observed.cluster, ordinal), ordinal };
    }
    leadership.roll(observed, leader).unwrap_or(Plan::Nothing)
}

// ----- quorum-loss recovery -----

/// The member a quorum-loss recovery keeps, as [`recovery_survivor`] chose it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Survivor {
    pub name: String,
    pub last_log_term: u64,
    pub last_log_index: u64,
    /// Every other member of the membership: their data is set aside, and writes that only they
    /// acknowledged may be lost.
    pub replaced: Vec<String>,
}

/// Whether a quorum-loss recovery may start now, and from which member; `Err` says why not.
/// Only once the cluster formed, and only while neither a leader with quorum nor a majority of
/// the voters answers (a majority elects a leader by itself; a recovery would throw its data
/// away for nothing). The survivor is the answering member with the most complete log: the
/// highest last term, then the highest last index (Raft's up-to-date rule); ties go to the
/// lowest ordinal.
pub fn recovery_survivor(observed: &Observed) -> Result<Survivor, String> {
    if !observed.formed {
        return Err("the cluster never elected a leader, so it has no quorum to lose".to_string());
    }
    let leadership = Leadership::observe(observed);
    if let Some(leader) = leadership.leader_with_quorum() {
        return Err(format!(
            "{} leads with a majority of the voters: there is no quorum loss to recover from",
            leader.name
        ));
    }
    let voters = leadership.voters();
    let answering: Vec<&Member> = leadership.answering_voters(observed).collect();
    if voters > 0 && answering.len() >= majority(voters) {
        let names: Vec<&str> = answering.iter().map(|m| m.name.as_str()).collect();
        return Err(format!(
            "a majority of the voters still answers ({} of {voters}: {}); it elects a leader by itself, and a recovery would throw away data that a majority holds",
            answering.len(),
            names.join(",")
        ));
    }
    let survivor =
        leadership.members.iter().filter_map(|m| observed.reported_by(&m.name).map(|s| (m, s))).min_by_key(|(m, s)| {
            (
                Reverse((s.last_log_term, s.last_log_index)),
                member_ordinal(&observed.cluster, &m.name).unwrap_or(u32::MAX),
            )
        });
    let Some((member, status)) = survivor else {
        return Err(
            "no member with data answers: there is no log to recover from (restore a backup instead)".to_string()
        );
    };
    Ok(Survivor {
        name: member.name.clone(),
        last_log_term: status.last_log_term,
        last_log_index: status.last_log_index,
        replaced: leadership.members.iter().filter(|m| m.name != member.name).map(|m| m.name.clone()).collect(),
    })
}

/// The recovery's restarts (module docs): the survivor's pod first, then, once it leads, every
/// pod of an older template whose member the survivor's cluster does not hold (the members it
/// removed), the highest ordinal first. `None` once none is left: the ordinary steps go on from
/// the survivor's cluster (members added back are rolled as any member, if need be).
fn recovery_restart(observed: &Observed, survivor: &str) -> Option<Plan> {
    let restart = |pod: &PodObservation| Plan::RestartMember {
        name: member_name(&observed.cluster, pod.ordinal),
        ordinal: pod.ordinal,
    };
    if let Some(pod) = observed.pod(survivor).filter(|p| p.outdated) {
        return Some(restart(pod));
    }
    let leadership = Leadership::observe(observed);
    let leads = leadership.leader_with_quorum().is_some_and(|leader| leader.name == survivor);
    if !leads {
        // Until it leads, the others stay as they are (their pods may be of an older template
        // yet: the one before the recovery's).
        let waiting = observed.pods.iter().any(|p| p.outdated);
        return waiting.then(|| Plan::wait(WaitReason::SurvivorStarting { name: survivor.to_string() }));
    }
    let removed = |pod: &&PodObservation| {
        let name = member_name(&observed.cluster, pod.ordinal);
        pod.outdated && !leadership.members.iter().any(|m| m.name == name)
    };
    observed.pods.iter().rev().find(removed).map(restart)
}

/// Who leads and who follows, from one observation; computed once for the planner and the status.
struct Leadership<'a> {
    /// The member claiming leadership in the highest term (an older leader cut off from the rest
    /// may still claim it in its own).
    leader: Option<&'a Status>,
    /// The membership the leader has applied (so committed); without a leader the best one known:
    /// that of the member with the newest log, or else the endpoint list. In endpoint-list order.
    members: Vec<Member>,
    /// Voters of `members` whose status follows the leader in its term (the leader included).
    following: BTreeSet<String>,
}

impl<'a> Leadership<'a> {
    fn observe(observed: &'a Observed) -> Self {
        let leader = observed
            .statuses()
            .filter(|s| s.role == Role::Leader)
            // Highest term wins; on a tie (impossible in Raft) the lowest ordinal, to stay deterministic.
            .min_by_key(|s| (Reverse(s.term), member_ordinal(&observed.cluster, &s.name)));
        let mut members = match leader {
            Some(leader) => leader.members.clone(),
            None => match observed
                .statuses()
                .min_by_key(|s| (Reverse((s.term, s.commit_index)), member_ordinal(&observed.cluster, &s.name)))
            {
                Some(newest) => newest.members.clone(),
                None => observed
                    .endpoints
                    .iter()
                    .flat_map(|list| &list.names)
                    .map(|name| Member { name: name.clone(), voter: true, ..Member::default() })
                    .collect(),
            },
        };
        observed.sort_members(&mut members);
        let following = match leader {
            Some(leader) => members
                .iter()
                .filter(|m| m.voter)
                .filter(|m| {
                    observed
                        .status_of(m)
                        .is_some_and(|s| s.id == leader.id || (s.term == leader.term && s.leader == leader.name))
                })
                .map(|m| m.name.clone())
                .collect(),
            None => BTreeSet::new(),
        };
        Leadership { leader, members, following }
    }

    fn voters(&self) -> usize {
        self.members.iter().filter(|m| m.voter).count()
    }

    /// The leader, if a majority of the voters follow it.
    fn leader_with_quorum(&self) -> Option<&'a Status> {
        self.leader.filter(|_| self.following.len() >= majority(self.voters()) && self.voters() > 0)
    }

    fn no_quorum_reason(&self, observed: &Observed) -> WaitReason {
        let lost: Vec<String> =
            observed.pods.iter().filter(|p| p.data_lost).map(|p| member_name(&observed.cluster, p.ordinal)).collect();
        if !lost.is_empty() {
            return WaitReason::DataLostWithoutQuorum { members: lost };
        }
        if !observed.formed {
            return WaitReason::Forming;
        }
        WaitReason::QuorumLost { reachable: self.answering_voters(observed).count(), voters: self.voters() }
    }

    /// The voters that answer under their own name, their data not lost.
    fn answering_voters<'b>(&'b self, observed: &'b Observed) -> impl Iterator<Item = &'b Member> {
        self.members.iter().filter(|m| m.voter && observed.reported_by(&m.name).is_some())
    }

    /// `step` removes `member`, unless it leads (hand over first) or its removal would leave less
    /// than a majority following the leader.
    fn removal(&self, observed: &Observed, leader: &Status, member: &Member, step: Plan) -> Plan {
        if member.id == leader.id {
            return match self.transfer_target(observed, member) {
                Some((to, to_id)) => Plan::TransferLeadership { from: leader.name.clone(), to, to_id },
                None => Plan::wait(WaitReason::NoTransferTarget { leader: leader.name.clone() }),
            };
        }
        if member.voter {
            let voters_after = self.voters() - 1;
            let following_after = self.following.len() - usize::from(self.following.contains(&member.name));
            if following_after < majority(voters_after) {
                return Plan::wait(WaitReason::WouldLoseQuorum { name: member.name.clone() });
            }
        }
        step
    }

    /// The voter that should take over from `leaving`: the most caught-up one that follows the
    /// leader and whose pod is ready (ties: the lowest ordinal).
    fn transfer_target(&self, observed: &Observed, leaving: &Member) -> Option<(String, String)> {
        let candidates = self
            .members
            .iter()
            .filter(|m| m.voter && m.id != leaving.id && self.following.contains(&m.name))
            .filter(|m| observed.pod(&m.name).is_some_and(|p| p.ready))
            .filter_map(|m| observed.status_of(m).map(|s| (m, s.applied_index)));
        most_caught_up(candidates).map(|m| (m.name.clone(), m.id.clone()))
    }

    /// The rolling restart's next step while pods run an older template (module docs): every
    /// member up, following and caught up before one restarts; followers first, the highest
    /// ordinal first; the leader last, after a handover, so the cluster sees one transfer and no
    /// election timeout. `None` when every pod runs the current template.
    fn roll(&self, observed: &Observed, leader: &Status) -> Option<Plan> {
        let outdated: Vec<&Member> =
            self.members.iter().filter(|m| observed.pod(&m.name).is_some_and(|p| p.outdated)).collect();
        let pod_ready = |m: &Member| observed.pod(&m.name).is_some_and(|p| p.ready);
        // An outdated follower that is down anyway restarts first: it costs no availability,
        // and it is how a member stuck on a bad template (an image it cannot run, or one too old
        // for its data) gets the template that fixes it.
        let down = |m: &&&Member| m.id != leader.id && !pod_ready(m) && !self.following.contains(&m.name);
        if let Some(down) = outdated.iter().rev().find(down) {
            let ordinal = member_ordinal(&observed.cluster, &down.name).unwrap_or(u32::MAX);
            return Some(Plan::RestartMember { name: down.name.clone(), ordinal });
        }
        // A member whose image is older than its data: the roll (this one, or the one that
        // made its pod) stops, and says so.
        if let Some(stuck) = self.members.iter().find(|m| observed.pod(&m.name).is_some_and(|p| p.newer_data)) {
            return Some(Plan::wait(WaitReason::NewerData { name: stuck.name.clone() }));
        }
        if outdated.is_empty() {
            return None;
        }
        for member in &self.members {
            let ready = pod_ready(member);
            let caught_up = observed.status_of(member).is_some_and(|s| caught_up(s.applied_index, leader.commit_index));
            if !ready || !caught_up || !self.following.contains(&member.name) {
                return Some(Plan::wait(WaitReason::MemberCatchingUp { name: member.name.clone() }));
            }
        }
        let next = outdated.iter().rev().find(|m| m.id != leader.id).or(outdated.first())?;
        let restart = Plan::RestartMember {
            name: next.name.clone(),
            ordinal: member_ordinal(&observed.cluster, &next.name).unwrap_or(u32::MAX),
        };
        if self.voters() == 1 {
            // One member: nobody to hand over to, and no majority to keep; as any restart.
            return Some(restart);
        }
        if next.id == leader.id {
            return Some(match self.transfer_target(observed, next) {
                Some((to, to_id)) => Plan::TransferLeadership { from: leader.name.clone(), to, to_id },
                None => Plan::wait(WaitReason::NoTransferTarget { leader: leader.name.clone() }),
            });
        }
        if self.following.len() - 1 < majority(self.voters()) {
            return Some(Plan::wait(WaitReason::WouldLoseQuorum { name: next.name.clone() }));
        }
        Some(restart)
    }

    /// Promote `learner` once it runs, has caught up, and the larger majority still holds.
    fn promotion(&self, observed: &Observed, leader: &Status, learner: &Member) -> Plan {
        let Some(status) = observed.status_of(learner) else {
            return Plan::wait(WaitReason::MemberNotReady { name: learner.name.clone() });
        };
        if !caught_up(status.applied_index, leader.commit_index) {
            return Plan::wait(WaitReason::LearnerCatchingUp {
                name: learner.name.clone(),
                applied_index: status.applied_index,
                commit_index: leader.commit_index,
            });
        }
        // A new voter raises the majority: it must itself follow the leader, or a cluster with
        // one voter down would stall.
        let follows = status.term == leader.term && status.leader == leader.name;
        if self.following.len() + usize::from(follows) < majority(self.voters() + 1) {
            return Plan::wait(WaitReason::WouldLoseQuorum { name: learner.name.clone() });
        }
        Plan::Promote { name: learner.name.clone(), id: learner.id.clone() }
    }
}

/// The promote endpoint's rule.
fn caught_up(applied_index: u64, commit_index: u64) -> bool {
    crate::base::wire::learner_caught_up(applied_index, commit_index)
}

// ----- the health the status reports -----

/// The resource's `status.phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created, and no leader has been elected yet.
    Bootstrapping,
    /// The members are the ones the spec asks for, all voters, all healthy.
    Running,
    /// Membership, the StatefulSet or the endpoint list is still moving toward the spec.
    Scaling,
    /// A leader with quorum, but a voter is unhealthy or lost its data.
    Degraded,
    /// The cluster had a leader and has no quorum now: it cannot serve writes.
    QuorumLost,
    /// `spec.paused` (unless quorum is lost, which says more).
    Paused,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Bootstrapping => "Bootstrapping",
            Phase::Running => "Running",
            Phase::Scaling => "Scaling",
            Phase::Degraded => "Degraded",
            Phase::QuorumLost => "QuorumLost",
            Phase::Paused => "Paused",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the resource's status says about the cluster, derived from one observation. Deterministic
/// (no timestamps), so that writing it does not wake the controller again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterHealth {
    pub phase: Phase,
    /// The leader's name, when a majority of the voters follow it.
    pub leader: Option<String>,
    /// The leader's term; without one, the highest term any member reports.
    pub term: u64,
    /// The leader's commit index; without one, the highest any member reports.
    pub commit_index: u64,
    /// The StatefulSet's replicas (0 before it exists).
    pub replicas: u32,
    pub ready_replicas: u32,
    /// One row per member of the membership the planner works from, in endpoint-list order.
    pub members: Vec<MemberHealth>,
    /// The ConfigMap's list and hash as they are.
    pub endpoints: Vec<String>,
    pub endpoints_hash: Option<String>,
    /// The leader's membership hash.
    pub membership_hash: Option<String>,
    /// Whether auth is on, as the leader with quorum reports it (`None`: no such leader, or one
    /// too old to say).
    pub auth_enabled: Option<bool>,
    /// Condition `Available`: a leader with quorum.
    pub available: bool,
    /// The cluster had a leader and has no quorum now.
    pub quorum_lost: bool,
    /// Condition `MembershipConsistent`: every healthy member reports the same membership, with the
    /// names the endpoint list has.
    pub membership_consistent: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHealth {
    pub name: String,
    /// `None` when neither the membership nor the member itself says.
    pub id: Option<String>,
    /// `None` when the member does not answer.
    pub role: Option<Role>,
    pub voter: bool,
    /// Answers as this member, its pod is ready, its data is there and it reports no errors.
    pub healthy: bool,
    pub applied_index: Option<u64>,
    /// Entries behind the leader's commit index (`None` without a leader or an answer).
    pub lag: Option<u64>,
}

/// The health of the cluster in this observation.
pub fn derive_status(observed: &Observed) -> ClusterHealth {
    let leadership = Leadership::observe(observed);
    let leader = leadership.leader_with_quorum();
    let available = leader.is_some();

    let members: Vec<MemberHealth> = leadership
        .members
        .iter()
        .map(|member| {
            // Without a leader the membership may come from the endpoint list, without ids.
            let status = observed.reported_by(&member.name).filter(|s| member.id.is_empty() || s.id == member.id);
            let pod_ready = observed.pod(&member.name).is_some_and(|p| p.ready);
            let applied_index = status.map(|s| s.applied_index);
            MemberHealth {
                name: member.name.clone(),
                id: Some(member.id.clone()).filter(|id| !id.is_empty()).or_else(|| status.map(|s| s.id.clone())),
                role: status.map(|s| s.role),
                voter: member.voter,
                healthy: pod_ready && status.is_some_and(|s| s.errors.is_empty()),
                applied_index,
                lag: leader.zip(applied_index).map(|(l, applied)| l.commit_index.saturating_sub(applied)),
            }
        })
        .collect();

    let endpoints: Vec<String> = observed.endpoints.as_ref().map(|list| list.names.clone()).unwrap_or_default();
    let healthy_statuses: Vec<&Status> =
        members.iter().filter(|m| m.healthy).filter_map(|m| observed.reported_by(&m.name)).collect();
    let membership_consistent = observed.endpoints.is_some()
        && !healthy_statuses.is_empty()
        && healthy_statuses.iter().all(|s| {
            let mut reported = s.members.clone();
            observed.sort_members(&mut reported);
            s.membership_hash == healthy_statuses[0].membership_hash
                && reported.iter().map(|m| &m.name).eq(endpoints.iter())
        });

    let degraded = observed.pods.iter().any(|p| p.data_lost) || members.iter().any(|m| m.voter && !m.healthy);
    let converged = observed.stateful_set_replicas == Some(observed.desired_replicas)
        && members.len() == observed.desired_replicas as usize
        && members.iter().all(|m| m.voter && observed.wanted(&m.name))
        && members.iter().map(|m| &m.name).eq(endpoints.iter());
    let phase = if !available && observed.formed {
        Phase::QuorumLost
    } else if observed.paused {
        Phase::Paused
    } else if !available {
        Phase::Bootstrapping
    } else if degraded {
        Phase::Degraded
    } else if !converged {
        Phase::Scaling
    } else {
        Phase::Running
    };

    let statuses = || observed.statuses();
    ClusterHealth {
        phase,
        leader: leader.map(|l| l.name.clone()),
        term: leader.map(|l| l.term).or_else(|| statuses().map(|s| s.term).max()).unwrap_or(0),
        commit_index: leader.map(|l| l.commit_index).or_else(|| statuses().map(|s| s.commit_index).max()).unwrap_or(0),
        replicas: observed.stateful_set_replicas.unwrap_or(0),
        ready_replicas: observed.pods.iter().filter(|p| p.ready).count() as u32,
        members,
        endpoints,
        endpoints_hash: observed.endpoints.as_ref().map(|list| list.hash.clone()),
        membership_hash: leader.map(|l| l.membership_hash.clone()),
        auth_enabled: leader.and_then(|l| l.auth_enabled),
        available,
        quorum_lost: observed.formed && !available,
        membership_consistent,
    }
}

#[cfg(test)]
mod tests;

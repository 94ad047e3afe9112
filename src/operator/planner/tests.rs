//! Planner tests (issue 5, must-show 1). Single observations → one step, one test per case, from a
//! table; then scenarios driven step by step through `TestCluster`, a small model of a cluster that
//! applies each planned step the way the controller and the members would, and checks the
//! planner's rules (quorum before acting, endpoint list = committed membership, catch-up before
//! promotion, the leader never removed) after every step.
//!
//! Member ids in the model are readable: `etcd-i` first runs as hex id `1i`, and each replacement
//! adds 0x100 (`etcd-1` replaced is `111`).

use std::collections::BTreeMap;

use super::*;

const CLUSTER: &str = "etcd";
/// The commit index of a running test cluster: large enough that 10% of it is a visible margin.
const COMMIT: u64 = 100;
/// A scenario that has not converged after this many steps is a livelock.
const MAX_STEPS: usize = 100;

fn name(ordinal: u32) -> String {
    member_name(CLUSTER, ordinal)
}

fn ordinal(name: &str) -> u32 {
    member_ordinal(CLUSTER, name).unwrap_or_else(|| panic!("{name} is not a member name of {CLUSTER}"))
}

fn names(ordinals: std::ops::Range<u32>) -> Vec<String> {
    ordinals.map(name).collect()
}

fn fnv_hash(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{hash:016x}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodState {
    /// Created, not yet running as a member (its member may not exist yet).
    Starting,
    /// Runs as member `id` and answers `/v1/status`.
    Up,
    /// Does not answer (crashed, partitioned, or stopped after its removal).
    Down,
    /// Refuses to start: the cluster had replicated to it and its data is gone.
    DataLost,
    /// Refuses to start: its image is older than its data (exit code 5).
    NewerData,
}

#[derive(Clone, Debug)]
struct TestPod {
    state: PodState,
    /// Readiness of an `Up` pod.
    ready: bool,
    /// The member id it runs (or last ran) as.
    id: String,
    applied: u64,
    /// Runs an older pod template.
    outdated: bool,
}

/// A model cluster: builds observations (`build`) and applies planned steps (`apply`).
#[derive(Clone, Debug)]
struct TestCluster {
    desired: u32,
    paused: bool,
    formed: bool,
    stateful_set: Option<u32>,
    endpoints: Option<Vec<String>>,
    /// The committed membership, in the order the leader reports it.
    members: Vec<Member>,
    pods: BTreeMap<u32, TestPod>,
    leader: Option<String>,
    /// Members that run but have not heard from the leader in its term.
    leader_unknown_to: Vec<String>,
    term: u64,
    commit: u64,
    /// How many ids each name has had.
    incarnations: BTreeMap<String, u64>,
    /// `Observed::auth`: what the spec (and status) ask of auth.
    auth_wanted: Option<bool>,
    /// Whether auth is on, as every member reports it (`None`: members too old to say).
    auth_enabled: Option<bool>,
    /// `Observed::recovering`: the survivor of a quorum-loss recovery under way.
    recovering: Option<String>,
    /// The term of a pod's last log entry, where it is not `term` (the last index is its
    /// applied index).
    log_terms: BTreeMap<u32, u64>,
}

impl Observed {
    /// Nothing exists yet: a `RaftCluster` `etcd` asking for 3 members.
    fn test() -> TestCluster {
        TestCluster {
            desired: 3,
            paused: false,
            formed: false,
            stateful_set: None,
            endpoints: None,
            members: Vec::new(),
            pods: BTreeMap::new(),
            leader: None,
            leader_unknown_to: Vec::new(),
            term: 0,
            commit: 0,
            incarnations: BTreeMap::new(),
            auth_wanted: None,
            auth_enabled: Some(false),
            recovering: None,
            log_terms: BTreeMap::new(),
        }
    }
}

impl TestCluster {
    // ----- builders -----

    fn replicas(mut self, replicas: u32) -> Self {
        self.desired = replicas;
        self
    }

    fn paused(mut self) -> Self {
        self.paused = true;
        self
    }

    /// `Observed::auth`: `Some(true)` with `spec.auth`, `Some(false)` once it was removed.
    fn wants_auth(mut self, wanted: Option<bool>) -> Self {
        self.auth_wanted = wanted;
        self
    }

    /// What the members report of auth.
    fn auth_reported(mut self, enabled: Option<bool>) -> Self {
        self.auth_enabled = enabled;
        self
    }

    /// A formed, converged cluster of `voters` members (and `spec.replicas` as many), led by
    /// `etcd-0` in term 2, every member applied up to the commit index.
    fn running(mut self, voters: u32) -> Self {
        self.desired = voters;
        self.formed = true;
        for ordinal in 0..voters {
            let id = self.new_id(&name(ordinal));
            self.members.push(Member { id: id.clone(), name: name(ordinal), voter: true, ..Member::default() });
            self.pods
                .insert(ordinal, TestPod { state: PodState::Up, ready: true, id, applied: COMMIT, outdated: false });
        }
        self.stateful_set = Some(voters);
        self.endpoints = Some(names(0..voters));
        self.leader = Some(name(0));
        self.term = 2;
        self.commit = COMMIT;
        self
    }

    /// Leadership is with `member` now (in a later term).
    fn leader(mut self, member: &str) -> Self {
        self.leader = Some(member.to_string());
        self.term += 1;
        self
    }

    /// `member` joined as a learner (listed, its pod running) and has applied this much.
    fn learner(mut self, member: &str, applied: u64) -> Self {
        let id = self.new_id(member);
        self.members.push(Member { id: id.clone(), name: member.to_string(), voter: false, ..Member::default() });
        self.pods.insert(ordinal(member), TestPod { state: PodState::Up, ready: true, id, applied, outdated: false });
        self.endpoints = Some(self.member_names());
        self.stateful_set = self.stateful_set.max(Some(ordinal(member) + 1));
        self
    }

    /// A voter that is no `etcd-i` (added by hand), with no pod.
    fn foreign_voter(mut self, member: &str) -> Self {
        self.members.push(Member { id: "f00".to_string(), name: member.to_string(), voter: true, ..Member::default() });
        self.endpoints = Some(self.member_names());
        self
    }

    fn applied(mut self, member: &str, applied: u64) -> Self {
        self.pod_mut(member).applied = applied;
        self
    }

    fn down(mut self, member: &str) -> Self {
        self.pod_mut(member).state = PodState::Down;
        self
    }

    /// A new pod template: every pod runs an older one.
    fn template_changed(mut self) -> Self {
        for pod in self.pods.values_mut() {
            pod.outdated = true;
        }
        self
    }

    /// Answers and follows, but its pod is not ready.
    fn not_ready(mut self, member: &str) -> Self {
        self.pod_mut(member).ready = false;
        self
    }

    /// No member leads (the last one stepped down without a majority).
    fn without_leader(mut self) -> Self {
        self.leader = None;
        self
    }

    /// `member`'s last log entry is of `term`.
    fn log_term(mut self, member: &str, term: u64) -> Self {
        self.log_terms.insert(ordinal(member), term);
        self
    }

    /// A recovery from `survivor` is under way (`status.recovery`), and so every pod runs a
    /// template older than the one with `--quorum-recovery`.
    fn recovering(mut self, survivor: &str) -> Self {
        self.recovering = Some(survivor.to_string());
        self.template_changed()
    }

    fn data_lost(mut self, member: &str) -> Self {
        self.pod_mut(member).state = PodState::DataLost;
        self
    }

    fn endpoints(mut self, list: &[&str]) -> Self {
        self.endpoints = Some(list.iter().map(|s| s.to_string()).collect());
        self
    }

    /// The StatefulSet (and with it every pod) was deleted.
    fn without_stateful_set(mut self) -> Self {
        self.stateful_set = None;
        self.pods.clear();
        self
    }

    /// `member` runs but has not heard from the leader in its term.
    fn leader_unknown_to(mut self, member: &str) -> Self {
        self.leader_unknown_to.push(member.to_string());
        self
    }

    fn without_endpoints(mut self) -> Self {
        self.endpoints = None;
        self
    }

    fn without_pod(mut self, member: &str) -> Self {
        self.pods.remove(&ordinal(member));
        self
    }

    fn stateful_set(mut self, replicas: u32) -> Self {
        self.stateful_set = Some(replicas);
        self
    }

    /// `member` has been removed from the membership (its pod stopped), nothing else changed yet.
    fn removed(mut self, member: &str) -> Self {
        self.members.retain(|m| m.name != member);
        self.pod_mut(member).state = PodState::Down;
        self
    }

    /// The state after the cluster applied `step`.
    fn after(mut self, step: Plan) -> Self {
        self.apply(&step);
        self
    }

    // ----- observation -----

    fn build(&self) -> Observed {
        let membership_hash =
            fnv_hash(&self.members.iter().map(|m| format!("{}={}", m.id, m.name)).collect::<Vec<_>>().join(","));
        let leader_up = self.leader.as_deref().filter(|l| self.is_up(l)).unwrap_or("").to_string();
        let pods = self
            .pods
            .iter()
            .map(|(&ordinal, pod)| {
                let up = pod.state == PodState::Up;
                let status = up.then(|| {
                    let voter = self.members.iter().any(|m| m.id == pod.id && m.voter);
                    let role = if leader_up == name(ordinal) {
                        Role::Leader
                    } else if voter {
                        Role::Follower
                    } else {
                        Role::Learner
                    };
                    Status {
                        name: name(ordinal),
                        id: pod.id.clone(),
                        role,
                        term: self.term,
                        leader: if self.leader_unknown_to.contains(&name(ordinal)) {
                            String::new()
                        } else {
                            leader_up.clone()
                        },
                        commit_index: self.commit,
                        applied_index: pod.applied,
                        members: self.members.clone(),
                        membership_hash: membership_hash.clone(),
                        errors: Vec::new(),
                        auth_enabled: self.auth_enabled,
                        last_log_term: self.log_terms.get(&ordinal).copied().unwrap_or(self.term),
                        last_log_index: pod.applied,
                        ..Status::default()
                    }
                });
                PodObservation {
                    ordinal,
                    ready: up && pod.ready,
                    data_lost: pod.state == PodState::DataLost,
                    newer_data: pod.state == PodState::NewerData,
                    status,
                    outdated: pod.outdated,
                }
            })
            .collect();
        Observed {
            cluster: CLUSTER.to_string(),
            desired_replicas: self.desired,
            paused: self.paused,
            formed: self.formed,
            stateful_set_replicas: self.stateful_set,
            pods,
            endpoints: self
                .endpoints
                .as_ref()
                .map(|names| EndpointList { names: names.clone(), hash: fnv_hash(&names.join(",")) }),
            recovering: self.recovering.clone(),
            auth: self.auth_wanted,
        }
    }

    // ----- the cluster's reaction to a step -----

    /// Applies `step` as the controller and the members would, after checking that the planner
    /// kept its rules.
    fn apply(&mut self, step: &Plan) {
        match step {
            Plan::Bootstrap { replicas } => {
                assert!(self.stateful_set.is_none() && self.endpoints.is_none(), "bootstrap over an existing cluster");
                for ordinal in 0..*replicas {
                    let id = self.new_id(&name(ordinal));
                    self.members.push(Member { id, name: name(ordinal), voter: true, ..Member::default() });
                    self.pods.insert(ordinal, TestPod::starting());
                }
                self.stateful_set = Some(*replicas);
                self.endpoints = Some(names(0..*replicas));
                // The initial voters are entries 1..n of term 1, committed by construction.
                self.term = 1;
                self.commit = u64::from(*replicas);
            }
            Plan::AddLearner { name: member, ordinal: at } => {
                self.assert_quorum(step);
                assert_eq!(*member, name(*at));
                assert!(!self.members.iter().any(|m| &m.name == member), "{member} is already a member");
                let id = self.new_id(member);
                self.members.push(Member { id, name: member.clone(), voter: false, ..Member::default() });
                self.commit_entry();
            }
            Plan::Promote { name: member, id } => {
                self.assert_quorum(step);
                let pod = &self.pods[&ordinal(member)];
                assert!(pod.applied * 10 >= self.commit * 9, "{member} promoted at {} of {}", pod.applied, self.commit);
                let entry = self.members.iter_mut().find(|m| &m.id == id).expect("the learner is a member");
                assert!(!entry.voter, "{member} is already a voter");
                entry.voter = true;
                self.commit_entry();
                self.assert_quorum(step);
            }
            Plan::TransferLeadership { from, to, to_id } => {
                self.assert_quorum(step);
                assert_eq!(self.leader.as_ref(), Some(from), "a transfer starts at the leader");
                assert!(self.members.iter().any(|m| &m.id == to_id && &m.name == to && m.voter), "{to} is a voter");
                assert!(self.is_up(to), "{to} runs");
                self.leader = Some(to.clone());
                self.term += 1;
                self.commit_entry(); // the new leader's no-op
            }
            Plan::RemoveMember { name: member, id } | Plan::ReplaceMember { name: member, old_id: id } => {
                self.assert_quorum(step);
                assert_ne!(self.leader.as_ref(), Some(member), "the leader is never removed");
                let before = self.members.len();
                self.members.retain(|m| &m.id != id);
                assert_eq!(self.members.len(), before - 1, "{member} ({id}) was a member");
                if let Some(pod) = self.pods.get_mut(&ordinal(member)).filter(|p| p.state == PodState::Up) {
                    pod.state = PodState::Down; // a removed member stops
                }
                self.commit_entry();
                self.assert_quorum(step);
            }
            Plan::ResizeStatefulSet { replicas } => {
                let hosting = self.members.iter().filter_map(|m| member_ordinal(CLUSTER, &m.name)).max();
                assert!(hosting.is_none_or(|highest| highest < *replicas), "{step} drops a member's pod");
                self.stateful_set = Some(*replicas);
                self.pods.retain(|&ordinal, _| ordinal < *replicas);
                for ordinal in 0..*replicas {
                    self.pods.entry(ordinal).or_insert_with(TestPod::starting);
                }
            }
            Plan::UpdateEndpoints { names } => {
                self.assert_quorum(step);
                assert_eq!(*names, self.member_names(), "the list is the committed membership");
                self.endpoints = Some(names.clone());
                // The controller writes the list with `initial-cluster-state: existing`.
                self.formed = true;
            }
            Plan::EnableAuth | Plan::DisableAuth => {
                self.assert_quorum(step);
                assert!(self.formed, "{step} before the cluster formed");
                let on = *step == Plan::EnableAuth;
                assert_eq!(self.auth_wanted, Some(on), "{step} as the spec asks");
                assert_eq!(self.auth_enabled, Some(!on), "{step} changes auth");
                self.auth_enabled = Some(on);
                self.commit_entry();
            }
            Plan::RestartMember { name: member, ordinal: at } if self.recovering.is_some() => {
                let survivor = self.recovering.clone().unwrap_or_default();
                let leads_alone =
                    self.leader.as_ref() == Some(&survivor) && self.is_up(&survivor) && self.voters() == 1;
                let pod = self.pods.get_mut(at).expect("the pod");
                assert!(pod.outdated, "{member} runs the recovery's template already");
                if *member == survivor {
                    // `--force-new-cluster`: the only member, with its id and its log.
                    let id = pod.id.clone();
                    *pod = TestPod { id: id.clone(), ..TestPod::starting() };
                    self.members.retain(|m| m.id == id);
                    assert_eq!(self.members.len(), 1, "the survivor {member} is a member");
                    self.members[0].voter = true;
                    self.leader = None;
                } else {
                    assert!(leads_alone, "{member} restarted before the survivor {survivor} leads alone");
                    // Its data is set aside: it starts empty, and joins once added back.
                    *pod = TestPod::starting();
                }
            }
            Plan::RestartMember { name: member, ordinal: at } => {
                self.assert_quorum(step);
                assert_eq!(*member, name(*at));
                let voters = self.voters();
                assert!(
                    voters == 1 || self.leader.as_ref() != Some(member),
                    "the leader is restarted only after it handed over"
                );
                // A member that is down anyway may restart whatever the others do.
                let was_down = !self.is_up(member) || !self.pods[at].ready;
                for m in self.members.iter().filter(|_| !was_down) {
                    let pod = &self.pods[&ordinal(&m.name)];
                    assert!(
                        pod.state == PodState::Up && pod.ready && pod.applied * 10 >= self.commit * 9,
                        "{member} restarted while {} is not up and caught up",
                        m.name
                    );
                }
                let pod = self.pods.get_mut(at).expect("the pod");
                assert!(pod.outdated, "{member} runs the current template already");
                // The pod is made again from the current template; it restarts from its data.
                pod.state = PodState::Starting;
                pod.outdated = false;
                if voters == 1 {
                    self.leader = None;
                }
            }
            Plan::Wait { .. } => self.tick(),
            Plan::Nothing => {}
        }
    }

    /// Time passes: running learners catch up, started pods join, a member whose data was lost
    /// restarts once it has been added back, and a cluster without a leader elects one.
    fn tick(&mut self) {
        for pod in self.pods.values_mut().filter(|p| p.state == PodState::Up) {
            pod.applied = self.commit;
        }
        for (&at, pod) in self.pods.iter_mut() {
            let member = self.members.iter().find(|m| m.name == name(at));
            match (pod.state, member) {
                // A joining member asks the peers for its id.
                (PodState::Starting, Some(member)) => {
                    *pod = TestPod {
                        state: PodState::Up,
                        ready: true,
                        id: member.id.clone(),
                        applied: if member.voter { self.commit } else { 0 },
                        outdated: false,
                    }
                }
                (PodState::DataLost, Some(member)) if member.id != pod.id => *pod = TestPod::starting(),
                _ => {}
            }
        }
        if self.leader.as_deref().is_none_or(|l| !self.is_up(l)) {
            let up_voters: Vec<String> =
                self.members.iter().filter(|m| m.voter && self.is_up(&m.name)).map(|m| m.name.clone()).collect();
            if up_voters.len() >= majority(self.voters()) {
                self.leader = up_voters.first().cloned();
                self.term += 1;
                self.commit_entry();
            }
        }
    }

    // ----- helpers -----

    fn new_id(&mut self, member: &str) -> String {
        let incarnation = self.incarnations.entry(member.to_string()).or_insert(0);
        let id = 0x100 * *incarnation + 0x10 + u64::from(ordinal(member));
        *incarnation += 1;
        format!("{id:x}")
    }

    fn pod_mut(&mut self, member: &str) -> &mut TestPod {
        self.pods.get_mut(&ordinal(member)).unwrap_or_else(|| panic!("{member} has no pod"))
    }

    fn member_names(&self) -> Vec<String> {
        let mut members = self.members.clone();
        members.sort_by_key(|m| (member_ordinal(CLUSTER, &m.name).unwrap_or(u32::MAX), m.name.clone()));
        members.into_iter().map(|m| m.name).collect()
    }

    /// Whether the member of this name runs as its current id.
    fn is_up(&self, member: &str) -> bool {
        let Some(entry) = self.members.iter().find(|m| m.name == member) else { return false };
        member_ordinal(CLUSTER, member)
            .and_then(|at| self.pods.get(&at))
            .is_some_and(|pod| pod.state == PodState::Up && pod.id == entry.id)
    }

    fn voters(&self) -> usize {
        self.members.iter().filter(|m| m.voter).count()
    }

    /// A new entry commits: running voters apply it at once, learners lag until the next tick.
    fn commit_entry(&mut self) {
        self.commit += 1;
        let voter_ids: Vec<&String> = self.members.iter().filter(|m| m.voter).map(|m| &m.id).collect();
        for pod in self.pods.values_mut().filter(|p| p.state == PodState::Up && voter_ids.contains(&&p.id)) {
            pod.applied = self.commit;
        }
    }

    fn assert_quorum(&self, step: &Plan) {
        let leader = self.leader.as_deref().filter(|l| self.is_up(l));
        let following = self.members.iter().filter(|m| m.voter && self.is_up(&m.name)).count();
        assert!(
            leader.is_some() && following >= majority(self.voters()),
            "{step} without quorum: leader {leader:?}, {following} of {} voters up",
            self.voters()
        );
    }
}

impl TestPod {
    fn starting() -> Self {
        TestPod { state: PodState::Starting, ready: false, id: String::new(), applied: 0, outdated: false }
    }
}

/// A step as one short line, for scenario scripts.
fn label(step: &Plan) -> String {
    match step {
        Plan::Bootstrap { replicas } => format!("bootstrap {replicas}"),
        Plan::AddLearner { name, .. } => format!("add-learner {name}"),
        Plan::Promote { name, .. } => format!("promote {name}"),
        Plan::TransferLeadership { from, to, .. } => format!("transfer {from} -> {to}"),
        Plan::RemoveMember { name, .. } => format!("remove {name}"),
        Plan::ResizeStatefulSet { replicas } => format!("resize {replicas}"),
        Plan::ReplaceMember { name, .. } => format!("replace {name}"),
        Plan::UpdateEndpoints { names } => format!("endpoints {}", names.join(",")),
        Plan::EnableAuth => "enable-auth".to_string(),
        Plan::DisableAuth => "disable-auth".to_string(),
        Plan::RestartMember { name, .. } => format!("restart {name}"),
        Plan::Wait { reason } => match reason {
            WaitReason::MemberNotReady { name }
            | WaitReason::LearnerCatchingUp { name, .. }
            | WaitReason::MemberCatchingUp { name } => {
                format!("wait {} {name}", reason.kind())
            }
            _ => format!("wait {}", reason.kind()),
        },
        Plan::Nothing => "nothing".to_string(),
    }
}

/// Plans and applies steps until the planner has nothing to do; returns the steps taken.
fn drive(cluster: &mut TestCluster) -> Vec<String> {
    let mut steps = Vec::new();
    for _ in 0..MAX_STEPS {
        let step = plan(&cluster.build());
        if step == Plan::Nothing {
            return steps;
        }
        steps.push(label(&step));
        cluster.apply(&step);
    }
    panic!("no convergence after {MAX_STEPS} steps: {steps:#?}");
}

/// Once every pod runs the current template the plan is done while the member restarted last
/// is still coming back (Degraded says so, not Progressing): time passes until it is.
fn settle(cluster: &mut TestCluster) {
    for _ in 0..MAX_STEPS {
        if derive_status(&cluster.build()).phase == Phase::Running {
            return;
        }
        assert_eq!(plan(&cluster.build()), Plan::Nothing, "nothing to do while it comes back");
        cluster.tick();
    }
}

/// The cluster is what the spec asks for, and its status says so.
fn assert_converged(cluster: &TestCluster) {
    let health = derive_status(&cluster.build());
    let expected = names(0..cluster.desired);
    assert_eq!(health.phase, Phase::Running, "{health:#?}");
    assert!(health.available && health.membership_consistent && !health.quorum_lost, "{health:#?}");
    assert_eq!(health.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>(), expected);
    assert!(health.members.iter().all(|m| m.voter && m.healthy && m.lag == Some(0)), "{health:#?}");
    assert_eq!(health.endpoints, expected);
    assert_eq!(health.replicas, cluster.desired);
    assert_eq!(health.ready_replicas, cluster.desired);
}

/// One learner joining: listed, then its pod, then promotion once it caught up.
fn join(ordinal: u32) -> Vec<String> {
    let member = name(ordinal);
    vec![
        format!("add-learner {member}"),
        format!("endpoints {}", names(0..ordinal + 1).join(",")),
        format!("resize {}", ordinal + 1),
        format!("wait MemberNotReady {member}"),
        format!("wait LearnerCatchingUp {member}"),
        format!("promote {member}"),
    ]
}

/// One member leaving (not the leader): removed, unlisted, then its pod.
fn leave(ordinal: u32) -> Vec<String> {
    vec![
        format!("remove {}", name(ordinal)),
        format!("endpoints {}", names(0..ordinal).join(",")),
        format!("resize {ordinal}"),
    ]
}

fn wait(reason: WaitReason) -> Plan {
    Plan::Wait { reason }
}

// ----- one observation, one step -----

/// One test per case: `name: cluster => expected step;`.
macro_rules! planner_cases {
    ($($case:ident: $cluster:expr => $expected:expr;)*) => {
        $(
            #[test]
            fn $case() {
                let observed = $cluster.build();
                assert_eq!(plan(&observed), $expected, "{observed:#?}");
            }
        )*
    };
}

planner_cases! {
    bootstrap_one_member:
        Observed::test().replicas(1) => Plan::Bootstrap { replicas: 1 };
    bootstrap_three_members:
        Observed::test().replicas(3) => Plan::Bootstrap { replicas: 3 };
    a_bootstrapped_cluster_waits_for_its_first_leader:
        Observed::test().after(Plan::Bootstrap { replicas: 3 }) => wait(WaitReason::Forming);
    a_cluster_as_the_spec_asks_needs_nothing:
        Observed::test().running(3) => Plan::Nothing;
    a_down_follower_needs_no_step_but_is_no_quorum_loss:
        Observed::test().running(3).down("etcd-2") => Plan::Nothing;
    replicas_outside_one_to_nine_wait_for_a_fixed_spec:
        Observed::test().running(3).replicas(10) => wait(WaitReason::InvalidReplicas { replicas: 10 });
    zero_replicas_wait_for_a_fixed_spec:
        Observed::test().running(3).replicas(0) => wait(WaitReason::InvalidReplicas { replicas: 0 });

    scale_up_adds_the_next_ordinal_as_a_learner_first:
        Observed::test().running(3).replicas(5) => Plan::AddLearner { name: name(3), ordinal: 3 };
    a_learner_whose_pod_does_not_run_yet_waits:
        Observed::test().running(3).replicas(4).learner("etcd-3", 0).down("etcd-3")
            => wait(WaitReason::MemberNotReady { name: name(3) });
    a_learner_not_yet_caught_up_waits:
        Observed::test().running(3).replicas(4).learner("etcd-3", 89)
            => wait(WaitReason::LearnerCatchingUp { name: name(3), applied_index: 89, commit_index: COMMIT });
    a_learner_within_ten_percent_of_the_commit_index_is_promoted:
        Observed::test().running(3).replicas(4).learner("etcd-3", 90)
            => Plan::Promote { name: name(3), id: "13".into() };
    promoting_waits_when_the_larger_majority_would_not_hold:
        // 2 of 3 voters follow; with etcd-3 as a 4th voter, 3 must, and etcd-3 follows no one.
        Observed::test().running(3).replicas(4).learner("etcd-3", COMMIT).down("etcd-2").leader_unknown_to("etcd-3")
            => wait(WaitReason::WouldLoseQuorum { name: name(3) });
    the_endpoint_list_follows_committed_membership:
        Observed::test().running(3).endpoints(&["etcd-0", "etcd-1"])
            => Plan::UpdateEndpoints { names: names(0..3) };
    a_missing_config_map_is_written_from_the_membership:
        Observed::test().running(3).without_endpoints() => Plan::UpdateEndpoints { names: names(0..3) };
    the_stateful_set_grows_to_run_a_listed_learner:
        Observed::test().running(3).replicas(4).learner("etcd-3", 0).without_pod("etcd-3").stateful_set(3)
            => Plan::ResizeStatefulSet { replicas: 4 };
    a_deleted_stateful_set_is_restored_from_the_list_even_without_quorum:
        Observed::test().running(3).without_stateful_set() => Plan::ResizeStatefulSet { replicas: 3 };

    scale_down_removes_the_highest_ordinal_first:
        Observed::test().running(5).replicas(3) => Plan::RemoveMember { name: name(4), id: "14".into() };
    the_leader_to_remove_hands_over_to_the_most_caught_up_voter_first:
        Observed::test().running(3).leader("etcd-2").applied("etcd-0", 95).replicas(2)
            => Plan::TransferLeadership { from: name(2), to: name(1), to_id: "11".into() };
    on_equal_progress_leadership_goes_to_the_lowest_ordinal:
        Observed::test().running(3).leader("etcd-2").replicas(2)
            => Plan::TransferLeadership { from: name(2), to: name(0), to_id: "10".into() };
    the_leader_to_remove_waits_when_no_ready_voter_can_take_over:
        Observed::test().running(3).leader("etcd-2").not_ready("etcd-0").not_ready("etcd-1").replicas(2)
            => wait(WaitReason::NoTransferTarget { leader: name(2) });
    a_removal_that_would_lose_quorum_waits:
        // Voters etcd-0 and etcd-1 would remain, and etcd-1 is down.
        Observed::test().running(3).down("etcd-1").replicas(2) => wait(WaitReason::WouldLoseQuorum { name: name(2) });
    the_pod_goes_only_after_its_member_left_the_list:
        Observed::test().running(3).replicas(2).removed("etcd-2") => Plan::UpdateEndpoints { names: names(0..2) };
    the_stateful_set_shrinks_once_nobody_lists_the_member:
        Observed::test().running(3).replicas(2).removed("etcd-2").endpoints(&["etcd-0", "etcd-1"])
            => Plan::ResizeStatefulSet { replicas: 2 };
    a_member_the_operator_did_not_name_is_removed_first:
        Observed::test().running(3).foreign_voter("backup") => Plan::RemoveMember { name: "backup".into(), id: "f00".into() };

    data_lost_while_quorum_holds_replaces_the_member:
        Observed::test().running(3).data_lost("etcd-1") => Plan::ReplaceMember { name: name(1), old_id: "11".into() };
    data_lost_without_quorum_waits_and_does_nothing:
        Observed::test().running(3).data_lost("etcd-1").down("etcd-2")
            => wait(WaitReason::DataLostWithoutQuorum { members: vec![name(1)] });
    a_learner_whose_data_is_lost_just_catches_up_again:
        Observed::test().running(3).replicas(4).learner("etcd-3", 0).data_lost("etcd-3")
            => wait(WaitReason::MemberNotReady { name: name(3) });

    quorum_lost_when_the_leader_is_cut_off_from_the_voters:
        Observed::test().running(3).down("etcd-1").down("etcd-2") => wait(WaitReason::QuorumLost { reachable: 1, voters: 3 });
    quorum_lost_when_the_leader_is_down:
        Observed::test().running(3).down("etcd-0").down("etcd-1") => wait(WaitReason::QuorumLost { reachable: 1, voters: 3 });
    quorum_lost_when_no_member_answers:
        Observed::test().running(5).down("etcd-0").down("etcd-1").down("etcd-2").down("etcd-3").down("etcd-4")
            => wait(WaitReason::QuorumLost { reachable: 0, voters: 5 });

    paused_holds_back_the_next_step_and_says_which:
        Observed::test().running(3).replicas(5).paused()
            => wait(WaitReason::Paused { deferred: Box::new(Plan::AddLearner { name: name(3), ordinal: 3 }) });
    paused_and_as_the_spec_asks_needs_nothing:
        Observed::test().running(3).paused() => Plan::Nothing;
    spec_auth_turns_auth_on_once_the_cluster_formed:
        Observed::test().running(3).wants_auth(Some(true)) => Plan::EnableAuth;
    auth_goes_on_before_any_membership_step:
        Observed::test().running(3).replicas(5).wants_auth(Some(true)) => Plan::EnableAuth;
    auth_waits_for_the_first_leader:
        Observed::test().after(Plan::Bootstrap { replicas: 3 }).wants_auth(Some(true)) => wait(WaitReason::Forming);
    auth_waits_for_quorum:
        Observed::test().running(3).wants_auth(Some(true)).down("etcd-1").down("etcd-2")
            => wait(WaitReason::QuorumLost { reachable: 1, voters: 3 });
    auth_already_on_needs_nothing:
        Observed::test().running(3).wants_auth(Some(true)).auth_reported(Some(true)) => Plan::Nothing;
    spec_auth_removed_turns_auth_off:
        Observed::test().running(3).wants_auth(Some(false)).auth_reported(Some(true)) => Plan::DisableAuth;
    auth_turned_on_by_hand_is_left_alone:
        Observed::test().running(3).auth_reported(Some(true)) => Plan::Nothing;
    a_leader_too_old_to_report_auth_is_left_alone:
        Observed::test().running(3).wants_auth(Some(true)).auth_reported(None) => Plan::Nothing;
    paused_defers_turning_auth_on:
        Observed::test().running(3).paused().wants_auth(Some(true))
            => wait(WaitReason::Paused { deferred: Box::new(Plan::EnableAuth) });
    paused_still_says_when_quorum_is_lost:
        Observed::test().running(3).paused().down("etcd-1").down("etcd-2")
            => wait(WaitReason::QuorumLost { reachable: 1, voters: 3 });
}

// ----- scenarios, step by step -----

#[test]
fn bootstrap_one_member_then_three_members_step_by_step() {
    for replicas in [1, 3] {
        let mut cluster = Observed::test().replicas(replicas);
        // The first list written with a leader marks the cluster formed (the list is unchanged).
        let list = format!("endpoints {}", names(0..replicas).join(","));
        assert_eq!(drive(&mut cluster), [format!("bootstrap {replicas}"), "wait Forming".to_string(), list]);
        assert_converged(&cluster);
    }
}

#[test]
fn a_cluster_with_spec_auth_turns_it_on_right_after_forming_then_scales_and_turns_it_off() {
    let mut cluster = Observed::test().replicas(3).wants_auth(Some(true));
    assert_eq!(drive(&mut cluster), ["bootstrap 3", "wait Forming", "endpoints etcd-0,etcd-1,etcd-2", "enable-auth"]);
    assert_converged(&cluster);
    assert_eq!(derive_status(&cluster.build()).auth_enabled, Some(true));

    cluster = cluster.replicas(4);
    assert_eq!(drive(&mut cluster), join(3), "membership steps run as before (as root)");

    cluster = cluster.wants_auth(Some(false));
    assert_eq!(drive(&mut cluster), ["disable-auth"]);
    assert_eq!(derive_status(&cluster.build()).auth_enabled, Some(false));
}

#[test]
fn scale_1_3_5_3_1_changes_one_member_at_a_time() {
    let mut cluster = Observed::test().running(1);

    cluster = cluster.replicas(3);
    assert_eq!(drive(&mut cluster), [join(1), join(2)].concat());
    assert_converged(&cluster);

    cluster = cluster.replicas(5);
    assert_eq!(drive(&mut cluster), [join(3), join(4)].concat());
    assert_converged(&cluster);

    cluster = cluster.replicas(3);
    assert_eq!(drive(&mut cluster), [leave(4), leave(3)].concat());
    assert_converged(&cluster);

    cluster = cluster.replicas(1);
    assert_eq!(drive(&mut cluster), [leave(2), leave(1)].concat());
    assert_converged(&cluster);
}

#[test]
fn scale_down_when_the_leader_is_the_member_to_remove_moves_leadership_first() {
    let mut cluster = Observed::test().running(3).leader("etcd-2").applied("etcd-0", 95).replicas(1);
    let expected = [
        vec!["transfer etcd-2 -> etcd-1".to_string()],
        leave(2),
        vec!["transfer etcd-1 -> etcd-0".to_string()],
        leave(1),
    ]
    .concat();
    assert_eq!(drive(&mut cluster), expected);
    assert_converged(&cluster);
    assert_eq!(cluster.leader.as_deref(), Some("etcd-0"));
}

#[test]
fn data_lost_while_quorum_holds_replaces_the_member_step_by_step() {
    let mut cluster = Observed::test().running(3).data_lost("etcd-1");
    let expected = [
        "replace etcd-1",
        "endpoints etcd-0,etcd-2",
        "add-learner etcd-1",
        "endpoints etcd-0,etcd-1,etcd-2",
        // The pod restarts (its crash loop) and joins under the new id.
        "wait MemberNotReady etcd-1",
        "wait MemberNotReady etcd-1",
        "wait LearnerCatchingUp etcd-1",
        "promote etcd-1",
    ];
    assert_eq!(drive(&mut cluster), expected);
    assert_converged(&cluster);
    let replaced = cluster.members.iter().find(|m| m.name == "etcd-1").map(|m| m.id.as_str());
    assert_eq!(replaced, Some("111"), "a new id: ids are never reused");
}

#[test]
fn data_lost_without_quorum_takes_no_step_however_long_it_waits() {
    let mut cluster = Observed::test().running(3).data_lost("etcd-1").down("etcd-2");
    let before = cluster.build();
    for _ in 0..10 {
        let step = plan(&cluster.build());
        assert_eq!(step, wait(WaitReason::DataLostWithoutQuorum { members: vec![name(1)] }));
        cluster.apply(&step);
    }
    assert_eq!(cluster.members, Observed::test().running(3).members, "membership untouched");
    assert_eq!(cluster.build().endpoints, before.endpoints);
    assert_eq!(cluster.build().stateful_set_replicas, before.stateful_set_replicas);
}

#[test]
fn paused_scaling_resumes_where_it_stopped() {
    let mut cluster = Observed::test().running(3).replicas(4).after(Plan::AddLearner { name: name(3), ordinal: 3 });
    cluster = cluster.paused();
    let step = plan(&cluster.build());
    assert_eq!(step.kind(), "Wait");
    assert_eq!(label(&step), "wait Paused");
    assert_eq!(derive_status(&cluster.build()).phase, Phase::Paused);

    cluster.paused = false;
    assert_eq!(drive(&mut cluster), join(3)[1..].to_vec());
    assert_converged(&cluster);
}

/// Issue 17, part 5: a new pod template rolls the members one at a time, followers first
/// (highest ordinal first), each once every member is up and caught up; the leader last, after
/// one transfer; the term moves once, by the transfer.
#[test]
fn a_new_pod_template_restarts_followers_first_and_the_leader_last_after_one_transfer() {
    let mut cluster = Observed::test().running(5).template_changed();
    let term = cluster.term;
    let restarted_and_back =
        |member: &str| vec![format!("restart {member}"), format!("wait MemberCatchingUp {member}")];
    let mut expected: Vec<String> =
        ["etcd-4", "etcd-3", "etcd-2", "etcd-1"].iter().flat_map(|m| restarted_and_back(m)).collect();
    // The old leader last, once it follows; when it is back, nothing is left to roll.
    expected.extend(["transfer etcd-0 -> etcd-1".to_string(), "restart etcd-0".to_string()]);
    assert_eq!(drive(&mut cluster), expected);
    settle(&mut cluster);
    assert_converged(&cluster);
    assert_eq!(cluster.term, term + 1, "one term: the transfer's");
    assert_eq!(cluster.leader.as_deref(), Some("etcd-1"));
}

#[test]
fn a_rolling_restart_waits_for_every_member_and_for_membership_and_one_member_just_restarts() {
    // A member not ready or behind holds the roll, whichever it is.
    let cluster = Observed::test().running(3).template_changed().not_ready("etcd-0");
    assert_eq!(label(&plan(&cluster.build())), "wait MemberCatchingUp etcd-0");
    let mut cluster = Observed::test().running(3).template_changed();
    cluster.pod_mut("etcd-1").applied = COMMIT / 2;
    assert_eq!(label(&plan(&cluster.build())), "wait MemberCatchingUp etcd-1");
    // Membership first: a scale-up in flight finishes before any restart.
    let mut cluster = Observed::test().running(3).template_changed().replicas(4);
    let steps = drive(&mut cluster);
    let first_restart = steps.iter().position(|s| s.starts_with("restart")).expect("a restart");
    assert_eq!(steps[..first_restart].last().map(String::as_str), Some("promote etcd-3"), "{steps:?}");
    assert_eq!(steps[first_restart], "restart etcd-2", "{steps:?}");
    assert!(!steps.iter().any(|s| s == "restart etcd-3"), "etcd-3 started with the new template: {steps:?}");
    settle(&mut cluster);
    assert_converged(&cluster);
    // Paused: deferred.
    let cluster = Observed::test().running(3).template_changed().paused();
    assert_eq!(label(&plan(&cluster.build())), "wait Paused");
    // One member: nobody to hand over to; it restarts.
    let mut cluster = Observed::test().running(1).template_changed();
    assert_eq!(drive(&mut cluster)[0], "restart etcd-0");
    settle(&mut cluster);
    assert_converged(&cluster);
}

/// An image older than its data (exit code 5) stops the roll with a reason and is never
/// replaced; setting the image back restarts that member first (it is down anyway), as does
/// any outdated follower that is down.
#[test]
fn an_image_too_old_for_its_data_stops_the_roll_and_setting_it_back_restarts_that_member_first() {
    // etcd-2 was restarted into the new template and refuses its data.
    let mut cluster = Observed::test().running(3).template_changed();
    cluster.pod_mut("etcd-2").outdated = false;
    cluster.pod_mut("etcd-2").state = PodState::NewerData;
    let planned = plan(&cluster.build());
    assert_eq!(planned, wait(WaitReason::NewerData { name: "etcd-2".to_string() }));
    assert!(planned.to_string().contains("set spec.image back"), "{planned}");
    let health = derive_status(&cluster.build());
    assert_eq!(health.phase, Phase::Degraded);
    assert!(health.members.iter().any(|m| m.name == "etcd-2" && !m.healthy));
    // Also once nothing else is outdated (it was the last to restart).
    for pod in cluster.pods.values_mut() {
        pod.outdated = false;
    }
    assert_eq!(plan(&cluster.build()), wait(WaitReason::NewerData { name: "etcd-2".to_string() }));
    // The image set back: only etcd-2's pod is of another template now; it restarts first, and
    // comes up with its data.
    cluster.pod_mut("etcd-2").outdated = true;
    let steps = drive(&mut cluster);
    assert_eq!(steps, ["restart etcd-2"], "{steps:?}");
    settle(&mut cluster);
    assert_converged(&cluster);

    // Any outdated follower that is down restarts first; a follower that is only not ready, or
    // the leader, is waited for as before.
    let cluster = Observed::test().running(3).template_changed().down("etcd-1");
    assert_eq!(label(&plan(&cluster.build())), "restart etcd-1");
    let cluster = Observed::test().running(3).template_changed().not_ready("etcd-1");
    assert_eq!(label(&plan(&cluster.build())), "wait MemberCatchingUp etcd-1");
}

#[test]
fn a_scale_down_during_a_scale_up_removes_the_learner() {
    let mut cluster = Observed::test().running(3).replicas(4).learner("etcd-3", 10).replicas(3);
    assert_eq!(drive(&mut cluster), leave(3));
    assert_converged(&cluster);
}

#[test]
fn quorum_comes_back_and_scaling_carries_on() {
    let mut cluster = Observed::test().running(3).down("etcd-1").down("etcd-2").replicas(4);
    assert_eq!(plan(&cluster.build()), wait(WaitReason::QuorumLost { reachable: 1, voters: 3 }));
    cluster.pod_mut("etcd-1").state = PodState::Up;
    assert_eq!(drive(&mut cluster), join(3));
}

#[test]
fn a_stale_leader_of_an_older_term_is_not_taken_for_the_leader() {
    let mut observed = Observed::test().running(3).leader("etcd-1").build();
    // etcd-0 led in term 2 and has not heard of term 3 yet.
    let stale = observed.pods[0].status.as_mut().expect("etcd-0 answers");
    stale.role = Role::Leader;
    stale.term = 2;
    stale.leader = name(0);
    assert_eq!(plan(&observed), Plan::Nothing, "etcd-1 leads with etcd-2: a majority");
    assert_eq!(derive_status(&observed).leader.as_deref(), Some("etcd-1"));
}

// ----- quorum-loss recovery -----

/// 5 members; etcd-2, etcd-3 and etcd-4 lost their data; etcd-0 and etcd-1 answer, without a
/// leader. etcd-1 holds the longer log.
fn majority_lost() -> TestCluster {
    Observed::test()
        .running(5)
        .data_lost("etcd-2")
        .data_lost("etcd-3")
        .data_lost("etcd-4")
        .without_leader()
        .applied("etcd-0", COMMIT - 3)
}

#[test]
fn recovery_is_refused_while_a_leader_or_a_majority_answers_or_before_the_cluster_formed() {
    let refused = |cluster: TestCluster| recovery_survivor(&cluster.build()).expect_err("refused");
    let why = refused(Observed::test().running(5).down("etcd-4"));
    assert!(why.contains("etcd-0 leads with a majority"), "{why}");
    // No leader, but 3 of 5 answer: they elect one by themselves.
    let why = refused(Observed::test().running(5).without_leader().down("etcd-3").down("etcd-4"));
    assert!(why.contains("3 of 5: etcd-0,etcd-1,etcd-2"), "{why}");
    // Members whose data is lost do not count as answering; 2 of 5 is not a majority.
    assert!(recovery_survivor(&majority_lost().build()).is_ok());
    let why = refused(Observed::test().after(Plan::Bootstrap { replicas: 3 }));
    assert!(why.contains("never elected"), "{why}");
    let why = refused(Observed::test().running(3).without_leader().down("etcd-0").down("etcd-1").down("etcd-2"));
    assert!(why.contains("no member with data answers"), "{why}");
}

#[test]
fn the_survivor_has_the_most_complete_log_highest_last_term_then_index_then_lowest_ordinal() {
    let survivor = recovery_survivor(&majority_lost().build()).expect("a survivor");
    assert_eq!(
        survivor,
        Survivor {
            name: name(1),
            last_log_term: 2,
            last_log_index: COMMIT,
            replaced: vec![name(0), name(2), name(3), name(4)],
        },
        "etcd-1's log is longer"
    );
    // A later last term beats a longer log (Raft's up-to-date rule).
    let survivor = recovery_survivor(&majority_lost().log_term("etcd-0", 3).build()).expect("a survivor");
    assert_eq!((survivor.name.as_str(), survivor.last_log_term, survivor.last_log_index), ("etcd-0", 3, COMMIT - 3));
    // Equal logs: the lowest ordinal.
    let survivor = recovery_survivor(&majority_lost().applied("etcd-0", COMMIT).build()).expect("a survivor");
    assert_eq!(survivor.name, name(0));
    // A member whose data is lost is never the survivor, whatever it last reported.
    let survivor = recovery_survivor(&majority_lost().applied("etcd-4", COMMIT + 50).build()).expect("a survivor");
    assert_eq!(survivor.name, name(1));
}

#[test]
fn a_recovery_restarts_the_survivor_first_then_the_others_then_adds_them_back_one_at_a_time() {
    let mut cluster = majority_lost().recovering("etcd-1");
    let steps = drive(&mut cluster);
    let mut expected = vec![
        "restart etcd-1".to_string(),
        "wait SurvivorStarting".to_string(),
        "restart etcd-4".to_string(),
        "restart etcd-3".to_string(),
        "restart etcd-2".to_string(),
        "restart etcd-0".to_string(),
        "endpoints etcd-1".to_string(),
    ];
    // etcd-0 comes back first: the lowest ordinal missing. Its pod exists, so no resize.
    for ordinal in [0, 2, 3, 4] {
        let member = name(ordinal);
        let mut listed: Vec<u32> = vec![0, 1, 2, 3, 4].into_iter().filter(|&o| o <= ordinal || o == 1).collect();
        listed.sort();
        expected.push(format!("add-learner {member}"));
        expected.push(format!("endpoints {}", listed.iter().map(|&o| name(o)).collect::<Vec<_>>().join(",")));
        expected.push(format!("wait MemberNotReady {member}"));
        expected.push(format!("wait LearnerCatchingUp {member}"));
        expected.push(format!("promote {member}"));
    }
    assert_eq!(steps, expected);
    assert_converged(&cluster);
    assert_eq!(cluster.leader.as_deref(), Some("etcd-1"), "the survivor leads");
    let ids: Vec<&str> = cluster.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["11", "110", "112", "113", "114"], "every other member under a new id");
}

#[test]
fn a_recovery_waits_for_the_survivor_and_restarts_only_outdated_pods() {
    // The survivor's pod was restarted; until it leads alone nobody else restarts.
    let mut cluster = majority_lost().recovering("etcd-1");
    cluster.apply(&Plan::RestartMember { name: name(1), ordinal: 1 });
    assert_eq!(plan(&cluster.build()), wait(WaitReason::SurvivorStarting { name: name(1) }));
    // A survivor that crash-loops (refusing to start) keeps the others as they are.
    cluster.pod_mut("etcd-1").state = PodState::Down;
    assert_eq!(plan(&cluster.build()), wait(WaitReason::SurvivorStarting { name: name(1) }));
    // Its new pod does not run yet, and the others still report the old membership of five:
    // still nobody else restarts.
    let mut cluster = majority_lost().recovering("etcd-1");
    cluster.pod_mut("etcd-1").outdated = false;
    cluster.pod_mut("etcd-1").state = PodState::Down;
    assert_eq!(cluster.members.len(), 5);
    assert_eq!(plan(&cluster.build()), wait(WaitReason::SurvivorStarting { name: name(1) }));
    // Paused: deferred, as any step.
    let cluster = majority_lost().recovering("etcd-1").paused();
    assert_eq!(label(&plan(&cluster.build())), "wait Paused");
    // Once no pod runs an older template, the ordinary steps go on.
    let mut cluster = majority_lost().recovering("etcd-1");
    cluster.apply(&Plan::RestartMember { name: name(1), ordinal: 1 });
    cluster.tick();
    for pod in cluster.pods.values_mut() {
        pod.outdated = false;
    }
    assert_eq!(plan(&cluster.build()), Plan::UpdateEndpoints { names: vec![name(1)] });
}

// ----- the status -----

#[test]
fn status_of_a_running_cluster_names_leader_term_and_members() {
    let health = derive_status(&Observed::test().running(3).applied("etcd-2", 97).build());
    assert_eq!(health.phase, Phase::Running);
    assert_eq!(health.leader.as_deref(), Some("etcd-0"));
    assert_eq!((health.term, health.commit_index), (2, COMMIT));
    assert!(health.available && health.membership_consistent && !health.quorum_lost);
    assert_eq!((health.replicas, health.ready_replicas), (3, 3));
    let rows: Vec<_> = health
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.id.as_deref(), m.role, m.healthy, m.applied_index, m.lag))
        .collect();
    assert_eq!(
        rows,
        [
            ("etcd-0", Some("10"), Some(Role::Leader), true, Some(COMMIT), Some(0)),
            ("etcd-1", Some("11"), Some(Role::Follower), true, Some(COMMIT), Some(0)),
            ("etcd-2", Some("12"), Some(Role::Follower), true, Some(97), Some(3)),
        ]
    );
    assert_eq!(health.endpoints, names(0..3));
    assert!(health.endpoints_hash.is_some() && health.membership_hash.is_some());
}

#[test]
fn status_while_a_learner_catches_up_is_scaling() {
    let health = derive_status(&Observed::test().running(3).replicas(4).learner("etcd-3", 40).build());
    assert_eq!(health.phase, Phase::Scaling);
    let learner = &health.members[3];
    assert_eq!((learner.role, learner.voter, learner.lag), (Some(Role::Learner), false, Some(60)));
    assert!(health.membership_consistent);
}

#[test]
fn status_when_quorum_is_lost_says_so_and_keeps_the_term() {
    let health = derive_status(&Observed::test().running(3).down("etcd-0").down("etcd-1").build());
    assert_eq!(health.phase, Phase::QuorumLost);
    assert!(health.quorum_lost && !health.available);
    assert_eq!(health.leader, None);
    assert_eq!(health.term, 2, "the highest term a member reports");
    let healthy: Vec<bool> = health.members.iter().map(|m| m.healthy).collect();
    assert_eq!(healthy, [false, false, true]);
    assert!(health.members.iter().all(|m| m.lag.is_none()), "no lag without a leader");
}

#[test]
fn status_of_a_cluster_without_any_answer_lists_the_endpoints() {
    let cluster = Observed::test().running(3).down("etcd-0").down("etcd-1").down("etcd-2");
    let health = derive_status(&cluster.build());
    assert_eq!(health.phase, Phase::QuorumLost);
    assert_eq!(health.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>(), names(0..3));
    assert!(health.members.iter().all(|m| m.id.is_none() && m.role.is_none() && !m.healthy));
    assert!(!health.membership_consistent);
}

#[test]
fn status_before_the_first_leader_is_bootstrapping_not_quorum_lost() {
    for cluster in [Observed::test(), Observed::test().after(Plan::Bootstrap { replicas: 3 })] {
        let health = derive_status(&cluster.build());
        assert_eq!(health.phase, Phase::Bootstrapping);
        assert!(!health.quorum_lost && !health.available);
    }
}

#[test]
fn status_with_a_voter_down_or_its_data_lost_is_degraded() {
    for cluster in [Observed::test().running(3).down("etcd-2"), Observed::test().running(3).data_lost("etcd-2")] {
        let health = derive_status(&cluster.build());
        assert_eq!(health.phase, Phase::Degraded);
        assert!(health.available && !health.members[2].healthy);
        assert!(health.membership_consistent, "the healthy members agree");
        assert_eq!(health.ready_replicas, 2);
    }
}

#[test]
fn status_membership_is_inconsistent_when_a_member_or_the_list_disagrees() {
    let mut observed = Observed::test().running(3).build();
    observed.pods[1].status.as_mut().expect("etcd-1 answers").membership_hash = "0".into();
    assert!(!derive_status(&observed).membership_consistent, "another hash");

    let observed = Observed::test().running(3).endpoints(&["etcd-0", "etcd-1"]).build();
    assert!(!derive_status(&observed).membership_consistent, "the list lacks etcd-2");

    let observed = Observed::test().running(3).endpoints(&["etcd-2", "etcd-1", "etcd-0"]).build();
    assert!(!derive_status(&observed).membership_consistent, "the list is in another order");
}

#[test]
fn status_when_paused_is_paused_unless_quorum_is_lost() {
    assert_eq!(derive_status(&Observed::test().running(3).paused().build()).phase, Phase::Paused);
    let lost = Observed::test().running(3).paused().down("etcd-1").down("etcd-2");
    assert_eq!(derive_status(&lost.build()).phase, Phase::QuorumLost);
}

// ----- the observation itself -----

#[test]
fn the_planner_reads_the_api_status_as_it_comes_and_an_unknown_role_never_leads() {
    let status: Status = serde_json::from_value(serde_json::json!({
        "name": "etcd-1", "id": "11", "role": "learner", "term": 7, "leader": "etcd-0", "leaderId": "10",
        "commitIndex": 42, "appliedIndex": 40, "revision": 9, "membershipHash": "abc", "clusterId": "c1",
        "members": [
            {"id": "10", "name": "etcd-0", "peerURL": "http://etcd-0.etcd:2380", "clientURL": "http://etcd-0.etcd:2379", "voter": true},
            {"id": "11", "name": "etcd-1", "peerURL": "http://etcd-1.etcd:2380", "clientURL": "", "voter": false}
        ],
        "errors": ["disk full"]
    }))
    .expect("a status");
    assert_eq!(status.role, Role::Learner);
    assert_eq!((status.term, status.commit_index, status.applied_index), (7, 42, 40));
    assert_eq!(
        status.members.iter().map(|m| (m.id.as_str(), m.voter)).collect::<Vec<_>>(),
        [("10", true), ("11", false)]
    );
    for role in [Role::Leader, Role::Follower, Role::Candidate, Role::Learner] {
        let text = serde_json::to_value(role).expect("a role");
        assert_eq!(text, role.as_str());
        assert_eq!(serde_json::from_value::<Role>(text).expect("read back"), role);
    }
    // A role from a newer member is unknown: such a member is never taken for the leader.
    assert_eq!(serde_json::from_value::<Role>(serde_json::json!("observer")).expect("read"), Role::Unknown);
    let mut observed = Observed::test().running(3).leader("etcd-1").build();
    observed.pods[1].status.as_mut().expect("etcd-1 answers").role = Role::Unknown;
    assert!(!derive_status(&observed).available, "no leader without a member that says it leads");
}

#[test]
fn a_status_under_another_name_than_its_pod_is_ignored() {
    let mut observed = Observed::test().running(3).build();
    observed.pods[1].status.as_mut().expect("etcd-1 answers").name = "etcd-7".into();
    observed.pods[2].status.as_mut().expect("etcd-2 answers").name = "etcd-7".into();
    assert_eq!(plan(&observed), wait(WaitReason::QuorumLost { reachable: 1, voters: 3 }));
}

#[test]
fn catch_up_is_computed_without_overflow() {
    assert!(caught_up(u64::MAX, u64::MAX));
    assert!(!caught_up(u64::MAX / 2, u64::MAX));
    assert!(caught_up(0, 0));
    assert!(caught_up(9, 10) && !caught_up(8, 10));
}

#[test]
fn every_step_explains_itself() {
    let steps = [
        Plan::Bootstrap { replicas: 3 },
        Plan::AddLearner { name: name(3), ordinal: 3 },
        Plan::Promote { name: name(3), id: "13".into() },
        Plan::TransferLeadership { from: name(2), to: name(0), to_id: "10".into() },
        Plan::RemoveMember { name: name(4), id: "14".into() },
        Plan::ResizeStatefulSet { replicas: 4 },
        Plan::ReplaceMember { name: name(1), old_id: "11".into() },
        Plan::UpdateEndpoints { names: names(0..2) },
        Plan::RestartMember { name: name(2), ordinal: 2 },
        wait(WaitReason::MemberCatchingUp { name: name(2) }),
        wait(WaitReason::QuorumLost { reachable: 1, voters: 3 }),
        Plan::Nothing,
    ];
    let texts: Vec<String> = steps.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            "bootstrap a cluster of 3",
            "add etcd-3 as a learner",
            "promote learner etcd-3 (13) to voter",
            "move leadership from etcd-2 to etcd-0",
            "remove member etcd-4 (14)",
            "resize the StatefulSet to 4 replicas",
            "replace etcd-1, whose data is lost: remove its old id 11, then add it back as a learner",
            "set the endpoint list to etcd-0,etcd-1",
            "restart etcd-2 with the new pod template (followers first, the leader last)",
            "wait: rolling restart: etcd-2 must run, follow the leader and catch up before the next member restarts",
            "wait: no leader is followed by a majority of the voters: 1 of 3 answer, 2 needed",
            "nothing to do",
        ]
    );
}

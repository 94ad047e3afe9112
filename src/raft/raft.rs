//! The consensus state machine of one member. Inputs: `tick`, `step`, `propose`,
//! `propose_conf_change`, `read_index`, `transfer_leader`, `compact`. Outputs are collected
//! and handed to the host as a `Ready` (see `ready.rs`). `step` first settles terms, then
//! dispatches to the behaviour of the current role; roles change only in `become_*`.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::config::{Config, ConfigError, PlantedBug};
use super::log::RaftLog;
use super::progress::{Progress, ProgressState};
use super::quorum::{has_majority, quorum_value};
use super::read_only::ReadOnly;
use super::types::*;
use crate::base::rng::Rng;

/// How to start a member: from durable state, from a bootstrap configuration, or empty (to
/// join a running cluster as a new member).
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    pub hard_state: HardState,
    /// The latest durable snapshot, if the log was ever compacted.
    pub snapshot: Option<Snapshot>,
    /// Durable entries after the snapshot.
    pub entries: Vec<Entry>,
    /// What the host's state machine has applied (at least the snapshot's index).
    /// The configuration is not part of it: it is read from the snapshot and the log.
    pub applied: Index,
}

impl InitialState {
    /// The first state of every member of a new cluster: the initial voters written as
    /// committed entries of term 1, identical on every member, so that members that join
    /// later learn the whole configuration history from the log.
    pub fn bootstrap(voters: &[(NodeId, Bytes)]) -> InitialState {
        let entries: Vec<Entry> = voters
            .iter()
            .enumerate()
            .map(|(i, (id, context))| Entry {
                index: i as u64 + 1,
                term: 1,
                payload: EntryPayload::ConfChange(ConfChange {
                    kind: ConfChangeKind::AddVoter,
                    node_id: *id,
                    context: context.clone(),
                }),
            })
            .collect();
        InitialState {
            hard_state: HardState { term: 1, vote: None, commit: entries.len() as u64 },
            entries,
            ..InitialState::default()
        }
    }

    /// Restart from durable log state; the state machine is rebuilt from the snapshot.
    pub fn restart(hard_state: HardState, snapshot: Option<Snapshot>, entries: Vec<Entry>) -> InitialState {
        let applied = snapshot.as_ref().map_or(0, |s| s.meta.index);
        InitialState { hard_state, snapshot, entries, applied }
    }

    /// The configuration the log ends with: the snapshot's, then every change in the entries.
    pub fn last_conf(&self) -> ConfState {
        let mut conf = self.snapshot.as_ref().map(|s| s.meta.conf.clone()).unwrap_or_default();
        for entry in &self.entries {
            if let EntryPayload::ConfChange(cc) = &entry.payload {
                if conf.validate(cc).is_ok() {
                    conf.apply(cc);
                }
            }
        }
        conf
    }

    /// etcd's `--force-new-cluster`, for a cluster whose majority is lost for good (DESIGN.md
    /// §2): this member becomes the only voter of its cluster, keeping its whole log. Appends,
    /// in a term above any it has seen (so no entry can share an index and term with one a
    /// lost member wrote), the removal of every other member (and its own promotion if it was
    /// a learner), and marks the whole log committed: entries it held uncommitted are kept,
    /// since the lost majority may have committed and acknowledged them, and any client whose
    /// write is among them was told its outcome is unknown, never that it failed. Returns the
    /// entries appended, for the caller to make durable with the hard state; none when it is
    /// the only voter already, so a second start with the flag changes nothing.
    pub fn force_new_cluster(&mut self, id: NodeId) -> Result<Vec<Entry>, ConfChangeError> {
        let conf = self.last_conf();
        if !conf.contains(id) {
            return Err(ConfChangeError::NotAMember(id));
        }
        let others: Vec<NodeId> = conf.voters.iter().chain(&conf.learners).copied().filter(|&m| m != id).collect();
        if others.is_empty() && conf.voters.contains(&id) {
            return Ok(Vec::new());
        }
        let last = self.entries.last().map(|e| e.index).or(self.snapshot.as_ref().map(|s| s.meta.index)).unwrap_or(0);
        let term = self.hard_state.term + 1;
        let mut changes: Vec<ConfChange> = Vec::new();
        if conf.learners.contains(&id) {
            changes.push(ConfChange { kind: ConfChangeKind::Promote, node_id: id, context: Bytes::new() });
        }
        changes.extend(others.into_iter().map(|m| ConfChange {
            kind: ConfChangeKind::Remove,
            node_id: m,
            context: Bytes::new(),
        }));
        let appended: Vec<Entry> = changes
            .into_iter()
            .zip(last + 1..)
            .map(|(cc, index)| Entry { index, term, payload: EntryPayload::ConfChange(cc) })
            .collect();
        self.entries.extend(appended.iter().cloned());
        let commit = appended.last().map_or(last, |e| e.index);
        self.hard_state = HardState { term, vote: Some(id), commit };
        Ok(appended)
    }
}

/// Why a request could not be accepted. None of these changed anything.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership is being transferred")]
    TransferInProgress,
    #[error("too much uncommitted data; retry later")]
    TooManyUncommitted,
    #[error("a membership change is still pending")]
    ConfChangePending,
    #[error(transparent)]
    InvalidConfChange(#[from] ConfChangeError),
    #[error("member {0:x} is not a voter")]
    NotAVoter(NodeId),
    #[error("nothing to compact")]
    NothingToCompact,
}

/// How a campaign started: a pre-vote round (its election follows only if it wins), an
/// election (after a won pre-vote, or on a timeout when pre-vote is off), or an election that
/// a leader's transfer (TimeoutNow) asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Campaign {
    PreVote,
    Election,
    Transfer,
}

/// The campaigns this member started, for the member's timeline: how many, and the newest
/// with the term it asked votes for. Bookkeeping only; nothing in the core reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Campaigns {
    pub count: u64,
    pub last: Option<(Campaign, Term)>,
}

pub struct Raft {
    pub(crate) cfg: Config,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    pub(crate) log: RaftLog,
    pub(crate) conf: ConfState,
    /// Leader only: what it knows of every member (itself included).
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    /// Whose votes count in the current campaign.
    election_voters: BTreeSet<NodeId>,
    pub(crate) election_elapsed: u32,
    pub(crate) heartbeat_elapsed: u32,
    pub(crate) randomized_election_timeout: u32,
    rng: Rng,
    pub(crate) lead_transferee: Option<NodeId>,
    /// The index of the newest membership change in the log; another may be proposed only
    /// once it has applied.
    pending_conf_index: Index,
    uncommitted_bytes: usize,
    pub(crate) read_only: ReadOnly,
    /// The newest snapshot, sent to followers behind the compacted log.
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) msgs: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) aborted_reads: Vec<u64>,
    /// Leader: proposals or a commit advance wait to be sent in the next `ready`.
    pub(crate) need_bcast_append: bool,
    /// Set when this member learns that data it had is gone (see `DataLoss`). It then ignores
    /// every message; the host must stop it (the node exits with code 3 so that it is replaced).
    data_lost: Option<DataLoss>,
    campaigns: Campaigns,
}

/// How a member learned that its data is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataLoss {
    /// Holding nothing, it was sent a log that counts it as a voter it never was added as a
    /// learner (an initial member whose data directory was wiped).
    BlankVoter,
    /// Its leader counts it as holding the log up to `acknowledged`, which it acknowledged as
    /// durable, but it holds only up to `holds`: a disk that lost writes it reported done, or a
    /// data directory put back from an older copy.
    Acknowledged { acknowledged: Index, holds: Index },
}

impl Raft {
    pub fn new(cfg: Config, state: InitialState) -> Result<Raft, ConfigError> {
        cfg.validate()?;
        let base = state.snapshot.as_ref().map(|s| s.meta.clone()).unwrap_or_default();
        let log = RaftLog::restore(base, state.entries, state.hard_state.commit, state.applied);
        let mut raft = Raft {
            rng: Rng::new(cfg.seed),
            term: state.hard_state.term,
            vote: state.hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            conf: ConfState::default(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_voters: BTreeSet::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: 0,
            lead_transferee: None,
            campaigns: Campaigns::default(),
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            read_only: ReadOnly::default(),
            snapshot: state.snapshot,
            msgs: Vec::new(),
            read_states: Vec::new(),
            aborted_reads: Vec::new(),
            need_bcast_append: false,
            data_lost: None,
            cfg,
        };
        raft.conf = raft.conf_at(raft.log.last_index());
        raft.reset_election_timer();
        Ok(raft)
    }

    // ----- accessors -----

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    pub fn commit_index(&self) -> Index {
        self.log.committed
    }
    pub fn applied_index(&self) -> Index {
        self.log.applied
    }
    pub fn conf(&self) -> &ConfState {
        &self.conf
    }
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn progress(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }
    /// The campaigns this member started (`Campaigns`).
    pub fn campaigns(&self) -> Campaigns {
        self.campaigns
    }
    pub fn randomized_election_timeout(&self) -> u32 {
        self.randomized_election_timeout
    }
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }
    /// A member that holds nothing: no entries and no snapshot. It grants no vote (it cannot
    /// know whether it promised anything before its data was lost) and takes a log only if
    /// that log adds it as a learner before it counts it as a voter.
    pub fn is_blank(&self) -> bool {
        self.log.last_index() == 0
    }
    /// See the `data_lost` field: the member must be stopped and replaced.
    pub fn data_lost(&self) -> Option<DataLoss> {
        self.data_lost
    }
    /// Whether the leader has committed an entry of its own term, so that its commit index is
    /// known to be current (§8).
    pub fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }
    /// A voter that may campaign: not installing a snapshot, and a voter of its election
    /// configuration (see `election_conf`).
    pub fn promotable(&self) -> bool {
        self.log.pending_snapshot.is_none() && self.election_conf().is_some()
    }

    /// The configuration this member campaigns in: its newest one if it votes there. A member
    /// whose own removal sits uncommitted at the end of its log campaigns in the configuration
    /// before that change — it may hold the most complete log, and the others may still need
    /// it to elect anyone. Safe: with one change at a time, every majority of the old
    /// configuration overlaps every majority of the new one. Once elected it finishes the
    /// removal and steps down (`step_down_if_removed`).
    fn election_conf(&self) -> Option<ConfState> {
        let me = self.cfg.id;
        if self.conf.voters.contains(&me) {
            return Some(self.conf.clone());
        }
        let last_change = self
            .log
            .entries()
            .iter()
            .rev()
            .find(|e| matches!(e.payload, EntryPayload::ConfChange(_)))
            .map(|e| e.index)?;
        if last_change <= self.log.committed {
            return None;
        }
        let before = self.conf_at(last_change - 1);
        before.voters.contains(&me).then_some(before)
    }

    // ----- inputs -----

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed += 1;
            if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
                self.election_elapsed = 0;
                let kind = if self.cfg.pre_vote { Campaign::PreVote } else { Campaign::Election };
                self.campaign(kind);
            }
        }
    }

    fn tick_leader(&mut self) {
        self.election_elapsed += 1;
        self.heartbeat_elapsed += 1;
        let snapshot_timeout = self.cfg.election_timeout_max_ticks;
        for pr in self.progress.values_mut() {
            if let ProgressState::Snapshot { index, elapsed_ticks } = pr.state {
                // An InstallSnapshot that got no answer is sent again (it may have been lost).
                if elapsed_ticks >= snapshot_timeout {
                    pr.become_probe();
                } else {
                    pr.state = ProgressState::Snapshot { index, elapsed_ticks: elapsed_ticks + 1 };
                }
            }
        }
        if self.election_elapsed >= self.cfg.election_timeout_min_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let me = self.cfg.id;
                let progress = &self.progress;
                let active = has_majority(&self.conf.voters, |id| {
                    id == me || progress.get(&id).is_some_and(|p| p.recent_active)
                });
                for (id, pr) in self.progress.iter_mut() {
                    pr.recent_active = *id == me;
                }
                if !active {
                    // Thesis §6.2: a leader cut off from a majority stops serving.
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.lead_transferee = None;
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    /// Proposes a command. Returns the (index, term) the entry will have if it commits.
    pub fn propose(&mut self, data: Bytes) -> Result<(Index, Term), ProposeError> {
        self.propose_entry(EntryPayload::Command(data))
    }

    /// Proposes one membership change. Thesis §4.1: a member uses the newest configuration in
    /// its log, committed or not, from the moment it appends it; one change at a time, the
    /// next only once the previous one committed, and a new leader first commits an entry of
    /// its term (the fix to the single-server change bug, thesis §4.1 errata).
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(Index, Term), ProposeError> {
        self.check_leader()?;
        if self.pending_conf_index > self.log.committed {
            return Err(ProposeError::ConfChangePending);
        }
        self.conf.validate(&cc)?;
        let result = self.propose_entry(EntryPayload::ConfChange(cc.clone()))?;
        self.pending_conf_index = result.0;
        self.conf.apply(&cc);
        self.on_conf_changed();
        Ok(result)
    }

    /// The configuration as of `index`: the snapshot's, then every change in the log up to it.
    pub fn conf_at(&self, index: Index) -> ConfState {
        let mut conf = self.log.base().conf.clone();
        for entry in self.log.entries().iter().take_while(|e| e.index <= index) {
            if let EntryPayload::ConfChange(cc) = &entry.payload {
                if conf.validate(cc).is_ok() {
                    conf.apply(cc);
                }
            }
        }
        conf
    }

    fn check_leader(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if self.lead_transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    fn propose_entry(&mut self, payload: EntryPayload) -> Result<(Index, Term), ProposeError> {
        self.check_leader()?;
        let entry = Entry { index: self.log.last_index() + 1, term: self.term, payload };
        let size = entry.payload_bytes();
        if self.uncommitted_bytes > 0 && self.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes {
            return Err(ProposeError::TooManyUncommitted);
        }
        self.uncommitted_bytes += size;
        let at = (entry.index, entry.term);
        self.log.append(vec![entry]);
        self.need_bcast_append = true;
        Ok(at)
    }

    /// Asks for a linearizable read point (§6.4). The answer comes as a `ReadState` with this
    /// `ctx` in a later `Ready`, or as an aborted read if leadership is lost first.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if !self.committed_in_current_term() {
            self.read_only.wait_for_commit(ctx);
            return Ok(());
        }
        self.register_read(ctx);
        Ok(())
    }

    fn register_read(&mut self, ctx: u64) {
        let index = self.log.committed;
        if self.conf.voters.len() == 1 && self.conf.voters.contains(&self.cfg.id) {
            self.read_states.push(ReadState { ctx, index });
        } else {
            self.read_only.register(ctx, index);
        }
    }

    /// Hands leadership to `to`, or to the most caught-up other voter (thesis §3.10).
    pub fn transfer_leader(&mut self, to: Option<NodeId>) -> Result<NodeId, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        let me = self.cfg.id;
        let target = match to {
            Some(id) => id,
            None => crate::base::quorum::most_caught_up(
                self.conf
                    .voters
                    .iter()
                    .filter(|id| **id != me)
                    .map(|id| (*id, self.progress.get(id).map_or(0, |p| p.matched))),
            )
            .ok_or(ProposeError::NotAVoter(me))?,
        };
        if target == me {
            return Ok(me);
        }
        if !self.conf.voters.contains(&target) {
            return Err(ProposeError::NotAVoter(target));
        }
        self.lead_transferee = Some(target);
        self.election_elapsed = 0;
        let caught_up = self.progress.get(&target).is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send(target, MessageBody::TimeoutNow);
        } else {
            self.send_append(target, true);
        }
        Ok(target)
    }

    /// Folds everything applied into a snapshot whose state-machine image is `data`, and drops
    /// those entries from the log (§7).
    pub fn compact(&mut self, data: Bytes) -> Result<SnapshotMeta, ProposeError> {
        self.compact_keeping(data, 0)
    }

    /// As `compact`, but keeps the last `keep` applied entries in the log (etcd's
    /// `SnapshotCatchUpEntries`): a follower only a little behind then catches up from the log
    /// instead of needing the whole state machine. The snapshot is at `applied - keep`; a
    /// state machine that applied further is a sound image of it (its entries are a prefix).
    pub fn compact_keeping(&mut self, data: Bytes, keep: u64) -> Result<SnapshotMeta, ProposeError> {
        let index = self.log.applied.saturating_sub(keep);
        let term = self.log.term(index);
        match term {
            Some(term) if index > self.log.base().index && self.log.pending_snapshot.is_none() => {
                let meta = SnapshotMeta { index, term, conf: self.conf_at(index) };
                self.log.compact(meta.clone());
                self.snapshot = Some(Snapshot { meta: meta.clone(), data });
                Ok(meta)
            }
            _ => Err(ProposeError::NothingToCompact),
        }
    }

    /// The host failed (or finished) streaming a snapshot to `to`.
    pub fn report_snapshot(&mut self, to: NodeId, success: bool) {
        if let Some(pr) = self.progress.get_mut(&to) {
            if matches!(pr.state, ProgressState::Snapshot { .. }) && !success {
                pr.become_probe();
            }
        }
    }

    /// Handles one message from a peer.
    pub fn step(&mut self, m: Message) {
        if self.data_lost.is_some()
            || m.to != self.cfg.id
            || m.from == self.cfg.id
            || m.from == 0
            || !m.is_well_formed()
            || matches!(m.body, MessageBody::Propose { .. } | MessageBody::Placed { .. })
        {
            return;
        }
        if m.term > self.term {
            if let MessageBody::PreVote { .. } | MessageBody::Vote { .. } = m.body {
                let transfer = matches!(m.body, MessageBody::Vote { transfer: true, .. });
                // Thesis §4.2.3/§9.6: while we hear from a leader, ignore anyone who wants an
                // election (removed or partitioned members must not disrupt the cluster).
                let in_lease = self.cfg.check_quorum
                    && self.leader.is_some()
                    && self.election_elapsed < self.cfg.election_timeout_min_ticks;
                if in_lease && !transfer {
                    return;
                }
            }
            match m.body {
                // Pre-votes never change anyone's term.
                MessageBody::PreVote { .. } | MessageBody::PreVoteResp { granted: true } => {}
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                // A stale leader (e.g. after a partition healed) learns of the newer term
                // through the reply and steps down; with pre-vote it would otherwise never hear.
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    self.send(m.from, MessageBody::AppendResp { index: 0, reject: None });
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResp { granted: false });
                }
                _ => {}
            }
            return;
        }

        match m.body {
            MessageBody::PreVote { last_index, last_term } => {
                self.handle_vote_request(m.from, m.term, last_index, last_term, true)
            }
            MessageBody::Vote { last_index, last_term, .. } => {
                self.handle_vote_request(m.from, m.term, last_index, last_term, false)
            }
            _ => match self.role {
                Role::Leader => self.step_leader(m),
                Role::Candidate | Role::PreCandidate => self.step_candidate(m),
                Role::Follower => self.step_follower(m),
            },
        }
    }

    /// §5.2, §5.4.1: one vote per term, first come first served, only for a log at least as
    /// up-to-date as ours; granting resets the election timer.
    fn handle_vote_request(&mut self, from: NodeId, term: Term, last_index: Index, last_term: Term, pre: bool) {
        let can_vote =
            self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none()) || (pre && term > self.term);
        // A blank member may have lost its data after promising entries to a leader; its vote
        // could elect a candidate that lacks them. It votes only once it holds a log.
        let blank_guard = self.is_blank() && self.cfg.planted != Some(PlantedBug::VoteFromEmptyLog);
        if can_vote && !blank_guard && self.log.is_up_to_date(last_index, last_term) {
            if pre {
                self.send_with_term(from, term, MessageBody::PreVoteResp { granted: true });
            } else {
                self.election_elapsed = 0;
                self.vote = Some(from);
                self.send(from, MessageBody::VoteResp { granted: true });
            }
        } else if pre {
            self.send(from, MessageBody::PreVoteResp { granted: false });
        } else {
            self.send(from, MessageBody::VoteResp { granted: false });
        }
    }

    fn step_leader(&mut self, m: Message) {
        match m.body {
            MessageBody::AppendResp { index, reject } => self.handle_append_resp(m.from, index, reject),
            MessageBody::HeartbeatResp { read_seq } => self.handle_heartbeat_resp(m.from, read_seq),
            _ => {}
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::InstallSnapshot { .. } => {
                // §5.2: a candidate that hears from a leader of its term returns to follower.
                self.become_follower(m.term, Some(m.from));
                self.step_follower(m);
            }
            MessageBody::PreVoteResp { granted } if self.role == Role::PreCandidate => {
                match self.poll(m.from, granted) {
                    Some(true) => self.campaign(Campaign::Election),
                    Some(false) => self.become_follower(self.term, None),
                    None => {}
                }
            }
            MessageBody::VoteResp { granted } if self.role == Role::Candidate => match self.poll(m.from, granted) {
                Some(true) => self.become_leader(),
                Some(false) => self.become_follower(self.term, None),
                None => {}
            },
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { prev_index, prev_term, entries, commit } => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                self.handle_append(m.from, prev_index, prev_term, &entries, commit);
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                // The leader sends at most what it knows we match, so this never commits an
                // entry we hold that differs from the leader's. What it knows we match we
                // acknowledged as durable: a commit index past our log means those entries are
                // gone. etcd stops there too ("Was the raft log corrupted, truncated, or lost?");
                // going on, this member would wait for entries the leader never sends again, and
                // could vote with a log shorter than the one it vouched for.
                let holds = self.log.last_index();
                if commit > holds {
                    self.data_lost = Some(DataLoss::Acknowledged { acknowledged: commit, holds });
                    return;
                }
                self.log.commit_to(commit);
                self.send(m.from, MessageBody::HeartbeatResp { read_seq });
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.election_elapsed = 0;
                self.leader = Some(m.from);
                self.handle_snapshot(m.from, snapshot);
            }
            // campaign() itself refuses when this member may not campaign (not a voter).
            MessageBody::TimeoutNow => self.campaign(Campaign::Transfer),
            _ => {}
        }
    }

    fn handle_append(&mut self, from: NodeId, prev_index: Index, prev_term: Term, entries: &[Entry], commit: Index) {
        if self.is_blank() && prev_index == 0 && self.voter_before_learner(entries) {
            self.lose_data(from);
            return;
        }
        if prev_index < self.log.committed {
            self.send(from, MessageBody::AppendResp { index: self.log.committed, reject: None });
            return;
        }
        match self.log.maybe_append(prev_index, prev_term, entries) {
            Some(last_new) => {
                let truncated = std::mem::take(&mut self.log.truncated);
                if truncated || entries.iter().any(|e| matches!(e.payload, EntryPayload::ConfChange(_))) {
                    // The newest configuration in the log may have changed (or been rolled back).
                    let conf = self.conf_at(self.log.last_index());
                    if conf != self.conf {
                        self.conf = conf;
                    }
                }
                // §5.3: commit what the leader committed, but only up to what we now know
                // matches the leader's log.
                self.log.commit_to(commit.min(last_new));
                self.send(from, MessageBody::AppendResp { index: last_new, reject: None });
            }
            None => {
                let hint_index = self.log.find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
                let hint_term = self.log.term(hint_index).unwrap_or(0);
                self.send(
                    from,
                    MessageBody::AppendResp {
                        index: prev_index,
                        reject: Some(RejectHint { index: hint_index, term: hint_term }),
                    },
                );
            }
        }
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        if self.is_blank() && snapshot.meta.conf.voters.contains(&self.cfg.id) {
            self.lose_data(from);
            return;
        }
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        if index <= self.log.committed {
            self.send(from, MessageBody::AppendResp { index: self.log.committed, reject: None });
            return;
        }
        if self.log.match_term(index, term) {
            // We already hold the entries it covers: just learn that they are committed.
            self.log.commit_to(index);
        } else {
            self.conf = snapshot.meta.conf.clone();
            self.log.install(snapshot);
        }
        self.send(from, MessageBody::AppendResp { index, reject: None });
    }

    /// Whether a log sent to this blank member counts it as a voter before (or without) adding
    /// it as a learner: a member that joins with empty data is always added as a learner first,
    /// so such a log belongs to a cluster in which this id voted — with data it no longer has.
    fn voter_before_learner(&self, entries: &[Entry]) -> bool {
        let me = self.cfg.id;
        for e in entries {
            if let EntryPayload::ConfChange(cc) = &e.payload {
                if cc.node_id == me {
                    return matches!(cc.kind, ConfChangeKind::AddVoter | ConfChangeKind::Promote);
                }
            }
        }
        false
    }

    fn lose_data(&mut self, leader: NodeId) {
        self.data_lost = Some(DataLoss::BlankVoter);
        self.leader = Some(leader);
    }

    fn handle_append_resp(&mut self, from: NodeId, index: Index, reject: Option<RejectHint>) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        if let Some(hint) = reject {
            let probe_from =
                if hint.term > 0 { self.log.find_conflict_by_term(hint.index, hint.term) } else { hint.index };
            let Some(pr) = self.progress.get_mut(&from) else { return };
            if pr.maybe_decrease_to(index, probe_from) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(from, true);
            }
            return;
        }
        // A follower can only acknowledge entries this leader sent; a larger index comes from a
        // faulty peer and would corrupt the match index (and overflow `next`).
        if index > last_index {
            return;
        }
        let was_paused = pr.is_paused();
        if !pr.maybe_update(index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot { index: snap_index, .. } if pr.matched >= snap_index => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Replicate => pr.inflights.free_to(index),
            ProgressState::Snapshot { .. } => {}
        }
        let matched = pr.matched;
        if self.maybe_commit() {
            self.need_bcast_append = true;
        } else if was_paused {
            self.send_append(from, false);
        }
        // Keep the pipeline full (bounded by the in-flight window).
        for _ in 0..self.cfg.max_inflight_msgs {
            if !self.send_append(from, false) {
                break;
            }
        }
        if self.lead_transferee == Some(from) && matched == last_index {
            self.send(from, MessageBody::TimeoutNow);
        }
    }

    fn handle_heartbeat_resp(&mut self, from: NodeId, read_seq: u64) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            pr.inflights.free_first();
        }
        let behind = pr.matched < last_index;
        if read_seq > pr.read_seq_acked {
            pr.read_seq_acked = read_seq;
        }
        if behind {
            self.send_append(from, true);
        }
        self.release_reads();
    }

    fn release_reads(&mut self) {
        let me = self.cfg.id;
        let progress = &self.progress;
        let confirmed = quorum_value(&self.conf.voters, |id| {
            if id == me {
                u64::MAX
            } else {
                progress.get(&id).map_or(0, |p| p.read_seq_acked)
            }
        });
        for (ctx, index) in self.read_only.release_to(confirmed) {
            self.read_states.push(ReadState { ctx, index });
        }
    }

    /// §5.3/§5.4.2: commit the highest index a majority holds — but only if it is of the
    /// current term; entries of earlier terms commit indirectly, never by counting replicas.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let index = quorum_value(&self.conf.voters, |id| progress.get(&id).map_or(0, |p| p.matched));
        if index <= self.log.committed || self.log.term(index) != Some(self.term) {
            return false;
        }
        let old = self.log.committed;
        self.log.commit_to(index);
        let newly: usize = ((old + 1)..=index)
            .filter_map(|i| self.log.entry(i))
            .filter(|e| e.term == self.term)
            .map(Entry::payload_bytes)
            .sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(newly);
        for ctx in self.read_only.take_waiting() {
            self.register_read(ctx);
        }
        self.step_down_if_removed();
        true
    }

    // ----- sending -----

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.msgs.push(Message { from: self.cfg.id, to, term, body });
    }

    /// Sends `to` the entries it lacks (or a snapshot), if flow control allows. Returns
    /// whether a message was sent.
    pub(crate) fn send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        if to == self.cfg.id {
            return false;
        }
        let last = self.log.last_index();
        let committed = self.log.committed;
        let max_bytes = self.cfg.max_msg_bytes;
        let Some(pr) = self.progress.get(&to) else { return false };
        if pr.is_paused() {
            return false;
        }
        let prev_index = pr.next.saturating_sub(1);
        let prev_term = self.log.term(prev_index);
        let entries = if pr.next <= last { self.log.slice(pr.next, last, max_bytes) } else { Some(Vec::new()) };
        match (prev_term, entries) {
            (Some(prev_term), Some(entries)) => {
                if entries.is_empty() && !send_if_empty {
                    return false;
                }
                let last_sent = entries.last().map(|e| e.index);
                if let Some(pr) = self.progress.get_mut(&to) {
                    pr.sent_append(last_sent);
                }
                self.send(to, MessageBody::Append { prev_index, prev_term, entries, commit: committed });
                true
            }
            _ => {
                // The follower needs entries we compacted away: send the snapshot (§7).
                let Some(snapshot) = self.snapshot.clone() else { return false };
                if let Some(pr) = self.progress.get_mut(&to) {
                    pr.become_snapshot(snapshot.meta.index);
                }
                self.send(to, MessageBody::InstallSnapshot { snapshot });
                true
            }
        }
    }

    pub(crate) fn bcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in peers {
            self.send_append(id, true);
        }
    }

    pub(crate) fn bcast_heartbeat(&mut self) {
        let read_seq = self.read_only.last_seq();
        self.read_only.need_broadcast = false;
        let committed = self.log.committed;
        let me = self.cfg.id;
        let targets: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, pr)| {
                let commit = if self.cfg.planted == Some(PlantedBug::HeartbeatCommitPastMatch) {
                    committed
                } else {
                    pr.matched.min(committed)
                };
                (*id, commit)
            })
            .collect();
        for (id, commit) in targets {
            self.send(id, MessageBody::Heartbeat { commit, read_seq });
        }
    }

    // ----- role changes -----

    fn campaign(&mut self, kind: Campaign) {
        if self.log.pending_snapshot.is_some() {
            return;
        }
        let Some(conf) = self.election_conf() else { return };
        let request_term = if kind == Campaign::PreVote {
            self.become_pre_candidate();
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        self.campaigns = Campaigns { count: self.campaigns.count + 1, last: Some((kind, request_term)) };
        self.election_voters = conf.voters;
        let me = self.cfg.id;
        if self.poll(me, true) == Some(true) {
            // A single voter wins at once.
            if kind == Campaign::PreVote {
                self.campaign(Campaign::Election);
            } else {
                self.become_leader();
            }
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = self.election_voters.iter().copied().filter(|id| *id != me).collect();
        for id in voters {
            let body = match kind {
                Campaign::PreVote => MessageBody::PreVote { last_index, last_term },
                _ => MessageBody::Vote { last_index, last_term, transfer: kind == Campaign::Transfer },
            };
            self.send_with_term(id, request_term, body);
        }
    }

    /// Records a vote; `Some(true)` when a majority granted, `Some(false)` when a majority refused.
    fn poll(&mut self, from: NodeId, granted: bool) -> Option<bool> {
        self.votes.entry(from).or_insert(granted);
        let votes = &self.votes;
        if has_majority(&self.election_voters, |id| votes.get(&id) == Some(&true)) {
            Some(true)
        } else if has_majority(&self.election_voters, |id| votes.get(&id) == Some(&false)) {
            Some(false)
        } else {
            None
        }
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout =
            self.rng.range(self.cfg.election_timeout_min_ticks as u64, self.cfg.election_timeout_max_ticks as u64)
                as u32;
    }

    fn reset(&mut self, term: Term) {
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.votes.clear();
        self.lead_transferee = None;
        self.reset_election_timer();
        let aborted = self.read_only.abort_all();
        self.aborted_reads.extend(aborted);
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
        self.need_bcast_append = false;
    }

    fn become_pre_candidate(&mut self) {
        // Thesis §9.6: neither the term nor the vote changes until a real election.
        let term = self.term;
        self.reset(term);
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        let term = self.term + 1;
        self.reset(term);
        self.vote = Some(self.cfg.id);
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.rebuild_progress();
        self.pending_conf_index = self.log.last_index();
        self.uncommitted_bytes = 0;
        // §8: a no-op of the new term, so that earlier entries commit through it and the
        // commit index becomes known to this leader.
        let noop = Entry { index: self.log.last_index() + 1, term, payload: EntryPayload::Noop };
        self.log.append(vec![noop]);
        self.need_bcast_append = true;
    }

    fn rebuild_progress(&mut self) {
        let next = self.log.last_index() + 1;
        let me = self.cfg.id;
        self.progress.clear();
        let members: BTreeSet<NodeId> = self.conf.voters.union(&self.conf.learners).copied().collect();
        for id in members {
            let mut pr = Progress::new(next, self.cfg.max_inflight_msgs);
            if id == me {
                pr.matched = self.log.stable;
                pr.recent_active = true;
            }
            self.progress.insert(id, pr);
        }
    }

    /// The configuration changed on the leader: track the new members, forget the removed.
    fn on_conf_changed(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let me = self.cfg.id;
        let next = self.log.last_index() + 1;
        let members: BTreeSet<NodeId> = self.conf.voters.union(&self.conf.learners).copied().collect();
        self.progress.retain(|id, _| members.contains(id) || *id == me);
        for id in members {
            self.progress.entry(id).or_insert_with(|| {
                let mut pr = Progress::new(next, self.cfg.max_inflight_msgs);
                pr.recent_active = true;
                pr
            });
        }
        if self.lead_transferee.is_some_and(|id| !self.conf.voters.contains(&id)) {
            self.lead_transferee = None;
        }
        // A smaller quorum may commit more now; and ReadIndex quorums changed.
        if self.maybe_commit() {
            self.need_bcast_append = true;
        }
        self.release_reads();
    }

    /// Thesis §4.2.2: a leader that removed itself manages the cluster until the change
    /// commits (not counting itself), then steps down — handing leadership to the most
    /// caught-up remaining voter so that nobody waits for an election timeout.
    fn step_down_if_removed(&mut self) {
        let me = self.cfg.id;
        if self.role != Role::Leader || self.conf.voters.contains(&me) || self.log.committed < self.pending_conf_index {
            return;
        }
        let last = self.log.last_index();
        let successor = self
            .conf
            .voters
            .iter()
            .filter_map(|id| self.progress.get(id).map(|p| (*id, p.matched)))
            .filter(|(_, matched)| *matched == last)
            .map(|(id, _)| id)
            .next();
        if let Some(id) = successor {
            self.send(id, MessageBody::TimeoutNow);
        }
        let term = self.term;
        self.become_follower(term, None);
    }
}

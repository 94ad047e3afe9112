//! The data the consensus core exchanges with its host: log entries, persistent state,
//! configurations, snapshots and peer messages. Plain data, serialisable by the host in any
//! encoding; the core itself never encodes or decodes bytes.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A member id. Never 0 (0 means "nobody") and never reused after a member is removed.
pub type NodeId = u64;
/// A Raft term (§5.1).
pub type Term = u64;
/// A log index; the first real entry has index 1 (index 0 is the empty log's base).
pub type Index = u64;

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by every new leader (§8: commits an entry of its own term so that the
    /// commit index, and with it ReadIndex, becomes known).
    Noop,
    /// An opaque command for the replicated state machine.
    Command(Bytes),
    /// A membership change, effective on each member as soon as the entry is in its log (thesis
    /// §4.1; a truncation that drops it rolls it back), not when it is applied.
    ConfChange(ConfChange),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub payload: EntryPayload,
}

impl Entry {
    /// Bytes counted against message and uncommitted-log limits.
    pub fn payload_bytes(&self) -> usize {
        match &self.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Command(data) => data.len(),
            EntryPayload::ConfChange(cc) => 16 + cc.context.len(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfChangeKind {
    /// Add a non-voting member that receives the log (thesis §4.2.1).
    AddLearner,
    /// Add a voter directly; used to write the bootstrap configuration.
    AddVoter,
    /// Turn a learner into a voter.
    Promote,
    /// Remove a voter or a learner.
    Remove,
}

/// One membership step. `context` is opaque to the core (the host keeps names and URLs there).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfChange {
    pub kind: ConfChangeKind,
    pub node_id: NodeId,
    pub context: Bytes,
}

/// A configuration: who votes and who only listens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfState {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl ConfState {
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Applies one change; the caller has validated it (see `validate`).
    pub(crate) fn apply(&mut self, cc: &ConfChange) {
        match cc.kind {
            ConfChangeKind::AddLearner => {
                if !self.voters.contains(&cc.node_id) {
                    self.learners.insert(cc.node_id);
                }
            }
            ConfChangeKind::AddVoter | ConfChangeKind::Promote => {
                self.learners.remove(&cc.node_id);
                self.voters.insert(cc.node_id);
            }
            ConfChangeKind::Remove => {
                self.voters.remove(&cc.node_id);
                self.learners.remove(&cc.node_id);
            }
        }
    }

    /// Whether `cc` is a meaningful step from this configuration.
    pub fn validate(&self, cc: &ConfChange) -> Result<(), ConfChangeError> {
        let id = cc.node_id;
        if id == 0 {
            return Err(ConfChangeError::InvalidId);
        }
        match cc.kind {
            ConfChangeKind::AddLearner | ConfChangeKind::AddVoter if self.contains(id) => {
                Err(ConfChangeError::AlreadyMember(id))
            }
            ConfChangeKind::Promote if !self.learners.contains(&id) => Err(ConfChangeError::NotALearner(id)),
            ConfChangeKind::Remove if !self.contains(id) => Err(ConfChangeError::NotAMember(id)),
            ConfChangeKind::Remove if self.voters.len() == 1 && self.voters.contains(&id) => {
                Err(ConfChangeError::LastVoter(id))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfChangeError {
    #[error("member id 0 is reserved")]
    InvalidId,
    #[error("member {0:x} is already in the configuration")]
    AlreadyMember(NodeId),
    #[error("member {0:x} is not a learner")]
    NotALearner(NodeId),
    #[error("member {0:x} is not in the configuration")]
    NotAMember(NodeId),
    #[error("member {0:x} is the last voter and cannot be removed")]
    LastVoter(NodeId),
}

/// What must be durable before any message that depends on it is sent (§5.1, Figure 2:
/// currentTerm and votedFor), plus the commit index so a restart can re-apply quickly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: Index,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last index the snapshot covers, and its term.
    pub index: Index,
    pub term: Term,
    /// The configuration as of `index`.
    pub conf: ConfState,
}

/// A snapshot of the state machine (§7). `data` is opaque to the core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

/// A peer message. `term` is the sender's term when it was sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

/// Terms and indexes grow by one per election and per entry, so no real cluster comes near
/// this bound. A message carrying a larger one is damaged: acting on it would wedge the
/// cluster in a term nobody can leave (the next election's `term + 1` overflows) or put the
/// log where the next entry's `last_index + 1` overflows. (Peers are trusted, as Raft assumes:
/// a message crafted just below the bound can still exhaust the terms left.)
pub const MAX_TERM_OR_INDEX: u64 = 1 << 62;

impl Message {
    /// Whether every term and index the message carries is below `MAX_TERM_OR_INDEX`; `step`
    /// drops any other message unread.
    pub fn is_well_formed(&self) -> bool {
        let ok = |value: u64| value < MAX_TERM_OR_INDEX;
        ok(self.term)
            && match &self.body {
                MessageBody::Append { prev_index, prev_term, entries, commit } => {
                    ok(*prev_index)
                        && ok(*prev_term)
                        && ok(*commit)
                        && entries.iter().all(|e| ok(e.index) && ok(e.term))
                }
                MessageBody::AppendResp { index, reject } => {
                    ok(*index) && reject.is_none_or(|hint| ok(hint.index) && ok(hint.term))
                }
                MessageBody::Heartbeat { commit, .. } => ok(*commit),
                MessageBody::PreVote { last_index, last_term } | MessageBody::Vote { last_index, last_term, .. } => {
                    ok(*last_index) && ok(*last_term)
                }
                MessageBody::InstallSnapshot { snapshot } => ok(snapshot.meta.index) && ok(snapshot.meta.term),
                MessageBody::HeartbeatResp { .. }
                | MessageBody::PreVoteResp { .. }
                | MessageBody::VoteResp { .. }
                | MessageBody::TimeoutNow
                | MessageBody::Propose { .. }
                | MessageBody::Placed { .. } => true,
            }
    }
}

/// Sent by a follower that could not append: where the leader should probe next (§5.3's
/// optimisation, as etcd does it: the largest index at or below `index` whose term is at most
/// the leader's `prev_term`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectHint {
    pub index: Index,
    pub term: Term,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// AppendEntries (§5.3).
    Append {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    /// `index` is the last index now known to match (success) or the rejected `prev_index`.
    AppendResp {
        index: Index,
        reject: Option<RejectHint>,
    },
    /// An empty AppendEntries (§5.2). `read_seq` confirms leadership for ReadIndex (§6.4).
    Heartbeat {
        commit: Index,
        read_seq: u64,
    },
    HeartbeatResp {
        read_seq: u64,
    },
    /// Thesis §9.6: would you vote for me in term `term`? Changes nobody's term.
    PreVote {
        last_index: Index,
        last_term: Term,
    },
    PreVoteResp {
        granted: bool,
    },
    /// RequestVote (§5.2). `transfer` marks an election started by TimeoutNow, which voters
    /// must not ignore because of the check-quorum lease (thesis §3.10).
    Vote {
        last_index: Index,
        last_term: Term,
        transfer: bool,
    },
    VoteResp {
        granted: bool,
    },
    /// InstallSnapshot (§7).
    InstallSnapshot {
        snapshot: Snapshot,
    },
    /// Leader transfer (thesis §3.10): start an election now.
    TimeoutNow,
    /// A follower's clients' commands for the leader to append (etcd's MsgProp), numbered
    /// `batch` by the follower. Opaque to the core, which ignores it: the node answers it
    /// (`node::forward`). Sent only to a leader that says it takes it.
    Propose {
        batch: u64,
        commands: Vec<Bytes>,
    },
    /// The leader's answer to `Propose` `batch`: where it placed each command, encoded by the node.
    /// Ignored by the core.
    Placed {
        batch: u64,
        answer: Bytes,
    },
}

impl MessageBody {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResp { .. } => "append_resp",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResp { .. } => "heartbeat_resp",
            MessageBody::PreVote { .. } => "pre_vote",
            MessageBody::PreVoteResp { .. } => "pre_vote_resp",
            MessageBody::Vote { .. } => "vote",
            MessageBody::VoteResp { .. } => "vote_resp",
            MessageBody::InstallSnapshot { .. } => "install_snapshot",
            MessageBody::TimeoutNow => "timeout_now",
            MessageBody::Propose { .. } => "propose",
            MessageBody::Placed { .. } => "placed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// A ReadIndex answer (§6.4): once the state machine has applied `index`, a read made for
/// `ctx` returns a linearizable result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub index: Index,
}

//! Settings of one consensus member. Time is counted in ticks: the host decides how long a
//! tick is (the node uses 10 ms, so the defaults below are 150–300 ms and 50 ms).

use super::types::NodeId;

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Election timeouts are drawn uniformly from `[min, max)` ticks, afresh each time (§5.2).
    pub election_timeout_min_ticks: u32,
    pub election_timeout_max_ticks: u32,
    pub heartbeat_interval_ticks: u32,
    /// Thesis §9.6: ask before disrupting; a partitioned member does not inflate terms.
    pub pre_vote: bool,
    /// Thesis §6.2/§9.6: a leader that has not heard from a majority for an election timeout
    /// steps down, and followers that hear from a leader ignore vote requests.
    pub check_quorum: bool,
    /// At most this many append messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// At most this many payload bytes in one append message (always at least one entry).
    pub max_msg_bytes: usize,
    /// Proposals are refused while the leader's uncommitted log holds more than this.
    pub max_uncommitted_bytes: usize,
    /// Seeds the election-timeout randomness.
    pub seed: u64,
    /// A bug planted on purpose, for the simulator to prove that it catches it. Always `None`
    /// outside the simulator's planted-bug runs.
    #[doc(hidden)]
    pub planted: Option<PlantedBug>,
}

/// Bugs the simulator must catch (tests/sim `planted_bugs_are_caught`): each one removes one
/// safety rule, and the simulator finds a seed that breaks an invariant without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// The join decision takes a follower's word that the member may rejoin under its id.
    JoinOnFollowersWord,
    /// A member with an empty log grants votes.
    VoteFromEmptyLog,
    /// A leader sends messages of a term that is not yet durable (before its Ready persisted).
    SendTermBeforePersist,
    /// A leader's heartbeat carries its whole commit index, not what the follower is known to
    /// hold: a follower behind it takes that for entries it acknowledged and lost.
    HeartbeatCommitPastMatch,
    /// With asynchronous writes, a leader counts its own entries toward a commit as soon as it
    /// hands them out to write, before they are durable on its disk (thesis §10.2.1 allows
    /// the leader to commit before its own write only with a majority of other members).
    LeaderCountsUnwritten,
}

impl Config {
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_timeout_min_ticks: 15,
            election_timeout_max_ticks: 30,
            heartbeat_interval_ticks: 5,
            pre_vote: true,
            check_quorum: true,
            max_inflight_msgs: 256,
            max_msg_bytes: 1 << 20,
            max_uncommitted_bytes: 64 << 20,
            seed: id,
            planted: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError("member id must not be 0".into()));
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err(ConfigError("heartbeat interval must be at least one tick".into()));
        }
        if self.election_timeout_min_ticks <= self.heartbeat_interval_ticks {
            return Err(ConfigError("the minimum election timeout must be longer than the heartbeat interval".into()));
        }
        if self.election_timeout_max_ticks <= self.election_timeout_min_ticks {
            return Err(ConfigError("the maximum election timeout must be longer than the minimum".into()));
        }
        if self.max_inflight_msgs == 0 {
            return Err(ConfigError("max_inflight_msgs must be at least 1".into()));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid raft configuration: {0}")]
pub struct ConfigError(pub String);

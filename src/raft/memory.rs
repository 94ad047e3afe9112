//! Durable state kept in memory, exactly as a host persists it from each `Ready`: the
//! simulator, the unit tests, the fuzzer and the benchmark use it as their "disk". A crash
//! keeps this and loses everything else; a power loss also loses what was written without a
//! sync, as the node writes a `Ready` that only moves the commit index (`power_loss`).

use super::raft::InitialState;
use super::ready::Ready;
use super::types::{Entry, HardState, Index, Snapshot};

#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// The commit index as of the last synced write: a write that only moves the commit index is
    /// not synced (as in the node's WAL), so a power loss takes the commit index back to this.
    pub synced_commit: Index,
}

impl MemoryStorage {
    /// What a member starts with (the bootstrap entries are durable from the start).
    pub fn from_initial(state: &InitialState) -> MemoryStorage {
        MemoryStorage {
            hard_state: state.hard_state,
            snapshot: state.snapshot.clone(),
            entries: state.entries.clone(),
            synced_commit: state.hard_state.commit,
        }
    }

    pub fn last_index(&self) -> Index {
        let base = self.snapshot.as_ref().map_or(0, |s| s.meta.index);
        self.entries.last().map_or(base, |e| e.index)
    }

    /// Makes a `Ready`'s state durable, in the order `ready.rs` prescribes: hard state, an
    /// installed snapshot (which replaces the whole log), then entries (replacing any stored
    /// at or after the first of them). Returns false if the entries would leave a gap, which
    /// a correct core never asks for.
    pub fn persist(&mut self, rd: &Ready) -> bool {
        let commit_only = rd.snapshot.is_none()
            && rd.entries.is_empty()
            && rd.hard_state.is_some_and(|hs| hs.term == self.hard_state.term && hs.vote == self.hard_state.vote);
        if !commit_only {
            // A synced write makes everything written before it durable.
            self.synced_commit = rd.hard_state.map_or(self.hard_state.commit, |hs| hs.commit);
        }
        if let Some(hs) = rd.hard_state {
            self.hard_state = hs;
        }
        if let Some(snapshot) = &rd.snapshot {
            self.entries.clear();
            self.snapshot = Some(snapshot.clone());
        }
        if let Some(first) = rd.entries.first() {
            self.entries.retain(|e| e.index < first.index);
            if self.last_index() + 1 != first.index {
                return false;
            }
            self.entries.extend(rd.entries.iter().cloned());
        }
        true
    }

    /// Keeps a snapshot taken by the host and drops the entries it covers.
    pub fn compact(&mut self, snapshot: Snapshot) {
        self.entries.retain(|e| e.index > snapshot.meta.index);
        self.snapshot = Some(snapshot);
        self.synced_commit = self.hard_state.commit;
    }

    /// A power cut: what was written without a sync is gone (the commit index of commit-only
    /// writes); the rest was synced.
    pub fn power_loss(&mut self) {
        self.hard_state.commit = self.synced_commit;
    }

    /// The state a restarted member begins from.
    pub fn restart_state(&self) -> InitialState {
        InitialState::restart(self.hard_state, self.snapshot.clone(), self.entries.clone())
    }
}

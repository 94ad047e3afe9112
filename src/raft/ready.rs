//! The hand-off between the core and its host. The host takes a `Ready`, and in this order:
//! 1. may send `messages` at once (before or while it persists);
//! 2. persists `hard_state`, `snapshot` and `entries` (deleting any stored entries at or
//!    after the first index in `entries`), and makes them durable (fsync);
//! 3. sends `persisted_messages` — only now, because votes, append acknowledgements and
//!    anything of a new term in them are promises about what step 2 made durable;
//! 4. installs `snapshot` into its state machine, then applies `committed_entries` in order,
//!    answers `read_states` once it has applied their index, and fails `aborted_reads`;
//! 5. calls `advance()`.
//!
//! `messages` holds only a leader's messages of a term (and vote) that is already durable:
//! its appends may leave while its own fsync runs (thesis §10.2.1), because it counts its own
//! log toward a commit only once `advance` says it is durable. Everything else — a follower's
//! acknowledgements, votes, and a leader's first messages after it won in a term that is not
//! yet on disk (a single voter wins at once) — is in `persisted_messages`. The split follows
//! raft-rs (`messages` / `persisted_messages`).

use super::config::PlantedBug;
use super::raft::Raft;
use super::types::*;

/// Who leads, as last seen by the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub leader: Option<NodeId>,
}

#[derive(Clone, Debug, Default)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    /// May be sent before the rest of this `Ready` is durable.
    pub messages: Vec<Message>,
    /// May be sent only once `hard_state`, `snapshot` and `entries` are durable.
    pub persisted_messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub aborted_reads: Vec<u64>,
}

/// What a `Ready` handed out, so that `advance` can record it.
#[derive(Clone, Debug, Default)]
pub(crate) struct InProgress {
    hard_state: Option<HardState>,
    last_entry: Option<(Index, Term)>,
    snapshot: Option<Snapshot>,
    applied_to: Option<Index>,
}

/// At most this many payload bytes of committed entries in one `Ready`.
const MAX_APPLY_BYTES: usize = 16 << 20;

/// The host-facing wrapper: a `Raft` plus what was last handed out.
pub struct RawNode {
    pub raft: Raft,
    persisted: HardState,
    soft: SoftState,
    in_progress: Option<InProgress>,
}

impl RawNode {
    pub fn new(raft: Raft) -> RawNode {
        let persisted = raft.hard_state();
        let soft = SoftState { role: raft.role(), leader: raft.leader() };
        RawNode { raft, persisted, soft, in_progress: None }
    }

    fn soft_state(&self) -> SoftState {
        SoftState { role: self.raft.role(), leader: self.raft.leader() }
    }

    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        self.soft_state() != self.soft
            || r.hard_state() != self.persisted
            || !r.log.unstable_entries().is_empty()
            || r.log.pending_snapshot.is_some()
            || !r.msgs.is_empty()
            || r.log.has_next_committed()
            || !r.read_states.is_empty()
            || !r.aborted_reads.is_empty()
            || (r.role() == Role::Leader && (r.need_bcast_append || r.read_only.need_broadcast))
    }

    /// Collects everything to persist, send and apply. Must be followed by `advance`.
    pub fn ready(&mut self) -> Ready {
        let r = &mut self.raft;
        if r.role() == Role::Leader {
            if r.need_bcast_append {
                r.need_bcast_append = false;
                r.bcast_append();
            }
            if r.read_only.need_broadcast {
                r.bcast_heartbeat();
            }
        }
        let soft = SoftState { role: r.role(), leader: r.leader() };
        let soft_state = (soft != self.soft).then_some(soft);
        self.soft = soft;
        let hs = r.hard_state();
        let hard_state = (hs != self.persisted).then_some(hs);
        let entries = r.log.unstable_entries().to_vec();
        let snapshot = r.log.pending_snapshot.clone();
        // A leader's messages may leave early only if they carry nothing that is not durable
        // yet but their entries: its term and vote must already be on disk.
        let durable_term = self.persisted.term == r.term && self.persisted.vote == r.vote;
        let early = r.role() == Role::Leader
            && snapshot.is_none()
            && (durable_term || r.cfg.planted == Some(PlantedBug::SendTermBeforePersist));
        let msgs = std::mem::take(&mut r.msgs);
        let (messages, persisted_messages) = if early { (msgs, Vec::new()) } else { (Vec::new(), msgs) };
        let committed_entries = r.log.next_committed(MAX_APPLY_BYTES);
        self.in_progress = Some(InProgress {
            hard_state,
            last_entry: entries.last().map(|e| (e.index, e.term)),
            snapshot: snapshot.clone(),
            applied_to: committed_entries.last().map(|e| e.index),
        });
        Ready {
            soft_state,
            hard_state,
            snapshot,
            entries,
            messages,
            persisted_messages,
            committed_entries,
            read_states: std::mem::take(&mut r.read_states),
            aborted_reads: std::mem::take(&mut r.aborted_reads),
        }
    }

    /// The host has done everything the last `Ready` asked.
    pub fn advance(&mut self) {
        let Some(done) = self.in_progress.take() else { return };
        let r = &mut self.raft;
        if let Some(hs) = done.hard_state {
            self.persisted = hs;
        }
        if let Some(snapshot) = done.snapshot {
            if r.log.pending_snapshot.as_ref().map(|s| s.meta.index) == Some(snapshot.meta.index) {
                r.log.pending_snapshot = None;
            }
            r.log.applied = r.log.applied.max(snapshot.meta.index);
            r.snapshot = Some(snapshot);
        }
        if let Some((index, term)) = done.last_entry {
            r.log.stable_to(index, term);
        }
        if let Some(index) = done.applied_to {
            r.log.applied = r.log.applied.max(index);
        }
        if r.role() == Role::Leader {
            let me = r.id();
            let stable = r.log.stable;
            if let Some(pr) = r.progress.get_mut(&me) {
                pr.matched = pr.matched.max(stable);
            }
            if r.maybe_commit() {
                r.need_bcast_append = true;
            }
        }
    }

    // Convenience pass-throughs.
    pub fn tick(&mut self) {
        self.raft.tick()
    }
    pub fn step(&mut self, m: Message) {
        self.raft.step(m)
    }
}

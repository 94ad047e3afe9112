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
//! With asynchronous writes (`set_async_writes`, what the node does) the host does not wait for
//! step 2: it hands the write to a writer that completes writes in the order handed out, does
//! steps 1 and 4 at once, calls `advance_apply()`, and may take the next `Ready` at once. When
//! the writes up to Ready `number` are durable it sends their `persisted_messages` and calls
//! `persisted(number)`. Only then do those entries count for the leader itself toward a commit,
//! and only then are committed entries at their index handed out to apply.
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
    /// Counts the Readies handed out; `RawNode::persisted` takes it.
    pub number: u64,
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

/// What a `Ready` handed out to write, so that `persisted` can record it.
#[derive(Clone, Debug, Default)]
pub(crate) struct InProgress {
    number: u64,
    hard_state: Option<HardState>,
    last_entry: Option<(Index, Term)>,
    snapshot: Option<Snapshot>,
}

/// At most this many payload bytes of committed entries in one `Ready`.
const MAX_APPLY_BYTES: usize = 16 << 20;

/// The host-facing wrapper: a `Raft` plus what was last handed out.
pub struct RawNode {
    pub raft: Raft,
    /// The hard state the host confirmed durable.
    persisted: HardState,
    /// The hard state last handed out to write.
    handed: HardState,
    soft: SoftState,
    /// Readies handed out whose writes the host has not confirmed, oldest first.
    in_flight: std::collections::VecDeque<InProgress>,
    /// The number of the last `Ready` handed out.
    number: u64,
    async_writes: bool,
}

impl RawNode {
    pub fn new(raft: Raft) -> RawNode {
        let persisted = raft.hard_state();
        let soft = SoftState { role: raft.role(), leader: raft.leader() };
        RawNode {
            raft,
            persisted,
            handed: persisted,
            soft,
            in_flight: Default::default(),
            number: 0,
            async_writes: false,
        }
    }

    /// With asynchronous writes, the host may take the next `Ready` while the writes of earlier
    /// ones are still running (raft-rs's async storage writes): it writes each Ready's
    /// `hard_state`, `snapshot` and `entries` in the order handed out, sends its
    /// `persisted_messages` once that write and every earlier one are durable, and says so with
    /// `persisted(number)`. It applies `committed_entries` and answers reads at once and says
    /// so with `advance_apply`. Committed entries are then handed out only once they are
    /// durable here too, so that the state machine is never ahead of this member's own log.
    /// Without it (the default), every `Ready` is finished with `advance` before the next.
    pub fn set_async_writes(&mut self, on: bool) {
        self.async_writes = on;
    }

    fn soft_state(&self) -> SoftState {
        SoftState { role: self.raft.role(), leader: self.raft.leader() }
    }

    /// Entries at or below this index may be handed out to apply.
    fn durable_bound(&self) -> Index {
        if self.async_writes {
            self.raft.log.stable
        } else {
            Index::MAX
        }
    }

    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        self.soft_state() != self.soft
            || r.hard_state() != self.handed
            || !r.log.unstable_entries().is_empty()
            || (r.log.pending_snapshot.is_some() && !self.snapshot_in_flight())
            || !r.msgs.is_empty()
            || r.log.has_next_committed(self.durable_bound())
            || !r.read_states.is_empty()
            || !r.aborted_reads.is_empty()
            || (r.role() == Role::Leader && (r.need_bcast_append || r.read_only.need_broadcast))
    }

    fn snapshot_in_flight(&self) -> bool {
        let pending = self.raft.log.pending_snapshot.as_ref().map(|s| s.meta.index);
        pending.is_some() && self.in_flight.iter().any(|p| p.snapshot.as_ref().map(|s| s.meta.index) == pending)
    }

    /// Collects everything to persist, send and apply. Must be followed by `advance` (or, with
    /// asynchronous writes, by `advance_apply` and later `persisted`).
    pub fn ready(&mut self) -> Ready {
        let snapshot_in_flight = self.snapshot_in_flight();
        let durable = self.durable_bound();
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
        let hard_state = (hs != self.handed).then_some(hs);
        self.handed = hs;
        let entries = r.log.hand_out();
        let snapshot = if snapshot_in_flight { None } else { r.log.pending_snapshot.clone() };
        // A leader's messages may leave early only if they carry nothing that is not durable
        // yet but their entries: its term and vote must already be on disk.
        let durable_term = self.persisted.term == r.term && self.persisted.vote == r.vote;
        let early = r.role() == Role::Leader
            && snapshot.is_none()
            && (durable_term || r.cfg.planted == Some(PlantedBug::SendTermBeforePersist));
        let msgs = std::mem::take(&mut r.msgs);
        let (messages, persisted_messages) = if early { (msgs, Vec::new()) } else { (Vec::new(), msgs) };
        let committed_entries = r.log.next_committed(durable, MAX_APPLY_BYTES);
        if r.cfg.planted == Some(PlantedBug::LeaderCountsUnwritten) && r.role() == Role::Leader {
            // The bug: the leader counts its own entries toward a commit once handed out.
            let last = r.log.last_index();
            count_own_entries(r, last);
        }
        self.number += 1;
        self.in_flight.push_back(InProgress {
            number: self.number,
            hard_state,
            last_entry: entries.last().map(|e| (e.index, e.term)),
            snapshot: snapshot.clone(),
        });
        Ready {
            number: self.number,
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
        self.advance_apply();
        self.persisted(self.number);
    }

    /// The host applied the committed entries handed out so far.
    pub fn advance_apply(&mut self) {
        let log = &mut self.raft.log;
        debug_assert!(log.applied <= log.applying, "applied {} above applying {}", log.applied, log.applying);
        log.applied = log.applying;
    }

    /// The writes of every `Ready` up to `number` are durable (and their snapshots installed).
    pub fn persisted(&mut self, number: u64) {
        let r = &mut self.raft;
        while self.in_flight.front().is_some_and(|p| p.number <= number) {
            let Some(done) = self.in_flight.pop_front() else { break };
            if let Some(hs) = done.hard_state {
                self.persisted = hs;
            }
            if let Some(snapshot) = done.snapshot {
                if r.log.pending_snapshot.as_ref().map(|s| s.meta.index) == Some(snapshot.meta.index) {
                    r.log.pending_snapshot = None;
                }
                r.log.applied = r.log.applied.max(snapshot.meta.index);
                r.log.applying = r.log.applying.max(snapshot.meta.index);
                r.snapshot = Some(snapshot);
            }
            if let Some((index, term)) = done.last_entry {
                r.log.stable_to(index, term);
            }
        }
        if r.role() == Role::Leader {
            let stable = r.log.stable;
            count_own_entries(r, stable);
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

/// A leader's own entries up to `index` count toward a commit: its match index rises to it, and
/// a commit that moves is broadcast.
fn count_own_entries(r: &mut Raft, index: Index) {
    let me = r.id();
    if let Some(pr) = r.progress.get_mut(&me) {
        pr.matched = pr.matched.max(index);
    }
    if r.maybe_commit() {
        r.need_bcast_append = true;
    }
}

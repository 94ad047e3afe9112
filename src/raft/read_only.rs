//! ReadIndex bookkeeping (§6.4, thesis §6.4): a linearizable read records the commit index and
//! waits until a majority has confirmed, through a heartbeat round sent after the read arrived,
//! that this member is still the leader. Rounds are numbered; a member that confirms round `s`
//! confirms every earlier round too, so one heartbeat serves a whole batch of reads.

use std::collections::VecDeque;

use super::types::Index;

#[derive(Clone, Debug)]
struct PendingRead {
    seq: u64,
    ctx: u64,
    index: Index,
}

#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    next_seq: u64,
    /// Reads that arrived before the leader committed an entry of its term: the commit index
    /// is not yet known to be current, so they cannot be given an index (§8).
    waiting_for_commit: Vec<u64>,
    queue: VecDeque<PendingRead>,
    /// A heartbeat round must go out for reads registered since the last one.
    pub need_broadcast: bool,
}

impl ReadOnly {
    pub fn wait_for_commit(&mut self, ctx: u64) {
        self.waiting_for_commit.push(ctx);
    }

    pub fn take_waiting(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.waiting_for_commit)
    }

    /// Registers a read at `index`; returns its round.
    pub fn register(&mut self, ctx: u64, index: Index) -> u64 {
        self.next_seq += 1;
        self.queue.push_back(PendingRead { seq: self.next_seq, ctx, index });
        self.need_broadcast = true;
        self.next_seq
    }

    /// The newest round, carried by every heartbeat.
    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }

    /// Releases every read whose round a quorum has confirmed, as (ctx, index).
    pub fn release_to(&mut self, confirmed_seq: u64) -> Vec<(u64, Index)> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|r| r.seq <= confirmed_seq) {
            if let Some(r) = self.queue.pop_front() {
                out.push((r.ctx, r.index));
            }
        }
        out
    }

    /// Drops every pending read (leadership lost); returns their contexts.
    pub fn abort_all(&mut self) -> Vec<u64> {
        let mut out = std::mem::take(&mut self.waiting_for_commit);
        out.extend(self.queue.drain(..).map(|r| r.ctx));
        self.need_broadcast = false;
        out
    }
}

//! What a leader knows about one follower's log, and the flow control of what it sends there:
//! probe (one append at a time until the match point is found), replicate (optimistic
//! pipelining within a bounded window of in-flight appends) and snapshot (paused until an
//! InstallSnapshot lands).

use std::collections::VecDeque;

use super::types::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    /// An InstallSnapshot up to `index` is on its way; `elapsed_ticks` since it was sent.
    Snapshot {
        index: Index,
        elapsed_ticks: u32,
    },
}

/// The last indexes of the appends in flight to one follower, oldest first.
#[derive(Clone, Debug)]
pub struct Inflights {
    last_indexes: VecDeque<Index>,
    capacity: usize,
}

impl Inflights {
    pub fn new(capacity: usize) -> Inflights {
        Inflights { last_indexes: VecDeque::new(), capacity }
    }

    pub fn full(&self) -> bool {
        self.last_indexes.len() >= self.capacity
    }

    pub fn add(&mut self, last_index: Index) {
        self.last_indexes.push_back(last_index);
    }

    /// Frees every append acknowledged by an ack of `index`.
    pub fn free_to(&mut self, index: Index) {
        while self.last_indexes.front().is_some_and(|i| *i <= index) {
            self.last_indexes.pop_front();
        }
    }

    pub fn free_first(&mut self) {
        self.last_indexes.pop_front();
    }

    pub fn clear(&mut self) {
        self.last_indexes.clear();
    }

    pub fn len(&self) -> usize {
        self.last_indexes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_indexes.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated (and durable) on the follower.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    pub state: ProgressState,
    /// In probe state: an append is out and we wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    pub inflights: Inflights,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Highest ReadIndex round this member has confirmed (see `read_only`).
    pub read_seq_acked: u64,
}

impl Progress {
    pub fn new(next: Index, max_inflight: usize) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(max_inflight),
            recent_active: false,
            read_seq_acked: 0,
        }
    }

    pub fn become_probe(&mut self) {
        // After a snapshot, continue from just past it.
        if let ProgressState::Snapshot { index, .. } = self.state {
            self.next = (self.matched + 1).max(index + 1);
        } else {
            self.next = self.matched + 1;
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflights.clear();
    }

    pub fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot { index, elapsed_ticks: 0 };
        self.probe_sent = false;
        self.inflights.clear();
    }

    /// A successful append response for `index`. Returns whether it moved the match point.
    pub fn maybe_update(&mut self, index: Index) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// A rejected append of `rejected` (its prev_index), with `probe_from` the index the
    /// follower's hint suggests. Returns false when the rejection is stale.
    pub fn maybe_decrease_to(&mut self, rejected: Index, probe_from: Index) -> bool {
        if self.state == ProgressState::Replicate {
            // Only the rejection of something after what is matched is news.
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        // In probe the rejection must be for the append we sent (next - 1).
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = (probe_from + 1).min(rejected).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// Whether nothing should be sent now (flow control).
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records an append of entries whose last index is `last` (or an empty probe).
    pub fn sent_append(&mut self, last: Option<Index>) {
        match self.state {
            ProgressState::Replicate => {
                if let Some(last) = last {
                    self.next = last + 1;
                    self.inflights.add(last);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_pauses_when_the_inflight_window_is_full_and_resumes_on_ack() {
        let mut pr = Progress::new(1, 2);
        pr.become_replicate();
        pr.sent_append(Some(3));
        assert!(!pr.is_paused());
        pr.sent_append(Some(5));
        assert!(pr.is_paused(), "two appends in flight fill a window of two");
        assert!(pr.maybe_update(3));
        pr.inflights.free_to(3);
        assert!(!pr.is_paused());
        assert_eq!(pr.next, 6);
    }

    #[test]
    fn probe_sends_one_append_at_a_time_and_backs_off_to_the_hint() {
        let mut pr = Progress::new(10, 4);
        pr.sent_append(None);
        assert!(pr.is_paused());
        assert!(!pr.maybe_decrease_to(5, 2), "a rejection of another append is stale");
        assert!(pr.maybe_decrease_to(9, 4));
        assert_eq!(pr.next, 5);
        assert!(!pr.is_paused());
    }
}

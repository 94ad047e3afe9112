//! The replicated log as one member sees it: a snapshot base, the entries after it, and marks
//! on them: `stable` (durable on this member), `handed` (given to the host to write),
//! `committed`, `applying` (given to the host to apply) and `applied`.
//! Entries above `stable` are "unstable": the host has not yet confirmed them durable. With
//! asynchronous writes (`RawNode::set_async_writes`) those up to `handed` are being written.

use super::types::{Entry, Index, Snapshot, SnapshotMeta, Term};

#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Everything up to and including `base.index` is folded into a snapshot.
    base: SnapshotMeta,
    /// Entries `base.index + 1 ..= last_index()`, in order, without gaps.
    entries: Vec<Entry>,
    pub(crate) committed: Index,
    /// Handed to the host to apply; the host confirms with `advance`.
    pub(crate) applied: Index,
    /// Durable up to here (the host confirmed).
    pub(crate) stable: Index,
    /// Given to the host to persist up to here (`stable <= handed`).
    pub(crate) handed: Index,
    /// Given to the host to apply up to here (`applied <= applying`).
    pub(crate) applying: Index,
    /// A snapshot received from the leader that the host has not yet installed.
    pub(crate) pending_snapshot: Option<Snapshot>,
    /// Set when a conflict removed entries; the owner clears it after looking.
    pub(crate) truncated: bool,
}

impl RaftLog {
    /// A log restored from durable state.
    pub fn restore(base: SnapshotMeta, entries: Vec<Entry>, committed: Index, applied: Index) -> RaftLog {
        let mut log = RaftLog {
            committed: 0,
            applied: base.index,
            stable: base.index,
            handed: base.index,
            applying: base.index,
            base,
            entries: Vec::new(),
            pending_snapshot: None,
            truncated: false,
        };
        // Keep only a gap-free run that continues the base; anything else cannot be trusted.
        for entry in entries {
            if entry.index == log.last_index() + 1 {
                log.entries.push(entry);
            } else if entry.index > log.last_index() + 1 {
                break;
            }
        }
        log.stable = log.last_index();
        log.handed = log.stable;
        log.committed = committed.clamp(log.base.index, log.last_index());
        log.applied = applied.clamp(log.base.index, log.committed);
        log.applying = log.applied;
        log
    }

    pub fn first_index(&self) -> Index {
        self.base.index + 1
    }

    pub fn last_index(&self) -> Index {
        self.entries.last().map_or(self.base.index, |e| e.index)
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.base.term, |e| e.term)
    }

    pub fn base(&self) -> &SnapshotMeta {
        &self.base
    }

    /// The term of the entry at `index`, if this log still knows it.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.base.index {
            return Some(self.base.term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.base.index {
            return None;
        }
        self.entries.get((index - self.base.index - 1) as usize)
    }

    pub fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// §5.4.1: a candidate's log is at least as up-to-date as ours if its last term is
    /// higher, or equal with a last index at least ours.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries in `[from, to]` (inclusive), at most `max_bytes` of payload but always at least
    /// one when any is in range. `None` when `from` is compacted away.
    pub fn slice(&self, from: Index, to: Index, max_bytes: usize) -> Option<Vec<Entry>> {
        if from <= self.base.index {
            return None;
        }
        let to = to.min(self.last_index());
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = from;
        while index <= to {
            let Some(entry) = self.entry(index) else { break };
            bytes += entry.payload_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
            index += 1;
        }
        Some(out)
    }

    /// Appends entries at the end (the leader's own proposals).
    pub fn append(&mut self, entries: Vec<Entry>) {
        for e in entries {
            debug_assert_eq!(e.index, self.last_index() + 1);
            self.entries.push(e);
        }
    }

    /// §5.3: the follower's side of AppendEntries. If the log holds `prev_index` with
    /// `prev_term`, append `entries`, deleting an existing entry and all that follow it only on
    /// a real conflict (same index, different term), never for a stale duplicate; returns the
    /// index of the last new entry. `None` when the log does not match or when the leader
    /// would overwrite a committed entry (a protocol violation we refuse).
    pub fn maybe_append(&mut self, prev_index: Index, prev_term: Term, entries: &[Entry]) -> Option<Index> {
        // A well-formed append carries `prev_index + 1, prev_index + 2, ...`; a gap, a repeat or
        // a step back (from a faulty peer) would corrupt the log, so it is refused.
        let contiguous = entries.iter().zip(1u64..).all(|(e, i)| prev_index.checked_add(i) == Some(e.index));
        if !contiguous || !self.match_term(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + entries.len() as u64;
        // Entries at or below the snapshot base are committed here and match by definition.
        let base = self.base.index;
        let conflict = entries.iter().find(|e| e.index > base && !self.match_term(e.index, e.term));
        if let Some(first_conflict) = conflict {
            if first_conflict.index <= self.committed {
                return None;
            }
            let start = (first_conflict.index - prev_index - 1) as usize;
            self.truncate_after(first_conflict.index - 1);
            self.entries.extend_from_slice(&entries[start..]);
        }
        Some(last_new)
    }

    fn truncate_after(&mut self, index: Index) {
        let keep = index.saturating_sub(self.base.index) as usize;
        self.truncated |= keep < self.entries.len();
        self.entries.truncate(keep);
        self.stable = self.stable.min(index);
        self.handed = self.handed.min(index);
    }

    /// The largest index at or below `index` whose term is at most `term` (etcd's
    /// findConflictByTerm), used for fast back-off after a rejected append.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> Index {
        let mut index = index.min(self.last_index());
        while index > self.base.index {
            match self.term(index) {
                Some(t) if t <= term => return index,
                _ => index -= 1,
            }
        }
        index
    }

    pub fn commit_to(&mut self, index: Index) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Entries the host has not yet been told to persist.
    pub fn unstable_entries(&self) -> &[Entry] {
        debug_assert!(self.stable <= self.handed, "stable {} above handed {}", self.stable, self.handed);
        let from = (self.handed.max(self.base.index) - self.base.index) as usize;
        &self.entries[from.min(self.entries.len())..]
    }

    /// Hands the unstable entries to the host to persist.
    pub fn hand_out(&mut self) -> Vec<Entry> {
        let entries = self.unstable_entries().to_vec();
        self.handed = self.last_index();
        entries
    }

    /// The host persisted entries up to `index`, whose term was `term`; ignored if the log has
    /// since changed under it (a conflict replaced them while they were being written).
    pub fn stable_to(&mut self, index: Index, term: Term) {
        if self.match_term(index, term) && index > self.stable {
            self.stable = index;
            self.handed = self.handed.max(index);
        }
    }

    /// The last committed entry that may be handed out to apply, when entries at or below
    /// `durable` may be applied.
    fn apply_bound(&self, durable: Index) -> Index {
        self.committed.min(durable)
    }

    /// Committed entries at or below `durable` not yet handed out for applying, at most
    /// `max_bytes` (at least one); they count as being applied from now on.
    pub fn next_committed(&mut self, durable: Index, max_bytes: usize) -> Vec<Entry> {
        if !self.has_next_committed(durable) {
            return Vec::new();
        }
        let from = self.applying + 1;
        let entries = self.slice(from, self.apply_bound(durable), max_bytes).unwrap_or_default();
        if let Some(last) = entries.last() {
            self.applying = last.index;
        }
        entries
    }

    pub fn has_next_committed(&self, durable: Index) -> bool {
        debug_assert!(self.applied <= self.applying, "applied {} above applying {}", self.applied, self.applying);
        self.pending_snapshot.is_none() && self.apply_bound(durable) > self.applying
    }

    /// Replaces the whole log by a snapshot received from the leader (§7).
    pub fn install(&mut self, snapshot: Snapshot) {
        self.entries.clear();
        self.base = snapshot.meta.clone();
        self.committed = snapshot.meta.index;
        self.stable = snapshot.meta.index;
        self.handed = snapshot.meta.index;
        self.pending_snapshot = Some(snapshot);
    }

    /// Drops entries up to `index`, which the host has folded into a snapshot.
    pub fn compact(&mut self, meta: SnapshotMeta) {
        if meta.index <= self.base.index || meta.index > self.applied {
            return;
        }
        let drop = (meta.index - self.base.index) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.base = meta;
    }

    /// All entries after the base (for tests and status).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryPayload;

    fn ent(index: Index, term: Term) -> Entry {
        Entry { index, term, payload: EntryPayload::Noop }
    }

    fn log_with(terms: &[Term]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(i, t)| ent(i as u64 + 1, *t)).collect();
        RaftLog::restore(SnapshotMeta::default(), entries, 0, 0)
    }

    #[test]
    fn section_5_3_append_truncates_only_real_conflicts() {
        let mut log = log_with(&[1, 1, 2, 2]);
        // A stale duplicate of entries 2..3 must not truncate entry 4.
        assert_eq!(log.maybe_append(1, 1, &[ent(2, 1), ent(3, 2)]), Some(3));
        assert_eq!(log.last_index(), 4);
        // A conflict at 3 (term 3 instead of 2) truncates 3 and everything after it.
        assert_eq!(log.maybe_append(2, 1, &[ent(3, 3)]), Some(3));
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3), Some(3));
        // A mismatching prev entry is refused.
        assert_eq!(log.maybe_append(3, 2, &[ent(4, 3)]), None);
    }

    #[test]
    fn committed_entries_are_never_overwritten() {
        let mut log = log_with(&[1, 1, 2]);
        log.commit_to(3);
        assert_eq!(log.maybe_append(2, 1, &[ent(3, 5)]), None);
        assert_eq!(log.term(3), Some(2));
    }

    #[test]
    fn find_conflict_by_term_skips_a_whole_term() {
        let log = log_with(&[1, 1, 2, 2, 2, 5, 5]);
        assert_eq!(log.find_conflict_by_term(7, 4), 5);
        assert_eq!(log.find_conflict_by_term(7, 1), 2);
        assert_eq!(log.find_conflict_by_term(100, 5), 7);
        assert_eq!(log.find_conflict_by_term(7, 0), 0);
    }

    #[test]
    fn compaction_keeps_the_base_term_and_later_entries() {
        let mut log = log_with(&[1, 2, 3, 4]);
        log.commit_to(3);
        (log.applying, log.applied) = (3, 3);
        log.compact(SnapshotMeta { index: 2, term: 2, conf: Default::default() });
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Some(2));
        assert_eq!(log.term(1), None);
        assert_eq!(log.slice(2, 4, usize::MAX), None);
        assert_eq!(log.slice(3, 4, usize::MAX).map(|v| v.len()), Some(2));
        // Cannot compact beyond what was applied.
        log.compact(SnapshotMeta { index: 4, term: 4, conf: Default::default() });
        assert_eq!(log.first_index(), 3);
    }

    #[test]
    fn slice_respects_the_byte_limit_but_sends_at_least_one_entry() {
        let mut log = log_with(&[]);
        for i in 1..=3 {
            log.append(vec![Entry { index: i, term: 1, payload: EntryPayload::Command(vec![0u8; 100].into()) }]);
        }
        assert_eq!(log.slice(1, 3, 10).map(|v| v.len()), Some(1));
        assert_eq!(log.slice(1, 3, 200).map(|v| v.len()), Some(2));
    }
}

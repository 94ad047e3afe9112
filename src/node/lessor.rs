//! The leader's side of leases (etcd's `lease.lessor`), pure and driven by a clock the caller
//! passes (milliseconds on a monotonic clock), so that the simulator and the tests drive it
//! without time passing.
//!
//! The state machine holds each lease's granted TTL and, after a checkpoint, its remaining TTL
//! (`store::mvcc::Lease`). Only the leader (the *primary*) counts time:
//! - On becoming leader, [`Lessor::promote`] gives every lease a deadline of now + its
//!   remaining TTL (the checkpointed one, else the whole TTL) + `extend` (the election
//!   timeout), as etcd's `Promote`. So a failover never shortens a lease a client holds.
//! - A keep-alive renews to now + TTL, only once a ReadIndex round has confirmed that this
//!   member still leads (the caller's part). A lease whose remaining TTL was checkpointed
//!   first needs that checkpoint cleared through the log ([`Renewal::clear_checkpoint`]), or a
//!   new leader would count from the stale remainder.
//! - [`Lessor::expired`] names the leases past their deadline; the caller proposes their revoke
//!   through the log, so every member deletes the same keys at the same revision.
//! - [`Lessor::checkpoints_due`] names leases whose remaining TTL should be recorded through the
//!   log (every `checkpoint_interval`, for leases with more than that left), so that repeated
//!   failovers cannot keep a lease alive forever.
//! - Followers keep no deadlines: nothing expires without a leader ([`Lessor::demote`]).

use std::collections::BTreeMap;

use crate::raft::{Raft, Role, Term};
use crate::store::mvcc::Lease;

/// How long a revoke that was proposed and has not applied waits before it is proposed again.
pub const REVOKE_RETRY_MS: u64 = 3_000;
/// etcd's `leaseCheckpointInterval`.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 5 * 60 * 1000;

#[derive(Clone, Debug)]
struct Held {
    ttl_s: i64,
    /// The remaining TTL the state machine holds from a checkpoint, ms; 0: none.
    checkpointed_ms: i64,
    /// Leader only: when it expires.
    deadline_ms: Option<u64>,
    /// Leader only: when to record its remaining TTL next.
    checkpoint_at_ms: Option<u64>,
    /// When its revoke was last proposed.
    revoke_proposed_ms: Option<u64>,
    /// Leader only: a checkpoint of it was proposed in this term and has not applied.
    checkpoint_in_flight: bool,
}

/// Bugs the simulator plants on purpose to show that it catches them (`tests/sim`); never set
/// by the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseBug {
    /// A renewal never clears a checkpointed remaining TTL, so a new leader counts from it.
    RenewKeepsCheckpoint,
    /// A lease past its deadline, whose revoke may be on its way through the log, is renewed.
    RenewsExpired,
    /// A checkpoint records the remaining TTL with the election extension in it, so that every
    /// failover adds another.
    CheckpointKeepsExtension,
}

/// What a renewal needs from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    /// The lease's TTL, in seconds (what the keep-alive answers).
    pub ttl_s: i64,
    /// The state machine holds a checkpointed remaining TTL: propose a checkpoint of 0 and answer
    /// only once it applied.
    pub clear_checkpoint: bool,
}

#[derive(Clone, Debug)]
pub struct Lessor {
    leases: BTreeMap<i64, Held>,
    primary: bool,
    checkpoint_interval_ms: u64,
    /// The simulator's planted bug, if any.
    pub planted: Option<LeaseBug>,
}

impl Lessor {
    pub fn new(checkpoint_interval_ms: u64) -> Lessor {
        Lessor {
            leases: BTreeMap::new(),
            primary: false,
            checkpoint_interval_ms: checkpoint_interval_ms.max(1),
            planted: None,
        }
    }

    /// The term in which `raft`'s member counts the leases' time: while it leads, once it has
    /// applied an entry of its own term (its election's empty entry), so that everything its
    /// predecessors committed (grants, checkpoints, the clearing of a checkpoint a renewal
    /// waited for) is in the lessor before it sets deadlines. etcd promotes its lessor at the
    /// same point (on applying the leader's empty entry).
    pub fn primary_term(&self, raft: &Raft) -> Option<Term> {
        let term = raft.term();
        let caught_up = raft.log().term(raft.applied_index()) == Some(term);
        (raft.role() == Role::Leader && caught_up).then_some(term)
    }

    /// Replaces what it knows with the state machine's leases (at start, after a snapshot is
    /// installed); a primary promotes them at `now_ms` with `extend_ms`.
    pub fn load(&mut self, leases: &[Lease], now_ms: u64, extend_ms: u64) {
        self.leases = leases
            .iter()
            .map(|l| {
                let held = Held {
                    ttl_s: l.ttl,
                    checkpointed_ms: l.remaining_ms,
                    deadline_ms: None,
                    checkpoint_at_ms: None,
                    revoke_proposed_ms: None,
                    checkpoint_in_flight: false,
                };
                (l.id, held)
            })
            .collect();
        if self.primary {
            self.promote(now_ms, extend_ms);
        }
    }

    pub fn is_primary(&self) -> bool {
        self.primary
    }

    fn ttl_ms(ttl_s: i64) -> u64 {
        u64::try_from(ttl_s).unwrap_or(0).saturating_mul(1000)
    }

    fn schedule_checkpoint(&self, held: &mut Held, now_ms: u64) {
        let remaining = held.deadline_ms.map_or(0, |d| d.saturating_sub(now_ms));
        held.checkpoint_at_ms = (remaining > self.checkpoint_interval_ms).then(|| now_ms + self.checkpoint_interval_ms);
    }

    /// A grant applied.
    pub fn granted(&mut self, id: i64, ttl_s: i64, now_ms: u64) {
        let mut held = Held {
            ttl_s,
            checkpointed_ms: 0,
            deadline_ms: None,
            checkpoint_at_ms: None,
            revoke_proposed_ms: None,
            checkpoint_in_flight: false,
        };
        if self.primary {
            held.deadline_ms = Some(now_ms.saturating_add(Self::ttl_ms(ttl_s)));
            self.schedule_checkpoint(&mut held, now_ms);
        }
        self.leases.insert(id, held);
    }

    /// A revoke applied.
    pub fn revoked(&mut self, id: i64) {
        self.leases.remove(&id);
    }

    /// A checkpoint applied: the remaining TTL a new leader starts from (0: the whole TTL).
    pub fn checkpointed(&mut self, id: i64, remaining_ms: i64) {
        if let Some(held) = self.leases.get_mut(&id) {
            held.checkpointed_ms = remaining_ms.max(0);
            held.checkpoint_in_flight = false;
        }
    }

    /// This member became leader at `now_ms`: every lease gets its remaining TTL plus `extend_ms`.
    pub fn promote(&mut self, now_ms: u64, extend_ms: u64) {
        self.primary = true;
        let ids: Vec<i64> = self.leases.keys().copied().collect();
        for id in ids {
            let Some(mut held) = self.leases.remove(&id) else { continue };
            let remaining = match held.checkpointed_ms {
                0 => Self::ttl_ms(held.ttl_s),
                ms => u64::try_from(ms).unwrap_or(0),
            };
            held.deadline_ms = Some(now_ms.saturating_add(remaining).saturating_add(extend_ms));
            held.revoke_proposed_ms = None;
            // Whatever an earlier term proposed has applied by now, or never will.
            held.checkpoint_in_flight = false;
            self.schedule_checkpoint(&mut held, now_ms);
            self.leases.insert(id, held);
        }
    }

    /// This member no longer leads: no deadlines.
    pub fn demote(&mut self) {
        self.primary = false;
        for held in self.leases.values_mut() {
            held.deadline_ms = None;
            held.checkpoint_at_ms = None;
            held.revoke_proposed_ms = None;
            held.checkpoint_in_flight = false;
        }
    }

    /// A keep-alive at `now_ms`, once leadership was confirmed after it arrived. `None`: not the
    /// leader, or no such lease, or one past its deadline (etcd answers TTL 0): its revoke may
    /// already be in the log, and a renewal now would be undone by it. (etcd waits for that
    /// revoke to apply and then answers the same.)
    pub fn renew(&mut self, id: i64, now_ms: u64) -> Option<Renewal> {
        if !self.primary {
            return None;
        }
        let interval = self.checkpoint_interval_ms;
        let renews_expired = self.planted == Some(LeaseBug::RenewsExpired);
        let held = self.leases.get_mut(&id)?;
        if held.deadline_ms.is_none_or(|d| d <= now_ms) && !renews_expired {
            return None;
        }
        held.deadline_ms = Some(now_ms.saturating_add(Self::ttl_ms(held.ttl_s)));
        held.revoke_proposed_ms = None;
        let remaining = Self::ttl_ms(held.ttl_s);
        held.checkpoint_at_ms = (remaining > interval).then(|| now_ms + interval);
        // A checkpoint proposed before this renewal and still to apply holds the remaining TTL
        // from before it: it must be cleared too, or a new leader would count from it.
        let clear_checkpoint = match self.planted {
            Some(LeaseBug::RenewKeepsCheckpoint) => false,
            _ => held.checkpointed_ms != 0 || held.checkpoint_in_flight,
        };
        Some(Renewal { ttl_s: held.ttl_s, clear_checkpoint })
    }

    /// The remaining TTL of lease `id` in whole seconds, as etcd's TimeToLive answers (leader
    /// only; `None` when not the leader or no such lease).
    pub fn remaining_s(&self, id: i64, now_ms: u64) -> Option<i64> {
        let held = self.leases.get(&id)?;
        let deadline = held.deadline_ms?;
        // Whole seconds, rounded down as etcd's (`int64(Remaining().Seconds())`).
        Some(i64::try_from(deadline.saturating_sub(now_ms) / 1000).unwrap_or(i64::MAX))
    }

    /// The TTL lease `id` was granted with.
    pub fn granted_ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|h| h.ttl_s)
    }

    /// How many leases there are.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// No lease at all.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Every lease id.
    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// Up to `max` leases past their deadline at `now_ms` whose revoke was not proposed in the
    /// last [`REVOKE_RETRY_MS`]: the caller proposes their revokes (etcd revokes at most 1,000
    /// a second) and tells [`Lessor::revoke_proposed`] of each proposal the core took, so that
    /// one it refused (a leader handing over) is named again at the next round.
    pub fn expired(&self, now_ms: u64, max: usize) -> Vec<i64> {
        self.leases
            .iter()
            .filter(|(_, held)| {
                held.deadline_ms.is_some_and(|d| d <= now_ms)
                    && held.revoke_proposed_ms.is_none_or(|at| now_ms >= at + REVOKE_RETRY_MS)
            })
            .map(|(id, _)| *id)
            .take(max)
            .collect()
    }

    /// The revoke of lease `id` is in the log (see [`Lessor::expired`]).
    pub fn revoke_proposed(&mut self, id: i64, now_ms: u64) {
        if let Some(held) = self.leases.get_mut(&id) {
            held.revoke_proposed_ms = Some(now_ms);
        }
    }

    /// Up to `max` leases whose remaining TTL is due to be recorded: `(id, remaining ms)`.
    pub fn checkpoints_due(&mut self, now_ms: u64, max: usize) -> Vec<(i64, i64)> {
        let interval = self.checkpoint_interval_ms;
        let mut out = Vec::new();
        for (id, held) in &mut self.leases {
            if out.len() >= max {
                break;
            }
            let (Some(at), Some(deadline)) = (held.checkpoint_at_ms, held.deadline_ms) else { continue };
            if at <= now_ms {
                let remaining = deadline.saturating_sub(now_ms);
                // No client was promised more than the TTL from now (its keep-alive was sent
                // before now): what is beyond is a promotion's extension, which a new leader
                // adds again. Recording it would let failovers keep a lease alive for ever.
                let recorded = match self.planted {
                    Some(LeaseBug::CheckpointKeepsExtension) => remaining,
                    _ => remaining.min(Self::ttl_ms(held.ttl_s)),
                };
                out.push((*id, i64::try_from(recorded).unwrap_or(i64::MAX).max(1)));
                held.checkpoint_in_flight = true;
                held.checkpoint_at_ms = (remaining > interval).then(|| now_ms + interval);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: i64, ttl: i64, remaining_ms: i64) -> Lease {
        Lease { id, ttl, remaining_ms }
    }

    #[test]
    fn only_a_leader_counts_time_and_a_new_leader_extends_by_the_election_timeout() {
        let mut l = Lessor::new(DEFAULT_CHECKPOINT_INTERVAL_MS);
        l.load(&[lease(1, 10, 0)], 0, 300);
        assert_eq!(l.expired(1_000_000, 10), Vec::<i64>::new(), "a follower expires nothing");
        assert_eq!(l.renew(1, 0), None, "a follower renews nothing");
        l.promote(5_000, 300);
        assert_eq!(l.remaining_s(1, 5_000), Some(10), "10.3 s, rounded down as etcd's");
        assert_eq!(l.expired(15_299, 10), Vec::<i64>::new());
        assert_eq!(l.expired(15_300, 10), vec![1]);
        assert_eq!(l.expired(15_350, 10), vec![1], "named again while its revoke was not proposed");
        l.revoke_proposed(1, 15_300);
        assert_eq!(l.expired(15_400, 10), Vec::<i64>::new(), "proposed once, then after the retry delay");
        assert_eq!(l.expired(15_300 + REVOKE_RETRY_MS, 10), vec![1]);
        l.demote();
        assert_eq!(l.remaining_s(1, 0), None);
    }

    #[test]
    fn a_renewal_restarts_the_ttl_and_asks_to_clear_a_checkpoint() {
        let mut l = Lessor::new(1_000);
        l.promote(0, 0);
        l.granted(7, 5, 0);
        assert_eq!(l.renew(7, 4_000), Some(Renewal { ttl_s: 5, clear_checkpoint: false }));
        assert_eq!(l.expired(8_999, 10), Vec::<i64>::new());
        assert_eq!(l.checkpoints_due(5_000, 10), vec![(7, 4_000)]);
        assert_eq!(
            l.renew(7, 5_500),
            Some(Renewal { ttl_s: 5, clear_checkpoint: true }),
            "a checkpoint still in flight holds the remainder from before this renewal"
        );
        l.checkpointed(7, 4_000);
        assert_eq!(l.renew(7, 6_000), Some(Renewal { ttl_s: 5, clear_checkpoint: true }));
        l.checkpointed(7, 0);
        assert_eq!(l.renew(7, 6_100), Some(Renewal { ttl_s: 5, clear_checkpoint: false }));
        assert_eq!(l.renew(8, 6_000), None, "no such lease");
        assert_eq!(l.renew(7, 11_100), None, "past its deadline: its revoke may be in the log");
        assert_eq!(l.expired(11_100, 10), vec![7]);
    }

    #[test]
    fn a_new_leader_starts_from_the_checkpointed_remainder() {
        let mut l = Lessor::new(1_000);
        l.load(&[lease(1, 100, 2_500), lease(2, 100, 0)], 0, 0);
        l.promote(10_000, 200);
        assert_eq!(l.expired(12_699, 10), Vec::<i64>::new());
        assert_eq!(l.expired(12_700, 10), vec![1], "2.5 s remaining + 0.2 s extension");
        assert_eq!(l.remaining_s(2, 10_000), Some(100));
    }

    #[test]
    fn a_checkpoint_records_at_most_the_ttl_so_failovers_cannot_keep_a_lease_alive() {
        let mut l = Lessor::new(1_000);
        l.load(&[lease(1, 5, 0)], 0, 0);
        l.promote(0, 2_000);
        assert_eq!(l.checkpoints_due(1_000, 10), vec![(1, 5_000)], "6 s left, but the TTL is 5 s");
    }

    #[test]
    fn expiries_are_proposed_at_most_max_at_a_time() {
        let mut l = Lessor::new(DEFAULT_CHECKPOINT_INTERVAL_MS);
        let leases: Vec<Lease> = (1..=10).map(|id| lease(id, 1, 0)).collect();
        l.load(&leases, 0, 0);
        l.promote(0, 0);
        assert_eq!(l.expired(1_000, 4), vec![1, 2, 3, 4]);
        for id in 1..=4 {
            l.revoke_proposed(id, 1_000);
        }
        assert_eq!(l.expired(1_000, 4), vec![5, 6, 7, 8]);
        l.revoked(1);
        assert_eq!(l.ids().len(), 9);
    }
}

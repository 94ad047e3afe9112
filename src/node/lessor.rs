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
}

impl Lessor {
    pub fn new(checkpoint_interval_ms: u64) -> Lessor {
        Lessor { leases: BTreeMap::new(), primary: false, checkpoint_interval_ms: checkpoint_interval_ms.max(1) }
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
        let mut held =
            Held { ttl_s, checkpointed_ms: 0, deadline_ms: None, checkpoint_at_ms: None, revoke_proposed_ms: None };
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
        }
    }

    /// A keep-alive at `now_ms`, once leadership was confirmed after it arrived. `None`: not the
    /// leader, or no such lease (etcd answers TTL 0).
    pub fn renew(&mut self, id: i64, now_ms: u64) -> Option<Renewal> {
        if !self.primary {
            return None;
        }
        let interval = self.checkpoint_interval_ms;
        let held = self.leases.get_mut(&id)?;
        held.deadline_ms = Some(now_ms.saturating_add(Self::ttl_ms(held.ttl_s)));
        held.revoke_proposed_ms = None;
        let remaining = Self::ttl_ms(held.ttl_s);
        held.checkpoint_at_ms = (remaining > interval).then(|| now_ms + interval);
        Some(Renewal { ttl_s: held.ttl_s, clear_checkpoint: held.checkpointed_ms != 0 })
    }

    /// The remaining TTL of lease `id` in whole seconds, as etcd's TimeToLive answers (leader
    /// only; `None` when not the leader or no such lease).
    pub fn remaining_s(&self, id: i64, now_ms: u64) -> Option<i64> {
        let held = self.leases.get(&id)?;
        let deadline = held.deadline_ms?;
        Some(i64::try_from(deadline.saturating_sub(now_ms).div_ceil(1000)).unwrap_or(i64::MAX))
    }

    /// The TTL lease `id` was granted with.
    pub fn granted_ttl(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|h| h.ttl_s)
    }

    /// Every lease id.
    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// Up to `max` leases past their deadline at `now_ms` whose revoke was not proposed in the
    /// last [`REVOKE_RETRY_MS`]: the caller proposes their revokes (etcd revokes at most 1,000
    /// a second).
    pub fn expired(&mut self, now_ms: u64, max: usize) -> Vec<i64> {
        let mut out = Vec::new();
        for (id, held) in &mut self.leases {
            if out.len() >= max {
                break;
            }
            let due = held.deadline_ms.is_some_and(|d| d <= now_ms);
            let retry = held.revoke_proposed_ms.is_none_or(|at| now_ms >= at + REVOKE_RETRY_MS);
            if due && retry {
                held.revoke_proposed_ms = Some(now_ms);
                out.push(*id);
            }
        }
        out
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
                out.push((*id, i64::try_from(remaining).unwrap_or(i64::MAX).max(1)));
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
        assert_eq!(l.remaining_s(1, 5_000), Some(11));
        assert_eq!(l.expired(15_299, 10), Vec::<i64>::new());
        assert_eq!(l.expired(15_300, 10), vec![1]);
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
        l.checkpointed(7, 4_000);
        assert_eq!(l.renew(7, 6_000), Some(Renewal { ttl_s: 5, clear_checkpoint: true }));
        assert_eq!(l.renew(8, 6_000), None, "no such lease");
    }

    #[test]
    fn a_new_leader_starts_from_the_checkpointed_remainder() {
        let mut l = Lessor::new(1_000);
        l.load(&[lease(1, 100, 2_500), lease(2, 100, 0)], 0, 0);
        l.promote(10_000, 200);
        assert_eq!(l.expired(12_699, 10), Vec::<i64>::new());
        assert_eq!(l.expired(12_700, 10), vec![1], "2.5 s remaining + 0.2 s extension");
        assert_eq!(l.remaining_s(2, 10_000), Some(101));
    }

    #[test]
    fn expiries_are_proposed_at_most_max_at_a_time() {
        let mut l = Lessor::new(DEFAULT_CHECKPOINT_INTERVAL_MS);
        let leases: Vec<Lease> = (1..=10).map(|id| lease(id, 1, 0)).collect();
        l.load(&leases, 0, 0);
        l.promote(0, 0);
        assert_eq!(l.expired(1_000, 4), vec![1, 2, 3, 4]);
        assert_eq!(l.expired(1_000, 4), vec![5, 6, 7, 8]);
        l.revoked(1);
        assert_eq!(l.ids().len(), 9);
    }
}

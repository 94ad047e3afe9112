//! What this member saw happen, for the live view (`api::ui`): elections it started and their
//! cause, leaders it learned of, membership changes it applied, snapshots it sent or installed,
//! storage errors, and peers it could not reach. Each member keeps its own, newest last, in a
//! ring of `CAPACITY` events; the view merges the members' timelines. Recording takes a short
//! lock and never blocks on I/O, so the Raft loop may record.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::raft::{Campaign, NodeId, Term};

use super::shared::lock;

/// The events a member keeps: enough for the terms of a long incident, bounded whatever
/// happens.
pub const CAPACITY: usize = 256;

/// One thing a member saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// This member's sequence number of the event, from 1: a reader asks for what is newer.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The term this member was in.
    pub term: Term,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Member ids are hexadecimal in the JSON, as everywhere in the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum EventKind {
    /// This member started a campaign: `cause` is `pre_vote` (a round that asks whether it
    /// could win, after its election timeout), `election` (the real election: after a won
    /// pre-vote, or on a timeout when pre-vote is off) or `transfer` (a leader handed over).
    Campaign {
        cause: &'static str,
        for_term: Term,
        campaigns: u64,
    },
    /// This member learned who leads `term` (itself included).
    Leader {
        leader: String,
    },
    /// The leader this member followed is no longer known (it stepped down, or a higher term
    /// began).
    LeaderLost,
    /// A membership change applied: `change` is add_learner, add_voter, promote or remove.
    Membership {
        change: &'static str,
        member: String,
    },
    /// A leader transfer this member (as leader) was asked for.
    Transfer {
        to: String,
    },
    /// A snapshot sent to a follower behind the leader's log, or installed here.
    SnapshotSent {
        to: String,
    },
    SnapshotInstalled {
        index: u64,
    },
    /// An error condition began (`message`) or ended (`message` None).
    Error {
        condition: String,
        message: Option<String>,
    },
    /// A peer stopped answering, or answers again.
    PeerUnreachable {
        peer: String,
        error: String,
    },
    PeerReachable {
        peer: String,
    },
}

pub fn cause(campaign: Campaign, pre_vote: bool) -> &'static str {
    match campaign {
        Campaign::PreVote => "pre_vote",
        Campaign::Election if pre_vote => "election_after_pre_vote",
        Campaign::Election => "election_on_timeout",
        Campaign::Transfer => "transfer",
    }
}

/// A member id as the API writes it.
pub fn member(id: NodeId) -> String {
    format!("{id:x}")
}

#[derive(Default)]
pub struct Timeline {
    inner: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    next_seq: u64,
    events: VecDeque<Event>,
}

impl Timeline {
    pub fn record(&self, term: Term, kind: EventKind) {
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut ring = lock(&self.inner);
        ring.next_seq += 1;
        let seq = ring.next_seq;
        if ring.events.len() == CAPACITY {
            ring.events.pop_front();
        }
        ring.events.push_back(Event { seq, at_ms, term, kind });
    }

    /// The events after `seq` (all of them for 0), oldest first.
    pub fn since(&self, seq: u64) -> Vec<Event> {
        let ring = lock(&self.inner);
        ring.events.iter().filter(|e| e.seq > seq).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_events_numbered_and_answers_what_is_newer() {
        let timeline = Timeline::default();
        for term in 1..=(CAPACITY as u64 + 10) {
            timeline.record(term, EventKind::Leader { leader: member(term) });
        }
        let all = timeline.since(0);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all.first().map(|e| (e.seq, e.term)), Some((11, 11)));
        assert_eq!(all.last().map(|e| e.seq), Some(CAPACITY as u64 + 10));
        let newer = timeline.since(CAPACITY as u64 + 8);
        assert_eq!(newer.iter().map(|e| e.seq).collect::<Vec<_>>(), [CAPACITY as u64 + 9, CAPACITY as u64 + 10]);
    }

    #[test]
    fn events_are_json_with_their_kind_and_hex_member_ids() {
        let timeline = Timeline::default();
        timeline.record(4, EventKind::Campaign { cause: cause(Campaign::Election, true), for_term: 5, campaigns: 2 });
        timeline.record(5, EventKind::Membership { change: "remove", member: member(0xab) });
        let json = serde_json::to_value(timeline.since(0)).unwrap();
        assert_eq!(json[0]["kind"], "campaign");
        assert_eq!(json[0]["cause"], "election_after_pre_vote");
        assert_eq!(json[0]["forTerm"], 5);
        assert!(json[0]["atMs"].as_u64().is_some_and(|ms| ms > 0));
        assert_eq!(json[1]["kind"], "membership");
        assert_eq!(json[1]["member"], "ab");
        assert_eq!(json[1]["term"], 5);
    }
}

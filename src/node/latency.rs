//! Where a request's time goes (issue 19): histograms of the write path and of linearizable
//! reads, always on, served in `/metrics` and read back by `kuberaft bench`.
//!
//! **Writes**, on the member that proposes them (the leader; a follower's writes reach it as
//! placements, `node::forward`, measured up to `applied`: the follower answers them from its
//! own apply): each point is the time since the write was
//! *received*, that is handed to the node (`NodeHandle::propose`, after its request was
//! read and decoded), so the points of one write can be compared and the gaps between them are
//! the stages:
//! - `proposed`: the Raft loop took it and appended it to its log (a thread hop and the queue);
//! - `sent`: the first batch carrying its entry left for a follower (the transport's task);
//! - `persisted`: the leader's own write of it returned (the WAL's fsync);
//! - `acknowledged`: the first follower's acknowledgement covering it reached the Raft loop
//!   (the follower's side of that is `kuberaft_append_seconds`, on the follower);
//! - `committed`: the commit index covered it;
//! - `applied`: the state machine applied it and flushed the batch;
//! - `replied`: the handler that waits for it woke with the outcome.
//!
//! What a client measures beyond `replied` is the HTTP or gRPC side and the network.
//!
//! **A follower's appends** (`kuberaft_append_seconds`): from the Raft loop taking an append
//! with entries to `persisted` (its fsync returned) and `acknowledged` (its answer handed to the
//! transport), measured per Ready from the first such append it holds.
//!
//! **A follower's writes** (`kuberaft_placed_seconds`), those it places through the leader
//! (`node::forward`): from the follower taking the write to `placed` (the leader's answer with
//! the write's index and term arrived) and `replied` (this member's own apply gave its outcome).
//! The leader's `kuberaft_write_seconds` times the same writes from their arrival there.
//!
//! **Linearizable reads** (`kuberaft_read_seconds`): from the read's start to `index` (the read
//! index confirmed by a quorum: the leader's ReadIndex round, or a follower's request to the
//! leader), `applied` (this member applied that far) and `replied` (the answer was built).
//!
//! The stamps of writes in flight sit in a map bounded at `MAX_IN_FLIGHT` (the oldest go first:
//! a write whose stamps were dropped is simply not measured); the loop stamps a range of
//! indexes at once, so the cost is one short lock per Ready and per sent batch.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::base::histogram::Histogram;
use crate::raft::Index;

/// How many writes in flight keep their stamps.
pub const MAX_IN_FLIGHT: usize = 65_536;

/// The points of a write, in the order of `WritePoint as usize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePoint {
    Proposed,
    Sent,
    Persisted,
    Acknowledged,
    Committed,
    Applied,
    Replied,
}

impl WritePoint {
    pub const ALL: [WritePoint; 7] = [
        WritePoint::Proposed,
        WritePoint::Sent,
        WritePoint::Persisted,
        WritePoint::Acknowledged,
        WritePoint::Committed,
        WritePoint::Applied,
        WritePoint::Replied,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WritePoint::Proposed => "proposed",
            WritePoint::Sent => "sent",
            WritePoint::Persisted => "persisted",
            WritePoint::Acknowledged => "acknowledged",
            WritePoint::Committed => "committed",
            WritePoint::Applied => "applied",
            WritePoint::Replied => "replied",
        }
    }
}

/// The points of a follower's appends.
pub const APPEND_POINTS: [&str; 2] = ["persisted", "acknowledged"];
/// The points of a follower's write placed through the leader.
pub const PLACED_POINTS: [&str; 2] = ["placed", "replied"];
/// The points of a linearizable read.
pub const READ_POINTS: [&str; 3] = ["index", "applied", "replied"];

/// A write in flight: when it was received, and which points it passed (the `proposed` point
/// is stamped when the entry is made).
struct Stamps {
    received: Instant,
    passed: u8,
}

#[derive(Default)]
pub struct Latency {
    in_flight: Mutex<BTreeMap<Index, Stamps>>,
    writes: [Histogram; 7],
    appends: [Histogram; 2],
    placed: [Histogram; 2],
    reads: [Histogram; 3],
}

impl Latency {
    /// The Raft loop appended a write received at `received` as entry `index`.
    pub fn proposed(&self, index: Index, received: Instant) {
        let now = Instant::now();
        self.writes[WritePoint::Proposed as usize].observe(now.saturating_duration_since(received));
        let mut in_flight = crate::node::shared::lock(&self.in_flight);
        in_flight.insert(index, Stamps { received, passed: 1 << WritePoint::Proposed as u8 });
        while in_flight.len() > MAX_IN_FLIGHT {
            in_flight.pop_first();
        }
    }

    /// Every write in flight up to entry `upto` passed `point` now (those that passed it
    /// already keep their first time).
    pub fn passed(&self, point: WritePoint, upto: Index) {
        let now = Instant::now();
        let bit = 1u8 << point as u8;
        let mut in_flight = crate::node::shared::lock(&self.in_flight);
        for stamps in in_flight.range_mut(..=upto).map(|(_, s)| s).filter(|s| s.passed & bit == 0) {
            stamps.passed |= bit;
            self.writes[point as usize].observe(now.saturating_duration_since(stamps.received));
        }
    }

    /// The write of entry `index` was answered: it leaves the map. Its `replied` point is the
    /// handler's (`replied`).
    pub fn answered(&self, index: Index) {
        crate::node::shared::lock(&self.in_flight).remove(&index);
    }

    /// Writes below `index` that were never answered (overwritten by a new leader) leave too.
    pub fn forget_through(&self, index: Index) {
        let mut in_flight = crate::node::shared::lock(&self.in_flight);
        while in_flight.first_key_value().is_some_and(|(i, _)| *i <= index) {
            in_flight.pop_first();
        }
    }

    /// The handler of a write received at `received` has its outcome.
    pub fn replied(&self, received: Instant) {
        self.writes[WritePoint::Replied as usize].observe(received.elapsed());
    }

    /// A follower's appends taken at `since` were persisted (`point` 0) or acknowledged (1).
    pub fn append(&self, point: usize, since: Instant) {
        if let Some(h) = self.appends.get(point) {
            h.observe(since.elapsed());
        }
    }

    /// A follower's write taken at `since` and placed through the leader was placed (`point` 0)
    /// or answered from this member's apply (1).
    pub fn placed(&self, point: usize, since: Instant) {
        if let Some(h) = self.placed.get(point) {
            h.observe(since.elapsed());
        }
    }

    /// A linearizable read started at `started` reached point `point` of `READ_POINTS`.
    pub fn read(&self, point: usize, started: Instant) {
        if let Some(h) = self.reads.get(point) {
            h.observe(started.elapsed());
        }
    }

    /// How many writes passed `point` (tests).
    pub fn write_count(&self, point: WritePoint) -> u64 {
        self.writes[point as usize].count()
    }

    /// How many of a follower's placed writes passed point `point` of `PLACED_POINTS` (tests).
    pub fn placed_count(&self, point: usize) -> u64 {
        self.placed.get(point).map_or(0, Histogram::count)
    }

    /// The four histogram families in Prometheus' text format.
    pub fn render(&self, out: &mut String) {
        let families: [(&str, &str, &[&str], &[Histogram]); 4] = [
            (
                "kuberaft_write_seconds",
                "Time from a write's receipt on the member that proposes it to each point of its path.",
                &WritePoint::ALL.map(WritePoint::name),
                &self.writes,
            ),
            (
                "kuberaft_append_seconds",
                "Time from a follower taking an append with entries to its fsync and its acknowledgement.",
                &APPEND_POINTS,
                &self.appends,
            ),
            (
                "kuberaft_placed_seconds",
                "Time from a follower taking a write it places through the leader to the leader's answer with its place and to its outcome from this member's apply.",
                &PLACED_POINTS,
                &self.placed,
            ),
            (
                "kuberaft_read_seconds",
                "Time from a linearizable read's start to its read index, its apply and its answer.",
                &READ_POINTS,
                &self.reads,
            ),
        ];
        for (name, help, points, histograms) in families {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
            for (point, histogram) in points.iter().zip(histograms) {
                histogram.render(out, name, &format!("point=\"{point}\""));
            }
        }
    }
}

/// When a follower's Raft loop took the first append with entries that is not yet persisted.
#[derive(Default)]
pub struct AppendClock(Option<Instant>);

impl AppendClock {
    pub fn took_append(&mut self) {
        self.0.get_or_insert_with(Instant::now);
    }

    pub fn since(&self) -> Option<Instant> {
        self.0
    }

    pub fn reset(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::histogram::Parsed;
    use std::time::Duration;

    #[test]
    fn each_write_is_measured_once_per_point_from_its_receipt() {
        let latency = Latency::default();
        let received = Instant::now() - Duration::from_millis(2);
        for index in 10..20 {
            latency.proposed(index, received);
        }
        latency.passed(WritePoint::Sent, 14);
        latency.passed(WritePoint::Sent, 19);
        latency.passed(WritePoint::Sent, 19);
        latency.passed(WritePoint::Persisted, 12);
        latency.passed(WritePoint::Committed, 5);
        assert_eq!(latency.write_count(WritePoint::Proposed), 10);
        assert_eq!(latency.write_count(WritePoint::Sent), 10, "stamped once each");
        assert_eq!(latency.write_count(WritePoint::Persisted), 3);
        assert_eq!(latency.write_count(WritePoint::Committed), 0, "nothing in flight up to 5");
        for index in 10..15 {
            latency.answered(index);
        }
        latency.forget_through(16);
        latency.passed(WritePoint::Applied, 30);
        assert_eq!(latency.write_count(WritePoint::Applied), 3, "17, 18 and 19 are left");
        latency.replied(received);
        let mut text = String::new();
        latency.render(&mut text);
        let writes = Parsed::all(&text, "kuberaft_write_seconds", "point");
        assert_eq!(writes.len(), 7);
        assert_eq!(writes["sent"].count, 10.0);
        assert!(writes["replied"].mean().is_some_and(|m| m >= 0.002), "from the receipt");
        assert_eq!(Parsed::all(&text, "kuberaft_append_seconds", "point").len(), 2);
        assert_eq!(Parsed::all(&text, "kuberaft_read_seconds", "point").len(), 3);
    }

    #[test]
    fn writes_in_flight_are_bounded() {
        let latency = Latency::default();
        let now = Instant::now();
        for index in 0..(MAX_IN_FLIGHT as u64 + 10) {
            latency.proposed(index, now);
        }
        assert_eq!(crate::node::shared::lock(&latency.in_flight).len(), MAX_IN_FLIGHT);
        latency.passed(WritePoint::Committed, 9);
        assert_eq!(latency.write_count(WritePoint::Committed), 0, "the oldest were dropped");
    }
}

//! The power-cut harness: a realistic workload runs through `Storage` on the simulated disk
//! (`store::simfs`), power is cut before every disk operation with many outcomes each, and
//! the real recovery code opens what survived. It must open (never `Corrupt`), hold everything
//! whose `persist`/`compact` returned with an fsync, and hold nothing else than a state the
//! workload passed through (no gaps, no invented entries).
//!
//! Sizes (env): KUBERAFT_POWER_CUT_WORKLOADS (default 32), KUBERAFT_POWER_CUT_CALLS (calls per
//! workload, default 40), KUBERAFT_POWER_CUT_OUTCOMES (outcomes per cut point, default 12).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::base::rng::Rng;
use crate::raft::{ConfState, Entry, EntryPayload, HardState, Index, Snapshot, SnapshotMeta, Term};
use crate::store::simfs::{CutMode, CutStats, Disk, SimFs};

const DIR: &str = "/data";

fn env_count(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name}={text} is not a number")),
        Err(_) => default,
    }
}

#[derive(Clone, Debug)]
enum Call {
    Persist { hard_state: Option<HardState>, snapshot: Option<Snapshot>, entries: Vec<Entry> },
    Compact(Snapshot),
}

impl Call {
    fn snapshot(&self) -> Option<&Snapshot> {
        match self {
            Call::Persist { snapshot, .. } => snapshot.as_ref(),
            Call::Compact(snapshot) => Some(snapshot),
        }
    }
}

fn last_index(state: &DurableState) -> Index {
    state.entries.last().map(|e| e.index).or(state.snapshot.as_ref().map(|s| s.meta.index)).unwrap_or(0)
}

fn term_at(state: &DurableState, index: Index) -> Option<Term> {
    state.entries.iter().find(|e| e.index == index).map(|e| e.term)
}

/// The model of a snapshot taking effect: entries it covers go; the rest stay only if the log
/// holds the snapshot's index with its term (or starts after it).
fn model_snapshot(state: &DurableState, snapshot: &Snapshot) -> DurableState {
    let mut next = state.clone();
    let meta = &snapshot.meta;
    let keeps_log = match term_at(state, meta.index) {
        Some(term) => term == meta.term,
        None => state.entries.first().is_some_and(|e| e.index > meta.index),
    };
    if keeps_log {
        next.entries.retain(|e| e.index > meta.index);
    } else {
        next.entries.clear();
    }
    next.snapshot = Some(snapshot.clone());
    next
}

fn model_apply(state: &DurableState, call: &Call) -> DurableState {
    match call {
        Call::Persist { hard_state, snapshot, entries } => {
            let mut next = match snapshot {
                Some(snapshot) => model_snapshot(state, snapshot),
                None => state.clone(),
            };
            if let Some(first) = entries.first() {
                next.entries.retain(|e| e.index < first.index);
                next.entries.extend(entries.iter().cloned());
            }
            if let Some(hs) = hard_state {
                next.hard_state = *hs;
            }
            next
        }
        Call::Compact(snapshot) => model_snapshot(state, snapshot),
    }
}

/// Draws a workload like the Raft loop's: appends with and without hard-state changes,
/// commit-only records, new terms and votes, conflicting suffixes, compactions and snapshots
/// from a leader.
struct Workload {
    rng: Rng,
    model: DurableState,
    term: Term,
    serial: u64,
}

impl Workload {
    fn entry(&mut self, index: Index) -> Entry {
        self.serial += 1;
        let len = self.rng.range(0, 120) as usize;
        let mut payload = format!("entry {index} term {} #{} ", self.term, self.serial).into_bytes();
        payload.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(self.serial as u8)));
        Entry { index, term: self.term, payload: EntryPayload::Command(Bytes::from(payload)) }
    }

    fn snapshot(&mut self, index: Index, term: Term) -> Snapshot {
        self.serial += 1;
        let conf = ConfState { voters: [1, 2, 3].into(), learners: Default::default() };
        let data = Bytes::from(format!("state machine at {index} #{}", self.serial).repeat(1 + index as usize % 4));
        Snapshot { meta: SnapshotMeta { index, term, conf }, data }
    }

    fn hard_state(&self, commit: Index) -> HardState {
        HardState { term: self.term, vote: self.model.hard_state.vote, commit }
    }

    fn next_call(&mut self) -> Call {
        let last = last_index(&self.model);
        let snap_index = self.model.snapshot.as_ref().map_or(0, |s| s.meta.index);
        let commit = self.model.hard_state.commit;
        let call = match self.rng.range(0, 100) {
            // A commit-only record: no fsync.
            0..=29 if commit < last => {
                let commit = self.rng.range(commit + 1, last + 1);
                Call::Persist { hard_state: Some(self.hard_state(commit)), snapshot: None, entries: Vec::new() }
            }
            // A new term, with or without a vote.
            30..=37 => {
                self.term += 1;
                let vote = if self.rng.chance(0.5) { Some(self.rng.range(1, 4)) } else { None };
                let hs = HardState { term: self.term, vote, commit };
                Call::Persist { hard_state: Some(hs), snapshot: None, entries: Vec::new() }
            }
            // A new leader's entries replace an uncommitted suffix.
            38..=47 if last > commit.max(snap_index) => {
                self.term += 1;
                let first = self.rng.range(commit.max(snap_index) + 1, last + 1);
                let count = self.rng.range(1, 4);
                let entries = (first..first + count).map(|i| self.entry(i)).collect();
                let hs = HardState { term: self.term, vote: None, commit };
                Call::Persist { hard_state: Some(hs), snapshot: None, entries }
            }
            // A local snapshot of committed state.
            48..=57 if commit > snap_index && term_at(&self.model, commit).is_some() => {
                let index = self.rng.range(snap_index + 1, commit + 1);
                let term = term_at(&self.model, index).unwrap_or(self.term);
                Call::Compact(self.snapshot(index, term))
            }
            // A snapshot from the leader: matching the log (later entries stay) or beyond it (the log goes).
            58..=63 => {
                let floor = snap_index.max(commit);
                let matching: Vec<(Index, Term)> =
                    self.model.entries.iter().filter(|e| e.index > floor).map(|e| (e.index, e.term)).collect();
                let (index, term) = if !matching.is_empty() && self.rng.chance(0.5) {
                    matching[self.rng.range(0, matching.len() as u64) as usize]
                } else {
                    (last + 1 + self.rng.range(0, 3), self.term)
                };
                let snapshot = self.snapshot(index, term);
                let count = self.rng.range(0, 3);
                let entries = (index + 1..index + 1 + count).map(|i| self.entry(i)).collect();
                let hs = self.hard_state(index.max(commit));
                Call::Persist { hard_state: Some(hs), snapshot: Some(snapshot), entries }
            }
            // Appends, with a hard state or without.
            _ => {
                let count = self.rng.range(1, 5);
                let entries = (last + 1..last + 1 + count).map(|i| self.entry(i)).collect();
                let new_commit = self.rng.range(commit, last + 1);
                let hard_state = if self.rng.chance(0.5) { Some(self.hard_state(new_commit)) } else { None };
                Call::Persist { hard_state, snapshot: None, entries }
            }
        };
        self.model = model_apply(&self.model, &call);
        call
    }
}

/// One workload's run: the disk before every operation, and the model after every call.
struct Run {
    cuts: Vec<(u64, Disk)>,
    /// `states[j]`: the model after call j (`states[0]`: empty).
    states: Vec<DurableState>,
    /// `synced[j]`: call j returned with everything up to it durable.
    synced: Vec<bool>,
    calls: Vec<Call>,
}

fn run_workload(seed: u64, count: u64) -> Run {
    let fs = SimFs::default();
    fs.record_cuts();
    fs.set_tag(0);
    let (mut storage, _) = Storage::open_with(Arc::new(fs.clone()), Path::new(DIR)).expect("open a new directory");
    let mut workload = Workload { rng: Rng::new(seed), model: DurableState::default(), term: 1, serial: 0 };
    storage.segment_roll_bytes = [300, 700, 2000][(seed % 3) as usize];
    let mut run = Run { cuts: Vec::new(), states: vec![DurableState::default()], synced: vec![true], calls: vec![] };
    for tag in 1..=count {
        fs.set_tag(tag);
        let call = workload.next_call();
        // What the contract says must be durable when the call returns, not what storage reports.
        let previous = run.states.last().map(|s| s.hard_state).unwrap_or_default();
        let must_sync = match &call {
            Call::Persist { hard_state, snapshot, entries } => {
                snapshot.is_some()
                    || !entries.is_empty()
                    || hard_state.is_some_and(|hs| (hs.term, hs.vote) != (previous.term, previous.vote))
            }
            Call::Compact(_) => true,
        };
        match &call {
            Call::Persist { hard_state, snapshot, entries } => {
                storage.persist(hard_state.as_ref(), snapshot.as_ref(), entries).expect("persist");
                assert_eq!(storage.last_persist_synced(), must_sync, "{call:?}");
            }
            Call::Compact(snapshot) => storage.compact(snapshot).expect("compact"),
        }
        let synced = must_sync;
        run.states.push(workload.model.clone());
        run.synced.push(synced);
        run.calls.push(call);
    }
    fs.set_tag(count + 1);
    drop(storage);
    run.cuts = fs.take_cuts();
    run
}

impl Run {
    /// Every state recovery may find after a cut made while call `tag` ran (`tag` past the
    /// last call: after the workload). At least the last call that returned synced; at most
    /// the running one; a running call's snapshot file may be durable without its record.
    fn allowed(&self, tag: u64) -> (usize, Vec<DurableState>) {
        let running = tag as usize;
        let returned = running.saturating_sub(1).min(self.states.len() - 1);
        let durable = (0..=returned).rev().find(|&j| self.synced[j]).unwrap_or(0);
        let newest = running.min(self.states.len() - 1);
        let mut allowed: Vec<DurableState> = self.states[durable..=newest].to_vec();
        if let Some(snapshot) = self.calls.get(running.wrapping_sub(1)).and_then(Call::snapshot) {
            allowed.extend(self.states[durable..=returned].iter().map(|s| model_snapshot(s, snapshot)));
        }
        (durable, allowed)
    }
}

fn describe(state: &DurableState) -> String {
    format!(
        "hard state {:?}, snapshot {:?}, entries {:?}",
        state.hard_state,
        state.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)),
        state.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>()
    )
}

/// Opens the image; checks it against the allowed states; then writes one more synced entry,
/// cuts power again losing everything unsynced, and checks that the entry is there.
fn recover_and_check(image: Disk, allowed: &[DurableState], context: &dyn Fn() -> String) -> usize {
    let fs = SimFs::with_disk(image);
    let (mut storage, state) = match Storage::open_with(Arc::new(fs.clone()), Path::new(DIR)) {
        Ok(opened) => opened,
        Err(e) => panic!("recovery refused after a power cut: {e}\n{}", context()),
    };
    if !allowed.contains(&state) {
        let allowed: Vec<String> = allowed.iter().map(describe).collect();
        panic!(
            "recovered a state the workload never acknowledged or lost a durable one:\n  recovered {}\n  allowed:\n    {}\n{}",
            describe(&state),
            allowed.join("\n    "),
            context()
        );
    }
    let cut_past_damage = storage.recovered_past_damage;

    // The recovered log takes new writes, and they are durable.
    let next = last_index(&state) + 1;
    let term = state.hard_state.term.max(state.entries.last().map_or(1, |e| e.term));
    let entry = Entry { index: next, term, payload: EntryPayload::Command(Bytes::from_static(b"after recovery")) };
    let hs = HardState { term, ..state.hard_state };
    storage.persist(Some(&hs), None, std::slice::from_ref(&entry)).expect("persist after recovery");
    drop(storage);
    let image = fs.disk().power_cut(CutMode::LoseAll, &mut CutStats::default());
    let (_, again) = match Storage::open_with(Arc::new(SimFs::with_disk(image)), Path::new(DIR)) {
        Ok(opened) => opened,
        Err(e) => panic!("second recovery refused: {e}\n{}", context()),
    };
    let mut expected = state;
    expected.entries.push(entry);
    expected.hard_state = hs;
    assert_eq!(describe(&again), describe(&expected), "after writing on the recovered log\n{}", context());
    assert_eq!(again, expected);
    cut_past_damage
}

#[test]
fn every_power_cut_recovers_every_acknowledged_write() {
    let workloads = env_count("KUBERAFT_POWER_CUT_WORKLOADS", 32);
    let calls = env_count("KUBERAFT_POWER_CUT_CALLS", 40);
    let outcomes = env_count("KUBERAFT_POWER_CUT_OUTCOMES", 12).max(2);
    let mut stats = CutStats::default();
    let (mut cut_points, mut recoveries, mut past_damage, mut behind_acked) = (0u64, 0u64, 0usize, 0u64);
    for seed in 0..workloads {
        let run = run_workload(seed, calls);
        for (cut, (tag, disk)) in run.cuts.iter().enumerate() {
            cut_points += 1;
            let (durable, allowed) = run.allowed(*tag);
            for outcome in 0..outcomes {
                let mode = match outcome {
                    0 => CutMode::KeepAll,
                    1 => CutMode::LoseAll,
                    n => CutMode::Random(seed << 40 | (cut as u64) << 16 | n),
                };
                let image = disk.power_cut(mode, &mut stats);
                let context = || {
                    format!(
                        "workload seed {seed}, cut point {cut} (during call {tag}: {:?}), outcome {outcome} ({mode:?}); \
                         last durable call {durable}; files at the cut: {:?}",
                        run.calls.get((*tag as usize).wrapping_sub(1)).map(|c| match c {
                            Call::Persist { hard_state, snapshot, entries } => format!(
                                "persist hs {hard_state:?} snapshot {:?} entries {:?}",
                                snapshot.as_ref().map(|s| s.meta.index),
                                entries.iter().map(|e| e.index).collect::<Vec<_>>()
                            ),
                            Call::Compact(s) => format!("compact at {}", s.meta.index),
                        }),
                        disk.listing()
                    )
                };
                past_damage += recover_and_check(image, &allowed, &context);
                recoveries += 1;
            }
            if *tag as usize > durable + 1 {
                behind_acked += 1;
            }
        }
    }
    println!(
        "power-cut harness: {workloads} workloads of {calls} calls, {cut_points} cut points, {recoveries} outcomes, \
         all recovered; unsynced writes kept {}, lost {}, torn {}; directory changes kept {}, lost {}; \
         {past_damage} recoveries cut the last segment at a damaged record with intact records after it; \
         {behind_acked} cut points had unsynced commit-only records outstanding",
        stats.writes_kept, stats.writes_lost, stats.writes_torn, stats.dir_ops_kept, stats.dir_ops_lost
    );
    assert!(stats.writes_torn > 0 && stats.writes_lost > 0 && stats.dir_ops_lost > 0, "{stats:?}");
    assert!(past_damage > 0, "no cut left a damaged record before an intact one: the harness misses the hard case");
}

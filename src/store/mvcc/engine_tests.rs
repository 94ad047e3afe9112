//! Tests of the on-disk engine: a model-based property test against `model::Model` (the
//! oracle), and tests of what the model cannot see: batches, durability, reopening, crashes,
//! damaged records, concurrent readers, and snapshot streams.

use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{ReadableDatabase, ReadableTableMetadata, StorageBackend};

use super::engine::{live_row, split_row, Place, Record, Rows, HIST, MAX_REVISION};
use super::model::Model;
use super::*;
use crate::base::rng::Rng;
use crate::store::StoreError;

// ----- helpers -----

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest { key: b(k), value: b(v), ..Default::default() }
}

fn all_at(rev: Revision) -> RangeRequest {
    RangeRequest { key: b("\0"), range_end: b("\0"), revision: rev, ..Default::default() }
}

fn one(k: &str) -> RangeRequest {
    RangeRequest { key: b(k), ..Default::default() }
}

/// A read that must not fail in storage.
fn read(store: &MvccStore, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
    match store.range(req) {
        Ok(r) => Ok(r),
        Err(ReadError::Mvcc(e)) => Err(e),
        Err(ReadError::Storage(e)) => panic!("storage failed: {e}"),
    }
}

fn put(store: &MvccStore, k: &str, v: &str, durable: bool) -> Revision {
    let mut batch = store.begin().unwrap();
    let r = batch.put(&put_req(k, v)).unwrap().unwrap();
    batch.commit(durable).unwrap();
    r.revision
}

/// The revisions the `hist` table holds for `key`, oldest first.
fn stored_revisions<T: Rows>(rows: &T, key: &[u8]) -> Vec<Revision> {
    let mut found = Vec::new();
    for row in rows.iter().unwrap() {
        let (pos, value) = row.unwrap();
        if split_row(value.value()).unwrap().0 == key {
            found.push(pos.value().0);
        }
    }
    found
}

/// `hist` and the key index agree: the index built from the rows is the one the store keeps.
fn check_store_tables(store: &MvccStore) {
    store.check_index();
}

// ----- the generator -----

/// Short keys, and keys on both sides of the index's inline length (`index::INLINE`, 22 bytes),
/// ordered among the others: 22, 23 and 31 `a`s.
const KEYS: [&[u8]; 9] = [
    b"a",
    b"a\0",
    b"aaaaaaaaaaaaaaaaaaaaaa",
    b"aaaaaaaaaaaaaaaaaaaaaaa",
    b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    b"ab",
    b"b",
    b"c",
    b"\xff",
];
const VALUES: [&[u8]; 5] = [b"", b"x", b"y", b"zz", b"x0"];

/// etcd's `GetPrefixRangeEnd`.
fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

struct Gen {
    rng: Rng,
}

impl Gen {
    fn below(&mut self, n: u64) -> u64 {
        self.rng.range(0, n)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.chance(p)
    }

    fn key(&mut self) -> Vec<u8> {
        if self.chance(0.01) {
            return Vec::new();
        }
        KEYS[self.below(KEYS.len() as u64) as usize].to_vec()
    }

    fn value(&mut self) -> Vec<u8> {
        VALUES[self.below(VALUES.len() as u64) as usize].to_vec()
    }

    /// `key` and `range_end`: one key, a prefix, from a key on, everything, or between two keys.
    fn span(&mut self) -> (Vec<u8>, Vec<u8>) {
        let key = self.key();
        match self.below(10) {
            0..=3 => (key, Vec::new()),
            4 => {
                let end = prefix_end(&key);
                (key, end)
            }
            5 => (key, vec![0]),
            6 => (vec![0], vec![0]),
            _ => {
                let end = self.key();
                (key, end)
            }
        }
    }

    /// A revision near the interesting ones: 0, negative, around the compacted and current ones.
    fn rev(&mut self, m: &Model) -> Revision {
        let (cur, comp) = (m.revision(), m.compacted_revision());
        match self.below(8) {
            0 => 0,
            1 => -1 - self.below(2) as i64,
            2 => comp - 1 + self.below(3) as i64,
            3 => cur,
            4 => cur + 1 + self.below(2) as i64,
            _ => 1 + self.below(cur as u64 + 1) as i64,
        }
    }

    fn range(&mut self, m: &Model) -> RangeRequest {
        let (key, range_end) = self.span();
        let filter = |g: &mut Gen| if g.chance(0.8) { 0 } else { g.rev(m) };
        RangeRequest {
            key,
            range_end,
            limit: match self.below(6) {
                0 => -1,
                1..=2 => 0,
                _ => self.below(4) as i64 + 1,
            },
            revision: if self.chance(0.5) { 0 } else { self.rev(m) },
            sort_order: [SortOrder::None, SortOrder::Ascend, SortOrder::Descend][self.below(3) as usize],
            sort_target: [SortTarget::Key, SortTarget::Version, SortTarget::Create, SortTarget::Mod, SortTarget::Value]
                [self.below(5) as usize],
            serializable: self.chance(0.5),
            keys_only: self.chance(0.2),
            count_only: self.chance(0.15),
            min_mod_revision: filter(self),
            max_mod_revision: filter(self),
            min_create_revision: filter(self),
            max_create_revision: filter(self),
        }
    }

    fn put(&mut self) -> PutRequest {
        let ignore_value = self.chance(0.15);
        let ignore_lease = self.chance(0.15);
        PutRequest {
            key: self.key(),
            value: if ignore_value && self.chance(0.9) { Vec::new() } else { self.value() },
            lease: if ignore_lease && self.chance(0.9) || self.chance(0.6) { 0 } else { self.below(3) as i64 + 1 },
            prev_kv: self.chance(0.5),
            ignore_value,
            ignore_lease,
        }
    }

    fn delete(&mut self) -> DeleteRangeRequest {
        let (key, range_end) = self.span();
        DeleteRangeRequest { key, range_end, prev_kv: self.chance(0.5) }
    }

    fn compare(&mut self, m: &Model) -> Compare {
        let (key, range_end) = if self.chance(0.7) { (self.key(), Vec::new()) } else { self.span() };
        let result = [CompareResult::Equal, CompareResult::Greater, CompareResult::Less, CompareResult::NotEqual]
            [self.below(4) as usize];
        let target = match self.below(5) {
            0 => CompareTarget::Value(self.value()),
            1 => CompareTarget::Version(self.below(4) as i64 - 1),
            2 => CompareTarget::Create(self.rev(m)),
            3 => CompareTarget::Mod(self.rev(m)),
            _ => CompareTarget::Lease(self.below(4) as i64 - 1),
        };
        Compare { key, range_end, result, target }
    }

    fn ops(&mut self, m: &Model, depth: u32) -> Vec<RequestOp> {
        (0..self.below(4))
            .map(|_| match self.below(if depth < 2 { 20 } else { 17 }) {
                0..=4 => RequestOp::Range(self.range(m)),
                5..=11 => RequestOp::Put(self.put()),
                12..=16 => RequestOp::DeleteRange(self.delete()),
                _ => RequestOp::Txn(self.txn(m, depth + 1)),
            })
            .collect()
    }

    fn txn(&mut self, m: &Model, depth: u32) -> TxnRequest {
        TxnRequest {
            compare: (0..self.below(3)).map(|_| self.compare(m)).collect(),
            success: self.ops(m, depth),
            failure: self.ops(m, depth),
        }
    }

    fn compact(&mut self, m: &Model) -> Revision {
        let (cur, comp) = (m.revision(), m.compacted_revision());
        match self.below(6) {
            0 => comp - self.below(2) as i64,
            1 => cur + 1,
            _ => comp.max(0) + 1 + self.below((cur - comp.max(0)) as u64) as i64,
        }
    }
}

#[derive(Debug)]
enum Op {
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(Revision),
    LeaseGrant(i64, i64),
    LeaseRevoke(i64),
    LeaseCheckpoint(i64, i64),
}

/// What an op returned, in one type for both sides.
#[derive(Debug, PartialEq)]
enum Outcome {
    Put(Result<PutResponse, MvccError>),
    Delete(Result<DeleteRangeResponse, MvccError>),
    Txn(Result<TxnResponse, MvccError>),
    Compact(Result<CompactResponse, MvccError>),
    LeaseGrant(Result<(), MvccError>),
    LeaseRevoke(Result<Revision, MvccError>),
    LeaseCheckpoint,
}

fn apply_model(m: &mut Model, op: &Op) -> Outcome {
    match op {
        Op::Put(r) => Outcome::Put(m.put(r)),
        Op::Delete(r) => Outcome::Delete(m.delete_range(r)),
        Op::Txn(r) => Outcome::Txn(m.txn(r)),
        Op::Compact(r) => Outcome::Compact(m.compact(*r)),
        Op::LeaseGrant(id, ttl) => Outcome::LeaseGrant(m.lease_grant(*id, *ttl)),
        Op::LeaseRevoke(id) => Outcome::LeaseRevoke(m.lease_revoke(*id)),
        Op::LeaseCheckpoint(id, remaining) => {
            m.lease_checkpoint(*id, *remaining);
            Outcome::LeaseCheckpoint
        }
    }
}

fn apply_batch(batch: &mut Batch, op: &Op) -> Result<Outcome, StoreError> {
    Ok(match op {
        Op::Put(r) => Outcome::Put(batch.put(r)?),
        Op::Delete(r) => Outcome::Delete(batch.delete_range(r)?),
        Op::Txn(r) => Outcome::Txn(batch.txn(r)?),
        Op::Compact(r) => {
            let outcome = batch.compact(*r)?;
            // Reclaimed at once here, so that the stored versions can be compared with the
            // model's (`compacted_history_is_reclaimed_in_bounded_steps` covers the steps).
            while batch.compact_step()? {}
            Outcome::Compact(outcome)
        }
        Op::LeaseGrant(id, ttl) => Outcome::LeaseGrant(batch.lease_grant(*id, *ttl)?),
        Op::LeaseRevoke(id) => Outcome::LeaseRevoke(batch.lease_revoke(*id)?),
        Op::LeaseCheckpoint(id, remaining) => {
            batch.lease_checkpoint(*id, *remaining)?;
            Outcome::LeaseCheckpoint
        }
    })
}

fn is_ok(o: &Outcome) -> bool {
    match o {
        Outcome::Put(r) => r.is_ok(),
        Outcome::Delete(r) => r.is_ok(),
        Outcome::Txn(r) => r.is_ok(),
        Outcome::Compact(r) => r.is_ok(),
        Outcome::LeaseGrant(r) => r.is_ok(),
        Outcome::LeaseRevoke(r) => r.is_ok(),
        Outcome::LeaseCheckpoint => true,
    }
}

/// Every read of the whole store at the revisions still readable (the newest 40 of them and the
/// compacted one), and the stored revisions of every key, against the model.
fn compare_whole(store: &MvccStore, m: &Model, at: &str) {
    assert_eq!((store.revision(), store.compacted_revision()), (m.revision(), m.compacted_revision()), "{at}");
    let low = m.compacted_revision().max(1);
    let revs = std::iter::once(low).chain((m.revision() - 40).max(low)..=m.revision());
    for rev in revs {
        assert_eq!(read(store, &all_at(rev)), m.range(&all_at(rev)), "{at}: everything at {rev}");
    }
    let txn = store.db().begin_read().unwrap();
    let rows = txn.open_table(HIST).unwrap();
    for key in KEYS {
        assert_eq!(stored_revisions(&rows, key), m.kept_revisions(key), "{at}: stored revisions of {key:?}");
    }
    check_store_tables(store);
    compare_events(store, m, at);
    let view = store.read_view().unwrap();
    assert_eq!(view.leases().unwrap(), m.leases(), "{at}: leases");
    for id in 0..5 {
        assert_eq!(view.lease_keys(id).unwrap(), m.lease_keys(id), "{at}: keys of lease {id}");
        assert_eq!(view.lease(id).unwrap(), m.leases().into_iter().find(|l| l.id == id), "{at}: lease {id}");
    }
}

/// Every event from the compacted revision on, of the whole store, of each key and of two
/// ranges, read in pages as small as one `revs` entry or one event, against the model.
fn compare_events(store: &MvccStore, m: &Model, at: &str) {
    let view = store.read_view().unwrap();
    let from = m.compacted_revision().max(1) + 1;
    let mut spans: Vec<(Vec<u8>, Vec<u8>)> = vec![(b(""), vec![0]), (b("a"), b("b")), (b("ab"), vec![0])];
    spans.extend(KEYS.iter().map(|k| (k.to_vec(), Vec::new())));
    for (i, (key, end)) in spans.iter().enumerate() {
        let span = check::KeySpan::new(key, end);
        let want = m.events(&span, from, m.revision()).unwrap();
        let bounds = EventBounds { scan: 1 + i % 3, bytes: if i % 2 == 0 { 1 } else { usize::MAX } };
        let mut got = Vec::new();
        let mut pos = (from, 0);
        for _ in 0..10_000 {
            let page = view.events(&span, pos, m.revision(), true, bounds).unwrap();
            assert!(page.next > pos || page.next.0 > m.revision(), "{at}: no progress from {pos:?}");
            got.extend(page.events);
            pos = page.next;
            if pos.0 > m.revision() {
                break;
            }
        }
        assert_eq!(got, want, "{at}: events of {key:?}..{end:?} from {from}");
        let no_prev =
            view.events(&span, (from, 0), m.revision(), false, EventBounds { scan: usize::MAX, bytes: usize::MAX });
        let stripped: Vec<Event> = want.into_iter().map(|e| Event { prev_kv: None, ..e }).collect();
        assert_eq!(no_prev.unwrap().events, stripped, "{at}: events without previous versions");
    }
    if m.compacted_revision() >= 1 {
        let span = check::KeySpan::new(b"a", &[0]);
        let refused =
            view.events(&span, (m.compacted_revision(), 0), m.revision(), false, EventBounds { scan: 9, bytes: 9 });
        assert!(
            matches!(refused, Err(ReadError::Mvcc(MvccError::Compacted))),
            "{at}: history at the compacted revision"
        );
        assert_eq!(m.events(&span, m.compacted_revision(), m.revision()), Err(MvccError::Compacted));
    }
}

#[derive(Default, Debug)]
struct Stats {
    ops: u64,
    ok: u64,
    ranges: u64,
    batches: u64,
    dropped: u64,
    reopens: u64,
    /// The most versions one key held in the key index.
    longest: usize,
}

/// One seeded run of `ops` operations. `path`: an on-disk store, reopened now and then.
/// `rare_compaction`: compactions are few, so keys build long histories (`index::LONG`).
fn run_seed(seed: u64, ops: u64, path: Option<&Path>, max_txn_ops: usize, rare_compaction: bool, stats: &mut Stats) {
    let mut g = Gen { rng: Rng::new(seed) };
    let mut m = Model::with_max_txn_ops(max_txn_ops);
    let open = |path: Option<&Path>| match path {
        Some(p) => MvccStore::open(p).unwrap().with_max_txn_ops(max_txn_ops),
        None => MvccStore::in_memory().with_max_txn_ops(max_txn_ops),
    };
    let mut store = open(path);
    let mut step = 0u64;
    let mut applied_meta = 0u64;
    while step < ops {
        let saved = m.clone();
        let mut batch = store.begin().unwrap();
        for _ in 0..1 + g.below(5) {
            step += 1;
            let op = match g.below(24) {
                0..=6 => Op::Put(g.put()),
                7..=9 => Op::Delete(g.delete()),
                10..=17 => Op::Txn(g.txn(&m, 0)),
                18 | 19 if rare_compaction && !g.chance(0.01) => Op::Put(g.put()),
                18 | 19 => Op::Compact(g.compact(&m)),
                // Leases 0..=4: 0 is refused, the puts use 1..=3, 4 holds no keys.
                20 | 21 => {
                    let ttl = if g.chance(0.05) { MAX_LEASE_TTL + 1 } else { 1 + g.below(100) as i64 };
                    Op::LeaseGrant(g.below(5) as i64, ttl)
                }
                22 => Op::LeaseRevoke(g.below(5) as i64),
                _ => Op::LeaseCheckpoint(g.below(5) as i64, g.below(100_000) as i64),
            };
            let want = apply_model(&mut m, &op);
            let got = apply_batch(&mut batch, &op).unwrap();
            assert_eq!(got, want, "seed {seed} step {step}: {op:?}");
            stats.ops += 1;
            stats.ok += u64::from(is_ok(&got));
            assert_eq!(
                (batch.revision(), batch.compacted_revision()),
                (m.revision(), m.compacted_revision()),
                "seed {seed} step {step}: revisions after {op:?}"
            );
            {
                let rows = batch.write_txn().open_table(HIST).unwrap();
                for key in KEYS {
                    assert_eq!(
                        stored_revisions(&rows, key),
                        m.kept_revisions(key),
                        "seed {seed} step {step}: stored revisions of {key:?} after {op:?}"
                    );
                }
            }
            for _ in 0..4 {
                let req = g.range(&m);
                assert_eq!(batch.range(&req).unwrap(), m.range(&req), "seed {seed} step {step}: in batch {req:?}");
                stats.ranges += 1;
            }
        }
        if g.chance(0.05) {
            drop(batch);
            m = saved;
            stats.dropped += 1;
        } else {
            applied_meta = step;
            batch.set_meta("applied", &step.to_be_bytes()).unwrap();
            assert_eq!(batch.meta("applied").unwrap(), Some(step.to_be_bytes().to_vec()));
            stats.longest = stats.longest.max(batch.longest_history());
            batch.commit(g.chance(0.1)).unwrap();
            stats.batches += 1;
        }
        assert_eq!((store.revision(), store.compacted_revision()), (m.revision(), m.compacted_revision()));
        for _ in 0..2 {
            let req = g.range(&m);
            assert_eq!(read(&store, &req), m.range(&req), "seed {seed} step {step}: committed {req:?}");
            // The first `keep` keys of the same answer, holding no more than those.
            let keep = g.below(8) as usize;
            let kept = match store.read_view().unwrap().range_kept(&req, keep) {
                Ok(r) => Ok(r),
                Err(ReadError::Mvcc(e)) => Err(e),
                Err(ReadError::Storage(e)) => panic!("storage failed: {e}"),
            };
            let expected = m.range(&req).map(|mut r| {
                r.kvs.truncate(keep);
                r
            });
            assert_eq!(kept, expected, "seed {seed} step {step}: keep {keep} of {req:?}");
            stats.ranges += 1;
        }
        if path.is_some() && g.chance(0.01) {
            // A clean close keeps even non-durable commits (redb makes them durable then).
            drop(store);
            store = open(path);
            stats.reopens += 1;
            compare_whole(&store, &m, &format!("seed {seed} step {step} reopened"));
            let meta = store.meta("applied").unwrap();
            assert_eq!(meta, (applied_meta > 0).then(|| applied_meta.to_be_bytes().to_vec()));
        }
    }
    compare_whole(&store, &m, &format!("seed {seed} end"));
}

#[test]
fn a_live_row_is_its_key_and_a_record_that_reads_back_as_written() {
    let extremes = [(1, 1, 0), (MAX_REVISION, MAX_REVISION, i64::MIN), (7, 3, i64::MAX), (2, 1, -1)];
    for (create, version, lease) in extremes {
        let row = live_row(b"k/ey", create, version, lease, b"value");
        let (key, record) = split_row(&row).expect("a row");
        assert_eq!(key, b"k/ey");
        match Record::decode(record) {
            Ok(Record::Live { create_revision, version: v, lease: l, value }) => {
                assert_eq!((create_revision, v, l, value), (create, version, lease, &b"value"[..]));
            }
            _ => panic!("the record of ({create}, {version}, {lease}) does not read back"),
        }
        assert!(row.capacity() <= 4 + 4 + 31 + 5, "built in the room it reserved: {} bytes", row.capacity());
    }
}

/// The model-based property test. `MVCC_PROP_OPS` operations in all (default 150,000), over
/// eight seeds: in memory and on disk (reopened now and then), with etcd's limit on txn ops
/// and with a limit of 2 that makes TooManyOps common.
#[test]
fn engine_behaves_exactly_like_the_model() {
    let total: u64 = std::env::var("MVCC_PROP_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(150_000);
    let seeds = 8u64;
    let dir = tempfile::tempdir().unwrap();
    let mut stats = Stats::default();
    let started = std::time::Instant::now();
    for seed in 0..seeds {
        let path = dir.path().join(format!("seed-{seed}.redb"));
        let on_disk = seed % 2 == 1;
        let max_ops = if seed % 4 == 2 { 2 } else { DEFAULT_MAX_TXN_OPS };
        let rare_compaction = seed % 4 == 3;
        let ops = total.div_ceil(seeds);
        run_seed(0x5eed_0000 + seed, ops, on_disk.then_some(path.as_path()), max_ops, rare_compaction, &mut stats);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "mvcc property test: {stats:?} in {secs:.1} s ({:.0} ops/s, {:.0} ranges/s)",
        stats.ops as f64 / secs,
        stats.ranges as f64 / secs
    );
    assert!(stats.ok * 4 > stats.ops, "most ops should not be refused: {stats:?}");
    assert!(stats.ok < stats.ops, "some ops are refused: {stats:?}");
    assert!(stats.reopens > 0 || total < 10_000, "on-disk stores were reopened: {stats:?}");
    assert!(
        stats.longest > super::index::LONG || total < 10_000,
        "some key's history grew long enough to be held as a persistent vector: {stats:?}"
    );
}

// ----- behaviours the model cannot see -----

#[test]
fn an_empty_store_is_at_revision_one_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = MvccStore::open(&path).unwrap();
    assert_eq!((store.revision(), store.compacted_revision()), (1, -1));
    assert_eq!(put(&store, "a", "1", false), 2);
    let mut batch = store.begin().unwrap();
    batch.compact(2).unwrap().unwrap();
    batch.set_meta("applied", b"7").unwrap();
    batch.commit(true).unwrap();
    drop(store);
    let store = MvccStore::open(&path).unwrap();
    assert_eq!((store.revision(), store.compacted_revision()), (2, 2));
    assert_eq!(store.meta("applied").unwrap(), Some(b"7".to_vec()));
    assert_eq!(store.meta("term").unwrap(), None);
    assert_eq!(read(&store, &one("a")).unwrap().kvs[0].value, b("1"));
    assert!(matches!(MvccStore::open(&path), Err(StoreError::Locked { .. })), "one process, one open store");
}

#[test]
fn reads_see_the_last_commit_while_a_batch_is_open_on_another_thread() {
    let store = Arc::new(MvccStore::in_memory());
    put(&store, "a", "old", false);
    let mut batch = store.begin().unwrap();
    batch.put(&put_req("a", "new")).unwrap().unwrap();
    assert_eq!(batch.range(&one("a")).unwrap().unwrap().kvs[0].value, b("new"), "the batch sees its writes");
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || (read(&store, &one("a")).unwrap(), store.revision()))
    };
    let (seen, revision) = reader.join().unwrap();
    assert_eq!((seen.kvs[0].value.clone(), seen.revision, revision), (b("old"), 2, 2));
    batch.commit(false).unwrap();
    assert_eq!(read(&store, &one("a")).unwrap().kvs[0].value, b("new"));
    assert_eq!(store.revision(), 3);
    // a dropped batch leaves nothing
    let mut batch = store.begin().unwrap();
    batch.put(&put_req("b", "x")).unwrap().unwrap();
    drop(batch);
    assert_eq!((store.revision(), read(&store, &one("b")).unwrap().count), (3, 0));
}

#[test]
fn a_txn_that_fails_part_way_leaves_no_trace_in_any_table() {
    let store = MvccStore::in_memory();
    put(&store, "b", "1", false); // 2
    let mut batch = store.begin().unwrap();
    // etcd 3.4 lets this through its checks; the ignore_value put then finds b deleted
    let ign = RequestOp::Put(PutRequest { key: b("b"), ignore_value: true, ..Default::default() });
    let del = RequestOp::DeleteRange(DeleteRangeRequest { key: b("a"), range_end: b("\0"), prev_kv: false });
    let t = TxnRequest { compare: vec![], success: vec![RequestOp::Put(put_req("c", "1")), del, ign], failure: vec![] };
    assert_eq!(batch.txn(&t).unwrap(), Err(MvccError::KeyNotFound));
    assert_eq!(batch.revision(), 2);
    {
        let rows = batch.write_txn().open_table(HIST).unwrap();
        assert_eq!(stored_revisions(&rows, b"b"), [2]);
        assert_eq!(stored_revisions(&rows, b"c"), Vec::<Revision>::new());
        assert_eq!(rows.len().unwrap(), 1);
    }
    batch.check_index();
    // the next op takes revision 3, as if the failed txn never ran
    assert_eq!(batch.put(&put_req("d", "1")).unwrap().unwrap().revision, 3);
    batch.commit(false).unwrap();
}

#[test]
fn compaction_frees_old_versions_and_their_rows() {
    let store = MvccStore::in_memory();
    for i in 0..50 {
        put(&store, "a", &i.to_string(), false);
    }
    put(&store, "b", "x", false); // 52
    let mut batch = store.begin().unwrap();
    batch.delete_range(&DeleteRangeRequest { key: b("b"), ..Default::default() }).unwrap().unwrap(); // 53
    batch.compact(53).unwrap().unwrap();
    while batch.compact_step().unwrap() {}
    {
        let rows = batch.write_txn().open_table(HIST).unwrap();
        assert_eq!(stored_revisions(&rows, b"a"), [51]);
        assert_eq!(stored_revisions(&rows, b"b"), Vec::<Revision>::new());
        assert_eq!(rows.len().unwrap(), 1);
    }
    batch.check_index();
    batch.commit(true).unwrap();
    assert_eq!(read(&store, &all_at(52)), Err(MvccError::Compacted));
    assert_eq!(read(&store, &all_at(53)).unwrap().kvs[0].value, b("49"));
}

#[test]
fn a_failed_storage_operation_makes_the_batch_uncommittable() {
    let store = MvccStore::in_memory();
    let mut batch = store.begin().unwrap();
    // redb refuses a pair over 3 GiB; a forged failure is simpler: record one directly
    let res: Result<(), StoreError> = Err(StoreError::Invalid("planted".into()));
    assert!(batch_note(&mut batch, res).is_err());
    assert!(batch.put(&put_req("a", "1")).is_err());
    assert!(batch.commit(false).is_err());
    assert_eq!(store.revision(), 1);
}

fn batch_note(batch: &mut Batch, res: Result<(), StoreError>) -> Result<(), StoreError> {
    batch.note_for_test(res)
}

#[test]
fn damaged_records_are_errors_not_panics() {
    let store = MvccStore::in_memory();
    put(&store, "a", "1", false);
    let records = [&[][..], &[7][..], &[1][..], &[1, 0x80][..], &[0, 0][..], &[1, 0, 1, 0][..]];
    let rows = records.iter().map(|record| super::engine::encode_row(b"a", record));
    // Rows whose key is not the one the index knows there, or cut short.
    let framing = [super::engine::encode_row(b"b", &[0]), vec![0, 0, 0, 9, b'a'], vec![0, 0], Vec::new()];
    for damage in rows.chain(framing) {
        let batch = store.begin().unwrap();
        batch.write_txn().open_table(HIST).unwrap().insert((2, 0), damage.as_slice()).unwrap();
        batch.commit(false).unwrap();
        let err = store.range(&one("a")).unwrap_err();
        assert!(matches!(&err, ReadError::Storage(e) if e.is_corrupt()), "{damage:?}: {err}");
        // A count reads no row: the key index knows which keys are live.
        assert_eq!(store.range(&RangeRequest { count_only: true, ..one("a") }).unwrap().count, 1, "{damage:?}");
        // A put that answers or keeps the previous version reads its row, and fails.
        let mut batch = store.begin().unwrap();
        assert!(batch.put(&PutRequest { prev_kv: true, ..put_req("a", "2") }).is_err(), "{damage:?}");
        assert!(batch.commit(false).is_err());
        // A plain put, and a txn comparing the mod revision, read no row: the key index has the
        // previous version's create revision and version (as etcd's treeIndex).
        let mut batch = store.begin().unwrap();
        let cas = TxnRequest {
            compare: vec![Compare {
                key: b("a"),
                range_end: Vec::new(),
                target: CompareTarget::Mod(2),
                result: CompareResult::Equal,
            }],
            success: vec![RequestOp::Put(put_req("a", "2"))],
            failure: Vec::new(),
        };
        assert!(batch.txn(&cas).unwrap().unwrap().succeeded, "{damage:?}");
        assert!(batch.put(&put_req("a", "3")).unwrap().is_ok(), "{damage:?}");
        drop(batch);
    }
}

#[test]
fn a_range_reads_the_rows_it_answers_and_counts_the_rest_from_the_key_index() {
    let store = MvccStore::in_memory();
    for k in ["a", "b", "c", "d", "e"] {
        put(&store, k, "v", false);
    }
    // The row of "e" (revision 6) is damaged: only a read of that row can see it.
    let batch = store.begin().unwrap();
    let damaged = super::engine::encode_row(b"e", &[7]);
    batch.write_txn().open_table(HIST).unwrap().insert((6, 0), damaged.as_slice()).unwrap();
    batch.commit(false).unwrap();
    let span = RangeRequest { key: b("a"), range_end: b("f"), ..Default::default() };
    assert!(store.range(&span).is_err(), "the damaged row is answered");
    // A page of two: the other keys are counted, not read.
    let page = read(&store, &RangeRequest { limit: 2, ..span.clone() }).unwrap();
    assert_eq!((page.kvs.len(), page.count, page.more), (2, 5, true));
    assert_eq!(read(&store, &RangeRequest { count_only: true, ..span.clone() }).unwrap().count, 5);
    // A filter on the mod revision leaves "e" out without reading it.
    let filtered = read(&store, &RangeRequest { max_mod_revision: 5, ..span.clone() }).unwrap();
    assert_eq!((filtered.kvs.len(), filtered.count), (4, 5));
}

#[test]
fn a_foreign_or_newer_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = MvccStore::open(&path).unwrap();
        let batch = store.begin().unwrap();
        batch.write_txn().open_table(super::engine::STATE).unwrap().insert("format", 3).unwrap();
        batch.commit(true).unwrap();
    }
    let err = MvccStore::open(&path).unwrap_err();
    assert!(err.to_string().contains("format 3"), "{err}");
    std::fs::write(&path, b"not a database at all, just some bytes").unwrap();
    assert!(MvccStore::open(&path).is_err());
}

// ----- durability: a disk that forgets what was not synced -----

#[derive(Debug, Default)]
struct Disk {
    written: Vec<u8>,
    synced: Vec<u8>,
    crashed: bool,
}

/// A redb backend in memory that keeps what was written and, apart, what was synced; after
/// `crash` it fails every write, as a machine that lost power does nothing more.
#[derive(Debug, Clone, Default)]
struct CrashDisk(Arc<Mutex<Disk>>);

impl CrashDisk {
    fn from_image(image: Vec<u8>) -> CrashDisk {
        CrashDisk(Arc::new(Mutex::new(Disk { written: image.clone(), synced: image, crashed: false })))
    }

    fn crash(&self) {
        self.0.lock().unwrap().crashed = true;
    }

    fn images(&self) -> (Vec<u8>, Vec<u8>) {
        let d = self.0.lock().unwrap();
        (d.synced.clone(), d.written.clone())
    }
}

fn lost_power() -> std::io::Error {
    std::io::Error::other("the power is off")
}

impl StorageBackend for CrashDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.lock().unwrap().written.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let d = self.0.lock().unwrap();
        let start = offset as usize;
        let src = d.written.get(start..start + out.len()).ok_or_else(|| std::io::Error::other("read past the end"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().unwrap();
        if d.crashed {
            return Err(lost_power());
        }
        d.written.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().unwrap();
        if d.crashed {
            return Err(lost_power());
        }
        d.synced = d.written.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().unwrap();
        if d.crashed {
            return Err(lost_power());
        }
        let start = offset as usize;
        if d.written.len() < start + data.len() {
            d.written.resize(start + data.len(), 0);
        }
        d.written[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
}

fn on_disk(disk: &CrashDisk) -> MvccStore {
    MvccStore::with_backend(disk.clone(), Place::memory()).unwrap()
}

fn value_of(store: &MvccStore, k: &str) -> Option<Vec<u8>> {
    read(store, &one(k)).unwrap().kvs.pop().map(|kv| kv.value)
}

/// What redb guarantees, as this test finds it: a non-durable commit is visible at once and
/// survives a clean close (redb makes it durable then), but a crash before the next durable
/// commit returns the database to the last durable one, whatever part of the unsynced writes
/// reached the disk. A durable commit also makes the non-durable ones before it durable.
#[test]
fn non_durable_commits_are_lost_in_a_crash_and_kept_by_a_clean_close_or_a_later_durable_commit() {
    let disk = CrashDisk::default();
    let store = on_disk(&disk);
    put(&store, "a", "durable", true); // 2
    put(&store, "b", "not yet", false); // 3
    assert_eq!(value_of(&store, "b"), Some(b("not yet")), "visible before it is durable");
    disk.crash();
    drop(store);
    let (synced, written) = disk.images();
    for (name, image) in [("synced", synced), ("written", written)] {
        let store = on_disk(&CrashDisk::from_image(image));
        assert_eq!(store.revision(), 2, "{name} image: back to the last durable commit");
        assert_eq!((value_of(&store, "a"), value_of(&store, "b")), (Some(b("durable")), None), "{name}");
    }

    // a clean close keeps the non-durable commit
    let disk = CrashDisk::default();
    let store = on_disk(&disk);
    put(&store, "a", "1", false);
    drop(store);
    let store = on_disk(&CrashDisk::from_image(disk.images().0));
    assert_eq!((store.revision(), value_of(&store, "a")), (2, Some(b("1"))));

    // a durable commit carries the non-durable ones before it
    let disk = CrashDisk::default();
    let store = on_disk(&disk);
    put(&store, "a", "1", false);
    put(&store, "b", "2", true);
    put(&store, "c", "3", false);
    disk.crash();
    drop(store);
    let store = on_disk(&CrashDisk::from_image(disk.images().0));
    assert_eq!(store.revision(), 3);
    assert_eq!(
        (value_of(&store, "a"), value_of(&store, "b"), value_of(&store, "c")),
        (Some(b("1")), Some(b("2")), None)
    );
}

/// Random batches, durable now and then, with a crash at a random point: the store that comes
/// back is the model as of the last durable commit.
#[test]
fn after_a_crash_the_store_is_the_last_durable_state() {
    for seed in 0..6u64 {
        let mut g = Gen { rng: Rng::new(0xc0a5_0000 + seed) };
        let disk = CrashDisk::default();
        let store = on_disk(&disk);
        let mut m = Model::new();
        let mut durable = m.clone();
        for _ in 0..40 {
            let mut batch = store.begin().unwrap();
            for _ in 0..1 + g.below(3) {
                let op = if g.chance(0.6) { Op::Put(g.put()) } else { Op::Txn(g.txn(&m, 0)) };
                apply_model(&mut m, &op);
                apply_batch(&mut batch, &op).unwrap();
            }
            let sync = g.chance(0.3);
            batch.commit(sync).unwrap();
            if sync {
                durable = m.clone();
            }
        }
        disk.crash();
        drop(store);
        for image in [disk.images().0, disk.images().1] {
            let store = on_disk(&CrashDisk::from_image(image));
            assert_eq!(store.revision(), durable.revision(), "seed {seed}");
            assert_eq!(read(&store, &all_at(0)), durable.range(&all_at(0)), "seed {seed}");
        }
    }
}

// ----- snapshots -----

fn collect(reader: SnapshotReader) -> Vec<bytes::Bytes> {
    reader.map(|c| c.unwrap()).collect()
}

fn joined(chunks: &[bytes::Bytes]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.iter().copied()).collect()
}

/// A store with history, deletes, a compaction and meta records.
fn sample_store() -> (MvccStore, Model) {
    let store = MvccStore::in_memory();
    let mut m = Model::new();
    let mut g = Gen { rng: Rng::new(99) };
    for i in 0..300 {
        let mut batch = store.begin().unwrap();
        let op = match i % 10 {
            0..=5 => Op::Put(g.put()),
            6 => Op::Delete(g.delete()),
            7..=8 => Op::Txn(g.txn(&m, 0)),
            _ => Op::Compact(g.compact(&m)),
        };
        apply_model(&mut m, &op);
        apply_batch(&mut batch, &op).unwrap();
        batch.set_meta("applied", &(i as u64).to_be_bytes()).unwrap();
        batch.set_meta("members", b"etcd-0,etcd-1").unwrap();
        batch.commit(false).unwrap();
    }
    (store, m)
}

fn same_store(a: &MvccStore, m: &Model) {
    compare_whole(a, m, "installed");
    assert_eq!(a.meta("applied").unwrap(), Some(299u64.to_be_bytes().to_vec()));
    assert_eq!(a.meta("members").unwrap(), Some(b"etcd-0,etcd-1".to_vec()));
}

#[test]
fn a_snapshot_installs_into_the_same_store_on_disk_and_in_memory() {
    let (store, m) = sample_store();
    let chunks = collect(store.snapshot().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("installed.redb");
    let installed =
        MvccStore::install(&path, ChunkReader::new(chunks.clone().into_iter().map(Ok::<_, String>))).unwrap();
    same_store(&installed, &m);
    drop(installed);
    same_store(&MvccStore::open(&path).unwrap(), &m);
    assert!(!dir.path().join("installed.redb.installing").exists());
    let in_memory = MvccStore::install_in_memory(joined(&chunks).as_slice()).unwrap();
    same_store(&in_memory, &m);
    // a snapshot of the installed store is the same stream
    assert_eq!(joined(&collect(in_memory.snapshot().unwrap())), joined(&chunks));
}

#[test]
fn a_snapshot_shows_its_point_in_time_while_writes_go_on_and_chunks_are_bounded() {
    let store = MvccStore::in_memory();
    let value = vec![7u8; 100_000];
    let mut batch = store.begin().unwrap();
    for i in 0..40 {
        batch
            .put(&PutRequest { key: format!("k{i:02}").into_bytes(), value: value.clone(), ..Default::default() })
            .unwrap()
            .unwrap();
    }
    batch.commit(false).unwrap();
    let reader = store.snapshot().unwrap();
    assert_eq!(reader.revision(), 41);
    // writes after the snapshot began: overwrite, delete and compact away the old versions
    let mut batch = store.begin().unwrap();
    batch.delete_range(&DeleteRangeRequest { key: b("k"), range_end: b("l"), prev_kv: false }).unwrap().unwrap();
    batch.put(&put_req("new", "1")).unwrap().unwrap();
    batch.compact(43).unwrap().unwrap();
    while batch.compact_step().unwrap() {}
    batch.commit(true).unwrap();
    let chunks = collect(reader);
    assert!(chunks.len() >= 4, "4 MB make several chunks");
    assert!(chunks.iter().all(|c| c.len() <= snapshot::CHUNK_BYTES));
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c.len() == snapshot::CHUNK_BYTES));
    let old = MvccStore::install_in_memory(joined(&chunks).as_slice()).unwrap();
    assert_eq!(old.revision(), 41);
    let all = read(&old, &all_at(0)).unwrap();
    assert_eq!((all.count, all.kvs[0].value.len()), (40, 100_000));
    assert_eq!(read(&store, &all_at(0)).unwrap().count, 1, "the live store went on");
}

#[test]
fn damaged_cut_or_foreign_snapshot_streams_are_refused() {
    let (store, _) = sample_store();
    let good = joined(&collect(store.snapshot().unwrap()));
    let refused = |bytes: &[u8]| match MvccStore::install_in_memory(bytes) {
        Err(StoreError::BadSnapshot(_)) => {}
        Err(e) => panic!("refused with the wrong error: {e}"),
        Ok(_) => panic!("accepted a bad stream"),
    };
    // every cut
    for cut in (0..good.len()).step_by(7).chain(good.len() - 20..good.len()) {
        refused(&good[..cut]);
    }
    // every flipped byte (a sample of positions)
    let mut rng = Rng::new(5);
    for _ in 0..400 {
        let mut bad = good.clone();
        let at = rng.range(0, bad.len() as u64) as usize;
        bad[at] ^= 1 << rng.range(0, 8);
        refused(&bad);
    }
    // trailing bytes, another magic, a newer format
    let mut longer = good.clone();
    longer.push(0);
    refused(&longer);
    let mut foreign = good.clone();
    foreign[..8].copy_from_slice(b"KRSNAP02");
    refused(&foreign);
    let mut newer = good.clone();
    newer[8..12].copy_from_slice(&3u32.to_be_bytes());
    match MvccStore::install_in_memory(newer.as_slice()) {
        Err(e) => assert!(e.to_string().contains("format 3"), "{e}"),
        Ok(_) => panic!("accepted a newer format"),
    }
    // a huge length off the wire is refused before anything is allocated for it
    let mut huge = good[..12].to_vec();
    huge.extend_from_slice(&[2, 0xff, 0xff, 0xff, 0xff]);
    refused(&huge);
    // an error of the chunk stream itself
    let chunks = vec![Ok(bytes::Bytes::from(good[..100].to_vec())), Err("connection reset")];
    refused_reader(ChunkReader::new(chunks.into_iter()));
    // on disk, a refused stream leaves what was at the path
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    put(&MvccStore::open(&path).unwrap(), "keep", "me", true);
    assert!(MvccStore::install(&path, &good[..good.len() - 1]).is_err());
    assert!(!dir.path().join("s.redb.installing").exists());
    assert_eq!(value_of(&MvccStore::open(&path).unwrap(), "keep"), Some(b("me")));
}

#[test]
fn a_snapshot_stream_with_records_out_of_order_or_twice_is_refused() {
    // The installer appends each table at its end, so order is checked, not assumed: a stream
    // with a good checksum but two rows swapped, or one repeated, is refused; so is a record of
    // the other stream format.
    let store = MvccStore::in_memory();
    put(&store, "ka", "1", false);
    put(&store, "kb", "2", false);
    let good = joined(&collect(store.snapshot().unwrap()));
    // A row: tag 5, main (8 bytes), sub (4), then the key's length and bytes.
    let row_of = |key: &[u8]| {
        let at = good.windows(6).position(|w| w[..4] == [0, 0, 0, 2] && &w[4..] == key).expect("the row") - 13;
        assert_eq!(good[at], 5, "a row of format 2");
        at
    };
    let (first, second) = (row_of(b"ka"), row_of(b"kb"));
    let len = second - first;
    let resealed = |mut bytes: Vec<u8>| {
        let end = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_be_bytes());
        bytes
    };
    assert!(MvccStore::install_in_memory(resealed(good.clone()).as_slice()).is_ok(), "resealing alone is harmless");
    let mut swapped = good.clone();
    swapped[first..first + len].copy_from_slice(&good[second..second + len]);
    swapped[second..second + len].copy_from_slice(&good[first..first + len]);
    let mut twice = good.clone();
    twice[second..second + len].copy_from_slice(&good[first..first + len]);
    for bad in [swapped, twice] {
        match MvccStore::install_in_memory(resealed(bad).as_slice()) {
            Err(StoreError::BadSnapshot(why)) => assert!(why.contains("out of order or twice"), "{why}"),
            Err(e) => panic!("refused with the wrong error: {e}"),
            Ok(_) => panic!("accepted a stream out of order"),
        }
    }
    let mut mixed = good.clone();
    mixed[first] = 3;
    match MvccStore::install_in_memory(resealed(mixed).as_slice()) {
        Err(StoreError::BadSnapshot(why)) => assert!(why.contains("of another format"), "{why}"),
        Err(e) => panic!("refused with the wrong error: {e}"),
        Ok(_) => panic!("accepted a record of format 1 in a stream of format 2"),
    }
}

fn refused_reader(r: impl std::io::Read) {
    assert!(matches!(MvccStore::install_in_memory(r), Err(StoreError::BadSnapshot(_))));
}

#[test]
fn sort_ties_stay_in_key_order_on_many_keys() {
    // Small slices sort alike stably or not; 300 keys with 3 distinct values do not.
    let store = MvccStore::in_memory();
    let mut m = Model::new();
    let mut batch = store.begin().unwrap();
    for i in 0..300 {
        let req = PutRequest {
            key: format!("k{i:03}").into_bytes(),
            value: vec![b'0' + (i * 7 % 3) as u8],
            ..Default::default()
        };
        batch.put(&req).unwrap().unwrap();
        m.put(&req).unwrap();
    }
    batch.put(&put_req("k005", "again")).unwrap().unwrap();
    m.put(&put_req("k005", "again")).unwrap();
    batch.commit(false).unwrap();
    for order in [SortOrder::None, SortOrder::Ascend, SortOrder::Descend] {
        for target in [SortTarget::Version, SortTarget::Create, SortTarget::Value, SortTarget::Mod, SortTarget::Key] {
            let req = RangeRequest { sort_order: order, sort_target: target, ..all_at(0) };
            assert_eq!(read(&store, &req), m.range(&req), "{order:?} {target:?}");
        }
    }
}

#[test]
fn latest_versions_load_as_a_store_compacted_at_their_revision() {
    let kv = |k: &str, create, rev, version| KeyValue {
        key: b(k),
        create_revision: create,
        mod_revision: rev,
        version,
        value: b(k),
        lease: 0,
    };
    let latest = vec![kv("a", 2, 5, 3), kv("b", 4, 4, 1)];
    let mut m = Model::from_latest(latest.clone(), 7).unwrap();
    let store = MvccStore::in_memory();
    let mut batch = store.begin().unwrap();
    batch.load_latest(latest.clone(), 7).unwrap();
    batch.commit(true).unwrap();
    compare_whole(&store, &m, "loaded");
    assert_eq!(read(&store, &all_at(6)), Err(MvccError::Compacted));
    // it goes on like the model: a put, then a compaction that drops the loaded version
    let mut batch = store.begin().unwrap();
    assert_eq!(batch.put(&put_req("a", "new")).unwrap(), m.put(&put_req("a", "new")));
    assert_eq!(batch.compact(8).unwrap(), m.compact(8));
    while batch.compact_step().unwrap() {}
    batch.commit(false).unwrap();
    compare_whole(&store, &m, "after");
    // refused: a store that is not empty, impossible revisions
    let mut batch = store.begin().unwrap();
    assert!(matches!(batch.load_latest(latest.clone(), 9), Err(StoreError::Invalid(_))));
    let empty = MvccStore::in_memory();
    let mut batch = empty.begin().unwrap();
    assert!(matches!(batch.load_latest(vec![kv("a", 5, 4, 1)], 9), Err(StoreError::BadSnapshot(_))));
    assert!(batch.commit(false).is_err(), "a refused load leaves the batch unusable");
    assert_eq!(empty.revision(), 1);
    // Revisions or versions no history reaches (counting on from them would overflow).
    let huge = i64::MAX - 1;
    for (latest, revision) in [(vec![], huge), (vec![kv("a", 2, 2, huge)], 9), (vec![kv("a", 2, huge, 1)], huge)] {
        let empty = MvccStore::in_memory();
        let mut batch = empty.begin().unwrap();
        assert!(matches!(batch.load_latest(latest, revision), Err(StoreError::BadSnapshot(_))), "{revision}");
    }
}

/// A read view is the state of the commit before it was taken: writes committed after it, and
/// a batch still open, change nothing it answers (the node ranges over a view after releasing
/// the state machine's lock, so applying goes on meanwhile).
#[test]
fn a_read_view_keeps_its_point_in_time_while_writes_go_on() {
    let store = MvccStore::in_memory();
    put(&store, "a", "1", false);
    let view = store.read_view().unwrap();
    put(&store, "a", "2", false);
    put(&store, "b", "1", false);
    let mut open = store.begin().unwrap();
    open.put(&put_req("c", "1")).unwrap().unwrap();
    let seen = view.range(&all_at(0)).unwrap();
    assert_eq!(seen.revision, 2, "the view's revision");
    assert_eq!(
        seen.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect::<Vec<_>>(),
        vec![(b("a"), b("1"))]
    );
    drop(open);
    let now = read(&store, &all_at(0)).unwrap();
    assert_eq!(now.kvs.len(), 2, "a new range sees the later commits: {now:?}");
    assert!(matches!(view.range(&RangeRequest::default()), Err(ReadError::Mvcc(MvccError::EmptyKey))));
}

/// A compaction takes effect at once and is reclaimed in chunks of `COMPACT_CHUNK` revisions:
/// reads are the same before, during and after, and once every step ran only each key's
/// newest live version at or below the compacted revision is left.
#[test]
fn compacted_history_is_reclaimed_in_bounded_steps() {
    let store = MvccStore::in_memory();
    let mut m = Model::new();
    for i in 0..3000 {
        let key = if i % 3 == 0 { "b" } else { "a" };
        let req = put_req(key, &i.to_string());
        let mut batch = store.begin().unwrap();
        assert_eq!(batch.put(&req).unwrap(), m.put(&req));
        batch.commit(false).unwrap();
    }
    let delete = DeleteRangeRequest { key: b("b"), ..Default::default() };
    let mut batch = store.begin().unwrap();
    assert_eq!(batch.delete_range(&delete).unwrap(), m.delete_range(&delete));
    batch.commit(false).unwrap();
    let compact_to = m.revision();
    let mut batch = store.begin().unwrap();
    assert_eq!(batch.compact(compact_to).unwrap(), m.compact(compact_to));
    batch.commit(false).unwrap();
    assert!(store.compaction_pending().unwrap(), "nothing reclaimed yet");
    assert_eq!(read(&store, &all_at(compact_to)), m.range(&all_at(compact_to)));
    assert_eq!(read(&store, &all_at(compact_to - 1)), Err(MvccError::Compacted));
    // A stream taken before anything is reclaimed carries no unreadable history.
    let early = collect(store.snapshot().unwrap());
    let installed = MvccStore::install_in_memory(joined(&early).as_slice()).unwrap();
    assert!(!installed.compaction_pending().unwrap(), "the stream left the superseded versions out");
    check_store_tables(&installed);
    compare_whole(&installed, &m, "installed before reclaiming");
    let mut steps = 0;
    loop {
        let mut batch = store.begin().unwrap();
        let more = batch.compact_step().unwrap();
        batch.commit(false).unwrap();
        steps += 1;
        assert_eq!(read(&store, &all_at(0)), m.range(&all_at(0)), "after step {steps}");
        if !more {
            break;
        }
        assert!(steps < 100, "3001 revisions take 3001 / {} chunks", super::engine::COMPACT_CHUNK);
    }
    assert_eq!(steps, 3001usize.div_ceil(super::engine::COMPACT_CHUNK));
    assert!(!store.compaction_pending().unwrap());
    compare_whole(&store, &m, "reclaimed");
    let txn = store.db().begin_read().unwrap();
    let rows = txn.open_table(HIST).unwrap();
    assert_eq!(stored_revisions(&rows, b"a"), [compact_to - 1], "only the newest version of a");
    assert_eq!(stored_revisions(&rows, b"b"), Vec::<Revision>::new(), "b's tombstone and history are gone");
    let late = collect(store.snapshot().unwrap());
    assert_eq!(joined(&early), joined(&late), "the same stream before and after reclaiming");
}

// ----- HashKV and defragment (issue 15) -----

fn hash_kv(store: &MvccStore, revision: Revision) -> Result<HashKv, MvccError> {
    match store.read_view().unwrap().hash_kv(revision) {
        Ok(h) => Ok(h),
        Err(ReadError::Mvcc(e)) => Err(e),
        Err(ReadError::Storage(e)) => panic!("storage failed: {e}"),
    }
}

/// The same history with and without the space of a compaction reclaimed.
fn compacted_history(reclaim: bool) -> MvccStore {
    let store = MvccStore::in_memory();
    for i in 0..10 {
        put(&store, "a", &i.to_string(), false); // 2..=11
    }
    put(&store, "b", "x", false); // 12
    put(&store, "c", "y", false); // 13
    let mut batch = store.begin().unwrap();
    batch.delete_range(&DeleteRangeRequest { key: b("c"), ..Default::default() }).unwrap().unwrap(); // 14
    batch.compact(14).unwrap().unwrap();
    if reclaim {
        while batch.compact_step().unwrap() {}
    }
    batch.commit(false).unwrap();
    put(&store, "a", "after", false); // 15
    store
}

/// HashKV is equal on members that applied the same log, whatever their compaction has
/// reclaimed; it changes with the history and with the revision hashed; and it refuses a
/// revision at or below the compacted one, or above the current one, as etcd does.
#[test]
fn hash_kv_hashes_the_kept_history_whatever_was_reclaimed() {
    let (kept, reclaimed) = (compacted_history(false), compacted_history(true));
    let h = hash_kv(&kept, 0).unwrap();
    assert_eq!((h.current, h.compacted), (15, 14));
    assert_eq!(h, hash_kv(&reclaimed, 0).unwrap(), "the reclaimed store hashes the same");
    assert_eq!(hash_kv(&kept, 15).unwrap(), h, "revision 0 is the current one");
    put(&kept, "d", "z", false);
    assert_ne!(hash_kv(&kept, 0).unwrap().hash, h.hash, "a new write changes the hash");
    assert_eq!(hash_kv(&kept, 15).unwrap().hash, h.hash, "the hash at 15 does not see it");
    assert_eq!(hash_kv(&kept, 14), Err(MvccError::Compacted));
    assert_eq!(hash_kv(&kept, 3), Err(MvccError::Compacted));
    assert_eq!(hash_kv(&kept, 17), Err(MvccError::FutureRev));
    // Another value at the same revisions: another hash.
    let other = MvccStore::in_memory();
    put(&other, "a", "different", false);
    let fresh = MvccStore::in_memory();
    put(&fresh, "a", "same", false);
    assert_ne!(hash_kv(&other, 0).unwrap().hash, hash_kv(&fresh, 0).unwrap().hash);
    assert_ne!(hash_kv(&MvccStore::in_memory(), 0).unwrap().hash, 0, "an empty history hashes to no 0");
}

/// Defragment gives back the space that compacted history left free in the file, keeps every
/// key, and waits for readers: with a read transaction open it does nothing.
#[test]
fn defragment_shrinks_the_file_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mvcc.redb");
    let mut store = MvccStore::open(&path).unwrap();
    let big = "x".repeat(64 << 10);
    for i in 0..64 {
        put(&store, &format!("k{i:02}"), &big, true);
    }
    put(&store, "z-keep", "me", true);
    let mut batch = store.begin().unwrap();
    batch.delete_range(&DeleteRangeRequest { key: b("k"), range_end: b("l"), ..Default::default() }).unwrap().unwrap();
    let revision = batch.revision();
    batch.compact(revision).unwrap().unwrap();
    while batch.compact_step().unwrap() {}
    batch.commit(true).unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    let reader = store.read_view().unwrap();
    assert!(!store.defragment().unwrap(), "a reader holds the database: nothing is done");
    drop(reader);
    assert!(store.defragment().unwrap());
    let after = std::fs::metadata(&path).unwrap().len();
    assert!(after * 4 < before, "the file shrinks: {before} -> {after} bytes");
    assert_eq!(read(&store, &one("z-keep")).unwrap().kvs[0].value, b("me"));
    assert_eq!(store.revision(), revision);
    drop(store);
    let reopened = MvccStore::open(&path).unwrap();
    assert_eq!(read(&reopened, &one("z-keep")).unwrap().kvs[0].value, b("me"), "durable after reopening");
}

/// A state-machine database of a newer format is refused as newer (exit code 5, the member kept),
/// one of an impossible format as damage.
#[test]
fn a_newer_database_format_is_refused_as_newer_and_an_impossible_one_as_damage() {
    use super::engine::{check_state, COMPACTED_NAME, FORMAT, FORMAT_NAME, REVISION_NAME};
    let state = |format: i64| {
        move |name: &str| {
            Ok(match name {
                n if n == FORMAT_NAME => Some(format),
                n if n == REVISION_NAME => Some(5),
                n if n == COMPACTED_NAME => Some(0),
                _ => None,
            })
        }
    };
    assert_eq!(check_state(state(FORMAT), &Place::memory()).expect("this version's"), Some((5, 0)));
    let newer = check_state(state(FORMAT + 1), &Place::memory()).expect_err("newer");
    assert!(newer.is_newer_format() && !newer.is_corrupt(), "{newer}");
    assert!(newer.to_string().contains(&format!("format {}, this version reads {FORMAT}", FORMAT + 1)), "{newer}");
    let impossible = check_state(state(0), &Place::memory()).expect_err("impossible");
    assert!(impossible.is_corrupt() && impossible.to_string().contains("which no kuberaft writes"), "{impossible}");
}

// ----- format 1, converted at open -----

/// Everything a client can read of a store: every range at every readable revision, the events
/// since the compaction with previous versions, the leases and their keys, and the hashes.
fn same_reads(got: &MvccStore, want: &MvccStore) {
    assert_eq!((got.revision(), got.compacted_revision()), (want.revision(), want.compacted_revision()));
    let (g, w) = (got.read_view().unwrap(), want.read_view().unwrap());
    for rev in want.compacted_revision()..=want.revision() {
        assert_eq!(g.range(&all_at(rev)).unwrap(), w.range(&all_at(rev)).unwrap(), "everything at {rev}");
    }
    let span = check::KeySpan::new(b"\0", &[0]);
    let all = EventBounds { scan: usize::MAX, bytes: usize::MAX };
    let from = (want.compacted_revision() + 1, 0);
    let events = |v: &ReadView| v.events(&span, from, want.revision(), true, all).unwrap();
    assert_eq!(events(&g), events(&w), "events since the compaction");
    assert_eq!(g.leases().unwrap(), w.leases().unwrap());
    for id in [7, 9] {
        assert_eq!(g.lease_keys(id).unwrap(), w.lease_keys(id).unwrap(), "keys of lease {id}");
    }
    for rev in [0, want.compacted_revision() + 1, (want.revision() - 5).max(want.compacted_revision() + 1)] {
        assert_eq!(g.hash_kv(rev).unwrap(), w.hash_kv(rev).unwrap(), "HashKV at {rev}");
    }
}

/// The snapshot stream of format 1 of the format-1 database at `path`, written as kuberaft
/// before format 2 wrote it (the module documentation of `snapshot` gives the format): the
/// `mvcc` and `meta` records, `kv` in key order without the versions compaction made
/// unreadable, `revs` above the compacted revision, the count and the CRC-32.
fn format_1_stream(path: &Path) -> Vec<u8> {
    use redb::ReadableTable;
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let mut out = b"KRMVCC\x00\x01".to_vec();
    out.extend_from_slice(&1u32.to_be_bytes());
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    let mut records = 0u64;
    let state = txn.open_table(super::engine::STATE).unwrap();
    let compacted = state.get("compacted").unwrap().unwrap().value();
    for entry in state.iter().unwrap() {
        let (name, value) = entry.unwrap();
        out.push(1);
        field(&mut out, name.value().as_bytes());
        out.extend_from_slice(&value.value().to_be_bytes());
        records += 1;
    }
    for entry in txn.open_table(super::engine::META).unwrap().iter().unwrap() {
        let (name, value) = entry.unwrap();
        out.push(2);
        field(&mut out, name.value().as_bytes());
        field(&mut out, value.value());
        records += 1;
    }
    let kv: Vec<(Vec<u8>, i64, Vec<u8>)> = txn
        .open_table(super::engine::KV)
        .unwrap()
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value().0.to_vec(), k.value().1, v.value().to_vec())
        })
        .collect();
    for (i, (key, rev, record)) in kv.iter().enumerate() {
        let superseded = kv.get(i + 1).is_some_and(|(next, r, _)| next == key && *r <= compacted);
        if *rev <= compacted && (superseded || !Record::is_live(record).unwrap()) {
            continue;
        }
        out.push(3);
        field(&mut out, key);
        out.extend_from_slice(&rev.to_be_bytes());
        field(&mut out, record);
        records += 1;
    }
    for entry in txn.open_table(super::engine::REVS).unwrap().range((compacted + 1, 0)..).unwrap() {
        let (pos, key) = entry.unwrap();
        out.push(4);
        out.extend_from_slice(&pos.value().0.to_be_bytes());
        out.extend_from_slice(&pos.value().1.to_be_bytes());
        field(&mut out, key.value());
        records += 1;
    }
    out.push(0xff);
    out.extend_from_slice(&records.to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A store written by kuberaft's format-1 engine (with a compaction half reclaimed) opens as
/// format 2 and answers every read as the same history written in format 2 does, and so does a
/// store installed from its stream of format 1; it takes writes and opens again.
#[test]
fn a_store_of_format_1_is_converted_at_open_and_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mvcc-format-1.redb");
    std::fs::copy(&fixture, &path).unwrap();
    {
        let raw = redb::Database::open(&path).unwrap();
        let txn = raw.begin_read().unwrap();
        let format = txn.open_table(super::engine::STATE).unwrap().get("format").unwrap().unwrap().value();
        assert_eq!(format, 1, "the fixture is of format 1");
    }
    let converted = MvccStore::open(&path).unwrap();
    let want = MvccStore::in_memory();
    super::history_script::write_history(&want);
    assert!(want.compaction_pending().unwrap());
    assert!(!converted.compaction_pending().unwrap(), "the conversion leaves out what compaction made unreadable");
    check_store_tables(&converted);
    same_reads(&converted, &want);
    // Its snapshot stream installs as the same store.
    let stream = joined(&collect(converted.snapshot().unwrap()));
    same_reads(&MvccStore::install_in_memory(stream.as_slice()).unwrap(), &want);
    // A stream of format 1, as kuberaft before format 2 sent it, installs and converts too.
    let untouched = dir.path().join("untouched.redb");
    std::fs::copy(&fixture, &untouched).unwrap();
    let old_stream = format_1_stream(&untouched);
    let installed = MvccStore::install_in_memory(old_stream.as_slice()).unwrap();
    check_store_tables(&installed);
    same_reads(&installed, &want);
    // Reclaiming the rest changes no read.
    let mut batch = want.begin().unwrap();
    while batch.compact_step().unwrap() {}
    batch.commit(false).unwrap();
    same_reads(&converted, &want);
    // Both go on alike, and the converted one opens again as it is.
    for store in [&converted, &want] {
        let mut batch = store.begin().unwrap();
        batch.put(&put_req("key/05", "later")).unwrap().unwrap();
        batch.compact(store.revision() - 3).unwrap().unwrap();
        while batch.compact_step().unwrap() {}
        batch.commit(true).unwrap();
    }
    same_reads(&converted, &want);
    drop(converted);
    let reopened = MvccStore::open(&path).unwrap();
    check_store_tables(&reopened);
    same_reads(&reopened, &want);
}

/// Readers on other threads, taking views while commits go on, always get the key index that
/// matches their snapshot: every view holds exactly the keys of its revision, each readable, and
/// a compaction's reclaiming (which drops rows and index entries) never shows half done.
#[test]
fn read_views_taken_during_commits_pair_each_snapshot_with_its_index() {
    let store = Arc::new(MvccStore::in_memory());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, done) = (store.clone(), done.clone());
            std::thread::spawn(move || {
                let mut views = 0u64;
                while !done.load(std::sync::atomic::Ordering::Acquire) && views < 1_000_000 {
                    let view = store.read_view().unwrap();
                    let all = view.range(&all_at(0)).unwrap();
                    // The puts cycle through 100 keys, so at revision r the live versions are
                    // exactly those of the last min(r - 1, 100) revisions.
                    let r = all.revision;
                    let mut revs: Vec<Revision> = all.kvs.iter().map(|kv| kv.mod_revision).collect();
                    revs.sort();
                    let want: Vec<Revision> = ((r - (r - 1).min(100) + 1)..=r).collect();
                    assert_eq!(revs, want, "a view with the index of another commit, at {r}");
                    for kv in &all.kvs {
                        assert_eq!(kv.value, kv.mod_revision.to_string().into_bytes());
                    }
                    views += 1;
                }
                views
            })
        })
        .collect();
    for i in 0..600u64 {
        let mut batch = store.begin().unwrap();
        let rev = batch.revision() + 1;
        batch.put(&put_req(&format!("k{:02}", i % 100), &rev.to_string())).unwrap().unwrap();
        if i % 50 == 49 {
            batch.compact(rev - 10).unwrap().unwrap();
            while batch.compact_step().unwrap() {}
        }
        batch.commit(false).unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for reader in readers {
        assert!(reader.join().expect("a reader failed") > 0);
    }
    check_store_tables(&store);
}

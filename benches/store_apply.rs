//! The state machine alone: what applying puts costs the MVCC store (redb), per put, with no
//! Raft, network or log. Every member applies every write, so this cost is paid three times per
//! put in a 3-member cluster; it is the largest single part of a member's CPU under a put load
//! (DESIGN.md, "Cost and where the time goes").
//!
//! Each iteration applies one batch of random overwrites of 256-byte values over a key space
//! loaded before, and commits it without fsync, as the Raft loop commits each Ready's entries.
//! One commit in `DURABLE_EVERY` puts is durable, as the snapshot before a log compaction is.
//!
//! `redb_layout` measures redb alone with the same values and batches, for two layouts of one
//! table: keyed by `(key, revision)` as the store's `kv` table is (each put of a random key
//! copies its own leaf page), and keyed by revision alone, as etcd keys bbolt (each batch
//! appends to the last leaf; etcd finds a key's revisions in an index in memory). It shows what
//! the layout costs, apart from the store's own work.
//!
//! `put_codec` measures the encoding of a put as the log, the peer messages and each
//! member's apply carry it (`store::codec`, postcard), with its key and value as bytes in one
//! piece (`codec::bytes`), beside the same bytes read through serde's default for a `Vec<u8>`, a
//! sequence of `u8` read one by one, and written as `codec::encode` wrote it before (postcard's
//! own growing `Vec`: the per-byte calls and the doubling together); the encoding is the same.
//!
//! The benchmarks allocate with mimalloc, as the `kuberaft` binary does (before stop 59 they
//! ran on the system's allocator; figures of earlier stops in DESIGN.md are of that).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kuberaft::base::rng::Rng;
use kuberaft::store::codec;
use kuberaft::store::mvcc::types::PutRequest;
use kuberaft::store::mvcc::MvccStore;
use redb::{Database, Durability, TableDefinition};
use serde::{Deserialize, Serialize};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VALUE_BYTES: usize = 256;
const DURABLE_EVERY: usize = 10_000;

/// Counts puts toward the next durable commit, one in every `DURABLE_EVERY`.
#[derive(Default)]
struct Durable {
    since: usize,
}

impl Durable {
    /// Whether the commit after `puts` more is the durable one.
    fn after(&mut self, puts: usize) -> bool {
        self.since += puts;
        let due = self.since >= DURABLE_EVERY;
        if due {
            self.since = 0;
        }
        due
    }
}

fn key(n: u64) -> Vec<u8> {
    format!("key{n:08}").into_bytes()
}

fn put(n: u64) -> PutRequest {
    PutRequest { key: key(n), value: vec![b'v'; VALUE_BYTES], ..PutRequest::default() }
}

fn apply_puts(c: &mut Criterion) {
    let mut group = c.benchmark_group("mvcc_apply_put_256B");
    // `mem_`: the store in memory, no file and no fsync: the CPU of an apply alone, without the
    // durable commits' fsync (on this shared machine its runs still spread widely: DESIGN.md §5,
    // stop 60).
    for (keys, batch, memory) in
        [(2_000u64, 1usize, false), (2_000, 32, false), (2_000, 256, false), (100_000, 32, false), (100_000, 32, true)]
    {
        let dir = (!memory).then(|| tempfile::tempdir().expect("a temporary directory"));
        let store = match &dir {
            None => MvccStore::in_memory(),
            Some(dir) => MvccStore::open(&dir.path().join("kv.db")).expect("the store opens"),
        };
        let mut load = store.begin().expect("a batch");
        for n in 0..keys {
            load.put(&put(n)).expect("storage").expect("put");
        }
        load.commit(true).expect("commit");
        let mut rng = Rng::new(7);
        let mut durable = Durable::default();
        group.throughput(Throughput::Elements(batch as u64));
        let name = format!("{}keys_{keys}_batch_{batch}", if memory { "mem_" } else { "" });
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut applying = store.begin().expect("a batch");
                for _ in 0..batch {
                    applying.put(&put(rng.range(0, keys))).expect("storage").expect("put");
                }
                applying.commit(durable.after(batch)).expect("commit");
            })
        });
    }
    group.finish();
}

/// One key put again and again, one put per batch (a lease holder's record, a leader election's
/// lock, a counter), after `history` earlier versions of it that no compaction has removed yet:
/// each batch starts from the key index the last commit published, so what the first change of
/// a key in a batch copies must not grow with the key's history.
fn apply_hot_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("mvcc_apply_hot_key_256B");
    group.throughput(Throughput::Elements(1));
    for history in [1_000u64, 100_000] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = MvccStore::open(&dir.path().join("kv.db")).expect("the store opens");
        let mut load = store.begin().expect("a batch");
        for _ in 0..history {
            load.put(&put(0)).expect("storage").expect("put");
        }
        load.commit(true).expect("commit");
        let mut durable = Durable::default();
        group.bench_function(format!("history_{history}"), |b| {
            b.iter(|| {
                let mut applying = store.begin().expect("a batch");
                applying.put(&put(0)).expect("storage").expect("put");
                applying.commit(durable.after(1)).expect("commit");
            })
        });
    }
    group.finish();
}

const BY_KEY: TableDefinition<(&[u8], i64), &[u8]> = TableDefinition::new("by_key");
const BY_REVISION: TableDefinition<i64, &[u8]> = TableDefinition::new("by_revision");

fn redb_layout(c: &mut Criterion) {
    const KEYS: u64 = 2_000;
    const BATCH: usize = 32;
    let mut group = c.benchmark_group("redb_layout_put_256B");
    group.throughput(Throughput::Elements(BATCH as u64));
    let value = vec![b'v'; VALUE_BYTES];
    for by_revision in [false, true] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = Database::builder()
            .set_cache_size(kuberaft::store::mvcc::engine::DEFAULT_CACHE_BYTES)
            .create(dir.path().join("layout.db"))
            .expect("the database opens");
        let mut revision = 0i64;
        let mut write = |db: &Database, keys: &mut dyn Iterator<Item = u64>, durable: bool| {
            let mut txn = db.begin_write().expect("write");
            txn.set_durability(if durable { Durability::Immediate } else { Durability::None }).expect("durability");
            {
                let mut by_key = txn.open_table(BY_KEY).expect("table");
                let mut by_rev = txn.open_table(BY_REVISION).expect("table");
                for n in keys {
                    revision += 1;
                    if by_revision {
                        by_rev.insert(revision, value.as_slice()).expect("insert");
                    } else {
                        by_key.insert((key(n).as_slice(), revision), value.as_slice()).expect("insert");
                    }
                }
            }
            txn.commit().expect("commit");
        };
        write(&db, &mut (0..KEYS), true);
        let mut rng = Rng::new(7);
        let mut durable = Durable::default();
        let name = if by_revision { "by_revision" } else { "by_key_and_revision" };
        group.bench_function(name, |b| {
            b.iter(|| {
                let due = durable.after(BATCH);
                let mut keys = (0..BATCH).map(|_| rng.range(0, KEYS));
                write(&db, &mut keys, due);
            })
        });
    }
    group.finish();
}

/// A put's fields with serde's default for `Vec<u8>`: the same encoding, read a byte at a time.
#[derive(Serialize, Deserialize)]
struct PlainPut {
    key: Vec<u8>,
    value: Vec<u8>,
    lease: i64,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
}

fn put_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("put_codec");
    for size in [256usize, 65_536] {
        let request = PutRequest { key: key(1), value: vec![b'v'; size], ..PutRequest::default() };
        let encoded = codec::encode(&request).expect("encodes");
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_function(format!("encode_bytes_{size}"), |b| b.iter(|| codec::encode(&request).expect("encodes")));
        let plain = codec::decode::<PlainPut>(&encoded).expect("the same encoding");
        // What `codec::encode` was: postcard's own growing `Vec`, each byte a call.
        group.bench_function(format!("encode_sequence_{size}"), |b| {
            b.iter(|| postcard::to_stdvec(&plain).expect("encodes"))
        });
        group.bench_function(format!("decode_bytes_{size}"), |b| {
            b.iter(|| codec::decode::<PutRequest>(&encoded).expect("decodes"))
        });
        group.bench_function(format!("decode_sequence_{size}"), |b| {
            b.iter(|| codec::decode::<PlainPut>(&encoded).expect("decodes"))
        });
    }
    group.finish();
}

criterion_group!(benches, apply_puts, apply_hot_key, redb_layout, put_codec);
criterion_main!(benches);

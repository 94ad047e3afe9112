//! The on-disk MVCC store: etcd v3's key-value semantics (the same as `model`, which it is
//! property-tested against) on redb, an embedded copy-on-write B-tree with MVCC transactions.
//!
//! Layout, format 2 (one redb file; see DESIGN.md §3):
//! - `hist`: `(main, sub)` revision → a row: the key's length (u32, big-endian), the key, then
//!   its record: `[0]` for a tombstone, or `[1]` then postcard of `(create_revision, version,
//!   lease)` then the value's bytes. A key has at most one row per main revision (the last
//!   change made to it in that revision, at the `sub` of its first); `sub` orders the keys a
//!   revision changed. Keyed by revision as etcd keys its bbolt bucket: a batch of writes
//!   appends to the table's end.
//! - the key index, in memory (`index`): for each key its rows, oldest first. It is rebuilt
//!   from `hist` at open; each read view keeps the copy that matches its database snapshot.
//! - `mvcc`: the engine's own numbers: `format`, `revision`, `compacted`, `commit` (counts
//!   commits, to pair an index with a snapshot), `reclaim-main`/`reclaim-sub` (where the
//!   reclaiming of compacted history goes on).
//! - `meta`: name → bytes, the state machine's own small records (applied index, term, members),
//!   written in the same transaction as the data they describe.
//!
//! Format 1 kept `kv`: `(key, main revision)` → record, and `revs`: `(main, sub)` → key. A store
//! of format 1, and a snapshot stream (which carries that layout), is converted at open.
//!
//! Reads take a redb read transaction, so they see the latest committed state and run on any
//! thread while a [`Batch`] (one redb write transaction) is open. A read at revision `R` takes,
//! for each key, its newest entry at or below `R`.
//!
//! Errors: etcd's refusals are [`MvccError`]; a failure of the storage is a [`StoreError`] (I/O,
//! a damaged record, a closed database), never a panic. Reads return both as [`ReadError`];
//! batch operations return `Result<Result<T, MvccError>, StoreError>`: the outer error means the
//! storage failed and the batch is unusable (its commit is refused), the inner one that etcd
//! refuses the operation and it changed nothing.

use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use redb::backends::InMemoryBackend;
use redb::{
    AccessGuard, Builder, Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, StorageBackend, Table, TableDefinition, TableHandle, WriteTransaction,
};

use super::check::{check_intervals, check_put, check_txn, KeySpan};
use super::index::{newest_in, Entry, KeyIndex};
use super::types::*;
use crate::store::codec;
use crate::store::StoreError;

/// `(main, sub)` → row (key and record).
pub(crate) const HIST: TableDefinition<(i64, u32), &[u8]> = TableDefinition::new("hist");
/// Format 1: `(key, main revision)` → record.
pub(crate) const KV: TableDefinition<(&[u8], i64), &[u8]> = TableDefinition::new("kv");
/// Format 1: `(main, sub)` → key.
pub(crate) const REVS: TableDefinition<(i64, u32), &[u8]> = TableDefinition::new("revs");
/// The engine's numbers.
pub(crate) const STATE: TableDefinition<&str, i64> = TableDefinition::new("mvcc");
/// The state machine's records.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The layout this version writes (`mvcc` table, `format`).
pub(crate) const FORMAT: i64 = 2;
/// The layout snapshot streams carry, and which this version converts at open.
pub(crate) const FORMAT_1: i64 = 1;
/// The largest revision (and version) a store, a record or a snapshot may hold: far beyond
/// any real history (2^62 writes), and far enough below `i64::MAX` that counting on from it
/// cannot overflow. Larger numbers come only from damage, and are refused as such.
pub(crate) const MAX_REVISION: Revision = 1 << 62;
pub(crate) const FORMAT_NAME: &str = "format";
pub(crate) const REVISION_NAME: &str = "revision";
pub(crate) const COMPACTED_NAME: &str = "compacted";
const COMMIT_NAME: &str = "commit";
const RECLAIM_MAIN_NAME: &str = "reclaim-main";
const RECLAIM_SUB_NAME: &str = "reclaim-sub";

/// redb's page cache (half of it at most is its write buffer). redb's default (1 GiB) would let
/// the cache, not the working set, set the member's memory. It is small on purpose: the
/// operating system's page cache keeps the file's pages anyway (a miss here is a `pread` from
/// memory), and pages in redb's write buffer reach the file only at the durable commit before a
/// log compaction, on the Raft thread, while pages past it are written back in the background
/// (`node::runtime::Writeback`). At 1M keys of 1 KiB that commit took 183 ms with 64 MiB and
/// 26 ms with 8 MiB (engine alone, 10k random overwrites between durable commits).
pub const DEFAULT_CACHE_BYTES: usize = 8 << 20;

/// How many `hist` rows compaction's reclaiming looks at a time (bounds its memory, and the time the
/// Raft loop spends in one step: a step is never cut short, and at 1M keys, with the file's pages
/// partly out of the page cache, steps of 1024 held the loop for seconds and cost elections).
pub(crate) const COMPACT_CHUNK: usize = 128;

/// `meta` names of the leases: `lease/<id, 16 hex digits>` → postcard of `(ttl, remaining_ms)`.
const LEASE_PREFIX: &str = "lease/";
/// `meta` names of the keys put with a lease: `lease-key/<id>/<key in hex>` → nothing. An entry
/// is added at each put with the lease and never updated: the key may have been deleted or put
/// with another lease since, so a reader keeps only the keys whose current version carries the
/// lease. Hex keeps the names in the keys' byte order (a revoke deletes in key order, as etcd).
const LEASE_KEY_PREFIX: &str = "lease-key/";

fn lease_name(id: i64) -> String {
    format!("{LEASE_PREFIX}{:016x}", id as u64)
}

fn lease_keys_prefix(id: i64) -> String {
    format!("{LEASE_KEY_PREFIX}{:016x}/", id as u64)
}

fn lease_key_name(id: i64, key: &[u8]) -> String {
    let mut name = lease_keys_prefix(id);
    for b in key {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// The end (excluded) of the `meta` names that start with `prefix`, which ends in '/'.
fn prefix_end_name(prefix: &str) -> String {
    format!("{}0", &prefix[..prefix.len() - 1])
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn decode_lease(place: &Place, id: i64, bytes: &[u8]) -> Result<Lease, StoreError> {
    let (ttl, remaining_ms) =
        codec::decode::<(i64, i64)>(bytes).map_err(|e| place.corrupt(format!("lease {id:x}: {e}")))?;
    Ok(Lease { id, ttl, remaining_ms })
}

/// The leases in a `meta` table, by id.
fn read_leases<T: ReadableTable<&'static str, &'static [u8]>>(
    meta: &T,
    place: &Place,
) -> Result<Vec<Lease>, StoreError> {
    let mut leases = Vec::new();
    let end = prefix_end_name(LEASE_PREFIX);
    for entry in meta.range::<&str>(LEASE_PREFIX..end.as_str()).at(place, READ)? {
        let (name, value) = entry.at(place, READ)?;
        let hex = &name.value()[LEASE_PREFIX.len()..];
        let id = u64::from_str_radix(hex, 16).map_err(|_| place.corrupt(format!("a lease named {hex:?}")))? as i64;
        leases.push(decode_lease(place, id, value.value())?);
    }
    leases.sort_by_key(|l| l.id);
    Ok(leases)
}

/// The keys whose version at `rev` carries lease `id`, in key order.
fn read_lease_keys<M, K>(
    meta: &M,
    kv: &Hist<'_, K>,
    place: &Place,
    id: i64,
    rev: Revision,
) -> Result<Vec<Vec<u8>>, StoreError>
where
    M: ReadableTable<&'static str, &'static [u8]>,
    K: Rows,
{
    let prefix = lease_keys_prefix(id);
    let end = prefix_end_name(&prefix);
    let mut keys = Vec::new();
    for entry in meta.range::<&str>(prefix.as_str()..end.as_str()).at(place, READ)? {
        let (name, _) = entry.at(place, READ)?;
        let hex = &name.value()[prefix.len()..];
        let key = unhex(hex).ok_or_else(|| place.corrupt(format!("a leased key named {hex:?}")))?;
        if let Some((r, v)) = newest_entry(kv, place, &key, rev)? {
            if let Some(found) = key_value(place, &key, r, v.value(), false)? {
                if found.lease == id {
                    keys.push(key);
                }
            }
        }
    }
    Ok(keys)
}

const TOMBSTONE: &[u8] = &[0];
const LIVE: u8 = 1;

/// A read that etcd refused, or that the storage failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl ReadError {
    /// Splits into the batch operations' shape: outer storage failure, inner refusal.
    fn split<T>(res: Result<T, ReadError>) -> Result<Result<T, MvccError>, StoreError> {
        match res {
            Ok(v) => Ok(Ok(v)),
            Err(ReadError::Mvcc(e)) => Ok(Err(e)),
            Err(ReadError::Storage(e)) => Err(e),
        }
    }
}

/// Where the database lives, for error messages.
#[derive(Clone, Debug)]
pub(crate) struct Place(Arc<PathBuf>);

impl Place {
    pub(crate) fn new(path: &Path) -> Place {
        Place(Arc::new(path.to_path_buf()))
    }

    pub(crate) fn memory() -> Place {
        Place::new(Path::new("(in memory)"))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn fail(&self, action: &'static str, e: impl Into<redb::Error>) -> StoreError {
        let path = self.0.to_path_buf();
        match e.into() {
            redb::Error::Io(source) => StoreError::Io { action, path, source },
            redb::Error::Corrupted(detail) => StoreError::Corrupt { path, offset: 0, detail },
            redb::Error::DatabaseAlreadyOpen => StoreError::Locked { path },
            other => StoreError::Database { action, path, detail: other.to_string() },
        }
    }

    pub(crate) fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::corrupt(&self.0, 0, detail)
    }
}

/// `.at(place, action)`: a redb result as a `StoreError` result.
pub(crate) trait At<T> {
    fn at(self, place: &Place, action: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> At<T> for Result<T, E> {
    fn at(self, place: &Place, action: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| place.fail(action, e))
    }
}

pub(super) const READ: &str = "read the state-machine database";
const WRITE: &str = "write the state-machine database";

/// A record (of a `hist` row), decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    Tombstone,
    Live { create_revision: Revision, version: i64, lease: i64, value: &'a [u8] },
}

impl<'a> Record<'a> {
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Record<'a>, String> {
        match bytes {
            [0] => Ok(Record::Tombstone),
            [LIVE, rest @ ..] => {
                let ((create_revision, version, lease), value) =
                    codec::decode_prefix::<(i64, i64, i64)>(rest).map_err(|e| e.to_string())?;
                if !(1..=MAX_REVISION).contains(&create_revision) || !(1..=MAX_REVISION).contains(&version) {
                    return Err(format!("impossible create revision {create_revision} or version {version}"));
                }
                Ok(Record::Live { create_revision, version, lease, value })
            }
            [] => Err("empty record".to_string()),
            [tag, ..] => Err(format!("unknown record kind {tag} of {} bytes", bytes.len())),
        }
    }

    /// The record of a version at revision `rev`: as `decode`, and refused when it says it was
    /// created after `rev`.
    pub(crate) fn decode_at(bytes: &'a [u8], rev: Revision) -> Result<Record<'a>, String> {
        match Record::decode(bytes)? {
            Record::Live { create_revision, .. } if create_revision > rev => {
                Err(format!("created later, at {create_revision}"))
            }
            record => Ok(record),
        }
    }

    pub(crate) fn is_live(bytes: &[u8]) -> Result<bool, String> {
        Record::decode(bytes).map(|r| matches!(r, Record::Live { .. }))
    }

    /// Appends a live version's record to `out`.
    fn encode_live_into(out: &mut Vec<u8>, create_revision: Revision, version: i64, lease: i64, value: &[u8]) {
        out.push(LIVE);
        // Three integers cannot fail to encode.
        let _ = codec::encode_into(&(create_revision, version, lease), out);
        out.extend_from_slice(value);
    }
}

/// Decodes the record of `key` at `rev`; `with_value` false leaves the value empty.
pub(super) fn key_value(
    place: &Place,
    key: &[u8],
    rev: Revision,
    bytes: &[u8],
    with_value: bool,
) -> Result<Option<KeyValue>, StoreError> {
    match Record::decode_at(bytes, rev) {
        Ok(Record::Tombstone) => Ok(None),
        Ok(Record::Live { create_revision, version, lease, value }) => Ok(Some(KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: rev,
            version,
            value: if with_value { value.to_vec() } else { Vec::new() },
            lease,
        })),
        Err(detail) => {
            Err(place.corrupt(format!("key {:?} at revision {rev}: {detail}", String::from_utf8_lossy(key))))
        }
    }
}

/// What every store keeps in memory, updated after each commit: the numbers of `revision()`
/// and `compacted_revision()`, and the key index of the last commit.
#[derive(Debug)]
struct Shared {
    revision: AtomicI64,
    compacted: AtomicI64,
    index: Mutex<KeyIndex>,
}

impl Shared {
    fn index(&self) -> KeyIndex {
        self.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn publish(&self, index: KeyIndex) {
        *self.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = index;
    }
}

/// How often a reader or a writer looks again for the key index of the commit its transaction
/// shows. The index is published right after the commit returns, so a second look almost always
/// finds it; a thread that is descheduled in between can take a few.
const PAIR_TRIES: usize = 100_000;

/// Where the reclaiming of compacted history is: the next `hist` row to look at.
type ReclaimPos = (Revision, u32);

/// The engine's numbers as the `mvcc` table holds them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StateNumbers {
    revision: Revision,
    compacted: Revision,
    commit: i64,
    reclaim: ReclaimPos,
}

fn read_numbers<T: ReadableTable<&'static str, i64>>(state: &T, place: &Place) -> Result<StateNumbers, StoreError> {
    let (revision, compacted) =
        read_state(state, place)?.ok_or_else(|| place.corrupt("the MVCC state (revision, format) is missing"))?;
    let get =
        |name: &str| -> Result<Option<i64>, StoreError> { Ok(state.get(name).at(place, READ)?.map(|v| v.value())) };
    let commit = get(COMMIT_NAME)?.unwrap_or(0);
    let reclaim = match (get(RECLAIM_MAIN_NAME)?, get(RECLAIM_SUB_NAME)?) {
        (Some(main), Some(sub)) => {
            (main, u32::try_from(sub).map_err(|_| place.corrupt(format!("impossible reclaim position {sub}")))?)
        }
        _ => (compacted.saturating_add(1), 0),
    };
    Ok(StateNumbers { revision, compacted, commit, reclaim })
}

/// etcd's MVCC key-value store on redb. Share it (`Arc`) between the thread that writes through
/// [`Batch`]es and the threads that read.
pub struct MvccStore {
    db: Database,
    place: Place,
    shared: Arc<Shared>,
    max_txn_ops: usize,
}

impl fmt::Debug for MvccStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MvccStore")
            .field("path", &self.place.path())
            .field("revision", &self.revision())
            .field("compacted", &self.compacted_revision())
            .finish()
    }
}

impl MvccStore {
    /// Opens the store in the redb file `path`, creating it if it does not exist.
    pub fn open(path: &Path) -> Result<MvccStore, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// The same with another page cache size.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<MvccStore, StoreError> {
        let place = Place::new(path);
        let db =
            Builder::new().set_cache_size(cache_bytes).create(path).at(&place, "open the state-machine database")?;
        Self::init(db, place)
    }

    /// An empty store in memory (redb's `InMemoryBackend`), for tests and benchmarks.
    pub fn in_memory() -> MvccStore {
        Self::with_backend(InMemoryBackend::new(), Place::memory())
            .expect("an empty in-memory redb database always opens")
    }

    /// A store on any redb backend (the crash tests use one that forgets unsynced writes).
    pub(crate) fn with_backend(backend: impl StorageBackend, place: Place) -> Result<MvccStore, StoreError> {
        let db = Builder::new()
            .set_cache_size(DEFAULT_CACHE_BYTES)
            .create_with_backend(backend)
            .at(&place, "open the state-machine database")?;
        Self::init(db, place)
    }

    /// Checks the layout of an opened database, or lays it out in an empty one; converts a
    /// store of format 1, and builds the key index.
    pub(crate) fn init(db: Database, place: Place) -> Result<MvccStore, StoreError> {
        let txn = db.begin_write().at(&place, WRITE)?;
        let (numbers, index) = {
            let mut state = txn.open_table(STATE).at(&place, "open the table mvcc")?;
            let format = state.get(FORMAT_NAME).at(&place, READ)?.map(|v| v.value());
            match format {
                None => {
                    let names: Vec<String> =
                        txn.list_tables().at(&place, READ)?.map(|t| t.name().to_string()).collect();
                    let mut empty = true;
                    for name in names {
                        empty &= match name.as_str() {
                            "kv" => txn.open_table(KV).at(&place, READ)?.is_empty().at(&place, READ)?,
                            "revs" => txn.open_table(REVS).at(&place, READ)?.is_empty().at(&place, READ)?,
                            "hist" => txn.open_table(HIST).at(&place, READ)?.is_empty().at(&place, READ)?,
                            "meta" => txn.open_table(META).at(&place, READ)?.is_empty().at(&place, READ)?,
                            _ => true,
                        };
                    }
                    if !empty {
                        return Err(StoreError::Inconsistent {
                            path: place.path().to_path_buf(),
                            detail: "the database holds keys but no MVCC state (revision, format)".to_string(),
                        });
                    }
                    state.insert(FORMAT_NAME, FORMAT).at(&place, WRITE)?;
                    state.insert(REVISION_NAME, 1).at(&place, WRITE)?;
                    state.insert(COMPACTED_NAME, -1).at(&place, WRITE)?;
                }
                Some(FORMAT_1) => {
                    let (_, compacted) = read_state(&state, &place)?
                        .ok_or_else(|| place.corrupt("the MVCC state (revision, format) is missing"))?;
                    migrate_format_1(&txn, &place, compacted)?;
                    state.insert(FORMAT_NAME, FORMAT).at(&place, WRITE)?;
                    state.insert(RECLAIM_MAIN_NAME, compacted.saturating_add(1)).at(&place, WRITE)?;
                    state.insert(RECLAIM_SUB_NAME, 0).at(&place, WRITE)?;
                }
                Some(_) => {}
            }
            let numbers = read_numbers(&state, &place)?;
            let hist = txn.open_table(HIST).at(&place, "open the table hist")?;
            txn.open_table(META).at(&place, "open the table meta")?;
            let index = build_index(&hist, &place, numbers.commit)?;
            (numbers, index)
        };
        txn.commit().at(&place, "commit to the state-machine database")?;
        Ok(MvccStore {
            db,
            place,
            shared: Arc::new(Shared {
                revision: AtomicI64::new(numbers.revision),
                compacted: AtomicI64::new(numbers.compacted),
                index: Mutex::new(index),
            }),
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
        })
    }

    /// The same store with another limit on ops per txn level (etcd's `--max-txn-ops`).
    pub fn with_max_txn_ops(mut self, max_txn_ops: usize) -> MvccStore {
        self.max_txn_ops = max_txn_ops;
        self
    }

    /// The current revision (1 for an empty store), as of the last commit.
    pub fn revision(&self) -> Revision {
        self.shared.revision.load(AtomicOrdering::Acquire)
    }

    /// The revision of the last compaction, -1 if there was none, as of the last commit.
    pub fn compacted_revision(&self) -> Revision {
        self.shared.compacted.load(AtomicOrdering::Acquire)
    }

    /// Where the store lives (`(in memory)` for one in memory).
    pub fn path(&self) -> &Path {
        self.place.path()
    }

    /// Rewrites the database file without the free space that reclaimed history left (etcd's
    /// defragment): redb moves pages down and shrinks the file, in durable commits. `Ok(false)`:
    /// a reader still holds a read transaction (a range, a snapshot being sent), so nothing was
    /// done; try again once it is over. Bounded: at most `DEFRAG_ROUNDS` compaction passes.
    pub fn defragment(&mut self) -> Result<bool, StoreError> {
        const DEFRAG_ROUNDS: usize = 64;
        for _ in 0..DEFRAG_ROUNDS {
            match self.db.compact() {
                Ok(true) => {}
                Ok(false) => return Ok(true),
                Err(redb::CompactionError::TransactionInProgress) => return Ok(false),
                Err(e) => return Err(self.place.fail("defragment the state-machine database", e)),
            }
        }
        Ok(true)
    }

    #[cfg(test)]
    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Checks that the published key index is the one `hist` gives (for tests).
    #[cfg(test)]
    pub(crate) fn check_index(&self) {
        let view = self.read_view().unwrap();
        let rows = view.txn.open_table(HIST).unwrap();
        let built = build_index(&rows, &self.place, view.index.commit).unwrap();
        assert!(built == view.index, "the key index is not the one the rows give");
    }

    /// A range at the latest committed state.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ReadError> {
        self.read_view()?.range(req)
    }

    /// A point-in-time view of the latest committed state. It is cheap to take, and ranges over
    /// it need nothing of the store: a caller that holds the store under a lock takes the view
    /// under it and ranges after releasing it, so a long range never holds back a writer.
    pub fn read_view(&self) -> Result<ReadView, StoreError> {
        for _ in 0..PAIR_TRIES {
            // The index first: a commit after it shows in the transaction as a newer number.
            let index = self.shared.index();
            let txn = self.db.begin_read().at(&self.place, READ)?;
            let commit = read_numbers(&txn.open_table(STATE).at(&self.place, READ)?, &self.place)?.commit;
            if commit == index.commit {
                return Ok(ReadView { txn, place: self.place.clone(), index });
            }
            std::thread::yield_now();
        }
        Err(self.unpaired())
    }

    fn unpaired(&self) -> StoreError {
        StoreError::Database {
            action: READ,
            path: self.place.path().to_path_buf(),
            detail: "the key index of the last commit was not published".to_string(),
        }
    }

    /// Whether a compaction left history to reclaim (`Batch::compact_step`), as of the last
    /// commit.
    pub fn compaction_pending(&self) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().at(&self.place, READ)?;
        let numbers = read_numbers(&txn.open_table(STATE).at(&self.place, READ)?, &self.place)?;
        Ok(numbers.reclaim.0 <= numbers.compacted)
    }

    /// A state-machine record at the latest committed state.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().at(&self.place, READ)?;
        let meta = txn.open_table(META).at(&self.place, READ)?;
        let value = meta.get(name).at(&self.place, READ)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Starts a write batch: one redb write transaction (a second one waits for this one to end).
    pub fn begin(&self) -> Result<Batch, StoreError> {
        let txn = self.db.begin_write().at(&self.place, WRITE)?;
        let numbers = read_numbers(&txn.open_table(STATE).at(&self.place, WRITE)?, &self.place)?;
        // The batch before may have released the database before publishing its index.
        for _ in 0..PAIR_TRIES {
            let index = self.shared.index();
            if index.commit == numbers.commit {
                return Ok(Batch {
                    txn,
                    place: self.place.clone(),
                    shared: self.shared.clone(),
                    revision: numbers.revision,
                    compacted: numbers.compacted,
                    commit: numbers.commit,
                    reclaim: numbers.reclaim,
                    index,
                    max_txn_ops: self.max_txn_ops,
                    failed: None,
                });
            }
            std::thread::yield_now();
        }
        Err(self.unpaired())
    }
}

/// One redb read transaction over the store: the state as of the commit before it was taken,
/// whatever is written after (see [`MvccStore::read_view`]).
pub struct ReadView {
    pub(super) txn: ReadTransaction,
    pub(super) place: Place,
    pub(super) index: KeyIndex,
}

impl ReadView {
    /// An etcd range over this view.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ReadError> {
        self.range_kept(req, usize::MAX)
    }

    /// An etcd range over this view with at most `keep` of its keys (the first `keep` of
    /// etcd's answer; `more` and `count` are etcd's): memory for `keep` keys, however many the
    /// range holds or sorts.
    pub fn range_kept(&self, req: &RangeRequest, keep: usize) -> Result<RangeResponse, ReadError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey.into());
        }
        let state = self.txn.open_table(STATE).at(&self.place, READ)?;
        let (current, compacted) = read_state(&state, &self.place)?
            .ok_or_else(|| self.place.corrupt("the MVCC state (revision, format) is missing"))?;
        let rows = self.txn.open_table(HIST).at(&self.place, READ)?;
        range_at(&Hist { index: &self.index, rows: &rows }, &self.place, req, current, compacted, keep)
    }
}

/// etcd's HashKV answer: the hash, and the store's revisions when it was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKv {
    pub hash: u32,
    pub current: Revision,
    pub compacted: Revision,
}

impl ReadView {
    /// etcd's HashKV: a CRC-32 over the key history this store keeps up to `revision` (0 or
    /// less: the current one), equal on members that applied the same log whatever their
    /// physical compaction has reclaimed. As etcd hashes: every entry above the compacted
    /// revision up to `revision` (tombstones too), and below it only each key's newest entry at
    /// or below `revision` when that entry is live. Each entry is hashed as its key's length and
    /// bytes, its revision and its record. Reads the whole history once, in one read transaction,
    /// holding one entry at a time. Refuses a revision below the compacted one or above the
    /// current one, as etcd does (a revision equal to the compacted one too).
    pub fn hash_kv(&self, revision: Revision) -> Result<HashKv, ReadError> {
        let state = self.txn.open_table(STATE).at(&self.place, READ)?;
        let (current, compacted) = read_state(&state, &self.place)?
            .ok_or_else(|| self.place.corrupt("the MVCC state (revision, format) is missing"))?;
        if revision > 0 && revision <= compacted {
            return Err(MvccError::Compacted.into());
        }
        if revision > current {
            return Err(MvccError::FutureRev.into());
        }
        let at = if revision <= 0 { current } else { revision };
        let rows = self.txn.open_table(HIST).at(&self.place, READ)?;
        let mut hasher = crc32fast::Hasher::new();
        // The table's name first, as etcd hashes its bucket's: an empty history hashes to no 0.
        hasher.update(b"kv");
        let mut add = |key: &[u8], entry: Entry| -> Result<(), StoreError> {
            let row = fetch(&rows, &self.place, key, entry)?;
            hasher.update(&(key.len() as u64).to_be_bytes());
            hasher.update(key);
            hasher.update(&entry.main.to_be_bytes());
            hasher.update(row.value());
            Ok(())
        };
        for (key, versions) in self.index.iter() {
            // Of the entries at or below the compacted revision, only the newest, and only when
            // it is live and the key changed no more up to `at`: etcd leaves out the others.
            let newer = versions.iter().any(|e| e.main > compacted && e.main <= at);
            if !newer {
                if let Some(kept) = newest_in(versions, compacted).filter(|e| !e.tombstone) {
                    add(key, kept)?;
                }
            }
            for entry in versions.iter().filter(|e| e.main > compacted && e.main <= at) {
                add(key, *entry)?;
            }
        }
        Ok(HashKv { hash: hasher.finalize(), current, compacted })
    }
}

impl ReadView {
    /// Every lease, by id.
    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let meta = self.txn.open_table(META).at(&self.place, READ)?;
        read_leases(&meta, &self.place)
    }

    /// Lease `id`, if it exists.
    pub fn lease(&self, id: i64) -> Result<Option<Lease>, StoreError> {
        let meta = self.txn.open_table(META).at(&self.place, READ)?;
        match meta.get(lease_name(id).as_str()).at(&self.place, READ)? {
            Some(v) => Ok(Some(decode_lease(&self.place, id, v.value())?)),
            None => Ok(None),
        }
    }

    /// The keys whose current version carries lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        let state = self.txn.open_table(STATE).at(&self.place, READ)?;
        let (current, _) = read_state(&state, &self.place)?
            .ok_or_else(|| self.place.corrupt("the MVCC state (revision, format) is missing"))?;
        let meta = self.txn.open_table(META).at(&self.place, READ)?;
        let rows = self.txn.open_table(HIST).at(&self.place, READ)?;
        read_lease_keys(&meta, &Hist { index: &self.index, rows: &rows }, &self.place, id, current)
    }
}

/// The engine's numbers from the `mvcc` table: `(revision, compacted)`, `None` for a new
/// database; a foreign or newer format, or impossible numbers, are errors.
pub(crate) fn read_state<T: ReadableTable<&'static str, i64>>(
    state: &T,
    place: &Place,
) -> Result<Option<(Revision, Revision)>, StoreError> {
    check_state(|name| Ok(state.get(name).at(place, READ)?.map(|v| v.value())), place)
}

/// The revision and compacted revision that the `state` records (`get` reads one by name)
/// hold, checked; `None` without a format record (an empty store).
pub(crate) fn check_state(
    get: impl Fn(&str) -> Result<Option<i64>, StoreError>,
    place: &Place,
) -> Result<Option<(Revision, Revision)>, StoreError> {
    let Some(format) = get(FORMAT_NAME)? else { return Ok(None) };
    if format > FORMAT {
        return Err(StoreError::NewerFormat {
            path: place.path().to_path_buf(),
            detail: format!("the state-machine database has format {format}, this version reads {FORMAT}"),
        });
    }
    if format != FORMAT && format != FORMAT_1 {
        return Err(StoreError::Inconsistent {
            path: place.path().to_path_buf(),
            detail: format!("the state-machine database has format {format}, which no kuberaft writes"),
        });
    }
    let (Some(revision), Some(compacted)) = (get(REVISION_NAME)?, get(COMPACTED_NAME)?) else {
        return Err(place.corrupt("the MVCC revision or compacted revision is missing"));
    };
    if !(1..=MAX_REVISION).contains(&revision) || compacted > revision || compacted < -1 {
        return Err(place.corrupt(format!("impossible revisions: current {revision}, compacted {compacted}")));
    }
    Ok(Some((revision, compacted)))
}

// ----- Format 2: the key index, and the conversion from format 1 -----

/// The `sub` after the last row of `main` (0 for none).
fn next_sub<T: Rows>(rows: &T, place: &Place, main: Revision) -> Result<u32, StoreError> {
    match rows.range::<(i64, u32)>((main, 0)..=(main, u32::MAX)).at(place, READ)?.next_back() {
        None => Ok(0),
        Some(row) => {
            let sub = row.at(place, READ)?.0.value().1;
            sub.checked_add(1).ok_or_else(|| place.corrupt(format!("revision {main} is full")))
        }
    }
}

/// The key index of `hist` (reads every row once, in revision order), for commit `commit`.
fn build_index<T: Rows>(rows: &T, place: &Place, commit: i64) -> Result<KeyIndex, StoreError> {
    let mut index = KeyIndex::default();
    index.commit = commit;
    for row in rows.iter().at(place, READ)? {
        let (pos, value) = row.at(place, READ)?;
        let (main, sub) = pos.value();
        let (key, record) =
            split_row(value.value()).map_err(|d| place.corrupt(format!("revision {main} ({sub}): {d}")))?;
        if !(1..=MAX_REVISION).contains(&main) {
            return Err(place.corrupt(format!("a row at impossible revision {main}")));
        }
        let entry = match Record::decode_at(record, main) {
            Ok(Record::Tombstone) => Entry::tombstone(main, sub),
            Ok(Record::Live { create_revision, version, .. }) => Entry::live(main, sub, create_revision, version),
            Err(d) => return Err(place.corrupt(format!("revision {main} ({sub}): {d}"))),
        };
        if index.record(key, entry).is_none() {
            return Err(
                place.corrupt(format!("key {:?} has two rows at revision {main}", String::from_utf8_lossy(key)))
            );
        }
    }
    Ok(index)
}

/// Converts the tables of format 1 (`kv`, `revs`) in `txn` into `hist`, and deletes them. The
/// history that compaction made unreadable is left behind as the reclaiming would: of each
/// key's versions at or below `compacted` only the newest, and that one only when live. Their
/// `sub` is made up (in key order within a revision), as `revs` no longer has it: no read sees
/// the order of keys within a revision at or below the compacted one.
///
/// Every row is appended at the table's end, in order (as the snapshot installer appends): the
/// kept versions are sorted by revision in memory first, as (revision, key) pairs without their
/// values, about as much memory as the key index that is built next anyway.
fn migrate_format_1(txn: &WriteTransaction, place: &Place, compacted: Revision) -> Result<(), StoreError> {
    let action = "convert the state-machine database to format 2";
    let mut rows = txn.open_table(HIST).at(place, action)?;
    if !rows.is_empty().at(place, action)? {
        return Err(place.corrupt("a database of format 1 with rows of format 2"));
    }
    {
        let kv = txn.open_table(KV).at(place, action)?;
        let revs = txn.open_table(REVS).at(place, action)?;
        // Each key's newest version at or below `compacted`, in key order; the dead ones go.
        let mut kept: Vec<(Revision, Vec<u8>)> = Vec::new();
        let mut held: Option<(Vec<u8>, Revision, bool)> = None;
        for entry in kv.range::<(&[u8], i64)>(..).at(place, action)? {
            let (k, v) = entry.at(place, action)?;
            let (key, rev) = k.value();
            if rev > compacted {
                continue;
            }
            let live = Record::is_live(v.value()).map_err(|d| place.corrupt(format!("revision {rev}: {d}")))?;
            if let Some((k, r, true)) = held.take_if(|(k, _, _)| k.as_slice() != key) {
                kept.push((r, k));
            }
            held = Some((key.to_vec(), rev, live));
        }
        if let Some((k, r, true)) = held {
            kept.push((r, k));
        }
        kept.sort();
        let mut end = rows.upper_bound_mut(std::ops::Bound::<(i64, u32)>::Unbounded).at(place, action)?;
        let mut last: Option<(Revision, u32)> = None;
        for (main, key) in kept {
            let sub = match last {
                Some((m, s)) if m == main => s + 1,
                _ => 0,
            };
            last = Some((main, sub));
            let record = kv.get((key.as_slice(), main)).at(place, action)?.ok_or_else(|| {
                place.corrupt(format!("revision {main} of key {:?} is gone", String::from_utf8_lossy(&key)))
            })?;
            end.insert_before((main, sub), encode_row(&key, record.value()).as_slice()).at(place, action)?;
        }
        // Every version above `compacted`, where `revs` places it.
        for entry in revs.range::<(i64, u32)>((compacted.saturating_add(1), 0)..).at(place, action)? {
            let (pos, key) = entry.at(place, action)?;
            let (main, sub) = pos.value();
            let key = key.value();
            let record = kv.get((key, main)).at(place, action)?.ok_or_else(|| {
                place.corrupt(format!(
                    "revision {main} lists key {:?}, which has no entry there",
                    String::from_utf8_lossy(key)
                ))
            })?;
            end.insert_before((main, sub), encode_row(key, record.value()).as_slice()).at(place, action)?;
        }
        end.close().at(place, action)?;
    }
    txn.delete_table(KV).at(place, action)?;
    txn.delete_table(REVS).at(place, action)?;
    Ok(())
}

// ----- Reads, over read-only and write tables alike -----

/// A `hist` table, read-only or being written.
pub(crate) trait Rows: ReadableTable<(i64, u32), &'static [u8]> {}
impl<T: ReadableTable<(i64, u32), &'static [u8]>> Rows for T {}

/// The history: a `hist` table and the key index that matches it.
pub(crate) struct Hist<'a, T> {
    pub(crate) index: &'a KeyIndex,
    pub(crate) rows: &'a T,
}

/// A row of `hist`: a key and its record.
pub(crate) fn encode_row(key: &[u8], record: &[u8]) -> Vec<u8> {
    let mut row = row_of(key, record.len());
    row.extend_from_slice(record);
    row
}

/// The row of a live version, its value copied once (not into a record, then into the row).
pub(crate) fn live_row(key: &[u8], create_revision: Revision, version: i64, lease: i64, value: &[u8]) -> Vec<u8> {
    // The tag and three integers of at most 10 bytes each.
    let mut row = row_of(key, 31 + value.len());
    Record::encode_live_into(&mut row, create_revision, version, lease, value);
    row
}

/// A row's start, the key, with room for a record of `record` bytes after it.
fn row_of(key: &[u8], record: usize) -> Vec<u8> {
    let mut row = Vec::with_capacity(4 + key.len() + record);
    // redb keeps keys and values below 4 GiB, and keys are far smaller still.
    row.extend_from_slice(&(key.len() as u32).to_be_bytes());
    row.extend_from_slice(key);
    row
}

/// The key and the record of a `hist` row.
pub(crate) fn split_row(row: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let Some((len, rest)) = row.split_first_chunk::<4>() else {
        return Err(format!("a row of {} bytes", row.len()));
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len == 0 || len > rest.len() {
        return Err(format!("a row of {} bytes with a key of {len}", row.len()));
    }
    Ok(rest.split_at(len))
}

/// A key's record as read from `hist` (a tombstone is known from the index, and not read).
pub(crate) enum Row<'t> {
    Tombstone,
    Stored { guard: AccessGuard<'t, &'static [u8]>, at: usize },
}

impl Row<'_> {
    /// The record's bytes.
    pub(crate) fn value(&self) -> &[u8] {
        match self {
            Row::Tombstone => TOMBSTONE,
            Row::Stored { guard, at } => &guard.value()[*at..],
        }
    }
}

/// The row of `key`'s version `entry`, checked to be that key's.
fn fetch<'t, T: Rows>(rows: &'t T, place: &Place, key: &[u8], entry: Entry) -> Result<Row<'t>, StoreError> {
    if entry.tombstone {
        return Ok(Row::Tombstone);
    }
    let missing = || {
        place.corrupt(format!(
            "key {:?} has no row at revision {} ({})",
            String::from_utf8_lossy(key),
            entry.main,
            entry.sub
        ))
    };
    let guard = rows.get((entry.main, entry.sub)).at(place, READ)?.ok_or_else(missing)?;
    let at = match split_row(guard.value()) {
        Ok((k, _)) if k == key => 4 + key.len(),
        Ok(_) => return Err(missing()),
        Err(detail) => return Err(place.corrupt(format!("revision {} ({}): {detail}", entry.main, entry.sub))),
    };
    Ok(Row::Stored { guard, at })
}

/// A key's newest entry at or below some revision: its revision and raw record.
type Newest<'t> = Option<(Revision, Row<'t>)>;

/// The newest entry of `key` at or below `rev`: its revision and raw record.
pub(crate) fn newest_entry<'t, T: Rows>(
    h: &Hist<'t, T>,
    place: &Place,
    key: &[u8],
    rev: Revision,
) -> Result<Newest<'t>, StoreError> {
    match h.index.newest(key, rev) {
        None => Ok(None),
        Some(entry) => Ok(Some((entry.main, fetch(h.rows, place, key, entry)?))),
    }
}

/// Calls `visit(key, revision, record)` with the newest entry at or below `rev` (a tombstone
/// too) of each key in `span` that has one, in key order, until it breaks.
fn for_each_newest<T, F>(
    h: &Hist<'_, T>,
    place: &Place,
    span: &KeySpan<'_>,
    rev: Revision,
    mut visit: F,
) -> Result<(), ReadError>
where
    T: Rows,
    F: FnMut(&[u8], Revision, &[u8]) -> Result<ControlFlow<()>, ReadError>,
{
    for (key, versions) in h.index.span(span) {
        let Some(entry) = newest_in(versions, rev) else { continue };
        let row = fetch(h.rows, place, key, entry)?;
        if visit(key, entry.main, row.value())?.is_break() {
            return Ok(());
        }
    }
    Ok(())
}

fn corrupt_record(place: &Place, key: &[u8], rev: Revision, detail: String) -> ReadError {
    ReadError::Storage(place.corrupt(format!("key {:?} at revision {rev}: {detail}", String::from_utf8_lossy(key))))
}

/// etcd's range at `rev`, with at most `keep` of its keys: the first `keep` of etcd's answer,
/// with etcd's `more` and `count`. Memory holds at most `keep` keys (with `limit`, at most
/// `limit`) however many the range spans: sorting keeps the best ones seen so far, not all.
fn range_at<T>(
    kv: &Hist<'_, T>,
    place: &Place,
    req: &RangeRequest,
    current: Revision,
    compacted: Revision,
    keep: usize,
) -> Result<RangeResponse, ReadError>
where
    T: Rows,
{
    if req.revision > current {
        return Err(MvccError::FutureRev.into());
    }
    let rev = if req.revision <= 0 { current } else { req.revision };
    if rev < compacted {
        return Err(MvccError::Compacted.into());
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let limit = if req.limit > 0 { usize::try_from(req.limit).unwrap_or(usize::MAX) } else { usize::MAX };
    // As etcd: every key when sorting or filtering, else the first limit + 1 in key order.
    let window = if req.sort_order != SortOrder::None || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        limit.saturating_add(1)
    };
    let passes = |kv: &KeyValue| {
        (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
    };
    let order = match (req.sort_order, req.sort_target) {
        (SortOrder::None | SortOrder::Ascend, SortTarget::Key) => Order::Keys,
        (SortOrder::Descend, SortTarget::Key) => Order::KeysDescending,
        (SortOrder::Descend, target) => Order::By { target, descend: true },
        (_, target) => Order::By { target, descend: false },
    };
    let with_value = !req.keys_only || req.sort_target == SortTarget::Value;
    let mut answer = Answer::new(order, limit.min(keep));
    let (mut count, mut seen, mut matched) = (0i64, 0usize, 0usize);
    let span = KeySpan::new(&req.key, &req.range_end);
    // Whether a key is live, and its create and mod revisions, are in the key index: a key that
    // is only counted (`count_only`, or past the window) or that a filter leaves out reads no
    // row, as etcd counts and filters from its treeIndex. A paginated list of a large prefix
    // reads its page, not the whole prefix.
    for (key, versions) in kv.index.span(&span) {
        let Some(entry) = newest_in(versions, rev).filter(|e| !e.tombstone) else { continue };
        count += 1;
        if req.count_only || seen >= window {
            continue;
        }
        seen += 1;
        if !passes(&indexed(entry)) {
            continue;
        }
        let row = fetch(kv.rows, place, key, entry)?;
        let found = key_value(place, key, entry.main, row.value(), with_value)?
            .filter(|f| f.create_revision == entry.create && f.version == entry.version)
            .ok_or_else(|| {
                corrupt_record(place, key, entry.main, "the row is not the version the key index has".to_string())
            })?;
        matched += 1;
        answer.offer(found);
    }
    if req.count_only {
        return Ok(RangeResponse { revision: current, kvs: Vec::new(), more: false, count });
    }
    let more = req.limit > 0 && matched > limit;
    let mut kvs = answer.into_kvs();
    if req.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(RangeResponse { revision: current, kvs, more, count })
}

/// The order of a range's answer.
#[derive(Clone, Copy)]
enum Order {
    /// Key order, as the keys are read.
    Keys,
    /// Descending key order: the last keys read, last first.
    KeysDescending,
    /// By a target; ties in key order (etcd's sort is not stable; this one is).
    By { target: SortTarget, descend: bool },
}

/// What a key is sorted by.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum SortField {
    Number(i64),
    Bytes(Vec<u8>),
}

/// A key's place in a sorted answer: its field (reversed when descending), then the order in
/// which it was read (key order). Smaller comes first.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    field: std::cmp::Reverse<SortField>,
    ascending_field: SortField,
    read: usize,
}

struct Ranked {
    rank: Rank,
    kv: KeyValue,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.rank == other.rank
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank.cmp(&other.rank)
    }
}

/// The first `keep` keys of an answer in `order`, from keys offered in key order.
struct Answer {
    order: Order,
    keep: usize,
    offered: usize,
    in_order: std::collections::VecDeque<KeyValue>,
    /// For `Order::By`: the best `keep` so far, the worst on top.
    ranked: std::collections::BinaryHeap<Ranked>,
}

impl Answer {
    fn new(order: Order, keep: usize) -> Answer {
        Answer {
            order,
            keep,
            offered: 0,
            in_order: std::collections::VecDeque::new(),
            ranked: std::collections::BinaryHeap::new(),
        }
    }

    fn offer(&mut self, kv: KeyValue) {
        let read = self.offered;
        self.offered += 1;
        if self.keep == 0 {
            return;
        }
        match self.order {
            Order::Keys => {
                if self.in_order.len() < self.keep {
                    self.in_order.push_back(kv);
                }
            }
            Order::KeysDescending => {
                if self.in_order.len() == self.keep {
                    self.in_order.pop_front();
                }
                self.in_order.push_back(kv);
            }
            Order::By { target, descend } => {
                let field = match target {
                    SortTarget::Key => SortField::Number(0),
                    SortTarget::Value => SortField::Bytes(kv.value.clone()),
                    SortTarget::Version => SortField::Number(kv.version),
                    SortTarget::Create => SortField::Number(kv.create_revision),
                    SortTarget::Mod => SortField::Number(kv.mod_revision),
                };
                let rank = if descend {
                    Rank { field: std::cmp::Reverse(field), ascending_field: SortField::Number(0), read }
                } else {
                    Rank { field: std::cmp::Reverse(SortField::Number(0)), ascending_field: field, read }
                };
                self.ranked.push(Ranked { rank, kv });
                if self.ranked.len() > self.keep {
                    self.ranked.pop();
                }
            }
        }
    }

    fn into_kvs(self) -> Vec<KeyValue> {
        match self.order {
            Order::Keys => self.in_order.into(),
            Order::KeysDescending => self.in_order.into_iter().rev().collect(),
            Order::By { .. } => self.ranked.into_sorted_vec().into_iter().map(|r| r.kv).collect(),
        }
    }
}

/// The live value of `key` at `rev`.
fn get_live<T>(kv: &Hist<'_, T>, place: &Place, key: &[u8], rev: Revision) -> Result<Option<KeyValue>, StoreError>
where
    T: Rows,
{
    match newest_entry(kv, place, key, rev)? {
        Some((r, v)) => key_value(place, key, r, v.value(), true),
        None => Ok(None),
    }
}

/// etcd's `applyCompare` at `rev`: true when every key live in the range satisfies it; a range
/// with no live key compares as one missing key (a value compare is then false).
fn compare_holds<T>(kv: &Hist<'_, T>, place: &Place, c: &Compare, rev: Revision) -> Result<bool, ReadError>
where
    T: Rows,
{
    let mut any = false;
    let mut all = true;
    let span = KeySpan::new(&c.key, &c.range_end);
    if matches!(c.target, CompareTarget::Version(_) | CompareTarget::Create(_) | CompareTarget::Mod(_)) {
        // What these compare is in the key index: no row is read (kube-apiserver's writes are
        // txns that compare a key's mod revision).
        for (_, versions) in kv.index.span(&span) {
            let Some(e) = newest_in(versions, rev).filter(|e| !e.tombstone) else { continue };
            any = true;
            if !compare_kv(c, &indexed(e)) {
                return Ok(false);
            }
        }
        return Ok(any || compare_kv(c, &KeyValue::default()));
    }
    for_each_newest(kv, place, &span, rev, |key, r, bytes| {
        match key_value(place, key, r, bytes, matches!(c.target, CompareTarget::Value(_)))? {
            Some(found) => {
                any = true;
                if !compare_kv(c, &found) {
                    all = false;
                    return Ok(ControlFlow::Break(()));
                }
                Ok(ControlFlow::Continue(()))
            }
            None => Ok(ControlFlow::Continue(())),
        }
    })?;
    if !any {
        return Ok(!matches!(c.target, CompareTarget::Value(_)) && compare_kv(c, &KeyValue::default()));
    }
    Ok(all)
}

/// What the key index knows of a live version, without its row: its revisions and version (no
/// key, value or lease).
fn indexed(entry: Entry) -> KeyValue {
    KeyValue { create_revision: entry.create, mod_revision: entry.main, version: entry.version, ..KeyValue::default() }
}

/// etcd's `compareKV`.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord = match &c.target {
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Version(n) => kv.version.cmp(n),
        CompareTarget::Create(n) => kv.create_revision.cmp(n),
        CompareTarget::Mod(n) => kv.mod_revision.cmp(n),
        CompareTarget::Lease(n) => kv.lease.cmp(n),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

fn compares_hold<T>(kv: &Hist<'_, T>, place: &Place, compares: &[Compare], rev: Revision) -> Result<bool, ReadError>
where
    T: Rows,
{
    for c in compares {
        if !compare_holds(kv, place, c, rev)? {
            return Ok(false);
        }
    }
    Ok(true)
}

// ----- Writes -----

/// A write batch: one redb write transaction. Each operation is its own etcd revision (a txn is
/// one; one that writes nothing, or a delete of nothing, is none), and reads in the batch see
/// its earlier writes. Nothing is visible to readers before [`Batch::commit`]; dropping the
/// batch discards it.
pub struct Batch {
    txn: WriteTransaction,
    place: Place,
    shared: Arc<Shared>,
    revision: Revision,
    compacted: Revision,
    /// The number of the last commit; this batch's commit is the next.
    commit: i64,
    /// Where the reclaiming of compacted history goes on.
    reclaim: ReclaimPos,
    /// The key index, as this batch changes it; published when it commits.
    index: KeyIndex,
    max_txn_ops: usize,
    /// Set when the storage failed in this batch: its commit is refused.
    failed: Option<String>,
}

/// The tables and revision of one write operation (a put, a delete or a whole txn). Every write
/// goes to revision `begin + 1`; reads see `begin`, or `begin + 1` once something changed.
struct Writer<'t> {
    rows: Table<'t, (i64, u32), &'static [u8]>,
    /// The batch's key index, and what this operation recorded in it (each key written with the
    /// version it replaced), to undo.
    index: &'t mut KeyIndex,
    recorded: Vec<(Vec<u8>, Option<Entry>)>,
    /// The leases and the keys put with them: opened when an operation first needs it (a put
    /// without a lease, most of them, does not, and opening a redb table costs a lookup in its
    /// table tree and a record of the table's root when it closes).
    meta: Option<Table<'t, &'static str, &'static [u8]>>,
    txn: &'t WriteTransaction,
    place: &'t Place,
    begin: Revision,
    compacted: Revision,
    changed: bool,
    /// The next `sub` of `hist` at `begin + 1`.
    sub: u32,
}

impl<'t> Writer<'t> {
    fn view(&self) -> Revision {
        if self.changed {
            self.begin + 1
        } else {
            self.begin
        }
    }

    /// The history as this operation sees it.
    fn hist(&self) -> Hist<'_, Table<'_, (i64, u32), &'static [u8]>> {
        Hist { index: self.index, rows: &self.rows }
    }

    /// Writes a tombstone for `key` at this revision (a put records its version itself: `put`).
    fn write_tombstone(&mut self, key: &[u8]) -> Result<(), StoreError> {
        let entry = self.record_version(key, |_| None)?;
        self.write_row(entry, &encode_row(key, TOMBSTONE))
    }

    /// Records a version of `key` at this revision in the key index and returns it; its row is
    /// `write_row`'s. `live` is given the key's newest version in this operation's view (`None`:
    /// none; a tombstone counts) and gives the new version's create revision and version, or
    /// `None` for a tombstone. One walk of the index for both. A key changed again in this
    /// revision keeps its row (`KeyIndex::record_with` keeps the first change's `sub`); otherwise
    /// it takes the next one.
    fn record_version(
        &mut self,
        key: &[u8],
        live: impl FnOnce(Option<Entry>) -> Option<(Revision, i64)>,
    ) -> Result<Entry, StoreError> {
        let rev = self.begin + 1;
        let (view, sub) = (self.view(), self.sub);
        let recorded = self.index.record_with(key, |versions| match live(versions.and_then(|v| newest_in(v, view))) {
            Some((create, version)) => Entry::live(rev, sub, create, version),
            None => Entry::tombstone(rev, sub),
        });
        let Some((entry, replaced)) = recorded else {
            return Err(self.place.corrupt(format!(
                "key {:?} has a version after revision {rev}, the one being written",
                String::from_utf8_lossy(key)
            )));
        };
        self.recorded.push((key.to_vec(), replaced));
        self.changed = true;
        if replaced.is_none() {
            self.sub = self
                .sub
                .checked_add(1)
                .ok_or_else(|| StoreError::Invalid(format!("more than {} keys changed in revision {rev}", u32::MAX)))?;
        }
        Ok(entry)
    }

    /// Writes `row` (`live_row`, or `encode_row` of a tombstone) as the row of `entry`, a version
    /// that `record_version` gave.
    fn write_row(&mut self, entry: Entry, row: &[u8]) -> Result<(), StoreError> {
        self.rows.insert((entry.main, entry.sub), row).at(self.place, WRITE)?;
        Ok(())
    }

    /// The `meta` table, opened on first use.
    fn meta(&mut self) -> Result<&mut Table<'t, &'static str, &'static [u8]>, StoreError> {
        let meta = match self.meta.take() {
            Some(meta) => meta,
            None => self.txn.open_table(META).at(self.place, WRITE)?,
        };
        Ok(self.meta.insert(meta))
    }

    fn lease_exists(&mut self, id: i64) -> Result<bool, StoreError> {
        let place = self.place;
        Ok(self.meta()?.get(lease_name(id).as_str()).at(place, READ)?.is_some())
    }

    /// etcd's put (`applierV3backend.Put` over mvcc's `storeTxnWrite.put`): the lease is
    /// looked up first.
    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, ReadError> {
        if req.lease != 0 && !self.lease_exists(req.lease)? {
            return Err(MvccError::LeaseNotFound.into());
        }
        // The previous version's row is read only when its value or lease is answered or kept;
        // its create revision and version are in the key index (as etcd's put takes them from
        // its `treeIndex`), and a plain put reads them in the walk that records its own version.
        let rev = self.begin + 1;
        let numbered = |newest: Option<Entry>| match newest {
            Some(e) => (e.create, e.version + 1),
            None => (rev, 1),
        };
        let (entry, prev) = if req.prev_kv || req.ignore_value || req.ignore_lease {
            let newest = self.index.newest(&req.key, self.view()).filter(|e| !e.tombstone);
            let prev = match newest {
                Some(entry) => {
                    let row = fetch(&self.rows, self.place, &req.key, entry)?;
                    key_value(self.place, &req.key, entry.main, row.value(), req.prev_kv || req.ignore_value)?
                }
                None => None,
            };
            if (req.ignore_value || req.ignore_lease) && newest.is_none() {
                return Err(MvccError::KeyNotFound.into());
            }
            (self.record_version(&req.key, |_| Some(numbered(newest)))?, prev)
        } else {
            (self.record_version(&req.key, |newest| Some(numbered(newest.filter(|e| !e.tombstone))))?, None)
        };
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.as_slice(),
            _ => req.value.as_slice(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        self.write_row(entry, &live_row(&req.key, entry.create, entry.version, lease, value))?;
        if lease != 0 {
            let place = self.place;
            self.meta()?.insert(lease_key_name(lease, &req.key).as_str(), &[][..]).at(place, WRITE)?;
        }
        Ok(PutResponse { revision: self.view(), prev_kv: if req.prev_kv { prev } else { None } })
    }

    /// etcd's delete-range: a tombstone on every key live in the view.
    fn delete(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, ReadError> {
        let mut gone: Vec<Vec<u8>> = Vec::new();
        let mut prev_kvs = Vec::new();
        let place = self.place;
        for_each_newest(&self.hist(), place, &KeySpan::new(&req.key, &req.range_end), self.view(), |key, r, bytes| {
            if let Some(found) = key_value(place, key, r, bytes, req.prev_kv)? {
                gone.push(key.to_vec());
                if req.prev_kv {
                    prev_kvs.push(found);
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        for key in &gone {
            self.write_tombstone(key)?;
        }
        Ok(DeleteRangeResponse { revision: self.view(), deleted: gone.len() as i64, prev_kvs })
    }

    /// The branch a txn takes, decided at the revision before it.
    fn taken<'r>(&self, req: &'r TxnRequest) -> Result<&'r [RequestOp], ReadError> {
        Ok(if compares_hold(&self.hist(), self.place, &req.compare, self.begin)? { &req.success } else { &req.failure })
    }

    /// etcd's `checkRequestPut` over the taken path, before the txn.
    fn check_taken_puts(&mut self, req: &TxnRequest) -> Result<(), ReadError> {
        for op in self.taken(req)? {
            match op {
                RequestOp::Put(p)
                    if (p.ignore_value || p.ignore_lease)
                        && get_live(&self.hist(), self.place, &p.key, self.begin)?.is_none() =>
                {
                    return Err(MvccError::KeyNotFound.into());
                }
                RequestOp::Put(p) if p.lease != 0 && !self.lease_exists(p.lease)? => {
                    return Err(MvccError::LeaseNotFound.into());
                }
                RequestOp::Txn(t) => self.check_taken_puts(t)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// etcd's `checkRequestRange` over the taken path, before the txn.
    fn check_taken_ranges(&self, req: &TxnRequest) -> Result<(), ReadError> {
        for op in self.taken(req)? {
            match op {
                RequestOp::Range(r) if r.revision > self.begin => return Err(MvccError::FutureRev.into()),
                RequestOp::Range(r) if r.revision != 0 && r.revision < self.compacted => {
                    return Err(MvccError::Compacted.into())
                }
                RequestOp::Txn(t) => self.check_taken_ranges(t)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, ReadError> {
        let succeeded = compares_hold(&self.hist(), self.place, &req.compare, self.begin)?;
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => {
                    ResponseOp::Range(range_at(&self.hist(), self.place, r, self.view(), self.compacted, usize::MAX)?)
                }
                RequestOp::Put(p) => ResponseOp::Put(self.put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete(d)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn(t)?),
            });
        }
        Ok(TxnResponse { revision: self.view(), succeeded, responses })
    }

    /// Removes everything written at `begin + 1`: the undo of a txn that failed part-way.
    fn undo(&mut self) -> Result<(), StoreError> {
        let rev = self.begin + 1;
        self.rows.retain_in::<(i64, u32), _>((rev, 0)..=(rev, u32::MAX), |_, _| false).at(self.place, WRITE)?;
        for (key, replaced) in self.recorded.drain(..).rev() {
            self.index.unrecord(&key, replaced);
        }
        self.changed = false;
        self.sub = 0;
        Ok(())
    }
}

impl Batch {
    /// The write transaction, for tests that look at the tables.
    #[cfg(test)]
    pub(crate) fn write_txn(&self) -> &WriteTransaction {
        &self.txn
    }

    /// The most versions a key holds in the batch's key index (for tests).
    #[cfg(test)]
    pub(crate) fn longest_history(&self) -> usize {
        self.index.longest()
    }

    /// Checks that the batch's key index is the one its `hist` gives (for tests).
    #[cfg(test)]
    pub(crate) fn check_index(&self) {
        let rows = self.txn.open_table(HIST).unwrap();
        let built = build_index(&rows, &self.place, self.index.commit).unwrap();
        assert!(built == self.index, "the key index is not the one the rows give");
    }

    /// The current revision inside the batch.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The compacted revision inside the batch (-1 if none).
    pub fn compacted_revision(&self) -> Revision {
        self.compacted
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(why) => Err(StoreError::Database {
                action: "use a write batch",
                path: self.place.path().to_path_buf(),
                detail: format!("an earlier operation of this batch failed: {why}"),
            }),
            None => Ok(()),
        }
    }

    #[cfg(test)]
    pub(crate) fn note_for_test(&mut self, res: Result<(), StoreError>) -> Result<(), StoreError> {
        self.note(res)
    }

    /// Records a storage failure: the batch can no longer be committed.
    fn note<T>(&mut self, res: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &res {
            self.failed.get_or_insert_with(|| e.to_string());
        }
        res
    }

    /// Runs one write operation at revision `revision + 1`: commits its revision if it
    /// succeeded and changed something, undoes its writes if it failed.
    fn write_op<T>(
        &mut self,
        op: impl FnOnce(&mut Writer<'_>) -> Result<T, ReadError>,
    ) -> Result<Result<T, MvccError>, StoreError> {
        self.check_usable()?;
        let res = self.write_op_inner(op);
        self.note(res)
    }

    fn write_op_inner<T>(
        &mut self,
        op: impl FnOnce(&mut Writer<'_>) -> Result<T, ReadError>,
    ) -> Result<Result<T, MvccError>, StoreError> {
        let place = &self.place;
        let mut w = Writer {
            rows: self.txn.open_table(HIST).at(place, WRITE)?,
            index: &mut self.index,
            recorded: Vec::new(),
            meta: None,
            txn: &self.txn,
            place,
            begin: self.revision,
            compacted: self.compacted,
            changed: false,
            sub: 0,
        };
        match ReadError::split(op(&mut w))? {
            Ok(v) => {
                self.revision = w.view();
                Ok(Ok(v))
            }
            Err(e) => {
                w.undo()?;
                Ok(Err(e))
            }
        }
    }

    /// etcd's Put: always one new revision.
    pub fn put(&mut self, req: &PutRequest) -> Result<Result<PutResponse, MvccError>, StoreError> {
        if let Err(e) = check_put(req) {
            return Ok(Err(e));
        }
        self.write_op(|w| w.put(req))
    }

    /// etcd's DeleteRange: one new revision if it deleted a key, else none.
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<Result<DeleteRangeResponse, MvccError>, StoreError> {
        if req.key.is_empty() {
            return Ok(Err(MvccError::EmptyKey));
        }
        self.write_op(|w| w.delete(req))
    }

    /// etcd 3.4's Txn, checked and applied as `Model::txn` documents: static checks, then the
    /// taken path's puts and ranges against the store before the txn, then the ops in order as
    /// one revision. A txn that fails part-way leaves no trace.
    pub fn txn(&mut self, req: &TxnRequest) -> Result<Result<TxnResponse, MvccError>, StoreError> {
        let checked = check_txn(req, self.max_txn_ops)
            .and_then(|()| check_intervals(&req.success))
            .and_then(|()| check_intervals(&req.failure));
        if let Err(e) = checked {
            return Ok(Err(e));
        }
        let res = self.write_op(|w| {
            w.check_taken_puts(req)?;
            w.check_taken_ranges(req)?;
            w.txn(req)
        })?;
        let revision = self.revision;
        Ok(res.map(|mut resp| {
            resp.revision = revision;
            resp
        }))
    }

    /// A range inside the batch: sees the batch's earlier writes.
    pub fn range(&self, req: &RangeRequest) -> Result<Result<RangeResponse, MvccError>, StoreError> {
        self.check_usable()?;
        if req.key.is_empty() {
            return Ok(Err(MvccError::EmptyKey));
        }
        let rows = self.txn.open_table(HIST).at(&self.place, READ)?;
        let hist = Hist { index: &self.index, rows: &rows };
        ReadError::split(range_at(&hist, &self.place, req, self.revision, self.compacted, usize::MAX))
    }

    /// etcd's Compact: reads below `rev` fail from now on. Each key keeps its newest entry at or
    /// below `rev` unless that is a tombstone, and every entry above; the others go, from `hist`
    /// and the key index, as `compact_step` reclaims them. The freed pages are reused after the
    /// next durable commit.
    pub fn compact(&mut self, rev: Revision) -> Result<Result<CompactResponse, MvccError>, StoreError> {
        self.check_usable()?;
        if rev <= self.compacted {
            return Ok(Err(MvccError::Compacted));
        }
        if rev > self.revision {
            return Ok(Err(MvccError::FutureRev));
        }
        // As etcd: the compaction takes effect at once (reads below it are refused from this
        // batch on), and the space is reclaimed later, a bounded chunk at a time
        // (`compact_step`), so that no batch holds the Raft loop for the whole history. The
        // reclaiming starts again from the oldest row: what an earlier compaction kept may go now.
        self.compacted = rev;
        self.reclaim = (0, 0);
        Ok(Ok(CompactResponse { revision: self.revision }))
    }

    /// Reclaims one chunk (`COMPACT_CHUNK` rows) of the history that compactions made
    /// unreadable: of the `hist` rows at or below the compacted revision, from where the last
    /// step stopped, those that no read at or above it can see (all but each key's newest at or
    /// below it, and that one too when it is a tombstone), from the table and the key index.
    /// Returns whether more remains. Reads are the same before and after, since a read at or
    /// above the compacted revision sees each key's newest version at or below it, which stays.
    pub fn compact_step(&mut self) -> Result<bool, StoreError> {
        self.check_usable()?;
        let res = self.compact_chunk();
        self.note(res)
    }

    fn compact_chunk(&mut self) -> Result<bool, StoreError> {
        let place = &self.place;
        let rev = self.compacted;
        if self.reclaim.0 > rev {
            return Ok(false);
        }
        let mut rows = self.txn.open_table(HIST).at(place, WRITE)?;
        let upper = (rev, u32::MAX);
        // The chunk's rows: position, key, and whether a read can still see the row.
        let mut chunk: Vec<(ReclaimPos, Vec<u8>)> = Vec::new();
        for row in rows.range::<(i64, u32)>(self.reclaim..=upper).at(place, WRITE)?.take(COMPACT_CHUNK) {
            let (pos, value) = row.at(place, WRITE)?;
            let (key, _) = split_row(value.value()).map_err(|d| place.corrupt(d))?;
            chunk.push((pos.value(), key.to_vec()));
        }
        let Some(&(last, _)) = chunk.last() else {
            self.reclaim = (rev.saturating_add(1), 0);
            return Ok(false);
        };
        for ((main, sub), key) in &chunk {
            let seen = self.index.newest(key, rev).is_some_and(|e| e.main == *main && e.sub == *sub && !e.tombstone);
            if seen {
                continue;
            }
            rows.remove((*main, *sub)).at(place, WRITE)?;
            if !self.index.drop_oldest(key, *main) {
                return Err(place.corrupt(format!(
                    "the row of key {:?} at revision {main} is not its oldest",
                    String::from_utf8_lossy(key)
                )));
            }
        }
        self.reclaim = match last.1.checked_add(1) {
            Some(sub) => (last.0, sub),
            None => (last.0.saturating_add(1), 0),
        };
        let more = rows.range::<(i64, u32)>(self.reclaim..=upper).at(place, WRITE)?.next().is_some();
        if !more {
            self.reclaim = (rev.saturating_add(1), 0);
        }
        Ok(more)
    }

    /// Fills an empty store with each key's latest version and no history before `revision`
    /// (reads below it get [`MvccError::Compacted`]), as `Model::from_latest`: how the state of
    /// an earlier kuberaft, which kept only the latest versions, is carried over. Refused on a
    /// store that is not empty, or for a key whose revisions cannot be.
    pub fn load_latest(
        &mut self,
        latest: impl IntoIterator<Item = KeyValue>,
        revision: Revision,
    ) -> Result<(), StoreError> {
        self.check_usable()?;
        let res = self.load_latest_inner(latest, revision);
        self.note(res)
    }

    fn load_latest_inner(
        &mut self,
        latest: impl IntoIterator<Item = KeyValue>,
        revision: Revision,
    ) -> Result<(), StoreError> {
        let place = &self.place;
        let mut rows = self.txn.open_table(HIST).at(place, WRITE)?;
        if self.revision != 1 || self.compacted != -1 || !rows.is_empty().at(place, READ)? {
            return Err(StoreError::Invalid("load_latest needs an empty store".to_string()));
        }
        let current = revision.max(1);
        if current > MAX_REVISION {
            return Err(StoreError::BadSnapshot(format!("impossible store revision {revision}")));
        }
        for item in latest {
            let consistent = !item.key.is_empty()
                && (1..=MAX_REVISION).contains(&item.version)
                && item.create_revision >= 1
                && item.create_revision <= item.mod_revision
                && item.mod_revision <= current;
            if !consistent {
                return Err(StoreError::BadSnapshot(format!(
                    "key {:?} has impossible revisions",
                    String::from_utf8_lossy(&item.key)
                )));
            }
            let row = live_row(&item.key, item.create_revision, item.version, item.lease, &item.value);
            let sub = next_sub(&rows, place, item.mod_revision)?;
            rows.insert((item.mod_revision, sub), row.as_slice()).at(place, WRITE)?;
            let entry = Entry::live(item.mod_revision, sub, item.create_revision, item.version);
            if self.index.newest(&item.key, MAX_REVISION).is_some() || self.index.record(&item.key, entry).is_none() {
                return Err(StoreError::BadSnapshot(format!(
                    "key {:?} comes twice",
                    String::from_utf8_lossy(&item.key)
                )));
            }
        }
        self.revision = current;
        self.compacted = current;
        self.reclaim = (current.saturating_add(1), 0);
        Ok(())
    }

    /// etcd's lease grant, as applied (`Model::lease_grant`).
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<Result<(), MvccError>, StoreError> {
        self.check_usable()?;
        let res = (|| {
            if id == 0 {
                return Ok(Err(MvccError::LeaseNotFound));
            }
            if ttl > MAX_LEASE_TTL {
                return Ok(Err(MvccError::LeaseTtlTooLarge));
            }
            let mut meta = self.txn.open_table(META).at(&self.place, WRITE)?;
            let name = lease_name(id);
            if meta.get(name.as_str()).at(&self.place, READ)?.is_some() {
                return Ok(Err(MvccError::LeaseExists));
            }
            let record = codec::encode(&(ttl, 0i64)).map_err(|e| StoreError::Invalid(e.to_string()))?;
            meta.insert(name.as_str(), record.as_slice()).at(&self.place, WRITE)?;
            Ok(Ok(()))
        })();
        self.note(res)
    }

    /// etcd's revoke (`Model::lease_revoke`): deletes every key whose current version carries
    /// the lease, in key order, as one revision; returns the revision after it.
    pub fn lease_revoke(&mut self, id: i64) -> Result<Result<Revision, MvccError>, StoreError> {
        self.check_usable()?;
        let found = (|| {
            let meta = self.txn.open_table(META).at(&self.place, READ)?;
            if meta.get(lease_name(id).as_str()).at(&self.place, READ)?.is_none() {
                return Ok(None);
            }
            let rows = self.txn.open_table(HIST).at(&self.place, READ)?;
            read_lease_keys(&meta, &Hist { index: &self.index, rows: &rows }, &self.place, id, self.revision).map(Some)
        })();
        let Some(keys) = self.note(found)? else { return Ok(Err(MvccError::LeaseNotFound)) };
        let deleted = self.write_op(|w| {
            for key in &keys {
                w.write_tombstone(key)?;
            }
            Ok(())
        })?;
        if let Err(e) = deleted {
            return Ok(Err(e));
        }
        let res = (|| {
            let mut meta = self.txn.open_table(META).at(&self.place, WRITE)?;
            meta.remove(lease_name(id).as_str()).at(&self.place, WRITE)?;
            let prefix = lease_keys_prefix(id);
            let end = prefix_end_name(&prefix);
            meta.retain_in::<&str, _>(prefix.as_str()..end.as_str(), |_, _| false).at(&self.place, WRITE)?;
            Ok(Ok(self.revision))
        })();
        self.note(res)
    }

    /// The keys whose current version (as the batch sees it) carries lease `id`, in key order
    /// (none for a lease that does not exist).
    pub fn lease_keys(&mut self, id: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.check_usable()?;
        let res = (|| {
            let meta = self.txn.open_table(META).at(&self.place, READ)?;
            let rows = self.txn.open_table(HIST).at(&self.place, READ)?;
            read_lease_keys(&meta, &Hist { index: &self.index, rows: &rows }, &self.place, id, self.revision)
        })();
        self.note(res)
    }

    /// etcd's checkpoint: records the remaining TTL of a lease that exists (others ignored).
    pub fn lease_checkpoint(&mut self, id: i64, remaining_ms: i64) -> Result<(), StoreError> {
        self.check_usable()?;
        let res = (|| {
            let mut meta = self.txn.open_table(META).at(&self.place, WRITE)?;
            let name = lease_name(id);
            let ttl = match meta.get(name.as_str()).at(&self.place, READ)? {
                Some(v) => decode_lease(&self.place, id, v.value())?.ttl,
                None => return Ok(()),
            };
            let record = codec::encode(&(ttl, remaining_ms)).map_err(|e| StoreError::Invalid(e.to_string()))?;
            meta.insert(name.as_str(), record.as_slice()).at(&self.place, WRITE)?;
            Ok(())
        })();
        self.note(res)
    }

    /// Every lease as the batch sees it, by id.
    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.check_usable()?;
        let meta = self.txn.open_table(META).at(&self.place, READ)?;
        read_leases(&meta, &self.place)
    }

    /// Sets a state-machine record, committed with the batch.
    pub fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.check_usable()?;
        let res = (|| {
            let mut meta = self.txn.open_table(META).at(&self.place, WRITE)?;
            meta.insert(name, value).at(&self.place, WRITE)?;
            Ok(())
        })();
        self.note(res)
    }

    /// A state-machine record as the batch sees it.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.check_usable()?;
        let meta = self.txn.open_table(META).at(&self.place, READ)?;
        let value = meta.get(name).at(&self.place, READ)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Commits the batch. `durable` false: redb's `Durability::None`, no fsync; the commit is
    /// visible to readers at once and survives a clean close, but a crash returns the file to
    /// the last durable commit (the Raft log replays the rest). `durable` true: fsynced before
    /// this returns, together with every earlier commit; redb also reuses the pages freed since
    /// the previous durable commit only from a durable commit on.
    pub fn commit(mut self, durable: bool) -> Result<(), StoreError> {
        self.check_usable()?;
        {
            let mut state = self.txn.open_table(STATE).at(&self.place, WRITE)?;
            state.insert(REVISION_NAME, self.revision).at(&self.place, WRITE)?;
            state.insert(COMPACTED_NAME, self.compacted).at(&self.place, WRITE)?;
            state.insert(COMMIT_NAME, self.commit + 1).at(&self.place, WRITE)?;
            state.insert(RECLAIM_MAIN_NAME, self.reclaim.0).at(&self.place, WRITE)?;
            state.insert(RECLAIM_SUB_NAME, i64::from(self.reclaim.1)).at(&self.place, WRITE)?;
        }
        let durability = if durable { Durability::Immediate } else { Durability::None };
        self.txn.set_durability(durability).map_err(|e| StoreError::Database {
            action: "commit to the state-machine database",
            path: self.place.path().to_path_buf(),
            detail: e.to_string(),
        })?;
        self.txn.commit().at(&self.place, "commit to the state-machine database")?;
        self.index.commit = self.commit + 1;
        self.shared.publish(self.index);
        self.shared.revision.store(self.revision, AtomicOrdering::Release);
        self.shared.compacted.store(self.compacted, AtomicOrdering::Release);
        Ok(())
    }
}

//! A point-in-time copy of an [`MvccStore`] as a stream of bounded chunks, and building a new
//! store from such a stream, both with bounded memory.
//!
//! [`MvccStore::snapshot`] takes a read view, so the stream shows the store as it was at that
//! moment while writes go on. The format, all integers big-endian:
//!
//! ```text
//! magic "KRMVCC\x00\x01" (8 bytes), format u32 (2; 1 is still read)
//! records, table by table:
//!   0x01 mvcc:  name (u32 length + bytes), value i64
//!   0x02 meta:  name, value (u32 length + bytes)
//!   format 2:
//!   0x05 hist:  main i64, sub u32, key, record (as the store's rows hold them), in revision order
//!   format 1 (the store's layout before format 2; installed, then converted when it opens):
//!   0x03 kv:    key, main revision i64, record, in key order
//!   0x04 revs:  main i64, sub u32, key
//! trailer: 0xff, record count u64, CRC-32 (IEEE) of every byte before the checksum u32
//! ```
//!
//! A stream of format 2 carries, besides `format`, `revision` and `compacted`, the `mvcc`
//! record `live-keys` (how many keys have a value at its revision), which a store does not
//! keep: `scan` reports it, as it cannot count keys from rows in revision order.
//!
//! [`MvccStore::install`] reads it record by record (no length read off the stream allocates
//! more than the bytes that actually arrive, and no field may pass [`MAX_FIELD_BYTES`]), commits
//! every [`INSTALL_COMMIT_RECORDS`] records, checks every record, the count and the checksum,
//! and refuses anything else with [`StoreError::BadSnapshot`], leaving no store behind.

use std::fs;
use std::io::{self, Read};
use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use redb::backends::FileBackend;
use redb::{
    Builder, CursorError, CursorMut, Database, Durability, Key, Range, ReadTransaction, Value, WriteTransaction,
};

use super::coalesce::Coalescing;
use super::engine::{
    check_state, encode_row, read_state, split_row, At, MvccStore, Place, Record, COMPACTED_NAME, DEFAULT_CACHE_BYTES,
    FORMAT, FORMAT_NAME, HIST, KV, META, REVISION_NAME, REVS, STATE,
};
use super::index::{newest_in, KeyIndex};
use super::types::Revision;
use crate::store::StoreError;

/// The first bytes of every MVCC snapshot stream.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"KRMVCC\x00\x01";
/// The stream format this version writes.
pub const SNAPSHOT_FORMAT: u32 = 2;
/// The older stream format this version still reads (as members and backups of earlier
/// versions write it).
pub const SNAPSHOT_FORMAT_1: u32 = 1;
/// The `mvcc` record of a format-2 stream that counts the keys live at its revision.
const LIVE_KEYS_NAME: &str = "live-keys";
/// The size of every chunk but the last.
pub const CHUNK_BYTES: usize = 1 << 20;
/// The largest key, value, name or record a stream may carry.
pub const MAX_FIELD_BYTES: u64 = 64 << 20;
/// Records per (non-durable) commit while installing; the last commit is durable.
pub const INSTALL_COMMIT_RECORDS: u64 = 10_000;
/// redb's cache while a snapshot is installed into a file; the store is opened again with
/// `DEFAULT_CACHE_BYTES` after. With 8 MiB, pages left half full by one batch were evicted and
/// read back by the next: at 1M keys of 1 KiB the installer wrote 2.77 GB and read 1.39 GB back
/// for a 1.06 GB stream; with 64 MiB it wrote 1.39 GB and read nothing.
const INSTALL_CACHE_BYTES: usize = 64 << 20;

const TAG_STATE: u8 = 1;
const TAG_META: u8 = 2;
const TAG_KV: u8 = 3;
const TAG_REVS: u8 = 4;
const TAG_HIST: u8 = 5;
const TAG_END: u8 = 0xff;

type HistRange = Range<'static, (i64, u32), &'static [u8]>;
type MetaRange = Range<'static, &'static str, &'static [u8]>;

/// The chunks of one snapshot, read from a read view: an iterator of `Bytes` of
/// [`CHUNK_BYTES`] each (the last one shorter). Holding it keeps that point in time readable
/// (redb keeps the pages it needs until it is dropped).
pub struct SnapshotReader {
    _txn: ReadTransaction,
    place: Place,
    /// The `mvcc` records still to write, in name order.
    state: std::vec::IntoIter<(&'static str, i64)>,
    meta: MetaRange,
    /// The key index of the snapshot, and the `hist` rows in order.
    index: KeyIndex,
    rows: HistRange,
    /// Which table is being read: TAG_STATE, TAG_META, TAG_HIST, then TAG_END, then done.
    stage: u8,
    buf: Vec<u8>,
    hash: crc32fast::Hasher,
    records: u64,
    done: bool,
    revision: Revision,
    compacted: Revision,
}

impl MvccStore {
    /// A point-in-time snapshot of the whole store (every table, `meta` included) as a stream
    /// of chunks; writes may go on while it is read.
    pub fn snapshot(&self) -> Result<SnapshotReader, StoreError> {
        let view = self.read_view()?;
        let place = view.place.clone();
        let txn = view.txn;
        let open = "open a snapshot of the state-machine database";
        let state_table = txn.open_table(STATE).at(&place, open)?;
        let (revision, compacted) =
            read_state(&state_table, &place)?.ok_or_else(|| place.corrupt("the MVCC state is missing"))?;
        let live = view
            .index
            .iter()
            .filter(|(_, versions)| newest_in(versions, revision).is_some_and(|e| !e.tombstone))
            .count();
        let state = vec![
            (COMPACTED_NAME, compacted),
            (FORMAT_NAME, FORMAT),
            (LIVE_KEYS_NAME, i64::try_from(live).unwrap_or(i64::MAX)),
            (REVISION_NAME, revision),
        ];
        let meta = txn.open_table(META).at(&place, open)?.range::<&str>(..).at(&place, open)?;
        let rows = txn.open_table(HIST).at(&place, open)?.range::<(i64, u32)>(..).at(&place, open)?;
        let mut reader = SnapshotReader {
            _txn: txn,
            place,
            state: state.into_iter(),
            meta,
            index: view.index,
            rows,
            stage: TAG_STATE,
            buf: Vec::with_capacity(CHUNK_BYTES + 4096),
            hash: crc32fast::Hasher::new(),
            records: 0,
            done: false,
            revision,
            compacted,
        };
        reader.append(SNAPSHOT_MAGIC);
        reader.append(&SNAPSHOT_FORMAT.to_be_bytes());
        Ok(reader)
    }
    /// Builds a new store at `path` from a snapshot stream and opens it. The database is built
    /// beside `path` (`<path>.installing`) and renamed over `path` only once the whole stream
    /// checked out and is durable, so a damaged or cut stream leaves `path` as it was. The
    /// caller must not have a store open at `path`.
    pub fn install(path: &Path, input: impl Read) -> Result<MvccStore, StoreError> {
        let temp = installing_path(path);
        let place = Place::new(path);
        match fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", &temp, e)),
        }
        let built = (|| {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(|e| StoreError::io("create", &temp, e))?;
            let file = FileBackend::new(file).at(&Place::new(&temp), "create the state-machine database")?;
            let mut backend = Coalescing::new(file);
            // Past the page cache where the file system allows it (see `coalesce`).
            if let Ok(direct) = fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&temp) {
                backend = backend.with_direct(direct);
            }
            let db = Builder::new()
                .set_cache_size(INSTALL_CACHE_BYTES)
                .create_with_backend(backend)
                .at(&Place::new(&temp), "create the state-machine database")?;
            install_into(&db, &place, input, Some(&temp))
        })();
        if let Err(e) = built {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        fs::rename(&temp, path).map_err(|e| StoreError::io("rename the installed snapshot to", path, e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io("sync", dir, e))?;
        }
        MvccStore::open(path)
    }

    /// The same into a new store in memory.
    pub fn install_in_memory(input: impl Read) -> Result<MvccStore, StoreError> {
        let place = Place::memory();
        let db = Builder::new()
            .set_cache_size(DEFAULT_CACHE_BYTES)
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .at(&place, "create the state-machine database")?;
        install_into(&db, &place, input, None)?;
        MvccStore::init(db, place)
    }
}

fn installing_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".installing");
    PathBuf::from(name)
}

impl SnapshotReader {
    /// The store's revision at the snapshot's point in time.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The compacted revision at the snapshot's point in time.
    pub fn compacted_revision(&self) -> Revision {
        self.compacted
    }

    fn append(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        self.buf.extend_from_slice(bytes);
    }

    fn append_field(&mut self, bytes: &[u8]) {
        // redb keeps keys and values below 4 GiB, so the length fits.
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.append(&len.to_be_bytes());
        self.append(bytes);
    }

    /// The next `hist` row of the store as if every compaction had been reclaimed: of each
    /// key's rows at or below the compacted revision only the newest, and not even that when it
    /// is a tombstone (the key index tells). So a stream is the same whether or not the
    /// reclaiming (`Batch::compact_step`) has finished, and never carries history nobody can
    /// read.
    fn next_row(&mut self) -> Result<Option<(i64, u32, Vec<u8>)>, StoreError> {
        let read = "read a snapshot of the state-machine database";
        for row in self.rows.by_ref() {
            let (pos, value) = row.at(&self.place, read)?;
            let (main, sub) = pos.value();
            if main <= self.compacted {
                let (key, _) = split_row(value.value()).map_err(|d| self.place.corrupt(d))?;
                let kept = self.index.newest(key, self.compacted);
                if !kept.is_some_and(|e| e.main == main && e.sub == sub && !e.tombstone) {
                    continue;
                }
            }
            return Ok(Some((main, sub, value.value().to_vec())));
        }
        Ok(None)
    }

    /// Appends the next record (or the trailer); false when the stream is complete.
    fn next_record(&mut self) -> Result<bool, StoreError> {
        let read = "read a snapshot of the state-machine database";
        let place = self.place.clone();
        loop {
            match self.stage {
                TAG_STATE => match self.state.next() {
                    Some((name, value)) => {
                        self.append(&[TAG_STATE]);
                        self.append_field(name.as_bytes());
                        self.append(&value.to_be_bytes());
                        break;
                    }
                    None => self.stage = TAG_META,
                },
                TAG_META => match self.meta.next() {
                    Some(entry) => {
                        let (k, v) = entry.at(&place, read)?;
                        self.append(&[TAG_META]);
                        self.append_field(k.value().as_bytes());
                        self.append_field(v.value());
                        break;
                    }
                    None => self.stage = TAG_HIST,
                },
                TAG_HIST => match self.next_row()? {
                    Some((main, sub, row)) => {
                        let (key, record) = split_row(&row).map_err(|d| place.corrupt(d))?;
                        self.append(&[TAG_HIST]);
                        self.append(&main.to_be_bytes());
                        self.append(&sub.to_be_bytes());
                        self.append_field(key);
                        self.append_field(record);
                        break;
                    }
                    None => self.stage = TAG_END,
                },
                TAG_END => {
                    self.append(&[TAG_END]);
                    let count = self.records;
                    self.append(&count.to_be_bytes());
                    let checksum = self.hash.clone().finalize();
                    self.buf.extend_from_slice(&checksum.to_be_bytes());
                    self.stage = 0;
                    return Ok(false);
                }
                _ => return Ok(false),
            }
        }
        self.records += 1;
        Ok(true)
    }
}

impl Iterator for SnapshotReader {
    type Item = Result<Bytes, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        while self.buf.len() < CHUNK_BYTES {
            match self.next_record() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        let chunk = if self.buf.len() > CHUNK_BYTES {
            let rest = self.buf.split_off(CHUNK_BYTES);
            std::mem::replace(&mut self.buf, rest)
        } else {
            std::mem::take(&mut self.buf)
        };
        if chunk.is_empty() {
            self.done = true;
            return None;
        }
        Some(Ok(Bytes::from(chunk)))
    }
}

/// A `Read` over a stream of chunks (how snapshots arrive from a peer); an error of the
/// stream becomes an I/O error of the read.
pub struct ChunkReader<I> {
    chunks: I,
    current: Bytes,
}

impl<I> ChunkReader<I> {
    pub fn new(chunks: I) -> ChunkReader<I> {
        ChunkReader { chunks, current: Bytes::new() }
    }
}

impl<I, E> Read for ChunkReader<I>
where
    I: Iterator<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.next() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(io::Error::other(e.to_string())),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Reads the stream, hashing what it reads.
struct Input<R> {
    inner: R,
    hash: crc32fast::Hasher,
    offset: u64,
    records: u64,
    /// The stream's format, from its header.
    format: u32,
}

fn bad(detail: impl Into<String>) -> StoreError {
    StoreError::BadSnapshot(detail.into())
}

impl<R: Read> Input<R> {
    fn fill(&mut self, out: &mut [u8], hashed: bool) -> Result<(), StoreError> {
        self.inner.read_exact(out).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                bad(format!("the MVCC snapshot ends early, at byte {} after {} records", self.offset, self.records))
            } else {
                bad(format!("cannot read the MVCC snapshot at byte {}: {e}", self.offset))
            }
        })?;
        if hashed {
            self.hash.update(out);
        }
        self.offset += out.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut out = [0u8; N];
        self.fill(&mut out, true)?;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A length-prefixed field of at most `max` bytes; memory grows only with the bytes that
    /// arrive.
    fn field(&mut self, what: &str, max: u64) -> Result<Vec<u8>, StoreError> {
        let len = u64::from(self.u32()?);
        if len > max {
            return Err(bad(format!(
                "the MVCC snapshot has a {what} of {len} bytes at byte {}, more than the {max} allowed",
                self.offset
            )));
        }
        let mut out = Vec::new();
        let start = self.offset;
        (&mut self.inner)
            .take(len)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("cannot read the MVCC snapshot at byte {start}: {e}")))?;
        if out.len() as u64 != len {
            return Err(bad(format!(
                "the MVCC snapshot ends early, in a {what} at byte {start} after {} records",
                self.records
            )));
        }
        self.hash.update(&out);
        self.offset += len;
        Ok(out)
    }
}

/// Fills the empty database `db` from a snapshot stream; the last commit is durable. The pages
/// of the commits before it are written back to `file` (the database's) as they come, so that
/// the last one syncs little more than its own.
fn install_into(db: &Database, place: &Place, input: impl Read, file: Option<&Path>) -> Result<(), StoreError> {
    let mut input = Input { inner: input, hash: crc32fast::Hasher::new(), offset: 0, records: 0, format: 0 };
    read_header(&mut input)?;
    let mut stage = TAG_STATE;
    let mut max_rev = 0;
    loop {
        let txn = db.begin_write().at(place, "write the state-machine database")?;
        let finished = install_part(&txn, place, &mut input, &mut stage, &mut max_rev)?;
        if finished {
            let state = txn.open_table(STATE).at(place, "read the installed snapshot")?;
            let (revision, _) =
                read_state(&state, place)?.ok_or_else(|| bad("the MVCC snapshot has no revision or format"))?;
            if max_rev > revision {
                return Err(bad(format!(
                    "the MVCC snapshot holds revision {max_rev}, after its current revision {revision}"
                )));
            }
            drop(state);
            txn.commit().at(place, "commit the installed snapshot")?;
            return Ok(());
        }
        let mut txn = txn;
        txn.set_durability(Durability::None).map_err(|e| bad(e.to_string()))?;
        txn.commit().at(place, "commit the installed snapshot")?;
        if let Some(file) = file {
            // Only sooner: the durable commit at the end still syncs whatever this missed.
            let _ = crate::store::fs::start_writeback(file);
        }
    }
}

/// One record of a stream, read and checked by [`read_record`].
enum Rec {
    State {
        name: String,
        value: i64,
    },
    Meta {
        name: String,
        value: Vec<u8>,
    },
    Kv {
        key: Vec<u8>,
        rev: Revision,
        record: Vec<u8>,
    },
    Revs {
        main: Revision,
        sub: u32,
        key: Vec<u8>,
    },
    Hist {
        main: Revision,
        sub: u32,
        key: Vec<u8>,
        record: Vec<u8>,
    },
    /// The trailer, its count and checksum verified.
    End,
}

/// Reads the next record (at `stage` or a later table), checking what can be checked of it
/// alone: order of the tables, field sizes, UTF-8 names, sound key and revision records, and at
/// the trailer the record count and the checksum. Raises `max_rev` to the highest revision seen.
fn read_record<R: Read>(input: &mut Input<R>, stage: &mut u8, max_rev: &mut Revision) -> Result<Rec, StoreError> {
    let at = input.offset;
    let tag = input.u8()?;
    if tag < *stage {
        return Err(bad(format!("the MVCC snapshot has a record of kind {tag} out of order at byte {at}")));
    }
    let other_format = match tag {
        TAG_KV | TAG_REVS => input.format != SNAPSHOT_FORMAT_1,
        TAG_HIST => input.format != SNAPSHOT_FORMAT,
        _ => false,
    };
    if other_format {
        return Err(bad(format!(
            "the MVCC snapshot of format {} has a record of kind {tag}, of another format, at byte {at}",
            input.format
        )));
    }
    *stage = tag;
    let utf8 =
        |name: Vec<u8>| String::from_utf8(name).map_err(|_| bad(format!("a name that is not UTF-8 at byte {at}")));
    let rec = match tag {
        TAG_STATE => {
            let name = utf8(input.field("name", 256)?)?;
            Rec::State { name, value: input.i64()? }
        }
        TAG_META => {
            let name = utf8(input.field("name", MAX_FIELD_BYTES)?)?;
            Rec::Meta { name, value: input.field("value", MAX_FIELD_BYTES)? }
        }
        TAG_KV => {
            let key = input.field("key", MAX_FIELD_BYTES)?;
            let rev = input.i64()?;
            let record = input.field("record", MAX_FIELD_BYTES)?;
            if !sound_version(&key, rev, &record) {
                return Err(bad(format!("the MVCC snapshot has a damaged key record at byte {at}")));
            }
            *max_rev = (*max_rev).max(rev);
            Rec::Kv { key, rev, record }
        }
        TAG_REVS => {
            let main = input.i64()?;
            let sub = input.u32()?;
            let key = input.field("key", MAX_FIELD_BYTES)?;
            if key.is_empty() || main < 1 {
                return Err(bad(format!("the MVCC snapshot has a damaged revision record at byte {at}")));
            }
            *max_rev = (*max_rev).max(main);
            Rec::Revs { main, sub, key }
        }
        TAG_HIST => {
            let main = input.i64()?;
            let sub = input.u32()?;
            let key = input.field("key", MAX_FIELD_BYTES)?;
            let record = input.field("record", MAX_FIELD_BYTES)?;
            if !sound_version(&key, main, &record) {
                return Err(bad(format!("the MVCC snapshot has a damaged row at byte {at}")));
            }
            *max_rev = (*max_rev).max(main);
            Rec::Hist { main, sub, key, record }
        }
        TAG_END => {
            let count = input.u64()?;
            let expected = input.hash.clone().finalize();
            let mut checksum = [0u8; 4];
            input.fill(&mut checksum, false)?;
            if count != input.records {
                return Err(bad(format!(
                    "the MVCC snapshot says it holds {count} records but {} arrived",
                    input.records
                )));
            }
            if u32::from_be_bytes(checksum) != expected {
                return Err(bad("the MVCC snapshot fails its checksum: it was damaged on the way"));
            }
            return Ok(Rec::End);
        }
        other => return Err(bad(format!("the MVCC snapshot has an unknown record kind {other} at byte {at}"))),
    };
    input.records += 1;
    Ok(rec)
}

/// Whether a version from a stream can be one: a key, a revision from 1, and a record that
/// decodes and was not created after that revision.
fn sound_version(key: &[u8], rev: Revision, record: &[u8]) -> bool {
    !key.is_empty() && rev >= 1 && Record::decode_at(record, rev).is_ok()
}

/// Reads the magic bytes and the format of a stream.
fn read_header<R: Read>(input: &mut Input<R>) -> Result<u32, StoreError> {
    let magic = input.array::<8>()?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(bad("not an MVCC snapshot of kuberaft (wrong magic bytes)"));
    }
    let format = input.u32()?;
    if format != SNAPSHOT_FORMAT && format != SNAPSHOT_FORMAT_1 {
        return Err(bad(format!(
            "MVCC snapshot format {format} is not one this version reads ({SNAPSHOT_FORMAT_1} or {SNAPSHOT_FORMAT}): use the same kuberaft version on every member"
        )));
    }
    input.format = format;
    Ok(format)
}

/// Installs up to INSTALL_COMMIT_RECORDS records in `txn`; true at the verified end.
fn install_part<R: Read>(
    txn: &WriteTransaction,
    place: &Place,
    input: &mut Input<R>,
    stage: &mut u8,
    max_rev: &mut Revision,
) -> Result<bool, StoreError> {
    let write = "write the installed snapshot";
    let mut state = txn.open_table(STATE).at(place, write)?;
    let mut meta = txn.open_table(META).at(place, write)?;
    // The stream holds each table in ascending order, so its records are appended through a
    // cursor at the table's end: redb packs them into full pages with one parent update per
    // batch, instead of descending the tree and splitting a half-full leaf per insert (1M keys
    // of 1 KiB: 2,135 MiB installed, and the insert set the catch-up time). A record out of
    // order is refused, as redb refuses it there. Only the tables of the stream's format are
    // made.
    let (mut hist, mut kv, mut revs) = (None, None, None);
    if input.format == SNAPSHOT_FORMAT {
        hist = Some(txn.open_table(HIST).at(place, write)?);
    } else {
        kv = Some(txn.open_table(KV).at(place, write)?);
        revs = Some(txn.open_table(REVS).at(place, write)?);
    }
    let mut hist_end =
        hist.as_mut().map(|t| t.upper_bound_mut(Bound::<(i64, u32)>::Unbounded)).transpose().at(place, write)?;
    let mut kv_end =
        kv.as_mut().map(|t| t.upper_bound_mut(Bound::<(&[u8], i64)>::Unbounded)).transpose().at(place, write)?;
    let mut revs_end =
        revs.as_mut().map(|t| t.upper_bound_mut(Bound::<(i64, u32)>::Unbounded)).transpose().at(place, write)?;
    let mut finished = false;
    for _ in 0..INSTALL_COMMIT_RECORDS {
        let at = input.offset;
        match read_record(input, stage, max_rev)? {
            // A count the stream carries for `scan`, not a number of the store.
            Rec::State { name, .. } if name == LIVE_KEYS_NAME => {}
            Rec::State { name, value } => {
                state.insert(name.as_str(), value).at(place, write)?;
            }
            Rec::Meta { name, value } => {
                meta.insert(name.as_str(), value.as_slice()).at(place, write)?;
            }
            Rec::Kv { key, rev, record } => {
                let end = kv_end.as_mut().ok_or_else(|| bad("a key record in a stream of format 2"))?;
                append(end.insert_before((key.as_slice(), rev), record.as_slice()), place, at, "key")?;
            }
            Rec::Revs { main, sub, key } => {
                let end = revs_end.as_mut().ok_or_else(|| bad("a revision record in a stream of format 2"))?;
                append(end.insert_before((main, sub), key.as_slice()), place, at, "revision")?;
            }
            Rec::Hist { main, sub, key, record } => {
                let end = hist_end.as_mut().ok_or_else(|| bad("a row in a stream of format 1"))?;
                append(end.insert_before((main, sub), encode_row(&key, &record).as_slice()), place, at, "row")?;
            }
            Rec::End => {
                let mut extra = [0u8; 1];
                match input.inner.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => return Err(bad("the MVCC snapshot has bytes after its end")),
                    Err(e) => return Err(bad(format!("cannot read the MVCC snapshot: {e}"))),
                }
                finished = true;
                break;
            }
        }
    }
    for end in [hist_end, revs_end].into_iter().flatten() {
        close(end, place)?;
    }
    if let Some(end) = kv_end {
        close(end, place)?;
    }
    Ok(finished)
}

/// The most `state` records [`scan`] keeps.
const MAX_SCANNED_STATE: usize = 64;

/// What [`scan`] found in a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// The stream's format ([`SNAPSHOT_FORMAT`]).
    pub format: u32,
    /// The store's revision, and the compacted one, at the snapshot's point in time.
    pub revision: Revision,
    pub compacted: Revision,
    /// Keys with a value at `revision`.
    pub keys: u64,
    /// Versions of keys held (the history since `compacted`, tombstones included).
    pub versions: u64,
    /// Records, and the stream's length in bytes up to and with its trailer.
    pub records: u64,
    pub bytes: u64,
    /// The stream's CRC-32, as its trailer holds it.
    pub checksum: u32,
    /// The `meta` records asked for, by name.
    pub meta: std::collections::BTreeMap<String, Vec<u8>>,
}

/// Reads a whole stream and checks it as [`MvccStore::install`] does (every record, the count
/// and the checksum), writing nothing; memory holds one record at a time and the `meta` records
/// named in `keep`. Stops at the trailer: what follows in `input` is the caller's.
pub fn scan(input: impl Read, keep: &[&str]) -> Result<Scanned, StoreError> {
    let mut input = Input { inner: input, hash: crc32fast::Hasher::new(), offset: 0, records: 0, format: 0 };
    let mut found = Scanned { format: read_header(&mut input)?, ..Scanned::default() };
    let (mut stage, mut max_rev) = (TAG_STATE, 0);
    let mut state = std::collections::BTreeMap::new();
    // The newest version of the key being read (versions come in key order, oldest first).
    let mut last: Option<(Vec<u8>, bool)> = None;
    loop {
        match read_record(&mut input, &mut stage, &mut max_rev)? {
            Rec::State { name, value } => {
                // A store has three; memory stays bounded whatever a file holds.
                if state.len() >= MAX_SCANNED_STATE {
                    return Err(bad("the MVCC snapshot has more state records than a store has"));
                }
                state.insert(name, value);
            }
            Rec::Meta { name, value } => {
                if keep.contains(&name.as_str()) {
                    found.meta.insert(name, value);
                }
            }
            Rec::Kv { key, record, .. } => {
                found.versions += 1;
                let live = Record::is_live(&record).map_err(bad)?;
                match &mut last {
                    Some((k, newest)) if *k == key => *newest = live,
                    _ => {
                        if last.take().is_some_and(|(_, live)| live) {
                            found.keys += 1;
                        }
                        last = Some((key, live));
                    }
                }
            }
            Rec::Revs { .. } => {}
            Rec::Hist { .. } => found.versions += 1,
            Rec::End => break,
        }
    }
    if last.is_some_and(|(_, live)| live) {
        found.keys += 1;
    }
    let (revision, compacted) = check_state(|name| Ok(state.get(name).copied()), &Place::memory())
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("the MVCC snapshot has no revision or format"))?;
    if max_rev > revision {
        return Err(bad(format!("the MVCC snapshot holds revision {max_rev}, after its current revision {revision}")));
    }
    if let Some(live) = state.get(LIVE_KEYS_NAME) {
        found.keys = u64::try_from(*live).map_err(|_| bad("the MVCC snapshot counts fewer than no keys"))?;
    }
    found.revision = revision;
    found.compacted = compacted;
    found.records = input.records;
    found.bytes = input.offset;
    found.checksum = input.hash.finalize();
    Ok(found)
}

/// One record appended at a table's end (`install_part`); out of order is a damaged stream.
fn append(done: Result<(), CursorError>, place: &Place, at: u64, what: &str) -> Result<(), StoreError> {
    match done {
        Err(CursorError::UnorderedKey) => {
            Err(bad(format!("the MVCC snapshot has a {what} record out of order or twice at byte {at}")))
        }
        other => other.at(place, "write the installed snapshot"),
    }
}

/// Applies a cursor's pending appends (dropping it would lose their errors).
fn close<K: Key + 'static, V: Value + 'static>(cursor: CursorMut<'_, K, V>, place: &Place) -> Result<(), StoreError> {
    cursor.close().at(place, "write the installed snapshot")
}

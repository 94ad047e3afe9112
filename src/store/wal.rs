//! Durable storage of one member's Raft state: the log, the hard state (term, vote, commit) and
//! snapshots, in a data directory laid out as
//!
//! ```text
//! <dir>/LOCK                           flock'ed while a process has the directory open
//! <dir>/member.json                    MemberMeta, written once (write_meta)
//! <dir>/wal/<16 hex index>.wal         write-ahead log segments, replayed in name order
//! <dir>/snap/<16 hex term>-<16 hex index>.snap
//! ```
//!
//! A segment is a sequence of records `[u32 len][u32 crc32(kind, payload)][u8 kind][payload]`
//! (little endian, `len` counts the payload). Each `persist` call appends exactly ONE record, a
//! bincode `Batch` (snapshot marker, entries, hard state). A record that only moves the commit
//! index is written without an fsync and has its own kind (`RECORD_BATCH_UNSYNCED`); every other
//! record (`RECORD_BATCH`) is fdatasync'ed before `persist` returns. A segment is named after the
//! next log index when it was started; names strictly increase, so name order is write order.
//! Segments roll past `SEGMENT_ROLL_BYTES` and at compaction.
//!
//! Crash recovery (the rule, and why it is safe). An fsync that returns makes every byte written
//! to the file before it durable. So after a crash or power cut, only what was written after
//! the last fsync that returned can be lost, torn, or (pages are written back in any order)
//! lost while a later write survives. That is the tail of the LAST segment, and it consists of
//! records written without an fsync, then at most one record whose fsync was still running
//! (`persist` calls do not overlap). Hence:
//! - the last segment is cut at its first damaged record, even when intact records follow
//!   (point-in-time recovery): they were all written after the last completed fsync, so none
//!   of them was acknowledged as durable. Damage is a bad checksum, a length past the end, or
//!   an incomplete header. The cut itself is fsynced;
//! - unless, among the intact records after the damage, a synced record is followed by another
//!   record: its fsync returned before that one was written, so the damaged record was durable
//!   and has been damaged since. That is `Corrupt`, as is any damage in an older segment
//!   (a segment's tail is fsynced before the next segment is started), an undecodable intact
//!   record, an unknown kind, and a damaged `member.json`. A damaged snapshot file is skipped
//!   (an older one is used) and reported as `Inconsistent` if the log needed it;
//! - a new segment's header record and its directory entry are fsynced before anything is
//!   appended to it, so a power cut may leave an empty or torn new segment (cut like any
//!   torn tail) but never loses records that were acknowledged in it;
//! - compaction deletes old segments and snapshot files only after the snapshot file and the
//!   new segment are durable, and only files the log no longer needs. Segments go oldest first,
//!   with a directory fsync after each, so a power cut leaves a suffix of them, which replays
//!   to the same log (a surviving older segment next to a deleted newer one would bring back
//!   entries that the newer one truncated; the harness found that);
//! - snapshot files and `member.json` are written to a temporary file, fsynced, renamed and the
//!   directory fsynced; leftover temporary files are deleted at open.
//!
//! The power-cut harness (`wal_power_cut_tests.rs`, on the simulated disk of `store::simfs`)
//! checks this rule at every disk operation of a workload. Its limit: an intact record is
//! found after damage by scanning byte by byte, so a value that embeds a whole valid record
//! could, in the unlucky case that a power cut tears the record holding it, make a power cut
//! look like corruption (never the reverse).
//!
//! A member's directory is opened with `open_data_dir`, which also refuses a partial one
//! (`member.json` without its log, a log without `member.json`; see there).
//!
//! Storage keeps no entries in memory (the Raft core holds the log); it tracks only the active
//! segment, each segment's highest live index (to know what compaction may delete), the last
//! hard state (rewritten at the head of every new segment, so deleting old segments never
//! loses it) and the newest snapshot's position.

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::command::decode;
pub use super::error::StoreError;
use super::fs::{DirLock, FileSystem, Reader, RealFs, WalFile};
use crate::raft::{Entry, HardState, Index, Snapshot, SnapshotMeta, Term};

const WAL_DIR: &str = "wal";
const SNAP_DIR: &str = "snap";
const LOCK_FILE: &str = "LOCK";
const META_FILE: &str = "member.json";
const TMP_EXTENSION: &str = "tmp";
const SEGMENT_SUFFIX: &str = ".wal";
const SNAP_SUFFIX: &str = ".snap";

/// A new segment is started once the active one has grown past this.
pub const SEGMENT_ROLL_BYTES: u64 = 64 << 20;
/// No record is larger; a length field above this is damage, never an allocation.
const MAX_RECORD_BYTES: u64 = 1 << 30;
/// `len` + `crc` + `kind`.
const RECORD_HEADER_BYTES: usize = 9;
/// One `Batch` per `persist`, fsynced right after it was written (or part of a segment's header).
const RECORD_BATCH: u8 = 1;
/// One `Batch` per `persist` that only moved the commit index, written without an fsync.
const RECORD_BATCH_UNSYNCED: u8 = 2;

const SNAP_MAGIC: &[u8; 8] = b"KRSNAP01";
/// magic + u64 meta length + u64 data length + u32 crc.
const SNAP_HEADER_BYTES: usize = 8 + 8 + 8 + 4;
/// member.json is a few hundred bytes; anything huge is not ours.
const MAX_META_BYTES: u64 = 1 << 20;

/// Everything durable in a data directory, as `Storage::open` found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    /// The newest hard state (default if none was ever written).
    pub hard_state: HardState,
    /// The newest readable snapshot.
    pub snapshot: Option<Snapshot>,
    /// The log after the snapshot: gap-free, starting at the snapshot's index + 1 (or 1).
    pub entries: Vec<Entry>,
}

/// Identity of the member that owns a data dir, written once at first start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberMeta {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
}

/// "Everything up to `index` (of term `term`) is in a snapshot." Replaying it drops the entries
/// the snapshot covers, and the whole log unless the log holds `index` with that same term
/// (a log that does not match the snapshot at its index is another history).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SnapshotMark {
    index: Index,
    term: Term,
}

/// What one record holds, applied in field order when replayed.
#[derive(Serialize)]
struct BatchRef<'a> {
    snapshot: Option<SnapshotMark>,
    entries: &'a [Entry],
    hard_state: Option<HardState>,
}

#[derive(Deserialize)]
struct Batch {
    snapshot: Option<SnapshotMark>,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
}

/// One WAL segment file.
#[derive(Debug)]
struct Segment {
    /// From the file name: the index the segment was started at (names strictly increase).
    first_index: Index,
    path: PathBuf,
    /// The highest entry index written here that no later record truncated (0: none). Once a
    /// snapshot covers it, the segment holds nothing the log still needs.
    live_max: Index,
}

/// The durable log of one member. Not shareable: one thread drives it, and the directory is
/// locked against other processes.
pub struct Storage {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    wal_dir: PathBuf,
    snap_dir: PathBuf,
    /// Held (flock'ed) for as long as this Storage lives.
    _lock: Box<dyn DirLock>,
    /// Oldest first; the last one is the active segment that records are appended to.
    segments: Vec<Segment>,
    active: Box<dyn WalFile>,
    /// Bytes of the active segment written whole: where the next record goes. All but a
    /// trailing commit-only record are durable.
    active_len: u64,
    /// A failed write may have left bytes after `active_len`; cut them before writing again.
    tail_dirty: bool,
    hard_state: HardState,
    /// Whether the last `persist` ended with an fsync (a commit-only record does not).
    last_synced: bool,
    /// The newest durable snapshot.
    snapshot: Option<SnapshotMark>,
    /// The last index persisted (an upper bound after a snapshot); names new segments.
    last_index: Index,
    fresh: bool,
    segment_roll_bytes: u64,
    #[cfg(test)]
    fault: Option<Fault>,
    /// How many segments `open` cut at a damaged record with intact records after it.
    #[cfg(test)]
    recovered_past_damage: usize,
}

/// Test-only fault injection for the append path.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The next append writes this many bytes, then fails with ENOSPC.
    DiskFullAfter(usize),
}

impl Storage {
    /// Opens (creating if missing) the directory; replays everything durable.
    pub fn open(dir: &Path) -> Result<(Storage, DurableState), StoreError> {
        Storage::open_with(Arc::new(RealFs), dir)
    }

    /// `open` on the given file system.
    pub(crate) fn open_with(fs: Arc<dyn FileSystem>, dir: &Path) -> Result<(Storage, DurableState), StoreError> {
        create_dir(&*fs, dir)?;
        let lock = lock_dir(&*fs, dir)?;
        Storage::open_locked(fs, dir, lock)
    }

    fn open_locked(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        lock: Box<dyn DirLock>,
    ) -> Result<(Storage, DurableState), StoreError> {
        let wal_dir = dir.join(WAL_DIR);
        let snap_dir = dir.join(SNAP_DIR);
        create_dir(&*fs, &wal_dir)?;
        create_dir(&*fs, &snap_dir)?;
        remove_temp_files(&*fs, dir)?;
        remove_temp_files(&*fs, &snap_dir)?;

        let snapshot = load_newest_snapshot(&*fs, &snap_dir)?;
        let mut segments = list_segments(&*fs, &wal_dir)?;
        let mut replay = Replay::default();
        let mut active_len = 0;
        #[cfg(test)]
        let mut recovered_past_damage = 0;
        for k in 0..segments.len() {
            let is_last = k + 1 == segments.len();
            let path = segments[k].path.clone();
            let scan = read_segment(&*fs, &path, is_last)?;
            for (offset, batch) in scan.batches {
                replay
                    .apply(batch, &mut segments[..=k])
                    .map_err(|detail| StoreError::corrupt(&path, offset, detail))?;
            }
            if let Some(reason) = scan.torn {
                #[cfg(test)]
                if scan.dropped > 0 {
                    recovered_past_damage += 1;
                }
                tracing::warn!(
                    path = %path.display(),
                    offset = scan.valid_len,
                    reason = %reason,
                    intact_records_dropped = scan.dropped,
                    "truncating a torn record: the last WAL segment is cut at its first damaged record, which was written after the last completed fsync (a crash or power cut interrupted writes that were never acknowledged as durable)"
                );
                truncate_file(&*fs, &path, scan.valid_len)?;
            }
            if is_last {
                active_len = scan.valid_len;
            }
        }
        let fresh = snapshot.is_none() && replay.batches == 0;
        let hard_state = replay.hard_state.unwrap_or_default();
        let entries = replay.finish(snapshot.as_ref().map(|s| &s.meta), &wal_dir)?;

        let snapshot_mark = snapshot.as_ref().map(|s| SnapshotMark { index: s.meta.index, term: s.meta.term });
        let snapshot_index = snapshot_mark.map_or(0, |m| m.index);
        let last_index = entries.last().map_or(snapshot_index, |e| e.index);
        if segments.is_empty() {
            let first_index = snapshot_index.saturating_add(1);
            let path = wal_dir.join(segment_name(first_index));
            create_segment(&*fs, &path, &[])?;
            sync_dir(&*fs, &wal_dir)?;
            segments.push(Segment { first_index, path, live_max: 0 });
        }
        let active_path = &segments[segments.len() - 1].path;
        let active = fs.open_rw(active_path).map_err(|e| StoreError::io("open WAL segment", active_path, e))?;
        tracing::debug!(
            dir = %dir.display(),
            segments = segments.len(),
            entries = entries.len(),
            snapshot_index,
            term = hard_state.term,
            "storage opened"
        );
        let storage = Storage {
            fs,
            dir: dir.to_path_buf(),
            wal_dir,
            snap_dir,
            _lock: lock,
            segments,
            active,
            active_len,
            tail_dirty: false,
            hard_state,
            last_synced: true,
            snapshot: snapshot_mark,
            last_index,
            fresh,
            segment_roll_bytes: SEGMENT_ROLL_BYTES,
            #[cfg(test)]
            fault: None,
            #[cfg(test)]
            recovered_past_damage,
        };
        Ok((storage, DurableState { hard_state, snapshot, entries }))
    }

    /// Whether the last `persist` ended with an fsync; a record that only moved the commit index
    /// is written without one.
    pub fn last_persist_synced(&self) -> bool {
        self.last_synced
    }

    /// True when nothing was ever persisted here (fresh member).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes hard state, snapshot and entries durable with ONE record (group commit: the caller
    /// batches a whole Ready) and, unless the record only moves the commit index, one fsync.
    /// Stored entries with index >= entries[0].index are replaced (conflict truncation); a
    /// snapshot replaces every entry at or below its index and, when the log does not hold its
    /// index with its term, the whole log. A snapshot is first saved to its own file (which
    /// costs its own fsyncs). On error nothing new is durable for sure and the call can simply
    /// be retried.
    pub fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
    ) -> Result<(), StoreError> {
        if hard_state.is_none() && snapshot.is_none() && entries.is_empty() {
            return Ok(());
        }
        check_contiguous(entries)?;
        self.repair_tail()?;
        if self.active_len >= self.segment_roll_bytes {
            // A segment that cannot be started is no reason to refuse the write itself.
            if let Err(e) = self.roll() {
                tracing::warn!(error = %e, "cannot start a new WAL segment; appending to the current one");
            }
        }
        let mark = snapshot.map(|s| SnapshotMark { index: s.meta.index, term: s.meta.term });
        if let Some(snapshot) = snapshot {
            save_snapshot(&*self.fs, &self.snap_dir, snapshot)?;
        }
        // With a snapshot, older segments may be deleted below; the hard state must then be in
        // the active segment even if it is one whose header a crash cut off.
        let hard_state_to_write = hard_state.copied().or(mark.map(|_| self.hard_state));
        // Only entries, snapshots, terms and votes must be durable before anything is sent or
        // answered. A record that only moves the commit index is written without an fsync (as
        // etcd does): the next fsync of the file carries it, and if a crash loses it the member
        // restarts with an older commit index, which Raft recovers from its leader. Each commit
        // would otherwise cost a second fsync per write on every member. Its kind says so, which
        // recovery needs to tell a power cut from damage (module doc, "Crash recovery").
        let sync = mark.is_some()
            || !entries.is_empty()
            || hard_state.is_some_and(|hs| hs.term != self.hard_state.term || hs.vote != self.hard_state.vote);
        let kind = if sync { RECORD_BATCH } else { RECORD_BATCH_UNSYNCED };
        let record = encode_record(&BatchRef { snapshot: mark, entries, hard_state: hard_state_to_write }, kind)?;
        self.append(&record, sync)?;
        self.last_synced = sync;

        self.fresh = false;
        if let Some(hs) = hard_state {
            self.hard_state = *hs;
        }
        if let Some(mark) = mark {
            self.last_index = self.last_index.max(mark.index);
            if self.snapshot.is_none_or(|s| s.index < mark.index) {
                self.snapshot = Some(mark);
            }
        }
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            note_entries(&mut self.segments, first.index, last.index);
            self.last_index = last.index;
        }
        if let Some(mark) = mark {
            self.remove_covered(mark.index);
        }
        Ok(())
    }

    /// Saves a locally taken snapshot durably (write temp file, fsync, rename, fsync dir), starts
    /// a new segment, then deletes the WAL segments whose entries are all covered by it and the
    /// older snapshot files. A snapshot not newer than the stored one is ignored.
    pub fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mark = SnapshotMark { index: snapshot.meta.index, term: snapshot.meta.term };
        if mark.index == 0 || self.snapshot.is_some_and(|s| s.index >= mark.index) {
            tracing::debug!(index = mark.index, "snapshot is not newer than the stored one; nothing to compact");
            return Ok(());
        }
        self.repair_tail()?;
        save_snapshot(&*self.fs, &self.snap_dir, snapshot)?;
        self.snapshot = Some(mark);
        self.fresh = false;
        // The new segment starts with the hard state and this snapshot's mark, so every older
        // segment can go once the snapshot covers its entries.
        self.roll()?;
        self.remove_covered(mark.index);
        Ok(())
    }

    /// Appends one encoded record and (with `sync`) fdatasyncs. On failure, cuts the file back to
    /// its last good length: left in place, the failed bytes would end up between two good
    /// records once a retry succeeds, and replay would rightly call that corruption.
    fn append(&mut self, record: &[u8], sync: bool) -> Result<(), StoreError> {
        let offset = self.active_len;
        let written = self.write_at(record, offset);
        let path = &self.segments[self.segments.len() - 1].path;
        let result = written.map_err(|e| StoreError::io("append to WAL segment", path, e)).and_then(|()| {
            if sync {
                self.active.sync_data().map_err(|e| StoreError::io("fsync WAL segment", path, e))
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.active_len += record.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.tail_dirty = true;
                if let Err(repair) = self.repair_tail() {
                    tracing::warn!(error = %repair, "could not cut a failed write; will retry before the next write");
                }
                Err(e)
            }
        }
    }

    fn write_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(test)]
        if let Some(Fault::DiskFullAfter(written)) = self.fault.take() {
            self.active.write_all_at(&bytes[..written.min(bytes.len())], offset)?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.active.write_all_at(bytes, offset)
    }

    fn repair_tail(&mut self) -> Result<(), StoreError> {
        if self.tail_dirty {
            let path = &self.segments[self.segments.len() - 1].path;
            self.active
                .set_len(self.active_len)
                .map_err(|e| StoreError::io("truncate a failed write from WAL segment", path, e))?;
            self.tail_dirty = false;
        }
        Ok(())
    }

    /// Starts a new active segment whose first record repeats the hard state and the snapshot
    /// mark, so that it replays correctly without any older segment. The new segment's content
    /// and its directory entry are durable before anything is appended to it.
    fn roll(&mut self) -> Result<(), StoreError> {
        self.repair_tail()?;
        // A commit-only record written without an fsync must be durable before its segment
        // stops being the last: only the last segment may end in damage from a power cut.
        if !self.last_synced {
            let path = &self.segments[self.segments.len() - 1].path;
            self.active.sync_data().map_err(|e| StoreError::io("fsync WAL segment", path, e))?;
            self.last_synced = true;
        }
        let previous = self.segments[self.segments.len() - 1].first_index;
        let first_index = self.last_index.saturating_add(1).max(previous.saturating_add(1));
        let path = self.wal_dir.join(segment_name(first_index));
        let header = encode_record(
            &BatchRef { snapshot: self.snapshot, entries: &[], hard_state: Some(self.hard_state) },
            RECORD_BATCH,
        )?;
        let created = create_segment(&*self.fs, &path, &header)
            .and_then(|file| sync_dir(&*self.fs, &self.wal_dir).map(|()| file));
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                // Best effort: a leftover empty or partial segment would only be replayed as a torn tail.
                let _ = self.fs.remove_file(&path);
                return Err(e);
            }
        };
        tracing::debug!(path = %path.display(), "started a new WAL segment");
        self.segments.push(Segment { first_index, path, live_max: 0 });
        self.active = file;
        self.active_len = header.len() as u64;
        Ok(())
    }

    /// Deletes the oldest segments while everything live in them is covered by the snapshot at
    /// `snapshot_index`, and every snapshot file but the newest. Failures only cost disk space.
    /// Only files that hold nothing the log needs are deleted, so a power cut that undoes some
    /// of these deletions (the directory is synced only after them) leaves a readable log.
    fn remove_covered(&mut self, snapshot_index: Index) {
        // Only a prefix, oldest first, and the directory is synced after EACH deletion: a power
        // cut may undo the last deletion but never leaves an older segment without a newer one
        // (its stale entries would replay without the newer records that truncated them).
        // Replaying a suffix of the segments gives the same log after the snapshot.
        while self.segments.len() > 1 && self.segments[0].live_max <= snapshot_index {
            if let Err(e) = self.fs.remove_file(&self.segments[0].path) {
                tracing::warn!(path = %self.segments[0].path.display(), error = %e, "cannot delete an old WAL segment");
                break;
            }
            self.segments.remove(0);
            if let Err(e) = sync_dir(&*self.fs, &self.wal_dir) {
                tracing::warn!(error = %e, "cannot fsync the WAL directory after deleting a segment; deleting no more");
                break;
            }
        }
        let Some(newest) = self.snapshot else { return };
        let keep = snapshot_name(newest.term, newest.index);
        match list_snapshots(&*self.fs, &self.snap_dir) {
            Ok(files) => {
                let mut deleted_any = false;
                for (_, _, path) in files {
                    if path.file_name().is_some_and(|n| n != keep.as_str()) {
                        match self.fs.remove_file(&path) {
                            Ok(()) => deleted_any = true,
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error = %e, "cannot delete an old snapshot")
                            }
                        }
                    }
                }
                if deleted_any {
                    if let Err(e) = sync_dir(&*self.fs, &self.snap_dir) {
                        tracing::warn!(error = %e, "cannot fsync the snapshot directory after deleting files");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list old snapshots"),
        }
    }
}

/// A member's data directory as `open_data_dir` found it.
pub struct DataDir {
    pub storage: Storage,
    pub durable: DurableState,
    /// `None` only for a new member: nothing was ever persisted.
    pub meta: Option<MemberMeta>,
}

/// Opens a member's data directory (creating what is missing for a new member) and refuses a
/// partial one, so that a member never starts over on top of a log nor rejoins without it:
/// - `member.json` without a WAL (the `wal/` directory or every segment in it is gone):
///   [`StoreError::DataLost`];
/// - a WAL with state (any record or snapshot) without `member.json`:
///   [`StoreError::MissingIdentity`].
///
/// A first start writes the WAL's first (empty) segment durably before `member.json`, and
/// `member.json` durably before the first record, so a crash at any point of it leaves either
/// an empty WAL without `member.json` (a new member again) or `member.json` with an empty
/// WAL (a member that has not persisted anything yet, like a joiner that crashed before its
/// first entry): both start normally.
pub fn open_data_dir(dir: &Path) -> Result<DataDir, StoreError> {
    open_data_dir_with(Arc::new(RealFs), dir)
}

pub(crate) fn open_data_dir_with(fs: Arc<dyn FileSystem>, dir: &Path) -> Result<DataDir, StoreError> {
    create_dir(&*fs, dir)?;
    let lock = lock_dir(&*fs, dir)?;
    let meta = read_meta_with(&*fs, dir)?;
    if let Some(meta) = &meta {
        // Checked before `open` creates a fresh WAL, which would hide the loss at the next start.
        let wal_dir = dir.join(WAL_DIR);
        let missing = if !fs.is_dir(&wal_dir) {
            Some("the wal directory is missing")
        } else if list_segments(&*fs, &wal_dir)?.is_empty() {
            Some("the wal directory holds no segment")
        } else {
            None
        };
        if let Some(detail) = missing {
            return Err(StoreError::DataLost {
                path: dir.join(META_FILE),
                member_id: meta.member_id,
                name: meta.name.clone(),
                detail: detail.into(),
            });
        }
    }
    let (storage, durable) = Storage::open_locked(fs, dir, lock)?;
    if meta.is_none() && !storage.is_fresh() {
        let last = durable.entries.last().map(|e| e.index).or(durable.snapshot.as_ref().map(|s| s.meta.index));
        return Err(StoreError::MissingIdentity {
            path: dir.to_path_buf(),
            detail: format!("term {}, last index {}", durable.hard_state.term, last.unwrap_or(0)),
        });
    }
    Ok(DataDir { storage, durable, meta })
}

/// Lowers every segment's live maximum below a truncation at `first` (those entries are dead),
/// then records `first..=last` in the active (last) segment.
fn note_entries(segments: &mut [Segment], first: Index, last: Index) {
    for segment in segments.iter_mut() {
        segment.live_max = segment.live_max.min(first.saturating_sub(1));
    }
    if let Some(active) = segments.last_mut() {
        active.live_max = active.live_max.max(last);
    }
}

/// Whether `next` directly follows `entry` in a log (without overflowing on damaged input).
fn follows(entry: &Entry, next: &Entry) -> bool {
    entry.index.checked_add(1) == Some(next.index)
}

fn check_contiguous(entries: &[Entry]) -> Result<(), StoreError> {
    if entries.first().is_some_and(|e| e.index == 0) {
        return Err(StoreError::Invalid("entry index 0 is reserved".into()));
    }
    if let Some(pair) = entries.windows(2).find(|w| !follows(&w[0], &w[1])) {
        return Err(StoreError::Invalid(format!(
            "entries must be consecutive, got index {} after {}",
            pair[1].index, pair[0].index
        )));
    }
    Ok(())
}

// ----- replay -----

/// The log as rebuilt from records so far.
#[derive(Default)]
struct Replay {
    hard_state: Option<HardState>,
    /// A gap-free run of entries (not necessarily starting at 1: older segments may be gone).
    entries: Vec<Entry>,
    /// The newest snapshot mark seen.
    base: Option<SnapshotMark>,
    batches: u64,
}

impl Replay {
    fn apply(&mut self, batch: Batch, segments: &mut [Segment]) -> Result<(), String> {
        if batch.entries.first().is_some_and(|e| e.index == 0)
            || batch.entries.windows(2).any(|w| !follows(&w[0], &w[1]))
        {
            return Err("a record holds non-consecutive entries".into());
        }
        if let Some(mark) = batch.snapshot {
            // An older mark (repeated in a segment header) says nothing new.
            if self.base.is_none_or(|b| b.index <= mark.index) {
                apply_base(&mut self.entries, mark);
                self.base = Some(mark);
            }
        }
        if let (Some(first), Some(last)) = (batch.entries.first(), batch.entries.last()) {
            let (first, last) = (first.index, last.index);
            note_entries(segments, first, last);
            match self.entries.first().map(|e| e.index) {
                // Conflict truncation: everything from `first` on is replaced.
                Some(start) if first >= start && first <= start.saturating_add(self.entries.len() as u64) => {
                    self.entries.truncate((first - start) as usize)
                }
                // Starts before what we hold, or after a gap: a new run (checked in `finish`).
                _ => self.entries.clear(),
            }
            self.entries.extend(batch.entries);
        }
        if let Some(hs) = batch.hard_state {
            self.hard_state = Some(hs);
        }
        self.batches += 1;
        Ok(())
    }

    /// Cuts the log at the loaded snapshot and checks that nothing is missing in between.
    fn finish(mut self, snapshot: Option<&SnapshotMeta>, wal_dir: &Path) -> Result<Vec<Entry>, StoreError> {
        let snapshot_index = snapshot.map_or(0, |m| m.index);
        if let Some(base) = self.base.filter(|b| b.index > snapshot_index) {
            return Err(StoreError::Inconsistent {
                path: wal_dir.to_path_buf(),
                detail: format!(
                    "the log records a snapshot at index {} but snap/ holds no readable snapshot that recent",
                    base.index
                ),
            });
        }
        if let Some(meta) = snapshot {
            apply_base(&mut self.entries, SnapshotMark { index: meta.index, term: meta.term });
        }
        if let Some(first) = self.entries.first().filter(|e| Some(e.index) != snapshot_index.checked_add(1)) {
            return Err(StoreError::Inconsistent {
                path: wal_dir.to_path_buf(),
                detail: format!(
                    "the log resumes at index {} but the snapshot ends at index {snapshot_index}: entries are missing",
                    first.index
                ),
            });
        }
        Ok(self.entries)
    }
}

/// Applies a snapshot mark to a gap-free run of entries (see `SnapshotMark`).
fn apply_base(entries: &mut Vec<Entry>, mark: SnapshotMark) {
    let Some(start) = entries.first().map(|e| e.index) else { return };
    if start > mark.index {
        return; // all after the snapshot; a gap, if any, is reported by `finish`
    }
    let pos = (mark.index - start) as usize;
    match entries.get(pos) {
        Some(e) if e.term == mark.term => {
            entries.drain(..=pos);
        }
        // The snapshot is newer than the log, or the log is another history at its index.
        _ => entries.clear(),
    }
}

/// What reading one segment found.
struct SegmentScan {
    /// Decoded records with their byte offsets.
    batches: Vec<(u64, Batch)>,
    /// Bytes up to the end of the last good record.
    valid_len: u64,
    /// Why the rest of the (last) segment is a torn write, if it is.
    torn: Option<String>,
    /// Intact records found after the torn one (written after the last fsync that returned).
    dropped: usize,
}

enum RawRecord {
    Intact {
        kind: u8,
        payload: Vec<u8>,
    },
    /// `record_bytes` is known when the length field fits in the file.
    Bad {
        detail: String,
        record_bytes: Option<u64>,
    },
}

/// Reads one segment. A damaged record in an older segment is corruption. In the last segment
/// it is what a power cut left unless the records after it prove that an fsync covered it
/// (see "Crash recovery" in the module doc); then the segment is cut there.
fn read_segment(fs: &dyn FileSystem, path: &Path, is_last: bool) -> Result<SegmentScan, StoreError> {
    let file = fs.open_read(path).map_err(|e| StoreError::io("open WAL segment", path, e))?;
    let file_len = file.len().map_err(|e| StoreError::io("stat WAL segment", path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, Reader::new(&*file));
    let mut batches = Vec::new();
    let mut offset = 0;
    while offset < file_len {
        match read_record(&mut reader, path, file_len - offset)? {
            RawRecord::Intact { kind, payload } => {
                if !is_batch_kind(kind) {
                    return Err(StoreError::corrupt(
                        path,
                        offset,
                        format!("unknown record kind {kind} (written by a newer kuberaft?)"),
                    ));
                }
                let batch: Batch = decode(&payload)
                    .map_err(|e| StoreError::corrupt(path, offset, format!("undecodable record: {e}")))?;
                batches.push((offset, batch));
                offset += (RECORD_HEADER_BYTES + payload.len()) as u64;
            }
            RawRecord::Bad { detail, record_bytes } => {
                if !is_last {
                    return Err(StoreError::corrupt(
                        path,
                        offset,
                        format!("{detail}, in a segment that was fsynced before the next one was started"),
                    ));
                }
                let scan_from = match record_bytes {
                    Some(bytes) => offset + bytes,
                    None => offset + 1,
                };
                let after = intact_records_after(&*file, path, scan_from, file_len)?;
                // Only the records written since the last fsync that returned can be damaged by a
                // power cut: some written without an fsync, then at most one whose fsync was still
                // running. A synced record with another one after it had its fsync return, and
                // that fsync made this one durable too.
                if let Some(pair) = after.windows(2).find(|pair| pair[0].1 == RECORD_BATCH) {
                    return Err(StoreError::corrupt(
                        path,
                        offset,
                        format!(
                            "{detail}, yet the record at byte {} was fsynced before the record at byte {} was written, \
                             so this record was durable and has been damaged since",
                            pair[0].0, pair[1].0
                        ),
                    ));
                }
                return Ok(SegmentScan { batches, valid_len: offset, torn: Some(detail), dropped: after.len() });
            }
        }
    }
    Ok(SegmentScan { batches, valid_len: offset, torn: None, dropped: 0 })
}

fn is_batch_kind(kind: u8) -> bool {
    kind == RECORD_BATCH || kind == RECORD_BATCH_UNSYNCED
}

/// Reads the record at the reader's position; `remaining` bytes are left in the file.
fn read_record(reader: &mut impl Read, path: &Path, remaining: u64) -> Result<RawRecord, StoreError> {
    if remaining < RECORD_HEADER_BYTES as u64 {
        return Ok(RawRecord::Bad {
            detail: format!("incomplete record header ({remaining} bytes)"),
            record_bytes: None,
        });
    }
    let mut header = [0u8; RECORD_HEADER_BYTES];
    reader.read_exact(&mut header).map_err(|e| StoreError::io("read WAL segment", path, e))?;
    let (len, crc, kind) = parse_header(&header);
    if len > MAX_RECORD_BYTES {
        return Ok(RawRecord::Bad {
            detail: format!("record length {len} exceeds the 1 GiB limit"),
            record_bytes: None,
        });
    }
    if len > remaining - RECORD_HEADER_BYTES as u64 {
        return Ok(RawRecord::Bad {
            detail: format!("record of {len} bytes runs past the end of the file"),
            record_bytes: None,
        });
    }
    // Bounded by the file's real size (checked above), so no allocation can run away.
    let mut payload = vec![0u8; len as usize];
    reader.read_exact(&mut payload).map_err(|e| StoreError::io("read WAL segment", path, e))?;
    if record_crc(kind, &payload) != crc {
        return Ok(RawRecord::Bad {
            detail: "record checksum mismatch".into(),
            record_bytes: Some(RECORD_HEADER_BYTES as u64 + len),
        });
    }
    Ok(RawRecord::Intact { kind, payload })
}

fn parse_header(header: &[u8; RECORD_HEADER_BYTES]) -> (u64, u32, u8) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len as u64, crc, header[8])
}

/// The intact records at or after `from` as (offset, kind): the first found by scanning byte by
/// byte (a damaged record's length cannot be trusted), each next one right after the previous,
/// or again by scanning.
fn intact_records_after(
    file: &dyn WalFile,
    path: &Path,
    from: u64,
    file_len: u64,
) -> Result<Vec<(u64, u8)>, StoreError> {
    if from >= file_len {
        return Ok(Vec::new());
    }
    // At most the rest of one segment (segments roll at a bounded size).
    let mut tail = vec![0u8; (file_len - from) as usize];
    file.read_exact_at(&mut tail, from).map_err(|e| StoreError::io("read WAL segment", path, e))?;
    let mut found = Vec::new();
    let mut at = 0;
    while at + RECORD_HEADER_BYTES <= tail.len() {
        let mut header = [0u8; RECORD_HEADER_BYTES];
        header.copy_from_slice(&tail[at..at + RECORD_HEADER_BYTES]);
        let (len, crc, kind) = parse_header(&header);
        let end = at as u64 + RECORD_HEADER_BYTES as u64 + len;
        if is_batch_kind(kind) && len > 0 && end <= tail.len() as u64 {
            let payload = &tail[at + RECORD_HEADER_BYTES..end as usize];
            if record_crc(kind, payload) == crc {
                found.push((from + at as u64, kind));
                at = end as usize;
                continue;
            }
        }
        at += 1;
    }
    Ok(found)
}

fn record_crc(kind: u8, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(payload);
    hasher.finalize()
}

/// One framed record of `kind` holding `batch`.
fn encode_record(batch: &BatchRef<'_>, kind: u8) -> Result<Vec<u8>, StoreError> {
    let mut record = vec![0u8; RECORD_HEADER_BYTES];
    record[8] = kind;
    bincode::serialize_into(&mut record, batch)
        .map_err(|e| StoreError::Invalid(format!("cannot encode a WAL record: {e}")))?;
    let len = (record.len() - RECORD_HEADER_BYTES) as u64;
    if len > MAX_RECORD_BYTES {
        return Err(StoreError::Invalid(format!("a batch of {len} bytes exceeds the 1 GiB record limit")));
    }
    let crc = record_crc(kind, &record[RECORD_HEADER_BYTES..]);
    record[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(record)
}

// ----- files and directories -----

fn segment_name(first_index: Index) -> String {
    format!("{first_index:016x}{SEGMENT_SUFFIX}")
}

fn snapshot_name(term: Term, index: Index) -> String {
    format!("{term:016x}-{index:016x}{SNAP_SUFFIX}")
}

fn list_segments(fs: &dyn FileSystem, wal_dir: &Path) -> Result<Vec<Segment>, StoreError> {
    let mut segments = Vec::new();
    for path in list_dir(fs, wal_dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let parsed = name
            .strip_suffix(SEGMENT_SUFFIX)
            .filter(|hex| hex.len() == 16)
            .and_then(|hex| u64::from_str_radix(hex, 16).ok());
        match parsed {
            Some(first_index) => segments.push(Segment { first_index, path, live_max: 0 }),
            None => tracing::warn!(path = %path.display(), "ignoring a file that is not a WAL segment"),
        }
    }
    segments.sort_by_key(|s| s.first_index);
    Ok(segments)
}

/// Snapshot files as (index, term, path), newest first.
fn list_snapshots(fs: &dyn FileSystem, snap_dir: &Path) -> Result<Vec<(Index, Term, PathBuf)>, StoreError> {
    let mut snapshots = Vec::new();
    for path in list_dir(fs, snap_dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let parsed = name.strip_suffix(SNAP_SUFFIX).and_then(|stem| stem.split_once('-')).and_then(|(term, index)| {
            let term = (term.len() == 16).then(|| u64::from_str_radix(term, 16).ok()).flatten()?;
            let index = (index.len() == 16).then(|| u64::from_str_radix(index, 16).ok()).flatten()?;
            Some((index, term))
        });
        match parsed {
            Some((index, term)) => snapshots.push((index, term, path)),
            None => tracing::warn!(path = %path.display(), "ignoring a file that is not a snapshot"),
        }
    }
    snapshots.sort_by_key(|(index, term, _)| std::cmp::Reverse((*index, *term)));
    Ok(snapshots)
}

/// The newest snapshot file that reads back intact; damaged ones are skipped with a warning
/// (if the log needed them, `Replay::finish` reports the gap).
fn load_newest_snapshot(fs: &dyn FileSystem, snap_dir: &Path) -> Result<Option<Snapshot>, StoreError> {
    for (index, term, path) in list_snapshots(fs, snap_dir)? {
        match read_snapshot(fs, &path) {
            Ok(snapshot) if snapshot.meta.index == index && snapshot.meta.term == term => return Ok(Some(snapshot)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "skipping a snapshot whose content does not match its name")
            }
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable snapshot"),
        }
    }
    Ok(None)
}

fn save_snapshot(fs: &dyn FileSystem, snap_dir: &Path, snapshot: &Snapshot) -> Result<(), StoreError> {
    let name = snapshot_name(snapshot.meta.term, snapshot.meta.index);
    let meta = bincode::serialize(&snapshot.meta)
        .map_err(|e| StoreError::Invalid(format!("cannot encode snapshot metadata: {e}")))?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&meta);
    hasher.update(&snapshot.data);
    let mut header = Vec::with_capacity(SNAP_HEADER_BYTES);
    header.extend_from_slice(SNAP_MAGIC);
    header.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    header.extend_from_slice(&(snapshot.data.len() as u64).to_le_bytes());
    header.extend_from_slice(&hasher.finalize().to_le_bytes());
    write_file_atomically(fs, snap_dir, &name, &[&header, &meta, &snapshot.data])
}

fn read_snapshot(fs: &dyn FileSystem, path: &Path) -> Result<Snapshot, StoreError> {
    let bytes = fs.read(path).map_err(|e| StoreError::io("read snapshot", path, e))?;
    if bytes.len() < SNAP_HEADER_BYTES || &bytes[..8] != SNAP_MAGIC {
        return Err(StoreError::corrupt(path, 0, "not a kuberaft snapshot file (bad header)"));
    }
    let u64_at = |at: usize| {
        let mut field = [0u8; 8];
        field.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(field)
    };
    let (meta_len, data_len) = (u64_at(8), u64_at(16));
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[24..28]);
    let body_len = (bytes.len() - SNAP_HEADER_BYTES) as u64;
    if meta_len.checked_add(data_len) != Some(body_len) {
        return Err(StoreError::corrupt(
            path,
            8,
            format!("lengths {meta_len} + {data_len} do not match the file's {body_len} bytes"),
        ));
    }
    let meta_end = SNAP_HEADER_BYTES + meta_len as usize;
    if crc32fast::hash(&bytes[SNAP_HEADER_BYTES..]) != u32::from_le_bytes(crc) {
        return Err(StoreError::corrupt(path, SNAP_HEADER_BYTES as u64, "snapshot checksum mismatch"));
    }
    let meta: SnapshotMeta = decode(&bytes[SNAP_HEADER_BYTES..meta_end]).map_err(|e| {
        StoreError::corrupt(path, SNAP_HEADER_BYTES as u64, format!("undecodable snapshot metadata: {e}"))
    })?;
    let data = Bytes::from(bytes).slice(meta_end..);
    Ok(Snapshot { meta, data })
}

/// Reads the identity of the member that owns `dir`; `None` if it was never written.
pub fn read_meta(dir: &Path) -> Result<Option<MemberMeta>, StoreError> {
    read_meta_with(&RealFs, dir)
}

fn read_meta_with(fs: &dyn FileSystem, dir: &Path) -> Result<Option<MemberMeta>, StoreError> {
    let path = dir.join(META_FILE);
    let file = match fs.open_read(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("open", &path, e)),
    };
    let mut text = Vec::new();
    Reader::new(&*file)
        .take(MAX_META_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| StoreError::io("read", &path, e))?;
    if text.len() as u64 > MAX_META_BYTES {
        return Err(StoreError::corrupt(&path, MAX_META_BYTES, "member metadata file is implausibly large"));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| StoreError::corrupt(&path, 0, format!("undecodable member metadata: {e}")))
}

/// Writes the identity of the member that owns `dir`, atomically (tmp + fsync + rename + fsync dir).
pub fn write_meta(dir: &Path, meta: &MemberMeta) -> Result<(), StoreError> {
    write_meta_with(&RealFs, dir, meta)
}

fn write_meta_with(fs: &dyn FileSystem, dir: &Path, meta: &MemberMeta) -> Result<(), StoreError> {
    create_dir(fs, dir)?;
    let mut text = serde_json::to_vec_pretty(meta)
        .map_err(|e| StoreError::Invalid(format!("cannot encode member metadata: {e}")))?;
    text.push(b'\n');
    write_file_atomically(fs, dir, META_FILE, &[&text])
}

/// Writes `parts` to `dir/name` so that after a crash the file is either old or complete.
fn write_file_atomically(fs: &dyn FileSystem, dir: &Path, name: &str, parts: &[&[u8]]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.{TMP_EXTENSION}"));
    let dest = dir.join(name);
    let written = fs
        .create(&tmp)
        .and_then(|mut file| {
            let mut offset = 0;
            for part in parts {
                file.write_all_at(part, offset)?;
                offset += part.len() as u64;
            }
            file.sync_all()
        })
        .map_err(|e| StoreError::io("write", &tmp, e))
        .and_then(|()| fs.rename(&tmp, &dest).map_err(|e| StoreError::io("rename into place", &dest, e)));
    if let Err(e) = written {
        let _ = fs.remove_file(&tmp);
        return Err(e);
    }
    sync_dir(fs, dir)
}

fn create_segment(fs: &dyn FileSystem, path: &Path, header: &[u8]) -> Result<Box<dyn WalFile>, StoreError> {
    let mut file = fs.create_new(path).map_err(|e| StoreError::io("create WAL segment", path, e))?;
    if !header.is_empty() {
        file.write_all_at(header, 0).map_err(|e| StoreError::io("write WAL segment", path, e))?;
        file.sync_data().map_err(|e| StoreError::io("fsync WAL segment", path, e))?;
    }
    Ok(file)
}

fn truncate_file(fs: &dyn FileSystem, path: &Path, len: u64) -> Result<(), StoreError> {
    let mut file = fs.open_rw(path).map_err(|e| StoreError::io("open WAL segment", path, e))?;
    file.set_len(len).map_err(|e| StoreError::io("truncate the torn tail of", path, e))?;
    file.sync_all().map_err(|e| StoreError::io("fsync WAL segment", path, e))
}

/// Creates `dir` if it is missing and makes its entry durable.
fn create_dir(fs: &dyn FileSystem, dir: &Path) -> Result<(), StoreError> {
    if fs.is_dir(dir) {
        return Ok(());
    }
    fs.create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(fs, parent),
        None => Ok(()),
    }
}

fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<(), StoreError> {
    fs.sync_dir(dir).map_err(|e| StoreError::io("fsync directory", dir, e))
}

fn list_dir(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    fs.list_dir(dir).map_err(|e| StoreError::io("list directory", dir, e))
}

/// Leftovers of an interrupted atomic write: never renamed into place, so never durable data.
fn remove_temp_files(fs: &dyn FileSystem, dir: &Path) -> Result<(), StoreError> {
    for path in list_dir(fs, dir)? {
        if path.extension().is_some_and(|ext| ext == TMP_EXTENSION) {
            fs.remove_file(&path).map_err(|e| StoreError::io("remove leftover temporary file", &path, e))?;
        }
    }
    Ok(())
}

/// Takes an exclusive lock on `dir/LOCK`, held while the returned guard lives: two processes
/// writing one log would corrupt it (and two members sharing a log would break Raft's safety).
fn lock_dir(fs: &dyn FileSystem, dir: &Path) -> Result<Box<dyn DirLock>, StoreError> {
    let path = dir.join(LOCK_FILE);
    match fs.lock(&path) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(StoreError::Locked { path: dir.to_path_buf() }),
        Err(e) => Err(StoreError::io("lock", &path, e)),
    }
}

#[cfg(test)]
#[path = "wal_power_cut_tests.rs"]
mod power_cut_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{ConfState, EntryPayload};
    use std::fs::{self, OpenOptions};
    use std::io::Write;

    fn entry(index: Index, term: Term) -> Entry {
        Entry { index, term, payload: EntryPayload::Command(Bytes::from(format!("command {index} of term {term}"))) }
    }

    fn entries(indexes: std::ops::RangeInclusive<Index>, term: Term) -> Vec<Entry> {
        indexes.map(|index| entry(index, term)).collect()
    }

    fn hard_state(term: Term, vote: Option<u64>, commit: Index) -> HardState {
        HardState { term, vote, commit }
    }

    fn snapshot(index: Index, term: Term) -> Snapshot {
        let conf = ConfState { voters: [1, 2, 3].into(), learners: [4].into() };
        Snapshot { meta: SnapshotMeta { index, term, conf }, data: Bytes::from(format!("state at {index}")) }
    }

    fn open(dir: &Path) -> (Storage, DurableState) {
        Storage::open(dir).expect("open storage")
    }

    /// Opens, reads and closes (releasing the lock), as a restarted process would.
    fn reopen(dir: &Path) -> DurableState {
        open(dir).1
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut paths = list_dir(&RealFs, &dir.join(WAL_DIR)).expect("list wal");
        paths.sort();
        paths
    }

    fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
        let mut paths = list_dir(&RealFs, &dir.join(SNAP_DIR)).expect("list snap");
        paths.sort();
        paths
    }

    fn last_segment(dir: &Path) -> PathBuf {
        segment_files(dir).pop().expect("a segment")
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).expect("stat").len()
    }

    /// Byte offsets of the records in a segment.
    fn record_offsets(path: &Path) -> Vec<u64> {
        let bytes = fs::read(path).expect("read segment");
        let mut offsets = Vec::new();
        let mut at = 0;
        while at + RECORD_HEADER_BYTES <= bytes.len() {
            offsets.push(at as u64);
            let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
            at += RECORD_HEADER_BYTES + len;
        }
        offsets
    }

    fn flip_byte(path: &Path, offset: u64) {
        let mut bytes = fs::read(path).expect("read");
        bytes[offset as usize] ^= 0x5a;
        fs::write(path, bytes).expect("write");
    }

    fn append_bytes(path: &Path, extra: &[u8]) {
        let mut file = OpenOptions::new().append(true).open(path).expect("open for append");
        file.write_all(extra).expect("append");
    }

    /// Three persists: 1..=3 (term 1), 4..=5 (term 2), 6 (term 2), each with a hard state.
    fn three_batches(storage: &mut Storage) {
        storage.persist(Some(&hard_state(1, Some(1), 0)), None, &entries(1..=3, 1)).expect("persist");
        storage.persist(Some(&hard_state(2, Some(2), 3)), None, &entries(4..=5, 2)).expect("persist");
        storage.persist(Some(&hard_state(2, Some(2), 5)), None, &entries(6..=6, 2)).expect("persist");
    }

    #[test]
    fn hard_state_entries_and_snapshot_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, state) = open(dir.path());
        assert!(storage.is_fresh());
        assert_eq!(state, DurableState::default());
        assert_eq!(storage.dir(), dir.path());

        storage.persist(Some(&hard_state(1, Some(1), 0)), None, &entries(1..=3, 1)).expect("persist");
        storage.persist(Some(&hard_state(2, Some(2), 3)), None, &entries(4..=5, 2)).expect("persist");
        assert!(!storage.is_fresh());
        drop(storage);

        let (mut storage, state) = open(dir.path());
        assert!(!storage.is_fresh());
        assert_eq!(state.hard_state, hard_state(2, Some(2), 3));
        assert_eq!(state.snapshot, None);
        let mut expected = entries(1..=3, 1);
        expected.extend(entries(4..=5, 2));
        assert_eq!(state.entries, expected);

        // A snapshot from the leader, newer than the whole log, with entries after it.
        let snap = snapshot(7, 3);
        storage.persist(Some(&hard_state(3, None, 7)), Some(&snap), &entries(8..=9, 3)).expect("persist");
        drop(storage);

        let state = reopen(dir.path());
        assert_eq!(state.hard_state, hard_state(3, None, 7));
        assert_eq!(state.snapshot, Some(snap));
        assert_eq!(state.entries, entries(8..=9, 3));
    }

    #[test]
    fn conflict_truncation_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.persist(None, None, &entries(1..=5, 1)).expect("persist");
        // A new leader overwrites 3.. with its own entries.
        storage.persist(Some(&hard_state(2, None, 2)), None, &entries(3..=4, 2)).expect("persist");
        drop(storage);

        let (mut storage, state) = open(dir.path());
        let mut expected = entries(1..=2, 1);
        expected.extend(entries(3..=4, 2));
        assert_eq!(state.entries, expected);

        // And again after the restart, reaching back before the previous truncation.
        storage.persist(Some(&hard_state(3, None, 1)), None, &entries(2..=2, 3)).expect("persist");
        drop(storage);
        let state = reopen(dir.path());
        let mut expected = entries(1..=1, 1);
        expected.extend(entries(2..=2, 3));
        assert_eq!(state.entries, expected);
        assert_eq!(state.hard_state, hard_state(3, None, 1));
    }

    #[test]
    fn only_a_record_that_just_moves_the_commit_index_skips_the_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.persist(Some(&hard_state(1, Some(1), 0)), None, &entries(1..=3, 1)).expect("entries");
        assert!(storage.last_persist_synced(), "entries are synced");
        storage.persist(Some(&hard_state(1, Some(1), 2)), None, &[]).expect("commit");
        assert!(!storage.last_persist_synced(), "a commit-only record is not");
        storage.persist(Some(&hard_state(2, None, 2)), None, &[]).expect("term");
        assert!(storage.last_persist_synced(), "a new term is");
        storage.persist(Some(&hard_state(2, Some(3), 3)), None, &[]).expect("vote");
        assert!(storage.last_persist_synced(), "a vote is");
        storage.persist(Some(&hard_state(2, Some(3), 3)), None, &entries(4..=4, 2)).expect("entry");
        storage.persist(Some(&hard_state(2, Some(3), 4)), None, &[]).expect("commit");
        assert!(!storage.last_persist_synced());
        // Written all the same: a reopen (after a process crash, with the page cache intact)
        // finds it; a compaction syncs it before the segment stops being the last.
        drop(storage);
        let durable = reopen(dir.path());
        assert_eq!(durable.hard_state, hard_state(2, Some(3), 4));
        let (mut storage, _) = open(dir.path());
        storage.persist(Some(&hard_state(2, Some(3), 4)), None, &[]).expect("same commit");
        storage.compact(&snapshot(2, 1)).expect("compact");
        assert!(storage.last_persist_synced(), "rolling a segment syncs its tail");
    }

    #[test]
    fn an_empty_persist_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.persist(None, None, &[]).expect("empty persist");
        assert!(storage.is_fresh());
        assert_eq!(file_len(&last_segment(dir.path())), 0);
        drop(storage);
        let (storage, state) = open(dir.path());
        assert!(storage.is_fresh());
        assert_eq!(state, DurableState::default());
    }

    #[test]
    fn a_torn_tail_is_cut_back_to_the_last_complete_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        three_batches(&mut storage);
        drop(storage);
        let segment = last_segment(dir.path());
        let offsets = record_offsets(&segment);
        assert_eq!(offsets.len(), 3);
        // The crash interrupted the third write.
        let full_len = file_len(&segment);
        OpenOptions::new().write(true).open(&segment).expect("open").set_len(full_len - 5).expect("truncate");

        let (mut storage, state) = open(dir.path());
        assert_eq!(state.hard_state, hard_state(2, Some(2), 3));
        assert_eq!(state.entries.last().map(|e| e.index), Some(5));
        assert_eq!(file_len(&segment), offsets[2], "the torn record is cut away");

        // Writing after the repair continues cleanly.
        storage.persist(Some(&hard_state(2, Some(2), 6)), None, &entries(6..=7, 2)).expect("persist");
        drop(storage);
        let state = reopen(dir.path());
        assert_eq!(state.entries.iter().map(|e| e.index).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
        assert_eq!(state.hard_state.commit, 6);
    }

    #[test]
    fn garbage_after_the_last_record_is_cut_away() {
        let garbage: [&[u8]; 4] = [
            &[0xab; 100],
            &[0; 4096],
            &[1, 2, 3],
            // A header that claims more than a gigabyte.
            &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 9, 9],
        ];
        for extra in garbage {
            let dir = tempfile::tempdir().expect("tempdir");
            let (mut storage, _) = open(dir.path());
            three_batches(&mut storage);
            drop(storage);
            let segment = last_segment(dir.path());
            let clean_len = file_len(&segment);
            append_bytes(&segment, extra);

            let state = reopen(dir.path());
            assert_eq!(state.entries.len(), 6, "garbage {:?}", &extra[..3]);
            assert_eq!(state.hard_state, hard_state(2, Some(2), 5));
            assert_eq!(file_len(&segment), clean_len);
        }
    }

    #[test]
    fn a_damaged_last_record_is_a_torn_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        three_batches(&mut storage);
        drop(storage);
        let segment = last_segment(dir.path());
        let offsets = record_offsets(&segment);
        flip_byte(&segment, offsets[2] + 12);

        let state = reopen(dir.path());
        assert_eq!(state.entries.len(), 5);
        assert_eq!(file_len(&segment), offsets[2]);
    }

    #[test]
    fn a_flipped_byte_in_an_earlier_record_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        three_batches(&mut storage);
        drop(storage);
        let segment = last_segment(dir.path());
        let offsets = record_offsets(&segment);
        let middle_of_first = (offsets[0] + offsets[1]) / 2;
        flip_byte(&segment, middle_of_first);
        let len_before = file_len(&segment);

        match Storage::open(dir.path()) {
            Err(StoreError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, segment);
                assert_eq!(offset, offsets[0]);
            }
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(_) => panic!("expected Corrupt, opened fine"),
        }
        assert_eq!(file_len(&segment), len_before, "acknowledged data is never cut away");
    }

    #[test]
    fn a_damaged_commit_only_record_before_an_intact_synced_one_is_cut_away() {
        // A power cut: the commit-only record (no fsync) was torn, the next record reached the
        // disk, but the fsync that would have made both durable never returned.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.persist(Some(&hard_state(1, Some(1), 0)), None, &entries(1..=3, 1)).expect("entries");
        storage.persist(Some(&hard_state(1, Some(1), 2)), None, &[]).expect("commit");
        storage.persist(Some(&hard_state(1, Some(1), 2)), None, &entries(4..=4, 1)).expect("entry");
        drop(storage);
        let segment = last_segment(dir.path());
        let offsets = record_offsets(&segment);
        assert_eq!(offsets.len(), 3);
        flip_byte(&segment, offsets[1] + 12);

        let (storage, state) = open(dir.path());
        assert_eq!(storage.recovered_past_damage, 1);
        assert_eq!(state.entries, entries(1..=3, 1));
        assert_eq!(state.hard_state, hard_state(1, Some(1), 0));
        assert_eq!(file_len(&segment), offsets[1], "cut at the damaged record");
    }

    #[test]
    fn damage_before_a_synced_record_with_another_after_it_is_corruption() {
        // The third record's fsync returned before the fourth was written, so the second
        // record was durable: its damage came later, and nothing is cut.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.persist(Some(&hard_state(1, Some(1), 0)), None, &entries(1..=3, 1)).expect("entries");
        storage.persist(Some(&hard_state(1, Some(1), 2)), None, &[]).expect("commit");
        storage.persist(Some(&hard_state(1, Some(1), 2)), None, &entries(4..=4, 1)).expect("entry");
        storage.persist(Some(&hard_state(1, Some(1), 4)), None, &[]).expect("commit");
        drop(storage);
        let segment = last_segment(dir.path());
        let offsets = record_offsets(&segment);
        assert_eq!(offsets.len(), 4);
        flip_byte(&segment, offsets[1] + 12);
        let len_before = file_len(&segment);

        let error = Storage::open(dir.path()).err().expect("must not open");
        assert!(matches!(&error, StoreError::Corrupt { offset, .. } if *offset == offsets[1]), "{error}");
        assert!(error.is_corrupt() && !error.is_data_lost());
        assert!(error.to_string().contains("was fsynced before"), "{error}");
        assert_eq!(file_len(&segment), len_before, "acknowledged data is never cut away");
    }

    #[test]
    fn a_flipped_byte_in_a_synced_older_segment_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.segment_roll_bytes = 1; // every persist starts a new segment
        three_batches(&mut storage);
        drop(storage);
        let segments = segment_files(dir.path());
        assert_eq!(segments.len(), 3);
        flip_byte(&segments[0], file_len(&segments[0]) / 2);

        let error = Storage::open(dir.path()).err().expect("must not open");
        assert!(matches!(&error, StoreError::Corrupt { path, .. } if *path == segments[0]), "{error}");
        assert!(error.is_corrupt());
        assert!(error.to_string().contains("move its data directory aside"), "says what to do: {error}");
    }

    fn meta() -> MemberMeta {
        MemberMeta { cluster_id: 7, member_id: 0xab, name: "etcd-1".into() }
    }

    fn open_dir(dir: &Path) -> Result<DataDir, StoreError> {
        open_data_dir(dir)
    }

    fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(path) = stack.pop() {
            for entry in fs::read_dir(&path).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path.clone());
                }
                out.push((path.clone(), fs::metadata(&path).expect("stat").len()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_new_or_half_started_data_directory_opens_as_a_new_member() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("member");
        let opened = open_dir(&dir).expect("new");
        assert!(opened.meta.is_none() && opened.storage.is_fresh());
        drop(opened);
        // The first start stopped after creating the WAL, before member.json.
        let opened = open_dir(&dir).expect("again");
        assert!(opened.meta.is_none() && opened.storage.is_fresh());
    }

    #[test]
    fn member_json_with_an_empty_wal_restarts_as_that_member() {
        // A joiner that crashed before its first entry.
        let tmp = tempfile::tempdir().expect("tempdir");
        drop(open_dir(tmp.path()).expect("new"));
        write_meta(tmp.path(), &meta()).expect("meta");
        let opened = open_dir(tmp.path()).expect("restart");
        assert_eq!(opened.meta, Some(meta()));
        assert!(opened.storage.is_fresh());
    }

    #[test]
    fn a_log_without_member_json_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let opened = open_dir(tmp.path()).expect("new");
        let mut storage = opened.storage;
        three_batches(&mut storage);
        drop(storage);
        let before = listing(tmp.path());

        let error = open_dir(tmp.path()).err().expect("must refuse");
        assert!(matches!(error, StoreError::MissingIdentity { .. }), "{error}");
        assert!(error.is_corrupt(), "exit code 4");
        assert!(error.to_string().contains("term 2, last index 6"), "{error}");
        assert!(error.to_string().contains("move its data directory aside"), "says what to do: {error}");
        assert_eq!(listing(tmp.path()), before, "nothing changed");

        // A snapshot alone is state too.
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut storage = open_dir(tmp.path()).expect("new").storage;
        storage.compact(&snapshot(3, 1)).expect("compact");
        drop(storage);
        assert!(matches!(open_dir(tmp.path()), Err(StoreError::MissingIdentity { .. })));
    }

    #[test]
    fn member_json_without_its_log_is_data_lost_every_time() {
        for remove in ["the wal directory", "every segment"] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let mut storage = open_dir(tmp.path()).expect("new").storage;
            write_meta(tmp.path(), &meta()).expect("meta");
            three_batches(&mut storage);
            drop(storage);
            let wal_dir = tmp.path().join(WAL_DIR);
            match remove {
                "every segment" => segment_files(tmp.path()).iter().for_each(|s| fs::remove_file(s).expect("rm")),
                _ => fs::remove_dir_all(&wal_dir).expect("rm -r"),
            }
            let before = listing(tmp.path());
            for attempt in 0..2 {
                let error = open_dir(tmp.path()).err().expect("must refuse");
                assert!(
                    matches!(&error, StoreError::DataLost { member_id: 0xab, .. }),
                    "{remove}, attempt {attempt}: {error}"
                );
                assert!(error.is_data_lost() && !error.is_corrupt(), "exit code 3");
                assert!(error.to_string().contains("remove member ab from the cluster"), "{error}");
                assert_eq!(listing(tmp.path()), before, "no fresh WAL hides the loss from the next start");
            }
        }
    }

    #[test]
    fn a_power_cut_anywhere_in_a_first_start_never_leaves_a_partial_data_directory() {
        use crate::store::simfs::{CutMode, CutStats, SimFs};
        // What the node does at a first start: open, write member.json, persist the bootstrap.
        let fs = SimFs::default();
        fs.record_cuts();
        let dir = Path::new("/var/lib/kuberaft");
        let opened = open_data_dir_with(Arc::new(fs.clone()), dir).expect("open");
        write_meta_with(&fs, dir, &meta()).expect("meta");
        let mut storage = opened.storage;
        storage.persist(Some(&hard_state(1, None, 0)), None, &entries(1..=3, 1)).expect("bootstrap");
        drop(storage);
        let cuts = fs.take_cuts();
        let mut stats = CutStats::default();
        let mut seen = std::collections::BTreeSet::new();
        for (cut, (_, disk)) in cuts.iter().enumerate() {
            for outcome in 0..32 {
                let mode = match outcome {
                    0 => CutMode::KeepAll,
                    1 => CutMode::LoseAll,
                    n => CutMode::Random((cut as u64) << 8 | n),
                };
                let image = disk.power_cut(mode, &mut stats);
                let opened = open_data_dir_with(Arc::new(SimFs::with_disk(image)), dir)
                    .unwrap_or_else(|e| panic!("cut {cut} outcome {outcome}: {e}"));
                let kind = match (&opened.meta, opened.storage.is_fresh()) {
                    (None, true) => "new member",
                    (Some(_), true) => "member without entries",
                    (Some(_), false) => "member with its log",
                    (None, false) => panic!("cut {cut} outcome {outcome}: a log without member.json opened"),
                };
                if kind == "member with its log" {
                    assert_eq!(opened.durable.entries, entries(1..=3, 1), "cut {cut} outcome {outcome}");
                }
                seen.insert(kind);
            }
        }
        assert_eq!(seen.len(), 3, "every stage was cut: {seen:?}");
    }

    #[test]
    fn an_implausible_length_before_intact_records_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        three_batches(&mut storage);
        drop(storage);
        let segment = last_segment(dir.path());
        let mut bytes = fs::read(&segment).expect("read");
        bytes[3] = 0x7f; // the first record now claims ~2 GiB
        fs::write(&segment, bytes).expect("write");

        let error = Storage::open(dir.path()).err().expect("must not open");
        assert!(matches!(error, StoreError::Corrupt { offset: 0, .. }), "{error}");
        assert!(error.to_string().contains("move its data directory aside"), "says what to do: {error}");
    }

    #[test]
    fn a_bad_tail_in_an_older_segment_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.segment_roll_bytes = 1; // every persist starts a new segment
        three_batches(&mut storage);
        drop(storage);
        let segments = segment_files(dir.path());
        assert_eq!(segments.len(), 3);
        let first = &segments[0];
        let len = file_len(first);
        OpenOptions::new().write(true).open(first).expect("open").set_len(len - 3).expect("truncate");

        let error = Storage::open(dir.path()).err().expect("must not open");
        assert!(matches!(&error, StoreError::Corrupt { path, .. } if path == first), "{error}");
    }

    #[test]
    fn compaction_deletes_covered_segments_and_keeps_later_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.segment_roll_bytes = 1;
        // The hard state is written once, in the first segment, which compaction deletes.
        storage.persist(Some(&hard_state(4, Some(3), 0)), None, &entries(1..=1, 1)).expect("persist");
        for index in 2..=10 {
            storage.persist(None, None, &entries(index..=index, 1)).expect("persist");
        }
        assert_eq!(segment_files(dir.path()).len(), 10);

        storage.compact(&snapshot(6, 1)).expect("compact");
        // Segments of entries 1..=6 are gone; 7..=10 stay, plus the new active segment.
        let names: Vec<String> = segment_files(dir.path())
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect();
        assert_eq!(
            names,
            [
                "0000000000000007.wal",
                "0000000000000008.wal",
                "0000000000000009.wal",
                "000000000000000a.wal",
                "000000000000000b.wal"
            ]
        );
        assert_eq!(snapshot_files(dir.path()).len(), 1);
        drop(storage);

        let (mut storage, state) = open(dir.path());
        assert_eq!(state.snapshot, Some(snapshot(6, 1)));
        assert_eq!(state.entries, entries(7..=10, 1));
        assert_eq!(state.hard_state, hard_state(4, Some(3), 0));

        // A newer snapshot replaces the older file; an older one is ignored.
        storage.compact(&snapshot(9, 1)).expect("compact");
        storage.compact(&snapshot(8, 1)).expect("older compact is a no-op");
        let snaps = snapshot_files(dir.path());
        assert_eq!(snaps.len(), 1);
        assert!(snaps[0].ends_with(snapshot_name(1, 9)));
        storage.persist(None, None, &entries(11..=11, 1)).expect("persist");
        drop(storage);

        let state = reopen(dir.path());
        assert_eq!(state.snapshot, Some(snapshot(9, 1)));
        assert_eq!(state.entries, entries(10..=11, 1));
        assert_eq!(state.hard_state, hard_state(4, Some(3), 0));
    }

    #[test]
    fn compaction_never_resurrects_truncated_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.segment_roll_bytes = 1;
        storage.persist(Some(&hard_state(1, None, 0)), None, &entries(1..=10, 1)).expect("persist");
        // A new leader replaced 5.. (the stale 5..=10 stay in the first segment's bytes).
        storage.persist(Some(&hard_state(2, None, 4)), None, &entries(5..=6, 2)).expect("persist");
        storage.persist(None, None, &entries(7..=8, 2)).expect("persist");

        storage.compact(&snapshot(4, 1)).expect("compact");
        // Only 1..=4 of the first segment were live, so it could go.
        assert_eq!(segment_files(dir.path()).len(), 3);
        drop(storage);

        let state = reopen(dir.path());
        assert_eq!(state.snapshot.map(|s| s.meta.index), Some(4));
        assert_eq!(state.entries, entries(5..=8, 2));
    }

    #[test]
    fn a_leader_snapshot_that_conflicts_with_the_log_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.persist(Some(&hard_state(1, None, 2)), None, &entries(1..=5, 1)).expect("persist");
        // Index 4 was committed in term 2 elsewhere: our 1..=5 is another history.
        storage.persist(Some(&hard_state(2, None, 4)), Some(&snapshot(4, 2)), &[]).expect("persist");
        drop(storage);

        let state = reopen(dir.path());
        assert_eq!(state.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)), Some((4, 2)));
        assert!(state.entries.is_empty());
    }

    #[test]
    fn a_leader_snapshot_that_matches_the_log_keeps_later_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.persist(Some(&hard_state(1, None, 2)), None, &entries(1..=5, 1)).expect("persist");
        storage.persist(None, Some(&snapshot(3, 1)), &[]).expect("persist");
        drop(storage);

        let state = reopen(dir.path());
        assert_eq!(state.snapshot.map(|s| s.meta.index), Some(3));
        assert_eq!(state.entries, entries(4..=5, 1));
    }

    #[test]
    fn a_leader_snapshot_keeps_the_hard_state_when_it_deletes_old_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.persist(Some(&hard_state(5, Some(2), 0)), None, &entries(1..=3, 1)).expect("persist");
        drop(storage);
        // A crash while starting a new segment left it empty, without its header record.
        create_segment(&RealFs, &dir.path().join(WAL_DIR).join(segment_name(4)), &[]).expect("create");

        let (mut storage, state) = open(dir.path());
        assert_eq!(state.hard_state, hard_state(5, Some(2), 0));
        storage.persist(None, Some(&snapshot(10, 2)), &[]).expect("persist");
        assert_eq!(segment_files(dir.path()).len(), 1, "the first segment is covered by the snapshot");
        drop(storage);

        let state = reopen(dir.path());
        assert_eq!(state.hard_state, hard_state(5, Some(2), 0));
        assert_eq!(state.snapshot.map(|s| s.meta.index), Some(10));
        assert!(state.entries.is_empty());
    }

    #[test]
    fn a_crash_between_snapshot_file_and_log_record_recovers() {
        // The snapshot file is durable, the WAL record saying so is not.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.persist(Some(&hard_state(1, None, 5)), None, &entries(1..=5, 1)).expect("persist");
        save_snapshot(&RealFs, &dir.path().join(SNAP_DIR), &snapshot(3, 1)).expect("save");
        drop(storage);
        let state = reopen(dir.path());
        assert_eq!(state.snapshot.map(|s| s.meta.index), Some(3));
        assert_eq!(state.entries, entries(4..=5, 1));

        // Newer than the whole log: the log is dropped.
        save_snapshot(&RealFs, &dir.path().join(SNAP_DIR), &snapshot(9, 2)).expect("save");
        let state = reopen(dir.path());
        assert_eq!(state.snapshot.map(|s| s.meta.index), Some(9));
        assert!(state.entries.is_empty());
    }

    #[test]
    fn an_unreadable_newest_snapshot_falls_back_to_an_older_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.persist(Some(&hard_state(1, None, 5)), None, &entries(1..=5, 1)).expect("persist");
        let snap_dir = dir.path().join(SNAP_DIR);
        save_snapshot(&RealFs, &snap_dir, &snapshot(2, 1)).expect("save");
        save_snapshot(&RealFs, &snap_dir, &snapshot(4, 1)).expect("save");
        drop(storage);
        let newest = snap_dir.join(snapshot_name(1, 4));
        flip_byte(&newest, file_len(&newest) - 1);

        let state = reopen(dir.path());
        assert_eq!(state.snapshot.map(|s| s.meta.index), Some(2));
        assert_eq!(state.entries, entries(3..=5, 1));
    }

    #[test]
    fn a_missing_snapshot_is_reported_not_papered_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.segment_roll_bytes = 1;
        for index in 1..=6 {
            storage.persist(Some(&hard_state(1, None, index)), None, &entries(index..=index, 1)).expect("persist");
        }
        storage.compact(&snapshot(4, 1)).expect("compact");
        drop(storage);
        for snap in snapshot_files(dir.path()) {
            fs::remove_file(snap).expect("remove");
        }
        let error = Storage::open(dir.path()).err().expect("must not open");
        assert!(matches!(error, StoreError::Inconsistent { .. }), "{error}");
    }

    #[test]
    fn many_small_persists_reopen_correctly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.segment_roll_bytes = 16 << 10; // exercise replay across segments too
        for index in 1..=1000 {
            let term = 1 + index / 300;
            storage.persist(Some(&hard_state(term, Some(1), index - 1)), None, &[entry(index, term)]).expect("persist");
        }
        assert!(segment_files(dir.path()).len() > 2);
        drop(storage);

        let state = reopen(dir.path());
        assert_eq!(state.entries.len(), 1000);
        assert!(state.entries.iter().enumerate().all(|(i, e)| e.index == i as u64 + 1 && e.term == 1 + e.index / 300));
        assert_eq!(state.hard_state, hard_state(4, Some(1), 999));
    }

    #[test]
    fn a_full_disk_fails_the_persist_and_keeps_durable_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        storage.persist(Some(&hard_state(1, Some(1), 0)), None, &entries(1..=3, 1)).expect("persist");
        let segment = last_segment(dir.path());
        let durable_len = file_len(&segment);

        // Half a record reaches the disk, then ENOSPC.
        storage.fault = Some(Fault::DiskFullAfter(20));
        let error = storage.persist(Some(&hard_state(2, None, 3)), None, &entries(4..=5, 2)).expect_err("disk full");
        assert!(error.is_disk_full(), "{error}");
        assert!(error.to_string().contains("disk is full"), "{error}");
        assert_eq!(file_len(&segment), durable_len, "the partial write is cut away");

        // A restart now sees exactly what was durable before.
        drop(storage);
        let (mut storage, state) = open(dir.path());
        assert_eq!(state.entries, entries(1..=3, 1));
        assert_eq!(state.hard_state, hard_state(1, Some(1), 0));

        // Once space is back, the same call succeeds.
        storage.fault = Some(Fault::DiskFullAfter(0));
        assert!(storage.persist(Some(&hard_state(2, None, 3)), None, &entries(4..=5, 2)).is_err());
        storage.persist(Some(&hard_state(2, None, 3)), None, &entries(4..=5, 2)).expect("retry");
        drop(storage);
        let state = reopen(dir.path());
        assert_eq!(state.entries.len(), 5);
        assert_eq!(state.hard_state, hard_state(2, None, 3));
    }

    /// The same on a real full filesystem, e.g.
    /// `mount -t tmpfs -o size=256k tmpfs /mnt/small && KUBERAFT_TEST_SMALL_FS=/mnt/small cargo test -- --ignored`.
    #[test]
    #[ignore = "needs a small filesystem named by KUBERAFT_TEST_SMALL_FS"]
    fn a_real_full_disk_fails_the_persist_and_keeps_durable_data() {
        let Some(small_fs) = std::env::var_os("KUBERAFT_TEST_SMALL_FS") else {
            panic!("set KUBERAFT_TEST_SMALL_FS to a directory on a small filesystem");
        };
        let dir = tempfile::tempdir_in(small_fs).expect("tempdir");
        let filler = dir.path().join("filler");
        fs::write(&filler, vec![7u8; 64 << 10]).expect("filler");
        let data_dir = dir.path().join("member");
        let (mut storage, _) = open(&data_dir);
        let big =
            |index: Index| Entry { index, term: 1, payload: EntryPayload::Command(Bytes::from(vec![1u8; 16 << 10])) };
        let mut durable = 0;
        let error = loop {
            let next = durable + 1;
            match storage.persist(Some(&hard_state(1, None, durable)), None, &[big(next)]) {
                Ok(()) => durable = next,
                Err(e) => break e,
            }
            assert!(durable < 10_000, "the filesystem never filled up");
        };
        assert!(error.is_disk_full(), "{error}");
        drop(storage);

        let (mut storage, state) = open(&data_dir);
        assert_eq!(state.entries.len() as u64, durable);
        assert_eq!(state.hard_state.commit, durable - 1);
        fs::remove_file(&filler).expect("free space");
        storage.persist(Some(&hard_state(1, None, durable)), None, &[big(durable + 1)]).expect("retry with space");
        drop(storage);
        assert_eq!(reopen(&data_dir).entries.len() as u64, durable + 1);
    }

    #[test]
    fn non_consecutive_entries_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut storage, _) = open(dir.path());
        let gap = vec![entry(1, 1), entry(3, 1)];
        assert!(matches!(storage.persist(None, None, &gap), Err(StoreError::Invalid(_))));
        assert!(matches!(storage.persist(None, None, &[entry(0, 1)]), Err(StoreError::Invalid(_))));
        assert!(storage.is_fresh());
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (storage, _) = open(dir.path());
        assert!(matches!(Storage::open(dir.path()), Err(StoreError::Locked { .. })));
        drop(storage);
        open(dir.path());
    }

    #[test]
    fn member_meta_roundtrip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("member");
        assert_eq!(read_meta(&data_dir).expect("read"), None);

        let meta = MemberMeta { cluster_id: 0xdead_beef, member_id: 42, name: "etcd-0".into() };
        write_meta(&data_dir, &meta).expect("write");
        assert_eq!(read_meta(&data_dir).expect("read"), Some(meta.clone()));

        let renamed = MemberMeta { name: "etcd-1".into(), ..meta };
        write_meta(&data_dir, &renamed).expect("overwrite");
        assert_eq!(read_meta(&data_dir).expect("read"), Some(renamed));
        assert_eq!(list_dir(&RealFs, &data_dir).expect("list").len(), 1, "no temporary file is left");

        fs::write(data_dir.join(META_FILE), b"{ not json").expect("damage");
        assert!(matches!(read_meta(&data_dir), Err(StoreError::Corrupt { .. })));
    }
}

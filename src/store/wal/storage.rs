//! The log of one member (`Storage`): the write path (`persist`, `compact`), rolling to a new
//! segment, deleting what a snapshot covers, and opening (replaying) what is durable.
//!
//! This room holds the order of disk operations that makes the recovery rule hold (module doc
//! of `store::wal`); it leaves the byte layout to `record`, reading segments back to `replay`,
//! snapshot files to `snapfile`, and `member.json` to `meta`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::fs::{create_dir, lock_dir, remove_temp_files, sync_dir, DirLock, FileSystem, RealFs, WalFile};
use super::record::{encode_record, encode_record_into, BatchRef, SnapshotMark, RECORD_BATCH, RECORD_BATCH_UNSYNCED};
use super::replay::{follows, read_segment, Replay};
use super::segment::{
    create_segment, list_segments, note_entries, preallocate, segment_name, truncate_file, Segment, SEGMENT_ROLL_BYTES,
};
use super::snapfile::{list_snapshots, load_newest_snapshot, save_snapshot, snapshot_name};
use super::{StoreError, SNAP_DIR, WAL_DIR};
use crate::raft::{Entry, HardState, Index, Snapshot};

/// The most memory a WAL keeps between writes for encoding the next record: a batch of the
/// largest values (16 MiB), so that each write of a busy member does not map fresh memory; a
/// larger record's buffer is freed.
const KEPT_RECORD_BYTES: usize = 16 << 20;

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
    pub(super) segment_roll_bytes: u64,
    /// The last record's buffer, kept for the next (up to `KEPT_RECORD_BYTES`).
    record_buffer: Vec<u8>,
    #[cfg(test)]
    pub(super) fault: Option<Fault>,
    /// How many segments `open` cut at a damaged record with intact records after it.
    #[cfg(test)]
    pub(super) recovered_past_damage: usize,
}

/// Test-only fault injection for the append path.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(super) enum Fault {
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

    pub(super) fn open_locked(
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
            create_segment(&*fs, &path, &[], SEGMENT_ROLL_BYTES)?;
            sync_dir(&*fs, &wal_dir)?;
            segments.push(Segment { first_index, path, live_max: 0 });
        }
        let active_path = &segments[segments.len() - 1].path;
        let mut active = fs.open_rw(active_path).map_err(|e| StoreError::io("open WAL segment", active_path, e))?;
        // Again after a cut, or for a segment of a version that did not preallocate.
        preallocate(&mut *active, active_path, SEGMENT_ROLL_BYTES);
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
            record_buffer: Vec::new(),
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
        let mut record = std::mem::take(&mut self.record_buffer);
        let batch = BatchRef { snapshot: mark, entries, hard_state: hard_state_to_write };
        let appended = encode_record_into(&batch, kind, &mut record).and_then(|()| self.append(&record, sync));
        if record.capacity() <= KEPT_RECORD_BYTES {
            self.record_buffer = record;
        }
        appended?;
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
            preallocate(&mut *self.active, path, self.segment_roll_bytes);
        }
        Ok(())
    }

    /// Starts a new active segment whose first record repeats the hard state and the snapshot
    /// mark, so that it replays correctly without any older segment. The new segment's content
    /// and its directory entry are durable before anything is appended to it.
    fn roll(&mut self) -> Result<(), StoreError> {
        self.repair_tail()?;
        // Only the last segment may end in what a power cut leaves, or in preallocated zeros:
        // this one is cut back to its records (`segment::preallocate`), and a commit-only
        // record written without an fsync made durable, before the next one starts.
        {
            let path = &self.segments[self.segments.len() - 1].path;
            if self.active.len().map_err(|e| StoreError::io("stat WAL segment", path, e))? > self.active_len {
                self.active
                    .set_len(self.active_len)
                    .map_err(|e| StoreError::io("cut the preallocated end of WAL segment", path, e))?;
                self.active.sync_data().map_err(|e| StoreError::io("fsync WAL segment", path, e))?;
            } else if !self.last_synced {
                self.active.sync_data().map_err(|e| StoreError::io("fsync WAL segment", path, e))?;
            }
            self.last_synced = true;
        }
        let previous = self.segments[self.segments.len() - 1].first_index;
        let first_index = self.last_index.saturating_add(1).max(previous.saturating_add(1));
        let path = self.wal_dir.join(segment_name(first_index));
        let header = encode_record(
            &BatchRef { snapshot: self.snapshot, entries: &[], hard_state: Some(self.hard_state) },
            RECORD_BATCH,
        )?;
        let created = create_segment(&*self.fs, &path, &header, self.segment_roll_bytes)
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

//! Replay and crash recovery: reading segments back into the log, and the rule that tells a
//! torn tail (cut away) from corruption (refused); the rule and why it is safe are in the
//! module doc of `store::wal`.
//!
//! This room reads; the only change it makes is the caller's cut of a torn tail
//! (`segment::truncate_file`). It never writes a record.

use std::io::BufReader;
use std::path::Path;

use super::super::fs::{FileSystem, Reader, WalFile};
use super::record::{
    decode_batch, intact_records_after, is_batch_kind, is_synced_kind, read_record, Batch, RawRecord, SnapshotMark,
    RECORD_HEADER_BYTES,
};
use super::segment::{note_entries, Segment};
use super::StoreError;
use crate::raft::{Entry, HardState, SnapshotMeta};

/// Whether `next` directly follows `entry` in a log (without overflowing on damaged input).
pub(super) fn follows(entry: &Entry, next: &Entry) -> bool {
    entry.index.checked_add(1) == Some(next.index)
}

/// The log as rebuilt from records so far.
#[derive(Default)]
pub(super) struct Replay {
    pub(super) hard_state: Option<HardState>,
    /// A gap-free run of entries (not necessarily starting at 1: older segments may be gone).
    entries: Vec<Entry>,
    /// The newest snapshot mark seen.
    base: Option<SnapshotMark>,
    pub(super) batches: u64,
}

impl Replay {
    pub(super) fn apply(&mut self, batch: Batch, segments: &mut [Segment]) -> Result<(), String> {
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
    pub(super) fn finish(mut self, snapshot: Option<&SnapshotMeta>, wal_dir: &Path) -> Result<Vec<Entry>, StoreError> {
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
pub(super) fn apply_base(entries: &mut Vec<Entry>, mark: SnapshotMark) {
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

/// Whether every byte of `file` from `from` to `file_len` is zero: space preallocated and never
/// written. Reads 1 MiB at a time.
fn zeros_to_end(file: &dyn WalFile, path: &Path, from: u64, file_len: u64) -> Result<bool, StoreError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < file_len {
        let n = usize::try_from(file_len - at).unwrap_or(usize::MAX).min(buf.len());
        file.read_exact_at(&mut buf[..n], at).map_err(|e| StoreError::io("read WAL segment", path, e))?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// What reading one segment found.
pub(super) struct SegmentScan {
    /// Decoded records with their byte offsets.
    pub(super) batches: Vec<(u64, Batch)>,
    /// Bytes up to the end of the last good record.
    pub(super) valid_len: u64,
    /// Why the rest of the (last) segment is a torn write, if it is.
    pub(super) torn: Option<String>,
    /// Intact records found after the torn one (written after the last fsync that returned).
    pub(super) dropped: usize,
}

/// Reads one segment. A damaged record in an older segment is corruption. In the last segment
/// it is what a power cut left unless the records after it prove that an fsync covered it
/// (see "Crash recovery" in the module doc); then the segment is cut there.
pub(super) fn read_segment(fs: &dyn FileSystem, path: &Path, is_last: bool) -> Result<SegmentScan, StoreError> {
    let file = fs.open_read(path).map_err(|e| StoreError::io("open WAL segment", path, e))?;
    let file_len = file.len().map_err(|e| StoreError::io("stat WAL segment", path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, Reader::new(&*file));
    let mut batches = Vec::new();
    let mut offset = 0;
    while offset < file_len {
        match read_record(&mut reader, path, file_len - offset)? {
            RawRecord::Intact { kind, payload } => {
                if !is_batch_kind(kind) {
                    // Its checksum holds: written so, by a kuberaft that knows this kind.
                    return Err(StoreError::NewerFormat {
                        path: path.to_path_buf(),
                        detail: format!(
                            "a WAL record of kind {kind} at byte {offset}, which this version does not know"
                        ),
                    });
                }
                let batch = decode_batch(kind, &payload)
                    .map_err(|e| StoreError::corrupt(path, offset, format!("undecodable record: {e}")))?;
                batches.push((offset, batch));
                offset += (RECORD_HEADER_BYTES + payload.len()) as u64;
            }
            RawRecord::Bad { detail, record_bytes } => {
                if is_last && zeros_to_end(&*file, path, offset, file_len)? {
                    // The preallocated rest of the segment (`segment::preallocate`): its end.
                    break;
                }
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
                if let Some(pair) = after.windows(2).find(|pair| is_synced_kind(pair[0].1)) {
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

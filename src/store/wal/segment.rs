//! Segment files: their names, listing them in write order, creating one durably, cutting one
//! back to a length, and what each one still holds that the log needs (`live_max`).
//!
//! This room works on whole files through `store::fs`; what goes inside a segment is
//! `record`'s, when to start or delete one is `Storage`'s, and how to read one back is
//! `replay`'s.

use std::path::{Path, PathBuf};

use super::super::fs::{list_dir, FileSystem, WalFile};
use super::StoreError;
use crate::raft::Index;

const SEGMENT_SUFFIX: &str = ".wal";
/// A new segment is started once the active one has grown past this.
pub const SEGMENT_ROLL_BYTES: u64 = 64 << 20;

/// One WAL segment file.
#[derive(Debug)]
pub(super) struct Segment {
    /// From the file name: the index the segment was started at (names strictly increase).
    pub(super) first_index: Index,
    pub(super) path: PathBuf,
    /// The highest entry index written here that no later record truncated (0: none). Once a
    /// snapshot covers it, the segment holds nothing the log still needs.
    pub(super) live_max: Index,
}

/// Lowers every segment's live maximum below a truncation at `first` (those entries are dead),
/// then records `first..=last` in the active (last) segment.
pub(super) fn note_entries(segments: &mut [Segment], first: Index, last: Index) {
    for segment in segments.iter_mut() {
        segment.live_max = segment.live_max.min(first.saturating_sub(1));
    }
    if let Some(active) = segments.last_mut() {
        active.live_max = active.live_max.max(last);
    }
}

pub(super) fn segment_name(first_index: Index) -> String {
    format!("{first_index:016x}{SEGMENT_SUFFIX}")
}

pub(super) fn list_segments(fs: &dyn FileSystem, wal_dir: &Path) -> Result<Vec<Segment>, StoreError> {
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

/// Creates a segment with `header` (made durable) and `preallocate` bytes reserved (see
/// `preallocate`).
pub(super) fn create_segment(
    fs: &dyn FileSystem,
    path: &Path,
    header: &[u8],
    preallocate_bytes: u64,
) -> Result<Box<dyn WalFile>, StoreError> {
    let mut file = fs.create_new(path).map_err(|e| StoreError::io("create WAL segment", path, e))?;
    if !header.is_empty() {
        file.write_all_at(header, 0).map_err(|e| StoreError::io("write WAL segment", path, e))?;
    }
    preallocate(&mut *file, path, preallocate_bytes);
    if !header.is_empty() {
        file.sync_data().map_err(|e| StoreError::io("fsync WAL segment", path, e))?;
    }
    Ok(file)
}

/// Reserves the segment's first `bytes` on disk, as zeros (etcd preallocates its segments too).
/// An append inside them changes no file-system metadata, so its fsync has no journal to
/// commit: on ext4 under the state machine's background writeback that halved the mean
/// `fdatasync` of a small record (315-334 µs to 166-199 µs). Replay reads zeros after the last
/// record of the last segment as its end (`replay::read_segment`), and a segment is cut back
/// to its records before the next one starts (`Storage::roll`), so only the last one has them.
/// Best effort: without the reservation, appends extend the file as before.
pub(super) fn preallocate(file: &mut dyn WalFile, path: &Path, bytes: u64) {
    if let Err(e) = file.allocate(bytes) {
        tracing::debug!(path = %path.display(), error = %e, "cannot preallocate the WAL segment");
    }
}

pub(super) fn truncate_file(fs: &dyn FileSystem, path: &Path, len: u64) -> Result<(), StoreError> {
    let mut file = fs.open_rw(path).map_err(|e| StoreError::io("open WAL segment", path, e))?;
    file.set_len(len).map_err(|e| StoreError::io("truncate the torn tail of", path, e))?;
    file.sync_all().map_err(|e| StoreError::io("fsync WAL segment", path, e))
}

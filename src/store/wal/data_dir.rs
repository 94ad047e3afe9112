//! Opening a member's data directory as a whole: the lock, `member.json` and the log together,
//! and the rule that a partial directory (one without the other) never starts.
//!
//! This room decides only whether the directory may be opened; the log is `Storage`'s and the
//! identity file is `meta`'s.

use std::path::Path;
use std::sync::Arc;

use super::super::fs::{
    create_dir, list_dir, lock_dir, sync_dir, write_file_atomically, FileSystem, RealFs, LOCK_FILE,
};
use super::meta::{read_meta_with, MemberMeta, META_FILE};
use super::segment::list_segments;
use super::storage::{DurableState, Storage};
use super::{StoreError, WAL_DIR};

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

/// The file in a data directory that records the last quorum-loss recovery this directory went
/// through (its id), so that each recovery acts on a directory once (`set_aside_for_recovery`,
/// `process` of `--quorum-recovery`).
pub const RECOVERY_MARKER_FILE: &str = "quorum-recovery";

/// The id of the last quorum-loss recovery recorded in `dir` (`None` when none is, or the
/// directory does not exist).
pub fn recovery_marker(dir: &Path) -> Option<String> {
    let bytes = RealFs.read(&dir.join(RECOVERY_MARKER_FILE)).ok()?;
    String::from_utf8(bytes).ok().map(|text| text.trim().to_string())
}

/// Records recovery `id` in `dir` (creating it), durably.
pub fn write_recovery_marker(dir: &Path, id: &str) -> Result<(), StoreError> {
    create_dir(&RealFs, dir)?;
    write_file_atomically(&RealFs, dir, RECOVERY_MARKER_FILE, &[id.as_bytes()])
}

/// Moves a member's data out of the way for quorum-loss recovery `id`: `dir` is renamed to
/// `<dir>.before-recovery-<id>` beside it (kept for a human to inspect, never read again) and
/// made again empty, holding only the marker of `id`. A directory that holds nothing but a
/// lock or an older marker is only marked. Returns where the data went, if anywhere.
///
/// The directory's lock is taken first, so a member still running on it refuses this
/// ([`StoreError::Locked`]); the rename itself is one atomic step, so a crash leaves either the
/// data in place (and the next start does this again) or set aside with an empty directory.
pub fn set_aside_for_recovery(dir: &Path, id: &str) -> Result<Option<std::path::PathBuf>, StoreError> {
    let fs = RealFs;
    let mut moved = None;
    if fs.is_dir(dir) {
        let holds_data = list_dir(&fs, dir)?.iter().any(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name != RECOVERY_MARKER_FILE && name != LOCK_FILE
        });
        if holds_data {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let aside = dir.with_file_name(format!("{name}.before-recovery-{id}"));
            if aside.exists() {
                return Err(StoreError::io(
                    "set aside",
                    &aside,
                    std::io::Error::new(std::io::ErrorKind::AlreadyExists, "it exists already; move it away first"),
                ));
            }
            let lock = lock_dir(&fs, dir)?;
            fs.rename(dir, &aside).map_err(|e| StoreError::io("set aside (rename)", dir, e))?;
            drop(lock);
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(&fs, parent)?;
            }
            moved = Some(aside);
        }
    }
    write_recovery_marker(dir, id)?;
    Ok(moved)
}

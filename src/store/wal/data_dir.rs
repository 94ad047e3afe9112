//! Opening a member's data directory as a whole: the lock, `member.json` and the log together,
//! and the rule that a partial directory (one without the other) never starts.
//!
//! This room decides only whether the directory may be opened; the log is `Storage`'s and the
//! identity file is `meta`'s.

use std::path::Path;
use std::sync::Arc;

use super::super::fs::{create_dir, lock_dir, FileSystem, RealFs};
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

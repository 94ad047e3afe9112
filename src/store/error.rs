//! The one error type of the storage layer. Every variant names the file and what was being
//! done, and its message says what an operator should do next: a full disk is fixed by freeing
//! space (the member retries by itself), damaged data by replacing the member's data directory.

use std::io;
use std::path::{Path, PathBuf};

/// What to do about data that cannot be trusted any more.
const REPLACE_DATA_HINT: &str = "this member's data cannot be trusted: stop it, move its data directory aside, \
     remove the member from the cluster and add it back so that it catches up from the leader";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operating system refused a file operation.
    #[error("cannot {action} {}: {source}{}", path.display(), io_hint(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A record or file failed its checksum or could not be decoded, somewhere other than a
    /// torn tail left by a crash (which is repaired silently).
    #[error("{} is corrupt at byte {offset}: {detail}; {REPLACE_DATA_HINT}", path.display())]
    Corrupt { path: PathBuf, offset: u64, detail: String },
    /// Every file is readable but together they do not form a log (a snapshot or segment is missing).
    #[error("the data in {} is inconsistent: {detail}; {REPLACE_DATA_HINT}", path.display())]
    Inconsistent { path: PathBuf, detail: String },
    /// Another process (or another `Storage` in this one) has the data directory open.
    #[error("{} is in use by another kuberaft process; two members must never share a data directory", path.display())]
    Locked { path: PathBuf },
    /// The caller asked for something the storage cannot represent (a bug in the caller).
    #[error("invalid write request: {0}")]
    Invalid(String),
    /// State-machine snapshot data that cannot be decoded.
    #[error("unreadable state-machine snapshot: {0}")]
    BadSnapshot(String),
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> StoreError {
        StoreError::Io { action, path: path.to_path_buf(), source }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt { path: path.to_path_buf(), offset, detail: detail.into() }
    }

    /// True when the disk is full; the member can recover by itself once space is freed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if is_disk_full(source))
    }
}

fn is_disk_full(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOSPC) || error.raw_os_error() == Some(libc::EDQUOT)
}

fn io_hint(error: &io::Error) -> &'static str {
    if is_disk_full(error) {
        " (the disk is full: free space or grow the volume; nothing durable was lost and the member retries)"
    } else if error.raw_os_error() == Some(libc::EROFS) {
        // The kernel turns a file system read-only after a disk error (ext4 errors=remount-ro).
        " (the file system is read-only: after a disk error the kernel keeps it so until it is repaired; stop the \
         member, check the volume, mount it read-write and start the member again; nothing durable was lost)"
    } else if error.raw_os_error() == Some(libc::EIO) {
        " (the disk reported an I/O error: check the kernel log and the device; the member retries)"
    } else if error.kind() == io::ErrorKind::PermissionDenied {
        " (check the owner and mode of the data directory)"
    } else {
        ""
    }
}

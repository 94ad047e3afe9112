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
    /// A record or file failed its checksum or could not be decoded where no crash or power cut
    /// can have damaged it (what one can damage, the tail written after the last completed
    /// fsync, is cut away at open with a warning; see the WAL's module doc).
    #[error("{} is corrupt at byte {offset}: {detail}; {REPLACE_DATA_HINT}", path.display())]
    Corrupt { path: PathBuf, offset: u64, detail: String },
    /// Every file is readable but together they do not form a log (a snapshot or segment is missing).
    #[error("the data in {} is inconsistent: {detail}; {REPLACE_DATA_HINT}", path.display())]
    Inconsistent { path: PathBuf, detail: String },
    /// Data written in a format newer than this binary reads (a newer kuberaft wrote it): intact,
    /// and not to be replaced; the newer binary reads it.
    #[error("{} was written by a newer kuberaft: {detail}; this version ({}) cannot read it, run the newer image again (the data is intact: do not delete it)", path.display(), env!("CARGO_PKG_VERSION"))]
    NewerFormat { path: PathBuf, detail: String },
    /// A write-ahead log with state but no `member.json`: nobody knows which member it belongs
    /// to, and starting over would put a new member's log on top of it.
    #[error("{} holds a write-ahead log with state ({detail}) but no {META}, so it cannot be known which member it belongs to; kuberaft does not start a new member over an existing log; {REPLACE_DATA_HINT}", path.display(), META = "member.json")]
    MissingIdentity { path: PathBuf, detail: String },
    /// `member.json` names a member whose write-ahead log is gone: the cluster may count on
    /// entries this member acknowledged, so it must not rejoin under that id.
    #[error("{} names member {member_id:x} ('{name}') but its write-ahead log is gone ({detail}); this member's data is lost and it must be replaced: remove member {member_id:x} from the cluster and add it back under a new id (the operator does this when a member exits with code 3), or move the data directory aside and start a new member", path.display())]
    DataLost { path: PathBuf, member_id: u64, name: String, detail: String },
    /// Another process (or another `Storage` in this one) has the data directory open.
    #[error("{} is in use by another kuberaft process; two members must never share a data directory", path.display())]
    Locked { path: PathBuf },
    /// The caller asked for something the storage cannot represent (a bug in the caller).
    #[error("invalid write request: {0}")]
    Invalid(String),
    /// State-machine snapshot data that cannot be decoded.
    #[error("unreadable state-machine snapshot: {0}")]
    BadSnapshot(String),
    /// The state machine's database (redb) failed in a way that is neither an I/O error nor
    /// damage: it was closed after an earlier failure, a lock was poisoned, a value was too
    /// large, or the file was written by a newer redb. The member stops applying.
    #[error("the state-machine database {} failed to {action}: {detail}", path.display())]
    Database { action: &'static str, path: PathBuf, detail: String },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> StoreError {
        StoreError::Io { action, path: path.to_path_buf(), source }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt { path: path.to_path_buf(), offset, detail: detail.into() }
    }

    /// True when the member's data is gone (exit code 3: the member must be replaced).
    pub fn is_data_lost(&self) -> bool {
        matches!(self, StoreError::DataLost { .. })
    }

    /// True when the data on disk is damaged or does not fit together, as no crash or power cut
    /// leaves it (exit code 4: the member must be replaced).
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. } | StoreError::Inconsistent { .. } | StoreError::MissingIdentity { .. }
        )
    }

    /// True when the data was written in a newer format than this binary reads (exit code 5:
    /// the member must be kept, and run with a newer image).
    pub fn is_newer_format(&self) -> bool {
        matches!(self, StoreError::NewerFormat { .. })
    }

    /// True when the disk is full; the member can recover by itself once space is freed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if is_disk_full(source))
    }
}

/// What a full disk adds to the message of a storage error: the member's errors (`/v1/status`)
/// carry it, and the gRPC API's alarms (etcd's NOSPACE) are found by it.
pub const DISK_FULL_HINT: &str =
    " (the disk is full: free space or grow the volume; nothing durable was lost and the member retries)";

fn is_disk_full(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOSPC) || error.raw_os_error() == Some(libc::EDQUOT)
}

fn io_hint(error: &io::Error) -> &'static str {
    if is_disk_full(error) {
        DISK_FULL_HINT
    } else if error.raw_os_error() == Some(libc::EROFS) {
        // The kernel turns a file system read-only after a disk error (ext4 errors=remount-ro).
        " (the file system is read-only: after a disk error the kernel keeps it so until it is repaired; stop the \
         member, check the volume, mount it read-write and start the member again; should the repair have lost \
         writes the disk had reported done, the member says so once it hears from its leader, and exits with code 3)"
    } else if error.raw_os_error() == Some(libc::EIO) {
        " (the disk reported an I/O error: check the kernel log and the device; the member retries)"
    } else if error.kind() == io::ErrorKind::PermissionDenied {
        " (check the owner and mode of the data directory)"
    } else {
        ""
    }
}

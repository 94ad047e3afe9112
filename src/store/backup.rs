//! A snapshot to keep (`kuberaft snapshot save`, etcd's Maintenance.Snapshot, the operator's
//! backups): the state machine's MVCC stream (`mvcc::snapshot`: format version, revision,
//! every key's history, leases, auth and the member table, with a CRC-32 trailer) framed as etcd
//! frames its own snapshots: zeros up to a multiple of 512 bytes, then the SHA-256 of all before
//! it. etcdctl's `snapshot save` checks that framing, so it saves kuberaft's stream as it is,
//! and a file saved by either tool is checked the same way here.
//!
//! [`check_file`] reads a file twice and writes nothing: the SHA-256 over the framed stream,
//! then every record of the stream ([`scan`]). [`restore_state_machine`] installs a checked file
//! as the state machine of a restored member.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::command::MemberInfo;
use super::error::StoreError;
use super::kv::{snapshot_facts, KvStore, SNAPSHOT_FACTS};
use super::mvcc::snapshot::{scan, Scanned};
use crate::raft::{Index, Term};

pub use crate::base::framing::{FrameCheck, Framer, FRAME_ALIGN, SHA_BYTES};

/// What a snapshot file holds (`kuberaft snapshot status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStatus {
    /// The stream's facts: format, revisions, keys, records, CRC-32 and length.
    pub stream: Scanned,
    /// The file's size and the SHA-256 at its end (lowercase hex).
    pub size: u64,
    pub sha256: String,
    /// The members of the cluster it was taken from, with their voter flags, and the Raft index
    /// and term its state had applied.
    pub members: Vec<(MemberInfo, bool)>,
    pub applied_index: Index,
    pub applied_term: Term,
}

fn bad(path: &Path, detail: impl std::fmt::Display) -> StoreError {
    StoreError::BadSnapshot(format!("{}: {detail}", path.display()))
}

/// A stream's complaint, said of the file.
fn within(path: &Path, e: StoreError) -> StoreError {
    match e {
        StoreError::BadSnapshot(detail) => bad(path, detail),
        other => other,
    }
}

fn open(path: &Path) -> Result<(File, u64), StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io("open", path, e))?;
    let size = file.metadata().map_err(|e| StoreError::io("read the size of", path, e))?.len();
    Ok((file, size))
}

/// Checks a snapshot file whole (the SHA-256, then every record of the stream and its CRC-32)
/// and says what it holds. A file that is cut, damaged, framed otherwise or not kuberaft's is
/// an error that says so.
pub fn check_file(path: &Path) -> Result<FileStatus, StoreError> {
    let (file, size) = open(path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut check = FrameCheck::new();
    loop {
        let chunk = reader.fill_buf().map_err(|e| StoreError::io("read", path, e))?;
        if chunk.is_empty() {
            break;
        }
        check.add(chunk);
        let read = chunk.len();
        reader.consume(read);
    }
    let sha256 = check.finish().map_err(|e| bad(path, e))?;
    let body = size.saturating_sub(SHA_BYTES);
    let (file, _) = open(path)?;
    let mut body_reader = BufReader::with_capacity(1 << 20, file).take(body);
    let stream = scan(&mut body_reader, SNAPSHOT_FACTS).map_err(|e| within(path, e))?;
    // What follows the stream is its padding: fewer than FRAME_ALIGN zeros.
    let mut padding = Vec::new();
    body_reader.take(FRAME_ALIGN).read_to_end(&mut padding).map_err(|e| StoreError::io("read", path, e))?;
    if stream.bytes + padding.len() as u64 != body || padding.iter().any(|b| *b != 0) {
        return Err(bad(path, "it has bytes after the end of its stream that are not padding"));
    }
    let facts = snapshot_facts(&stream.meta).map_err(|e| within(path, e))?;
    Ok(FileStatus {
        stream,
        size,
        sha256,
        members: facts.members,
        applied_index: facts.applied_index,
        applied_term: facts.applied_term,
    })
}

/// Installs the stream of a file that [`check_file`] found sound (`status`) as a restored
/// member's state machine at `db`, which must not exist (see `KvStore::restore`).
pub fn restore_state_machine(path: &Path, status: &FileStatus, db: &Path) -> Result<KvStore, StoreError> {
    let (file, size) = open(path)?;
    if size != status.size {
        return Err(bad(path, "it changed while it was being restored"));
    }
    KvStore::restore(db, BufReader::with_capacity(1 << 20, file).take(status.stream.bytes))
}

//! The snapshot file: `snap/<16 hex term>-<16 hex index>.snap`, one Raft snapshot (metadata
//! and state-machine data) behind a checksummed header, written atomically; listing them and
//! loading the newest one that reads back intact. The magic says the format: `KRSNAP02`
//! (written since 0.2) holds the metadata in postcard (`store::codec`), `KRSNAP01` (kuberaft
//! 0.1.0) in bincode 1 (read by `store::legacy`); the data is opaque to this room either way.
//!
//! This room knows nothing of the log: whether the log needed a snapshot that is missing is
//! `replay`'s question, and when old snapshot files go is `Storage`'s.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::super::fs::{list_dir, write_file_atomically, FileSystem};
use super::super::{codec, legacy};
use super::StoreError;
use crate::raft::{Index, Snapshot, SnapshotMeta, Term};

const SNAP_SUFFIX: &str = ".snap";
/// The magic of the format this version writes.
const SNAP_MAGIC: &[u8; 8] = b"KRSNAP02";
/// The format number in [`SNAP_MAGIC`].
const SNAP_FORMAT: u32 = 2;

/// The format of a snapshot file's magic when it is ours (`KRSNAP` and two digits) but newer
/// than [`SNAP_FORMAT`].
fn newer_magic(magic: Option<&[u8]>) -> Option<u32> {
    let digits = magic?.strip_prefix(b"KRSNAP")?;
    let version: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (digits.iter().all(u8::is_ascii_digit) && version > SNAP_FORMAT).then_some(version)
}

/// The magic of format 1 (kuberaft 0.1.0); read, never written.
const SNAP_MAGIC_V1: &[u8; 8] = b"KRSNAP01";
/// magic + u64 meta length + u64 data length + u32 crc.
const SNAP_HEADER_BYTES: usize = 8 + 8 + 8 + 4;

pub(super) fn snapshot_name(term: Term, index: Index) -> String {
    format!("{term:016x}-{index:016x}{SNAP_SUFFIX}")
}

/// Snapshot files as (index, term, path), newest first.
pub(super) fn list_snapshots(fs: &dyn FileSystem, snap_dir: &Path) -> Result<Vec<(Index, Term, PathBuf)>, StoreError> {
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
pub(super) fn load_newest_snapshot(fs: &dyn FileSystem, snap_dir: &Path) -> Result<Option<Snapshot>, StoreError> {
    for (index, term, path) in list_snapshots(fs, snap_dir)? {
        match read_snapshot(fs, &path) {
            Ok(snapshot) if snapshot.meta.index == index && snapshot.meta.term == term => return Ok(Some(snapshot)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "skipping a snapshot whose content does not match its name")
            }
            // A newer kuberaft's snapshot is not damage: skipping it would look for an older
            // one that was compacted away, and call the intact directory inconsistent.
            Err(e) if e.is_newer_format() => return Err(e),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable snapshot"),
        }
    }
    Ok(None)
}

pub(super) fn save_snapshot(fs: &dyn FileSystem, snap_dir: &Path, snapshot: &Snapshot) -> Result<(), StoreError> {
    let name = snapshot_name(snapshot.meta.term, snapshot.meta.index);
    let meta = codec::encode(&snapshot.meta)
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

pub(super) fn read_snapshot(fs: &dyn FileSystem, path: &Path) -> Result<Snapshot, StoreError> {
    let bytes = fs.read(path).map_err(|e| StoreError::io("read snapshot", path, e))?;
    let magic = bytes.get(..8);
    let v1 = magic == Some(SNAP_MAGIC_V1.as_slice());
    if let Some(version) = newer_magic(magic) {
        return Err(StoreError::NewerFormat {
            path: path.to_path_buf(),
            detail: format!("snapshot file format {version}, this version reads up to {}", SNAP_FORMAT),
        });
    }
    if bytes.len() < SNAP_HEADER_BYTES || !(v1 || magic == Some(SNAP_MAGIC.as_slice())) {
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
    let meta_bytes = &bytes[SNAP_HEADER_BYTES..meta_end];
    let meta: Result<SnapshotMeta, String> = match v1 {
        // 0.1.0's reader ignored bytes after the metadata; so does this one.
        true => legacy::from_bytes(meta_bytes).map_err(|e| e.to_string()),
        false => codec::decode(meta_bytes).map_err(|e| e.to_string()),
    };
    let meta = meta.map_err(|e| {
        StoreError::corrupt(path, SNAP_HEADER_BYTES as u64, format!("undecodable snapshot metadata: {e}"))
    })?;
    let data = Bytes::from(bytes).slice(meta_end..);
    Ok(Snapshot { meta, data })
}

//! Record framing: the byte layout of one WAL record and of the batch it carries.
//!
//! A record is `[u32 len][u32 crc32(kind, payload)][u8 kind][payload]` (little endian, `len`
//! counts the payload). Its payload is one `Batch` (snapshot mark, entries, hard state): what
//! one `persist` call wrote. The kind says whether the record was fsynced before `persist`
//! returned (`RECORD_BATCH`) or only moves the commit index and was not (`RECORD_BATCH_UNSYNCED`),
//! and in which encoding its batch is: kinds 3 and 4 (written since 0.2) hold postcard
//! (`store::codec`), kinds 1 and 2 (kuberaft 0.1.0) bincode 1, read by `store::legacy`. A segment
//! of an upgraded member may hold both; a kind this version does not know is refused by name.
//!
//! This room only turns batches into bytes and bytes back into records; it opens no file,
//! syncs nothing and decides nothing about damage (that is `replay`'s rule).

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::super::fs::WalFile;
use super::super::{codec, legacy};
use super::StoreError;
use crate::raft::{Entry, HardState, Index, Term};

/// No record is larger; a length field above this is damage, never an allocation.
pub(super) const MAX_RECORD_BYTES: u64 = 1 << 30;
/// `len` + `crc` + `kind`.
pub(super) const RECORD_HEADER_BYTES: usize = 9;
/// Format 1 (bincode 1, kuberaft 0.1.0) of `RECORD_BATCH`; read, never written.
const RECORD_BATCH_V1: u8 = 1;
/// Format 1 of `RECORD_BATCH_UNSYNCED`; read, never written.
const RECORD_BATCH_V1_UNSYNCED: u8 = 2;
/// One `Batch` per `persist`, fsynced right after it was written (or part of a segment's header).
pub(super) const RECORD_BATCH: u8 = 3;
/// One `Batch` per `persist` that only moved the commit index, written without an fsync.
pub(super) const RECORD_BATCH_UNSYNCED: u8 = 4;

/// "Everything up to `index` (of term `term`) is in a snapshot." Replaying it drops the entries
/// the snapshot covers, and the whole log unless the log holds `index` with that same term
/// (a log that does not match the snapshot at its index is another history).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SnapshotMark {
    pub(super) index: Index,
    pub(super) term: Term,
}

/// What one record holds, applied in field order when replayed.
#[derive(Serialize)]
pub(super) struct BatchRef<'a> {
    pub(super) snapshot: Option<SnapshotMark>,
    pub(super) entries: &'a [Entry],
    pub(super) hard_state: Option<HardState>,
}

#[derive(Deserialize)]
pub(super) struct Batch {
    pub(super) snapshot: Option<SnapshotMark>,
    pub(super) entries: Vec<Entry>,
    pub(super) hard_state: Option<HardState>,
}

pub(super) enum RawRecord {
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

pub(super) fn is_batch_kind(kind: u8) -> bool {
    matches!(kind, RECORD_BATCH | RECORD_BATCH_UNSYNCED | RECORD_BATCH_V1 | RECORD_BATCH_V1_UNSYNCED)
}

/// Whether a record of this kind was fsynced before the next one was written.
pub(super) fn is_synced_kind(kind: u8) -> bool {
    matches!(kind, RECORD_BATCH | RECORD_BATCH_V1)
}

/// Reads the record at the reader's position; `remaining` bytes are left in the file.
pub(super) fn read_record(reader: &mut impl Read, path: &Path, remaining: u64) -> Result<RawRecord, StoreError> {
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

pub(super) fn parse_header(header: &[u8; RECORD_HEADER_BYTES]) -> (u64, u32, u8) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len as u64, crc, header[8])
}

/// The intact records at or after `from` as (offset, kind): the first found by scanning byte by
/// byte (a damaged record's length cannot be trusted), each next one right after the previous,
/// or again by scanning.
pub(super) fn intact_records_after(
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

pub(super) fn record_crc(kind: u8, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(payload);
    hasher.finalize()
}

/// Decodes the batch a record of a batch kind carries.
pub(super) fn decode_batch(kind: u8, payload: &[u8]) -> Result<Batch, String> {
    match kind {
        RECORD_BATCH | RECORD_BATCH_UNSYNCED => codec::decode(payload).map_err(|e| e.to_string()),
        // 0.1.0's reader ignored bytes after the batch; so does this one.
        _ => legacy::from_bytes(payload).map_err(|e| e.to_string()),
    }
}

/// One framed record of `kind` holding `batch`.
pub(super) fn encode_record(batch: &BatchRef<'_>, kind: u8) -> Result<Vec<u8>, StoreError> {
    let mut record = Vec::new();
    encode_record_into(batch, kind, &mut record)?;
    Ok(record)
}

/// `encode_record` into `record` (cleared first; `codec::encode_into` grows it once): a buffer
/// kept between batches (`Storage::record_buffer`) touches no fresh memory.
pub(super) fn encode_record_into(batch: &BatchRef<'_>, kind: u8, record: &mut Vec<u8>) -> Result<(), StoreError> {
    record.clear();
    record.resize(RECORD_HEADER_BYTES, 0);
    record[8] = kind;
    codec::encode_into(batch, record).map_err(|e| StoreError::Invalid(format!("cannot encode a WAL record: {e}")))?;
    let len = (record.len() - RECORD_HEADER_BYTES) as u64;
    if len > MAX_RECORD_BYTES {
        return Err(StoreError::Invalid(format!("a batch of {len} bytes exceeds the 1 GiB record limit")));
    }
    let crc = record_crc(kind, &record[RECORD_HEADER_BYTES..]);
    record[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

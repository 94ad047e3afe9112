//! Member metadata: `member.json`, the identity (cluster id, member id, name) of the member that
//! owns a data directory, written once at its first start (atomically) and read at every start.
//!
//! This room holds only that file; which combinations of `member.json` and log may start is
//! `data_dir`'s rule.

use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::super::fs::{create_dir, write_file_atomically, FileSystem, Reader, RealFs};
use super::StoreError;

pub(super) const META_FILE: &str = "member.json";
/// member.json is a few hundred bytes; anything huge is not ours.
const MAX_META_BYTES: u64 = 1 << 20;

/// The data format this version writes and reads: the formats of the WAL's records, the
/// snapshot files and the state machine's database together. A version that changes one of
/// them raises it and records it in `member.json` as `data_format` (absent: 1); a version that
/// finds a higher one there refuses the directory before touching it
/// ([`StoreError::NewerFormat`], exit code 5).
pub const DATA_FORMAT: u32 = 1;

/// The `data_format` of a `member.json` (the field this version does not write).
#[derive(Deserialize)]
struct Stamp {
    #[serde(default)]
    data_format: Option<u32>,
}

/// Identity of the member that owns a data dir, written once at first start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberMeta {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
}

/// Reads the identity of the member that owns `dir`; `None` if it was never written.
pub fn read_meta(dir: &Path) -> Result<Option<MemberMeta>, StoreError> {
    read_meta_with(&RealFs, dir)
}

pub(super) fn read_meta_with(fs: &dyn FileSystem, dir: &Path) -> Result<Option<MemberMeta>, StoreError> {
    let path = dir.join(META_FILE);
    let file = match fs.open_read(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("open", &path, e)),
    };
    let mut text = Vec::new();
    Reader::new(&*file)
        .take(MAX_META_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| StoreError::io("read", &path, e))?;
    if text.len() as u64 > MAX_META_BYTES {
        return Err(StoreError::corrupt(&path, MAX_META_BYTES, "member metadata file is implausibly large"));
    }
    let undecodable = |e: serde_json::Error| StoreError::corrupt(&path, 0, format!("undecodable member metadata: {e}"));
    // The stamp first, read leniently: a newer version's member.json may not decode as this
    // version's MemberMeta, and must be refused as newer, not as damage.
    let stamp: Stamp = serde_json::from_slice(&text).map_err(undecodable)?;
    if let Some(format) = stamp.data_format.filter(|f| *f > DATA_FORMAT) {
        return Err(StoreError::NewerFormat {
            path,
            detail: format!("data format {format}, this version reads up to {DATA_FORMAT}"),
        });
    }
    serde_json::from_slice(&text).map(Some).map_err(undecodable)
}

/// Writes the identity of the member that owns `dir`, atomically (tmp + fsync + rename + fsync dir).
pub fn write_meta(dir: &Path, meta: &MemberMeta) -> Result<(), StoreError> {
    write_meta_with(&RealFs, dir, meta)
}

pub(super) fn write_meta_with(fs: &dyn FileSystem, dir: &Path, meta: &MemberMeta) -> Result<(), StoreError> {
    create_dir(fs, dir)?;
    let mut text = serde_json::to_vec_pretty(meta)
        .map_err(|e| StoreError::Invalid(format!("cannot encode member metadata: {e}")))?;
    text.push(b'\n');
    write_file_atomically(fs, dir, META_FILE, &[&text])
}

//! Durable storage of one member's Raft state: the log, the hard state (term, vote, commit) and
//! snapshots, in a data directory laid out as
//!
//! ```text
//! <dir>/LOCK                           flock'ed while a process has the directory open
//! <dir>/member.json                    MemberMeta, written once (write_meta)
//! <dir>/wal/<16 hex index>.wal         write-ahead log segments, replayed in name order
//! <dir>/snap/<16 hex term>-<16 hex index>.snap
//! ```
//!
//! A segment is a sequence of records (`record.rs`), one per `persist` call: group commit, the
//! caller hands over a whole Raft `Ready` (hard state, snapshot mark and every entry in it) and
//! it becomes ONE record with at most one fdatasync, however many entries it holds. A record
//! that only moves the commit index is written without an fsync and has its own kind
//! (`RECORD_BATCH_UNSYNCED`); every other record (`RECORD_BATCH`) is fdatasync'ed before
//! `persist` returns. A segment is named after the
//! next log index when it was started; names strictly increase, so name order is write order.
//! Segments roll past `SEGMENT_ROLL_BYTES` and at compaction. Each segment's first
//! `SEGMENT_ROLL_BYTES` are reserved on disk (fallocate) when it starts, as etcd does, so an
//! append changes no file-system metadata (`segment::preallocate`); its unwritten rest reads as
//! zeros.
//!
//! Crash recovery (the rule, and why it is safe). An fsync that returns makes every byte written
//! to the file before it durable. So after a crash or power cut, only what was written after
//! the last fsync that returned can be lost, torn, or (pages are written back in any order)
//! lost while a later write survives. That is the tail of the LAST segment, and it consists of
//! records written without an fsync, then at most one record whose fsync was still running
//! (`persist` calls do not overlap). Hence:
//! - the last segment is cut at its first damaged record, even when intact records follow
//!   (point-in-time recovery): they were all written after the last completed fsync, so none
//!   of them was acknowledged as durable. Damage is a bad checksum, a length past the end, or
//!   an incomplete header. The cut itself is fsynced. Zeros from the first damaged record to
//!   the end of the file are not damage but the preallocated space never written: the end of
//!   the log, cut nowhere;
//! - unless, among the intact records after the damage, a synced record is followed by another
//!   record: its fsync returned before that one was written, so the damaged record was durable
//!   and has been damaged since. That is `Corrupt`, as is any damage in an older segment
//!   (a segment is cut back to its records, and that and its tail fsynced, before the next
//!   segment is started, so an older segment has no zeros at its end either), an undecodable intact
//!   record, an unknown kind, and a damaged `member.json`. A damaged snapshot file is skipped
//!   (an older one is used) and reported as `Inconsistent` if the log needed it;
//! - a new segment's header record and its directory entry are fsynced before anything is
//!   appended to it, so a power cut may leave an empty or torn new segment (cut like any
//!   torn tail) but never loses records that were acknowledged in it;
//! - compaction deletes old segments and snapshot files only after the snapshot file and the
//!   new segment are durable, and only files the log no longer needs. Segments go oldest first,
//!   with a directory fsync after each, so a power cut leaves a suffix of them, which replays
//!   to the same log (a surviving older segment next to a deleted newer one would bring back
//!   entries that the newer one truncated; the harness found that);
//! - snapshot files and `member.json` are written to a temporary file, fsynced, renamed and the
//!   directory fsynced; leftover temporary files are deleted at open.
//!
//! The power-cut harness (`power_cut_tests.rs`, on the simulated disk of `store::simfs`)
//! checks this rule at every disk operation of a workload. Its limit: an intact record is
//! found after damage by scanning byte by byte, so a value that embeds a whole valid record
//! could, in the unlucky case that a power cut tears the record holding it, make a power cut
//! look like corruption (never the reverse).
//!
//! A member's directory is opened with `open_data_dir`, which also refuses a partial one
//! (`member.json` without its log, a log without `member.json`; see there).
//!
//! Storage keeps no entries in memory (the Raft core holds the log); it tracks only the active
//! segment, each segment's highest live index (to know what compaction may delete), the last
//! hard state (rewritten at the head of every new segment, so deleting old segments never
//! loses it) and the newest snapshot's position.
//!
//! The rooms of this folder:
//! - `storage.rs`: `Storage`, the write path and the order of its disk operations;
//! - `record.rs`: the byte layout of a record and of the batch it carries;
//! - `segment.rs`: segment files (names, listing, creation, cutting back, what each still holds);
//! - `replay.rs`: reading segments back into the log, and the recovery rule above;
//! - `snapfile.rs`: snapshot files;
//! - `meta.rs`: `member.json`;
//! - `data_dir.rs`: opening a whole data directory, and refusing a partial one.
//!
//! File system access goes through `store::fs` (the `FileSystem` trait and its helpers), never
//! `std::fs` directly, so that the power-cut harness sees every disk operation. Nothing here
//! knows what the state machine does with entries or snapshot data.

mod data_dir;
mod meta;
mod record;
mod replay;
mod segment;
mod snapfile;
mod storage;

#[cfg(test)]
mod power_cut_tests;
#[cfg(test)]
mod tests;

pub use super::error::StoreError;
pub use data_dir::{
    open_data_dir, recovery_marker, set_aside_for_recovery, write_recovery_marker, DataDir, RECOVERY_MARKER_FILE,
};
pub use meta::{read_meta, write_meta, MemberMeta};
pub use segment::SEGMENT_ROLL_BYTES;
pub use storage::{DurableState, Storage};

const WAL_DIR: &str = "wal";
const SNAP_DIR: &str = "snap";

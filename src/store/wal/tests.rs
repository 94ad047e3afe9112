//! Tests of the WAL's rooms: the log's write path and reopen, recovery (torn tails against
//! corruption), snapshot files, the data directory rule and `member.json`. The power-cut
//! harness is `power_cut_tests.rs`.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::data_dir::open_data_dir_with;
use super::meta::{write_meta_with, META_FILE};
use super::record::{record_crc, RECORD_HEADER_BYTES};
use super::segment::{create_segment, segment_name, SEGMENT_ROLL_BYTES};
use super::snapfile::{save_snapshot, snapshot_name};
use super::storage::Fault;
use super::*;
use crate::raft::{ConfState, Entry, EntryPayload, HardState, Index, Snapshot, SnapshotMeta, Term};
use crate::store::fs::{list_dir, RealFs};

fn entry(index: Index, term: Term) -> Entry {
    Entry { index, term, payload: EntryPayload::Command(Bytes::from(format!("command {index} of term {term}"))) }
}

fn entries(indexes: std::ops::RangeInclusive<Index>, term: Term) -> Vec<Entry> {
    indexes.map(|index| entry(index, term)).collect()
}

fn hard_state(term: Term, vote: Option<u64>, commit: Index) -> HardState {
    HardState { term, vote, commit }
}

fn snapshot(index: Index, term: Term) -> Snapshot {
    let conf = ConfState { voters: [1, 2, 3].into(), learners: [4].into() };
    Snapshot { meta: SnapshotMeta { index, term, conf }, data: Bytes::from(format!("state at {index}")) }
}

fn open(dir: &Path) -> (Storage, DurableState) {
    Storage::open(dir).expect("open storage")
}

/// Opens, reads and closes (releasing the lock), as a restarted process would.
fn reopen(dir: &Path) -> DurableState {
    open(dir).1
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths = list_dir(&RealFs, &dir.join(WAL_DIR)).expect("list wal");
    paths.sort();
    paths
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut paths = list_dir(&RealFs, &dir.join(SNAP_DIR)).expect("list snap");
    paths.sort();
    paths
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().expect("a segment")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").len()
}

/// Byte offsets of the records in a segment (up to its preallocated zeros).
fn record_offsets(path: &Path) -> Vec<u64> {
    record_layout(path).0
}

/// Where the records of a segment end: the rest of the file is preallocated zeros.
fn records_end(path: &Path) -> u64 {
    record_layout(path).1
}

fn record_layout(path: &Path) -> (Vec<u64>, u64) {
    let bytes = fs::read(path).expect("read segment");
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + RECORD_HEADER_BYTES <= bytes.len() && bytes[at..at + RECORD_HEADER_BYTES].iter().any(|&b| b != 0) {
        offsets.push(at as u64);
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        at += RECORD_HEADER_BYTES + len;
    }
    (offsets, at as u64)
}

/// Whether the segment holds nothing but zeros from `from` on.
fn zeros_from(path: &Path, from: u64) -> bool {
    fs::read(path).expect("read segment")[from as usize..].iter().all(|&b| b == 0)
}

/// Overwrites bytes at `offset`, inside the preallocated file, as a write that reached the disk.
fn write_bytes_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    OpenOptions::new().write(true).open(path).expect("open").write_all_at(bytes, offset).expect("write");
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[offset as usize] ^= 0x5a;
    fs::write(path, bytes).expect("write");
}

/// Three persists: 1..=3 (term 1), 4..=5 (term 2), 6 (term 2), each with a hard state.
fn three_batches(storage: &mut Storage) {
    storage.persist(Some(&hard_state(1, Some(1), 0)), None, &entries(1..=3, 1)).expect("persist");
    storage.persist(Some(&hard_state(2, Some(2), 3)), None, &entries(4..=5, 2)).expect("persist");
    storage.persist(Some(&hard_state(2, Some(2), 5)), None, &entries(6..=6, 2)).expect("persist");
}

/// A new directory with `three_batches` written and the storage closed; its (only) segment.
fn three_batches_written() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    three_batches(&mut storage);
    drop(storage);
    let segment = last_segment(dir.path());
    (dir, segment)
}

#[test]
fn hard_state_entries_and_snapshot_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, state) = open(dir.path());
    assert!(storage.is_fresh());
    assert_eq!(state, DurableState::default());
    assert_eq!(storage.dir(), dir.path());

    storage.persist(Some(&hard_state(1, Some(1), 0)), None, &entries(1..=3, 1)).expect("persist");
    storage.persist(Some(&hard_state(2, Some(2), 3)), None, &entries(4..=5, 2)).expect("persist");
    assert!(!storage.is_fresh());
    drop(storage);

    let (mut storage, state) = open(dir.path());
    assert!(!storage.is_fresh());
    assert_eq!(state.hard_state, hard_state(2, Some(2), 3));
    assert_eq!(state.snapshot, None);
    let mut expected = entries(1..=3, 1);
    expected.extend(entries(4..=5, 2));
    assert_eq!(state.entries, expected);

    // A snapshot from the leader, newer than the whole log, with entries after it.
    let snap = snapshot(7, 3);
    storage.persist(Some(&hard_state(3, None, 7)), Some(&snap), &entries(8..=9, 3)).expect("persist");
    drop(storage);

    let state = reopen(dir.path());
    assert_eq!(state.hard_state, hard_state(3, None, 7));
    assert_eq!(state.snapshot, Some(snap));
    assert_eq!(state.entries, entries(8..=9, 3));
}

#[test]
fn conflict_truncation_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.persist(None, None, &entries(1..=5, 1)).expect("persist");
    // A new leader overwrites 3.. with its own entries.
    storage.persist(Some(&hard_state(2, None, 2)), None, &entries(3..=4, 2)).expect("persist");
    drop(storage);

    let (mut storage, state) = open(dir.path());
    let mut expected = entries(1..=2, 1);
    expected.extend(entries(3..=4, 2));
    assert_eq!(state.entries, expected);

    // And again after the restart, reaching back before the previous truncation.
    storage.persist(Some(&hard_state(3, None, 1)), None, &entries(2..=2, 3)).expect("persist");
    drop(storage);
    let state = reopen(dir.path());
    let mut expected = entries(1..=1, 1);
    expected.extend(entries(2..=2, 3));
    assert_eq!(state.entries, expected);
    assert_eq!(state.hard_state, hard_state(3, None, 1));
}

#[test]
fn only_a_record_that_just_moves_the_commit_index_skips_the_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.persist(Some(&hard_state(1, Some(1), 0)), None, &entries(1..=3, 1)).expect("entries");
    assert!(storage.last_persist_synced(), "entries are synced");
    storage.persist(Some(&hard_state(1, Some(1), 2)), None, &[]).expect("commit");
    assert!(!storage.last_persist_synced(), "a commit-only record is not");
    storage.persist(Some(&hard_state(2, None, 2)), None, &[]).expect("term");
    assert!(storage.last_persist_synced(), "a new term is");
    storage.persist(Some(&hard_state(2, Some(3), 3)), None, &[]).expect("vote");
    assert!(storage.last_persist_synced(), "a vote is");
    storage.persist(Some(&hard_state(2, Some(3), 3)), None, &entries(4..=4, 2)).expect("entry");
    storage.persist(Some(&hard_state(2, Some(3), 4)), None, &[]).expect("commit");
    assert!(!storage.last_persist_synced());
    // Written all the same: a reopen (after a process crash, with the page cache intact)
    // finds it; a compaction syncs it before the segment stops being the last.
    drop(storage);
    let durable = reopen(dir.path());
    assert_eq!(durable.hard_state, hard_state(2, Some(3), 4));
    let (mut storage, _) = open(dir.path());
    storage.persist(Some(&hard_state(2, Some(3), 4)), None, &[]).expect("same commit");
    storage.compact(&snapshot(2, 1)).expect("compact");
    assert!(storage.last_persist_synced(), "rolling a segment syncs its tail");
}

#[test]
fn an_empty_persist_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.persist(None, None, &[]).expect("empty persist");
    assert!(storage.is_fresh());
    assert!(zeros_from(&last_segment(dir.path()), 0));
    drop(storage);
    let (storage, state) = open(dir.path());
    assert!(storage.is_fresh());
    assert_eq!(state, DurableState::default());
}

#[test]
fn the_active_segment_is_preallocated_and_its_zeros_read_as_its_end() {
    let (dir, segment) = three_batches_written();
    let end = records_end(&segment);
    assert_eq!(file_len(&segment), SEGMENT_ROLL_BYTES, "the segment's space is reserved up front");
    assert!(end > 0 && zeros_from(&segment, end));

    let (mut storage, state) = open(dir.path());
    assert_eq!(storage.recovered_past_damage, 0);
    assert_eq!(state.entries.len(), 6);
    assert_eq!(state.hard_state, hard_state(2, Some(2), 5));
    assert_eq!(file_len(&segment), SEGMENT_ROLL_BYTES, "nothing was cut as torn");
    // Appends go on inside the reserved space, where the records ended.
    storage.persist(Some(&hard_state(2, Some(2), 6)), None, &entries(7..=7, 2)).expect("persist");
    drop(storage);
    assert_eq!(record_offsets(&segment).len(), 4);
    assert_eq!(file_len(&segment), SEGMENT_ROLL_BYTES);
    assert_eq!(reopen(dir.path()).entries.len(), 7);
}

#[test]
fn a_segment_is_cut_back_to_its_records_before_the_next_one_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.segment_roll_bytes = 1; // every persist starts a new segment
    three_batches(&mut storage);
    let segments = segment_files(dir.path());
    assert_eq!(segments.len(), 3);
    for older in &segments[..2] {
        assert_eq!(file_len(older), records_end(older), "{} keeps no zeros", older.display());
    }
    drop(storage);
    assert_eq!(reopen(dir.path()).entries.len(), 6);
}

#[test]
fn a_torn_tail_is_cut_back_to_the_last_complete_record() {
    let (dir, segment) = three_batches_written();
    let offsets = record_offsets(&segment);
    assert_eq!(offsets.len(), 3);
    // The crash interrupted the third write: its last bytes never reached the disk.
    let end = records_end(&segment);
    write_bytes_at(&segment, end - 5, &[0; 5]);

    let (mut storage, state) = open(dir.path());
    assert_eq!(state.hard_state, hard_state(2, Some(2), 3));
    assert_eq!(state.entries.last().map(|e| e.index), Some(5));
    assert_eq!(records_end(&segment), offsets[2], "the torn record is cut away");
    assert!(zeros_from(&segment, offsets[2]));

    // Writing after the repair continues cleanly.
    storage.persist(Some(&hard_state(2, Some(2), 6)), None, &entries(6..=7, 2)).expect("persist");
    drop(storage);
    let state = reopen(dir.path());
    assert_eq!(state.entries.iter().map(|e| e.index).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
    assert_eq!(state.hard_state.commit, 6);
}

#[test]
fn garbage_after_the_last_record_is_cut_away() {
    let garbage: [&[u8]; 4] = [
        &[0xab; 100],
        &[0; 4096],
        &[1, 2, 3],
        // A header that claims more than a gigabyte.
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 9, 9],
    ];
    for extra in garbage {
        let (dir, segment) = three_batches_written();
        let clean_len = records_end(&segment);
        write_bytes_at(&segment, clean_len, extra);

        let state = reopen(dir.path());
        assert_eq!(state.entries.len(), 6, "garbage {:?}", &extra[..3]);
        assert_eq!(state.hard_state, hard_state(2, Some(2), 5));
        assert_eq!(records_end(&segment), clean_len);
        assert!(zeros_from(&segment, clean_len), "garbage {:?} is cut away", &extra[..3]);
    }
}

#[test]
fn a_damaged_last_record_is_a_torn_write() {
    let (dir, segment) = three_batches_written();
    let offsets = record_offsets(&segment);
    flip_byte(&segment, offsets[2] + 12);

    let state = reopen(dir.path());
    assert_eq!(state.entries.len(), 5);
    assert_eq!(records_end(&segment), offsets[2]);
    assert!(zeros_from(&segment, offsets[2]));
}

#[test]
fn a_flipped_byte_in_an_earlier_record_is_corruption() {
    let (dir, segment) = three_batches_written();
    let offsets = record_offsets(&segment);
    let middle_of_first = (offsets[0] + offsets[1]) / 2;
    flip_byte(&segment, middle_of_first);
    let len_before = file_len(&segment);

    match Storage::open(dir.path()) {
        Err(StoreError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, segment);
            assert_eq!(offset, offsets[0]);
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("expected Corrupt, opened fine"),
    }
    assert_eq!(file_len(&segment), len_before, "acknowledged data is never cut away");
}

/// Entries 1..=3 (synced), a commit-only record (not synced), entry 4 (synced) and, with
/// `trailing_commit`, another commit-only record; then the commit-only record at index 1 of
/// the segment is damaged. Returns the directory, the segment and its record offsets.
fn damaged_commit_record(trailing_commit: bool) -> (tempfile::TempDir, PathBuf, Vec<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.persist(Some(&hard_state(1, Some(1), 0)), None, &entries(1..=3, 1)).expect("entries");
    storage.persist(Some(&hard_state(1, Some(1), 2)), None, &[]).expect("commit");
    storage.persist(Some(&hard_state(1, Some(1), 2)), None, &entries(4..=4, 1)).expect("entry");
    if trailing_commit {
        storage.persist(Some(&hard_state(1, Some(1), 4)), None, &[]).expect("commit");
    }
    drop(storage);
    let segment = last_segment(dir.path());
    let offsets = record_offsets(&segment);
    assert_eq!(offsets.len(), 3 + usize::from(trailing_commit));
    flip_byte(&segment, offsets[1] + 12);
    (dir, segment, offsets)
}

#[test]
fn a_damaged_commit_only_record_before_an_intact_synced_one_is_cut_away() {
    // A power cut: the commit-only record (no fsync) was torn, the next record reached the
    // disk, but the fsync that would have made both durable never returned.
    let (dir, segment, offsets) = damaged_commit_record(false);

    let (storage, state) = open(dir.path());
    assert_eq!(storage.recovered_past_damage, 1);
    assert_eq!(state.entries, entries(1..=3, 1));
    assert_eq!(state.hard_state, hard_state(1, Some(1), 0));
    assert_eq!(records_end(&segment), offsets[1], "cut at the damaged record");
    assert!(zeros_from(&segment, offsets[1]));
}

#[test]
fn damage_before_a_synced_record_with_another_after_it_is_corruption() {
    // The third record's fsync returned before the fourth was written, so the second
    // record was durable: its damage came later, and nothing is cut.
    let (dir, segment, offsets) = damaged_commit_record(true);
    let len_before = file_len(&segment);

    let error = Storage::open(dir.path()).err().expect("must not open");
    assert!(matches!(&error, StoreError::Corrupt { offset, .. } if *offset == offsets[1]), "{error}");
    assert!(error.is_corrupt() && !error.is_data_lost());
    assert!(error.to_string().contains("was fsynced before"), "{error}");
    assert_eq!(file_len(&segment), len_before, "acknowledged data is never cut away");
}

#[test]
fn a_flipped_byte_in_a_synced_older_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.segment_roll_bytes = 1; // every persist starts a new segment
    three_batches(&mut storage);
    drop(storage);
    let segments = segment_files(dir.path());
    assert_eq!(segments.len(), 3);
    flip_byte(&segments[0], file_len(&segments[0]) / 2);

    let error = Storage::open(dir.path()).err().expect("must not open");
    assert!(matches!(&error, StoreError::Corrupt { path, .. } if *path == segments[0]), "{error}");
    assert!(error.is_corrupt());
    assert!(error.to_string().contains("move its data directory aside"), "says what to do: {error}");
}

fn meta() -> MemberMeta {
    MemberMeta { cluster_id: 7, member_id: 0xab, name: "etcd-1".into() }
}

fn open_dir(dir: &Path) -> Result<DataDir, StoreError> {
    open_data_dir(dir)
}

fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in fs::read_dir(&path).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push((path.clone(), fs::metadata(&path).expect("stat").len()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_new_or_half_started_data_directory_opens_as_a_new_member() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("member");
    let opened = open_dir(&dir).expect("new");
    assert!(opened.meta.is_none() && opened.storage.is_fresh());
    drop(opened);
    // The first start stopped after creating the WAL, before member.json.
    let opened = open_dir(&dir).expect("again");
    assert!(opened.meta.is_none() && opened.storage.is_fresh());
}

#[test]
fn member_json_with_an_empty_wal_restarts_as_that_member() {
    // A joiner that crashed before its first entry.
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(open_dir(tmp.path()).expect("new"));
    write_meta(tmp.path(), &meta()).expect("meta");
    let opened = open_dir(tmp.path()).expect("restart");
    assert_eq!(opened.meta, Some(meta()));
    assert!(opened.storage.is_fresh());
}

#[test]
fn a_log_without_member_json_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opened = open_dir(tmp.path()).expect("new");
    let mut storage = opened.storage;
    three_batches(&mut storage);
    drop(storage);
    let before = listing(tmp.path());

    let error = open_dir(tmp.path()).err().expect("must refuse");
    assert!(matches!(error, StoreError::MissingIdentity { .. }), "{error}");
    assert!(error.is_corrupt(), "exit code 4");
    assert!(error.to_string().contains("term 2, last index 6"), "{error}");
    assert!(error.to_string().contains("move its data directory aside"), "says what to do: {error}");
    assert_eq!(listing(tmp.path()), before, "nothing changed");

    // A snapshot alone is state too.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut storage = open_dir(tmp.path()).expect("new").storage;
    storage.compact(&snapshot(3, 1)).expect("compact");
    drop(storage);
    assert!(matches!(open_dir(tmp.path()), Err(StoreError::MissingIdentity { .. })));
}

/// A directory a newer kuberaft wrote (a higher `data_format` in member.json, a snapshot file of
/// a newer format, a WAL record of a kind this version does not know, each intact) is refused as
/// newer, exit code 5 (never corrupt or lost: the member is not to be replaced), and left alone.
#[test]
fn data_of_a_newer_format_is_refused_as_newer_never_as_damage_and_left_alone() {
    let written = || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut storage = open_dir(tmp.path()).expect("new").storage;
        write_meta(tmp.path(), &meta()).expect("meta");
        storage.persist(Some(&hard_state(1, None, 5)), None, &entries(1..=5, 1)).expect("persist");
        storage.compact(&snapshot(3, 1)).expect("compact");
        drop(storage);
        tmp
    };
    let refused = |dir: &Path, found: &str| {
        let before = listing(dir);
        let error = open_dir(dir).err().expect("must refuse");
        assert!(error.is_newer_format() && !error.is_corrupt() && !error.is_data_lost(), "{error}");
        let text = error.to_string();
        assert!(text.contains("written by a newer kuberaft") && text.contains(found), "{text}");
        assert!(text.contains("do not delete it"), "{text}");
        assert_eq!(listing(dir), before, "nothing changed");
    };
    // As written, it opens; its own format, stamped, too.
    let tmp = written();
    drop(open_dir(tmp.path()).expect("this version's own data"));
    let stamp = |format: u32| {
        let path = tmp.path().join(META_FILE);
        let mut object: serde_json::Value = serde_json::from_slice(&fs::read(&path).expect("read")).expect("JSON");
        object["data_format"] = format.into();
        fs::write(&path, serde_json::to_vec(&object).expect("encode")).expect("write");
    };
    stamp(super::meta::DATA_FORMAT);
    drop(open_dir(tmp.path()).expect("stamped with this version's format"));
    stamp(super::meta::DATA_FORMAT + 1);
    refused(tmp.path(), &format!("data format {}, this version reads up to 1", super::meta::DATA_FORMAT + 1));

    let tmp = written();
    let snap = snapshot_files(tmp.path()).pop().expect("a snapshot file");
    write_bytes_at(&snap, 0, b"KRSNAP03");
    refused(tmp.path(), "snapshot file format 3");
    // A magic that is not ours at all is damage, as before.
    write_bytes_at(&snap, 0, b"XXXXXXXX");
    assert!(open_dir(tmp.path()).err().is_some_and(|e| e.is_corrupt()));

    let tmp = written();
    let segment = last_segment(tmp.path());
    let end = records_end(&segment);
    let payload = b"a record of a kind from the future";
    let kind = 0x7e;
    let mut record = Vec::new();
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&record_crc(kind, payload).to_le_bytes());
    record.push(kind);
    record.extend_from_slice(payload);
    write_bytes_at(&segment, end, &record);
    refused(tmp.path(), "a WAL record of kind 126");
}

#[test]
fn member_json_without_its_log_is_data_lost_every_time() {
    for remove in ["the wal directory", "every segment"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut storage = open_dir(tmp.path()).expect("new").storage;
        write_meta(tmp.path(), &meta()).expect("meta");
        three_batches(&mut storage);
        drop(storage);
        let wal_dir = tmp.path().join(WAL_DIR);
        match remove {
            "every segment" => segment_files(tmp.path()).iter().for_each(|s| fs::remove_file(s).expect("rm")),
            _ => fs::remove_dir_all(&wal_dir).expect("rm -r"),
        }
        let before = listing(tmp.path());
        for attempt in 0..2 {
            let error = open_dir(tmp.path()).err().expect("must refuse");
            assert!(
                matches!(&error, StoreError::DataLost { member_id: 0xab, .. }),
                "{remove}, attempt {attempt}: {error}"
            );
            assert!(error.is_data_lost() && !error.is_corrupt(), "exit code 3");
            assert!(error.to_string().contains("remove member ab from the cluster"), "{error}");
            assert_eq!(listing(tmp.path()), before, "no fresh WAL hides the loss from the next start");
        }
    }
}

#[test]
fn a_power_cut_anywhere_in_a_first_start_never_leaves_a_partial_data_directory() {
    use crate::store::simfs::{CutMode, CutStats, SimFs};
    // What the node does at a first start: open, write member.json, persist the bootstrap.
    let fs = SimFs::default();
    fs.record_cuts();
    let dir = Path::new("/var/lib/kuberaft");
    let opened = open_data_dir_with(Arc::new(fs.clone()), dir).expect("open");
    write_meta_with(&fs, dir, &meta()).expect("meta");
    let mut storage = opened.storage;
    storage.persist(Some(&hard_state(1, None, 0)), None, &entries(1..=3, 1)).expect("bootstrap");
    drop(storage);
    let cuts = fs.take_cuts();
    let mut stats = CutStats::default();
    let mut seen = std::collections::BTreeSet::new();
    for (cut, (_, disk)) in cuts.iter().enumerate() {
        for outcome in 0..32 {
            let mode = match outcome {
                0 => CutMode::KeepAll,
                1 => CutMode::LoseAll,
                n => CutMode::Random((cut as u64) << 8 | n),
            };
            let image = disk.power_cut(mode, &mut stats);
            let opened = open_data_dir_with(Arc::new(SimFs::with_disk(image)), dir)
                .unwrap_or_else(|e| panic!("cut {cut} outcome {outcome}: {e}"));
            let kind = match (&opened.meta, opened.storage.is_fresh()) {
                (None, true) => "new member",
                (Some(_), true) => "member without entries",
                (Some(_), false) => "member with its log",
                (None, false) => panic!("cut {cut} outcome {outcome}: a log without member.json opened"),
            };
            if kind == "member with its log" {
                assert_eq!(opened.durable.entries, entries(1..=3, 1), "cut {cut} outcome {outcome}");
            }
            seen.insert(kind);
        }
    }
    assert_eq!(seen.len(), 3, "every stage was cut: {seen:?}");
}

#[test]
fn an_implausible_length_before_intact_records_is_corruption() {
    let (dir, segment) = three_batches_written();
    let mut bytes = fs::read(&segment).expect("read");
    bytes[3] = 0x7f; // the first record now claims ~2 GiB
    fs::write(&segment, bytes).expect("write");

    let error = Storage::open(dir.path()).err().expect("must not open");
    assert!(matches!(error, StoreError::Corrupt { offset: 0, .. }), "{error}");
    assert!(error.to_string().contains("move its data directory aside"), "says what to do: {error}");
}

#[test]
fn a_bad_tail_in_an_older_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.segment_roll_bytes = 1; // every persist starts a new segment
    three_batches(&mut storage);
    drop(storage);
    let segments = segment_files(dir.path());
    assert_eq!(segments.len(), 3);
    let first = &segments[0];
    let len = file_len(first);
    OpenOptions::new().write(true).open(first).expect("open").set_len(len - 3).expect("truncate");

    let error = Storage::open(dir.path()).err().expect("must not open");
    assert!(matches!(&error, StoreError::Corrupt { path, .. } if path == first), "{error}");
}

#[test]
fn compaction_deletes_covered_segments_and_keeps_later_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.segment_roll_bytes = 1;
    // The hard state is written once, in the first segment, which compaction deletes.
    storage.persist(Some(&hard_state(4, Some(3), 0)), None, &entries(1..=1, 1)).expect("persist");
    for index in 2..=10 {
        storage.persist(None, None, &entries(index..=index, 1)).expect("persist");
    }
    assert_eq!(segment_files(dir.path()).len(), 10);

    storage.compact(&snapshot(6, 1)).expect("compact");
    // Segments of entries 1..=6 are gone; 7..=10 stay, plus the new active segment.
    let names: Vec<String> = segment_files(dir.path())
        .iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        [
            "0000000000000007.wal",
            "0000000000000008.wal",
            "0000000000000009.wal",
            "000000000000000a.wal",
            "000000000000000b.wal"
        ]
    );
    assert_eq!(snapshot_files(dir.path()).len(), 1);
    drop(storage);

    let (mut storage, state) = open(dir.path());
    assert_eq!(state.snapshot, Some(snapshot(6, 1)));
    assert_eq!(state.entries, entries(7..=10, 1));
    assert_eq!(state.hard_state, hard_state(4, Some(3), 0));

    // A newer snapshot replaces the older file; an older one is ignored.
    storage.compact(&snapshot(9, 1)).expect("compact");
    storage.compact(&snapshot(8, 1)).expect("older compact is a no-op");
    let snaps = snapshot_files(dir.path());
    assert_eq!(snaps.len(), 1);
    assert!(snaps[0].ends_with(snapshot_name(1, 9)));
    storage.persist(None, None, &entries(11..=11, 1)).expect("persist");
    drop(storage);

    let state = reopen(dir.path());
    assert_eq!(state.snapshot, Some(snapshot(9, 1)));
    assert_eq!(state.entries, entries(10..=11, 1));
    assert_eq!(state.hard_state, hard_state(4, Some(3), 0));
}

#[test]
fn compaction_never_resurrects_truncated_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.segment_roll_bytes = 1;
    storage.persist(Some(&hard_state(1, None, 0)), None, &entries(1..=10, 1)).expect("persist");
    // A new leader replaced 5.. (the stale 5..=10 stay in the first segment's bytes).
    storage.persist(Some(&hard_state(2, None, 4)), None, &entries(5..=6, 2)).expect("persist");
    storage.persist(None, None, &entries(7..=8, 2)).expect("persist");

    storage.compact(&snapshot(4, 1)).expect("compact");
    // Only 1..=4 of the first segment were live, so it could go.
    assert_eq!(segment_files(dir.path()).len(), 3);
    drop(storage);

    let state = reopen(dir.path());
    assert_eq!(state.snapshot.map(|s| s.meta.index), Some(4));
    assert_eq!(state.entries, entries(5..=8, 2));
}

#[test]
fn a_leader_snapshot_that_conflicts_with_the_log_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.persist(Some(&hard_state(1, None, 2)), None, &entries(1..=5, 1)).expect("persist");
    // Index 4 was committed in term 2 elsewhere: our 1..=5 is another history.
    storage.persist(Some(&hard_state(2, None, 4)), Some(&snapshot(4, 2)), &[]).expect("persist");
    drop(storage);

    let state = reopen(dir.path());
    assert_eq!(state.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term)), Some((4, 2)));
    assert!(state.entries.is_empty());
}

#[test]
fn a_leader_snapshot_that_matches_the_log_keeps_later_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.persist(Some(&hard_state(1, None, 2)), None, &entries(1..=5, 1)).expect("persist");
    storage.persist(None, Some(&snapshot(3, 1)), &[]).expect("persist");
    drop(storage);

    let state = reopen(dir.path());
    assert_eq!(state.snapshot.map(|s| s.meta.index), Some(3));
    assert_eq!(state.entries, entries(4..=5, 1));
}

#[test]
fn a_leader_snapshot_keeps_the_hard_state_when_it_deletes_old_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.persist(Some(&hard_state(5, Some(2), 0)), None, &entries(1..=3, 1)).expect("persist");
    drop(storage);
    // A crash while starting a new segment left it empty, without its header record (after
    // the previous one was cut back to its records, as `Storage::roll` does first).
    let first = last_segment(dir.path());
    OpenOptions::new().write(true).open(&first).expect("open").set_len(records_end(&first)).expect("cut");
    create_segment(&RealFs, &dir.path().join(WAL_DIR).join(segment_name(4)), &[], 0).expect("create");

    let (mut storage, state) = open(dir.path());
    assert_eq!(state.hard_state, hard_state(5, Some(2), 0));
    storage.persist(None, Some(&snapshot(10, 2)), &[]).expect("persist");
    assert_eq!(segment_files(dir.path()).len(), 1, "the first segment is covered by the snapshot");
    drop(storage);

    let state = reopen(dir.path());
    assert_eq!(state.hard_state, hard_state(5, Some(2), 0));
    assert_eq!(state.snapshot.map(|s| s.meta.index), Some(10));
    assert!(state.entries.is_empty());
}

#[test]
fn a_crash_between_snapshot_file_and_log_record_recovers() {
    // The snapshot file is durable, the WAL record saying so is not.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.persist(Some(&hard_state(1, None, 5)), None, &entries(1..=5, 1)).expect("persist");
    save_snapshot(&RealFs, &dir.path().join(SNAP_DIR), &snapshot(3, 1)).expect("save");
    drop(storage);
    let state = reopen(dir.path());
    assert_eq!(state.snapshot.map(|s| s.meta.index), Some(3));
    assert_eq!(state.entries, entries(4..=5, 1));

    // Newer than the whole log: the log is dropped.
    save_snapshot(&RealFs, &dir.path().join(SNAP_DIR), &snapshot(9, 2)).expect("save");
    let state = reopen(dir.path());
    assert_eq!(state.snapshot.map(|s| s.meta.index), Some(9));
    assert!(state.entries.is_empty());
}

#[test]
fn an_unreadable_newest_snapshot_falls_back_to_an_older_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.persist(Some(&hard_state(1, None, 5)), None, &entries(1..=5, 1)).expect("persist");
    let snap_dir = dir.path().join(SNAP_DIR);
    save_snapshot(&RealFs, &snap_dir, &snapshot(2, 1)).expect("save");
    save_snapshot(&RealFs, &snap_dir, &snapshot(4, 1)).expect("save");
    drop(storage);
    let newest = snap_dir.join(snapshot_name(1, 4));
    flip_byte(&newest, file_len(&newest) - 1);

    let state = reopen(dir.path());
    assert_eq!(state.snapshot.map(|s| s.meta.index), Some(2));
    assert_eq!(state.entries, entries(3..=5, 1));
}

#[test]
fn a_missing_snapshot_is_reported_not_papered_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.segment_roll_bytes = 1;
    for index in 1..=6 {
        storage.persist(Some(&hard_state(1, None, index)), None, &entries(index..=index, 1)).expect("persist");
    }
    storage.compact(&snapshot(4, 1)).expect("compact");
    drop(storage);
    for snap in snapshot_files(dir.path()) {
        fs::remove_file(snap).expect("remove");
    }
    let error = Storage::open(dir.path()).err().expect("must not open");
    assert!(matches!(error, StoreError::Inconsistent { .. }), "{error}");
}

#[test]
fn many_small_persists_reopen_correctly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.segment_roll_bytes = 16 << 10; // exercise replay across segments too
    for index in 1..=1000 {
        let term = 1 + index / 300;
        storage.persist(Some(&hard_state(term, Some(1), index - 1)), None, &[entry(index, term)]).expect("persist");
    }
    assert!(segment_files(dir.path()).len() > 2);
    drop(storage);

    let state = reopen(dir.path());
    assert_eq!(state.entries.len(), 1000);
    assert!(state.entries.iter().enumerate().all(|(i, e)| e.index == i as u64 + 1 && e.term == 1 + e.index / 300));
    assert_eq!(state.hard_state, hard_state(4, Some(1), 999));
}

#[test]
fn a_full_disk_fails_the_persist_and_keeps_durable_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    storage.persist(Some(&hard_state(1, Some(1), 0)), None, &entries(1..=3, 1)).expect("persist");
    let segment = last_segment(dir.path());
    let durable_len = records_end(&segment);

    // Half a record reaches the disk, then ENOSPC.
    storage.fault = Some(Fault::DiskFullAfter(20));
    let error = storage.persist(Some(&hard_state(2, None, 3)), None, &entries(4..=5, 2)).expect_err("disk full");
    assert!(error.is_disk_full(), "{error}");
    assert!(error.to_string().contains("disk is full"), "{error}");
    assert_eq!(records_end(&segment), durable_len, "the partial write is cut away");
    assert!(zeros_from(&segment, durable_len));

    // A restart now sees exactly what was durable before.
    drop(storage);
    let (mut storage, state) = open(dir.path());
    assert_eq!(state.entries, entries(1..=3, 1));
    assert_eq!(state.hard_state, hard_state(1, Some(1), 0));

    // Once space is back, the same call succeeds.
    storage.fault = Some(Fault::DiskFullAfter(0));
    assert!(storage.persist(Some(&hard_state(2, None, 3)), None, &entries(4..=5, 2)).is_err());
    storage.persist(Some(&hard_state(2, None, 3)), None, &entries(4..=5, 2)).expect("retry");
    drop(storage);
    let state = reopen(dir.path());
    assert_eq!(state.entries.len(), 5);
    assert_eq!(state.hard_state, hard_state(2, None, 3));
}

/// The same on a real full filesystem, e.g.
/// `mount -t tmpfs -o size=256k tmpfs /mnt/small && KUBERAFT_TEST_SMALL_FS=/mnt/small cargo test -- --ignored`.
#[test]
#[ignore = "needs a small filesystem named by KUBERAFT_TEST_SMALL_FS"]
fn a_real_full_disk_fails_the_persist_and_keeps_durable_data() {
    let Some(small_fs) = std::env::var_os("KUBERAFT_TEST_SMALL_FS") else {
        panic!("set KUBERAFT_TEST_SMALL_FS to a directory on a small filesystem");
    };
    let dir = tempfile::tempdir_in(small_fs).expect("tempdir");
    let filler = dir.path().join("filler");
    fs::write(&filler, vec![7u8; 64 << 10]).expect("filler");
    let data_dir = dir.path().join("member");
    let (mut storage, _) = open(&data_dir);
    let big = |index: Index| Entry { index, term: 1, payload: EntryPayload::Command(Bytes::from(vec![1u8; 16 << 10])) };
    let mut durable = 0;
    let error = loop {
        let next = durable + 1;
        match storage.persist(Some(&hard_state(1, None, durable)), None, &[big(next)]) {
            Ok(()) => durable = next,
            Err(e) => break e,
        }
        assert!(durable < 10_000, "the filesystem never filled up");
    };
    assert!(error.is_disk_full(), "{error}");
    drop(storage);

    let (mut storage, state) = open(&data_dir);
    assert_eq!(state.entries.len() as u64, durable);
    assert_eq!(state.hard_state.commit, durable - 1);
    fs::remove_file(&filler).expect("free space");
    storage.persist(Some(&hard_state(1, None, durable)), None, &[big(durable + 1)]).expect("retry with space");
    drop(storage);
    assert_eq!(reopen(&data_dir).entries.len() as u64, durable + 1);
}

#[test]
fn non_consecutive_entries_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut storage, _) = open(dir.path());
    let gap = vec![entry(1, 1), entry(3, 1)];
    assert!(matches!(storage.persist(None, None, &gap), Err(StoreError::Invalid(_))));
    assert!(matches!(storage.persist(None, None, &[entry(0, 1)]), Err(StoreError::Invalid(_))));
    assert!(storage.is_fresh());
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (storage, _) = open(dir.path());
    assert!(matches!(Storage::open(dir.path()), Err(StoreError::Locked { .. })));
    drop(storage);
    open(dir.path());
}

#[test]
fn member_meta_roundtrip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("member");
    assert_eq!(read_meta(&data_dir).expect("read"), None);

    let meta = MemberMeta { cluster_id: 0xdead_beef, member_id: 42, name: "etcd-0".into() };
    write_meta(&data_dir, &meta).expect("write");
    assert_eq!(read_meta(&data_dir).expect("read"), Some(meta.clone()));

    let renamed = MemberMeta { name: "etcd-1".into(), ..meta };
    write_meta(&data_dir, &renamed).expect("overwrite");
    assert_eq!(read_meta(&data_dir).expect("read"), Some(renamed));
    assert_eq!(list_dir(&RealFs, &data_dir).expect("list").len(), 1, "no temporary file is left");

    fs::write(data_dir.join(META_FILE), b"{ not json").expect("damage");
    assert!(matches!(read_meta(&data_dir), Err(StoreError::Corrupt { .. })));
}

// ----- quorum-loss recovery: setting a member's data aside -----

/// A member's data directory with a log and `member.json`, inside a volume directory.
fn member_dir(volume: &Path) -> PathBuf {
    let dir = volume.join("data");
    let data = open_data_dir(&dir).expect("a new data directory");
    let mut storage = data.storage;
    storage.persist(Some(&hard_state(3, Some(1), 2)), None, &entries(1..=2, 3)).expect("persist");
    write_meta(&dir, &MemberMeta { cluster_id: 7, member_id: 1, name: "etcd-0".into() }).expect("member.json");
    dir
}

#[test]
fn recovery_sets_a_members_data_aside_once_and_leaves_an_empty_marked_directory() {
    let volume = tempfile::tempdir().expect("tempdir");
    let dir = member_dir(volume.path());
    assert_eq!(recovery_marker(&dir), None);
    let aside = set_aside_for_recovery(&dir, "ab12").expect("set aside").expect("moved");
    assert_eq!(aside, volume.path().join("data.before-recovery-ab12"));
    assert!(aside.join("member.json").is_file(), "the old data is kept, beside");
    let left: Vec<String> = fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [RECOVERY_MARKER_FILE], "only the marker");
    assert_eq!(recovery_marker(&dir).as_deref(), Some("ab12"));
    let fresh = open_data_dir(&dir).expect("opens as a new member's");
    assert!(fresh.meta.is_none() && fresh.storage.is_fresh());
    drop(fresh);
    // An empty directory (a new volume) is only marked.
    let empty = volume.path().join("empty");
    fs::create_dir(&empty).expect("an empty directory");
    assert_eq!(set_aside_for_recovery(&empty, "cd34").expect("mark"), None);
    assert_eq!(recovery_marker(&empty).as_deref(), Some("cd34"));
    // A directory that does not exist yet is made and marked.
    let other = volume.path().join("other");
    assert_eq!(set_aside_for_recovery(&other, "ef56").expect("mark"), None);
    assert_eq!(recovery_marker(&other).as_deref(), Some("ef56"));
}

#[test]
fn recovery_refuses_to_set_aside_a_directory_in_use_or_over_an_earlier_copy() {
    let volume = tempfile::tempdir().expect("tempdir");
    let dir = member_dir(volume.path());
    let running = open_data_dir(&dir).expect("a member runs on it");
    let err = set_aside_for_recovery(&dir, "ab12").expect_err("locked");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    drop(running);
    assert!(dir.join("member.json").is_file(), "nothing moved");
    fs::create_dir(volume.path().join("data.before-recovery-ab12")).expect("an earlier copy");
    let err = set_aside_for_recovery(&dir, "ab12").expect_err("exists");
    assert!(err.to_string().contains("exists already"), "{err}");
    assert!(dir.join("member.json").is_file(), "nothing moved");
    assert_eq!(recovery_marker(&dir), None, "not marked either");
}

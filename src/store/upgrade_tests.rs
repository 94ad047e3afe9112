//! Data written by kuberaft 0.1.0 (bincode 1) opens with this version. The fixture
//! `tests/fixtures/data-0.1.0` (its README says how it was made and what it holds) is read
//! through the calls the node makes at start (`open_data_dir`, `KvStore::restore_snapshot`,
//! `apply`), then written to in the current format and opened again. The cluster test
//! `data_dir_of_release_0_1_0_opens_and_keeps_every_key` does the same with the binary.

use std::path::Path;

use bytes::Bytes;

use super::command::{encode, Command, KeyValue, MemberInfo};
use super::{open_data_dir, DurableState, KvStore};
use crate::raft::{Entry, EntryPayload, HardState, Snapshot};

const ETCD_0: u64 = 0x62d8_eabb_d3cf_8ef4;
const ETCD_1: u64 = 0x3bcb_3706_7eb3_5eaa;
const CLUSTER_ID: u64 = 0xcf69_e693_edf8_a9d8;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let path = entry.expect("entry").path();
        let dest = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copy fixture file");
        }
    }
}

/// A copy of the fixture's data directory, in a temporary directory.
pub(crate) fn fixture_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-0.1.0/etcd-0");
    copy_dir(&fixture, tmp.path());
    tmp
}

/// The state machine as the node builds it at start: the snapshot, then the committed entries.
fn state_machine(durable: &DurableState) -> KvStore {
    let snapshot = durable.snapshot.as_ref().expect("the fixture has a snapshot");
    let mut kv = KvStore::from_legacy_snapshot(None, snapshot).expect("the 0.1.0 snapshot restores");
    for entry in durable.entries.iter().filter(|e| e.index <= durable.hard_state.commit) {
        kv.apply(entry);
    }
    kv.flush().expect("flush");
    kv
}

fn kv(key: &str, value: &[u8], create_revision: u64, mod_revision: u64, version: u64) -> KeyValue {
    KeyValue { key: key.into(), value: Bytes::copy_from_slice(value), create_revision, mod_revision, version }
}

/// Everything the fixture's README lists, its revisions one higher: 0.1.0 counted from an
/// empty store at 0, etcd (and this version) from 1.
fn assert_release_0_1_0_state(kv: &KvStore) {
    assert_eq!(kv.get("alpha"), Some(self::kv("alpha", b"one-again", 2, 5, 2)));
    assert_eq!(kv.get("gamma"), Some(self::kv("gamma", b"three", 4, 4, 1)));
    assert_eq!(kv.get("dir/binary"), Some(self::kv("dir/binary", b"bin\0\xffary", 6, 6, 1)));
    assert_eq!(kv.get("delta"), Some(self::kv("delta", b"four", 8, 8, 1)));
    assert_eq!(kv.get("beta"), None, "deleted at revision 7 (0.1.0's 6)");
    let members = kv.members();
    // A bootstrap member's record has no client URL (the node learns it from its peers).
    let etcd_0 = MemberInfo {
        id: ETCD_0,
        name: "etcd-0".into(),
        peer_url: "http://127.77.0.1:2380".into(),
        client_url: "".into(),
    };
    let etcd_1 = MemberInfo {
        id: ETCD_1,
        name: "etcd-1".into(),
        peer_url: "http://127.77.0.2:2380".into(),
        client_url: "http://127.77.0.2:2379".into(),
    };
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.contains(&(etcd_0, true)), "{members:?}");
    assert!(members.contains(&(etcd_1, false)), "the learner added after the snapshot: {members:?}");
}

#[test]
fn the_data_dir_of_release_0_1_0_opens_with_every_key_member_and_vote() {
    let tmp = fixture_copy();
    let opened = open_data_dir(tmp.path()).expect("the 0.1.0 data directory opens");
    let meta = opened.meta.clone().expect("member.json");
    assert_eq!((meta.cluster_id, meta.member_id, meta.name.as_str()), (CLUSTER_ID, ETCD_0, "etcd-0"));
    let durable = &opened.durable;
    assert_eq!(durable.hard_state, HardState { term: 2, vote: Some(ETCD_0), commit: 11 });
    let snapshot = durable.snapshot.as_ref().expect("snapshot");
    assert_eq!((snapshot.meta.index, snapshot.meta.term), (6, 2));
    assert_eq!(snapshot.meta.conf.voters, [ETCD_0].into());
    assert_eq!(durable.entries.iter().map(|e| e.index).collect::<Vec<_>>(), (7..=11).collect::<Vec<_>>());
    let kv = state_machine(durable);
    assert_eq!((kv.applied_index(), kv.applied_term(), kv.revision()), (11, 2, 8));
    assert_release_0_1_0_state(&kv);
}

#[test]
fn a_release_0_1_0_log_with_records_of_this_version_after_it_reopens() {
    let tmp = fixture_copy();
    let mut opened = open_data_dir(tmp.path()).expect("open");
    let mut kv = state_machine(&opened.durable);
    // A new term, a put and a membership record, written in the current format after the old
    // records in the same segment.
    let put = Command::Put { key: "epsilon".into(), value: Bytes::from_static(b"five"), prev_revision: None };
    let entries = [Entry { index: 12, term: 3, payload: EntryPayload::Command(encode(&put)) }];
    let hard_state = HardState { term: 3, vote: Some(ETCD_0), commit: 12 };
    opened.storage.persist(Some(&hard_state), None, &entries).expect("persist");
    kv.apply(&entries[0]);
    kv.flush().expect("flush");
    drop(opened);

    let reopened = open_data_dir(tmp.path()).expect("reopen with old and new records");
    assert_eq!(reopened.durable.hard_state, hard_state);
    assert_eq!(reopened.durable.entries.iter().map(|e| e.index).collect::<Vec<_>>(), (7..=12).collect::<Vec<_>>());
    let replayed = state_machine(&reopened.durable);
    assert_eq!(replayed.list("", usize::MAX), kv.list("", usize::MAX));
    assert_eq!((replayed.applied_index(), replayed.revision()), (kv.applied_index(), kv.revision()));
    assert_eq!(replayed.members(), kv.members());
    assert_eq!(replayed.get("epsilon"), Some(self::kv("epsilon", b"five", 9, 9, 1)));
    assert_release_0_1_0_state(&replayed);

    // A snapshot of this version (its metadata only: the state machine is its own database)
    // replaces the 0.1.0 one.
    let mut storage = reopened.storage;
    let meta = reopened.durable.snapshot.expect("snapshot").meta;
    let snapshot = Snapshot { meta: crate::raft::SnapshotMeta { index: 12, term: 3, ..meta }, data: Bytes::new() };
    storage.compact(&snapshot).expect("compact");
    drop(storage);
    let again = open_data_dir(tmp.path()).expect("reopen after compaction");
    assert_eq!(again.durable.snapshot.as_ref().map(|s| (s.meta.index, s.data.len())), Some((12, 0)));
}

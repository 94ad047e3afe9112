//! The Raft loop of member 2 of a 3-voter cluster, driven by hand: a temp-dir `Storage`, an
//! outbox that records what would be sent, and messages stepped in as if from leader 1.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::*;
use crate::node::shared::StagedSnapshot;
use crate::raft::{ConfState, Config, Entry, InitialState, MessageBody, Raft, SnapshotMeta};
use crate::store::command::{encode, Command};
use crate::store::fs::{DirLock, FileSystem, RealFs, WalFile};

const ME: NodeId = 2;
const LEADER: NodeId = 1;
const TERM: Term = 2;

/// What was sent; with `.1` set, the writer's thread sends through it too (`Outbox::courier`).
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<Message>>>, Arc<std::sync::atomic::AtomicBool>);

impl Outbox for Recorded {
    fn send(&mut self, messages: Vec<Message>) {
        self.0.lock().expect("outbox").extend(messages);
    }
    fn courier(&self) -> Option<Arc<dyn Courier>> {
        self.1.load(Ordering::Relaxed).then(|| Arc::new(self.clone()) as Arc<dyn Courier>)
    }
}

impl Courier for Recorded {
    fn deliver(&self, messages: Vec<Message>, _appends: &[Instant]) {
        self.0.lock().expect("outbox").extend(messages);
    }
}

struct Member {
    lp: RaftLoop,
    sent: Recorded,
    dir: tempfile::TempDir,
}

fn member_info(id: NodeId) -> MemberInfo {
    MemberInfo { id, name: format!("m{id}"), peer_url: format!("http://127.0.0.{id}:2380"), client_url: String::new() }
}

fn conf() -> ConfState {
    ConfState { voters: BTreeSet::from([1, 2, 3]), learners: BTreeSet::new() }
}

/// Member 2 after bootstrap, its three bootstrap entries applied; snapshots every entry.
fn member() -> Member {
    member_on(Arc::new(RealFs), input_queue(16).1)
}

/// As `member`, its WAL on `fs`, its loop reading `rx`.
fn member_on(fs: Arc<dyn FileSystem>, rx: InputReceiver) -> Member {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut storage, _) = Storage::open_with(fs, dir.path()).expect("storage");
    let voters: Vec<(NodeId, Bytes)> = [1, 2, 3].iter().map(|id| (*id, encode(&member_info(*id)))).collect();
    let state = InitialState::bootstrap(&voters);
    storage.persist(Some(&state.hard_state), None, &state.entries).expect("persist bootstrap");
    let raw = RawNode::new(Raft::new(Config::new(ME), state).expect("raft"));
    let shared = Arc::new(Shared::for_tests(ME, "m2", 1, "127.0.0.2"));
    let sent = Recorded::default();
    let mut lp = RaftLoop::new(raw, storage, shared, Box::new(sent.clone()), rx, 1);
    lp.drive();
    assert_eq!(lp.shared.status().applied_index, 3, "the bootstrap entries applied");
    Member { lp, sent, dir }
}

impl Member {
    fn step(&mut self, body: MessageBody) {
        self.lp.handle(Input::Step(Message { from: LEADER, to: ME, term: TERM, body }));
        self.lp.drive();
    }

    /// A snapshot whose data travels in the message (as a kuberaft 0.1 leader sends it).
    fn install(&mut self, index: Index, term: Term, data: Bytes) {
        let snapshot = Snapshot { meta: SnapshotMeta { index, term, conf: conf() }, data };
        self.step(MessageBody::InstallSnapshot { snapshot });
    }

    /// A snapshot whose state machine the transport staged (`Shared::staged`).
    fn install_staged(&mut self, index: Index, term: Term, kv: KvStore) {
        *lock(&self.lp.shared.staged) = Some(StagedSnapshot { index, term, kv });
        self.install(index, term, Bytes::new());
    }

    /// Entries `from..=to` of `TERM` (puts of `key` = index), all committed.
    fn append(&mut self, from: Index, to: Index, prev_term: Term) {
        let entries = (from..=to)
            .map(|index| Entry { index, term: TERM, payload: EntryPayload::Command(put("key", index)) })
            .collect();
        self.step(MessageBody::Append { prev_index: from - 1, prev_term, entries, commit: to });
    }

    fn acknowledged(&self) -> Vec<Index> {
        let sent = self.sent.0.lock().expect("outbox");
        sent.iter()
            .filter_map(|m| match m.body {
                MessageBody::AppendResp { index, reject: None } if m.to == LEADER => Some(index),
                _ => None,
            })
            .collect()
    }

    fn errors(&self) -> Vec<String> {
        self.lp.shared.errors()
    }

    fn value(&self, key: &str) -> Option<Bytes> {
        read(&self.lp.shared.kv).get(key).map(|kv| kv.value)
    }
}

fn put(key: &str, index: Index) -> Bytes {
    encode(&Command::Put { key: key.into(), value: Bytes::from(index.to_string()), prev_revision: None })
}

/// A state machine that applied puts `1..=index`: 1 to 3 of term 1 (as the bootstrap entries), the
/// rest of term `term`.
fn state_at(index: Index, term: Term) -> KvStore {
    let mut kv = KvStore::new();
    for i in 1..=index {
        kv.apply(&Entry {
            index: i,
            term: if i > 3 { term } else { 1 },
            payload: EntryPayload::Command(put("key", i)),
        });
        kv.flush().expect("flush");
    }
    kv
}

/// A kuberaft 0.x snapshot body of a format newer than this version reads.
fn newer_format() -> Bytes {
    let mut data = b"KVS\0".to_vec();
    data.extend_from_slice(&4u32.to_le_bytes());
    data.extend_from_slice(&[0; 16]);
    Bytes::from(data)
}

fn assert_refused<T: std::fmt::Debug>(mut rx: oneshot::Receiver<Result<T, NodeError>>) {
    match rx.try_recv() {
        Ok(Err(NodeError::Unavailable(why))) => assert!(why.contains("stopped applying"), "{why}"),
        other => panic!("expected an immediate refusal, got {other:?}"),
    }
}

#[test]
fn an_uninstallable_snapshot_stops_the_state_machine_and_nothing_after_it_applies() {
    let mut m = member();
    m.install(10, TERM, newer_format());

    // Reported, with the reason naming both formats.
    let errors = m.errors();
    assert!(
        errors.iter().any(|e| e.starts_with("state machine: stopped at index 3")
            && e.contains("snapshot format 4 is newer than this version reads (3)")),
        "{errors:?}"
    );
    // The core counts the snapshot as applied; what readers see is what the state machine holds.
    assert_eq!(m.lp.raw.raft.applied_index(), 10);
    assert_eq!(m.lp.shared.status().applied_index, 3);
    assert_eq!(*m.lp.shared.applied.borrow(), 3, "readers waiting on an index see the state machine's");

    // Raft goes on (the log is sound: the snapshot is durable), the state machine does not.
    m.append(11, 15, TERM);
    assert_eq!(m.acknowledged(), vec![10, 15], "the snapshot and the entries are acknowledged");
    let status = m.lp.shared.status();
    assert_eq!((status.commit_index, status.applied_index), (15, 3));
    assert_eq!(m.value("key"), None, "no entry after the snapshot applied to the old state");
    // No snapshot of the stale state: with a threshold of 1 it would have been taken at 15.
    assert_eq!(m.lp.raw.raft.log().base().index, 10, "the log is not compacted past the failed snapshot");

    // Proposals, membership changes and reads are refused at once.
    let (reply, rx) = oneshot::channel();
    m.lp.handle(Input::ReadIndex { reply });
    assert_refused(rx);
    let (reply, rx) = oneshot::channel();
    m.lp.handle(Input::Propose { data: put("x", 1), reply, received: std::time::Instant::now() });
    assert_refused(rx);
    let (reply, rx) = oneshot::channel();
    let cc = ConfChange { kind: ConfChangeKind::AddLearner, node_id: 9, context: encode(&member_info(9)) };
    m.lp.handle(Input::ConfChange { cc, reply });
    assert_refused(rx);

    // A restart meets the same snapshot: it is durable, and `start` refuses it with this error.
    let dir = m.dir.path().to_path_buf();
    drop(m.lp);
    let (_, durable) = Storage::open(&dir).expect("reopen");
    let snapshot = durable.snapshot.expect("the snapshot was persisted before the install");
    assert_eq!(snapshot.meta.index, 10);
    let error = KvStore::from_legacy_snapshot(None, &snapshot).expect_err("unreadable on restart too");
    assert!(error.to_string().contains("upgrade kuberaft"), "{error}");
}

#[test]
fn a_snapshot_whose_state_contradicts_its_metadata_stops_the_state_machine() {
    let mut m = member();
    // A readable state of index 10 sent as the snapshot of index 12.
    m.install_staged(12, TERM, state_at(10, TERM));
    let errors = m.errors();
    assert!(errors.iter().any(|e| e.contains("applied index 10 (term 2)") && e.contains("index 12")), "{errors:?}");
    assert_eq!(m.lp.shared.status().applied_index, 3);
    assert_eq!(m.value("key"), None, "the old state is kept");

    // And the term: a state whose last entry is of term 1 as a snapshot of term 2.
    let mut m = member();
    m.install_staged(10, TERM, state_at(10, 1));
    assert!(m.errors().iter().any(|e| e.contains("(term 1)")), "{:?}", m.errors());
    assert_eq!(m.lp.shared.status().applied_index, 3);
}

#[test]
fn a_snapshot_that_installs_later_lets_the_state_machine_apply_again() {
    let mut m = member();
    m.install(10, TERM, newer_format());
    m.append(11, 12, TERM);
    assert_eq!(m.lp.shared.status().applied_index, 3);

    // A leader whose log was compacted past 12 sends a readable snapshot of 20.
    m.install_staged(20, TERM, state_at(20, TERM));
    assert_eq!(m.errors(), Vec::<String>::new(), "the halt is cleared");
    assert_eq!(m.lp.shared.status().applied_index, 20);
    m.append(21, 22, TERM);
    let status = m.lp.shared.status();
    assert_eq!((status.commit_index, status.applied_index), (22, 22));
    assert_eq!(m.value("key"), Some(Bytes::from("22")));
    // Snapshots are taken again, from the state machine's own state.
    assert_eq!(m.lp.raw.raft.log().base().index, 22);
    let (reply, mut rx) = oneshot::channel();
    m.lp.handle(Input::ReadIndex { reply });
    // (A follower passes the read on to the leader: no answer yet, and no refusal.)
    assert!(
        !matches!(rx.try_recv(), Ok(Err(NodeError::Unavailable(why))) if why.contains("stopped applying")),
        "reads are not refused for a halt any more"
    );
}

#[test]
fn a_streamed_snapshot_without_its_staged_state_machine_never_reaches_the_core() {
    let mut m = member();
    // Nothing staged: the message is dropped; no halt, no snapshot persisted, the log kept.
    m.install(20, TERM, Bytes::new());
    assert_eq!(m.errors(), Vec::<String>::new());
    assert_eq!(m.lp.shared.status().applied_index, 3);
    assert!(m.lp.raw.raft.log().base().index < 20, "the core took no snapshot of 20");
    // Another snapshot's state machine staged: dropped too, and that one stays staged.
    *lock(&m.lp.shared.staged) = Some(StagedSnapshot { index: 30, term: TERM, kv: state_at(30, TERM) });
    m.install(20, TERM, Bytes::new());
    assert_eq!((m.errors(), m.lp.shared.status().applied_index), (Vec::<String>::new(), 3));
    assert!(m.lp.raw.raft.log().base().index < 20);
    let dir = m.dir.path().to_path_buf();
    drop(m.lp);
    let (_, durable) = Storage::open(&dir).expect("reopen");
    assert!(durable.snapshot.is_none_or(|s| s.meta.index < 20), "no snapshot of 20 is durable");
    // With it staged, the same message installs.
    let mut m = member();
    m.install_staged(20, TERM, state_at(20, TERM));
    assert_eq!((m.errors(), m.lp.shared.status().applied_index), (Vec::<String>::new(), 20));
}

#[test]
fn a_state_machine_ahead_of_a_snapshot_stays_and_skips_what_it_applied() {
    let mut m = member();
    // Applied up to 20 before a restart; the core knows only its bootstrap entries.
    *write(&m.lp.shared.kv) = state_at(20, TERM);
    m.install_staged(10, TERM, state_at(10, TERM));
    assert_eq!(m.errors(), Vec::<String>::new());
    assert_eq!(m.value("key"), Some(Bytes::from("20")), "not moved back to 10");
    assert!(lock(&m.lp.shared.staged).is_none(), "the staged state machine is let go");
    m.append(11, 22, TERM);
    assert_eq!(m.errors(), Vec::<String>::new());
    let status = m.lp.shared.status();
    assert_eq!((status.commit_index, status.applied_index), (22, 22));
    assert_eq!(m.value("key"), Some(Bytes::from("22")));
}

#[test]
fn the_loop_reclaims_compacted_history_after_the_compact_applies() {
    let mut m = member();
    m.append(4, 1300, 1);
    // No snapshot (and so no durable commit) comes with the entries from here on.
    m.lp.snapshot_threshold = 1_000_000;
    let revision = read(&m.lp.shared.kv).current_revision();
    let compact = encode(&Command::Compact { revision });
    let entry = Entry { index: 1301, term: TERM, payload: EntryPayload::Command(compact) };
    m.step(MessageBody::Append { prev_index: 1300, prev_term: TERM, entries: vec![entry], commit: 1301 });
    for _ in 0..100 {
        if !read(&m.lp.shared.kv).compaction_pending() {
            break;
        }
        m.lp.drive();
    }
    let kv = read(&m.lp.shared.kv);
    assert_eq!(kv.compacted_revision(), revision);
    assert!(!kv.compaction_pending(), "the history below {revision} is reclaimed");
    assert!(!kv.has_unpersisted(), "and durable, so that redb reuses the pages it freed");
    assert_eq!(kv.get("key").map(|kv| kv.value), Some(Bytes::from("1300")));
}

#[test]
fn a_snapshot_keeps_catch_up_entries_in_the_log_behind_it() {
    let mut m = member();
    m.lp.snapshot_threshold = 10;
    m.append(4, 20, 1);
    let log = m.lp.raw.raft.log();
    assert_eq!(log.base().index, 15, "the snapshot is 5 entries (half the interval) behind the applied index");
    assert_eq!(log.entries().first().map(|e| e.index), Some(16), "a follower at 15 catches up from the log");
    assert_eq!(read(&m.lp.shared.kv).applied_index(), 20);
    assert!(!read(&m.lp.shared.kv).has_unpersisted(), "the state machine is durable up to 20");
    // The next snapshot is due 10 entries after the last one's applied index (20), not after
    // the log's base (15).
    m.append(21, 25, TERM);
    assert_eq!(read(&m.lp.shared.kv).applied_index(), 25);
    assert_eq!(m.lp.raw.raft.log().base().index, 15, "no snapshot at 25");
    m.append(26, 30, TERM);
    assert_eq!(m.lp.raw.raft.log().base().index, 25, "the next one at 30, keeping 5");
}

#[test]
fn large_entries_bring_a_snapshot_before_the_count_and_keep_at_most_half_the_bytes_behind_it() {
    let mut m = member();
    // A budget of 100 KiB, ten entries of 10 KiB: the count of 10,000 never comes.
    m.lp.snapshot_threshold = 10_000;
    m.lp.snapshot_bytes = 100 << 10;
    let value = Bytes::from(vec![b'v'; 10 << 10]);
    let big = |index| Entry {
        index,
        term: TERM,
        payload: EntryPayload::Command(encode(&Command::Put {
            key: "big".into(),
            value: value.clone(),
            prev_revision: None,
        })),
    };
    let held = |m: &Member| m.lp.raw.raft.log().entries().iter().map(Entry::payload_bytes).sum::<usize>();
    let before = m.lp.shared.metrics.snapshot_count.load(Ordering::Relaxed);
    let mut snapshots = 0;
    for index in 4..=60 {
        let base = m.lp.raw.raft.log().base().index;
        m.step(MessageBody::Append {
            prev_index: index - 1,
            prev_term: if index == 4 { 1 } else { TERM },
            entries: vec![big(index)],
            commit: index,
        });
        assert!(held(&m) <= (150 << 10) + (10 << 10), "{} bytes held at {index}", held(&m));
        let now = m.lp.raw.raft.log().base().index;
        if now != base {
            snapshots += 1;
            // Each entry is a little over 10 KiB: 4 fit in half the budget.
            assert_eq!(index - now, 4, "entries kept behind the snapshot at {index}");
        }
    }
    assert_eq!(m.errors(), Vec::<String>::new());
    assert_eq!(read(&m.lp.shared.kv).applied_index(), 60);
    assert!(snapshots >= 5, "{snapshots} snapshots in 57 entries of 10 KiB, with a budget of 100 KiB");
    assert_eq!(m.lp.shared.metrics.snapshot_count.load(Ordering::Relaxed) - before, snapshots);
}

#[test]
fn a_snapshot_stream_waiting_for_a_member_that_left_is_dropped() {
    let mut m = member();
    for id in [3, 9] {
        let reader = read(&m.lp.shared.kv).snapshot().expect("a stream");
        lock(&m.lp.shared.outgoing_snapshots).insert(id, reader);
    }
    m.lp.drive();
    let waiting: Vec<NodeId> = lock(&m.lp.shared.outgoing_snapshots).keys().copied().collect();
    assert_eq!(waiting, vec![3], "9 is no member; 3 is");
}

#[test]
fn an_entry_out_of_step_with_the_state_machine_stops_it_instead_of_being_skipped() {
    let mut m = member();
    // The state machine is replaced behind the loop's back by one that applied only 1..=2:
    // the next committed entry (4) does not follow it.
    *write(&m.lp.shared.kv) = state_at(2, 1);
    m.append(4, 5, 1);
    let errors = m.errors();
    assert!(
        errors.iter().any(|e| e.contains("hands out entry 4 to apply, but the state machine applied up to 2")),
        "{errors:?}"
    );
    assert_eq!(m.lp.shared.status().applied_index, 2);
    // The bootstrap entries were snapshotted (a threshold of 1); nothing after them.
    assert_eq!(m.lp.raw.raft.log().base().index, 3, "no snapshot of an out-of-step state");
}

#[test]
fn entries_the_state_machine_applied_before_a_restart_are_skipped_not_applied_twice() {
    let mut m = member();
    // A state machine that is durable on its own may come back ahead of the log: here it
    // applied 1..=5 (puts of "5" last) while the log hands out 4 and 5 again, then 6.
    *write(&m.lp.shared.kv) = state_at(5, 1);
    let revision = m.lp.shared.kv.read().unwrap().revision();
    m.append(4, 6, 1);
    assert_eq!(m.errors(), Vec::<String>::new(), "no halt");
    assert_eq!(m.lp.shared.status().applied_index, 6);
    assert_eq!(m.value("key"), Some(Bytes::from("6")));
    assert_eq!(m.lp.shared.kv.read().unwrap().revision(), revision + 1, "4 and 5 were not applied twice");
}

#[test]
fn each_snapshot_and_the_longest_pass_of_the_loop_are_measured() {
    let mut m = member();
    let metrics = &m.lp.shared.metrics;
    // With a threshold of 1, the bootstrap entries were snapshotted in `member()`.
    assert_eq!(metrics.snapshot_count.load(Ordering::Relaxed), 1);
    let longest = metrics.raft_loop_longest_stall_micros.load(Ordering::Relaxed);
    assert!(longest > 0, "the pass that persisted, applied and snapshotted took time");
    m.append(4, 6, 1);
    let metrics = &m.lp.shared.metrics;
    assert_eq!(m.lp.raw.raft.log().base().index, 6, "a snapshot at 6");
    assert_eq!(metrics.snapshot_count.load(Ordering::Relaxed), 2);
    assert!(metrics.raft_loop_longest_stall_micros.load(Ordering::Relaxed) >= longest, "the longest pass is kept");
    let text = metrics.render_raft_loop();
    assert!(text.contains("kuberaft_snapshot_duration_seconds_count 2\n"), "{text}");
    assert!(text.contains("kuberaft_snapshot_duration_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
    assert!(text.contains("# TYPE kuberaft_raft_loop_longest_stall_seconds gauge\n"), "{text}");
}

#[test]
fn the_state_machine_file_is_written_back_while_entries_apply_and_not_when_idle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = Arc::new(Shared::for_tests(ME, "m2", 1, "127.0.0.2"));
    *write(&shared.kv) = KvStore::open(&dir.path().join("kv.db")).expect("open the state machine");
    let writeback = Writeback::start(shared.clone(), Duration::from_millis(2));
    let started = || shared.metrics.writebacks.load(Ordering::Relaxed);
    let settle = |at_least: u64| {
        for _ in 0..500 {
            if started() >= at_least {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        started()
    };
    assert_eq!(settle(1), 1, "one writeback of the file as it was opened");
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(started(), 1, "nothing applied, nothing to write back");
    {
        // One batch under one lock, so the writeback sees the applied index move once.
        let mut kv = write(&shared.kv);
        for index in 1..=3 {
            kv.apply(&Entry { index, term: 1, payload: EntryPayload::Command(put("key", index)) });
        }
        kv.flush().expect("flush");
    }
    assert_eq!(settle(2), 2, "the applied entries are written back");
    drop(writeback);
    assert!(shared.metrics.render_raft_loop().contains("kuberaft_state_machine_writebacks_total 2\n"));
}

/// A disk whose syncs wait while its gate is shut (a slow fsync, held as long as a test likes).
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    fn set_shut(&self, shut: bool) {
        *self.0 .0.lock().expect("gate") = shut;
        self.0 .1.notify_all();
    }
    fn is_shut(&self) -> bool {
        *self.0 .0.lock().expect("gate")
    }
    /// Waits until the gate opens (at most a minute, so that a test never hangs).
    fn pass(&self) {
        let (shut, opened) = &*self.0;
        let guard = shut.lock().expect("gate");
        let _open = opened.wait_timeout_while(guard, Duration::from_secs(60), |shut| *shut).expect("gate");
    }
}

struct GatedFs(Gate);
struct GatedFile(Box<dyn WalFile>, Gate);

impl WalFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn allocate(&mut self, len: u64) -> std::io::Result<()> {
        self.0.allocate(len)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        self.1.pass();
        self.0.sync_data()
    }
    fn sync_all(&mut self) -> std::io::Result<()> {
        self.1.pass();
        self.0.sync_all()
    }
}

impl GatedFs {
    fn gated(&self, file: std::io::Result<Box<dyn WalFile>>) -> std::io::Result<Box<dyn WalFile>> {
        Ok(Box::new(GatedFile(file?, self.0.clone())))
    }
}

impl FileSystem for GatedFs {
    fn is_dir(&self, path: &Path) -> bool {
        RealFs.is_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        RealFs.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        RealFs.list_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        self.0.pass();
        RealFs.sync_dir(path)
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn WalFile>> {
        self.gated(RealFs.create_new(path))
    }
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn WalFile>> {
        self.gated(RealFs.create(path))
    }
    fn open_rw(&self, path: &Path) -> std::io::Result<Box<dyn WalFile>> {
        self.gated(RealFs.open_rw(path))
    }
    fn open_read(&self, path: &Path) -> std::io::Result<Box<dyn WalFile>> {
        self.gated(RealFs.open_read(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        RealFs.remove_file(path)
    }
    fn lock(&self, path: &Path) -> std::io::Result<Option<Box<dyn DirLock>>> {
        RealFs.lock(path)
    }
}

/// A follower whose loop writes on its writer thread over a file system whose fsyncs wait while
/// the gate is shut, with the gate shut; with `courier`, the writer's thread sends the messages
/// that wait for its writes itself. The returned thread opens the gate after 20 s whatever
/// happens, so that a loop that waits for the disk makes a test fail instead of hanging it;
/// join it at the end.
fn gated_member(courier: bool) -> (Member, Gate, std::thread::JoinHandle<()>) {
    let gate = Gate::default();
    let (tx, rx) = input_queue(64);
    let mut m = member_on(Arc::new(GatedFs(gate.clone())), rx);
    m.sent.1.store(courier, Ordering::Relaxed);
    m.lp = m.lp.with_writer_thread(tx).expect("writer thread");
    gate.set_shut(true);
    let breaker = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                if !gate.is_shut() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            gate.set_shut(false);
        })
    };
    (m, gate, breaker)
}

/// Runs the loop by hand, taking its inputs (the writer's reports among them), until `done` or
/// `rounds` rounds of at most 10 ms.
fn run_until(m: &mut Member, rounds: usize, done: impl Fn(&Member) -> bool) {
    for _ in 0..rounds {
        if done(m) {
            return;
        }
        match m.lp.rx.try_recv() {
            Ok(input) => m.lp.handle(input),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
        m.lp.drive();
    }
}

/// Issue 19, part 3: the loop hands a write to its writer thread and goes on. While a follower's
/// fsync is held, the loop takes the append and the next message and returns; the append's
/// acknowledgement waits for the write, and its entries apply only once they are durable here.
/// With the inline writer (the loop writing on its own thread, as before the writer thread) the
/// first `step` cannot return until the disk does, and the first assertion fails.
/// Both ways the acknowledgement can leave: through the loop, and from the writer's thread.
#[test]
fn the_loop_goes_on_while_its_writer_syncs_and_acknowledges_only_what_is_durable() {
    for courier in [false, true] {
        let (mut m, gate, breaker) = gated_member(courier);

        m.append(4, 5, 1);
        m.step(MessageBody::Heartbeat { commit: 5, read_seq: 0 });
        assert!(gate.is_shut(), "the loop returned while its write was still waiting for the disk");
        assert!(m.acknowledged().iter().all(|i| *i < 4), "nothing acknowledged before it is durable");
        assert_eq!(m.value("key"), None, "nothing applied before it is durable here");

        gate.set_shut(false);
        run_until(&mut m, 500, |m| m.acknowledged().contains(&5) && m.value("key") == Some(Bytes::from("5")));
        assert!(m.acknowledged().contains(&5), "acknowledged once written: {:?}", m.acknowledged());
        assert_eq!(m.value("key"), Some(Bytes::from("5")), "applied once durable");
        breaker.join().expect("breaker");
    }
}

/// Issue 19, part 3: a follower's acknowledgement is sent the moment its fsync returns. With a
/// courier (the transport, as a member runs) the writer's thread sends it itself: it leaves
/// while nothing drives the loop. Without one it waits for the loop to hear of the write, as
/// the first half shows; a writer that left it to the loop fails the second half.
#[test]
fn a_followers_acknowledgement_leaves_from_the_writer_the_moment_its_write_is_durable() {
    for courier in [false, true] {
        let (mut m, gate, breaker) = gated_member(courier);
        m.append(4, 5, 1);
        assert!(m.acknowledged().iter().all(|i| *i < 4), "nothing acknowledged before it is durable");

        gate.set_shut(false);
        // The loop stands still; only the writer's thread runs.
        for _ in 0..100 {
            if m.acknowledged().contains(&5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let sent_alone = m.acknowledged().contains(&5);
        assert_eq!(sent_alone, courier, "acknowledged without the loop: {:?}", m.acknowledged());

        // The loop hears of the write afterwards: it applies, and (without a courier) sends.
        run_until(&mut m, 500, |m| m.acknowledged().contains(&5) && m.value("key") == Some(Bytes::from("5")));
        assert_eq!(m.acknowledged().iter().filter(|i| **i == 5).count(), 1, "acknowledged once");
        assert_eq!(m.value("key"), Some(Bytes::from("5")));
        breaker.join().expect("breaker");
    }
}

/// A Ready with nothing to write whose messages answer for a write under way (the leader sent
/// the same append again while the first one's fsync was held) waits for that write, and leaves
/// as soon as it is durable: both acknowledgements go out once the gate opens, with no further
/// write. The loop hands such a Ready to the writer as an empty write, so that the writer's
/// report releases it; sending it at once would acknowledge entries not yet durable (the first
/// assertion), and holding it without handing it over would keep it until some later write.
#[test]
fn an_answer_that_waits_for_an_earlier_write_leaves_when_that_write_is_durable() {
    let (mut m, gate, breaker) = gated_member(true);

    m.append(4, 5, 1);
    m.append(4, 5, 1);
    let acks = |m: &Member| m.acknowledged().iter().filter(|i| **i == 5).count();
    assert_eq!(acks(&m), 0, "nothing acknowledged before it is durable");

    gate.set_shut(false);
    run_until(&mut m, 300, |m| acks(m) == 2);
    assert_eq!(acks(&m), 2, "both acknowledgements leave once the write is durable: {:?}", m.acknowledged());
    breaker.join().expect("breaker");
}

/// A follower's write placed through the leader (`forward::Outcomes`) takes its outcome from
/// this loop's apply of its entry: before or after the leader's answer arrives, and not from
/// another term's entry at its index.
#[tokio::test]
async fn a_placed_write_takes_its_outcome_from_this_members_apply() {
    use crate::node::forward::Placed;
    let within = std::time::Duration::from_secs(1);
    let mut m = member();
    let outcomes = &m.lp.shared.forward.outcomes;
    assert!(!outcomes.wanted(), "nothing is kept while nothing is placed");
    let placing = outcomes.placing();
    let waits = placing.wait_for(Placed { index: 4, term: TERM });
    let overwritten = placing.wait_for(Placed { index: 5, term: 1 });
    m.append(4, 6, 1);
    let revision = |outcome: Result<ApplyResult, NodeError>| match outcome {
        Ok(ApplyResult::Put { revision }) => revision,
        other => panic!("expected a put's outcome, got {other:?}"),
    };
    let first = revision(waits.outcome(within).await);
    let lost = overwritten.outcome(within).await;
    assert!(matches!(&lost, Err(NodeError::Unavailable(why)) if why.contains("overwritten")), "{lost:?}");
    // Entry 6 applied before the leader said where it placed the write.
    let late = revision(
        m.lp.shared.forward.outcomes.placing().wait_for(Placed { index: 6, term: TERM }).outcome(within).await,
    );
    assert_eq!(late, first + 2, "each write has its own entry's outcome");
    drop(placing);
}

/// A `Propose` on the peer stream that reaches a member that does not lead is answered at
/// once, on the way back to its sender, each command refused as retryable; nothing is appended.
/// So is one that reaches a member whose storage fails or whose state machine halted.
#[test]
fn proposals_on_the_stream_to_a_follower_are_refused_at_once() {
    let mut m = member();
    let last = m.lp.raw.raft.log().last_index();
    let body = MessageBody::Propose { batch: 4, commands: vec![put("k", 1)] };
    m.lp.handle(Input::Step(Message { from: 3, to: ME, term: TERM, body }));
    m.lp.drive();
    let answer = m.sent.0.lock().expect("outbox").iter().find_map(|sent| match &sent.body {
        MessageBody::Placed { batch: 4, answer } if sent.to == 3 => Some(answer.clone()),
        _ => None,
    });
    let answer: forward::PlaceAnswer = crate::store::codec::decode(&answer.expect("answered")).expect("decodable");
    assert!(
        matches!(&answer.placed[..], [Err(NodeError::Unavailable(why))] if why.contains("not the leader")),
        "{:?}",
        answer.placed
    );
    assert_eq!(m.lp.raw.raft.log().last_index(), last, "nothing appended");

    // A member whose storage fails, or whose state machine halted, refuses them as it refuses
    // `Input::Place`: at once, not by dropping them (which would leave the follower waiting).
    for (batch, failing, halted, said) in
        [(5, true, None, "storage is failing"), (6, false, Some("x"), "stopped applying")]
    {
        m.lp.failing = failing;
        m.lp.halted = halted.map(str::to_string);
        let body = MessageBody::Propose { batch, commands: vec![put("k", 1)] };
        m.lp.handle(Input::Step(Message { from: 3, to: ME, term: TERM, body }));
        let answer = m.sent.0.lock().expect("outbox").iter().find_map(|sent| match &sent.body {
            MessageBody::Placed { batch: b, answer } if *b == batch => Some(answer.clone()),
            _ => None,
        });
        let answer: forward::PlaceAnswer = crate::store::codec::decode(&answer.expect("answered")).expect("decodable");
        assert!(
            matches!(&answer.placed[..], [Err(NodeError::Unavailable(why))] if why.contains(said)),
            "{:?}",
            answer.placed
        );
    }
}

/// A write this member proposed as leader, that a snapshot past it covers, may be in the
/// snapshot or not: its outcome is unknown, never "superseded" (which says it did not happen).
#[test]
fn a_proposal_that_a_snapshot_passes_has_an_unknown_outcome() {
    let mut m = member();
    let (reply, mut rx) = oneshot::channel();
    m.lp.proposals.insert(8, PendingProposal { term: 1, reply: Some(reply), conf_reply: None });
    let (conf_reply, mut conf_rx) = oneshot::channel();
    m.lp.proposals.insert(9, PendingProposal { term: 1, reply: None, conf_reply: Some(conf_reply) });
    m.install_staged(10, TERM, state_at(10, TERM));
    m.append(11, 11, TERM);
    assert_eq!(m.lp.shared.status().applied_index, 11);
    let outcome = rx.try_recv();
    assert!(matches!(&outcome, Ok(Err(NodeError::OutcomeUnknown(why))) if why.contains("snapshot")), "{outcome:?}");
    let outcome = conf_rx.try_recv();
    assert!(matches!(&outcome, Ok(Err(NodeError::OutcomeUnknown(why))) if why.contains("snapshot")), "{outcome:?}");
}

/// A step of the loop that may block for long (`blocking`: a durable commit, a snapshot's
/// install) hands the worker's other tasks to another thread first: on a runtime of one worker,
/// a task spawned just before the step runs while the step blocks. Run as plain code, the step
/// would hold the only worker, and the task would wait for it (here: the 5 s bound, then fail).
#[test]
fn a_blocking_step_of_the_loop_leaves_the_runtime_to_the_other_tasks() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let ran_meanwhile = runtime.block_on(async {
        // A spawned task runs on the worker, as the loop does (`block_on` runs on this thread).
        tokio::spawn(async {
            let (ran_tx, ran_rx) = std::sync::mpsc::channel();
            let other = tokio::spawn(async move {
                let _ = ran_tx.send(());
            });
            let ran = blocking(|| ran_rx.recv_timeout(Duration::from_secs(5)).is_ok());
            let _ = other.await;
            ran
        })
        .await
        .expect("the loop's task")
    });
    assert!(ran_meanwhile, "the other task waited for the blocking step");
    // Tests drive the loop by hand, outside a runtime or on a current-thread one: it just runs.
    assert_eq!(blocking(|| 7), 7);
    let current = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    assert_eq!(current.block_on(async { blocking(|| 8) }), 8);
}

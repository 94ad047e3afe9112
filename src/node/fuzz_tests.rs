//! Fuzzing of everything a member decodes from a peer or its disk (issue 4): the peer
//! transport's decoder (`decode_messages`, both wire formats), the consensus core fed with whatever
//! decodes, the state machine's command decoder and its snapshot restore.
//!
//! Inputs are random bytes and mutations (bit flips, truncations, overwritten length fields,
//! splices) of real encodings: messages a 3-member in-memory group really exchanged, plus
//! InstallSnapshot and Append batches built from real state. Everything that decodes is
//! stepped into that group (as sent, and re-addressed so that it reaches the Raft logic), which
//! is then driven the way the node drives it; every member must keep its invariants. Bounded
//! and reproducible: `FUZZ_ITERATIONS` (default 20000) per target, `FUZZ_SEED` to replay.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use bytes::Bytes;

use crate::base::rng::Rng;
use crate::node::transport::{decode_messages, encode_messages, WireFormat, PEER_FORMAT};
use crate::raft::{
    ConfChange, ConfChangeKind, Config, Entry, EntryPayload, Index, InitialState, Message, MessageBody, NodeId, Raft,
    RawNode, Role, Snapshot, SnapshotMeta, Term,
};
use crate::store::command::{decode, decode_command, encode, Command, MemberInfo, PAYLOAD_FORMAT};
use crate::store::KvStore;

const DEFAULT_ITERATIONS: u64 = 20_000;
const DEFAULT_SEED: u64 = 0x6b75_6265_7261_6674;
/// The group is rebuilt this often, so that one poisoned state does not hide the others.
const ITERATIONS_PER_GROUP: u64 = 400;
/// Bounds on driving the group after each input.
const MAX_SETTLE_ROUNDS: usize = 32;
const MAX_READIES_PER_ROUND: usize = 8;
const MEMBERS: u64 = 3;
/// Members' terms and indexes stay below this (see `check_invariants`).
const HEADROOM: u64 = 1 << 63;

fn iterations() -> u64 {
    std::env::var("FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_ITERATIONS)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SEED)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `f` for input `i`; on a panic, prints what replays it before failing the test.
fn replayable<T>(target: &str, seed: u64, i: u64, input: &[u8], f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(panic) => {
            eprintln!(
                "fuzz target {target}: iteration {i} panicked (replay: FUZZ_SEED={seed}); input ({} bytes): {}",
                input.len(),
                hex(input)
            );
            resume_unwind(panic)
        }
    }
}

// ----- mutations -----

/// Values that break length fields and counters: zero, one, just past the data, the limits of
/// u32 and u64, and a length that would be an absurd allocation.
const INTERESTING: [u64; 12] =
    [0, 1, 2, 7, 255, 4096, 1 << 31, u32::MAX as u64, 1 << 32, 1 << 40, u64::MAX / 2, u64::MAX];

fn random_bytes(rng: &mut Rng, max_len: u64) -> Vec<u8> {
    let len = rng.range(0, max_len + 1) as usize;
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// One to four mutations of `valid`.
fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    let rounds = if rng.chance(0.6) { 1 } else { rng.range(2, 5) };
    for _ in 0..rounds {
        let len = bytes.len() as u64;
        match rng.range(0, 7) {
            // Bit flips.
            0 => {
                for _ in 0..rng.range(1, 9) {
                    if !bytes.is_empty() {
                        let at = rng.range(0, len) as usize;
                        bytes[at] ^= 1 << rng.range(0, 8);
                    }
                }
            }
            // Truncation.
            1 => bytes.truncate(rng.range(0, len + 1) as usize),
            // A length field (or any u64) overwritten with an interesting value, as bincode 1
            // (format 1) writes them: lengths as u64 little-endian, enum tags as u32. In postcard
            // (format 2) the same bytes make long or overlong varints.
            2 | 3 => {
                let value = INTERESTING[rng.range(0, INTERESTING.len() as u64) as usize];
                let value = if rng.chance(0.2) { value.wrapping_add(len) } else { value };
                let width = if rng.chance(0.7) { 8 } else { 4 };
                if len >= width {
                    let at = rng.range(0, len - width + 1) as usize;
                    bytes[at..at + width as usize].copy_from_slice(&value.to_le_bytes()[..width as usize]);
                }
            }
            // The batch's own length prefix.
            4 => {
                if len >= 8 {
                    let value = INTERESTING[rng.range(0, INTERESTING.len() as u64) as usize];
                    bytes[..8].copy_from_slice(&value.to_le_bytes());
                }
            }
            // A random byte sequence spliced in (or appended).
            5 => {
                let at = rng.range(0, len + 1) as usize;
                let junk = random_bytes(rng, 16);
                bytes.splice(at..at, junk);
            }
            // A slice of itself repeated (duplicated messages, entries, fields).
            _ => {
                if len > 1 {
                    let from = rng.range(0, len) as usize;
                    let to = rng.range(from as u64 + 1, len + 1) as usize;
                    let copy = bytes[from..to].to_vec();
                    let at = rng.range(0, len + 1) as usize;
                    bytes.splice(at..at, copy);
                }
            }
        }
    }
    bytes
}

// ----- a 3-member group driven as the node drives it -----

/// One member: its core, the state machine its host applies to, and what was last observed.
struct FuzzMember {
    raw: RawNode,
    kv: KvStore,
    last_term: Term,
    last_commit: Index,
    /// The last index the host persisted.
    last_stable: Index,
}

struct Group {
    members: Vec<FuzzMember>,
    coverage: Coverage,
    /// Every message the members sent (a corpus of real encodings), bounded.
    sent: Vec<Message>,
    record: bool,
}

const MAX_RECORDED: usize = 256;

/// How deep the inputs reached: printed, so that a fuzz that only hits the decoder's error
/// paths shows.
#[derive(Debug, Default)]
struct Coverage {
    leader_changes: u64,
    snapshots_installed: u64,
    entries_applied: u64,
    truncations_or_rollbacks: u64,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        self.leader_changes += other.leader_changes;
        self.snapshots_installed += other.snapshots_installed;
        self.entries_applied += other.entries_applied;
        self.truncations_or_rollbacks += other.truncations_or_rollbacks;
    }
}

impl Group {
    fn new() -> Group {
        let voters: Vec<(NodeId, Bytes)> = (1..=MEMBERS).map(|id| (id, encode(&member_info(id)))).collect();
        let initial = InitialState::bootstrap(&voters);
        let members = (1..=MEMBERS)
            .map(|id| {
                let raft = Raft::new(Config::new(id), initial.clone()).expect("valid config");
                FuzzMember { raw: RawNode::new(raft), kv: KvStore::new(), last_term: 0, last_commit: 0, last_stable: 0 }
            })
            .collect();
        let mut group = Group { members, coverage: Coverage::default(), sent: Vec::new(), record: false };
        group.settle("bootstrap");
        for _ in 0..100 {
            if group.members[0].raw.raft.role() == Role::Leader {
                break;
            }
            group.members[0].raw.tick();
            group.settle("first election");
        }
        assert_eq!(group.members[0].raw.raft.role(), Role::Leader, "member 1 leads the fresh group");
        group
    }

    fn leader(&mut self) -> Option<&mut FuzzMember> {
        self.members.iter_mut().find(|m| m.raw.raft.role() == Role::Leader)
    }

    fn step(&mut self, m: Message) {
        if let Some(member) = self.members.iter_mut().find(|x| x.raw.raft.id() == m.to) {
            member.raw.step(m);
        }
    }

    /// Runs Ready cycles and delivers messages until quiet (bounded); checks every member
    /// after every cycle.
    fn settle(&mut self, context: &str) {
        for _ in 0..MAX_SETTLE_ROUNDS {
            let mut outbox = Vec::new();
            for member in &mut self.members {
                for _ in 0..MAX_READIES_PER_ROUND {
                    if !member.raw.has_ready() {
                        break;
                    }
                    let rd = member.raw.ready();
                    let coverage = &mut self.coverage;
                    coverage.leader_changes += u64::from(rd.soft_state.is_some_and(|s| s.leader.is_some()));
                    coverage.snapshots_installed += u64::from(rd.snapshot.is_some());
                    coverage.entries_applied += rd.committed_entries.len() as u64;
                    coverage.truncations_or_rollbacks +=
                        u64::from(rd.entries.first().is_some_and(|e| e.index <= member.last_stable));
                    if let Some(snapshot) = &rd.snapshot {
                        member.last_stable = snapshot.meta.index;
                    }
                    if let Some(last) = rd.entries.last() {
                        member.last_stable = last.index;
                    }
                    // The host installs a snapshot (keeping its old state if it cannot read it;
                    // only the core's invariants are checked here, while the node would halt its
                    // state machine), then applies the committed entries in order.
                    if let Some(snapshot) = &rd.snapshot {
                        if let Ok(kv) = KvStore::stage(None, std::io::Cursor::new(snapshot.data.clone())) {
                            member.kv = kv;
                        }
                    }
                    for entry in &rd.committed_entries {
                        member.kv.apply(entry);
                    }
                    let _ = member.kv.flush();
                    outbox.extend(rd.messages);
                    outbox.extend(rd.persisted_messages);
                    member.raw.advance();
                    check_invariants(member, context);
                }
            }
            if outbox.is_empty() {
                return;
            }
            if self.record {
                for m in &outbox {
                    if self.sent.len() < MAX_RECORDED {
                        self.sent.push(m.clone());
                    }
                }
            }
            for m in outbox {
                self.step(m);
            }
        }
    }
}

/// What must hold on every member whatever it was sent: the commit index stays within the log
/// and never moves back, nothing is applied before it commits, the term never decreases, and
/// terms and indexes keep their distance from overflow.
fn check_invariants(member: &mut FuzzMember, context: &str) {
    let raft = &member.raw.raft;
    let (id, term, commit, applied, last) =
        (raft.id(), raft.term(), raft.commit_index(), raft.applied_index(), raft.log().last_index());
    assert!(commit <= last, "member {id}: commit {commit} beyond last index {last} ({context})");
    assert!(applied <= commit, "member {id}: applied {applied} beyond commit {commit} ({context})");
    assert!(term >= member.last_term, "member {id}: term went back from {} to {term} ({context})", member.last_term);
    // Far from overflow: the next election's `term + 1` and the next entry's `index + 1` stay
    // computable (peers' values are bounded by `MAX_TERM_OR_INDEX`).
    assert!(
        term < HEADROOM && last < HEADROOM,
        "member {id}: term {term} or last index {last} near overflow ({context})"
    );
    assert!(
        commit >= member.last_commit,
        "member {id}: commit went back from {} to {commit} ({context})",
        member.last_commit
    );
    member.last_term = term;
    member.last_commit = commit;
}

fn member_info(id: NodeId) -> MemberInfo {
    MemberInfo {
        id,
        name: format!("etcd-{id}"),
        peer_url: format!("http://10.0.0.{id}:2380"),
        client_url: format!("http://10.0.0.{id}:2379"),
    }
}

fn put(key: &str, value: &[u8]) -> Bytes {
    encode(&Command::Put { key: key.into(), value: Bytes::copy_from_slice(value), prev_revision: None })
}

/// Real messages: whatever a group exchanges while it elects, replicates commands and a
/// membership change, and compacts; plus an InstallSnapshot of a real state machine and an
/// Append with every kind of entry.
fn corpus() -> Vec<Message> {
    let mut group = Group::new();
    group.record = true;
    for i in 0..6u8 {
        if let Some(leader) = group.leader() {
            let _ = leader.raw.raft.propose(put(&format!("key-{i}"), &[i; 9]));
        }
        group.settle("corpus");
        for member in &mut group.members {
            member.raw.tick();
        }
        group.settle("corpus");
    }
    if let Some(leader) = group.leader() {
        let cc = ConfChange { kind: ConfChangeKind::AddLearner, node_id: 4, context: encode(&member_info(4)) };
        let _ = leader.raw.raft.propose_conf_change(cc);
    }
    group.settle("corpus");
    let mut messages = std::mem::take(&mut group.sent);

    let state = snapshot_bytes(&group.members[0].kv);
    let conf = group.members[0].raw.raft.conf().clone();
    let term = group.members[0].raw.raft.term();
    let applied = group.members[0].raw.raft.applied_index();
    messages.push(Message {
        from: 1,
        to: 2,
        term,
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot { meta: SnapshotMeta { index: applied, term, conf }, data: state },
        },
    });
    let entries = vec![
        Entry { index: applied + 1, term, payload: EntryPayload::Noop },
        Entry { index: applied + 2, term, payload: EntryPayload::Command(put("a/b", b"value")) },
        Entry {
            index: applied + 3,
            term,
            payload: EntryPayload::ConfChange(ConfChange {
                kind: ConfChangeKind::Remove,
                node_id: 4,
                context: Bytes::new(),
            }),
        },
        Entry {
            index: applied + 4,
            term,
            payload: EntryPayload::Command(encode(&Command::Delete { key: "a/b".into(), prev_revision: Some(3) })),
        },
    ];
    messages.push(Message {
        from: 1,
        to: 3,
        term,
        body: MessageBody::Append { prev_index: applied, prev_term: term, entries, commit: applied },
    });
    assert!(messages.len() > 20, "the group exchanged messages of many kinds");
    messages
}

/// A batch as the transport sends it: 1 to 8 corpus messages, in the current format.
fn valid_batch(rng: &mut Rng, corpus: &[Message]) -> Vec<u8> {
    let batch: Vec<Message> =
        (0..rng.range(1, 9)).map(|_| corpus[rng.range(0, corpus.len() as u64) as usize].clone()).collect();
    encode_messages(&batch).expect("messages encode")
}

/// The message re-addressed to a member of the group, from another one, in a term that makes
/// the member act on it rather than drop it as stale (or not, at random).
fn readdress(rng: &mut Rng, group: &Group, mut m: Message) -> Message {
    m.to = rng.range(1, MEMBERS + 1);
    m.from = match rng.range(0, 10) {
        0 => [0, 4, u64::MAX][rng.range(0, 3) as usize],
        _ => (m.to + rng.range(1, MEMBERS)) % MEMBERS + 1,
    };
    let term = group.members[(m.to - 1) as usize].raw.raft.term();
    m.term = match rng.range(0, 5) {
        0 => m.term,
        1 | 2 => term,
        3 => term.saturating_add(1),
        _ => term.saturating_sub(1),
    };
    m
}

#[test]
fn peer_decoder_and_core_survive_random_and_mutated_batches() {
    let (seed, iterations) = (seed(), iterations());
    let mut rng = Rng::new(seed);
    let corpus = corpus();
    let mut group = Group::new();
    let (mut decoded_batches, mut stepped) = (0u64, 0u64);
    let mut coverage = Coverage::default();
    for i in 0..iterations {
        if i > 0 && i % ITERATIONS_PER_GROUP == 0 {
            coverage.add(&group.coverage);
            group = Group::new();
        }
        let input = if rng.chance(0.15) {
            random_bytes(&mut rng, 512)
        } else if rng.chance(0.1) {
            // Unchanged, so that plenty of whole batches reach the core.
            valid_batch(&mut rng, &corpus)
        } else {
            let valid = valid_batch(&mut rng, &corpus);
            mutate(&mut rng, &valid)
        };
        // Most inputs go to the current format's decoder; some to 0.1.0's (bincode 1), which an
        // upgraded member still reads from 0.1.0 peers.
        let format = if rng.chance(0.8) { WireFormat::Versioned } else { WireFormat::Legacy };
        replayable("peer batch", seed, i, &input, || {
            let Ok(messages) = decode_messages(format, &input) else { return };
            decoded_batches += 1;
            for m in messages {
                let readdressed = readdress(&mut rng, &group, m.clone());
                group.step(m);
                group.step(readdressed);
                stepped += 2;
            }
            // The host's own work meanwhile: time passes, clients propose, the log compacts.
            // Mostly a tick now and then; sometimes a quiet spell long enough for elections,
            // check-quorum step-downs and catching up to play out after what was injected.
            let ticks = if rng.chance(0.05) { rng.range(10, 80) } else { u64::from(rng.chance(0.3)) };
            for _ in 0..ticks {
                for member in &mut group.members {
                    member.raw.tick();
                }
                group.settle(&format!("iteration {i}, ticking"));
            }
            if rng.chance(0.1) {
                let data =
                    if rng.chance(0.5) { put("k", &input[..input.len().min(8)]) } else { Bytes::from(input.clone()) };
                if let Some(leader) = group.leader() {
                    let _ = leader.raw.raft.propose(data);
                }
            }
            if rng.chance(0.05) {
                let member = &mut group.members[rng.range(0, MEMBERS) as usize];
                let data = snapshot_bytes(&member.kv);
                let _ = member.raw.raft.compact(data);
            }
            group.settle(&format!("iteration {i}"));
        });
    }
    coverage.add(&group.coverage);
    println!(
        "fuzz peer batches: seed {seed}, {iterations} inputs, {decoded_batches} decoded, {stepped} messages stepped; {coverage:?}"
    );
    assert!(decoded_batches > iterations / 10, "mutations keep enough inputs decodable to reach the core");
}

#[test]
fn command_decoder_and_apply_survive_random_and_mutated_bytes() {
    let (seed, iterations) = (seed(), iterations());
    let mut rng = Rng::new(seed ^ 1);
    let commands = [
        put("a", b"1"),
        put(&"k".repeat(1024), &[0xff; 64]),
        encode(&Command::Put { key: "b".into(), value: Bytes::new(), prev_revision: Some(0) }),
        encode(&Command::Delete { key: "a".into(), prev_revision: None }),
        encode(&Command::Delete { key: "zz".into(), prev_revision: Some(u64::MAX) }),
    ];
    let mut kv = KvStore::new();
    let mut decoded = 0u64;
    for i in 0..iterations {
        let input = if rng.chance(0.2) {
            random_bytes(&mut rng, 64)
        } else {
            let valid = &commands[rng.range(0, commands.len() as u64) as usize];
            mutate(&mut rng, valid)
        };
        replayable("command", seed, i, &input, || {
            // The fast path for commands reads exactly as the general one, errors too.
            assert_eq!(decode_command(&input), decode::<Command>(&input), "decode_command and decode");
            if let Ok(command) = decode::<Command>(&input) {
                decoded += 1;
                assert_eq!(decode::<Command>(&encode(&command)).ok(), Some(command), "a decoded command round-trips");
            }
            // Applied as the state machine meets it: undecodable ones are skipped, not fatal.
            let entry = Entry {
                index: kv.applied_index() + 1,
                term: 1,
                payload: EntryPayload::Command(Bytes::from(input.clone())),
            };
            kv.apply(&entry);
            kv.flush().expect("flush");
            assert_eq!(kv.applied_index(), entry.index);
        });
    }
    println!("fuzz commands: seed {seed}, {iterations} inputs, {decoded} decoded, {} keys", kv.len());
}

#[test]
fn snapshot_restore_refuses_damage_and_round_trips_what_it_accepts() {
    let (seed, iterations) = (seed(), iterations());
    let mut rng = Rng::new(seed ^ 2);
    let mut source = KvStore::new();
    for (payload, index) in [
        EntryPayload::ConfChange(ConfChange {
            kind: ConfChangeKind::AddVoter,
            node_id: 1,
            context: encode(&member_info(1)),
        }),
        EntryPayload::Command(put("a", b"1")),
        EntryPayload::Command(put("b", &[7; 40])),
        EntryPayload::ConfChange(ConfChange {
            kind: ConfChangeKind::AddLearner,
            node_id: 2,
            context: encode(&member_info(2)),
        }),
        EntryPayload::Command(put("a", b"2")),
        EntryPayload::ConfChange(ConfChange { kind: ConfChangeKind::Remove, node_id: 2, context: Bytes::new() }),
    ]
    .into_iter()
    .zip(1..)
    {
        source.apply(&Entry { index, term: 1, payload });
        source.flush().expect("flush");
    }
    let valid = snapshot_bytes(&source);
    let stage = |input: &[u8]| KvStore::stage(None, std::io::Cursor::new(input.to_vec()));
    assert_eq!(stage(&valid).map(|kv| snapshot_bytes(&kv)).ok(), Some(valid.clone()));
    let mut restored = 0u64;
    for i in 0..iterations {
        let input = match rng.range(0, 10) {
            0 => random_bytes(&mut rng, 256),
            // A right header over random bytes: only the body decoder stands in the way.
            1 => [&valid[..8], &random_bytes(&mut rng, 256)[..]].concat(),
            _ => mutate(&mut rng, &valid),
        };
        replayable("snapshot", seed, i, &input, || {
            if let Ok(kv) = stage(&input) {
                restored += 1;
                let again = snapshot_bytes(&kv);
                assert_eq!(
                    stage(&again).map(|kv| snapshot_bytes(&kv)).ok(),
                    Some(again),
                    "an accepted snapshot round-trips"
                );
            }
        });
    }
    println!("fuzz snapshots: seed {seed}, {iterations} inputs, {restored} accepted");
}

/// Absurd length prefixes are refused by the decoder's limit before anything is allocated.
#[test]
fn absurd_length_prefixes_are_refused_without_allocating() {
    /// `n` as a postcard varint (LEB128).
    fn varint(mut n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while n >= 0x80 {
            out.push(n as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out
    }
    for len in [u64::MAX, 1 << 40, 1 << 32] {
        // Format 1 (bincode 1): lengths are u64 little-endian.
        let mut batch = len.to_le_bytes().to_vec();
        batch.extend_from_slice(&[0; 64]);
        assert!(decode_messages(WireFormat::Legacy, &batch).is_err(), "a batch claiming {len} messages");
        let mut snapshot = b"KVS\0\x01\0\0\0".to_vec();
        snapshot.extend_from_slice(&[0; 16]);
        snapshot.extend_from_slice(&len.to_le_bytes());
        assert!(KvStore::from_legacy(None, &snapshot).is_err(), "a snapshot claiming {len} keys");
        let mut command = 0u32.to_le_bytes().to_vec();
        command.extend_from_slice(&len.to_le_bytes());
        assert!(decode::<Command>(&command).is_err(), "a key claiming {len} bytes");
        // Format 2 (postcard): lengths are varints.
        let mut batch = vec![PEER_FORMAT];
        batch.extend_from_slice(&varint(len));
        batch.extend_from_slice(&[0; 64]);
        assert!(decode_messages(WireFormat::Versioned, &batch).is_err(), "a batch claiming {len} messages");
        let mut snapshot = b"KVS\0\x03\0\0\0\x01\x01".to_vec();
        snapshot.extend_from_slice(&varint(len));
        snapshot.extend_from_slice(&[0; 16]);
        assert!(KvStore::from_legacy(None, &snapshot).is_err(), "a snapshot claiming {len} keys");
        let mut command = vec![PAYLOAD_FORMAT, 0];
        command.extend_from_slice(&varint(len));
        command.extend_from_slice(&[0; 16]);
        assert!(decode::<Command>(&command).is_err(), "a key claiming {len} bytes");
    }
}

/// Found by this fuzz (seed 7743203322183640692, iteration 11005): a follower adopted the
/// term u64::MAX of a peer message, answered the leader with it (so the leader adopted it too),
/// and the next election computed `term + 1`: a panic in debug builds, and in release a wrap
/// to term 0, after which no pre-vote could ever succeed again — one message wedged the cluster
/// for good, the term being durable. The same held for an InstallSnapshot at index u64::MAX
/// (the next leader's no-op at `last_index + 1`). The core now drops messages whose terms or
/// indexes no real cluster reaches (`Message::is_well_formed`); the group keeps its leader.
#[test]
fn regression_messages_with_terms_or_indexes_near_overflow_are_dropped() {
    let mut group = Group::new();
    let term = group.members[0].raw.raft.term();
    let snapshot_at = |index| Snapshot {
        meta: SnapshotMeta { index, term, conf: group.members[0].raw.raft.conf().clone() },
        data: Bytes::new(),
    };
    let wedging = [
        Message { from: 2, to: 3, term: u64::MAX, body: MessageBody::Heartbeat { commit: 0, read_seq: 0 } },
        Message { from: 2, to: 1, term: u64::MAX, body: MessageBody::AppendResp { index: 0, reject: None } },
        Message {
            from: 3,
            to: 2,
            term: u64::MAX,
            body: MessageBody::Vote { last_index: u64::MAX, last_term: u64::MAX, transfer: true },
        },
        Message { from: 1, to: 3, term, body: MessageBody::InstallSnapshot { snapshot: snapshot_at(u64::MAX) } },
    ];
    for m in wedging {
        assert!(!m.is_well_formed());
        group.step(m);
        group.settle("regression");
    }
    for _ in 0..200 {
        for member in &mut group.members {
            member.raw.tick();
        }
        group.settle("regression, ticking");
    }
    for member in &group.members {
        let raft = &member.raw.raft;
        assert_eq!((raft.term(), raft.leader()), (term, Some(1)), "member {} keeps the term and the leader", raft.id());
        assert!(raft.log().last_index() < 100, "member {} kept its log", raft.id());
    }
    // A message just inside the bound is still a message.
    let heartbeat = MessageBody::Heartbeat { commit: crate::raft::MAX_TERM_OR_INDEX - 1, read_seq: 0 };
    assert!(Message { from: 1, to: 2, term: crate::raft::MAX_TERM_OR_INDEX - 1, body: heartbeat }.is_well_formed());
}

/// The state machine's snapshot stream as one buffer (the fuzzed members keep their snapshots in
/// the core, in memory).
fn snapshot_bytes(kv: &KvStore) -> Bytes {
    let chunks = kv.snapshot().expect("snapshot");
    Bytes::from(chunks.flat_map(|c| c.expect("chunk").to_vec()).collect::<Vec<u8>>())
}

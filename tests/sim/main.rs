//! A deterministic simulator for the Raft core (in the manner of TigerBeetle's VOPR and
//! FoundationDB's simulation): 1, 3 or 5 members (more after membership changes) exchange
//! messages through a simulated network that loses, delays, duplicates and reorders them,
//! suffers symmetric and one-way partitions; members crash, losing everything not yet durable,
//! and restart from what their simulated disk holds; membership changes, leader transfers and
//! log compaction happen along the way. Everything is drawn from one seed.
//!
//! Members also lose their whole disk (they come back empty under their old id and must go
//! through the node's real join decision, `node::join`, which refuses them, after which the
//! member is replaced as the operator does: remove, add a learner under a new id, start it
//! empty once its join is recorded), and lose power (a crash that also loses what was written
//! without a sync: the commit index of commit-only writes).
//!
//! Half the incarnations of members write asynchronously, as the node's writer thread does
//! (`RawNode::set_async_writes`, `node::writer`): each Ready's write completes 0–14 ms later, in
//! order, while the member goes on taking messages, committing and applying; its
//! acknowledgements and votes wait for the write, and a crash (sometimes just before a write
//! completes) loses every write under way. The others write each Ready before the next, as the
//! core's synchronous hosts do. Every acknowledgement is checked against the sender's disk.
//!
//! The replicated state machine is a small store in etcd's manner: every key has a value and a
//! mod revision, and a store revision is bumped once per write command (a put, or a txn whose
//! compares held: one revision however many keys it writes). The initial store (revision 1)
//! holds three accounts at 100 each. Four clients, each one operation at a time, through the
//! leader mostly or any live member, issue:
//! - puts and gets of three plain keys (a get may also read one account);
//! - read-alls: the three accounts read at one revision, linearizable through ReadIndex like
//!   every read here; a read sent to a follower is served as the node's followers serve it
//!   (`node::forward`): the follower asks its leader for a read index over the network, the
//!   leader answers once a ReadIndex round confirms it, and the follower serves the read from its
//!   own state once it applied that far (each message may be lost, delayed or cut off);
//! - a write sent to a follower is served as the node's followers serve it (`node::forward`):
//!   the follower asks its leader to place it, the leader appends it and answers where (index
//!   and term) over the network, and the follower takes the outcome from its own apply of that
//!   index: the write's if the entry there is of that term, none (it never applies) if not. An
//!   entry that applied before the answer arrived is found among the outcomes it keeps while
//!   placements are under way (at most `RECENT`: past it the outcome is unknown), and a
//!   snapshot that passes a waiting write leaves its outcome unknown;
//! - transfers: read two accounts with their mod revisions, then a txn that compares both mod
//!   revisions and puts both new balances (the richer one pays 1..=all of its balance), so the
//!   total is conserved; a compare that fails changes nothing;
//! - CAS: get a plain key, then a txn that compares its mod revision and puts a new value.
//!
//! Checked at every step: election safety, log matching, leader completeness, state machine
//! safety, monotonic commit, every message sent against the sender's durable state at the
//! moment it leaves (its term, a granted vote, an acknowledged index, no vote from an empty
//! log), that a member
//! whose data was lost is never admitted again under its old id, that no member finds data it
//! acknowledged gone (the leader's heartbeat commit past its log, `raft::DataLoss`: the disks
//! here lose nothing synced, so that report would be false), and that every read-all
//! answered sees the accounts' conserved total; at the end: liveness once faults stop (a
//! leader and a commit within a few election timeouts), convergence of every member, and
//! linearizability of the whole history (puts, gets, read-alls, transfers, CAS, with the
//! revisions each answer names) against a model of the whole store
//! (`check::linearizability::check_store`). Past its search budget the check says unknown,
//! which fails the seed as well.
//!
//! Leases (issue 14) run on simulated time: every member has the node's own lessor
//! (`node::lessor::Lessor`), promoted by the node's rule (leading, and an entry of its term
//! applied) and demoted when it stops leading; it is volatile (rebuilt from the state machine
//! on restart and snapshot). Two lease clients grant 1 s leases (the minimum for the simulated
//! election timeout), renew them through ReadIndex as the node's keep-alive does (a renewal
//! that finds a checkpoint clears it through the log before it answers), revoke them, and walk
//! away from them. The leader proposes the revokes of expired leases and checkpoints every
//! 200 ms. Checked: **lease safety**, no member applies the expiry of a lease before the
//! validity its client was told (the send time of its last acknowledged keep-alive + TTL);
//! **lease liveness**, once faults stop, every lease is revoked within TTL + the election
//! timeout (+100 ms for the commit) of a leader taking office.
//!
//! `planted_bugs_are_caught` plants each bug of `BUGS` in turn and requires a seed that fails
//! with the failure it should cause: each of `raft::PlantedBug`, five of the simulator's own
//! (a txn that applies only its first put, a txn that applies despite a failed compare, a
//! read-all answered from a member's applied state without ReadIndex, a follower that serves a
//! read when its leader's read index arrives without applying up to it, a follower that takes
//! a placed write's outcome from whatever entry applied at its index), and each of
//! `node::lessor::LeaseBug` (a renewal that keeps the checkpointed remainder, a renewal of a
//! lease past its deadline, a checkpoint that records the promotion's extension).
//!
//! `SIM_SEEDS=N` runs N seeds (default 2000), `SIM_SEED=S` replays one seed alone,
//! `SIM_TRACE=1` prints its events (with each command as it is first applied), `SIM_BUG=<name>`
//! plants one of `BUGS`. Run in release mode:
//! `cargo test --release --test sim -- --nocapture`.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::Instant;

use bytes::Bytes;
use kuberaft::base::rng::Rng;
use kuberaft::check::linearizability::{check_store, Operation, StoreInput, StoreOutput, StoreState, Verdict};
use kuberaft::node::join::{decide_existing, Decision, Joiner, PeerMember, PeerView};
use kuberaft::node::lessor::{LeaseBug, Lessor};
use kuberaft::raft::*;
use kuberaft::store::claim::{check_claim, MemberState};
use kuberaft::store::mvcc::Lease;

const TICK_MS: u64 = 10;
/// An asynchronous member's write completes up to this long after it starts.
const MAX_WRITE_DELAY_MS: u64 = 14;
/// Keys 0..KEYS take puts, gets and CAS.
const KEYS: u8 = 3;
/// The accounts of the transfers: they open at `OPENING_BALANCE` each in the initial store.
const ACCOUNTS: [u8; 3] = [10, 11, 12];
const OPENING_BALANCE: u64 = 100;
const CLIENTS: usize = 4;
const OP_TIMEOUT_MS: u64 = 1_000;
/// Liveness: after faults stop, a leader commits within this (10 maximum election timeouts).
const LIVENESS_MS: u64 = 3_000;
const CONVERGENCE_MS: u64 = 5_000;
const MAX_MEMBERS: usize = 7;
/// How often a member with empty data asks again how it may join.
const JOIN_EVERY_MS: u64 = 50;
/// A recorded join that has not applied within this is asked for again.
const CLAIM_TIMEOUT_MS: u64 = 1_000;
/// Lease clients, each holding at most one lease at a time.
const LEASE_CLIENTS: usize = 2;
/// The TTL every lease is granted with: the minimum the node allows for the simulator's
/// election timeout (1.5 × 300 ms, in whole seconds).
const LEASE_TTL_S: i64 = 1;
/// How often the leader checkpoints remaining TTLs: short, so that most leases carry one.
const LEASE_CHECKPOINT_MS: u64 = 200;
/// Read contexts at and above this are a lease keep-alive's, below it a client read's.
const LEASE_CTX: u64 = 1 << 40;
/// A leader's read contexts for its followers' reads: this bit and the read's op.
const FOLLOWER_CTX: u64 = 1 << 50;
/// Outcomes a follower keeps while its placements are under way (`forward::Outcomes`; small
/// here, so that a write whose entry applied long before the answer is seen as well).
const RECENT: usize = 16;

type Op = Operation<StoreInput<u8>, StoreOutput>;

/// A member's disk: what survives a crash.
type Disk = MemoryStorage;

struct PendingWrite {
    op: usize,
    index: Index,
    term: Term,
    /// Placed through the leader by this follower (`node::forward`).
    placed: bool,
}

struct PendingRead {
    op: usize,
    keys: Vec<u8>,
    index: Option<Index>,
}

/// The simulated state machine: etcd's store reduced to a value and a mod revision per key.
/// The revision is bumped once per write command (a put, or a txn whose compares held), as
/// etcd's; membership records and no-ops leave it alone. The initial store (revision 1) holds
/// the accounts at their opening balances, as if a bootstrap had written them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Store {
    revision: u64,
    /// key -> (value, mod_revision)
    keys: BTreeMap<u8, (u64, u64)>,
    /// lease id -> (granted TTL in s, checkpointed remaining TTL in ms, 0: none), as the
    /// node's state machine holds them. Leases carry no keys here, so they move no revision.
    leases: BTreeMap<i64, (i64, i64)>,
}

impl Store {
    fn initial() -> Store {
        Store {
            revision: 1,
            keys: ACCOUNTS.iter().map(|a| (*a, (OPENING_BALANCE, 1))).collect(),
            leases: BTreeMap::new(),
        }
    }

    /// The checker's model of the initial store.
    fn model() -> StoreState<u8> {
        let initial = Store::initial();
        StoreState { revision: initial.revision, keys: initial.keys }
    }

    /// The leases as the node's state machine lists them.
    fn lease_list(&self) -> Vec<Lease> {
        self.leases
            .iter()
            .map(|(id, (ttl, remaining_ms))| Lease { id: *id, ttl: *ttl, remaining_ms: *remaining_ms })
            .collect()
    }

    fn read(&self, keys: &[u8]) -> StoreOutput {
        StoreOutput::Read { revision: self.revision, kvs: keys.iter().map(|k| self.keys.get(k).copied()).collect() }
    }

    fn put(&mut self, key: u8, value: u64) -> StoreOutput {
        self.revision += 1;
        self.keys.insert(key, (value, self.revision));
        StoreOutput::Put { revision: self.revision }
    }

    /// etcd's txn with mod_revision EQUAL compares and put success ops, as one revision.
    fn txn(&mut self, compares: Pairs, puts: Pairs, bug: Option<Bug>) -> StoreOutput {
        let mut holds = compares.iter().all(|(k, m)| self.keys.get(&k).map_or(0, |(_, modified)| *modified) == m);
        if bug == Some(Bug::TxnIgnoresCompare) {
            holds = true;
        }
        if holds && !puts.is_empty() {
            self.revision += 1;
            let applied = if bug == Some(Bug::TxnFirstOpOnly) { 1 } else { usize::MAX };
            for (k, v) in puts.iter().take(applied) {
                self.keys.insert(k, (v, self.revision));
            }
        }
        StoreOutput::Txn { succeeded: holds, revision: self.revision }
    }
}

/// (key, number) pairs as a command holds them, 9 bytes each: read in place, so that applying
/// a txn allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Pairs<'a>(&'a [u8]);

impl<'a> Pairs<'a> {
    fn iter(self) -> impl Iterator<Item = (u8, u64)> + 'a {
        self.0.chunks_exact(9).map(|c| {
            let mut n = [0u8; 8];
            n.copy_from_slice(&c[1..]);
            (c[0], u64::from_le_bytes(n))
        })
    }

    fn is_empty(self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Pairs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A log command of the simulated state machine, read in place from an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command<'a> {
    Put {
        key: u8,
        value: u64,
    },
    Txn {
        compares: Pairs<'a>,
        puts: Pairs<'a>,
    },
    /// Records a join (`Command::Join` in the node).
    Join(NodeId),
    /// Changes nothing: the entry that proves a commit once faults stop. Not a store write, so
    /// it moves no revision under reads still in flight.
    Marker,
    /// The node's `Command::LeaseGrant` (refused when the id exists).
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// The node's `Command::LeaseRevoke`: proposed by a client, or by the leader on expiry.
    LeaseRevoke {
        id: i64,
    },
    /// The node's `Command::LeaseCheckpoint` of one lease (remaining 0 clears it).
    LeaseCheckpoint {
        id: i64,
        remaining_ms: i64,
    },
}

/// A client's next steps: a transfer or CAS reads first, then sends its txn.
#[derive(Clone, Debug)]
enum Plan {
    /// Reading two accounts (history entry `read`), then a transfer between them.
    Transfer { read: usize },
    /// Reading one key (history entry `read`), then a CAS on its mod revision.
    Cas { read: usize },
    /// The txn to send next.
    Txn(StoreInput<u8>),
}

/// Bugs planted on purpose (`planted_bugs_are_caught`): the core's, and the simulated state
/// machine's and read path's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    Raft(PlantedBug),
    /// A txn whose compares held applies only its first put (but takes its revision).
    TxnFirstOpOnly,
    /// A txn applies its puts, and reports success, even when its compares failed.
    TxnIgnoresCompare,
    /// A read-all of the accounts is answered at once from the member's applied state,
    /// without ReadIndex (a serializable read passed off as linearizable).
    StaleReadAll,
    /// A follower serves a read as soon as its leader's read index arrives, without applying
    /// up to it first.
    FollowerReadsUnapplied,
    /// A follower takes a placed write's outcome from the entry applied at its index, whatever
    /// its term.
    PlacedIgnoresTerm,
    /// A bug of the lessor (`node::lessor::LeaseBug`).
    Lease(LeaseBug),
}

struct SimNode {
    raw: Option<RawNode>,
    disk: Disk,
    /// The volatile state machine: rebuilt from the snapshot on restart.
    store: Store,
    applied: Index,
    seen_commit: Index,
    writes: Vec<PendingWrite>,
    reads: Vec<PendingRead>,
    /// Writes this follower asked its leader to place, whose answer has not arrived.
    placing: BTreeSet<usize>,
    /// While `placing` is not empty: what applied, in order (index, term, what a write there
    /// is told), at most `RECENT`.
    recent: VecDeque<(Index, Term, Option<StoreOutput>)>,
    compact_every: u64,
    /// Learners whose start with empty data is recorded (the node's KV `joined` set).
    joined: BTreeSet<NodeId>,
    /// A member with empty data that has not started yet: it joins as `node::join` decides.
    joining: Option<Joining>,
    /// The node's lessor (volatile: rebuilt from the store on restart and snapshot), and the
    /// term in which it was promoted.
    lessor: Lessor,
    leading: Option<Term>,
    /// Lease requests under way on this member.
    lease_waits: Vec<LeaseWait>,
    /// Leader: read-index rounds it runs for followers' reads, by context: (follower, op).
    relayed: BTreeMap<u64, (NodeId, usize)>,
    /// This incarnation writes asynchronously (`RawNode::set_async_writes`, as the node does):
    /// its Readies' writes complete later, in order, while it goes on taking messages.
    async_writes: bool,
    /// Writes under way (lost in a crash), oldest first.
    disk_writes: VecDeque<DiskWrite>,
}

/// One Ready's write under way on an asynchronous member, and the messages that wait for it.
struct DiskWrite {
    /// Unique in the run, so that a completion scheduled before a crash finds nothing after it.
    id: u64,
    ready: Ready,
    checks: Vec<AppendCheck>,
}

/// Log matching's record of one appended entry: (index, term) -> (digest, previous term).
type AppendCheck = ((Index, Term), (u64, Option<Term>));

/// A lease request under way on a member, for lease client `client`.
#[derive(Clone, Debug)]
struct LeaseWait {
    client: usize,
    lease: i64,
    /// When the client sent it: what its validity counts from.
    sent: u64,
    step: LeaseStep,
}

#[derive(Clone, Debug)]
enum LeaseStep {
    /// A grant proposed at (index, term).
    Grant(Index, Term),
    /// A revoke proposed at (index, term).
    Revoke(Index, Term),
    /// A keep-alive waiting for its read index (`None` until the ReadIndex round answers).
    Confirm(u64, Option<Index>),
    /// A keep-alive waiting for the clearing of a checkpoint proposed at (index, term).
    Clear(Index, Term),
}

/// A lease client: the lease it holds and until when it believes it valid.
#[derive(Clone, Debug, Default)]
struct LeaseClient {
    lease: Option<i64>,
    busy: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct Joining {
    /// A join recorded through this leader: (leader, index, term, when).
    claim: Option<(NodeId, Index, Term, u64)>,
    /// The outcome once the claim applied on that leader.
    outcome: Option<Result<(), (bool, String)>>,
    /// Refused as lost data: the member is being replaced.
    replace: bool,
}

#[derive(Debug)]
enum Event {
    Tick(NodeId),
    /// A follower's read-index request for read `op` reaching its leader (`node::forward`).
    ReadIndexAsked {
        leader: NodeId,
        follower: NodeId,
        op: usize,
    },
    /// The leader's answer reaching the follower: the read index, or `None` (refused).
    ReadIndexAnswered {
        follower: NodeId,
        op: usize,
        index: Option<Index>,
    },
    /// A follower's write `op` reaching its leader, to place in its log (`node::forward`).
    PlaceAsked {
        leader: NodeId,
        follower: NodeId,
        op: usize,
        command: Bytes,
    },
    /// The leader's answer reaching the follower: where it placed the write, or `None`
    /// (refused: not proposed).
    Placed {
        follower: NodeId,
        op: usize,
        placed: Option<(Index, Term)>,
    },
    Deliver(Message),
    Client(usize),
    Nemesis,
    Sweep,
    Join(NodeId),
    LeaseClient(usize),
    /// An asynchronous member's writes up to this one (`DiskWrite::id`) complete.
    WriteDone(NodeId, u64),
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Net {
    drop: f64,
    duplicate: f64,
    min_delay: u64,
    max_delay: u64,
    /// (from, to) pairs whose messages are lost.
    blocked: BTreeSet<(NodeId, NodeId)>,
}

#[derive(Default, Debug, Clone)]
struct Stats {
    events: u64,
    ops: usize,
    /// Puts acknowledged.
    ok_writes: usize,
    /// Reads answered (gets, read-alls, and the reads before a transfer or CAS).
    ok_reads: usize,
    /// Read-alls of the accounts answered (each checked for the conserved total).
    read_alls: usize,
    /// Reads sent to a follower, which asks its leader for the read index.
    follower_reads: usize,
    /// Writes sent to a follower, which asks its leader to place them.
    follower_writes: usize,
    /// Transfer txns acknowledged: committed, or refused because a compare failed.
    transfers_ok: usize,
    transfers_failed: usize,
    /// CAS txns acknowledged: swapped, or refused because the mod revision had moved.
    cas_ok: usize,
    cas_failed: usize,
    unknown: usize,
    elections: usize,
    crashes: usize,
    conf_changes: usize,
    leader_transfers: usize,
    snapshots_installed: usize,
    disk_losses: usize,
    power_losses: usize,
    joins: usize,
    replacements: usize,
    recovery_ms: u64,
    leases_granted: usize,
    keep_alives: usize,
    /// Leases revoked by their leader's expiry (not by a client).
    leases_expired: usize,
    leases_abandoned: usize,
    checkpoints: usize,
}

struct Sim {
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: BTreeMap<NodeId, SimNode>,
    next_id: NodeId,
    net: Net,
    clients_on: bool,
    client_busy: Vec<bool>,
    next_value: u64,
    history: Vec<Op>,
    /// Per history entry: its deadline while it is still open.
    open: Vec<Option<u64>>,
    /// Per history entry: it certainly did not take effect (or was a read with no answer).
    dropped: Vec<bool>,
    hclock: u64,
    // Invariant state.
    leaders: HashMap<Term, NodeId>,
    committed: HashMap<Index, (Term, u64)>,
    /// The lowest term in which each committed index was seen committed: the committing
    /// leader's term (it records first), an upper bound otherwise.
    commit_term: HashMap<Index, Term>,
    max_committed: Index,
    log_entries: HashMap<(Index, Term), (u64, Option<Term>)>,
    trace: bool,
    stats: Stats,
    marker: Option<(NodeId, Index, Term)>,
    marker_done: bool,
    /// The core's planted bug, if any (its configs carry it).
    planted: Option<PlantedBug>,
    /// The planted bug, of the core or of the simulator's own state machine and read path.
    bug: Option<Bug>,
    /// Per client: a transfer or CAS under way.
    plans: Vec<Option<Plan>>,
    /// Members whose disk has held data: none may be admitted again with empty data.
    used: BTreeSet<NodeId>,
    lease_clients: Vec<LeaseClient>,
    next_lease: i64,
    /// Per lease: until when a client was told it lives (its last acknowledged keep-alive's
    /// send time + TTL). No member may apply its revoke before then, but the client's own.
    validity: BTreeMap<i64, u64>,
    /// Leases revoked by their client: (id).
    client_revoked: BTreeSet<i64>,
}

fn digest(payload: &EntryPayload) -> u64 {
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

fn encode_command(cmd: Command) -> Bytes {
    let mut b = Vec::with_capacity(10);
    match cmd {
        Command::Put { key, value } => {
            b.push(0);
            b.push(key);
            b.extend_from_slice(&value.to_le_bytes());
        }
        Command::Txn { compares, puts } => {
            b.push(1);
            for pairs in [compares, puts] {
                b.push((pairs.0.len() / 9) as u8);
                b.extend_from_slice(pairs.0);
            }
        }
        Command::Join(id) => {
            b.push(2);
            b.extend_from_slice(&id.to_le_bytes());
        }
        Command::Marker => b.push(3),
        Command::LeaseGrant { id, ttl } => {
            b.push(4);
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&ttl.to_le_bytes());
        }
        Command::LeaseRevoke { id } => {
            b.push(5);
            b.extend_from_slice(&id.to_le_bytes());
        }
        Command::LeaseCheckpoint { id, remaining_ms } => {
            b.push(6);
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&remaining_ms.to_le_bytes());
        }
    }
    b.into()
}

fn encode_txn(compares: &[(u8, u64)], puts: &[(u8, u64)]) -> Bytes {
    let mut b = Vec::with_capacity(3 + 9 * (compares.len() + puts.len()));
    b.push(1);
    for list in [compares, puts] {
        b.push(list.len() as u8);
        for (k, x) in list {
            b.push(*k);
            b.extend_from_slice(&x.to_le_bytes());
        }
    }
    b.into()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn u64(&mut self) -> Option<u64> {
        let (bytes, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        self.u64().map(|v| v as i64)
    }

    fn pairs(&mut self) -> Option<Pairs<'a>> {
        let n = self.u8()? as usize;
        let (pairs, rest) = self.0.split_at_checked(n * 9)?;
        self.0 = rest;
        Some(Pairs(pairs))
    }
}

fn decode_command(data: &[u8]) -> Option<Command<'_>> {
    let mut r = Reader(data);
    let cmd = match r.u8()? {
        0 => Command::Put { key: r.u8()?, value: r.u64()? },
        1 => Command::Txn { compares: r.pairs()?, puts: r.pairs()? },
        2 => Command::Join(r.u64()?),
        3 => Command::Marker,
        4 => Command::LeaseGrant { id: r.i64()?, ttl: r.i64()? },
        5 => Command::LeaseRevoke { id: r.i64()? },
        6 => Command::LeaseCheckpoint { id: r.i64()?, remaining_ms: r.i64()? },
        _ => return None,
    };
    r.0.is_empty().then_some(cmd)
}

/// A snapshot's data: the store and the recorded joins.
type Image = (Store, BTreeSet<NodeId>);

fn encode_image(store: &Store, joined: &BTreeSet<NodeId>) -> Bytes {
    let mut b = Vec::new();
    b.extend_from_slice(&store.revision.to_le_bytes());
    b.extend_from_slice(&(store.keys.len() as u64).to_le_bytes());
    for (k, (value, modified)) in &store.keys {
        b.push(*k);
        b.extend_from_slice(&value.to_le_bytes());
        b.extend_from_slice(&modified.to_le_bytes());
    }
    b.extend_from_slice(&(store.leases.len() as u64).to_le_bytes());
    for (id, (ttl, remaining)) in &store.leases {
        for x in [id, ttl, remaining] {
            b.extend_from_slice(&x.to_le_bytes());
        }
    }
    for id in joined {
        b.extend_from_slice(&id.to_le_bytes());
    }
    b.into()
}

fn decode_image(data: &[u8]) -> Option<Image> {
    let mut r = Reader(data);
    let mut store = Store { revision: r.u64()?, keys: BTreeMap::new(), leases: BTreeMap::new() };
    for _ in 0..r.u64()?.min(256) {
        store.keys.insert(r.u8()?, (r.u64()?, r.u64()?));
    }
    for _ in 0..r.u64()?.min(1 << 20) {
        store.leases.insert(r.i64()?, (r.i64()?, r.i64()?));
    }
    let mut joined = BTreeSet::new();
    while !r.0.is_empty() {
        joined.insert(r.u64()?);
    }
    Some((store, joined))
}

/// The lessor's extension on promotion, as the node's (`RaftLoop::lease_extend_ms`): the
/// longest election timeout.
fn lease_extend_ms() -> u64 {
    u64::from(Config::new(1).election_timeout_max_ticks) * TICK_MS
}

fn url(id: NodeId) -> String {
    format!("n{id}")
}

type SimResult<T> = Result<T, String>;

impl Sim {
    fn new(seed: u64, trace: bool, bug: Option<Bug>) -> Sim {
        let mut rng = Rng::new(seed);
        let members = match rng.range(0, 10) {
            0..=1 => 1,
            2..=5 => 3,
            _ => 5,
        };
        let mut sim = Sim {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: BTreeMap::new(),
            next_id: members + 1,
            net: Net { drop: 0.0, duplicate: 0.0, min_delay: 1, max_delay: 10, blocked: BTreeSet::new() },
            clients_on: true,
            client_busy: vec![false; CLIENTS],
            next_value: 1,
            history: Vec::new(),
            open: Vec::new(),
            dropped: Vec::new(),
            hclock: 0,
            leaders: HashMap::new(),
            committed: HashMap::new(),
            commit_term: HashMap::new(),
            max_committed: 0,
            log_entries: HashMap::new(),
            trace,
            stats: Stats::default(),
            marker: None,
            marker_done: false,
            planted: match bug {
                Some(Bug::Raft(p)) => Some(p),
                _ => None,
            },
            bug,
            plans: vec![None; CLIENTS],
            used: BTreeSet::new(),
            lease_clients: vec![LeaseClient::default(); LEASE_CLIENTS],
            next_lease: 1,
            validity: BTreeMap::new(),
            client_revoked: BTreeSet::new(),
        };
        let voters: Vec<(NodeId, Bytes)> = (1..=members).map(|id| (id, Bytes::new())).collect();
        let initial = InitialState::bootstrap(&voters);
        for id in 1..=members {
            let disk = Disk::from_initial(&initial);
            sim.add_node(id, disk, initial.clone());
        }
        for c in 0..CLIENTS {
            let at = sim.rng.range(0, 100);
            sim.schedule(at, Event::Client(c));
        }
        for c in 0..LEASE_CLIENTS {
            let at = sim.rng.range(0, 300);
            sim.schedule(at, Event::LeaseClient(c));
        }
        sim.schedule(100, Event::Nemesis);
        sim.schedule(100, Event::Sweep);
        sim
    }

    fn config(&mut self, id: NodeId) -> Config {
        let mut cfg = Config::new(id);
        cfg.seed = self.rng.next_u64();
        cfg.max_inflight_msgs = self.rng.range(1, 8) as usize;
        // Often one entry per message, so that appends split and arrive partly.
        cfg.max_msg_bytes = self.rng.range(1, 100) as usize;
        cfg.planted = self.planted;
        cfg
    }

    fn add_node(&mut self, id: NodeId, disk: Disk, initial: InitialState) {
        let cfg = self.config(id);
        let raw = RawNode::new(Raft::new(cfg, initial).expect("valid simulator config"));
        let compact_every = self.rng.range(5, 60);
        self.nodes.insert(
            id,
            SimNode {
                raw: Some(raw),
                disk,
                store: Store::initial(),
                applied: 0,
                seen_commit: 0,
                writes: Vec::new(),
                reads: Vec::new(),
                placing: BTreeSet::new(),
                recent: VecDeque::new(),
                compact_every,
                joined: BTreeSet::new(),
                joining: None,
                lessor: self.new_lessor(),
                leading: None,
                lease_waits: Vec::new(),
                relayed: BTreeMap::new(),
                async_writes: false,
                disk_writes: VecDeque::new(),
            },
        );
        self.choose_writes(id);
        let phase = self.rng.range(1, TICK_MS + 1);
        self.schedule(phase, Event::Tick(id));
    }

    /// A member with empty data that must join before it starts (a new learner, or a member
    /// whose disk was lost).
    fn add_joiner(&mut self, id: NodeId) {
        self.add_node(id, Disk::default(), InitialState::default());
        if let Some(node) = self.nodes.get_mut(&id) {
            node.raw = None;
            node.joining = Some(Joining::default());
        }
        self.schedule(JOIN_EVERY_MS, Event::Join(id));
    }

    fn schedule(&mut self, after: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at: self.now + after, seq: self.seq, event }));
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>6}ms {}", self.now, what());
        }
    }

    fn live(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.raw.is_some()).map(|(id, _)| *id).collect()
    }

    fn crashed(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.raw.is_none() && n.joining.is_none()).map(|(id, _)| *id).collect()
    }

    /// The live leader with the highest term.
    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.raw.as_ref().map(|r| (*id, r)))
            .filter(|(_, r)| r.raft.role() == Role::Leader)
            .max_by_key(|(_, r)| r.raft.term())
            .map(|(id, _)| id)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.range(0, items.len() as u64) as usize])
        }
    }

    // ----- the event loop -----

    fn run_until(&mut self, end: u64, mut done: impl FnMut(&Sim) -> bool) -> SimResult<bool> {
        let mut steps = 0u64;
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > end {
                break;
            }
            steps += 1;
            if steps > 5_000_000 {
                return Err("event budget exhausted".into());
            }
            let Some(Reverse(item)) = self.queue.pop() else { break };
            self.now = item.at;
            self.stats.events += 1;
            self.handle(item.event)?;
            if done(self) {
                return Ok(true);
            }
        }
        self.now = self.now.max(end);
        Ok(false)
    }

    fn handle(&mut self, event: Event) -> SimResult<()> {
        match event {
            Event::Tick(id) => {
                if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
                    raw.tick();
                    self.process(id)?;
                    self.lease_duties(id)?;
                }
                if self.nodes.contains_key(&id) {
                    self.schedule(TICK_MS, Event::Tick(id));
                }
            }
            Event::Deliver(m) => {
                if self.net.blocked.contains(&(m.from, m.to)) {
                    return Ok(());
                }
                let to = m.to;
                if let Some(raw) = self.nodes.get_mut(&to).and_then(|n| n.raw.as_mut()) {
                    raw.step(m);
                    self.process(to)?;
                }
            }
            Event::Client(c) => self.client_op(c)?,
            Event::LeaseClient(c) => self.lease_client(c)?,
            Event::Nemesis => {
                self.nemesis()?;
                let after = self.rng.range(30, 400);
                self.schedule(after, Event::Nemesis);
            }
            Event::Sweep => {
                self.sweep();
                self.sweep_leases();
                self.schedule(100, Event::Sweep);
            }
            Event::ReadIndexAsked { leader, follower, op } => self.read_index_asked(leader, follower, op)?,
            Event::ReadIndexAnswered { follower, op, index } => self.read_index_answered(follower, op, index)?,
            Event::PlaceAsked { leader, follower, op, command } => self.place_asked(leader, follower, op, command)?,
            Event::Placed { follower, op, placed } => self.placed(follower, op, placed)?,
            Event::WriteDone(id, write) => self.write_done(id, write)?,
            Event::Join(id) => {
                self.join_step(id)?;
                if self.nodes.get(&id).is_some_and(|n| n.joining.is_some()) {
                    self.schedule(JOIN_EVERY_MS, Event::Join(id));
                }
            }
        }
        Ok(())
    }

    /// A request or answer between two members outside Raft (the peer port's
    /// `/raft/v1/read-index`): cut off, lost and delayed as Raft's messages are, never duplicated
    /// (a duplicate would be a second request).
    fn send_between(&mut self, from: NodeId, to: NodeId, event: Event) {
        if self.net.blocked.contains(&(from, to)) || self.rng.chance(self.net.drop) {
            return;
        }
        let delay = self.rng.range(self.net.min_delay, self.net.max_delay + 1);
        self.schedule(delay, event);
    }

    /// The leader starts a ReadIndex round for a follower's read; one that does not lead (any
    /// more) refuses it.
    fn read_index_asked(&mut self, leader: NodeId, follower: NodeId, op: usize) -> SimResult<()> {
        let ctx = FOLLOWER_CTX | op as u64;
        let Some(node) = self.nodes.get_mut(&leader) else { return Ok(()) };
        let Some(raw) = node.raw.as_mut() else { return Ok(()) };
        let started = raw.raft.read_index(ctx).is_ok();
        if started {
            node.relayed.insert(ctx, (follower, op));
        }
        if started {
            self.process(leader)
        } else {
            self.send_between(leader, follower, Event::ReadIndexAnswered { follower, op, index: None });
            Ok(())
        }
    }

    /// The follower has its read index: it serves the read once it applied that far. A refusal
    /// fails the read (nothing was read).
    fn read_index_answered(&mut self, follower: NodeId, op: usize, index: Option<Index>) -> SimResult<()> {
        let unapplied = self.bug == Some(Bug::FollowerReadsUnapplied);
        let Some(node) = self.nodes.get_mut(&follower) else { return Ok(()) };
        let Some(read) = node.reads.iter_mut().find(|r| r.op == op && r.index.is_none()) else { return Ok(()) };
        match index {
            Some(index) => {
                read.index = Some(if unapplied { 0 } else { index });
                self.serve_reads(follower)
            }
            None => {
                node.reads.retain(|r| r.op != op);
                self.fail_op(op);
                Ok(())
            }
        }
    }

    /// The leader appends a follower's write and answers where; one that does not lead (any
    /// more) refuses it. A leader that is down hears nothing, and the write's outcome is
    /// unknown when its client gives up.
    fn place_asked(&mut self, leader: NodeId, follower: NodeId, op: usize, command: Bytes) -> SimResult<()> {
        let Some(raw) = self.nodes.get_mut(&leader).and_then(|n| n.raw.as_mut()) else { return Ok(()) };
        let placed = raw.raft.propose(command).ok();
        self.send_between(leader, follower, Event::Placed { follower, op, placed });
        if placed.is_some() {
            self.process(leader)?;
        }
        Ok(())
    }

    /// The follower knows where its write was placed: it waits for its apply of that index, or
    /// has applied it already. A refusal fails the write (it was not proposed).
    fn placed(&mut self, follower: NodeId, op: usize, placed: Option<(Index, Term)>) -> SimResult<()> {
        let any_term = self.bug == Some(Bug::PlacedIgnoresTerm);
        let Some(node) = self.nodes.get_mut(&follower) else { return Ok(()) };
        // Not placing it: the member restarted since, or the client gave up.
        if node.raw.is_none() || !node.placing.remove(&op) {
            return Ok(());
        }
        let applied = node.applied;
        let kept = match placed {
            Some((index, term)) if index <= applied => {
                let found = node.recent.iter().find(|(i, _, _)| *i == index);
                Some(found.map(|(_, t, output)| (*t == term || any_term, output.clone())))
            }
            Some((index, term)) => {
                node.writes.push(PendingWrite { op, index, term, placed: true });
                None
            }
            None => Some(Some((false, None))),
        };
        if node.placing.is_empty() {
            node.recent.clear();
        }
        match kept {
            None => {}
            Some(None) => self.unknown_op(op),
            Some(Some((true, output))) => {
                let output = output.ok_or_else(|| format!("n{follower}: a placed write's entry is no write"))?;
                self.complete_op(op, output);
            }
            Some(Some((false, _))) => self.fail_op(op),
        }
        Ok(())
    }

    fn send(&mut self, m: Message) {
        if self.net.blocked.contains(&(m.from, m.to)) || self.rng.chance(self.net.drop) {
            return;
        }
        if self.rng.chance(self.net.duplicate) {
            let delay = self.rng.range(self.net.min_delay, self.net.max_delay + 1);
            self.schedule(delay, Event::Deliver(m.clone()));
        }
        let delay = self.rng.range(self.net.min_delay, self.net.max_delay + 1);
        self.schedule(delay, Event::Deliver(m));
    }

    /// Runs a member's Ready loop: persist, send, apply, advance — checking invariants.
    fn process(&mut self, id: NodeId) -> SimResult<()> {
        for _ in 0..1000 {
            self.lease_role(id);
            let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
            let Some(raw) = node.raw.as_mut() else { return Ok(()) };
            // Disks here lose nothing synced, and a member whose disk is lost never runs again
            // under its id; so no member may find that data it acknowledged is gone. (The
            // planted vote-from-empty-log run starts a wiped member under its old id on purpose.)
            if let Some(loss) = raw.raft.data_lost() {
                if self.planted != Some(PlantedBug::VoteFromEmptyLog) {
                    return Err(format!(
                        "data loss: n{id} reports its data lost ({loss:?}), but its disk kept all it wrote"
                    ));
                }
            }
            if !raw.has_ready() {
                return Ok(());
            }
            let mut rd = raw.ready();
            let async_writes = node.async_writes;
            let term = raw.raft.term();
            let leading = raw.raft.role() == Role::Leader;
            if let Some(ss) = rd.soft_state {
                if ss.role == Role::Leader {
                    self.stats.elections += 1;
                    self.log(|| format!("n{id} leader of term {term}"));
                    self.check_new_leader(id, term)?;
                }
            }
            let checks = self.appended_checks(id, &rd.entries);
            // A leader sends its appends while it writes them (thesis §10.2.1), as the node does;
            // sometimes it crashes between the two, losing entries its followers may have.
            if leading || !rd.messages.is_empty() {
                for m in std::mem::take(&mut rd.messages) {
                    self.check_send(&m)?;
                    self.send(m);
                }
                if self.clients_on && !async_writes && !rd.entries.is_empty() && self.rng.chance(0.005) {
                    self.log(|| format!("n{id} crashes after sending, before persisting"));
                    self.crash(id);
                    return Ok(());
                }
            }
            if async_writes {
                // As the node: the state machine takes a snapshot before it is written.
                if let Some(snapshot) = &rd.snapshot {
                    self.install_snapshot(id, snapshot)?;
                }
                self.start_write(id, &mut rd, checks)?;
            } else {
                self.check_appended(id, checks)?;
                self.write_to_disk(id, &rd)?;
                for m in std::mem::take(&mut rd.persisted_messages) {
                    self.check_send(&m)?;
                    self.send(m);
                }
                if let Some(snapshot) = &rd.snapshot {
                    self.install_snapshot(id, snapshot)?;
                }
            }
            for entry in &rd.committed_entries {
                self.apply(id, entry)?;
            }
            let node = self.nodes.get_mut(&id).ok_or("node vanished")?;
            let mut answers = Vec::new();
            for ctx in &rd.aborted_reads {
                if let Some((follower, op)) = node.relayed.remove(ctx) {
                    answers.push((follower, op, None));
                }
            }
            for rs in &rd.read_states {
                if let Some((follower, op)) = node.relayed.remove(&rs.ctx) {
                    answers.push((follower, op, Some(rs.index)));
                }
                if let Some(r) = node.reads.iter_mut().find(|r| r.op as u64 == rs.ctx) {
                    r.index = Some(rs.index);
                }
                for w in &mut node.lease_waits {
                    if let LeaseStep::Confirm(ctx, index) = &mut w.step {
                        if *ctx == rs.ctx {
                            *index = Some(rs.index);
                        }
                    }
                }
            }
            let aborted: Vec<usize> =
                rd.aborted_reads.iter().filter(|c| **c < LEASE_CTX).map(|c| *c as usize).collect();
            node.reads.retain(|r| !aborted.contains(&r.op));
            let mut lease_aborted = Vec::new();
            node.lease_waits.retain(|w| match w.step {
                LeaseStep::Confirm(ctx, _) if rd.aborted_reads.contains(&ctx) => {
                    lease_aborted.push(w.client);
                    false
                }
                _ => true,
            });
            let Some(raw) = node.raw.as_mut() else { return Ok(()) };
            if async_writes {
                raw.advance_apply();
            } else {
                raw.advance();
            }
            for (follower, op, index) in answers {
                self.send_between(id, follower, Event::ReadIndexAnswered { follower, op, index });
            }
            for op in aborted {
                self.fail_op(op);
            }
            for client in lease_aborted {
                self.lease_done(client);
            }
            self.lease_role(id);
            self.serve_reads(id)?;
            self.serve_keep_alives(id)?;
            self.record_commits(id)?;
            self.maybe_compact(id);
        }
        Err(format!("n{id}: Ready loop did not settle"))
    }

    /// Half the incarnations of members write asynchronously.
    fn choose_writes(&mut self, id: NodeId) {
        let on = self.rng.chance(0.5);
        let Some(node) = self.nodes.get_mut(&id) else { return };
        node.async_writes = on;
        if let Some(raw) = node.raw.as_mut() {
            raw.set_async_writes(on);
        }
    }

    /// Makes a Ready's hard state, snapshot and entries durable, checking that durable state
    /// never goes backwards.
    fn write_to_disk(&mut self, id: NodeId, rd: &Ready) -> SimResult<()> {
        let node = self.nodes.get_mut(&id).ok_or("node vanished")?;
        let old = node.disk.hard_state;
        if !node.disk.persist(rd) {
            return Err(format!("n{id}: asked to persist entries that leave a gap in the log"));
        }
        let new = node.disk.hard_state;
        if new.term < old.term
            || new.commit < old.commit
            || (new.term == old.term && old.vote.is_some() && new.vote != old.vote)
        {
            return Err(format!("n{id}: durable state went backwards: {old:?} -> {new:?}"));
        }
        if !node.disk.entries.is_empty() || node.disk.snapshot.is_some() || node.disk.hard_state.term > 0 {
            self.used.insert(id);
        }
        Ok(())
    }

    /// An asynchronous member starts a Ready's write; it completes after a random delay, in
    /// order with the others (`write_done`). A Ready with nothing to write still waits behind
    /// the writes under way: its messages may promise what they make durable.
    fn start_write(&mut self, id: NodeId, rd: &mut Ready, checks: Vec<AppendCheck>) -> SimResult<()> {
        let write = Ready {
            number: rd.number,
            hard_state: rd.hard_state.take(),
            snapshot: rd.snapshot.take(),
            entries: std::mem::take(&mut rd.entries),
            persisted_messages: std::mem::take(&mut rd.persisted_messages),
            ..Ready::default()
        };
        let empty = write.hard_state.is_none() && write.snapshot.is_none() && write.entries.is_empty();
        let node = self.nodes.get_mut(&id).ok_or("node vanished")?;
        if empty && node.disk_writes.is_empty() {
            if let Some(raw) = node.raw.as_mut() {
                raw.persisted(write.number);
            }
            for m in write.persisted_messages {
                self.check_send(&m)?;
                self.send(m);
            }
            return Ok(());
        }
        self.seq += 1;
        let write_id = self.seq;
        node.disk_writes.push_back(DiskWrite { id: write_id, ready: write, checks });
        let delay = self.rng.range(0, MAX_WRITE_DELAY_MS + 1);
        self.schedule(delay, Event::WriteDone(id, write_id));
        Ok(())
    }

    /// The writes of an asynchronous member up to `write` complete, oldest first; sometimes it
    /// crashes before one does, losing it and every later one.
    fn write_done(&mut self, id: NodeId, write: u64) -> SimResult<()> {
        for _ in 0..10_000 {
            let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
            if node.raw.is_none() || node.disk_writes.front().is_none_or(|w| w.id > write) {
                break;
            }
            if self.clients_on && self.rng.chance(0.003) {
                self.log(|| format!("n{id} crashes while writing"));
                self.crash(id);
                return Ok(());
            }
            let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
            let Some(done) = node.disk_writes.pop_front() else { break };
            self.check_appended(id, done.checks)?;
            self.write_to_disk(id, &done.ready)?;
            if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
                raw.persisted(done.ready.number);
            }
            for m in done.ready.persisted_messages {
                self.check_send(&m)?;
                self.send(m);
            }
        }
        self.process(id)
    }

    fn install_snapshot(&mut self, id: NodeId, snapshot: &Snapshot) -> SimResult<()> {
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        if let Some((t, _)) = self.committed.get(&index) {
            if *t != term {
                return Err(format!("n{id}: snapshot at {index} has term {term}, committed entry has {t}"));
            }
        }
        let (store, joined) = decode_image(&snapshot.data).ok_or("undecodable snapshot")?;
        let node = self.nodes.get_mut(&id).ok_or("node vanished")?;
        if index < node.applied {
            return Err(format!("n{id}: snapshot at {index} behind applied {}", node.applied));
        }
        node.store = store;
        node.joined = joined;
        node.applied = index;
        let leases = node.store.lease_list();
        node.lessor.load(&leases, self.now, lease_extend_ms());
        node.seen_commit = node.seen_commit.max(index);
        // Writes waiting here that the snapshot passes may be in it or not (`RaftLoop::install`).
        let (waiting, passed): (Vec<_>, Vec<_>) =
            std::mem::take(&mut node.writes).into_iter().partition(|w| w.index > index);
        node.writes = waiting;
        self.stats.snapshots_installed += 1;
        self.log(|| format!("n{id} installed snapshot at {index}"));
        for w in passed {
            self.unknown_op(w.op);
        }
        Ok(())
    }

    /// State machine safety: every member applies the same entry at each index, in order.
    fn apply(&mut self, id: NodeId, entry: &Entry) -> SimResult<()> {
        let node = self.nodes.get_mut(&id).ok_or("node vanished")?;
        if entry.index != node.applied + 1 {
            return Err(format!("n{id}: applied {} after {}", entry.index, node.applied));
        }
        let d = digest(&entry.payload);
        match self.committed.get(&entry.index) {
            Some(&(t, h)) if (t, h) != (entry.term, d) => {
                return Err(format!(
                    "state machine safety: n{id} applied {entry:?} but ({t}, {h:x}) was committed there"
                ));
            }
            _ => {}
        }
        self.committed.insert(entry.index, (entry.term, d));
        if let Some(observed_in) = node.raw.as_ref().map(|r| r.raft.term()) {
            let t = self.commit_term.entry(entry.index).or_insert(observed_in);
            *t = (*t).min(observed_in);
        }
        let first = entry.index > self.max_committed;
        self.max_committed = self.max_committed.max(entry.index);
        node.applied = entry.index;
        let mut claim = None;
        // What a client's write at this index is told.
        let mut result = None;
        // A lease revoked at this index (its client's, or an expiry).
        let mut revoked = None;
        match &entry.payload {
            EntryPayload::Command(data) => match decode_command(data).ok_or("undecodable command")? {
                Command::Join(claimed) => {
                    // The node's state machine rule for `Command::Join`.
                    let conf = node.raw.as_ref().map(|r| r.raft.conf_at(entry.index)).unwrap_or_default();
                    let state = MemberState {
                        voter: conf.voters.contains(&claimed),
                        learner: conf.learners.contains(&claimed),
                        joined: node.joined.contains(&claimed),
                        removed: false,
                    };
                    let outcome = check_claim(claimed, state).map_err(|r| (r.data_lost, r.reason));
                    if outcome.is_ok() {
                        node.joined.insert(claimed);
                    }
                    claim = Some(outcome);
                }
                Command::Put { key, value } => result = Some(node.store.put(key, value)),
                Command::Txn { compares, puts } => result = Some(node.store.txn(compares, puts, self.bug)),
                Command::Marker => {}
                // The node's state machine rules for leases (`store::mvcc` engine) and what the
                // Raft loop tells its lessor (`RaftLoop::note_lease`).
                Command::LeaseGrant { id: lease, ttl } => {
                    if let std::collections::btree_map::Entry::Vacant(e) = node.store.leases.entry(lease) {
                        e.insert((ttl, 0));
                        node.lessor.granted(lease, ttl, self.now);
                    }
                }
                Command::LeaseRevoke { id: lease } => {
                    if node.store.leases.remove(&lease).is_some() {
                        node.lessor.revoked(lease);
                        revoked = Some(lease);
                    }
                }
                Command::LeaseCheckpoint { id: lease, remaining_ms } => {
                    if let Some((_, remaining)) = node.store.leases.get_mut(&lease) {
                        *remaining = remaining_ms.max(0);
                        node.lessor.checkpointed(lease, remaining_ms);
                    }
                }
            },
            EntryPayload::ConfChange(cc) if cc.kind == ConfChangeKind::Remove => {
                node.joined.remove(&cc.node_id);
            }
            _ => {}
        }
        if first && self.trace {
            if let EntryPayload::Command(data) = &entry.payload {
                let command = decode_command(data);
                self.log(|| format!("n{id} applies {} first: {command:?} -> {result:?}", entry.index));
            }
        }
        if let Some(outcome) = claim {
            // Tell the member whose join this leader recorded.
            for joiner in self.nodes.values_mut() {
                if let Some(j) = joiner.joining.as_mut() {
                    if j.claim.is_some_and(|(l, i, t, _)| (l, i, t) == (id, entry.index, entry.term)) {
                        j.outcome = Some(outcome.clone());
                    }
                }
            }
        }
        if let Some(lease) = revoked {
            // Lease safety: an expiry never comes before the validity its client was told.
            let told = self.validity.get(&lease).copied().unwrap_or(0);
            if !self.client_revoked.contains(&lease) {
                if told > self.now {
                    return Err(format!(
                        "lease safety: lease {lease} expired early: n{id} applied its revoke at {} ms, but a keep-alive \
                         told its client it lives until {told} ms",
                        self.now
                    ));
                }
                if first {
                    self.stats.leases_expired += 1;
                }
            }
        }
        self.lease_applied(id, entry)?;
        let node = self.nodes.get_mut(&id).ok_or("node vanished")?;
        // Complete (or fail) the write proposed at this index on this member.
        let mut finished = Vec::new();
        let any_term = self.bug == Some(Bug::PlacedIgnoresTerm);
        node.writes.retain(|w| {
            if w.index == entry.index {
                finished.push((w.op, w.term == entry.term || (w.placed && any_term)));
                false
            } else {
                true
            }
        });
        if !node.placing.is_empty() {
            if node.recent.len() == RECENT {
                node.recent.pop_front();
            }
            node.recent.push_back((entry.index, entry.term, result.clone()));
        }
        for (op, ok) in finished {
            if ok {
                let output =
                    result.clone().ok_or_else(|| format!("n{id}: a client's write at {} is no write", entry.index))?;
                self.complete_op(op, output);
            } else {
                self.fail_op(op);
            }
        }
        if let Some((n, index, term)) = self.marker {
            if n == id && index == entry.index {
                self.marker = None;
                self.marker_done = term == entry.term;
            }
        }
        Ok(())
    }

    /// Answers the reads whose read index this member has applied; a read-all of the accounts
    /// must see their conserved total.
    fn serve_reads(&mut self, id: NodeId) -> SimResult<()> {
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        let applied = node.applied;
        let mut done = Vec::new();
        node.reads.retain(|r| match r.index {
            Some(index) if index <= applied => {
                done.push((r.op, r.keys == ACCOUNTS, node.store.read(&r.keys)));
                false
            }
            _ => true,
        });
        for (op, all, output) in done {
            if let (true, StoreOutput::Read { revision, kvs }) = (all, &output) {
                let total: u64 = kvs.iter().map(|kv| kv.map_or(0, |(value, _)| value)).sum();
                let expected = OPENING_BALANCE * ACCOUNTS.len() as u64;
                if total != expected {
                    return Err(format!(
                        "conserved total: n{id} answered a read-all of the accounts at revision {revision} with \
                         {kvs:?}: total {total}, not {expected}"
                    ));
                }
            }
            self.complete_op(op, output);
        }
        Ok(())
    }

    /// Monotonic commit, and the record of committed entries.
    fn record_commits(&mut self, id: NodeId) -> SimResult<()> {
        let node = self.nodes.get_mut(&id).ok_or("node vanished")?;
        let Some(raw) = node.raw.as_ref() else { return Ok(()) };
        let commit = raw.raft.commit_index();
        if commit < node.seen_commit {
            return Err(format!("n{id}: commit index went back from {} to {commit}", node.seen_commit));
        }
        let mut fresh = Vec::new();
        for index in (node.seen_commit + 1)..=commit {
            if let Some(e) = raw.raft.log().entry(index) {
                fresh.push((index, e.term, digest(&e.payload)));
            }
        }
        node.seen_commit = commit;
        let observed_in = raw.raft.term();
        for (index, term, d) in fresh {
            let t = self.commit_term.entry(index).or_insert(observed_in);
            *t = (*t).min(observed_in);
            if let Some(&(t, h)) = self.committed.get(&index) {
                if (t, h) != (term, d) {
                    return Err(format!("n{id} committed ({index}, {term}) where ({index}, {t}) was committed"));
                }
            }
            self.committed.insert(index, (term, d));
            self.max_committed = self.max_committed.max(index);
        }
        Ok(())
    }

    /// Log matching: an entry with a given index and term has the same payload everywhere and
    /// the same predecessor term, so logs that share an entry share all that precedes it.
    /// What log matching checks of entries a member appends: each one's digest and the term of
    /// the entry before it, as its log holds them now.
    fn appended_checks(&self, id: NodeId, entries: &[Entry]) -> Vec<AppendCheck> {
        let Some(raw) = self.nodes.get(&id).and_then(|n| n.raw.as_ref()) else { return Vec::new() };
        let log = raw.raft.log();
        let mut checks = Vec::with_capacity(entries.len());
        for e in entries {
            let prev = if e.index > 1 { log.term(e.index - 1) } else { Some(0) };
            checks.push(((e.index, e.term), (digest(&e.payload), prev)));
        }
        checks
    }

    /// Log matching: entries made durable by any member agree on (index, term) -> content and
    /// previous term. An asynchronous member's entries count once their write completes: a
    /// leader that loses its unwritten term in a crash may win that term again with other
    /// entries, and nobody saw the lost ones (its messages wait for the write).
    fn check_appended(&mut self, id: NodeId, checks: Vec<AppendCheck>) -> SimResult<()> {
        for (key, (d, prev)) in checks {
            match self.log_entries.get(&key) {
                Some(&(d0, prev0)) => {
                    if d0 != d || (prev.is_some() && prev0.is_some() && prev != prev0) {
                        return Err(format!("log matching: n{id} holds {key:?} differing from another member's"));
                    }
                    if prev0.is_none() && prev.is_some() {
                        self.log_entries.insert(key, (d, prev));
                    }
                }
                None => {
                    self.log_entries.insert(key, (d, prev));
                }
            }
        }
        Ok(())
    }

    /// Election safety (one leader per term) and leader completeness (§5.4: a leader holds
    /// every entry committed in an earlier term).
    fn check_new_leader(&mut self, id: NodeId, term: Term) -> SimResult<()> {
        if let Some(other) = self.leaders.insert(term, id) {
            if other != id {
                return Err(format!("election safety: n{other} and n{id} both leaders of term {term}"));
            }
        }
        self.check_completeness(id)
    }

    fn check_completeness(&self, id: NodeId) -> SimResult<()> {
        let Some(raw) = self.nodes.get(&id).and_then(|n| n.raw.as_ref()) else { return Ok(()) };
        let log = raw.raft.log();
        let base = log.base().index;
        let leader_term = raw.raft.term();
        for index in base..=self.max_committed {
            let Some(&(term, d)) = self.committed.get(&index) else { continue };
            if self.commit_term.get(&index).is_some_and(|t| *t >= leader_term) {
                continue;
            }
            let ok = if index == base {
                log.term(index) == Some(term)
            } else {
                log.entry(index).is_some_and(|e| e.term == term && digest(&e.payload) == d)
            };
            if !ok {
                return Err(format!(
                    "leader completeness: n{id} (term {}) lacks committed entry {index} of term {term}",
                    raw.raft.term()
                ));
            }
        }
        Ok(())
    }

    fn maybe_compact(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let Some(raw) = node.raw.as_mut() else { return };
        let base = raw.raft.log().base().index;
        if raw.raft.applied_index() >= base + node.compact_every {
            if let Ok(meta) = raw.raft.compact(encode_image(&node.store, &node.joined)) {
                let data = encode_image(&node.store, &node.joined);
                node.disk.compact(Snapshot { meta, data });
            }
        }
    }

    // ----- clients -----

    fn clock(&mut self) -> u64 {
        self.hclock += 1;
        self.hclock
    }

    /// A client's next operation: a put, a get, a read-all of the accounts, or the first or
    /// second step of a transfer or CAS (etcd-style: read the keys with their mod revisions,
    /// then a txn that compares them and puts the new values).
    fn next_input(&mut self, client: usize) -> StoreInput<u8> {
        if let Some(Plan::Txn(txn)) = self.plans[client].take() {
            return txn;
        }
        let op = self.history.len();
        match self.rng.range(0, 100) {
            0..=24 => {
                let key = self.rng.range(0, KEYS as u64) as u8;
                self.next_value += 1;
                StoreInput::Put { key, value: self.next_value }
            }
            25..=44 => {
                let n = KEYS as u64 + ACCOUNTS.len() as u64;
                let i = self.rng.range(0, n);
                let key = if i < KEYS as u64 { i as u8 } else { ACCOUNTS[(i - KEYS as u64) as usize] };
                StoreInput::Read { keys: vec![key] }
            }
            45..=59 => StoreInput::Read { keys: ACCOUNTS.to_vec() },
            60..=84 => {
                let from = self.rng.range(0, ACCOUNTS.len() as u64) as usize;
                let to = (from + self.rng.range(1, ACCOUNTS.len() as u64) as usize) % ACCOUNTS.len();
                self.plans[client] = Some(Plan::Transfer { read: op });
                StoreInput::Read { keys: vec![ACCOUNTS[from], ACCOUNTS[to]] }
            }
            _ => {
                let key = self.rng.range(0, KEYS as u64) as u8;
                self.plans[client] = Some(Plan::Cas { read: op });
                StoreInput::Read { keys: vec![key] }
            }
        }
    }

    /// After the read of a transfer or CAS: the txn it sends next.
    fn plan_txn(&mut self, client: usize, op: usize) {
        let (Some(plan), Some(StoreOutput::Read { kvs, .. })) = (&self.plans[client], &self.history[op].output) else {
            return;
        };
        let StoreInput::Read { keys } = &self.history[op].input else { return };
        let seen = |i: usize| kvs.get(i).copied().flatten().unwrap_or((0, 0));
        let txn = match plan {
            Plan::Transfer { read } if *read == op => {
                let (a, b) = (seen(0), seen(1));
                // From the richer account, so that a transfer always moves something.
                let (from, to, (fv, fm), (tv, tm)) =
                    if a.0 >= b.0 { (keys[0], keys[1], a, b) } else { (keys[1], keys[0], b, a) };
                if fv == 0 {
                    self.plans[client] = None;
                    return;
                }
                let amount = self.rng.range(1, fv + 1);
                StoreInput::Txn {
                    compares: vec![(from, fm), (to, tm)],
                    puts: vec![(from, fv - amount), (to, tv + amount)],
                }
            }
            Plan::Cas { read } if *read == op => {
                self.next_value += 1;
                StoreInput::Txn { compares: vec![(keys[0], seen(0).1)], puts: vec![(keys[0], self.next_value)] }
            }
            _ => return,
        };
        self.plans[client] = Some(Plan::Txn(txn));
    }

    /// Where a client sends its next request: a leader (any of them, stale ones too) four times
    /// in five when there is one, otherwise any live member.
    fn client_target(&mut self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raw.as_ref().is_some_and(|r| r.raft.role() == Role::Leader))
            .map(|(id, _)| *id)
            .collect();
        if !leaders.is_empty() && self.rng.chance(0.8) {
            self.pick(&leaders)
        } else {
            self.pick(&self.live())
        }
    }

    fn client_op(&mut self, client: usize) -> SimResult<()> {
        if !self.clients_on || self.client_busy[client] {
            return Ok(());
        }
        let target = self.client_target();
        let op = self.history.len();
        let input = self.next_input(client);
        let stale = self.bug == Some(Bug::StaleReadAll);
        let id = target.unwrap_or_default();
        let accepted = match self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
            None => false,
            Some(raw) => {
                let command = match &input {
                    StoreInput::Put { key, value } => Some(encode_command(Command::Put { key: *key, value: *value })),
                    StoreInput::Txn { compares, puts } => Some(encode_txn(compares, puts)),
                    StoreInput::Read { .. } => None,
                };
                let leader = raw.raft.leader().filter(|l| *l != id && raw.raft.role() != Role::Leader);
                match (command, leader) {
                    (Some(command), Some(leader)) => {
                        // A follower asks its leader to place the write.
                        self.nodes.get_mut(&id).ok_or("node vanished")?.placing.insert(op);
                        self.stats.follower_writes += 1;
                        self.send_between(id, leader, Event::PlaceAsked { leader, follower: id, op, command });
                        true
                    }
                    (Some(command), None) => match raw.raft.propose(command) {
                        Ok((index, term)) => {
                            self.nodes.get_mut(&id).ok_or("node vanished")?.writes.push(PendingWrite {
                                op,
                                index,
                                term,
                                placed: false,
                            });
                            true
                        }
                        Err(_) => false,
                    },
                    (None, leader) => {
                        let StoreInput::Read { keys } = &input else { return Err("not a read".into()) };
                        // The planted stale read: answered from what this member has applied.
                        let index = if stale && keys == &ACCOUNTS { Some(0) } else { None };
                        if let (None, Some(leader)) = (index, leader) {
                            // A follower asks its leader for the read index.
                            let read = PendingRead { op, keys: keys.clone(), index: None };
                            self.nodes.get_mut(&id).ok_or("node vanished")?.reads.push(read);
                            self.stats.follower_reads += 1;
                            self.send_between(id, leader, Event::ReadIndexAsked { leader, follower: id, op });
                            true
                        } else if index.is_some() || raw.raft.read_index(op as u64).is_ok() {
                            let read = PendingRead { op, keys: keys.clone(), index };
                            self.nodes.get_mut(&id).ok_or("node vanished")?.reads.push(read);
                            true
                        } else {
                            false
                        }
                    }
                }
            }
        };
        if accepted {
            let call = self.clock();
            self.history.push(Op { client: client as u64, input, output: None, call, ret: None });
            self.open.push(Some(self.now + OP_TIMEOUT_MS));
            self.dropped.push(false);
            self.client_busy[client] = true;
            self.process(id)?;
            self.serve_reads(id)?;
        } else {
            // A txn waits to be sent again; a transfer or CAS whose read was not sent is dropped.
            self.plans[client] = match (input, self.plans[client].take()) {
                (txn @ StoreInput::Txn { .. }, _) => Some(Plan::Txn(txn)),
                _ => None,
            };
            let after = self.rng.range(5, 30);
            self.schedule(after, Event::Client(client));
        }
        Ok(())
    }

    fn finish(&mut self, op: usize) -> bool {
        if self.open.get(op).copied().flatten().is_none() {
            return false;
        }
        self.open[op] = None;
        let client = self.history[op].client as usize;
        self.client_busy[client] = false;
        let after = self.rng.range(0, 30);
        self.schedule(after, Event::Client(client));
        true
    }

    fn complete_op(&mut self, op: usize, output: StoreOutput) {
        if self.finish(op) {
            let t = self.clock();
            self.history[op].output = Some(output);
            self.history[op].ret = Some(t);
            self.plan_txn(self.history[op].client as usize, op);
        }
    }

    /// The operation certainly did not take effect: it leaves the history.
    fn fail_op(&mut self, op: usize) {
        if self.finish(op) {
            self.dropped[op] = true;
            self.drop_plan(op);
        }
    }

    /// The outcome is unknown: a write may have happened or not; a read is dropped.
    fn unknown_op(&mut self, op: usize) {
        if self.finish(op) {
            self.stats.unknown += 1;
            self.history[op].ret = None;
            self.history[op].output = None;
            // A read without an answer had no effect and tells nothing.
            self.dropped[op] = matches!(self.history[op].input, StoreInput::Read { .. });
            self.drop_plan(op);
        }
    }

    /// A transfer or CAS whose read got no answer is given up.
    fn drop_plan(&mut self, op: usize) {
        let client = self.history[op].client as usize;
        if matches!(self.plans[client], Some(Plan::Transfer { read } | Plan::Cas { read }) if read == op) {
            self.plans[client] = None;
        }
    }

    /// Times out operations past their deadline.
    fn sweep(&mut self) {
        let overdue: Vec<usize> =
            (0..self.history.len()).filter(|op| self.open[*op].is_some_and(|deadline| deadline <= self.now)).collect();
        for op in overdue {
            for node in self.nodes.values_mut() {
                node.writes.retain(|w| w.op != op);
                node.reads.retain(|r| r.op != op);
                node.placing.remove(&op);
                if node.placing.is_empty() {
                    node.recent.clear();
                }
            }
            self.unknown_op(op);
        }
    }

    // ----- leases -----

    fn lease_bug(&self) -> Option<LeaseBug> {
        match self.bug {
            Some(Bug::Lease(b)) => Some(b),
            _ => None,
        }
    }

    fn new_lessor(&self) -> Lessor {
        let mut lessor = Lessor::new(LEASE_CHECKPOINT_MS);
        lessor.planted = self.lease_bug();
        lessor
    }

    /// The node's rule (`RaftLoop::publish`): the lessor is promoted while the member leads and
    /// has applied an entry of its term, demoted otherwise.
    fn lease_role(&mut self, id: NodeId) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let leads = node.raw.as_ref().and_then(|raw| node.lessor.primary_term(&raw.raft));
        if leads != node.leading {
            if self.trace {
                println!("{now:>6}ms n{id} lessor {}", if leads.is_some() { "promoted" } else { "demoted" });
            }
            match leads {
                Some(_) => node.lessor.promote(now, lease_extend_ms()),
                None => node.lessor.demote(),
            }
            node.leading = leads;
        }
    }

    /// The leader's lease duties (`RaftLoop::lease_tick`): propose the revokes of expired
    /// leases and the checkpoints that are due.
    fn lease_duties(&mut self, id: NodeId) -> SimResult<()> {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        if node.leading.is_none() {
            return Ok(());
        }
        let expired = node.lessor.expired(now, 100);
        let due = node.lessor.checkpoints_due(now, 100);
        let mut proposed = false;
        if !expired.is_empty() {
            self.log(|| format!("n{id} proposes the expiry of {expired:?}"));
        }
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        let Some(raw) = node.raw.as_mut() else { return Ok(()) };
        for lease in expired {
            if raw.raft.propose(encode_command(Command::LeaseRevoke { id: lease })).is_ok() {
                node.lessor.revoke_proposed(lease, now);
                proposed = true;
            }
        }
        for (lease, remaining_ms) in due {
            proposed |= raw.raft.propose(encode_command(Command::LeaseCheckpoint { id: lease, remaining_ms })).is_ok();
            self.stats.checkpoints += 1;
        }
        if proposed {
            self.process(id)?;
        }
        Ok(())
    }

    /// A lease client's next request: a grant when it holds no lease; otherwise mostly a
    /// keep-alive, sometimes a revoke, and sometimes it walks away from its lease (stops
    /// renewing without revoking: the leader must expire it).
    fn lease_client(&mut self, client: usize) -> SimResult<()> {
        if !self.clients_on || self.lease_clients[client].busy.is_some() {
            return Ok(());
        }
        let target = self.client_target();
        let sent = self.now;
        let held = self.lease_clients[client].lease;
        let choice = self.rng.range(0, 100);
        if held.is_some() && choice < 4 {
            self.lease_clients[client].lease = None;
            self.stats.leases_abandoned += 1;
            self.log(|| format!("lease client {client} walks away from lease {held:?}"));
            return self.lease_retry(client);
        }
        let lease = match held {
            Some(lease) => lease,
            None => {
                self.next_lease += 1;
                self.next_lease
            }
        };
        self.seq += 1;
        let ctx = LEASE_CTX + self.seq;
        let id = target.unwrap_or_default();
        let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) else { return self.lease_retry(client) };
        let step = match held {
            None => raw
                .raft
                .propose(encode_command(Command::LeaseGrant { id: lease, ttl: LEASE_TTL_S }))
                .ok()
                .map(|(i, t)| LeaseStep::Grant(i, t)),
            Some(_) if choice < 8 => raw
                .raft
                .propose(encode_command(Command::LeaseRevoke { id: lease }))
                .ok()
                .map(|(i, t)| LeaseStep::Revoke(i, t)),
            Some(_) => raw.raft.read_index(ctx).ok().map(|_| LeaseStep::Confirm(ctx, None)),
        };
        let Some(step) = step else { return self.lease_retry(client) };
        if matches!(step, LeaseStep::Revoke(..)) {
            // The client no longer counts on this lease: its revoke may apply at any time.
            self.client_revoked.insert(lease);
        }
        let node = self.nodes.get_mut(&id).ok_or("node vanished")?;
        node.lease_waits.push(LeaseWait { client, lease, sent, step });
        self.lease_clients[client].busy = Some(self.now + OP_TIMEOUT_MS);
        self.process(id)?;
        self.serve_keep_alives(id)
    }

    fn lease_retry(&mut self, client: usize) -> SimResult<()> {
        let after = self.rng.range(5, 30);
        self.schedule(after, Event::LeaseClient(client));
        Ok(())
    }

    /// A request of lease client `client` ended: its next comes after a pause, usually a third
    /// of the TTL or less, sometimes longer than the TTL.
    fn lease_done(&mut self, client: usize) {
        if self.lease_clients[client].busy.take().is_none() {
            return;
        }
        let ttl_ms = LEASE_TTL_S as u64 * 1000;
        let after =
            if self.rng.chance(0.05) { self.rng.range(ttl_ms, 2 * ttl_ms) } else { self.rng.range(10, ttl_ms / 3) };
        self.schedule(after, Event::LeaseClient(client));
    }

    /// A keep-alive acknowledged to its client: it counts its lease valid until the request's
    /// send time + TTL (what a careful client assumes).
    fn lease_acked(&mut self, w: &LeaseWait) {
        let until = w.sent + LEASE_TTL_S as u64 * 1000;
        self.log(|| format!("lease client {} told lease {} lives until {until} ms ({:?})", w.client, w.lease, w.step));
        let v = self.validity.entry(w.lease).or_insert(0);
        *v = (*v).max(until);
        self.lease_clients[w.client].lease = Some(w.lease);
        self.lease_done(w.client);
    }

    /// The keep-alives whose leadership check this member has applied past: renewed now
    /// (`NodeHandle::lease_keep_alive`), answered at once or after the clearing of a checkpoint.
    fn serve_keep_alives(&mut self, id: NodeId) -> SimResult<()> {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        let applied = node.applied;
        let ready: Vec<LeaseWait> = node
            .lease_waits
            .iter()
            .filter(|w| matches!(w.step, LeaseStep::Confirm(_, Some(index)) if index <= applied))
            .cloned()
            .collect();
        node.lease_waits.retain(|w| !matches!(w.step, LeaseStep::Confirm(_, Some(index)) if index <= applied));
        let mut clear = false;
        let mut outcomes = Vec::new();
        for mut w in ready {
            match node.lessor.renew(w.lease, now) {
                // Not found (or expired) on the leader: the lease is gone for the client.
                None if node.lessor.is_primary() => {
                    self.lease_clients[w.client].lease = None;
                    outcomes.push((w, false));
                }
                None => outcomes.push((w, false)),
                Some(renewal) if renewal.clear_checkpoint => {
                    let Some(raw) = node.raw.as_mut() else { continue };
                    let cmd = Command::LeaseCheckpoint { id: w.lease, remaining_ms: 0 };
                    match raw.raft.propose(encode_command(cmd)) {
                        Ok((i, t)) => {
                            w.step = LeaseStep::Clear(i, t);
                            node.lease_waits.push(w);
                            clear = true;
                        }
                        Err(_) => outcomes.push((w, false)),
                    }
                }
                Some(_) => outcomes.push((w, true)),
            }
        }
        for (w, ok) in outcomes {
            if ok {
                self.stats.keep_alives += 1;
                self.lease_acked(&w);
            } else {
                self.lease_done(w.client);
            }
        }
        if clear {
            self.process(id)?;
        }
        Ok(())
    }

    /// The lease requests proposed at this entry on member `id` complete (or fail, when
    /// another entry took their place).
    fn lease_applied(&mut self, id: NodeId, entry: &Entry) -> SimResult<()> {
        let node = self.nodes.get_mut(&id).ok_or("node vanished")?;
        let mut finished = Vec::new();
        node.lease_waits.retain(|w| match w.step {
            LeaseStep::Grant(i, t) | LeaseStep::Revoke(i, t) | LeaseStep::Clear(i, t) if i == entry.index => {
                finished.push((w.clone(), t == entry.term));
                false
            }
            _ => true,
        });
        for (w, ok) in finished {
            match (&w.step, ok) {
                (LeaseStep::Grant(..), true) => {
                    self.stats.leases_granted += 1;
                    self.lease_acked(&w);
                }
                (LeaseStep::Revoke(..), true) => {
                    self.lease_clients[w.client].lease = None;
                    self.lease_done(w.client);
                }
                (LeaseStep::Clear(..), true) => {
                    self.stats.keep_alives += 1;
                    self.lease_acked(&w);
                }
                _ => self.lease_done(w.client),
            }
        }
        Ok(())
    }

    /// Lease requests past their deadline are given up (their outcome unknown to the client).
    fn sweep_leases(&mut self) {
        let now = self.now;
        let overdue: Vec<usize> = (0..LEASE_CLIENTS)
            .filter(|c| self.lease_clients[*c].busy.is_some_and(|deadline| deadline <= now))
            .collect();
        for client in overdue {
            for node in self.nodes.values_mut() {
                node.lease_waits.retain(|w| w.client != client);
            }
            self.lease_done(client);
        }
    }

    /// Once faults stopped, every lease (no client renews any more) must be revoked within its
    /// TTL and the election timeout after a leader took office, plus a little for the revoke's
    /// commit: none lives on because of the failovers before. A change of leader (one still
    /// happens now and then after the faults, a transfer that was under way) starts the count
    /// again.
    fn check_lease_expiry(&mut self) -> SimResult<()> {
        // Each revoke is an entry of its own; with one entry per message (the configs here often
        // say so) and asynchronous writes on both sides, each costs up to two writes more.
        let leases = self.nodes.values().map(|n| n.store.leases.len()).max().unwrap_or(0) as u64;
        let allowed = LEASE_TTL_S as u64 * 1000 + lease_extend_ms() + 100 + leases * 2 * MAX_WRITE_DELAY_MS;
        let give_up = self.now + 10 * allowed;
        let mut office = (None, None);
        let mut since = self.now;
        while self.now < give_up {
            let leader = self.leader();
            let term = leader.and_then(|l| self.nodes.get(&l)).and_then(|n| n.raw.as_ref()).map(|r| r.raft.term());
            if (leader, term) != office {
                (office, since) = ((leader, term), self.now);
            }
            if let Some(node) = leader.and_then(|l| self.nodes.get(&l)) {
                if node.store.leases.is_empty() {
                    return Ok(());
                }
                if self.now >= since + allowed {
                    let left: Vec<i64> = node.store.leases.keys().copied().collect();
                    return Err(format!(
                        "lease liveness: leases {left:?} still live {allowed} ms after n{} took office, with no \
                         client renewing them",
                        leader.unwrap_or_default()
                    ));
                }
            }
            let step = self.now + 10;
            self.run_until(step, |_| false)?;
        }
        Err(format!("lease liveness: no leader held office for {allowed} ms after faults stopped"))
    }

    // ----- faults -----

    fn crash(&mut self, id: NodeId) {
        let fresh = self.new_lessor();
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let Some(raw) = node.raw.take() else { return };
        // A leadership whose term never reached this member's disk ends in the crash as if it
        // had never begun: a single voter wins the moment it campaigns, and `check_send` holds
        // every message it sends to its durable term, so nothing of that leadership left it. It
        // comes back in its durable term and may vote there, and another member may lead that
        // term. Election safety is about leaderships that acted; one that could not act is
        // forgotten here (seed 9292 with renew-keeps-checkpoint planted, found this stop).
        let term = raw.raft.term();
        if raw.raft.role() == Role::Leader && node.disk.hard_state.term < term && self.leaders.get(&term) == Some(&id) {
            self.leaders.remove(&term);
            self.log(|| format!("n{id} crashed before its term {term} was durable: that leadership never acted"));
        }
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let ops: Vec<usize> = node
            .writes
            .drain(..)
            .map(|w| w.op)
            .chain(node.reads.drain(..).map(|r| r.op))
            .chain(std::mem::take(&mut node.placing))
            .collect();
        node.recent.clear();
        let lease_clients: Vec<usize> = node.lease_waits.drain(..).map(|w| w.client).collect();
        // The followers whose read index it was confirming hear nothing; their reads time out.
        node.relayed.clear();
        // Writes under way never happened.
        node.disk_writes.clear();
        node.lessor = fresh;
        node.leading = None;
        for client in lease_clients {
            self.lease_done(client);
        }
        self.stats.crashes += 1;
        self.log(|| format!("n{id} crashed"));
        for op in ops {
            self.unknown_op(op);
        }
    }

    fn restart(&mut self, id: NodeId) -> SimResult<()> {
        let mut cfg = self.config(id);
        cfg.seed = self.rng.next_u64();
        let node = self.nodes.get_mut(&id).ok_or("no such node")?;
        if node.raw.is_some() {
            return Ok(());
        }
        let disk = &node.disk;
        let initial = disk.restart_state();
        (node.store, node.joined) = match &disk.snapshot {
            Some(s) => decode_image(&s.data).ok_or("undecodable snapshot on disk")?,
            None => (Store::initial(), BTreeSet::new()),
        };
        node.applied = initial.applied;
        node.seen_commit = initial.hard_state.commit.max(initial.applied);
        let leases = node.store.lease_list();
        node.lessor.load(&leases, self.now, lease_extend_ms());
        node.raw = Some(RawNode::new(Raft::new(cfg, initial).map_err(|e| e.to_string())?));
        self.choose_writes(id);
        self.log(|| format!("n{id} restarted"));
        self.process(id)
    }

    fn nemesis(&mut self) -> SimResult<()> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let action = self.rng.range(0, 110);
        match action {
            100..=104 => self.disk_loss()?,
            105..=109 => {
                if let Some(id) = self.pick(&self.live()) {
                    self.crash(id);
                    if let Some(node) = self.nodes.get_mut(&id) {
                        node.disk.power_loss();
                    }
                    self.stats.power_losses += 1;
                    self.log(|| format!("n{id} lost power"));
                }
            }
            0..=11 => {
                // A random split into two sides.
                self.net.blocked.clear();
                let side: Vec<NodeId> = ids.iter().copied().filter(|_| self.rng.chance(0.4)).collect();
                for a in &ids {
                    for b in &ids {
                        if side.contains(a) != side.contains(b) {
                            self.net.blocked.insert((*a, *b));
                        }
                    }
                }
                self.log(|| format!("partition {side:?} | rest"));
            }
            12..=19 => {
                // One-way loss between a few pairs.
                for _ in 0..self.rng.range(1, 4) {
                    if let (Some(a), Some(b)) = (self.pick(&ids), self.pick(&ids)) {
                        if a != b {
                            self.net.blocked.insert((a, b));
                            self.log(|| format!("one-way cut n{a} -> n{b}"));
                        }
                    }
                }
            }
            20..=25 => {
                // Isolate the leader.
                if let Some(l) = self.leader() {
                    for other in &ids {
                        if *other != l {
                            self.net.blocked.insert((l, *other));
                            self.net.blocked.insert((*other, l));
                        }
                    }
                    self.log(|| format!("isolate leader n{l}"));
                }
            }
            26..=39 => {
                self.net.blocked.clear();
                self.log(|| "heal".into());
            }
            40..=45 => {
                if let Some(id) = self.pick(&self.live()) {
                    self.crash(id);
                }
            }
            46..=49 => {
                // Crash the leader, often right after it was elected (Figure 8 of the paper).
                if let Some(id) = self.leader() {
                    self.crash(id);
                }
            }
            50..=61 => {
                if let Some(id) = self.pick(&self.crashed()) {
                    self.restart(id)?;
                }
            }
            62..=69 => self.change_membership()?,
            70..=75 => {
                if let Some(l) = self.leader() {
                    let to = if self.rng.chance(0.5) { None } else { self.pick(&ids) };
                    if let Some(raw) = self.nodes.get_mut(&l).and_then(|n| n.raw.as_mut()) {
                        if raw.raft.transfer_leader(to).is_ok() {
                            self.stats.leader_transfers += 1;
                            self.log(|| format!("transfer leadership from n{l} to {to:?}"));
                        }
                    }
                    self.process(l)?;
                }
            }
            _ => {
                let profiles = [(0.0, 0.0, 1, 5), (0.01, 0.01, 1, 20), (0.1, 0.05, 1, 50), (0.3, 0.1, 5, 150)];
                let p = profiles[self.rng.range(0, profiles.len() as u64) as usize];
                self.net.drop = p.0;
                self.net.duplicate = p.1;
                self.net.min_delay = p.2;
                self.net.max_delay = p.3;
                self.log(|| format!("network drop {} dup {} delay {}..{}ms", p.0, p.1, p.2, p.3));
            }
        }
        Ok(())
    }

    /// What a message promises must be durable when it leaves (Figure 2): its term (but a
    /// pre-vote's), a granted vote; and a member with an empty log grants no vote at all (it
    /// may have lost what it promised).
    fn check_send(&self, m: &Message) -> SimResult<()> {
        let Some(node) = self.nodes.get(&m.from) else { return Ok(()) };
        let durable = node.disk.hard_state;
        let pre_vote = matches!(m.body, MessageBody::PreVote { .. } | MessageBody::PreVoteResp { .. });
        if !pre_vote && m.term > durable.term {
            return Err(format!(
                "durability: n{} sent {} of term {} while its durable term is {}",
                m.from,
                m.body.kind(),
                m.term,
                durable.term
            ));
        }
        if let MessageBody::AppendResp { index, reject: None } = m.body {
            if index > node.disk.last_index() {
                return Err(format!(
                    "durability: n{} acknowledged index {index} to n{} while its disk holds up to {}",
                    m.from,
                    m.to,
                    node.disk.last_index()
                ));
            }
        }
        if m.body == (MessageBody::VoteResp { granted: true }) && (durable.term != m.term || durable.vote != Some(m.to))
        {
            return Err(format!("durability: n{} granted n{} a vote it had not recorded: {durable:?}", m.from, m.to));
        }
        let grants =
            matches!(m.body, MessageBody::VoteResp { granted: true } | MessageBody::PreVoteResp { granted: true });
        if grants && node.disk.last_index() == 0 {
            return Err(format!("n{} granted n{} a vote from an empty log (term {})", m.from, m.to, m.term));
        }
        Ok(())
    }

    /// A member loses its whole disk and comes back empty under its old id: only the join
    /// decision stands between it and the cluster. One at a time, in clusters of 3 voters or more
    /// (a majority's disks lost is data lost by any design); the leader often.
    fn disk_loss(&mut self) -> SimResult<()> {
        if self.nodes.values().any(|n| n.joining.is_some()) {
            return Ok(());
        }
        let Some(l) = self.leader() else { return Ok(()) };
        let Some(raw) = self.nodes.get(&l).and_then(|n| n.raw.as_ref()) else { return Ok(()) };
        let conf = raw.raft.conf().clone();
        // Not during a membership change: a lost voter plus a change in flight can leave a
        // configuration whose majority needs the lost member (quorum loss, which needs the
        // operator's manual recovery, not a replacement).
        if conf.voters.len() < 3 || conf != raw.raft.conf_at(raw.raft.commit_index()) {
            return Ok(());
        }
        // Nor while any member's log, in memory or on its disk, holds a change past the leader's
        // commit index: a deposed leader's uncommitted change (its own removal, say) can still
        // win a later election and leave a configuration whose majority needs the lost member.
        let committed = raw.raft.commit_index();
        let is_change = |e: &Entry| e.index > committed && matches!(e.payload, EntryPayload::ConfChange(_));
        let pending = self.nodes.values().any(|n| {
            n.disk.entries.iter().any(is_change)
                || n.raw.as_ref().is_some_and(|r| {
                    let log = r.raft.log();
                    (committed + 1..=log.last_index()).any(|i| log.entry(i).is_some_and(is_change))
                })
        });
        if pending {
            return Ok(());
        }
        let members: Vec<NodeId> =
            conf.voters.union(&conf.learners).copied().filter(|id| self.nodes.contains_key(id)).collect();
        let victim = if self.rng.chance(0.5) { Some(l) } else { self.pick(&members) };
        let Some(id) = victim else { return Ok(()) };
        self.crash(id);
        if let Some(node) = self.nodes.get_mut(&id) {
            node.disk = Disk::default();
            node.store = Store::initial();
            node.joined.clear();
            node.applied = 0;
            node.seen_commit = 0;
            node.joining = Some(Joining::default());
        }
        self.stats.disk_losses += 1;
        self.log(|| format!("n{id} lost its disk"));
        self.schedule(JOIN_EVERY_MS, Event::Join(id));
        Ok(())
    }

    /// What the members that `id` can reach say about the cluster (the peer port's answer).
    fn views_for(&self, id: NodeId) -> Vec<PeerView> {
        let mut views = Vec::new();
        for (&mid, m) in &self.nodes {
            let Some(raw) = m.raw.as_ref() else { continue };
            if mid == id || self.net.blocked.contains(&(id, mid)) || self.net.blocked.contains(&(mid, id)) {
                continue;
            }
            let leader = raw.raft.role() == Role::Leader && raw.raft.committed_in_current_term();
            let conf = raw.raft.conf_at(m.applied.max(raw.raft.log().base().index));
            let member = |x: NodeId, voter: bool| PeerMember {
                id: x,
                name: url(x),
                peer_url: url(x),
                voter,
                joined: m.joined.contains(&x),
                matched: if leader { raw.raft.progress(x).map_or(0, |p| p.matched) } else { 0 },
            };
            let members = conf
                .voters
                .iter()
                .map(|x| member(*x, true))
                .chain(conf.learners.iter().map(|x| member(*x, false)))
                .collect();
            views.push(PeerView {
                peer_url: url(mid),
                cluster_id: 1,
                leader,
                formed: raw.raft.term() > 1,
                members,
                blank: false,
            });
        }
        views
    }

    /// One round of a member with empty data deciding how to join (`node::join`).
    fn join_step(&mut self, id: NodeId) -> SimResult<()> {
        let Some(joining) = self.nodes.get(&id).and_then(|n| n.joining.clone()) else { return Ok(()) };
        if joining.replace {
            return self.replace_step(id);
        }
        if let Some((leader, _, _, at)) = joining.claim {
            match joining.outcome {
                Some(Ok(())) => return self.start_joined(id),
                Some(Err((true, why))) => {
                    self.log(|| format!("n{id} refused: {why}"));
                    return self.set_joining(id, |j| j.replace = true);
                }
                Some(Err((false, why))) => {
                    self.log(|| format!("n{id} gives up: {why}"));
                    self.nodes.remove(&id);
                    return Ok(());
                }
                None => {
                    let gone = self
                        .nodes
                        .get(&leader)
                        .and_then(|n| n.raw.as_ref())
                        .is_none_or(|r| r.raft.role() != Role::Leader);
                    if gone || self.now > at + CLAIM_TIMEOUT_MS {
                        self.set_joining(id, |j| j.claim = None)?;
                    }
                    return Ok(());
                }
            }
        }
        if self.planted == Some(PlantedBug::VoteFromEmptyLog) && self.used.contains(&id) {
            // The join never lets a member with lost data run under its old id, so a vote from
            // an empty log only matters when something bypasses the join (a member started by
            // hand on an emptied directory). This planted run does exactly that, leaving the
            // core's guard as the only defense, which the bug removes.
            return self.start_blank(id);
        }
        let views = self.views_for(id);
        let me = Joiner { name: url(id), peer_url: url(id) };
        match decide_existing(&me, &views, self.planted) {
            Decision::Claim { via, id: claimed, .. } => {
                let Some(leader) = via.strip_prefix('n').and_then(|n| n.parse::<NodeId>().ok()) else { return Ok(()) };
                let Some(raw) = self.nodes.get_mut(&leader).and_then(|n| n.raw.as_mut()) else { return Ok(()) };
                if let Ok((index, term)) = raw.raft.propose(encode_command(Command::Join(claimed))) {
                    let now = self.now;
                    self.set_joining(id, |j| j.claim = Some((leader, index, term, now)))?;
                    self.log(|| format!("n{id} asks n{leader} to record its join"));
                    self.process(leader)?;
                }
                Ok(())
            }
            Decision::Admit { id: admitted, .. } if admitted == id => self.start_joined(id),
            Decision::Refuse { data_lost: true, reason } => {
                self.log(|| format!("n{id} refused: {reason}"));
                self.set_joining(id, |j| j.replace = true)
            }
            Decision::Refuse { reason, .. } => {
                self.log(|| format!("n{id} gives up: {reason}"));
                self.nodes.remove(&id);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn set_joining(&mut self, id: NodeId, f: impl FnOnce(&mut Joining)) -> SimResult<()> {
        if let Some(j) = self.nodes.get_mut(&id).and_then(|n| n.joining.as_mut()) {
            f(j);
        }
        Ok(())
    }

    /// The join was recorded (or, with the planted bug, taken on a follower's word): the member
    /// starts with empty data. Never under an id whose disk held data before.
    fn start_joined(&mut self, id: NodeId) -> SimResult<()> {
        if self.used.contains(&id) {
            return Err(format!("join safety: n{id} lost its data and was admitted again under its old id"));
        }
        self.start_blank(id)
    }

    fn start_blank(&mut self, id: NodeId) -> SimResult<()> {
        let cfg = self.config(id);
        let raw = RawNode::new(Raft::new(cfg, InitialState::default()).map_err(|e| e.to_string())?);
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(()) };
        node.raw = Some(raw);
        node.joining = None;
        self.choose_writes(id);
        self.stats.joins += 1;
        self.log(|| format!("n{id} joins with empty data"));
        self.process(id)
    }

    /// The operator's replace flow for a member whose data is lost: remove its id, then add a
    /// learner under a new id, which joins like any new member.
    fn replace_step(&mut self, old: NodeId) -> SimResult<()> {
        let Some(l) = self.leader() else { return Ok(()) };
        let Some(raw) = self.nodes.get_mut(&l).and_then(|n| n.raw.as_mut()) else { return Ok(()) };
        if raw.raft.conf().contains(old) {
            let cc = ConfChange { kind: ConfChangeKind::Remove, node_id: old, context: Bytes::new() };
            if raw.raft.propose_conf_change(cc).is_ok() {
                self.log(|| format!("n{l} removes n{old}, whose data is lost"));
            }
        } else {
            let new = self.next_id;
            let cc = ConfChange { kind: ConfChangeKind::AddLearner, node_id: new, context: Bytes::new() };
            if raw.raft.propose_conf_change(cc).is_ok() {
                self.next_id += 1;
                self.nodes.remove(&old);
                self.stats.replacements += 1;
                self.log(|| format!("n{l} adds n{new} to replace n{old}"));
                self.add_joiner(new);
            }
        }
        self.process(l)
    }

    fn change_membership(&mut self) -> SimResult<()> {
        let Some(l) = self.leader() else { return Ok(()) };
        let Some(raw) = self.nodes.get(&l).and_then(|n| n.raw.as_ref()) else { return Ok(()) };
        let conf = raw.raft.conf().clone();
        let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
        let members: Vec<NodeId> = conf.voters.union(&conf.learners).copied().collect();
        let choice = self.rng.range(0, 3);
        let (kind, node_id) = if choice == 0 && members.len() < MAX_MEMBERS {
            (ConfChangeKind::AddLearner, self.next_id)
        } else if choice == 1 && !learners.is_empty() {
            // As the operator does: promote only a learner that has acknowledged a log.
            let caught_up: Vec<NodeId> =
                learners.iter().copied().filter(|id| raw.raft.progress(*id).is_some_and(|p| p.matched > 0)).collect();
            let Some(learner) = self.pick(&caught_up) else { return Ok(()) };
            (ConfChangeKind::Promote, learner)
        } else if choice == 2 && members.len() > 1 && self.nodes.values().all(|n| n.joining.is_none()) {
            // No removals while a member with empty data joins or is replaced: with it lost, a
            // smaller configuration could need it for a majority.
            (ConfChangeKind::Remove, self.pick(&members).unwrap_or(0))
        } else {
            return Ok(());
        };
        let cc = ConfChange { kind, node_id, context: Bytes::new() };
        let Some(raw) = self.nodes.get_mut(&l).and_then(|n| n.raw.as_mut()) else { return Ok(()) };
        if raw.raft.propose_conf_change(cc).is_ok() {
            self.stats.conf_changes += 1;
            self.log(|| format!("n{l} proposes {kind:?} n{node_id}"));
            if kind == ConfChangeKind::AddLearner {
                self.next_id += 1;
                self.add_joiner(node_id);
            }
        }
        self.process(l)
    }

    // ----- phases -----

    /// Faults stop; every member restarts; within `LIVENESS_MS` a leader must commit a new
    /// entry; then every member must converge.
    fn heal_and_check(&mut self) -> SimResult<()> {
        self.clients_on = false;
        // The lease clients stop renewing: their requests under way are given up.
        for node in self.nodes.values_mut() {
            node.lease_waits.clear();
        }
        self.net = Net { drop: 0.0, duplicate: 0.0, min_delay: 1, max_delay: 5, blocked: BTreeSet::new() };
        self.queue.retain_nemesis();
        for id in self.crashed() {
            self.restart(id)?;
        }
        let healed_at = self.now;
        self.log(|| "faults stop; every member restarted".into());
        let deadline = healed_at + LIVENESS_MS;
        self.marker = None;
        self.marker_done = false;
        while self.now < deadline && !self.marker_done {
            if self.marker.is_none() {
                if let Some(l) = self.leader() {
                    if let Some(raw) = self.nodes.get_mut(&l).and_then(|n| n.raw.as_mut()) {
                        if let Ok((index, term)) = raw.raft.propose(encode_command(Command::Marker)) {
                            self.marker = Some((l, index, term));
                            self.process(l)?;
                        }
                    }
                }
            }
            let until = (self.now + 20).min(deadline);
            self.run_until(until, |s| s.marker_done)?;
            // A marker proposed to a leader that lost office is abandoned and proposed again.
            if let Some((n, _, term)) = self.marker {
                let gone = self
                    .nodes
                    .get(&n)
                    .and_then(|x| x.raw.as_ref())
                    .is_none_or(|r| r.raft.term() != term || r.raft.role() != Role::Leader);
                if gone {
                    self.marker = None;
                }
            }
        }
        if !self.marker_done {
            return Err(format!(
                "liveness: no commit within {LIVENESS_MS}ms after faults stopped: {}",
                self.describe()
            ));
        }
        self.stats.recovery_ms = self.now - healed_at;
        self.check_lease_expiry()?;

        // Convergence: every member of the leader's configuration applies the same state.
        let end = self.now + CONVERGENCE_MS;
        let converged = self.run_until(end, |s| s.converged())?;
        if !converged && !self.converged() {
            return Err(format!(
                "convergence: members did not converge within {CONVERGENCE_MS}ms: {}",
                self.describe()
            ));
        }
        if let Some(l) = self.leader() {
            self.check_completeness(l)?;
        }
        Ok(())
    }

    fn converged(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let Some(raw) = self.nodes.get(&l).and_then(|n| n.raw.as_ref()) else { return false };
        let commit = raw.raft.commit_index();
        let conf = raw.raft.conf();
        let store = &self.nodes[&l].store;
        conf.voters.union(&conf.learners).all(|id| {
            self.nodes.get(id).is_some_and(|n| {
                n.raw.as_ref().is_some_and(|r| r.raft.applied_index() == commit)
                    && n.applied == commit
                    && &n.store == store
            })
        })
    }

    fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|(id, n)| match &n.raw {
                Some(r) => format!(
                    "n{id}: {:?} term {} commit {} applied {} last {} conf {:?}",
                    r.raft.role(),
                    r.raft.term(),
                    r.raft.commit_index(),
                    n.applied,
                    r.raft.log().last_index(),
                    r.raft.conf().voters
                ),
                None => format!("n{id}: down"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn check_history(&mut self) -> SimResult<()> {
        // Operations still open have an unknown outcome.
        for op in 0..self.history.len() {
            if self.open[op].is_some() {
                self.unknown_op(op);
            }
        }
        // The last use of the history: moved, not copied.
        let history = std::mem::take(&mut self.history);
        let ops: Vec<Op> =
            history.into_iter().zip(&self.dropped).filter(|(_, dropped)| !**dropped).map(|(o, _)| o).collect();
        self.stats.ops = ops.len();
        for o in &ops {
            match (&o.input, &o.output) {
                (StoreInput::Put { .. }, Some(_)) => self.stats.ok_writes += 1,
                (StoreInput::Read { keys }, _) => {
                    self.stats.ok_reads += 1;
                    self.stats.read_alls += usize::from(keys == &ACCOUNTS);
                }
                (StoreInput::Txn { compares, .. }, Some(StoreOutput::Txn { succeeded, .. })) => {
                    match (compares.len() == 1, succeeded) {
                        (true, true) => self.stats.cas_ok += 1,
                        (true, false) => self.stats.cas_failed += 1,
                        (false, true) => self.stats.transfers_ok += 1,
                        (false, false) => self.stats.transfers_failed += 1,
                    }
                }
                _ => {}
            }
        }
        match check_store(Store::model(), &ops, 2_000_000) {
            Verdict::Linearizable => Ok(()),
            Verdict::Violation { partition, operations } => {
                Err(format!("linearizability: {partition} has no sequential order:\n  {}", operations.join("\n  ")))
            }
            // The search budget is generous for these small histories; exceeding it is a
            // finding too (it should not happen), so it fails the seed.
            Verdict::Unknown { partition } => Err(format!(
                "linearizability check of {partition} exceeded its budget (unknown): {} operations, {} of unknown \
                 outcome",
                ops.len(),
                ops.iter().filter(|o| o.ret.is_none()).count()
            )),
        }
    }
}

trait RetainNemesis {
    fn retain_nemesis(&mut self);
}

impl RetainNemesis for BinaryHeap<Reverse<Scheduled>> {
    /// Drops the scheduled fault and client events; keeps ticks and messages in flight.
    fn retain_nemesis(&mut self) {
        self.retain(|Reverse(s)| !matches!(s.event, Event::Nemesis | Event::Client(_) | Event::LeaseClient(_)));
    }
}

fn run_seed(seed: u64, trace: bool, bug: Option<Bug>) -> SimResult<Stats> {
    let mut sim = Sim::new(seed, trace, bug);
    let chaos_ms = sim.rng.range(1_000, 8_000);
    sim.run_until(chaos_ms, |_| false)?;
    sim.heal_and_check()?;
    sim.check_history()?;
    Ok(sim.stats)
}

fn run_seed_catching(seed: u64, trace: bool, bug: Option<Bug>) -> SimResult<Stats> {
    match std::panic::catch_unwind(|| run_seed(seed, trace, bug)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panic: {what}"))
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn simulate_seeds() {
    let trace = std::env::var("SIM_TRACE").is_ok_and(|v| v == "1");
    if let Some(seed) = env_u64("SIM_SEED") {
        match run_seed_catching(seed, trace, planted_from_env()) {
            Ok(stats) => println!("seed {seed} ok: {stats:?}"),
            Err(e) => panic!("seed {seed} failed: {e}"),
        }
        return;
    }
    let count = env_u64("SIM_SEEDS").unwrap_or(2_000);
    let start = env_u64("SIM_START").unwrap_or(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8) as u64;
    let planted = planted_from_env();
    let began = Instant::now();
    let results: Vec<(u64, SimResult<Stats>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut seed = start + t;
                    while seed < start + count {
                        out.push((seed, run_seed_catching(seed, false, planted)));
                        seed += threads;
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut failures: Vec<(u64, String)> = Vec::new();
    let mut total = Stats::default();
    let mut worst_recovery = 0;
    for (seed, r) in &results {
        match r {
            Ok(s) => {
                total.events += s.events;
                total.ops += s.ops;
                total.ok_writes += s.ok_writes;
                total.ok_reads += s.ok_reads;
                total.read_alls += s.read_alls;
                total.follower_reads += s.follower_reads;
                total.follower_writes += s.follower_writes;
                total.transfers_ok += s.transfers_ok;
                total.transfers_failed += s.transfers_failed;
                total.cas_ok += s.cas_ok;
                total.cas_failed += s.cas_failed;
                total.unknown += s.unknown;
                total.elections += s.elections;
                total.crashes += s.crashes;
                total.conf_changes += s.conf_changes;
                total.leader_transfers += s.leader_transfers;
                total.snapshots_installed += s.snapshots_installed;
                total.disk_losses += s.disk_losses;
                total.power_losses += s.power_losses;
                total.joins += s.joins;
                total.replacements += s.replacements;
                total.leases_granted += s.leases_granted;
                total.keep_alives += s.keep_alives;
                total.leases_expired += s.leases_expired;
                total.leases_abandoned += s.leases_abandoned;
                total.checkpoints += s.checkpoints;
                worst_recovery = worst_recovery.max(s.recovery_ms);
            }
            Err(e) => failures.push((*seed, e.clone())),
        }
    }
    println!(
        "simulated {} seeds from {start} in {:.1}s: {} events, {} checked ops ({} puts acked, {} reads of which \
         {} read-alls, {} reads and {} writes sent to a follower, {} transfer txns committed and {} refused, {} CAS swapped and {} refused, {} unknown), \
         {} elections, {} crashes, {} membership changes, {} leader transfers, {} snapshots installed, \
         {} disks lost, {} power losses, {} joins with empty data, {} members replaced; \
         leases: {} granted, {} keep-alives acknowledged, {} walked away from, {} expired by a leader, \
         {} checkpoints proposed; slowest recovery after faults stopped: {worst_recovery}ms",
        results.len(),
        began.elapsed().as_secs_f64(),
        total.events,
        total.ops,
        total.ok_writes,
        total.ok_reads,
        total.read_alls,
        total.follower_reads,
        total.follower_writes,
        total.transfers_ok,
        total.transfers_failed,
        total.cas_ok,
        total.cas_failed,
        total.unknown,
        total.elections,
        total.crashes,
        total.conf_changes,
        total.leader_transfers,
        total.snapshots_installed,
        total.disk_losses,
        total.power_losses,
        total.joins,
        total.replacements,
        total.leases_granted,
        total.keep_alives,
        total.leases_abandoned,
        total.leases_expired,
        total.checkpoints,
    );
    assert!(
        count < 1000
            || [total.leases_granted, total.keep_alives, total.leases_expired, total.checkpoints]
                .iter()
                .all(|n| *n > 0),
        "leases were granted, renewed, checkpointed and expired: {total:?}"
    );
    assert!(
        count < 1000 || (total.disk_losses > 0 && total.power_losses > 0 && total.replacements > 0),
        "the disk-loss and power-loss faults happened: {total:?}"
    );
    assert!(
        count < 1000
            || [
                total.read_alls,
                total.follower_reads,
                total.follower_writes,
                total.transfers_ok,
                total.transfers_failed,
                total.cas_ok,
                total.cas_failed,
            ]
            .iter()
            .all(|n| *n > 0),
        "read-alls, reads and writes through followers, transfers and CAS both committed and refused happened: {total:?}"
    );
    assert_eq!(results.len() as u64, count, "every seed ran");
    if !failures.is_empty() {
        failures.sort();
        for (seed, e) in failures.iter().take(10) {
            println!("seed {seed} FAILED: {e}");
            println!("  replay: SIM_SEED={seed} SIM_TRACE=1 cargo test --release --test sim -- --nocapture");
        }
        panic!("{} of {count} seeds failed; first: {}", failures.len(), failures[0].0);
    }
}

const NO_ORDER: &str = "linearizability: the whole store has no sequential order";
const CONVERGENCE: &str = "convergence: members did not converge";

/// The planted bugs: name, bug, and what the failure it causes may say (any one of them).
const EARLY: &str = "expired early";

const BUGS: [(&str, Bug, &[&str]); 13] = [
    ("join-on-followers-word", Bug::Raft(PlantedBug::JoinOnFollowersWord), &["admitted again under its old id"]),
    // On some seeds (9 before the follower reads were modelled, 4 after) this bug leaves
    // members that never converge before a vote from an empty log is seen: caught either way.
    ("vote-from-empty-log", Bug::Raft(PlantedBug::VoteFromEmptyLog), &["a vote from an empty log", CONVERGENCE]),
    ("send-term-before-persist", Bug::Raft(PlantedBug::SendTermBeforePersist), &["while its durable term is"]),
    // A follower that is merely behind takes the leader's whole commit index for a promise it
    // made and broke.
    ("heartbeat-commit-past-match", Bug::Raft(PlantedBug::HeartbeatCommitPastMatch), &["reports its data lost"]),
    // A leader that commits with its own unwritten entries loses them in a crash; a member
    // without them may then win, and overwrite what was committed.
    ("leader-counts-unwritten", Bug::Raft(PlantedBug::LeaderCountsUnwritten), &["lacks committed entry", NO_ORDER]),
    ("txn-first-op-only", Bug::TxnFirstOpOnly, &["conserved total"]),
    // A transfer against stale balances breaks the total; a CAS against a moved revision
    // only the history's order.
    ("txn-ignores-compare", Bug::TxnIgnoresCompare, &["conserved total", NO_ORDER]),
    // Every state a stale read sees conserves the total: only the order catches it.
    ("stale-read-all", Bug::StaleReadAll, &[NO_ORDER]),
    // A follower behind its leader answers from before writes that were acknowledged.
    ("follower-reads-unapplied", Bug::FollowerReadsUnapplied, &[NO_ORDER]),
    // A write overwritten by a new leader is acknowledged with another entry's outcome (or
    // with a no-op's, which is no write at all).
    ("placed-ignores-term", Bug::PlacedIgnoresTerm, &[NO_ORDER, "is no write", "conserved total"]),
    // A new leader counts from the remaining TTL a checkpoint recorded before the renewal.
    ("renew-keeps-checkpoint", Bug::Lease(LeaseBug::RenewKeepsCheckpoint), &[EARLY]),
    ("renews-expired", Bug::Lease(LeaseBug::RenewsExpired), &[EARLY]),
    ("checkpoint-keeps-extension", Bug::Lease(LeaseBug::CheckpointKeepsExtension), &["lease liveness"]),
];

/// `SIM_BUG=<name>` plants one of `BUGS`.
fn planted_from_env() -> Option<Bug> {
    let name = std::env::var("SIM_BUG").ok()?;
    match BUGS.iter().find(|(n, _, _)| *n == name) {
        Some((_, bug, _)) => Some(*bug),
        None => panic!("SIM_BUG={name} is not a planted bug"),
    }
}

/// Each planted bug removes one safety rule; the simulator must find a seed that fails with it
/// (`SIM_PLANTED_SEEDS`, default 10,000, bounds the search; the slowest, renew-keeps-checkpoint,
/// needs a few thousand, and how many moves whenever the mix of operations changes). Replay one with
/// `SIM_BUG=<name> SIM_SEED=<seed> SIM_TRACE=1`.
#[test]
fn planted_bugs_are_caught() {
    let limit = env_u64("SIM_PLANTED_SEEDS").unwrap_or(10_000);
    for (name, bug, signatures) in BUGS {
        let began = Instant::now();
        let caught = (0..limit).find_map(|seed| run_seed_catching(seed, false, Some(bug)).err().map(|e| (seed, e)));
        match caught {
            Some((seed, e)) => {
                let first_line = e.lines().next().unwrap_or_default().to_string();
                assert!(
                    signatures.iter().any(|s| e.contains(s)),
                    "planted bug {name} failed seed {seed} for another reason: {e}"
                );
                println!(
                    "planted bug {name}: caught by seed {seed} in {:.1}s: {first_line}",
                    began.elapsed().as_secs_f64()
                );
            }
            None => panic!("planted bug {name} was not caught in {limit} seeds"),
        }
    }
}

//! The Raft loop: one task of the member's runtime owns the consensus core and the state
//! machine; a thread, the writer (`node::writer`), makes the log durable. The loop runs on the
//! same worker threads as the tasks that hand it input (request handlers, the peer streams) and
//! those it hands messages and answers to, so a hand-over between them is a task switch, not a
//! thread's wakeup; the few steps that may block for long run in `blocking`, with the worker's
//! other tasks handed to another thread meanwhile. The loop waits for input (peer messages,
//! proposals, reads, admin requests, the writer's reports) or the next tick, then runs Ready
//! cycles: send what may leave early, hand the write to the writer, apply what is committed and
//! durable here, answer. It does not wait for the write: the core takes the next Ready while
//! earlier ones are being written (`RawNode::set_async_writes`), and every proposal that arrived
//! meanwhile rides in the next write (group commit). Nothing is acknowledged and no vote leaves
//! before the write that it promises is durable: those messages wait until the writer reports.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::oneshot;

use super::forward;
use super::latency::{AppendClock, WritePoint};
use super::shared::{lock, read, write, LoopStatus, Shared};
use super::timeline::{self, EventKind};
use super::writer::{Courier, Done, Write, Writer};
use crate::base::quorum::most_caught_up;
use crate::raft::{
    ConfChange, ConfChangeKind, DataLoss, Entry, EntryPayload, Index, Message, MessageBody, NodeId, ProposeError,
    RawNode, Ready, Role, Snapshot, SnapshotMeta, Term,
};
use crate::store::command::{decode, encode, ApplyResult, Command, MemberInfo};
use crate::store::kv::staging_path;
use crate::store::mvcc::snapshot::SnapshotReader;
use crate::store::mvcc::MvccError;
use crate::store::{KvStore, Storage};

/// How long one pass of the Raft loop may spend reclaiming compacted history.
const RECLAIM_SLICE: Duration = Duration::from_millis(5);
/// Reclaimed chunks (of `COMPACT_CHUNK` revisions) between durable commits while compacted
/// history is reclaimed; see `reclaim_compacted`.
const RECLAIM_CHUNKS_PER_PERSIST: u32 = 64;

/// Entries a snapshot leaves in the log behind the applied index, as etcd's
/// `SnapshotCatchUpEntries`: a follower a little behind catches up from the log, not by a
/// transfer of the whole state machine. At most half the snapshot interval, so a small
/// `--snapshot-count` still compacts.
const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5_000;

/// Bytes of entries applied since the last snapshot after which a snapshot is taken even before
/// `snapshot_threshold` entries: the core holds the log since its base in memory, so with large
/// values a count of entries alone let a member hold up to threshold plus catch-up entries of
/// the largest value (15,000 of 1.5 MiB). The catch-up entries kept behind a snapshot are held to
/// half of it. At 256-byte values the count of entries comes first, as before.
pub const SNAPSHOT_BYTES: u64 = 64 << 20;

/// Milliseconds per tick of the core.
pub const TICK_MS: u64 = 10;
/// How often a leader compares the member records with what members say of themselves.
const PUBLISH_CHECK: Duration = Duration::from_millis(200);
/// How long a leader waits for a member record it proposed before it proposes it again.
const PUBLISH_RETRY: Duration = Duration::from_secs(5);
/// Inputs waiting for the loop; beyond this, requests are refused (503) and peer messages
/// dropped (Raft recovers from loss), so memory stays bounded under overload.
pub const INPUT_QUEUE: usize = 8192;
/// At most this many inputs are taken before the next Ready, so ticks are never starved.
const MAX_INPUTS_PER_ROUND: usize = 4096;
/// While storage keeps failing, its ERROR line is repeated this often (so a long outage shows
/// in the log), and sooner when the reason changes (an fsync error, then a read-only file system).
const STORAGE_ERROR_REPEAT: Duration = Duration::from_secs(60);
const STORAGE_ERROR_CHANGED: Duration = Duration::from_secs(1);
/// The kind under which a halted state machine shows in `/v1/status` errors and `/readyz`.
pub const HALT_ERROR: &str = "state machine";
/// The kind under which failing storage (a full disk, an I/O error) shows in errors and `/readyz`.
pub const STORAGE_ERROR: &str = "storage";
/// How often a halted leader offers leadership away while it still leads.
const HANDOFF_RETRY: Duration = Duration::from_secs(1);
/// How many heartbeat intervals a stopping leader waits for the voter it offered leadership to
/// before it offers it to the next (`RaftLoop::shutdown_done`).
const HANDOFF_STEP_HEARTBEATS: u64 = 3;
/// How often the leader looks for expired leases and due checkpoints (etcd revokes at most 500
/// leases every 500 ms).
const LEASE_TICK: Duration = Duration::from_millis(500);

fn halted_error(why: &str) -> NodeError {
    NodeError::Unavailable(format!("this member stopped applying and serves nothing (see /readyz): {why}"))
}

/// Why a request failed. Each maps to one HTTP status in the API. A follower gets them from its
/// leader too (`forward`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum NodeError {
    #[error("this member is not the leader")]
    NotLeader { leader: Option<NodeId> },
    /// Not proposed, will not apply: safe to retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Proposed, then the outcome became unknown (leader change, deadline).
    #[error("the outcome is unknown: {0}")]
    OutcomeUnknown(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The store refused a txn, range or compact with etcd's error; nothing changed.
    #[error("{0}")]
    Mvcc(MvccError),
    /// The caller may not do this, or the auth change was refused (etcd's error); nothing
    /// changed.
    #[error("{0}")]
    Auth(crate::store::auth::AuthError),
}

impl From<ProposeError> for NodeError {
    fn from(e: ProposeError) -> NodeError {
        match e {
            ProposeError::NotLeader { leader } => NodeError::NotLeader { leader },
            ProposeError::InvalidConfChange(e) => NodeError::BadRequest(e.to_string()),
            ProposeError::NotAVoter(id) => NodeError::BadRequest(format!("member {id:x} is not a voter")),
            other => NodeError::Unavailable(other.to_string()),
        }
    }
}

pub type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

pub enum Input {
    Step(Message),
    /// The writer has something to report (`node::writer`).
    Wake,
    Propose {
        data: Bytes,
        reply: Reply<ApplyResult>,
        /// When the write was received (`node::latency`).
        received: Instant,
    },
    /// A follower's writes, to append to the log and answer with where (index, term) at once
    /// (`node::forward`): their outcomes come from the follower's own apply.
    Place {
        commands: Vec<Bytes>,
        reply: oneshot::Sender<Vec<Result<(Index, Term), NodeError>>>,
        received: Instant,
    },
    ConfChange {
        cc: ConfChange,
        reply: Reply<()>,
    },
    ReadIndex {
        reply: Reply<Index>,
    },
    Transfer {
        to: Option<NodeId>,
        reply: Reply<NodeId>,
    },
    SnapshotFailed(NodeId),
    /// Graceful stop: a leader first hands leadership to the most caught-up voter.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The sending side of the loop's input queue: any thread or task offers without blocking.
pub type InputSender = tokio::sync::mpsc::Sender<Input>;
/// The loop's side of its input queue.
pub type InputReceiver = tokio::sync::mpsc::Receiver<Input>;

/// The loop's input queue, holding at most `capacity` inputs.
pub fn input_queue(capacity: usize) -> (InputSender, InputReceiver) {
    tokio::sync::mpsc::channel(capacity)
}

/// Sends an input to the loop without blocking the caller.
pub fn offer(tx: &InputSender, input: Input) -> Result<(), NodeError> {
    match tx.try_send(input) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => Err(NodeError::Unavailable("this member is overloaded; retry".into())),
        Err(TrySendError::Closed(_)) => Err(NodeError::Unavailable("this member is shutting down".into())),
    }
}

/// Runs `work`, which may block for a while (a durable commit, a snapshot's install), without
/// holding up the other tasks of the runtime the loop runs on: on a multi-threaded runtime the
/// worker first hands its queue to another thread (`block_in_place`). Elsewhere (tests that
/// drive the loop by hand) it just runs.
fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Sends peer messages to their members (see `transport`).
pub trait Outbox: Send {
    fn send(&mut self, messages: Vec<Message>);
    /// The current membership, after every Ready cycle: an outbox may drop what it keeps for
    /// members that left.
    fn retain(&mut self, _members: &crate::raft::ConfState) {}
    /// A way for the writer's thread to send the messages of a write the moment it is durable
    /// (`node::writer::Courier`); without one they leave through the loop once it hears.
    fn courier(&self) -> Option<Arc<dyn Courier>> {
        None
    }
}

/// A storage failure that lasts: since when, and what the log last said about it.
struct StorageFailure {
    since: Instant,
    logged: String,
    logged_at: Instant,
}

/// Messages that wait until the writes of Readies up to `number` are durable, and leave when
/// the loop hears of it (those that the writer's thread does not send itself, `Write::messages`).
struct Held {
    number: u64,
    messages: Vec<Message>,
    /// A follower's first append that these acknowledge, when it arrived (`node::latency`).
    append_since: Option<Instant>,
}

struct PendingProposal {
    term: Term,
    reply: Option<Reply<ApplyResult>>,
    conf_reply: Option<Reply<()>>,
}

impl PendingProposal {
    /// Tells its waiter that its outcome is unknown, because of `why`.
    fn unknown(self, why: &str) {
        if let Some(reply) = self.reply {
            let _ = reply.send(Err(NodeError::OutcomeUnknown(why.to_string())));
        }
        if let Some(reply) = self.conf_reply {
            let _ = reply.send(Err(NodeError::OutcomeUnknown(why.to_string())));
        }
    }
}

pub struct RaftLoop {
    pub raw: RawNode,
    writer: Writer,
    pub shared: Arc<Shared>,
    pub outbox: Box<dyn Outbox>,
    pub rx: InputReceiver,
    pub snapshot_threshold: u64,
    /// `SNAPSHOT_BYTES`, or less in tests.
    pub snapshot_bytes: u64,
    /// Bytes of the entries handed to `apply_committed` since the last snapshot.
    applied_bytes: u64,
    proposals: BTreeMap<Index, PendingProposal>,
    reads: BTreeMap<u64, Reply<Index>>,
    next_read_ctx: u64,
    /// A write failed (disk full, read-only) and the writer retries it until it succeeds;
    /// meanwhile nothing is sent, applied or acknowledged, and the core does not tick.
    failing: bool,
    /// Messages waiting for writes, oldest first: one per write handed to the writer and not yet
    /// reported durable (so a write is under way exactly while this is not empty).
    held: std::collections::VecDeque<Held>,
    storage_failure: Option<StorageFailure>,
    last_snapshot_index: Index,
    last_leader: Option<NodeId>,
    /// Members whose `Command::Seen` this leader proposed in term `marking.0`.
    marking: (Term, std::collections::BTreeSet<NodeId>),
    /// When `publish_members` last looked, and the records it proposed in this leadership
    /// (reset when leadership changes), with when.
    publishing: (Instant, Term, BTreeMap<NodeId, (MemberInfo, Instant)>),
    shutdown: Option<(oneshot::Sender<()>, Instant)>,
    /// Why the state machine stopped (a snapshot it could not install, or an entry out of
    /// step with it): from then on nothing is applied, no snapshot is taken, and proposals
    /// and reads are refused. Raft itself goes on (the log is sound), except that a halted
    /// leader hands leadership away. A later snapshot that installs clears it.
    halted: Option<String>,
    /// When a halted or stopping leader last tried to hand leadership away (`hand_off`), and
    /// to whom it has tried since it last tried them all.
    last_handoff: Option<Instant>,
    handoff_tried: Vec<NodeId>,
    /// Chunks of compacted history reclaimed since the last durable commit.
    reclaimed_chunks: u32,
    /// The term in which the lessor was promoted, while this member leads.
    leading: Option<Term>,
    /// When the leader next looks for expired leases and due checkpoints.
    next_lease_tick: Instant,
    /// How many of the core's campaigns the timeline has recorded.
    campaigns_seen: u64,
    /// A follower's first append not yet persisted (`node::latency`).
    append_clock: AppendClock,
}

impl RaftLoop {
    pub fn new(
        raw: RawNode,
        storage: Storage,
        shared: Arc<Shared>,
        outbox: Box<dyn Outbox>,
        rx: InputReceiver,
        snapshot_threshold: u64,
    ) -> RaftLoop {
        let last_snapshot_index = raw.raft.log().base().index;
        let mut raw = raw;
        raw.set_async_writes(true);
        // A follower's handlers send proposals to the leader on the peer streams (`forward`).
        if let Some(courier) = outbox.courier() {
            shared.forward.set_courier(courier);
        }
        RaftLoop {
            raw,
            writer: Writer::inline(storage),
            shared,
            outbox,
            rx,
            snapshot_threshold: snapshot_threshold.max(1),
            snapshot_bytes: SNAPSHOT_BYTES,
            applied_bytes: 0,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            next_read_ctx: 1,
            failing: false,
            held: Default::default(),
            storage_failure: None,
            last_snapshot_index,
            last_leader: None,
            marking: (0, std::collections::BTreeSet::new()),
            publishing: (Instant::now(), 0, BTreeMap::new()),
            shutdown: None,
            halted: None,
            last_handoff: None,
            handoff_tried: Vec::new(),
            reclaimed_chunks: 0,
            leading: None,
            next_lease_tick: Instant::now(),
            campaigns_seen: 0,
            append_clock: AppendClock::default(),
        }
    }

    /// Writes on a thread of its own (`node::writer`), which wakes the loop through `wake`, its
    /// own input queue. Without this, the loop writes inline, in its own task, when it drives.
    pub fn with_writer_thread(mut self, wake: InputSender) -> std::io::Result<RaftLoop> {
        self.writer.start_thread(wake, self.outbox.courier())?;
        Ok(self)
    }

    /// The lessor's extension on promotion: the longest election timeout (etcd's `Promote`
    /// extends by the election timeout), so that a lease a client renewed through the old
    /// leader outlives the election.
    fn lease_extend_ms(&self) -> u64 {
        u64::from(self.raw.raft.config().election_timeout_max_ticks) * TICK_MS
    }

    /// Loads the lessor from the state machine (at start, after a snapshot installed).
    fn load_leases(&self) {
        let leases = read(&self.shared.kv).read_view().and_then(|view| view.leases());
        match leases {
            Ok(leases) => {
                let now = self.shared.lease_now_ms();
                lock(&self.shared.lessor).load(&leases, now, self.lease_extend_ms());
            }
            Err(e) => tracing::error!("cannot read the leases of the state machine: {e}"),
        }
    }

    /// What an applied command means for the lessor.
    fn note_lease(&self, result: &ApplyResult) {
        let now = self.shared.lease_now_ms();
        match result {
            ApplyResult::LeaseGranted { id, ttl } => lock(&self.shared.lessor).granted(*id, *ttl, now),
            ApplyResult::LeaseRevoked { id, .. } => lock(&self.shared.lessor).revoked(*id),
            ApplyResult::Checkpointed { checkpoints } => {
                let mut lessor = lock(&self.shared.lessor);
                for (id, remaining) in checkpoints {
                    lessor.checkpointed(*id, *remaining);
                }
            }
            _ => {}
        }
    }

    /// The leader's lease duties, twice a second: revoke what expired (at most 500 a round,
    /// etcd's rate), record remaining TTLs that are due. Proposed without waiting: an expiry
    /// whose revoke does not apply is proposed again (`lessor::REVOKE_RETRY_MS`).
    fn lease_tick(&mut self) {
        let now = Instant::now();
        if now < self.next_lease_tick {
            return;
        }
        self.next_lease_tick = now + LEASE_TICK;
        if self.leading.is_none() || self.failing || self.halted.is_some() {
            return;
        }
        let ms = self.shared.lease_now_ms();
        let (expired, checkpoints) = {
            let mut lessor = lock(&self.shared.lessor);
            (lessor.expired(ms, 500), lessor.checkpoints_due(ms, 1000))
        };
        for id in expired {
            match self.raw.raft.propose(encode(&Command::LeaseRevoke { id })) {
                Ok(_) => {
                    lock(&self.shared.lessor).revoke_proposed(id, ms);
                    self.shared.metrics.leases_expired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => tracing::debug!("cannot propose the expiry of lease {id:x}: {e:?}"),
            }
        }
        if !checkpoints.is_empty() {
            if let Err(e) = self.raw.raft.propose(encode(&Command::LeaseCheckpoint { checkpoints })) {
                tracing::debug!("cannot propose lease checkpoints: {e:?}");
            }
        }
    }

    /// Runs until shut down or every sender is gone, as a task of the member's runtime: the
    /// tasks that hand it input (request handlers, the peer streams) and those it hands messages
    /// and answers to run on the same worker threads, so handing over costs no thread switch.
    pub async fn run(mut self) {
        let _writeback = Writeback::start(self.shared.clone(), WRITEBACK_EVERY);
        self.load_leases();
        let tick = Duration::from_millis(TICK_MS);
        let mut next_tick = Instant::now() + tick;
        let sleep = tokio::time::sleep_until(next_tick.into());
        tokio::pin!(sleep);
        loop {
            let input = tokio::select! {
                biased;
                input = self.rx.recv() => Some(input),
                () = &mut sleep => None,
            };
            let mut busy = Instant::now();
            match input {
                Some(Some(input)) => {
                    self.handle(input);
                    // The tasks ready on this worker (handlers, peer streams) run first, so that
                    // what they offer meanwhile is taken in this same pass: one Ready, one write
                    // and one batch to each peer for all of it. Alone, this costs a task switch.
                    let worked = busy.elapsed();
                    tokio::task::yield_now().await;
                    // What ran meanwhile was other tasks' work, not the loop's.
                    busy = Instant::now().checked_sub(worked).unwrap_or_else(Instant::now);
                    for _ in 0..MAX_INPUTS_PER_ROUND {
                        match self.rx.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                }
                Some(None) => return,
                None => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                // A member that cannot persist stands still: it could neither win an election
                // (its own vote must be durable first) nor take entries, so it does not
                // campaign; ticking would only queue heartbeats and campaigns, without bound,
                // all stale by the time it recovers. A failing leader sends nothing (messages leave
                // only once their Ready is durable), so its followers elect a new leader after
                // one election timeout, as if it had crashed; it learns of it once it recovers.
                if !self.failing {
                    self.raw.tick();
                }
                next_tick += tick;
                if next_tick < now {
                    // We fell behind (a long fsync): do not replay missed ticks in a burst.
                    next_tick = now + tick;
                }
                sleep.as_mut().reset(next_tick.into());
            }
            self.drive();
            self.lease_tick();
            if let Some(loss) = self.raw.raft.data_lost() {
                let id = self.shared.id;
                let what = match loss {
                    DataLoss::BlankVoter => format!(
                        "this member holds no data, but the leader sent it a log in which it is voter {id:x}: its data \
                         is lost, and it will not count toward majorities with an empty log"
                    ),
                    DataLoss::Acknowledged { acknowledged, holds } => format!(
                        "the leader counts this member as holding the log up to index {acknowledged}, which it \
                         acknowledged as written to disk, but its log ends at index {holds}: entries it acknowledged \
                         are gone (a disk that lost writes it reported done, or a data directory put back from an \
                         older copy), and it will not vote or acknowledge with a log shorter than the one it vouched for"
                    ),
                };
                let why = format!(
                    "{what}. Remove it (`kuberaft member remove {id:x}`) and add it back with an empty data directory \
                     (`kuberaft member add ...`); the operator does this by itself"
                );
                tracing::error!("{why}");
                self.shared.data_lost.send_replace(Some(why));
                return;
            }
            if self.shutdown_done() {
                return;
            }
            self.shared.metrics.observe_loop_busy(busy.elapsed());
        }
    }

    fn handle(&mut self, input: Input) {
        if self.failing {
            // Storage is failing: refuse everything that would need it.
            let why = || NodeError::Unavailable("storage is failing; see /readyz".into());
            match input {
                Input::Propose { reply, .. } => drop(reply.send(Err(why()))),
                Input::Place { commands, reply, .. } => drop(reply.send(commands.iter().map(|_| Err(why())).collect())),
                Input::ConfChange { reply, .. } => drop(reply.send(Err(why()))),
                Input::ReadIndex { reply } => drop(reply.send(Err(why()))),
                Input::Transfer { reply, .. } => drop(reply.send(Err(why()))),
                Input::Shutdown { reply } => self.shutdown = Some((reply, Instant::now())),
                Input::Step(Message { from, body: MessageBody::Propose { batch, commands }, .. }) => {
                    self.refuse_placing(from, batch, commands.len(), &why())
                }
                Input::Step(_) | Input::SnapshotFailed(_) | Input::Wake => {}
            }
            return;
        }
        let input = match (&self.halted, input) {
            (Some(why), Input::Propose { reply, .. }) => return drop(reply.send(Err(halted_error(why)))),
            (Some(why), Input::Place { commands, reply, .. }) => {
                return drop(reply.send(commands.iter().map(|_| Err(halted_error(why))).collect()))
            }
            (Some(why), Input::ConfChange { reply, .. }) => return drop(reply.send(Err(halted_error(why)))),
            (Some(why), Input::ReadIndex { reply }) => return drop(reply.send(Err(halted_error(why)))),
            (Some(why), Input::Step(Message { from, body: MessageBody::Propose { batch, commands }, .. })) => {
                let why = halted_error(why);
                return self.refuse_placing(from, batch, commands.len(), &why);
            }
            (_, input) => input,
        };
        match input {
            Input::Step(m) => {
                if let Some(why) = self.unbacked_snapshot(&m) {
                    tracing::warn!(from = m.from, %why, "dropped an InstallSnapshot; its leader sends it again");
                    return;
                }
                if let MessageBody::Propose { batch, commands } = m.body {
                    self.place_for(m.from, batch, commands);
                    return;
                }
                match &m.body {
                    MessageBody::AppendResp { index, reject: None } => {
                        self.shared.latency.passed(WritePoint::Acknowledged, *index);
                    }
                    MessageBody::Append { entries, .. } if !entries.is_empty() => self.append_clock.took_append(),
                    _ => {}
                }
                self.raw.step(m)
            }
            Input::Propose { data, reply, received } => match self.raw.raft.propose(data) {
                Ok((index, term)) => {
                    self.shared.latency.proposed(index, received);
                    self.proposals.insert(index, PendingProposal { term, reply: Some(reply), conf_reply: None });
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Input::Place { commands, reply, received } => {
                let _ = reply.send(self.place(commands, received));
            }
            Input::ConfChange { cc, reply } => match self.raw.raft.propose_conf_change(cc) {
                Ok((index, term)) => {
                    self.proposals.insert(index, PendingProposal { term, reply: None, conf_reply: Some(reply) });
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Input::ReadIndex { reply } => {
                let ctx = self.next_read_ctx;
                self.next_read_ctx += 1;
                match self.raw.raft.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Input::Transfer { to, reply } => {
                let outcome = self.raw.raft.transfer_leader(to).map_err(NodeError::from);
                self.note_transfer(&outcome);
                let _ = reply.send(outcome);
            }
            Input::SnapshotFailed(id) => self.raw.raft.report_snapshot(id, false),
            Input::Wake => {}
            Input::Shutdown { reply } => {
                if self.raw.raft.role() == Role::Leader {
                    match self.hand_off() {
                        Some(Err(e)) => tracing::info!(error = %e, "no leader transfer before shutdown"),
                        Some(Ok(_)) => {}
                        None => tracing::info!("no leader transfer before shutdown: no other voter is reachable"),
                    }
                }
                self.shutdown = Some((reply, Instant::now()));
            }
        }
    }

    /// Offers leadership to the most caught-up voter the transport last reached
    /// (`Shared::unreachable`), among those not tried since it last tried them all, as etcd's
    /// stopping leader offers it to the peer it has been connected to longest, not to a member
    /// that is gone. `None`: no other voter is reached (etcd's leader then stops without a
    /// transfer, and so does this one).
    fn hand_off(&mut self) -> Option<Result<NodeId, ProposeError>> {
        let me = self.shared.id;
        let unreachable = lock(&self.shared.unreachable).clone();
        let raft = &self.raw.raft;
        let reached: Vec<NodeId> =
            raft.conf().voters.iter().copied().filter(|id| *id != me && !unreachable.contains(id)).collect();
        if reached.iter().all(|id| self.handoff_tried.contains(id)) {
            self.handoff_tried.clear();
        }
        let untried = reached.iter().filter(|id| !self.handoff_tried.contains(id));
        let to = most_caught_up(untried.map(|id| (*id, raft.progress(*id).map_or(0, |p| p.matched))))?;
        self.handoff_tried.push(to);
        self.last_handoff = Some(Instant::now());
        let outcome = self.raw.raft.transfer_leader(Some(to));
        self.note_transfer(&outcome);
        Some(outcome)
    }

    /// Stops once leadership moved away (or after a bounded wait). A voter that has not taken
    /// leadership within `HANDOFF_STEP_HEARTBEATS` heartbeat intervals (it may have stopped
    /// too, unnoticed yet) makes way for the next.
    fn shutdown_done(&mut self) -> bool {
        let Some((_, since)) = &self.shutdown else { return false };
        let leading = self.raw.raft.role() == Role::Leader && self.raw.raft.config().id == self.shared.id;
        let waited = since.elapsed() > Duration::from_millis(2_000);
        if leading && !waited && !self.failing {
            let step = Duration::from_millis(
                u64::from(self.raw.raft.config().heartbeat_interval_ticks) * TICK_MS * HANDOFF_STEP_HEARTBEATS,
            );
            let offered = self.last_handoff.is_some_and(|at| at.elapsed() < step);
            // Offered, and waiting for the voter to take over; or offered to the next one now.
            // With no voter reached, it stops.
            if offered || self.hand_off().is_some() {
                return false;
            }
        }
        if let Some((reply, _)) = self.shutdown.take() {
            let _ = reply.send(());
        }
        true
    }

    /// Runs Ready cycles until the core has nothing more to hand out; how long that took goes
    /// to the loop's longest-stall metric.
    fn drive(&mut self) {
        let started = Instant::now();
        self.drive_ready();
        self.shared.metrics.observe_loop_pass(started.elapsed());
    }

    fn drive_ready(&mut self) {
        self.take_writes();
        if self.failing {
            self.publish();
            return;
        }
        for _ in 0..64 {
            if !self.raw.has_ready() {
                break;
            }
            let mut rd = self.raw.ready();
            // New members' addresses come with their membership entries, before they apply.
            for entry in &rd.entries {
                self.learn_address(&entry.payload);
            }
            // Thesis §10.2.1: a leader sends its appends while it writes them, so that its own
            // fsync and its followers' overlap. The core puts a message here only when the term
            // and vote it carries are durable already; it counts the leader itself toward a
            // commit only once its write is reported (`RawNode::persisted`).
            if !rd.messages.is_empty() {
                let messages = std::mem::take(&mut rd.messages);
                self.send(messages);
            }
            if let Some(snapshot) = &rd.snapshot {
                self.install(snapshot);
            }
            self.hand_to_writer(&mut rd);
            self.finish_ready(rd);
            self.take_writes();
            if self.failing {
                break;
            }
        }
        self.outbox.retain(self.raw.raft.conf());
        // A stream waiting for a member that left holds a read view, which keeps redb from
        // reusing the pages freed since.
        let conf = self.raw.raft.conf();
        lock(&self.shared.outgoing_snapshots).retain(|id, _| conf.voters.contains(id) || conf.learners.contains(id));
        self.mark_members_with_data();
        self.publish_members();
        self.hand_off_if_halted();
        self.reclaim_compacted();
        self.maybe_snapshot();
        self.publish();
    }

    /// Hands a Ready's hard state, snapshot and entries to the writer. Its `persisted_messages`
    /// wait until that write and every earlier one are durable: a Ready with nothing to write
    /// may still answer for an earlier write (a vote granted again, an append acknowledged
    /// again), so unless no write is under way it goes to the writer too, empty, and its
    /// messages leave when the writer reports it.
    fn hand_to_writer(&mut self, rd: &mut Ready) {
        let mut write = Write {
            number: rd.number,
            hard_state: rd.hard_state.take(),
            snapshot: rd.snapshot.take(),
            entries: std::mem::take(&mut rd.entries),
            ..Write::default()
        };
        let append_since = self.append_clock.since().filter(|_| !write.entries.is_empty());
        if !write.entries.is_empty() {
            self.append_clock.reset();
        }
        let mut held = Held { number: rd.number, messages: std::mem::take(&mut rd.persisted_messages), append_since };
        if write.is_empty() && self.held.is_empty() {
            self.raw.persisted(held.number);
            self.release(held);
            return;
        }
        // The writer's thread sends them itself the moment the write is durable (a follower's
        // acknowledgement, issue 19), unless one is a snapshot, which only the loop prepares.
        let snapshot = held.messages.iter().any(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }));
        if self.writer.delivers() && !snapshot {
            write.messages = std::mem::take(&mut held.messages);
            write.append_since.extend(held.append_since.take());
        }
        self.held.push_back(held);
        self.writer.submit(write);
    }

    /// Takes the writer's reports: what is durable now goes to the core, and the messages that
    /// waited for it leave.
    fn take_writes(&mut self) {
        for done in self.writer.poll() {
            match done {
                Done::Written { number, last_entry, synced } => {
                    if let Some(took) = synced {
                        self.shared.metrics.observe_fsync(took.as_secs_f64());
                    }
                    if let Some(last) = last_entry {
                        self.shared.latency.passed(WritePoint::Persisted, last);
                    }
                    if let Some(failure) = self.storage_failure.take() {
                        let failed_for_s = failure.since.elapsed().as_secs();
                        tracing::info!(failed_for_s, "storage recovered; serving again");
                        self.shared.set_error(STORAGE_ERROR, None);
                    }
                    self.failing = false;
                    self.raw.persisted(number);
                    while self.held.front().is_some_and(|h| h.number <= number) {
                        if let Some(held) = self.held.pop_front() {
                            self.release(held);
                        }
                    }
                }
                Done::Failed(message) => self.storage_failed(message),
            }
        }
    }

    /// Sends messages whose writes are durable.
    fn release(&mut self, held: Held) {
        if let Some(since) = held.append_since {
            self.shared.latency.append(0, since);
        }
        self.send(held.messages);
        if let Some(since) = held.append_since {
            self.shared.latency.append(1, since);
        }
    }

    fn storage_failed(&mut self, message: String) {
        self.failing = true;
        let now = Instant::now();
        let log = match &self.storage_failure {
            None => true,
            Some(f) => {
                let since_logged = now.saturating_duration_since(f.logged_at);
                (f.logged != message && since_logged >= STORAGE_ERROR_CHANGED) || since_logged >= STORAGE_ERROR_REPEAT
            }
        };
        if log {
            let since = self.storage_failure.as_ref().map_or(now, |f| f.since);
            tracing::error!(
                error = %message,
                failing_for_s = now.saturating_duration_since(since).as_secs(),
                "cannot persist raft state; not acknowledging anything until it works"
            );
            self.storage_failure = Some(StorageFailure { since, logged: message.clone(), logged_at: now });
        }
        self.shared.set_error(STORAGE_ERROR, Some(message));
    }

    /// Everything that does not wait for the write: leadership news, apply, answer reads.
    fn finish_ready(&mut self, rd: Ready) {
        if let Some(ss) = rd.soft_state {
            if ss.leader != self.last_leader {
                if ss.leader.is_some() {
                    self.shared.metrics.leader_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::info!(term = self.raw.raft.term(), leader = ?ss.leader.map(|l| format!("{l:x}")), role = ?ss.role, "leadership changed");
                self.last_leader = ss.leader;
            }
        }
        if let Some(last) = rd.committed_entries.last() {
            self.shared.latency.passed(WritePoint::Committed, last.index);
        }
        self.apply_committed(&rd.committed_entries);
        if let Some(last) = rd.committed_entries.last() {
            self.shared.latency.forget_through(last.index);
        }
        for rs in &rd.read_states {
            if let Some(reply) = self.reads.remove(&rs.ctx) {
                let _ = reply.send(Ok(rs.index));
            }
        }
        for ctx in &rd.aborted_reads {
            if let Some(reply) = self.reads.remove(ctx) {
                let _ = reply.send(Err(NodeError::Unavailable("leadership changed during the read; retry".into())));
            }
        }
        self.raw.advance_apply();
        if self.raw.raft.role() != Role::Leader && !self.reads.is_empty() {
            // Reads registered on a leader that lost office without an abort notice.
            for (_, reply) in std::mem::take(&mut self.reads) {
                let _ = reply.send(Err(NodeError::Unavailable("not the leader any more; retry".into())));
            }
        }
    }

    /// Applies committed entries to the state machine as one batch, then answers their
    /// proposals. An answer goes out only once the batch is committed, so that a client that saw
    /// its write acknowledged reads it back from this member.
    fn apply_committed(&mut self, entries: &[Entry]) {
        let mut answers: Vec<(PendingProposal, Term, Option<ApplyResult>)> = Vec::new();
        // Outcomes for followers' writes waiting here (`forward::Outcomes`).
        let mut awaited = Vec::new();
        let wanted = self.shared.forward.outcomes.wanted();
        for entry in entries {
            if self.halted.is_some() {
                break;
            }
            self.applied_bytes = self.applied_bytes.saturating_add(entry.payload_bytes() as u64);
            self.learn_address(&entry.payload);
            let result = {
                let mut kv = write(&self.shared.kv);
                let applied = kv.applied_index();
                // The state machine keeps its own durable state and may have applied entries of
                // the log before a restart; those are skipped. A gap is not: skipping it and going
                // on would publish state that is missing entries.
                if entry.index <= applied {
                    Ok(None)
                } else if applied.checked_add(1) == Some(entry.index) {
                    Ok(Some(kv.apply(entry)))
                } else {
                    Err(applied)
                }
            };
            let result = match result {
                Ok(Some(result)) => {
                    self.note_conf_change(&entry.payload);
                    result
                }
                Ok(None) => continue,
                Err(applied) => {
                    self.halt(format!(
                        "the log hands out entry {} to apply, but the state machine applied up to {applied}",
                        entry.index
                    ));
                    break;
                }
            };
            if let Some(result) = &result {
                self.note_lease(result);
                // A member's record changed (MemberUpdate, or what it said of itself): its new peer
                // URL is where messages go now.
                if let ApplyResult::MemberUpdated { member, found: true } = result {
                    self.shared.addresses.set_peer_url(member.id, &member.peer_url);
                    self.shared.addresses.learn(member.id, &member.name, "", &member.client_url);
                }
            }
            if wanted {
                awaited.push((entry.index, entry.term, result.clone()));
            }
            if let Some(pending) = self.proposals.remove(&entry.index) {
                answers.push((pending, entry.term, result));
            }
            // Proposals below the applied index that never matched were overwritten.
            while let Some((&index, _)) = self.proposals.first_key_value() {
                if index > entry.index {
                    break;
                }
                if let Some((_, p)) = self.proposals.pop_first() {
                    if let Some(reply) = p.reply {
                        let _ = reply.send(Err(NodeError::Unavailable("the proposal was superseded".into())));
                    }
                    if let Some(reply) = p.conf_reply {
                        let _ = reply.send(Err(NodeError::Unavailable("the change was superseded".into())));
                    }
                }
            }
        }
        let flushed = write(&self.shared.kv).flush();
        if let Some(last) = entries.last() {
            self.shared.latency.passed(WritePoint::Applied, last.index);
        }
        let failed = flushed.as_ref().err().map(|e| e.to_string());
        self.shared.forward.outcomes.applied(awaited, read(&self.shared.kv).applied_index(), failed.as_deref());
        if let Err(e) = &flushed {
            self.halt(format!("cannot commit applied entries to the state machine: {e}"));
        }
        for (pending, term, result) in answers {
            let ours = pending.term == term;
            if let Some(reply) = pending.reply {
                let outcome = match (ours, result, &flushed) {
                    (_, _, Err(e)) => Err(NodeError::OutcomeUnknown(format!("the state machine failed: {e}"))),
                    (true, Some(r), Ok(())) => Ok(r),
                    (true, None, Ok(())) => Err(NodeError::OutcomeUnknown("the command could not be applied".into())),
                    (false, _, Ok(())) => {
                        Err(NodeError::Unavailable("the proposal was superseded by a new leader".into()))
                    }
                };
                let counter = if outcome.is_ok() {
                    &self.shared.metrics.proposals_committed
                } else {
                    &self.shared.metrics.proposals_failed
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = reply.send(outcome);
            }
            if let Some(reply) = pending.conf_reply {
                let outcome = if ours {
                    Ok(())
                } else {
                    Err(NodeError::Unavailable("the change was superseded by a new leader".into()))
                };
                let _ = reply.send(outcome);
            }
        }
    }

    /// Sends messages to peers. An InstallSnapshot goes out as the state machine's database
    /// as it stands, as etcd sends it: its metadata is restamped with the state machine's applied
    /// index and term and the configuration as of that index, and a stream of that point in
    /// time waits for the transport (`Shared::outgoing_snapshots`). Any applied (so committed)
    /// index at or after the log's snapshot is a sound snapshot point, and the leader's log
    /// holds every entry after it for the follower to continue with. When no stream can be
    /// made (a halted state machine), the message is dropped and the core sends again later.
    fn send(&mut self, messages: Vec<Message>) {
        let mut out = Vec::with_capacity(messages.len());
        for mut m in messages {
            if let MessageBody::InstallSnapshot { snapshot } = &mut m.body {
                match self.prepare_snapshot(snapshot.meta.index) {
                    Ok((meta, reader)) => {
                        snapshot.meta = meta;
                        snapshot.data = Bytes::new();
                        lock(&self.shared.outgoing_snapshots).insert(m.to, reader);
                    }
                    Err(why) => {
                        tracing::warn!(to = %format!("{:x}", m.to), "cannot send a snapshot: {why}");
                        continue;
                    }
                }
            }
            out.push(m);
        }
        self.outbox.send(out);
    }

    fn prepare_snapshot(&self, log_snapshot: Index) -> Result<(SnapshotMeta, SnapshotReader), String> {
        if let Some(why) = &self.halted {
            return Err(format!("the state machine is stopped: {why}"));
        }
        let kv = read(&self.shared.kv);
        let index = kv.applied_index();
        if index < log_snapshot {
            return Err(format!("the state machine applied {index}, before the log's snapshot at {log_snapshot}"));
        }
        let term = match kv.applied_term() {
            0 => self.raw.raft.log().term(index).ok_or_else(|| format!("the term of index {index} is unknown"))?,
            term => term,
        };
        let reader = kv.snapshot().map_err(|e| e.to_string())?;
        Ok((SnapshotMeta { index, term, conf: self.raw.raft.conf_at(index) }, reader))
    }

    /// Why an InstallSnapshot whose state machine streams beside it (its data left empty) must
    /// not reach the core: that state machine is not staged (`Shared::staged`). Once the core
    /// takes a snapshot, its metadata is persisted and the log before it is gone, and the WAL
    /// does not hold its data: without the staged state machine, the member would stand behind
    /// its own log, and a restart would find its data lost.
    fn unbacked_snapshot(&self, m: &Message) -> Option<String> {
        let MessageBody::InstallSnapshot { snapshot } = &m.body else { return None };
        if !snapshot.data.is_empty() {
            return None;
        }
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        match &*lock(&self.shared.staged) {
            Some(s) if (s.index, s.term) == (index, term) => None,
            Some(s) => Some(format!(
                "the state machine staged is of index {} (term {}), the message's of index {index} (term {term})",
                s.index, s.term
            )),
            None => Some(format!("no state machine is staged for index {index} (term {term})")),
        }
    }

    /// Replaces the state machine with the snapshot's, before the snapshot is persisted: the
    /// log is compacted only once a state machine that covers it is durable. The state machine
    /// comes staged by the transport (`Shared::staged`), or, from a kuberaft 0.1 or 0.2 leader,
    /// in the snapshot's data. Installing it twice (a Ready retried after a storage failure)
    /// does nothing. One that cannot be installed halts the state machine where it was (see
    /// `halted`): applying the entries after the snapshot to the old state, or saving that
    /// state as a snapshot of a later index, would serve and keep a history that never happened.
    fn install(&mut self, snapshot: &Snapshot) {
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        // Installed already (a Ready retried after a storage failure), or the state machine is
        // ahead (it applied past `index` before a restart, entries that were committed, so the
        // snapshot's are a prefix of them): the state machine stays as it is, and the entries
        // the core hands out up to its applied index are skipped.
        if read(&self.shared.kv).applied_index() >= index && self.halted.is_none() {
            let mut staged = lock(&self.shared.staged);
            if staged.as_ref().is_some_and(|s| (s.index, s.term) == (index, term)) {
                if let Some(s) = staged.take() {
                    s.kv.discard();
                }
            }
            // The core's log starts after `index` now: no snapshot is due before the threshold.
            self.last_snapshot_index = self.last_snapshot_index.max(index);
            self.applied_bytes = 0;
            return;
        }
        let live = read(&self.shared.kv).path().map(Path::to_path_buf);
        let staged = if snapshot.data.is_empty() {
            match lock(&self.shared.staged).take() {
                Some(mut s) if (s.index, s.term) == (index, term) => {
                    s.kv.check_against(index, term).map(|()| s.kv).map_err(|e| e.to_string())
                }
                Some(s) => {
                    let why = format!("the state machine received is of index {} (term {})", s.index, s.term);
                    s.kv.discard();
                    Err(why)
                }
                None => Err("no state machine was received with it".to_string()),
            }
        } else {
            // A stream staged earlier and never installed is superseded.
            if let Some(old) = lock(&self.shared.staged).take() {
                old.kv.discard();
            }
            let staging = live.as_deref().map(staging_path);
            blocking(|| KvStore::from_legacy_snapshot(staging.as_deref(), snapshot).map_err(|e| e.to_string()))
        };
        let installed = staged.and_then(|staged| {
            blocking(|| {
                let mut kv = write(&self.shared.kv);
                // Tokens stay with the member (its TTL), but none survives the install: the
                // snapshot may have deleted their users (as a restart, the clients authenticate again).
                let tokens = kv.tokens();
                tokens.forget(&crate::store::auth::Forget::All);
                // The live database closes before the staged one takes its place.
                drop(std::mem::take(&mut *kv));
                match KvStore::replace_with(live.as_deref(), staged) {
                    Ok(mut new) => {
                        new.set_tokens(tokens);
                        *kv = new;
                        Ok(())
                    }
                    Err(e) => {
                        // Back to the state machine that was there, which is unchanged on disk.
                        if let Some(mut reopened) = live.as_deref().and_then(|p| KvStore::open(p).ok()) {
                            reopened.set_tokens(tokens);
                            *kv = reopened;
                        }
                        Err(e.to_string())
                    }
                }
            })
        });
        match installed {
            Ok(()) => {
                self.last_snapshot_index = index;
                self.applied_bytes = 0;
                // Writes proposed up to `index` may be in the snapshot or not (an old leader's,
                // that a new leader committed or overwrote): their outcomes are unknown.
                let after = self.proposals.split_off(&index.saturating_add(1));
                for (_, p) in std::mem::replace(&mut self.proposals, after) {
                    p.unknown("this member caught up from a snapshot past the write");
                }
                self.shared.forward.outcomes.jumped(index);
                self.shared.metrics.snapshots_received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.shared.timeline.record(self.raw.raft.term(), EventKind::SnapshotInstalled { index });
                tracing::info!(index, term, "installed snapshot");
                let members = read(&self.shared.kv).members();
                for (info, _) in members {
                    self.remember(info);
                }
                self.load_leases();
                if self.halted.take().is_some() {
                    tracing::info!(index, "a snapshot installed; the state machine applies again");
                    self.shared.set_error(HALT_ERROR, None);
                }
            }
            Err(e) => self.halt(format!(
                "cannot install the snapshot of index {index} (term {term}): {e}. Replace this member \
                 (remove it, clear its data directory, add it back), or run a kuberaft version that reads it"
            )),
        }
    }

    /// Stops the state machine until a snapshot installs (see `halted`), and fails what waits on it.
    fn halt(&mut self, why: String) {
        let applied = read(&self.shared.kv).applied_index();
        tracing::error!(
            applied,
            "the state machine stopped: {why}; this member applies nothing more and serves no reads"
        );
        self.shared.set_error(HALT_ERROR, Some(format!("stopped at index {applied}: {why}")));
        // Pending proposals may still commit, but this member will never apply them.
        let unknown = format!("this member stopped applying: {why}");
        for (_, p) in std::mem::take(&mut self.proposals) {
            p.unknown(&unknown);
        }
        for (_, reply) in std::mem::take(&mut self.reads) {
            let _ = reply.send(Err(halted_error(&why)));
        }
        self.shared.forward.outcomes.fail_all(&why);
        self.halted = Some(why);
    }

    /// A halted leader cannot answer proposals or reads, and its log wins elections as well as
    /// anyone's: it offers leadership to the most caught-up voter, again every second while it
    /// still leads.
    fn hand_off_if_halted(&mut self) {
        if self.halted.is_none() || self.raw.raft.role() != Role::Leader {
            return;
        }
        if self.last_handoff.is_some_and(|at| at.elapsed() < HANDOFF_RETRY) {
            return;
        }
        // Every `HANDOFF_RETRY`, whether or not a voter was reached.
        self.last_handoff = Some(Instant::now());
        match self.hand_off() {
            Some(Ok(to)) => {
                tracing::warn!(to = %format!("{to:x}"), "the state machine is stopped: handing leadership away")
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the state machine is stopped, and leadership cannot be handed away")
            }
            None => tracing::warn!("the state machine is stopped, and no other voter is reachable to lead"),
        }
    }

    /// A leader records what members say of themselves in their messages (their headers,
    /// `note_peer_urls`): a client URL that a member's record lacks or holds otherwise, and the
    /// name of a member added without one (etcd's MemberAdd), go into the record through the log
    /// (`Command::UpdateMember`, a record again after `PUBLISH_RETRY`), as etcd's members publish theirs,
    /// so that every member lists every member's client URL, not only those it hears from.
    fn publish_members(&mut self) {
        let raft = &self.raw.raft;
        if raft.role() != Role::Leader || !raft.committed_in_current_term() || self.failing {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.publishing.0) < PUBLISH_CHECK {
            return;
        }
        self.publishing.0 = now;
        if self.publishing.1 != raft.term() {
            self.publishing = (now, raft.term(), BTreeMap::new());
        }
        let updates: Vec<MemberInfo> = read(&self.shared.kv)
            .members()
            .into_iter()
            .filter_map(|(record, _)| {
                let said = self.shared.address(record.id)?;
                let client_url =
                    (!said.client_url.is_empty() && said.client_url != record.client_url).then_some(said.client_url);
                let name = (record.name.is_empty() && !said.name.is_empty()).then_some(said.name);
                if client_url.is_none() && name.is_none() {
                    return None;
                }
                Some(MemberInfo {
                    id: record.id,
                    name: name.unwrap_or(record.name),
                    peer_url: record.peer_url,
                    client_url: client_url.unwrap_or(record.client_url),
                })
            })
            // The same record again only once a proposal of it may have been lost.
            .filter(|update| {
                !self
                    .publishing
                    .2
                    .get(&update.id)
                    .is_some_and(|(u, at)| u == update && now.duration_since(*at) < PUBLISH_RETRY)
            })
            .collect();
        for update in updates {
            let command = Command::UpdateMember {
                id: update.id,
                name: Some(update.name.clone()),
                peer_url: None,
                client_url: Some(update.client_url.clone()),
            };
            if self.raw.raft.propose(encode(&command)).is_ok() {
                self.publishing.2.insert(update.id, (update, now));
            }
        }
    }

    /// A leader records every member it has heard acknowledge its log, itself included, as
    /// holding data (`Command::Seen`, once per member), so that a member that later starts with
    /// empty data is known to have lost it, under `new` too (`node::join::decide_new`).
    fn mark_members_with_data(&mut self) {
        let raft = &self.raw.raft;
        if raft.role() != Role::Leader || !raft.committed_in_current_term() || self.failing {
            return;
        }
        if self.marking.0 != raft.term() {
            self.marking = (raft.term(), std::collections::BTreeSet::new());
        }
        let unmarked: Vec<NodeId> = {
            let kv = read(&self.shared.kv);
            let conf = raft.conf();
            conf.voters
                .iter()
                .chain(conf.learners.iter())
                .filter(|id| raft.progress(**id).is_some_and(|p| p.matched > 0))
                .filter(|id| !kv.joined(**id) && !self.marking.1.contains(*id))
                .copied()
                .collect()
        };
        for id in unmarked {
            if self.raw.raft.propose(encode(&Command::Seen { id })).is_ok() {
                self.marking.1.insert(id);
            }
        }
    }

    fn learn_address(&mut self, payload: &EntryPayload) {
        if let EntryPayload::ConfChange(cc) = payload {
            if matches!(cc.kind, ConfChangeKind::AddLearner | ConfChangeKind::AddVoter) {
                if let Ok(info) = decode::<MemberInfo>(&cc.context) {
                    if info.id == cc.node_id {
                        self.remember(info);
                    }
                }
            }
        }
    }

    /// A membership change that applied, for the timeline.
    fn note_conf_change(&self, payload: &EntryPayload) {
        if let EntryPayload::ConfChange(cc) = payload {
            let change = match cc.kind {
                ConfChangeKind::AddLearner => "add_learner",
                ConfChangeKind::AddVoter => "add_voter",
                ConfChangeKind::Promote => "promote",
                ConfChangeKind::Remove => "remove",
            };
            let member = timeline::member(cc.node_id);
            self.shared.timeline.record(self.raw.raft.term(), EventKind::Membership { change, member });
        }
    }

    fn remember(&self, info: MemberInfo) {
        self.shared.addresses.learn(info.id, &info.name, &info.peer_url, &info.client_url);
    }

    /// Reclaims the space of compacted history a bounded slice at a time (chunks for at most
    /// `RECLAIM_SLICE` per pass), as etcd's compaction runs in batches beside its apply loop: a
    /// compaction of millions of revisions never holds the Raft loop for long.
    fn reclaim_compacted(&mut self) {
        if self.halted.is_some() || !read(&self.shared.kv).compaction_pending() {
            return;
        }
        let started = Instant::now();
        let flushed = blocking(|| {
            let mut kv = write(&self.shared.kv);
            let mut more = true;
            while more && started.elapsed() < RECLAIM_SLICE {
                more = kv.compact_step();
                self.reclaimed_chunks += 1;
            }
            // redb reuses the pages a commit frees only after the next durable commit, and the
            // snapshots that make one come with new entries, not with reclaiming. Without one
            // here every page the reclaim rewrote would be new: the file grew by about the whole
            // reclaimed history (300k keys of 1 KiB: 1,101 -> 2,189 MiB). At 1M keys, a new
            // member's catch-up during the reclaim took 171 s without these, 9.2 s with them.
            if !more || self.reclaimed_chunks >= RECLAIM_CHUNKS_PER_PERSIST {
                self.reclaimed_chunks = 0;
                kv.persist()
            } else {
                kv.flush()
            }
        });
        if let Err(e) = flushed {
            self.halt(format!("cannot reclaim the space of compacted history: {e}"));
        }
    }

    /// Compacts the log into a snapshot of the state machine every `snapshot_threshold` entries.
    /// The core labels the snapshot with its own applied index, so only a state machine that
    /// applied exactly that far is saved (never one that is halted or out of step).
    fn maybe_snapshot(&mut self) {
        let applied = self.raw.raft.applied_index();
        let due = applied >= self.last_snapshot_index.saturating_add(self.snapshot_threshold)
            || (self.applied_bytes >= self.snapshot_bytes && applied > self.last_snapshot_index);
        if self.halted.is_some() || !due {
            return;
        }
        let started = Instant::now();
        let kv_applied = read(&self.shared.kv).applied_index();
        if kv_applied < applied {
            self.halt(format!("the state machine applied up to {kv_applied}, the log up to {applied}"));
            return;
        }
        if kv_applied > applied {
            // Ahead of the core (it applied these before a restart, and the core has not yet
            // learned they are committed): the snapshot waits until the core catches up.
            return;
        }
        let persisted = blocking(|| write(&self.shared.kv).persist());
        // The state machine is its own snapshot: once it is durable up to `applied`, the log up
        // to there can go. The snapshot the core and the storage keep is only its metadata.
        if let Err(e) = persisted {
            tracing::warn!(error = %e, "could not make the state machine durable; the log keeps growing until it works");
            return;
        }
        let data = Bytes::new();
        let keep = self.catch_up_entries(applied);
        match self.raw.raft.compact_keeping(data.clone(), keep) {
            Ok(meta) => {
                let index = meta.index;
                if let Err(e) = blocking(|| lock(self.writer.storage()).compact(&Snapshot { meta, data })) {
                    tracing::warn!(error = %e, "could not save a snapshot; the log keeps growing until it works");
                } else {
                    tracing::debug!(index, "snapshot taken, log compacted");
                }
                // The next one is due `snapshot_threshold` entries after this one's applied
                // index (the log base trails it by the catch-up entries).
                self.last_snapshot_index = applied;
                self.applied_bytes = 0;
                self.shared.metrics.observe_snapshot(started.elapsed());
            }
            Err(e) => tracing::debug!(error = %e, "no snapshot"),
        }
    }

    /// How many entries up to `applied` a snapshot at `applied` leaves in the log: at most
    /// `SNAPSHOT_CATCH_UP_ENTRIES` and half the interval in entries, and, newest first, no more
    /// than half of `snapshot_bytes` in bytes (at least one entry: the newest is kept whatever
    /// its size, as a count would).
    fn catch_up_entries(&self, applied: Index) -> u64 {
        let most = SNAPSHOT_CATCH_UP_ENTRIES.min(self.snapshot_threshold / 2);
        let budget = self.snapshot_bytes / 2;
        let log = self.raw.raft.log();
        let mut bytes = 0u64;
        let mut keep = 0;
        while keep < most {
            let Some(entry) = applied.checked_sub(keep).and_then(|index| log.entry(index)) else { break };
            bytes = bytes.saturating_add(entry.payload_bytes() as u64);
            if keep > 0 && bytes > budget {
                break;
            }
            keep += 1;
        }
        keep
    }

    /// Appends a follower's commands to this leader's log, all in this turn (so that they
    /// commit together): per command, where, or why not (`node::forward`).
    fn place(&mut self, commands: Vec<Bytes>, received: Instant) -> Vec<Result<(Index, Term), NodeError>> {
        commands
            .into_iter()
            .map(|data| {
                let (index, term) = self.raw.raft.propose(data)?;
                self.shared.latency.proposed(index, received);
                Ok((index, term))
            })
            .collect()
    }

    /// Places the commands follower `from` proposed on the peer stream as `batch`, and answers
    /// where with a `Placed` on the same way back. Not the leader, or a batch that is not all
    /// commands: each is refused, to be retried (the follower's client sees `Unavailable`).
    fn place_for(&mut self, from: NodeId, batch: u64, commands: Vec<Bytes>) {
        let refused = if self.raw.raft.role() != Role::Leader {
            Some("not the leader".to_string())
        } else {
            forward::checked_commands(&commands).err()
        };
        match refused {
            Some(why) => self.refuse_placing(from, batch, commands.len(), &NodeError::Unavailable(why)),
            None => {
                let placed = self.place(commands, Instant::now());
                self.answer_placing(from, batch, placed);
            }
        }
    }

    /// Refuses each of the `count` commands of `from`'s `Propose` `batch` with `why` (a refusal
    /// before proposing: the loop is not the leader, its storage is failing, or it halted, as
    /// `Input::Place` is refused).
    fn refuse_placing(&mut self, from: NodeId, batch: u64, count: usize, why: &NodeError) {
        self.answer_placing(from, batch, (0..count).map(|_| Err(why.clone())).collect());
    }

    fn answer_placing(&mut self, from: NodeId, batch: u64, placed: Vec<Result<(Index, Term), NodeError>>) {
        let answer = forward::encode_placed(placed);
        let body = MessageBody::Placed { batch, answer };
        self.outbox.send(vec![Message { from: self.shared.id, to: from, term: self.raw.raft.term(), body }]);
    }

    /// A transfer this leader was asked for (by a client, or before it shuts down), for the
    /// timeline.
    fn note_transfer<E>(&self, outcome: &Result<NodeId, E>) {
        if let Ok(to) = outcome {
            self.shared.timeline.record(self.raw.raft.term(), EventKind::Transfer { to: timeline::member(*to) });
        }
    }

    /// Records on the timeline what changed since the status last published: campaigns this
    /// member started, and the leader it knows.
    fn note_changes(&mut self, status: &LoopStatus) {
        let campaigns = self.raw.raft.campaigns();
        if campaigns.count > self.campaigns_seen {
            self.campaigns_seen = campaigns.count;
            if let Some((kind, for_term)) = campaigns.last {
                let cause = timeline::cause(kind, self.raw.raft.config().pre_vote);
                let event = EventKind::Campaign { cause, for_term, campaigns: campaigns.count };
                self.shared.timeline.record(status.term, event);
            }
        }
        let before = {
            let old = read(&self.shared.status);
            (old.term, old.leader)
        };
        if before != (status.term, status.leader) {
            match status.leader {
                Some(leader) => {
                    let event = EventKind::Leader { leader: timeline::member(leader) };
                    self.shared.timeline.record(status.term, event);
                }
                None if before.1.is_some() => self.shared.timeline.record(status.term, EventKind::LeaderLost),
                None => {}
            }
        }
    }

    fn publish(&mut self) {
        let raft = &self.raw.raft;
        let me = raft.id();
        // A leader that cannot persist cannot commit: it stops presenting itself as the leader
        // (to clients, in /v1/status and /readyz) while its followers elect another one. If
        // nobody did by the time it recovers, it simply goes on leading.
        let (role, leader) = match raft.role() {
            Role::Leader if self.failing => (Role::Follower, None),
            role => (role, raft.leader()),
        };
        let matched = if role == Role::Leader {
            raft.conf()
                .voters
                .iter()
                .chain(raft.conf().learners.iter())
                .filter_map(|id| raft.progress(*id).map(|p| (*id, p.matched)))
                .collect()
        } else {
            BTreeMap::new()
        };
        let status = LoopStatus {
            role,
            term: raft.term(),
            leader,
            commit_index: raft.commit_index(),
            // The state machine's own index: what a read served here really reflects (the
            // core's may be ahead of it when the state machine is halted).
            applied_index: read(&self.shared.kv).applied_index(),
            last_index: raft.log().last_index(),
            last_term: raft.log().last_term(),
            voter: raft.conf().voters.contains(&me),
            matched,
            committed_in_term: role == Role::Leader && raft.committed_in_current_term(),
        };
        let applied = status.applied_index;
        // The lessor counts time only on the leader: promoted once this member leads and has
        // applied an entry of its term (`Lessor::primary_term`), demoted when it stops.
        // Before `applied` is published, so that a keep-alive whose read barrier passed finds
        // the lessor promoted.
        let mut lessor = lock(&self.shared.lessor);
        let leads = lessor.primary_term(&self.raw.raft);
        if leads != self.leading {
            if leads.is_some() {
                lessor.promote(self.shared.lease_now_ms(), self.lease_extend_ms());
            } else {
                lessor.demote();
            }
            self.leading = leads;
        }
        drop(lessor);
        self.note_changes(&status);
        *write(&self.shared.status) = status;
        self.shared.applied.send_if_modified(|old| {
            let changed = *old != applied;
            *old = applied;
            changed
        });
    }
}

/// Records the URLs (and the name) a peer announced in its message headers. A member must be
/// able to answer whoever talks to it: one that joined with empty data knows nobody's peer URL
/// until its log (or a snapshot) tells it, and the leader may be a member added after the
/// initial list. A leader also records them in the membership (`publish_members`).
pub fn note_peer_urls(
    shared: &Shared,
    id: NodeId,
    peer_url: Option<&str>,
    client_url: Option<&str>,
    name: Option<&str>,
) {
    fn valid(url: Option<&str>) -> &str {
        url.filter(|u| crate::base::ids::validate_url(u).is_ok()).unwrap_or_default()
    }
    let name = name.filter(|n| n.len() <= MAX_NAME_BYTES).unwrap_or_default();
    shared.addresses.learn(id, name, valid(peer_url), valid(client_url));
}

/// The longest member name a peer's header may announce.
const MAX_NAME_BYTES: usize = 253;

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;

/// How often the state machine's file is written back to disk in the background (`Writeback`).
pub(crate) const WRITEBACK_EVERY: Duration = Duration::from_millis(25);

/// Writes the state machine's file (`kv.db`) back to disk in the background, every `every`
/// while entries are being applied, on its own thread, until dropped.
///
/// redb keeps the pages of its non-durable commits in a write buffer (half its cache) and writes
/// the overflow to the file without syncing it, so the durable commit before each log compaction
/// used to write out and sync a whole snapshot interval's pages on the Raft thread: at 1M keys of
/// 1 KiB, where each random overwrite dirties its own leaf, 183 ms on average (engine alone),
/// 234 ms in a cluster, and the put p99 there followed. With the pages already on their way to
/// disk and a small cache (`DEFAULT_CACHE_BYTES`), the durable commit is left with the write
/// buffer's pages and one fsync: 18-26 ms in the same engine run.
///
/// This is `sync_file_range(SYNC_FILE_RANGE_WRITE)`, as RocksDB's `bytes_per_sync`: it starts the
/// writeback and waits for neither it, the device's cache nor the file system's journal, so the
/// WAL's own fsyncs do not queue behind it (an `fdatasync` every 50 ms did that: the put p99 at
/// 10k keys tripled). It is safe at any time: it only writes pages sooner, and durability is
/// still decided by redb's commit. The file is opened anew each time, so a state machine
/// replaced by a snapshot is followed, and a failure changes nothing.
/// Each one started counts in `Metrics::writebacks`.
pub(crate) struct Writeback {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writeback {
    pub(crate) fn start(shared: Arc<Shared>, every: Duration) -> Writeback {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kv-writeback".into())
            .spawn(move || {
                let mut written_up_to = None;
                while !stopping.load(Relaxed) {
                    std::thread::park_timeout(every);
                    let (path, applied) = {
                        let kv = read(&shared.kv);
                        (kv.path().map(Path::to_path_buf), kv.applied_index())
                    };
                    let Some(path) = path else { continue };
                    if written_up_to == Some(applied) {
                        continue;
                    }
                    if crate::store::fs::start_writeback(&path).is_ok() {
                        written_up_to = Some(applied);
                        shared.metrics.writebacks.fetch_add(1, Relaxed);
                    }
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "no background writeback of the state machine"))
            .ok();
        Writeback { stop, thread }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

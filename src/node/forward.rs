//! A follower's writes and linearizable reads, served with the leader's help over the peer
//! port, as etcd's followers serve them (issue 15).
//!
//! - **Writes.** A follower sends the encoded commands its clients asked for to the leader in
//!   batches: on the peer stream as a `MessageBody::Propose` (etcd's MsgProp), to a leader that
//!   says it takes them (the [`HEADER_TAKES`] header of its peer requests), otherwise as a
//!   request (`POST /raft/v1/place`). The leader's Raft loop appends each to its log and answers
//!   at once with where it placed it: the entry's index and term (a `MessageBody::Placed` on
//!   the stream back, or the request's answer). The follower then takes each write's
//!   outcome from its own apply of that entry ([`Outcomes`]), as etcd's followers do (their
//!   wait registry is keyed by request id; ours by entry): a client that reads back through the
//!   member it wrote through sees its write, and the answer does not wait for the leader's
//!   apply and a second trip. An entry of another term at that index means the write was
//!   overwritten by a new leader and never applies (safe to retry). Only commands whose outcome
//!   is small go this way (`Command::answer_is_small`).
//! - **Linearizable reads.** A follower asks the leader for a read index (`POST
//!   /raft/v1/read-index`): the leader's commit index, confirmed by a quorum (thesis §6.4). It
//!   then serves the read from its own state once it applied that far. Every read that arrived
//!   before the request was sent shares its answer; one that arrives later waits for a later
//!   request, which is what makes it linearizable (thesis §6.4.1).
//! - **Lease keep-alives.** A follower renews them through the leader (`POST
//!   /raft/v1/lease-renew`), which confirms that it leads once per batch, as etcd's followers
//!   forward each keep-alive to the leader.
//!
//! The leader serves at most [`FORWARDED_SLOTS`] such requests at once, a third of its peer port's
//! request slots, so that Raft's own messages always find one; past it a request is refused as
//! retryable (503).
//!
//! Each kind is batched: while a request of it is out, new work waits, and the next request
//! takes all that waited (up to [`MAX_BATCH`] commands), as etcd's followers keep one ReadIndex
//! request out at a time: one client alone pays one round trip; many share one. Proposals on the
//! stream do not wait for the last batch's answer (up to [`STREAM_IN_FLIGHT`] out): a batch there
//! costs a frame, not a request. A batch on the stream that the leader does not answer, because a
//! message was lost or the leader changed, has an unknown outcome as soon as another member
//! leads, or after `PLACE_BATCH_TIMEOUT`. A request out for longer than [`SLOW`] (a leader gone
//! quiet, whose answer waits for a timeout) no longer holds the next back: up to [`IN_FLIGHT`]
//! may be out then. A leader that does not know the routes (an older kuberaft answers 404) is
//! remembered, and its followers forward whole calls as before.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::handle::{NodeHandle, PROPOSE_TIMEOUT, READ_TIMEOUT};
use super::runtime::NodeError;
use super::shared::{lock, Shared};
use super::transport::{check_sender, peer_request, read_batch, reject, PeerServer, BATCH_TARGET_BYTES};
use super::writer::Courier;
use crate::http::client::{self, Dial, HttpClient};
use crate::http::tls::ClientTls;
use crate::raft::{Index, Message, MessageBody, NodeId, Term};
use crate::store::codec;
use crate::store::command::{decode_command, ApplyResult};

pub const PLACE_PATH: &str = "/raft/v1/place";
pub const READ_INDEX_PATH: &str = "/raft/v1/read-index";
pub const LEASE_RENEW_PATH: &str = "/raft/v1/lease-renew";
/// A peer request's header that says what the sender takes on its peer streams: `propose` (a
/// follower's writes as `MessageBody::Propose`, answered with `MessageBody::Placed`). Members
/// that do not send it are sent placements as requests (`PLACE_PATH`).
pub const HEADER_TAKES: &str = "x-kuberaft-takes";
pub const TAKES_PROPOSE: &str = "propose";

/// The most commands one forwarded batch carries.
pub const MAX_BATCH: usize = 1024;
/// Requests of each kind out to the leader at once, at most; more than one only while the
/// oldest has been out for [`SLOW`].
const IN_FLIGHT: usize = 4;
/// Batches of proposals out on the peer stream at once, at most: enough that a write does not
/// wait for a slot at 256 clients through 3 members (a batch then carries one or two writes),
/// and a bound on what a leader gone quiet holds (each batch ends within `PLACE_BATCH_TIMEOUT`).
/// At 4, writes waited behind the batches out for a whole trip to the leader: put at 64 clients
/// ran 14 % slower (docs/DESIGN.md §5).
const STREAM_IN_FLIGHT: usize = 64;
/// A forwarded request the leader has not answered in this long no longer holds the next one
/// back (a leader answers within a millisecond or two, a few under heavy load).
const SLOW: Duration = Duration::from_millis(50);
/// Forwarded requests a leader serves at once (a third of `PEER_PORT.max_requests`, so that
/// message streams and snapshots always find room).
pub const FORWARDED_SLOTS: usize = crate::http::serve::PEER_PORT.max_requests / 3;
/// Work waiting to be forwarded, per kind; past it a request fails as overloaded.
const QUEUE: usize = 8192;
/// The leader answers a batch of proposals within this (its Raft loop takes them within
/// `PROPOSE_TIMEOUT`).
const PLACE_BATCH_TIMEOUT: Duration = Duration::from_secs(PROPOSE_TIMEOUT.as_secs() + 2);
/// The leader's answer to a batch: per command a place of a few bytes, or an error's reason of
/// at most a few hundred.
const MAX_PLACE_ANSWER_BYTES: usize = MAX_BATCH * 512 + 1024;
/// Outcomes a follower keeps of what it applied while placements are under way
/// ([`Outcomes`]): an entry may apply before the leader's answer naming it arrives. Past this
/// the oldest go, and a write that finds its outcome gone has an unknown one.
const MAX_RECENT: usize = 16_384;
const MAX_READ_INDEX_ANSWER_BYTES: usize = 1024;
/// Per lease a TTL, or an error's reason of at most a few hundred bytes.
const MAX_RENEW_ANSWER_BYTES: usize = MAX_BATCH * 512 + 1024;

/// Where the leader placed a write in its log. The write applies, with the outcome that every
/// member's apply of the entry computes, if and only if the entry committed at `index` is of
/// `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub index: Index,
    pub term: Term,
}

/// The leader's answer to a batch of proposals: per command, in order, its place or why it was
/// not proposed.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlaceAnswer {
    pub placed: Vec<Result<Placed, NodeError>>,
}

impl PlaceAnswer {
    /// From the Raft loop's answer: per command, (index, term) or why not.
    fn of(placed: Vec<Result<(Index, Term), NodeError>>) -> PlaceAnswer {
        PlaceAnswer { placed: placed.into_iter().map(|p| p.map(|(index, term)| Placed { index, term })).collect() }
    }
}

/// The leader's answer to a read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadIndexAnswer {
    pub index: Index,
}

type Reply<R> = oneshot::Sender<Result<R, NodeError>>;
/// A batch's answers: per item, in order, or one failure for all.
type Answers<R> = Result<Vec<Result<R, NodeError>>, NodeError>;
type Queue<T, R> = mpsc::Sender<(T, Reply<R>)>;
/// Batches out on the peer stream: per number, the leader, and the way to their sender.
type Pending = HashMap<u64, (NodeId, oneshot::Sender<Bytes>)>;

/// A follower's way to its leader (one per member, in `Shared`).
pub struct Forwarder {
    http: HttpClient,
    proposals: OnceLock<Queue<Bytes, Awaiting>>,
    reads: OnceLock<Queue<(), Index>>,
    renewals: OnceLock<Queue<i64, i64>>,
    /// Leaders that answered 404: an older kuberaft, whose followers forward whole calls.
    older: Mutex<BTreeSet<NodeId>>,
    /// Peers that said they take proposals on their peer streams ([`HEADER_TAKES`]).
    streamed: Mutex<BTreeSet<NodeId>>,
    /// How this member's messages reach its peers: the transport's queues (set once it runs).
    courier: OnceLock<Arc<dyn Courier>>,
    /// Batches proposed on the peer stream that wait for the leader's `Placed`, by number: the
    /// leader they went to, and where its answer goes.
    pending: Arc<Mutex<Pending>>,
    next_batch: AtomicU64,
    /// The writes placed through the leader that wait for this member's apply.
    pub outcomes: Outcomes,
}

impl Forwarder {
    /// `local_ip` and `tls`: dial the leader as the peer transport does.
    pub fn new(local_ip: Option<IpAddr>, tls: Option<Arc<ClientTls>>) -> Forwarder {
        Forwarder {
            // Every request in flight (three kinds) keeps its connection for the next.
            http: HttpClient::new(Dial { max_idle_per_host: 3 * IN_FLIGHT, ..Dial::peer(local_ip).with_tls(tls) }),
            proposals: OnceLock::new(),
            reads: OnceLock::new(),
            renewals: OnceLock::new(),
            older: Mutex::new(BTreeSet::new()),
            streamed: Mutex::new(BTreeSet::new()),
            courier: OnceLock::new(),
            pending: Arc::default(),
            next_batch: AtomicU64::new(1),
            outcomes: Outcomes::default(),
        }
    }

    /// Proposals go to the leader on the peer streams, through `courier`, when it takes them.
    pub fn set_courier(&self, courier: Arc<dyn Courier>) {
        let _ = self.courier.set(courier);
    }

    /// Peer `from` said (with `takes`) whether it takes proposals on its peer streams: the
    /// [`HEADER_TAKES`] header of its last stream or batch.
    pub(super) fn note_takes(&self, from: NodeId, takes: bool) {
        let mut streamed = lock(&self.streamed);
        if takes {
            streamed.insert(from);
        } else {
            streamed.remove(&from);
        }
    }

    /// Peer `from`'s answer to the proposals sent to it on the stream as `batch`.
    pub(super) fn placed(&self, from: NodeId, batch: u64, answer: Bytes) {
        let mut pending = lock(&self.pending);
        if pending.get(&batch).is_some_and(|(leader, _)| *leader == from) {
            if let Some((_, waiting)) = pending.remove(&batch) {
                let _ = waiting.send(answer);
            }
        }
    }

    /// Whether `leader` takes forwarded proposals and read-index requests.
    pub fn takes(&self, leader: NodeId) -> bool {
        !lock(&self.older).contains(&leader)
    }

    /// Proposes `data` (an encoded command) through the leader, and waits (within
    /// `PROPOSE_TIMEOUT` of its place) for its outcome from this member's apply of it.
    pub async fn propose(&self, shared: &Arc<Shared>, data: Bytes) -> Result<ApplyResult, NodeError> {
        let queue = self.proposals.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let (weak, http) = (Arc::downgrade(shared), self.http.clone());
            // On the peer stream a batch costs little: the next leaves without waiting for the
            // answer to the last.
            let stream = weak.clone();
            let pace = move || match stream.upgrade() {
                Some(shared) if streamed_leader(&shared).is_some() => ON_STREAM,
                _ => REQUESTS,
            };
            tokio::spawn(batches(rx, pace, move |commands| send_proposals(weak.clone(), http.clone(), commands)));
            tx
        });
        let taken = Instant::now();
        let awaiting = ask(queue, data, "proposals").await?;
        shared.latency.placed(0, taken);
        let outcome = awaiting.outcome(PROPOSE_TIMEOUT).await?;
        shared.latency.placed(1, taken);
        Ok(outcome)
    }

    /// A read index from the leader, confirmed by a quorum after this call began.
    pub async fn read_index(&self, shared: &Arc<Shared>) -> Result<Index, NodeError> {
        let queue = self.reads.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let (weak, http) = (Arc::downgrade(shared), self.http.clone());
            tokio::spawn(batches(
                rx,
                || REQUESTS,
                move |reads: Vec<()>| send_read_index(weak.clone(), http.clone(), reads.len()),
            ));
            tx
        });
        ask(queue, (), "reads").await
    }

    /// Renews lease `id` on the leader (etcd's LeaseKeepAlive, which etcd's followers forward to
    /// the leader one by one): its TTL, 0 for a lease that does not exist.
    pub async fn renew(&self, shared: &Arc<Shared>, id: i64) -> Result<i64, NodeError> {
        let queue = self.renewals.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let (weak, http) = (Arc::downgrade(shared), self.http.clone());
            tokio::spawn(batches(rx, || REQUESTS, move |ids| send_renewals(weak.clone(), http.clone(), ids)));
            tx
        });
        ask(queue, id, "keep-alives").await
    }

    fn mark_older(&self, leader: NodeId) {
        lock(&self.older).insert(leader);
    }
}

/// Queues `item` and waits for its answer.
async fn ask<T, R>(queue: &Queue<T, R>, item: T, what: &str) -> Result<R, NodeError> {
    let (reply, answer) = oneshot::channel();
    queue
        .try_send((item, reply))
        .map_err(|_| NodeError::Unavailable(format!("too many {what} waiting for the leader; retry")))?;
    answer.await.unwrap_or_else(|_| Err(NodeError::Unavailable("the member is stopping".into())))
}

/// How a kind of forwarded work goes out: the next batch leaves once fewer than `most` are out
/// and the oldest out has been out for `slow`.
#[derive(Clone, Copy, Debug)]
struct Pace {
    slow: Duration,
    most: usize,
}

/// Requests: one out at a time while the leader answers within [`SLOW`], up to [`IN_FLIGHT`]
/// while it does not.
const REQUESTS: Pace = Pace { slow: SLOW, most: IN_FLIGHT };
/// Proposals on the peer stream: each batch leaves at once, up to [`STREAM_IN_FLIGHT`] out.
const ON_STREAM: Pace = Pace { slow: Duration::ZERO, most: STREAM_IN_FLIGHT };

/// Sends what waits in `rx` in batches until every sender is gone, paced by `pace()` (asked
/// before each batch): the next leaves once fewer than `most` are out and the oldest out has
/// been out for `slow`. `send` answers a batch: per item, in order, or one failure for all.
///
/// Requests ([`REQUESTS`]) go one at a time while the leader answers within [`SLOW`], which
/// makes the batches large under load: at 64 clients through 3 members, a follower sent a
/// request per 2.2 writes with 4 out at once and per 5.7 to 6.5 with one, and the members spent
/// 3-15 % less CPU per write in alternating runs (docs/DESIGN.md §5). On the peer stream
/// ([`ON_STREAM`]), where a batch costs a frame and no request, proposals leave at once.
async fn batches<T, R, S, F, Fut>(mut rx: mpsc::Receiver<(T, Reply<R>)>, pace: S, send: F)
where
    S: Fn() -> Pace,
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Answers<R>> + Send + 'static,
{
    // When each batch out was sent, by a number of its own.
    let (out_tx, mut out) = tokio::sync::watch::channel(BTreeMap::<u64, tokio::time::Instant>::new());
    let out_tx = Arc::new(out_tx);
    // Bounded: one pass per batch sent.
    for number in 0u64.. {
        let Pace { slow, most } = pace();
        // Bounded: each pass waits for a batch to end or for the oldest to turn slow.
        loop {
            let (count, oldest) = {
                let out = out.borrow_and_update();
                (out.len(), out.values().min().copied())
            };
            let Some(oldest) = oldest else { break };
            if count < most && oldest.elapsed() >= slow {
                break;
            }
            let turns_slow =
                if count < most { oldest + slow } else { tokio::time::Instant::now() + PLACE_BATCH_TIMEOUT };
            tokio::select! {
                changed = out.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(turns_slow) => {}
            }
        }
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<T>, Vec<Reply<R>>) = batch.into_iter().unzip();
        let answers = send(items);
        out_tx.send_modify(|out| {
            out.insert(number, tokio::time::Instant::now());
        });
        let out_tx = out_tx.clone();
        tokio::spawn(async move {
            let answers = answers.await;
            out_tx.send_modify(|out| {
                out.remove(&number);
            });
            match answers {
                Ok(answers) if answers.len() == replies.len() => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
                Ok(answers) => {
                    let why = format!("the leader answered {} of {} forwarded requests", answers.len(), replies.len());
                    for reply in replies {
                        let _ = reply.send(Err(NodeError::OutcomeUnknown(why.clone())));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// The leader to forward to, with its peer address: `NotLeader` when there is none.
fn leader_of(shared: &Shared) -> Result<(NodeId, crate::store::command::MemberInfo), NodeError> {
    let leader = shared.leader().filter(|l| *l != shared.id);
    let address = leader.and_then(|l| shared.address(l)).filter(|a| !a.peer_url.is_empty());
    match (leader, address) {
        (Some(leader), Some(address)) => Ok((leader, address)),
        _ => Err(NodeError::NotLeader { leader: None }),
    }
}

/// One of the leader's routes for followers, as a follower calls it.
struct LeaderRoute {
    path: &'static str,
    /// What a request carries, to name it in errors.
    what: &'static str,
    timeout: Duration,
    max_answer: usize,
    /// Sending it twice does no harm (a read index, a renewal): every failure is one to retry.
    /// Otherwise only a request that never left, or that the leader refused before acting (a
    /// 4xx or 503), is.
    retry_safe: bool,
}

const PROPOSALS: LeaderRoute = LeaderRoute {
    path: PLACE_PATH,
    what: "proposals",
    timeout: PLACE_BATCH_TIMEOUT,
    max_answer: MAX_PLACE_ANSWER_BYTES,
    retry_safe: false,
};
const READ_INDEX: LeaderRoute = LeaderRoute {
    path: READ_INDEX_PATH,
    what: "read index request",
    timeout: READ_TIMEOUT,
    max_answer: MAX_READ_INDEX_ANSWER_BYTES,
    retry_safe: true,
};
const RENEWALS: LeaderRoute = LeaderRoute {
    path: LEASE_RENEW_PATH,
    what: "lease renewals",
    timeout: READ_TIMEOUT,
    max_answer: MAX_RENEW_ANSWER_BYTES,
    retry_safe: true,
};

/// Posts `body` on the leader's `route` and decodes its answer. A leader without the route (an
/// older kuberaft, 404) is remembered (`Forwarder::takes`).
async fn ask_leader<T: DeserializeOwned>(
    shared: &Shared,
    http: &HttpClient,
    route: &LeaderRoute,
    body: Bytes,
) -> Result<T, NodeError> {
    let (leader, address) = leader_of(shared)?;
    let what = route.what;
    let unknown = |why: String| {
        if route.retry_safe {
            NodeError::Unavailable(why)
        } else {
            NodeError::OutcomeUnknown(why)
        }
    };
    let request = peer_request(shared, &address, route.path).body(client::full(body));
    let answer = match http.call(request, route.timeout, route.max_answer).await {
        Ok(answer) => answer,
        Err(e) if e.never_sent() => return Err(NodeError::Unavailable(format!("cannot reach the leader: {e}"))),
        Err(e) => return Err(unknown(format!("the leader's answer to the {what} was lost: {e}"))),
    };
    let why = || String::from_utf8_lossy(&answer.body).into_owned();
    match answer.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            shared.forward.mark_older(leader);
            return Err(NodeError::Unavailable("the leader is an older version; retry".into()));
        }
        // The leader refused before acting.
        status if status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE => {
            return Err(NodeError::Unavailable(format!("the leader refused the {what} ({status}): {}", why())));
        }
        status => return Err(unknown(format!("the leader answered the {what} with {status}: {}", why()))),
    }
    codec::decode(&answer.body).map_err(|e| unknown(format!("the leader's answer to the {what} is undecodable: {e}")))
}

/// Sends `commands` to the leader in one request, or one request per command when together
/// they pass `BATCH_TARGET_BYTES` (which the leader's batch limit holds with room to spare).
async fn send_proposals(shared: Weak<Shared>, http: HttpClient, commands: Vec<Bytes>) -> Answers<Awaiting> {
    let shared = shared.upgrade().ok_or_else(|| NodeError::Unavailable("the member is stopping".into()))?;
    let total: usize = commands.iter().map(Bytes::len).sum();
    if total > BATCH_TARGET_BYTES && commands.len() > 1 {
        // Rare (large values from many clients at once): one request per command.
        let mut answers = Vec::with_capacity(commands.len());
        for command in commands {
            let one = Box::pin(send_proposals(Arc::downgrade(&shared), http.clone(), vec![command])).await;
            answers.push(one.and_then(|mut a| a.pop().unwrap_or(Err(NodeError::OutcomeUnknown("no answer".into())))));
        }
        return Ok(answers);
    }
    shared.metrics.forwarded_proposals.fetch_add(commands.len() as u64, Ordering::Relaxed);
    shared.metrics.forwarded_proposal_batches.fetch_add(1, Ordering::Relaxed);
    // From before the leader can place them until each waits: an entry may apply here first.
    let placing = shared.forward.outcomes.placing();
    let answer: PlaceAnswer = match streamed_leader(&shared) {
        Some((leader, courier)) => {
            shared.metrics.streamed_proposal_batches.fetch_add(1, Ordering::Relaxed);
            propose_on_stream(&shared, leader, courier.as_ref(), commands).await?
        }
        None => {
            let body = codec::encode(&commands).map_err(|e| NodeError::Unavailable(format!("cannot encode: {e}")))?;
            ask_leader(&shared, &http, &PROPOSALS, body.into()).await?
        }
    };
    Ok(answer.placed.into_iter().map(|placed| placed.map(|placed| placing.wait_for(placed))).collect())
}

/// The leader, when it takes proposals on the peer streams, and the way there.
fn streamed_leader(shared: &Shared) -> Option<(NodeId, Arc<dyn Courier>)> {
    let forward = &shared.forward;
    let leader = shared.leader().filter(|l| *l != shared.id)?;
    let courier = forward.courier.get()?;
    lock(&forward.streamed).contains(&leader).then(|| (leader, courier.clone()))
}

/// How often a batch waiting for the leader's `Placed` looks whether that leader still leads.
const PLACED_CHECK: Duration = Duration::from_millis(50);

/// Sends `commands` to `leader` as one `Propose` on the peer stream (as etcd's followers send
/// MsgProp) and waits for its `Placed`: within `PLACE_BATCH_TIMEOUT`, and while `leader` still
/// leads. A batch the leader may have placed but not answered has an unknown outcome.
async fn propose_on_stream(
    shared: &Shared,
    leader: NodeId,
    courier: &dyn Courier,
    commands: Vec<Bytes>,
) -> Result<PlaceAnswer, NodeError> {
    let forward = &shared.forward;
    let batch = forward.next_batch.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = oneshot::channel();
    lock(&forward.pending).insert(batch, (leader, tx));
    let _unregister = Unregister { pending: forward.pending.clone(), batch };
    let body = MessageBody::Propose { batch, commands };
    courier.deliver(vec![Message { from: shared.id, to: leader, term: shared.term(), body }], &[]);
    let deadline = tokio::time::Instant::now() + PLACE_BATCH_TIMEOUT;
    // Bounded: PLACE_BATCH_TIMEOUT / PLACED_CHECK passes.
    let answer = loop {
        match tokio::time::timeout(PLACED_CHECK, &mut rx).await {
            Ok(Ok(answer)) => break answer,
            Ok(Err(_)) => return Err(NodeError::OutcomeUnknown("the member stopped while the writes were out".into())),
            Err(_) if shared.leader() != Some(leader) => {
                return Err(NodeError::OutcomeUnknown(
                    "the leader changed before it said where it placed the writes".into(),
                ))
            }
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(NodeError::OutcomeUnknown(format!(
                    "the leader did not answer the proposals within {} s",
                    PLACE_BATCH_TIMEOUT.as_secs()
                )))
            }
            Err(_) => {}
        }
    };
    codec::decode(&answer)
        .map_err(|e| NodeError::OutcomeUnknown(format!("the leader's answer to the proposals is undecodable: {e}")))
}

/// Forgets a batch sent on the stream once its sender stops waiting.
struct Unregister {
    pending: Arc<Mutex<Pending>>,
    batch: u64,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.batch);
    }
}

/// The leader's answer to a batch of a follower's commands (`Input::Place`, or a `Propose` on
/// the peer stream): refused whole when one is not a command or there are too many.
pub(super) fn checked_commands(commands: &[Bytes]) -> Result<(), String> {
    if commands.len() > MAX_BATCH {
        return Err(format!("{} proposals; at most {MAX_BATCH} at once", commands.len()));
    }
    match commands.iter().position(|c| decode_command(c).is_err()) {
        Some(i) => Err(format!("proposal {i} is not a command")),
        None => Ok(()),
    }
}

/// A leader's answer to a `Propose` on the peer stream, encoded for its `Placed`.
pub(super) fn encode_placed(placed: Vec<Result<(Index, Term), NodeError>>) -> Bytes {
    match codec::encode(&PlaceAnswer::of(placed)) {
        Ok(answer) => answer.into(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an answer to proposals");
            Bytes::new()
        }
    }
}

/// Asks the leader for one read index, shared by `reads` waiting reads.
async fn send_read_index(shared: Weak<Shared>, http: HttpClient, reads: usize) -> Answers<Index> {
    let shared = shared.upgrade().ok_or_else(|| NodeError::Unavailable("the member is stopping".into()))?;
    shared.metrics.forwarded_reads.fetch_add(reads as u64, Ordering::Relaxed);
    shared.metrics.read_index_requests.fetch_add(1, Ordering::Relaxed);
    let ReadIndexAnswer { index } = ask_leader(&shared, &http, &READ_INDEX, Bytes::new()).await?;
    Ok(vec![Ok(index); reads])
}

/// Sends lease renewals to the leader in one request.
async fn send_renewals(shared: Weak<Shared>, http: HttpClient, ids: Vec<i64>) -> Answers<i64> {
    let shared = shared.upgrade().ok_or_else(|| NodeError::Unavailable("the member is stopping".into()))?;
    let body = codec::encode(&ids).map_err(|e| NodeError::Unavailable(format!("cannot encode: {e}")))?;
    shared.metrics.forwarded_renewals.fetch_add(ids.len() as u64, Ordering::Relaxed);
    ask_leader(&shared, &http, &RENEWALS, body.into()).await
}

/// One of the leader's [`FORWARDED_SLOTS`], if one is free.
fn forwarded_slot(server: &PeerServer) -> Option<OwnedSemaphorePermit> {
    server.forwarded_slots.clone().try_acquire_owned().ok()
}

/// The refusal when every slot is taken (retryable).
fn busy() -> Response {
    reject(StatusCode::SERVICE_UNAVAILABLE, format!("{FORWARDED_SLOTS} forwarded requests are being served; retry"))
}

/// A batch sent to the leader, checked: the sender is of this cluster, the body within the batch
/// limit, a list of at most [`MAX_BATCH`] `what`. Or the refusal to answer.
async fn checked_batch<T: serde::de::DeserializeOwned>(
    server: &PeerServer,
    request: Request,
    what: &str,
) -> Result<(NodeHandle, Vec<T>), Response> {
    let (parts, body) = request.into_parts();
    check_sender(server, &parts.headers, &parts.extensions).map_err(|(status, why)| reject(status, why))?;
    let bytes = read_batch(server, &parts.headers, body).await?;
    let items: Vec<T> =
        codec::decode(&bytes).map_err(|e| reject(StatusCode::BAD_REQUEST, format!("undecodable {what}: {e}")))?;
    if items.len() > MAX_BATCH {
        return Err(reject(StatusCode::BAD_REQUEST, format!("{} {what}; at most {MAX_BATCH} at once", items.len())));
    }
    Ok((NodeHandle { shared: server.shared.clone(), tx: server.loop_tx.clone() }, items))
}

/// The leader's answer to a batch: `answer` encoded.
fn encoded<T: Serialize>(answer: &T) -> Response {
    match codec::encode(answer) {
        Ok(body) => (StatusCode::OK, body).into_response(),
        Err(e) => reject(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}")),
    }
}

/// `POST /raft/v1/place` on the leader: appends each command of the batch to its log (all in
/// one turn of the Raft loop, so that they commit together) and answers where, at once.
pub(super) async fn serve_placements(State(server): State<PeerServer>, request: Request) -> Response {
    let Some(_slot) = forwarded_slot(&server) else { return busy() };
    let (node, commands) = match checked_batch::<Bytes>(&server, request, "proposals").await {
        Ok(batch) => batch,
        Err(refused) => return refused,
    };
    if let Err(why) = checked_commands(&commands) {
        return reject(StatusCode::BAD_REQUEST, why);
    }
    if !node.is_leader() {
        return reject(StatusCode::SERVICE_UNAVAILABLE, "not the leader".into());
    }
    match node.place(commands).await {
        Ok(placed) => encoded(&PlaceAnswer::of(placed)),
        // Refused before the loop took them.
        Err(e @ NodeError::Unavailable(_)) => reject(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => reject(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /raft/v1/lease-renew` on the leader: one ReadIndex round for the batch, then each
/// lease renewed as a keep-alive here would be (`NodeHandle::lease_keep_alive`).
pub(super) async fn serve_renewals(State(server): State<PeerServer>, request: Request) -> Response {
    let Some(_slot) = forwarded_slot(&server) else { return busy() };
    let (node, ids) = match checked_batch::<i64>(&server, request, "lease ids").await {
        Ok(batch) => batch,
        Err(refused) => return refused,
    };
    if let Err(e) = node.read_barrier().await {
        return reject(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    let mut ttls = Vec::with_capacity(ids.len());
    for id in ids {
        ttls.push(node.renew_confirmed(id).await);
    }
    encoded(&ttls)
}

/// `POST /raft/v1/read-index` on the leader: its commit index, confirmed by a quorum.
pub(super) async fn serve_read_index(State(server): State<PeerServer>, request: Request) -> Response {
    let Some(_slot) = forwarded_slot(&server) else { return busy() };
    if let Err((status, why)) = check_sender(&server, request.headers(), request.extensions()) {
        return reject(status, why);
    }
    let node = NodeHandle { shared: server.shared.clone(), tx: server.loop_tx.clone() };
    match node.read_index().await {
        Ok(index) => encoded(&ReadIndexAnswer { index }),
        Err(e) => reject(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// A follower's writes placed through the leader, waiting for this member to apply their
/// entries (`Forwarder::propose`). The Raft loop tells it what it applied (`applied`), a
/// snapshot it installed (`jumped`) and that it stopped applying (`fail_all`).
#[derive(Default)]
pub struct Outcomes {
    inner: Arc<Mutex<Awaited>>,
}

#[derive(Default)]
struct Awaited {
    /// What this member applied and flushed, as the loop last said.
    applied: Index,
    /// Batches sent to the leader whose writes do not all wait yet ([`Placing`]). While any is,
    /// the loop's outcomes are kept in `recent`.
    placing: usize,
    waiting: BTreeMap<(Index, Term), Reply<ApplyResult>>,
    /// What applied while placements were under way, in order: index, term and outcome (`None`:
    /// the command could not be applied). At most [`MAX_RECENT`].
    recent: VecDeque<(Index, Term, Option<ApplyResult>)>,
}

/// The outcome of a write placed in `placed_term`, whose index applied an entry of `term`.
fn outcome_of(placed_term: Term, term: Term, result: Option<ApplyResult>) -> Result<ApplyResult, NodeError> {
    if placed_term != term {
        // The committed entry at its index is another: the write never applies.
        return Err(NodeError::Unavailable("the write was overwritten by a new leader's entry; retry".into()));
    }
    result.ok_or_else(|| NodeError::OutcomeUnknown("the command could not be applied".into()))
}

impl Outcomes {
    /// Whether the loop is to hand over the outcomes of the entries it applies next.
    pub fn wanted(&self) -> bool {
        let inner = lock(&self.inner);
        inner.placing > 0 || !inner.waiting.is_empty()
    }

    /// A batch of writes is about to be sent to the leader: until it is dropped, what applies is
    /// kept, so that each write finds its outcome however soon its entry applies.
    pub(super) fn placing(&self) -> Placing {
        lock(&self.inner).placing += 1;
        Placing { inner: self.inner.clone() }
    }

    /// This member applied and flushed its state machine up to `applied`: among them the entries
    /// of `outcomes` (index, term, outcome, in order; given while `wanted`). With `failed`, the
    /// flush failed and the outcomes are unknown.
    pub fn applied(&self, outcomes: Vec<(Index, Term, Option<ApplyResult>)>, applied: Index, failed: Option<&str>) {
        let mut inner = lock(&self.inner);
        for (index, term, result) in outcomes {
            while let Some(waiter) = inner.waiting.first_entry() {
                let (at, placed_term) = *waiter.key();
                if at > index {
                    break;
                }
                let reply = waiter.remove();
                let _ = reply.send(match failed {
                    Some(why) => Err(NodeError::OutcomeUnknown(format!("the state machine failed: {why}"))),
                    None if at == index => outcome_of(placed_term, term, result.clone()),
                    None => Err(NodeError::OutcomeUnknown("this member applied past the write without it".into())),
                });
            }
            if inner.placing > 0 && failed.is_none() {
                if inner.recent.len() == MAX_RECENT {
                    inner.recent.pop_front();
                }
                inner.recent.push_back((index, term, result));
            }
        }
        inner.applied = inner.applied.max(applied);
        let why = failed.map_or("this member applied past the write without it", |_| "the state machine failed");
        inner.fail_through(applied, why);
    }

    /// This member installed a snapshot of `index`: the writes placed up to it may be in it or
    /// not, and their outcomes are unknown.
    pub fn jumped(&self, index: Index) {
        let mut inner = lock(&self.inner);
        inner.applied = inner.applied.max(index);
        inner.fail_through(index, "this member caught up from a snapshot past the write");
    }

    /// This member stopped applying (`why`): every waiting write's outcome is unknown.
    pub fn fail_all(&self, why: &str) {
        lock(&self.inner).fail_through(Index::MAX, &format!("this member stopped applying: {why}"));
    }
}

impl Awaited {
    fn fail_through(&mut self, index: Index, why: &str) {
        while self.waiting.first_key_value().is_some_and(|((at, _), _)| *at <= index) {
            if let Some((_, reply)) = self.waiting.pop_first() {
                let _ = reply.send(Err(NodeError::OutcomeUnknown(why.to_string())));
            }
        }
    }
}

/// A batch of writes on its way to the leader (`Outcomes::placing`).
pub(super) struct Placing {
    inner: Arc<Mutex<Awaited>>,
}

impl Placing {
    /// The write the leader placed at `placed` waits for this member's apply of it; or has its
    /// outcome already, when it applied first.
    pub(super) fn wait_for(&self, placed: Placed) -> Awaiting {
        let (reply, rx) = oneshot::channel();
        let mut inner = lock(&self.inner);
        if placed.index > inner.applied {
            inner.waiting.insert((placed.index, placed.term), reply);
        } else {
            let kept = inner.recent.binary_search_by_key(&placed.index, |(index, _, _)| *index);
            let _ = reply.send(match kept {
                Ok(at) => {
                    let (_, term, result) = &inner.recent[at];
                    outcome_of(placed.term, *term, result.clone())
                }
                Err(_) => Err(NodeError::OutcomeUnknown(
                    "this member applied the write before the leader said where it was, and no longer has its outcome"
                        .into(),
                )),
            });
        }
        Awaiting { rx, key: (placed.index, placed.term), inner: self.inner.clone() }
    }
}

impl Drop for Placing {
    fn drop(&mut self) {
        let mut inner = lock(&self.inner);
        inner.placing = inner.placing.saturating_sub(1);
        if inner.placing == 0 {
            inner.recent.clear();
        }
    }
}

/// A write that waits for this member's apply of its entry; it stops waiting when dropped.
pub struct Awaiting {
    rx: oneshot::Receiver<Result<ApplyResult, NodeError>>,
    key: (Index, Term),
    inner: Arc<Mutex<Awaited>>,
}

impl Awaiting {
    /// The write's outcome, within `within`.
    pub(super) async fn outcome(mut self, within: Duration) -> Result<ApplyResult, NodeError> {
        match tokio::time::timeout(within, &mut self.rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(NodeError::OutcomeUnknown("the member stopped while the write was pending".into())),
            Err(_) => Err(NodeError::OutcomeUnknown(format!(
                "the write did not apply on this member within {} s",
                within.as_secs()
            ))),
        }
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        lock(&self.inner).waiting.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::shared::write;
    use crate::store::command::{encode, Command};

    /// A `batches` task over a fake leader whose answers the test releases: the sizes of the
    /// batches sent, and per batch the release of its answer.
    struct HeldBatches {
        queue: mpsc::Sender<(u32, Reply<()>)>,
        sent: Sent,
    }

    /// Per batch sent, its size and the release of its answer.
    type Sent = Arc<Mutex<Vec<(usize, Option<oneshot::Sender<()>>)>>>;

    impl HeldBatches {
        fn start(pace: Pace) -> HeldBatches {
            let (queue, rx) = mpsc::channel(QUEUE);
            let sent: Sent = Arc::default();
            let record = sent.clone();
            tokio::spawn(batches(
                rx,
                move || pace,
                move |items: Vec<u32>| {
                    let (release, released) = oneshot::channel::<()>();
                    lock(&record).push((items.len(), Some(release)));
                    async move {
                        let _ = released.await;
                        Ok(items.iter().map(|_| Ok(())).collect())
                    }
                },
            ));
            HeldBatches { queue, sent }
        }

        async fn submit(&self, item: u32) -> oneshot::Receiver<Result<(), NodeError>> {
            let (reply, answer) = oneshot::channel();
            self.queue.send((item, reply)).await.expect("the batches task runs");
            answer
        }

        fn sizes(&self) -> Vec<usize> {
            lock(&self.sent).iter().map(|(size, _)| *size).collect()
        }

        /// Waits (at most 10 s) until `count` batches were sent.
        async fn until_sent(&self, count: usize) -> Vec<usize> {
            for _ in 0..1000 {
                if self.sizes().len() >= count {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.sizes()
        }

        fn release(&self, batch: usize) {
            if let Some(release) = lock(&self.sent)[batch].1.take() {
                let _ = release.send(());
            }
        }
    }

    #[tokio::test]
    async fn work_that_waits_behind_a_request_out_goes_in_one_batch() {
        let held = HeldBatches::start(Pace { slow: Duration::from_secs(60), most: IN_FLIGHT });
        let first = held.submit(0).await;
        assert_eq!(held.until_sent(1).await, vec![1]);
        let mut later = Vec::new();
        for item in 1..=9 {
            later.push(held.submit(item).await);
        }
        // With several requests out at once, these would have left in batches of their own.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(held.sizes(), vec![1], "nothing leaves while a request is out and answers in time");
        held.release(0);
        assert_eq!(first.await.expect("answered"), Ok(()));
        assert_eq!(held.until_sent(2).await, vec![1, 9], "what waited leaves in one batch");
        held.release(1);
        for answer in later {
            assert_eq!(answer.await.expect("answered"), Ok(()));
        }
    }

    #[tokio::test]
    async fn a_request_out_too_long_does_not_hold_the_next_back() {
        let held = HeldBatches::start(Pace { slow: Duration::from_millis(20), most: IN_FLIGHT });
        let _first = held.submit(0).await;
        assert_eq!(held.until_sent(1).await, vec![1]);
        let second = held.submit(1).await;
        // The first is never answered: the second leaves once the first is slow.
        assert_eq!(held.until_sent(2).await, vec![1, 1]);
        held.release(1);
        assert_eq!(second.await.expect("answered"), Ok(()));
    }

    #[tokio::test]
    async fn on_the_stream_each_batch_leaves_at_once_up_to_the_most_out() {
        let held = HeldBatches::start(ON_STREAM);
        let mut answers = Vec::new();
        // None is answered: each leaves at once all the same, where a request would wait.
        for item in 0..8 {
            answers.push(held.submit(item).await);
            assert_eq!(held.until_sent(item as usize + 1).await.len(), item as usize + 1, "batch {item} left at once");
        }
        let capped = HeldBatches::start(Pace { most: 2, ..ON_STREAM });
        let first = capped.submit(0).await;
        assert_eq!(capped.until_sent(1).await, vec![1]);
        let _second = capped.submit(1).await;
        assert_eq!(capped.until_sent(2).await, vec![1, 1]);
        let third = capped.submit(2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(capped.sizes(), vec![1, 1], "past the most out, the next waits");
        capped.release(0);
        assert_eq!(first.await.expect("answered"), Ok(()));
        assert_eq!(capped.until_sent(3).await, vec![1, 1, 1], "and leaves when one is answered");
        capped.release(2);
        assert_eq!(third.await.expect("answered"), Ok(()));
        for batch in 0..8 {
            held.release(batch);
        }
        for answer in answers {
            assert_eq!(answer.await.expect("answered"), Ok(()));
        }
    }

    /// A leader at 127.0.0.1 whose routes for followers answer with `status` and `body`.
    async fn fake_leader(status: StatusCode, body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let answer = move || {
            let body = body.clone();
            async move { (status, body) }
        };
        let router = [PLACE_PATH, READ_INDEX_PATH, LEASE_RENEW_PATH]
            .into_iter()
            .fold(axum::Router::new(), |router, path| router.route(path, axum::routing::post(answer.clone())));
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    }

    fn follower_of(leader_url: &str) -> Arc<Shared> {
        let shared = Arc::new(Shared::for_tests(1, "a", 2, ""));
        write(&shared.status).leader = Some(2);
        shared.addresses.learn(2, "b", leader_url, "");
        shared
    }

    fn put() -> Bytes {
        encode(&Command::Put { key: "k".into(), value: Bytes::from_static(b"v"), prev_revision: None })
    }

    /// How many writes wait on `shared`'s apply.
    fn waiting(shared: &Shared) -> usize {
        lock(&shared.forward.outcomes.inner).waiting.len()
    }

    #[tokio::test]
    async fn a_followers_write_takes_its_outcome_from_its_own_apply() {
        let answer =
            PlaceAnswer { placed: vec![Ok(Placed { index: 5, term: 2 }), Err(NodeError::NotLeader { leader: None })] };
        let url = fake_leader(StatusCode::OK, codec::encode(&answer).expect("encode")).await;
        let shared = follower_of(&url);
        // Two proposals queued at once (this runtime runs the batching task only when both
        // wait) share one request; the first waits for entry 5 to apply here.
        let apply = async {
            for _ in 0..500 {
                if waiting(&shared) == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(waiting(&shared), 1, "the placed write waits");
            shared.forward.outcomes.applied(
                vec![(4, 2, None), (5, 2, Some(ApplyResult::Put { revision: 4 }))],
                5,
                None,
            );
        };
        let (a, b, ()) =
            tokio::join!(shared.forward.propose(&shared, put()), shared.forward.propose(&shared, put()), apply);
        assert_eq!(shared.metrics.forwarded_proposal_batches.load(Ordering::Relaxed), 1);
        assert_eq!(a, Ok(ApplyResult::Put { revision: 4 }));
        assert_eq!(b, Err(NodeError::NotLeader { leader: None }));
        assert_eq!(waiting(&shared), 0);
        // Only the write that was placed and answered is timed, at both points.
        assert_eq!((shared.latency.placed_count(0), shared.latency.placed_count(1)), (1, 1));
        // A proposal alone is answered two places: the count does not match, the outcome is
        // unknown.
        let alone = shared.forward.propose(&shared, put()).await;
        assert!(matches!(alone, Err(NodeError::OutcomeUnknown(_))), "{alone:?}");
        assert_eq!((shared.latency.placed_count(0), shared.latency.placed_count(1)), (1, 1));
        assert!(shared.forward.takes(2));
        assert!(!shared.forward.outcomes.wanted(), "nothing is kept once nothing is placed");
    }

    fn put_at(revision: u64) -> Option<ApplyResult> {
        Some(ApplyResult::Put { revision })
    }

    /// A write's outcome is its own entry's, however the entry's apply and the leader's answer
    /// are ordered; another entry at its place, a snapshot past it, a failed flush or a stopped
    /// state machine give no outcome.
    #[tokio::test]
    async fn outcomes_follow_what_this_member_applies() {
        let within = Duration::from_secs(5);
        let outcomes = Outcomes::default();
        assert!(!outcomes.wanted());
        let placing = outcomes.placing();
        assert!(outcomes.wanted(), "while a batch is on its way");
        // Placed, then applied.
        let first = placing.wait_for(Placed { index: 3, term: 1 });
        // Applied before the leader's answer arrived: kept while the batch is on its way.
        outcomes.applied(vec![(3, 1, put_at(7)), (4, 1, put_at(8)), (5, 2, put_at(9)), (6, 2, None)], 6, None);
        assert_eq!(first.outcome(within).await, Ok(ApplyResult::Put { revision: 7 }));
        assert_eq!(
            placing.wait_for(Placed { index: 4, term: 1 }).outcome(within).await,
            Ok(ApplyResult::Put { revision: 8 })
        );
        // Another term's entry at its index: the write was overwritten, and never applies.
        let overwritten = placing.wait_for(Placed { index: 5, term: 1 }).outcome(within).await;
        assert!(
            matches!(&overwritten, Err(NodeError::Unavailable(why)) if why.contains("overwritten")),
            "{overwritten:?}"
        );
        let unapplied = placing.wait_for(Placed { index: 6, term: 2 }).outcome(within).await;
        assert!(matches!(unapplied, Err(NodeError::OutcomeUnknown(_))), "{unapplied:?}");
        // Not kept, before this member's apply.
        let lost = placing.wait_for(Placed { index: 1, term: 1 }).outcome(within).await;
        assert!(matches!(lost, Err(NodeError::OutcomeUnknown(_))), "{lost:?}");

        // Waiting: a later entry of another term, a snapshot past it, a failed flush, a stop.
        let superseded = placing.wait_for(Placed { index: 7, term: 2 });
        let in_snapshot = placing.wait_for(Placed { index: 9, term: 2 });
        let after = placing.wait_for(Placed { index: 11, term: 3 });
        let stopped = placing.wait_for(Placed { index: 12, term: 3 });
        let dropped = placing.wait_for(Placed { index: 13, term: 3 });
        assert_eq!(lock(&outcomes.inner).waiting.len(), 5);
        drop(dropped);
        assert_eq!(lock(&outcomes.inner).waiting.len(), 4, "a write that stops waiting is forgotten");
        outcomes.applied(vec![(7, 3, put_at(10))], 7, None);
        assert!(matches!(superseded.outcome(within).await, Err(NodeError::Unavailable(_))));
        outcomes.jumped(10);
        let skipped = in_snapshot.outcome(within).await;
        assert!(matches!(&skipped, Err(NodeError::OutcomeUnknown(why)) if why.contains("snapshot")), "{skipped:?}");
        outcomes.applied(vec![(11, 3, put_at(11))], 11, Some("disk full"));
        let failed = after.outcome(within).await;
        assert!(matches!(&failed, Err(NodeError::OutcomeUnknown(why)) if why.contains("disk full")), "{failed:?}");
        outcomes.fail_all("an entry out of step");
        let halted = stopped.outcome(within).await;
        assert!(matches!(&halted, Err(NodeError::OutcomeUnknown(why)) if why.contains("out of step")), "{halted:?}");

        // Once no batch is on its way, nothing applied is kept.
        drop(placing);
        assert!(!outcomes.wanted());
        assert!(lock(&outcomes.inner).recent.is_empty());
        outcomes.applied(vec![], 20, None);
        // At most MAX_RECENT outcomes are kept while batches are on their way.
        let placing = outcomes.placing();
        let many: Vec<_> = (21..21 + MAX_RECENT as u64 + 5).map(|i| (i, 3, put_at(i))).collect();
        let last = many.last().map_or(0, |m| m.0);
        outcomes.applied(many, last, None);
        assert_eq!(lock(&outcomes.inner).recent.len(), MAX_RECENT);
        let gone = placing.wait_for(Placed { index: 21, term: 3 }).outcome(within).await;
        assert!(matches!(gone, Err(NodeError::OutcomeUnknown(_))), "{gone:?}");
        let kept = placing.wait_for(Placed { index: last, term: 3 }).outcome(within).await;
        assert_eq!(kept, Ok(ApplyResult::Put { revision: last }));
        // Placed but never applied: unknown within the wait.
        let silent = placing.wait_for(Placed { index: last + 1, term: 3 }).outcome(Duration::from_millis(20)).await;
        assert!(matches!(&silent, Err(NodeError::OutcomeUnknown(why)) if why.contains("did not apply")), "{silent:?}");
        assert!(lock(&outcomes.inner).waiting.is_empty());
    }

    /// Past its forwarded slots, a leader refuses followers' requests as retryable, and its
    /// peer port's other routes are untouched.
    #[tokio::test]
    async fn a_leader_serves_at_most_its_forwarded_slots_at_once() {
        use tower::ServiceExt;
        let shared = Arc::new(Shared::for_tests(2, "b", 2, ""));
        let (tx, _rx) = crate::node::runtime::input_queue(16);
        let server = PeerServer::new(shared, tx, crate::node::transport::PeerLimits::new(1 << 20, 1 << 20));
        let held = server.forwarded_slots.clone().acquire_many_owned(FORWARDED_SLOTS as u32).await.expect("slots");
        let router = crate::node::transport::peer_router(server.clone());
        let post = |path: &str| {
            axum::http::Request::post(path)
                .header(crate::node::transport::HEADER_CLUSTER_ID, "7")
                .header(crate::node::transport::HEADER_FROM, "1")
                .body(axum::body::Body::from(codec::encode(&Vec::<i64>::new()).expect("encode")))
                .expect("request")
        };
        for path in [PLACE_PATH, READ_INDEX_PATH, LEASE_RENEW_PATH] {
            let answer = router.clone().oneshot(post(path)).await.expect("answer");
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
            let body = axum::body::to_bytes(answer.into_body(), 1 << 16).await.expect("body");
            assert_eq!(
                String::from_utf8_lossy(&body),
                format!("{FORWARDED_SLOTS} forwarded requests are being served; retry")
            );
        }
        let members = axum::http::Request::get(crate::node::transport::MEMBERS_PATH).body(axum::body::Body::empty());
        let answer = router.clone().oneshot(members.expect("request")).await.expect("answer");
        assert_eq!(answer.status(), StatusCode::OK, "the port's other routes still answer");
        drop(held);
        // With a slot free the batch is read, and refused for what it is: this member does not
        // lead.
        let answer = router.oneshot(post(PLACE_PATH)).await.expect("answer");
        let body = axum::body::to_bytes(answer.into_body(), 1 << 16).await.expect("body");
        assert_eq!(String::from_utf8_lossy(&body), "not the leader");
    }

    /// A leader that fails after reading a request (500) may have proposed it: the outcome of
    /// proposals is unknown, while a read index or renewal is safe to ask again.
    #[tokio::test]
    async fn a_failure_past_the_refusals_is_unknown_only_for_proposals() {
        let url = fake_leader(StatusCode::INTERNAL_SERVER_ERROR, b"broken".to_vec()).await;
        let shared = follower_of(&url);
        let proposal = shared.forward.propose(&shared, put()).await;
        assert!(matches!(&proposal, Err(NodeError::OutcomeUnknown(why)) if why.contains("broken")), "{proposal:?}");
        let read = shared.forward.read_index(&shared).await;
        assert!(matches!(&read, Err(NodeError::Unavailable(why)) if why.contains("broken")), "{read:?}");
        let renewal = shared.forward.renew(&shared, 7).await;
        assert!(matches!(&renewal, Err(NodeError::Unavailable(why)) if why.contains("broken")), "{renewal:?}");
        assert!(shared.forward.takes(2));
    }

    #[tokio::test]
    async fn an_older_leader_is_remembered_and_a_refusal_is_safe_to_retry() {
        let url = fake_leader(StatusCode::SERVICE_UNAVAILABLE, b"not the leader".to_vec()).await;
        let shared = follower_of(&url);
        let refused = shared.forward.propose(&shared, put()).await;
        assert!(matches!(&refused, Err(NodeError::Unavailable(why)) if why.contains("not the leader")), "{refused:?}");
        assert!(shared.forward.takes(2), "a refusal is not a version");

        // An older kuberaft has no such route: 404.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let older = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, axum::Router::new()).await });
        let shared = follower_of(&older);
        let refused = shared.forward.propose(&shared, put()).await;
        assert!(matches!(refused, Err(NodeError::Unavailable(_))), "{refused:?}");
        assert!(!shared.forward.takes(2), "the older leader is remembered");
        let reads = shared.forward.read_index(&shared).await;
        assert!(matches!(reads, Err(NodeError::Unavailable(_))), "{reads:?}");
        let renewal = shared.forward.renew(&shared, 7).await;
        assert!(matches!(renewal, Err(NodeError::Unavailable(_))), "{renewal:?}");

        // No leader: nothing is sent.
        write(&shared.status).leader = None;
        let lone = shared.forward.propose(&shared, put()).await;
        assert_eq!(lone, Err(NodeError::NotLeader { leader: None }));
    }

    /// A courier that records what it is handed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Message>>);

    impl Courier for Recorder {
        fn deliver(&self, messages: Vec<Message>, _appends: &[Instant]) {
            lock(&self.0).extend(messages);
        }
    }

    /// The batch number and commands of the `Propose` `recorder` got, once it has one.
    async fn proposed(recorder: &Recorder) -> (u64, Vec<Bytes>) {
        // Bounded: 200 polls of 10 ms.
        for _ in 0..200 {
            let found = lock(&recorder.0).iter().find_map(|m| match &m.body {
                MessageBody::Propose { batch, commands } if m.to == 2 => Some((*batch, commands.clone())),
                _ => None,
            });
            if let Some(found) = found {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no proposal was sent on the stream");
    }

    /// A leader that says it takes proposals on its peer streams (`HEADER_TAKES`) is sent them
    /// there, as etcd's followers send MsgProp: no request (this leader has no HTTP server at
    /// all), the answer taken only from the leader it went to, and the write's outcome from this
    /// member's apply. A batch the leader never answers is unknown as soon as another member
    /// leads, without waiting out `PLACE_BATCH_TIMEOUT` (7 s; the test waits 2).
    #[tokio::test]
    async fn a_leader_that_takes_proposals_on_the_stream_gets_them_there() {
        let shared = follower_of("http://127.0.0.1:9");
        let recorder = Arc::new(Recorder::default());
        shared.forward.set_courier(recorder.clone());
        shared.forward.note_takes(2, true);
        let propose = || {
            let shared = shared.clone();
            tokio::spawn(async move { shared.forward.propose(&shared, put()).await })
        };

        let pending = propose();
        let (batch, commands) = proposed(&recorder).await;
        assert_eq!(commands, vec![put()]);
        shared.forward.placed(3, batch, encode_placed(vec![Ok((9, 1))]));
        shared.forward.placed(2, batch, encode_placed(vec![Ok((5, 2))]));
        // Bounded: 200 polls of 10 ms.
        for _ in 0..200 {
            if waiting(&shared) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shared.forward.outcomes.applied(vec![(5, 2, Some(ApplyResult::Put { revision: 7 }))], 5, None);
        let outcome = tokio::time::timeout(Duration::from_secs(2), pending).await.expect("answered").expect("task");
        assert!(matches!(outcome, Ok(ApplyResult::Put { revision: 7 })), "{outcome:?}");
        assert_eq!(shared.metrics.streamed_proposal_batches.load(Ordering::Relaxed), 1);

        lock(&recorder.0).clear();
        let pending = propose();
        let _ = proposed(&recorder).await;
        write(&shared.status).leader = Some(3);
        let outcome = tokio::time::timeout(Duration::from_secs(2), pending).await.expect("answered").expect("task");
        assert!(
            matches!(&outcome, Err(NodeError::OutcomeUnknown(why)) if why.contains("leader changed")),
            "{outcome:?}"
        );
        assert!(lock(&shared.forward.pending).is_empty(), "the batch is forgotten");

        write(&shared.status).leader = Some(2);
        shared.forward.note_takes(2, false);
        assert!(streamed_leader(&shared).is_none(), "a leader that does not say so is sent requests");
    }
}

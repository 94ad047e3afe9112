//! Peer transport on the peer port: HTTP with a compact binary body. One task per peer drains
//! a bounded queue, batching whatever is waiting, and writes each batch as a frame into one of
//! two long-lived streams to the peer (the pooled `http::client::HttpClient`, dialling from the
//! member's own address), as etcd's stream transport does: appends on one, everything else
//! (heartbeats, votes, answers) on the other, so a heartbeat never waits behind data and any
//! number of appends are in flight, none waiting for an answer. A stream that ends is opened
//! again on the next batch; one whose peer takes nothing for `STREAM_STALL` is closed. A peer
//! that is down or slow only fills (and then drops from) its own queue and streams, so it never
//! blocks the others.
//! The Raft loop tells the transport the current membership (`Outbox::retain`), and the tasks
//! of members that left end. A snapshot's body is streamed in chunks; a peer's answer is read
//! up to `MAX_ANSWER_BYTES`.
//!
//! Wire format (every request carries the cluster id, the sender's id and URLs as headers).
//! Bodies are sent with `content-type: application/vnd.kuberaft.raft` (`PEER_CONTENT_TYPE`) and
//! start with a format byte, `PEER_FORMAT` (2: postcard, `store::codec`):
//! - `POST /raft/v1/messages`: the format byte, then a `Vec<Message>`, at most
//!   `MAX_BATCH_MESSAGES` messages and about `BATCH_TARGET_BYTES` (a single message may be
//!   larger); the receiver accepts at most `PeerLimits::batch_bytes`.
//! - `POST /raft/v1/stream` (header `x-kuberaft-stream: control|data`): frames for as long as the
//!   sender keeps the body open (HTTP/1.1 chunked), each a 4-byte big-endian length `n`, then
//!   `n` bytes of a `/raft/v1/messages` body; the receiver hands each frame's messages to the
//!   Raft loop as it arrives, checks each frame against the same limit, and answers 204 when the
//!   body ends. A peer that answers 404 (an older kuberaft, without streams) gets batches posted
//!   one by one to `/raft/v1/messages`, each waiting for its answer, and streams again after
//!   `STREAM_RETRY`; so does every peer with `--peer-streams=false`.
//! - `POST /raft/v1/snapshot`: one InstallSnapshot: the format byte, a 4-byte big-endian length
//!   `n`, then `n` bytes of the `Message` with empty snapshot data, then the snapshot itself (the
//!   rest of the body): the state machine's database as a stream (`store::mvcc::snapshot`),
//!   read by the sender from a point-in-time view the Raft loop prepared
//!   (`Shared::outgoing_snapshots`) and written by the receiver, as it arrives, into a new
//!   database beside its live one (`KvStore::stage`); neither side holds the snapshot in
//!   memory. The receiver takes one snapshot at a time, each chunk within `SNAPSHOT_STALL`;
//!   a snapshot that fails on the way is sent again whole, from a new view.
//!
//! kuberaft 0.1.0 sent the same bodies without the format byte, in bincode 1, as
//! `application/octet-stream`. A receiver still reads those (by the content type, with
//! `store::legacy`), so an upgraded member hears 0.1.0 members; a 0.1.0 member cannot read what
//! an upgraded one sends (docs/DESIGN.md §3, "Upgrading from 0.1.0").
//!
//! A member checks the cluster id, and the declared length against the limit, before it reads
//! a byte of the body (412 and 413 with the reason as text), then reads the body in chunks
//! against the same limit and deadlines (`serve::read_body`); a member rejects messages from
//! another cluster and says so.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use super::forward::{HEADER_TAKES, TAKES_PROPOSE};
use super::latency::WritePoint;
use super::runtime::{note_peer_urls, offer, Input, InputSender, Outbox};
use super::shared::{lock, read, Shared, StagedSnapshot};
use super::timeline::{self, EventKind};
use super::writer::Courier;
use crate::base::tls::certificate_names;
use crate::base::wire::MAX_KEY_BYTES;
use crate::http::client::{self, Dial, HttpClient};
use crate::http::serve::{check_declared, read_body, BodyError, BodyLimits};
use crate::http::tls::{ClientTls, PeerCertificate};
use crate::node::join::{PeerMember, PeerView};
use crate::raft::{ConfState, Message, MessageBody, NodeId};
use crate::store::codec::{self, CodecError};
use crate::store::command::MemberInfo;
use crate::store::kv::staging_path;
use crate::store::legacy;
use crate::store::mvcc::snapshot::{ChunkReader, SnapshotReader};
use crate::store::KvStore;

pub const MESSAGES_PATH: &str = "/raft/v1/messages";
pub const STREAM_PATH: &str = "/raft/v1/stream";
pub const SNAPSHOT_PATH: &str = "/raft/v1/snapshot";
pub const MEMBERS_PATH: &str = "/raft/v1/members";
pub const JOIN_PATH: &str = "/raft/v1/join";
pub const HEADER_CLUSTER_ID: &str = "x-kuberaft-cluster-id";
pub const HEADER_FROM: &str = "x-kuberaft-from";
pub const HEADER_CLIENT_URL: &str = "x-kuberaft-client-url";
pub const HEADER_PEER_URL: &str = "x-kuberaft-peer-url";
/// The sender's name (`--name`), when it can travel as a header value.
pub const HEADER_NAME: &str = "x-kuberaft-name";
/// Which of a sender's two streams a request is (`control` or `data`), for whoever reads the
/// traffic.
pub const HEADER_STREAM: &str = "x-kuberaft-stream";
/// The content type of peer bodies that start with a format byte (everything sent since 0.2).
pub const PEER_CONTENT_TYPE: &str = "application/vnd.kuberaft.raft";
/// The format byte this member sends: 2, postcard. (Format 1 is 0.1.0's bincode 1, which had no
/// format byte and is told by its content type.)
pub const PEER_FORMAT: u8 = 2;
/// Messages waiting for one peer; beyond this they are dropped.
const PEER_QUEUE: usize = 4096;
/// One request carries at most this many messages.
const MAX_BATCH_MESSAGES: usize = 512;
/// A batch takes no further message once its encoding reaches this size.
pub const BATCH_TARGET_BYTES: usize = 16 << 20;
/// The largest snapshot a member reads into memory: one in a 0.1.0 member's format, whose data
/// travels in the message. A streamed snapshot goes to disk as it arrives and is bounded by the
/// disk alone.
pub const MAX_SNAPSHOT_BYTES: usize = 1 << 30;
/// A streamed snapshot's body must bring a chunk at least this often; installing commits every
/// few thousand records, which may hold the reading back for a moment.
const SNAPSHOT_STALL: Duration = Duration::from_secs(30);
/// How many chunks of a snapshot may wait between the disk and the network on the sending side
/// (chunks of `store::mvcc::snapshot::CHUNK_BYTES`).
const SNAPSHOT_QUEUE_CHUNKS: usize = 4;
/// How many body frames of a snapshot may wait between the network and the disk on the
/// receiving side. A frame is at most hyper's read buffer (about 400 KiB), so this holds at most
/// about 13 MiB. The writer thread takes them as they come and the network side waits for room
/// with a wakeup, not a sleep: a queue of 4 frames polled every 5 ms held a 1M-key catch-up to
/// 131 MB/s.
const SNAPSHOT_RECEIVE_FRAMES: usize = 32;
/// A snapshot's data goes out in chunks of this size.
const SNAPSHOT_CHUNK_BYTES: usize = 256 << 10;
/// The encoded InstallSnapshot message ahead of a snapshot's data (its data left empty) is
/// small: terms, indexes and the configuration of at most a few members.
const MAX_SNAPSHOT_HEAD_BYTES: usize = 1 << 20;
/// A batch's body arrives with a chunk at least every `BODY_STALL`, whole within its deadline.
const BODY_STALL: Duration = Duration::from_secs(5);
const BATCH_DEADLINE: Duration = Duration::from_secs(10);
/// A 0.1.0 member's in-message snapshot body is read whole within this.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(80);
/// The sender waits this long for a batch's answer, and for a snapshot's.
const BATCH_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole snapshot, however large, must be across within this.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Frames a stream queues before its sender drops messages. What they hold is bounded by the
/// core's flow control (the appends in flight to a peer, `Config::max_inflight_msgs`).
const STREAM_FRAMES: usize = 256;
/// A stream whose oldest frame waited this long with nothing taken is closed and dialled anew.
const STREAM_STALL: Duration = BATCH_TIMEOUT;
/// How often an idle sender looks at its streams.
const STREAM_CHECK: Duration = Duration::from_millis(500);
/// A stream with nothing queued for this long is closed (and opened again when needed).
const STREAM_IDLE: Duration = Duration::from_secs(30);
/// A stream is replaced after this long, well within the peer port's request timeout.
const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// A peer without streams (an older kuberaft) gets batches posted one by one; streams are
/// tried again after this long (it may have been upgraded).
const STREAM_RETRY: Duration = Duration::from_secs(60);
/// A peer answers a batch or a snapshot with no body, or a one-line reason; more is not read.
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The largest bodies the peer port reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerLimits {
    pub batch_bytes: usize,
    pub snapshot_bytes: usize,
}

impl PeerLimits {
    /// From the core's `max_msg_bytes` (payload bytes of one append, which always holds at least
    /// one entry) and `--max-value-bytes` (the largest entry). An encoded entry adds a few dozen
    /// bytes to its payload, which for the smallest entries can double or triple it; the bound
    /// for one message is kept well above that. Members of one cluster must run with the same
    /// `--max-value-bytes`, or a large entry from one could exceed another's limit.
    pub fn new(max_msg_bytes: usize, max_value_bytes: usize) -> PeerLimits {
        let message =
            max_msg_bytes.saturating_mul(4).saturating_add(max_value_bytes).saturating_add(MAX_KEY_BYTES + (1 << 20));
        PeerLimits { batch_bytes: BATCH_TARGET_BYTES.saturating_add(message), snapshot_bytes: MAX_SNAPSHOT_BYTES }
    }
}

pub struct Transport {
    queues: Arc<Queues>,
}

/// A queue per peer, each drained by a sender task, and what a new task needs. The Raft loop
/// sends through it (`Outbox::send`), and so does the writer's thread (`Courier`), which sends
/// a follower's acknowledgement the moment its fsync returned, without the hop back to the loop.
struct Queues {
    map: Mutex<HashMap<NodeId, mpsc::Sender<Message>>>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    http: HttpClient,
    loop_tx: InputSender,
    /// Sender tasks running (each ends once its queue is removed and drained).
    live: Arc<AtomicUsize>,
    /// Messages go on streams (`--peer-streams`); else one POST per batch.
    streams: AtomicBool,
}

impl Transport {
    /// `local_ip`: dial peers from this address (the member's own listen address), so that
    /// network rules on member addresses cut traffic in both directions. `tls`: how `https://`
    /// peers are called (`--peer-*` files).
    pub fn new(
        shared: Arc<Shared>,
        runtime: tokio::runtime::Handle,
        loop_tx: InputSender,
        local_ip: Option<IpAddr>,
        tls: Option<Arc<ClientTls>>,
    ) -> Transport {
        let queues = Queues {
            map: Mutex::new(HashMap::new()),
            shared,
            runtime,
            http: HttpClient::new(Dial::peer(local_ip).with_tls(tls)),
            loop_tx,
            live: Arc::new(AtomicUsize::new(0)),
            streams: AtomicBool::new(true),
        };
        Transport { queues: Arc::new(queues) }
    }

    /// With `false`, every batch is posted on its own (`--peer-streams=false`).
    pub fn with_streams(self, streams: bool) -> Transport {
        self.queues.streams.store(streams, Ordering::Relaxed);
        self
    }

    /// Sender tasks that are still running.
    pub fn live_senders(&self) -> usize {
        self.queues.live.load(Ordering::Relaxed)
    }
}

impl Queues {
    fn send(&self, messages: Vec<Message>) {
        let mut map = lock(&self.map);
        for m in messages {
            let to = m.to;
            let queue = map.entry(to).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                self.live.fetch_add(1, Ordering::Relaxed);
                let (shared, http, loop_tx) = (self.shared.clone(), self.http.clone(), self.loop_tx.clone());
                let (streams, live) = (self.streams.load(Ordering::Relaxed), LiveGuard(self.live.clone()));
                self.runtime.spawn(peer_sender(to, rx, shared, http, loop_tx, streams, live));
                tx
            });
            if queue.try_send(m).is_err() {
                self.shared.metrics.peer_messages_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Courier for Queues {
    fn deliver(&self, messages: Vec<Message>, appends: &[Instant]) {
        for since in appends {
            self.shared.latency.append(0, *since);
        }
        self.send(messages);
        for since in appends {
            self.shared.latency.append(1, *since);
        }
    }
}

impl Outbox for Transport {
    fn send(&mut self, messages: Vec<Message>) {
        self.queues.send(messages);
    }

    /// Drops the queues of members that are no longer in the membership; their tasks send what
    /// is queued and end. An empty membership (a member that joins and has not learned it yet)
    /// removes nothing. Looked at after every Ready cycle, not only when the membership changed:
    /// the writer's thread may have answered a member that left since (a queue made again).
    fn retain(&mut self, members: &ConfState) {
        if members.voters.is_empty() && members.learners.is_empty() {
            return;
        }
        let mut map = lock(&self.queues.map);
        if map.keys().any(|id| !members.contains(*id)) {
            map.retain(|id, _| members.contains(*id));
        }
    }

    fn courier(&self) -> Option<Arc<dyn Courier>> {
        Some(self.queues.clone())
    }
}

/// Counts a sender task while it runs.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The index of the last entry that appends of `batch` carry.
fn last_entry(batch: &[Message]) -> Option<crate::raft::Index> {
    batch
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Append { entries, .. } => entries.last().map(|e| e.index),
            _ => None,
        })
        .max()
}

fn is_snapshot(m: &Message) -> bool {
    matches!(m.body, MessageBody::InstallSnapshot { .. })
}

/// Which of a peer's two streams a message takes: appends on one, everything else (heartbeats,
/// votes, answers) on the other, so that a heartbeat never waits behind data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Control = 0,
    Data = 1,
}

fn lane_of(m: &Message) -> Lane {
    if matches!(m.body, MessageBody::Append { .. }) {
        Lane::Data
    } else {
        Lane::Control
    }
}

/// One long-lived `POST /raft/v1/stream` to a peer: its body carries frames as the sender queues
/// them, written by hyper as the connection takes them, so any number of batches are in flight
/// and none waits for an answer.
struct PeerStream {
    frames: mpsc::Sender<Bytes>,
    /// When the body last handed a frame to the connection (ms since `opened`).
    taken_ms: Arc<AtomicU64>,
    /// When a frame was last queued behind none (the stream had sent everything before it).
    waiting_since: Instant,
    opened: Instant,
    last_queued: Instant,
    call: tokio::task::JoinHandle<Result<client::Answer, client::CallError>>,
}

impl PeerStream {
    fn open(http: &HttpClient, request: axum::http::request::Builder) -> PeerStream {
        let (frames, rx) = mpsc::channel::<Bytes>(STREAM_FRAMES);
        let opened = Instant::now();
        let taken_ms = Arc::new(AtomicU64::new(0));
        let taken = taken_ms.clone();
        let body = client::from_channel_noting(rx, move || {
            taken.store(u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        });
        let (http, request) = (http.clone(), request.body(body));
        let call =
            tokio::spawn(async move { http.call(request, STREAM_LIFETIME + STREAM_IDLE, MAX_ANSWER_BYTES).await });
        PeerStream { frames, taken_ms, waiting_since: opened, opened, last_queued: opened, call }
    }

    /// Frames queued and not yet taken by the connection.
    fn pending(&self) -> usize {
        self.frames.max_capacity() - self.frames.capacity()
    }

    /// A frame has waited `STREAM_STALL` with the connection taking nothing: the peer stopped
    /// reading (cut off, or stuck).
    fn stalled(&self, now: Instant) -> bool {
        let taken = self.opened + Duration::from_millis(self.taken_ms.load(Ordering::Relaxed));
        self.pending() > 0 && now.saturating_duration_since(self.waiting_since.max(taken)) > STREAM_STALL
    }
}

/// What one peer's sender task keeps: its two streams, or (a peer that has no streams: an
/// older kuberaft) one `POST /raft/v1/messages` per batch until `post_until`.
struct PeerLink {
    to: NodeId,
    shared: Arc<Shared>,
    http: HttpClient,
    loop_tx: InputSender,
    streams: [Option<PeerStream>; 2],
    /// `--peer-streams=false`.
    post_always: bool,
    post_until: Option<Instant>,
    reported_failure: bool,
    snapshot_in_flight: Arc<AtomicBool>,
}

async fn peer_sender(
    to: NodeId,
    mut rx: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
    http: HttpClient,
    loop_tx: InputSender,
    streams: bool,
    _live: LiveGuard,
) {
    let mut link = PeerLink {
        to,
        shared,
        http,
        loop_tx,
        streams: [None, None],
        post_always: !streams,
        post_until: None,
        reported_failure: false,
        snapshot_in_flight: Arc::new(AtomicBool::new(false)),
    };
    let mut next: Option<Message> = None;
    loop {
        let first = match next.take() {
            Some(m) => m,
            None => match tokio::time::timeout(STREAM_CHECK, rx.recv()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    link.check_streams(Instant::now());
                    continue;
                }
            },
        };
        if is_snapshot(&first) {
            link.send_snapshot(first);
            continue;
        }
        // Whatever waits is batched, per lane, up to a size; a snapshot goes after them.
        let mut batches: [Vec<Message>; 2] = [Vec::new(), Vec::new()];
        let mut bytes = codec::encoded_len(&first);
        batches[lane_of(&first) as usize].push(first);
        while batches[0].len() + batches[1].len() < MAX_BATCH_MESSAGES && bytes < BATCH_TARGET_BYTES {
            let Ok(m) = rx.try_recv() else { break };
            let size = codec::encoded_len(&m);
            if is_snapshot(&m) || bytes.saturating_add(size) > BATCH_TARGET_BYTES {
                next = Some(m);
                break;
            }
            bytes += size;
            batches[lane_of(&m) as usize].push(m);
        }
        let [control, data] = batches;
        for (lane, batch) in [(Lane::Control, control), (Lane::Data, data)] {
            if !batch.is_empty() {
                link.send(lane, batch).await;
            }
        }
    }
    // The member left the membership: what this link knew of it goes with it.
    lock(&link.shared.unreachable).remove(&link.to);
}

impl PeerLink {
    fn dropped(&self, count: usize) {
        self.shared.metrics.peer_messages_dropped.fetch_add(count as u64, Ordering::Relaxed);
    }

    async fn send(&mut self, lane: Lane, batch: Vec<Message>) {
        let Some(address) = self.shared.address(self.to).filter(|a| !a.peer_url.is_empty()) else {
            self.dropped(batch.len());
            return;
        };
        let frame = match encode_frame(&batch) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode peer messages");
                return;
            }
        };
        if let Some(last) = last_entry(&batch) {
            // The write path's `sent` point (`node::latency`).
            self.shared.latency.passed(WritePoint::Sent, last);
        }
        let now = Instant::now();
        // Both lanes: a data stream that stalled is noticed while heartbeats flow (the core
        // sends no appends while those in flight are unanswered).
        self.close_ended(Lane::Control, &address, now);
        self.close_ended(Lane::Data, &address, now);
        if self.post_always || self.post_until.is_some_and(|until| now < until) {
            let body = client::full(frame.slice(4..));
            let request = peer_request(&self.shared, &address, MESSAGES_PATH).body(body);
            let failure = match self.http.call(request, BATCH_TIMEOUT, MAX_ANSWER_BYTES).await {
                Ok(answer) => self.answer_failure(&address, &answer),
                Err(e) => Some(e.to_string()),
            };
            self.report(&address, failure, batch.len());
            return;
        }
        let stream = self.stream(lane, &address, now);
        let caught_up = stream.pending() == 0;
        match stream.frames.try_send(frame) {
            Ok(()) => {
                stream.last_queued = now;
                if caught_up {
                    stream.waiting_since = now;
                }
            }
            // The peer reads more slowly than the loop sends, or is cut off: the core sends
            // again what is lost, and the stall check closes a stream that takes nothing.
            Err(_) => self.dropped(batch.len()),
        }
    }

    /// The lane's stream: the open one, or a new one in place of one that ended (`close_ended`)
    /// or lived long (the peer port cuts a request at its request timeout).
    fn stream(&mut self, lane: Lane, address: &MemberInfo, now: Instant) -> &mut PeerStream {
        let slot = &mut self.streams[lane as usize];
        if slot.as_ref().is_some_and(|s| now.duration_since(s.opened) > STREAM_LIFETIME) {
            // Closed by ending its body: what it holds is still sent.
            *slot = None;
        }
        let (shared, http) = (&self.shared, &self.http);
        let kind = match lane {
            Lane::Control => "control",
            Lane::Data => "data",
        };
        slot.get_or_insert_with(|| {
            PeerStream::open(http, peer_request(shared, address, STREAM_PATH).header(HEADER_STREAM, kind))
        })
    }

    /// Ends the lane's stream if its call ended (reporting why) or it stalled (dropping it, which
    /// closes its connection).
    fn close_ended(&mut self, lane: Lane, address: &MemberInfo, now: Instant) {
        let Some(stream) = self.streams[lane as usize].as_mut() else { return };
        let lost = stream.pending();
        let failure = if stream.call.is_finished() {
            let ended = futures::FutureExt::now_or_never(&mut stream.call);
            match ended {
                Some(Ok(Ok(answer))) if answer.status == StatusCode::NOT_FOUND => {
                    tracing::info!(peer = %address.name, "the peer has no message streams (an older kuberaft): posting batches");
                    self.post_until = Some(now + STREAM_RETRY);
                    None
                }
                Some(Ok(Ok(answer))) => self.answer_failure(address, &answer),
                Some(Ok(Err(e))) => Some(e.to_string()),
                Some(Err(e)) => Some(format!("the stream's task ended: {e}")),
                None => None,
            }
        } else if stream.stalled(now) {
            stream.call.abort();
            Some(format!("the peer took nothing for {} ms", STREAM_STALL.as_millis()))
        } else {
            if stream.taken_ms.load(Ordering::Relaxed) > 0 {
                self.report(address, None, 0);
            }
            return;
        };
        self.streams[lane as usize] = None;
        self.report(address, failure, lost);
    }

    /// Closes streams idle for `STREAM_IDLE`, and notices ended or stalled ones while nothing is
    /// sent.
    fn check_streams(&mut self, now: Instant) {
        let Some(address) = self.shared.address(self.to) else { return };
        for lane in [Lane::Control, Lane::Data] {
            self.close_ended(lane, &address, now);
            let slot = &mut self.streams[lane as usize];
            if slot.as_ref().is_some_and(|s| s.pending() == 0 && now.duration_since(s.last_queued) > STREAM_IDLE) {
                *slot = None;
            }
        }
    }

    /// Why an answer to a batch or a stream is a failure (`None`: it is not).
    fn answer_failure(&self, address: &MemberInfo, answer: &client::Answer) -> Option<String> {
        if answer.status.is_success() {
            return None;
        }
        let status = answer.status;
        let why = String::from_utf8_lossy(&answer.body);
        if status == StatusCode::PRECONDITION_FAILED
            || status == StatusCode::FORBIDDEN
            || status == StatusCode::PAYLOAD_TOO_LARGE
        {
            tracing::warn!(peer = %address.name, %status, reason = %why, "peer rejected our messages");
            self.shared.set_error("peers", Some(format!("{} rejected our messages: {why}", address.peer_url)));
        }
        Some(format!("{status}: {why}"))
    }

    /// Records that the peer answers (`None`) or why it does not, on a change; `lost` messages
    /// count as dropped.
    fn report(&mut self, address: &MemberInfo, failure: Option<String>, lost: usize) {
        let (shared, to) = (&self.shared, self.to);
        match failure {
            None => {
                if self.reported_failure {
                    tracing::info!(peer = %address.name, "peer reachable again");
                    self.reported_failure = false;
                    lock(&shared.unreachable).remove(&to);
                    shared.timeline.record(shared.term(), EventKind::PeerReachable { peer: timeline::member(to) });
                }
            }
            Some(why) => {
                if !self.reported_failure {
                    tracing::debug!(peer = %address.name, error = %why, "cannot reach peer");
                    self.reported_failure = true;
                    lock(&shared.unreachable).insert(to);
                    let event = EventKind::PeerUnreachable { peer: timeline::member(to), error: why };
                    shared.timeline.record(shared.term(), event);
                }
                self.dropped(lost);
            }
        }
    }

    /// A snapshot streams on its own task, so that heartbeats and appends to the peer never wait
    /// behind it; one at a time per peer (a newer one meanwhile is dropped: the core sends again
    /// once this one is answered or times out).
    fn send_snapshot(&mut self, message: Message) {
        let (shared, to) = (&self.shared, self.to);
        let Some(address) = shared.address(to).filter(|a| !a.peer_url.is_empty()) else {
            self.dropped(1);
            return;
        };
        shared.metrics.snapshots_sent.fetch_add(1, Ordering::Relaxed);
        shared.timeline.record(shared.term(), EventKind::SnapshotSent { to: timeline::member(to) });
        let reader = lock(&shared.outgoing_snapshots).remove(&to);
        if self.snapshot_in_flight.swap(true, Ordering::AcqRel) {
            return;
        }
        let body = match snapshot_stream(message, reader) {
            Ok(body) => body,
            Err(e) => {
                self.snapshot_in_flight.store(false, Ordering::Release);
                tracing::warn!(error = %e, "cannot send a snapshot");
                let _ = offer(&self.loop_tx, Input::SnapshotFailed(to));
                return;
            }
        };
        let request = peer_request(shared, &address, SNAPSHOT_PATH).body(body);
        let (http, loop_tx, in_flight, peer) =
            (self.http.clone(), self.loop_tx.clone(), self.snapshot_in_flight.clone(), address.name.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = http.call(request, SNAPSHOT_TIMEOUT, MAX_ANSWER_BYTES).await;
            in_flight.store(false, Ordering::Release);
            match answer {
                Ok(answer) if answer.status.is_success() => {
                    tracing::info!(%peer, seconds = started.elapsed().as_secs_f64(), "sent a snapshot");
                }
                Ok(answer) => {
                    let why = String::from_utf8_lossy(&answer.body);
                    tracing::warn!(%peer, status = %answer.status, reason = %why, "the peer refused a snapshot");
                    let _ = offer(&loop_tx, Input::SnapshotFailed(to));
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "sending a snapshot failed");
                    let _ = offer(&loop_tx, Input::SnapshotFailed(to));
                }
            }
        });
    }
}

/// A batch as one frame of a stream: the length (4 bytes, big-endian) of what follows, then
/// the body `POST /raft/v1/messages` takes (`encode_messages`).
fn encode_frame(messages: &[Message]) -> Result<Bytes, CodecError> {
    let mut frame = vec![0, 0, 0, 0, PEER_FORMAT];
    codec::encode_into(messages, &mut frame)?;
    let len = u32::try_from(frame.len() - 4).map_err(|_| CodecError::new("a batch of 4 GiB or more"))?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(Bytes::from(frame))
}

pub(super) fn peer_request(shared: &Shared, address: &MemberInfo, path: &str) -> axum::http::request::Builder {
    let request = axum::http::Request::post(format!("{}{path}", address.peer_url))
        .header(HEADER_CLUSTER_ID, format!("{:x}", shared.cluster_id))
        .header(HEADER_FROM, format!("{:x}", shared.id))
        .header(HEADER_CLIENT_URL, &shared.advertise_client_url)
        .header(HEADER_PEER_URL, &shared.advertise_peer_url)
        .header(HEADER_TAKES, TAKES_PROPOSE)
        .header("content-type", PEER_CONTENT_TYPE);
    match axum::http::HeaderValue::from_str(&shared.name) {
        Ok(name) => request.header(HEADER_NAME, name),
        Err(_) => request,
    }
}

/// How a peer body is encoded, told by its content type: `PEER_CONTENT_TYPE` bodies start with
/// a format byte; anything else is what kuberaft 0.1.0 sent (`application/octet-stream`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    /// Starts with a format byte (`PEER_FORMAT`).
    Versioned,
    /// kuberaft 0.1.0: bincode 1, no format byte.
    Legacy,
}

impl WireFormat {
    pub fn of(headers: &HeaderMap) -> WireFormat {
        match headers.get("content-type") {
            Some(value) if value.as_bytes() == PEER_CONTENT_TYPE.as_bytes() => WireFormat::Versioned,
            _ => WireFormat::Legacy,
        }
    }

    /// The body after its format byte, or why it cannot be read.
    fn payload(self, body: &[u8]) -> Result<&[u8], String> {
        match (self, body.split_first()) {
            (WireFormat::Legacy, _) => Ok(body),
            (WireFormat::Versioned, Some((&PEER_FORMAT, rest))) => Ok(rest),
            (WireFormat::Versioned, Some((format, _))) => Err(format!(
                "peer format {format} is not one this member reads ({PEER_FORMAT}); run the same kuberaft version on every member"
            )),
            (WireFormat::Versioned, None) => Err("an empty body".into()),
        }
    }
}

/// The body of `POST /raft/v1/messages` (see the module doc), sent as `PEER_CONTENT_TYPE`.
pub fn encode_messages(messages: &[Message]) -> Result<Vec<u8>, CodecError> {
    let mut body = vec![PEER_FORMAT];
    codec::encode_into(messages, &mut body)?;
    Ok(body)
}

/// Reads a `POST /raft/v1/messages` body of either format.
pub fn decode_messages(format: WireFormat, body: &[u8]) -> Result<Vec<Message>, String> {
    let payload = format.payload(body)?;
    match format {
        WireFormat::Versioned => codec::decode(payload).map_err(|e| e.to_string()),
        // 0.1.0's reader ignored bytes after the batch; so does this one.
        WireFormat::Legacy => legacy::from_bytes(payload).map_err(|e| e.to_string()),
    }
}

/// The body of `POST /raft/v1/snapshot` (see the module doc) as its total length and chunks;
/// the chunks share the snapshot's buffer (no copy).
pub fn snapshot_body(mut message: Message) -> Result<(u64, Vec<Bytes>), CodecError> {
    let MessageBody::InstallSnapshot { snapshot } = &mut message.body else {
        return Err(CodecError::new("not an InstallSnapshot"));
    };
    let data = std::mem::take(&mut snapshot.data);
    let head = codec::encode(&message)?;
    let mut first = Vec::with_capacity(5 + head.len());
    first.push(PEER_FORMAT);
    first.extend_from_slice(&(head.len() as u32).to_be_bytes());
    first.extend_from_slice(&head);
    let mut chunks = vec![Bytes::from(first)];
    let mut at = 0;
    while at < data.len() {
        let end = data.len().min(at + SNAPSHOT_CHUNK_BYTES);
        chunks.push(data.slice(at..end));
        at = end;
    }
    let length = chunks.iter().map(|c| c.len() as u64).sum();
    Ok((length, chunks))
}

/// The body of `POST /raft/v1/snapshot`: the message's head, then the chunks of `reader` as a
/// blocking thread reads them off the database (a few at a time). A read that fails ends the
/// body early, which the receiver refuses (the stream's trailer is missing).
fn snapshot_stream(message: Message, reader: Option<SnapshotReader>) -> Result<client::RequestBody, String> {
    let Some(reader) = reader else {
        return Err("no snapshot stream was prepared for it".into());
    };
    let (_, mut head) = snapshot_body(message).map_err(|e| e.to_string())?;
    let head = head.remove(0);
    let (tx, rx) = mpsc::channel::<Bytes>(SNAPSHOT_QUEUE_CHUNKS);
    tokio::task::spawn_blocking(move || {
        if tx.blocking_send(head).is_err() {
            return;
        }
        for chunk in reader {
            match chunk {
                Ok(chunk) => {
                    if tx.blocking_send(chunk).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the snapshot failed; its body ends early");
                    return;
                }
            }
        }
    });
    Ok(client::from_channel(rx))
}

/// Reads a `POST /raft/v1/snapshot` body of either format back into its message.
pub fn parse_snapshot_body(format: WireFormat, body: Bytes) -> Result<Message, String> {
    let skip = body.len() - format.payload(&body)?.len();
    let body = body.slice(skip..);
    if body.len() < 4 {
        return Err("the snapshot body is shorter than its 4-byte header length".into());
    }
    let head_len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if head_len > MAX_SNAPSHOT_HEAD_BYTES || 4 + head_len > body.len() {
        return Err(format!("the snapshot header declares {head_len} bytes; the body has {}", body.len() - 4));
    }
    let head = &body[4..4 + head_len];
    let message = match format {
        WireFormat::Versioned => codec::decode::<Message>(head).map_err(|e| e.to_string()),
        WireFormat::Legacy => legacy::from_bytes::<Message>(head).map_err(|e| e.to_string()),
    };
    let mut message = message.map_err(|e| format!("undecodable snapshot message: {e}"))?;
    match &mut message.body {
        MessageBody::InstallSnapshot { snapshot } if snapshot.data.is_empty() => {
            snapshot.data = body.slice(4 + head_len..);
            Ok(message)
        }
        MessageBody::InstallSnapshot { .. } => Err("the snapshot message must carry its data after it".into()),
        other => Err(format!("expected an InstallSnapshot, got {}", other.kind())),
    }
}

/// State of the peer-port server.
#[derive(Clone)]
pub struct PeerServer {
    pub shared: Arc<Shared>,
    pub loop_tx: InputSender,
    pub limits: PeerLimits,
    /// One snapshot is received at a time.
    snapshot_slot: Arc<Semaphore>,
    /// Followers' forwarded requests served at once (`forward`): at most half the port's
    /// request slots, so that Raft's messages always find one.
    pub(super) forwarded_slots: Arc<Semaphore>,
    /// `--peer-client-cert-auth`: each sender's certificate must be its own (`check_identity`).
    pub require_identity: bool,
}

impl PeerServer {
    pub fn new(shared: Arc<Shared>, loop_tx: InputSender, limits: PeerLimits) -> PeerServer {
        PeerServer {
            shared,
            loop_tx,
            limits,
            snapshot_slot: Arc::new(Semaphore::new(1)),
            forwarded_slots: Arc::new(Semaphore::new(super::forward::FORWARDED_SLOTS)),
            require_identity: false,
        }
    }

    /// Requires each sender's certificate to be issued for its peer URL's host.
    pub fn requiring_identity(self, require_identity: bool) -> PeerServer {
        PeerServer { require_identity, ..self }
    }
}

/// The message and snapshot handlers read their bodies themselves (`read_body`), checked before
/// and while reading; the default limit holds only for handlers that take a body through an
/// axum extractor (`Json`, `Bytes`), whose requests are small.
pub fn peer_router(server: PeerServer) -> Router {
    Router::new()
        .route(MESSAGES_PATH, post(receive))
        .route(STREAM_PATH, post(receive_stream))
        .route(SNAPSHOT_PATH, post(receive_snapshot))
        .route(MEMBERS_PATH, get(members))
        .route(JOIN_PATH, post(join))
        .route(super::forward::PLACE_PATH, post(super::forward::serve_placements))
        .route(super::forward::READ_INDEX_PATH, post(super::forward::serve_read_index))
        .route(super::forward::LEASE_RENEW_PATH, post(super::forward::serve_renewals))
        .layer(axum::extract::DefaultBodyLimit::max(crate::base::wire::MAX_MEMBER_REQUEST_BYTES))
        .with_state(server)
}

/// The peer port's answer when its connection and request limits stop a request (`serve`).
pub fn render_error(status: StatusCode, _code: &'static str, message: String) -> Response {
    (status, message).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn reject(status: StatusCode, why: String) -> Response {
    (status, why).into_response()
}

fn body_error(e: BodyError) -> Response {
    reject(e.status(), e.to_string())
}

/// Checks a peer request's headers (before its body is read): the sender's cluster id must be
/// ours. Returns the sender's id (0 if it gave none).
pub(super) fn check_sender(
    server: &PeerServer,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Result<u64, (StatusCode, String)> {
    let shared = &server.shared;
    let ours = format!("{:x}", shared.cluster_id);
    let Some(theirs) = header(headers, HEADER_CLUSTER_ID) else {
        return Err((StatusCode::BAD_REQUEST, "missing cluster id header".into()));
    };
    let from = header(headers, HEADER_FROM).and_then(|f| u64::from_str_radix(f, 16).ok()).unwrap_or(0);
    if theirs != ours {
        shared.metrics.peer_messages_rejected.fetch_add(1, Ordering::Relaxed);
        let why = format!(
            "cluster id mismatch: this member ({}) belongs to cluster {ours}, the sender {from:x} to {theirs}",
            shared.name
        );
        tracing::warn!(from = %format!("{from:x}"), theirs, ours, "rejected messages from another cluster");
        shared.set_error("peers", Some(format!("rejected messages from member {from:x} of cluster {theirs}")));
        return Err((StatusCode::PRECONDITION_FAILED, why));
    }
    if server.require_identity {
        if let Err(why) = check_identity(shared, from, extensions.get::<PeerCertificate>()) {
            shared.metrics.peer_messages_rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(from = %format!("{from:x}"), %why, "rejected a peer whose certificate is not its own");
            shared.set_error("peers", Some(format!("rejected member {from:x}: {why}")));
            return Err((StatusCode::FORBIDDEN, why));
        }
    }
    Ok(from)
}

/// With `--peer-client-cert-auth`: the certificate a sender presented (its chain to the
/// cluster's CA checked in the handshake) must be issued for the host of the peer URL this
/// member has for it, from the configuration it has applied, the initial list, or (a member
/// that joined) the leader's view it joined through. So one member's certificate cannot speak
/// for another, a certificate of the CA issued for something else cannot speak for any member,
/// and a request that names no sender, or a sender this member knows no peer URL of, is refused
/// (a member added since this one last applied the configuration is refused until it has, and
/// its sender retries).
fn check_identity(shared: &Shared, from: u64, cert: Option<&PeerCertificate>) -> Result<(), String> {
    if from == 0 {
        return Err("the request names no sending member".into());
    }
    let Some(cert) = cert else {
        return Err(format!("member {from:x} presented no certificate"));
    };
    let Some(url) = shared.address(from).map(|a| a.peer_url).filter(|u| !u.is_empty()) else {
        return Err(format!("member {from:x} is not a member this one knows the peer URL of"));
    };
    let host =
        crate::base::ids::url_host(&url).ok_or_else(|| format!("member {from:x}'s peer URL {url} has no host"))?;
    certificate_names(&cert.0, host).map_err(|why| format!("member {from:x} (peer URL {url}): {why}"))
}

/// Records the URLs and the name a sender's headers announce.
fn note_sender(shared: &Shared, from: u64, headers: &HeaderMap) {
    if from != 0 {
        note_peer_urls(
            shared,
            from,
            header(headers, HEADER_PEER_URL),
            header(headers, HEADER_CLIENT_URL),
            header(headers, HEADER_NAME),
        );
        let takes = header(headers, HEADER_TAKES).is_some_and(|t| t.split(',').any(|t| t.trim() == TAKES_PROPOSE));
        shared.forward.note_takes(from, takes);
    }
}

/// Hands checked messages to the Raft loop.
fn step_all(server: &PeerServer, from: u64, messages: Vec<Message>) {
    let shared = &server.shared;
    for m in messages {
        if m.to != shared.id || m.from != from || from == 0 || !m.is_well_formed() {
            shared.metrics.peer_messages_rejected.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // The leader's answer to this member's proposals goes to the handlers that wait for it,
        // not through the Raft loop.
        if let MessageBody::Placed { batch, answer } = m.body {
            shared.forward.placed(from, batch, answer);
            continue;
        }
        if offer(&server.loop_tx, Input::Step(m)).is_err() {
            shared.metrics.peer_messages_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Hands a request's checked messages to the Raft loop.
fn deliver(server: &PeerServer, from: u64, headers: &HeaderMap, messages: Vec<Message>) -> Response {
    note_sender(&server.shared, from, headers);
    step_all(server, from, messages);
    StatusCode::NO_CONTENT.into_response()
}

async fn receive(State(server): State<PeerServer>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let from = match check_sender(&server, &parts.headers, &parts.extensions) {
        Ok(from) => from,
        Err((status, why)) => return reject(status, why),
    };
    let bytes = match read_batch(&server, &parts.headers, body).await {
        Ok(bytes) => bytes,
        Err(refused) => return refused,
    };
    let messages = match decode_messages(WireFormat::of(&parts.headers), &bytes) {
        Ok(m) => m,
        Err(e) => return reject(StatusCode::BAD_REQUEST, format!("undecodable messages: {e}")),
    };
    deliver(&server, from, &parts.headers, messages)
}

/// `POST /raft/v1/stream`: frames of messages for as long as the sender keeps the body open,
/// each handed to the Raft loop as it arrives. Checked as a batch is: the sender's headers once,
/// then each frame against `PeerLimits::batch_bytes` (413, and the stream ends) and its
/// decoding (400). Answers 204 when the sender ends the body, and 503 when this member stops
/// (`Shared::stopping`): the sender sees why, and the stop does not wait for it.
async fn receive_stream(State(server): State<PeerServer>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let from = match check_sender(&server, &parts.headers, &parts.extensions) {
        Ok(from) => from,
        Err((status, why)) => return reject(status, why),
    };
    if WireFormat::of(&parts.headers) != WireFormat::Versioned {
        return reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("a stream is sent as {PEER_CONTENT_TYPE}"));
    }
    note_sender(&server.shared, from, &parts.headers);
    let limit = server.limits.batch_bytes;
    // A sender keeps its stream open for as long as it has something to send, and a leader
    // always has (heartbeats): the stream ends when this member stops (`Shared::stopping`).
    let mut stop = server.shared.stopping.subscribe();
    let mut chunks = body.into_data_stream();
    let mut buffer = bytes::BytesMut::new();
    loop {
        while let Some(head) = buffer.first_chunk::<4>() {
            let len = u32::from_be_bytes(*head) as usize;
            if len > limit {
                return reject(StatusCode::PAYLOAD_TOO_LARGE, format!("a frame of {len} bytes; the limit is {limit}"));
            }
            if buffer.len() < 4 + len {
                buffer.reserve(4 + len - buffer.len());
                break;
            }
            let frame = buffer.split_to(4 + len);
            match decode_messages(WireFormat::Versioned, &frame[4..]) {
                Ok(messages) => step_all(&server, from, messages),
                Err(e) => return reject(StatusCode::BAD_REQUEST, format!("undecodable messages: {e}")),
            }
        }
        let next = tokio::select! {
            next = chunks.next() => next,
            () = crate::base::signal::stopped(&mut stop) => {
                return reject(StatusCode::SERVICE_UNAVAILABLE, format!("member {} is stopping", server.shared.name));
            }
        };
        match next {
            Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
            Some(Err(e)) => return reject(StatusCode::BAD_REQUEST, format!("the stream broke: {e}")),
            None if buffer.is_empty() => return StatusCode::NO_CONTENT.into_response(),
            None => return reject(StatusCode::BAD_REQUEST, "the stream ended inside a frame".into()),
        }
    }
}

/// Reads a batch's body (messages, or forwarded proposals), within the batch limits.
pub(super) async fn read_batch(server: &PeerServer, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let limits = BodyLimits { limit: server.limits.batch_bytes, stall: BODY_STALL, deadline: BATCH_DEADLINE };
    read_body(headers, body, limits).await.map_err(body_error)
}

async fn receive_snapshot(State(server): State<PeerServer>, request: Request) -> Response {
    let (parts, body): (_, Body) = request.into_parts();
    let from = match check_sender(&server, &parts.headers, &parts.extensions) {
        Ok(from) => from,
        Err((status, why)) => return reject(status, why),
    };
    let Ok(_slot) = server.snapshot_slot.clone().try_acquire_owned() else {
        return reject(StatusCode::SERVICE_UNAVAILABLE, "this member is receiving another snapshot".into());
    };
    if WireFormat::of(&parts.headers) == WireFormat::Versioned {
        return match receive_streamed_snapshot(&server, body).await {
            Ok(message) => deliver(&server, from, &parts.headers, vec![message]),
            Err((status, why)) => {
                tracing::warn!(%why, "refused a snapshot");
                reject(status, why)
            }
        };
    }
    // A 0.1.0 member's snapshot: its data is in the message, read into memory.
    let limit = server.limits.snapshot_bytes;
    if let Err(e) = check_declared(&parts.headers, limit) {
        return body_error(e);
    }
    let limits = BodyLimits { limit, stall: BODY_STALL, deadline: SNAPSHOT_DEADLINE };
    let bytes = match read_body(&parts.headers, body, limits).await {
        Ok(bytes) => bytes,
        Err(e) => return body_error(e),
    };
    match parse_snapshot_body(WireFormat::of(&parts.headers), bytes) {
        Ok(message) => deliver(&server, from, &parts.headers, vec![message]),
        Err(why) => reject(StatusCode::BAD_REQUEST, why),
    }
}

/// Reads a streamed snapshot: the message's head, then the state machine's stream, written into
/// a new database beside the live one as it arrives (`KvStore::stage`, on a blocking thread,
/// a few chunks behind the network). The staged state machine must be exactly the one the
/// message's metadata names; it waits in `Shared::staged` for the Raft loop to install it.
async fn receive_streamed_snapshot(server: &PeerServer, body: Body) -> Result<Message, (StatusCode, String)> {
    let bad = |why: String| (StatusCode::BAD_REQUEST, why);
    let mut stream = body.into_data_stream();
    let mut pending = Vec::new();
    // The head: the format byte, its length, the message.
    let (mut message, rest) = loop {
        if pending.len() >= 5 {
            let head_len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            if head_len > MAX_SNAPSHOT_HEAD_BYTES {
                return Err(bad(format!("the snapshot header declares {head_len} bytes")));
            }
            if pending.len() >= 5 + head_len {
                let message =
                    parse_snapshot_body(WireFormat::Versioned, Bytes::copy_from_slice(&pending[..5 + head_len]))
                        .map_err(bad)?;
                break (message, Bytes::copy_from_slice(&pending[5 + head_len..]));
            }
        }
        match tokio::time::timeout(SNAPSHOT_STALL, stream.next()).await {
            Ok(Some(Ok(chunk))) => pending.extend_from_slice(&chunk),
            Ok(Some(Err(e))) => return Err(bad(format!("the snapshot body broke: {e}"))),
            Ok(None) => return Err(bad("the snapshot body ended inside its header".into())),
            Err(_) => return Err((StatusCode::REQUEST_TIMEOUT, "the snapshot body stalled".into())),
        }
    };
    let MessageBody::InstallSnapshot { snapshot } = &mut message.body else {
        return Err(bad("not an InstallSnapshot".into()));
    };
    let (index, term) = (snapshot.meta.index, snapshot.meta.term);
    let started = std::time::Instant::now();
    tracing::info!(index, term, "receiving a snapshot");
    let staging = read(&server.shared.kv).path().map(staging_path);
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, String>>(SNAPSHOT_RECEIVE_FRAMES);
    let writer = tokio::task::spawn_blocking(move || {
        let chunks = std::iter::from_fn(move || rx.blocking_recv());
        KvStore::stage(staging.as_deref(), ChunkReader::new(chunks))
    });
    let mut received = rest.len() as u64;
    let mut fed = if rest.is_empty() { Ok(()) } else { send_chunk(&tx, rest).await };
    while fed.is_ok() {
        match tokio::time::timeout(SNAPSHOT_STALL, stream.next()).await {
            Ok(Some(Ok(chunk))) => {
                received += chunk.len() as u64;
                fed = send_chunk(&tx, chunk).await;
            }
            Ok(Some(Err(e))) => fed = Err(format!("the snapshot body broke: {e}")),
            Ok(None) => break,
            Err(_) => fed = Err("the snapshot body stalled".into()),
        }
    }
    if let Err(why) = &fed {
        // The writer sees the error and stops; nothing is left behind.
        let _ = tx.try_send(Err(why.clone()));
    }
    drop(tx);
    let staged = writer.await.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    fed.map_err(bad)?;
    let mut kv = staged.map_err(|e| bad(format!("the snapshot cannot be installed: {e}")))?;
    kv.check_against(index, term).map_err(|e| bad(e.to_string()))?;
    tracing::info!(
        index,
        term,
        bytes = received,
        seconds = started.elapsed().as_secs_f64(),
        "received and staged a snapshot"
    );
    let replaced = lock(&server.shared.staged).replace(StagedSnapshot { index, term, kv });
    if let Some(old) = replaced {
        old.kv.discard();
    }
    Ok(message)
}

/// Hands a chunk to the blocking writer without blocking this task's thread.
async fn send_chunk(tx: &mpsc::Sender<Result<Bytes, String>>, chunk: Bytes) -> Result<(), String> {
    match tokio::time::timeout(SNAPSHOT_STALL, tx.send(Ok(chunk))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("the snapshot could not be written".into()),
        Err(_) => Err("writing the snapshot stalled".into()),
    }
}

async fn members(State(server): State<PeerServer>) -> Json<PeerView> {
    let members: Vec<(MemberInfo, bool, bool)> = {
        let kv = read(&server.shared.kv);
        kv.members()
            .into_iter()
            .map(|(info, voter)| {
                let joined = kv.joined(info.id);
                (info, voter, joined)
            })
            .collect()
    };
    let status = server.shared.status();
    let matched = status.matched;
    Json(PeerView {
        peer_url: String::new(),
        leader: status.role == crate::raft::Role::Leader && status.committed_in_term,
        formed: status.term > 1,
        blank: false,
        cluster_id: server.shared.cluster_id,
        members: members
            .into_iter()
            .map(|(MemberInfo { id, name, peer_url, .. }, voter, joined)| PeerMember {
                id,
                name,
                peer_url,
                voter,
                matched: matched.get(&id).copied().unwrap_or(0),
                joined,
            })
            .collect(),
    })
}

/// A member with empty data asks the leader to record that it starts under its id.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub cluster_id: String,
    pub id: String,
}

/// The leader's answer: `joined`, or why not (`dataLost`: the member must be replaced).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinAnswer {
    pub joined: bool,
    #[serde(default)]
    pub data_lost: bool,
    #[serde(default)]
    pub reason: String,
}

async fn join(
    State(server): State<PeerServer>,
    cert: Option<axum::Extension<PeerCertificate>>,
    Json(request): Json<JoinRequest>,
) -> Response {
    let shared = &server.shared;
    if request.cluster_id != format!("{:x}", shared.cluster_id) {
        let why = format!("this member belongs to cluster {:x}, not {}", shared.cluster_id, request.cluster_id);
        return reject(StatusCode::PRECONDITION_FAILED, why);
    }
    let Ok(id) = u64::from_str_radix(&request.id, 16) else {
        return reject(StatusCode::BAD_REQUEST, format!("bad member id '{}'", request.id));
    };
    // A member may claim only its own id.
    if server.require_identity {
        if let Err(why) = check_identity(shared, id, cert.as_ref().map(|c| &c.0)) {
            return reject(StatusCode::FORBIDDEN, why);
        }
    }
    let status = shared.status();
    if status.role != crate::raft::Role::Leader || !status.committed_in_term {
        return reject(StatusCode::SERVICE_UNAVAILABLE, "not the leader; ask the leader".into());
    }
    let node = super::handle::NodeHandle { shared: shared.clone(), tx: server.loop_tx.clone() };
    match node.propose(&crate::store::command::Command::Join { id }).await {
        Ok(crate::store::command::ApplyResult::Joined) => {
            Json(JoinAnswer { joined: true, ..JoinAnswer::default() }).into_response()
        }
        Ok(crate::store::command::ApplyResult::JoinRefused { data_lost, reason }) => {
            (StatusCode::CONFLICT, Json(JoinAnswer { joined: false, data_lost, reason })).into_response()
        }
        Ok(other) => reject(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected outcome {other:?}")),
        Err(e) => reject(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::raft::{Snapshot, SnapshotMeta};

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::for_tests(1, "etcd-0", 0, ""))
    }

    /// A sender's certificate must name the host of the peer URL this member has for it; a
    /// request naming no sender, or a sender it knows no URL of, is refused.
    #[test]
    fn a_senders_certificate_must_be_issued_for_its_own_peer_url() {
        use crate::base::pki::Authority;
        use rustls::pki_types::pem::PemObject;
        let shared = shared();
        shared.addresses.learn(2, "etcd-1", "https://127.0.0.2:2380", "");
        let ca = Authority::new("ca").expect("ca");
        let cert_for = |host: &str| {
            let issued = ca.issue("m", &[host]).expect("issue");
            let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
            PeerCertificate(Arc::new(der))
        };
        let (own, others) = (cert_for("127.0.0.2"), cert_for("127.0.0.3"));
        assert_eq!(check_identity(&shared, 2, Some(&own)), Ok(()));
        let e = check_identity(&shared, 2, Some(&others)).expect_err("another's");
        assert_eq!(e, "member 2 (peer URL https://127.0.0.2:2380): the certificate is not issued for 127.0.0.2");
        assert_eq!(check_identity(&shared, 2, None), Err("member 2 presented no certificate".into()));
        assert_eq!(check_identity(&shared, 0, Some(&own)), Err("the request names no sending member".into()));
        assert_eq!(
            check_identity(&shared, 3, Some(&others)),
            Err("member 3 is not a member this one knows the peer URL of".into())
        );
    }

    fn heartbeat(to: NodeId) -> Message {
        Message { from: 1, to, term: 1, body: MessageBody::Heartbeat { commit: 0, read_seq: 0 } }
    }

    fn conf(voters: &[NodeId]) -> ConfState {
        ConfState { voters: voters.iter().copied().collect(), learners: BTreeSet::new() }
    }

    #[test]
    fn the_sender_tasks_of_departed_members_end() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (tx, _rx) = crate::node::runtime::input_queue(16);
        let mut transport = Transport::new(shared(), runtime.handle().clone(), tx, None, None);
        transport.retain(&conf(&[1, 2, 3]));
        transport.send(vec![heartbeat(2), heartbeat(3)]);
        assert_eq!(transport.live_senders(), 2);
        transport.retain(&conf(&[1, 2]));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while transport.live_senders() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(transport.live_senders(), 1, "the task for member 3 ended; member 2's runs");
        // An empty membership (a joining member that has not learned it yet) removes nothing.
        transport.retain(&ConfState::default());
        transport.send(vec![heartbeat(9)]);
        assert_eq!(transport.live_senders(), 2);
        runtime.shutdown_timeout(Duration::from_secs(1));
    }

    #[test]
    fn a_snapshot_body_reads_back_into_its_message() {
        let data = Bytes::from((0..(SNAPSHOT_CHUNK_BYTES * 2 + 17)).map(|i| i as u8).collect::<Vec<_>>());
        let meta = SnapshotMeta { index: 9, term: 2, conf: conf(&[1, 2]) };
        let message = Message {
            from: 1,
            to: 2,
            term: 2,
            body: MessageBody::InstallSnapshot { snapshot: Snapshot { meta, data: data.clone() } },
        };
        let (length, chunks) = snapshot_body(message.clone()).unwrap();
        assert_eq!(chunks.len(), 4, "a header and three chunks of data");
        assert_eq!(length, chunks.iter().map(|c| c.len() as u64).sum::<u64>());
        let body: Vec<u8> = chunks.concat();
        assert_eq!(body[0], PEER_FORMAT);
        let versioned = |body: Vec<u8>| parse_snapshot_body(WireFormat::Versioned, Bytes::from(body));
        assert_eq!(versioned(body.clone()).unwrap(), message);
        // Damaged bodies are refused, never a panic.
        assert!(versioned(b"ab".to_vec()).is_err());
        assert!(versioned(Vec::new()).is_err());
        assert!(versioned(body[..10].to_vec()).is_err());
        let mut huge_head = body.clone();
        huge_head[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(versioned(huge_head).is_err());
        let head = codec::encode(&heartbeat(2)).unwrap();
        let mut not_a_snapshot = vec![PEER_FORMAT];
        not_a_snapshot.extend_from_slice(&(head.len() as u32).to_be_bytes());
        not_a_snapshot.extend_from_slice(&head);
        assert!(versioned(not_a_snapshot).unwrap_err().contains("expected an InstallSnapshot"));
    }

    /// Little-endian bytes of a u64, as bincode 1 writes integers and lengths.
    fn le(n: u64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    #[test]
    fn the_new_format_is_sent_and_both_formats_are_read() {
        let batch = vec![heartbeat(2), heartbeat(3)];
        let body = encode_messages(&batch).unwrap();
        assert_eq!(body[0], PEER_FORMAT, "a format byte leads");
        assert_eq!(decode_messages(WireFormat::Versioned, &body).unwrap(), batch);
        let mut newer = body.clone();
        newer[0] = PEER_FORMAT + 1;
        let why = decode_messages(WireFormat::Versioned, &newer).unwrap_err();
        assert!(why.contains("peer format 3 is not one this member reads (2)"), "{why}");

        // What a 0.1.0 member sends: bincode 1 of a batch of one heartbeat from 1 to 2 in term 3
        // (MessageBody::Heartbeat is variant 2), as application/octet-stream.
        let legacy_batch = [&le(1)[..], &le(1), &le(2), &le(3), &[2, 0, 0, 0], &le(4), &le(5)].concat();
        let expected = Message { from: 1, to: 2, term: 3, body: MessageBody::Heartbeat { commit: 4, read_seq: 5 } };
        assert_eq!(decode_messages(WireFormat::Legacy, &legacy_batch).unwrap(), vec![expected]);
        assert!(decode_messages(WireFormat::Legacy, &legacy_batch[..20]).is_err());
        assert!(decode_messages(WireFormat::Legacy, &body).is_err(), "the new format is not bincode 1");

        // And a 0.1.0 snapshot body: a 4-byte length, bincode 1 of the InstallSnapshot message
        // (variant 8) with empty data (voters {1, 2}, no learners), then the data.
        let head = [&le(1)[..], &le(2), &le(3), &[8, 0, 0, 0], &le(9), &le(3), &le(2), &le(1), &le(2), &le(0), &le(0)]
            .concat();
        let mut legacy_snapshot = (head.len() as u32).to_be_bytes().to_vec();
        legacy_snapshot.extend_from_slice(&head);
        legacy_snapshot.extend_from_slice(b"state");
        let message = parse_snapshot_body(WireFormat::Legacy, Bytes::from(legacy_snapshot)).unwrap();
        let meta = SnapshotMeta { index: 9, term: 3, conf: conf(&[1, 2]) };
        let snapshot = Snapshot { meta, data: Bytes::from_static(b"state") };
        assert_eq!(message, Message { from: 1, to: 2, term: 3, body: MessageBody::InstallSnapshot { snapshot } });

        let mut headers = HeaderMap::new();
        assert_eq!(WireFormat::of(&headers), WireFormat::Legacy);
        headers.insert("content-type", "application/octet-stream".parse().unwrap());
        assert_eq!(WireFormat::of(&headers), WireFormat::Legacy);
        headers.insert("content-type", PEER_CONTENT_TYPE.parse().unwrap());
        assert_eq!(WireFormat::of(&headers), WireFormat::Versioned);
    }

    #[test]
    fn peer_limits_follow_the_message_and_value_limits() {
        let limits = PeerLimits::new(1 << 20, 1 << 20);
        assert!(limits.batch_bytes >= BATCH_TARGET_BYTES + (1 << 20) * 5);
        assert!(limits.batch_bytes < 32 << 20, "regular batches get a small limit: {}", limits.batch_bytes);
        assert_eq!(limits.snapshot_bytes, MAX_SNAPSHOT_BYTES);
        assert!(PeerLimits::new(1 << 20, 8 << 20).batch_bytes > limits.batch_bytes);
    }
}

//! Peer transport on the peer port: HTTP with a compact binary body (bincode of a batch of
//! messages). One task per peer drains a bounded queue, batching whatever is waiting into one
//! request on a reused connection; a peer that is down or slow only fills (and then drops
//! from) its own queue, so it never blocks the others. Every request carries the cluster id,
//! and a member rejects messages from another cluster and says so.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::runtime::{note_peer_urls, offer, Input, Outbox};
use super::shared::{read, Shared};
use crate::node::join::{PeerView, ViewMember};
use crate::raft::{Message, MessageBody, NodeId};
use crate::store::command::MemberInfo;

pub const MESSAGES_PATH: &str = "/raft/v1/messages";
pub const MEMBERS_PATH: &str = "/raft/v1/members";
pub const JOIN_PATH: &str = "/raft/v1/join";
pub const HEADER_CLUSTER_ID: &str = "x-kuberaft-cluster-id";
pub const HEADER_FROM: &str = "x-kuberaft-from";
pub const HEADER_CLIENT_URL: &str = "x-kuberaft-client-url";
pub const HEADER_PEER_URL: &str = "x-kuberaft-peer-url";
/// Messages waiting for one peer; beyond this they are dropped.
const PEER_QUEUE: usize = 4096;
/// One request carries at most this many messages.
const MAX_BATCH_MESSAGES: usize = 512;
/// The largest peer request accepted (snapshots travel in one request).
pub const MAX_PEER_BODY_BYTES: usize = 1 << 30;

pub struct Transport {
    shared: Arc<Shared>,
    queues: HashMap<NodeId, mpsc::Sender<Message>>,
    runtime: tokio::runtime::Handle,
    http: reqwest::Client,
    loop_tx: SyncSender<Input>,
}

impl Transport {
    /// `local_ip`: dial peers from this address (the member's own listen address), so that
    /// network rules on member addresses cut traffic in both directions.
    pub fn new(
        shared: Arc<Shared>,
        runtime: tokio::runtime::Handle,
        loop_tx: SyncSender<Input>,
        local_ip: Option<IpAddr>,
    ) -> Result<Transport, reqwest::Error> {
        let http = reqwest::Client::builder()
            .local_address(local_ip)
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        Ok(Transport { shared, queues: HashMap::new(), runtime, http, loop_tx })
    }

    fn queue(&mut self, to: NodeId) -> &mpsc::Sender<Message> {
        let shared = self.shared.clone();
        let http = self.http.clone();
        let loop_tx = self.loop_tx.clone();
        let runtime = self.runtime.clone();
        self.queues.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            runtime.spawn(peer_sender(to, rx, shared, http, loop_tx));
            tx
        })
    }
}

impl Outbox for Transport {
    fn send(&mut self, messages: Vec<Message>) {
        for m in messages {
            let to = m.to;
            if self.queue(to).try_send(m).is_err() {
                self.shared.metrics.peer_messages_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn peer_sender(
    to: NodeId,
    mut rx: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
    http: reqwest::Client,
    loop_tx: SyncSender<Input>,
) {
    let mut reported_failure = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_MESSAGES {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let has_snapshot = batch.iter().any(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }));
        let Some(address) = shared.address(to).filter(|a| !a.peer_url.is_empty()) else {
            shared.metrics.peer_messages_dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            continue;
        };
        if has_snapshot {
            shared.metrics.snapshots_sent.fetch_add(1, Ordering::Relaxed);
        }
        let body = match bincode::serialize(&batch) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode peer messages");
                continue;
            }
        };
        let timeout = if has_snapshot { Duration::from_secs(60) } else { Duration::from_secs(2) };
        let result = http
            .post(format!("{}{MESSAGES_PATH}", address.peer_url))
            .header(HEADER_CLUSTER_ID, format!("{:x}", shared.cluster_id))
            .header(HEADER_FROM, format!("{:x}", shared.id))
            .header(HEADER_CLIENT_URL, &shared.advertise_client_url)
            .header(HEADER_PEER_URL, &shared.advertise_peer_url)
            .header("content-type", "application/octet-stream")
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        let failure = match result {
            Ok(resp) if resp.status().is_success() => None,
            Ok(resp) => {
                let status = resp.status();
                let why = resp.text().await.unwrap_or_default();
                if status == StatusCode::PRECONDITION_FAILED || status == StatusCode::FORBIDDEN {
                    tracing::warn!(peer = %address.name, %status, reason = %why, "peer rejected our messages");
                    shared.set_error("peers", Some(format!("{} rejected our messages: {why}", address.peer_url)));
                }
                Some(format!("{status}: {why}"))
            }
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None => {
                if reported_failure {
                    tracing::info!(peer = %address.name, "peer reachable again");
                    reported_failure = false;
                }
            }
            Some(why) => {
                if !reported_failure {
                    tracing::debug!(peer = %address.name, error = %why, "cannot reach peer");
                    reported_failure = true;
                }
                shared.metrics.peer_messages_dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if has_snapshot {
                    let _ = offer(&loop_tx, Input::SnapshotFailed(to));
                }
            }
        }
    }
}

/// State of the peer-port server.
#[derive(Clone)]
pub struct PeerServer {
    pub shared: Arc<Shared>,
    pub loop_tx: SyncSender<Input>,
}

pub fn peer_router(server: PeerServer) -> Router {
    Router::new()
        .route(MESSAGES_PATH, post(receive))
        .route(MEMBERS_PATH, get(members))
        .route(JOIN_PATH, post(join))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY_BYTES))
        .with_state(server)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn reject(status: StatusCode, why: String) -> Response {
    (status, why).into_response()
}

async fn receive(State(server): State<PeerServer>, headers: HeaderMap, body: Bytes) -> Response {
    let shared = &server.shared;
    let ours = format!("{:x}", shared.cluster_id);
    let Some(theirs) = header(&headers, HEADER_CLUSTER_ID) else {
        return reject(StatusCode::BAD_REQUEST, "missing cluster id header".into());
    };
    let from = header(&headers, HEADER_FROM).and_then(|f| u64::from_str_radix(f, 16).ok()).unwrap_or(0);
    if theirs != ours {
        shared.metrics.peer_messages_rejected.fetch_add(1, Ordering::Relaxed);
        let why = format!(
            "cluster id mismatch: this member ({}) belongs to cluster {ours}, the sender {from:x} to {theirs}",
            shared.name
        );
        tracing::warn!(from = %format!("{from:x}"), theirs, ours, "rejected messages from another cluster");
        shared.set_error("peers", Some(format!("rejected messages from member {from:x} of cluster {theirs}")));
        return reject(StatusCode::PRECONDITION_FAILED, why);
    }
    let messages: Vec<Message> = match crate::store::command::decode(&body) {
        Ok(m) => m,
        Err(e) => return reject(StatusCode::BAD_REQUEST, format!("undecodable messages: {e}")),
    };
    if from != 0 {
        note_peer_urls(shared, from, header(&headers, HEADER_PEER_URL), header(&headers, HEADER_CLIENT_URL));
    }
    for m in messages {
        if m.to != shared.id || m.from != from || from == 0 || !m.is_well_formed() {
            shared.metrics.peer_messages_rejected.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if offer(&server.loop_tx, Input::Step(m)).is_err() {
            shared.metrics.peer_messages_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// What a member that starts with empty data asks its peers: who is in the cluster, as the
/// answering member has applied it (see `node::join`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerMembers {
    pub cluster_id: String,
    pub members: Vec<PeerMember>,
    /// The answering member leads and has committed an entry of its term.
    #[serde(default)]
    pub leader: bool,
    /// Its cluster has elected a leader at least once.
    #[serde(default)]
    pub formed: bool,
    /// The answering member has no data yet (it waits to bootstrap).
    #[serde(default)]
    pub blank: bool,
}

impl PeerMembers {
    /// The answer as `node::join` reads it; `None` if it is malformed.
    pub fn view(&self, asked: &str) -> Option<PeerView> {
        let members = self
            .members
            .iter()
            .map(|m| {
                Some(ViewMember {
                    id: u64::from_str_radix(&m.id, 16).ok()?,
                    name: m.name.clone(),
                    peer_url: m.peer_url.clone(),
                    voter: m.voter,
                    joined: m.joined,
                    matched: m.matched,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(PeerView {
            peer_url: asked.to_string(),
            cluster_id: u64::from_str_radix(&self.cluster_id, 16).ok()?,
            leader: self.leader,
            formed: self.formed,
            blank: self.blank,
            members,
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerMember {
    pub id: String,
    pub name: String,
    #[serde(rename = "peerURL")]
    pub peer_url: String,
    pub voter: bool,
    /// The leader's match index for this member (0 on other members, or never heard from).
    #[serde(default)]
    pub matched: u64,
    /// A learner that has started with empty data under its id (`Command::Join`).
    #[serde(default)]
    pub joined: bool,
}

async fn members(State(server): State<PeerServer>) -> Json<PeerMembers> {
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
    Json(PeerMembers {
        leader: status.role == crate::raft::Role::Leader && status.committed_in_term,
        formed: status.term > 1,
        blank: false,
        cluster_id: format!("{:x}", server.shared.cluster_id),
        members: members
            .into_iter()
            .map(|(MemberInfo { id, name, peer_url, .. }, voter, joined)| PeerMember {
                id: format!("{id:x}"),
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

async fn join(State(server): State<PeerServer>, Json(request): Json<JoinRequest>) -> Response {
    let shared = &server.shared;
    if request.cluster_id != format!("{:x}", shared.cluster_id) {
        let why = format!("this member belongs to cluster {:x}, not {}", shared.cluster_id, request.cluster_id);
        return reject(StatusCode::PRECONDITION_FAILED, why);
    }
    let Ok(id) = u64::from_str_radix(&request.id, 16) else {
        return reject(StatusCode::BAD_REQUEST, format!("bad member id '{}'", request.id));
    };
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

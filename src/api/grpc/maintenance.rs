//! etcd's Maintenance service: Status, MoveLeader, Alarm, Hash and HashKV, Defragment and
//! Snapshot, each served by the member called (MoveLeader only by the leader, as in etcd).
//!
//! - **Status** reports [`API_VERSION`]: the etcd API kuberaft serves is 3.4's, and clients that
//!   look at the version (etcd's Go client refuses a cluster below 3.2 with `RejectOldCluster`;
//!   etcdctl prints it) treat it as such (COMPATIBILITY.md). `dbSize` and `dbSizeInUse` are the
//!   size of the state machine's file; `errors` holds etcd's "no leader" when there is none,
//!   then this member's own conditions (`/v1/status` `errors`).
//! - **Alarm**: etcd's NOSPACE is the live condition of a member whose disk is full (its storage
//!   error, `store::DISK_FULL_HINT`), not a record in the log: GET asks every member's status
//!   and lists those that report it; DEACTIVATE answers the matching alarms it found, which
//!   clear by themselves once the member writes again; ACTIVATE is refused.
//! - **Hash** and **HashKV** hash the key history (`ReadView::hash_kv`); Hash is HashKV at the
//!   current revision (etcd's hashes its whole database file, which members do not share).
//! - **Defragment** rewrites this member's state-machine file without its free space.
//! - **Snapshot** streams this member's state machine as a snapshot to keep (`api::snapshot`,
//!   `store::backup`): kuberaft's MVCC stream, not etcd's bbolt file, framed as etcd frames its
//!   own (etcdctl's `snapshot save` checks the length and the SHA-256).

use std::pin::Pin;
use std::time::Duration;

use crate::store::auth::AuthError;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::errors::{node_status, TIMEOUT};
use super::etcdserverpb as pb;
use super::Grpc;
use crate::base::wire::Status as MemberStatus;
use crate::http::client;
use crate::store::DISK_FULL_HINT;

/// The etcd version Status reports: the API (etcd 3.4's rpc.proto) this member serves.
pub const API_VERSION: &str = "3.4.0";
pub const NOT_LEADER: &str = "etcdserver: not leader";
pub const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";
/// How long Alarm waits for each other member's status.
const ALARM_STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// The most bytes of a member's status answer read for Alarm.
const MAX_STATUS_BYTES: usize = 1 << 20;

pub struct MaintenanceService(pub(super) Grpc);

type SnapshotAnswers = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

/// Whether a member's conditions include a full disk.
fn disk_full(errors: &[String]) -> bool {
    errors.iter().any(|e| e.contains(DISK_FULL_HINT))
}

impl MaintenanceService {
    /// The size of this member's state-machine file (0 in memory).
    fn db_size(&self) -> i64 {
        let path = self.0.api.node.with_kv(|kv| kv.path().map(|p| p.to_path_buf()));
        path.and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| i64::try_from(m.len()).unwrap_or(i64::MAX))
    }

    /// The members whose disk is full: this one from its own state, the others from their
    /// `/v1/status` (a member that does not answer in time is left out).
    async fn nospace_members(&self) -> Vec<u64> {
        let api = &self.0.api;
        let me = api.node.shared.id;
        let others = crate::api::server::members_with_client_urls(api)
            .into_iter()
            .filter(|(m, _)| m.id != me && !m.client_url.is_empty())
            .map(|(m, _)| async move {
                let request = axum::http::Request::get(format!("{}/v1/status", m.client_url)).body(client::full(""));
                let answer = api.http.call(request, ALARM_STATUS_TIMEOUT, MAX_STATUS_BYTES).await.ok()?;
                let status: MemberStatus = serde_json::from_slice(&answer.body).ok()?;
                disk_full(&status.errors).then_some(m.id)
            });
        let mut full: Vec<u64> = futures::future::join_all(others).await.into_iter().flatten().collect();
        if disk_full(&api.node.shared.errors()) {
            full.push(me);
        }
        full.sort_unstable();
        full
    }
}

impl MaintenanceService {
    /// Defragment, Hash, HashKV and Snapshot are root's while auth is on. etcd 3.4 answers a
    /// refusal of these with its auth store's own error, unconverted: `Unknown`, "auth: ...".
    fn maintainer<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let caller = crate::api::auth::of(request);
        let checked = crate::api::auth::with_state(&self.0.api, |a| a.check_admin(caller.user()));
        checked.map_err(|e| {
            let message = match e {
                AuthError::UserEmpty => "auth: user name is empty",
                AuthError::UserNotFound => "auth: user not found",
                _ => "auth: permission denied",
            };
            Status::unknown(message)
        })
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        // Listing is anyone's; clearing an alarm is root's (etcd 3.4.43).
        if request.get_ref().action != AlarmAction::Get as i32 {
            self.0.admin(&request)?;
        }
        let asked = request.into_inner();
        let nospace = pb::AlarmType::Nospace as i32;
        let alarms: Vec<pb::AlarmMember> = self
            .nospace_members()
            .await
            .into_iter()
            .map(|id| pb::AlarmMember { member_id: id, alarm: nospace })
            .collect();
        let alarms = match AlarmAction::try_from(asked.action) {
            Ok(AlarmAction::Get) => alarms,
            Ok(AlarmAction::Deactivate) => alarms
                .into_iter()
                .filter(|a| (asked.member_id == 0 || a.member_id == asked.member_id) && asked.alarm == a.alarm)
                .collect(),
            Ok(AlarmAction::Activate) => {
                return Err(Status::invalid_argument(
                    "kuberaft: alarms are raised by the members themselves (NOSPACE when a disk is full)",
                ))
            }
            Err(_) => return Err(Status::invalid_argument(format!("unknown alarm action {}", asked.action))),
        };
        Ok(Response::new(pb::AlarmResponse { header: self.0.current_header(), alarms }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let shared = &self.0.api.node.shared;
        let s = shared.status();
        let mut errors = Vec::new();
        if s.leader.is_none() {
            errors.push(super::errors::NO_LEADER.to_string());
        }
        errors.extend(shared.errors());
        let db_size = self.db_size();
        Ok(Response::new(pb::StatusResponse {
            header: self.0.current_header(),
            version: API_VERSION.to_string(),
            db_size,
            leader: s.leader.unwrap_or(0),
            raft_index: s.commit_index,
            raft_term: s.term,
            raft_applied_index: s.applied_index,
            errors,
            db_size_in_use: db_size,
            is_learner: !s.voter,
        }))
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.maintainer(&request)?;
        tracing::info!("starting to defragment the state machine");
        match self.0.api.node.defragment().await {
            Ok(()) => {
                tracing::info!(size = self.db_size(), "finished defragmenting the state machine");
                Ok(Response::new(pb::DefragmentResponse { header: self.0.current_header() }))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot defragment the state machine");
                Err(Status::unavailable(e.to_string()))
            }
        }
    }

    async fn hash(&self, request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        self.maintainer(&request)?;
        let found = self.0.api.node.hash_kv(0).map_err(node_status)?;
        Ok(Response::new(pb::HashResponse { header: Some(self.0.header(found.current)), hash: found.hash }))
    }

    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        self.maintainer(&request)?;
        let found = self.0.api.node.hash_kv(request.get_ref().revision).map_err(node_status)?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.0.header(found.current)),
            hash: found.hash,
            compact_revision: found.compacted,
        }))
    }

    type SnapshotStream = SnapshotAnswers;

    async fn snapshot(&self, request: Request<pb::SnapshotRequest>) -> Result<Response<SnapshotAnswers>, Status> {
        self.maintainer(&request)?;
        let sending = crate::api::snapshot::start(&self.0.api).map_err(|e| Status::unavailable(e.to_string()))?;
        let header = self.0.header(sending.revision);
        let estimate = u64::try_from(self.db_size()).unwrap_or(0);
        // etcd's count down of the bytes left: an estimate here (the file's size less what was
        // sent); the last answer, the framing's tail, says 0.
        let chunks = futures::StreamExt::peekable(sending.chunks);
        let answers = futures::stream::unfold((chunks, 0u64), move |(mut chunks, sent)| async move {
            let answer = match futures::StreamExt::next(&mut chunks).await? {
                Ok(blob) => {
                    let sent = sent + blob.len() as u64;
                    let last = Pin::new(&mut chunks).peek().await.is_none();
                    let remaining_bytes = if last { 0 } else { estimate.saturating_sub(sent) };
                    let answer = pb::SnapshotResponse { header: Some(header), remaining_bytes, blob: blob.to_vec() };
                    return Some((Ok(answer), (chunks, sent)));
                }
                Err(e) => Err(Status::unavailable(e.to_string())),
            };
            Some((answer, (chunks, sent)))
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        self.0.admin(&request)?;
        let node = &self.0.api.node;
        if !node.is_leader() {
            return Err(Status::failed_precondition(NOT_LEADER));
        }
        let target = request.get_ref().target_id;
        if !matches!(node.with_kv(|kv| kv.member(target)), Some((_, true))) {
            return Err(Status::failed_precondition(BAD_LEADER_TRANSFEREE));
        }
        match node.transfer_leader(Some(target)).await {
            Ok(_) => Ok(Response::new(pb::MoveLeaderResponse { header: self.0.current_header() })),
            Err(crate::node::NodeError::Unavailable(reason)) => {
                tracing::info!("leader transfer to {target:x} failed: {reason}");
                Err(Status::unavailable(TIMEOUT))
            }
            Err(e) => Err(node_status(e)),
        }
    }
}

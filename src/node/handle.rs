//! The async face of the Raft loop for the HTTP handlers: propose and wait for the outcome,
//! confirm a linearizable read point, change membership, move leadership.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use bytes::Bytes;

use super::runtime::{offer, Input, InputSender, NodeError};
use super::shared::{lock, read, write, Shared};
use crate::base::ids::added_member_id;
use crate::raft::{ConfChange, ConfChangeKind, Index, NodeId, Term};
use crate::store::auth::{AuthOutcome, AuthRequest, AuthState, Caller};
use crate::store::command::{encode, ApplyResult, Command, MemberInfo};
use crate::store::mvcc::engine::{HashKv, ReadError};
use crate::store::mvcc::{CompactResponse, Lease, RangeRequest, RangeResponse, Revision, TxnRequest, TxnResponse};
use crate::store::KvStore;

/// How long a proposal may take to apply before its outcome is reported unknown (504).
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a physical compaction looks whether the reclaim is done.
const RECLAIM_POLL: Duration = Duration::from_millis(10);
/// How long a physical compaction waits for the space to be reclaimed.
pub const PHYSICAL_COMPACT_LIMIT: Duration = Duration::from_secs(600);
/// How long a defragment waits for readers that hold the database.
const DEFRAG_WAIT: Duration = Duration::from_secs(30);
/// How long a linearizable read may wait for its read point.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure to read the state machine: this member cannot serve the read.
fn unreadable(e: crate::store::StoreError) -> NodeError {
    NodeError::Unavailable(format!("this member cannot read its state machine: {e}"))
}

/// A read the store refused (etcd's error), or could not do.
fn read_failure(e: ReadError) -> NodeError {
    match e {
        ReadError::Mvcc(e) => NodeError::Mvcc(e),
        ReadError::Storage(e) => unreadable(e),
    }
}

#[derive(Clone)]
pub struct NodeHandle {
    pub shared: Arc<Shared>,
    pub tx: InputSender,
}

impl NodeHandle {
    pub fn is_leader(&self) -> bool {
        self.shared.is_leader()
    }

    /// The leader's client URL, when a leader is known and reachable by URL.
    pub fn leader_client_url(&self) -> Option<String> {
        let leader = self.shared.leader()?;
        if leader == self.shared.id {
            return None;
        }
        self.shared.address(leader).map(|a| a.client_url).filter(|u| !u.is_empty())
    }

    /// Reads the state machine under its lock (held only while `f` runs).
    pub fn with_kv<R>(&self, f: impl FnOnce(&KvStore) -> R) -> R {
        f(&read(&self.shared.kv))
    }

    /// Writes `value` under `key` (if its mod revision is `prev_revision`, when given).
    pub async fn put(
        &self,
        caller: &Caller,
        key: String,
        value: Bytes,
        prev_revision: Option<u64>,
    ) -> Result<ApplyResult, NodeError> {
        self.submit(&caller.wrap(Command::Put { key, value, prev_revision })).await
    }

    /// Deletes `key` (if its mod revision is `prev_revision`, when given).
    pub async fn delete(
        &self,
        caller: &Caller,
        key: String,
        prev_revision: Option<u64>,
    ) -> Result<ApplyResult, NodeError> {
        self.submit(&caller.wrap(Command::Delete { key, prev_revision })).await
    }

    /// Applies an etcd txn through the log (a put or delete-range alone is a txn of one op).
    pub async fn txn(&self, caller: &Caller, txn: TxnRequest) -> Result<TxnResponse, NodeError> {
        match self.submit(&caller.wrap(Command::Txn(txn))).await? {
            ApplyResult::Txn(response) => Ok(response),
            ApplyResult::Refused(e) => Err(NodeError::Mvcc(e)),
            ApplyResult::AuthRefused(e) => Err(NodeError::Auth(e)),
            other => Err(NodeError::OutcomeUnknown(format!("unexpected outcome of a txn: {other:?}"))),
        }
    }

    /// Compacts the key history below `revision` through the log.
    pub async fn compact(&self, caller: &Caller, revision: Revision) -> Result<CompactResponse, NodeError> {
        match self.submit(&caller.wrap(Command::Compact { revision })).await? {
            ApplyResult::Compacted(response) => Ok(response),
            ApplyResult::Refused(e) => Err(NodeError::Mvcc(e)),
            ApplyResult::AuthRefused(e) => Err(NodeError::Auth(e)),
            other => Err(NodeError::OutcomeUnknown(format!("unexpected outcome of a compact: {other:?}"))),
        }
    }

    /// An etcd range over this member's applied state (serializable). For a linearizable
    /// range, wait for `read_barrier` first.
    ///
    /// At most `keep` keys come back: the first of etcd's answer (`more` and `count` are etcd's).
    pub fn range(&self, request: &RangeRequest, keep: usize) -> Result<RangeResponse, NodeError> {
        // Only taking the view holds the state machine's lock: the range itself runs beside the
        // Raft loop's applying, which needs the lock for writing.
        let view = self.with_kv(|kv| kv.read_view()).map_err(unreadable)?;
        view.range_kept(request, keep).map_err(read_failure)
    }

    /// etcd's HashKV over this member's applied state (see `ReadView::hash_kv`).
    pub fn hash_kv(&self, revision: Revision) -> Result<HashKv, NodeError> {
        let view = self.with_kv(|kv| kv.read_view()).map_err(unreadable)?;
        view.hash_kv(revision).map_err(read_failure)
    }

    /// etcd's defragment of this member's state machine. It waits for the state machine's lock,
    /// as an apply does, so the member applies nothing while the file is rewritten (etcd's
    /// defragment blocks its member too). Readers that hold the database (a snapshot being sent)
    /// make it wait and try again, at most `DEFRAG_WAIT`.
    pub async fn defragment(&self) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + DEFRAG_WAIT;
        loop {
            let shared = self.shared.clone();
            let done = tokio::task::spawn_blocking(move || write(&shared.kv).defragment())
                .await
                .map_err(|e| NodeError::Unavailable(format!("the defragment stopped: {e}")))?
                .map_err(|e| NodeError::Unavailable(format!("cannot defragment: {e}")))?;
            if done {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Unavailable(format!(
                    "readers held the database for {} s (a snapshot being sent?); retry later",
                    DEFRAG_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(RECLAIM_POLL * 5).await;
        }
    }

    /// Waits until this member has applied a compaction to `revision` (or past it) and reclaimed
    /// the space of every compaction it applied (etcd's physical compaction), at most `limit`: a
    /// member that stopped applying or reclaiming (halted, cut off) fails the wait once the limit
    /// passes.
    pub async fn wait_reclaimed(&self, revision: Revision, limit: Duration) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.with_kv(|kv| kv.compacted_revision() >= revision && !kv.compaction_pending()) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Unavailable(format!(
                    "the compaction took effect, but its space was not reclaimed within {} s",
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(RECLAIM_POLL).await;
        }
    }

    /// Adds a member (a learner, or a voter) under a new id, which it returns.
    pub async fn add_member(
        &self,
        name: String,
        peer_url: String,
        client_url: String,
        learner: bool,
    ) -> Result<NodeId, NodeError> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let id = added_member_id(self.shared.cluster_id, &name, &peer_url, nanos);
        let info = MemberInfo { id, name, peer_url, client_url };
        let kind = if learner { ConfChangeKind::AddLearner } else { ConfChangeKind::AddVoter };
        self.conf_change(ConfChange { kind, node_id: id, context: encode(&info) }).await?;
        Ok(id)
    }

    /// Records that member `id` is reached at `peer_url` (etcd's MemberUpdate); false when no
    /// such member exists.
    pub async fn update_member(&self, id: NodeId, peer_url: String) -> Result<bool, NodeError> {
        let update = Command::UpdateMember { id, name: None, peer_url: Some(peer_url), client_url: None };
        match self.propose(&update).await? {
            ApplyResult::MemberUpdated { found, .. } => Ok(found),
            other => Err(NodeError::OutcomeUnknown(format!("unexpected outcome of a member update: {other:?}"))),
        }
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, id: NodeId) -> Result<(), NodeError> {
        self.conf_change(ConfChange { kind: ConfChangeKind::Promote, node_id: id, context: Bytes::new() }).await
    }

    /// Removes member `id`.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), NodeError> {
        self.conf_change(ConfChange { kind: ConfChangeKind::Remove, node_id: id, context: Bytes::new() }).await
    }

    /// Proposes `command` on this member, which must lead (`NotLeader` otherwise): its outcome,
    /// within `PROPOSE_TIMEOUT`.
    pub async fn propose(&self, command: &Command) -> Result<ApplyResult, NodeError> {
        let data = encode(command);
        let (reply, rx) = oneshot::channel();
        let received = Instant::now();
        offer(&self.tx, Input::Propose { data, reply, received })?;
        let outcome = match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(NodeError::OutcomeUnknown("the member stopped while the write was pending".into())),
            Err(_) => Err(NodeError::OutcomeUnknown("the write did not commit within 5 s".into())),
        };
        if outcome.is_ok() {
            self.shared.latency.replied(received);
        }
        outcome
    }

    /// Whether this member, a follower, serves writes of small outcome and linearizable reads
    /// with the leader's help (`forward`) rather than leaving the whole call to the leader: a
    /// leader is known and takes them, and this member applies what commits.
    pub fn forwards(&self) -> bool {
        let leader = self.shared.leader();
        leader.is_some_and(|l| l != self.shared.id && self.shared.forward.takes(l)) && !self.shared.halted()
    }

    /// Whether this member serves a request that the leader would otherwise serve whole, with
    /// the leader's help (`forward`): it `forwards`, and the request was not forwarded to it
    /// already (a forwarded request is the leader's to serve, or to refuse).
    pub fn serves_with_leader(&self, forwarded: bool) -> bool {
        !forwarded && self.forwards()
    }

    /// Proposes `command` from any member: here on the leader; from a follower that `forwards`,
    /// through the leader (`forward`) when its outcome is small (`Command::answer_is_small`),
    /// with the outcome of this member's own apply of it. Elsewhere it fails as `propose` does
    /// (`NotLeader`).
    pub async fn submit(&self, command: &Command) -> Result<ApplyResult, NodeError> {
        if self.is_leader() || !command.answer_is_small() || !self.forwards() {
            return self.propose(command).await;
        }
        self.shared.forward.propose(&self.shared, encode(command)).await
    }

    /// Appends a follower's encoded commands to this leader's log (`forward`): per command, where
    /// (index, term), or why not. Fails as `Unavailable` only when the Raft loop did not take them.
    pub(super) async fn place(&self, commands: Vec<Bytes>) -> Result<Vec<Result<(Index, Term), NodeError>>, NodeError> {
        let (reply, rx) = oneshot::channel();
        offer(&self.tx, Input::Place { commands, reply, received: Instant::now() })?;
        match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
            Ok(Ok(placed)) => Ok(placed),
            Ok(Err(_)) => Err(NodeError::OutcomeUnknown("the member stopped while placing the writes".into())),
            Err(_) => Err(NodeError::OutcomeUnknown("the Raft loop did not answer within 5 s".into())),
        }
    }

    /// Waits until this member may serve a linearizable read, from any member: a read index
    /// confirmed by a quorum (asked of the leader by a follower, `forward`), applied here.
    pub async fn read_point(&self) -> Result<Index, NodeError> {
        if self.is_leader() || !self.forwards() {
            return self.read_barrier().await;
        }
        let started = Instant::now();
        let index = self.shared.forward.read_index(&self.shared).await?;
        self.applied_read_index(index, started).await
    }

    /// Waits until this member may serve a serializable read: at once, unless it started with
    /// entries in its log past its commit index, some of which it may have answered before a
    /// crash (`Shared::replayed`); then once, as a linearizable read does.
    pub async fn serializable_point(&self) -> Result<(), NodeError> {
        if self.shared.replayed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.read_point().await.map(|_| ())
    }

    /// A linearizable read that started at `started` (before its `read_point`) has its answer
    /// (`kuberaft_read_seconds`, point `replied`).
    pub fn read_replied(&self, started: Instant) {
        self.shared.latency.read(2, started);
    }

    pub async fn conf_change(&self, cc: ConfChange) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        offer(&self.tx, Input::ConfChange { cc, reply })?;
        match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(NodeError::OutcomeUnknown("the member stopped while the change was pending".into())),
            Err(_) => Err(NodeError::OutcomeUnknown("the change did not commit within 5 s".into())),
        }
    }

    /// Waits until this member (the leader) may serve a linearizable read: the ReadIndex is
    /// confirmed by a quorum and applied here.
    pub async fn read_barrier(&self) -> Result<Index, NodeError> {
        let started = Instant::now();
        let index = self.read_index().await?;
        self.applied_read_index(index, started).await
    }

    /// The second half of a linearizable read that started at `started`: its read `index`, just
    /// confirmed by a quorum, applied here; both timed (`kuberaft_read_seconds`, points `index`
    /// and `applied`).
    async fn applied_read_index(&self, index: Index, started: Instant) -> Result<Index, NodeError> {
        self.shared.latency.read(0, started);
        self.wait_applied(index).await?;
        self.shared.latency.read(1, started);
        // Confirmed by a quorum after this member started: every write it answered before is
        // at or below it, and applied. Stored once: the flag is read by every serializable read.
        if !self.shared.replayed.load(Ordering::Relaxed) {
            self.shared.replayed.store(true, Ordering::Release);
        }
        Ok(index)
    }

    /// This member's (the leader's) commit index, confirmed by a quorum (ReadIndex).
    pub async fn read_index(&self) -> Result<Index, NodeError> {
        let (reply, rx) = oneshot::channel();
        offer(&self.tx, Input::ReadIndex { reply })?;
        match tokio::time::timeout(READ_TIMEOUT, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(NodeError::Unavailable("the member stopped during the read".into())),
            Err(_) => Err(NodeError::Unavailable("no quorum confirmed the read in time".into())),
        }
    }

    pub async fn wait_applied(&self, index: Index) -> Result<(), NodeError> {
        let mut applied = self.shared.applied.subscribe();
        let reached =
            tokio::time::timeout(READ_TIMEOUT, applied.wait_for(|a| *a >= index)).await.is_ok_and(|r| r.is_ok());
        if reached {
            Ok(())
        } else {
            Err(NodeError::Unavailable(format!("index {index} was not applied in time")))
        }
    }

    /// Starts a transfer and waits (bounded) until the target leads.
    pub async fn transfer_leader(&self, to: Option<NodeId>) -> Result<NodeId, NodeError> {
        let (reply, rx) = oneshot::channel();
        offer(&self.tx, Input::Transfer { to, reply })?;
        let target = match rx.await {
            Ok(outcome) => outcome?,
            Err(_) => return Err(NodeError::Unavailable("the member stopped".into())),
        };
        for _ in 0..300 {
            if self.shared.leader() == Some(target) {
                return Ok(target);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(NodeError::Unavailable(format!("member {target:x} did not take over within 3 s")))
    }

    // ----- leases -----

    /// etcd's LeaseGrant: `id` 0 lets this member pick one (positive, from `Shared::ids`); a TTL
    /// below the minimum (1.5 × the longest election timeout) is raised to it, as etcd does.
    pub async fn lease_grant(&self, caller: &Caller, id: i64, ttl: i64) -> Result<(i64, i64), NodeError> {
        let id = if id != 0 { id } else { self.shared.ids.next_lease() };
        let ttl = ttl.max(self.shared.min_lease_ttl_s);
        match self.submit(&caller.wrap(Command::LeaseGrant { id, ttl })).await? {
            ApplyResult::LeaseGranted { id, ttl } => Ok((id, ttl)),
            ApplyResult::Refused(e) => Err(NodeError::Mvcc(e)),
            ApplyResult::AuthRefused(e) => Err(NodeError::Auth(e)),
            other => Err(NodeError::OutcomeUnknown(format!("unexpected outcome of a lease grant: {other:?}"))),
        }
    }

    /// etcd's LeaseRevoke: the lease and its keys go, as one revision; returns the revision.
    pub async fn lease_revoke(&self, caller: &Caller, id: i64) -> Result<Revision, NodeError> {
        match self.submit(&caller.wrap(Command::LeaseRevoke { id })).await? {
            ApplyResult::LeaseRevoked { revision, .. } => Ok(revision),
            ApplyResult::Refused(e) => Err(NodeError::Mvcc(e)),
            ApplyResult::AuthRefused(e) => Err(NodeError::Auth(e)),
            other => Err(NodeError::OutcomeUnknown(format!("unexpected outcome of a lease revoke: {other:?}"))),
        }
    }

    /// etcd's LeaseKeepAlive, on the leader: confirms with a quorum that this member still
    /// leads (after the request arrived), then renews the lease to now + its TTL; a lease whose
    /// remaining TTL was checkpointed has the checkpoint cleared through the log first. Returns
    /// the TTL, 0 for a lease that does not exist (as etcd answers).
    /// A follower that `forwards` has the leader renew it (`forward`), as etcd's followers
    /// forward keep-alives to the leader.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, NodeError> {
        if !self.is_leader() && self.forwards() {
            return self.shared.forward.renew(&self.shared, id).await;
        }
        self.read_barrier().await?;
        self.renew_confirmed(id).await
    }

    /// Renews lease `id` on this member, the leader, once a ReadIndex round after the request
    /// arrived confirmed that it leads.
    pub(super) async fn renew_confirmed(&self, id: i64) -> Result<i64, NodeError> {
        let renewal = {
            let mut lessor = lock(&self.shared.lessor);
            let renewal = lessor.renew(id, self.shared.lease_now_ms());
            if renewal.is_none() && !lessor.is_primary() {
                return Err(NodeError::NotLeader { leader: self.shared.leader() });
            }
            renewal
        };
        let Some(renewal) = renewal else { return Ok(0) };
        self.shared.metrics.lease_renewals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if renewal.clear_checkpoint {
            self.propose(&Command::LeaseCheckpoint { checkpoints: vec![(id, 0)] }).await?;
        }
        Ok(renewal.ttl_s)
    }

    /// etcd's LeaseTimeToLive, on the leader: (remaining seconds, granted TTL, the keys when
    /// asked); `None` for a lease that does not exist.
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<Option<(i64, i64, Vec<Vec<u8>>)>, NodeError> {
        self.read_barrier().await?;
        let (remaining, granted) = {
            let lessor = lock(&self.shared.lessor);
            if !lessor.is_primary() {
                return Err(NodeError::NotLeader { leader: self.shared.leader() });
            }
            match (lessor.remaining_s(id, self.shared.lease_now_ms()), lessor.granted_ttl(id)) {
                (Some(remaining), Some(granted)) => (remaining, granted),
                _ => return Ok(None),
            }
        };
        let keys = if keys {
            let view = self.with_kv(|kv| kv.read_view()).map_err(unreadable)?;
            view.lease_keys(id).map_err(unreadable)?
        } else {
            Vec::new()
        };
        Ok(Some((remaining, granted, keys)))
    }

    /// The keys lease `id` holds in this member's applied state.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, NodeError> {
        let view = self.with_kv(|kv| kv.read_view()).map_err(unreadable)?;
        view.lease_keys(id).map_err(unreadable)
    }

    /// etcd's LeaseLeases: every lease of this member's applied state.
    pub fn leases(&self) -> Result<Vec<Lease>, NodeError> {
        let view = self.with_kv(|kv| kv.read_view()).map_err(unreadable)?;
        view.leases().map_err(unreadable)
    }

    /// Applies a change of the auth state (or makes a token) through the log, as `caller`.
    pub async fn auth(&self, caller: &Caller, request: AuthRequest) -> Result<AuthOutcome, NodeError> {
        let command = Command::As { user: caller.user.clone(), command: Box::new(Command::Auth(request)) };
        match self.submit(&command).await? {
            ApplyResult::Auth(outcome) => Ok(outcome),
            ApplyResult::AuthRefused(e) => Err(NodeError::Auth(e)),
            other => Err(NodeError::OutcomeUnknown(format!("unexpected outcome of an auth change: {other:?}"))),
        }
    }

    /// The auth state as applied here.
    pub fn auth_state(&self) -> AuthState {
        self.with_kv(|kv| kv.auth().clone())
    }

    /// Graceful stop of the Raft loop (hands leadership away first).
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if offer(&self.tx, Input::Shutdown { reply }).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }
}

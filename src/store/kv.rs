//! The replicated state machine: etcd's multi-version key-value store on disk
//! (`mvcc::MvccStore`, on redb) and the member table. Every member applies the same committed
//! entries in the same order and must end in the same state, so `apply` is deterministic, never
//! panics on what the log carries, and skips (rather than fails on) entries it cannot decode.
//!
//! Applied entries go into one open write batch, committed by `flush` without an fsync: the
//! Raft log is the durable record, and the applied index is committed in the same batch as the
//! data it covers, so a restart replays the log from exactly where the database stands.
//! `persist` makes everything durable (before the log is compacted). The member table lives in
//! memory and in the database's `meta` table, written in the same batch as the entry that
//! changed it.
//!
//! Snapshots are the database itself: `snapshot` streams a point-in-time view (a redb read
//! transaction) in bounded chunks, `stage` builds a new database from such a stream beside the
//! live one, and `replace_with` swaps it in. A snapshot of kuberaft 0.1 or 0.2 (formats 1 to 3,
//! each key's latest version only) becomes a database with no history before its revision
//! (`from_legacy`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::auth::{Access, AuthError, AuthOutcome, AuthRequest, AuthState, Forget, Tokens};
use super::claim::{check_claim, MemberState};
use super::command::{decode, decode_command, numbered_before_etcd, ApplyResult, Command, KeyValue, MemberInfo};
use super::error::StoreError;
use super::mvcc::engine::{Batch, MvccStore, ReadError};
use super::mvcc::snapshot::SnapshotReader;
use super::mvcc::{self, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, Revision};
use super::{codec, legacy};
use crate::base::ids::Fnv1a;
use crate::raft::{ConfChange, ConfChangeKind, Entry, EntryPayload, Index, NodeId, Snapshot, Term};

/// Leads every snapshot of kuberaft 0.1 and 0.2, so that a snapshot of another format is
/// refused by name.
const SNAPSHOT_MAGIC: &[u8; 4] = b"KVS\0";
/// The newest format of those snapshots: 2 added `applied_term` and `joined`; 3 encodes
/// format 2's body with postcard (`store::codec`) instead of bincode 1. Since then the state
/// machine is a database and its snapshots are its stream (`mvcc::snapshot`), so a Raft
/// snapshot of a newer kuberaft carries no data in the message itself.
const SNAPSHOT_FORMAT: u32 = 3;
/// The last format whose body is bincode 1 (kuberaft 0.1.0 wrote it).
const LEGACY_SNAPSHOT_FORMAT: u32 = 2;
/// The oldest format `from_legacy` reads.
const OLDEST_SNAPSHOT_FORMAT: u32 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 8;

/// The state machine's own records in the database's `meta` table.
const META_APPLIED: &str = "kuberaft/applied";
const META_MEMBERS: &str = "kuberaft/members";
const META_AUTH: &str = "kuberaft/auth";

/// How long a simple token lives after its last use, unless `--auth-token-ttl` says otherwise
/// (etcd's default, 300 s).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// One key's value and revisions in a snapshot of formats 1 to 3; the key is the map key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    value: Bytes,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Member {
    info: MemberInfo,
    voter: bool,
}

/// `META_APPLIED`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    index: Index,
    term: Term,
}

/// `META_MEMBERS`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MemberTable {
    members: BTreeMap<NodeId, Member>,
    removed: BTreeSet<NodeId>,
    /// Members known to have held data under their id: learners whose start with empty data
    /// was recorded (`Command::Join`), and members a leader heard acknowledge its log
    /// (`Command::Seen`). A start with empty data under such an id means its data was lost.
    joined: BTreeSet<NodeId>,
}

pub struct KvStore {
    store: MvccStore,
    /// The database file; `None` in memory.
    path: Option<PathBuf>,
    /// The write batch entries apply into until `flush`.
    batch: Option<Batch>,
    /// A storage failure inside the open batch: nothing more applies, and `flush` reports it
    /// and rolls the batch back.
    failure: Option<String>,
    /// The last entry applied: its index, and its term (0 when unknown: nothing applied, or
    /// carried over from a format-1 snapshot).
    applied: Applied,
    table: MemberTable,
    /// A compaction left history to reclaim (`compact_step`).
    compaction_pending: bool,
    /// Commits since the last durable one: what a crash now would lose (and the log replays).
    unpersisted: bool,
    /// Users, roles and permissions (`META_AUTH`).
    auth: AuthState,
    /// The simple tokens this member applied (not replicated state: in memory only).
    tokens: Arc<Tokens>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("path", &self.path)
            .field("applied", &self.applied)
            .field("revision", &self.store.revision())
            .field("members", &self.table.members.len())
            .finish()
    }
}

/// A snapshot's state as format 1 wrote it. Generic over owned collections (reading) and
/// borrowed ones (writing), so that one shape serves both.
#[derive(Serialize, Deserialize)]
struct StateBody<Keys, Members, Ids> {
    applied: Index,
    revision: u64,
    keys: Keys,
    members: Members,
    removed: Ids,
}

/// The snapshot body from format 2 on: format 1's state, then the term of the last applied
/// entry and the members known to have held data. Nested fields are encoded in line (postcard
/// and bincode alike), so the bytes are those of one flat struct.
#[derive(Serialize, Deserialize)]
struct SnapshotBody<Keys, Members, Ids> {
    state: StateBody<Keys, Members, Ids>,
    applied_term: Term,
    joined: Ids,
}

type OwnedState = StateBody<BTreeMap<String, Stored>, BTreeMap<NodeId, Member>, BTreeSet<NodeId>>;
type OwnedSnapshot = SnapshotBody<BTreeMap<String, Stored>, BTreeMap<NodeId, Member>, BTreeSet<NodeId>>;

impl From<OwnedState> for OwnedSnapshot {
    fn from(state: OwnedState) -> OwnedSnapshot {
        // Before format 2 nobody recorded joins: every learner counts as joined, so a learner
        // that comes back with empty data is replaced rather than trusted.
        let joined = state.members.iter().filter(|(_, m)| !m.voter).map(|(id, _)| *id).collect();
        SnapshotBody { state, applied_term: 0, joined }
    }
}

impl KvStore {
    /// An empty state machine in memory (tests, and the simulator's members).
    pub fn new() -> KvStore {
        KvStore::load(MvccStore::in_memory(), None).expect("an empty in-memory store loads")
    }

    /// Opens (or creates) the state machine's database at `path`.
    pub fn open(path: &Path) -> Result<KvStore, StoreError> {
        KvStore::load(MvccStore::open(path)?, Some(path.to_path_buf()))
    }

    fn load(store: MvccStore, path: Option<PathBuf>) -> Result<KvStore, StoreError> {
        let place = || path.clone().unwrap_or_else(|| PathBuf::from("(memory)"));
        let read = |name: &str| -> Result<Option<Vec<u8>>, StoreError> { store.meta(name) };
        let inconsistent = |what: &str, e: String| StoreError::Inconsistent {
            path: place(),
            detail: format!("its {what} record cannot be read: {e}"),
        };
        let applied = match read(META_APPLIED)? {
            Some(bytes) => codec::decode::<Applied>(&bytes).map_err(|e| inconsistent("applied", e.to_string()))?,
            None => Applied::default(),
        };
        let table = match read(META_MEMBERS)? {
            Some(bytes) => codec::decode::<MemberTable>(&bytes).map_err(|e| inconsistent("members", e.to_string()))?,
            None => MemberTable::default(),
        };
        let auth = match read(META_AUTH)? {
            Some(bytes) => codec::decode::<AuthState>(&bytes).map_err(|e| inconsistent("auth", e.to_string()))?,
            None => AuthState::default(),
        };
        check_members(&table.members)?;
        let compaction_pending = store.compaction_pending()?;
        let tokens = Arc::new(Tokens::new(DEFAULT_TOKEN_TTL));
        Ok(KvStore {
            store,
            path,
            batch: None,
            failure: None,
            applied,
            table,
            compaction_pending,
            unpersisted: false,
            auth,
            tokens,
        })
    }

    /// The database file (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Applies one committed entry, which must be `applied_index() + 1` (anything else is
    /// refused with a warning and changes nothing). Returns the outcome of command entries,
    /// `None` for everything else and for commands that cannot be decoded (skipped, so that
    /// every member stays in step). A storage failure also returns `None`, and `flush` then
    /// reports it.
    pub fn apply(&mut self, entry: &Entry) -> Option<ApplyResult> {
        if self.applied.index.checked_add(1) != Some(entry.index) {
            tracing::warn!(
                index = entry.index,
                applied = self.applied.index,
                "refusing to apply an entry out of order; the state machine is unchanged"
            );
            return None;
        }
        if self.failure.is_some() {
            return None;
        }
        let mut batch = match self.batch.take() {
            Some(batch) => batch,
            None => match self.store.begin() {
                Ok(batch) => batch,
                Err(e) => {
                    self.failure = Some(e.to_string());
                    return None;
                }
            },
        };
        let result = self.apply_in(&mut batch, entry);
        self.batch = Some(batch);
        match result {
            Ok(result) => result,
            Err(e) => {
                self.failure = Some(e.to_string());
                None
            }
        }
    }

    fn apply_in(&mut self, batch: &mut Batch, entry: &Entry) -> Result<Option<ApplyResult>, StoreError> {
        let result = match &entry.payload {
            EntryPayload::Noop => None,
            EntryPayload::Command(data) => match decode_command(data) {
                Ok(command) if numbered_before_etcd(data) => {
                    Some(self.apply_command(batch, etcd_numbered(command), entry.index, None)?)
                }
                Ok(command) => Some(self.apply_command(batch, command, entry.index, None)?),
                Err(e) => {
                    tracing::warn!(index = entry.index, error = %e, "skipping an undecodable command");
                    None
                }
            },
            EntryPayload::ConfChange(cc) => {
                self.apply_conf_change(entry.index, cc);
                batch.set_meta(META_MEMBERS, &encode_record(&self.table))?;
                None
            }
        };
        // The applied index goes into the batch once, when it commits (`commit`).
        self.applied = Applied { index: entry.index, term: entry.term };
        Ok(result)
    }

    /// Applies `command`; `caller` is `Some` for a client's command (`Command::As`), whose
    /// user is then checked first (`check_caller`).
    fn apply_command(
        &mut self,
        batch: &mut Batch,
        command: Command,
        index: Index,
        caller: Option<Option<String>>,
    ) -> Result<ApplyResult, StoreError> {
        match &caller {
            Some(user) => {
                if let Err(e) = self.check_caller(batch, user.as_deref(), &command)? {
                    return Ok(ApplyResult::AuthRefused(e));
                }
            }
            // A client's write that travels bare was made while auth was off where it was
            // received; applied with auth on, it has no user. (Lease revokes and compactions
            // travel bare from the leader itself, on expiry and by the auto-compactor.)
            None if self.auth.enabled
                && matches!(
                    command,
                    Command::Put { .. } | Command::Delete { .. } | Command::Txn(_) | Command::LeaseGrant { .. }
                ) =>
            {
                return Ok(ApplyResult::AuthRefused(AuthError::UserEmpty));
            }
            None => {}
        }
        Ok(match command {
            Command::As { user, command } => {
                if caller.is_some() {
                    return Ok(ApplyResult::AuthRefused(AuthError::PermissionDenied));
                }
                return self.apply_command(batch, *command, index, Some(user));
            }
            Command::Auth(request) => {
                // An auth change always names its caller: a bare one is checked as a caller
                // without credentials.
                if caller.is_none() {
                    if let Err(e) = self.check_caller(batch, None, &Command::Auth(request.clone()))? {
                        return Ok(ApplyResult::AuthRefused(e));
                    }
                }
                let name = match &request {
                    AuthRequest::Authenticate { name, .. } => Some(name.clone()),
                    _ => None,
                };
                let mut forget = Forget::Nothing;
                match self.auth.apply(request, index, &mut forget) {
                    Ok(AuthOutcome::Token(token)) => {
                        self.tokens.insert(token.clone(), name.unwrap_or_default());
                        ApplyResult::Auth(AuthOutcome::Token(token))
                    }
                    Ok(outcome) => {
                        batch.set_meta(META_AUTH, &encode_record(&self.auth))?;
                        self.tokens.forget(&forget);
                        ApplyResult::Auth(outcome)
                    }
                    Err(e) => ApplyResult::AuthRefused(e),
                }
            }
            Command::Put { key, value, prev_revision } => {
                if let Some(failed) = compare_mod(batch, key.as_bytes(), prev_revision)? {
                    return Ok(failed);
                }
                let put = PutRequest { key: key.into_bytes(), value: value.to_vec(), ..PutRequest::default() };
                match batch.put(&put)? {
                    Ok(response) => ApplyResult::Put { revision: revision_u64(response.revision) },
                    Err(e) => ApplyResult::Refused(e),
                }
            }
            Command::Delete { key, prev_revision } => {
                if let Some(failed) = compare_mod(batch, key.as_bytes(), prev_revision)? {
                    return Ok(failed);
                }
                let delete = DeleteRangeRequest { key: key.into_bytes(), ..DeleteRangeRequest::default() };
                match batch.delete_range(&delete)? {
                    // Deleting nothing changes nothing, so the revision does not move (as in etcd).
                    Ok(response) => ApplyResult::Deleted {
                        revision: revision_u64(response.revision),
                        deleted: u64::try_from(response.deleted).unwrap_or(0),
                    },
                    Err(e) => ApplyResult::Refused(e),
                }
            }
            Command::Txn(txn) => match batch.txn(&txn)? {
                Ok(response) => ApplyResult::Txn(response),
                Err(e) => ApplyResult::Refused(e),
            },
            Command::Compact { revision } => match batch.compact(revision)? {
                Ok(response) => {
                    self.compaction_pending = true;
                    ApplyResult::Compacted(response)
                }
                Err(e) => ApplyResult::Refused(e),
            },
            Command::LeaseGrant { id, ttl } => match batch.lease_grant(id, ttl)? {
                Ok(()) => ApplyResult::LeaseGranted { id, ttl },
                Err(e) => ApplyResult::Refused(e),
            },
            Command::LeaseRevoke { id } => match batch.lease_revoke(id)? {
                Ok(revision) => ApplyResult::LeaseRevoked { id, revision },
                Err(e) => ApplyResult::Refused(e),
            },
            Command::LeaseCheckpoint { checkpoints } => {
                for (id, remaining_ms) in &checkpoints {
                    batch.lease_checkpoint(*id, *remaining_ms)?;
                }
                ApplyResult::Checkpointed { checkpoints }
            }
            Command::UpdateMember { id, name, peer_url, client_url } => match self.table.members.get_mut(&id) {
                Some(member) => {
                    for (field, new) in [
                        (&mut member.info.name, name),
                        (&mut member.info.peer_url, peer_url),
                        (&mut member.info.client_url, client_url),
                    ] {
                        if let Some(new) = new {
                            *field = new;
                        }
                    }
                    let member = member.info.clone();
                    batch.set_meta(META_MEMBERS, &encode_record(&self.table))?;
                    ApplyResult::MemberUpdated { member, found: true }
                }
                None => ApplyResult::MemberUpdated { member: MemberInfo { id, ..MemberInfo::default() }, found: false },
            },
            Command::Seen { id } => {
                if self.table.members.contains_key(&id) && self.table.joined.insert(id) {
                    batch.set_meta(META_MEMBERS, &encode_record(&self.table))?;
                }
                ApplyResult::Joined
            }
            Command::Join { id } => {
                let member = self.table.members.get(&id).map(|m| m.voter);
                let state = MemberState {
                    voter: member == Some(true),
                    learner: member == Some(false),
                    joined: self.table.joined.contains(&id),
                    removed: self.table.removed.contains(&id),
                };
                match check_claim(id, state) {
                    Ok(()) => {
                        self.table.joined.insert(id);
                        batch.set_meta(META_MEMBERS, &encode_record(&self.table))?;
                        ApplyResult::Joined
                    }
                    Err(refusal) => ApplyResult::JoinRefused { data_lost: refusal.data_lost, reason: refusal.reason },
                }
            }
        })
    }

    /// May `user` make `command` (etcd's apply-time checks, `store::auth`)? The outer `Result`
    /// is a storage failure.
    fn check_caller(
        &self,
        batch: &mut Batch,
        user: Option<&str>,
        command: &Command,
    ) -> Result<Result<(), AuthError>, StoreError> {
        let auth = &self.auth;
        if !auth.enabled {
            return Ok(Ok(()));
        }
        let key_change = |key: &str, prev_revision: Option<u64>| {
            auth.check_range(user, Access::Write, key.as_bytes(), &[])?;
            match prev_revision {
                // The compare reads the key's revision.
                Some(_) => auth.check_range(user, Access::Read, key.as_bytes(), &[]),
                None => Ok(()),
            }
        };
        Ok(match command {
            Command::Put { key, prev_revision, .. } | Command::Delete { key, prev_revision } => {
                key_change(key, *prev_revision)
            }
            Command::Txn(txn) => {
                let mut failure = None;
                let mut lease_keys = |id: i64| match batch.lease_keys(id) {
                    Ok(keys) => keys,
                    Err(e) => {
                        failure.get_or_insert(e);
                        Vec::new()
                    }
                };
                let checked = auth.check_txn(user, txn, &mut lease_keys);
                if let Some(e) = failure {
                    return Err(e);
                }
                checked
            }
            Command::LeaseGrant { .. } => auth.check_authenticated(user),
            Command::LeaseRevoke { id } => match auth.check_authenticated(user) {
                Ok(()) => auth.check_lease_keys(user, &batch.lease_keys(*id)?),
                Err(e) => Err(e),
            },
            Command::Auth(request) if !request.needs_admin() => Ok(()),
            Command::Compact { .. } | Command::Auth(_) => auth.check_admin(user),
            Command::Join { .. }
            | Command::Seen { .. }
            | Command::LeaseCheckpoint { .. }
            | Command::UpdateMember { .. }
            | Command::As { .. } => auth.check_admin(user),
        })
    }

    /// The users, roles and permissions as applied here.
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    /// The simple tokens this member applied.
    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens.clone()
    }

    /// Keeps tokens in `tokens` from now on (shared across a snapshot's install, and with the
    /// TTL of `--auth-token-ttl`).
    pub fn set_tokens(&mut self, tokens: Arc<Tokens>) {
        self.tokens = tokens;
    }

    fn apply_conf_change(&mut self, index: Index, cc: &ConfChange) {
        let id = cc.node_id;
        let info = || match decode::<MemberInfo>(&cc.context) {
            Ok(info) if info.id == id => info,
            Ok(info) => {
                tracing::warn!(
                    index,
                    id,
                    context_id = info.id,
                    "membership change names another id; keeping the entry's"
                );
                MemberInfo { id, ..info }
            }
            Err(e) => {
                tracing::warn!(index, id, error = %e, "membership change without a readable member record");
                MemberInfo { id, name: String::new(), peer_url: String::new(), client_url: String::new() }
            }
        };
        match cc.kind {
            ConfChangeKind::AddVoter | ConfChangeKind::AddLearner => {
                let voter = cc.kind == ConfChangeKind::AddVoter;
                self.table.members.insert(id, Member { info: info(), voter });
            }
            ConfChangeKind::Promote => match self.table.members.get_mut(&id) {
                Some(member) => member.voter = true,
                None => {
                    self.table.members.insert(id, Member { info: info(), voter: true });
                }
            },
            ConfChangeKind::Remove => {
                self.table.members.remove(&id);
                self.table.joined.remove(&id);
                self.table.removed.insert(id);
            }
        }
    }

    /// A compaction left history to reclaim (`compact_step`).
    pub fn compaction_pending(&self) -> bool {
        self.compaction_pending && self.failure.is_none()
    }

    /// Reclaims one chunk of compacted history (`Batch::compact_step`) in the open batch, or
    /// in a new one, when some is left; `flush` commits it. The Raft loop calls this once per
    /// pass, so reclaiming a large history never holds it for long. Returns whether more is
    /// left. A storage failure is reported by the next `flush`, as for applying.
    pub fn compact_step(&mut self) -> bool {
        if !self.compaction_pending || self.failure.is_some() {
            return false;
        }
        let batch = match self.batch.take() {
            Some(batch) => Ok(batch),
            None => self.store.begin(),
        };
        match batch {
            Ok(mut batch) => {
                match batch.compact_step() {
                    Ok(more) => self.compaction_pending = more,
                    Err(e) => self.failure = Some(e.to_string()),
                }
                self.batch = Some(batch);
            }
            Err(e) => self.failure = Some(e.to_string()),
        }
        self.compaction_pending && self.failure.is_none()
    }

    /// Commits what `apply` changed since the last flush, without waiting for the disk (see
    /// the module doc). After a storage failure it rolls the batch back, reloads the state the
    /// database holds, and reports the failure.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.commit(false)
    }

    /// etcd's defragment: commits what was applied, then rewrites the database file without
    /// the space reclaimed history left free (`MvccStore::defragment`). `Ok(false)`: readers
    /// held the database and nothing was rewritten (the commit stands).
    pub fn defragment(&mut self) -> Result<bool, StoreError> {
        self.commit(false)?;
        let done = self.store.defragment()?;
        if done {
            // redb's compaction commits durably: everything applied is on disk now.
            self.unpersisted = false;
        }
        Ok(done)
    }

    /// Whether something was committed since the last durable commit (`persist`).
    pub fn has_unpersisted(&self) -> bool {
        self.unpersisted || self.batch.is_some()
    }

    /// Commits everything applied so far durably: the log up to `applied_index()` may then be
    /// compacted.
    pub fn persist(&mut self) -> Result<(), StoreError> {
        self.commit(true)
    }

    fn commit(&mut self, durable: bool) -> Result<(), StoreError> {
        let had_batch = self.batch.is_some();
        let failed = match (self.failure.take(), self.batch.take()) {
            (Some(why), _) => Err(StoreError::Database {
                action: "apply committed entries",
                path: self.path.clone().unwrap_or_default(),
                detail: why,
            }),
            (None, Some(mut batch)) => {
                batch.set_meta(META_APPLIED, &encode_record(&self.applied)).and_then(|()| batch.commit(durable))
            }
            (None, None) if durable => self.store.begin().and_then(|b| b.commit(true)),
            (None, None) => Ok(()),
        };
        if failed.is_ok() {
            self.unpersisted = !durable && (self.unpersisted || had_batch);
        }
        if failed.is_err() {
            // The batch is gone: what is in memory must be what the database holds.
            if let Ok(reloaded) = KvStore::reload(&self.store) {
                (self.applied, self.table) = reloaded;
            }
        }
        failed
    }

    fn reload(store: &MvccStore) -> Result<(Applied, MemberTable), StoreError> {
        let applied: Applied = store.meta(META_APPLIED)?.and_then(|b| codec::decode(&b).ok()).unwrap_or_default();
        let table: MemberTable = store.meta(META_MEMBERS)?.and_then(|b| codec::decode(&b).ok()).unwrap_or_default();
        Ok((applied, table))
    }

    pub fn applied_index(&self) -> Index {
        self.applied.index
    }

    /// The term of the last entry applied (0 when unknown, see the field).
    pub fn applied_term(&self) -> Term {
        self.applied.term
    }

    /// The store's current revision (1 for an empty store, as etcd's), as of the last flush.
    pub fn revision(&self) -> u64 {
        revision_u64(self.store.revision())
    }

    /// The store's current revision as etcd's API carries it.
    pub fn current_revision(&self) -> Revision {
        self.store.revision()
    }

    /// The revision of the last compaction, -1 if none.
    pub fn compacted_revision(&self) -> Revision {
        self.store.compacted_revision()
    }

    /// An etcd range over what was flushed.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, ReadError> {
        self.store.range(request)
    }

    /// A point-in-time view of what was flushed, to range over without holding this store
    /// (see [`MvccStore::read_view`]).
    pub fn read_view(&self) -> Result<mvcc::ReadView, StoreError> {
        self.store.read_view()
    }

    fn get_bytes(&self, key: &[u8]) -> Option<mvcc::KeyValue> {
        let request = RangeRequest { key: key.to_vec(), ..RangeRequest::default() };
        self.store.range(&request).ok()?.kvs.pop()
    }

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.get_bytes(key.as_bytes()).map(key_value)
    }

    /// Keys starting with `prefix`, in order, at most `limit`; `more` when more exist.
    pub fn list(&self, prefix: &str, limit: usize) -> (Vec<KeyValue>, bool) {
        self.list_page(prefix, None, limit, usize::MAX)
    }

    /// One page of keys starting with `prefix`, in order, after `start_after` (when given): at
    /// most `limit` keys, and no more once their values reach `max_value_bytes` (a page always
    /// holds at least one key when one matches); `more` when more keys follow.
    pub fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_value_bytes: usize,
    ) -> (Vec<KeyValue>, bool) {
        let start = match start_after {
            Some(after) if after >= prefix => [after.as_bytes(), &[0]].concat(),
            _ => prefix.as_bytes().to_vec(),
        };
        let start = if start.is_empty() { vec![0] } else { start };
        let request = RangeRequest {
            key: start,
            range_end: prefix_end(prefix.as_bytes()),
            limit: i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX),
            ..RangeRequest::default()
        };
        let Ok(response) = self.store.range(&request) else { return (Vec::new(), false) };
        let mut matching = response.kvs.into_iter().peekable();
        let mut kvs = Vec::new();
        let mut bytes = 0usize;
        while kvs.len() < limit {
            let Some(next) = matching.peek() else { break };
            if !kvs.is_empty() && bytes.saturating_add(next.value.len()) > max_value_bytes {
                break;
            }
            bytes = bytes.saturating_add(next.value.len());
            kvs.extend(matching.next().map(key_value));
        }
        let more = matching.next().is_some() || response.more;
        (kvs, more)
    }

    /// How many keys are live.
    pub fn len(&self) -> usize {
        let all = RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..RangeRequest::default() };
        self.store.range(&all).map_or(0, |r| usize::try_from(r.count).unwrap_or(usize::MAX))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every member with its voter flag, ordered by id.
    pub fn members(&self) -> Vec<(MemberInfo, bool)> {
        self.table.members.values().map(|m| (m.info.clone(), m.voter)).collect()
    }

    pub fn member(&self, id: NodeId) -> Option<(MemberInfo, bool)> {
        self.table.members.get(&id).map(|m| (m.info.clone(), m.voter))
    }

    /// Whether learner `id` has started with empty data under its id (see `Command::Join`).
    pub fn joined(&self, id: NodeId) -> bool {
        self.table.joined.contains(&id)
    }

    /// Every member id ever removed (never reused).
    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.table.removed
    }

    /// FNV-1a (64 bit) over a canonical encoding of the member table: equal on every member
    /// that applied the same changes, in every process and version of Rust.
    pub fn membership_hash(&self) -> u64 {
        let mut hash = Fnv1a::new();
        for (id, member) in &self.table.members {
            hash.write(&id.to_le_bytes());
            for text in [&member.info.name, &member.info.peer_url, &member.info.client_url] {
                // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
                hash.write(&(text.len() as u64).to_le_bytes());
                hash.write(text.as_bytes());
            }
            hash.write(&[u8::from(member.voter)]);
        }
        hash.finish()
    }

    /// A point-in-time stream of the whole state machine (keys with their history, members,
    /// the applied index and term), in bounded chunks; applying goes on while it is read. What
    /// was applied but not flushed is not in it: flush first.
    pub fn snapshot(&self) -> Result<SnapshotReader, StoreError> {
        self.store.snapshot()
    }

    /// Builds a state machine from a snapshot stream: at `path` (built beside it and renamed
    /// into place once whole and durable) or, without one, in memory. A damaged, cut or foreign
    /// stream is an error and leaves nothing behind.
    pub fn stage(path: Option<&Path>, input: impl Read) -> Result<KvStore, StoreError> {
        match path {
            Some(path) => KvStore::load(MvccStore::install(path, input)?, Some(path.to_path_buf())),
            None => KvStore::load(MvccStore::install_in_memory(input)?, None),
        }
    }

    /// Builds the state machine of a restored member at `path` (which must not exist) from a
    /// snapshot stream: the keys, their history, leases and auth as the stream holds them, and
    /// nothing of the old cluster's Raft state: no applied index, no member table. The new
    /// cluster's bootstrap entries, which the member's log starts with, apply on top as they do
    /// in any new cluster and make the new member table (`process::restore`).
    pub fn restore(path: &Path, input: impl Read) -> Result<KvStore, StoreError> {
        if path.exists() {
            return Err(StoreError::Invalid(format!("{} exists: a restore never replaces a store", path.display())));
        }
        let store = MvccStore::install(path, input)?;
        let mut batch = store.begin()?;
        batch.set_meta(META_APPLIED, &encode_record(&Applied::default()))?;
        batch.set_meta(META_MEMBERS, &encode_record(&MemberTable::default()))?;
        batch.commit(true)?;
        KvStore::load(store, Some(path.to_path_buf()))
    }

    /// Checks a staged state machine against the Raft snapshot it came with: it must have
    /// applied exactly `meta.index` of `meta.term` (or, carried over from format 1, an unknown
    /// term, which the metadata then supplies).
    pub fn check_against(&mut self, index: Index, term: Term) -> Result<(), StoreError> {
        let term_differs = self.applied.term != 0 && self.applied.term != term;
        if self.applied.index != index || term_differs {
            return Err(StoreError::BadSnapshot(format!(
                "its state has applied index {} (term {}), but the snapshot is of index {index} (term {term})",
                self.applied.index, self.applied.term
            )));
        }
        self.applied.term = term;
        Ok(())
    }

    /// Puts `staged` (from `stage`) in the place of the state machine at `live` (which must be
    /// closed): renamed over it and opened there. In memory, `staged` simply is the new one.
    pub fn replace_with(live: Option<&Path>, staged: KvStore) -> Result<KvStore, StoreError> {
        let (Some(live), Some(from)) = (live, staged.path.clone()) else { return Ok(staged) };
        let applied = staged.applied;
        drop(staged);
        std::fs::rename(&from, live).map_err(|e| StoreError::io("rename the staged state machine to", live, e))?;
        if let Some(dir) = live.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io("sync", dir, e))?;
        }
        let mut kv = KvStore::open(live)?;
        kv.applied.term = applied.term;
        Ok(kv)
    }

    /// The state machine that a snapshot of kuberaft 0.1 or 0.2 (formats 1 to 3, in
    /// `snapshot.data`) holds, built at `path` (or in memory) and checked against the
    /// snapshot's metadata (see `check_against`).
    pub fn from_legacy_snapshot(path: Option<&Path>, snapshot: &Snapshot) -> Result<KvStore, StoreError> {
        let mut kv = KvStore::from_legacy(path, &snapshot.data)?;
        kv.check_against(snapshot.meta.index, snapshot.meta.term)?;
        Ok(kv)
    }

    /// Builds a state machine from a snapshot body of formats 1 to 3 at `path` (which must not
    /// hold a database yet; `None`: in memory). Any damage, or a newer format, is an error.
    pub fn from_legacy(path: Option<&Path>, data: &[u8]) -> Result<KvStore, StoreError> {
        let (applied, revision, keys, table) = decode_legacy(data)?;
        let store = match path {
            Some(path) => MvccStore::open(path)?,
            None => MvccStore::in_memory(),
        };
        let mut batch = store.begin()?;
        // Those formats counted revisions from 0 for an empty store, etcd from 1: the same
        // history is one revision higher now (as the log's old commands are, `etcd_numbered`).
        let etcd = |revision: u64| revision_i64(revision.saturating_add(1));
        let latest = keys.into_iter().map(|(key, stored)| mvcc::KeyValue {
            key: key.into_bytes(),
            create_revision: etcd(stored.create_revision),
            mod_revision: etcd(stored.mod_revision),
            version: revision_i64(stored.version),
            value: stored.value.to_vec(),
            lease: 0,
        });
        batch.load_latest(latest, etcd(revision))?;
        batch.set_meta(META_APPLIED, &encode_record(&applied))?;
        batch.set_meta(META_MEMBERS, &encode_record(&table))?;
        batch.commit(true)?;
        KvStore::load(store, path.map(Path::to_path_buf))
    }
}

/// The `meta` records [`snapshot_facts`] reads from a snapshot stream (`mvcc::snapshot::scan`).
pub const SNAPSHOT_FACTS: &[&str] = &[META_APPLIED, META_MEMBERS];

/// What a snapshot stream's `meta` records (those named in [`SNAPSHOT_FACTS`]) say of the cluster
/// it was taken from.
pub struct SnapshotFacts {
    /// Its members with their voter flags.
    pub members: Vec<(MemberInfo, bool)>,
    /// The Raft index and term its state had applied.
    pub applied_index: Index,
    pub applied_term: Term,
}

/// Reads [`SnapshotFacts`] from a stream's `meta` records.
pub fn snapshot_facts(meta: &BTreeMap<String, Vec<u8>>) -> Result<SnapshotFacts, StoreError> {
    let bad = |what: &str, e: String| StoreError::BadSnapshot(format!("its {what} record cannot be read: {e}"));
    let applied = match meta.get(META_APPLIED) {
        Some(bytes) => codec::decode::<Applied>(bytes).map_err(|e| bad("applied", e.to_string()))?,
        None => Applied::default(),
    };
    let table = match meta.get(META_MEMBERS) {
        Some(bytes) => codec::decode::<MemberTable>(bytes).map_err(|e| bad("members", e.to_string()))?,
        None => MemberTable::default(),
    };
    let members = table.members.into_values().map(|m| (m.info, m.voter)).collect();
    Ok(SnapshotFacts { members, applied_index: applied.index, applied_term: applied.term })
}

impl Default for KvStore {
    fn default() -> KvStore {
        KvStore::new()
    }
}

/// Where a state machine received from a leader is built, beside the live one at `live`: a
/// new name for each, so that two streams (from an old and a new leader) never build into, or
/// rename over, the same file. `is_staging_file` recognises them all.
pub fn staging_path(live: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut name = live.as_os_str().to_owned();
    name.push(format!(".staged.{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    PathBuf::from(name)
}

/// Whether `file` (a name in the data directory) is a state machine staged beside the live one
/// `live_name`, or one being built: left over when a member stopped before installing it.
pub fn is_staging_file(live_name: &str, file: &str) -> bool {
    file.strip_prefix(live_name).is_some_and(|rest| rest.starts_with(".staged") || rest == ".installing")
}

impl KvStore {
    /// Closes a staged state machine that will not be installed and removes its file.
    pub fn discard(self) {
        let path = self.path.clone();
        drop(self);
        if let Some(path) = path {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a staged state machine");
            }
        }
    }
}

/// Decodes a snapshot body of formats 1 to 3: what was applied, the revision, each key's latest
/// version, and the member table.
fn decode_legacy(data: &[u8]) -> Result<(Applied, u64, BTreeMap<String, Stored>, MemberTable), StoreError> {
    let Some((header, body)) = data.split_at_checked(SNAPSHOT_HEADER_BYTES) else {
        return Err(StoreError::BadSnapshot(format!("only {} bytes", data.len())));
    };
    if &header[..4] != SNAPSHOT_MAGIC {
        return Err(StoreError::BadSnapshot("not a key-value snapshot".into()));
    }
    let format = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if format > SNAPSHOT_FORMAT {
        return Err(StoreError::BadSnapshot(format!(
            "snapshot format {format} is newer than this version reads ({SNAPSHOT_FORMAT}): upgrade kuberaft on this member"
        )));
    }
    let undecodable = |e: String| {
        StoreError::BadSnapshot(format!(
            "its format-{format} body cannot be decoded ({e}); it is damaged or was written by an incompatible kuberaft version"
        ))
    };
    let SnapshotBody { state, applied_term, joined }: OwnedSnapshot = match format {
        SNAPSHOT_FORMAT => codec::decode(body).map_err(|e| undecodable(e.to_string()))?,
        // 0.1.0's reader ignored bytes after the body; so does this one.
        LEGACY_SNAPSHOT_FORMAT => legacy::from_bytes(body).map_err(|e| undecodable(e.to_string()))?,
        OLDEST_SNAPSHOT_FORMAT => {
            legacy::from_bytes::<OwnedState>(body).map_err(|e| undecodable(e.to_string()))?.into()
        }
        _ => {
            return Err(StoreError::BadSnapshot(format!(
                "snapshot format {format} is not one this version reads ({OLDEST_SNAPSHOT_FORMAT} to {SNAPSHOT_FORMAT})"
            )))
        }
    };
    check_members(&state.members)?;
    let StateBody { applied, revision, keys, members, removed } = state;
    let table = MemberTable { members, removed, joined };
    Ok((Applied { index: applied, term: applied_term }, revision, keys, table))
}

fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain integers, strings and maps into memory cannot fail.
    codec::encode(value).map(|b| b.to_vec()).unwrap_or_default()
}

/// The compare of the HTTP API's `prev_revision` (the key's mod revision, 0 for a missing key):
/// `Some(CompareFailed)` when it does not hold.
/// A command written before revisions followed etcd's (see `command::numbered_before_etcd`)
/// in today's numbering: the same history has revisions one higher now, so a `prev_revision`
/// other than 0 ("the key does not exist") is one higher too. A carried-over state (`from_legacy`)
/// is shifted the same way, so a member that replays an old log and one that starts from an old
/// snapshot hold the same revisions and decide every compare alike.
fn etcd_numbered(command: Command) -> Command {
    let shift = |prev: Option<u64>| prev.map(|p| if p == 0 { 0 } else { p.saturating_add(1) });
    match command {
        Command::Put { key, value, prev_revision } => Command::Put { key, value, prev_revision: shift(prev_revision) },
        Command::Delete { key, prev_revision } => Command::Delete { key, prev_revision: shift(prev_revision) },
        other => other,
    }
}

fn compare_mod(batch: &Batch, key: &[u8], prev_revision: Option<u64>) -> Result<Option<ApplyResult>, StoreError> {
    let Some(expected) = prev_revision else { return Ok(None) };
    let request = RangeRequest { key: key.to_vec(), ..RangeRequest::default() };
    let current = match batch.range(&request)? {
        Ok(mut response) => response.kvs.pop().map_or(0, |kv| revision_u64(kv.mod_revision)),
        Err(_) => 0,
    };
    Ok((expected != current).then_some(ApplyResult::CompareFailed { current }))
}

fn check_members(members: &BTreeMap<NodeId, Member>) -> Result<(), StoreError> {
    match members.iter().find(|(id, m)| **id != m.info.id) {
        Some((id, _)) => Err(StoreError::BadSnapshot(format!("member {id:x} is filed under another id"))),
        None => Ok(()),
    }
}

/// A revision as the HTTP API and the older commands count it (revisions are never negative).
fn revision_u64(revision: Revision) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

fn revision_i64(revision: u64) -> Revision {
    Revision::try_from(revision).unwrap_or(Revision::MAX)
}

/// The end of the range of keys that start with `prefix` (etcd's `GetPrefixRangeEnd`): the
/// prefix with its last byte below 0xff incremented, or `"\0"` (every key from it on) when none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn key_value(kv: mvcc::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: Bytes::from(kv.value),
        create_revision: revision_u64(kv.create_revision),
        mod_revision: revision_u64(kv.mod_revision),
        version: revision_u64(kv.version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::command::encode;
    use crate::store::mvcc::snapshot::ChunkReader;

    #[test]
    fn list_pages_continue_after_a_key_and_stop_at_a_byte_budget() {
        let mut a = Applier::new();
        for (key, value) in [("a/1", "xxxx"), ("a/2", "xxxx"), ("a/3", "xxxx"), ("b/1", "y")] {
            a.put(key, value, None);
        }
        let keys = |kvs: Vec<KeyValue>| kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
        let (page, more) = a.store.list_page("a/", None, 2, usize::MAX);
        assert_eq!((keys(page), more), (vec!["a/1".to_string(), "a/2".to_string()], true));
        let (page, more) = a.store.list_page("a/", Some("a/2"), 2, usize::MAX);
        assert_eq!((keys(page), more), (vec!["a/3".to_string()], false));
        // 8 bytes of values: two keys fit, the third waits for the next page.
        let (page, more) = a.store.list_page("a/", None, 10, 8);
        assert_eq!((keys(page), more), (vec!["a/1".to_string(), "a/2".to_string()], true));
        // A page holds at least one key, however large.
        let (page, more) = a.store.list_page("a/", Some("a/1"), 10, 1);
        assert_eq!((keys(page), more), (vec!["a/2".to_string()], true));
        // A start before the prefix starts at the prefix.
        let (page, _) = a.store.list_page("b/", Some("a/9"), 10, usize::MAX);
        assert_eq!(keys(page), vec!["b/1".to_string()]);
    }

    /// Applies commands as consecutive entries, the way the apply loop does.
    struct Applier {
        store: KvStore,
    }

    impl Applier {
        fn new() -> Applier {
            Applier { store: KvStore::new() }
        }

        fn next(&mut self, payload: EntryPayload) -> Option<ApplyResult> {
            let entry = Entry { index: self.store.applied_index() + 1, term: 1, payload };
            let result = self.store.apply(&entry);
            self.store.flush().expect("flush");
            result
        }

        fn command(&mut self, command: Command) -> Option<ApplyResult> {
            self.next(EntryPayload::Command(encode(&command)))
        }

        fn put(&mut self, key: &str, value: &str, prev_revision: Option<u64>) -> ApplyResult {
            let command = Command::Put { key: key.into(), value: Bytes::from(value.to_owned()), prev_revision };
            self.command(command).expect("a put has a result")
        }

        fn delete(&mut self, key: &str, prev_revision: Option<u64>) -> ApplyResult {
            self.command(Command::Delete { key: key.into(), prev_revision }).expect("a delete has a result")
        }

        fn conf_change(&mut self, kind: ConfChangeKind, node_id: NodeId, context: Bytes) {
            assert_eq!(self.next(EntryPayload::ConfChange(ConfChange { kind, node_id, context })), None);
        }
    }

    fn info(id: NodeId, name: &str) -> MemberInfo {
        MemberInfo {
            id,
            name: name.into(),
            peer_url: format!("http://{name}.etcd:2380"),
            client_url: format!("http://{name}.etcd:2379"),
        }
    }

    /// A snapshot to keep (`store::backup`): framed into a file, checked, and restored as a new
    /// member's state machine with the keys and revisions but not the old cluster's Raft state.
    #[test]
    fn a_kept_snapshot_restores_the_keys_and_revisions_without_the_old_members() {
        use crate::store::backup::{check_file, restore_state_machine, Framer};
        let mut kv = Applier::new();
        kv.conf_change(ConfChangeKind::AddVoter, 1, encode(&info(1, "old")));
        for i in 0..30 {
            kv.put(&format!("k{i:02}"), "v", None);
        }
        kv.put("k00", "again", None);
        kv.delete("k01", None);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("kept.db");
        let mut framer = Framer::new();
        let mut bytes = Vec::new();
        for chunk in kv.store.snapshot().expect("snapshot") {
            let chunk = chunk.expect("chunk");
            framer.add(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        bytes.extend_from_slice(&framer.tail());
        assert_eq!((bytes.len() - 32) % 512, 0, "framed to 512 bytes, then the SHA-256");
        std::fs::write(&file, &bytes).expect("write");

        let status = check_file(&file).expect("a sound file");
        assert_eq!(status.stream.revision, kv.store.revision() as i64);
        assert_eq!(
            (status.stream.keys, status.stream.versions),
            (29, 32),
            "29 live keys; 30 + 1 versions and a tombstone"
        );
        assert_eq!(status.members, vec![(info(1, "old"), true)]);
        assert_eq!((status.applied_index, status.size), (kv.store.applied_index(), bytes.len() as u64));

        let restored = restore_state_machine(&file, &status, &dir.path().join("kv.db")).expect("restored");
        assert_eq!(restored.revision(), kv.store.revision());
        for key in ["k00", "k02", "k29"] {
            assert_eq!(restored.get(key), kv.store.get(key), "{key}");
        }
        assert_eq!(restored.get("k01"), None);
        assert_eq!((restored.applied_index(), restored.members()), (0, Vec::new()), "no old Raft state");
        // The new cluster's bootstrap entries apply from index 1 and make the new member table.
        let mut restored = Applier { store: restored };
        restored.conf_change(ConfChangeKind::AddVoter, 7, encode(&info(7, "new")));
        assert_eq!(restored.store.members(), vec![(info(7, "new"), true)]);
        assert_eq!(restored.store.revision(), kv.store.revision(), "a membership change moves no revision");
        assert!(restore_state_machine(&file, &status, &dir.path().join("kv.db")).is_err(), "never over a store");
    }

    #[test]
    fn revisions_and_versions_follow_put_put_delete_recreate() {
        let mut kv = Applier::new();
        assert_eq!(kv.put("a", "1", None), ApplyResult::Put { revision: 2 });
        assert_eq!(kv.put("b", "x", None), ApplyResult::Put { revision: 3 });
        assert_eq!(kv.put("a", "2", None), ApplyResult::Put { revision: 4 });
        let a = kv.store.get("a").expect("a exists");
        assert_eq!((a.value.as_ref(), a.create_revision, a.mod_revision, a.version), (&b"2"[..], 2, 4, 2));

        assert_eq!(kv.delete("a", None), ApplyResult::Deleted { revision: 5, deleted: 1 });
        assert_eq!(kv.store.get("a"), None);
        assert_eq!(kv.put("a", "3", None), ApplyResult::Put { revision: 6 });
        let a = kv.store.get("a").expect("a recreated");
        assert_eq!((a.create_revision, a.mod_revision, a.version), (6, 6, 1), "a new life starts over");
        assert_eq!(kv.store.revision(), 6, "an empty store is at revision 1, as etcd's");
        assert_eq!(kv.store.applied_index(), 5);
        assert_eq!(kv.store.len(), 2);
    }

    #[test]
    fn deleting_an_absent_key_does_not_move_the_revision() {
        let mut kv = Applier::new();
        kv.put("a", "1", None);
        assert_eq!(kv.delete("missing", None), ApplyResult::Deleted { revision: 2, deleted: 0 });
        assert_eq!(kv.store.revision(), 2);
        assert_eq!(kv.store.applied_index(), 2, "the entry is applied all the same");
    }

    /// etcd's MemberUpdate, and what the leader records of members (`Command::UpdateMember`):
    /// only the fields given change, the record survives a reload, the membership hash moves;
    /// an unknown member changes nothing.
    #[test]
    fn update_member_changes_the_fields_given_and_nothing_for_an_unknown_member() {
        let mut kv = Applier::new();
        kv.conf_change(ConfChangeKind::AddVoter, 1, encode(&info(1, "etcd-0")));
        kv.conf_change(ConfChangeKind::AddLearner, 2, encode(&MemberInfo { id: 2, ..MemberInfo::default() }));
        let hash = kv.store.membership_hash();
        let moved = Command::UpdateMember {
            id: 1,
            name: None,
            peer_url: Some("http://10.0.0.9:2380".into()),
            client_url: None,
        };
        let expected = MemberInfo { peer_url: "http://10.0.0.9:2380".into(), ..info(1, "etcd-0") };
        assert_eq!(kv.command(moved), Some(ApplyResult::MemberUpdated { member: expected.clone(), found: true }));
        let named = Command::UpdateMember {
            id: 2,
            name: Some("etcd-1".into()),
            peer_url: None,
            client_url: Some("http://etcd-1.etcd:2379".into()),
        };
        assert!(matches!(kv.command(named), Some(ApplyResult::MemberUpdated { found: true, .. })));
        assert_ne!(kv.store.membership_hash(), hash);
        let members = kv.store.members();
        assert_eq!(members[0], (expected, true));
        assert_eq!(
            (members[1].0.name.as_str(), members[1].0.client_url.as_str()),
            ("etcd-1", "http://etcd-1.etcd:2379")
        );
        let hash = kv.store.membership_hash();
        let unknown = Command::UpdateMember { id: 9, name: Some("x".into()), peer_url: None, client_url: None };
        assert!(matches!(kv.command(unknown), Some(ApplyResult::MemberUpdated { found: false, .. })));
        assert_eq!((kv.store.membership_hash(), kv.store.members().len()), (hash, 2));
    }

    #[test]
    fn compare_and_swap_applies_on_match_and_changes_nothing_on_mismatch() {
        let mut kv = Applier::new();
        // Some(0): only if absent.
        assert_eq!(kv.put("k", "v1", Some(0)), ApplyResult::Put { revision: 2 });
        let before = (kv.store.revision(), kv.store.get("k"));
        assert_eq!(kv.put("k", "v2", Some(0)), ApplyResult::CompareFailed { current: 2 });
        assert_eq!(kv.put("k", "v2", Some(7)), ApplyResult::CompareFailed { current: 2 });
        assert_eq!(kv.delete("k", Some(9)), ApplyResult::CompareFailed { current: 2 });
        assert_eq!(kv.put("absent", "v", Some(2)), ApplyResult::CompareFailed { current: 0 });
        assert_eq!((kv.store.revision(), kv.store.get("k")), before);
        assert_eq!(kv.store.get("absent"), None);

        assert_eq!(kv.put("k", "v2", Some(2)), ApplyResult::Put { revision: 3 });
        assert_eq!(kv.store.get("k").map(|kv| kv.value), Some(Bytes::from_static(b"v2")));
        assert_eq!(kv.delete("k", Some(3)), ApplyResult::Deleted { revision: 4, deleted: 1 });
        assert_eq!(kv.delete("k", Some(0)), ApplyResult::Deleted { revision: 4, deleted: 0 });
    }

    #[test]
    fn prefix_list_honours_limit_and_reports_more() {
        let mut kv = Applier::new();
        for key in ["a/3", "a/1", "b/1", "a/2", "a", "ab"] {
            kv.put(key, key, None);
        }
        let keys = |(kvs, more): (Vec<KeyValue>, bool)| (kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>(), more);
        assert_eq!(keys(kv.store.list("a/", 2)), (vec!["a/1".to_owned(), "a/2".to_owned()], true));
        assert_eq!(keys(kv.store.list("a/", 3)), (vec!["a/1".to_owned(), "a/2".to_owned(), "a/3".to_owned()], false));
        assert_eq!(keys(kv.store.list("a/", 10)).0.len(), 3);
        assert_eq!(keys(kv.store.list("a", 10)).0, ["a", "a/1", "a/2", "a/3", "ab"]);
        assert_eq!(keys(kv.store.list("", 100)).0.len(), 6);
        assert_eq!(keys(kv.store.list("c", 10)), (vec![], false));
        assert_eq!(keys(kv.store.list("b/", 0)), (vec![], true));
        let (kvs, _) = kv.store.list("b/", 1);
        assert_eq!(kvs[0].value, Bytes::from_static(b"b/1"));
    }

    #[test]
    fn membership_follows_conf_change_entries() {
        let mut kv = Applier::new();
        kv.conf_change(ConfChangeKind::AddVoter, 1, encode(&info(1, "etcd-0")));
        kv.conf_change(ConfChangeKind::AddLearner, 2, encode(&info(2, "etcd-1")));
        assert_eq!(kv.store.members(), vec![(info(1, "etcd-0"), true), (info(2, "etcd-1"), false)]);
        let learner_hash = kv.store.membership_hash();

        kv.conf_change(ConfChangeKind::Promote, 2, Bytes::new());
        assert_eq!(kv.store.member(2), Some((info(2, "etcd-1"), true)));
        assert_ne!(kv.store.membership_hash(), learner_hash, "voter flags are part of the hash");

        kv.conf_change(ConfChangeKind::Remove, 1, Bytes::new());
        assert_eq!(kv.store.member(1), None);
        assert_eq!(kv.store.removed(), &BTreeSet::from([1]));

        // An unreadable context still records the id.
        kv.conf_change(ConfChangeKind::AddLearner, 3, Bytes::from_static(b"\xff"));
        let (unnamed, voter) = kv.store.member(3).expect("member 3 recorded");
        assert_eq!((unnamed.id, unnamed.name.as_str(), unnamed.peer_url.as_str(), voter), (3, "", "", false));
        assert_eq!(kv.store.members().iter().map(|(m, _)| m.id).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(kv.store.revision(), 1, "membership changes are not key writes");
        assert_eq!(kv.store.applied_index(), 5);
    }

    #[test]
    fn membership_hash_is_fnv1a_over_the_table_and_the_same_for_the_same_table() {
        // FNV-1a reference values: empty input and "a".
        assert_eq!(KvStore::new().membership_hash(), 0xcbf2_9ce4_8422_2325);
        let mut fnv = Fnv1a::new();
        fnv.write(b"a");
        assert_eq!(fnv.finish(), 0xaf63_dc4c_8601_ec8c);

        let build = |names: [&str; 2]| {
            let mut kv = Applier::new();
            kv.conf_change(ConfChangeKind::AddVoter, 1, encode(&info(1, names[0])));
            kv.conf_change(ConfChangeKind::AddVoter, 2, encode(&info(2, names[1])));
            kv.store.membership_hash()
        };
        assert_eq!(build(["etcd-0", "etcd-1"]), build(["etcd-0", "etcd-1"]));
        assert_ne!(build(["etcd-0", "etcd-1"]), build(["etcd-0", "etcd-2"]));
    }

    /// Everything a reader of the state machine can see, for comparing two of them.
    fn observable(kv: &KvStore) -> String {
        let members = kv.members();
        let joined: Vec<bool> = members.iter().map(|(m, _)| kv.joined(m.id)).collect();
        format!(
            "{:?}",
            (
                kv.list("", usize::MAX),
                members,
                joined,
                kv.removed(),
                (kv.applied_index(), kv.applied_term()),
                (kv.revision(), kv.compacted_revision()),
                kv.membership_hash()
            )
        )
    }

    /// The state machine a snapshot stream of `kv` builds, in memory.
    fn through_stream(kv: &KvStore) -> KvStore {
        let chunks = kv.snapshot().expect("snapshot");
        KvStore::stage(None, ChunkReader::new(chunks)).expect("stage")
    }

    /// Issue 16: with auth on, a client's command applies only if its user may make it, a bare
    /// client write has no user, and the members' own commands still apply; the auth state
    /// survives a reopen and a snapshot stream, and tokens live only in memory.
    #[test]
    fn commands_apply_as_their_callers_and_the_auth_state_is_replicated_state() {
        use crate::store::auth::{AuthError, AuthOutcome, AuthRequest, PermType, Permission};
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.redb");
        let mut a = Applier { store: KvStore::open(&path).expect("open") };
        let as_user = |user: Option<&str>, command: Command| Command::As {
            user: user.map(str::to_string),
            command: Box::new(command),
        };
        let auth = |request: AuthRequest| as_user(None, Command::Auth(request));
        let put = |key: &str| Command::Put { key: key.into(), value: Bytes::from_static(b"v"), prev_revision: None };
        let done = Some(ApplyResult::Auth(AuthOutcome::Done));
        for request in [
            AuthRequest::UserAdd { name: "root".into(), password_hash: None },
            AuthRequest::UserGrantRole { user: "root".into(), role: "root".into() },
            AuthRequest::UserAdd { name: "alice".into(), password_hash: Some("hash".into()) },
            AuthRequest::RoleAdd { name: "w".into() },
            AuthRequest::RoleGrantPermission {
                name: "w".into(),
                perm: Some(Permission { perm_type: PermType::Write, key: b"/w/".to_vec(), range_end: b"/w0".to_vec() }),
            },
            AuthRequest::UserGrantRole { user: "alice".into(), role: "w".into() },
            AuthRequest::Enable { secret: vec![7; 32] },
        ] {
            assert_eq!(a.command(auth(request.clone())), done, "{request:?}");
        }
        let refused = |e| Some(ApplyResult::AuthRefused(e));
        // Management is root's now.
        assert_eq!(a.command(auth(AuthRequest::RoleAdd { name: "x".into() })), refused(AuthError::UserEmpty));
        let by_alice = as_user(Some("alice"), Command::Auth(AuthRequest::RoleAdd { name: "x".into() }));
        assert_eq!(a.command(by_alice), refused(AuthError::PermissionDenied));
        let revision = a.store.current_revision();
        assert!(matches!(a.command(as_user(Some("alice"), put("/w/a"))), Some(ApplyResult::Put { .. })));
        assert_eq!(a.command(as_user(Some("alice"), put("/r/a"))), refused(AuthError::PermissionDenied));
        // A compare reads: alice may not compare what she may only write.
        let compared = Command::Put { key: "/w/a".into(), value: Bytes::new(), prev_revision: Some(0) };
        assert_eq!(a.command(as_user(Some("alice"), compared)), refused(AuthError::PermissionDenied));
        assert_eq!(a.command(as_user(None, put("/w/a"))), refused(AuthError::UserEmpty));
        assert_eq!(a.command(put("/w/a")), refused(AuthError::UserEmpty), "a bare client write has no user");
        assert!(matches!(a.command(as_user(Some("root"), put("/r/a"))), Some(ApplyResult::Put { .. })));
        assert_eq!(a.store.current_revision(), revision + 2, "refused commands change nothing");
        // The leader's own: a lease expiry and a compaction travel bare.
        assert!(matches!(a.command(Command::LeaseRevoke { id: 9 }), Some(ApplyResult::Refused(_))));
        assert!(matches!(a.command(Command::Compact { revision: 2 }), Some(ApplyResult::Compacted(_))));
        // A token: made at apply, named by the entry's index, in memory only.
        let token = match a.command(auth(AuthRequest::Authenticate {
            name: "alice".into(),
            token: "abcdefghijklmnop".into(),
            revision: a.store.auth().revision,
        })) {
            Some(ApplyResult::Auth(AuthOutcome::Token(token))) => token,
            other => panic!("{other:?}"),
        };
        assert_eq!(token, format!("abcdefghijklmnop.{}", a.store.applied_index()));
        assert_eq!(a.store.tokens().user(&token).as_deref(), Some("alice"));

        let state = a.store.auth().clone();
        let streamed = through_stream(&a.store);
        assert_eq!(streamed.auth(), &state, "a snapshot carries the auth state");
        drop(a);
        let reopened = KvStore::open(&path).expect("reopen");
        assert_eq!(reopened.auth(), &state, "the auth state is durable");
        assert!(reopened.tokens().is_empty(), "tokens are not");
    }

    #[test]
    fn a_snapshot_stream_builds_an_equal_state_machine_that_applies_on() {
        let mut kv = Applier::new();
        kv.conf_change(ConfChangeKind::AddVoter, 1, encode(&info(1, "etcd-0")));
        kv.conf_change(ConfChangeKind::AddLearner, 2, encode(&info(2, "etcd-1")));
        kv.conf_change(ConfChangeKind::Remove, 2, Bytes::new());
        kv.command(Command::Seen { id: 1 });
        for i in 0..100 {
            kv.put(&format!("key/{i:03}"), &format!("value {i}"), None);
        }
        kv.delete("key/050", None);
        kv.put("key/007", "again", None);
        kv.next(EntryPayload::Noop);

        let restored = through_stream(&kv.store);
        assert_eq!(observable(&restored), observable(&kv.store));
        assert!(restored.joined(1) && restored.removed().contains(&2));
        // The history travels too: the key as it was before its last write.
        let past = RangeRequest { key: b"key/007".to_vec(), revision: 9, ..RangeRequest::default() };
        assert_eq!(restored.range(&past).expect("past").kvs, kv.store.range(&past).expect("past").kvs);

        // And it keeps applying where the original left off.
        let mut continued = Applier { store: restored };
        assert_eq!(continued.put("key/new", "v", None), ApplyResult::Put { revision: kv.store.revision() + 1 });
    }

    #[test]
    fn what_was_flushed_is_there_after_reopening_with_the_applied_index_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kv.db");
        let mut kv = Applier { store: KvStore::open(&path).expect("open") };
        kv.conf_change(ConfChangeKind::AddVoter, 1, encode(&info(1, "etcd-0")));
        kv.put("a", "1", None);
        kv.put("b", "2", None);
        let before = observable(&kv.store);
        drop(kv);
        let reopened = KvStore::open(&path).expect("reopen");
        assert_eq!(observable(&reopened), before);
        assert_eq!(reopened.applied_index(), 3);
    }

    #[test]
    fn a_staged_state_machine_takes_the_live_ones_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join("kv.db");
        let mut source = Applier::new();
        source.put("from", "leader", None);
        let mut old = Applier { store: KvStore::open(&live).expect("open") };
        old.put("stale", "x", None);
        drop(old);

        let staging = staging_path(&live);
        let mut staged = KvStore::stage(Some(&staging), ChunkReader::new(source.store.snapshot().expect("snapshot")))
            .expect("stage");
        staged.check_against(1, 1).expect("the source applied index 1 of term 1");
        assert!(staged.check_against(2, 1).is_err() && staged.check_against(1, 2).is_err());
        let new = KvStore::replace_with(Some(&live), staged).expect("replace");
        assert_eq!(new.path(), Some(live.as_path()));
        assert_eq!(observable(&new), observable(&source.store));
        assert!(!staging.exists(), "the staged file became the live one");
        drop(new);
        assert_eq!(KvStore::open(&live).expect("reopen").get("from").map(|kv| kv.value), Some(Bytes::from("leader")));
    }

    #[test]
    fn each_stream_stages_under_its_own_name_and_a_discarded_one_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join("kv.db");
        let mut source = Applier::new();
        source.put("k", "v", None);
        let (first, second) = (staging_path(&live), staging_path(&live));
        assert_ne!(first, second, "two streams never share a file");
        let stage = |path: &Path| {
            KvStore::stage(Some(path), ChunkReader::new(source.store.snapshot().expect("snapshot"))).expect("stage")
        };
        let (a, b) = (stage(&first), stage(&second));
        assert!(first.exists() && second.exists());
        a.discard();
        assert!(!first.exists(), "a discarded stage is removed");
        assert_eq!(observable(&b), observable(&source.store), "the other one is untouched");
        for (name, staging) in [
            ("kv.db.staged.7", true),
            ("kv.db.staged.7.installing", true),
            ("kv.db.staged", true),
            ("kv.db.installing", true),
            ("kv.db", false),
            ("wal", false),
            ("kv.dbx.staged.1", false),
        ] {
            assert_eq!(is_staging_file("kv.db", name), staging, "{name}");
        }
    }

    #[test]
    fn a_damaged_snapshot_stream_is_refused_and_leaves_nothing_behind() {
        let mut kv = Applier::new();
        kv.put("a", "1", None);
        let bytes: Vec<u8> = kv.store.snapshot().expect("snapshot").flat_map(|c| c.expect("chunk").to_vec()).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let staging = staging_path(&dir.path().join("kv.db"));
        for cut in [0, 8, bytes.len() / 2, bytes.len() - 1] {
            let input = std::io::Cursor::new(bytes[..cut].to_vec());
            assert!(KvStore::stage(Some(&staging), input).is_err(), "a stream cut at {cut} was taken");
            assert!(!staging.exists());
        }
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x40;
        assert!(KvStore::stage(Some(&staging), std::io::Cursor::new(flipped)).is_err(), "a flipped bit was taken");
    }

    #[test]
    fn legacy_snapshot_garbage_is_an_error_not_a_panic() {
        let valid = legacy_snapshot(&applied_store(1), 3);
        let mut wrong_format = valid.clone();
        wrong_format[4] = 9;
        // The first field after the header is `applied`; then `revision`; then the number of
        // keys, each a varint (one byte each here), replaced by one that claims u64::MAX keys.
        assert_eq!(&valid[8..11], &[3, 3, 3], "applied 3, revision 3 (as 0.2 counted), three keys");
        let mut huge_length = valid[..10].to_vec();
        huge_length.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        huge_length.extend_from_slice(&valid[11..]);
        let inputs: Vec<Vec<u8>> = vec![
            vec![],
            b"KVS".to_vec(),
            b"garbage that is long enough".to_vec(),
            wrong_format,
            valid[..valid.len() - 1].to_vec(),
            huge_length,
            (0..=255u8).cycle().take(4096).collect(),
        ];
        for input in inputs {
            assert!(
                matches!(KvStore::from_legacy(None, &input), Err(StoreError::BadSnapshot(_))),
                "{} bytes were accepted",
                input.len()
            );
        }
        assert!(KvStore::from_legacy(None, &valid).is_ok());
    }

    /// A store that applied a few entries of `term`.
    fn applied_store(term: Term) -> KvStore {
        let mut store = KvStore::new();
        for index in 1..=3 {
            let put = Command::Put { key: format!("k{index}"), value: Bytes::from_static(b"v"), prev_revision: None };
            store.apply(&Entry { index, term, payload: EntryPayload::Command(encode(&put)) });
            store.flush().expect("flush");
        }
        store
    }

    fn raft_snapshot(index: Index, term: Term, data: Bytes) -> Snapshot {
        Snapshot { meta: crate::raft::SnapshotMeta { index, term, conf: Default::default() }, data }
    }

    /// The keys of `store` in a snapshot of format 1, 2 (bincode 1, built by hand here:
    /// fixed-width little-endian integers, u64 lengths) or 3 (postcard), as the version that
    /// wrote those formats numbered the same history: every revision one less (its empty store
    /// was at 0). Format 2 is format 1 plus `applied_term` and `joined` at the end of the body.
    fn legacy_snapshot(store: &KvStore, format: u32) -> Vec<u8> {
        let (kvs, _) = store.list("", usize::MAX);
        let old = |revision: u64| revision - 1;
        let kvs: Vec<KeyValue> = kvs
            .into_iter()
            .map(|kv| KeyValue { create_revision: old(kv.create_revision), mod_revision: old(kv.mod_revision), ..kv })
            .collect();
        let revision = old(store.revision());
        assert!(store.members().is_empty() && store.removed().is_empty(), "only keys are written here");
        let mut data = b"KVS\0".to_vec();
        data.extend_from_slice(&format.to_le_bytes());
        if format == 3 {
            let keys: BTreeMap<String, Stored> = kvs
                .iter()
                .map(|kv| {
                    let stored = Stored {
                        value: kv.value.clone(),
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                        version: kv.version,
                    };
                    (kv.key.clone(), stored)
                })
                .collect();
            let state = StateBody {
                applied: store.applied_index(),
                revision,
                keys,
                members: BTreeMap::<NodeId, Member>::new(),
                removed: BTreeSet::<NodeId>::new(),
            };
            let body = SnapshotBody { state, applied_term: store.applied_term(), joined: BTreeSet::<NodeId>::new() };
            codec::encode_into(&body, &mut data).expect("encode");
            return data;
        }
        let u64 = |data: &mut Vec<u8>, n: u64| data.extend_from_slice(&n.to_le_bytes());
        u64(&mut data, store.applied_index());
        u64(&mut data, revision);
        u64(&mut data, kvs.len() as u64);
        for kv in &kvs {
            u64(&mut data, kv.key.len() as u64);
            data.extend_from_slice(kv.key.as_bytes());
            u64(&mut data, kv.value.len() as u64);
            data.extend_from_slice(&kv.value);
            u64(&mut data, kv.create_revision);
            u64(&mut data, kv.mod_revision);
            u64(&mut data, kv.version);
        }
        u64(&mut data, 0); // members
        u64(&mut data, 0); // removed
        if format == 2 {
            u64(&mut data, store.applied_term());
            u64(&mut data, 0); // joined
        }
        data
    }

    /// Checks that `carried` holds the keys of `store` at its revision, with no history before.
    fn assert_carried_over(carried: &KvStore, store: &KvStore) {
        assert_eq!(carried.list("", usize::MAX), store.list("", usize::MAX));
        assert_eq!((carried.revision(), carried.applied_index()), (store.revision(), store.applied_index()));
        assert_eq!(carried.compacted_revision(), carried.current_revision(), "no history before its revision");
        let past =
            RangeRequest { key: b"k1".to_vec(), revision: carried.current_revision() - 1, ..RangeRequest::default() };
        assert!(matches!(carried.range(&past), Err(ReadError::Mvcc(crate::store::mvcc::MvccError::Compacted))));
    }

    #[test]
    fn an_old_log_replayed_and_an_old_snapshot_carried_over_hold_the_same_revisions() {
        // Commands as kuberaft 0.2 wrote them (format 2), counting revisions from 0: put k (its
        // revision 1), put k if its mod revision is 1 (acknowledged then), create j.
        let old = |command: Command| {
            let mut bytes = encode(&command).to_vec();
            bytes[0] = crate::store::command::PAYLOAD_FORMAT_2;
            Bytes::from(bytes)
        };
        let put = |key: &str, value: &'static str, prev_revision| Command::Put {
            key: key.into(),
            value: Bytes::from_static(value.as_bytes()),
            prev_revision,
        };
        let mut replayed = KvStore::new();
        for (index, command) in [(1, put("k", "1", None)), (2, put("k", "2", Some(1))), (3, put("j", "1", Some(0)))] {
            let result = replayed.apply(&Entry { index, term: 1, payload: EntryPayload::Command(old(command)) });
            assert!(matches!(result, Some(ApplyResult::Put { .. })), "entry {index}: {result:?}");
        }
        replayed.flush().expect("flush");
        let k = replayed.get("k").expect("k");
        assert_eq!((k.value.as_ref(), k.create_revision, k.mod_revision), (&b"2"[..], 2, 3), "etcd's numbering");
        assert_eq!(replayed.revision(), 4);
        // The same history from 0.2's snapshot (k created at 1, modified at 2; j at 3): the same.
        for format in [1, 2, 3] {
            let carried = KvStore::from_legacy(None, &legacy_snapshot(&replayed, format)).expect("reads");
            assert_eq!(carried.list("", usize::MAX), replayed.list("", usize::MAX), "format {format}");
            assert_eq!(carried.revision(), replayed.revision(), "format {format}");
        }
        // A compare written today counts today's revisions.
        let today = encode(&put("k", "3", Some(3)));
        let result = replayed.apply(&Entry { index: 4, term: 1, payload: EntryPayload::Command(today) });
        assert!(matches!(result, Some(ApplyResult::Put { revision: 5 })), "{result:?}");
    }

    #[test]
    fn snapshots_of_formats_1_to_3_are_carried_over_without_history() {
        let store = applied_store(4);
        for format in [1, 2, 3] {
            let old = legacy_snapshot(&store, format);
            let carried = KvStore::from_legacy(None, &old).expect("reads");
            assert_carried_over(&carried, &store);
            let expected_term = if format == 1 { 0 } else { 4 };
            assert_eq!(carried.applied_term(), expected_term, "format {format}");
            let installed =
                KvStore::from_legacy_snapshot(None, &raft_snapshot(3, 4, Bytes::from(old.clone()))).expect("install");
            assert_eq!(installed.applied_term(), 4, "the term comes from the metadata when the body has none");
            // Damaged: every cut of the body is refused, never a panic.
            for cut in SNAPSHOT_HEADER_BYTES..old.len() {
                assert!(KvStore::from_legacy(None, &old[..cut]).is_err(), "format {format} cut at {cut}");
            }
        }
    }

    #[test]
    fn a_snapshot_whose_state_contradicts_its_metadata_is_refused() {
        let data = Bytes::from(legacy_snapshot(&applied_store(4), 3));
        assert!(KvStore::from_legacy_snapshot(None, &raft_snapshot(3, 4, data.clone())).is_ok());
        for (index, term) in [(2, 4), (4, 4), (3, 3), (3, 5)] {
            match KvStore::from_legacy_snapshot(None, &raft_snapshot(index, term, data.clone())) {
                Err(StoreError::BadSnapshot(message)) => assert!(
                    message.contains("applied index 3 (term 4)")
                        && message.contains(&format!("snapshot is of index {index} (term {term})")),
                    "{message}"
                ),
                other => panic!("index {index} term {term}: {other:?}"),
            }
        }
        // The same check for a streamed state machine.
        let mut streamed = through_stream(&applied_store(4));
        assert!(streamed.check_against(3, 5).is_err());
        assert!(streamed.check_against(3, 4).is_ok());
    }

    #[test]
    fn a_newer_snapshot_format_is_refused_naming_both_versions() {
        let mut newer = legacy_snapshot(&applied_store(1), 3);
        newer[4..8].copy_from_slice(&4u32.to_le_bytes());
        let text = KvStore::from_legacy(None, &newer).expect_err("format 4 is refused").to_string();
        assert!(text.contains("snapshot format 4 is newer than this version reads (3): upgrade"), "{text}");
        newer[4..8].copy_from_slice(&0u32.to_le_bytes());
        let text = KvStore::from_legacy(None, &newer).expect_err("format 0 is refused").to_string();
        assert!(text.contains("snapshot format 0 is not one this version reads (1 to 3)"), "{text}");
    }

    #[test]
    fn out_of_order_entries_are_refused_without_change() {
        let mut kv = Applier::new();
        let put = |index| Entry {
            index,
            term: 1,
            payload: EntryPayload::Command(encode(&Command::Put {
                key: "k".into(),
                value: Bytes::from_static(b"v"),
                prev_revision: None,
            })),
        };
        let empty = observable(&kv.store);
        assert_eq!(kv.store.apply(&put(2)), None, "a gap");
        kv.store.flush().expect("flush");
        assert_eq!(observable(&kv.store), empty);
        assert_eq!(kv.store.apply(&put(1)), Some(ApplyResult::Put { revision: 2 }));
        kv.store.flush().expect("flush");
        let before = observable(&kv.store);
        assert_eq!(kv.store.apply(&put(1)), None, "applied twice");
        kv.store.flush().expect("flush");
        assert_eq!(observable(&kv.store), before);
    }

    #[test]
    fn an_undecodable_command_is_skipped_deterministically() {
        let mut kv = Applier::new();
        assert_eq!(kv.next(EntryPayload::Command(Bytes::from_static(b"\x07\x00\x00\x00junk"))), None);
        assert_eq!(kv.next(EntryPayload::Noop), None);
        assert_eq!((kv.store.applied_index(), kv.store.revision(), kv.store.len()), (2, 1, 0));
        assert!(kv.store.is_empty());
        assert_eq!(kv.put("a", "1", None), ApplyResult::Put { revision: 2 });
    }
}

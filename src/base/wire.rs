//! The JSON shapes of the client API (DESIGN.md §4), shared by the server and the client.
//! Field names are camelCase, as in Kubernetes.

use serde::{Deserialize, Serialize};

pub mod kv;
pub mod lease;
pub mod watch;

/// Response headers.
pub const HEADER_MOD_REVISION: &str = "x-kuberaft-mod-revision";
pub const HEADER_CREATE_REVISION: &str = "x-kuberaft-create-revision";
pub const HEADER_REVISION: &str = "x-kuberaft-revision";
/// On an answer that a follower forwarded: the leader's client URL, so that a client can send its
/// next writes and linearizable reads there directly (one hop fewer).
pub const HEADER_LEADER: &str = "x-kuberaft-leader";
/// Set on requests a member forwards to the leader, so that they are never forwarded twice.
pub const HEADER_FORWARDED: &str = "x-kuberaft-forwarded";

pub const DEFAULT_CLIENT_PORT: u16 = 2379;
pub const DEFAULT_PEER_PORT: u16 = 2380;
/// Keys: non-empty UTF-8, at most this many bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Values: at most this many bytes unless `--max-value-bytes` says otherwise.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// A learner is promoted once its applied (or matched) index reaches this share of the leader's
/// commit index: a voter far behind would stall commits, and under steady writes "equal" never
/// happens. The node's promote endpoint and the operator's planner both decide with it.
pub const PROMOTE_CATCH_UP_PERCENT: u64 = 90;

/// Whether a learner at `index` is close enough to `commit_index` to be promoted.
pub fn learner_caught_up(index: u64, commit_index: u64) -> bool {
    u128::from(index) * 100 >= u128::from(commit_index) * u128::from(PROMOTE_CATCH_UP_PERCENT)
}

/// List requests return at most this many keys per page.
pub const MAX_LIST_LIMIT: usize = 10_000;
/// A list request without `limit` returns at most this many keys.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// A list page stops before its values pass this many bytes (it always holds at least one key):
/// an answer stays a few MiB however large the values are. `more` then says that keys follow,
/// and `startAfter=<last key>` continues.
pub const MAX_LIST_PAGE_BYTES: usize = 4 << 20;
/// Bodies of `POST /v1/members` and `POST /v1/leader/transfer` are at most this large.
pub const MAX_MEMBER_REQUEST_BYTES: usize = 64 * 1024;
pub const MAX_TRANSFER_REQUEST_BYTES: usize = 4096;
/// Bodies of `POST /v1/range` (a key, a range end and options) and `POST /v1/compact`.
pub const MAX_RANGE_REQUEST_BYTES: usize = 64 * 1024;
pub const MAX_COMPACT_REQUEST_BYTES: usize = 4096;
/// The body of `POST /v1/txn` may exceed `--max-value-bytes` by this much (for its keys, other
/// values, compares and JSON), so a txn can carry one value of the largest size, base64 or not.
/// Its ops decode to fewer bytes than their JSON, so its log entry stays below the peer
/// port's bound for one message (`node::transport::PeerLimits`).
pub const TXN_REQUEST_OVERHEAD_BYTES: usize = 1 << 20;

/// The largest body of `POST /v1/txn` for a member with this `--max-value-bytes`.
pub fn max_txn_request_bytes(max_value_bytes: usize) -> usize {
    max_value_bytes.saturating_add(TXN_REQUEST_OVERHEAD_BYTES)
}

/// Why a stream ends when its member stops, as etcd words it (`rpctypes.ErrGRPCStopped`, code
/// Unavailable): a watch's last response, a lease keep-alive stream's last line.
pub const STOPPED: &str = "etcdserver: server stopped";

/// `{"error": {"code": "...", "message": "..."}}`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable: `bad_request`, `invalid_key`, `not_found`, `compare_failed`,
    /// `too_large`, `method_not_allowed`, `no_leader`, `unavailable`, `timeout`,
    /// `outcome_unknown`, `internal`; etcd's store errors (with etcd's message): `compacted`,
    /// `future_revision`, `key_not_found`, `empty_key`, `value_provided`, `lease_provided`,
    /// `duplicate_key`, `too_many_ops`.
    pub code: String,
    pub message: String,
    /// With `compacted`: the revision the store is compacted to (reads below it fail).
    #[serde(default, rename = "compactRevision", skip_serializing_if = "Option::is_none")]
    pub compact_revision: Option<i64>,
}

impl ErrorDetail {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> ErrorDetail {
        ErrorDetail { code: code.into(), message: message.into(), compact_revision: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutResponse {
    pub revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteResponse {
    pub revision: u64,
    pub deleted: u64,
}

/// One key in a list. Values are base64 so that any bytes survive JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KvItem {
    /// The key as text; for a key that is not UTF-8 (written through `/v1/txn`), its bytes
    /// with invalid sequences replaced by U+FFFD, and `keyBase64` holds the exact bytes.
    pub key: String,
    /// Standard base64 of the key, only for a key that is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// Standard base64 of the value bytes (empty with `keysOnly`).
    pub value: String,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse {
    pub revision: u64,
    pub kvs: Vec<KvItem>,
    pub more: bool,
    /// How many keys the list's range holds at the revision read, regardless of `limit` (with
    /// `startAfter`: those after it); absent from members before issue 13.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Hex, as etcd prints member ids.
    pub id: String,
    pub name: String,
    #[serde(rename = "peerURL")]
    pub peer_url: String,
    #[serde(rename = "clientURL")]
    pub client_url: String,
    pub voter: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembersResponse {
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddMemberRequest {
    pub name: String,
    #[serde(rename = "peerURL")]
    pub peer_url: String,
    #[serde(rename = "clientURL")]
    pub client_url: String,
    #[serde(default)]
    pub learner: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddMemberResponse {
    pub id: String,
}

/// `POST /v1/auth/authenticate`: a user's name and password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateRequest {
    pub name: String,
    pub password: String,
}

/// The token to send as `Authorization` (etcd's simple token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateResponse {
    pub token: String,
}

/// `POST /v1/auth/user/add`: a new user, with a password or (`noPassword`) without one, as
/// etcd's `UserAdd`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserAddRequest {
    pub name: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub no_password: bool,
}

/// `POST /v1/auth/user/changepw`: a user's new password (etcd's `UserChangePassword`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPasswordRequest {
    pub name: String,
    pub password: String,
}

/// Passwords never reach a log line through `Debug`.
macro_rules! debug_without_password {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t)).field("name", &self.name).finish_non_exhaustive()
            }
        }
    )*};
}
debug_without_password!(AuthenticateRequest, UserAddRequest, UserPasswordRequest);

/// `POST /v1/auth/user/grant`: gives `user` the role `role` (etcd's `UserGrantRole`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserGrantRoleRequest {
    pub user: String,
    pub role: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct TransferRequest {
    /// Hex member id; absent: the most caught-up voter.
    #[serde(default)]
    pub to: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferResponse {
    /// The new leader's hex id.
    pub leader: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub name: String,
    pub id: String,
    pub role: Role,
    pub term: u64,
    /// The leader's name ("" when none is known).
    pub leader: String,
    pub leader_id: String,
    pub commit_index: u64,
    pub applied_index: u64,
    pub revision: u64,
    pub members: Vec<Member>,
    /// Hash of the committed membership (ids, names and URLs), equal on members that agree.
    pub membership_hash: String,
    /// Hex cluster id (from the initial cluster and its token).
    pub cluster_id: String,
    /// Why this member cannot serve writes, if it cannot (storage failure, rejected peers...).
    #[serde(default)]
    pub errors: Vec<String>,
    /// Whether auth is on in this member's applied state; `None` from a member too old to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_enabled: Option<bool>,
    /// The term and index of the last entry in this member's log (persisted or not): how
    /// complete its log is, which decides the survivor of a quorum-loss recovery (Raft's
    /// up-to-date rule, §5.4.1). 0 from a member too old to say.
    #[serde(default)]
    pub last_log_term: u64,
    #[serde(default)]
    pub last_log_index: u64,
}

/// Member ids are printed and parsed as hex, as etcd does.
pub fn format_id(id: u64) -> String {
    format!("{id:x}")
}

pub fn parse_id(text: &str) -> Option<u64> {
    u64::from_str_radix(text, 16).ok().filter(|id| *id != 0)
}

/// `?consistency=` of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Served through the leader with ReadIndex: never stale.
    #[default]
    Linearizable,
    /// Served by the member asked, from its applied state: possibly stale.
    Serializable,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Serializable => "serializable",
        }
    }
}

/// A member's role, as `/v1/status` names it (lowercase).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    /// A role this version does not know (a newer member): never taken for a leader.
    #[default]
    #[serde(other)]
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serde for an id (a member's, a cluster's) written as hex, as [`format_id`] prints it.
pub mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_id(*id))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_id(&text).ok_or_else(|| serde::de::Error::custom(format!("'{text}' is not an id (non-zero hex)")))
    }
}

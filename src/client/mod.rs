//! The Rust client of the kuberaft HTTP API (DESIGN.md §4), used by the CLI, the operator and the
//! tests. It owns endpoint failover: it remembers the endpoint that answered last and tries it
//! first; on a connection failure, a timeout or a 503 ("not proposed, safe to retry") it moves on
//! to the next endpoint, at most twice over the list and never past an overall deadline. A 504
//! ("proposed, outcome unknown") or any 4xx is returned as is, never retried. It depends on
//! nothing of ours but `crate::base` (`wire`, and `tls` for `https://` endpoints).

pub mod concurrency;
mod encode;
mod snapshot;
#[cfg(test)]
mod tests;
mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::base::wire::kv::{
    CompactionRequest, CompactionResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::base::wire::lease;
use crate::base::wire::{
    format_id, AddMemberRequest, AddMemberResponse, AuthenticateRequest, AuthenticateResponse, DeleteResponse,
    ErrorBody, ListResponse, MembersResponse, PutResponse, Status, TransferRequest, TransferResponse, UserAddRequest,
    UserGrantRoleRequest, UserPasswordRequest, HEADER_CREATE_REVISION, HEADER_MOD_REVISION, HEADER_REVISION,
};

pub use crate::base::base64::{decode_base64, encode_base64};
pub use crate::base::wire::Consistency;
pub use encode::encode_component;
pub use snapshot::{Snapshot, SnapshotSaved};
pub use watch::{LineBuffer, Watch, PROBE_INTERVAL, SILENCE_LIMIT};

/// Per-request timeout unless configured otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP connect may take before the endpoint counts as unreachable. Kept shorter than
/// the request timeout so that an unreachable endpoint is told apart from a slow answer (which,
/// for a write, may have applied).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Passes over the endpoint list before giving up.
const MAX_PASSES: usize = 2;
/// Pause between passes when no endpoint sent a Retry-After.
const PASS_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between passes, whatever Retry-After says: the deadline is the caller's.
const MAX_PASS_BACKOFF: Duration = Duration::from_secs(1);
/// Error bodies longer than this are cut in messages.
const MAX_ERROR_TEXT: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error (4xx, 504, or 5xx other than 503).
    #[error("{message} ({code}, HTTP {status})")]
    Api { status: u16, code: String, message: String },
    /// No endpoint could serve the request; `attempts` says which endpoint failed how.
    #[error("no endpoint could serve the request: {}", summarize_attempts(attempts))]
    Unavailable { attempts: Vec<String> },
    /// A write was sent but no answer came back: it may or may not apply. Not retried, like a 504.
    #[error("outcome unknown: the request was sent to {endpoint} but {reason}; it may or may not have applied")]
    OutcomeUnknown { endpoint: String, reason: String },
    #[error("invalid endpoint '{endpoint}': {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// A key that cannot be written as one URL path segment.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The server answered 2xx with a body this client does not understand.
    #[error("cannot decode the answer of {endpoint}: {message}")]
    Decode { endpoint: String, message: String },
    /// The HTTP client itself could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    /// A concurrency session's lease ended (etcd's `ErrSessionExpired`, "session expired"):
    /// whatever it held (a lock, a leadership) is no longer held.
    #[error("session expired: {0}")]
    SessionExpired(String),
}

impl ClientError {
    /// The HTTP status of a server error, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when a write may or may not have applied (504, or no answer after sending).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, ClientError::OutcomeUnknown { .. } | ClientError::Api { status: 504, .. })
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A value read with `get`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResponse {
    pub value: Bytes,
    pub mod_revision: u64,
    pub create_revision: Option<u64>,
    /// The store's revision when it was read (absent from older members).
    pub revision: Option<u64>,
}

/// How the keys of a list are sorted (`?sortBy=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListSort {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

impl ListSort {
    fn as_str(self) -> &'static str {
        match self {
            ListSort::Key => "key",
            ListSort::Version => "version",
            ListSort::Create => "create",
            ListSort::Mod => "mod",
            ListSort::Value => "value",
        }
    }
}

/// What `list_with` asks for; the default is `list("", None)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    pub prefix: String,
    /// At most this many keys (the server's default when `None`; it caps a page).
    pub limit: Option<usize>,
    /// Continue after this key (the last key of the previous page, in key order).
    pub start_after: Option<String>,
    /// Every key from `prefix` on, not only those that start with it.
    pub from_key: bool,
    /// Leave the values out.
    pub keys_only: bool,
    /// Sort by this (`None`: key order).
    pub sort_by: Option<ListSort>,
    /// Descending instead of ascending.
    pub descending: bool,
    /// The keys as they were at this revision (`None`: now).
    pub revision: Option<i64>,
    pub consistency: Consistency,
}

/// Timeouts of a `Client`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// One HTTP exchange with one endpoint.
    pub request_timeout: Duration,
    /// TCP connect to one endpoint (capped by `request_timeout`).
    pub connect_timeout: Duration,
    /// Everything, failover included.
    pub deadline: Duration,
    /// Host names answered from this table instead of DNS (tests that run members as pods do).
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// TLS toward `https://` endpoints.
    pub tls: TlsOptions,
    /// A user to authenticate as (etcdctl's `--user`), when the cluster has auth on.
    pub user: Option<Credentials>,
    /// Headers sent with every request (a member calling itself on behalf of a caller).
    pub headers: Vec<(String, String)>,
}

/// A user's name and password: the client trades them for a token (`/v1/auth/authenticate`)
/// before its first call and sends the token with every call after, as etcd's clients do. A
/// cluster with auth off refuses the trade, and the client then goes on without a token (as
/// etcd's clients do).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Credentials {
    /// etcdctl's `--user name:password` (split at the first `:`), or a name and `password`.
    pub fn parse(user: &str, password: Option<&str>) -> Result<Credentials> {
        let (name, password) = match (user.split_once(':'), password) {
            (_, Some(password)) => (user, password),
            (Some((name, password)), None) => (name, password),
            (None, None) => {
                return Err(ClientError::Setup(format!(
                    "--user {user} has no password: give --user {user}:PASSWORD or --password"
                )))
            }
        };
        if name.is_empty() {
            return Err(ClientError::Setup("empty user name is not allowed".into()));
        }
        Ok(Credentials { name: name.to_string(), password: password.to_string() })
    }
}

/// The environment variables of `--cacert`, `--cert`, `--key`, `--user` and `--password`.
pub const CACERT_ENV: &str = "KUBERAFT_CACERT";
pub const CERT_ENV: &str = "KUBERAFT_CERT";
pub const KEY_ENV: &str = "KUBERAFT_KEY";
pub const USER_ENV: &str = "KUBERAFT_USER";
pub const PASSWORD_ENV: &str = "KUBERAFT_PASSWORD";

/// etcdctl's security flags, as every client command and `kuberaft bench` take them: TLS
/// toward `https://` endpoints, and a user to authenticate as. Global, so that they may come
/// before or after a command's action.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SecurityArgs {
    /// For https:// endpoints: the CA file the members' certificates chain to (etcdctl's --cacert).
    #[arg(long, global = true, env = CACERT_ENV)]
    pub cacert: Option<std::path::PathBuf>,
    /// This client's certificate, for members that require one (etcdctl's --cert).
    #[arg(long = "cert", id = "client_cert", global = true, env = CERT_ENV, requires = "client_key")]
    pub cert: Option<std::path::PathBuf>,
    /// The key of --cert (etcdctl's --key).
    #[arg(long = "key", id = "client_key", global = true, env = KEY_ENV, requires = "client_cert")]
    pub key: Option<std::path::PathBuf>,
    /// The user to authenticate as, `NAME:PASSWORD` (or `NAME` with --password), when the
    /// cluster has auth on (etcdctl's --user).
    #[arg(long, global = true, env = USER_ENV)]
    pub user: Option<String>,
    /// The password of --user (etcdctl's --password).
    #[arg(long, global = true, env = PASSWORD_ENV, requires = "user", hide_env_values = true)]
    pub password: Option<String>,
}

impl SecurityArgs {
    pub fn tls(&self) -> TlsOptions {
        TlsOptions { cacert: self.cacert.clone(), cert: self.cert.clone(), key: self.key.clone(), inline: None }
    }

    /// The credentials of `--user` and `--password`, if given.
    pub fn credentials(&self) -> Result<Option<Credentials>> {
        self.user.as_deref().map(|user| Credentials::parse(user, self.password.as_deref())).transpose()
    }
}

/// The token of a client's credentials: not asked for yet, none (auth is off), or this one.
#[derive(Clone, Debug, Default)]
enum Token {
    #[default]
    Unknown,
    None,
    Some(String),
}

/// TLS toward `https://` endpoints, as etcdctl's `--cacert`, `--cert` and `--key` say: the CA
/// the members' certificates must chain to (required for `https://`: a cluster's CA is its
/// own, not one of the system's), and the certificate this client presents, if any (a member
/// with `--client-cert-auth` requires one of its CA).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub cacert: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// The same three held in memory instead of files (the operator's, from a Secret); used
    /// instead of the paths when given.
    pub inline: Option<std::sync::Arc<InlineTls>>,
}

/// A CA, a certificate and its key, as PEM text in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineTls {
    pub ca: crate::base::tls::Pem,
    pub cert: crate::base::tls::Pem,
    pub key: crate::base::tls::Pem,
}

impl TlsOptions {
    /// The rustls configuration for the endpoints (reqwest has no crypto provider of its own,
    /// so it gets one even when every endpoint is `http://`).
    fn config(&self, endpoints: &[String]) -> Result<rustls::ClientConfig> {
        if let Some(inline) = &self.inline {
            let config =
                crate::base::tls::caller_config_pem(&inline.ca, Some((&inline.cert, &inline.key)), &[b"http/1.1"]);
            return config.map_err(|e| ClientError::Setup(format!("TLS: {e}")));
        }
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => return Err(ClientError::Setup("--cert and --key go together".into())),
        };
        let config = if !endpoints.iter().any(|e| e.starts_with("https://")) {
            crate::base::tls::trusting_no_server()
        } else {
            let Some(ca) = &self.cacert else {
                return Err(ClientError::Setup(
                    "https:// endpoints need --cacert, the CA file the members' certificates chain to".into(),
                ));
            };
            crate::base::tls::caller_config(ca, identity, &[b"http/1.1"])
        };
        config.map_err(|e| ClientError::Setup(format!("TLS: {e}")))
    }
}

impl ClientConfig {
    /// A config whose overall deadline leaves room for a few failovers of that request timeout.
    pub fn with_request_timeout(request_timeout: Duration) -> Self {
        ClientConfig {
            request_timeout,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT.min(request_timeout),
            deadline: request_timeout.saturating_mul(3),
            resolve: Vec::new(),
            tls: TlsOptions::default(),
            user: None,
            headers: Vec::new(),
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig::with_request_timeout(DEFAULT_REQUEST_TIMEOUT)
    }
}

/// A client of one cluster, given any subset of its members' client URLs. Cheap to clone; clones
/// share the remembered endpoint.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    endpoints: Arc<[String]>,
    /// Index in `endpoints` of the endpoint that answered last.
    preferred: Arc<AtomicUsize>,
    config: ClientConfig,
    /// The token of `config.user`, shared by clones.
    token: Arc<std::sync::Mutex<Token>>,
}

/// The body of a request.
#[derive(Clone, Debug)]
enum Body {
    Empty,
    Bytes(Bytes),
    Json(Bytes),
}

/// One API call, before an endpoint is chosen.
#[derive(Clone, Debug)]
struct Call {
    method: Method,
    /// Path and query, already encoded, starting with '/'.
    path: String,
    body: Body,
    /// A POST that changes nothing (`/v1/range`): as safe to send again as a GET.
    read_only: bool,
}

impl Call {
    fn new(method: Method, path: String) -> Self {
        Call { method, path, body: Body::Empty, read_only: false }
    }

    fn json<T: serde::Serialize>(mut self, value: &T) -> Result<Self> {
        let bytes = serde_json::to_vec(value).map_err(|err| ClientError::Setup(format!("encode request: {err}")))?;
        self.body = Body::Json(Bytes::from(bytes));
        Ok(self)
    }

    /// Reads change nothing, so a read whose answer was lost can be sent again elsewhere;
    /// a write whose answer was lost cannot (it may have applied).
    fn is_read(&self) -> bool {
        self.read_only || self.method == Method::GET || self.method == Method::HEAD
    }
}

/// A complete HTTP answer from one endpoint.
#[derive(Debug)]
struct Reply {
    endpoint: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    /// The answer as a `ClientError::Api`, from its JSON error body if it has one.
    fn api_error(&self) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(body) => {
                let mut message = body.error.message;
                if let Some(revision) = body.error.compact_revision {
                    message.push_str(&format!(" (compacted at revision {revision})"));
                }
                ClientError::Api { status: self.status.as_u16(), code: body.error.code, message }
            }
            Err(_) => {
                let text = String::from_utf8_lossy(&self.body);
                let text = text.trim();
                let message = if text.is_empty() {
                    self.status.canonical_reason().unwrap_or("no message").to_string()
                } else {
                    truncate(text, MAX_ERROR_TEXT)
                };
                ClientError::Api {
                    status: self.status.as_u16(),
                    code: format!("http_{}", self.status.as_u16()),
                    message,
                }
            }
        }
    }

    /// A 401 for a token the member does not know.
    fn invalid_token(&self) -> bool {
        serde_json::from_slice::<ErrorBody>(&self.body)
            .is_ok_and(|b| b.error.message == "etcdserver: invalid auth token")
    }

    fn ok_or_api_error(self) -> Result<Reply> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(self.api_error())
        }
    }

    fn json<T: DeserializeOwned>(self) -> Result<T> {
        let reply = self.ok_or_api_error()?;
        serde_json::from_slice(&reply.body)
            .map_err(|err| ClientError::Decode { endpoint: reply.endpoint.clone(), message: err.to_string() })
    }

    /// Retry-After in seconds (the only form the API sends).
    /// The leader's client URL, when a follower forwarded this request to it.
    fn leader_hint(&self) -> Option<String> {
        let value = self.headers.get(crate::base::wire::HEADER_LEADER)?.to_str().ok()?;
        normalize_endpoint(value).ok()
    }

    fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get(RETRY_AFTER)?.to_str().ok()?;
        value.trim().parse::<u64>().ok().map(Duration::from_secs)
    }

    fn header_u64(&self, name: &str) -> Result<Option<u64>> {
        let Some(value) = self.headers.get(name) else {
            return Ok(None);
        };
        value.to_str().ok().and_then(|text| text.trim().parse::<u64>().ok()).map(Some).ok_or_else(|| {
            ClientError::Decode { endpoint: self.endpoint.clone(), message: format!("header {name} is not a number") }
        })
    }
}

/// How one attempt on one endpoint failed.
enum AttemptError {
    /// Nothing reached the server (or it said 503): another endpoint may be tried.
    Retryable(String),
    /// The request may have reached the server and no answer came.
    Lost(String),
}

impl Client {
    /// A client with the default timeouts. Endpoints are `http://host:port` URLs.
    pub fn new(endpoints: Vec<String>) -> Result<Client> {
        Client::with_config(endpoints, ClientConfig::default())
    }

    pub fn with_config(endpoints: Vec<String>, config: ClientConfig) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(ClientError::InvalidEndpoint {
                endpoint: String::new(),
                reason: "no endpoints given".to_string(),
            });
        }
        let mut normalized: Vec<String> = Vec::with_capacity(endpoints.len());
        for endpoint in &endpoints {
            let endpoint = normalize_endpoint(endpoint)?;
            if !normalized.contains(&endpoint) {
                normalized.push(endpoint);
            }
        }
        let http = http_client(&normalized, &config)?;
        Ok(Client {
            http,
            endpoints: normalized.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            config,
            token: Arc::default(),
        })
    }

    /// This client, sending `headers` with every request too.
    pub fn with_headers(&self, headers: Vec<(String, String)>) -> Client {
        let mut client = self.clone();
        client.config.headers = headers;
        client
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Writes `value` at `key`. With `prev_revision`, only if the key's mod revision is that
    /// (0: only if the key does not exist); otherwise a 412 `compare_failed`.
    pub async fn put(&self, key: &str, value: Bytes, prev_revision: Option<u64>) -> Result<PutResponse> {
        let mut path = key_path(key)?;
        if let Some(revision) = prev_revision {
            path.push_str(&format!("?prevRevision={revision}"));
        }
        let mut call = Call::new(Method::PUT, path);
        call.body = Body::Bytes(value);
        self.execute(&call).await?.json()
    }

    /// Reads `key`; `None` when it does not exist.
    pub async fn get(&self, key: &str, consistency: Consistency) -> Result<Option<GetResponse>> {
        self.get_at(key, None, consistency).await
    }

    /// Reads `key` as it was at `revision` (`None`: now); `None` when it did not exist then. A
    /// compacted or future revision is an error (`compacted`, `future_revision`).
    pub async fn get_at(
        &self,
        key: &str,
        revision: Option<i64>,
        consistency: Consistency,
    ) -> Result<Option<GetResponse>> {
        let mut path = format!("{}?consistency={}", key_path(key)?, consistency.as_str());
        if let Some(revision) = revision {
            path.push_str(&format!("&rev={revision}"));
        }
        let reply = self.execute(&Call::new(Method::GET, path)).await?;
        if reply.status == StatusCode::NOT_FOUND {
            // A 404 with another code (an unknown route: not a kuberaft server?) is an error.
            return match reply.api_error() {
                ClientError::Api { code, .. } if code == "not_found" || code == "http_404" => Ok(None),
                other => Err(other),
            };
        }
        let reply = reply.ok_or_api_error()?;
        let mod_revision = reply.header_u64(HEADER_MOD_REVISION)?.ok_or_else(|| ClientError::Decode {
            endpoint: reply.endpoint.clone(),
            message: format!("header {HEADER_MOD_REVISION} missing"),
        })?;
        let create_revision = reply.header_u64(HEADER_CREATE_REVISION)?;
        let revision = reply.header_u64(HEADER_REVISION)?;
        Ok(Some(GetResponse { value: reply.body, mod_revision, create_revision, revision }))
    }

    /// Deletes `key` (with `prev_revision`: only at that mod revision).
    pub async fn delete(&self, key: &str, prev_revision: Option<u64>) -> Result<DeleteResponse> {
        let mut path = key_path(key)?;
        if let Some(revision) = prev_revision {
            path.push_str(&format!("?prevRevision={revision}"));
        }
        self.execute(&Call::new(Method::DELETE, path)).await?.json()
    }

    /// Keys starting with `prefix`, in key order, at most `limit` (the server caps it, and ends a
    /// page early once its values reach a few MiB: `more` then says keys follow).
    pub async fn list(&self, prefix: &str, limit: Option<usize>) -> Result<ListResponse> {
        self.list_page(prefix, limit, None).await
    }

    /// Like `list`, continuing after `start_after` (the last key of the previous page).
    pub async fn list_page(
        &self,
        prefix: &str,
        limit: Option<usize>,
        start_after: Option<&str>,
    ) -> Result<ListResponse> {
        let options = ListOptions {
            prefix: prefix.to_string(),
            limit,
            start_after: start_after.map(str::to_string),
            ..ListOptions::default()
        };
        self.list_with(&options).await
    }

    /// A list with every option of `GET /v1/kv`.
    pub async fn list_with(&self, options: &ListOptions) -> Result<ListResponse> {
        let mut path = format!("/v1/kv?prefix={}", encode_component(&options.prefix));
        if let Some(limit) = options.limit {
            path.push_str(&format!("&limit={limit}"));
        }
        if let Some(after) = &options.start_after {
            path.push_str(&format!("&startAfter={}", encode_component(after)));
        }
        if options.from_key {
            path.push_str("&fromKey=true");
        }
        if options.keys_only {
            path.push_str("&keysOnly=true");
        }
        if let Some(sort) = options.sort_by {
            path.push_str(&format!("&sortBy={}", sort.as_str()));
        }
        if options.descending {
            path.push_str("&sortOrder=descend");
        }
        if let Some(revision) = options.revision {
            path.push_str(&format!("&rev={revision}"));
        }
        if options.consistency != Consistency::Linearizable {
            path.push_str(&format!("&consistency={}", options.consistency.as_str()));
        }
        self.execute(&Call::new(Method::GET, path)).await?.json()
    }

    /// etcd's Range (`POST /v1/range`). `request.serializable` or `consistency` serializable:
    /// answered by the member asked.
    pub async fn range(&self, request: &RangeRequest, consistency: Consistency) -> Result<RangeResponse> {
        let path = format!("/v1/range?consistency={}", consistency.as_str());
        let mut call = Call::new(Method::POST, path).json(request)?;
        call.read_only = true;
        self.execute(&call).await?.json()
    }

    /// etcd's Txn (`POST /v1/txn`): compares, then the success or the failure ops, as one
    /// revision. Compares that do not hold are an answer (`succeeded: false`), not an error.
    pub async fn txn(&self, request: &TxnRequest) -> Result<TxnResponse> {
        let call = Call::new(Method::POST, "/v1/txn".to_string()).json(request)?;
        self.execute(&call).await?.json()
    }

    /// etcd's LeaseGrant: `id` 0 lets the cluster pick one.
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<lease::LeaseGrantResponse> {
        let call =
            Call::new(Method::POST, "/v1/lease/grant".to_string()).json(&lease::LeaseGrantRequest { ttl, id })?;
        self.execute(&call).await?.json()
    }

    /// etcd's LeaseRevoke: the lease and every key attached to it go.
    pub async fn lease_revoke(&self, id: i64) -> Result<lease::LeaseRevokeResponse> {
        let call = Call::new(Method::POST, "/v1/lease/revoke".to_string()).json(&lease::LeaseIdRequest { id })?;
        self.execute(&call).await?.json()
    }

    /// One keep-alive: the TTL the lease has again (0: no such lease).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<lease::LeaseKeepAliveResponse> {
        let call = Call::new(Method::POST, "/v1/lease/keepalive".to_string()).json(&lease::LeaseIdRequest { id })?;
        self.execute(&call).await?.json()
    }

    /// etcd's LeaseTimeToLive (TTL -1: no such lease).
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<lease::LeaseTimeToLiveResponse> {
        let request = lease::LeaseTimeToLiveRequest { id, keys };
        let mut call = Call::new(Method::POST, "/v1/lease/timetolive".to_string()).json(&request)?;
        call.read_only = true;
        self.execute(&call).await?.json()
    }

    /// etcd's LeaseLeases.
    pub async fn leases(&self) -> Result<lease::LeaseLeasesResponse> {
        let mut call = Call::new(Method::POST, "/v1/lease/leases".to_string()).json(&serde_json::json!({}))?;
        call.read_only = true;
        self.execute(&call).await?.json()
    }

    /// etcd's Compact (`POST /v1/compact`): reads below `revision` fail from then on. With
    /// `physical`, the answer also waits until the member that applied it reclaimed the space
    /// (etcd's `--physical`).
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<CompactionResponse> {
        let request = CompactionRequest { revision, physical };
        let call = Call::new(Method::POST, "/v1/compact".to_string()).json(&request)?;
        self.execute(&call).await?.json()
    }

    pub async fn members(&self) -> Result<MembersResponse> {
        self.execute(&Call::new(Method::GET, "/v1/members".to_string())).await?.json()
    }

    pub async fn add_member(&self, request: &AddMemberRequest) -> Result<AddMemberResponse> {
        let call = Call::new(Method::POST, "/v1/members".to_string()).json(request)?;
        self.execute(&call).await?.json()
    }

    /// Turns auth on (etcd's AuthEnable): user root must exist and hold the root role.
    pub async fn auth_enable(&self) -> Result<()> {
        self.auth_change::<()>("enable", None).await
    }

    /// Turns auth off (root only).
    pub async fn auth_disable(&self) -> Result<()> {
        self.auth_change::<()>("disable", None).await
    }

    pub async fn user_add(&self, request: &UserAddRequest) -> Result<()> {
        self.auth_change("user/add", Some(request)).await
    }

    pub async fn user_change_password(&self, request: &UserPasswordRequest) -> Result<()> {
        self.auth_change("user/changepw", Some(request)).await
    }

    pub async fn user_grant_role(&self, request: &UserGrantRoleRequest) -> Result<()> {
        self.auth_change("user/grant", Some(request)).await
    }

    /// `POST /v1/auth/<path>` with `request` as its body (or none).
    async fn auth_change<T: serde::Serialize>(&self, path: &str, request: Option<&T>) -> Result<()> {
        let mut call = Call::new(Method::POST, format!("/v1/auth/{path}"));
        if let Some(request) = request {
            call = call.json(request)?;
        }
        self.execute(&call).await?.ok_or_api_error().map(drop)
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, id: u64) -> Result<()> {
        let call = Call::new(Method::POST, format!("/v1/members/{}/promote", format_id(id)));
        self.execute(&call).await?.ok_or_api_error().map(drop)
    }

    pub async fn remove_member(&self, id: u64) -> Result<()> {
        let call = Call::new(Method::DELETE, format!("/v1/members/{}", format_id(id)));
        self.execute(&call).await?.ok_or_api_error().map(drop)
    }

    /// Moves leadership to `to`, or (None) to the most caught-up voter.
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<TransferResponse> {
        // Always a JSON body ({"to": null} for "anyone"), so the server needs one extractor.
        let request = TransferRequest { to: to.map(format_id) };
        let call = Call::new(Method::POST, "/v1/leader/transfer".to_string()).json(&request)?;
        self.execute(&call).await?.json()
    }

    /// The status of one member, asked directly: no failover (a status is about that member).
    pub async fn status_of(&self, endpoint: &str) -> Result<Status> {
        let endpoint = normalize_endpoint(endpoint)?;
        let call = Call::new(Method::GET, "/v1/status".to_string());
        match self.attempt(&endpoint, &call, None, self.config.request_timeout).await {
            Ok(reply) => reply.json(),
            Err(AttemptError::Retryable(reason) | AttemptError::Lost(reason)) => {
                Err(ClientError::Unavailable { attempts: vec![format!("{endpoint}: {reason}")] })
            }
        }
    }

    /// The `/metrics` text of one member, asked directly (as `status_of`).
    pub async fn metrics_of(&self, endpoint: &str) -> Result<String> {
        let endpoint = normalize_endpoint(endpoint)?;
        let call = Call::new(Method::GET, "/metrics".to_string());
        match self.attempt(&endpoint, &call, None, self.config.request_timeout).await {
            Ok(reply) => Ok(String::from_utf8_lossy(&reply.ok_or_api_error()?.body).into_owned()),
            Err(AttemptError::Retryable(reason) | AttemptError::Lost(reason)) => {
                Err(ClientError::Unavailable { attempts: vec![format!("{endpoint}: {reason}")] })
            }
        }
    }

    /// The status of every endpoint, in the order given, asked concurrently.
    pub async fn statuses(&self) -> Vec<(String, Result<Status>)> {
        let asks =
            self.endpoints.iter().map(|endpoint| async move { (endpoint.clone(), self.status_of(endpoint).await) });
        futures::future::join_all(asks).await
    }

    /// The token to send (authenticating first if the credentials have none yet).
    pub(crate) async fn token(&self) -> Result<Option<String>> {
        let Some(user) = &self.config.user else { return Ok(None) };
        let known = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match known {
            Token::Some(token) => return Ok(Some(token)),
            Token::None => return Ok(None),
            Token::Unknown => {}
        }
        let request = AuthenticateRequest { name: user.name.clone(), password: user.password.clone() };
        let call =
            Call { read_only: true, ..Call::new(Method::POST, "/v1/auth/authenticate".to_string()) }.json(&request)?;
        let reply = self.execute_with(&call, None).await?;
        let token = if reply.status == StatusCode::PRECONDITION_FAILED
            && reply.api_error().to_string().contains("authentication is not enabled")
        {
            Token::None
        } else {
            Token::Some(reply.json::<AuthenticateResponse>()?.token)
        };
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = token.clone();
        Ok(match token {
            Token::Some(token) => Some(token),
            _ => None,
        })
    }

    /// Sends `call` as `execute_with`, with the credentials' token; a token the cluster no
    /// longer knows (a member restarted, it expired) is traded again once.
    async fn execute(&self, call: &Call) -> Result<Reply> {
        let token = self.token().await?;
        let reply = self.execute_with(call, token.as_deref()).await?;
        if token.is_some() && reply.status == StatusCode::UNAUTHORIZED && reply.invalid_token() {
            *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Token::Unknown;
            let token = self.token().await?;
            return self.execute_with(call, token.as_deref()).await;
        }
        Ok(reply)
    }

    /// Sends `call` with failover and returns the first answer that is not a 503. The caller
    /// turns error statuses into errors (a 404 is an answer for `get`).
    async fn execute_with(&self, call: &Call, token: Option<&str>) -> Result<Reply> {
        let started = Instant::now();
        let deadline = started + self.config.deadline;
        let count = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % count;
        let mut attempts: Vec<String> = Vec::new();
        for pass in 0..MAX_PASSES {
            let mut pause = PASS_BACKOFF;
            for offset in 0..count {
                let index = (first + offset) % count;
                let endpoint = &self.endpoints[index];
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    attempts.push(format!("deadline of {} ms passed", self.config.deadline.as_millis()));
                    return Err(ClientError::Unavailable { attempts });
                }
                let timeout = self.config.request_timeout.min(remaining);
                match self.attempt(endpoint, call, token, timeout).await {
                    Ok(reply) if reply.status == StatusCode::SERVICE_UNAVAILABLE => {
                        if let Some(retry_after) = reply.retry_after() {
                            pause = retry_after;
                        }
                        attempts.push(format!("{endpoint}: {}", reply.api_error()));
                    }
                    Ok(reply) => {
                        // A follower forwarded it: go to the leader directly next time.
                        let leader = reply.leader_hint().and_then(|url| self.endpoints.iter().position(|e| *e == url));
                        self.preferred.store(leader.unwrap_or(index), Ordering::Relaxed);
                        return Ok(reply);
                    }
                    Err(AttemptError::Retryable(reason)) => attempts.push(format!("{endpoint}: {reason}")),
                    Err(AttemptError::Lost(reason)) => {
                        if !call.is_read() {
                            return Err(ClientError::OutcomeUnknown { endpoint: endpoint.clone(), reason });
                        }
                        attempts.push(format!("{endpoint}: {reason}"));
                    }
                }
            }
            if pass + 1 < MAX_PASSES {
                let remaining = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(pause.min(MAX_PASS_BACKOFF).min(remaining)).await;
            }
        }
        Err(ClientError::Unavailable { attempts })
    }

    /// One exchange with one endpoint, body read in full.
    async fn attempt(
        &self,
        endpoint: &str,
        call: &Call,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Reply, AttemptError> {
        let url = format!("{endpoint}{}", call.path);
        let mut request = self.http.request(call.method.clone(), url).timeout(timeout);
        if let Some(token) = token {
            request = request.header(reqwest::header::AUTHORIZATION, token);
        }
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        request = match &call.body {
            Body::Empty => request,
            Body::Bytes(bytes) => request.header(CONTENT_TYPE, "application/octet-stream").body(bytes.clone()),
            Body::Json(bytes) => request.header(CONTENT_TYPE, "application/json").body(bytes.clone()),
        };
        let response = request.send().await.map_err(|err| classify(&err, timeout))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|err| classify(&err, timeout))?;
        Ok(Reply { endpoint: endpoint.to_string(), status, headers, body })
    }
}

/// A connect failure never reached the server; anything else might have.
fn classify(err: &reqwest::Error, timeout: Duration) -> AttemptError {
    if err.is_connect() {
        AttemptError::Retryable(format!("cannot connect: {}", error_chain(err)))
    } else if err.is_timeout() {
        AttemptError::Lost(format!("no answer within {} ms", timeout.as_millis()))
    } else {
        AttemptError::Lost(error_chain(err))
    }
}

/// The innermost cause of an error ("Connection refused (os error 111)"), which says more than
/// reqwest's "error sending request for url".
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost: &dyn std::error::Error = err;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

/// `/v1/kv/{key}` with the key as one percent-encoded segment.
fn key_path(key: &str) -> Result<String> {
    // Empty, "." and ".." cannot be one path segment: URL parsing removes or resolves them,
    // even when percent-encoded.
    if key.is_empty() || key == "." || key == ".." {
        return Err(ClientError::InvalidKey(format!("'{key}' cannot be a key")));
    }
    Ok(format!("/v1/kv/{}", encode_component(key)))
}

/// The HTTP client under a [`Client`] of `endpoints` (normalized): `config`'s TLS, name table and
/// connect timeout, no proxy. `kuberaft bench` drives etcd's JSON gateway with it too.
pub fn http_client(endpoints: &[String], config: &ClientConfig) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().tls_backend_preconfigured(config.tls.config(endpoints)?);
    for (host, addr) in &config.resolve {
        builder = builder.resolve(host, *addr);
    }
    builder
        .connect_timeout(config.connect_timeout.min(config.request_timeout))
        // Endpoints are members' own addresses; a proxy would turn a dead member into a 502
        // and hide the connection failure that failover relies on.
        .no_proxy()
        .build()
        .map_err(|err| ClientError::Setup(error_chain(&err)))
}

/// Checks an endpoint URL and returns it without a trailing slash.
pub fn normalize_endpoint(endpoint: &str) -> Result<String> {
    let invalid =
        |reason: &str| ClientError::InvalidEndpoint { endpoint: endpoint.to_string(), reason: reason.to_string() };
    let trimmed = endpoint.trim();
    let url = reqwest::Url::parse(trimmed).map_err(|err| invalid(&format!("{err} (expected http://host:port)")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid("only http:// and https:// endpoints are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("an endpoint is scheme://host:port, without a path or query"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in endpoint URLs are not supported"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// The attempts, each distinct failure once, in order: a second pass that failed the same way
/// adds a count instead of a repetition.
fn summarize_attempts(attempts: &[String]) -> String {
    let mut distinct: Vec<(&str, usize)> = Vec::new();
    for attempt in attempts {
        match distinct.iter_mut().find(|(seen, _)| *seen == attempt.as_str()) {
            Some((_, count)) => *count += 1,
            None => distinct.push((attempt, 1)),
        }
    }
    let parts: Vec<String> = distinct
        .into_iter()
        .map(|(attempt, count)| if count > 1 { format!("{attempt} ({count} times)") } else { attempt.to_string() })
        .collect();
    parts.join("; ")
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

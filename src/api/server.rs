//! The client API on the client port (axum). Handlers are thin: validate, call the node, map
//! the outcome. Any member accepts any request: writes, linearizable reads and membership
//! changes are forwarded to the leader (once; a forwarded request is never forwarded again),
//! serializable reads are answered locally. Errors are JSON and decided in `ApiError`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::base::ids::validate_url;
use crate::base::wire::*;
use crate::http::client::{self, Dial, HttpClient};
use crate::http::serve::{self, BodyError, BodyLimits, PortStats};
use crate::node::{NodeError, NodeHandle, FSYNC_BUCKETS};
use crate::store::command::ApplyResult;

use super::auth::AuthSettings;
use super::kv;
use crate::store::auth::{AuthError, AuthErrorClass};

/// An API failure; the status code is decided here and nowhere else.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// With code `compacted`: the store's compact revision.
    pub compact_revision: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), compact_revision: None }
    }
    pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn no_leader() -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", "no leader is known; retry shortly")
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        match e {
            NodeError::NotLeader { .. } => ApiError::no_leader(),
            NodeError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            NodeError::OutcomeUnknown(m) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", m),
            NodeError::BadRequest(m) => ApiError::bad_request(m),
            NodeError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            NodeError::Mvcc(e) => ApiError::new(StatusCode::BAD_REQUEST, kv::mvcc_code(e), e.to_string()),
            NodeError::Auth(e) => auth_error(e),
        }
    }
}

/// An auth refusal as the JSON API answers it: 401 for credentials that do not work, 403 for
/// a caller who may not, 400 or 412 for the rest (as etcd's gateway maps etcd's codes), with
/// etcd's message.
fn auth_error(e: AuthError) -> ApiError {
    let (status, code) = match e.class() {
        AuthErrorClass::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        AuthErrorClass::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        AuthErrorClass::InvalidArgument if e == AuthError::Failed => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        AuthErrorClass::InvalidArgument if e == AuthError::UserEmpty => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        AuthErrorClass::InvalidArgument => (StatusCode::BAD_REQUEST, "bad_request"),
        AuthErrorClass::FailedPrecondition => (StatusCode::PRECONDITION_FAILED, "failed_precondition"),
        AuthErrorClass::Unknown => (StatusCode::UNAUTHORIZED, "unauthenticated"),
    };
    ApiError::new(status, code, e.to_string())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error =
            ErrorDetail { compact_revision: self.compact_revision, ..ErrorDetail::new(self.code, self.message) };
        let body = ErrorBody { error };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            set_retry_after(&mut response);
        }
        response
    }
}

/// Every 503 tells the client when to retry.
fn set_retry_after(response: &mut Response) {
    response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
}

pub(super) type ApiResult<T> = Result<T, ApiError>;

/// The client port's answer when its connection and request limits stop a request (`serve`).
pub fn render_error(status: StatusCode, code: &'static str, message: String) -> Response {
    ApiError::new(status, code, message).into_response()
}

#[derive(Clone)]
pub struct Api {
    pub node: NodeHandle,
    /// The member's watches (`node::watch`).
    pub watch: std::sync::Arc<crate::node::watch::WatchHub>,
    /// Forwards to the leader (`http::client::Dial::leader`).
    pub http: HttpClient,
    /// How the gRPC API dials the leader to forward (`api::grpc`).
    pub leader_dial: Dial,
    /// How the member's lock and election services reach its own client port
    /// (`api::grpc::recipes`): with its client TLS files, when the port speaks TLS.
    pub own_tls: Option<crate::base::tls::TlsFiles>,
    /// How callers are authenticated (`api::auth`).
    pub auth: AuthSettings,
    /// The live view's rate samples (`api::ui`).
    pub ui: std::sync::Arc<super::ui::Samples>,
}

/// The client port: etcd's gRPC API for requests with `content-type: application/grpc`
/// (`api::grpc`), the JSON API for the rest.
pub fn client_router(api: Api) -> Router {
    super::ui::start_sampler(&api);
    let grpc = super::grpc::router(api.clone());
    let json = json_router(api.clone());
    Router::new()
        .fallback_service(tower::service_fn(move |request: Request| {
            let target = if is_grpc(request.headers()) { grpc.clone() } else { json.clone() };
            tower::ServiceExt::oneshot(target, request)
        }))
        .layer(axum::middleware::from_fn_with_state(api, super::auth::resolve_caller))
}

/// gRPC's content types: `application/grpc`, `application/grpc+proto`, ...
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "application/grpc" || v.starts_with("application/grpc+"))
}

/// What a probe or a scrape reads, on the client port and on `--listen-metrics-urls`.
fn probe_routes() -> Router<Api> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A `--listen-metrics-urls` listener's routes: the probes and metrics only, in plain HTTP
/// (a kubelet's probe or Prometheus need no client certificate for them).
pub fn metrics_router(api: Api) -> Router {
    probe_routes().fallback(not_found).with_state(api)
}

fn json_router(api: Api) -> Router {
    let max_value_bytes = api.node.shared.max_value_bytes;
    let body_limits = WholeBodyLimits {
        txn: max_txn_request_bytes(max_value_bytes),
        other: max_value_bytes.max(MAX_MEMBER_REQUEST_BYTES),
    };
    Router::new()
        .route("/v1/kv", get(kv::list))
        .route("/v1/kv/{key}", get(kv::get_key).put(put_key).delete(delete_key))
        .route("/v1/range", post(kv::range))
        .route("/v1/txn", post(kv::txn))
        .route("/v1/compact", post(kv::compact))
        .route("/v1/watch", post(super::watch::watch))
        .route("/v1/lease/grant", post(super::lease::grant))
        .route("/v1/lease/revoke", post(super::lease::revoke))
        .route("/v1/lease/keepalive", post(super::lease::keep_alive))
        .route("/v1/lease/timetolive", post(super::lease::time_to_live))
        .route("/v1/lease/leases", post(super::lease::leases))
        .route("/v1/status", get(status))
        .route("/v1/snapshot", get(super::snapshot::save))
        .route("/v1/members", get(members).post(add_member))
        .route("/v1/members/{id}", axum::routing::delete(remove_member))
        .route("/v1/members/{id}/promote", post(promote_member))
        .route("/v1/leader/transfer", post(transfer_leader))
        .route("/v1/auth/authenticate", post(super::users::authenticate))
        .route("/v1/auth/enable", post(super::users::enable))
        .route("/v1/auth/disable", post(super::users::disable))
        .route("/v1/auth/user/add", post(super::users::user_add))
        .route("/v1/auth/user/changepw", post(super::users::user_change_password))
        .route("/v1/auth/user/grant", post(super::users::user_grant_role))
        .merge(probe_routes())
        .merge(super::ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint")
        })
        // Bodies are read with an explicit limit (per route in the handlers), to answer with JSON.
        .layer(axum::middleware::from_fn_with_state(body_limits, read_whole_body))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(api)
}

/// The most `read_whole_body` reads: `txn` for `/v1/txn`, `other` (the largest any other route
/// accepts) for the rest.
#[derive(Clone, Copy)]
struct WholeBodyLimits {
    txn: usize,
    other: usize,
}

/// Reads every request body to its end (up to the largest its route accepts) before routing.
/// A body the route ignores (a GET with a body) would otherwise still be unread when the answer
/// is sent: hyper then closes the connection with data unread, the kernel resets it, and an
/// answer larger than the socket buffers is cut off on its way to the client. A body that
/// declares more than that is refused before a byte of it is read.
async fn read_whole_body(State(limits): State<WholeBodyLimits>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if matches!(parts.uri.path(), "/v1/watch" | "/v1/lease/keepalive") {
        // A stream of requests, read as they arrive (`api::watch`, `api::lease`), each one
        // bounded.
        return next.run(Request::from_parts(parts, body)).await;
    }
    let limit = if parts.uri.path() == "/v1/txn" { limits.txn } else { limits.other };
    match read_body(&parts.headers, body, limit).await {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(e) => e.into_response(),
    }
}

// ----- helpers -----

type PathParam = Result<Path<String>, axum::extract::rejection::PathRejection>;

/// The `{key}` or `{id}` of the path. axum answers a segment that does not percent-decode to
/// UTF-8 with a plain-text 400 of its own; taking the rejection here keeps it JSON.
pub(super) fn path_param(param: PathParam, code: &'static str) -> ApiResult<String> {
    param.map(|Path(text)| text).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, code, e.body_text()))
}

pub(super) fn validate_key(key: &str) -> ApiResult<()> {
    if key.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_key", "the key is empty"));
    }
    if key == "." || key == ".." {
        // URLs resolve these segments away (`/v1/kv/..` is `/v1/`), so a client library, or a
        // member forwarding to the leader, would send the request elsewhere.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            format!("'{key}' cannot be a key: URLs treat it as a relative path segment"),
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the key has {} bytes; the limit is {MAX_KEY_BYTES}", key.len()),
        ));
    }
    Ok(())
}

/// A body arrives with a chunk at least every 5 s and whole within 20 s (below the port's
/// request timeout, so that a slow body gets its own answer).
const BODY_STALL: Duration = Duration::from_secs(5);
const BODY_DEADLINE: Duration = Duration::from_secs(20);

/// Reads a body in chunks against `limit`: a declared length over it is refused before reading,
/// streamed bytes as soon as they pass it.
pub(super) async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    let limits = BodyLimits { limit, stall: BODY_STALL, deadline: BODY_DEADLINE };
    serve::read_body(headers, body, limits).await.map_err(|e| {
        let code = match e {
            BodyError::TooLarge { .. } => "too_large",
            BodyError::TooSlow(_) => "request_timeout",
            BodyError::Broken(_) => "bad_request",
        };
        ApiError::new(e.status(), code, e.to_string())
    })
}

fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(HEADER_FORWARDED)
}

/// Serves on the leader, forwards from anyone else.
pub(super) enum Route {
    Here,
    Forward(String),
}

pub(super) fn route(api: &Api, headers: &HeaderMap) -> ApiResult<Route> {
    if api.node.is_leader() {
        return Ok(Route::Here);
    }
    if forwarded(headers) {
        // A forwarded request that reached a non-leader: leadership moved; the client retries.
        return Err(ApiError::no_leader());
    }
    api.node.leader_client_url().map(Route::Forward).ok_or_else(ApiError::no_leader)
}

/// The leader answers a forwarded request within this time, or its outcome is unknown.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer a leader gives to a request that is forwarded to it, bounded so that a
/// peer's answer cannot make this member allocate without limit. The key-values of one answer
/// (a list page, a range, or all of a txn's range results and previous values; `api::kv`) are
/// the bulk: at most `MAX_LIST_LIMIT` keys of at most `MAX_KEY_BYTES`, each byte at most 6 in
/// JSON (a list escapes control characters); values up to `MAX_LIST_PAGE_BYTES` plus one value
/// over it, at most twice their size (base64, or text whose escapes are two bytes); a few
/// hundred bytes of revisions and names per key. A txn's answer adds, per op, a response at
/// most 6 times the JSON of the op (an empty nested txn, 17 bytes, answers in at most 92), so
/// 6 times its request's largest body. A single value is at most `max_value_bytes`.
fn leader_answer_limit(max_value_bytes: usize) -> usize {
    let keys = 6 * MAX_LIST_LIMIT * MAX_KEY_BYTES;
    let values = 2 * MAX_LIST_PAGE_BYTES.saturating_add(max_value_bytes);
    let ops = max_txn_request_bytes(max_value_bytes).saturating_mul(6);
    keys.saturating_add(values).saturating_add(ops).saturating_add(MAX_LIST_LIMIT * 256).saturating_add(64 << 10)
}

/// Forwards the request to the leader and relays its answer. `is_read`: the request changes
/// nothing, so a failure to reach the leader is safe to retry (503) whatever happened.
pub(super) async fn forward(
    api: &Api,
    leader_url: &str,
    method: Method,
    path_and_query: &str,
    body: Bytes,
    is_read: bool,
) -> Response {
    forward_as(api, &super::auth::current(), leader_url, method, path_and_query, body, is_read).await
}

/// `forward`, for `caller` (a stream's later requests, served outside the request's task).
pub(super) async fn forward_as(
    api: &Api,
    caller: &crate::store::auth::Caller,
    leader_url: &str,
    method: Method,
    path_and_query: &str,
    body: Bytes,
    is_read: bool,
) -> Response {
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(format!("{leader_url}{path_and_query}"))
        .header(HEADER_FORWARDED, "1");
    for (name, value) in super::auth::forwarded_caller(api, caller) {
        request = request.header(name, value);
    }
    let request = request.body(client::full(body));
    let limit = leader_answer_limit(api.node.shared.max_value_bytes);
    match api.http.call(request, FORWARD_TIMEOUT, limit).await {
        Ok(answer) => {
            let mut headers = HeaderMap::new();
            for (name, value) in &answer.headers {
                let n = name.as_str();
                if n == "content-type" || n == "retry-after" || n.starts_with("x-kuberaft-") {
                    headers.insert(name.clone(), value.clone());
                }
            }
            if let Ok(value) = HeaderValue::from_str(leader_url) {
                headers.insert(HEADER_LEADER, value);
            }
            (answer.status, headers, answer.body).into_response()
        }
        Err(e) if e.answered() => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", format!("the leader's answer was lost: {e}"))
                .into_response()
        }
        // A read, or a request that never reached the leader, had no effect: safe to retry.
        Err(e) if e.never_sent() || is_read => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("cannot reach the leader: {e}"))
                .into_response()
        }
        Err(e) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "outcome_unknown",
            format!("forwarding to the leader failed: {e}"),
        )
        .into_response(),
    }
}

pub(super) fn path_and_query(request: &Request) -> String {
    request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default()
}

fn write_outcome(result: ApplyResult) -> ApiResult<Response> {
    match result {
        ApplyResult::Put { revision } => Ok(Json(PutResponse { revision }).into_response()),
        ApplyResult::Deleted { revision, deleted } => Ok(Json(DeleteResponse { revision, deleted }).into_response()),
        ApplyResult::CompareFailed { current } => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "compare_failed",
            format!("the key's current mod revision is {current}"),
        )),
        // Only the peer port proposes joins; a key write never yields these.
        ApplyResult::Refused(e) => Err(ApiError::bad_request(e.to_string())),
        ApplyResult::AuthRefused(e) => Err(auth_error(e)),
        ApplyResult::Auth(_)
        | ApplyResult::Joined
        | ApplyResult::JoinRefused { .. }
        | ApplyResult::Txn(_)
        | ApplyResult::Compacted(_)
        | ApplyResult::LeaseGranted { .. }
        | ApplyResult::LeaseRevoked { .. }
        | ApplyResult::Checkpointed { .. }
        | ApplyResult::MemberUpdated { .. } => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "unexpected outcome of a write"))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WriteParams {
    prev_revision: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct ReadParams {
    #[serde(default)]
    pub consistency: Consistency,
}

pub(super) fn parse_query<T: for<'de> Deserialize<'de>>(
    query: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<T> {
    query.map(|Query(q)| q).map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))
}

// ----- key-value -----

type WriteQuery = Result<Query<WriteParams>, axum::extract::rejection::QueryRejection>;

/// The key of a write and its query, checked.
fn write_target(key: PathParam, query: WriteQuery) -> ApiResult<(String, WriteParams)> {
    let key = path_param(key, "invalid_key")?;
    validate_key(&key)?;
    Ok((key, parse_query(query)?))
}

async fn put_key(State(api): State<Api>, key: PathParam, query: WriteQuery, request: Request) -> ApiResult<Response> {
    let (key, params) = write_target(key, query)?;
    let pq = path_and_query(&request);
    let headers = request.headers().clone();
    let (parts, body) = request.into_parts();
    let value = read_body(&parts.headers, body, api.node.shared.max_value_bytes).await?;
    let write = Write::Put { key, value: value.clone(), prev_revision: params.prev_revision };
    propose_or_forward(&api, &headers, Method::PUT, &pq, value, write).await
}

async fn delete_key(
    State(api): State<Api>,
    key: PathParam,
    query: WriteQuery,
    request: Request,
) -> ApiResult<Response> {
    let (key, params) = write_target(key, query)?;
    let write = Write::Delete { key, prev_revision: params.prev_revision };
    propose_or_forward(&api, request.headers(), Method::DELETE, &path_and_query(&request), Bytes::new(), write).await
}

/// A key write, as the request asked it.
enum Write {
    Put { key: String, value: Bytes, prev_revision: Option<u64> },
    Delete { key: String, prev_revision: Option<u64> },
}

/// A write: proposed here on the leader; on a follower that `forwards`, proposed through the
/// leader (`NodeHandle::submit`), the answer naming the leader as a forwarded one does;
/// otherwise forwarded (with its body).
async fn propose_or_forward(
    api: &Api,
    headers: &HeaderMap,
    method: Method,
    path_and_query: &str,
    body: Bytes,
    write: Write,
) -> ApiResult<Response> {
    let route = if served_with_leader(api, headers) { Route::Here } else { route(api, headers)? };
    match route {
        Route::Forward(url) => Ok(forward(api, &url, method, path_and_query, body, false).await),
        Route::Here => {
            let caller = super::auth::current();
            let hint = api.node.leader_client_url().and_then(|url| HeaderValue::from_str(&url).ok());
            let mut answer = write_outcome(match write {
                Write::Put { key, value, prev_revision } => api.node.put(&caller, key, value, prev_revision).await?,
                Write::Delete { key, prev_revision } => api.node.delete(&caller, key, prev_revision).await?,
            })?;
            if let Some(leader) = hint {
                answer.headers_mut().insert(HEADER_LEADER, leader);
            }
            Ok(answer)
        }
    }
}

/// `NodeHandle::serves_with_leader` for a request.
fn served_with_leader(api: &Api, headers: &HeaderMap) -> bool {
    api.node.serves_with_leader(forwarded(headers))
}

/// Makes a read linearizable or returns where to forward it: the leader confirms its ReadIndex;
/// a follower that `forwards` applies the leader's read index and serves the read itself, as
/// etcd's followers do (`NodeHandle::read_point`).
pub(super) async fn read_point(api: &Api, consistency: Consistency, headers: &HeaderMap) -> ApiResult<Option<String>> {
    if consistency == Consistency::Serializable {
        api.node.serializable_point().await?;
        return Ok(None);
    }
    let route = if served_with_leader(api, headers) { Route::Here } else { route(api, headers)? };
    match route {
        Route::Forward(url) => Ok(Some(url)),
        Route::Here => {
            api.node.read_point().await?;
            Ok(None)
        }
    }
}

// ----- status and membership -----

/// The committed members, each with the client URL it is known by (its own advertised one for
/// this member; a record without one, from before members recorded it, by the peers' address
/// book), and whether it votes.
pub(super) fn members_with_client_urls(api: &Api) -> Vec<(crate::store::command::MemberInfo, bool)> {
    let shared = &api.node.shared;
    let mut members = api.node.with_kv(|kv| kv.members());
    for (info, _) in &mut members {
        if info.id == shared.id {
            info.client_url = shared.advertise_client_url.clone();
        } else if info.client_url.is_empty() {
            info.client_url = shared.address(info.id).map(|a| a.client_url).unwrap_or_default();
        }
    }
    members
}

fn member_list(api: &Api) -> Vec<Member> {
    members_with_client_urls(api)
        .into_iter()
        .map(|(info, voter)| Member {
            id: format_id(info.id),
            name: info.name,
            peer_url: info.peer_url,
            client_url: info.client_url,
            voter,
        })
        .collect()
}

pub fn build_status(api: &Api) -> Status {
    let shared = &api.node.shared;
    let s = shared.status();
    let leader_name = s
        .leader
        .and_then(|id| if id == shared.id { Some(shared.name.clone()) } else { shared.address(id).map(|a| a.name) })
        .unwrap_or_default();
    let (revision, membership_hash) = api.node.with_kv(|kv| (kv.revision(), kv.membership_hash()));
    Status {
        name: shared.name.clone(),
        id: format_id(shared.id),
        role: s.api_role(),
        term: s.term,
        leader: leader_name,
        leader_id: s.leader.map(format_id).unwrap_or_default(),
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        revision,
        members: member_list(api),
        membership_hash: format!("{membership_hash:016x}"),
        cluster_id: format_id(shared.cluster_id),
        errors: shared.errors(),
        auth_enabled: Some(super::auth::with_state(api, |auth| auth.enabled)),
        last_log_term: s.last_term,
        last_log_index: s.last_index,
    }
}

/// Membership and leadership changes are root's, while auth is on (etcd's
/// `checkMembershipOperationPermission`).
pub(super) fn require_admin(api: &Api) -> ApiResult<()> {
    let caller = super::auth::current();
    super::auth::with_state(api, |auth| auth.check_admin(caller.user())).map_err(auth_error)
}

async fn status(State(api): State<Api>) -> Json<Status> {
    Json(build_status(&api))
}

async fn members(State(api): State<Api>) -> Json<MembersResponse> {
    Json(MembersResponse { members: member_list(&api) })
}

async fn add_member(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    require_admin(&api)?;
    let pq = path_and_query(&request);
    let headers = request.headers().clone();
    let body = read_body(&headers, request.into_body(), MAX_MEMBER_REQUEST_BYTES).await?;
    let req: AddMemberRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad member request: {e}")))?;
    if req.name.trim().is_empty() {
        return Err(ApiError::bad_request("the member name is empty"));
    }
    validate_url(&req.peer_url).map_err(|e| ApiError::bad_request(format!("peerURL: {e}")))?;
    validate_url(&req.client_url).map_err(|e| ApiError::bad_request(format!("clientURL: {e}")))?;
    if let Route::Forward(url) = route(&api, &headers)? {
        return Ok(forward(&api, &url, Method::POST, &pq, body, false).await);
    }
    let existing = api.node.with_kv(|kv| kv.members());
    if let Some((m, _)) = existing.iter().find(|(m, _)| m.name == req.name || m.peer_url == req.peer_url) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_member",
            format!("member {} ({}) already has that name or peer URL", format_id(m.id), m.name),
        ));
    }
    let id = api.node.add_member(req.name, req.peer_url, req.client_url, req.learner).await?;
    Ok((StatusCode::CREATED, Json(AddMemberResponse { id: format_id(id) })).into_response())
}

fn member_id(text: &str) -> ApiResult<u64> {
    parse_id(text).ok_or_else(|| ApiError::bad_request(format!("'{text}' is not a member id (hex)")))
}

async fn promote_member(State(api): State<Api>, id: PathParam, request: Request) -> ApiResult<Response> {
    require_admin(&api)?;
    let id = member_id(&path_param(id, "bad_request")?)?;
    if let Route::Forward(url) = route(&api, request.headers())? {
        return Ok(forward(&api, &url, Method::POST, &path_and_query(&request), Bytes::new(), false).await);
    }
    match api.node.with_kv(|kv| kv.member(id)) {
        None => return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no member {}", format_id(id)))),
        Some((_, true)) => return Err(ApiError::bad_request(format!("member {} is already a voter", format_id(id)))),
        Some(_) => {}
    }
    // A learner votes only once it has (nearly) the log: promoting one far behind would stall
    // commits. Under steady writes the commit index keeps moving, so "caught up" means within
    // 10% of it (as etcd decides learner readiness), not equal to it.
    let status = api.node.shared.status();
    let matched = status.matched.get(&id).copied().unwrap_or(0);
    if !learner_caught_up(matched, status.commit_index) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "learner_not_ready",
            format!(
                "learner {} has {matched} of {} committed entries; retry when it caught up",
                format_id(id),
                status.commit_index
            ),
        ));
    }
    api.node.promote(id).await?;
    Ok(Json(serde_json::json!({ "id": format_id(id), "voter": true })).into_response())
}

async fn remove_member(State(api): State<Api>, id: PathParam, request: Request) -> ApiResult<Response> {
    require_admin(&api)?;
    let id = member_id(&path_param(id, "bad_request")?)?;
    if let Route::Forward(url) = route(&api, request.headers())? {
        return Ok(forward(&api, &url, Method::DELETE, &path_and_query(&request), Bytes::new(), false).await);
    }
    if api.node.with_kv(|kv| kv.member(id).is_none()) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no member {}", format_id(id))));
    }
    api.node.remove_member(id).await?;
    Ok(Json(serde_json::json!({ "id": format_id(id), "removed": true })).into_response())
}

async fn transfer_leader(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    require_admin(&api)?;
    let pq = path_and_query(&request);
    let headers = request.headers().clone();
    let body = read_body(&headers, request.into_body(), MAX_TRANSFER_REQUEST_BYTES).await?;
    let req: TransferRequest = if body.iter().all(|b| b.is_ascii_whitespace()) {
        TransferRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad transfer request: {e}")))?
    };
    let to = match &req.to {
        Some(text) => Some(member_id(text)?),
        None => None,
    };
    if let Route::Forward(url) = route(&api, &headers)? {
        return Ok(forward(&api, &url, Method::POST, &pq, body, false).await);
    }
    if let Some(id) = to {
        if api.node.with_kv(|kv| kv.member(id).is_none()) {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no member {}", format_id(id))));
        }
    }
    let leader = api.node.transfer_leader(to).await?;
    Ok(Json(TransferResponse { leader: format_id(leader) }).into_response())
}

// ----- health and metrics -----

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "health": "ok" }))
}

/// Ready: a leader is known, this member applied everything it knows committed, and nothing
/// (storage, a stopped state machine) keeps it from serving.
async fn readyz(State(api): State<Api>) -> Response {
    let shared = &api.node.shared;
    let s = shared.status();
    let errors = shared.errors();
    let mut reasons = Vec::new();
    if s.leader.is_none() {
        reasons.push("no leader".to_string());
    }
    if s.applied_index < s.commit_index {
        reasons.push(format!("applied {} of {} committed entries", s.applied_index, s.commit_index));
    }
    reasons.extend(errors.into_iter().filter(|e| !e.starts_with("peers")));
    if reasons.is_empty() {
        Json(serde_json::json!({ "ready": true })).into_response()
    } else {
        // A 503 like every other: the error shape and Retry-After, plus the list of reasons.
        let error = ErrorDetail::new("not_ready", reasons.join("; "));
        let body = serde_json::json!({ "ready": false, "reasons": reasons, "error": error });
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        set_retry_after(&mut response);
        response
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    let shared = &api.node.shared;
    let s = shared.status();
    let m = &shared.metrics;
    let counter = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let reclaiming = api.node.with_kv(|kv| kv.compaction_pending());
    let series: [(&str, &str, &str, u64); 19] = [
        ("kuberaft_term", "Current Raft term.", "gauge", s.term),
        ("kuberaft_is_leader", "1 when this member leads.", "gauge", s.is_leader() as u64),
        ("kuberaft_has_leader", "1 when a leader is known.", "gauge", s.leader.is_some() as u64),
        ("kuberaft_commit_index", "Highest log index known committed.", "gauge", s.commit_index),
        ("kuberaft_applied_index", "Highest log index applied.", "gauge", s.applied_index),
        ("kuberaft_leader_changes_total", "Leader changes seen.", "counter", counter(&m.leader_changes)),
        ("kuberaft_proposals_committed_total", "Proposals applied.", "counter", counter(&m.proposals_committed)),
        ("kuberaft_proposals_failed_total", "Proposals that failed.", "counter", counter(&m.proposals_failed)),
        (
            "kuberaft_peer_messages_dropped_total",
            "Peer messages dropped (queue full or peer unreachable).",
            "counter",
            counter(&m.peer_messages_dropped),
        ),
        (
            "kuberaft_peer_messages_rejected_total",
            "Peer messages rejected (other cluster, wrong recipient).",
            "counter",
            counter(&m.peer_messages_rejected),
        ),
        (
            "kuberaft_forwarded_proposals_total",
            "Writes this member, a follower, proposed through the leader.",
            "counter",
            counter(&m.forwarded_proposals),
        ),
        (
            "kuberaft_forwarded_proposal_batches_total",
            "Batches that carried those writes to the leader.",
            "counter",
            counter(&m.forwarded_proposal_batches),
        ),
        (
            "kuberaft_streamed_proposal_batches_total",
            "Of those batches, the ones sent on the peer stream (as etcd's MsgProp) rather than as requests.",
            "counter",
            counter(&m.streamed_proposal_batches),
        ),
        (
            "kuberaft_forwarded_reads_total",
            "Linearizable reads this member, a follower, served at a read index from the leader.",
            "counter",
            counter(&m.forwarded_reads),
        ),
        (
            "kuberaft_read_index_requests_total",
            "Read-index requests those reads shared.",
            "counter",
            counter(&m.read_index_requests),
        ),
        (
            "kuberaft_forwarded_lease_renewals_total",
            "Lease keep-alives this member, a follower, renewed through the leader.",
            "counter",
            counter(&m.forwarded_renewals),
        ),
        ("kuberaft_snapshots_sent_total", "Snapshots sent.", "counter", counter(&m.snapshots_sent)),
        ("kuberaft_snapshots_received_total", "Snapshots installed.", "counter", counter(&m.snapshots_received)),
        (
            "kuberaft_state_machine_compaction_pending",
            "1 while the space of compacted history is being reclaimed.",
            "gauge",
            reclaiming as u64,
        ),
    ];
    let w = &api.watch.metrics;
    let (feed_revisions, feed_bytes) = api.watch.feed_size();
    let watch_series: [(&str, &str, &str, u64); 7] = [
        ("kuberaft_watchers", "Watchers on this member.", "gauge", w.watchers.load(Ordering::Relaxed).max(0) as u64),
        ("kuberaft_watch_streams", "Watch streams open.", "gauge", w.streams.load(Ordering::Relaxed).max(0) as u64),
        ("kuberaft_watch_events_sent_total", "Events sent to watchers.", "counter", counter(&w.events_sent)),
        (
            "kuberaft_watch_slow_catch_ups_total",
            "Times a watcher behind the feed of recent revisions read from history (slow or started in the past).",
            "counter",
            counter(&w.history_reads),
        ),
        (
            "kuberaft_watch_compacted_total",
            "Watchers cancelled because the history they needed was compacted.",
            "counter",
            counter(&w.compacted),
        ),
        ("kuberaft_watch_feed_revisions", "Recent revisions held for watchers.", "gauge", feed_revisions as u64),
        ("kuberaft_watch_feed_bytes", "Bytes of recent events held for watchers.", "gauge", feed_bytes as u64),
    ];
    let leases = crate::node::shared::lock(&api.node.shared.lessor).len() as u64;
    let lease_series: [(&str, &str, &str, u64); 3] = [
        ("kuberaft_leases", "Leases in this member's state machine.", "gauge", leases),
        (
            "kuberaft_lease_expired_total",
            "Leases revoked because they expired (proposed by this member while it led).",
            "counter",
            counter(&m.leases_expired),
        ),
        (
            "kuberaft_lease_renewals_total",
            "Keep-alives renewed by this member while it led.",
            "counter",
            counter(&m.lease_renewals),
        ),
    ];
    let mut out = String::new();
    for (name, help, kind, value) in series.into_iter().chain(watch_series).chain(lease_series) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    }
    out.push_str("# HELP kuberaft_fsync_seconds Latency of persisting a Ready (write and fsync).\n");
    out.push_str("# TYPE kuberaft_fsync_seconds histogram\n");
    for (bucket, upper) in m.fsync_buckets.iter().zip(FSYNC_BUCKETS) {
        out.push_str(&format!("kuberaft_fsync_seconds_bucket{{le=\"{upper}\"}} {}\n", bucket.load(Ordering::Relaxed)));
    }
    let count = m.fsync_count.load(Ordering::Relaxed);
    out.push_str(&format!("kuberaft_fsync_seconds_bucket{{le=\"+Inf\"}} {count}\n"));
    out.push_str(&format!("kuberaft_fsync_seconds_sum {}\n", m.fsync_micros_sum.load(Ordering::Relaxed) as f64 / 1e6));
    out.push_str(&format!("kuberaft_fsync_seconds_count {count}\n"));
    out.push_str(&m.render_raft_loop());
    api.node.shared.latency.render(&mut out);
    let ports = [("client", &m.client_port), ("peer", &m.peer_port)];
    type Field = fn(&PortStats) -> &std::sync::atomic::AtomicU64;
    let connection_series: [(&str, &str, &str, Field); 6] = [
        ("kuberaft_connections_accepted_total", "Connections accepted.", "counter", |p| &p.accepted),
        ("kuberaft_connections_refused_total", "Connections closed at once: the port was full.", "counter", |p| {
            &p.refused
        }),
        ("kuberaft_connections_evicted_total", "Idle connections closed to make room.", "counter", |p| &p.evicted),
        ("kuberaft_connections_open", "Connections open now.", "gauge", |p| &p.open),
        ("kuberaft_requests_queued_total", "Requests that waited for a handler slot.", "counter", |p| &p.queued),
        ("kuberaft_requests_shed_total", "Requests answered 503: no handler slot in time.", "counter", |p| &p.shed),
    ];
    for (name, help, kind, field) in connection_series {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (port, stats) in ports {
            out.push_str(&format!("{name}{{port=\"{port}\"}} {}\n", field(stats).load(Ordering::Relaxed)));
        }
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::base64::encode_base64;
    use crate::base::wire::kv as wire;

    /// The largest list page a leader can answer (every key as long and as costly to escape as
    /// it can be, values up to the page's budget plus one more) fits in what a forwarding
    /// member reads of the leader's answer.
    #[test]
    fn the_largest_list_page_fits_in_a_forwarded_answer() {
        let max_value_bytes = DEFAULT_MAX_VALUE_BYTES;
        let key = |i: usize| {
            let mut key = format!("{i:05}");
            key.push_str(&"\u{1}".repeat(MAX_KEY_BYTES - key.len()));
            key
        };
        let item = |i: usize, value: &[u8]| KvItem {
            key: key(i),
            key_base64: None,
            value: encode_base64(value),
            create_revision: u64::MAX,
            mod_revision: u64::MAX,
            version: u64::MAX,
        };
        let big = vec![0xffu8; MAX_LIST_PAGE_BYTES + max_value_bytes];
        let mut kvs = vec![item(0, &big)];
        kvs.extend((1..MAX_LIST_LIMIT).map(|i| item(i, b"")));
        let page =
            serde_json::to_vec(&ListResponse { revision: u64::MAX, kvs, more: true, count: Some(u64::MAX) }).unwrap();
        let limit = leader_answer_limit(max_value_bytes);
        assert!(page.len() <= limit, "a page of {} bytes; the limit is {limit}", page.len());
        assert!(limit < 128 << 20, "the limit stays bounded: {limit}");
    }

    /// The same for the largest range answer (keys and values as text that is costliest to
    /// escape) and, together with it, for a txn's answer: its responses without key-values are
    /// at most 6 times the JSON of the ops that asked for them (the costliest: empty nested txns).
    #[test]
    fn the_largest_range_and_txn_answers_fit_in_a_forwarded_answer() {
        let max_value_bytes = DEFAULT_MAX_VALUE_BYTES;
        let kv = |i: usize, value: Vec<u8>| {
            let mut key = format!("{i:05}").into_bytes();
            key.resize(MAX_KEY_BYTES, b'"');
            let mut kv = wire::KeyValue::new(key, value, i64::MAX, i64::MAX, i64::MAX);
            kv.lease = i64::MIN;
            kv
        };
        let mut kvs = vec![kv(0, vec![b'"'; MAX_LIST_PAGE_BYTES + max_value_bytes])];
        kvs.extend((1..MAX_LIST_LIMIT).map(|i| kv(i, Vec::new())));
        let header = wire::ResponseHeader {
            cluster_id: format_id(u64::MAX),
            member_id: format_id(u64::MAX),
            revision: i64::MAX,
            raft_term: u64::MAX,
        };
        let range = wire::RangeResponse { header: header.clone(), kvs, more: true, count: i64::MAX };
        let range_len = serde_json::to_vec(&range).unwrap().len();

        let ops = 10_000;
        let nested = wire::RequestOp::RequestTxn(wire::TxnRequest::default());
        let request =
            serde_json::to_vec(&wire::TxnRequest { success: vec![nested; ops], ..Default::default() }).unwrap();
        let empty = wire::TxnResponse {
            header: wire::ResponseHeader { revision: i64::MAX, ..Default::default() },
            ..Default::default()
        };
        let answer = wire::TxnResponse {
            header,
            succeeded: true,
            responses: vec![wire::ResponseOp::ResponseTxn(empty); ops],
            truncated: true,
        };
        let answer_len = serde_json::to_vec(&answer).unwrap().len();
        assert!(
            answer_len <= 6 * request.len(),
            "{ops} nested txns: {} bytes asked, {answer_len} answered",
            request.len()
        );

        let limit = leader_answer_limit(max_value_bytes);
        let txn_bound = 6 * max_txn_request_bytes(max_value_bytes);
        assert!(range_len + txn_bound <= limit, "a range of {range_len} bytes; the limit is {limit}");
    }
}

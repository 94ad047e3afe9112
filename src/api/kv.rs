//! The key-value endpoints: the single-key read and the list (`GET /v1/kv/{key}`,
//! `GET /v1/kv`), and etcd's range, txn and compaction (`POST /v1/range`, `/v1/txn`,
//! `/v1/compact`; DESIGN.md §4). Requests arrive in the JSON shapes of `base::wire::kv` and are
//! checked and turned into the store's etcd types here, before anything is proposed; answers go
//! back the same way, cut to the bounds of one answer.
//!
//! Bounds of an answer: a range (or list page) holds at most `MAX_LIST_LIMIT` keys and ends once
//! its values reach `MAX_LIST_PAGE_BYTES` (at least one key); `more` then says that keys follow
//! and `count` still counts them all. A txn's answer has the same bounds over all its range
//! results and previous values together; past them ranges say `more`, `prevKv`/`prevKvs` are
//! left out, and `truncated` says so (the txn itself applies whole). So an answer stays within
//! what a forwarding member reads of the leader's (`server::leader_answer_limit`).

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::server::{
    forward, parse_query, path_and_query, path_param, read_body, read_point, route, validate_key, Api, ApiError,
    ApiResult, ReadParams, Route,
};
use crate::base::base64::encode_base64;
use crate::base::wire::kv as wire;
use crate::base::wire::*;
use crate::node::handle::PHYSICAL_COMPACT_LIMIT;
use crate::node::NodeError;
use crate::store::auth::Access;
use crate::store::kv::prefix_end;
use crate::store::mvcc::check;
use crate::store::mvcc::{self, MvccError};

/// The most keys a range asks the store for: one more than an answer holds, so that a cut is
/// seen; the store keeps no more than these in memory, however many keys it ranges over or sorts.
pub(super) const ANSWER_KEYS: usize = MAX_LIST_LIMIT + 1;

// ----- errors -----

/// etcd's store errors: 400 with a stable code and etcd's message.
pub fn mvcc_code(e: MvccError) -> &'static str {
    match e {
        MvccError::Compacted => "compacted",
        MvccError::FutureRev => "future_revision",
        MvccError::KeyNotFound => "key_not_found",
        MvccError::EmptyKey => "empty_key",
        MvccError::ValueProvided => "value_provided",
        MvccError::LeaseProvided => "lease_provided",
        MvccError::DuplicateKey => "duplicate_key",
        MvccError::TooManyOps => "too_many_ops",
        MvccError::LeaseNotFound => "lease_not_found",
        MvccError::LeaseExists => "lease_exists",
        MvccError::LeaseTtlTooLarge => "lease_ttl_too_large",
    }
}

/// A store error as the API answers it; `compacted` carries the store's compact revision.
fn mvcc_error(api: &Api, e: MvccError) -> ApiError {
    let mut error = ApiError::new(StatusCode::BAD_REQUEST, mvcc_code(e), e.to_string());
    if e == MvccError::Compacted {
        error.compact_revision = Some(api.node.with_kv(|kv| kv.compacted_revision()));
    }
    error
}

pub(super) fn node_error(api: &Api, e: NodeError) -> ApiError {
    match e {
        NodeError::Mvcc(e) => mvcc_error(api, e),
        other => other.into(),
    }
}

/// May the caller read `[key, range_end)`? (Checked where the read is served, after its read
/// point, against the auth state as applied there.)
fn may_read(api: &Api, key: &[u8], range_end: &[u8]) -> ApiResult<()> {
    let caller = super::auth::current();
    super::auth::check_range(api, &caller, Access::Read, key, range_end).map_err(|e| NodeError::Auth(e).into())
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("bad {what}: {e}")))
}

pub(super) fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

pub(super) fn too_large(message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
}

// ----- requests: wire -> store -----

/// The bytes of a request field (text or base64).
fn bytes(name: &str, text: &Option<String>, base64: &Option<String>) -> ApiResult<Vec<u8>> {
    wire::field_bytes(name, text, base64).map_err(bad)
}

/// The `key` and `range_end` a request selects, from `key`, and `rangeEnd` or `prefix` or
/// `fromKey` (at most one of them). `prefix` or `fromKey` with an empty key: every key.
pub(super) struct Span<'a> {
    pub key: &'a Option<String>,
    pub key_base64: &'a Option<String>,
    pub range_end: &'a Option<String>,
    pub range_end_base64: &'a Option<String>,
    pub prefix: bool,
    pub from_key: bool,
}

impl Span<'_> {
    pub(super) fn resolve(&self) -> ApiResult<(Vec<u8>, Vec<u8>)> {
        let key = bytes("key", self.key, self.key_base64)?;
        let has_end = self.range_end.is_some() || self.range_end_base64.is_some();
        if usize::from(has_end) + usize::from(self.prefix) + usize::from(self.from_key) > 1 {
            return Err(bad("give at most one of `rangeEnd`, `prefix` and `fromKey`"));
        }
        let (key, end) = if (self.prefix || self.from_key) && key.is_empty() {
            (vec![0], vec![0])
        } else if self.prefix {
            let end = prefix_end(&key);
            (key, end)
        } else if self.from_key {
            (key, vec![0])
        } else {
            (key, bytes("rangeEnd", self.range_end, self.range_end_base64)?)
        };
        for (name, bytes) in [("key", &key), ("range end", &end)] {
            if bytes.len() > MAX_KEY_BYTES {
                return Err(too_large(format!("the {name} has {} bytes; the limit is {MAX_KEY_BYTES}", bytes.len())));
            }
        }
        Ok((key, end))
    }
}

fn sort_order(order: wire::SortOrder) -> mvcc::SortOrder {
    match order {
        wire::SortOrder::None => mvcc::SortOrder::None,
        wire::SortOrder::Ascend => mvcc::SortOrder::Ascend,
        wire::SortOrder::Descend => mvcc::SortOrder::Descend,
    }
}

fn sort_target(target: wire::SortTarget) -> mvcc::SortTarget {
    match target {
        wire::SortTarget::Key => mvcc::SortTarget::Key,
        wire::SortTarget::Version => mvcc::SortTarget::Version,
        wire::SortTarget::Create => mvcc::SortTarget::Create,
        wire::SortTarget::Mod => mvcc::SortTarget::Mod,
        wire::SortTarget::Value => mvcc::SortTarget::Value,
    }
}

/// A range request, checked, with the keys an answer may hold capped ([`capped`]).
fn range_request(r: &wire::RangeRequest) -> ApiResult<mvcc::RangeRequest> {
    let span = Span {
        key: &r.key,
        key_base64: &r.key_base64,
        range_end: &r.range_end,
        range_end_base64: &r.range_end_base64,
        prefix: r.prefix,
        from_key: r.from_key,
    };
    let (key, range_end) = span.resolve()?;
    Ok(capped(mvcc::RangeRequest {
        key,
        range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: sort_order(r.sort_order),
        sort_target: sort_target(r.sort_target),
        serializable: r.serializable,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }))
}

/// The same range, asking the store for no more keys than one answer may hold, without changing
/// which keys come first: a limit <= 0 (none) or above the cap becomes the cap. etcd sorts only
/// the first `limit + 1` keys (in key order) when the order is NONE and the target is not KEY;
/// with no limit that is all of them, ascending, so it is asked for as ASCEND; with a limit
/// above the cap the limit is kept (the answer is cut afterwards).
pub(super) fn capped(mut r: mvcc::RangeRequest) -> mvcc::RangeRequest {
    let cap = i64::try_from(MAX_LIST_LIMIT).unwrap_or(i64::MAX);
    let partial_sort = r.sort_order == mvcc::SortOrder::None && r.sort_target != mvcc::SortTarget::Key;
    if r.limit <= 0 {
        if partial_sort {
            r.sort_order = mvcc::SortOrder::Ascend;
        }
        r.limit = cap;
    } else if r.limit > cap && !partial_sort {
        r.limit = cap;
    }
    r
}

fn put_request(p: &wire::PutRequest, max_value_bytes: usize) -> ApiResult<mvcc::PutRequest> {
    let key = bytes("key", &p.key, &p.key_base64)?;
    if key.len() > MAX_KEY_BYTES {
        return Err(too_large(format!("the key has {} bytes; the limit is {MAX_KEY_BYTES}", key.len())));
    }
    let value = bytes("value", &p.value, &p.value_base64)?;
    if value.len() > max_value_bytes {
        return Err(too_large(format!("a value has {} bytes; the limit is {max_value_bytes}", value.len())));
    }
    Ok(mvcc::PutRequest {
        key,
        value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    })
}

fn delete_request(d: &wire::DeleteRangeRequest) -> ApiResult<mvcc::DeleteRangeRequest> {
    let span = Span {
        key: &d.key,
        key_base64: &d.key_base64,
        range_end: &d.range_end,
        range_end_base64: &d.range_end_base64,
        prefix: d.prefix,
        from_key: d.from_key,
    };
    let (key, range_end) = span.resolve()?;
    Ok(mvcc::DeleteRangeRequest { key, range_end, prev_kv: d.prev_kv })
}

fn compare(c: &wire::Compare, max_value_bytes: usize) -> ApiResult<mvcc::Compare> {
    let span = Span {
        key: &c.key,
        key_base64: &c.key_base64,
        range_end: &c.range_end,
        range_end_base64: &c.range_end_base64,
        prefix: c.prefix,
        from_key: c.from_key,
    };
    let (key, range_end) = span.resolve()?;
    let has_value = c.value.is_some() || c.value_base64.is_some();
    let operands = [
        ("version", wire::CompareTarget::Version, c.version.is_some()),
        ("createRevision", wire::CompareTarget::Create, c.create_revision.is_some()),
        ("modRevision", wire::CompareTarget::Mod, c.mod_revision.is_some()),
        ("value", wire::CompareTarget::Value, has_value),
        ("lease", wire::CompareTarget::Lease, c.lease.is_some()),
    ];
    let wanted = match c.target {
        wire::CompareTarget::Version => "version",
        wire::CompareTarget::Create => "createRevision",
        wire::CompareTarget::Mod => "modRevision",
        wire::CompareTarget::Value => "value",
        wire::CompareTarget::Lease => "lease",
    };
    if let Some((other, _, _)) = operands.iter().find(|(_, target, given)| *given && *target != c.target) {
        return Err(bad(format!("a compare on {} takes `{wanted}`, not `{other}`", target_name(c.target))));
    }
    let missing = || bad(format!("a compare on {} needs `{wanted}`", target_name(c.target)));
    let target = match c.target {
        wire::CompareTarget::Version => mvcc::CompareTarget::Version(c.version.ok_or_else(missing)?),
        wire::CompareTarget::Create => mvcc::CompareTarget::Create(c.create_revision.ok_or_else(missing)?),
        wire::CompareTarget::Mod => mvcc::CompareTarget::Mod(c.mod_revision.ok_or_else(missing)?),
        wire::CompareTarget::Lease => mvcc::CompareTarget::Lease(c.lease.ok_or_else(missing)?),
        wire::CompareTarget::Value => {
            if !has_value {
                return Err(missing());
            }
            let value = bytes("value", &c.value, &c.value_base64)?;
            if value.len() > max_value_bytes {
                return Err(too_large(format!("a value has {} bytes; the limit is {max_value_bytes}", value.len())));
            }
            mvcc::CompareTarget::Value(value)
        }
    };
    let result = match c.result {
        wire::CompareResult::Equal => mvcc::CompareResult::Equal,
        wire::CompareResult::Greater => mvcc::CompareResult::Greater,
        wire::CompareResult::Less => mvcc::CompareResult::Less,
        wire::CompareResult::NotEqual => mvcc::CompareResult::NotEqual,
    };
    Ok(mvcc::Compare { key, range_end, result, target })
}

fn target_name(target: wire::CompareTarget) -> &'static str {
    match target {
        wire::CompareTarget::Version => "VERSION",
        wire::CompareTarget::Create => "CREATE",
        wire::CompareTarget::Mod => "MOD",
        wire::CompareTarget::Value => "VALUE",
        wire::CompareTarget::Lease => "LEASE",
    }
}

fn request_op(op: &wire::RequestOp, max_value_bytes: usize) -> ApiResult<mvcc::RequestOp> {
    Ok(match op {
        wire::RequestOp::RequestRange(r) => mvcc::RequestOp::Range(range_request(r)?),
        wire::RequestOp::RequestPut(p) => mvcc::RequestOp::Put(put_request(p, max_value_bytes)?),
        wire::RequestOp::RequestDeleteRange(d) => mvcc::RequestOp::DeleteRange(delete_request(d)?),
        wire::RequestOp::RequestTxn(t) => mvcc::RequestOp::Txn(txn_request(t, max_value_bytes)?),
    })
}

/// A txn, checked field by field (values up to `max_value_bytes`, keys up to `MAX_KEY_BYTES`).
pub(super) fn txn_request(t: &wire::TxnRequest, max_value_bytes: usize) -> ApiResult<mvcc::TxnRequest> {
    Ok(mvcc::TxnRequest {
        compare: t.compare.iter().map(|c| compare(c, max_value_bytes)).collect::<ApiResult<_>>()?,
        success: t.success.iter().map(|op| request_op(op, max_value_bytes)).collect::<ApiResult<_>>()?,
        failure: t.failure.iter().map(|op| request_op(op, max_value_bytes)).collect::<ApiResult<_>>()?,
    })
}

/// The errors etcd finds in a txn before it reaches Raft (empty keys, a value or lease given
/// with `ignoreValue`/`ignoreLease`, a key written twice, too many ops), found here with the
/// checks the state machine runs first (`mvcc::check`, which read nothing), so such a txn is
/// refused without a log entry. What else a txn fails on (a missing key, a future revision)
/// depends on the data and is left to the state machine, whose limit on ops per txn is
/// `DEFAULT_MAX_TXN_OPS`.
pub(super) fn static_check(t: &mvcc::TxnRequest) -> Result<(), MvccError> {
    check::check_txn(t, mvcc::DEFAULT_MAX_TXN_OPS)?;
    check::check_intervals(&t.success)?;
    check::check_intervals(&t.failure)
}

// ----- answers: store -> wire, within bounds -----

/// What one answer may still carry: keys, and value bytes once it holds a key.
pub(super) struct Budget {
    keys: usize,
    bytes: usize,
    used_any: bool,
    exhausted: bool,
}

impl Budget {
    pub(super) fn new() -> Budget {
        Budget { keys: MAX_LIST_LIMIT, bytes: MAX_LIST_PAGE_BYTES, used_any: false, exhausted: false }
    }

    /// Whether a key with `value_len` bytes of value fits; once one does not, none does.
    fn take(&mut self, value_len: usize) -> bool {
        if self.exhausted || self.keys == 0 || (self.used_any && value_len > self.bytes) {
            self.exhausted = true;
            return false;
        }
        self.keys -= 1;
        self.bytes = self.bytes.saturating_sub(value_len);
        self.used_any = true;
        true
    }

    /// The leading key-values that fit; the flag says whether any were cut.
    fn admit(&mut self, kvs: Vec<mvcc::KeyValue>) -> (Vec<mvcc::KeyValue>, bool) {
        let total = kvs.len();
        let kept: Vec<mvcc::KeyValue> = kvs.into_iter().take_while(|kv| self.take(kv.value.len())).collect();
        let cut = kept.len() < total;
        (kept, cut)
    }
}

pub(super) fn wire_kv(kv: mvcc::KeyValue) -> wire::KeyValue {
    let mut out = wire::KeyValue::new(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version);
    out.lease = kv.lease;
    out
}

/// Only the revision, as etcd fills the headers inside a txn.
fn inner_header(revision: mvcc::Revision) -> wire::ResponseHeader {
    wire::ResponseHeader { revision, ..wire::ResponseHeader::default() }
}

/// The header of a top-level answer: this member, its term, the store's revision.
pub(super) fn header(api: &Api, revision: mvcc::Revision) -> wire::ResponseHeader {
    let shared = &api.node.shared;
    wire::ResponseHeader {
        cluster_id: format_id(shared.cluster_id),
        member_id: format_id(shared.id),
        revision,
        raft_term: shared.term(),
    }
}

/// A range's answer cut to the budget; the flag says whether it cut. Both client APIs (JSON
/// here, gRPC in `api::grpc`) bound their answers with it.
pub(super) fn bound_range(mut r: mvcc::RangeResponse, budget: &mut Budget) -> (mvcc::RangeResponse, bool) {
    let (kvs, cut) = budget.admit(std::mem::take(&mut r.kvs));
    r.kvs = kvs;
    r.more |= cut;
    (r, cut)
}

/// A txn's answer cut to the budget; the flag says whether a key-value was left out.
pub(super) fn bound_txn(t: mvcc::TxnResponse, budget: &mut Budget) -> (mvcc::TxnResponse, bool) {
    let mut truncated = false;
    let responses = t
        .responses
        .into_iter()
        .map(|op| match op {
            mvcc::ResponseOp::Range(r) => {
                let (r, cut) = bound_range(r, budget);
                truncated |= cut;
                mvcc::ResponseOp::Range(r)
            }
            mvcc::ResponseOp::Put(mut p) => {
                p.prev_kv = p.prev_kv.filter(|kv| {
                    let fits = budget.take(kv.value.len());
                    truncated |= !fits;
                    fits
                });
                mvcc::ResponseOp::Put(p)
            }
            mvcc::ResponseOp::DeleteRange(mut d) => {
                let (prev_kvs, cut) = budget.admit(std::mem::take(&mut d.prev_kvs));
                d.prev_kvs = prev_kvs;
                truncated |= cut;
                mvcc::ResponseOp::DeleteRange(d)
            }
            mvcc::ResponseOp::Txn(inner) => {
                let (inner, cut) = bound_txn(inner, budget);
                truncated |= cut;
                mvcc::ResponseOp::Txn(inner)
            }
        })
        .collect();
    (mvcc::TxnResponse { responses, ..t }, truncated)
}

fn range_answer(r: mvcc::RangeResponse) -> wire::RangeResponse {
    wire::RangeResponse {
        header: inner_header(r.revision),
        kvs: r.kvs.into_iter().map(wire_kv).collect(),
        more: r.more,
        count: r.count,
    }
}

fn txn_answer(t: mvcc::TxnResponse, truncated: bool) -> wire::TxnResponse {
    let responses = t
        .responses
        .into_iter()
        .map(|op| match op {
            mvcc::ResponseOp::Range(r) => wire::ResponseOp::ResponseRange(range_answer(r)),
            mvcc::ResponseOp::Put(p) => wire::ResponseOp::ResponsePut(wire::PutResponse {
                header: inner_header(p.revision),
                prev_kv: p.prev_kv.map(wire_kv),
            }),
            mvcc::ResponseOp::DeleteRange(d) => wire::ResponseOp::ResponseDeleteRange(wire::DeleteRangeResponse {
                header: inner_header(d.revision),
                deleted: d.deleted,
                prev_kvs: d.prev_kvs.into_iter().map(wire_kv).collect(),
            }),
            // Only the top-level answer says whether it was cut.
            mvcc::ResponseOp::Txn(inner) => wire::ResponseOp::ResponseTxn(txn_answer(inner, false)),
        })
        .collect();
    wire::TxnResponse { header: inner_header(t.revision), succeeded: t.succeeded, responses, truncated }
}

// ----- POST /v1/range -----

pub(super) async fn range(
    State(api): State<Api>,
    query: Result<Query<ReadParams>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> ApiResult<Response> {
    let params = parse_query(query)?;
    let pq = path_and_query(&request);
    let headers = request.headers().clone();
    let body = read_body(&headers, request.into_body(), MAX_RANGE_REQUEST_BYTES).await?;
    let asked: wire::RangeRequest = parse_json(&body, "range request")?;
    let req = range_request(&asked)?;
    let consistency = if asked.serializable { Consistency::Serializable } else { params.consistency };
    let started = std::time::Instant::now();
    if let Some(url) = read_point(&api, consistency, &headers).await? {
        return Ok(forward(&api, &url, Method::POST, &pq, body, true).await);
    }
    may_read(&api, &req.key, &req.range_end)?;
    let found = api.node.range(&req, ANSWER_KEYS).map_err(|e| node_error(&api, e))?;
    if consistency == Consistency::Linearizable {
        api.node.read_replied(started);
    }
    let mut answer = range_answer(bound_range(found, &mut Budget::new()).0);
    answer.header = header(&api, answer.header.revision);
    Ok(Json(answer).into_response())
}

// ----- POST /v1/txn -----

pub(super) async fn txn(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    let pq = path_and_query(&request);
    let headers = request.headers().clone();
    let max_value_bytes = api.node.shared.max_value_bytes;
    let body = read_body(&headers, request.into_body(), max_txn_request_bytes(max_value_bytes)).await?;
    let asked: wire::TxnRequest = parse_json(&body, "txn request")?;
    let req = txn_request(&asked, max_value_bytes)?;
    static_check(&req).map_err(|e| mvcc_error(&api, e))?;
    match route(&api, &headers)? {
        Route::Forward(url) => Ok(forward(&api, &url, Method::POST, &pq, body, false).await),
        Route::Here => {
            let done = api.node.txn(&super::auth::current(), req).await.map_err(|e| node_error(&api, e))?;
            let (done, truncated) = bound_txn(done, &mut Budget::new());
            let mut answer = txn_answer(done, truncated);
            answer.header = header(&api, answer.header.revision);
            Ok(Json(answer).into_response())
        }
    }
}

// ----- POST /v1/compact -----

pub(super) async fn compact(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    let pq = path_and_query(&request);
    let headers = request.headers().clone();
    let body = read_body(&headers, request.into_body(), MAX_COMPACT_REQUEST_BYTES).await?;
    let asked: wire::CompactionRequest = parse_json(&body, "compaction request")?;
    // `physical` waits for the space of the member that took the request, as etcd's does: a
    // follower has the leader compact, then waits for its own reclaim (not the leader's, which
    // would also hold the forwarded call past its timeout).
    let answer = match route(&api, &headers)? {
        Route::Forward(url) => {
            let body = if asked.physical {
                let logical = wire::CompactionRequest { revision: asked.revision, physical: false };
                Bytes::from(serde_json::to_vec(&logical).map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("cannot encode the request: {e}"),
                    )
                })?)
            } else {
                body
            };
            forward(&api, &url, Method::POST, &pq, body, false).await
        }
        Route::Here => {
            let caller = super::auth::current();
            let done = api.node.compact(&caller, asked.revision).await.map_err(|e| node_error(&api, e))?;
            Json(wire::CompactionResponse { header: header(&api, done.revision) }).into_response()
        }
    };
    if asked.physical && answer.status().is_success() {
        api.node.wait_reclaimed(asked.revision, PHYSICAL_COMPACT_LIMIT).await.map_err(|e| node_error(&api, e))?;
    }
    Ok(answer)
}

// ----- GET /v1/kv/{key} -----

#[derive(Deserialize)]
pub(super) struct GetParams {
    #[serde(default)]
    consistency: Consistency,
    /// Read the key as it was at this revision (<= 0: the current one).
    #[serde(default, alias = "revision")]
    rev: i64,
}

pub(super) async fn get_key(
    State(api): State<Api>,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<GetParams>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> ApiResult<Response> {
    let key = path_param(key, "invalid_key")?;
    validate_key(&key)?;
    let params = parse_query(query)?;
    let started = std::time::Instant::now();
    if let Some(url) = read_point(&api, params.consistency, request.headers()).await? {
        return Ok(forward(&api, &url, Method::GET, &path_and_query(&request), Bytes::new(), true).await);
    }
    let req =
        mvcc::RangeRequest { key: key.clone().into_bytes(), revision: params.rev, ..mvcc::RangeRequest::default() };
    may_read(&api, &req.key, &req.range_end)?;
    let found = api.node.range(&req, ANSWER_KEYS).map_err(|e| node_error(&api, e))?;
    if params.consistency == Consistency::Linearizable {
        api.node.read_replied(started);
    }
    let revision = found.revision;
    match found.kvs.into_iter().next() {
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("key '{key}' not found"))),
        Some(kv) => {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_MOD_REVISION, HeaderValue::from(kv.mod_revision));
            headers.insert(HEADER_CREATE_REVISION, HeaderValue::from(kv.create_revision));
            headers.insert(HEADER_REVISION, HeaderValue::from(revision));
            headers.insert("content-type", HeaderValue::from_static("application/octet-stream"));
            Ok((StatusCode::OK, headers, Bytes::from(kv.value)).into_response())
        }
    }
}

// ----- GET /v1/kv -----

/// `?sortBy=` of a list.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SortBy {
    #[serde(alias = "KEY")]
    Key,
    #[serde(alias = "VERSION")]
    Version,
    #[serde(alias = "CREATE")]
    Create,
    #[serde(alias = "MOD")]
    Mod,
    #[serde(alias = "VALUE")]
    Value,
}

/// `?sortOrder=` of a list.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ListOrder {
    #[serde(alias = "NONE")]
    None,
    #[serde(alias = "ASCEND")]
    Ascend,
    #[serde(alias = "DESCEND")]
    Descend,
}

#[derive(Deserialize)]
pub(super) struct ListParams {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    /// Continue after this key (the last key of the previous page).
    #[serde(rename = "startAfter", alias = "start_after")]
    start_after: Option<String>,
    #[serde(default)]
    consistency: Consistency,
    /// Every key from `prefix` on, not only those that start with it.
    #[serde(default, rename = "fromKey", alias = "from_key")]
    from_key: bool,
    #[serde(default, rename = "keysOnly", alias = "keys_only")]
    keys_only: bool,
    #[serde(rename = "sortBy", alias = "sort_by")]
    sort_by: Option<SortBy>,
    /// Default: ascending when `sortBy` is given, else key order.
    #[serde(rename = "sortOrder", alias = "sort_order")]
    sort_order: Option<ListOrder>,
    /// List the keys as they were at this revision (<= 0: the current one).
    #[serde(default, alias = "revision")]
    rev: i64,
}

/// The range a list asks for (`capped` is not needed: its limit is at most the cap).
fn list_request(params: &ListParams, limit: usize) -> mvcc::RangeRequest {
    let prefix = params.prefix.as_bytes();
    let start = match &params.start_after {
        Some(after) if after.as_str() >= params.prefix.as_str() => [after.as_bytes(), &[0]].concat(),
        _ => prefix.to_vec(),
    };
    let start = if start.is_empty() { vec![0] } else { start };
    let range_end = if params.from_key { vec![0] } else { prefix_end(prefix) };
    let sort_target = match params.sort_by {
        None | Some(SortBy::Key) => mvcc::SortTarget::Key,
        Some(SortBy::Version) => mvcc::SortTarget::Version,
        Some(SortBy::Create) => mvcc::SortTarget::Create,
        Some(SortBy::Mod) => mvcc::SortTarget::Mod,
        Some(SortBy::Value) => mvcc::SortTarget::Value,
    };
    let sort_order = match (params.sort_order, params.sort_by) {
        (Some(ListOrder::Descend), _) => mvcc::SortOrder::Descend,
        (Some(ListOrder::Ascend), _) | (None, Some(_)) => mvcc::SortOrder::Ascend,
        (Some(ListOrder::None), _) | (None, None) => mvcc::SortOrder::None,
    };
    mvcc::RangeRequest {
        key: start,
        range_end,
        limit: i64::try_from(limit).unwrap_or(i64::MAX),
        revision: params.rev,
        sort_order,
        sort_target,
        keys_only: params.keys_only,
        ..mvcc::RangeRequest::default()
    }
}

pub(super) async fn list(
    State(api): State<Api>,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> ApiResult<Response> {
    let params = parse_query(query)?;
    let limit = params.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(bad(format!("limit must be between 1 and {MAX_LIST_LIMIT}")));
    }
    if let Some(url) = read_point(&api, params.consistency, request.headers()).await? {
        return Ok(forward(&api, &url, Method::GET, &path_and_query(&request), Bytes::new(), true).await);
    }
    let asked = list_request(&params, limit);
    may_read(&api, &asked.key, &asked.range_end)?;
    let found = api.node.range(&asked, ANSWER_KEYS).map_err(|e| node_error(&api, e))?;
    let (kvs, cut) = Budget::new().admit(found.kvs);
    let response = ListResponse {
        revision: u64::try_from(found.revision).unwrap_or(0),
        kvs: kvs.into_iter().map(list_item).collect(),
        more: found.more || cut,
        count: u64::try_from(found.count).ok(),
    };
    Ok(Json(response).into_response())
}

/// A key-value in the list's shape: the key as text (and base64 too when it is not UTF-8), the
/// value base64.
fn list_item(kv: mvcc::KeyValue) -> KvItem {
    let (key, key_base64) = match String::from_utf8(kv.key) {
        Ok(key) => (key, None),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), Some(encode_base64(e.as_bytes()))),
    };
    KvItem {
        key,
        key_base64,
        value: encode_base64(&kv.value),
        create_revision: u64::try_from(kv.create_revision).unwrap_or(0),
        mod_revision: u64::try_from(kv.mod_revision).unwrap_or(0),
        version: u64::try_from(kv.version).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests;

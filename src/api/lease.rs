//! The lease endpoints (`POST /v1/lease/grant|revoke|keepalive|timetolive|leases`; DESIGN.md §4):
//! etcd's Lease service over HTTP. Every one is served by the leader (a follower forwards):
//! grants and revokes go through the log, and only the leader counts the leases' time.
//!
//! `keepalive` is a stream, as etcd's LeaseKeepAlive: the body is one or more JSON requests
//! (NDJSON), read as they arrive, and the answer one JSON line per request, in order. The
//! first is answered before the response starts, so a single request gets the status of its
//! outcome (503 without a leader, as the other endpoints); a later failure ends the stream with
//! an error line (`{"error": ...}`) instead. A follower forwards each request to the leader. When
//! the member that serves the stream stops, it ends with the error line of a 503, "unavailable",
//! "etcdserver: server stopped".

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header as http_header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth;
use super::kv::{bad, header, node_error};
use super::server::{forward, forward_as, path_and_query, read_body, route, Api, ApiError, ApiResult, Route};
use super::watch::JsonValues;
use crate::base::signal::until_stopped;
use crate::base::wire::lease as wire;
use crate::base::wire::{ErrorBody, ErrorDetail, STOPPED};
use crate::node::NodeError;
use crate::store::auth::{Access, Caller};

/// The most bytes of a lease request.
const MAX_LEASE_REQUEST_BYTES: usize = 4 << 10;

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(axum::http::StatusCode::BAD_REQUEST, "bad_request", format!("bad {what}: {e}")))
}

/// Reads the body and forwards to the leader, or runs `here` with the parsed request.
async fn leader_only<T, F, Fut>(api: Api, request: Request, what: &str, here: F) -> ApiResult<Response>
where
    T: for<'de> Deserialize<'de>,
    F: FnOnce(Api, T) -> Fut,
    Fut: std::future::Future<Output = ApiResult<Response>>,
{
    let pq = path_and_query(&request);
    let headers = request.headers().clone();
    let body = read_body(&headers, request.into_body(), MAX_LEASE_REQUEST_BYTES).await?;
    let asked: T = parse(&body, what)?;
    match route(&api, &headers)? {
        Route::Forward(url) => Ok(forward(&api, &url, Method::POST, &pq, body, false).await),
        Route::Here => here(api, asked).await,
    }
}

pub(super) async fn grant(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    leader_only(api, request, "lease grant request", |api, asked: wire::LeaseGrantRequest| async move {
        let caller = auth::current();
        let (id, ttl) = api.node.lease_grant(&caller, asked.id, asked.ttl).await.map_err(|e| node_error(&api, e))?;
        let revision = api.node.with_kv(|kv| kv.current_revision());
        Ok(Json(wire::LeaseGrantResponse { header: header(&api, revision), id, ttl }).into_response())
    })
    .await
}

pub(super) async fn revoke(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    leader_only(api, request, "lease revoke request", |api, asked: wire::LeaseIdRequest| async move {
        let revision = api.node.lease_revoke(&auth::current(), asked.id).await.map_err(|e| node_error(&api, e))?;
        Ok(Json(wire::LeaseRevokeResponse { header: header(&api, revision) }).into_response())
    })
    .await
}

/// One keep-alive, here on the leader or forwarded to it: the answer's JSON line, or the error
/// as a response.
async fn keep_alive_once(api: &Api, caller: &Caller, headers: &HeaderMap, id: i64) -> Result<Bytes, Response> {
    let answer = match route(api, headers).map_err(IntoResponse::into_response)? {
        Route::Here => {
            auth::check_lease(api, caller, id, Access::Write).map_err(|e| node_error(api, e).into_response())?;
            let ttl = api.node.lease_keep_alive(id).await.map_err(|e| node_error(api, e).into_response())?;
            let revision = api.node.with_kv(|kv| kv.current_revision());
            let answer = wire::LeaseKeepAliveResponse { header: header(api, revision), id, ttl };
            serde_json::to_vec(&answer).map(Bytes::from).unwrap_or_default()
        }
        Route::Forward(url) => {
            let body = serde_json::to_vec(&wire::LeaseIdRequest { id }).unwrap_or_default();
            // A renewal repeated is harmless: forwarded as a read (a lost answer: 503, retry).
            let answer = forward_as(api, caller, &url, Method::POST, "/v1/lease/keepalive", body.into(), true).await;
            if !answer.status().is_success() {
                return Err(answer);
            }
            axum::body::to_bytes(answer.into_body(), MAX_LEASE_REQUEST_BYTES).await.map_err(|e| {
                let why = format!("the leader's answer was cut: {e}");
                ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "unavailable", why).into_response()
            })?
        }
    };
    let mut line = answer.trim_ascii_end().to_vec();
    line.push(b'\n');
    Ok(line.into())
}

/// The body of an error response, as the stream's last line.
async fn error_line(response: Response) -> Bytes {
    let mut line = axum::body::to_bytes(response.into_body(), MAX_LEASE_REQUEST_BYTES)
        .await
        .map(|b| b.trim_ascii_end().to_vec())
        .unwrap_or_default();
    line.push(b'\n');
    line.into()
}

type KeepAlives = (Api, Caller, HeaderMap, JsonValues<wire::LeaseIdRequest>);

pub(super) async fn keep_alive(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    let headers = request.headers().clone();
    let mut requests: JsonValues<wire::LeaseIdRequest> =
        JsonValues::new(request.into_body(), "lease keep-alive request", MAX_LEASE_REQUEST_BYTES);
    let Some(first) = requests.next().await? else {
        return Err(bad("the body holds no lease keep-alive request"));
    };
    let caller = auth::current();
    let first = match keep_alive_once(&api, &caller, &headers, first.id).await {
        Ok(line) => line,
        Err(response) => return Ok(response),
    };
    // The later requests, one answer each, until the body ends or one fails.
    let stop = api.node.shared.stopping.subscribe();
    let state: Option<KeepAlives> = Some((api, caller, headers, requests));
    let later = futures::stream::unfold(state, |state| async move {
        let (api, caller, headers, mut requests) = state?;
        let line = match requests.next().await {
            Ok(None) => return None,
            Ok(Some(asked)) => keep_alive_once(&api, &caller, &headers, asked.id).await,
            Err(e) => Err(e.into_response()),
        };
        Some(match line {
            Ok(line) => (line, Some((api, caller, headers, requests))),
            Err(response) => (error_line(response).await, None),
        })
    });
    let lines = futures::StreamExt::map(
        futures::StreamExt::chain(futures::stream::once(async move { first }), later),
        Ok::<_, std::convert::Infallible>,
    );
    // When the member stops, the stream ends with a last line that says so (503's error body).
    let end = || {
        let error = ErrorBody { error: ErrorDetail::new("unavailable", STOPPED) };
        let mut line = serde_json::to_vec(&error).unwrap_or_default();
        line.push(b'\n');
        Some(Ok(Bytes::from(line)))
    };
    let mut response = Body::from_stream(until_stopped(stop, lines, end)).into_response();
    response.headers_mut().insert(http_header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

pub(super) async fn time_to_live(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    leader_only(api, request, "lease time-to-live request", |api, asked: wire::LeaseTimeToLiveRequest| async move {
        let caller = auth::current();
        // etcd 3.4.42: an authenticated caller; READ on the lease's keys to list them.
        if asked.keys {
            auth::check_lease(&api, &caller, asked.id, Access::Read).map_err(|e| node_error(&api, e))?;
        } else {
            auth::with_state(&api, |a| a.check_authenticated(caller.user()))
                .map_err(|e| node_error(&api, NodeError::Auth(e)))?;
        }
        let found = api.node.lease_time_to_live(asked.id, asked.keys).await.map_err(|e| node_error(&api, e))?;
        let revision = api.node.with_kv(|kv| kv.current_revision());
        let answer = match found {
            Some((ttl, granted_ttl, keys)) => wire::LeaseTimeToLiveResponse {
                header: header(&api, revision),
                id: asked.id,
                ttl,
                granted_ttl,
                keys: keys.into_iter().map(wire::LeaseKey::new).collect(),
            },
            // etcd answers a lease that does not exist with TTL -1.
            None => wire::LeaseTimeToLiveResponse {
                header: header(&api, revision),
                id: asked.id,
                ttl: -1,
                ..Default::default()
            },
        };
        Ok(Json(answer).into_response())
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeasesRequest {}

pub(super) async fn leases(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    leader_only(api, request, "leases request", |api, _: LeasesRequest| async move {
        api.node.read_barrier().await.map_err(|e| node_error(&api, e))?;
        let leases = api.node.leases().map_err(|e| node_error(&api, e))?;
        let ids: Vec<i64> = leases.iter().map(|l| l.id).collect();
        auth::check_leases(&api, &auth::current(), &ids).map_err(|e| node_error(&api, e))?;
        let revision = api.node.with_kv(|kv| kv.current_revision());
        let leases = leases.into_iter().map(|l| wire::LeaseStatus { id: l.id }).collect();
        Ok(Json(wire::LeaseLeasesResponse { header: header(&api, revision), leases }).into_response())
    })
    .await
}

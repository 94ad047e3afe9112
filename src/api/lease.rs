//! The lease endpoints (`POST /v1/lease/grant|revoke|keepalive|timetolive|leases`; DESIGN.md §4):
//! etcd's Lease service over HTTP. Every one is served by the leader (a follower forwards):
//! grants and revokes go through the log, and only the leader counts the leases' time.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::kv::{header, node_error};
use super::server::{forward, path_and_query, read_body, route, Api, ApiError, ApiResult, Route};
use crate::base::wire::lease as wire;

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
        let (id, ttl) = api.node.lease_grant(asked.id, asked.ttl).await.map_err(|e| node_error(&api, e))?;
        let revision = api.node.with_kv(|kv| kv.current_revision());
        Ok(Json(wire::LeaseGrantResponse { header: header(&api, revision), id, ttl }).into_response())
    })
    .await
}

pub(super) async fn revoke(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    leader_only(api, request, "lease revoke request", |api, asked: wire::LeaseIdRequest| async move {
        let revision = api.node.lease_revoke(asked.id).await.map_err(|e| node_error(&api, e))?;
        Ok(Json(wire::LeaseRevokeResponse { header: header(&api, revision) }).into_response())
    })
    .await
}

pub(super) async fn keep_alive(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    leader_only(api, request, "lease keep-alive request", |api, asked: wire::LeaseIdRequest| async move {
        let ttl = api.node.lease_keep_alive(asked.id).await.map_err(|e| node_error(&api, e))?;
        let revision = api.node.with_kv(|kv| kv.current_revision());
        Ok(Json(wire::LeaseKeepAliveResponse { header: header(&api, revision), id: asked.id, ttl }).into_response())
    })
    .await
}

pub(super) async fn time_to_live(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    leader_only(api, request, "lease time-to-live request", |api, asked: wire::LeaseTimeToLiveRequest| async move {
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
        let revision = api.node.with_kv(|kv| kv.current_revision());
        let leases = leases.into_iter().map(|l| wire::LeaseStatus { id: l.id }).collect();
        Ok(Json(wire::LeaseLeasesResponse { header: header(&api, revision), leases }).into_response())
    })
    .await
}

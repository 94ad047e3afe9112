//! The JSON API's auth administration (issue 16): `authenticate`, and the changes that turn
//! auth on with a root user (`enable`, `disable`, `user/add`, `user/changepw`, `user/grant`),
//! under etcd's gateway names. They follow the rules, checks and errors of etcd's Auth service
//! (`grpc::auth`), which serves the rest (etcdctl's `user`, `role` and `auth` commands).
//!
//! As there, a change goes through the log as the caller's (`NodeHandle::auth`) from any
//! member, and a password is hashed first (`auth::hash_password`): the log never holds one.
//! A change answers `{}` once it applied.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use super::auth;
use super::server::{read_body, Api, ApiError, ApiResult};
use crate::base::wire::{
    AuthenticateRequest, AuthenticateResponse, UserAddRequest, UserGrantRoleRequest, UserPasswordRequest,
    MAX_MEMBER_REQUEST_BYTES,
};
use crate::store::auth::AuthRequest;

/// The request's JSON body, read whole (bounded).
async fn body<T: DeserializeOwned>(request: Request, what: &str) -> ApiResult<T> {
    let headers = request.headers().clone();
    let body = read_body(&headers, request.into_body(), MAX_MEMBER_REQUEST_BYTES).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad {what} request: {e}")))
}

/// Applies `change` as the request's caller.
async fn change(api: &Api, change: AuthRequest) -> ApiResult<Response> {
    api.node.auth(&auth::current(), change).await?;
    Ok(Json(serde_json::json!({})).into_response())
}

/// A name and password for a token to send as `Authorization`.
pub(super) async fn authenticate(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    let req: AuthenticateRequest = body(request, "authenticate").await?;
    let token = auth::authenticate(&api, &req.name, &req.password).await?;
    Ok(Json(AuthenticateResponse { token }).into_response())
}

/// etcd's AuthEnable: root must exist and hold the root role.
pub(super) async fn enable(State(api): State<Api>) -> ApiResult<Response> {
    auth::enable(&api, &auth::current()).await?;
    Ok(Json(serde_json::json!({})).into_response())
}

pub(super) async fn disable(State(api): State<Api>) -> ApiResult<Response> {
    change(&api, AuthRequest::Disable).await
}

pub(super) async fn user_add(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    let req: UserAddRequest = body(request, "user add").await?;
    let password_hash = match req.no_password {
        true => None,
        false => Some(auth::hash_password(&api, &auth::current(), req.password).await?),
    };
    change(&api, AuthRequest::UserAdd { name: req.name, password_hash }).await
}

pub(super) async fn user_change_password(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    let req: UserPasswordRequest = body(request, "change password").await?;
    let password_hash = Some(auth::hash_password(&api, &auth::current(), req.password).await?);
    change(&api, AuthRequest::UserChangePassword { name: req.name, password_hash }).await
}

pub(super) async fn user_grant_role(State(api): State<Api>, request: Request) -> ApiResult<Response> {
    let req: UserGrantRoleRequest = body(request, "grant role").await?;
    change(&api, AuthRequest::UserGrantRole { user: req.user, role: req.role }).await
}

//! etcd's Auth service (issue 16): users, roles, permissions, enable and disable, and simple
//! tokens, with etcd 3.4's rules and errors (`store::auth`).
//!
//! Changes go through the log as the caller's (`NodeHandle::auth`), checked where they apply:
//! any member takes them, as it takes writes. Passwords are hashed here first
//! (`auth::hash_password`), so the log never holds one. The reads (UserGet, UserList, RoleGet,
//! RoleList) are linearizable reads of the auth state; etcd runs them through its log, with the
//! same outcome.

use tonic::{Request, Response, Status};

use super::authpb;
use super::errors::{auth_status, node_status};
use super::etcdserverpb as pb;
use super::Grpc;
use crate::api::auth;
use crate::store::auth::{AuthRequest, AuthState, Caller, PermType, Permission};

pub struct AuthService(pub(super) Grpc);

impl AuthService {
    /// Applies `request` as the call's caller; answers with a header.
    async fn change<T>(&self, request: &Request<T>, change: AuthRequest) -> Result<Option<pb::ResponseHeader>, Status> {
        let caller = auth::of(request);
        self.0.api.node.auth(&caller, change).await.map_err(node_status)?;
        Ok(self.0.current_header())
    }

    /// A password's hash, once the caller is known to be root here.
    async fn hash<T>(&self, request: &Request<T>, password: &str) -> Result<String, Status> {
        auth::hash_password(&self.0.api, &auth::of(request), password.to_string()).await.map_err(node_status)
    }

    /// The auth state after a linearizable read, and the caller.
    async fn read<T>(&self, request: &Request<T>) -> Result<(AuthState, Caller), Status> {
        self.0.api.node.read_point().await.map_err(node_status)?;
        Ok((self.0.api.node.auth_state(), auth::of(request)))
    }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let caller = auth::of(&request);
        auth::enable(&self.0.api, &caller).await.map_err(node_status)?;
        Ok(Response::new(pb::AuthEnableResponse { header: self.0.current_header() }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let header = self.change(&request, AuthRequest::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse { header }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let asked = request.into_inner();
        let token = auth::authenticate(&self.0.api, &asked.name, &asked.password).await.map_err(node_status)?;
        Ok(Response::new(pb::AuthenticateResponse { header: self.0.current_header(), token }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let asked = request.get_ref().clone();
        let no_password = asked.options.is_some_and(|o| o.no_password);
        let password_hash = if no_password { None } else { Some(self.hash(&request, &asked.password).await?) };
        let header = self.change(&request, AuthRequest::UserAdd { name: asked.name, password_hash }).await?;
        Ok(Response::new(pb::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let (state, caller) = self.read(&request).await?;
        let name = &request.get_ref().name;
        state.check_user_get(caller.user(), name).map_err(auth_status)?;
        let user = state.users.get(name).ok_or(crate::store::auth::AuthError::UserNotFound).map_err(auth_status)?;
        Ok(Response::new(pb::AuthUserGetResponse { header: self.0.current_header(), roles: user.roles.clone() }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let (state, caller) = self.read(&request).await?;
        state.check_admin(caller.user()).map_err(auth_status)?;
        let users = state.users.keys().cloned().collect();
        Ok(Response::new(pb::AuthUserListResponse { header: self.0.current_header(), users }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self.change(&request, AuthRequest::UserDelete { name }).await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let asked = request.get_ref().clone();
        let password_hash = Some(self.hash(&request, &asked.password).await?);
        let header = self.change(&request, AuthRequest::UserChangePassword { name: asked.name, password_hash }).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let asked = request.get_ref().clone();
        let header = self.change(&request, AuthRequest::UserGrantRole { user: asked.user, role: asked.role }).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let asked = request.get_ref().clone();
        let header = self.change(&request, AuthRequest::UserRevokeRole { name: asked.name, role: asked.role }).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone();
        let header = self.change(&request, AuthRequest::RoleAdd { name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let (state, caller) = self.read(&request).await?;
        let name = &request.get_ref().role;
        state.check_role_get(caller.user(), name).map_err(auth_status)?;
        let role = state.roles.get(name).ok_or(crate::store::auth::AuthError::RoleNotFound).map_err(auth_status)?;
        let perm = role
            .perms
            .iter()
            .map(|p| authpb::Permission {
                perm_type: p.perm_type.as_i32(),
                key: p.key.clone(),
                range_end: p.range_end.clone(),
            })
            .collect();
        Ok(Response::new(pb::AuthRoleGetResponse { header: self.0.current_header(), perm }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let (state, caller) = self.read(&request).await?;
        state.check_admin(caller.user()).map_err(auth_status)?;
        let roles = state.roles.keys().cloned().collect();
        Ok(Response::new(pb::AuthRoleListResponse { header: self.0.current_header(), roles }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let role = request.get_ref().role.clone();
        let header = self.change(&request, AuthRequest::RoleDelete { role }).await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let asked = request.get_ref().clone();
        let perm = match asked.perm {
            Some(p) => Some(Permission {
                // etcd stores any number; kuberaft refuses one that names no type.
                perm_type: PermType::from_i32(p.perm_type)
                    .ok_or_else(|| Status::invalid_argument(format!("unknown permission type {}", p.perm_type)))?,
                key: p.key,
                range_end: p.range_end,
            }),
            None => None,
        };
        let header = self.change(&request, AuthRequest::RoleGrantPermission { name: asked.name, perm }).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let asked = request.get_ref().clone();
        let change = AuthRequest::RoleRevokePermission { role: asked.role, key: asked.key, range_end: asked.range_end };
        let header = self.change(&request, change).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse { header }))
    }
}

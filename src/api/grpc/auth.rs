//! etcd's Auth service, until kuberaft has users and roles (the security issue): every RPC
//! answers etcd's "etcdserver: authentication is not enabled" (FailedPrecondition), what etcd
//! answers an Authenticate while auth is off. etcd would also store users and roles while auth
//! is off, and turn it on with AuthEnable; kuberaft does neither yet (COMPATIBILITY.md).

use tonic::{Request, Response, Status};

use super::etcdserverpb as pb;

pub const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";

pub struct AuthService;

/// The Auth trait's methods, each answering that auth is not enabled.
macro_rules! not_enabled {
    ($($method:ident($request:ident) -> $response:ident;)*) => {
        #[tonic::async_trait]
        impl pb::auth_server::Auth for AuthService {
            $(
                async fn $method(&self, _: Request<pb::$request>) -> Result<Response<pb::$response>, Status> {
                    Err(Status::failed_precondition(AUTH_NOT_ENABLED))
                }
            )*
        }
    };
}

not_enabled! {
    auth_enable(AuthEnableRequest) -> AuthEnableResponse;
    auth_disable(AuthDisableRequest) -> AuthDisableResponse;
    authenticate(AuthenticateRequest) -> AuthenticateResponse;
    user_add(AuthUserAddRequest) -> AuthUserAddResponse;
    user_get(AuthUserGetRequest) -> AuthUserGetResponse;
    user_list(AuthUserListRequest) -> AuthUserListResponse;
    user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
    user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
    user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
    user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
    role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
    role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
    role_list(AuthRoleListRequest) -> AuthRoleListResponse;
    role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
    role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
    role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
}

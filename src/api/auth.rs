//! Who calls (issue 16): every request on the client port, JSON or gRPC, has its caller
//! resolved once, before its handler runs (`resolve_caller`), as etcd's server does in
//! `AuthInfoFromCtx`:
//!
//! 1. a call another member forwarded carries the caller that member resolved, signed with the
//!    members' shared secret (`HEADER_CALLER`, `HEADER_CALLER_MAC`); a forwarded call never
//!    counts the forwarding member's own certificate;
//! 2. with auth off, nobody (tokens are ignored, as etcd 3.4.28 and later ignore them);
//! 3. a simple token (gRPC metadata `token`, else `authorization`; the JSON API's
//!    `Authorization` header, raw or `Bearer`): the member waits until it applied the token's
//!    entry, then looks it up; an unknown or expired token is etcd's "invalid auth token";
//! 4. with `--client-cert-auth`, the common name of the client's certificate;
//! 5. otherwise nobody: what needs a user then fails with "user name is empty".
//!
//! The handlers take the caller from the request's extensions (gRPC) or from `current` (JSON),
//! and commands carry it into the log (`store::auth::Caller`), where permissions are checked
//! as they apply. Reads and watches are checked here, against this member's applied auth state.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::server::{Api, ApiError};
use crate::base::wire::HEADER_FORWARDED;
use crate::http::tls::PeerCertificate;
use crate::node::NodeError;
use crate::store::auth::{Access, AuthError, AuthRequest, AuthState, Caller};

/// The caller a forwarding member resolved (empty: no user).
pub const HEADER_CALLER: &str = "x-kuberaft-caller";
/// `HEADER_CALLER`'s signature: HMAC-SHA256 with the members' secret, in hex.
pub const HEADER_CALLER_MAC: &str = "x-kuberaft-caller-mac";

/// How the client port authenticates callers (`kuberaft node`'s flags).
#[derive(Clone, Copy, Debug)]
pub struct AuthSettings {
    /// etcd's `--bcrypt-cost`.
    pub bcrypt_cost: u32,
    /// etcd's `--client-cert-auth`: a client certificate's common name names its user.
    pub client_cert_auth: bool,
}

impl Default for AuthSettings {
    fn default() -> AuthSettings {
        AuthSettings { bcrypt_cost: bcrypt::DEFAULT_COST, client_cert_auth: false }
    }
}

tokio::task_local! {
    /// The caller of the JSON request being served (set by `resolve_caller`).
    static CURRENT: Caller;
}

/// The caller of the JSON request being served. Outside one (a task spawned off it), a
/// caller without a user whose commands are checked: denied wherever a user is needed.
pub fn current() -> Caller {
    CURRENT.try_with(Caller::clone).unwrap_or(NOBODY)
}

/// The caller of a gRPC call (resolved by `resolve_caller`), with the same fallback.
pub fn of<T>(request: &tonic::Request<T>) -> Caller {
    request.extensions().get::<Caller>().cloned().unwrap_or(NOBODY)
}

/// A caller without a user whose commands are checked: denied wherever a user is needed.
const NOBODY: Caller = Caller { user: None, checked: true };

fn sign(secret: &[u8], user: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::sign(&key, user.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The headers that carry `caller` to the leader: none when auth was off here.
pub fn forwarded_caller(api: &Api, caller: &Caller) -> Vec<(HeaderName, HeaderValue)> {
    if !caller.checked {
        return Vec::new();
    }
    let secret = api.node.with_kv(|kv| kv.auth().secret.clone());
    let user = caller.user.clone().unwrap_or_default();
    let mac = sign(&secret, &user);
    match (HeaderValue::from_str(&user), HeaderValue::from_str(&mac)) {
        (Ok(user), Ok(mac)) => {
            vec![(HeaderName::from_static(HEADER_CALLER), user), (HeaderName::from_static(HEADER_CALLER_MAC), mac)]
        }
        // A user name that is no header value: forwarded as nobody (denied, never elevated).
        _ => Vec::new(),
    }
}

/// The token a request carries: gRPC metadata `token`, else `authorization` (etcd's gateway
/// header), raw or as `Bearer <token>`.
fn token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("token").or_else(|| headers.get(axum::http::header::AUTHORIZATION))?;
    let text = value.to_str().ok()?.trim();
    Some(text.strip_prefix("Bearer ").unwrap_or(text).to_string())
}

/// Resolves the caller (module docs). `Err`: the credentials given are invalid.
pub async fn caller(api: &Api, headers: &HeaderMap, cert: Option<&PeerCertificate>) -> Result<Caller, AuthError> {
    if let Some(user) = headers.get(HEADER_CALLER) {
        let secret = api.node.with_kv(|kv| kv.auth().secret.clone());
        let mac = headers.get(HEADER_CALLER_MAC).and_then(|m| m.to_str().ok()).unwrap_or("");
        let user = user.to_str().map_err(|_| AuthError::InvalidToken)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let expected: Vec<u8> =
            (0..mac.len() / 2).filter_map(|i| u8::from_str_radix(&mac[2 * i..2 * i + 2], 16).ok()).collect();
        if secret.is_empty() || hmac::verify(&key, user.as_bytes(), &expected).is_err() {
            return Err(AuthError::InvalidToken);
        }
        return Ok(Caller { user: Some(user.to_string()).filter(|u| !u.is_empty()), checked: true });
    }
    if !with_state(api, |auth| auth.enabled) {
        return Ok(Caller::default());
    }
    if let Some(token) = token(headers) {
        return token_user(api, &token).await.map(|user| Caller { user: Some(user), checked: true });
    }
    let user = match cert {
        Some(cert) if api.auth.client_cert_auth && !headers.contains_key(HEADER_FORWARDED) => {
            crate::base::tls::common_name(&cert.0).filter(|cn| !cn.is_empty())
        }
        _ => None,
    };
    Ok(Caller { user, checked: true })
}

/// The user of a simple token `<random>.<index>`, once this member applied that index.
async fn token_user(api: &Api, token: &str) -> Result<String, AuthError> {
    let index = token.rsplit_once('.').and_then(|(_, i)| i.parse::<u64>().ok()).ok_or(AuthError::InvalidToken)?;
    if api.node.wait_applied(index).await.is_err() {
        return Err(AuthError::InvalidToken);
    }
    let tokens = api.node.with_kv(|kv| kv.tokens());
    tokens.user(token).ok_or(AuthError::InvalidToken)
}

/// The gRPC method whose caller's credentials are not checked (etcd 3.4.28 and later).
const AUTHENTICATE_PATHS: &[&str] = &["/etcdserverpb.Auth/Authenticate", "/v1/auth/authenticate"];

/// Middleware of the client port: resolves the caller into the request's extensions (and, for
/// the JSON API, `current`), or answers etcd's "invalid auth token".
pub async fn resolve_caller(State(api): State<Api>, mut request: Request, next: Next) -> Response {
    let resolved = caller(&api, request.headers(), request.extensions().get::<PeerCertificate>()).await;
    let caller = match resolved {
        Ok(caller) => caller,
        Err(_) if AUTHENTICATE_PATHS.contains(&request.uri().path()) => Caller::default(),
        Err(e) if super::server::is_grpc(request.headers()) => {
            return super::grpc::auth_status(e).into_http::<axum::body::Body>().into_response()
        }
        Err(e) => return ApiError::from(NodeError::Auth(e)).into_response(),
    };
    request.extensions_mut().insert(caller.clone());
    CURRENT.scope(caller, next.run(request)).await
}

/// A password's bcrypt hash for a change by `caller`, made off the async threads (a hash takes
/// tens of milliseconds) and only once `caller` is known to be root here (while auth is on), so
/// that nobody else can make a member hash.
pub async fn hash_password(api: &Api, caller: &Caller, password: String) -> Result<String, NodeError> {
    with_state(api, |a| a.check_admin(caller.user())).map_err(NodeError::Auth)?;
    let cost = api.auth.bcrypt_cost;
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(|e| NodeError::Unavailable(format!("hashing stopped: {e}")))?
        .map_err(|e| NodeError::BadRequest(format!("cannot hash the password: {e}")))
}

/// 16 random letters (etcd's simple-token prefix), or a secret of 32 random bytes.
fn random_bytes<const N: usize>() -> Result<[u8; N], NodeError> {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).map_err(|_| NodeError::Unavailable("no randomness available".into()))?;
    Ok(bytes)
}

/// etcd's Authenticate: checks the password against this member's applied state after a
/// linearizable read, then has a token made through the log (on every member). Returns it.
pub async fn authenticate(api: &Api, name: &str, password: &str) -> Result<String, NodeError> {
    // Bounded: a retry only when the auth state changed between the check and the apply.
    for _ in 0..3 {
        api.node.read_point().await?;
        let state = api.node.auth_state();
        if !state.enabled {
            return Err(NodeError::Auth(AuthError::NotEnabled));
        }
        let Some(user) = state.users.get(name) else { return Err(NodeError::Auth(AuthError::Failed)) };
        let Some(hash) = user.password_hash.clone() else { return Err(NodeError::Auth(AuthError::NoPasswordUser)) };
        let password = password.to_string();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .map_err(|e| NodeError::Unavailable(format!("the password check stopped: {e}")))?;
        if !matches {
            return Err(NodeError::Auth(AuthError::Failed));
        }
        let letters: String = random_bytes::<16>()?
            .iter()
            .map(|b| {
                let i = b % 52;
                char::from(if i < 26 { b'a' + i } else { b'A' + i - 26 })
            })
            .collect();
        let request = AuthRequest::Authenticate { name: name.to_string(), token: letters, revision: state.revision };
        match api.node.auth(&NOBODY, request).await {
            Ok(crate::store::auth::AuthOutcome::Token(token)) => return Ok(token),
            Ok(other) => return Err(NodeError::OutcomeUnknown(format!("an authenticate answered {other:?}"))),
            Err(NodeError::Auth(AuthError::Failed)) if api.node.auth_state().revision != state.revision => continue,
            Err(e) => return Err(e),
        }
    }
    Err(NodeError::Auth(AuthError::Failed))
}

/// etcd's AuthEnable, with a new members' secret (kept only if there is none yet).
pub async fn enable(api: &Api, caller: &Caller) -> Result<(), NodeError> {
    let secret = random_bytes::<32>()?.to_vec();
    api.node.auth(caller, AuthRequest::Enable { secret }).await.map(|_| ())
}

/// May `caller` read (or write) `[key, range_end)` in this member's applied auth state?
pub fn check_range(api: &Api, caller: &Caller, access: Access, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
    api.node.with_kv(|kv| kv.auth().check_range(caller.user(), access, key, range_end))
}

/// Runs `f` on this member's applied auth state.
pub fn with_state<R>(api: &Api, f: impl FnOnce(&AuthState) -> R) -> R {
    api.node.with_kv(|kv| f(kv.auth()))
}

/// etcd 3.4.42's lease checks: an authenticated caller, and `access` on every key lease `id`
/// holds (WRITE to renew it, READ to see its keys).
pub fn check_lease(api: &Api, caller: &Caller, id: i64, access: Access) -> Result<(), NodeError> {
    if !with_state(api, |auth| auth.enabled) {
        return Ok(());
    }
    let keys = api.node.lease_keys(id)?;
    with_state(api, |auth| {
        auth.check_authenticated(caller.user())?;
        keys.iter().try_for_each(|key| auth.check_range(caller.user(), access, key, &[]))
    })
    .map_err(NodeError::Auth)
}

/// etcd 3.4.42's LeaseLeases check: root, or READ on every key of every lease.
pub fn check_leases(api: &Api, caller: &Caller, ids: &[i64]) -> Result<(), NodeError> {
    if with_state(api, |auth| auth.check_admin(caller.user())).is_ok() {
        return Ok(());
    }
    ids.iter().try_for_each(|id| check_lease(api, caller, *id, Access::Read))
}

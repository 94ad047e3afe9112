//! etcd's users, roles and key permissions (issue 16), as part of the replicated state: every
//! change is a command in the log (`Command::Auth`), applied here on every member in the same
//! order, and kept in the database's `meta` table beside the member table, so snapshots carry it.
//!
//! The rules are etcd 3.4's (`auth/store.go`): a user with the `root` role may do anything; any
//! other user may touch a key only if a role it holds grants a permission whose range covers it;
//! the management calls are root's only. Where 3.4's patch releases differ (3.4.42 closed holes in
//! txns and leases), the stricter rule is kept (docs/COMPATIBILITY.md).
//!
//! Passwords arrive hashed (bcrypt, by the member that received the call), so no password is
//! ever written into the log; etcd 3.4 writes them there and hashes at apply (etcd 3.5 moved the
//! hash out of the log as we do). Tokens are not part of the replicated state: each member keeps
//! the simple tokens it applied in memory ([`Tokens`]), as etcd's members do.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::mvcc::{RequestOp, TxnRequest};

/// Who a client's command comes from, as the member that received it resolved the caller.
/// While auth is off there (`checked` false) the command travels bare, as kuberaft versions
/// without auth write it; otherwise it travels as `Command::As` with `user` (`None`: the call
/// carried no credentials), checked where it applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub user: Option<String>,
    pub checked: bool,
}

impl Caller {
    /// `command` as this caller's.
    pub fn wrap(&self, command: super::command::Command) -> super::command::Command {
        if self.checked {
            super::command::Command::As { user: self.user.clone(), command: Box::new(command) }
        } else {
            command
        }
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

/// The role whose holders may do anything.
pub const ROOT: &str = "root";

/// What a permission grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermType {
    Read,
    Write,
    ReadWrite,
}

impl PermType {
    /// etcd's `authpb.Permission.Type` numbers: READ 0, WRITE 1, READWRITE 2.
    pub fn from_i32(n: i32) -> Option<PermType> {
        match n {
            0 => Some(PermType::Read),
            1 => Some(PermType::Write),
            2 => Some(PermType::ReadWrite),
            _ => None,
        }
    }

    pub fn as_i32(self) -> i32 {
        match self {
            PermType::Read => 0,
            PermType::Write => 1,
            PermType::ReadWrite => 2,
        }
    }

    fn grants(self, need: Access) -> bool {
        matches!(
            (self, need),
            (PermType::ReadWrite, _) | (PermType::Read, Access::Read) | (PermType::Write, Access::Write)
        )
    }
}

/// One permission of a role: `key` alone (empty `range_end`), `[key, range_end)`, or every key
/// from `key` on (`range_end` = `"\0"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub perm_type: PermType,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// A user: its roles (sorted) and its password's bcrypt hash (`None`: a user without a
/// password, who can only be named by a client certificate).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub roles: Vec<String>,
    pub password_hash: Option<String>,
}

/// A role: its permissions, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub perms: Vec<Permission>,
}

/// The replicated auth state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// etcd's auth revision: starts at 1 and grows with every change of users, roles or
    /// permissions (and with a disable), so that a check made before a change can be told apart.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// The members' shared secret, chosen when auth is first enabled: a member that forwards a
    /// call to the leader signs the caller's name with it (`api::auth`). Never shown to clients.
    pub secret: Vec<u8>,
}

impl Default for AuthState {
    fn default() -> AuthState {
        AuthState { enabled: false, revision: 1, users: BTreeMap::new(), roles: BTreeMap::new(), secret: Vec::new() }
    }
}

/// A change of the auth state, carried in the log (`Command::Auth`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthRequest {
    /// `secret` is used only if the state has none yet.
    Enable {
        secret: Vec<u8>,
    },
    Disable,
    /// Creates simple token `<token>.<index of this entry>` for `name`, if the auth state is
    /// still at `revision` (the one the password was checked against).
    Authenticate {
        name: String,
        token: String,
        revision: u64,
    },
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        role: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Option<Permission>,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl AuthRequest {
    /// Whether only root may make it (all but Authenticate).
    pub fn needs_admin(&self) -> bool {
        !matches!(self, AuthRequest::Authenticate { .. })
    }
}

/// What applying an `AuthRequest` returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOutcome {
    Done,
    Token(String),
}

/// etcd's auth errors (`auth/store.go`, `rpctypes`), each with etcd's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthError {
    NotEnabled,
    Failed,
    InvalidToken,
    OldRevision,
    UserEmpty,
    UserAlreadyExist,
    UserNotFound,
    RoleAlreadyExist,
    RoleNotFound,
    RoleEmpty,
    PermissionDenied,
    RoleNotGranted,
    PermissionNotGranted,
    RootUserNotExist,
    RootRoleNotExist,
    InvalidAuthMgmt,
    PermissionNotGiven,
    NoPasswordUser,
}

/// The gRPC status class of an auth error, as etcd's `rpctypes` map them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthErrorClass {
    InvalidArgument,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    Unknown,
}

impl AuthError {
    pub fn class(self) -> AuthErrorClass {
        use AuthError::*;
        match self {
            Failed | OldRevision | UserEmpty | RoleEmpty | InvalidAuthMgmt | PermissionNotGiven => {
                AuthErrorClass::InvalidArgument
            }
            NotEnabled | UserAlreadyExist | UserNotFound | RoleAlreadyExist | RoleNotFound | RoleNotGranted
            | PermissionNotGranted | RootUserNotExist | RootRoleNotExist => AuthErrorClass::FailedPrecondition,
            PermissionDenied => AuthErrorClass::PermissionDenied,
            InvalidToken => AuthErrorClass::Unauthenticated,
            NoPasswordUser => AuthErrorClass::Unknown,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use AuthError::*;
        f.write_str(match self {
            NotEnabled => "etcdserver: authentication is not enabled",
            Failed => "etcdserver: authentication failed, invalid user ID or password",
            InvalidToken => "etcdserver: invalid auth token",
            OldRevision => "etcdserver: revision of auth store is old",
            UserEmpty => "etcdserver: user name is empty",
            UserAlreadyExist => "etcdserver: user name already exists",
            UserNotFound => "etcdserver: user name not found",
            RoleAlreadyExist => "etcdserver: role name already exists",
            RoleNotFound => "etcdserver: role name not found",
            RoleEmpty => "etcdserver: role name is empty",
            PermissionDenied => "etcdserver: permission denied",
            RoleNotGranted => "etcdserver: role is not granted to the user",
            PermissionNotGranted => "etcdserver: permission is not granted to the role",
            RootUserNotExist => "etcdserver: root user does not exist",
            RootRoleNotExist => "etcdserver: root user does not have root role",
            InvalidAuthMgmt => "etcdserver: invalid auth management",
            PermissionNotGiven => "etcdserver: permission not given",
            NoPasswordUser => "auth: authentication failed, password was given for no password user",
        })
    }
}

impl std::error::Error for AuthError {}

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// A key range as permissions and requests name it: `end` `None` is +∞.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

/// A permission's keys as an interval: one key, `[key, end)`, or `[key, +∞)` for end `"\0"`.
fn perm_interval(key: &[u8], range_end: &[u8]) -> Interval {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            Interval { start: key.to_vec(), end: Some(end) }
        }
        [0] => Interval { start: key.to_vec(), end: None },
        end => Interval { start: key.to_vec(), end: Some(end.to_vec()) },
    }
}

/// etcd's `isValidPermissionRange`: a key, and an end that is empty, `"\0"` or after the key.
fn valid_perm_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || range_end > key)
}

impl AuthState {
    fn user_has_root(user: &User) -> bool {
        user.roles.binary_search_by(|r| r.as_str().cmp(ROOT)).is_ok()
    }

    /// etcd's `IsAdminPermitted`.
    pub fn check_admin(&self, user: Option<&str>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.filter(|u| !u.is_empty()).ok_or(AuthError::UserEmpty)?;
        let user = self.users.get(name).ok_or(AuthError::UserNotFound)?;
        if Self::user_has_root(user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// An authenticated caller: auth is off, or the caller names a user (etcd 3.4.42's
    /// `requireAuthInfo`, for lease grants).
    pub fn check_authenticated(&self, user: Option<&str>) -> Result<(), AuthError> {
        if self.enabled && user.is_none_or(str::is_empty) {
            return Err(AuthError::UserEmpty);
        }
        Ok(())
    }

    /// etcd's `isOpPermitted`: may `user` read or write `[key, range_end)` (one key if
    /// `range_end` is empty, every key from `key` on if it is `"\0"`)?
    pub fn check_range(
        &self,
        user: Option<&str>,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.filter(|u| !u.is_empty()).ok_or(AuthError::UserEmpty)?;
        let user = self.users.get(name).ok_or(AuthError::PermissionDenied)?;
        if Self::user_has_root(user) {
            return Ok(());
        }
        let mut granted: Vec<Interval> = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.perms.iter())
            .filter(|p| p.perm_type.grants(access))
            .map(|p| perm_interval(&p.key, &p.range_end))
            .collect();
        let covered = match range_end {
            [] => granted.iter().any(|g| g.start.as_slice() <= key && g.end.as_deref().is_none_or(|e| key < e)),
            [0] => covers(&mut granted, key, None),
            end if end <= key => {
                granted.iter().any(|g| g.start.as_slice() <= key && g.end.as_deref().is_none_or(|e| key < e))
            }
            end => covers(&mut granted, key, Some(end)),
        };
        if covered {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's `checkTxnAuth`, as 3.4.42 and later check it: READ on every compare; every op of
    /// both branches, whichever runs, as it would be checked alone; nested txns too.
    /// `lease_keys` names the keys a lease holds (a put that attaches one needs WRITE on them).
    pub fn check_txn(
        &self,
        user: Option<&str>,
        txn: &TxnRequest,
        lease_keys: &mut dyn FnMut(i64) -> Vec<Vec<u8>>,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        for compare in &txn.compare {
            self.check_range(user, Access::Read, &compare.key, &compare.range_end)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                RequestOp::Range(r) => self.check_range(user, Access::Read, &r.key, &r.range_end)?,
                RequestOp::Put(p) => {
                    self.check_range(user, Access::Write, &p.key, &[])?;
                    if p.prev_kv {
                        self.check_range(user, Access::Read, &p.key, &[])?;
                    }
                    if p.lease != 0 {
                        self.check_lease_keys(user, &lease_keys(p.lease))?;
                    }
                }
                RequestOp::DeleteRange(d) => {
                    self.check_range(user, Access::Write, &d.key, &d.range_end)?;
                    if d.prev_kv {
                        self.check_range(user, Access::Read, &d.key, &d.range_end)?;
                    }
                }
                RequestOp::Txn(nested) => self.check_txn(user, nested, lease_keys)?,
            }
        }
        Ok(())
    }

    /// etcd's `checkLeasePuts`: WRITE on every key a lease holds (to revoke it, renew it, or
    /// attach more keys to it).
    pub fn check_lease_keys(&self, user: Option<&str>, keys: &[Vec<u8>]) -> Result<(), AuthError> {
        for key in keys {
            self.check_range(user, Access::Write, key, &[])?;
        }
        Ok(())
    }

    /// etcd's UserGet rule: root, or the user itself.
    pub fn check_user_get(&self, caller: Option<&str>, name: &str) -> Result<(), AuthError> {
        if self.enabled && caller == Some(name) {
            return Ok(());
        }
        self.check_admin(caller)
    }

    /// etcd's RoleGet rule: root, or a holder of the role.
    pub fn check_role_get(&self, caller: Option<&str>, role: &str) -> Result<(), AuthError> {
        if self.enabled {
            if let Some(user) = caller.and_then(|c| self.users.get(c)) {
                if user.roles.iter().any(|r| r == role) {
                    return Ok(());
                }
            }
        }
        self.check_admin(caller)
    }

    /// Applies a change (its caller already checked); what changed tokens must forget is in
    /// `forget`.
    pub fn apply(&mut self, request: AuthRequest, index: u64, forget: &mut Forget) -> Result<AuthOutcome, AuthError> {
        use AuthRequest::*;
        match request {
            Enable { secret } => {
                if self.enabled {
                    return Ok(AuthOutcome::Done);
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !Self::user_has_root(root) {
                    return Err(AuthError::RootRoleNotExist);
                }
                if self.secret.is_empty() {
                    self.secret = secret;
                }
                self.enabled = true;
            }
            Disable => {
                if self.enabled {
                    self.enabled = false;
                    self.revision += 1;
                    *forget = Forget::All;
                }
            }
            Authenticate { name, token, revision } => {
                if !self.enabled {
                    return Err(AuthError::NotEnabled);
                }
                if revision != self.revision || !self.users.contains_key(&name) {
                    return Err(AuthError::Failed);
                }
                return Ok(AuthOutcome::Token(format!("{token}.{index}")));
            }
            UserAdd { name, password_hash } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(&name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                self.users.insert(name, User { roles: Vec::new(), password_hash });
                self.revision += 1;
            }
            UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(&name).ok_or(AuthError::UserNotFound)?;
                self.revision += 1;
                *forget = Forget::User(name);
            }
            UserChangePassword { name, password_hash } => {
                let user = self.users.get_mut(&name).ok_or(AuthError::UserNotFound)?;
                // A user without a password stays one (etcd keeps its options).
                if user.password_hash.is_some() {
                    user.password_hash = password_hash;
                }
                self.revision += 1;
                *forget = Forget::User(name);
            }
            UserGrantRole { user, role } => {
                if role != ROOT && !self.roles.contains_key(&role) {
                    // etcd looks the user up first.
                    self.users.get(&user).ok_or(AuthError::UserNotFound)?;
                    return Err(AuthError::RoleNotFound);
                }
                let user = self.users.get_mut(&user).ok_or(AuthError::UserNotFound)?;
                if let Err(at) = user.roles.binary_search(&role) {
                    user.roles.insert(at, role);
                    self.revision += 1;
                }
            }
            UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(&name).ok_or(AuthError::UserNotFound)?;
                let at = user.roles.iter().position(|r| *r == role).ok_or(AuthError::RoleNotGranted)?;
                user.roles.remove(at);
                self.revision += 1;
            }
            RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name, Role::default());
                self.revision += 1;
            }
            RoleDelete { role } => {
                if self.enabled && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(&role).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.retain(|r| *r != role);
                }
                self.revision += 1;
            }
            RoleGrantPermission { name, perm } => {
                let perm = perm.ok_or(AuthError::PermissionNotGiven)?;
                if !valid_perm_range(&perm.key, &perm.range_end) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let role = self.roles.get_mut(&name).ok_or(AuthError::RoleNotFound)?;
                match role.perms.iter_mut().find(|p| p.key == perm.key && p.range_end == perm.range_end) {
                    Some(same) => same.perm_type = perm.perm_type,
                    None => {
                        let at = role.perms.partition_point(|p| p.key <= perm.key);
                        role.perms.insert(at, perm);
                    }
                }
                self.revision += 1;
            }
            RoleRevokePermission { role, key, range_end } => {
                let role = self.roles.get_mut(&role).ok_or(AuthError::RoleNotFound)?;
                let at = role
                    .perms
                    .iter()
                    .position(|p| p.key == key && p.range_end == range_end)
                    .ok_or(AuthError::PermissionNotGranted)?;
                role.perms.remove(at);
                self.revision += 1;
            }
        }
        Ok(AuthOutcome::Done)
    }
}

/// Whether the union of `granted` covers `[start, end)` (`end` `None`: +∞) without a gap.
fn covers(granted: &mut [Interval], start: &[u8], end: Option<&[u8]>) -> bool {
    granted.sort_by(|a, b| a.start.cmp(&b.start));
    let mut reached = start.to_vec();
    for g in granted.iter() {
        if g.start > reached {
            break;
        }
        match &g.end {
            None => return true,
            Some(e) if *e > reached => reached = e.clone(),
            Some(_) => {}
        }
        if end.is_some_and(|end| reached.as_slice() >= end) {
            return true;
        }
    }
    false
}

/// Which tokens an applied change invalidates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Forget {
    #[default]
    Nothing,
    User(String),
    All,
}

/// How many simple tokens a member keeps at most: beyond it, the least recently used go first,
/// so a client that authenticates in a loop cannot grow a member's memory without bound.
pub const MAX_TOKENS: usize = 100_000;

/// The simple tokens a member applied (etcd's `tokenSimple`): token → user, each expiring
/// `ttl` after its last use. In memory only: a restarted member knows none.
pub struct Tokens {
    ttl: Duration,
    map: Mutex<HashMap<String, (String, Instant)>>,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens { ttl, map: Mutex::new(HashMap::new()) }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, token: String, user: String) {
        let now = Instant::now();
        let mut map = self.map();
        let ttl = self.ttl;
        map.retain(|_, (_, used)| now.duration_since(*used) < ttl);
        if map.len() >= MAX_TOKENS {
            if let Some(oldest) = map.iter().min_by_key(|(_, (_, used))| *used).map(|(t, _)| t.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(token, (user, now));
    }

    /// The user of a live token, whose expiry moves to `ttl` from now.
    pub fn user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut map = self.map();
        let (user, used) = map.get_mut(token)?;
        if now.duration_since(*used) >= self.ttl {
            map.remove(token);
            return None;
        }
        *used = now;
        Some(user.clone())
    }

    pub fn forget(&self, forget: &Forget) {
        match forget {
            Forget::Nothing => {}
            Forget::User(name) => self.map().retain(|_, (user, _)| user != name),
            Forget::All => self.map().clear(),
        }
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: PermType, key: &str, end: &[u8]) -> Permission {
        Permission { perm_type: t, key: key.as_bytes().to_vec(), range_end: end.to_vec() }
    }

    fn state() -> AuthState {
        let mut s = AuthState::default();
        let mut f = Forget::Nothing;
        for r in [
            AuthRequest::UserAdd { name: "root".into(), password_hash: Some("h".into()) },
            AuthRequest::UserGrantRole { user: "root".into(), role: "root".into() },
            AuthRequest::UserAdd { name: "u".into(), password_hash: Some("h".into()) },
            AuthRequest::RoleAdd { name: "r".into() },
            AuthRequest::RoleAdd { name: "s".into() },
            AuthRequest::RoleGrantPermission { name: "r".into(), perm: Some(perm(PermType::Read, "/a/", b"/a0")) },
            AuthRequest::RoleGrantPermission { name: "s".into(), perm: Some(perm(PermType::ReadWrite, "/a0", b"/b")) },
            AuthRequest::RoleGrantPermission { name: "s".into(), perm: Some(perm(PermType::Write, "k", b"")) },
            AuthRequest::UserGrantRole { user: "u".into(), role: "r".into() },
            AuthRequest::UserGrantRole { user: "u".into(), role: "s".into() },
            AuthRequest::Enable { secret: vec![1] },
        ] {
            s.apply(r, 1, &mut f).expect("applies");
        }
        s
    }

    #[test]
    fn permissions_cover_keys_points_and_ranges_across_roles() {
        let s = state();
        let u = Some("u");
        assert_eq!(s.check_range(u, Access::Read, b"/a/x", b""), Ok(()));
        assert_eq!(s.check_range(u, Access::Write, b"/a/x", b""), Err(AuthError::PermissionDenied));
        // [/a/, /b) is covered by r's [/a/, /a0) and s's [/a0, /b) together.
        assert_eq!(s.check_range(u, Access::Read, b"/a/", b"/b"), Ok(()));
        assert_eq!(s.check_range(u, Access::Read, b"/a/", b"/b\0"), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(u, Access::Read, b"/a/", b"\0"), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(u, Access::Write, b"k", b""), Ok(()));
        assert_eq!(s.check_range(u, Access::Write, b"k", b"k\0"), Ok(()));
        assert_eq!(s.check_range(u, Access::Write, b"k", b"l"), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(u, Access::Read, b"/c", b""), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_range(Some("root"), Access::Write, b"\0", b"\0"), Ok(()));
        assert_eq!(s.check_range(None, Access::Read, b"/a/x", b""), Err(AuthError::UserEmpty));
        assert_eq!(s.check_range(Some("nobody"), Access::Read, b"/a/x", b""), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_admin(u), Err(AuthError::PermissionDenied));
        assert_eq!(s.check_admin(Some("nobody")), Err(AuthError::UserNotFound));
        assert_eq!(s.check_admin(Some("root")), Ok(()));
    }

    #[test]
    fn txns_are_checked_in_both_branches_and_nested() {
        let s = state();
        let u = Some("u");
        let put = |key: &str| RequestOp::Put(crate::store::mvcc::PutRequest { key: key.into(), ..Default::default() });
        let mut none = |_| Vec::new();
        let ok = TxnRequest { compare: vec![], success: vec![put("k")], failure: vec![put("/a0x")] };
        assert_eq!(s.check_txn(u, &ok, &mut none), Ok(()));
        let failure_branch = TxnRequest { failure: vec![put("/a/x")], ..ok.clone() };
        assert_eq!(s.check_txn(u, &failure_branch, &mut none), Err(AuthError::PermissionDenied));
        let nested = TxnRequest { success: vec![RequestOp::Txn(failure_branch)], ..Default::default() };
        assert_eq!(s.check_txn(u, &nested, &mut none), Err(AuthError::PermissionDenied));
        let leased = TxnRequest {
            success: vec![RequestOp::Put(crate::store::mvcc::PutRequest {
                key: "k".into(),
                lease: 7,
                ..Default::default()
            })],
            ..Default::default()
        };
        assert_eq!(s.check_txn(u, &leased, &mut |_| vec![b"/a/held".to_vec()]), Err(AuthError::PermissionDenied));
    }

    #[test]
    fn management_follows_etcds_rules() {
        let mut s = state();
        let mut f = Forget::Nothing;
        let before = s.revision;
        assert_eq!(
            s.apply(AuthRequest::UserDelete { name: "root".into() }, 9, &mut f),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(AuthRequest::UserRevokeRole { name: "root".into(), role: "root".into() }, 9, &mut f),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(AuthRequest::RoleDelete { role: "root".into() }, 9, &mut f),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(AuthRequest::UserAdd { name: "u".into(), password_hash: None }, 9, &mut f),
            Err(AuthError::UserAlreadyExist)
        );
        assert_eq!(
            s.apply(AuthRequest::UserGrantRole { user: "u".into(), role: "x".into() }, 9, &mut f),
            Err(AuthError::RoleNotFound)
        );
        assert_eq!(
            s.apply(
                AuthRequest::RoleGrantPermission { name: "r".into(), perm: Some(perm(PermType::Read, "", b"")) },
                9,
                &mut f
            ),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert_eq!(s.revision, before, "refused changes leave the revision");
        assert_eq!(
            s.apply(AuthRequest::Authenticate { name: "u".into(), token: "abc".into(), revision: before }, 9, &mut f),
            Ok(AuthOutcome::Token("abc.9".into()))
        );
        assert_eq!(
            s.apply(
                AuthRequest::Authenticate { name: "u".into(), token: "abc".into(), revision: before - 1 },
                9,
                &mut f
            ),
            Err(AuthError::Failed)
        );
        s.apply(AuthRequest::RoleDelete { role: "s".into() }, 9, &mut f).expect("deletes");
        assert_eq!(s.users["u"].roles, vec!["r".to_string()], "a deleted role leaves its users");
        s.apply(AuthRequest::UserDelete { name: "u".into() }, 9, &mut f).expect("deletes");
        assert_eq!(f, Forget::User("u".into()));
        s.apply(AuthRequest::Disable, 9, &mut f).expect("disables");
        assert_eq!(f, Forget::All);
        assert_eq!(s.check_range(None, Access::Write, b"any", b""), Ok(()), "everything is allowed with auth off");
    }

    #[test]
    fn tokens_expire_slide_and_are_forgotten() {
        let tokens = Tokens::new(Duration::from_millis(300));
        tokens.insert("a.1".into(), "u".into());
        tokens.insert("b.2".into(), "v".into());
        assert_eq!(tokens.user("a.1").as_deref(), Some("u"));
        tokens.forget(&Forget::User("u".into()));
        assert_eq!(tokens.user("a.1"), None);
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(tokens.user("b.2"), None, "expired");
    }
}

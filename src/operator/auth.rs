//! Auth of a cluster with `spec.auth` (issue 16, DESIGN.md §6), as pure functions: which Secret
//! holds root's password, reading the password from it, a new Secret with a random password
//! when there is none, and what `status.auth` says.
//!
//! The operator manages auth from the moment `spec.auth` is set until auth is off again after
//! it was removed: in between `status.auth` names the Secret, so that the operator can still
//! call as root to turn auth off. Auth that someone turned on by hand, without `spec.auth`, is
//! never the operator's.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::ResourceExt;
use ring::rand::{SecureRandom, SystemRandom};

use super::builders;
use super::crd::{AuthStatus, RaftCluster, RaftClusterStatus, SecretKeyRef};
use crate::client::Credentials;

/// The user the operator calls as, and the role it holds: etcd's `root`.
pub const ROOT: &str = "root";
/// How many characters a generated password has (letters and digits: about 190 bits).
pub const GENERATED_PASSWORD_CHARS: usize = 32;

/// The Secret whose password the operator uses as root: `spec.auth`'s, or after `spec.auth` was
/// removed, the one `status.auth` recorded while auth is still on.
pub fn root_secret(cluster: &RaftCluster) -> Option<&SecretKeyRef> {
    if let Some(auth) = &cluster.spec.auth {
        return Some(&auth.root_password_secret);
    }
    let status = cluster.status.as_ref()?.auth.as_ref()?;
    status.enabled.then_some(status.root_password_secret.as_ref()).flatten()
}

/// Whether auth should be on: `Some(true)` with `spec.auth`, `Some(false)` when it was removed
/// and the operator still manages auth, `None` when auth is not the operator's (the planner's
/// `Observed::auth`).
pub fn wanted(cluster: &RaftCluster) -> Option<bool> {
    match cluster.spec.auth {
        Some(_) => Some(true),
        None => root_secret(cluster).map(|_| false),
    }
}

/// root's credentials from the Secret (`None`: it does not exist yet). A Secret without the key,
/// or whose value is empty or not UTF-8, is an error that names what to fix.
pub fn credentials(secret: Option<&Secret>, reference: &SecretKeyRef) -> Result<Option<Credentials>, String> {
    let Some(secret) = secret else { return Ok(None) };
    let name = secret.name_any();
    let value = secret.data.as_ref().and_then(|d| d.get(&reference.key)).map(|v| v.0.as_slice());
    let password = match value {
        None => return Err(format!("Secret {name} has no key {:?} for root's password", reference.key)),
        Some([]) => return Err(format!("Secret {name}: root's password under {:?} is empty", reference.key)),
        Some(bytes) => std::str::from_utf8(bytes)
            .map_err(|_| format!("Secret {name}: root's password under {:?} is not UTF-8", reference.key))?,
    };
    Ok(Some(Credentials { name: ROOT.to_string(), password: password.to_string() }))
}

/// A new Secret `reference.name` holding a random password under `reference.key`, owned by the
/// cluster (so it goes when the cluster is deleted).
pub fn generated_secret(cluster: &RaftCluster, reference: &SecretKeyRef) -> Result<Secret, String> {
    let mut meta = builders::object_meta(cluster, reference.name.clone()).map_err(|e| e.to_string())?;
    meta.annotations = None;
    let password = random_password()?;
    Ok(Secret {
        metadata: meta,
        type_: Some("Opaque".to_string()),
        data: Some([(reference.key.clone(), ByteString(password.into_bytes()))].into_iter().collect()),
        ..Secret::default()
    })
}

/// [`GENERATED_PASSWORD_CHARS`] letters and digits from the system's randomness.
fn random_password() -> Result<String, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let rng = SystemRandom::new();
    let mut password = String::with_capacity(GENERATED_PASSWORD_CHARS);
    // Rejection sampling keeps every character equally likely (248 = 4 * 62); bounded, since a
    // byte is rejected with probability 8/256.
    for _ in 0..GENERATED_PASSWORD_CHARS * 64 {
        if password.len() == GENERATED_PASSWORD_CHARS {
            break;
        }
        let mut byte = [0u8; 1];
        rng.fill(&mut byte).map_err(|_| "no randomness available for root's password".to_string())?;
        if byte[0] < 248 {
            password.push(char::from(ALPHABET[usize::from(byte[0] % 62)]));
        }
    }
    if password.len() != GENERATED_PASSWORD_CHARS {
        return Err("the system's randomness kept repeating itself".to_string());
    }
    Ok(password)
}

/// `status.auth` after this observation: auth as the leader reports it (`leader_auth`; unknown
/// keeps what was reported before), and the Secret the operator uses as root while it manages
/// auth. `None` when auth is not the operator's and never was reported on.
pub fn status(cluster: &RaftCluster, previous: &RaftClusterStatus, leader_auth: Option<bool>) -> Option<AuthStatus> {
    let before = previous.auth.as_ref();
    let enabled = leader_auth.or(before.map(|a| a.enabled)).unwrap_or(false);
    let root_password_secret = match &cluster.spec.auth {
        Some(auth) => Some(auth.root_password_secret.clone()),
        None if enabled => before.and_then(|a| a.root_password_secret.clone()),
        None => None,
    };
    if cluster.spec.auth.is_none() && root_password_secret.is_none() && before.is_none() {
        return None;
    }
    Some(AuthStatus { enabled, root_password_secret })
}

#[cfg(test)]
mod tests;

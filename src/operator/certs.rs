//! The certificates of a cluster with `spec.tls` (issue 16, DESIGN.md §6), as pure functions:
//! what each certificate is for (its Secret, common name and host names), the Secrets of the
//! `auto` issuer and when they are due for renewal, and the cert-manager `Certificate`s of the
//! `certManager` issuer. Both issuers end in the same Secrets, in cert-manager's format
//! (`kubernetes.io/tls`: `tls.crt`, `tls.key`, `ca.crt`), so the StatefulSet mounts them the
//! same way whichever issued them.
//!
//! Every member has a certificate of its own, issued for its DNS names only, so that with
//! `--peer-client-cert-auth` one member cannot speak for another. A StatefulSet's pods share one
//! template, so every pod mounts the certificates of all [`MAX_REPLICAS`] possible members (one
//! projected volume, `<member>.crt` and `<member>.key`) and picks its own by its name.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::ResourceExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::builders::{self, BuildError};
use super::crd::{IssuerRef, RaftCluster, DEFAULT_CERTIFICATE_DAYS};
use super::{member_name, MAX_REPLICAS};
use crate::base::pki::{Authority, Issued, Validity};

/// The keys of a TLS Secret, as cert-manager writes them.
pub const KEY_CERT: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const KEY_CA: &str = "ca.crt";
/// The CA Secret's private key (`auto` only).
pub const KEY_CA_KEY: &str = "ca.key";
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";

/// The user (common name) of the client certificate for applications: with `--client-cert-auth`
/// it is the etcd user such a client acts as.
pub const CLIENT_USER: &str = "client";
/// The operator's own certificate: root, which membership changes need once auth is on.
pub const OPERATOR_USER: &str = "root";

/// The CA of `auto` is valid this long; the other certificates `spec.tls.auto.certificateDays`.
pub const CA_SECONDS: i64 = 10 * 365 * 86_400;

pub fn ca_secret_name(cluster: &RaftCluster) -> String {
    format!("{}-ca", cluster.name_any())
}

pub fn member_secret_name(cluster: &RaftCluster, ordinal: u32) -> String {
    format!("{}-tls", member_name(&cluster.name_any(), ordinal))
}

/// The Secret applications mount to reach the cluster (the status names it).
pub fn client_secret_name(cluster: &RaftCluster) -> String {
    client_secret_name_of(&cluster.name_any())
}

/// The same for the cluster named `cluster`.
pub fn client_secret_name_of(cluster: &str) -> String {
    format!("{cluster}-client-tls")
}

pub fn operator_secret_name(cluster: &RaftCluster) -> String {
    format!("{}-operator-tls", cluster.name_any())
}

/// One certificate the cluster needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRequest {
    /// The Secret it lives in.
    pub secret: String,
    pub common_name: String,
    /// Its subject alternative names (host names and IP addresses).
    pub names: Vec<String>,
}

/// Every certificate of the cluster: one per possible member (its own DNS names, the client
/// Service's, and loopback for calls a member makes to itself), the applications' client
/// certificate and the operator's.
pub fn requests(cluster: &RaftCluster) -> Result<Vec<CertRequest>, BuildError> {
    let namespace = cluster.namespace().ok_or_else(|| BuildError::MissingNamespace(cluster.name_any()))?;
    let headless = builders::headless_service_name(cluster);
    let service = builders::client_service_name(cluster);
    let mut out: Vec<CertRequest> = (0..MAX_REPLICAS)
        .map(|ordinal| {
            let member = member_name(&cluster.name_any(), ordinal);
            let names = vec![
                builders::member_host(cluster, &namespace, &member),
                format!("{member}.{headless}.{namespace}.svc.cluster.local"),
                format!("{member}.{headless}.{namespace}"),
                format!("{member}.{headless}"),
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
                format!("{service}.{namespace}"),
                service.clone(),
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ];
            CertRequest { secret: member_secret_name(cluster, ordinal), common_name: member, names }
        })
        .collect();
    out.push(CertRequest { secret: client_secret_name(cluster), common_name: CLIENT_USER.into(), names: vec![] });
    out.push(CertRequest { secret: operator_secret_name(cluster), common_name: OPERATOR_USER.into(), names: vec![] });
    Ok(out)
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = &secret.data.as_ref()?.get(key)?.0;
    String::from_utf8(bytes.clone()).ok()
}

fn secret_of(cluster: &RaftCluster, name: String, type_: &str, data: &[(&str, &str)]) -> Result<Secret, BuildError> {
    let mut meta = builders::object_meta(cluster, name)?;
    meta.annotations = None;
    Ok(Secret {
        metadata: meta,
        type_: Some(type_.to_string()),
        data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Secret::default()
    })
}

/// The `auto` CA: read from its Secret, or `None` when there is none yet. A Secret that does
/// not hold a CA and its key is an error, never replaced: every certificate chains to it.
pub fn read_ca(secret: Option<&Secret>) -> Result<Option<Authority>, String> {
    let Some(secret) = secret else { return Ok(None) };
    let name = secret.name_any();
    let (Some(cert), Some(key)) = (text(secret, KEY_CA), text(secret, KEY_CA_KEY)) else {
        return Err(format!(
            "Secret {name} lacks {KEY_CA} or {KEY_CA_KEY}; restore it, or delete it to start a new CA"
        ));
    };
    Authority::from_pem(&cert, &key).map(Some).map_err(|e| format!("Secret {name}: {e}"))
}

/// A new CA for the cluster, valid for [`CA_SECONDS`] from `now`, and its Secret.
pub fn mint_ca(cluster: &RaftCluster, now: i64) -> Result<(Authority, Secret), String> {
    let name = format!("kuberaft {}/{} CA", cluster.namespace().unwrap_or_default(), cluster.name_any());
    let ca = Authority::mint(&name, Some(Validity::starting(now, CA_SECONDS))).map_err(|e| e.to_string())?;
    let secret =
        secret_of(cluster, ca_secret_name(cluster), "Opaque", &[(KEY_CA, ca.cert_pem()), (KEY_CA_KEY, ca.key_pem())])
            .map_err(|e| e.to_string())?;
    Ok((ca, secret))
}

/// Why the certificate in `secret` must be issued (again) for `request` under `ca`, or `None`
/// while it is good: it must exist, be readable, chain to this CA (the Secret's `ca.crt` is the
/// CA's), name every host, and have more than a third of its validity left.
pub fn due(secret: Option<&Secret>, request: &CertRequest, ca_pem: &str, now: i64) -> Option<String> {
    let Some(secret) = secret else { return Some("missing".to_string()) };
    let (Some(cert), Some(_), Some(ca)) = (text(secret, KEY_CERT), text(secret, KEY_KEY), text(secret, KEY_CA)) else {
        return Some("incomplete".to_string());
    };
    if ca.trim() != ca_pem.trim() {
        return Some("issued by another CA".to_string());
    }
    let Ok(der) = CertificateDer::from_pem_slice(cert.as_bytes()) else { return Some("unreadable".to_string()) };
    if crate::base::tls::common_name(&der).as_deref() != Some(request.common_name.as_str()) {
        return Some("issued to another name".to_string());
    }
    if let Some(host) = request.names.iter().find(|host| crate::base::tls::certificate_names(&der, host).is_err()) {
        return Some(format!("not issued for {host}"));
    }
    let Some((not_before, not_after)) = crate::base::tls::validity(&der) else {
        return Some("its validity is unreadable".to_string());
    };
    (now >= renew_at(not_before, not_after))
        .then(|| format!("expiring at {not_after} (renewed from {})", renew_at(not_before, not_after)))
}

/// When a certificate valid from `not_before` to `not_after` is renewed: with a third of its
/// validity left (cert-manager's default too).
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_after - (not_after - not_before).max(0) / 3
}

/// Issues `request` under `ca` for `spec.tls.auto.certificateDays` from `now`: its Secret.
pub fn issue(cluster: &RaftCluster, ca: &Authority, request: &CertRequest, now: i64) -> Result<Secret, String> {
    let days = cluster
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.auto.as_ref())
        .map_or(DEFAULT_CERTIFICATE_DAYS, |a| a.certificate_days);
    let names: Vec<&str> = request.names.iter().map(String::as_str).collect();
    let validity = Validity::starting(now, i64::from(days) * 86_400);
    let Issued { cert_pem, key_pem } =
        ca.issue_for(&request.common_name, &names, Some(validity)).map_err(|e| e.to_string())?;
    secret_of(
        cluster,
        request.secret.clone(),
        SECRET_TYPE_TLS,
        &[(KEY_CERT, &cert_pem), (KEY_KEY, &key_pem), (KEY_CA, ca.cert_pem())],
    )
    .map_err(|e| e.to_string())
}

/// The notAfter (unix seconds) of every certificate of the cluster that `secrets` hold, by
/// Secret: each one [`requests`] names (`tls.crt`), whichever issuer filled it, and the `auto`
/// issuer's CA (`ca.crt` of its Secret). A Secret that is missing or unreadable is left out.
pub fn expiries(cluster: &RaftCluster, secrets: &BTreeMap<String, Secret>) -> BTreeMap<String, i64> {
    let Ok(requests) = requests(cluster) else { return BTreeMap::new() };
    let not_after = |secret: &Secret, key: &str| {
        let pem = text(secret, key)?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
        crate::base::tls::validity(&der).map(|(_, not_after)| not_after)
    };
    let mut out = BTreeMap::new();
    for request in &requests {
        if let Some(time) = secrets.get(&request.secret).and_then(|s| not_after(s, KEY_CERT)) {
            out.insert(request.secret.clone(), time);
        }
    }
    let ca = ca_secret_name(cluster);
    if let Some(time) = secrets.get(&ca).and_then(|s| not_after(s, KEY_CA)) {
        out.insert(ca, time);
    }
    out
}

/// The CA, certificate and key of a TLS Secret, for a client in memory.
pub fn identity(secret: &Secret) -> Option<crate::client::InlineTls> {
    let pem = |key: &str| {
        Some(crate::base::tls::Pem {
            origin: format!("Secret {}/{key}", secret.name_any()).into(),
            text: secret.data.as_ref()?.get(key)?.0.clone(),
        })
    };
    Some(crate::client::InlineTls { ca: pem(KEY_CA)?, cert: pem(KEY_CERT)?, key: pem(KEY_KEY)? })
}

/// cert-manager's `Certificate` API.
pub const CERTIFICATE_GROUP: &str = "cert-manager.io";
pub const CERTIFICATE_VERSION: &str = "v1";
pub const CERTIFICATE_KIND: &str = "Certificate";
pub const CERTIFICATE_PLURAL: &str = "certificates";

/// The cert-manager `Certificate` of `request` from `issuer`: an ECDSA key made anew at each
/// renewal, for serving and calling, valid as long as the `auto` issuer's by default, and a
/// Secret carrying the cluster's labels (so the operator finds it with the others).
pub fn certificate(
    cluster: &RaftCluster,
    request: &CertRequest,
    issuer: &IssuerRef,
) -> Result<serde_json::Value, BuildError> {
    let meta = builders::object_meta(cluster, request.secret.clone())?;
    let (dns, ips): (Vec<&String>, Vec<&String>) =
        request.names.iter().partition(|name| name.parse::<std::net::IpAddr>().is_err());
    let mut spec = serde_json::json!({
        "secretName": request.secret,
        "commonName": request.common_name,
        "duration": format!("{}h", DEFAULT_CERTIFICATE_DAYS * 24),
        "renewBefore": format!("{}h", DEFAULT_CERTIFICATE_DAYS * 24 / 3),
        "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
        "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        "secretTemplate": {"labels": builders::labels(cluster)},
    });
    if !dns.is_empty() {
        spec["dnsNames"] = serde_json::json!(dns);
    }
    if !ips.is_empty() {
        spec["ipAddresses"] = serde_json::json!(ips);
    }
    let meta = serde_json::to_value(meta).map_err(|e| BuildError::Encode(e.to_string()))?;
    Ok(serde_json::json!({
        "apiVersion": format!("{CERTIFICATE_GROUP}/{CERTIFICATE_VERSION}"),
        "kind": CERTIFICATE_KIND,
        "metadata": meta,
        "spec": spec,
    }))
}

/// Secrets by name.
pub fn by_name(secrets: Vec<Secret>) -> BTreeMap<String, Secret> {
    secrets.into_iter().map(|s| (s.name_any(), s)).collect()
}

#[cfg(test)]
mod tests;

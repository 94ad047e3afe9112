//! TLS for both ports and for calls to other members (issue 16), with rustls on ring, from PEM
//! files named by etcd's flags: a certificate chain, its key, and the CA that clients (or
//! peers) must chain to when their certificates are required.
//!
//! The files are read again when they change (`Reloading`): each new connection asks for the
//! current configuration, which looks at the files' modification times and sizes at most once
//! per [`RELOAD_CHECK`]. A set of files that does not load (a rotation caught half-written) keeps
//! the configuration that worked, and says why in the log; connections already open keep the
//! certificates they started with, as etcd's do.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// How often a connection may make the files be looked at again.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// A PEM file is at most this large (a chain of a few certificates, or a key).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// ALPN: HTTP/2 first (gRPC clients require it over TLS), then HTTP/1.1.
const ALPN_SERVER: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The files of one side of TLS, as etcd's flags name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--cert-file` / `--peer-cert-file`: the chain, leaf first.
    pub cert: PathBuf,
    /// `--key-file` / `--peer-key-file`.
    pub key: PathBuf,
    /// `--trusted-ca-file` / `--peer-trusted-ca-file`: the CA the other side's certificates must
    /// chain to (clients' and peers' when required; the servers' we call).
    pub trusted_ca: Option<PathBuf>,
    /// `--client-cert-auth` / `--peer-client-cert-auth`: a connection must present a
    /// certificate that chains to `trusted_ca`.
    pub client_cert_auth: bool,
}

/// Why TLS could not be set up from the files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, detail: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), detail: detail.to_string() }
}

/// Reads a PEM file whole, refusing one too large to be a certificate chain or a key.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let size = fs::metadata(path).map_err(|e| file_error(path, e))?.len();
    if size > MAX_PEM_BYTES {
        return Err(file_error(path, format!("{size} bytes is too large for a PEM file")));
    }
    fs::read(path).map_err(|e| file_error(path, e))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no certificate"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| file_error(path, format!("holds no readable private key: {e}")))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's configuration from its files: its certificate, and when `client_cert_auth`, the
/// CA every client's certificate must chain to.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&files.trusted_ca, files.client_cert_auth) {
        (Some(ca), true) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                .build()
                .map_err(|e| TlsError::Config(format!("cannot check client certificates: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => return Err(TlsError::Config("client certificate auth needs a trusted CA file".into())),
        (_, false) => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| file_error(&files.key, format!("does not go with {}: {e}", files.cert.display())))?;
    config.alpn_protocols = ALPN_SERVER.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A caller's configuration from its files: the servers it calls must chain to `trusted_ca`,
/// and it presents its own certificate (peers require one of each other). `alpn`: the
/// protocols it speaks (HTTP/1.1 for the peer transport, h2 for gRPC).
pub fn client_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let Some(ca) = &files.trusted_ca else {
        return Err(TlsError::Config(format!(
            "calling other members over TLS needs a trusted CA file beside {}",
            files.cert.display()
        )));
    };
    let roots = load_roots(ca)?;
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| file_error(&files.key, format!("does not go with {}: {e}", files.cert.display())))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// What identifies a version of the files: each one's modification time and size.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    [Some(&files.cert), Some(&files.key), files.trusted_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

struct Current<T> {
    config: Arc<T>,
    stamp: Stamp,
    checked: Instant,
    /// The last reload failure logged, so a rotation caught half-written is said once.
    failed: Option<TlsError>,
}

/// How a configuration is built from its files.
type Build<T> = Box<dyn Fn(&TlsFiles) -> Result<T, TlsError> + Send + Sync>;

/// A configuration rebuilt from its files when they change.
pub struct Reloading<T> {
    files: TlsFiles,
    build: Build<T>,
    current: Mutex<Current<T>>,
}

impl<T> Reloading<T> {
    /// Loads the files now: a member does not start with TLS it cannot set up.
    pub fn new(
        files: TlsFiles,
        build: impl Fn(&TlsFiles) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, TlsError> {
        let stamp = stamp(&files);
        let config = Arc::new(build(&files)?);
        let current = Mutex::new(Current { config, stamp, checked: Instant::now(), failed: None });
        Ok(Reloading { files, build: Box::new(build), current })
    }

    /// The configuration for a new connection: rebuilt first if the files changed since the
    /// last look (at most one look per [`RELOAD_CHECK`]).
    pub fn current(&self) -> Arc<T> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.checked.elapsed() >= RELOAD_CHECK {
            current.checked = Instant::now();
            let now = stamp(&self.files);
            if now != current.stamp {
                match (self.build)(&self.files) {
                    Ok(config) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS files changed; new connections use them");
                        current.config = Arc::new(config);
                        current.stamp = now;
                        current.failed = None;
                    }
                    Err(e) => {
                        if current.failed.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones");
                            current.failed = Some(e);
                        }
                    }
                }
            }
        }
        current.config.clone()
    }
}

pub type ServerTls = Reloading<ServerConfig>;
pub type ClientTls = Reloading<ClientConfig>;

impl Reloading<ServerConfig> {
    pub fn server(files: TlsFiles) -> Result<ServerTls, TlsError> {
        Reloading::new(files, server_config)
    }
}

impl Reloading<ClientConfig> {
    /// For HTTP/1.1 calls (the peer transport, the forwarder, a starting member's questions).
    pub fn http1(files: TlsFiles) -> Result<ClientTls, TlsError> {
        Reloading::new(files, |f| client_config(f, &[b"http/1.1"]))
    }

    /// For HTTP/2 calls (gRPC to the leader).
    pub fn h2(files: TlsFiles) -> Result<ClientTls, TlsError> {
        Reloading::new(files, |f| client_config(f, &[b"h2"]))
    }
}

/// The certificate a client presented on a TLS connection (already checked against the CA),
/// in each request's extensions.
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub Arc<CertificateDer<'static>>);

/// Whether `cert` names `host` (a DNS name or an IP address) among its subject alternative
/// names: the check a client makes of a server, made of a peer by the member it calls.
pub fn certificate_names(cert: &CertificateDer<'_>, host: &str) -> Result<(), String> {
    let name = ServerName::try_from(host).map_err(|e| format!("{host:?} is not a host name: {e}"))?;
    let parsed =
        rustls::server::ParsedCertificate::try_from(cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    rustls::client::verify_server_name(&parsed, &name).map_err(|_| format!("the certificate is not issued for {host}"))
}

/// Writes a certificate of `ca` for 127.0.0.1 (`<name>.pem`, `<name>-key.pem`) and `ca`'s own
/// (`<name>-ca.pem`) in `dir`, for tests.
#[cfg(test)]
pub(crate) fn test_files(dir: &Path, name: &str, ca: &crate::base::pki::Authority, client_cert_auth: bool) -> TlsFiles {
    let issued = ca.issue(name, &["127.0.0.1"]).expect("issue");
    let files = TlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
        trusted_ca: Some(dir.join(format!("{name}-ca.pem"))),
        client_cert_auth,
    };
    fs::write(&files.cert, &issued.cert_pem).expect("write");
    fs::write(&files.key, &issued.key_pem).expect("write");
    fs::write(files.trusted_ca.as_ref().expect("ca"), ca.cert_pem()).expect("write");
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::pki::Authority;

    fn files_in(dir: &Path, ca: &Authority, client_cert_auth: bool) -> TlsFiles {
        test_files(dir, "member", ca, client_cert_auth)
    }

    #[test]
    fn bad_files_are_refused_with_their_path_and_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Authority::new("ca").expect("ca");
        let files = files_in(dir.path(), &ca, true);
        assert!(server_config(&files).is_ok());
        assert!(client_config(&files, &[b"http/1.1"]).is_ok());

        let missing = TlsFiles { cert: dir.path().join("nothing.pem"), ..files.clone() };
        let e = server_config(&missing).expect_err("missing");
        assert!(matches!(&e, TlsError::File { path, .. } if path.ends_with("nothing.pem")), "{e}");

        let garbage = dir.path().join("garbage.pem");
        fs::write(&garbage, "not a certificate").expect("write");
        let e = server_config(&TlsFiles { cert: garbage.clone(), ..files.clone() }).expect_err("garbage");
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        let e = server_config(&TlsFiles { key: garbage, ..files.clone() }).expect_err("garbage key");
        assert!(e.to_string().contains("no readable private key"), "{e}");

        // A key that is not the certificate's.
        let other = ca.issue("other", &["127.0.0.1"]).expect("issue");
        let wrong_key = dir.path().join("other-key.pem");
        fs::write(&wrong_key, &other.key_pem).expect("write");
        let e = server_config(&TlsFiles { key: wrong_key, ..files.clone() }).expect_err("mismatch");
        assert!(e.to_string().contains("does not go with"), "{e}");

        let e = server_config(&TlsFiles { trusted_ca: None, ..files.clone() }).expect_err("no CA");
        assert_eq!(e, TlsError::Config("client certificate auth needs a trusted CA file".into()));
        let e = client_config(&TlsFiles { trusted_ca: None, ..files }, &[]).expect_err("no CA");
        assert!(e.to_string().contains("needs a trusted CA file"), "{e}");
    }

    #[test]
    fn changed_files_are_used_from_the_next_look_and_broken_ones_keep_the_last_good() {
        let dir = tempfile::tempdir().expect("dir");
        let files = files_in(dir.path(), &Authority::new("first").expect("ca"), true);
        let tls = ServerTls::server(files.clone()).expect("loads");
        let first = tls.current();
        assert!(Arc::ptr_eq(&first, &tls.current()), "unchanged files: the same configuration");

        // Half-written: the certificate is garbage for now.
        fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ntruncat").expect("write");
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(100));
        assert!(Arc::ptr_eq(&first, &tls.current()), "broken files keep the last good configuration");

        // Rotated whole (a new CA too): the next look loads it.
        files_in(dir.path(), &Authority::new("second").expect("ca"), true);
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(100));
        assert!(!Arc::ptr_eq(&first, &tls.current()), "rotated files: a new configuration");
    }

    #[test]
    fn a_certificate_names_the_hosts_it_was_issued_for_and_no_other() {
        let ca = Authority::new("ca").expect("ca");
        let issued = ca.issue("etcd-0", &["etcd-0.etcd.default.svc", "127.0.0.1"]).expect("issue");
        let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        assert_eq!(certificate_names(&cert, "127.0.0.1"), Ok(()));
        assert_eq!(certificate_names(&cert, "etcd-0.etcd.default.svc"), Ok(()));
        assert!(certificate_names(&cert, "127.0.0.2").is_err());
        let e = certificate_names(&cert, "etcd-1.etcd.default.svc").expect_err("another member");
        assert_eq!(e, "the certificate is not issued for etcd-1.etcd.default.svc");
    }
}

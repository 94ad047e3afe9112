//! TLS for both ports and for calls to other members (issue 16), with the configurations
//! `base::tls` builds from PEM files named by etcd's flags: a certificate chain, its key, and
//! the CA that clients (or peers) must chain to when their certificates are required.
//!
//! The files are read again when they change (`Reloading`): each new connection asks for the
//! current configuration, which looks at the files' modification times and sizes at most once
//! per [`RELOAD_CHECK`]. A set of files that does not load (a rotation caught half-written) keeps
//! the configuration that worked, and says why in the log; connections already open keep the
//! certificates they started with, as etcd's do.

use std::fs;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ServerConfig};

use crate::base::tls::{client_config, server_config, TlsError, TlsFiles};

/// How often a connection may make the files be looked at again.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::pki::Authority;

    fn files_in(dir: &std::path::Path, ca: &Authority, client_cert_auth: bool) -> TlsFiles {
        crate::base::tls::test_files(dir, "member", ca, client_cert_auth)
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
}

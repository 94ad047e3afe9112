//! TLS configurations built from PEM files (issue 16), with rustls on ring: a server's (a
//! member's ports), a member's for calling other members, and a client's (the Rust client and
//! the CLI, etcdctl's `--cacert`, `--cert` and `--key`). One place reads certificate, key and CA
//! files, so every side refuses the same bad files with the same words. `http::tls` reloads
//! these when their files change.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

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
pub fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let size = fs::metadata(path).map_err(|e| file_error(path, e))?.len();
    if size > MAX_PEM_BYTES {
        return Err(file_error(path, format!("{size} bytes is too large for a PEM file")));
    }
    fs::read(path).map_err(|e| file_error(path, e))
}

/// PEM text and where it came from (a file, or a Secret's key), which errors name. Its Debug
/// shows the origin only: the text may be a private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    pub origin: PathBuf,
    pub text: Vec<u8>,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl Pem {
    /// The text of the file at `path`.
    pub fn read(path: &Path) -> Result<Pem, TlsError> {
        Ok(Pem { origin: path.to_path_buf(), text: read_pem(path)? })
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(&Pem::read(path)?)
}

fn parse_certs(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = &pem.origin;
    let certs = CertificateDer::pem_slice_iter(&pem.text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no certificate"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    parse_key(&Pem::read(path)?)
}

fn parse_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&pem.text)
        .map_err(|e| file_error(&pem.origin, format!("holds no readable private key: {e}")))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    parse_roots(&Pem::read(path)?)
}

fn parse_roots(pem: &Pem) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(pem)? {
        roots.add(cert).map_err(|e| file_error(&pem.origin, format!("not a usable CA certificate: {e}")))?;
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
    caller_config(ca, Some((&files.cert, &files.key)), alpn)
}

/// A caller's configuration that trusts no server: for an HTTP client that TLS is built into
/// (reqwest, with no crypto provider of its own) but whose endpoints are all `http://`.
pub fn trusting_no_server() -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}

/// Makes ring the process's default rustls provider, for code that builds TLS configurations
/// without naming one (reqwest's default client, which the tests build). Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A caller's configuration: the servers it calls must chain to the CA in `ca`, and it presents
/// the certificate and key in `identity`, if any.
pub fn caller_config(ca: &Path, identity: Option<(&Path, &Path)>, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let identity = match identity {
        Some((cert, key)) => Some((Pem::read(cert)?, Pem::read(key)?)),
        None => None,
    };
    caller_config_pem(&Pem::read(ca)?, identity.as_ref().map(|(cert, key)| (cert, key)), alpn)
}

/// The same from PEM text in memory (the operator's, read from a Secret).
pub fn caller_config_pem(ca: &Pem, identity: Option<(&Pem, &Pem)>, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(parse_roots(ca)?);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(parse_certs(cert)?, parse_key(key)?)
            .map_err(|e| file_error(&key.origin, format!("does not go with {}: {e}", cert.origin.display())))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Whether `cert` names `host` (a DNS name or an IP address) among its subject alternative
/// names: the check a client makes of a server, made of a peer by the member it calls.
pub fn certificate_names(cert: &CertificateDer<'_>, host: &str) -> Result<(), String> {
    let name = ServerName::try_from(host).map_err(|e| format!("{host:?} is not a host name: {e}"))?;
    let parsed =
        rustls::server::ParsedCertificate::try_from(cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    rustls::client::verify_server_name(&parsed, &name).map_err(|_| format!("the certificate is not issued for {host}"))
}

/// One DER element at the start of `bytes`: (tag, contents, the rest).
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const DER_SEQUENCE: u8 = 0x30;

/// The fields of a DER certificate's tbsCertificate from `validity` on: Certificate →
/// tbsCertificate → (version?, serial, signature, issuer, | validity, subject, ...).
fn from_validity(der: &[u8]) -> Option<&[u8]> {
    let (DER_SEQUENCE, cert, _) = der_element(der)? else { return None };
    let (DER_SEQUENCE, mut tbs, _) = der_element(cert)? else { return None };
    // The optional explicit version ([0]).
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs)?.2;
    }
    // serial, signature algorithm, issuer: skipped.
    for _ in 0..3 {
        tbs = der_element(tbs)?.2;
    }
    Some(tbs)
}

/// The subject's common name (CN) of a DER certificate, as etcd takes the user of a client
/// certificate (`VerifiedChains[0][0].Subject.CommonName`): `None` if it has none or cannot be
/// read. A small DER walk to the subject, then the first attribute with OID 2.5.4.3.
pub fn common_name(der: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let tbs = der_element(from_validity(der)?)?.2;
    let (DER_SEQUENCE, mut subject, _) = der_element(tbs)? else { return None };
    // At most as many attributes as the subject has bytes.
    while !subject.is_empty() {
        let (_, set, rest) = der_element(subject)?;
        subject = rest;
        let (DER_SEQUENCE, attribute, _) = der_element(set)? else { continue };
        let (0x06, oid, value) = der_element(attribute)? else { continue };
        if oid == CN {
            let (_, text, _) = der_element(value)?;
            return String::from_utf8(text.to_vec()).ok();
        }
    }
    None
}

/// A certificate's validity (notBefore, notAfter) in seconds since the Unix epoch, read from its
/// DER: `None` if it cannot be read. The operator renews what it issued from these.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (DER_SEQUENCE, validity, _) = der_element(from_validity(der)?)? else { return None };
    let (tag, before, rest) = der_element(validity)?;
    let not_before = asn1_time(tag, before)?;
    let (tag, after, _) = der_element(rest)?;
    Some((not_before, asn1_time(tag, after)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 23) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag 24), as X.509
/// writes them, in seconds since the Unix epoch.
fn asn1_time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let digits = |s: &str| -> Option<i64> { s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().ok())? };
    let (year, rest) = match (tag, text.len()) {
        (23, 12) => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (24, 14) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    let field = |at: usize| digits(rest.get(at..at + 2)?);
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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

    #[test]
    fn the_common_name_of_a_certificate_is_read_and_garbage_is_none() {
        let ca = Authority::new("ca").expect("ca");
        let issued = ca.issue("alice", &["127.0.0.1"]).expect("issue");
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        assert_eq!(common_name(&der).as_deref(), Some("alice"));
        for cut in 0..der.len() {
            assert_eq!(common_name(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(common_name(b"not a certificate"), None);
    }

    #[test]
    fn x509_times_read_as_unix_seconds_and_malformed_ones_are_none() {
        assert_eq!(asn1_time(23, b"700101000000Z"), Some(0));
        assert_eq!(asn1_time(23, b"270115083000Z"), Some(1_800_001_800));
        assert_eq!(asn1_time(24, b"20270115083000Z"), Some(1_800_001_800));
        assert_eq!(asn1_time(24, b"20500101000000Z"), Some(2_524_608_000));
        assert_eq!(asn1_time(23, b"491231235959Z"), Some(2_524_607_999), "UTCTime below 50 is 20YY");
        for bad in [&b"270115083000"[..], b"2701150830Z", b"27011508300xZ", b"271315083000Z", b""] {
            assert_eq!(asn1_time(23, bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(asn1_time(24, b"270115083000Z"), None, "GeneralizedTime has a four-digit year");
        assert_eq!(validity(b"not a certificate"), None);
    }

    #[test]
    fn bad_files_are_refused_with_their_path_and_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = Authority::new("ca").expect("ca");
        let files = test_files(dir.path(), "member", &ca, true);
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

//! Minting certificates (rcgen, ring): a certificate authority and the certificates it signs,
//! as PEM. For `kuberaft dev --tls`, the operator's `auto` issuer, and tests. What is minted is
//! checked by rustls like any other certificate (`http::tls`).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// Why a certificate could not be minted.
#[derive(Debug, thiserror::Error)]
#[error("cannot mint a certificate: {0}")]
pub struct PkiError(String);

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> PkiError {
        PkiError(e.to_string())
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// When a certificate is valid, in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// From `now` for `seconds`, starting an hour early so that clocks a little behind accept it.
    pub fn starting(now: i64, seconds: i64) -> Validity {
        Validity { not_before: now.saturating_sub(3600), not_after: now.saturating_add(seconds) }
    }

    fn apply(self, params: &mut CertificateParams) -> Result<(), PkiError> {
        let time = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t).map_err(|e| PkiError(format!("a validity of {t}: {e}")))
        };
        params.not_before = time(self.not_before)?;
        params.not_after = time(self.not_after)?;
        Ok(())
    }
}

/// A certificate authority: its own certificate and the key it signs with.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

/// The parameters of a CA named `name`: the same each time, so that an authority read back
/// from its PEM signs with the subject its certificate has.
fn ca_params(name: &str) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

impl Authority {
    /// A new self-signed CA named `name` (its common name).
    pub fn new(name: &str) -> Result<Authority, PkiError> {
        Authority::mint(name, None)
    }

    /// The same, valid only for `validity`.
    pub fn mint(name: &str, validity: Option<Validity>) -> Result<Authority, PkiError> {
        let mut params = ca_params(name)?;
        if let Some(validity) = validity {
            validity.apply(&mut params)?;
        }
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Authority { cert_pem: cert.pem(), key_pem: key.serialize_pem(), issuer: Issuer::new(ca_params(name)?, key) })
    }

    /// An authority minted before (by [`Authority::mint`]), from its certificate and key: it
    /// signs under the subject (common name) its certificate has. Refuses a key that is not the
    /// certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, PkiError> {
        use rcgen::PublicKeyData;
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError(format!("the CA certificate is not PEM: {e}")))?;
        let name = crate::base::tls::common_name(&der)
            .ok_or_else(|| PkiError("the CA certificate has no readable common name".to_string()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError(format!("the CA key is not a PEM key: {e}")))?;
        let public = key.subject_public_key_info();
        if !der.windows(public.len()).any(|window| window == public.as_slice()) {
            return Err(PkiError("the CA key is not the key of the CA certificate".to_string()));
        }
        Ok(Authority {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer: Issuer::new(ca_params(&name)?, key),
        })
    }

    /// The CA's certificate, for `--trusted-ca-file` and `--peer-trusted-ca-file`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, to keep it (the operator's CA Secret).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A certificate for `common_name`, valid for each of `names` (host names or IP addresses,
    /// as subject alternative names), for serving and for calling alike (etcd's members use
    /// one peer certificate both ways).
    pub fn issue(&self, common_name: &str, names: &[&str]) -> Result<Issued, PkiError> {
        self.issue_for(common_name, names, None)
    }

    /// The same, valid only for `validity`.
    pub fn issue_for(&self, common_name: &str, names: &[&str], validity: Option<Validity>) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into()?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        if let Some(validity) = validity {
            validity.apply(&mut params)?;
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
    }

    #[test]
    fn an_authority_read_back_from_its_pem_issues_certificates_its_certificate_verifies() {
        let now = 1_790_000_000;
        let ca = Authority::mint("kuberaft ns/etcd", Some(Validity::starting(now, 10 * 365 * 86_400))).expect("ca");
        let again = Authority::from_pem(ca.cert_pem(), ca.key_pem()).expect("read back");
        let issued =
            again.issue_for("etcd-0", &["etcd-0.etcd.ns.svc"], Some(Validity::starting(now, 86_400))).expect("issue");
        let leaf = der(&issued.cert_pem);
        assert_eq!(crate::base::tls::validity(&leaf), Some((now - 3600, now + 86_400)));
        assert_eq!(crate::base::tls::validity(&der(ca.cert_pem())), Some((now - 3600, now + 10 * 365 * 86_400)));
        // The chain verifies: the leaf names the CA's subject and carries its signature.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(ca.cert_pem())).expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let name = rustls::pki_types::ServerName::try_from("etcd-0.etcd.ns.svc").expect("name");
        let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs((now + 60) as u64));
        use rustls::client::danger::ServerCertVerifier;
        verifier.verify_server_cert(&leaf, &[], &name, &[], at).expect("the chain verifies");

        let other = Authority::new("other").expect("other");
        let e = Authority::from_pem(ca.cert_pem(), other.key_pem()).err().expect("a foreign key");
        assert!(e.to_string().contains("not the key of the CA certificate"), "{e}");
        assert!(Authority::from_pem("garbage", ca.key_pem()).is_err());
        assert!(Authority::from_pem(ca.cert_pem(), "garbage").is_err());
    }
}

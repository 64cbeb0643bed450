//! One certificate authority of the mesh: a root weft made, or a CA the operator gave (a root,
//! or an intermediate under the operator's root). It signs workload certificates from CSRs,
//! after checking that the CSR asks for exactly the SPIFFE ID allowed.

use super::IdentityError;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use weft_config::SpiffeId;
use x509_parser::prelude::FromDer;

/// How long a root weft makes is valid: long, as rotating it is an operator's decision.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far back a workload certificate's validity starts, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(60);

/// An authority as the store keeps it. The key is in the store (the data dir is the owner's
/// alone, like the admin token's).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AuthorityRecord {
    /// `sha256:<hex>` of the signing certificate.
    pub id: String,
    /// The signing certificate, then any CA certificates above it but the root, PEM.
    pub chain_pem: String,
    /// The certificate peers must trust (the root), PEM.
    pub anchor_pem: String,
    /// The signing key, PKCS#8 PEM.
    pub key_pem: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Given by the operator (`--ca-cert`), not made by weft.
    #[serde(default)]
    pub operator: bool,
}

/// An authority ready to sign.
pub struct Authority {
    pub record: AuthorityRecord,
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate's public key, to tell which authority signed a certificate.
    signing_spki: Vec<u8>,
    pub anchor: CertificateDer<'static>,
    /// The subject of the anchor and its validity end (Unix seconds), for the API.
    pub anchor_subject: String,
    pub anchor_not_after: u64,
}

/// A workload certificate just issued.
pub struct IssuedCertificate {
    /// Leaf first, then the authority's chain, PEM.
    pub chain_pem: String,
    pub not_after: u64,
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A certificate's time (whole seconds, as X.509 keeps them).
fn x509_time(time: SystemTime) -> Result<time::OffsetDateTime, IdentityError> {
    let seconds = i64::try_from(unix_seconds(time)).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| IdentityError::Internal(format!("a time: {e}")))
}

fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> IdentityError + '_ {
    move |error| IdentityError::Internal(format!("{what}: {error}"))
}

impl Authority {
    /// A new root for `trust_domain`.
    pub fn generate(trust_domain: &str, created_at_ms: u64) -> Result<Authority, IdentityError> {
        let key = KeyPair::generate().map_err(rcgen_error("a root key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("root parameters"))?;
        params.distinguished_name.push(DnType::OrganizationName, trust_domain);
        // Roots of one trust domain differ in name too, so a rotation's two roots are told apart.
        params.distinguished_name.push(DnType::CommonName, format!("weft mesh root {created_at_ms}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = x509_time(now() - BACKDATE)?;
        params.not_after = x509_time(now() + ROOT_LIFETIME)?;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(rcgen_error("the root"))?;
        let record = AuthorityRecord {
            id: fingerprint(cert.der()),
            chain_pem: cert.pem(),
            anchor_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            created_at_ms,
            operator: false,
        };
        Authority::load(record)
    }

    /// An operator's CA: `cert_pem` holds the signing CA certificate first, then the
    /// certificates above it up to the root (the last is what peers trust); `key_pem` its key.
    pub fn import(cert_pem: &str, key_pem: &str, created_at_ms: u64) -> Result<Authority, IdentityError> {
        let bad = |reason: String| IdentityError::BadCa(reason);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("the certificate file: {e}")))?;
        let (signing, anchor) = match (certs.first(), certs.last()) {
            (Some(first), Some(last)) => (first.clone(), last.clone()),
            _ => return Err(bad("the certificate file holds no PEM certificate".into())),
        };
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&signing).map_err(|e| bad(format!("the CA certificate: {e}")))?;
        if !parsed.is_ca() {
            return Err(bad("the first certificate is not a CA certificate (basicConstraints CA:TRUE)".into()));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad(format!("the key: {e}")))?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(bad("the key is not the CA certificate's key".into()));
        }
        // The chain sent with each certificate: everything but a self-signed root at the end.
        let self_signed = |der: &CertificateDer<'_>| {
            x509_parser::parse_x509_certificate(der).is_ok_and(|(_, c)| c.subject().as_raw() == c.issuer().as_raw())
        };
        let sent = if certs.len() > 1 && self_signed(&anchor) { &certs[..certs.len() - 1] } else { &certs[..] };
        let pem = |der: &CertificateDer<'_>| pem_of("CERTIFICATE", der);
        let record = AuthorityRecord {
            id: fingerprint(&signing),
            chain_pem: sent.iter().map(pem).collect(),
            anchor_pem: pem(&anchor),
            key_pem: key.serialize_pem(),
            created_at_ms,
            operator: true,
        };
        Authority::load(record)
    }

    /// An authority from its stored record.
    pub fn load(record: AuthorityRecord) -> Result<Authority, IdentityError> {
        let corrupt = |what: &str| IdentityError::Internal(format!("the stored authority {}: {what}", record.id));
        let key = KeyPair::from_pem(&record.key_pem).map_err(|_| corrupt("its key"))?;
        let signing = CertificateDer::from_pem_slice(record.chain_pem.as_bytes()).map_err(|_| corrupt("its chain"))?;
        let anchor = CertificateDer::from_pem_slice(record.anchor_pem.as_bytes()).map_err(|_| corrupt("its root"))?;
        let issuer = Issuer::from_ca_cert_der(&signing, key).map_err(|_| corrupt("its certificate"))?;
        let signing_spki = x509_parser::parse_x509_certificate(&signing)
            .map(|(_, c)| c.public_key().raw.to_vec())
            .map_err(|_| corrupt("its certificate"))?;
        let (anchor_subject, anchor_not_after) = x509_parser::parse_x509_certificate(&anchor)
            .map(|(_, c)| (c.subject().to_string(), u64::try_from(c.validity().not_after.timestamp()).unwrap_or(0)))
            .map_err(|_| corrupt("its root"))?;
        Ok(Authority { record, issuer, signing_spki, anchor, anchor_subject, anchor_not_after })
    }

    /// Signs a certificate for the CSR, valid for `lifetime`, if the CSR asks for `allowed` and
    /// nothing else.
    pub fn issue(
        &self,
        csr_der: &[u8],
        allowed: &SpiffeId,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, IdentityError> {
        let asked = check_csr(csr_der, &allowed.trust_domain)?;
        if asked.0 != *allowed {
            return Err(IdentityError::NotAllowed(format!(
                "the CSR asks for {}, but only {allowed} is allowed here",
                asked.0
            )));
        }
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error("parameters"))?;
        params.distinguished_name.push(DnType::CommonName, allowed.service.as_str());
        let uri = allowed.uri().try_into().map_err(rcgen_error("the SPIFFE ID"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let issued_at = now();
        params.not_before = x509_time(issued_at - BACKDATE)?;
        params.not_after = x509_time(issued_at + lifetime)?;
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&asked.1.public_key, &self.issuer).map_err(rcgen_error("signing"))?;
        Ok(IssuedCertificate {
            chain_pem: format!("{}{}", cert.pem(), self.record.chain_pem),
            not_after: unix_seconds(issued_at + lifetime),
        })
    }

    /// Whether this authority signed `leaf` (DER).
    pub fn signed(&self, leaf: &[u8]) -> bool {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else { return false };
        let Ok((_, spki)) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&self.signing_spki) else {
            return false;
        };
        cert.verify_signature(Some(&spki)).is_ok()
    }
}

/// The SPIFFE ID a CSR asks for, after checking the CSR's signature and shape: one URI SAN of
/// `trust_domain` and nothing else, no CA.
pub fn check_csr(
    csr_der: &[u8],
    trust_domain: &str,
) -> Result<(SpiffeId, CertificateSigningRequestParams), IdentityError> {
    let bad = |reason: &str| IdentityError::BadCsr(reason.to_owned());
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
        .map_err(|e| bad(&format!("not a usable PKCS#10 request ({e})")))?;
    if !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
        return Err(bad("it asks for a CA certificate"));
    }
    let uri = match csr.params.subject_alt_names.as_slice() {
        [SanType::URI(uri)] => uri.as_str().to_owned(),
        [] => return Err(bad("it names no SPIFFE ID (a URI SAN)")),
        _ => return Err(bad("it must name exactly one SAN: the SPIFFE ID")),
    };
    let id = SpiffeId::parse(&uri).map_err(|reason| bad(&reason))?;
    if id.trust_domain != trust_domain {
        return Err(IdentityError::NotAllowed(format!("{uri} is outside the trust domain {trust_domain}")));
    }
    Ok((id, csr))
}

fn random_serial() -> Result<SerialNumber, IdentityError> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| IdentityError::Internal("the OS random source failed".into()))?;
    bytes[0] &= 0x7f; // positive, as a serial must be
    Ok(SerialNumber::from_slice(&bytes))
}

fn pem_of(label: &str, der: &[u8]) -> String {
    // LF, as rcgen writes its PEM: the bundle reads the same whatever made its parts.
    pem::encode_config(&pem::Pem::new(label, der), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

#[cfg(test)]
mod tests;

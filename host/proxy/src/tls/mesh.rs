//! Mutual TLS by the mesh (`mtls: mesh`): the proxy's workload certificate and the mesh's trust
//! bundle, both swapped in place while the proxy runs. Listeners and clusters hold rustls configs
//! whose certificate resolvers and verifiers read the current [`MeshIdentity`] at every
//! handshake, so a renewed certificate or a rotated bundle reaches them without a reload and
//! without touching a connection already open.
//!
//! A peer is accepted when its chain leads to a root of the bundle and its certificate names a
//! SPIFFE ID of the mesh's trust domain (its first URI SAN); a cluster may narrow that to a list
//! of identities.

use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore};
use rustls::{ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use weft_config::SpiffeId;

/// Why a certificate or bundle handed to [`MeshIdentity`] was not taken (the old one stays).
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("the certificate chain: {0}")]
    Chain(String),
    #[error("the private key: {0}")]
    Key(String),
    #[error("the trust bundle: {0}")]
    Bundle(String),
}

/// What the proxy's current certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    pub spiffe_id: String,
    /// The end of its validity, Unix seconds.
    pub not_after: u64,
    /// The start of its validity, Unix seconds.
    pub not_before: u64,
    /// The leaf, DER (for reports to the control plane).
    pub leaf: Vec<u8>,
}

/// How renewing the certificate goes, as its owner reports it (for the admin `/identity`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenewalStatus {
    /// When the last certificate was received, Unix seconds.
    pub renewed_at: Option<u64>,
    /// When the next renewal is due, Unix seconds.
    pub next_at: Option<u64>,
    /// Failed renewals since the last success.
    pub failures: u32,
    /// The last failure and when it happened (Unix seconds); cleared by a success.
    pub last_error: Option<(String, u64)>,
}

struct Certificate {
    key: Arc<CertifiedKey>,
    info: CertificateInfo,
}

struct Bundle {
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    digest: String,
}

/// The proxy's identity in the mesh: its certificate and the roots it trusts. Shared by every
/// mesh listener and cluster of every config; updated by whoever renews it.
pub struct MeshIdentity {
    trust_domain: String,
    certificate: ArcSwapOption<Certificate>,
    bundle: ArcSwapOption<Bundle>,
    renewal: std::sync::Mutex<RenewalStatus>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshIdentity").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

impl MeshIdentity {
    /// An identity in `trust_domain` with no certificate yet: mesh handshakes fail until
    /// [`MeshIdentity::set_certificate`] and [`MeshIdentity::set_bundle`] were called.
    pub fn new(trust_domain: &str, metrics: Arc<Metrics>) -> Arc<MeshIdentity> {
        Arc::new(MeshIdentity {
            trust_domain: trust_domain.to_owned(),
            certificate: ArcSwapOption::empty(),
            bundle: ArcSwapOption::empty(),
            renewal: Default::default(),
            metrics,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Takes a new certificate (PEM chain, leaf first) and its key (PEM). Refused, and the
    /// current one kept, when they do not fit together or the leaf names no SPIFFE ID of the
    /// trust domain.
    pub fn set_certificate(&self, chain_pem: &str, key_pem: &str) -> Result<CertificateInfo, MeshError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| MeshError::Chain(e.to_string()))?;
        let leaf = chain.first().ok_or_else(|| MeshError::Chain("no PEM certificate".into()))?;
        let (spiffe_id, not_before, not_after) = leaf_facts(leaf).map_err(MeshError::Chain)?;
        let id = SpiffeId::parse(&spiffe_id).map_err(MeshError::Chain)?;
        if id.trust_domain != self.trust_domain {
            return Err(MeshError::Chain(format!("{spiffe_id} is outside the trust domain {}", self.trust_domain)));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| MeshError::Key(e.to_string()))?;
        let info = CertificateInfo { spiffe_id, not_after, not_before, leaf: leaf.to_vec() };
        let certified =
            CertifiedKey::from_der(chain, key, &super::provider()).map_err(|e| MeshError::Key(e.to_string()))?;
        self.certificate.store(Some(Arc::new(Certificate { key: Arc::new(certified), info: info.clone() })));
        self.metrics.identity_cert_expiry.set(not_after as i64);
        Ok(info)
    }

    /// Takes a new trust bundle (PEM roots); returns its digest. During a root rotation it holds
    /// the old root and the new one, so peers with either kind of certificate are accepted.
    pub fn set_bundle(&self, bundle_pem: &str) -> Result<String, MeshError> {
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bundle_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| MeshError::Bundle(e.to_string()))?;
        if roots.is_empty() {
            return Err(MeshError::Bundle("no PEM certificate".into()));
        }
        let digest = bundle_digest(&roots);
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add(root).map_err(|e| MeshError::Bundle(format!("not a usable CA certificate: {e}")))?;
        }
        let roots = Arc::new(store);
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), super::provider())
            .build()
            .map_err(|e| MeshError::Bundle(e.to_string()))?;
        self.bundle.store(Some(Arc::new(Bundle { roots, client_verifier, digest: digest.clone() })));
        Ok(digest)
    }

    /// The current certificate's facts, once there is one.
    pub fn certificate(&self) -> Option<CertificateInfo> {
        self.certificate.load().as_ref().map(|c| c.info.clone())
    }

    /// The current bundle's digest, once there is one.
    pub fn bundle_digest(&self) -> Option<String> {
        self.bundle.load().as_ref().map(|b| b.digest.clone())
    }

    /// Records how renewing goes (shown on the admin `/identity`).
    pub fn set_renewal(&self, status: RenewalStatus) {
        *self.renewal.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    pub fn renewal(&self) -> RenewalStatus {
        self.renewal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The admin `/identity` document.
    pub fn to_json(&self) -> serde_json::Value {
        let certificate = self.certificate();
        let renewal = self.renewal();
        serde_json::json!({
            "trust_domain": self.trust_domain,
            "spiffe_id": certificate.as_ref().map(|c| c.spiffe_id.clone()),
            "not_before": certificate.as_ref().map(|c| c.not_before),
            "not_after": certificate.as_ref().map(|c| c.not_after),
            "trust_bundle": self.bundle_digest(),
            "renewed_at": renewal.renewed_at,
            "next_renewal_at": renewal.next_at,
            "renewal_failures": renewal.failures,
            "last_renewal_error": renewal.last_error.map(|(reason, at)| serde_json::json!({ "reason": reason, "at": at })),
        })
    }

    /// Whether mesh handshakes can succeed: a certificate and a bundle are loaded.
    pub fn is_loaded(&self) -> bool {
        self.certificate.load().is_some() && self.bundle.load().is_some()
    }

    /// The server side of an `mtls: mesh` listener: the proxy's certificate, clients required
    /// to show one of the mesh.
    pub fn server_config(self: &Arc<Self>, listener: &str, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
        let verifier = Arc::new(PeerVerifier::new(self.clone(), format!("listener {listener:?}"), Vec::new()));
        let mut config = ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// The client side of an `mtls: mesh` cluster: the proxy's certificate, endpoints required
    /// to show one of the mesh, and one of `identities` when that is not empty.
    pub fn client_config(
        self: &Arc<Self>,
        cluster: &str,
        identities: &[String],
        alpn: &[&[u8]],
    ) -> Result<Arc<ClientConfig>, String> {
        let verifier = Arc::new(PeerVerifier::new(self.clone(), format!("cluster {cluster:?}"), identities.to_vec()));
        let mut config = ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    fn current_key(&self) -> Option<Arc<CertifiedKey>> {
        self.certificate.load().as_ref().map(|c| c.key.clone())
    }
}

/// `sha256:<hex>` over the roots' DER, in order: equal bundles, equal digests.
pub fn bundle_digest(roots: &[CertificateDer<'_>]) -> String {
    let mut hash = Sha256::new();
    for root in roots {
        hash.update(root.as_ref());
    }
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// A certificate's first URI SAN and validity (Unix seconds).
fn leaf_facts(der: &[u8]) -> Result<(String, u64, u64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a certificate: {e}"))?;
    let uri = first_uri_san(&cert).ok_or("the certificate names no SPIFFE ID (URI SAN)")?;
    let validity = cert.validity();
    let seconds = |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
    Ok((uri, seconds(validity.not_before), seconds(validity.not_after)))
}

fn first_uri_san(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
        _ => None,
    })
}

/// Presents the current certificate, on both sides of a connection.
#[derive(Debug)]
struct Resolver(Arc<MeshIdentity>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current_key()
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current_key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Why a mesh peer was refused; carried in the TLS error and logged.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

fn refuse(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refusal(reason)))))
}

/// Verifies a mesh peer (a client of a listener, or an endpoint of a cluster) against the
/// current bundle, its SPIFFE ID against the trust domain and the identities expected.
#[derive(Debug)]
struct PeerVerifier {
    mesh: Arc<MeshIdentity>,
    /// `listener "x"` or `cluster "y"`, for the log line of a refusal.
    place: String,
    identities: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn new(mesh: Arc<MeshIdentity>, place: String, identities: Vec<String>) -> PeerVerifier {
        PeerVerifier { mesh, place, identities, algorithms: super::provider().signature_verification_algorithms }
    }

    fn bundle(&self) -> Result<Arc<Bundle>, rustls::Error> {
        self.mesh.bundle.load_full().ok_or_else(|| refuse("the proxy has no mesh trust bundle yet".into()))
    }

    /// The peer's SPIFFE ID, once its chain was verified: refused unless it is of the trust
    /// domain and, when the place names identities, one of them.
    fn check_identity(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let id = match leaf_facts(end_entity) {
            Ok((uri, _, _)) => uri,
            Err(reason) => return Err(self.refused(&reason, "")),
        };
        match SpiffeId::parse(&id) {
            Ok(parsed) if parsed.trust_domain == self.mesh.trust_domain => {}
            Ok(_) => {
                return Err(self.refused(&format!("it is outside the trust domain {}", self.mesh.trust_domain), &id))
            }
            Err(reason) => return Err(self.refused(&reason, &id)),
        }
        if !self.identities.is_empty() && !self.identities.contains(&id) {
            let expected = self.identities.join(", ");
            return Err(self.refused(&format!("it is not one of the identities expected ({expected})"), &id));
        }
        Ok(())
    }

    fn refused(&self, reason: &str, peer: &str) -> rustls::Error {
        let peer = if peer.is_empty() { "the peer".to_owned() } else { format!("peer {peer}") };
        let message = format!("{} refused mesh {peer}: {reason}", self.place);
        tracing::warn!("{message}");
        refuse(message)
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Mesh certificates name workloads, not hosts: the SPIFFE ID is checked instead of the name.
        let bundle = self.bundle()?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &bundle.roots,
            intermediates,
            now,
            self.algorithms.all,
        )
        .map_err(|error| self.refused(&format!("its certificate does not verify against the mesh: {error}"), ""))?;
        self.check_identity(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle changes while this verifier lives; an empty hint asks for any certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.bundle()?;
        bundle.client_verifier.verify_client_cert(end_entity, intermediates, now).map_err(|error| {
            tracing::debug!(place = %self.place, %error, "mesh client refused: its certificate does not verify");
            error
        })?;
        self.check_identity(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;

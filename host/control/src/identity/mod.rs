//! The mesh's certificate authority and its proxies' identities. The control plane makes a root
//! at its first start (or takes the operator's CA), keeps it in its store, issues join tokens,
//! signs workload certificates from CSRs (a proxy's key never leaves it), authenticates proxies
//! by the credential each got when it joined, rotates roots, and tells every proxy the trust
//! bundle over its `Follow` stream ([`grpc`]).
//!
//! Calls block on the store and on signing: async callers run them on the blocking pool.

mod authorities;
mod authority;
pub mod grpc;
mod rotation;
mod status;
pub mod tokens;

use authorities::{Authorities, AuthoritiesRecord};
pub use authorities::{Bundle, Role};
use authority::Authority;
pub use status::ProxyIdentity;
use status::Statuses;

use crate::records::{now_ms, rfc3339};
use crate::store::mesh::{Change, MeshTable};
use crate::store::{Store, StoreError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tokens::{Credential, JoinToken, TokenRefusal, CREDENTIAL_PREFIX, JOIN_TOKEN_PREFIX};
use tokio::sync::watch;
use weft_config::spiffe::{check_trust_domain, DEFAULT_TRUST_DOMAIN};
use weft_config::SpiffeId;

/// The store key of the authorities.
const AUTHORITIES_KEY: &str = "ca";

/// Margin past a retiring root's last certificate, for clocks that differ a little.
const RETIRE_MARGIN: Duration = Duration::from_secs(60);

/// The longest a join token may live, and the most joins it may allow.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
pub const MAX_TOKEN_USES: u32 = 10_000;

/// How the mesh is set up (`weft control` flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The trust domain; `None`: the stored one, or [`DEFAULT_TRUST_DOMAIN`] at the first start.
    pub trust_domain: Option<String>,
    /// How long a workload certificate is valid.
    pub cert_ttl: Duration,
    /// The operator's CA for the first start: the certificate file's text (the signing CA first,
    /// then up to the root) and the key's.
    pub ca: Option<(String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { trust_domain: None, cert_ttl: Settings::DEFAULT_CERT_TTL, ca: None }
    }
}

impl Settings {
    /// Workload certificates are valid for a day by default.
    pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
}

/// Why an identity call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the CA given: {0}")]
    BadCa(String),
    #[error("the CSR: {0}")]
    BadCsr(String),
    /// A well-formed request for an identity it may not have.
    #[error("{0}")]
    NotAllowed(String),
    #[error("the join token was refused: it is unknown, expired or used up (make one with `weft token create`)")]
    TokenRefused,
    #[error("the proxy credential was refused: join again with a new join token (`weft token create`)")]
    CredentialRefused,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// A certificate for a proxy, with what goes with it.
#[derive(Clone, Debug)]
pub struct Issued {
    pub chain_pem: String,
    pub bundle_pem: String,
    pub spiffe_id: String,
    pub not_after: u64,
    /// Only for a join: the proxy credential.
    pub credential: Option<String>,
}

/// The mesh: its authorities, tokens, credentials and proxies.
pub struct Mesh {
    store: Store,
    cert_ttl: Duration,
    authorities: Mutex<Authorities>,
    /// The bundle and signer now; every `Follow` stream watches it.
    published: watch::Sender<Bundle>,
    /// Credentials by id, loaded once (they change only on a join).
    credentials: RwLock<HashMap<String, Credential>>,
    statuses: Statuses,
}

impl Mesh {
    /// Opens the mesh from the store, making its root at the first start (or taking the
    /// operator's CA). Refuses settings that contradict what the store holds.
    pub fn open(store: &Store, settings: &Settings) -> Result<Mesh, IdentityError> {
        if let Some(domain) = &settings.trust_domain {
            check_trust_domain(domain).map_err(IdentityError::BadRequest)?;
        }
        let authorities = match store.mesh_get(MeshTable::Authorities, AUTHORITIES_KEY)? {
            Some(bytes) => {
                let record: AuthoritiesRecord = serde_json::from_slice(&bytes)
                    .map_err(|e| IdentityError::Internal(format!("the stored mesh authorities: {e}")))?;
                let authorities = Authorities::load(record)?;
                check_unchanged(&authorities, settings)?;
                authorities
            }
            None => {
                let domain = settings.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN);
                let first = match &settings.ca {
                    Some((cert, key)) => Authority::import(cert, key, now_ms())?,
                    None => Authority::generate(domain, now_ms())?,
                };
                let authorities = Authorities::new(domain, first);
                save(store, &authorities)?;
                tracing::info!(trust_domain = domain, authority = %authorities.signer()?.record.id, "mesh CA made");
                authorities
            }
        };
        let credentials = store
            .mesh_list(MeshTable::Credentials)?
            .into_iter()
            .filter_map(|(id, bytes)| Some((id, serde_json::from_slice::<Credential>(&bytes).ok()?)))
            .collect();
        let (published, _) = watch::channel(authorities.bundle()?);
        Ok(Mesh {
            store: store.clone(),
            cert_ttl: settings.cert_ttl,
            authorities: Mutex::new(authorities),
            published,
            credentials: RwLock::new(credentials),
            statuses: Statuses::default(),
        })
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, Authorities> {
        self.authorities.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn trust_domain(&self) -> String {
        self.locked().trust_domain.clone()
    }

    pub fn cert_ttl(&self) -> Duration {
        self.cert_ttl
    }

    /// The bundle now, and its changes.
    pub fn subscribe(&self) -> watch::Receiver<Bundle> {
        self.published.subscribe()
    }

    /// A new proxy joins: the token must allow the CSR's identity. A success spends one use of
    /// the token and makes the node's proxy credential (replacing any earlier one).
    pub fn join(&self, presented: &str, node: &str, csr: &[u8]) -> Result<Issued, IdentityError> {
        check_node(node)?;
        let refused = |reason: TokenRefusal| {
            tracing::warn!(%node, %reason, "join refused: the join token");
            IdentityError::TokenRefused
        };
        let (id, secret) =
            tokens::split(presented, JOIN_TOKEN_PREFIX).ok_or_else(|| refused(TokenRefusal::Malformed))?;
        let token: JoinToken = match self.store.mesh_get(MeshTable::JoinTokens, id)? {
            Some(bytes) => decode(&bytes)?,
            None => return Err(refused(TokenRefusal::Unknown)),
        };
        token.check(secret, now_ms()).map_err(refused)?;
        let allowed = SpiffeId::parse(&token.spiffe_id).map_err(IdentityError::Internal)?;
        let certificate = self.issue(node, csr, &allowed).inspect_err(|error| {
            tracing::warn!(%node, token = %token.id, %error, "join refused");
        })?;
        // Spent only now, so a join refused for its CSR costs nothing; checked again, as another
        // proxy may have spent the last use meanwhile.
        let spent = self.store.mesh_update(MeshTable::JoinTokens, id, |current| {
            let Some(mut token) = current.and_then(|bytes| serde_json::from_slice::<JoinToken>(bytes).ok()) else {
                return (Change::Keep, Err(TokenRefusal::Unknown));
            };
            if let Err(refusal) = token.check(secret, now_ms()) {
                return (Change::Keep, Err(refusal));
            }
            token.uses_left -= 1;
            match (token.uses_left, serde_json::to_vec(&token)) {
                (0, _) => (Change::Delete, Ok(())),
                (_, Ok(bytes)) => (Change::Put(bytes), Ok(())),
                (_, Err(_)) => (Change::Keep, Err(TokenRefusal::Unknown)),
            }
        })?;
        spent.map_err(refused)?;
        let credential = self.new_credential(node, &allowed)?;
        tracing::info!(%node, identity = %allowed, token = %token.id, "proxy joined the mesh");
        Ok(Issued { credential: Some(credential), ..certificate })
    }

    /// A joined proxy renews: the CSR must ask for the identity it joined with.
    pub fn renew(&self, caller: &Credential, node: &str, csr: &[u8]) -> Result<Issued, IdentityError> {
        if node != caller.node {
            return Err(IdentityError::NotAllowed(format!(
                "this credential belongs to node {:?}, not {node:?}",
                caller.node
            )));
        }
        let allowed = SpiffeId::parse(&caller.spiffe_id).map_err(IdentityError::Internal)?;
        self.issue(node, csr, &allowed).inspect_err(|error| {
            tracing::warn!(%node, %error, "renewal refused");
            self.statuses.update(node, |status| status.last_error = Some((error.to_string(), now_ms())));
        })
    }

    fn issue(&self, node: &str, csr: &[u8], allowed: &SpiffeId) -> Result<Issued, IdentityError> {
        let (certificate, bundle, signer) = {
            let authorities = self.locked();
            let signer = authorities.signer()?;
            (signer.issue(csr, allowed, self.cert_ttl)?, authorities.bundle()?, signer.record.id.clone())
        };
        self.statuses.update(node, |status| {
            status.spiffe_id = allowed.uri();
            status.not_after = certificate.not_after;
            status.issued_by = Some(signer);
            status.issued += 1;
            status.last_issued_ms = Some(now_ms());
            status.last_error = None;
            status.failures = 0;
        });
        tracing::info!(%node, identity = %allowed, not_after = %rfc3339(certificate.not_after * 1000), "certificate issued");
        Ok(Issued {
            chain_pem: certificate.chain_pem,
            bundle_pem: bundle.pem,
            spiffe_id: allowed.uri(),
            not_after: certificate.not_after,
            credential: None,
        })
    }

    fn new_credential(&self, node: &str, identity: &SpiffeId) -> Result<String, IdentityError> {
        let secret = tokens::new_secret(CREDENTIAL_PREFIX)?;
        let credential = Credential {
            id: secret.id.clone(),
            node: node.to_owned(),
            spiffe_id: identity.uri(),
            secret_sha256: secret.secret_sha256,
            created_at_ms: now_ms(),
        };
        let bytes = encode(&credential)?;
        self.store.mesh_update(MeshTable::Credentials, &credential.id, |_| (Change::Put(bytes), ()))?;
        let mut credentials = self.credentials.write().unwrap_or_else(|e| e.into_inner());
        let replaced: Vec<String> = credentials.values().filter(|c| c.node == node).map(|c| c.id.clone()).collect();
        for id in replaced {
            credentials.remove(&id);
            self.store.mesh_update(MeshTable::Credentials, &id, |_| (Change::Delete, ()))?;
        }
        credentials.insert(credential.id.clone(), credential);
        Ok(secret.text)
    }

    /// The proxy credential presented as `Authorization: Bearer …`, if it is one.
    pub fn authenticate(&self, header: Option<&str>) -> Option<Credential> {
        let presented = header?.strip_prefix("Bearer ").or_else(|| header?.strip_prefix("bearer "))?;
        let (id, secret) = tokens::split(presented, CREDENTIAL_PREFIX)?;
        let credentials = self.credentials.read().unwrap_or_else(|e| e.into_inner());
        credentials.get(id).filter(|c| tokens::secret_matches(secret, &c.secret_sha256)).cloned()
    }

    /// What a proxy reported on its `Follow` stream.
    pub fn record_report(&self, node: &str, report: &weft_proto::identity::IdentityReport) {
        let issued_by =
            (!report.certificate.is_empty()).then(|| self.locked().issuer_of(&report.certificate)).flatten();
        let facts = leaf_facts(&report.certificate);
        self.statuses.update(node, |status| {
            if let Some((spiffe_id, not_after)) = facts {
                status.spiffe_id = spiffe_id;
                status.not_after = not_after;
                status.issued_by = issued_by;
            }
            status.bundle_digest = (!report.bundle_digest.is_empty()).then(|| report.bundle_digest.clone());
            status.failures = report.failures;
            if !report.last_error.is_empty() {
                status.last_error = Some((report.last_error.clone(), report.last_error_at.saturating_mul(1000)));
            } else if report.failures == 0 {
                status.last_error = None;
            }
        });
    }

    /// A `Follow` stream of `node` opened (`+1`) or closed (`-1`).
    pub fn following(&self, node: &str, opened: bool) {
        self.statuses.update(node, |status| {
            status.streams = if opened { status.streams + 1 } else { status.streams.saturating_sub(1) };
        });
    }

    /// Saves the authorities and publishes the bundle they make.
    fn commit(&self, authorities: &Authorities) -> Result<(), IdentityError> {
        save(&self.store, authorities)?;
        self.published.send_replace(authorities.bundle()?);
        Ok(())
    }

    /// Adds each proxy's identity to a `GET /v1/proxies` document.
    pub fn annotate_proxies(&self, document: &mut Value) {
        let bundle = self.published.borrow().clone();
        status::annotate(document, &self.statuses.snapshot(), &bundle.digest, &bundle.signer);
    }

    /// One proxy's identity status.
    pub fn status(&self, node: &str) -> Option<ProxyIdentity> {
        self.statuses.snapshot().remove(node)
    }
}

fn check_node(node: &str) -> Result<(), IdentityError> {
    if node.is_empty() || node.len() > 253 || node.chars().any(char::is_control) {
        return Err(IdentityError::BadRequest(format!("{node:?} is not a node id")));
    }
    Ok(())
}

/// The settings of a restart must not contradict the store: the trust domain and the CA stay
/// what they were (changing the CA is a rotation).
fn check_unchanged(authorities: &Authorities, settings: &Settings) -> Result<(), IdentityError> {
    if let Some(domain) = &settings.trust_domain {
        if *domain != authorities.trust_domain {
            return Err(IdentityError::BadRequest(format!(
                "--trust-domain {domain}: this data dir's mesh is {}; a trust domain cannot change (every \
                 identity names it)",
                authorities.trust_domain
            )));
        }
    }
    if let Some((cert, key)) = &settings.ca {
        let given = Authority::import(cert, key, 0)?;
        if !authorities.held.iter().any(|(_, a)| a.record.id == given.record.id) {
            return Err(IdentityError::BadCa(format!(
                "this data dir's mesh has another CA ({}); to move to this one, rotate: `weft mesh rotate start \
                 --ca-cert FILE --ca-key FILE`",
                authorities.signer()?.record.id
            )));
        }
    }
    Ok(())
}

fn save(store: &Store, authorities: &Authorities) -> Result<(), IdentityError> {
    let bytes = encode(&authorities.to_record())?;
    store.mesh_update(MeshTable::Authorities, AUTHORITIES_KEY, |_| (Change::Put(bytes), ()))?;
    Ok(())
}

fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, IdentityError> {
    serde_json::to_vec(value).map_err(|e| IdentityError::Internal(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, IdentityError> {
    serde_json::from_slice(bytes).map_err(|e| IdentityError::Internal(format!("a stored mesh record: {e}")))
}

/// A leaf's SPIFFE ID and end (Unix seconds).
fn leaf_facts(der: &[u8]) -> Option<(String, u64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let uri = san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
        _ => None,
    })?;
    Some((uri, u64::try_from(cert.validity().not_after.timestamp()).ok()?))
}

#[cfg(test)]
mod tests;

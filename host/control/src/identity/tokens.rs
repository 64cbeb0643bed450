//! Join tokens and proxy credentials: the two secrets of a proxy's life in the mesh.
//!
//! A **join token** (`weft token create`) lets one identity (`spiffe://…/ns/N/sa/S`) join: it
//! has a time to live (default 1 h) and a number of uses (default 1); each successful join
//! spends a use, and a token used up or expired is gone. A join that fails (a wrong CSR) spends
//! nothing.
//!
//! A **proxy credential** is made at a successful join and given to that proxy only: with it
//! the proxy renews its certificate, follows the config stream and fetches modules, so it needs
//! no admin token. It stays valid until the node joins again (which replaces it).
//!
//! Both look like `<kind>.<id>.<secret>`; the store keeps the id and the secret's sha256, and a
//! presented secret is compared in constant time.

use super::{encode, IdentityError, MAX_TOKEN_TTL, MAX_TOKEN_USES};
use crate::records::now_ms;
use crate::store::mesh::{Change, MeshTable};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;
use weft_config::SpiffeId;

/// What a join token starts with.
pub const JOIN_TOKEN_PREFIX: &str = "wjt";
/// What a proxy credential starts with.
pub const CREDENTIAL_PREFIX: &str = "wpc";

/// A join token as stored (without its secret).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct JoinToken {
    pub id: String,
    /// The SPIFFE ID a proxy joining with it gets.
    pub spiffe_id: String,
    pub secret_sha256: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// Joins it still allows.
    pub uses_left: u32,
    /// Who made it (the API caller's principal).
    pub created_by: String,
}

/// A proxy credential as stored (without its secret).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Credential {
    pub id: String,
    /// The node that joined.
    pub node: String,
    /// The identity it renews.
    pub spiffe_id: String,
    pub secret_sha256: String,
    pub created_at_ms: u64,
}

/// A new secret: `prefix.id.secret` and the parts to store.
pub struct NewSecret {
    pub text: String,
    pub id: String,
    pub secret_sha256: String,
}

fn random_hex(bytes: usize) -> Result<String, IdentityError> {
    let mut buffer = vec![0u8; bytes];
    SystemRandom::new().fill(&mut buffer).map_err(|_| IdentityError::Internal("the OS random source failed".into()))?;
    Ok(hex::encode(buffer))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A fresh secret of kind `prefix`: an 8-byte id, a 32-byte secret.
pub fn new_secret(prefix: &str) -> Result<NewSecret, IdentityError> {
    let id = random_hex(8)?;
    let secret = random_hex(32)?;
    Ok(NewSecret { text: format!("{prefix}.{id}.{secret}"), id, secret_sha256: sha256_hex(&secret) })
}

/// The id and secret of a presented `prefix.id.secret`, when it has that shape.
pub fn split<'a>(presented: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let mut parts = presented.trim().splitn(3, '.');
    let (kind, id, secret) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (kind == prefix && hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

/// Whether `secret` is the one whose sha256 is `stored`, in time independent of where they differ.
pub fn secret_matches(secret: &str, stored: &str) -> bool {
    sha256_hex(secret).as_bytes().ct_eq(stored.as_bytes()).into()
}

/// Why a join token was refused (for the control plane's log; the proxy is told less).
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    Malformed,
    Unknown,
    WrongSecret,
    Expired,
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRefusal::Malformed => "not shaped like a join token",
            TokenRefusal::Unknown => "no such token (never made, used up, revoked or expired)",
            TokenRefusal::WrongSecret => "its secret is wrong",
            TokenRefusal::Expired => "it expired",
        })
    }
}

impl JoinToken {
    /// Whether `secret` opens this token at `now_ms`.
    pub fn check(&self, secret: &str, now_ms: u64) -> Result<(), TokenRefusal> {
        if !secret_matches(secret, &self.secret_sha256) {
            return Err(TokenRefusal::WrongSecret);
        }
        if now_ms >= self.expires_at_ms {
            return Err(TokenRefusal::Expired);
        }
        if self.uses_left == 0 {
            return Err(TokenRefusal::Unknown);
        }
        Ok(())
    }
}

impl super::Mesh {
    /// Makes a join token for `namespace`/`service`, valid `ttl`, for `uses` joins. Returns the
    /// token's text (shown once; only its hash is kept) and its record.
    pub fn create_token(
        &self,
        namespace: &str,
        service: &str,
        ttl: Duration,
        uses: u32,
        by: &str,
    ) -> Result<(String, JoinToken), IdentityError> {
        let id = SpiffeId::new(&self.trust_domain(), namespace, service).map_err(IdentityError::BadRequest)?;
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(IdentityError::BadRequest("ttl must be more than zero and at most 720h (30 days)".into()));
        }
        if uses == 0 || uses > MAX_TOKEN_USES {
            return Err(IdentityError::BadRequest(format!("uses must be from 1 to {MAX_TOKEN_USES}")));
        }
        let secret = new_secret(JOIN_TOKEN_PREFIX)?;
        let now = now_ms();
        let token = JoinToken {
            id: secret.id.clone(),
            spiffe_id: id.uri(),
            secret_sha256: secret.secret_sha256,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl.as_millis() as u64),
            uses_left: uses,
            created_by: by.to_owned(),
        };
        let bytes = encode(&token)?;
        self.store.mesh_update(MeshTable::JoinTokens, &token.id, |_| (Change::Put(bytes), ()))?;
        tracing::info!(token = %token.id, identity = %token.spiffe_id, uses, ttl = ?ttl, %by, "join token made");
        Ok((secret.text, token))
    }

    /// The join tokens that can still be used (expired ones are dropped on the way).
    pub fn tokens(&self) -> Result<Vec<JoinToken>, IdentityError> {
        let now = now_ms();
        let mut live = Vec::new();
        for (id, bytes) in self.store.mesh_list(MeshTable::JoinTokens)? {
            match serde_json::from_slice::<JoinToken>(&bytes) {
                Ok(token) if token.expires_at_ms > now && token.uses_left > 0 => live.push(token),
                _ => self.store.mesh_update(MeshTable::JoinTokens, &id, |_| (Change::Delete, ()))?,
            }
        }
        Ok(live)
    }

    /// Revokes a join token by id.
    pub fn revoke_token(&self, id: &str) -> Result<(), IdentityError> {
        let existed =
            self.store.mesh_update(MeshTable::JoinTokens, id, |current| (Change::Delete, current.is_some()))?;
        if !existed {
            return Err(IdentityError::NotFound(format!("no join token {id}; see GET /v1/tokens")));
        }
        tracing::info!(token = %id, "join token revoked");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(secret: &NewSecret, uses: u32) -> JoinToken {
        JoinToken {
            id: secret.id.clone(),
            spiffe_id: "spiffe://weft.local/ns/default/sa/frontend".into(),
            secret_sha256: secret.secret_sha256.clone(),
            created_at_ms: 1_000,
            expires_at_ms: 2_000,
            uses_left: uses,
            created_by: "admin".into(),
        }
    }

    #[test]
    fn a_token_opens_with_its_secret_before_it_expires() {
        let made = new_secret(JOIN_TOKEN_PREFIX).unwrap();
        let (id, secret) = split(&made.text, JOIN_TOKEN_PREFIX).unwrap();
        assert_eq!(id, made.id);
        let one_use = token(&made, 1);
        assert_eq!(one_use.check(secret, 1_500), Ok(()));
        assert_eq!(one_use.check(secret, 2_000), Err(TokenRefusal::Expired));
        let wrong = format!("{}{}", if secret.starts_with('0') { '1' } else { '0' }, &secret[1..]);
        assert_eq!(one_use.check(&wrong, 1_500), Err(TokenRefusal::WrongSecret));
        assert_eq!(token(&made, 0).check(secret, 1_500), Err(TokenRefusal::Unknown));
    }

    #[test]
    fn only_well_shaped_secrets_of_the_right_kind_are_read() {
        let made = new_secret(JOIN_TOKEN_PREFIX).unwrap();
        assert!(split(&made.text, CREDENTIAL_PREFIX).is_none(), "a join token is not a credential");
        assert!(split("wjt.abc.def", JOIN_TOKEN_PREFIX).is_none());
        assert!(split("", JOIN_TOKEN_PREFIX).is_none());
        assert_ne!(made.text, new_secret(JOIN_TOKEN_PREFIX).unwrap().text);
        assert!(!made.text.contains(&made.secret_sha256), "the stored hash is not the secret");
    }
}

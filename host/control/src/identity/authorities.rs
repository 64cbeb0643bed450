//! The mesh's authorities and their roles through a root rotation, as kept in the store:
//!
//! 1. steady: one `active` authority signs; the trust bundle is its root.
//! 2. rotation started: a `next` authority joins; the bundle holds both roots; the active one
//!    still signs, until every proxy following the control plane holds the new bundle.
//! 3. switched: the next authority is `active` and signs; the old one is `retiring` until every
//!    certificate it signed could have expired (or the operator finishes the rotation), and stays
//!    in the bundle meanwhile.
//! 4. finished: the retiring authority is gone; the bundle is the new root alone.

use super::authority::{Authority, AuthorityRecord};
use super::IdentityError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An authority's part in the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", tag = "role")]
pub enum Role {
    /// Signs every new certificate.
    Active,
    /// Trusted, and signs once the rotation switches to it.
    Next,
    /// Trusted until `until_ms` (Unix ms), signs nothing.
    Retiring { until_ms: u64 },
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Next => "next",
            Role::Retiring { .. } => "retiring",
        }
    }
}

/// The stored form of [`Authorities`].
#[derive(Deserialize, Serialize)]
pub struct AuthoritiesRecord {
    pub trust_domain: String,
    pub held: Vec<HeldRecord>,
    /// When the rotation under way started, Unix ms.
    #[serde(default)]
    pub rotation_started_at_ms: Option<u64>,
}

#[derive(Deserialize, Serialize)]
pub struct HeldRecord {
    #[serde(flatten)]
    pub role: Role,
    pub authority: AuthorityRecord,
}

/// The mesh's authorities, one of them active.
pub struct Authorities {
    pub trust_domain: String,
    /// Oldest first.
    pub held: Vec<(Role, Authority)>,
    pub rotation_started_at_ms: Option<u64>,
}

/// The roots peers trust, as proxies get them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub pem: String,
    /// `sha256:<hex>` over the roots' DER, in order (the proxy computes the same).
    pub digest: String,
    /// The id of the authority that signs now.
    pub signer: String,
}

impl Authorities {
    /// A mesh with one authority, active.
    pub fn new(trust_domain: &str, first: Authority) -> Authorities {
        Authorities {
            trust_domain: trust_domain.to_owned(),
            held: vec![(Role::Active, first)],
            rotation_started_at_ms: None,
        }
    }

    pub fn load(record: AuthoritiesRecord) -> Result<Authorities, IdentityError> {
        let held = record
            .held
            .into_iter()
            .map(|held| Ok((held.role, Authority::load(held.authority)?)))
            .collect::<Result<Vec<_>, IdentityError>>()?;
        let authorities = Authorities {
            trust_domain: record.trust_domain,
            held,
            rotation_started_at_ms: record.rotation_started_at_ms,
        };
        authorities.signer()?;
        Ok(authorities)
    }

    pub fn to_record(&self) -> AuthoritiesRecord {
        AuthoritiesRecord {
            trust_domain: self.trust_domain.clone(),
            held: self.held.iter().map(|(role, a)| HeldRecord { role: *role, authority: a.record.clone() }).collect(),
            rotation_started_at_ms: self.rotation_started_at_ms,
        }
    }

    /// The authority that signs now.
    pub fn signer(&self) -> Result<&Authority, IdentityError> {
        self.held
            .iter()
            .find(|(role, _)| *role == Role::Active)
            .map(|(_, authority)| authority)
            .ok_or_else(|| IdentityError::Internal("the store holds no active mesh authority".into()))
    }

    /// The trust bundle: every held authority's root, once each, oldest first.
    pub fn bundle(&self) -> Result<Bundle, IdentityError> {
        let mut seen: Vec<&[u8]> = Vec::new();
        let mut pem = String::new();
        let mut hash = Sha256::new();
        for (_, authority) in &self.held {
            if seen.contains(&authority.anchor.as_ref()) {
                continue;
            }
            seen.push(authority.anchor.as_ref());
            hash.update(authority.anchor.as_ref());
            pem.push_str(&authority.record.anchor_pem);
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
        }
        let digest = format!("sha256:{}", hex::encode(hash.finalize()));
        Ok(Bundle { pem, digest, signer: self.signer()?.record.id.clone() })
    }

    /// The authority, by role.
    pub fn with_role(&self, wanted: fn(Role) -> bool) -> Option<&Authority> {
        self.held.iter().find(|(role, _)| wanted(*role)).map(|(_, authority)| authority)
    }

    /// The id of the held authority that signed `leaf`, if any.
    pub fn issuer_of(&self, leaf: &[u8]) -> Option<String> {
        self.held.iter().find(|(_, a)| a.signed(leaf)).map(|(_, a)| a.record.id.clone())
    }

    /// Step 2: `next` is trusted beside the active authority.
    pub fn start_rotation(&mut self, next: Authority, now_ms: u64) -> Result<(), IdentityError> {
        if let Some((role, authority)) = self.held.iter().find(|(role, _)| *role != Role::Active) {
            return Err(IdentityError::Conflict(format!(
                "a root rotation is under way (authority {} is {}): finish it first (`weft mesh rotate finish`)",
                authority.record.id,
                role.name()
            )));
        }
        if self.held.iter().any(|(_, a)| a.record.id == next.record.id) {
            return Err(IdentityError::BadRequest("that CA is the mesh's current one".into()));
        }
        self.held.push((Role::Next, next));
        self.rotation_started_at_ms = Some(now_ms);
        Ok(())
    }

    /// Step 3: the next authority signs; the active one retires at `retire_at_ms`. False when
    /// there is no next authority.
    pub fn switch(&mut self, retire_at_ms: u64) -> bool {
        if !self.held.iter().any(|(role, _)| *role == Role::Next) {
            return false;
        }
        for (role, _) in &mut self.held {
            *role = match *role {
                Role::Active => Role::Retiring { until_ms: retire_at_ms },
                Role::Next => Role::Active,
                other => other,
            };
        }
        true
    }

    /// Step 4: retiring authorities due by `now_ms` (all of them with `all`) are dropped;
    /// returns their ids.
    pub fn retire(&mut self, now_ms: u64, all: bool) -> Vec<String> {
        let mut gone = Vec::new();
        self.held.retain(|(role, authority)| match role {
            Role::Retiring { until_ms } if all || *until_ms <= now_ms => {
                gone.push(authority.record.id.clone());
                false
            }
            _ => true,
        });
        if !gone.is_empty() && self.held.iter().all(|(role, _)| *role == Role::Active) {
            self.rotation_started_at_ms = None;
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_trusts_both_roots_then_switches_then_retires_the_old_one() {
        let old = Authority::generate("weft.local", 1).unwrap();
        let old_id = old.record.id.clone();
        let mut authorities = Authorities::new("weft.local", old);
        let steady = authorities.bundle().unwrap();
        assert_eq!(steady.signer, old_id);

        let next = Authority::generate("weft.local", 2).unwrap();
        let next_id = next.record.id.clone();
        authorities.start_rotation(next, 10).unwrap();
        let both = authorities.bundle().unwrap();
        assert_ne!(both.digest, steady.digest);
        assert_eq!(both.pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(both.signer, old_id, "the old root signs until the switch");
        let again = Authority::generate("weft.local", 3).unwrap();
        assert!(matches!(authorities.start_rotation(again, 11), Err(IdentityError::Conflict(_))));

        assert!(authorities.switch(1_000));
        let switched = authorities.bundle().unwrap();
        assert_eq!((switched.digest.as_str(), switched.signer.as_str()), (both.digest.as_str(), next_id.as_str()));
        assert!(authorities.retire(999, false).is_empty(), "not due yet");
        assert_eq!(authorities.retire(1_000, false), vec![old_id]);
        let finished = authorities.bundle().unwrap();
        assert_eq!(finished.pem.matches("BEGIN CERTIFICATE").count(), 1);
        assert_eq!(authorities.rotation_started_at_ms, None);

        let stored = serde_json::to_string(&authorities.to_record()).unwrap();
        let loaded = Authorities::load(serde_json::from_str(&stored).unwrap()).unwrap();
        assert_eq!(loaded.bundle().unwrap(), finished);
    }
}

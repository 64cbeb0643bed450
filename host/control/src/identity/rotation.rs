//! Root rotation, step by step (see [`authorities`](super::authorities) for the roles), and the
//! mesh's own view (`GET /v1/mesh`). Each step waits for the proxies following the control
//! plane: the new root signs only once all of them trust it, and the old one leaves only once
//! none of them needs it.

use super::authority::Authority;
use super::{IdentityError, Mesh, Role, RETIRE_MARGIN};
use crate::records::{now_ms, rfc3339};
use serde_json::{json, Value};

impl Mesh {
    /// Moves a rotation on: switches to the next root once every following proxy holds the
    /// bundle that trusts it, and drops retiring roots whose certificates have all expired.
    pub fn advance(&self) -> Result<(), IdentityError> {
        let now = now_ms();
        let mut authorities = self.locked();
        let mut changed = false;
        if authorities.with_role(|r| r == Role::Next).is_some() {
            let digest = authorities.bundle()?.digest;
            let waiting = self.statuses.following_where(|p| p.bundle_digest.as_deref() != Some(digest.as_str()));
            if waiting.is_empty() {
                changed |= authorities.switch(self.retire_at(now));
                tracing::info!("root rotation: every proxy holds the new trust bundle; the new root signs from now on");
            }
        }
        let gone = authorities.retire(now, false);
        if !gone.is_empty() {
            tracing::info!(retired = ?gone, "root rotation: the old root's certificates have all expired; it left the trust bundle");
            changed = true;
        }
        if changed {
            self.commit(&authorities)?;
        }
        Ok(())
    }

    fn retire_at(&self, now: u64) -> u64 {
        now.saturating_add((self.cert_ttl + RETIRE_MARGIN).as_millis() as u64)
    }

    /// Starts a root rotation with a new root (made, or the operator's CA).
    pub fn start_rotation(&self, operator: Option<(&str, &str)>) -> Result<(), IdentityError> {
        let next = match operator {
            Some((cert, key)) => Authority::import(cert, key, now_ms())?,
            None => Authority::generate(&self.trust_domain(), now_ms())?,
        };
        let id = next.record.id.clone();
        {
            let mut authorities = self.locked();
            authorities.start_rotation(next, now_ms())?;
            self.commit(&authorities)?;
        }
        tracing::info!(next = %id, "root rotation started: the trust bundle holds both roots");
        self.advance()
    }

    /// Finishes a rotation: the old root leaves the bundle. Refused while proxies still need it,
    /// unless `force`.
    pub fn finish_rotation(&self, force: bool) -> Result<(), IdentityError> {
        let now = now_ms();
        let mut authorities = self.locked();
        if authorities.with_role(|r| r == Role::Next).is_some() {
            let digest = authorities.bundle()?.digest;
            let waiting = self.statuses.following_where(|p| p.bundle_digest.as_deref() != Some(digest.as_str()));
            if !waiting.is_empty() && !force {
                return Err(IdentityError::Conflict(format!(
                    "proxies have not all taken the new trust bundle yet: {}; wait, or finish with --force",
                    waiting.join(", ")
                )));
            }
            authorities.switch(now);
        }
        if authorities.with_role(|r| matches!(r, Role::Retiring { .. })).is_none() {
            return Err(IdentityError::Conflict("no root rotation is under way (`weft mesh rotate start`)".into()));
        }
        let signer = authorities.signer()?.record.id.clone();
        let holders = self.statuses.following_where(|p| p.issued_by.as_deref() != Some(signer.as_str()));
        if !holders.is_empty() && !force {
            return Err(IdentityError::Conflict(format!(
                "proxies still hold certificates of the old root: {}; they were asked to renew: wait, or finish \
                 with --force (their peers will refuse them until they renew)",
                holders.join(", ")
            )));
        }
        let gone = authorities.retire(now, true);
        self.commit(&authorities)?;
        tracing::info!(retired = ?gone, forced = force, "root rotation finished: the old root left the trust bundle");
        Ok(())
    }

    /// `GET /v1/mesh`.
    pub fn to_json(&self) -> Result<Value, IdentityError> {
        let authorities = self.locked();
        let bundle = authorities.bundle()?;
        let list: Vec<Value> = authorities
            .held
            .iter()
            .map(|(role, authority)| {
                json!({
                    "id": authority.record.id,
                    "role": role.name(),
                    "root": authority.anchor_subject,
                    "root_expires_at": rfc3339(authority.anchor_not_after * 1000),
                    "operator": authority.record.operator,
                    "created_at": rfc3339(authority.record.created_at_ms),
                    "retire_at": match role { Role::Retiring { until_ms } => Some(rfc3339(*until_ms)), _ => None },
                })
            })
            .collect();
        let rotation = authorities.rotation_started_at_ms.map(|started| {
            let distributing = authorities.with_role(|r| r == Role::Next).is_some();
            let waiting = self.statuses.following_where(|p| p.bundle_digest.as_deref() != Some(bundle.digest.as_str()));
            let holders = self.statuses.following_where(|p| p.issued_by.as_deref() != Some(bundle.signer.as_str()));
            json!({
                "phase": if distributing { "distributing" } else { "issuing" },
                "started_at": rfc3339(started),
                "waiting_for_bundle": waiting,
                "old_root_holders": if distributing { Vec::new() } else { holders },
            })
        });
        Ok(json!({
            "trust_domain": authorities.trust_domain,
            "cert_ttl_seconds": self.cert_ttl.as_secs(),
            "trust_bundle": { "digest": bundle.digest, "pem": bundle.pem },
            "signer": bundle.signer,
            "authorities": list,
            "rotation": rotation,
        }))
    }
}

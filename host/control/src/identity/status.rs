//! What the control plane knows of each proxy's identity, for `GET /v1/proxies` and the
//! rotation's decisions: from the certificates it issued, the refusals it answered, and the
//! reports proxies send on their `Follow` stream (which survive a control plane restart, as
//! proxies report again when they reconnect).

use crate::records::rfc3339;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One proxy's identity, as last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyIdentity {
    pub spiffe_id: String,
    /// The current certificate's end, Unix seconds.
    pub not_after: u64,
    /// The authority that signed it, when it is one of the mesh's.
    pub issued_by: Option<String>,
    /// The digest of the bundle it reported using.
    pub bundle_digest: Option<String>,
    /// `Follow` streams open from it now.
    pub streams: u32,
    /// Certificates issued to it since the control plane started.
    pub issued: u64,
    /// Unix ms of the last certificate issued.
    pub last_issued_ms: Option<u64>,
    /// The last failed renewal (reason, Unix ms), seen by either side; cleared by a success.
    pub last_error: Option<(String, u64)>,
    /// Renewals failed in a row, as the proxy counts them.
    pub failures: u32,
}

/// Every proxy's identity, by node.
#[derive(Default)]
pub struct Statuses(Mutex<BTreeMap<String, ProxyIdentity>>);

impl Statuses {
    pub fn update<T>(&self, node: &str, change: impl FnOnce(&mut ProxyIdentity) -> T) -> T {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        change(all.entry(node.to_owned()).or_default())
    }

    pub fn snapshot(&self) -> BTreeMap<String, ProxyIdentity> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The nodes following now (with a `Follow` stream open) that `pending` says are not there yet.
    pub fn following_where(&self, pending: impl Fn(&ProxyIdentity) -> bool) -> Vec<String> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().filter(|(_, p)| p.streams > 0 && pending(p)).map(|(node, _)| node.clone()).collect()
    }
}

impl ProxyIdentity {
    /// The `identity` of a proxy in `GET /v1/proxies`.
    pub fn to_json(&self, bundle_digest: &str, signer: &str) -> Value {
        json!({
            "spiffe_id": self.spiffe_id,
            "expires_at": (self.not_after > 0).then(|| rfc3339(self.not_after * 1000)),
            "expires_at_unix": self.not_after,
            "issued_by": self.issued_by,
            "issued_by_signer": self.issued_by.as_deref() == Some(signer),
            "trust_bundle": self.bundle_digest,
            "trust_bundle_current": self.bundle_digest.as_deref() == Some(bundle_digest),
            "following": self.streams > 0,
            "certificates_issued": self.issued,
            "last_issued_at": self.last_issued_ms.map(rfc3339),
            "renewal_failures": self.failures,
            "last_renewal_error": self.last_error.as_ref().map(|(reason, at)| json!({ "reason": reason, "at": rfc3339(*at) })),
        })
    }
}

/// Adds each proxy's `identity` to a `GET /v1/proxies` document; proxies known only by their
/// identity (no config stream yet) are listed too.
pub fn annotate(document: &mut Value, statuses: &BTreeMap<String, ProxyIdentity>, bundle_digest: &str, signer: &str) {
    let Some(list) = document.get_mut("proxies").and_then(Value::as_array_mut) else { return };
    let mut unlisted: BTreeMap<&String, &ProxyIdentity> = statuses.iter().collect();
    for proxy in list.iter_mut() {
        let node = proxy.get("node").and_then(Value::as_str).unwrap_or_default().to_owned();
        let identity = unlisted.remove(&node).map(|status| status.to_json(bundle_digest, signer));
        proxy["identity"] = identity.unwrap_or(Value::Null);
    }
    for (node, status) in unlisted {
        list.push(json!({
            "node": node,
            "labels": {},
            "connected": false,
            "version": 0,
            "identity": status.to_json(bundle_digest, signer),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_get_their_identity_and_identity_only_proxies_are_listed() {
        let statuses = Statuses::default();
        statuses.update("edge-1", |p| {
            p.spiffe_id = "spiffe://weft.local/ns/default/sa/frontend".into();
            p.not_after = 1_800_000_000;
            p.issued_by = Some("sha256:a".into());
            p.bundle_digest = Some("sha256:b".into());
            p.streams = 1;
            p.last_error = Some(("the control plane is away".into(), 1_000));
        });
        statuses.update("edge-2", |p| p.spiffe_id = "spiffe://weft.local/ns/default/sa/backend".into());
        let mut document = json!({ "proxies": [ { "node": "edge-1", "connected": true } ] });
        annotate(&mut document, &statuses.snapshot(), "sha256:b", "sha256:a");
        let identity = &document["proxies"][0]["identity"];
        assert_eq!(identity["expires_at"], "2027-01-15T08:00:00.000Z");
        assert_eq!(identity["trust_bundle_current"], true);
        assert_eq!(identity["issued_by_signer"], true);
        assert_eq!(identity["last_renewal_error"]["reason"], "the control plane is away");
        assert_eq!(document["proxies"][1]["node"], "edge-2");
        assert_eq!(document["proxies"][1]["connected"], false);
        assert_eq!(statuses.following_where(|p| p.bundle_digest.is_none()), Vec::<String>::new());
        assert_eq!(statuses.following_where(|_| true), vec!["edge-1".to_owned()]);
    }
}

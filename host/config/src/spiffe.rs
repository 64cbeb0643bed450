//! SPIFFE IDs, the names of mesh workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`.
//! The control plane, the proxies and config validation all read them with [`SpiffeId::parse`],
//! so that they agree on what a valid one is.

use std::fmt;

/// The trust domain a mesh uses when the operator names none.
pub const DEFAULT_TRUST_DOMAIN: &str = "weft.local";

/// A workload identity in weft's shape: a trust domain, a namespace and a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service: String,
}

impl SpiffeId {
    /// The identity of `service` in `namespace` of `trust_domain`, each part checked.
    pub fn new(trust_domain: &str, namespace: &str, service: &str) -> Result<SpiffeId, String> {
        check_trust_domain(trust_domain)?;
        check_segment(namespace, "namespace")?;
        check_segment(service, "service")?;
        Ok(SpiffeId { trust_domain: trust_domain.into(), namespace: namespace.into(), service: service.into() })
    }

    /// Reads `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`; the reason says what is wrong.
    pub fn parse(text: &str) -> Result<SpiffeId, String> {
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("{text:?} is not a SPIFFE ID: it must start with spiffe://"))?;
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        let shape = || {
            format!("{text:?} is not a weft SPIFFE ID: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service>")
        };
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["ns", namespace, "sa", service] => {
                SpiffeId::new(domain, namespace, service).map_err(|reason| format!("{text:?}: {reason}"))
            }
            _ => Err(shape()),
        }
    }

    /// The `spiffe://` URI.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service)
    }
}

/// A trust domain: lower-case letters, digits, `.`, `-` and `_` (the SPIFFE spec's alphabet).
pub fn check_trust_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() || domain.len() > 255 {
        return Err(format!("trust domain {domain:?} must be 1 to 255 characters"));
    }
    if !domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')) {
        return Err(format!(
            "trust domain {domain:?} may hold only lower-case letters, digits, '.', '-' and '_' (e.g. weft.local)"
        ));
    }
    Ok(())
}

/// A namespace or service name: letters, digits, `.`, `-` and `_`, as the SPIFFE spec allows in
/// a path segment.
fn check_segment(segment: &str, what: &str) -> Result<(), String> {
    if segment.is_empty() || segment.len() > 128 {
        return Err(format!("{what} {segment:?} must be 1 to 128 characters"));
    }
    if segment == "." || segment == ".." {
        return Err(format!("{what} {segment:?} is not a name"));
    }
    if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
        return Err(format!("{what} {segment:?} may hold only letters, digits, '.', '-' and '_'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_name_their_parts() {
        let id = SpiffeId::parse("spiffe://weft.local/ns/default/sa/frontend").unwrap();
        assert_eq!(
            (id.trust_domain.as_str(), id.namespace.as_str(), id.service.as_str()),
            ("weft.local", "default", "frontend")
        );
        assert_eq!(id.to_string(), "spiffe://weft.local/ns/default/sa/frontend");
        assert_eq!(SpiffeId::new("weft.local", "default", "frontend").unwrap(), id);
    }

    #[test]
    fn malformed_ids_say_what_is_wrong() {
        assert!(SpiffeId::parse("https://weft.local/ns/a/sa/b").unwrap_err().contains("must start with spiffe://"));
        assert!(SpiffeId::parse("spiffe://weft.local/workload").unwrap_err().contains("expected spiffe://"));
        assert!(SpiffeId::parse("spiffe://Weft.Local/ns/a/sa/b").unwrap_err().contains("lower-case"));
        assert!(SpiffeId::parse("spiffe://weft.local/ns/a/sa/").unwrap_err().contains("service"));
        assert!(SpiffeId::parse("spiffe://weft.local/ns/../sa/b").unwrap_err().contains("not a name"));
        assert!(SpiffeId::parse("spiffe://weft.local/ns/a/sa/b/c").is_err());
        assert!(SpiffeId::new("weft.local", "a b", "c").unwrap_err().contains("namespace"));
    }
}

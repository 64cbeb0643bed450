//! The identity API (`identity.proto`): how a proxy gets and keeps its mesh certificate.
//!
//! - `Join`: a new proxy sends a join token (made by `weft token create`) and a CSR for its
//!   SPIFFE ID; it gets its certificate, the trust bundle, and a proxy credential with which it
//!   authenticates from then on (instead of any admin token).
//! - `Renew`: with the credential (`authorization: Bearer`), a CSR for the same identity; a new
//!   certificate.
//! - `Follow`: with the credential, one stream per proxy: the proxy reports its certificate and
//!   the bundle it holds (and its last renewal error), the control plane sends the bundle whenever
//!   it changes (a root rotation) and asks for an early renewal when the signing root changed.
//!
//! The private key never leaves the proxy: only CSRs travel.

/// `Identity/Join`: a join token and a CSR for a first certificate.
pub const JOIN_PATH: &str = "/weft.control.v1.Identity/Join";
/// `Identity/Renew`: a CSR for a new certificate, with the proxy credential.
pub const RENEW_PATH: &str = "/weft.control.v1.Identity/Renew";
/// `Identity/Follow`: the stream of reports and trust-bundle updates.
pub const FOLLOW_PATH: &str = "/weft.control.v1.Identity/Follow";
/// What every identity path starts with.
pub const SERVICE_PREFIX: &str = "/weft.control.v1.Identity/";

/// From a new proxy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JoinRequest {
    /// The join token (secret).
    #[prost(string, tag = "1")]
    pub token: String,
    /// The proxy's node id.
    #[prost(string, tag = "2")]
    pub node: String,
    /// A PKCS#10 CSR (DER) whose only URI SAN is the SPIFFE ID asked for.
    #[prost(bytes = "vec", tag = "3")]
    pub csr: Vec<u8>,
}

/// From a proxy that has a credential.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RenewRequest {
    #[prost(string, tag = "1")]
    pub node: String,
    /// A PKCS#10 CSR (DER) for the same SPIFFE ID as before, with a new key.
    #[prost(bytes = "vec", tag = "2")]
    pub csr: Vec<u8>,
}

/// A certificate issued (the answer to `Join` and `Renew`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Issued {
    /// The certificate and the CA certificates between it and a root, PEM, leaf first.
    #[prost(string, tag = "1")]
    pub chain_pem: String,
    /// The roots a peer's certificate must lead to, PEM.
    #[prost(string, tag = "2")]
    pub bundle_pem: String,
    /// The SPIFFE ID certified.
    #[prost(string, tag = "3")]
    pub spiffe_id: String,
    /// Unix seconds.
    #[prost(uint64, tag = "4")]
    pub not_after: u64,
    /// Only in the answer to `Join`: the proxy credential (secret), to keep.
    #[prost(string, tag = "5")]
    pub credential: String,
}

/// From the proxy on the `Follow` stream: what it holds now (the first message, and after
/// every change).
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdentityReport {
    #[prost(string, tag = "1")]
    pub node: String,
    /// Its current certificate (DER); empty when it has none.
    #[prost(bytes = "vec", tag = "2")]
    pub certificate: Vec<u8>,
    /// The digest of the trust bundle it uses (`sha256:<hex>`).
    #[prost(string, tag = "3")]
    pub bundle_digest: String,
    /// Why the last renewal failed, when it did and none succeeded since; empty otherwise.
    #[prost(string, tag = "4")]
    pub last_error: String,
    /// When it failed, Unix seconds.
    #[prost(uint64, tag = "5")]
    pub last_error_at: u64,
    /// Renewals failed in a row.
    #[prost(uint32, tag = "6")]
    pub failures: u32,
}

/// From the control plane on the `Follow` stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdentityUpdate {
    /// The trust bundle, PEM.
    #[prost(string, tag = "1")]
    pub bundle_pem: String,
    /// Its digest (`sha256:<hex>`), for the report that acknowledges it.
    #[prost(string, tag = "2")]
    pub bundle_digest: String,
    /// Renew now: certificates are issued by another root than the proxy's.
    #[prost(bool, tag = "3")]
    pub renew: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn identity_messages_round_trip() {
        let join = JoinRequest { token: "t".into(), node: "edge-1".into(), csr: vec![1, 2, 3] };
        assert_eq!(JoinRequest::decode(join.encode_to_vec().as_slice()).unwrap(), join);
        let update = IdentityUpdate { bundle_pem: "pem".into(), bundle_digest: "sha256:00".into(), renew: true };
        assert_eq!(IdentityUpdate::decode(update.encode_to_vec().as_slice()).unwrap(), update);
    }
}

//! The gRPC API between the control plane and its proxies (`distribution.proto`): one
//! bidirectional stream per proxy, after xDS — the control plane sends config versions with a
//! nonce, the proxy answers each with an ACK or a NACK naming the nonce — and module downloads by
//! digest, in chunks. The messages are declared with prost's derive, so the build needs no
//! protoc; the paths and the codec are here so that both sides agree on them.

use std::collections::HashMap;

pub mod experiments;
pub mod identity;

/// `Distribution/Stream`: the per-proxy config stream.
pub const STREAM_PATH: &str = "/weft.control.v1.Distribution/Stream";
/// `Distribution/FetchModule`: a module's bytes by digest.
pub const FETCH_MODULE_PATH: &str = "/weft.control.v1.Distribution/FetchModule";

/// How large a module chunk is: small enough for any HTTP/2 window, large enough to be few.
pub const MODULE_CHUNK_BYTES: usize = 256 * 1024;

/// The codec of every message on the API.
pub type Codec<Encode, Decode> = tonic_prost::ProstCodec<Encode, Decode>;

/// From a proxy: first who it is (the hello), then an answer to each [`ControlMessage`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProxyMessage {
    /// The proxy's node id.
    #[prost(string, tag = "1")]
    pub node: String,
    /// Its labels, which config selectors match.
    #[prost(map = "string, string", tag = "2")]
    pub labels: HashMap<String, String>,
    /// In the hello: the version it runs (0: none). In an answer: the version answered.
    #[prost(uint64, tag = "3")]
    pub version: u64,
    /// Empty in the hello; in an answer, the nonce of the message answered.
    #[prost(string, tag = "4")]
    pub nonce: String,
    /// Empty: ACK, the version runs. Otherwise NACK: why it could not be loaded.
    #[prost(string, tag = "5")]
    pub error: String,
    /// Not an answer (the nonce is empty) but the proxy's measurements for its chaos
    /// experiments: [`experiments::Report`]s as JSON, sent every
    /// [`experiments::REPORT_INTERVAL`] while it has any.
    #[prost(string, tag = "6")]
    pub reports: String,
}

/// From the control plane: a config version for this proxy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ControlMessage {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// Unique per message; the answer names it.
    #[prost(string, tag = "2")]
    pub nonce: String,
    /// The config's resources (listeners, clusters, filters), as JSON.
    #[prost(string, tag = "3")]
    pub resources: String,
    /// The `sha256:<hex>` digests of the modules the resources load.
    #[prost(string, repeated, tag = "4")]
    pub modules: Vec<String>,
    /// The chaos experiments this proxy takes part in now, all of them ([`experiments::Assignment`]s
    /// as JSON; empty: none). A message is sent when they change, with the same version.
    #[prost(string, tag = "5")]
    pub experiments: String,
}

/// A module wanted, by digest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModuleRequest {
    #[prost(string, tag = "1")]
    pub digest: String,
}

/// A piece of a module's bytes, in order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModuleChunk {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn messages_round_trip_through_their_wire_form() {
        let hello = ProxyMessage {
            node: "edge-1".into(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            version: 3,
            nonce: String::new(),
            error: String::new(),
            reports: String::new(),
        };
        assert_eq!(ProxyMessage::decode(hello.encode_to_vec().as_slice()).unwrap(), hello);
        let push = ControlMessage {
            version: 4,
            nonce: "4-1".into(),
            resources: "{}".into(),
            modules: vec!["sha256:00".into()],
            experiments: "[]".into(),
        };
        assert_eq!(ControlMessage::decode(push.encode_to_vec().as_slice()).unwrap(), push);
    }
}

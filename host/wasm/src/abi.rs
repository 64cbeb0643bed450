//! The Proxy-Wasm v0.2.1 vocabulary: status codes, enums, and the header-map wire format, exactly
//! as the spec and the public SDK define them (the SDK panics on anything else).

/// Status codes a hostcall returns.
pub mod status {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const BAD_ARGUMENT: u32 = 2;
    pub const SERIALIZATION_FAILURE: u32 = 3;
    pub const PARSE_FAILURE: u32 = 4;
    pub const EMPTY: u32 = 7;
    pub const CAS_MISMATCH: u32 = 8;
    pub const INTERNAL_FAILURE: u32 = 10;
    /// Spec value for calls weft does not support. The Rust SDK has no variant for it, so weft
    /// only answers it where the SDK never looks (calls it does not import).
    pub const UNIMPLEMENTED: u32 = 12;
}

/// `proxy_action_t`: what a stream callback tells the host.
pub const ACTION_CONTINUE: u32 = 0;
pub const ACTION_PAUSE: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
}

impl MapType {
    pub fn from_abi(value: u32) -> Option<MapType> {
        Some(match value {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcInitialMetadata,
            5 => MapType::GrpcTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferType {
    RequestBody,
    ResponseBody,
    DownstreamData,
    UpstreamData,
    HttpCallResponseBody,
    GrpcReceiveBuffer,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    pub fn from_abi(value: u32) -> Option<BufferType> {
        Some(match value {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

/// `proxy_log_level_t`.
pub fn log_level(value: u32) -> tracing::Level {
    match value {
        0 => tracing::Level::TRACE,
        1 => tracing::Level::DEBUG,
        2 => tracing::Level::INFO,
        3 => tracing::Level::WARN,
        _ => tracing::Level::ERROR,
    }
}

/// The guest's view of the host's log level (0 trace .. 4 error).
pub fn current_log_level() -> u32 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        _ => 4,
    }
}

/// Serializes pairs the spec's way: `u32 count`, then `u32 key_len, u32 value_len` per pair, then
/// each key and value followed by a NUL byte. All integers little-endian.
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let mut out = Vec::new();
    encode_pairs_into(&mut out, pairs);
    out
}

/// [`encode_pairs`] appending to `out` (a buffer reused from call to call).
pub fn encode_pairs_into<'a>(out: &mut Vec<u8>, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) {
    encode_pairs_with(out, || pairs.clone());
}

/// [`encode_pairs_into`] for pairs that cannot be cloned as an iterator (a header map's): `pairs`
/// makes a fresh iterator over the same pairs for each of the encoding's three passes.
pub fn encode_pairs_with<'a, I: Iterator<Item = (&'a [u8], &'a [u8])>>(out: &mut Vec<u8>, pairs: impl Fn() -> I) {
    let (count, bytes) = pairs().fold((0usize, 0usize), |(n, b), (k, v)| (n + 1, b + k.len() + v.len() + 2));
    out.reserve(4 + count * 8 + bytes);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (key, value) in pairs() {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (key, value) in pairs() {
        out.extend_from_slice(key);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
}

/// Parses the spec's pairs format; `None` when the bytes do not hold exactly that.
/// Zero or one byte is an empty map (the spec allows both).
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.len() <= 1 {
        return Some(Vec::new());
    }
    let read_u32 =
        |at: usize| -> Option<usize> { Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize) };
    let count = read_u32(0)?;
    let mut sizes = Vec::with_capacity(count.min(1024));
    let mut at = 4;
    for _ in 0..count {
        sizes.push((read_u32(at)?, read_u32(at + 4)?));
        at += 8;
    }
    let mut pairs = Vec::with_capacity(sizes.len());
    for (key_len, value_len) in sizes {
        let key = bytes.get(at..at + key_len)?;
        if *bytes.get(at + key_len)? != 0 {
            return None;
        }
        at += key_len + 1;
        let value = bytes.get(at..at + value_len)?;
        if *bytes.get(at + value_len)? != 0 {
            return None;
        }
        at += value_len + 1;
        pairs.push((key, value));
    }
    (at == bytes.len()).then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public SDK's own test vector.
    const SDK_VECTOR: &[u8] = b"\x04\x00\x00\x00\x07\x00\x00\x00\x03\x00\x00\x00\x05\x00\x00\x00\x08\x00\x00\x00\x0a\x00\x00\x00\x0b\x00\x00\x00\x0a\x00\x00\x00\x0a\x00\x00\x00:method\x00GET\x00:path\x00/bytes/1\x00:authority\x00httpbin.org\x00Powered-By\x00proxy-wasm\x00";

    #[test]
    fn pairs_encode_like_the_sdk() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":path", b"/bytes/1"),
            (b":authority", b"httpbin.org"),
            (b"Powered-By", b"proxy-wasm"),
        ];
        assert_eq!(encode_pairs(pairs.iter().copied()), SDK_VECTOR);
        assert_eq!(decode_pairs(SDK_VECTOR).unwrap(), pairs);
    }

    #[test]
    fn malformed_pairs_are_refused_and_empty_maps_accepted() {
        assert_eq!(decode_pairs(&[]).unwrap().len(), 0);
        assert_eq!(decode_pairs(&[0]).unwrap().len(), 0);
        assert_eq!(decode_pairs(&[0, 0, 0, 0]).unwrap().len(), 0);
        assert!(decode_pairs(&SDK_VECTOR[..SDK_VECTOR.len() - 1]).is_none(), "truncated");
        let mut bad = SDK_VECTOR.to_vec();
        bad[0] = 9;
        assert!(decode_pairs(&bad).is_none(), "count past the end");
    }
}

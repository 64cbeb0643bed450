//! The host calls the SDK makes, typed and returning `Result`.
//!
//! In a Wasm build they are Proxy-Wasm v0.2.1 imports (`host/abi.rs`); in a native build (unit
//! tests) the same functions act on the test harness's in-memory host (`testing::fake`), so a
//! filter's code is the same in both.

use crate::Error;

/// Which header map a call reads or writes (Proxy-Wasm `MapType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Map {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    CallResponseHeaders = 6,
}

/// Which buffer a call reads or writes (Proxy-Wasm `BufferType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Buffer {
    RequestBody = 0,
    ResponseBody = 1,
    CallResponseBody = 4,
    PluginConfiguration = 7,
}

/// Which direction of a request `continue_stream` resumes (Proxy-Wasm `StreamType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The request on its way to the upstream.
    Request = 0,
    /// The response on its way back.
    Response = 1,
}

/// Log levels, as Proxy-Wasm numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// The finest detail.
    Trace = 0,
    /// For whoever debugs the filter.
    Debug = 1,
    /// Normal events worth a line.
    Info = 2,
    /// Something is off but the request goes on.
    Warn = 3,
    /// A request or the filter failed.
    Error = 4,
    /// The filter cannot work at all.
    Critical = 5,
}

/// The three kinds of metric a filter can define.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Only goes up.
    Counter = 0,
    /// Goes up and down.
    Gauge = 1,
    /// A distribution of values.
    Histogram = 2,
}

// Proxy-Wasm status codes, turned into errors by `check` (used by the Wasm backend only).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) const OK: u32 = 0;
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) const NOT_FOUND: u32 = 1;
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) const CAS_MISMATCH: u32 = 8;

/// Turns a host status into `Ok` or an error naming the call that failed.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn check(call: &'static str, status: u32) -> Result<(), Error> {
    match status {
        OK => Ok(()),
        CAS_MISMATCH => Err(Error::CasMismatch),
        status => Err(Error::Host { call, status }),
    }
}

#[cfg(target_arch = "wasm32")]
#[path = "host/abi.rs"]
mod backend;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::fake as backend;

pub(crate) use backend::*;

/// The header-map wire format of Proxy-Wasm: a u32 count, then a (u32 key length, u32 value
/// length) per pair, then each key and value followed by a NUL byte; all little-endian.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn encode_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs.iter().map(|(k, v)| 8 + k.len() + v.len() + 2).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Reads the header-map wire format; `None` when the bytes do not follow it.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn decode_pairs(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    let mut sizes = 4;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut pairs = Vec::with_capacity(count.min(256));
    for _ in 0..count {
        let (klen, vlen) = (word(sizes)?, word(sizes + 4)?);
        sizes += 8;
        let key = bytes.get(data..data + klen)?;
        data += klen + 1;
        let value = bytes.get(data..data + vlen)?;
        data += vlen + 1;
        pairs.push((String::from_utf8_lossy(key).into_owned(), String::from_utf8_lossy(value).into_owned()));
    }
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_through_the_wire_format() {
        let pairs = [(":path", "/a"), ("x-empty", ""), ("host", "example.com")];
        let bytes = encode_pairs(&pairs);
        let back = decode_pairs(&bytes).unwrap();
        let back: Vec<(&str, &str)> = back.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(back, pairs);
    }

    #[test]
    fn a_truncated_header_map_is_refused_not_read_past_its_end() {
        let bytes = encode_pairs(&[("key", "value")]);
        assert!(decode_pairs(&bytes[..bytes.len() - 3]).is_none());
        assert!(decode_pairs(&[1, 0, 0]).is_none());
    }
}

//! Callouts a filter makes (`proxy_http_call`, `proxy_grpc_call`): the request built from the
//! ABI's arguments, and the response turned into what the guest reads back.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request};
use std::time::Duration;
use weft_proxy::chain::CalloutResponse;

/// A callout the guest asked for, sent once its callback returns.
pub struct Callout {
    pub token: u32,
    pub cluster: String,
    pub request: Request<Bytes>,
    pub timeout: Duration,
    pub grpc: bool,
}

/// An HTTP callout's response as the guest reads it: header maps (`:status` first) and body.
pub struct CalloutReply {
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl From<CalloutResponse> for CalloutReply {
    fn from(response: CalloutResponse) -> Self {
        let pairs = |map: &http::HeaderMap| -> Vec<(Vec<u8>, Vec<u8>)> {
            map.iter().map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
        };
        let mut headers = vec![(b":status".to_vec(), response.head.status.as_str().as_bytes().to_vec())];
        headers.extend(pairs(&response.head.headers));
        CalloutReply { headers, body: response.body.to_vec(), trailers: pairs(&response.trailers) }
    }
}

/// How a unary gRPC callout ended: the response message, or a status other than OK.
pub enum GrpcOutcome {
    Message(Vec<u8>),
    Status(u32, String),
}

const GRPC_UNKNOWN: u32 = 2;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

/// Builds an HTTP callout from its header map (`:method`, `:path`, `:authority` required, as in
/// Envoy) and body.
pub fn http_request(pairs: &[(&[u8], &[u8])], body: Vec<u8>) -> Result<Request<Bytes>, String> {
    let mut request = Request::new(Bytes::from(body));
    let (mut path, mut authority) = (None, None);
    for (name, value) in pairs {
        let text = || String::from_utf8_lossy(value).into_owned();
        match *name {
            b":method" => *request.method_mut() = Method::from_bytes(value).map_err(|_| "invalid :method")?,
            b":path" => path = Some(text()),
            b":authority" => authority = Some(text()),
            b":scheme" => {}
            _ => {
                let name = HeaderName::from_bytes(name).map_err(|_| format!("invalid header name {:?}", text()))?;
                let value = HeaderValue::from_bytes(value).map_err(|_| format!("invalid value for {name}"))?;
                request.headers_mut().append(name, value);
            }
        }
    }
    let path = path.ok_or(":path is missing")?;
    let authority = authority.ok_or(":authority is missing")?;
    *request.uri_mut() = path.parse().map_err(|_| format!("invalid :path {path:?}"))?;
    let host = HeaderValue::from_str(&authority).map_err(|_| format!("invalid :authority {authority:?}"))?;
    request.headers_mut().insert(http::header::HOST, host);
    Ok(request)
}

/// Builds a unary gRPC call: `POST /service/method`, the message in one length-prefixed frame.
pub fn grpc_request(
    cluster: &str,
    service: &str,
    method: &str,
    metadata: &[(&[u8], &[u8])],
    message: &[u8],
) -> Result<Request<Bytes>, String> {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    let mut request = Request::new(framed.freeze());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = format!("/{service}/{method}").parse().map_err(|_| "invalid service or method name")?;
    let headers = request.headers_mut();
    for (name, value) in metadata {
        let name = HeaderName::from_bytes(name).map_err(|_| "invalid metadata name")?;
        headers.append(name, HeaderValue::from_bytes(value).map_err(|_| "invalid metadata value")?);
    }
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    headers.insert(http::header::HOST, HeaderValue::from_str(cluster).map_err(|_| "invalid cluster name")?);
    Ok(request)
}

/// Reads a unary gRPC response: the status from the trailers (or a trailers-only head), the
/// message from the first frame. HTTP errors map to gRPC codes as the gRPC spec says.
pub fn grpc_outcome(result: Result<CalloutResponse, String>) -> GrpcOutcome {
    let response = match result {
        Ok(response) => response,
        Err(reason) => return GrpcOutcome::Status(GRPC_UNAVAILABLE, reason),
    };
    let status = response.head.status.as_u16();
    if status != 200 {
        let code = match status {
            400 => GRPC_INTERNAL,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502..=504 => GRPC_UNAVAILABLE,
            _ => GRPC_UNKNOWN,
        };
        return GrpcOutcome::Status(code, format!("HTTP status {status}"));
    }
    let field = |name: &str| response.trailers.get(name).or_else(|| response.head.headers.get(name));
    let code = field("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(GRPC_UNKNOWN);
    if code != 0 {
        let message = field("grpc-message").map(|v| percent_decode(v.as_bytes()));
        return GrpcOutcome::Status(code, message.unwrap_or_default());
    }
    let body = &response.body;
    if body.len() < 5 || body[0] != 0 {
        return GrpcOutcome::Status(GRPC_INTERNAL, "the response is not one uncompressed gRPC message".into());
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    match body.get(5..5 + length) {
        Some(message) => GrpcOutcome::Message(message.to_vec()),
        None => GrpcOutcome::Status(GRPC_INTERNAL, "the response message is cut short".into()),
    }
}

/// `grpc-message` is percent-encoded on the wire (gRPC over HTTP/2); the guest reads it plain.
fn percent_decode(bytes: &[u8]) -> String {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &[u8], trailers: &[(&str, &str)]) -> CalloutResponse {
        let mut head = http::Response::new(()).into_parts().0;
        head.status = http::StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            head.headers.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let mut map = http::HeaderMap::new();
        for (k, v) in trailers {
            map.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        CalloutResponse { head, body: Bytes::copy_from_slice(body), trailers: map }
    }

    #[test]
    fn http_callouts_need_path_and_authority() {
        let pairs: Vec<(&[u8], &[u8])> =
            vec![(b":method", b"POST"), (b":path", b"/check?x=1"), (b":authority", b"auth"), (b"x-a", b"1")];
        let request = http_request(&pairs, b"hi".to_vec()).unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/check?x=1");
        assert_eq!(request.headers()["host"], "auth");
        assert_eq!(request.headers()["x-a"], "1");
        assert_eq!(http_request(&pairs[..1], Vec::new()).unwrap_err(), ":path is missing");
    }

    #[test]
    fn grpc_responses_give_the_message_or_the_status() {
        let ok = response(200, &[], &[0, 0, 0, 0, 2, 7, 8], &[("grpc-status", "0")]);
        assert!(matches!(grpc_outcome(Ok(ok)), GrpcOutcome::Message(m) if m == [7, 8]));
        let denied = response(200, &[("grpc-status", "7"), ("grpc-message", "not%20you%")], b"", &[]);
        assert!(matches!(grpc_outcome(Ok(denied)), GrpcOutcome::Status(7, m) if m == "not you%"));
        assert!(matches!(grpc_outcome(Ok(response(503, &[], b"", &[]))), GrpcOutcome::Status(14, _)));
        assert!(matches!(grpc_outcome(Err("refused".into())), GrpcOutcome::Status(14, m) if m == "refused"));
        let short = response(200, &[], &[0, 0, 0, 0, 9, 1], &[("grpc-status", "0")]);
        assert!(matches!(grpc_outcome(Ok(short)), GrpcOutcome::Status(13, _)));
    }
}

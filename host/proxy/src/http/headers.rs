//! Header rules of a forward proxy: hop-by-hop headers stay on their hop; `x-forwarded-*` and
//! `x-request-id` travel on.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the headers that describe one connection rather than the message (RFC 9110 §7.6.1),
/// including any named by `Connection`. `TE: trailers` survives: gRPC needs it end to end.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive for a tunnel.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(connection) = headers.get(header::CONNECTION) {
        if let Ok(text) = connection.to_str() {
            let named: Vec<HeaderName> = text
                .split(',')
                .map(|t| t.trim())
                .filter(|t| !t.is_empty())
                .filter(|t| !(keep_upgrade && t.eq_ignore_ascii_case("upgrade")))
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
    }
    for name in
        [&KEEP_ALIVE, &PROXY_CONNECTION, &header::TRANSFER_ENCODING, &header::TRAILER, &header::PROXY_AUTHENTICATE]
    {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHORIZATION);
    let te_is_trailers = headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_is_trailers {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Whether an HTTP/1.1 request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|t| t.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Appends the client to `x-forwarded-for` and states the scheme the client used.
pub fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, https: bool) {
    let client = client.to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {client}"),
        _ => client,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if https { "https" } else { "http" }));
}

/// The request's id: the client's `x-request-id` when it sent a usable one, else a new UUID v4.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        if !id.is_empty() && id.len() <= 128 {
            return id.clone();
        }
    }
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut buffer = uuid::Uuid::encode_buffer();
    // A hyphenated UUID is always a valid header value.
    let value =
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut buffer)).unwrap_or(HeaderValue::from_static("-"));
    headers.insert(X_REQUEST_ID.clone(), value.clone());
    value
}

/// Size of a request head as the header limits count it: each name, value and separator.
pub fn head_size(headers: &HeaderMap, uri_len: usize) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>() + uri_len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic Zm9v"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut headers, false);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut headers = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers["te"], "trailers");
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers() {
        let mut headers = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade_request(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let mut headers = map(&[("x-forwarded-for", "203.0.113.7")]);
        set_forwarded(&mut headers, "127.0.0.1".parse().unwrap(), true);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn a_request_id_is_kept_or_made() {
        let mut headers = map(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut headers), "abc");
        let mut headers = HeaderMap::new();
        let made = ensure_request_id(&mut headers);
        assert_eq!(made.len(), 36);
        assert_eq!(headers["x-request-id"], made);
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), made);
    }
}

//! Header rules of a forward proxy: hop-by-hop headers stay on their hop; `x-forwarded-*` and
//! `x-request-id` travel on.

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The hop-by-hop headers weft removes, each with its bit in the set [`strip_hop_by_hop`] finds.
fn hop_by_hop(name: &HeaderName) -> u16 {
    match name {
        n if n == header::CONNECTION => 1,
        n if n == header::TRANSFER_ENCODING => 1 << 1,
        n if n == header::TRAILER => 1 << 2,
        n if n == header::PROXY_AUTHENTICATE => 1 << 3,
        n if n == header::PROXY_AUTHORIZATION => 1 << 4,
        n if n == header::TE => 1 << 5,
        n if n == header::UPGRADE => 1 << 6,
        n if n == KEEP_ALIVE => 1 << 7,
        n if n == PROXY_CONNECTION => 1 << 8,
        _ => 0,
    }
}

/// The names [`hop_by_hop`] knows, as `Connection` may list them.
const FIXED: [&str; 9] = [
    "connection",
    "transfer-encoding",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
];

const CONNECTION_BIT: u16 = 1;
const UPGRADE_BIT: u16 = 1 << 6;

/// Removes the headers that describe one connection rather than the message (RFC 9110 §7.6.1),
/// including any named by `Connection`. `TE: trailers` survives: gRPC needs it end to end.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive for a tunnel.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which are there: most messages carry none of them but
    // `Connection`, and a hashed lookup for each name that is not there cost more than the rest.
    let mut present = 0u16;
    for (name, value) in headers.iter() {
        let bit = hop_by_hop(name);
        if bit == 1 << 5 && value.as_bytes().eq_ignore_ascii_case(b"trailers") {
            continue;
        }
        present |= bit;
    }
    // Most messages' `Connection` says only `keep-alive` or `close`, which name no other field:
    // that is checked first, as reading its tokens costs more than the rest of this.
    let names_fields = |headers: &HeaderMap| {
        headers.get_all(header::CONNECTION).iter().any(|value| {
            let value = value.as_bytes();
            !value.eq_ignore_ascii_case(b"keep-alive") && !value.eq_ignore_ascii_case(b"close")
        })
    };
    if present & CONNECTION_BIT != 0 && names_fields(headers) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|text| text.split(','))
            .map(str::trim)
            // `close` is a connection option, not a field ("Close" is a reserved field name).
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("close"))
            // The fixed ones (`keep-alive`, `upgrade`, …) are removed below when they are there.
            .filter(|t| !FIXED.iter().any(|fixed| t.eq_ignore_ascii_case(fixed)))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        present &= !(CONNECTION_BIT | UPGRADE_BIT);
    }
    for name in [
        &header::CONNECTION,
        &header::TRANSFER_ENCODING,
        &header::TRAILER,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ] {
        if present & hop_by_hop(name) != 0 {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
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

/// A client's address as an `x-forwarded-for` entry: made once per connection, not per request.
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    // An IP address in text is always a valid header value.
    HeaderValue::from_str(&client.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Appends the client (its [`forwarded_for`] value) to `x-forwarded-for` and states the scheme
/// the client used.
pub fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, https: bool) {
    // Through an entry: one hash of the name where a lookup and an insert took two.
    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Occupied(mut entry) => {
            let joined = entry.get().to_str().ok().filter(|existing| !existing.trim().is_empty()).map(|existing| {
                let mut joined = Vec::with_capacity(existing.len() + 2 + client.len());
                joined.extend_from_slice(existing.as_bytes());
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(client.as_bytes());
                HeaderValue::from_bytes(&joined)
            });
            match joined {
                Some(Ok(joined)) => {
                    entry.insert(joined);
                }
                // A list that cannot take one more entry is left as it came.
                Some(Err(_)) => {}
                None => {
                    entry.insert(client.clone());
                }
            }
        }
        Entry::Vacant(entry) => {
            entry.insert(client.clone());
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if https { "https" } else { "http" }));
}

/// The request's id, left in its headers: the client's `x-request-id` when it sent a usable one,
/// else a new UUID v4.
pub fn ensure_request_id(headers: &mut HeaderMap) -> &HeaderValue {
    let usable = |id: &HeaderValue| !id.is_empty() && id.len() <= 128;
    match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(entry) if usable(entry.get()) => entry.into_mut(),
        Entry::Occupied(mut entry) => {
            entry.insert(new_request_id());
            entry.into_mut()
        }
        Entry::Vacant(entry) => entry.insert(new_request_id()),
    }
}

fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut buffer = uuid::Uuid::encode_buffer();
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buffer)).unwrap_or(HeaderValue::from_static("-"))
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
        set_forwarded(&mut headers, &forwarded_for("127.0.0.1".parse().unwrap()), true);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        let mut first = HeaderMap::new();
        set_forwarded(&mut first, &forwarded_for("::1".parse().unwrap()), false);
        assert_eq!(first["x-forwarded-for"], "::1");
        assert_eq!(first["x-forwarded-proto"], "http");
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_as_they_are() {
        let mut headers = map(&[("host", "shop"), ("accept", "*/*"), ("te", "trailers")]);
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 3);
        let mut closing = map(&[("connection", "close"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut closing, false);
        assert_eq!(closing.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["x-kept"]);
        let mut several =
            map(&[("connection", "x-a"), ("connection", "x-b"), ("x-a", "1"), ("x-b", "2"), ("x-c", "3")]);
        strip_hop_by_hop(&mut several, false);
        assert_eq!(
            several.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["x-c"],
            "every Connection header counts"
        );
    }

    #[test]
    fn a_request_id_is_kept_or_made() {
        let mut headers = map(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut headers), "abc");
        let mut headers = HeaderMap::new();
        let made = ensure_request_id(&mut headers).clone();
        assert_eq!(made.len(), 36);
        assert_eq!(headers["x-request-id"], made);
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), made);
        let mut empty = map(&[("x-request-id", ""), ("x-request-id", "second")]);
        let replaced = ensure_request_id(&mut empty).clone();
        assert_eq!(replaced.len(), 36, "an empty id is replaced");
        assert_eq!(
            empty.get_all("x-request-id").iter().collect::<Vec<_>>(),
            [&replaced],
            "and only the new one is left"
        );
    }
}

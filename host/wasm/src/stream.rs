//! A request as a filter sees it during a callback: its header maps (with the HTTP/2 style
//! pseudo-headers `:method`, `:path`, `:authority`, `:scheme`, `:status`), the body and trailers
//! of the phase that runs, and its properties.

use crate::abi::{BufferType, MapType};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use weft_proxy::chain::StreamInfo;

pub struct StreamState {
    pub info: Arc<StreamInfo>,
    pub request: Option<http::request::Parts>,
    pub response: Option<http::response::Parts>,
    /// The body data of a body phase: what arrived, plus what the filter held back before.
    pub request_body: Option<bytes::BytesMut>,
    pub response_body: Option<bytes::BytesMut>,
    pub request_trailers: Option<HeaderMap>,
    pub response_trailers: Option<HeaderMap>,
    /// A connection's data in a network filter's data callback, from the client or the upstream.
    pub downstream_data: Option<bytes::BytesMut>,
    pub upstream_data: Option<bytes::BytesMut>,
    /// The writable `weft.upstream_cluster` property.
    pub upstream_cluster: Option<String>,
    /// The writable `weft.request_timeout` property: this request's upstream time limit.
    pub request_timeout: Option<std::time::Duration>,
    /// Properties a filter set that weft does not interpret, readable back by the filters.
    pub custom: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why a header edit was refused.
pub enum EditError {
    /// The map is not available in this phase.
    Unavailable,
    Invalid(String),
}

impl StreamState {
    pub fn new(info: Arc<StreamInfo>) -> Self {
        StreamState {
            info,
            request: None,
            response: None,
            request_body: None,
            response_body: None,
            request_trailers: None,
            response_trailers: None,
            downstream_data: None,
            upstream_data: None,
            upstream_cluster: None,
            request_timeout: None,
            custom: Vec::new(),
        }
    }

    fn headers(&self, map: MapType) -> Option<&HeaderMap> {
        match map {
            MapType::RequestHeaders => self.request.as_ref().map(|r| &r.headers),
            MapType::ResponseHeaders => self.response.as_ref().map(|r| &r.headers),
            MapType::RequestTrailers => self.request_trailers.as_ref(),
            MapType::ResponseTrailers => self.response_trailers.as_ref(),
            _ => None,
        }
    }

    fn headers_mut(&mut self, map: MapType) -> Option<&mut HeaderMap> {
        match map {
            MapType::RequestHeaders => self.request.as_mut().map(|r| &mut r.headers),
            MapType::ResponseHeaders => self.response.as_mut().map(|r| &mut r.headers),
            MapType::RequestTrailers => self.request_trailers.as_mut(),
            MapType::ResponseTrailers => self.response_trailers.as_mut(),
            _ => None,
        }
    }

    /// One pseudo-header's value, borrowed from the request or response (filters read `:path`
    /// and `:method` often).
    fn pseudo_value(&self, map: MapType, key: &str) -> Option<&str> {
        let request = self.request.as_ref().filter(|_| map == MapType::RequestHeaders);
        let response = self.response.as_ref().filter(|_| map == MapType::ResponseHeaders);
        match key {
            ":method" => request.map(|r| r.method.as_str()),
            ":path" => request.map(|r| r.uri.path_and_query().map_or("/", |p| p.as_str())),
            ":authority" => request.map(authority),
            ":scheme" => request.map(|_| if self.info.tls.is_some() { "https" } else { "http" }),
            ":status" => response.map(|r| r.status.as_str()),
            _ => None,
        }
    }

    fn pseudo(&self, map: MapType) -> impl Iterator<Item = (&'static str, &str)> + Clone {
        let keys: &[&'static str] = match map {
            MapType::RequestHeaders => &[":method", ":path", ":authority", ":scheme"],
            MapType::ResponseHeaders => &[":status"],
            _ => &[],
        };
        keys.iter().filter_map(move |key| self.pseudo_value(map, key).map(|value| (*key, value)))
    }

    /// Appends the whole map in the ABI's pairs encoding to `out`, pseudo-headers first, written
    /// straight from the request (nothing copied first); nothing when the map is empty or not
    /// available now.
    pub fn encode_pairs_into(&self, map: MapType, out: &mut Vec<u8>) {
        let headers = self.headers(map);
        let pseudo = self.pseudo(map);
        if pseudo.clone().next().is_none() && headers.is_none_or(HeaderMap::is_empty) {
            return;
        }
        let pairs = || {
            let headers =
                headers.into_iter().flat_map(|h| h.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())));
            pseudo.clone().map(|(k, v)| (k.as_bytes(), v.as_bytes())).chain(headers)
        };
        crate::abi::encode_pairs_with(out, pairs);
    }

    /// The whole map, pseudo-headers first; empty when the map is not available now.
    #[cfg(test)]
    pub fn pairs(&self, map: MapType) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> =
            self.pseudo(map).map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
        if let Some(headers) = self.headers(map) {
            pairs.extend(headers.iter().map(|(k, v)| (k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())));
        }
        pairs
    }

    pub fn count(&self, map: MapType) -> usize {
        // The pseudo-headers' number without building them: this runs on every headers callback.
        let pseudo = match (map, &self.request, &self.response) {
            (MapType::RequestHeaders, Some(_), _) => 4,
            (MapType::ResponseHeaders, _, Some(_)) => 1,
            _ => 0,
        };
        pseudo + self.headers(map).map_or(0, HeaderMap::len)
    }

    /// One value (the first, if the header repeats), borrowed.
    pub fn value(&self, map: MapType, key: &str) -> Option<&[u8]> {
        let key = lowercase(key);
        if key.starts_with(':') {
            return self.pseudo_value(map, &key).map(str::as_bytes);
        }
        self.headers(map)?.get(&*key).map(HeaderValue::as_bytes)
    }

    /// Adds (`append`) or replaces a header; pseudo-headers rewrite the request line or status.
    pub fn set(&mut self, map: MapType, key: &str, value: &[u8], append: bool) -> Result<(), EditError> {
        let key = lowercase(key);
        if key.starts_with(':') {
            return self.set_pseudo(map, &key, value);
        }
        let name = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| EditError::Invalid(format!("invalid header name {key:?}")))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| EditError::Invalid(format!("invalid value for header {key:?}")))?;
        let headers = self.headers_mut(map).ok_or(EditError::Unavailable)?;
        if append {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
        Ok(())
    }

    pub fn remove(&mut self, map: MapType, key: &str) -> Result<(), EditError> {
        let key = lowercase(key);
        if key.starts_with(':') {
            return Ok(());
        }
        let headers = self.headers_mut(map).ok_or(EditError::Unavailable)?;
        headers.remove(&*key);
        Ok(())
    }

    /// Replaces the whole map with `pairs`.
    pub fn replace_all(&mut self, map: MapType, pairs: &[(&[u8], &[u8])]) -> Result<(), EditError> {
        self.headers_mut(map).ok_or(EditError::Unavailable)?.clear();
        for (key, value) in pairs {
            self.set(map, &crate::memory::text(key), value, true)?;
        }
        Ok(())
    }

    fn set_pseudo(&mut self, map: MapType, key: &str, value: &[u8]) -> Result<(), EditError> {
        let text = std::str::from_utf8(value).map_err(|_| EditError::Invalid(format!("{key} must be text")))?;
        let invalid = |what: &str| EditError::Invalid(format!("invalid {what} {text:?}"));
        match (map, key) {
            (MapType::RequestHeaders, ":path") => {
                let request = self.request.as_mut().ok_or(EditError::Unavailable)?;
                let mut parts = request.uri.clone().into_parts();
                parts.path_and_query = Some(text.parse().map_err(|_| invalid("path"))?);
                request.uri = http::Uri::from_parts(parts).map_err(|_| invalid("path"))?;
            }
            (MapType::RequestHeaders, ":method") => {
                let request = self.request.as_mut().ok_or(EditError::Unavailable)?;
                request.method = text.parse().map_err(|_| invalid("method"))?;
            }
            (MapType::RequestHeaders, ":authority") => {
                let request = self.request.as_mut().ok_or(EditError::Unavailable)?;
                let host = HeaderValue::from_str(text).map_err(|_| invalid("authority"))?;
                request.headers.insert(http::header::HOST, host);
                if request.uri.authority().is_some() {
                    let mut parts = request.uri.clone().into_parts();
                    parts.authority = Some(text.parse().map_err(|_| invalid("authority"))?);
                    request.uri = http::Uri::from_parts(parts).map_err(|_| invalid("authority"))?;
                }
            }
            (MapType::ResponseHeaders, ":status") => {
                let response = self.response.as_mut().ok_or(EditError::Unavailable)?;
                response.status = text.parse().map_err(|_| invalid("status"))?;
            }
            // `:scheme` and unknown pseudo-headers describe the connection; nothing to rewrite.
            _ => {}
        }
        Ok(())
    }

    fn data_mut(&mut self, buffer: BufferType) -> Option<&mut bytes::BytesMut> {
        match buffer {
            BufferType::RequestBody => self.request_body.as_mut(),
            BufferType::ResponseBody => self.response_body.as_mut(),
            BufferType::DownstreamData => self.downstream_data.as_mut(),
            BufferType::UpstreamData => self.upstream_data.as_mut(),
            _ => None,
        }
    }

    /// The body or connection data of the callback that runs, if `buffer` is the one it is about.
    pub fn data(&self, buffer: BufferType) -> Option<&bytes::BytesMut> {
        match buffer {
            BufferType::RequestBody => self.request_body.as_ref(),
            BufferType::ResponseBody => self.response_body.as_ref(),
            BufferType::DownstreamData => self.downstream_data.as_ref(),
            BufferType::UpstreamData => self.upstream_data.as_ref(),
            _ => None,
        }
    }

    /// Replaces `length` bytes at `start` with `bytes` (clamped to the data: `start` past the end
    /// appends, a `length` past the end replaces the rest), as Envoy does.
    pub fn splice(&mut self, buffer: BufferType, start: usize, length: usize, bytes: &[u8]) -> bool {
        let Some(data) = self.data_mut(buffer) else { return false };
        let start = start.min(data.len());
        let end = start.saturating_add(length).min(data.len());
        let tail = data.split_off(end);
        data.truncate(start);
        data.extend_from_slice(bytes);
        data.extend_from_slice(&tail);
        true
    }

    /// A property's value in the ABI's encoding: strings raw, integers 8 bytes little-endian,
    /// booleans one byte, maps as pairs.
    #[cfg(test)]
    pub fn property(&self, path: &[&str], plugin: &crate::PluginInfo) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.property_into(path, plugin, &mut out).then_some(out)
    }

    /// Appends a property's value (in the encoding of [`StreamState::property`]) to `out`; false
    /// when there is no such property now. Values are written from where they live, unless they
    /// must be formatted.
    pub fn property_into(&self, path: &[&str], plugin: &crate::PluginInfo, out: &mut Vec<u8>) -> bool {
        let info = &self.info;
        let request = self.request.as_ref();
        let borrowed: Option<&[u8]> = match path {
            ["request", "path"] => request.map(|r| r.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes()),
            ["request", "url_path"] => request.map(|r| r.uri.path().as_bytes()),
            ["request", "host"] => request.map(|r| authority(r).as_bytes()),
            ["request", "scheme"] => Some(if info.tls.is_some() { b"https" } else { b"http" }),
            ["request", "method"] => request.map(|r| r.method.as_str().as_bytes()),
            ["request", "id"] => request.and_then(|r| r.headers.get("x-request-id")).map(HeaderValue::as_bytes),
            ["request", "protocol"] => request.map(|r| protocol(r.version).as_bytes()),
            ["request", "headers", name] => self.value(MapType::RequestHeaders, name),
            ["response", "headers", name] => self.value(MapType::ResponseHeaders, name),
            ["connection", "tls_version"] => info.tls.as_ref().map(|t| t.version.as_bytes()),
            ["connection", "uri_san_peer_certificate"] | ["source", "principal"] => {
                info.tls.as_ref().and_then(|t| t.peer_uri_san.as_ref()).map(|s| s.as_bytes())
            }
            ["connection", "subject_peer_certificate"] => {
                info.tls.as_ref().and_then(|t| t.peer_subject.as_ref()).map(|s| s.as_bytes())
            }
            ["listener_name"] => Some(info.listener.as_str().as_bytes()),
            ["weft", "upstream_cluster"] | ["cluster_name"] => self.upstream_cluster.as_deref().map(str::as_bytes),
            _ => return self.formatted_property(path, plugin, out),
        };
        match borrowed {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// The properties [`StreamState::property_into`] does not borrow: numbers, formatted text,
    /// maps, and what filters set.
    fn formatted_property(&self, path: &[&str], plugin: &crate::PluginInfo, out: &mut Vec<u8>) -> bool {
        let info = &self.info;
        let int = |n: u64| Some(n.to_le_bytes().to_vec());
        let value = match path {
            ["request", "time"] => {
                let nanos = info.started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
                int(nanos)
            }
            ["request", "headers"] => {
                if self.request.is_none() {
                    return false;
                }
                self.encode_pairs_into(MapType::RequestHeaders, out);
                return true;
            }
            ["response", "code"] => self.response.as_ref().and_then(|r| int(r.status.as_u16().into())),
            ["source", "address"] => Some(info.source.to_string().into_bytes()),
            ["source", "port"] => int(info.source.port().into()),
            ["destination", "address"] => Some(info.destination.to_string().into_bytes()),
            ["destination", "port"] => int(info.destination.port().into()),
            ["connection", "id"] => int(info.connection_id),
            ["connection", "mtls"] => Some(vec![u8::from(
                info.tls.as_ref().is_some_and(|t| t.peer_uri_san.is_some() || t.peer_subject.is_some()),
            )]),
            ["weft", "request_timeout"] => {
                self.request_timeout.map(|limit| weft_config::Duration(limit).to_string().into_bytes())
            }
            _ => {
                let joined = path.join("\0");
                let custom = self.custom.iter().find(|(k, _)| k == joined.as_bytes()).map(|(_, v)| v.clone());
                // What is not about the request is about the plugin.
                custom.or_else(|| plugin.property(path))
            }
        };
        match value {
            Some(value) => {
                out.extend_from_slice(&value);
                true
            }
            None => false,
        }
    }

    /// Sets a property: `weft.upstream_cluster` routes the request and `weft.request_timeout`
    /// (a duration, `2s`) limits it; other paths are kept for the filters to read back (like
    /// Envoy's filter state). A value weft cannot use is refused.
    pub fn set_property(&mut self, path: &[&str], value: &[u8]) -> Result<(), String> {
        match path {
            ["weft", "upstream_cluster"] => self.upstream_cluster = Some(String::from_utf8_lossy(value).into_owned()),
            ["weft", "request_timeout"] => {
                let text = String::from_utf8_lossy(value);
                let limit: weft_config::Duration = text.parse()?;
                self.request_timeout = Some(limit.0);
            }
            _ => {
                let joined = path.join("\0").into_bytes();
                self.custom.retain(|(k, _)| *k != joined);
                self.custom.push((joined, value.to_vec()));
            }
        }
        Ok(())
    }
}

/// Header names are case-insensitive; most arrive in lower case already, and then cost nothing.
fn lowercase(key: &str) -> std::borrow::Cow<'_, str> {
    if key.bytes().any(|b| b.is_ascii_uppercase()) {
        key.to_ascii_lowercase().into()
    } else {
        key.into()
    }
}

/// The request's authority: the URI's (HTTP/2, absolute-form), else the `Host` header.
fn authority(request: &http::request::Parts) -> &str {
    request
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| request.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default()
}

/// `request.protocol` as Envoy spells it (the `Debug` form of `http::Version`).
fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> StreamState {
        let info = Arc::new(StreamInfo {
            listener: weft_proxy::metrics::Name::new("public"),
            connection_id: 7,
            source: "127.0.0.1:5000".parse().unwrap(),
            destination: "127.0.0.1:8080".parse().unwrap(),
            tls: None,
            started: std::time::SystemTime::UNIX_EPOCH,
        });
        let mut state = StreamState::new(info);
        let request =
            http::Request::get("/a?b=1").header("host", "shop.example").header("x-one", "1").body(()).unwrap();
        state.request = Some(request.into_parts().0);
        state
    }

    #[test]
    fn request_maps_carry_pseudo_headers_first() {
        let state = state();
        let pairs = state.pairs(MapType::RequestHeaders);
        let keys: Vec<_> = pairs.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect();
        assert_eq!(keys, [":method", ":path", ":authority", ":scheme", "host", "x-one"]);
        assert_eq!(state.count(MapType::RequestHeaders), keys.len());
        let mut encoded = Vec::new();
        state.encode_pairs_into(MapType::RequestHeaders, &mut encoded);
        let decoded = crate::abi::decode_pairs(&encoded).unwrap();
        let expected: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        assert_eq!(decoded, expected, "encoded straight, the same pairs");
        assert_eq!(state.count(MapType::ResponseHeaders), 0, "no response yet");
        assert_eq!(state.value(MapType::RequestHeaders, ":authority").unwrap(), b"shop.example");
        assert_eq!(state.value(MapType::RequestHeaders, "X-One").unwrap(), b"1", "names are case-insensitive");
        assert!(state.value(MapType::ResponseHeaders, ":status").is_none(), "no response yet");
    }

    #[test]
    fn pseudo_headers_rewrite_the_request_line() {
        let mut state = state();
        assert!(state.set(MapType::RequestHeaders, ":path", b"/rewritten?x=2", false).is_ok());
        assert!(state.set(MapType::RequestHeaders, ":method", b"POST", false).is_ok());
        assert!(state.set(MapType::RequestHeaders, ":authority", b"other.example", false).is_ok());
        let request = state.request.as_ref().unwrap();
        assert_eq!(request.uri.path_and_query().unwrap().as_str(), "/rewritten?x=2");
        assert_eq!(request.method, http::Method::POST);
        assert_eq!(request.headers["host"], "other.example");
        assert!(matches!(
            state.set(MapType::RequestHeaders, ":path", b"no spaces allowed", false),
            Err(EditError::Invalid(_))
        ));
        assert!(matches!(state.set(MapType::RequestHeaders, "bad name", b"v", false), Err(EditError::Invalid(_))));
    }

    #[test]
    fn body_edits_replace_prepend_and_append() {
        let mut state = state();
        let body = BufferType::RequestBody;
        assert!(!state.splice(body, 0, 0, b"x"), "no body in this phase");
        state.request_body = Some(bytes::BytesMut::from(&b"hello world"[..]));
        assert!(state.splice(body, 0, 5, b"HELLO"));
        assert!(state.splice(body, 0, 0, b">"));
        assert!(state.splice(body, 100, 0, b"<"));
        assert_eq!(&state.data(body).unwrap()[..], b">HELLO world<");
        assert!(state.splice(body, 0, usize::MAX, b"all new"));
        assert_eq!(&state.data(body).unwrap()[..], b"all new");
        assert!(state.data(BufferType::ResponseBody).is_none(), "the other direction's body is not there");
    }

    #[test]
    fn properties_use_the_abi_encodings() {
        let mut state = state();
        let plugin = crate::PluginInfo {
            name: "f".into(),
            root_id: "".into(),
            configuration: Vec::new(),
            memory_limit: 1 << 20,
            time_limit: std::time::Duration::from_millis(10),
            shared_data: Default::default(),
            defined_metrics: Default::default(),
            proxy_metrics: weft_proxy::metrics::Metrics::new(),
            callouts: None,
            queues: Default::default(),
        };
        assert_eq!(state.property(&["request", "path"], &plugin).unwrap(), b"/a?b=1");
        assert_eq!(state.property(&["request", "url_path"], &plugin).unwrap(), b"/a");
        assert_eq!(state.property(&["source", "port"], &plugin).unwrap(), 5000u64.to_le_bytes());
        assert_eq!(state.property(&["connection", "mtls"], &plugin).unwrap(), [0]);
        assert!(state.property(&["source", "principal"], &plugin).is_none(), "no client certificate");
        state.set_property(&["weft", "upstream_cluster"], b"canary").unwrap();
        assert_eq!(state.property(&["weft", "upstream_cluster"], &plugin).unwrap(), b"canary");
        state.set_property(&["my", "note"], b"kept").unwrap();
        assert_eq!(state.property(&["my", "note"], &plugin).unwrap(), b"kept");
        state.set_property(&["weft", "request_timeout"], b"1.5s").unwrap();
        assert_eq!(state.request_timeout, Some(std::time::Duration::from_millis(1500)));
        let refused = state.set_property(&["weft", "request_timeout"], b"soon").unwrap_err();
        assert!(refused.contains("invalid duration \"soon\""), "{refused}");
    }
}

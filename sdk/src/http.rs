//! The typed views a phase method works with: [`Request`], [`Response`], [`Body`], [`LogView`],
//! and [`LocalResponse`], the answer a filter gives instead of the upstream.

use crate::call::{CallId, HttpCall};
use crate::host::{self, Buffer, Map};
use crate::{Action, Result};
use std::time::Duration;

/// What a phase method did besides its answer, settled by the dispatcher when it returns.
pub(crate) struct Effects {
    pub(crate) context: u32,
    /// Resume the held request at this time (host clock, nanoseconds).
    pub(crate) resume_at: Option<u64>,
    /// A local response was sent.
    pub(crate) responded: bool,
}

impl Effects {
    pub(crate) fn new(context: u32) -> Self {
        Effects { context, resume_at: None, responded: false }
    }
}

/// The request, as seen from the request phases (and from callout answers).
///
/// Header names are case-insensitive; pseudo-headers (`:path`, `:method`, `:authority`,
/// `:scheme`) are read and written like any other.
pub struct Request<'a> {
    fx: &'a mut Effects,
}

/// The response, as seen from the response phases. The request's headers stay readable
/// ([`Response::request_header`]).
pub struct Response<'a> {
    fx: &'a mut Effects,
}

/// What a body phase is given: how much body is buffered now and whether it is the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Body {
    size: usize,
    end_of_stream: bool,
}

impl Body {
    pub(crate) fn new(size: usize, end_of_stream: bool) -> Self {
        Body { size, end_of_stream }
    }

    /// Bytes available to [`Request::body`] in this call.
    pub fn size(&self) -> usize {
        self.size
    }

    /// `true` on the last piece: nothing more will come.
    pub fn end_of_stream(&self) -> bool {
        self.end_of_stream
    }
}

/// What the host's helpers share between requests and responses, written once.
macro_rules! message_methods {
    ($view:ident, $headers:expr, $trailers:expr, $body:expr) => {
        impl $view<'_> {
            /// One header's value (the first, if repeated); `None` when absent.
            pub fn header(&self, name: &str) -> Result<Option<String>> {
                host::get_map_value($headers, name)
            }

            /// Every header, in order, names lowercase.
            pub fn headers(&self) -> Result<Vec<(String, String)>> {
                host::get_map_pairs($headers)
            }

            /// Sets a header, replacing every value it had.
            pub fn set_header(&mut self, name: &str, value: &str) -> Result<()> {
                host::replace_map_value($headers, name, value)
            }

            /// Adds a value to a header, keeping those it had.
            pub fn add_header(&mut self, name: &str, value: &str) -> Result<()> {
                host::add_map_value($headers, name, value)
            }

            /// Removes a header (every value of it).
            pub fn remove_header(&mut self, name: &str) -> Result<()> {
                host::remove_map_value($headers, name)
            }

            /// Replaces all headers at once.
            pub fn set_headers(&mut self, headers: &[(&str, &str)]) -> Result<()> {
                host::set_map_pairs($headers, headers)
            }

            /// One trailer's value; `None` when absent (or before the trailers arrived).
            pub fn trailer(&self, name: &str) -> Result<Option<String>> {
                host::get_map_value($trailers, name)
            }

            /// Sets a trailer, replacing every value it had.
            pub fn set_trailer(&mut self, name: &str, value: &str) -> Result<()> {
                host::replace_map_value($trailers, name, value)
            }

            /// In a body phase: all of the body buffered so far (everything, once a phase that
            /// said [`Action::Pause`] is called with [`Body::end_of_stream`]).
            pub fn body(&self) -> Result<Vec<u8>> {
                Ok(host::get_buffer($body, 0, usize::MAX)?.unwrap_or_default())
            }

            /// In a body phase: replaces the buffered body with `bytes`.
            pub fn set_body(&mut self, bytes: &[u8]) -> Result<()> {
                host::set_buffer($body, 0, usize::MAX, bytes)
            }

            /// A property of the request or connection by its path, such as
            /// `&["source", "address"]` (the names are in weft's docs); `None` when unknown.
            pub fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>> {
                host::get_property(path)
            }

            /// A property as text.
            pub fn property_text(&self, path: &[&str]) -> Result<Option<String>> {
                Ok(host::get_property(path)?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
            }

            /// Answers the request from the filter instead of the upstream (or replaces the
            /// upstream's response, before its headers went out). Returns the `Pause` the phase
            /// should answer: the request goes no further.
            pub fn respond(&mut self, response: LocalResponse) -> Result<Action> {
                let headers: Vec<(&str, &str)> =
                    response.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                host::send_local_response(
                    response.status,
                    &headers,
                    &response.body,
                    response.grpc_status,
                    &response.details,
                )?;
                self.fx.responded = true;
                Ok(Action::Pause)
            }

            /// Holds the request for `delay`; then [`crate::Filter::on_timer`] runs, and by
            /// default lets it go on. Returns the `Pause` the phase should answer.
            pub fn resume_after(&mut self, delay: Duration) -> Result<Action> {
                let delay = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
                self.fx.resume_at = Some(host::now_nanos().saturating_add(delay));
                Ok(Action::Pause)
            }

            /// Sends an HTTP request to a cluster of the proxy's config. Its answer comes to
            /// [`crate::Filter::on_call_response`] of this request; the phase usually answers
            /// [`Action::Pause`] until then.
            pub fn http_call(&mut self, cluster: &str, call: HttpCall) -> Result<CallId> {
                call.send(cluster)
            }

            /// The id of the request's context, for log lines that tie callbacks together.
            pub fn context_id(&self) -> u32 {
                self.fx.context
            }
        }
    };
}

message_methods!(Request, Map::RequestHeaders, Map::RequestTrailers, Buffer::RequestBody);
message_methods!(Response, Map::ResponseHeaders, Map::ResponseTrailers, Buffer::ResponseBody);

impl<'a> Request<'a> {
    pub(crate) fn new(fx: &'a mut Effects) -> Self {
        Request { fx }
    }

    /// The path with its query (`:path`), empty when absent.
    pub fn path(&self) -> Result<String> {
        Ok(self.header(":path")?.unwrap_or_default())
    }

    /// The path without its query.
    pub fn url_path(&self) -> Result<String> {
        let mut path = self.path()?;
        if let Some(query) = path.find('?') {
            path.truncate(query);
        }
        Ok(path)
    }

    /// The value of one query parameter (not percent-decoded); `None` when absent.
    pub fn query_param(&self, name: &str) -> Result<Option<String>> {
        let path = self.path()?;
        let Some((_, query)) = path.split_once('?') else { return Ok(None) };
        Ok(query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| value.to_owned())
        }))
    }

    /// The method (`:method`), such as `GET`.
    pub fn method(&self) -> Result<String> {
        Ok(self.header(":method")?.unwrap_or_default())
    }

    /// The authority (`:authority`, or `host`), with its port if it has one.
    pub fn authority(&self) -> Result<String> {
        match self.header(":authority")? {
            Some(authority) => Ok(authority),
            None => Ok(self.header("host")?.unwrap_or_default()),
        }
    }

    /// The scheme (`:scheme`): `http` or `https`.
    pub fn scheme(&self) -> Result<String> {
        Ok(self.header(":scheme")?.unwrap_or_default())
    }

    /// The peer's identity from its mTLS certificate (a SPIFFE URI), when it has one.
    pub fn source_principal(&self) -> Result<Option<String>> {
        self.property_text(&["source", "principal"])
    }

    /// The client's address, `ip:port`.
    pub fn source_address(&self) -> Result<Option<String>> {
        self.property_text(&["source", "address"])
    }

    /// The client's IP address alone.
    pub fn source_ip(&self) -> Result<Option<std::net::IpAddr>> {
        let Some(address) = self.source_address()? else { return Ok(None) };
        if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
            return Ok(Some(socket.ip()));
        }
        Ok(address.parse().ok())
    }

    /// The request's id (`x-request-id` as the proxy set it).
    pub fn request_id(&self) -> Result<Option<String>> {
        self.property_text(&["request", "id"])
    }

    /// Sends the request to `cluster` instead of the listener's default (sets the property
    /// `weft.upstream_cluster`). Only meaningful in the request-headers phase.
    pub fn route_to(&mut self, cluster: &str) -> Result<()> {
        host::set_property(&["weft", "upstream_cluster"], cluster.as_bytes())
    }

    /// Sets a writable property.
    pub fn set_property(&mut self, path: &[&str], value: &[u8]) -> Result<()> {
        host::set_property(path, value)
    }
}

impl<'a> Response<'a> {
    pub(crate) fn new(fx: &'a mut Effects) -> Self {
        Response { fx }
    }

    /// The response status (`:status`); 0 when the host has none.
    pub fn status(&self) -> Result<u16> {
        Ok(self.header(":status")?.and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// One of the request's headers.
    pub fn request_header(&self, name: &str) -> Result<Option<String>> {
        host::get_map_value(Map::RequestHeaders, name)
    }
}

/// The request as the log phase sees it: over, its response known.
pub struct LogView {
    _private: (),
}

impl LogView {
    pub(crate) fn new() -> Self {
        LogView { _private: () }
    }

    /// One of the request's headers.
    pub fn request_header(&self, name: &str) -> Result<Option<String>> {
        host::get_map_value(Map::RequestHeaders, name)
    }

    /// One of the response's headers.
    pub fn response_header(&self, name: &str) -> Result<Option<String>> {
        host::get_map_value(Map::ResponseHeaders, name)
    }

    /// The status the client got; 0 when no response was sent.
    pub fn status(&self) -> Result<u16> {
        let code = host::get_property(&["response", "code"])?;
        if let Some(code) = code.as_deref().and_then(decode_number) {
            return Ok(code as u16);
        }
        Ok(self.response_header(":status")?.and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// A property by its path.
    pub fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>> {
        host::get_property(path)
    }
}

/// Numbers come as 8 little-endian bytes (Envoy's encoding) or, from some hosts, as text.
fn decode_number(bytes: &[u8]) -> Option<u64> {
    match <[u8; 8]>::try_from(bytes) {
        Ok(word) => Some(u64::from_le_bytes(word)),
        Err(_) => std::str::from_utf8(bytes).ok()?.trim().parse().ok(),
    }
}

/// An answer made by the filter: status, headers, body, and for gRPC a `grpc-status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResponse {
    /// The HTTP status.
    pub status: u16,
    /// Headers to send with it.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// For gRPC clients: sent as `grpc-status` (with the body as `grpc-message`, by the proxy).
    pub grpc_status: Option<u32>,
    /// A short reason for the proxy's logs (`status_code_details`).
    pub details: String,
}

impl LocalResponse {
    /// An answer with this status and nothing else.
    pub fn new(status: u16) -> Self {
        LocalResponse { status, headers: Vec::new(), body: Vec::new(), grpc_status: None, details: String::new() }
    }

    /// A gRPC error: HTTP 200 with `grpc-status` = `code` and `grpc-message` = `message`.
    pub fn grpc(code: u32, message: &str) -> Self {
        LocalResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/grpc".into())],
            body: message.as_bytes().to_vec(),
            grpc_status: Some(code),
            details: String::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to JSON, with its content type.
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("content-type", "application/json").body(value.to_string())
    }

    /// Sets the reason given to the proxy's logs.
    pub fn details(mut self, details: &str) -> Self {
        self.details = details.to_owned();
        self
    }
}

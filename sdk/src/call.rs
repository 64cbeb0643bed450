//! HTTP callouts: a request a filter sends to a cluster of the proxy's config, and its answer.

use crate::host;
use crate::Result;
use std::time::Duration;

/// Names one callout, so that a filter with several in flight can tell the answers apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CallId(pub u32);

/// A callout to send with [`crate::Request::http_call`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// `:authority`; the cluster's name when not set.
    pub authority: Option<String>,
    /// Headers besides the pseudo-headers.
    pub headers: Vec<(String, String)>,
    /// The request body (empty for none).
    pub body: Vec<u8>,
    /// How long to wait for the whole answer; 5 s by default.
    pub timeout: Duration,
}

impl HttpCall {
    /// A callout with this method and path.
    pub fn new(method: &str, path: &str) -> Self {
        HttpCall {
            method: method.to_owned(),
            path: path.to_owned(),
            authority: None,
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }

    /// A `GET` of `path`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// A `POST` of `body` to `path`.
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", path).body(body)
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

    /// Sets `:authority` (the cluster's name by default).
    pub fn authority(mut self, authority: &str) -> Self {
        self.authority = Some(authority.to_owned());
        self
    }

    /// Sets how long to wait for the whole answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn send(self, cluster: &str) -> Result<CallId> {
        let authority = self.authority.as_deref().unwrap_or(cluster);
        let mut headers: Vec<(&str, &str)> =
            vec![(":method", &self.method), (":path", &self.path), (":authority", authority), (":scheme", "http")];
        headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        host::http_call(cluster, &headers, &self.body, self.timeout).map(CallId)
    }
}

/// The answer to a callout. A callout that got no answer (connection refused, timeout, unknown
/// cluster) has no status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallResponse {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl CallResponse {
    pub(crate) fn new(headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        CallResponse { headers, body }
    }

    /// The HTTP status, or `None` when the callout failed without an answer.
    pub fn status(&self) -> Option<u16> {
        self.header(":status").and_then(|s| s.parse().ok())
    }

    /// One header of the answer (names are matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// All headers of the answer.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body of the answer.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

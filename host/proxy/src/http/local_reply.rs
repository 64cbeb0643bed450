//! The proxy's own answers. Every error that becomes an HTTP response becomes one here, and
//! nowhere else: a short text body and `x-weft-error: <reason>`.

use super::body::ProxyBody;
use http::{header, HeaderValue, Response, StatusCode};

/// Why the proxy answered a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalReply {
    NoRoute,
    UpstreamConnectFailure,
    UpstreamReset,
    UpstreamTimeout,
    NoHealthyUpstream,
    Overloaded,
    FilterFailed,
    BodyTooLarge,
    HeadersTooLarge,
    BadRequest(&'static str),
}

impl LocalReply {
    pub fn status(self) -> StatusCode {
        match self {
            LocalReply::NoRoute => StatusCode::NOT_FOUND,
            LocalReply::UpstreamConnectFailure | LocalReply::UpstreamReset => StatusCode::BAD_GATEWAY,
            LocalReply::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            LocalReply::NoHealthyUpstream | LocalReply::Overloaded | LocalReply::FilterFailed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            LocalReply::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            LocalReply::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            LocalReply::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The text of `x-weft-error`, stable for scripts and alerts to match on.
    pub fn reason(self) -> &'static str {
        match self {
            LocalReply::NoRoute => "no route",
            LocalReply::UpstreamConnectFailure => "upstream connect failure",
            LocalReply::UpstreamReset => "upstream reset",
            LocalReply::UpstreamTimeout => "upstream timeout",
            LocalReply::NoHealthyUpstream => "no healthy upstream",
            LocalReply::Overloaded => "overloaded",
            LocalReply::FilterFailed => "filter failed",
            LocalReply::BodyTooLarge => "body too large",
            LocalReply::HeadersTooLarge => "headers too large",
            LocalReply::BadRequest(reason) => reason,
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let reason = self.reason();
        let mut response = Response::new(ProxyBody::full(format!("{reason}\n")));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        headers.insert("x-weft-error", HeaderValue::from_static(reason));
        if let LocalReply::BadRequest(_) = self {
            // A client that sent a malformed request cannot be trusted to frame the next one.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_carries_its_status_reason_and_header() {
        let response = LocalReply::UpstreamTimeout.into_response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()["x-weft-error"], "upstream timeout");
        let response = LocalReply::HeadersTooLarge.into_response();
        assert_eq!(response.status().as_u16(), 431);
        assert_eq!(response.headers()["x-weft-error"], "headers too large");
    }
}

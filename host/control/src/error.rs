//! Why a control-plane call failed, and the one place where that becomes an HTTP answer: a
//! status and a JSON body `{"error": "..."}` (plus `"errors": [{"field", "reason"}]` for an
//! invalid config).

use crate::api::{json_response, Body};
use crate::store::StoreError;
use http::{header, HeaderValue, Method, Response, StatusCode};
use serde_json::{json, Value};
use weft_config::FieldError;

/// A refused or failed call.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The config was refused whole; nothing changed.
    #[error("invalid config: {}", summarize(.0))]
    InvalidConfig(Vec<FieldError>),
    /// The experiment was refused whole; nothing started.
    #[error("invalid experiment: {}", summarize(.0))]
    InvalidExperiment(Vec<FieldError>),
    /// The uploaded file is not a usable Proxy-Wasm module (the reason says why).
    #[error("{0}")]
    InvalidModule(String),
    /// Anything else wrong with the request.
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("missing or wrong admin token: send `Authorization: Bearer <token>` (the token is in the file admin-token in the control plane's data dir)")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{method} is not served on {path}; it answers {allowed}")]
    MethodNotAllowed { method: Method, path: String, allowed: String },
    /// The request conflicts with the current state (a module the current config uses).
    #[error("{0}")]
    Conflict(String),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

fn summarize(errors: &[FieldError]) -> String {
    match errors {
        [] => "refused".to_owned(),
        [only] => only.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

impl ControlError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ControlError::InvalidConfig(_)
            | ControlError::InvalidExperiment(_)
            | ControlError::InvalidModule(_)
            | ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ControlError::Unauthorized => StatusCode::UNAUTHORIZED,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Store(_) | ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body of the answer.
    pub fn to_json(&self) -> Value {
        let mut body = json!({ "error": self.to_string() });
        if let ControlError::InvalidConfig(errors) | ControlError::InvalidExperiment(errors) = self {
            body["errors"] = errors.iter().map(|e| json!({ "field": e.field, "reason": e.reason })).collect();
        }
        body
    }

    /// The whole answer. Server-side failures are logged here, once.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = json_response(status, &self.to_json());
        match &self {
            ControlError::Unauthorized => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ControlError::MethodNotAllowed { allowed, .. } => {
                if let Ok(value) = HeaderValue::from_str(allowed) {
                    response.headers_mut().insert(header::ALLOW, value);
                }
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_config_lists_every_field() {
        let error = ControlError::InvalidConfig(vec![
            FieldError::new("clusters[0].endpoints[0]", "invalid address"),
            FieldError::new("listeners[0].cluster", "unknown cluster \"x\""),
        ]);
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        let body = error.to_json();
        assert_eq!(body["error"], "invalid config: clusters[0].endpoints[0]: invalid address (and 1 more)");
        assert_eq!(body["errors"][1]["field"], "listeners[0].cluster");
        assert_eq!(body["errors"][1]["reason"], "unknown cluster \"x\"");
    }

    #[test]
    fn refusals_map_to_their_statuses() {
        assert_eq!(ControlError::TooLarge { limit: 1 }.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(ControlError::Conflict("in use".into()).status(), StatusCode::CONFLICT);
        let response = ControlError::Unauthorized.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}

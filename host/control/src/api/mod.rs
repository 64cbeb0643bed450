//! The REST API: one entry point per request that checks the token, finds the route and turns
//! every error into its answer (through [`ControlError::into_response`]), inside a `request`
//! tracing span.

mod handlers;
mod mesh;
pub mod routes;

use crate::error::ControlError;
use crate::plane::ControlPlane;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use routes::Matched;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The response body of every answer. Boxed, so that a gRPC service's streaming bodies can be
/// answered on the same connections as REST's full ones.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON answer (pretty-printed: people read these with curl).
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
    text.push(b'\n');
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Answers one REST request from `peer`.
pub async fn handle<B>(plane: &Arc<ControlPlane>, request: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        peer = %peer.ip(),
        status = tracing::field::Empty,
    );
    // Health probes come often and say nothing new: they are logged at debug level only.
    let probe = request.uri().path() == "/healthz";
    async move {
        let started = Instant::now();
        let response = match route(plane, request, peer).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        };
        let status = response.status().as_u16();
        tracing::Span::current().record("status", status);
        let ms = started.elapsed().as_millis() as u64;
        if probe {
            tracing::debug!(ms, "answered {status}");
        } else {
            tracing::info!(ms, "answered {status}");
        }
        response
    }
    .instrument(span)
    .await
}

async fn route<B>(
    plane: &Arc<ControlPlane>,
    request: Request<B>,
    peer: SocketAddr,
) -> Result<Response<Body>, ControlError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (route, parameter) = match routes::find(request.method(), request.uri().path()) {
        Matched::Route(route, parameter) => (route, parameter),
        Matched::WrongMethod(allowed) => {
            return Err(ControlError::MethodNotAllowed {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
                allowed,
            })
        }
        Matched::NotFound => {
            return Err(ControlError::NotFound(format!(
                "no such endpoint: {}; the API is described at GET /v1/openapi.json",
                request.uri().path()
            )))
        }
    };
    // Authentication before anything else, so an unauthenticated caller learns nothing more.
    let author = if route.public {
        None
    } else {
        let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        Some(plane.authorize(header, Some(peer.ip()))?)
    };
    handlers::serve(plane, route.endpoint, parameter, author, request).await
}

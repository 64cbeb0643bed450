//! One function per endpoint: read the request, call the control plane, shape the answer.

use super::routes::Endpoint;
use super::{full, json_response, Body, BoxError};
use crate::error::ControlError;
use crate::plane::{Applied, Author, ControlPlane};
use crate::resources::format_of;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};
use std::sync::Arc;

/// The largest config document accepted.
const MAX_CONFIG_SIZE: u64 = 4 * 1024 * 1024;
/// The largest small JSON request (a rollback).
const MAX_SMALL_BODY: u64 = 64 * 1024;

/// Serves `endpoint`; `author` is set for every authenticated route.
pub(super) async fn serve<B>(
    plane: &Arc<ControlPlane>,
    endpoint: Endpoint,
    parameter: Option<String>,
    author: Option<Author>,
    request: Request<B>,
) -> Result<Response<Body>, ControlError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let author = || author.clone().ok_or_else(|| ControlError::Internal("no author on a private route".into()));
    let parameter = || parameter.clone().ok_or_else(|| ControlError::Internal("no path parameter".into()));
    match endpoint {
        Endpoint::Healthz => Ok(json_response(StatusCode::OK, &json!({ "status": "ok" }))),
        Endpoint::OpenApi => Ok(json_response(StatusCode::OK, &crate::openapi::document())),
        Endpoint::ListModules => {
            let modules: Vec<Value> =
                plane.modules().await?.iter().map(|(info, used_by)| info.to_json(used_by)).collect();
            Ok(json_response(StatusCode::OK, &json!({ "modules": modules })))
        }
        Endpoint::PushModule => {
            let bytes = read_body(request, plane.settings().max_module_size).await?;
            let (info, created) = plane.push_module(bytes).await?;
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            let mut response = json_response(status, &json!({ "digest": info.digest, "size": info.size }));
            if let Ok(location) = HeaderValue::from_str(&format!("/v1/modules/{}", info.digest)) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        Endpoint::GetModule => {
            let digest = parameter()?;
            if wants_meta(&request) {
                let (info, used_by) = plane.module_info(&digest).await?;
                return Ok(json_response(StatusCode::OK, &info.to_json(&used_by)));
            }
            let bytes = plane.module_bytes(&digest).await?;
            let mut response = Response::new(full(bytes));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/wasm"));
            Ok(response)
        }
        Endpoint::DeleteModule => {
            plane.delete_module(&parameter()?).await?;
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
        Endpoint::GetConfig => {
            let body = match plane.current().await? {
                Some(record) => record.full_json(record.version),
                None => json!({ "version": 0, "resources": null }),
            };
            Ok(json_response(StatusCode::OK, &body))
        }
        Endpoint::ApplyConfig => {
            let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let content_type = content_type.map(str::to_owned);
            let bytes = read_body(request, MAX_CONFIG_SIZE).await?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ControlError::BadRequest("the config document is not UTF-8 text".into()))?;
            let format = format_of(content_type.as_deref(), text);
            Ok(applied(plane.apply(text, format, author()?).await?))
        }
        Endpoint::ListProxies => {
            let mut proxies = plane.proxies().to_json();
            plane.mesh().annotate_proxies(&mut proxies);
            Ok(json_response(StatusCode::OK, &proxies))
        }
        Endpoint::ListExperiments => {
            let experiments: Vec<Value> = plane.experiments().list().await?.iter().map(|r| r.summary_json()).collect();
            Ok(json_response(StatusCode::OK, &json!({ "experiments": experiments })))
        }
        Endpoint::CreateExperiment => {
            let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let content_type = content_type.map(str::to_owned);
            let bytes = read_body(request, MAX_SMALL_BODY).await?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ControlError::BadRequest("the experiment document is not UTF-8 text".into()))?;
            let format = format_of(content_type.as_deref(), text);
            let record = plane.experiments().create(plane, text, format, &author()?).await?;
            let mut response = json_response(StatusCode::CREATED, &record.full_json());
            if let Ok(location) = HeaderValue::from_str(&format!("/v1/experiments/{}", record.id())) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        Endpoint::GetExperiment => {
            Ok(json_response(StatusCode::OK, &plane.experiments().get(&parameter()?).await?.full_json()))
        }
        Endpoint::AbortExperiment => {
            let record = plane.experiments().abort(&parameter()?, &author()?.by).await?;
            Ok(json_response(StatusCode::OK, &record.full_json()))
        }
        Endpoint::AbortAllExperiments => {
            let aborted = plane.experiments().abort_all(&author()?.by).await;
            Ok(json_response(StatusCode::OK, &json!({ "aborted": aborted })))
        }
        Endpoint::CreateToken
        | Endpoint::ListTokens
        | Endpoint::RevokeToken
        | Endpoint::GetMesh
        | Endpoint::StartRotation
        | Endpoint::FinishRotation => {
            let body = match endpoint {
                Endpoint::CreateToken | Endpoint::StartRotation | Endpoint::FinishRotation => {
                    read_body(request, MAX_SMALL_BODY).await?
                }
                _ => Bytes::new(),
            };
            super::mesh::serve(plane, endpoint, parameter().ok(), author()?, body).await
        }
        Endpoint::ListVersions => {
            let (versions, current) = plane.versions().await?;
            let versions: Vec<Value> = versions.iter().map(|v| v.summary_json(current)).collect();
            Ok(json_response(StatusCode::OK, &json!({ "current": current, "versions": versions })))
        }
        Endpoint::Rollback => {
            let bytes = read_body(request, MAX_SMALL_BODY).await?;
            let asked: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ControlError::BadRequest(format!("expected {{\"version\": N}}: {e}")))?;
            let number = asked
                .get("version")
                .and_then(Value::as_u64)
                .ok_or_else(|| ControlError::BadRequest("expected {\"version\": N} with N a version number".into()))?;
            Ok(applied(plane.rollback(number, author()?).await?))
        }
    }
}

/// 201 with the new version; 200 when the resources equal the current version's already.
fn applied(outcome: Applied) -> Response<Body> {
    let (status, record, unchanged) = match outcome {
        Applied::New(record) => (StatusCode::CREATED, record, false),
        Applied::Unchanged(record) => (StatusCode::OK, record, true),
    };
    let body = json!({
        "version": record.version,
        "digest": record.digest,
        "summary": record.summary,
        "unchanged": unchanged,
    });
    json_response(status, &body)
}

/// `?meta` (or `?meta=true`) asks for a module's metadata instead of its bytes.
fn wants_meta<B>(request: &Request<B>) -> bool {
    request.uri().query().is_some_and(|query| {
        query.split('&').any(|pair| matches!(pair.split_once('=').unwrap_or((pair, "")), ("meta", "" | "true" | "1")))
    })
}

/// The whole request body, refused with 413 past `limit` (before reading, when the client said
/// its length).
async fn read_body<B>(request: Request<B>, limit: u64) -> Result<Bytes, ControlError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ControlError::TooLarge { limit });
    }
    let limited = Limited::new(request.into_body(), usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(ControlError::TooLarge { limit }),
        Err(error) => Err(ControlError::BadRequest(format!("cannot read the request body: {error}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn request(uri: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
        Request::builder().uri(uri).body(Full::new(Bytes::from_static(body))).unwrap()
    }

    #[test]
    fn meta_is_asked_for_by_query() {
        assert!(wants_meta(&request("/v1/modules/x?meta", b"")));
        assert!(wants_meta(&request("/v1/modules/x?a=b&meta=true", b"")));
        assert!(!wants_meta(&request("/v1/modules/x?meta=false", b"")));
        assert!(!wants_meta(&request("/v1/modules/x", b"")));
    }

    #[tokio::test]
    async fn bodies_past_the_limit_are_refused_even_without_a_length() {
        let refused = read_body(request("/", b"0123456789"), 4).await.unwrap_err();
        assert!(matches!(refused, ControlError::TooLarge { limit: 4 }), "{refused:?}");
        assert_eq!(read_body(request("/", b"0123"), 4).await.unwrap(), "0123");
        let mut declared = request("/", b"");
        declared.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(matches!(read_body(declared, 4).await, Err(ControlError::TooLarge { .. })));
    }
}

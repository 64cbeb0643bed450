//! The Toxiproxy HTTP API (`weft proxy --toxiproxy-listen ADDR`), so Toxiproxy's own clients
//! work unchanged: `/version`, `/proxies`, `/populate`, `/reset`, `/proxies/{name}` and
//! `/proxies/{name}/toxics[/{toxic}]`, with Toxiproxy's JSON shapes, status codes and error
//! bodies (`{"error": "...", "status": N}`). Proxies live in `proxies`; their toxics in the
//! proxy's toxics engine, under the proxy's name.

mod proxies;

pub use proxies::{ProxyError, ProxySpec, ToxiproxyProxies};

use crate::tcp::toxic::{Toxic, ToxicError};
use crate::Proxy;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The largest request body the API reads.
const MAX_BODY: usize = 1024 * 1024;

/// Serves the Toxiproxy API on `socket` until the process ends.
pub async fn serve(socket: TcpListener, proxy: Arc<Proxy>) {
    if let Ok(address) = socket.local_addr() {
        let _ = proxy.toxiproxy_api.set(address);
    }
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            continue;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(handle(&proxy, request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// A refusal as Toxiproxy words it.
struct ApiError {
    message: String,
    status: u16,
}

impl From<ProxyError> for ApiError {
    fn from(error: ProxyError) -> Self {
        ApiError { status: error.status(), message: error.to_string() }
    }
}

impl From<ToxicError> for ApiError {
    fn from(error: ToxicError) -> Self {
        ApiError { status: error.status(), message: error.to_string() }
    }
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError { message: message.into(), status }
    }
}

type Answer = Result<(StatusCode, Option<serde_json::Value>), ApiError>;

async fn handle(proxy: &Proxy, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    // Toxiproxy's guard against a web page driving the API from a browser.
    let browser = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|agent| agent.to_str().ok())
        .is_some_and(|agent| agent.starts_with("Mozilla/"));
    let answer = if browser {
        Err(ApiError::new(403, "User agent not allowed"))
    } else {
        match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(body) => route(proxy, &method, &path, &body.to_bytes()).await,
            Err(error) => Err(ApiError::new(400, format!("bad request body: {error}"))),
        }
    };
    let response = match answer {
        Ok((status, body)) => {
            let mut response = match body {
                Some(body) => json_response(status, &body),
                None => Response::new(Full::new(Bytes::new())),
            };
            *response.status_mut() = status;
            response
        }
        Err(error) => {
            let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_response(status, &serde_json::json!({ "error": error.message, "status": error.status }))
        }
    };
    tracing::debug!(%method, path, status = response.status().as_u16(), "Toxiproxy API request");
    response
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

async fn route(proxy: &Proxy, method: &Method, path: &str, body: &[u8]) -> Answer {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ok = |value| Ok((StatusCode::OK, Some(value)));
    let proxies = proxy.toxiproxy();
    let toxics = proxy.toxics();
    match (method, segments.as_slice()) {
        (&Method::GET, ["version"]) => ok(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") })),
        (&Method::GET, ["proxies"]) => {
            let all: serde_json::Map<_, _> =
                proxies.list().await.into_iter().map(|spec| (spec.name.clone(), with_toxics(proxy, &spec))).collect();
            ok(all.into())
        }
        (&Method::POST, ["proxies"]) => {
            let spec = proxy_body(&parse(body)?, None)?;
            let spec = proxies.create(spec).await?;
            Ok((StatusCode::CREATED, Some(with_toxics(proxy, &spec))))
        }
        (&Method::POST, ["populate"]) => {
            let list = match parse(body)? {
                serde_json::Value::Array(list) => list,
                other => {
                    return Err(ApiError::new(
                        400,
                        format!("bad request body: expected a list of proxies, got {other}"),
                    ))
                }
            };
            let specs = list.iter().map(|item| proxy_body(item, None)).collect::<Result<Vec<_>, _>>()?;
            let made = proxies.populate(specs).await?;
            let made: Vec<_> = made.iter().map(|spec| with_toxics(proxy, spec)).collect();
            Ok((StatusCode::CREATED, Some(serde_json::json!({ "proxies": made }))))
        }
        (&Method::POST, ["reset"]) => {
            proxies.reset().await?;
            Ok((StatusCode::NO_CONTENT, None))
        }
        (&Method::GET, ["proxies", name]) => ok(with_toxics(proxy, &proxies.get(name).await?)),
        (&Method::POST | &Method::PATCH, ["proxies", name]) => {
            let current = proxies.get(name).await?;
            let wanted = proxy_body(&parse(body)?, Some(&current))?;
            let spec = proxies.update(name, |spec| *spec = wanted).await?;
            ok(with_toxics(proxy, &spec))
        }
        (&Method::DELETE, ["proxies", name]) => {
            proxies.delete(name).await?;
            Ok((StatusCode::NO_CONTENT, None))
        }
        (&Method::GET, ["proxies", name, "toxics"]) => {
            proxies.get(name).await?;
            ok(toxics.list(name).iter().map(Toxic::to_json).collect::<Vec<_>>().into())
        }
        (&Method::POST, ["proxies", name, "toxics"]) => {
            proxies.get(name).await?;
            let toxic = Toxic::from_json(&parse(body)?)?;
            ok(toxics.add(name, toxic)?.to_json())
        }
        (&Method::GET, ["proxies", name, "toxics", toxic]) => {
            proxies.get(name).await?;
            ok(toxics.get(name, toxic).ok_or(ToxicError::NotFound)?.to_json())
        }
        (&Method::POST | &Method::PATCH, ["proxies", name, "toxics", toxic]) => {
            proxies.get(name).await?;
            let current = toxics.get(name, toxic).ok_or(ToxicError::NotFound)?;
            let updated = current.updated_from_json(&parse(body)?)?;
            ok(toxics.update(name, updated)?.to_json())
        }
        (&Method::DELETE, ["proxies", name, "toxics", toxic]) => {
            proxies.get(name).await?;
            toxics.remove(name, toxic)?;
            Ok((StatusCode::NO_CONTENT, None))
        }
        (_, ["version" | "proxies" | "populate" | "reset"])
        | (_, ["proxies", _])
        | (_, ["proxies", _, "toxics"])
        | (_, ["proxies", _, "toxics", _]) => Err(ApiError::new(405, format!("method {method} not allowed on {path}"))),
        _ => Err(ApiError::new(404, format!("no such endpoint: {path}"))),
    }
}

fn parse(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(400, "bad request body: EOF"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("bad request body: {e}")))
}

/// A proxy from a create (or populate) body, or an update body over `current`.
fn proxy_body(body: &serde_json::Value, current: Option<&ProxySpec>) -> Result<ProxySpec, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::new(400, format!("bad request body: expected an object, got {body}")))?;
    let text = |field: &str, default: &str| -> Result<String, ApiError> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(default.to_owned()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => {
                Err(ApiError::new(400, format!("bad request body: {field}: expected a string, got {other}")))
            }
        }
    };
    let enabled = match object.get("enabled") {
        None | Some(serde_json::Value::Null) => current.is_none_or(|c| c.enabled),
        Some(serde_json::Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::new(400, format!("bad request body: enabled: expected true or false, got {other}")))
        }
    };
    Ok(ProxySpec {
        name: text("name", current.map_or("", |c| c.name.as_str()))?,
        // Toxiproxy would listen on every interface; weft keeps to loopback unless told.
        listen: match text("listen", current.map_or("", |c| c.listen.as_str()))? {
            listen if listen.is_empty() => "127.0.0.1:0".into(),
            listen => listen,
        },
        upstream: text("upstream", current.map_or("", |c| c.upstream.as_str()))?,
        enabled,
    })
}

/// A proxy as Toxiproxy shows it: its fields and its toxics.
fn with_toxics(proxy: &Proxy, spec: &ProxySpec) -> serde_json::Value {
    let toxics: Vec<_> = proxy.toxics().list(&spec.name).iter().map(Toxic::to_json).collect();
    serde_json::json!({
        "name": spec.name,
        "listen": spec.listen,
        "upstream": spec.upstream,
        "enabled": spec.enabled,
        "toxics": toxics,
    })
}

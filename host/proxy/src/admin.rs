//! The admin endpoint an operator and scripts talk to: readiness, metrics, the config in force,
//! and the clusters with their endpoints.

use crate::Proxy;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the admin API on `socket` until the process ends.
pub async fn serve(socket: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            continue;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(route(&proxy, &request)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn route(proxy: &Proxy, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n".into());
    }
    match request.uri().path() {
        "/ready" => {
            if proxy.is_ready() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "no config loaded yet\n".into())
            }
        }
        "/metrics" => {
            let mut response = text(StatusCode::OK, proxy.metrics().render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        "/config" => json(proxy.config_dump()),
        "/clusters" => json(proxy.clusters_dump()),
        "/filters" => json(proxy.filters_dump()),
        "/identity" => match proxy.mesh() {
            Some(mesh) => json(mesh.to_json()),
            None => text(StatusCode::NOT_FOUND, "this proxy has no mesh identity (weft proxy --service)\n".into()),
        },
        "/" => text(StatusCode::OK, "weft admin: /ready /metrics /config /clusters /filters /identity\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found; try /ready /metrics /config /clusters /filters\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn json(value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

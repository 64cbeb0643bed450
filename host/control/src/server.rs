//! The control plane's one port: HTTP/1.1 and HTTP/2 (h2c) on the same listener, so REST
//! clients and (next) the proxies' gRPC streams share it. Requests are told apart by their
//! content type: `application/grpc…` goes to the gRPC service, everything else to REST.

use crate::api::{self, full, Body};
use crate::plane::ControlPlane;
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long open connections may finish their requests after shutdown begins.
const GRACE: Duration = Duration::from_secs(5);

/// Serves until `shutdown` completes, then lets requests in flight finish (up to [`GRACE`]).
pub async fn serve(listener: TcpListener, plane: Arc<ControlPlane>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let plane = plane.clone();
        let service = hyper::service::service_fn(move |request| {
            let plane = plane.clone();
            async move { Ok::<_, Infallible>(dispatch(&plane, request, peer).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(GRACE) => tracing::warn!("connections still open after {GRACE:?}; closing them"),
    }
}

/// Sends a request to REST or to gRPC.
async fn dispatch(plane: &ControlPlane, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if is_grpc(&request) {
        // The seam for the distribution service: a tonic server (`tonic::service::Routes`, its
        // body boxed into `Body`) is called here. Until then, gRPC clients hear UNIMPLEMENTED.
        return grpc_unimplemented();
    }
    api::handle(plane, request, peer).await
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|content_type| content_type.starts_with("application/grpc"))
}

/// A trailers-only gRPC answer: status 12, UNIMPLEMENTED.
fn grpc_unimplemented() -> Response<Body> {
    let mut response = Response::new(full(bytes::Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static("12"));
    headers.insert("grpc-message", HeaderValue::from_static("this control plane serves no gRPC service yet"));
    response
}

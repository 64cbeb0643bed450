//! The control plane's one port: HTTP/1.1 and HTTP/2 (h2c) on the same listener, so REST
//! clients and the proxies' gRPC streams share it. Requests are told apart by their
//! content type: `application/grpc…` goes to the gRPC service, everything else to REST.

use crate::api::{self, Body};
use crate::plane::ControlPlane;
use http::{header, Request, Response};
use http_body_util::BodyExt;
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
    plane.experiments().resume(&plane);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let maintenance = tokio::spawn(crate::identity::grpc::maintain(plane.clone()));
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
            async move { Ok::<_, Infallible>(dispatch(plane, request, peer).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    maintenance.abort();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(GRACE) => tracing::warn!("connections still open after {GRACE:?}; closing them"),
    }
}

/// Sends a request to REST or to gRPC (the proxies' [`crate::distribution`]).
async fn dispatch(plane: Arc<ControlPlane>, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if is_grpc(&request) {
        let response = if request.uri().path().starts_with(weft_proto::identity::SERVICE_PREFIX) {
            crate::identity::grpc::serve(plane, request).await
        } else {
            crate::distribution::serve(plane, request).await
        };
        return response.map(|body| body.map_err(|status| Box::new(status) as api::BoxError).boxed_unsync());
    }
    api::handle(&plane, request, peer).await
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|content_type| content_type.starts_with("application/grpc"))
}

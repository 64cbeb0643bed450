//! A tiny gRPC service (`weft.test.Echo/Say`) on tonic, with its messages declared by hand so
//! the tests need no protoc. `Say` echoes; a message "fail" answers NOT_FOUND.

use prost::Message;
use std::convert::Infallible;
use std::net::SocketAddr;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{NamedService, UnaryService};

#[derive(Clone, PartialEq, Message)]
pub struct SayRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct SayReply {
    #[prost(string, tag = "1")]
    pub message: String,
    /// The `:authority` the server saw.
    #[prost(string, tag = "2")]
    pub authority: String,
}

const SAY: &str = "/weft.test.Echo/Say";

#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "weft.test.Echo";
}

struct Say {
    authority: String,
}

impl UnaryService<SayRequest> for Say {
    type Response = SayReply;
    type Future = BoxFuture<tonic::Response<SayReply>, tonic::Status>;
    fn call(&mut self, request: tonic::Request<SayRequest>) -> Self::Future {
        let authority = self.authority.clone();
        Box::pin(async move {
            let message = request.into_inner().message;
            if message == "fail" {
                return Err(tonic::Status::not_found("no such thing"));
            }
            Ok(tonic::Response::new(SayReply { message: format!("echo: {message}"), authority }))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != SAY {
                return Ok(tonic::Status::unimplemented("unknown method").into_http());
            }
            let authority = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Say { authority }, request).await)
        })
    }
}

/// A gRPC server on h2c; stops when the returned handle is dropped.
pub struct GrpcServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn server() -> GrpcServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder().add_service(Echo).serve_with_incoming(incoming).await;
    });
    GrpcServer { addr, task }
}

/// Calls `Say` through `addr` (a weft listener) with a real tonic client.
pub async fn say(addr: SocketAddr, message: &str) -> Result<SayReply, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|e| tonic::Status::unavailable(format!("{e}")))?;
    let path = http::uri::PathAndQuery::from_static(SAY);
    let request = tonic::Request::new(SayRequest { message: message.into() });
    let codec = tonic_prost::ProstCodec::<SayRequest, SayReply>::default();
    client.unary(request, path, codec).await.map(|r| r.into_inner())
}

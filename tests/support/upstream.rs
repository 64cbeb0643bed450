//! Upstream servers the tests put behind weft. Each runs in the test's runtime and stops when
//! dropped; each counts the connections and requests it saw.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

/// An HTTP/1.1 + h2c server answering with `handler`.
pub async fn serve<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
{
    serve_with(None, handler).await
}

/// Like [`serve`], over TLS with `tls` (ALPN decides HTTP/1.1 or HTTP/2).
pub async fn serve_with<F, Fut>(tls: Option<Arc<rustls::ServerConfig>>, handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (conns, reqs) = (connections.clone(), requests.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            conns.fetch_add(1, Ordering::SeqCst);
            let (handler, reqs, tls) = (handler.clone(), reqs.clone(), tls.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    reqs.fetch_add(1, Ordering::SeqCst);
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                    }
                    Some(config) => {
                        if let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await;
                        }
                    }
                }
            });
        }
    });
    Upstream { addr, connections, requests, task }
}

/// What [`echo`] answers: the request as the upstream received it.
pub async fn describe(name: &str, request: Request<Incoming>) -> serde_json::Value {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned().into()))
        .collect();
    serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "authority": parts.uri.authority().map(|a| a.to_string()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    })
}

/// Echoes each request as JSON. Paths with meaning: `/status/N` answers N, `/slow/MS` waits MS
/// milliseconds first, `/trailers` ends its body with a `x-checksum` trailer.
pub async fn echo(name: &'static str) -> Upstream {
    echo_with(name, None).await
}

pub async fn echo_with(name: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
    serve_with(tls, move |request: Request<Incoming>| async move {
        let path = request.uri().path().to_string();
        if let Some(ms) = path.strip_prefix("/slow/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        }
        if path == "/trailers" {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-checksum", "abc123".parse().unwrap());
            let frames =
                vec![Ok::<_, Infallible>(Frame::data(Bytes::from("with trailers"))), Ok(Frame::trailers(trailers))];
            return Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
        }
        let status = path.strip_prefix("/status/").and_then(|s| s.parse().ok()).unwrap_or(200);
        let mut response = Response::new(full(describe(name, request).await.to_string()));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        response.headers_mut().insert("x-upstream", name.parse().unwrap());
        response.headers_mut().insert("connection", "keep-alive, x-hop".parse().unwrap());
        response.headers_mut().insert("x-hop", "must not pass".parse().unwrap());
        response
    })
    .await
}

/// Accepts connections, reads the request head, and closes without answering.
pub async fn resetting() -> Upstream {
    raw_tcp(|mut stream| async move {
        let mut buffer = [0u8; 4096];
        let _ = stream.read(&mut buffer).await;
        drop(stream);
    })
    .await
}

/// Echoes bytes back on each connection until the client closes it.
pub async fn tcp_echo() -> Upstream {
    raw_tcp(|mut stream| async move {
        let (mut read, mut write) = stream.split();
        let _ = tokio::io::copy(&mut read, &mut write).await;
        let _ = write.shutdown().await;
    })
    .await
}

pub async fn raw_tcp<F, Fut>(handle: F) -> Upstream
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let conns = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handle(stream));
        }
    });
    Upstream { addr, connections, requests: Arc::new(AtomicUsize::new(0)), task }
}

/// Reads one HTTP/1.1 request off a raw upstream connection: its head, then its body as the head
/// frames it (a length, or chunks to the last one). `None` when the connection ends first.
pub async fn read_raw_request<S>(stream: &mut S, pending: &mut Vec<u8>) -> Option<String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let body_end = if head.contains("transfer-encoding: chunked") {
                pending.windows(5).position(|w| w == b"0\r\n\r\n").map(|at| at + 5)
            } else {
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                (pending.len() >= end + 4 + length).then_some(end + 4 + length)
            };
            if let Some(body_end) = body_end {
                let request: Vec<u8> = pending.drain(..body_end).collect();
                return Some(String::from_utf8_lossy(&request).into_owned());
            }
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// An address where nothing listens.
pub fn closed_port() -> SocketAddr {
    format!("127.0.0.1:{}", super::free_port()).parse().unwrap()
}

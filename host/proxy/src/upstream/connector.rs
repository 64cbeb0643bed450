//! Opening connections to one endpoint: TCP (no Nagle), then TLS when the cluster asks for it,
//! within the connect timeout. Each connection is counted while it lives.

use super::slots::ConnectionBudget;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[derive(Clone)]
pub struct Connector {
    address: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    /// Open connections of the whole cluster against its `max_connections` (shared by its
    /// endpoints' connectors).
    budget: Arc<ConnectionBudget>,
    created: Counter,
}

/// Why a connection was not opened: the cluster had `max_connections` open, and none closed
/// within the connect timeout. The request is answered 503 `overloaded`, and the endpoint is not
/// blamed for it.
#[derive(Debug)]
pub struct ConnectionLimit;

impl std::fmt::Display for ConnectionLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the cluster's max_connections are open")
    }
}

impl std::error::Error for ConnectionLimit {}

impl Connector {
    pub fn new(
        address: SocketAddr,
        tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
        timeout: Duration,
        budget: Arc<ConnectionBudget>,
        created: Counter,
    ) -> Self {
        let tls = tls.map(|(config, name)| (TlsConnector::from(config), name));
        Connector { address, tls, timeout, budget, created }
    }

    /// The cluster's count of open connections, this connector's among them.
    pub fn budget(&self) -> &ConnectionBudget {
        &self.budget
    }

    /// A connection to the endpoint, TLS if configured. Also used by the tcp path.
    pub async fn connect(&self) -> io::Result<UpstreamStream> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        if !self.budget.open(deadline).await {
            return Err(io::Error::other(ConnectionLimit));
        }
        let attempt = async {
            let tcp = TcpStream::connect(self.address).await?;
            tcp.set_nodelay(true)?;
            let stream = match &self.tls {
                Some((connector, name)) => Stream::Tls(Box::new(connector.connect(name.clone(), tcp).await?)),
                None => Stream::Plain(tcp),
            };
            Ok::<_, io::Error>(stream)
        };
        let connected = tokio::time::timeout_at(deadline, attempt)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect to {} timed out", self.address)))
            .and_then(|result| result);
        match connected {
            Ok(stream) => {
                self.created.inc();
                Ok(UpstreamStream { stream, budget: self.budget.clone(), between_exchanges: false })
            }
            Err(error) => {
                self.budget.close();
                Err(error)
            }
        }
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The URI is ignored: a connector belongs to one endpoint, the URI carries the client's authority.
    fn call(&mut self, _: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.connect().await.map(TokioIo::new) })
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A live upstream connection; its place in the cluster's budget is given back when it drops.
pub struct UpstreamStream {
    stream: Stream,
    budget: Arc<ConnectionBudget>,
    /// Idle in a pool: no exchange is on it.
    between_exchanges: bool,
}

impl UpstreamStream {
    /// The TCP socket under the connection (under TLS, when it has it).
    pub fn tcp(&self) -> &TcpStream {
        match &self.stream {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether TLS holds nothing read from the endpoint and not yet taken: no plaintext and no
    /// close_notify. rustls reads ahead, so these can sit above a socket that shows nothing more.
    /// Plain TCP holds nothing.
    pub fn holds_nothing_read(&mut self) -> bool {
        match &mut self.stream {
            Stream::Plain(_) => true,
            Stream::Tls(tls) => tls
                .get_mut()
                .1
                .process_new_packets()
                .is_ok_and(|state| state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed()),
        }
    }

    /// Marks the connection as between exchanges (idle in a pool), or not. Closed while it is,
    /// a TLS connection says so with close_notify: nothing of an exchange is cut.
    pub fn set_between_exchanges(&mut self, between: bool) {
        self.between_exchanges = between;
    }
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        if let (Stream::Tls(tls), true) = (&mut self.stream, self.between_exchanges) {
            // The endpoint can tell this end from a cut (any other drop is one, and reads as
            // one). Written if the socket takes it now; a connection is not held open for it.
            let (tcp, session) = tls.get_mut();
            session.send_close_notify();
            while session.wants_write() {
                if !matches!(session.write_tls(&mut WriteNow(tcp)), Ok(n) if n > 0) {
                    break;
                }
            }
        }
        self.budget.close();
    }
}

/// Writes what the socket takes without waiting; `WouldBlock` otherwise.
struct WriteNow<'a>(&'a TcpStream);

impl io::Write for WriteNow<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.try_write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match &self.stream {
            Stream::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => Connected::new().negotiated_h2(),
            _ => Connected::new(),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

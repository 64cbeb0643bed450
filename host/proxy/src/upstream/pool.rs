//! The HTTP/1.1 connections to one endpoint. A request takes the idle connection used last (so
//! the fewest stay warm), or opens one; a connection goes back when its response body has been
//! read to the end and the request is all sent (a request never waits on another's upload), and
//! is closed when the pool has `max_idle_connections` idle already, when it
//! idled past `idle_timeout`, or when the endpoint closed it.
//!
//! weft keeps this pool itself rather than a general client's: an endpoint has one address and
//! one protocol, so there is nothing to key connections by, and a connection comes back through
//! its response body instead of a task spawned per request to wait for it (one is spawned only
//! when the endpoint answered before the request body was all sent).

use super::Connector;
use crate::http::ProxyBody;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

pub struct Http1Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether a sweep is on its way to close connections that idled too long (one at most,
    /// and only while some are idle).
    sweeping: AtomicBool,
}

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

/// Why a request got no response from the pool.
#[derive(Debug)]
pub enum PoolError {
    /// No connection could be opened.
    Connect(io::Error),
    /// The connection failed while the request was on it.
    Exchange(hyper::Error),
}

impl Http1Pool {
    pub fn new(connector: Connector, max_idle: usize, idle_timeout: Duration) -> Http1Pool {
        let idle = Mutex::new(Vec::new());
        let shared = Shared { connector, idle, max_idle, idle_timeout, sweeping: AtomicBool::new(false) };
        Http1Pool { shared: Arc::new(shared) }
    }

    /// Sends the request on an idle connection or a new one. A request that an idle connection
    /// closed under before it was written goes on the next one: that race (the endpoint closing
    /// a keep-alive connection as it is reused) must not fail a request that never left.
    pub async fn send(&self, mut request: Request<ProxyBody>) -> Result<Response<PeerBody>, PoolError> {
        to_origin_form(&mut request);
        let reusable = request.method() != Method::CONNECT;
        loop {
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                // Boxed: opening a connection (the TLS handshake's state above all) is rare, and
                // its state would otherwise make every request's future as large.
                None => (Box::pin(self.connect()).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // A connection that switched protocols belongs to the tunnel now.
                    let reusable = reusable && response.status() != StatusCode::SWITCHING_PROTOCOLS;
                    let checkin = reusable.then(|| Checkin { pool: Arc::downgrade(&self.shared), sender });
                    return Ok(response.map(|body| PeerBody::pooled(body, checkin)));
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(PoolError::Exchange(failed.into_error())),
                },
            }
        }
    }

    /// The idle connection used last that is still open and not idle for too long.
    fn checkout(&self) -> Option<SendRequest<ProxyBody>> {
        loop {
            let Idle { sender, since } = self.shared.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            // Not ready once idle means closed: the endpoint closed it, or it failed.
            if since.elapsed() < self.shared.idle_timeout && sender.is_ready() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, PoolError> {
        let stream = self.shared.connector.connect().await.map_err(PoolError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PoolError::Connect(io::Error::other(e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl Shared {
    fn checkin(self: &Arc<Self>, mut sender: SendRequest<ProxyBody>) {
        if sender.is_ready() {
            return self.keep(sender);
        }
        if sender.is_closed() {
            return;
        }
        // The exchange is not over on the wire: the response's end was read before the
        // connection's task got to it, or the endpoint answered before the request body was all
        // sent. The connection is idle once that is done; until then no request may wait on it.
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                if let Some(pool) = pool.upgrade() {
                    pool.keep(sender);
                }
            }
        });
    }

    fn keep(self: &Arc<Self>, sender: SendRequest<ProxyBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            return;
        }
        idle.push(Idle { sender, since: Instant::now() });
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        }
    }
}

/// Closes, every `idle_timeout`, the connections idle that long (or closed by the endpoint);
/// ends when none are idle, or the pool is gone (a reload replaced its cluster).
async fn sweep(pool: Weak<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = pool.upgrade() else { return };
        let mut idle = shared.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| c.since.elapsed() < every && c.sender.is_ready());
        if idle.is_empty() {
            // Under the lock, so a connection checked in now starts the next sweep.
            shared.sweeping.store(false, Ordering::Relaxed);
            return;
        }
    }
}

/// HTTP/1.1 names the request's target by its path alone, and its authority in `Host`.
fn to_origin_form(request: &mut Request<ProxyBody>) {
    if request.method() == Method::CONNECT || request.uri().scheme().is_none() {
        return;
    }
    if !request.headers().contains_key(header::HOST) {
        if let Some(host) = request.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            request.headers_mut().insert(header::HOST, host);
        }
    }
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(origin) = path.parse() {
        *request.uri_mut() = origin;
    }
}

/// Puts a connection back in its pool.
struct Checkin {
    pool: Weak<Shared>,
    sender: SendRequest<ProxyBody>,
}

impl Checkin {
    fn give_back(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(self.sender);
        }
    }
}

/// A body streamed from a peer. An upstream response's gives its connection back to the pool
/// once read to the end; one dropped before that closes the connection with it.
pub struct PeerBody {
    body: Incoming,
    checkin: Option<Checkin>,
}

impl PeerBody {
    fn pooled(body: Incoming, checkin: Option<Checkin>) -> PeerBody {
        let mut body = PeerBody { body, checkin };
        if body.body.is_end_stream() {
            body.give_back();
        }
        body
    }

    fn give_back(&mut self) {
        if let Some(checkin) = self.checkin.take() {
            checkin.give_back();
        }
    }
}

impl From<Incoming> for PeerBody {
    fn from(body: Incoming) -> PeerBody {
        PeerBody { body, checkin: None }
    }
}

impl Body for PeerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !this.body.is_end_stream() => {}
            Some(Err(_)) => this.checkin = None,
            Some(Ok(_)) | None => this.give_back(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

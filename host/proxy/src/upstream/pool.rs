//! The HTTP/1.1 connections to one endpoint. A request takes the idle connection used last (so
//! the fewest stay warm), or opens one; a connection goes back when its response body has been
//! read to the end and the request is all sent (a request never waits on another's upload), and
//! is closed when the pool has `max_idle_connections` idle already, when it idled past
//! `idle_timeout`, when the endpoint closed it, or when the cluster's `max_connections` are
//! open and a request needs a new one (the cluster's connection idle longest goes).
//!
//! weft keeps this pool itself rather than a general client's: an endpoint has one address and
//! one protocol, so there is nothing to key connections by, and a connection comes back through
//! its response body. No task runs per connection: one watch task per pool, alive only while
//! connections are idle, is woken by the sockets of idle connections when their endpoint closes
//! them (and every `idle_timeout`), and lets them go.

use super::slots::IdleConnections;
use super::wire::{self, Afterwards, BodyReader, Connection, Outgoing};
use super::Connector;
use crate::http::{BoxError, ProxyBody};
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::FutureExt;
use http::{header, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

pub struct Http1Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    idle: Mutex<IdleList>,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Default)]
struct IdleList {
    /// Most recently used last.
    connections: Vec<Idle>,
    /// The watch task's, while it runs: idle sockets wake it.
    watcher: Option<Waker>,
    watching: bool,
}

struct Idle {
    connection: Connection,
    since: Instant,
}

/// Why a request got no response from the pool.
#[derive(Debug)]
pub enum PoolError {
    /// No connection could be opened.
    Connect(io::Error),
    /// The connection failed while the request was on it.
    Exchange(BoxError),
    /// No response head by the request's deadline.
    Timeout,
}

impl Http1Pool {
    pub fn new(connector: Connector, max_idle: usize, idle_timeout: Duration) -> Http1Pool {
        let shared = Arc::new(Shared { connector, idle: Mutex::default(), max_idle, idle_timeout });
        let idle: Weak<dyn IdleConnections> = Arc::downgrade(&shared) as Weak<Shared>;
        shared.connector.budget().share_idle(idle);
        Http1Pool { shared }
    }

    /// Sends the request on an idle connection or a new one. A request that an idle connection
    /// closed under before any answer goes on the next one, when it may be sent twice
    /// (idempotent, without a body): that race (the endpoint closing a keep-alive connection as
    /// it is reused) must not fail a request the endpoint never took.
    ///
    /// Not an `async fn`: the request is encoded before the future is made, so the future holds
    /// the encoded request only, not the request too (each is moved about with the future).
    pub fn send(
        &self,
        mut request: Request<ProxyBody>,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<Response<PeerBody>, PoolError>> + Send + '_ {
        to_origin_form(&mut request);
        if request.method() == Method::CONNECT || request.headers().contains_key(header::UPGRADE) {
            let switching = tokio::time::timeout_at(deadline, self.send_switching(request));
            return Either::Left(Box::pin(switching.map(|sent| sent.unwrap_or(Err(PoolError::Timeout)))));
        }
        let outgoing = Outgoing::new(request).map_err(|e| PoolError::Exchange(e.into()));
        Either::Right(self.send_outgoing(outgoing, deadline))
    }

    async fn send_outgoing(
        &self,
        outgoing: Result<Outgoing, PoolError>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<PeerBody>, PoolError> {
        let mut outgoing = outgoing?;
        loop {
            let (connection, reused) = match self.checkout() {
                Some(connection) => (connection, true),
                // Boxed: opening a connection (the TLS handshake's state above all) is rare, and
                // its state would otherwise make every request's future as large.
                None => {
                    let connecting = Box::pin(tokio::time::timeout_at(deadline, self.shared.connector.connect()));
                    let connected = connecting.await.map_err(|_| PoolError::Timeout)?;
                    (connected.map(Connection::new).map_err(PoolError::Connect)?, false)
                }
            };
            match wire::exchange(connection, outgoing, deadline).await {
                Ok((response, reader)) => {
                    let pool = Arc::downgrade(&self.shared);
                    return Ok(response.map(|()| PeerBody::from_endpoint(reader, pool)));
                }
                Err(failed) if failed.timed_out => return Err(PoolError::Timeout),
                Err(failed) => match failed.unsent {
                    Some(unsent) if reused => outgoing = unsent,
                    _ => return Err(PoolError::Exchange(failed.error.into())),
                },
            }
        }
    }

    /// A request that may switch protocols goes through hyper's client connection, on a
    /// connection of its own: hyper hands the connection over to the tunnel when the endpoint
    /// agrees, and a connection that carried such a request is not used again.
    async fn send_switching(&self, request: Request<ProxyBody>) -> Result<Response<PeerBody>, PoolError> {
        let stream = self.shared.connector.connect().await.map_err(PoolError::Connect)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PoolError::Connect(io::Error::other(e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        let response = sender.send_request(request).await.map_err(|e| PoolError::Exchange(e.into()))?;
        Ok(response.map(PeerBody::from))
    }

    /// The idle connection used last that is still open and not idle for too long.
    fn checkout(&self) -> Option<Connection> {
        loop {
            let Idle { mut connection, since } = self.shared.idle().connections.pop()?;
            if since.elapsed() < self.shared.idle_timeout && connection.is_idle() {
                connection.set_idle(false);
                return Some(connection);
            }
        }
    }
}

impl Shared {
    fn idle(&self) -> MutexGuard<'_, IdleList> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(self: &Arc<Self>, mut connection: Connection) {
        connection.set_idle(true);
        let mut idle = self.idle();
        if idle.connections.len() >= self.max_idle {
            return;
        }
        match idle.watcher.as_ref() {
            // The watcher hears of the endpoint closing it.
            Some(watcher) if !connection.still_idle(&mut Context::from_waker(watcher)) => return,
            Some(_) => {}
            None if !idle.watching => {
                idle.watching = true;
                tokio::spawn(watch(Arc::downgrade(self), self.idle_timeout));
            }
            // The watch task is starting: it looks at every idle connection when it does.
            None => {}
        }
        idle.connections.push(Idle { connection, since: Instant::now() });
        drop(idle);
        self.connector.budget().idled();
    }
}

impl IdleConnections for Shared {
    fn longest_idle(&self) -> Option<Duration> {
        self.idle().connections.first().map(|c| c.since.elapsed())
    }

    fn close_longest_idle(&self) -> bool {
        let mut idle = self.idle();
        if idle.connections.is_empty() {
            return false;
        }
        let closing = idle.connections.remove(0);
        // Closed outside the lock: the budget hears of it at once.
        drop(idle);
        drop(closing);
        true
    }
}

/// Lets go of idle connections that the endpoint closed (their sockets wake this task), and
/// every `idle_timeout` of those idle that long; ends when none are idle, or the pool is gone
/// (a reload replaced its cluster).
async fn watch(pool: Weak<Shared>, every: Duration) {
    let mut tick = Box::pin(tokio::time::sleep(every));
    poll_fn(|cx| {
        let Some(shared) = pool.upgrade() else { return Poll::Ready(()) };
        while tick.as_mut().poll(cx).is_ready() {
            let next = tick.deadline() + every;
            tick.as_mut().reset(next);
        }
        let mut idle = shared.idle();
        idle.connections.retain_mut(|c| c.since.elapsed() < every && c.connection.still_idle(cx));
        if idle.connections.is_empty() {
            // Under the lock, so a connection kept from now on starts the next watch.
            *idle = IdleList::default();
            return Poll::Ready(());
        }
        if !idle.watcher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            idle.watcher = Some(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
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

/// A body streamed from a peer: a client's request body, or an upstream's response body. An
/// HTTP/1.1 endpoint's gives its connection back to the pool once read to the end; one dropped
/// before that closes the connection with it.
pub struct PeerBody {
    source: Source,
}

enum Source {
    /// Read by hyper (a client's request, an HTTP/2 or upgraded upstream's response).
    Hyper(Incoming),
    /// A client's request body that had arrived whole with its head; `None` once taken.
    Whole(Option<Bytes>),
    Endpoint {
        reader: BodyReader,
        pool: Weak<Shared>,
    },
}

impl PeerBody {
    fn from_endpoint(reader: BodyReader, pool: Weak<Shared>) -> PeerBody {
        let mut body = PeerBody { source: Source::Endpoint { reader, pool } };
        if body.is_end_stream() {
            body.give_back();
        }
        body
    }

    fn give_back(&mut self) {
        let Source::Endpoint { reader, pool } = &mut self.source else { return };
        let Some(pool) = pool.upgrade() else { return };
        match reader.finish() {
            Afterwards::Idle(connection) => pool.keep(connection),
            Afterwards::AfterUpload(upload) => {
                // The endpoint answered before the request was all sent: the connection is
                // idle once it is; until then no request may wait on it. An upload that stalls
                // longer than a connection may idle closes it (it holds a place in
                // `max_connections`).
                let limit = pool.idle_timeout;
                let pool = Arc::downgrade(&pool);
                tokio::spawn(async move {
                    if let Ok(Some(connection)) = tokio::time::timeout(limit, upload).await {
                        if let Some(pool) = pool.upgrade() {
                            pool.keep(connection);
                        }
                    }
                });
            }
            Afterwards::Closed => {}
        }
    }
}

impl PeerBody {
    /// A client's request body read whole with its head (none when it is empty).
    pub fn whole(bytes: Bytes) -> PeerBody {
        PeerBody { source: Source::Whole((!bytes.is_empty()).then_some(bytes)) }
    }
}

impl From<Incoming> for PeerBody {
    fn from(body: Incoming) -> PeerBody {
        PeerBody { source: Source::Hyper(body) }
    }
}

impl Body for PeerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match &mut this.source {
            Source::Hyper(body) => {
                Poll::Ready(ready!(Pin::new(body).poll_frame(cx)).map(|f| f.map_err(BoxError::from)))
            }
            Source::Whole(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Source::Endpoint { reader, .. } => {
                let frame = ready!(reader.poll_frame(cx));
                match &frame {
                    Some(Ok(_)) if !reader.is_end_stream() => {}
                    Some(Err(_)) => {}
                    Some(Ok(_)) | None => this.give_back(),
                }
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Hyper(body) => body.is_end_stream(),
            Source::Whole(bytes) => bytes.is_none(),
            Source::Endpoint { reader, .. } => reader.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Hyper(body) => body.size_hint(),
            Source::Whole(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Endpoint { reader, .. } => reader.size_hint(),
        }
    }
}

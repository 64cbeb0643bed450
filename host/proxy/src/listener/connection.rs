//! HTTP on an accepted connection: HTTP/2 when the client opens with the HTTP/2 preface, else
//! HTTP/1.1, served in sessions that give their buffers back while the connection idles.
//!
//! hyper holds an HTTP/1 connection's read and write buffers (about 24 KiB) for as long as the
//! connection lives, and a keep-alive connection spends most of its life idle. So once a plain-TCP
//! connection has nothing to do (no request open, everything written flushed) for `PARK_AFTER`,
//! its hyper session is ended (hyper ends an idle session without touching the socket) and the
//! connection waits for the socket to become readable holding the socket alone; the next request
//! starts a new session. That is *parking*. TLS connections are not parked: rustls can hold
//! decrypted bytes that the socket's readiness does not show.

use super::fast_path;
use super::replay::Replay;
use super::Downstream;
use crate::http::{BoxError, ProxyBody};
use crate::metrics::ListenerLabels;
use crate::snapshot::ListenerState;
use crate::tcp::Socket;
use crate::upstream::PeerBody;
use crate::Shared;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Sleep;
use weft_config::ListenerLimits;

/// How long an HTTP/1 connection idles before it parks. Short, so that idle connections cost
/// little even while many arrive at once; long enough that a busy connection parks at most a
/// few times a second (a new session costs about as much as a small part of one request).
pub(super) const PARK_AFTER: Duration = Duration::from_millis(100);

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The listener's stop signal: `Some(drain time)` once it stops.
pub(super) type Stopped = watch::Receiver<Option<Duration>>;

pub(super) async fn serve<IO>(
    mut io: IO,
    conn: Arc<Downstream>,
    state: Arc<ListenerState>,
    shared: Arc<Shared>,
    stopped: Stopped,
) where
    IO: Socket + 'static,
{
    // The sniff waits for the client's first bytes, so it is bounded like reading a head.
    let limits = &state.config.limits;
    let ahead = match tokio::time::timeout(limits.header_read_timeout.get(), read_ahead(&mut io)).await {
        Ok(Ok(ahead)) if !ahead.is_empty() => ahead,
        _ => return,
    };
    if ahead[..] == H2_PREFACE[..] {
        // Boxed: HTTP/2's state would otherwise set the size of every connection's task.
        Box::pin(serve_h2(Replay::new(ahead, io), conn, &state, shared, stopped)).await
    } else {
        Http1::new(conn, &state, shared, stopped).serve(io, ahead).await
    }
}

/// Reads until the bytes are, or cannot be, the HTTP/2 preface.
async fn read_ahead<IO: AsyncRead + Unpin>(io: &mut IO) -> io::Result<Bytes> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    while len < buf.len() {
        let n = io.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len] != H2_PREFACE[..len] {
            break;
        }
    }
    Ok(Bytes::copy_from_slice(&buf[..len]))
}

async fn serve_h2<IO>(io: IO, conn: Arc<Downstream>, state: &ListenerState, shared: Arc<Shared>, mut stopped: Stopped)
where
    IO: Socket + 'static,
{
    let header_bytes = state.config.limits.max_request_header_size.bytes() as usize;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).max_header_list_size((header_bytes * 2).min(u32::MAX as usize) as u32);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        Box::pin(crate::http::handle(shared.clone(), conn.clone(), request.map(PeerBody::from)))
    });
    let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service));
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop_signal(&mut stopped) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(listener = %state.name, %error, "client connection ended with an error");
    }
}

/// Resolves once the listener stops (or is gone).
pub(super) async fn stop_signal(stopped: &mut Stopped) {
    while stopped.borrow_and_update().is_none() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

/// One HTTP/1 client connection, across its sessions.
struct Http1 {
    conn: Arc<Downstream>,
    builder: hyper::server::conn::http1::Builder,
    header_read_timeout: Duration,
    /// The largest request head hyper reads (its read buffer's limit).
    max_head: usize,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
    stopped: Stopped,
    listener: crate::metrics::Name,
}

/// How a session ended.
enum Ended {
    /// Parked or drained by weft, or closed by the client, or an upgrade: hyper let go of the socket.
    Released {
        parked: bool,
    },
    Failed(hyper::Error),
}

impl Http1 {
    fn new(conn: Arc<Downstream>, state: &ListenerState, shared: Arc<Shared>, stopped: Stopped) -> Self {
        Http1 {
            conn,
            builder: http1_builder(&state.config.limits),
            header_read_timeout: state.config.limits.header_read_timeout.get(),
            max_head: max_head(&state.config.limits),
            activity: Arc::default(),
            shared,
            stopped,
            listener: state.name.clone(),
        }
    }

    async fn serve<IO: Socket + 'static>(mut self, mut io: IO, mut ahead: Bytes) {
        let parkable = io.bare_tcp().is_some();
        let activity = self.activity.clone();
        let service = {
            let (shared, conn) = (self.shared.clone(), self.conn.clone());
            hyper::service::service_fn(move |request| {
                let open = OpenExchange::new(&activity);
                Box::pin(respond(shared.clone(), conn.clone(), request, open))
            })
        };
        let parked_gauge = self
            .shared
            .metrics
            .downstream_parked
            .get_or_create(&ListenerLabels { listener: self.listener.clone() })
            .clone();
        loop {
            // weft's own session serves the connection until a request it leaves to hyper.
            let own = Box::pin(fast_path::serve(
                io,
                ahead,
                fast_path::Server {
                    shared: &self.shared,
                    conn: &self.conn,
                    stopped: &mut self.stopped,
                    header_read_timeout: self.header_read_timeout,
                    max_head: self.max_head,
                    parkable,
                },
            ))
            .await;
            (io, ahead) = match own {
                fast_path::Ended::HandOver(io, ahead) => (io, ahead),
                fast_path::Ended::Parked(io) => {
                    if !self.park(&io, &parked_gauge).await {
                        return;
                    }
                    (io, Bytes::new())
                }
                fast_path::Ended::Closed(io) => return Box::pin(self.release(Box::new(io))).await,
            };
            if ahead.is_empty() {
                continue;
            }
            // Boxed: the session's state (hyper's connection, its buffers, the poll loop) is
            // given back before the connection parks; the task keeps only what parking needs.
            // Bound before it is awaited, so that the unboxed block is not kept in the task too.
            let session = Box::pin(async {
                self.activity.io.store(FLUSHED, Ordering::Relaxed);
                let watched = Watched { inner: Replay::new(ahead, io), activity: self.activity.clone() };
                let mut session = self.builder.serve_connection(TokioIo::new(watched), service.clone());
                let ended = self.run(&mut session, parkable).await;
                let parts = session.into_parts();
                let (rest, socket) = parts.io.into_inner().inner.into_parts();
                (socket, joined(parts.read_buf, rest), ended)
            });
            let ended;
            (io, ahead, ended) = session.await;
            match ended {
                Ended::Failed(error) => {
                    tracing::debug!(listener = %self.listener, %error, "client connection ended with an error");
                    return;
                }
                Ended::Released { parked: true } if ahead.is_empty() => {
                    if !self.park(&io, &parked_gauge).await {
                        return;
                    }
                }
                // Bytes of a request had already come: the next session starts on them at once.
                Ended::Released { parked: true } => {}
                // Boxed, as it is the connection's last step and needs room no parked one does.
                Ended::Released { parked: false } => {
                    return Box::pin(self.release(Box::new(Replay::new(ahead, io)))).await
                }
            }
        }
    }

    /// Parks the connection until its client sends more; false when it should close instead.
    async fn park<IO: Socket>(&mut self, io: &IO, parked_gauge: &prometheus_client::metrics::gauge::Gauge) -> bool {
        let Some(tcp) = io.bare_tcp() else { return true };
        parked_gauge.inc();
        let woke = self.wait_parked(tcp).await;
        parked_gauge.dec();
        woke
    }

    /// The socket after its last session: an upgrade the request path is waiting for takes it;
    /// else it closes.
    async fn release(&self, io: Box<dyn Socket>) {
        let mut io = match self.conn.upgrade.take() {
            Some(waiting) => match waiting.send(io) {
                Ok(()) => return,
                Err(io) => io,
            },
            None => io,
        };
        let _ = io.shutdown().await;
    }

    /// Drives a session until hyper lets go of the socket: the client closed, an upgrade, a
    /// drain, or a park once the connection has idled for `PARK_AFTER`.
    async fn run<I, S>(&mut self, session: &mut hyper::server::conn::http1::Connection<I, S>, parkable: bool) -> Ended
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin,
        S: hyper::service::HttpService<Incoming, ResBody = Counted> + Unpin,
        S::Future: Unpin,
    {
        let mut stop = pin!(stop_signal(&mut self.stopped));
        let mut timer = pin!(None::<Sleep>);
        let (mut draining, mut parking) = (false, false);
        let activity = &self.activity;
        poll_fn(|cx| loop {
            if !draining && stop.as_mut().poll(cx).is_ready() {
                draining = true;
                Pin::new(&mut *session).graceful_shutdown();
            }
            if let Poll::Ready(result) = session.poll_without_shutdown(cx) {
                return Poll::Ready(match result {
                    Ok(()) => Ended::Released { parked: parking },
                    Err(error) => Ended::Failed(error),
                });
            }
            if !parkable || draining || parking || !activity.idle() {
                return Poll::Pending;
            }
            // Armed once and not pushed back by each request: a busy connection parks at its
            // first idle moment after `PARK_AFTER`, which costs a session, not a clock read per request.
            if timer.is_none() {
                timer.set(Some(tokio::time::sleep(PARK_AFTER)));
            }
            if timer.as_mut().as_pin_mut().is_some_and(|timer| timer.poll(cx).is_pending()) {
                return Poll::Pending;
            }
            // Idle, so hyper ends the session at once, leaving the socket open.
            parking = true;
            Pin::new(&mut *session).graceful_shutdown();
        })
        .await
    }

    /// Waits, holding only the socket, for the client's next bytes. False when the connection
    /// should close instead: idle past the header read timeout, as hyper closes an idle
    /// keep-alive connection, or the listener stopping. Polls the socket's readiness rather than
    /// awaiting a `readable()` future: every parked connection holds this state.
    async fn wait_parked(&mut self, tcp: &tokio::net::TcpStream) -> bool {
        let mut stop = pin!(stop_signal(&mut self.stopped));
        let mut idle_limit = pin!(tokio::time::sleep(self.header_read_timeout));
        let waiting = poll_fn(|cx| {
            if stop.as_mut().poll(cx).is_ready() || idle_limit.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            tcp.poll_read_ready(cx).map(|ready| ready.is_ok())
        });
        waiting.await
    }
}

/// hyper's own limits sit above weft's, so requests just over weft's limit get weft's 431
/// with its `x-weft-error`; hyper's cruder refusal only meets far larger abuse.
fn http1_builder(limits: &ListenerLimits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_headers(limits.max_request_headers as usize * 2 + 16)
        .max_buf_size(max_head(limits));
    builder
}

fn max_head(limits: &ListenerLimits) -> usize {
    (limits.max_request_header_size.bytes() as usize * 2).max(16 * 1024)
}

/// What hyper had read and not parsed, then what was still in front of the socket. Copied:
/// hyper's bytes share its whole read buffer, which parking is there to let go of.
fn joined(read: Bytes, rest: Bytes) -> Bytes {
    if read.is_empty() {
        return rest;
    }
    let mut both = BytesMut::with_capacity(read.len() + rest.len());
    both.extend_from_slice(&read);
    both.extend_from_slice(&rest);
    both.freeze()
}

async fn respond(
    shared: Arc<Shared>,
    conn: Arc<Downstream>,
    request: Request<Incoming>,
    open: OpenExchange,
) -> Result<Response<Counted>, Infallible> {
    let response = crate::http::handle(shared, conn, request.map(PeerBody::from)).await?;
    Ok(response.map(|body| Counted { body, _open: open }))
}

/// What a connection's HTTP/1 session is doing, as far as parking needs to know.
#[derive(Default)]
struct Activity {
    /// Requests whose response body hyper has not yet finished with.
    open: AtomicU32,
    /// The socket's last step: `FLUSHED`, `READ` or `WRITING`.
    io: AtomicU8,
}

/// All that was written is flushed and nothing was read since.
const FLUSHED: u8 = 0;
/// Bytes were read that may be (part of) a request not yet answered.
const READ: u8 = 1;
/// Bytes were handed to the socket and not yet flushed.
const WRITING: u8 = 2;

impl Activity {
    /// Nothing open and nothing owed either way: hyper is waiting for a new request.
    fn idle(&self) -> bool {
        self.open.load(Ordering::Relaxed) == 0 && self.io.load(Ordering::Relaxed) == FLUSHED
    }
}

/// A request from when hyper hands it over until its response body is done with.
struct OpenExchange(Arc<Activity>);

impl OpenExchange {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::Relaxed);
        OpenExchange(activity.clone())
    }
}

impl Drop for OpenExchange {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its exchange open until hyper drops it.
pub(super) struct Counted {
    body: ProxyBody,
    _open: OpenExchange,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The session's socket, noting its last step in the connection's `Activity`.
struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO> Watched<IO> {
    fn note(&self, step: u8) {
        self.activity.io.store(step, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.note(READ);
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.note(WRITING);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.note(WRITING);
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// hyper flushes the socket only once its own write buffer is empty, so a finished flush
    /// means all it wrote is out.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.note(FLUSHED);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

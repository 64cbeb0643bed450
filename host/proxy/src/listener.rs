//! Listening sockets: bind, accept (within the connection limit), hand each connection to TLS
//! and HTTP or to the tcp path, and drain on stop: no new connections, in-flight ones finish.

use crate::metrics::{ListenerLabels, Name, RejectLabels};
use crate::snapshot::{ListenerState, Snapshot};
use crate::tls::TlsInfo;
use crate::Shared;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use prometheus_client::metrics::gauge::Gauge;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use weft_config::{ListenerLimits, ListenerProtocol};

/// One client connection, as the request path and filters see it.
pub struct Downstream {
    pub id: u64,
    pub listener: Name,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: Option<TlsInfo>,
    /// The config in force when the connection was accepted; used if its listener is removed.
    pub accepted: Arc<Snapshot>,
    /// `peer`'s IP as an `x-forwarded-for` entry, made once for all the connection's requests.
    pub forwarded_for: http::HeaderValue,
}

/// A bound socket and its accept loop.
pub struct RunningListener {
    pub address: String,
    pub bound: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl RunningListener {
    /// Stops accepting and lets open connections finish for at most `drain`.
    /// The returned handle completes when they have (or the time is up).
    pub fn stop(self, drain: Duration) -> JoinHandle<()> {
        let _ = self.stop.send(Some(drain));
        self.task
    }
}

/// Binds `address` with `SO_REUSEADDR`, so a restarted proxy can bind while old sockets linger.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

pub fn spawn(name: &str, address: String, socket: TcpListener, shared: Arc<Shared>) -> io::Result<RunningListener> {
    let bound = socket.local_addr()?;
    let (stop, stopped) = watch::channel(None);
    let task = tokio::spawn(accept_loop(Name::new(name), socket, shared, stopped));
    Ok(RunningListener { address, bound, stop, task })
}

/// Open connections of one listener, so a drain knows when they are all done.
#[derive(Default)]
struct ActiveConnections {
    count: AtomicUsize,
    idle: Notify,
}

struct ConnectionGuard {
    active: Arc<ActiveConnections>,
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
        if self.active.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.active.idle.notify_waiters();
        }
    }
}

impl ActiveConnections {
    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

async fn accept_loop(
    name: Name,
    socket: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<Option<Duration>>,
) {
    let active = Arc::new(ActiveConnections::default());
    let graceful = GracefulShutdown::new();
    let labels = ListenerLabels { listener: name.clone() };
    let gauge = shared.metrics.downstream_active.get_or_create(&labels).clone();
    let accepted_total = shared.metrics.downstream_total.get_or_create(&labels).clone();
    let drain = loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = stopped.changed() => break stopped.borrow().unwrap_or_default(),
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let snapshot = shared.snapshot.load_full();
        let Some(state) = snapshot.listeners.get(name.as_str()).cloned() else {
            continue;
        };
        if active.count.load(Ordering::Acquire) >= state.config.limits.max_connections as usize {
            shared
                .metrics
                .downstream_rejected
                .get_or_create(&RejectLabels { listener: name.clone(), reason: "limit" })
                .inc();
            drop(stream);
            continue;
        }
        active.count.fetch_add(1, Ordering::AcqRel);
        gauge.inc();
        accepted_total.inc();
        let guard = ConnectionGuard { active: active.clone(), gauge: gauge.clone() };
        let watcher = graceful.watcher();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _guard = guard;
            serve_connection(stream, peer, state, snapshot, shared, watcher).await;
        });
    };
    drop(socket);
    tracing::info!(listener = %name, open = active.count.load(Ordering::Acquire), "listener stopped, draining connections");
    let drained = async {
        graceful.shutdown().await;
        active.wait_idle().await;
    };
    if tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!(listener = %name, open = active.count.load(Ordering::Acquire), "drain time is up, closing what is left");
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<ListenerState>,
    accepted: Arc<Snapshot>,
    shared: Arc<Shared>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let conn = Downstream {
        id: shared.next_connection_id(),
        listener: state.name.clone(),
        peer,
        local,
        tls: None,
        accepted,
        forwarded_for: crate::http::forwarded_for(peer.ip()),
    };
    match state.tls.clone() {
        None => dispatch(stream, conn, state, shared, watcher).await,
        // Boxed: a task is as large as its largest state, and every idle keep-alive connection
        // holds its task; the TLS states (handshake, rustls session) would set the size of all.
        Some(acceptor) => Box::pin(serve_tls(stream, acceptor, conn, state, shared, watcher)).await,
    }
}

async fn serve_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    mut conn: Downstream,
    state: Arc<ListenerState>,
    shared: Arc<Shared>,
    watcher: Watcher,
) {
    let peer = conn.peer;
    let handshake = tokio::time::timeout(state.config.limits.tls_handshake_timeout.get(), acceptor.accept(stream));
    match handshake.await {
        Ok(Ok(tls)) => {
            conn.tls = Some(TlsInfo::of(tls.get_ref().1));
            dispatch(tls, conn, state, shared, watcher).await
        }
        Ok(Err(error)) => {
            tracing::debug!(listener = %state.name, %peer, %error, "TLS handshake failed");
            shared
                .metrics
                .downstream_rejected
                .get_or_create(&RejectLabels { listener: state.name.clone(), reason: "tls" })
                .inc();
        }
        Err(_) => {
            tracing::debug!(listener = %state.name, %peer, "TLS handshake timed out");
            shared
                .metrics
                .downstream_rejected
                .get_or_create(&RejectLabels { listener: state.name.clone(), reason: "tls" })
                .inc();
        }
    }
}

async fn dispatch<IO>(io: IO, conn: Downstream, state: Arc<ListenerState>, shared: Arc<Shared>, watcher: Watcher)
where
    IO: crate::tcp::Socket + 'static,
{
    if state.config.protocol == ListenerProtocol::Tcp {
        // Boxed for the same reason as TLS: TCP proxying's state would size every HTTP task.
        return Box::pin(crate::tcp::serve(io, conn, state, shared)).await;
    }
    let builder = http_builder(&state.config.limits);
    let conn = Arc::new(conn);
    // The request's future is boxed: hyper keeps a slot the size of the service's future for each
    // connection from its start, so an idle connection would hold a few KiB it does not use; one
    // allocation per request is the cheaper side of that trade.
    let service =
        hyper::service::service_fn(move |request| Box::pin(crate::http::handle(shared.clone(), conn.clone(), request)));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(listener = %state.name, error = %error, "client connection ended with an error");
    }
}

/// hyper's own limits sit above weft's, so requests just over weft's limit get weft's 431
/// with its `x-weft-error`; hyper's cruder refusal only meets far larger abuse.
fn http_builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let header_bytes = limits.max_request_header_size.bytes() as usize;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.get())
        .max_headers(limits.max_request_headers as usize * 2 + 16)
        .max_buf_size((header_bytes * 2).max(16 * 1024));
    builder.http2().timer(TokioTimer::new()).max_header_list_size((header_bytes * 2).min(u32::MAX as usize) as u32);
    builder
}

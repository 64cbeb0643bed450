//! Listening sockets: bind, accept (within the connection limit), hand each connection to TLS
//! and HTTP (`connection`) or to the tcp path, and drain on stop: no new connections, in-flight ones finish.

mod connection;
mod fast_path;
mod replay;

use crate::metrics::{ListenerLabels, Name, RejectLabels};
use crate::snapshot::{ListenerState, Snapshot};
use crate::tcp::Socket;
use crate::tls::TlsInfo;
use crate::Shared;
use connection::Stopped;
use futures_util::future::Either;
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use weft_config::ListenerProtocol;

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
    /// Where a request that upgrades this HTTP/1 connection waits for its socket.
    pub upgrade: UpgradeSlot,
}

/// The socket of an upgraded HTTP/1 connection reaches the request that upgraded it here, once
/// hyper has written the `101` and let go of the socket.
#[derive(Default)]
pub struct UpgradeSlot(Mutex<Option<oneshot::Sender<Box<dyn Socket>>>>);

impl UpgradeSlot {
    /// Asks for the socket, should the response be a `101`. A later request's ask replaces this one.
    pub fn wait(&self) -> oneshot::Receiver<Box<dyn Socket>> {
        let (sender, receiver) = oneshot::channel();
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sender);
        receiver
    }

    fn take(&self) -> Option<oneshot::Sender<Box<dyn Socket>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
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
        tokio::spawn(serve_connection(guard, stream, peer, state, snapshot, shared.clone(), stopped.clone()));
    };
    drop(socket);
    tracing::info!(listener = %name, open = active.count.load(Ordering::Acquire), "listener stopped, draining connections");
    // Each connection sees the stop too: idle ones close, busy ones after their requests.
    if tokio::time::timeout(drain, active.wait_idle()).await.is_err() {
        tracing::warn!(listener = %name, open = active.count.load(Ordering::Acquire), "drain time is up, closing what is left");
    }
}

/// Serves one accepted connection; `_guard` counts it open until it is done.
async fn serve_connection(
    _guard: ConnectionGuard,
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<ListenerState>,
    accepted: Arc<Snapshot>,
    shared: Arc<Shared>,
    stopped: Stopped,
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
        upgrade: UpgradeSlot::default(),
    };
    match state.tls.clone() {
        // The connection is shared from here on: each layer of futures below keeps its own
        // copy of its arguments, and a whole `Downstream` in each would cost every connection.
        None => dispatch(stream, Arc::new(conn), state, shared, stopped).await,
        // Boxed: a task is as large as its largest state, and every idle keep-alive connection
        // holds its task; the TLS states (handshake, rustls session) would set the size of all.
        Some(acceptor) => Box::pin(serve_tls(stream, acceptor, conn, state, shared, stopped)).await,
    }
}

async fn serve_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    mut conn: Downstream,
    state: Arc<ListenerState>,
    shared: Arc<Shared>,
    stopped: Stopped,
) {
    let peer = conn.peer;
    let handshake = tokio::time::timeout(state.config.limits.tls_handshake_timeout.get(), acceptor.accept(stream));
    match handshake.await {
        Ok(Ok(tls)) => {
            conn.tls = Some(TlsInfo::of(tls.get_ref().1));
            dispatch(tls, Arc::new(conn), state, shared, stopped).await
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

/// The tcp path or HTTP. Not an `async fn`: a task holds each layer's arguments for its whole
/// life, and this one would add a copy of them to every connection.
fn dispatch<IO>(
    io: IO,
    conn: Arc<Downstream>,
    state: Arc<ListenerState>,
    shared: Arc<Shared>,
    stopped: Stopped,
) -> impl Future<Output = ()>
where
    IO: Socket + 'static,
{
    if state.config.protocol == ListenerProtocol::Tcp {
        // Boxed for the same reason as TLS: TCP proxying's state would size every HTTP task.
        Either::Left(Box::pin(crate::tcp::serve(io, conn, state, shared)))
    } else {
        Either::Right(connection::serve(io, conn, state, shared, stopped))
    }
}

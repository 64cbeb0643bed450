//! The L4 path: a client connection spliced to an endpoint of the listener's cluster, through
//! the listener's network filters when it has any, and through the listener's toxics.
//!
//! A connection without filters or toxics takes the fast path (`splice`: a plain copy both
//! ways). When toxics appear, even on a connection already open, it moves to the toxic path
//! (`pump`, `link`), where each direction goes through the toxics of its stream. The toxics
//! themselves are described in `toxic` and kept per listener in `toxics`.

mod link;
mod pump;
mod splice;
pub mod toxic;
pub mod toxics;

use crate::chain::{ConnectionChain, StreamInfo};
use crate::cluster::Outcome;
use crate::listener::Downstream;
use crate::metrics::ListenerLabels;
use crate::snapshot::ListenerState;
use crate::Shared;
use link::{Cut, Filters, Link};
use pump::{Counts, Seed};
use splice::{Pipe, Spliced};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use toxic::Stream;
use toxics::{ListenerToxics, Toxics};

/// A connection's byte stream, whose socket can be made to close with a TCP RST.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket under it, when there is one.
    fn tcp(&self) -> Option<&TcpStream>;

    /// The socket itself when it is bare TCP, whose readiness shows every byte there is to read
    /// (a TLS stream can hold decrypted bytes its socket no longer shows).
    fn bare_tcp(&self) -> Option<&TcpStream> {
        None
    }

    /// Makes the close of this socket a reset (a zero linger), for `reset_peer`.
    fn set_reset(&self) {
        if let Some(tcp) = self.tcp() {
            if let Err(error) = tcp.set_zero_linger() {
                tracing::debug!(%error, "cannot set a zero linger; the connection closes with a FIN");
            }
        }
    }
}

impl Socket for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }

    fn bare_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.get_ref().0)
    }
}

impl Socket for crate::upstream::UpstreamStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.tcp())
    }
}

#[cfg(test)]
impl Socket for tokio::io::DuplexStream {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

/// What a relayed connection did, for metrics and the access log.
pub(crate) struct Relayed {
    /// Bytes read from the client.
    pub(crate) received: u64,
    /// Bytes read from the upstream.
    pub(crate) sent: u64,
    pub(crate) outcome: &'static str,
}

/// Relays `client` and `upstream` until both have closed or the connection is cut: on the fast
/// path while the connection has neither filters nor toxics, else through them.
pub(crate) async fn relay<D: Socket, U: Socket>(
    mut client: D,
    mut upstream: U,
    toxics: &Arc<Toxics>,
    listener: &Arc<ListenerToxics>,
    filters: ConnectionChain,
    limit: usize,
    mut rng: fastrand::Rng,
) -> Relayed {
    let mut watch = listener.watch();
    let (mut forward, mut backward) = (Pipe::new(), Pipe::new());
    if filters.is_empty() && watch.current().is_empty() {
        match splice::splice(&mut client, &mut upstream, &mut forward, &mut backward, &mut watch).await {
            Ok(Spliced::Closed) => {
                return Relayed { received: forward.amount, sent: backward.amount, outcome: "closed" };
            }
            Ok(Spliced::Changed) => {
                tracing::debug!(listener = %listener.name, "toxics changed; the connection takes the toxic path");
            }
            Err(error) => {
                tracing::debug!(listener = %listener.name, %error, "tcp connection ended with an error");
                return Relayed { received: forward.amount, sent: backward.amount, outcome: "reset" };
            }
        }
    }
    let seeds =
        [&forward, &backward].map(|pipe| Seed { unwritten: pipe.unwritten(), ended: pipe.read_done, done: pipe.done });
    let up = Link::new(Stream::Upstream, watch, toxics.clone(), rng.fork());
    let down = Link::new(Stream::Downstream, listener.watch(), toxics.clone(), rng.fork());
    let chain = Mutex::new(filters);
    let filters = (!lock_empty(&chain)).then_some(Filters { chain: &chain, limit });
    let counts = Counts::default();
    let result = pump::pump(client, upstream, up, down, seeds, filters, &counts).await;
    let outcome = match result {
        Ok(()) => "closed",
        Err(Cut::Filter) => "closed by filter",
        Err(Cut::Toxic("timeout")) => "closed by timeout toxic",
        Err(Cut::Toxic(_)) => "closed by limit_data toxic",
        Err(Cut::Reset) => "reset by reset_peer toxic",
        Err(Cut::Failed(error)) => {
            tracing::debug!(listener = %listener.name, %error, "tcp connection ended with an error");
            "reset"
        }
    };
    if matches!(outcome, "closed by timeout toxic" | "closed by limit_data toxic" | "reset by reset_peer toxic") {
        tracing::debug!(listener = %listener.name, outcome, "a toxic ended a tcp connection");
    }
    Relayed {
        received: forward.amount + counts.received.load(Ordering::Relaxed),
        sent: backward.amount + counts.sent.load(Ordering::Relaxed),
        outcome,
    }
}

fn lock_empty(chain: &Mutex<ConnectionChain>) -> bool {
    chain.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
}

pub async fn serve<IO>(downstream: IO, conn: Arc<Downstream>, listener: Arc<ListenerState>, shared: Arc<Shared>)
where
    IO: Socket + 'static,
{
    let started = (Instant::now(), SystemTime::now());
    let cluster = listener.default_cluster.as_ref().and_then(|name| conn.accepted.clusters.get(name.as_str()));
    let Some(cluster) = cluster else { return };
    let Some(endpoint) = cluster.pick_for(crate::cluster::hash_ip(conn.peer.ip()), &[]).cloned() else {
        tracing::debug!(listener = %listener.name, cluster = %cluster.name, "no healthy upstream; closing the connection");
        return;
    };
    let _in_flight = endpoint.start_request();
    let Some(connector) = &endpoint.connector else {
        return;
    };
    let mut filters = listener.chain.start_connection(|| StreamInfo {
        listener: listener.name.clone(),
        connection_id: conn.id,
        source: conn.peer,
        destination: conn.local,
        tls: conn.tls.clone(),
        started: started.1,
    });
    if filters.on_new_connection().is_err() {
        return;
    }
    let limit = listener.config.limits.max_buffered_body.bytes() as usize;
    let (received, sent, outcome) = match connector.connect().await {
        Ok(upstream) => {
            endpoint.record(Outcome::Success);
            let toxics = shared.toxics.listener(listener.name.as_str());
            let rng = fastrand::Rng::new();
            let relayed = relay(downstream, upstream, &shared.toxics, &toxics, filters, limit, rng).await;
            (relayed.received, relayed.sent, relayed.outcome)
        }
        Err(error) => {
            endpoint.record(Outcome::ConnectFailure);
            tracing::debug!(listener = %listener.name, endpoint = %endpoint.address, %error, "tcp upstream connect failed");
            (0, 0, "upstream connect failure")
        }
    };
    for probe in shared.probes.for_connection(listener.name.as_str()) {
        probe.record(outcome != "closed" && outcome != "closed by filter", started.0.elapsed());
    }
    let labels = ListenerLabels { listener: listener.name.clone() };
    shared.metrics.tcp_bytes_received.get_or_create(&labels).inc_by(received);
    shared.metrics.tcp_bytes_sent.get_or_create(&labels).inc_by(sent);
    if listener.config.access_log {
        let line = serde_json::json!({
            "time": crate::http::rfc3339(started.1),
            "listener": listener.name.as_str(),
            "client": conn.peer.to_string(),
            "connection_id": conn.id,
            "cluster": cluster.name.as_str(),
            "upstream": endpoint.address.to_string(),
            "duration_ms": started.0.elapsed().as_millis() as u64,
            "bytes_received": received,
            "bytes_sent": sent,
            "outcome": outcome,
            "source_principal": conn.tls.as_ref().and_then(|t| t.peer_uri_san.clone()),
        });
        crate::http::print_access_log(&line);
    }
}

#[cfg(test)]
mod tests;

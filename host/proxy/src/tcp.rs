//! The L4 path: a client connection spliced to an endpoint of the listener's cluster, through
//! the listener's network filters when it has any.

use crate::chain::{ConnectionChain, Direction, StreamInfo};
use crate::cluster::Outcome;
use crate::listener::Downstream;
use crate::metrics::ListenerLabels;
use crate::snapshot::ListenerState;
use crate::Shared;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How much is read from either side at a time when filters look at the data.
const CHUNK: usize = 16 * 1024;

pub async fn serve<IO>(mut downstream: IO, conn: Downstream, listener: Arc<ListenerState>, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
        Ok(mut upstream) => {
            endpoint.record(Outcome::Success);
            let spliced = if filters.is_empty() {
                tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await.map(|(r, s)| (r, s, "closed"))
            } else {
                splice_filtered(&mut downstream, &mut upstream, &mut filters, limit).await
            };
            spliced.unwrap_or_else(|error| {
                tracing::debug!(listener = %listener.name, %error, "tcp connection ended with an error");
                (0, 0, "reset")
            })
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

/// Moves bytes both ways through the network filters until both sides have closed (or a filter
/// closes the connection). Returns the bytes read from the client and from the upstream.
async fn splice_filtered<D, U>(
    downstream: &mut D,
    upstream: &mut U,
    filters: &mut ConnectionChain,
    limit: usize,
) -> std::io::Result<(u64, u64, &'static str)>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_client, mut to_client) = tokio::io::split(downstream);
    let (mut from_upstream, mut to_upstream) = tokio::io::split(upstream);
    let (mut client_chunk, mut upstream_chunk) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut client_open, mut upstream_open) = (true, true);
    let (mut received, mut sent) = (0u64, 0u64);
    while client_open || upstream_open {
        let passed = tokio::select! {
            read = from_client.read(&mut client_chunk), if client_open => {
                let n = read?;
                received += n as u64;
                client_open = n > 0;
                pass(filters, Direction::Request, &client_chunk[..n], &mut to_upstream, limit).await?
            }
            read = from_upstream.read(&mut upstream_chunk), if upstream_open => {
                let n = read?;
                sent += n as u64;
                upstream_open = n > 0;
                pass(filters, Direction::Response, &upstream_chunk[..n], &mut to_client, limit).await?
            }
        };
        if !passed {
            return Ok((received, sent, "closed by filter"));
        }
    }
    Ok((received, sent, "closed"))
}

/// Hands what was read (`data`; empty: that side closed) through the filters to the other side,
/// closing the other side's write half after the end. False when a filter closed the connection.
async fn pass<W: AsyncWrite + Unpin>(
    filters: &mut ConnectionChain,
    direction: Direction,
    data: &[u8],
    to: &mut W,
    limit: usize,
) -> std::io::Result<bool> {
    let end = data.is_empty();
    let Ok(data) = filters.on_data(direction, data, end, limit) else { return Ok(false) };
    to.write_all(&data).await?;
    if end {
        filters.on_close(direction);
        to.shutdown().await?;
    }
    Ok(true)
}

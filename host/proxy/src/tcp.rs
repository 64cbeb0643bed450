//! The L4 path: a client connection spliced to an endpoint of the listener's cluster.

use crate::listener::Downstream;
use crate::metrics::ListenerLabels;
use crate::snapshot::ListenerState;
use crate::Shared;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};

pub async fn serve<IO>(mut downstream: IO, conn: Downstream, listener: Arc<ListenerState>, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = (Instant::now(), SystemTime::now());
    let cluster = listener.default_cluster.as_ref().and_then(|name| conn.accepted.clusters.get(name.as_str()));
    let Some(cluster) = cluster else { return };
    let endpoint = cluster.pick(crate::cluster::hash_ip(conn.peer.ip())).clone();
    let _in_flight = endpoint.start_request();
    let Some(connector) = &endpoint.connector else {
        return;
    };
    let (received, sent, outcome) = match connector.connect().await {
        Ok(mut upstream) => match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
            Ok((received, sent)) => (received, sent, "closed"),
            Err(error) => {
                tracing::debug!(listener = %listener.name, %error, "tcp connection ended with an error");
                (0, 0, "reset")
            }
        },
        Err(error) => {
            tracing::debug!(listener = %listener.name, endpoint = %endpoint.address, %error, "tcp upstream connect failed");
            (0, 0, "upstream connect failure")
        }
    };
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
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
}

//! Sending a request to a chosen endpoint and classifying how it failed, if it did.

mod connector;
pub mod retry;
mod slots;

pub use connector::{ConnectionLimit, Connector, UpstreamStream};
pub use slots::{ConnectionBudget, ConnectionSlots, Turn};

use crate::cluster::{Cluster, Endpoint, InFlight};
use crate::http::ProxyBody;
use crate::metrics::{ClusterLabels, Metrics, UpstreamErrorLabels};
use http::{Request, Response};
use hyper::body::Incoming;
use std::time::Duration;

/// How an upstream exchange failed; `http::local_reply` turns it into the client's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, connect timeout, TLS handshake).
    Connect,
    /// The connection broke before a response head arrived.
    Reset,
    /// No response head within the cluster's `request_timeout`.
    Timeout,
    /// The cluster's circuit breaker: `max_connections` are open and none closed in time, or
    /// `max_pending` requests wait for one already. No connection was tried.
    Overloaded,
}

impl UpstreamError {
    fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Reset => "reset",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Overloaded => "overloaded",
        }
    }
}

/// Sends `request` through the endpoint's pool and waits at most `timeout` for the response head,
/// counting a wait for the cluster's turn (HTTP/1.1, past `max_connections` busy) in it. The
/// turn is kept in `in_flight`, so it passes on when the request is over, body and all.
pub async fn send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    in_flight: &mut InFlight,
    request: Request<ProxyBody>,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Response<Incoming>, UpstreamError> {
    let Some(client) = &endpoint.client else {
        return Err(UpstreamError::Connect);
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let sent = async {
        if let Some(slots) = &cluster.slots {
            in_flight.hold(slots.take(timeout).await?);
        }
        tokio::time::timeout_at(deadline, client.request(request)).await.map_err(|_| UpstreamError::Timeout)
    };
    let outcome = match sent.await {
        Ok(Ok(response)) => return Ok(response),
        Err(refused) => refused,
        Ok(Err(error)) if caused_by::<ConnectionLimit>(&error) => UpstreamError::Overloaded,
        Ok(Err(error)) if error.is_connect() || is_tls_refusal(&error) => {
            tracing::debug!(endpoint = %endpoint.address, error = %error_chain(&error), "upstream connect failed");
            UpstreamError::Connect
        }
        Ok(Err(error)) => {
            tracing::debug!(endpoint = %endpoint.address, error = %error_chain(&error), "upstream reset");
            UpstreamError::Reset
        }
    };
    let cluster = &cluster.name;
    if outcome == UpstreamError::Overloaded {
        metrics.upstream_overloaded.get_or_create(&ClusterLabels { cluster: cluster.clone() }).inc();
    }
    metrics
        .upstream_errors
        .get_or_create(&UpstreamErrorLabels { cluster: cluster.clone(), reason: outcome.label() })
        .inc();
    Err(outcome)
}

/// Whether `E` is somewhere in the error's chain (io::Error hides what it wraps from `source()`,
/// so it is looked into as well).
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = next {
        let wrapped = cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if cause.is::<E>() || wrapped.is_some_and(|inner| inner.is::<E>()) {
            return true;
        }
        next = cause.source();
    }
    false
}

/// A TLS alert from the endpoint, such as TLS 1.3's late `certificate_required`: the handshake
/// looked done to us, but the endpoint refused the connection. That is a connect failure.
fn is_tls_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    error.source().is_some_and(caused_by::<rustls::Error>)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

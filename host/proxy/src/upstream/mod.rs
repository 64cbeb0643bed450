//! Sending a request to a chosen endpoint and classifying how it failed, if it did.

mod connector;
mod pool;
pub mod retry;
mod slots;
mod wire;

pub use connector::{ConnectionLimit, Connector, UpstreamStream};
pub use pool::{Http1Pool, PeerBody};
pub use slots::{ConnectionBudget, ConnectionSlots, Turn};

use crate::cluster::{Cluster, Endpoint, InFlight, Outcome};
use crate::http::ProxyBody;
use crate::metrics::{ClusterLabels, Metrics, UpstreamErrorLabels};
use futures_util::future::Either;
use futures_util::{FutureExt, TryFutureExt};
use http::{Request, Response};
use hyper_util::client::legacy::Client;
use pool::PoolError;
use std::future::Future;
use std::time::Duration;

/// How requests reach one endpoint: HTTP/1.1 clusters through weft's own pool; HTTP/2 clusters
/// through hyper's pooled client, which also settles HTTP/1.1 or HTTP/2 by ALPN under TLS.
pub enum UpstreamClient {
    Http1(Http1Pool),
    /// Boxed: hyper's client is some 400 bytes, the pool one pointer.
    Http2(Box<Client<Connector, ProxyBody>>),
}

/// Why a request got no response from an [`UpstreamClient`].
#[derive(Debug)]
pub enum SendError {
    Http1(PoolError),
    Http2(hyper_util::client::legacy::Error),
    /// No response head in time from an HTTP/2 cluster (the HTTP/1.1 pool says its own).
    Timeout,
}

impl UpstreamClient {
    /// Not an `async fn`: the request moves straight into the future that sends it instead of
    /// being kept in this one too (each layer that holds a request by value adds its size to every
    /// request's future, which is moved about whole). No response head by `deadline` is
    /// [`SendError::Timeout`].
    pub fn request(
        &self,
        request: Request<ProxyBody>,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<Response<PeerBody>, SendError>> + Send + '_ {
        match self {
            // The pool keeps the deadline with a timer of each connection's, moved on from one
            // request to the next, instead of a timer made and dropped for every request.
            UpstreamClient::Http1(pool) => Either::Left(pool.send(request, deadline).map_err(SendError::Http1)),
            UpstreamClient::Http2(client) => {
                Either::Right(tokio::time::timeout_at(deadline, client.request(request)).map(|sent| match sent {
                    Ok(Ok(response)) => Ok(response.map(PeerBody::from)),
                    Ok(Err(error)) => Err(SendError::Http2(error)),
                    Err(_) => Err(SendError::Timeout),
                }))
            }
        }
    }
}

impl SendError {
    fn classify(&self) -> UpstreamError {
        match self {
            SendError::Http1(PoolError::Connect(error)) if caused_by::<ConnectionLimit>(error) => {
                UpstreamError::Overloaded
            }
            SendError::Http1(PoolError::Connect(_)) => UpstreamError::Connect,
            SendError::Http1(PoolError::Exchange(error)) if caused_by::<rustls::Error>(&**error) => {
                UpstreamError::Connect
            }
            SendError::Http1(PoolError::Exchange(_)) => UpstreamError::Reset,
            SendError::Http1(PoolError::Timeout) | SendError::Timeout => UpstreamError::Timeout,
            SendError::Http2(error) if caused_by::<ConnectionLimit>(error) => UpstreamError::Overloaded,
            SendError::Http2(error) if error.is_connect() || is_tls_refusal(error) => UpstreamError::Connect,
            SendError::Http2(_) => UpstreamError::Reset,
        }
    }

    fn error(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Http1(PoolError::Connect(error)) => Some(error),
            SendError::Http1(PoolError::Exchange(error)) => Some(&**error),
            SendError::Http2(error) => Some(error),
            SendError::Http1(PoolError::Timeout) | SendError::Timeout => None,
        }
    }
}

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
    /// How the failure counts against the endpoint; `None` when the endpoint had no part in it
    /// (the cluster's own connection limit).
    fn endpoint_outcome(self) -> Option<Outcome> {
        match self {
            UpstreamError::Connect => Some(Outcome::ConnectFailure),
            UpstreamError::Reset => Some(Outcome::Reset),
            UpstreamError::Timeout => Some(Outcome::Timeout),
            UpstreamError::Overloaded => None,
        }
    }

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
/// turn is kept in `in_flight`, so it passes on when the request is over, body and all. How the
/// try went is recorded on the endpoint, for its outlier detection.
pub async fn send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    in_flight: &mut InFlight,
    request: Request<ProxyBody>,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Response<PeerBody>, UpstreamError> {
    let Some(client) = &endpoint.client else {
        endpoint.record(Outcome::ConnectFailure);
        return Err(UpstreamError::Connect);
    };
    let deadline = tokio::time::Instant::now() + timeout;
    // The two waits one after the other in this future, not nested in a block of their own:
    // each layer of future adds its size to every request's, which is moved about whole.
    let outcome = 'failed: {
        if let Some(slots) = &cluster.slots {
            match slots.take(timeout).await {
                Ok(turn) => in_flight.hold(turn),
                Err(refused) => break 'failed refused,
            }
        }
        match client.request(request, deadline).await {
            Ok(response) => {
                let server_error = response.status().is_server_error();
                endpoint.record(if server_error { Outcome::ServerError } else { Outcome::Success });
                return Ok(response);
            }
            Err(error) => {
                let outcome = error.classify();
                let chain = error.error().map(error_chain).unwrap_or_default();
                match outcome {
                    UpstreamError::Connect => {
                        tracing::debug!(endpoint = %endpoint.address, error = %chain, "upstream connect failed")
                    }
                    UpstreamError::Reset => {
                        tracing::debug!(endpoint = %endpoint.address, error = %chain, "upstream reset")
                    }
                    _ => {}
                }
                outcome
            }
        }
    };
    if let Some(outcome) = outcome.endpoint_outcome() {
        endpoint.record(outcome);
    }
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

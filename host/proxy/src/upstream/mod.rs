//! Sending a request to a chosen endpoint and classifying how it failed, if it did.

mod connector;
pub mod retry;

pub use connector::{Connector, UpstreamStream};

use crate::cluster::Endpoint;
use crate::http::ProxyBody;
use crate::metrics::{Metrics, Name, UpstreamErrorLabels};
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
}

impl UpstreamError {
    fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Reset => "reset",
            UpstreamError::Timeout => "timeout",
        }
    }
}

/// Sends `request` through the endpoint's pool and waits at most `timeout` for the response head.
pub async fn send(
    endpoint: &Endpoint,
    cluster: &Name,
    request: Request<ProxyBody>,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Response<Incoming>, UpstreamError> {
    let Some(client) = &endpoint.client else {
        return Err(UpstreamError::Connect);
    };
    let outcome = match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(response)) => return Ok(response),
        Ok(Err(error)) if error.is_connect() || is_tls_refusal(&error) => {
            tracing::debug!(endpoint = %endpoint.address, error = %error_chain(&error), "upstream connect failed");
            UpstreamError::Connect
        }
        Ok(Err(error)) => {
            tracing::debug!(endpoint = %endpoint.address, error = %error_chain(&error), "upstream reset");
            UpstreamError::Reset
        }
        Err(_) => UpstreamError::Timeout,
    };
    metrics
        .upstream_errors
        .get_or_create(&UpstreamErrorLabels { cluster: cluster.clone(), reason: outcome.label() })
        .inc();
    Err(outcome)
}

/// A TLS alert from the endpoint, such as TLS 1.3's late `certificate_required`: the handshake
/// looked done to us, but the endpoint refused the connection. That is a connect failure.
fn is_tls_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        // io::Error hides the error it wraps from `source()`; look inside it too.
        let wrapped = cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if cause.is::<rustls::Error>() || wrapped.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return true;
        }
        source = cause.source();
    }
    false
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

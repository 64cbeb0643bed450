//! Requests filters make themselves (HTTP and gRPC callouts) to a named cluster. They go through
//! the same balancers and connection pools as proxied traffic, with the filter's timeout.

use crate::http::ProxyBody;
use crate::Shared;
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Limited};
use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;
use std::time::Duration;

/// How long a callout may take when its filter names no timeout.
pub const DEFAULT_CALLOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest callout response body weft collects for a filter.
const MAX_CALLOUT_BODY: usize = 8 << 20;

/// A callout's answer, read whole.
pub struct CalloutResponse {
    pub head: http::response::Parts,
    pub body: Bytes,
    pub trailers: HeaderMap,
}

pub type CalloutFuture = Pin<Box<dyn Future<Output = Result<CalloutResponse, String>> + Send>>;

/// How filters reach clusters.
pub trait Callouts: Send + Sync {
    /// Whether a cluster of that name is configured now.
    fn knows(&self, cluster: &str) -> bool;
    /// Sends `request` (origin-form URI, `Host` set) to one endpoint of `cluster`; the whole
    /// exchange, body included, must finish within `timeout`.
    fn send(&self, cluster: &str, request: Request<Bytes>, timeout: Duration) -> CalloutFuture;
}

/// Callouts to the clusters of the config in force at the time of the call.
pub(crate) struct ClusterCallouts {
    pub shared: Weak<Shared>,
}

impl Callouts for ClusterCallouts {
    fn knows(&self, cluster: &str) -> bool {
        self.shared.upgrade().is_some_and(|shared| shared.snapshot.load().clusters.contains_key(cluster))
    }

    fn send(&self, cluster: &str, request: Request<Bytes>, timeout: Duration) -> CalloutFuture {
        let (shared, cluster) = (self.shared.upgrade(), cluster.to_owned());
        Box::pin(async move {
            let shared = shared.ok_or("the proxy is shutting down")?;
            let snapshot = shared.snapshot.load_full();
            let cluster = snapshot.clusters.get(&cluster).ok_or_else(|| format!("no cluster named {cluster:?}"))?;
            let endpoint = cluster.pick_for(fastrand::u64(..), &[]).ok_or("no healthy upstream")?.clone();
            let (mut parts, body) = request.into_parts();
            crate::http::address_upstream(cluster, &mut parts, &endpoint.name).map_err(|r| r.reason().to_owned())?;
            let request = Request::from_parts(parts, ProxyBody::full(body));
            let mut in_flight = endpoint.start_request();
            let exchange = async {
                let response =
                    crate::upstream::send(cluster, &endpoint, &mut in_flight, request, timeout, &shared.metrics).await;
                let (head, body) =
                    response.map_err(|e| crate::http::LocalReply::from(e).reason().to_owned())?.into_parts();
                let collected = Limited::new(body, MAX_CALLOUT_BODY)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the body: {e}"))?;
                let trailers = collected.trailers().cloned().unwrap_or_default();
                Ok(CalloutResponse { head, body: collected.to_bytes(), trailers })
            };
            tokio::time::timeout(timeout, exchange).await.map_err(|_| "upstream timeout".to_owned())?
        })
    }
}

//! When a failed try is tried again: the cluster's `retry_on` conditions, a growing wait with
//! jitter between tries, and a budget that keeps retries to a share of the cluster's active
//! requests, so that retrying cannot multiply an outage. Also the cluster's load counters, which
//! the circuit breaker reads.

use super::PeerBody;
use super::UpstreamError;
use crate::cluster::{Cluster, Endpoint, InFlight};
use crate::http::{LocalReply, ProxyBody};
use crate::metrics::{Metrics, UpstreamErrorLabels};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_config::{Retries, RetryOn};

/// A cluster's requests and retries in flight.
#[derive(Default)]
pub struct Load {
    requests: AtomicUsize,
    retries: AtomicUsize,
}

/// Counts one request (or one retry) as in flight until dropped.
pub struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Load {
    /// Counts a request in, unless `limit` are in flight already (the circuit breaker's
    /// `max_requests`): then `None`, and the request is answered 503 `overloaded`.
    pub fn admit(&self, limit: u32) -> Option<Counted<'_>> {
        let before = self.requests.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(&self.requests);
        (before < limit as usize).then_some(counted)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a retry in, if the budget allows one more: retries in flight stay within
    /// `budget_percent` of active requests, and one retry is always allowed.
    pub fn retry(&self, budget_percent: u32) -> Option<Counted<'_>> {
        let allowed = (self.requests() * budget_percent as usize / 100).max(1);
        let before = self.retries.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(&self.retries);
        (before < allowed).then_some(counted)
    }
}

/// How a try ended, as far as retrying goes.
pub enum TryEnd<'a> {
    Failed(UpstreamError),
    /// An answer, by its status and headers (a gRPC error answered trailers-only has
    /// `grpc-status` in its headers).
    Answered(StatusCode, &'a HeaderMap),
}

/// Whether `retries` ask for a try that ended so to be tried again.
pub fn worth_retrying(conditions: &[RetryOn], end: &TryEnd<'_>) -> bool {
    conditions.iter().any(|condition| match (condition, end) {
        (RetryOn::ConnectFailure, TryEnd::Failed(UpstreamError::Connect)) => true,
        (RetryOn::Reset, TryEnd::Failed(UpstreamError::Reset)) => true,
        (RetryOn::Timeout, TryEnd::Failed(UpstreamError::Timeout)) => true,
        (RetryOn::Status(wanted), TryEnd::Answered(status, _)) => status.as_u16() == *wanted,
        (RetryOn::StatusClass(hundreds), TryEnd::Answered(status, _)) => status.as_u16() / 100 == *hundreds,
        (RetryOn::GrpcUnavailable, TryEnd::Answered(_, headers)) => {
            headers.get("grpc-status").is_some_and(|code| code.as_bytes() == b"14")
        }
        _ => false,
    })
}

/// The wait before retry number `n` (1 for the first): `backoff × 2^(n-1)`, capped at
/// `max_backoff`, then a random point between half of it and all of it, so that clients that
/// failed together do not retry together.
pub fn backoff(retries: &Retries, n: u32) -> Duration {
    let base = retries.backoff.get();
    let grown = base.saturating_mul(1u32 << (n.saturating_sub(1)).min(16));
    grown.min(retries.max_backoff.get()).mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// What the last try of a request left: the endpoint that answered (or failed last), its
/// in-flight count, and the result.
pub struct Tried {
    pub endpoint: Arc<Endpoint>,
    pub in_flight: InFlight,
    pub result: Result<Response<PeerBody>, UpstreamError>,
}

/// Sends a request whose body is whole in memory (so it can be sent again), trying again as
/// `retries` say: on another endpoint when there is one, after a jittered wait, within the
/// budget, and never past `timeout` for the whole request.
#[allow(clippy::too_many_arguments)]
pub async fn send_replayable(
    cluster: &Cluster,
    retries: &Retries,
    hash: u64,
    first: Arc<Endpoint>,
    parts: &http::request::Parts,
    body: Bytes,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<Tried, LocalReply> {
    let conditions = retries.conditions();
    let deadline = Instant::now() + timeout;
    let mut endpoint = first;
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    // Held through the next try: a retry counts against the budget until it is answered.
    let mut _retry_slot = None;
    let mut attempt = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let this_try = retries.per_try_timeout.map_or(left, |per_try| per_try.get().min(left));
        let mut request_parts = parts.clone();
        crate::http::address_upstream(cluster, &mut request_parts, &endpoint.name)?;
        let mut in_flight = endpoint.start_request();
        let request = Request::from_parts(request_parts, ProxyBody::full(body.clone()));
        let result = super::send(cluster, &endpoint, &mut in_flight, request, this_try, metrics).await;
        let end = match &result {
            Err(error) => TryEnd::Failed(*error),
            Ok(response) => TryEnd::Answered(response.status(), response.headers()),
        };
        let again = attempt < retries.attempts && worth_retrying(&conditions, &end) && Instant::now() < deadline;
        if !again {
            return Ok(Tried { endpoint, in_flight, result });
        }
        let labels = |reason| UpstreamErrorLabels { cluster: cluster.name.clone(), reason };
        // This request's previous retry is over: its place in the budget goes back first.
        _retry_slot = None;
        let Some(slot) = cluster.load.retry(retries.budget_percent) else {
            metrics.upstream_retries.get_or_create(&labels("budget_exhausted")).inc();
            return Ok(Tried { endpoint, in_flight, result });
        };
        metrics.upstream_retries.get_or_create(&labels("sent")).inc();
        _retry_slot = Some(slot);
        drop((in_flight, result));
        attempt += 1;
        tokio::time::sleep(backoff(retries, attempt).min(deadline.saturating_duration_since(Instant::now()))).await;
        tried.push(endpoint.clone());
        endpoint = cluster.pick_for(hash, &tried).ok_or(LocalReply::NoHealthyUpstream)?.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries(retry_on: &[&str]) -> Retries {
        serde_json::from_value(serde_json::json!({ "retry_on": retry_on, "backoff": "100ms", "max_backoff": "300ms" }))
            .unwrap()
    }

    #[test]
    fn only_the_configured_conditions_are_retried() {
        let conditions = retries(&["connect-failure", "503", "grpc-unavailable"]).conditions();
        let none = HeaderMap::new();
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", "14".parse().unwrap());
        assert!(worth_retrying(&conditions, &TryEnd::Failed(UpstreamError::Connect)));
        assert!(!worth_retrying(&conditions, &TryEnd::Failed(UpstreamError::Reset)), "reset not asked for");
        assert!(worth_retrying(&conditions, &TryEnd::Answered(StatusCode::SERVICE_UNAVAILABLE, &none)));
        assert!(!worth_retrying(&conditions, &TryEnd::Answered(StatusCode::BAD_GATEWAY, &none)));
        assert!(worth_retrying(&conditions, &TryEnd::Answered(StatusCode::OK, &grpc)));
        let classes = retries(&["5xx"]).conditions();
        assert!(worth_retrying(&classes, &TryEnd::Answered(StatusCode::BAD_GATEWAY, &none)));
        assert!(!worth_retrying(&classes, &TryEnd::Answered(StatusCode::NOT_FOUND, &none)));
    }

    #[test]
    fn waits_grow_with_jitter_up_to_the_cap() {
        let config = retries(&["reset"]);
        for _ in 0..50 {
            let first = backoff(&config, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
            let second = backoff(&config, 2);
            assert!(second >= Duration::from_millis(100) && second <= Duration::from_millis(200), "{second:?}");
            let tenth = backoff(&config, 10);
            assert!(tenth <= Duration::from_millis(300), "capped: {tenth:?}");
        }
    }

    #[test]
    fn the_budget_keeps_retries_to_a_share_of_active_requests() {
        let load = Load::default();
        let requests: Vec<_> = (0..10).map(|_| load.admit(100).unwrap()).collect();
        let first = load.retry(20).expect("20% of 10 requests: two retries");
        let second = load.retry(20).expect("the second");
        assert!(load.retry(20).is_none(), "a third is over the budget");
        drop(first);
        assert!(load.retry(20).is_some(), "a finished retry frees its place");
        drop((second, requests));
        let lone = Load::default();
        let _one = lone.admit(100).unwrap();
        assert!(lone.retry(20).is_some(), "one retry is always allowed");
    }

    #[test]
    fn the_breaker_refuses_past_max_requests() {
        let load = Load::default();
        let a = load.admit(2).unwrap();
        let _b = load.admit(2).unwrap();
        assert!(load.admit(2).is_none());
        drop(a);
        assert!(load.admit(2).is_some());
    }
}

//! Whether an endpoint may take requests: passive outlier detection (endpoints that fail real
//! requests in a row are ejected for a growing while) and active health checks (a prober per
//! cluster). Both end in atomics that the balancer reads on every pick.

use super::{Endpoint, Outcome};
use crate::http::ProxyBody;
use crate::metrics::{ClusterLabels, EndpointLabels, HealthCheckLabels, Metrics, Name};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft_config::{HealthCheck, OutlierDetection};

/// An endpoint ejected again and again stays out at most this many `base_ejection`s at a time
/// (with the default 30 s, five minutes), so one bad hour does not keep it out for a day.
const MAX_EJECTION_FACTOR: u64 = 10;

/// What the endpoints of one cluster share for outlier detection.
pub struct ClusterHealth {
    /// The zero of the `ejected_until` clocks below.
    epoch: Instant,
    outlier: Option<OutlierDetection>,
    /// Per endpoint, by index: nanoseconds after `epoch` until which it is ejected; 0 when not.
    ejected_until: Vec<AtomicU64>,
    /// Ejection decisions one at a time, so two endpoints cannot both slip under the cap.
    deciding: Mutex<()>,
    skipped: AtomicU64,
    skipped_metric: Counter,
}

impl ClusterHealth {
    pub fn new(outlier: Option<OutlierDetection>, endpoints: usize, cluster: &Name, metrics: &Metrics) -> Arc<Self> {
        let skipped_metric =
            metrics.ejections_skipped.get_or_create(&ClusterLabels { cluster: cluster.clone() }).clone();
        Self::with_metric(outlier, endpoints, skipped_metric)
    }

    fn with_metric(outlier: Option<OutlierDetection>, endpoints: usize, skipped_metric: Counter) -> Arc<Self> {
        Arc::new(ClusterHealth {
            epoch: Instant::now(),
            outlier,
            ejected_until: (0..endpoints).map(|_| AtomicU64::new(0)).collect(),
            deciding: Mutex::new(()),
            skipped: AtomicU64::new(0),
            skipped_metric,
        })
    }

    /// Ejections outlier detection wanted but did not make, because of `max_ejection_percent`.
    pub fn ejections_skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One endpoint's health: by its active checks, and by outlier detection.
pub struct EndpointHealth {
    cluster: Arc<ClusterHealth>,
    index: usize,
    labels: EndpointLabels,
    healthy: AtomicBool,
    consecutive_5xx: AtomicU32,
    consecutive_connect_failures: AtomicU32,
    ejections: AtomicU64,
    /// Checks passed (or failed) in a row; only the cluster's prober writes them.
    passes: AtomicU32,
    failures: AtomicU32,
    healthy_metric: Gauge,
    ejections_metric: Counter,
    checks_passed: Counter,
    checks_failed: Counter,
}

impl EndpointHealth {
    /// The health of endpoint `index` of the cluster that `cluster` belongs to. Starts healthy.
    pub fn new(cluster: &Arc<ClusterHealth>, index: usize, labels: EndpointLabels, metrics: &Metrics) -> Self {
        let healthy_metric = metrics.endpoint_healthy.get_or_create(&labels).clone();
        healthy_metric.set(1);
        let check = |result| {
            let labels =
                HealthCheckLabels { cluster: labels.cluster.clone(), endpoint: labels.endpoint.clone(), result };
            metrics.health_checks.get_or_create(&labels).clone()
        };
        let (checks_passed, checks_failed) = (check("pass"), check("fail"));
        let ejections_metric = metrics.endpoint_ejections.get_or_create(&labels).clone();
        EndpointHealth {
            cluster: cluster.clone(),
            index,
            labels,
            healthy: AtomicBool::new(true),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_connect_failures: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            passes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            healthy_metric,
            ejections_metric,
            checks_passed,
            checks_failed,
        }
    }

    /// A healthy endpoint alone in a cluster without outlier detection (balancer tests).
    #[cfg(test)]
    pub fn detached(name: &str) -> Self {
        let cluster = ClusterHealth::with_metric(None, 1, Counter::default());
        let labels = EndpointLabels { cluster: Name::new("test"), endpoint: Name::new(name) };
        EndpointHealth::new(&cluster, 0, labels, &Metrics::new())
    }

    /// Healthy by its active checks (always, without them).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Times outlier detection ejected this endpoint.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// How much longer the endpoint stays ejected at `now`; `None` when it is not ejected.
    pub fn ejected_for(&self, now: Instant) -> Option<Duration> {
        let until = self.cluster.ejected_until[self.index].load(Ordering::Relaxed);
        let now = self.cluster.nanos(now);
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Healthy and not ejected at `now`. Two atomic loads in the common case.
    pub fn available(&self, now: impl FnOnce() -> Instant) -> bool {
        if !self.healthy() {
            return false;
        }
        let slot = &self.cluster.ejected_until[self.index];
        let until = slot.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if self.cluster.nanos(now()) < until {
            return false;
        }
        // The ejection is over: the first to notice clears it and says so.
        if slot.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::info!(cluster = %self.labels.cluster, endpoint = %self.labels.endpoint, "endpoint back from ejection");
        }
        true
    }

    /// Counts how a try ended at `now`; ejects the endpoint when a count reaches its threshold.
    pub fn record(&self, outcome: Outcome, now: Instant) {
        let Some(outlier) = &self.cluster.outlier else {
            return;
        };
        let (failures, threshold, reason) = match outcome {
            Outcome::Success => {
                reset(&self.consecutive_5xx);
                reset(&self.consecutive_connect_failures);
                return;
            }
            // A reset or a timeout is a 5xx to the client (502, 504), and the endpoint's doing.
            Outcome::ServerError | Outcome::Reset | Outcome::Timeout => {
                reset(&self.consecutive_connect_failures);
                (&self.consecutive_5xx, outlier.consecutive_5xx, "consecutive 5xx")
            }
            Outcome::ConnectFailure => (
                &self.consecutive_connect_failures,
                outlier.consecutive_connect_failures,
                "consecutive connect failures",
            ),
        };
        if failures.fetch_add(1, Ordering::Relaxed) + 1 >= threshold {
            self.eject(outlier, now, reason);
        }
    }

    fn eject(&self, outlier: &OutlierDetection, now: Instant, reason: &'static str) {
        let cluster = &*self.cluster;
        let _deciding = cluster.deciding.lock().unwrap_or_else(|e| e.into_inner());
        reset(&self.consecutive_5xx);
        reset(&self.consecutive_connect_failures);
        let now_nanos = cluster.nanos(now);
        if cluster.ejected_until[self.index].load(Ordering::Relaxed) > now_nanos {
            return; // Already out: tries that were in flight when it was ejected.
        }
        let ejected = cluster.ejected_until.iter().filter(|u| u.load(Ordering::Relaxed) > now_nanos).count();
        let total = cluster.ejected_until.len();
        if (ejected + 1) * 100 > outlier.max_ejection_percent as usize * total {
            cluster.skipped.fetch_add(1, Ordering::Relaxed);
            cluster.skipped_metric.inc();
            tracing::warn!(cluster = %self.labels.cluster, endpoint = %self.labels.endpoint, reason, ejected, "endpoint not ejected: max_ejection_percent reached");
            return;
        }
        let before = self.ejections.fetch_add(1, Ordering::Relaxed);
        let length = outlier.base_ejection.get().saturating_mul((before + 1).min(MAX_EJECTION_FACTOR) as u32);
        let until = now_nanos.saturating_add(u64::try_from(length.as_nanos()).unwrap_or(u64::MAX)).max(1);
        cluster.ejected_until[self.index].store(until, Ordering::Relaxed);
        self.ejections_metric.inc();
        tracing::warn!(cluster = %self.labels.cluster, endpoint = %self.labels.endpoint, reason, duration = ?length, "endpoint ejected");
    }

    /// Counts one active check; `unhealthy_threshold` failures in a row make the endpoint
    /// unhealthy, `healthy_threshold` passes in a row make it healthy again.
    pub fn observe_check(&self, passed: bool, check: &HealthCheck) {
        let (counter, other, metric) = if passed {
            (&self.passes, &self.failures, &self.checks_passed)
        } else {
            (&self.failures, &self.passes, &self.checks_failed)
        };
        metric.inc();
        other.store(0, Ordering::Relaxed);
        let in_a_row = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let (cluster, endpoint) = (&self.labels.cluster, &self.labels.endpoint);
        if passed && !self.healthy() && in_a_row >= check.healthy_threshold {
            self.healthy.store(true, Ordering::Relaxed);
            self.healthy_metric.set(1);
            tracing::info!(%cluster, %endpoint, passes = in_a_row, "endpoint healthy again");
        } else if !passed && self.healthy() && in_a_row >= check.unhealthy_threshold {
            self.healthy.store(false, Ordering::Relaxed);
            self.healthy_metric.set(0);
            tracing::warn!(%cluster, %endpoint, failures = in_a_row, "endpoint unhealthy: failing its health checks");
        }
    }
}

/// Zeroes a count, without writing (and bouncing the cache line between cores) when it is zero.
fn reset(count: &AtomicU32) {
    if count.load(Ordering::Relaxed) != 0 {
        count.store(0, Ordering::Relaxed);
    }
}

/// The active health checking of one cluster; stops when dropped (with its cluster).
pub struct Prober(tokio::task::JoinHandle<()>);

impl Drop for Prober {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Prober {
    /// Probes every endpoint every `check.interval`, the first time at once.
    pub fn spawn(check: HealthCheck, endpoints: Vec<Arc<Endpoint>>, scheme: http::uri::Scheme) -> Prober {
        Prober(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(check.interval.get());
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let probes = endpoints.iter().map(|endpoint| async {
                    let passed = probe(endpoint, &check, &scheme).await;
                    endpoint.health.observe_check(passed, &check);
                });
                futures_util::future::join_all(probes).await;
            }
        }))
    }
}

/// One check: `GET path` through the endpoint's own pool (so TLS and HTTP/2 are as for
/// requests) answered 2xx within the timeout; without a path, a TCP connection made in time.
async fn probe(endpoint: &Endpoint, check: &HealthCheck, scheme: &http::uri::Scheme) -> bool {
    let timeout = check.timeout.get();
    let (Some(path), Some(client)) = (&check.path, &endpoint.client) else {
        let connect = tokio::net::TcpStream::connect(endpoint.address);
        return matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)));
    };
    let uri =
        http::Uri::builder().scheme(scheme.clone()).authority(endpoint.name.as_str()).path_and_query(path.as_str());
    let Ok(request) = uri.build().and_then(|uri| {
        http::Request::get(uri).header(http::header::USER_AGENT, "weft-health-check").body(ProxyBody::empty())
    }) else {
        return false;
    };
    // One deadline for the response head and for the body after it.
    let deadline = tokio::time::Instant::now() + timeout;
    let exchange = async {
        let response = client.request(request, deadline).await.ok()?;
        let passed = response.status().is_success();
        // Read the (small) body so the connection goes back to the pool.
        let _ = response.into_body().collect().await;
        Some(passed)
    };
    matches!(tokio::time::timeout_at(deadline, exchange).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests;

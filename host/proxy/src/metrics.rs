//! The one metrics registry: every `weft_*` series the proxy exports on the admin `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::fmt::Write;
use std::sync::Arc;

/// A cheaply cloned name (listener, cluster) used as a metric label without allocating.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Name(pub Arc<str>);

impl Name {
    pub fn new(name: &str) -> Self {
        Name(Arc::from(name))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: Name,
    pub cluster: Name,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: Name,
    pub cluster: Name,
}

/// One listener's request metrics toward one cluster (or toward none, for requests answered
/// before routing), resolved when the config is loaded: a request then counts itself without
/// hashing label sets into the families.
pub struct RouteMetrics {
    labels: RouteLabels,
    requests_by_code: std::sync::RwLock<Vec<(u16, Counter)>>,
    requests: Family<RequestLabels, Counter>,
    pub duration: Histogram,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
}

impl RouteMetrics {
    pub fn new(metrics: &Metrics, listener: &Name, cluster: &Name) -> RouteMetrics {
        let labels = RouteLabels { listener: listener.clone(), cluster: cluster.clone() };
        RouteMetrics {
            duration: metrics.request_duration.get_or_create(&labels).clone(),
            request_bytes: metrics.request_bytes.get_or_create(&labels).clone(),
            response_bytes: metrics.response_bytes.get_or_create(&labels).clone(),
            requests: metrics.requests.clone(),
            requests_by_code: Default::default(),
            labels,
        }
    }

    /// Counts a request answered with `code`.
    pub fn count(&self, code: u16) {
        let known = self.requests_by_code.read().unwrap_or_else(|e| e.into_inner());
        if let Some((_, counter)) = known.iter().find(|(c, _)| *c == code) {
            counter.inc();
            return;
        }
        drop(known);
        let labels =
            RequestLabels { listener: self.labels.listener.clone(), cluster: self.labels.cluster.clone(), code };
        let counter = self.requests.get_or_create(&labels).clone();
        counter.inc();
        let mut known = self.requests_by_code.write().unwrap_or_else(|e| e.into_inner());
        if !known.iter().any(|(c, _)| *c == code) {
            known.push((code, counter));
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub listener: Name,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub cluster: Name,
    /// As written in the config (`web-1.internal:8080`).
    pub endpoint: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthCheckLabels {
    pub cluster: Name,
    pub endpoint: Name,
    /// `pass` or `fail`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub cluster: Name,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterCalloutLabels {
    pub filter: Name,
    pub cluster: Name,
    /// `answered` (any response, whatever its status) or `failed` (connect, reset, timeout).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterFailureLabels {
    pub filter: Name,
    /// `trap`, `deadline` or `start`.
    pub reason: &'static str,
}

/// A metric a filter defined (`proxy_define_metric`), by the filter and the name it gave.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterMetricLabels {
    pub filter: Name,
    pub name: Name,
}

/// A toxic's kind on a tcp listener (or Toxiproxy proxy).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToxicLabels {
    pub listener: Name,
    /// The toxic's type (`latency`, `reset_peer`, …).
    pub toxic: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// All of the proxy's metrics. Outlives config reloads, so counters keep counting.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: HistogramFamily<RouteLabels>,
    pub request_bytes: Family<RouteLabels, Counter>,
    pub response_bytes: Family<RouteLabels, Counter>,
    pub local_replies: Family<ListenerLabels, Counter>,
    pub downstream_active: Family<ListenerLabels, Gauge>,
    pub downstream_parked: Family<ListenerLabels, Gauge>,
    pub downstream_total: Family<ListenerLabels, Counter>,
    pub downstream_rejected: Family<RejectLabels, Counter>,
    pub upstream_active: Family<ClusterLabels, Gauge>,
    pub upstream_created: Family<ClusterLabels, Counter>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    pub endpoint_ejections: Family<EndpointLabels, Counter>,
    pub ejections_skipped: Family<ClusterLabels, Counter>,
    pub health_checks: Family<HealthCheckLabels, Counter>,
    /// Retries by result: `sent`, or `budget_exhausted` (a retry the budget did not allow).
    pub upstream_retries: Family<UpstreamErrorLabels, Counter>,
    /// Requests refused by a cluster's circuit breaker (503 `overloaded`).
    pub upstream_overloaded: Family<ClusterLabels, Counter>,
    /// Requests waiting now for a connection of an HTTP/1.1 cluster (`circuit_breaker.max_pending`).
    pub upstream_pending: Family<ClusterLabels, Gauge>,
    /// Requests refused because the cluster's `max_pending` were waiting already.
    pub upstream_pending_overflow: Family<ClusterLabels, Counter>,
    pub tcp_bytes_received: Family<ListenerLabels, Counter>,
    pub tcp_bytes_sent: Family<ListenerLabels, Counter>,
    /// Toxics in force per tcp listener (or Toxiproxy proxy).
    pub toxics_active: Family<ListenerLabels, Gauge>,
    /// Connections a toxic acted on (its toxicity roll said so), by listener and toxic type.
    pub toxic_connections: Family<ToxicLabels, Counter>,
    /// Toxiproxy proxies, by whether they are enabled (`true`/`false`).
    pub toxiproxy_proxies: Family<ResultLabels, Gauge>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_version: Gauge,
    /// When the proxy's mesh certificate expires, Unix seconds (0: no mesh identity).
    pub identity_cert_expiry: Gauge,
    /// Mesh certificate renewals by result (`ok`, `failed`).
    pub identity_renewals: Family<ResultLabels, Counter>,
    pub filter_failures: Family<FilterFailureLabels, Counter>,
    pub filter_callouts: Family<FilterCalloutLabels, Counter>,
    pub filter_counters: Family<FilterMetricLabels, Counter>,
    pub filter_gauges: Family<FilterMetricLabels, Gauge>,
    pub filter_histograms: HistogramFamily<FilterMetricLabels>,
}

fn duration_histogram() -> Histogram {
    // 100µs .. ~26s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

fn filter_histogram() -> Histogram {
    // Filters record plain numbers of their own choosing: 1 .. ~1M, doubling.
    Histogram::new(exponential_buckets(1.0, 2.0, 21))
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("weft");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            local_replies: Family::default(),
            downstream_active: Family::default(),
            downstream_parked: Family::default(),
            downstream_total: Family::default(),
            downstream_rejected: Family::default(),
            upstream_active: Family::default(),
            upstream_created: Family::default(),
            upstream_errors: Family::default(),
            endpoint_healthy: Family::default(),
            endpoint_ejections: Family::default(),
            ejections_skipped: Family::default(),
            health_checks: Family::default(),
            upstream_retries: Family::default(),
            upstream_overloaded: Family::default(),
            upstream_pending: Family::default(),
            upstream_pending_overflow: Family::default(),
            tcp_bytes_received: Family::default(),
            tcp_bytes_sent: Family::default(),
            toxics_active: Family::default(),
            toxic_connections: Family::default(),
            toxiproxy_proxies: Family::default(),
            config_reloads: Family::default(),
            config_version: Gauge::default(),
            identity_cert_expiry: Gauge::default(),
            identity_renewals: Family::default(),
            filter_failures: Family::default(),
            filter_callouts: Family::default(),
            filter_counters: Family::default(),
            filter_gauges: Family::default(),
            filter_histograms: Family::new_with_constructor(filter_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "HTTP requests answered, by listener, cluster and status code",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response body",
            m.request_duration.clone(),
        );
        registry.register("request_bytes", "Request body bytes received from clients", m.request_bytes.clone());
        registry.register("response_bytes", "Response body bytes sent to clients", m.response_bytes.clone());
        registry.register(
            "local_replies",
            "Requests answered by the proxy itself (errors, no route)",
            m.local_replies.clone(),
        );
        registry.register("downstream_connections_active", "Client connections open now", m.downstream_active.clone());
        registry.register(
            "downstream_connections_parked",
            "Idle HTTP/1.1 client connections holding no buffers",
            m.downstream_parked.clone(),
        );
        registry.register("downstream_connections", "Client connections accepted", m.downstream_total.clone());
        registry.register(
            "downstream_connections_rejected",
            "Client connections closed at accept (limit) or in the TLS handshake",
            m.downstream_rejected.clone(),
        );
        registry.register(
            "upstream_connections_active",
            "Connections to upstream endpoints open now",
            m.upstream_active.clone(),
        );
        registry.register(
            "upstream_connections_created",
            "Connections made to upstream endpoints",
            m.upstream_created.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures by reason (connect, reset, timeout)",
            m.upstream_errors.clone(),
        );
        registry.register(
            "upstream_retries",
            "Retries of failed upstream tries, by result (sent, budget_exhausted)",
            m.upstream_retries.clone(),
        );
        registry.register(
            "upstream_overloaded",
            "Requests refused by the cluster's circuit breaker (503 overloaded)",
            m.upstream_overloaded.clone(),
        );
        registry.register(
            "upstream_pending",
            "Requests waiting for a connection of the cluster now (past max_connections busy)",
            m.upstream_pending.clone(),
        );
        registry.register(
            "upstream_pending_overflow",
            "Requests refused because the cluster's max_pending were waiting already (also in upstream_overloaded)",
            m.upstream_pending_overflow.clone(),
        );
        registry.register(
            "endpoint_healthy",
            "1 while an endpoint passes its active health checks (or has none), 0 while it fails them",
            m.endpoint_healthy.clone(),
        );
        registry.register(
            "endpoint_ejections",
            "Times outlier detection ejected an endpoint",
            m.endpoint_ejections.clone(),
        );
        registry.register(
            "outlier_ejections_skipped",
            "Ejections outlier detection wanted but max_ejection_percent did not allow",
            m.ejections_skipped.clone(),
        );
        registry.register(
            "health_checks",
            "Active health checks by endpoint and result (pass, fail)",
            m.health_checks.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "Bytes received from clients on tcp listeners",
            m.tcp_bytes_received.clone(),
        );
        registry.register("tcp_sent_bytes", "Bytes sent to clients on tcp listeners", m.tcp_bytes_sent.clone());
        registry.register(
            "toxics_active",
            "L4 toxics in force per tcp listener or Toxiproxy proxy",
            m.toxics_active.clone(),
        );
        registry.register(
            "toxic_connections",
            "Connections an L4 toxic acted on (after its toxicity roll), by listener and toxic type",
            m.toxic_connections.clone(),
        );
        registry.register(
            "toxiproxy_proxies",
            "Proxies made through the Toxiproxy API, by whether they are enabled (result=enabled|disabled)",
            m.toxiproxy_proxies.clone(),
        );
        registry.register("config_reloads", "Config loads by result (ok, rejected)", m.config_reloads.clone());
        registry.register("config_version", "Version number of the config in force", m.config_version.clone());
        registry.register(
            "identity_cert_expiry_seconds",
            "When the proxy's mesh certificate expires, Unix seconds (0: no mesh identity)",
            m.identity_cert_expiry.clone(),
        );
        registry.register(
            "identity_renewals",
            "Mesh certificate renewals by result (ok, failed)",
            m.identity_renewals.clone(),
        );
        registry.register(
            "filter_failures",
            "Filter calls that failed (trap, deadline) or instances that could not start; each replaced the instance",
            m.filter_failures.clone(),
        );
        registry.register(
            "filter_callouts",
            "HTTP and gRPC callouts filters made, by cluster and whether an answer came back",
            m.filter_callouts.clone(),
        );
        registry.register(
            "filter_counter",
            "Counters defined by filters (proxy_define_metric)",
            m.filter_counters.clone(),
        );
        registry.register("filter_gauge", "Gauges defined by filters (proxy_define_metric)", m.filter_gauges.clone());
        registry.register(
            "filter_histogram",
            "Histograms defined by filters (proxy_define_metric)",
            m.filter_histograms.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

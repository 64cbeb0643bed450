//! The config resources, exactly as users write them (YAML or JSON). Unknown fields are errors.

use crate::units::{ByteSize, Duration};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A whole config: what a static file holds and what `weft apply` sends.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where traffic comes in.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Where traffic goes.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// The Wasm filters listeners may run, by name.
    #[serde(default)]
    pub filters: Vec<Filter>,
}

/// A socket the proxy accepts connections on.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name; labels metrics and logs.
    pub name: String,
    /// `ip:port` to bind (`127.0.0.1:8080`, `[::1]:8443`, port 0 picks a free one).
    pub address: String,
    /// What is spoken on the socket.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// TLS termination: required for `https` (or `mtls`), optional for `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// `mesh`, instead of `tls`: the proxy's own mesh identity, and clients must show a mesh
    /// certificate (their SPIFFE ID becomes `source.principal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// The ordered filter chain, by filter name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// The default upstream cluster (for `tcp`, the upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Protection against too many or abusive clients.
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Write one JSON access-log line per request (or connection, for `tcp`) to stdout.
    #[serde(default)]
    pub access_log: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port.
    #[default]
    Http,
    /// TLS with ALPN `h2` and `http/1.1`.
    Https,
    /// Bytes passed through to the listener's cluster.
    Tcp,
}

/// Mutual TLS by the mesh: the proxy's identity from the control plane's CA, peers verified
/// against the mesh's trust bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mtls {
    Mesh,
}

/// Certificates a listener presents, and the CA its clients must be signed by (mTLS).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// Per-listener limits.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    /// Connections open at once; further clients are closed at accept.
    pub max_connections: u32,
    /// Request headers allowed per request (431 beyond).
    pub max_request_headers: u32,
    /// Total size of the request head (431 beyond).
    pub max_request_header_size: ByteSize,
    /// Time a client has to send a complete request head (HTTP/1.1) before it is cut off.
    pub header_read_timeout: Duration,
    /// Time a TLS client has to finish its handshake.
    pub tls_handshake_timeout: Duration,
    /// How much of a body filters may hold back (a filter that pauses on a body has it buffered);
    /// a request body beyond it gets 413, a response body is cut off.
    pub max_buffered_body: ByteSize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 10_000,
            max_request_headers: 100,
            max_request_header_size: ByteSize::kib(60),
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            max_buffered_body: ByteSize::mib(1),
        }
    }
}

/// A named group of upstream endpoints and how to talk to them.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    /// `host:port` each; DNS names are resolved when the config is loaded.
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub lb: LbPolicy,
    /// For `ring_hash`: `header:NAME` or `source_ip` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    /// Talk TLS to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    /// `mesh`, instead of `tls`: mTLS with the proxy's mesh identity; the endpoints must show a
    /// certificate of the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// With `mtls: mesh`: the SPIFFE IDs the endpoints may have; empty: any identity of the mesh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Time to establish a connection (TCP and TLS).
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// Time from sending a request to receiving the response head (504 beyond).
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout: Duration,
    /// An idle pooled connection is closed after this long.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// Idle keep-alive connections kept per endpoint; more are closed when they fall idle.
    #[serde(default = "defaults::max_idle_connections")]
    pub max_idle_connections: u32,
    /// Retrying requests that failed in ways a second try may fix; none: no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Limits past which requests are refused with 503 `overloaded` instead of queued.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    /// Probing each endpoint; failing ones take no requests until they pass again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Ejecting endpoints that fail real requests, for a growing while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// `retries:` of a cluster.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Tries after the first (so `attempts: 2` means up to three tries).
    #[serde(default = "defaults::retry_attempts")]
    pub attempts: u32,
    /// What is retried: `connect-failure`, `reset`, `timeout` (a try's `per_try_timeout`),
    /// `grpc-unavailable`, and HTTP statuses as text (`"503"`) or classes (`"5xx"`).
    #[serde(default = "defaults::retry_on")]
    pub retry_on: Vec<String>,
    /// One try's limit; the cluster's `request_timeout` still bounds the whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// The wait before the first retry, doubled for each further one (with jitter), up to `max_backoff`.
    #[serde(default = "defaults::retry_backoff")]
    pub backoff: Duration,
    #[serde(default = "defaults::retry_max_backoff")]
    pub max_backoff: Duration,
    /// Retries in flight may be at most this share of the cluster's active requests (at least
    /// one is always allowed), so that retries cannot multiply an outage.
    #[serde(default = "defaults::retry_budget_percent")]
    pub budget_percent: u32,
    /// A request body is kept for a retry up to this size; larger ones are not retried once sent.
    #[serde(default = "defaults::retry_body_limit")]
    pub max_replay_body: ByteSize,
}

/// One `retry_on` condition, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    ConnectFailure,
    Reset,
    Timeout,
    GrpcUnavailable,
    Status(u16),
    /// `5xx`: the hundreds digit.
    StatusClass(u16),
}

impl RetryOn {
    pub fn parse(text: &str) -> Option<RetryOn> {
        Some(match text {
            "connect-failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "timeout" => RetryOn::Timeout,
            "grpc-unavailable" => RetryOn::GrpcUnavailable,
            class if class.len() == 3 && class.ends_with("xx") => {
                let hundreds = class[..1].parse::<u16>().ok().filter(|h| (1..=5).contains(h))?;
                RetryOn::StatusClass(hundreds)
            }
            status => RetryOn::Status(status.parse().ok().filter(|s| (100..=599).contains(s))?),
        })
    }
}

impl Retries {
    /// The parsed `retry_on`; validation guarantees each parses.
    pub fn conditions(&self) -> Vec<RetryOn> {
        self.retry_on.iter().filter_map(|c| RetryOn::parse(c)).collect()
    }
}

/// `circuit_breaker:` of a cluster.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Connections open to the cluster's endpoints at once.
    #[serde(default = "defaults::breaker_limit")]
    pub max_connections: u32,
    /// Requests waiting at once for a connection of an HTTP/1.1 cluster whose `max_connections`
    /// are busy (0: none wait, they are answered 503 `overloaded` at once).
    #[serde(default = "defaults::breaker_limit")]
    pub max_pending: u32,
    /// Requests in flight to the cluster at once.
    #[serde(default = "defaults::breaker_limit")]
    pub max_requests: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        let limit = defaults::breaker_limit();
        CircuitBreaker { max_connections: limit, max_pending: limit, max_requests: limit }
    }
}

/// `health_check:` of a cluster: an HTTP `GET path` (healthy on a 2xx) or, without `path`, a TCP
/// connect, every `interval`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default = "defaults::health_interval")]
    pub interval: Duration,
    #[serde(default = "defaults::health_timeout")]
    pub timeout: Duration,
    /// Failed checks in a row that make a healthy endpoint unhealthy.
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that make an unhealthy endpoint healthy again.
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
}

/// `outlier_detection:` of a cluster.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// 5xx answers in a row that eject an endpoint.
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_5xx: u32,
    /// Connection failures in a row that eject an endpoint.
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_connect_failures: u32,
    /// The first ejection's length; each further ejection of the same endpoint lasts one more.
    #[serde(default = "defaults::base_ejection")]
    pub base_ejection: Duration,
    /// Never more than this share of the cluster's endpoints ejected at once.
    #[serde(default = "defaults::max_ejection_percent")]
    pub max_ejection_percent: u32,
}

mod defaults {
    use crate::units::Duration;
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(15)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn max_idle_connections() -> u32 {
        256
    }
    pub fn retry_attempts() -> u32 {
        2
    }
    pub fn retry_on() -> Vec<String> {
        vec!["connect-failure".into(), "reset".into()]
    }
    pub fn retry_backoff() -> Duration {
        Duration::from_millis(25)
    }
    pub fn retry_max_backoff() -> Duration {
        Duration::from_millis(250)
    }
    pub fn retry_budget_percent() -> u32 {
        20
    }
    pub fn retry_body_limit() -> crate::units::ByteSize {
        crate::units::ByteSize(64 * 1024)
    }
    pub fn breaker_limit() -> u32 {
        1024
    }
    pub fn health_interval() -> Duration {
        Duration::from_secs(5)
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn unhealthy_threshold() -> u32 {
        3
    }
    pub fn healthy_threshold() -> u32 {
        2
    }
    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn base_ejection() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_ejection_percent() -> u32 {
        50
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// h2c without TLS; with `tls`, HTTP/2 negotiated by ALPN.
    Http2,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    /// Power of two choices on requests in flight.
    LeastRequest,
    Random,
    /// Consistent hashing on `hash_on`.
    RingHash,
}

/// TLS towards a cluster's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// CA to verify the endpoints with (PEM); the public web roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate for mTLS (PEM), with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// SNI and the name verified in the endpoint's certificate; the endpoint host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// A Wasm filter a listener may run.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub name: String,
    /// A file path, or `sha256:<hex>` for a module pushed to the control plane.
    pub module: String,
    /// The Proxy-Wasm root id, when one module holds several filters.
    #[serde(default)]
    pub root_id: String,
    /// Any value; handed to `proxy_on_configure` as JSON bytes.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    #[serde(default)]
    pub limits: FilterLimits,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// A broken filter answers 503 `filter failed`.
    #[default]
    FailClosed,
    /// A broken filter is skipped.
    FailOpen,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterLimits {
    /// Linear memory one instance may grow to.
    pub memory: ByteSize,
    /// Wall time one call into the filter may take.
    pub time_per_call: Duration,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits { memory: ByteSize::mib(32), time_per_call: Duration::from_millis(20) }
    }
}

/// What a `ring_hash` cluster hashes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value (lower-case name); requests without it hash on the source IP.
    Header(String),
    SourceIp,
}

impl HashOn {
    pub fn parse(text: &str) -> Result<HashOn, String> {
        match text.split_once(':') {
            Some(("header", name)) if !name.trim().is_empty() => Ok(HashOn::Header(name.trim().to_ascii_lowercase())),
            None if text == "source_ip" => Ok(HashOn::SourceIp),
            _ => Err(format!("invalid {text:?}: expected header:NAME or source_ip")),
        }
    }
}

impl Cluster {
    /// The parsed `hash_on`, `source_ip` when unset. Validation guarantees it parses.
    pub fn hash_on(&self) -> HashOn {
        self.hash_on.as_deref().and_then(|t| HashOn::parse(t).ok()).unwrap_or(HashOn::SourceIp)
    }
}

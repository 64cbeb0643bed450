//! Clusters: named groups of endpoints, each endpoint with its own connection pool, and the
//! balancer that picks one per request.

mod balancer;
mod health;

use balancer::Balancer;
pub use balancer::{hash_bytes, hash_ip};
use health::{ClusterHealth, EndpointHealth, Prober};

use crate::metrics::{ClusterLabels, EndpointLabels, Metrics, Name};
use crate::tls::mesh::MeshIdentity;
use crate::upstream::{ConnectionBudget, ConnectionSlots, Connector, Http1Pool, Turn, UpstreamClient};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_config::{FieldError, HashOn, UpstreamProtocol};

/// One upstream address and its pool of connections.
pub struct Endpoint {
    /// As written in the config (`web-1.internal:8080`); hashed by the ring.
    pub name: String,
    pub address: SocketAddr,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// `None` only in unit tests of the balancers.
    pub client: Option<UpstreamClient>,
    pub connector: Option<Connector>,
    health: EndpointHealth,
}

/// How one try of a request at an endpoint ended, as outlier detection counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An answer below 500.
    Success,
    /// A 5xx answer from the endpoint.
    ServerError,
    /// No connection could be made.
    ConnectFailure,
    /// The connection was reset or closed before the answer.
    Reset,
    /// No answer within the try's time limit.
    Timeout,
}

/// Counts a request as in flight on its endpoint until dropped, and holds its turn on the wire
/// (HTTP/1.1 clusters) until then.
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    turn: Option<Turn>,
}

impl InFlight {
    /// Keeps the request's turn until the request is over.
    pub fn hold(&mut self, turn: Turn) {
        self.turn = Some(turn);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Records how a try at this endpoint ended (for passive outlier detection): enough failures
    /// in a row eject the endpoint for a while.
    pub fn record(&self, outcome: Outcome) {
        self.health.record(outcome, Instant::now());
    }

    /// Whether the endpoint may take requests: healthy by its checks and not ejected. Cheap
    /// (atomics); it is asked on every pick.
    pub fn available(&self) -> bool {
        self.health.available(Instant::now)
    }

    /// Healthy by its active checks (always, when the cluster has none).
    pub fn healthy(&self) -> bool {
        self.health.healthy()
    }

    /// How much longer outlier detection keeps the endpoint out; `None` when it is not ejected.
    pub fn ejected_for(&self) -> Option<Duration> {
        self.health.ejected_for(Instant::now())
    }

    /// Times outlier detection ejected the endpoint (since this config was loaded).
    pub fn ejections(&self) -> u64 {
        self.health.ejections()
    }

    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight { endpoint: self.clone(), turn: None }
    }

    #[cfg(test)]
    pub fn for_test(name: &str) -> Endpoint {
        Endpoint {
            name: name.into(),
            address: "127.0.0.1:1".parse().unwrap(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            client: None,
            connector: None,
            health: EndpointHealth::detached(name),
        }
    }
}

pub struct Cluster {
    pub name: Name,
    pub config: weft_config::Cluster,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub hash_on: HashOn,
    /// `https` when the endpoints speak TLS; it is the `:scheme` upstream HTTP/2 sees.
    pub scheme: http::uri::Scheme,
    /// Requests and retries in flight, for the circuit breaker and the retry budget.
    pub load: crate::upstream::retry::Load,
    /// Turns on the wire past `max_connections` busy (`max_pending`); HTTP/1.1 clusters only,
    /// as an HTTP/2 connection carries many requests at once.
    pub slots: Option<ConnectionSlots>,
    balancer: Balancer,
    health: Arc<ClusterHealth>,
    /// Probes the endpoints while the cluster lives (with `health_check`).
    _prober: Option<Prober>,
}

impl Cluster {
    /// Resolves the endpoints and prepares their pools. No connection is made yet.
    /// `mesh` is the proxy's mesh identity, for a cluster with `mtls: mesh`.
    pub async fn build(
        config: &weft_config::Cluster,
        at: &str,
        metrics: &Arc<Metrics>,
        mesh: Option<&Arc<MeshIdentity>>,
    ) -> Result<Cluster, FieldError> {
        let name = Name::new(&config.name);
        let labels = ClusterLabels { cluster: name.clone() };
        let breaker = &config.circuit_breaker;
        let budget =
            ConnectionBudget::new(metrics.upstream_active.get_or_create(&labels).clone(), breaker.max_connections);
        let slots = (config.protocol == UpstreamProtocol::Http1).then(|| {
            ConnectionSlots::new(
                breaker.max_connections,
                breaker.max_pending,
                metrics.upstream_pending.get_or_create(&labels).clone(),
                metrics.upstream_pending_overflow.get_or_create(&labels).clone(),
            )
        });
        let created = metrics.upstream_created.get_or_create(&labels).clone();
        let health = ClusterHealth::new(config.outlier_detection.clone(), config.endpoints.len(), &name, metrics);
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for (j, written) in config.endpoints.iter().enumerate() {
            let field = format!("{at}.endpoints[{j}]");
            let address = resolve(written).await.map_err(|reason| FieldError::new(&field, reason))?;
            let host = written
                .rsplit_once(':')
                .map_or(written.as_str(), |(h, _)| h.trim_start_matches('[').trim_end_matches(']'));
            let tls = crate::tls::cluster_client_config(config, at, host, mesh)?;
            let secure = tls.is_some();
            let connector = Connector::new(address, tls, config.connect_timeout.get(), budget.clone(), created.clone());
            let (max_idle, idle_timeout) = (config.max_idle_connections as usize, config.idle_timeout.get());
            let client = match config.protocol {
                UpstreamProtocol::Http1 => {
                    UpstreamClient::Http1(Http1Pool::new(connector.clone(), max_idle, idle_timeout))
                }
                UpstreamProtocol::Http2 => UpstreamClient::Http2(Box::new(
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(idle_timeout)
                        .pool_max_idle_per_host(max_idle)
                        .pool_timer(TokioTimer::new())
                        .timer(TokioTimer::new())
                        .http2_only(!secure)
                        .build(connector.clone()),
                )),
            };
            endpoints.push(Arc::new(Endpoint {
                name: written.clone(),
                address,
                in_flight: AtomicUsize::new(0),
                requests: AtomicU64::new(0),
                client: Some(client),
                connector: Some(connector),
                health: EndpointHealth::new(
                    &health,
                    j,
                    EndpointLabels { cluster: name.clone(), endpoint: Name::new(written) },
                    metrics,
                ),
            }));
        }
        let balancer = Balancer::new(config.lb, &endpoints);
        let secure = config.tls.is_some() || config.mtls.is_some();
        let scheme = if secure { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP };
        // The prober ends when the cluster is dropped (a reload replaced it), so none leak.
        let prober = config.health_check.clone().map(|check| Prober::spawn(check, endpoints.clone(), scheme.clone()));
        Ok(Cluster {
            name,
            config: config.clone(),
            endpoints,
            hash_on: config.hash_on(),
            scheme,
            load: Default::default(),
            slots,
            balancer,
            health,
            _prober: prober,
        })
    }

    /// The endpoint for a request whose hash key (ring_hash only) is `hash`.
    pub fn pick(&self, hash: u64) -> &Arc<Endpoint> {
        &self.endpoints[self.balancer.pick(&self.endpoints, hash)]
    }

    /// An available endpoint for a request, other than those in `avoid` (endpoints a retry
    /// already tried) when there is one; `None` when no endpoint is available.
    pub fn pick_for(&self, hash: u64, avoid: &[Arc<Endpoint>]) -> Option<&Arc<Endpoint>> {
        let usable = |e: &Arc<Endpoint>| e.available() && !avoid.iter().any(|a| Arc::ptr_eq(a, e));
        if let Balancer::RingHash(ring) = &self.balancer {
            // Walk on along the ring, so an endpoint's keys do not all land on one other.
            if let Some(index) = ring.lookup_where(hash, |i| usable(&self.endpoints[i])) {
                return Some(&self.endpoints[index]);
            }
        }
        let first = self.pick(hash);
        if usable(first) {
            return Some(first);
        }
        let others = self.endpoints.iter().filter(|e| e.available());
        let fresh = others.clone().find(|e| !avoid.iter().any(|a| Arc::ptr_eq(a, e)));
        fresh.or_else(|| others.min_by_key(|e| e.in_flight()))
    }

    /// Ejections outlier detection wanted but `max_ejection_percent` did not allow.
    pub fn ejections_skipped(&self) -> u64 {
        self.health.ejections_skipped()
    }

    pub fn uses_hash(&self) -> bool {
        matches!(self.balancer, Balancer::RingHash(_))
    }
}

/// `host:port` to a socket address; a name resolves to its first address.
async fn resolve(written: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = written.parse() {
        return Ok(address);
    }
    let mut addresses =
        tokio::net::lookup_host(written).await.map_err(|e| format!("cannot resolve {written:?}: {e}"))?;
    addresses.next().ok_or_else(|| format!("{written:?} resolves to no address"))
}

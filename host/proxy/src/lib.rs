//! weft's data plane. Modules in the order a request meets them:
//! `listener` (bind, accept, drain) → `tls` (handshake, ALPN, peer identity) → `http` (limits,
//! proxy headers, local replies) → `chain` (filters) → `cluster` (endpoints, balancers) →
//! `upstream` (connectors, pools, timeouts); `tcp` is the L4 path; `admin` serves operators.
//!
//! [`Proxy`] owns the running listeners and the config [`snapshot::Snapshot`] in force, and swaps
//! in a new one atomically: requests in flight finish on the snapshot they started with.

pub mod admin;
mod callout;
pub mod chain;
pub mod cluster;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod probes;
pub mod snapshot;
pub mod tcp;
pub mod tls;
pub mod toxiproxy;
pub mod upstream;

use arc_swap::ArcSwap;
use chain::FilterHost;
use listener::RunningListener;
use metrics::{Metrics, ResultLabels};
use snapshot::Snapshot;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
pub use tcp::toxic::{Stream, Toxic, ToxicError, ToxicKind};
pub use tcp::toxics::Toxics;
use tls::mesh::MeshIdentity;
use weft_config::{Config, FieldError, ListenerProtocol};

/// State every connection and request reaches: the snapshot in force and the metrics.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    /// What the chaos experiments running here measure.
    pub probes: probes::Probes,
    /// The L4 toxics of every tcp listener.
    pub toxics: Arc<Toxics>,
    next_connection: AtomicU64,
}

impl Shared {
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

/// A config the proxy refused; the config in force is unchanged.
#[derive(Debug, thiserror::Error)]
#[error("{}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct LoadError {
    pub errors: Vec<FieldError>,
}

impl From<Vec<FieldError>> for LoadError {
    fn from(errors: Vec<FieldError>) -> Self {
        LoadError { errors }
    }
}

pub struct Proxy {
    shared: Arc<Shared>,
    /// Running listeners by name; the lock also serialises loads.
    listeners: tokio::sync::Mutex<HashMap<String, RunningListener>>,
    /// Bound address per listener, readable without the lock (admin, `weft up`).
    bound: std::sync::RwLock<HashMap<String, SocketAddr>>,
    /// How long removed listeners may drain their connections.
    drain_timeout: Duration,
    /// Builds `filters:`; without one, a config with filters is refused.
    filter_loader: Option<Arc<dyn chain::FilterLoader>>,
    /// What filters get from the proxy: its metrics and callouts to its clusters.
    filter_host: FilterHost,
    /// The proxies made through the Toxiproxy API, beside the config's listeners.
    toxiproxy: toxiproxy::ToxiproxyProxies,
    /// Where the Toxiproxy API listens, once it does.
    toxiproxy_api: std::sync::OnceLock<SocketAddr>,
    /// The proxy's mesh identity, once [`Proxy::enable_mesh`] made one.
    mesh: std::sync::OnceLock<Arc<MeshIdentity>>,
}

impl Proxy {
    /// A proxy with no config: it listens nowhere and is not ready until [`Proxy::apply`].
    pub async fn new(drain_timeout: Duration, filter_loader: Option<Arc<dyn chain::FilterLoader>>) -> Arc<Proxy> {
        let metrics = Metrics::new();
        let nowhere = Arc::new(callout::ClusterCallouts { shared: std::sync::Weak::new() });
        let empty = Snapshot::build(
            Config::default(),
            0,
            &FilterHost { metrics: metrics.clone(), callouts: nowhere },
            None,
            None,
        )
        .await
        .unwrap_or_else(|_| unreachable!("an empty config always builds"));
        let toxics = Toxics::new(metrics.clone());
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(empty),
            metrics,
            probes: Default::default(),
            toxics,
            next_connection: AtomicU64::new(1),
        });
        let callouts = Arc::new(callout::ClusterCallouts { shared: Arc::downgrade(&shared) });
        Arc::new(Proxy {
            filter_host: FilterHost { metrics: shared.metrics.clone(), callouts },
            toxiproxy: toxiproxy::ToxiproxyProxies::new(shared.clone()),
            toxiproxy_api: Default::default(),
            shared,
            listeners: Default::default(),
            bound: Default::default(),
            drain_timeout,
            filter_loader,
            mesh: std::sync::OnceLock::new(),
        })
    }

    /// Gives the proxy a mesh identity in `trust_domain` (once; later calls return the first),
    /// for `mtls: mesh` listeners and clusters. It has no certificate until its owner sets one.
    pub fn enable_mesh(&self, trust_domain: &str) -> Arc<MeshIdentity> {
        self.mesh.get_or_init(|| MeshIdentity::new(trust_domain, self.shared.metrics.clone())).clone()
    }

    /// The mesh identity, when the proxy has one.
    pub fn mesh(&self) -> Option<&Arc<MeshIdentity>> {
        self.mesh.get()
    }

    /// Loads `config` whole or not at all. Returns the new version. On error nothing changed.
    pub async fn apply(&self, config: Config) -> Result<u64, LoadError> {
        let result = self.apply_inner(config).await;
        let label = ResultLabels { result: if result.is_ok() { "ok" } else { "rejected" } };
        self.shared.metrics.config_reloads.get_or_create(&label).inc();
        result
    }

    /// Counts a config refused before it reached [`Proxy::apply`] (it did not parse or validate).
    pub fn count_rejected_config(&self) {
        self.shared.metrics.config_reloads.get_or_create(&ResultLabels { result: "rejected" }).inc();
    }

    async fn apply_inner(&self, config: Config) -> Result<u64, LoadError> {
        let mut running = self.listeners.lock().await;
        let version = self.shared.snapshot.load().version + 1;
        // A Toxiproxy proxy's name stays its own: its toxics are kept under it.
        let taken: Vec<FieldError> = config
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| self.toxiproxy.has(&l.name))
            .map(|(i, l)| {
                FieldError::new(
                    format!("listeners[{i}].name"),
                    format!("{:?} is the name of a proxy made through the Toxiproxy API", l.name),
                )
            })
            .collect();
        if !taken.is_empty() {
            return Err(taken.into());
        }
        let snapshot = Arc::new(
            Snapshot::build(config, version, &self.filter_host, self.filter_loader.as_ref(), self.mesh.get()).await?,
        );

        // Bind what is new before touching anything, so a port in use refuses the config whole.
        let mut fresh = HashMap::new();
        let mut errors = Vec::new();
        for (i, listener) in snapshot.config.listeners.iter().enumerate() {
            if running.get(&listener.name).is_some_and(|r| r.address == listener.address) {
                continue;
            }
            // Validation guarantees the address parses.
            let address: SocketAddr = listener
                .address
                .parse()
                .map_err(|_| vec![FieldError::new(format!("listeners[{i}].address"), "invalid")])?;
            match listener::bind(address) {
                Ok(socket) => {
                    fresh.insert(listener.name.clone(), (listener.address.clone(), socket));
                }
                Err(e) => errors
                    .push(FieldError::new(format!("listeners[{i}].address"), format!("cannot bind {address}: {e}"))),
            }
        }
        if !errors.is_empty() {
            return Err(errors.into());
        }

        self.shared.snapshot.store(snapshot.clone());
        self.shared.metrics.config_version.set(version as i64);
        self.shared.toxics.set_config_listeners(
            snapshot.config.listeners.iter().filter(|l| l.protocol == ListenerProtocol::Tcp).map(|l| l.name.clone()),
        );

        let mut retired = Vec::new();
        for (name, (address, socket)) in fresh {
            let started = listener::spawn(&name, address, socket, self.shared.clone())
                .map_err(|e| vec![FieldError::new(format!("listeners.{name}"), e.to_string())])?;
            if let Some(old) = running.insert(name, started) {
                retired.push(old);
            }
        }
        let removed: Vec<String> =
            running.keys().filter(|name| !snapshot.listeners.contains_key(*name)).cloned().collect();
        for name in removed {
            retired.extend(running.remove(&name));
        }
        for old in retired {
            tracing::info!(address = %old.address, "listener removed from config; draining");
            old.stop(self.drain_timeout);
        }
        *self.bound.write().unwrap_or_else(|e| e.into_inner()) =
            running.iter().map(|(n, r)| (n.clone(), r.bound)).collect();
        tracing::info!(version, digest = %snapshot.digest, listeners = running.len(), clusters = snapshot.clusters.len(), "config loaded");
        Ok(version)
    }

    /// Stops accepting everywhere and waits (at most the drain timeout) for open connections.
    /// Toxiproxy proxies stop at once, their connections cut.
    pub async fn shutdown(&self) {
        self.toxiproxy.shutdown().await;
        let mut running = self.listeners.lock().await;
        let tasks: Vec<_> = running.drain().map(|(_, listener)| listener.stop(self.drain_timeout)).collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    /// A config is loaded and, for a proxy with a mesh identity, its certificate too.
    pub fn is_ready(&self) -> bool {
        self.shared.snapshot.load().version > 0 && self.mesh.get().is_none_or(|mesh| mesh.is_loaded())
    }

    /// The L4 toxics engine: add, update and remove named toxics on any tcp listener (from the
    /// config, or made through the Toxiproxy API) by the listener's name.
    pub fn toxics(&self) -> &Arc<Toxics> {
        &self.shared.toxics
    }

    /// The proxies made through the Toxiproxy API.
    pub fn toxiproxy(&self) -> &toxiproxy::ToxiproxyProxies {
        &self.toxiproxy
    }

    /// Where the Toxiproxy API listens, when it was started.
    pub fn toxiproxy_api(&self) -> Option<SocketAddr> {
        self.toxiproxy_api.get().copied()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The measurements of the chaos experiments running on this proxy.
    pub fn probes(&self) -> &probes::Probes {
        &self.shared.probes
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Where each listener is bound (useful with port 0).
    pub fn bound_addresses(&self) -> HashMap<String, SocketAddr> {
        self.bound.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The admin `/config` document.
    pub fn config_dump(&self) -> serde_json::Value {
        let snapshot = self.snapshot();
        serde_json::json!({
            "version": snapshot.version,
            "digest": snapshot.digest,
            "listeners": self.bound_addresses(),
            "toxiproxy_api": self.toxiproxy_api().map(|a| a.to_string()),
            "config": snapshot.config,
        })
    }

    /// The admin `/filters` document: each filter's module, instances, calls, failures, memory.
    pub fn filters_dump(&self) -> serde_json::Value {
        let snapshot = self.snapshot();
        let mut names: Vec<&String> = snapshot.filters.keys().collect();
        names.sort();
        let filters: Vec<_> = names
            .into_iter()
            .map(|name| {
                let mut entry = serde_json::json!({ "name": name });
                if let (Some(entry), serde_json::Value::Object(status)) =
                    (entry.as_object_mut(), snapshot.filters[name].status())
                {
                    entry.extend(status);
                }
                entry
            })
            .collect();
        serde_json::json!({ "filters": filters })
    }

    /// The admin `/clusters` document.
    pub fn clusters_dump(&self) -> serde_json::Value {
        let snapshot = self.snapshot();
        let mut clusters: Vec<_> = snapshot.clusters.values().collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        let clusters: Vec<_> = clusters
            .into_iter()
            .map(|cluster| {
                serde_json::json!({
                    "name": cluster.name.as_str(),
                    "lb": cluster.config.lb,
                    "protocol": cluster.config.protocol,
                    "tls": cluster.config.tls.is_some(),
                    "ejections_skipped": cluster.ejections_skipped(),
                    "endpoints": cluster.endpoints.iter().map(|e| {
                        let ejected_for = e.ejected_for();
                        serde_json::json!({
                            "endpoint": e.name,
                            "address": e.address.to_string(),
                            "health": if e.healthy() { "healthy" } else { "unhealthy" },
                            "healthy": e.healthy(),
                            "ejected": ejected_for.is_some(),
                            "ejected_for_ms": ejected_for.map(|d| d.as_millis() as u64),
                            "ejections": e.ejections(),
                            "available": e.healthy() && ejected_for.is_none(),
                            "in_flight": e.in_flight(),
                            "requests": e.requests(),
                        })
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({ "clusters": clusters })
    }
}

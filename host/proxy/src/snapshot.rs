//! A config compiled for serving: listeners with their TLS and filter chains, clusters with
//! resolved endpoints and pools. Immutable once built; a request keeps the one it started with.

use crate::chain::{FilterChain, FilterHost, FilterLoader, HttpFilter};
use crate::cluster::Cluster;
use crate::metrics::{Name, RouteMetrics};
use crate::tls::mesh::MeshIdentity;
use std::collections::HashMap;
use std::sync::Arc;
use weft_config::{Config, FieldError, ListenerProtocol};

pub struct Snapshot {
    /// Counts loads in this process, starting at 1.
    pub version: u64,
    pub digest: String,
    pub config: Config,
    pub listeners: HashMap<String, Arc<ListenerState>>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Every configured filter, by name (listeners hold them in their chains).
    pub filters: HashMap<String, Arc<dyn HttpFilter>>,
}

/// What a listener needs per connection and per request.
pub struct ListenerState {
    pub name: Name,
    pub config: weft_config::Listener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub chain: FilterChain,
    pub default_cluster: Option<Name>,
    /// Request metrics toward each cluster, by cluster name.
    pub routes: HashMap<String, Arc<RouteMetrics>>,
    /// Request metrics of requests answered before a cluster was chosen.
    pub unrouted: Arc<RouteMetrics>,
}

impl Snapshot {
    /// Compiles `config`. Everything is checked (files read, names resolved) before anything is
    /// returned, so a snapshot that exists can serve.
    /// `mesh` is the proxy's mesh identity, for `mtls: mesh` listeners and clusters.
    pub async fn build(
        config: Config,
        version: u64,
        host: &FilterHost,
        loader: Option<&Arc<dyn FilterLoader>>,
        mesh: Option<&Arc<MeshIdentity>>,
    ) -> Result<Snapshot, Vec<FieldError>> {
        let mut errors = Vec::new();
        let metrics = &host.metrics;
        let filters = load_filters(&config, loader, host).await?;
        let mut clusters = HashMap::new();
        for (i, cluster) in config.clusters.iter().enumerate() {
            match Cluster::build(cluster, &format!("clusters[{i}]"), metrics, mesh).await {
                Ok(built) => {
                    clusters.insert(cluster.name.clone(), Arc::new(built));
                }
                Err(e) => errors.push(e),
            }
        }
        let mut listeners = HashMap::new();
        for (i, listener) in config.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            let alpn: &[&[u8]] = match listener.protocol {
                ListenerProtocol::Https => &[b"h2", b"http/1.1"],
                _ => &[],
            };
            let server = match (&listener.tls, listener.mtls) {
                (Some(tls), _) => Some(crate::tls::server_config(tls, &format!("{at}.tls"), alpn)),
                (None, Some(_)) => Some(crate::tls::mesh_server_config(mesh, &listener.name, &at, alpn)),
                (None, None) => None,
            };
            let tls = match server {
                Some(Ok(server)) => Some(tokio_rustls::TlsAcceptor::from(server)),
                Some(Err(e)) => {
                    errors.push(e);
                    continue;
                }
                None => None,
            };
            listeners.insert(
                listener.name.clone(),
                Arc::new(ListenerState {
                    name: Name::new(&listener.name),
                    config: listener.clone(),
                    tls,
                    chain: FilterChain::new(
                        listener.filters.iter().filter_map(|name| filters.get(name).cloned()).collect(),
                    ),
                    default_cluster: listener.cluster.as_deref().map(Name::new),
                    routes: clusters
                        .keys()
                        .map(|cluster: &String| {
                            let metrics = RouteMetrics::new(metrics, &Name::new(&listener.name), &Name::new(cluster));
                            (cluster.clone(), Arc::new(metrics))
                        })
                        .collect(),
                    unrouted: Arc::new(RouteMetrics::new(metrics, &Name::new(&listener.name), &Name::new("none"))),
                }),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let digest = config.digest();
        Ok(Snapshot { version, digest, config, listeners, clusters, filters })
    }
}

/// Builds the config's filters off the async threads (compiling a module takes a while).
async fn load_filters(
    config: &Config,
    loader: Option<&Arc<dyn FilterLoader>>,
    host: &FilterHost,
) -> Result<HashMap<String, Arc<dyn HttpFilter>>, Vec<FieldError>> {
    if config.filters.is_empty() {
        return Ok(HashMap::new());
    }
    let Some(loader) = loader.cloned() else {
        return Err(vec![FieldError::new("filters", "this proxy was started without a Wasm runtime")]);
    };
    let (filters, host) = (config.filters.clone(), host.clone());
    tokio::task::spawn_blocking(move || loader.load(&filters, &host))
        .await
        .map_err(|e| vec![FieldError::new("filters", format!("loading stopped: {e}"))])?
}

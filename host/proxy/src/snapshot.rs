//! A config compiled for serving: listeners with their TLS and filter chains, clusters with
//! resolved endpoints and pools. Immutable once built; a request keeps the one it started with.

use crate::chain::FilterChain;
use crate::cluster::Cluster;
use crate::metrics::{Metrics, Name};
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
}

/// What a listener needs per connection and per request.
pub struct ListenerState {
    pub name: Name,
    pub config: weft_config::Listener,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub chain: FilterChain,
    pub default_cluster: Option<Name>,
}

impl Snapshot {
    /// Compiles `config`. Everything is checked (files read, names resolved) before anything is
    /// returned, so a snapshot that exists can serve.
    pub async fn build(
        config: Config,
        version: u64,
        metrics: &Arc<Metrics>,
    ) -> Result<Snapshot, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut clusters = HashMap::new();
        for (i, cluster) in config.clusters.iter().enumerate() {
            match Cluster::build(cluster, &format!("clusters[{i}]"), metrics).await {
                Ok(built) => {
                    clusters.insert(cluster.name.clone(), Arc::new(built));
                }
                Err(e) => errors.push(e),
            }
        }
        let mut listeners = HashMap::new();
        for (i, listener) in config.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            if !listener.filters.is_empty() {
                errors.push(FieldError::new(
                    format!("{at}.filters"),
                    "this build of weft cannot run Wasm filters yet; remove filters: from the listener",
                ));
                continue;
            }
            let tls = match &listener.tls {
                Some(tls) => {
                    let alpn: &[&[u8]] = match listener.protocol {
                        ListenerProtocol::Https => &[b"h2", b"http/1.1"],
                        _ => &[],
                    };
                    match crate::tls::server_config(tls, &format!("{at}.tls"), alpn) {
                        Ok(server) => Some(tokio_rustls::TlsAcceptor::from(server)),
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    }
                }
                None => None,
            };
            listeners.insert(
                listener.name.clone(),
                Arc::new(ListenerState {
                    name: Name::new(&listener.name),
                    config: listener.clone(),
                    tls,
                    chain: FilterChain::default(),
                    default_cluster: listener.cluster.as_deref().map(Name::new),
                }),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let digest = config.digest();
        Ok(Snapshot {
            version,
            digest,
            config,
            listeners,
            clusters,
        })
    }
}

//! The proxies made through the Toxiproxy API: each a tcp listener of its own, beside the
//! config's listeners (a config load never touches them), relaying to an upstream `host:port`
//! through the toxics registered under its name. Disabling one closes its listener and cuts its
//! open connections, as Toxiproxy does.

use crate::metrics::{ListenerLabels, Name, ResultLabels};
use crate::Shared;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a proxy waits for its upstream to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a proxy is, as the API shows and takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySpec {
    pub name: String,
    /// `host:port`; once enabled, the address actually bound (`127.0.0.1:0` becomes a port).
    pub listen: String,
    /// `host:port`, resolved at each connection.
    pub upstream: String,
    pub enabled: bool,
}

/// Why a proxy operation was refused; nothing changed. Messages are Toxiproxy's where it has one.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy not found")]
    NotFound,
    #[error("proxy already exists")]
    Exists,
    #[error("proxy already exists: the config has a listener named {0:?}")]
    ConfigListener(String),
    #[error("missing required field: {0}")]
    MissingField(String),
    #[error("bad request body: {0}")]
    BadBody(String),
    #[error("{field}: invalid address {value:?}: {reason}")]
    Address { field: String, value: String, reason: String },
    #[error("listen tcp {address}: {error}")]
    Bind { address: String, error: std::io::Error },
}

impl ProxyError {
    /// The HTTP status Toxiproxy answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::NotFound => 404,
            ProxyError::Exists | ProxyError::ConfigListener(_) => 409,
            ProxyError::Bind { .. } => 500,
            _ => 400,
        }
    }
}

struct Entry {
    spec: ProxySpec,
    /// Set while enabled: stops the accept loop (and cuts the connections), which ends.
    stop: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
}

/// Every Toxiproxy proxy of this weft, by name. Reached through [`crate::Proxy::toxiproxy`].
pub struct ToxiproxyProxies {
    entries: tokio::sync::Mutex<BTreeMap<String, Entry>>,
    shared: Arc<Shared>,
}

impl ToxiproxyProxies {
    pub(crate) fn new(shared: Arc<Shared>) -> ToxiproxyProxies {
        ToxiproxyProxies { entries: Default::default(), shared }
    }

    /// Every proxy, by name.
    pub async fn list(&self) -> Vec<ProxySpec> {
        self.entries.lock().await.values().map(|e| e.spec.clone()).collect()
    }

    pub async fn get(&self, name: &str) -> Result<ProxySpec, ProxyError> {
        self.entries.lock().await.get(name).map(|e| e.spec.clone()).ok_or(ProxyError::NotFound)
    }

    /// Makes a proxy (listening at once when enabled). 409 for a name in use.
    pub async fn create(&self, spec: ProxySpec) -> Result<ProxySpec, ProxyError> {
        check(&spec, "")?;
        let mut entries = self.entries.lock().await;
        if entries.contains_key(&spec.name) {
            return Err(ProxyError::Exists);
        }
        self.check_not_config(&spec.name)?;
        let entry = self.start(spec, None).await?;
        let spec = entry.spec.clone();
        entries.insert(spec.name.clone(), entry);
        self.count(&entries);
        Ok(spec)
    }

    /// Changes `listen`, `upstream` or `enabled` (what `change` leaves stays). A new address or
    /// upstream restarts the proxy (cutting its connections); its toxics stay.
    pub async fn update(&self, name: &str, change: impl FnOnce(&mut ProxySpec)) -> Result<ProxySpec, ProxyError> {
        let mut entries = self.entries.lock().await;
        let entry = entries.get_mut(name).ok_or(ProxyError::NotFound)?;
        let mut wanted = entry.spec.clone();
        change(&mut wanted);
        wanted.name = name.to_owned();
        check(&wanted, "")?;
        let moved = wanted.listen != entry.spec.listen || wanted.upstream != entry.spec.upstream;
        let running = entry.stop.is_some();
        if running && (moved || !wanted.enabled) {
            if wanted.enabled && wanted.listen != entry.spec.listen {
                // Bind the new address before letting go of the old one: a refusal changes nothing.
                let fresh = self.start(wanted, None).await?;
                stop(entry).await;
                *entry = fresh;
            } else {
                stop(entry).await;
                if wanted.enabled {
                    *entry = self.start(wanted, None).await?;
                } else {
                    entry.spec = wanted;
                }
            }
        } else if !running && wanted.enabled {
            *entry = self.start(wanted, None).await?;
        } else {
            entry.spec = wanted;
        }
        let spec = entry.spec.clone();
        self.count(&entries);
        Ok(spec)
    }

    /// Stops and forgets a proxy, and its toxics.
    pub async fn delete(&self, name: &str) -> Result<(), ProxyError> {
        let mut entries = self.entries.lock().await;
        let mut entry = entries.remove(name).ok_or(ProxyError::NotFound)?;
        stop(&mut entry).await;
        self.shared.toxics.clear(name);
        self.shared.toxics.set_proxy_listener(name, false);
        tracing::info!(proxy = name, "Toxiproxy proxy deleted");
        self.count(&entries);
        Ok(())
    }

    /// Toxiproxy's `/populate`: each proxy is made, or replaced when its listen address or
    /// upstream differ (a replaced proxy loses its toxics), or kept as it is. The whole list
    /// is checked before anything changes.
    pub async fn populate(&self, specs: Vec<ProxySpec>) -> Result<Vec<ProxySpec>, ProxyError> {
        for (i, spec) in specs.iter().enumerate() {
            check(spec, &format!(" at proxy {}", i + 1))?;
            if specs[..i].iter().any(|s| s.name == spec.name) {
                return Err(ProxyError::BadBody(format!("duplicate proxy name {:?}", spec.name)));
            }
            self.check_not_config(&spec.name)?;
        }
        let mut entries = self.entries.lock().await;
        let kept = |spec: &ProxySpec, entries: &BTreeMap<String, Entry>| {
            entries.get(&spec.name).is_some_and(|e| e.spec.listen == spec.listen && e.spec.upstream == spec.upstream)
        };
        // New addresses are bound first, so a port in use refuses the list whole.
        let mut sockets = BTreeMap::new();
        for spec in &specs {
            let frees_own_port = entries.get(&spec.name).is_some_and(|e| e.spec.listen == spec.listen);
            if spec.enabled && !kept(spec, &entries) && !frees_own_port {
                sockets.insert(spec.name.clone(), bind(&spec.listen).await?);
            }
        }
        let mut result = Vec::new();
        for spec in specs {
            if kept(&spec, &entries) {
                result.extend(entries.get(&spec.name).map(|e| e.spec.clone()));
                continue;
            }
            if let Some(mut old) = entries.remove(&spec.name) {
                stop(&mut old).await;
                self.shared.toxics.clear(&spec.name);
            }
            let socket = sockets.remove(&spec.name);
            let entry = self.start(spec, socket).await?;
            result.push(entry.spec.clone());
            entries.insert(entry.spec.name.clone(), entry);
        }
        self.count(&entries);
        Ok(result)
    }

    /// Toxiproxy's `/reset`: every proxy enabled, every toxic of theirs removed.
    pub async fn reset(&self) -> Result<(), ProxyError> {
        let mut entries = self.entries.lock().await;
        for entry in entries.values_mut() {
            self.shared.toxics.clear(&entry.spec.name);
            if entry.stop.is_none() {
                let mut spec = entry.spec.clone();
                spec.enabled = true;
                *entry = self.start(spec, None).await?;
            }
        }
        self.count(&entries);
        tracing::info!(proxies = entries.len(), "Toxiproxy reset: proxies enabled, toxics removed");
        Ok(())
    }

    /// Whether a Toxiproxy proxy has this name (a config listener may not take it).
    pub fn has(&self, name: &str) -> bool {
        self.shared.toxics.is_proxy_listener(name)
    }

    /// Stops every proxy (the process is stopping).
    pub async fn shutdown(&self) {
        for entry in self.entries.lock().await.values_mut() {
            stop(entry).await;
        }
    }

    fn check_not_config(&self, name: &str) -> Result<(), ProxyError> {
        if self.shared.snapshot.load().listeners.contains_key(name) {
            return Err(ProxyError::ConfigListener(name.to_owned()));
        }
        Ok(())
    }

    /// The entry for `spec`, listening when enabled (on `socket` when bound already).
    async fn start(&self, mut spec: ProxySpec, socket: Option<TcpListener>) -> Result<Entry, ProxyError> {
        if !spec.enabled {
            self.shared.toxics.set_proxy_listener(&spec.name, true);
            tracing::info!(proxy = %spec.name, listen = %spec.listen, upstream = %spec.upstream, "Toxiproxy proxy made, disabled");
            return Ok(Entry { spec, stop: None });
        }
        let socket = match socket {
            Some(socket) => socket,
            None => bind(&spec.listen).await?,
        };
        let bound = socket.local_addr().map_err(|error| ProxyError::Bind { address: spec.listen.clone(), error })?;
        spec.listen = bound.to_string();
        self.shared.toxics.set_proxy_listener(&spec.name, true);
        let (stop, stopped) = watch::channel(false);
        let name = Name::new(&spec.name);
        let task = tokio::spawn(accept(name, socket, spec.upstream.clone(), self.shared.clone(), stopped));
        tracing::info!(proxy = %spec.name, listen = %bound, upstream = %spec.upstream, "Toxiproxy proxy listening");
        Ok(Entry { spec, stop: Some((stop, task)) })
    }

    fn count(&self, entries: &BTreeMap<String, Entry>) {
        let enabled = entries.values().filter(|e| e.stop.is_some()).count();
        let metric = &self.shared.metrics.toxiproxy_proxies;
        metric.get_or_create(&ResultLabels { result: "enabled" }).set(enabled as i64);
        metric.get_or_create(&ResultLabels { result: "disabled" }).set((entries.len() - enabled) as i64);
    }
}

/// Name and upstream given, addresses of the form `host:port`.
fn check(spec: &ProxySpec, at: &str) -> Result<(), ProxyError> {
    if spec.name.is_empty() {
        return Err(ProxyError::MissingField(format!("name{at}")));
    }
    if spec.upstream.is_empty() {
        return Err(ProxyError::MissingField(format!("upstream{at}")));
    }
    for (field, value) in [("upstream", &spec.upstream), ("listen", &spec.listen)] {
        let port = value.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(_))) if !host.is_empty() || field == "listen" => {}
            _ => {
                return Err(ProxyError::Address {
                    field: format!("{field}{at}"),
                    value: value.clone(),
                    reason: "expected host:port, e.g. 127.0.0.1:6379".into(),
                })
            }
        }
    }
    Ok(())
}

async fn bind(listen: &str) -> Result<TcpListener, ProxyError> {
    let refused = |error| ProxyError::Bind { address: listen.to_owned(), error };
    let address: SocketAddr = match listen.parse() {
        Ok(address) => address,
        Err(_) => tokio::net::lookup_host(listen).await.map_err(refused)?.next().ok_or_else(|| {
            refused(std::io::Error::new(std::io::ErrorKind::NotFound, "the host name has no address"))
        })?,
    };
    crate::listener::bind(address).map_err(refused)
}

/// Ends the accept loop (its socket closed when this returns) and cuts the open connections.
async fn stop(entry: &mut Entry) {
    if let Some((stop, task)) = entry.stop.take() {
        let _ = stop.send(true);
        let _ = task.await;
        tracing::info!(proxy = %entry.spec.name, listen = %entry.spec.listen, "Toxiproxy proxy stopped; its connections were closed");
    }
    entry.spec.enabled = false;
}

async fn accept(
    name: Name,
    socket: TcpListener,
    upstream: String,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let labels = ListenerLabels { listener: name.clone() };
    let active = shared.metrics.downstream_active.get_or_create(&labels).clone();
    let total = shared.metrics.downstream_total.get_or_create(&labels).clone();
    loop {
        let (client, peer) = tokio::select! {
            _ = until_stopped(&mut stopped) => return,
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(proxy = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        total.inc();
        active.inc();
        let (name, upstream, shared, mut stopped, active) =
            (name.clone(), upstream.clone(), shared.clone(), stopped.clone(), active.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = until_stopped(&mut stopped) => {}
                _ = relay(&name, client, peer, &upstream, &shared) => {}
            }
            active.dec();
        });
    }
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across the caller's awaits.
    let _ = stopped.wait_for(|stop| *stop).await;
}

async fn relay(name: &Name, client: TcpStream, peer: SocketAddr, upstream: &str, shared: &Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(server)) => server,
        Ok(Err(error)) => {
            tracing::warn!(proxy = %name, %peer, upstream, %error, "cannot reach the upstream; client connection closed");
            return;
        }
        Err(_) => {
            tracing::warn!(proxy = %name, %peer, upstream, "the upstream did not answer in time; client connection closed");
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let toxics = shared.toxics.listener(name.as_str());
    let chain = crate::chain::ConnectionChain::default();
    let relayed = crate::tcp::relay(client, server, &shared.toxics, &toxics, chain, 0, fastrand::Rng::new()).await;
    let labels = ListenerLabels { listener: name.clone() };
    shared.metrics.tcp_bytes_received.get_or_create(&labels).inc_by(relayed.received);
    shared.metrics.tcp_bytes_sent.get_or_create(&labels).inc_by(relayed.sent);
    tracing::debug!(proxy = %name, %peer, upstream, received = relayed.received, sent = relayed.sent, outcome = relayed.outcome, "Toxiproxy connection closed");
}

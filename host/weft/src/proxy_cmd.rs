//! `weft proxy`: a proxy from a static file (`--config`, reloaded on SIGHUP and on change) or
//! managed by a control plane (`--control`, see `managed`).

use crate::cli::ProxyArgs;
use crate::Failure;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{signal, Signal, SignalKind};
use weft_config::Config;
use weft_proxy::Proxy;

/// How often the config file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub async fn run(args: ProxyArgs, workers: usize) -> Result<(), Failure> {
    let managed = match &args.control {
        Some(control) => Some(managed_settings(&args, control)?),
        None => None,
    };
    let file_config = match (&args.config, &managed) {
        (Some(path), _) => Some((path.clone(), Config::load(path).map_err(|e| Failure::Invalid(e.to_string()))?)),
        _ => None,
    };
    if args.check {
        let Some((path, config)) = &file_config else {
            return Err(Failure::Invalid("--check checks a config file: give --config FILE".into()));
        };
        println!(
            "{}: valid ({} listeners, {} clusters)",
            path.display(),
            config.listeners.len(),
            config.clusters.len()
        );
        return Ok(());
    }
    let signals = Signals::install()?;
    // One warm instance per worker thread and filter: calls never wait on each other for long.
    let cache = args.cache_dir.clone().or_else(default_cache_dir);
    let mut loader = weft_wasm::WasmLoader::new(workers, cache).map_err(|e| Failure::Runtime(anyhow::anyhow!(e)))?;
    if let Some(settings) = &managed {
        loader = loader.with_module_store(settings.module_dir());
    }
    let proxy = Proxy::new(args.drain_timeout.get(), Some(Arc::new(loader))).await;
    let admin = tokio::net::TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot bind the admin API on {}", args.admin))?;
    let toxiproxy = match args.toxiproxy_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot bind the Toxiproxy API on {address} (--toxiproxy-listen)"))?,
        ),
        None => None,
    };
    serve_toxiproxy(toxiproxy, &proxy);
    if let Some((path, config)) = file_config {
        proxy.apply(config).await.map_err(|e| {
            Failure::Invalid(e.errors.iter().map(|e| format!("{}: {e}", path.display())).collect::<Vec<_>>().join("\n"))
        })?;
        tokio::spawn(weft_proxy::admin::serve(admin, proxy.clone()));
        for (name, address) in sorted(proxy.bound_addresses()) {
            tracing::info!(listener = %name, %address, "listening");
        }
        tracing::info!(admin = %args.admin, "admin API listening");
        return serve_until_stopped(proxy, &path, signals).await;
    }
    let Some(mut settings) = managed else { unreachable!("clap requires --config or --control") };
    let identity = crate::identity::Settings::of(&args.identity, &settings.control, &settings.node, &settings.data)?;
    tokio::spawn(weft_proxy::admin::serve(admin, proxy.clone()));
    tracing::info!(admin = %args.admin, "admin API listening");
    let following = proxy.clone();
    let mut follower = tokio::spawn(async move {
        if let Some(identity) = identity {
            // The mesh identity first: its credential authenticates the config stream too.
            let manager = crate::identity::Manager::start(following.clone(), identity).await?;
            settings.token = settings.token.or_else(|| Some(manager.credential().to_owned()));
            tokio::spawn(manager.run());
        }
        crate::managed::run(following, settings).await;
        Ok::<(), Failure>(())
    });
    let Signals { mut terminate, mut interrupt, .. } = signals;
    let outcome = tokio::select! {
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
        ended = &mut follower => match ended {
            Ok(Err(failure)) => Err(failure),
            Ok(Ok(())) => Ok(()),
            Err(error) => Err(Failure::Runtime(anyhow::anyhow!("the control plane follower stopped: {error}"))),
        },
    };
    follower.abort();
    if let Err(failure) = outcome {
        proxy.shutdown().await;
        return Err(failure);
    }
    tracing::info!("shutting down: draining open connections");
    proxy.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves the Toxiproxy API on `socket`, when there is one, and says where.
pub fn serve_toxiproxy(socket: Option<tokio::net::TcpListener>, proxy: &Arc<Proxy>) {
    let Some(socket) = socket else { return };
    match socket.local_addr() {
        Ok(address) => tracing::info!(toxiproxy = %address, "Toxiproxy API listening"),
        Err(error) => tracing::warn!(%error, "the Toxiproxy API's socket has no address"),
    }
    tokio::spawn(weft_proxy::toxiproxy::serve(socket, proxy.clone()));
}

fn managed_settings(args: &ProxyArgs, control: &str) -> Result<crate::managed::Settings, Failure> {
    let uri: http::Uri =
        control.parse().map_err(|e| Failure::Invalid(format!("--control {control:?}: not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(Failure::Invalid(format!(
            "--control {control:?}: expected http://HOST:PORT, e.g. http://127.0.0.1:7700"
        )));
    }
    let node = match &args.node {
        Some(node) if !node.is_empty() => node.clone(),
        _ => std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default(),
    };
    if node.is_empty() {
        return Err(Failure::Invalid("--node: give this proxy a name (no host name to use)".into()));
    }
    Ok(crate::managed::Settings {
        control: uri,
        token: args.token.clone(),
        node,
        labels: args.labels.iter().cloned().collect(),
        data: args.data.clone(),
    })
}

/// `$XDG_CACHE_HOME/weft/modules`, else `~/.cache/weft/modules`; none without a home.
fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("weft").join("modules"))
}

fn sorted(map: std::collections::HashMap<String, std::net::SocketAddr>) -> Vec<(String, std::net::SocketAddr)> {
    let mut list: Vec<_> = map.into_iter().collect();
    list.sort();
    list
}

/// The signals a proxy answers. Installed before the proxy reports ready, so a SIGHUP sent as
/// soon as `/ready` says 200 reloads instead of killing the process (SIGHUP's default).
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
            terminate: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }
}

/// Reloads on SIGHUP or a changed file; drains and returns on SIGTERM or SIGINT.
async fn serve_until_stopped(proxy: Arc<Proxy>, path: &Path, signals: Signals) -> Result<(), Failure> {
    let Signals { mut hangup, mut terminate, mut interrupt } = signals;
    let mut watched = FileStamp::of(path);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                tracing::info!(file = %path.display(), "SIGHUP: reloading config");
                watched = FileStamp::of(path);
                reload(&proxy, path).await;
            }
            _ = tick.tick() => {
                let now = FileStamp::of(path);
                if now != watched {
                    watched = now;
                    tracing::info!(file = %path.display(), "config file changed: reloading");
                    reload(&proxy, path).await;
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("shutting down: draining open connections");
    proxy.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn reload(proxy: &Proxy, path: &Path) {
    let outcome = match Config::load(path) {
        Ok(config) => proxy.apply(config).await.map_err(|e| e.to_string()),
        Err(error) => {
            proxy.count_rejected_config();
            Err(error.to_string())
        }
    };
    match outcome {
        Ok(version) => tracing::info!(version, "config reloaded"),
        Err(errors) => {
            tracing::error!(file = %path.display(), %errors, "config refused; the running config stays")
        }
    }
}

/// What tells a file changed without reading it: size, modification time, inode.
#[derive(PartialEq, Eq)]
struct FileStamp(Option<(u64, SystemTime, u64)>);

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp(
            std::fs::metadata(path).ok().map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.ino())),
        )
    }
}

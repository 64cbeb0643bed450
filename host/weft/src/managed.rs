//! `weft proxy --control URL`: a proxy whose config comes from a control plane. It holds one
//! gRPC stream to it (`weft_proto`), prepares each version it is sent whole — modules fetched
//! and checked against their digests, the config loaded — before swapping it in and answering
//! ACK; a version it cannot load is answered NACK with the reason, and the running one stays.
//! The last acknowledged config and its modules are kept in the data dir, so the proxy starts
//! and serves from them while the control plane is away, and catches up when it returns.

use crate::managed_experiments::Experiments;
use anyhow::{anyhow, bail, Context};
use http::uri::PathAndQuery;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use weft_config::Config;
use weft_proto::experiments::{decode_assignments, REPORT_INTERVAL};
use weft_proto::{Codec, ControlMessage, ModuleChunk, ModuleRequest, ProxyMessage, FETCH_MODULE_PATH, STREAM_PATH};
use weft_proxy::Proxy;

/// Reconnection waits: from the first, doubling, up to the last, each with ±50% jitter so that
/// a fleet of proxies does not return to a restarted control plane in one wave.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// How a managed proxy reaches its control plane and who it says it is.
pub struct Settings {
    pub control: Uri,
    pub token: Option<String>,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// Where the last acknowledged config (`last-config.json`) and modules (`modules/`) are kept.
    pub data: PathBuf,
}

impl Settings {
    /// Where modules received by digest are kept, as `<hex>.wasm`.
    pub fn module_dir(&self) -> PathBuf {
        self.data.join("modules")
    }
}

type Channel = Client<HttpConnector, tonic::body::Body>;

/// Serves the last acknowledged config if there is one, then follows the control plane forever.
pub async fn run(proxy: Arc<Proxy>, settings: Settings) {
    let mut running = 0;
    match load_last(&settings.data) {
        Ok(Some((version, config))) => match proxy.apply(config).await {
            Ok(_) => {
                running = version;
                tracing::info!(version, dir = %settings.data.display(), "serving the last acknowledged config until the control plane answers");
            }
            Err(error) => {
                tracing::error!(%error, "the last acknowledged config no longer loads; waiting for the control plane")
            }
        },
        Ok(None) => tracing::info!("no config yet; waiting for the control plane"),
        Err(error) => {
            tracing::error!(%error, "cannot read the last acknowledged config; waiting for the control plane")
        }
    }
    let channel: Channel = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let experiments = Experiments::start(proxy.clone());
    let mut wait = FIRST_RETRY;
    loop {
        match follow(&proxy, &settings, &experiments, channel.clone(), &mut running).await {
            Ok(heard) => {
                tracing::warn!(control = %settings.control, "the control plane closed the stream");
                if heard {
                    wait = FIRST_RETRY;
                }
            }
            Err((error, heard)) => {
                if heard {
                    wait = FIRST_RETRY;
                }
                tracing::warn!(control = %settings.control, error = %format!("{error:#}"), retry_in = ?wait, "cannot follow the control plane; the running config stays");
            }
        }
        let jittered = wait.mul_f64(0.5 + fastrand::f64());
        tokio::time::sleep(jittered).await;
        wait = (wait * 2).min(LAST_RETRY);
    }
}

/// One stream: hello, then each version sent is prepared, applied and answered. `Ok(heard)` when
/// the control plane ended it; `heard` says whether it sent anything (then the next connection
/// is tried without waiting long).
async fn follow(
    proxy: &Proxy,
    settings: &Settings,
    experiments: &Experiments,
    channel: Channel,
    running: &mut u64,
) -> Result<bool, (anyhow::Error, bool)> {
    let mut grpc = tonic::client::Grpc::with_origin(channel, settings.control.clone());
    let (to_control, outbound) = mpsc::channel::<ProxyMessage>(4);
    let hello = ProxyMessage {
        node: settings.node.clone(),
        labels: settings.labels.clone().into_iter().collect(),
        version: *running,
        nonce: String::new(),
        error: String::new(),
        reports: String::new(),
    };
    to_control.send(hello).await.map_err(|_| (anyhow!("the outbound stream closed"), false))?;
    let outbound =
        futures_util::stream::unfold(outbound, |mut rx| async move { rx.recv().await.map(|message| (message, rx)) });
    let request = authorized(tonic::Request::new(outbound), settings);
    grpc.ready().await.map_err(|e| (anyhow!("{e}"), false))?;
    let mut inbound = grpc
        .streaming(request, PathAndQuery::from_static(STREAM_PATH), Codec::<ProxyMessage, ControlMessage>::default())
        .await
        .map_err(|status| (anyhow!("{}", status.message()), false))?
        .into_inner();
    tracing::info!(control = %settings.control, node = %settings.node, "following the control plane");
    let mut heard = false;
    let mut report_tick = tokio::time::interval(REPORT_INTERVAL);
    report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            received = inbound.message() => received,
            _ = report_tick.tick() => {
                let reports = proxy.probes().reports(proxy.metrics());
                if !reports.is_empty() {
                    let report = ProxyMessage {
                        node: settings.node.clone(),
                        reports: serde_json::to_string(&reports).unwrap_or_default(),
                        ..Default::default()
                    };
                    if to_control.send(report).await.is_err() {
                        return Ok(heard);
                    }
                }
                continue;
            }
        };
        let message = match received {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(heard),
            Err(status) => return Err((anyhow!("{}", status.message()), heard)),
        };
        heard = true;
        let outcome = take(proxy, settings, experiments, &grpc, &message).await;
        let error = match outcome {
            Ok(()) => {
                *running = message.version;
                tracing::info!(version = message.version, "config from the control plane in force");
                String::new()
            }
            Err(error) => {
                let reason = format!("{error:#}");
                tracing::error!(version = message.version, %reason, "config from the control plane refused; the running config stays");
                reason
            }
        };
        let answer = ProxyMessage {
            node: settings.node.clone(),
            labels: Default::default(),
            version: message.version,
            nonce: message.nonce,
            error,
            reports: String::new(),
        };
        if to_control.send(answer).await.is_err() {
            return Ok(heard);
        }
    }
}

/// Prepares a version whole (modules, then the config), swaps it in, and keeps it as the last
/// acknowledged one. The chaos experiments of the message are laid over the resources (not kept on disk).
async fn take(
    proxy: &Proxy,
    settings: &Settings,
    experiments: &Experiments,
    grpc: &tonic::client::Grpc<Channel>,
    message: &ControlMessage,
) -> anyhow::Result<()> {
    for digest in &message.modules {
        fetch_module(grpc.clone(), settings, digest).await.with_context(|| format!("module {digest}"))?;
    }
    let resources: serde_json::Value =
        serde_json::from_str(&message.resources).context("the resources are not JSON")?;
    let assignments = decode_assignments(&message.experiments).context("the experiments are not readable")?;
    experiments.take(proxy, resources.clone(), assignments).await?;
    save_last(&settings.data, message.version, &resources).context("cannot keep the config in the data dir")?;
    Ok(())
}

/// Fetches a module unless a good copy is in the module dir already.
async fn fetch_module(mut grpc: tonic::client::Grpc<Channel>, settings: &Settings, digest: &str) -> anyhow::Result<()> {
    let Some(hex) = digest.strip_prefix("sha256:").filter(|h| h.len() == 64) else {
        bail!("not a sha256:<hex> digest");
    };
    let path = settings.module_dir().join(format!("{hex}.wasm"));
    if std::fs::read(&path).is_ok_and(|bytes| hex::encode(sha2::Sha256::digest(&bytes)) == hex) {
        return Ok(());
    }
    grpc.ready().await.map_err(|e| anyhow!("{e}"))?;
    let request = authorized(tonic::Request::new(ModuleRequest { digest: digest.to_owned() }), settings);
    let mut chunks = grpc
        .server_streaming(
            request,
            PathAndQuery::from_static(FETCH_MODULE_PATH),
            Codec::<ModuleRequest, ModuleChunk>::default(),
        )
        .await
        .map_err(|status| anyhow!("{}", status.message()))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.message().await.map_err(|status| anyhow!("{}", status.message()))? {
        bytes.extend_from_slice(&chunk.data);
    }
    if hex::encode(sha2::Sha256::digest(&bytes)) != hex {
        bail!("the bytes received do not match the digest");
    }
    write_atomically(&path, &bytes)?;
    tracing::info!(%digest, size = bytes.len(), "module fetched");
    Ok(())
}

fn authorized<T>(mut request: tonic::Request<T>, settings: &Settings) -> tonic::Request<T> {
    if let Some(token) = &settings.token {
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {token}")) {
            request.metadata_mut().insert("authorization", value);
        }
    }
    request
}

/// The last acknowledged config: its version and the config.
fn load_last(data: &Path) -> anyhow::Result<Option<(u64, Config)>> {
    let path = data.join("last-config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let saved: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let version = saved["version"].as_u64().ok_or_else(|| anyhow!("{}: no version", path.display()))?;
    let config = Config::from_value(saved["resources"].clone()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(Some((version, config)))
}

fn save_last(data: &Path, version: u64, resources: &serde_json::Value) -> anyhow::Result<()> {
    let saved = serde_json::json!({ "version": version, "resources": resources });
    write_atomically(&data.join("last-config.json"), saved.to_string().as_bytes())
}

/// Writes a file whole or not at all: a crash leaves the old one.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().ok_or_else(|| anyhow!("{}: no folder", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temporary = path.with_extension("partial");
    let mut file =
        std::fs::File::create(&temporary).with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

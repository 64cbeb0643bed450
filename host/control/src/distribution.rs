//! The gRPC distribution to proxies (`weft_proto`): each proxy holds one stream, says who it is,
//! and gets every config version whose selector matches its labels, each with a nonce it answers
//! with an ACK or a NACK (after xDS). Bursts of applies are coalesced ([`DEBOUNCE`]) and at most
//! [`CONCURRENT_PUSHES`] sends are in flight at once. Modules are fetched by digest, in chunks.
//! What each proxy runs and last refused is kept for `GET /v1/proxies`.

use crate::plane::ControlPlane;
use crate::records::{now_ms, rfc3339, VersionRecord};
use futures_util::Stream;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tonic::codec::Streaming;
use tonic::server::{Grpc, ServerStreamingService, StreamingService};
use tonic::{Request, Response, Status};
use weft_proto::experiments::encode_assignments;
use weft_proto::{Codec, ControlMessage, ModuleChunk, ModuleRequest, ProxyMessage, FETCH_MODULE_PATH, STREAM_PATH};

/// How long to wait after a new version for more: a script applying five files in a row makes
/// one push, not five.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Sends of a new version in flight at once, across all proxies.
pub const CONCURRENT_PUSHES: usize = 64;

/// What the control plane knows of each proxy that ever connected since it started.
pub struct Proxies {
    by_node: Mutex<BTreeMap<String, ProxyStatus>>,
    pushes: Arc<Semaphore>,
}

#[derive(Clone, Default)]
struct ProxyStatus {
    labels: BTreeMap<String, String>,
    connected: bool,
    connected_at_ms: u64,
    /// The version it acknowledged last (or said it runs when it connected).
    acknowledged: u64,
    /// The version sent last and not yet answered.
    pending: Option<u64>,
    /// The last version it refused, why, and when.
    last_rejection: Option<(u64, String, u64)>,
}

impl Default for Proxies {
    fn default() -> Self {
        Self::new()
    }
}

impl Proxies {
    pub fn new() -> Proxies {
        Proxies { by_node: Mutex::default(), pushes: Arc::new(Semaphore::new(CONCURRENT_PUSHES)) }
    }

    /// `GET /v1/proxies`: every proxy, connected or not, by node id.
    pub fn to_json(&self) -> Value {
        let proxies = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<Value> = proxies
            .iter()
            .map(|(node, status)| {
                json!({
                    "node": node,
                    "labels": status.labels,
                    "connected": status.connected,
                    "connected_at": rfc3339(status.connected_at_ms),
                    "version": status.acknowledged,
                    "pending_version": status.pending,
                    "last_rejection": status.last_rejection.as_ref().map(|(version, reason, at)| json!({
                        "version": version, "reason": reason, "at": rfc3339(*at),
                    })),
                })
            })
            .collect();
        json!({ "proxies": list })
    }

    /// The proxies connected now, with their labels.
    pub fn connected(&self) -> Vec<(String, BTreeMap<String, String>)> {
        let proxies = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        proxies.iter().filter(|(_, s)| s.connected).map(|(node, s)| (node.clone(), s.labels.clone())).collect()
    }

    fn update(&self, node: &str, change: impl FnOnce(&mut ProxyStatus)) {
        let mut proxies = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        change(proxies.entry(node.to_owned()).or_default());
    }
}

/// Answers a gRPC request (the port's `application/grpc` requests come here).
pub async fn serve<B>(plane: Arc<ControlPlane>, request: http::Request<B>) -> http::Response<tonic::body::Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let authorization = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(caller) = plane.authorize_proxy(authorization) else {
        return Status::unauthenticated("a bearer token of this control plane (a proxy credential) is needed")
            .into_http();
    };
    match request.uri().path() {
        STREAM_PATH => {
            Grpc::new(Codec::<ControlMessage, ProxyMessage>::default())
                .streaming(Distribution(plane, caller), request)
                .await
        }
        FETCH_MODULE_PATH => {
            Grpc::new(Codec::<ModuleChunk, ModuleRequest>::default()).server_streaming(Modules(plane), request).await
        }
        other => Status::unimplemented(format!("no gRPC method {other}")).into_http(),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;
type MessageStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

struct Distribution(Arc<ControlPlane>, crate::plane::ProxyCaller);

impl StreamingService<ProxyMessage> for Distribution {
    type Response = ControlMessage;
    type ResponseStream = MessageStream<ControlMessage>;
    type Future = BoxFuture<Self::ResponseStream>;

    fn call(&mut self, request: Request<Streaming<ProxyMessage>>) -> Self::Future {
        let (plane, caller) = (self.0.clone(), self.1.clone());
        Box::pin(async move {
            let mut inbound = request.into_inner();
            let hello = inbound
                .message()
                .await?
                .filter(|hello| !hello.node.is_empty())
                .ok_or_else(|| Status::invalid_argument("the stream must open with the proxy's node id"))?;
            if !caller.may_be(&hello.node) {
                return Err(Status::permission_denied(format!("this credential is not node {:?}'s", hello.node)));
            }
            let (to_proxy, outbound) = mpsc::channel(4);
            tokio::spawn(follow(plane, hello, inbound, to_proxy));
            let stream = futures_util::stream::unfold(outbound, |mut outbound| async move {
                outbound.recv().await.map(|message| (Ok(message), outbound))
            });
            Ok(Response::new(Box::pin(stream) as MessageStream<ControlMessage>))
        })
    }
}

/// One proxy's stream: sends it each version meant for it, records its answers, and marks it
/// disconnected when the stream ends.
async fn follow(
    plane: Arc<ControlPlane>,
    hello: ProxyMessage,
    mut inbound: Streaming<ProxyMessage>,
    to_proxy: mpsc::Sender<ControlMessage>,
) {
    let node = hello.node.clone();
    let labels: BTreeMap<String, String> = hello.labels.into_iter().collect();
    let proxies = plane.proxies();
    proxies.update(&node, |status| {
        *status = ProxyStatus {
            labels: labels.clone(),
            connected: true,
            connected_at_ms: now_ms(),
            acknowledged: hello.version,
            pending: None,
            last_rejection: status.last_rejection.take(),
        };
    });
    tracing::info!(%node, runs = hello.version, "proxy connected");
    let mut versions = plane.subscribe();
    let mut experiments = plane.experiments().watch();
    // What was sent last: the version and the experiments' JSON.
    let mut sent = (hello.version, String::new());
    let mut nonces = 0u64;
    let mut waiting: HashMap<String, Sent> = HashMap::new();
    loop {
        let current = *versions.borrow_and_update();
        let assignments = experiments.borrow_and_update().get(&node).cloned().unwrap_or_default();
        let encoded = encode_assignments(&assignments);
        if (current, &encoded) != (sent.0, &sent.1) && current > 0 {
            match meant_for(&plane, current, &labels) {
                Ok(Some(record)) => {
                    nonces += 1;
                    let nonce = format!("{current}-{nonces}");
                    let message = ControlMessage {
                        version: current,
                        nonce: nonce.clone(),
                        resources: record.resources.to_string(),
                        modules: record
                            .module_refs()
                            .into_iter()
                            .map(|m| m.module)
                            .collect::<std::collections::BTreeSet<_>>()
                            .into_iter()
                            .collect(),
                        experiments: encoded.clone(),
                    };
                    let Ok(_permit) = proxies.pushes.clone().acquire_owned().await else { break };
                    if to_proxy.send(message).await.is_err() {
                        break;
                    }
                    let carried = assignments.iter().map(|a| (a.id.clone(), a.inject.is_some())).collect();
                    waiting.insert(nonce, Sent { version: current, carried });
                    proxies.update(&node, |status| status.pending = Some(current));
                    tracing::info!(%node, version = current, experiments = assignments.len(), "config sent");
                }
                Ok(None) => tracing::debug!(%node, version = current, "version not meant for this proxy (selector)"),
                Err(error) => tracing::error!(%node, version = current, %error, "cannot read the version to send"),
            }
            sent = (current, encoded);
        }
        tokio::select! {
            changed = versions.changed() => {
                if changed.is_err() {
                    break;
                }
                tokio::time::sleep(DEBOUNCE).await;
            }
            changed = experiments.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            answer = inbound.message() => match answer {
                Ok(Some(message)) if message.nonce.is_empty() && !message.reports.is_empty() => {
                    match serde_json::from_str(&message.reports) {
                        Ok(reports) => plane.experiments().reported(&node, reports),
                        Err(error) => tracing::debug!(%node, %error, "unreadable experiment reports; ignored"),
                    }
                }
                Ok(Some(answer)) => record_answer(&plane, &node, &mut waiting, answer),
                Ok(None) | Err(_) => break,
            },
        }
    }
    proxies.update(&node, |status| status.connected = false);
    plane.experiments().disconnected(&node);
    tracing::info!(%node, "proxy disconnected");
}

/// A message sent and not yet answered: its version and the experiments it carried (id, injecting).
struct Sent {
    version: u64,
    carried: Vec<(String, bool)>,
}

/// The version's record if its selector matches the proxy's labels (an empty selector matches
/// every proxy).
fn meant_for(
    plane: &ControlPlane,
    version: u64,
    labels: &BTreeMap<String, String>,
) -> Result<Option<VersionRecord>, crate::store::StoreError> {
    let Some(record) = plane.store().version(version)? else { return Ok(None) };
    let matches = record.selector.iter().all(|(key, value)| labels.get(key) == Some(value));
    Ok(matches.then_some(record))
}

fn record_answer(plane: &ControlPlane, node: &str, waiting: &mut HashMap<String, Sent>, answer: ProxyMessage) {
    let Some(Sent { version, carried }) = waiting.remove(&answer.nonce) else {
        tracing::debug!(%node, nonce = %answer.nonce, "answer to no message sent on this stream; ignored");
        return;
    };
    plane.proxies().update(node, |status| {
        if status.pending == Some(version) {
            status.pending = None;
        }
        if answer.error.is_empty() {
            status.acknowledged = version;
        } else {
            status.last_rejection = Some((version, answer.error.clone(), now_ms()));
        }
    });
    let refusal = (!answer.error.is_empty()).then_some(answer.error.as_str());
    plane.experiments().acknowledged(node, &carried, refusal);
    if answer.error.is_empty() {
        tracing::info!(%node, version, "proxy acknowledged");
    } else {
        tracing::warn!(%node, version, reason = %answer.error, "proxy refused the config; it keeps its running one");
    }
}

struct Modules(Arc<ControlPlane>);

impl ServerStreamingService<ModuleRequest> for Modules {
    type Response = ModuleChunk;
    type ResponseStream = MessageStream<ModuleChunk>;
    type Future = BoxFuture<Self::ResponseStream>;

    fn call(&mut self, request: Request<ModuleRequest>) -> Self::Future {
        let plane = self.0.clone();
        Box::pin(async move {
            let digest = request.into_inner().digest;
            let bytes = plane.module_bytes(&digest).await.map_err(|e| Status::not_found(e.to_string()))?;
            let chunks: Vec<Result<ModuleChunk, Status>> = bytes
                .chunks(weft_proto::MODULE_CHUNK_BYTES)
                .map(|chunk| Ok(ModuleChunk { data: chunk.to_vec() }))
                .collect();
            Ok(Response::new(Box::pin(futures_util::stream::iter(chunks)) as MessageStream<ModuleChunk>))
        })
    }
}

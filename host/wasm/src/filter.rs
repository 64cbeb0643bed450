//! A configured filter: a few warm instances of its module (one per worker thread is enough,
//! since calls are short), and the per-request stream that runs its callbacks. A failing
//! instance is replaced with backoff; the request in flight gets the filter's failure policy,
//! and no other request or filter notices.

use crate::module::FilterModule;
use crate::stream::StreamState;
use crate::vm::{LocalResponse, Vm, VmError};
use crate::PluginInfo;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use weft_config::FailurePolicy;
use weft_proxy::chain::{FilterStream, HttpFilter, RequestDecisions, StreamInfo, Verdict};
use weft_proxy::http::{LocalReply, ProxyBody};
use weft_proxy::metrics::{FilterFailureLabels, Metrics, Name};

/// The first wait before replacing a failed instance; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Slot {
    vm: Option<Vm>,
    /// Bumped each time the instance is replaced: contexts of an older one are gone.
    generation: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
}

struct Shared {
    plugin: Arc<PluginInfo>,
    module: Arc<FilterModule>,
    policy: FailurePolicy,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    metrics: Arc<Metrics>,
    calls: AtomicU64,
    failures: AtomicU64,
}

pub struct WasmFilter {
    shared: Arc<Shared>,
}

impl WasmFilter {
    /// Starts `instances` instances now, so a broken module or a refused config is found at load.
    pub fn new(
        plugin: Arc<PluginInfo>,
        module: Arc<FilterModule>,
        policy: FailurePolicy,
        instances: usize,
        metrics: Arc<Metrics>,
    ) -> Result<WasmFilter, VmError> {
        let mut slots = Vec::with_capacity(instances.max(1));
        for _ in 0..instances.max(1) {
            let vm = Vm::start(&module, plugin.clone())?;
            slots.push(Mutex::new(Slot { vm: Some(vm), generation: 0, retry_at: None, backoff: FIRST_BACKOFF }));
        }
        let shared = Shared {
            plugin,
            module,
            policy,
            slots,
            next: AtomicUsize::new(0),
            metrics,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        };
        let shared = Arc::new(shared);
        spawn_ticker(&shared);
        Ok(WasmFilter { shared })
    }
}

impl HttpFilter for WasmFilter {
    fn start(&self, info: &Arc<StreamInfo>) -> Box<dyn FilterStream> {
        let slot = self.shared.next.fetch_add(1, Ordering::Relaxed) % self.shared.slots.len();
        Box::new(WasmStream {
            shared: self.shared.clone(),
            slot,
            context: None,
            state: Some(StreamState::new(info.clone())),
        })
    }

    fn status(&self) -> serde_json::Value {
        let shared = &self.shared;
        let memory: Vec<Option<usize>> =
            (0..shared.slots.len()).map(|i| shared.lock(i).vm.as_ref().map(Vm::memory_bytes)).collect();
        serde_json::json!({
            "module": shared.module.digest,
            "failure_policy": shared.policy,
            "instances": memory.iter().filter(|m| m.is_some()).count(),
            "instances_wanted": shared.slots.len(),
            "calls": shared.calls.load(Ordering::Relaxed),
            "failures": shared.failures.load(Ordering::Relaxed),
            "memory_bytes": memory,
            "memory_limit_bytes": shared.plugin.memory_limit,
        })
    }
}

impl Shared {
    fn lock(&self, slot: usize) -> MutexGuard<'_, Slot> {
        // A panic while holding the lock leaves a slot whose instance may be mid-call: replace it.
        self.slots[slot].lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            guard.vm = None;
            guard.generation += 1;
            guard
        })
    }

    /// The slot's instance, making a new one if the last failed and its backoff has passed.
    fn ready<'a>(&self, slot: &'a mut Slot) -> Option<&'a mut Vm> {
        if slot.vm.is_none() && slot.retry_at.is_none_or(|at| Instant::now() >= at) {
            match Vm::start(&self.module, self.plugin.clone()) {
                Ok(vm) => {
                    slot.vm = Some(vm);
                    slot.retry_at = None;
                    slot.backoff = FIRST_BACKOFF;
                    tracing::info!(filter = %self.plugin.name, "filter instance replaced");
                }
                Err(error) => {
                    self.count_failure("start");
                    tracing::error!(filter = %self.plugin.name, %error, "cannot replace the filter instance");
                    self.schedule_retry(slot);
                }
            }
        }
        slot.vm.as_mut()
    }

    fn count_failure(&self, reason: &'static str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let labels = FilterFailureLabels { filter: Name::new(&self.plugin.name), reason };
        self.metrics.filter_failures.get_or_create(&labels).inc();
    }

    fn schedule_retry(&self, slot: &mut Slot) {
        slot.retry_at = Some(Instant::now() + slot.backoff);
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
    }

    /// Discards a failed instance, replaces it at once (so the next request finds a fresh one),
    /// and answers for the request per the failure policy. Only an instance that cannot even be
    /// made again waits out a growing backoff.
    fn failed(&self, slot: &mut Slot, error: &VmError) -> Verdict {
        self.count_failure(if matches!(error, VmError::Deadline(_)) { "deadline" } else { "trap" });
        tracing::error!(filter = %self.plugin.name, %error, policy = ?self.policy, "filter failed; its instance is replaced");
        slot.vm = None;
        slot.generation += 1;
        slot.retry_at = None;
        let _ = self.ready(slot);
        self.policy_verdict()
    }

    fn policy_verdict(&self) -> Verdict {
        match self.policy {
            FailurePolicy::FailClosed => Verdict::Respond(LocalReply::FilterFailed.into_response()),
            FailurePolicy::FailOpen => Verdict::Continue,
        }
    }
}

/// How often the ticker looks for due timers; periods are honoured to this resolution.
const TICK_RESOLUTION: Duration = Duration::from_millis(10);
/// How often it looks when no instance has asked for ticks.
const IDLE_TICK_CHECK: Duration = Duration::from_millis(100);

/// Calls `proxy_on_tick` on each instance whose root asked for it, at its period. The thread
/// ends by itself once the filter is gone (after a reload removed it).
fn spawn_ticker(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let slots = shared.slots.len();
    let name = format!("weft-tick-{}", shared.plugin.name);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut due: Vec<Option<Instant>> = vec![None; slots];
        loop {
            let Some(shared) = weak.upgrade() else { return };
            let mut sleep = IDLE_TICK_CHECK;
            for (index, next) in due.iter_mut().enumerate() {
                let mut slot = shared.lock(index);
                let Some(period) = slot.vm.as_ref().and_then(Vm::tick_period) else {
                    *next = None;
                    continue;
                };
                sleep = TICK_RESOLUTION;
                let now = Instant::now();
                if now < *next.get_or_insert(now + period) {
                    continue;
                }
                *next = Some(now + period);
                let result = slot.vm.as_mut().map_or(Ok(()), Vm::tick);
                if let Err(error) = result {
                    let _ = shared.failed(&mut slot, &error);
                }
            }
            drop(shared);
            std::thread::sleep(sleep);
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the filter's timer thread; its proxy_on_tick will not run");
    }
}

/// One request inside one instance.
struct WasmStream {
    shared: Arc<Shared>,
    slot: usize,
    /// (instance generation, context id) once the context exists.
    context: Option<(u64, u32)>,
    state: Option<StreamState>,
}

impl WasmStream {
    /// Runs a headers callback with `install`/`remove` moving the message into and out of the
    /// state the hostcalls see.
    fn run(
        &mut self,
        response: bool,
        header_count: impl FnOnce(&StreamState) -> usize,
        install: impl FnOnce(&mut StreamState),
        remove: impl FnOnce(&mut StreamState),
    ) -> Outcome {
        let shared = self.shared.clone();
        let mut slot = shared.lock(self.slot);
        let generation = slot.generation;
        let Some(vm) = shared.ready(&mut slot) else { return Outcome::Failed(shared.policy_verdict()) };
        let context = match self.context {
            Some((g, id)) if g == generation => id,
            Some(_) => return Outcome::Failed(shared.policy_verdict()),
            None => match vm.create_context() {
                Ok(id) => {
                    self.context = Some((generation, id));
                    id
                }
                Err(error) => return Outcome::Failed(shared.failed(&mut slot, &error)),
            },
        };
        let Some(mut state) = self.state.take() else { return Outcome::Failed(shared.policy_verdict()) };
        install(&mut state);
        shared.calls.fetch_add(1, Ordering::Relaxed);
        let count = header_count(&state) as u32;
        let (mut state, result) = vm.on_headers(response, context, count, state);
        remove(&mut state);
        self.state = Some(state);
        match result {
            Ok((_action, local)) => Outcome::Done(local),
            Err(error) => {
                self.context = None;
                Outcome::Failed(shared.failed(&mut slot, &error))
            }
        }
    }
}

fn placeholder_request() -> http::request::Parts {
    http::Request::new(()).into_parts().0
}

fn placeholder_response() -> http::response::Parts {
    http::Response::new(()).into_parts().0
}

impl FilterStream for WasmStream {
    fn on_request_headers(&mut self, request: &mut http::request::Parts, decisions: &mut RequestDecisions) -> Verdict {
        let taken = std::mem::replace(request, placeholder_request());
        let chosen = decisions.upstream_cluster.as_ref().map(|c| c.as_str().to_owned());
        let mut back = None;
        let outcome = self.run(
            false,
            |s| s.count(crate::abi::MapType::RequestHeaders),
            |s| {
                s.request = Some(taken);
                if chosen.is_some() {
                    s.upstream_cluster = chosen;
                }
            },
            |s| back = s.request.take(),
        );
        if let Some(parts) = back {
            *request = parts;
        }
        if let Some(cluster) = self.state.as_ref().and_then(|s| s.upstream_cluster.as_deref()) {
            if decisions.upstream_cluster.as_ref().is_none_or(|c| c.as_str() != cluster) {
                decisions.upstream_cluster = Some(Name::new(cluster));
            }
        }
        verdict(outcome)
    }

    fn on_response_headers(&mut self, response: &mut http::response::Parts) -> Verdict {
        let taken = std::mem::replace(response, placeholder_response());
        let mut back = None;
        let outcome = self.run(
            true,
            |s| s.count(crate::abi::MapType::ResponseHeaders),
            |s| s.response = Some(taken),
            |s| back = s.response.take(),
        );
        if let Some(parts) = back {
            *response = parts;
        }
        verdict(outcome)
    }
}

/// How a callback went: it ran (maybe asking for a local response), or the filter failed and
/// the failure policy decided.
enum Outcome {
    Done(Option<LocalResponse>),
    Failed(Verdict),
}

fn verdict(outcome: Outcome) -> Verdict {
    match outcome {
        Outcome::Done(Some(local)) => Verdict::Respond(local_response(local)),
        Outcome::Done(None) => Verdict::Continue,
        Outcome::Failed(verdict) => verdict,
    }
}

impl Drop for WasmStream {
    fn drop(&mut self) {
        let Some((generation, context)) = self.context else { return };
        let shared = self.shared.clone();
        let mut slot = shared.lock(self.slot);
        if slot.generation != generation {
            return;
        }
        if let Some(vm) = slot.vm.as_mut() {
            if let Err(error) = vm.finish_context(context, self.state.take()) {
                let _ = shared.failed(&mut slot, &error);
            }
        }
    }
}

/// The response a filter asked for. A gRPC one is trailers-only: `grpc-status` and
/// `grpc-message` in the headers, as gRPC clients expect from a proxy.
fn local_response(local: LocalResponse) -> Response<ProxyBody> {
    let grpc = local.grpc_status >= 0;
    let body = if grpc { ProxyBody::empty() } else { ProxyBody::full(local.body.clone()) };
    let mut response = Response::new(body);
    *response.status_mut() = if grpc {
        StatusCode::OK
    } else {
        StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    };
    let headers = response.headers_mut();
    for (name, value) in &local.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    if grpc {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(local.grpc_status));
        if let Ok(message) = HeaderValue::from_bytes(&local.body) {
            if !local.body.is_empty() {
                headers.insert("grpc-message", message);
            }
        }
    }
    response
}

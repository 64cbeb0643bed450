//! A configured filter: a few warm instances of its module (one per worker thread is enough,
//! since calls are short), the per-request stream that runs its callbacks, and the callouts,
//! timers and queue events that reach an instance outside a request. A failing instance is
//! replaced with backoff; the request in flight gets the filter's failure policy, and no other
//! request or filter notices.

use crate::callout::{self, Callout, CalloutReply};
use crate::module::FilterModule;
use crate::queues::{FilterEvent, InstanceEvents};
use crate::stream::StreamState;
use crate::vm::{LocalResponse, ParkOutcome, Phase, Resumption, Vm, VmError};
use crate::PluginInfo;
use bytes::BytesMut;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use weft_config::FailurePolicy;
use weft_proxy::chain::{
    ConnectionFilter, DataVerdict, Direction, FilterStream, HttpFilter, Message, Resumed, StreamInfo, Verdict,
};
use weft_proxy::http::{LocalReply, ProxyBody};
use weft_proxy::metrics::{FilterCalloutLabels, FilterFailureLabels, Metrics, Name};

/// The first wait before replacing a failed instance; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Slot {
    index: usize,
    vm: Option<Vm>,
    /// Bumped each time the instance is replaced: contexts of an older one are gone.
    generation: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// States of finished streams, kept for the next ones: a request reuses one instead of
    /// allocating its own. Boxed: the boxes are what is reused, handed to the instance as they are.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<StreamState>>,
}

/// How many finished streams' states a slot keeps for reuse (about the requests in flight on it).
const SPARE_STATES: usize = 64;

struct Shared {
    plugin: Arc<PluginInfo>,
    module: Arc<FilterModule>,
    policy: FailurePolicy,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    metrics: Arc<Metrics>,
    calls: AtomicU64,
    failures: AtomicU64,
    /// Where callouts run (the proxy's runtime; `None` outside one, in unit tests).
    runtime: Option<tokio::runtime::Handle>,
    /// Queue events for the instances, handled on the filter's event thread.
    events: Sender<FilterEvent>,
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
        let (events, received) = std::sync::mpsc::channel();
        let mut slots = Vec::with_capacity(instances.max(1));
        for index in 0..instances.max(1) {
            let owner = InstanceEvents { events: Some(events.clone()), slot: index, generation: 0 };
            let vm = Vm::start(&module, plugin.clone(), owner)?;
            let slot =
                Slot { index, vm: Some(vm), generation: 0, retry_at: None, backoff: FIRST_BACKOFF, spare: Vec::new() };
            slots.push(Mutex::new(slot));
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
            runtime: tokio::runtime::Handle::try_current().ok(),
            events,
        };
        let shared = Arc::new(shared);
        spawn_event_thread(&shared, received);
        Ok(WasmFilter { shared })
    }
}

impl HttpFilter for WasmFilter {
    fn start(&self, info: &Arc<StreamInfo>) -> Box<dyn FilterStream> {
        Box::new(WasmStream::new(&self.shared, info))
    }

    fn start_connection(&self, info: &Arc<StreamInfo>) -> Box<dyn ConnectionFilter> {
        Box::new(WasmStream::new(&self.shared, info))
    }

    fn status(&self) -> serde_json::Value {
        let shared = &self.shared;
        let (mut paused, mut callouts) = (0, 0);
        let memory: Vec<Option<usize>> = (0..shared.slots.len())
            .map(|i| {
                let slot = shared.lock(i);
                let vm = slot.vm.as_ref()?;
                let (parked, in_flight) = vm.waiting();
                (paused, callouts) = (paused + parked, callouts + in_flight);
                Some(vm.memory_bytes())
            })
            .collect();
        serde_json::json!({
            "module": shared.module.digest,
            "failure_policy": shared.policy,
            "instances": memory.iter().filter(|m| m.is_some()).count(),
            "instances_wanted": shared.slots.len(),
            "calls": shared.calls.load(Ordering::Relaxed),
            "failures": shared.failures.load(Ordering::Relaxed),
            "memory_bytes": memory,
            "paused_requests": paused,
            "callouts_in_flight": callouts,
            "memory_limit_bytes": shared.plugin.memory_limit,
        })
    }
}

impl Shared {
    #[inline]
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
    #[inline]
    fn ready<'a>(&self, slot: &'a mut Slot) -> Option<&'a mut Vm> {
        if slot.vm.is_none() {
            self.replace(slot);
        }
        slot.vm.as_mut()
    }

    /// Makes the slot's instance again (it has none), unless its backoff is still running.
    #[cold]
    fn replace(&self, slot: &mut Slot) {
        if slot.retry_at.is_none_or(|at| Instant::now() >= at) {
            let owner =
                InstanceEvents { events: Some(self.events.clone()), slot: slot.index, generation: slot.generation };
            match Vm::start(&self.module, self.plugin.clone(), owner) {
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

    /// Discards a failed instance and replaces it at once (so the next request finds a fresh
    /// one); the caller answers for its request per the failure policy. Only an instance that
    /// cannot even be made again waits out a growing backoff.
    fn failed(&self, slot: &mut Slot, error: &VmError) {
        self.count_failure(if matches!(error, VmError::Deadline(_)) { "deadline" } else { "trap" });
        tracing::error!(filter = %self.plugin.name, %error, policy = ?self.policy, "filter failed; its instance is replaced");
        slot.vm = None;
        slot.generation += 1;
        slot.retry_at = None;
        let _ = self.ready(slot);
    }

    fn policy_verdict(&self) -> Verdict {
        match self.policy {
            FailurePolicy::FailClosed => Verdict::Respond(Box::new(LocalReply::FilterFailed.into_response())),
            FailurePolicy::FailOpen => Verdict::Continue,
        }
    }

    /// The failure policy for a connection: fail_closed closes it, fail_open lets data pass.
    fn policy_data(&self) -> DataVerdict {
        match self.policy {
            FailurePolicy::FailClosed => DataVerdict::Close,
            FailurePolicy::FailOpen => DataVerdict::Continue,
        }
    }

    /// Locks the instance a context lives in, making the context on first use. `None` when the
    /// instance cannot serve it now (it failed and is not back yet, or the context was in an
    /// instance since replaced).
    fn enter(&self, index: usize, context: &mut Option<(u64, u32)>) -> Option<(MutexGuard<'_, Slot>, u32)> {
        let mut slot = self.lock(index);
        let generation = slot.generation;
        let vm = self.ready(&mut slot)?;
        let id = match *context {
            Some((g, id)) if g == generation => id,
            Some(_) => return None,
            None => match vm.create_context() {
                Ok(id) => {
                    *context = Some((generation, id));
                    id
                }
                Err(error) => {
                    self.failed(&mut slot, &error);
                    return None;
                }
            },
        };
        Some((slot, id))
    }

    /// Ends a context: its log and clean-up callbacks, unless its instance is gone. The stream's
    /// state is kept for a later stream.
    fn finish(&self, index: usize, context: Option<(u64, u32)>, state: Option<Box<StreamState>>) {
        let Some((generation, context)) = context else { return };
        let mut slot = self.lock(index);
        if slot.generation != generation {
            return;
        }
        let Some(vm) = slot.vm.as_mut() else { return };
        match vm.finish_context(context, state) {
            Ok(Some(state)) if slot.spare.len() < SPARE_STATES => slot.spare.push(state),
            Ok(_) => {}
            Err(error) => self.failed(&mut slot, &error),
        }
    }
}

/// How often the event thread looks for due timers; periods are honoured to this resolution.
const TICK_RESOLUTION: Duration = Duration::from_millis(10);
/// How often it looks when no instance has asked for ticks.
const IDLE_TICK_CHECK: Duration = Duration::from_millis(100);

/// The filter's thread for what happens outside requests: `proxy_on_tick` on each instance
/// whose root asked for it, at its period, and `proxy_on_queue_ready` when a queue it registered
/// has data. It ends by itself once the filter is gone (after a reload removed it).
fn spawn_event_thread(shared: &Arc<Shared>, events: Receiver<FilterEvent>) {
    let weak = Arc::downgrade(shared);
    let slots = shared.slots.len();
    let name = format!("weft-filter-{}", shared.plugin.name);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut due: Vec<Option<Instant>> = vec![None; slots];
        let mut sleep = IDLE_TICK_CHECK;
        loop {
            let event = events.recv_timeout(sleep);
            let Some(shared) = weak.upgrade() else { return };
            match event {
                Ok(FilterEvent::QueueReady { slot, generation, queue }) => shared.queue_ready(slot, generation, queue),
                Ok(FilterEvent::TicksChanged) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            sleep = shared.run_due_ticks(&mut due);
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the filter's event thread; its timers and queues will not run");
    }
}

impl Shared {
    /// Ticks the instances whose period has come; returns how long to wait before looking again.
    fn run_due_ticks(self: &Arc<Self>, due: &mut [Option<Instant>]) -> Duration {
        let mut sleep = IDLE_TICK_CHECK;
        for (index, next) in due.iter_mut().enumerate() {
            let mut slot = self.lock(index);
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
            let generation = slot.generation;
            let Some(vm) = slot.vm.as_mut() else { continue };
            match vm.tick() {
                Ok(()) => dispatch(self, index, generation, vm),
                Err(error) => {
                    self.failed(&mut slot, &error);
                }
            }
        }
        sleep
    }

    fn queue_ready(self: &Arc<Self>, index: usize, generation: u64, queue: u32) {
        if index >= self.slots.len() {
            return;
        }
        let mut slot = self.lock(index);
        if slot.generation != generation {
            return;
        }
        let Some(vm) = slot.vm.as_mut() else { return };
        match vm.queue_ready(queue) {
            Ok(()) => dispatch(self, index, generation, vm),
            Err(error) => {
                self.failed(&mut slot, &error);
            }
        }
    }
}

/// Sends the callouts an instance's last calls asked for. Each answer is delivered to the
/// instance that asked, unless it was replaced meanwhile (its requests got their failure policy).
/// Most calls ask for none: the check is inline, the sending out of line.
#[inline]
fn dispatch(shared: &Arc<Shared>, index: usize, generation: u64, vm: &mut Vm) {
    if vm.has_outbox() {
        send_callouts(shared, index, generation, vm.take_outbox());
    }
}

#[inline(never)]
fn send_callouts(shared: &Arc<Shared>, index: usize, generation: u64, outbox: Vec<Callout>) {
    let (Some(runtime), Some(callouts)) = (shared.runtime.as_ref(), shared.plugin.callouts.as_ref()) else {
        tracing::error!(filter = %shared.plugin.name, "callouts cannot be sent outside the proxy's runtime");
        return;
    };
    for callout in outbox {
        let sending = callouts.send(&callout.cluster, callout.request, callout.timeout);
        let (shared, token, grpc, cluster) = (shared.clone(), callout.token, callout.grpc, callout.cluster);
        runtime.spawn(async move {
            let result = sending.await;
            if let Err(reason) = &result {
                tracing::debug!(filter = %shared.plugin.name, %cluster, %reason, "callout failed");
            }
            let labels = FilterCalloutLabels {
                filter: Name::new(&shared.plugin.name),
                cluster: Name::new(&cluster),
                result: if result.is_ok() { "answered" } else { "failed" },
            };
            shared.metrics.filter_callouts.get_or_create(&labels).inc();
            let mut slot = shared.lock(index);
            if slot.generation != generation {
                return;
            }
            let Some(vm) = slot.vm.as_mut() else { return };
            let delivered = if grpc {
                vm.deliver_grpc(token, callout::grpc_outcome(result))
            } else {
                vm.deliver_http(token, result.ok().map(CalloutReply::from))
            };
            match delivered {
                Ok(()) => dispatch(&shared, index, generation, vm),
                Err(error) => {
                    shared.failed(&mut slot, &error);
                }
            }
        });
    }
}

/// One stream inside one instance: an HTTP request, or a TCP connection (a network filter).
struct WasmStream {
    shared: Arc<Shared>,
    slot: usize,
    /// (instance generation, context id) once the context exists.
    context: Option<(u64, u32)>,
    /// The stream's state between callbacks (parked in the instance while a request waits).
    state: Option<Box<StreamState>>,
    /// The facts the state is made from on the first callback (`None` once it is made).
    info: Option<Arc<StreamInfo>>,
}

impl WasmStream {
    /// A stream in the next instance, round robin: instances share the load.
    fn new(shared: &Arc<Shared>, info: &Arc<StreamInfo>) -> Self {
        let slot = shared.next.fetch_add(1, Ordering::Relaxed) % shared.slots.len();
        WasmStream { shared: shared.clone(), slot, context: None, state: None, info: Some(info.clone()) }
    }

    /// The state for this callback: the stream's own (`state`), or on its first callback a spare
    /// one of the slot (or a new one) made from `info`. `None` while the request is parked in the
    /// instance. (Not a method: the caller holds the slot locked through `self.shared`.)
    fn take_state(
        state: &mut Option<Box<StreamState>>,
        info: &mut Option<Arc<StreamInfo>>,
        slot: &mut Slot,
    ) -> Option<Box<StreamState>> {
        if let Some(state) = state.take() {
            return Some(state);
        }
        let info = info.take()?;
        Some(match slot.spare.pop() {
            Some(mut state) => {
                *state = StreamState::new(info);
                state
            }
            None => Box::new(StreamState::new(info)),
        })
    }
}

fn placeholder_request() -> http::request::Parts {
    http::Request::new(()).into_parts().0
}

fn placeholder_response() -> http::response::Parts {
    http::Response::new(()).into_parts().0
}

fn phase_of(message: &Message<'_>) -> Phase {
    match message {
        Message::RequestHeaders(..) => Phase::RequestHeaders,
        Message::RequestBody(_) => Phase::RequestBody,
        Message::RequestTrailers(_) => Phase::RequestTrailers,
        Message::ResponseHeaders(_) => Phase::ResponseHeaders,
        Message::ResponseBody(_) => Phase::ResponseBody,
        Message::ResponseTrailers(_) => Phase::ResponseTrailers,
    }
}

/// Moves the message into the state the hostcalls see; returns the callback's size argument
/// (header count or body length).
fn install(state: &mut StreamState, message: &mut Message<'_>) -> u32 {
    use crate::abi::MapType;
    let count = match message {
        Message::RequestHeaders(parts, decisions) => {
            state.request = Some(std::mem::replace(*parts, placeholder_request()));
            if let Some(chosen) = &decisions.upstream_cluster {
                state.upstream_cluster = Some(chosen.as_str().to_owned());
            }
            state.request_timeout = decisions.request_timeout;
            state.count(MapType::RequestHeaders)
        }
        Message::RequestBody(body) => {
            state.request_body = Some(std::mem::take(*body));
            state.request_body.as_ref().map_or(0, |b| b.len())
        }
        Message::RequestTrailers(trailers) => {
            state.request_trailers = Some(std::mem::take(*trailers));
            state.count(MapType::RequestTrailers)
        }
        Message::ResponseHeaders(parts) => {
            state.response = Some(std::mem::replace(*parts, placeholder_response()));
            state.count(MapType::ResponseHeaders)
        }
        Message::ResponseBody(body) => {
            state.response_body = Some(std::mem::take(*body));
            state.response_body.as_ref().map_or(0, |b| b.len())
        }
        Message::ResponseTrailers(trailers) => {
            state.response_trailers = Some(std::mem::take(*trailers));
            state.count(MapType::ResponseTrailers)
        }
    };
    count as u32
}

/// Moves the (maybe edited) message back out of the state, with the filter's routing choice.
fn take_back(state: &mut StreamState, message: &mut Message<'_>) {
    match message {
        Message::RequestHeaders(parts, decisions) => {
            if let Some(request) = state.request.take() {
                **parts = request;
            }
            if let Some(cluster) = state.upstream_cluster.as_deref() {
                if decisions.upstream_cluster.as_ref().is_none_or(|c| c.as_str() != cluster) {
                    decisions.upstream_cluster = Some(Name::new(cluster));
                }
            }
            decisions.request_timeout = state.request_timeout;
        }
        Message::RequestBody(body) => **body = state.request_body.take().unwrap_or_default(),
        Message::RequestTrailers(trailers) => **trailers = state.request_trailers.take().unwrap_or_default(),
        Message::ResponseHeaders(parts) => {
            if let Some(response) = state.response.take() {
                **parts = response;
            }
        }
        Message::ResponseBody(body) => **body = state.response_body.take().unwrap_or_default(),
        Message::ResponseTrailers(trailers) => **trailers = state.response_trailers.take().unwrap_or_default(),
    }
}

impl FilterStream for WasmStream {
    fn on(&mut self, mut message: Message<'_>, end_of_stream: bool) -> Verdict {
        let phase = phase_of(&message);
        // Borrowed, not cloned: the fields used below are disjoint from it.
        let shared = &self.shared;
        let Some((mut slot, context)) = shared.enter(self.slot, &mut self.context) else {
            return shared.policy_verdict();
        };
        let generation = slot.generation;
        let Some(mut state) = WasmStream::take_state(&mut self.state, &mut self.info, &mut slot) else {
            return shared.policy_verdict();
        };
        let Some(vm) = slot.vm.as_mut() else {
            self.state = Some(state);
            return shared.policy_verdict();
        };
        let size = install(&mut state, &mut message);
        shared.calls.fetch_add(1, Ordering::Relaxed);
        let (mut state, result) = vm.run_phase(phase, context, size, end_of_stream, state);
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                take_back(&mut state, &mut message);
                self.state = Some(state);
                self.context = None;
                shared.failed(&mut slot, &error);
                return shared.policy_verdict();
            }
        };
        dispatch(shared, self.slot, generation, vm);
        let holds_body_back = phase.is_body() && !end_of_stream;
        if outcome.pause && outcome.local.is_none() && !outcome.closed && !holds_body_back {
            // Wait for the filter to resume the request; it stays in the instance meanwhile.
            let (wake, woken) = tokio::sync::oneshot::channel::<Resumption>();
            vm.park(context, state, wake);
            return Verdict::Pause(Box::pin(async move { Box::new(woken.await.ok()) as Resumed }));
        }
        take_back(&mut state, &mut message);
        self.state = Some(state);
        match (outcome.local, outcome.closed, outcome.pause) {
            (Some(local), _, _) => Verdict::Respond(Box::new(local_response(local))),
            (None, true, _) => Verdict::Respond(Box::new(closed_response())),
            // A body phase that pauses before the end holds its data back.
            (None, false, true) => Verdict::Buffer,
            (None, false, false) => Verdict::Continue,
        }
    }

    fn resume(&mut self, mut message: Message<'_>, resumed: Resumed) -> Verdict {
        let resumption = resumed.downcast::<Option<Resumption>>().ok().and_then(|boxed| *boxed);
        // The instance always hands a parked request back; without it the request is lost.
        let Some(Resumption { mut state, outcome }) = resumption else {
            return Verdict::Respond(Box::new(LocalReply::FilterFailed.into_response()));
        };
        take_back(&mut state, &mut message);
        self.state = Some(state);
        match outcome {
            ParkOutcome::Continue => Verdict::Continue,
            ParkOutcome::Respond(local) => Verdict::Respond(Box::new(local_response(local))),
            ParkOutcome::Close => Verdict::Respond(Box::new(closed_response())),
            ParkOutcome::Failed => {
                self.context = None;
                self.shared.policy_verdict()
            }
        }
    }
}

impl Drop for WasmStream {
    fn drop(&mut self) {
        self.shared.finish(self.slot, self.context, self.state.take());
    }
}

impl WasmStream {
    /// Runs a connection callback, with `data` (the client's or the upstream's) readable and
    /// editable by the filter.
    fn run_connection(&mut self, phase: Phase, mut data: Option<&mut BytesMut>, end_of_stream: bool) -> DataVerdict {
        // Borrowed, not cloned: the fields used below are disjoint from it.
        let shared = &self.shared;
        let Some((mut slot, context)) = shared.enter(self.slot, &mut self.context) else {
            return shared.policy_data();
        };
        let generation = slot.generation;
        let Some(mut state) = WasmStream::take_state(&mut self.state, &mut self.info, &mut slot) else {
            return shared.policy_data();
        };
        let Some(vm) = slot.vm.as_mut() else {
            self.state = Some(state);
            return shared.policy_data();
        };
        fn field(state: &mut StreamState, phase: Phase) -> &mut Option<BytesMut> {
            if phase == Phase::UpstreamData {
                &mut state.upstream_data
            } else {
                &mut state.downstream_data
            }
        }
        let size = data.as_ref().map_or(0, |d| d.len() as u32);
        if let Some(data) = data.as_mut() {
            *field(&mut state, phase) = Some(std::mem::take(*data));
        }
        shared.calls.fetch_add(1, Ordering::Relaxed);
        let (mut state, result) = vm.run_phase(phase, context, size, end_of_stream, state);
        if let Some(data) = data {
            *data = field(&mut state, phase).take().unwrap_or_default();
        }
        self.state = Some(state);
        match result {
            Err(error) => {
                self.context = None;
                shared.failed(&mut slot, &error);
                shared.policy_data()
            }
            Ok(outcome) => {
                dispatch(shared, self.slot, generation, vm);
                match (outcome.closed, outcome.pause) {
                    (true, _) => DataVerdict::Close,
                    (false, true) => DataVerdict::Buffer,
                    (false, false) => DataVerdict::Continue,
                }
            }
        }
    }
}

impl ConnectionFilter for WasmStream {
    fn on_new_connection(&mut self) -> DataVerdict {
        self.run_connection(Phase::NewConnection, None, false)
    }

    fn on_data(&mut self, direction: Direction, data: &mut BytesMut, end_of_stream: bool) -> DataVerdict {
        let phase = if direction == Direction::Request { Phase::DownstreamData } else { Phase::UpstreamData };
        self.run_connection(phase, Some(data), end_of_stream)
    }

    fn on_close(&mut self, direction: Direction) {
        let phase = if direction == Direction::Request { Phase::DownstreamClose } else { Phase::UpstreamClose };
        self.run_connection(phase, None, true);
    }
}

/// `proxy_close_stream`: the client's stream is reset (a 503 head, then the stream breaks).
fn closed_response() -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::reset());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
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

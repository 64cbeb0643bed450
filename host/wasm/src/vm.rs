//! One warm instance of a filter module: its store, its exports, its root context. Requests are
//! contexts inside it (never an instance per request). A call that traps, runs past its deadline
//! or outgrows its memory poisons the instance; the filter replaces it.
//!
//! A request whose filter paused is parked here, with its message, so the callbacks that later
//! resume it (a callout's response, a timer, a queue) can still read and edit it.

use crate::callout::{Callout, CalloutReply, GrpcOutcome};
use crate::module::FilterModule;
use crate::queues::InstanceEvents;
use crate::stream::StreamState;
use crate::PluginInfo;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;
use wasmtime::{Memory, Store, StoreLimits, StoreLimitsBuilder, TypedFunc};

/// What hostcalls reach: the instance's memory and allocator, the plugin, the request whose
/// callback is running (moved in for the call, moved out after) and the paused requests.
pub struct HostState {
    pub limits: StoreLimits,
    pub memory: Option<Memory>,
    /// The guest's allocator (in an `Arc`: hostcalls clone it to call it with the store).
    pub allocate: Option<Arc<TypedFunc<u32, u32>>>,
    /// Reused by hostcalls that hand the guest a value, so they allocate nothing per call.
    pub scratch: Vec<u8>,
    pub plugin: Arc<PluginInfo>,
    /// The request of the context whose callback runs (`current`).
    /// Boxed: it travels in and out of every callback, and a pointer moves cheaply.
    pub stream: Option<Box<StreamState>>,
    /// The context whose callback runs (0: none, e.g. during a callout's response).
    pub current: u32,
    /// The context hostcalls act on; the guest may switch it (`proxy_set_effective_context`).
    pub effective: u32,
    /// A local response the running callback asked for, for its own request.
    pub local_response: Option<LocalResponse>,
    /// The running callback resumed its own request (`proxy_continue_stream`).
    pub continued: bool,
    /// The running callback closed its own request (`proxy_close_stream`).
    pub closed: bool,
    /// Requests waiting for their filter to resume them, by context.
    pub parked: HashMap<u32, Parked>,
    /// How often the root context wants `proxy_on_tick` (set by the guest; `None`: never).
    pub tick_period: Option<std::time::Duration>,
    /// Callouts asked for during the last call, to be sent once it returns.
    pub outbox: Vec<Callout>,
    /// Callouts in flight: token → the context that made it.
    pub callouts: HashMap<u32, u32>,
    pub next_token: u32,
    /// The callout response being delivered.
    pub callout_reply: Option<CalloutReply>,
    /// The last gRPC callout's message and status, for `proxy_get_buffer_bytes`/`proxy_get_status`.
    pub grpc_message: Vec<u8>,
    pub grpc_status: (u32, String),
    /// Who gets told when a queue this instance registered has data.
    pub instance_events: InstanceEvents,
}

/// `proxy_send_local_response`'s arguments, applied when the callback returns.
#[derive(Debug)]
pub struct LocalResponse {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// -1 when the response is not gRPC.
    pub grpc_status: i32,
}

/// How a paused request goes on.
pub enum ParkOutcome {
    Continue,
    Respond(LocalResponse),
    Close,
    /// The instance failed (or went away) while the request waited.
    Failed,
}

/// What a paused request gets back when it is resumed: its state (with its message) and how
/// it goes on.
pub struct Resumption {
    pub state: Box<StreamState>,
    pub outcome: ParkOutcome,
}

pub struct Parked {
    pub state: Box<StreamState>,
    pub outcome: Option<ParkOutcome>,
    pub wake: oneshot::Sender<Resumption>,
}

impl HostState {
    /// The request hostcalls act on now, whether its callback runs or it is parked.
    pub fn stream(&self) -> Option<&StreamState> {
        if self.effective == self.current {
            self.stream.as_deref()
        } else {
            self.parked.get(&self.effective).map(|p| &*p.state)
        }
    }

    pub fn stream_mut(&mut self) -> Option<&mut StreamState> {
        if self.effective == self.current {
            self.stream.as_deref_mut()
        } else {
            self.parked.get_mut(&self.effective).map(|p| &mut *p.state)
        }
    }

    /// Ends the effective request's wait (or, for the running one, its phase) with `outcome`.
    /// The first decision holds.
    pub fn decide(&mut self, outcome: ParkOutcome) {
        if self.effective == self.current && self.stream.is_some() {
            match outcome {
                ParkOutcome::Respond(local) => {
                    self.local_response.get_or_insert(local);
                }
                ParkOutcome::Close => self.closed = true,
                ParkOutcome::Continue => self.continued = true,
                ParkOutcome::Failed => {}
            }
        } else if let Some(parked) = self.parked.get_mut(&self.effective) {
            parked.outcome.get_or_insert(outcome);
        }
    }
}

/// Why a call into the guest failed. Each makes the instance unusable.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("ran past its {0} ms time limit")]
    Deadline(u64),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("refused its configuration (proxy_on_configure returned false)")]
    ConfigureRefused,
    #[error("failed to start (proxy_on_vm_start returned false)")]
    StartRefused,
    #[error("cannot be instantiated: {0}")]
    Instantiate(String),
}

/// The callbacks of a request (HTTP) or connection (network filter) context.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    NewConnection,
    DownstreamData,
    UpstreamData,
    DownstreamClose,
    UpstreamClose,
}

impl Phase {
    pub fn is_body(self) -> bool {
        matches!(self, Phase::RequestBody | Phase::ResponseBody)
    }
}

/// What a phase callback decided.
pub struct PhaseOutcome {
    pub pause: bool,
    pub local: Option<LocalResponse>,
    pub closed: bool,
}

/// A phase's export, by its signature.
enum Entry<'a> {
    /// (context, header count or data size, end of stream) → action.
    Sized(&'a TypedFunc<(u32, u32, u32), u32>),
    /// (context, trailer count) → action.
    Counted(&'a TypedFunc<(u32, u32), u32>),
    /// (context) → action.
    Connection(&'a TypedFunc<u32, u32>),
    /// (context, peer type), no answer.
    Notice(&'a TypedFunc<(u32, u32), ()>),
}

type Callback3 = Option<TypedFunc<(u32, u32, u32), u32>>;
type Callback2 = Option<TypedFunc<(u32, u32), u32>>;
type Callback1 = Option<TypedFunc<u32, u32>>;
/// A callback that only informs the guest: (context, peer type).
type Notice = Option<TypedFunc<(u32, u32), ()>>;
/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponse = Option<TypedFunc<(u32, u32, u32, u32, u32), ()>>;

struct Exports {
    on_context_create: TypedFunc<(u32, u32), ()>,
    on_request_headers: Callback3,
    on_request_body: Callback3,
    on_request_trailers: Callback2,
    on_response_headers: Callback3,
    on_response_body: Callback3,
    on_response_trailers: Callback2,
    on_new_connection: Callback1,
    on_downstream_data: Callback3,
    on_upstream_data: Callback3,
    on_downstream_close: Notice,
    on_upstream_close: Notice,
    on_log: Option<TypedFunc<u32, ()>>,
    on_done: Option<TypedFunc<u32, u32>>,
    on_delete: Option<TypedFunc<u32, ()>>,
    on_tick: Option<TypedFunc<u32, ()>>,
    on_queue_ready: Option<TypedFunc<(u32, u32), ()>>,
    on_http_call_response: CallResponse,
    on_grpc_receive: Option<TypedFunc<(u32, u32, u32), ()>>,
    on_grpc_close: Option<TypedFunc<(u32, u32, u32), ()>>,
}

pub struct Vm {
    store: Store<HostState>,
    /// Borrowed by a call next to the store it runs on (a clone of a `TypedFunc` would take the
    /// engine's type registry).
    exports: Exports,
    root_context: u32,
    next_context: u32,
    limits: CallLimits,
    /// Deadlines hold only while the epoch advances, which it does while this lives (the VM
    /// may outlive the module it came from, through a config change).
    _ticking: crate::engine::Ticking,
}

/// A top-level call's time limit: in epoch ticks for the store, in milliseconds for the error.
#[derive(Clone, Copy)]
struct CallLimits {
    deadline_ticks: u64,
    time_limit_ms: u64,
}

/// Runs one top-level call into the guest under the per-call deadline, then wakes the paused
/// requests the call resumed. A free function, so that a call can borrow an export of the
/// [`Vm`] while the store it runs on is borrowed mutably.
fn call<R>(
    store: &mut Store<HostState>,
    limits: CallLimits,
    f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
) -> Result<R, VmError> {
    store.set_epoch_deadline(limits.deadline_ticks);
    let result = f(store).map_err(|error| match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => VmError::Deadline(limits.time_limit_ms),
        _ => VmError::Trap(format!("{error:#}")),
    })?;
    // Most calls resume nobody: the check stays here, the work out of line.
    if !store.data().parked.is_empty() {
        wake_resumed(store.data_mut());
    }
    Ok(result)
}

/// Points hostcalls at `effective`, in the callback of `current` (0: no request's callback runs).
fn set_current(host: &mut HostState, current: u32, effective: u32) {
    host.current = current;
    host.effective = effective;
}

/// Hands each parked request its filter resumed back to its waiting request path.
#[cold]
fn wake_resumed(host: &mut HostState) {
    let parked = &mut host.parked;
    let resumed: Vec<u32> = parked.iter().filter(|(_, p)| p.outcome.is_some()).map(|(id, _)| *id).collect();
    for context in resumed {
        if let Some(Parked { state, outcome: Some(outcome), wake }) = parked.remove(&context) {
            let _ = wake.send(Resumption { state, outcome });
        }
    }
}

fn typed<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    instance: &wasmtime::Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Option<TypedFunc<P, R>> {
    instance.get_typed_func::<P, R>(&mut *store, name).ok()
}

impl Vm {
    /// Instantiates the module and runs its start-up: `_initialize` (or `_start`), the root
    /// context, `proxy_on_vm_start` and `proxy_on_configure` with the plugin's config.
    pub fn start(
        module: &FilterModule,
        plugin: Arc<PluginInfo>,
        instance_events: InstanceEvents,
    ) -> Result<Vm, VmError> {
        let limits =
            StoreLimitsBuilder::new().memory_size(plugin.memory_limit).instances(1).tables(4).memories(1).build();
        let engine = module.engine();
        let host = HostState {
            limits,
            memory: None,
            allocate: None,
            scratch: Vec::new(),
            plugin: plugin.clone(),
            stream: None,
            current: 0,
            effective: 1,
            local_response: None,
            continued: false,
            closed: false,
            parked: HashMap::new(),
            tick_period: None,
            outbox: Vec::new(),
            callouts: HashMap::new(),
            next_token: 1,
            callout_reply: None,
            grpc_message: Vec::new(),
            grpc_status: (0, String::new()),
            instance_events,
        };
        let mut store = Store::new(&engine, host);
        store.limiter(|host| &mut host.limits);
        let ticks = crate::engine::deadline_ticks(plugin.time_limit);
        store.set_epoch_deadline(ticks);
        let instance = module.pre().instantiate(&mut store).map_err(|e| VmError::Instantiate(format!("{e:#}")))?;
        let memory = instance.get_memory(&mut store, "memory");
        let allocate = typed::<u32, u32>(&instance, &mut store, "proxy_on_memory_allocate")
            .or_else(|| typed::<u32, u32>(&instance, &mut store, "malloc"));
        store.data_mut().memory = memory;
        store.data_mut().allocate = allocate.map(Arc::new);
        let on_context_create = typed(&instance, &mut store, "proxy_on_context_create")
            .ok_or_else(|| VmError::Instantiate("it exports no proxy_on_context_create".into()))?;
        let exports = Exports {
            on_context_create,
            on_request_headers: typed(&instance, &mut store, "proxy_on_request_headers"),
            on_request_body: typed(&instance, &mut store, "proxy_on_request_body"),
            on_request_trailers: typed(&instance, &mut store, "proxy_on_request_trailers"),
            on_response_headers: typed(&instance, &mut store, "proxy_on_response_headers"),
            on_response_body: typed(&instance, &mut store, "proxy_on_response_body"),
            on_response_trailers: typed(&instance, &mut store, "proxy_on_response_trailers"),
            on_new_connection: typed(&instance, &mut store, "proxy_on_new_connection"),
            on_downstream_data: typed(&instance, &mut store, "proxy_on_downstream_data"),
            on_upstream_data: typed(&instance, &mut store, "proxy_on_upstream_data"),
            on_downstream_close: typed(&instance, &mut store, "proxy_on_downstream_connection_close"),
            on_upstream_close: typed(&instance, &mut store, "proxy_on_upstream_connection_close"),
            on_log: typed(&instance, &mut store, "proxy_on_log"),
            on_done: typed(&instance, &mut store, "proxy_on_done"),
            on_delete: typed(&instance, &mut store, "proxy_on_delete"),
            on_tick: typed(&instance, &mut store, "proxy_on_tick"),
            on_queue_ready: typed(&instance, &mut store, "proxy_on_queue_ready"),
            on_http_call_response: typed(&instance, &mut store, "proxy_on_http_call_response"),
            on_grpc_receive: typed(&instance, &mut store, "proxy_on_grpc_receive"),
            on_grpc_close: typed(&instance, &mut store, "proxy_on_grpc_close"),
        };
        let limits = CallLimits { deadline_ticks: ticks, time_limit_ms: plugin.time_limit.as_millis() as u64 };
        let mut vm = Vm { store, exports, root_context: 1, next_context: 2, limits, _ticking: module.ticking() };

        let initialize = typed::<(), ()>(&instance, &mut vm.store, "_initialize")
            .or_else(|| typed(&instance, &mut vm.store, "_start"));
        if let Some(initialize) = initialize {
            vm.call(|store| initialize.call(store, ()))?;
        }
        let root = vm.root_context;
        call(&mut vm.store, vm.limits, |store| vm.exports.on_context_create.call(store, (root, 0)))?;
        if let Some(start) = typed::<(u32, u32), u32>(&instance, &mut vm.store, "proxy_on_vm_start") {
            if vm.call(|store| start.call(store, (root, 0)))? == 0 {
                return Err(VmError::StartRefused);
            }
        }
        if let Some(configure) = typed::<(u32, u32), u32>(&instance, &mut vm.store, "proxy_on_configure") {
            let size = plugin.configuration.len() as u32;
            if vm.call(|store| configure.call(store, (root, size)))? == 0 {
                return Err(VmError::ConfigureRefused);
            }
        }
        Ok(vm)
    }

    /// [`call`] on this instance's store.
    fn call<R>(&mut self, f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>) -> Result<R, VmError> {
        call(&mut self.store, self.limits, f)
    }

    /// The tick period the filter asked for, if any.
    pub fn tick_period(&self) -> Option<std::time::Duration> {
        self.store.data().tick_period.filter(|_| self.exports.on_tick.is_some())
    }

    /// Calls `proxy_on_tick` on the root context.
    pub fn tick(&mut self) -> Result<(), VmError> {
        let root = self.root_context;
        let Some(tick) = self.exports.on_tick.as_ref() else { return Ok(()) };
        set_current(self.store.data_mut(), 0, root);
        call(&mut self.store, self.limits, |store| tick.call(store, root))
    }

    /// Calls `proxy_on_queue_ready` on the root context.
    pub fn queue_ready(&mut self, queue: u32) -> Result<(), VmError> {
        let root = self.root_context;
        let Some(ready) = self.exports.on_queue_ready.as_ref() else { return Ok(()) };
        set_current(self.store.data_mut(), 0, root);
        call(&mut self.store, self.limits, |store| ready.call(store, (root, queue)))
    }

    /// Requests waiting in this instance for their filter to resume them, and callouts in flight.
    pub fn waiting(&self) -> (usize, usize) {
        let data = self.store.data();
        (data.parked.len(), data.callouts.len())
    }

    /// Size of the instance's linear memory now.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().memory.map_or(0, |m| m.data_size(&self.store))
    }

    /// Creates a stream context (a request) inside this instance.
    pub fn create_context(&mut self) -> Result<u32, VmError> {
        let id = self.next_context;
        self.next_context = self.next_context.wrapping_add(1).max(2);
        let root = self.root_context;
        let create = &self.exports.on_context_create;
        set_current(self.store.data_mut(), 0, root);
        call(&mut self.store, self.limits, |store| create.call(store, (id, root)))?;
        Ok(id)
    }

    /// Runs a phase callback with `state` reachable by hostcalls; returns the state back and
    /// what the filter decided. `arg`: the header count or the data size.
    pub fn run_phase(
        &mut self,
        phase: Phase,
        context: u32,
        arg: u32,
        end_of_stream: bool,
        state: Box<StreamState>,
    ) -> (Box<StreamState>, Result<PhaseOutcome, VmError>) {
        /// A peer type for the close callbacks: the remote side closed.
        const REMOTE: u32 = 2;
        let e = &self.exports;
        let entry = match phase {
            Phase::RequestHeaders => e.on_request_headers.as_ref().map(Entry::Sized),
            Phase::RequestBody => e.on_request_body.as_ref().map(Entry::Sized),
            Phase::RequestTrailers => e.on_request_trailers.as_ref().map(Entry::Counted),
            Phase::ResponseHeaders => e.on_response_headers.as_ref().map(Entry::Sized),
            Phase::ResponseBody => e.on_response_body.as_ref().map(Entry::Sized),
            Phase::ResponseTrailers => e.on_response_trailers.as_ref().map(Entry::Counted),
            Phase::NewConnection => e.on_new_connection.as_ref().map(Entry::Connection),
            Phase::DownstreamData => e.on_downstream_data.as_ref().map(Entry::Sized),
            Phase::UpstreamData => e.on_upstream_data.as_ref().map(Entry::Sized),
            Phase::DownstreamClose => e.on_downstream_close.as_ref().map(Entry::Notice),
            Phase::UpstreamClose => e.on_upstream_close.as_ref().map(Entry::Notice),
        };
        let data = self.store.data_mut();
        set_current(data, context, context);
        data.stream = Some(state);
        (data.continued, data.closed) = (false, false);
        let result = match entry {
            Some(Entry::Sized(f)) => {
                call(&mut self.store, self.limits, |store| f.call(store, (context, arg, end_of_stream.into())))
            }
            Some(Entry::Counted(f)) => call(&mut self.store, self.limits, |store| f.call(store, (context, arg))),
            Some(Entry::Connection(f)) => call(&mut self.store, self.limits, |store| f.call(store, context)),
            Some(Entry::Notice(f)) => call(&mut self.store, self.limits, |store| f.call(store, (context, REMOTE)))
                .map(|()| crate::abi::ACTION_CONTINUE),
            None => Ok(crate::abi::ACTION_CONTINUE),
        };
        let data = self.store.data_mut();
        let state = data.stream.take().unwrap_or_else(|| unreachable!("the stream state was put in above"));
        data.current = 0;
        let outcome = result.map(|action| PhaseOutcome {
            pause: action == crate::abi::ACTION_PAUSE && !data.continued,
            local: data.local_response.take(),
            closed: data.closed,
        });
        (state, outcome)
    }

    /// Keeps a paused request here until its filter resumes it; `wake` gets it back then.
    pub fn park(&mut self, context: u32, state: Box<StreamState>, wake: oneshot::Sender<Resumption>) {
        self.store.data_mut().parked.insert(context, Parked { state, outcome: None, wake });
    }

    /// The last calls asked for callouts.
    pub fn has_outbox(&self) -> bool {
        !self.store.data().outbox.is_empty()
    }

    /// Callouts the last calls asked for.
    pub fn take_outbox(&mut self) -> Vec<Callout> {
        std::mem::take(&mut self.store.data_mut().outbox)
    }

    /// Delivers an HTTP callout's response (`None`: it failed) to the context that made it,
    /// unless that context has ended.
    pub fn deliver_http(&mut self, token: u32, reply: Option<CalloutReply>) -> Result<(), VmError> {
        let Some(context) = self.store.data_mut().callouts.remove(&token) else { return Ok(()) };
        let Some(callback) = self.exports.on_http_call_response.as_ref() else { return Ok(()) };
        let counts = reply.as_ref().map_or((0, 0, 0), |r| (r.headers.len(), r.body.len(), r.trailers.len()));
        self.store.data_mut().callout_reply = reply;
        set_current(self.store.data_mut(), 0, context);
        let arguments = (context, token, counts.0 as u32, counts.1 as u32, counts.2 as u32);
        let result = call(&mut self.store, self.limits, |store| callback.call(store, arguments));
        self.store.data_mut().callout_reply = None;
        result
    }

    /// Delivers a gRPC callout's outcome to the context that made it, unless that context ended.
    pub fn deliver_grpc(&mut self, token: u32, outcome: GrpcOutcome) -> Result<(), VmError> {
        let Some(context) = self.store.data_mut().callouts.remove(&token) else { return Ok(()) };
        set_current(self.store.data_mut(), 0, context);
        let exports = &self.exports;
        let result = match outcome {
            GrpcOutcome::Message(message) => {
                let Some(callback) = exports.on_grpc_receive.as_ref() else { return Ok(()) };
                let size = message.len() as u32;
                let data = self.store.data_mut();
                data.grpc_message = message;
                data.grpc_status = (0, String::new());
                call(&mut self.store, self.limits, |store| callback.call(store, (context, token, size)))
            }
            GrpcOutcome::Status(code, message) => {
                let Some(callback) = exports.on_grpc_close.as_ref() else { return Ok(()) };
                let data = self.store.data_mut();
                data.grpc_message.clear();
                data.grpc_status = (code, message);
                call(&mut self.store, self.limits, |store| callback.call(store, (context, token, code)))
            }
        };
        self.store.data_mut().grpc_message.clear();
        result
    }

    /// Ends a stream context: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete` (Envoy's order).
    /// A request still parked here is taken back for it; its callouts are forgotten. Returns the
    /// request's state, for reuse.
    pub fn finish_context(
        &mut self,
        context: u32,
        state: Option<Box<StreamState>>,
    ) -> Result<Option<Box<StreamState>>, VmError> {
        let data = self.store.data_mut();
        // Most requests never paused nor called out: skip hashing into empty maps.
        let parked = if data.parked.is_empty() { None } else { data.parked.remove(&context).map(|p| p.state) };
        if !data.callouts.is_empty() {
            data.callouts.retain(|_, owner| *owner != context);
        }
        data.stream = state.or(parked);
        set_current(data, context, context);
        let (store, limits, exports) = (&mut self.store, self.limits, &self.exports);
        let result = (|| {
            if let Some(log) = &exports.on_log {
                call(store, limits, |store| log.call(store, context))?;
            }
            if let Some(done) = &exports.on_done {
                call(store, limits, |store| done.call(store, context))?;
            }
            if let Some(delete) = &exports.on_delete {
                call(store, limits, |store| delete.call(store, context))?;
            }
            Ok(())
        })();
        let data = self.store.data_mut();
        let state = data.stream.take();
        data.current = 0;
        data.local_response = None;
        result.map(|()| state)
    }
}

impl Drop for Vm {
    /// The requests still parked here get their state back, marked failed, so none is lost.
    fn drop(&mut self) {
        for (_, parked) in self.store.data_mut().parked.drain() {
            let _ = parked.wake.send(Resumption { state: parked.state, outcome: ParkOutcome::Failed });
        }
    }
}

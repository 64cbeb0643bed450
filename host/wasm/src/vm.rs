//! One warm instance of a filter module: its store, its exports, its root context. Requests are
//! contexts inside it (never an instance per request). A call that traps, runs past its deadline
//! or outgrows its memory poisons the instance; the filter replaces it.

use crate::module::FilterModule;
use crate::stream::StreamState;
use crate::PluginInfo;
use std::sync::Arc;
use wasmtime::{Memory, Store, StoreLimits, StoreLimitsBuilder, TypedFunc};

/// What hostcalls reach: the instance's memory and allocator, the plugin, and the request whose
/// callback is running (moved in for the call, moved out after).
pub struct HostState {
    pub limits: StoreLimits,
    pub memory: Option<Memory>,
    pub allocate: Option<TypedFunc<u32, u32>>,
    pub plugin: Arc<PluginInfo>,
    pub stream: Option<StreamState>,
    /// A local response the running callback asked for.
    pub local_response: Option<LocalResponse>,
    /// How often the root context wants `proxy_on_tick` (set by the guest; `None`: never).
    pub tick_period: Option<std::time::Duration>,
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

struct Exports {
    on_context_create: TypedFunc<(u32, u32), ()>,
    on_request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_log: Option<TypedFunc<u32, ()>>,
    on_done: Option<TypedFunc<u32, u32>>,
    on_delete: Option<TypedFunc<u32, ()>>,
    on_tick: Option<TypedFunc<u32, ()>>,
}

pub struct Vm {
    store: Store<HostState>,
    exports: Exports,
    root_context: u32,
    next_context: u32,
    deadline_ticks: u64,
    time_limit_ms: u64,
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
    pub fn start(module: &FilterModule, plugin: Arc<PluginInfo>) -> Result<Vm, VmError> {
        let limits =
            StoreLimitsBuilder::new().memory_size(plugin.memory_limit).instances(1).tables(4).memories(1).build();
        let engine = module.engine();
        let host = HostState {
            limits,
            memory: None,
            allocate: None,
            plugin: plugin.clone(),
            stream: None,
            local_response: None,
            tick_period: None,
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
        store.data_mut().allocate = allocate;
        let on_context_create = typed(&instance, &mut store, "proxy_on_context_create")
            .ok_or_else(|| VmError::Instantiate("it exports no proxy_on_context_create".into()))?;
        let exports = Exports {
            on_context_create,
            on_request_headers: typed(&instance, &mut store, "proxy_on_request_headers"),
            on_response_headers: typed(&instance, &mut store, "proxy_on_response_headers"),
            on_log: typed(&instance, &mut store, "proxy_on_log"),
            on_done: typed(&instance, &mut store, "proxy_on_done"),
            on_delete: typed(&instance, &mut store, "proxy_on_delete"),
            on_tick: typed(&instance, &mut store, "proxy_on_tick"),
        };
        let time_limit_ms = plugin.time_limit.as_millis() as u64;
        let mut vm = Vm { store, exports, root_context: 1, next_context: 2, deadline_ticks: ticks, time_limit_ms };

        let initialize = typed::<(), ()>(&instance, &mut vm.store, "_initialize")
            .or_else(|| typed(&instance, &mut vm.store, "_start"));
        if let Some(initialize) = initialize {
            vm.call(|store| initialize.call(store, ()))?;
        }
        let root = vm.root_context;
        let create = vm.exports.on_context_create.clone();
        vm.call(|store| create.call(store, (root, 0)))?;
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

    /// Runs one top-level call into the guest under the per-call deadline.
    fn call<R>(&mut self, f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>) -> Result<R, VmError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        f(&mut self.store).map_err(|error| match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => VmError::Deadline(self.time_limit_ms),
            _ => VmError::Trap(format!("{error:#}")),
        })
    }

    /// The tick period the filter asked for, if any.
    pub fn tick_period(&self) -> Option<std::time::Duration> {
        self.store.data().tick_period.filter(|_| self.exports.on_tick.is_some())
    }

    /// Calls `proxy_on_tick` on the root context.
    pub fn tick(&mut self) -> Result<(), VmError> {
        let (Some(tick), root) = (self.exports.on_tick.clone(), self.root_context) else { return Ok(()) };
        self.call(|store| tick.call(store, root))
    }

    /// Size of the instance's linear memory now.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().memory.map_or(0, |m| m.data_size(&self.store))
    }

    /// Creates a stream context (a request) inside this instance.
    pub fn create_context(&mut self) -> Result<u32, VmError> {
        let id = self.next_context;
        self.next_context = self.next_context.wrapping_add(1).max(2);
        let (create, root) = (self.exports.on_context_create.clone(), self.root_context);
        self.call(|store| create.call(store, (id, root)))?;
        Ok(id)
    }

    /// Runs a headers callback with `state` reachable by hostcalls; returns the state back, the
    /// guest's action and any local response it asked for.
    pub fn on_headers(
        &mut self,
        response: bool,
        context: u32,
        header_count: u32,
        state: StreamState,
    ) -> (StreamState, Result<(u32, Option<LocalResponse>), VmError>) {
        let callback =
            if response { self.exports.on_response_headers.clone() } else { self.exports.on_request_headers.clone() };
        self.store.data_mut().stream = Some(state);
        let result = match callback {
            Some(callback) => self.call(|store| callback.call(store, (context, header_count, 0))),
            None => Ok(crate::abi::ACTION_CONTINUE),
        };
        let data = self.store.data_mut();
        let state = data.stream.take().unwrap_or_else(|| unreachable!("the stream state was put in above"));
        let local = data.local_response.take();
        (state, result.map(|action| (action, local)))
    }

    /// Ends a stream context: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete` (Envoy's order).
    pub fn finish_context(&mut self, context: u32, state: Option<StreamState>) -> Result<(), VmError> {
        self.store.data_mut().stream = state;
        let exports = (self.exports.on_log.clone(), self.exports.on_done.clone(), self.exports.on_delete.clone());
        let result = (|| {
            if let Some(log) = exports.0 {
                self.call(|store| log.call(store, context))?;
            }
            if let Some(done) = exports.1 {
                self.call(|store| done.call(store, context))?;
            }
            if let Some(delete) = exports.2 {
                self.call(|store| delete.call(store, context))?;
            }
            Ok(())
        })();
        self.store.data_mut().stream = None;
        self.store.data_mut().local_response = None;
        result
    }
}

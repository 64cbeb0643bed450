//! weft's Proxy-Wasm v0.2.1 host on wasmtime. A filter module built for Envoy with the public
//! `proxy-wasm` crate runs here unmodified.
//!
//! Engine → [`module::FilterModule`] (compiled, checked, linked) → [`filter::WasmFilter`] (warm
//! instances, each a [`vm::Vm`]) → one stream per request, a context inside an instance.

pub mod abi;
mod callout;
mod engine;
mod filter;
mod hostcalls;
mod memory;
pub mod module;
mod queues;
mod shared;
mod stream;
mod vm;

pub use engine::WasmEngine;
pub use filter::WasmFilter;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weft_config::FieldError;
use weft_proxy::chain::{Callouts, FilterHost, FilterLoader, HttpFilter};
use weft_proxy::metrics::Metrics;

/// What an instance knows about the filter it serves.
pub struct PluginInfo {
    pub name: String,
    pub root_id: String,
    /// The filter's `config`, as JSON bytes (empty when there is none).
    pub configuration: Vec<u8>,
    pub memory_limit: usize,
    pub time_limit: Duration,
    /// Key-value data all instances of the filter share.
    pub shared_data: Arc<shared::SharedData>,
    /// Metrics the filter defined.
    pub defined_metrics: Arc<shared::DefinedMetrics>,
    pub proxy_metrics: Arc<Metrics>,
    /// How the filter reaches clusters (`None` in unit tests).
    pub callouts: Option<Arc<dyn Callouts>>,
    /// The process's shared queues; this filter's are named by its name (its vm id).
    pub queues: Arc<queues::SharedQueues>,
}

impl PluginInfo {
    /// Properties readable outside a request (during start-up and configuration).
    pub fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        match path {
            ["plugin_name"] => Some(self.name.as_bytes().to_vec()),
            ["plugin_root_id"] => Some(self.root_id.as_bytes().to_vec()),
            _ => None,
        }
    }
}

/// Loads the `filters:` of a config as Wasm filters; compiled modules are kept by digest.
pub struct WasmLoader {
    engine: Arc<WasmEngine>,
    instances: usize,
    /// Where compiled modules are kept across restarts (none: compile on every start).
    cache: Option<std::path::PathBuf>,
    compiled: Mutex<HashMap<String, Arc<module::FilterModule>>>,
    /// Per filter name, so data and metric ids survive reloads.
    shared: Mutex<HashMap<String, shared::FilterState>>,
    queues: Arc<queues::SharedQueues>,
}

impl WasmLoader {
    /// `instances`: warm instances per filter; one per worker thread avoids waiting on each other.
    /// `cache`: a folder for compiled modules, written by weft's user alone.
    pub fn new(instances: usize, cache: Option<std::path::PathBuf>) -> Result<WasmLoader, String> {
        let engine = WasmEngine::new()?;
        Ok(WasmLoader {
            engine,
            instances,
            cache,
            compiled: Mutex::default(),
            shared: Mutex::default(),
            queues: Arc::default(),
        })
    }

    fn module(&self, bytes: &[u8]) -> Result<Arc<module::FilterModule>, String> {
        use sha2::Digest;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
        if let Some(found) = self.compiled.lock().unwrap_or_else(|e| e.into_inner()).get(&digest) {
            return Ok(found.clone());
        }
        let compiled = Arc::new(module::FilterModule::compile(&self.engine, bytes, self.cache.as_deref())?);
        self.compiled.lock().unwrap_or_else(|e| e.into_inner()).insert(digest, compiled.clone());
        Ok(compiled)
    }

    fn load_one(
        &self,
        filter: &weft_config::Filter,
        at: &str,
        host: &FilterHost,
    ) -> Result<Arc<dyn HttpFilter>, FieldError> {
        if filter.module.starts_with("sha256:") {
            return Err(FieldError::new(
                format!("{at}.module"),
                "modules by digest come from a control plane; give a file path",
            ));
        }
        let bytes = std::fs::read(&filter.module)
            .map_err(|e| FieldError::new(format!("{at}.module"), format!("cannot read {}: {e}", filter.module)))?;
        let module = self
            .module(&bytes)
            .map_err(|reason| FieldError::new(format!("{at}.module"), format!("{}: {reason}", filter.module)))?;
        let configuration =
            if filter.config.is_null() { Vec::new() } else { serde_json::to_vec(&filter.config).unwrap_or_default() };
        let state =
            self.shared.lock().unwrap_or_else(|e| e.into_inner()).entry(filter.name.clone()).or_default().clone();
        let plugin = Arc::new(PluginInfo {
            shared_data: state.data,
            defined_metrics: state.metrics,
            proxy_metrics: host.metrics.clone(),
            callouts: Some(host.callouts.clone()),
            queues: self.queues.clone(),
            name: filter.name.clone(),
            root_id: filter.root_id.clone(),
            configuration,
            memory_limit: filter.limits.memory.bytes() as usize,
            time_limit: filter.limits.time_per_call.get(),
        });
        let started = WasmFilter::new(plugin, module, filter.failure_policy, self.instances, host.metrics.clone());
        let filter = started.map_err(|error| match error {
            vm::VmError::ConfigureRefused => {
                FieldError::new(format!("{at}.config"), "refused by the filter (proxy_on_configure returned false)")
            }
            other => FieldError::new(at, format!("the filter {other}")),
        })?;
        Ok(Arc::new(filter))
    }
}

impl FilterLoader for WasmLoader {
    fn load(
        &self,
        filters: &[weft_config::Filter],
        host: &FilterHost,
    ) -> Result<HashMap<String, Arc<dyn HttpFilter>>, Vec<FieldError>> {
        let mut loaded = HashMap::new();
        let mut errors = Vec::new();
        for (i, filter) in filters.iter().enumerate() {
            match self.load_one(filter, &format!("filters[{i}]"), host) {
                Ok(built) => {
                    loaded.insert(filter.name.clone(), built);
                }
                Err(error) => errors.push(error),
            }
        }
        if errors.is_empty() {
            Ok(loaded)
        } else {
            Err(errors)
        }
    }
}

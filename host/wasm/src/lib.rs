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
    /// Where modules named by digest (`sha256:<hex>`, pushed to a control plane) are found, as
    /// `<hex>.wasm`; none: such names are refused.
    module_store: Option<std::path::PathBuf>,
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
            module_store: None,
            compiled: Mutex::default(),
            shared: Mutex::default(),
            queues: Arc::default(),
        })
    }

    /// Resolves `sha256:<hex>` module names to `<dir>/<hex>.wasm` (a managed proxy's copies of
    /// the modules its control plane sent).
    pub fn with_module_store(mut self, dir: std::path::PathBuf) -> WasmLoader {
        self.module_store = Some(dir);
        self
    }

    /// The bytes of a filter's module: its file, or by digest from the module store (checked
    /// against the digest, so a damaged copy is refused rather than run).
    fn module_bytes(&self, name: &str) -> Result<Vec<u8>, String> {
        let Some(hex) = name.strip_prefix("sha256:") else {
            return std::fs::read(name).map_err(|e| format!("cannot read {name}: {e}"));
        };
        let Some(store) = &self.module_store else {
            return Err("modules by digest come from a control plane; give a file path".into());
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{name}: not a sha256 digest (64 hex digits)"));
        }
        let path = store.join(format!("{}.wasm", hex.to_ascii_lowercase()));
        let bytes = std::fs::read(&path).map_err(|e| format!("{name}: not in the module store ({e})"))?;
        use sha2::Digest;
        if !hex::encode(sha2::Sha256::digest(&bytes)).eq_ignore_ascii_case(hex) {
            return Err(format!("{name}: the stored copy does not match its digest"));
        }
        Ok(bytes)
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
        let bytes =
            self.module_bytes(&filter.module).map_err(|reason| FieldError::new(format!("{at}.module"), reason))?;
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

#[cfg(test)]
mod tests {
    use super::WasmLoader;
    use sha2::Digest;

    #[test]
    fn modules_by_digest_come_from_the_store_and_must_match_it() {
        let store = std::env::temp_dir().join(format!("weft-module-store-{}", std::process::id()));
        std::fs::create_dir_all(&store).unwrap();
        let bytes = b"\0asm pretend module".to_vec();
        let hex = hex::encode(sha2::Sha256::digest(&bytes));
        std::fs::write(store.join(format!("{hex}.wasm")), &bytes).unwrap();
        let unmanaged = WasmLoader::new(1, None).unwrap();
        let refused = unmanaged.module_bytes(&format!("sha256:{hex}")).unwrap_err();
        assert!(refused.contains("come from a control plane"), "{refused}");

        let managed = WasmLoader::new(1, None).unwrap().with_module_store(store.clone());
        assert_eq!(managed.module_bytes(&format!("sha256:{hex}")).unwrap(), bytes);
        let missing = managed.module_bytes(&format!("sha256:{}", "0".repeat(64))).unwrap_err();
        assert!(missing.contains("not in the module store"), "{missing}");
        std::fs::write(store.join(format!("{hex}.wasm")), b"tampered").unwrap();
        let damaged = managed.module_bytes(&format!("sha256:{hex}")).unwrap_err();
        assert!(damaged.contains("does not match its digest"), "{damaged}");
        std::fs::remove_dir_all(&store).unwrap();
    }
}

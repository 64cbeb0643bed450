//! A filter module: compiled once, checked to be a Proxy-Wasm module, linked against the
//! hostcalls, ready to instantiate quickly (`InstancePre`).

use crate::engine::{Ticking, WasmEngine};
use crate::vm::HostState;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Instant;
use wasmtime::{Engine, InstancePre, Module};

pub struct FilterModule {
    engine: Engine,
    pre: InstancePre<HostState>,
    /// `sha256:<hex>` of the module's bytes.
    pub digest: String,
    /// Guest calls have deadlines only while the epoch advances.
    ticking: Ticking,
}

impl FilterModule {
    /// Compiles and checks `bytes` (or loads them precompiled from `cache`); the error says why
    /// it is not a usable Proxy-Wasm module.
    pub fn compile(wasm: &WasmEngine, bytes: &[u8], cache: Option<&Path>) -> Result<FilterModule, String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if !bytes.starts_with(b"\0asm") {
            return Err("not a WebAssembly module (it does not start with \\0asm)".into());
        }
        let cached = cache.map(|dir| dir.join(format!("{}-{:016x}.cwasm", &digest[7..], wasm.compatibility())));
        let module = match cached.as_deref().and_then(|path| load_cached(wasm, path, &digest)) {
            Some(module) => module,
            None => {
                let started = Instant::now();
                let module =
                    Module::new(wasm.engine(), bytes).map_err(|e| format!("not a valid WebAssembly module: {e:#}"))?;
                tracing::info!(%digest, ms = started.elapsed().as_millis() as u64, "filter module compiled");
                if let Some(path) = &cached {
                    store_cached(&module, path);
                }
                module
            }
        };
        let exports: Vec<String> = module.exports().map(|e| e.name().to_owned()).collect();
        let has = |name: &str| exports.iter().any(|e| e == name);
        if !exports.iter().any(|e| e.starts_with("proxy_abi_version_0_2")) {
            return Err("not a Proxy-Wasm module: it exports no proxy_abi_version_0_2_x marker".into());
        }
        if !has("memory") {
            return Err("not a Proxy-Wasm module: it exports no memory".into());
        }
        if !has("proxy_on_memory_allocate") && !has("malloc") {
            return Err("not a Proxy-Wasm module: it exports no proxy_on_memory_allocate (or malloc)".into());
        }
        if !has("proxy_on_context_create") {
            return Err("not a Proxy-Wasm module: it exports no proxy_on_context_create".into());
        }
        // Imports weft does not know trap when called, never at link time: a module built for
        // another host still loads, and fails only if it really uses them.
        let mut linker = wasm.linker().clone();
        linker.define_unknown_imports_as_traps(&module).map_err(|e| format!("cannot link: {e:#}"))?;
        let pre = linker.instantiate_pre(&module).map_err(|e| format!("cannot link: {e:#}"))?;
        Ok(FilterModule { engine: wasm.engine().clone(), pre, digest, ticking: wasm.ticking() })
    }

    pub fn engine(&self) -> Engine {
        self.engine.clone()
    }

    /// Keeps guest deadlines enforced while the returned guard lives.
    pub fn ticking(&self) -> Ticking {
        self.ticking.clone()
    }

    pub fn pre(&self) -> &InstancePre<HostState> {
        &self.pre
    }
}

/// A module compiled earlier by this same engine configuration, if the cache has it.
fn load_cached(wasm: &WasmEngine, path: &Path, digest: &str) -> Option<Module> {
    if !path.exists() {
        return None;
    }
    let started = Instant::now();
    // SAFETY: the file is one `store_cached` wrote: code compiled by wasmtime for this engine's
    // settings (the name carries their hash), written whole to a temporary file and renamed, and
    // never changed in place. The cache folder must be writable by weft's user alone.
    match unsafe { Module::deserialize_file(wasm.engine(), path) } {
        Ok(module) => {
            tracing::info!(%digest, ms = started.elapsed().as_millis() as u64, "filter module loaded from the compiled cache");
            Some(module)
        }
        Err(error) => {
            tracing::warn!(%digest, path = %path.display(), %error, "unusable compiled cache entry; compiling again");
            None
        }
    }
}

/// Writes the compiled module for the next start; a failure only costs that start a compile.
fn store_cached(module: &Module, path: &Path) {
    let written = module.serialize().map_err(|e| e.to_string()).and_then(|bytes| {
        let dir = path.parent().ok_or("no folder")?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&temporary, bytes).map_err(|e| e.to_string())?;
        std::fs::rename(&temporary, path).map_err(|e| e.to_string())
    });
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "cannot write the compiled module cache");
    }
}

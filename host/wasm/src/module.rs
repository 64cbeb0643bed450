//! A filter module: compiled once, checked to be a Proxy-Wasm module, linked against the
//! hostcalls, ready to instantiate quickly (`InstancePre`).

use crate::engine::WasmEngine;
use crate::vm::HostState;
use sha2::{Digest, Sha256};
use wasmtime::{Engine, InstancePre, Module};

pub struct FilterModule {
    engine: Engine,
    pre: InstancePre<HostState>,
    /// `sha256:<hex>` of the module's bytes.
    pub digest: String,
}

impl FilterModule {
    /// Compiles and checks `bytes`; the error says why it is not a usable Proxy-Wasm module.
    pub fn compile(wasm: &WasmEngine, bytes: &[u8]) -> Result<FilterModule, String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if !bytes.starts_with(b"\0asm") {
            return Err("not a WebAssembly module (it does not start with \\0asm)".into());
        }
        let module = Module::new(wasm.engine(), bytes).map_err(|e| format!("not a valid WebAssembly module: {e:#}"))?;
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
        Ok(FilterModule { engine: wasm.engine().clone(), pre, digest })
    }

    pub fn engine(&self) -> Engine {
        self.engine.clone()
    }

    pub fn pre(&self) -> &InstancePre<HostState> {
        &self.pre
    }
}

//! The one wasmtime engine of the process: compiler settings, the epoch ticker that enforces
//! per-call deadlines, and the linker with every hostcall defined once.

use crate::vm::HostState;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Config, Engine, Linker, OptLevel};

/// How often the epoch advances; a call's deadline is counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Ticks to allow for a call limited to `limit` (rounded up, plus the tick already under way).
pub fn deadline_ticks(limit: Duration) -> u64 {
    (limit.as_micros().div_ceil(EPOCH_TICK.as_micros())) as u64 + 1
}

pub struct WasmEngine {
    engine: Engine,
    linker: Linker<HostState>,
}

impl WasmEngine {
    pub fn new() -> Result<Arc<WasmEngine>, String> {
        let mut config = Config::new();
        config.epoch_interruption(true).cranelift_opt_level(OptLevel::Speed).memory_init_cow(true);
        let engine = Engine::new(&config).map_err(|e| format!("cannot start the Wasm engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        crate::hostcalls::define(&mut linker).map_err(|e| format!("cannot define the hostcalls: {e}"))?;
        spawn_ticker(&engine);
        Ok(Arc::new(WasmEngine { engine, linker }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A fingerprint of everything that makes compiled code fit this engine (wasmtime version,
    /// compiler settings, CPU features): part of a cached module's name.
    pub fn compatibility(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.finish()
    }

    pub fn linker(&self) -> &Linker<HostState> {
        &self.linker
    }
}

/// Advances the epoch forever (until the engine is dropped), so a guest stuck in a loop is
/// interrupted at its deadline without any cost on the calls that finish in time.
fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("weft-wasm-epoch".into()).spawn(move || loop {
        std::thread::sleep(EPOCH_TICK);
        match weak.upgrade() {
            Some(engine) => engine.increment_epoch(),
            None => return,
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the Wasm deadline ticker; filters that never return will hang requests");
    }
}

//! The one wasmtime engine of the process: compiler settings, the epoch ticker that enforces
//! per-call deadlines, and the linker with every hostcall defined once.

use crate::vm::HostState;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
    ticker: Arc<Ticker>,
}

/// What the epoch ticker waits on: it ticks only while filter modules are loaded, so a proxy
/// without filters is not woken 200 times a second for nothing.
#[derive(Default)]
struct Ticker {
    state: Mutex<TickerState>,
    changed: Condvar,
}

impl Ticker {
    /// The state; a panic elsewhere while it was held leaves it as consistent as a counter is.
    fn lock(&self) -> MutexGuard<'_, TickerState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct TickerState {
    /// Live [`Ticking`] guards (filter modules and VMs).
    holders: usize,
    /// The [`WasmEngine`] is gone: with no holder left, the ticker ends.
    closed: bool,
    /// The ticker waits for a holder (it does not tick).
    idle: bool,
    /// Ticks so far.
    ticks: u64,
}

/// Keeps the epoch ticking while it lives; each loaded filter module and each VM holds one.
pub struct Ticking(Arc<Ticker>);

impl Ticking {
    fn new(ticker: &Arc<Ticker>) -> Ticking {
        let mut state = ticker.lock();
        state.holders += 1;
        if state.holders == 1 {
            ticker.changed.notify_all();
        }
        Ticking(ticker.clone())
    }
}

impl Clone for Ticking {
    fn clone(&self) -> Ticking {
        Ticking::new(&self.0)
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.holders -= 1;
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        let mut state = self.ticker.lock();
        state.closed = true;
        self.ticker.changed.notify_all();
    }
}

impl WasmEngine {
    pub fn new() -> Result<Arc<WasmEngine>, String> {
        let mut config = Config::new();
        config.epoch_interruption(true).cranelift_opt_level(OptLevel::Speed).memory_init_cow(true);
        let engine = Engine::new(&config).map_err(|e| format!("cannot start the Wasm engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        crate::hostcalls::define(&mut linker).map_err(|e| format!("cannot define the hostcalls: {e}"))?;
        let ticker = Arc::new(Ticker::default());
        spawn_ticker(&engine, ticker.clone());
        Ok(Arc::new(WasmEngine { engine, linker, ticker }))
    }

    /// Keeps the epoch advancing (and so guest deadlines enforced) while the guard lives.
    pub fn ticking(&self) -> Ticking {
        Ticking::new(&self.ticker)
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

/// Advances the epoch while filter modules are loaded (until the engine is dropped), so a guest
/// stuck in a loop is interrupted at its deadline without any cost on the calls that finish in
/// time.
fn spawn_ticker(engine: &Engine, ticker: Arc<Ticker>) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("weft-wasm-epoch".into()).spawn(move || loop {
        {
            let mut state = ticker.lock();
            while state.holders == 0 {
                if state.closed {
                    return;
                }
                state.idle = true;
                state = ticker.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            state.idle = false;
        }
        std::thread::sleep(EPOCH_TICK);
        let Some(engine) = weak.upgrade() else { return };
        engine.increment_epoch();
        ticker.lock().ticks += 1;
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the Wasm deadline ticker; filters that never return will hang requests");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Waits (at most 10 s) until `done` says yes about the ticker's state.
    fn until(engine: &WasmEngine, done: impl Fn(&TickerState) -> bool) {
        let started = Instant::now();
        while !done(&engine.ticker.lock()) {
            assert!(started.elapsed() < Duration::from_secs(10), "the ticker did not get there");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_epoch_advances_only_while_modules_are_loaded() {
        let engine = WasmEngine::new().unwrap();
        until(&engine, |state| state.idle);
        assert_eq!(engine.ticker.lock().ticks, 0, "no module: no tick");

        let module = engine.ticking();
        let vm = module.clone();
        until(&engine, |state| state.ticks >= 2);
        drop(module);
        let ticks = engine.ticker.lock().ticks;
        until(&engine, |state| state.ticks >= ticks + 2);
        assert!(!engine.ticker.lock().idle, "a VM still lives: the epoch goes on");

        drop(vm);
        until(&engine, |state| state.idle);
        let ticks = engine.ticker.lock().ticks;
        let again = engine.ticking();
        until(&engine, |state| state.ticks > ticks);
        drop(again);
    }
}

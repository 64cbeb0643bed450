//! The process's memory allocator: jemalloc, set to give memory nobody uses back to the system.
//!
//! A proxy's memory comes and goes with its connections: a busy connection holds buffers of
//! many kilobytes, a parked one a couple of kilobytes of task. Under glibc's allocator the two
//! interleave in one heap, so after a burst the freed buffers stay resident between the small
//! blocks that outlive them (10,000 idle connections: about 2.7 KB each in use, 5.9 KB
//! resident). jemalloc keeps blocks of one size together, so emptied pages can be returned; a
//! background thread returns them a second after they empty, also while the proxy is idle
//! and makes no allocation that would otherwise prompt it. The measurements are in
//! docs/benchmarks.md.
//!
//! An operator can change these options at start with `_RJEM_MALLOC_CONF` (jemalloc's
//! `MALLOC_CONF`, under the prefix this build of jemalloc uses); it is read after the ones here.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` from this symbol (its `malloc_conf`):
/// - `background_thread`: purging runs on its own thread, not only inside allocation calls;
/// - `dirty_decay_ms:1000`: freed pages go back to the system about a second after they empty,
///   late enough that a request's buffers are reused by the next and not faulted in again;
/// - `muzzy_decay_ms:0`: returned pages are not kept in a second, lazily freed stage.
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_OPTIONS: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[cfg(test)]
mod tests {
    use std::ffi::{c_void, CStr};

    /// Reads one of jemalloc's options by name, as the running allocator sees it.
    fn option<T: Default>(name: &CStr) -> T {
        let mut value = T::default();
        let mut len = std::mem::size_of::<T>();
        // SAFETY: `value` is a `T` of `len` bytes, the type jemalloc documents for `name`.
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                (&mut value as *mut T).cast::<c_void>(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(status, 0, "jemalloc has no option {name:?}");
        value
    }

    #[test]
    fn the_allocator_runs_with_weft_s_options() {
        // A misspelt symbol or option would be ignored silently, leaving jemalloc's defaults
        // (no background thread, ten seconds of decay).
        assert!(option::<bool>(c"opt.background_thread"));
        assert_eq!(option::<isize>(c"opt.dirty_decay_ms"), 1000);
        assert_eq!(option::<isize>(c"opt.muzzy_decay_ms"), 0);
    }
}

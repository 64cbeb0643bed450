//! The WASI preview1 calls a `wasm32-wasip1` filter makes: its stdout and stderr go to the log,
//! clocks and randomness work, there are no arguments, no environment, no files.

use crate::memory;
use crate::vm::HostState;
use wasmtime::{Caller, Error, Linker, Result};

const WASI: &str = "wasi_snapshot_preview1";
const SUCCESS: u32 = 0;
const BADF: u32 = 8;
const INVAL: u32 = 28;
const NOSYS: u32 = 52;

type Ctx<'a> = Caller<'a, HostState>;

/// A guest's `proc_exit`: it ends the call, like a trap.
#[derive(Debug, thiserror::Error)]
#[error("the filter called proc_exit({0})")]
pub struct ProcExit(pub i32);

pub fn define(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut caller: Ctx, fd: u32, iovs: u32, iovs_len: u32, written_out: u32| -> Result<u32> {
            if fd != 1 && fd != 2 {
                return Ok(BADF);
            }
            let mut text = Vec::new();
            for i in 0..iovs_len {
                let entry = memory::read(&caller, iovs + i * 8, 8)?;
                let ptr = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
                let len = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
                text.extend(memory::read(&caller, ptr, len)?);
            }
            let written = text.len() as u32;
            let message = String::from_utf8_lossy(&text);
            let message = message.trim_end_matches('\n');
            let filter = caller.data().plugin.name.as_str();
            if !message.is_empty() {
                if fd == 1 {
                    tracing::info!(target: "weft::filter", filter, "{message}");
                } else {
                    tracing::error!(target: "weft::filter", filter, "{message}");
                }
            }
            memory::write_u32(&mut caller, written_out, written)?;
            Ok(SUCCESS)
        },
    )?;
    linker.func_wrap(WASI, "fd_read", |_: Ctx, _fd: u32, _iovs: u32, _len: u32, _out: u32| -> u32 { NOSYS })?;
    linker.func_wrap(WASI, "fd_close", |_: Ctx, _fd: u32| -> u32 { BADF })?;
    linker.func_wrap(WASI, "fd_seek", |_: Ctx, _fd: u32, _offset: i64, _whence: u32, _out: u32| -> u32 { BADF })?;
    linker.func_wrap(WASI, "fd_fdstat_get", |mut caller: Ctx, fd: u32, out: u32| -> Result<u32> {
        if fd != 1 && fd != 2 {
            return Ok(BADF);
        }
        // A character device that may be written (rights: FD_WRITE).
        let mut stat = [0u8; 24];
        stat[0] = 2;
        stat[8..16].copy_from_slice(&64u64.to_le_bytes());
        memory::write(&mut caller, out, &stat)?;
        Ok(SUCCESS)
    })?;
    linker.func_wrap(WASI, "fd_prestat_get", |_: Ctx, _fd: u32, _out: u32| -> u32 { BADF })?;
    linker.func_wrap(WASI, "fd_prestat_dir_name", |_: Ctx, _fd: u32, _path: u32, _len: u32| -> u32 { BADF })?;
    linker.func_wrap(
        WASI,
        "path_open",
        |_: Ctx,
         _dir: u32,
         _flags: u32,
         _path: u32,
         _len: u32,
         _oflags: u32,
         _base: u64,
         _inherit: u64,
         _fdflags: u32,
         _out: u32|
         -> u32 { NOSYS },
    )?;
    for (sizes, values) in [("environ_sizes_get", "environ_get"), ("args_sizes_get", "args_get")] {
        linker.func_wrap(WASI, sizes, |mut caller: Ctx, count_out: u32, size_out: u32| -> Result<u32> {
            memory::write_u32(&mut caller, count_out, 0)?;
            memory::write_u32(&mut caller, size_out, 0)?;
            Ok(SUCCESS)
        })?;
        linker.func_wrap(WASI, values, |_: Ctx, _ptrs: u32, _buf: u32| -> u32 { SUCCESS })?;
    }
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut caller: Ctx, clock: u32, _precision: u64, out: u32| -> Result<u32> {
            let nanos = match clock {
                0 => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
                    as u64,
                1..=3 => monotonic_nanos(),
                _ => return Ok(INVAL),
            };
            memory::write_u64(&mut caller, out, nanos)?;
            Ok(SUCCESS)
        },
    )?;
    linker.func_wrap(WASI, "clock_res_get", |mut caller: Ctx, _clock: u32, out: u32| -> Result<u32> {
        memory::write_u64(&mut caller, out, 1)?;
        Ok(SUCCESS)
    })?;
    linker.func_wrap(WASI, "random_get", |mut caller: Ctx, buf: u32, len: u32| -> Result<u32> {
        // Filters may use this for keys and nonces: the operating system's generator, not a fast one.
        let mut bytes = vec![0u8; len as usize];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| Error::msg("no system randomness"))?;
        memory::write(&mut caller, buf, &bytes)?;
        Ok(SUCCESS)
    })?;
    linker.func_wrap(WASI, "sched_yield", |_: Ctx| -> u32 { SUCCESS })?;
    linker.func_wrap(WASI, "poll_oneoff", |_: Ctx, _in: u32, _out: u32, _n: u32, _events: u32| -> u32 { NOSYS })?;
    linker.func_wrap(WASI, "proc_exit", |_: Ctx, code: i32| -> Result<()> { Err(Error::new(ProcExit(code))) })?;
    Ok(())
}

fn monotonic_nanos() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}

//! The hostcalls a Proxy-Wasm module imports (module `env`), and the WASI preview1 calls that
//! modules built for `wasm32-wasip1` make. Every import the public SDK declares is defined here.
//! A call weft does not support yet traps with a message that names it, so the filter's failure
//! policy applies and the log says exactly what was missing.

mod wasi;

use crate::abi::{self, status, BufferType, MapType};
use crate::memory;
use crate::shared::MetricOutcome;
use crate::stream::EditError;
use crate::vm::{HostState, LocalResponse};
use wasmtime::{Caller, Error, Linker, Result};

type Ctx<'a> = Caller<'a, HostState>;

pub fn define(linker: &mut Linker<HostState>) -> Result<()> {
    wasi::define(linker)?;
    define_logging_and_time(linker)?;
    define_header_maps(linker)?;
    define_buffers_and_properties(linker)?;
    define_stream_control(linker)?;
    define_shared_data_and_metrics(linker)?;
    define_not_yet_supported(linker)?;
    Ok(())
}

/// A trap naming a hostcall weft does not offer yet.
fn unsupported(call: &str) -> Error {
    Error::msg(format!("{call} is not supported by this version of weft"))
}

fn define_logging_and_time(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap("env", "proxy_log", |caller: Ctx, level: u32, ptr: u32, len: u32| -> Result<u32> {
        let message = memory::read_string(&caller, ptr, len)?;
        let filter = caller.data().plugin.name.as_str();
        match abi::log_level(level) {
            tracing::Level::TRACE => tracing::trace!(target: "weft::filter", filter, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(target: "weft::filter", filter, "{message}"),
            tracing::Level::INFO => tracing::info!(target: "weft::filter", filter, "{message}"),
            tracing::Level::WARN => tracing::warn!(target: "weft::filter", filter, "{message}"),
            _ => tracing::error!(target: "weft::filter", filter, "{message}"),
        }
        Ok(status::OK)
    })?;
    linker.func_wrap("env", "proxy_get_log_level", |mut caller: Ctx, out: u32| -> Result<u32> {
        memory::write_u32(&mut caller, out, abi::current_log_level())?;
        Ok(status::OK)
    })?;
    linker.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut caller: Ctx, out: u32| -> Result<u32> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        memory::write_u64(&mut caller, out, now.as_nanos() as u64)?;
        Ok(status::OK)
    })?;
    Ok(())
}

/// Hands `value` to the guest (status OK), or answers NOT_FOUND, which the SDK reads as `None`.
fn give_or_not_found(caller: &mut Ctx, value: Option<Vec<u8>>, ptr_out: u32, size_out: u32) -> Result<u32> {
    match value {
        Some(value) => {
            memory::give(caller, &value, ptr_out, size_out)?;
            Ok(status::OK)
        }
        None => Ok(status::NOT_FOUND),
    }
}

fn map_type(value: u32) -> Result<MapType> {
    MapType::from_abi(value).ok_or_else(|| Error::msg(format!("unknown header map type {value}")))
}

/// Turns a refused edit into the answer the SDK can take: a trap with the reason for a guest bug.
fn edited(result: std::result::Result<(), EditError>) -> Result<u32> {
    match result {
        Ok(()) => Ok(status::OK),
        Err(EditError::Unavailable) => Ok(status::NOT_FOUND),
        Err(EditError::Invalid(reason)) => Err(Error::msg(reason)),
    }
}

fn define_header_maps(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: Ctx, map: u32, ptr_out: u32, size_out: u32| -> Result<u32> {
            let map = map_type(map)?;
            let pairs = caller.data().stream.as_ref().map(|s| s.pairs(map)).unwrap_or_default();
            let bytes = if pairs.is_empty() {
                Vec::new()
            } else {
                abi::encode_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            };
            memory::give(&mut caller, &bytes, ptr_out, size_out)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut caller: Ctx, map: u32, size_out: u32| -> Result<u32> {
            let map = map_type(map)?;
            let count = caller.data().stream.as_ref().map_or(0, |s| s.count(map));
            memory::write_u32(&mut caller, size_out, count as u32)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut caller: Ctx, map: u32, key: u32, key_len: u32, ptr_out: u32, size_out: u32| -> Result<u32> {
            let (map, key) = (map_type(map)?, memory::read_string(&caller, key, key_len)?);
            let value = caller.data().stream.as_ref().and_then(|s| s.value(map, &key));
            give_or_not_found(&mut caller, value, ptr_out, size_out)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: Ctx, map: u32, ptr: u32, len: u32| -> Result<u32> {
            let map = map_type(map)?;
            let bytes = memory::read(&caller, ptr, len)?;
            let pairs = abi::decode_pairs(&bytes).ok_or_else(|| Error::msg("malformed header map"))?;
            let Some(stream) = caller.data_mut().stream.as_mut() else { return Ok(status::NOT_FOUND) };
            edited(stream.replace_all(map, &pairs))
        },
    )?;
    for (name, append) in [("proxy_add_header_map_value", true), ("proxy_replace_header_map_value", false)] {
        linker.func_wrap(
            "env",
            name,
            move |mut caller: Ctx, map: u32, key: u32, key_len: u32, value: u32, value_len: u32| -> Result<u32> {
                let map = map_type(map)?;
                let key = memory::read_string(&caller, key, key_len)?;
                let value = memory::read(&caller, value, value_len)?;
                let Some(stream) = caller.data_mut().stream.as_mut() else { return Ok(status::NOT_FOUND) };
                edited(stream.set(map, &key, &value, append))
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Ctx, map: u32, key: u32, key_len: u32| -> Result<u32> {
            let (map, key) = (map_type(map)?, memory::read_string(&caller, key, key_len)?);
            let Some(stream) = caller.data_mut().stream.as_mut() else { return Ok(status::NOT_FOUND) };
            edited(stream.remove(map, &key))
        },
    )?;
    Ok(())
}

fn define_buffers_and_properties(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: Ctx, buffer: u32, start: u32, max: u32, ptr_out: u32, size_out: u32| -> Result<u32> {
            let bytes = match BufferType::from_abi(buffer) {
                Some(BufferType::PluginConfiguration) => caller.data().plugin.configuration.clone(),
                Some(BufferType::VmConfiguration) => Vec::new(),
                Some(BufferType::RequestBody | BufferType::ResponseBody) => {
                    return Err(unsupported("reading HTTP bodies"))
                }
                _ => return Ok(status::NOT_FOUND),
            };
            let start = (start as usize).min(bytes.len());
            let end = start.saturating_add(max as usize).min(bytes.len());
            memory::give(&mut caller, &bytes[start..end], ptr_out, size_out)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |_: Ctx, _buffer: u32, _size_out: u32, _flags_out: u32| -> u32 { status::UNIMPLEMENTED },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |_: Ctx, _b: u32, _s: u32, _n: u32, _p: u32, _l: u32| -> Result<u32> {
            Err(unsupported("proxy_set_buffer_bytes (rewriting HTTP bodies)"))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut caller: Ctx, path: u32, path_len: u32, ptr_out: u32, size_out: u32| -> Result<u32> {
            let path = memory::read_string(&caller, path, path_len)?;
            let segments: Vec<&str> = path.split('\0').collect();
            let data = caller.data();
            let value = match &data.stream {
                Some(stream) => stream.property(&segments, &data.plugin),
                None => data.plugin.property(&segments),
            };
            give_or_not_found(&mut caller, value, ptr_out, size_out)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: Ctx, path: u32, path_len: u32, value: u32, value_len: u32| -> Result<u32> {
            let path = memory::read_string(&caller, path, path_len)?;
            let value = memory::read(&caller, value, value_len)?;
            let segments: Vec<&str> = path.split('\0').collect();
            if let Some(stream) = caller.data_mut().stream.as_mut() {
                stream.set_property(&segments, &value);
            }
            Ok(status::OK)
        },
    )?;
    Ok(())
}

fn define_stream_control(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: Ctx,
         status_code: u32,
         _details: u32,
         _details_len: u32,
         body: u32,
         body_len: u32,
         headers: u32,
         headers_len: u32,
         grpc_status: i32|
         -> Result<u32> {
            let body = memory::read(&caller, body, body_len)?;
            let header_bytes = memory::read(&caller, headers, headers_len)?;
            let pairs = abi::decode_pairs(&header_bytes)
                .ok_or_else(|| Error::msg("malformed header map in a local response"))?;
            let headers =
                pairs.into_iter().map(|(k, v)| (String::from_utf8_lossy(k).to_ascii_lowercase(), v.to_vec())).collect();
            let status = u16::try_from(status_code).ok().filter(|s| (200..=599).contains(s)).unwrap_or(500);
            caller.data_mut().local_response = Some(LocalResponse { status, body, headers, grpc_status });
            Ok(status::OK)
        },
    )?;
    // Streams never stay paused yet (no bodies or callouts), so there is nothing to resume.
    linker.func_wrap("env", "proxy_continue_stream", |_: Ctx, _stream: u32| -> u32 { status::OK })?;
    linker.func_wrap("env", "proxy_close_stream", |_: Ctx, _stream: u32| -> Result<u32> {
        Err(unsupported("proxy_close_stream"))
    })?;
    linker.func_wrap("env", "proxy_set_effective_context", |_: Ctx, _context: u32| -> u32 { status::OK })?;
    linker.func_wrap("env", "proxy_done", |_: Ctx| -> u32 { status::OK })?;
    Ok(())
}

fn metric_status(outcome: MetricOutcome) -> u32 {
    match outcome {
        MetricOutcome::Ok => status::OK,
        MetricOutcome::NotFound => status::NOT_FOUND,
        MetricOutcome::BadArgument => status::BAD_ARGUMENT,
    }
}

fn define_shared_data_and_metrics(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut caller: Ctx, key: u32, key_len: u32, ptr_out: u32, size_out: u32, cas_out: u32| -> Result<u32> {
            let key = memory::read(&caller, key, key_len)?;
            match caller.data().plugin.shared_data.get(&key) {
                Some((value, cas)) => {
                    memory::give(&mut caller, &value, ptr_out, size_out)?;
                    memory::write_u32(&mut caller, cas_out, cas)?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |caller: Ctx, key: u32, key_len: u32, value: u32, value_len: u32, cas: u32| -> Result<u32> {
            let key = memory::read(&caller, key, key_len)?;
            let value = memory::read(&caller, value, value_len)?;
            Ok(if caller.data().plugin.shared_data.set(&key, value, cas) { status::OK } else { status::CAS_MISMATCH })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: Ctx, kind: u32, name: u32, name_len: u32, id_out: u32| -> Result<u32> {
            let name = memory::read_string(&caller, name, name_len)?;
            let plugin = caller.data().plugin.clone();
            match plugin.defined_metrics.define(&plugin.proxy_metrics, &plugin.name, kind, &name) {
                Some(id) => {
                    memory::write_u32(&mut caller, id_out, id)?;
                    Ok(status::OK)
                }
                None => Ok(status::BAD_ARGUMENT),
            }
        },
    )?;
    linker.func_wrap("env", "proxy_increment_metric", |caller: Ctx, id: u32, offset: i64| -> u32 {
        metric_status(caller.data().plugin.defined_metrics.increment(id, offset))
    })?;
    linker.func_wrap("env", "proxy_record_metric", |caller: Ctx, id: u32, value: u64| -> u32 {
        metric_status(caller.data().plugin.defined_metrics.record(id, value))
    })?;
    linker.func_wrap("env", "proxy_get_metric", |mut caller: Ctx, id: u32, out: u32| -> Result<u32> {
        match caller.data().plugin.defined_metrics.get(id) {
            Ok(value) => {
                memory::write_u64(&mut caller, out, value)?;
                Ok(status::OK)
            }
            Err(outcome) => Ok(metric_status(outcome)),
        }
    })?;
    Ok(())
}

/// Calls a filter can make that weft does not serve yet. The ones whose SDK wrappers take an
/// error status answer it; the rest trap with their name.
fn define_not_yet_supported(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut caller: Ctx, period: u32| -> u32 {
        caller.data_mut().tick_period = (period > 0).then(|| std::time::Duration::from_millis(period.into()));
        status::OK
    })?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |_: Ctx,
         _u: u32,
         _ul: u32,
         _h: u32,
         _hl: u32,
         _b: u32,
         _bl: u32,
         _t: u32,
         _tl: u32,
         _timeout: u32,
         _token: u32|
         -> u32 { status::INTERNAL_FAILURE },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |_: Ctx,
         _a: u32,
         _b: u32,
         _c: u32,
         _d: u32,
         _e: u32,
         _f: u32,
         _g: u32,
         _h: u32,
         _i: u32,
         _j: u32,
         _timeout: u32,
         _token: u32|
         -> u32 { status::INTERNAL_FAILURE },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_: Ctx, _a: u32, _b: u32, _c: u32, _d: u32, _e: u32, _f: u32, _g: u32, _h: u32, _token: u32| -> u32 {
            status::INTERNAL_FAILURE
        },
    )?;
    linker.func_wrap("env", "proxy_grpc_send", |_: Ctx, _t: u32, _p: u32, _l: u32, _e: u32| -> u32 {
        status::NOT_FOUND
    })?;
    linker.func_wrap("env", "proxy_grpc_cancel", |_: Ctx, _t: u32| -> u32 { status::NOT_FOUND })?;
    linker.func_wrap("env", "proxy_grpc_close", |_: Ctx, _t: u32| -> u32 { status::NOT_FOUND })?;
    linker.func_wrap("env", "proxy_get_status", |_: Ctx, _c: u32, _p: u32, _s: u32| -> Result<u32> {
        Err(unsupported("proxy_get_status"))
    })?;
    linker.func_wrap("env", "proxy_register_shared_queue", |_: Ctx, _n: u32, _nl: u32, _id: u32| -> Result<u32> {
        Err(unsupported("proxy_register_shared_queue (shared queues)"))
    })?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |_: Ctx, _v: u32, _vl: u32, _n: u32, _nl: u32, _id: u32| -> u32 { status::NOT_FOUND },
    )?;
    linker.func_wrap("env", "proxy_dequeue_shared_queue", |_: Ctx, _id: u32, _p: u32, _s: u32| -> u32 {
        status::NOT_FOUND
    })?;
    linker.func_wrap("env", "proxy_enqueue_shared_queue", |_: Ctx, _id: u32, _p: u32, _l: u32| -> u32 {
        status::NOT_FOUND
    })?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_: Ctx, _n: u32, _nl: u32, _a: u32, _al: u32, _r: u32, _rl: u32| -> u32 { status::NOT_FOUND },
    )?;
    Ok(())
}

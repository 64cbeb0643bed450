//! The hostcalls a Proxy-Wasm module imports (module `env`), and the WASI preview1 calls that
//! modules built for `wasm32-wasip1` make. Every import the public SDK declares is defined here.
//! What weft does not serve (streaming gRPC, foreign functions) answers UNIMPLEMENTED.

mod wasi;

use crate::abi::{self, status, BufferType, MapType};
use crate::callout::{self, Callout};
use crate::memory;
use crate::shared::MetricOutcome;
use crate::stream::EditError;
use crate::vm::{HostState, LocalResponse, ParkOutcome};
use wasmtime::{Caller, Error, Linker, Result};
use weft_proxy::chain::DEFAULT_CALLOUT_TIMEOUT;

type Ctx<'a> = Caller<'a, HostState>;

pub fn define(linker: &mut Linker<HostState>) -> Result<()> {
    wasi::define(linker)?;
    define_logging_and_time(linker)?;
    define_header_maps(linker)?;
    define_buffers_and_properties(linker)?;
    define_stream_control(linker)?;
    define_shared_data_and_metrics(linker)?;
    define_callouts(linker)?;
    define_shared_queues(linker)?;
    define_unimplemented(linker)?;
    Ok(())
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

/// Runs `f` on a property path's segments (the path is NUL-separated), without allocating for the
/// paths properties have (a few segments).
fn with_segments<R>(path: &str, f: impl FnOnce(&[&str]) -> R) -> R {
    let mut fixed = [""; 8];
    let mut count = 0;
    for segment in path.split('\0') {
        if count == fixed.len() {
            return f(&path.split('\0').collect::<Vec<_>>());
        }
        fixed[count] = segment;
        count += 1;
    }
    f(&fixed[..count])
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

/// The maps of a callout's response, read-only; `None` for the request's own maps.
fn callout_map(host: &HostState, map: MapType) -> Option<&[(Vec<u8>, Vec<u8>)]> {
    match map {
        MapType::HttpCallResponseHeaders => Some(host.callout_reply.as_ref().map_or(&[], |r| r.headers.as_slice())),
        MapType::HttpCallResponseTrailers => Some(host.callout_reply.as_ref().map_or(&[], |r| r.trailers.as_slice())),
        // Unary gRPC callouts hand over the message; their metadata is not kept.
        MapType::GrpcInitialMetadata | MapType::GrpcTrailingMetadata => Some(&[]),
        _ => None,
    }
}

fn define_header_maps(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: Ctx, map: u32, ptr_out: u32, size_out: u32| -> Result<u32> {
            let map = map_type(map)?;
            memory::give_from(&mut caller, ptr_out, size_out, |_, host, out| {
                match callout_map(host, map) {
                    Some([]) => {}
                    Some(pairs) => abi::encode_pairs_into(out, pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))),
                    None => {
                        if let Some(stream) = host.stream() {
                            stream.encode_pairs_into(map, out);
                        }
                    }
                }
                Ok(true)
            })?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut caller: Ctx, map: u32, size_out: u32| -> Result<u32> {
            let map = map_type(map)?;
            let count = match callout_map(caller.data(), map) {
                Some(pairs) => pairs.len(),
                None => caller.data().stream().map_or(0, |s| s.count(map)),
            };
            memory::write_u32(&mut caller, size_out, count as u32)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut caller: Ctx, map: u32, key: u32, key_len: u32, ptr_out: u32, size_out: u32| -> Result<u32> {
            let map = map_type(map)?;
            let found = memory::give_from(&mut caller, ptr_out, size_out, |data, host, out| {
                let key = memory::text(memory::slice(data, key, key_len)?);
                let value = match callout_map(host, map) {
                    Some(pairs) => {
                        pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(key.as_bytes())).map(|(_, v)| v.as_slice())
                    }
                    None => host.stream().and_then(|s| s.value(map, &key)),
                };
                Ok(value.map(|value| out.extend_from_slice(value)).is_some())
            })?;
            Ok(if found { status::OK } else { status::NOT_FOUND })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: Ctx, map: u32, ptr: u32, len: u32| -> Result<u32> {
            let map = map_type(map)?;
            let bytes = memory::read(&caller, ptr, len)?;
            let pairs = abi::decode_pairs(&bytes).ok_or_else(|| Error::msg("malformed header map"))?;
            let Some(stream) = caller.data_mut().stream_mut() else { return Ok(status::NOT_FOUND) };
            edited(stream.replace_all(map, &pairs))
        },
    )?;
    for (name, append) in [("proxy_add_header_map_value", true), ("proxy_replace_header_map_value", false)] {
        linker.func_wrap(
            "env",
            name,
            move |mut caller: Ctx, map: u32, key: u32, key_len: u32, value: u32, value_len: u32| -> Result<u32> {
                let map = map_type(map)?;
                let (data, host) = memory::split(&mut caller)?;
                let key = memory::text(memory::slice(data, key, key_len)?);
                let value = memory::slice(data, value, value_len)?;
                let Some(stream) = host.stream_mut() else { return Ok(status::NOT_FOUND) };
                edited(stream.set(map, &key, value, append))
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Ctx, map: u32, key: u32, key_len: u32| -> Result<u32> {
            let map = map_type(map)?;
            let (data, host) = memory::split(&mut caller)?;
            let key = memory::text(memory::slice(data, key, key_len)?);
            let Some(stream) = host.stream_mut() else { return Ok(status::NOT_FOUND) };
            edited(stream.remove(map, &key))
        },
    )?;
    Ok(())
}

/// The bytes of a buffer the guest can read now; `None` when there is no such buffer now.
fn readable_buffer(host: &HostState, buffer: u32) -> Option<&[u8]> {
    match BufferType::from_abi(buffer)? {
        BufferType::PluginConfiguration => Some(&host.plugin.configuration),
        BufferType::VmConfiguration => Some(&[]),
        kind @ (BufferType::RequestBody
        | BufferType::ResponseBody
        | BufferType::DownstreamData
        | BufferType::UpstreamData) => host.stream()?.data(kind).map(|data| &data[..]),
        BufferType::HttpCallResponseBody => host.callout_reply.as_ref().map(|reply| reply.body.as_slice()),
        BufferType::GrpcReceiveBuffer => Some(&host.grpc_message),
        BufferType::CallData => None,
    }
}

/// `max` bytes of `bytes` from `start`, clamped to what there is.
fn window(bytes: &[u8], start: u32, max: u32) -> &[u8] {
    let start = (start as usize).min(bytes.len());
    let end = start.saturating_add(max as usize).min(bytes.len());
    &bytes[start..end]
}

fn define_buffers_and_properties(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: Ctx, buffer: u32, start: u32, max: u32, ptr_out: u32, size_out: u32| -> Result<u32> {
            let found = memory::give_from(&mut caller, ptr_out, size_out, |_, host, out| {
                let bytes = readable_buffer(host, buffer).map(|b| window(b, start, max));
                Ok(bytes.map(|bytes| out.extend_from_slice(bytes)).is_some())
            })?;
            Ok(if found { status::OK } else { status::NOT_FOUND })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut caller: Ctx, buffer: u32, size_out: u32, flags_out: u32| -> Result<u32> {
            let Some(size) = readable_buffer(caller.data(), buffer).map(<[u8]>::len) else {
                return Ok(status::NOT_FOUND);
            };
            memory::write_u32(&mut caller, size_out, size as u32)?;
            memory::write_u32(&mut caller, flags_out, 0)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut caller: Ctx, buffer: u32, start: u32, length: u32, ptr: u32, size: u32| -> Result<u32> {
            let Some(kind) = BufferType::from_abi(buffer) else { return Ok(status::NOT_FOUND) };
            let (data, host) = memory::split(&mut caller)?;
            let bytes = memory::slice(data, ptr, size)?;
            let Some(stream) = host.stream_mut() else { return Ok(status::NOT_FOUND) };
            Ok(if stream.splice(kind, start as usize, length as usize, bytes) { status::OK } else { status::NOT_FOUND })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut caller: Ctx, path: u32, path_len: u32, ptr_out: u32, size_out: u32| -> Result<u32> {
            let found = memory::give_from(&mut caller, ptr_out, size_out, |data, host, out| {
                let path = memory::text(memory::slice(data, path, path_len)?);
                Ok(with_segments(&path, |segments| match host.stream() {
                    Some(stream) => stream.property_into(segments, &host.plugin, out),
                    None => host.plugin.property(segments).map(|value| out.extend_from_slice(&value)).is_some(),
                }))
            })?;
            Ok(if found { status::OK } else { status::NOT_FOUND })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: Ctx, path: u32, path_len: u32, value: u32, value_len: u32| -> Result<u32> {
            let (data, host) = memory::split(&mut caller)?;
            let path = memory::text(memory::slice(data, path, path_len)?);
            let value = memory::slice(data, value, value_len)?;
            let Some(stream) = host.stream_mut() else { return Ok(status::OK) };
            with_segments(&path, |segments| match stream.set_property(segments, value) {
                Ok(()) => Ok(status::OK),
                Err(reason) => {
                    tracing::warn!(property = %segments.join("."), %reason, "filter set a property to a value weft cannot use");
                    Ok(status::BAD_ARGUMENT)
                }
            })
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
            caller.data_mut().decide(ParkOutcome::Respond(LocalResponse { status, body, headers, grpc_status }));
            Ok(status::OK)
        },
    )?;
    // The SDK treats any answer but OK to these as a bug and panics, so they answer OK; a call
    // aimed at a request that is not waiting changes nothing.
    linker.func_wrap("env", "proxy_continue_stream", |mut caller: Ctx, _stream: u32| -> u32 {
        caller.data_mut().decide(ParkOutcome::Continue);
        status::OK
    })?;
    linker.func_wrap("env", "proxy_close_stream", |mut caller: Ctx, _stream: u32| -> u32 {
        caller.data_mut().decide(ParkOutcome::Close);
        status::OK
    })?;
    linker.func_wrap("env", "proxy_set_effective_context", |mut caller: Ctx, context: u32| -> u32 {
        caller.data_mut().effective = context;
        status::OK
    })?;
    linker.func_wrap("env", "proxy_done", |_: Ctx| -> u32 { status::OK })?;
    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut caller: Ctx, period: u32| -> u32 {
        let period = (period > 0).then(|| std::time::Duration::from_millis(period.into()));
        let host = caller.data_mut();
        if host.tick_period != period {
            host.tick_period = period;
            host.instance_events.ticks_changed();
        }
        status::OK
    })?;
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

/// Registers a callout to be sent once the running callback returns, and hands its token to the
/// guest. An unknown cluster or a request that cannot be built answers BAD_ARGUMENT, and the log
/// says why.
fn queue_callout(
    caller: &mut Ctx,
    cluster: String,
    request: std::result::Result<http::Request<bytes::Bytes>, String>,
    timeout_ms: u32,
    grpc: bool,
    token_out: u32,
) -> Result<u32> {
    let plugin = &caller.data().plugin;
    if !plugin.callouts.as_ref().is_some_and(|c| c.knows(&cluster)) {
        tracing::warn!(filter = %plugin.name, cluster, "callout to a cluster that is not configured");
        return Ok(status::BAD_ARGUMENT);
    }
    let request = match request {
        Ok(request) => request,
        Err(reason) => {
            tracing::warn!(filter = %plugin.name, %reason, "refused a callout");
            return Ok(status::BAD_ARGUMENT);
        }
    };
    let timeout = match timeout_ms {
        0 => DEFAULT_CALLOUT_TIMEOUT,
        ms => std::time::Duration::from_millis(ms.into()),
    };
    let host = caller.data_mut();
    let token = host.next_token;
    host.next_token = host.next_token.wrapping_add(1).max(1);
    let context = host.effective;
    host.callouts.insert(token, context);
    host.outbox.push(Callout { token, cluster, request, timeout, grpc });
    memory::write_u32(caller, token_out, token)?;
    Ok(status::OK)
}

fn define_callouts(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: Ctx,
         upstream: u32,
         upstream_len: u32,
         headers: u32,
         headers_len: u32,
         body: u32,
         body_len: u32,
         _trailers: u32,
         _trailers_len: u32,
         timeout_ms: u32,
         token_out: u32|
         -> Result<u32> {
            let cluster = memory::read_string(&caller, upstream, upstream_len)?;
            let header_bytes = memory::read(&caller, headers, headers_len)?;
            let body = memory::read(&caller, body, body_len)?;
            let pairs =
                abi::decode_pairs(&header_bytes).ok_or_else(|| Error::msg("malformed header map in a callout"))?;
            let request = callout::http_request(&pairs, body);
            queue_callout(&mut caller, cluster, request, timeout_ms, false, token_out)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut caller: Ctx,
         upstream: u32,
         upstream_len: u32,
         service: u32,
         service_len: u32,
         method: u32,
         method_len: u32,
         metadata: u32,
         metadata_len: u32,
         message: u32,
         message_len: u32,
         timeout_ms: u32,
         token_out: u32|
         -> Result<u32> {
            let cluster = memory::read_string(&caller, upstream, upstream_len)?;
            let service = memory::read_string(&caller, service, service_len)?;
            let method = memory::read_string(&caller, method, method_len)?;
            let metadata = memory::read(&caller, metadata, metadata_len)?;
            let message = memory::read(&caller, message, message_len)?;
            let metadata = if metadata.is_empty() {
                Vec::new()
            } else {
                abi::decode_pairs(&metadata).ok_or_else(|| Error::msg("malformed metadata in a gRPC callout"))?
            };
            let request = callout::grpc_request(&cluster, &service, &method, &metadata, &message);
            queue_callout(&mut caller, cluster, request, timeout_ms, true, token_out)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut caller: Ctx, code_out: u32, message_out: u32, message_size_out: u32| -> Result<u32> {
            let (code, message) = caller.data().grpc_status.clone();
            memory::write_u32(&mut caller, code_out, code)?;
            memory::give(&mut caller, message.as_bytes(), message_out, message_size_out)?;
            Ok(status::OK)
        },
    )?;
    Ok(())
}

fn define_shared_queues(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut caller: Ctx, name: u32, name_len: u32, id_out: u32| -> Result<u32> {
            let name = memory::read_string(&caller, name, name_len)?;
            let host = caller.data();
            let id = host.plugin.queues.register(&host.plugin.name, &name, host.instance_events.clone());
            memory::write_u32(&mut caller, id_out, id)?;
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut caller: Ctx, vm_id: u32, vm_id_len: u32, name: u32, name_len: u32, id_out: u32| -> Result<u32> {
            let vm_id = memory::read_string(&caller, vm_id, vm_id_len)?;
            let name = memory::read_string(&caller, name, name_len)?;
            match caller.data().plugin.queues.resolve(&vm_id, &name) {
                Some(id) => {
                    memory::write_u32(&mut caller, id_out, id)?;
                    Ok(status::OK)
                }
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |caller: Ctx, id: u32, data: u32, data_len: u32| -> Result<u32> {
            let data = memory::read(&caller, data, data_len)?;
            Ok(if caller.data().plugin.queues.enqueue(id, data) { status::OK } else { status::NOT_FOUND })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut caller: Ctx, id: u32, ptr_out: u32, size_out: u32| -> Result<u32> {
            match caller.data().plugin.queues.dequeue(id) {
                None => Ok(status::NOT_FOUND),
                Some(None) => Ok(status::EMPTY),
                Some(Some(item)) => {
                    memory::give(&mut caller, &item, ptr_out, size_out)?;
                    Ok(status::OK)
                }
            }
        },
    )?;
    Ok(())
}

/// Calls weft does not serve: streaming gRPC and foreign functions. They answer UNIMPLEMENTED,
/// as the ABI says; no filter is refused for importing them.
fn define_unimplemented(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_: Ctx, _a: u32, _b: u32, _c: u32, _d: u32, _e: u32, _f: u32, _g: u32, _h: u32, _token: u32| -> u32 {
            status::UNIMPLEMENTED
        },
    )?;
    linker.func_wrap("env", "proxy_grpc_send", |_: Ctx, _t: u32, _p: u32, _l: u32, _e: u32| -> u32 {
        status::UNIMPLEMENTED
    })?;
    linker.func_wrap("env", "proxy_grpc_cancel", |_: Ctx, _t: u32| -> u32 { status::UNIMPLEMENTED })?;
    linker.func_wrap("env", "proxy_grpc_close", |_: Ctx, _t: u32| -> u32 { status::UNIMPLEMENTED })?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_: Ctx, _n: u32, _nl: u32, _a: u32, _al: u32, _r: u32, _rl: u32| -> u32 { status::UNIMPLEMENTED },
    )?;
    Ok(())
}

//! The Wasm backend of `host`: Proxy-Wasm v0.2.1 imports, with memory handed back and forth as
//! the spec says (the host allocates return values through `proxy_on_memory_allocate`, and the
//! guest owns and frees them).

use super::{check, decode_pairs, encode_pairs, Buffer, Direction, LogLevel, Map, MetricKind, NOT_FOUND, OK};
use crate::Error;
use std::time::Duration;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_set_header_map_pairs(map: u32, data: *const u8, size: usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_buffer_bytes(buffer: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_set_buffer_bytes(buffer: u32, start: usize, size: usize, data: *const u8, data_size: usize) -> u32;
    fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_set_property(path: *const u8, path_size: usize, data: *const u8, size: usize) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        upstream: *const u8,
        upstream_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_set_effective_context(context: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_metric(id: u32, value: *mut u64) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        value: *mut *mut u8,
        value_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, value_size: usize, cas: u32) -> u32;
}

/// Takes ownership of bytes the host allocated in this module's memory.
fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host filled `size` bytes it got from `proxy_on_memory_allocate(size)`, which
    // allocated exactly that capacity with this module's allocator (see `crate::allocate`).
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Runs a call that may return allocated bytes; `None` when the host has none (NOT_FOUND).
fn returned(call: &'static str, f: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Vec<u8>>, Error> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
    match f(&mut data, &mut size) {
        OK => Ok(Some(owned(data, size))),
        NOT_FOUND => Ok(None),
        status => Err(Error::Host { call, status }),
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

pub(crate) fn log(level: LogLevel, message: &str) {
    // SAFETY (here and below): every pointer passed is valid for the size passed with it.
    unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

pub(crate) fn now_nanos() -> u64 {
    let mut time = 0u64;
    unsafe { proxy_get_current_time_nanoseconds(&mut time) };
    time
}

pub(crate) fn set_tick_period(period: Duration) -> Result<(), Error> {
    check("proxy_set_tick_period_milliseconds", unsafe {
        proxy_set_tick_period_milliseconds(period.as_millis() as u32)
    })
}

pub(crate) fn get_map_value(map: Map, key: &str) -> Result<Option<String>, Error> {
    let value = returned("proxy_get_header_map_value", |data, size| unsafe {
        proxy_get_header_map_value(map as u32, key.as_ptr(), key.len(), data, size)
    })?;
    Ok(value.map(text))
}

pub(crate) fn get_map_pairs(map: Map) -> Result<Vec<(String, String)>, Error> {
    let bytes = returned("proxy_get_header_map_pairs", |data, size| unsafe {
        proxy_get_header_map_pairs(map as u32, data, size)
    })?;
    match bytes {
        None => Ok(Vec::new()),
        Some(bytes) if bytes.is_empty() => Ok(Vec::new()),
        Some(bytes) => decode_pairs(&bytes).ok_or(Error::Host { call: "proxy_get_header_map_pairs", status: u32::MAX }),
    }
}

pub(crate) fn set_map_pairs(map: Map, pairs: &[(&str, &str)]) -> Result<(), Error> {
    let bytes = encode_pairs(pairs);
    check("proxy_set_header_map_pairs", unsafe { proxy_set_header_map_pairs(map as u32, bytes.as_ptr(), bytes.len()) })
}

pub(crate) fn replace_map_value(map: Map, key: &str, value: &str) -> Result<(), Error> {
    check("proxy_replace_header_map_value", unsafe {
        proxy_replace_header_map_value(map as u32, key.as_ptr(), key.len(), value.as_ptr(), value.len())
    })
}

pub(crate) fn add_map_value(map: Map, key: &str, value: &str) -> Result<(), Error> {
    check("proxy_add_header_map_value", unsafe {
        proxy_add_header_map_value(map as u32, key.as_ptr(), key.len(), value.as_ptr(), value.len())
    })
}

pub(crate) fn remove_map_value(map: Map, key: &str) -> Result<(), Error> {
    check("proxy_remove_header_map_value", unsafe {
        proxy_remove_header_map_value(map as u32, key.as_ptr(), key.len())
    })
}

pub(crate) fn get_buffer(buffer: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, Error> {
    returned("proxy_get_buffer_bytes", |data, size| unsafe {
        proxy_get_buffer_bytes(buffer as u32, start, max, data, size)
    })
}

pub(crate) fn set_buffer(buffer: Buffer, start: usize, size: usize, bytes: &[u8]) -> Result<(), Error> {
    check("proxy_set_buffer_bytes", unsafe {
        proxy_set_buffer_bytes(buffer as u32, start, size, bytes.as_ptr(), bytes.len())
    })
}

/// Property paths go over the ABI as their segments joined by NUL bytes.
fn path_bytes(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

pub(crate) fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, Error> {
    let path = path_bytes(path);
    returned("proxy_get_property", |data, size| unsafe { proxy_get_property(path.as_ptr(), path.len(), data, size) })
}

pub(crate) fn set_property(path: &[&str], value: &[u8]) -> Result<(), Error> {
    let path = path_bytes(path);
    check("proxy_set_property", unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

pub(crate) fn send_local_response(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    grpc_status: Option<u32>,
    details: &str,
) -> Result<(), Error> {
    let headers = encode_pairs(headers);
    let grpc = grpc_status.map_or(-1, |code| code as i32);
    check("proxy_send_local_response", unsafe {
        proxy_send_local_response(
            status as u32,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            grpc,
        )
    })
}

pub(crate) fn continue_stream(direction: Direction) -> Result<(), Error> {
    check("proxy_continue_stream", unsafe { proxy_continue_stream(direction as u32) })
}

pub(crate) fn http_call(cluster: &str, headers: &[(&str, &str)], body: &[u8], timeout: Duration) -> Result<u32, Error> {
    let headers = encode_pairs(headers);
    let trailers = encode_pairs(&[]);
    let mut token = 0u32;
    let status = unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout.as_millis().min(u32::MAX as u128) as u32,
            &mut token,
        )
    };
    check("proxy_http_call", status).map(|()| token)
}

pub(crate) fn set_effective_context(context: u32) -> Result<(), Error> {
    check("proxy_set_effective_context", unsafe { proxy_set_effective_context(context) })
}

pub(crate) fn define_metric(kind: MetricKind, name: &str) -> Result<u32, Error> {
    let mut id = 0u32;
    check("proxy_define_metric", unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub(crate) fn increment_metric(id: u32, offset: i64) -> Result<(), Error> {
    check("proxy_increment_metric", unsafe { proxy_increment_metric(id, offset) })
}

pub(crate) fn record_metric(id: u32, value: u64) -> Result<(), Error> {
    check("proxy_record_metric", unsafe { proxy_record_metric(id, value) })
}

pub(crate) fn get_metric(id: u32) -> Result<u64, Error> {
    let mut value = 0u64;
    check("proxy_get_metric", unsafe { proxy_get_metric(id, &mut value) })?;
    Ok(value)
}

pub(crate) fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, u32), Error> {
    let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0usize, 0u32);
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) } {
        OK => Ok((Some(owned(data, size)), cas)),
        NOT_FOUND => Ok((None, 0)),
        status => Err(Error::Host { call: "proxy_get_shared_data", status }),
    }
}

pub(crate) fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Error> {
    check("proxy_set_shared_data", unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

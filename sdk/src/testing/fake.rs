//! The native backend of `host`: an in-memory proxy, one per thread, that the harness sets up
//! and inspects. Same functions, same signatures as the Wasm backend.

use crate::host::{Buffer, Direction, LogLevel, Map, MetricKind};
use crate::{Error, LocalResponse};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

/// A callout a filter sent, as the harness records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callout {
    /// The id the filter got back ([`crate::CallId`]); hand it to `TestStream::reply`.
    pub id: crate::CallId,
    /// The cluster it was sent to.
    pub cluster: String,
    /// Its headers, pseudo-headers (`:method`, `:path`, `:authority`) included.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
    /// How long the filter said to wait.
    pub timeout: Duration,
}

impl Callout {
    /// One of the callout's headers.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

type Headers = Vec<(String, String)>;

#[derive(Default)]
pub(crate) struct Stream {
    pub request_headers: Vec<(String, String)>,
    pub request_trailers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub response_trailers: Vec<(String, String)>,
    /// Body data the current body phase sees (all of it buffered so far).
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub properties: HashMap<String, Vec<u8>>,
    pub local_response: Option<LocalResponse>,
    pub callouts: Vec<Callout>,
    pub resumed: Vec<Direction>,
}

#[derive(Default)]
pub(crate) struct Metric {
    pub name: String,
    pub kind: Option<MetricKind>,
    pub value: i64,
}

#[derive(Default)]
pub(crate) struct FakeHost {
    pub now_nanos: u64,
    pub current: u32,
    pub streams: HashMap<u32, Stream>,
    pub plugin_config: Vec<u8>,
    pub metrics: Vec<Metric>,
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    pub logs: Vec<(LogLevel, String)>,
    pub tick_period: Duration,
    pub next_token: u32,
    /// The answer being delivered to `on_call_response`.
    pub call_response: Option<(Headers, Vec<u8>)>,
}

thread_local! {
    static HOST: RefCell<FakeHost> = RefCell::new(FakeHost::default());
}

/// Runs `f` on this thread's fake host.
pub(crate) fn with<T>(f: impl FnOnce(&mut FakeHost) -> T) -> T {
    HOST.with(|host| f(&mut host.borrow_mut()))
}

fn no_stream() -> Error {
    Error::Host { call: "no request in this context", status: 2 }
}

fn on_stream<T>(f: impl FnOnce(&mut Stream) -> Result<T, Error>) -> Result<T, Error> {
    with(|host| {
        let current = host.current;
        host.streams.get_mut(&current).ok_or_else(no_stream).and_then(f)
    })
}

fn on_map<T>(map: Map, f: impl FnOnce(&mut Vec<(String, String)>) -> T) -> Result<T, Error> {
    with(|host| {
        if map == Map::CallResponseHeaders {
            let mut headers = host.call_response.as_ref().map(|(headers, _)| headers.clone()).unwrap_or_default();
            return Ok(f(&mut headers));
        }
        let current = host.current;
        let stream = host.streams.get_mut(&current).ok_or_else(no_stream)?;
        Ok(f(match map {
            Map::RequestHeaders => &mut stream.request_headers,
            Map::RequestTrailers => &mut stream.request_trailers,
            Map::ResponseHeaders => &mut stream.response_headers,
            Map::ResponseTrailers => &mut stream.response_trailers,
            Map::CallResponseHeaders => unreachable!("answered above"),
        }))
    })
}

pub(crate) fn log(level: LogLevel, message: &str) {
    with(|host| host.logs.push((level, message.to_owned())));
}

pub(crate) fn now_nanos() -> u64 {
    with(|host| host.now_nanos)
}

pub(crate) fn set_tick_period(period: Duration) -> Result<(), Error> {
    with(|host| host.tick_period = period);
    Ok(())
}

pub(crate) fn get_map_value(map: Map, key: &str) -> Result<Option<String>, Error> {
    on_map(map, |pairs| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone()))
}

pub(crate) fn get_map_pairs(map: Map) -> Result<Vec<(String, String)>, Error> {
    on_map(map, |pairs| pairs.clone())
}

pub(crate) fn set_map_pairs(map: Map, new: &[(&str, &str)]) -> Result<(), Error> {
    on_map(map, |pairs| *pairs = new.iter().map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned())).collect())
}

pub(crate) fn replace_map_value(map: Map, key: &str, value: &str) -> Result<(), Error> {
    on_map(map, |pairs| {
        let key = key.to_ascii_lowercase();
        match pairs.iter().position(|(k, _)| *k == key) {
            Some(first) => {
                pairs[first].1 = value.to_owned();
                let mut index = 0;
                pairs.retain(|(k, _)| {
                    index += 1;
                    index - 1 == first || *k != key
                });
            }
            None => pairs.push((key, value.to_owned())),
        }
    })
}

pub(crate) fn add_map_value(map: Map, key: &str, value: &str) -> Result<(), Error> {
    on_map(map, |pairs| pairs.push((key.to_ascii_lowercase(), value.to_owned())))
}

pub(crate) fn remove_map_value(map: Map, key: &str) -> Result<(), Error> {
    on_map(map, |pairs| pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(key)))
}

pub(crate) fn get_buffer(buffer: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, Error> {
    let slice = |bytes: &[u8]| bytes.iter().skip(start).take(max).copied().collect::<Vec<u8>>();
    match buffer {
        Buffer::PluginConfiguration => Ok(Some(with(|host| slice(&host.plugin_config)))),
        Buffer::CallResponseBody => Ok(with(|host| host.call_response.as_ref().map(|(_, body)| slice(body)))),
        Buffer::RequestBody => on_stream(|s| Ok(Some(slice(&s.request_body)))),
        Buffer::ResponseBody => on_stream(|s| Ok(Some(slice(&s.response_body)))),
    }
}

pub(crate) fn set_buffer(buffer: Buffer, start: usize, size: usize, bytes: &[u8]) -> Result<(), Error> {
    on_stream(|s| {
        let body = match buffer {
            Buffer::RequestBody => &mut s.request_body,
            Buffer::ResponseBody => &mut s.response_body,
            _ => return Err(Error::Host { call: "proxy_set_buffer_bytes", status: 2 }),
        };
        let start = start.min(body.len());
        let end = start.saturating_add(size).min(body.len());
        body.splice(start..end, bytes.iter().copied());
        Ok(())
    })
}

pub(crate) fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, Error> {
    let key = path.join(".");
    on_stream(|s| {
        if let Some(value) = s.properties.get(&key) {
            return Ok(Some(value.clone()));
        }
        let header =
            |name: &str| s.request_headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone().into_bytes());
        Ok(match key.as_str() {
            "request.path" => header(":path"),
            "request.url_path" => header(":path").map(|p| p.split(|b| *b == b'?').next().unwrap_or_default().to_vec()),
            "request.method" => header(":method"),
            "request.host" => header(":authority"),
            "request.scheme" => header(":scheme"),
            "response.code" => s
                .local_response
                .as_ref()
                .map(|r| r.status.to_string())
                .or_else(|| s.response_headers.iter().find(|(k, _)| k == ":status").map(|(_, v)| v.clone()))
                .map(|code| code.parse::<u64>().unwrap_or(0).to_le_bytes().to_vec()),
            _ => None,
        })
    })
}

pub(crate) fn set_property(path: &[&str], value: &[u8]) -> Result<(), Error> {
    on_stream(|s| {
        s.properties.insert(path.join("."), value.to_vec());
        Ok(())
    })
}

pub(crate) fn send_local_response(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    grpc_status: Option<u32>,
    details: &str,
) -> Result<(), Error> {
    on_stream(|s| {
        s.local_response = Some(LocalResponse {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned())).collect(),
            body: body.to_vec(),
            grpc_status,
            details: details.to_owned(),
        });
        Ok(())
    })
}

pub(crate) fn continue_stream(direction: Direction) -> Result<(), Error> {
    on_stream(|s| {
        s.resumed.push(direction);
        Ok(())
    })
}

pub(crate) fn http_call(cluster: &str, headers: &[(&str, &str)], body: &[u8], timeout: Duration) -> Result<u32, Error> {
    with(|host| {
        host.next_token += 1;
        let id = host.next_token;
        let current = host.current;
        let stream = host.streams.get_mut(&current).ok_or_else(no_stream)?;
        stream.callouts.push(Callout {
            id: crate::CallId(id),
            cluster: cluster.to_owned(),
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            body: body.to_vec(),
            timeout,
        });
        Ok(id)
    })
}

pub(crate) fn set_effective_context(context: u32) -> Result<(), Error> {
    with(|host| {
        if host.streams.contains_key(&context) {
            host.current = context;
            Ok(())
        } else {
            Err(Error::Host { call: "proxy_set_effective_context", status: 2 })
        }
    })
}

pub(crate) fn define_metric(kind: MetricKind, name: &str) -> Result<u32, Error> {
    with(|host| {
        if let Some(index) = host.metrics.iter().position(|m| m.name == name && m.kind == Some(kind)) {
            return Ok(index as u32);
        }
        host.metrics.push(Metric { name: name.to_owned(), kind: Some(kind), value: 0 });
        Ok(host.metrics.len() as u32 - 1)
    })
}

fn on_metric<T>(id: u32, f: impl FnOnce(&mut Metric) -> T) -> Result<T, Error> {
    with(|host| host.metrics.get_mut(id as usize).map(f).ok_or(Error::Host { call: "metric", status: 1 }))
}

pub(crate) fn increment_metric(id: u32, offset: i64) -> Result<(), Error> {
    on_metric(id, |m| m.value = m.value.saturating_add(offset))
}

pub(crate) fn record_metric(id: u32, value: u64) -> Result<(), Error> {
    on_metric(id, |m| m.value = i64::try_from(value).unwrap_or(i64::MAX))
}

pub(crate) fn get_metric(id: u32) -> Result<u64, Error> {
    on_metric(id, |m| m.value.max(0) as u64)
}

pub(crate) fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, u32), Error> {
    Ok(with(|host| match host.shared.get(key) {
        Some((value, cas)) => (Some(value.clone()), *cas),
        None => (None, 0),
    }))
}

pub(crate) fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Error> {
    with(|host| {
        let current = host.shared.get(key).map_or(0, |(_, cas)| *cas);
        if cas != 0 && cas != current {
            return Err(Error::CasMismatch);
        }
        host.shared.insert(key.to_owned(), (value.to_vec(), current + 1));
        Ok(())
    })
}

//! One module, several behaviours chosen by the filter's `config.mode`, each written the way a
//! proxy-wasm user writes filters for Envoy:
//! - `headers`: adds request and response headers, removes one, reads `:path` and a property
//! - `deny`: answers 403 itself when the request has `x-deny`
//! - `grpc_deny`: answers gRPC PERMISSION_DENIED itself
//! - `route`: routes to the cluster named by `x-route-to` (property `weft.upstream_cluster`)
//! - `props`: copies properties into request headers the upstream can show
//! - `count`: counts requests in shared data (compare-and-swap, shared by every instance) and in
//!   metrics it defines (a counter and a histogram)
//! - `tick`: counts `on_tick` calls (every 20 ms) in shared data; requests see the count
//! - `misbehave`: panics on `x-trap`, loops forever on `x-spin`, eats memory on `x-hog`
//! - `body`: buffers request and response bodies whole; uppercases the request body, refuses one
//!   that says "forbidden" (403), wraps the response body in brackets, notes response trailers
//! - `callout`: asks the `auth` cluster (`/status/200` for user alice, `/status/403` otherwise)
//!   before letting a request through; no answer at all means 503
//! - `grpc_callout`: calls `weft.test.Echo/Say` on the `grpc` cluster with `x-say` and passes
//!   the reply on as a header; a gRPC error answers 502
//! - `queue_resume`: each request pauses and queues its context id on its instance's queue; the
//!   root, told by `on_queue_ready`, switches to that context, marks the request and resumes it
//! - `tcp` (a network filter, for tcp listeners): uppercases what the client sends, closes the
//!   connection when it says "blocked", counts the upstream's bytes in a metric
//! - `bench16`: exactly 16 hostcalls of header work per request (6 header reads, 4 sets, 2 adds,
//!   2 removals, one property, one read of the whole map), for the benchmark's filter-cost test
//! Any other mode is a no-op filter: its callbacks return Continue and make no hostcalls.
//! `{"refuse": true}` makes `on_configure` say no.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel, MapType, MetricType};
use serde::Deserialize;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Clone, Default, Deserialize)]
struct Config {
    #[serde(default)]
    mode: String,
    #[serde(default)]
    refuse: bool,
}

#[derive(Default)]
struct Root {
    config: Config,
    /// This instance's own queue: context ids only mean something inside one instance.
    queue_name: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) if !config.refuse => {
                if config.mode == "tick" {
                    self.set_tick_period(std::time::Duration::from_millis(20));
                }
                if config.mode == "queue_resume" {
                    use std::hash::{BuildHasher, Hasher};
                    let unique = std::collections::hash_map::RandomState::new().build_hasher().finish();
                    self.queue_name = format!("paused-{unique:x}");
                    hostcalls::register_shared_queue(&self.queue_name).ok();
                }
                proxy_wasm::hostcalls::log(LogLevel::Info, &format!("configured in mode {}", config.mode)).ok();
                self.config = config;
                true
            }
            _ => false,
        }
    }

    fn on_tick(&mut self) {
        loop {
            let (value, cas) = self.get_shared_data("ticks");
            let ticks = value.and_then(|v| v.try_into().ok()).map_or(0, u64::from_le_bytes) + 1;
            if self.set_shared_data("ticks", Some(&ticks.to_le_bytes()), cas).is_ok() {
                break;
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue_id) {
            let Ok(context) = item.try_into().map(u32::from_le_bytes) else { continue };
            // Act on the paused request's context from the root: mark it, then let it go on.
            if hostcalls::set_effective_context(context).is_ok() {
                hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-resumed-by", Some("queue")).ok();
                hostcalls::resume_http_request().ok();
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { mode: self.config.mode.clone(), context_id, queue_name: self.queue_name.clone() }))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Connection))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(if self.config.mode == "tcp" { ContextType::StreamContext } else { ContextType::HttpContext })
    }
}

/// The `tcp` mode's network filter.
struct Connection;

impl Context for Connection {}

impl StreamContext for Connection {
    fn on_downstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        let data = self.get_downstream_data(0, data_size).unwrap_or_default();
        if String::from_utf8_lossy(&data).contains("blocked") {
            self.close_downstream();
            return Action::Continue;
        }
        self.set_downstream_data(0, data_size, &data.to_ascii_uppercase());
        Action::Continue
    }

    fn on_upstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        if let Ok(id) = hostcalls::define_metric(MetricType::Counter, "upstream_bytes") {
            hostcalls::increment_metric(id, data_size as i64).ok();
        }
        Action::Continue
    }

    fn on_downstream_close(&mut self, _peer_type: proxy_wasm::types::PeerType) {
        hostcalls::log(LogLevel::Info, "the client closed its side").ok();
    }
}

struct Filter {
    mode: String,
    context_id: u32,
    queue_name: String,
}

impl Context for Filter {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Some(status) = self.get_http_call_response_header(":status") else {
            self.send_http_response(503, vec![], Some(b"auth unavailable"));
            return;
        };
        if self.get_http_request_header("x-user").as_deref() == Some("crash") {
            panic!("crashing while reading a callout's answer");
        }
        if status == "200" {
            let upstream = self.get_http_call_response_header("x-upstream").unwrap_or_default();
            let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            self.set_http_request_header("x-auth-upstream", Some(&upstream));
            self.set_http_request_header("x-auth-body-bytes", Some(&body.len().to_string()));
            self.resume_http_request();
        } else {
            self.send_http_response(403, vec![("x-auth-status", &status)], Some(b"denied by auth"));
        }
    }

    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        if status_code != 0 {
            let (_, message) = hostcalls::get_grpc_status().unwrap_or((status_code, None));
            let body = message.unwrap_or_default();
            self.send_http_response(502, vec![("x-grpc-status", &status_code.to_string())], Some(body.as_bytes()));
            return;
        }
        let reply = self.get_grpc_call_response_body(0, response_size).unwrap_or_default();
        self.set_http_request_header("x-grpc-said", Some(&decode_string_field(&reply)));
        self.resume_http_request();
    }
}

/// Field 1 (a string) of a protobuf message, enough for the test service's messages.
fn encode_string_field(text: &str) -> Vec<u8> {
    let mut message = vec![0x0a, text.len() as u8];
    message.extend_from_slice(text.as_bytes());
    message
}

fn decode_string_field(message: &[u8]) -> String {
    match message {
        [0x0a, len, rest @ ..] => String::from_utf8_lossy(&rest[..(*len as usize).min(rest.len())]).into_owned(),
        _ => String::new(),
    }
}

fn text(bytes: Option<Vec<u8>>) -> String {
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|| "-".into())
}

fn number(bytes: Option<Vec<u8>>) -> String {
    bytes
        .and_then(|b| b.try_into().ok())
        .map(|b: [u8; 8]| u64::from_le_bytes(b).to_string())
        .unwrap_or_else(|| "-".into())
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        match self.mode.as_str() {
            "headers" => {
                let plugin = text(self.get_property(vec!["plugin_name"]));
                let path = self.get_http_request_header(":path").unwrap_or_default();
                self.add_http_request_header("x-filtered-by", &plugin);
                self.set_http_request_header("x-path-seen", Some(&path));
                self.set_http_request_header("x-remove-me", None);
                let count = self.get_http_request_headers().len();
                self.set_http_request_header("x-header-count", Some(&count.to_string()));
            }
            "deny" => {
                if self.get_http_request_header("x-deny").is_some() {
                    self.send_http_response(403, vec![("x-denied-by", "test-filter")], Some(b"denied by a filter\n"));
                    return Action::Pause;
                }
            }
            "grpc_deny" => {
                self.send_grpc_response(GrpcStatusCode::PermissionDenied, Some("not for you"), vec![]);
                return Action::Pause;
            }
            "route" => {
                if let Some(cluster) = self.get_http_request_header("x-route-to") {
                    self.set_property(vec!["weft", "upstream_cluster"], Some(cluster.as_bytes()));
                }
            }
            "props" => {
                let props = [
                    ("x-prop-source", text(self.get_property(vec!["source", "address"]))),
                    ("x-prop-request-id", text(self.get_property(vec!["request", "id"]))),
                    ("x-prop-method", text(self.get_property(vec!["request", "method"]))),
                    ("x-prop-listener", text(self.get_property(vec!["listener_name"]))),
                    ("x-prop-connection-id", number(self.get_property(vec!["connection", "id"]))),
                    ("x-prop-destination-port", number(self.get_property(vec!["destination", "port"]))),
                ];
                for (name, value) in props {
                    self.set_http_request_header(name, Some(&value));
                }
            }
            "count" => {
                let seen = loop {
                    let (value, cas) = self.get_shared_data("requests");
                    let count = value.and_then(|v| v.try_into().ok()).map_or(0, u64::from_le_bytes) + 1;
                    // A mismatch means another instance counted meanwhile: read again and retry.
                    if self.set_shared_data("requests", Some(&count.to_le_bytes()), cas).is_ok() {
                        break count;
                    }
                };
                self.set_http_request_header("x-shared-count", Some(&seen.to_string()));
                let path = self.get_http_request_header(":path").unwrap_or_default();
                if let Ok(id) = hostcalls::define_metric(MetricType::Counter, "requests_seen") {
                    hostcalls::increment_metric(id, 1).ok();
                    let total = hostcalls::get_metric(id).unwrap_or(0);
                    self.set_http_request_header("x-metric-total", Some(&total.to_string()));
                }
                if let Ok(id) = hostcalls::define_metric(MetricType::Histogram, "path_length") {
                    hostcalls::record_metric(id, path.len() as u64).ok();
                }
            }
            "tick" => {
                let (value, _) = self.get_shared_data("ticks");
                let ticks = value.and_then(|v| v.try_into().ok()).map_or(0, u64::from_le_bytes);
                self.set_http_request_header("x-ticks", Some(&ticks.to_string()));
            }
            "misbehave" => {
                if self.get_http_request_header("x-trap").is_some() {
                    panic!("trapping on purpose");
                }
                if self.get_http_request_header("x-spin").is_some() {
                    let mut n: u64 = 0;
                    loop {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                }
                if self.get_http_request_header("x-hog").is_some() {
                    let mut hog: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hog.push(vec![1u8; 1 << 20]);
                        std::hint::black_box(&hog);
                    }
                }
                self.set_http_request_header("x-survived", Some("yes"));
            }
            "body" => {
                // The body will change length: the upstream must not be told the old one.
                self.set_http_request_header("content-length", None);
            }
            "callout" => {
                let user = self.get_http_request_header("x-user").unwrap_or_default();
                let path = if user == "alice" { "/status/200" } else { "/status/403" };
                let headers =
                    vec![(":method", "GET"), (":path", path), (":authority", "auth"), ("x-user", user.as_str())];
                return match self.dispatch_http_call("auth", headers, None, vec![], Duration::from_secs(2)) {
                    Ok(_) => Action::Pause,
                    Err(_) => {
                        self.send_http_response(500, vec![], Some(b"callout refused"));
                        Action::Pause
                    }
                };
            }
            "grpc_callout" => {
                let say = self.get_http_request_header("x-say").unwrap_or_default();
                let message = encode_string_field(&say);
                let call = self.dispatch_grpc_call(
                    "grpc",
                    "weft.test.Echo",
                    "Say",
                    vec![],
                    Some(&message),
                    Duration::from_secs(2),
                );
                if call.is_err() {
                    self.send_http_response(500, vec![], Some(b"grpc callout refused"));
                }
                return Action::Pause;
            }
            "queue_resume" => {
                let vm_id = text(self.get_property(vec!["plugin_name"]));
                if let Ok(Some(queue)) = hostcalls::resolve_shared_queue(&vm_id, &self.queue_name) {
                    if hostcalls::enqueue_shared_queue(queue, Some(&self.context_id.to_le_bytes())).is_ok() {
                        return Action::Pause;
                    }
                }
                self.send_http_response(500, vec![], Some(b"no queue"));
                return Action::Pause;
            }
            "bench16" => {
                // Exactly 16 hostcalls, the header work of a typical small filter. It removes what it
                // adds, so the request does not grow along a chain of these filters.
                for name in [":path", ":method", "host", "user-agent", "accept", ":authority"] {
                    std::hint::black_box(self.get_http_request_header(name));
                }
                for name in ["x-bench-0", "x-bench-1", "x-bench-2", "x-bench-3"] {
                    self.set_http_request_header(name, Some("v"));
                }
                self.add_http_request_header("x-bench-add", "a");
                self.add_http_request_header("x-bench-add", "b");
                self.set_http_request_header("x-bench-add", None);
                self.set_http_request_header("x-bench-3", None);
                std::hint::black_box(self.get_property(vec!["request", "id"]));
                std::hint::black_box(self.get_http_request_headers());
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.mode != "body" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if String::from_utf8_lossy(&body).contains("forbidden") {
            self.send_http_response(403, vec![("x-refused-by", "body filter")], Some(b"body refused\n"));
            return Action::Pause;
        }
        self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.mode == "headers" {
            let status = self.get_http_response_header(":status").unwrap_or_default();
            self.set_http_response_header("x-response-filtered", Some(&format!("saw {status}")));
        }
        if self.mode == "body" {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.mode != "body" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, body_size).unwrap_or_default();
        let mut wrapped = b"[".to_vec();
        wrapped.extend_from_slice(&body);
        wrapped.push(b']');
        self.set_http_response_body(0, body_size, &wrapped);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if self.mode == "body" {
            let checksum = self.get_http_response_trailer("x-checksum").unwrap_or_default();
            self.set_http_response_trailer("x-trailer-seen", Some(&checksum));
        }
        Action::Continue
    }
}

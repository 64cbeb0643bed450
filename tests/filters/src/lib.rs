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
//! - `bench16`: exactly 16 hostcalls of header work per request (6 header reads, 4 sets, 2 adds,
//!   2 removals, one property, one read of the whole map), for the benchmark's filter-cost test
//! Any other mode is a no-op filter: its callbacks return Continue and make no hostcalls.
//! `{"refuse": true}` makes `on_configure` say no.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel, MetricType};
use serde::Deserialize;

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

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { mode: self.config.mode.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    mode: String,
}

impl Context for Filter {}

fn text(bytes: Option<Vec<u8>>) -> String {
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|| "-".into())
}

fn number(bytes: Option<Vec<u8>>) -> String {
    bytes.and_then(|b| b.try_into().ok()).map(|b: [u8; 8]| u64::from_le_bytes(b).to_string()).unwrap_or_else(|| "-".into())
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

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.mode == "headers" {
            let status = self.get_http_response_header(":status").unwrap_or_default();
            self.set_http_response_header("x-response-filtered", Some(&format!("saw {status}")));
        }
        Action::Continue
    }
}

//! The native test harness: run a filter's phases with plain `cargo test`, no proxy and no Wasm.
//!
//! [`TestFilter`] is one filter instance with its config; [`TestFilter::request`] starts a
//! request through it, and the returned [`TestStream`] sends each phase and shows what the filter
//! did: the action, the headers, the local response, the route, the callouts it asked for (feed
//! their answers with [`TestStream::reply`]). The clock only moves when the test says so
//! ([`TestFilter::advance`]), so timers are tested without waiting.
//!
//! ```
//! use weft_sdk::prelude::*;
//! use weft_sdk::testing::{TestFilter, TestRequest};
//!
//! #[derive(Deserialize)]
//! struct Config { allowed: String }
//! struct OnlyOne { config: Rc<Config> }
//!
//! impl Filter for OnlyOne {
//!     type Config = Config;
//!     fn new(config: &Rc<Config>) -> Self { OnlyOne { config: config.clone() } }
//!     fn on_request_headers(&mut self, req: &mut Request) -> Result<Action> {
//!         if req.path()? == self.config.allowed {
//!             return Ok(Action::Continue);
//!         }
//!         req.respond(LocalResponse::new(403).body("not here\n"))
//!     }
//! }
//!
//! let filter = TestFilter::<OnlyOne>::new(r#"{"allowed": "/ok"}"#).unwrap();
//! assert_eq!(filter.request(TestRequest::get("/ok")).send_request_headers(), Action::Continue);
//!
//! let mut refused = filter.request(TestRequest::get("/other"));
//! assert_eq!(refused.send_request_headers(), Action::Pause);
//! assert_eq!(refused.local_response().unwrap().status, 403);
//!
//! assert!(TestFilter::<OnlyOne>::new("{}").is_err(), "a config without `allowed` is refused");
//! ```

pub(crate) mod fake;

pub use fake::Callout;

use crate::dispatch::{parse_config, State};
use crate::host::{Direction, LogLevel};
use crate::{Action, Error, Filter, LocalResponse};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The root context's id; requests get 2, 3, …
const ROOT: u32 = 1;

/// One configured filter instance on an in-memory host.
pub struct TestFilter<F: Filter> {
    inner: Rc<Inner<F>>,
}

struct Inner<F: Filter> {
    state: State<F>,
    next_context: Cell<u32>,
}

impl<F: Filter> TestFilter<F> {
    /// Configures the filter with `config` (JSON text, as weft hands it over). A config the
    /// filter refuses is an `Err` with the reason, as the proxy would log it.
    ///
    /// Each `TestFilter` starts a fresh host on the current thread (time, metrics, shared data,
    /// logs), so tests do not see each other's.
    pub fn new(config: &str) -> Result<Self, Error> {
        parse_config::<F>(config.as_bytes())?;
        fake::with(|host| {
            *host = fake::FakeHost::default();
            host.now_nanos = 1_700_000_000_000_000_000; // a fixed, realistic wall time
            host.plugin_config = config.as_bytes().to_vec();
            host.current = ROOT;
        });
        crate::metrics::forget_definitions();
        let state = State::new();
        state.on_context_create(ROOT, 0);
        if !state.on_configure(ROOT, config.len()) {
            return Err(Error::Config(fake::with(|host| host.logs.last().map(|(_, m)| m.clone()).unwrap_or_default())));
        }
        Ok(TestFilter { inner: Rc::new(Inner { state, next_context: Cell::new(ROOT + 1) }) })
    }

    /// Like [`TestFilter::new`], from a `serde_json::Value`.
    pub fn from_json(config: &serde_json::Value) -> Result<Self, Error> {
        Self::new(&config.to_string())
    }

    /// Starts a request through the filter (its context is created; no phase has run yet).
    pub fn request(&self, request: TestRequest) -> TestStream<F> {
        let context = self.inner.next_context.get();
        self.inner.next_context.set(context + 1);
        fake::with(|host| {
            let stream = host.streams.entry(context).or_default();
            stream.request_headers = request.headers;
            stream.properties = request.properties;
            stream
                .properties
                .entry("request.id".into())
                .or_insert_with(|| format!("test-request-{context}").into_bytes());
        });
        self.on(context, |state| state.on_context_create(context, ROOT));
        TestStream { inner: self.inner.clone(), context, finished: false }
    }

    /// Moves the host's clock on by `by` and runs the timers that came due (requests held with
    /// [`crate::Request::resume_after`] are resumed).
    pub fn advance(&self, by: Duration) {
        let ticking = fake::with(|host| {
            host.now_nanos += u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            !host.tick_period.is_zero()
        });
        if ticking {
            self.inner.on(ROOT, |state| state.on_tick(ROOT));
        }
    }

    /// The host's clock now.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(fake::with(|host| host.now_nanos))
    }

    /// The value of the metric `name` (any kind), if the filter defined it.
    pub fn metric(&self, name: &str) -> Option<i64> {
        fake::with(|host| host.metrics.iter().find(|m| m.name == name).map(|m| m.value))
    }

    /// Every line the filter logged, with its level.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        fake::with(|host| host.logs.clone())
    }

    /// The shared-data value at `key`.
    pub fn shared(&self, key: &str) -> Option<Vec<u8>> {
        fake::with(|host| host.shared.get(key).map(|(value, _)| value.clone()))
    }

    /// Requests held by a `Pause` right now.
    pub fn paused_requests(&self) -> usize {
        self.inner.state.paused_requests()
    }

    fn on<T>(&self, context: u32, f: impl FnOnce(&State<F>) -> T) -> T {
        self.inner.on(context, f)
    }
}

impl<F: Filter> Inner<F> {
    /// Runs a callback with `context` current, as the proxy does.
    fn on<T>(&self, context: u32, f: impl FnOnce(&State<F>) -> T) -> T {
        fake::with(|host| host.current = context);
        f(&self.state)
    }
}

/// A request to send through a [`TestFilter`].
#[derive(Clone, Debug)]
pub struct TestRequest {
    headers: Vec<(String, String)>,
    properties: std::collections::HashMap<String, Vec<u8>>,
}

impl TestRequest {
    /// A request with this method and path, to authority `example.com` over `http`.
    pub fn new(method: &str, path: &str) -> Self {
        let headers = [(":method", method), (":path", path), (":authority", "example.com"), (":scheme", "http")];
        TestRequest {
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            properties: [("source.address".to_owned(), b"127.0.0.1:50000".to_vec())].into_iter().collect(),
        }
    }

    /// A `GET` of `path`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// A `POST` to `path`.
    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    /// Adds a header (names are stored lowercase, as the proxy does).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Sets `:authority`.
    pub fn authority(mut self, authority: &str) -> Self {
        self.headers.retain(|(k, _)| k != ":authority");
        self.headers.push((":authority".into(), authority.to_owned()));
        self
    }

    /// The client's address, `ip:port` (default `127.0.0.1:50000`).
    pub fn source_address(self, address: &str) -> Self {
        self.property("source.address", address.as_bytes())
    }

    /// The client's mTLS identity (`source.principal`).
    pub fn source_principal(self, principal: &str) -> Self {
        self.property("source.principal", principal.as_bytes())
    }

    /// Any property, by its dotted path (`"connection.mtls"`).
    pub fn property(mut self, path: &str, value: &[u8]) -> Self {
        self.properties.insert(path.to_owned(), value.to_vec());
        self
    }
}

/// A response to send back through a [`TestStream`] (as the upstream's), or as a callout's answer.
#[derive(Clone, Debug)]
pub struct TestResponse {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl TestResponse {
    /// A response with this status.
    pub fn new(status: u16) -> Self {
        TestResponse { headers: vec![(":status".into(), status.to_string())], body: Vec::new() }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// One request going through a [`TestFilter`]: send its phases, look at what the filter did.
/// Dropping it ends the request (log, done and delete callbacks), as the proxy would.
pub struct TestStream<F: Filter> {
    inner: Rc<Inner<F>>,
    context: u32,
    finished: bool,
}

impl<F: Filter> TestStream<F> {
    /// Runs the request-headers phase.
    pub fn send_request_headers(&mut self) -> Action {
        let context = self.context;
        action(self.inner.on(context, |state| state.on_request_headers(context, false)))
    }

    /// Sends a piece of request body. What a `Pause` kept stays buffered and is seen again,
    /// with this piece, by the next call; what a `Continue` let through is in
    /// [`TestStream::upstream_request_body`].
    pub fn send_request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        let context = self.context;
        let size = self.stream(|s| {
            s.request_body.extend_from_slice(chunk);
            s.request_body.len()
        });
        let answer = action(self.inner.on(context, |state| state.on_request_body(context, size, end_of_stream)));
        if answer == Action::Continue {
            self.stream(|s| {
                let passed = std::mem::take(&mut s.request_body);
                s.properties.entry("test.upstream_body".into()).or_default().extend_from_slice(&passed);
            });
        }
        answer
    }

    /// Runs the response-headers phase with `response` as the upstream's answer.
    pub fn send_response_headers(&mut self, response: TestResponse) -> Action {
        let context = self.context;
        self.stream(|s| s.response_headers = response.headers);
        action(self.inner.on(context, |state| state.on_response_headers(context, false)))
    }

    /// Sends a piece of response body (buffered like [`TestStream::send_request_body`]).
    pub fn send_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        let context = self.context;
        let size = self.stream(|s| {
            s.response_body.extend_from_slice(chunk);
            s.response_body.len()
        });
        let answer = action(self.inner.on(context, |state| state.on_response_body(context, size, end_of_stream)));
        if answer == Action::Continue {
            self.stream(|s| {
                let passed = std::mem::take(&mut s.response_body);
                s.properties.entry("test.client_body".into()).or_default().extend_from_slice(&passed);
            });
        }
        answer
    }

    /// Delivers the answer to callout `id`; the filter's `on_call_response` runs, and may
    /// resume the request ([`TestStream::resumed`]).
    pub fn reply(&mut self, id: crate::CallId, response: TestResponse) {
        self.deliver(id, Some(response));
    }

    /// Delivers a callout that got no answer (timeout, connection refused): no status.
    pub fn fail_call(&mut self, id: crate::CallId) {
        self.deliver(id, None);
    }

    fn deliver(&mut self, id: crate::CallId, response: Option<TestResponse>) {
        let context = self.context;
        let (headers, body) = match response {
            Some(r) => (r.headers, r.body),
            None => (Vec::new(), Vec::new()),
        };
        let (header_count, body_size) = (headers.len(), body.len());
        fake::with(|host| {
            host.call_response = Some((headers, body));
            if let Some(stream) = host.streams.get_mut(&context) {
                stream.callouts.retain(|c| c.id != id);
            }
        });
        self.inner.on(context, |state| state.on_http_call_response(context, id.0, header_count, body_size));
        fake::with(|host| host.call_response = None);
    }

    /// Whether the filter resumed the request (after a pause) in `direction`.
    pub fn resumed(&self, direction: Direction) -> bool {
        self.stream(|s| s.resumed.contains(&direction))
    }

    /// Callouts sent and not yet answered.
    pub fn callouts(&self) -> Vec<Callout> {
        self.stream(|s| s.callouts.clone())
    }

    /// The answer the filter gave instead of the upstream, if it gave one.
    pub fn local_response(&self) -> Option<LocalResponse> {
        self.stream(|s| s.local_response.clone())
    }

    /// One request header as it is now.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.stream(|s| s.request_headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()))
    }

    /// All request headers as they are now.
    pub fn request_headers(&self) -> Vec<(String, String)> {
        self.stream(|s| s.request_headers.clone())
    }

    /// One response header as it is now.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.stream(|s| s.response_headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()))
    }

    /// The request body that went on to the upstream.
    pub fn upstream_request_body(&self) -> Vec<u8> {
        self.property("test.upstream_body").unwrap_or_default()
    }

    /// The response body that went on to the client.
    pub fn client_response_body(&self) -> Vec<u8> {
        self.property("test.client_body").unwrap_or_default()
    }

    /// The cluster the filter routed the request to (`weft.upstream_cluster`), if it did.
    pub fn upstream_cluster(&self) -> Option<String> {
        self.property("weft.upstream_cluster").map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// A property as the filter left it.
    pub fn property(&self, path: &str) -> Option<Vec<u8>> {
        self.stream(|s| s.properties.get(path).cloned())
    }

    /// Ends the request now: the log phase, then the context is deleted.
    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let context = self.context;
        self.inner.on(context, |state| {
            state.on_log(context);
            state.on_delete(context);
        });
        fake::with(|host| host.streams.remove(&context));
    }

    fn stream<T>(&self, f: impl FnOnce(&mut fake::Stream) -> T) -> T {
        fake::with(|host| f(host.streams.entry(self.context).or_default()))
    }
}

impl<F: Filter> Drop for TestStream<F> {
    fn drop(&mut self) {
        self.end();
    }
}

fn action(code: u32) -> Action {
    if code == 0 {
        Action::Continue
    } else {
        Action::Pause
    }
}

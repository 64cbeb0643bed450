//! # weft-sdk: write weft filters in Rust
//!
//! A filter is a type that implements [`Filter`]: a typed config parsed from the filter's
//! `config` in weft's config, and one method per phase of a request, each defaulting to
//! "continue". [`filter!`] turns it into a Proxy-Wasm module, so it runs in weft and in any
//! other Proxy-Wasm host (Envoy, Istio, Kong).
//!
//! ```
//! use weft_sdk::prelude::*;
//!
//! #[derive(Deserialize)]
//! struct Config {
//!     header: String,
//!     value: String,
//! }
//!
//! struct AddHeader {
//!     config: Rc<Config>,
//! }
//!
//! impl Filter for AddHeader {
//!     type Config = Config;
//!
//!     fn new(config: &Rc<Config>) -> Self {
//!         AddHeader { config: config.clone() }
//!     }
//!
//!     fn on_request_headers(&mut self, req: &mut Request) -> Result<Action> {
//!         req.set_header(&self.config.header, &self.config.value)?;
//!         Ok(Action::Continue)
//!     }
//! }
//!
//! weft_sdk::filter!(AddHeader);
//!
//! // The native test harness runs it with plain `cargo test`: no proxy, no Wasm.
//! let filter = weft_sdk::testing::TestFilter::<AddHeader>::new(r#"{"header": "x-team", "value": "edge"}"#).unwrap();
//! let mut req = filter.request(weft_sdk::testing::TestRequest::get("/"));
//! assert_eq!(req.send_request_headers(), Action::Continue);
//! assert_eq!(req.request_header("x-team").as_deref(), Some("edge"));
//! ```
//!
//! What the SDK adds over writing against the bare ABI:
//! - host calls return [`Result`]; nothing in the SDK panics on a host error, and a phase that
//!   returns `Err` answers its request `503` (and logs why) instead of trapping;
//! - one type per request, created by [`Filter::new`], with no context ids to juggle: an HTTP
//!   callout's answer comes back to the request that made it ([`Filter::on_call_response`]), and
//!   the request is resumed when that method says [`Action::Continue`];
//! - [`Request::resume_after`] holds a request for a while, then [`Filter::on_timer`] decides;
//! - [`metrics`], [`shared`] (with compare-and-swap helpers) and logging macros;
//! - [`testing`], a native test harness.

#![warn(missing_docs)]

use std::fmt;

mod call;
#[doc(hidden)]
pub mod dispatch;
mod host;
mod http;
pub mod log;
pub mod metrics;
pub mod shared;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod units;

pub use call::{CallId, CallResponse, HttpCall};
pub use host::{Direction, LogLevel, MetricKind};
pub use http::{Body, LocalResponse, LogView, Request, Response};

/// Re-exported so that `#[derive(Deserialize)]` works with `use weft_sdk::prelude::*`.
pub use serde::Deserialize;

/// What most filters need, in one `use`.
pub mod prelude {
    pub use crate::{
        Action, Body, CallId, CallResponse, Error, Filter, HttpCall, LocalResponse, LogView, Request, Response, Result,
    };
    pub use serde::Deserialize;
    pub use std::rc::Rc;
    pub use std::time::Duration;
}

/// The host's clock (wall time). The test harness controls it ([`testing::TestFilter::advance`]).
pub fn now() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_nanos(host::now_nanos())
}

/// A random number for spreading traffic (splits, percentages), not for secrets: splitmix64 of
/// the host's clock and a counter. In the test harness, whose clock stands still unless moved,
/// the sequence is the same on every run.
pub fn random() -> u64 {
    thread_local! {
        static SEQUENCE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let n = SEQUENCE.with(|s| {
        s.set(s.get().wrapping_add(1));
        s.get()
    });
    let mut z = host::now_nanos() ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a phase tells the proxy to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Go on: to the next filter, then the upstream (or the client, for a response).
    Continue,
    /// Hold the request here. In a headers phase it waits until the filter resumes it: when
    /// [`Filter::on_call_response`] says `Continue`, or when [`Request::resume_after`]'s time has
    /// come. In a body phase it asks for the rest of the body: the data is kept, and the next
    /// call sees everything so far ([`Request::body`]). After [`Request::respond`] it stays held
    /// for good.
    Pause,
}

/// What went wrong in a filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The host refused a call (its Proxy-Wasm status code).
    Host {
        /// The host call, such as `proxy_http_call`.
        call: &'static str,
        /// Its Proxy-Wasm status (2: bad argument, 1: not found, …).
        status: u32,
    },
    /// A [`shared`] write lost a race: someone else changed the value since it was read.
    CasMismatch,
    /// The filter's config could not be used (the serde error, or the filter's own reason).
    Config(String),
    /// A reason given by the filter itself ([`Error::msg`]).
    Message(String),
}

impl Error {
    /// An error with the filter's own reason.
    pub fn msg(reason: impl Into<String>) -> Self {
        Error::Message(reason.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Host { call, status } => write!(f, "host call {call} failed with status {status}"),
            Error::CasMismatch => f.write_str("shared data changed since it was read (CAS mismatch)"),
            Error::Config(reason) => write!(f, "invalid filter config: {reason}"),
            Error::Message(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for Error {}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A filter: its config type and what it does in each phase of a request.
///
/// One value of the type is made per request by [`Filter::new`] and dropped when the request is
/// done, so per-request state lives in its fields. Every phase method defaults to
/// `Ok(Action::Continue)`; implement the ones the filter needs.
pub trait Filter: Sized + 'static {
    /// The filter's config: the `config` of the filter in weft's config, as JSON, parsed with
    /// serde. A config that does not parse is refused at load with the serde error, and the
    /// running config stays.
    type Config: serde::de::DeserializeOwned + 'static;

    /// Checks a parsed config and prepares it (compile patterns, sort rules). An `Err` refuses
    /// the config, with its message in the proxy's log.
    fn prepare(config: &mut Self::Config) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// A new request. `config` is shared by every request of this filter instance.
    fn new(config: &std::rc::Rc<Self::Config>) -> Self;

    /// The request's headers have arrived.
    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action> {
        let _ = req;
        Ok(Action::Continue)
    }

    /// A piece of the request body has arrived ([`Body::end_of_stream`] on the last).
    fn on_request_body(&mut self, req: &mut Request, body: Body) -> Result<Action> {
        let _ = (req, body);
        Ok(Action::Continue)
    }

    /// The upstream's response headers have arrived (or a local response's).
    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action> {
        let _ = resp;
        Ok(Action::Continue)
    }

    /// A piece of the response body has arrived.
    fn on_response_body(&mut self, resp: &mut Response, body: Body) -> Result<Action> {
        let _ = (resp, body);
        Ok(Action::Continue)
    }

    /// The answer to an HTTP callout this request made with [`Request::http_call`]. Returning
    /// `Continue` resumes the request if it was paused; `Pause` keeps it waiting (for another
    /// callout, say).
    fn on_call_response(&mut self, req: &mut Request, call: CallId, response: CallResponse) -> Result<Action> {
        let _ = (req, call, response);
        Ok(Action::Continue)
    }

    /// The time a phase asked for with [`Request::resume_after`] has come. Returning
    /// `Continue` (the default) lets the request go on; the method may also answer it
    /// ([`Request::respond`]) or wait longer (`resume_after` again).
    fn on_timer(&mut self, req: &mut Request) -> Result<Action> {
        let _ = req;
        Ok(Action::Continue)
    }

    /// The request is over (answered, failed or cancelled): the place for access logs and
    /// metrics about the whole exchange.
    fn on_log(&mut self, log: &LogView) {
        let _ = log;
    }
}

/// Makes a Proxy-Wasm module of a [`Filter`]: `weft_sdk::filter!(MyFilter);` at the crate's top
/// level, in a crate built as a `cdylib` for `wasm32-wasip1`. In a native build (tests) it
/// expands to nothing.
#[macro_export]
macro_rules! filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::dispatch as d;
            ::std::thread_local! {
                static STATE: d::State<$filter> = d::State::new();
            }
            #[no_mangle]
            pub extern "C" fn proxy_abi_version_0_2_1() {}
            /// Marks the module a WASI reactor: statics are set up once, here, instead of the
            /// linker wrapping every export in constructor and destructor calls.
            #[no_mangle]
            pub extern "C" fn _initialize() {
                extern "C" {
                    fn __wasm_call_ctors();
                }
                // SAFETY: the linker's constructor function, called once, first, by the host.
                unsafe { __wasm_call_ctors() }
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
                d::allocate(size)
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
                1
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_configure(root: u32, size: usize) -> u32 {
                STATE.with(|s| s.on_configure(root, size)) as u32
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_context_create(context: u32, parent: u32) {
                STATE.with(|s| s.on_context_create(context, parent))
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_request_headers(context: u32, _headers: usize, end_of_stream: u32) -> u32 {
                STATE.with(|s| s.on_request_headers(context, end_of_stream != 0))
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_request_body(context: u32, size: usize, end_of_stream: u32) -> u32 {
                STATE.with(|s| s.on_request_body(context, size, end_of_stream != 0))
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_response_headers(context: u32, _headers: usize, end_of_stream: u32) -> u32 {
                STATE.with(|s| s.on_response_headers(context, end_of_stream != 0))
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_response_body(context: u32, size: usize, end_of_stream: u32) -> u32 {
                STATE.with(|s| s.on_response_body(context, size, end_of_stream != 0))
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_http_call_response(
                context: u32,
                token: u32,
                headers: usize,
                body: usize,
                _trailers: usize,
            ) {
                STATE.with(|s| s.on_http_call_response(context, token, headers, body))
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_tick(root: u32) {
                STATE.with(|s| s.on_tick(root))
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_log(context: u32) {
                STATE.with(|s| s.on_log(context))
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_done(_context: u32) -> u32 {
                1
            }
            #[no_mangle]
            pub extern "C" fn proxy_on_delete(context: u32) {
                STATE.with(|s| s.on_delete(context))
            }
        };
    };
}

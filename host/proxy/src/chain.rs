//! The filter chain a listener runs on each request, in order, phase by phase. Filters decide
//! where a request goes (`upstream_cluster`) or answer it themselves. Filters are built by a
//! [`FilterLoader`] (the Wasm host) from the config's `filters:`; a listener without filters runs
//! an empty chain and pays nothing for it.

use crate::http::ProxyBody;
use crate::metrics::Name;
use crate::tls::TlsInfo;
use http::request::Parts;
use http::response::Parts as ResponseParts;
use http::Response;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use weft_config::FieldError;

/// What filters decided about a request so far.
#[derive(Default)]
pub struct RequestDecisions {
    /// The cluster a filter chose; the listener's `cluster` when none did.
    pub upstream_cluster: Option<Name>,
}

/// What a filter phase tells the proxy to do next.
pub enum Verdict {
    /// Go on to the next filter, then upstream.
    Continue,
    /// Stop here and send this response to the client.
    Respond(Response<ProxyBody>),
}

/// The connection and request facts a filter can read (its properties).
pub struct StreamInfo {
    pub listener: Name,
    pub connection_id: u64,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub tls: Option<TlsInfo>,
    pub started: SystemTime,
}

/// A filter as configured: it starts one [`FilterStream`] per request.
pub trait HttpFilter: Send + Sync {
    fn start(&self, info: &Arc<StreamInfo>) -> Box<dyn FilterStream>;
    /// What the admin `/filters` shows about the filter.
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// One filter's view of one request. Each phase defaults to "continue". Dropping it ends the
/// request for the filter (its log and clean-up callbacks run then).
pub trait FilterStream: Send {
    fn on_request_headers(&mut self, _request: &mut Parts, _decisions: &mut RequestDecisions) -> Verdict {
        Verdict::Continue
    }
    fn on_response_headers(&mut self, _response: &mut ResponseParts) -> Verdict {
        Verdict::Continue
    }
}

/// Builds the filters of a config. The proxy calls it on every load; an error refuses the config.
pub trait FilterLoader: Send + Sync {
    /// One filter per entry of `filters` (by name), or an error per entry that cannot load.
    fn load(
        &self,
        filters: &[weft_config::Filter],
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> Result<HashMap<String, Arc<dyn HttpFilter>>, Vec<FieldError>>;
}

/// A listener's ordered filters.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Vec<Arc<dyn HttpFilter>>,
}

/// The filters of a chain for one request, in order.
#[derive(Default)]
pub struct ChainStreams {
    streams: Vec<Box<dyn FilterStream>>,
}

impl FilterChain {
    pub fn new(filters: Vec<Arc<dyn HttpFilter>>) -> Self {
        FilterChain { filters }
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Starts every filter for one request (nothing is allocated for an empty chain).
    pub fn start(&self, info: impl FnOnce() -> StreamInfo) -> ChainStreams {
        if self.filters.is_empty() {
            return ChainStreams::default();
        }
        let info = Arc::new(info());
        ChainStreams { streams: self.filters.iter().map(|f| f.start(&info)).collect() }
    }
}

impl ChainStreams {
    /// Runs the request-headers phase of every filter until one answers.
    pub fn on_request_headers(&mut self, request: &mut Parts, decisions: &mut RequestDecisions) -> Verdict {
        for stream in &mut self.streams {
            if let Verdict::Respond(response) = stream.on_request_headers(request, decisions) {
                return Verdict::Respond(response);
            }
        }
        Verdict::Continue
    }

    /// Runs the response-headers phase in reverse order, as a response travels back out.
    pub fn on_response_headers(&mut self, response: &mut ResponseParts) -> Verdict {
        for stream in self.streams.iter_mut().rev() {
            if let Verdict::Respond(reply) = stream.on_response_headers(response) {
                return Verdict::Respond(reply);
            }
        }
        Verdict::Continue
    }
}

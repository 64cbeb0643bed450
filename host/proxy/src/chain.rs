//! The filter chain a listener runs on each request, in order, phase by phase. Filters decide
//! where a request goes (`upstream_cluster`) or answer it themselves. The Wasm host plugs its
//! filters in through [`HttpFilter`]; a listener without `filters:` runs an empty chain.

use crate::http::ProxyBody;
use crate::metrics::Name;
use http::request::Parts;
use http::response::Parts as ResponseParts;
use http::Response;
use std::sync::Arc;

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

/// One HTTP filter's phases. Each defaults to "continue".
pub trait HttpFilter: Send + Sync {
    fn on_request_headers(
        &self,
        _request: &mut Parts,
        _decisions: &mut RequestDecisions,
    ) -> Verdict {
        Verdict::Continue
    }
    fn on_response_headers(&self, _response: &mut ResponseParts) -> Verdict {
        Verdict::Continue
    }
}

/// A listener's ordered filters.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Vec<Arc<dyn HttpFilter>>,
}

impl FilterChain {
    pub fn new(filters: Vec<Arc<dyn HttpFilter>>) -> Self {
        FilterChain { filters }
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs the request-headers phase of every filter until one answers.
    pub fn on_request_headers(
        &self,
        request: &mut Parts,
        decisions: &mut RequestDecisions,
    ) -> Verdict {
        for filter in &self.filters {
            if let Verdict::Respond(response) = filter.on_request_headers(request, decisions) {
                return Verdict::Respond(response);
            }
        }
        Verdict::Continue
    }

    /// Runs the response-headers phase in reverse order, as a response travels back out.
    pub fn on_response_headers(&self, response: &mut ResponseParts) -> Verdict {
        for filter in self.filters.iter().rev() {
            if let Verdict::Respond(reply) = filter.on_response_headers(response) {
                return Verdict::Respond(reply);
            }
        }
        Verdict::Continue
    }
}

//! The filter chain a listener runs on each request, in order, phase by phase: request headers,
//! body and trailers on the way in; response headers, body and trailers (in reverse order) on the
//! way out. Filters decide where a request goes (`upstream_cluster`), answer it themselves, hold
//! a body back to read it whole, or pause the request until something they wait for (a callout,
//! a timer) resumes it. Filters are built by a [`FilterLoader`] (the Wasm host) from the config's
//! `filters:`; a listener without filters runs an empty chain and pays nothing for it.

use crate::http::ProxyBody;
use crate::metrics::{Metrics, Name};
use crate::tls::TlsInfo;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::response::Parts as ResponseParts;
use http::{HeaderMap, Response};
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use weft_config::FieldError;

pub use crate::callout::{CalloutFuture, CalloutResponse, Callouts, DEFAULT_CALLOUT_TIMEOUT};

/// What filters decided about a request so far.
#[derive(Default)]
pub struct RequestDecisions {
    /// The cluster a filter chose; the listener's `cluster` when none did.
    pub upstream_cluster: Option<Name>,
    /// The upstream time limit a filter set for this request; the cluster's `request_timeout`
    /// when none did.
    pub request_timeout: Option<std::time::Duration>,
}

/// What a paused filter's wait yields; handed back to [`FilterStream::resume`], which alone
/// knows what it holds.
pub type Resumed = Box<dyn Any + Send>;

/// A paused filter's wait: it ends when the filter resumes the request (or can no longer).
pub type Wait = Pin<Box<dyn Future<Output = Resumed> + Send>>;

/// What a filter phase tells the proxy to do next.
pub enum Verdict {
    /// Go on to the next filter, then upstream (for a body: pass the data on).
    Continue,
    /// Stop here and send this response to the client (boxed: a verdict travels by value through
    /// every phase, and most verdicts are not responses).
    Respond(Box<Response<ProxyBody>>),
    /// A body phase only: hold the data back and call again with it and what follows.
    Buffer,
    /// Wait, then call [`FilterStream::resume`] for the same message.
    Pause(Wait),
}

/// The part of an exchange a phase is about. The filter may edit it in place.
pub enum Message<'a> {
    RequestHeaders(&'a mut Parts, &'a mut RequestDecisions),
    RequestBody(&'a mut BytesMut),
    RequestTrailers(&'a mut HeaderMap),
    ResponseHeaders(&'a mut ResponseParts),
    ResponseBody(&'a mut BytesMut),
    ResponseTrailers(&'a mut HeaderMap),
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

/// A filter as configured: it starts one [`FilterStream`] per request on an HTTP listener, or
/// one [`ConnectionFilter`] per connection on a tcp listener (a network filter).
pub trait HttpFilter: Send + Sync {
    fn start(&self, info: &Arc<StreamInfo>) -> Box<dyn FilterStream>;
    fn start_connection(&self, info: &Arc<StreamInfo>) -> Box<dyn ConnectionFilter>;
    /// What the admin `/filters` shows about the filter.
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// One filter's view of one request. Dropping it ends the request for the filter (its log and
/// clean-up callbacks run then).
pub trait FilterStream: Send {
    /// Runs the filter's phase for `message`; `end_of_stream`: nothing follows it in its direction.
    fn on(&mut self, message: Message<'_>, end_of_stream: bool) -> Verdict;
    /// Ends a paused phase once its wait is over, with the same message and what the wait yielded.
    fn resume(&mut self, _message: Message<'_>, _resumed: Resumed) -> Verdict {
        Verdict::Continue
    }
}

/// What a network filter tells the proxy to do with a connection's data.
#[derive(Debug, PartialEq, Eq)]
pub enum DataVerdict {
    /// Pass the (maybe edited) data on.
    Continue,
    /// Hold the data back and call again with it and what follows.
    Buffer,
    /// Close the connection, both sides.
    Close,
}

/// One network filter's view of one TCP connection. Dropping it ends the connection for the
/// filter. For a connection, [`Direction::Request`] is the client's data, [`Direction::Response`]
/// the upstream's.
pub trait ConnectionFilter: Send {
    fn on_new_connection(&mut self) -> DataVerdict;
    fn on_data(&mut self, direction: Direction, data: &mut BytesMut, end_of_stream: bool) -> DataVerdict;
    /// The client (`Request`) or the upstream (`Response`) closed its side.
    fn on_close(&mut self, direction: Direction);
}

/// What the proxy lends filters while they load: where metrics go and how they reach clusters.
#[derive(Clone)]
pub struct FilterHost {
    pub metrics: Arc<Metrics>,
    pub callouts: Arc<dyn Callouts>,
}

/// Builds the filters of a config. The proxy calls it on every load; an error refuses the config.
pub trait FilterLoader: Send + Sync {
    /// One filter per entry of `filters` (by name), or an error per entry that cannot load.
    fn load(
        &self,
        filters: &[weft_config::Filter],
        host: &FilterHost,
    ) -> Result<HashMap<String, Arc<dyn HttpFilter>>, Vec<FieldError>>;
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

    /// Starts every filter for one request (nothing is allocated for an empty chain).
    pub fn start(&self, info: impl FnOnce() -> StreamInfo) -> ChainStreams {
        if self.filters.is_empty() {
            return ChainStreams::default();
        }
        let info = Arc::new(info());
        let streams: Vec<_> = self.filters.iter().map(|f| f.start(&info)).collect();
        // Made on the first body that passes: most requests have none.
        let held = [Vec::new(), Vec::new()];
        ChainStreams { inner: Some(Arc::new(Mutex::new(Streams { streams, held }))) }
    }

    /// Starts every filter as a network filter for one TCP connection.
    pub fn start_connection(&self, info: impl FnOnce() -> StreamInfo) -> ConnectionChain {
        if self.filters.is_empty() {
            return ConnectionChain::default();
        }
        let info = Arc::new(info());
        let filters: Vec<_> = self.filters.iter().map(|f| f.start_connection(&info)).collect();
        let held = [0, 1].map(|_| filters.iter().map(|_| BytesMut::new()).collect());
        ConnectionChain { filters, held }
    }
}

/// The network filters of one TCP connection, in order for the client's data and in reverse
/// for the upstream's.
#[derive(Default)]
pub struct ConnectionChain {
    filters: Vec<Box<dyn ConnectionFilter>>,
    /// Per direction, per filter: data the filter is holding back.
    held: [Vec<BytesMut>; 2],
}

/// A network filter closed the connection.
#[derive(Debug)]
pub struct Closed;

impl ConnectionChain {
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Every filter's `on_new_connection`; `Err` when one closes the connection.
    pub fn on_new_connection(&mut self) -> Result<(), Closed> {
        for filter in &mut self.filters {
            if filter.on_new_connection() == DataVerdict::Close {
                return Err(Closed);
            }
        }
        Ok(())
    }

    /// Passes data through the filters; returns what comes out the far end (maybe nothing yet).
    /// A filter holding back more than `limit` bytes closes the connection.
    pub fn on_data(
        &mut self,
        direction: Direction,
        data: &[u8],
        end_of_stream: bool,
        limit: usize,
    ) -> Result<BytesMut, Closed> {
        let side = direction as usize;
        let mut passing = BytesMut::from(data);
        for index in order(self.filters.len(), direction) {
            let held = &mut self.held[side][index];
            if hold(held, &mut passing, limit) {
                tracing::warn!("a network filter held back more than max_buffered_body; connection closed");
                return Err(Closed);
            }
            match self.filters[index].on_data(direction, held, end_of_stream) {
                DataVerdict::Close => return Err(Closed),
                DataVerdict::Buffer if !end_of_stream => return Ok(passing),
                _ => passing = std::mem::take(held),
            }
        }
        Ok(passing)
    }

    pub fn on_close(&mut self, direction: Direction) {
        for filter in &mut self.filters {
            filter.on_close(direction);
        }
    }
}

/// Which way a body travels.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    Request = 0,
    Response = 1,
}

struct Streams {
    streams: Vec<Box<dyn FilterStream>>,
    /// Per direction, per filter: body data the filter is holding back (empty until a body passes).
    held: [Vec<BytesMut>; 2],
}

impl Streams {
    /// Runs filter `index`'s phase for `message`, or resumes it with what its wait yielded.
    fn step(&mut self, index: usize, message: Message<'_>, end_of_stream: bool, resumed: Option<Resumed>) -> Verdict {
        match resumed {
            None => self.streams[index].on(message, end_of_stream),
            Some(resumed) => self.streams[index].resume(message, resumed),
        }
    }
}

/// The filters of a chain for one request. Shared by the request path and the two bodies, which
/// run on different tasks; the lock is held only while a filter phase runs, never across a wait.
#[derive(Clone, Default)]
pub struct ChainStreams {
    inner: Option<Arc<Mutex<Streams>>>,
}

/// How a body step ended when it did not simply pass data on.
pub enum BodyStop {
    /// A filter answered the request itself (boxed, like [`Verdict::Respond`]).
    Respond(Box<Response<ProxyBody>>),
    /// A filter held back more than the listener's `max_buffered_body`.
    TooLarge,
}

impl ChainStreams {
    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    fn lock(&self) -> Option<MutexGuard<'_, Streams>> {
        // A filter that panicked mid-phase was already handled by its own failure policy.
        self.inner.as_ref().map(|inner| inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs the filters' phase from `position` (in the direction's order) on, one after the
    /// other under one lock, until one answers, holds data back or pauses (the lock is released
    /// before any wait). `resumed`: what the wait of the filter at `position` yielded.
    fn drive(
        &self,
        direction: Direction,
        position: usize,
        resumed: Option<Resumed>,
        phase: &mut PhaseFn<'_>,
    ) -> Driven {
        let Some(mut streams) = self.lock() else { return Driven::Through };
        let count = streams.streams.len();
        let mut resumed = resumed;
        for position in position..count {
            let index = if direction == Direction::Request { position } else { count - 1 - position };
            match phase(&mut streams, index, resumed.take()) {
                Verdict::Continue => {}
                Verdict::Respond(response) => return Driven::Respond(response),
                Verdict::Buffer => return Driven::Buffer,
                Verdict::Pause(wait) => return Driven::Paused(position, wait),
            }
        }
        Driven::Through
    }

    /// [`ChainStreams::drive`] from the first filter to the end, waiting out pauses. Nothing is
    /// boxed or allocated unless a filter pauses.
    async fn run(&self, direction: Direction, phase: &mut PhaseFn<'_>) -> Option<Box<Response<ProxyBody>>> {
        let mut driven = self.drive(direction, 0, None, phase);
        loop {
            match driven {
                Driven::Paused(position, wait) => {
                    let resumed = wait.await;
                    driven = self.drive(direction, position, Some(resumed), phase);
                }
                Driven::Respond(response) => return Some(response),
                Driven::Through | Driven::Buffer => return None,
            }
        }
    }

    /// The request-headers phase of every filter in order, until one answers.
    pub async fn request_headers(
        &self,
        request: &mut Parts,
        decisions: &mut RequestDecisions,
        end_of_stream: bool,
    ) -> Option<Response<ProxyBody>> {
        let mut phase = |s: &mut Streams, index: usize, resumed: Option<Resumed>| {
            let message = Message::RequestHeaders(&mut *request, &mut *decisions);
            not_body(s.step(index, message, end_of_stream, resumed))
        };
        self.run(Direction::Request, &mut phase).await.map(|response| *response)
    }

    /// The response-headers phase in reverse order, as a response travels back out.
    pub async fn response_headers(
        &self,
        response: &mut ResponseParts,
        end_of_stream: bool,
    ) -> Option<Response<ProxyBody>> {
        let mut phase = |s: &mut Streams, index: usize, resumed: Option<Resumed>| {
            not_body(s.step(index, Message::ResponseHeaders(&mut *response), end_of_stream, resumed))
        };
        self.run(Direction::Response, &mut phase).await.map(|reply| *reply)
    }

    /// Passes a piece of body through the filters (in the direction's order). Each filter sees
    /// what the one before let through; a filter that buffers holds its data until it continues.
    /// Returns what comes out the far end (maybe nothing yet).
    pub async fn body(
        &self,
        direction: Direction,
        data: Bytes,
        end_of_stream: bool,
        limit: usize,
    ) -> Result<Bytes, BodyStop> {
        match self.body_now(direction, data, end_of_stream, limit) {
            BodyStep::Done(result) => result,
            BodyStep::Waiting(waiting) => waiting.await,
        }
    }

    /// [`ChainStreams::body`] without a future when no filter pauses: the outcome at once, or
    /// the rest of the work to wait for.
    pub fn body_now(&self, direction: Direction, data: Bytes, end_of_stream: bool, limit: usize) -> BodyStep {
        let mut body = BodyRun { direction, passing: BytesMut::from(data), end_of_stream, limit, too_large: false };
        match self.drive(direction, 0, None, &mut |s, index, resumed| body.phase(s, index, resumed)) {
            Driven::Paused(position, wait) => {
                let chain = self.clone();
                BodyStep::Waiting(Box::pin(async move {
                    let mut driven = Driven::Paused(position, wait);
                    while let Driven::Paused(position, wait) = driven {
                        let resumed = wait.await;
                        driven = chain.drive(direction, position, Some(resumed), &mut |s, index, resumed| {
                            body.phase(s, index, resumed)
                        });
                    }
                    body.outcome(driven)
                }))
            }
            driven => BodyStep::Done(body.outcome(driven)),
        }
    }

    /// The trailers phase (in the direction's order).
    pub async fn trailers(&self, direction: Direction, trailers: &mut HeaderMap) -> Option<Response<ProxyBody>> {
        let mut phase = |s: &mut Streams, index: usize, resumed: Option<Resumed>| {
            let message = match direction {
                Direction::Request => Message::RequestTrailers(&mut *trailers),
                Direction::Response => Message::ResponseTrailers(&mut *trailers),
            };
            not_body(s.step(index, message, true, resumed))
        };
        self.run(direction, &mut phase).await.map(|reply| *reply)
    }
}

/// Holding data back means nothing outside a body phase: the message goes on to the next filter.
fn not_body(verdict: Verdict) -> Verdict {
    match verdict {
        Verdict::Buffer => Verdict::Continue,
        other => other,
    }
}

/// How [`ChainStreams::drive`] stopped.
enum Driven {
    /// Every filter let the message through.
    Through,
    Respond(Box<Response<ProxyBody>>),
    /// A body phase held its data back.
    Buffer,
    /// The filter at this position (in the direction's order) paused.
    Paused(usize, Wait),
}

/// A body step's outcome: at once, or after a filter's wait.
pub enum BodyStep {
    Done(Result<Bytes, BodyStop>),
    Waiting(Pin<Box<dyn Future<Output = Result<Bytes, BodyStop>> + Send>>),
}

/// One piece of body on its way through the filters' body phase.
struct BodyRun {
    direction: Direction,
    /// What the last filter let through, for the next one.
    passing: BytesMut,
    end_of_stream: bool,
    limit: usize,
    too_large: bool,
}

impl BodyRun {
    /// Filter `index`'s body phase: it gets what it held back plus what passes now (or, resumed,
    /// what it held when it paused).
    fn phase(&mut self, s: &mut Streams, index: usize, resumed: Option<Resumed>) -> Verdict {
        let side = self.direction as usize;
        if resumed.is_none() {
            let count = s.streams.len();
            let held = &mut s.held[side];
            if held.len() < count {
                held.resize_with(count, BytesMut::new);
            }
            if hold(&mut held[index], &mut self.passing, self.limit) {
                self.too_large = true;
                return Verdict::Buffer;
            }
        }
        // The held data moves out for the call: the filter and the buffer are both in `s`.
        let mut body = std::mem::take(&mut s.held[side][index]);
        let message = match self.direction {
            Direction::Request => Message::RequestBody(&mut body),
            Direction::Response => Message::ResponseBody(&mut body),
        };
        let verdict = s.step(index, message, self.end_of_stream, resumed);
        match verdict {
            // Held back: nothing passes this filter yet. At the end of the stream there is
            // nothing more to wait for, so the data goes on.
            Verdict::Buffer if self.end_of_stream => {
                self.passing = body;
                Verdict::Continue
            }
            Verdict::Buffer | Verdict::Pause(_) => {
                s.held[side][index] = body;
                verdict
            }
            Verdict::Continue => {
                self.passing = body;
                Verdict::Continue
            }
            Verdict::Respond(_) => {
                s.held[side][index] = body;
                verdict
            }
        }
    }

    fn outcome(self, driven: Driven) -> Result<Bytes, BodyStop> {
        match driven {
            _ if self.too_large => Err(BodyStop::TooLarge),
            Driven::Respond(response) => Err(BodyStop::Respond(response)),
            Driven::Buffer => Ok(Bytes::new()),
            Driven::Through | Driven::Paused(..) => Ok(self.passing.freeze()),
        }
    }
}

/// Adds the data `passing` to what a filter holds (taking it whole when the filter holds nothing);
/// true when the filter now holds more than `limit`.
fn hold(held: &mut BytesMut, passing: &mut BytesMut, limit: usize) -> bool {
    if held.is_empty() {
        *held = std::mem::take(passing);
    } else {
        held.extend_from_slice(passing);
        passing.clear();
    }
    held.len() > limit
}

/// The indices of `count` filters in the order data travelling in `direction` meets them.
fn order(count: usize, direction: Direction) -> impl Iterator<Item = usize> {
    (0..count).map(move |i| if direction == Direction::Request { i } else { count - 1 - i })
}

/// One filter's phase: (the streams, the filter's index, what its wait yielded when resumed).
type PhaseFn<'a> = dyn FnMut(&mut Streams, usize, Option<Resumed>) -> Verdict + Send + 'a;

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends its tag to every piece of data; `hold` makes it hold data back until the end.
    struct Tagger {
        tag: &'static str,
        hold: bool,
    }

    impl Tagger {
        /// Tags the data, or answers true when it holds the data back instead.
        fn holds(&self, data: &mut BytesMut, end_of_stream: bool) -> bool {
            if self.hold && !end_of_stream {
                return true;
            }
            data.extend_from_slice(self.tag.as_bytes());
            false
        }
    }

    impl FilterStream for Tagger {
        fn on(&mut self, message: Message<'_>, end_of_stream: bool) -> Verdict {
            match message {
                Message::RequestBody(data) | Message::ResponseBody(data) => {
                    if self.holds(data, end_of_stream) {
                        Verdict::Buffer
                    } else {
                        Verdict::Continue
                    }
                }
                _ => Verdict::Continue,
            }
        }
    }

    impl ConnectionFilter for Tagger {
        fn on_new_connection(&mut self) -> DataVerdict {
            DataVerdict::Continue
        }
        fn on_data(&mut self, _direction: Direction, data: &mut BytesMut, end_of_stream: bool) -> DataVerdict {
            if self.holds(data, end_of_stream) {
                DataVerdict::Buffer
            } else {
                DataVerdict::Continue
            }
        }
        fn on_close(&mut self, _direction: Direction) {}
    }

    fn streams(filters: Vec<Tagger>) -> ChainStreams {
        let streams: Vec<Box<dyn FilterStream>> = filters.into_iter().map(|f| Box::new(f) as _).collect();
        let held = [0, 1].map(|_| streams.iter().map(|_| BytesMut::new()).collect());
        ChainStreams { inner: Some(Arc::new(Mutex::new(Streams { streams, held }))) }
    }

    fn run<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }

    #[test]
    fn bodies_pass_filters_in_order_and_held_data_waits_for_the_end() {
        let chain = streams(vec![Tagger { tag: "<a", hold: false }, Tagger { tag: "<b", hold: true }]);
        let body = |data: &'static str, end: bool, direction: Direction| {
            let chain = chain.clone();
            run(async move { chain.body(direction, Bytes::from(data), end, 1024).await.ok().unwrap() })
        };
        assert_eq!(body("1", false, Direction::Request), "", "b holds back what a let through");
        assert_eq!(body("2", true, Direction::Request), "1<a2<a<b", "b sees everything held at the end");
        assert_eq!(body("r", true, Direction::Response), "r<b<a", "responses meet the filters in reverse");
        let stopped = run(chain.body(Direction::Request, Bytes::from(vec![b'x'; 2000]), false, 1024));
        assert!(matches!(stopped, Err(BodyStop::TooLarge)), "more held back than the limit");
    }

    #[test]
    fn connection_data_passes_network_filters_both_ways() {
        let mut chain = ConnectionChain {
            filters: vec![Box::new(Tagger { tag: "|1", hold: true }), Box::new(Tagger { tag: "|2", hold: false })],
            held: [0, 1].map(|_| vec![BytesMut::new(), BytesMut::new()]),
        };
        assert!(chain.on_new_connection().is_ok());
        assert_eq!(chain.on_data(Direction::Request, b"a", false, 64).unwrap(), "");
        assert_eq!(chain.on_data(Direction::Request, b"b", true, 64).unwrap(), "ab|1|2");
        assert_eq!(chain.on_data(Direction::Response, b"z", false, 64).unwrap(), "", "filter 1 holds it last");
        assert!(chain.on_data(Direction::Response, &[b'y'; 100], false, 64).is_err(), "over the limit closes");
    }
}

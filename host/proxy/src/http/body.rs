//! The one body type the proxy moves in both directions: streamed from a peer, or a small
//! buffer of the proxy's own. Streamed bodies are counted as they pass, never collected.

use super::exchange::Exchange;
use super::filtered::FilteredBody;
use crate::upstream::PeerBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// The error a body ends with: the peer's, or a filter's decision to stop it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Streamed(PeerBody),
    /// Passing through the listener's filters.
    Filtered(Box<FilteredBody>),
    /// Ends in an error at once, so the client sees the stream reset.
    Reset,
}

/// Where the bytes of a body are counted as they pass.
enum Meter {
    None,
    /// A request body: a counter the request's exchange reads when it ends.
    Shared(Arc<AtomicU64>),
    /// A response body: it owns the exchange, which is recorded when the body ends or is dropped.
    Exchange(Box<Exchange>),
}

pub struct ProxyBody {
    kind: Kind,
    meter: Meter,
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody { kind: Kind::Empty, meter: Meter::None }
    }

    pub fn full(data: impl Into<Bytes>) -> Self {
        ProxyBody { kind: Kind::Full(Some(data.into())), meter: Meter::None }
    }

    pub fn streamed(body: impl Into<PeerBody>) -> Self {
        ProxyBody { kind: Kind::Streamed(body.into()), meter: Meter::None }
    }

    pub fn filtered(body: FilteredBody) -> Self {
        ProxyBody { kind: Kind::Filtered(Box::new(body)), meter: Meter::None }
    }

    /// A body that fails at once: the client sees its stream (or connection) reset.
    pub fn reset() -> Self {
        ProxyBody { kind: Kind::Reset, meter: Meter::None }
    }

    /// Counts the data bytes into `counter` as they pass.
    pub fn counted(mut self, counter: Arc<AtomicU64>) -> Self {
        self.meter = Meter::Shared(counter);
        self
    }

    /// Hands the request's exchange to this (response) body: it is recorded when the body ends.
    pub fn finishing(mut self, exchange: Exchange) -> Self {
        self.meter = Meter::Exchange(Box::new(exchange));
        self
    }

    fn count(&mut self, bytes: usize) {
        match &mut self.meter {
            Meter::None => {}
            Meter::Shared(counter) => {
                counter.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            Meter::Exchange(exchange) => exchange.bytes_sent += bytes as u64,
        }
    }

    fn finish(&mut self) {
        if let Meter::Exchange(_) = self.meter {
            // Dropping the exchange records it now rather than when hyper drops the body.
            self.meter = Meter::None;
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match &mut this.kind {
            Kind::Empty => None,
            Kind::Full(data) => data.take().map(|d| Ok(Frame::data(d))),
            Kind::Streamed(body) => ready!(Pin::new(body).poll_frame(cx)),
            Kind::Filtered(body) => ready!(Pin::new(&mut **body).poll_frame(cx)),
            Kind::Reset => Some(Err("the stream was closed by a filter".into())),
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len();
                    this.count(len);
                }
            }
            Some(Err(_)) => {
                if let Meter::Exchange(exchange) = &mut this.meter {
                    exchange.body_error = true;
                }
                this.finish();
            }
            None => this.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(data) => data.is_none(),
            Kind::Streamed(body) => body.is_end_stream(),
            Kind::Filtered(body) => body.is_end_stream(),
            Kind::Reset => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Streamed(body) => body.size_hint(),
            // Filters may change a body's length.
            Kind::Filtered(_) | Kind::Reset => SizeHint::default(),
        }
    }
}

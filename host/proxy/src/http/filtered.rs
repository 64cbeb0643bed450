//! A body on its way through the filter chain: each piece of data goes through the filters'
//! body phase (which may edit it, hold it back, or answer the request), trailers through their
//! trailers phase. Used only when the listener has filters.

use super::body::BoxError;
use super::{LocalReply, ProxyBody};
use crate::chain::{BodyStep, BodyStop, ChainStreams, Direction};
use crate::upstream::PeerBody;
use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::sync::oneshot;

type Step = Pin<Box<dyn Future<Output = Result<Vec<Frame<Bytes>>, BodyStop>> + Send>>;

/// How the client is answered when filters stop a request body.
pub enum BodyAnswer {
    /// A filter's own response.
    Filter(Response<ProxyBody>),
    /// The proxy's (413 when a filter held back too much).
    Local(LocalReply),
}

pub struct FilteredBody {
    /// The peer's body; `None` once it has ended.
    inner: Option<PeerBody>,
    chain: ChainStreams,
    direction: Direction,
    limit: usize,
    /// The filters' work on the last frame read, while it runs.
    step: Option<Step>,
    /// Frames the filters let through, not yet handed on.
    ready: VecDeque<Frame<Bytes>>,
    /// Filters saw data but not yet the end of the stream: they get one last call at the end.
    owes_end: bool,
    /// Where a request body sends a filter's answer (or 413) to the client.
    local_reply: Option<oneshot::Sender<BodyAnswer>>,
}

impl FilteredBody {
    /// A request body: a filter's answer during it goes to `local_reply`, and the upstream
    /// request is abandoned.
    pub fn request(
        inner: PeerBody,
        chain: ChainStreams,
        limit: usize,
        local_reply: oneshot::Sender<BodyAnswer>,
    ) -> Self {
        FilteredBody::new(inner, chain, Direction::Request, limit, Some(local_reply))
    }

    /// A response body: its head is already on its way, so a filter can only cut it off.
    pub fn response(inner: PeerBody, chain: ChainStreams, limit: usize) -> Self {
        FilteredBody::new(inner, chain, Direction::Response, limit, None)
    }

    fn new(
        inner: PeerBody,
        chain: ChainStreams,
        direction: Direction,
        limit: usize,
        local_reply: Option<oneshot::Sender<BodyAnswer>>,
    ) -> Self {
        FilteredBody {
            inner: Some(inner),
            chain,
            direction,
            limit,
            step: None,
            ready: VecDeque::new(),
            owes_end: false,
            local_reply,
        }
    }

    /// Starts the filters' work on a piece of data, then (if given) on trailers. Data alone that
    /// no filter pauses on is done at once, with no future: what passed comes back to hand on.
    fn start_step(
        &mut self,
        data: Bytes,
        end_of_stream: bool,
        trailers: Option<http::HeaderMap>,
    ) -> Result<Option<Frame<Bytes>>, BodyStop> {
        let (chain, direction, limit) = (self.chain.clone(), self.direction, self.limit);
        self.owes_end = !end_of_stream;
        if trailers.is_none() {
            match chain.body_now(direction, data, end_of_stream, limit) {
                BodyStep::Done(passed) => return passed.map(|data| (!data.is_empty()).then(|| Frame::data(data))),
                BodyStep::Waiting(waiting) => {
                    self.step = Some(Box::pin(async move {
                        let data = waiting.await?;
                        Ok(if data.is_empty() { Vec::new() } else { vec![Frame::data(data)] })
                    }));
                    return Ok(None);
                }
            }
        }
        self.step = Some(Box::pin(async move {
            let mut frames = Vec::with_capacity(2);
            let data = chain.body(direction, data, end_of_stream, limit).await?;
            if !data.is_empty() {
                frames.push(Frame::data(data));
            }
            if let Some(mut trailers) = trailers {
                if let Some(reply) = chain.trailers(direction, &mut trailers).await {
                    return Err(BodyStop::Respond(Box::new(reply)));
                }
                frames.push(Frame::trailers(trailers));
            }
            Ok(frames)
        }));
        Ok(None)
    }

    /// What a started step gives to hand on now: a frame that passed, or the error of a stop.
    fn passed(&mut self, started: Result<Option<Frame<Bytes>>, BodyStop>) -> Option<Result<Frame<Bytes>, BoxError>> {
        match started {
            Ok(frame) => frame.map(Ok),
            Err(stop) => Some(Err(self.stopped(stop))),
        }
    }

    /// A filter stopped the body: the client gets its answer (requests) and the peer an error.
    fn stopped(&mut self, stop: BodyStop) -> BoxError {
        self.inner = None;
        self.owes_end = false;
        let (reply, why) = match stop {
            BodyStop::Respond(reply) => (BodyAnswer::Filter(*reply), "a filter answered the request during its body"),
            BodyStop::TooLarge => {
                (BodyAnswer::Local(LocalReply::BodyTooLarge), "a filter held back more than max_buffered_body")
            }
        };
        match self.local_reply.take() {
            Some(to_client) => {
                let _ = to_client.send(reply);
            }
            None => tracing::warn!(reason = why, "response body cut off"),
        }
        why.into()
    }
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(frame) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if let Some(step) = this.step.as_mut() {
                let outcome = ready!(step.as_mut().poll(cx));
                this.step = None;
                match outcome {
                    Ok(frames) => this.ready.extend(frames),
                    Err(stop) => return Poll::Ready(Some(Err(this.stopped(stop)))),
                }
                continue;
            }
            let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
            match ready!(Pin::new(&mut *inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let started = match frame.into_data() {
                        Ok(data) => {
                            let end = inner.is_end_stream();
                            this.start_step(data, end, None)
                        }
                        // Trailers end the body: the body phase gets its end first.
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => {
                                this.inner = None;
                                this.start_step(Bytes::new(), true, Some(trailers))
                            }
                            Err(_) => Ok(None),
                        },
                    };
                    if let Some(passed) = this.passed(started) {
                        return Poll::Ready(Some(passed));
                    }
                }
                Some(Err(error)) => {
                    this.inner = None;
                    return Poll::Ready(Some(Err(error)));
                }
                None => {
                    this.inner = None;
                    if this.owes_end {
                        let started = this.start_step(Bytes::new(), true, None);
                        if let Some(passed) = this.passed(started) {
                            return Poll::Ready(Some(passed));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty()
            && self.step.is_none()
            && !self.owes_end
            && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }
}

//! HTTP/1.1 on one upstream connection, run by the request's own task: the request goes out
//! (its head and whatever of its body is at hand in one write), the response head is read and
//! parsed, and the response body is read off the socket by whoever reads the body.
//!
//! weft speaks this side of HTTP/1.1 itself rather than through hyper's client connection,
//! which runs each connection in a task of its own: every request then crossed to that task and
//! back, and every body chunk too, a wake-up and a channel each way. Here nothing crosses: the
//! request's task writes and reads. Requests that may switch protocols (`Upgrade`, `CONNECT`)
//! still go through hyper, which hands the connection over to the tunnel.

use super::UpstreamStream;
use crate::http::h1_text::{itoa, put_fields, put_hex, CRLF};
use crate::http::ProxyBody;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;
use tokio::time::Sleep;

/// The largest response head read: past it the response is refused (hyper's own limit is
/// about 400 KB; real heads are well under a kilobyte or two).
const MAX_HEAD: usize = 256 * 1024;
/// Header fields a response head may have.
const MAX_HEADERS: usize = 128;
/// A read asks for at least this much room, and the buffer grows by this.
const READ_ROOM: usize = 4 * 1024;
const READ_GROWTH: usize = 16 * 1024;
/// Request body bytes gathered before they are written.
const GATHER: usize = 64 * 1024;
/// The longest chunk-size line or trailer field of a chunked response.
const MAX_LINE: usize = 8 * 1024;

/// An open connection to an endpoint, between exchanges or in one.
pub struct Connection {
    inner: Box<Inner>,
}

/// Boxed: a connection moves between the pool and each response body, as one pointer.
struct Inner {
    io: UpstreamStream,
    /// Bytes read from the endpoint and not used yet.
    read: BytesMut,
    /// The deadline of the exchange under way, made with the first and moved on for each next
    /// one: moving a timer later costs no more than an atomic write, where a timer made and
    /// dropped with every request took the timer wheel's lock twice. Between exchanges it keeps
    /// the waker of the task that polled it last (one per pooled connection, at most).
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    pub fn new(io: UpstreamStream) -> Connection {
        Connection { inner: Box::new(Inner { io, read: BytesMut::new(), deadline: None }) }
    }

    /// Whether the connection, idle since its last exchange, still is: the endpoint has sent
    /// nothing on it (a close, TLS's close_notify, or bytes no request asked for). Costs no
    /// system call unless the socket has something to say.
    pub fn is_idle(&mut self) -> bool {
        // `try_read` reads only when the socket was seen readable (readiness left over from the
        // last read is cleared by a read that would block). Unlike `poll_read_ready`, it answers
        // whatever the task's scheduling budget, which would make a closed socket look idle.
        self.inner.io.holds_nothing_read()
            && matches!(self.inner.io.tcp().try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Marks the connection as idle in a pool (closed then, it ends cleanly), or taken out.
    pub fn set_idle(&mut self, idle: bool) {
        self.inner.io.set_between_exchanges(idle);
    }

    /// [`Connection::is_idle`], and `cx` is woken when the endpoint sends something on it.
    pub fn still_idle(&mut self, cx: &mut Context<'_>) -> bool {
        // Only to be woken: a spent budget answers `Pending` without registering, and the
        // next sweep or checkout looks again.
        self.is_idle() && self.inner.io.tcp().poll_read_ready(cx).is_pending()
    }
}

/// A request ready for the wire: its head encoded, its body framed.
pub struct Outgoing {
    head: Bytes,
    body: Option<ProxyBody>,
    framing: Framing,
    /// The response to a `HEAD` has no body, whatever its head says.
    head_request: bool,
    /// Idempotent and bodiless: may be written again on another connection when one closed
    /// under it before any answer.
    replayable: bool,
}

/// How a request body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    /// `Content-Length`: so many bytes left.
    Length(u64),
    Chunked,
}

impl Outgoing {
    /// Encodes the request, in origin form (its URI's path and query; `CONNECT` is not sent
    /// this way). The body's framing is the `Content-Length` the request carries, else the
    /// body's known length, else chunked — as hyper's client does.
    pub fn new(request: Request<ProxyBody>) -> io::Result<Outgoing> {
        let (parts, body) = request.into_parts();
        let declared = match parts.headers.get(header::CONTENT_LENGTH) {
            None => None,
            Some(value) => Some(
                std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok())
                    .ok_or_else(|| invalid_input("the request's content-length is not a number"))?,
            ),
        };
        // A body of a known length of nought (a buffer of nothing) is no body, as an ended one.
        let exact = body.size_hint().exact();
        let empty = body.is_end_stream() || exact == Some(0);
        if empty && declared.is_some_and(|length| length > 0) {
            return Err(invalid_input("the request has no body but its content-length is not 0"));
        }
        // The framing, and whether weft writes the field that says it (the request's own does
        // when it has one).
        let (framing, spelled) = match (declared, exact) {
            (Some(length), _) => (Framing::Length(length), false),
            // Methods whose body means something say it is empty; others say nothing.
            (None, _) if empty => {
                (Framing::Length(0), matches!(parts.method, Method::POST | Method::PUT | Method::PATCH))
            }
            (None, Some(length)) => (Framing::Length(length), true),
            (None, None) => (Framing::Chunked, true),
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let method = parts.method.as_str();
        let fields: usize = parts.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        let mut head = Vec::with_capacity(method.len() + target.len() + fields + 64);
        head.extend_from_slice(method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        put_fields(&mut head, &parts.headers);
        if spelled {
            match framing {
                Framing::Length(length) => {
                    head.extend_from_slice(b"content-length: ");
                    head.extend_from_slice(itoa(length, &mut [0; 20]));
                    head.extend_from_slice(CRLF);
                }
                Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            }
        }
        head.extend_from_slice(CRLF);
        let replayable = empty
            && matches!(
                parts.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
            );
        Ok(Outgoing {
            head: Bytes::from(head),
            body: (!empty).then_some(body),
            framing,
            head_request: parts.method == Method::HEAD,
            replayable,
        })
    }

    /// The same request again, when it may be sent again.
    fn replay(&self) -> Option<Outgoing> {
        self.replayable.then(|| Outgoing {
            head: self.head.clone(),
            body: None,
            framing: self.framing,
            head_request: self.head_request,
            replayable: true,
        })
    }
}

/// An exchange that got no response.
pub struct Failed {
    pub error: io::Error,
    /// The request, when nothing came back on the connection and the request may be sent again.
    pub unsent: Option<Outgoing>,
    /// No response head came by the deadline.
    pub timed_out: bool,
}

/// Sends the request on the connection and reads the response head. The body is the
/// [`BodyReader`]'s to read; an upload the response came before goes on as it is read.
pub async fn exchange(
    connection: Connection,
    outgoing: Outgoing,
    deadline: tokio::time::Instant,
) -> Result<(Response<()>, BodyReader), Failed> {
    let mut inner = connection.inner;
    let replay = outgoing.replay();
    let head_request = outgoing.head_request;
    let mut upload = Some(Upload::new(outgoing));
    let mut upload_failed = None;
    match inner.deadline.as_mut() {
        Some(timer) => timer.as_mut().reset(deadline),
        None => inner.deadline = Some(Box::pin(tokio::time::sleep_until(deadline))),
    }
    let head = poll_fn(|cx| {
        if let Some(sending) = upload.as_mut() {
            match sending.poll(cx, &mut inner.io) {
                Poll::Ready(Ok(())) => upload = None,
                Poll::Ready(Err(UploadError::Wire(error))) => {
                    upload = None;
                    upload_failed = Some(error);
                }
                // The endpoint waits for a body that will not come whole: no answer to wait for.
                Poll::Ready(Err(UploadError::Body(error))) => return Poll::Ready(Err(NoHead::Body(error))),
                Poll::Pending => {}
            }
        }
        if let Poll::Ready(head) = inner.poll_head(cx) {
            return Poll::Ready(head.map_err(NoHead::Wire));
        }
        let late = inner.deadline.as_mut().is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if late {
            return Poll::Ready(Err(NoHead::Late));
        }
        Poll::Pending
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(NoHead::Body(error)) => return Err(Failed { error, unsent: None, timed_out: false }),
        Err(NoHead::Late) => {
            let error = io::Error::new(io::ErrorKind::TimedOut, "no response head in time");
            return Err(Failed { error, unsent: None, timed_out: true });
        }
        Err(NoHead::Wire(error)) => {
            // The endpoint may have answered a request it would not take whole, then closed;
            // without an answer, what broke the upload is the story. A connection closed or
            // reset before any byte came back is one the endpoint let go of as it was reused.
            let closed = matches!(
                error.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            );
            let nothing_came = closed && inner.read.is_empty();
            let error = upload_failed.filter(|_| nothing_came).unwrap_or(error);
            return Err(Failed { error, unsent: replay.filter(|_| nothing_came), timed_out: false });
        }
    };
    let (response, mut reader) = head.into_response(head_request)?;
    reader.keep_alive &= upload_failed.is_none();
    let reader = BodyReader { inner: Some(inner), upload: upload.map(Box::new), ..reader };
    Ok((response, reader))
}

/// Why an exchange ended without a response head.
enum NoHead {
    /// The request body broke off: the endpoint waits for a body that will not come whole.
    Body(io::Error),
    /// The connection failed, or the head was not HTTP.
    Wire(io::Error),
    /// The deadline passed.
    Late,
}

impl From<io::Error> for Failed {
    fn from(error: io::Error) -> Failed {
        Failed { error, unsent: None, timed_out: false }
    }
}

/// A response head as read, before it is checked.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Said,
}

/// What a response head says of its framing and its connection, gathered as it is parsed (a
/// lookup by name afterwards costs a hash each).
#[derive(Default)]
struct Said {
    /// `Content-Length`, once every value has agreed; `Err` when one did not, or was no number.
    content_length: Option<Result<u64, ()>>,
    /// `Transfer-Encoding`: whether its last coding is `chunked`.
    transfer_encoding: Option<bool>,
    close: bool,
    keep_alive: bool,
}

impl Said {
    fn field(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::CONTENT_LENGTH {
            for item in value.split(|&b| b == b',') {
                let n = std::str::from_utf8(item).ok().and_then(|t| t.trim().parse::<u64>().ok()).ok_or(());
                self.content_length = Some(match (self.content_length, n) {
                    (None, n) => n,
                    (Some(Ok(a)), Ok(b)) if a == b => Ok(a),
                    _ => Err(()),
                });
            }
        } else if name == header::TRANSFER_ENCODING {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
}

impl Inner {
    /// Reads until a final response head is whole (informational ones are skipped).
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Head>> {
        loop {
            if !self.read.is_empty() {
                if let Some(head) = parse_head(&mut self.read)? {
                    return Poll::Ready(Ok(head));
                }
                if self.read.len() >= MAX_HEAD {
                    return Poll::Ready(Err(invalid_data("the response head is larger than 256 KiB")));
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                let what = if self.read.is_empty() { "before a response" } else { "in the response head" };
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the endpoint closed the connection {what}"),
                )));
            }
        }
    }

    /// Reads what the socket has into the buffer; 0 when the endpoint closed its side.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_ROOM {
            self.read.reserve(READ_GROWTH);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// The first complete final response head in `read`, taken out of it; `None` while partial.
fn parse_head(read: &mut BytesMut) -> io::Result<Option<Head>> {
    loop {
        let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            read,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(invalid_data(format!("the response head has more than {MAX_HEADERS} fields")))
            }
            Err(error) => return Err(invalid_data(format!("invalid response head: {error}"))),
        };
        let code = response.code.unwrap_or_default();
        if (100..200).contains(&code) && code != 101 {
            // `100 Continue` and other informational heads: the final one follows.
            let _ = read.split_to(length);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| invalid_data("invalid response status"))?;
        let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        // Each field's name, and where its value lies in the head, so the value can share the
        // head's bytes instead of being copied.
        let base = read.as_ptr() as usize;
        let mut fields_at = Vec::with_capacity(response.headers.len());
        let mut framing = Said::default();
        for field in response.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| invalid_data("invalid header name in the response"))?;
            framing.field(&name, field.value);
            let at = field.value.as_ptr() as usize - base;
            fields_at.push((name, at..at + field.value.len()));
        }
        let head = read.split_to(length).freeze();
        // Room for a field or two added on the way back, without a rehash of the map.
        let mut headers = HeaderMap::with_capacity(fields_at.len() + 2);
        for (name, range) in fields_at {
            let value = HeaderValue::from_maybe_shared(head.slice(range))
                .map_err(|_| invalid_data("invalid header value in the response"))?;
            headers.append(name, value);
        }
        return Ok(Some(Head { status, version, headers, framing }));
    }
}

impl Head {
    /// The response, and how to read its body (RFC 9112 §6.3).
    fn into_response(self, head_request: bool) -> io::Result<(Response<()>, BodyReader)> {
        let Head { status, version, mut headers, framing } = self;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(invalid_data("the endpoint switched protocols though no upgrade was asked for"));
        }
        let mut keep_alive = match version {
            Version::HTTP_10 => framing.keep_alive,
            _ => !framing.close,
        };
        let decoder = if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Decoder::Length(0)
        } else if let Some(chunked) = framing.transfer_encoding {
            // A length beside a coding is a message smuggling could hide in: the connection is
            // not used again, and the length does not travel on (RFC 9112 §6.3).
            if framing.content_length.is_some() {
                keep_alive = false;
                headers.remove(header::CONTENT_LENGTH);
            }
            if chunked {
                Decoder::Chunked(Chunk::Size)
            } else {
                keep_alive = false;
                Decoder::UntilClose
            }
        } else if let Some(length) = framing.content_length {
            Decoder::Length(length.map_err(|()| invalid_data("invalid content-length in the response"))?)
        } else {
            keep_alive = false;
            Decoder::UntilClose
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        Ok((response, BodyReader { inner: None, decoder, upload: None, keep_alive }))
    }
}

/// The request going out: its head, then its body as the body yields it.
struct Upload {
    /// What is left to write of the request head (kept out of the queue, which a request
    /// without a body then never allocates).
    head: Bytes,
    /// Encoded body bytes waiting for the socket after the head, in order.
    queue: VecDeque<Bytes>,
    queued: usize,
    /// `None` once the body has ended (its end is in the queue).
    body: Option<ProxyBody>,
    framing: Framing,
    trailers: Option<HeaderMap>,
}

/// Why an upload stopped.
enum UploadError {
    /// The request body failed, or did not match its length: the request cannot go on.
    Body(io::Error),
    /// The connection would not take it: the endpoint may have answered and closed.
    Wire(io::Error),
}

impl Upload {
    fn new(outgoing: Outgoing) -> Upload {
        Upload {
            queued: outgoing.head.len(),
            head: outgoing.head,
            queue: VecDeque::new(),
            body: outgoing.body,
            framing: outgoing.framing,
            trailers: None,
        }
    }

    /// Writes what there is; ready once the whole request is on the wire.
    fn poll(&mut self, cx: &mut Context<'_>, io: &mut UpstreamStream) -> Poll<Result<(), UploadError>> {
        loop {
            // What the body has at hand goes out with what is queued (the head, first time).
            while self.queued < GATHER {
                let Some(body) = self.body.as_mut() else { break };
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(frame))) => {
                        let at_end = body.is_end_stream();
                        self.push(frame).map_err(UploadError::Body)?;
                        if at_end {
                            self.end().map_err(UploadError::Body)?;
                        }
                    }
                    Poll::Ready(None) => self.end().map_err(UploadError::Body)?,
                    Poll::Ready(Some(Err(error))) => {
                        let error = io::Error::other(format!("the request body broke off: {error}"));
                        return Poll::Ready(Err(UploadError::Body(error)));
                    }
                }
            }
            if self.queued == 0 {
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(UploadError::Wire)?;
                return if self.body.is_none() { Poll::Ready(Ok(())) } else { Poll::Pending };
            }
            let mut slices = [IoSlice::new(&[]); 8];
            let pieces = std::iter::once(&self.head).filter(|head| !head.is_empty()).chain(self.queue.iter());
            let mut count = 0;
            for (slice, bytes) in slices.iter_mut().zip(pieces) {
                *slice = IoSlice::new(bytes);
                count += 1;
            }
            let mut written =
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count])).map_err(UploadError::Wire)?;
            if written == 0 {
                return Poll::Ready(Err(UploadError::Wire(io::ErrorKind::WriteZero.into())));
            }
            self.queued -= written;
            let from_head = written.min(self.head.len());
            let _ = self.head.split_to(from_head);
            written -= from_head;
            while written > 0 {
                let front = self.queue.front_mut().expect("written bytes were queued");
                if written < front.len() {
                    let _ = front.split_to(written);
                    break;
                }
                written -= front.len();
                self.queue.pop_front();
            }
        }
    }

    fn push(&mut self, frame: Frame<Bytes>) -> io::Result<()> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers go in a chunked body's last chunk; a body with a length has no room.
                if let Ok(trailers) = frame.into_trailers() {
                    self.trailers = Some(trailers);
                }
                return Ok(());
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(left) => {
                if data.len() as u64 > *left {
                    return Err(invalid_input("the request body is longer than its content-length"));
                }
                *left -= data.len() as u64;
                self.queue_bytes(data);
            }
            Framing::Chunked => {
                let mut size = Vec::with_capacity(18);
                put_hex(&mut size, data.len());
                size.extend_from_slice(CRLF);
                self.queue_bytes(Bytes::from(size));
                self.queue_bytes(data);
                self.queue_bytes(Bytes::from_static(CRLF));
            }
        }
        Ok(())
    }

    fn end(&mut self) -> io::Result<()> {
        self.body = None;
        match self.framing {
            Framing::Length(0) => Ok(()),
            Framing::Length(_) => Err(invalid_input("the request body ended before its content-length")),
            Framing::Chunked => {
                let mut last = b"0\r\n".to_vec();
                if let Some(trailers) = self.trailers.take() {
                    put_fields(&mut last, &trailers);
                }
                last.extend_from_slice(CRLF);
                self.queue_bytes(Bytes::from(last));
                Ok(())
            }
        }
    }

    fn queue_bytes(&mut self, bytes: Bytes) {
        self.queued += bytes.len();
        self.queue.push_back(bytes);
    }
}

/// The response body, read off the connection.
pub struct BodyReader {
    /// `None` once given back ([`BodyReader::finish`]).
    inner: Option<Box<Inner>>,
    decoder: Decoder,
    /// The rest of a request the response came before.
    upload: Option<Box<Upload>>,
    /// Whether the connection may carry another exchange once this one is over.
    keep_alive: bool,
}

enum Decoder {
    /// So many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// To the connection's end (no length, no chunks).
    UntilClose,
    Done,
}

enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk: so many bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers(Box<HeaderMap>),
}

/// What a step of a chunked body gave.
enum Decoded {
    Data(Bytes),
    End(HeaderMap),
}

/// What becomes of the connection once its response has been read to the end.
pub enum Afterwards {
    /// It may carry the next exchange.
    Idle(Connection),
    /// It may once the rest of the request is written (the endpoint answered before that).
    AfterUpload(Pin<Box<dyn std::future::Future<Output = Option<Connection>> + Send>>),
    Closed,
}

impl BodyReader {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        if let Some(upload) = self.upload.as_mut() {
            match upload.poll(cx, &mut inner.io) {
                Poll::Pending => {}
                Poll::Ready(result) => {
                    self.upload = None;
                    self.keep_alive &= result.is_ok();
                }
            }
        }
        loop {
            match &mut self.decoder {
                Decoder::Done | Decoder::Length(0) => return Poll::Ready(None),
                Decoder::Length(left) => {
                    if !inner.read.is_empty() {
                        let take = (*left).min(inner.read.len() as u64);
                        *left -= take;
                        return Poll::Ready(Some(Ok(Frame::data(inner.read.split_to(take as usize).freeze()))));
                    }
                }
                Decoder::UntilClose => {
                    if !inner.read.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(inner.read.split().freeze()))));
                    }
                }
                Decoder::Chunked(chunk) => match decode_chunk(chunk, &mut inner.read) {
                    Err(error) => return Poll::Ready(Some(Err(error))),
                    Ok(Some(Decoded::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Decoded::End(trailers))) => {
                        self.decoder = Decoder::Done;
                        return Poll::Ready((!trailers.is_empty()).then(|| Ok(Frame::trailers(trailers))));
                    }
                    Ok(None) => {}
                },
            }
            if ready!(inner.poll_fill(cx))? == 0 {
                if let Decoder::UntilClose = self.decoder {
                    self.decoder = Decoder::Done;
                    self.keep_alive = false;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the endpoint closed the connection before the response body's end",
                ))));
            }
        }
    }

    /// Whether the body has been read to its end.
    pub fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Done | Decoder::Length(0))
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(left) => SizeHint::with_exact(left),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// The connection, once the body has been read to its end (taken once).
    pub fn finish(&mut self) -> Afterwards {
        let Some(inner) = self.inner.take() else { return Afterwards::Closed };
        // Bytes past the response were not asked for: the connection is out of step.
        if !self.keep_alive || !self.is_end_stream() || !inner.read.is_empty() {
            return Afterwards::Closed;
        }
        match self.upload.take() {
            None => Afterwards::Idle(Connection { inner }),
            Some(mut upload) => Afterwards::AfterUpload(Box::pin(async move {
                let mut inner = inner;
                poll_fn(|cx| upload.poll(cx, &mut inner.io)).await.ok().map(|()| Connection { inner })
            })),
        }
    }
}

/// One step through a chunked body; `None` when `read` needs more bytes.
fn decode_chunk(chunk: &mut Chunk, read: &mut BytesMut) -> io::Result<Option<Decoded>> {
    loop {
        match chunk {
            Chunk::Size => {
                let Some(line) = take_line(read)? else { return Ok(None) };
                // The size, in hex, then perhaps `;extensions`, which weft does not use.
                let digits = line[..].split(|&b| b == b';').next().unwrap_or_default();
                let digits = std::str::from_utf8(digits).map_err(|_| invalid_data("invalid chunk size"))?;
                let size = u64::from_str_radix(digits.trim(), 16).map_err(|_| invalid_data("invalid chunk size"))?;
                *chunk = if size == 0 { Chunk::Trailers(Box::default()) } else { Chunk::Data(size) };
            }
            Chunk::Data(left) => {
                if read.is_empty() {
                    return Ok(None);
                }
                let take = (*left).min(read.len() as u64);
                *left -= take;
                let data = read.split_to(take as usize).freeze();
                if *left == 0 {
                    *chunk = Chunk::DataEnd;
                }
                return Ok(Some(Decoded::Data(data)));
            }
            Chunk::DataEnd => {
                if read.len() < 2 {
                    return Ok(None);
                }
                if &read[..2] != CRLF {
                    return Err(invalid_data("a chunk's data runs past its size"));
                }
                let _ = read.split_to(2);
                *chunk = Chunk::Size;
            }
            Chunk::Trailers(trailers) => {
                let Some(line) = take_line(read)? else { return Ok(None) };
                if line.is_empty() {
                    return Ok(Some(Decoded::End(std::mem::take(&mut **trailers))));
                }
                if trailers.len() >= MAX_HEADERS {
                    return Err(invalid_data("too many trailer fields in the response"));
                }
                let colon =
                    line.iter().position(|&b| b == b':').ok_or_else(|| invalid_data("invalid trailer field"))?;
                let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| invalid_data("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
                    .map_err(|_| invalid_data("invalid trailer value"))?;
                trailers.append(name, value);
            }
        }
    }
}

/// The next CRLF-ended line of `read`, without its CRLF, taken out of it.
fn take_line(read: &mut BytesMut) -> io::Result<Option<BytesMut>> {
    match read.windows(2).position(|pair| pair == CRLF) {
        Some(end) => {
            let mut line = read.split_to(end + 2);
            line.truncate(end);
            Ok(Some(line))
        }
        None if read.len() > MAX_LINE => Err(invalid_data("a line of the chunked response body is too long")),
        None => Ok(None),
    }
}

fn invalid_data(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn invalid_input(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(wire: &[u8]) -> (Vec<u8>, HeaderMap, BytesMut) {
        let mut read = BytesMut::from(wire);
        let mut chunk = Chunk::Size;
        let mut data = Vec::new();
        loop {
            match decode_chunk(&mut chunk, &mut read).unwrap() {
                Some(Decoded::Data(bytes)) => data.extend_from_slice(&bytes),
                Some(Decoded::End(trailers)) => return (data, trailers, read),
                None => panic!("the chunked body was cut short"),
            }
        }
    }

    #[test]
    fn chunked_bodies_are_read_to_their_last_chunk_and_trailers() {
        let (data, trailers, rest) = decoded(b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\ngrpc-status: 0\r\n\r\nNEXT");
        assert_eq!(data, b"hello, world");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(&rest[..], b"NEXT", "the bytes after the body are left for the next response");
        let (data, trailers, _) = decoded(b"A\r\n0123456789\r\n0\r\n\r\n");
        assert_eq!(data, b"0123456789", "hex sizes");
        assert!(trailers.is_empty());
    }

    #[test]
    fn a_chunked_body_arriving_a_byte_at_a_time_reads_the_same() {
        let wire = b"3\r\nabc\r\n0\r\n\r\n";
        let mut read = BytesMut::new();
        let mut chunk = Chunk::Size;
        let mut data = Vec::new();
        for &byte in wire {
            read.extend_from_slice(&[byte]);
            while let Some(step) = decode_chunk(&mut chunk, &mut read).unwrap() {
                match step {
                    Decoded::Data(bytes) => data.extend_from_slice(&bytes),
                    Decoded::End(_) => assert_eq!(data, b"abc"),
                }
            }
        }
        assert_eq!(data, b"abc");
    }

    #[test]
    fn broken_chunks_are_refused() {
        let mut chunk = Chunk::Size;
        assert!(decode_chunk(&mut chunk, &mut BytesMut::from(&b"zz\r\n"[..])).is_err(), "not hex");
        let mut chunk = Chunk::Size;
        let mut read = BytesMut::from(&b"2\r\nabc\r\n"[..]);
        assert!(matches!(decode_chunk(&mut chunk, &mut read), Ok(Some(Decoded::Data(_)))));
        assert!(decode_chunk(&mut chunk, &mut read).is_err(), "data longer than its size");
    }

    fn head(wire: &[u8]) -> io::Result<Option<Head>> {
        parse_head(&mut BytesMut::from(wire))
    }

    #[test]
    fn informational_heads_are_skipped_and_partial_ones_wait() {
        let mut read =
            BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..]);
        let parsed = parse_head(&mut read).unwrap().unwrap();
        assert_eq!(parsed.status, StatusCode::OK);
        assert_eq!(parsed.headers["content-length"], "2");
        assert_eq!(&read[..], b"ok", "the body stays in the buffer");
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none());
        assert!(head(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
    }

    fn framing(wire: &[u8], head_request: bool) -> io::Result<(Decoder, bool)> {
        let (_, reader) = head(wire)?.unwrap().into_response(head_request)?;
        Ok((reader.decoder, reader.keep_alive))
    }

    #[test]
    fn response_bodies_are_framed_as_http_1_1_says() {
        let (decoder, keep) = framing(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", false).unwrap();
        assert!(matches!(decoder, Decoder::Length(12)) && keep);
        let (decoder, _) = framing(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", true).unwrap();
        assert!(matches!(decoder, Decoder::Length(0)), "a HEAD response has no body");
        let (decoder, _) = framing(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 12\r\n\r\n", false).unwrap();
        assert!(matches!(decoder, Decoder::Length(0)));
        let (decoder, keep) = framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", false).unwrap();
        assert!(matches!(decoder, Decoder::Chunked(_)) && keep);
        let (decoder, keep) = framing(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert!(matches!(decoder, Decoder::UntilClose) && !keep, "no length: read to the close");
        let (_, keep) = framing(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", false).unwrap();
        assert!(!keep);
        let (_, keep) = framing(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false).unwrap();
        assert!(!keep, "HTTP/1.0 closes unless it says keep-alive");
        let (_, keep) =
            framing(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n", false).unwrap();
        assert!(keep);
        let (_, keep) =
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", false).unwrap();
        assert!(!keep, "length and chunks together: not used again");
        let (response, _) = head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap()
            .into_response(false)
            .unwrap();
        assert!(!response.headers().contains_key("content-length"), "the length does not travel on beside chunks");
        assert!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n", false).is_err());
        assert!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false).is_err());
        assert!(framing(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
    }

    fn encoded(request: Request<ProxyBody>) -> (String, Framing) {
        let outgoing = Outgoing::new(request).unwrap();
        (String::from_utf8(outgoing.head.to_vec()).unwrap(), outgoing.framing)
    }

    #[test]
    fn request_heads_say_how_their_body_is_framed() {
        let (head, framing) = encoded(Request::get("/a?b=1").header("host", "shop").body(ProxyBody::empty()).unwrap());
        assert_eq!(head, "GET /a?b=1 HTTP/1.1\r\nhost: shop\r\n\r\n");
        assert_eq!(framing, Framing::Length(0));
        let (head, _) = encoded(Request::post("/").body(ProxyBody::empty()).unwrap());
        assert_eq!(head, "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n", "an empty POST says so");
        let (head, framing) = encoded(Request::put("/").body(ProxyBody::full("four")).unwrap());
        assert_eq!(head, "PUT / HTTP/1.1\r\ncontent-length: 4\r\n\r\n");
        assert_eq!(framing, Framing::Length(4));
        let (head, framing) =
            encoded(Request::post("/").header("content-length", "4").body(ProxyBody::full("four")).unwrap());
        assert_eq!(head, "POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\n", "the length given is kept, not repeated");
        assert_eq!(framing, Framing::Length(4));
        assert!(
            Outgoing::new(Request::post("/").header("content-length", "x").body(ProxyBody::empty()).unwrap()).is_err()
        );
        // A buffer of nothing (a retried request's) is no body: no length field, and may go again.
        let nothing = Outgoing::new(Request::get("/").body(ProxyBody::full(Bytes::new())).unwrap()).unwrap();
        assert_eq!(&nothing.head[..], b"GET / HTTP/1.1\r\n\r\n");
        assert!(nothing.body.is_none() && nothing.replayable);
        let missing = Request::post("/").header("content-length", "5").body(ProxyBody::empty()).unwrap();
        assert!(Outgoing::new(missing).is_err(), "a length the body cannot fill is refused before it is sent");
    }
}

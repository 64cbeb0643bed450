//! weft's own HTTP/1.1 server side, for the exchanges most traffic is made of: a request with no
//! body, or a small one that came whole with its head, over a keep-alive connection, answered
//! with a length or in chunks.
//!
//! hyper's server connection cost about as many instructions per request as all the rest of a
//! proxied request but the kernel's share: its dispatch around the handler, its buffers, a timer
//! armed and dropped per request. Here the connection's task reads the head into one buffer,
//! parses it with `httparse` into a header map whose values share the bytes read, runs the
//! request path, and writes the answer's head with the first of its body in one write.
//!
//! Whatever this path does not serve it hands over, with every byte it has read and not
//! answered, to a hyper session, which serves the connection as it always did (its own 400s and
//! 431s included) until the connection parks: upgrades, `CONNECT`, `HEAD`, `Expect`, HTTP/1.0, a
//! chunked upload or one still on its way, a head it cannot parse or that is larger than hyper's
//! buffer.

use super::connection::{stop_signal, Stopped, PARK_AFTER};
use super::Downstream;
use crate::http::h1_text::{itoa, put_field, put_fields, put_hex, CRLF};
use crate::http::ProxyBody;
use crate::upstream::PeerBody;
use crate::Shared;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Sleep;

/// Header fields a request may have and still be served here; one with more goes to hyper,
/// whose limit is set from the listener's.
const MAX_FIELDS: usize = 128;
/// Fields weft may add to a request before it goes upstream.
const ADDED_FIELDS: usize = 4;
/// What a read asks the socket for, at least.
const READ_ROOM: usize = 1024;
const READ_GROWTH: usize = 4096;
/// Body chunks up to this size are copied after the head (one write); larger ones are written
/// from where they are.
const COPY_UP_TO: usize = 16 * 1024;
/// Encoded bytes held back before they are written, at most.
const WRITE_BATCH: usize = 64 * 1024;

/// How a session of this path ended.
pub(super) enum Ended<IO> {
    /// A request this path does not serve: hyper takes the connection, starting on these bytes
    /// (read and not yet answered).
    HandOver(IO, Bytes),
    /// Idle since `PARK_AFTER`, nothing read: the connection parks.
    Parked(IO),
    /// The connection is done: the client closed it or idled past the header read timeout, the
    /// listener is draining, an answer said to close, or a body broke off.
    Closed(IO),
}

/// What a session needs of its connection.
pub(super) struct Server<'a> {
    pub shared: &'a Arc<Shared>,
    pub conn: &'a Arc<Downstream>,
    pub stopped: &'a mut Stopped,
    pub header_read_timeout: Duration,
    /// hyper's read buffer limit: a head that does not fit goes to hyper, which refuses it.
    pub max_head: usize,
    pub parkable: bool,
}

/// Serves requests on the connection until one is not for this path, it parks or it ends.
pub(super) async fn serve<IO>(mut io: IO, ahead: Bytes, server: Server<'_>) -> Ended<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Server { shared, conn, stopped, header_read_timeout, max_head, parkable } = server;
    let mut read = BytesMut::with_capacity(READ_GROWTH.max(ahead.len()));
    read.extend_from_slice(&ahead);
    let mut write = Vec::new();
    let mut stop = pin!(stop_signal(stopped));
    let mut draining = false;
    // One timer for the session's header read timeout, moved on only when it fires (a timer
    // armed and dropped for each request cost more than the rest of reading it).
    let mut head_limit = pin!(tokio::time::sleep(header_read_timeout));
    // Armed once, at the session's first idle moment, as for hyper's sessions.
    let mut park = pin!(None::<Sleep>);
    loop {
        let mut waiting_since = None;
        let next = poll_fn(|cx| loop {
            if !read.is_empty() {
                match parse(&read) {
                    Parsed::Partial if read.len() < max_head => {}
                    Parsed::Simple(head) => return Poll::Ready(Next::Head(head)),
                    Parsed::Partial | Parsed::Other => return Poll::Ready(Next::HandOver),
                }
            }
            if !draining && stop.as_mut().poll(cx).is_ready() {
                draining = true;
            }
            if draining && read.is_empty() {
                return Poll::Ready(Next::Close);
            }
            match poll_fill(&mut io, &mut read, cx) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Next::Close),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => {}
            }
            let since = *waiting_since.get_or_insert_with(Instant::now);
            let deadline = tokio::time::Instant::from_std(since + header_read_timeout);
            while head_limit.as_mut().poll(cx).is_ready() {
                if tokio::time::Instant::now() >= deadline {
                    return Poll::Ready(Next::Close);
                }
                head_limit.as_mut().reset(deadline);
            }
            if parkable && read.is_empty() {
                if park.is_none() {
                    park.set(Some(tokio::time::sleep(PARK_AFTER)));
                }
                if park.as_mut().as_pin_mut().is_some_and(|timer| timer.poll(cx).is_ready()) {
                    return Poll::Ready(Next::Park);
                }
            }
            return Poll::Pending;
        })
        .await;
        let head = match next {
            Next::Head(head) => head,
            Next::HandOver => return Ended::HandOver(io, read.freeze()),
            Next::Park => return Ended::Parked(io),
            Next::Close => return Ended::Closed(io),
        };

        let close_asked = head.close;
        let bytes = read.split_to(head.length).freeze();
        let request = match head.to_request(&bytes) {
            Some(request) => request.map(|()| PeerBody::whole(read.split_to(head.body_length).freeze())),
            // A target or value `http` refuses though `httparse` took it: hyper answers it.
            None => return Ended::HandOver(io, joined(&bytes, read)),
        };

        let mut handling = pin!(crate::http::handle(shared.clone(), conn.clone(), request));
        let answered = poll_fn(|cx| {
            if let Poll::Ready(result) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(result.unwrap_or_else(|never| match never {})));
            }
            if !draining && stop.as_mut().poll(cx).is_ready() {
                draining = true;
            }
            // A client that closes before its answer ends the exchange, as under hyper (which
            // does not take half-closed connections): only while nothing more is read, so a
            // client sending its next requests early is not read without bound.
            if read.is_empty() {
                if let Poll::Ready(Ok(0) | Err(_)) = poll_fill(&mut io, &mut read, cx) {
                    return Poll::Ready(None);
                }
            }
            Poll::Pending
        })
        .await;
        let Some(response) = answered else { return Ended::Closed(io) };
        let keep_alive = answer(&mut io, &mut read, &mut write, response, close_asked || draining).await;
        if !keep_alive {
            return Ended::Closed(io);
        }
    }
}

enum Next {
    Head(Head),
    HandOver,
    Park,
    Close,
}

/// A request head this path serves: where its parts lie in the bytes read.
struct Head {
    /// The head's length, up to and with its blank line.
    length: usize,
    method: Method,
    target: Range<usize>,
    fields: Vec<(HeaderName, Range<usize>)>,
    /// Its body's length (the body follows it in what was read).
    body_length: usize,
    close: bool,
}

enum Parsed {
    Partial,
    /// For hyper to serve.
    Other,
    Simple(Head),
}

/// The head at the front of `read`, if it is one this path serves.
fn parse(read: &[u8]) -> Parsed {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let length =
        match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, read, &mut fields) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
    if request.version != Some(1) {
        return Parsed::Other;
    }
    let Some(method) = request.method.and_then(|m| Method::from_bytes(m.as_bytes()).ok()) else {
        return Parsed::Other;
    };
    if method == Method::HEAD || method == Method::CONNECT {
        return Parsed::Other;
    }
    let Some(path) = request.path.filter(|path| path.starts_with('/')) else { return Parsed::Other };
    let base = read.as_ptr() as usize;
    let at = |bytes: &[u8]| {
        let start = bytes.as_ptr() as usize - base;
        start..start + bytes.len()
    };
    let mut fields_at = Vec::with_capacity(request.headers.len());
    let (mut body_length, mut close) = (None, false);
    for field in request.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else { return Parsed::Other };
        if name == header::CONTENT_LENGTH {
            match (body_length, content_length(field.value)) {
                (None, Some(length)) => body_length = Some(length),
                _ => return Parsed::Other,
            }
        } else if name == header::TRANSFER_ENCODING || name == header::EXPECT || name == header::UPGRADE {
            return Parsed::Other;
        } else if name == header::CONNECTION {
            for token in field.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Other;
                }
                close |= token.eq_ignore_ascii_case(b"close");
            }
        }
        if !field.value.iter().all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t') {
            return Parsed::Other;
        }
        fields_at.push((name, at(field.value)));
    }
    // A body still on its way is streamed, which hyper does.
    let body_length = body_length.unwrap_or(0);
    if read.len() - length < body_length {
        return Parsed::Other;
    }
    Parsed::Simple(Head { length, method, target: at(path.as_bytes()), fields: fields_at, body_length, close })
}

/// A `Content-Length` value: digits only (a list, a sign or spaces inside go to hyper).
fn content_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, &d| n * 10 + usize::from(d - b'0')))
}

impl Head {
    /// The request, its target and values sharing `bytes` (the head, split off what was read).
    fn to_request(&self, bytes: &Bytes) -> Option<Request<()>> {
        let uri = Uri::from_maybe_shared(bytes.slice(self.target.clone())).ok()?;
        // Room for what weft adds on the way (`x-request-id`, `x-forwarded-*`, `host`): a full map
        // rehashes every field to grow.
        let mut headers = HeaderMap::with_capacity(self.fields.len() + ADDED_FIELDS);
        for (name, range) in &self.fields {
            headers.append(name.clone(), HeaderValue::from_maybe_shared(bytes.slice(range.clone())).ok()?);
        }
        let mut request = Request::new(());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some(request)
    }
}

/// What was read, from the head on, for hyper to start on.
fn joined(head: &Bytes, rest: BytesMut) -> Bytes {
    let mut both = BytesMut::with_capacity(head.len() + rest.len());
    both.extend_from_slice(head);
    both.extend_from_slice(&rest);
    both.freeze()
}

/// Reads what the socket has into `read`; 0 when the client closed its side.
fn poll_fill<IO: AsyncRead + Unpin>(io: &mut IO, read: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < READ_ROOM {
        read.reserve(READ_GROWTH);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, read)
}

/// How an answer's body is framed on the wire.
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    /// No body may follow (1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Writes the answer; whether the connection may carry another request after it.
async fn answer<IO>(
    io: &mut IO,
    read: &mut BytesMut,
    write: &mut Vec<u8>,
    response: Response<ProxyBody>,
    close: bool,
) -> bool
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let close = close || closes(&parts.headers);
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| content_length(v.as_bytes()));
    let framing = if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if let Some(length) = declared {
        Framing::Length(length as u64)
    } else if body.is_end_stream() {
        Framing::Length(0)
    } else {
        body.size_hint().exact().map_or(Framing::Chunked, Framing::Length)
    };

    write.clear();
    write.extend_from_slice(b"HTTP/1.1 ");
    write.extend_from_slice(status.as_str().as_bytes());
    write.push(b' ');
    write.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    write.extend_from_slice(CRLF);
    // Whether the answer says its own `Date` and `Connection`, seen on the way (a lookup by
    // name costs a hash each).
    let (mut dated, mut connection_said) = (false, false);
    for (name, value) in &parts.headers {
        // Framing is this side's to say.
        if name == header::TRANSFER_ENCODING || (name == header::CONTENT_LENGTH && framing == Framing::Chunked) {
            continue;
        }
        dated |= name == header::DATE;
        connection_said |= name == header::CONNECTION;
        put_field(write, name, value);
    }
    match framing {
        Framing::Length(length) if declared.is_none() => {
            write.extend_from_slice(b"content-length: ");
            write.extend_from_slice(itoa(length, &mut [0; 20]));
            write.extend_from_slice(CRLF);
        }
        Framing::Chunked => write.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !dated {
        write.extend_from_slice(b"date: ");
        put_date(write);
        write.extend_from_slice(CRLF);
    }
    if close && !connection_said {
        write.extend_from_slice(b"connection: close\r\n");
    }
    write.extend_from_slice(CRLF);

    let mut body = pin!(body);
    // What a body of a said length has still to send.
    let mut left = match framing {
        Framing::Length(length) => length,
        _ => 0,
    };
    loop {
        // Frames at hand join what is waiting to be written; the write happens when the body
        // has nothing more at once, so a small answer goes out in one write.
        let step = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Pending if !write.is_empty() => Poll::Ready(Step::Flush),
            // A client that leaves while the body waits on its upstream ends the exchange,
            // and with it the upstream's (as under hyper); checked only while nothing more is
            // read, as while the handler runs.
            Poll::Pending if read.is_empty() => match poll_fill(io, read, cx) {
                Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(Step::ClientGone),
                _ => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Step::Frame(frame)),
        })
        .await;
        let frame = match step {
            Step::Flush => {
                if write_out(io, write, &[]).await.is_err() {
                    return false;
                }
                continue;
            }
            Step::ClientGone => return false,
            Step::Frame(frame) => frame,
        };
        match frame {
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        // Trailers end a chunked body; a body of a said length has no room for them.
                        if let (Framing::Chunked, Ok(trailers)) = (framing, frame.into_trailers()) {
                            write.extend_from_slice(b"0\r\n");
                            put_fields(write, &trailers);
                            write.extend_from_slice(CRLF);
                            return write_out(io, write, &[]).await.is_ok() && !close;
                        }
                        continue;
                    }
                };
                if frame.is_empty() || framing == Framing::None {
                    continue;
                }
                if framing == Framing::Chunked {
                    put_hex(write, frame.len());
                    write.extend_from_slice(CRLF);
                } else if let Framing::Length(_) = framing {
                    // More than the length said: the answer cannot be framed; the client sees
                    // the connection end.
                    left = match left.checked_sub(frame.len() as u64) {
                        Some(left) => left,
                        None => return false,
                    };
                }
                if frame.len() <= COPY_UP_TO {
                    write.extend_from_slice(&frame);
                } else if write_out(io, write, &frame).await.is_err() {
                    return false;
                }
                if framing == Framing::Chunked {
                    write.extend_from_slice(CRLF);
                }
                if write.len() >= WRITE_BATCH && write_out(io, write, &[]).await.is_err() {
                    return false;
                }
            }
            // The body broke off: what was not written is not, and the connection ends.
            Some(Err(_)) => return false,
            None => {
                if framing == Framing::Chunked {
                    write.extend_from_slice(b"0\r\n\r\n");
                }
                // A body shorter than its length leaves the client waiting for the rest: the
                // connection ends, which tells it.
                return write_out(io, write, &[]).await.is_ok() && left == 0 && !close;
            }
        }
    }
}

/// What writing an answer waits for next.
enum Step<F> {
    Frame(Option<F>),
    /// The body has nothing more at once: write what is waiting.
    Flush,
    ClientGone,
}

/// Whether an answer's `Connection` says the connection closes after it.
fn closes(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value.as_bytes().split(|&b| b == b',').any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// Writes `write`, then `then`, all of it; `write` is left empty.
async fn write_out<IO: AsyncWrite + Unpin>(io: &mut IO, write: &mut Vec<u8>, then: &[u8]) -> io::Result<()> {
    let (mut first, mut second) = (0, 0);
    while first < write.len() || second < then.len() {
        let slices = [IoSlice::new(&write[first..]), IoSlice::new(&then[second..])];
        let n = io.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_first = n.min(write.len() - first);
        first += from_first;
        second += n - from_first;
    }
    write.clear();
    io.flush().await
}

thread_local! {
    /// The `Date` of the second now, rendered once a second on each worker thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

fn put_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(rendered_at, date)| {
        if *rendered_at != second {
            date.copy_from_slice(&httpdate::fmt_http_date(now).as_bytes()[..29]);
            *rendered_at = second;
        }
        out.extend_from_slice(date);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(wire: &[u8]) -> Head {
        match parse(wire) {
            Parsed::Simple(head) => head,
            Parsed::Partial => panic!("partial: {}", String::from_utf8_lossy(wire)),
            Parsed::Other => panic!("left to hyper: {}", String::from_utf8_lossy(wire)),
        }
    }

    fn left_to_hyper(wire: &[u8]) -> bool {
        matches!(parse(wire), Parsed::Other)
    }

    #[test]
    fn plain_requests_are_served_here_with_their_fields_shared() {
        let wire = b"GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nX-Many: 1\r\nx-many: 2\r\n\r\nGET /next";
        let head = simple(wire);
        assert_eq!(head.length, wire.len() - b"GET /next".len());
        let bytes = Bytes::copy_from_slice(&wire[..head.length]);
        let request = head.to_request(&bytes).unwrap();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/a?b=1");
        assert_eq!(request.headers()["host"], "shop.example");
        assert_eq!(request.headers().get_all("x-many").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(!head.close);
        assert!(simple(b"DELETE /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n").close);
    }

    #[test]
    fn a_body_that_came_whole_is_served_here_and_one_still_coming_is_not() {
        let wire = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let head = simple(wire);
        let bytes = Bytes::copy_from_slice(&wire[..head.length]);
        assert_eq!(head.body_length, 5);
        assert_eq!(head.to_request(&bytes).unwrap().uri(), "/p");
        assert!(left_to_hyper(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nhello"));
        assert!(matches!(parse(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Le"), Parsed::Partial));
    }

    #[test]
    fn what_needs_more_than_a_plain_exchange_goes_to_hyper() {
        for wire in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
            b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
        ] {
            assert!(left_to_hyper(wire), "{}", String::from_utf8_lossy(wire));
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for n in 0..=MAX_FIELDS {
            many.extend_from_slice(format!("x-{n}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(left_to_hyper(&many));
    }

    async fn answered(response: Response<ProxyBody>, close: bool) -> (String, bool) {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let keep_alive = answer(&mut server, &mut BytesMut::new(), &mut Vec::new(), response, close).await;
        drop(server);
        let mut wire = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut wire).await.unwrap();
        (String::from_utf8(wire).unwrap(), keep_alive)
    }

    fn without_date(wire: &str) -> String {
        wire.lines().filter(|line| !line.starts_with("date: ")).collect::<Vec<_>>().join("\n")
    }

    #[tokio::test]
    async fn answers_are_framed_by_their_length_else_in_chunks() {
        let (wire, keep_alive) = answered(Response::new(ProxyBody::full("hello")), false).await;
        assert_eq!(without_date(&wire), "HTTP/1.1 200 OK\ncontent-length: 5\n\nhello");
        assert!(wire.contains("\r\ndate: ") && keep_alive);

        let (wire, keep_alive) = answered(Response::new(ProxyBody::empty()), true).await;
        assert_eq!(without_date(&wire), "HTTP/1.1 200 OK\ncontent-length: 0\nconnection: close\n");
        assert!(!keep_alive, "the client asked to close");

        let mut empty = Response::new(ProxyBody::empty());
        *empty.status_mut() = StatusCode::NO_CONTENT;
        assert_eq!(without_date(&answered(empty, false).await.0), "HTTP/1.1 204 No Content\n");
    }

    #[tokio::test]
    async fn an_answer_that_says_its_own_date_and_connection_gets_no_second() {
        let mut response = Response::new(ProxyBody::full("hi"));
        response.headers_mut().insert(header::DATE, HeaderValue::from_static("Fri, 04 Dec 2026 21:00:00 GMT"));
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        let (wire, keep_alive) = answered(response, true).await;
        assert_eq!(
            wire,
            "HTTP/1.1 200 OK\r\ndate: Fri, 04 Dec 2026 21:00:00 GMT\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi"
        );
        assert!(!keep_alive);
    }

    #[tokio::test]
    async fn an_answer_longer_than_its_length_ends_the_connection() {
        let mut response = Response::new(ProxyBody::full("too long"));
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let (wire, keep_alive) = answered(response, false).await;
        assert!(!keep_alive);
        assert!(!wire.contains("too long"), "{wire}");
    }
}

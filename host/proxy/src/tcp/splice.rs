//! The fast path of a tcp connection without filters or toxics: bytes copied both ways as
//! `tokio::io::copy_bidirectional` does (one buffer per direction, no task, no lock), except
//! that it stops at once when the listener's toxics change, handing back what it read but did
//! not write yet, so the toxic path can take the connection over without losing a byte.

use super::toxics::Watch;
use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const BUFFER: usize = 16 * 1024;

/// One direction's copy state. Lives outside the copying future, so stopping loses nothing.
pub(crate) struct Pipe {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    /// The source said end of stream.
    pub(crate) read_done: bool,
    /// The end was passed on (the destination's write side shut down).
    pub(crate) done: bool,
    need_flush: bool,
    /// Bytes read from the source.
    pub(crate) amount: u64,
}

impl Pipe {
    pub(crate) fn new() -> Pipe {
        Pipe {
            buf: vec![0; BUFFER].into_boxed_slice(),
            pos: 0,
            cap: 0,
            read_done: false,
            done: false,
            need_flush: false,
            amount: 0,
        }
    }

    /// What was read and not written yet.
    pub(crate) fn unwritten(&self) -> Bytes {
        Bytes::copy_from_slice(&self.buf[self.pos..self.cap])
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.cap && !self.read_done {
                self.pos = 0;
                self.cap = 0;
                let mut buf = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.cap = n;
                            self.amount += n as u64;
                        }
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        // Flush while the source is quiet: a TLS writer may hold bytes back.
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(writer.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, "the peer stopped taking data")));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if self.pos == self.cap && self.read_done {
                if self.need_flush {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// How the fast path ended.
pub(crate) enum Spliced {
    /// Both sides closed.
    Closed,
    /// The toxics changed: the toxic path takes over from the pipes' state.
    Changed,
}

/// Copies both ways until both sides have closed, or until `watch` says the toxics changed.
pub(crate) async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    a_to_b: &mut Pipe,
    b_to_a: &mut Pipe,
    watch: &mut Watch,
) -> io::Result<Spliced>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    std::future::poll_fn(|cx| {
        if watch.poll_changed(cx).is_ready() {
            return Poll::Ready(Ok(Spliced::Changed));
        }
        let forward = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let backward = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (forward, backward) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(Spliced::Closed)),
            _ => Poll::Pending,
        }
    })
    .await
}

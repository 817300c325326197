//! The connection an HTTP/1.1 server runs on (a tunnel stream at the agent, a client's TCP or
//! TLS connection at the server), shared by the serve loop (heads in, responses out) and the
//! request body of the exchange in progress, which reads the rest of the request off it as it
//! is polled. While no body reads it, [`watch_for_cancel`] does, to see the peer go away.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::codec::{CodecError, MAX_HEAD};
use super::decode::{ChunkedDecoder, Decoded, LengthDecoder};
use super::Conn;

/// What our server runs on: read in pieces, written, and read as bytes once upgraded.
pub(crate) trait ServerIo: Conn + AsyncRead {}

impl<T: Conn + AsyncRead> ServerIo for T {}

/// The connection and what was received on it and not yet used: shared by the serve loop
/// (heads in, responses out) and the request body of the exchange in progress.
pub(super) struct ServerConn<S: ?Sized> {
    pub(super) pending: Bytes,
    /// The request body in progress: `None` when it ended cleanly (or there was none).
    pub(super) body: Option<BodyDecoder>,
    /// The request body failed or was left unread: the stream cannot carry another request.
    pub(super) spoiled: bool,
    /// [`watch_for_cancel`], parked while a request body reads the stream.
    pub(super) watcher: Option<Waker>,
    /// What is left to write of a `100 Continue` the body sends when first read.
    pub(super) continue_unsent: &'static [u8],
    /// Last: the one unsized field of a [`Shared`].
    pub(super) stream: S,
}

impl<S: ?Sized> ServerConn<S> {
    /// The request body is done with the stream (ended, failed or dropped).
    fn body_done(&mut self, clean: bool) {
        if self.body.take().is_some() && !clean {
            self.spoiled = true;
        }
        if let Some(watcher) = self.watcher.take() {
            watcher.wake();
        }
    }
}

pub(super) enum BodyDecoder {
    Length(LengthDecoder),
    Chunked(ChunkedDecoder),
}

/// One connection, whatever it runs on.
pub(super) type Shared = Arc<Mutex<ServerConn<dyn ServerIo>>>;

pub(super) fn lock(conn: &Shared) -> MutexGuard<'_, ServerConn<dyn ServerIo>> {
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The connection as a byte stream after a 101: what was received after the head first.
pub(super) struct Upgraded(pub(super) Shared);

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut conn = lock(&self.0);
        if !conn.pending.is_empty() {
            let len = conn.pending.len().min(buf.remaining());
            buf.put_slice(&conn.pending[..len]);
            conn.pending.advance(len);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut conn.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut lock(&self.0).stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).stream).poll_shutdown(cx)
    }
}

/// Why a request body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("reading the request body: {0}")]
    Stream(io::Error),
    #[error("the connection ended inside the request body")]
    Truncated,
}

/// A request's body, read off the connection as it is polled.
pub(crate) struct RequestBody {
    /// `None`: no body.
    pub(super) conn: Option<Shared>,
    pub(super) remaining: Option<u64>,
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let Some(shared) = self.conn.clone() else {
            return Poll::Ready(None);
        };
        let mut guard = lock(&shared);
        let conn = &mut *guard;
        if !conn.continue_unsent.is_empty() {
            if let Err(error) = std::task::ready!(send_continue(conn, cx)) {
                conn.body_done(false);
                return Poll::Ready(Some(Err(RequestBodyError::Stream(error))));
            }
        }
        loop {
            let decoded = match &mut conn.body {
                None => Ok(Decoded::End),
                Some(BodyDecoder::Length(decoder)) => Ok(decoder.decode(&mut conn.pending)),
                Some(BodyDecoder::Chunked(decoder)) => decoder.decode(&mut conn.pending),
            };
            let decoded = match decoded {
                Ok(decoded) => decoded,
                Err(error) => {
                    conn.body_done(false);
                    return Poll::Ready(Some(Err(error.into())));
                }
            };
            match decoded {
                Decoded::Data(data) if data.is_empty() => continue,
                Decoded::Data(data) => {
                    let ended =
                        matches!(&conn.body, Some(BodyDecoder::Length(d)) if d.remaining() == 0);
                    if ended {
                        conn.body_done(true);
                    }
                    drop(guard);
                    if ended {
                        // Done with the stream: a body kept past its exchange must not touch
                        // the next request's.
                        self.conn = None;
                    }
                    if let Some(remaining) = &mut self.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoded::End => {
                    conn.body_done(true);
                    drop(guard);
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Decoded::NeedMore => {}
            }
            let piece = conn.stream.body_piece();
            let Poll::Ready(received) = conn.stream.poll_recv(cx, piece) else {
                super::detach(&mut conn.pending);
                return Poll::Pending;
            };
            match received {
                Ok(Some(chunk)) => conn.pending = chunk,
                Ok(None) => {
                    conn.body_done(false);
                    return Poll::Ready(Some(Err(RequestBodyError::Truncated)));
                }
                Err(error) => {
                    conn.body_done(false);
                    return Poll::Ready(Some(Err(RequestBodyError::Stream(error))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, self.remaining) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Some(remaining)) => SizeHint::with_exact(remaining),
            (Some(_), None) => SizeHint::default(),
        }
    }
}

/// Writes what is left of the `100 Continue` and flushes it.
fn send_continue(
    conn: &mut ServerConn<dyn ServerIo>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !conn.continue_unsent.is_empty() {
        let written =
            std::task::ready!(Pin::new(&mut conn.stream).poll_write(cx, conn.continue_unsent))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        conn.continue_unsent = &conn.continue_unsent[written..];
    }
    Pin::new(&mut conn.stream).poll_flush(cx)
}

impl Drop for RequestBody {
    /// Dropped before its end (the upstream answered without reading it all): the stream
    /// cannot carry another request, and [`watch_for_cancel`] may read it now.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            lock(&conn).body_done(false);
        }
    }
}

/// Ends when the peer resets or ends the stream while its request is served (hyper's server
/// does the same: an end of the request side cancels the exchange). It reads only once the
/// request body is done with the stream; bytes it reads (a pipelined next request) are kept
/// for the next head — or dropped if the body was left unread. More than a head's worth sent
/// ahead of our answer ends the exchange too: no client we serve does that.
pub(super) async fn watch_for_cancel(conn: &Shared) {
    poll_fn(|cx| {
        let mut guard = lock(conn);
        let conn = &mut *guard;
        loop {
            if conn.pending.len() >= MAX_HEAD {
                // More than a head's worth sent ahead of our answer: not a client we serve.
                return Poll::Ready(());
            }
            if conn.body.is_some() {
                conn.watcher = Some(cx.waker().clone());
                return Poll::Pending;
            }
            match std::task::ready!(conn.stream.poll_recv(cx, MAX_HEAD)) {
                Ok(Some(piece)) if conn.spoiled => drop(piece),
                Ok(Some(piece)) if conn.pending.is_empty() => conn.pending = piece,
                Ok(Some(piece)) => {
                    let mut joined = BytesMut::from(std::mem::take(&mut conn.pending));
                    joined.extend_from_slice(&piece);
                    conn.pending = joined.freeze();
                }
                Ok(None) | Err(_) => return Poll::Ready(()),
            }
        }
    })
    .await
}

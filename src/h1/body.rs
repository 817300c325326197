//! A response body read off a connection: data frames are slices of the pieces it received, no
//! buffer is held between them (an idle watch holds the connection and the decoder's few
//! bytes), and the connection is handed back for reuse only after a clean end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::codec::{BodyFraming, CodecError};
use super::decode::{ChunkedDecoder, Decoded, LengthDecoder};
use super::Conn;

/// Why a response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The peer framed it wrongly.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// The connection failed or ended early.
    #[error("reading the response body: {0}")]
    Stream(std::io::Error),
    #[error("the connection ended inside the response body")]
    Truncated,
}

enum Decoder {
    Empty,
    Length(LengthDecoder),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// Called with the connection when the body ended cleanly and it may carry another request.
pub(crate) type Reuse<C> = Box<dyn FnOnce(C) + Send + Sync>;

/// The response body of one exchange.
pub(crate) struct ResponseBody<C> {
    conn: Option<C>,
    /// Received and not yet decoded (a slice of the last chunk).
    pending: Bytes,
    decoder: Decoder,
    finished: bool,
    reuse: Option<Reuse<C>>,
}

impl<C: Conn> ResponseBody<C> {
    /// `pending`: bytes that followed the head in its last chunk. `reuse` is dropped (not
    /// called) when the framing cannot tell the body's end (the stream's end is the end).
    pub(crate) fn new(
        conn: C,
        pending: Bytes,
        framing: BodyFraming,
        reuse: Option<Reuse<C>>,
    ) -> Self {
        let decoder = match framing {
            BodyFraming::Empty => Decoder::Empty,
            BodyFraming::Length(len) => Decoder::Length(LengthDecoder::new(len)),
            BodyFraming::Chunked => Decoder::Chunked(ChunkedDecoder::default()),
            BodyFraming::UntilClose => Decoder::UntilClose,
        };
        let reuse = reuse.filter(|_| framing != BodyFraming::UntilClose);
        let mut body = Self {
            conn: Some(conn),
            pending,
            decoder,
            finished: false,
            reuse,
        };
        if matches!(body.decoder, Decoder::Empty) || matches!(framing, BodyFraming::Length(0)) {
            body.finish();
        }
        body
    }

    /// The body ended cleanly: the stream goes back if it may (nothing after the body).
    fn finish(&mut self) {
        self.finished = true;
        if let (Some(reuse), Some(conn)) = (self.reuse.take(), self.conn.take()) {
            if self.pending.is_empty() {
                reuse(conn);
            }
        }
    }
}

impl<C: Conn> hyper::body::Body for ResponseBody<C> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            let decoded = match &mut this.decoder {
                Decoder::Empty => Decoded::End,
                Decoder::Length(decoder) => decoder.decode(&mut this.pending),
                Decoder::Chunked(decoder) => match decoder.decode(&mut this.pending) {
                    Ok(decoded) => decoded,
                    Err(error) => return Poll::Ready(Some(Err(error.into()))),
                },
                Decoder::UntilClose if this.pending.is_empty() => Decoded::NeedMore,
                Decoder::UntilClose => Decoded::Data(std::mem::take(&mut this.pending)),
            };
            match decoded {
                Decoded::Data(data) if data.is_empty() => continue,
                Decoded::Data(data) => {
                    // hyper stops polling a body once its length is reached: a body whose
                    // length is complete has ended, and its stream goes back now.
                    if matches!(&this.decoder, Decoder::Length(d) if d.remaining() == 0) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoded::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Decoded::NeedMore => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let piece = conn.body_piece();
            let Poll::Ready(received) = conn.poll_recv(cx, piece) else {
                super::detach(&mut this.pending);
                return Poll::Pending;
            };
            match received {
                Ok(Some(chunk)) => this.pending = chunk,
                Ok(None) if matches!(this.decoder, Decoder::UntilClose) => {
                    this.finished = true;
                    return Poll::Ready(None);
                }
                Ok(None) => return Poll::Ready(Some(Err(BodyError::Truncated))),
                Err(error) => return Poll::Ready(Some(Err(BodyError::Stream(error)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        match &self.decoder {
            Decoder::Empty => SizeHint::with_exact(0),
            Decoder::Length(decoder) => SizeHint::with_exact(decoder.remaining()),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    use tokio::io::AsyncWrite;

    use super::*;

    /// A connection that hands out `pieces` and then waits forever.
    struct Scripted(Vec<Bytes>);

    impl AsyncWrite for Scripted {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Conn for Scripted {
        fn poll_recv(&mut self, _: &mut Context<'_>, _: usize) -> Poll<io::Result<Option<Bytes>>> {
            match self.0.pop() {
                Some(piece) => Poll::Ready(Ok(Some(piece))),
                None => Poll::Pending,
            }
        }
    }

    /// A body whose pieces are its data (a download read in bursts) hands each one on whole
    /// and held by nothing else: the agent's WebSocket writer masks such a payload where it is
    /// instead of copying it first (S1). Only the piece that ends past the body is cut.
    #[tokio::test]
    async fn a_length_body_hands_its_pieces_on_alone() {
        let pieces = [vec![1u8; 64 * 1024], vec![2u8; 64 * 1024], vec![3u8; 100]];
        let mut body = ResponseBody::new(
            Scripted(pieces.iter().rev().cloned().map(Bytes::from).collect()),
            Bytes::new(),
            BodyFraming::Length(2 * 64 * 1024 + 10),
            None,
        );
        for expected in [&pieces[0][..], &pieces[1][..]] {
            let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(&data[..], expected);
            assert!(data.is_unique(), "a whole piece was handed on shared");
        }
        let tail = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&tail[..], &[3u8; 10][..]);
        assert!(body.frame().await.is_none());
    }

    /// A watch event cut out of a large read (as the tunnel's reader cuts them) is not what an
    /// idle watch holds: once the body waits, the large buffer is free (S9).
    #[tokio::test]
    async fn a_waiting_body_holds_no_slice_of_what_it_read() {
        let mut read = vec![0u8; 64 * 1024];
        let event = b"5\r\nhello\r\n";
        read[..event.len()].copy_from_slice(event);
        let read = Bytes::from(read);
        let piece = read.slice(..event.len());
        let mut body = ResponseBody::new(
            Scripted(vec![piece]),
            Bytes::new(),
            BodyFraming::Chunked,
            None,
        );
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"hello");
        drop(first);
        // The body now waits for the next event.
        let waiting =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        assert!(waiting.is_pending());
        assert!(
            read.try_into_mut().is_ok(),
            "the waiting body still holds the 64 KiB read"
        );
    }
}

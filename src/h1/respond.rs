//! Writing a response on a connection `h1::serve` serves: the head, then the body in its
//! framing, held to its `Content-Length`; small pieces that are ready together are gathered into
//! one write; what the body has ready is written and flushed before it waits, so a waiting
//! watch holds no buffer and no event waits for the next.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use http_body_util::BodyExt;
use hyper::body::Body as _;

use super::codec::encode_chunk;
use super::request_body::{lock, Shared};
use super::server_codec::ResponseFraming;
use crate::http::Body;
use crate::protocol::Payload;

/// Writes `head` and then `body` in `framing`. The head waits for the body's first piece when
/// that is ready at once, so a small response leaves in one write (one frame on the tunnel).
/// A body that does not match its `Content-Length` is an error: the peer would read the next
/// response as its rest.
pub(super) async fn write_body(
    conn: &Shared,
    mut head: Vec<u8>,
    mut body: Body,
    framing: ResponseFraming,
) -> io::Result<()> {
    if framing == ResponseFraming::NoBody {
        return flush(conn, &mut head).await;
    }
    let mut out = std::mem::take(&mut head);
    let chunked = framing == ResponseFraming::Chunked;
    let mut unsent = match framing {
        ResponseFraming::Length(len) => Some(len),
        _ => None,
    };
    loop {
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    flush(conn, &mut out).await?;
                }
                body.frame().await
            }
        };
        match frame {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not relayed
                };
                if data.is_empty() {
                    continue;
                }
                if let Some(left) = &mut unsent {
                    let Some(rest) = left.checked_sub(data.len() as u64) else {
                        // What was gathered still goes before the cut, as below.
                        let _ = flush(conn, &mut out).await;
                        return Err(io::Error::other("response body over its Content-Length"));
                    };
                    *left = rest;
                }
                // Pieces that are ready together leave together (flushed when the body waits,
                // above), at most one frame's worth at a time: an upstream's small chunks, or
                // an HTTP/2 upstream's DATA frames (8-16 KiB), were a tunnel frame each.
                let encoded = if chunked {
                    chunk_len(&data)
                } else {
                    data.len()
                };
                if !out.is_empty() && out.len() + encoded > GATHERED_UP_TO {
                    flush(conn, &mut out).await?;
                }
                // A large piece (a whole read of a plain upstream) goes as it is: a tunnel
                // stream takes it without a copy. Gathering small ones (HTTP/2 DATA frames, a
                // TLS upstream's 16 KiB records) copies them once (a shared one was copied
                // anyway, by the tunnel's writer before masking) and saves a frame and a turn
                // of the writer per piece: "An HTTP/2 upstream" in docs/benchmarks.md.
                if out.is_empty() && !chunked && encoded >= GATHERED_UP_TO {
                    send_all(conn, data).await?;
                    continue;
                }
                // A lone piece (a watch's event) in a buffer of its size; gathered ones grow
                // it by doubling, not by a reallocation per piece.
                if out.is_empty() {
                    out.reserve_exact(encoded);
                } else {
                    out.reserve(encoded);
                }
                if chunked {
                    encode_chunk(&data, &mut out);
                } else {
                    out.extend_from_slice(&data);
                }
                if out.len() >= GATHERED_UP_TO {
                    flush(conn, &mut out).await?;
                }
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "response body failed; the tunnel stream is dropped");
                // What came before the failure still goes (the peer sees it, then the cut),
                // as it did when each chunk was written as it came.
                let _ = flush(conn, &mut out).await;
                return Err(io::Error::other(error));
            }
            None => {
                if unsent.is_some_and(|unsent| unsent > 0) {
                    let _ = flush(conn, &mut out).await;
                    return Err(io::Error::other("response body under its Content-Length"));
                }
                if chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                return flush(conn, &mut out).await;
            }
        }
    }
}

/// Ready pieces (encoded chunks, or a `Content-Length` body's pieces) are gathered up to this
/// many bytes (one Data frame at the default `max_frame_payload`); a body piece of that size or
/// more is written as it is (a chunk that large is still copied, to encode it).
const GATHERED_UP_TO: usize = 64 * 1024;

/// Bytes `data` takes as an encoded chunk: its size line, itself and its CRLF.
fn chunk_len(data: &[u8]) -> usize {
    let hex_digits = (usize::BITS - data.len().leading_zeros())
        .div_ceil(4)
        .max(1) as usize;
    hex_digits + 2 + data.len() + 2
}

/// Writes `out` and frees it: a watch waiting for its next event holds no buffer. The buffer
/// itself is handed on (a tunnel stream takes it as it is, and the agent's WebSocket writer
/// masks it there); written as a slice, it was copied again.
async fn flush(conn: &Shared, out: &mut Vec<u8>) -> io::Result<()> {
    send_all(conn, bytes::Bytes::from(std::mem::take(out))).await
}

/// Writes all of `data` (a tunnel stream takes it without a copy) and flushes it.
async fn send_all(conn: &Shared, data: bytes::Bytes) -> io::Result<()> {
    let mut data = Payload::owned_if_alone(data);
    while !data.is_empty() {
        poll_fn(|cx| lock(conn).stream.poll_send(cx, &mut data)).await?;
    }
    poll_fn(|cx| Pin::new(&mut lock(conn).stream).poll_flush(cx)).await
}

/// Writes `buf` and flushes it: a TLS connection may otherwise keep the tail of a response in
/// its buffer while the loop waits for the next request (as hyper flushes every message).
pub(super) async fn write_all(conn: &Shared, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let written = poll_fn(|cx| Pin::new(&mut lock(conn).stream).poll_write(cx, buf)).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[written..];
    }
    poll_fn(|cx| Pin::new(&mut lock(conn).stream).poll_flush(cx)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_len_is_the_encoded_length() {
        for len in [1, 9, 15, 16, 255, 256, 4095, 4096, 65_535, 65_536, 1 << 20] {
            let mut out = Vec::new();
            encode_chunk(&vec![0; len], &mut out);
            assert_eq!(chunk_len(&vec![0; len]), out.len(), "{len}");
        }
    }
}

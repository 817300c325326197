//! A byte-stream connection (TCP, TLS) read in pieces: the [`Conn`] our HTTP/1.1 client and
//! server run on outside the tunnel.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Conn;

/// Most bytes a [`Pieces`] reads at once while its peer is not sending in bulk (the stack
/// buffer it reads into).
pub(super) const PIECE: usize = 16 * 1024;

/// Most bytes a [`Pieces`] reads at once during a burst, and a body asks it for, unless it was
/// made with another ([`Pieces::with_burst_piece`]).
pub(crate) const BURST_PIECE: usize = 64 * 1024;

/// [`BURST_PIECE`] for a plain TCP socket, whose reads cost a system call each: a download
/// through the agent from a plain-HTTP upstream took 0.73 CPU s per GiB in S1 at 64 KiB a
/// read, 0.62 at 256 KiB (1 MiB saved more CPU but no more rate, and a read that long delays
/// every other stream's next step; docs/benchmarks.md). Not for TLS: a TLS stream hands out
/// at most one record's plaintext (16 KiB) per read, so a larger room buys nothing and its
/// allocation cost the agent CPU (0.65 → 0.73 s per GiB at 256 KiB).
///
/// A read of a `Content-Length` (or until-close) body becomes four 64 KiB Data frames cut
/// from one buffer, each held by its frame alone (`Payload::Owned`), so the agent's WebSocket
/// writer still masks them where they are (a chunked body's data is cut out of the read
/// between chunk headers, shared, and copied once, into the chunks our server gathers and
/// hands on). What it costs: a download
/// waiting for tunnel credit holds up to one read past its stream's window, 256 KiB
/// instead of 64.
pub(crate) const TCP_BURST_PIECE: usize = 256 * 1024;

/// A byte-stream connection (TCP, TLS) read in pieces, so nothing is held while the peer is
/// silent: a read goes into a buffer on the stack of the poll and is copied out. While the
/// peer sends in bulk (the last read filled the stack buffer), reads go straight into the
/// buffer the piece is handed out in instead: a download is not copied again here (S1).
pub(crate) struct Pieces<T> {
    io: T,
    burst: bool,
    /// Most bytes read at once during a burst.
    burst_piece: usize,
}

impl<T> Pieces<T> {
    pub(crate) fn new(io: T) -> Self {
        Self::with_burst_piece(io, BURST_PIECE)
    }

    /// Reads at most `burst_piece` bytes at once during a burst (at least [`PIECE`]).
    pub(crate) fn with_burst_piece(io: T, burst_piece: usize) -> Self {
        Self {
            io,
            burst: false,
            burst_piece: burst_piece.max(PIECE),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for Pieces<T> {
    fn poll_recv(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        if self.burst {
            let room = max.clamp(1, self.burst_piece);
            let mut piece = Vec::with_capacity(room);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut piece);
            // Pending: quiet again, and the buffer is dropped with the burst.
            self.burst = matches!(read, Poll::Ready(Ok(filled)) if filled >= room);
            return read.map_ok(|filled| match filled {
                0 => None,
                // The burst's tail: its own small buffer, or the few bytes would hold the whole
                // read buffer wherever they are kept (a queue counts their length, a body its
                // leftover).
                filled if filled < PIECE => Some(Bytes::copy_from_slice(&piece)),
                _ => {
                    // A short read gives back the room it did not use (the allocator shrinks
                    // the block where it is, no copy), for the same reason.
                    piece.shrink_to_fit();
                    Some(Bytes::from(piece))
                }
            });
        }
        // Uninitialised: zeroing 16 KiB on every poll (most find nothing to read) cost the
        // server 2.5% of its time in S2.
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); PIECE];
        let mut buf = ReadBuf::uninit(&mut scratch[..max.clamp(1, PIECE)]);
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        self.burst = buf.filled().len() == PIECE;
        Poll::Ready(Ok(
            (!buf.filled().is_empty()).then(|| Bytes::copy_from_slice(buf.filled()))
        ))
    }

    fn body_piece(&self) -> usize {
        self.burst_piece
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Pieces<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Pieces<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "pieces_tests.rs"]
mod tests;

//! A read buffer under the WebSocket layer that exists only while data streams in.
//!
//! tungstenite zero-fills its whole read buffer before every read, so a 128 KiB buffer (its
//! default) made every idle tunnel cost 128 KiB of resident memory on the server: 1.3 GB for
//! 10,000 agents (S7 in docs/benchmarks.md). With a small WebSocket read buffer, though, a bulk
//! transfer would take a system call per few KiB. So the WebSocket layer reads small pieces
//! from this adapter, which reads the socket directly while traffic is light and switches to
//! one large read-ahead buffer when a read fills what was asked (more is waiting); it frees
//! that buffer as soon as the socket has nothing more (the burst is over), or when a read-ahead
//! brings back only a little and all of it is handed on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The read-ahead buffer of a connection in a burst.
pub const READ_AHEAD: usize = 64 * 1024;

/// A read-ahead that returns less than this ends the burst and frees the buffer.
const BURST_OVER: usize = READ_AHEAD / 4;

/// Only a full read of at least this much starts a burst: the WebSocket layer sometimes asks
/// for a few bytes (the rest of a header), and filling those says nothing about what waits.
const BURST_SIGN: usize = 512;

/// A connection with a read-ahead buffer that comes and goes with bursts.
pub struct Readahead<S> {
    io: S,
    /// Allocated only during a burst; `start..end` is unread.
    buffer: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl<S> Readahead<S> {
    /// Wraps `io`; no buffer until the first burst.
    pub fn new(io: S) -> Self {
        Self {
            io,
            buffer: None,
            start: 0,
            end: 0,
        }
    }

    /// Bytes of read-ahead memory held now (0 between bursts).
    pub fn held(&self) -> usize {
        self.buffer.as_ref().map_or(0, |buffer| buffer.len())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Readahead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.start < this.end {
            let buffer = this
                .buffer
                .as_ref()
                .expect("unread bytes live in the buffer");
            let n = out.remaining().min(this.end - this.start);
            out.put_slice(&buffer[this.start..this.start + n]);
            this.start += n;
            return Poll::Ready(Ok(()));
        }
        let wanted = out.remaining();
        let Some(buffer) = this.buffer.as_mut() else {
            // Light traffic: straight into the caller's buffer.
            let before = out.filled().len();
            std::task::ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
            if wanted >= BURST_SIGN && out.filled().len() - before == wanted {
                this.buffer = Some(vec![0; READ_AHEAD].into_boxed_slice());
            }
            return Poll::Ready(Ok(()));
        };
        let mut ahead = ReadBuf::new(buffer);
        if Pin::new(&mut this.io)
            .poll_read(cx, &mut ahead)?
            .is_pending()
        {
            // Drained: an idle connection holds no read-ahead.
            this.buffer = None;
            return Poll::Pending;
        }
        let got = ahead.filled().len();
        let n = out.remaining().min(got);
        out.put_slice(&ahead.filled()[..n]);
        (this.start, this.end) = (n, got);
        if got < BURST_OVER && n == got {
            this.buffer = None;
            (this.start, this.end) = (0, 0);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Readahead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_burst_is_read_ahead_and_the_buffer_goes_when_it_ends() {
        let (mut writer, reader) = tokio::io::duplex(1024 * 1024);
        let mut reader = Readahead::new(reader);
        let mut piece = [0u8; 4096];

        // A read that gets less than it asked for is light traffic: no buffer.
        writer.write_all(b"settings").await.unwrap();
        let n = reader.read(&mut piece).await.unwrap();
        assert_eq!(&piece[..n], b"settings");
        assert_eq!(reader.held(), 0, "nothing is read ahead before a full read");

        let sent = pattern(512 * 1024);
        writer.write_all(&sent).await.unwrap();
        // Small reads, as the WebSocket layer makes them: the first fills what it asked for,
        // so the next ones come from a read-ahead.
        let mut got = Vec::new();
        let mut piece = [0u8; 4096];
        while got.len() < sent.len() {
            let n = reader.read(&mut piece).await.unwrap();
            got.extend_from_slice(&piece[..n]);
            assert_eq!(
                reader.held(),
                READ_AHEAD,
                "in a burst after {} bytes",
                got.len()
            );
        }
        assert_eq!(got, sent, "every byte, in order");

        // Nothing more waiting: the burst is over.
        use futures_util::FutureExt;
        assert!(
            reader.read(&mut piece).now_or_never().is_none(),
            "nothing to read"
        );
        assert_eq!(reader.held(), 0, "an idle connection holds no read-ahead");

        // A full read of a few bytes (the rest of a header) is no sign of a burst.
        writer.write_all(b"0123456789").await.unwrap();
        let mut header_rest = [0u8; 10];
        reader.read_exact(&mut header_rest).await.unwrap();
        assert_eq!(reader.held(), 0);
    }

    #[tokio::test]
    async fn eof_and_writes_pass_through() {
        let (mut outside, inside) = tokio::io::duplex(64);
        let mut inside = Readahead::new(inside);
        inside.write_all(b"hello").await.unwrap();
        let mut five = [0u8; 5];
        outside.read_exact(&mut five).await.unwrap();
        assert_eq!(&five, b"hello");
        outside.write_all(b"bye").await.unwrap();
        drop(outside);
        let mut rest = Vec::new();
        inside.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
    }
}

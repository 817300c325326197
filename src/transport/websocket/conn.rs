//! A WebSocket connection after its upgrade, carrying tunnel frames: one binary message is one
//! frame. Our own framing (not tungstenite's) so a frame's bytes are touched as little as the
//! protocol allows: reads land straight in the buffer a large message is split from (no
//! read-ahead copy, no zero-fill; a small one is copied out, so it holds only itself), and
//! writes go through [`Writer`](super::writer::Writer): a server's frames leave by `writev`
//! behind their header, a client masks a payload it alone holds in place. A message comes as a
//! head and a body ([`Message`]): a Data frame's payload is never copied only to sit behind its
//! 5-byte header.
//!
//! Pings are answered, a Close is echoed and ends the stream, text messages are skipped, and a
//! message or frame over [`MAX_MESSAGE`] fails the connection before any of it is buffered.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{apply_mask, parse_header, Header, OpCode, MAX_HEADER};
use super::writer::Writer;
use crate::protocol::{Message, MAX_MESSAGE};

/// A read while no burst is under way goes to a stack buffer this big, so an idle connection
/// holds no read buffer at all (S7: thousands of idle tunnels).
const IDLE_READ: usize = 1024;

/// A read during a burst (the last read filled all it was given) asks for at least this much.
const READ_AHEAD: usize = 64 * 1024;

/// A received message at least this big is split out of the buffer it was read into (no
/// copy); a smaller one is copied out. A slice keeps its whole buffer alive (up to
/// [`READ_AHEAD`] and more) for as long as it is queued: a peer interleaving small messages
/// for streams nobody reads would otherwise hold many times what the budgets count (each
/// stream's queue and the session's buffer count payload bytes). At half the read-ahead a
/// queued message holds at most about three times its size (more only right after a message
/// larger than the read-ahead grew the buffer to fit it), and bulk Data (64 KiB frames) is
/// still not copied.
const SPLIT_MIN: usize = READ_AHEAD / 2;

/// Queued bytes at which `poll_ready` writes before it accepts another message.
const QUEUE_HIGH: usize = 512 * 1024;

/// Which end of the WebSocket we are: a client masks what it sends, a server requires masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Client,
    Server,
}

/// A WebSocket carrying tunnel frames.
pub struct WebSocketTransport<S> {
    io: S,
    role: Role,
    read: Reader,
    write: Writer,
}

#[derive(Default)]
struct Reader {
    buf: BytesMut,
    /// The last read filled all it was given: more is probably waiting.
    burst: bool,
    /// The opcode and payload so far of a message that arrives in fragments.
    fragments: Option<(OpCode, BytesMut)>,
    /// The peer's Close arrived or the connection failed: no more messages.
    done: bool,
}

impl<S> WebSocketTransport<S> {
    /// Wraps an upgraded connection; `read_already` are bytes read past the upgrade's head.
    pub(super) fn new(io: S, role: Role, read_already: BytesMut) -> Self {
        Self {
            io,
            role,
            read: Reader {
                buf: read_already,
                ..Reader::default()
            },
            write: Writer::new(role),
        }
    }
}

fn protocol_error(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Wakes the reading task and the last writing one.
struct BothWakers(Waker, Option<Waker>);

impl Wake for BothWakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wake_by_ref();
        if let Some(writer) = &self.1 {
            writer.wake_by_ref();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketTransport<S> {
    /// Queues a control frame the reader owes the peer and tries to write it at once; if the
    /// connection is not writable, the next write (or this reader's next wake) sends it.
    fn answer(&mut self, cx: &mut Context<'_>, opcode: OpCode, payload: Bytes) -> io::Result<()> {
        if self.write.close_queued {
            return Ok(());
        }
        self.write.close_queued = opcode == OpCode::Close;
        self.write.push(self.role, opcode, &[], payload.into());
        let both = Waker::from(Arc::new(BothWakers(
            cx.waker().clone(),
            self.write.writer_waker.clone(),
        )));
        match self
            .write
            .poll_write_out(&mut self.io, &mut Context::from_waker(&both))
        {
            Poll::Ready(result) => result,
            Poll::Pending => Ok(()),
        }
    }

    /// Reads more into the buffer: `want` bytes complete what is being parsed.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<()>> {
        let read = &mut self.read;
        if read.buf.is_empty() && !read.burst && want <= IDLE_READ {
            let mut stack = [0u8; IDLE_READ];
            let mut small = ReadBuf::new(&mut stack);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut small))?;
            if small.filled().is_empty() {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            read.burst = small.filled().len() == IDLE_READ;
            read.buf.extend_from_slice(small.filled());
            return Poll::Ready(Ok(()));
        }
        let ask = if read.burst {
            want.max(READ_AHEAD)
        } else {
            want
        };
        read.buf.reserve(ask);
        let room = read.buf.capacity() - read.buf.len();
        let filled = match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut read.buf)
        {
            Poll::Pending => {
                if read.buf.is_empty() {
                    // Quiet again: wait without holding the read-ahead.
                    read.buf = BytesMut::new();
                    read.burst = false;
                }
                return Poll::Pending;
            }
            Poll::Ready(filled) => filled?,
        };
        if filled == 0 {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        read.burst = filled == room;
        Poll::Ready(Ok(()))
    }

    /// The next frame from the buffer, reading until one is whole.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Header, BytesMut)>> {
        loop {
            let want = match parse_header(&self.read.buf)
                .map_err(|error| protocol_error(error.to_string()))?
            {
                Some((header, at)) => {
                    if header.len > MAX_MESSAGE as u64 {
                        return Poll::Ready(Err(protocol_error(format!(
                            "WebSocket frame of {} bytes, over the {MAX_MESSAGE}-byte limit",
                            header.len
                        ))));
                    }
                    let whole = at + header.len as usize;
                    if self.read.buf.len() >= whole {
                        self.read.buf.advance(at);
                        let len = header.len as usize;
                        let mut payload = if len < SPLIT_MIN {
                            let own = BytesMut::from(&self.read.buf[..len]);
                            self.read.buf.advance(len);
                            own
                        } else {
                            self.read.buf.split_to(len)
                        };
                        match (self.role, header.mask) {
                            (Role::Server, None) => {
                                return Poll::Ready(Err(protocol_error(
                                    "unmasked WebSocket frame from a client",
                                )))
                            }
                            (Role::Client, Some(_)) => {
                                return Poll::Ready(Err(protocol_error(
                                    "masked WebSocket frame from a server",
                                )))
                            }
                            (_, Some(mask)) => apply_mask(&mut payload, mask),
                            (_, None) => {}
                        }
                        if self.read.buf.is_empty() && !self.read.burst {
                            self.read.buf = BytesMut::new();
                        }
                        return Poll::Ready(Ok((header, payload)));
                    }
                    whole - self.read.buf.len()
                }
                None => MAX_HEADER - self.read.buf.len().min(MAX_HEADER - 1),
            };
            ready!(self.poll_fill(cx, want))?;
        }
    }

    /// The next whole binary message, answering control frames on the way.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            let (header, payload) = ready!(self.poll_frame(cx))?;
            let message = match header.opcode {
                OpCode::Ping => {
                    self.answer(cx, OpCode::Pong, payload.freeze())?;
                    continue;
                }
                OpCode::Pong => continue,
                OpCode::Close => {
                    // Echo the status code (§5.5.1); the stream ends here.
                    let code = payload.freeze().slice(..2.min(header.len as usize));
                    self.read.done = true;
                    self.answer(cx, OpCode::Close, code)?;
                    return Poll::Ready(Ok(None));
                }
                OpCode::Continuation => {
                    let Some((_, so_far)) = &mut self.read.fragments else {
                        return Poll::Ready(Err(protocol_error(
                            "WebSocket continuation frame without a message to continue",
                        )));
                    };
                    if so_far.len() + payload.len() > MAX_MESSAGE {
                        return Poll::Ready(Err(protocol_error(format!(
                            "WebSocket message over the {MAX_MESSAGE}-byte limit"
                        ))));
                    }
                    so_far.extend_from_slice(&payload);
                    if !header.fin {
                        continue;
                    }
                    self.read.fragments.take().expect("checked above")
                }
                opcode @ (OpCode::Text | OpCode::Binary) => {
                    if self.read.fragments.is_some() {
                        return Poll::Ready(Err(protocol_error(
                            "WebSocket message started inside a fragmented one",
                        )));
                    }
                    if !header.fin {
                        self.read.fragments = Some((opcode, payload));
                        continue;
                    }
                    (opcode, payload)
                }
            };
            match message {
                (OpCode::Binary, payload) => return Poll::Ready(Ok(Some(payload.freeze()))),
                (_, text) => {
                    // The Go reader would decode a text message as a frame; no peer sends one.
                    // Skipping it (and saying so) keeps a confused client from injecting frames.
                    tracing::warn!(
                        len = text.len(),
                        "ignoring a text WebSocket message on the tunnel"
                    );
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocketTransport<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.read.done {
            return Poll::Ready(None);
        }
        match ready!(self.poll_message(cx)) {
            Ok(Some(message)) => Poll::Ready(Some(Ok(message))),
            Ok(None) => Poll::Ready(None),
            Err(error) => {
                self.read.done = true;
                Poll::Ready(Some(Err(error)))
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocketTransport<S> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write.queued >= QUEUE_HIGH {
            return self.poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> io::Result<()> {
        if self.write.close_queued {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "WebSocket already closed",
            ));
        }
        let role = self.role;
        let (head, head_len, body) = message.into_parts();
        self.write
            .push(role, OpCode::Binary, &head[..head_len], body);
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.write.writer_waker = Some(cx.waker().clone());
        this.write.poll_write_out(&mut this.io, cx)
    }

    /// Sends a WebSocket Close (the Go peer closes TCP without one; we do better).
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write.close_queued {
            self.write.close_queued = true;
            let role = self.role;
            // 1000: normal closure.
            self.write
                .push(role, OpCode::Close, &[0x03, 0xE8], Bytes::new().into());
        }
        self.poll_flush(cx)
    }
}

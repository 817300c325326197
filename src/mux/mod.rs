//! Many byte streams over one frame transport.
//!
//! The server opens streams ([`SessionHandle::open`]); the agent accepts them
//! ([`Incoming::accept`]). Each stream is an `AsyncRead + AsyncWrite` ([`MuxStream`]).
//!
//! Rules, per version:
//! - **v1** (a Go peer): no credits and no half-close. A received stream buffers at most
//!   [`Limits::v1_stream_buffer`] bytes; past that (or past the session/process budget) the stream
//!   is reset: the local reader gets an error and the peer a Close (an Error after Connected
//!   would panic a Go peer). The server never sends Data before Connected.
//! - **v2**: per-stream credits: a peer can never make us buffer more than
//!   [`Limits::stream_window`] per stream, and each stream's window is reserved against the session
//!   and process budgets when it opens. Data may follow an open at once. Fin ends one direction
//!   (a clean EOF); Reset aborts both (an error, never EOF).
//!
//! In both, the frame reader never waits on a stream or on a write: control frames (Pong,
//! window updates, resets) go to a bounded queue served before data, every write batch has a
//! deadline, and the heartbeat runs on its own timer. A dead session is an error on every stream
//! that had not already ended, never a clean EOF.

mod budget;
mod driver;
mod error;
mod heartbeat;
mod ids;
mod inbound;
mod incoming;
pub mod negotiate;
mod queue;
mod session;
mod state;
mod stream;
mod window;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::time::Duration;

pub use budget::MemoryBudget;
pub use error::{MuxError, SessionEnd, StreamError};
pub use incoming::{Incoming, IncomingStream};
pub use session::{Session, SessionConfig, SessionHandle, SessionStats};
pub use stream::MuxStream;

use bytes::Bytes;
use futures_util::{Sink, Stream};

use crate::protocol::Message;

/// Which end of the tunnel this session is. Only the server opens streams (seed-protocol.md §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens streams, allocates ids from 1.
    Server,
    /// Accepts streams.
    Agent,
}

/// A message transport: one item or sink element is one whole frame (a WebSocket binary
/// message); frames leave as [`Message`]s, a Data frame's payload apart from its header. `transport::websocket` implements it for real; [`testing`] in memory.
pub trait Transport:
    Stream<Item = Result<Bytes, std::io::Error>>
    + Sink<Message, Error = std::io::Error>
    + Send
    + Unpin
    + 'static
{
}

impl<T> Transport for T where
    T: Stream<Item = Result<Bytes, std::io::Error>>
        + Sink<Message, Error = std::io::Error>
        + Send
        + Unpin
        + 'static
{
}

/// Every bound a peer can push against, with its default. Validated by [`Limits::validate`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent streams per session (opened or accepted). Default 1024 (the Go agent's cap).
    pub max_streams: usize,
    /// v2: bytes a peer may send on one stream before we grant more; reserved per stream
    /// against the session and process budgets. Default 64 KiB (HTTP/2's default too), so
    /// `max_streams` windows fit the session budget exactly. (Windows sized for a WAN's
    /// bandwidth × delay need growth on demand; until then this bounds a stream at
    /// window / RTT.)
    pub stream_window: u32,
    /// v2: the largest a stream's window grows to when its reader keeps up (sized for
    /// bandwidth × delay: 64 MiB fills 5 Gbit/s over 100 ms; 16 MiB held a 50 ms path to a
    /// quarter of what it carried, S10 in docs/benchmarks.md). Growth comes from the session
    /// budget's headroom above `max_streams × stream_window`, and the process budget caps the
    /// sum. Default 64 MiB.
    pub max_stream_window: u32,
    /// v1: bytes buffered for one stream before it is reset (v1 has no credits). Default 8 MiB.
    pub v1_stream_buffer: usize,
    /// Receive-buffer bytes one session may hold or reserve. Default 256 MiB: 64 MiB for the
    /// initial windows of `max_streams` streams, the rest for windows that grew (three streams
    /// at `max_stream_window`; with 128 MiB one grown stream left the others none). Reserved,
    /// not allocated: bytes are held only while a reader lags, and the process budget caps the
    /// sum over all sessions.
    pub session_buffer: usize,
    /// Bytes of outgoing Data queued per session before writers wait. Default 1 MiB. A stream
    /// with nothing queued may still queue one frame up to twice this, so a busy stream that
    /// keeps the queue full cannot lock the others out.
    pub send_queue: usize,
    /// Largest Data payload we send in one frame. Default 64 KiB (the Go peers accept 16 MiB).
    pub max_frame_payload: usize,
    /// Time an open may go unanswered (v1: Connected/Error; v2: Connected/Reset). Default 30 s.
    pub open_timeout: Duration,
    /// Time one batch of writes to the transport may take before the session is dropped.
    /// Default 30 s.
    pub write_timeout: Duration,
    /// How often we ping. Default 10 s (the Go peer wants ≤ 15 s).
    pub heartbeat_interval: Duration,
    /// Silence (no Pong) after which the peer is dropped. Default 30 s.
    pub heartbeat_timeout: Duration,
    /// Time to wait for the peer's first message during negotiation. Default 10 s.
    pub negotiate_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams: 1024,
            stream_window: 64 * 1024,
            max_stream_window: 64 * 1024 * 1024,
            v1_stream_buffer: 8 * 1024 * 1024,
            session_buffer: 256 * 1024 * 1024,
            send_queue: 1024 * 1024,
            max_frame_payload: 64 * 1024,
            open_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            negotiate_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Checks the relations between limits; the message names the offending keys.
    pub fn validate(&self) -> Result<(), String> {
        let max_payload = crate::protocol::MAX_MESSAGE - crate::protocol::HEADER_LEN;
        if self.max_frame_payload == 0 || self.max_frame_payload > max_payload {
            return Err(format!("max_frame_payload must be 1..={max_payload}"));
        }
        if self.stream_window == 0 || self.stream_window as usize > self.session_buffer {
            return Err("stream_window must be > 0 and ≤ session_buffer".into());
        }
        if self.max_stream_window < self.stream_window
            || self.max_stream_window as usize > self.session_buffer
        {
            return Err("max_stream_window must be ≥ stream_window and ≤ session_buffer".into());
        }
        if self.v1_stream_buffer == 0 || self.v1_stream_buffer > self.session_buffer {
            return Err("v1_stream_buffer must be > 0 and ≤ session_buffer".into());
        }
        if self.max_streams == 0 || self.send_queue == 0 {
            return Err("max_streams and send_queue must be > 0".into());
        }
        let all_windows = self.max_streams.saturating_mul(self.stream_window as usize);
        if all_windows > self.session_buffer {
            return Err(format!(
                "max_streams × stream_window ({all_windows} bytes) exceeds session_buffer ({} bytes): \
                 streams would be refused for memory before max_streams is reached",
                self.session_buffer
            ));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout < self.heartbeat_interval {
            return Err("heartbeat_interval must be > 0 and ≤ heartbeat_timeout".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

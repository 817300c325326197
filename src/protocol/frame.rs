//! One tunnel frame per WebSocket binary message: `[type u8][stream id u32 BE][payload]`.
//!
//! Types 0x01–0x07 are the Go implementation's v1 frames, byte for byte (seed-protocol.md §1.2).
//! Types 0x10–0x15 exist only in v2 and are sent only to a peer that negotiated v2. Pure
//! encode/decode: no I/O, no state.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::settings::Settings;

/// A stream (the Go code's "conn") id. Allocated by the server only; 0 is the session itself.
pub type StreamId = u32;

/// Bytes before the payload: type (1) + stream id (4).
pub const HEADER_LEN: usize = 5;

/// The largest message either end may send or accept, header included. The Go peers close the
/// whole session (WebSocket 1009) past this, so we never send more and refuse more.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Why a v2 stream was aborted. Carried in [`Frame::Reset`]; unknown codes survive a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetReason {
    /// The sender no longer wants the stream (its handle was dropped, its client went away).
    Cancelled,
    /// The receiver will not serve this open: unknown target name, not allowed.
    Refused,
    /// The sender is at its stream or memory limit.
    Busy,
    /// The peer sent more than its credit allowed.
    FlowControl,
    /// The agent could not reach the target behind it.
    UpstreamFailed,
    /// The open was not answered within the opener's deadline.
    OpenTimeout,
    /// A frame broke the protocol's rules for this stream.
    Protocol,
    /// The sender is shutting down and its drain grace ran out.
    GoingAway,
    /// A code this build does not know (a newer peer).
    Other(u8),
}

impl ResetReason {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Self::Cancelled => 1,
            Self::Refused => 2,
            Self::Busy => 3,
            Self::FlowControl => 4,
            Self::UpstreamFailed => 5,
            Self::OpenTimeout => 6,
            Self::Protocol => 7,
            Self::GoingAway => 8,
            Self::Other(code) => code,
        }
    }

    /// The reason for a wire code; codes this build does not know become [`Self::Other`].
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Cancelled,
            2 => Self::Refused,
            3 => Self::Busy,
            4 => Self::FlowControl,
            5 => Self::UpstreamFailed,
            6 => Self::OpenTimeout,
            7 => Self::Protocol,
            8 => Self::GoingAway,
            other => Self::Other(other),
        }
    }

    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Refused => "refused",
            Self::Busy => "busy",
            Self::FlowControl => "flow_control",
            Self::UpstreamFailed => "upstream_failed",
            Self::OpenTimeout => "open_timeout",
            Self::Protocol => "protocol",
            Self::GoingAway => "going_away",
            Self::Other(_) => "other",
        }
    }
}

/// One decoded tunnel message. Each variant's doc names its sender and the versions it exists in.
// Field names (`id`, `payload`, `target`…) are the wire layout; each variant's doc explains them.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// 0x01, server → agent, v1+v2: open stream `id` to `target` (v1: the cluster's `host:port`;
    /// v2: a target name the agent has configured). In v2 Data may follow at once.
    Connect { id: StreamId, target: Bytes },
    /// 0x02, agent → server, v1+v2: the open succeeded. Never sent twice for one id.
    Connected { id: StreamId },
    /// 0x03, both, v1+v2: stream bytes.
    Data { id: StreamId, payload: Bytes },
    /// 0x04, agent → server, v1 only: the open failed, with UTF-8 text. Never after Connected.
    Error { id: StreamId, message: Bytes },
    /// 0x05, both, v1 only: "I am gone" (no half-close in v1).
    Close { id: StreamId },
    /// 0x06, both, v1+v2, id 0: heartbeat; answered with a Pong echoing the payload.
    Ping { payload: Bytes },
    /// 0x07, both, v1+v2, id 0: heartbeat answer.
    Pong { payload: Bytes },
    /// 0x10, both, v2, id 0: the agent's first message (it selects v2) and the server's answer.
    Settings(Settings),
    /// 0x11, both, v2: the receiver of stream `id` may send `increment` more bytes.
    WindowUpdate { id: StreamId, increment: u32 },
    /// 0x12, both, v2: the sender will send no more Data on `id` (half-close, a clean end).
    Fin { id: StreamId },
    /// 0x13, both, v2: abort `id` in both directions; the other end sees an error, never EOF.
    Reset {
        id: StreamId,
        reason: ResetReason,
        message: Bytes,
    },
    /// 0x14, both, v2, id 0: the sender is shutting down; open no new streams to it.
    Drain { grace_ms: u32 },
    /// 0x15, server → agent, v2, id 0: every stream id ≤ `up_to` the server still holds; the
    /// agent drops any other it holds and resets listed ids it no longer knows.
    LiveIds { up_to: StreamId, ids: Vec<StreamId> },
}

/// Why a message is not a frame. Each has a defined outcome in the mux (skip or close).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("frame of {len} bytes is shorter than the 5-byte header")]
    Short {
        /// Bytes received.
        len: usize,
    },
    /// More than [`MAX_MESSAGE`] bytes.
    #[error("frame of {len} bytes exceeds the {MAX_MESSAGE}-byte message limit")]
    Oversized {
        /// Bytes received.
        len: usize,
    },
    /// A type byte this build does not know.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A known type whose id or payload breaks its layout.
    #[error("malformed {frame} frame: {reason}")]
    Malformed {
        /// The frame type's name.
        frame: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl Frame {
    /// The stream this frame belongs to; 0 for session-level frames.
    pub fn stream_id(&self) -> StreamId {
        match self {
            Self::Connect { id, .. }
            | Self::Connected { id }
            | Self::Data { id, .. }
            | Self::Error { id, .. }
            | Self::Close { id }
            | Self::WindowUpdate { id, .. }
            | Self::Fin { id }
            | Self::Reset { id, .. } => *id,
            Self::Ping { .. }
            | Self::Pong { .. }
            | Self::Settings(_)
            | Self::Drain { .. }
            | Self::LiveIds { .. } => 0,
        }
    }

    fn type_byte(&self) -> u8 {
        match self {
            Self::Connect { .. } => 0x01,
            Self::Connected { .. } => 0x02,
            Self::Data { .. } => 0x03,
            Self::Error { .. } => 0x04,
            Self::Close { .. } => 0x05,
            Self::Ping { .. } => 0x06,
            Self::Pong { .. } => 0x07,
            Self::Settings(_) => 0x10,
            Self::WindowUpdate { .. } => 0x11,
            Self::Fin { .. } => 0x12,
            Self::Reset { .. } => 0x13,
            Self::Drain { .. } => 0x14,
            Self::LiveIds { .. } => 0x15,
        }
    }

    /// The number of bytes [`encode`] produces for this frame.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Self::Connect { target: b, .. }
                | Self::Data { payload: b, .. }
                | Self::Error { message: b, .. }
                | Self::Ping { payload: b }
                | Self::Pong { payload: b } => b.len(),
                Self::Connected { .. } | Self::Close { .. } | Self::Fin { .. } => 0,
                Self::Settings(settings) => settings.encoded_len(),
                Self::WindowUpdate { .. } | Self::Drain { .. } => 4,
                Self::Reset { message, .. } => 1 + message.len(),
                Self::LiveIds { ids, .. } => 4 + 4 * ids.len(),
            }
    }
}

/// Encodes `frame` as one message. The caller keeps messages under [`MAX_MESSAGE`].
pub fn encode(frame: &Frame) -> Bytes {
    let mut out = BytesMut::with_capacity(frame.encoded_len());
    out.put_u8(frame.type_byte());
    out.put_u32(frame.stream_id());
    match frame {
        Frame::Connect { target: b, .. }
        | Frame::Data { payload: b, .. }
        | Frame::Error { message: b, .. }
        | Frame::Ping { payload: b }
        | Frame::Pong { payload: b } => out.put_slice(b),
        Frame::Connected { .. } | Frame::Close { .. } | Frame::Fin { .. } => {}
        Frame::Settings(settings) => settings.encode_into(&mut out),
        Frame::WindowUpdate { increment, .. } => out.put_u32(*increment),
        Frame::Drain { grace_ms } => out.put_u32(*grace_ms),
        Frame::Reset {
            reason, message, ..
        } => {
            out.put_u8(reason.code());
            out.put_slice(message);
        }
        Frame::LiveIds { up_to, ids } => {
            out.put_u32(*up_to);
            ids.iter().for_each(|id| out.put_u32(*id));
        }
    }
    out.freeze()
}

/// Decodes one message. Payloads share `message`'s buffer (no copy).
pub fn decode(message: Bytes) -> Result<Frame, FrameError> {
    if message.len() < HEADER_LEN {
        return Err(FrameError::Short { len: message.len() });
    }
    if message.len() > MAX_MESSAGE {
        return Err(FrameError::Oversized { len: message.len() });
    }
    let kind = message[0];
    let id = u32::from_be_bytes([message[1], message[2], message[3], message[4]]);
    // `advance`, not `slice`: a slice of a buffer that came from a `Vec` makes it shared, an
    // allocation per message; moving its start is free.
    let mut payload = message;
    payload.advance(HEADER_LEN);
    let malformed = |frame, reason| Err(FrameError::Malformed { frame, reason });
    let session_level = |frame| {
        if id == 0 {
            Ok(())
        } else {
            Err(FrameError::Malformed {
                frame,
                reason: "session frame with a non-zero stream id",
            })
        }
    };
    // v1 frames are decoded as leniently as the Go peer reads them: extra payload on
    // Connected/Close and a non-zero id on Ping/Pong are ignored, as it ignores them.
    Ok(match kind {
        0x01 => Frame::Connect {
            id,
            target: payload,
        },
        0x02 => Frame::Connected { id },
        0x03 => Frame::Data { id, payload },
        0x04 => Frame::Error {
            id,
            message: payload,
        },
        0x05 => Frame::Close { id },
        0x06 => Frame::Ping { payload },
        0x07 => Frame::Pong { payload },
        0x10 => {
            session_level("Settings")?;
            Frame::Settings(Settings::decode(&payload)?)
        }
        0x11 => {
            let Ok(bytes) = <[u8; 4]>::try_from(&payload[..]) else {
                return malformed("WindowUpdate", "payload is not 4 bytes");
            };
            let increment = u32::from_be_bytes(bytes);
            if id == 0 || increment == 0 {
                return malformed("WindowUpdate", "zero stream id or zero increment");
            }
            Frame::WindowUpdate { id, increment }
        }
        0x12 if id == 0 => return malformed("Fin", "stream id 0"),
        0x12 => Frame::Fin { id },
        0x13 => {
            if id == 0 || payload.is_empty() {
                return malformed("Reset", "stream id 0 or no reason code");
            }
            let reason = ResetReason::from_code(payload[0]);
            payload.advance(1);
            Frame::Reset {
                id,
                reason,
                message: payload,
            }
        }
        0x14 => {
            session_level("Drain")?;
            let Ok(bytes) = <[u8; 4]>::try_from(&payload[..]) else {
                return malformed("Drain", "payload is not 4 bytes");
            };
            Frame::Drain {
                grace_ms: u32::from_be_bytes(bytes),
            }
        }
        0x15 => {
            session_level("LiveIds")?;
            if payload.len() < 4 || payload.len() % 4 != 0 {
                return malformed("LiveIds", "payload is not a whole number of u32s");
            }
            let mut words = payload
                .chunks_exact(4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
            let up_to = words.next().unwrap_or(0);
            Frame::LiveIds {
                up_to,
                ids: words.collect(),
            }
        }
        other => return Err(FrameError::UnknownType(other)),
    })
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;

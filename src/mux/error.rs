//! Why a session or a stream ended. Callers branch on these (retry elsewhere, map to a status).

use std::io;

use crate::protocol::ResetReason;

/// Why a session ended. Every stream still open at that moment fails with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionEnd {
    /// The peer closed the transport (WebSocket close or TCP EOF).
    #[error("peer closed the tunnel")]
    PeerClosed,
    /// We closed it ([`super::SessionHandle::close`] or every handle dropped).
    #[error("tunnel closed locally")]
    LocalClose,
    /// No Pong within the heartbeat timeout.
    #[error("peer missed its heartbeat deadline")]
    HeartbeatTimeout,
    /// A batch of writes did not complete within the write timeout.
    #[error("write to the tunnel stalled past its deadline")]
    WriteTimeout,
    /// The transport failed.
    #[error("tunnel transport failed: {0}")]
    Transport(String),
    /// The peer broke a session-level rule.
    #[error("peer violated the protocol: {0}")]
    Protocol(&'static str),
}

/// Why one stream failed. Reads and writes return it inside an `io::Error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The peer reset the stream (v2 Reset, or v1 Error after Connected).
    #[error("stream reset by peer ({}): {message}", reason.as_str())]
    ResetByPeer {
        /// The peer's reason.
        reason: ResetReason,
        /// The peer's text.
        message: String,
    },
    /// We reset the stream; the reason was also sent to the peer.
    #[error("stream reset locally ({})", .0.as_str())]
    ResetLocally(ResetReason),
    /// The receive buffer limit was hit (v1 has no credits).
    #[error("stream receive buffer exceeded its limit")]
    Overflow,
    /// The session under the stream ended.
    #[error("tunnel session lost: {0}")]
    SessionLost(SessionEnd),
    /// The peer closed its side (v1 Close); nothing more can be written.
    #[error("peer closed the stream")]
    PeerGone,
}

impl StreamError {
    /// The `io::Error` a reader or writer sees; the kind tells an abort from other failures.
    pub fn to_io(&self) -> io::Error {
        let kind = match self {
            Self::ResetByPeer { .. } => io::ErrorKind::ConnectionReset,
            Self::ResetLocally(_) | Self::Overflow => io::ErrorKind::ConnectionAborted,
            Self::SessionLost(_) => io::ErrorKind::ConnectionAborted,
            Self::PeerGone => io::ErrorKind::BrokenPipe,
        };
        io::Error::new(kind, self.clone())
    }
}

/// Why a stream could not be opened or accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// The session has ended.
    #[error("tunnel session lost: {0}")]
    SessionLost(SessionEnd),
    /// At [`super::Limits::max_streams`] or the peer's advertised maximum.
    #[error("too many streams on this tunnel")]
    TooManyStreams,
    /// The session or process receive budget cannot cover another stream's window.
    #[error("tunnel memory budget exhausted")]
    OverBudget,
    /// The peer is draining (or we are): no new streams.
    #[error("tunnel is draining")]
    Draining,
    /// The peer did not answer the open in time.
    #[error("stream open timed out")]
    OpenTimeout,
    /// The peer refused the open (v1 Error text, or v2 Reset).
    #[error("peer refused the stream: {0}")]
    Refused(String),
    /// Only the server role opens streams.
    #[error("this end of the tunnel cannot open streams")]
    NotOpener,
}

//! In-memory transports for tests and the fuzzer: a bounded channel pair with the same
//! one-message-one-frame shape as a WebSocket, so the mux is tested without a network.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::{Sink, Stream};

use super::{Limits, MemoryBudget, Role, Session, SessionConfig};
use crate::protocol::{Settings, Version};

/// One end of an in-memory message pipe.
pub struct MemoryTransport {
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
}

/// Two connected ends; each direction holds at most `capacity` messages in flight (plus one
/// per sender, as futures' channel allows), so a side that stops reading stalls the writer.
pub fn pair(capacity: usize) -> (MemoryTransport, MemoryTransport) {
    let (a_tx, b_rx) = mpsc::channel(capacity);
    let (b_tx, a_rx) = mpsc::channel(capacity);
    (
        MemoryTransport { tx: a_tx, rx: a_rx },
        MemoryTransport { tx: b_tx, rx: b_rx },
    )
}

impl Stream for MemoryTransport {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx)
            .poll_next(cx)
            .map(|item| item.map(Ok))
    }
}

fn gone(_: mpsc::SendError) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "in-memory peer is gone")
}

impl Sink<Bytes> for MemoryTransport {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tx).poll_ready(cx).map_err(gone)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> io::Result<()> {
        Pin::new(&mut self.tx).start_send(item).map_err(gone)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tx).poll_flush(cx).map_err(gone)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tx).poll_close(cx).map_err(gone)
    }
}

/// The settings a peer with `limits` announces, as negotiation would deliver them.
pub fn settings_for(limits: &Limits) -> Settings {
    Settings {
        version: Some(2),
        stream_window: Some(limits.stream_window),
        max_streams: Some(limits.max_streams as u32),
        ..Settings::default()
    }
}

/// The configuration of one end of an in-memory pair whose other end has `peer` limits.
pub fn config(role: Role, version: Version, limits: Limits, peer: &Limits) -> SessionConfig {
    SessionConfig {
        role,
        version,
        limits,
        peer: match version {
            Version::V2 => settings_for(peer),
            Version::V1 => Settings::default(),
        },
        process_budget: Arc::new(MemoryBudget::default_process()),
        first_message: None,
    }
}

/// A server session and an agent session connected in memory, already negotiated.
pub fn session_pair(version: Version, server: Limits, agent: Limits) -> (Session, Session) {
    let (server_end, agent_end) = pair(64);
    let server_session = Session::start(
        server_end,
        config(Role::Server, version, server.clone(), &agent),
    );
    let agent_session = Session::start(agent_end, config(Role::Agent, version, agent, &server));
    (server_session, agent_session)
}

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
use crate::protocol::{Message, Settings, Version};

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

impl Sink<Message> for MemoryTransport {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tx).poll_ready(cx).map_err(gone)
    }

    /// The message in one buffer: as a WebSocket peer would receive it.
    fn start_send(mut self: Pin<&mut Self>, item: Message) -> io::Result<()> {
        Pin::new(&mut self.tx)
            .start_send(item.to_bytes())
            .map_err(gone)
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

/// Fuzz/test driver for the mux input path: decodes `input` into a role, a version and a list
/// of raw messages, feeds them to a session as its peer would, accepting and reading every
/// stream it offers, and checks the memory invariants. Panics only on a broken invariant.
///
/// Layout: byte 0 selects role (bit 0) and version (bit 1); then `[len u16 BE][bytes]` repeated.
pub async fn exercise_input_path(input: &[u8]) {
    use futures_util::SinkExt;
    use tokio::io::AsyncReadExt;

    let Some((&selector, mut rest)) = input.split_first() else {
        return;
    };
    let role = if selector & 1 == 0 {
        Role::Agent
    } else {
        Role::Server
    };
    let version = if selector & 2 == 0 {
        Version::V1
    } else {
        Version::V2
    };
    let limits = Limits {
        stream_window: 4096,
        v1_stream_buffer: 8192,
        session_buffer: 64 * 1024,
        max_streams: 16,
        ..Limits::default()
    };
    let session_buffer = limits.session_buffer;
    let (ours, mut theirs) = pair(1024);
    let session = Session::start(ours, config(role, version, limits.clone(), &limits));
    let budget = session.handle.process_budget();
    let Session {
        handle,
        mut incoming,
    } = session;
    let opener = handle.clone();
    // Streams the peer may open are accepted and drained; for the server, open a few too.
    let acceptor = tokio::spawn(async move {
        while let Some(stream) = incoming.accept().await {
            tokio::spawn(async move {
                let mut stream = stream.accept();
                let _ = stream.read_to_end(&mut Vec::new()).await;
            });
        }
    });
    if role == Role::Server {
        for _ in 0..3 {
            let opener = opener.clone();
            tokio::spawn(async move {
                if let Ok(mut stream) = opener.open(b"target").await {
                    let _ = stream.read_to_end(&mut Vec::new()).await;
                }
            });
        }
    }
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let message = Bytes::copy_from_slice(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        if theirs.send(message.into()).await.is_err() {
            break;
        }
        tokio::task::yield_now().await;
        let stats = handle.stats();
        assert!(
            stats.reserved <= session_buffer,
            "session budget exceeded: {stats:?}"
        );
        assert!(stats.streams <= 16 + 3, "stream limit exceeded: {stats:?}");
    }
    drop(theirs);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(60), handle.closed()).await;
    drop(handle);
    acceptor.abort();
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    drop(opener);
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        budget.used(),
        0,
        "memory not released after the session ended"
    );
}

/// Deterministic pseudo-random bytes (xorshift), so a corrupted byte shows up in a comparison.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

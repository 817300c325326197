//! Mux behaviour over the in-memory transport: a real session on one side, and either a real
//! session or a raw frame peer (to see exactly what goes on the wire) on the other.
//! Shared helpers live here; the suites are split by theme.

mod fairness;
mod heartbeat;
mod limits;
mod pitfalls;
mod review;
mod streams;

use std::io::ErrorKind;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::testing::{config, pair, pattern, session_pair, MemoryTransport};
use super::*;
use crate::protocol::{decode, encode, Frame, ResetReason, Version};

/// Fails the test with a message instead of hanging it.
pub(super) async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A peer that speaks frames by hand.
pub(super) struct RawPeer(pub(super) MemoryTransport);

impl RawPeer {
    pub(super) async fn send(&mut self, frame: Frame) {
        self.0.send(encode(&frame).into()).await.expect("raw send");
    }
    pub(super) async fn send_bytes(&mut self, bytes: &'static [u8]) {
        self.0
            .send(Bytes::from_static(bytes).into())
            .await
            .expect("raw send");
    }
    /// Returns once the session has processed everything sent before: a Ping is answered in
    /// order, so its Pong proves it. Frames other than the Pong met meanwhile are discarded.
    pub(super) async fn barrier(&mut self) {
        let marker = Bytes::from_static(b"barrier!");
        self.send(Frame::Ping {
            payload: marker.clone(),
        })
        .await;
        loop {
            let message = within("barrier pong", self.0.next())
                .await
                .unwrap()
                .unwrap();
            if decode(message).ok()
                == Some(Frame::Pong {
                    payload: marker.clone(),
                })
            {
                return;
            }
        }
    }

    /// The next frame that is not a heartbeat.
    pub(super) async fn recv(&mut self) -> Option<Frame> {
        loop {
            let message = self.0.next().await?.expect("raw recv");
            match decode(message).expect("decodable") {
                Frame::Ping { .. } | Frame::Pong { .. } => continue,
                frame => return Some(frame),
            }
        }
    }
}

/// A session of `role` whose peer is a [`RawPeer`].
pub(super) fn with_raw_peer(role: Role, version: Version, limits: Limits) -> (Session, RawPeer) {
    let (ours, theirs) = pair(4);
    let peer_limits = Limits::default();
    let session = Session::start(ours, config(role, version, limits, &peer_limits));
    (session, RawPeer(theirs))
}

/// Heartbeats every 100 ms (a v2 server's LiveIds every 600 ms) and a peer that need not
/// answer them for a minute: for LiveIds tests under paused time.
pub(super) fn six_beats_a_second() -> Limits {
    Limits {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_secs(60),
        ..Limits::default()
    }
}

pub(super) fn wide_limits() -> Limits {
    Limits {
        stream_window: 64 * 1024,
        session_buffer: 256 * 1024 * 1024,
        ..Limits::default()
    }
}

/// Agent side of the echo scenario: read an 8-byte length, that many bytes, echo them back.
pub(super) async fn echo_agent(mut incoming: Incoming) {
    while let Some(stream) = incoming.accept().await {
        tokio::spawn(async move {
            let mut stream = stream.accept();
            let len = stream.read_u64().await.expect("length") as usize;
            let mut body = vec![0; len];
            stream.read_exact(&mut body).await.expect("body");
            stream.write_all(&body).await.expect("echo");
            stream.shutdown().await.expect("shutdown");
            // v1 has no half-close: the Close sent on drop is the end of the stream.
            drop(stream);
        });
    }
}

pub(super) async fn echo_many(version: Version, streams: usize) {
    let (server, agent) = session_pair(version, wide_limits(), wide_limits());
    tokio::spawn(echo_agent(agent.incoming));
    let mut tasks = Vec::new();
    for index in 0..streams {
        let handle = server.handle.clone();
        tasks.push(tokio::spawn(async move {
            let body = pattern(index as u64, (index * 7919) % 20_000);
            let mut stream = handle.open(b"kubernetes").await.expect("open");
            stream.write_u64(body.len() as u64).await.expect("length");
            stream.write_all(&body).await.expect("body");
            let mut echoed = Vec::new();
            stream.read_to_end(&mut echoed).await.expect("read to end");
            assert!(echoed == body, "stream {index} differs");
        }));
    }
    for task in tasks {
        within("echo streams", task).await.expect("stream task");
    }
    assert_eq!(server.handle.stats().counters.resets_sent, 0);
}

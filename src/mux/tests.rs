//! Mux behaviour over the in-memory transport: a real session on one side, and either a real
//! session or a raw frame peer (to see exactly what goes on the wire) on the other.

use std::io::ErrorKind;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::testing::{config, pair, session_pair, MemoryTransport};
use super::*;
use crate::protocol::{decode, encode, Frame, ResetReason, Version};

/// Fails the test with a message instead of hanging it.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A peer that speaks frames by hand.
struct RawPeer(MemoryTransport);

impl RawPeer {
    async fn send(&mut self, frame: Frame) {
        self.0.send(encode(&frame)).await.expect("raw send");
    }
    async fn send_bytes(&mut self, bytes: &'static [u8]) {
        self.0
            .send(Bytes::from_static(bytes))
            .await
            .expect("raw send");
    }
    /// Returns once the session has processed everything sent before: a Ping is answered in
    /// order, so its Pong proves it. Frames other than the Pong met meanwhile are discarded.
    async fn barrier(&mut self) {
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
    async fn recv(&mut self) -> Option<Frame> {
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
fn with_raw_peer(role: Role, version: Version, limits: Limits) -> (Session, RawPeer) {
    let (ours, theirs) = pair(4);
    let peer_limits = Limits::default();
    let session = Session::start(ours, config(role, version, limits, &peer_limits));
    (session, RawPeer(theirs))
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
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

fn wide_limits() -> Limits {
    Limits {
        stream_window: 64 * 1024,
        session_buffer: 256 * 1024 * 1024,
        ..Limits::default()
    }
}

/// Agent side of the echo scenario: read an 8-byte length, that many bytes, echo them back.
async fn echo_agent(mut incoming: Incoming) {
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

async fn echo_many(version: Version, streams: usize) {
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

#[tokio::test]
async fn thousand_concurrent_streams_arrive_byte_exact_v2() {
    echo_many(Version::V2, 1000).await;
}

#[tokio::test]
async fn thousand_concurrent_streams_arrive_byte_exact_v1() {
    echo_many(Version::V1, 1000).await;
}

/// A stream whose reader stalls holds at most its window; others keep flowing (v2).
#[tokio::test]
async fn stalled_reader_does_not_block_other_streams() {
    let limits = Limits::default();
    let window = limits.stream_window as usize;
    let (server, mut agent) = session_pair(Version::V2, limits.clone(), limits);
    let mut stalled = server.handle.open(b"stalled").await.unwrap();
    stalled.write_all(b"x").await.unwrap();
    let mut busy = server.handle.open(b"busy").await.unwrap();
    let mut agent_stalled = agent.incoming.accept().await.unwrap().accept();
    let mut agent_busy = agent.incoming.accept().await.unwrap().accept();
    // The agent floods the stalled stream; its writer must park on credit, not on the session.
    let flood = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        loop {
            if agent_stalled.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let body = pattern(1, 8 * 1024 * 1024);
    let sent = body.clone();
    let echo = tokio::spawn(async move {
        let mut got = vec![0; sent.len()];
        agent_busy.read_exact(&mut got).await.unwrap();
        agent_busy.write_all(&got).await.unwrap();
        agent_busy.shutdown().await.unwrap();
        agent_busy
    });
    busy.write_all(&body).await.unwrap();
    busy.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("busy stream", busy.read_to_end(&mut back))
        .await
        .unwrap();
    assert!(back == body);
    within("echo task", echo).await.unwrap();
    let stats = server.handle.stats();
    assert!(
        stats.buffered <= window,
        "{} buffered > window {window}",
        stats.buffered
    );
    let mut first = [0u8; 1];
    stalled.read_exact(&mut first).await.unwrap();
    flood.abort();
}

/// A slow consumer cannot grow memory past its window; everything still arrives (v2, B14).
#[tokio::test]
async fn slow_consumer_is_bounded_by_its_window() {
    let limits = Limits {
        stream_window: 128 * 1024,
        ..Limits::default()
    };
    let (server, mut agent) = session_pair(Version::V2, limits.clone(), limits);
    let mut stream = server.handle.open(b"bulk").await.unwrap();
    stream.write_all(b"go").await.unwrap();
    let mut agent_stream = agent.incoming.accept().await.unwrap().accept();
    let body = pattern(2, 4 * 1024 * 1024);
    let sent = body.clone();
    let writer = tokio::spawn(async move {
        agent_stream.write_all(&sent).await.unwrap();
        agent_stream.shutdown().await.unwrap();
        agent_stream
    });
    // Wait until the agent's writer has run out of credit, then look at our memory.
    within("credit stall", async {
        while agent.handle.stats().counters.credit_stalls == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let stats = server.handle.stats();
    assert!(stats.buffered <= 128 * 1024, "buffered {}", stats.buffered);
    assert_eq!(stats.reserved, 128 * 1024);
    let mut got = Vec::new();
    within("bulk read", stream.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(got == body);
    drop(within("writer", writer).await.unwrap());
}

/// B14 under v1 (no credits): past the buffer limit the stream fails visibly, never as a
/// short clean EOF, and the peer is told with a Close.
#[tokio::test]
async fn v1_overflow_is_an_error_not_a_truncation() {
    let limits = Limits {
        v1_stream_buffer: 256 * 1024,
        ..Limits::default()
    };
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V1, limits);
    let handle = server.handle.clone();
    let open = tokio::spawn(async move { handle.open(b"10.0.0.1:443").await });
    assert!(matches!(
        peer.recv().await,
        Some(Frame::Connect { id: 1, .. })
    ));
    peer.send(Frame::Connected { id: 1 }).await;
    let mut stream = open.await.unwrap().unwrap();
    for _ in 0..5 {
        let payload = Bytes::from(vec![1u8; 64 * 1024]);
        peer.send(Frame::Data { id: 1, payload }).await;
    }
    assert_eq!(peer.recv().await, Some(Frame::Close { id: 1 }));
    let mut sink = Vec::new();
    let error = stream.read_to_end(&mut sink).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionAborted);
    assert_eq!(server.handle.stats().counters.overflows, 1);
    assert_eq!(
        server.handle.stats().reserved,
        0,
        "overflowed bytes released"
    );
}

/// Fin is a clean end of one direction; Reset is an error on both.
#[tokio::test]
async fn reset_and_half_close_are_distinguished() {
    let (server, mut agent) = session_pair(Version::V2, Limits::default(), Limits::default());
    let mut finished = server.handle.open(b"a").await.unwrap();
    finished.write_all(b"request").await.unwrap();
    finished.shutdown().await.unwrap();
    let mut agent_side = agent.incoming.accept().await.unwrap().accept();
    let mut request = Vec::new();
    agent_side.read_to_end(&mut request).await.unwrap();
    assert_eq!(request, b"request", "Fin reads as EOF after the data");
    agent_side.write_all(b"response still flows").await.unwrap();
    agent_side.shutdown().await.unwrap();
    let mut response = Vec::new();
    finished.read_to_end(&mut response).await.unwrap();
    assert_eq!(response, b"response still flows");

    let mut aborted = server.handle.open(b"b").await.unwrap();
    aborted.write_all(b"partial").await.unwrap();
    let agent_side = agent.incoming.accept().await.unwrap().accept();
    agent_side.reset(ResetReason::UpstreamFailed);
    let error = aborted.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
    let error = aborted.write_all(b"more").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
}

/// B15: a session that dies mid-transfer is an error on every stream, never EOF.
#[tokio::test]
async fn session_loss_is_an_error_on_every_open_stream() {
    let (server, mut agent) = session_pair(Version::V2, Limits::default(), Limits::default());
    let mut streams = Vec::new();
    for _ in 0..10 {
        let mut stream = server.handle.open(b"t").await.unwrap();
        stream.write_all(b"req").await.unwrap();
        let mut agent_side = agent.incoming.accept().await.unwrap().accept();
        agent_side.write_all(b"partial response").await.unwrap();
        streams.push((stream, agent_side));
    }
    let mut first = [0u8; 7];
    streams[0].0.read_exact(&mut first).await.unwrap();
    drop(agent); // every agent handle: the session ends, the transport closes
    for (mut stream, _agent_side) in streams {
        let error = within("read after loss", stream.read_to_end(&mut Vec::new()))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ConnectionAborted, "{error}");
    }
    assert_eq!(server.handle.closed().await, SessionEnd::PeerClosed);
}

/// B8: an open waiting for Connected fails as soon as the session dies, not at its timeout.
#[tokio::test(start_paused = true)]
async fn pending_open_fails_when_the_session_dies() {
    let (server, peer) = with_raw_peer(Role::Server, Version::V1, Limits::default());
    let started = tokio::time::Instant::now();
    let handle = server.handle.clone();
    let open = tokio::spawn(async move { handle.open(b"t").await });
    tokio::task::yield_now().await;
    drop(peer);
    let result = open.await.unwrap();
    assert!(
        matches!(result, Err(MuxError::SessionLost(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Limits::default().open_timeout);
}

/// B9: an abandoned open gets a Close, and so does a late Connected for it.
#[tokio::test(start_paused = true)]
async fn abandoned_open_is_closed_on_the_wire() {
    let limits = Limits {
        open_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V1, limits);
    let result = server.handle.open(b"t").await;
    assert!(matches!(result, Err(MuxError::OpenTimeout)), "{result:?}");
    assert!(matches!(
        peer.recv().await,
        Some(Frame::Connect { id: 1, .. })
    ));
    assert_eq!(peer.recv().await, Some(Frame::Close { id: 1 }));
    peer.send(Frame::Connected { id: 1 }).await;
    assert_eq!(peer.recv().await, Some(Frame::Close { id: 1 }));
}

/// v2: an open nobody answers is reset at its deadline; the opener's read fails.
#[tokio::test(start_paused = true)]
async fn unanswered_v2_open_times_out() {
    let limits = Limits {
        open_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, limits);
    let mut stream = server.handle.open(b"t").await.unwrap();
    let error = stream.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionAborted);
    assert!(matches!(peer.recv().await, Some(Frame::Connect { .. })));
    let reset = peer.recv().await;
    assert!(
        matches!(
            reset,
            Some(Frame::Reset {
                id: 1,
                reason: ResetReason::OpenTimeout,
                ..
            })
        ),
        "{reset:?}"
    );
}

/// v2 open without a round trip: Data leaves before any answer and is held until accept.
#[tokio::test]
async fn v2_data_travels_with_the_open() {
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, Limits::default());
    let mut stream = server.handle.open(b"kubernetes").await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(
        peer.recv().await,
        Some(Frame::Connect {
            id: 1,
            target: Bytes::from_static(b"kubernetes")
        })
    );
    assert_eq!(
        peer.recv().await,
        Some(Frame::Data {
            id: 1,
            payload: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")
        })
    );

    let (server, mut agent) = session_pair(Version::V2, Limits::default(), Limits::default());
    let mut stream = server.handle.open(b"kubernetes").await.unwrap();
    stream.write_all(b"early bytes").await.unwrap();
    stream.shutdown().await.unwrap();
    let incoming = within("incoming", agent.incoming.accept()).await.unwrap();
    assert_eq!(incoming.target(), b"kubernetes");
    let mut agent_side = incoming.accept();
    let mut got = Vec::new();
    agent_side.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"early bytes");
}

/// B10: with the far end not reading, the heartbeat still ends the session on time.
#[tokio::test(start_paused = true)]
async fn stalled_transport_does_not_hide_a_dead_peer() {
    let limits = Limits::default();
    let deadline = limits.heartbeat_interval + limits.heartbeat_timeout;
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, limits);
    let mut stream = server.handle.open(b"t").await.unwrap();
    peer.send(Frame::WindowUpdate {
        id: 1,
        increment: 64 * 1024 * 1024,
    })
    .await;
    // Fill the transport and the send queue; the peer reads nothing from here on.
    let writer = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        while stream.write_all(&chunk).await.is_ok() {}
    });
    let started = tokio::time::Instant::now();
    let end = server.handle.closed().await;
    assert!(
        matches!(end, SessionEnd::HeartbeatTimeout | SessionEnd::WriteTimeout),
        "{end:?}"
    );
    assert!(
        started.elapsed() <= deadline,
        "took {:?}",
        started.elapsed()
    );
    within("writer fails", writer).await.unwrap();
    drop(peer);
}

/// B10: a Ping is answered ahead of Data already queued behind a stalled transport.
#[tokio::test]
async fn pong_overtakes_queued_data() {
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, Limits::default());
    let mut stream = server.handle.open(b"t").await.unwrap();
    peer.send(Frame::WindowUpdate {
        id: 1,
        increment: 64 * 1024 * 1024,
    })
    .await;
    let writer = tokio::spawn(async move {
        let body = vec![0u8; 8 * 1024 * 1024];
        stream.write_all(&body).await.unwrap();
        stream
    });
    within("queue fills", async {
        while server.handle.stats().queued_send < 512 * 1024 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    peer.send(Frame::Ping {
        payload: Bytes::from_static(b"12345678"),
    })
    .await;
    let mut position = 0;
    loop {
        let message = within("pong", peer.0.next()).await.unwrap().unwrap();
        position += 1;
        if let Ok(Frame::Pong { payload }) = decode(message) {
            assert_eq!(&payload[..], b"12345678");
            break;
        }
    }
    // 8 MiB is 128 Data frames; the Pong comes after at most the batch already in flight.
    assert!(position <= 16, "pong arrived as message {position}");
    drop(writer);
}

/// A silent peer is dropped after the heartbeat timeout (paused time).
#[tokio::test(start_paused = true)]
async fn heartbeat_timeout_closes_a_silent_peer() {
    let limits = Limits::default();
    let deadline = limits.heartbeat_interval + limits.heartbeat_timeout;
    let (agent, mut peer) = with_raw_peer(Role::Agent, Version::V1, limits);
    let started = tokio::time::Instant::now();
    let reader = tokio::spawn(async move { while peer.recv().await.is_some() {} });
    assert_eq!(agent.handle.closed().await, SessionEnd::HeartbeatTimeout);
    assert!(
        started.elapsed() <= deadline,
        "took {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= Limits::default().heartbeat_timeout);
    reader.abort();
}

/// Malformed and out-of-place input has a defined outcome and the session keeps serving.
#[tokio::test]
async fn malformed_input_is_skipped_and_the_session_survives() {
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V1, Limits::default());
    peer.send_bytes(b"\x03\0\0").await; // short frame
    peer.send_bytes(b"\x42\0\0\0\x01junk").await; // unknown type
    peer.send(Frame::Data {
        id: 99,
        payload: Bytes::from_static(b"nobody"),
    })
    .await;
    peer.send(Frame::Connected { id: 77 }).await; // unknown id: answered with Close (B9)
    assert_eq!(peer.recv().await, Some(Frame::Close { id: 77 }));

    let handle = server.handle.clone();
    let open = tokio::spawn(async move { handle.open(b"t").await });
    assert!(matches!(
        peer.recv().await,
        Some(Frame::Connect { id: 1, .. })
    ));
    peer.send(Frame::Connected { id: 1 }).await;
    peer.send(Frame::Connected { id: 1 }).await; // duplicate (panics a Go peer, B4)
    let mut stream = open.await.unwrap().unwrap();
    peer.send(Frame::Data {
        id: 1,
        payload: Bytes::from_static(b"ok"),
    })
    .await;
    let mut two = [0u8; 2];
    stream.read_exact(&mut two).await.unwrap();
    assert_eq!(&two, b"ok");
    // Error after Connected (panics a Go peer, B4): the stream fails, the session lives.
    peer.send(Frame::Error {
        id: 1,
        message: Bytes::from_static(b"dial failed"),
    })
    .await;
    let error = stream.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
    assert!(error.to_string().contains("dial failed"), "{error}");
    assert!(!server.handle.is_closed());
    assert!(server.handle.stats().counters.frames_ignored >= 4);
}

/// A v1 open refused with Error reports the peer's text.
#[tokio::test]
async fn v1_refusal_carries_the_peer_text() {
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V1, Limits::default());
    let handle = server.handle.clone();
    let open = tokio::spawn(async move { handle.open(b"t").await });
    assert!(matches!(
        peer.recv().await,
        Some(Frame::Connect { id: 1, .. })
    ));
    peer.send(Frame::Error {
        id: 1,
        message: Bytes::from_static(b"address not allowed"),
    })
    .await;
    let result = open.await.unwrap();
    assert_eq!(
        result.unwrap_err(),
        MuxError::Refused("address not allowed".into())
    );
}

/// Streams past the session budget are refused, not over-committed, on both ends.
#[tokio::test]
async fn budgets_bound_the_number_of_windows() {
    let limits = Limits {
        stream_window: 64 * 1024,
        session_buffer: 256 * 1024,
        ..Limits::default()
    };
    let (server, _agent) = session_pair(Version::V2, limits.clone(), Limits::default());
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(server.handle.open(b"t").await.unwrap());
    }
    assert_eq!(
        server.handle.open(b"t").await.unwrap_err(),
        MuxError::OverBudget
    );
    open.pop();
    assert!(
        server.handle.open(b"t").await.is_ok(),
        "a dropped stream frees its window"
    );

    let (agent, mut peer) = with_raw_peer(Role::Agent, Version::V2, limits);
    for id in 1..=5 {
        peer.send(Frame::Connect {
            id,
            target: Bytes::from_static(b"t"),
        })
        .await;
    }
    let reset = peer.recv().await;
    assert!(
        matches!(
            reset,
            Some(Frame::Reset {
                id: 5,
                reason: ResetReason::Busy,
                ..
            })
        ),
        "{reset:?}"
    );
    assert_eq!(agent.handle.stats().reserved, 256 * 1024);
}

/// v2 reconciliation: a stream the server no longer lists is dropped at the agent, and a
/// listed stream the agent no longer has is reset back.
#[tokio::test]
async fn live_ids_reconcile_lost_closes() {
    let (mut agent, mut peer) = with_raw_peer(Role::Agent, Version::V2, Limits::default());
    for id in 1..=2 {
        peer.send(Frame::Connect {
            id,
            target: Bytes::from_static(b"t"),
        })
        .await;
    }
    let mut one = agent.incoming.accept().await.unwrap().accept();
    let mut two = agent.incoming.accept().await.unwrap().accept();
    assert_eq!(peer.recv().await, Some(Frame::Connected { id: 1 }));
    assert_eq!(peer.recv().await, Some(Frame::Connected { id: 2 }));
    peer.send(Frame::LiveIds {
        up_to: 3,
        ids: vec![1, 3],
    })
    .await;
    let error = two.read(&mut [0u8; 1]).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionAborted);
    let mut frames = vec![peer.recv().await.unwrap(), peer.recv().await.unwrap()];
    frames.sort_by_key(|frame| frame.stream_id());
    assert!(
        matches!(frames[0], Frame::Reset { id: 2, .. }),
        "{frames:?}"
    );
    assert!(
        matches!(frames[1], Frame::Reset { id: 3, .. }),
        "{frames:?}"
    );
    one.write_all(b"still fine").await.unwrap();
    assert!(matches!(peer.recv().await, Some(Frame::Data { id: 1, .. })));
}

/// Drain: the peer's Drain stops new opens; in-flight streams continue.
#[tokio::test]
async fn drain_stops_new_streams_only() {
    let (server, mut agent) = session_pair(Version::V2, Limits::default(), Limits::default());
    let mut stream = server.handle.open(b"t").await.unwrap();
    stream.write_all(b"in flight").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut agent_side = agent.incoming.accept().await.unwrap().accept();
    agent.handle.drain(Duration::from_secs(5));
    within("drain seen", async {
        while !server.handle.peer_draining() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        server.handle.open(b"t").await.unwrap_err(),
        MuxError::Draining
    );
    let mut got = Vec::new();
    agent_side.read_to_end(&mut got).await.unwrap();
    agent_side.write_all(b"done").await.unwrap();
    agent_side.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"done");
}

/// Dropping a stream handle releases its memory and tells the peer (v2: Reset).
#[tokio::test]
async fn dropping_a_stream_releases_everything() {
    let (server, mut agent) = session_pair(Version::V2, Limits::default(), Limits::default());
    let stream = server.handle.open(b"t").await.unwrap();
    let mut agent_side = agent.incoming.accept().await.unwrap().accept();
    assert_eq!(
        server.handle.stats().reserved,
        Limits::default().stream_window as usize
    );
    drop(stream);
    assert_eq!(server.handle.stats().reserved, 0);
    assert_eq!(server.handle.stats().streams, 0);
    let error = agent_side.read(&mut [0u8; 1]).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
    drop(agent_side);
    within("agent releases", async {
        while agent.handle.stats().streams != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(agent.handle.process_budget().used(), 0);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// The fuzz target's input path, on random inputs, as a regular test (no panic, budgets
    /// respected, memory released).
    #[test]
    fn arbitrary_peer_input_keeps_invariants(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(super::testing::exercise_input_path(&input));
    }
}

/// Inputs built from valid frames reach deep states (opens, data, resets) that random bytes
/// rarely do.
#[tokio::test(start_paused = true)]
async fn structured_peer_input_keeps_invariants() {
    let frames = [
        Frame::Connect {
            id: 1,
            target: Bytes::from_static(b"t"),
        },
        Frame::Data {
            id: 1,
            payload: Bytes::from(vec![1u8; 5000]),
        },
        Frame::Connected { id: 1 },
        Frame::Connected { id: 1 },
        Frame::Data {
            id: 1,
            payload: Bytes::from(vec![2u8; 9000]),
        },
        Frame::Error {
            id: 1,
            message: Bytes::from_static(b"x"),
        },
        Frame::Fin { id: 2 },
        Frame::Reset {
            id: 2,
            reason: ResetReason::Busy,
            message: Bytes::new(),
        },
        Frame::WindowUpdate {
            id: 1,
            increment: u32::MAX,
        },
        Frame::LiveIds {
            up_to: 10,
            ids: vec![2, 3],
        },
        Frame::Close { id: 1 },
    ];
    for selector in 0..4u8 {
        let mut input = vec![selector];
        for frame in &frames {
            let wire = encode(frame);
            input.extend_from_slice(&(wire.len() as u16).to_be_bytes());
            input.extend_from_slice(&wire);
        }
        super::testing::exercise_input_path(&input).await;
    }
}

/// The process budget is shared: streams on one session use up what another may reserve.
#[tokio::test]
async fn process_budget_is_shared_across_sessions() {
    let limits = Limits {
        stream_window: 64 * 1024,
        ..Limits::default()
    };
    let shared_budget = std::sync::Arc::new(MemoryBudget::new(3 * 64 * 1024));
    let start = |budget: std::sync::Arc<MemoryBudget>| {
        let (ours, _theirs) = pair(4);
        let mut config = config(Role::Server, Version::V2, limits.clone(), &limits);
        config.process_budget = budget;
        (Session::start(ours, config), _theirs)
    };
    let (first, _first_peer) = start(shared_budget.clone());
    let (second, _second_peer) = start(shared_budget.clone());
    let _a = first.handle.open(b"t").await.unwrap();
    let _b = first.handle.open(b"t").await.unwrap();
    let c = second.handle.open(b"t").await.unwrap();
    assert_eq!(
        second.handle.open(b"t").await.unwrap_err(),
        MuxError::OverBudget
    );
    assert_eq!(
        first.handle.open(b"t").await.unwrap_err(),
        MuxError::OverBudget
    );
    assert_eq!(shared_budget.used(), 3 * 64 * 1024);
    drop(c);
    assert!(first.handle.open(b"t").await.is_ok());
}

/// An agent that stops accepting (drops `Incoming`) but keeps its handle refuses new streams;
/// it must not deadlock on its own lock (review finding: re-entrant Drop under the lock).
#[tokio::test]
async fn dropped_incoming_refuses_new_streams() {
    let (server, agent) = session_pair(Version::V2, Limits::default(), Limits::default());
    let Session {
        handle: agent_handle,
        incoming,
    } = agent;
    drop(incoming);
    let mut stream = server.handle.open(b"t").await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    let error = within("refusal", stream.read_to_end(&mut Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
    assert!(!agent_handle.is_closed());
    assert_eq!(agent_handle.stats().streams, 0);
}

/// A stream reset right after its open: the Reset follows the Connect on the wire, never
/// overtakes it (else the agent would hold a stream nobody closes).
#[tokio::test]
async fn reset_never_overtakes_its_connect() {
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, Limits::default());
    let stream = server.handle.open(b"t").await.unwrap();
    stream.reset(ResetReason::Cancelled);
    assert!(matches!(
        peer.recv().await,
        Some(Frame::Connect { id: 1, .. })
    ));
    assert!(matches!(
        peer.recv().await,
        Some(Frame::Reset { id: 1, .. })
    ));
}

/// Accepting a stream the peer already closed sends no Connected (a Go peer may panic on a
/// Connected for an id it removed).
#[tokio::test]
async fn accepting_a_closed_stream_sends_nothing() {
    let (mut agent, mut peer) = with_raw_peer(Role::Agent, Version::V1, Limits::default());
    peer.send(Frame::Connect {
        id: 1,
        target: Bytes::from_static(b"t"),
    })
    .await;
    peer.send(Frame::Close { id: 1 }).await;
    let first = within("first", agent.incoming.accept()).await.unwrap();
    peer.barrier().await;
    let mut first = first.accept();
    assert_eq!(
        first.read(&mut [0u8; 1]).await.unwrap(),
        0,
        "v1 Close is a clean end"
    );
    peer.send(Frame::Connect {
        id: 2,
        target: Bytes::from_static(b"t"),
    })
    .await;
    let _second = within("second", agent.incoming.accept())
        .await
        .unwrap()
        .accept();
    assert_eq!(peer.recv().await, Some(Frame::Connected { id: 2 }));
}

/// close() completes even while a stream keeps writing; that stream's writes then fail.
#[tokio::test]
async fn close_is_not_held_off_by_a_busy_writer() {
    let (server, mut agent) = session_pair(Version::V2, Limits::default(), Limits::default());
    let mut stream = server.handle.open(b"t").await.unwrap();
    stream.write_all(b"x").await.unwrap();
    let mut agent_side = agent.incoming.accept().await.unwrap().accept();
    let reader = tokio::spawn(async move {
        let _ = agent_side.read_to_end(&mut Vec::new()).await;
    });
    let writer = tokio::spawn(async move {
        let chunk = vec![0u8; 16 * 1024];
        loop {
            if let Err(error) = stream.write_all(&chunk).await {
                return error;
            }
        }
    });
    tokio::task::yield_now().await;
    server.handle.close();
    assert_eq!(
        within("close", server.handle.closed()).await,
        SessionEnd::LocalClose
    );
    let error = within("writer stops", writer).await.unwrap();
    assert_eq!(error.kind(), ErrorKind::ConnectionAborted);
    reader.abort();
}

/// A writer parked on a full send queue is woken by its stream's reset at once, not when the
/// queue drains (the far end here never reads, so it never would).
#[tokio::test]
async fn reset_wakes_a_writer_parked_on_the_send_queue() {
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, Limits::default());
    let mut stream = server.handle.open(b"t").await.unwrap();
    peer.send(Frame::Connected { id: 1 }).await;
    peer.send(Frame::WindowUpdate {
        id: 1,
        increment: 64 * 1024 * 1024,
    })
    .await;
    let writer = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if let Err(error) = stream.write_all(&chunk).await {
                return error;
            }
        }
    });
    within("queue fills", async {
        while server.handle.stats().queued_send < Limits::default().send_queue {
            tokio::task::yield_now().await;
        }
    })
    .await;
    peer.send(Frame::Reset {
        id: 1,
        reason: ResetReason::Cancelled,
        message: Bytes::new(),
    })
    .await;
    let error = within("writer woken", writer).await.unwrap();
    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
}

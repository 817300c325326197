//! The Go implementation's defects (seed-protocol.md §7) that the mux must not have.

use super::*;

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

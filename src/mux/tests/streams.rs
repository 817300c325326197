//! Streams: byte-exact concurrency, flow control, half-close vs reset, opens, drain, release.

use super::*;

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

/// v2 reconciliation: a stream the server no longer lists is dropped at the agent; a listed
/// id the agent no longer has gets no answer (its own Close is already on the way, and a Reset
/// could cut a stream the server still reads after the agent's Fin).
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
    assert!(
        matches!(peer.recv().await, Some(Frame::Reset { id: 2, .. })),
        "the orphan is reset"
    );
    one.write_all(b"still fine").await.unwrap();
    // Nothing for id 3 came before stream 1's data.
    assert!(matches!(peer.recv().await, Some(Frame::Data { id: 1, .. })));
}

/// The server lists its live streams every six heartbeats, behind what it already queued.
#[tokio::test(start_paused = true)]
async fn a_v2_server_sends_its_live_ids_periodically() {
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, six_beats_a_second());
    let _first = server.handle.open(b"t").await.unwrap();
    let _second = server.handle.open(b"t").await.unwrap();
    let mut opened = Vec::new();
    let ids = within("live ids", async {
        loop {
            match peer.recv().await.expect("session alive") {
                Frame::Connect { id, .. } => opened.push(id),
                Frame::LiveIds { up_to, ids } => {
                    assert_eq!(up_to, u32::MAX);
                    return ids;
                }
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(opened.len(), 2, "both opens precede the list");
    assert_eq!(ids, opened);
}

/// An idle tunnel's list goes out once: the same list again, with no stream opened or closed
/// since, would tell the agent nothing (at 10,000 idle agents, a frame a minute each). A
/// stream opened, or closed, since makes the next list go out.
#[tokio::test(start_paused = true)]
async fn live_ids_are_not_repeated_while_nothing_changes() {
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, six_beats_a_second());
    // Five list periods (600 ms each) per window.
    async fn lists_within_3s(peer: &mut RawPeer) -> Vec<Vec<crate::protocol::StreamId>> {
        let mut lists = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(frame) = peer.recv().await {
                if let Frame::LiveIds { ids, .. } = frame {
                    lists.push(ids);
                }
            }
        })
        .await;
        lists
    }
    assert_eq!(lists_within_3s(&mut peer).await, [Vec::<u32>::new()]);
    assert!(
        lists_within_3s(&mut peer).await.is_empty(),
        "repeated while idle"
    );
    let stream = server.handle.open(b"t").await.unwrap();
    let id = stream.id();
    assert_eq!(lists_within_3s(&mut peer).await, [vec![id]]);
    assert!(lists_within_3s(&mut peer).await.is_empty());
    drop(stream);
    assert_eq!(lists_within_3s(&mut peer).await, [Vec::<u32>::new()]);
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

/// `poll_send` takes bytes without a copy, one frame at a time: each call takes at most a
/// frame's payload and the stream's credit, leaves the rest with the caller, and everything
/// arrives in order (v2, where credit bounds it, and v1).
#[tokio::test]
async fn sent_bytes_are_taken_a_frame_at_a_time_and_arrive_byte_exact() {
    for version in [Version::V2, Version::V1] {
        let limits = Limits {
            max_frame_payload: 16 * 1024,
            ..Limits::default()
        };
        let (server, mut agent) = session_pair(version, limits.clone(), limits);
        // A v1 open waits for the agent's Connected: accept meanwhile.
        let accepted = tokio::spawn(async move { agent.incoming.accept().await.unwrap().accept() });
        let mut stream = server.handle.open(b"bulk").await.unwrap();
        stream.write_all(b"go").await.unwrap();
        let mut agent_stream = within("accept", accepted).await.unwrap();
        let body = Bytes::from(pattern(3, 1024 * 1024));
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            let mut greeting = [0u8; 2];
            agent_stream.read_exact(&mut greeting).await.unwrap();
            let mut rest = sent;
            let mut calls = 0;
            while !rest.is_empty() {
                let before = rest.len();
                let taken = std::future::poll_fn(|cx| agent_stream.poll_send(cx, &mut rest))
                    .await
                    .unwrap();
                assert!(taken > 0 && taken <= 16 * 1024, "took {taken}");
                assert_eq!(rest.len(), before - taken, "the rest stays with the caller");
                calls += 1;
            }
            agent_stream.shutdown().await.unwrap();
            // v1 has no half-close: the Close sent on drop ends the stream.
            let kept = (version == Version::V2).then_some(agent_stream);
            (kept, calls)
        });
        let mut got = Vec::new();
        within("bulk", stream.read_to_end(&mut got)).await.unwrap();
        let (_agent_stream, calls) = within("writer", writer).await.unwrap();
        assert!(got == body, "{version:?}: bytes differ");
        assert!(
            calls >= 64,
            "{version:?}: {calls} calls for 1 MiB of 16 KiB frames"
        );
    }
}

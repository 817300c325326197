//! Regressions for defects found in review of the mux.

use super::*;

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

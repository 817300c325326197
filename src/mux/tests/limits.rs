//! Memory budgets and arbitrary peer input (the fuzz target's path as a property test).

use super::*;
use crate::protocol::StreamId;
use futures_util::FutureExt;

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

#[test]
fn default_limits_are_consistent() {
    Limits::default().validate().unwrap();
    let over = Limits {
        stream_window: 512 * 1024,
        ..Limits::default()
    };
    let message = over.validate().unwrap_err();
    assert!(message.contains("session_buffer"), "{message}");
    let zero = Limits {
        max_frame_payload: 0,
        ..Limits::default()
    };
    assert!(zero.validate().is_err());
}

/// A reader that keeps up gets a growing window (the window, not the reader, was the limit);
/// the growth stays within max_stream_window and the bytes arrive intact.
#[tokio::test]
async fn fast_reader_grows_its_window_within_the_cap() {
    let limits = Limits {
        max_stream_window: 1024 * 1024,
        ..Limits::default()
    };
    let (server, mut agent) = session_pair(Version::V2, limits.clone(), limits);
    let mut stream = server.handle.open(b"bulk").await.unwrap();
    stream.write_all(b"go").await.unwrap();
    let mut agent_side = agent.incoming.accept().await.unwrap().accept();
    let body = super::pattern(5, 16 * 1024 * 1024);
    let sent = body.clone();
    let writer = tokio::spawn(async move {
        agent_side.write_all(&sent).await.unwrap();
        agent_side.shutdown().await.unwrap();
        agent_side
    });
    let mut got = Vec::new();
    within("bulk", stream.read_to_end(&mut got)).await.unwrap();
    assert!(got == body);
    let reserved = server.handle.stats().reserved;
    assert!(reserved > 64 * 1024, "window never grew: {reserved}");
    assert!(reserved <= 1024 * 1024, "window past its cap: {reserved}");
    drop(within("writer", writer).await.unwrap());
}

/// Growth only uses the headroom above the initial windows of streams not yet open, so a
/// grown window never makes a later open fail for memory.
#[tokio::test]
async fn grown_windows_never_refuse_an_open() {
    let limits = Limits {
        max_streams: 4,
        stream_window: 64 * 1024,
        max_stream_window: 1024 * 1024,
        session_buffer: 512 * 1024,
        ..Limits::default()
    };
    let (server, mut agent) = session_pair(Version::V2, limits.clone(), limits.clone());
    let mut stream = server.handle.open(b"bulk").await.unwrap();
    stream.write_all(b"go").await.unwrap();
    let mut agent_side = agent.incoming.accept().await.unwrap().accept();
    let writer = tokio::spawn(async move {
        agent_side
            .write_all(&vec![1u8; 8 * 1024 * 1024])
            .await
            .unwrap();
        agent_side.shutdown().await.unwrap();
        agent_side
    });
    let mut sink = Vec::new();
    within("bulk", stream.read_to_end(&mut sink)).await.unwrap();
    assert!(server.handle.stats().reserved > 64 * 1024, "it grew");
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(
            server
                .handle
                .open(b"t")
                .await
                .expect("room for every initial window"),
        );
    }
    assert!(server.handle.stats().reserved <= limits.session_buffer);
    drop(within("writer", writer).await.unwrap());
}

/// The next WindowUpdate the raw peer receives for `id`.
async fn next_window_update(peer: &mut RawPeer, id: StreamId) -> u32 {
    within("a WindowUpdate", async {
        loop {
            match peer.recv().await.expect("session alive") {
                Frame::WindowUpdate { id: got, increment } if got == id => return increment,
                _ => {}
            }
        }
    })
    .await
}

/// A stream the server opened and the raw peer answered (Connected).
async fn open_answered(server: &Session, peer: &mut RawPeer) -> (MuxStream, StreamId) {
    let stream = server.handle.open(b"t").await.unwrap();
    let id = stream.id();
    peer.send(Frame::Connected { id }).await;
    (stream, id)
}

/// Answers the session's first Ping after `delay`, so the session measures that round trip.
async fn answer_first_ping_after(peer: &mut RawPeer, delay: Duration) {
    let payload = within("the first Ping", async {
        loop {
            let message = peer.0.next().await.expect("session alive").unwrap();
            if let Ok(Frame::Ping { payload }) = decode(message) {
                return payload;
            }
        }
    })
    .await;
    tokio::time::sleep(delay).await;
    peer.send(Frame::Pong { payload }).await;
    peer.barrier().await;
}

/// Over a WAN the peer's whole credit arrives in one burst and a reader taking it in pieces
/// has bytes left at the quarter mark, although it waits between bursts: the window must grow
/// all the same. (The rule "grow when a read empties the queue" never fired there: 1.1 MB/s
/// through a 50 ms round trip with 16 KiB reads.)
#[tokio::test]
async fn a_reader_that_waits_between_bursts_grows_its_window() {
    let window = 64 * 1024;
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, Limits::default());
    // A 200 ms round trip: the quarter below goes by well within two.
    answer_first_ping_after(&mut peer, Duration::from_millis(200)).await;
    let (mut stream, id) = open_answered(&server, &mut peer).await;
    let mut piece = vec![0u8; 16 * 1024];
    // The reader is waiting when the burst arrives.
    assert!(stream.read(&mut piece).now_or_never().is_none());
    peer.send(Frame::Data {
        id,
        payload: Bytes::from(vec![3u8; 20 * 1024]),
    })
    .await;
    let n = within("first piece", stream.read(&mut piece))
        .await
        .unwrap();
    assert_eq!(n, 16 * 1024, "4 KiB stay queued at the quarter mark");
    assert_eq!(
        next_window_update(&mut peer, id).await,
        16 * 1024 + window as u32,
        "the quarter comes back with the window's doubling"
    );
    assert_eq!(server.handle.stats().reserved, 2 * window);
}

/// A reader that waits for small answers now and then (a pooled stream, a watch) is not
/// limited by its window: the window stays as it is.
#[tokio::test]
async fn a_stream_that_trickles_keeps_its_window() {
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, Limits::default());
    let (mut stream, id) = open_answered(&server, &mut peer).await;
    let mut piece = vec![0u8; 16 * 1024];
    for _ in 0..4 {
        // No round trip measured: the floor (200 µs) applies, and the quarter takes ≥ 20 ms.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(stream.read(&mut piece).now_or_never().is_none(), "waits");
        peer.send(Frame::Data {
            id,
            payload: Bytes::from(vec![3u8; 4 * 1024]),
        })
        .await;
        let n = within("an answer", stream.read(&mut piece)).await.unwrap();
        assert_eq!(n, 4 * 1024);
    }
    assert_eq!(next_window_update(&mut peer, id).await, 16 * 1024);
    assert_eq!(server.handle.stats().reserved, 64 * 1024);
}

/// A reader that never waits is the stream's limit: its window stays as it is (a slow reader
/// holds no more than its window, S6).
#[tokio::test]
async fn a_reader_that_never_waits_keeps_its_window() {
    let window = 64 * 1024;
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, Limits::default());
    // A 200 ms round trip: every quarter goes by quickly, so only the reader's never having
    // waited can keep the window as it is.
    answer_first_ping_after(&mut peer, Duration::from_millis(200)).await;
    let (mut stream, id) = open_answered(&server, &mut peer).await;
    peer.send(Frame::Data {
        id,
        payload: Bytes::from(vec![3u8; window]),
    })
    .await;
    peer.barrier().await;
    let mut piece = vec![0u8; 16 * 1024];
    for _ in 0..3 {
        let n = within("a piece", stream.read(&mut piece)).await.unwrap();
        assert_eq!(n, 16 * 1024);
        assert_eq!(next_window_update(&mut peer, id).await, 16 * 1024);
    }
    assert_eq!(server.handle.stats().reserved, window);
}
